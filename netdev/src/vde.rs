//! The `vde` transport: a port on a VDE switch (`vde_switch` of Debian's vde2), speaking the
//! plug protocol of libvdeplug 2 (read from its source; kuml does not link it):
//!
//! 1. connect a `SOCK_STREAM` to `<switch dir>/ctl` and keep it open for the life of the port
//!    (its end means the switch dropped the port);
//! 2. bind a `SOCK_DGRAM` data socket to a path in the switch directory,
//!    `<dir>/.<pid %05d>-<n %05d>` (the first free `n`; libvdeplug falls back to
//!    `/tmp/vde.<pid>-<n>`), and give it the port's permissions (`mode`, `group`);
//! 3. send the request `{magic 0xfeedface, version 3, type = port << 8, struct sockaddr_un
//!    (110 bytes, the data socket), description}` (host byte order, packed, the description
//!    without its NUL: `12 + 110 + len` bytes);
//! 4. read the switch's 110-byte `sockaddr_un` reply and connect the data socket to it;
//! 5. exchange raw Ethernet frames, one per datagram.
//!
//! The codec ([`encode_request`]) is PURE; [`VdeBackend`] does the I/O and, like the daemon
//! transport, does not wait for the switch: the port is connecting until the reply arrives.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::daemon::{decode_reply, UnixAddr, SOCKADDR_UN_LEN, SUN_PATH_LEN};
use crate::spec::VdeConfig;
use crate::{sys, Backend, BackendState, SharedFd};

/// Request magic (as uml_switch's: VDE grew out of it).
pub const VDE_MAGIC: u32 = 0xfeed_face;
/// Protocol version.
pub const VDE_VERSION: u32 = 3;
/// Longest description, without its NUL (libvdeplug's `MAXDESCR` is 128).
pub const MAX_DESCRIPTION: usize = 127;
/// Control socket paths tried without a switch directory (libvdeplug's fallbacks).
pub const FALLBACK_CTL: [&str; 3] = ["/var/run/vde.ctl/ctl", "/tmp/vde.ctl/ctl", "/tmp/vde.ctl"];

