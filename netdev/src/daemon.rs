//! The `daemon` transport: a port on a `uml_switch` (control protocol version 3).
//!
//! Handshake (UML `daemon_user.c`, uml-utilities `uml_switch`):
//!
//! 1. connect a `SOCK_STREAM` to the switch's control socket and keep it open for the life
//!    of the port (closing it makes the switch drop the port);
//! 2. bind a `SOCK_DGRAM` data socket to an abstract address whose 108-byte `sun_path` is
//!    reproduced byte for byte in the request (the switch identifies ports by `memcmp` of
//!    the 110-byte source address);
//! 3. write the 124-byte request `{magic 0xFEEDFACE, version 3, type 0 (REQ_NEW_CONTROL),
//!    sockaddr_un (110 bytes), 2 pad bytes}` (host byte order);
//! 4. read exactly 110 bytes: the `sockaddr_un` of the switch's data socket (kuml does not
//!    wait for them: the port is up once they arrived);
//! 5. exchange raw Ethernet frames, one per datagram, with that address.
//!
//! The codec ([`encode_request`], [`decode_request`], [`decode_reply`], [`client_sun_path`])
//! is PURE; [`DaemonBackend`] does the I/O.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::spec::DaemonConfig;
use crate::{sys, Backend, BackendState, SharedFd};

/// Request magic.
pub const SWITCH_MAGIC: u32 = 0xFEED_FACE;
/// The protocol version kuml speaks.
pub const SWITCH_VERSION: u32 = 3;
/// Request type `REQ_NEW_CONTROL`.
pub const REQ_NEW_CONTROL: u32 = 0;
/// Length of `sun_path`.
pub const SUN_PATH_LEN: usize = 108;
/// Length of a `struct sockaddr_un` (family + path).
pub const SOCKADDR_UN_LEN: usize = 2 + SUN_PATH_LEN;
/// Length of a v3 request (with 2 bytes of tail padding).
pub const REQUEST_LEN: usize = 12 + SOCKADDR_UN_LEN + 2;

const AF_UNIX: u16 = 1;

/// Errors of the daemon transport (codec and I/O).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A request of the wrong size.
    #[error("uml_switch request is {0} bytes, expected {REQUEST_LEN}")]
    RequestLength(usize),
    /// A request with the wrong magic.
    #[error("uml_switch request magic is {0:#x}, expected 0xfeedface")]
    Magic(u32),
    /// A request with an unsupported version.
    #[error("uml_switch request version is {0}, only version 3 is supported")]
    Version(u32),
    /// A reply of the wrong size.
    #[error("uml_switch reply is {0} bytes, expected {SOCKADDR_UN_LEN}")]
    ReplyLength(usize),
    /// A sockaddr with a family other than AF_UNIX.
    #[error("uml_switch address family is {0}, expected AF_UNIX (1)")]
    Family(u16),
    /// A filesystem path that is not NUL-terminated or is empty.
    #[error("uml_switch data socket path is empty or not NUL-terminated")]
    BadPath,
    /// Connecting to the control socket failed.
    #[error("control connect to '{path}' failed")]
    Connect {
        /// The control socket path.
        path: PathBuf,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Creating/binding the data socket failed.
    #[error("data socket bind failed")]
    Bind(#[source] io::Error),
    /// Writing the request failed.
    #[error("control setup request to '{path}' failed")]
    Request {
        /// The control socket path.
        path: PathBuf,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The reply is malformed.
    #[error("bad reply from uml_switch at '{path}'")]
    BadReply {
        /// The control socket path.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<DaemonError>,
    },
}

/// A decoded v3 request (switch side; used by tests and tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchRequest {
    /// Request type (0 = REQ_NEW_CONTROL).
    pub kind: u32,
    /// The client's data socket `sun_path`.
    pub sun_path: [u8; SUN_PATH_LEN],
}

/// A unix socket address as carried in the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixAddr {
    /// An abstract name: the 107 bytes after the leading NUL of `sun_path`.
    Abstract(Vec<u8>),
    /// A filesystem path.
    Path(PathBuf),
}

