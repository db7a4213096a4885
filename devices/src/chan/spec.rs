//! PURE: the UML channel grammar (`con=`, `conN=`, `ssl=`, `sslN=` values) to typed specs.
//!
//! ```text
//! <line>  := "none" | <chan> | <in-chan> "," <out-chan>
//! <chan>  := "fd:" <n> | "null" | "port:" <tcp-port> | "pty" | "pts" | "tty:" <host-dev>
//!          | "xterm" | "file:" <path>
//! ```
//!
//! * `fd:<n>` parses `<n>` as C `strtoul(.., 0)` does (`0x` hex, leading `0` octal, else
//!   decimal) with no trailing text, as UML's `fd_init`.
//! * `file:<path>` is a kuml extension (UML has no file channel): output is appended to the
//!   file, input is null. The pair splits at the first comma, so a path cannot hold a comma.
//! * `none` is only valid for the whole line: the line (console port, serial line) does not
//!   exist.
//! * kuml matches channel names exactly, where UML matches by prefix and ignores what follows
//!   `null`, `pty`, `pts` and `xterm` (`nullx` is accepted by UML, rejected here).
//!
//! Defaults ([`default_line`]), as UML's: `con0=fd:0,fd:1`; other consoles `xterm`; serial
//! lines `pty`. kuml differences, documented for users:
//! * When `$DISPLAY` is unset the `xterm` default becomes `pts`: UML would fail to open the
//!   line (`xterm_open: $DISPLAY not set.`); a pts is the closest usable thing.
//! * `pty` (legacy BSD `/dev/ptyXY` masters, absent on modern hosts) is served by a Unix98
//!   pts, so the serial-line default works.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A console (`con`) or a serial line (`ssl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LineClass {
    /// A console: `con<N>`, virtio-console port N in the guest.
    Console,
    /// A serial line: `ssl<N>`, a 16550 UART in the guest.
    Serial,
}

impl LineClass {
    /// The option name: `con` or `ssl`.
    pub fn option_name(self) -> &'static str {
        match self {
            LineClass::Console => "con",
            LineClass::Serial => "ssl",
        }
    }

    /// How UML names the line in messages: `Virtual console` or `Serial line`.
    pub fn display_name(self) -> &'static str {
        match self {
            LineClass::Console => "Virtual console",
            LineClass::Serial => "Serial line",
        }
    }
}

/// Where a `port:` channel listens: 127.0.0.1 unless the spec names an address
/// (`port:0.0.0.0:9000` listens on every address, as UML's `port:9000` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortAddr {
    /// The IPv4 address to listen on.
    pub host: std::net::Ipv4Addr,
    /// The TCP port (not 0).
    pub port: u16,
}

impl PortAddr {
    /// Port `port` on 127.0.0.1, kuml's default.
    pub fn local(port: u16) -> Self {
        PortAddr {
            host: std::net::Ipv4Addr::LOCALHOST,
            port,
        }
    }
}

impl fmt::Display for PortAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host == std::net::Ipv4Addr::LOCALHOST {
            write!(f, "{}", self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One direction of a line: where bytes come from or go to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Chan {
    /// `fd:N`: a file descriptor kuml inherited.
    Fd(i32),
    /// `null`: reads never return data, writes are discarded.
    Null,
    /// `port:P` (on 127.0.0.1) or `port:ADDR:P`: a telnet server on TCP port P.
    Port(PortAddr),
    /// `pty`: UML's legacy BSD pty; kuml serves it with a Unix98 pts.
    Pty,
    /// `pts`: a new Unix98 pseudo-terminal; its slave path is announced.
    Pts,
    /// `tty:DEV`: a host terminal device.
    Tty(PathBuf),
    /// `xterm`: a terminal emulator window.
    Xterm,
    /// `file:PATH` (kuml extension): output appended to PATH, input null.
    File(PathBuf),
}

impl fmt::Display for Chan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chan::Fd(n) => write!(f, "fd:{n}"),
            Chan::Null => f.write_str("null"),
            Chan::Port(p) => write!(f, "port:{p}"),
            Chan::Pty => f.write_str("pty"),
            Chan::Pts => f.write_str("pts"),
            Chan::Tty(p) => write!(f, "tty:{}", p.display()),
            Chan::Xterm => f.write_str("xterm"),
            Chan::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// A line that exists: its input and output channels (equal for a single-channel value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelSpec {
    /// Where the guest's input comes from.
    pub input: Chan,
    /// Where the guest's output goes.
    pub output: Chan,
}

impl ChannelSpec {
    /// The same channel both ways.
    pub fn single(chan: Chan) -> Self {
        Self {
            input: chan.clone(),
            output: chan,
        }
    }

