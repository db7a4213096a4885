//! The few libc calls channels need, each wrapped with its safety argument.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

/// What kind of file a descriptor refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdKind {
    /// A regular file or a block device: always ready, epoll refuses it.
    Regular,
    /// A terminal.
    Tty,
    /// A pipe or a FIFO.
    Fifo,
    /// A socket.
    Socket,
    /// Anything else (a character device such as /dev/null).
    Other,
}

/// Classifies `fd` with `fstat`.
pub(crate) fn fd_kind(fd: RawFd) -> io::Result<FdKind> {
    // A File borrowed only for metadata: ManuallyDrop keeps it from closing the caller's fd.
    // SAFETY: `fd` is open for the duration of the call (callers check it first); the File is
    // never dropped, so the descriptor's ownership is unchanged.
    let file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let ft = file.metadata()?.file_type();
    Ok(if ft.is_file() || ft.is_block_device() {
        FdKind::Regular
    } else if ft.is_fifo() {
        FdKind::Fifo
    } else if ft.is_socket() {
        FdKind::Socket
    } else if is_tty(fd) {
        FdKind::Tty
    } else {
        FdKind::Other
    })
}

/// Whether `fd` is open.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; an invalid fd gives EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Whether epoll accepts `fd` (it refuses regular files and some devices, such as /dev/null).
pub(crate) fn can_poll(fd: RawFd) -> bool {
    // SAFETY: epoll_create1 takes flags only and returns a new descriptor or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return true;
    }
    // SAFETY: `ep` was just created and is owned here only.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: both descriptors are open; `ev` is a valid epoll_event for the call.
    unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) == 0 }
}

/// Whether `fd` is a terminal.
pub(crate) fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only queries the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Reads the file status flags.
pub(crate) fn get_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL only reads the status flags.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Sets the file status flags.
pub(crate) fn set_flags(fd: RawFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETFL only changes the status flags of the descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens a new file description on what `fd` refers to (`/proc/self/fd/N`), so that
/// O_NONBLOCK on it does not leak to the other holders of `fd` (the shell, our own stderr).
/// Works for terminals and pipes; fails for sockets.
pub(crate) fn reopen(fd: RawFd, write: bool) -> io::Result<OwnedFd> {
    let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
    let file = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    Ok(file.into())
}

/// Opens a path for a channel, nonblocking, never as controlling terminal; `append` creates
/// the file (mode 0644) and appends to it.
pub(crate) fn open_path(
    path: &std::path::Path,
    read: bool,
    write: bool,
    append: bool,
) -> io::Result<OwnedFd> {
    let mut o = OpenOptions::new();
    o.read(read)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    if append {
        o.append(true).create(true).mode(0o644);
    }
    Ok(o.open(path)?.into())
}

/// A terminal's settings.
#[derive(Clone, Copy)]
pub(crate) struct Termios(libc::termios);

impl std::fmt::Debug for Termios {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Termios")
    }
}

/// Reads `fd`'s terminal settings.
pub(crate) fn get_termios(fd: RawFd) -> io::Result<Termios> {
    // SAFETY: termios is plain data; all-zero is a valid value that tcgetattr overwrites.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid, writable termios for the duration of the call.
    if unsafe { libc::tcgetattr(fd, &mut t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Termios(t))
}

/// Applies terminal settings.
pub(crate) fn set_termios(fd: RawFd, t: &Termios) -> io::Result<()> {
    // SAFETY: `t.0` is a valid termios read by tcgetattr; tcsetattr only reads it.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t.0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal's window size as `(cols, rows)` (TIOCGWINSZ; a pts master reports its
/// slave's size). `ENOTTY` for a descriptor that is not a terminal.
pub(crate) fn window_size(fd: RawFd) -> io::Result<(u16, u16)> {
    // SAFETY: winsize is plain data; all-zero is a valid value that the ioctl overwrites.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, valid for the call.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((ws.ws_col, ws.ws_row))
}

/// Puts the terminal in raw mode (`cfmakeraw`, as UML does); returns the previous settings.
pub(crate) fn make_raw(fd: RawFd) -> io::Result<Termios> {
    let old = get_termios(fd)?;
    let mut raw = old;
    // SAFETY: cfmakeraw only modifies the termios it is given, a valid local copy.
    unsafe { libc::cfmakeraw(&mut raw.0) };
    set_termios(fd, &raw)?;
    Ok(old)
}

/// A new Unix98 pseudo-terminal: the master (nonblocking, raw) and the slave's path.
pub(crate) fn open_pts() -> io::Result<(OwnedFd, PathBuf)> {
    // SAFETY: posix_openpt takes flags only and returns a new descriptor or -1.
    let fd = unsafe {
        libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by posix_openpt and is owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: grantpt/unlockpt take the master descriptor, valid here.
    if unsafe { libc::grantpt(master.as_raw_fd()) } < 0
        // SAFETY: as above.
        || unsafe { libc::unlockpt(master.as_raw_fd()) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: `buf` is writable for `buf.len()` bytes; ptsname_r NUL-terminates on success.
    let r = unsafe { libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: ptsname_r succeeded, so `buf` holds a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    let path = PathBuf::from(name.to_string_lossy().into_owned());
    make_raw(master.as_raw_fd())?;
    Ok((master, path))
}

/// `read(2)` on a raw descriptor.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid and writable for `buf.len()` bytes.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        // r >= 0 and <= buf.len().
        Ok(r.unsigned_abs())
    }
}

/// `write(2)` on a raw descriptor.
pub(crate) fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid and readable for `buf.len()` bytes.
    let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r.unsigned_abs())
    }
}

/// A nonblocking TCP socket bound to `addr` but not listening yet: the port is taken (a clash
/// is reported now), and connections are refused until [`listen`].
pub(crate) fn tcp_bind(addr: super::spec::PortAddr) -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain arguments and returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int for the duration of the call, its size is passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr.host).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in and its exact size is passed.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Starts (or, after [`stop_listening`], resumes) listening, with UML's backlog of 1.
pub(crate) fn listen(sock: RawFd) -> io::Result<()> {
    // SAFETY: listen takes the socket and a backlog only.
    if unsafe { libc::listen(sock, 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stops a listening socket without giving up its port: queued connections are reset and new
/// ones refused until [`listen`] is called again (Linux keeps an explicitly bound port).
pub(crate) fn stop_listening(sock: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes the socket and a constant only.
    if unsafe { libc::shutdown(sock, libc::SHUT_RD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A second, close-on-exec descriptor for the same open file.
pub(crate) fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1 and touches no memory.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Accepts a connection, nonblocking and close-on-exec.
pub(crate) fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; accept4 returns a new descriptor or -1.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by accept4 and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
