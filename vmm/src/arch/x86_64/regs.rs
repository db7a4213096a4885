//! Boot-time vCPU state: registers, segments, page tables, FPU and local APIC.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{gdt, layout, msr};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page-table entry bits: present, writable, 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM vCPU ioctl failed.
    #[error("cannot set the vCPU's {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// KVM set only the first `set` of the boot MSRs: it refused `refused`.
    #[error("KVM refused to set MSR {refused:#x} (set {set} of {wanted} boot MSRs)")]
    MsrRefused {
        /// The MSR KVM stopped at.
        refused: u32,
        /// How many it set.
        set: usize,
        /// How many kuml asked for.
        wanted: usize,
    },
    /// Writing the GDT or page tables into guest memory failed.
    #[error("cannot write boot tables into guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Writes the GDT and identity page tables for the low 4 GiB into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let write = |addr: u64, v: u64| {
        mem.write_obj(v, GuestAddress(addr))
            .map_err(RegsError::GuestMemory)
    };
    for (i, d) in gdt::boot_gdt().iter().enumerate() {
        write(layout::GDT_ADDR + 8 * i as u64, *d)?;
    }
    write(layout::IDT_ADDR, 0)?;
    write(layout::PML4, layout::PDPT | PTE_PRESENT_RW)?;
    for pd in 0..4u64 {
        let pd_addr = layout::PD + pd * 0x1000;
        write(layout::PDPT + pd * 8, pd_addr | PTE_PRESENT_RW)?;
        for i in 0..512u64 {
            let phys = (pd << 30) | (i << 21);
            write(pd_addr + i * 8, phys | PTE_PRESENT_RW | PDE_HUGE)?;
        }
    }
    Ok(())
}

/// Puts the boot vCPU in 64-bit mode at `entry` with RSI pointing to the zero page.
pub fn setup_boot_cpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: layout::BOOT_STACK,
        rbp: layout::BOOT_STACK,
        rsi: layout::ZERO_PAGE,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Kvm("registers", e))?;

    let mut sregs: kvm_sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("segment registers", e))?;
    let table = gdt::boot_gdt();
    let code = gdt::segment(gdt::CODE, table[gdt::CODE]);
    let data = gdt::segment(gdt::DATA, table[gdt::DATA]);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(gdt::TSS, table[gdt::TSS]);
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = layout::PML4;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("segment registers", e))
}

/// The boot MSRs as KVM takes them.
fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    msr::boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// Loads the MSRs, FPU state and LAPIC LINT pins every vCPU starts with.
pub fn setup_common(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|_| RegsError::Kvm("MSRs", kvm_ioctls::Error::new(libc::E2BIG)))?;
    // KVM_SET_MSRS stops at the first MSR it refuses and returns how many it set.
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("MSRs", e))?;
    check_msrs_set(&entries, set)?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("FPU", e))?;

    // LINT0: external interrupts (the PIC); LINT1: NMI.
    let mut lapic = vcpu.get_lapic().map_err(|e| RegsError::Kvm("LAPIC", e))?;
    set_lvt(&mut lapic.regs, 0x350, 0x7 << 8);
    set_lvt(&mut lapic.regs, 0x360, 0x4 << 8);
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("LAPIC", e))
}

/// PURE: an error naming the first MSR KVM did not set, unless it set all of `entries`.
fn check_msrs_set(entries: &[kvm_msr_entry], set: usize) -> Result<(), RegsError> {
    match entries.get(set) {
        Some(e) => Err(RegsError::MsrRefused {
            refused: e.index,
            set,
            wanted: entries.len(),
        }),
        None => Ok(()),
    }
}

/// Sets the delivery mode of the LVT register at `offset` in the LAPIC page.
fn set_lvt(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let Some(bytes) = regs.get_mut(offset..offset + 4) else {
        return;
    };
    let mut v = [0u8; 4];
    for (d, s) in v.iter_mut().zip(bytes.iter()) {
        *d = *s as u8;
    }
    let value = (u32::from_le_bytes(v) & !0x700) | mode;
    for (d, s) in bytes.iter_mut().zip(value.to_le_bytes()) {
        *d = s as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_msr_count_names_the_refused_msr() {
        let entries = boot_msr_entries();
        assert!(check_msrs_set(&entries, entries.len()).is_ok());
        let e = check_msrs_set(&entries, 8).unwrap_err();
        assert!(matches!(
            e,
            RegsError::MsrRefused {
                refused: 0x1a0,
                set: 8,
                wanted: 10
            }
        ));
        assert_eq!(
            e.to_string(),
            "KVM refused to set MSR 0x1a0 (set 8 of 10 boot MSRs)"
        );
    }

    #[test]
    fn lvt_delivery_mode() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x350] = 0xff_u8 as std::os::raw::c_char;
        regs[0x351] = 0x07;
        set_lvt(&mut regs, 0x350, 0x4 << 8);
        assert_eq!(regs[0x350] as u8, 0xff);
        assert_eq!(regs[0x351] as u8, 0x04);
        set_lvt(&mut regs, 1022, 0); // out of range: ignored
    }
}
