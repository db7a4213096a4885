//! kuml: a KVM micro-VMM with User-Mode Linux's command line, disks, consoles and mconsole.

pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod device_manager;
pub mod event_loop;
pub mod exit;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod sys;
pub mod vstate;
