//! Output waiting for a host reader: a bounded buffer that keeps the newest bytes.
//!
//! A channel's output never blocks the guest. What the host side does not take at once waits
//! here, up to [`OUTPUT_BUFFER_MAX`] bytes; beyond that the oldest bytes are dropped, so that
//! a reader who comes back (a terminal attached to a `pts` after a long boot) sees the most
//! recent output and everything after it. The count of bytes dropped during a stall is kept
//! until the buffer drains, for the one warning the channel logs about it.

use std::collections::VecDeque;

/// Output kept for a host reader that is not keeping up; older output is dropped beyond it.
pub const OUTPUT_BUFFER_MAX: usize = 1 << 20;

/// Bytes waiting for the host side, at most a fixed number of them.
#[derive(Debug)]
pub(super) struct OutputBuffer {
    buf: VecDeque<u8>,
    max: usize,
    /// Bytes dropped since the buffer last drained.
    dropped: u64,
}

impl OutputBuffer {
    /// An empty buffer that keeps at most `max` bytes.
    pub(super) fn new(max: usize) -> Self {
        OutputBuffer {
            buf: VecDeque::new(),
            max,
            dropped: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends `data`, dropping the oldest bytes beyond the bound; returns how many bytes
    /// were dropped by this call.
    pub(super) fn push(&mut self, data: &[u8]) -> usize {
        // Of `data` itself, only its last `max` bytes can be kept.
        let skip = data.len().saturating_sub(self.max);
        let data = &data[skip..];
        let over = (self.buf.len() + data.len()).saturating_sub(self.max);
        self.buf.drain(..over);
        self.buf.extend(data);
        let dropped = skip + over;
        self.dropped += dropped as u64;
        dropped
    }

    /// The oldest waiting bytes, as one contiguous slice (not necessarily all of them).
    pub(super) fn front(&self) -> &[u8] {
        self.buf.as_slices().0
    }

    /// Forgets the `n` oldest bytes (they were written).
    pub(super) fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
    }

    /// Forgets everything (the reader is gone).
    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.dropped = 0;
    }

    /// Bytes dropped since the buffer last drained.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Once the buffer has drained: how many bytes the stall cost (zero if none), and the
    /// count starts again.
    pub(super) fn take_dropped(&mut self) -> u64 {
        if self.buf.is_empty() {
            std::mem::take(&mut self.dropped)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn contents(b: &OutputBuffer) -> Vec<u8> {
        b.buf.iter().copied().collect()
    }

    #[test]
    fn test_keeps_the_newest_bytes() {
        let mut b = OutputBuffer::new(8);
        assert_eq!(b.push(b"abcde"), 0);
        assert_eq!(b.push(b"fghij"), 2);
        assert_eq!(contents(&b), b"cdefghij");
        // More than the bound at once: only its end is kept.
        assert_eq!(b.push(b"0123456789"), 10);
        assert_eq!(contents(&b), b"23456789");
        assert_eq!(b.dropped(), 12);
        // Not drained yet: the count stays.
        assert_eq!(b.take_dropped(), 0);
        let n = b.front().len();
        b.consume(n);
        b.consume(b.len());
        assert!(b.is_empty());
        assert_eq!(b.take_dropped(), 12);
        assert_eq!(b.take_dropped(), 0);
    }

    proptest! {
        #[test]
        fn prop_never_over_the_bound_and_always_the_newest(
            max in 1usize..64,
            pushes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..20),
        ) {
            let mut b = OutputBuffer::new(max);
            let mut all = Vec::new();
            let mut dropped = 0;
            for p in &pushes {
                dropped += b.push(p);
                all.extend_from_slice(p);
                prop_assert!(b.len() <= max);
            }
            let keep = all.len().min(max);
            prop_assert_eq!(contents(&b), all[all.len() - keep..].to_vec());
            prop_assert_eq!(dropped, all.len() - keep);
            prop_assert_eq!(b.dropped(), dropped as u64);
        }
    }
}
