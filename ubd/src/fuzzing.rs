//! Fuzz harnesses for this crate's parsers and formats (feature `fuzzing`, and tests).
//!
//! Each harness takes the fuzzer's bytes, never panics on its own, and asserts the
//! invariants the code promises (a round trip, data written is read back). The libFuzzer
//! targets in `fuzz/fuzz_targets/<name>.rs` only call them; the `kuml` crate's
//! `fuzzing::tests` replays the committed seeds in `fuzz/seeds/<name>/` through [`TARGETS`]
//! on the stable toolchain, so a refactor that breaks a harness fails `cargo test`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::disk::{Disk, MemDisk, RawDisk, SECTOR};
use crate::header::{parse_header, CowVersion, MAX_HEADER_LEN};
use crate::merge::merge;
use crate::{cow_sizes, parse_ubd_with, CowDisk, UbdOption};

/// A harness: fuzz input in, panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// The targets this crate owns, by the name of their `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("cow_header", cow_header),
    ("cow_open", cow_open),
    ("cow_merge", cow_merge),
    ("ubd_spec", ubd_spec),
];

/// The COW header codec: decode any bytes; a decoded header has a geometry or a clear error,
/// and a v3 header encodes back to bytes that decode to the same header.
pub fn cow_header(data: &[u8]) {
    let Ok(h) = parse_header(data) else {
        return;
    };
    let _ = cow_sizes(&h);
    if h.version == CowVersion::V3 {
        if let Ok(bytes) = h.encode_v3() {
            assert_eq!(parse_header(&bytes).as_ref(), Ok(&h), "v3 round trip");
        }
    }
}

/// Longest backing disk the open target builds (bigger headers get a shorter backing, which
/// reads as zeros past its end, as a shrunk backing file would).
const BACKING_MAX: u64 = 64 * 1024;
/// Most operations one input runs.
const MAX_OPS: usize = 64;

/// An anonymous in-memory file holding `bytes` (a real fd for [`RawDisk`]).
fn memfd(bytes: &[u8]) -> Option<File> {
    // SAFETY: the name is a NUL-terminated literal; the flags are valid; the result is checked.
    let fd = unsafe { libc::memfd_create(c"kuml-fuzz-cow".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes).ok()?;
    Some(f)
}

/// What the disk must hold: whole sectors, as read before the first change and then changed.
type Model = BTreeMap<u64, Vec<u8>>;

/// Reads sectors `first..=last` of `disk` into `model` where it has none yet; false if one
/// cannot be read (the range is then not modelled).
fn load(disk: &impl Disk, model: &mut Model, first: u64, last: u64) -> bool {
    for s in first..=last {
        if model.contains_key(&s) {
            continue;
        }
        let mut buf = vec![0u8; SECTOR as usize];
        if disk.read_at(&mut buf, s * SECTOR).is_err() {
            return false;
        }
        model.insert(s, buf);
    }
    true
}

/// Applies bytes `data` at `offset` to the modelled sectors.
fn apply(model: &mut Model, offset: u64, data: &[u8]) {
    // Sector by sector, one slice copy each: a byte loop (with a map lookup per byte) was
    // most of the target's time under the fuzzer's instrumentation.
    let mut done = 0usize;
    while done < data.len() {
        let at = offset + done as u64;
        let within = (at % SECTOR) as usize;
        let n = (SECTOR as usize - within).min(data.len() - done);
        if let Some(sector) = model.get_mut(&(at / SECTOR)) {
            sector[within..within + n].copy_from_slice(&data[done..done + n]);
        }
        done += n;
    }
}

/// `len` bytes whose sector `s` is filled with `(s as u8) ^ xor` (a recognisable backing
/// disk), built a sector at a time rather than byte by byte (cheaper under instrumentation).
fn sector_pattern(len: usize, xor: u8) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (s, sector) in v.chunks_mut(SECTOR as usize).enumerate() {
        sector.fill(s as u8 ^ xor);
    }
    v
}

