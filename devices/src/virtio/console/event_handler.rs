//! The event-loop side of the console: queue notifications, channel input and output, and
//! the control protocol.
//!
//! Event data: [`WAKE`] for the device's wake-up eventfd (activation, reset, ports added or
//! removed at run time, and work left over when a round hit its budget), `QUEUE | index` for
//! a queue's notify eventfd, `PORT | id` for a port's channel descriptors. After every event
//! the handler hands the device's interest to its [`crate::watch::Watch`]: a port's input is
//! watched only while its buffer has room (backpressure), its output only while output waits
//! for the host side.
//!
//! A guest can keep refilling a transmit or control queue: each round handles at most
//! [`BUDGET`] chains of a queue, then wakes the device to go on, so the disks, NICs and
//! mconsole get their turn. Messages about a guest's mistakes are logged within a
//! [`WarnBudget`].

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, log};

use super::control::{GuestMsg, HostMsg};
use super::device::{Console, INPUT_BUFFER_MAX};
use super::port::{read_tx_chain, write_rx_chain};
use crate::chan::ChanRead;
use crate::watch::Interest;
pub use crate::watch::WAKE;
/// Event data kind of a queue notify eventfd (`QUEUE | index`).
pub const QUEUE: u32 = 1 << 16;
/// Event data kind of a port's channel (`PORT | id`).
pub const PORT: u32 = 2 << 16;
const KIND_MASK: u32 = 0xffff_0000;

/// Chains handled per queue and round (small under test, so that tests cross rounds).
pub const BUDGET: usize = if cfg!(test) { 8 } else { 256 };

/// Queue index of the control receive queue.
const CONTROL_RX: usize = 2;
/// Queue index of the control transmit queue.
const CONTROL_TX: usize = 3;

/// What a queue index carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueRole {
    Rx(u32),
    Tx(u32),
    ControlRx,
    ControlTx,
}

fn queue_role(index: usize) -> QueueRole {
    match index {
        0 => QueueRole::Rx(0),
        1 => QueueRole::Tx(0),
        CONTROL_RX => QueueRole::ControlRx,
        CONTROL_TX => QueueRole::ControlTx,
        i => {
            // Ports 1.. use queues 4.. in rx/tx pairs; max_ports bounds i, so this fits.
            let port = u32::try_from(i / 2 - 1).unwrap_or(u32::MAX);
            if i % 2 == 0 {
                QueueRole::Rx(port)
            } else {
                QueueRole::Tx(port)
            }
        }
    }
}

/// The receive queue of port `id`.
pub(super) fn rx_queue(id: u32) -> usize {
    if id == 0 {
        0
    } else {
        2 * (id as usize + 1)
    }
}

impl Console {
    /// Handles a notification of queue `qi`.
    pub(super) fn process_queue(&mut self, qi: usize) {
        match queue_role(qi) {
            QueueRole::Rx(id) => self.fill_rx(id),
            QueueRole::Tx(id) => self.process_tx(qi, id),
            QueueRole::ControlRx => self.flush_control(),
            QueueRole::ControlTx => self.process_control_tx(),
        }
    }

