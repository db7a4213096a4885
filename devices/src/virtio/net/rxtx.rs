//! Descriptor chains to Ethernet frames and back, each frame behind a `virtio_net_hdr_v1`.
//!
//! Transmit chains (guest to host) hold the 12-byte header then the frame, split across
//! device-readable descriptors in any way (the header itself may be split). Receive chains
//! (host to guest) are device-writable and get the header and the frame in one chain, since
//! VIRTIO_NET_F_MRG_RXBUF is not offered.
//!
//! A chain that breaks the rules is rejected with a [`ChainError`]; the caller decides what
//! happens to the chain and the frame (see the event handler). Nothing here panics on guest
//! input: every length is checked and every guest address goes through vm-memory.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::header::{NetHdr, NET_HDR_LEN};
use crate::virtio::writable_capacity;

/// The longest frame accepted from the guest (a 64 KiB IP packet with its Ethernet header,
/// as Linux sizes GSO frames); longer chains are dropped.
pub const TX_FRAME_MAX: usize = 65550;
/// Ethernet header length: a frame shorter than this is a runt and is dropped.
pub const ETH_HLEN: usize = 14;

/// Why a chain is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A device-writable descriptor in a transmit chain.
    #[error("transmit chain holds a device-writable descriptor")]
    WritableInTx,
    /// A device-readable descriptor in a receive chain.
    #[error("receive chain holds a device-readable descriptor")]
    ReadableInRx,
    /// The transmit chain ends inside the virtio-net header.
    #[error("transmit chain of {0} bytes is shorter than the {NET_HDR_LEN}-byte header")]
    ShortHeader(usize),
    /// The frame after the header is shorter than an Ethernet header.
    #[error("transmit frame of {0} bytes is shorter than an Ethernet header")]
    Runt(usize),
    /// The frame is longer than [`TX_FRAME_MAX`].
    #[error("transmit frame is longer than {TX_FRAME_MAX} bytes")]
    TooLong,
    /// The receive chain cannot hold the header and the frame.
    #[error("receive chain of {have} bytes cannot hold {need} bytes")]
    BufferTooSmall {
        /// Header plus frame.
        need: usize,
        /// The chain's capacity.
        have: usize,
    },
    /// A descriptor points outside guest memory.
    #[error("descriptor at {addr:#x}+{len:#x} is outside guest memory")]
    Memory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
}

fn memory_error(d: &Descriptor) -> ChainError {
    ChainError::Memory {
        addr: d.addr().0,
        len: d.len(),
    }
}

/// Reads the frame of a transmit chain into `out` (cleared first; its capacity is reused)
/// and returns the guest's header.
pub fn read_tx_frame<M: GuestMemory>(
    mem: &M,
    chain: &[Descriptor],
    out: &mut Vec<u8>,
) -> Result<NetHdr, ChainError> {
    out.clear();
    if chain.iter().any(|d| d.is_write_only()) {
        return Err(ChainError::WritableInTx);
    }
    let mut hdr = [0u8; NET_HDR_LEN];
    let mut hdr_got = 0usize;
    for d in chain {
        let len = d.len() as usize;
        let h = (NET_HDR_LEN - hdr_got).min(len);
        if h > 0 {
            mem.read_slice(&mut hdr[hdr_got..hdr_got + h], d.addr())
                .map_err(|_| memory_error(d))?;
            hdr_got += h;
        }
        let rest = len - h;
        if rest == 0 {
            continue;
        }
        if out.len().saturating_add(rest) > TX_FRAME_MAX {
            return Err(ChainError::TooLong);
        }
        let addr = d
            .addr()
            .0
            .checked_add(h as u64)
            .ok_or_else(|| memory_error(d))?;
        let start = out.len();
        out.resize(start + rest, 0);
        mem.read_slice(&mut out[start..], GuestAddress(addr))
            .map_err(|_| memory_error(d))?;
    }
    if hdr_got < NET_HDR_LEN {
        return Err(ChainError::ShortHeader(hdr_got));
    }
    if out.len() < ETH_HLEN {
        return Err(ChainError::Runt(out.len()));
    }
    Ok(NetHdr::from_bytes(&hdr))
}

