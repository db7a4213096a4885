//! PURE: the value of `eth<N>=…` (and `vec<N>:…`) as a typed [`NetSpec`].
//!
//! Grammar (UML `net_kern.c` and the per-transport `*_setup` functions):
//!
//! ```text
//! eth<N>=tuntap[,<host tap dev>[,<mac>[,<gate IPv4>]]]
//! eth<N>=mcast[,<mac>[,<group>[,<port>[,<ttl>]]]]     defaults 239.192.168.1, 1102, 1
//! eth<N>=daemon[,<mac>[,<sock type>[,<ctl socket>]]]  defaults unix, /var/run/uml-utilities/uml_switch.ctl
//! eth<N>=slirp[,<mac>[,<helper>[,<arg>…]]]           default helper passt
//! eth<N>=vde[,<switch dir>[,<mac>[,<port>[,<group>[,<mode>[,<description>]]]]]]
//! vec<N>:transport=<tap|raw|gre|l2tpv3|fd>,<key>=<value>,…   (see [`crate::vector`])
//! ```
//!
//! Fields are positional and comma separated; an empty field keeps the default. A transport
//! matches when its name is followed by `,` or the end of the string. `ucast`, `slip`,
//! `pcap` and `ethertap` are recognized and refused with a clear error.
//!
//! `slirp`: UML ran the `slirp` program with the given arguments (`_` in an argument stands
//! for a space) and spoke SLIP to it. kuml runs a user-mode network stack with the same
//! syntax: `passt` (the default; frames over a stream socket, 4-byte big-endian length first,
//! as QEMU's `-netdev stream`) or `libslirp-helper` (one frame per datagram); the helper is
//! recognised by its file name. The arguments go to the helper: port forwards are passt's
//! `-t`/`-u` options, e.g. `eth0=slirp,,passt,-t,2222:22` forwards the host's TCP port 2222
//! to the guest's port 22.
//!
//! As in UML, an unusable MAC (bad syntax, multicast, all zero) is not fatal: it is dropped
//! with a warning (in [`NetSpec::warnings`]) and a generated MAC is used instead.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::mac::{check_mac, derive_mac, parse_mac, MacAddr};
use crate::vector::{parse_vector, render_vector, VectorConfig};

/// Default multicast group of the `mcast` transport.
pub const DEFAULT_MCAST_GROUP: Ipv4Addr = Ipv4Addr::new(239, 192, 168, 1);
/// Default UDP port of the `mcast` transport.
pub const DEFAULT_MCAST_PORT: u16 = 1102;
/// Default multicast TTL of the `mcast` transport.
pub const DEFAULT_MCAST_TTL: u8 = 1;
/// Default `uml_switch` control socket of Debian's UML kernel (upstream UML uses `/tmp/uml.ctl`).
pub const DEFAULT_DAEMON_CTL: &str = "/var/run/uml-utilities/uml_switch.ctl";
/// Longest host interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

const SUPPORTED: &str = "tuntap, mcast, daemon, slirp, vde";
const UNSUPPORTED: [&str; 4] = ["ucast", "slip", "pcap", "ethertap"];
const VECTOR_SUPPORTED: &str = "tap, raw, gre, l2tpv3, fd";
/// Default `slirp` helper.
pub const DEFAULT_SLIRP_HELPER: &str = "passt";
/// UML's most `slirp` helper arguments (`SLIRP_MAX_ARGS`, the helper included).
pub const SLIRP_MAX_ARGS: usize = 100;
/// UML's default `vde` port description.
pub const DEFAULT_VDE_DESCRIPTION: &str = "UML vde_transport";
/// Default permissions of the `vde` data socket (UML: `mode` 0700).
pub const DEFAULT_VDE_MODE: u32 = 0o700;

