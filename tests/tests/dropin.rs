//! Issue 17: kuml as a drop-in for UML's `linux` binary, driven the way UML's launchers drive
//! it: invoked as `linux` from a directory holding `root_fs`, UML-only options and quoted words
//! on the command line, UML's console lines on stdout, and the process watched through its pid,
//! its process group and its umid directory.

// Integration tests: each file is its own crate of tests.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kuml_e2e::{
    artifact, guest_dir, host_kind, kuml_bin, proc_stat, run_output, workspace, HostKind, TestVm,
    VmOptions,
};

/// Only catches hangs: a PVM boot takes about a minute under load.
const BOOT: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_secs(60);

/// A link to kuml named `name` in `dir`, as distributions install UML (`linux`, `linux.uml`).
fn link_as(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(kuml_bin(), &link).expect("link kuml");
    link
}

/// kuml finds its kernel next to its checkout (build/guest/vmlinux) when invoked through a
/// link; if the artifacts live elsewhere (KUML_GUEST_DIR), KUML_KERNEL names it.
fn kernel_env() -> Vec<(String, String)> {
    if guest_dir() == workspace().join("build/guest") {
        Vec::new()
    } else {
        vec![(
            "KUML_KERNEL".into(),
            artifact("vmlinux").display().to_string(),
        )]
    }
}

/// (group id, session id) of process `pid`.
fn pgrp_and_session(pid: u32) -> (u32, u32) {
    let st = proc_stat(pid).expect("the process runs");
    (st.pgrp, st.session)
}

/// True while any process is left in process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-(pgid as i32), 0) == 0 }
}

/// Waits up to `timeout` for process group `pgid` to be empty.
fn group_gone(pgid: u32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while group_alive(pgid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The processes of group `pgid` other than `pgid` itself: (pid, command name).
fn helpers_in_group(pgid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| *pid != pgid)
        .filter_map(|pid| proc_stat(pid).map(|st| (pid, st)))
        .filter(|(_, st)| st.pgrp == pgid)
        .map(|(pid, st)| (pid, st.comm))
        .collect()
}

/// Without ubd0 and without ./root_fs, kuml says so in one line instead of booting a guest that
/// panics for want of a root; UML-only options are accepted with one warning each, whichever
/// name kuml was invoked by.
#[test]
fn missing_root_fs_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for name in ["linux", "linux.uml"] {
        let prog = link_as(dir.path(), name);
        let (code, out, err) = run_output(Command::new(&prog).current_dir(dir.path()).args([
            "mem=64M",
            "time-travel=inf-cpu",
            "ssl-non-raw",
            "xterm=xterm,-T,-e",
            "con=none",
            "ssl=pts",
        ]));
        assert_eq!(code, 1, "{name}: {err}");
        assert!(out.is_empty(), "{name}: nothing on stdout: {out}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{name}: two warnings and the error: {err}");
        assert!(lines[0].starts_with("kuml: time-travel=inf-cpu: UML option ignored"));
        assert!(lines[1].starts_with("kuml: ssl-non-raw: UML option ignored"));
        assert!(
            lines[2].starts_with("kuml: ubd0: no file 'root_fs' in the working directory"),
            "{name}: {err}"
        );
    }
}

