//! PURE: the little telnet a `port:` channel speaks (RFC 854/857/858).
//!
//! On connect the server offers to echo and to suppress go-ahead and asks for the client's
//! window size ([`NEGOTIATION`]), so that a `telnet` client sends characters one at a time,
//! lets the guest echo them and reports its size (RFC 1073, NAWS), as UML's port helper
//! (telnetd) does. Client commands are removed from the input ([`TelnetDecoder`]), which
//! keeps the last window size reported; the NVT newline `CR LF` or `CR NUL` becomes a single
//! `CR`, which is what a terminal sends for Enter. Output doubles `IAC` bytes ([`escape`]).

/// Interpret As Command.
pub const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const OPT_ECHO: u8 = 1;
const OPT_SGA: u8 = 3;
const OPT_NAWS: u8 = 31;
/// The longest subnegotiation kept (a NAWS one is 5 bytes); longer ones are skipped.
const SUB_MAX: usize = 16;

/// What the server sends first: WILL ECHO, WILL SUPPRESS-GO-AHEAD, DO SUPPRESS-GO-AHEAD,
/// DO NAWS.
pub const NEGOTIATION: &[u8] = &[
    IAC, WILL, OPT_ECHO, IAC, WILL, OPT_SGA, IAC, DO, OPT_SGA, IAC, DO, OPT_NAWS,
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    #[default]
    Data,
    /// After IAC.
    Iac,
    /// After IAC WILL/WONT/DO/DONT: the option byte follows.
    Opt,
    /// Inside IAC SB … IAC SE.
    Sub,
    /// IAC inside a subnegotiation.
    SubIac,
    /// After CR: a following LF or NUL belongs to it.
    Cr,
}

/// Strips telnet commands from client input; keeps its state across reads.
#[derive(Debug, Clone, Default)]
pub struct TelnetDecoder {
    state: State,
    /// The subnegotiation being read (its option byte first), while it fits.
    sub: Vec<u8>,
    window: Option<(u16, u16)>,
}

impl TelnetDecoder {
    /// A decoder at the start of a connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the data bytes of `input` to `out`; never more bytes than `input` holds.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.state = match (self.state, b) {
                (State::Cr, b'\n' | 0) => State::Data,
                (State::Data | State::Cr, IAC) => State::Iac,
                (State::Data | State::Cr, b'\r') => {
                    out.push(b'\r');
                    State::Cr
                }
                (State::Data | State::Cr, b) => {
                    out.push(b);
                    State::Data
                }
                (State::Iac, IAC) => {
                    out.push(IAC);
                    State::Data
                }
                (State::Iac, WILL | WONT | DO | DONT) => State::Opt,
                (State::Iac, SB) => {
                    self.sub.clear();
                    State::Sub
                }
                (State::Iac, _) | (State::Opt, _) => State::Data,
                (State::Sub, IAC) => State::SubIac,
                (State::Sub, b) | (State::SubIac, b @ IAC) => {
                    if self.sub.len() <= SUB_MAX {
                        self.sub.push(b);
                    }
                    State::Sub
                }
                (State::SubIac, SE) => {
                    self.end_sub();
                    State::Data
                }
                (State::SubIac, _) => State::Sub,
            };
        }
    }
}

impl TelnetDecoder {
    /// The window size `(cols, rows)` the client reported last (NAWS), if any.
    pub fn window_size(&self) -> Option<(u16, u16)> {
        self.window
    }

    // A subnegotiation ended: NAWS carries width and height, 16 bits each, big-endian.
    fn end_sub(&mut self) {
        if let [OPT_NAWS, w0, w1, h0, h1] = self.sub[..] {
            self.window = Some((u16::from_be_bytes([w0, w1]), u16::from_be_bytes([h0, h1])));
        }
        self.sub.clear();
    }
}