    /// True when input and output are one channel (one pts, one port, one fd).
    pub fn is_single(&self) -> bool {
        self.input == self.output
    }
}

impl fmt::Display for ChannelSpec {
    /// The canonical text, which [`parse_line`] reads back: `pts`, `fd:0,fd:1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.input)
        } else {
            write!(f, "{},{}", self.input, self.output)
        }
    }
}

/// Why a channel value or a line option is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChanSpecError {
    /// The value is empty.
    #[error("empty channel description")]
    Empty,
    /// No channel type matches (UML: `No match for configured backends`).
    #[error("no match for configured backends: '{0}'")]
    NoMatch(String),
    /// `fd` without `:N`.
    #[error("fd_init : channel type 'fd' must specify a file descriptor")]
    FdMissing,
    /// `fd:` followed by something that is not a number, or out of range.
    #[error("fd_init : couldn't parse file descriptor '{0}'")]
    FdParse(String),
    /// `port` without `:P`.
    #[error("port_init : channel type 'port' must specify a port number")]
    PortMissing,
    /// `port:` followed by something that is not a TCP port (1-65535).
    #[error("port_init : couldn't parse port '{0}'")]
    PortParse(String),
    /// `tty` without `:DEV`.
    #[error("tty_init : channel type 'tty' must specify a device")]
    TtyMissing,
    /// `file` without `:PATH`.
    #[error("channel type 'file' must specify a path")]
    FileMissing,
    /// `none` as one half of a pair.
    #[error("'none' cannot be one half of a channel pair")]
    NoneInPair,
    /// More than one comma.
    #[error("too many channels in '{0}': expected <chan> or <in>,<out>")]
    TooMany(String),
}

/// Parses one channel (`fd:0`, `pts`, `file:/tmp/x`).
pub fn parse_chan(s: &str) -> Result<Chan, ChanSpecError> {
    if s.is_empty() {
        return Err(ChanSpecError::Empty);
    }
    let (name, arg) = match s.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (s, None),
    };
    match (name, arg) {
        ("fd", None) => Err(ChanSpecError::FdMissing),
        ("fd", Some(a)) => parse_c_ulong(a)
            .and_then(|n| i32::try_from(n).ok())
            .map(Chan::Fd)
            .ok_or_else(|| ChanSpecError::FdParse(a.to_owned())),
        ("null", None) => Ok(Chan::Null),
        ("port", None) => Err(ChanSpecError::PortMissing),
        ("port", Some(a)) => {
            let (host, port) = match a.rsplit_once(':') {
                Some((h, p)) => (h.parse().ok(), p),
                None => (Some(std::net::Ipv4Addr::LOCALHOST), a),
            };
            host.zip(
                parse_c_ulong(port)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|p| *p != 0),
            )
            .map(|(host, port)| Chan::Port(PortAddr { host, port }))
            .ok_or_else(|| ChanSpecError::PortParse(a.to_owned()))
        }
        ("pty", None) => Ok(Chan::Pty),
        ("pts", None) => Ok(Chan::Pts),
        ("tty", None) | ("tty", Some("")) => Err(ChanSpecError::TtyMissing),
        ("tty", Some(a)) => Ok(Chan::Tty(PathBuf::from(a))),
        ("xterm", None) => Ok(Chan::Xterm),
        ("file", None) | ("file", Some("")) => Err(ChanSpecError::FileMissing),
        ("file", Some(a)) => Ok(Chan::File(PathBuf::from(a))),
        _ => Err(ChanSpecError::NoMatch(s.to_owned())),
    }
}

