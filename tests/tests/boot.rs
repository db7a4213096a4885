//! Boot: the resources/ kernel under kuml, vmlinux and bzImage, 1 and 2 vCPUs, and the exit
//! codes for poweroff, reboot, panic and signals.

// Integration tests: each file is its own crate of tests.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use kuml_e2e::{
    artifact, host_kind, kernel_level_duplicate_or_skip, user_space_or_skip, HostKind, TestVm,
    VmOptions,
};

/// Boot under PVM emulation takes ~20 s from a vmlinux and ~70 s from a bzImage; these bounds
/// only catch hangs.
const VMLINUX_BOOT: Duration = Duration::from_secs(600);
const BZIMAGE_BOOT: Duration = Duration::from_secs(900);
const SHORT: Duration = Duration::from_secs(180);

fn opts(kernel: &str, extra: &[&str]) -> VmOptions {
    let mut args = vec![
        format!("kernel={}", artifact(kernel).display()),
        format!("initrd={}", artifact("initramfs.cpio").display()),
        "mem=128M".to_owned(),
        "noreboot".to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    VmOptions {
        args,
        ..VmOptions::default()
    }
}

/// Boots to the init handover and checks what follows: the init's markers and a clean poweroff
/// where user space runs; on PVM hosts the kernel's own account of the handover (init cannot
/// run there: its first system call faults, the kernel panics, pvpanic reports it, exit 4).
fn boots_to_init(name: &str, kernel: &str, ncpus: u8, timeout: Duration) {
    let n = ncpus.to_string();
    let mut vm = TestVm::start(name, opts(kernel, &[&format!("ncpus={n}")]));
    vm.wait_for("Linux version", timeout);
    every_thread_is_filtered(&vm, ncpus);
    let out = vm.wait_for("Run /init as init process", timeout);
    assert!(
        out.contains(&format!("Brought up 1 node, {n} CPU")),
        "SMP bring-up: {out}"
    );
    assert!(out.contains("ACPI: "), "the guest read kuml's ACPI tables");
    // kuml describes one package of ncpus cores (CPUID leaf 0xB): Linux counts packages from
    // the cores it found in the boot CPU's package once every CPU is up.
    assert!(
        out.contains("smpboot: Max logical packages: 1"),
        "all vCPUs in one package"
    );
    assert!(
        vm.stdout().contains("Run /init as init process"),
        "the kernel log reaches con0 (hvc0) on kuml's stdout"
    );
    match host_kind() {
        HostKind::Hardware => {
            vm.wait_for("KUML-INIT: started", SHORT);
            vm.wait_for("KUML-INIT: shell on console", SHORT);
            // A command typed on con0 runs in the guest's shell; its `exit` ends the init,
            // which powers off.
            vm.send(b"echo typed-on-con0-$((6 * 7)) cpus=$(nproc)\n");
            vm.wait_for(&format!("typed-on-con0-42 cpus={n}"), SHORT);
            vm.send(b"exit\n");
            vm.wait_for("KUML-INIT: poweroff", SHORT);
            assert_eq!(vm.wait_exit(SHORT), 0, "poweroff exit code");
        }
        HostKind::Pvm => {
            eprintln!("PVM host: user space cannot run; checking the kernel's handover instead");
            vm.wait_for("Attempted to kill init", SHORT);
            assert_eq!(vm.wait_exit(SHORT), 4, "a guest panic exits with 4");
        }
    }
}

/// kuml's least privilege (docs/architecture.md, "Threads"): once the guest runs, every
/// thread of kuml is under a seccomp filter, a vCPU under two (the event loop's, which it
/// inherits, and its own), and the helper launcher exists.
fn every_thread_is_filtered(vm: &TestVm, ncpus: u8) {
    let threads = kuml_e2e::thread_seccomp(vm.pid());
    assert!(!threads.is_empty(), "kuml's threads in /proc");
    for t in &threads {
        assert_eq!(
            t.mode, 2,
            "every thread runs under a seccomp filter: {threads:?}"
        );
    }
    assert_eq!(
        threads[0].filters, 1,
        "the main thread (event loop): {threads:?}"
    );
    for i in 0..ncpus {
        let vcpu = threads.iter().find(|t| t.comm == format!("vcpu{i}"));
        assert_eq!(
            vcpu.map(|t| t.filters),
            Some(2),
            "vcpu{i}: the event loop's and its own: {threads:?}"
        );
    }
    let launcher = threads.iter().find(|t| t.comm == "launcher");
    assert_eq!(launcher.map(|t| t.filters), Some(1), "{threads:?}");
}

#[test]
fn vmlinux_one_vcpu_reaches_init() {
    // On PVM: the same kernel-level checks as with two vCPUs, and every agent test boots this
    // configuration (vmlinux, one vCPU) too.
    if !kernel_level_duplicate_or_skip("vmlinux_two_vcpus_reach_init") {
        return;
    }
    boots_to_init("vmlinux-1cpu", "vmlinux", 1, VMLINUX_BOOT);
}

#[test]
fn vmlinux_two_vcpus_reach_init() {
    boots_to_init("vmlinux-2cpu", "vmlinux", 2, VMLINUX_BOOT);
}

#[test]
fn bzimage_one_vcpu_reaches_init() {
    boots_to_init("bzimage-1cpu", "bzImage", 1, BZIMAGE_BOOT);
}

#[test]
fn bzimage_two_vcpus_reach_init() {
    // On PVM: the bzImage loader and SMP bring-up are independent; each has its own test there.
    if !kernel_level_duplicate_or_skip(
        "bzimage_one_vcpu_reaches_init (bzImage) and vmlinux_two_vcpus_reach_init (2 vCPUs)",
    ) {
        return;
    }
    boots_to_init("bzimage-2cpu", "bzImage", 2, BZIMAGE_BOOT);
}

/// What user space sees of the CPU topology with ncpus=3: one socket of three cores, one
/// thread each. The test initramfs is busybox (no `lscpu`), so this reads what `lscpu` reads:
/// sysfs topology and /proc/cpuinfo.
#[test]
fn user_space_sees_one_socket_of_ncpus_cores() {
    if !user_space_or_skip() {
        return;
    }
    let mut o = opts("vmlinux", &["ncpus=3"]);
    o.agent_tty = Some("hvc0".into());
    let mut vm = TestVm::start("topology-3cpu", o);
    vm.wait_agent(VMLINUX_BOOT);
    let sysfs = vm.sh_ok(
        "cd /sys/devices/system/cpu && for c in cpu[0-9]*; do \
         echo $c $(cat $c/topology/physical_package_id $c/topology/die_id \
         $c/topology/core_id $c/topology/thread_siblings_list); done",
        SHORT,
    );
    let rows: Vec<Vec<&str>> = sysfs
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "three CPUs: {sysfs}");
    for (i, r) in rows.iter().enumerate() {
        // cpuN package die core thread-siblings
        assert_eq!(r[1], "0", "one socket: {sysfs}");
        assert_eq!(r[2], "0", "one die: {sysfs}");
        assert_eq!(r[3], i.to_string(), "core IDs 0..3: {sysfs}");
        assert_eq!(r[4], i.to_string(), "one thread per core: {sysfs}");
    }
    let cpuinfo = vm.sh_ok("cat /proc/cpuinfo", SHORT);
    for field in ["physical id\t: 0", "siblings\t: 3", "cpu cores\t: 3"] {
        assert_eq!(
            cpuinfo.matches(field).count(),
            3,
            "{field:?} for every CPU:\n{cpuinfo}"
        );
    }
    vm.send(b"99 poweroff\n");
    assert_eq!(vm.wait_exit(SHORT), 0);
}

