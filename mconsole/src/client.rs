//! The client side, used by `kuml-mconsole`: socket lookup like `uml_mconsole`, one
//! request and its (multi-packet) reply with a receive timeout, and the `config ubd`
//! filename absolutizing.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::protocol::{self, MAX_REPLY_LEN};

/// Errors of the client.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The client socket could not be created.
    #[error("cannot create the client socket")]
    Socket(#[source] io::Error),
    /// The request could not be sent (`Sending command to '<path>' : <error>`).
    #[error("Sending command to '{}' : {}", path.display(), source)]
    Send {
        /// Server socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No packet arrived in time.
    #[error("no reply from '{}' within {:?}", path.display(), timeout)]
    Timeout {
        /// Server socket.
        path: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
    /// Receiving failed.
    #[error("recvmsg")]
    Recv(#[source] io::Error),
}

/// A complete answer: the packets' texts joined, and the last packet's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The last packet's `err` (the client's exit code is `err & 0xff`).
    pub err: u32,
    /// All packets' texts, joined.
    pub text: Vec<u8>,
}

impl Response {
    /// `OK <text>` or `ERR <text>`, as `uml_mconsole` prints it (without the newline).
    pub fn format(&self) -> String {
        format!(
            "{} {}",
            if self.err != 0 { "ERR" } else { "OK" },
            String::from_utf8_lossy(&self.text)
        )
    }
    /// The process exit status `uml_mconsole` would use.
    pub fn exit_code(&self) -> i32 {
        (self.err & 0xff) as i32
    }
}

/// Where a name may be: the candidates `uml_mconsole` tries, in order, each with the
/// directory holding its `pid` file. With `uml_dir`: `<uml_dir>/<name>/mconsole`, then
/// `<name>`. Without: `$HOME/.uml/<name>/mconsole` (unless `name` starts with
/// `$HOME/.uml`), `/tmp/uml/<name>/mconsole` (unless it starts with `/tmp/uml/`),
/// `<name>`, then the `$HOME` path if it was skipped.
pub fn candidates(name: &str, uml_dir: Option<&Path>, home: Option<&Path>) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(dir) = uml_dir {
        out.push(Candidate {
            socket: dir.join(name).join("mconsole"),
            pid_file: Some(dir.join(name).join("pid")),
        });
        out.push(Candidate {
            socket: PathBuf::from(name),
            pid_file: None,
        });
        return out;
    }
    let mut home_skipped = None;
    if let Some(home) = home {
        let dir = home.join(".uml");
        let c = Candidate {
            socket: PathBuf::from(format!("{}/{}/mconsole", dir.display(), name)),
            pid_file: Some(PathBuf::from(format!("{}/{}/pid", dir.display(), name))),
        };
        if name.starts_with(&*dir.to_string_lossy()) {
            home_skipped = Some(c);
        } else {
            out.push(c);
        }
    }
    if !name.starts_with("/tmp/uml/") {
        out.push(Candidate {
            socket: PathBuf::from(format!("/tmp/uml/{name}/mconsole")),
            pid_file: Some(PathBuf::from(format!("/tmp/uml/{name}/pid"))),
        });
    }
    out.push(Candidate {
        socket: PathBuf::from(name),
        pid_file: None,
    });
    out.extend(home_skipped);
    out
}

/// One place a VM's socket may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The socket path.
    pub socket: PathBuf,
    /// The pid file next to it, if any (for the `int` command).
    pub pid_file: Option<PathBuf>,
}

