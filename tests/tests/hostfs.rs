//! hostfs: UML's `mount -t hostfs` and a root on a host directory, on virtio-fs (docs/hostfs.md).
//!
//! Kernel level (the in-kernel agent, every lane): the guest mounts directories of kuml's
//! export with UML's mount data, reads what the host wrote and writes what the host reads;
//! `rootfstype=hostfs rootflags=<dir>` mounts the root there (`VFS: Mounted root (hostfs
//! filesystem)`); escapes through `..`, symbolic links and device nodes fail; with kuml run as
//! an ordinary user, guest root acts as that user on another user's files; mconsole adds and
//! removes shares at run time. User space (the nested lane): the same through busybox's
//! `mount`, the `mount.hostfs` helper, a guest whose init runs from a host directory read-only
//! and read-write, a command whose result reaches the host, `mknod`/`chown`/`chmod` as an
//! ordinary user's guest root.

// An integration test crate: every function here is test code.
#![allow(clippy::tests_outside_test_module)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kuml_e2e::mconsole::Mc;
use kuml_e2e::user::OrdinaryUser;
use kuml_e2e::{
    artifact, hex, kuml_bin, unhex, user_space_or_skip, vmlinux_args, AgentReply, HostKind, TestVm,
    VmOptions,
};

/// Boot under PVM emulation takes minutes on a loaded host; only a hang bound.
const BOOT: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_secs(120);

