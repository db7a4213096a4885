//! UML network transports as host backends for kuml's virtio-net devices.
//!
//! * [`spec`] (PURE): `eth<N>=…` / `vec<N>:…` → [`NetSpec`], with UML's defaults and errors.
//! * [`mac`] (PURE): MAC parsing/formatting, UML's acceptance rules, kuml's stable MAC.
//! * [`Backend`]: one raw Ethernet frame (no FCS, no padding, no length prefix) per call,
//!   nonblocking; [`TapBackend`], [`McastBackend`], [`DaemonBackend`] implement it, and
//!   [`open_backend`] builds the right one from a [`NetSpec`].
//! * [`daemon`] also holds the PURE `uml_switch` protocol v3 codec; [`frame`] (PURE) reads a
//!   guest's IPv4 address from its frames, so a created tap can route it as `uml_net` did.

#![deny(missing_docs)]

use std::fmt::Debug;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;

pub mod daemon;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mac;
pub mod mcast;
pub mod spec;
mod sys;
pub mod tap;

pub use daemon::{DaemonBackend, DaemonError};
#[cfg(any(test, feature = "test-utils"))]
pub use fake::FakeBackend;
pub use mac::{derive_mac, parse_mac, MacAddr, MacError};
pub use mcast::{McastBackend, McastError};
pub use spec::{
    parse_eth_arg, parse_net_spec, parse_vec_arg, DaemonConfig, McastConfig, NetSpec, SpecError,
    TapConfig, Transport,
};
pub use tap::{TapBackend, TapError};

/// Largest Ethernet frame (without FCS) the legacy transports carry: 1500 + 14 + 26 spare
/// bytes for VLAN/MPLS tags, as UML sizes its buffers.
pub const ETH_MAX_FRAME: usize = 1500 + 14 + 26;

/// A receive buffer of this size never truncates a frame from any backend (a tap whose host
/// MTU was raised can deliver up to 64 KiB).
pub const RECV_BUF_LEN: usize = 65536;

/// A host network transport carrying raw Ethernet frames (destination MAC first, no FCS).
///
/// All calls are nonblocking: the fd from [`AsRawFd`] is registered for `EPOLLIN` in the
/// event loop, and [`Backend::recv`] is called until it returns `WouldBlock`.
pub trait Backend: AsRawFd + Debug + Send {
    /// Sends one frame. `WouldBlock` when the host queue is full (the caller may drop the
    /// frame, as a NIC would, or retry when the fd becomes writable). Any other error means
    /// the frame is lost (e.g. `ECONNREFUSED` once a uml_switch has gone): log it and carry
    /// on, as a NIC with no link would.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Sends one frame given in pieces (e.g. straight from a descriptor chain). The default
    /// joins the pieces and calls [`Backend::send`]; the host backends send without copying.
    fn send_vectored(&mut self, parts: &[IoSlice<'_>]) -> io::Result<()> {
        let frame: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        self.send(&frame)
    }

    /// Receives one frame into `buf` and returns its length; `WouldBlock` when none is
    /// pending. Frames longer than `buf` are dropped (logged), never truncated, so use a
    /// buffer of [`RECV_BUF_LEN`] bytes to see every frame.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// Errors of [`open_backend`].
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Tap setup failed.
    #[error("tuntap backend")]
    Tap(#[source] TapError),
    /// Multicast socket setup failed.
    #[error("mcast backend")]
    Mcast(#[source] McastError),
    /// uml_switch connection failed.
    #[error("daemon backend")]
    Daemon(#[source] DaemonError),
}

/// Opens the host side of `spec` for a guest interface whose MAC is `mac` (used by the
/// multicast backend to drop its own looped-back frames).
///
/// Logs UML's transport line (`mcast backend multicast address: …`, …) at info level.
pub fn open_backend(spec: &NetSpec, mac: MacAddr) -> Result<Box<dyn Backend>, OpenError> {
    for w in &spec.warnings {
        log::warn!("{w}");
    }
    log::info!("Netdevice ({mac}) : {}", spec.transport_line());
    Ok(match &spec.transport {
        Transport::Tap(cfg) => Box::new(TapBackend::open(cfg).map_err(OpenError::Tap)?),
        Transport::Mcast(cfg) => {
            Box::new(McastBackend::open(cfg, Some(mac)).map_err(OpenError::Mcast)?)
        }
        Transport::Daemon(cfg) => Box::new(DaemonBackend::connect(cfg).map_err(OpenError::Daemon)?),
    })
}
