//! The `tuntap` transport: a Linux tap device (`IFF_TAP | IFF_NO_PI`, no vnet header).
//!
//! * `eth0=tuntap,<dev>`: open `<dev>` (TUNSETIFF attaches to an existing tap, or creates a
//!   non-persistent one when we have CAP_NET_ADMIN). No host configuration is done.
//! * `eth0=tuntap,,,<gate>`: create a new `tapN` and configure its host side as UML's
//!   `uml_net` helper does: `<gate>` with netmask 255.255.255.255, link up. Unlike
//!   `uml_net`, kuml does not switch on host-wide IP forwarding. Needs root.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use crate::spec::TapConfig;
use crate::{frame, sys, Backend, SharedFd, RECV_BUF_LEN};

/// The tun clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Errors of the tap backend.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("failed to open {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    /// kuml's user may not open `/dev/net/tun`.
    #[error(
        "kuml's user may not open {TUN_PATH} ({node}): attaching to a tap made for this user \
         needs read-write access to it, which Debian gives every user (mode 0666: `sudo chmod \
         0666 {TUN_PATH}`)"
    )]
    TunDenied {
        /// Its mode and owner.
        node: String,
        /// The open's error.
        #[source]
        source: io::Error,
    },
    /// The named tap does not exist, and kuml's user may not create one.
    #[error(
        "tap device '{dev}' does not exist, and creating one needs root (CAP_NET_ADMIN): make \
         it for kuml's user beforehand (`sudo ip tuntap add dev {dev} mode tap user $USER`)"
    )]
    NoSuchTap {
        /// The requested name.
        dev: String,
        /// TUNSETIFF's error.
        #[source]
        source: io::Error,
    },
    /// The named device exists but kuml's user may not attach to it.
    #[error(
        "tap device '{dev}' was not made for kuml's user (or is no tap), and attaching to it \
         needs root (CAP_NET_ADMIN): make it with `sudo ip tuntap add dev {dev} mode tap user \
         $USER` (`ip -d link show {dev}` shows its owner)"
    )]
    NotYourTap {
        /// The requested name.
        dev: String,
        /// TUNSETIFF's error.
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF failed.
    #[error("TUNSETIFF for tap device '{dev}' failed")]
    SetIff {
        /// The requested name (empty: kernel-chosen).
        dev: String,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
    /// Creating a tap (and giving it the gate address) needs privileges.
    #[error(
        "creating a tap device{} needs root (CAP_NET_ADMIN); as an ordinary user, have one made \
         beforehand (`sudo ip tuntap add dev tap0 mode tap user $USER`{}) and use \
         eth<N>=tuntap,tap0",
        if .gate.is_some() { " with a gate address and host routes" } else { "" },
        if .gate.is_some() { ", the host side configured by root" } else { "" }
    )]
    NotPermitted {
        /// The gate address asked for.
        gate: Option<Ipv4Addr>,
        /// TUNSETIFF's error.
        #[source]
        source: io::Error,
    },
    /// Host-side configuration of a created tap failed.
    #[error("failed to configure host side of '{dev}' (address {gate}, link up)")]
    Configure {
        /// The created device.
        dev: String,
        /// The gate address.
        gate: Ipv4Addr,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
}

/// Most guest addresses kuml routes to a created tap (a guest cannot fill the host's
/// routing table).
pub const MAX_LEARNED_ROUTES: usize = 4;

/// `uml_net 4 add` for a KVM guest: host routes for the guest's addresses, learned from its
/// frames (see [`crate::frame`]). Only addresses in the gate's /24, other than the gate, are
/// routed, so a guest cannot divert the host's traffic for unrelated addresses.
#[derive(Debug)]
struct RouteLearner {
    gate: Ipv4Addr,
    seen: Vec<Ipv4Addr>,
}

