//! PCI type-0 configuration space (PURE).
//!
//! [`PciConfig`] holds the 256 bytes of a function's configuration space together with a write
//! mask per byte, so that read-only fields stay read-only whatever the guest writes. BARs are
//! ordinary masked registers: writing all ones and reading back yields the size mask (the BAR
//! sizing protocol) without any special casing. Capabilities are appended to a linked list that
//! starts at offset 0x40.
//!
//! BAR relocation: the VMM maps each BAR at a *committed* address. When the guest programs a new
//! address and memory decoding is enabled, [`PciConfig::write`] reports a [`BarMove`] and commits
//! the new address. For a 64-bit BAR only the write to the upper dword (or enabling decode)
//! commits, so the transient address between the two halves is never reported; an address equal
//! to the sizing pattern (all ones written) is never committed either.

use log::debug;

/// Size of the configuration space reachable through ports 0xCF8/0xCFC.
pub const CONFIG_SIZE: usize = 256;

/// Register offsets of the type-0 header.
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: usize = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status register (16 bits).
    pub const STATUS: usize = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION: usize = 0x08;
    /// Programming interface, subclass and class (24 bits from 0x09).
    pub const CLASS_PROG: usize = 0x09;
    /// Cache line size (8 bits).
    pub const CACHE_LINE: usize = 0x0c;
    /// Header type (8 bits).
    pub const HEADER_TYPE: usize = 0x0e;
    /// First base address register.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYS_VENDOR: usize = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYS_ID: usize = 0x2e;
    /// Capabilities pointer (8 bits).
    pub const CAP_PTR: usize = 0x34;
    /// Interrupt line (8 bits).
    pub const INT_LINE: usize = 0x3c;
    /// Interrupt pin (8 bits).
    pub const INT_PIN: usize = 0x3d;
}

/// Command register: I/O space decoding.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus mastering.
pub const COMMAND_MASTER: u16 = 1 << 2;
/// Command register: INTx disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: the capability list is valid.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;
/// First offset available to capabilities.
pub const CAP_START: usize = 0x40;

const BAR_MEM64: u32 = 0b100;
const BAR_PREFETCH: u32 = 0b1000;

/// Errors from building a configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The BAR index is past the last BAR, or a 64-bit BAR would not fit.
    #[error("BAR {0} does not exist or cannot hold a 64-bit BAR")]
    BadBarIndex(usize),
    /// The BAR (or its upper half) is already defined.
    #[error("BAR {0} is already in use")]
    BarInUse(usize),
    /// A BAR size must be a power of two of at least 16 bytes (4 GiB at most for 32-bit BARs).
    #[error("invalid BAR size {0:#x}")]
    BadBarSize(u64),
    /// The address is not aligned to the BAR size or does not fit the BAR.
    #[error("address {addr:#x} does not suit a BAR of size {size:#x}")]
    BadBarAddress {
        /// Requested address.
        addr: u64,
        /// Size of the BAR.
        size: u64,
    },
    /// No BAR is defined at this index.
    #[error("BAR {0} is not defined")]
    NoBar(usize),
    /// The capability list is full.
    #[error("no room for a {0}-byte capability")]
    NoCapabilitySpace(usize),
    /// A capability must hold at least its ID and next pointer, and masks must match it.
    #[error("malformed capability")]
    BadCapability,
}

/// Identity of a PCI function, written once into read-only registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIdentity {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: class << 16 | subclass << 8 | programming interface.
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

/// Kind of a memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit memory BAR.
    Mem32,
    /// A 64-bit memory BAR (uses this BAR and the next one).
    Mem64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BarDef {
    size: u64,
    kind: BarKind,
    committed: u64,
}

/// A BAR the guest moved: the VMM must move its bus range (and any ioeventfds) from `old` to
/// `new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    /// Index of the BAR (the lower one for a 64-bit BAR).
    pub index: usize,
    /// Address the BAR was mapped at.
    pub old: u64,
    /// Address the BAR is to be mapped at.
    pub new: u64,
    /// Size of the BAR.
    pub size: u64,
}