/// Parses a line value: `None` for `none` (the line does not exist), else its channels.
pub fn parse_line(s: &str) -> Result<Option<ChannelSpec>, ChanSpecError> {
    if s == "none" {
        return Ok(None);
    }
    match s.split_once(',') {
        None => parse_chan(s).map(|c| Some(ChannelSpec::single(c))),
        Some((i, o)) => {
            if o.contains(',') {
                return Err(ChanSpecError::TooMany(s.to_owned()));
            }
            if i == "none" || o == "none" {
                return Err(ChanSpecError::NoneInPair);
            }
            Ok(Some(ChannelSpec {
                input: parse_chan(i)?,
                output: parse_chan(o)?,
            }))
        }
    }
}

/// C `strtoul(s, &end, 0)` with `*end == '\0'` required and no sign or spaces.
fn parse_c_ulong(s: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// UML's default for a line nobody configured. `display_set` tells whether `$DISPLAY` is set
/// (passed in so that this stays pure).
pub fn default_line(class: LineClass, index: u32, display_set: bool) -> ChannelSpec {
    match (class, index) {
        (LineClass::Console, 0) => ChannelSpec {
            input: Chan::Fd(0),
            output: Chan::Fd(1),
        },
        (LineClass::Console, _) if display_set => ChannelSpec::single(Chan::Xterm),
        (LineClass::Console, _) => ChannelSpec::single(Chan::Pts),
        (LineClass::Serial, _) => ChannelSpec::single(Chan::Pty),
    }
}

/// An invalid line option, with the line it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to set up {} {index} with configuration string \"{value}\"", class_text(*.class))]
pub struct LineSpecError {
    /// Console or serial line.
    pub class: LineClass,
    /// The line number.
    pub index: u32,
    /// The option value.
    pub value: String,
    /// What is wrong with it.
    #[source]
    pub source: ChanSpecError,
}

fn class_text(c: LineClass) -> &'static str {
    match c {
        LineClass::Console => "console",
        LineClass::Serial => "serial line",
    }
}

/// The channels of one line, resolved from its options: the specific `conN=` wins over the
/// shared `con=`, which wins over UML's default. `Ok(None)`: the line does not exist.
pub fn resolve_line(
    class: LineClass,
    index: u32,
    specific: Option<&str>,
    all: Option<&str>,
    display_set: bool,
) -> Result<Option<ChannelSpec>, LineSpecError> {
    match specific.or(all) {
        None => Ok(Some(default_line(class, index, display_set))),
        Some(v) => parse_line(v).map_err(|source| LineSpecError {
            class,
            index,
            value: v.to_owned(),
            source,
        }),
    }
}

/// Every line that exists at boot, in index order: lines `0..count` (UML creates all of
/// them: 16 consoles, and kuml's 4 serial lines) plus any higher index given explicitly in
/// `each`. Lines resolved to `none` are left out.
pub fn resolve_lines(
    class: LineClass,
    all: Option<&str>,
    each: &BTreeMap<u32, String>,
    count: u32,
    display_set: bool,
) -> Result<Vec<(u32, ChannelSpec)>, LineSpecError> {
    let mut indices: Vec<u32> = (0..count).collect();
    indices.extend(each.keys().copied().filter(|i| *i >= count));
    let mut out = Vec::new();
    for i in indices {
        let specific = each.get(&i).map(String::as_str);
        if let Some(spec) = resolve_line(class, i, specific, all, display_set)? {
            out.push((i, spec));
        }
    }
    Ok(out)
}

