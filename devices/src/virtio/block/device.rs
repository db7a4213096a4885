//! The virtio-blk device: features, configuration space, the image, activation and reset.

use std::sync::Arc;

use log::{info, warn};
use ubd::{Disk, UbdSpec};
use virtio_queue::QueueT;

use super::execute::ExecOptions;
use super::request::{
    DiskInfo, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG, SECTOR_SHIFT,
};
use crate::virtio::{
    types, ActivateError, ActiveQueue, GuestMemory, Rings, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use crate::warn::WarnBudget;
use crate::watch::Watch;

/// Feature bit: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature bit: the device takes FLUSH requests.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature bit: the device takes DISCARD requests.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature bit: the device takes WRITE_ZEROES requests.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
/// Feature bit (ring): indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit (ring): `used_event` / `avail_event` interrupt suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// The size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments in one request (`seg_max`): the queue minus the header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Requests served per queue event before the event loop gets to run other sources (a guest
/// that keeps the queue full must not starve the consoles or mconsole).
pub const BATCH_LIMIT: usize = 4 * QUEUE_SIZE as usize;
/// The block size the guest is told (`blk_size`).
pub const BLK_SIZE: u32 = 512;
/// Discard granularity in sectors (`discard_sector_alignment`): 4 KiB, a file system block.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// Configuration space layout (virtio 1.2, 5.2.4), up to `write_zeroes_may_unmap`.
pub(super) const CONFIG_LEN: usize = 60;
const CFG_CAPACITY: usize = 0;
const CFG_SEG_MAX: usize = 12;
const CFG_BLK_SIZE: usize = 20;
const CFG_NUM_QUEUES: usize = 34;
const CFG_MAX_DISCARD_SECTORS: usize = 36;
const CFG_MAX_DISCARD_SEG: usize = 40;
const CFG_DISCARD_SECTOR_ALIGNMENT: usize = 44;
const CFG_MAX_WRITE_ZEROES_SECTORS: usize = 48;
const CFG_MAX_WRITE_ZEROES_SEG: usize = 52;
const CFG_WRITE_ZEROES_MAY_UNMAP: usize = 56;

/// Why a block device cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The device's wake-up eventfd could not be created.
    #[error("cannot create the block device's eventfd")]
    EventFd(#[source] std::io::Error),
}

/// How the device presents its image (from the `ubdN...=` option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The ID string (GET_ID): at most 20 bytes are shown, NUL-padded.
    pub serial: String,
    /// Refuse writes even if the image is writable (`r`).
    pub read_only: bool,
    /// Flush after every write (`s`, or `ubd=sync`).
    pub sync: bool,
    /// Offer DISCARD and WRITE_ZEROES (not with `t`).
    pub trim: bool,
}

impl BlockConfig {
    /// The configuration of `ubd<unit>`: serial `spec.serial` or `ubd<unit>`.
    /// `global_sync` is `ubd=sync`.
    pub fn from_spec(spec: &UbdSpec, global_sync: bool) -> Self {
        BlockConfig {
            serial: spec
                .serial
                .clone()
                .unwrap_or_else(|| format!("ubd{}", spec.unit)),
            read_only: spec.read_only,
            sync: spec.sync || global_sync,
            trim: !spec.no_trim,
        }
    }
}

/// What exists once the driver set DRIVER_OK: the request queue.
pub(super) type Active = Rings<ActiveQueue>;

