//! Device tests: the shared virtio test rig (driver-side queues in guest memory, a real
//! event-manager loop) with netdev's FakeBackend as the host side.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use netdev::{FakeBackend, MacAddr};
use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::device::{Net, VIRTIO_NET_F_STATUS};
use super::header::{NetHdr, NET_HDR_LEN};
use crate::virtio::test_utils::{self, Driver, TestInterrupt, W};
use crate::virtio::{InterruptKind, VirtioDevice};

const RX: usize = 0;
const TX: usize = 1;
const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef]);

/// What a net test drives on top of the shared driver.
trait NetDriver {
    /// Queues a transmit chain carrying `hdr ++ frame`, cut into pieces of `lens` bytes
    /// (the last piece takes the rest).
    fn send_split(&mut self, frame: &[u8], lens: &[usize]);
    fn send(&mut self, frame: &[u8]);
    fn post_rx(&mut self, len: u32);
    /// Frames the guest received since the last call, header checked and stripped.
    fn received(&mut self) -> Vec<Vec<u8>>;
}

impl NetDriver for Driver<'_> {
    fn send_split(&mut self, frame: &[u8], lens: &[usize]) {
        let mut wire = NetHdr::default().to_bytes().to_vec();
        wire.extend_from_slice(frame);
        let mut descs = Vec::new();
        let mut at = 0;
        for (i, &l) in lens.iter().enumerate() {
            let l = if i + 1 == lens.len() {
                wire.len() - at
            } else {
                l.min(wire.len() - at)
            };
            descs.push(self.readable(&wire[at..at + l]));
            at += l;
        }
        self.add(TX, &descs);
    }

    fn send(&mut self, frame: &[u8]) {
        self.send_split(frame, &[usize::MAX]);
    }

    fn post_rx(&mut self, len: u32) {
        let a = self.buf(len);
        self.add(RX, &[SplitDescriptor::new(a, len, W, 0)]);
    }

    fn received(&mut self) -> Vec<Vec<u8>> {
        self.used(RX)
            .into_iter()
            .filter(|u| u.len > 0)
            .map(|u| {
                assert_eq!(&u.bytes[..NET_HDR_LEN], &NetHdr::RX.to_bytes());
                u.bytes[NET_HDR_LEN..].to_vec()
            })
            .collect()
    }
}

/// The shared rig around a Net device, and the host side of its backend.
struct Rig {
    rig: test_utils::Rig<Net>,
    host: FakeBackend,
}

impl Deref for Rig {
    type Target = test_utils::Rig<Net>;
    fn deref(&self) -> &Self::Target {
        &self.rig
    }
}

impl DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rig
    }
}

fn mem() -> GuestMemoryMmap {
    test_utils::mem(0x400_0000)
}

fn rig(driver: &Driver) -> Rig {
    rig_with(driver, FakeBackend::new().unwrap())
}

fn rig_with(driver: &Driver, host: FakeBackend) -> Rig {
    let n = Net::new(Box::new(host.clone()), MAC).unwrap();
    let features = n.features();
    Rig {
        rig: test_utils::Rig::new(driver, n, features),
        host,
    }
}

fn frame(n: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

#[test]
fn test_tx_frames_reach_the_backend_byte_exact() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    let mut r = rig(&d);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(60 + 300 * i, i as u8)).collect();
    d.send(&frames[0]);
    // Header split across two descriptors, then the frame in three.
    d.send_split(&frames[1], &[5, 7, 100, 1, usize::MAX]);
    // Header and the frame's start share a descriptor.
    d.send_split(&frames[2], &[40, usize::MAX]);
    // Header alone, frame in one-byte pieces at the start.
    d.send_split(&frames[3], &[12, 1, 1, 1, usize::MAX]);
    d.send_split(&frames[4], &[3, 3, 3, 3, usize::MAX]);
    d.kick(TX);
    r.run();
    assert_eq!(r.host.take_sent(), frames);
    let used = d.used(TX);
    assert_eq!(used.len(), 5);
    assert!(used.iter().all(|u| u.len == 0));
    assert!(r.irq.count(InterruptKind::Queue(1)) >= 1);
    let s = r.dev.lock().unwrap().stats();
    assert_eq!(s.tx_frames, 5);
    assert_eq!(
        s.tx_bytes,
        frames.iter().map(|f| f.len() as u64).sum::<u64>()
    );
}