/// The terminal emulator the `xterm` channel runs (UML's `xterm=` option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XtermConfig {
    /// The program.
    pub emulator: String,
    /// The switch that sets the window title.
    pub title_switch: String,
    /// The switch that runs a command.
    pub exec_switch: String,
}

impl Default for XtermConfig {
    /// UML's upstream default, `xterm,-T,-e`.
    fn default() -> Self {
        Self {
            emulator: "xterm".into(),
            title_switch: "-T".into(),
            exec_switch: "-e".into(),
        }
    }
}

/// Parses UML's `xterm=<emulator>[,<title switch>[,<exec switch>]]`; missing switches keep
/// their defaults.
pub fn parse_xterm_option(s: &str) -> Result<XtermConfig, ChanSpecError> {
    let mut cfg = XtermConfig::default();
    let mut parts = s.split(',');
    match parts.next() {
        Some(e) if !e.is_empty() => cfg.emulator = e.to_owned(),
        _ => return Err(ChanSpecError::Empty),
    }
    if let Some(t) = parts.next().filter(|t| !t.is_empty()) {
        cfg.title_switch = t.to_owned();
    }
    if let Some(x) = parts.next().filter(|x| !x.is_empty()) {
        cfg.exec_switch = x.to_owned();
    }
    if parts.next().is_some() {
        return Err(ChanSpecError::TooMany(s.to_owned()));
    }
    Ok(cfg)
}

/// The window title UML gives a line's xterm: `Virtual Console #1 (umid)`.
pub fn xterm_title(class: LineClass, index: u32, umid: Option<&str>) -> String {
    let base = match class {
        LineClass::Console => format!("Virtual Console #{index}"),
        LineClass::Serial => format!("Serial Line #{index}"),
    };
    match umid {
        Some(u) => format!("{base} ({u})"),
        None => base,
    }
}

