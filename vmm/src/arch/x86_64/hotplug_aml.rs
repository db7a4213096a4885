//! PURE: the DSDT part of PCI hot-plug (Cloud Hypervisor's scheme, one segment).
//!
//! The VMM marks slots in the hot-plug register block (`devices::pci::hotplug`) and raises the
//! Generic Event Device's interrupt (`devices::legacy::ged`). Linux's `evged` driver runs the
//! GED's `_EVT`, which reads the GED selector and, for [`GED_PCI_HOTPLUG`], calls
//! `\_SB_.PCI0.PCNT`. `PCNT` reads the block's PCIU and PCID registers (both clear on read) and
//! Notifies each slot device: 1 (device check) for an added slot, 3 (eject request) for a slot
//! to remove. Linux's acpiphp then enumerates the new function, or releases the old one and calls
//! the slot's `_EJ0`, which writes the slot's bit to B0EJ so the VMM frees the slot.
//!
//! ```text
//! Scope (\_SB_.PCI0) {
//!     OperationRegion (PCST, SystemMemory, PCI_HOTPLUG_ADDR, 0x10)
//!     Field (PCST, DWordAcc, NoLock, WriteAsZeros) { PCIU, 32, PCID, 32, B0EJ, 32 }
//!     Method (PCEJ, 1) { B0EJ = 1 << Arg0 }
//!     Method (DVNT, 2) {                  // Arg0: slot bitmap, Arg1: notify value
//!         If (Arg0 & 0xfe) {                // one If per byte of the bitmap ...
//!             If (Arg0 & (1 << 1)) { Notify (S001, Arg1) }   // ... and one per slot
//!             ...
//!         }
//!         ...
//!     }
//!     Method (PCNT, 0, Serialized) { DVNT (PCIU, 1); DVNT (PCID, 3) }
//!     Device (S001) { Name (_ADR, 0x00010000); Name (_SUN, 1); Method (_EJ0, 1) { PCEJ (1) } }
//!     ...
//! }
//! Device (\_SB_.GED_) {
//!     Name (_HID, "ACPI0013"); Name (_UID, 0)
//!     Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { GED_GSI } })
//!     OperationRegion (GDST, SystemMemory, GED_ADDR, 4)
//!     Field (GDST, DWordAcc, NoLock, WriteAsZeros) { GDAT, 32 }
//!     Method (_EVT, 1) { Local0 = GDAT; If (Local0 & GED_PCI_HOTPLUG) { \_SB_.PCI0.PCNT () } }
//! }
//! ```
//!
//! AML is interpreted slowly on some hosts (PVM), so the code is straight-line: no loops, no
//! `_PRT`, no `_STA` (acpiphp then reads the slot's vendor ID from PCI config space), one `If`
//! per group of eight slots and one per slot.
//!
//! The registers live in a small platform MMIO block at [`layout::PLATFORM_MMIO`](super::layout::PLATFORM_MMIO), just below the
//! IOAPIC. The 32-bit PCI window (`layout::MMIO32_END`) must end at or below it, and the PCI
//! root's `_CRS` must not cover it.

use std::ops::RangeInclusive;

use acpi_tables::aml::{
    And, Arg, Device, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If,
    Interrupt, Local, Method, MethodCall, Name, Notify, OpRegion, OpRegionSpace, Path,
    ResourceTemplate, Scope, ShiftLeft, Store, ONE, ZERO,
};
use acpi_tables::{Aml, AmlSink};

pub use devices::legacy::ged::GED_PCI_HOTPLUG;

use super::layout;

/// The PCI hot-plug register block (PCIU, PCID, B0EJ, PSEG).
pub const PCI_HOTPLUG_ADDR: u64 = layout::PLATFORM_MMIO;
/// Length of the PCI hot-plug register block.
pub const PCI_HOTPLUG_LEN: u64 = devices::pci::hotplug::HOTPLUG_LEN;
/// The GED register block (the selector).
pub const GED_ADDR: u64 = layout::PLATFORM_MMIO + 0x1000;
/// Length of the GED register block.
pub const GED_LEN: u64 = devices::legacy::ged::GED_LEN;
/// The GED's interrupt: an ISA IRQ no legacy device uses (COM ports take 3 and 4, the i8042
/// takes 1), edge-triggered and active high, which is also the MADT's default for ISA IRQs.
pub const GED_GSI: u32 = 5;
/// The slots a guest may hot-plug: all but the host bridge's slot 0.
pub const HOTPLUG_SLOTS: RangeInclusive<u8> = 1..=31;

