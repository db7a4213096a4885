//! PURE: the MSR values every vCPU starts with.

/// SYSENTER CS/ESP/EIP.
const IA32_SYSENTER_CS: u32 = 0x174;
const IA32_SYSENTER_ESP: u32 = 0x175;
const IA32_SYSENTER_EIP: u32 = 0x176;
const STAR: u32 = 0xc000_0081;
const LSTAR: u32 = 0xc000_0082;
const CSTAR: u32 = 0xc000_0083;
const SYSCALL_MASK: u32 = 0xc000_0084;
const KERNEL_GS_BASE: u32 = 0xc000_0102;
const IA32_MISC_ENABLE: u32 = 0x1a0;
const MTRR_DEF_TYPE: u32 = 0x2ff;

/// Fast-string operations enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back: without it the guest maps RAM uncached.
const MTRR_ENABLE_WB_DEFAULT: u64 = (1 << 11) | 6;

/// `(index, value)` pairs to load into each vCPU before it runs.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MTRR_DEF_TYPE, MTRR_ENABLE_WB_DEFAULT),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_defaults_to_write_back() {
        assert!(boot_msrs().contains(&(0x2ff, 0x806)));
    }
}
