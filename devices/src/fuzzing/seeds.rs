//! Builds the seed inputs of the device-level targets: guests a real driver would set up
//! (requests of each kind, frames both ways, the console handshake), which the fuzzer then
//! mutates. `cargo test -p devices --lib write_seeds -- --ignored` rewrites
//! `fuzz/seeds/{block_device,net_device,console_device,virtio_pci}/`.

use std::path::Path;

use netdev::{FakeBackend, MacAddr};
use ubd::MemDisk;

use super::rig::{rings, Input, DESC_F_WRITE, MAX_QUEUES, MEM_SIZE, QSIZE};
use crate::virtio::block::{Block, BlockConfig};
use crate::virtio::console::Console;
use crate::virtio::net::Net;
use crate::virtio::VirtioDevice;

/// A buffer: guest address, length, descriptor flags.
type Buf = (u64, u32, u16);
/// Named seeds of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

const NEXT: u16 = 1;
const INDIRECT: u16 = 4;

/// A guest image under construction: descriptor chains made available on the rig's queues.
struct Guest {
    mem: Vec<u8>,
    next_desc: [u16; 8],
    avail: [u16; 8],
}

impl Guest {
    fn new() -> Self {
        Guest {
            mem: vec![0; MEM_SIZE],
            next_desc: [0; 8],
            avail: [0; 8],
        }
    }

    fn put(&mut self, addr: u64, bytes: &[u8]) {
        let a = addr as usize;
        self.mem[a..a + bytes.len()].copy_from_slice(bytes);
    }

    fn desc(&mut self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.put(at, &d);
    }

    /// Adds a chain of `(addr, len, flags)` buffers to queue `q` and makes it available.
    fn chain(&mut self, q: usize, bufs: &[Buf]) {
        let (table, avail, _) = rings(q);
        let head = self.next_desc[q];
        for (k, &(addr, len, flags)) in bufs.iter().enumerate() {
            let i = head + k as u16;
            let last = k + 1 == bufs.len();
            let flags = if last { flags } else { flags | NEXT };
            self.desc(table + 16 * u64::from(i), addr, len, flags, i + 1);
        }
        self.next_desc[q] += bufs.len() as u16;
        self.publish(q, avail, head);
    }

    fn publish(&mut self, q: usize, avail: u64, head: u16) {
        let slot = self.avail[q];
        self.put(avail + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        self.avail[q] += 1;
        let idx = self.avail[q];
        self.put(avail + 2, &idx.to_le_bytes());
    }

    fn input(&self, option: u8, script: &[u8], host: &[u8]) -> Vec<u8> {
        let used = self.mem.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        Input {
            features: u64::MAX,
            option,
            script,
            memory: &self.mem[..used],
            host,
        }
        .encode()
    }
}

fn blk_header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn block_seeds() -> Seeds {
    let mut out = Vec::new();
    let w = DESC_F_WRITE;
    // Read, write, flush, get-id, discard, write-zeroes: one chain each on queue 0.
    let mut g = Guest::new();
    let reqs: [(u32, u64, Vec<Buf>); 6] = [
        (0, 1, vec![(0x3000, 1024, w)]),
        (1, 2, vec![(0x3400, 512, 0)]),
        (4, 0, vec![]),
        (8, 0, vec![(0x3800, 20, w)]),
        (11, 0, vec![(0x3900, 16, 0)]),
        (13, 0, vec![(0x3a00, 16, 0)]),
    ];
    for (i, (kind, sector, data)) in reqs.iter().enumerate() {
        let hdr = 0x2000 + 0x20 * i as u64;
        g.put(hdr, &blk_header(*kind, *sector));
        let status = 0x2f00 + i as u64;
        let mut bufs = vec![(hdr, 16, 0)];
        bufs.extend(data);
        bufs.push((status, 1, w));
        g.chain(0, &bufs);
    }
    // Segments of the discard and write-zeroes requests: sector 4, 2 sectors.
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&4u64.to_le_bytes());
    seg[8..12].copy_from_slice(&2u32.to_le_bytes());
    g.put(0x3900, &seg);
    g.put(0x3a00, &seg);
    g.put(0x3400, &[0x5a; 512]);
    out.push(("each_request", g.input(0, &[0], &[0x11; 4096])));
    out.push(("each_request_read_only", g.input(1, &[0, 0], &[])));

