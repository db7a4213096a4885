//! The event-manager subscriber: the wake-up eventfd, the daemon's call eventfds (each one
//! becomes its queue's interrupt) and the vhost-user socket's hang-up.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;

use super::device::Fs;
use crate::virtio::InterruptKind;
use crate::watch::Interest;
pub use crate::watch::WAKE;

/// Event data of the vhost-user socket (watched for a hang-up only).
pub const SOCKET: u32 = 1;
/// Event data of queue `n`'s call eventfd: `CALL_BASE + n`.
pub const CALL_BASE: u32 = 2;

impl Fs {
    /// What the event loop should watch: the call eventfds while the device runs, and the
    /// socket until the daemon hangs up.
    pub(super) fn interest(&self) -> Interest {
        let mut want = Interest::new();
        if self.dead {
            return want;
        }
        want.add(
            self.socket.clone(),
            SOCKET,
            EventSet::HANG_UP | EventSet::READ_HANG_UP,
        );
        if let Some(a) = &self.active {
            for (q, call) in a.queues.iter().zip(&a.calls) {
                want.add(call.clone(), CALL_BASE + u32::from(*q), EventSet::IN);
            }
        }
        want
    }

    fn call(&mut self, queue: u16) {
        let Some(a) = &self.active else {
            return;
        };
        let Some(i) = a.queues.iter().position(|q| *q == queue) else {
            return;
        };
        let _ = a.calls[i].read();
        if let Err(e) = a.interrupt.trigger(InterruptKind::Queue(queue)) {
            warn!("{}: cannot interrupt the guest: {e}", self.name);
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        let want = self.interest();
        self.watch.apply(ops, want);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            WAKE => self.watch.take_wake(),
            SOCKET => self.daemon_died(),
            d if d >= CALL_BASE => match u16::try_from(d - CALL_BASE) {
                Ok(q) => self.call(q),
                Err(_) => warn!("{}: unexpected event data {d:#x}", self.name),
            },
            d => warn!("{}: unexpected event data {d:#x}", self.name),
        }
        let want = self.interest();
        self.watch.apply(ops, want);
    }
}