impl RouteLearner {
    /// The address to route for this outgoing frame, if it is a new acceptable one.
    fn learn(&mut self, frame: &[u8]) -> Option<Ipv4Addr> {
        if self.seen.len() >= MAX_LEARNED_ROUTES {
            return None;
        }
        let ip = frame::sender_ipv4(frame)?;
        let same_24 = ip.octets()[..3] == self.gate.octets()[..3];
        if ip == self.gate || !same_24 || self.seen.contains(&ip) {
            return None;
        }
        self.seen.push(ip);
        Some(ip)
    }
}

/// A tap device carrying raw Ethernet frames.
#[derive(Debug)]
pub struct TapBackend {
    file: Arc<File>,
    name: String,
    scratch: Vec<u8>,
    routes: Option<RouteLearner>,
}

impl TapBackend {
    /// Opens or creates the tap described by `cfg` (see the module docs).
    pub fn open(cfg: &TapConfig) -> Result<Self, TapError> {
        match &cfg.dev {
            Some(dev) => Self::open_named(dev),
            None => Self::create(cfg.gate),
        }
    }

    /// Attaches to the tap `dev` (TUNSETIFF creates it if it does not exist and we may).
    pub fn open_named(dev: &str) -> Result<Self, TapError> {
        let file = open_tun()?;
        let name = sys::tun_set_tap(&file, dev).map_err(|source| {
            let refused = source.raw_os_error() == Some(libc::EPERM);
            attach_error(dev, refused.then(|| sys::if_exists(dev)), source)
        })?;
        log::info!("TUN/TAP backend - {name}");
        Ok(TapBackend {
            file: Arc::new(file),
            name,
            scratch: Vec::new(),
            routes: None,
        })
    }

    /// Creates a new `tapN`; with a `gate`, gives the host side that /32 address and brings
    /// the link up (as `uml_net 4 tuntap up <gate>`). Then, as `uml_net 4 add` did when the
    /// guest configured an address, a host route `<guest ip>/32 dev tapN` is added for each
    /// guest address seen in the guest's frames (same /24 as the gate, at most
    /// [`MAX_LEARNED_ROUTES`]). Proxy ARP on the host's other interfaces is not set up.
    pub fn create(gate: Option<Ipv4Addr>) -> Result<Self, TapError> {
        let file = open_tun()?;
        let name = sys::tun_set_tap(&file, "").map_err(|source| {
            if source.raw_os_error() == Some(libc::EPERM) {
                TapError::NotPermitted { gate, source }
            } else {
                TapError::SetIff {
                    dev: String::new(),
                    source,
                }
            }
        })?;
        if let Some(gate) = gate {
            sys::if_configure(&name, Some((gate, Ipv4Addr::BROADCAST)), true).map_err(
                |source| TapError::Configure {
                    dev: name.clone(),
                    gate,
                    source,
                },
            )?;
        }
        log::info!(
            "TUN/TAP backend - {name} [IP = {}]",
            gate.map(|g| g.to_string()).unwrap_or_default()
        );
        Ok(TapBackend {
            file: Arc::new(file),
            name,
            scratch: Vec::new(),
            routes: gate.map(|gate| RouteLearner {
                gate,
                seen: Vec::new(),
            }),
        })
    }

    /// The host interface name (`tap0`, …).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// PURE: the error for TUNSETIFF on `dev` failing with `source`; `exists` is whether a device
/// of that name exists in kuml's network namespace, asked only when the kernel refused the
/// attach (EPERM), which is what an ordinary user meets.
fn attach_error(dev: &str, exists: Option<bool>, source: io::Error) -> TapError {
    let dev = dev.to_owned();
    match exists {
        Some(false) => TapError::NoSuchTap { dev, source },
        Some(true) => TapError::NotYourTap { dev, source },
        None => TapError::SetIff { dev, source },
    }
}

fn open_tun() -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(|source| {
            use std::os::unix::fs::MetadataExt;
            match std::fs::metadata(TUN_PATH) {
                Ok(m) if source.kind() == io::ErrorKind::PermissionDenied => TapError::TunDenied {
                    node: format!(
                        "mode {:04o}, owner uid {}, group gid {}",
                        m.mode() & 0o7777,
                        m.uid(),
                        m.gid()
                    ),
                    source,
                },
                _ => TapError::OpenTun(source),
            }
        })
}

