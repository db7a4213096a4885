//! The KVM VM: guest memory, the in-kernel irqchip and PIT, irqfds and ioeventfds.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::cpuid::KvmCaps;
use crate::arch::x86_64::layout;

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm is missing or cannot be opened.
    #[error("cannot open /dev/kvm (is KVM available and accessible?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// kuml's user may not open /dev/kvm (EACCES).
    #[error("kuml's user may not open /dev/kvm ({node}): {advice}")]
    KvmDenied {
        /// Its owner, group and mode.
        node: String,
        /// What to do.
        advice: String,
        /// The open's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The host's KVM lacks something kuml needs.
    #[error("the host's KVM does not support {0}")]
    Unsupported(&'static str),
    /// A KVM VM ioctl failed.
    #[error("KVM refused to {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {0} bytes of guest memory")]
    Memory(u64, #[source] vm_memory::mmap::FromRangesError),
    /// The file behind guest memory could not be made.
    #[error("cannot create the file of {0} bytes behind guest memory")]
    MemoryFile(u64, #[source] std::io::Error),
}

/// The VM and the host-side objects it needs.
#[derive(Debug)]
pub struct Vm {
    /// The KVM system handle.
    pub kvm: Kvm,
    /// The VM handle.
    pub fd: Arc<VmFd>,
    /// Guest RAM.
    pub memory: GuestMemoryMmap,
    /// CPUID entries KVM supports on this host.
    pub supported_cpuid: CpuId,
    /// What KVM offers beyond its CPUID table.
    pub cpuid_caps: KvmCaps,
}

/// Guest RAM in one memfd, mapped shared, region after region: vhost-user daemons (hostfs's
/// virtiofsd) map the same file to reach the guest's buffers, as UML maps its memory file.
fn shared_memory(mem_size: u64) -> Result<GuestMemoryMmap, VmError> {
    let file_err = |e| VmError::MemoryFile(mem_size, e);
    let name = c"kuml-guest-ram";
    // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(file_err(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(mem_size).map_err(file_err)?;
    let file = Arc::new(file);
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (base, len) in layout::ram_regions(mem_size) {
        ranges.push((
            GuestAddress(base),
            len as usize,
            Some(FileOffset::from_arc(file.clone(), offset)),
        ));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|e| VmError::Memory(mem_size, e))
}

/// The error for a failed open of /dev/kvm: when the node is there but kuml's user may not
/// use it, what to do about it (kuml needs no root).
fn open_kvm_error(source: kvm_ioctls::Error) -> VmError {
    use crate::sys::node;
    if source.errno() != libc::EACCES && source.errno() != libc::EPERM {
        return VmError::OpenKvm(source);
    }
    match node::owner_group_mode(std::path::Path::new("/dev/kvm")) {
        Some((owner, group, mode)) => VmError::KvmDenied {
            node: node::describe(&owner, &group, mode),
            advice: node::kvm_advice(&group, mode),
            source,
        },
        None => VmError::OpenKvm(source),
    }
}

impl Vm {
    /// Creates a VM with `mem_size` bytes of RAM, an in-kernel irqchip and PIT.
    pub fn new(mem_size: u64) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(open_kvm_error)?;
        for (cap, what) in [
            (kvm_ioctls::Cap::Irqchip, "an in-kernel irqchip"),
            (kvm_ioctls::Cap::Irqfd, "irqfd"),
            (kvm_ioctls::Cap::Ioeventfd, "ioeventfd"),
            (kvm_ioctls::Cap::UserMemory, "user memory regions"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::Unsupported(what));
            }
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("create a VM", e))?;
        let cpuid_caps = KvmCaps {
            tsc_deadline_timer: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        };
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("report its CPUID", e))?;

        fd.set_tss_address(layout::KVM_TSS as usize)
            .map_err(|e| VmError::Kvm("set the TSS address", e))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP)
            .map_err(|e| VmError::Kvm("set the identity map address", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Kvm("create the irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Kvm("create the PIT", e))?;

        let memory = shared_memory(mem_size)?;
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::Unsupported("host mappings of guest memory"))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `memory`. KVM touches a slot's
            // memory only on behalf of a running vCPU, and the machine stops and joins every
            // vCPU thread before it drops its `Vm` (other `VmFd` clones, in the device manager,
            // may outlive it, but they run no guest code); clones of `memory` in devices only
            // keep the mapping alive longer.
            unsafe { fd.set_user_memory_region(r) }
                .map_err(|e| VmError::Kvm("map guest memory", e))?;
        }
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            memory,
            supported_cpuid,
            cpuid_caps,
        })
    }
}
