//! The event-loop side of virtio-net: queue notifications, backend readiness, and moving
//! frames between the rings and the backend.
//!
//! Event data: [`WAKE`] for the device's wake-up eventfd (activation, reset, link change,
//! close, and work left over when a round hit its budget), [`RX_NOTIFY`] / [`TX_NOTIFY`] for
//! the queues' notify eventfds, [`BACKEND`] for the backend's fd, [`CONTROL`] for its control
//! descriptor (a `uml_switch` connection). After every event the handler hands the device's
//! interest to its [`crate::watch::Watch`]:
//!
//! * the backend is watched for input only while no received frame waits for a guest buffer:
//!   when the guest posts none, one frame is kept and the rest stay in the host queue (the
//!   guest's rx notification resumes reading, with VIRTIO_RING_F_EVENT_IDX asking for it);
//! * the backend is watched for output only while a frame it refused (`WouldBlock`) waits,
//!   or frames a batching backend queued wait for its socket (`Backend::tx_pending`; each
//!   transmit round ends with `Backend::flush`); the transmit ring is not read meanwhile, so
//!   the guest keeps its place and sees backpressure through a full ring;
//! * a backend that failed (a deleted tap reports an error for ever and `EBADFD` on every
//!   read; a switch closed its connection; errors that go on without a frame moving) is not
//!   watched at all: the link goes down and the loop goes idle.
//!
//! Each round handles at most [`BUDGET`] chains per queue, then wakes itself to go on, so one
//! busy direction cannot starve the other or the rest of the event loop.

use std::io;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};
use netdev::BackendState;
use virtio_queue::QueueOwnedT;

use super::device::{Active, Net, MTU, RX_QUEUE, TX_QUEUE};
use super::rxtx::{read_tx_frame, write_rx_frame, ChainError};
use crate::warn::sparse;
use crate::watch::Interest;
pub use crate::watch::WAKE;

/// Event data of the receive queue's notify eventfd.
pub const RX_NOTIFY: u32 = 1;
/// Event data of the transmit queue's notify eventfd.
pub const TX_NOTIFY: u32 = 2;
/// Event data of the backend's fd.
pub const BACKEND: u32 = 3;
/// Event data of the backend's control descriptor.
pub const CONTROL: u32 = 4;

/// Backend errors (or error events with nothing to read) in a row, with no frame moving in
/// between, after which the backend counts as failed.
pub const ERRORS_IN_A_ROW_MAX: u32 = 64;

/// Chains handled per queue and round (small under test, so that tests cross rounds).
pub const BUDGET: usize = if cfg!(test) { 16 } else { 256 };

/// The longest frame given to the guest: the MTU plus an Ethernet header with a VLAN tag
/// (VIRTIO_NET_F_MTU: the device must not pass longer frames).
pub const RX_FRAME_MAX: usize = MTU as usize + 14 + 4;

/// What became of a frame handed to the backend.
enum Sent {
    Done,
    Dropped,
    WouldBlock,
}

