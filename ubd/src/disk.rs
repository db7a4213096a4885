//! The I/O seam: the [`Disk`] trait, the file-backed [`RawDisk`] and the in-memory `MemDisk`.

use std::fs::File;
use std::io::{self, Seek};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Bytes per disk sector as the guest sees it.
pub const SECTOR: u64 = 512;

/// A failed disk operation.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A host I/O call failed.
    #[error("{op} of {len} bytes at offset {offset} in '{path}' failed")]
    Io {
        /// What was being done ("read", "write", "flush", "punch hole").
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The host error.
        #[source]
        source: io::Error,
    },
    /// The request reaches beyond the end of the disk.
    #[error("request of {len} bytes at offset {offset} is beyond the disk end ({disk_len} bytes)")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Disk length.
        disk_len: u64,
    },
    /// A write to a read-only disk.
    #[error("'{path}' is read-only")]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// A write to a sector that the COW bitmap cannot record (tail of v1/v2 files).
    #[error("sector {sector} of '{path}' has no bit in the COW bitmap (old v1/v2 rounding bug); refusing to write it")]
    Unmapped {
        /// The COW file.
        path: PathBuf,
        /// The sector.
        sector: u64,
    },
}

impl DiskError {
    /// The underlying host errno, if any (for virtio status mapping and messages).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            DiskError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Check that `offset..offset+len` lies within a disk of `disk_len` bytes.
pub fn check_range(offset: u64, len: u64, disk_len: u64) -> Result<(), DiskError> {
    match offset.checked_add(len) {
        Some(end) if end <= disk_len => Ok(()),
        _ => Err(DiskError::OutOfRange {
            offset,
            len,
            disk_len,
        }),
    }
}

/// A block device image: what the virtio-blk device and the merge tool talk to.
///
/// Offsets are bytes; requests must lie within `0..len()`.
pub trait Disk: Send {
    /// Size of the disk in bytes (a multiple of 512 for images the VMM opens).
    fn len(&self) -> u64;
    /// Whether `len()` is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;
    /// Fill `buf` from `offset`. Parts of the range past the end of the underlying file read
    /// as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError>;
    /// Write all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError>;
    /// Make completed writes durable (fsync).
    fn flush(&mut self) -> Result<(), DiskError>;
    /// Hint that a range is unused; afterwards it reads as zeros or as its old contents.
    /// The default does nothing.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        check_range(offset, len, self.len())
    }
    /// Make a range read as zeros. The default writes zero buffers.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        check_range(offset, len, self.len())?;
        write_zeros(offset, len, |zeros, at| self.write_at(zeros, at))
    }
}

impl<D: Disk + ?Sized> Disk for Box<D> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        (**self).write_at(buf, offset)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        (**self).flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        (**self).discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        (**self).write_zeroes(offset, len)
    }
}

/// Writes `len` zero bytes from `offset` through `write`, a MiB at a time at most.
fn write_zeros(
    offset: u64,
    len: u64,
    mut write: impl FnMut(&[u8], u64) -> Result<(), DiskError>,
) -> Result<(), DiskError> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64);
        write(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// A plain image file (or a COW file's own bytes, for [`crate::CowDisk`]).
///
/// Its length is the file length rounded up to 512, as UML sizes devices; reads past the
/// real end of the file return zeros.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    path: PathBuf,
    len: u64,
    read_only: bool,
    /// Lock held on the file (released when dropped with the file).
    _lock: Option<crate::lock::HostLock>,
}

impl RawDisk {
    /// Wrap an open file. `len` is taken from the file now (rounded up to 512).
    pub fn from_file(file: File, path: &Path, read_only: bool) -> Result<Self, DiskError> {
        // Seeking to the end also sizes block devices, whose st_size is 0.
        let len = (&file)
            .seek(io::SeekFrom::End(0))
            .map_err(|source| DiskError::Io {
                op: "size",
                path: path.to_path_buf(),
                offset: 0,
                len: 0,
                source,
            })?;
        Ok(RawDisk {
            file,
            path: path.to_path_buf(),
            len: len.next_multiple_of(SECTOR),
            read_only,
            _lock: None,
        })
    }

