//! Device tests with a driver-side queue in guest memory (virtio-queue's mock), over an
//! in-memory disk and a real image file, with a real event-manager loop (epoll only: no
//! threads, no privileges).

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use proptest::prelude::*;
use ubd::{Disk, DiskError, MemDisk, UbdSpec};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::*;
use super::{Block, BlockConfig};
use crate::virtio::test_utils::{self, Driver, QLEN, W};
use crate::virtio::{ActiveQueue, InterruptKind, VirtioDevice};

const DISK_LEN: usize = 1 << 20;

/// A MemDisk the test can look at while the device owns it.
#[derive(Clone, Default)]
struct SharedDisk(Arc<Mutex<MemDisk>>);

impl Disk for SharedDisk {
    fn len(&self) -> u64 {
        self.0.lock().unwrap().len()
    }
    fn is_read_only(&self) -> bool {
        self.0.lock().unwrap().is_read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.0.lock().unwrap().read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.0.lock().unwrap().write_at(buf, offset)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        self.0.lock().unwrap().flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.0.lock().unwrap().discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.0.lock().unwrap().write_zeroes(offset, len)
    }
}

/// What a block test drives on top of the shared driver (one queue, index 0).
trait BlockDriver {
    fn active_queue(&self) -> ActiveQueue;
    /// A header in its own buffer.
    fn header(&mut self, kind: u32, sector: u64) -> SplitDescriptor;
    fn data_out(&mut self, bytes: &[u8]) -> SplitDescriptor;
    fn data_in(&mut self, len: u32) -> SplitDescriptor;
    fn status(&mut self) -> SplitDescriptor;
    fn status_of(&self, d: &SplitDescriptor) -> u8;
    /// Used entries since the last call: (head, len).
    fn done(&mut self) -> Vec<(u32, u32)>;
    /// Queues a request of `kind` at `sector` carrying `out` (if any); returns its status.
    fn send(&mut self, kind: u32, sector: u64, out: &[u8]) -> SplitDescriptor {
        let h = self.header(kind, sector);
        let s;
        if out.is_empty() {
            s = self.status();
            self.add_chain(&[h, s]);
        } else {
            let a = self.data_out(out);
            s = self.status();
            self.add_chain(&[h, a, s]);
        }
        s
    }
    /// Queues a request of `kind` at `sector` with a `len`-byte buffer for the device to
    /// fill; returns the buffer and the status.
    fn fetch(&mut self, kind: u32, sector: u64, len: u32) -> (SplitDescriptor, SplitDescriptor) {
        let h = self.header(kind, sector);
        let x = self.data_in(len);
        let s = self.status();
        self.add_chain(&[h, x, s]);
        (x, s)
    }
    /// Queues a chain on the request queue.
    fn add_chain(&mut self, chain: &[SplitDescriptor]);
}

impl BlockDriver for Driver<'_> {
    fn active_queue(&self) -> ActiveQueue {
        self.active_queues().remove(0)
    }

    fn header(&mut self, kind: u32, sector: u64) -> SplitDescriptor {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.readable(&h)
    }

    fn data_out(&mut self, bytes: &[u8]) -> SplitDescriptor {
        self.readable(bytes)
    }

    fn data_in(&mut self, len: u32) -> SplitDescriptor {
        self.writable(len, 0xee)
    }

    fn status(&mut self) -> SplitDescriptor {
        self.writable(1, 0xff)
    }

    fn status_of(&self, d: &SplitDescriptor) -> u8 {
        self.mem.read_obj(d.addr()).unwrap()
    }

    fn add_chain(&mut self, chain: &[SplitDescriptor]) {
        self.add(0, chain);
    }

    fn done(&mut self) -> Vec<(u32, u32)> {
        self.used(0)
            .into_iter()
            .map(|u| (u32::from(u.head), u.len))
            .collect()
    }
}

type Rig = test_utils::Rig<Block>;

fn mem() -> GuestMemoryMmap {
    test_utils::mem(0x200_0000)
}

