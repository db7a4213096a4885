//! Device tests with driver-side queues in guest memory (virtio-queue's mock) and a real
//! event-manager loop (epoll only: no threads, no privileges).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::control::{GuestMsg, HostMsg};
use super::device::Console;
use crate::chan::{Chan, Channel, ChannelSpec};
use crate::virtio::test_utils::{self, Driver, TestInterrupt, QLEN, W};
use crate::virtio::{InterruptKind, VirtioDevice};

const MAX_PORTS: u32 = 4;

/// What a console test drives on top of the shared driver.
trait ConsoleDriver {
    /// Queues `bytes` on queue `qi` and notifies it.
    fn send(&mut self, qi: usize, bytes: &[u8]);
    fn post_rx(&mut self, qi: usize, len: u32);
    /// The control messages the device sent since the last call.
    fn control_msgs(&mut self) -> Vec<HostMsg>;
    fn guest_msg(&mut self, m: GuestMsg);
}

impl ConsoleDriver for Driver<'_> {
    fn send(&mut self, qi: usize, bytes: &[u8]) {
        let d = self.readable(bytes);
        self.add(qi, &[d]);
        self.kick(qi);
    }

    fn post_rx(&mut self, qi: usize, len: u32) {
        let a = self.buf(len);
        self.add(qi, &[SplitDescriptor::new(a, len, W, 0)]);
    }

    fn control_msgs(&mut self) -> Vec<HostMsg> {
        self.used(2)
            .into_iter()
            .map(|u| HostMsg::decode(&u.bytes).unwrap())
            .collect()
    }

    fn guest_msg(&mut self, m: GuestMsg) {
        self.send(3, &m.encode());
    }
}

type Rig = test_utils::Rig<Console>;

fn mem() -> GuestMemoryMmap {
    test_utils::mem(0x200_0000)
}

// A channel over one socket for both directions, as a pts or a telnet connection is.
fn socket_channel() -> (UnixStream, Channel) {
    let (a, b) = UnixStream::pair().unwrap();
    let ch = Channel::from_fd(ChannelSpec::single(Chan::Fd(3)), b.into()).unwrap();
    (a, ch)
}

fn rig(driver: &Driver, ports: Vec<(u32, Channel)>) -> Rig {
    rig_with(Console::new(MAX_PORTS).unwrap(), driver, ports)
}

fn rig_with(mut c: Console, driver: &Driver, ports: Vec<(u32, Channel)>) -> Rig {
    for (id, ch) in ports {
        c.add_port(id, ch).unwrap();
    }
    Rig::new(driver, c, 0)
}

// DEVICE_READY -> DEVICE_ADD for each port -> PORT_READY -> CONSOLE_PORT, PORT_NAME, PORT_OPEN.
fn handshake(d: &mut Driver, r: &mut Rig, ids: &[u32]) {
    for _ in 0..32 {
        d.post_rx(2, 64);
    }
    d.kick(2);
    d.guest_msg(GuestMsg::DeviceReady { ok: true });
    r.run();
    let adds: Vec<HostMsg> = ids.iter().map(|i| HostMsg::DeviceAdd(*i)).collect();
    assert_eq!(d.control_msgs(), adds);
    for id in ids {
        d.guest_msg(GuestMsg::PortReady { id: *id, ok: true });
    }
    r.run();
    let mut want = Vec::new();
    for id in ids {
        want.push(HostMsg::ConsolePort(*id));
        want.push(HostMsg::PortName {
            id: *id,
            name: format!("con{id}"),
        });
        want.push(HostMsg::PortOpen {
            id: *id,
            open: true,
        });
    }
    assert_eq!(d.control_msgs(), want);
}

#[test]
fn test_control_handshake_announces_console_ports() {
    let m = mem();
    let mut d = Driver::new(&m, 2 * (MAX_PORTS as usize + 1));
    let mut r = rig(&d, vec![(0, Channel::null()), (1, Channel::null())]);
    handshake(&mut d, &mut r, &[0, 1]);
    assert_eq!(r.irq.resets.load(Ordering::SeqCst), 0);
    assert!(r
        .irq
        .triggers
        .lock()
        .unwrap()
        .contains(&InterruptKind::Queue(2)));
}

