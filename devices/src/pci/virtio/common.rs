//! The common configuration structure (virtio 1.2, 4.1.4.3) as a state machine.
//!
//! Layout (little-endian):
//!
//! ```text
//! 0x00 device_feature_select u32 RW   0x16 queue_select      u16 RW
//! 0x04 device_feature        u32 RO   0x18 queue_size        u16 RW
//! 0x08 driver_feature_select u32 RW   0x1a queue_msix_vector u16 RW
//! 0x0c driver_feature        u32 RW   0x1c queue_enable      u16 RW
//! 0x10 config_msix_vector    u16 RW   0x1e queue_notify_off  u16 RO
//! 0x12 num_queues            u16 RO   0x20 queue_desc        u64 RW
//! 0x14 device_status         u8  RW   0x28 queue_driver      u64 RW
//! 0x15 config_generation     u8  RO   0x30 queue_device      u64 RW
//!                                      0x38 queue_notify_data u16 RO, 0x3a queue_reset u16 RO
//! ```
//!
//! Fields are accessed at their natural width; 64-bit fields also as two 32-bit halves. Any other
//! access reads zero and writes nothing. Rules kept here: feature writes stop at FEATURES_OK,
//! which is only granted for a subset of the offered features that includes VERSION_1; queue
//! registers freeze once a queue is enabled or DRIVER_OK is set; status bits can only be added
//! (writing 0 resets); DRIVER_OK needs FEATURES_OK.

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::interrupt::{InterruptState, NO_VECTOR};
use crate::virtio::{status, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1};

/// Feature bit: the driver uses the used/available event index fields.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Size of the common configuration structure.
pub const COMMON_CFG_LEN: u64 = 0x3c;

/// A queue the driver set up so that it cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueSetupError {
    /// virtio-queue refused a register value (size, ring address).
    #[error("queue {queue}: bad {what}")]
    Register {
        /// The queue index.
        queue: usize,
        /// The register.
        what: &'static str,
        /// virtio-queue's reason.
        #[source]
        source: virtio_queue::Error,
    },
    /// The rings do not lie in guest memory.
    #[error("queue {0}: rings outside guest memory")]
    RingsOutsideMemory(usize),
}

/// What the transport must do after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The driver wrote 0 to device_status: reset the device.
    Reset,
    /// The driver set DRIVER_OK: activate the device.
    Activate,
}

/// Driver-programmed registers of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRegs {
    /// Largest size the device supports.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// queue_enable was written with 1.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available) ring address.
    pub driver: u64,
    /// Device (used) ring address.
    pub device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// Common configuration state of one device.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueRegs>,
}

fn set_half(v: &mut u64, high: bool, half: u32) {
    *v = if high {
        (*v & 0xffff_ffff) | u64::from(half) << 32
    } else {
        (*v & !0xffff_ffff) | u64::from(half)
    };
}

impl CommonConfig {
    /// Power-on state for queues of the given maximum sizes.
    pub fn new(queue_max_sizes: &[u16]) -> Self {
        Self {
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues: queue_max_sizes.iter().map(|&m| QueueRegs::new(m)).collect(),
        }
    }

    /// Back to the power-on state.
    pub fn reset(&mut self) {
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = Self::new(&sizes);
    }

    /// The device status as stored (without NEEDS_RESET raised by the device).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The features the driver wrote.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The registers of each queue.
    pub fn queues(&self) -> &[QueueRegs] {
        &self.queues
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    // The queue the driver may still program.
    fn selected_mut(&mut self) -> Option<&mut QueueRegs> {
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues
            .get_mut(usize::from(self.queue_select))
            .filter(|q| !q.enabled)
    }

    /// Reads a register.
    pub fn read(
        &self,
        offset: u64,
        data: &mut [u8],
        device: &dyn VirtioDevice,
        irq: &InterruptState,
    ) {
        let v = self.read_value(offset, data.len(), device, irq);
        let bytes = v.to_le_bytes();
        match bytes.get(..data.len()) {
            Some(b) => data.copy_from_slice(b),
            None => data.fill(0),
        }
    }

    fn read_value(
        &self,
        offset: u64,
        len: usize,
        device: &dyn VirtioDevice,
        irq: &InterruptState,
    ) -> u64 {
        let q = self.selected();
        let addr = |offset: u64| {
            q.map_or(0, |q| match offset & !7 {
                0x20 => q.desc,
                0x28 => q.driver,
                _ => q.device,
            })
        };
        match (offset, len) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => device.features() & 0xffff_ffff,
                1 => device.features() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(irq.config_vector()),
            // new() checks the queue count fits.
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => {
                let nr = if irq.needs_reset_set() {
                    status::NEEDS_RESET
                } else {
                    0
                };
                u64::from(self.status | nr)
            }
            (0x15, 1) => u64::from(irq.generation()),
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => u64::from(q.map_or(0, |q| q.size)),
            (0x1a, 2) => u64::from(match q {
                Some(_) => irq.queue_vector(self.queue_select),
                None => NO_VECTOR,
            }),
            (0x1c, 2) => u64::from(q.is_some_and(|q| q.enabled)),
            (0x1e, 2) => q.map_or(0, |_| u64::from(self.queue_select)),
            (0x20 | 0x28 | 0x30, 8) => addr(offset),
            (0x20..=0x37, 4) if offset & 3 == 0 => {
                let full = addr(offset);
                if offset % 8 == 4 {
                    full >> 32
                } else {
                    full & 0xffff_ffff
                }
            }
            _ => {
                debug!("virtio-pci: bad common cfg read of {len} at {offset:#x}");
                0
            }
        }
    }

