//! A 16550A UART (vm-superio) on the port-I/O bus: UML's serial lines `ssl0`..`ssl3`.
//!
//! The guest's output goes to the line's [`Channel`], which never blocks and never fails (a
//! vanished reader detaches it; a slow or absent one finds the newest output waiting, see
//! [`crate::chan`]). Input read from the channel that does not fit in the UART's 64-byte FIFO
//! waits in a host-side queue and moves in as the guest reads; while that queue is full the
//! channel is not read, so nothing is lost and the host side feels the backpressure.
//!
//! The device is an event-manager subscriber with a [`Watch`]: it watches the channel's input
//! (which changes when a `port:` client connects) while the queue has room, and its output
//! while output waits; a `pts`, `tty` or `port:` line is one descriptor for both, watched once.
//! The guest's register accesses run on a vCPU thread: when a write leaves output waiting, or
//! a read makes room for input, the device wakes the event loop to watch again.

use std::collections::VecDeque;
use std::io;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::chan::{ChanRead, Channel};
use crate::watch::{Interest, Watch, WAKE};

/// The I/O ports and IRQs of COM1 to COM4.
pub const COM_PORTS: [(u16, u32); 4] = [(0x3f8, 4), (0x2f8, 3), (0x3e8, 4), (0x2e8, 3)];
/// Registers per UART.
pub const COM_PORT_LEN: u16 = 8;
/// Input held for the guest beyond the FIFO before the channel is no longer read.
const MAX_PENDING: usize = 64 << 10;