#[test]
fn test_transmit_goes_to_the_channel() {
    let m = mem();
    let mut d = Driver::new(&m, 10);
    let (mut peer, ch0) = socket_channel();
    let (mut peer1, ch1) = socket_channel();
    let mut r = rig(&d, vec![(0, ch0), (1, ch1)]);
    handshake(&mut d, &mut r, &[0, 1]);
    d.send(1, b"hello ");
    // A two-descriptor chain.
    let a = d.buf(3);
    let b = d.buf(3);
    m.write_slice(b"wor", GuestAddress(a)).unwrap();
    m.write_slice(b"ld!", GuestAddress(b)).unwrap();
    d.add(
        1,
        &[
            SplitDescriptor::new(a, 3, 0, 0),
            SplitDescriptor::new(b, 3, 0, 0),
        ],
    );
    d.kick(1);
    d.send(5, b"port1");
    r.run();
    let mut got = [0u8; 12];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello world!");
    let mut got = [0u8; 5];
    peer1.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"port1");
    assert_eq!(d.used(1).len(), 2);
    assert!(d.used(1).is_empty());
}

#[test]
fn test_receive_waits_for_guest_open_then_delivers() {
    let m = mem();
    let mut d = Driver::new(&m, 10);
    let (mut peer, ch0) = socket_channel();
    let mut r = rig(&d, vec![(0, ch0)]);
    peer.write_all(b"early").unwrap();
    r.run();
    handshake(&mut d, &mut r, &[0]);
    d.post_rx(0, 64);
    d.kick(0);
    r.run();
    // Not open yet: nothing delivered, nothing lost.
    assert!(d.used(0).is_empty());
    d.guest_msg(GuestMsg::PortOpen { id: 0, open: true });
    r.run();
    let used = d.used(0);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].bytes, b"early");
    assert!(r.dev.lock().unwrap().is_guest_open(0));
    // More input with no buffer posted: kept until the guest posts one.
    peer.write_all(b"late").unwrap();
    r.run();
    assert!(d.used(0).is_empty());
    d.post_rx(0, 2);
    d.post_rx(0, 64);
    d.kick(0);
    r.run();
    let used = d.used(0);
    let all: Vec<u8> = used.iter().flat_map(|u| u.bytes.clone()).collect();
    assert_eq!(all, b"late");
}

#[test]
fn test_input_backpressure_loses_nothing() {
    let m = mem();
    let mut d = Driver::new(&m, 10);
    let (peer, ch0) = socket_channel();
    let mut r = rig(&d, vec![(0, ch0)]);
    handshake(&mut d, &mut r, &[0]);
    let total: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    peer.set_nonblocking(true).unwrap();
    let mut peer = peer;
    let mut sent = 0usize;
    let mut got: Vec<u8> = Vec::new();
    d.guest_msg(GuestMsg::PortOpen { id: 0, open: true });
    r.run();
    for _ in 0..200 {
        if sent < total.len() {
            if let Ok(n) = peer.write(&total[sent..]) {
                sent += n;
            }
        }
        r.run();
        assert!(r.dev.lock().unwrap().ports[&0].input.len() <= super::INPUT_BUFFER_MAX);
        // The guest is slow: a few small buffers per round.
        if d.next_desc[0] < QLEN - 4 {
            for _ in 0..4 {
                d.post_rx(0, 1000);
            }
            d.kick(0);
        }
        r.run();
        for u in d.used(0) {
            got.extend(u.bytes);
        }
        if got.len() == total.len() {
            break;
        }
    }
    assert_eq!(sent, total.len());
    assert!(
        got == total,
        "got {} of {} bytes, or out of order",
        got.len(),
        total.len()
    );
}