/// A VM with 256 MiB, hostfs and the test agent on con0, once the agent is ready.
fn agent_vm(name: &str, extra: &[String]) -> TestVm {
    TestVm::with_agent_on_con0(name, vmlinux_args("256M", extra), true, BOOT)
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The text of a guest file, read through the agent.
fn guest_read(vm: &mut TestVm, path: &str) -> String {
    let hexed = vm.agent_ok(&format!("read {path} 0 4096"), SHORT);
    String::from_utf8_lossy(&unhex(&hexed)).into_owned()
}

/// Writes `text` to a guest file through the agent and syncs it to the host.
fn guest_write(vm: &mut TestVm, path: &str, text: &str) {
    vm.agent_ok(&format!("write {path} 0 {}", hex(text.as_bytes())), SHORT);
    vm.agent_ok(&format!("fsync {path}"), SHORT);
}

/// The error (errno name first) of an agent command that must fail.
fn agent_err(vm: &mut TestVm, command: &str) -> String {
    match vm.agent(command, SHORT) {
        AgentReply::Err(e) => e,
        AgentReply::Ok(p) => panic!("{command:?} succeeded ({p:?}) but must fail"),
    }
}

fn poweroff(mut vm: TestVm) {
    let _ = vm.agent("poweroff", SHORT);
    assert_eq!(vm.wait_exit(SHORT), 0);
}

/// An export with files the tests look for, next to a directory that must stay out of reach.
struct Export {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

const SECRET: &str = "outside the export: the guest must never read this\n";

fn export() -> Export {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("export");
    let outside = tmp.path().join("outside");
    write(&root.join("sub/from-host.txt"), "written on the host\n");
    write(&root.join("top.txt"), "top of the export\n");
    write(&outside.join("secret"), SECRET);
    // Symbolic links that point out of the export, absolute and relative.
    std::os::unix::fs::symlink(outside.join("secret"), root.join("sub/abs-link")).unwrap();
    std::os::unix::fs::symlink("../../outside/secret", root.join("sub/rel-link")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("dir-link")).unwrap();
    Export {
        _tmp: tmp,
        root,
        outside,
    }
}

#[test]
fn mount_t_hostfs_reads_and_writes_host_files_and_never_leaves_the_export() {
    let e = export();
    let mut vm = agent_vm(
        "hostfs-mount",
        &[
            format!("initrd={}", artifact("initramfs.cpio").display()),
            format!("hostfs={}", e.root.display()),
        ],
    );
    vm.agent_ok("mkdir /mnt/host", SHORT);
    // UML's mount data: the path alone, as `mount -t hostfs none /mnt/host -o /sub` passes it.
    vm.agent_ok("mount none /mnt/host hostfs /sub", SHORT);
    assert_eq!(
        guest_read(&mut vm, "/mnt/host/from-host.txt"),
        "written on the host\n"
    );
    let text = "written in the guest through hostfs\n";
    guest_write(&mut vm, "/mnt/host/from-guest.txt", text);
    assert_eq!(
        std::fs::read_to_string(e.root.join("sub/from-guest.txt")).unwrap(),
        text,
        "the host reads what the guest wrote"
    );
    // The host changes a file; the guest sees the change.
    write(&e.root.join("sub/from-host.txt"), "changed on the host\n");
    assert_eq!(
        guest_read(&mut vm, "/mnt/host/from-host.txt"),
        "changed on the host\n"
    );
    vm.agent_ok("umount /mnt/host", SHORT);

    // The newer form, hostfs=<path>, and `ro`: writes fail, reads work.
    vm.agent_ok("mount none /mnt/host hostfs ro,hostfs=/sub", SHORT);
    assert_eq!(
        guest_read(&mut vm, "/mnt/host/from-guest.txt"),
        text,
        "ro mount reads"
    );
    let err = agent_err(&mut vm, "write /mnt/host/x 0 00");
    assert!(err.starts_with("EROFS"), "{err}");
    vm.agent_ok("umount /mnt/host", SHORT);

    // The export's root, then a path that does not exist.
    vm.agent_ok("mount none /mnt/host hostfs -", SHORT);
    assert_eq!(
        vm.agent_ok("ls /mnt/host", SHORT)
            .split_whitespace()
            .filter(|n| *n == "sub" || *n == "top.txt")
            .count(),
        2
    );
    vm.agent_ok("umount /mnt/host", SHORT);
    let err = agent_err(&mut vm, "mount none /mnt/host hostfs /no/such/dir");
    assert!(err.starts_with("ENOENT"), "{err}");

    // Escapes from the export fail (in the same boot: each PVM boot costs minutes of CI).
    // `..` in the mount data stops at the export's root.
    vm.agent_ok("mount none /mnt/host hostfs /../../..", SHORT);
    assert_eq!(
        guest_read(&mut vm, "/mnt/host/top.txt"),
        "top of the export\n"
    );
    let names = vm.agent_ok("ls /mnt/host", SHORT);
    assert!(!names.contains("outside"), "{names}");
    vm.agent_ok("umount /mnt/host", SHORT);
    // Links out of the export: an absolute target is resolved in the guest (not on the host),
    // a relative one stops at the export's root.
    vm.agent_ok("mount none /mnt/host hostfs /", SHORT);
    for link in ["sub/abs-link", "sub/rel-link", "dir-link/secret"] {
        match vm.agent(&format!("read /mnt/host/{link} 0 4096"), SHORT) {
            AgentReply::Ok(h) => assert!(
                !String::from_utf8_lossy(&unhex(&h)).contains("outside the export"),
                "{link} reached the secret"
            ),
            AgentReply::Err(err) => assert!(err.starts_with("ENOENT"), "{link}: {err}"),
        }
    }
    // A path that names a link out of the export is no way out either.
    vm.agent_ok("mkdir /mnt/other", SHORT);
    match vm.agent("mount none /mnt/other hostfs /dir-link", SHORT) {
        AgentReply::Ok(_) => {
            let names = vm.agent_ok("ls /mnt/other", SHORT);
            assert!(!names.contains("secret"), "{names}");
        }
        AgentReply::Err(err) => assert!(err.starts_with("ENOENT"), "{err}"),
    }
    // A host device node in the export opens the guest's device, not the host's: the host's
    // /dev/kvm (10:232) has no driver in the guest.
    let node = e.root.join("kvm");
    let made = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "10", "232"])
        .status()
        .unwrap();
    if made.success() {
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = agent_err(&mut vm, "read /mnt/host/kvm 0 16");
        // (The kernel agent names the errno; the user agent maps busybox's "No such device
        // [or address]" to ENOENT and keeps the message.)
        assert!(
            err.starts_with("ENODEV") || err.starts_with("ENXIO") || err.contains("No such device"),
            "the host's /dev/kvm node: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(e.outside.join("secret")).unwrap(),
        SECRET
    );
    poweroff(vm);
}

/// A host directory as the guest's root: the busybox tree of the test initramfs, unpacked.
fn root_tree(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let cpio = std::fs::File::open(artifact("initramfs.cpio")).unwrap();
    let st = std::process::Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames"])
        .current_dir(dir)
        .stdin(cpio)
        .status()
        .unwrap();
    assert!(st.success(), "cpio failed");
    write(
        &dir.join("etc/kuml-root-proof"),
        "root on a host directory\n",
    );
    std::fs::create_dir_all(dir.join("dev")).unwrap();
}

#[test]
fn root_on_a_host_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    root_tree(&export.join("srv/root"));
    let words = ["rootfstype=hostfs", "rootflags=/srv/root", "rw"];
    let mut args = vec![format!("hostfs={}", export.display())];
    args.extend(words.iter().map(|w| w.to_string()));
    let mut vm = agent_vm("hostfs-root", &args);
    let out = vm.output();
    assert!(
        out.contains("VFS: Mounted root (hostfs filesystem)"),
        "no hostfs root in the kernel log"
    );
    assert_eq!(
        guest_read(&mut vm, "/etc/kuml-root-proof"),
        "root on a host directory\n"
    );
    vm.agent_ok("mount proc /proc proc -", SHORT);
    let cmdline = guest_read(&mut vm, "/proc/cmdline");
    for w in words {
        assert!(
            cmdline.split_whitespace().any(|x| x == w),
            "/proc/cmdline lacks {w}: {cmdline}"
        );
    }
    let text = "written to the root\n";
    guest_write(&mut vm, "/root/from-guest", text);
    assert_eq!(
        std::fs::read_to_string(export.join("srv/root/root/from-guest")).unwrap(),
        text
    );
    poweroff(vm);
}

