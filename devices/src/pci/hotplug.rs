//! The PCI hot-plug register block the DSDT's slot-scan method reads (Cloud Hypervisor's
//! scheme, one segment).
//!
//! Layout (32-bit registers, little-endian; other accesses read zero and write nothing):
//!
//! ```text
//! 0x00 PCIU  RO, read clears: bit n = slot n was added, the guest should Notify(Sn, 1)
//! 0x04 PCID  RO, read clears: bit n = slot n is to be removed, Notify(Sn, 3)
//! 0x08 B0EJ  WO: bit n = the guest ejected slot n (written by the slot's _EJ0)
//! 0x0c PSEG  RW: segment select (only segment 0 exists; kept for the AML)
//! ```
//!
//! The VMM sets bits with [`PciHotplug::announce_add`] / [`PciHotplug::request_removal`], raises
//! the GED interrupt, and is told about ejections through [`EjectHandler`]. Only slots that
//! hold a removable device (announced, or marked with [`PciHotplug::set_removable`]) can be
//! ejected: a guest that writes other bits (`B0EJ = 0xfffffffe` in a loop) is ignored, with
//! a bounded number of log lines.

use std::sync::Arc;

use log::{debug, info, log};

use crate::bus::BusDevice;
use crate::warn::WarnBudget;

/// Length of the register block.
pub const HOTPLUG_LEN: u64 = 0x10;
/// Offset of PCIU.
pub const PCIU: u64 = 0x00;
/// Offset of PCID.
pub const PCID: u64 = 0x04;
/// Offset of B0EJ.
pub const B0EJ: u64 = 0x08;
/// Offset of PSEG.
pub const PSEG: u64 = 0x0c;

/// Told when the guest ejects a slot. Called on a vCPU thread with the register block locked
/// and the bus it sits on held for dispatch: if that is the MMIO bus, the handler must not
/// take the MMIO bus's write lock itself (unmapping the BAR would deadlock). Queue the removal
/// to the event loop (a channel plus an EventFd) and do it there.
pub trait EjectHandler: Send + Sync {
    /// The guest released the device in `slot`: take it out of the PCI root and free it.
    fn eject(&self, slot: u8);
}

/// The hot-plug register block.
pub struct PciHotplug {
    up: u32,
    down: u32,
    /// Slots holding a device the guest may eject.
    removable: u32,
    segment: u32,
    handler: Option<Arc<dyn EjectHandler>>,
    /// Log lines left for ejections of slots without a removable device.
    bogus_ejects: WarnBudget,
}

impl Default for PciHotplug {
    fn default() -> Self {
        Self {
            up: 0,
            down: 0,
            removable: 0,
            segment: 0,
            handler: None,
            bogus_ejects: WarnBudget::new("pci hotplug: ejections of slots without a device"),
        }
    }
}

impl std::fmt::Debug for PciHotplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciHotplug")
            .field("up", &self.up)
            .field("down", &self.down)
            .field("removable", &self.removable)
            .finish()
    }
}

impl PciHotplug {
    /// Creates the block; `handler` hears about ejections.
    pub fn new(handler: Arc<dyn EjectHandler>) -> Self {
        Self {
            handler: Some(handler),
            ..Self::default()
        }
    }

    /// Marks `slot` (1..=31) as added, holding a removable device; the guest learns it on
    /// its next scan.
    pub fn announce_add(&mut self, slot: u8) {
        if let Some(bit) = slot_bit(slot) {
            self.up |= bit;
            self.down &= !bit;
            self.removable |= bit;
        }
    }

    /// Says whether `slot` (1..=31) holds a device the guest may eject (a device present at
    /// boot that mconsole `remove` can take away).
    pub fn set_removable(&mut self, slot: u8, removable: bool) {
        if let Some(bit) = slot_bit(slot) {
            if removable {
                self.removable |= bit;
            } else {
                self.removable &= !bit;
            }
        }
    }

    /// Asks the guest to release `slot`; it ejects it through B0EJ.
    pub fn request_removal(&mut self, slot: u8) {
        if let Some(bit) = slot_bit(slot) {
            self.down |= bit;
            self.up &= !bit;
        }
    }

    /// Slots announced but not yet scanned by the guest, and slots whose removal is pending.
    pub fn pending(&self) -> (u32, u32) {
        (self.up, self.down)
    }
}