#[test]
fn test_ports_added_and_removed_at_run_time() {
    let m = mem();
    let mut d = Driver::new(&m, 10);
    let mut r = rig(&d, vec![(0, Channel::null())]);
    handshake(&mut d, &mut r, &[0]);
    let (mut peer, ch) = socket_channel();
    r.dev.lock().unwrap().add_port(3, ch).unwrap();
    r.run();
    assert_eq!(d.control_msgs(), vec![HostMsg::DeviceAdd(3)]);
    d.guest_msg(GuestMsg::PortReady { id: 3, ok: true });
    r.run();
    assert_eq!(d.control_msgs().len(), 3);
    d.send(9, b"on3");
    r.run();
    let mut b = [0u8; 3];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"on3");
    r.dev.lock().unwrap().remove_port(3).unwrap();
    r.run();
    assert_eq!(d.control_msgs(), vec![HostMsg::DeviceRemove(3)]);
    assert_eq!(r.dev.lock().unwrap().port_ids(), vec![0]);
    // Output to the removed port is consumed and dropped.
    d.send(9, b"gone");
    r.run();
    assert_eq!(d.used(9).len(), 2);
}

#[test]
fn test_hostile_control_and_chains_never_panic() {
    let m = mem();
    let mut d = Driver::new(&m, 10);
    let (_peer, ch0) = socket_channel();
    let mut r = rig(&d, vec![(0, ch0)]);
    handshake(&mut d, &mut r, &[0]);
    d.send(3, &[1, 2, 3]);
    d.send(3, &[0, 0, 0, 0, 99, 0, 0, 0]);
    d.send(3, &HostMsg::DeviceAdd(0).encode());
    d.guest_msg(GuestMsg::PortReady { id: 7, ok: true });
    d.guest_msg(GuestMsg::PortOpen {
        id: u32::MAX,
        open: true,
    });
    d.guest_msg(GuestMsg::PortReady { id: 0, ok: true }); // duplicate: ignored
                                                          // A write-only descriptor on a transmit queue; a buffer outside guest memory.
    d.add(1, &[SplitDescriptor::new(0x10_0000, 16, W, 0)]);
    d.add(1, &[SplitDescriptor::new(0xffff_0000, 16, 0, 0)]);
    d.kick(1);
    // A readable descriptor on a receive queue.
    d.add(0, &[SplitDescriptor::new(0x10_0000, 16, 0, 0)]);
    d.guest_msg(GuestMsg::PortOpen { id: 0, open: true });
    r.run();
    assert!(d.control_msgs().is_empty());
    assert_eq!(d.used(3).len(), 9);
    assert_eq!(d.used(1).len(), 2);
    assert_eq!(r.irq.resets.load(Ordering::SeqCst), 0);
    // An impossible available index: the device asks for a reset instead of panicking.
    m.write_obj(u16::to_le(1000), d.queues[1].avail_addr().unchecked_add(2))
        .unwrap();
    d.kick(1);
    r.run();
    assert_eq!(r.irq.resets.load(Ordering::SeqCst), 1);
}

#[test]
fn test_reset_then_reactivate_renegotiates() {
    let m = mem();
    let mut d = Driver::new(&m, 10);
    let mut r = rig(&d, vec![(0, Channel::null())]);
    handshake(&mut d, &mut r, &[0]);
    assert!(r.dev.lock().unwrap().reset());
    r.run();
    let mut d2 = Driver::new(&m, 10);
    r.dev
        .lock()
        .unwrap()
        .activate(m.clone(), r.irq.clone(), d2.active_queues())
        .unwrap();
    r.run();
    handshake(&mut d2, &mut r, &[0]);
}

