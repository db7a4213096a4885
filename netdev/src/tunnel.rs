//! PURE: the GRE and L2TPv3 encapsulations of UML's vector transports (`vector_transports.c`),
//! which Linux's `gretap` and `ip l2tp` and QEMU's `-netdev l2tpv3` speak too.
//!
//! GRE (RFC 2784/2890, Ethernet payload): a 4-byte header `{flags, protocol 0x6558}` with the
//! key (`KEY` flag 0x2000) and then the sequence number (`SEQ` flag 0x1000) following when
//! configured; all big-endian. A received packet's flags must be exactly the configured ones
//! and its key the receive key, as in UML.
//!
//! L2TPv3 (RFC 3931 Ethernet pseudowire): over UDP first a 4-byte `0x00030000` (data message,
//! version 3), then the 32-bit session id, the cookie (0, 4 or 8 bytes) and, with `counter`,
//! 4 bytes where UML and QEMU put a running counter (the default L2-specific sublayer's
//! place). A received packet's session id and cookie must be the receive ones.
//!
//! Over raw IPv4 sockets (GRE, L2TPv3 without UDP) the kernel hands over the IP header too;
//! [`Encap::decap`] skips it when told to.

use crate::vector::{Cookie, GreConfig, L2tpv3Config};

/// GRE protocol type of bridged Ethernet (Linux `ETH_P_TEB`).
pub const GRE_PROTO_TEB: u16 = 0x6558;
/// GRE key-present flag.
pub const GRE_FLAG_KEY: u16 = 0x2000;
/// GRE sequence-present flag.
pub const GRE_FLAG_SEQ: u16 = 0x1000;
/// IP protocol number of GRE.
pub const IPPROTO_GRE: i32 = 47;
/// IP protocol number of L2TP (over IP).
pub const IPPROTO_L2TP: i32 = 115;
/// First word of an L2TPv3 data message over UDP (T=0, version 3).
pub const L2TPV3_UDP_DATA: u32 = 0x0003_0000;
/// Longest header either encapsulation writes.
pub const MAX_HEADER: usize = 20;

/// Why a received packet was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// Shorter than the headers.
    #[error("packet of {0} bytes is shorter than its headers")]
    Short(usize),
    /// The IPv4 header is not one.
    #[error("bad IPv4 header (version/length byte {0:#04x})")]
    IpHeader(u8),
    /// GRE flags or protocol other than the configured ones.
    #[error("GRE header {got:#010x}, expected {want:#010x}")]
    GreHeader {
        /// Flags and protocol received.
        got: u32,
        /// Flags and protocol configured.
        want: u32,
    },
    /// GRE key other than the receive key.
    #[error("GRE key {got:#x}, expected {want:#x}")]
    GreKey {
        /// Received.
        got: u32,
        /// Configured.
        want: u32,
    },
    /// L2TPv3 session other than the receive session.
    #[error("L2TPv3 session {got}, expected {want}")]
    Session {
        /// Received.
        got: u32,
        /// Configured.
        want: u32,
    },
    /// L2TPv3 cookie other than the receive cookie.
    #[error("L2TPv3 cookie {got:#x}, expected {want:#x}")]
    Cookie {
        /// Received.
        got: u64,
        /// Configured.
        want: u64,
    },
    /// An L2TPv3 control message (T bit set) on the data channel.
    #[error("L2TPv3 control message (first word {0:#010x})")]
    Control(u32),
}

/// GRE encapsulation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gre {
    flags: u16,
    keys: Option<(u32, u32)>,
    sequence: Option<u32>,
    pin: bool,
}

/// L2TPv3 encapsulation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2tpv3 {
    udp: bool,
    rx_session: u32,
    tx_session: u32,
    cookie: Option<Cookie>,
    counter: Option<u32>,
    pin: bool,
}

