//! A real distribution (issue 14): Debian 12 with systemd, built by resources/build-debian.sh
//! (`KUML_DEBIAN_DIR`, which run-tests.sh sets), booted by kuml from a COW file over its ext4
//! image, once with Debian's own kernel and initramfs and once with the project's kernel. A
//! test logs in as root over con0, runs commands, checks `systemctl is-system-running` (failed
//! units are printed and must be among the ones docs/testing.md explains), logs in on the getty
//! of a `pts` console, and powers off with `systemctl poweroff` (exit 0). Needs guest user
//! space: on PVM hosts the tests say SKIPPED (the nested lane runs them).

#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kuml_e2e::{
    announced_pts, artifact, expect_text, make_raw, open_terminal, user_space_or_skip, TestVm,
    VmOptions,
};

/// systemd boots take a minute or more in the nested lane; these bounds only catch hangs.
const BOOT: Duration = Duration::from_secs(900);
const SHORT: Duration = Duration::from_secs(300);

/// Failed units that docs/testing.md ("A real distribution") explains.
const EXPLAINED_FAILURES: &[&str] = &[];

/// Kernel options without which systemd 252 cannot boot (it freezes or loops).
const SYSTEMD_NEEDS: &[&str] = &[
    "CGROUPS",
    "INOTIFY_USER",
    "FHANDLE",
    "SIGNALFD",
    "TIMERFD",
    "EPOLL",
];

fn debian_dir() -> PathBuf {
    let dir = std::env::var_os("KUML_DEBIAN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!("KUML_DEBIAN_DIR is not set: export KUML_DEBIAN_DIR=$(resources/build-debian.sh) (run-tests.sh does)")
    });
    assert!(
        dir.join("debian12.ext4").is_file(),
        "{} has no debian12.ext4: run resources/build-debian.sh",
        dir.display()
    );
    dir
}

/// Boots Debian from a COW file over the image with `kernel_args`, logs in on con0 and on the
/// pts console, checks systemd's state and powers off.
fn boot_debian(name: &str, kernel_args: Vec<String>) {
    let dir = debian_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = kernel_args;
    args.extend([
        format!(
            "ubd0={},{}",
            tmp.path().join("debian.cow").display(),
            dir.join("debian12.ext4").display()
        ),
        "root=/dev/vda".to_owned(),
        "mem=512M".to_owned(),
        "noreboot".to_owned(),
        "con1=pts".to_owned(),
    ]);
    let mut vm = TestVm::start(
        name,
        VmOptions {
            args,
            ..VmOptions::default()
        },
    );
    login_on_con0(&mut vm, Instant::now());

    // Commands typed at root's shell on con0, between markers (the echo shows them unexpanded).
    vm.send(
        b"echo BEGIN-$((1 + 1)); uname -r; systemctl is-system-running --wait; \
          systemctl --failed --no-legend --plain; tty; echo END-$((2 + 2))\n",
    );
    let out = vm.wait_for("END-4", BOOT);
    let block = out
        .rsplit_once("BEGIN-2")
        .map(|(_, b)| b)
        .and_then(|b| b.split_once("END-4").map(|(b, _)| b))
        .unwrap_or_else(|| panic!("no BEGIN/END block in:\n{out}"));
    let lines: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("Debian ({name}) answered:\n{}", lines.join("\n"));
    let state = lines
        .iter()
        .find(|l| {
            [
                "initializing",
                "starting",
                "running",
                "degraded",
                "maintenance",
                "stopping",
            ]
            .contains(l)
        })
        .unwrap_or_else(|| panic!("no state from systemctl is-system-running in {lines:?}"));
    let failed: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains(".service") || l.contains(".mount") || l.contains(".socket"))
        .map(|l| l.split_whitespace().next().unwrap_or(l))
        .collect();
    eprintln!("systemctl is-system-running: {state}; failed units: {failed:?}");
    assert!(
        *state == "running" || *state == "degraded",
        "systemd did not finish booting: {state}"
    );
    let unexplained: Vec<&&str> = failed
        .iter()
        .filter(|u| !EXPLAINED_FAILURES.contains(u))
        .collect();
    assert!(
        unexplained.is_empty(),
        "failed units not explained in docs/testing.md: {unexplained:?}"
    );
    assert!(
        lines.contains(&"/dev/hvc0"),
        "root's shell is on hvc0: {lines:?}"
    );

    // The getty on the pts console (con1, hvc1) takes a login too.
    let out = vm.wait_for("Virtual console 1 assigned device '/dev/pts/", SHORT);
    let pts = announced_pts(&out, "Virtual console 1 assigned device");
    let mut term = open_terminal(&pts);
    make_raw(&term);
    term.write_all(b"\n").unwrap();
    expect_text(&mut term, "login:", SHORT);
    term.write_all(b"root\n").unwrap();
    expect_text(&mut term, "Password:", SHORT);
    term.write_all(b"kuml\n").unwrap();
    expect_text(&mut term, "# ", SHORT);
    term.write_all(b"tty; echo PTS-$((3 * 3))\n").unwrap();
    let got = expect_text(&mut term, "PTS-9", SHORT);
    assert!(
        got.contains("/dev/hvc1"),
        "the pts getty's shell is on hvc1: {got:?}"
    );

    vm.send(b"systemctl poweroff\n");
    assert_eq!(vm.wait_exit(SHORT), 0, "systemctl poweroff exits 0");
}

/// Waits for the login prompt on con0 and logs in as root.
fn login_on_con0(vm: &mut TestVm, t0: Instant) {
    let deadline = t0 + BOOT;
    while !vm.stdout().contains("debian12 login:") {
        assert!(Instant::now() < deadline, "no login prompt on con0");
        vm.wait_until(Duration::from_secs(5), |_| false);
    }
    eprintln!("login prompt on con0 after {:?}", t0.elapsed());
    vm.send(b"root\n");
    vm.wait_for("Password:", SHORT);
    vm.send(b"kuml\n");
    vm.wait_for("root@debian12:~#", SHORT);
}

#[test]
fn debian12_with_debians_kernel_boots_to_a_login_and_systemd_runs() {
    if !user_space_or_skip() {
        return;
    }
    let dir = debian_dir();
    boot_debian(
        "debian-kernel",
        vec![
            format!("kernel={}", dir.join("vmlinuz").display()),
            format!("initrd={}", dir.join("initrd.img").display()),
        ],
    );
}

#[test]
fn debian12_with_the_project_kernel_boots_to_a_login_and_systemd_runs() {
    if !user_space_or_skip() {
        return;
    }
    let config = std::fs::read_to_string(artifact("kernel.config")).expect("kernel.config");
    let missing: Vec<&str> = SYSTEMD_NEEDS
        .iter()
        .copied()
        .filter(|o| !config.contains(&format!("CONFIG_{o}=y")))
        .collect();
    if !missing.is_empty() {
        kuml_e2e::skip(&format!(
            "the project's kernel lacks what systemd needs: CONFIG_{} (resources/kernel/kuml.fragment)",
            missing.join(", CONFIG_")
        ));
        return;
    }
    boot_debian(
        "debian-project-kernel",
        vec![format!("kernel={}", artifact("vmlinux").display())],
    );
}