#[test]
fn test_rx_frames_reach_guest_buffers_with_header() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    for _ in 0..4 {
        d.post_rx(1530);
    }
    // A buffer split in three (header split too).
    let (a, b, c) = (d.buf(4), d.buf(10), d.buf(2000));
    d.add(
        RX,
        &[
            SplitDescriptor::new(a, 4, W, 0),
            SplitDescriptor::new(b, 10, W, 0),
            SplitDescriptor::new(c, 2000, W, 0),
        ],
    );
    d.kick(RX);
    let mut r = rig(&d);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(42 + 350 * i, i as u8)).collect();
    for f in &frames {
        r.host.inject(f);
    }
    r.run();
    let used = d.used(RX);
    assert_eq!(used.len(), 5);
    for (u, f) in used.iter().zip(&frames) {
        assert_eq!(u.len as usize, NET_HDR_LEN + f.len());
    }
    let got: Vec<Vec<u8>> = used.into_iter().map(|u| u.bytes[12..].to_vec()).collect();
    assert_eq!(got, frames);
    assert!(r.irq.count(InterruptKind::Queue(0)) >= 1);
    assert_eq!(r.dev.lock().unwrap().stats().rx_frames, 5);
}

#[test]
fn test_rx_waits_for_buffers_and_loses_nothing() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    let mut r = rig(&d);
    let frames: Vec<Vec<u8>> = (0..6).map(|i| frame(100 + i, i as u8)).collect();
    for f in &frames {
        r.host.inject(f);
    }
    r.run();
    assert!(d.used(RX).is_empty());
    // The backend is not watched while a frame waits: the loop is idle, not spinning.
    assert_eq!(r.em.run_with_timeout(0).unwrap(), 0);
    d.post_rx(1530);
    d.post_rx(1530);
    d.kick(RX);
    r.run();
    assert_eq!(d.received(), frames[..2].to_vec());
    for _ in 0..10 {
        d.post_rx(1530);
    }
    d.kick(RX);
    r.run();
    assert_eq!(d.received(), frames[2..].to_vec());
    // Later frames go straight in.
    r.host.inject(&frames[0]);
    r.run();
    assert_eq!(d.received(), vec![frames[0].clone()]);
    assert_eq!(r.dev.lock().unwrap().stats().rx_dropped, 0);
}

#[test]
fn test_event_idx_asks_for_rx_notifications_when_out_of_buffers() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    d.event_idx = true;
    d.post_rx(1530);
    let mut r = rig(&d);
    r.host.inject(&frame(80, 1));
    r.host.inject(&frame(81, 2));
    r.run();
    assert_eq!(d.received(), vec![frame(80, 1)]);
    // Out of buffers with one consumed: the device wants a kick at avail index 1.
    assert_eq!(d.avail_event(RX), 1);
    d.post_rx(1530);
    d.kick(RX);
    r.run();
    assert_eq!(d.received(), vec![frame(81, 2)]);
    // Transmit: after draining, avail_event follows the consumed chains.
    d.send(&frame(64, 3));
    d.send(&frame(64, 4));
    d.kick(TX);
    r.run();
    assert_eq!(r.host.take_sent().len(), 2);
    assert_eq!(d.avail_event(TX), 2);
}

#[test]
fn test_tx_backpressure_keeps_the_guests_place() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    let mut r = rig(&d);
    r.host.set_send_full(true);
    let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(200, i as u8)).collect();
    for f in &frames {
        d.send(f);
    }
    d.kick(TX);
    r.run();
    assert!(r.host.take_sent().is_empty());
    assert!(d.used(TX).is_empty());
    r.host.set_send_full(false);
    r.run();
    assert_eq!(r.host.take_sent(), frames);
    assert_eq!(d.used(TX).len(), 4);
    assert_eq!(r.dev.lock().unwrap().stats().tx_dropped, 0);
    // Writable again: the backend is watched for input only.
    assert_eq!(r.em.run_with_timeout(0).unwrap(), 0);
}

