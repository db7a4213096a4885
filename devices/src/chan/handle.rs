//! One host descriptor of a channel, and the terminals channels put in raw mode.
//!
//! A [`Handle`] restores what kuml changed on its descriptor (the `O_NONBLOCK` flag of an
//! inherited descriptor, a terminal's settings) and closes it if kuml owns it, when the last
//! reference goes. Channels share handles with the event loop's watch (see
//! [`crate::watch`]), so a descriptor the loop still watches is not closed under it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use log::debug;

use super::sys::{self, FdKind};

/// One host descriptor, restored (flags, terminal mode) and closed (if ours) on drop.
#[derive(Debug)]
pub(super) struct Handle {
    pub(super) fd: RawFd,
    _owned: Option<OwnedFd>,
    /// False for regular files and devices epoll refuses (/dev/null): always ready.
    pub(super) pollable: bool,
    pub(super) restore_flags: Option<libc::c_int>,
    /// We put this terminal in raw mode (its saved settings are in [`RAW_TERMINALS`]).
    raw: bool,
}

/// Terminals put in raw mode and their previous settings, for [`restore_terminals`].
static RAW_TERMINALS: Mutex<Vec<(RawFd, sys::Termios)>> = Mutex::new(Vec::new());

fn raw_terminals() -> MutexGuard<'static, Vec<(RawFd, sys::Termios)>> {
    crate::locked(&RAW_TERMINALS)
}

/// Restores every terminal a channel put in raw mode. Dropping a channel does this for its
/// own terminals; call this on paths that exit without dropping (`process::exit`, fatal
/// signals, panics) so that the user's shell gets its terminal back.
pub fn restore_terminals() {
    for (fd, t) in raw_terminals().drain(..) {
        if let Err(e) = sys::set_termios(fd, &t) {
            debug!("cannot restore terminal settings of fd {fd}: {e}");
        }
    }
}

impl Handle {
    /// A descriptor kuml owns: closed on drop.
    pub(super) fn owned(fd: OwnedFd, kind: FdKind) -> Self {
        let mut h = Self::borrowed(fd.as_raw_fd(), kind);
        h._owned = Some(fd);
        h
    }

    /// A descriptor someone else owns (an inherited `fd:N` used in place).
    pub(super) fn borrowed(fd: RawFd, kind: FdKind) -> Self {
        Self {
            fd,
            _owned: None,
            pollable: kind != FdKind::Regular && sys::can_poll(fd),
            restore_flags: None,
            raw: false,
        }
    }

    /// Puts the terminal in raw mode, remembering how to undo it.
    pub(super) fn make_raw(&mut self) -> io::Result<()> {
        let old = sys::make_raw(self.fd)?;
        raw_terminals().push((self.fd, old));
        self.raw = true;
        Ok(())
    }
}

impl AsRawFd for Handle {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.raw {
            let mut list = raw_terminals();
            if let Some(i) = list.iter().position(|(fd, _)| *fd == self.fd) {
                let (_, t) = list.remove(i);
                if let Err(e) = sys::set_termios(self.fd, &t) {
                    debug!("cannot restore terminal settings of fd {}: {e}", self.fd);
                }
            }
        }
        if let Some(f) = self.restore_flags {
            if let Err(e) = sys::set_flags(self.fd, f) {
                debug!("cannot restore flags of fd {}: {e}", self.fd);
            }
        }
    }
}
