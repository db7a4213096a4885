//! The vector transports' backends (`vec<N>:transport=…`), with UML's batched I/O:
//!
//! * `tap`: a tap device ([`crate::TapBackend`]; a new `tapXXXXXX` without `ifname=`), frames
//!   by `read`/`write` as UML's vector tap does (no vnet header: the guest's virtio-net has
//!   no offloads to hand it to);
//! * `raw`: one `AF_PACKET` socket bound to the interface (all protocols), promiscuous for
//!   the socket's life, `PACKET_QDISC_BYPASS` as in UML;
//! * `gre`, `l2tpv3`: a raw IP (protocol 47 / 115) or UDP socket bound to `src`, sending to
//!   `dst` with the [`crate::tunnel`] headers; only packets from `dst` are taken;
//! * `fd`: a descriptor the caller opened, one frame per datagram (a `SOCK_DGRAM` or
//!   `SOCK_SEQPACKET` socket, as a socketpair to libslirp-helper), or per `read`/`write` for
//!   a descriptor that is no socket (a tap); a stream socket is refused.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::Arc;

use crate::sock::{self, RawAddr};
use crate::tunnel::{Encap, IPPROTO_GRE, IPPROTO_L2TP, MAX_HEADER};
use crate::vecio::VectorIo;
use crate::vector::{Endpoints, VectorConfig, VectorKind};
use crate::vnet::{finish_checksum, VnetHeader, F_NEEDS_CSUM, VNET_HDR_LEN};
use crate::{inherited, Backend, SharedFd, TapBackend};

/// Errors of opening a vector transport.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// A `src=`/`dst=` that does not resolve to an address of the right family.
    #[error("cannot resolve {what} '{host}' to an IPv{family} address")]
    Resolve {
        /// `src` or `dst`.
        what: &'static str,
        /// The text given.
        host: String,
        /// 4 or 6.
        family: u8,
        /// The resolver's error, if it gave one.
        #[source]
        source: Option<io::Error>,
    },
    /// Creating, configuring or binding the socket failed.
    #[error("{transport}: {step} failed")]
    Socket {
        /// The transport.
        transport: &'static str,
        /// What was being done.
        step: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The tap.
    #[error("tap")]
    Tap(#[source] crate::TapError),
    /// `fd=`: the descriptor cannot carry frames.
    #[error("fd {fd}: {reason}")]
    Fd {
        /// The descriptor.
        fd: RawFd,
        /// Why not.
        reason: String,
        /// The system error, if any.
        #[source]
        source: Option<io::Error>,
    },
    /// `ifup=` failed.
    #[error("ifup script '{script}' for {ifname}")]
    Ifup {
        /// The script.
        script: String,
        /// The interface.
        ifname: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn sock_err(
    transport: &'static str,
    step: impl Into<String>,
) -> impl FnOnce(io::Error) -> VectorError {
    let step = step.into();
    move |source| VectorError::Socket {
        transport,
        step,
        source,
    }
}

/// Opens the transport `cfg` describes.
pub fn open_vector(cfg: &VectorConfig) -> Result<Box<dyn Backend>, VectorError> {
    let b: Box<dyn Backend> = match &cfg.kind {
        VectorKind::Tap { ifname } => {
            let name = ifname.clone().unwrap_or_else(random_tap_name);
            let tap = TapBackend::open_named(&name).map_err(VectorError::Tap)?;
            run_ifup(cfg, tap.name())?;
            Box::new(tap)
        }
        VectorKind::Raw { ifname } => {
            let raw = RawBackend::open(ifname, cfg)?;
            run_ifup(cfg, ifname)?;
            Box::new(raw)
        }
        VectorKind::Gre(g) => Box::new(TunnelBackend::open(
            "gre",
            &g.ends,
            None,
            Encap::gre(g),
            cfg,
        )?),
        VectorKind::L2tpv3(l) => Box::new(TunnelBackend::open(
            "l2tpv3",
            &l.ends,
            l.udp,
            Encap::l2tpv3(l),
            cfg,
        )?),
        VectorKind::Fd { fd } => {
            let owned = inherited::claim(*fd).map_err(|reason| VectorError::Fd {
                fd: *fd,
                reason,
                source: None,
            })?;
            Box::new(DgramBackend::new(
                owned,
                cfg.depth,
                cfg.batch,
                &format!("fd {fd}"),
            )?)
        }
    };
    log::info!("{}", cfg.describe());
    Ok(b)
}

/// UML's name for a tap without `ifname=`: `tap` and six characters of `[0-9A-Z]`.
fn random_tap_name() -> String {
    const PAD: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()) << 32;
    let mut name = String::from("tap");
    for _ in 0..6 {
        // xorshift: names only need to differ, not be secret.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        name.push(char::from(PAD[(seed % PAD.len() as u64) as usize]));
    }
    name
}

fn run_ifup(cfg: &VectorConfig, ifname: &str) -> Result<(), VectorError> {
    let Some(script) = &cfg.ifup else {
        return Ok(());
    };
    let err = |source| VectorError::Ifup {
        script: script.clone(),
        ifname: ifname.to_string(),
        source,
    };
    let mut cmd = Command::new(script);
    cmd.arg(ifname);
    let status = crate::launch::spawn(cmd)
        .and_then(|mut child| child.wait())
        .map_err(err)?;
    if !status.success() {
        return Err(err(io::Error::other(format!("exited with {status}"))));
    }
    Ok(())
}

// ------------------------------------------------------------------ fd / datagram

enum DgramIo {
    /// A datagram or seqpacket socket: batched.
    Socket(Box<VectorIo>),
    /// Anything else that keeps frame boundaries per read/write (a tap).
    File(Arc<File>),
}

impl std::fmt::Debug for DgramIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DgramIo::Socket(_) => f.write_str("Socket"),
            DgramIo::File(_) => f.write_str("File"),
        }
    }
}

