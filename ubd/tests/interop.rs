//! Interop with the real Debian uml-utilities (`uml_mkcow`, `uml_moo`) and with COW files laid
//! out by an independent writer that follows uml-formats.md §1 (not our codec).
//!
//! These tests need `uml_mkcow`, `uml_moo` (package uml-utilities) and `python3` (for a POSIX
//! lock holder in another process). If one is missing the test FAILS with a message saying
//! so: it never passes silently.

#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use ubd::image::{open_image, ImageOptions, OpenError};
use ubd::lock::LockError;
use ubd::{Disk, Image};

const MOO: &str = env!("CARGO_BIN_EXE_kuml-moo");
const MKCOW: &str = env!("CARGO_BIN_EXE_kuml-mkcow");

fn need(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("CANNOT RUN: `{tool}` is not installed (apt-get install uml-utilities python3); this interop test refuses to pass silently");
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A backing file with recognisable, mostly non-zero content and some zero sectors.
fn make_backing(path: &Path, sectors: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut data = vec![0u8; (sectors * 512) as usize];
    for s in 0..sectors {
        if s % 5 == 3 {
            continue; // zero sector
        }
        for b in &mut data[(s * 512) as usize..((s + 1) * 512) as usize] {
            *b = rng.next() as u8;
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

fn read_all(d: &impl Disk) -> Vec<u8> {
    let mut v = vec![0u8; d.len() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

/// Copy a file keeping its mtime (like `cp -p`).
fn copy_keep_mtime(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let mtime = std::fs::metadata(from).unwrap().modified().unwrap();
    OpenOptions::new()
        .write(true)
        .open(to)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn real_uml_mkcow_cow_opens_and_reads_backing_and_matches_kuml_mkcow() {
    let mkcow = need("uml_mkcow");
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("base.img");
    let data = make_backing(&back, 9, 7); // 4608 bytes: uml-formats.md §1.7 example
    let real = dir.path().join("real.cow");
    let ours = dir.path().join("ours.cow");
    let o = run(Command::new(&mkcow).arg(&real).arg(&back));
    assert!(o.status.success(), "uml_mkcow failed: {o:?}");
    let o = run(Command::new(MKCOW).arg(&ours).arg(&back));
    assert!(o.status.success(), "kuml-mkcow failed: {o:?}");
    // Same bytes and same length (16896, observed) as the real tool.
    let (r, k) = (std::fs::read(&real).unwrap(), std::fs::read(&ours).unwrap());
    assert_eq!(r.len(), 16896);
    assert!(r == k, "kuml-mkcow output differs from uml_mkcow");

    let img = open_image(&real, None, &ImageOptions::default()).unwrap();
    assert!(matches!(img, Image::Cow(_)));
    assert_eq!(read_all(&img), data);
    drop(img);
    // Given the backing on the command line too (relative name vs absolute header path).
    let img = open_image(&real, Some(&back), &ImageOptions::default()).unwrap();
    assert_eq!(read_all(&img), data);

    // Both refuse an existing file with the same message and status.
    let a = run(Command::new(&mkcow).arg(&real).arg(&back));
    let b = run(Command::new(MKCOW).arg(&real).arg(&back));
    assert_eq!(a.status.code(), Some(1));
    assert_eq!(
        (a.status.code(), &a.stderr, &a.stdout),
        (b.status.code(), &b.stderr, &b.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&a.stderr),
        "open COW file: File exists\n"
    );
    // Missing backing file: same stdout and stderr lines.
    let a = run(Command::new(&mkcow)
        .arg(dir.path().join("x1"))
        .arg(dir.path().join("nope")));
    let b = run(Command::new(MKCOW)
        .arg(dir.path().join("x2"))
        .arg(dir.path().join("nope")));
    assert_eq!(
        (a.status.code(), &a.stderr, &a.stdout),
        (b.status.code(), &b.stderr, &b.stdout)
    );
}

#[test]
fn usage_texts_match_the_real_tools() {
    let moo = need("uml_moo");
    let mkcow = need("uml_mkcow");
    for (real, ours, args) in [
        (&moo, MOO, &[][..]),
        // (`uml_moo -d` alone dereferences NULL and crashes; kuml-moo prints the usage.)
        (&moo, MOO, &["a", "b", "c"][..]),
        (&mkcow, MKCOW, &[][..]),
        (&mkcow, MKCOW, &["-f", "a"][..]),
    ] {
        let a = run(Command::new(real).args(args));
        let b = run(Command::new(ours).args(args));
        let norm =
            |o: &Output, prog: &str| String::from_utf8_lossy(&o.stderr).replace(prog, "PROG");
        assert_eq!(a.status.code(), b.status.code(), "{args:?}");
        assert_eq!(norm(&a, real.to_str().unwrap()), norm(&b, ours), "{args:?}");
    }
}

/// A COW written by our `CowDisk` (random writes, partial sectors, zeroes) merges with the
/// real `uml_moo` and with `kuml-moo` to the same bytes, in both modes.
#[test]
fn cowdisk_writes_merge_identically_with_uml_moo_and_kuml_moo() {
    let moo = need("uml_moo");
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("base.img");
    let sectors = 301; // not a multiple of 8
    let mut model = make_backing(&back, sectors, 99);
    // An old mtime, so that a merge into a copy visibly changes it.
    let old = SystemTime::now() - Duration::from_secs(1000);
    OpenOptions::new()
        .write(true)
        .open(&back)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let cow = dir.path().join("c.cow");
    {
        let mut img = open_image(&cow, Some(&back), &ImageOptions::default()).unwrap();
        let mut rng = Rng(12345);
        for _ in 0..200 {
            let off = rng.below(sectors * 512);
            let len = (1 + rng.below(3000)).min(sectors * 512 - off);
            match rng.below(4) {
                0 => {
                    img.write_zeroes(off, len).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                1 => {
                    // Whole zero sectors over non-zero backing data (the -d special case).
                    let s = rng.below(sectors);
                    img.write_at(&[0u8; 512], s * 512).unwrap();
                    model[(s * 512) as usize..((s + 1) * 512) as usize].fill(0);
                }
                _ => {
                    let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    img.write_at(&buf, off).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&buf);
                }
            }
        }
        // The last sector through the COW, and its bit, too.
        img.write_at(&[0xAB; 512], (sectors - 1) * 512).unwrap();
        model[((sectors - 1) * 512) as usize..].fill(0xAB);
        img.flush().unwrap();
        assert_eq!(read_all(&img), model);
    }
    let back_before = std::fs::read(&back).unwrap();

    // Non-destructive.
    let (real_out, our_out) = (dir.path().join("real.img"), dir.path().join("ours.img"));
    let a = run(Command::new(&moo).arg(&cow).arg(&real_out));
    let b = run(Command::new(MOO).arg(&cow).arg(&our_out));
    assert!(a.status.success(), "uml_moo: {a:?}");
    assert_eq!(
        (a.status.code(), &a.stdout, &a.stderr),
        (b.status.code(), &b.stdout, &b.stderr)
    );
    let real_bytes = std::fs::read(&real_out).unwrap();
    assert!(
        real_bytes == model,
        "uml_moo output differs from the CowDisk model"
    );
    assert!(
        std::fs::read(&our_out).unwrap() == real_bytes,
        "kuml-moo output differs from uml_moo"
    );
    assert_eq!(
        std::fs::read(&back).unwrap(),
        back_before,
        "backing changed"
    );

    // Destructive (-d -b <copy>), each tool on its own copy of the backing file.
    let (ca, cb) = (dir.path().join("copy-a.img"), dir.path().join("copy-b.img"));
    copy_keep_mtime(&back, &ca);
    copy_keep_mtime(&back, &cb);
    let a = run(Command::new(&moo).arg("-d").arg("-b").arg(&ca).arg(&cow));
    let b = run(Command::new(MOO).arg("-d").arg("-b").arg(&cb).arg(&cow));
    assert!(a.status.success(), "uml_moo -d: {a:?}");
    assert_eq!(
        (a.status.code(), &a.stdout, &a.stderr),
        (b.status.code(), &b.stdout, &b.stderr)
    );
    let ra = std::fs::read(&ca).unwrap();
    assert!(ra == model, "uml_moo -d result differs from the model");
    assert!(
        std::fs::read(&cb).unwrap() == ra,
        "kuml-moo -d differs from uml_moo -d"
    );

    // Now the copies' mtimes changed: both tools refuse with the same message.
    let a = run(Command::new(&moo).arg("-d").arg("-b").arg(&ca).arg(&cow));
    let b = run(Command::new(MOO).arg("-d").arg("-b").arg(&ca).arg(&cow));
    assert_eq!(a.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&a.stderr).to_string();
    assert!(msg.contains("mismatch ("), "{msg}");
    assert_eq!(
        (a.status.code(), &a.stdout, &a.stderr),
        (b.status.code(), &b.stdout, &b.stderr)
    );
    // Wrong argument order, missing COW file: same perror text.
    let a = run(Command::new(&moo).arg("-b").arg(&ca).arg("-d").arg(&cow));
    let b = run(Command::new(MOO).arg("-b").arg(&ca).arg("-d").arg(&cow));
    assert_eq!(
        String::from_utf8_lossy(&a.stderr),
        "COW file open: No such file or directory\n"
    );
    assert_eq!(
        (a.status.code(), &a.stdout, &a.stderr),
        (b.status.code(), &b.stdout, &b.stderr)
    );
    // Not a COW file.
    let a = run(Command::new(&moo).arg(&back).arg(dir.path().join("o1")));
    let b = run(Command::new(MOO).arg(&back).arg(dir.path().join("o2")));
    assert_eq!(
        (a.status.code(), &a.stdout, &a.stderr),
        (b.status.code(), &b.stdout, &b.stderr)
    );
}

/// Independent writer following uml-formats.md §1.3–§1.6 (no use of our codec).
struct HandCow {
    version: u32,
    broken: bool,
    align: u64,
}

impl HandCow {
    /// Returns the file bytes, given the backing path/size/mtime and the COW sectors.
    fn build(
        &self,
        backing: &Path,
        size: u64,
        mtime: u32,
        cow_sectors: &[(u64, Vec<u8>)],
    ) -> Vec<u8> {
        let path = backing.as_os_str().as_encoded_bytes();
        let mut h: Vec<u8>;
        let (bitmap_offset, bitmap_len, data_offset);
        match (self.version, self.broken) {
            (1, _) => {
                h = vec![0u8; 280];
                h[0..4].copy_from_slice(&0x4F4F_4F4Du32.to_le_bytes());
                h[4..8].copy_from_slice(&1u32.to_le_bytes());
                h[8..8 + path.len()].copy_from_slice(path);
                h[264..268].copy_from_slice(&mtime.to_le_bytes());
                h[268..276].copy_from_slice(&size.to_le_bytes());
                h[276..280].copy_from_slice(&512u32.to_le_bytes());
                bitmap_offset = 280;
                bitmap_len = (size + 511) / 4096;
                data_offset = (bitmap_offset + bitmap_len).div_ceil(512) * 512;
            }
            (2, _) => {
                h = vec![0u8; 4120];
                h[0..4].copy_from_slice(b"OOOM");
                h[4..8].copy_from_slice(&2u32.to_be_bytes());
                h[8..8 + path.len()].copy_from_slice(path);
                h[4104..4108].copy_from_slice(&mtime.to_be_bytes());
                h[4108..4116].copy_from_slice(&size.to_be_bytes());
                h[4116..4120].copy_from_slice(&512u32.to_be_bytes());
                bitmap_offset = 4120;
                bitmap_len = (size + 511) / 4096;
                data_offset = (bitmap_offset + bitmap_len).div_ceil(512) * 512;
            }
            (3, true) => {
                h = vec![0u8; 4136];
                h[0..4].copy_from_slice(b"OOOM");
                h[4..8].copy_from_slice(&3u32.to_be_bytes());
                h[8..12].copy_from_slice(&mtime.to_be_bytes());
                h[12..16].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]); // padding garbage
                h[16..24].copy_from_slice(&size.to_be_bytes());
                h[24..28].copy_from_slice(&512u32.to_be_bytes());
                h[28..32].copy_from_slice(&(self.align as u32).to_be_bytes());
                h[36..36 + path.len()].copy_from_slice(path);
                bitmap_offset = 4136u64.div_ceil(self.align) * self.align;
                bitmap_len = size.div_ceil(512).div_ceil(8);
                data_offset = (bitmap_offset + bitmap_len).div_ceil(self.align) * self.align;
            }
            _ => {
                h = vec![0u8; 4128];
                h[0..4].copy_from_slice(b"OOOM");
                h[4..8].copy_from_slice(&3u32.to_be_bytes());
                h[8..12].copy_from_slice(&mtime.to_be_bytes());
                h[12..20].copy_from_slice(&size.to_be_bytes());
                h[20..24].copy_from_slice(&512u32.to_be_bytes());
                h[24..28].copy_from_slice(&(self.align as u32).to_be_bytes());
                h[32..32 + path.len()].copy_from_slice(path);
                bitmap_offset = 4128u64.div_ceil(self.align) * self.align;
                bitmap_len = size.div_ceil(512).div_ceil(8);
                data_offset = (bitmap_offset + bitmap_len).div_ceil(self.align) * self.align;
            }
        }
        let mut f = vec![0u8; (data_offset + size) as usize];
        f[..h.len()].copy_from_slice(&h);
        for (s, d) in cow_sectors {
            let s = *s;
            f[(bitmap_offset + s / 8) as usize] |= 1 << (s % 8);
            let o = (data_offset + s * 512) as usize;
            f[o..o + 512].copy_from_slice(d);
        }
        f
    }
}

#[test]
fn hand_laid_out_cow_files_read_correctly_and_agree_with_uml_moo() {
    let moo = need("uml_moo");
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("base.img");
    let sectors = 80;
    let base = make_backing(&back, sectors, 3);
    let md = std::fs::metadata(&back).unwrap();
    let mtime = md
        .modified()
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let size = md.len();
    let mut rng = Rng(77);
    let mut cow_sectors = Vec::new();
    let mut model = base.clone();
    for s in [0u64, 1, 2, 9, 17, 40, 63, 71, 79] {
        let d: Vec<u8> = if s == 17 {
            vec![0; 512]
        } else {
            (0..512).map(|_| rng.next() as u8).collect()
        };
        model[(s * 512) as usize..((s + 1) * 512) as usize].copy_from_slice(&d);
        cow_sectors.push((s, d));
    }
    let layouts = [
        (
            "v1",
            HandCow {
                version: 1,
                broken: false,
                align: 512,
            },
        ),
        (
            "v2",
            HandCow {
                version: 2,
                broken: false,
                align: 512,
            },
        ),
        (
            "v3",
            HandCow {
                version: 3,
                broken: false,
                align: 4096,
            },
        ),
        (
            "v3-align512",
            HandCow {
                version: 3,
                broken: false,
                align: 512,
            },
        ),
        (
            "v3-broken",
            HandCow {
                version: 3,
                broken: true,
                align: 4096,
            },
        ),
    ];
    for (name, layout) in layouts {
        let cow = dir.path().join(format!("{name}.cow"));
        std::fs::write(&cow, layout.build(&back, size, mtime, &cow_sectors)).unwrap();
        let img = open_image(
            &cow,
            None,
            &ImageOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let Image::Cow(c) = &img else {
            panic!("{name}: not detected as COW")
        };
        assert_eq!(c.header().version.number(), layout.version, "{name}");
        assert!(read_all(&img) == model, "{name}: CowDisk reads wrong bytes");
        drop(img);
        let out = dir.path().join(format!("{name}.merged"));
        let o = run(Command::new(&moo).arg(&cow).arg(&out));
        assert!(o.status.success(), "uml_moo {name}: {o:?}");
        assert!(
            std::fs::read(&out).unwrap() == model,
            "{name}: uml_moo disagrees with the hand layout"
        );
        let out2 = dir.path().join(format!("{name}.ours"));
        let o2 = run(Command::new(MOO).arg(&cow).arg(&out2));
        assert_eq!(
            (o.status.code(), &o.stdout, &o.stderr),
            (o2.status.code(), &o2.stdout, &o2.stderr),
            "{name}"
        );
        assert!(
            std::fs::read(&out2).unwrap() == model,
            "{name}: kuml-moo wrong"
        );
    }
}

#[test]
fn v1_v2_rounding_bug_tail_sectors_come_from_backing() {
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("base.img");
    let base = make_backing(&back, 77, 5); // bitmap covers 72 sectors only
    let md = std::fs::metadata(&back).unwrap();
    let mtime = md
        .modified()
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let cow = dir.path().join("v2.cow");
    let d = vec![0x5a; 512];
    let layout = HandCow {
        version: 2,
        broken: false,
        align: 512,
    };
    std::fs::write(
        &cow,
        layout.build(&back, md.len(), mtime, &[(71, d.clone())]),
    )
    .unwrap();
    let mut img = open_image(&cow, None, &ImageOptions::default()).unwrap();
    let mut model = base;
    model[71 * 512..72 * 512].copy_from_slice(&d);
    assert!(read_all(&img) == model);
    // Writing a sector the bitmap cannot record is refused, not silently lost.
    assert!(img.write_at(&[1; 512], 75 * 512).is_err());
}

#[test]
fn touching_the_backing_file_fails_with_umls_mtime_message() {
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("base.img");
    make_backing(&back, 16, 1);
    let cow = dir.path().join("c.cow");
    drop(open_image(&cow, Some(&back), &ImageOptions::default()).unwrap());
    let old = std::fs::metadata(&back).unwrap().modified().unwrap();
    let newer = old + Duration::from_secs(51);
    OpenOptions::new()
        .write(true)
        .open(&back)
        .unwrap()
        .set_modified(newer)
        .unwrap();
    let h = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let want = format!(
        "mtime mismatch ({} vs {}) of COW header vs backing file",
        h(old),
        h(newer)
    );
    for backing in [None, Some(back.as_path())] {
        let e = open_image(&cow, backing, &ImageOptions::default()).unwrap_err();
        assert!(matches!(e, OpenError::MtimeMismatch { .. }), "{e:?}");
        assert_eq!(e.to_string(), want);
    }
    // uml_moo agrees on the numbers.
    let moo = need("uml_moo");
    let o = run(Command::new(&moo).arg(&cow).arg(dir.path().join("m")));
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        text.starts_with(&format!("mtime mismatch ({} vs {})", h(old), h(newer))),
        "{text}"
    );
}

/// A python3 process holding a POSIX `lockf` (fcntl) lock, as a UML would.
struct Holder(std::process::Child);
impl Holder {
    fn spawn(path: &Path, exclusive: bool) -> Holder {
        let py = need("python3");
        let kind = if exclusive { "LOCK_EX" } else { "LOCK_SH" };
        let mode = if exclusive { "r+b" } else { "rb" };
        let script = format!(
            "import fcntl,sys,time\nf=open(sys.argv[1],'{mode}')\nfcntl.lockf(f,fcntl.{kind}|fcntl.LOCK_NB)\nprint('locked',flush=True)\ntime.sleep(60)\n"
        );
        let mut child = Command::new(py)
            .arg("-c")
            .arg(script)
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        Holder(child)
    }
}
impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_can_lock(path: &Path, exclusive: bool) -> bool {
    let py = need("python3");
    let (kind, mode) = if exclusive {
        ("LOCK_EX", "r+b")
    } else {
        ("LOCK_SH", "rb")
    };
    let script = format!(
        "import fcntl,sys\nf=open(sys.argv[1],'{mode}')\ntry:\n  fcntl.lockf(f,fcntl.{kind}|fcntl.LOCK_NB)\nexcept OSError:\n  sys.exit(1)\n"
    );
    run(Command::new(py).arg("-c").arg(script).arg(path))
        .status
        .success()
}

#[test]
fn locking_conflicts_across_processes_like_uml() {
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("base.img");
    make_backing(&back, 16, 2);
    let cow = dir.path().join("c.cow");
    // While we have the COW open: write lock on the COW, read lock on the backing.
    {
        let _img = open_image(&cow, Some(&back), &ImageOptions::default()).unwrap();
        assert!(!python_can_lock(&cow, false), "COW file not write-locked");
        assert!(
            python_can_lock(&back, false),
            "backing must only be read-locked"
        );
        assert!(!python_can_lock(&back, true), "backing not read-locked");
    }
    assert!(python_can_lock(&cow, true), "lock not released on close");
    // Another process holds the COW: open fails with UML's message naming its pid.
    {
        let holder = Holder::spawn(&cow, true);
        let e = open_image(&cow, None, &ImageOptions::default()).unwrap_err();
        let OpenError::Lock {
            source: LockError::Locked { pid, errno, .. },
            ..
        } = &e
        else {
            panic!("expected a lock error, got {e:?}");
        };
        assert_eq!(*pid as u32, holder.0.id());
        assert_eq!(*errno, libc::EAGAIN);
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            chain.contains(&format!("Failed to lock '{}', err = 11", cow.display())),
            "{chain}"
        );
        assert!(
            chain.contains(&format!("file already locked by pid {pid}")),
            "{chain}"
        );
        // `c` (shared) skips locking.
        open_image(
            &cow,
            None,
            &ImageOptions {
                shared: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
    // A writer on the backing file blocks our read lock on it.
    {
        let _holder = Holder::spawn(&back, true);
        let e = open_image(&cow, None, &ImageOptions::default()).unwrap_err();
        assert!(
            matches!(e, OpenError::Lock { ref path, .. } if *path == back),
            "{e:?}"
        );
    }
}

#[test]
fn read_only_file_opens_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("base.img");
    make_backing(&back, 8, 4);
    let f = File::open(&back).unwrap();
    let mut p = f.metadata().unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o444);
    std::fs::set_permissions(&back, p).unwrap();
    let can_write_anyway = OpenOptions::new().write(true).open(&back).is_ok(); // root
    let img = open_image(&back, None, &ImageOptions::default()).unwrap();
    assert_eq!(img.is_read_only(), !can_write_anyway);
    let img = open_image(
        &back,
        None,
        &ImageOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(img.is_read_only());
    let mut img = img;
    assert!(img.write_at(&[0; 512], 0).is_err());
    let _ = f.read_at(&mut [0u8; 1], 0);
}