/// A virtio-blk device over a ubd image (raw or COW).
///
/// One request queue of [`QUEUE_SIZE`], served synchronously on the event-loop thread: each
/// notification drains the queue, doing the disk I/O in place, and interrupts the guest once.
/// The device owns the image; [`Block::release_disk`] gives it back (and with it the host file
/// locks) when the disk is hot-unplugged.
///
/// Share it as `Arc<Mutex<Block>>` between the transport (as a [`VirtioDevice`]) and the event
/// loop (as an event-manager `MutEventSubscriber`).
pub struct Block {
    pub(super) disk: Option<Box<dyn Disk>>,
    pub(super) capacity: u64,
    pub(super) read_only: bool,
    pub(super) trim: bool,
    pub(super) sync: bool,
    pub(super) id: [u8; ID_BYTES],
    pub(super) acked_features: u64,
    pub(super) queue_sizes: [u16; 1],
    /// What the event loop watches; woken on activation and reset.
    pub(super) watch: Watch,
    pub(super) active: Option<Active>,
    /// Bounce buffer between the disk and guest memory.
    pub(super) scratch: Vec<u8>,
    /// Warnings left for failed requests until the next activation.
    pub(super) warn_budget: WarnBudget,
    /// Requests served per event before the event loop gets to run other sources.
    pub(super) batch_limit: usize,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("trim", &self.trim)
            .field("sync", &self.sync)
            .field("id", &String::from_utf8_lossy(&self.id))
            .field("has_disk", &self.disk.is_some())
            .field("active", &self.active)
            .finish()
    }
}