/// Errors of network option parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The argument does not start with `eth` / `vec`.
    #[error("'{0}' is not an eth<N>= or vec<N>: option")]
    NotNetOption(String),
    /// `eth<N>`: N is not a number.
    #[error("couldn't parse '{0}': bad device number")]
    BadDeviceNumber(String),
    /// `eth<N>` not followed by `=` (or `vec<N>` by `:`).
    #[error("couldn't parse '{arg}': expected '{sep}' after device number")]
    ExpectedSeparator {
        /// The whole argument.
        arg: String,
        /// `=` or `:`.
        sep: char,
    },
    /// No transport of that name exists.
    #[error("unknown network transport '{0}' (kuml supports {SUPPORTED})")]
    UnknownTransport(String),
    /// UML knows the transport, kuml does not implement it.
    #[error("the '{0}' network transport is not supported by kuml (use one of {SUPPORTED})")]
    Unsupported(String),
    /// `vec<N>:transport=` names no vector transport.
    #[error("unknown vector transport '{0}' (kuml supports {VECTOR_SUPPORTED})")]
    UnknownVectorTransport(String),
    /// UML's vector driver knows the transport (`hybrid`, `bess`), kuml does not implement it.
    #[error("the '{0}' vector transport is not supported by kuml (use one of {VECTOR_SUPPORTED})")]
    UnsupportedVector(String),
    /// More fields than the transport takes.
    #[error("{transport}: extra garbage on specification: '{extra}'")]
    ExtraFields {
        /// The transport name.
        transport: &'static str,
        /// The text of the extra fields.
        extra: String,
    },
    /// A `vec<N>:` token with a second `=` (UML's message).
    #[error("vector_setup - Couldn't parse '{0}'")]
    VectorSyntax(String),
    /// One field has a bad value.
    #[error("{transport}: bad {field} '{value}': {reason}")]
    BadField {
        /// The transport name.
        transport: &'static str,
        /// The field name (`port`, `ttl`, `gate`, …).
        field: &'static str,
        /// The text given.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The `mcast` transport's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McastConfig {
    /// Multicast group (`224.0.0.0/4`).
    pub group: Ipv4Addr,
    /// UDP port, never 0.
    pub port: u16,
    /// IP_MULTICAST_TTL.
    pub ttl: u8,
}

impl Default for McastConfig {
    fn default() -> Self {
        McastConfig {
            group: DEFAULT_MCAST_GROUP,
            port: DEFAULT_MCAST_PORT,
            ttl: DEFAULT_MCAST_TTL,
        }
    }
}

/// The `tuntap` transport's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TapConfig {
    /// An existing (or to-be-created, as TUNSETIFF does) tap name; `None`: kuml creates a
    /// `tapN` device and configures its host side, as UML's `uml_net` helper does.
    pub dev: Option<String>,
    /// Host-side IPv4 address of the created tap (`/32`, link up). Ignored (as in UML) when
    /// `dev` is given.
    pub gate: Option<Ipv4Addr>,
}

/// The `daemon` transport's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Path of the `uml_switch` control socket (socket type is always `unix`).
    pub ctl: PathBuf,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            ctl: PathBuf::from(DEFAULT_DAEMON_CTL),
        }
    }
}

/// How kuml talks to a `slirp` helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlirpProtocol {
    /// passt: a stream socket, each frame after its 4-byte big-endian length.
    Stream,
    /// libslirp-helper: a datagram socket, one frame per datagram.
    Datagram,
}

/// The `slirp` transport's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlirpConfig {
    /// The helper program (looked up in `$PATH` unless it has a `/`).
    pub helper: String,
    /// Its arguments after the ones kuml adds (`_` already replaced by a space).
    pub args: Vec<String>,
    /// The protocol, from the helper's file name.
    pub protocol: SlirpProtocol,
}

impl Default for SlirpConfig {
    fn default() -> Self {
        SlirpConfig {
            helper: DEFAULT_SLIRP_HELPER.to_string(),
            args: Vec::new(),
            protocol: SlirpProtocol::Stream,
        }
    }
}

/// The `vde` transport's parameters (libvdeplug's `vde_open` arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdeConfig {
    /// The switch's directory (its control socket is `<dir>/ctl`); `None`: libvdeplug's
    /// defaults (`$HOME/.vde2/stdsock`, `/var/run/vde.ctl`, `/tmp/vde.ctl`).
    pub switch: Option<PathBuf>,
    /// The switch port to ask for; 0: any.
    pub port: u32,
    /// Group owning the data socket.
    pub group: Option<String>,
    /// Permissions of the data socket.
    pub mode: u32,
    /// The port's description (shown by `vde_switch`'s `port/print`).
    pub description: String,
}

impl Default for VdeConfig {
    fn default() -> Self {
        VdeConfig {
            switch: None,
            port: 0,
            group: None,
            mode: DEFAULT_VDE_MODE,
            description: DEFAULT_VDE_DESCRIPTION.to_string(),
        }
    }
}

/// Which host transport backs the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `/dev/net/tun` tap device.
    Tap(TapConfig),
    /// UDP multicast hub (wire-compatible with UML and QEMU `-netdev socket,mcast=`).
    Mcast(McastConfig),
    /// A port on a `uml_switch` (protocol version 3).
    Daemon(DaemonConfig),
    /// A user-mode network stack (passt, libslirp-helper) kuml runs.
    Slirp(SlirpConfig),
    /// A port on a VDE switch (`vde_switch`).
    Vde(VdeConfig),
    /// One of UML's vector transports (`vec<N>:`).
    Vector(VectorConfig),
}

