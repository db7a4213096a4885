//! PURE: turns the CPUID table KVM supports on this host (`KVM_GET_SUPPORTED_CPUID`) into what
//! one vCPU of this VM reports.
//!
//! kuml passes the host's features through and describes one machine shape: `ncpus` cores in
//! one package, one thread per core, APIC ID = vCPU index. Every rewrite below says why; the
//! anchor is Firecracker's CPUID normalization (common, Intel and AMD parts), read, not copied.
//! The unit tests replay real `KVM_GET_SUPPORTED_CPUID` dumps ([`dump`], `fixtures/`) and check
//! the topology the way the Linux guest derives it.

pub mod dump;

use kvm_bindings::kvm_cpuid_entry2;

/// `kvm_cpuid_entry2.flags`: the entry depends on the sub-leaf index.
const SIGNIFICANT_INDEX: u32 = 1;

/// Leaf 1 ECX: PDCM, the IA32_PERF_CAPABILITIES MSR exists.
const LEAF1_ECX_PDCM: u32 = 1 << 15;
/// Leaf 1 ECX: the local APIC timer has a TSC-deadline mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: EBX[23:16] (logical processors per package) is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 7.0 EDX: the IA32_ARCH_CAPABILITIES MSR exists.
const LEAF7_EDX_ARCH_CAPABILITIES: u32 = 1 << 29;
/// Leaf 0x8000_0007 EDX: the TSC is invariant.
const EXT7_EDX_INVARIANT_TSC: u32 = 1 << 8;
/// Leaf 0x8000_0001 ECX: TOPOEXT, leaves 0x8000_001D and 0x8000_001E are valid.
const EXT1_ECX_TOPOEXT: u32 = 1 << 22;

/// Leaf 0xB/0x1F ECX[15:8] domain types.
const DOMAIN_SMT: u32 = 1;
const DOMAIN_CORE: u32 = 2;

/// The extended-topology leaves.
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
/// AMD: cache topology and extended APIC ID / core ID leaves.
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// What KVM offers beyond its CPUID table, as kuml asked it with `KVM_CHECK_EXTENSION`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmCaps {
    /// `KVM_CAP_TSC_DEADLINE_TIMER`: KVM's local APIC emulates the TSC-deadline timer mode.
    pub tsc_deadline_timer: bool,
}

/// The CPU vendor the table describes (leaf 0's vendor string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// `GenuineIntel`.
    Intel,
    /// `AuthenticAMD` (and Hygon, which follows AMD's leaves).
    Amd,
    /// Anything else: only the vendor-neutral rewrites apply.
    Other,
}