/// Raw Ethernet frames, one per datagram (or per `read`/`write`), on a descriptor.
#[derive(Debug)]
pub struct DgramBackend {
    io: DgramIo,
    what: String,
}

impl DgramBackend {
    /// Frames over `fd`. A stream socket is refused: it does not keep frame boundaries.
    pub fn new(
        fd: OwnedFd,
        depth: usize,
        batch: bool,
        what: &str,
    ) -> Result<DgramBackend, VectorError> {
        let raw = fd.as_raw_fd();
        let fd_err = |reason: &str, source| VectorError::Fd {
            fd: raw,
            reason: reason.to_string(),
            source,
        };
        sock::set_nonblocking_cloexec(raw)
            .map_err(|e| fd_err("cannot make it nonblocking", Some(e)))?;
        let io = match sock::socket_type(raw) {
            Ok(libc::SOCK_DGRAM | libc::SOCK_SEQPACKET | libc::SOCK_RAW) => {
                DgramIo::Socket(Box::new(VectorIo::new(
                    fd,
                    depth,
                    batch,
                    false,
                    None,
                    what.to_string(),
                )))
            }
            Ok(libc::SOCK_STREAM) => {
                return Err(fd_err(
                    "is a stream socket; the fd transport needs one frame per datagram \
                     (SOCK_DGRAM or SOCK_SEQPACKET)",
                    None,
                ))
            }
            Ok(t) => return Err(fd_err(&format!("is a socket of unknown type {t}"), None)),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
                DgramIo::File(Arc::new(File::from(fd)))
            }
            Err(e) => return Err(fd_err("SO_TYPE", Some(e))),
        };
        Ok(DgramBackend {
            io,
            what: what.to_string(),
        })
    }
}

impl Backend for DgramBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.io {
            DgramIo::Socket(v) => v.send_with(|b| b.extend_from_slice(frame)),
            DgramIo::File(f) => (&**f).write(frame).map(|_| ()),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.io {
            DgramIo::Socket(v) => v.recv_with(buf, |r| Ok(0..r.data.len())),
            DgramIo::File(f) => match (&**f).read(buf)? {
                0 => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("{}: end of file", self.what),
                )),
                n => Ok(n),
            },
        }
    }

    fn fd(&self) -> SharedFd {
        match &self.io {
            DgramIo::Socket(v) => v.fd(),
            DgramIo::File(f) => f.clone(),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.io {
            DgramIo::Socket(v) => v.flush(),
            DgramIo::File(_) => Ok(()),
        }
    }

    fn tx_pending(&self) -> bool {
        matches!(&self.io, DgramIo::Socket(v) if v.pending())
    }
}

// ------------------------------------------------------------------ raw

/// `transport=raw`: an `AF_PACKET` socket on a host interface.
///
/// The socket carries a `virtio_net_hdr` in front of each frame (`PACKET_VNET_HDR`, as UML's
/// raw transport): it says when the host left a checksum for the device to finish, which kuml
/// then does ([`crate::vnet`]); frames sent carry an empty one. Segmentation-offload frames
/// (larger than a frame) are dropped and logged.
#[derive(Debug)]
pub struct RawBackend {
    io: VectorIo,
    /// `PACKET_VNET_HDR` is on (a kernel without it: frames as they are).
    vnet: bool,
}

