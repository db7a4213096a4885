//! The `mcast` transport: every interface on one UDP multicast group is on one hub.
//!
//! Socket setup is UML's (`umcast_user.c`), which QEMU's `-netdev socket,mcast=` also uses:
//! SO_REUSEADDR, IP_MULTICAST_TTL, IP_MULTICAST_LOOP=1, bind to `<group>:<port>` (not
//! INADDR_ANY), IP_ADD_MEMBERSHIP on INADDR_ANY. Each datagram is exactly one raw Ethernet
//! frame: no length prefix (QEMU prefixes a length only on its *stream* sockets), no FCS, no
//! padding. Because of the loopback, a sender receives its own frames: they are dropped by
//! source MAC when the backend knows its guest's MAC.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use crate::mac::MacAddr;
use crate::spec::McastConfig;
use crate::{sys, Backend, SharedFd};

/// Errors of the multicast backend.
#[derive(Debug, thiserror::Error)]
pub enum McastError {
    /// The group or port is unusable (0, or not a multicast group).
    #[error("invalid multicast address {0}")]
    InvalidAddress(SocketAddrV4),
    /// socket/bind failed.
    #[error("failed to bind UDP socket to {addr}")]
    Bind {
        /// The group:port.
        addr: SocketAddrV4,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A socket option failed.
    #[error("failed to set {option} on the multicast socket")]
    SockOpt {
        /// The option name.
        option: &'static str,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Joining the group failed (typically ENODEV: no multicast route/interface).
    #[error(
        "IP_ADD_MEMBERSHIP of {group} failed: there appears not to be a multicast-capable \
         network interface on the host (a route for 224.0.0.0/4 is needed)"
    )]
    Join {
        /// The group.
        group: Ipv4Addr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
}

/// A UDP multicast hub port.
#[derive(Debug)]
pub struct McastBackend {
    sock: Arc<UdpSocket>,
    dest: SocketAddrV4,
    own_mac: Option<MacAddr>,
}

impl McastBackend {
    /// Joins `cfg.group:cfg.port`. Received frames whose source MAC is `own_mac` (our own,
    /// looped back) are dropped.
    pub fn open(cfg: &McastConfig, own_mac: Option<MacAddr>) -> Result<Self, McastError> {
        let dest = SocketAddrV4::new(cfg.group, cfg.port);
        if cfg.port == 0 || !cfg.group.is_multicast() {
            return Err(McastError::InvalidAddress(dest));
        }
        let sock =
            sys::udp_reuse_bind(dest).map_err(|source| McastError::Bind { addr: dest, source })?;
        let opt = |option| move |source| McastError::SockOpt { option, source };
        sock.set_multicast_ttl_v4(u32::from(cfg.ttl))
            .map_err(opt("IP_MULTICAST_TTL"))?;
        sock.set_multicast_loop_v4(true)
            .map_err(opt("IP_MULTICAST_LOOP"))?;
        sock.join_multicast_v4(&cfg.group, &Ipv4Addr::UNSPECIFIED)
            .map_err(|source| McastError::Join {
                group: cfg.group,
                source,
            })?;
        sock.set_nonblocking(true).map_err(opt("O_NONBLOCK"))?;
        log::info!(
            "mcast backend multicast address: {}:{}, TTL:{}",
            cfg.group,
            cfg.port,
            cfg.ttl
        );
        Ok(McastBackend {
            sock: Arc::new(sock),
            dest,
            own_mac,
        })
    }

    /// The group and port frames are sent to.
    pub fn group(&self) -> SocketAddrV4 {
        self.dest
    }
}

impl Drop for McastBackend {
    fn drop(&mut self) {
        if let Err(e) = self
            .sock
            .leave_multicast_v4(self.dest.ip(), &Ipv4Addr::UNSPECIFIED)
        {
            log::debug!("IP_DROP_MEMBERSHIP of {}: {e}", self.dest);
        }
    }
}

impl AsRawFd for McastBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Backend for McastBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sock.send_to(frame, self.dest).map(|_| ())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = sys::recv_trunc(&self.sock, buf)?;
            if n > buf.len() {
                log::warn!("mcast {}: dropping a {n}-byte datagram", self.dest);
                continue;
            }
            if n == 0 {
                continue;
            }
            if self.own_mac.is_some() && MacAddr::src_of(&buf[..n]) == self.own_mac {
                continue;
            }
            return Ok(n);
        }
    }

    fn fd(&self) -> SharedFd {
        self.sock.clone()
    }
}
