//! UML network transports as host backends for kuml's virtio-net devices.
//!
//! * [`spec`] (PURE): `eth<N>=…` / `vec<N>:…` → [`NetSpec`], with UML's defaults and errors.
//! * [`mac`] (PURE): MAC parsing/formatting, UML's acceptance rules, kuml's stable MAC.
//! * [`vector`] (PURE): `vec<N>:` options; [`tunnel`] (PURE): GRE and L2TPv3 headers;
//!   [`stream`]: QEMU/passt stream framing (PURE reader) and its backend.
//! * [`Backend`]: one raw Ethernet frame (no FCS, no padding, no length prefix) per call,
//!   nonblocking, with the descriptors an event loop watches; [`TapBackend`],
//!   [`McastBackend`], [`DaemonBackend`], [`SlirpBackend`] (passt, libslirp-helper),
//!   [`VdeBackend`] and the vector transports ([`vector_backend`]: tap, raw, gre, l2tpv3,
//!   fd, batched with `recvmmsg`/`sendmmsg`) implement it, and [`open_backend`] builds the
//!   right one from a [`NetSpec`].
//! * [`vnet`] (PURE): the `raw` transport's `virtio_net_hdr` and finishing a checksum the host
//!   left to the device.
//! * [`daemon`] and [`vde`] also hold the PURE switch protocol codecs; [`frame`] (PURE) reads a
//!   guest's IPv4 address from its frames, so a created tap can route it as `uml_net` did.

#![deny(missing_docs)]

use std::fmt::Debug;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

pub mod daemon;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod inherited;
pub mod launch;
pub mod mac;
pub mod mcast;
pub mod slirp;
mod sock;
pub mod spec;
pub mod stream;
mod sys;
pub mod tap;
pub mod tunnel;
pub mod vde;
mod vecio;
pub mod vector;
pub mod vector_backend;
pub mod vnet;

pub use daemon::{DaemonBackend, DaemonError};
#[cfg(any(test, feature = "test-utils"))]
pub use fake::FakeBackend;
pub use mac::{derive_mac, parse_mac, MacAddr, MacError};
pub use mcast::{McastBackend, McastError};
pub use slirp::{SlirpBackend, SlirpError};
pub use spec::{
    parse_eth_arg, parse_net_spec, parse_vec_arg, DaemonConfig, McastConfig, NetSpec, SlirpConfig,
    SlirpProtocol, SpecError, TapConfig, Transport, VdeConfig,
};
pub use stream::StreamBackend;
pub use tap::{TapBackend, TapError};
pub use vde::{VdeBackend, VdeError};
pub use vector::{VectorConfig, VectorKind};
pub use vector_backend::{open_vector, DgramBackend, VectorError};

/// Largest Ethernet frame (without FCS) the legacy transports carry: 1500 + 14 + 26 spare
/// bytes for VLAN/MPLS tags, as UML sizes its buffers.
pub const ETH_MAX_FRAME: usize = 1500 + 14 + 26;

/// A receive buffer of this size never truncates a frame from any backend (a tap whose host
/// MTU was raised can deliver up to 64 KiB).
pub const RECV_BUF_LEN: usize = 65536;

/// A descriptor and what keeps it open. Backends hand out shared references to their
/// descriptors so that an event loop can keep one open until it has stopped watching it, even
/// when the backend itself is dropped first.
pub type SharedFd = Arc<dyn AsRawFd + Send + Sync>;

/// Whether a backend carries frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Still setting up (a `uml_switch` has not answered the handshake yet): frames sent
    /// now are dropped, none arrive.
    Connecting,
    /// Frames flow.
    Ready,
}

/// A host network transport carrying raw Ethernet frames (destination MAC first, no FCS).
///
/// All calls are nonblocking. An event loop watches [`Backend::fd`] (readable: call
/// [`Backend::recv`] until `WouldBlock`; writable: room to send again) and, if there is one,
/// [`Backend::control_fd`] (readable: call [`Backend::on_control`]).
///
/// Errors of `send` and `recv` other than `WouldBlock` and `Interrupted` lose a frame; the
/// errors [`is_gone`] names mean the backend will never carry frames again (a deleted tap).
pub trait Backend: Debug + Send {
    /// Sends one frame. `WouldBlock` when the host queue is full (the caller may drop the
    /// frame, as a NIC would, or retry when the fd becomes writable). Any other error means
    /// the frame is lost (e.g. `ECONNREFUSED` once a uml_switch has gone): log it and carry
    /// on, as a NIC with no link would.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Receives one frame into `buf` and returns its length; `WouldBlock` when none is
    /// pending. Frames longer than `buf` are dropped (logged), never truncated, so use a
    /// buffer of [`RECV_BUF_LEN`] bytes to see every frame.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// The descriptor frames arrive on.
    fn fd(&self) -> SharedFd;

