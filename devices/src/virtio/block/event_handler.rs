//! The event-manager subscriber: the wake-up eventfd and the request queue's notify eventfd.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;

use super::device::Block;
use super::execute::{process_chain, ChainContext};
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
        let mut any = false;
        let mut served = 0usize;
        while !active.broken {
            active.disable_notification(0);
            let mut progressed = false;
            loop {
                if served >= self.batch_limit {
                    // Let the other event sources run; come back through the notify eventfd.
                    match active.queues.notify.write(1) {
                        Ok(()) => {
                            if any {
                                active.notify(0);
                            }
                            return;
                        }
                        Err(e) => {
                            warn!("block: cannot re-arm the queue eventfd: {e}");
                            served = 0;
                        }
                    }
                }
                let Some((head, descs)) = active.pop(0) else {
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
                active.used(0, head, used.unwrap_or(0));
                any = true;
                if used.is_none() {
                    active.mark_broken("a request without a writable status byte");
                }
            }
            if !active.enable_notification(0) {
                break;
            }
            if !progressed {
                // New entries announced, yet none could be read.
                active.mark_broken("unreadable available ring entry");
            }
        }
        if any {
            active.notify(0);
        }
    }

    /// What the event loop should watch: the request queue while the device works.
    pub(super) fn interest(&self) -> Interest {
        let mut want = Interest::new();
        if let Some(a) = self.active.as_ref().filter(|a| !a.broken) {
            want.add(a.queues.notify.clone(), QUEUE, EventSet::IN);
        }
        want
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
                    let _ = a.queues.notify.read();
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
