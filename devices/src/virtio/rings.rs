//! What an activated device holds of the guest: memory, its interrupt, its queues, and whether
//! the guest broke a ring; with the queue operations every device needs.
//!
//! A ring the guest made unusable (a bad available ring, a used entry that cannot be written)
//! marks the device broken: it logs once, asks the guest for a reset (NEEDS_RESET) and then
//! ignores the guest until the reset. Devices differ only in which queues they have
//! ([`QueueSlots`]).

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;

use super::{next_chain, ActiveQueue, GuestMemory, InterruptKind, VirtioInterrupt};

/// A device's queues, found by queue index.
pub(crate) trait QueueSlots {
    /// Queue `qi`, if the device has it and the driver enabled it.
    fn slot(&mut self, qi: usize) -> Option<&mut ActiveQueue>;
}

/// A device with one queue.
impl QueueSlots for ActiveQueue {
    fn slot(&mut self, qi: usize) -> Option<&mut ActiveQueue> {
        (qi == usize::from(self.index)).then_some(self)
    }
}

/// A device whose queue `i` may be absent (the driver did not enable it).
impl QueueSlots for Vec<Option<ActiveQueue>> {
    fn slot(&mut self, qi: usize) -> Option<&mut ActiveQueue> {
        self.get_mut(qi)?.as_mut()
    }
}

/// An activated device's view of the guest (see the module documentation).
pub(crate) struct Rings<Q> {
    /// Guest memory.
    pub mem: GuestMemory,
    /// How the device interrupts the guest.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The queues the driver set up.
    pub queues: Q,
    /// The guest broke the device; it waits for a reset.
    pub broken: bool,
    /// NEEDS_RESET was asked for since `broken` was set.
    reset_signalled: bool,
    /// The device's name in log messages.
    name: &'static str,
}

impl<Q> std::fmt::Debug for Rings<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rings")
            .field("name", &self.name)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<Q: QueueSlots> Rings<Q> {
    /// The rings of device `name`, activated with `queues`; `broken` when a queue was unusable
    /// at activation. The reset that asks for is not signalled here, inside the transport's
    /// activation: call [`Rings::signal_reset`] (the event loop does).
    pub fn new(
        name: &'static str,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Q,
        broken: bool,
    ) -> Self {
        Rings {
            mem,
            interrupt,
            queues,
            broken,
            reset_signalled: false,
            name,
        }
    }

    /// Records that the guest broke a ring (`why`), logs it once and asks for a reset.
    pub fn mark_broken(&mut self, why: &str) {
        if !self.broken {
            log::warn!("{}: {why}; the device needs a reset", self.name);
            self.broken = true;
        }
        self.signal_reset();
    }

    /// Asks the guest for the reset a broken device needs, once.
    pub fn signal_reset(&mut self) {
        if self.broken && !self.reset_signalled {
            self.reset_signalled = true;
            self.interrupt.needs_reset();
        }
    }

    /// The next available chain of queue `qi`: its head index and descriptors. `None` when
    /// there is none, the queue does not exist, or the device is broken.
    pub fn pop(&mut self, qi: usize) -> Option<(u16, Vec<Descriptor>)> {
        if self.broken {
            return None;
        }
        let q = self.queues.slot(qi)?;
        match next_chain(&mut q.queue, &self.mem) {
            Ok(next) => next,
            Err(e) => {
                self.mark_broken(&format!("queue {qi}: bad available ring ({e})"));
                None
            }
        }
    }

    /// Returns chain `head` of queue `qi` to the guest with `len` bytes written.
    pub fn used(&mut self, qi: usize, head: u16, len: u32) {
        let Some(q) = self.queues.slot(qi) else {
            return;
        };
        if let Err(e) = q.queue.add_used(&self.mem, head, len) {
            self.mark_broken(&format!("queue {qi}: cannot add a used entry ({e})"));
        }
    }

    /// Interrupts the guest for queue `qi` if it wants to be.
    pub fn notify(&mut self, qi: usize) {
        let Some(q) = self.queues.slot(qi) else {
            return;
        };
        if q.queue.needs_notification(&self.mem).unwrap_or(true) {
            let kind = InterruptKind::Queue(q.index);
            if let Err(e) = self.interrupt.trigger(kind) {
                log::warn!(
                    "{}: cannot interrupt the guest for queue {qi}: {e}",
                    self.name
                );
            }
        }
    }

    /// Asks the guest not to notify queue `qi` (the device is draining it).
    pub fn disable_notification(&mut self, qi: usize) {
        let Some(q) = self.queues.slot(qi) else {
            return;
        };
        if let Err(e) = q.queue.disable_notification(&self.mem) {
            self.mark_broken(&format!("queue {qi}: cannot suppress notifications ({e})"));
        }
    }

    /// Asks the guest to notify queue `qi` again; true if chains arrived meanwhile.
    pub fn enable_notification(&mut self, qi: usize) -> bool {
        if self.broken {
            return false;
        }
        let Some(q) = self.queues.slot(qi) else {
            return false;
        };
        match q.queue.enable_notification(&self.mem) {
            Ok(more) => more,
            Err(e) => {
                self.mark_broken(&format!("queue {qi}: cannot enable notifications ({e})"));
                false
            }
        }
    }
}