#[test]
fn test_malformed_tx_chains_are_dropped_without_reset() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    let mut r = rig(&d);
    // Write-only descriptor.
    let a = d.buf(100);
    d.add(TX, &[SplitDescriptor::new(a, 100, W, 0)]);
    // Outside guest memory, and wrapping around the address space.
    d.add(TX, &[SplitDescriptor::new(0x7fff_0000, 100, 0, 0)]);
    d.add(
        TX,
        &[
            SplitDescriptor::new(a, 12, 0, 0),
            SplitDescriptor::new(u64::MAX - 10, 100, 0, 0),
        ],
    );
    // Short header, runt frame, longer than 65550 bytes.
    d.add(TX, &[SplitDescriptor::new(a, 11, 0, 0)]);
    d.add(TX, &[SplitDescriptor::new(a, 20, 0, 0)]);
    let big = d.buf(70_000);
    d.add(TX, &[SplitDescriptor::new(big, 70_000, 0, 0)]);
    d.add(
        TX,
        &[
            SplitDescriptor::new(big, 40_000, 0, 0),
            SplitDescriptor::new(big, 40_000, 0, 0),
        ],
    );
    // A good frame after all that.
    d.send(&frame(64, 9));
    d.kick(TX);
    r.run();
    assert_eq!(r.host.take_sent(), vec![frame(64, 9)]);
    assert_eq!(d.used(TX).len(), 8);
    assert_eq!(r.dev.lock().unwrap().stats().tx_dropped, 7);
    assert_eq!(r.resets(), 0);
}

#[test]
fn test_malformed_rx_chains_do_not_lose_frames() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    // Readable descriptor, buffer outside guest memory: returned unused, frame kept.
    let a = d.buf(2000);
    d.add(RX, &[SplitDescriptor::new(a, 2000, 0, 0)]);
    d.add(RX, &[SplitDescriptor::new(0x7fff_0000, 2000, W, 0)]);
    // Too small for the first frame: that frame is dropped, the buffer takes the next one.
    d.post_rx(100);
    d.post_rx(1530);
    d.kick(RX);
    let mut r = rig(&d);
    r.host.inject(&frame(500, 1));
    r.host.inject(&frame(50, 2));
    r.host.inject(&frame(600, 3));
    // Longer than the MTU allows: dropped.
    r.host.inject(&frame(1600, 4));
    r.host.inject(&frame(70, 5));
    r.run();
    let used = d.used(RX);
    let lens: Vec<u32> = used.iter().map(|u| u.len).collect();
    assert_eq!(lens, vec![0, 0, 62, 612]);
    assert_eq!(&used[2].bytes[12..], &frame(50, 2)[..]);
    assert_eq!(&used[3].bytes[12..], &frame(600, 3)[..]);
    d.post_rx(1530);
    d.kick(RX);
    r.run();
    assert_eq!(d.received(), vec![frame(70, 5)]);
    assert_eq!(r.dev.lock().unwrap().stats().rx_dropped, 2);
    assert_eq!(r.dev.lock().unwrap().stats().rx_bad_buffers, 2);
    assert_eq!(r.resets(), 0);
}

#[test]
fn test_broken_available_ring_needs_reset() {
    let m = mem();
    let d = Driver::new(&m, 2);
    let mut r = rig(&d);
    m.write_obj(u16::to_le(1000), d.queues[TX].avail_addr().unchecked_add(2))
        .unwrap();
    d.kick(TX);
    r.run();
    assert_eq!(r.resets(), 1);
    // Reset and a fresh activation bring the device back.
    assert!(r.dev.lock().unwrap().reset());
    r.run();
    let mut d2 = Driver::new(&m, 2);
    r.dev
        .lock()
        .unwrap()
        .activate(m.clone(), r.irq.clone(), d2.active_queues())
        .unwrap();
    r.run();
    d2.send(&frame(64, 1));
    d2.kick(TX);
    r.run();
    assert_eq!(r.host.take_sent(), vec![frame(64, 1)]);
    assert_eq!(r.resets(), 1);
}

