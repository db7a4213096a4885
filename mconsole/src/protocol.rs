//! PURE: the mconsole wire format (UML `arch/um/drivers/mconsole.h`, protocol version 2).
//!
//! All integers are in host byte order (little-endian on x86_64), as UML sends them.
//! Requests are `magic, version, len, data[512]` (524 bytes); replies are
//! `err, more, len, data[len]` with `len` counting the trailing NUL; notifications are
//! `magic, version, type, len, data[len]`.

use thiserror::Error;

/// `MCONSOLE_MAGIC`.
pub const MAGIC: u32 = 0xCAFE_BABE;
/// `MCONSOLE_VERSION`.
pub const VERSION: u32 = 2;
/// Size of the data area of every packet (`MCONSOLE_MAX_DATA`).
pub const MAX_DATA: usize = 512;
/// Request and reply header size.
pub const HEADER_LEN: usize = 12;
/// A full request datagram (what `uml_mconsole` always sends, and the most UML reads).
pub const REQUEST_LEN: usize = HEADER_LEN + MAX_DATA;
/// Longest reply datagram.
pub const MAX_REPLY_LEN: usize = HEADER_LEN + MAX_DATA;
/// Text bytes per reply packet (one byte of the data area is the NUL).
pub const REPLY_CHUNK: usize = MAX_DATA - 1;
/// Notification header size.
pub const NOTIFY_HEADER_LEN: usize = 16;

/// The raw, headerless datagram UML sends to a client whose magic is wrong (no NUL).
pub const VERSION0_REPLY: &[u8] =
    b"ERR Version 0 mconsole clients are not supported by this driver";
/// Reply text for a request whose `len` is 512 or more (err 1).
pub const TOO_LARGE_TEXT: &str = "Request too large";
/// Reply text for a request whose version is not 2 (err 1); the request is still processed.
pub const BAD_VERSION_TEXT: &str = "This driver only supports version 2 clients";

/// Why a request datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The magic is not 0xCAFEBABE: UML answers with the raw version-0 text.
    #[error("bad magic {0:#010x} (version 0 client)")]
    BadMagic(u32),
    /// `len` is 512 or more.
    #[error("request length {0} too large")]
    TooLarge(u32),
    /// A reply or notification datagram shorter than its header.
    #[error("packet of {0} bytes is shorter than its header")]
    Truncated(usize),
}

impl ProtocolError {
    /// The datagram UML sends back for this refused request.
    pub fn reply_datagram(&self) -> Vec<u8> {
        match self {
            ProtocolError::BadMagic(_) => VERSION0_REPLY.to_vec(),
            ProtocolError::TooLarge(_) | ProtocolError::Truncated(_) => {
                let mut packets = encode_reply(&Reply::error(TOO_LARGE_TEXT));
                packets.swap_remove(0)
            }
        }
    }
}

fn u32_at(bytes: &[u8], off: usize) -> u32 {
    // Missing bytes read as zero: the server reads into a zeroed 524-byte buffer.
    let mut b = [0u8; 4];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = bytes.get(off + i).copied().unwrap_or(0);
    }
    u32::from_ne_bytes(b)
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The header's version; anything but 2 gets [`BAD_VERSION_TEXT`] before the answer.
    pub version: u32,
    /// The command text: `data[..len]`, cut at the first NUL (UML treats it as a C string).
    pub text: Vec<u8>,
}

impl Request {
    /// Whether UML would first send the "only supports version 2" error reply.
    pub fn version_mismatch(&self) -> bool {
        self.version != VERSION
    }
}

/// Decode a request datagram as UML's `mconsole_get_request` does.
///
/// Only the first [`REQUEST_LEN`] bytes count. A short datagram behaves as if the missing
/// bytes were zero (UML reads into a fixed buffer): a truncated header gives magic 0 (the
/// version-0 reply) or version 0 (the version error, then the command), and a `len` past
/// the end of the datagram ends the text at the datagram's end.
pub fn decode_request(bytes: &[u8]) -> Result<Request, ProtocolError> {
    let bytes = &bytes[..bytes.len().min(REQUEST_LEN)];
    let magic = u32_at(bytes, 0);
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = u32_at(bytes, 4);
    let len = u32_at(bytes, 8);
    if len as usize >= MAX_DATA {
        return Err(ProtocolError::TooLarge(len));
    }
    let data = bytes.get(HEADER_LEN..).unwrap_or(&[]);
    let data = &data[..data.len().min(len as usize)];
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    Ok(Request {
        version,
        text: data[..end].to_vec(),
    })
}

