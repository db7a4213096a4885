//! PURE: the ACPI tables (hardware-reduced): RSDP, XSDT, FADT, MADT and DSDT.
//!
//! The guest finds the RSDP at [`layout::RSDP`] (also passed in the zero page). The FADT
//! declares the sleep control/status and reset registers of kuml's power-management port
//! block, so that the guest's `poweroff` and `reboot` reach the VMM. The DSDT describes the
//! PCI root bridge, the pvpanic device and whatever else the device manager adds.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Name, Package, ResourceTemplate,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::legacy::serial::COM_PORTS;

use super::layout;

const OEM_ID: [u8; 6] = *b"KUML  ";
const OEM_TABLE_ID: [u8; 8] = *b"KUMLVM  ";
const OEM_REVISION: u32 = 1;

/// Sleep control register (one byte): `SLP_EN | SLP_TYP << 2`.
pub const PM_SLEEP_CONTROL: u16 = 0x600;
/// Sleep status register (one byte).
pub const PM_SLEEP_STATUS: u16 = 0x601;
/// Reset register (one byte); writing [`PM_RESET_VALUE`] resets the machine.
pub const PM_RESET: u16 = 0x602;
/// Value the guest writes to [`PM_RESET`].
pub const PM_RESET_VALUE: u8 = 1;
/// The power-management block: sleep control, status and reset.
pub const PM_PORTS: (u16, u16) = (0x600, 4);
/// SLP_TYP of the S5 (soft off) state in `\_S5`.
pub const S5_SLP_TYP: u8 = 5;
/// QEMU's pvpanic ISA port, which Linux's pvpanic driver finds through `QEMU0001`.
pub const PVPANIC_PORT: u16 = 0x505;
/// PCI configuration mechanism #1 ports.
pub const PCI_CONFIG_PORTS: (u16, u16) = (0xcf8, 8);

/// IAPC_BOOT_ARCH: an 8042 keyboard controller is present.
const BOOT_ARCH_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: there is no VGA.
const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: there is no CMOS RTC (the guest takes wall time from kvmclock).
const BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
/// MADT flag: the system also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;

/// The tables do not fit between [`layout::RSDP`] and [`layout::ACPI_END`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the ACPI tables end at {end:#x}, past the end of their region ({:#x})",
    layout::ACPI_END
)]
pub struct AcpiError {
    /// Where the last table ends.
    pub end: u64,
}

/// A table to copy into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Guest physical address.
    pub addr: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What the tables describe.
#[derive(Debug, Clone)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs (one local APIC each, APIC ID = index).
    pub ncpus: u8,
    /// Guest RAM size, which places the 64-bit PCI window.
    pub mem_size: u64,
    /// More DSDT content from the device manager (devices, methods), already AML-encoded.
    pub extra_dsdt: &'a [u8],
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The DSDT body: `\_S5`, the PCI root bridge and the pvpanic device.
pub fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();
    Name::new("_S5_".into(), &Package::new(vec![&S5_SLP_TYP])).to_aml_bytes(&mut body);

    let mmio64_start = layout::mmio64_start(cfg.mem_size);
    let bus = AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_io = aml::IO::new(
        PCI_CONFIG_PORTS.0,
        PCI_CONFIG_PORTS.0,
        1,
        PCI_CONFIG_PORTS.1 as u8,
    );
    let io_low = AddressSpace::new_io(0u16, PCI_CONFIG_PORTS.0 - 1, None);
    let io_high = AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let mem32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        layout::MMIO32_START as u32,
        (layout::MMIO32_END - 1) as u32,
        None,
    );
    let mem64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64_start,
        mmio64_start + layout::MMIO64_SIZE - 1,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cfg_io, &io_low, &io_high, &mem32, &mem64]);
    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    let hid_name = Name::new("_HID".into(), &hid);
    let cid_name = Name::new("_CID".into(), &cid);
    let adr = Name::new("_ADR".into(), &0u32);
    let seg = Name::new("_SEG".into(), &0u32);
    let uid = Name::new("_UID".into(), &0u32);
    let bbn = Name::new("_BBN".into(), &0u32);
    let crs_name = Name::new("_CRS".into(), &crs);
    Device::new(
        "_SB_.PCI0".into(),
        vec![&hid_name, &cid_name, &adr, &seg, &uid, &bbn, &crs_name],
    )
    .to_aml_bytes(&mut body);

    let panic_hid: &'static str = "QEMU0001";
    let panic_io = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let panic_crs = ResourceTemplate::new(vec![&panic_io]);
    let panic_hid_name = Name::new("_HID".into(), &panic_hid);
    let panic_crs_name = Name::new("_CRS".into(), &panic_crs);
    Device::new("_SB_.PEVT".into(), vec![&panic_hid_name, &panic_crs_name]).to_aml_bytes(&mut body);

    legacy_devices(&mut body);
    body.extend_from_slice(cfg.extra_dsdt);
    body
}

