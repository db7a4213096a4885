//! The virtio-pci transport, modern interface only (virtio 1.2, 4.1), with MSI-X.
//!
//! PCI identity: vendor 0x1af4, device 0x1040 + device type, revision 1, no INTx (pin 0).
//! Everything lives in one 64-bit, non-prefetchable memory BAR (BAR 0) of [`BAR_SIZE`] bytes:
//!
//! ```text
//! 0x0000 +0x1000  common configuration    (VIRTIO_PCI_CAP_COMMON_CFG)
//! 0x1000 +0x1000  ISR status, 1 byte used (VIRTIO_PCI_CAP_ISR_CFG)
//! 0x2000 +0x1000  device configuration    (VIRTIO_PCI_CAP_DEVICE_CFG)
//! 0x3000 +0x1000  notifications: queue n at 0x3000 + 4 * n (notify_off_multiplier 4)
//! 0x4000 +0x2000  MSI-X table (up to 512 vectors: one per queue plus one for config changes)
//! 0x6000 +0x2000  MSI-X PBA
//! ```
//!
//! Capabilities, in list order: common, ISR, device and notify configuration (all in BAR 0),
//! VIRTIO_PCI_CAP_PCI_CFG (a configuration-space window onto BAR 0), then MSI-X.
//!
//! Queue notifications are meant to hit KVM ioeventfds ([`VirtioPciDevice::ioeventfds`]);
//! a notify write that reaches the transport anyway signals the same eventfd.

mod common;
mod interrupt;

use std::io;
use std::sync::{Arc, Mutex};