/// Rewrite `config ubd<n>=A[,B]` so that relative `A` and `B` are absolute against `cwd`
/// (the VM does not share the client's directory). Empty fields and fields after the
/// second comma (the serial) are left alone; other commands are returned unchanged.
pub fn absolutize_config(command: &str, cwd: &Path) -> String {
    let Some(rest) = command.strip_prefix("config") else {
        return command.to_string();
    };
    let arg = rest.trim_start();
    if !arg.starts_with("ubd") {
        return command.to_string();
    }
    let Some((dev, value)) = arg.split_once('=') else {
        return command.to_string();
    };
    let mut fields: Vec<String> = value.splitn(3, ',').map(str::to_string).collect();
    for f in fields.iter_mut().take(2) {
        if !f.is_empty() && !f.starts_with('/') {
            *f = cwd.join(&*f).display().to_string();
        }
    }
    let head = &command[..command.len() - arg.len()];
    format!("{head}{dev}={}", fields.join(","))
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A client socket bound to an abstract address (replies need a named sender).
#[derive(Debug)]
pub struct Client {
    sock: UnixDatagram,
    target: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client talking to the socket at `target`, waiting at most `timeout` per packet.
    pub fn new(target: impl Into<PathBuf>, timeout: Duration) -> Result<Client, ClientError> {
        let name = format!(
            "kuml-mconsole-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(ClientError::Socket)?;
        let sock = UnixDatagram::bind_addr(&addr).map_err(ClientError::Socket)?;
        sock.set_read_timeout(Some(timeout))
            .map_err(ClientError::Socket)?;
        Ok(Client {
            sock,
            target: target.into(),
            timeout,
        })
    }

    /// Point the client at another socket.
    pub fn set_target(&mut self, target: impl Into<PathBuf>) {
        self.target = target.into();
    }

    /// The server socket.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Send one command (cut at 511 bytes) and collect its packets until `more == 0`.
    pub fn command(&self, text: &[u8]) -> Result<Response, ClientError> {
        // Drop late packets from an earlier command that timed out.
        let mut buf = [0u8; MAX_REPLY_LEN + 1];
        self.sock
            .set_nonblocking(true)
            .map_err(ClientError::Socket)?;
        while self.sock.recv(&mut buf).is_ok() {}
        self.sock
            .set_nonblocking(false)
            .map_err(ClientError::Socket)?;
        self.sock
            .send_to(&protocol::encode_request(text), &self.target)
            .map_err(|source| ClientError::Send {
                path: self.target.clone(),
                source,
            })?;
        let mut out = Vec::new();
        loop {
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout {
                        path: self.target.clone(),
                        timeout: self.timeout,
                    })
                }
                Err(e) => return Err(ClientError::Recv(e)),
            };
            match protocol::decode_reply(&buf[..n]) {
                Ok(p) => {
                    out.extend_from_slice(&p.text);
                    if !p.more {
                        return Ok(Response {
                            err: p.err,
                            text: out,
                        });
                    }
                }
                // A headerless datagram: UML's version-0 answer. Show it as the reply.
                Err(_) => {
                    out.extend_from_slice(&buf[..n]);
                    return Ok(Response { err: 1, text: out });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_order() {
        let home = Path::new("/h");
        let c: Vec<_> = candidates("t1", None, Some(home))
            .into_iter()
            .map(|c| c.socket)
            .collect();
        assert_eq!(
            c,
            [
                PathBuf::from("/h/.uml/t1/mconsole"),
                PathBuf::from("/tmp/uml/t1/mconsole"),
                PathBuf::from("t1")
            ]
        );
        let c: Vec<_> = candidates("/h/.uml/x/mconsole", None, Some(home))
            .into_iter()
            .map(|c| c.socket)
            .collect();
        assert_eq!(
            c,
            [
                PathBuf::from("/tmp/uml//h/.uml/x/mconsole/mconsole"),
                PathBuf::from("/h/.uml/x/mconsole"),
                PathBuf::from("/h/.uml//h/.uml/x/mconsole/mconsole"),
            ]
        );
        let c = candidates("t1", Some(Path::new("/d")), Some(home));
        assert_eq!(c[0].socket, PathBuf::from("/d/t1/mconsole"));
        assert_eq!(c[0].pid_file, Some(PathBuf::from("/d/t1/pid")));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn absolutizing() {
        let cwd = Path::new("/w");
        assert_eq!(
            absolutize_config("config ubd1=a.img", cwd),
            "config ubd1=/w/a.img"
        );
        assert_eq!(
            absolutize_config("config  ubd1r=c.cow,/b.img,SER", cwd),
            "config  ubd1r=/w/c.cow,/b.img,SER"
        );
        assert_eq!(absolutize_config("config ubd1=", cwd), "config ubd1=");
        assert_eq!(absolutize_config("config ubd1", cwd), "config ubd1");
        assert_eq!(absolutize_config("config con1=pts", cwd), "config con1=pts");
        assert_eq!(absolutize_config("version", cwd), "version");
    }

    #[test]
    fn response_format() {
        let r = Response {
            err: (-19i32) as u32,
            text: b"Device doesn't exist".to_vec(),
        };
        assert_eq!(r.format(), "ERR Device doesn't exist");
        assert_eq!(r.exit_code(), 237);
        let r = Response {
            err: 0,
            text: vec![],
        };
        assert_eq!(r.format(), "OK ");
        assert_eq!(r.exit_code(), 0);
    }
}
