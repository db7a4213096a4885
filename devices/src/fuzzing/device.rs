//! Device-level harnesses: the real block, net and console models, and the virtio-pci
//! transport, driven by guests built from the fuzz input (see [`super::rig`]).
//!
//! [`legacy_ports`] does the same for the port and MMIO devices outside virtio.
//!
//! Each run checks that nothing panics, that the event loop goes idle (a device that spins
//! is a libFuzzer timeout), and that the device wrote guest memory only inside the used rings
//! and the buffers that device-writable descriptors name.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use netdev::{FakeBackend, MacAddr};
use ubd::MemDisk;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::rig::{self, Input, WriteCheck};
use super::CheckedRouting;
use crate::bus::{Bus, BusDevice, SharedDevice};
use crate::chan::{Chan, Channel, ChannelSpec};
use crate::legacy::ged::{Ged, GED_LEN};
use crate::legacy::i8042::I8042;
use crate::legacy::pm::{ExitPort, PmDevice, PvPanic};
use crate::legacy::serial::SerialDevice;
use crate::legacy::{GuestEvent, GuestEvents};
use crate::pci::hotplug::{EjectHandler, PciHotplug, HOTPLUG_LEN};
use crate::pci::virtio::{msix_vectors, BAR_SIZE};
use crate::pci::{PciDevice, VirtioPciDevice};
use crate::virtio::block::{Block, BlockConfig};
use crate::virtio::console::Console;
use crate::virtio::net::Net;
use crate::virtio::{GuestMemory, VirtioDevice};

/// Bytes of the disk behind the block device.
const DISK_LEN: usize = 32 * 1024;
/// The guest MAC of the net device.
const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
/// VIRTIO_RING_F_EVENT_IDX.
const EVENT_IDX: u64 = 1 << 29;

/// Cuts `bytes` into `[len: u16 LE][len bytes]` records (the last one may be short).
fn records(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((n, rest)) = bytes.split_first_chunk::<2>() {
        let n = usize::from(u16::from_le_bytes(*n)).min(rest.len());
        out.push(&rest[..n]);
        bytes = &rest[n..];
    }
    out
}

/// Acks the input's features, activates `dev` on the rig's queues, then runs the script:
/// notifications, and `host` for host-side events (bytes >= 0x80). Checks guest memory last.
fn drive<D>(dev: D, mem: &GuestMemory, input: &Input, mut host: impl FnMut(&Mutex<D>, u8))
where
    D: VirtioDevice + MutEventSubscriber + 'static,
{
    let mut dev = dev;
    let acked = dev.features() & input.features;
    dev.ack_features(acked);
    let sizes: Vec<u16> = dev.queue_max_sizes().to_vec();
    let dev = Arc::new(Mutex::new(dev));
    let Ok(mut em) = EventManager::<Arc<Mutex<D>>>::new() else {
        panic!("an epoll instance");
    };
    em.add_subscriber(dev.clone());
    let (queues, kicks) = rig::queues(&sizes, acked & EVENT_IDX != 0);
    let check = WriteCheck::rings(mem, kicks.len());
    let irq = Arc::new(rig::CountingInterrupt::default());
    if crate::locked(&dev)
        .activate(mem.clone(), irq, queues)
        .is_ok()
    {
        rig::run(&mut em);
        for &step in input.script {
            if step < 0x80 {
                let _ = kicks[usize::from(step) % kicks.len()].write(1);
            } else {
                host(&dev, step);
            }
            rig::run(&mut em);
        }
    }
    check.check(mem);
}

/// A channel on one end of a socket pair, and the other end (non-blocking) for the host side.
fn socket_channel() -> (UnixStream, Channel) {
    let Ok((peer, ours)) = UnixStream::pair() else {
        panic!("a socket pair");
    };
    let _ = peer.set_nonblocking(true);
    let Ok(ours2) = ours.try_clone() else {
        panic!("a second socket handle");
    };
    let Ok(ch) = Channel::from_fds(
        ChannelSpec::single(Chan::Fd(3)),
        Some(ours.into()),
        Some(ours2.into()),
    ) else {
        panic!("a channel on a socket");
    };
    (peer, ch)
}

/// The virtio-blk device over a 32 KiB in-memory disk holding the host data. Option bits:
/// 0 read-only, 1 sync, 2 no trim.
pub fn block_device(data: &[u8]) {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let mem = rig::guest_memory(input.memory);
    let mut disk = input.host[..input.host.len().min(DISK_LEN)].to_vec();
    disk.resize(DISK_LEN, 0);
    let cfg = BlockConfig {
        serial: "fuzz".into(),
        read_only: input.option & 1 != 0,
        sync: input.option & 2 != 0,
        trim: input.option & 4 == 0,
    };
    let Ok(block) = Block::new(Box::new(MemDisk::new(disk)), &cfg) else {
        panic!("a block device over a memory disk");
    };
    drive(block, &mem, &input, |_, _| {});
}