/// A parsed network interface specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The guest MAC when one was given and accepted.
    pub mac: Option<MacAddr>,
    /// The host transport.
    pub transport: Transport,
    /// Non-fatal problems UML would also only log (bad MAC dropped, ignored fields, …).
    pub warnings: Vec<String>,
}

impl NetSpec {
    /// The guest MAC: the configured one, or [`derive_mac`]`(umid, index)`.
    pub fn mac_or_derived(&self, umid: &str, index: u32) -> MacAddr {
        self.mac.unwrap_or_else(|| derive_mac(umid, index))
    }

    /// The option that configures interface `index` with this spec, for messages: `vec<N>`
    /// for UML's vector transports, else `eth<N>` (the guest sees `eth<N>` either way).
    pub fn option_name(&self, index: u32) -> String {
        match self.transport {
            Transport::Vector(_) => format!("vec{index}"),
            _ => format!("eth{index}"),
        }
    }
}

impl NetSpec {
    /// UML's boot-log line for the transport (printed after `Netdevice N (<mac>) : `), e.g.
    /// `mcast backend multicast address: 239.192.168.1:1102, TTL:1`.
    pub fn transport_line(&self) -> String {
        match &self.transport {
            Transport::Tap(t) => match t.gate {
                Some(g) if t.dev.is_none() => format!("TUN/TAP backend - IP = {g}"),
                _ => "TUN/TAP backend - ".to_string(),
            },
            Transport::Mcast(m) => format!(
                "mcast backend multicast address: {}:{}, TTL:{}",
                m.group, m.port, m.ttl
            ),
            Transport::Daemon(d) => format!(
                "daemon backend (uml_switch version 3) - unix:{}",
                d.ctl.display()
            ),
            Transport::Slirp(s) => {
                let mut line = format!("slirp backend - {}", s.helper);
                for a in &s.args {
                    line.push(' ');
                    line.push_str(a);
                }
                line
            }
            Transport::Vde(v) => format!(
                "vde backend - {}, {}",
                v.switch
                    .as_ref()
                    .map_or("(default socket)".to_string(), |p| p.display().to_string()),
                if v.port == 0 {
                    "undefined port".to_string()
                } else {
                    format!("port {}", v.port)
                }
            ),
            Transport::Vector(v) => v.describe(),
        }
    }
}

impl fmt::Display for NetSpec {
    /// The canonical `eth<N>=` value (all fields explicit), which parses back to `self`
    /// apart from warnings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mac = self.mac.map(|m| m.to_string()).unwrap_or_default();
        match &self.transport {
            Transport::Tap(t) => write!(
                f,
                "tuntap,{},{mac},{}",
                t.dev.as_deref().unwrap_or(""),
                t.gate.map(|g| g.to_string()).unwrap_or_default()
            ),
            Transport::Mcast(m) => write!(f, "mcast,{mac},{},{},{}", m.group, m.port, m.ttl),
            Transport::Daemon(d) => write!(f, "daemon,{mac},unix,{}", d.ctl.display()),
            Transport::Slirp(s) => {
                write!(f, "slirp,{mac},{}", s.helper)?;
                for a in &s.args {
                    write!(f, ",{}", a.replace(' ', "_"))?;
                }
                Ok(())
            }
            Transport::Vde(v) => write!(
                f,
                "vde,{},{mac},{},{},{:o},{}",
                v.switch
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                v.port,
                v.group.as_deref().unwrap_or(""),
                v.mode,
                v.description
            ),
            // The value of `vec<N>:`, not of `eth<N>=`.
            Transport::Vector(v) => f.write_str(&render_vector(v, self.mac)),
        }
    }
}

/// Parses a whole `eth<N>=<spec>` argument into the interface index and its spec.
pub fn parse_eth_arg(arg: &str) -> Result<(u32, NetSpec), SpecError> {
    let rest = arg
        .strip_prefix("eth")
        .ok_or_else(|| SpecError::NotNetOption(arg.to_string()))?;
    let (n, rest) = parse_index(rest).ok_or_else(|| SpecError::BadDeviceNumber(arg.into()))?;
    let value = rest
        .strip_prefix('=')
        .ok_or_else(|| SpecError::ExpectedSeparator {
            arg: arg.to_string(),
            sep: '=',
        })?;
    Ok((n, parse_net_spec(value)?))
}

