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

/// A harness: fuzz input in, panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// The targets this crate owns, by the name of their `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Harness)] =
    &[("eth_spec", eth_spec), ("switch_packets", switch_packets)];

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