// The register blocks do not overlap and sit in the platform block, below the IOAPIC; the GED's
// GSI is not the i8042's (1) or a UART's (3, 4).
const _: () = assert!(PCI_HOTPLUG_ADDR + PCI_HOTPLUG_LEN <= GED_ADDR);
const _: () = assert!(GED_ADDR + GED_LEN <= layout::PLATFORM_MMIO + layout::PLATFORM_MMIO_SIZE);
const _: () = assert!(layout::PLATFORM_MMIO + layout::PLATFORM_MMIO_SIZE <= layout::IOAPIC);
const _: () = assert!(GED_GSI != 1 && GED_GSI != 3 && GED_GSI != 4);

/// Notify value: re-check the device (it was added).
const NOTIFY_DEVICE_CHECK: u8 = 1;
/// Notify value: the device is to be ejected.
const NOTIFY_EJECT_REQUEST: u8 = 3;

/// AML already encoded, spliced into a term list.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn encode(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The name of the slot device for `slot`: `S001` .. `S031`.
pub fn slot_name(slot: u8) -> String {
    format!("S{slot:03}")
}

fn dword_field(region: &str, names: &[&str]) -> Field {
    let entries = names
        .iter()
        .map(|n| {
            let mut name = [0u8; 4];
            name.copy_from_slice(n.as_bytes());
            FieldEntry::Named(name, 32)
        })
        .collect();
    Field::new(
        region.into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        entries,
    )
}

/// `Device (Snnn)`: the slot's address, its number and its eject method.
fn slot_device(slot: u8) -> Vec<u8> {
    let adr = Name::new("_ADR".into(), &(u32::from(slot) << 16));
    let sun = Name::new("_SUN".into(), &u32::from(slot));
    let call = MethodCall::new("PCEJ".into(), vec![&slot]);
    let ej0 = Method::new("_EJ0".into(), 1, false, vec![&call]);
    encode(&Device::new(
        slot_name(slot).as_str().into(),
        vec![&adr, &sun, &ej0],
    ))
}

/// `If (Arg0 & (1 << slot)) { Notify (Snnn, Arg1) }`.
fn slot_notify(slot: u8) -> Vec<u8> {
    let (slots, value) = (Arg(0), Arg(1));
    let bit = 1u32 << slot;
    let test = And::new(&ZERO, &slots, &bit);
    let target = Path::new(&slot_name(slot));
    let notify = Notify::new(&target, &value);
    encode(&If::new(&test, vec![&notify]))
}

/// The body of `DVNT`: one `If` per group of eight slots (one byte of the bitmap), holding one
/// `If` per slot, so that a scan with one changed slot tests at most 4 + 8 bits.
fn slot_notifies(slots: RangeInclusive<u8>) -> Vec<u8> {
    let arg0 = Arg(0);
    let mut body = Vec::new();
    for group in 0..4u8 {
        let in_group: Vec<u8> = valid_slots(slots.clone())
            .filter(|s| s / 8 == group)
            .collect();
        if in_group.is_empty() {
            continue;
        }
        let mask: u32 = in_group.iter().map(|s| 1u32 << s).sum();
        let test = And::new(&ZERO, &arg0, &mask);
        let notifies = Raw(in_group.into_iter().flat_map(slot_notify).collect());
        If::new(&test, vec![&notifies]).to_aml_bytes(&mut body);
    }
    body
}

/// The slots of `slots` that can be hot-plugged (1..=31).
fn valid_slots(slots: RangeInclusive<u8>) -> impl Iterator<Item = u8> {
    let (lo, hi) = slots.into_inner();
    lo.max(*HOTPLUG_SLOTS.start())..=hi.min(*HOTPLUG_SLOTS.end())
}

