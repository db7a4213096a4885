//! [`CowDisk`]: a UML COW file over a backing [`Disk`].
//!
//! Reads mix sectors from the COW data area (bit set) and the backing disk (bit clear).
//! Writes go to the COW data area first and only then to the bitmap, so a crash of the VMM
//! never leaves a set bit over unwritten data. Partial-sector writes are completed from the
//! current contents (read-modify-write). The backing disk is never written.
//!
//! The bitmap is read from the file [`BITMAP_CHUNK`] bytes at a time, when a request first
//! touches the sectors a chunk covers: opening a COW file reads none of it, so plugging a
//! 16 TiB disk (a 4 GiB bitmap) does not stall the VMM, and memory holds only the parts of
//! the bitmap the guest has used.

use std::cell::RefCell;
use std::collections::btree_map::{BTreeMap, Entry};
use std::path::{Path, PathBuf};

use crate::bitmap;
use crate::disk::{check_range, Disk, DiskError, RawDisk, SECTOR};
use crate::geometry::{cow_sizes, CowGeometry, GeometryError};
use crate::header::CowHeader;

/// Largest bitmap accepted (4 GiB of bitmap = a 16 TiB disk).
pub const MAX_BITMAP_LEN: u64 = 4 << 30;

/// Bitmap bytes read at a time: 64 KiB, the bits of 256 MiB of disk (64 bytes under test,
/// so that small test disks span several chunks).
pub const BITMAP_CHUNK: u64 = if cfg!(test) { 64 } else { 64 << 10 };

/// A COW file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CowError {
    /// Geometry overflows.
    #[error("bad geometry in COW file '{path}'")]
    Geometry {
        /// The COW file.
        path: PathBuf,
        /// Why.
        #[source]
        source: GeometryError,
    },
    /// Only 512-byte sectors are supported for devices (UML's kernel assumes them too).
    #[error("COW file '{path}' has sector size {sectorsize}; only 512 is supported")]
    SectorSize {
        /// The COW file.
        path: PathBuf,
        /// Header sector size.
        sectorsize: u32,
    },
    /// The bitmap does not fit in the file or in memory.
    #[error("COW file '{path}' is too short or too large for its bitmap ({bitmap_len} bytes at offset {bitmap_offset}, file is {file_len} bytes)")]
    Bitmap {
        /// The COW file.
        path: PathBuf,
        /// Bitmap offset.
        bitmap_offset: u64,
        /// Bitmap length.
        bitmap_len: u64,
        /// COW file length.
        file_len: u64,
    },
}

/// A UML COW disk: a COW file (header, bitmap, data area) over a backing disk `B`.
#[derive(Debug)]
pub struct CowDisk<B: Disk> {
    cow: RawDisk,
    backing: B,
    header: CowHeader,
    geo: CowGeometry,
    /// The bitmap chunks read so far, by chunk index (see [`BITMAP_CHUNK`]).
    chunks: RefCell<BTreeMap<u64, Box<[u8]>>>,
    len: u64,
    read_only: bool,
}

impl<B: Disk> CowDisk<B> {
    /// Build from an open COW file whose header was already parsed and validated against
    /// the backing file, and the opened backing disk. Reads none of the bitmap yet.
    pub fn new(
        cow: RawDisk,
        backing: B,
        header: CowHeader,
        read_only: bool,
    ) -> Result<Self, CowError> {
        let path = cow.path().to_path_buf();
        let geo = cow_sizes(&header).map_err(|source| CowError::Geometry {
            path: path.clone(),
            source,
        })?;
        if header.sectorsize != SECTOR as u32 {
            return Err(CowError::SectorSize {
                path,
                sectorsize: header.sectorsize,
            });
        }
        let file_len = cow.len();
        let fits = geo
            .bitmap_offset
            .checked_add(geo.bitmap_len)
            .is_some_and(|end| end <= file_len);
        if !fits || geo.bitmap_len > MAX_BITMAP_LEN {
            return Err(CowError::Bitmap {
                path,
                bitmap_offset: geo.bitmap_offset,
                bitmap_len: geo.bitmap_len,
                file_len,
            });
        }
        let read_only = read_only || cow.is_read_only();
        Ok(CowDisk {
            cow,
            backing,
            len: header.size.next_multiple_of(SECTOR),
            header,
            geo,
            chunks: RefCell::new(BTreeMap::new()),
            read_only,
        })
    }

