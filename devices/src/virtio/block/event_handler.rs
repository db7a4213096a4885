//! The event-manager subscriber: the wake-up eventfd and the request queue's notify eventfd.

use std::os::unix::io::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;
use virtio_queue::{QueueOwnedT, QueueT};

use super::device::{Active, Block};
use super::execute::{process_chain, ChainContext};
use crate::virtio::InterruptKind;

/// Event data of the wake-up eventfd.
pub const WAKE: u32 = 0;
/// Event data of the request queue's notify eventfd.
pub const QUEUE: u32 = 1;

impl Block {
    /// Serves every available request, then interrupts the guest if it wants to be.
    pub fn process_queue(&mut self) {
        let ctx = ChainContext {
            info: self.info(),
            id: &self.id,
            opts: self.exec_options(),
        };
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken {
            return;
        }
        let mut any = false;
        let mut served = 0usize;
        loop {
            if let Err(e) = active.queue.queue.disable_notification(&active.mem) {
                active.mark_broken(&format!("cannot disable notifications ({e})"));
                return;
            }
            let mut progressed = false;
            loop {
                if served >= self.batch_limit {
                    // Let the other event sources run; come back through the notify eventfd.
                    if let Err(e) = active.queue.notify.write(1) {
                        warn!("block: cannot re-arm the queue eventfd: {e}");
                    } else {
                        if any {
                            notify(active);
                        }
                        return;
                    }
                }
                let next = match active.queue.queue.iter(&active.mem) {
                    Ok(mut it) => it
                        .next()
                        .map(|chain| (chain.head_index(), chain.collect::<Vec<_>>())),
                    Err(e) => {
                        active.mark_broken(&format!("bad available ring ({e})"));
                        break;
                    }
                };
                let Some((head, descs)) = next else {
                    break;
                };
                progressed = true;
                served += 1;
                let used = process_chain(
                    &active.mem,
                    descs,
                    self.disk.as_deref_mut(),
                    &ctx,
                    &mut self.scratch,
                    &mut self.warn_budget,
                );
                if let Err(e) = active
                    .queue
                    .queue
                    .add_used(&active.mem, head, used.unwrap_or(0))
                {
                    active.mark_broken(&format!("cannot add a used entry ({e})"));
                    break;
                }
                any = true;
                if used.is_none() {
                    active.mark_broken("a request without a writable status byte");
                    break;
                }
            }
            if active.broken {
                break;
            }
            match active.queue.queue.enable_notification(&active.mem) {
                Ok(true) if progressed => continue,
                Ok(true) => {
                    // New entries announced, yet none could be read.
                    active.mark_broken("unreadable available ring entry");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    active.mark_broken(&format!("cannot enable notifications ({e})"));
                    break;
                }
            }
        }
        if any {
            notify(active);
        }
    }

    fn on_wake(&mut self, ops: &mut EventOps) {
        let _ = self.wake.read();
        self.sync(ops);
        // Requests may have been queued before the event loop watched the queue.
        self.process_queue();
    }

    /// Brings the event loop's watch list in line with the device state.
    pub(super) fn sync(&mut self, ops: &mut EventOps) {
        if !self.registered_wake {
            match ops.add(Events::with_data(&self.wake, WAKE, EventSet::IN)) {
                Ok(()) => self.registered_wake = true,
                Err(e) => warn!("block: cannot watch the wake-up eventfd: {e}"),
            }
        }
        let want = self
            .active
            .as_ref()
            .filter(|a| !a.broken)
            .map(|a| a.queue.notify.as_raw_fd());
        if self.registered_queue != want {
            // Remove first, while a retired eventfd is still open; then let it go.
            if let Some(fd) = self.registered_queue.take() {
                if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                    warn!("block: cannot stop watching fd {fd}: {e}");
                }
            }
            if let Some(fd) = want {
                match ops.add(Events::with_data_raw(fd, QUEUE, EventSet::IN)) {
                    Ok(()) => self.registered_queue = Some(fd),
                    Err(e) => warn!("block: cannot watch the queue eventfd: {e}"),
                }
            }
        }
        self.retired.clear();
    }
}

// Interrupts the guest for the request queue if it wants to be.
fn notify(active: &mut Active) {
    let wanted = active
        .queue
        .queue
        .needs_notification(&active.mem)
        .unwrap_or(true);
    if wanted {
        if let Err(e) = active
            .interrupt
            .trigger(InterruptKind::Queue(active.queue.index))
        {
            warn!("block: cannot interrupt the guest: {e}");
        }
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.sync(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            WAKE => self.on_wake(ops),
            QUEUE => {
                if let Some(a) = self.active.as_ref() {
                    let _ = a.queue.notify.read();
                }
                self.process_queue();
                // A broken device stops watching its queue.
                self.sync(ops);
            }
            d => warn!("block: unexpected event data {d:#x}"),
        }
    }
}