/// One of the two encapsulations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encap {
    /// GRE.
    Gre(Gre),
    /// L2TPv3.
    L2tpv3(L2tpv3),
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Skips an IPv4 header (`ihl * 4` bytes).
pub fn skip_ipv4_header(packet: &[u8]) -> Result<&[u8], DecapError> {
    let first = *packet.first().ok_or(DecapError::Short(0))?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 {
        return Err(DecapError::IpHeader(first));
    }
    packet.get(ihl..).ok_or(DecapError::Short(packet.len()))
}

impl Encap {
    /// GRE as configured.
    pub fn gre(cfg: &GreConfig) -> Encap {
        let mut flags = 0;
        if cfg.keys.is_some() {
            flags |= GRE_FLAG_KEY;
        }
        if cfg.sequence {
            flags |= GRE_FLAG_SEQ;
        }
        Encap::Gre(Gre {
            flags,
            keys: cfg.keys,
            sequence: cfg.sequence.then_some(0),
            pin: cfg.pin_sequence,
        })
    }

    /// L2TPv3 as configured.
    pub fn l2tpv3(cfg: &L2tpv3Config) -> Encap {
        Encap::L2tpv3(L2tpv3 {
            udp: cfg.udp.is_some(),
            rx_session: cfg.rx_session,
            tx_session: cfg.tx_session,
            cookie: cfg.cookie,
            counter: cfg.counter.then_some(0),
            pin: cfg.pin_counter,
        })
    }

    /// The length of the header [`Encap::write_header`] writes.
    pub fn header_len(&self) -> usize {
        match self {
            Encap::Gre(g) => {
                4 + 4 * usize::from(g.keys.is_some()) + 4 * usize::from(g.sequence.is_some())
            }
            Encap::L2tpv3(l) => {
                4 * usize::from(l.udp)
                    + 4
                    + match l.cookie {
                        None => 0,
                        Some(Cookie::Bits32 { .. }) => 4,
                        Some(Cookie::Bits64 { .. }) => 8,
                    }
                    + 4 * usize::from(l.counter.is_some())
            }
        }
    }

    /// Writes the header of the next frame to send into `out` (at least
    /// [`Encap::header_len`] bytes) and advances the sequence number or counter; returns the
    /// header's length.
    pub fn write_header(&mut self, out: &mut [u8]) -> usize {
        let mut at = 0;
        let mut put = |out: &mut [u8], bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        match self {
            Encap::Gre(g) => {
                put(out, &g.flags.to_be_bytes());
                put(out, &GRE_PROTO_TEB.to_be_bytes());
                if let Some((_, tx)) = g.keys {
                    put(out, &tx.to_be_bytes());
                }
                if let Some(seq) = g.sequence.as_mut() {
                    let v = if g.pin {
                        0
                    } else {
                        *seq = seq.wrapping_add(1);
                        *seq
                    };
                    put(out, &v.to_be_bytes());
                }
            }
            Encap::L2tpv3(l) => {
                if l.udp {
                    put(out, &L2TPV3_UDP_DATA.to_be_bytes());
                }
                put(out, &l.tx_session.to_be_bytes());
                match l.cookie {
                    Some(Cookie::Bits32 { tx, .. }) => put(out, &tx.to_be_bytes()),
                    Some(Cookie::Bits64 { tx, .. }) => put(out, &tx.to_be_bytes()),
                    None => {}
                }
                if let Some(c) = l.counter.as_mut() {
                    let v = if l.pin {
                        0
                    } else {
                        *c = c.wrapping_add(1);
                        *c
                    };
                    put(out, &v.to_be_bytes());
                }
            }
        }
        at
    }