fn config() -> BlockConfig {
    BlockConfig::from_spec(&UbdSpec::default(), false)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn rig_with(driver: &Driver, disk: Box<dyn Disk>, cfg: &BlockConfig, features: u64) -> Rig {
    Rig::new(driver, Block::new(disk, cfg).unwrap(), features)
}

fn rig(driver: &Driver, cfg: &BlockConfig) -> (Rig, SharedDisk) {
    let disk = SharedDisk::default();
    disk.0.lock().unwrap().data = vec![0; DISK_LEN];
    let r = rig_with(driver, Box::new(disk.clone()), cfg, u64::MAX);
    (r, disk)
}

#[test]
fn test_write_then_read_across_multi_descriptor_chains() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, disk) = rig(&d, &config());
    let data = pattern(3 * 512, 7);

    // Write: the header split over two descriptors, the data over three (one not
    // sector-sized).
    let h = d.header(VIRTIO_BLK_T_OUT, 5);
    let h1 = SplitDescriptor::new(h.addr().0, 6, 0, 0);
    let h2 = SplitDescriptor::new(h.addr().0 + 6, 10, 0, 0);
    let a = d.data_out(&data[..100]);
    let b = d.data_out(&data[100..1024]);
    let c = d.data_out(&data[1024..]);
    let s = d.status();
    d.add(0, &[h1, h2, a, b, c, s]);
    d.kick(0);
    r.run();
    assert_eq!(d.done(), vec![(0, 1)]);
    assert_eq!(d.status_of(&s), VIRTIO_BLK_S_OK);
    assert_eq!(
        &disk.0.lock().unwrap().data[5 * 512..8 * 512],
        &data[..],
        "the data reached the disk"
    );

    // Read it back into two buffers of other sizes.
    let h = d.header(VIRTIO_BLK_T_IN, 5);
    let x = d.data_in(512 + 17);
    let y = d.data_in(1024 - 17);
    let s = d.status();
    d.add(0, &[h, x, y, s]);
    d.kick(0);
    r.run();
    assert_eq!(d.done(), vec![(6, 3 * 512 + 1)]);
    assert_eq!(d.status_of(&s), VIRTIO_BLK_S_OK);
    let mut back = d.read(&x);
    back.extend(d.read(&y));
    assert_eq!(back, data);
    assert_eq!(
        r.irq.triggers.lock().unwrap().as_slice(),
        &[InterruptKind::Queue(0), InterruptKind::Queue(0)]
    );
    assert_eq!(r.resets(), 0);
}

#[test]
fn test_large_request_goes_through_the_bounce_buffer_in_pieces() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, disk) = rig(&d, &config());
    let data = pattern(600 << 10, 3);
    let s = d.send(VIRTIO_BLK_T_OUT, 1, &data);
    let (x, s2) = d.fetch(VIRTIO_BLK_T_IN, 1, data.len() as u32);
    d.kick(0);
    r.run();
    assert_eq!(d.done(), vec![(0, 1), (3, data.len() as u32 + 1)]);
    assert_eq!(d.status_of(&s), VIRTIO_BLK_S_OK);
    assert_eq!(d.status_of(&s2), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(&x), data);
    assert_eq!(
        &disk.0.lock().unwrap().data[512..512 + data.len()],
        &data[..]
    );
}

#[test]
fn test_indirect_chain() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, disk) = rig(&d, &config());
    disk.0.lock().unwrap().data[..512].copy_from_slice(&pattern(512, 9));
    let h = d.header(VIRTIO_BLK_T_IN, 0);
    let x = d.data_in(512);
    let s = d.status();
    let table = [
        SplitDescriptor::new(h.addr().0, 16, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(x.addr().0, 512, W | VRING_DESC_F_NEXT as u16, 2),
        SplitDescriptor::new(s.addr().0, 1, W, 0),
    ];
    let t = d.buf(48);
    for (i, e) in table.iter().enumerate() {
        m.write_obj(RawDescriptor::from(*e), GuestAddress(t + 16 * i as u64))
            .unwrap();
    }
    d.add(
        0,
        &[SplitDescriptor::new(t, 48, VRING_DESC_F_INDIRECT as u16, 0)],
    );
    d.kick(0);
    r.run();
    assert_eq!(d.done(), vec![(0, 513)]);
    assert_eq!(d.status_of(&s), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(&x), pattern(512, 9));
}