/// The client's data socket name: UML's 12-byte `{0, pad[3], pid, usecs}` (host order)
/// followed, where UML leaves garbage, by `"kuml"` and a per-process `serial` so two ports
/// of one process never collide; the rest is zero.
pub fn client_sun_path(pid: u32, usecs: u32, serial: u32) -> [u8; SUN_PATH_LEN] {
    let mut p = [0u8; SUN_PATH_LEN];
    p[4..8].copy_from_slice(&pid.to_ne_bytes());
    p[8..12].copy_from_slice(&usecs.to_ne_bytes());
    p[12..16].copy_from_slice(b"kuml");
    p[16..20].copy_from_slice(&serial.to_ne_bytes());
    p
}

/// Encodes a v3 `REQ_NEW_CONTROL` request for a data socket bound to `sun_path`.
pub fn encode_request(sun_path: &[u8; SUN_PATH_LEN]) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[0..4].copy_from_slice(&SWITCH_MAGIC.to_ne_bytes());
    r[4..8].copy_from_slice(&SWITCH_VERSION.to_ne_bytes());
    r[8..12].copy_from_slice(&REQ_NEW_CONTROL.to_ne_bytes());
    r[12..14].copy_from_slice(&AF_UNIX.to_ne_bytes());
    r[14..14 + SUN_PATH_LEN].copy_from_slice(sun_path);
    r
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

/// Decodes a v3 request (the inverse of [`encode_request`]).
pub fn decode_request(bytes: &[u8]) -> Result<SwitchRequest, DaemonError> {
    if bytes.len() != REQUEST_LEN {
        return Err(DaemonError::RequestLength(bytes.len()));
    }
    let magic = u32_at(bytes, 0);
    if magic != SWITCH_MAGIC {
        return Err(DaemonError::Magic(magic));
    }
    let version = u32_at(bytes, 4);
    if version != SWITCH_VERSION {
        return Err(DaemonError::Version(version));
    }
    let family = u16::from_ne_bytes([bytes[12], bytes[13]]);
    if family != AF_UNIX {
        return Err(DaemonError::Family(family));
    }
    let mut sun_path = [0u8; SUN_PATH_LEN];
    sun_path.copy_from_slice(&bytes[14..14 + SUN_PATH_LEN]);
    Ok(SwitchRequest {
        kind: u32_at(bytes, 8),
        sun_path,
    })
}

/// Encodes a 110-byte `sockaddr_un` reply naming an abstract address (switch side).
pub fn encode_reply(sun_path: &[u8; SUN_PATH_LEN]) -> [u8; SOCKADDR_UN_LEN] {
    let mut r = [0u8; SOCKADDR_UN_LEN];
    r[0..2].copy_from_slice(&AF_UNIX.to_ne_bytes());
    r[2..].copy_from_slice(sun_path);
    r
}

/// Decodes the switch's 110-byte reply into its data socket address.
pub fn decode_reply(bytes: &[u8]) -> Result<UnixAddr, DaemonError> {
    if bytes.len() != SOCKADDR_UN_LEN {
        return Err(DaemonError::ReplyLength(bytes.len()));
    }
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]);
    if family != AF_UNIX {
        return Err(DaemonError::Family(family));
    }
    let path = &bytes[2..];
    if path[0] == 0 {
        return Ok(UnixAddr::Abstract(path[1..].to_vec()));
    }
    let end = path
        .iter()
        .position(|&b| b == 0)
        .ok_or(DaemonError::BadPath)?;
    use std::os::unix::ffi::OsStrExt;
    Ok(UnixAddr::Path(PathBuf::from(std::ffi::OsStr::from_bytes(
        &path[..end],
    ))))
}