/// Panics unless every modelled sector of `disk` in `range` reads as the model says.
fn verify(disk: &impl Disk, model: &Model, range: RangeInclusive<u64>, when: &str) {
    for (&s, want) in model.range(range) {
        let mut got = vec![0u8; SECTOR as usize];
        disk.read_at(&mut got, s * SECTOR)
            .expect("a modelled sector reads");
        assert!(
            &got == want,
            "sector {s} differs from what was written ({when})"
        );
    }
}

/// Opening a COW file and using it: the input is `[n: u16 LE][n bytes: COW file][ops]`,
/// each op 8 bytes `[kind][offset: u32 LE][len: u16 LE][fill]` (kinds: read, write, write
/// zeroes, discard, flush). The bitmap is loaded from the file as `CowDisk::new` does for a
/// real image. Every sector a write touches is modelled: reads agree with the model, a
/// refused write changes nothing, and the file opened again afterwards (header and bitmap
/// read anew) holds the same data: nothing written is lost.
pub fn cow_open(data: &[u8]) {
    let Some((n, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = usize::from(u16::from_le_bytes(*n)).min(rest.len());
    let (file, ops) = rest.split_at(n);
    let Ok(header) = parse_header(&file[..file.len().min(MAX_HEADER_LEN)]) else {
        return;
    };
    let read_only = ops.first().is_some_and(|b| b & 1 != 0);
    let Some(f) = memfd(file) else {
        return;
    };
    let (Ok(again), Ok(raw)) = (
        f.try_clone(),
        RawDisk::from_file(f, Path::new("fuzz.cow"), false),
    ) else {
        return;
    };
    let backing_len = header.size.min(BACKING_MAX) as usize;
    let backing = sector_pattern(backing_len, 0);
    let Ok(mut disk) = CowDisk::new(raw, MemDisk::new(backing.clone()), header, read_only) else {
        return;
    };
    assert_eq!(disk.len() % SECTOR, 0, "COW disk length is whole sectors");
    let mut model = Model::new();
    for op in ops
        .get(1..)
        .unwrap_or_default()
        .chunks_exact(8)
        .take(MAX_OPS)
    {
        let offset = u64::from(u32::from_le_bytes([op[1], op[2], op[3], op[4]]));
        let n = u64::from(u16::from_le_bytes([op[5], op[6]])) % 4096;
        let sectors = (offset / SECTOR, (offset + n.max(1) - 1) / SECTOR);
        match op[0] % 5 {
            0 => {
                let mut buf = vec![0u8; n as usize];
                let _ = disk.read_at(&mut buf, offset);
            }
            k @ (1 | 2) => {
                let buf = vec![if k == 1 { op[7] } else { 0 }; n as usize];
                let modelled = n > 0 && load(&disk, &mut model, sectors.0, sectors.1);
                let done = if k == 1 {
                    disk.write_at(&buf, offset)
                } else {
                    disk.write_zeroes(offset, n)
                };
                if done.is_ok() && modelled {
                    apply(&mut model, offset, &buf);
                }
            }
            3 => {
                // A discarded range reads as zeros or as before: no longer modelled.
                if disk.discard(offset, n).is_ok() {
                    for s in sectors.0..=sectors.1 {
                        model.remove(&s);
                    }
                }
            }
            _ => {
                let _ = disk.flush();
            }
        }
        verify(
            &disk,
            &model,
            sectors.0..=sectors.1,
            "after an operation on it",
        );
    }
    verify(&disk, &model, 0..=u64::MAX, "at the end");
    drop(disk);
    let mut head = vec![0u8; MAX_HEADER_LEN];
    let got = FileExt::read_at(&again, &mut head, 0).unwrap_or(0);
    let header = parse_header(&head[..got]).expect("the header still parses");
    let raw = RawDisk::from_file(again, Path::new("fuzz.cow"), true).expect("reopened");
    let disk = CowDisk::new(raw, MemDisk::new(backing), header, true).expect("reopens");
    verify(&disk, &model, 0..=u64::MAX, "after opening the file again");
}

/// `kuml-moo` (uml_moo's merge) against kuml's own reads: the input is a COW file; with a
/// backing file of the header's size (up to 64 KiB, mtime set to the header's) on a memfd,
/// merging into a new image (first byte even) or into the backing file (odd) must give, sector
/// for sector, what `CowDisk` reads from the same COW file and backing file.
pub fn cow_merge(data: &[u8]) {
    let Some((&opt, cow)) = data.split_first() else {
        return;
    };
    let Ok(header) = parse_header(&cow[..cow.len().min(MAX_HEADER_LEN)]) else {
        return;
    };
    if header.size > BACKING_MAX || header.sectorsize != SECTOR as u32 {
        return;
    }
    let backing = sector_pattern(header.size as usize, 0x5a);
    let (Some(cow_f), Some(back_f), Some(out_f)) = (memfd(cow), memfd(&backing), memfd(&[])) else {
        return;
    };
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(header.mtime));
    let (Ok(()), Ok(cow_again)) = (back_f.set_modified(mtime), cow_f.try_clone()) else {
        return;
    };
    let Ok(raw) = RawDisk::from_file(cow_again, Path::new("fuzz.cow"), true) else {
        return;
    };
    let Ok(view) = CowDisk::new(raw, MemDisk::new(backing), header.clone(), true) else {
        return;
    };
    let mut want = vec![0u8; (header.size / SECTOR * SECTOR) as usize];
    if view.read_at(&mut want, 0).is_err() {
        return;
    }
    drop(view);
    let path = |f: &File| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    let into_backing = opt & 1 != 0;
    let out = (!into_backing).then(|| path(&out_f));
    let merged = merge(
        &path(&cow_f),
        out.as_deref(),
        Some(&path(&back_f)),
        &mut Vec::new(),
        &mut |_, _| {},
    );
    if merged.is_err() {
        return;
    }
    let result = if into_backing { &back_f } else { &out_f };
    let mut got = vec![0u8; want.len()];
    let n = FileExt::read_at(result, &mut got, 0).unwrap_or(0);
    got[n..].fill(0);
    if let Some(at) = (0..want.len())
        .step_by(SECTOR as usize)
        .find(|&o| got[o..o + SECTOR as usize] != want[o..o + SECTOR as usize])
    {
        panic!(
            "merged sector {} differs from kuml's read of the COW disk",
            at / 512
        );
    }
}

/// The `ubd` option grammar: any text after `ubd`, with units 0-3 already configured when the
/// first byte is odd. A parsed device names a unit below the limit.
pub fn ubd_spec(data: &[u8]) {
    let Some((&sel, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let configured = |u: usize| sel & 1 != 0 && u < 4;
    if let Ok(UbdOption::Device(spec)) = parse_ubd_with(&text, configured) {
        assert!(spec.unit < crate::MAX_UNITS, "unit {} in range", spec.unit);
        let _ = spec.config_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_apply_changes_modelled_sectors_only_and_exactly() {
        let mut model = Model::new();
        model.insert(1, vec![1; SECTOR as usize]);
        model.insert(3, vec![3; SECTOR as usize]);
        // Bytes 500..1700: the end of sector 0 (not modelled), all of 1 and 2, part of 3.
        let data: Vec<u8> = (0..1200u32).map(|i| (i % 251) as u8).collect();
        apply(&mut model, 500, &data);
        for (&s, sector) in &model {
            for (i, &b) in sector.iter().enumerate() {
                let at = s * SECTOR + i as u64;
                let want = match at.checked_sub(500) {
                    Some(k) if k < 1200 => data[k as usize],
                    _ => s as u8,
                };
                assert_eq!(b, want, "sector {s} byte {i}");
            }
        }
        assert_eq!(model.len(), 2, "no sector is added");
    }

    #[test]
    fn test_sector_pattern() {
        let v = sector_pattern(1300, 0x5a);
        assert_eq!(v.len(), 1300);
        assert!(v[..512].iter().all(|&b| b == 0x5a));
        assert!(v[512..1024].iter().all(|&b| b == 0x5b));
        assert!(v[1024..].iter().all(|&b| b == 0x58));
    }
}