impl RawBackend {
    /// Opens `ifname`.
    pub fn open(ifname: &str, cfg: &VectorConfig) -> Result<RawBackend, VectorError> {
        const T: &str = "raw";
        let all = i32::from((libc::ETH_P_ALL as u16).to_be());
        let fd = sock::socket(libc::AF_PACKET, libc::SOCK_RAW, all)
            .map_err(sock_err(T, "AF_PACKET socket (needs CAP_NET_RAW)"))?;
        let index = sock::if_index(ifname).map_err(sock_err(T, format!("interface {ifname}")))?;
        let vnet = match sock::set_int_opt(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1) {
            Ok(()) => true,
            Err(e) => {
                log::warn!(
                    "raw {ifname}: no PACKET_VNET_HDR ({e}): checksums the host leaves to the \
                     device reach the guest unfinished"
                );
                false
            }
        };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index;
        // SAFETY: binds to a live sockaddr_ll of its exact size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(sock_err(T, format!("bind to {ifname}"))(
                io::Error::last_os_error(),
            ));
        }
        let mreq = libc::packet_mreq {
            mr_ifindex: index,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        // SAFETY: passes a live packet_mreq and its exact size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mreq as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(sock_err(T, format!("promiscuous mode on {ifname}"))(
                io::Error::last_os_error(),
            ));
        }
        if let Err(e) = sock::set_int_opt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1) {
            log::debug!("raw {ifname}: no PACKET_QDISC_BYPASS: {e}");
        }
        Ok(RawBackend {
            io: VectorIo::new(
                fd,
                cfg.depth,
                cfg.batch,
                true,
                None,
                format!("raw {ifname}"),
            ),
            vnet,
        })
    }
}

impl Backend for RawBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let vnet = self.vnet;
        self.io.send_with(|b| {
            if vnet {
                // No offload asked for.
                b.extend_from_slice(&[0; VNET_HDR_LEN]);
            }
            b.extend_from_slice(frame)
        })
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let vnet = self.vnet;
        let mut header = None;
        let n = self.io.recv_with(buf, |r| {
            let skip = if vnet {
                let h = VnetHeader::parse(r.data)
                    .ok_or_else(|| format!("a {}-byte packet without its header", r.data.len()))?;
                if h.gso_type != 0 {
                    return Err(format!(
                        "a segmentation-offload frame of {} bytes (turn GSO/TSO/GRO off on the \
                         interface)",
                        r.data.len() - VNET_HDR_LEN
                    ));
                }
                header = Some(h);
                VNET_HDR_LEN
            } else {
                0
            };
            // Frames the host itself sends out of the interface are not the guest's to see
            // unless they are meant for the wire the guest shares: UML delivers them too, so
            // does kuml; only malformed ones go.
            if r.data.len() < skip + 14 {
                return Err(format!("a {}-byte frame", r.data.len() - skip));
            }
            Ok(skip..r.data.len())
        })?;
        if let Some(h) = header.filter(|h| h.flags & F_NEEDS_CSUM != 0) {
            let (start, offset) = (usize::from(h.csum_start), usize::from(h.csum_offset));
            if let Err(e) = finish_checksum(&mut buf[..n], start, offset) {
                // The host's own header: not expected, and the frame is still a frame.
                log::warn!("raw: a frame's checksum left unfinished: {e}");
            }
        }
        Ok(n)
    }

    fn fd(&self) -> SharedFd {
        self.io.fd()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }

    fn tx_pending(&self) -> bool {
        self.io.pending()
    }
}

// ------------------------------------------------------------------ gre / l2tpv3

/// `transport=gre` and `transport=l2tpv3`: Ethernet frames in GRE or L2TPv3 packets.
#[derive(Debug)]
pub struct TunnelBackend {
    io: VectorIo,
    encap: Encap,
    peer: IpAddr,
    /// Received packets start with an IPv4 header (raw IPv4 sockets).
    ip_header: bool,
}