    /// The COW header.
    pub fn header(&self) -> &CowHeader {
        &self.header
    }

    /// The layout.
    pub fn geometry(&self) -> &CowGeometry {
        &self.geo
    }

    /// The whole bitmap, read from the file (it is written through on every change). For
    /// tools and tests: it can be large.
    pub fn bitmap(&self) -> Result<Vec<u8>, DiskError> {
        let mut bm = vec![0u8; self.geo.bitmap_len as usize];
        self.cow.pread_fill(&mut bm, self.geo.bitmap_offset)?;
        Ok(bm)
    }

    /// Bits per chunk.
    const CHUNK_SECTORS: u64 = BITMAP_CHUNK * 8;

    /// Calls `f` with chunk `ci` of the bitmap, reading it first if need be.
    fn with_chunk<T>(&self, ci: u64, f: impl FnOnce(&mut [u8]) -> T) -> Result<T, DiskError> {
        let mut chunks = self.chunks.borrow_mut();
        let chunk = match chunks.entry(ci) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let start = ci * BITMAP_CHUNK;
                let len = self.geo.bitmap_len.saturating_sub(start).min(BITMAP_CHUNK);
                let mut buf = vec![0u8; len as usize].into_boxed_slice();
                self.cow
                    .pread_fill(&mut buf, self.geo.bitmap_offset + start)?;
                e.insert(buf)
            }
        };
        Ok(f(chunk))
    }

    /// Splits `first..first + count` at chunk boundaries: (chunk, first sector in it, count).
    fn windows(first: u64, count: u64) -> impl Iterator<Item = (u64, u64, u64)> {
        let end = first.saturating_add(count);
        let mut s = first;
        std::iter::from_fn(move || {
            if s >= end {
                return None;
            }
            let ci = s / Self::CHUNK_SECTORS;
            let rel = s % Self::CHUNK_SECTORS;
            let n = (Self::CHUNK_SECTORS - rel).min(end - s);
            s += n;
            Some((ci, rel, n))
        })
    }

    /// Maximal runs of sectors in `first..first + count` with the same bit (see
    /// [`bitmap::runs`]); sectors beyond the bitmap are not in the COW file.
    fn runs(&self, first: u64, count: u64) -> Result<Vec<(u64, u64, bool)>, DiskError> {
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let chunks = self.geo.bitmap_len.div_ceil(BITMAP_CHUNK);
        for (ci, rel, n) in Self::windows(first, count) {
            let base = ci * Self::CHUNK_SECTORS;
            let part = if ci < chunks {
                self.with_chunk(ci, |c| bitmap::runs(c, rel, n))?
            } else {
                vec![(rel, n, false)]
            };
            for (s, k, bit) in part {
                match out.last_mut() {
                    Some(last) if last.2 == bit && last.0 + last.1 == base + s => last.1 += k,
                    _ => out.push((base + s, k, bit)),
                }
            }
        }
        Ok(out)
    }

    /// The COW file's path.
    pub fn cow_path(&self) -> &Path {
        self.cow.path()
    }

    /// The backing disk.
    pub fn backing(&self) -> &B {
        &self.backing
    }

    /// Read `buf.len()` bytes of the backing disk at `pos`, zeros past its end.
    fn read_backing(&self, buf: &mut [u8], pos: u64) -> Result<(), DiskError> {
        let blen = self.backing.len();
        let avail = blen.saturating_sub(pos).min(buf.len() as u64) as usize;
        if avail > 0 {
            self.backing.read_at(&mut buf[..avail], pos)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<(u64, u64), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly {
                path: self.cow.path().to_path_buf(),
            });
        }
        check_range(offset, len, self.len)?;
        let first = offset / SECTOR;
        let end = (offset + len).div_ceil(SECTOR);
        if !bitmap::covers(self.geo.bitmap_len as usize, first, end - first) {
            return Err(DiskError::Unmapped {
                path: self.cow.path().to_path_buf(),
                sector: first.max(self.geo.mapped_sectors),
            });
        }
        Ok((first, end - first))
    }

    /// Set the bits of `first..first+count` and write the changed bitmap bytes (after the
    /// data: the caller wrote it first).
    fn commit_bits(&mut self, first: u64, count: u64) -> Result<(), DiskError> {
        for (ci, rel, n) in Self::windows(first, count) {
            let bytes = self.with_chunk(ci, |c| {
                let range = bitmap::byte_range(c.len(), rel, n);
                let mut bytes = c[range.clone()].to_vec();
                let changed = bitmap::set_range(&mut bytes, rel - range.start as u64 * 8, n)?;
                Some((range.start, bytes, changed))
            })?;
            let Some((start, bytes, changed)) = bytes else {
                continue;
            };
            let at = ci * BITMAP_CHUNK + (start + changed.start) as u64;
            self.cow
                .pwrite_all(&bytes[changed.clone()], self.geo.bitmap_offset + at)?;
            // In memory only once it is in the file.
            self.with_chunk(ci, |c| {
                c[start..start + bytes.len()].copy_from_slice(&bytes)
            })?;
        }
        Ok(())
    }
}

