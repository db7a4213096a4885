//! The `tuntap` transport: a Linux tap device (`IFF_TAP | IFF_NO_PI`, no vnet header).
//!
//! * `eth0=tuntap,<dev>`: open `<dev>` (TUNSETIFF attaches to an existing tap, or creates a
//!   non-persistent one when we have CAP_NET_ADMIN). No host configuration is done.
//! * `eth0=tuntap,,,<gate>`: create a new `tapN` and configure its host side as UML's
//!   `uml_net` helper does: `<gate>` with netmask 255.255.255.255, link up. Unlike
//!   `uml_net`, kuml does not switch on host-wide IP forwarding. Needs root.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::spec::TapConfig;
use crate::{sys, Backend, RECV_BUF_LEN};

/// The tun clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Errors of the tap backend.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("failed to open {TUN_PATH}")]
    OpenTun(#[source] io::Error),
    /// TUNSETIFF failed.
    #[error("TUNSETIFF for tap device '{dev}' failed")]
    SetIff {
        /// The requested name (empty: kernel-chosen).
        dev: String,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
    /// Creating a tap needs privileges.
    #[error(
        "creating a tap device needs root (CAP_NET_ADMIN); create one beforehand \
         (`ip tuntap add dev tap0 mode tap user $USER`) and use eth<N>=tuntap,tap0"
    )]
    NotPermitted(#[source] io::Error),
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

/// A tap device carrying raw Ethernet frames.
#[derive(Debug)]
pub struct TapBackend {
    file: File,
    name: String,
    scratch: Vec<u8>,
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
        let name = sys::tun_set_tap(&file, dev).map_err(|source| TapError::SetIff {
            dev: dev.to_string(),
            source,
        })?;
        log::info!("TUN/TAP backend - {name}");
        Ok(TapBackend {
            file,
            name,
            scratch: Vec::new(),
        })
    }

    /// Creates a new `tapN`; with a `gate`, gives the host side that /32 address and brings
    /// the link up (as `uml_net 4 tuntap up <gate>`).
    pub fn create(gate: Option<Ipv4Addr>) -> Result<Self, TapError> {
        let file = open_tun()?;
        let name = sys::tun_set_tap(&file, "").map_err(|source| {
            if source.raw_os_error() == Some(libc::EPERM) {
                TapError::NotPermitted(source)
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
            file,
            name,
            scratch: Vec::new(),
        })
    }

    /// The host interface name (`tap0`, …).
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn open_tun() -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(TapError::OpenTun)
}

impl AsRawFd for TapBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Backend for TapBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file.write(frame)?;
        if n != frame.len() {
            log::warn!("{}: short tap write {n} of {}", self.name, frame.len());
        }
        Ok(())
    }

    fn send_vectored(&mut self, parts: &[IoSlice<'_>]) -> io::Result<()> {
        // One writev is one frame on a tap.
        self.file.write_vectored(parts).map(|_| ())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.len() >= RECV_BUF_LEN {
            return self.file.read(buf);
        }
        // A tap read truncates silently: read into a full-size buffer to detect it.
        self.scratch.resize(RECV_BUF_LEN, 0);
        loop {
            let n = self.file.read(&mut self.scratch)?;
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
}