/// Writes [`NetHdr::RX`] and `frame` into a receive chain; returns the used length (header
/// plus frame). Nothing is written when the chain is malformed or too small.
pub fn write_rx_frame<M: GuestMemory>(
    mem: &M,
    chain: &[Descriptor],
    frame: &[u8],
) -> Result<u32, ChainError> {
    let have = writable_capacity(chain).ok_or(ChainError::ReadableInRx)?;
    let need = NET_HDR_LEN.saturating_add(frame.len());
    let used = u32::try_from(need).map_err(|_| ChainError::BufferTooSmall { need, have })?;
    if have < need {
        return Err(ChainError::BufferTooSmall { need, have });
    }
    let hdr = NetHdr::RX.to_bytes();
    let mut parts = [&hdr[..], frame];
    let mut part = 0usize;
    for d in chain {
        let mut addr = d.addr().0;
        let mut room = d.len() as usize;
        while room > 0 && part < parts.len() {
            let src = parts[part];
            let n = room.min(src.len());
            if n > 0 {
                mem.write_slice(&src[..n], GuestAddress(addr))
                    .map_err(|_| memory_error(d))?;
                // n fits in the descriptor, whose end was checked by write_slice.
                addr = addr.wrapping_add(n as u64);
                room -= n;
            }
            if n == src.len() {
                part += 1;
            } else {
                parts[part] = &src[n..];
            }
        }
        if part == parts.len() {
            break;
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestMemoryMmap;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const MEM: u64 = 0x40000;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn frame(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    // Lays out `bytes` in guest memory split at `cuts`, one descriptor per piece.
    fn tx_chain(m: &GuestMemoryMmap<()>, bytes: &[u8], lens: &[usize]) -> Vec<Descriptor> {
        let mut out = Vec::new();
        let mut at = 0usize;
        let mut addr = 0x1000u64;
        for &l in lens {
            let l = l.min(bytes.len() - at);
            m.write_slice(&bytes[at..at + l], GuestAddress(addr))
                .unwrap();
            out.push(Descriptor::new(addr, l as u32, 0, 0));
            at += l;
            addr += l as u64 + 0x40;
        }
        assert_eq!(at, bytes.len());
        out
    }

    #[test]
    fn test_tx_header_split_across_descriptors() {
        let m = mem();
        let mut wire = vec![0u8; NET_HDR_LEN];
        wire.extend(frame(100));
        let chain = tx_chain(&m, &wire, &[5, 7, 30, 70]);
        let mut out = Vec::new();
        assert_eq!(read_tx_frame(&m, &chain, &mut out), Ok(NetHdr::default()));
        assert_eq!(out, frame(100));
        // Header and frame start in the same descriptor.
        let chain = tx_chain(&m, &wire, &[20, 92]);
        read_tx_frame(&m, &chain, &mut out).unwrap();
        assert_eq!(out, frame(100));
    }

    #[test]
    fn test_tx_rejections() {
        let m = mem();
        let mut out = Vec::new();
        let ok = |a| Descriptor::new(a, 64, 0, 0);
        assert_eq!(
            read_tx_frame(
                &m,
                &[ok(0x1000), Descriptor::new(0x2000, 4, W, 0)],
                &mut out
            ),
            Err(ChainError::WritableInTx)
        );
        assert_eq!(
            read_tx_frame(&m, &[Descriptor::new(0x1000, 11, 0, 0)], &mut out),
            Err(ChainError::ShortHeader(11))
        );
        assert_eq!(
            read_tx_frame(&m, &[], &mut out),
            Err(ChainError::ShortHeader(0))
        );
        assert_eq!(
            read_tx_frame(&m, &[Descriptor::new(0x1000, 12 + 13, 0, 0)], &mut out),
            Err(ChainError::Runt(13))
        );
        assert_eq!(
            read_tx_frame(&m, &[Descriptor::new(MEM - 8, 64, 0, 0)], &mut out),
            Err(ChainError::Memory {
                addr: MEM - 8,
                len: 64
            })
        );
        assert_eq!(
            read_tx_frame(&m, &[Descriptor::new(u64::MAX - 4, 64, 0, 0)], &mut out),
            Err(ChainError::Memory {
                addr: u64::MAX - 4,
                len: 64
            })
        );
        assert_eq!(
            read_tx_frame(&m, &[Descriptor::new(0, u32::MAX, 0, 0)], &mut out),
            Err(ChainError::TooLong)
        );
        // Exactly the largest frame is fine, one more byte is not.
        let big = (NET_HDR_LEN + TX_FRAME_MAX) as u32;
        read_tx_frame(&m, &[Descriptor::new(0, big, 0, 0)], &mut out).unwrap();
        assert_eq!(out.len(), TX_FRAME_MAX);
        assert_eq!(
            read_tx_frame(
                &m,
                &[Descriptor::new(0, big, 0, 0), Descriptor::new(0, 1, 0, 0)],
                &mut out
            ),
            Err(ChainError::TooLong)
        );
    }

    #[test]
    fn test_rx_writes_header_then_frame() {
        let m = mem();
        let chain = [
            Descriptor::new(0x1000, 4, W, 0),
            Descriptor::new(0x2000, 10, W, 0),
            Descriptor::new(0x3000, 100, W, 0),
        ];
        let f = frame(60);
        assert_eq!(write_rx_frame(&m, &chain, &f), Ok(72));
        let mut got = [0u8; 72];
        m.read_slice(&mut got[..4], GuestAddress(0x1000)).unwrap();
        m.read_slice(&mut got[4..14], GuestAddress(0x2000)).unwrap();
        m.read_slice(&mut got[14..], GuestAddress(0x3000)).unwrap();
        assert_eq!(&got[..12], &NetHdr::RX.to_bytes());
        assert_eq!(&got[12..], &f[..]);
    }

    #[test]
    fn test_rx_rejections() {
        let m = mem();
        let f = frame(60);
        assert_eq!(
            write_rx_frame(&m, &[Descriptor::new(0x1000, 100, 0, 0)], &f),
            Err(ChainError::ReadableInRx)
        );
        assert_eq!(
            write_rx_frame(&m, &[Descriptor::new(0x1000, 71, W, 0)], &f),
            Err(ChainError::BufferTooSmall { need: 72, have: 71 })
        );
        assert_eq!(
            write_rx_frame(&m, &[Descriptor::new(MEM - 10, 100, W, 0)], &f),
            Err(ChainError::Memory {
                addr: MEM - 10,
                len: 100
            })
        );
        assert!(write_rx_frame(&m, &[Descriptor::new(u64::MAX - 3, 100, W, 0)], &f).is_err());
    }

    proptest! {
        #[test]
        fn prop_tx_any_split_is_byte_exact(
            len in 14usize..3000,
            lens in proptest::collection::vec(0usize..600, 1..12),
        ) {
            let m = mem();
            let mut wire = vec![0u8; NET_HDR_LEN];
            wire.extend(frame(len));
            let mut lens = lens;
            let covered: usize = lens.iter().sum();
            if covered < wire.len() {
                lens.push(wire.len() - covered);
            }
            let chain = tx_chain(&m, &wire, &lens);
            let mut out = Vec::new();
            read_tx_frame(&m, &chain, &mut out).unwrap();
            prop_assert_eq!(out, frame(len));
        }

        #[test]
        fn prop_rx_then_tx_round_trips(
            len in 0usize..2000,
            lens in proptest::collection::vec(0u32..700, 1..10),
        ) {
            let m = mem();
            let rx: Vec<Descriptor> = lens
                .iter()
                .enumerate()
                .map(|(i, l)| Descriptor::new(0x1000 + 0x1000 * i as u64, *l, W, 0))
                .collect();
            let f = frame(len);
            let cap: usize = lens.iter().map(|l| *l as usize).sum();
            match write_rx_frame(&m, &rx, &f) {
                Ok(n) => {
                    prop_assert_eq!(n as usize, NET_HDR_LEN + len);
                    let tx: Vec<Descriptor> =
                        rx.iter().map(|d| Descriptor::new(d.addr().0, d.len(), 0, 0)).collect();
                    let mut wire = Vec::new();
                    for d in &tx {
                        let mut b = vec![0u8; d.len() as usize];
                        m.read_slice(&mut b, d.addr()).unwrap();
                        wire.extend(b);
                    }
                    prop_assert_eq!(&wire[..NET_HDR_LEN], &NetHdr::RX.to_bytes()[..]);
                    prop_assert_eq!(&wire[NET_HDR_LEN..NET_HDR_LEN + len], &f[..]);
                }
                Err(e) => {
                    prop_assert!(cap < NET_HDR_LEN + len);
                    prop_assert_eq!(e, ChainError::BufferTooSmall { need: NET_HDR_LEN + len, have: cap });
                }
            }
        }

        #[test]
        fn prop_arbitrary_descriptors_never_panic(
            descs in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u16>()), 0..6),
        ) {
            let m = mem();
            let chain: Vec<Descriptor> =
                descs.iter().map(|(a, l, f)| Descriptor::new(*a % (2 * MEM), *l % 0x20000, *f, 0)).collect();
            let mut out = Vec::new();
            let _ = read_tx_frame(&m, &chain, &mut out);
            prop_assert!(out.len() <= TX_FRAME_MAX);
            let _ = write_rx_frame(&m, &chain, &frame(1500));
            let raw: Vec<Descriptor> =
                descs.iter().map(|(a, l, f)| Descriptor::new(*a, *l, *f, 0)).collect();
            let _ = read_tx_frame(&m, &raw, &mut out);
            let _ = write_rx_frame(&m, &raw, &frame(100));
        }
    }
}