/// Event data of the channel's descriptors.
const EV_CHANNEL: u32 = 1;

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
    watch: Watch,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("pending", &self.pending.len())
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq` and connected to `channel`.
    pub fn new(irq: EventFd, channel: Channel) -> io::Result<Self> {
        let name = format!("serial line ({})", channel.describe());
        Ok(SerialDevice {
            uart: Serial::new(IrqTrigger(irq), Sink(channel)),
            pending: VecDeque::new(),
            watch: Watch::new(name)?,
        })
    }

    /// The line's channel.
    pub fn channel(&self) -> &Channel {
        &self.uart.writer().0
    }

    fn channel_mut(&mut self) -> &mut Channel {
        &mut self.uart.writer_mut().0
    }

    /// Replaces the line's channel (mconsole `config sslN=`). The old one's descriptors are
    /// closed once the event loop, woken now, has stopped watching them.
    pub fn set_channel(&mut self, channel: Channel) {
        self.watch
            .set_name(format!("serial line ({})", channel.describe()));
        *self.channel_mut() = channel;
        self.watch.wake();
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
            match self.channel_mut().read(&mut buf[..room]) {
                ChanRead::Data(n) => {
                    log::trace!("serial: {n} bytes of input");
                    self.enqueue(&buf[..n]);
                }
                ChanRead::WouldBlock | ChanRead::Closed => break,
            }
        }
    }

    /// What the event loop should watch: the channel's input while the queue has room, its
    /// output while output waits.
    fn interest(&self) -> Interest {
        let mut want = Interest::new();
        self.channel()
            .watch(&mut want, EV_CHANNEL, self.pending.len() < MAX_PENDING);
        want
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
            // Room again: the channel is to be read again.
            self.watch.wake();
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let waited = self.channel().pending_output() > 0;
        if let (Some(&v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if off == 1 {
                log::trace!("serial: guest wrote IER {v:#04x}");
            }
            if let Err(e) = self.uart.write(off, v) {
                log::debug!("serial register write failed: {e:?}");
            }
        }
        if !waited && self.channel().pending_output() > 0 {
            // Output started waiting for the host side: the event loop is to watch for room.
            self.watch.rearm(&self.interest());
        }
    }
}

impl MutEventSubscriber for SerialDevice {
    fn init(&mut self, ops: &mut EventOps) {
        let want = self.interest();
        self.watch.apply(ops, want);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            WAKE => self.watch.take_wake(),
            EV_CHANNEL => {
                if set.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
                    self.channel_mut().flush();
                }
            }
            d => log::warn!("serial line: unexpected event data {d:#x}"),
        }
        self.read_input();
        let want = self.interest();
        self.watch.apply(ops, want);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chan::{Chan, ChannelSpec};
    use event_manager::{EventManager, SubscriberOps};
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    /// A line whose input and output are ONE descriptor (as a pts, a tty or a telnet
    /// connection is), and the peer's end.
    fn line() -> (Channel, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let ch = Channel::from_fd(ChannelSpec::single(Chan::Pts), OwnedFd::from(ours)).unwrap();
        (ch, theirs)
    }

    fn uart(ch: Channel) -> Arc<Mutex<SerialDevice>> {
        Arc::new(Mutex::new(SerialDevice::new(evt(), ch).unwrap()))
    }

    // The guest writes `bytes` to THR, on a thread of its own as a vCPU does.
    fn guest_writes(s: &Arc<Mutex<SerialDevice>>, bytes: Vec<u8>) {
        let s = s.clone();
        std::thread::spawn(move || {
            for b in bytes {
                s.lock().unwrap().write(0x3f8, 0, &[b]);
            }
        })
        .join()
        .unwrap();
    }

    // Reads what the peer has now.
    fn drain(peer: &mut UnixStream) -> Vec<u8> {
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = peer.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    fn small_send_buffer(fd: &impl AsRawFd) {
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt reads a live c_int of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }

    #[test]
    fn output_reaches_the_channel() {
        let (ch, mut peer) = line();
        let mut s = SerialDevice::new(evt(), ch).unwrap();
        for b in b"hi" {
            s.write(0x3f8, 0, &[*b]);
        }
        let mut got = [0u8; 2];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    // G1: a line whose peer stopped reading used to go silent for the rest of the run: the
    // vCPU's writes never asked the event loop to watch for room, and when something else
    // did, the line's one descriptor was added a second time (for OUT) and refused
    // (FdAlreadyRegistered), so the buffered output never moved again.
    #[test]
    fn a_line_whose_reader_comes_back_flows_again() {
        let (ch, mut peer) = line();
        let s = uart(ch);
        small_send_buffer(&s.lock().unwrap().channel().output_fd().unwrap());
        let mut em = Em::new().unwrap();
        em.add_subscriber(s.clone());
        // Nobody reads: far more than the socket takes.
        guest_writes(&s, vec![b'.'; 64 << 10]);
        assert!(s.lock().unwrap().channel().pending_output() > 0);
        // The vCPU's write woke the loop, which now watches the one descriptor for both.
        em.run_with_timeout(1000).unwrap();
        {
            let d = s.lock().unwrap();
            let fd = d.channel().output_fd().unwrap();
            assert!(
                d.watch.watches(fd, EventSet::IN | EventSet::OUT),
                "{:?}",
                d.watch
            );
        }
        // The reader is back; new output follows the old.
        guest_writes(&s, b"MARKER".to_vec());
        let mut got = Vec::new();
        for _ in 0..1000 {
            got.extend(drain(&mut peer));
            if got.ends_with(b"MARKER") {
                break;
            }
            em.run_with_timeout(100).unwrap();
        }
        assert!(got.ends_with(b"MARKER"), "the line went silent");
        assert_eq!(
            got.len(),
            (64 << 10) + 6,
            "nothing was lost below the bound"
        );
        // Drained: nothing watched for output any more, input still is.
        em.run_with_timeout(0).unwrap();
        let d = s.lock().unwrap();
        let fd = d.channel().output_fd().unwrap();
        assert!(d.watch.watches(fd, EventSet::IN));
        assert!(!d.watch.watches(fd, EventSet::OUT));
    }

    // G1 as the review reproduced it (V1): a `pts` line nobody holds, then a terminal that
    // opens the pts and reads. On c0c0e17 it saw 20480 bytes and then nothing.
    #[test]
    fn a_pts_nobody_read_shows_new_output_once_opened() {
        use crate::chan::LineClass;
        use std::os::unix::fs::OpenOptionsExt;
        let ch = Channel::open(&ChannelSpec::single(Chan::Pts), LineClass::Serial, 0)
            .expect("TEST CANNOT RUN: allocating a pts needs /dev/ptmx");
        let path = ch.pts_path().unwrap().to_path_buf();
        let s = uart(ch);
        let mut em = Em::new().unwrap();
        em.add_subscriber(s.clone());
        // Lines of output (the pts's reader is a terminal, which reads whole lines).
        let line = |i: usize| format!("boot line {i:05}\n").into_bytes();
        guest_writes(&s, (0..4000).flat_map(line).collect());
        em.run_with_timeout(100).unwrap();
        let mut term = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        guest_writes(&s, b"MARKER\n".to_vec());
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        for _ in 0..1000 {
            while let Ok(n) = term.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            if got.ends_with(b"MARKER\n") {
                break;
            }
            em.run_with_timeout(100).unwrap();
        }
        assert!(
            got.ends_with(b"MARKER\n"),
            "the line went silent after {} bytes",
            got.len()
        );
    }

    #[test]
    fn a_stalled_line_keeps_the_newest_output() {
        let (ch, mut peer) = line();
        let s = uart(ch);
        small_send_buffer(&s.lock().unwrap().channel().output_fd().unwrap());
        let mut em = Em::new().unwrap();
        em.add_subscriber(s.clone());
        let max = crate::chan::OUTPUT_BUFFER_MAX;
        let mut out: Vec<u8> = (0..max + max / 2).map(|i| (i % 251) as u8).collect();
        out.extend_from_slice(b"NEWEST");
        guest_writes(&s, out.clone());
        assert_eq!(s.lock().unwrap().channel().pending_output(), max);
        let mut got = Vec::new();
        for _ in 0..1000 {
            got.extend(drain(&mut peer));
            if got.ends_with(b"NEWEST") {
                break;
            }
            em.run_with_timeout(100).unwrap();
        }
        // What the socket took before the stall, then the newest `max` bytes.
        assert!(
            got.len() > max && got.len() < out.len(),
            "{} bytes",
            got.len()
        );
        let early = got.len() - max;
        assert_eq!(
            &got[..early],
            &out[..early],
            "what went out before the stall"
        );
        assert_eq!(&got[early..], &out[out.len() - max..], "the newest output");
    }

    // B2: a half that fails is detached, and its descriptor is closed only after the event
    // loop stopped watching it. It used to be closed at once: the loop then failed to remove
    // it and kept a stale entry, so the next descriptor to get that number (a hot-plugged
    // disk's queue eventfd, say) could never be watched.
    #[test]
    fn a_failed_output_is_closed_only_after_the_loop_let_go() {
        // SAFETY: ignoring SIGPIPE is what the VMM does; the test needs EPIPE, not a signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let (ch, peer) = line();
        let s = uart(ch);
        let fd = s.lock().unwrap().channel().output_fd().unwrap();
        small_send_buffer(&fd);
        let ours = crate::watch::fd_names(fd);
        assert!(ours.is_some());
        let mut em = Em::new().unwrap();
        em.add_subscriber(s.clone());
        guest_writes(&s, vec![b'.'; 64 << 10]);
        em.run_with_timeout(1000).unwrap();
        assert!(s.lock().unwrap().watch.watches(fd, EventSet::OUT));
        // The reader goes away: the next flush fails with EPIPE and detaches the output.
        drop(peer);
        em.run_with_timeout(1000).unwrap();
        let d = s.lock().unwrap();
        assert_eq!(d.channel().output_fd(), None, "the output is detached");
        assert!(!d.watch.watches(fd, EventSet::IN), "no longer watched");
        drop(d);
        assert_ne!(crate::watch::fd_names(fd), ours, "closed once forgotten");
        // A device added now (its eventfd likely gets the freed number) gets its events: the
        // loop kept no stale entry.
        let probe = uart(Channel::null());
        em.add_subscriber(probe.clone());
        probe.lock().unwrap().watch.wake();
        assert!(em.run_with_timeout(1000).unwrap() > 0);
    }

    #[test]
    fn output_to_a_closed_peer_is_dropped_quietly() {
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let (ch, peer) = line();
        drop(peer);
        let mut s = SerialDevice::new(evt(), ch).unwrap();
        s.write(0x3f8, 0, b"x");
        assert_eq!(s.channel().output_fd(), None, "the output detached");
        s.write(0x3f8, 0, b"y");
        assert_eq!(s.channel().pending_output(), 0, "nothing kept for nobody");
    }

    #[test]
    fn input_beyond_the_fifo_waits() {
        let (ch, mut peer) = line();
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
        let (old, _old_peer) = line();
        let s = uart(old);
        let mut em = Em::new().unwrap();
        em.add_subscriber(s.clone());
        let (new, mut peer) = line();
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