/// Appends `data` to `out` with every IAC byte doubled.
pub fn escape(data: &[u8], out: &mut Vec<u8>) {
    for &b in data {
        if b == IAC {
            out.push(IAC);
        }
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(chunks: &[&[u8]]) -> Vec<u8> {
        let mut d = TelnetDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.decode(c, &mut out);
        }
        out
    }

    #[test]
    fn test_commands_are_stripped() {
        // A client's usual opening: DO ECHO, DO SGA, WILL NAWS, SB NAWS 0 80 0 24 SE.
        let input = [
            IAC, DO, 1, IAC, DO, 3, IAC, WILL, 31, IAC, SB, 31, 0, 80, 0, 24, IAC, SE, b'l', b's',
        ];
        assert_eq!(decode(&[&input]), b"ls");
        assert_eq!(decode(&[&[b'a', IAC, 241, b'b']]), b"ab"); // IAC NOP
    }

    #[test]
    fn test_iac_iac_is_a_data_byte_and_state_spans_reads() {
        assert_eq!(decode(&[&[IAC], &[IAC], b"x"]), [IAC, b'x']);
        assert_eq!(
            decode(&[&[IAC, SB, 1], &[IAC, IAC, 2, IAC], &[SE, b'y']]),
            b"y"
        );
        assert_eq!(decode(&[&[IAC, WILL], &[1, b'z']]), b"z");
    }

    #[test]
    fn test_naws_reports_the_window_size() {
        let mut d = TelnetDecoder::new();
        let mut out = Vec::new();
        assert_eq!(d.window_size(), None);
        // The usual opening, split anywhere.
        d.decode(&[IAC, WILL, 31, IAC, SB, 31, 0], &mut out);
        d.decode(&[80, 0, 24, IAC], &mut out);
        assert_eq!(d.window_size(), None, "not before SE");
        d.decode(&[SE, b'x'], &mut out);
        assert_eq!(d.window_size(), Some((80, 24)));
        // A resize later; 255 in a size is sent as IAC IAC.
        d.decode(&[IAC, SB, 31, 0, IAC, IAC, 1, 0, IAC, SE], &mut out);
        assert_eq!(d.window_size(), Some((255, 256)));
        // Other subnegotiations, short or overlong NAWS ones change nothing.
        d.decode(&[IAC, SB, 24, 0, 1, 2, 3, IAC, SE], &mut out);
        d.decode(&[IAC, SB, 31, 0, 9, 0, IAC, SE], &mut out);
        let mut long = vec![IAC, SB, 31];
        long.extend([7u8; 40]);
        long.extend([IAC, SE, b'y']);
        d.decode(&long, &mut out);
        assert_eq!(d.window_size(), Some((255, 256)));
        assert_eq!(out, b"xy");
    }

    #[test]
    fn test_newlines() {
        assert_eq!(decode(&[b"a\r\nb\r\0c\rd"]), b"a\rb\rc\rd");
        assert_eq!(decode(&[b"a\r", b"\nb"]), b"a\rb");
        assert_eq!(decode(&[b"\n"]), b"\n");
    }

    #[test]
    fn test_escape_doubles_iac() {
        let mut out = Vec::new();
        escape(&[1, IAC, 2], &mut out);
        assert_eq!(out, [1, IAC, IAC, 2]);
    }

    proptest! {
        #[test]
        fn prop_escaped_data_decodes_back(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Without CR (the NVT newline rule rewrites it), escape/decode is the identity.
            let data: Vec<u8> = data.into_iter().filter(|b| *b != b'\r').collect();
            let mut wire = Vec::new();
            escape(&data, &mut wire);
            let mut out = Vec::new();
            TelnetDecoder::new().decode(&wire, &mut out);
            prop_assert_eq!(out, data);
        }

        #[test]
        fn prop_decode_never_grows(data in proptest::collection::vec(any::<u8>(), 0..200), split in 0usize..200) {
            let split = split.min(data.len());
            let mut d = TelnetDecoder::new();
            let mut out = Vec::new();
            d.decode(&data[..split], &mut out);
            prop_assert!(out.len() <= split);
            let before = out.len();
            d.decode(&data[split..], &mut out);
            prop_assert!(out.len() - before <= data.len() - split);
        }
    }
}
