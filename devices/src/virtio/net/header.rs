//! PURE: the 12-byte `virtio_net_hdr_v1` that precedes every frame on both queues.
//!
//! With VIRTIO_F_VERSION_1 the header always has its `num_buffers` field (virtio 1.2,
//! 5.1.6), whether or not VIRTIO_NET_F_MRG_RXBUF was negotiated. kuml offers no offloads, so
//! on receive the header is all zero but `num_buffers = 1`, and on transmit the guest's
//! header carries nothing the device must act on: it is decoded only to be logged.
//!
//! ```text
//! 0  flags        u8     NEEDS_CSUM (1), DATA_VALID (2), RSC_INFO (4)
//! 1  gso_type     u8     NONE (0), TCPV4 (1), UDP (3), TCPV6 (4), ECN (0x80)
//! 2  hdr_len      le16
//! 4  gso_size     le16
//! 6  csum_start   le16
//! 8  csum_offset  le16
//! 10 num_buffers  le16
//! ```

/// Length of the header in front of every frame.
pub const NET_HDR_LEN: usize = 12;

/// Header flag: the guest left the checksum to the device (needs VIRTIO_NET_F_CSUM).
pub const NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `gso_type` of a frame that is not a segmentation offload.
pub const NET_HDR_GSO_NONE: u8 = 0;

/// A decoded `virtio_net_hdr_v1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// Flags (`NET_HDR_F_*`).
    pub flags: u8,
    /// Segmentation offload type (`NET_HDR_GSO_*`).
    pub gso_type: u8,
    /// Length of the protocol headers (offloads only).
    pub hdr_len: u16,
    /// Segment size (offloads only).
    pub gso_size: u16,
    /// Where checksumming starts (NEEDS_CSUM only).
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start` (NEEDS_CSUM only).
    pub csum_offset: u16,
    /// Descriptor chains the frame spans on receive (1 without MRG_RXBUF).
    pub num_buffers: u16,
}

impl NetHdr {
    /// The header kuml puts in front of every received frame.
    pub const RX: NetHdr = NetHdr {
        flags: 0,
        gso_type: NET_HDR_GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
        num_buffers: 1,
    };

    /// The header's wire form.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Decodes a header from its wire form.
    pub fn from_bytes(b: &[u8; NET_HDR_LEN]) -> NetHdr {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }

    /// True when the guest asked for an offload kuml did not offer (checksum or GSO). The
    /// frame is sent as it is: a driver that follows the negotiation never does this.
    pub fn wants_offload(&self) -> bool {
        self.flags & NET_HDR_F_NEEDS_CSUM != 0 || self.gso_type != NET_HDR_GSO_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn test_rx_header_bytes() {
        assert_eq!(NetHdr::RX.to_bytes(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(!NetHdr::RX.wants_offload());
    }

    #[test]
    fn test_decode_fields_little_endian() {
        let h = NetHdr::from_bytes(&[1, 4, 0x36, 0, 0xa8, 0x05, 0x22, 0, 0x10, 0, 2, 0]);
        assert_eq!(
            h,
            NetHdr {
                flags: 1,
                gso_type: 4,
                hdr_len: 0x36,
                gso_size: 1448,
                csum_start: 0x22,
                csum_offset: 0x10,
                num_buffers: 2,
            }
        );
        assert!(h.wants_offload());
    }

    proptest! {
        #[test]
        fn prop_round_trip(b in proptest::array::uniform12(any::<u8>())) {
            prop_assert_eq!(NetHdr::from_bytes(&b).to_bytes(), b);
        }
    }
}