/// A launcher's boot: `linux` in a directory with `root_fs`, no ubd0 and no root=, a quoted
/// COW disk that does not exist yet, UML-only options, environment words and init arguments.
/// Kernel level (PVM): the root is mounted from root_fs, the kernel's command line holds
/// the words in order, and UML's `console=tty0` is con0; then the process: group and session ids equal the pid, the pid file
/// holds it, SIGTERM leaves no process and no umid directory, and the same umid starts again.
#[test]
fn linux_boots_root_fs_and_behaves_as_a_uml_process() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    std::fs::copy(artifact("rootfs.ext4"), d.join("root_fs")).expect("copy root_fs");
    std::fs::copy(artifact("data.ext4"), d.join("data.img")).expect("copy data.img");
    let uml_dir = d.join("uml");
    let umid = format!("dropin{}", std::process::id());
    let umid_dir = uml_dir.join(&umid);
    let linux = link_as(d, "linux");
    let opts = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "mem=128M",
            "noreboot",
            &format!("umid={umid}"),
            &format!("uml_dir={}", uml_dir.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        VmOptions {
            args,
            program: Some(linux.clone()),
            cwd: Some(d.to_path_buf()),
            env: kernel_env(),
            ..VmOptions::default()
        }
    };
    let mconsole_line = format!(
        "mconsole (version 2) initialized on {}/mconsole",
        umid_dir.display()
    );

    // 1. The boot.
    // ssl1 on a descriptor the launcher opened (`100<>ssl1.txt`), with the kernel log on it.
    let ssl1 = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.join("ssl1.txt"))
        .expect("open ssl1.txt");
    let mut first = opts(&[
        "ssl1=fd:100",
        "console=ttyS1",
        "console=tty0",
        "\"ubd1=data.cow,data.img\"",
        "time-travel=inf-cpu",
        "ssl-non-raw",
        "FOO=bar",
        "\"QUOTED=a b\"",
        "init=/init",
        "--",
        "arg1",
    ]);
    first.extra_fds = vec![(100, std::os::fd::IntoRawFd::into_raw_fd(ssl1))];
    let mut vm = TestVm::start("dropin-root-fs", first);
    vm.wait_for(&mconsole_line, SHORT);
    let pid = vm.pid();
    assert_eq!(
        pgrp_and_session(pid),
        (pid, pid),
        "kuml leads its own session and process group"
    );
    assert_eq!(
        std::fs::read_to_string(umid_dir.join("pid")).expect("the pid file"),
        format!("{pid}\n")
    );
    let out = vm.wait_for("VFS: Mounted root", BOOT);
    let stdout = vm.stdout();
    assert!(stdout.contains(&mconsole_line), "UML's line on stdout");
    assert!(
        stdout.contains("Creating \"data.cow\" as COW file for \"data.img\""),
        "the quoted ubd1 attached a new COW file, announced on stdout:\n{stdout}"
    );
    assert!(d.join("data.cow").is_file());
    for w in ["time-travel=inf-cpu", "ssl-non-raw"] {
        assert_eq!(
            out.matches(&format!("kuml: {w}: UML option ignored"))
                .count(),
            1,
            "one warning for {w}"
        );
    }
    let cmdline = out
        .lines()
        .find(|l| l.contains("Kernel command line: "))
        .expect("the kernel's command line")
        .to_owned();
    assert!(
        cmdline.contains("FOO=bar \"QUOTED=a b\" init=/init "),
        "unknown words in order, quotes kept: {cmdline}"
    );
    assert!(
        cmdline.trim_end().ends_with("root=/dev/vda -- arg1"),
        "UML's default root (98:0) is root_fs's disk, before init's arguments: {cmdline}"
    );
    assert!(
        !cmdline.contains("ubd1") && !cmdline.contains("time-travel"),
        "kuml's own words are consumed: {cmdline}"
    );
    // UML's console=tty0 is con0: kuml keeps the word, adds console=hvc0 after it and says so
    // once; the kernel log reached con0 (stdout) as well as ssl1.
    assert!(
        cmdline.contains("console=ttyS1 console=tty0 console=hvc0 "),
        "{cmdline}"
    );
    assert_eq!(
        out.matches("kuml: console=tty0: UML's con0, the guest's hvc0 (console=hvc0 added)")
            .count(),
        1,
        "{out}"
    );
    assert!(
        stdout.contains("VFS: Mounted root"),
        "console=tty0 put the kernel log on con0:\n{stdout}"
    );
    let ssl1 = std::fs::read_to_string(d.join("ssl1.txt")).unwrap_or_default();
    assert!(
        ssl1.contains("Kernel command line: "),
        "the kernel log reached ssl1's inherited descriptor:\n{ssl1}"
    );
    // The end of this boot: on PVM init's first system call faults and the kernel panics
    // (exit 4); where user space runs, SIGTERM.
    let code = match host_kind() {
        HostKind::Pvm => vm.wait_exit(BOOT),
        HostKind::Hardware => {
            vm.signal(libc::SIGTERM);
            vm.wait_exit(SHORT)
        }
    };
    assert!(code == 4 || code == 143, "first boot's exit status {code}");
    assert!(!umid_dir.exists(), "the umid directory is removed");
    drop(vm);

    // 2. SIGTERM while the kernel boots, with kuml's default hostfs export (a virtiofsd
    // helper, when installed): the helper is in kuml's group, and no process, socket or
    // directory is left behind.
    let mut vm = TestVm::start(
        "dropin-sigterm",
        VmOptions {
            hostfs: true,
            ..opts(&[])
        },
    );
    vm.wait_for("Linux version", BOOT);
    let pid = vm.pid();
    let helpers = helpers_in_group(pid);
    eprintln!("kuml's helpers: {helpers:?}");
    if which("virtiofsd") {
        assert!(
            helpers.iter().any(|(_, c)| c.starts_with("virtiofsd")),
            "virtiofsd runs in kuml's process group: {helpers:?}"
        );
    }
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit(SHORT), 143, "SIGTERM ends kuml with 128+15");
    assert!(
        group_gone(pid, Duration::from_secs(10)),
        "no process is left in kuml's group: {:?}",
        helpers_in_group(pid)
    );
    assert!(
        !umid_dir.exists(),
        "no umid directory or mconsole socket is left"
    );
    drop(vm);

    // 3. The same umid starts again (no "already in use"); SIGKILL then leaves the umid
    // directory behind, as UML does after a crash, and the helpers go once kuml is gone.
    let mut vm = TestVm::start(
        "dropin-restart",
        VmOptions {
            hostfs: true,
            ..opts(&[])
        },
    );
    let out = vm.wait_for(&mconsole_line, SHORT);
    assert!(!out.contains("already in use"), "{out}");
    let pid = vm.pid();
    vm.signal(libc::SIGKILL);
    assert_eq!(vm.wait_exit(SHORT), 128 + libc::SIGKILL);
    assert!(
        group_gone(pid, Duration::from_secs(10)),
        "no process is left in kuml's group after SIGKILL: {:?}",
        helpers_in_group(pid)
    );
    drop(vm);

    // 4. The stale directory (its pid is dead) is taken over silently.
    let mut vm = TestVm::start("dropin-after-kill", opts(&[]));
    let out = vm.wait_for(&mconsole_line, SHORT);
    assert!(!out.contains("already in use"), "{out}");
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait_exit(SHORT), 143);
    assert!(!umid_dir.exists());
}

