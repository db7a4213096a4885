//! ubd disks: a read-write root on a UML COW file (merged afterwards with `kuml-moo` and the
//! real `uml_moo`), UML's host lock and backing-file mtime check, crash consistency of the COW
//! bitmap under SIGKILL, and a raw data disk as ubd1.

// An integration test crate: every function here is test code.
#![allow(clippy::tests_outside_test_module)]

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use kuml_e2e::mconsole::Mc;
use kuml_e2e::{
    artifact, hex, kuml_bin, run_ok as run, unhex, vmlinux_args, TestVm, VmOptions, NO_HOSTFS,
};

/// Boot under PVM emulation takes ~35-60 s to the agent alone, minutes on a loaded host; these
/// bounds only catch hangs.
const BOOT: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_secs(120);
/// Sustained disk writes in the emulated guest are slow; only a hang bound.
const FILL: Duration = Duration::from_secs(600);

/// A file the tests write into the guest's root file system.
const PROOF_PATH: &str = "/kuml-ubd-proof.txt";
const PROOF: &str = "written by kuml-e2e ubd test through a COW root\n";

/// A host tool from the workspace's target directory (`cargo build -p ubd --bins`).
fn ubd_tool(name: &str) -> PathBuf {
    let p = kuml_bin().with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p ubd --bins`",
        p.display()
    );
    p
}

/// A sparse copy of a guest artifact in `dir`.
fn copy_artifact(name: &str, dir: &Path) -> PathBuf {
    let dst = dir.join(name);
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(artifact(name))
        .arg(&dst));
    dst
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_owned()
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
}

/// Byte-for-byte comparison of two files.
fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("open a"),
        std::fs::File::open(b).expect("open b"),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).expect("read a");
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).expect("read b");
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// kuml arguments common to every test VM.
fn base_args(extra: &[String]) -> Vec<String> {
    vmlinux_args("128M", extra)
}

/// A VM with the test agent on con0 (hvc0); returns once the agent is ready.
fn agent_vm(name: &str, extra: &[String]) -> TestVm {
    TestVm::with_agent_on_con0(name, base_args(extra), false, BOOT)
}

/// Root from the initramfs, a small scratch disk as ubd0 so the disk under test is ubd1 (vdb).
fn initrd_with_ubd1(dir: &Path, ubd1: &str) -> Vec<String> {
    let scratch = dir.join("scratch.img");
    std::fs::File::create(&scratch)
        .and_then(|f| f.set_len(1 << 20))
        .expect("create scratch.img");
    vec![
        format!("initrd={}", artifact("initramfs.cpio.gz").display()),
        format!("ubd0={}", scratch.display()),
        format!("ubd1={ubd1}"),
    ]
}

fn poweroff(vm: &mut TestVm) {
    vm.send(b"999 poweroff\n");
    assert_eq!(vm.wait_exit(SHORT), 0, "agent poweroff exits 0");
}

/// Issue "ubd disks" 1: root read-write on a COW file; the backing file is untouched, the COW
/// file holds the change, and `kuml-moo` and the real `uml_moo` merge it to the same clean
/// ext4 image that contains the file the guest wrote.
#[test]
fn cow_root_rw_write_then_merge_with_kuml_moo_and_uml_moo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = copy_artifact("rootfs.ext4", dir.path());
    let cow = dir.path().join("root.cow");
    let hash_before = sha256(&backing);
    let mtime_before = mtime(&backing);

    let mut vm = agent_vm(
        "ubd-cow-root",
        &[
            format!("ubd0={},{}", cow.display(), backing.display()),
            "rw".to_owned(),
        ],
    );
    let out = vm.output();
    assert!(
        out.contains("EXT4-fs (vda): mounted"),
        "ext4 root on vda:\n{out}"
    );
    assert!(out.contains("VFS: Mounted root"), "root mounted:\n{out}");
    assert!(cow.is_file(), "kuml created the COW file {}", cow.display());

    let data = PROOF.as_bytes();
    assert_eq!(
        vm.agent_ok(&format!("write {PROOF_PATH} 0 {}", hex(data)), SHORT),
        data.len().to_string()
    );
    vm.agent_ok(&format!("fsync {PROOF_PATH}"), SHORT);
    vm.agent_ok("sync", SHORT);
    let back = vm.agent_ok(&format!("read {PROOF_PATH} 0 4096"), SHORT);
    assert_eq!(unhex(&back), data, "read back what was written");
    assert_eq!(
        vm.agent_ok(&format!("stat {PROOF_PATH}"), SHORT),
        data.len().to_string()
    );
    // Remount read-only so ext4 checkpoints its journal and marks the file system clean.
    vm.agent_ok("mount none / - remount,ro", SHORT);
    poweroff(&mut vm);

    assert_eq!(
        sha256(&backing),
        hash_before,
        "backing file bytes unchanged"
    );
    assert_eq!(
        mtime(&backing),
        mtime_before,
        "backing file mtime unchanged"
    );

    // The COW file is a v3 header for the backing file with bits set for the written sectors.
    let img = ubd::open_image(&cow, Some(&backing), &ubd::ImageOptions::default())
        .unwrap_or_else(|e| panic!("reopen {}: {e}", cow.display()));
    let ubd::Image::Cow(c) = &img else {
        panic!("{} is not a COW image", cow.display())
    };
    assert_eq!(c.header().version, ubd::CowVersion::V3);
    let set: u32 = c.bitmap().unwrap().iter().map(|b| b.count_ones()).sum();
    assert!(set > 0, "the COW bitmap records written sectors");
    drop(img);

    let merged_k = dir.path().join("merged-kuml.img");
    let merged_u = dir.path().join("merged-uml.img");
    run(Command::new(ubd_tool("kuml-moo")).arg(&cow).arg(&merged_k));
    run(Command::new("uml_moo").arg(&cow).arg(&merged_u));
    assert!(
        same_bytes(&merged_k, &merged_u),
        "kuml-moo and uml_moo produce identical images"
    );
    assert!(
        !same_bytes(&merged_k, &backing),
        "the merge differs from the backing file"
    );
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&merged_k)
        .output()
        .expect("run e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the merged image:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {PROOF_PATH}"))
        .arg(&merged_k));
    assert_eq!(
        cat, PROOF,
        "the merged image holds the file the guest wrote"
    );
}

/// Issue "ubd disks" 2: a second kuml on a COW file that a running kuml uses is refused with
/// UML's lock messages, naming the file and the holder.
#[test]
fn second_kuml_on_the_same_cow_is_refused_by_the_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = copy_artifact("rootfs.ext4", dir.path());
    let cow = dir.path().join("root.cow");
    let spec = format!("ubd0={},{}", cow.display(), backing.display());
    let mut vm = agent_vm("ubd-lock", std::slice::from_ref(&spec));
    // The guest is using the disk (root is mounted) while the second kuml starts.
    assert_eq!(vm.agent_ok("echo first guest up", SHORT), "first guest up");

    let start = Instant::now();
    let mut child = Command::new(kuml_bin())
        .args(base_args(&[spec, NO_HOSTFS.to_owned()]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the second kuml");
    // It must fail at once; a second guest that boots instead is killed after SHORT.
    while child.try_wait().expect("wait").is_none() && start.elapsed() < SHORT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let second = child.wait_with_output().expect("collect the second kuml");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && second.status.code().is_some(),
        "the second kuml must fail with an exit code, got {} after {:?}:\n{err}",
        second.status,
        start.elapsed()
    );
    let cow_s = cow.display().to_string();
    assert!(
        err.contains(&format!(
            "F_SETLK failed, file already locked by pid {}",
            vm.pid()
        )),
        "UML's F_SETLK message naming the first kuml's pid:\n{err}"
    );
    assert!(
        err.contains(&format!("Failed to lock '{cow_s}', err = 11")),
        "UML's 'Failed to lock' message naming the COW file:\n{err}"
    );
    assert!(
        !err.contains("Linux version"),
        "the second guest never started"
    );

    // The first guest is unaffected.
    assert_eq!(vm.agent_ok("echo still here", SHORT), "still here");
    poweroff(&mut vm);
}

/// Issue "ubd disks" 3: after the backing file's mtime changes, kuml refuses the COW file with
/// UML's message (header mtime first, then the file's), like UML and `uml_moo`.
#[test]
fn touched_backing_file_is_refused_with_the_mtime_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = copy_artifact("data.ext4", dir.path());
    let cow = dir.path().join("data.cow");
    run(Command::new(ubd_tool("kuml-mkcow")).arg(&cow).arg(&backing));
    let header_mtime = std::fs::metadata(&backing).unwrap().mtime();
    // `touch` (explicit time, so the test does not depend on the clock ticking a second).
    let touched = header_mtime + 100;
    run(Command::new("touch")
        .arg("-d")
        .arg(format!("@{touched}"))
        .arg(&backing));
    let msg = format!("mtime mismatch ({header_mtime} vs {touched}) of COW header vs backing file");

    let mut vm = TestVm::start(
        "ubd-mtime",
        VmOptions {
            args: base_args(&[
                format!("initrd={}", artifact("initramfs.cpio.gz").display()),
                format!("ubd0={},{}", cow.display(), backing.display()),
            ]),
            ..VmOptions::default()
        },
    );
    let code = vm.wait_exit(SHORT);
    let out = vm.output();
    assert_ne!(code, 0, "kuml must refuse the COW file:\n{out}");
    assert!(out.contains(&msg), "UML's mtime message {msg:?}:\n{out}");
    assert!(
        !out.contains("Linux version"),
        "the guest never started:\n{out}"
    );

    // The real uml_moo agrees.
    let moo = Command::new("uml_moo")
        .arg(&cow)
        .arg(dir.path().join("merged.img"))
        .output()
        .expect("run uml_moo");
    assert!(!moo.status.success(), "uml_moo refuses it too");
}

/// Issue "ubd disks" 4: SIGKILL while the guest writes a COW disk; afterwards the COW file
/// opens and every sector whose bitmap bit is set holds the written data (data is written
/// before its bit).
#[test]
fn cow_survives_sigkill_during_sustained_writes() {
    const MIB: u64 = 64;
    const KILL_AT: u64 = 8 << 20; // kill once the COW data area holds this much
    let dir = tempfile::tempdir().expect("tempdir");
    let zero = dir.path().join("zero.img");
    std::fs::File::create(&zero)
        .and_then(|f| f.set_len(MIB << 20))
        .expect("create zero.img");
    let cow = dir.path().join("crash.cow");
    let ubd1 = format!("{},{}", cow.display(), zero.display());
    let mut vm = agent_vm("ubd-crash", &initrd_with_ubd1(dir.path(), &ubd1));
    assert_eq!(vm.agent_ok("stat /dev/vdb", SHORT), (MIB << 20).to_string());
    let base = std::fs::metadata(&cow).expect("COW created").blocks() * 512;

    // `fill` writes through the guest page cache and fsyncs at the end: writeback reaches the
    // disk while it runs. No reply is awaited: kuml is killed in the middle.
    vm.send(format!("77 fill /dev/vdb {MIB} a5\n").as_bytes());
    let deadline = Instant::now() + FILL;
    let grown = loop {
        let grown = std::fs::metadata(&cow).unwrap().blocks() * 512 - base;
        if grown >= KILL_AT || vm.output().contains("KAGENT 77 ") {
            break grown;
        }
        assert!(
            Instant::now() < deadline,
            "the COW file did not grow: {grown} bytes"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    vm.signal(libc::SIGKILL);
    assert_eq!(vm.wait_exit(SHORT), 128 + libc::SIGKILL);
    if vm.output().contains("KAGENT 77 ") {
        eprintln!("note: the fill finished before the kill ({grown} bytes in the COW)");
    } else {
        eprintln!("killed with {} MiB allocated in the COW file", grown >> 20);
    }

    let img = ubd::open_image(&cow, Some(&zero), &ubd::ImageOptions::default())
        .unwrap_or_else(|e| panic!("the COW file opens after the crash: {e}"));
    let ubd::Image::Cow(c) = &img else {
        panic!("{} is not a COW image", cow.display())
    };
    let geo = *c.geometry();
    let bitmap = c.bitmap().unwrap();
    drop(img);
    let file = std::fs::File::open(&cow).unwrap();
    let mut sector = [0u8; 512];
    let (mut set, mut bad) = (0u64, Vec::new());
    for s in 0..geo.mapped_sectors {
        if !ubd::bitmap::test_bit(&bitmap, s) {
            continue;
        }
        set += 1;
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut sector, geo.data_pos(s))
            .expect("read a COW sector");
        if sector.iter().any(|&b| b != 0xa5) {
            bad.push(s);
        }
    }
    eprintln!("{set} sectors marked in the bitmap");
    assert!(set > 0, "some writes reached the COW file before the kill");
    assert!(
        bad.is_empty(),
        "{} sectors have their bit set but not the written data (first: {:?})",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}

/// Issue "ubd disks" 5: a raw image as ubd1 is the guest's vdb with the image's size, and its
/// ext4 file system mounts and reads.
#[test]
fn raw_data_disk_as_ubd1_mounts_and_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = copy_artifact("data.ext4", dir.path());
    let mut vm = agent_vm(
        "ubd-raw",
        &initrd_with_ubd1(dir.path(), &data.display().to_string()),
    );
    let out = vm.output();
    assert!(
        out.contains("[vdb] 131072 512-byte logical blocks"),
        "vdb has the image's size:\n{out}"
    );
    assert_eq!(
        vm.agent_ok("stat /dev/vdb", SHORT),
        (64u64 << 20).to_string()
    );
    let _ = vm.agent("mkdir /mnt", SHORT); // may exist already
    vm.agent_ok("mkdir /mnt/data", SHORT);
    vm.agent_ok("mount /dev/vdb /mnt/data ext4 ro", SHORT);
    let hello = vm.agent_ok("read /mnt/data/hello.txt 0 4096", SHORT);
    assert_eq!(unhex(&hello), b"hello from kuml data disk\n");
    let pattern = vm.agent_ok("read /mnt/data/pattern.bin 0 256", SHORT);
    assert_eq!(
        unhex(&pattern),
        (0..=255u8).collect::<Vec<_>>(),
        "pattern.bin"
    );
    vm.agent_ok("umount /mnt/data", SHORT);
    poweroff(&mut vm);
    assert!(
        same_bytes(&data, &artifact("data.ext4")),
        "a read-only mount leaves the raw image unchanged"
    );
}

/// The line a guest repeats with `yes | head` to write a known pattern from user space.
const PATTERN_LINE: &str = "kuml-ubd-user-space-pattern-0123456789abcdef";

fn pattern(len: usize) -> Vec<u8> {
    format!("{PATTERN_LINE}\n")
        .bytes()
        .cycle()
        .take(len)
        .collect()
}

/// `file`'s bytes with `data` written at `offset`, as a new file `out`.
fn expected_image(file: &Path, offset: u64, data: &[u8], out: &Path) -> PathBuf {
    run(Command::new("cp").arg("--sparse=always").arg(file).arg(out));
    let f = std::fs::OpenOptions::new().write(true).open(out).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, data, offset).unwrap();
    out.to_owned()
}

/// Issue 14 (user space): `dd` in the guest writes a pattern to a raw disk and to a COW disk;
/// on the host the raw image holds it, the backing file is unchanged, and `uml_moo` and
/// `kuml-moo` merge the COW file to the backing file with the pattern, byte for byte.
#[test]
fn user_space_dd_to_raw_and_cow_disks_then_uml_moo() {
    if !kuml_e2e::user_space_or_skip() {
        return;
    }
    const AT: u64 = 1 << 20;
    const LEN: usize = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("raw.img");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(8 << 20))
        .expect("create raw.img");
    let backing = copy_artifact("data.ext4", dir.path());
    let cow = dir.path().join("data.cow");
    let hash_before = sha256(&backing);
    let mut args = initrd_with_ubd1(dir.path(), &raw.display().to_string());
    args.push(format!("ubd2={},{}", cow.display(), backing.display()));
    let mut vm = agent_vm("ubd-user-dd", &args);
    vm.sh_ok(
        &format!(
            "yes {PATTERN_LINE} | head -c {LEN} > /tmp/p && \
             dd if=/tmp/p of=/dev/vdb bs=65536 seek={} conv=fsync && \
             dd if=/tmp/p of=/dev/vdc bs=65536 seek={} conv=fsync",
            AT / 65536,
            AT / 65536
        ),
        FILL,
    );
    poweroff(&mut vm);

    let want = pattern(LEN);
    let expect_raw = expected_image(&raw, AT, &want, &dir.path().join("expect-raw.img"));
    assert!(
        same_bytes(&raw, &expect_raw),
        "the raw image holds the pattern at {AT} and nothing else changed"
    );
    assert_eq!(sha256(&backing), hash_before, "backing file unchanged");
    let merged_u = dir.path().join("merged-uml.img");
    let merged_k = dir.path().join("merged-kuml.img");
    run(Command::new("uml_moo").arg(&cow).arg(&merged_u));
    run(Command::new(ubd_tool("kuml-moo")).arg(&cow).arg(&merged_k));
    let expect = expected_image(&backing, AT, &want, &dir.path().join("expect-merged.img"));
    assert!(
        same_bytes(&merged_u, &expect),
        "uml_moo's merge is the backing file with the pattern"
    );
    assert!(same_bytes(&merged_k, &merged_u), "kuml-moo merges the same");
}

/// Issue 14 (user space): a disk hot-plugged with the real `uml_mconsole` is mounted and written
/// from user space; after `remove` the file is in the image and the file system is clean.
#[test]
fn hot_plugged_disk_is_mounted_and_written_from_user_space() {
    if !kuml_e2e::user_space_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = copy_artifact("data.ext4", dir.path());
    let scratch = dir.path().join("scratch.img");
    std::fs::File::create(&scratch)
        .and_then(|f| f.set_len(1 << 20))
        .expect("create scratch.img");
    let mut vm = agent_vm(
        "ubd-user-hotplug",
        &[
            format!("initrd={}", artifact("initramfs.cpio.gz").display()),
            format!("ubd0={}", scratch.display()),
            format!("uml_dir={}", dir.path().display()),
            "umid=hotplug".to_owned(),
        ],
    );
    let sock = dir.path().join("hotplug/mconsole");
    let (reply, code) = Mc::Uml.run(&sock, &format!("config ubd1={}", data.display()));
    assert!(reply.starts_with("OK") && code == 0, "config ubd1: {reply}");
    let out = vm.sh_ok(
        "n=0; while [ ! -b /dev/vdb ]; do n=$((n + 1)); [ $n -lt 1200 ] || exit 1; sleep 0.1; done; \
         mkdir -p /mnt/hp && mount -t ext4 /dev/vdb /mnt/hp && cat /mnt/hp/hello.txt && \
         echo written-from-user-space > /mnt/hp/new.txt && sync && umount /mnt/hp",
        SHORT,
    );
    assert!(out.contains("hello from kuml data disk"), "{out}");
    let (reply, code) = Mc::Uml.run(&sock, "remove ubd1");
    assert!(reply.starts_with("OK") && code == 0, "remove ubd1: {reply}");
    poweroff(&mut vm);
    let cat = run(Command::new("debugfs")
        .arg("-R")
        .arg("cat /new.txt")
        .arg(&data));
    assert_eq!(cat, "written-from-user-space\n");
    run(Command::new("e2fsck").arg("-fn").arg(&data));
}
