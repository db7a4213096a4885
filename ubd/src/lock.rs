//! Host locking as UML does it (`os_lock_file`): a POSIX `fcntl(F_SETLK)` record lock over
//! the whole file, write lock for a writable image or COW file, read lock otherwise (the
//! backing file). These conflict with the locks a real UML takes, so a UML and kuml cannot
//! both open one image.
//!
//! POSIX record locks belong to the process and are released when *any* descriptor of the
//! file is closed by this process: keep exactly one open descriptor per image file.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds a conflicting lock.
    #[error(
        "Failed to lock '{path}', err = {errno} (F_SETLK failed, file already locked by pid {pid})"
    )]
    Locked {
        /// The file.
        path: PathBuf,
        /// errno of the failed `F_SETLK` (`EAGAIN` or `EACCES`).
        errno: i32,
        /// Holder reported by `F_GETLK` (-1 for open-file-description locks).
        pid: i32,
    },
    /// `fcntl` itself failed.
    #[error("Failed to lock '{path}', err = {}", .source.raw_os_error().unwrap_or(0))]
    Fcntl {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Which lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// `F_RDLCK` (backing files, read-only images).
    Read,
    /// `F_WRLCK` (writable images and COW files).
    Write,
}

/// Marker for a held lock; it lives as long as the descriptor it was taken on.
#[derive(Debug)]
pub struct HostLock {
    /// The kind of lock.
    pub kind: LockKind,
}

fn flock_for(kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl
}

/// Take UML's whole-file lock on `file` (write lock if `write`), or fail with UML's messages.
pub fn lock_file(file: &File, path: &Path, write: bool) -> Result<HostLock, LockError> {
    let (ty, kind) = if write {
        (libc::F_WRLCK, LockKind::Write)
    } else {
        (libc::F_RDLCK, LockKind::Read)
    };
    let mut fl = flock_for(ty as libc::c_short);
    // SAFETY: F_SETLK reads the valid `flock` we pass; the descriptor is owned by `file`.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl as *const libc::flock) };
    if r == 0 {
        return Ok(HostLock { kind });
    }
    let set_err = io::Error::last_os_error();
    let errno = set_err.raw_os_error().unwrap_or(0);
    if errno != libc::EAGAIN && errno != libc::EACCES {
        return Err(LockError::Fcntl {
            path: path.to_path_buf(),
            source: set_err,
        });
    }
    // SAFETY: F_GETLK writes into the valid `flock` we pass; the descriptor is owned by `file`.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl as *mut libc::flock) };
    if r != 0 {
        return Err(LockError::Fcntl {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    log::error!(target: "uml", "F_SETLK failed, file already locked by pid {}", fl.l_pid);
    log::error!(target: "uml", "Failed to lock '{}', err = {}", path.display(), errno);
    Err(LockError::Locked {
        path: path.to_path_buf(),
        errno,
        pid: fl.l_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_process_locks_do_not_conflict() {
        // POSIX semantics: one process never conflicts with itself (as in UML).
        let f = tempfile::NamedTempFile::new().unwrap();
        let a = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        let b = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        assert_eq!(lock_file(&a, f.path(), true).unwrap().kind, LockKind::Write);
        assert_eq!(lock_file(&b, f.path(), false).unwrap().kind, LockKind::Read);
    }
}
