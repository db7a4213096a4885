//! Device models for kuml: buses, legacy PC devices, PCI and virtio.
//!
//! This crate depends on the disk (`ubd`) and network (`netdev`) crates, never on the VMM.

pub mod bus;
pub mod chan;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod legacy;
pub mod pci;
pub mod virtio;
pub mod warn;
pub mod watch;

/// An error and its sources, joined with ": " (how kuml prints errors, once).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