impl AsRawFd for TapBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl TapBackend {
    fn snoop(&mut self, head: &[u8]) {
        let Some(ip) = self.routes.as_mut().and_then(|r| r.learn(head)) else {
            return;
        };
        match sys::add_host_route(&self.name, ip) {
            Ok(()) => log::info!("{}: routing guest address {ip} to the tap", self.name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => log::warn!("{}: cannot add host route to {ip}: {e}", self.name),
        }
    }
}

impl Backend for TapBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.routes.is_some() {
            self.snoop(frame);
        }
        let n = (&*self.file).write(frame)?;
        if n != frame.len() {
            log::warn!("{}: short tap write {n} of {}", self.name, frame.len());
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.len() >= RECV_BUF_LEN {
            return (&*self.file).read(buf);
        }
        // A tap read truncates silently: read into a full-size buffer to detect it.
        self.scratch.resize(RECV_BUF_LEN, 0);
        loop {
            let n = (&*self.file).read(&mut self.scratch)?;
            if n <= buf.len() {
                buf[..n].copy_from_slice(&self.scratch[..n]);
                return Ok(n);
            }
            log::warn!(
                "{}: dropping a {n}-byte frame (buffer {})",
                self.name,
                buf.len()
            );
        }
    }

    fn fd(&self) -> SharedFd {
        self.file.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arp_from(ip: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0; 10]);
        f
    }

    fn eperm() -> io::Error {
        io::Error::from_raw_os_error(libc::EPERM)
    }

    #[test]
    fn a_refused_attach_says_what_to_do() {
        let e = attach_error("tap7", Some(false), eperm());
        assert!(matches!(e, TapError::NoSuchTap { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("'tap7' does not exist"), "{text}");
        assert!(text.contains("needs root (CAP_NET_ADMIN)"), "{text}");
        assert!(
            text.contains("ip tuntap add dev tap7 mode tap user $USER"),
            "{text}"
        );
        let text = attach_error("tap7", Some(true), eperm()).to_string();
        assert!(text.contains("not made for kuml's user"), "{text}");
        assert!(text.contains("needs root (CAP_NET_ADMIN)"), "{text}");
        let busy = attach_error("tap7", None, io::Error::from_raw_os_error(libc::EBUSY));
        assert!(matches!(busy, TapError::SetIff { .. }), "{busy:?}");
    }

    #[test]
    fn a_gate_needs_root_and_says_so() {
        let e = TapError::NotPermitted {
            gate: Some(Ipv4Addr::new(10, 0, 0, 1)),
            source: eperm(),
        };
        let text = e.to_string();
        assert!(
            text.contains("with a gate address and host routes needs root"),
            "{text}"
        );
        let text = TapError::NotPermitted {
            gate: None,
            source: eperm(),
        }
        .to_string();
        assert!(
            text.starts_with("creating a tap device needs root (CAP_NET_ADMIN)"),
            "{text}"
        );
    }

    #[test]
    fn learner_limits() {
        let mut l = RouteLearner {
            gate: Ipv4Addr::new(192, 168, 0, 254),
            seen: Vec::new(),
        };
        assert_eq!(
            l.learn(&arp_from([192, 168, 0, 1])),
            Some(Ipv4Addr::new(192, 168, 0, 1))
        );
        assert_eq!(l.learn(&arp_from([192, 168, 0, 1])), None, "already routed");
        assert_eq!(l.learn(&arp_from([192, 168, 0, 254])), None, "the gate");
        assert_eq!(
            l.learn(&arp_from([10, 0, 0, 1])),
            None,
            "outside the gate's /24"
        );
        for i in 2..10 {
            l.learn(&arp_from([192, 168, 0, i]));
        }
        assert_eq!(l.seen.len(), MAX_LEARNED_ROUTES);
    }
}
