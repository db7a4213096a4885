//! The rig of the device-level harnesses: a small guest, split rings at fixed addresses whose
//! contents (descriptor tables, available rings, buffers) come from the fuzz input, a real
//! event-manager loop, and a check that the device wrote only where the guest let it.
//!
//! Guest layout ([`MEM_SIZE`] bytes from address 0): queue `q` has its descriptor table at
//! `q * 0x400`, its available ring at `+0x100` and its used ring at `+0x200`, all of
//! [`QSIZE`] entries; buffers can be anywhere, rings included, as a hostile guest likes.
//!
//! Input layout ([`Input`]):
//! ```text
//! [features: u64 LE]  ANDed with what the device offers; the driver acks the result
//! [option: u8]        device-specific (read-only disk, second port, …)
//! [k: u8][k bytes]    the script (k <= 32): a byte < 0x80 notifies queue `byte % queues`,
//!                     higher bytes are host-side events (a frame arrives, a port goes, …)
//! [m: u16 LE][m bytes] guest memory from address 0 (the rest is zero)
//! [rest]              host-side data (disk contents, frames, console input)
//! ```

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use event_manager::{EventManager, MutEventSubscriber};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::virtio::{ActiveQueue, GuestMemory, InterruptKind, VirtioInterrupt};

/// Bytes of guest memory.
pub const MEM_SIZE: usize = 0x1_0000;
/// Entries in each queue.
pub const QSIZE: u16 = 16;
/// Most queues the rig sets up (their rings fill the first 8 KiB).
pub const MAX_QUEUES: usize = 8;
/// Longest script.
pub const MAX_SCRIPT: usize = 32;
/// The WRITE descriptor flag.
pub const DESC_F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const DESC_F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const QUEUE_STRIDE: u64 = 0x400;
/// flags, idx, ring, avail_event.
const USED_LEN: u64 = 4 + 8 * QSIZE as u64 + 2;

/// Descriptor table, available ring and used ring addresses of queue `q`.
pub fn rings(q: usize) -> (u64, u64, u64) {
    let base = q as u64 * QUEUE_STRIDE;
    (base, base + 0x100, base + 0x200)
}

thread_local! {
    /// The guest mapping, kept from one input to the next (mapping, faulting in and unmapping
    /// 64 KiB for every input was a tenth of a device target's time).
    static GUEST: Arc<GuestRegionMmap<()>> = Arc::new(new_region());
    /// Snapshot buffers of [`MEM_SIZE`] bytes, reused for the same reason.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Zeros to clear the guest with.
static ZEROS: [u8; MEM_SIZE] = [0; MEM_SIZE];

fn new_region() -> GuestRegionMmap<()> {
    GuestRegionMmap::from_range(GuestAddress(0), MEM_SIZE, None).expect("mapping a 64 KiB guest")
}

/// A guest of [`MEM_SIZE`] bytes holding `image` from address 0 and zeros after it: this
/// thread's reused mapping, rewritten whole, when no earlier guest still holds it (else a new
/// mapping, so two live guests never share memory).
pub fn guest_memory(image: &[u8]) -> GuestMemory {
    let region = GUEST.with(|g| {
        if Arc::strong_count(g) == 1 {
            g.clone()
        } else {
            Arc::new(new_region())
        }
    });
    let mem = GuestMemoryMmap::from_arc_regions(vec![region]).expect("one region");
    let n = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("the image fits the guest");
    mem.write_slice(&ZEROS[n..], GuestAddress(n as u64))
        .expect("the rest fits the guest");
    mem
}

/// A device-level input, cut into its parts (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Features the driver accepts, if offered.
    pub features: u64,
    /// Device-specific option bits.
    pub option: u8,
    /// Notifications and host-side events, in order.
    pub script: &'a [u8],
    /// Guest memory from address 0.
    pub memory: &'a [u8],
    /// Host-side data.
    pub host: &'a [u8],
}