#[test]
fn test_invalid_queue_at_activation_asks_for_reset_from_the_event_loop() {
    let m = mem();
    let d = Driver::new(&m, 10);
    let mut c = Console::new(MAX_PORTS).unwrap();
    let irq = Arc::new(TestInterrupt::default());
    let mut qs = d.active_queues();
    // Ring addresses outside guest memory.
    qs[1].queue = {
        let mut q = Queue::new(QLEN).unwrap();
        q.set_size(QLEN);
        q.set_desc_table_address(Some(0xffff_0000), Some(0xffff));
        q.set_ready(true);
        q
    };
    c.activate(m.clone(), irq.clone(), qs).unwrap();
    assert_eq!(irq.resets.load(Ordering::SeqCst), 0);
    let console = Arc::new(Mutex::new(c));
    let mut em = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
    let id = em.add_subscriber(console.clone());
    let mut r = Rig {
        dev: console,
        em,
        id,
        irq,
    };
    r.run();
    assert_eq!(r.irq.resets.load(Ordering::SeqCst), 1);
    // A broken device ignores the guest until it is reset.
    let mut d = d;
    d.send(3, &GuestMsg::DeviceReady { ok: true }.encode());
    r.run();
    assert!(d.used(3).is_empty());
}

#[test]
fn test_activate_needs_control_queues() {
    let m = mem();
    let d = Driver::new(&m, 3);
    let mut c = Console::new(MAX_PORTS).unwrap();
    let irq = Arc::new(TestInterrupt::default());
    assert!(c.activate(m.clone(), irq, d.active_queues()).is_err());
}

#[test]
fn test_emergency_write_reaches_port0() {
    let (mut peer, ch0) = socket_channel();
    let mut c = Console::new(MAX_PORTS).unwrap();
    c.add_port(0, ch0).unwrap();
    c.write_config(8, b"Z\0\0\0");
    c.ack_features(1 << super::VIRTIO_CONSOLE_F_EMERG_WRITE);
    c.write_config(8, b"A\0\0\0");
    let mut b = [0u8; 1];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"A");
}

#[test]
fn test_single_port_device_is_a_console_from_activation_on() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    let (mut peer, ch0) = socket_channel();
    let single = Console::single().unwrap();
    assert_eq!(single.queue_count(), 2);
    assert_eq!(
        single.features() & (1 << super::VIRTIO_CONSOLE_F_MULTIPORT),
        0
    );
    assert!(!single.is_multiport());
    peer.write_all(b"typed early").unwrap();
    let mut r = rig_with(single, &d, vec![(0, ch0)]);
    // No control queues, no handshake: the port is the guest's at once.
    assert!(r.dev.lock().unwrap().is_guest_open(0));
    d.send(1, b"Linux version 6.1");
    d.post_rx(0, 64);
    d.kick(0);
    r.run();
    let mut got = [0u8; 17];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"Linux version 6.1");
    let used = d.used(0);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].bytes, b"typed early");
    assert_eq!(r.irq.resets.load(Ordering::SeqCst), 0);
    // A reset closes the port until the driver activates the device again.
    assert!(r.dev.lock().unwrap().reset());
    assert!(!r.dev.lock().unwrap().is_guest_open(0));
}

#[test]
fn test_single_port_device_needs_only_its_two_queues() {
    let m = mem();
    let d = Driver::new(&m, 1);
    let mut c = Console::single().unwrap();
    let irq = Arc::new(TestInterrupt::default());
    assert!(c.activate(m.clone(), irq, d.active_queues()).is_err());
    assert!(matches!(
        c.add_port(1, Channel::null()),
        Err(super::ConsoleError::OutOfRange { id: 1, max: 1 })
    ));
}

#[test]
fn test_single_port_pts_is_allocated_at_activation() {
    let m = mem();
    let d = Driver::new(&m, 2);
    let ctx = crate::chan::ChanContext::default();
    let spec = ChannelSpec::single(Chan::Pts);
    let ch = Channel::prepare(&spec, crate::chan::LineClass::Console, 0, &ctx)
        .expect("a console pts line (needs /dev/ptmx)");
    assert!(
        ch.pts_path().is_none(),
        "allocated before the guest opened it"
    );
    let r = rig_with(Console::single().unwrap(), &d, vec![(0, ch)]);
    let c = r.dev.lock().unwrap();
    let desc = c.port_description(0).unwrap();
    assert!(desc.starts_with("pts:/dev/pts/"), "{desc}");
}