#[test]
fn test_activate_twice_without_reset() {
    let m = mem();
    let d = Driver::new(&m, 2);
    let mut r = rig(&d);
    let mut d2 = Driver::new(&m, 2);
    r.dev
        .lock()
        .unwrap()
        .activate(m.clone(), r.irq.clone(), d2.active_queues())
        .unwrap();
    r.run();
    d2.send(&frame(64, 1));
    d2.kick(TX);
    r.run();
    assert_eq!(r.host.take_sent(), vec![frame(64, 1)]);
    assert_eq!(r.em.run_with_timeout(0).unwrap(), 0);
}

#[test]
fn test_activate_needs_both_queues() {
    let m = mem();
    let d = Driver::new(&m, 2);
    let mut n = Net::new(Box::new(FakeBackend::new().unwrap()), MAC).unwrap();
    let mut qs = d.active_queues();
    qs.pop();
    let irq = Arc::new(TestInterrupt::default());
    assert!(n.activate(m.clone(), irq, qs).is_err());
}

#[test]
fn test_link_down_drops_both_ways_and_signals_config() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    d.post_rx(1530);
    let mut r = rig(&d);
    r.dev.lock().unwrap().set_link_up(false);
    assert_eq!(r.irq.count(InterruptKind::Config), 1);
    let mut status = [0u8; 2];
    r.dev.lock().unwrap().read_config(6, &mut status);
    assert_eq!(status, [0, 0]);
    r.host.inject(&frame(64, 1));
    d.send(&frame(64, 2));
    d.kick(TX);
    r.run();
    assert!(r.host.take_sent().is_empty());
    assert_eq!(d.used(TX).len(), 1);
    assert!(d.received().is_empty());
    r.dev.lock().unwrap().set_link_up(true);
    assert_eq!(r.irq.count(InterruptKind::Config), 2);
    r.host.inject(&frame(64, 3));
    r.run();
    assert_eq!(d.received(), vec![frame(64, 3)]);
    // Without VIRTIO_NET_F_STATUS the guest is not told.
    r.dev.lock().unwrap().ack_features(0);
    r.dev.lock().unwrap().set_link_up(false);
    assert_eq!(r.irq.count(InterruptKind::Config), 2);
    let _ = VIRTIO_NET_F_STATUS;
}

/// The link status bit the guest reads.
fn link_status(r: &Rig) -> bool {
    let mut status = [0u8; 2];
    r.dev.lock().unwrap().read_config(6, &mut status);
    u16::from_le_bytes(status) & 1 != 0
}

// B1: a deleted tap reports an error for ever and fails every read with EBADFD. The device
// used to retry forever (100 % CPU on the event-loop thread, link still up).
#[test]
fn test_a_backend_gone_for_good_is_link_down_and_leaves_the_loop_idle() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    d.post_rx(1530);
    let mut r = rig(&d);
    assert!(link_status(&r));
    r.host.set_recv_error(Some(libc::EBADFD));
    r.run();
    assert!(!link_status(&r), "the guest must see the link down");
    assert_eq!(r.irq.count(InterruptKind::Config), 1);
    assert!(r.dev.lock().unwrap().backend_failed());
    // Nothing left to do: the failed backend is not watched (its fd would report an error
    // for ever).
    assert_eq!(
        r.em.run_with_timeout(0).unwrap(),
        0,
        "the event loop is busy"
    );
    // Guest frames are dropped and their chains returned.
    d.send(&frame(64, 1));
    d.kick(TX);
    r.run();
    assert_eq!(d.used(TX).len(), 1);
    assert!(r.host.take_sent().is_empty());
    assert_eq!(r.em.run_with_timeout(0).unwrap(), 0);
    // A new backend brings the link back (mconsole `config ethN=…` after the tap is back).
    let host = FakeBackend::new().unwrap();
    r.dev
        .lock()
        .unwrap()
        .replace_backend(Box::new(host.clone()));
    r.run();
    assert!(link_status(&r));
    assert_eq!(r.irq.count(InterruptKind::Config), 2);
    host.inject(&frame(64, 2));
    d.send(&frame(64, 3));
    d.kick(TX);
    r.run();
    assert_eq!(d.received(), vec![frame(64, 2)]);
    assert_eq!(host.take_sent(), vec![frame(64, 3)]);
}

