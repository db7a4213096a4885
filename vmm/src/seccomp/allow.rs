//! PURE: what each kind of kuml thread may do, as seccompiler rules.
//!
//! The lists come from reading what each thread does on every path (boot, reboot, hot-plug,
//! pause, every channel and network transport, hostfs) and were checked by running the e2e
//! tests with the filters on, where a missing call ends kuml with a line naming it.
//! A system call missing here ends kuml; one too many only widens what a compromised
//! thread could do, so paths that run seldom are listed too.

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// The kinds of kuml threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread after its setup: the event loop, the controller, hot-plug, and the
    /// rebuild of the whole machine at a guest reboot. Threads it starts later (message
    /// relays of helper processes) inherit its filter.
    EventLoop,
    /// A vCPU thread: KVM_RUN and the device models' port and MMIO handlers.
    Vcpu,
    /// The thread that starts helper processes (xterm, passt, virtiofsd, ifup scripts).
    /// Children inherit their parent thread's filter, so this one denies a list instead of
    /// allowing one: only what no helper of kuml needs.
    Launcher,
}

impl ThreadKind {
    /// The filter's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Launcher => "launcher",
        }
    }
}

/// The ioctl "type" byte of KVM's requests (`KVMIO`).
const IOCTL_TYPE_KVM: u8 = 0xAE;
/// `'T'`: terminals (TCGETS, TIOCGPTN, TIOCSPTLCK, TIOCGWINSZ), FIONBIO/FIOCLEX/FIONREAD,
/// and the tun driver (TUNSETIFF).
const IOCTL_TYPE_TTY_TUN: u8 = b'T';
/// Socket requests (SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFADDR, SIOCADDRT, SIOCGIFINDEX).
const IOCTL_TYPE_SOCKET: u8 = 0x89;
/// Block devices (BLKGETSIZE64, BLKSSZGET, BLKDISCARD): a ubd may be a host disk.
const IOCTL_TYPE_BLOCK: u8 = 0x12;

/// Every thread: what the SIGSYS reporter itself calls, and how a thread ends.
const COMMON: &[i64] = &[
    libc::SYS_write,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    // A sleep or wait that a signal (a vCPU kick) interrupted resumes through this.
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_close,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_getrandom,
];

/// The event loop, besides [`COMMON`]: everything a boot, a reboot and a hot-plug do
/// (open images and devices, make sockets, create the VM, its memory and its vCPU threads),
/// but no execve, ptrace, mount, namespaces, module loading or privilege changes.
const EVENT_LOOP: &[i64] = &[
    // files
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_creat,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_stat,
    libc::SYS_fstat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_umask,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync_file_range,
    libc::SYS_flock,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_close_range,
    libc::SYS_memfd_create,
    libc::SYS_fadvise64,
    libc::SYS_utimensat,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_splice,
    // descriptors the loop waits on
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_eventfd2,
    libc::SYS_signalfd4,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // sockets: mconsole, channels, network transports
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    // threads (vCPUs, message relays), helpers' exits, signals
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_kill,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getgroups,
    libc::SYS_getpgid,
    libc::SYS_getpgrp,
    libc::SYS_getsid,
    libc::SYS_getrlimit,
    libc::SYS_prlimit64,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_clock_getres,
    libc::SYS_time,
];

/// KVM requests a vCPU thread makes: its own (KVM_RUN; the registers when the guest
/// crashes), and the VM's that device models make from a guest's port or MMIO write
/// (MSI-X routes, irqfds and ioeventfds as the guest programs or moves a device).
fn vcpu_kvm_ioctls() -> Vec<u64> {
    use kvm_bindings as kb;
    vec![
        io(0x80),                                                          // KVM_RUN
        ior(0x81, std::mem::size_of::<kb::kvm_regs>()),                    // KVM_GET_REGS
        io(0xad),                                              // KVM_KVMCLOCK_CTRL (pause)
        ior(0x83, std::mem::size_of::<kb::kvm_sregs>()),       // KVM_GET_SREGS
        iow(0x76, std::mem::size_of::<kb::kvm_irqfd>()),       // KVM_IRQFD
        iow(0x79, std::mem::size_of::<kb::kvm_ioeventfd>()),   // KVM_IOEVENTFD
        iow(0x6a, std::mem::size_of::<kb::kvm_irq_routing>()), // KVM_SET_GSI_ROUTING
        iow(0x61, std::mem::size_of::<kb::kvm_irq_level>()),   // KVM_IRQ_LINE
        iowr(0x67, std::mem::size_of::<kb::kvm_irq_level>()),  // KVM_IRQ_LINE_STATUS
        iow(0xa5, std::mem::size_of::<kb::kvm_msi>()),         // KVM_SIGNAL_MSI
        iow(0x46, std::mem::size_of::<kb::kvm_userspace_memory_region>()), // KVM_SET_USER_MEMORY_REGION
    ]
}

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (u64::from(IOCTL_TYPE_KVM) << 8) | nr
}
fn io(nr: u64) -> u64 {
    ioc(0, nr, 0)
}
fn ior(nr: u64, size: usize) -> u64 {
    ioc(IOC_READ, nr, size)
}
fn iow(nr: u64, size: usize) -> u64 {
    ioc(IOC_WRITE, nr, size)
}
fn iowr(nr: u64, size: usize) -> u64 {
    ioc(IOC_READ | IOC_WRITE, nr, size)
}