    // A read through an indirect table.
    let mut g = Guest::new();
    g.put(0x2000, &blk_header(0, 0));
    let table = 0x4000;
    g.desc(table, 0x2000, 16, NEXT, 1);
    g.desc(table + 16, 0x3000, 512, w | NEXT, 2);
    g.desc(table + 32, 0x2f00, 1, w, 0);
    g.chain(0, &[(table, 48, INDIRECT)]);
    out.push(("indirect_read", g.input(0, &[0], &[0x22; 512])));
    out
}

fn net_seeds() -> Seeds {
    let w = DESC_F_WRITE;
    let mut g = Guest::new();
    // Receive buffers on queue 0: header + frame fit each.
    for i in 0..4u64 {
        g.chain(0, &[(0x4000 + 0x800 * i, 0x800, w)]);
    }
    // A transmit chain on queue 1: the header, then a 60-byte ARP frame.
    let mut frame = vec![0xffu8; 6];
    frame.extend([0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x06]);
    frame.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend([0x52, 0x54, 0, 0x12, 0x34, 0x56, 10, 0, 0, 2]);
    frame.resize(60, 0);
    g.put(0x3000, &frame);
    g.chain(1, &[(0x2f00, 12, 0), (0x3000, 60, 0)]);
    let mut host = (60u16).to_le_bytes().to_vec();
    host.extend(&frame);
    host.extend((1514u16).to_le_bytes());
    host.extend(vec![0x33; 1514]);
    vec![
        ("tx_then_rx", g.input(0, &[1, 0, 0x80, 0x80, 0], &host)),
        ("blocked_host", g.input(0, &[0xc0, 1, 0xe0, 0x80, 0], &host)),
    ]
}

fn control(id: u32, event: u16, value: u16) -> [u8; 8] {
    let mut m = [0u8; 8];
    m[0..4].copy_from_slice(&id.to_le_bytes());
    m[4..6].copy_from_slice(&event.to_le_bytes());
    m[6..8].copy_from_slice(&value.to_le_bytes());
    m
}

fn console_seeds() -> Seeds {
    let w = DESC_F_WRITE;
    let mut g = Guest::new();
    // Queues: 0/1 port 0 rx/tx, 2/3 control rx/tx, 4/5 port 1 rx/tx.
    for i in 0..8u64 {
        g.chain(2, &[(0x5000 + 0x100 * i, 0x100, w)]);
    }
    // DEVICE_READY, PORT_READY 0 and 1, PORT_OPEN 0.
    let msgs = [
        control(0, 0, 1),
        control(0, 3, 1),
        control(1, 3, 1),
        control(0, 6, 1),
    ];
    for (i, m) in msgs.iter().enumerate() {
        let at = 0x2000 + 0x10 * i as u64;
        g.put(at, m);
        g.chain(3, &[(at, 8, 0)]);
    }
    g.chain(0, &[(0x3000, 0x100, w)]);
    g.chain(0, &[(0x3100, 0x100, w)]);
    g.put(0x3800, b"hello from the guest\n");
    g.chain(1, &[(0x3800, 21, 0)]);
    g.chain(4, &[(0x3200, 0x100, w)]);
    g.put(0x3900, b"port 1\n");
    g.chain(5, &[(0x3900, 7, 0)]);
    let mut host = 6u16.to_le_bytes().to_vec();
    host.extend(b"input\n");
    vec![
        ("handshake", g.input(0, &[2, 3, 0, 1, 0x80, 4, 5], &host)),
        (
            "hotplug",
            g.input(0, &[2, 3, 0xe0, 0xc5, 0xe0, 0x80, 0], &host),
        ),
    ]
}

/// A config-space or BAR access record of the virtio_pci target.
fn pci_op(kind: u8, offset: u16, size_sel: u8, value: u64) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend(offset.to_le_bytes());
    v.push(size_sel);
    v.extend(value.to_le_bytes());
    v
}