fn user_poweroff(mut vm: TestVm) {
    vm.send(b"999 poweroff\n");
    assert_eq!(vm.wait_exit(SHORT), 0);
}

#[test]
fn user_space_mounts_with_busybox_and_the_helper() {
    if !user_space_or_skip() {
        return;
    }
    let e = export();
    let mut vm = agent_vm(
        "hostfs-user",
        &[
            format!("initrd={}", artifact("initramfs.cpio").display()),
            format!("hostfs={}", e.root.display()),
        ],
    );
    // UML's command, unchanged, through busybox mount(8).
    let out = vm.sh_ok(
        "mkdir -p /mnt/host && mount -t hostfs none /mnt/host -o /sub && \
         cat /mnt/host/from-host.txt && echo 'from guest user space' > /mnt/host/from-guest.txt && \
         sync && grep ' /mnt/host ' /proc/mounts",
        SHORT,
    );
    assert!(out.contains("written on the host"), "{out}");
    assert!(out.contains("none /mnt/host hostfs rw"), "{out}");
    assert_eq!(
        std::fs::read_to_string(e.root.join("sub/from-guest.txt")).unwrap(),
        "from guest user space\n"
    );
    let info = vm.sh_ok("grep ' /mnt/host ' /proc/self/mountinfo", SHORT);
    assert!(info.split_whitespace().nth(3) == Some("/sub"), "{info}");
    // A command whose result reaches the host.
    vm.sh_ok("ls -la / > /mnt/host/guest-ls.txt; sync", SHORT);
    let ls = std::fs::read_to_string(e.root.join("sub/guest-ls.txt")).unwrap();
    assert!(ls.contains("proc"), "{ls}");
    // Escapes from user space: `..` above the mount is the guest's own tree; mknod as guest
    // root goes to the host as kuml's user (root here: allowed), so it is tested below with
    // an ordinary user.
    let (status, out) = vm.sh("cat /mnt/host/rel-link /mnt/host/abs-link", SHORT);
    assert_ne!(status, 0);
    assert!(!out.contains("outside the export"), "{out}");
    vm.sh_ok("umount /mnt/host", SHORT);

    // The helper for stock kernels, as mount(8) would run it: virtio-fs underneath.
    let out = vm.sh_ok(
        "mkdir -p /mnt/h2 && mount.hostfs none /mnt/h2 -o /sub,ro && \
         cat /mnt/h2/from-guest.txt && grep ' /mnt/h2 ' /proc/mounts",
        SHORT,
    );
    assert!(out.contains("from guest user space"), "{out}");
    assert!(out.contains(" /mnt/h2 virtiofs ro"), "{out}");
    let (status, out) = vm.sh("touch /mnt/h2/nope", SHORT);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (status, out) = vm.sh("mount.hostfs none /mnt/h2 -o /dir-link", SHORT);
    assert_ne!(status, 0, "{out}");
    vm.sh_ok("umount /mnt/h2", SHORT);
    user_poweroff(vm);
}

