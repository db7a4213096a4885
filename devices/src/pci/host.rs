//! The PCI root: host bridge at 00:00.0, a slot table for bus 0, and configuration
//! mechanism #1 (address port 0xCF8, data ports 0xCFC-0xCFF) as one port-I/O [`BusDevice`].
//!
//! Address register (0xCF8, 32-bit accesses only): bit 31 enable, bits 23:16 bus, 15:11 device,
//! 10:8 function, 7:2 register. A data access at 0xCFC + n reaches register + n of the selected
//! function; it must not cross the dword. Anything that does not select a present function
//! (disabled address, bus other than 0, function other than 0, empty slot) reads all ones and
//! drops writes.

use std::sync::{Arc, Mutex};

use log::{debug, info, warn};

use super::config::{BarMove, PciConfig, PciIdentity};
use super::PciDevice;
use crate::bus::BusDevice;

/// First port of configuration mechanism #1.
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
/// Number of ports of configuration mechanism #1 (address and data).
pub const PCI_CONFIG_IO_LEN: u64 = 8;
/// Number of device slots on bus 0.
pub const NUM_SLOTS: usize = 32;

const ADDR_ENABLE: u32 = 1 << 31;

/// A PCI function shared between the root, the MMIO bus and the VMM.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Told when the guest moves a BAR. Called on a vCPU thread with the [`PciRoot`] locked (the
/// device itself is not locked) and the port-I/O bus held for dispatch: the implementation may
/// lock the device and take the MMIO bus's write lock, but must not lock the root or write-lock
/// the port-I/O bus.
pub trait BarHook: Send + Sync {
    /// The device in `slot` moved a BAR: move its bus range and ioeventfds. On error the BAR
    /// stays mapped at `mv.old` (the guest sees a dead BAR until it moves it back).
    fn bar_moved(&self, slot: u8, mv: BarMove) -> std::io::Result<()>;
}

/// Errors from the slot table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// Every slot from 1 to 31 is taken.
    #[error("no free PCI slot")]
    NoFreeSlot,
    /// The slot is taken.
    #[error("PCI slot {0} is already in use")]
    SlotInUse(u8),
    /// The slot is empty.
    #[error("PCI slot {0} is empty")]
    SlotEmpty(u8),
    /// Slot 0 belongs to the host bridge, and there are only 32 slots.
    #[error("PCI slot {0} is not available for devices")]
    BadSlot(u8),
}