/// The launcher's deny list: nothing kuml, passt, virtiofsd, an xterm or a shell needs.
const LAUNCHER_DENY: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_clock_adjtime,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
];

fn unconditional(map: &mut BTreeMap<i64, Vec<SeccompRule>>, list: &[i64]) {
    for nr in list {
        map.insert(*nr, Vec::new());
    }
}

/// ioctl (arg 1) with any request of these types (the request's bits 8..15).
fn ioctl_types(types: &[u8]) -> Result<Vec<SeccompRule>, BackendError> {
    types
        .iter()
        .map(|t| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(0xff00),
                u64::from(*t) << 8,
            )?])
        })
        .collect()
}

/// ioctl (arg 1) with exactly these requests.
fn ioctl_requests(requests: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    requests
        .iter()
        .map(|r| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                *r,
            )?])
        })
        .collect()
}

/// The rules of `kind`'s filter: for the allow lists the system calls that match (and are
/// allowed), for the launcher the ones that match (and are refused).
pub fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut map = BTreeMap::new();
    match kind {
        ThreadKind::EventLoop => {
            unconditional(&mut map, COMMON);
            unconditional(&mut map, EVENT_LOOP);
            map.insert(
                libc::SYS_ioctl,
                ioctl_types(&[
                    IOCTL_TYPE_KVM,
                    IOCTL_TYPE_TTY_TUN,
                    IOCTL_TYPE_SOCKET,
                    IOCTL_TYPE_BLOCK,
                ])?,
            );
        }
        ThreadKind::Vcpu => {
            unconditional(&mut map, COMMON);
            // A guest's register write activates or resets a device on this thread, and that
            // does what a boot does (open channels, make epoll sets and sockets, start helpers
            // through the launcher): in the nested lane, each narrower list ended kuml on such
            // a path (openat, shutdown, epoll_create1). So the vCPU has the event loop's list;
            // its own filter still names the thread's kind in a report.
            unconditional(&mut map, EVENT_LOOP);
            // The SIGSYS report reads the thread's name.
            map.insert(
                libc::SYS_prctl,
                vec![SeccompRule::new(vec![SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    libc::PR_GET_NAME as u64,
                )?])?],
            );
            let mut ioctl = ioctl_requests(&vcpu_kvm_ioctls())?;
            // A channel the device model writes to may be a terminal (FIONBIO, TCGETS).
            ioctl.extend(ioctl_types(&[
                IOCTL_TYPE_KVM,
                IOCTL_TYPE_TTY_TUN,
                IOCTL_TYPE_SOCKET,
                IOCTL_TYPE_BLOCK,
            ])?);
            map.insert(libc::SYS_ioctl, ioctl);
        }
        ThreadKind::Launcher => unconditional(&mut map, LAUNCHER_DENY),
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kvm_request_numbers_match_the_kernel_headers() {
        let all = vcpu_kvm_ioctls();
        // Values from <linux/kvm.h> as the kernel computes them on x86_64.
        assert_eq!(all[0], 0xae80, "KVM_RUN");
        assert_eq!(all[1], 0x8090_ae81, "KVM_GET_REGS");
        assert_eq!(all[2], 0xaead, "KVM_KVMCLOCK_CTRL");
        assert_eq!(all[4], 0x4020_ae76, "KVM_IRQFD");
        assert_eq!(all[5], 0x4040_ae79, "KVM_IOEVENTFD");
        assert_eq!(all[6], 0x4008_ae6a, "KVM_SET_GSI_ROUTING");
        assert_eq!(all[7], 0x4008_ae61, "KVM_IRQ_LINE");
        assert_eq!(all[10], 0x4020_ae46, "KVM_SET_USER_MEMORY_REGION");
    }

    #[test]
    fn test_no_thread_may_exec_ptrace_or_mount() {
        for kind in [ThreadKind::EventLoop, ThreadKind::Vcpu] {
            let r = rules(kind).unwrap();
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_unshare,
                libc::SYS_setuid,
                libc::SYS_fork,
                libc::SYS_vfork,
            ] {
                assert!(!r.contains_key(&nr), "{} allows {nr}", kind.name());
            }
        }
        let deny = rules(ThreadKind::Launcher).unwrap();
        assert!(deny.contains_key(&libc::SYS_ptrace));
        assert!(!deny.contains_key(&libc::SYS_execve), "helpers must exec");
        assert!(
            !deny.contains_key(&libc::SYS_mount),
            "passt and virtiofsd sandbox"
        );
    }

    #[test]
    fn test_vcpu_filter_is_within_the_event_loops() {
        // A vCPU thread starts under the event loop's filter (it is the main thread's child)
        // and adds its own: a call only the vCPU list has would still be refused.
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        let ev = rules(ThreadKind::EventLoop).unwrap();
        for nr in vcpu.keys() {
            assert!(
                ev.contains_key(nr),
                "vcpu allows {nr}, the event loop does not"
            );
        }
        assert!(!vcpu.contains_key(&libc::SYS_unshare));
        assert!(!vcpu.contains_key(&libc::SYS_execve));
    }

    #[test]
    fn test_ioctl_is_restricted_by_request() {
        assert!(!rules(ThreadKind::Vcpu).unwrap()[&libc::SYS_ioctl].is_empty());
        assert!(!rules(ThreadKind::EventLoop).unwrap()[&libc::SYS_ioctl].is_empty());
    }
}