#[test]
fn test_errors_that_go_on_without_a_frame_fail_the_backend() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    d.post_rx(1530);
    let mut r = rig(&d);
    // Not an error that means "gone", but it never stops.
    r.host.set_recv_error(Some(libc::EPROTO));
    for _ in 0..super::event_handler::ERRORS_IN_A_ROW_MAX {
        if r.em.run_with_timeout(0).unwrap() == 0 {
            break;
        }
    }
    r.run();
    assert!(r.dev.lock().unwrap().backend_failed());
    assert!(!link_status(&r));
    assert_eq!(
        r.em.run_with_timeout(0).unwrap(),
        0,
        "the event loop is busy"
    );
}

#[test]
fn test_a_switch_port_is_up_once_it_answered_and_down_when_it_hangs_up() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    d.post_rx(1530);
    let host = FakeBackend::connecting().unwrap();
    let mut r = rig_with(&d, host.clone());
    assert!(!link_status(&r));
    // Nothing moves before the switch answered.
    host.inject(&frame(64, 1));
    d.send(&frame(64, 2));
    d.kick(TX);
    r.run();
    assert!(d.received().is_empty());
    assert!(host.take_sent().is_empty());
    assert_eq!(d.used(TX).len(), 1);
    host.set_ready();
    r.run();
    assert!(link_status(&r));
    assert_eq!(r.irq.count(InterruptKind::Config), 1);
    assert_eq!(d.received(), vec![frame(64, 1)]);
    // The switch goes away: link down, once, and the loop goes idle.
    host.hang_up();
    r.run();
    assert!(!link_status(&r));
    assert_eq!(r.irq.count(InterruptKind::Config), 2);
    assert!(r.dev.lock().unwrap().backend_failed());
    assert_eq!(
        r.em.run_with_timeout(0).unwrap(),
        0,
        "the event loop is busy"
    );
}

#[test]
fn test_close_releases_the_backend() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    let mut r = rig(&d);
    r.dev.lock().unwrap().close();
    r.run();
    assert!(r.dev.lock().unwrap().is_closed());
    // Only this test's clone is left: the device let go of the backend.
    d.send(&frame(64, 1));
    d.kick(TX);
    r.host.inject(&frame(64, 2));
    r.run();
    assert!(r.host.take_sent().is_empty());
    assert_eq!(d.used(TX).len(), 1);
    assert!(d.used(RX).is_empty());
    // Hot-unplug: the event loop lets go of the device, which can then be dropped.
    let id = r.id;
    let removed = r.em.remove_subscriber(id).unwrap();
    assert!(Arc::ptr_eq(&removed, &r.dev));
    drop(removed);
    assert_eq!(Arc::strong_count(&r.dev), 1);
    assert_eq!(r.em.run_with_timeout(0).unwrap(), 0);
}

