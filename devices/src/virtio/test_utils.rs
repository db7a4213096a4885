//! The guest driver's side of virtio queues, for device tests: split rings in guest memory
//! (virtio-queue's `MockSplitQueue`), the notify eventfds, an interrupt line that records,
//! and the device's subscriber in a real event-manager loop (epoll only: no threads, no
//! privileges).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActiveQueue, InterruptKind, VirtioDevice, VirtioInterrupt};

/// Entries in every test queue.
pub const QLEN: u16 = 256;
/// The device-writable descriptor flag.
pub const W: u16 = VRING_DESC_F_WRITE as u16;
/// Where the driver's buffers start (the rings come first, 0x4000 bytes per queue).
const BUFFERS: u64 = 0x10_0000;

/// A guest of `size` bytes from address 0.
pub fn mem(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// An interrupt line that records what the device raised.
#[derive(Debug, Default)]
pub struct TestInterrupt {
    /// Interrupts, in order.
    pub triggers: Mutex<Vec<InterruptKind>>,
    /// NEEDS_RESET requests.
    pub resets: AtomicUsize,
}

impl TestInterrupt {
    /// How many interrupts of `kind` were raised.
    pub fn count(&self, kind: InterruptKind) -> usize {
        self.triggers
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t == kind)
            .count()
    }

    /// How many times the device asked for a reset.
    pub fn resets(&self) -> usize {
        self.resets.load(Ordering::SeqCst)
    }
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

/// One used entry: the chain's head, the length the device wrote, and that many bytes read
/// back from the chain's buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index.
    pub head: u16,
    /// Length written by the device.
    pub len: u32,
    /// The first `len` bytes of the chain's buffers.
    pub bytes: Vec<u8>,
}

/// The guest driver's side of a device's queues.
pub struct Driver<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The rings, one per queue.
    pub queues: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    /// The next free descriptor of each queue.
    pub next_desc: Vec<u16>,
    /// Used entries read so far, per queue.
    pub seen_used: Vec<u16>,
    notify: Vec<EventFd>,
    next_buf: u64,
    /// Head -> the chain's (address, length) pieces, for reading used chains back.
    chains: Vec<HashMap<u16, Vec<(u64, u32)>>>,
    /// Queues are created with VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
}

impl<'a> Driver<'a> {
    /// `nq` queues of [`QLEN`] entries, their rings 0x4000 bytes apart from address 0.
    pub fn new(mem: &'a GuestMemoryMmap, nq: usize) -> Self {
        Self {
            mem,
            queues: (0..nq)
                .map(|i| MockSplitQueue::create(mem, GuestAddress(0x4000 * i as u64), QLEN))
                .collect(),
            next_desc: vec![0; nq],
            seen_used: vec![0; nq],
            notify: (0..nq)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            next_buf: BUFFERS,
            chains: vec![HashMap::new(); nq],
            event_idx: false,
        }
    }