#[test]
fn user_space_on_a_read_write_host_root() {
    if !user_space_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    root_tree(&export.join("guests/one"));
    let mut vm = agent_vm(
        "hostfs-root-rw",
        &[
            format!("hostfs={}", export.display()),
            "rootfstype=hostfs".into(),
            "rootflags=/guests/one".into(),
            "rw".into(),
        ],
    );
    let cmdline = vm.sh_ok("cat /proc/cmdline", SHORT);
    assert!(
        cmdline.contains("rootfstype=hostfs rootflags=/guests/one rw"),
        "{cmdline}"
    );
    vm.sh_ok("hostname > /etc/written-in-guest && sync", SHORT);
    assert_eq!(
        std::fs::read_to_string(export.join("guests/one/etc/written-in-guest")).unwrap(),
        "kuml-guest\n"
    );
    user_poweroff(vm);
}

#[test]
fn user_space_on_a_read_only_host_root_and_a_result_through_hostfs() {
    if !user_space_or_skip() {
        return;
    }
    assert_eq!(kuml_e2e::host_kind(), HostKind::Hardware);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    root_tree(&root);
    let results = tmp.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    // The mount point, made on the host: the guest cannot make it on its read-only root.
    std::fs::create_dir_all(root.join("mnt/results")).unwrap();
    // The root's export is read-only; a second share takes the result.
    let mut vm = agent_vm(
        "hostfs-root-ro",
        &[
            format!("hostfs={},ro", root.display()),
            format!("hostfs1={},tag=results", results.display()),
            "rootfstype=hostfs".into(),
            "ro".into(),
        ],
    );
    let mounts = vm.sh_ok("cat /proc/mounts", SHORT);
    assert!(
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"/") && f.get(2) == Some(&"hostfs")
        }),
        "{mounts}"
    );
    let (status, out) = vm.sh("echo x > /etc/written-in-guest", SHORT);
    assert_ne!(status, 0, "a read-only root took a write: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    vm.sh_ok(
        "mount -t virtiofs results /mnt/results && \
         uname -a > /mnt/results/uname.txt && sync",
        SHORT,
    );
    let uname = std::fs::read_to_string(results.join("uname.txt")).unwrap();
    assert!(uname.contains("kuml"), "{uname}");
    assert!(!root.join("etc/written-in-guest").exists());
    user_poweroff(vm);
}