use log::{debug, error, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use self::common::{Action, CommonConfig, QueueRegs, QueueSetupError, COMMON_CFG_LEN};
pub use self::interrupt::{InterruptState, NO_VECTOR};
use super::config::{BarKind, BarMove, ConfigError, PciConfig, PciIdentity};
use super::msix::{self, MsiRouting, Msix, MsixError, MSIX_CAP_CONTROL};
use super::PciDevice;
use crate::bus::BusDevice;
use crate::virtio::{types, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Device ID of modern virtio device type 0.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Index of the transport's BAR.
pub const BAR_INDEX: usize = 0;
/// Size of the transport's BAR; its address must be aligned to it.
pub const BAR_SIZE: u64 = 0x8000;
/// Offset of the common configuration in the BAR.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR in the BAR.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration in the BAR.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Offset of the notification area in the BAR.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table in the BAR.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X PBA in the BAR.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// Size of each region but the MSI-X table and PBA.
const REGION_SIZE: u64 = 0x1000;
/// Size of the MSI-X table and PBA regions.
const MSIX_REGION_SIZE: u64 = 0x2000;
/// The most queues a device may have (one MSI-X vector each plus one for config changes).
pub const MAX_QUEUES: usize = (MSIX_REGION_SIZE / msix::MSIX_ENTRY_SIZE) as usize - 1;

const CAP_VENDOR: u8 = 0x09;
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// Size of the VIRTIO_PCI_CAP_PCI_CFG capability: a virtio_pci_cap and a 4-byte data window.
const PCI_CFG_CAP_LEN: usize = 20;

/// Errors from creating a virtio-pci function.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device has no queues or more than [`MAX_QUEUES`].
    #[error("a virtio-pci device needs 1 to {MAX_QUEUES} queues, not {0}")]
    QueueCount(usize),
    /// A queue's maximum size is not a power of two up to 32768.
    #[error("invalid maximum size {size} for queue {index}")]
    QueueSize {
        /// Queue index.
        index: usize,
        /// Maximum size the device gave.
        size: u16,
    },
    /// The device type does not fit the modern device ID range.
    #[error("device type {0} has no virtio-pci device ID")]
    DeviceType(u32),
    /// The configuration space could not be built (e.g. a misaligned BAR address).
    #[error("cannot build the PCI configuration space")]
    Config(#[source] ConfigError),
    /// The MSI-X table could not be built.
    #[error("cannot set up MSI-X")]
    Msix(#[source] MsixError),
    /// A notification eventfd could not be created.
    #[error("cannot create a queue notification eventfd")]
    EventFd(#[source] io::Error),
}

fn class_code(device_type: u32) -> u32 {
    match device_type {
        types::NET => 0x02_00_00,
        types::BLOCK => 0x01_80_00,
        types::CONSOLE => 0x07_80_00,
        // Mass storage, other (as QEMU's vhost-user-fs-pci).
        types::FS => 0x01_80_00,
        _ => 0xff_00_00,
    }
}

fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let len = if extra.is_some() { 20 } else { 16 };
    let mut c = vec![CAP_VENDOR, 0, len, cfg_type, BAR_INDEX as u8, 0, 0, 0];
    // The offsets and lengths are the constants above, far below 4 GiB.
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        c.extend_from_slice(&x.to_le_bytes());
    }
    c
}

/// The number of MSI-X vectors a virtio-pci function gives `device`: one per queue plus one.
pub fn msix_vectors(device: &dyn VirtioDevice) -> u16 {
    // Clamped: new() refuses more than MAX_QUEUES queues anyway.
    (device.queue_max_sizes().len().min(MAX_QUEUES) + 1) as u16
}

/// A virtio device on PCI: its configuration space and its BAR.
pub struct VirtioPciDevice {
    config: PciConfig,
    msix_cap: usize,
    pci_cfg_cap: usize,
    common: CommonConfig,
    device: Arc<Mutex<dyn VirtioDevice>>,
    irq: Arc<InterruptState>,
    mem: GuestMemory,
    notify: Vec<EventFd>,
    activated: bool,
    /// Written each time the device is activated (the VMM answers a hot-plug then).
    on_activation: Option<EventFd>,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("config", &self.config)
            .field("common", &self.common)
            .field("activated", &self.activated)
            .finish()
    }
}

impl VirtioPciDevice {
    /// Wraps `device` in a virtio-pci function whose BAR is mapped at `bar_addr` (aligned to
    /// [`BAR_SIZE`]). `routing` must serve [`msix_vectors`] vectors.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemory,
        routing: Arc<dyn MsiRouting>,
        bar_addr: u64,
    ) -> Result<Self, VirtioPciError> {
        let (dtype, sizes) = {
            let d = crate::locked(&device);
            (d.device_type(), d.queue_max_sizes().to_vec())
        };
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(sizes.len()));
        }
        if let Some((index, &size)) = sizes
            .iter()
            .enumerate()
            .find(|(_, &s)| s == 0 || s > 32768 || !s.is_power_of_two())
        {
            return Err(VirtioPciError::QueueSize { index, size });
        }
        let device_id = u16::try_from(dtype)
            .ok()
            .filter(|&t| t < 0x100)
            .map(|t| VIRTIO_PCI_DEVICE_ID_BASE + t)
            .ok_or(VirtioPciError::DeviceType(dtype))?;
        let mut config = PciConfig::new(PciIdentity {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision: 1,
            class_code: class_code(dtype),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: 0x1100,
        });
        config
            .add_bar(BAR_INDEX, BarKind::Mem64, BAR_SIZE, bar_addr, false)
            .map_err(VirtioPciError::Config)?;
        let vectors = (sizes.len() + 1) as u16;
        let caps = [
            virtio_cap(CAP_COMMON_CFG, COMMON_OFFSET, REGION_SIZE, None),
            virtio_cap(CAP_ISR_CFG, ISR_OFFSET, REGION_SIZE, None),
            virtio_cap(CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, REGION_SIZE, None),
            virtio_cap(
                CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                sizes.len() as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
                Some(NOTIFY_OFF_MULTIPLIER),
            ),
        ];
        for c in caps {
            config
                .add_capability(&c, &[])
                .map_err(VirtioPciError::Config)?;
        }
        // VIRTIO_PCI_CAP_PCI_CFG: the driver writes bar, offset and length, then accesses the
        // BAR through the data window.
        let pci_cfg = virtio_cap(CAP_PCI_CFG, 0, 0, Some(0));
        let mut pci_cfg_mask = [0u8; PCI_CFG_CAP_LEN];
        pci_cfg_mask[4] = 0xff;
        pci_cfg_mask[8..16].fill(0xff);
        let pci_cfg_cap = config
            .add_capability(&pci_cfg, &pci_cfg_mask)
            .map_err(VirtioPciError::Config)?;
        let (data, wmask) = msix::capability(
            vectors,
            BAR_INDEX as u8,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        );
        let msix_cap = config
            .add_capability(&data, &wmask)
            .map_err(VirtioPciError::Config)?;
        let table = Msix::new(vectors).map_err(VirtioPciError::Msix)?;
        let notify = (0..sizes.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioPciError::EventFd)?;
        Ok(Self {
            config,
            msix_cap,
            pci_cfg_cap,
            common: CommonConfig::new(&sizes),
            irq: Arc::new(InterruptState::new(sizes.len(), table, routing)),
            device,
            mem,
            notify,
            activated: false,
            on_activation: None,
        })
    }

    /// The virtio device behind the transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The interrupt object handed to the device at activation.
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.irq.clone()
    }

    /// Where the VMM has the BAR mapped (its initial address, then the last [`BarMove`]).
    pub fn bar_address(&self) -> u64 {
        self.config.bar_committed(BAR_INDEX).unwrap_or(0)
    }

    /// The notification address and eventfd of each queue when the BAR is at `bar_addr`: the VMM
    /// registers each with KVM_IOEVENTFD (no datamatch; the driver writes 2 bytes).
    pub fn ioeventfds(&self, bar_addr: u64) -> Vec<(u64, &EventFd)> {
        self.notify
            .iter()
            .enumerate()
            .map(|(i, fd)| {
                let off = NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
                (bar_addr.saturating_add(off), fd)
            })
            .collect()
    }

    /// Has `evt` written each time the device is activated, so that the VMM learns it without
    /// polling [`VirtioPciDevice::is_activated`].
    pub fn notify_activation(&mut self, evt: EventFd) {
        self.on_activation = Some(evt);
    }

    /// Whether the device is running (DRIVER_OK was accepted and activation succeeded).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device status the driver reads.
    pub fn device_status(&self) -> u8 {
        let nr = if self.irq.needs_reset_set() {
            crate::virtio::status::NEEDS_RESET
        } else {
            0
        };
        self.common.status() | nr
    }

    fn activate(&mut self) {
        if self.activated {
            // A reset the device refused: it is still running.
            warn!("virtio-pci: device was not reset, cannot activate it again");
            self.irq.set_needs_reset();
            return;
        }
        let queues = match self.common.build_queues(&self.mem) {
            Ok(q) => q,
            Err(e) => {
                warn!(
                    "virtio-pci: driver set up a bad queue: {}",
                    crate::error_chain(&e)
                );
                VirtioInterrupt::needs_reset(&*self.irq);
                return;
            }
        };
        let mut active = Vec::with_capacity(queues.len());
        for (index, queue) in queues {
            // build_queues only returns indices of existing queues.
            let Some(fd) = self.notify.get(usize::from(index)) else {
                continue;
            };
            match fd.try_clone() {
                Ok(notify) => active.push(ActiveQueue {
                    index,
                    queue,
                    notify: Arc::new(notify),
                }),
                Err(e) => {
                    error!("virtio-pci: cannot clone a notification eventfd: {e}");
                    VirtioInterrupt::needs_reset(&*self.irq);
                    return;
                }
            }
        }
        let irq: Arc<dyn VirtioInterrupt> = self.irq.clone();
        let r = crate::locked(&self.device).activate(self.mem.clone(), irq, active);
        match r {
            Ok(()) => {
                info!("virtio-pci: device activated");
                self.activated = true;
                if let Some(evt) = &self.on_activation {
                    if let Err(e) = evt.write(1) {
                        warn!("virtio-pci: cannot signal the activation: {e}");
                    }
                }
            }
            Err(e) => {
                warn!("virtio-pci: activation failed: {e}");
                VirtioInterrupt::needs_reset(&*self.irq);
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            if crate::locked(&self.device).reset() {
                self.activated = false;
            } else {
                error!("virtio-pci: the device cannot be reset");
            }
        }
        self.common.reset();
        self.irq.reset();
        debug!("virtio-pci: reset");
    }

    fn notify(&self, offset: u64, len: usize) {
        if offset & (u64::from(NOTIFY_OFF_MULTIPLIER) - 1) != 0 || !matches!(len, 2 | 4) {
            debug!("virtio-pci: bad notify write of {len} at {offset:#x}");
            return;
        }
        let q = offset / u64::from(NOTIFY_OFF_MULTIPLIER);
        match usize::try_from(q).ok().and_then(|q| self.notify.get(q)) {
            Some(fd) => {
                if let Err(e) = fd.write(1) {
                    warn!("virtio-pci: cannot signal queue {q}: {e}");
                }
            }
            None => debug!("virtio-pci: notify for missing queue {q}"),
        }
    }
}