#[test]
fn test_get_id_flush_and_unsupported() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let cfg = BlockConfig::from_spec(
        &UbdSpec {
            unit: 2,
            ..UbdSpec::default()
        },
        false,
    );
    let (mut r, disk) = rig(&d, &cfg);
    let (id, s1) = d.fetch(VIRTIO_BLK_T_GET_ID, 0, 20);
    let s2 = d.send(VIRTIO_BLK_T_FLUSH, 0, &[]);
    let (l, s3) = d.fetch(VIRTIO_BLK_T_GET_LIFETIME, 0, 16);
    d.kick(0);
    r.run();
    assert_eq!(d.done(), vec![(0, 21), (3, 1), (5, 1)]);
    assert_eq!(d.status_of(&s1), VIRTIO_BLK_S_OK);
    let mut want = [0u8; 20];
    want[..4].copy_from_slice(b"ubd2");
    assert_eq!(d.read(&id), want);
    assert_eq!(d.status_of(&s2), VIRTIO_BLK_S_OK);
    assert_eq!(disk.0.lock().unwrap().flushes, 1);
    assert_eq!(d.status_of(&s3), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(d.read(&l), vec![0xee; 16], "nothing written for UNSUPP");
    assert_eq!(r.resets(), 0);
}

#[test]
fn test_sync_and_write_through_flush_after_writes() {
    for (sync, features) in [(true, u64::MAX), (false, 0)] {
        let m = mem();
        let mut d = Driver::new(&m, 1);
        let mut cfg = config();
        cfg.sync = sync;
        let disk = SharedDisk::default();
        disk.0.lock().unwrap().data = vec![0; DISK_LEN];
        let mut r = rig_with(&d, Box::new(disk.clone()), &cfg, features);
        let h = d.header(VIRTIO_BLK_T_OUT, 0);
        let a = d.data_out(&[1; 512]);
        let s = d.status();
        d.add(0, &[h, a, s]);
        d.kick(0);
        r.run();
        assert_eq!(d.status_of(&s), VIRTIO_BLK_S_OK);
        assert_eq!(disk.0.lock().unwrap().flushes, 1, "sync={sync}");
    }
    // Without sync, with FLUSH negotiated: no flush per write.
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, disk) = rig(&d, &config());
    let h = d.header(VIRTIO_BLK_T_OUT, 0);
    let a = d.data_out(&[1; 512]);
    let s = d.status();
    d.add(0, &[h, a, s]);
    d.kick(0);
    r.run();
    assert_eq!(disk.0.lock().unwrap().flushes, 0);
}

fn segment(sector: u64, n: u32, flags: u32) -> Vec<u8> {
    let mut s = Vec::with_capacity(16);
    s.extend(sector.to_le_bytes());
    s.extend(n.to_le_bytes());
    s.extend(flags.to_le_bytes());
    s
}