/// The virtio-net device over an in-memory backend. The host data are frames
/// (`[len: u16 LE][frame]`); script bytes 0x80-0xbf deliver the next frame, 0xc0-0xdf toggle
/// a full host queue, 0xe0-0xff toggle the link.
pub fn net_device(data: &[u8]) {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let mem = rig::guest_memory(input.memory);
    let Ok(backend) = FakeBackend::new() else {
        panic!("an eventfd for the fake backend");
    };
    let Ok(net) = Net::new(Box::new(backend.clone()), MAC) else {
        panic!("a net device");
    };
    let frames = records(input.host);
    let mut next = frames.iter();
    let (mut full, mut link) = (false, true);
    drive(net, &mem, &input, |dev, step| match step {
        0x80..=0xbf => {
            if let Some(f) = next.next() {
                backend.inject(f);
            }
        }
        0xc0..=0xdf => {
            full = !full;
            backend.set_send_full(full);
        }
        _ => {
            link = !link;
            crate::locked(dev).set_link_up(link);
        }
    });
    for f in backend.take_sent() {
        assert!(
            f.len() <= crate::virtio::net::TX_FRAME_MAX,
            "sent frame too long"
        );
    }
}

/// The virtio-console device with two ports: port 0 on a socket whose other end writes the
/// host data, port 1 on `null`. Script bytes 0x80-0xbf write the next chunk of host data
/// (`[len: u16 LE][bytes]`), 0xc0-0xdf resize port 0, 0xe0-0xff remove or add port 1.
pub fn console_device(data: &[u8]) {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let mem = rig::guest_memory(input.memory);
    let (mut peer, ch) = socket_channel();
    let Ok(mut console) = Console::new(2) else {
        panic!("a two-port console");
    };
    let (Ok(()), Ok(())) = (
        console.add_port(0, ch),
        console.add_port(1, Channel::null()),
    ) else {
        panic!("ports 0 and 1");
    };
    let chunks = records(input.host);
    let mut next = chunks.iter();
    let mut sink = [0u8; 4096];
    drive(console, &mem, &input, |dev, step| {
        match step {
            0x80..=0xbf => {
                if let Some(c) = next.next() {
                    let _ = peer.write(c);
                }
            }
            0xc0..=0xdf => {
                let _ =
                    crate::locked(dev).resize(0, u16::from(step & 0x1f) * 7, u16::from(step & 3));
            }
            _ => {
                let mut c = crate::locked(dev);
                if c.remove_port(1).is_err() {
                    let _ = c.add_port(1, Channel::null());
                }
            }
        }
        while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
    });
}

/// The virtio-pci transport around a real device (option bits 0-1: block, net, console):
/// configuration-space and BAR accesses from the host data as 12-byte records
/// `[kind][offset: u16 LE][size][value: u64 LE]` (kinds: config write, config read, BAR
/// write, BAR read), the event loop run after each. The guest programs the queues itself,
/// so guest memory is not checked here; the MSI-X routing checks its vectors.
pub fn virtio_pci(data: &[u8]) {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let mem = rig::guest_memory(input.memory);
    match input.option % 3 {
        0 => {
            let disk = MemDisk::new(vec![0u8; DISK_LEN]);
            let cfg = BlockConfig {
                serial: "fuzz".into(),
                read_only: false,
                sync: false,
                trim: true,
            };
            if let Ok(b) = Block::new(Box::new(disk), &cfg) {
                pci_drive(b, &mem, input.host);
            }
        }
        1 => {
            if let Ok(b) = FakeBackend::new() {
                if let Ok(n) = Net::new(Box::new(b), MAC) {
                    pci_drive(n, &mem, input.host);
                }
            }
        }
        _ => {
            if let Ok(mut c) = Console::new(2) {
                let _ = c.add_port(0, Channel::null());
                pci_drive(c, &mem, input.host);
            }
        }
    }
}

