//! An in-memory [`Backend`] for device tests (`test-utils` feature).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::{Backend, BackendState, SharedFd};

#[derive(Debug)]
struct Queues {
    /// Frames the device sent (host side reads them).
    sent: VecDeque<Vec<u8>>,
    /// Frames waiting for the device's `recv`.
    pending: VecDeque<Vec<u8>>,
    /// When set, `send` fails with `WouldBlock`.
    send_full: bool,
    /// When set, `recv` fails with this errno and the fd stays readable, as a deleted tap's
    /// does (it reports POLLERR for ever).
    recv_error: Option<i32>,
    /// The state a backend with a control descriptor reports.
    state: BackendState,
    /// The control side hung up: `on_control` fails.
    gone: bool,
}

/// A [`Backend`] whose frames are queued in memory. Clones share the queues, so a test keeps
/// one clone as the "host side" ([`FakeBackend::inject`], [`FakeBackend::take_sent`]).
///
/// Its fd is an `eventfd` that is readable while frames are pending, so it can be registered
/// in a real event loop. [`FakeBackend::connecting`] makes one with a control descriptor, like
/// a `uml_switch` port before the switch answered.
#[derive(Debug, Clone)]
pub struct FakeBackend {
    queues: Arc<Mutex<Queues>>,
    event: Arc<OwnedFd>,
    control: Option<Arc<OwnedFd>>,
}

impl FakeBackend {
    /// A ready backend with empty queues.
    pub fn new() -> io::Result<Self> {
        Ok(FakeBackend {
            queues: Arc::new(Mutex::new(Queues {
                sent: VecDeque::new(),
                pending: VecDeque::new(),
                send_full: false,
                recv_error: None,
                state: BackendState::Ready,
                gone: false,
            })),
            event: Arc::new(crate::sys::eventfd()?),
            control: None,
        })
    }

    /// A backend with a control descriptor that is still connecting (see
    /// [`FakeBackend::set_ready`], [`FakeBackend::hang_up`]).
    pub fn connecting() -> io::Result<Self> {
        let mut b = Self::new()?;
        b.lock().state = BackendState::Connecting;
        b.control = Some(Arc::new(crate::sys::eventfd()?));
        Ok(b)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        // A panic elsewhere while holding the lock leaves plain queues behind: keep using them.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame for the device's next `recv`.
    pub fn inject(&self, frame: &[u8]) {
        self.lock().pending.push_back(frame.to_vec());
        crate::sys::eventfd_signal(&self.event);
    }

    /// Takes every frame the device has sent so far.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        self.lock().sent.drain(..).collect()
    }

    /// Makes `send` fail with `WouldBlock` (host queue full) or succeed again.
    pub fn set_send_full(&self, full: bool) {
        self.lock().send_full = full;
    }

    /// Makes every `recv` fail with `errno` (and the fd readable for ever), or work again.
    pub fn set_recv_error(&self, errno: Option<i32>) {
        self.lock().recv_error = errno;
        crate::sys::eventfd_signal(&self.event);
    }

    /// The control side answers: the backend is ready.
    pub fn set_ready(&self) {
        self.lock().state = BackendState::Ready;
        self.signal_control();
    }

    /// The control side hangs up: `on_control` fails from now on.
    pub fn hang_up(&self) {
        self.lock().gone = true;
        self.signal_control();
    }

    fn signal_control(&self) {
        if let Some(c) = &self.control {
            crate::sys::eventfd_signal(c);
        }
    }
}

impl AsRawFd for FakeBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

impl Backend for FakeBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut q = self.lock();
        if q.send_full {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        q.sent.push_back(frame.to_vec());
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut q = self.lock();
        if let Some(errno) = q.recv_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        loop {
            let Some(frame) = q.pending.pop_front() else {
                crate::sys::eventfd_drain(&self.event);
                return Err(io::ErrorKind::WouldBlock.into());
            };
            if frame.len() > buf.len() {
                log::warn!("fake backend: dropping a {}-byte frame", frame.len());
                continue;
            }
            buf[..frame.len()].copy_from_slice(&frame);
            if q.pending.is_empty() {
                crate::sys::eventfd_drain(&self.event);
            }
            return Ok(frame.len());
        }
    }

    fn fd(&self) -> SharedFd {
        self.event.clone()
    }

    fn control_fd(&self) -> Option<SharedFd> {
        self.control.clone().map(|c| c as SharedFd)
    }

    fn on_control(&mut self) -> io::Result<BackendState> {
        if let Some(c) = &self.control {
            crate::sys::eventfd_drain(c);
        }
        let q = self.lock();
        if q.gone {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "fake backend: the control side hung up",
            ));
        }
        Ok(q.state)
    }

    fn state(&self) -> BackendState {
        self.lock().state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_both_ways() {
        let host = FakeBackend::new().unwrap();
        let mut dev = host.clone();
        let mut buf = [0u8; 64];
        assert_eq!(
            dev.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        host.inject(&[1, 2, 3]);
        host.inject(&[0; 100]);
        host.inject(&[4]);
        assert_eq!(dev.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], &[1, 2, 3]);
        assert_eq!(dev.recv(&mut buf).unwrap(), 1);
        dev.send(&[9, 9]).unwrap();
        host.set_send_full(true);
        assert_eq!(
            dev.send(&[1]).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(host.take_sent(), vec![vec![9, 9]]);
        host.set_recv_error(Some(libc::EBADFD));
        let e = dev.recv(&mut buf).unwrap_err();
        assert!(crate::is_gone(&e), "{e}");
    }

    #[test]
    fn control_side_connects_and_hangs_up() {
        let host = FakeBackend::connecting().unwrap();
        let mut dev = host.clone();
        assert!(dev.control_fd().is_some());
        assert_eq!(dev.on_control().unwrap(), BackendState::Connecting);
        host.set_ready();
        assert_eq!(dev.on_control().unwrap(), BackendState::Ready);
        host.hang_up();
        assert!(dev.on_control().is_err());
    }
}