#[test]
fn test_more_than_a_budget_of_frames() {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    for _ in 0..200 {
        d.post_rx(1530);
    }
    let mut r = rig(&d);
    for i in 0..300u32 {
        r.host.inject(&frame(60, i as u8));
    }
    for i in 0..200u32 {
        d.send(&frame(60 + i as usize, 0));
    }
    d.kick(TX);
    r.run();
    assert_eq!(r.host.take_sent().len(), 200);
    assert_eq!(d.received().len(), 200);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_random_tx_chains_reach_the_backend(
        frames in proptest::collection::vec(
            (14usize..4000, any::<u8>(), proptest::collection::vec(0usize..300, 0..6)),
            1..20,
        ),
    ) {
        let m = mem();
        let mut d = Driver::new(&m, 2);
        let mut r = rig(&d);
        let mut want = Vec::new();
        for (len, seed, cuts) in &frames {
            let f = frame(*len, *seed);
            let mut lens = cuts.clone();
            lens.push(usize::MAX);
            d.send_split(&f, &lens);
            want.push(f);
        }
        d.kick(TX);
        r.run();
        prop_assert_eq!(r.host.take_sent(), want);
        prop_assert_eq!(d.used(TX).len(), frames.len());
    }

    #[test]
    fn prop_hostile_chains_never_panic(
        chains in proptest::collection::vec(
            proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u16>()), 1..5),
            1..12,
        ),
        rx_frames in proptest::collection::vec(0usize..2000, 0..6),
    ) {
        let m = mem();
        let mut d = Driver::new(&m, 2);
        let mut r = rig(&d);
        for (i, c) in chains.iter().enumerate() {
            let descs: Vec<SplitDescriptor> = c
                .iter()
                .map(|(a, l, f)| {
                    let a = if *a % 2 == 0 { a % 0x500_0000 } else { *a };
                    // Device-writable and indirect flags at random.
                    let flags = f & (W | VRING_DESC_F_INDIRECT as u16);
                    SplitDescriptor::new(a, l % 0x2_0000, flags, 0)
                })
                .collect();
            d.add(i % 2, &descs);
        }
        for len in &rx_frames {
            r.host.inject(&vec![0xaa; *len]);
        }
        d.kick(RX);
        d.kick(TX);
        r.run();
        let (_, _) = (d.used(RX), d.used(TX));
        prop_assert_eq!(r.resets(), 0);
    }
}

/// A backend over one end of a nonblocking datagram socketpair: real readiness, real
/// `WouldBlock` once the peer's queue is full.
#[derive(Debug)]
struct SockBackend(Arc<std::os::unix::net::UnixDatagram>);

impl netdev::Backend for SockBackend {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.send(frame).map(|_| ())
    }
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn fd(&self) -> netdev::SharedFd {
        self.0.clone()
    }
}

#[test]
fn test_real_socket_backpressure_without_busy_polling() {
    let (dev_end, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    backpressure_round_trip(Box::new(SockBackend(Arc::new(dev_end))), peer);
}

// The same with a backend that batches its sends (UML's vector fd transport): frames queued
// during a round leave at its end (`flush`), frames the socket refuses wait for it to be
// writable, and the loop is idle meanwhile.
#[test]
fn test_batching_backend_flushes_each_round_and_waits_when_full() {
    let (dev_end, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let b = netdev::DgramBackend::new(dev_end.into(), 16, true, "test").unwrap();
    backpressure_round_trip(Box::new(b), peer);
}

fn backpressure_round_trip(
    backend: Box<dyn netdev::Backend>,
    peer: std::os::unix::net::UnixDatagram,
) {
    let m = mem();
    let mut d = Driver::new(&m, 2);
    peer.set_nonblocking(true).unwrap();
    let mut n = Net::new(backend, MAC).unwrap();
    n.ack_features(n.features());
    let net = Arc::new(Mutex::new(n));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());
    let irq = Arc::new(TestInterrupt::default());
    net.lock()
        .unwrap()
        .activate(m.clone(), irq.clone(), d.active_queues())
        .unwrap();
    let run = |em: &mut EventManager<Arc<Mutex<Net>>>| {
        for _ in 0..200 {
            if em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
        panic!("the event loop never went idle");
    };
    run(&mut em);
    let frames: Vec<Vec<u8>> = (0..120).map(|i| frame(1000, i as u8)).collect();
    for f in &frames {
        d.send(f);
    }
    d.kick(TX);
    run(&mut em);
    // The peer reads nothing yet: the device is blocked, idle, and has lost nothing.
    let used_before = d.used(TX).len();
    assert!(used_before < frames.len(), "the socket never filled");
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 2000];
    for _ in 0..1000 {
        while let Ok(k) = peer.recv(&mut buf) {
            got.push(buf[..k].to_vec());
        }
        if got.len() == frames.len() {
            break;
        }
        run(&mut em);
    }
    assert_eq!(got, frames);
    assert_eq!(used_before + d.used(TX).len(), frames.len());
    // And the other way.
    for _ in 0..3 {
        d.post_rx(1530);
    }
    d.kick(RX);
    peer.send(&frame(99, 7)).unwrap();
    run(&mut em);
    assert_eq!(d.received(), vec![frame(99, 7)]);
    assert_eq!(net.lock().unwrap().stats().tx_dropped, 0);
}
