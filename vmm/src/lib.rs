//! kuml: a KVM micro-VMM with User-Mode Linux's command line, disks, consoles and mconsole.
//!
//! See docs/architecture.md for how the modules fit together.

pub mod arch;
pub mod backends;
pub mod builder;
pub mod config;
pub mod control;
pub mod device_manager;
pub mod event_loop;
pub mod exit;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod guest;
pub mod hostfs_shares;
pub mod machine;
pub mod mconsole_adapter;
pub mod seccomp;
pub mod session;
pub mod sys;
pub mod uml_log;
pub mod vmm;
pub mod vstate;

pub use devices::error_chain;