#[test]
fn test_discard_and_write_zeroes() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, disk) = rig(&d, &config());
    disk.0.lock().unwrap().data.fill(0xab);
    // Write zeroes over two ranges (one with UNMAP).
    let h = d.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let mut segs = segment(2, 3, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    segs.extend(segment(10, 1, 0));
    let sd = d.data_out(&segs);
    let s1 = d.status();
    d.add(0, &[h, sd, s1]);
    // Discard one range.
    let s2 = d.send(VIRTIO_BLK_T_DISCARD, 0, &segment(20, 4, 0));
    // Discard with UNMAP: UNSUPP.
    let s3 = d.send(
        VIRTIO_BLK_T_DISCARD,
        0,
        &segment(20, 4, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
    );
    // Write zeroes past the end: IOERR, nothing zeroed.
    let h = d.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let mut segs = segment(30, 1, 0);
    segs.extend(segment((DISK_LEN / 512) as u64, 1, 0));
    let sd = d.data_out(&segs);
    let s4 = d.status();
    d.add(0, &[h, sd, s4]);
    d.kick(0);
    r.run();
    assert_eq!(d.done().len(), 4);
    assert_eq!(d.status_of(&s1), VIRTIO_BLK_S_OK);
    assert_eq!(d.status_of(&s2), VIRTIO_BLK_S_OK);
    assert_eq!(d.status_of(&s3), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(d.status_of(&s4), VIRTIO_BLK_S_IOERR);
    let disk = disk.0.lock().unwrap();
    assert!(disk.data[..2 * 512].iter().all(|b| *b == 0xab));
    assert!(disk.data[2 * 512..5 * 512].iter().all(|b| *b == 0));
    assert!(disk.data[5 * 512..10 * 512].iter().all(|b| *b == 0xab));
    assert!(disk.data[10 * 512..11 * 512].iter().all(|b| *b == 0));
    assert!(disk.data[30 * 512..31 * 512].iter().all(|b| *b == 0xab));
}

#[test]
fn test_no_trim_makes_discard_unsupported() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let mut cfg = config();
    cfg.trim = false;
    let (mut r, _disk) = rig(&d, &cfg);
    let s = d.send(VIRTIO_BLK_T_DISCARD, 0, &segment(0, 1, 0));
    d.kick(0);
    r.run();
    assert_eq!(d.status_of(&s), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn test_read_only_refuses_writes_and_serves_reads() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let mut cfg = config();
    cfg.read_only = true;
    let (mut r, disk) = rig(&d, &cfg);
    disk.0.lock().unwrap().data[..512].fill(5);
    let h = d.header(VIRTIO_BLK_T_OUT, 0);
    let a = d.data_out(&[9; 512]);
    let s1 = d.status();
    d.add(0, &[h, a, s1]);
    let s2 = d.send(VIRTIO_BLK_T_WRITE_ZEROES, 0, &segment(0, 1, 0));
    let (x, s3) = d.fetch(VIRTIO_BLK_T_IN, 0, 512);
    d.kick(0);
    r.run();
    assert_eq!(d.status_of(&s1), VIRTIO_BLK_S_IOERR);
    // WRITE_ZEROES is not offered on a read-only device, and still IOERR.
    assert_eq!(d.status_of(&s2), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.status_of(&s3), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(&x), vec![5; 512]);
    assert!(disk.0.lock().unwrap().data[..512].iter().all(|b| *b == 5));
}

#[test]
fn test_out_of_range_and_malformed_requests_get_ioerr() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, _disk) = rig(&d, &config());
    let last = (DISK_LEN / 512) as u64;
    let mut statuses = Vec::new();
    // Read across the end.
    let (_, s) = d.fetch(VIRTIO_BLK_T_IN, last - 1, 1024);
    statuses.push(s);
    // Write at u64::MAX.
    let h = d.header(VIRTIO_BLK_T_OUT, u64::MAX);
    let a = d.data_out(&[0; 512]);
    let s = d.status();
    d.add(0, &[h, a, s]);
    statuses.push(s);
    // A huge data descriptor.
    let h = d.header(VIRTIO_BLK_T_IN, 0);
    let s = d.status();
    d.add(
        0,
        &[h, SplitDescriptor::new(0x40_0000, u32::MAX - 511, W, 0), s],
    );
    statuses.push(s);
    // A data buffer outside guest memory.
    let h = d.header(VIRTIO_BLK_T_IN, 0);
    let s = d.status();
    d.add(0, &[h, SplitDescriptor::new(0x1_0000_0000, 512, W, 0), s]);
    statuses.push(s);
    // A read whose data descriptor is device-readable.
    let h = d.header(VIRTIO_BLK_T_IN, 0);
    let a = d.data_out(&[0; 512]);
    let s = d.status();
    d.add(0, &[h, a, s]);
    statuses.push(s);
    // A short header.
    let h = d.header(VIRTIO_BLK_T_IN, 0);
    let s = d.status();
    d.add(0, &[SplitDescriptor::new(h.addr().0, 8, 0, 0), s]);
    statuses.push(s);
    // A status descriptor longer than one byte: the status is its last byte, the rest is
    // read data.
    let h = d.header(VIRTIO_BLK_T_IN, 0);
    let big = d.data_in(513);
    d.add(0, &[h, big]);
    d.kick(0);
    r.run();
    let used = d.done();
    assert_eq!(used.len(), statuses.len() + 1);
    for (i, s) in statuses.iter().enumerate() {
        assert_eq!(d.status_of(s), VIRTIO_BLK_S_IOERR, "request {i}");
        assert_eq!(used[i].1, 1, "request {i}");
    }
    assert_eq!(used[statuses.len()].1, 513);
    assert_eq!(d.read(&big)[512], VIRTIO_BLK_S_OK);
    assert_eq!(r.resets(), 0);
}