#[test]
fn test_console_set_routes_con0_to_its_own_device() {
    let set = super::ConsoleSet::new(MAX_PORTS).unwrap();
    set.add_port(0, Channel::null()).unwrap();
    set.add_port(2, Channel::null()).unwrap();
    assert_eq!(set.port_ids(), vec![0, 2]);
    let [first, rest] = set.devices();
    assert!(!first.lock().unwrap().is_multiport());
    assert!(rest.lock().unwrap().is_multiport());
    assert_eq!(first.lock().unwrap().port_ids(), vec![0]);
    assert!(matches!(
        set.remove_port(0),
        Err(super::ConsoleError::Fixed)
    ));
    set.remove_port(2).unwrap();
    assert_eq!(set.port_ids(), vec![0]);
}

// G3: a guest that keeps a transmit queue full kept the event loop in the console's loop
// (no budget: disks, NICs and mconsole starved). A round now handles at most BUDGET chains
// of a queue; the device wakes itself to go on, after the other event sources.
#[test]
fn test_transmit_rounds_are_bounded_and_resume() {
    use super::event_handler::BUDGET;
    let m = mem();
    let mut d = Driver::new(&m, 10);
    let (mut peer, ch0) = socket_channel();
    let mut r = rig(&d, vec![(0, ch0)]);
    handshake(&mut d, &mut r, &[0]);
    let n = 3 * BUDGET + 1;
    for i in 0..n {
        let a = d.buf(1);
        m.write_slice(&[i as u8], GuestAddress(a)).unwrap();
        d.add(1, &[SplitDescriptor::new(a, 1, 0, 0)]);
    }
    d.kick(1);
    // One event, one round.
    assert_eq!(r.em.run_with_timeout(0).unwrap(), 1);
    assert_eq!(d.used(1).len(), BUDGET, "one round is one budget");
    r.run();
    assert_eq!(d.used(1).len(), n - BUDGET, "the rest followed");
    let mut got = vec![0u8; n];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, (0..n).map(|i| i as u8).collect::<Vec<_>>());
    // The same for the control queue.
    d.used(3);
    for _ in 0..n {
        d.guest_msg(GuestMsg::PortReady { id: 0, ok: true });
    }
    assert_eq!(r.em.run_with_timeout(0).unwrap(), 1);
    assert_eq!(d.used(3).len(), BUDGET);
    r.run();
    assert_eq!(d.used(3).len(), n - BUDGET);
}

// G4: each control message for a port that does not exist was a warning: a guest sending
// them in a loop flooded the host log.
#[test]
fn test_bogus_control_messages_log_a_bounded_number_of_warnings() {
    crate::test_log::start();
    let m = mem();
    let mut d = Driver::new(&m, 10);
    let mut r = rig(&d, vec![(0, Channel::null())]);
    handshake(&mut d, &mut r, &[0]);
    d.used(3);
    for i in 0..200 {
        d.guest_msg(GuestMsg::PortOpen {
            id: 0xffff_0000 + i,
            open: true,
        });
    }
    r.run();
    assert_eq!(d.used(3).len(), 200, "every message was handled");
    let warnings = crate::test_log::at(log::Level::Warn);
    assert!(
        warnings.len() <= crate::warn::WARN_BUDGET as usize + 1,
        "{} warnings",
        warnings.len()
    );
    assert!(warnings.iter().any(|w| w.contains("too many")));
}

