//! Device tests with driver-side queues in guest memory (virtio-queue's mock) and a real
//! event-manager loop (epoll only: no threads, no privileges).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::control::{GuestMsg, HostMsg};
use super::device::Console;
use crate::chan::{Chan, Channel, ChannelSpec};
use crate::virtio::{ActiveQueue, InterruptKind, VirtioDevice, VirtioInterrupt};

const QLEN: u16 = 256;
const MAX_PORTS: u32 = 4;

#[derive(Default)]
struct TestInterrupt {
    triggers: Mutex<Vec<InterruptKind>>,
    resets: AtomicUsize,
}

impl VirtioInterrupt for TestInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        self.triggers.lock().unwrap().push(kind);
        Ok(())
    }
    fn needs_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
}

/// The guest driver's side of every queue.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    next_desc: Vec<u16>,
    seen_used: Vec<u16>,
    notify: Vec<EventFd>,
    next_buf: u64,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap, nq: usize) -> Self {
        let queues = (0..nq)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(0x4000 * i as u64), QLEN))
            .collect();
        Self {
            mem,
            queues,
            next_desc: vec![0; nq],
            seen_used: vec![0; nq],
            notify: (0..nq)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            next_buf: 0x10_0000,
        }
    }

    fn active_queues(&self) -> Vec<ActiveQueue> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, m)| ActiveQueue {
                index: i as u16,
                queue: m.create_queue::<Queue>().unwrap(),
                notify: Arc::new(self.notify[i].try_clone().unwrap()),
            })
            .collect()
    }

    fn buf(&mut self, len: u32) -> u64 {
        let a = self.next_buf;
        self.next_buf += u64::from(len).max(1).next_multiple_of(0x1000);
        a
    }

    fn add(&mut self, qi: usize, descs: &[SplitDescriptor]) {
        let base = self.next_desc[qi];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let last = k + 1 == descs.len();
                let flags = if last {
                    d.flags()
                } else {
                    d.flags() | VRING_DESC_F_NEXT as u16
                };
                RawDescriptor::from(SplitDescriptor::new(
                    d.addr().0,
                    d.len(),
                    flags,
                    base + k as u16 + 1,
                ))
            })
            .collect();
        self.queues[qi].add_desc_chains(&raw, base).unwrap();
        self.next_desc[qi] += descs.len() as u16;
    }

    fn send(&mut self, qi: usize, bytes: &[u8]) {
        let a = self.buf(bytes.len() as u32);
        self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
        self.add(qi, &[SplitDescriptor::new(a, bytes.len() as u32, 0, 0)]);
        self.kick(qi);
    }

    fn post_rx(&mut self, qi: usize, len: u32) {
        let a = self.buf(len);
        self.add(
            qi,
            &[SplitDescriptor::new(a, len, VRING_DESC_F_WRITE as u16, 0)],
        );
    }

    fn kick(&self, qi: usize) {
        self.notify[qi].write(1).unwrap();
    }

    /// Used entries since the last call: (head, len, bytes written there).
    fn used(&mut self, qi: usize) -> Vec<(u32, u32, Vec<u8>)> {
        let q = &self.queues[qi];
        let idx = q.used().idx().load();
        let mut out = Vec::new();
        while self.seen_used[qi] != idx {
            let e = q
                .used()
                .ring()
                .ref_at(usize::from(self.seen_used[qi] % QLEN))
                .unwrap()
                .load();
            let d = q.desc_table().load(e.id() as u16).unwrap();
            let d = SplitDescriptor::from(d);
            let mut b = vec![0u8; e.len().min(d.len()) as usize];
            self.mem.read_slice(&mut b, d.addr()).unwrap();
            out.push((e.id(), e.len(), b));
            self.seen_used[qi] = self.seen_used[qi].wrapping_add(1);
        }
        out
    }

    fn control_msgs(&mut self) -> Vec<HostMsg> {
        self.used(2)
            .into_iter()
            .map(|(_, _, b)| HostMsg::decode(&b).unwrap())
            .collect()
    }

    fn guest_msg(&mut self, m: GuestMsg) {
        self.send(3, &m.encode());
    }
}

