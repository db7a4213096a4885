//! kuml: a KVM micro-VMM with User-Mode Linux's command line, disks, consoles and mconsole.

pub mod config;
pub mod arch;