// B2 on the console: a port removed at run time, and a connection's end, close their
// descriptors only once the event loop stopped watching them.
#[test]
fn test_a_removed_port_is_closed_only_after_the_loop_let_go() {
    use event_manager::EventSet;
    let m = mem();
    let mut d = Driver::new(&m, 10);
    let (peer, ch) = socket_channel();
    let mut r = rig(&d, vec![(0, Channel::null()), (1, ch)]);
    handshake(&mut d, &mut r, &[0, 1]);
    let fd = r.dev.lock().unwrap().ports[&1].channel.input_fd().unwrap();
    assert!(r.dev.lock().unwrap().watch.watches(fd, EventSet::IN));
    let ours = crate::watch::fd_names(fd);
    assert!(ours.is_some());
    r.dev.lock().unwrap().remove_port(1).unwrap();
    assert_eq!(
        crate::watch::fd_names(fd),
        ours,
        "still watched, still open"
    );
    r.run();
    assert!(!r.dev.lock().unwrap().watch.watches(fd, EventSet::IN));
    assert_ne!(crate::watch::fd_names(fd), ours, "closed once forgotten");
    drop(peer);
}

const F_SIZE: u64 = 1 << super::VIRTIO_CONSOLE_F_SIZE;

// A console line on a pts kuml allocated (as `conN=pts`), and the slave a terminal program
// on the host would hold.
fn pts_line(id: u32) -> (std::fs::File, Channel) {
    let ctx = crate::chan::ChanContext::default();
    let spec = ChannelSpec::single(Chan::Pts);
    let ch = Channel::open_in(&spec, crate::chan::LineClass::Console, id, &ctx)
        .expect("a console pts line (needs /dev/ptmx)");
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ch.pts_path().unwrap())
        .unwrap();
    (slave, ch)
}