struct Rig {
    console: Arc<Mutex<Console>>,
    em: EventManager<Arc<Mutex<Console>>>,
    irq: Arc<TestInterrupt>,
}

impl Rig {
    fn run(&mut self) {
        for _ in 0..100 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap()
}

fn socket_channel() -> (UnixStream, Channel) {
    let (a, b) = UnixStream::pair().unwrap();
    let b2 = b.try_clone().unwrap();
    let ch = Channel::from_fds(
        ChannelSpec::single(Chan::Fd(3)),
        Some(b.into()),
        Some(b2.into()),
    )
    .unwrap();
    (a, ch)
}

fn rig(driver: &Driver, ports: Vec<(u32, Channel)>) -> Rig {
    rig_with(Console::new(MAX_PORTS).unwrap(), driver, ports)
}

fn rig_with(mut c: Console, driver: &Driver, ports: Vec<(u32, Channel)>) -> Rig {
    for (id, ch) in ports {
        c.add_port(id, ch).unwrap();
    }
    let console = Arc::new(Mutex::new(c));
    let mut em = EventManager::<Arc<Mutex<Console>>>::new().unwrap();
    em.add_subscriber(console.clone());
    let irq = Arc::new(TestInterrupt::default());
    console
        .lock()
        .unwrap()
        .activate(driver.mem.clone(), irq.clone(), driver.active_queues())
        .unwrap();
    let mut r = Rig { console, em, irq };
    r.run();
    r
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
    assert_eq!(used[0].2, b"early");
    assert!(r.console.lock().unwrap().is_guest_open(0));
    // More input with no buffer posted: kept until the guest posts one.
    peer.write_all(b"late").unwrap();
    r.run();
    assert!(d.used(0).is_empty());
    d.post_rx(0, 2);
    d.post_rx(0, 64);
    d.kick(0);
    r.run();
    let used = d.used(0);
    let all: Vec<u8> = used.iter().flat_map(|u| u.2.clone()).collect();
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
        assert!(r.console.lock().unwrap().ports[&0].input.len() <= super::INPUT_BUFFER_MAX);
        // The guest is slow: a few small buffers per round.
        if d.next_desc[0] < QLEN - 4 {
            for _ in 0..4 {
                d.post_rx(0, 1000);
            }
            d.kick(0);
        }
        r.run();
        for u in d.used(0) {
            got.extend(u.2);
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
    r.console.lock().unwrap().add_port(3, ch).unwrap();
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
    r.console.lock().unwrap().remove_port(3).unwrap();
    r.run();
    assert_eq!(d.control_msgs(), vec![HostMsg::DeviceRemove(3)]);
    assert_eq!(r.console.lock().unwrap().port_ids(), vec![0]);
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
    d.add(
        1,
        &[SplitDescriptor::new(
            0x10_0000,
            16,
            VRING_DESC_F_WRITE as u16,
            0,
        )],
    );
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
    assert!(r.console.lock().unwrap().reset());
    r.run();
    let mut d2 = Driver::new(&m, 10);
    r.console
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
    em.add_subscriber(console.clone());
    let mut r = Rig { console, em, irq };
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
    assert!(r.console.lock().unwrap().is_guest_open(0));
    d.send(1, b"Linux version 6.1");
    d.post_rx(0, 64);
    d.kick(0);
    r.run();
    let mut got = [0u8; 17];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"Linux version 6.1");
    let used = d.used(0);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].2, b"typed early");
    assert_eq!(r.irq.resets.load(Ordering::SeqCst), 0);
    // A reset closes the port until the driver activates the device again.
    assert!(r.console.lock().unwrap().reset());
    assert!(!r.console.lock().unwrap().is_guest_open(0));
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
    let c = r.console.lock().unwrap();
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
