//! PURE: what a guest's outgoing Ethernet frame says about the guest's IPv4 address.
//!
//! UML's `uml_net` helper added a host route to each address the guest configured
//! (`uml_net 4 add <tap> <addr> <mask>`). A KVM guest does not tell the VMM about its
//! addresses, so kuml learns them from the frames the guest sends: the sender address of an
//! ARP packet, or the source address of an IPv4 packet.

use std::net::Ipv4Addr;

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];

/// Bytes of a frame [`sender_ipv4`] needs at most.
pub const SNOOP_LEN: usize = 42;

/// The IPv4 address a guest claims in `frame` (ARP sender or IPv4 source), if it is a
/// plausible unicast host address (not 0.0.0.0, broadcast, multicast, loopback or
/// link-local). VLAN-tagged frames are ignored.
pub fn sender_ipv4(frame: &[u8]) -> Option<Ipv4Addr> {
    let ethertype: [u8; 2] = frame.get(12..14)?.try_into().ok()?;
    let ip = match ethertype {
        ETHERTYPE_ARP => {
            // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4; sender IP at 28..32.
            if frame.get(14..20)? != [0, 1, 8, 0, 6, 4] {
                return None;
            }
            frame.get(28..32)?
        }
        ETHERTYPE_IPV4 => {
            if frame.get(14)? >> 4 != 4 {
                return None;
            }
            frame.get(26..30)?
        }
        _ => return None,
    };
    let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
    let usable = !(ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_loopback()
        || ip.is_link_local());
    usable.then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arp(sender: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&sender);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 254]);
        f
    }

    #[test]
    fn arp_sender() {
        assert_eq!(
            sender_ipv4(&arp([10, 0, 0, 1])),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(sender_ipv4(&arp([0, 0, 0, 0])), None, "ARP probe");
        assert_eq!(sender_ipv4(&arp([169, 254, 1, 1])), None);
        assert_eq!(sender_ipv4(&arp([10, 0, 0, 1])[..30]), None);
    }

    #[test]
    fn ipv4_source() {
        let mut f = vec![0u8; 34];
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[26..30].copy_from_slice(&[192, 168, 0, 5]);
        assert_eq!(sender_ipv4(&f), Some(Ipv4Addr::new(192, 168, 0, 5)));
        f[14] = 0x65;
        assert_eq!(sender_ipv4(&f), None);
        f[14] = 0x45;
        f[26..30].copy_from_slice(&[255, 255, 255, 255]);
        assert_eq!(sender_ipv4(&f), None);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(sender_ipv4(&f), None);
    }

    proptest! {
        #[test]
        fn never_panics(f in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = sender_ipv4(&f);
        }
    }
}
