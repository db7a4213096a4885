//! Moving a BAR's bus range and queue notifiers when the guest reprograms it.

use std::io;
use std::sync::{Arc, Mutex, RwLock};

use devices::bus::{Bus, BusError};
use devices::pci::{BarHook, BarMove};

use super::vm_ops::VmOps;
use super::Registry;

/// Why a BAR could not move (the guest then sees it where it was).
#[derive(Debug, thiserror::Error)]
pub enum BarMoveError {
    /// The new address is outside the windows the DSDT gives the root bridge.
    #[error("BAR {0:#x} is outside the PCI windows")]
    OutsideWindow(u64),
    /// No device in the slot.
    #[error("PCI slot {0} holds no device")]
    NoDevice(u8),
    /// The bus refused the new range.
    #[error("cannot map the BAR at its new address")]
    Bus(#[source] BusError),
    /// KVM refused a queue notifier at the new address.
    #[error("KVM refused a queue notifier at {0:#x}")]
    Notifier(u64, #[source] kvm_ioctls::Error),
}

/// The device manager's [`BarHook`].
pub(super) struct BarMover {
    pub(super) vm: Arc<dyn VmOps>,
    /// The PCI windows of the root bridge: BARs may move anywhere inside them.
    pub(super) windows: [(u64, u64); 2],
    pub(super) mmio: Arc<RwLock<Bus>>,
    pub(super) registry: Arc<Mutex<Registry>>,
}

impl BarMover {
    fn move_bar(&self, slot: u8, mv: BarMove) -> Result<(), BarMoveError> {
        let in_window = self.windows.iter().any(|(start, end)| {
            mv.new >= *start && mv.new.checked_add(mv.size).is_some_and(|e| e <= *end)
        });
        if !in_window {
            return Err(BarMoveError::OutsideWindow(mv.new));
        }
        let transport = super::locked(&self.registry)
            .get(&slot)
            .map(|p| p.transport.clone())
            .ok_or(BarMoveError::NoDevice(slot))?;
        let mut mmio = self.mmio.write().unwrap_or_else(|e| e.into_inner());
        let shared = mmio.remove(mv.old).map_err(BarMoveError::Bus)?;
        if let Err(e) = mmio.insert(shared.clone(), mv.new, mv.size) {
            if let Err(back) = mmio.insert(shared, mv.old, mv.size) {
                log::error!(
                    "slot {slot}: cannot map the BAR back at {:#x}: {back}",
                    mv.old
                );
            }
            return Err(BarMoveError::Bus(e));
        }
        let t = super::locked(&transport);
        for (addr, fd) in t.ioeventfds(mv.old) {
            if let Err(e) = self.vm.unregister_ioevent(fd, addr) {
                log::warn!("slot {slot}: cannot remove the queue notifier at {addr:#x}: {e}");
            }
        }
        for (addr, fd) in t.ioeventfds(mv.new) {
            self.vm
                .register_ioevent(fd, addr)
                .map_err(|e| BarMoveError::Notifier(addr, e))?;
        }
        log::debug!("slot {slot}: BAR moved {:#x} -> {:#x}", mv.old, mv.new);
        Ok(())
    }
}

impl BarHook for BarMover {
    fn bar_moved(&self, slot: u8, mv: BarMove) -> io::Result<()> {
        // The typed error stays the io::Error's source.
        self.move_bar(slot, mv).map_err(io::Error::other)
    }
}
