//! Fuzz harnesses for this crate's parsers and packet codecs (feature `fuzzing`, and tests).
//!
//! The libFuzzer targets in `fuzz/fuzz_targets/<name>.rs` only call these; the `kuml`
//! crate's `fuzzing::tests` replays the committed seeds in `fuzz/seeds/<name>/` through
//! [`TARGETS`] on the stable toolchain.

use crate::daemon::{decode_reply, decode_request, encode_reply, encode_request, UnixAddr};
use crate::daemon::{REQUEST_LEN, SUN_PATH_LEN};
use crate::frame::sender_ipv4;
use crate::mac::{check_mac, parse_mac, MacAddr};
use crate::spec::{parse_eth_arg, parse_vec_arg};
use crate::stream::{len_prefix, FrameReader, Next};
use crate::tunnel::{Encap, MAX_HEADER};
use crate::vector::{Cookie, Endpoints, GreConfig, L2tpv3Config};

/// A harness: fuzz input in, panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// The targets this crate owns, by the name of their `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("eth_spec", eth_spec),
    ("switch_packets", switch_packets),
    ("tunnel_packets", tunnel_packets),
    ("stream_frames", stream_frames),
];

/// The `ethN=` and `vecN:` grammars and MAC addresses: any text; a parsed spec renders its
/// transport line and a MAC for the interface.
pub fn eth_spec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for (n, spec) in [parse_eth_arg(&text), parse_vec_arg(&text)]
        .into_iter()
        .flatten()
    {
        let _ = spec.transport_line();
        let mac = spec.mac_or_derived("fuzz", n);
        assert!(!mac.is_multicast(), "an interface MAC is unicast: {mac:?}");
    }
    if let Ok(mac) = parse_mac(&text) {
        let _ = check_mac(mac);
    }
}

/// The uml_switch (daemon transport) control packets and what kuml reads from a peer's
/// frames: decode any bytes as a request, a reply and a frame; what decodes encodes back.
pub fn switch_packets(data: &[u8]) {
    if let Ok(req) = decode_request(data) {
        let again = decode_request(&encode_request(&req.sun_path)).expect("encoded request");
        assert_eq!(again.sun_path, req.sun_path, "request round trip");
        assert_eq!(data.len(), REQUEST_LEN);
    }
    if let Ok(addr) = decode_reply(data) {
        if let UnixAddr::Abstract(name) = &addr {
            let mut path = [0u8; SUN_PATH_LEN];
            path[1..].copy_from_slice(name);
            let again = decode_reply(&encode_reply(&path)).expect("encoded reply");
            assert_eq!(again, addr, "reply round trip");
        }
    }
    let _ = sender_ipv4(data);
    let _ = (MacAddr::dst_of(data), MacAddr::src_of(data));
}

fn word(data: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    for (i, b) in w.iter_mut().enumerate() {
        *b = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_be_bytes(w)
}

/// GRE and L2TPv3 as the vector transports receive them: the first byte picks the options,
/// the next 12 the keys/session/cookie, the rest is a received packet. A packet decodes to a
/// suffix of itself; a frame sent with the same options decodes back unchanged.
pub fn tunnel_packets(data: &[u8]) {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let (a, b, c) = (word(rest, 0), word(rest, 4), word(rest, 8));
    let packet = rest.get(12..).unwrap_or_default();
    let ends = Endpoints {
        src: None,
        dst: "192.0.2.1".into(),
        v6: false,
    };
    let mut encap = if opts & 1 == 0 {
        Encap::gre(&GreConfig {
            ends,
            keys: (opts & 2 != 0).then_some((a, a)),
            sequence: opts & 4 != 0,
            pin_sequence: opts & 8 != 0,
        })
    } else {
        Encap::l2tpv3(&L2tpv3Config {
            ends,
            udp: (opts & 2 != 0).then_some((1701, 1701)),
            rx_session: a,
            tx_session: a,
            cookie: match (opts >> 2) & 3 {
                1 => Some(Cookie::Bits32 { rx: b, tx: b }),
                2 => Some(Cookie::Bits64 {
                    rx: u64::from(b) << 32 | u64::from(c),
                    tx: u64::from(b) << 32 | u64::from(c),
                }),
                _ => None,
            },
            counter: opts & 16 != 0,
            pin_counter: opts & 32 != 0,
        })
    };
    let ip = opts & 64 != 0;
    if let Ok(frame) = encap.decap(packet, ip) {
        assert!(packet.ends_with(frame), "the frame is the packet's tail");
    }
    let mut sent = Vec::new();
    if ip {
        sent.push(0x45);
        sent.extend_from_slice(&[0; 19]);
    }
    let mut hdr = [0u8; MAX_HEADER];
    let n = encap.write_header(&mut hdr);
    assert_eq!(n, encap.header_len());
    sent.extend_from_slice(&hdr[..n]);
    sent.extend_from_slice(packet);
    assert_eq!(
        encap.decap(&sent, ip),
        Ok(packet),
        "what is sent is received"
    );
}

/// passt's (QEMU's stream) framing: the input as a byte stream cut at the positions its
/// first byte gives; frames come out alike whatever the cuts, never longer than the limit,
/// and frames written with their length prefix read back whole.
pub fn stream_frames(data: &[u8]) {
    const MAX: usize = 64;
    let drain = |r: &mut FrameReader, out: &mut Vec<Result<Vec<u8>, usize>>| loop {
        match r.next_frame() {
            Next::Frame(f) => {
                assert!(f.len() <= MAX);
                out.push(Ok(f.to_vec()));
            }
            Next::TooLong(n) => out.push(Err(n)),
            Next::NeedMore => return,
        }
    };
    let step = usize::from(data.first().copied().unwrap_or(1).max(1));
    let mut whole = FrameReader::new(MAX);
    whole.push(data);
    let mut expect = Vec::new();
    drain(&mut whole, &mut expect);
    let mut cut = FrameReader::new(MAX);
    let mut got = Vec::new();
    for chunk in data.chunks(step) {
        cut.push(chunk);
        drain(&mut cut, &mut got);
    }
    assert_eq!(got, expect, "any split decodes alike");
    let frames: Vec<&[u8]> = data.chunks(MAX).collect();
    let mut again = FrameReader::new(MAX);
    for f in &frames {
        again.push(&len_prefix(f.len()));
        again.push(f);
    }
    let mut back = Vec::new();
    drain(&mut again, &mut back);
    let want: Vec<Result<Vec<u8>, usize>> = frames.iter().map(|f| Ok(f.to_vec())).collect();
    assert_eq!(back, want, "written frames read back");
}
