//! Unit tests: real and realistic `KVM_GET_SUPPORTED_CPUID` tables, normalized, then read the
//! way the Linux guest reads them.

use super::*;

/// This host: AMD EPYC (family 25), PVM /dev/kvm, recorded with the `cpuid-dump` example.
const HOST_AMD_PVM: &str = include_str!("fixtures/host-amd-epyc-pvm.txt");
/// A hardware-KVM Intel host, written by hand in KVM's shape (see the file's header).
const INTEL_SPR: &str = include_str!("fixtures/intel-sapphire-rapids-kvm.txt");
/// The nested lane's L1 (QEMU TCG `-cpu max`, AMD, kvm_amd), recorded inside it with the
/// `cpuid-dump` example through resources/nested.sh: no TOPOEXT, no 0x8000_001D/1E.
const NESTED_AMD: &str = include_str!("fixtures/nested-lane-amd-tcg.txt");

fn table(text: &str) -> Vec<kvm_cpuid_entry2> {
    dump::parse(text).expect("a valid fixture")
}

fn normalized(text: &str, cpu: u8, ncpus: u8, caps: KvmCaps) -> Vec<kvm_cpuid_entry2> {
    let mut t = table(text);
    normalize(&mut t, cpu, ncpus, caps);
    t
}

fn leaf(t: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<[u32; 4]> {
    t.iter()
        .find(|e| e.function == function && e.index == index)
        .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
}

/// What the guest's CPUID instruction returns under KVM (`kvm_cpuid()`): the entry, or zeros;
/// for a missing sub-leaf of 0xB/0x1F, ECX = the index and EDX = the x2APIC ID once sub-leaf 1
/// exists.
fn guest_cpuid(t: &[kvm_cpuid_entry2], function: u32, index: u32) -> [u32; 4] {
    let e = t
        .iter()
        .find(|e| e.function == function && (e.index == index || e.flags & SIGNIFICANT_INDEX == 0));
    match e {
        Some(e) => [e.eax, e.ebx, e.ecx, e.edx],
        None if function == 0xb || function == 0x1f => match leaf(t, function, 1) {
            Some(l1) => [0, 0, index & 0xff, l1[3]],
            None => [0; 4],
        },
        None => [0; 4],
    }
}

/// Linux 6.1's `detect_extended_topology()` (arch/x86/kernel/cpu/topology.c) for one vCPU:
/// (package ID, core ID, threads per core), or `None` when the leaf is unusable and Linux
/// falls back to the legacy leaves.
fn linux_topology(t: &[kvm_cpuid_entry2]) -> Option<(u32, u32, u32)> {
    let usable = |leaf: u32| {
        let [_, ebx, ecx, _] = guest_cpuid(t, leaf, 0);
        ebx != 0 && (ecx >> 8) & 0xff == DOMAIN_SMT
    };
    let max_basic = guest_cpuid(t, 0, 0)[0];
    let leaf = if max_basic >= 0x1f && usable(0x1f) {
        0x1f
    } else if max_basic >= 0xb && usable(0xb) {
        0xb
    } else {
        return None;
    };
    let [eax, ebx, _, apic_id] = guest_cpuid(t, leaf, 0);
    let threads = ebx & 0xffff;
    let ht_shift = eax & 0x1f;
    let mut core_shift = ht_shift;
    let mut pkg_shift = ht_shift;
    for index in 1.. {
        let [eax, _, ecx, _] = guest_cpuid(t, leaf, index);
        let kind = (ecx >> 8) & 0xff;
        if kind == DOMAIN_CORE {
            core_shift = eax & 0x1f;
        }
        if kind == 0 {
            break;
        }
        pkg_shift = eax & 0x1f;
    }
    let core_mask = (1u32 << (core_shift - ht_shift)) - 1;
    Some((
        apic_id >> pkg_shift,
        (apic_id >> ht_shift) & core_mask,
        threads,
    ))
}

/// Linux 6.1's AMD path (amd.c, `early_init_amd_mc` + `amd_detect_cmp`), which every AMD
/// guest takes: (package ID, core ID) from 0x8000_0008.
fn linux_amd_cmp(t: &[kvm_cpuid_entry2]) -> (u32, u32) {
    let apic_id = guest_cpuid(t, 1, 0)[1] >> 24;
    let ecx = guest_cpuid(t, 0x8000_0008, 0)[2];
    let max_cores = (ecx & 0xff) + 1;
    let mut bits = (ecx >> 12) & 0xf;
    if bits == 0 {
        while (1 << bits) < max_cores {
            bits += 1;
        }
    }
    (apic_id >> bits, apic_id & ((1 << bits) - 1))
}

const SHAPES: [u8; 8] = [1, 2, 3, 4, 7, 8, 33, 64];
const AMD: [(&str, &str); 2] = [("host AMD", HOST_AMD_PVM), ("nested AMD", NESTED_AMD)];

#[test]
fn kvm_no_longer_reports_the_core_level() {
    // What made every vCPU its own package: KVM's table has only the thread level.
    for t in [table(HOST_AMD_PVM), table(INTEL_SPR), table(NESTED_AMD)] {
        assert!(leaf(&t, 0xb, 1).is_none());
    }
}

#[test]
fn every_vcpu_is_a_core_of_one_package() {
    for (name, text) in [AMD[0], AMD[1], ("Intel", INTEL_SPR)] {
        for ncpus in SHAPES {
            for cpu in 0..ncpus {
                let t = normalized(text, cpu, ncpus, KvmCaps::default());
                assert_eq!(
                    linux_topology(&t),
                    Some((0, u32::from(cpu), 1)),
                    "{name}: vCPU {cpu} of {ncpus}"
                );
                // The legacy leaf agrees: this APIC ID, a power of two of IDs per package.
                let [_, ebx, _, edx] = leaf(&t, 1, 0).unwrap();
                assert_eq!(ebx >> 24, u32::from(cpu));
                assert_eq!((ebx >> 16) & 0xff, u32::from(ncpus.next_power_of_two()));
                assert_eq!(edx & LEAF1_EDX_HTT != 0, ncpus > 1);
                if AMD.iter().any(|(n, _)| *n == name) {
                    assert_eq!(
                        linux_amd_cmp(&t),
                        (0, u32::from(cpu)),
                        "{name} (0x8000_0008): vCPU {cpu} of {ncpus}"
                    );
                }
            }
        }
    }
}

#[test]
fn leaf_0xb_has_exactly_two_levels() {
    let t = normalized(HOST_AMD_PVM, 3, 4, KvmCaps::default());
    assert_eq!(leaf(&t, 0xb, 0), Some([0, 1, 0x100, 3]));
    assert_eq!(leaf(&t, 0xb, 1), Some([2, 4, 0x201, 3]));
    assert_eq!(leaf(&t, 0xb, 2), None);
    assert_eq!(guest_cpuid(&t, 0xb, 2), [0, 0, 2, 3], "KVM ends the scan");
    // This host's leaf 0 stops below 0x1F: no 0x1F appears.
    assert!(t.iter().all(|e| e.function != 0x1f));
}

#[test]
fn leaf_0x1f_describes_the_same_levels() {
    let t = normalized(INTEL_SPR, 5, 6, KvmCaps::default());
    for index in 0..2 {
        assert_eq!(leaf(&t, 0x1f, index), leaf(&t, 0xb, index));
    }
    assert_eq!(leaf(&t, 0x1f, 1), Some([3, 6, 0x201, 5]));
    let n = t.iter().filter(|e| e.function == 0x1f).count();
    assert_eq!(n, 2);
}

#[test]
fn leaf1_features() {
    let dl = KvmCaps {
        tsc_deadline_timer: true,
    };
    for text in [HOST_AMD_PVM, INTEL_SPR] {
        let [_, _, ecx, _] = leaf(&normalized(text, 0, 1, dl), 1, 0).unwrap();
        assert_ne!(ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(ecx & LEAF1_ECX_PDCM, 0);
    }
    // Without the capability the bit stays as KVM reported it.
    let [_, _, ecx, _] = leaf(&normalized(INTEL_SPR, 0, 1, KvmCaps::default()), 1, 0).unwrap();
    assert_eq!(ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    assert_eq!(ecx & LEAF1_ECX_PDCM, 0, "the Intel table had PDCM set");
}

#[test]
fn no_invariant_tsc() {
    // Both recorded tables have it (0x8000_0007 EDX = 0x100); the guest must keep kvm-clock.
    let before = table(HOST_AMD_PVM);
    assert_eq!(
        leaf(&before, 0x8000_0007, 0).unwrap()[3],
        EXT7_EDX_INVARIANT_TSC
    );
    for text in [HOST_AMD_PVM, INTEL_SPR] {
        let t = normalized(text, 0, 1, KvmCaps::default());
        assert_eq!(
            leaf(&t, 0x8000_0007, 0).unwrap()[3] & EXT7_EDX_INVARIANT_TSC,
            0
        );
    }
}

#[test]
fn no_vpmu() {
    for text in [HOST_AMD_PVM, INTEL_SPR] {
        assert_eq!(
            leaf(&normalized(text, 0, 2, KvmCaps::default()), 0xa, 0),
            Some([0; 4])
        );
    }
}

#[test]
fn intel_caches_are_shared_as_one_package() {
    let t = normalized(INTEL_SPR, 1, 4, KvmCaps::default());
    let eax = |i| leaf(&t, 4, i).unwrap()[0];
    for i in 0..3 {
        assert_eq!((eax(i) >> 14) & 0xfff, 0, "L1/L2 sub-leaf {i}: one thread");
        assert_eq!(eax(i) >> 26, 3, "cores per package - 1");
    }
    assert_eq!((eax(3) >> 14) & 0xfff, 3, "L3 shared by all four vCPUs");
    assert_eq!(eax(3) & 0x3fff, 0x163 & 0x3fff, "level and type kept");
    assert_eq!(leaf(&t, 4, 4), Some([0; 4]), "terminator kept");
    // AMD has no leaf 4: its (empty) entry is left alone.
    let a = normalized(HOST_AMD_PVM, 1, 4, KvmCaps::default());
    assert_eq!(leaf(&a, 4, 0), Some([0; 4]));
}

#[test]
fn amd_extended_topology() {
    let t = normalized(HOST_AMD_PVM, 3, 4, KvmCaps::default());
    assert!(leaf(&t, 0x8000_0000, 0).unwrap()[0] >= 0x8000_001e);
    assert_ne!(leaf(&t, 0x8000_0001, 0).unwrap()[2] & EXT1_ECX_TOPOEXT, 0);
    let ecx8 = leaf(&t, 0x8000_0008, 0).unwrap()[2];
    assert_eq!((ecx8 & 0xff, (ecx8 >> 12) & 0xf), (3, 2));
    let sharing = |i| (leaf(&t, 0x8000_001d, i).unwrap()[0] >> 14) & 0xfff;
    assert_eq!(
        [sharing(0), sharing(1), sharing(2), sharing(3)],
        [0, 0, 0, 3]
    );
    assert_eq!(leaf(&t, 0x8000_001e, 0), Some([3, 3, 0, 0]));
    assert_eq!(leaf(&t, 7, 0).unwrap()[3] & LEAF7_EDX_ARCH_CAPABILITIES, 0);
    // One vCPU: no core bits.
    let one = normalized(HOST_AMD_PVM, 0, 1, KvmCaps::default());
    assert_eq!(leaf(&one, 0x8000_0008, 0).unwrap()[2] & 0xf0ff, 0);
}

#[test]
fn amd_without_cache_topology_keeps_topoext_clear() {
    // The nested lane: KVM lists no 0x8000_001D, so there is no TOPOEXT and no 0x8000_001E;
    // the cores come from 0x8000_0008 (and leaf 0xB).
    let t = normalized(NESTED_AMD, 1, 2, KvmCaps::default());
    assert_eq!(leaf(&t, 0x8000_0001, 0).unwrap()[2] & EXT1_ECX_TOPOEXT, 0);
    assert_eq!(leaf(&t, 0x8000_0000, 0).unwrap()[0], 0x8000_000a);
    assert!(leaf(&t, 0x8000_001e, 0).is_none());
    let ecx8 = leaf(&t, 0x8000_0008, 0).unwrap()[2];
    assert_eq!((ecx8 & 0xff, (ecx8 >> 12) & 0xf), (1, 1));
    assert_eq!(leaf(&t, 7, 0).unwrap()[3] & LEAF7_EDX_ARCH_CAPABILITIES, 0);
}

#[test]
fn vendors() {
    assert_eq!(vendor(&table(HOST_AMD_PVM)), Vendor::Amd);
    assert_eq!(vendor(&table(NESTED_AMD)), Vendor::Amd);
    assert_eq!(vendor(&table(INTEL_SPR)), Vendor::Intel);
    assert_eq!(vendor(&[]), Vendor::Other);
}

#[test]
fn intel_keeps_its_vendor_leaves() {
    // The AMD-only rewrites do not touch an Intel table.
    let before = table(INTEL_SPR);
    let t = normalized(INTEL_SPR, 0, 2, KvmCaps::default());
    assert_eq!(leaf(&t, 0x8000_0001, 0), leaf(&before, 0x8000_0001, 0));
    assert_eq!(leaf(&t, 0x8000_0008, 0), leaf(&before, 0x8000_0008, 0));
    assert!(leaf(&t, 0x8000_001e, 0).is_none());
    assert_eq!(leaf(&t, 7, 0), leaf(&before, 7, 0));
}

#[test]
fn id_bits_rounds_up() {
    assert_eq!([1, 2, 3, 4, 5, 64].map(id_bits), [0, 1, 2, 2, 3, 6]);
}