/// Whether `prog` is in PATH.
fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// A kuml that already leads its process group (a shell with job control started it as a job):
/// `setsid()` refuses, kuml runs on in its session, its group id still its pid.
#[test]
fn a_group_leader_keeps_its_session() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let umid = format!("leader{}", std::process::id());
    let mut child = Command::new(kuml_bin())
        .args([
            format!("kernel={}", artifact("vmlinux").display()),
            format!("initrd={}", artifact("initramfs.cpio").display()),
            format!("umid={umid}"),
            format!("uml_dir={}", dir.path().display()),
            kuml_e2e::NO_HOSTFS.to_owned(),
        ])
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start kuml");
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped stdout");
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("mconsole (version 2) initialized on"));
    let ids = pgrp_and_session(pid);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait for kuml");
    assert!(line.is_some(), "kuml started");
    assert_eq!(ids.0, pid, "its group id is its pid");
    assert_ne!(ids.1, pid, "it kept the session it was started in");
    assert_eq!(status.code(), Some(143), "{status}");
}

/// A sparse copy of a guest artifact as `dir/name`.
fn sparse_copy(artifact_name: &str, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    let (code, _, err) = run_output(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(artifact(artifact_name))
            .arg(&dst),
    );
    assert_eq!(code, 0, "cp {artifact_name}: {err}");
    dst
}

/// `uml_mconsole <socket> <command>`; the reply must start with OK.
fn mconsole_ok(socket: &Path, command: &str) {
    let (code, out, err) = run_output(Command::new("uml_mconsole").arg(socket).arg(command));
    assert!(
        code == 0 && out.starts_with("OK"),
        "uml_mconsole {command}: {code} {out} {err}"
    );
}

