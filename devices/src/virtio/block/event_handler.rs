//! The event-manager subscriber: the wake-up eventfd and the request queue's notify eventfd.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;
use virtio_queue::QueueT;

use super::device::{Active, Block};
use super::execute::{process_chain, ChainContext};
use crate::virtio::InterruptKind;
use crate::watch::Interest;
pub use crate::watch::WAKE;
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
                let next = match crate::virtio::next_chain(&mut active.queue.queue, &active.mem) {
                    Ok(next) => next,
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

    /// What the event loop should watch: the request queue while the device works.
    pub(super) fn interest(&self) -> Interest {
        let mut want = Interest::new();
        if let Some(a) = self.active.as_ref().filter(|a| !a.broken) {
            want.add(a.queue.notify.clone(), QUEUE, EventSet::IN);
        }
        want
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
        let want = self.interest();
        self.watch.apply(ops, want);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            // Requests may have been queued before the event loop watched the queue.
            WAKE => {
                self.watch.take_wake();
                self.process_queue();
            }
            QUEUE => {
                if let Some(a) = self.active.as_ref() {
                    let _ = a.queue.notify.read();
                }
                self.process_queue();
            }
            d => warn!("block: unexpected event data {d:#x}"),
        }
        // A broken device stops watching its queue.
        let want = self.interest();
        self.watch.apply(ops, want);
    }
}