/// Parses a whole `vec<N>:<key>=<value>,…` argument (see [`crate::vector`]). The guest sees
/// a virtio-net device, as for `eth<N>`.
pub fn parse_vec_arg(arg: &str) -> Result<(u32, NetSpec), SpecError> {
    let rest = arg
        .strip_prefix("vec")
        .ok_or_else(|| SpecError::NotNetOption(arg.to_string()))?;
    let (n, rest) = parse_index(rest).ok_or_else(|| SpecError::BadDeviceNumber(arg.into()))?;
    let value = rest
        .strip_prefix(':')
        .ok_or_else(|| SpecError::ExpectedSeparator {
            arg: arg.to_string(),
            sep: ':',
        })?;
    let (cfg, mac, warnings) = parse_vector(value)?;
    Ok((
        n,
        NetSpec {
            mac,
            transport: Transport::Vector(cfg),
            warnings,
        },
    ))
}

/// Parses the value of `eth<N>=` (the part after `=`).
pub fn parse_net_spec(value: &str) -> Result<NetSpec, SpecError> {
    let (name, fields) = match value.split_once(',') {
        Some((name, rest)) => (name, Some(rest)),
        None => (value, None),
    };
    let fields: Vec<&str> = fields.map(|f| f.split(',').collect()).unwrap_or_default();
    match name {
        "tuntap" => parse_tuntap(&fields),
        "mcast" => parse_mcast(&fields),
        "daemon" => parse_daemon(&fields),
        "slirp" => Ok(parse_slirp(&fields)),
        "vde" => parse_vde(&fields),
        n if UNSUPPORTED.contains(&n) => Err(SpecError::Unsupported(n.to_string())),
        n => Err(SpecError::UnknownTransport(n.to_string())),
    }
}

/// `simple_strtoul(.., 0)`: `0x` hex, leading `0` octal, else decimal. Returns the number
/// and the rest of the string, or `None` when there are no digits or it overflows.
fn parse_index(s: &str) -> Option<(u32, &str)> {
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        if h.starts_with(|c: char| c.is_ascii_hexdigit()) {
            (16, h)
        } else {
            (8, s)
        }
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let n = u32::from_str_radix(&digits[..end], radix).ok()?;
    Some((n, &digits[end..]))
}

fn bad(
    transport: &'static str,
    field: &'static str,
    value: &str,
    reason: &'static str,
) -> SpecError {
    SpecError::BadField {
        transport,
        field,
        value: value.to_string(),
        reason,
    }
}

fn extra(transport: &'static str, fields: &[&str], max: usize) -> Result<(), SpecError> {
    if fields.len() > max {
        return Err(SpecError::ExtraFields {
            transport,
            extra: fields[max..].join(","),
        });
    }
    Ok(())
}

fn field<'a>(fields: &[&'a str], i: usize) -> Option<&'a str> {
    fields.get(i).copied().filter(|f| !f.is_empty())
}

/// UML's MAC rule: a usable MAC is taken, anything else is dropped with a warning.
pub(crate) fn accept_mac(text: &str, warnings: &mut Vec<String>) -> Option<MacAddr> {
    match parse_mac(text).and_then(|m| check_mac(m).map(|w| (m, w))) {
        Ok((m, w)) => {
            warnings.extend(w);
            Some(m)
        }
        Err(e) => {
            warnings.push(format!(
                "{e}; choosing a generated ethernet address instead"
            ));
            None
        }
    }
}

pub(crate) fn check_ifname(transport: &'static str, d: &str) -> Result<String, SpecError> {
    if d.len() > MAX_IFNAME_LEN {
        return Err(bad(transport, "host tap dev", d, "longer than 15 bytes"));
    }
    if d == "." || d == ".." || d.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(bad(
            transport,
            "host tap dev",
            d,
            "not a valid interface name",
        ));
    }
    Ok(d.to_string())
}

fn parse_tuntap(fields: &[&str]) -> Result<NetSpec, SpecError> {
    const T: &str = "tuntap";
    extra(T, fields, 3)?;
    let mut warnings = Vec::new();
    let dev = field(fields, 0).map(|d| check_ifname(T, d)).transpose()?;
    let mac = field(fields, 1).and_then(|m| accept_mac(m, &mut warnings));
    let gate = field(fields, 2)
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .map_err(|_| bad(T, "gate", g, "invalid tap IP address"))
        })
        .transpose()?;
    if dev.is_some() && gate.is_some() {
        warnings.push("tuntap: the gate address is ignored for a given host tap device".into());
    }
    Ok(NetSpec {
        mac,
        transport: Transport::Tap(TapConfig { dev, gate }),
        warnings,
    })
}