#[test]
fn test_chain_without_status_needs_reset() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, _disk) = rig(&d, &config());
    let h = d.header(VIRTIO_BLK_T_FLUSH, 0);
    d.add(0, &[h]);
    let s = d.send(VIRTIO_BLK_T_FLUSH, 0, &[]);
    d.kick(0);
    r.run();
    assert_eq!(r.resets(), 1);
    // The bad chain went back unused, the device stopped there.
    assert_eq!(d.done(), vec![(0, 0)]);
    assert_eq!(d.status_of(&s), 0xff);
    // A reset and a new activation bring it back.
    {
        let mut b = r.dev.lock().unwrap();
        assert!(b.reset());
        b.ack_features(u64::MAX);
    }
    r.run();
    let mut d = Driver::new(&m, 1);
    r.dev
        .lock()
        .unwrap()
        .activate(m.clone(), r.irq.clone(), vec![d.active_queue()])
        .unwrap();
    r.run();
    let s = d.send(VIRTIO_BLK_T_FLUSH, 0, &[]);
    d.kick(0);
    r.run();
    assert_eq!(d.done(), vec![(0, 1)]);
    assert_eq!(d.status_of(&s), VIRTIO_BLK_S_OK);
}

#[test]
fn test_status_outside_memory_and_bad_avail_index_need_reset() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, _disk) = rig(&d, &config());
    let h = d.header(VIRTIO_BLK_T_FLUSH, 0);
    d.add(0, &[h, SplitDescriptor::new(0x1_0000_0000, 1, W, 0)]);
    d.kick(0);
    r.run();
    assert_eq!(r.resets(), 1);

    let m = mem();
    let d = Driver::new(&m, 1);
    let (mut r, _disk) = rig(&d, &config());
    // avail.idx 1000 ahead of the device's position: more than the queue size.
    d.queues[0].avail().idx().store(1000);
    d.kick(0);
    r.run();
    assert_eq!(r.resets(), 1);
}

#[test]
fn test_release_disk_then_requests_fail() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, disk) = rig(&d, &config());
    assert!(r.dev.lock().unwrap().release_disk().is_some());
    assert_eq!(disk.0.lock().unwrap().flushes, 1, "flushed on release");
    assert_eq!(
        Arc::strong_count(&disk.0),
        1,
        "the device let go of the disk"
    );
    let (_, s) = d.fetch(VIRTIO_BLK_T_IN, 0, 512);
    d.kick(0);
    r.run();
    assert_eq!(d.status_of(&s), VIRTIO_BLK_S_IOERR);
    assert_eq!(r.resets(), 0);
}

#[test]
fn test_real_raw_image_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, pattern(64 << 10, 1)).unwrap();
    let spec = UbdSpec {
        unit: 1,
        file: Some(path.to_str().unwrap().to_string()),
        sync: true,
        ..UbdSpec::default()
    };
    let image = ubd::open_spec(&spec, false).unwrap();
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let block = Block::from_image(image, &spec, false).unwrap();
    assert_eq!(block.capacity(), 128);
    let mut r = Rig::new(&d, block, u64::MAX);
    let h = d.header(VIRTIO_BLK_T_OUT, 4);
    let a = d.data_out(&[0x5a; 1024]);
    let s1 = d.status();
    d.add(0, &[h, a, s1]);
    let (x, s2) = d.fetch(VIRTIO_BLK_T_IN, 0, 512);
    let s3 = d.send(
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &segment(100, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
    );
    let (id, s4) = d.fetch(VIRTIO_BLK_T_GET_ID, 0, 20);
    d.kick(0);
    r.run();
    for s in [s1, s2, s3, s4] {
        assert_eq!(d.status_of(&s), VIRTIO_BLK_S_OK);
    }
    assert_eq!(d.read(&x), pattern(512, 1));
    assert_eq!(&d.read(&id)[..5], b"ubd1\0");
    // Hot-unplug: leave the event loop, drop the image.
    let id = r.id;
    r.em.remove_subscriber(id).unwrap();
    drop(r.dev.lock().unwrap().release_disk());
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[4 * 512..6 * 512], &[0x5a; 1024][..]);
    assert!(file[100 * 512..108 * 512].iter().all(|b| *b == 0));
    assert_eq!(&file[..512], &pattern(512, 1)[..]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random chains (addresses, lengths, directions, header contents) through the whole
    /// device: no panic, every chain comes back or the device asks for a reset, and the
    /// disk is never touched outside what a valid request covers.
    #[test]
    fn prop_random_chains_never_panic(
        chains in proptest::collection::vec(
            (
                prop_oneof![0u32..16, any::<u32>()],
                prop_oneof![0u64..2100, any::<u64>()],
                proptest::collection::vec((0u64..0x300_0000, prop_oneof![0u32..0x3000, any::<u32>()], any::<bool>()), 0..6),
                any::<bool>(),
            ),
            1..8),
    ) {
        let m = mem();
        let mut d = Driver::new(&m, 1);
        let (mut r, _disk) = rig(&d, &config());
        let mut total = 0;
        for (kind, sector, descs, with_header) in chains {
            let mut v = Vec::new();
            if with_header {
                v.push(d.header(kind, sector));
            }
            for (addr, len, w) in descs {
                v.push(SplitDescriptor::new(addr, len, if w { W } else { 0 }, 0));
            }
            if v.is_empty() {
                continue;
            }
            total += 1;
            d.add(0, &v);
        }
        d.kick(0);
        r.run();
        let used = d.done();
        if r.resets() == 0 {
            prop_assert_eq!(used.len(), total);
            prop_assert!(used.iter().all(|(_, len)| *len >= 1));
        }
    }
}

