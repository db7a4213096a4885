//! PCI: configuration space, the host bridge and root bus, MSI-X, and the virtio-pci transport.
//!
//! The machine has one PCI segment with one bus. The guest reaches configuration space only
//! through configuration mechanism #1 (ports 0xCF8/0xCFC, [`PciRoot`]); there is no ECAM/MCFG,
//! so configuration space is the classic 256 bytes per function. Each device is a single
//! function in its own slot (1..=31); slot 0 holds the host bridge.
//!
//! Wiring it up (VMM side):
//!
//! ```text
//! let root = Arc::new(Mutex::new(PciRoot::new()));          // host bridge at 00:00.0
//! pio_bus.insert(root.clone(), PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN)?;
//! root.lock().set_bar_hook(hook);                              // BarHook: moves bus ranges
//! // per virtio device (dev: Arc<Mutex<D>>, D: VirtioDevice + MutEventSubscriber):
//! let n = virtio::msix_vectors(&*dev.lock());                  // GSIs to allocate
//! let pci = Arc::new(Mutex::new(VirtioPciDevice::new(dev, mem.clone(), routing, bar)?));
//! let slot = root.lock().insert(pci.clone(), None)?;           // 1..=31
//! mmio_bus.insert(pci.clone(), bar, virtio::BAR_SIZE)?;
//! for (addr, fd) in pci.lock().ioeventfds(bar) { vm.register_ioevent(fd, &Mmio(addr), NoDatamatch)? }
//! // hot-plug: PciHotplug on the MMIO bus, announce_add(slot) + GED interrupt;
//! // removal: request_removal(slot) + GED; EjectHandler::eject(slot) -> root.remove(slot), unmap
//! ```
//!
//! Lock order: the root, then a device, then its MSI-X state; [`BarHook`] and [`EjectHandler`]
//! are called with the root (resp. the hot-plug block) locked, but no device locked.

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
