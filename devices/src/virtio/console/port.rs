//! Descriptor chains to bytes and back, for the data and control queues.
//!
//! Transmit chains (guest to host) must be made of device-readable descriptors; receive chains
//! (host to guest) of device-writable ones. A chain that breaks the rule, points outside guest
//! memory or is longer than [`TX_CHAIN_MAX`] is rejected: the caller returns it to the guest
//! unused (length 0) and carries on.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemory};

use crate::virtio::writable_capacity;

/// The longest transmit chain accepted (Linux sends at most 32 KiB per write).
pub const TX_CHAIN_MAX: usize = 1 << 20;

/// Why a chain is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// A write-only descriptor in a transmit chain.
    #[error("transmit chain holds a device-writable descriptor")]
    WritableInTx,
    /// A read-only descriptor in a receive chain.
    #[error("receive chain holds a device-readable descriptor")]
    ReadableInRx,
    /// The transmit chain is longer than [`TX_CHAIN_MAX`].
    #[error("transmit chain of more than {TX_CHAIN_MAX} bytes")]
    TooLong,
    /// A descriptor points outside guest memory.
    #[error("descriptor at {addr:#x}+{len:#x} is outside guest memory")]
    Memory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
}

/// Reads all bytes of a transmit chain.
pub fn read_tx_chain<M: GuestMemory>(
    mem: &M,
    chain: impl IntoIterator<Item = Descriptor>,
) -> Result<Vec<u8>, PortError> {
    let mut out = Vec::new();
    for d in chain {
        if d.is_write_only() {
            return Err(PortError::WritableInTx);
        }
        let len = d.len() as usize;
        if out.len().saturating_add(len) > TX_CHAIN_MAX {
            return Err(PortError::TooLong);
        }
        let start = out.len();
        out.resize(start + len, 0);
        mem.read_slice(&mut out[start..], d.addr())
            .map_err(|_| PortError::Memory {
                addr: d.addr().0,
                len: d.len(),
            })?;
    }
    Ok(out)
}

/// Writes the front of `data` into a receive chain; returns how many bytes went in.
pub fn write_rx_chain<M: GuestMemory>(
    mem: &M,
    chain: &[Descriptor],
    data: &[u8],
) -> Result<usize, PortError> {
    writable_capacity(chain).ok_or(PortError::ReadableInRx)?;
    let mut done = 0usize;
    for d in chain {
        if done == data.len() {
            break;
        }
        let n = (d.len() as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], d.addr())
            .map_err(|_| PortError::Memory {
                addr: d.addr().0,
                len: d.len(),
            })?;
        done += n;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn test_tx_reads_all_descriptors_in_order() {
        let m = mem();
        m.write_slice(b"hello ", GuestAddress(0x1000)).unwrap();
        m.write_slice(b"world", GuestAddress(0x2000)).unwrap();
        let chain = [
            Descriptor::new(0x1000, 6, 0, 0),
            Descriptor::new(0x2000, 5, 0, 0),
        ];
        assert_eq!(read_tx_chain(&m, chain).unwrap(), b"hello world");
    }

    #[test]
    fn test_tx_rejects_writable_out_of_bounds_and_huge() {
        let m = mem();
        assert_eq!(
            read_tx_chain(&m, [Descriptor::new(0x1000, 4, W, 0)]),
            Err(PortError::WritableInTx)
        );
        assert_eq!(
            read_tx_chain(&m, [Descriptor::new(0xfff0, 0x20, 0, 0)]),
            Err(PortError::Memory {
                addr: 0xfff0,
                len: 0x20
            })
        );
        assert_eq!(
            read_tx_chain(&m, [Descriptor::new(0, u32::MAX, 0, 0)]),
            Err(PortError::TooLong)
        );
    }

    #[test]
    fn test_rx_fills_across_descriptors() {
        let m = mem();
        let chain = [
            Descriptor::new(0x1000, 3, W, 0),
            Descriptor::new(0x2000, 10, W, 0),
        ];
        assert_eq!(crate::virtio::writable_capacity(&chain), Some(13));
        assert_eq!(write_rx_chain(&m, &chain, b"abcdef").unwrap(), 6);
        let mut b = [0u8; 3];
        m.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        assert_eq!(&b, b"abc");
        m.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(&b, b"def");
    }

    #[test]
    fn test_rx_rejects_readable_and_out_of_bounds() {
        let m = mem();
        assert_eq!(
            write_rx_chain(&m, &[Descriptor::new(0x1000, 4, 0, 0)], b"x"),
            Err(PortError::ReadableInRx)
        );
        assert!(matches!(
            write_rx_chain(&m, &[Descriptor::new(0x20000, 4, W, 0)], b"x"),
            Err(PortError::Memory { .. })
        ));
    }

    proptest! {
        #[test]
        fn prop_rx_then_tx_round_trips(data in proptest::collection::vec(any::<u8>(), 0..300),
                                       lens in proptest::collection::vec(1u32..100, 1..6)) {
            let m = mem();
            let rx: Vec<Descriptor> = lens.iter().enumerate()
                .map(|(i, l)| Descriptor::new(0x1000 * (i as u64 + 1), *l, W, 0)).collect();
            let n = write_rx_chain(&m, &rx, &data).unwrap();
            let cap: usize = lens.iter().map(|l| *l as usize).sum();
            prop_assert_eq!(n, data.len().min(cap));
            let tx: Vec<Descriptor> = rx.iter().map(|d| Descriptor::new(d.addr().0, d.len(), 0, 0)).collect();
            let back = read_tx_chain(&m, tx).unwrap();
            prop_assert_eq!(&back[..n], &data[..n]);
        }

        #[test]
        fn prop_arbitrary_descriptors_never_panic(addr in any::<u64>(), len in any::<u32>(), flags in any::<u16>()) {
            let m = mem();
            let d = Descriptor::new(addr, len, flags, 0);
            let _ = read_tx_chain(&m, [d]);
            let _ = write_rx_chain(&m, &[d], b"data");
        }
    }
}
