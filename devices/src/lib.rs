//! Device models for kuml: buses, legacy PC devices, PCI and virtio.
//!
//! This crate depends on the disk (`ubd`) and network (`netdev`) crates, never on the VMM.

pub mod bus;
pub mod chan;
pub mod legacy;
pub mod pci;
pub mod virtio;