    // Guest output of port `id` to its channel, at most a budget of chains.
    fn process_tx(&mut self, qi: usize, id: u32) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut handled = 0;
        while handled < BUDGET {
            let Some((head, descs)) = active.pop(qi) else {
                break;
            };
            handled += 1;
            match read_tx_chain(&active.mem, descs) {
                Ok(data) => match self.ports.get_mut(&id) {
                    Some(p) => p.channel.write(&data),
                    None => debug!("console: output on port {id}, which does not exist"),
                },
                Err(e) => log!(
                    self.guest_warnings.level(),
                    "console: port {id}: dropping a bad transmit chain: {e}"
                ),
            }
            active.used(qi, head, 0);
        }
        if handled > 0 {
            active.notify(qi);
        }
        if handled == BUDGET {
            // Chains may be left: come back to them after the other event sources.
            self.resume(qi);
        }
    }

    fn process_control_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut msgs = Vec::new();
        let mut handled = 0;
        while handled < BUDGET {
            let Some((head, descs)) = active.pop(CONTROL_TX) else {
                break;
            };
            handled += 1;
            match read_tx_chain(&active.mem, descs) {
                Ok(bytes) => match GuestMsg::decode(&bytes) {
                    Ok(m) => msgs.push(m),
                    Err(e) => log!(
                        self.guest_warnings.level(),
                        "console: ignoring a control message: {e}"
                    ),
                },
                Err(e) => log!(
                    self.guest_warnings.level(),
                    "console: dropping a bad control chain: {e}"
                ),
            }
            active.used(CONTROL_TX, head, 0);
        }
        if handled > 0 {
            active.notify(CONTROL_TX);
        }
        if handled == BUDGET {
            self.resume(CONTROL_TX);
        }
        for m in msgs {
            self.handle_guest_msg(m);
        }
    }

    fn handle_guest_msg(&mut self, msg: GuestMsg) {
        debug!("console: guest sent {msg:?}");
        match msg {
            GuestMsg::DeviceReady { ok: false } => {
                log!(
                    self.guest_warnings.level(),
                    "console: the guest driver failed to set up the device"
                );
            }
            GuestMsg::DeviceReady { ok: true } => {
                if self.driver_ready {
                    return;
                }
                self.driver_ready = true;
                let ids: Vec<u32> = self.ports.keys().copied().collect();
                for id in ids {
                    self.send_control(HostMsg::DeviceAdd(id));
                }
            }
            GuestMsg::PortReady { id, ok } => {
                let Some(p) = self.ports.get_mut(&id) else {
                    log!(
                        self.guest_warnings.level(),
                        "console: the guest readied port {id}, which does not exist"
                    );
                    return;
                };
                if !ok {
                    log!(
                        self.guest_warnings.level(),
                        "console: the guest failed to set up port {id}"
                    );
                    return;
                }
                if p.ready {
                    return;
                }
                p.ready = true;
                let console = p.console;
                let name = p.name.clone();
                if console {
                    self.send_control(HostMsg::ConsolePort(id));
                }
                self.send_control(HostMsg::PortName { id, name });
                self.send_control(HostMsg::PortOpen { id, open: true });
                // A console port has its hvc tty now: give it the host terminal's size.
                self.refresh_size(id);
            }
            GuestMsg::PortOpen { id, open } => {
                let Some(p) = self.ports.get_mut(&id) else {
                    log!(
                        self.guest_warnings.level(),
                        "console: the guest opened port {id}, which does not exist"
                    );
                    return;
                };
                p.guest_open = open;
                if let Err(e) = p.channel.set_guest_open(open) {
                    log::warn!("console {id}: {}", crate::error_chain(&e));
                }
                if open {
                    self.fill_rx(id);
                }
            }
        }
    }

    /// Sends pending control messages into the guest's control receive buffers.
    pub(super) fn flush_control(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut any = false;
        while let Some(msg) = self.control_pending.front() {
            let Some((head, descs)) = active.pop(CONTROL_RX) else {
                break;
            };
            let n = match write_rx_chain(&active.mem, &descs, msg) {
                Ok(n) => {
                    if n < msg.len() {
                        log!(
                            self.guest_warnings.level(),
                            "console: control buffer too small, message truncated"
                        );
                    }
                    self.control_pending.pop_front();
                    n
                }
                Err(e) => {
                    log!(
                        self.guest_warnings.level(),
                        "console: bad control receive chain: {e}"
                    );
                    0
                }
            };
            active.used(CONTROL_RX, head, u32::try_from(n).unwrap_or(u32::MAX));
            any = true;
        }
        if any {
            active.notify(CONTROL_RX);
        }
    }

    // Host input of port `id` into the guest's receive buffers, if the guest has it open.
    fn fill_rx(&mut self, id: u32) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(port) = self.ports.get_mut(&id) else {
            return;
        };
        if !port.ready || !port.guest_open {
            return;
        }
        let qi = rx_queue(id);
        let mut handled = 0;
        while handled < BUDGET {
            if port.channel.input_always_ready() {
                read_into(port, INPUT_BUFFER_MAX);
            }
            if port.input.is_empty() {
                break;
            }
            let Some((head, descs)) = active.pop(qi) else {
                break;
            };
            let n = match write_rx_chain(&active.mem, &descs, port.input.make_contiguous()) {
                Ok(n) => n,
                Err(e) => {
                    log!(
                        self.guest_warnings.level(),
                        "console: port {id}: bad receive chain: {e}"
                    );
                    0
                }
            };
            log::trace!("console: port {id}: {n} bytes into receive chain {head}");
            port.input.drain(..n);
            active.used(qi, head, u32::try_from(n).unwrap_or(u32::MAX));
            handled += 1;
        }
        if handled > 0 {
            active.notify(qi);
        }
        if handled == BUDGET {
            self.resume(qi);
        }
    }

    // Queue `qi` is to be served again once the other event sources had their turn.
    fn resume(&mut self, qi: usize) {
        if !self.resume.contains(&qi) {
            self.resume.push(qi);
        }
        self.watch.wake();
    }

    // The channel of port `id` is readable. Someone types: the terminal may have been
    // resized since (a pts gets no SIGWINCH of kuml's), so its size is read again.
    fn read_input(&mut self, id: u32) {
        if let Some(p) = self.ports.get_mut(&id) {
            read_into(p, INPUT_BUFFER_MAX);
            self.refresh_size(id);
            self.fill_rx(id);
        }
    }

    fn on_wake(&mut self) {
        self.watch.take_wake();
        if let Some(a) = self.active.as_mut() {
            a.signal_reset();
        }
        for qi in std::mem::take(&mut self.resume) {
            self.process_queue(qi);
        }
        self.flush_control();
        let ids: Vec<u32> = self.ports.keys().copied().collect();
        for id in ids {
            self.fill_rx(id);
        }
    }

    /// What the event loop should watch: the queues while the device works, each port's
    /// channel (input while its buffer has room, output while output waits).
    pub(super) fn interest(&self) -> Interest {
        let mut want = Interest::new();
        if let Some(a) = self.active.as_ref().filter(|a| !a.broken) {
            for q in a.queues.iter().flatten() {
                want.add(q.notify.clone(), QUEUE | u32::from(q.index), EventSet::IN);
            }
        }
        for (id, p) in &self.ports {
            p.channel
                .watch(&mut want, PORT | id, p.input.len() < INPUT_BUFFER_MAX);
        }
        want
    }
}

