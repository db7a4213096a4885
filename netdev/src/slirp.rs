//! The `slirp` transport: networking without root through a user-mode network stack that
//! kuml starts for the interface and talks to over a socketpair (the helper gets its end as
//! descriptor 3):
//!
//! * passt (the default): `passt -f --fd 3 <args>`, frames over the stream with 4-byte
//!   big-endian lengths ([`crate::stream`]); passt offers DHCP, DNS forwarding, outbound TCP,
//!   UDP and ICMP, and its `-t`/`-u` options forward host ports to the guest;
//! * libslirp-helper: `libslirp-helper --fd 3 --exit-with-parent <args>`, one frame per
//!   datagram ([`crate::vector_backend::DgramBackend`]).
//!
//! The helper's messages are logged (prefixed with its name and pid). It ends when kuml
//! closes its end or drops the interface; if it ends first, its socket hangs up and the
//! guest's link goes down.

use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::spec::{SlirpConfig, SlirpProtocol};
use crate::stream::StreamBackend;
use crate::vector::DEFAULT_DEPTH;
use crate::vector_backend::DgramBackend;
use crate::{Backend, BackendState, SharedFd};

/// The descriptor number the helper gets its end of the socketpair as.
pub const HELPER_FD: i32 = 3;

/// Errors of the slirp transport.
#[derive(Debug, thiserror::Error)]
pub enum SlirpError {
    /// socketpair failed.
    #[error("socketpair for the slirp helper")]
    Socketpair(#[source] io::Error),
    /// The helper could not be started.
    #[error(
        "cannot start the slirp helper '{helper}' (install Debian's passt or libslirp-helper, \
         or name another helper: eth<N>=slirp,<mac>,<helper>)"
    )]
    Spawn {
        /// The helper.
        helper: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kuml side of the socketpair.
    #[error("slirp helper socket")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A running helper and the frames to and from it.
#[derive(Debug)]
pub struct SlirpBackend {
    inner: Box<dyn Backend>,
    child: Child,
    name: String,
}

/// The words kuml puts before the user's arguments.
pub fn helper_args(protocol: SlirpProtocol) -> Vec<String> {
    let fd = HELPER_FD.to_string();
    match protocol {
        SlirpProtocol::Stream => vec!["-f".into(), "--fd".into(), fd],
        SlirpProtocol::Datagram => vec!["--fd".into(), fd, "--exit-with-parent".into()],
    }
}

impl SlirpBackend {
    /// Starts the helper `cfg` names.
    pub fn start(cfg: &SlirpConfig) -> Result<SlirpBackend, SlirpError> {
        let (ours, theirs): (OwnedFd, OwnedFd) = match cfg.protocol {
            SlirpProtocol::Stream => {
                let (a, b) = UnixStream::pair().map_err(SlirpError::Socketpair)?;
                (a.into(), b.into())
            }
            SlirpProtocol::Datagram => {
                let (a, b) = UnixDatagram::pair().map_err(SlirpError::Socketpair)?;
                (a.into(), b.into())
            }
        };
        let mut cmd = Command::new(&cfg.helper);
        cmd.args(helper_args(cfg.protocol))
            .args(&cfg.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let theirs_raw = theirs.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and only calls dup2 and
        // fcntl, which are async-signal-safe; `theirs` stays open in the parent until spawn
        // returned.
        unsafe {
            cmd.pre_exec(move || {
                if theirs_raw == HELPER_FD {
                    if libc::fcntl(HELPER_FD, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_raw, HELPER_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = crate::launch::spawn(cmd).map_err(|source| SlirpError::Spawn {
            helper: cfg.helper.clone(),
            source,
        })?;
        drop(theirs);
        let base = cfg.helper.rsplit('/').next().unwrap_or(&cfg.helper);
        let name = format!("{base}[{}]", child.id());
        if let Some(err) = child.stderr.take() {
            let prefix = name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("log {prefix}"))
                .spawn(move || {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        // passt says this for every line when no syslog daemon listens.
                        if line.trim().is_empty() || line.ends_with("to syslog") {
                            continue;
                        }
                        log::info!("{prefix}: {line}");
                    }
                });
            if let Err(e) = spawned {
                log::warn!("{name}: no thread for its messages: {e}");
            }
        }
        let inner: Box<dyn Backend> = match cfg.protocol {
            SlirpProtocol::Stream => Box::new(
                StreamBackend::new(UnixStream::from(ours), &name)
                    .map_err(|e| SlirpError::Backend(Box::new(e)))?,
            ),
            SlirpProtocol::Datagram => Box::new(
                DgramBackend::new(ours, DEFAULT_DEPTH, true, &name)
                    .map_err(|e| SlirpError::Backend(Box::new(e)))?,
            ),
        };
        log::info!(
            "slirp backend - {name}: {} {}",
            helper_args(cfg.protocol).join(" "),
            cfg.args.join(" ")
        );
        Ok(SlirpBackend { inner, child, name })
    }

    /// The helper's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SlirpBackend {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        match self.child.wait() {
            Ok(s) => log::debug!("{}: ended ({s})", self.name),
            Err(e) => log::warn!("{}: cannot reap: {e}", self.name),
        }
    }
}

impl Backend for SlirpBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.inner.send(frame)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.recv(buf)
    }

    fn fd(&self) -> SharedFd {
        self.inner.fd()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    fn tx_pending(&self) -> bool {
        self.inner.tx_pending()
    }

    fn state(&self) -> BackendState {
        self.inner.state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_helper_is_named() {
        let cfg = SlirpConfig {
            helper: "/nonexistent/passt".into(),
            ..SlirpConfig::default()
        };
        let e = SlirpBackend::start(&cfg).unwrap_err();
        assert!(e.to_string().contains("'/nonexistent/passt'"), "{e}");
    }

    #[test]
    fn the_helper_gets_its_end_as_fd_3() {
        // A stand-in named like libslirp-helper: checks the words kuml adds, then echoes
        // every datagram on descriptor 3 back (cat reads and writes one datagram at a time).
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("libslirp-helper");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$*\" = \"--fd 3 --exit-with-parent -x\" ] || exit 9\nexec cat <&3 >&3\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let cfg = SlirpConfig {
            helper: script.display().to_string(),
            args: vec!["-x".into()],
            protocol: crate::spec::slirp_protocol(&script.display().to_string()),
        };
        assert_eq!(cfg.protocol, SlirpProtocol::Datagram);
        let mut b = SlirpBackend::start(&cfg).unwrap();
        b.send(b"ping-frame\n").unwrap();
        b.flush().unwrap();
        let mut buf = vec![0u8; crate::RECV_BUF_LEN];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match b.recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(&buf[..n], b"ping-frame\n");
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no answer");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}
