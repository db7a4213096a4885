//! A 16550A UART (vm-superio) on the port-I/O bus: UML's serial lines `ssl0`..`ssl3`.
//!
//! The guest's output goes to the line's [`Channel`], which never blocks and never fails (a
//! vanished reader detaches it). Input read from the channel that does not fit in the UART's
//! 64-byte FIFO waits in a host-side queue and moves in as the guest reads; while that queue is
//! full the channel is not read, so nothing is lost and the host side feels the backpressure.
//!
//! The device is an event-manager subscriber: it watches the channel's input descriptor (which
//! changes when a `port:` client connects) and, while output is buffered, its output descriptor.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::chan::{ChanRead, Channel};

/// The I/O ports and IRQs of COM1 to COM4.
pub const COM_PORTS: [(u16, u32); 4] = [(0x3f8, 4), (0x2f8, 3), (0x3e8, 4), (0x2e8, 3)];
/// Registers per UART.
pub const COM_PORT_LEN: u16 = 8;
/// Input held for the guest beyond the FIFO before the channel is no longer read.
const MAX_PENDING: usize = 64 << 10;

/// Event data: the channel's input is readable.
const EV_INPUT: u32 = 1;
/// Event data: the channel's output is writable.
const EV_OUTPUT: u32 = 2;
/// Event data: the guest drained the FIFO; read input again.
const EV_DRAINED: u32 = 3;

