//! What the guest tells the device manager from a vCPU thread: slots it ejected (through the
//! hot-plug register block's B0EJ) and devices it activated (the transports' activation
//! notifier). Both are queued here and signalled on the VMM's wake eventfd; the event loop's
//! thread then acts on them through [`super::DeviceManager::take_events`]. An eject arrives
//! with the MMIO bus held for dispatch, so it must not change the buses itself.

use std::sync::Mutex;

use devices::pci::EjectHandler;
use vmm_sys_util::eventfd::EventFd;

/// Slots the guest ejected (`_EJ0`), waiting for the event loop.
#[derive(Debug)]
pub struct EjectQueue {
    slots: Mutex<Vec<u8>>,
    wake: EventFd,
}

impl EjectQueue {
    /// A queue that writes `wake` when a slot arrives.
    pub fn new(wake: EventFd) -> Self {
        EjectQueue {
            slots: Mutex::new(Vec::new()),
            wake,
        }
    }

    /// Takes the ejected slots.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl EjectHandler for EjectQueue {
    fn eject(&self, slot: u8) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
        if let Err(e) = self.wake.write(1) {
            log::error!("cannot signal the ejection of slot {slot}: {e}");
        }
    }
}
