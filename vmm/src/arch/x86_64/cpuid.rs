//! PURE: adjusts the CPUID that KVM supports into what one vCPU of this VM reports.
//!
//! kuml passes the host's supported features through (`KVM_GET_SUPPORTED_CPUID`), then gives each
//! vCPU its APIC ID, describes the topology (`ncpus` cores in one package, one thread per core)
//! and sets the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: running under a hypervisor.
const HYPERVISOR_BIT: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const HTT_BIT: u32 = 1 << 28;
/// `kvm_cpuid_entry2.flags`: the entry depends on the sub-leaf index.
const SIGNIFICANT_INDEX: u32 = 1;
/// Leaf 0xb/0x1f ECX[15:8] level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` cores (`ceil(log2(n))`).
fn id_bits(n: u8) -> u32 {
    (u32::from(n.max(1)) - 1)
        .checked_ilog2()
        .map_or(0, |b| b + 1)
}

/// Rewrites `entries` for vCPU `cpu` of `ncpus`.
pub fn adjust(entries: &mut Vec<kvm_cpuid_entry2>, cpu: u8, ncpus: u8) {
    let apic_id = u32::from(cpu);
    let cores = u32::from(ncpus.max(1));
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ecx |= HYPERVISOR_BIT;
                // EBX[31:24] initial APIC ID, [23:16] logical processors per package.
                e.ebx = (e.ebx & 0xffff) | (apic_id << 24) | ((cores & 0xff) << 16);
                if cores > 1 {
                    e.edx |= HTT_BIT;
                } else {
                    e.edx &= !HTT_BIT;
                }
            }
            4 => {
                // EAX[31:26] cores per package - 1; [25:14] logical processors sharing the
                // cache - 1: one for L1/L2, all for L3.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cores - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((cores - 1) & 0x3f) << 26);
            }
            0xb | 0x1f => {
                e.flags |= SIGNIFICANT_INDEX;
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(ncpus);
                        e.ebx = cores;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
    // Leaf 0x1f exists only when leaf 0 says so; it duplicates 0xb here, so drop it rather than
    // describe dies and modules kuml does not model.
    entries.retain(|e| e.function != 0x1f);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_has_apic_id_and_hypervisor_bit() {
        let mut v = vec![leaf(1, 0)];
        v[0].ebx = 0x0000_0800; // CLFLUSH size 8 qwords.
        adjust(&mut v, 1, 2);
        assert_eq!(v[0].ebx, 0x0102_0800);
        assert_ne!(v[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(v[0].edx & HTT_BIT, 0);
    }

    #[test]
    fn topology_leaves() {
        let mut v = vec![leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2), leaf(0x1f, 0)];
        adjust(&mut v, 3, 4);
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].ebx, v[0].ecx, v[0].edx), (1, 0x100, 3));
        assert_eq!((v[1].eax, v[1].ebx, v[1].ecx, v[1].edx), (2, 4, 0x201, 3));
        assert_eq!((v[2].ebx, v[2].ecx), (0, 2));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 64].map(id_bits), [0, 1, 2, 2, 3, 6]);
    }
}