/// Issue 17: UML's names for disks and consoles, as a UML image and its launcher use them.
/// ubd1 and ubd3 only (no ubd0), `root=/dev/ubdb`, `console=tty1` with con1 on a file:
/// kuml says once what console=tty1 became, the root comes from ubd1's image, the kernel
/// console is con1 (the boot log and init's lines are in con1's file); in the guest
/// /dev/ubdb is ubd1, /dev/ubdd is ubd3 (mounted, a file read through it), /dev/tty1 writes
/// to con1, and a disk and a console hot-plugged with the real `uml_mconsole` get their
/// names (/dev/ubdc, /dev/tty2). Needs guest user space (the names come from the guest's
/// init and mdev): the nested lane on PVM hosts.
#[test]
fn uml_names_for_disks_and_consoles() {
    if !kuml_e2e::user_space_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let root = sparse_copy("rootfs.ext4", d, "root.img");
    let data3 = sparse_copy("data.ext4", d, "data3.img");
    let data2 = sparse_copy("data.ext4", d, "data2.img");
    let con1 = d.join("con1.txt");
    let con2 = d.join("con2.txt");
    let umid = format!("names{}", std::process::id());
    let socket = d.join(&umid).join("mconsole");
    let mut vm = TestVm::start(
        "dropin-uml-names",
        VmOptions {
            args: vec![
                format!("kernel={}", artifact("vmlinux").display()),
                "mem=128M".into(),
                "noreboot".into(),
                format!("umid={umid}"),
                format!("uml_dir={}", d.display()),
                format!("ubd1={}", root.display()),
                format!("ubd3={}", data3.display()),
                format!("con1=file:{}", con1.display()),
                "root=/dev/ubdb".into(),
                "console=tty1".into(),
            ],
            agent_tty: Some("hvc0".into()),
            ..VmOptions::default()
        },
    );
    vm.wait_agent(BOOT);
    let out = vm.output();
    assert_eq!(
        out.matches("kuml: console=tty1: UML's con1, the guest's hvc1 (console=hvc1 added)")
            .count(),
        1,
        "kuml says once what console=tty1 became:\n{out}"
    );
    let log = std::fs::read_to_string(&con1).expect("con1's file");
    for want in [
        "Linux version",
        "console=tty1 console=hvc1",
        "root=/dev/vda",
        "VFS: Mounted root (ext4 filesystem)",
        "KUML-INIT: started pid=1",
    ] {
        assert!(
            log.contains(want),
            "con1 is the kernel console and /dev/console: no {want:?} in:\n{log}"
        );
    }
    assert!(
        !vm.stdout().contains("Linux version"),
        "con0 is not the kernel console"
    );
    let names = log
        .lines()
        .find(|l| l.contains("KUML-INIT: uml names"))
        .expect("init's uml names line");
    eprintln!("{names}");
    for want in ["ubdb=vda", "ubdd=vdb", "tty0=hvc0", "tty1=hvc1"] {
        assert!(names.contains(want), "{want} in {names}");
    }

    // The guest's view: the names by unit, /proc/cmdline with the client's words.
    let cmdline = vm.sh_ok("cat /proc/cmdline", SHORT);
    assert!(cmdline.contains("console=tty1 console=hvc1"), "{cmdline}");
    let got = vm.sh_ok(
        "for l in /dev/ubdb /dev/ubdd /dev/tty1; do readlink $l; done; test ! -e /dev/ubda && test ! -e /dev/ubdc && \
         test -x /sbin/uml-names && mkdir -p /mnt/d && mount -t ext4 -o ro /dev/ubdd /mnt/d && \
         cat /mnt/d/hello.txt && umount /mnt/d && echo via-dev-tty1 > /dev/tty1",
        SHORT,
    );
    assert_eq!(
        got, "vda\nvdb\nhvc1\nhello from kuml data disk\n",
        "ubd1 = /dev/ubdb, ubd3 = /dev/ubdd, /dev/tty1 = con1; the root is ubd1's image"
    );
    let log = std::fs::read_to_string(&con1).expect("con1's file");
    assert!(log.contains("via-dev-tty1"), "/dev/tty1 writes to con1");

    // Hot-plug: ubd2 is /dev/ubdc, con2 /dev/tty2.
    mconsole_ok(&socket, &format!("config ubd2={}", data2.display()));
    mconsole_ok(&socket, &format!("config con2=file:{}", con2.display()));
    let got = vm.sh_ok(
        "n=0; while [ ! -b /dev/ubdc ] || [ ! -L /dev/tty2 ]; do n=$((n + 1)); \
         [ $n -lt 1200 ] || exit 1; sleep 0.1; done; readlink /dev/ubdc; readlink /dev/tty2; \
         mount -t ext4 -o ro /dev/ubdc /mnt/d && cat /mnt/d/hello.txt && umount /mnt/d && \
         n=0; until echo via-dev-tty2 > /dev/tty2; do n=$((n + 1)); [ $n -lt 100 ] || exit 2; \
         sleep 0.1; done",
        SHORT,
    );
    assert_eq!(got, "vdc\nhvc2\nhello from kuml data disk\n");
    let deadline = std::time::Instant::now() + SHORT;
    while !std::fs::read_to_string(&con2)
        .unwrap_or_default()
        .contains("via-dev-tty2")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "/dev/tty2 writes to con2's file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Removed, the disk loses its name.
    mconsole_ok(&socket, "remove ubd2");
    vm.sh_ok(
        "n=0; while [ -e /dev/ubdc ] || [ -L /dev/ubdc ]; do n=$((n + 1)); \
         [ $n -lt 600 ] || exit 1; sleep 0.1; done",
        SHORT,
    );
    vm.send(b"999 poweroff\n");
    assert_eq!(vm.wait_exit(SHORT), 0, "poweroff ends kuml with 0");
}