/// The command line that opens a terminal window attached to pts `slave`: the window's own
/// terminal goes raw and two `cat`s relay bytes both ways (UML runs its port-helper instead).
pub fn xterm_command(cfg: &XtermConfig, title: &str, slave: &std::path::Path) -> Vec<String> {
    let slave = slave.display().to_string().replace('\'', "");
    let relay = format!("stty raw -echo; cat '{slave}' & exec cat > '{slave}'");
    vec![
        cfg.emulator.clone(),
        cfg.title_switch.clone(),
        title.to_owned(),
        cfg.exec_switch.clone(),
        "sh".into(),
        "-c".into(),
        relay,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn test_xterm_option_and_command() {
        assert_eq!(parse_xterm_option("xterm").unwrap(), XtermConfig::default());
        let c = parse_xterm_option("gnome-terminal,-t,-x").unwrap();
        assert_eq!(c.emulator, "gnome-terminal");
        assert_eq!(c.title_switch, "-t");
        assert_eq!(c.exec_switch, "-x");
        let c = parse_xterm_option("konsole,,--e").unwrap();
        assert_eq!(c.title_switch, "-T");
        assert_eq!(c.exec_switch, "--e");
        assert!(parse_xterm_option("").is_err());
        assert!(parse_xterm_option("a,b,c,d").is_err());
        assert_eq!(
            xterm_title(LineClass::Console, 1, Some("web1")),
            "Virtual Console #1 (web1)"
        );
        assert_eq!(xterm_title(LineClass::Serial, 0, None), "Serial Line #0");
        let cmd = xterm_command(
            &XtermConfig::default(),
            "Virtual Console #1",
            std::path::Path::new("/dev/pts/4"),
        );
        assert_eq!(cmd[..5], ["xterm", "-T", "Virtual Console #1", "-e", "sh"]);
        assert_eq!(
            cmd[6],
            "stty raw -echo; cat '/dev/pts/4' & exec cat > '/dev/pts/4'"
        );
    }

    #[test]
    fn test_parse_line_single_and_pair() {
        assert_eq!(
            parse_line("fd:0,fd:1").unwrap(),
            Some(ChannelSpec {
                input: Chan::Fd(0),
                output: Chan::Fd(1)
            })
        );
        assert_eq!(
            parse_line("pts").unwrap(),
            Some(ChannelSpec::single(Chan::Pts))
        );
        assert_eq!(parse_line("none").unwrap(), None);
        assert_eq!(
            parse_line("null,file:/tmp/log").unwrap(),
            Some(ChannelSpec {
                input: Chan::Null,
                output: Chan::File("/tmp/log".into())
            })
        );
        assert_eq!(
            parse_line("port:9000").unwrap(),
            Some(ChannelSpec::single(Chan::Port(PortAddr::local(9000))))
        );
        assert_eq!(
            parse_line("port:0.0.0.0:9000").unwrap(),
            Some(ChannelSpec::single(Chan::Port(PortAddr {
                host: std::net::Ipv4Addr::UNSPECIFIED,
                port: 9000
            })))
        );
        assert!(parse_line("port:localhost:9000").is_err());
        assert!(parse_line("port:1.2.3.4:0").is_err());
        assert_eq!(
            parse_line("tty:/dev/tty8").unwrap(),
            Some(ChannelSpec::single(Chan::Tty("/dev/tty8".into())))
        );
        assert_eq!(
            parse_line("xterm,pty").unwrap(),
            Some(ChannelSpec {
                input: Chan::Xterm,
                output: Chan::Pty
            })
        );
    }

    #[test]
    fn test_parse_fd_number_bases() {
        assert_eq!(parse_chan("fd:0x10").unwrap(), Chan::Fd(16));
        assert_eq!(parse_chan("fd:010").unwrap(), Chan::Fd(8));
        assert_eq!(parse_chan("fd:0").unwrap(), Chan::Fd(0));
        assert_eq!(parse_chan("fd:42").unwrap(), Chan::Fd(42));
    }

    #[test]
    fn test_parse_errors() {
        assert_eq!(parse_chan("fd"), Err(ChanSpecError::FdMissing));
        assert_eq!(parse_chan("fd:"), Err(ChanSpecError::FdParse("".into())));
        assert_eq!(
            parse_chan("fd:1x"),
            Err(ChanSpecError::FdParse("1x".into()))
        );
        assert_eq!(
            parse_chan("fd:-1"),
            Err(ChanSpecError::FdParse("-1".into()))
        );
        assert_eq!(
            parse_chan("fd:99999999999"),
            Err(ChanSpecError::FdParse("99999999999".into()))
        );
        assert_eq!(
            parse_chan("fd:09"),
            Err(ChanSpecError::FdParse("09".into()))
        );
        assert_eq!(parse_chan("port"), Err(ChanSpecError::PortMissing));
        assert_eq!(
            parse_chan("port:0"),
            Err(ChanSpecError::PortParse("0".into()))
        );
        assert_eq!(
            parse_chan("port:65536"),
            Err(ChanSpecError::PortParse("65536".into()))
        );
        assert_eq!(parse_chan("tty"), Err(ChanSpecError::TtyMissing));
        assert_eq!(parse_chan("tty:"), Err(ChanSpecError::TtyMissing));
        assert_eq!(parse_chan("file:"), Err(ChanSpecError::FileMissing));
        assert_eq!(
            parse_chan("/dev/tty8"),
            Err(ChanSpecError::NoMatch("/dev/tty8".into()))
        );
        assert_eq!(
            parse_chan("x-terminal-emulator"),
            Err(ChanSpecError::NoMatch("x-terminal-emulator".into()))
        );
        assert_eq!(
            parse_chan("nullx"),
            Err(ChanSpecError::NoMatch("nullx".into()))
        );
        assert_eq!(
            parse_chan("pts:3"),
            Err(ChanSpecError::NoMatch("pts:3".into()))
        );
        assert_eq!(parse_line(""), Err(ChanSpecError::Empty));
        assert_eq!(parse_line("fd:0,"), Err(ChanSpecError::Empty));
        assert_eq!(parse_line("none,fd:1"), Err(ChanSpecError::NoneInPair));
        assert_eq!(
            parse_line("fd:0,fd:1,fd:2"),
            Err(ChanSpecError::TooMany("fd:0,fd:1,fd:2".into()))
        );
    }

    #[test]
    fn test_defaults() {
        assert_eq!(
            default_line(LineClass::Console, 0, false).to_string(),
            "fd:0,fd:1"
        );
        assert_eq!(
            default_line(LineClass::Console, 3, true).to_string(),
            "xterm"
        );
        assert_eq!(
            default_line(LineClass::Console, 3, false).to_string(),
            "pts"
        );
        assert_eq!(default_line(LineClass::Serial, 0, true).to_string(), "pty");
    }

    #[test]
    fn test_resolve_specific_wins_over_all() {
        let r = |spec, all| resolve_line(LineClass::Console, 1, spec, all, false).unwrap();
        assert_eq!(r(Some("null"), Some("pts")).unwrap().to_string(), "null");
        assert_eq!(r(None, Some("pts")).unwrap().to_string(), "pts");
        assert_eq!(r(None, None).unwrap().to_string(), "pts");
        assert_eq!(r(Some("none"), Some("pts")), None);
        // con= applies to con0 as well (UML: "default for every console", includes con0).
        let c0 = resolve_line(LineClass::Console, 0, None, Some("null"), false).unwrap();
        assert_eq!(c0.unwrap().to_string(), "null");
    }

    #[test]
    fn test_resolve_error_names_the_line() {
        let e = resolve_line(LineClass::Serial, 2, Some("bogus"), None, false).unwrap_err();
        assert_eq!(e.index, 2);
        assert_eq!(
            e.to_string(),
            "failed to set up serial line 2 with configuration string \"bogus\""
        );
    }

    #[test]
    fn test_resolve_lines_includes_high_explicit_and_skips_none() {
        let mut each = BTreeMap::new();
        each.insert(0, "fd:0,fd:1".to_owned());
        each.insert(2, "none".to_owned());
        each.insert(20, "pts".to_owned());
        let lines = resolve_lines(LineClass::Console, Some("null"), &each, 4, false).unwrap();
        let got: Vec<(u32, String)> = lines.iter().map(|(i, s)| (*i, s.to_string())).collect();
        assert_eq!(
            got,
            vec![
                (0, "fd:0,fd:1".to_owned()),
                (1, "null".to_owned()),
                (3, "null".to_owned()),
                (20, "pts".to_owned()),
            ]
        );
    }

    fn arb_chan() -> impl Strategy<Value = Chan> {
        prop_oneof![
            (0i32..=i32::MAX).prop_map(Chan::Fd),
            Just(Chan::Null),
            (1u16..=u16::MAX).prop_map(|p| Chan::Port(PortAddr::local(p))),
            (any::<[u8; 4]>(), 1u16..=u16::MAX).prop_map(|(h, port)| Chan::Port(PortAddr {
                host: h.into(),
                port
            })),
            Just(Chan::Pty),
            Just(Chan::Pts),
            "/[a-z0-9/._-]{0,20}".prop_map(|p| Chan::Tty(p.into())),
            Just(Chan::Xterm),
            "/[a-z0-9/._-]{0,20}".prop_map(|p| Chan::File(p.into())),
        ]
    }

    proptest! {
        #[test]
        fn prop_display_round_trips(input in arb_chan(), output in arb_chan()) {
            let spec = ChannelSpec { input, output };
            prop_assert_eq!(parse_line(&spec.to_string()).unwrap(), Some(spec));
        }

        #[test]
        fn prop_parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_line(&s);
        }

        #[test]
        fn prop_fd_decimal(n in 1u32..=i32::MAX as u32) {
            prop_assert_eq!(parse_chan(&format!("fd:{n}")).unwrap(), Chan::Fd(n as i32));
        }
    }
}
