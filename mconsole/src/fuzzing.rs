//! Fuzz harnesses for the mconsole packet codec and command parser (feature `fuzzing`, and
//! tests).
//!
//! The libFuzzer targets in `fuzz/fuzz_targets/<name>.rs` only call these; the `kuml`
//! crate's `fuzzing::tests` replays the committed seeds in `fuzz/seeds/<name>/` through
//! [`TARGETS`] on the stable toolchain.

use crate::command::{console_replies, parse, proc_replies, Command, Parsed};
use crate::protocol::{
    decode_notification, decode_reply, decode_request, encode_notification, encode_reply,
    encode_request, Reply, MAX_DATA, MAX_REPLY_LEN,
};

/// A harness: fuzz input in, panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// The targets this crate owns, by the name of their `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("mconsole_packet", mconsole_packet),
    ("mconsole_command", mconsole_command),
];

/// The datagram codec: any bytes as a request, a reply packet and a notification; a refused
/// request has an answer; decoded texts encode back; a reply text split into packets joins
/// back whole.
pub fn mconsole_packet(data: &[u8]) {
    match decode_request(data) {
        Ok(req) => {
            assert!(req.text.len() < MAX_DATA && !req.text.contains(&0));
            let again = decode_request(&encode_request(&req.text)).expect("encoded request");
            assert_eq!(again.text, req.text, "request round trip");
        }
        Err(e) => assert!(!e.reply_datagram().is_empty(), "a refusal has an answer"),
    }
    if let Ok(p) = decode_reply(data) {
        assert!(p.text.len() < MAX_REPLY_LEN);
    }
    if let Ok(n) = decode_notification(data) {
        let again = decode_notification(&encode_notification(n.kind, &n.data)).unwrap();
        assert_eq!(
            (again.kind, &again.data),
            (n.kind, &n.data),
            "notify round trip"
        );
    }
    // A reply whose text is the input without NULs: the packets carry it back whole.
    let text: Vec<u8> = data.iter().copied().filter(|&b| b != 0).collect();
    let reply = Reply::with_err(-1, text.clone());
    let packets = encode_reply(&reply);
    let mut joined = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        assert!(p.len() <= MAX_REPLY_LEN, "reply packet fits a datagram");
        let d = decode_reply(p).expect("encoded reply decodes");
        assert_eq!(
            d.more,
            i + 1 < packets.len(),
            "more set on all but the last"
        );
        joined.extend(d.text);
    }
    assert_eq!(joined, text, "reply text round trip");
}

/// The command parser: any request text dispatches to a command or UML's error reply, and
/// a `config`/`remove` argument splits into id and value; reply builders take any data.
pub fn mconsole_command(data: &[u8]) {
    match parse(data) {
        Parsed::Command(Command::Config(spec) | Command::Remove(spec)) => {
            let _ = (spec.id(), spec.value(), spec.is_query());
            assert!(spec.text.starts_with(spec.device.name()));
        }
        Parsed::Command(_) => {}
        Parsed::Reply(r) => assert!(r.err != 0, "a parse refusal is an error reply"),
    }
    let whole: usize = proc_replies(data).iter().map(|r| r.text.len()).sum();
    assert_eq!(
        whole,
        data.len() + 1,
        "proc replies carry the data after a newline"
    );
    let _ = console_replies(data.split(|&b| b == b'\n'));
}
