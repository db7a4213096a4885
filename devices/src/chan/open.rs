//! Opening a channel's host descriptors: inherited `fd:N`, `file:`, `tty:`, and descriptors
//! kuml already owns.
//!
//! Descriptors given with `fd:N` that are terminals or pipes are reopened through
//! `/proc/self/fd/N`, so that O_NONBLOCK stays on kuml's own file description and does not
//! leak into the shell's or kuml's stderr; a socket gets O_NONBLOCK directly, restored on
//! drop. An input terminal is put in raw mode (as UML does) and restored on drop.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use log::{debug, warn};

use super::handle::Handle;
use super::sys::{self, FdKind};
use super::{Chan, ChanError};

/// Opens one direction of a pair.
pub(super) fn open_half(chan: &Chan, write: bool) -> Result<Option<Arc<Handle>>, ChanError> {
    match chan {
        Chan::Null => Ok(None),
        Chan::Fd(n) if !sys::fd_is_open(*n) => {
            // A closed stdin/stdout (kuml started detached) leaves the line without that half.
            warn!("fd:{n} is not open; the channel works without it");
            Ok(None)
        }
        Chan::Fd(n) => open_fd(*n, write).map(|h| Some(Arc::new(h))),
        Chan::File(path) => {
            if !write {
                // file: is output-only; its input is null.
                return Ok(None);
            }
            let fd = sys::open_path(path, false, true, true).map_err(open_err(path))?;
            Ok(Some(Arc::new(Handle::owned(fd, FdKind::Regular))))
        }
        Chan::Tty(path) => open_tty(path, !write, write).map(Some),
        Chan::Pts | Chan::Pty => Err(ChanError::Unsupported(
            "pts/pty as one half of a pair (use it for both directions)",
        )),
        Chan::Port(_) => Err(ChanError::Unsupported(
            "port as one half of a pair (use it for both directions)",
        )),
        Chan::Xterm => Err(ChanError::Unsupported(
            "xterm as one half of a pair (use it for both directions)",
        )),
    }
}

/// Opens a `tty:` device for reading, writing or both; a terminal read from is put in raw
/// mode.
pub(super) fn open_tty(path: &Path, read: bool, write: bool) -> Result<Arc<Handle>, ChanError> {
    let fd = sys::open_path(path, read, write, false).map_err(open_err(path))?;
    let mut h = Handle::owned(fd, FdKind::Tty);
    if read && sys::is_tty(h.fd) {
        h.make_raw().map_err(open_err(path))?;
    }
    Ok(Arc::new(h))
}

fn open_err(path: &Path) -> impl FnOnce(io::Error) -> ChanError + '_ {
    move |source| ChanError::Open {
        path: path.to_path_buf(),
        source,
    }
}

/// Sets up an inherited descriptor: a private nonblocking file description when possible.
fn open_fd(n: i32, write: bool) -> Result<Handle, ChanError> {
    let err = |source| ChanError::Fd { fd: n, source };
    let kind = sys::fd_kind(n).map_err(err)?;
    let mut h = match kind {
        FdKind::Regular => Handle::borrowed(n, kind),
        FdKind::Tty | FdKind::Fifo => match sys::reopen(n, write) {
            Ok(fd) => Handle::owned(fd, kind),
            Err(e) => {
                debug!("fd:{n}: cannot reopen ({e}); making it nonblocking in place");
                in_place(n, kind).map_err(err)?
            }
        },
        FdKind::Socket | FdKind::Other => in_place(n, kind).map_err(err)?,
    };
    if !write && kind == FdKind::Tty {
        h.make_raw().map_err(err)?;
    }
    Ok(h)
}

fn in_place(n: RawFd, kind: FdKind) -> io::Result<Handle> {
    let flags = sys::get_flags(n)?;
    sys::set_flags(n, flags | libc::O_NONBLOCK)?;
    let mut h = Handle::borrowed(n, kind);
    h.restore_flags = Some(flags);
    Ok(h)
}

/// A descriptor kuml already owns, made nonblocking.
pub(super) fn owned(fd: OwnedFd) -> io::Result<Arc<Handle>> {
    let kind = sys::fd_kind(fd.as_raw_fd())?;
    let flags = sys::get_flags(fd.as_raw_fd())?;
    sys::set_flags(fd.as_raw_fd(), flags | libc::O_NONBLOCK)?;
    Ok(Arc::new(Handle::owned(fd, kind)))
}

#[cfg(test)]
mod tests {
    use super::super::{parse_line, ChanRead, Channel, LineClass};
    use super::*;
    use std::io::Write;

    #[test]
    fn test_file_channel_appends_and_has_no_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        std::fs::write(&path, b"old\n").unwrap();
        let spec = parse_line(&format!("file:{}", path.display()))
            .unwrap()
            .unwrap();
        let mut ch = Channel::open(&spec, LineClass::Console, 1).unwrap();
        assert!(!ch.has_input());
        ch.write(b"new\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"old\nnew\n");
        assert_eq!(ch.describe(), format!("file:{}", path.display()));
    }

    #[test]
    fn test_fd_not_open_leaves_a_null_half() {
        let spec = parse_line("fd:987654,fd:987655").unwrap().unwrap();
        let mut ch = Channel::open(&spec, LineClass::Console, 0).unwrap();
        assert!(!ch.has_input());
        ch.write(b"x");
        assert_eq!(ch.describe(), "fd:987654,fd:987655");
    }

    #[test]
    fn test_regular_file_input_is_always_ready_then_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        std::fs::write(&path, b"typed").unwrap();
        let f: OwnedFd = std::fs::File::open(&path).unwrap().into();
        let n = f.as_raw_fd();
        let spec = parse_line(&format!("fd:{n},null")).unwrap().unwrap();
        let mut ch = Channel::open(&spec, LineClass::Console, 0).unwrap();
        assert_eq!(ch.input_fd(), None);
        assert!(ch.input_always_ready());
        let mut buf = [0u8; 16];
        assert_eq!(ch.read(&mut buf), ChanRead::Data(5));
        assert_eq!(ch.read(&mut buf), ChanRead::Closed);
        assert!(!ch.input_always_ready());
        drop(f);
    }

    #[test]
    fn test_dev_null_input_detaches_at_once() {
        let spec = parse_line("tty:/dev/null").unwrap().unwrap();
        let mut ch = Channel::open(&spec, LineClass::Serial, 0).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(ch.read(&mut buf), ChanRead::Closed);
    }

    #[test]
    fn test_fd_pipe_is_reopened_private() {
        let (r, w) = std::io::pipe().unwrap();
        let rfd: OwnedFd = r.into();
        let n = rfd.as_raw_fd();
        let spec = parse_line(&format!("fd:{n}")).unwrap().unwrap();
        let mut ch = Channel::open(&spec, LineClass::Console, 0).unwrap();
        // The inherited descriptor stays blocking; ours is nonblocking.
        assert_eq!(sys::get_flags(n).unwrap() & libc::O_NONBLOCK, 0);
        let mut buf = [0u8; 4];
        assert_eq!(ch.read(&mut buf), ChanRead::WouldBlock);
        let mut w = std::fs::File::from(OwnedFd::from(w));
        w.write_all(b"ab").unwrap();
        assert_eq!(ch.read(&mut buf), ChanRead::Data(2));
    }
}
