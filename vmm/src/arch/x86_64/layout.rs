//! PURE: the guest physical address map.
//!
//! ```text
//! 0x0000_0500  GDT                 0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT                 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, PDPT, 4 PDs   0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA .. 1 MiB: reserved; ACPI tables from 0x000e_0000 (RSDP first)
//! 0x0010_0000  RAM (kernel, initrd at the top of low RAM)
//! 0xc000_0000  32-bit MMIO hole: PCI BARs up to 0xfe00_0000, platform MMIO (PCI hot-plug
//!              registers, GED), IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above 4 GiB, if any; then the 64-bit PCI window
//! ```

/// GDT location.
pub const GDT_ADDR: u64 = 0x500;
/// IDT location (an empty IDT: the kernel installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// The zero page handed to the kernel in RSI.
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Page-map level 4.
pub const PML4: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT: u64 = 0xa000;
/// The first of four page directories that identity-map the low 4 GiB with 2 MiB pages.
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Longest command line the guest kernel reads (x86 `COMMAND_LINE_SIZE`, without the NUL).
pub const CMDLINE_MAX: usize = 2047;
/// Start of the EBDA; RAM below it is usable.
pub const EBDA: u64 = 0x9fc00;
/// The RSDP, where the ACPI spec says to look for it.
pub const RSDP: u64 = 0xe0000;
/// End of the BIOS area reserved for ACPI tables.
pub const ACPI_END: u64 = 0x10_0000;
/// Where high memory and the kernel start.
pub const HIMEM: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO32_START: u64 = 0xc000_0000;
/// End of the part of the hole given to PCI BARs (platform MMIO follows).
pub const MMIO32_END: u64 = 0xfe00_0000;
/// Platform MMIO: the PCI hot-plug register block and the Generic Event Device.
pub const PLATFORM_MMIO: u64 = 0xfe00_0000;
/// Size of the platform MMIO block.
pub const PLATFORM_MMIO_SIZE: u64 = 0x10_0000;
/// IOAPIC registers.
pub const IOAPIC: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC: u64 = 0xfee0_0000;
/// The 4 GiB line.
pub const FOUR_GIB: u64 = 1 << 32;
/// Size of the 64-bit PCI window above RAM.
pub const MMIO64_SIZE: u64 = 64 << 30;
/// Where the KVM TSS lives (three pages just under the BIOS ROM).
pub const KVM_TSS: u64 = 0xfffb_d000;
/// KVM's identity-map page (one page before the TSS).
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;

/// Guest RAM regions for `mem_size` bytes: the low part below the MMIO hole, the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO32_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO32_START), (FOUR_GIB, mem_size - MMIO32_START)]
    }
}

/// End of RAM below 4 GiB.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO32_START)
}

/// Start of the 64-bit PCI window: above all RAM, 1 GiB aligned.
pub fn mmio64_start(mem_size: u64) -> u64 {
    let top = ram_regions(mem_size)
        .last()
        .map_or(FOUR_GIB, |(base, len)| base + len)
        .max(FOUR_GIB);
    top.next_multiple_of(1 << 30)
}

/// Kind of an e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// The e820 map for `mem_size` bytes of RAM.
pub fn e820(mem_size: u64) -> Vec<(u64, u64, E820Kind)> {
    let mut map = vec![
        (0, EBDA, E820Kind::Ram),
        (EBDA, HIMEM - EBDA, E820Kind::Reserved),
    ];
    for (base, len) in ram_regions(mem_size) {
        let start = base.max(HIMEM);
        let end = base + len;
        if end > start {
            map.push((start, end - start, E820Kind::Ram));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            e820(256 << 20),
            vec![
                (0, EBDA, E820Kind::Ram),
                (EBDA, HIMEM - EBDA, E820Kind::Reserved),
                (HIMEM, (256 << 20) - HIMEM, E820Kind::Ram),
            ]
        );
        assert_eq!(mmio64_start(256 << 20), FOUR_GIB);
    }

    #[test]
    fn big_guest_skips_the_hole() {
        let mem = 5 << 30;
        assert_eq!(
            ram_regions(mem),
            vec![(0, MMIO32_START), (FOUR_GIB, mem - MMIO32_START)]
        );
        assert_eq!(low_ram_end(mem), MMIO32_START);
        assert_eq!(mmio64_start(mem), 6 << 30);
    }

    #[test]
    fn windows_do_not_overlap() {
        const _: () = assert!(MMIO32_END <= PLATFORM_MMIO);
        const _: () = assert!(PLATFORM_MMIO + PLATFORM_MMIO_SIZE <= IOAPIC);
    }

    proptest! {
        #[test]
        fn regions_cover_exactly_mem_and_avoid_the_hole(mem in (16u64 << 20)..(1u64 << 40)) {
            let regions = ram_regions(mem);
            prop_assert_eq!(regions.iter().map(|r| r.1).sum::<u64>(), mem);
            for (base, len) in regions {
                prop_assert!(base + len <= MMIO32_START || base >= FOUR_GIB);
            }
            let map = e820(mem);
            for w in map.windows(2) {
                prop_assert!(w[0].0 + w[0].1 <= w[1].0);
            }
        }
    }
}