/// Issue 18 item 6 with kuml run as an ordinary user (the e2e fixture's `kuml-test`, who may
/// use /dev/kvm through group `kvm`, as on Debian): the share holds files of another user
/// (root), and guest root acts on them as kuml's user, never as root. Kernel level (every
/// lane, the in-kernel agent): guest root cannot read root's `0600` file nor write to it, nor
/// create a file in root's `0755` directory; what it creates is owned by kuml's user on the
/// host; no root warning. User space (where it runs): `mknod` of a host disk's numbers makes no
/// node on the host, `chown`/`chmod` of root's files fail.
#[test]
fn an_ordinary_users_guest_cannot_escape() {
    // Declared first: dropped after the VM (the fixture's last user undoes its host changes).
    let user = OrdinaryUser::new();
    if !user.may_make_user_namespace() {
        kuml_e2e::skip("an ordinary user cannot make a user namespace here (virtiofsd's sandbox)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    open(tmp.path(), 0o755).unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::os::unix::fs::chown(&share, Some(user.uid), Some(user.gid)).unwrap();
    // Another user's (root's) private file and directory inside the share.
    write(&share.join("private"), "root's private file\n");
    open(&share.join("private"), 0o600).unwrap();
    std::fs::create_dir(share.join("roots-dir")).unwrap();
    open(&share.join("roots-dir"), 0o755).unwrap();
    let (wrapper, env) = user.wrapper();
    let mut vm = TestVm::start(
        "hostfs-user",
        VmOptions {
            args: vec![
                format!("kernel={}", user.reachable(&artifact("vmlinux")).display()),
                format!(
                    "initrd={}",
                    user.reachable(&artifact("initramfs.cpio")).display()
                ),
                "mem=256M".to_owned(),
                "noreboot".to_owned(),
                format!("hostfs={}", share.display()),
            ],
            agent_tty: Some("hvc0".into()),
            wrapper,
            env,
            hostfs: true,
            cwd: Some(user.home.clone()),
            program: Some(user.reachable(&kuml_bin())),
            ..VmOptions::default()
        },
    );
    vm.wait_agent(BOOT);
    assert!(
        !vm.output().contains("with root's rights"),
        "the root warning is for root only"
    );
    vm.agent_ok("mkdir /mnt/host", SHORT);
    vm.agent_ok("mount none /mnt/host hostfs /", SHORT);
    // Guest root is kuml's user on the host.
    let err = agent_err(&mut vm, "read /mnt/host/private 0 4096");
    assert!(
        err.starts_with("EACCES"),
        "guest root read another user's file: {err}"
    );
    let err = agent_err(&mut vm, "write /mnt/host/private 0 00");
    assert!(err.starts_with("EACCES"), "{err}");
    let err = agent_err(&mut vm, "write /mnt/host/roots-dir/x 0 00");
    assert!(err.starts_with("EACCES"), "{err}");
    assert!(!share.join("roots-dir/x").exists());
    guest_write(&mut vm, "/mnt/host/made-by-guest-root", "mine\n");
    let made = std::fs::metadata(share.join("made-by-guest-root")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (made.uid(), made.gid()),
        (user.uid, user.gid),
        "guest root writes as kuml's user"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("private")).unwrap(),
        "root's private file\n"
    );

    if kuml_e2e::user_space_part_or_skip("mknod, chown and chmod from guest user space") {
        let (status, out) = vm.sh("cat /mnt/host/private", SHORT);
        assert_ne!(status, 0, "guest root read another user's file: {out}");
        assert!(out.contains("Permission denied"), "{out}");
        let (status, out) = vm.sh("mknod /mnt/host/sda b 8 0", SHORT);
        assert_ne!(status, 0, "a device node was made on the host: {out}");
        assert!(!share.join("sda").exists());
        // kuml squashes every guest uid and gid onto its user's (virtiofsd --translate-uid
        // squash-guest): a guest `chown` succeeds and changes nothing on the host, whatever
        // owner it names.
        for owner in ["0:0", "1234:1234"] {
            let (status, out) = vm.sh(
                &format!("chown {owner} /mnt/host/made-by-guest-root"),
                SHORT,
            );
            eprintln!("guest: chown {owner} -> {status} {out}");
            let made = std::fs::metadata(share.join("made-by-guest-root")).unwrap();
            assert_eq!(
                (made.uid(), made.gid()),
                (user.uid, user.gid),
                "chown {owner} from the guest changed the host owner"
            );
        }
        let (status, out) = vm.sh("chmod 777 /mnt/host/private", SHORT);
        assert_ne!(status, 0, "{out}");
        let mode = std::fs::metadata(share.join("private")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    vm.agent_ok("umount /mnt/host", SHORT);
    poweroff(vm);
}

/// `uml_mconsole <socket> <command>` (Debian's real client): its output, without the line end,
/// and exit code. A hot-plug reply waits for the guest (kuml gives it at most 180 s; the call's
/// bound is [`kuml_e2e::mconsole::CALL`]).
fn mconsole(socket: &Path, command: &str) -> (String, i32) {
    let (out, code) = Mc::Uml.run(socket, command);
    (out.trim_end().to_owned(), code)
}

fn mconsole_expect(socket: &Path, command: &str, line: &str, code: i32) {
    assert_eq!(
        mconsole(socket, command),
        (line.to_owned(), code),
        "reply to {command:?}"
    );
}

/// The virtiofsd processes (pids) that serve `dir`, found by their `--shared-dir=` argument.
fn daemons_of(dir: &Path) -> Vec<u32> {
    let want = format!("--shared-dir={}", dir.display());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_daemon = args.first().is_some_and(|a| a.ends_with(b"virtiofsd"));
        if is_daemon && args.contains(&want.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits (a bounded while) until no virtiofsd serves `dir`; returns the ones left.
fn daemons_gone(dir: &Path) -> Vec<u32> {
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = daemons_of(dir);
        if left.is_empty() || std::time::Instant::now() >= until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 18 item 4: mconsole `config` adds a share at run time and `remove` takes it away,
/// with the command line's syntax (`config hostfs=<dir>`, `config hostfs<N>=<dir>[,flags]`,
/// `remove hostfs<N>`), through the real `uml_mconsole`. Kernel level (every lane): the
/// guest kernel enumerates each new virtio-fs device (`[1af4:105a]`), the reply comes once
/// its driver has started it, the guest mounts it (the default export through UML's `hostfs`
/// type, the other as `virtiofs` by its tag) and reads and writes host files; errors come in
/// UML's style (a negative errno, kuml's words); after `remove` the daemon is gone and the
/// guest kernel no longer knows the tag; the slot and the tag can be used again, and the
/// daemons end with the VM. User space (the nested lane): busybox's `mount -t hostfs` and
/// `mount -t virtiofs` on the hot-plugged shares, and a command's output reaching the host.
#[test]
fn mconsole_adds_and_removes_shares() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let export = base.join("export");
    let data = base.join("data");
    write(
        &export.join("sub/from-host.txt"),
        "export, written on the host\n",
    );
    write(&data.join("from-host.txt"), "data, written on the host\n");
    let uml_dir = base.join("uml");
    std::fs::create_dir(&uml_dir).unwrap();
    let umid = "hostfs-hotplug";
    // No share at boot: each one comes over mconsole.
    let mut vm = agent_vm(
        "hostfs-hotplug",
        &[
            format!("initrd={}", artifact("initramfs.cpio").display()),
            "nohostfs".into(),
            format!("umid={umid}"),
            format!("uml_dir={}", uml_dir.display()),
        ],
    );
    let sock = uml_dir.join(umid).join("mconsole");
    assert!(sock.exists(), "no mconsole socket at {}", sock.display());
    const VIRTIO_FS_PCI: &str = "[1af4:105a]";
    let plugged = |out: &str| out.matches(VIRTIO_FS_PCI).count();
    assert_eq!(
        plugged(&vm.output()),
        0,
        "nohostfs: no virtio-fs device at boot"
    );
    mconsole_expect(&sock, "config hostfs", "OK", 0);

    // The default export, as `hostfs=` on the command line: the guest's hostfs type mounts it.
    mconsole_expect(
        &sock,
        &format!("config hostfs={}", export.display()),
        "OK",
        0,
    );
    vm.wait_until(SHORT, |o| plugged(o) >= 1)
        .unwrap_or_else(|| panic!("the guest kernel did not enumerate the share"));
    // (virtiofsd forks into its sandbox: two processes per share.)
    assert!(
        !daemons_of(&export).is_empty(),
        "a virtiofsd for the export"
    );
    mconsole_expect(
        &sock,
        "config hostfs",
        &format!("OK {}", export.display()),
        0,
    );
    vm.agent_ok("mkdir /mnt/host", SHORT);
    vm.agent_ok("mount none /mnt/host hostfs /sub", SHORT);
    assert_eq!(
        guest_read(&mut vm, "/mnt/host/from-host.txt"),
        "export, written on the host\n"
    );

    // Another share, read-only, with its own tag.
    mconsole_expect(
        &sock,
        &format!("config hostfs1={},ro,tag=hotdata", data.display()),
        "OK",
        0,
    );
    vm.wait_until(SHORT, |o| plugged(o) >= 2)
        .unwrap_or_else(|| panic!("the guest kernel did not enumerate hostfs1"));
    mconsole_expect(
        &sock,
        "config hostfs1",
        &format!("OK {},ro,tag=hotdata", data.display()),
        0,
    );
    vm.agent_ok("mkdir /mnt/data", SHORT);
    vm.agent_ok("mount hotdata /mnt/data virtiofs -", SHORT);
    assert_eq!(
        guest_read(&mut vm, "/mnt/data/from-host.txt"),
        "data, written on the host\n"
    );
    let err = agent_err(&mut vm, "write /mnt/data/nope 0 00");
    assert!(
        err.starts_with("EROFS"),
        "a read-only share took a write: {err}"
    );

    // Errors, in UML's style (uml_mconsole exits with the low byte of the error number).
    mconsole_expect(
        &sock,
        &format!("config hostfs1={}", data.display()),
        "ERR Device is already configured",
        256 - libc::EBUSY,
    );
    mconsole_expect(
        &sock,
        &format!("config hostfs2={}", base.join("missing").display()),
        &format!(
            "ERR hostfs2: cannot share {}: No such file or directory (os error 2)",
            base.join("missing").display()
        ),
        256 - libc::ENOENT,
    );
    mconsole_expect(
        &sock,
        &format!("config hostfs3={},tag=hotdata", export.display()),
        "ERR cannot add hostfs3: hostfs1 and hostfs3 both have the tag 'hotdata'",
        256 - libc::EEXIST,
    );
    mconsole_expect(
        &sock,
        "config hostfs1=/x,rx",
        "ERR hostfs1: unknown flag 'rx' (ro, rw, tag=<tag> or append)",
        256 - libc::EINVAL,
    );
    mconsole_expect(
        &sock,
        "remove hostfs2",
        "ERR Device doesn't exist",
        256 - libc::ENODEV,
    );
    assert_eq!(
        plugged(&vm.output()),
        2,
        "a refused share reached the guest"
    );

    if kuml_e2e::user_space_part_or_skip("busybox mount on hot-plugged shares") {
        let out = vm.sh_ok(
            "mkdir -p /mnt/u1 /mnt/u2 && mount -t hostfs none /mnt/u1 -o /sub && \
             mount -t virtiofs hotdata /mnt/u2 && cat /mnt/u2/from-host.txt && \
             uname -r > /mnt/u1/uname-from-guest.txt && sync && \
             grep -E ' /mnt/u[12] ' /proc/mounts && umount /mnt/u1 /mnt/u2",
            SHORT,
        );
        assert!(out.contains("data, written on the host"), "{out}");
        assert!(out.contains("none /mnt/u1 hostfs rw"), "{out}");
        assert!(out.contains("hotdata /mnt/u2 virtiofs "), "{out}");
        let uname = std::fs::read_to_string(export.join("sub/uname-from-guest.txt")).unwrap();
        assert!(uname.contains("kuml"), "{uname}");
    }

    // Removal: answered once the guest ejected the slot, the daemon stopped by then.
    vm.agent_ok("umount /mnt/data", SHORT);
    let data_daemons = daemons_of(&data);
    assert!(!data_daemons.is_empty(), "hostfs1 has a virtiofsd");
    mconsole_expect(&sock, "remove hostfs1", "OK", 0);
    assert_eq!(
        daemons_gone(&data),
        Vec::<u32>::new(),
        "hostfs1's virtiofsd after remove"
    );
    mconsole_expect(&sock, "config hostfs1", "OK", 0);
    mconsole_expect(
        &sock,
        "remove hostfs1",
        "ERR Device doesn't exist",
        256 - libc::ENODEV,
    );
    // The guest kernel no longer has the tag.
    let err = agent_err(&mut vm, "mount hotdata /mnt/data virtiofs -");
    assert!(err.starts_with("EINVAL"), "{err}");
    vm.wait_for("virtio-fs: tag <hotdata> not found", SHORT);
    // The export stays, with its mount.
    assert!(!daemons_of(&export).is_empty());
    guest_write(&mut vm, "/mnt/host/after-remove.txt", "still there\n");
    assert_eq!(
        std::fs::read_to_string(export.join("sub/after-remove.txt")).unwrap(),
        "still there\n"
    );

    // The slot and the tag again, on another directory.
    mconsole_expect(
        &sock,
        &format!(
            "config hostfs1={},tag=hotdata",
            export.join("sub").display()
        ),
        "OK",
        0,
    );
    vm.wait_until(SHORT, |o| plugged(o) >= 3)
        .unwrap_or_else(|| panic!("the guest kernel did not enumerate hostfs1 again"));
    vm.agent_ok("mount hotdata /mnt/data virtiofs -", SHORT);
    assert_eq!(
        guest_read(&mut vm, "/mnt/data/after-remove.txt"),
        "still there\n"
    );
    vm.agent_ok("umount /mnt/data", SHORT);

    // A share removed while the guest has it mounted: the guest lets the device go (the host
    // cannot see the mount), and the mount's files fail with an error instead of hanging.
    mconsole_expect(&sock, "remove hostfs", "OK", 0);
    assert_eq!(
        daemons_gone(&export),
        Vec::<u32>::new(),
        "the export's virtiofsd after remove"
    );
    match vm.agent("read /mnt/host/after-remove.txt 0 4096", SHORT) {
        AgentReply::Err(e) => eprintln!("a file of the removed share: {e}"),
        AgentReply::Ok(h) => {
            // Still in the guest's page cache; a new file must reach the daemon.
            eprintln!("cached: {:?}", String::from_utf8_lossy(&unhex(&h)));
            let e = agent_err(&mut vm, "write /mnt/host/after-eject.txt 0 00");
            eprintln!("a new file on the removed share: {e}");
        }
    }
    assert!(!export.join("sub/after-eject.txt").exists());
    let _ = vm.agent("umount /mnt/host", SHORT);
    mconsole_expect(&sock, "config hostfs", "OK", 0);

    // The daemons end with the VM.
    let pid = vm.pid();
    poweroff(vm);
    assert_eq!(
        daemons_gone(&export.join("sub")),
        Vec::<u32>::new(),
        "kuml {pid} left a virtiofsd"
    );
}

/// A share's virtiofsd starts off the event loop: with a "virtiofsd" that never answers the
/// vhost-user handshake (`KUML_VIRTIOFSD`, a script that only sleeps), `config hostfs1=` waits
/// for it (up to virtiofsd's request timeout, then an error reply), while kuml goes on: another
/// mconsole client gets its answers, the guest's console works, a second `config` of the same
/// share is refused as busy. Kernel level (every lane).
#[test]
fn a_share_whose_daemon_never_answers_holds_up_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let mute = base.join("mute-virtiofsd");
    let started = base.join("mute-started");
    write(
        &mute,
        &format!(
            "#!/bin/sh\n# holds the vhost-user socket kuml gave it and says nothing\n\
             : > '{}'\nexec sleep 3600\n",
            started.display()
        ),
    );
    std::fs::set_permissions(&mute, std::fs::Permissions::from_mode(0o755)).unwrap();
    let share = base.join("share");
    std::fs::create_dir(&share).unwrap();
    let uml_dir = base.join("uml");
    std::fs::create_dir(&uml_dir).unwrap();
    let umid = "hostfs-mute";
    let mut vm = TestVm::start(
        "hostfs-mute",
        VmOptions {
            args: vmlinux_args(
                "256M",
                &[
                    format!("initrd={}", artifact("initramfs.cpio").display()),
                    format!("umid={umid}"),
                    format!("uml_dir={}", uml_dir.display()),
                ],
            ),
            agent_tty: Some("hvc0".into()),
            env: vec![("KUML_VIRTIOFSD".into(), mute.display().to_string())],
            ..VmOptions::default()
        },
    );
    vm.wait_agent(BOOT);
    let sock = uml_dir.join(umid).join("mconsole");
    let config = format!("config hostfs1={}", share.display());
    let waiting = {
        let (sock, config) = (sock.clone(), config.clone());
        std::thread::spawn(move || mconsole(&sock, &config))
    };
    // While that request waits for the daemon: kuml answers others, the guest's console works.
    let deadline = std::time::Instant::now() + SHORT;
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the mute daemon never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (version, code) = mconsole(&sock, "version");
    assert_eq!(code, 0, "{version}");
    assert!(version.starts_with("OK "), "{version}");
    assert_eq!(vm.agent_ok("echo the-loop-runs", SHORT), "the-loop-runs");
    let (busy, code) = mconsole(&sock, &config);
    assert_eq!(
        (busy.as_str(), code),
        ("ERR Device is currently open", 256 - libc::EBUSY),
        "a second config of a share still starting"
    );
    assert!(
        !waiting.is_finished(),
        "the request did not wait for the daemon"
    );
    // virtiofsd's request timeout ends the wait with an error; nothing was plugged.
    let (reply, code) = waiting.join().unwrap();
    assert_ne!(code, 0, "{reply}");
    assert!(reply.starts_with("ERR hostfs1"), "{reply}");
    mconsole_expect(&sock, "config hostfs1", "OK", 0);
    assert!(!vm.output().contains("[1af4:105a]"), "a share was plugged");
    poweroff(vm);
}