fn to_socket_addr(a: &UnixAddr) -> io::Result<SocketAddr> {
    match a {
        UnixAddr::Abstract(name) => SocketAddr::from_abstract_name(name),
        UnixAddr::Path(p) => SocketAddr::from_pathname(p),
    }
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// A port on a `uml_switch`.
///
/// [`DaemonBackend::connect`] does not wait for the switch: it connects, binds the data
/// socket and sends the request, and the port is [`BackendState::Connecting`] until the
/// switch's reply arrives on the control connection ([`Backend::on_control`]). The control
/// connection stays open for the life of the port; its end means the switch dropped the port.
#[derive(Debug)]
pub struct DaemonBackend {
    ctl: Arc<UnixStream>,
    data: Arc<UnixDatagram>,
    ctl_path: PathBuf,
    /// The switch's reply so far.
    reply: Vec<u8>,
    state: BackendState,
}

impl DaemonBackend {
    /// Starts a port on the switch whose control socket is `cfg.ctl`.
    pub fn connect(cfg: &DaemonConfig) -> Result<Self, DaemonError> {
        Self::connect_path(&cfg.ctl)
    }

    /// Starts a port on the switch whose control socket is `ctl_path`. Nothing here waits
    /// for the switch: a switch that is absent, or whose connection queue is full, fails now;
    /// the reply is read later ([`Backend::on_control`], or [`DaemonBackend::wait_ready`]).
    pub fn connect_path(ctl_path: &Path) -> Result<Self, DaemonError> {
        let path = || ctl_path.to_path_buf();
        let ctl =
            sys::unix_connect_nonblocking(ctl_path).map_err(|source| DaemonError::Connect {
                path: path(),
                source,
            })?;
        let usecs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_micros())
            .unwrap_or(0);
        let sun = client_sun_path(
            std::process::id(),
            usecs,
            SERIAL.fetch_add(1, Ordering::Relaxed),
        );
        let local = SocketAddr::from_abstract_name(&sun[1..]).map_err(DaemonError::Bind)?;
        let data = UnixDatagram::bind_addr(&local).map_err(DaemonError::Bind)?;
        data.set_nonblocking(true).map_err(DaemonError::Bind)?;
        // A fresh connection's send buffer takes the whole request at once.
        let request = encode_request(&sun);
        match (&ctl).write(&request) {
            Ok(n) if n == request.len() => {}
            Ok(n) => {
                return Err(DaemonError::Request {
                    path: path(),
                    source: io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("only {n} of {REQUEST_LEN} bytes were taken"),
                    ),
                })
            }
            Err(source) => {
                return Err(DaemonError::Request {
                    path: path(),
                    source,
                })
            }
        }
        log::info!(
            "daemon backend (uml_switch version 3) - unix:{}",
            ctl_path.display()
        );
        Ok(DaemonBackend {
            ctl: Arc::new(ctl),
            data: Arc::new(data),
            ctl_path: path(),
            reply: Vec::with_capacity(SOCKADDR_UN_LEN),
            state: BackendState::Connecting,
        })
    }

    /// Waits up to `timeout` for the switch to answer (for callers without an event loop).
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.on_control()? == BackendState::Connecting {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "uml_switch at '{}' did not answer within {} s",
                        self.ctl_path.display(),
                        timeout.as_secs()
                    ),
                ));
            }
            sys::wait_readable(self.ctl.as_raw_fd(), left)?;
        }
        Ok(())
    }

    /// The control socket path.
    pub fn control_path(&self) -> &Path {
        &self.ctl_path
    }

    // Reads what the switch sent on the control connection; `Ok(true)` at its end.
    fn read_control(&mut self) -> io::Result<bool> {
        let mut b = [0u8; SOCKADDR_UN_LEN];
        loop {
            let want = match self.state {
                BackendState::Connecting => SOCKADDR_UN_LEN - self.reply.len(),
                // Anything after the reply is unexpected; it is read and dropped.
                BackendState::Ready => b.len(),
            };
            match (&*self.ctl).read(&mut b[..want]) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    if self.state == BackendState::Connecting {
                        self.reply.extend_from_slice(&b[..n]);
                        if self.reply.len() == SOCKADDR_UN_LEN {
                            self.finish_handshake()?;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    // The switch's reply is complete: connect the data socket to the address it names.
    fn finish_handshake(&mut self) -> io::Result<()> {
        let remote = decode_reply(&self.reply).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                DaemonError::BadReply {
                    path: self.ctl_path.clone(),
                    source: Box::new(e),
                },
            )
        })?;
        let remote_addr = to_socket_addr(&remote)?;
        self.data.connect_addr(&remote_addr)?;
        self.state = BackendState::Ready;
        log::debug!(
            "uml_switch at '{}' accepted the port",
            self.ctl_path.display()
        );
        Ok(())
    }
}

