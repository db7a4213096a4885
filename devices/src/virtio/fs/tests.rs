//! The device against a real virtiofsd: the vhost-user handshake, activation on queues in
//! memfd-backed guest memory, FUSE requests the daemon answers in guest memory, interrupts,
//! reset and a second start, and the daemon's death. Needs `virtiofsd`
//! (resources/setup-host.sh); without it these tests fail and say so.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::test_utils::{Driver, Rig};
use crate::virtio::{InterruptKind, VirtioDevice};

const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;
const FUSE_ROOT_ID: u64 = 1;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;

/// Guest memory backed by a memfd, as kuml's (the daemon maps it).
fn shared_mem(size: usize) -> GuestMemoryMmap {
    let name = std::ffi::CString::new("kuml-fs-test").unwrap();
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a new descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files(&[(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

fn daemon(dir: &std::path::Path, spec: &hostfs::ShareSpec) -> hostfs::Daemon {
    let program = hostfs::find_virtiofsd()
        .expect("virtiofsd is missing: run resources/setup-host.sh (these tests need it)");
    let opts = hostfs::DaemonOptions {
        runtime_dir: dir.to_path_buf(),
        ..hostfs::DaemonOptions::for_this_process(program)
    };
    hostfs::Daemon::spawn(spec, &opts).expect("start virtiofsd")
}

/// A share of a new directory holding `hello` (5 bytes), its device, and the directory.
fn device(read_only: bool) -> (Fs, tempfile::TempDir, tempfile::TempDir) {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("hello"), b"hello").unwrap();
    let run = tempfile::tempdir().unwrap();
    let mut value = share.path().to_str().unwrap().to_owned();
    if read_only {
        value.push_str(",ro");
    }
    let spec = hostfs::parse_share(1, &value).unwrap();
    let fs = Fs::new(&spec, daemon(run.path(), &spec)).expect("handshake");
    (fs, share, run)
}

fn in_header(len: usize, opcode: u32, unique: u64, nodeid: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(IN_HEADER);
    h.extend((len as u32).to_le_bytes());
    h.extend(opcode.to_le_bytes());
    h.extend(unique.to_le_bytes());
    h.extend(nodeid.to_le_bytes());
    h.extend([0u8; 16]); // uid, gid, pid, total_extlen, padding
    h
}

fn init_request(unique: u64) -> Vec<u8> {
    let mut r = in_header(IN_HEADER + 64, FUSE_INIT, unique, 0);
    r.extend(7u32.to_le_bytes()); // major
    r.extend(36u32.to_le_bytes()); // minor
    r.extend(0u32.to_le_bytes()); // max_readahead
    r.extend([0u8; 52]); // flags, flags2, unused
    r
}

fn lookup_request(unique: u64, name: &str) -> Vec<u8> {
    let mut r = in_header(
        IN_HEADER + name.len() + 1,
        FUSE_LOOKUP,
        unique,
        FUSE_ROOT_ID,
    );
    r.extend(name.as_bytes());
    r.push(0);
    r
}

/// (error, unique) of a FUSE reply.
fn out_header(bytes: &[u8]) -> (i32, u64) {
    (
        i32::from_le_bytes(bytes[4..8].try_into().unwrap()),
        u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
    )
}

/// Sends a FUSE request on the request queue and runs the loop until the daemon (which
/// answers asynchronously) has used the chain; returns the reply buffer.
fn ask(rig: &mut Rig<Fs>, driver: &mut Driver, request: &[u8], reply_len: u32) -> Vec<u8> {
    let r = driver.readable(request);
    let w = driver.writable(reply_len, 0xee);
    let head = driver.add(1, &[r, w]);
    driver.kick(1);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        rig.em.run_with_timeout(100).unwrap();
        if let Some(u) = driver.used(1).into_iter().next() {
            assert_eq!(u.head, head);
            let reply = driver.read(&w);
            let len = u32::from_le_bytes(reply[..4].try_into().unwrap());
            assert_eq!(u.len, len, "the used length is the reply's");
            return reply;
        }
        assert!(Instant::now() < until, "no answer from virtiofsd");
    }
}

#[test]
fn fuse_requests_reach_the_daemon_and_answers_interrupt_the_guest() {
    let mem = shared_mem(4 << 20);
    let mut driver = Driver::new(&mem, NUM_QUEUES);
    let (fs, _share, _run) = device(false);
    assert_eq!(fs.device_type(), crate::virtio::types::FS);
    let mut tag = [0u8; 8];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag, b"hostfs1\0");
    let features = fs.features();
    assert_ne!(features & (1 << crate::virtio::VIRTIO_F_VERSION_1), 0);
    let mut rig = Rig::new(&driver, fs, features);

    let reply = ask(&mut rig, &mut driver, &init_request(7), 80);
    assert_eq!(out_header(&reply), (0, 7), "FUSE_INIT answered");
    let major = u32::from_le_bytes(reply[OUT_HEADER..OUT_HEADER + 4].try_into().unwrap());
    assert_eq!(major, 7);
    assert!(rig.irq.count(InterruptKind::Queue(1)) >= 1, "interrupted");

    let reply = ask(&mut rig, &mut driver, &lookup_request(8, "hello"), 144);
    assert_eq!(out_header(&reply), (0, 8));
    let size_at = OUT_HEADER + 40 + 8; // fuse_entry_out: 40 bytes, then attr.ino, attr.size
    let size = u64::from_le_bytes(reply[size_at..size_at + 8].try_into().unwrap());
    assert_eq!(size, 5, "the daemon stat'ed the host file");
    let reply = ask(&mut rig, &mut driver, &lookup_request(9, "nope"), 144);
    assert_eq!(out_header(&reply), (-libc::ENOENT, 9));
}

#[test]
fn the_same_device_restarts_after_a_reset() {
    let mem = shared_mem(4 << 20);
    let mut driver = Driver::new(&mem, NUM_QUEUES);
    let (fs, _share, _run) = device(false);
    let features = fs.features();
    let mut rig = Rig::new(&driver, fs, features);
    assert_eq!(
        out_header(&ask(&mut rig, &mut driver, &init_request(1), 80)).0,
        0
    );
    {
        let mut d = rig.dev.lock().unwrap();
        assert!(d.reset());
        d.ack_features(features);
    }
    rig.run();
    // The driver starts over on new rings in the same guest.
    let mut again = Driver::new(&mem, NUM_QUEUES);
    rig.dev
        .lock()
        .unwrap()
        .activate(mem.clone(), rig.irq.clone(), again.active_queues())
        .expect("second activation");
    rig.run();
    let reply = ask(&mut rig, &mut again, &lookup_request(3, "hello"), 144);
    assert_eq!(out_header(&reply), (0, 3));
}

#[test]
fn private_guest_memory_is_refused() {
    let mem = crate::virtio::test_utils::mem(1 << 20);
    let driver = Driver::new(&mem, NUM_QUEUES);
    let (mut fs, _share, _run) = device(false);
    let features = fs.features();
    fs.ack_features(features);
    let irq = std::sync::Arc::new(crate::virtio::test_utils::TestInterrupt::default());
    let e = fs
        .activate(mem.clone(), irq, driver.active_queues())
        .unwrap_err();
    assert!(
        crate::error_chain(&e).contains("guest memory is not backed by a file"),
        "{}",
        crate::error_chain(&e)
    );
}

#[test]
fn a_dead_daemon_fails_the_device() {
    let mem = shared_mem(4 << 20);
    let mut driver = Driver::new(&mem, NUM_QUEUES);
    let (fs, _share, _run) = device(false);
    let pid = fs.daemon_pid().unwrap();
    let features = fs.features();
    let mut rig = Rig::new(&driver, fs, features);
    assert_eq!(
        out_header(&ask(&mut rig, &mut driver, &init_request(1), 80)).0,
        0
    );
    // SAFETY: a signal to the test's own child process.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let until = Instant::now() + Duration::from_secs(20);
    while rig.resets() == 0 {
        rig.em.run_with_timeout(100).unwrap();
        assert!(Instant::now() < until, "the hang-up was not noticed");
    }
    assert!(rig.dev.lock().unwrap().dead);
    // Nothing is watched any more (no busy loop on a hung-up socket).
    rig.run();
}

#[test]
fn a_failed_daemon_is_reported_with_its_words() {
    let run = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    let spec = hostfs::parse_share(2, share.path().to_str().unwrap()).unwrap();
    // `false` accepts nothing and exits: the handshake fails, with its status in the error.
    let opts = hostfs::DaemonOptions {
        program: std::path::PathBuf::from("/bin/false"),
        runtime_dir: run.path().to_path_buf(),
        ..hostfs::DaemonOptions::for_this_process(Default::default())
    };
    let d = hostfs::Daemon::spawn(&spec, &opts).unwrap();
    let e = Fs::new(&spec, d).unwrap_err();
    let text = crate::error_chain(&e);
    assert!(text.starts_with("virtiofsd did not answer"), "{text}");
    assert!(text.contains("exit status: 1"), "{text}");
}

#[test]
fn a_sandbox_the_kernel_refuses_says_so() {
    let e = super::device::handshake_error(
        "virtiofsd exit status: 1: Error entering sandbox: Unshare(Os { code: 1 })".into(),
        vhost::Error::InvalidOperation,
    );
    let text = e.to_string();
    assert!(
        text.starts_with("virtiofsd could not enter its sandbox"),
        "{text}"
    );
    assert!(text.contains("user namespace"), "{text}");
    let e = super::device::handshake_error(
        "virtiofsd exit status: 1".into(),
        vhost::Error::InvalidOperation,
    );
    assert!(e.to_string().starts_with("virtiofsd did not answer"), "{e}");
}