    /// Writes a register; returns what the transport must do next.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        device: &mut dyn VirtioDevice,
        irq: &InterruptState,
    ) -> Option<Action> {
        let mut b = [0u8; 8];
        let Some(dst) = b.get_mut(..data.len()) else {
            debug!("virtio-pci: common cfg write of {} bytes", data.len());
            return None;
        };
        dst.copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let features_done = self.status & status::FEATURES_OK != 0;
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) if !features_done => match self.driver_feature_select {
                0 => set_half(&mut self.driver_features, false, v as u32),
                1 => set_half(&mut self.driver_features, true, v as u32),
                _ => debug!("virtio-pci: driver feature select out of range"),
            },
            (0x10, 2) => irq.set_config_vector(v as u16),
            (0x14, 1) => return self.write_status(v as u8, device),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18, 2) => {
                if let Some(q) = self.selected_mut() {
                    q.size = v as u16;
                }
            }
            (0x1a, 2) => {
                if self.selected().is_some() {
                    irq.set_queue_vector(self.queue_select, v as u16);
                }
            }
            (0x1c, 2) => {
                if let Some(q) = self.selected_mut() {
                    if v == 1 {
                        q.enabled = true;
                    }
                }
            }
            (0x20..=0x37, 4 | 8) if offset & (data.len() as u64 - 1) == 0 => {
                if let Some(q) = self.selected_mut() {
                    let field = match offset & !7 {
                        0x20 => &mut q.desc,
                        0x28 => &mut q.driver,
                        _ => &mut q.device,
                    };
                    if data.len() == 8 {
                        *field = v;
                    } else {
                        set_half(field, offset % 8 == 4, v as u32);
                    }
                }
            }
            _ => debug!(
                "virtio-pci: ignoring common cfg write of {} at {offset:#x}",
                data.len()
            ),
        }
        None
    }

    fn write_status(&mut self, new: u8, device: &mut dyn VirtioDevice) -> Option<Action> {
        if new == 0 {
            return Some(Action::Reset);
        }
        let old = self.status;
        if new & old != old {
            warn!("virtio-pci: driver tried to clear status bits ({old:#x} -> {new:#x})");
            return None;
        }
        let mut new = new;
        let added = new & !old;
        if added & status::FEATURES_OK != 0 {
            let offered = device.features();
            let wanted = self.driver_features;
            if wanted & !offered != 0 || wanted & (1 << VIRTIO_F_VERSION_1) == 0 {
                warn!("virtio-pci: refusing features {wanted:#x} (offered {offered:#x})");
                new &= !status::FEATURES_OK;
            } else {
                device.ack_features(wanted);
            }
        }
        let mut action = None;
        if added & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                warn!("virtio-pci: DRIVER_OK without FEATURES_OK");
                new &= !status::DRIVER_OK;
            } else {
                action = Some(Action::Activate);
            }
        }
        self.status = new;
        action
    }

    /// Builds the enabled queues for activation, checked against guest memory.
    pub fn build_queues(&self, mem: &GuestMemory) -> Result<Vec<(u16, Queue)>, QueueSetupError> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut out = Vec::new();
        for (i, r) in self.queues.iter().enumerate() {
            if !r.enabled {
                continue;
            }
            let bad = |what: &'static str| {
                move |source| QueueSetupError::Register {
                    queue: i,
                    what,
                    source,
                }
            };
            let mut q = Queue::new(r.max_size).map_err(bad("maximum size"))?;
            q.try_set_size(r.size).map_err(bad("size"))?;
            q.try_set_desc_table_address(GuestAddress(r.desc))
                .map_err(bad("descriptor table address"))?;
            q.try_set_avail_ring_address(GuestAddress(r.driver))
                .map_err(bad("driver ring address"))?;
            q.try_set_used_ring_address(GuestAddress(r.device))
                .map_err(bad("device ring address"))?;
            q.set_ready(true);
            q.set_event_idx(event_idx);
            if !q.is_valid(mem) {
                return Err(QueueSetupError::RingsOutsideMemory(i));
            }
            // The queue count is bounded by new().
            out.push((i as u16, q));
        }
        Ok(out)
    }
}