/// Errors of the vde transport.
#[derive(Debug, thiserror::Error)]
pub enum VdeError {
    /// No control socket answered.
    #[error("cannot connect to the VDE switch control socket (tried {tried})")]
    Connect {
        /// The paths tried.
        tried: String,
        /// The last error.
        #[source]
        source: io::Error,
    },
    /// The data socket could not be bound.
    #[error("cannot bind the VDE data socket {0}")]
    Bind(String, #[source] io::Error),
    /// Sending the request failed.
    #[error("VDE switch request to '{0}' failed")]
    Request(String, #[source] io::Error),
    /// `group=` names no group.
    #[error("vde: no group '{0}'")]
    Group(String),
}

/// Encodes the port request for a data socket bound to `sun_path` (NUL-padded).
pub fn encode_request(port: u32, sun_path: &[u8; SUN_PATH_LEN], description: &str) -> Vec<u8> {
    let d = description.as_bytes();
    let d = &d[..d.len().min(MAX_DESCRIPTION)];
    let mut r = Vec::with_capacity(12 + SOCKADDR_UN_LEN + d.len());
    r.extend_from_slice(&VDE_MAGIC.to_ne_bytes());
    r.extend_from_slice(&VDE_VERSION.to_ne_bytes());
    r.extend_from_slice(&(port << 8).to_ne_bytes());
    r.extend_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    r.extend_from_slice(sun_path);
    r.extend_from_slice(d);
    r
}

/// The `sun_path` of a filesystem path, NUL-padded; `None` when it does not fit.
pub fn sun_path_of(path: &Path) -> Option<[u8; SUN_PATH_LEN]> {
    let b = path.as_os_str().as_bytes();
    if b.is_empty() || b.len() >= SUN_PATH_LEN || b.contains(&0) {
        return None;
    }
    let mut p = [0u8; SUN_PATH_LEN];
    p[..b.len()].copy_from_slice(b);
    Some(p)
}

/// The control socket paths to try for `switch`, in order.
pub fn control_paths(switch: Option<&Path>, home: Option<&OsStr>) -> Vec<PathBuf> {
    match switch {
        Some(dir) => vec![dir.join("ctl"), dir.to_path_buf()],
        None => {
            let mut v = Vec::new();
            if let Some(h) = home {
                v.push(Path::new(h).join(".vde2/stdsock/ctl"));
            }
            v.extend(FALLBACK_CTL.iter().map(PathBuf::from));
            v
        }
    }
}

fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

/// A port on a VDE switch.
#[derive(Debug)]
pub struct VdeBackend {
    ctl: Arc<UnixStream>,
    data: Arc<UnixDatagram>,
    data_path: PathBuf,
    ctl_path: PathBuf,
    reply: Vec<u8>,
    state: BackendState,
}

impl VdeBackend {
    /// Asks the switch `cfg` names for a port.
    pub fn connect(cfg: &VdeConfig) -> Result<VdeBackend, VdeError> {
        let paths = control_paths(cfg.switch.as_deref(), std::env::var_os("HOME").as_deref());
        let mut last = io::Error::from(io::ErrorKind::NotFound);
        let mut found = None;
        for p in &paths {
            match sys::unix_connect_nonblocking(p) {
                Ok(s) => {
                    found = Some((s, p.clone()));
                    break;
                }
                Err(e) => last = e,
            }
        }
        let Some((ctl, ctl_path)) = found else {
            let tried = paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>();
            return Err(VdeError::Connect {
                tried: tried.join(", "),
                source: last,
            });
        };
        let dir = ctl_path.parent().unwrap_or(Path::new("/tmp")).to_path_buf();
        let (data, data_path) = bind_data_socket(&dir)?;
        let set_perms = || -> io::Result<()> {
            std::fs::set_permissions(&data_path, std::fs::Permissions::from_mode(cfg.mode))?;
            if let Some(g) = &cfg.group {
                let gid =
                    group_id(g).ok_or_else(|| io::Error::other(VdeError::Group(g.clone())))?;
                std::os::unix::fs::lchown(&data_path, None, Some(gid))?;
            }
            Ok(())
        };
        let cleanup = |e| {
            let _ = std::fs::remove_file(&data_path);
            e
        };
        set_perms().map_err(|e| cleanup(VdeError::Bind(data_path.display().to_string(), e)))?;
        let sun = sun_path_of(&data_path).unwrap_or([0; SUN_PATH_LEN]);
        let request = encode_request(cfg.port, &sun, &cfg.description);
        match (&ctl).write(&request) {
            Ok(n) if n == request.len() => {}
            Ok(n) => {
                return Err(cleanup(VdeError::Request(
                    ctl_path.display().to_string(),
                    io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("{n} of {} bytes taken", request.len()),
                    ),
                )))
            }
            Err(e) => {
                return Err(cleanup(VdeError::Request(
                    ctl_path.display().to_string(),
                    e,
                )))
            }
        }
        log::info!(
            "vde backend - {}, {}",
            dir.display(),
            if cfg.port == 0 {
                "undefined port".to_string()
            } else {
                format!("port {}", cfg.port)
            }
        );
        Ok(VdeBackend {
            ctl: Arc::new(ctl),
            data: Arc::new(data),
            data_path,
            ctl_path,
            reply: Vec::with_capacity(SOCKADDR_UN_LEN),
            state: BackendState::Connecting,
        })
    }

    /// The data socket's path.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    fn read_control(&mut self) -> io::Result<bool> {
        let mut b = [0u8; SOCKADDR_UN_LEN];
        loop {
            let want = match self.state {
                BackendState::Connecting => SOCKADDR_UN_LEN - self.reply.len(),
                BackendState::Ready => b.len(),
            };
            match (&*self.ctl).read(&mut b[..want]) {
                Ok(0) => return Ok(true),
                Ok(n) if self.state == BackendState::Connecting => {
                    self.reply.extend_from_slice(&b[..n]);
                    if self.reply.len() == SOCKADDR_UN_LEN {
                        let addr = match decode_reply(&self.reply) {
                            Ok(UnixAddr::Path(p)) => SocketAddr::from_pathname(p)?,
                            Ok(UnixAddr::Abstract(n)) => {
                                <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(n)?
                            }
                            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                        };
                        self.data.connect_addr(&addr)?;
                        self.state = BackendState::Ready;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

fn bind_data_socket(dir: &Path) -> Result<(UnixDatagram, PathBuf), VdeError> {
    let pid = std::process::id();
    let mut last = None;
    let candidates = std::iter::once((dir.to_path_buf(), ".")).chain(
        ["/var/run", "/var/tmp", "/tmp"]
            .into_iter()
            .map(|d| (PathBuf::from(d), "vde.")),
    );
    for (d, prefix) in candidates {
        for n in 0..1000u32 {
            let p = d.join(format!("{prefix}{pid:05}-{n:05}"));
            if sun_path_of(&p).is_none() {
                break;
            }
            match UnixDatagram::bind(&p) {
                Ok(s) => {
                    s.set_nonblocking(true)
                        .map_err(|e| VdeError::Bind(p.display().to_string(), e))?;
                    return Ok((s, p));
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    last = Some((p, e));
                    break;
                }
            }
        }
    }
    let (p, e) =
        last.unwrap_or_else(|| (dir.to_path_buf(), io::Error::from(io::ErrorKind::AddrInUse)));
    Err(VdeError::Bind(p.display().to_string(), e))
}

impl Drop for VdeBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.data_path);
    }
}

impl AsRawFd for VdeBackend {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.data.as_raw_fd()
    }
}

impl Backend for VdeBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.data.send(frame).map(|_| ())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = sys::recv_trunc(&*self.data, buf)?;
            if n > buf.len() {
                log::warn!("vde: dropping a {n}-byte frame");
                continue;
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }

    fn fd(&self) -> SharedFd {
        self.data.clone()
    }

    fn control_fd(&self) -> Option<SharedFd> {
        Some(self.ctl.clone())
    }

    fn on_control(&mut self) -> io::Result<BackendState> {
        if self.read_control()? {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "VDE switch at '{}' closed the connection",
                    self.ctl_path.display()
                ),
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
    fn request_layout() {
        let sun = sun_path_of(Path::new("/tmp/sw/.00042-00000")).unwrap();
        let r = encode_request(5, &sun, "kuml eth0");
        assert_eq!(r.len(), 4 + 4 + 4 + 110 + 9);
        #[cfg(target_endian = "little")]
        assert_eq!(
            &r[..14],
            &[0xce, 0xfa, 0xed, 0xfe, 3, 0, 0, 0, 0, 5, 0, 0, 1, 0]
        );
        assert_eq!(&r[14..34], b"/tmp/sw/.00042-00000");
        assert_eq!(&r[122..], b"kuml eth0");
        assert_eq!(
            encode_request(0, &sun, &"d".repeat(300)).len(),
            122 + MAX_DESCRIPTION
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            control_paths(Some(Path::new("/tmp/sw")), None),
            [PathBuf::from("/tmp/sw/ctl"), PathBuf::from("/tmp/sw")]
        );
        let d = control_paths(None, Some(OsStr::new("/home/u")));
        assert_eq!(d[0], PathBuf::from("/home/u/.vde2/stdsock/ctl"));
        assert_eq!(d.len(), 4);
        assert!(sun_path_of(&PathBuf::from("/".repeat(108))).is_none());
    }

    #[test]
    fn a_missing_switch_names_the_paths() {
        let cfg = VdeConfig {
            switch: Some("/nonexistent/sw".into()),
            ..VdeConfig::default()
        };
        let e = VdeBackend::connect(&cfg).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/sw/ctl"), "{e}");
    }

    proptest! {
        #[test]
        fn request_carries_port_path_and_description(port in 0u32..1 << 24, name in "/[a-z]{1,40}", d in "[ -~]{0,200}") {
            let sun = sun_path_of(Path::new(&name)).unwrap();
            let r = encode_request(port, &sun, &d);
            prop_assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()) >> 8, port);
            prop_assert_eq!(&r[14..122], &sun[..]);
            prop_assert_eq!(&r[122..], &d.as_bytes()[..d.len().min(MAX_DESCRIPTION)]);
        }
    }
}