fn pci_drive<D>(dev: D, mem: &GuestMemory, ops: &[u8])
where
    D: VirtioDevice + MutEventSubscriber + 'static,
{
    const BAR: u64 = 0x1_0000_0000;
    let vectors = msix_vectors(&dev);
    let dev = Arc::new(Mutex::new(dev));
    let Ok(mut em) = EventManager::<Arc<Mutex<D>>>::new() else {
        panic!("an epoll instance");
    };
    em.add_subscriber(dev.clone());
    let routing = Arc::new(CheckedRouting {
        vectors,
        ..Default::default()
    });
    let as_dyn: Arc<Mutex<dyn VirtioDevice>> = dev;
    let Ok(mut pci) = VirtioPciDevice::new(as_dyn, mem.clone(), routing, BAR) else {
        panic!("a virtio-pci function");
    };
    for op in ops.chunks_exact(12).take(256) {
        let offset = u16::from_le_bytes([op[1], op[2]]);
        let size = [1usize, 2, 4, 8][usize::from(op[3] % 4)];
        let value = &op[4..4 + size];
        let mut out = [0u8; 8];
        match op[0] % 4 {
            0 => {
                let _ = pci.write_config(usize::from(offset % 256), value);
            }
            1 => pci.read_config(usize::from(offset % 256), &mut out[..size]),
            2 => pci.write(BAR, u64::from(offset) % BAR_SIZE, value),
            _ => pci.read(BAR, u64::from(offset) % BAR_SIZE, &mut out[..size]),
        }
        rig::run(&mut em);
    }
}

/// Records guest events (power off, reset, panic, exit) and hot-unplug requests.
#[derive(Debug, Default)]
struct Events(Mutex<Vec<String>>);

impl GuestEvents for Events {
    fn report(&self, event: GuestEvent) {
        crate::locked(&self.0).push(format!("{event:?}"));
    }
}

impl EjectHandler for Events {
    fn eject(&self, slot: u8) {
        assert!(slot < 32, "eject of slot {slot}");
        crate::locked(&self.0).push(format!("eject {slot}"));
    }
}

/// Port and MMIO writes to the legacy devices (a UART on a socket, the i8042, the PM block,
/// pvpanic, the exit port, the GED and the PCI hot-plug registers) through a real [`Bus`]:
/// 8-byte records `[kind][address: u16 LE][size][value: u32 LE]`, kind even = write. The bus
/// answers an access exactly when a device covers it.
pub fn legacy_ports(data: &[u8]) {
    let events = Arc::new(Events::default());
    let (mut peer, ch) = socket_channel();
    let irq2 = || EventFd::new(EFD_NONBLOCK).expect("an eventfd");
    let Ok(uart) = SerialDevice::new(irq2(), ch) else {
        panic!("a UART");
    };
    let devices: [(SharedDevice, u64, u64); 8] = [
        (Arc::new(Mutex::new(uart)), 0x3f8, 8),
        (
            Arc::new(Mutex::new(I8042::new(events.clone(), irq2()))),
            0x60,
            1,
        ),
        (
            Arc::new(Mutex::new(I8042::new(events.clone(), irq2()))),
            0x64,
            1,
        ),
        (
            Arc::new(Mutex::new(PmDevice::new(events.clone(), 5, 1))),
            0x600,
            8,
        ),
        (Arc::new(Mutex::new(PvPanic::new(events.clone()))), 0x505, 1),
        (Arc::new(Mutex::new(ExitPort::new(events.clone()))), 0xf4, 1),
        (Arc::new(Mutex::new(Ged::new(irq2()))), 0x6f0, GED_LEN),
        (
            Arc::new(Mutex::new(PciHotplug::new(events.clone()))),
            0x6e0,
            HOTPLUG_LEN,
        ),
    ];
    let mut bus = Bus::new();
    for (dev, base, len) in devices {
        if bus.insert(dev, base, len).is_err() {
            panic!("the legacy devices do not overlap");
        }
    }
    let mut sink = [0u8; 4096];
    for op in data.chunks_exact(8).take(512) {
        let addr = u64::from(u16::from_le_bytes([op[1], op[2]]) % 0x700);
        let size = [1usize, 2, 4, 8][usize::from(op[3] % 4)];
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[4..8]);
        let covered = bus.resolve(addr, size).is_some();
        let answered = if op[0] % 2 == 0 {
            bus.write(addr, &value[..size])
        } else {
            bus.read(addr, &mut value[..size])
        };
        assert_eq!(answered, covered, "bus access {addr:#x}+{size}");
        // Only the UART writes to the socket: drain it after UART accesses only (a read
        // system call for every access was most of this target's time). 512 accesses
        // cannot fill the socket between two drains.
        if (0x3f8..0x400).contains(&addr) {
            while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
        }
        if op[0] == 0xff {
            let _ = peer.write(&op[4..8]);
        }
    }
}