impl<B: Disk> Disk for CowDisk<B> {
    fn len(&self) -> u64 {
        self.len
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.len)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let first = offset / SECTOR;
        let count = end.div_ceil(SECTOR) - first;
        for (s, n, in_cow) in self.runs(first, count)? {
            let lo = (s * SECTOR).max(offset);
            let hi = ((s + n) * SECTOR).min(end);
            let part = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            if in_cow {
                self.cow.pread_fill(part, self.geo.data_offset + lo)?;
            } else {
                self.read_backing(part, lo)?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let (first, count) = self.check_writable(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let start = first * SECTOR;
        if offset == start && buf.len() as u64 == count * SECTOR {
            self.cow.pwrite_all(buf, self.geo.data_offset + start)?;
        } else {
            // Read-modify-write of the partial head and tail sectors from the current data.
            let mut whole = vec![0u8; (count * SECTOR) as usize];
            let last = (count - 1) * SECTOR;
            self.read_at(&mut whole[..SECTOR as usize], start)?;
            if count > 1 {
                self.read_at(&mut whole[last as usize..], start + last)?;
            }
            let rel = (offset - start) as usize;
            whole[rel..rel + buf.len()].copy_from_slice(buf);
            self.cow.pwrite_all(&whole, self.geo.data_offset + start)?;
        }
        self.commit_bits(first, count)
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        // UML fsyncs the backing fd here (a bug); the COW file is what needs it.
        if self.read_only {
            return Ok(());
        }
        self.cow.flush()
    }

    /// As in UML, a discard on a COW device is a write of zeros (bits set, data punched).
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.check_writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let a = offset.next_multiple_of(SECTOR);
        let b = end / SECTOR * SECTOR;
        if a >= b {
            return self.write_at(&vec![0u8; len as usize], offset);
        }
        if offset < a {
            self.write_at(&vec![0u8; (a - offset) as usize], offset)?;
        }
        self.cow.zero_range(self.geo.data_offset + a, b - a)?;
        self.commit_bits(a / SECTOR, (b - a) / SECTOR)?;
        if b < end {
            self.write_at(&vec![0u8; (end - b) as usize], b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MemDisk;
    use crate::header::CowHeader;
    use proptest::prelude::*;
    use std::fs::OpenOptions;

    /// A fresh, sparse COW file at `p` with header `h` (as `uml_mkcow` lays it out).
    fn cow_file(p: &Path, h: &CowHeader) -> RawDisk {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &h.encode_v3().unwrap(), 0).unwrap();
        f.set_len(cow_sizes(h).unwrap().file_len).unwrap();
        RawDisk::from_file(f, p, false).unwrap()
    }

    /// A fresh v3 COW file over an in-memory backing.
    fn make(backing: Vec<u8>) -> (tempfile::TempDir, CowDisk<MemDisk>) {
        let dir = tempfile::tempdir().unwrap();
        let h = CowHeader::new_v3(b"/mem".to_vec(), 0, backing.len() as u64, 512, 4096).unwrap();
        let raw = cow_file(&dir.path().join("c.cow"), &h);
        let d = CowDisk::new(raw, MemDisk::new(backing), h, false).unwrap();
        (dir, d)
    }

    /// Writes `len` bytes of `val` at `off` (zeroes them when `kind` is 0) to the disk and
    /// to the flat model of it.
    fn apply(c: &mut CowDisk<MemDisk>, model: &mut [u8], off: u64, len: usize, val: u8, kind: u8) {
        let range = off as usize..off as usize + len;
        if kind == 0 {
            c.write_zeroes(off, len as u64).unwrap();
            model[range].fill(0);
        } else {
            c.write_at(&vec![val; len], off).unwrap();
            model[range].fill(val);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    #[test]
    fn reads_backing_then_cow() {
        let back = pattern(16 * 512);
        let (_d, mut c) = make(back.clone());
        assert_eq!(c.len(), 8192);
        let mut all = vec![0u8; 8192];
        c.read_at(&mut all, 0).unwrap();
        assert_eq!(all, back);
        c.write_at(&[0xAA; 100], 1000).unwrap(); // partial: sector 1 and 2
        assert_eq!(c.bitmap().unwrap()[0], 0b0000_0110);
        c.read_at(&mut all, 0).unwrap();
        let mut want = back.clone();
        want[1000..1100].fill(0xAA);
        assert_eq!(all, want);
        assert_eq!(c.backing().data, back, "backing untouched");
        // The bitmap reached the file.
        let mut b = [0u8; 1];
        c.cow.pread_fill(&mut b, 8192).unwrap();
        assert_eq!(b[0], 0b0000_0110);
    }

    #[test]
    fn write_zeroes_and_discard_set_bits() {
        let back = vec![0x55; 8 * 512];
        let (_d, mut c) = make(back);
        c.write_zeroes(100, 1500).unwrap();
        c.discard(3072, 1024).unwrap();
        let mut all = vec![1u8; 4096];
        c.read_at(&mut all, 0).unwrap();
        assert!(all[..100].iter().all(|&b| b == 0x55));
        assert!(all[100..1600].iter().all(|&b| b == 0));
        assert!(all[1600..3072].iter().all(|&b| b == 0x55));
        assert!(all[3072..].iter().all(|&b| b == 0));
        assert_eq!(c.bitmap().unwrap()[0], 0b1100_1111);
    }

    #[test]
    fn rejects_bad_requests() {
        let (_d, mut c) = make(vec![0; 1024]);
        assert!(matches!(
            c.write_at(&[0; 512], 1024),
            Err(DiskError::OutOfRange { .. })
        ));
        let mut b = [0u8; 2];
        assert!(matches!(
            c.read_at(&mut b, u64::MAX),
            Err(DiskError::OutOfRange { .. })
        ));
        c.flush().unwrap();
    }

    #[test]
    fn huge_header_size_is_an_error_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.cow");
        std::fs::write(&p, vec![0u8; 16384]).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let raw = RawDisk::from_file(f, &p, false).unwrap();
        let h = CowHeader::new_v3(b"/b".to_vec(), 0, 1 << 60, 512, 4096).unwrap();
        let e = CowDisk::new(raw, MemDisk::new(vec![]), h, false).unwrap_err();
        assert!(matches!(e, CowError::Bitmap { .. }), "{e:?}");
        assert!(e
            .to_string()
            .contains("too short or too large for its bitmap"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any header values over a small file: an error or a usable disk, never a panic.
        #[test]
        fn arbitrary_headers(size: u64, ss in 1u32..=(1 << 20), align in 1u32..=(1 << 20), v in 0usize..4) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.cow");
            std::fs::write(&p, vec![0u8; 20000]).unwrap();
            let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            let raw = RawDisk::from_file(f, &p, false).unwrap();
            let version = [crate::header::CowVersion::V1, crate::header::CowVersion::V2,
                           crate::header::CowVersion::V3, crate::header::CowVersion::V3Broken][v];
            let h = CowHeader { version, backing_file: b"/b".to_vec(), mtime: 0,
                                size: size % (1 << 62), sectorsize: ss, alignment: align };
            if let Ok(mut d) = CowDisk::new(raw, MemDisk::new(vec![7; 4096]), h, false) {
                let n = d.len().min(4096) as usize;
                let mut buf = vec![0u8; n];
                d.read_at(&mut buf, 0).unwrap();
                if n >= 512 {
                    d.write_at(&buf[..512], 0).unwrap();
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random writes: the COW disk reads like a flat model, the backing never changes,
        /// and the set bits are exactly the touched sectors.
        #[test]
        fn model(ops in proptest::collection::vec((0u64..20 * 512, 1usize..1500, any::<u8>(), 0u8..4), 1..20)) {
            let back = pattern(20 * 512);
            let (_d, mut c) = make(back.clone());
            let mut model = back.clone();
            let mut touched = std::collections::BTreeSet::new();
            for (off, len, val, kind) in ops {
                let len = len.min((20 * 512 - off) as usize);
                if len == 0 { continue; }
                apply(&mut c, &mut model, off, len, val, kind);
                for s in off / 512..(off + len as u64).div_ceil(512) { touched.insert(s); }
            }
            let mut all = vec![0u8; 20 * 512];
            c.read_at(&mut all, 0).unwrap();
            prop_assert_eq!(&all, &model);
            prop_assert_eq!(&c.backing().data, &back);
            let bm = c.bitmap().unwrap();
            for s in 0..20 { prop_assert_eq!(bitmap::test_bit(&bm, s), touched.contains(&s)); }
        }

        /// The same over a disk whose bitmap spans several chunks, with requests across
        /// chunk boundaries.
        #[test]
        fn model_across_chunks(ops in proptest::collection::vec((0u64..1600 * 512, 1usize..600_000, any::<u8>(), 0u8..4), 1..12)) {
            let size = 1600 * 512;
            let back = pattern(size);
            let (_d, mut c) = make(back.clone());
            prop_assert!(c.geometry().bitmap_len > 3 * BITMAP_CHUNK);
            let mut model = back.clone();
            for (off, len, val, kind) in ops {
                let len = len.min(size - off as usize);
                if len == 0 { continue; }
                apply(&mut c, &mut model, off, len, val, kind);
                // A fresh open sees the same disk (the bitmap reached the file).
                let mut part = vec![0u8; len];
                c.read_at(&mut part, off).unwrap();
                prop_assert_eq!(&part[..], &model[off as usize..off as usize + len]);
            }
            let mut all = vec![0u8; size];
            c.read_at(&mut all, 0).unwrap();
            prop_assert_eq!(&all, &model);
            let f = std::fs::File::open(c.cow_path()).unwrap();
            let reopened = CowDisk::new(
                RawDisk::from_file(f, c.cow_path(), true).unwrap(),
                MemDisk::new(back.clone()),
                c.header().clone(),
                true,
            ).unwrap();
            let mut again = vec![0u8; size];
            reopened.read_at(&mut again, 0).unwrap();
            prop_assert_eq!(&again, &model);
        }
    }

    // B3: opening a COW file used to read its whole bitmap (4 GiB for a 16 TiB disk) into
    // memory at once, on the event loop when the disk was hot-plugged.
    #[test]
    fn opening_reads_none_of_the_bitmap() {
        let dir = tempfile::tempdir().unwrap();
        // A 1 TiB disk: a 256 MiB bitmap, all of it sparse.
        let h = CowHeader::new_v3(b"/b".to_vec(), 0, 1 << 40, 512, 4096).unwrap();
        let raw = cow_file(&dir.path().join("big.cow"), &h);
        let read_before = bytes_read();
        let mut c = CowDisk::new(raw, MemDisk::new(vec![]), h, false).unwrap();
        let mut sector = [1u8; 512];
        c.read_at(&mut sector, 1 << 39).unwrap();
        c.write_at(&[7; 512], 1 << 39).unwrap();
        let read = bytes_read() - read_before;
        // Other tests of this process read too: the bound is far below the bitmap's size.
        assert!(read < 64 << 20, "{} MiB read", read >> 20);
        c.read_at(&mut sector, 1 << 39).unwrap();
        assert_eq!(sector, [7; 512]);
    }

    // Bytes this process has read so far (/proc/self/io `rchar`).
    fn bytes_read() -> u64 {
        let io = std::fs::read_to_string("/proc/self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}