/// The i8042 and the COM ports as ACPI devices. On a hardware-reduced platform Linux maps
/// legacy IRQs only for devices the firmware describes, so without these the keyboard and
/// the UARTs could not get their interrupts.
fn legacy_devices(body: &mut Vec<u8>) {
    let kbd_data = aml::IO::new(0x60, 0x60, 1, 1);
    let kbd_cmd = aml::IO::new(0x64, 0x64, 1, 1);
    let kbd_irq = aml::Interrupt::new(true, true, false, false, 1);
    let kbd_crs = ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    let kbd_hid = EISAName::new("PNP0303");
    let kbd_hid_name = Name::new("_HID".into(), &kbd_hid);
    let kbd_crs_name = Name::new("_CRS".into(), &kbd_crs);
    Device::new("_SB_.KBD_".into(), vec![&kbd_hid_name, &kbd_crs_name]).to_aml_bytes(body);

    for (i, (port, irq)) in COM_PORTS.iter().enumerate() {
        let io = aml::IO::new(*port, *port, 1, 8);
        // COM1/COM3 and COM2/COM4 share their IRQs.
        let int = aml::Interrupt::new(true, true, false, true, *irq);
        let crs = ResourceTemplate::new(vec![&io, &int]);
        let hid = EISAName::new("PNP0501");
        let uid = i as u32 + 1;
        let hid_name = Name::new("_HID".into(), &hid);
        let uid_name = Name::new("_UID".into(), &uid);
        let crs_name = Name::new("_CRS".into(), &crs);
        let path = format!("_SB_.COM{}", i + 1);
        Device::new(path.as_str().into(), vec![&hid_name, &uid_name, &crs_name]).to_aml_bytes(body);
    }
}

fn sdt_with(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut sdt = Sdt::new(signature, 36, revision, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // One append: `Sdt::append` recomputes the checksum over the whole table for every byte.
    sdt.append_slice(body);
    sdt.as_slice().to_vec()
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Builds every table and the address it goes to, starting at [`layout::RSDP`]; refuses
/// tables that would run past [`layout::ACPI_END`] (into the kernel's memory).
pub fn build(cfg: &AcpiConfig) -> Result<Vec<Table>, AcpiError> {
    let align = |a: u64| a.next_multiple_of(16);
    let rsdp_len = Rsdp::len() as u64;
    let dsdt_addr = align(layout::RSDP + rsdp_len);
    let dsdt_bytes = sdt_with(*b"DSDT", 6, &dsdt(cfg));

    let fadt_addr = align(dsdt_addr + dsdt_bytes.len() as u64);
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = io_gas(PM_RESET);
    fadt.reset_value = PM_RESET_VALUE;
    fadt.sleep_control_reg = io_gas(PM_SLEEP_CONTROL);
    fadt.sleep_status_reg = io_gas(PM_SLEEP_STATUS);
    fadt.iapc_boot_arch = (BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC).into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"KUMLKVM\0").into();
    let fadt_bytes = to_bytes(&fadt.finalize());

    let madt_addr = align(fadt_addr + fadt_bytes.len() as u64);
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(layout::LAPIC as u32),
    );
    for cpu in 0..cfg.ncpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cfg.ncpus, layout::IOAPIC as u32, 0));
    let mut madt_bytes = to_bytes(&madt);
    set_madt_flags(&mut madt_bytes, MADT_PCAT_COMPAT);

    let xsdt_addr = align(madt_addr + madt_bytes.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_bytes = to_bytes(&xsdt);

    let end = xsdt_addr + xsdt_bytes.len() as u64;
    if end > layout::ACPI_END {
        return Err(AcpiError { end });
    }
    let rsdp_bytes = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(vec![
        Table {
            addr: layout::RSDP,
            bytes: rsdp_bytes,
        },
        Table {
            addr: dsdt_addr,
            bytes: dsdt_bytes,
        },
        Table {
            addr: fadt_addr,
            bytes: fadt_bytes,
        },
        Table {
            addr: madt_addr,
            bytes: madt_bytes,
        },
        Table {
            addr: xsdt_addr,
            bytes: xsdt_bytes,
        },
    ])
}