/// The host bridge: a function with only an identity.
#[derive(Debug)]
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    /// Vendor ID (Red Hat, Inc., as for QEMU's host bridges).
    pub const VENDOR_ID: u16 = 0x1b36;
    /// Device ID (QEMU PCIe host bridge).
    pub const DEVICE_ID: u16 = 0x0008;

    /// Creates the host bridge.
    pub fn new() -> Self {
        Self {
            config: PciConfig::new(PciIdentity {
                vendor_id: Self::VENDOR_ID,
                device_id: Self::DEVICE_ID,
                revision: 0,
                class_code: 0x06_00_00,
                subsystem_vendor_id: Self::VENDOR_ID,
                subsystem_id: 0x1100,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Option<BarMove> {
        self.config.write(offset, data)
    }
}

/// The root bus: slot table plus the 0xCF8/0xCFC configuration ports.
pub struct PciRoot {
    slots: [Option<SharedPciDevice>; NUM_SLOTS],
    address: u32,
    hook: Option<Arc<dyn BarHook>>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used: Vec<usize> = (0..NUM_SLOTS)
            .filter(|&s| self.slots[s].is_some())
            .collect();
        f.debug_struct("PciRoot")
            .field("slots", &used)
            .field("address", &self.address)
            .finish()
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// Creates bus 0 with the host bridge in slot 0.
    pub fn new() -> Self {
        let mut slots: [Option<SharedPciDevice>; NUM_SLOTS] = Default::default();
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        Self {
            slots,
            address: 0,
            hook: None,
        }
    }

    /// Sets the hook told about BAR moves.
    pub fn set_bar_hook(&mut self, hook: Arc<dyn BarHook>) {
        self.hook = Some(hook);
    }

    /// Puts `dev` in `slot`, or in the lowest free slot; returns the slot.
    pub fn insert(&mut self, dev: SharedPciDevice, slot: Option<u8>) -> Result<u8, HostError> {
        let slot = match slot {
            Some(s) if s == 0 || usize::from(s) >= NUM_SLOTS => return Err(HostError::BadSlot(s)),
            Some(s) if self.slots[usize::from(s)].is_some() => return Err(HostError::SlotInUse(s)),
            Some(s) => s,
            None => (1..NUM_SLOTS as u8)
                .find(|&s| self.slots[usize::from(s)].is_none())
                .ok_or(HostError::NoFreeSlot)?,
        };
        info!("pci: device in slot {slot}");
        self.slots[usize::from(slot)] = Some(dev);
        Ok(slot)
    }

    /// Takes the device out of `slot` (after the guest ejected it).
    pub fn remove(&mut self, slot: u8) -> Result<SharedPciDevice, HostError> {
        if slot == 0 || usize::from(slot) >= NUM_SLOTS {
            return Err(HostError::BadSlot(slot));
        }
        info!("pci: slot {slot} emptied");
        self.slots[usize::from(slot)]
            .take()
            .ok_or(HostError::SlotEmpty(slot))
    }

    /// The device in `slot`, if any.
    pub fn device(&self, slot: u8) -> Option<&SharedPciDevice> {
        self.slots.get(usize::from(slot))?.as_ref()
    }

    /// The present function selected by the address register, and the register offset.
    fn selected(&self) -> Option<(u8, &SharedPciDevice, usize)> {
        let a = self.address;
        let bus = (a >> 16) & 0xff;
        let slot = ((a >> 11) & 0x1f) as u8;
        let func = (a >> 8) & 7;
        if a & ADDR_ENABLE == 0 || bus != 0 || func != 0 {
            return None;
        }
        let dev = self.slots[usize::from(slot)].as_ref()?;
        Some((slot, dev, (a & 0xfc) as usize))
    }

    /// Reads configuration space of bus 0, `slot`, function 0 (all ones if absent).
    pub fn config_read(&self, slot: u8, offset: usize, data: &mut [u8]) {
        match self.device(slot) {
            Some(dev) => crate::locked(dev).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space of bus 0, `slot`, function 0 (dropped if absent).
    pub fn config_write(&self, slot: u8, offset: usize, data: &[u8]) {
        let Some(dev) = self.device(slot) else {
            return;
        };
        // Release the device before calling the hook: it may lock the device.
        let mv = crate::locked(dev).write_config(offset, data);
        if let Some(mv) = mv {
            info!(
                "pci: slot {slot} BAR {} moved {:#x} -> {:#x}",
                mv.index, mv.old, mv.new
            );
            let moved = match &self.hook {
                Some(h) => h.bar_moved(slot, mv),
                None => Err(std::io::Error::other("no BAR hook")),
            };
            if let Err(e) = moved {
                warn!("pci: cannot move slot {slot} BAR {}: {e}", mv.index);
                crate::locked(dev).bar_move_failed(mv);
            }
        }
    }

    fn data_access(&self, offset: u64, len: usize) -> Option<(u8, usize)> {
        // `offset` is 4..8 (the data ports); the access must stay inside the dword.
        let byte = (offset - 4) as usize;
        if !matches!(len, 1 | 2 | 4) || byte + len > 4 {
            debug!("pci: bad config data access of {len} bytes at port offset {offset}");
            return None;
        }
        let (slot, _, reg) = self.selected()?;
        Some((slot, reg + byte))
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.data_access(offset, data.len()) {
                Some((slot, off)) => self.config_read(slot, off, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                // Bits 1:0 are reserved and read as zero.
                self.address = u32::from_le_bytes(b) & !3;
            }
            4..=7 => {
                if let Some((slot, off)) = self.data_access(offset, data.len()) {
                    self.config_write(slot, off, data);
                }
            }
            _ => debug!("pci: ignoring write to config port offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{BarKind, COMMAND_MEMORY};
    use proptest::prelude::*;

    fn addr(slot: u32, reg: u32) -> [u8; 4] {
        (ADDR_ENABLE | slot << 11 | reg).to_le_bytes()
    }

    fn read32(root: &mut PciRoot, slot: u32, reg: u32) -> u32 {
        root.write(0, 0, &addr(slot, reg));
        let mut b = [0; 4];
        root.read(0, 4, &mut b);
        u32::from_le_bytes(b)
    }

    struct Dev(PciConfig);
    impl PciDevice for Dev {
        fn read_config(&mut self, offset: usize, data: &mut [u8]) {
            self.0.read(offset, data)
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) -> Option<BarMove> {
            self.0.write(offset, data)
        }
        fn bar_move_failed(&mut self, mv: BarMove) {
            self.0.set_bar_committed(mv.index, mv.old);
        }
    }

    struct Refuse;
    impl BarHook for Refuse {
        fn bar_moved(&self, _: u8, _: BarMove) -> std::io::Result<()> {
            Err(std::io::Error::other("overlap"))
        }
    }

    fn dev() -> SharedPciDevice {
        let mut c = PciConfig::new(PciIdentity {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            revision: 1,
            class_code: 0x02_00_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 1,
        });
        c.add_bar(0, BarKind::Mem32, 0x1000, 0xe000_0000, false)
            .unwrap();
        Arc::new(Mutex::new(Dev(c)))
    }

    #[derive(Default)]
    struct Hook(Mutex<Vec<(u8, BarMove)>>);
    impl BarHook for Hook {
        fn bar_moved(&self, slot: u8, mv: BarMove) -> std::io::Result<()> {
            self.0.lock().unwrap().push((slot, mv));
            Ok(())
        }
    }

    #[test]
    fn enumerates_host_bridge_and_devices() {
        let mut root = PciRoot::new();
        assert_eq!(read32(&mut root, 0, 0), 0x0008_1b36);
        assert_eq!(read32(&mut root, 0, 8) >> 8, 0x06_00_00);
        assert_eq!(read32(&mut root, 3, 0), u32::MAX);
        assert_eq!(root.insert(dev(), None), Ok(1));
        assert_eq!(root.insert(dev(), Some(3)), Ok(3));
        assert_eq!(root.insert(dev(), Some(3)), Err(HostError::SlotInUse(3)));
        assert_eq!(root.insert(dev(), Some(0)), Err(HostError::BadSlot(0)));
        assert_eq!(root.insert(dev(), Some(32)), Err(HostError::BadSlot(32)));
        assert_eq!(read32(&mut root, 3, 0), 0x1041_1af4);
        // Byte and word reads through the data ports.
        root.write(0, 0, &addr(3, 0));
        let mut b = [0; 2];
        root.read(0, 6, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x1041);
        let mut b = [0; 1];
        root.read(0, 5, &mut b);
        assert_eq!(b, [0x1a]);
        // Function 1, bus 1 and disabled addresses are absent.
        root.write(0, 0, &(ADDR_ENABLE | 3 << 11 | 1 << 8).to_le_bytes());
        let mut b = [0; 4];
        root.read(0, 4, &mut b);
        assert_eq!(b, [0xff; 4]);
        root.write(0, 0, &(ADDR_ENABLE | 1 << 16).to_le_bytes());
        root.read(0, 4, &mut b);
        assert_eq!(b, [0xff; 4]);
        root.write(0, 0, &(3u32 << 11).to_le_bytes());
        root.read(0, 4, &mut b);
        assert_eq!(b, [0xff; 4]);
        // The address register reads back (the Linux type-1 probe).
        root.write(0, 0, &ADDR_ENABLE.to_le_bytes());
        root.read(0, 0, &mut b);
        assert_eq!(u32::from_le_bytes(b), ADDR_ENABLE);
        assert!(root.remove(3).is_ok());
        assert_eq!(root.remove(3).err(), Some(HostError::SlotEmpty(3)));
        assert_eq!(read32(&mut root, 3, 0), u32::MAX);
    }

    #[test]
    fn bar_moves_reach_the_hook() {
        let mut root = PciRoot::new();
        let hook = Arc::new(Hook::default());
        root.set_bar_hook(hook.clone());
        let slot = root.insert(dev(), None).unwrap();
        root.write(0, 0, &addr(slot.into(), 4));
        root.write(0, 4, &COMMAND_MEMORY.to_le_bytes());
        root.write(0, 0, &addr(slot.into(), 0x10));
        root.write(0, 4, &0xd000_0000u32.to_le_bytes());
        let got = hook.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, slot);
        assert_eq!((got[0].1.old, got[0].1.new), (0xe000_0000, 0xd000_0000));
    }

    #[test]
    fn failed_bar_move_keeps_the_old_mapping() {
        let mut root = PciRoot::new();
        root.set_bar_hook(Arc::new(Refuse));
        let slot = root.insert(dev(), None).unwrap();
        root.write(0, 0, &addr(slot.into(), 4));
        root.write(0, 4, &COMMAND_MEMORY.to_le_bytes());
        root.write(0, 0, &addr(slot.into(), 0x10));
        root.write(0, 4, &0xd000_0000u32.to_le_bytes());
        let hook = Arc::new(Hook::default());
        root.set_bar_hook(hook.clone());
        // Writing the old address back is no move; writing the new one again is retried.
        root.write(0, 4, &0xe000_0000u32.to_le_bytes());
        assert!(hook.0.lock().unwrap().is_empty());
        root.write(0, 4, &0xd000_0000u32.to_le_bytes());
        assert_eq!(hook.0.lock().unwrap()[0].1.old, 0xe000_0000);
    }

    #[test]
    fn straddling_data_access_is_dropped() {
        let mut root = PciRoot::new();
        root.write(0, 0, &addr(0, 0x3c));
        root.write(0, 7, &[1, 2]);
        let mut b = [0; 2];
        root.read(0, 7, &mut b);
        assert_eq!(b, [0xff; 2]);
        root.read(0, 4, &mut b);
        assert_eq!(b, [0xff, 0]);
    }

    proptest! {
        #[test]
        fn random_port_traffic_never_panics(ops in proptest::collection::vec(
            (any::<bool>(), 0u64..10, proptest::collection::vec(any::<u8>(), 0..6)), 0..128)) {
            let mut root = PciRoot::new();
            root.insert(dev(), Some(1)).unwrap();
            root.set_bar_hook(Arc::new(Hook::default()));
            for (w, off, mut data) in ops {
                let off = off.min(7);
                if w { root.write(0, off, &data) } else { root.read(0, off, &mut data) }
            }
            prop_assert_eq!(read32(&mut root, 0, 0), 0x0008_1b36);
        }
    }
}