/// A VM with the test agent on the console (COM1).
fn agent_vm(name: &str, extra: &[&str]) -> TestVm {
    let mut o = opts("vmlinux", extra);
    o.agent_tty = Some("hvc0".into());
    let mut vm = TestVm::start(name, o);
    vm.wait_agent(VMLINUX_BOOT);
    vm
}

#[test]
fn poweroff_exits_0() {
    // On PVM: console::con0_is_hvc0_and_carries_the_boot_log boots the same VM, echoes through
    // the agent on con0 and checks the same poweroff exit code.
    if !kernel_level_duplicate_or_skip("console::con0_is_hvc0_and_carries_the_boot_log") {
        return;
    }
    let mut vm = agent_vm("poweroff", &[]);
    assert_eq!(
        vm.agent_ok("echo hello from the guest", SHORT),
        "hello from the guest"
    );
    vm.send(b"99 poweroff\n");
    assert_eq!(vm.wait_exit(SHORT), 0);
}

#[test]
fn reboot_with_noreboot_exits_3() {
    let mut vm = agent_vm("reboot-noreboot", &[]);
    vm.send(b"99 reboot\n");
    assert_eq!(vm.wait_exit(SHORT), 3);
}

#[test]
fn panic_exits_4() {
    let mut vm = agent_vm("panic", &[]);
    vm.send(b"99 panic kuml-e2e\n");
    vm.wait_for("Kernel panic - not syncing", SHORT);
    assert_eq!(vm.wait_exit(SHORT), 4);
}

#[test]
fn reboot_restarts_the_vm_and_sigterm_stops_it() {
    let mut o = opts("vmlinux", &[]);
    o.args.retain(|a| a != "noreboot");
    o.agent_tty = Some("hvc0".into());
    let mut vm = TestVm::start("reboot-restart", o);
    vm.wait_agent(VMLINUX_BOOT);
    vm.send(b"99 reboot\n");
    // The same process boots the guest again.
    vm.wait_until(VMLINUX_BOOT, |o| o.matches("KAGENT ready").count() >= 2)
        .expect("the guest came back after reboot");
    assert_eq!(vm.output().matches("Linux version").count(), 2);
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit(SHORT), 143);
}

/// Issue 14 (user space): `reboot -f` typed at the guest's shell on con0 ends kuml with UML's
/// exit code for a reboot under `noreboot` (3).
#[test]
fn reboot_typed_at_the_shell_exits_3() {
    if !user_space_or_skip() {
        return;
    }
    let mut vm = TestVm::start("reboot-typed", opts("vmlinux", &[]));
    vm.wait_for("KUML-INIT: shell on console", VMLINUX_BOOT);
    vm.send(b"echo about-to-reboot-$((40 + 2))\n");
    vm.wait_for("about-to-reboot-42", SHORT);
    vm.send(b"reboot -f\n");
    assert_eq!(vm.wait_exit(SHORT), 3);
}