/// Encode a request the way `uml_mconsole` does: always 524 bytes, text cut at 511 bytes.
pub fn encode_request(text: &[u8]) -> Vec<u8> {
    let text = &text[..text.len().min(MAX_DATA - 1)];
    let mut out = vec![0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
    out[4..8].copy_from_slice(&VERSION.to_ne_bytes());
    out[8..12].copy_from_slice(&(text.len() as u32).to_ne_bytes());
    out[HEADER_LEN..HEADER_LEN + text.len()].copy_from_slice(text);
    out
}

/// One `mconsole_reply` call: a text with an error code, split into packets on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 0 = OK, 1 = generic error, or a negative errno (sent as its u32 bit pattern).
    pub err: i32,
    /// The text (no NUL; it is added per packet).
    pub text: Vec<u8>,
    /// `true` if further replies to the same request follow (`proc`, `sysrq`, `stack`).
    pub more: bool,
}

impl Reply {
    /// A successful reply (`OK <text>`).
    pub fn ok(text: impl Into<Vec<u8>>) -> Reply {
        Reply {
            err: 0,
            text: text.into(),
            more: false,
        }
    }
    /// A failed reply with UML's generic err 1 (`ERR <text>`).
    pub fn error(text: impl Into<Vec<u8>>) -> Reply {
        Reply::with_err(1, text)
    }
    /// A reply with an explicit error code, e.g. `-libc::ENODEV`.
    pub fn with_err(err: i32, text: impl Into<Vec<u8>>) -> Reply {
        Reply {
            err,
            text: text.into(),
            more: false,
        }
    }
    /// Mark this reply as followed by more replies (`more=1` on its last packet).
    pub fn more(mut self) -> Reply {
        self.more = true;
        self
    }
    /// The fixed `help` reply (§3.5).
    pub fn help() -> Reply {
        Reply::ok(crate::command::HELP_TEXT)
    }
}

/// Split a reply into its datagrams: chunks of at most 511 text bytes plus a NUL; `err`
/// only in the first packet; `more=1` on all but the last, which carries `reply.more`.
/// An empty text is one 13-byte packet.
pub fn encode_reply(reply: &Reply) -> Vec<Vec<u8>> {
    let mut packets = Vec::with_capacity(reply.text.len() / REPLY_CHUNK + 1);
    let mut rest: &[u8] = &reply.text;
    let mut err = reply.err as u32;
    loop {
        let n = rest.len().min(REPLY_CHUNK);
        let last = n == rest.len();
        let more = if last { u32::from(reply.more) } else { 1 };
        let mut p = Vec::with_capacity(HEADER_LEN + n + 1);
        p.extend_from_slice(&err.to_ne_bytes());
        p.extend_from_slice(&more.to_ne_bytes());
        p.extend_from_slice(&((n + 1) as u32).to_ne_bytes());
        p.extend_from_slice(&rest[..n]);
        p.push(0);
        packets.push(p);
        err = 0;
        rest = &rest[n..];
        if last {
            return packets;
        }
    }
}

/// One received reply packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyPacket {
    /// Error code as sent (a negative errno arrives as its u32 bit pattern).
    pub err: u32,
    /// Whether more packets follow.
    pub more: bool,
    /// The text, cut at the first NUL (as `uml_mconsole` reads it with `strlen`).
    pub text: Vec<u8>,
}

/// Decode one reply datagram (client side).
pub fn decode_reply(bytes: &[u8]) -> Result<ReplyPacket, ProtocolError> {
    if bytes.len() < HEADER_LEN {
        return Err(ProtocolError::Truncated(bytes.len()));
    }
    let data = &bytes[HEADER_LEN..bytes.len().min(MAX_REPLY_LEN)];
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    Ok(ReplyPacket {
        err: u32_at(bytes, 0),
        more: u32_at(bytes, 4) != 0,
        text: data[..end].to_vec(),
    })
}

/// Notification types (`enum mconsole_notify_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyType {
    /// The mconsole socket is ready; payload = its path plus NUL.
    Socket,
    /// The guest panicked; payload = the message plus NUL.
    Panic,
    /// Sent by `uml_watchdog`, never by the VM.
    Hang,
    /// A guest write to `/proc/mconsole`; payload = the written bytes.
    User,
    /// Any other value.
    Other(u32),
}

