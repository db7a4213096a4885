//! The Generic Event Device's register block: how the guest learns why the GED interrupt fired.
//!
//! The DSDT describes an `ACPI0013` device whose `_CRS` names one edge-triggered interrupt and
//! whose `_EVT` method reads this block's selector and runs the matching handler (for
//! [`GED_PCI_HOTPLUG`], the PCI slot scan that reads the hot-plug register block). Linux's
//! `evged` driver calls `_EVT` from a thread each time the interrupt fires.
//!
//! Layout (on the MMIO bus, [`GED_LEN`] bytes):
//!
//! ```text
//! 0x0 SELECTOR  RO, read clears: the events raised since the last read (bit n = event n)
//! ```
//!
//! A read returns the bytes it covers and clears only the bits it returned, so a byte-wise
//! reader loses nothing; writes are ignored. The VMM calls [`Ged::notify`], which sets bits and
//! pulses the interrupt through an eventfd that KVM routes to an IOAPIC pin (an edge: a second
//! notify while the guest is still in `_EVT` makes Linux run `_EVT` again, and the bits it sets
//! are read then).

use std::io;

use log::debug;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Length of the register block.
pub const GED_LEN: u64 = 4;
/// Offset of the selector register.
pub const GED_SELECTOR: u64 = 0;
/// Selector bit: PCI devices were added or are to be removed; scan the hot-plug block.
pub const GED_PCI_HOTPLUG: u32 = 1 << 1;

/// Errors from the GED.
#[derive(Debug, thiserror::Error)]
pub enum GedError {
    /// Writing the interrupt eventfd failed.
    #[error("cannot raise the GED interrupt")]
    Interrupt(#[source] io::Error),
}

/// The GED register block and its interrupt.
#[derive(Debug)]
pub struct Ged {
    irq: EventFd,
    selector: u32,
}

impl Ged {
    /// A GED that raises its interrupt by writing `irq` (KVM routes it to the GED's GSI).
    pub fn new(irq: EventFd) -> Self {
        Ged { irq, selector: 0 }
    }

    /// Records `events` (selector bits such as [`GED_PCI_HOTPLUG`]) and raises the interrupt.
    /// With no bits, does nothing. The bits stay recorded even if raising fails.
    pub fn notify(&mut self, events: u32) -> Result<(), GedError> {
        if events == 0 {
            return Ok(());
        }
        self.selector |= events;
        self.irq.write(1).map_err(GedError::Interrupt)
    }

    /// Events raised that the guest has not read yet.
    pub fn pending(&self) -> u32 {
        self.selector
    }
}

impl BusDevice for Ged {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let bytes = self.selector.to_le_bytes();
        let mut taken = 0u32;
        for (i, b) in data.iter_mut().enumerate() {
            let Some(pos) = offset.checked_add(i as u64).filter(|p| *p < GED_LEN) else {
                break;
            };
            // GED_LEN is 4, so `pos` indexes the selector's bytes.
            let pos = pos as usize;
            *b = bytes[pos];
            taken |= 0xff << (8 * pos);
        }
        self.selector &= !taken;
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        debug!("ged: ignoring {}-byte write at {offset:#x}", data.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ged() -> Ged {
        Ged::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    fn read_u32(g: &mut Ged, off: u64) -> u32 {
        let mut b = [0; 4];
        g.read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn notify_raises_the_interrupt_and_the_read_clears() {
        let mut g = ged();
        g.notify(GED_PCI_HOTPLUG).unwrap();
        assert_eq!(g.irq.read().unwrap(), 1, "one edge");
        assert_eq!(g.pending(), GED_PCI_HOTPLUG);
        assert_eq!(read_u32(&mut g, GED_SELECTOR), GED_PCI_HOTPLUG);
        assert_eq!(read_u32(&mut g, GED_SELECTOR), 0, "read clears");
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn events_accumulate_until_read() {
        let mut g = ged();
        g.notify(GED_PCI_HOTPLUG).unwrap();
        g.notify(1).unwrap();
        g.notify(GED_PCI_HOTPLUG).unwrap();
        assert_eq!(g.irq.read().unwrap(), 3, "every notify is an edge");
        assert_eq!(read_u32(&mut g, GED_SELECTOR), GED_PCI_HOTPLUG | 1);
    }

    #[test]
    fn no_events_no_interrupt() {
        let mut g = ged();
        g.notify(0).unwrap();
        assert!(g.irq.read().is_err(), "eventfd not written");
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn partial_reads_clear_only_what_they_return() {
        let mut g = ged();
        g.notify(0x0102_0304).unwrap();
        let mut b = [0u8; 1];
        g.read(0, 1, &mut b);
        assert_eq!(b, [0x03]);
        assert_eq!(g.pending(), 0x0102_0004);
        let mut w = [0u8; 2];
        g.read(0, 2, &mut w);
        assert_eq!(w, [0x02, 0x01]);
        assert_eq!(g.pending(), 0x04);
        // A read running past the block returns zero for the bytes outside it.
        let mut w = [0xffu8; 4];
        g.read(0, 3, &mut w);
        assert_eq!(w, [0, 0, 0, 0]);
        assert_eq!(read_u32(&mut g, 0), 0x04);
    }

    #[test]
    fn writes_are_ignored() {
        let mut g = ged();
        g.notify(GED_PCI_HOTPLUG).unwrap();
        g.write(0, 0, &0u32.to_le_bytes());
        g.write(0, 0, &[]);
        assert_eq!(g.pending(), GED_PCI_HOTPLUG);
    }

    proptest! {
        #[test]
        fn random_accesses_never_panic_and_never_invent_bits(
            events in any::<u32>(),
            ops in proptest::collection::vec(
                (any::<bool>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..9)), 0..32),
        ) {
            let mut g = ged();
            g.notify(events).unwrap();
            let mut seen = 0u32;
            for (w, off, mut d) in ops {
                if w {
                    g.write(0, off, &d);
                } else {
                    g.read(0, off, &mut d);
                    if off < GED_LEN {
                        for (i, b) in d.iter().enumerate() {
                            let pos = off as usize + i;
                            if pos < 4 {
                                seen |= u32::from(*b) << (8 * pos);
                            }
                        }
                    }
                }
                prop_assert_eq!(g.pending() & !events, 0);
            }
            prop_assert_eq!(seen | g.pending(), events, "every bit is read once or still pending");
            prop_assert_eq!(seen & g.pending(), 0);
        }
    }
}