impl VirtioPciDevice {
    // The BAR access the PCI_CFG capability selects, if `offset` is its data window and the
    // selection is valid: (BAR offset, length, offset inside the window).
    fn pci_cfg_window(&self, offset: usize, len: usize) -> Option<(u64, usize, usize)> {
        let window = self.pci_cfg_cap + 16;
        if offset < window || offset.saturating_add(len) > window + 4 {
            return None;
        }
        let bar = self.config.read_u16(self.pci_cfg_cap + 4) & 0xff;
        let off = u64::from(self.config.read_u32(self.pci_cfg_cap + 8));
        let length = self.config.read_u32(self.pci_cfg_cap + 12) as usize;
        let ok = usize::from(bar) == BAR_INDEX
            && matches!(length, 1 | 2 | 4)
            && off & (length as u64 - 1) == 0
            && off + length as u64 <= BAR_SIZE;
        if !ok {
            debug!("virtio-pci: bad PCI_CFG window bar={bar} offset={off:#x} length={length}");
        }
        ok.then_some((off, length, offset - window))
    }
}

impl PciDevice for VirtioPciDevice {
    fn bar_move_failed(&mut self, mv: BarMove) {
        self.config.set_bar_committed(mv.index, mv.old);
    }

    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
        if let Some((off, length, at)) = self.pci_cfg_window(offset, data.len()) {
            let mut buf = [0u8; 4];
            self.read(0, off, &mut buf[..length]);
            for (i, b) in data.iter_mut().enumerate() {
                *b = buf.get(at + i).copied().unwrap_or(0);
            }
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Option<BarMove> {
        if let Some((off, length, at)) = self.pci_cfg_window(offset, data.len()) {
            // The access is as wide as the capability's length; the data must cover it.
            if at == 0 && data.len() >= length {
                self.write(0, off, &data[..length]);
            }
            return None;
        }
        let mv = self.config.write(offset, data);
        let ctl = self.msix_cap + MSIX_CAP_CONTROL;
        if offset < ctl + 2 && offset.saturating_add(data.len()) > ctl {
            let control = self.config.read_u16(ctl);
            let irq = &self.irq;
            irq.msix().set_control(control, irq.routing());
        }
        mv
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() > 8 {
            data.fill(0);
            return;
        }
        match offset {
            o if o < ISR_OFFSET => {
                let d = crate::locked(&self.device);
                self.common.read(o, data, &*d, &self.irq);
            }
            o if o < DEVICE_CFG_OFFSET => {
                data.fill(0);
                if let (ISR_OFFSET, Some(b)) = (o, data.first_mut()) {
                    *b = self.irq.take_isr();
                }
            }
            o if o < NOTIFY_OFFSET => {
                crate::locked(&self.device).read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.irq.msix().read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if (MSIX_PBA_OFFSET..BAR_SIZE).contains(&o) => {
                self.irq.msix().read_pba(o - MSIX_PBA_OFFSET, data)
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.len() > 8 {
            return;
        }
        match offset {
            o if o < ISR_OFFSET => {
                let action = {
                    let mut d = crate::locked(&self.device);
                    self.common.write(o, data, &mut *d, &self.irq)
                };
                match action {
                    Some(Action::Reset) => self.reset(),
                    Some(Action::Activate) => self.activate(),
                    None => {}
                }
            }
            o if o < DEVICE_CFG_OFFSET => debug!("virtio-pci: ISR is read-only"),
            o if o < NOTIFY_OFFSET => {
                crate::locked(&self.device).write_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if o < MSIX_TABLE_OFFSET => self.notify(o - NOTIFY_OFFSET, data.len()),
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                let irq = &self.irq;
                irq.msix()
                    .write_table(o - MSIX_TABLE_OFFSET, data, irq.routing())
            }
            _ => debug!("virtio-pci: ignoring BAR write at {offset:#x}"),
        }
    }
}

#[cfg(test)]
mod tests;
