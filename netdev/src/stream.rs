//! Ethernet frames over a stream socket, each after its length as a 4-byte big-endian
//! number: QEMU's `-netdev stream`/`socket,connect=` framing, which passt speaks.
//!
//! [`FrameReader`] (PURE) cuts a byte stream into frames; [`StreamBackend`] moves frames over
//! a nonblocking stream socket. A frame the socket takes only in part is finished before any
//! other ([`Backend::tx_pending`]): the stream must never carry half a frame followed by the
//! start of the next.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use crate::{Backend, SharedFd, RECV_BUF_LEN};

/// Length of the frame length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes read from the socket per call.
const READ_CHUNK: usize = 64 * 1024;

/// What [`FrameReader::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// A whole frame.
    Frame(&'a [u8]),
    /// A frame longer than the reader takes: its bytes are skipped as they arrive.
    TooLong(usize),
    /// The next frame is not complete yet.
    NeedMore,
}

/// PURE: cuts a stream of `{be32 length, frame}` records into frames.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of a too-long frame still to skip.
    skip: usize,
    max: usize,
}

impl FrameReader {
    /// A reader taking frames of at most `max` bytes.
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            end: 0,
            skip: 0,
            max,
        }
    }

    /// Free space at the end of the buffer to read into (at least `READ_CHUNK` bytes);
    /// report what was read with [`FrameReader::filled`].
    pub fn space(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = self.end + READ_CHUNK;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were written at the start of [`FrameReader::space`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }

    /// Appends `data` (for callers that do not read into [`FrameReader::space`]).
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let space = self.space();
            let n = space.len().min(data.len());
            space[..n].copy_from_slice(&data[..n]);
            self.filled(n);
            data = &data[n..];
        }
    }

    /// The next complete frame, a too-long one being skipped, or [`Next::NeedMore`].
    pub fn next_frame(&mut self) -> Next<'_> {
        if self.skip > 0 {
            let n = self.skip.min(self.end - self.start);
            self.start += n;
            self.skip -= n;
            if self.skip > 0 {
                return Next::NeedMore;
            }
        }
        let avail = &self.buf[self.start..self.end];
        let Some(prefix) = avail.get(..LEN_PREFIX) else {
            return Next::NeedMore;
        };
        let len = u32::from_be_bytes(prefix.try_into().unwrap_or_default()) as usize;
        if len > self.max {
            self.start += LEN_PREFIX;
            self.skip = len;
            let n = self.skip.min(self.end - self.start);
            self.start += n;
            self.skip -= n;
            return Next::TooLong(len);
        }
        if avail.len() < LEN_PREFIX + len {
            return Next::NeedMore;
        }
        let at = self.start + LEN_PREFIX;
        self.start = at + len;
        Next::Frame(&self.buf[at..at + len])
    }
}

/// The length prefix of a frame of `len` bytes.
pub fn len_prefix(len: usize) -> [u8; LEN_PREFIX] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// Frames over a nonblocking stream socket with length prefixes.
#[derive(Debug)]
pub struct StreamBackend {
    sock: Arc<UnixStream>,
    reader: FrameReader,
    /// The rest of a frame the socket took only in part.
    out: Vec<u8>,
    what: String,
}

impl StreamBackend {
    /// Frames over `sock`; `what` names the peer in messages (`passt`, …).
    pub fn new(sock: UnixStream, what: &str) -> io::Result<StreamBackend> {
        sock.set_nonblocking(true)?;
        Ok(StreamBackend {
            sock: Arc::new(sock),
            reader: FrameReader::new(RECV_BUF_LEN),
            out: Vec::new(),
            what: what.to_string(),
        })
    }

    fn write_out(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match (&*self.sock).write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Backend for StreamBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // A frame the socket has not finished goes first; a new one waits behind it.
        self.write_out()?;
        let prefix = len_prefix(frame.len());
        let total = LEN_PREFIX + frame.len();
        let n = loop {
            match (&*self.sock).write_vectored(&[IoSlice::new(&prefix), IoSlice::new(frame)]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if n < total {
            // Keep the rest: it is sent before anything else.
            let mut rest = Vec::with_capacity(total - n);
            if n < LEN_PREFIX {
                rest.extend_from_slice(&prefix[n..]);
                rest.extend_from_slice(frame);
            } else {
                rest.extend_from_slice(&frame[n - LEN_PREFIX..]);
            }
            self.out = rest;
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.reader.next_frame() {
                Next::Frame(f) if f.len() <= buf.len() => {
                    buf[..f.len()].copy_from_slice(f);
                    return Ok(f.len());
                }
                Next::Frame(f) => {
                    log::warn!("{}: dropping a {}-byte frame", self.what, f.len());
                    continue;
                }
                Next::TooLong(n) => {
                    log::warn!("{}: dropping a {n}-byte frame", self.what);
                    continue;
                }
                Next::NeedMore => {}
            }
            let n = loop {
                match (&*self.sock).read(self.reader.space()) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("{} closed the connection", self.what),
                ));
            }
            self.reader.filled(n);
        }
    }