impl Net {
    // Sends the frame in `tx_buf`.
    fn send_frame(&mut self) -> Sent {
        let len = self.tx_buf.len() as u64;
        let carrier = self.carrier();
        let backend = match self.backend.as_mut() {
            Some(b) if carrier => b,
            _ => {
                self.stats.tx_dropped += 1;
                debug!("net {}: link down, dropping a guest frame", self.mac);
                return Sent::Dropped;
            }
        };
        loop {
            match backend.send(&self.tx_buf) {
                Ok(()) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += len;
                    self.errors_in_a_row = 0;
                    return Sent::Done;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Sent::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stats.tx_dropped += 1;
                    if netdev::is_gone(&e) {
                        self.fail_backend(&format!("send: {e}"));
                    } else if sparse(self.stats.tx_dropped) {
                        warn!(
                            "net {}: backend send failed, frame dropped ({} dropped): {e}",
                            self.mac, self.stats.tx_dropped
                        );
                    }
                    return Sent::Dropped;
                }
            }
        }
    }

    /// Moves guest frames from the transmit ring to the backend.
    pub(super) fn process_tx(&mut self) {
        if self.active.as_ref().is_none_or(|a| a.broken) {
            return;
        }
        let mut any = false;
        if let Some(head) = self.tx_pending {
            if let Sent::WouldBlock = self.send_frame() {
                return;
            }
            self.tx_pending = None;
            self.used(TX_QUEUE, head, 0);
            any = true;
        }
        let mut budget = BUDGET;
        'rounds: loop {
            self.with_active(|a| a.disable_notification(TX_QUEUE));
            while budget > 0 {
                let Some(Some((head, descs))) = self.with_active(|a| a.pop(TX_QUEUE)) else {
                    break;
                };
                budget -= 1;
                any = true;
                let parsed = match self.active.as_ref() {
                    Some(a) => read_tx_frame(&a.mem, &descs, &mut self.tx_buf),
                    None => break 'rounds,
                };
                match parsed {
                    Ok(hdr) => {
                        if hdr.wants_offload() {
                            debug!("net {}: guest asked for an offload: {hdr:?}", self.mac);
                        }
                        if let Sent::WouldBlock = self.send_frame() {
                            // Keep the chain: it is retried once the backend is writable.
                            self.tx_pending = Some(head);
                            break 'rounds;
                        }
                    }
                    Err(e) => {
                        self.stats.tx_dropped += 1;
                        if sparse(self.stats.tx_dropped) {
                            warn!(
                                "net {}: dropping a bad transmit chain ({} dropped): {e}",
                                self.mac, self.stats.tx_dropped
                            );
                        }
                    }
                }
                self.used(TX_QUEUE, head, 0);
            }
            if budget == 0 {
                self.watch.wake();
                break;
            }
            if !self
                .with_active(|a| a.enable_notification(TX_QUEUE))
                .unwrap_or(false)
            {
                break;
            }
        }
        self.flush_backend();
        if any {
            self.with_active(|a| a.notify(TX_QUEUE));
        }
    }

    // Sends what a batching backend queued during the round (UML's vector transports send
    // with one sendmmsg per round); frames it could not send yet wait for the fd to be
    // writable (see `interest`).
    fn flush_backend(&mut self) {
        let Some(b) = self.backend.as_mut().filter(|_| !self.backend_failed) else {
            return;
        };
        match b.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                self.stats.tx_dropped += 1;
                if netdev::is_gone(&e) {
                    self.fail_backend(&format!("send: {e}"));
                } else if sparse(self.stats.tx_dropped) {
                    warn!(
                        "net {}: backend send failed, frames lost ({} dropped): {e}",
                        self.mac, self.stats.tx_dropped
                    );
                }
            }
        }
    }

    /// Moves host frames from the backend to the receive ring.
    pub(super) fn process_rx(&mut self) {
        if self.active.as_ref().is_none_or(|a| a.broken) {
            return;
        }
        let mut any = false;
        let mut budget = BUDGET;
        while budget > 0 {
            budget -= 1;
            let len = match self.rx_pending {
                Some(n) => n,
                None => {
                    if self.backend_failed || self.backend_state != BackendState::Ready {
                        break;
                    }
                    let Some(b) = self.backend.as_mut() else {
                        break;
                    };
                    match b.recv(&mut self.rx_buf) {
                        Ok(n) => {
                            self.errors_in_a_row = 0;
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            self.stats.rx_dropped += 1;
                            self.errors_in_a_row += 1;
                            if netdev::is_gone(&e) {
                                self.fail_backend(&format!("receive: {e}"));
                                break;
                            }
                            if self.errors_in_a_row >= ERRORS_IN_A_ROW_MAX {
                                self.fail_backend(&format!(
                                    "{} receive errors in a row, the last: {e}",
                                    self.errors_in_a_row
                                ));
                                break;
                            }
                            if sparse(self.stats.rx_dropped) {
                                warn!("net {}: backend receive failed: {e}", self.mac);
                            }
                            continue;
                        }
                    }
                }
            };
            if !self.admin_up || len > RX_FRAME_MAX {
                self.rx_pending = None;
                self.stats.rx_dropped += 1;
                if self.admin_up && sparse(self.stats.rx_dropped) {
                    warn!(
                        "net {}: dropping a {len}-byte host frame, longer than the MTU allows \
                         ({} dropped)",
                        self.mac, self.stats.rx_dropped
                    );
                }
                continue;
            }
            self.rx_pending = Some(len);
            let Some(active) = self.active.as_mut() else {
                break;
            };
            let (head, descs) = match active.pop(RX_QUEUE) {
                Some(chain) => chain,
                None => {
                    if active.enable_notification(RX_QUEUE) {
                        continue;
                    }
                    // The frame waits; the guest's rx notification resumes.
                    break;
                }
            };
            let frame = self.rx_buf.get(..len).unwrap_or_default();
            match write_rx_frame(&active.mem, &descs, frame) {
                Ok(n) => {
                    active.used(RX_QUEUE, head, n);
                    self.rx_pending = None;
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += len as u64;
                    any = true;
                }
                Err(ChainError::BufferTooSmall { need, have }) => {
                    // Keep the guest's buffer for the next frame; this one cannot fit.
                    active.queues.rx.queue.go_to_previous_position();
                    self.rx_pending = None;
                    self.stats.rx_dropped += 1;
                    if sparse(self.stats.rx_dropped) {
                        warn!(
                            "net {}: dropping a host frame: {need} bytes do not fit a \
                             {have}-byte guest buffer ({} dropped)",
                            self.mac, self.stats.rx_dropped
                        );
                    }
                }
                Err(e) => {
                    // A bad buffer goes back unused; the frame waits for the next one.
                    active.used(RX_QUEUE, head, 0);
                    any = true;
                    self.stats.rx_bad_buffers += 1;
                    if sparse(self.stats.rx_bad_buffers) {
                        warn!(
                            "net {}: bad receive chain ({} so far): {e}",
                            self.mac, self.stats.rx_bad_buffers
                        );
                    }
                }
            }
        }
        if budget == 0 {
            self.watch.wake();
        }
        if any {
            self.with_active(|a| a.notify(RX_QUEUE));
        }
    }

    fn with_active<T>(&mut self, f: impl FnOnce(&mut Active) -> T) -> Option<T> {
        self.active.as_mut().map(f)
    }

    fn used(&mut self, qi: usize, head: u16, len: u32) {
        self.with_active(|a| a.used(qi, head, len));
    }

    fn on_wake(&mut self) {
        self.watch.take_wake();
        self.process_tx();
        self.process_rx();
    }

    fn on_backend(&mut self, set: EventSet) {
        if set.contains(EventSet::HANG_UP) && !set.contains(EventSet::IN) {
            self.fail_backend("it hung up");
        } else if set.contains(EventSet::ERROR) && !set.contains(EventSet::IN) {
            // An error condition with nothing to read: reading shows what it is (a deleted
            // tap fails with EBADFD). One that yields nothing, again and again, counts as a
            // failure too, so that a level-triggered error cannot keep the loop busy.
            let before = self.stats.rx_frames + self.stats.rx_dropped;
            self.process_rx();
            if self.stats.rx_frames + self.stats.rx_dropped == before && !self.backend_failed {
                self.errors_in_a_row += 1;
                if self.errors_in_a_row >= ERRORS_IN_A_ROW_MAX {
                    self.fail_backend("it keeps reporting an error with nothing to read");
                }
            }
        }
        if set.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
            self.process_tx();
        }
        if set.contains(EventSet::IN) {
            self.process_rx();
        }
    }

    fn on_control(&mut self) {
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        match b.on_control() {
            Ok(state) => {
                self.backend_state = state;
                self.update_link();
            }
            Err(e) => self.fail_backend(&e.to_string()),
        }
        self.process_tx();
        self.process_rx();
    }

    /// What the event loop should watch now (see the module documentation).
    pub(super) fn interest(&self) -> Interest {
        let mut want = Interest::new();
        let live = self.active.as_ref().filter(|a| !a.broken);
        if let Some(a) = live {
            want.add(a.queues.rx.notify.clone(), RX_NOTIFY, EventSet::IN);
            want.add(a.queues.tx.notify.clone(), TX_NOTIFY, EventSet::IN);
        }
        let Some(b) = self.backend.as_ref().filter(|_| !self.backend_failed) else {
            return want;
        };
        if let Some(ctl) = b.control_fd() {
            want.add(ctl, CONTROL, EventSet::IN);
        }
        if live.is_some() && self.backend_state == BackendState::Ready {
            let mut set = EventSet::empty();
            if self.rx_pending.is_none() {
                set |= EventSet::IN;
            }
            if self.tx_pending.is_some() || b.tx_pending() {
                set |= EventSet::OUT;
            }
            want.add(b.fd(), BACKEND, set);
        }
        want
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let want = self.interest();
        self.watch.apply(ops, want);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            WAKE => self.on_wake(),
            RX_NOTIFY => {
                if let Some(a) = self.active.as_ref() {
                    let _ = a.queues.rx.notify.read();
                }
                self.process_rx();
            }
            TX_NOTIFY => {
                if let Some(a) = self.active.as_ref() {
                    let _ = a.queues.tx.notify.read();
                }
                self.process_tx();
            }
            BACKEND => self.on_backend(set),
            CONTROL => self.on_control(),
            data => warn!("net {}: unexpected event data {data:#x}", self.mac),
        }
        let want = self.interest();
        self.watch.apply(ops, want);
    }
}