    /// The Ethernet frame in a received `packet` (which starts with an IPv4 header when
    /// `ip_header`), or why the packet is not for this interface.
    pub fn decap<'a>(&self, packet: &'a [u8], ip_header: bool) -> Result<&'a [u8], DecapError> {
        let p = if ip_header {
            skip_ipv4_header(packet)?
        } else {
            packet
        };
        let short = || DecapError::Short(packet.len());
        match self {
            Encap::Gre(g) => {
                let got = be32(p, 0).ok_or_else(short)?;
                let want = u32::from(g.flags) << 16 | u32::from(GRE_PROTO_TEB);
                if got != want {
                    return Err(DecapError::GreHeader { got, want });
                }
                if let Some((rx, _)) = g.keys {
                    let key = be32(p, 4).ok_or_else(short)?;
                    if key != rx {
                        return Err(DecapError::GreKey { got: key, want: rx });
                    }
                }
                p.get(self.header_len()..).ok_or_else(short)
            }
            Encap::L2tpv3(l) => {
                let mut at = 0;
                if l.udp {
                    let first = be32(p, 0).ok_or_else(short)?;
                    if first & 0x8000_0000 != 0 {
                        return Err(DecapError::Control(first));
                    }
                    at = 4;
                }
                let session = be32(p, at).ok_or_else(short)?;
                if session != l.rx_session {
                    return Err(DecapError::Session {
                        got: session,
                        want: l.rx_session,
                    });
                }
                at += 4;
                let cookie = match l.cookie {
                    Some(Cookie::Bits32 { rx, .. }) => {
                        Some((u64::from(be32(p, at).ok_or_else(short)?), u64::from(rx), 4))
                    }
                    Some(Cookie::Bits64 { rx, .. }) => {
                        Some((be64(p, at).ok_or_else(short)?, rx, 8))
                    }
                    None => None,
                };
                if let Some((got, want, len)) = cookie {
                    if got != want {
                        return Err(DecapError::Cookie { got, want });
                    }
                    at += len;
                }
                if l.counter.is_some() {
                    at += 4;
                }
                p.get(at..).ok_or_else(short)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::Endpoints;
    use proptest::prelude::*;

    fn ends() -> Endpoints {
        Endpoints {
            src: None,
            dst: "192.0.2.1".into(),
            v6: false,
        }
    }

    fn gre(keys: Option<(u32, u32)>, sequence: bool, pin: bool) -> Encap {
        Encap::gre(&GreConfig {
            ends: ends(),
            keys,
            sequence,
            pin_sequence: pin,
        })
    }

    fn l2(udp: bool, cookie: Option<Cookie>, counter: bool) -> Encap {
        Encap::l2tpv3(&L2tpv3Config {
            ends: ends(),
            udp: udp.then_some((1701, 1701)),
            rx_session: 0x11,
            tx_session: 0x22,
            cookie,
            counter,
            pin_counter: false,
        })
    }

    fn header(e: &mut Encap) -> Vec<u8> {
        let mut b = [0u8; MAX_HEADER];
        let n = e.write_header(&mut b);
        assert_eq!(n, e.header_len());
        b[..n].to_vec()
    }

    #[test]
    fn gre_wire_format() {
        assert_eq!(header(&mut gre(None, false, false)), [0, 0, 0x65, 0x58]);
        let mut g = gre(Some((7, 0x01020304)), true, false);
        assert_eq!(
            header(&mut g),
            [0x30, 0, 0x65, 0x58, 1, 2, 3, 4, 0, 0, 0, 1]
        );
        assert_eq!(header(&mut g)[8..], [0, 0, 0, 2], "the sequence advances");
        let mut pinned = gre(None, true, true);
        header(&mut pinned);
        assert_eq!(header(&mut pinned)[4..], [0, 0, 0, 0]);
    }

    #[test]
    fn gre_receive_checks() {
        let g = gre(Some((7, 9)), false, false);
        let mut pkt = vec![0x20, 0, 0x65, 0x58, 0, 0, 0, 7];
        pkt.extend_from_slice(b"frame");
        assert_eq!(g.decap(&pkt, false), Ok(&b"frame"[..]));
        let mut ip = vec![0x45; 1];
        ip.extend_from_slice(&[0; 19]);
        ip.extend_from_slice(&pkt);
        assert_eq!(g.decap(&ip, true), Ok(&b"frame"[..]), "IPv4 header skipped");
        pkt[7] = 8;
        assert_eq!(
            g.decap(&pkt, false),
            Err(DecapError::GreKey { got: 8, want: 7 })
        );
        pkt[0] = 0;
        assert!(matches!(
            g.decap(&pkt, false),
            Err(DecapError::GreHeader { .. })
        ));
        assert_eq!(g.decap(&pkt[..3], false), Err(DecapError::Short(3)));
        assert!(matches!(
            g.decap(&[0x60; 30], true),
            Err(DecapError::IpHeader(0x60))
        ));
    }

    #[test]
    fn l2tpv3_wire_format() {
        let mut e = l2(
            true,
            Some(Cookie::Bits32 {
                rx: 1,
                tx: 0xaabbccdd,
            }),
            true,
        );
        assert_eq!(
            header(&mut e),
            [0, 3, 0, 0, 0, 0, 0, 0x22, 0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 1]
        );
        let mut e = l2(
            false,
            Some(Cookie::Bits64 {
                rx: 1,
                tx: 0x0102030405060708,
            }),
            false,
        );
        assert_eq!(header(&mut e), [0, 0, 0, 0x22, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn l2tpv3_receive_checks() {
        let e = l2(false, Some(Cookie::Bits32 { rx: 5, tx: 6 }), true);
        let mut pkt = vec![0, 0, 0, 0x11, 0, 0, 0, 5, 0, 0, 0, 9];
        pkt.extend_from_slice(b"eth");
        assert_eq!(e.decap(&pkt, false), Ok(&b"eth"[..]));
        pkt[3] = 0x12;
        assert_eq!(
            e.decap(&pkt, false),
            Err(DecapError::Session {
                got: 0x12,
                want: 0x11
            })
        );
        pkt[3] = 0x11;
        pkt[7] = 4;
        assert_eq!(
            e.decap(&pkt, false),
            Err(DecapError::Cookie { got: 4, want: 5 })
        );
        let u = l2(true, None, false);
        assert_eq!(
            u.decap(&[0xc0, 3, 0, 0, 0, 0, 0, 0x11], false),
            Err(DecapError::Control(0xc003_0000))
        );
        assert_eq!(
            u.decap(&[0, 3, 0, 0, 0, 0, 0, 0x11, 1], false),
            Ok(&[1u8][..])
        );
    }

    fn arb_encap() -> impl Strategy<Value = Encap> {
        let cookie = proptest::option::of(prop_oneof![
            any::<u32>().prop_map(|c| Cookie::Bits32 { rx: c, tx: c }),
            any::<u64>().prop_map(|c| Cookie::Bits64 { rx: c, tx: c }),
        ]);
        prop_oneof![
            (
                proptest::option::of(any::<u32>()),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(k, s, p)| gre(k.map(|k| (k, k)), s, p)),
            (any::<bool>(), any::<u32>(), cookie, any::<bool>()).prop_map(
                |(udp, sess, cookie, counter)| {
                    Encap::l2tpv3(&L2tpv3Config {
                        ends: ends(),
                        udp: udp.then_some((1, 1)),
                        rx_session: sess,
                        tx_session: sess,
                        cookie,
                        counter,
                        pin_counter: false,
                    })
                }
            ),
        ]
    }

    proptest! {
        /// A frame sent with an encapsulation whose receive side equals its send side comes
        /// back out unchanged (with and without an IPv4 header in front).
        #[test]
        fn encap_decap_roundtrip(mut e in arb_encap(), frame in proptest::collection::vec(any::<u8>(), 0..100), ip in any::<bool>()) {
            let mut pkt = if ip { let mut h = vec![0x45]; h.extend_from_slice(&[0; 19]); h } else { Vec::new() };
            let mut hdr = [0u8; MAX_HEADER];
            let n = e.write_header(&mut hdr);
            pkt.extend_from_slice(&hdr[..n]);
            pkt.extend_from_slice(&frame);
            prop_assert_eq!(e.decap(&pkt, ip), Ok(&frame[..]));
        }

        #[test]
        fn decap_never_panics(e in arb_encap(), pkt in proptest::collection::vec(any::<u8>(), 0..80), ip in any::<bool>()) {
            if let Ok(f) = e.decap(&pkt, ip) {
                prop_assert!(f.len() <= pkt.len());
            }
        }
    }
}