impl Block {
    /// A device over `disk`. The capacity is the disk length in whole 512-byte sectors; the
    /// device is read-only if the disk or `config` says so.
    pub fn new(disk: Box<dyn Disk>, config: &BlockConfig) -> Result<Self, BlockError> {
        let mut id = [0u8; ID_BYTES];
        let serial = config.serial.as_bytes();
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial[..n]);
        let read_only = config.read_only || disk.is_read_only();
        let capacity = disk.len() >> SECTOR_SHIFT;
        info!(
            "block: {} sectors{}, serial '{}'",
            capacity,
            if read_only { ", read-only" } else { "" },
            String::from_utf8_lossy(&id[..n])
        );
        Ok(Block {
            disk: Some(disk),
            capacity,
            read_only,
            trim: config.trim && !read_only,
            sync: config.sync,
            id,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            watch: Watch::new("block").map_err(BlockError::EventFd)?,
            active: None,
            scratch: Vec::new(),
            warn_budget: WarnBudget::new("block: failed requests"),
            batch_limit: BATCH_LIMIT,
        })
    }

    /// The device for `ubd<unit>`: `image` opened from `spec` (see `ubd::open_spec`).
    pub fn from_image(
        image: ubd::Image,
        spec: &UbdSpec,
        global_sync: bool,
    ) -> Result<Self, BlockError> {
        Self::new(Box::new(image), &BlockConfig::from_spec(spec, global_sync))
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the guest sees a read-only disk.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The ID string as GET_ID returns it (20 bytes, NUL-padded).
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Flushes the image and gives it back, for hot-unplug: dropping it closes the files and
    /// releases their locks. Later requests fail with IOERR. `None` if already released.
    pub fn release_disk(&mut self) -> Option<Box<dyn Disk>> {
        let mut disk = self.disk.take()?;
        if !self.read_only {
            if let Err(e) = disk.flush() {
                warn!(
                    "block: flush before release failed: {}",
                    super::execute::error_chain(&e)
                );
            }
        }
        Some(disk)
    }

    pub(super) fn info(&self) -> DiskInfo {
        DiskInfo {
            capacity: self.capacity,
            read_only: self.read_only,
            discard: self.trim,
            write_zeroes: self.trim,
        }
    }

    pub(super) fn exec_options(&self) -> ExecOptions {
        ExecOptions {
            write_through: self.sync || self.acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0,
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put32 = |at: usize, v: u32| c[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(CFG_SEG_MAX, SEG_MAX);
        put32(CFG_BLK_SIZE, BLK_SIZE);
        if self.trim {
            put32(CFG_MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS);
            put32(CFG_MAX_DISCARD_SEG, MAX_DISCARD_SEG);
            put32(CFG_DISCARD_SECTOR_ALIGNMENT, DISCARD_SECTOR_ALIGNMENT);
            put32(CFG_MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SECTORS);
            put32(CFG_MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SEG);
            c[CFG_WRITE_ZEROES_MAY_UNMAP] = 1;
        }
        c[CFG_CAPACITY..CFG_CAPACITY + 8].copy_from_slice(&self.capacity.to_le_bytes());
        c[CFG_NUM_QUEUES..CFG_NUM_QUEUES + 2].copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        types::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.trim {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable (`writeback` needs VIRTIO_BLK_F_CONFIG_WCE, not offered).
        log::debug!(
            "block: ignoring a {}-byte config write at {offset}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut queue = None;
        for q in queues {
            if q.index == 0 && queue.is_none() {
                queue = Some(q);
            } else {
                warn!("block: ignoring queue {}", q.index);
            }
        }
        let Some(queue) = queue else {
            return Err(ActivateError::MissingQueues { got: 0, need: 1 });
        };
        let broken = !queue.queue.is_valid(&mem);
        if broken {
            warn!("block: the request queue is not valid in guest memory");
        }
        self.warn_budget.refill();
        // A previous activation's queue is dropped: its eventfd stays open until the event
        // loop, woken now, has stopped watching it.
        let mut active = Rings::new("block", mem, interrupt, queue, broken);
        active.signal_reset();
        self.active = Some(active);
        self.watch.wake();
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.watch.wake();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ubd::MemDisk;

    fn dev(len: usize, cfg: &BlockConfig) -> Block {
        Block::new(Box::new(MemDisk::new(vec![0; len])), cfg).unwrap()
    }

    fn cfg() -> BlockConfig {
        BlockConfig::from_spec(
            &UbdSpec {
                unit: 3,
                ..UbdSpec::default()
            },
            false,
        )
    }

    fn read32(b: &Block, at: u64) -> u32 {
        let mut v = [0u8; 4];
        b.read_config(at, &mut v);
        u32::from_le_bytes(v)
    }

    #[test]
    fn test_config_space() {
        let b = dev(1 << 20, &cfg());
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 2048);
        assert_eq!(read32(&b, CFG_SEG_MAX as u64), SEG_MAX);
        assert_eq!(read32(&b, CFG_BLK_SIZE as u64), 512);
        assert_eq!(
            read32(&b, CFG_MAX_DISCARD_SECTORS as u64),
            MAX_DISCARD_SECTORS
        );
        assert_eq!(
            read32(&b, CFG_MAX_WRITE_ZEROES_SEG as u64),
            MAX_WRITE_ZEROES_SEG
        );
        // Past the end and huge offsets read zeros.
        assert_eq!(read32(&b, 58), 0);
        assert_eq!(read32(&b, u64::MAX - 1), 0);
        assert_eq!(&b.id()[..5], b"ubd3\0");
        let f = b.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
    }

    #[test]
    fn test_read_only_and_no_trim() {
        let mut c = cfg();
        c.read_only = true;
        let b = dev(4096, &c);
        let f = b.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        let mut c = cfg();
        c.trim = false;
        let b = dev(4096, &c);
        assert_eq!(b.features() & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_eq!(read32(&b, CFG_MAX_DISCARD_SECTORS as u64), 0);
        // A read-only image makes a read-only device.
        let mut m = MemDisk::new(vec![0; 4096]);
        m.read_only = true;
        let b = Block::new(Box::new(m), &cfg()).unwrap();
        assert!(b.is_read_only());
    }

    #[test]
    fn test_serial_is_truncated_and_from_spec() {
        let spec = UbdSpec {
            unit: 1,
            serial: Some("a-very-long-serial-number-indeed".into()),
            no_trim: true,
            sync: true,
            ..UbdSpec::default()
        };
        let c = BlockConfig::from_spec(&spec, false);
        assert!(!c.trim && c.sync);
        let b = dev(512, &c);
        assert_eq!(b.id(), b"a-very-long-serial-n");
    }

    #[test]
    fn test_release_disk_flushes_once() {
        let mut b = dev(512, &cfg());
        assert!(b.release_disk().is_some());
        assert!(b.release_disk().is_none());
    }
}
