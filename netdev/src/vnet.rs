//! PURE: the `virtio_net_hdr` that a packet socket with `PACKET_VNET_HDR` puts in front of each
//! frame (the `raw` vector transport), and finishing a checksum the host left to "the device".
//!
//! A host stack sending through a veth, a bridge or any device that offers checksum offload
//! leaves TCP and UDP checksums unfinished (`CHECKSUM_PARTIAL`: the field holds only the
//! pseudo-header's sum) for the device to complete. A packet socket on the other end sees
//! those bytes as they are; only the header tells it (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, with where
//! the checksum starts and where it goes). UML's vector driver hands that state to its guest
//! kernel; kuml's virtio-net offers no checksum offload to the guest, so kuml finishes the
//! checksum itself, as the host's `skb_checksum_help` would, before the guest sees the frame.
//! Without it a guest behind `transport=raw` on a veth drops every TCP segment from the host.

/// Bytes of the legacy `virtio_net_hdr` a packet socket uses.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` on is to be finished.
pub const F_NEEDS_CSUM: u8 = 1;

/// A received frame's `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHeader {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`: not 0 for a segmentation-offload super-frame.
    pub gso_type: u8,
    /// Where the checksummed part starts, from the frame's first byte.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// The header at the start of `data` (in the host's byte order, as packet sockets write
    /// the legacy header); `None` if `data` is shorter than one.
    pub fn parse(data: &[u8]) -> Option<VnetHeader> {
        let h = data.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([h[i], h[i + 1]]);
        Some(VnetHeader {
            flags: h[0],
            gso_type: h[1],
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }
}

/// Why a checksum could not be finished.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checksum at {start}+{offset} is outside the {len}-byte frame")]
pub struct ChecksumError {
    /// `csum_start`.
    pub start: usize,
    /// `csum_offset`.
    pub offset: usize,
    /// The frame's length.
    pub len: usize,
}

/// Finishes the checksum of `frame` the way a device does for `CHECKSUM_PARTIAL`: the ones'
/// complement sum of everything from `start` to the end (the checksum field itself holds the
/// pseudo-header's sum), complemented, stored big-endian at `start + offset`.
pub fn finish_checksum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), ChecksumError> {
    let at = start.checked_add(offset);
    let Some(at) = at.filter(|at| at.checked_add(2).is_some_and(|end| end <= frame.len())) else {
        return Err(ChecksumError {
            start,
            offset,
            len: frame.len(),
        });
    };
    let mut sum: u64 = frame[start..]
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(mut sum: u32) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    fn sum16(data: &[u8]) -> u32 {
        data.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
            .sum()
    }

    /// An Ethernet + IPv4 + TCP frame (odd payload length) with its checksum field zero,
    /// and the sum of its pseudo-header.
    fn tcp_frame() -> (Vec<u8>, u32) {
        let payload = b"kuml finishes this checksum!!";
        let mut tcp = vec![
            0x13, 0x8b, 0xc0, 0x01, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0x20, 0,
        ];
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(payload);
        let (src, dst) = ([10, 0, 2, 1], [10, 0, 2, 15]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&tcp);
        (f, sum16(&pseudo))
    }

    #[test]
    fn a_partial_tcp_checksum_is_finished_as_the_host_would() {
        let (mut frame, pseudo) = tcp_frame();
        let (start, offset) = (14 + 20, 16);
        // The right checksum, computed independently: pseudo-header and segment, field zero.
        let want = !fold(pseudo + sum16(&frame[start..]));
        // What the host leaves for the device: the pseudo-header's folded sum in the field.
        frame[start + offset..start + offset + 2].copy_from_slice(&fold(pseudo).to_be_bytes());
        finish_checksum(&mut frame, start, offset).unwrap();
        assert_eq!(
            u16::from_be_bytes([frame[start + offset], frame[start + offset + 1]]),
            want
        );
        // A receiver's check: pseudo-header plus segment sums to all ones.
        assert_eq!(fold(pseudo + sum16(&frame[start..])), 0xffff);
    }

    #[test]
    fn a_checksum_outside_the_frame_is_an_error_not_a_panic() {
        let mut frame = vec![0u8; 60];
        for (start, offset) in [(59, 0), (58, 1), (60, 0), (usize::MAX, 2), (2, usize::MAX)] {
            assert_eq!(
                finish_checksum(&mut frame, start, offset),
                Err(ChecksumError {
                    start,
                    offset,
                    len: 60
                })
            );
        }
        assert!(finish_checksum(&mut frame, 58, 0).is_ok());
    }

    #[test]
    fn the_header_is_read_in_host_order() {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = F_NEEDS_CSUM;
        h[1] = 0;
        h[6..8].copy_from_slice(&34u16.to_ne_bytes());
        h[8..10].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(
            VnetHeader::parse(&h),
            Some(VnetHeader {
                flags: F_NEEDS_CSUM,
                gso_type: 0,
                csum_start: 34,
                csum_offset: 16
            })
        );
        assert_eq!(VnetHeader::parse(&h[..9]), None);
    }
}