impl NotifyType {
    /// The wire value.
    pub fn code(self) -> u32 {
        match self {
            NotifyType::Socket => 0,
            NotifyType::Panic => 1,
            NotifyType::Hang => 2,
            NotifyType::User => 3,
            NotifyType::Other(v) => v,
        }
    }
    /// From the wire value.
    pub fn from_code(v: u32) -> NotifyType {
        match v {
            0 => NotifyType::Socket,
            1 => NotifyType::Panic,
            2 => NotifyType::Hang,
            3 => NotifyType::User,
            v => NotifyType::Other(v),
        }
    }
}

/// A notification datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Header magic (0xCAFEBABE from a VM).
    pub magic: u32,
    /// Header version (2 from a VM).
    pub version: u32,
    /// The type.
    pub kind: NotifyType,
    /// Payload (`len` bytes, at most 512).
    pub data: Vec<u8>,
}

/// Encode a notification: 16-byte header then the payload truncated to 512 bytes; the
/// datagram is `16 + len` bytes. Callers add the NUL where UML does (socket, panic).
pub fn encode_notification(kind: NotifyType, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_DATA)];
    let mut out = Vec::with_capacity(NOTIFY_HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC.to_ne_bytes());
    out.extend_from_slice(&VERSION.to_ne_bytes());
    out.extend_from_slice(&kind.code().to_ne_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decode a notification datagram (for listeners and tests). `len` is clamped to the
/// bytes present and to 512.
pub fn decode_notification(bytes: &[u8]) -> Result<Notification, ProtocolError> {
    if bytes.len() < NOTIFY_HEADER_LEN {
        return Err(ProtocolError::Truncated(bytes.len()));
    }
    let len = (u32_at(bytes, 12) as usize)
        .min(MAX_DATA)
        .min(bytes.len() - NOTIFY_HEADER_LEN);
    Ok(Notification {
        magic: u32_at(bytes, 0),
        version: u32_at(bytes, 4),
        kind: NotifyType::from_code(u32_at(bytes, 8)),
        data: bytes[NOTIFY_HEADER_LEN..NOTIFY_HEADER_LEN + len].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_layout_matches_uml_mconsole() {
        let r = encode_request(b"version");
        assert_eq!(r.len(), 524);
        assert_eq!(&r[..12], &[0xbe, 0xba, 0xfe, 0xca, 2, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(&r[12..19], b"version");
        assert!(r[19..].iter().all(|&b| b == 0));
        let d = decode_request(&r).unwrap();
        assert_eq!(d.text, b"version");
        assert!(!d.version_mismatch());
    }

    #[test]
    fn long_request_text_is_cut_at_511() {
        let r = encode_request(&[b'a'; 600]);
        assert_eq!(u32_at(&r, 8), 511);
        assert_eq!(decode_request(&r).unwrap().text.len(), 511);
    }

    #[test]
    fn bad_magic_gets_raw_version0_text() {
        let mut r = encode_request(b"version");
        r[0] = 0;
        let e = decode_request(&r).unwrap_err();
        assert!(matches!(e, ProtocolError::BadMagic(_)));
        assert_eq!(e.reply_datagram().len(), 63);
        assert_eq!(
            e.reply_datagram(),
            b"ERR Version 0 mconsole clients are not supported by this driver"
        );
        assert!(matches!(
            decode_request(&[]),
            Err(ProtocolError::BadMagic(0))
        ));
        assert!(matches!(
            decode_request(&[0xbe, 0xba]),
            Err(ProtocolError::BadMagic(_))
        ));
    }

    #[test]
    fn too_large_len() {
        let mut r = encode_request(b"version");
        r[8..12].copy_from_slice(&512u32.to_ne_bytes());
        let e = decode_request(&r).unwrap_err();
        assert_eq!(e, ProtocolError::TooLarge(512));
        let d = e.reply_datagram();
        assert_eq!(&d[..12], &[1, 0, 0, 0, 0, 0, 0, 0, 18, 0, 0, 0]);
        assert_eq!(&d[12..], b"Request too large\0");
        r[8..12].copy_from_slice(&511u32.to_ne_bytes());
        assert!(decode_request(&r).is_ok());
    }

    #[test]
    fn version_mismatch_still_decodes() {
        let mut r = encode_request(b"version");
        r[4] = 3;
        let d = decode_request(&r).unwrap();
        assert!(d.version_mismatch());
        assert_eq!(d.text, b"version");
    }

    #[test]
    fn truncated_requests_behave_as_zero_filled() {
        let r = encode_request(b"version");
        // Header only up to the version: len reads as 0 -> empty text.
        let d = decode_request(&r[..8]).unwrap();
        assert_eq!(d.text, b"");
        // Magic only: version 0.
        assert!(decode_request(&r[..4]).unwrap().version_mismatch());
        // len past the end of the datagram: text ends with the datagram.
        let d = decode_request(&r[..15]).unwrap();
        assert_eq!(d.text, b"ver");
        // Embedded NUL ends the text.
        let d = decode_request(&encode_request(b"ver\0sion")).unwrap();
        assert_eq!(d.text, b"ver");
    }

    #[test]
    fn empty_reply_is_13_bytes() {
        let p = encode_reply(&Reply::ok(""));
        assert_eq!(p, vec![vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]]);
    }

    #[test]
    fn negative_errno_reply() {
        let p = encode_reply(&Reply::with_err(-19, "Device doesn't exist"));
        assert_eq!(
            &p[0][..12],
            &[0xed, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x15, 0, 0, 0]
        );
        assert_eq!(&p[0][12..], b"Device doesn't exist\0");
    }

    #[test]
    fn help_reply_is_two_packets_of_524_and_224() {
        let p = encode_reply(&Reply::help());
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].len(), 524);
        assert_eq!(p[1].len(), 224);
        assert_eq!(&p[0][..12], &[0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0]);
        assert_eq!(&p[1][..12], &[0, 0, 0, 0, 0, 0, 0, 0, 212, 0, 0, 0]);
    }

    #[test]
    fn err_only_in_first_packet_and_more_on_last() {
        let p = encode_reply(&Reply::with_err(-5, vec![b'x'; 1100]).more());
        assert_eq!(p.len(), 3);
        assert_eq!(decode_reply(&p[0]).unwrap().err, -5i32 as u32);
        assert_eq!(decode_reply(&p[1]).unwrap().err, 0);
        assert!(p.iter().all(|q| decode_reply(q).unwrap().more));
        let p = encode_reply(&Reply::ok(vec![b'x'; 1022]));
        assert_eq!(p.len(), 2);
        assert!(!decode_reply(&p[1]).unwrap().more);
    }

    #[test]
    fn notification_layout() {
        let path = b"/root/.uml/nt/mconsole\0";
        let n = encode_notification(NotifyType::Socket, path);
        assert_eq!(n.len(), 16 + 23);
        assert_eq!(
            &n[..16],
            &[0xbe, 0xba, 0xfe, 0xca, 2, 0, 0, 0, 0, 0, 0, 0, 23, 0, 0, 0]
        );
        let d = decode_notification(&n).unwrap();
        assert_eq!(d.kind, NotifyType::Socket);
        assert_eq!(d.data, path);
        let n = encode_notification(NotifyType::User, &[7u8; 600]);
        assert_eq!(n.len(), 16 + 512);
        assert_eq!(decode_notification(&n).unwrap().kind, NotifyType::User);
        // uml_watchdog's 64-bit quirk: 8-byte magic reads as version 0, type 2 (HANG).
        let mut w = vec![0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0];
        w.extend_from_slice(&2u32.to_ne_bytes());
        w.extend_from_slice(&2u32.to_ne_bytes());
        w.extend_from_slice(&0u64.to_ne_bytes());
        let d = decode_notification(&w).unwrap();
        assert_eq!((d.version, d.kind), (0, NotifyType::Hang));
        assert!(decode_notification(&w[..10]).is_err());
    }

    proptest! {
        #[test]
        fn decode_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = decode_request(&bytes);
            let _ = decode_reply(&bytes);
            let _ = decode_notification(&bytes);
        }

        #[test]
        fn request_roundtrip(text in proptest::collection::vec(1u8..=255, 0..511)) {
            let d = decode_request(&encode_request(&text)).unwrap();
            prop_assert_eq!(d.text, text);
        }

        #[test]
        fn reply_roundtrip(text in proptest::collection::vec(1u8..=255, 0..3000),
                           err in any::<i32>(), more in any::<bool>()) {
            let packets = encode_reply(&Reply { err, text: text.clone(), more });
            let mut joined = Vec::new();
            for (i, p) in packets.iter().enumerate() {
                prop_assert!(p.len() <= MAX_REPLY_LEN);
                prop_assert_eq!(u32_at(p, 8) as usize + HEADER_LEN, p.len());
                prop_assert_eq!(*p.last().unwrap(), 0);
                let d = decode_reply(p).unwrap();
                let last = i + 1 == packets.len();
                prop_assert_eq!(d.more, if last { more } else { true });
                prop_assert_eq!(d.err, if i == 0 { err as u32 } else { 0 });
                joined.extend_from_slice(&d.text);
            }
            prop_assert_eq!(joined, text);
        }
    }
}
