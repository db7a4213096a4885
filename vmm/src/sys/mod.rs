//! Thin wrappers around the few host system calls kuml makes outside its dependencies.

pub mod node;
pub mod signalfd;
