//! Socket system calls std does not wrap, for the vector and user-mode-stack transports:
//! sockets of any family/type/protocol, `sockaddr` conversions, integer socket options,
//! `SO_TYPE`, interface indexes, and the `recvmmsg`/`sendmmsg` rings ([`RxRing`], [`TxRing`])
//! that give UML's vector transports their batched I/O.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A nonblocking, close-on-exec socket.
pub(crate) fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked and then owned.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(level, name, int)`.
pub(crate) fn set_int_opt(fd: &impl AsRawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// `getsockopt(SOL_SOCKET, SO_TYPE)`; `ENOTSOCK` for a descriptor that is no socket.
pub(crate) fn socket_type(fd: RawFd) -> io::Result<i32> {
    let mut v: i32 = 0;
    let mut len = mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the live `v`.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

/// Whether `fd` is an open descriptor.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD takes no pointer; it only reports whether `fd` is open.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Sets `O_NONBLOCK` and `FD_CLOEXEC` on `fd`.
pub(crate) fn set_nonblocking_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on a descriptor the caller owns.
    unsafe {
        let fl = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
        let fd_flags = cvt(libc::fcntl(fd, libc::F_GETFD))?;
        cvt(libc::fcntl(fd, libc::F_SETFD, fd_flags | libc::FD_CLOEXEC))?;
    }
    Ok(())
}

/// A `sockaddr` of any family and its length.
#[derive(Clone, Copy)]
pub(crate) struct RawAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl std::fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.socket_addr() {
            Some(ip) => write!(f, "{ip}"),
            None => write!(f, "sockaddr(family {})", self.storage.ss_family),
        }
    }
}

impl RawAddr {
    fn zeroed() -> RawAddr {
        RawAddr {
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            storage: unsafe { mem::zeroed() },
            len: 0,
        }
    }

    /// The address of `a`.
    pub fn from_socket_addr(a: SocketAddr) -> RawAddr {
        let mut r = RawAddr::zeroed();
        match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in fits in sockaddr_storage, which is aligned for it.
                unsafe {
                    std::ptr::write((&mut r.storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                r.len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is aligned for it.
                unsafe {
                    std::ptr::write((&mut r.storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                r.len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        r
    }

    /// The IP socket address, for `AF_INET`/`AF_INET6`.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match i32::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin: libc::sockaddr_in = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6: libc::sockaddr_in6 = unsafe {
                    std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast())
                };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// The IP address, for `AF_INET`/`AF_INET6`.
    pub fn ip(&self) -> Option<IpAddr> {
        self.socket_addr().map(|a| a.ip())
    }
}

/// `bind(fd, addr)`.
pub(crate) fn bind(fd: &impl AsRawFd, addr: &RawAddr) -> io::Result<()> {
    // SAFETY: passes a pointer to a live sockaddr and its length.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr.storage as *const libc::sockaddr_storage).cast(),
            addr.len,
        )
    })
    .map(|_| ())
}

/// The index of host interface `name`.
pub(crate) fn if_index(name: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with a NUL"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that lives across the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(i).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "interface index"))
}

/// One received datagram.
#[derive(Debug)]
pub(crate) struct Received<'a> {
    /// Its bytes (at most the slot's size).
    pub data: &'a [u8],
    /// Its full length (above `data.len()` when it was truncated).
    pub len: usize,
    /// Where it came from, if the ring asks for addresses.
    pub from: Option<&'a RawAddr>,
}

/// Received datagrams of one `recvmmsg` call, handed out one at a time.
#[derive(Debug)]
pub(crate) struct RxRing {
    slots: Vec<Vec<u8>>,
    lens: Vec<usize>,
    addrs: Vec<RawAddr>,
    want_addr: bool,
    count: usize,
    next: usize,
}

impl RxRing {
    /// `depth` slots of `slot_len` bytes; with `want_addr`, each datagram's source address.
    pub fn new(depth: usize, slot_len: usize, want_addr: bool) -> RxRing {
        RxRing {
            slots: vec![vec![0u8; slot_len]; depth.max(1)],
            lens: vec![0; depth.max(1)],
            addrs: vec![RawAddr::zeroed(); depth.max(1)],
            want_addr,
            count: 0,
            next: 0,
        }
    }

    /// The next datagram: from this ring, or after one `recvmmsg` on `fd` (nonblocking;
    /// `WouldBlock` when nothing is pending).
    pub fn pop(&mut self, fd: RawFd) -> io::Result<Received<'_>> {
        if self.next == self.count {
            self.fill(fd)?;
        }
        let i = self.next;
        self.next += 1;
        let len = self.lens[i];
        Ok(Received {
            data: &self.slots[i][..len.min(self.slots[i].len())],
            len,
            from: self.want_addr.then_some(&self.addrs[i]),
        })
    }

    fn fill(&mut self, fd: RawFd) -> io::Result<()> {
        let n = self.slots.len();
        let mut iovs: Vec<libc::iovec> = self
            .slots
            .iter_mut()
            .map(|s| libc::iovec {
                iov_base: s.as_mut_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
        for (i, iov) in iovs.iter_mut().enumerate() {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            if self.want_addr {
                h.msg_hdr.msg_name =
                    (&mut self.addrs[i].storage as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
            hdrs.push(h);
        }
        let got = loop {
            // SAFETY: every header points at a live iovec over a slot owned by `self` and, if
            // asked, at a live sockaddr_storage of `self`; all outlive the call. MSG_TRUNC
            // makes the kernel report full lengths without writing beyond the slots.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for (i, h) in hdrs.iter().take(got).enumerate() {
            self.lens[i] = h.msg_len as usize;
            if self.want_addr {
                self.addrs[i].len = h.msg_hdr.msg_namelen;
            }
        }
        if got == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.count = got;
        self.next = 0;
        Ok(())
    }
}

/// Frames queued for one `sendmmsg` call.
#[derive(Debug)]
pub(crate) struct TxRing {
    slots: Vec<Vec<u8>>,
    start: usize,
    end: usize,
}

impl TxRing {
    /// Room for `depth` frames.
    pub fn new(depth: usize) -> TxRing {
        TxRing {
            slots: vec![Vec::new(); depth.max(1)],
            start: 0,
            end: 0,
        }
    }

    /// Whether frames wait to be sent.
    pub fn pending(&self) -> bool {
        self.start < self.end
    }

    /// An empty buffer for the next frame (committed with [`TxRing::commit`]); `None` when
    /// the ring is full.
    pub fn slot(&mut self) -> Option<&mut Vec<u8>> {
        if self.end == self.slots.len() && self.start > 0 {
            self.slots.rotate_left(self.start);
            self.end -= self.start;
            self.start = 0;
        }
        let s = self.slots.get_mut(self.end)?;
        s.clear();
        Some(s)
    }

    /// Queues the frame written into the last [`TxRing::slot`].
    pub fn commit(&mut self) {
        self.end += 1;
    }

    /// Whether a new frame would not fit.
    pub fn full(&self) -> bool {
        self.end - self.start == self.slots.len()
    }

    /// Sends what is queued with `sendmmsg` (to `dest` when given). `WouldBlock` when the
    /// socket took only part; a frame the kernel refuses otherwise is dropped and the first
    /// such error returned after the rest went out.
    pub fn flush(&mut self, fd: RawFd, dest: Option<&RawAddr>) -> io::Result<()> {
        let mut first_err = None;
        while self.pending() {
            let mut iovs: Vec<libc::iovec> = self.slots[self.start..self.end]
                .iter_mut()
                .map(|s| libc::iovec {
                    iov_base: s.as_mut_ptr().cast(),
                    iov_len: s.len(),
                })
                .collect();
            let mut hdrs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| {
                    // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
                    let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                    h.msg_hdr.msg_iov = iov;
                    h.msg_hdr.msg_iovlen = 1;
                    if let Some(d) = dest {
                        h.msg_hdr.msg_name = (&d.storage as *const libc::sockaddr_storage)
                            .cast_mut()
                            .cast();
                        h.msg_hdr.msg_namelen = d.len;
                    }
                    h
                })
                .collect();
            // SAFETY: every header points at a live iovec over a queued frame and, if given,
            // at `dest`, which the kernel only reads; all outlive the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    hdrs.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                self.start += r as usize;
                continue;
            }
            let e = if r == 0 {
                io::ErrorKind::WriteZero.into()
            } else {
                io::Error::last_os_error()
            };
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Err(e),
                _ => {
                    // This frame cannot go; the others may.
                    self.start += 1;
                    first_err.get_or_insert(e);
                }
            }
        }
        self.start = 0;
        self.end = 0;
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn rings_move_batches_over_a_socketpair() {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut tx = TxRing::new(4);
        for i in 0..4u8 {
            let s = tx.slot().expect("room");
            s.extend_from_slice(&[i; 10]);
            tx.commit();
        }
        assert!(tx.full() && tx.slot().is_none());
        tx.flush(a.as_raw_fd(), None).unwrap();
        assert!(!tx.pending());
        let mut rx = RxRing::new(3, 8, false);
        let mut got = Vec::new();
        loop {
            match rx.pop(b.as_raw_fd()) {
                Ok(r) => got.push((r.data.to_vec(), r.len)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), 4, "two recvmmsg calls of up to 3");
        for (i, (data, len)) in got.iter().enumerate() {
            assert_eq!(*len, 10, "the full length is reported");
            assert_eq!(data, &vec![i as u8; 8], "truncated to the slot");
        }
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["192.0.2.7:1701", "[2001:db8::1]:0"] {
            let s: SocketAddr = a.parse().unwrap();
            assert_eq!(RawAddr::from_socket_addr(s).socket_addr(), Some(s));
        }
    }
}
