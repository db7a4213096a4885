//! A bound on one exchange with a share's daemon (the handshake, starting or stopping the
//! rings).
//!
//! A socket timeout does not bound it: the `vhost` crate takes `EAGAIN` for a temporary error
//! and reads again, so a daemon that keeps its socket open and never answers held the caller
//! for ever (kuml's event loop, or the vCPU whose register write started the device). A
//! [`Deadline`] shuts the socket down when its time is up: the request in progress fails at
//! once, and so does every later one, and the device treats the daemon as gone.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::warn;

/// While alive, shuts `socket` down once `limit` has passed; dropping it in time disarms it.
#[derive(Debug)]
pub(super) struct Deadline {
    disarm: Option<mpsc::Sender<()>>,
    watcher: Option<JoinHandle<bool>>,
}

impl Deadline {
    /// Arms a deadline for `what` (logged with `name` if it passes).
    pub(super) fn arm(
        socket: &Arc<UnixStream>,
        limit: Duration,
        name: &str,
        what: &'static str,
    ) -> Deadline {
        let (disarm, until) = mpsc::channel::<()>();
        let (socket, who) = (socket.clone(), name.to_owned());
        // Unnamed: naming a thread is a prctl in the new thread, which the vCPU filter (the
        // device starts and stops on a vCPU thread, whose filter the watcher inherits) refuses.
        let watcher = std::thread::Builder::new().spawn(move || match until.recv_timeout(limit) {
            Err(RecvTimeoutError::Timeout) => {
                warn!(
                    "{who}: virtiofsd did not answer {what} within {} s; its connection is \
                         closed",
                    limit.as_secs()
                );
                let _ = socket.shutdown(Shutdown::Both);
                true
            }
            // Disarmed (the sender is dropped, never used).
            Ok(()) | Err(RecvTimeoutError::Disconnected) => false,
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("{name}: no deadline for {what} (cannot start its thread: {e})");
                None
            }
        };
        Deadline {
            disarm: Some(disarm),
            watcher,
        }
    }

    /// Disarms the deadline; whether it had passed (the socket is shut down then).
    pub(super) fn passed(mut self) -> bool {
        self.finish()
    }

    fn finish(&mut self) -> bool {
        drop(self.disarm.take());
        self.watcher
            .take()
            .is_some_and(|w| w.join().unwrap_or(false))
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_deadline_that_passes_ends_a_blocked_read() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let a = Arc::new(a);
        let d = Deadline::arm(&a, Duration::from_millis(50), "t", "a test");
        // Nobody writes to `b`: only the deadline ends this read (EOF after the shutdown).
        let mut buf = [0u8; 1];
        assert_eq!(b.read(&mut buf).unwrap(), 0);
        assert!(d.passed());
    }

    #[test]
    fn a_deadline_dropped_in_time_leaves_the_socket_open() {
        use std::io::Write;
        let (a, mut b) = UnixStream::pair().unwrap();
        let a = Arc::new(a);
        let d = Deadline::arm(&a, Duration::from_secs(3600), "t", "a test");
        assert!(!d.passed());
        (&*a).write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }
}