/// `Scope (\_SB_.PCI0)`: the hot-plug register block, the scan and eject methods and one
/// device per slot.
fn pci_scope(slots: RangeInclusive<u8>) -> Vec<u8> {
    let region = OpRegion::new(
        "PCST".into(),
        OpRegionSpace::SystemMemory,
        &PCI_HOTPLUG_ADDR,
        &PCI_HOTPLUG_LEN,
    );
    let fields = dword_field("PCST", &["PCIU", "PCID", "B0EJ"]);

    let (arg0, b0ej) = (Arg(0), Path::new("B0EJ"));
    let shift = ShiftLeft::new(&b0ej, &ONE, &arg0);
    let pcej = Method::new("PCEJ".into(), 1, false, vec![&shift]);

    let notifies = Raw(slot_notifies(slots.clone()));
    let dvnt = Method::new("DVNT".into(), 2, false, vec![&notifies]);

    let pciu = Path::new("PCIU");
    let pcid = Path::new("PCID");
    let scan_added = MethodCall::new("DVNT".into(), vec![&pciu, &NOTIFY_DEVICE_CHECK]);
    let scan_removed = MethodCall::new("DVNT".into(), vec![&pcid, &NOTIFY_EJECT_REQUEST]);
    let pcnt = Method::new("PCNT".into(), 0, true, vec![&scan_added, &scan_removed]);

    let mut children = encode(&region);
    for t in [&fields as &dyn Aml, &pcej, &dvnt, &pcnt] {
        t.to_aml_bytes(&mut children);
    }
    for slot in valid_slots(slots) {
        children.extend(slot_device(slot));
    }
    Scope::raw("\\_SB_.PCI0".into(), children)
}

/// `Device (\_SB_.GED_)`: the Generic Event Device.
fn ged_device() -> Vec<u8> {
    let hid: &'static str = "ACPI0013";
    let hid = Name::new("_HID".into(), &hid);
    let uid = Name::new("_UID".into(), &ZERO);
    let irq = Interrupt::new(true, true, false, false, GED_GSI);
    let crs = ResourceTemplate::new(vec![&irq]);
    let crs = Name::new("_CRS".into(), &crs);
    let region = OpRegion::new(
        "GDST".into(),
        OpRegionSpace::SystemMemory,
        &GED_ADDR,
        &GED_LEN,
    );
    let fields = dword_field("GDST", &["GDAT"]);

    let (gdat, local0) = (Path::new("GDAT"), Local(0));
    let read = Store::new(&local0, &gdat);
    let is_pci = And::new(&ZERO, &local0, &GED_PCI_HOTPLUG);
    let scan = MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let dispatch = If::new(&is_pci, vec![&scan]);
    let evt = Method::new("_EVT".into(), 1, false, vec![&read, &dispatch]);

    encode(&Device::new(
        "\\_SB_.GED_".into(),
        vec![&hid, &uid, &crs, &region, &fields, &evt],
    ))
}

/// The AML to append to the DSDT (after `\_SB_.PCI0`) for hot-plug of `slots` (clamped to
/// [`HOTPLUG_SLOTS`]): the slot devices and scan methods under `\_SB_.PCI0`, and the GED.
pub fn hotplug_aml(slots: RangeInclusive<u8>) -> Vec<u8> {
    let mut aml = pci_scope(slots);
    aml.extend(ged_device());
    aml
}

#[cfg(test)]
mod tests {
    use super::super::acpi::{self, AcpiConfig};
    use super::*;
    use std::path::Path as FsPath;
    use std::process::Command;

    fn has(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn dsdt_table(extra: &[u8]) -> Vec<u8> {
        let tables = acpi::build(&AcpiConfig {
            ncpus: 1,
            mem_size: 256 << 20,
            extra_dsdt: extra,
        })
        .expect("the tables fit");
        let dsdt = tables.into_iter().find(|t| t.bytes.starts_with(b"DSDT"));
        dsdt.expect("a DSDT").bytes
    }

    /// Runs `tool` in `dir`, or returns None (loudly) when it is not installed.
    fn run(tool: &str, args: &[&str], dir: &FsPath) -> Option<(bool, String)> {
        match Command::new(tool).args(args).current_dir(dir).output() {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                Some((out.status.success(), text))
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run {tool} ({e}); apt-get install acpica-tools");
                None
            }
        }
    }

