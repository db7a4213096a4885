//! `mconsole=notify:<socket>`: datagrams the VM sends to a watcher (reference §3.6), from
//! an unbound socket, `16 + len` bytes each.
//!
//! * [`Notifier::socket_ready`] once the mconsole socket is up (type 0, path + NUL);
//! * [`Notifier::panic`] when the guest panics (type 1, message + NUL);
//! * [`Notifier::user`] for guest writes to `/proc/mconsole` (type 3, bytes, max 512).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::protocol::{encode_notification, NotifyType};

/// A send waits at most this long for room in the watcher's queue.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of the notifier.
#[derive(Debug, Error)]
pub enum NotifyError {
    /// The socket could not be created.
    #[error("cannot create the notification socket")]
    Socket(#[source] io::Error),
    /// The datagram could not be delivered.
    #[error("cannot send a notification to {path:?}")]
    Send {
        /// Watcher socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The value of UML's `mconsole=` option: `notify:<path>` gives the path; anything else
/// is `None` (UML logs `mconsole_setup : Unknown option - '<value>'`).
pub fn parse_mconsole_option(value: &str) -> Option<PathBuf> {
    value
        .strip_prefix("notify:")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Sends notifications to one watcher socket.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    target: PathBuf,
}

impl Notifier {
    /// A notifier for the watcher socket at `target`.
    pub fn new(target: impl Into<PathBuf>) -> Result<Notifier, NotifyError> {
        let sock = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        sock.set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(NotifyError::Socket)?;
        Ok(Notifier {
            sock,
            target: target.into(),
        })
    }

    /// The watcher socket.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Send one notification (payload truncated to 512 bytes).
    pub fn send(&self, kind: NotifyType, payload: &[u8]) -> Result<(), NotifyError> {
        let packet = encode_notification(kind, payload);
        self.sock
            .send_to(&packet, &self.target)
            .map(|_| ())
            .map_err(|source| NotifyError::Send {
                path: self.target.clone(),
                source,
            })
    }

    /// `MCONSOLE_SOCKET`: the mconsole socket path plus NUL.
    pub fn socket_ready(&self, mconsole_path: &Path) -> Result<(), NotifyError> {
        let mut p = mconsole_path.as_os_str().as_encoded_bytes().to_vec();
        p.push(0);
        self.send(NotifyType::Socket, &p)
    }

    /// `MCONSOLE_PANIC`: the panic message plus NUL.
    pub fn panic(&self, message: &str) -> Result<(), NotifyError> {
        let mut p = message.as_bytes().to_vec();
        p.push(0);
        self.send(NotifyType::Panic, &p)
    }

    /// `MCONSOLE_USER_NOTIFY`: bytes the guest wrote (no NUL added).
    pub fn user(&self, bytes: &[u8]) -> Result<(), NotifyError> {
        self.send(NotifyType::User, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_notification;

    #[test]
    fn option_parsing() {
        assert_eq!(
            parse_mconsole_option("notify:/tmp/n"),
            Some(PathBuf::from("/tmp/n"))
        );
        assert_eq!(parse_mconsole_option("notify:"), None);
        assert_eq!(parse_mconsole_option("foo"), None);
    }

    #[test]
    fn sends_uml_packets_to_a_real_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(&path).unwrap();
        let sock = PathBuf::from("/root/.uml/nt/mconsole");
        n.socket_ready(&sock).unwrap();
        n.panic("Attempted to kill init! exitcode=0x0000000b")
            .unwrap();
        n.user(b"hello").unwrap();
        let mut buf = [0u8; 1024];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(len, 39);
        let d = decode_notification(&buf[..len]).unwrap();
        assert_eq!(
            (d.magic, d.version, d.kind),
            (0xCAFE_BABE, 2, NotifyType::Socket)
        );
        assert_eq!(d.data, b"/root/.uml/nt/mconsole\0");
        let len = listener.recv(&mut buf).unwrap();
        let d = decode_notification(&buf[..len]).unwrap();
        assert_eq!(d.kind, NotifyType::Panic);
        assert_eq!(d.data, b"Attempted to kill init! exitcode=0x0000000b\0");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(len, 21);
        let d = decode_notification(&buf[..len]).unwrap();
        assert_eq!((d.kind, &d.data[..]), (NotifyType::User, &b"hello"[..]));
    }

    #[test]
    fn missing_watcher_is_an_error() {
        let n = Notifier::new("/nonexistent/notify").unwrap();
        assert!(matches!(n.panic("x"), Err(NotifyError::Send { .. })));
    }
}