/// Raises the UART's interrupt by writing an eventfd that KVM routes to its IRQ line.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART's output side: the line's channel.
#[derive(Debug)]
struct Sink(Channel);

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One UART with its channel and pending input.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Sink>,
    pending: VecDeque<u8>,
    /// Written when the guest empties the FIFO while input waits, so that the event loop
    /// resumes reading a channel it stopped reading, and when the channel is replaced.
    drained: EventFd,
    /// Channels replaced at run time, closed once the event loop stopped watching them.
    retired: Vec<Channel>,
    watched_in: Option<RawFd>,
    watched_out: Option<RawFd>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq` and connected to `channel`.
    pub fn new(irq: EventFd, channel: Channel) -> io::Result<Self> {
        Ok(SerialDevice {
            uart: Serial::new(IrqTrigger(irq), Sink(channel)),
            pending: VecDeque::new(),
            drained: EventFd::new(libc::EFD_NONBLOCK)?,
            retired: Vec::new(),
            watched_in: None,
            watched_out: None,
        })
    }

    /// The line's channel.
    pub fn channel(&self) -> &Channel {
        &self.uart.writer().0
    }

    /// Replaces the line's channel (mconsole `config sslN=`). The old one is closed once the
    /// event loop, woken now, has stopped watching it and watches the new one.
    pub fn set_channel(&mut self, channel: Channel) {
        let old = std::mem::replace(&mut self.uart.writer_mut().0, channel);
        self.retired.push(old);
        if let Err(e) = self.drained.write(1) {
            log::warn!("serial line: cannot wake the event loop for the new channel: {e}");
        }
    }

    /// Queues input for the guest; returns how many bytes were accepted.
    pub fn enqueue(&mut self, input: &[u8]) -> usize {
        let n = input
            .len()
            .min(MAX_PENDING.saturating_sub(self.pending.len()));
        self.pending.extend(&input[..n]);
        self.refill();
        n
    }

    /// Bytes waiting to enter the FIFO.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn refill(&mut self) {
        let room = self.uart.fifo_capacity();
        if room == 0 || self.pending.is_empty() {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..room.min(self.pending.len())).collect();
        log::trace!("serial: {} bytes into the FIFO", chunk.len());
        if let Err(e) = self.uart.enqueue_raw_bytes(&chunk) {
            log::debug!("serial input not delivered: {e:?}");
        }
    }

    /// Reads the channel while there is room for its input.
    fn read_input(&mut self) {
        let mut buf = [0u8; 4096];
        while self.pending.len() < MAX_PENDING {
            let room = (MAX_PENDING - self.pending.len()).min(buf.len());
            match self.uart.writer_mut().0.read(&mut buf[..room]) {
                ChanRead::Data(n) => {
                    log::trace!("serial: {n} bytes of input");
                    self.enqueue(&buf[..n]);
                }
                ChanRead::WouldBlock | ChanRead::Closed => break,
            }
        }
    }

    /// Brings the epoll registrations in line with the channel's descriptors.
    fn update_watches(&mut self, ops: &mut EventOps) {
        let chan = &self.uart.writer().0;
        let want_in = chan.input_fd().filter(|_| self.pending.len() < MAX_PENDING);
        let want_out = chan.output_fd().filter(|_| chan.wants_writable());
        if want_in != self.watched_in {
            if let Some(fd) = self.watched_in.take() {
                let _ = ops.remove(Events::with_data_raw(fd, EV_INPUT, EventSet::IN));
            }
            if let Some(fd) = want_in {
                match ops.add(Events::with_data_raw(fd, EV_INPUT, EventSet::IN)) {
                    Ok(()) => self.watched_in = Some(fd),
                    Err(e) => log::warn!("cannot watch serial input: {e:?}"),
                }
            }
        }
        if want_out != self.watched_out {
            if let Some(fd) = self.watched_out.take() {
                let _ = ops.remove(Events::with_data_raw(fd, EV_OUTPUT, EventSet::OUT));
            }
            if let Some(fd) = want_out {
                match ops.add(Events::with_data_raw(fd, EV_OUTPUT, EventSet::OUT)) {
                    Ok(()) => self.watched_out = Some(fd),
                    Err(e) => log::warn!("cannot watch serial output: {e:?}"),
                }
            }
        }
        self.uart.writer_mut().0.reap();
        self.retired.clear();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
            if off == 0 {
                log::trace!("serial: guest read {:#04x}", *b);
            }
        }
        let was_full = self.pending.len() >= MAX_PENDING;
        self.refill();
        if was_full && self.pending.len() < MAX_PENDING {
            let _ = self.drained.write(1);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Some(&v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if off == 1 {
                log::trace!("serial: guest wrote IER {v:#04x}");
            }
            if let Err(e) = self.uart.write(off, v) {
                log::debug!("serial register write failed: {e:?}");
            }
        }
    }
}

impl MutEventSubscriber for SerialDevice {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.drained, EV_DRAINED, EventSet::IN)) {
            log::warn!("cannot watch the serial FIFO: {e:?}");
        }
        self.update_watches(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EV_DRAINED => {
                let _ = self.drained.read();
            }
            EV_OUTPUT => self.uart.writer_mut().0.flush(),
            _ => {}
        }
        self.read_input();
        self.update_watches(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chan::{Chan, ChannelSpec};
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn pair_channel() -> (Channel, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (a, b) = (ours.try_clone().unwrap(), ours);
        let ch = Channel::from_fds(
            ChannelSpec::single(Chan::Fd(3)),
            Some(OwnedFd::from(a)),
            Some(OwnedFd::from(b)),
        )
        .unwrap();
        (ch, theirs)
    }

    #[test]
    fn output_reaches_the_channel() {
        let (ch, mut peer) = pair_channel();
        let mut s = SerialDevice::new(evt(), ch).unwrap();
        for b in b"hi" {
            s.write(0x3f8, 0, &[*b]);
        }
        let mut got = [0u8; 2];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn output_to_a_closed_peer_is_dropped_quietly() {
        let (ch, peer) = pair_channel();
        drop(peer);
        let mut s = SerialDevice::new(evt(), ch).unwrap();
        s.write(0x3f8, 0, b"x");
        s.write(0x3f8, 0, b"y");
    }

    #[test]
    fn input_beyond_the_fifo_waits() {
        let (ch, mut peer) = pair_channel();
        let mut s = SerialDevice::new(evt(), ch).unwrap();
        let input: Vec<u8> = (0..200u8).collect();
        peer.write_all(&input).unwrap();
        s.read_input();
        assert!(s.pending() > 0);
        assert_eq!(drain_rbr(&mut s), input);
    }

    #[test]
    fn null_channel_discards() {
        let mut s = SerialDevice::new(evt(), Channel::null()).unwrap();
        s.write(0x3f8, 0, b"z");
        s.read_input();
        assert_eq!(s.pending(), 0);
    }

    // Reads the receive buffer as the guest would, while LSR says data is ready (at most 400
    // bytes, so that a UART that never runs dry fails the test instead of hanging it).
    fn drain_rbr(s: &mut SerialDevice) -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..400 {
            let mut lsr = [0u8];
            s.read(0x3f8, 5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut b = [0u8];
            s.read(0x3f8, 0, &mut b);
            got.push(b[0]);
        }
        got
    }

    #[test]
    fn a_replaced_channel_is_watched_for_input() {
        use event_manager::{EventManager, SubscriberOps};
        use std::sync::{Arc, Mutex};
        let (old, _old_peer) = pair_channel();
        let s = Arc::new(Mutex::new(SerialDevice::new(evt(), old).unwrap()));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(s.clone());
        let (new, mut peer) = pair_channel();
        s.lock().unwrap().set_channel(new);
        peer.write_all(b"typed").unwrap();
        let mut got = Vec::new();
        for _ in 0..20 {
            em.run_with_timeout(50).unwrap();
            got.extend(drain_rbr(&mut s.lock().unwrap()));
            if got.len() >= 5 {
                break;
            }
        }
        assert_eq!(got, b"typed");
    }
}