/// The vendor of a CPUID table.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(l0) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&l0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&l0.edx.to_le_bytes());
    id[8..].copy_from_slice(&l0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `n` cores (`ceil(log2(n))`).
fn id_bits(n: u8) -> u32 {
    (u32::from(n.max(1)) - 1)
        .checked_ilog2()
        .map_or(0, |b| b + 1)
}

fn leaf_mut(
    entries: &mut [kvm_cpuid_entry2],
    function: u32,
    index: u32,
) -> Option<&mut kvm_cpuid_entry2> {
    entries
        .iter_mut()
        .find(|e| e.function == function && e.index == index)
}

/// Replaces every sub-leaf of `function` with `subleaves` (`(eax, ebx, ecx, edx)` each).
fn replace_leaf(entries: &mut Vec<kvm_cpuid_entry2>, function: u32, subleaves: &[[u32; 4]]) {
    entries.retain(|e| e.function != function);
    for (index, [eax, ebx, ecx, edx]) in (0u32..).zip(subleaves) {
        entries.push(kvm_cpuid_entry2 {
            function,
            index,
            flags: SIGNIFICANT_INDEX,
            eax: *eax,
            ebx: *ebx,
            ecx: *ecx,
            edx: *edx,
            ..Default::default()
        });
    }
}

/// Rewrites `entries` (KVM's supported table) for vCPU `cpu` of `ncpus`.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, cpu: u8, ncpus: u8, caps: KvmCaps) {
    let ncpus = ncpus.max(1);
    let apic_id = u32::from(cpu);
    let cores = u32::from(ncpus);
    let vendor = vendor(entries);

    if let Some(l0) = leaf_mut(entries, 0, 0) {
        // kuml always provides leaf 0xB (below); the guest reads it only if leaf 0 says it
        // exists. Every host KVM supports today reports at least 0xD.
        l0.eax = l0.eax.max(LEAF_EXT_TOPOLOGY);
    }
    if let Some(l1) = leaf_mut(entries, 1, 0) {
        // EBX[31:24]: this vCPU's initial APIC ID. EBX[23:16]: APIC IDs reserved per package,
        // a power of two (SDM), so that the legacy topology path agrees with leaf 0xB.
        l1.ebx = (l1.ebx & 0xffff)
            | (apic_id << 24)
            | ((u32::from(ncpus.next_power_of_two()) & 0xff) << 16);
        // HTT says EBX[23:16] is valid; with one vCPU there is nothing to describe.
        if ncpus > 1 {
            l1.edx |= LEAF1_EDX_HTT;
        } else {
            l1.edx &= !LEAF1_EDX_HTT;
        }
        l1.ecx |= LEAF1_ECX_HYPERVISOR;
        // KVM's in-kernel local APIC emulates the TSC-deadline timer whenever it has the
        // capability, but older KVMs leave the bit out of their table: without it the guest
        // falls back to the slower one-shot APIC timer calibrated against the PIT.
        if caps.tsc_deadline_timer {
            l1.ecx |= LEAF1_ECX_TSC_DEADLINE;
        }
        // PDCM promises IA32_PERF_CAPABILITIES, which KVM backs only with a vPMU; kuml gives
        // the guest none (leaf 0xA below), so the MSR must not be announced either.
        l1.ecx &= !LEAF1_ECX_PDCM;
    }

    // Leaf 0xB: since Linux 6.2 (45e966fcca03, backported to 5.10) KVM returns only sub-leaf 0,
    // zeroed, so kuml writes the whole leaf. Sub-leaf 0 is the thread level (one thread per
    // core: shift 0), sub-leaf 1 the core level (all vCPUs: the package ID is the APIC ID
    // shifted right by enough bits to number them, i.e. 0 for every vCPU). KVM answers a
    // higher sub-leaf with an invalid level (type 0) once sub-leaf 1 exists, which ends the
    // guest's scan. EDX is the x2APIC ID at every level.
    let topology = [
        [0, 1, DOMAIN_SMT << 8, apic_id],
        [id_bits(ncpus), cores, (DOMAIN_CORE << 8) | 1, apic_id],
    ];
    replace_leaf(entries, LEAF_EXT_TOPOLOGY, &topology);
    // Leaf 0x1F is the preferred superset of 0xB: a guest that sees it (leaf 0 EAX >= 0x1F)
    // uses it instead, so it must describe the same two levels, not KVM's empty sub-leaf 0.
    let max_basic = leaf_mut(entries, 0, 0).map_or(0, |l| l.eax);
    if max_basic >= LEAF_EXT_TOPOLOGY_V2
        || entries.iter().any(|e| e.function == LEAF_EXT_TOPOLOGY_V2)
    {
        replace_leaf(entries, LEAF_EXT_TOPOLOGY_V2, &topology);
    }

    // Leaf 0xA describes the Intel vPMU. kuml does not offer one (as Firecracker): a guest
    // with a vPMU runs its NMI watchdog and perf on virtualized counters, which cost exits on
    // every guest context switch. On AMD the leaf is reserved; zero is what it must read.
    if let Some(la) = leaf_mut(entries, 0xa, 0) {
        (la.eax, la.ebx, la.ecx, la.edx) = (0, 0, 0, 0);
    }

    // Invariant TSC: a guest that sees it lowers kvm-clock's rating below the TSC's and keeps
    // time with the raw TSC, which runs on while kuml holds the vCPUs (mconsole `stop`), so
    // the guest's clock would jump at `go` and its watchdogs fire. With the bit clear it keeps
    // kvm-clock, which kuml freezes across a pause (KVM_GET/SET_CLOCK) and which tells the
    // guest it was paused (KVM_KVMCLOCK_CTRL). QEMU hides the bit by default too.
    if let Some(ext7) = leaf_mut(entries, 0x8000_0007, 0) {
        ext7.edx &= !EXT7_EDX_INVARIANT_TSC;
    }

    match vendor {
        Vendor::Intel => normalize_intel(entries, ncpus),
        Vendor::Amd => normalize_amd(entries, cpu, ncpus),
        Vendor::Other => {}
    }
}