impl<'a> Input<'a> {
    /// Cuts `data`; `None` if it is too short for the fixed part.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (features, rest) = data.split_first_chunk::<8>()?;
        let (&option, rest) = rest.split_first()?;
        let (&k, rest) = rest.split_first()?;
        let k = usize::from(k).min(MAX_SCRIPT).min(rest.len());
        let (script, rest) = rest.split_at(k);
        let (m, rest) = rest.split_first_chunk::<2>()?;
        let m = usize::from(u16::from_le_bytes(*m)).min(rest.len());
        let (memory, host) = rest.split_at(m);
        Some(Input {
            features: u64::from_le_bytes(*features),
            option,
            script,
            memory,
            host,
        })
    }

    /// The bytes [`Input::parse`] reads back as `self` (for building seeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.features.to_le_bytes().to_vec();
        v.push(self.option);
        v.push(self.script.len().min(MAX_SCRIPT) as u8);
        v.extend_from_slice(&self.script[..self.script.len().min(MAX_SCRIPT)]);
        let m = self.memory.len().min(usize::from(u16::MAX));
        v.extend_from_slice(&(m as u16).to_le_bytes());
        v.extend_from_slice(&self.memory[..m]);
        v.extend_from_slice(self.host);
        v
    }
}

/// The queues of a device whose queues may be `max_sizes` long, at the rig's ring addresses,
/// set up as the virtio-pci transport does; and the eventfds that notify them.
pub fn queues(max_sizes: &[u16], event_idx: bool) -> (Vec<ActiveQueue>, Vec<EventFd>) {
    let mut active = Vec::new();
    let mut kicks = Vec::new();
    for (i, &max) in max_sizes.iter().enumerate().take(MAX_QUEUES) {
        let (desc, avail, used) = rings(i);
        let mut q = Queue::new(max).expect("a device's queue size is valid");
        q.try_set_size(QSIZE.min(max))
            .expect("a power of two below the maximum");
        q.try_set_desc_table_address(GuestAddress(desc))
            .expect("aligned");
        q.try_set_avail_ring_address(GuestAddress(avail))
            .expect("aligned");
        q.try_set_used_ring_address(GuestAddress(used))
            .expect("aligned");
        q.set_event_idx(event_idx);
        q.set_ready(true);
        let notify = EventFd::new(EFD_NONBLOCK).expect("an eventfd");
        kicks.push(notify.try_clone().expect("a second eventfd handle"));
        active.push(ActiveQueue {
            index: i as u16,
            queue: q,
            notify: Arc::new(notify),
        });
    }
    (active, kicks)
}

