//! PCI: configuration space, the host bridge and root bus, MSI-X, and the virtio-pci transport.
//!
//! The machine has one PCI segment with one bus. The guest reaches configuration space only
//! through configuration mechanism #1 (ports 0xCF8/0xCFC, [`PciRoot`]); there is no ECAM/MCFG,
//! so configuration space is the classic 256 bytes per function. Each device is a single
//! function in its own slot (1..=31); slot 0 holds the host bridge.
//!
//! Wiring it up (VMM side):
//! - Create a [`PciRoot`], put it on the port-I/O bus at [`PCI_CONFIG_IO_BASE`] (length
//!   [`PCI_CONFIG_IO_LEN`]) and give it a [`BarHook`] that moves bus ranges.
//! - For each virtio device, create a [`VirtioPciDevice`] with an [`MsiRouting`], insert it into
//!   the root with [`PciRoot::insert`], map its BAR on the MMIO bus and register its
//!   [`VirtioPciDevice::ioeventfds`] with KVM.

pub mod config;
pub mod host;
pub mod hotplug;
pub mod msix;
pub mod virtio;

pub use config::{BarKind, BarMove, PciConfig, PciIdentity};
pub use host::{BarHook, HostBridge, HostError, PciRoot, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
pub use hotplug::{EjectHandler, PciHotplug, HOTPLUG_LEN};
pub use msix::{MsiMessage, MsiRouting, Msix};
pub use virtio::{VirtioPciDevice, VirtioPciError};

/// A PCI function as the root bus sees it: its configuration space.
pub trait PciDevice: Send {
    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at `offset` (< 256).
    fn read_config(&mut self, offset: usize, data: &mut [u8]);
    /// Writes configuration space; returns the BAR the write moved, if any, so that the VMM can
    /// move its mapping.
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Option<BarMove>;
    /// The VMM could not move the BAR as `mv` asked: keep treating `mv.old` as its mapping.
    fn bar_move_failed(&mut self, mv: BarMove) {
        let _ = mv;
    }
}