#[test]
fn test_cow_image_keeps_the_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("base.img");
    let cow = dir.path().join("vm.cow");
    std::fs::write(&backing, pattern(64 << 10, 2)).unwrap();
    let spec = UbdSpec {
        unit: 0,
        file: Some(cow.to_str().unwrap().to_string()),
        backing: Some(backing.to_str().unwrap().to_string()),
        ..UbdSpec::default()
    };
    let image = ubd::open_spec(&spec, false).unwrap();
    assert!(matches!(image, ubd::Image::Cow(_)));
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let mut r = rig_with(
        &d,
        Box::new(image),
        &BlockConfig::from_spec(&spec, false),
        u64::MAX,
    );
    // Overwrite sector 3, then read sectors 2..5: old, new, old.
    let h = d.header(VIRTIO_BLK_T_OUT, 3);
    let a = d.data_out(&[0x77; 512]);
    let s1 = d.status();
    d.add(0, &[h, a, s1]);
    let (x, s2) = d.fetch(VIRTIO_BLK_T_IN, 2, 3 * 512);
    let s3 = d.send(VIRTIO_BLK_T_FLUSH, 0, &[]);
    d.kick(0);
    r.run();
    for s in [s1, s2, s3] {
        assert_eq!(d.status_of(&s), VIRTIO_BLK_S_OK);
    }
    let base = pattern(64 << 10, 2);
    let got = d.read(&x);
    assert_eq!(&got[..512], &base[2 * 512..3 * 512]);
    assert_eq!(&got[512..1024], &[0x77; 512][..]);
    assert_eq!(&got[1024..], &base[4 * 512..5 * 512]);
    drop(r.dev.lock().unwrap().release_disk());
    assert_eq!(std::fs::read(&backing).unwrap(), base, "backing untouched");
}

#[test]
fn test_event_idx_queue_is_served_and_interrupts() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let disk = SharedDisk::default();
    disk.0.lock().unwrap().data = vec![0; DISK_LEN];
    d.event_idx = true;
    let mut r = Rig::new(&d, Block::new(Box::new(disk), &config()).unwrap(), u64::MAX);
    for round in 0..3u16 {
        // used_event: interrupt once the first new entry is used.
        d.set_used_event(0, d.seen_used[0]);
        for _ in 0..4 {
            d.send(VIRTIO_BLK_T_FLUSH, 0, &[]);
        }
        d.kick(0);
        r.run();
        assert_eq!(d.done().len(), 4, "round {round}");
        assert_eq!(
            r.irq.triggers.lock().unwrap().len(),
            usize::from(round) + 1,
            "one interrupt per batch"
        );
        // The device asked to be notified at the next new entry.
        assert_eq!(d.avail_event(0), 4 * (round + 1));
    }
    assert_eq!(r.resets(), 0);
}

#[test]
fn test_batch_limit_yields_to_the_event_loop_and_comes_back() {
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let (mut r, _disk) = rig(&d, &config());
    r.dev.lock().unwrap().batch_limit = 2;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let s = d.send(VIRTIO_BLK_T_FLUSH, 0, &[]);
        statuses.push(s);
    }
    d.kick(0);
    // One event serves two requests.
    assert_eq!(r.em.run_with_timeout(0).unwrap(), 1);
    assert_eq!(d.done().len(), 2);
    r.run();
    assert_eq!(d.done().len(), 3);
    for s in statuses {
        assert_eq!(d.status_of(&s), VIRTIO_BLK_S_OK);
    }
    assert_eq!(r.irq.triggers.lock().unwrap().len(), 3);
}

