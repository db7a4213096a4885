//! kuml