// What a terminal program on the slave does when its window changes size.
fn set_size(slave: &std::fs::File, cols: u16, rows: u16) {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call.
    let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

fn config_size(c: &Console) -> (u16, u16) {
    let mut b = [0u8; 4];
    c.read_config(0, &mut b);
    (
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
    )
}

#[test]
fn test_multiport_console_follows_its_host_terminal_size() {
    let m = mem();
    let mut d = Driver::new(&m, 2 * (MAX_PORTS as usize + 1));
    let (slave, ch) = pts_line(1);
    set_size(&slave, 100, 30);
    let mut c = Console::new(MAX_PORTS).unwrap();
    c.add_port(1, ch).unwrap();
    let mut r = Rig::new(&d, c, F_SIZE);
    for _ in 0..32 {
        d.post_rx(2, 64);
    }
    d.kick(2);
    d.guest_msg(GuestMsg::DeviceReady { ok: true });
    r.run();
    assert_eq!(d.control_msgs(), [HostMsg::DeviceAdd(1)]);
    d.guest_msg(GuestMsg::PortReady { id: 1, ok: true });
    r.run();
    // The size follows CONSOLE_PORT: before it, the guest has no hvc tty to resize.
    let msgs = d.control_msgs();
    assert_eq!(msgs.first(), Some(&HostMsg::ConsolePort(1)));
    assert_eq!(
        msgs.last(),
        Some(&HostMsg::Resize {
            id: 1,
            cols: 100,
            rows: 30
        })
    );

    // SIGWINCH: the VMM asks every console to look again.
    set_size(&slave, 132, 43);
    r.dev.lock().unwrap().refresh_sizes();
    r.run();
    let resized = HostMsg::Resize {
        id: 1,
        cols: 132,
        rows: 43,
    };
    assert_eq!(d.control_msgs(), [resized]);
    // Nothing changed: nothing is sent.
    r.dev.lock().unwrap().refresh_sizes();
    r.run();
    assert_eq!(d.control_msgs(), []);

    // A pts gets no SIGWINCH of kuml's: the size is read again when the user types.
    set_size(&slave, 80, 24);
    (&slave).write_all(b"x").unwrap();
    // The pty hands the byte over asynchronously: wait for it.
    assert!(r.em.run_with_timeout(5000).unwrap() > 0);
    r.run();
    assert_eq!(
        d.control_msgs(),
        [HostMsg::Resize {
            id: 1,
            cols: 80,
            rows: 24
        }]
    );
}

#[test]
fn test_single_port_console_size_is_config_space_and_config_interrupt() {
    let m = mem();
    let d = Driver::new(&m, 2);
    let (slave, ch) = pts_line(0);
    set_size(&slave, 100, 30);
    let r = rig_sized(Console::single().unwrap(), &d, ch, F_SIZE);
    // The driver started the port: it learns the size at once.
    assert_eq!(config_size(&r.dev.lock().unwrap()), (100, 30));
    assert_eq!(r.irq.count(InterruptKind::Config), 1);

    set_size(&slave, 160, 50);
    r.dev.lock().unwrap().refresh_sizes();
    assert_eq!(config_size(&r.dev.lock().unwrap()), (160, 50));
    assert_eq!(r.irq.count(InterruptKind::Config), 2);
    r.dev.lock().unwrap().refresh_sizes();
    assert_eq!(
        r.irq.count(InterruptKind::Config),
        2,
        "no change, no interrupt"
    );

    // After a reset the restarted driver is told again.
    assert!(r.dev.lock().unwrap().reset());
    let d2 = Driver::new(&m, 2);
    let irq = Arc::new(TestInterrupt::default());
    let mut c = r.dev.lock().unwrap();
    c.ack_features(F_SIZE);
    c.activate(m.clone(), irq.clone(), d2.active_queues())
        .unwrap();
    assert_eq!(irq.count(InterruptKind::Config), 1);
}

#[test]
fn test_a_terminal_nobody_sized_is_not_told() {
    let m = mem();
    let d = Driver::new(&m, 2);
    let (slave, ch) = pts_line(0);
    // A new pts is 0x0 until its terminal program sets a size: nothing to tell.
    let r = rig_sized(Console::single().unwrap(), &d, ch, F_SIZE);
    r.dev.lock().unwrap().refresh_sizes();
    assert_eq!(r.irq.count(InterruptKind::Config), 0);
    set_size(&slave, 90, 20);
    r.dev.lock().unwrap().refresh_sizes();
    assert_eq!(config_size(&r.dev.lock().unwrap()), (90, 20));
    assert_eq!(r.irq.count(InterruptKind::Config), 1);
}

#[test]
fn test_size_waits_for_the_driver_to_accept_it() {
    let m = mem();
    let d = Driver::new(&m, 2);
    let (slave, ch) = pts_line(0);
    set_size(&slave, 100, 30);
    // A driver without VIRTIO_CONSOLE_F_SIZE ignores sizes: none is raised.
    let r = rig_sized(Console::single().unwrap(), &d, ch, 0);
    r.dev.lock().unwrap().refresh_sizes();
    assert_eq!(r.irq.count(InterruptKind::Config), 0);
    assert_eq!(config_size(&r.dev.lock().unwrap()), (0, 0));
}

#[test]
fn test_a_channel_that_is_no_terminal_takes_a_size_given_by_hand() {
    let m = mem();
    let mut d = Driver::new(&m, 2 * (MAX_PORTS as usize + 1));
    let (_peer, ch) = socket_channel();
    let mut c = Console::new(MAX_PORTS).unwrap();
    c.add_port(1, ch).unwrap();
    assert!(c.resize(1, 80, 25).is_ok());
    assert!(matches!(
        c.resize(2, 80, 25),
        Err(super::ConsoleError::NoSuchPort(2))
    ));
    let mut r = Rig::new(&d, c, F_SIZE);
    for _ in 0..32 {
        d.post_rx(2, 64);
    }
    d.kick(2);
    d.guest_msg(GuestMsg::DeviceReady { ok: true });
    d.guest_msg(GuestMsg::PortReady { id: 1, ok: true });
    r.run();
    let msgs = d.control_msgs();
    assert_eq!(
        msgs.last(),
        Some(&HostMsg::Resize {
            id: 1,
            cols: 80,
            rows: 25
        }),
        "{msgs:?}"
    );
    // A socket has no window size: re-reading keeps the size given.
    r.dev.lock().unwrap().refresh_sizes();
    r.run();
    assert_eq!(d.control_msgs(), []);
}

fn rig_sized(mut c: Console, driver: &Driver, ch: Channel, features: u64) -> Rig {
    c.add_port(0, ch).unwrap();
    Rig::new(driver, c, features)
}