fn parse_mcast(fields: &[&str]) -> Result<NetSpec, SpecError> {
    const T: &str = "mcast";
    extra(T, fields, 4)?;
    let mut warnings = Vec::new();
    let mac = field(fields, 0).and_then(|m| accept_mac(m, &mut warnings));
    let mut cfg = McastConfig::default();
    if let Some(g) = field(fields, 1) {
        let ip: Ipv4Addr = g
            .parse()
            .map_err(|_| bad(T, "group address", g, "not an IPv4 address"))?;
        if !ip.is_multicast() {
            return Err(bad(
                T,
                "group address",
                g,
                "not a multicast (224.0.0.0/4) address",
            ));
        }
        cfg.group = ip;
    }
    if let Some(p) = field(fields, 2) {
        cfg.port = decimal(p)
            .and_then(|v| u16::try_from(v).ok())
            .filter(|&v| v != 0)
            .ok_or_else(|| bad(T, "port", p, "expected a decimal number 1..65535"))?;
    }
    if let Some(t) = field(fields, 3) {
        cfg.ttl = decimal(t)
            .and_then(|v| u8::try_from(v).ok())
            .ok_or_else(|| bad(T, "ttl", t, "expected a decimal number 0..255"))?;
    }
    Ok(NetSpec {
        mac,
        transport: Transport::Mcast(cfg),
        warnings,
    })
}

fn parse_daemon(fields: &[&str]) -> Result<NetSpec, SpecError> {
    const T: &str = "daemon";
    let mut warnings = Vec::new();
    if fields.len() > 3 {
        warnings.push(format!(
            "daemon: ignoring data socket specification '{}'",
            fields[3..].join(",")
        ));
    }
    let mac = field(fields, 0).and_then(|m| accept_mac(m, &mut warnings));
    if let Some(t) = field(fields, 1) {
        if t != "unix" {
            return Err(bad(T, "sock_type", t, "only 'unix' is supported"));
        }
    }
    let mut cfg = DaemonConfig::default();
    if let Some(c) = field(fields, 2) {
        cfg.ctl = PathBuf::from(c);
    }
    Ok(NetSpec {
        mac,
        transport: Transport::Daemon(cfg),
        warnings,
    })
}

/// `slirp[,<mac>[,<helper>[,<arg>…]]]`, as UML's `slirp_setup`: every field after the MAC is
/// one word of the helper's command line, `_` standing for a space.
fn parse_slirp(fields: &[&str]) -> NetSpec {
    let mut warnings = Vec::new();
    let mac = field(fields, 0).and_then(|m| accept_mac(m, &mut warnings));
    let mut words: Vec<String> = fields.iter().skip(1).map(|w| w.replace('_', " ")).collect();
    if words.len() > SLIRP_MAX_ARGS {
        warnings.push("slirp_setup: truncating slirp arguments".to_string());
        words.truncate(SLIRP_MAX_ARGS);
    }
    let mut cfg = SlirpConfig::default();
    if let Some(helper) = words.first().filter(|h| !h.is_empty()) {
        cfg.helper = helper.clone();
    }
    cfg.args = words.into_iter().skip(1).collect();
    cfg.protocol = slirp_protocol(&cfg.helper);
    NetSpec {
        mac,
        transport: Transport::Slirp(cfg),
        warnings,
    }
}

/// The protocol a helper speaks, from its file name: libslirp-helper sends datagrams,
/// anything else is taken for passt (or a wrapper around it) and gets a stream.
pub fn slirp_protocol(helper: &str) -> SlirpProtocol {
    let name = helper.rsplit('/').next().unwrap_or(helper);
    if name.starts_with("libslirp-helper") {
        SlirpProtocol::Datagram
    } else {
        SlirpProtocol::Stream
    }
}

/// `vde[,<switch>[,<mac>[,<port>[,<group>[,<mode>[,<description>]]]]]]`, as UML's
/// `vde_setup` (the MAC is the second field; extra fields are ignored with a warning).
fn parse_vde(fields: &[&str]) -> Result<NetSpec, SpecError> {
    const T: &str = "vde";
    let mut warnings = Vec::new();
    if fields.len() > 6 {
        warnings.push(format!(
            "vde_setup - Ignoring extra data :'{}'",
            fields[6..].join(",")
        ));
    }
    let mut cfg = VdeConfig {
        switch: field(fields, 0).map(PathBuf::from),
        ..VdeConfig::default()
    };
    let mac = field(fields, 1).and_then(|m| accept_mac(m, &mut warnings));
    if let Some(p) = field(fields, 2) {
        cfg.port = decimal(p)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| v < 1 << 24)
            .ok_or_else(|| bad(T, "port", p, "vde_setup - Bad port"))?;
    }
    cfg.group = field(fields, 3).map(str::to_string);
    if let Some(m) = field(fields, 4) {
        cfg.mode = u32::from_str_radix(m, 8)
            .ok()
            .filter(|&v| v <= 0o7777 && !m.starts_with('+'))
            .ok_or_else(|| bad(T, "mode", m, "vde_setup - Bad mode (octal permissions)"))?;
    }
    if let Some(d) = field(fields, 5) {
        cfg.description = d.to_string();
    }
    Ok(NetSpec {
        mac,
        transport: Transport::Vde(cfg),
        warnings,
    })
}

fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::VectorKind;
    use proptest::prelude::*;

    fn mcast(s: &str) -> McastConfig {
        match parse_net_spec(s).unwrap().transport {
            Transport::Mcast(m) => m,
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn mcast_defaults_and_fields() {
        assert_eq!(mcast("mcast"), McastConfig::default());
        assert_eq!(mcast("mcast,,,,"), McastConfig::default());
        assert_eq!(
            mcast("mcast,,239.192.168.1,1103,1"),
            McastConfig {
                port: 1103,
                ..Default::default()
            }
        );
        let s = parse_net_spec("mcast,fe:fd:0:0:0:1,224.1.2.3,9,3").unwrap();
        assert_eq!(s.mac, Some(MacAddr([0xfe, 0xfd, 0, 0, 0, 1])));
        assert_eq!(
            s.transport,
            Transport::Mcast(McastConfig {
                group: Ipv4Addr::new(224, 1, 2, 3),
                port: 9,
                ttl: 3
            })
        );
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn mcast_errors_name_the_field() {
        let e = parse_net_spec("mcast,,,99999").unwrap_err();
        assert_eq!(
            e.to_string(),
            "mcast: bad port '99999': expected a decimal number 1..65535"
        );
        for (s, f) in [
            ("mcast,,,0", "port"),
            ("mcast,,,12x", "port"),
            ("mcast,,,+12", "port"),
            ("mcast,,,,256", "ttl"),
            ("mcast,,,,-1", "ttl"),
            ("mcast,,10.0.0.1", "group address"),
            ("mcast,,host", "group address"),
        ] {
            match parse_net_spec(s) {
                Err(SpecError::BadField { field, .. }) => assert_eq!(field, f, "{s}"),
                r => panic!("{s}: {r:?}"),
            }
        }
        assert_eq!(
            parse_net_spec("mcast,,,,,x").unwrap_err().to_string(),
            "mcast: extra garbage on specification: 'x'"
        );
    }

    #[test]
    fn bad_mac_is_a_warning_as_in_uml() {
        for m in ["zz", "01:00:5e:0:0:1", "0:0:0:0:0:0"] {
            let s = parse_net_spec(&format!("mcast,{m}")).unwrap();
            assert_eq!(s.mac, None);
            assert_eq!(s.warnings.len(), 1, "{m}");
        }
        let s = parse_net_spec("mcast,00:16:3e:0:0:1").unwrap();
        assert!(s.mac.is_some());
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn tuntap_forms() {
        let s = parse_net_spec("tuntap,,,192.168.0.254").unwrap();
        assert_eq!(
            s.transport,
            Transport::Tap(TapConfig {
                dev: None,
                gate: Some(Ipv4Addr::new(192, 168, 0, 254))
            })
        );
        let s = parse_net_spec("tuntap,umltap0").unwrap();
        assert_eq!(
            s.transport,
            Transport::Tap(TapConfig {
                dev: Some("umltap0".into()),
                gate: None
            })
        );
        assert_eq!(
            parse_net_spec("tuntap").unwrap().transport,
            Transport::Tap(TapConfig::default())
        );
        assert!(matches!(
            parse_net_spec("tuntap,,,1.2.3"),
            Err(SpecError::BadField { field: "gate", .. })
        ));
        assert!(matches!(
            parse_net_spec("tuntap,a234567890123456"),
            Err(SpecError::BadField {
                field: "host tap dev",
                ..
            })
        ));
        assert!(matches!(
            parse_net_spec("tuntap,a,,,x"),
            Err(SpecError::ExtraFields { .. })
        ));
    }

    #[test]
    fn daemon_forms() {
        let s = parse_net_spec("daemon").unwrap();
        assert_eq!(s.transport, Transport::Daemon(DaemonConfig::default()));
        let s = parse_net_spec("daemon,,unix,/tmp/sw/ctl").unwrap();
        assert_eq!(
            s.transport,
            Transport::Daemon(DaemonConfig {
                ctl: "/tmp/sw/ctl".into()
            })
        );
        let s = parse_net_spec("daemon,,,/c,/data").unwrap();
        assert_eq!(s.warnings.len(), 1);
        assert!(matches!(
            parse_net_spec("daemon,,inet,x"),
            Err(SpecError::BadField {
                field: "sock_type",
                ..
            })
        ));
    }

    #[test]
    fn other_transports() {
        for t in ["ucast,,10.0.0.1", "pcap,eth0", "slip", "ethertap,x"] {
            assert!(
                matches!(parse_net_spec(t), Err(SpecError::Unsupported(_))),
                "{t}"
            );
        }
        let e = parse_net_spec("mcastx").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown network transport 'mcastx' (kuml supports tuntap, mcast, daemon, slirp, vde)"
        );
        assert!(matches!(
            parse_net_spec(""),
            Err(SpecError::UnknownTransport(_))
        ));
    }

    #[test]
    fn eth_arg() {
        assert_eq!(parse_eth_arg("eth0=mcast").unwrap().0, 0);
        assert_eq!(parse_eth_arg("eth0x10=mcast").unwrap().0, 16);
        assert_eq!(parse_eth_arg("eth010=mcast").unwrap().0, 8);
        assert_eq!(parse_eth_arg("eth12=mcast").unwrap().0, 12);
        assert!(matches!(
            parse_eth_arg("eth=mcast"),
            Err(SpecError::BadDeviceNumber(_))
        ));
        assert!(matches!(
            parse_eth_arg("ethx=mcast"),
            Err(SpecError::BadDeviceNumber(_))
        ));
        assert!(matches!(
            parse_eth_arg("eth0mcast"),
            Err(SpecError::ExpectedSeparator { sep: '=', .. })
        ));
        assert!(matches!(
            parse_eth_arg("ubd0=x"),
            Err(SpecError::NotNetOption(_))
        ));
    }

    #[test]
    fn vec_arg() {
        let (n, s) =
            parse_vec_arg("vec2:transport=tap,ifname=umltap0,mac=02:00:00:00:00:07").unwrap();
        assert_eq!(n, 2);
        let Transport::Vector(v) = &s.transport else {
            panic!("{s:?}")
        };
        assert_eq!(
            v.kind,
            VectorKind::Tap {
                ifname: Some("umltap0".into())
            }
        );
        assert_eq!(s.mac, Some(MacAddr([2, 0, 0, 0, 0, 7])));
        assert_eq!(
            s.to_string(),
            "transport=tap,ifname=umltap0,mac=02:00:00:00:00:07"
        );
        assert_eq!(
            parse_vec_arg("vec0:transport=tap,a=b=c")
                .unwrap_err()
                .to_string(),
            "vector_setup - Couldn't parse 'transport=tap,a=b=c'"
        );
        assert!(matches!(
            parse_vec_arg("vec0=transport=tap"),
            Err(SpecError::ExpectedSeparator { sep: ':', .. })
        ));
    }

    #[test]
    fn slirp_forms() {
        let slirp = |s: &str| match parse_net_spec(s).unwrap().transport {
            Transport::Slirp(c) => c,
            t => panic!("{t:?}"),
        };
        assert_eq!(slirp("slirp"), SlirpConfig::default());
        assert_eq!(slirp("slirp,,"), SlirpConfig::default());
        let c = slirp("slirp,,passt,-t,2222:22,--dns-forward_10.0.2.3");
        assert_eq!(c.helper, "passt");
        assert_eq!(c.args, ["-t", "2222:22", "--dns-forward 10.0.2.3"]);
        assert_eq!(c.protocol, SlirpProtocol::Stream);
        let c = slirp("slirp,02:00:00:00:00:01,/usr/bin/libslirp-helper,--disable-ipv6");
        assert_eq!(c.protocol, SlirpProtocol::Datagram);
        let many = format!("slirp,,passt{}", ",-q".repeat(120));
        let s = parse_net_spec(&many).unwrap();
        assert_eq!(s.warnings, ["slirp_setup: truncating slirp arguments"]);
        assert_eq!(
            s.transport_line(),
            format!("slirp backend - passt{}", " -q".repeat(99))
        );
    }

    #[test]
    fn vde_forms() {
        let vde = |s: &str| match parse_net_spec(s).unwrap().transport {
            Transport::Vde(c) => c,
            t => panic!("{t:?}"),
        };
        assert_eq!(vde("vde"), VdeConfig::default());
        let c = vde("vde,/tmp/sw,,5,kvm,0770,my port");
        assert_eq!(c.switch, Some(PathBuf::from("/tmp/sw")));
        assert_eq!((c.port, c.mode), (5, 0o770));
        assert_eq!(c.group.as_deref(), Some("kvm"));
        assert_eq!(c.description, "my port");
        let s = parse_net_spec("vde,/tmp/sw,fe:fd:0:0:0:1,,,,,x,y").unwrap();
        assert_eq!(s.mac, Some(MacAddr([0xfe, 0xfd, 0, 0, 0, 1])));
        assert_eq!(s.warnings, ["vde_setup - Ignoring extra data :'x,y'"]);
        for (t, f) in [
            ("vde,/s,,x", "port"),
            ("vde,/s,,,,9", "mode"),
            ("vde,/s,,16777216", "port"),
        ] {
            match parse_net_spec(t) {
                Err(SpecError::BadField { field, .. }) => assert_eq!(field, f, "{t}"),
                r => panic!("{t}: {r:?}"),
            }
        }
        assert_eq!(
            parse_net_spec("vde,/tmp/sw").unwrap().transport_line(),
            "vde backend - /tmp/sw, undefined port"
        );
    }

    #[test]
    fn transport_lines_match_uml() {
        let line = |s| parse_net_spec(s).unwrap().transport_line();
        assert_eq!(
            line("mcast"),
            "mcast backend multicast address: 239.192.168.1:1102, TTL:1"
        );
        assert_eq!(
            line("daemon,,unix,/tmp/c"),
            "daemon backend (uml_switch version 3) - unix:/tmp/c"
        );
        assert_eq!(line("tuntap,tap0"), "TUN/TAP backend - ");
        assert_eq!(line("tuntap,,,10.0.0.1"), "TUN/TAP backend - IP = 10.0.0.1");
    }

    #[test]
    fn mac_or_derived() {
        let s = parse_net_spec("mcast").unwrap();
        assert_eq!(s.mac_or_derived("u", 1), derive_mac("u", 1));
        let s = parse_net_spec("mcast,fe:fd:1:2:3:4").unwrap();
        assert_eq!(s.mac_or_derived("u", 1).to_string(), "fe:fd:01:02:03:04");
    }

    fn arb_spec() -> impl Strategy<Value = NetSpec> {
        let mac = proptest::option::of(
            any::<[u8; 5]>().prop_map(|b| MacAddr([0x02, b[0], b[1], b[2], b[3], b[4]])),
        );
        let tap = (
            proptest::option::of("[a-z][a-z0-9]{0,14}"),
            proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        )
            .prop_map(|(dev, gate)| Transport::Tap(TapConfig { dev, gate }));
        let mc =
            (224u8..240, any::<[u8; 3]>(), 1u16.., any::<u8>()).prop_map(|(a, b, port, ttl)| {
                Transport::Mcast(McastConfig {
                    group: Ipv4Addr::new(a, b[0], b[1], b[2]),
                    port,
                    ttl,
                })
            });
        let d = "/[a-z/._-]{1,30}".prop_map(|p| Transport::Daemon(DaemonConfig { ctl: p.into() }));
        let sl = (
            "[a-z/-]{1,20}",
            proptest::collection::vec("[a-z0-9 :-]{1,10}", 0..5),
        )
            .prop_map(|(helper, args)| {
                Transport::Slirp(SlirpConfig {
                    protocol: slirp_protocol(&helper),
                    helper,
                    args,
                })
            });
        let vde = (
            proptest::option::of("/[a-z/._-]{1,30}"),
            0u32..1 << 24,
            proptest::option::of("[a-z]{1,8}"),
            0u32..0o7777,
            "[a-zA-Z0-9 ]{1,20}",
        )
            .prop_map(|(switch, port, group, mode, description)| {
                Transport::Vde(VdeConfig {
                    switch: switch.map(PathBuf::from),
                    port,
                    group,
                    mode,
                    description,
                })
            });
        (mac, prop_oneof![tap, mc, d, sl, vde]).prop_map(|(mac, transport)| NetSpec {
            mac,
            transport,
            warnings: vec![],
        })
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(spec in arb_spec()) {
            let mut back = parse_net_spec(&spec.to_string()).unwrap();
            back.warnings.clear();
            prop_assert_eq!(back, spec);
        }

        #[test]
        fn never_panics(s in "(eth|vec)?[0-9x]{0,3}[=:]?(tuntap|mcast|daemon|vde|transport=tap)?[,:=a-z0-9./]{0,40}") {
            let _ = parse_eth_arg(&s);
            let _ = parse_vec_arg(&s);
            let _ = parse_net_spec(&s);
        }

        #[test]
        fn never_panics_any(s in ".{0,60}") {
            let _ = parse_eth_arg(&s);
            let _ = parse_vec_arg(&s);
            let _ = parse_net_spec(&s);
        }
    }
}
