//! mconsole