    /// The queues as the transport hands them to the device at activation.
    pub fn active_queues(&self) -> Vec<ActiveQueue> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut queue = m.create_queue::<Queue>().unwrap();
                queue.set_event_idx(self.event_idx);
                ActiveQueue {
                    index: i as u16,
                    queue,
                    notify: Arc::new(self.notify[i].try_clone().unwrap()),
                }
            })
            .collect()
    }

    /// A fresh buffer of `len` bytes (page-aligned, never reused).
    pub fn buf(&mut self, len: u32) -> u64 {
        let a = self.next_buf;
        self.next_buf += u64::from(len).max(1).next_multiple_of(0x1000);
        a
    }

    /// A device-readable buffer holding `bytes`.
    pub fn readable(&mut self, bytes: &[u8]) -> Descriptor {
        let a = self.buf(bytes.len() as u32);
        self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
        Descriptor::new(a, bytes.len() as u32, 0, 0)
    }

    /// A device-writable buffer of `len` bytes, filled with `fill`.
    pub fn writable(&mut self, len: u32, fill: u8) -> Descriptor {
        let a = self.buf(len);
        self.mem
            .write_slice(&vec![fill; len as usize], GuestAddress(a))
            .unwrap();
        Descriptor::new(a, len, W, 0)
    }

    /// Makes `descs` one chain of queue `qi` (NEXT flags and links filled in) and offers
    /// it; returns its head.
    pub fn add(&mut self, qi: usize, descs: &[Descriptor]) -> u16 {
        let base = self.next_desc[qi];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let next = VRING_DESC_F_NEXT as u16;
                let flags = if k + 1 == descs.len() {
                    d.flags() & !next
                } else {
                    d.flags() | next
                };
                RawDescriptor::from(Descriptor::new(
                    d.addr().0,
                    d.len(),
                    flags,
                    base + k as u16 + 1,
                ))
            })
            .collect();
        self.queues[qi].add_desc_chains(&raw, base).unwrap();
        self.next_desc[qi] += descs.len() as u16;
        self.chains[qi].insert(base, descs.iter().map(|d| (d.addr().0, d.len())).collect());
        base
    }

    /// Notifies queue `qi`.
    pub fn kick(&self, qi: usize) {
        self.notify[qi].write(1).unwrap();
    }

    /// Used entries of queue `qi` since the last call.
    pub fn used(&mut self, qi: usize) -> Vec<Used> {
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
            let head = e.id() as u16;
            let mut bytes = Vec::new();
            let mut left = e.len() as usize;
            // (A hostile chain's buffers may lie outside guest memory: read what exists.)
            for &(a, l) in self.chains[qi].get(&head).into_iter().flatten() {
                let n = left.min(l as usize);
                let mut b = vec![0u8; n];
                if self.mem.read_slice(&mut b, GuestAddress(a)).is_err() {
                    break;
                }
                bytes.extend(b);
                left -= n;
            }
            out.push(Used {
                head,
                len: e.len(),
                bytes,
            });
            self.seen_used[qi] = self.seen_used[qi].wrapping_add(1);
        }
        out
    }

    /// The bytes of one buffer.
    pub fn read(&self, d: &Descriptor) -> Vec<u8> {
        let mut b = vec![0u8; d.len() as usize];
        self.mem.read_slice(&mut b, d.addr()).unwrap();
        b
    }

    /// The avail_event field the device writes after the used ring of queue `qi`
    /// (VIRTIO_RING_F_EVENT_IDX).
    pub fn avail_event(&self, qi: usize) -> u16 {
        let a = self.queues[qi]
            .used_addr()
            .unchecked_add(4 + 8 * u64::from(QLEN));
        u16::from_le(self.mem.read_obj(a).unwrap())
    }

    /// Writes the used_event field after the available ring of queue `qi`.
    pub fn set_used_event(&self, qi: usize, v: u16) {
        let a = self.queues[qi]
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(QLEN));
        self.mem.write_obj(v.to_le(), a).unwrap();
    }
}

/// A device in a real event loop, activated on a driver's queues.
pub struct Rig<D: VirtioDevice + MutEventSubscriber> {
    /// The device.
    pub dev: Arc<Mutex<D>>,
    /// The event loop the device is subscribed to.
    pub em: EventManager<Arc<Mutex<D>>>,
    /// Its subscriber id.
    pub id: event_manager::SubscriberId,
    /// The interrupt line the device was given.
    pub irq: Arc<TestInterrupt>,
}

impl<D: VirtioDevice + MutEventSubscriber> Rig<D> {
    /// Subscribes `dev` (with `features` acked) and activates it on `driver`'s queues.
    pub fn new(driver: &Driver, mut dev: D, features: u64) -> Self {
        dev.ack_features(features);
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<D>>>::new().unwrap();
        let id = em.add_subscriber(dev.clone());
        let irq = Arc::new(TestInterrupt::default());
        dev.lock()
            .unwrap()
            .activate(driver.mem.clone(), irq.clone(), driver.active_queues())
            .unwrap();
        let mut r = Rig { dev, em, id, irq };
        r.run();
        r
    }

    /// Runs the event loop until it is idle (at most 100 rounds: a backend that is always
    /// writable keeps a blocked transmit polling).
    pub fn run(&mut self) {
        for _ in 0..100 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
    }

    /// How many times the device asked for a reset.
    pub fn resets(&self) -> usize {
        self.irq.resets()
    }
}