    fn fd(&self) -> SharedFd {
        self.sock.clone()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()
    }

    fn tx_pending(&self) -> bool {
        !self.out.is_empty()
    }
}

impl AsRawFd for StreamBackend {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(f: &[u8]) -> Vec<u8> {
        let mut r = len_prefix(f.len()).to_vec();
        r.extend_from_slice(f);
        r
    }

    fn drain(r: &mut FrameReader) -> Vec<Result<Vec<u8>, usize>> {
        let mut out = Vec::new();
        loop {
            match r.next_frame() {
                Next::Frame(f) => out.push(Ok(f.to_vec())),
                Next::TooLong(n) => out.push(Err(n)),
                Next::NeedMore => return out,
            }
        }
    }

    #[test]
    fn frames_and_too_long_ones() {
        let mut r = FrameReader::new(8);
        let mut bytes = record(b"abc");
        bytes.extend(record(&[7; 20]));
        bytes.extend(record(b""));
        bytes.extend(record(b"12345678"));
        r.push(&bytes);
        assert_eq!(
            drain(&mut r),
            [
                Ok(b"abc".to_vec()),
                Err(20),
                Ok(vec![]),
                Ok(b"12345678".to_vec())
            ]
        );
    }

    #[test]
    fn backend_over_a_socketpair() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut be = StreamBackend::new(a, "peer").unwrap();
        be.send(b"hello").unwrap();
        let mut got = [0u8; 9];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\0\0\0\x05hello");
        b.write_all(&record(b"frame one")).unwrap();
        b.write_all(&record(b"two")[..3]).unwrap();
        let mut buf = vec![0u8; RECV_BUF_LEN];
        assert_eq!(be.recv(&mut buf).unwrap(), 9);
        assert_eq!(
            be.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        b.write_all(&record(b"two")[3..]).unwrap();
        let n = be.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two");
        drop(b);
        assert_eq!(
            be.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
    }

    #[test]
    fn a_full_socket_keeps_the_rest_of_a_frame() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut be = StreamBackend::new(a, "peer").unwrap();
        let frame = vec![0x5a; 1500];
        let mut sent = 0;
        // Until the socket is full: mid-frame (the rest waits) or between frames (refused).
        loop {
            match be.send(&frame) {
                Ok(()) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            if be.tx_pending() {
                break;
            }
        }
        assert_eq!(
            be.send(&frame).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "no new frame while one is half sent"
        );
        b.set_nonblocking(true).unwrap();
        let mut r = FrameReader::new(2000);
        let mut frames = 0;
        while frames < sent {
            match b.read(r.space()) {
                Ok(n) => r.filled(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => be
                    .flush()
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::WouldBlock {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .unwrap(),
                Err(e) => panic!("{e}"),
            }
            while let Next::Frame(f) = r.next_frame() {
                assert_eq!(f, &frame[..]);
                frames += 1;
            }
        }
        assert!(!be.tx_pending());
    }

    proptest! {
        /// Any split of the stream yields the same frames.
        #[test]
        fn any_split_decodes_alike(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let bytes: Vec<u8> = frames.iter().flat_map(|f| record(f)).collect();
            let mut whole = FrameReader::new(30);
            whole.push(&bytes);
            let expect = drain(&mut whole);
            let mut r = FrameReader::new(30);
            let mut got = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                r.push(&bytes[at..c]);
                got.extend(drain(&mut r));
                at = c;
            }
            prop_assert_eq!(got, expect);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut r = FrameReader::new(16);
            r.push(&bytes);
            for f in drain(&mut r).into_iter().flatten() {
                prop_assert!(f.len() <= 16);
            }
        }
    }
}