/// What a driver does: memory decoding on, MSI-X enabled, vector 0 programmed, status
/// ACK|DRIVER, the offered `features` accepted, FEATURES_OK, `queues` queues at the rig's
/// rings, DRIVER_OK, notifications, then a reset.
fn driver_ops(features: u64, queues: usize) -> Vec<u8> {
    let mut ops = Vec::new();
    ops.extend(pci_op(0, 0x04, 1, 0x6)); // command: memory + bus master
    ops.extend(pci_op(0, 0x9a, 1, 0x8000)); // MSI-X message control: enable
    ops.extend(pci_op(2, 0x4000, 2, 0xfee0_0000)); // MSI-X entry 0 address
    ops.extend(pci_op(2, 0x4008, 2, 0x30)); // data
    ops.extend(pci_op(2, 0x400c, 2, 0)); // unmask
    ops.extend(pci_op(2, 0x14, 0, 3)); // status: ACKNOWLEDGE | DRIVER
    for half in 0..2u64 {
        ops.extend(pci_op(2, 0x00, 2, half)); // device_feature_select
        ops.extend(pci_op(3, 0x04, 2, 0)); // device_feature
        ops.extend(pci_op(2, 0x08, 2, half)); // driver_feature_select
        ops.extend(pci_op(2, 0x0c, 2, (features >> (32 * half)) & 0xffff_ffff));
    }
    ops.extend(pci_op(2, 0x14, 0, 11)); // FEATURES_OK
    ops.extend(pci_op(3, 0x14, 0, 0)); // read it back
    for q in 0..queues.min(MAX_QUEUES) {
        let (desc, avail, used) = rings(q);
        ops.extend(pci_op(2, 0x16, 1, q as u64)); // queue_select
        ops.extend(pci_op(2, 0x18, 1, u64::from(QSIZE))); // queue_size
        ops.extend(pci_op(2, 0x1a, 1, 0)); // queue_msix_vector
        for (at, addr) in [(0x20, desc), (0x28, avail), (0x30, used)] {
            ops.extend(pci_op(2, at, 2, addr));
            ops.extend(pci_op(2, at + 4, 2, 0));
        }
        ops.extend(pci_op(2, 0x1c, 1, 1)); // queue_enable
    }
    ops.extend(pci_op(2, 0x14, 0, 15)); // DRIVER_OK
    for q in 0..queues.min(4) as u16 {
        ops.extend(pci_op(2, 0x3000 + 4 * q, 1, u64::from(q))); // notify
    }
    ops.extend(pci_op(3, 0x1000, 0, 0)); // ISR
    ops.extend(pci_op(1, 0x00, 2, 0));
    ops.extend(pci_op(2, 0x14, 0, 0)); // reset
    ops
}

fn virtio_pci_seeds() -> Seeds {
    let mut g = Guest::new();
    g.put(0x2000, &blk_header(0, 0));
    let w = DESC_F_WRITE;
    g.chain(0, &[(0x2000, 16, 0), (0x3000, 512, w), (0x2f00, 1, w)]);
    let blk = Block::new(
        Box::new(MemDisk::new(vec![0; 4096])),
        &BlockConfig {
            serial: String::new(),
            read_only: false,
            sync: false,
            trim: true,
        },
    )
    .unwrap();
    let net = Net::new(
        Box::new(FakeBackend::new().unwrap()),
        MacAddr([2, 0, 0, 0, 0, 1]),
    )
    .unwrap();
    let con = Console::new(2).unwrap();
    let ops = |d: &dyn VirtioDevice| driver_ops(d.features(), d.queue_max_sizes().len());
    vec![
        ("block_driver", g.input(0, &[], &ops(&blk))),
        ("net_driver", g.input(1, &[], &ops(&net))),
        ("console_driver", g.input(2, &[], &ops(&con))),
    ]
}

/// Every device-level seed, by target.
fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("block_device", block_seeds()),
        ("net_device", net_seeds()),
        ("console_device", console_seeds()),
        ("virtio_pci", virtio_pci_seeds()),
    ]
}

#[test]
#[ignore = "writes fuzz/seeds/: run by hand when the rig's input format changes"]
fn write_seeds() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    for (target, list) in all() {
        let dir = seeds.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in list {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// The committed seeds are the ones this module builds (so they keep matching the input
/// format the harnesses read).
#[test]
fn test_committed_device_seeds_are_current() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    for (target, list) in all() {
        for (name, bytes) in list {
            let path = seeds.join(target).join(name);
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == bytes,
                "{} is stale: run `cargo test -p devices --lib write_seeds -- --ignored`",
                path.display()
            );
        }
    }
}