// Reads a port's channel into its input buffer, up to `max` buffered bytes.
fn read_into(port: &mut super::device::Port, max: usize) {
    let mut buf = [0u8; 4096];
    while port.input.len() < max {
        let room = (max - port.input.len()).min(buf.len());
        match port.channel.read(&mut buf[..room]) {
            ChanRead::Data(n) => {
                log::trace!("console: {}: {n} bytes of input", port.name);
                port.input.extend(&buf[..n])
            }
            ChanRead::WouldBlock | ChanRead::Closed => break,
        }
    }
}

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        let want = self.interest();
        self.watch.apply(ops, want);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        let set = events.event_set();
        match data & KIND_MASK {
            _ if data == WAKE => self.on_wake(),
            QUEUE => {
                let qi = (data & !KIND_MASK) as usize;
                if let Some(Some(q)) = self.active.as_ref().and_then(|a| a.queues.get(qi)) {
                    let _ = q.notify.read();
                }
                self.process_queue(qi);
            }
            PORT => {
                let id = data & !KIND_MASK;
                let hup = EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP;
                if set.intersects(EventSet::IN | hup) {
                    self.read_input(id);
                }
                if set.intersects(EventSet::OUT | hup) {
                    if let Some(p) = self.ports.get_mut(&id) {
                        p.channel.flush();
                    }
                }
            }
            _ => log::warn!("console: unexpected event data {data:#x}"),
        }
        let want = self.interest();
        self.watch.apply(ops, want);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_queue_roles() {
        assert_eq!(queue_role(0), QueueRole::Rx(0));
        assert_eq!(queue_role(1), QueueRole::Tx(0));
        assert_eq!(queue_role(2), QueueRole::ControlRx);
        assert_eq!(queue_role(3), QueueRole::ControlTx);
        assert_eq!(queue_role(4), QueueRole::Rx(1));
        assert_eq!(queue_role(5), QueueRole::Tx(1));
        assert_eq!(queue_role(8), QueueRole::Rx(3));
        for id in 0..64 {
            assert_eq!(queue_role(rx_queue(id)), QueueRole::Rx(id));
            assert_eq!(queue_role(rx_queue(id) + 1), QueueRole::Tx(id));
        }
    }
}