    /// A descriptor that becomes readable when the backend's state may have changed (the
    /// `uml_switch` control connection: its handshake reply, or its end).
    fn control_fd(&self) -> Option<SharedFd> {
        None
    }

    /// Handles a readable [`Backend::control_fd`]; returns the state now. An error means the
    /// backend is gone for good (the switch closed the connection or answered nonsense).
    fn on_control(&mut self) -> io::Result<BackendState> {
        Ok(self.state())
    }

    /// Whether frames flow yet.
    fn state(&self) -> BackendState {
        BackendState::Ready
    }

    /// Sends what [`Backend::send`] queued. Backends that batch their sends (the vector
    /// transports, as UML's vector driver with `sendmmsg`) may only queue a frame in `send`;
    /// the device calls this at the end of each transmit round. `WouldBlock`: frames wait for
    /// the descriptor to become writable ([`Backend::tx_pending`]). Another error: frames
    /// were lost (the first error is returned).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Whether frames [`Backend::send`] took wait for the descriptor to become writable: the
    /// event loop then watches [`Backend::fd`] for output and calls [`Backend::flush`].
    fn tx_pending(&self) -> bool {
        false
    }
}

/// True for receive or send errors after which a backend never carries frames again: the
/// tap was deleted (`EBADFD`), the device went away (`ENXIO`, `ENODEV`), the descriptor is
/// unusable (`EBADF`), a stream peer (a slirp helper) closed the connection (`EPIPE`,
/// `ECONNRESET`, `ENOTCONN`, or [`io::ErrorKind::NotConnected`] at the end of its stream).
/// (`EIO` from a tap whose link is down is not one: it comes back up.)
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotConnected
        || matches!(
            e.raw_os_error(),
            Some(
                libc::EBADFD
                    | libc::EBADF
                    | libc::ENXIO
                    | libc::ENODEV
                    | libc::EPIPE
                    | libc::ECONNRESET
                    | libc::ENOTCONN
            )
        )
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
    /// The user-mode stack could not be started.
    #[error("slirp backend")]
    Slirp(#[source] SlirpError),
    /// The VDE switch refused or is absent.
    #[error("vde backend")]
    Vde(#[source] VdeError),
    /// A vector transport could not be opened.
    #[error("vector backend")]
    Vector(#[source] VectorError),
}

/// Opens the host side of `spec` for a guest interface whose MAC is `mac` (used by the
/// multicast backend to drop its own looped-back frames).
///
/// Logs the warnings UML prints for the spec (target `uml`); the caller, which knows the
/// interface's index, prints UML's `Netdevice N (<mac>) : ` and transport lines.
pub fn open_backend(spec: &NetSpec, mac: MacAddr) -> Result<Box<dyn Backend>, OpenError> {
    for w in &spec.warnings {
        log::warn!(target: "uml", "{w}");
    }
    Ok(match &spec.transport {
        Transport::Tap(cfg) => Box::new(TapBackend::open(cfg).map_err(OpenError::Tap)?),
        Transport::Mcast(cfg) => {
            Box::new(McastBackend::open(cfg, Some(mac)).map_err(OpenError::Mcast)?)
        }
        Transport::Daemon(cfg) => Box::new(DaemonBackend::connect(cfg).map_err(OpenError::Daemon)?),
        Transport::Slirp(cfg) => Box::new(SlirpBackend::start(cfg).map_err(OpenError::Slirp)?),
        Transport::Vde(cfg) => Box::new(VdeBackend::connect(cfg).map_err(OpenError::Vde)?),
        Transport::Vector(cfg) => open_vector(cfg).map_err(OpenError::Vector)?,
    })
}