fn resolve(what: &'static str, host: &str, port: u16, v6: bool) -> Result<SocketAddr, VectorError> {
    let family = if v6 { 6 } else { 4 };
    let err = |source| VectorError::Resolve {
        what,
        host: host.to_string(),
        family,
        source,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(|e| err(Some(e)))?
        .find(|a| a.is_ipv6() == v6)
        .ok_or_else(|| err(None))
}

impl TunnelBackend {
    fn open(
        transport: &'static str,
        ends: &Endpoints,
        udp: Option<(u16, u16)>,
        encap: Encap,
        cfg: &VectorConfig,
    ) -> Result<TunnelBackend, VectorError> {
        let (sport, dport) = udp.unwrap_or((0, 0));
        let dst = resolve("dst", &ends.dst, dport, ends.v6)?;
        let src = match &ends.src {
            Some(s) => resolve("src", s, sport, ends.v6)?,
            None if ends.v6 => SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), sport),
            None => SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), sport),
        };
        let domain = if ends.v6 {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        let (kind, proto) = match (udp, transport) {
            (Some(_), _) => (libc::SOCK_DGRAM, 0),
            (None, "gre") => (libc::SOCK_RAW, IPPROTO_GRE),
            (None, _) => (libc::SOCK_RAW, IPPROTO_L2TP),
        };
        let fd = sock::socket(domain, kind, proto).map_err(sock_err(
            transport,
            if kind == libc::SOCK_RAW {
                format!("raw IP socket for protocol {proto} (needs CAP_NET_RAW)")
            } else {
                "UDP socket".to_string()
            },
        ))?;
        sock::bind(&fd, &RawAddr::from_socket_addr(src))
            .map_err(sock_err(transport, format!("bind to {src}")))?;
        // Frames are up to 1518 bytes before the headers: let the kernel fragment rather than
        // refuse them on a 1500-byte path.
        let (level, opt, dont) = if ends.v6 {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DONT,
            )
        } else {
            (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )
        };
        sock::set_int_opt(&fd, level, opt, dont).map_err(sock_err(transport, "IP_MTU_DISCOVER"))?;
        log::info!("{transport}: {src} -> {dst}");
        Ok(TunnelBackend {
            io: VectorIo::new(
                fd,
                cfg.depth,
                cfg.batch,
                true,
                Some(RawAddr::from_socket_addr(dst)),
                transport.to_string(),
            ),
            encap,
            peer: dst.ip(),
            ip_header: kind == libc::SOCK_RAW && !ends.v6,
        })
    }
}

impl Backend for TunnelBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let encap = &mut self.encap;
        self.io.send_with(|b| {
            let mut hdr = [0u8; MAX_HEADER];
            let n = encap.write_header(&mut hdr);
            b.extend_from_slice(&hdr[..n]);
            b.extend_from_slice(frame);
        })
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (encap, peer, ip_header) = (&self.encap, self.peer, self.ip_header);
        self.io.recv_with(buf, |r| {
            let from = r.from.and_then(|a| a.ip());
            if from != Some(peer) {
                return Err(format!(
                    "a packet from {from:?}, not from the tunnel's peer {peer}"
                ));
            }
            let frame = encap.decap(r.data, ip_header).map_err(|e| e.to_string())?;
            let start = r.data.len() - frame.len();
            Ok(start..r.data.len())
        })
    }

    fn fd(&self) -> SharedFd {
        self.io.fd()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }

    fn tx_pending(&self) -> bool {
        self.io.pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::parse_vector;

    fn cfg(s: &str) -> VectorConfig {
        parse_vector(s).unwrap().0
    }

    #[test]
    fn tap_names_look_like_umls() {
        let n = random_tap_name();
        assert_eq!(n.len(), 9);
        assert!(n.starts_with("tap"));
        assert!(n[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
    }

    #[test]
    fn dgram_over_a_socketpair_batches() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let mut be = DgramBackend::new(OwnedFd::from(a), 4, true, "test").unwrap();
        for i in 0..3u8 {
            be.send(&[i; 60]).unwrap();
        }
        assert!(be.tx_pending(), "three frames wait for the round's flush");
        be.flush().unwrap();
        let mut buf = [0u8; 100];
        for i in 0..3u8 {
            assert_eq!(b.recv(&mut buf).unwrap(), 60);
            assert_eq!(buf[0], i);
        }
        b.send(&[9; 42]).unwrap();
        assert_eq!(be.recv(&mut buf).unwrap(), 42);
        assert_eq!(
            be.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_stream_socket_is_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = DgramBackend::new(OwnedFd::from(a), 4, true, "test").unwrap_err();
        assert!(e.to_string().contains("stream socket"), "{e}");
    }

    #[test]
    fn udp_l2tpv3_between_two_backends() {
        let ports = || {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (pa, pb) = (ports(), ports());
        let a = cfg(&format!(
            "transport=l2tpv3,udp=1,src=127.0.0.1,dst=127.0.0.1,srcport={pa},dstport={pb},rx_session=1,tx_session=2,rx_cookie=5,tx_cookie=6,counter=1"
        ));
        let b = cfg(&format!(
            "transport=l2tpv3,udp=1,src=127.0.0.1,dst=127.0.0.1,srcport={pb},dstport={pa},rx_session=2,tx_session=1,rx_cookie=6,tx_cookie=5,counter=1"
        ));
        let mut a = open_vector(&a).unwrap();
        let mut b = open_vector(&b).unwrap();
        let frame: Vec<u8> = (0..100u8).collect();
        a.send(&frame).unwrap();
        a.flush().unwrap();
        let mut buf = vec![0u8; crate::RECV_BUF_LEN];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let n = loop {
            match b.recv(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no frame");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(&buf[..n], &frame[..]);
    }
}