/// Intel: the deterministic cache parameters (leaf 4) describe the same package.
fn normalize_intel(entries: &mut [kvm_cpuid_entry2], ncpus: u8) {
    let cores = u32::from(ncpus);
    for e in entries.iter_mut().filter(|e| e.function == 4) {
        // EAX[4:0] 0 = no more caches (the terminating sub-leaf stays all zero).
        if e.eax & 0x1f == 0 {
            continue;
        }
        // EAX[25:14] logical processors sharing this cache - 1: one thread shares L1 and L2,
        // every vCPU shares L3. EAX[31:26] cores per package - 1.
        let level = (e.eax >> 5) & 0x7;
        let sharing = if level >= 3 { cores - 1 } else { 0 };
        e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((cores - 1) & 0x3f) << 26);
    }
}

/// AMD: the extended leaves that Linux reads for cores and caches on AMD.
fn normalize_amd(entries: &mut Vec<kvm_cpuid_entry2>, cpu: u8, ncpus: u8) {
    let cores = u32::from(ncpus);
    if let Some(l7) = leaf_mut(entries, 7, 0) {
        // KVM emulates IA32_ARCH_CAPABILITIES on every host and sets the bit, but AMD CPUs
        // have no such MSR: a guest that trusts the bit on AMD takes the wrong mitigations.
        l7.edx &= !LEAF7_EDX_ARCH_CAPABILITIES;
    }
    if let Some(ext8) = leaf_mut(entries, 0x8000_0008, 0) {
        // ECX[7:0] NC: cores in the package - 1. ECX[15:12] ApicIdCoreIdSize: APIC ID bits
        // that number the cores (the same shift as leaf 0xB's core level). Linux takes the
        // package ID from these (amd_detect_cmp) on every AMD CPU; KVM passes the host's
        // values through, which describe the host's package, not this VM's.
        ext8.ecx = (ext8.ecx & !0xf0ff) | ((cores - 1) & 0xff) | ((id_bits(ncpus) & 0xf) << 12);
    }
    // TOPOEXT says that 0x8000_001D (cache topology) and 0x8000_001E (core IDs) are valid.
    // KVM lists 0x8000_001D when the host has it: then kuml describes this VM's sharing in it,
    // fills 0x8000_001E (which KVM zeroes) and sets TOPOEXT, without which a family 17h+
    // guest has no core IDs. A host without it (the nested lane's TCG "AMD" CPU) keeps TOPOEXT
    // clear: the guest would find no caches in an empty 0x8000_001D.
    let cache_topology = entries
        .iter()
        .any(|e| e.function == LEAF_AMD_CACHE_TOPOLOGY && e.eax & 0x1f != 0);
    if let Some(ext1) = leaf_mut(entries, 0x8000_0001, 0) {
        if cache_topology {
            ext1.ecx |= EXT1_ECX_TOPOEXT;
        } else {
            ext1.ecx &= !EXT1_ECX_TOPOEXT;
        }
    }
    if !cache_topology {
        return;
    }
    if let Some(ext0) = leaf_mut(entries, 0x8000_0000, 0) {
        // The guest reads 0x8000_001E only within the range.
        ext0.eax = ext0.eax.max(LEAF_AMD_EXT_APIC_ID);
    }
    for e in entries
        .iter_mut()
        .filter(|e| e.function == LEAF_AMD_CACHE_TOPOLOGY)
    {
        if e.eax & 0x1f == 0 {
            continue;
        }
        // EAX[25:14] logical processors sharing the cache - 1, as leaf 4 on Intel: KVM passes
        // the host's counts (e.g. a CCX of 16 threads sharing L3).
        let level = (e.eax >> 5) & 0x7;
        let sharing = if level >= 3 { cores - 1 } else { 0 };
        e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
    }
    // 0x8000_001E: EAX extended APIC ID; EBX[7:0] core ID, [15:8] threads per core - 1;
    // ECX[7:0] node ID, [10:8] nodes per package - 1: one node, one thread per core, core
    // ID = vCPU index. Not indexed.
    let id = u32::from(cpu);
    entries.retain(|e| e.function != LEAF_AMD_EXT_APIC_ID);
    entries.push(kvm_cpuid_entry2 {
        function: LEAF_AMD_EXT_APIC_ID,
        eax: id,
        ebx: id & 0xff,
        ..Default::default()
    });
}

#[cfg(test)]
mod tests;