/// The device behind the virtio-pci transport, driven like Linux's virtio_pci + virtio_blk.
#[test]
fn test_through_the_pci_transport() {
    use crate::bus::BusDevice;
    use crate::pci::msix::fake::FakeRouting;
    use crate::pci::virtio::{VirtioPciDevice, DEVICE_CFG_OFFSET, NOTIFY_OFFSET};
    use crate::virtio::status;

    const BAR: u64 = 0x1_0000_0000;
    let m = mem();
    let mut d = Driver::new(&m, 1);
    let disk = SharedDisk::default();
    disk.0.lock().unwrap().data = vec![0; DISK_LEN];
    let block = Arc::new(Mutex::new(
        Block::new(Box::new(disk.clone()), &config()).unwrap(),
    ));
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em.add_subscriber(block.clone());
    let routing = Arc::new(FakeRouting::default());
    let mut pci = VirtioPciDevice::new(block.clone(), m.clone(), routing, BAR).unwrap();
    let w = |pci: &mut VirtioPciDevice, off: u64, val: u64, len: usize| {
        pci.write(BAR, off, &val.to_le_bytes()[..len]);
    };
    let r = |pci: &mut VirtioPciDevice, off: u64, len: usize| {
        let mut b = [0u8; 8];
        pci.read(BAR, off, &mut b[..len]);
        u64::from_le_bytes(b)
    };
    assert_eq!(r(&mut pci, DEVICE_CFG_OFFSET, 8), (DISK_LEN / 512) as u64);
    assert_eq!(r(&mut pci, 0x18, 2), u64::from(QLEN), "queue 0 max size");
    w(
        &mut pci,
        0x14,
        u64::from(status::ACKNOWLEDGE | status::DRIVER),
        1,
    );
    let mut features = 0u64;
    for sel in 0..2u64 {
        w(&mut pci, 0x00, sel, 4);
        features |= r(&mut pci, 0x04, 4) << (32 * sel);
    }
    assert_eq!(features, block.lock().unwrap().features());
    for sel in 0..2u64 {
        w(&mut pci, 0x08, sel, 4);
        w(&mut pci, 0x0c, (features >> (32 * sel)) & 0xffff_ffff, 4);
    }
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w(&mut pci, 0x14, u64::from(st), 1);
    assert_eq!(r(&mut pci, 0x14, 1), u64::from(st), "features accepted");
    w(&mut pci, 0x16, 0, 2);
    w(&mut pci, 0x20, d.queues[0].desc_table_addr().0, 8);
    w(&mut pci, 0x28, d.queues[0].avail_addr().0, 8);
    w(&mut pci, 0x30, d.queues[0].used_addr().0, 8);
    w(&mut pci, 0x1c, 1, 2);
    w(&mut pci, 0x14, u64::from(st | status::DRIVER_OK), 1);
    assert!(pci.is_activated());
    for _ in 0..10 {
        em.run_with_timeout(0).unwrap();
    }
    // A write and a read, notified through the BAR.
    let data = pattern(4096, 5);
    let s1 = d.send(VIRTIO_BLK_T_OUT, 8, &data);
    let (x, s2) = d.fetch(VIRTIO_BLK_T_IN, 8, 4096);
    w(&mut pci, NOTIFY_OFFSET, 0, 2);
    for _ in 0..10 {
        em.run_with_timeout(0).unwrap();
    }
    assert_eq!(d.done(), vec![(0, 1), (3, 4097)]);
    assert_eq!(d.status_of(&s1), VIRTIO_BLK_S_OK);
    assert_eq!(d.status_of(&s2), VIRTIO_BLK_S_OK);
    assert_eq!(d.read(&x), data);
    assert_eq!(pci.device_status() & status::NEEDS_RESET, 0);
    // The driver resets the device: it stops watching the queue and keeps the disk.
    w(&mut pci, 0x14, 0, 1);
    for _ in 0..10 {
        em.run_with_timeout(0).unwrap();
    }
    assert!(!pci.is_activated());
    assert_eq!(&disk.0.lock().unwrap().data[8 * 512..16 * 512], &data[..]);
}