impl AsRawFd for DaemonBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.data.as_raw_fd()
    }
}

impl Backend for DaemonBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.data.send(frame).map(|_| ())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = sys::recv_trunc(&*self.data, buf)?;
            if n > buf.len() {
                log::warn!("daemon: dropping a {n}-byte frame");
                continue;
            }
            if n == 0 {
                continue;
            }
            return Ok(n);
        }
    }

    fn fd(&self) -> SharedFd {
        self.data.clone()
    }

    fn control_fd(&self) -> Option<SharedFd> {
        Some(self.ctl.clone())
    }

    /// Reads the handshake reply, or notices the switch's end: `NotConnected` once the
    /// switch closed the connection (before answering: it refused the port).
    fn on_control(&mut self) -> io::Result<BackendState> {
        if self.read_control()? {
            let what = match self.state {
                BackendState::Connecting => "refused the port (closed the connection)",
                BackendState::Ready => "closed the connection",
            };
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("uml_switch at '{}' {what}", self.ctl_path.display()),
            ));
        }
        Ok(self.state)
    }

    fn state(&self) -> BackendState {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_layout_matches_uml() {
        let sun = client_sun_path(0x71c8, 0x0ec8a0, 7);
        let r = encode_request(&sun);
        assert_eq!(r.len(), 124);
        #[cfg(target_endian = "little")]
        {
            assert_eq!(
                &r[..14],
                &[0xce, 0xfa, 0xed, 0xfe, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0]
            );
            assert_eq!(
                &r[14..26],
                &[0, 0, 0, 0, 0xc8, 0x71, 0, 0, 0xa0, 0xc8, 0x0e, 0]
            );
        }
        assert_eq!(&r[26..30], b"kuml");
        assert_eq!(&r[122..], &[0, 0]);
        let d = decode_request(&r).unwrap();
        assert_eq!(d.kind, REQ_NEW_CONTROL);
        assert_eq!(d.sun_path, sun);
    }

    #[test]
    fn request_errors() {
        let mut r = encode_request(&[0; SUN_PATH_LEN]);
        assert!(matches!(
            decode_request(&r[..100]),
            Err(DaemonError::RequestLength(100))
        ));
        r[4] = 2;
        assert!(matches!(decode_request(&r), Err(DaemonError::Version(2))));
        r[0] = 0;
        assert!(matches!(decode_request(&r), Err(DaemonError::Magic(_))));
    }

    #[test]
    fn reply_forms() {
        let mut sun = [0u8; SUN_PATH_LEN];
        sun[4] = 9;
        match decode_reply(&encode_reply(&sun)).unwrap() {
            UnixAddr::Abstract(n) => {
                assert_eq!(n.len(), 107);
                assert_eq!(n[3], 9);
            }
            a => panic!("{a:?}"),
        }
        let mut sun = [0u8; SUN_PATH_LEN];
        sun[..13].copy_from_slice(b"/tmp/uml.data");
        assert_eq!(
            decode_reply(&encode_reply(&sun)).unwrap(),
            UnixAddr::Path("/tmp/uml.data".into())
        );
        let full = encode_reply(&[b'a'; SUN_PATH_LEN]);
        assert!(matches!(decode_reply(&full), Err(DaemonError::BadPath)));
        assert!(matches!(
            decode_reply(&full[..50]),
            Err(DaemonError::ReplyLength(50))
        ));
        let mut bad = encode_reply(&[0; SUN_PATH_LEN]);
        bad[0] = 2;
        assert!(matches!(decode_reply(&bad), Err(DaemonError::Family(_))));
    }

    #[test]
    fn unique_names() {
        assert_ne!(client_sun_path(1, 2, 0), client_sun_path(1, 2, 1));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_request(&b);
            let _ = decode_reply(&b);
        }

        #[test]
        fn request_roundtrip(pid in any::<u32>(), us in any::<u32>(), s in any::<u32>()) {
            let sun = client_sun_path(pid, us, s);
            prop_assert_eq!(decode_request(&encode_request(&sun)).unwrap().sun_path, sun);
        }
    }
}