    pub(crate) fn with_lock(mut self, lock: Option<crate::lock::HostLock>) -> Self {
        self._lock = lock;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn io_err(&self, op: &'static str, offset: u64, len: u64, source: io::Error) -> DiskError {
        DiskError::Io {
            op,
            path: self.path.clone(),
            offset,
            len,
            source,
        }
    }

    /// Read without the range check: zero-fill at EOF.
    pub(crate) fn pread_fill(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err("read", offset, buf.len() as u64, e)),
            }
        }
        Ok(())
    }

    /// Write without the range check (grows the file and `len` if needed).
    pub(crate) fn pwrite_all(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_err("write", offset, buf.len() as u64, e))?;
        self.len = self
            .len
            .max((offset + buf.len() as u64).next_multiple_of(SECTOR));
        Ok(())
    }

    /// `fallocate(mode | KEEP_SIZE)`; `Ok(false)` when the filesystem does not support it.
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> Result<bool, DiskError> {
        if len == 0 {
            return Ok(true);
        }
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(self.io_err(
                "fallocate",
                offset,
                len,
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        };
        loop {
            // SAFETY: fallocate on a file descriptor we own; no memory is passed.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    mode | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    l,
                )
            };
            if r == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => return Ok(false),
                _ => return Err(self.io_err("fallocate", offset, len, e)),
            }
        }
    }

    /// Punch a hole (reads back zeros) without the range check; falls back to writing zeros.
    pub(crate) fn zero_range(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly {
                path: self.path.clone(),
            });
        }
        if !self.fallocate(libc::FALLOC_FL_PUNCH_HOLE, offset, len)? {
            write_zeros(offset, len, |zeros, at| self.pwrite_all(zeros, at))?;
        }
        Ok(())
    }
}

impl Disk for RawDisk {
    fn len(&self) -> u64 {
        self.len
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.pread_fill(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.pwrite_all(buf, offset)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_all()
            .map_err(|e| self.io_err("flush", 0, self.len, e))
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        check_range(offset, len, self.len)?;
        if self.read_only {
            return Err(DiskError::ReadOnly {
                path: self.path.clone(),
            });
        }
        // Discard is a hint: an unsupported hole punch is not an error.
        self.fallocate(libc::FALLOC_FL_PUNCH_HOLE, offset, len)
            .map(|_| ())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        check_range(offset, len, self.len)?;
        self.zero_range(offset, len)
    }
}

/// An in-memory disk for tests.
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    /// The bytes.
    pub data: Vec<u8>,
    /// Refuse writes.
    pub read_only: bool,
    /// Count of `flush` calls.
    pub flushes: usize,
}

#[cfg(any(test, feature = "test-utils"))]
impl MemDisk {
    /// A disk holding `data`.
    pub fn new(data: Vec<u8>) -> Self {
        MemDisk {
            data,
            ..MemDisk::default()
        }
    }
}

#[cfg(any(test, feature = "test-utils"))]
impl Disk for MemDisk {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly {
                path: PathBuf::from("<memory>"),
            });
        }
        check_range(offset, buf.len() as u64, self.len())?;
        let o = offset as usize;
        self.data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        self.flushes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_disk_rounds_up_and_zero_fills() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [7u8; 700]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut d = RawDisk::from_file(f, &p, false).unwrap();
        assert_eq!(d.len(), 1024);
        let mut buf = [1u8; 512];
        d.read_at(&mut buf, 512).unwrap();
        assert!(buf[..188].iter().all(|&b| b == 7) && buf[188..].iter().all(|&b| b == 0));
        assert!(matches!(
            d.read_at(&mut buf, 600),
            Err(DiskError::OutOfRange { .. })
        ));
        d.write_at(&[9u8; 512], 512).unwrap();
        d.write_zeroes(0, 512).unwrap();
        d.discard(512, 512).unwrap();
        d.flush().unwrap();
        let mut all = [1u8; 1024];
        d.read_at(&mut all, 0).unwrap();
        assert!(all[..512].iter().all(|&b| b == 0));
        assert!(all[512..].iter().all(|&b| b == 0 || b == 9));
    }

    #[test]
    fn mem_disk_default_write_zeroes() {
        let mut m = MemDisk::new(vec![5; 2048]);
        m.write_zeroes(100, 1000).unwrap();
        assert!(m.data[100..1100].iter().all(|&b| b == 0));
        assert_eq!(m.data[99], 5);
        assert_eq!(m.data[1100], 5);
    }
}