    #[test]
    fn names_are_there() {
        let aml = hotplug_aml(HOTPLUG_SLOTS);
        for name in [
            "PCI0", "PCST", "PCIU", "PCID", "B0EJ", "PCEJ", "DVNT", "PCNT", "S001", "S017", "S031",
            "_ADR", "_SUN", "_EJ0", "GED_", "ACPI0013", "_CRS", "GDST", "GDAT", "_EVT",
        ] {
            assert!(has(&aml, name.as_bytes()), "{name} missing");
        }
        assert!(!has(&aml, b"S000"), "slot 0 is the host bridge");
        assert!(!has(&aml, b"S032"));
        // The register blocks' addresses, as DWord constants.
        let dword = |v: u64| [&[0x0c][..], &(v as u32).to_le_bytes()].concat();
        assert!(has(&aml, &dword(PCI_HOTPLUG_ADDR)));
        assert!(has(&aml, &dword(GED_ADDR)));
        // Extended interrupt descriptor: consumer, edge, active high, exclusive, one GSI.
        let irq = [&[0x89, 6, 0, 0b0011, 1][..], &GED_GSI.to_le_bytes()].concat();
        assert!(has(&aml, &irq));
    }

    #[test]
    fn slot_range_is_clamped_and_small() {
        assert_eq!(hotplug_aml(0..=255), hotplug_aml(1..=31));
        let few = hotplug_aml(2..=3);
        assert!(has(&few, b"S002") && has(&few, b"S003"));
        assert!(!has(&few, b"S001") && !has(&few, b"S004"));
        #[allow(clippy::reversed_empty_ranges)]
        let none = hotplug_aml(5..=4);
        assert!(has(&none, b"PCNT") && !has(&none, b"S00"));
        // Kept small for slow AML interpreters: well under 3 KiB for all 31 slots.
        let all = hotplug_aml(HOTPLUG_SLOTS).len();
        assert!(all < 3 << 10, "{all} bytes");
    }