// The register bit of `slot`, for slots 1..=31.
fn slot_bit(slot: u8) -> Option<u32> {
    (1..32).contains(&slot).then(|| 1u32 << slot)
}

impl BusDevice for PciHotplug {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = match (offset, data.len()) {
            (PCIU, 4) => std::mem::take(&mut self.up),
            (PCID, 4) => std::mem::take(&mut self.down),
            (PSEG, 4) => self.segment,
            _ => 0,
        };
        match data.len() {
            4 => data.copy_from_slice(&v.to_le_bytes()),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Ok(b) = <[u8; 4]>::try_from(data) else {
            debug!("pci hotplug: ignoring {}-byte write", data.len());
            return;
        };
        let v = u32::from_le_bytes(b);
        match offset {
            B0EJ => {
                // Slot 0 is the host bridge and cannot go.
                let bogus = v & !self.removable & !1;
                if bogus != 0 {
                    log!(
                        self.bogus_ejects.level(),
                        "pci hotplug: ignoring the ejection of slots {bogus:#x}, which hold \
                         no removable device"
                    );
                }
                for slot in 1..32u8 {
                    let bit = 1u32 << slot;
                    if v & bit != 0 && self.removable & bit != 0 {
                        info!("pci hotplug: guest ejected slot {slot}");
                        self.removable &= !bit;
                        if let Some(h) = &self.handler {
                            h.eject(slot);
                        }
                    }
                }
            }
            PSEG => self.segment = v,
            _ => debug!("pci hotplug: ignoring write at {offset:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Ejected(Mutex<Vec<u8>>);
    impl EjectHandler for Ejected {
        fn eject(&self, slot: u8) {
            self.0.lock().unwrap().push(slot);
        }
    }

    fn r(h: &mut PciHotplug, off: u64) -> u32 {
        let mut b = [0; 4];
        h.read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn add_scan_remove_eject() {
        let ej = Arc::new(Ejected::default());
        let mut h = PciHotplug::new(ej.clone());
        h.announce_add(3);
        h.announce_add(40);
        assert_eq!(r(&mut h, PCIU), 1 << 3);
        assert_eq!(r(&mut h, PCIU), 0, "read clears");
        h.request_removal(3);
        assert_eq!(h.pending(), (0, 1 << 3));
        assert_eq!(r(&mut h, PCID), 1 << 3);
        assert_eq!(r(&mut h, PCID), 0);
        h.write(0, B0EJ, &(1u32 << 3 | 1).to_le_bytes());
        assert_eq!(*ej.0.lock().unwrap(), vec![3]);
        h.write(0, PSEG, &7u32.to_le_bytes());
        assert_eq!(r(&mut h, PSEG), 7);
        assert_eq!(r(&mut h, B0EJ), 0);
    }

    // G5: a guest writing B0EJ = 0xfffffffe in a loop used to eject (and log) all 31 slots
    // on every write.
    #[test]
    fn only_removable_slots_are_ejected_once() {
        let ej = Arc::new(Ejected::default());
        let mut h = PciHotplug::new(ej.clone());
        h.set_removable(2, true);
        h.announce_add(5);
        for _ in 0..1000 {
            h.write(0, B0EJ, &0xffff_fffeu32.to_le_bytes());
        }
        assert_eq!(
            *ej.0.lock().unwrap(),
            vec![2, 5],
            "each device ejected once"
        );
        assert_eq!(
            h.bogus_ejects.level(),
            log::Level::Debug,
            "the log budget is spent"
        );
        h.set_removable(7, true);
        h.set_removable(7, false);
        h.write(0, B0EJ, &(1u32 << 7).to_le_bytes());
        assert_eq!(ej.0.lock().unwrap().len(), 2);
    }

    proptest! {
        #[test]
        fn random_accesses_never_panic(ops in proptest::collection::vec(
            (any::<bool>(), 0u64..0x10, proptest::collection::vec(any::<u8>(), 0..6)), 0..64)) {
            let mut h = PciHotplug::new(Arc::new(Ejected::default()));
            for (w, off, mut d) in ops {
                if w { h.write(0, off, &d) } else { h.read(0, off, &mut d) }
            }
        }
    }
}
