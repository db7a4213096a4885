//! Address buses: the port-I/O bus and the MMIO bus that vCPU exits are dispatched to.
//!
//! A [`Bus`] maps non-overlapping address ranges to devices. The vCPU threads look up the
//! device for an exit's address and call [`BusDevice::read`] or [`BusDevice::write`] with the
//! offset inside the device's range. Accesses to unmapped addresses are reported to the caller,
//! which treats reads as all ones and ignores writes, as real hardware does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that sits on a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` bytes into the device's range starting at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` bytes into the device's range starting at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors from bus registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a registered one.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps around the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// No device starts at the address given to [`Bus::remove`].
    #[error("no device registered at {0:#x}")]
    NotFound(u64),
}

/// A shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    // Keyed by range start.
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `device`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The number of ranges mapped.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no range is mapped.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Removes the device whose range starts at `base`.
    pub fn remove(&mut self, base: u64) -> Result<SharedDevice, BusError> {
        self.ranges
            .remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound(base))
    }

    /// Finds the device covering `[addr, addr + len)`: its range start and the device.
    pub fn resolve(&self, addr: u64, len: usize) -> Option<(u64, &SharedDevice)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        let end = addr.checked_add(len as u64)?;
        (end <= base + entry.len).then_some((*base, &entry.device))
    }

    /// Dispatches a read; returns false (and fills `data` with ones) if nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, dev)) => {
                crate::locked(dev).read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false if nothing is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, dev)) => {
                crate::locked(dev).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn dispatches_by_offset() {
        let mut bus = Bus::new();
        let d = dev();
        bus.insert(d.clone(), 0x3f8, 8).unwrap();
        let mut buf = [0u8; 1];
        assert!(bus.read(0x3fd, &mut buf));
        assert_eq!(buf, [5]);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(d.lock().unwrap().last, Some((0x3f8, 1, vec![7])));
    }

    #[test]
    fn unmapped_reads_all_ones() {
        let bus = Bus::new();
        let mut buf = [0u8; 2];
        assert!(!bus.read(0x80, &mut buf));
        assert_eq!(buf, [0xff, 0xff]);
        assert!(!bus.write(0x80, &[1]));
    }

    #[test]
    fn rejects_overlap_and_straddling_access() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev(), 0xf8, 0x10),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        bus.insert(dev(), 0x110, 0x10).unwrap();
        let mut buf = [0u8; 4];
        assert!(!bus.read(0x10e, &mut buf));
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(bus.remove(0x100).is_ok());
        assert_eq!(bus.remove(0x100).err(), Some(BusError::NotFound(0x100)));
    }
}