    #[test]
    fn iasl_disassembles_the_dsdt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dsdt.dat"),
            dsdt_table(&hotplug_aml(HOTPLUG_SLOTS)),
        )
        .unwrap();
        let Some((ok, log)) = run("iasl", &["-d", "dsdt.dat"], dir.path()) else {
            return;
        };
        assert!(ok, "iasl -d failed:\n{log}");
        assert!(!log.contains("Error"), "{log}");
        let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
        for want in [
            "Scope (\\_SB.PCI0)",
            "OperationRegion (PCST, SystemMemory, 0xFE000000, 0x10)",
            "Field (PCST, DWordAcc, NoLock, WriteAsZeros)",
            "Method (PCEJ, 1, NotSerialized)",
            "Method (DVNT, 2, NotSerialized)",
            "Method (PCNT, 0, Serialized)",
            "DVNT (PCIU, One)",
            "DVNT (PCID, 0x03)",
            "Device (S001)",
            "Device (S031)",
            "Name (_ADR, 0x001F0000)",
            "Method (_EJ0, 1, NotSerialized)",
            "PCEJ (0x1F)",
            "If ((Arg0 & 0xFF000000))",
            "If ((Arg0 & 0xFE))",
            "Notify (S031, Arg1)",
            "Device (\\_SB.GED)",
            "Name (_HID, \"ACPI0013\" /* Generic Event Device */)",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
            "OperationRegion (GDST, SystemMemory, 0xFE001000, 0x04)",
            "Method (_EVT, 1, NotSerialized)",
            "\\_SB.PCI0.PCNT ()",
        ] {
            assert!(dsl.contains(want), "{want:?} not in:\n{dsl}");
        }
        // The whole DSDT recompiles.
        let Some((ok, log)) = run("iasl", &["-p", "re", "dsdt.dsl"], dir.path()) else {
            return;
        };
        assert!(ok, "iasl recompile failed:\n{log}");
    }

    /// Test-only methods that fill the register blocks (acpiexec simulates SystemMemory regions
    /// as plain memory) and run the scan, the GED handler and an `_EJ0`.
    fn driver_methods() -> Vec<u8> {
        let (pciu, pcid, b0ej) = (
            Path::new("\\_SB_.PCI0.PCIU"),
            Path::new("\\_SB_.PCI0.PCID"),
            Path::new("\\_SB_.PCI0.B0EJ"),
        );
        let gdat = Path::new("\\_SB_.GED_.GDAT");
        let (added, removed) = (1u32 << 1 | 1 << 3 | 1 << 31, 1u32 << 4);
        let set_added = Store::new(&pciu, &added);
        let set_removed = Store::new(&pcid, &removed);
        let pcnt = MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
        let tadd = Method::new(
            "\\TADD".into(),
            0,
            false,
            vec![&set_added, &set_removed, &pcnt],
        );

        let gsi = GED_GSI;
        let evt = MethodCall::new("\\_SB_.GED_._EVT".into(), vec![&gsi]);
        let other_event = 1u32;
        let (slot9, slot10) = (1u32 << 9, 1u32 << 10);
        let not_pci = Store::new(&gdat, &other_event);
        let add10 = Store::new(&pciu, &slot10);
        let tgno = Method::new("\\TGNO".into(), 0, false, vec![&not_pci, &add10, &evt]);
        let pci = Store::new(&gdat, &GED_PCI_HOTPLUG);
        let add9 = Store::new(&pciu, &slot9);
        // acpiexec's registers do not clear on read: clear PCID as the VMM's would.
        let clear = Store::new(&pcid, &ZERO);
        let tged = Method::new("\\TGED".into(), 0, false, vec![&pci, &add9, &clear, &evt]);

        let ej0 = MethodCall::new("\\_SB_.PCI0.S017._EJ0".into(), vec![&ONE]);
        let ret = acpi_tables::aml::Return::new(&b0ej);
        let tej0 = Method::new("\\TEJ0".into(), 0, false, vec![&ej0, &ret]);

        let mut v = Vec::new();
        for m in [&tadd, &tgno, &tged, &tej0] {
            m.to_aml_bytes(&mut v);
        }
        v
    }

    #[test]
    fn acpiexec_runs_the_scan_the_ged_handler_and_eject() {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = hotplug_aml(HOTPLUG_SLOTS);
        extra.extend(driver_methods());
        std::fs::write(dir.path().join("dsdt.dat"), dsdt_table(&extra)).unwrap();
        let batch = "execute \\TADD; execute \\TGNO; execute \\TGED; execute \\TEJ0";
        let Some((ok, log)) = run("acpiexec", &["-b", batch, "dsdt.dat"], dir.path()) else {
            return;
        };
        assert!(ok, "acpiexec failed:\n{log}");
        assert!(
            !log.contains("ACPI Error") && !log.contains("Exception"),
            "{log}"
        );
        let notified = |slot: &str, value: &str| {
            log.lines()
                .any(|l| l.contains(&format!("Notify on [{slot}]")) && l.contains(value))
        };
        // PCNT: device check for the added slots, eject request for the removed one.
        for slot in ["S001", "S003", "S031"] {
            assert!(notified(slot, "Value 0x01"), "{slot} not checked:\n{log}");
        }
        assert!(notified("S004", "Value 0x03"), "S004 not ejected:\n{log}");
        // _EVT scans only for the PCI hot-plug bit.
        assert!(notified("S009", "Value 0x01"), "_EVT did not scan:\n{log}");
        assert!(
            !notified("S010", "Value"),
            "_EVT scanned without the bit:\n{log}"
        );
        assert_eq!(log.matches("Received a System Notify").count(), 5, "{log}");
        // _EJ0 of slot 17 writes bit 17 to B0EJ.
        assert!(log.contains("[Integer] = 0000000000020000"), "{log}");
    }
}
