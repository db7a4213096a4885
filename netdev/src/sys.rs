//! The few raw system calls std does not wrap: eventfd, `recv(MSG_TRUNC)`, TUNSETIFF (with
//! TUNSETOFFLOAD), interface address/flags ioctls, a UDP socket with SO_REUSEADDR set before
//! bind, a nonblocking unix connect, and poll.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A nonblocking, close-on-exec eventfd.
#[cfg(any(test, feature = "test-utils"))]
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; the returned fd is checked and then owned by us.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes an eventfd readable.
#[cfg(any(test, feature = "test-utils"))]
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a valid eventfd; the result is only logged.
    let r = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if r != 8 {
        log::warn!("eventfd write failed: {}", io::Error::last_os_error());
    }
}

/// Resets an eventfd's counter (nonblocking).
#[cfg(any(test, feature = "test-utils"))]
pub(crate) fn eventfd_drain(fd: &OwnedFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; EAGAIN (already zero) is fine.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

/// Receives one datagram into `buf`, nonblocking, and returns its **full** length, which is
/// larger than `buf.len()` when the datagram was truncated.
pub(crate) fn recv_trunc(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we borrow
    // mutably for the duration of the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // n >= 0 was just checked.
    Ok(n.unsigned_abs())
}

fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data (arrays, integers, a union of those and a pointer);
    // all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    if name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name '{name}' is too long or contains NUL"),
        ));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(ifr)
}

/// TUNSETIFF `{name, IFF_TAP|IFF_NO_PI}` on an open `/dev/net/tun`. An empty name lets the
/// kernel pick `tapN`. Returns the interface name.
pub(crate) fn tun_set_tap(tun: &File, name: &str) -> io::Result<String> {
    let mut ifr = ifreq_named(name)?;
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `ifr` is, borrowed for
    // the call; `tun` is an open /dev/net/tun.
    cvt(unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    })?;
    // SAFETY: `ifr_name` is a zero-initialized 16-byte array; the kernel writes a
    // NUL-terminated name of at most 15 bytes, so a NUL is always within the array.
    let cname = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) };
    let name = cname.to_string_lossy().into_owned();
    // kuml reads whole frames without a virtio-net header, so the tap must not hand it
    // checksum-less or segmentation-offload packets (up to 64 KiB): offloads are the device's,
    // not the descriptor's, and a persistent tap keeps those its last user (QEMU, ethtool)
    // turned on. Off, the host stack segments and checksums before the tap, as for any NIC.
    // SAFETY: TUNSETOFFLOAD takes its argument by value; `tun` is attached to the tap now.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
        log::warn!(
            "{name}: cannot turn the tap's offloads off ({}): frames the host leaves to the \
             device may reach the guest unfinished",
            io::Error::last_os_error()
        );
    }
    Ok(name)
}

fn inet_dgram_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked and then owned.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn if_ioctl(sock: &OwnedFd, req: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: the SIOC[GS]IF* requests used here read/write one `struct ifreq`, which
    // `ifr` is, borrowed for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), req, ifr as *mut libc::ifreq) }).map(|_| ())
}

fn set_if_sockaddr(sock: &OwnedFd, name: &str, req: libc::Ioctl, ip: Ipv4Addr) -> io::Result<()> {
    let mut ifr = ifreq_named(name)?;
    let sin = sockaddr_in(SocketAddrV4::new(ip, 0));
    // SAFETY: sockaddr_in (16 bytes) fits in the union's `sockaddr` member (16 bytes); we
    // write it through a pointer to that member.
    unsafe {
        std::ptr::write_unaligned(
            (&mut ifr.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast::<libc::sockaddr_in>(),
            sin,
        )
    };
    if_ioctl(sock, req, &mut ifr)
}

/// Whether a network interface `name` exists in this thread's network namespace (asked through
/// a socket, which lives in that namespace; sysfs would show the namespace it was mounted in).
pub(crate) fn if_exists(name: &str) -> bool {
    let Ok(sock) = inet_dgram_socket() else {
        return false;
    };
    let Ok(mut ifr) = ifreq_named(name) else {
        return false;
    };
    if_ioctl(&sock, libc::SIOCGIFINDEX, &mut ifr).is_ok()
}

/// `ifconfig <name> <ip> netmask <mask> up`, as UML's `uml_net` helper does.
pub(crate) fn if_configure(
    name: &str,
    ip: Option<(Ipv4Addr, Ipv4Addr)>,
    up: bool,
) -> io::Result<()> {
    let sock = inet_dgram_socket()?;
    if let Some((ip, mask)) = ip {
        set_if_sockaddr(&sock, name, libc::SIOCSIFADDR, ip)?;
        set_if_sockaddr(&sock, name, libc::SIOCSIFNETMASK, mask)?;
    }
    if up {
        let mut ifr = ifreq_named(name)?;
        if_ioctl(&sock, libc::SIOCGIFFLAGS, &mut ifr)?;
        // SAFETY: SIOCGIFFLAGS just filled the `ifru_flags` member.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if_ioctl(&sock, libc::SIOCSIFFLAGS, &mut ifr)?;
    }
    Ok(())
}

/// A UDP socket with SO_REUSEADDR set before it is bound to `addr` (std cannot do this).
pub(crate) fn udp_reuse_bind(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let fd = inet_dgram_socket()?;
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int and its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let sin = sockaddr_in(addr);
    // SAFETY: passes a pointer to a live sockaddr_in and its exact size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(UdpSocket::from(fd))
}

/// Connects a nonblocking, close-on-exec stream socket to the unix socket at `path`. A
/// listener whose connection queue is full fails with `WouldBlock` instead of blocking.
pub(crate) fn unix_connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a usable unix socket path (empty, too long or with a NUL byte)",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket takes no pointers; the result is checked and then owned.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: passes a pointer to a live sockaddr_un and its exact size.
    cvt(unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    })?;
    Ok(UnixStream::from(sock))
}

/// Waits until `fd` is readable (or hung up), at most `timeout`.
pub(crate) fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: polls one live pollfd for the duration of the call.
    match cvt(unsafe { libc::poll(&mut p, 1, ms) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        r => r.map(|_| ()),
    }
}

/// The kernel's `struct rtentry` (linux/route.h) for SIOCADDRT.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn to_sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = sockaddr_in(SocketAddrV4::new(ip, 0));
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain old data; this is the
    // standard reinterpretation the socket API is built on.
    unsafe { mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// `route add -host <ip> dev <dev>` (SIOCADDRT), as `uml_net 4 add` does.
pub(crate) fn add_host_route(dev: &str, ip: Ipv4Addr) -> io::Result<()> {
    let sock = inet_dgram_socket()?;
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    let ifr = ifreq_named(dev)?;
    name.copy_from_slice(&ifr.ifr_name);
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: to_sockaddr(ip),
        rt_gateway: to_sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_genmask: to_sockaddr(Ipv4Addr::BROADCAST),
        rt_flags: libc::RTF_UP | libc::RTF_HOST,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: name.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one `struct rtentry` (laid out as the kernel's above) and the
    // NUL-terminated device name it points to; both live across the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut rt as *mut RtEntry) })
        .map(|_| ())
}
