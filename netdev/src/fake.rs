//! An in-memory [`Backend`] for device tests (`test-utils` feature).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::Backend;

#[derive(Debug, Default)]
struct Queues {
    /// Frames the device sent (host side reads them).
    sent: VecDeque<Vec<u8>>,
    /// Frames waiting for the device's `recv`.
    pending: VecDeque<Vec<u8>>,
    /// When set, `send` fails with `WouldBlock`.
    send_full: bool,
}

/// A [`Backend`] whose frames are queued in memory. Clones share the queues, so a test keeps
/// one clone as the "host side" ([`FakeBackend::inject`], [`FakeBackend::take_sent`]).
///
/// Its fd is an `eventfd` that is readable while frames are pending, so it can be registered
/// in a real event loop.
#[derive(Debug, Clone)]
pub struct FakeBackend {
    queues: Arc<Mutex<Queues>>,
    event: Arc<OwnedFd>,
}

impl FakeBackend {
    /// A backend with empty queues.
    pub fn new() -> io::Result<Self> {
        Ok(FakeBackend {
            queues: Arc::default(),
            event: Arc::new(crate::sys::eventfd()?),
        })
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
        dev.send_vectored(&[std::io::IoSlice::new(&[1]), std::io::IoSlice::new(&[2, 3])])
            .unwrap();
        host.set_send_full(true);
        assert_eq!(
            dev.send(&[1]).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(host.take_sent(), vec![vec![9, 9], vec![1, 2, 3]]);
    }
}