/// Sets the MADT's flags field (offset 40) and fixes the checksum.
fn set_madt_flags(madt: &mut [u8], flags: u32) {
    if let Some(f) = madt.get_mut(40..44) {
        f.copy_from_slice(&flags.to_le_bytes());
        fix_checksum(madt);
    }
}

/// Recomputes an SDT checksum (byte 9) so that all bytes sum to zero.
fn fix_checksum(table: &mut [u8]) {
    if table.len() < 36 {
        return;
    }
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn tables(ncpus: u8) -> Vec<Table> {
        build(&AcpiConfig {
            ncpus,
            mem_size: 256 << 20,
            extra_dsdt: &[],
        })
        .unwrap()
    }

    #[test]
    fn tables_must_fit_their_region() {
        // The largest machine kuml builds fits.
        let aml = super::super::hotplug_aml::hotplug_aml(super::super::hotplug_aml::HOTPLUG_SLOTS);
        let t = build(&AcpiConfig {
            ncpus: crate::config::MAX_VCPUS,
            mem_size: 1 << 40,
            extra_dsdt: &aml,
        })
        .unwrap();
        let last = t.last().unwrap();
        assert!(last.addr + last.bytes.len() as u64 <= layout::ACPI_END);
        // A DSDT that cannot fit is refused, not written over the kernel.
        let huge = vec![0u8; 200 << 10];
        let e = build(&AcpiConfig {
            ncpus: 1,
            mem_size: 256 << 20,
            extra_dsdt: &huge,
        })
        .unwrap_err();
        assert!(e.end > layout::ACPI_END);
        assert!(e.to_string().contains("0x100000"), "{e}");
    }

    #[test]
    fn checksums_and_placement() {
        let t = tables(2);
        assert_eq!(t[0].addr, layout::RSDP);
        assert_eq!(&t[0].bytes[..8], b"RSD PTR ");
        assert_eq!(sum(&t[0].bytes[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(&t[0].bytes), 0, "RSDP extended checksum");
        for table in &t[1..] {
            assert_eq!(sum(&table.bytes), 0, "{:?}", &table.bytes[..4]);
            let len = u32::from_le_bytes(table.bytes[4..8].try_into().unwrap());
            assert_eq!(len as usize, table.bytes.len());
        }
        let last = t.last().unwrap();
        assert!(last.addr + last.bytes.len() as u64 <= layout::ACPI_END);
        for w in t.windows(2) {
            assert!(w[0].addr + w[0].bytes.len() as u64 <= w[1].addr);
        }
    }

    #[test]
    fn madt_lists_every_cpu() {
        let t = tables(4);
        let madt = &t[3].bytes;
        assert_eq!(&madt[..4], b"APIC");
        // Local APIC structures are type 0, 8 bytes long.
        let mut lapics = 0;
        let mut off = 44;
        while off + 2 <= madt.len() {
            if madt[off] == 0 {
                lapics += 1;
            }
            off += madt[off + 1] as usize;
        }
        assert_eq!(lapics, 4);
        assert_eq!(u32::from_le_bytes(madt[40..44].try_into().unwrap()), 1);
    }

    #[test]
    fn fadt_points_at_dsdt_and_pm_ports() {
        let t = tables(1);
        let fadt = &t[2].bytes;
        assert_eq!(&fadt[..4], b"FACP");
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(x_dsdt, t[1].addr);
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        // Reset register GAS at 116: system I/O, port PM_RESET.
        assert_eq!(fadt[116], 1);
        assert_eq!(
            u64::from_le_bytes(fadt[120..128].try_into().unwrap()),
            u64::from(PM_RESET)
        );
        assert_eq!(fadt[128], PM_RESET_VALUE);
    }

    #[test]
    fn dsdt_names_the_devices() {
        let t = tables(1);
        let d = &t[1].bytes;
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_S5_"));
        assert!(has(b"PCI0"));
        assert!(has(b"QEMU0001"));
        assert!(has(b"KBD_"));
        assert!(has(b"COM4"));
    }
}