/// An interrupt line that counts.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    /// Interrupts raised.
    pub triggers: AtomicUsize,
    /// NEEDS_RESET requests.
    pub resets: AtomicUsize,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        self.triggers.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn needs_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the event loop until it is idle, or for 64 rounds (a backend that is always ready
/// keeps a device polling; a device that loops forever is a hang libFuzzer reports).
pub fn run<S: MutEventSubscriber>(em: &mut EventManager<S>) {
    for _ in 0..64 {
        match em.run_with_timeout(0) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Guest memory as it was, and where the device may write.
#[derive(Debug)]
pub struct WriteCheck {
    before: Vec<u8>,
    fixed: Vec<(u64, u64)>,
    queues: usize,
}

/// A copy of guest memory, in a buffer from [`SPARE`] (give it back with [`give_back`]).
fn snapshot(mem: &GuestMemory) -> Vec<u8> {
    let mut v = SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; MEM_SIZE]);
    mem.read_slice(&mut v, GuestAddress(0))
        .expect("the guest is MEM_SIZE bytes");
    v
}

/// Returns a [`snapshot`] buffer for reuse.
fn give_back(v: Vec<u8>) {
    SPARE.with(|s| s.borrow_mut().push(v));
}

fn desc_at(bytes: &[u8], at: u64) -> Option<(u64, u64, u16)> {
    let at = usize::try_from(at).ok()?;
    let d = bytes.get(at..at.checked_add(16)?)?;
    let addr = u64::from_le_bytes(d[0..8].try_into().ok()?);
    let len = u64::from(u32::from_le_bytes(d[8..12].try_into().ok()?));
    let flags = u16::from_le_bytes([d[12], d[13]]);
    Some((addr, len, flags))
}

/// Every buffer a device-writable descriptor of the rings' tables names in memory state
/// `bytes` (with `indirect`, of the indirect tables they point to instead): together a
/// superset of what any chain can name.
fn writable(bytes: &[u8], queues: usize, indirect: bool, out: &mut Vec<(u64, u64)>) {
    let mut push = |addr: u64, len: u64, flags: u16| {
        if flags & DESC_F_WRITE != 0 {
            out.push((addr, addr.saturating_add(len)));
        }
    };
    for q in 0..queues {
        let table = rings(q).0;
        for i in 0..u64::from(QSIZE) {
            let Some((addr, len, flags)) = desc_at(bytes, table + 16 * i) else {
                continue;
            };
            if !indirect {
                push(addr, len, flags);
            } else if flags & DESC_F_INDIRECT != 0 {
                for j in 0..(len / 16).min(MEM_SIZE as u64 / 16) {
                    if let Some((a, l, f)) = desc_at(bytes, addr.saturating_add(16 * j)) {
                        push(a, l, f);
                    }
                }
            }
        }
    }
}

/// The first byte that differs between `a` and `b` outside `allowed` (`[start, end)` ranges).
fn outside(a: &[u8], b: &[u8], allowed: &mut [(u64, u64)]) -> Option<usize> {
    allowed.sort_unstable();
    let mut pos = 0usize;
    let mut gaps = Vec::new();
    for &(start, end) in allowed.iter() {
        let start = usize::try_from(start).unwrap_or(MEM_SIZE).min(MEM_SIZE);
        if start > pos {
            gaps.push(pos..start);
        }
        pos = pos.max(usize::try_from(end).unwrap_or(MEM_SIZE).min(MEM_SIZE));
    }
    gaps.push(pos..MEM_SIZE);
    // Whole-slice comparisons (one memcmp each): the fuzzer instruments every comparison of a
    // byte loop, which made this check most of a run's time.
    gaps.into_iter()
        .find(|g| a[g.clone()] != b[g.clone()])
        .map(|g| g.clone().find(|&i| a[i] != b[i]).unwrap_or(g.start))
}

impl WriteCheck {
    /// Guest memory now; the device may write the used rings of `queues` queues and the
    /// buffers of device-writable descriptors (as they are now or after the run).
    pub fn rings(mem: &GuestMemory, queues: usize) -> Self {
        let fixed = (0..queues)
            .map(|q| (rings(q).2, rings(q).2 + USED_LEN))
            .collect();
        WriteCheck {
            before: snapshot(mem),
            fixed,
            queues,
        }
    }

    /// Guest memory now; the device may write only `ranges` (`[start, end)`).
    pub fn with_ranges(mem: &GuestMemory, ranges: Vec<(u64, u64)>) -> Self {
        WriteCheck {
            before: snapshot(mem),
            fixed: ranges,
            queues: 0,
        }
    }

    /// Whether guest memory is as it was.
    pub fn unchanged(&self, mem: &GuestMemory) -> bool {
        let now = snapshot(mem);
        let same = now == self.before;
        give_back(now);
        same
    }

    /// Panics at the first changed byte outside the allowed ranges. Indirect tables are only
    /// read when a byte outside the rest changed (they can be long; most runs need not).
    pub fn check(&self, mem: &GuestMemory) {
        let after = snapshot(mem);
        if after == self.before {
            give_back(after);
            return;
        }
        let mut allowed = self.fixed.clone();
        writable(&self.before, self.queues, false, &mut allowed);
        writable(&after, self.queues, false, &mut allowed);
        if outside(&self.before, &after, &mut allowed).is_none() {
            give_back(after);
            return;
        }
        writable(&self.before, self.queues, true, &mut allowed);
        writable(&after, self.queues, true, &mut allowed);
        if let Some(at) = outside(&self.before, &after, &mut allowed) {
            panic!("the device wrote guest byte {at:#x}, which no device-writable buffer names");
        }
        give_back(after);
    }
}

impl Drop for WriteCheck {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.before));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_input_round_trip() {
        let mem = [1u8, 2, 3];
        let i = Input {
            features: 0x1234,
            option: 5,
            script: &[0, 0x80],
            memory: &mem,
            host: b"host",
        };
        let bytes = i.encode();
        let j = Input::parse(&bytes).unwrap();
        assert_eq!(
            (j.features, j.option, j.script, j.memory, j.host),
            (0x1234, 5, &[0u8, 0x80][..], &mem[..], &b"host"[..])
        );
    }

    #[test]
    fn test_guest_memory_is_cleared_and_never_shared_by_live_guests() {
        let a = guest_memory(&[1, 2, 3]);
        let b = guest_memory(&[9]);
        b.write_slice(&[7; 4], GuestAddress(0x8000)).unwrap();
        let mut got = [0u8; 4];
        a.read_slice(&mut got, GuestAddress(0)).unwrap();
        assert_eq!(got, [1, 2, 3, 0], "a second live guest has its own memory");
        a.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        assert_eq!(got, [0; 4]);
        drop((a, b));
        let c = guest_memory(&[5]);
        c.write_slice(&[6; 4], GuestAddress(0x100)).unwrap();
        drop(c);
        // The reused mapping holds only the new image.
        let d = guest_memory(&[4]);
        let mut all = vec![0u8; MEM_SIZE];
        d.read_slice(&mut all, GuestAddress(0)).unwrap();
        assert_eq!(all[0], 4);
        assert!(all[1..].iter().all(|&x| x == 0), "the rest is zero");
    }

    #[test]
    fn test_write_check_catches_a_write_outside_writable_buffers() {
        let mem = guest_memory(&[]);
        // Queue 0, descriptor 0: a 16-byte device-writable buffer at 0x3000.
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&0x3000u64.to_le_bytes());
        d[8..12].copy_from_slice(&16u32.to_le_bytes());
        d[12..14].copy_from_slice(&DESC_F_WRITE.to_le_bytes());
        mem.write_slice(&d, GuestAddress(0)).unwrap();
        let check = WriteCheck::rings(&mem, 1);
        mem.write_slice(&[1; 16], GuestAddress(0x3000)).unwrap();
        mem.write_slice(&[1; 4], GuestAddress(0x200)).unwrap();
        check.check(&mem);
        mem.write_slice(&[1], GuestAddress(0x3010)).unwrap();
        let caught = std::panic::catch_unwind(|| check.check(&mem));
        assert!(caught.is_err(), "a byte past the buffer is reported");
    }

    #[test]
    fn test_write_check_allows_buffers_of_indirect_tables() {
        let mem = guest_memory(&[]);
        let desc = |addr: u64, len: u32, flags: u16| {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d
        };
        // Queue 0, descriptor 3: an indirect table at 0x4000 whose second entry is writable.
        mem.write_slice(&desc(0x4000, 32, DESC_F_INDIRECT), GuestAddress(48))
            .unwrap();
        mem.write_slice(&desc(0x5000, 8, DESC_F_WRITE), GuestAddress(0x4010))
            .unwrap();
        let check = WriteCheck::rings(&mem, 1);
        mem.write_slice(&[7; 8], GuestAddress(0x5000)).unwrap();
        check.check(&mem);
        mem.write_slice(&[7], GuestAddress(0x4fff)).unwrap();
        assert!(std::panic::catch_unwind(|| check.check(&mem)).is_err());
    }
}
