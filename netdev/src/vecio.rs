//! Batched frame I/O on one datagram-style socket, as UML's vector driver does it: received
//! datagrams come `depth` at a time from one `recvmmsg`, frames to send are queued and leave
//! `depth` at a time through one `sendmmsg` (or at the end of the device's transmit round,
//! [`crate::Backend::flush`]). With `vec=0` both rings hold one frame: one call per frame.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::sock::{RawAddr, Received, RxRing, TxRing};
use crate::SharedFd;

/// Bytes per receive slot: any Ethernet frame up to a 1500-byte MTU with VLAN tags, plus the
/// IP and tunnel headers in front of it, with room to spare. Longer datagrams are dropped.
pub(crate) const SLOT_LEN: usize = 4096;

/// Receives whose frames are dropped, counted for sparse logging.
#[derive(Debug, Default)]
struct Drops(u64);

impl Drops {
    fn note(&mut self, what: &str, why: &str) {
        self.0 += 1;
        if self.0.is_power_of_two() {
            log::warn!(
                "{what}: dropped a received packet ({} so far): {why}",
                self.0
            );
        }
    }
}

/// A socket with its receive and send rings.
#[derive(Debug)]
pub(crate) struct VectorIo {
    fd: Arc<OwnedFd>,
    rx: RxRing,
    tx: TxRing,
    dest: Option<RawAddr>,
    what: String,
    drops: Drops,
}

impl VectorIo {
    /// Rings of `depth` frames (1 without `batch`) on `fd`; frames go to `dest` when given;
    /// with `want_addr` received datagrams carry their source address.
    pub fn new(
        fd: OwnedFd,
        depth: usize,
        batch: bool,
        want_addr: bool,
        dest: Option<RawAddr>,
        what: String,
    ) -> VectorIo {
        let depth = if batch { depth } else { 1 };
        VectorIo {
            fd: Arc::new(fd),
            rx: RxRing::new(depth, SLOT_LEN, want_addr),
            tx: TxRing::new(depth),
            dest,
            what,
            drops: Drops::default(),
        }
    }

    /// The socket.
    pub fn fd(&self) -> SharedFd {
        self.fd.clone()
    }

    /// Queues one frame written by `fill`; sends the queue when it is full. `WouldBlock`
    /// (nothing queued) when the queue is full and the socket takes nothing.
    pub fn send_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        if self.tx.full() {
            self.flush()?;
        }
        let Some(slot) = self.tx.slot() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        fill(slot);
        self.tx.commit();
        if self.tx.full() {
            match self.flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
        }
        Ok(())
    }

    /// Sends the queued frames.
    pub fn flush(&mut self) -> io::Result<()> {
        self.tx.flush(self.fd.as_raw_fd(), self.dest.as_ref())
    }

    /// Whether queued frames wait for the socket.
    pub fn pending(&self) -> bool {
        self.tx.pending()
    }

    /// Receives the next frame into `buf`: `take` finds the frame in a datagram (or says why
    /// the datagram is not one for this interface; it is dropped and logged sparsely).
    pub fn recv_with(
        &mut self,
        buf: &mut [u8],
        mut take: impl FnMut(&Received<'_>) -> Result<Range<usize>, String>,
    ) -> io::Result<usize> {
        loop {
            let r = self.rx.pop(self.fd.as_raw_fd())?;
            if r.len > r.data.len() {
                let why = format!("a {}-byte datagram is longer than {SLOT_LEN} bytes", r.len);
                self.drops.note(&self.what, &why);
                continue;
            }
            match take(&r) {
                Ok(range) if range.is_empty() => {}
                Ok(range) if range.len() <= buf.len() => {
                    let n = range.len();
                    buf[..n].copy_from_slice(&r.data[range]);
                    return Ok(n);
                }
                Ok(range) => {
                    let why = format!("a {}-byte frame does not fit", range.len());
                    self.drops.note(&self.what, &why);
                }
                Err(why) => self.drops.note(&self.what, &why),
            }
        }
    }
}