/// The configuration space of one PCI function.
#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bars: [Option<BarDef>; NUM_BARS],
    // Offset of the last capability in the list, if any.
    last_cap: Option<usize>,
    next_free: usize,
}

impl std::fmt::Debug for PciConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfig")
            .field("vendor", &self.read_u16(reg::VENDOR_ID))
            .field("device", &self.read_u16(reg::DEVICE_ID))
            .field("bars", &self.bars)
            .finish()
    }
}

impl PciConfig {
    /// Creates a type-0 header with the given identity, no BARs and no capabilities.
    pub fn new(id: PciIdentity) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: [None; NUM_BARS],
            last_cap: None,
            next_free: CAP_START,
        };
        c.put_u16(reg::VENDOR_ID, id.vendor_id);
        c.put_u16(reg::DEVICE_ID, id.device_id);
        c.bytes[reg::REVISION] = id.revision;
        c.put(reg::CLASS_PROG, &id.class_code.to_le_bytes()[..3]);
        c.put_u16(reg::SUBSYS_VENDOR, id.subsystem_vendor_id);
        c.put_u16(reg::SUBSYS_ID, id.subsystem_id);
        // No INTx: pin 0; the line is a scratch register for the OS.
        c.bytes[reg::INT_LINE] = 0xff;
        c.wmask[reg::INT_LINE] = 0xff;
        c.wmask[reg::CACHE_LINE] = 0xff;
        let cmd = COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE;
        c.wmask[reg::COMMAND..reg::COMMAND + 2].copy_from_slice(&cmd.to_le_bytes());
        c
    }

    /// Sets the interrupt pin (1 = INTA#); 0 means the function uses no INTx.
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.bytes[reg::INT_PIN] = pin;
    }

    /// Defines memory BAR `index` of `size` bytes, mapped at `addr`.
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: BarKind,
        size: u64,
        addr: u64,
        prefetchable: bool,
    ) -> Result<(), ConfigError> {
        let slots = if kind == BarKind::Mem64 { 2 } else { 1 };
        if index + slots > NUM_BARS {
            return Err(ConfigError::BadBarIndex(index));
        }
        if (index..index + slots).any(|i| self.bars[i].is_some() || self.is_upper_half(i)) {
            return Err(ConfigError::BarInUse(index));
        }
        let max = if kind == BarKind::Mem64 {
            1 << 63
        } else {
            1 << 32
        };
        if !size.is_power_of_two() || !(16..=max).contains(&size) {
            return Err(ConfigError::BadBarSize(size));
        }
        if addr & (size - 1) != 0 || (kind == BarKind::Mem32 && addr > u64::from(u32::MAX)) {
            return Err(ConfigError::BadBarAddress { addr, size });
        }
        let mut flags = 0;
        if kind == BarKind::Mem64 {
            flags |= BAR_MEM64;
        }
        if prefetchable {
            flags |= BAR_PREFETCH;
        }
        let mask = !(size - 1);
        let off = reg::BAR0 + 4 * index;
        self.put_u32(off, (addr as u32 & 0xffff_fff0) | flags);
        self.wmask[off..off + 4].copy_from_slice(&((mask as u32) & 0xffff_fff0).to_le_bytes());
        if kind == BarKind::Mem64 {
            self.put_u32(off + 4, (addr >> 32) as u32);
            self.wmask[off + 4..off + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
        self.bars[index] = Some(BarDef {
            size,
            kind,
            committed: addr,
        });
        Ok(())
    }

    fn is_upper_half(&self, i: usize) -> bool {
        i > 0 && matches!(self.bars[i - 1], Some(b) if b.kind == BarKind::Mem64)
    }

    /// The address BAR `index` currently holds (as the guest programmed it).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let def = self.bars.get(index).copied().flatten()?;
        let off = reg::BAR0 + 4 * index;
        let low = u64::from(self.read_u32(off) & 0xffff_fff0);
        let high = if def.kind == BarKind::Mem64 {
            u64::from(self.read_u32(off + 4))
        } else {
            0
        };
        Some(high << 32 | low)
    }

    /// The address the VMM has BAR `index` mapped at.
    pub fn bar_committed(&self, index: usize) -> Option<u64> {
        Some(self.bars.get(index).copied().flatten()?.committed)
    }

    /// Records that BAR `index` is mapped at `addr` (e.g. back at the old address after the VMM
    /// failed to move it).
    pub fn set_bar_committed(&mut self, index: usize, addr: u64) {
        if let Some(Some(d)) = self.bars.get_mut(index) {
            d.committed = addr;
        }
    }

    /// The size of BAR `index`.
    pub fn bar_size(&self, index: usize) -> Option<u64> {
        Some(self.bars.get(index).copied().flatten()?.size)
    }

    /// Appends a capability. `data[0]` is the capability ID, `data[1]` (the next pointer) is
    /// filled in; `wmask` gives the guest-writable bits of each byte (empty for read-only).
    /// Returns the capability's offset.
    pub fn add_capability(&mut self, data: &[u8], wmask: &[u8]) -> Result<usize, ConfigError> {
        if data.len() < 2 || (!wmask.is_empty() && wmask.len() != data.len()) {
            return Err(ConfigError::BadCapability);
        }
        let off = self.next_free;
        let end = off + data.len();
        if end > CONFIG_SIZE {
            return Err(ConfigError::NoCapabilitySpace(data.len()));
        }
        self.bytes[off..end].copy_from_slice(data);
        self.bytes[off + 1] = 0;
        if !wmask.is_empty() {
            self.wmask[off..end].copy_from_slice(wmask);
        }
        // The ID and next pointer are never writable.
        self.wmask[off] = 0;
        self.wmask[off + 1] = 0;
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = off as u8,
            None => {
                self.bytes[reg::CAP_PTR] = off as u8;
                let status = self.read_u16(reg::STATUS) | STATUS_CAP_LIST;
                self.put_u16(reg::STATUS, status);
            }
        }
        self.last_cap = Some(off);
        self.next_free = (end + 3) & !3;
        Ok(off)
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read as ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Reads a little-endian 16-bit register (0xffff past the end).
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a little-endian 32-bit register (all ones past the end).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(reg::COMMAND)
    }

    /// Writes `data` at `offset` as the guest would: only writable bits change. Accesses that are
    /// not 1, 2 or 4 bytes inside one dword are ignored. Returns the BAR the write moved, if any.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Option<BarMove> {
        let len = data.len();
        if !matches!(len, 1 | 2 | 4)
            || offset & (len - 1) != 0
            || offset.saturating_add(len) > CONFIG_SIZE
        {
            debug!("pci: ignoring config write of {len} bytes at {offset:#x}");
            return None;
        }
        for (i, v) in data.iter().enumerate() {
            let o = offset + i;
            let m = self.wmask[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
        }
        let dword = offset & !3;
        if dword == reg::COMMAND {
            return self.commit_bars(None);
        }
        if (reg::BAR0..reg::BAR0 + 4 * NUM_BARS).contains(&dword) {
            let i = (dword - reg::BAR0) / 4;
            return match self.bars[i] {
                // The lower half of a 64-bit BAR: wait for the upper half.
                Some(d) if d.kind == BarKind::Mem64 => None,
                Some(_) => self.commit_bars(Some(i)),
                None if self.is_upper_half(i) => self.commit_bars(Some(i - 1)),
                None => None,
            };
        }
        None
    }

    // Commits a programmed BAR address if decoding is on and it is a real address.
    fn commit_bars(&mut self, only: Option<usize>) -> Option<BarMove> {
        if self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        let mut moved = None;
        for i in 0..NUM_BARS {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let Some(def) = self.bars[i] else { continue };
            let Some(addr) = self.bar_address(i) else {
                continue;
            };
            // Half-done sizing (all ones in either dword) is not an address.
            let low_sizing =
                def.size < 1 << 32 && (addr as u32) == (!(def.size - 1) as u32) & 0xffff_fff0;
            let high_sizing = def.kind == BarKind::Mem64 && (addr >> 32) as u32 == u32::MAX;
            if addr == def.committed || addr == 0 || low_sizing || high_sizing {
                continue;
            }
            if let Some(d) = self.bars[i].as_mut() {
                d.committed = addr;
            }
            // Only one BAR can change per write except when decode is switched on; report the
            // first and let the rest follow on the next command write.
            moved = Some(BarMove {
                index: i,
                old: def.committed,
                new: addr,
                size: def.size,
            });
            break;
        }
        moved
    }

    /// Directly sets bytes, bypassing the write mask (for the device model itself).
    pub fn put(&mut self, offset: usize, data: &[u8]) {
        if let Some(dst) = self
            .bytes
            .get_mut(offset..offset.saturating_add(data.len()))
        {
            dst.copy_from_slice(data);
        }
    }

    fn put_u16(&mut self, offset: usize, v: u16) {
        self.put(offset, &v.to_le_bytes());
    }

    fn put_u32(&mut self, offset: usize, v: u32) {
        self.put(offset, &v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> PciIdentity {
        PciIdentity {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class_code: 0x01_80_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        }
    }

    fn cfg() -> PciConfig {
        let mut c = PciConfig::new(id());
        c.add_bar(0, BarKind::Mem64, 0x8000, 0x1_0000_0000, false)
            .unwrap();
        c
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = cfg();
        c.write(0, &0xdead_beefu32.to_le_bytes());
        c.write(8, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(8), 0x0180_0001);
        assert_eq!(c.read_u16(reg::SUBSYS_ID), 0x1100);
        c.write(reg::INT_LINE, &[5]);
        assert_eq!(c.read_u16(reg::INT_LINE), 0x0005);
        c.write(reg::INT_PIN, &[1]);
        assert_eq!(c.read_u16(reg::INT_LINE) >> 8, 0);
    }

    #[test]
    fn bar_sizing_protocol() {
        let mut c = cfg();
        assert_eq!(c.read_u32(0x10), 0x0000_0004);
        assert_eq!(c.read_u32(0x14), 1);
        c.write(0x10, &[0xff; 4]);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(c.read_u32(0x10), 0xffff_8004);
        assert_eq!(c.read_u32(0x14), 0xffff_ffff);
        // Restore: no move reported while decode is off, and none for the original address.
        assert_eq!(c.write(0x10, &0u32.to_le_bytes()), None);
        assert_eq!(c.write(0x14, &1u32.to_le_bytes()), None);
        assert_eq!(c.write(reg::COMMAND, &COMMAND_MEMORY.to_le_bytes()), None);
        assert_eq!(c.bar_address(0), Some(0x1_0000_0000));
        // Unused BARs and the ROM BAR size to zero.
        c.write(0x18, &[0xff; 4]);
        c.write(0x30, &[0xff; 4]);
        assert_eq!(c.read_u32(0x18), 0);
        assert_eq!(c.read_u32(0x30), 0);
    }

    #[test]
    fn bar_relocation_commits_on_upper_half_or_decode_enable() {
        let mut c = cfg();
        c.write(reg::COMMAND, &COMMAND_MEMORY.to_le_bytes());
        // Sizing with decode on reports nothing.
        assert_eq!(c.write(0x10, &[0xff; 4]), None);
        assert_eq!(c.write(0x14, &[0xff; 4]), None);
        assert_eq!(c.write(0x10, &0u32.to_le_bytes()), None);
        assert_eq!(c.write(0x14, &1u32.to_le_bytes()), None);
        // Move with decode on: low half first waits for the high half.
        assert_eq!(c.write(0x10, &0x8000u32.to_le_bytes()), None);
        let mv = c.write(0x14, &2u32.to_le_bytes()).unwrap();
        assert_eq!(
            mv,
            BarMove {
                index: 0,
                old: 0x1_0000_0000,
                new: 0x2_0000_8000,
                size: 0x8000
            }
        );
        // Move with decode off: reported when decode comes back.
        c.write(reg::COMMAND, &0u16.to_le_bytes());
        c.write(0x10, &0u32.to_le_bytes());
        assert_eq!(c.write(0x14, &3u32.to_le_bytes()), None);
        let mv = c
            .write(reg::COMMAND, &COMMAND_MEMORY.to_le_bytes())
            .unwrap();
        assert_eq!((mv.old, mv.new), (0x2_0000_8000, 0x3_0000_0000));
        assert_eq!(c.bar_committed(0), Some(0x3_0000_0000));
    }

    #[test]
    fn capability_chain() {
        let mut c = cfg();
        assert_eq!(c.read_u16(reg::STATUS) & STATUS_CAP_LIST, 0);
        let a = c.add_capability(&[0x09, 0xaa, 3], &[]).unwrap();
        let b = c
            .add_capability(&[0x11, 0, 0, 0], &[0, 0, 0, 0xc0])
            .unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x44);
        assert_eq!(c.read_u16(reg::STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(c.read_u16(reg::CAP_PTR) & 0xff, 0x40);
        assert_eq!(c.read_u16(0x40), 0x4409);
        assert_eq!(c.read_u16(0x44), 0x0011);
        c.write(0x44, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.read_u32(0x44), 0xc000_0011);
        assert!(c.add_capability(&[1; 200], &[]).is_err());
        assert!(c.add_capability(&[1], &[]).is_err());
    }

    #[test]
    fn bad_bars_rejected() {
        let mut c = cfg();
        assert_eq!(
            c.add_bar(1, BarKind::Mem32, 0x1000, 0, false),
            Err(ConfigError::BarInUse(1))
        );
        assert_eq!(
            c.add_bar(5, BarKind::Mem64, 0x1000, 0, false),
            Err(ConfigError::BadBarIndex(5))
        );
        assert!(c.add_bar(2, BarKind::Mem32, 0x1001, 0, false).is_err());
        assert!(c.add_bar(2, BarKind::Mem32, 0x1000, 0x800, false).is_err());
        assert!(c
            .add_bar(2, BarKind::Mem32, 0x1000, 1 << 32, false)
            .is_err());
        c.add_bar(2, BarKind::Mem32, 0x1000, 0xfe00_0000, true)
            .unwrap();
        assert_eq!(c.read_u32(0x18), 0xfe00_0008);
    }

    #[test]
    fn odd_accesses_ignored() {
        let mut c = cfg();
        c.write(reg::INT_LINE, &[1, 2, 3]);
        c.write(reg::INT_LINE - 1, &[1, 2]);
        c.write(254, &[1, 2, 3, 4]);
        assert_eq!(c.read_u16(reg::INT_LINE) & 0xff, 0xff);
        let mut b = [0; 4];
        c.read(254, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
        c.read(usize::MAX - 1, &mut b);
        assert_eq!(b, [0xff; 4]);
        assert_eq!(c.write(usize::MAX - 3, &b), None);
        c.put(usize::MAX - 1, &b);
    }

    proptest! {
        #[test]
        fn random_writes_keep_read_only_fields(ops in proptest::collection::vec(
            (0usize..300, proptest::collection::vec(any::<u8>(), 0..6)), 0..64)) {
            let mut c = cfg();
            c.add_capability(&[0x11, 0, 0, 0], &[0, 0, 0, 0xc0]).unwrap();
            for (off, data) in ops {
                if let Some(mv) = c.write(off, &data) {
                    prop_assert_eq!(mv.new % mv.size, 0);
                }
                let mut b = vec![0; data.len()];
                c.read(off, &mut b);
            }
            prop_assert_eq!(c.read_u32(0), 0x1042_1af4);
            prop_assert_eq!(c.read_u32(0x10) & 0x7fff, 4);
            prop_assert_eq!(c.read_u16(0x40) , 0x0011);
        }
    }
}
