//! PURE: the value of `vec<N>:…` (UML's vector network driver) as a typed [`VectorConfig`].
//!
//! Grammar (UML `vector_kern.c`, `vector_user.c`, `vector_transports.c`): up to 20
//! `<key>=<value>` pairs separated by `,`; keys are exact; a token with a second `=` is
//! malformed. Options and their UML defaults:
//!
//! ```text
//! transport=tap     [ifname=<dev>]        (none: a new tapXXXXXX)   [ifup=<script>]
//! transport=raw     ifname=<dev>                                    [ifup=<script>]
//! transport=gre     dst=<host> [src=<addr>] [v6=1] [rx_key=<n>,tx_key=<n>] [sequence=1 [pin_sequence=1]]
//! transport=l2tpv3  dst=<host> [src=<addr>] [v6=1] rx_session=<n>,tx_session=<n>
//!                   [udp=1 srcport=<p> dstport=<p>] [rx_cookie=<n>,tx_cookie=<n> [cookie64=1]]
//!                   [counter=1 [pin_counter=1]]
//! transport=fd      fd=<n>
//! every transport:  [mac=<mac>] [mtu=576..65534 (1500)] [depth=<n> (64)] [vec=0]
//!                   [headroom=<n>] [gro=0|1] [bpffile=…] [bpfflash=…]
//! ```
//!
//! Where UML silently falls back to a default on a value it cannot parse (`mtu=abc` gives
//! 1500, `rx_key` without `tx_key` fails only when the interface opens), kuml refuses the
//! option with an error naming it. Numbers are read as UML reads them: `rx_key`, `tx_key`,
//! `rx_session`, `tx_session`, `rx_cookie` and `tx_cookie` like `kstrtoint(.., 0)` (decimal,
//! `0x` hex or `0` octal), the others in decimal; the flags (`v6`, `udp`, `sequence`, …) are
//! on when their number is above 0. `hybrid` and `bess` are known and refused; the BPF
//! options and `headroom` are accepted and ignored (kuml's virtio-net has no BPF loader and no
//! headroom to reserve); `gro=1` is refused because the guest's virtio-net takes no
//! oversized frames.

use std::fmt;

use crate::spec::{accept_mac, check_ifname, SpecError};
use crate::MacAddr;

/// UML's most `key=value` pairs in one `vec<N>:` option.
pub const MAX_ARGS: usize = 20;
/// Default vector I/O batch size (`depth=`), as UML's `DEFAULT_VECTOR_SIZE`.
pub const DEFAULT_DEPTH: usize = 64;
/// Largest `depth=` kuml accepts.
pub const MAX_DEPTH: usize = 1024;
/// Default MTU.
pub const DEFAULT_MTU: u16 = 1500;

/// A tunnel's two ends, as given (host names are resolved when the interface opens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Local address to bind (`src=`); `None`: any address.
    pub src: Option<String>,
    /// Remote address (`dst=`).
    pub dst: String,
    /// IPv6 (`v6=1`).
    pub v6: bool,
}

/// `transport=gre` (Ethernet over GRE, protocol 0x6558, as Linux's `gretap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreConfig {
    /// The two ends.
    pub ends: Endpoints,
    /// `(rx_key, tx_key)`: the key sent and the key received frames must carry.
    pub keys: Option<(u32, u32)>,
    /// `sequence=1`: a sequence number after the key.
    pub sequence: bool,
    /// `pin_sequence=1`: the sequence number is always 0.
    pub pin_sequence: bool,
}

/// The L2TPv3 cookie (`rx_cookie`/`tx_cookie`, 32 bits unless `cookie64=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cookie {
    /// 4-byte cookies.
    Bits32 {
        /// Expected on received frames.
        rx: u32,
        /// Sent.
        tx: u32,
    },
    /// 8-byte cookies.
    Bits64 {
        /// Expected on received frames.
        rx: u64,
        /// Sent.
        tx: u64,
    },
}

/// `transport=l2tpv3` (RFC 3931 Ethernet pseudowire, as Linux's `ip l2tp` and QEMU's
/// `-netdev l2tpv3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2tpv3Config {
    /// The two ends.
    pub ends: Endpoints,
    /// `udp=1`: over UDP `(srcport, dstport)`; `None`: IP protocol 115.
    pub udp: Option<(u16, u16)>,
    /// Session id received frames must carry.
    pub rx_session: u32,
    /// Session id sent.
    pub tx_session: u32,
    /// Cookies, if any.
    pub cookie: Option<Cookie>,
    /// `counter=1`: a 4-byte counter (the default L2-specific sublayer's place).
    pub counter: bool,
    /// `pin_counter=1`: the counter is always 0.
    pub pin_counter: bool,
}

/// Which vector transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VectorKind {
    /// A tap device (`ifname=`, or a new `tapXXXXXX`).
    Tap {
        /// The device name, if given.
        ifname: Option<String>,
    },
    /// An AF_PACKET socket on a host interface.
    Raw {
        /// The host interface.
        ifname: String,
    },
    /// Ethernet over GRE.
    Gre(GreConfig),
    /// Ethernet over L2TPv3.
    L2tpv3(L2tpv3Config),
    /// A descriptor the caller opened (`fd=`): one raw Ethernet frame per datagram.
    Fd {
        /// The descriptor number.
        fd: i32,
    },
}

/// A parsed `vec<N>:` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorConfig {
    /// The transport.
    pub kind: VectorKind,
    /// Frames per `recvmmsg`/`sendmmsg` call (`depth=`).
    pub depth: usize,
    /// Multi-frame I/O (`vec=0` turns it off).
    pub batch: bool,
    /// `mtu=` as given (the guest's virtio-net MTU stays 1500; see the warnings).
    pub mtu: u16,
    /// `ifup=`: a program run with the interface name once a tap or raw interface is open.
    pub ifup: Option<String>,
}

impl VectorConfig {
    /// The transport's name, as in `transport=`.
    pub fn transport_name(&self) -> &'static str {
        match self.kind {
            VectorKind::Tap { .. } => "tap",
            VectorKind::Raw { .. } => "raw",
            VectorKind::Gre(_) => "gre",
            VectorKind::L2tpv3(_) => "l2tpv3",
            VectorKind::Fd { .. } => "fd",
        }
    }

    /// A one-line description for the boot log.
    pub fn describe(&self) -> String {
        let io = if self.batch {
            format!("vector I/O, depth {}", self.depth)
        } else {
            "one frame per call".to_string()
        };
        let what = match &self.kind {
            VectorKind::Tap { ifname } => {
                format!("tap {}", ifname.as_deref().unwrap_or("(new tapXXXXXX)"))
            }
            VectorKind::Raw { ifname } => format!("raw socket on {ifname}"),
            VectorKind::Gre(g) => format!("gre {}", ends(&g.ends)),
            VectorKind::L2tpv3(l) => format!(
                "l2tpv3 {} session {}/{}{}",
                ends(&l.ends),
                l.rx_session,
                l.tx_session,
                match l.udp {
                    Some((s, d)) => format!(" udp {s}->{d}"),
                    None => " ip".to_string(),
                }
            ),
            VectorKind::Fd { fd } => format!("fd {fd}"),
        };
        format!("vector {what} ({io})")
    }
}

fn ends(e: &Endpoints) -> String {
    format!("{} -> {}", e.src.as_deref().unwrap_or("*"), e.dst)
}

/// The options of one `vec<N>:` value, in order.
struct Args<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    fn parse(value: &'a str) -> Result<Self, SpecError> {
        let mut pairs = Vec::new();
        for token in value.split(',').filter(|t| !t.is_empty()) {
            let mut kv = token.split('=');
            let (Some(k), Some(v), None) = (kv.next(), kv.next(), kv.next()) else {
                return Err(SpecError::VectorSyntax(value.to_string()));
            };
            if k.is_empty() {
                return Err(SpecError::VectorSyntax(value.to_string()));
            }
            pairs.push((k, v));
        }
        if pairs.len() > MAX_ARGS {
            return Err(bad("vec", "options", value, "more than 20 key=value pairs"));
        }
        Ok(Args { pairs })
    }

    /// The value of `key` (UML takes the first).
    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
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

/// `kstrtoint(.., 0)`-style unsigned number: `0x` hex, leading `0` octal, else decimal.
fn number_base0(s: &str) -> Option<u64> {
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (16, h)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A UML on/off option: a decimal number, on when above 0.
fn flag(args: &Args<'_>, t: &'static str, key: &'static str) -> Result<bool, SpecError> {
    match args.get(key) {
        None => Ok(false),
        Some(v) => decimal(v)
            .map(|n| n > 0)
            .ok_or_else(|| bad(t, key, v, "expected a decimal number (0 off, above 0 on)")),
    }
}

fn u32_base0(t: &'static str, key: &'static str, v: &str) -> Result<u32, SpecError> {
    number_base0(v)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            bad(
                t,
                key,
                v,
                "expected a 32-bit number (decimal, 0x hex or 0 octal)",
            )
        })
}

fn port(t: &'static str, key: &'static str, v: &str) -> Result<u16, SpecError> {
    decimal(v)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| bad(t, key, v, "expected a decimal port 1..65535"))
}

/// A pair of options that go together (`rx_key`/`tx_key`, …): both or neither.
fn pair<'a>(
    args: &Args<'a>,
    t: &'static str,
    rx: &'static str,
    tx: &'static str,
) -> Result<Option<(&'a str, &'a str)>, SpecError> {
    match (args.get(rx), args.get(tx)) {
        (None, None) => Ok(None),
        (Some(r), Some(x)) => Ok(Some((r, x))),
        (Some(r), None) => Err(bad(t, tx, r, "must be given together with the rx_ option")),
        (None, Some(x)) => Err(bad(t, rx, x, "must be given together with the tx_ option")),
    }
}

fn endpoints(args: &Args<'_>, t: &'static str) -> Result<Endpoints, SpecError> {
    let dst = args
        .get("dst")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad(t, "dst", "", "the remote address dst= is required"))?;
    Ok(Endpoints {
        src: args
            .get("src")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        dst: dst.to_string(),
        v6: flag(args, t, "v6")?,
    })
}

fn gre(args: &Args<'_>) -> Result<GreConfig, SpecError> {
    const T: &str = "gre";
    let keys = pair(args, T, "rx_key", "tx_key")?
        .map(|(r, x)| Ok::<_, SpecError>((u32_base0(T, "rx_key", r)?, u32_base0(T, "tx_key", x)?)))
        .transpose()?;
    let sequence = flag(args, T, "sequence")?;
    Ok(GreConfig {
        ends: endpoints(args, T)?,
        keys,
        sequence,
        pin_sequence: sequence && flag(args, T, "pin_sequence")?,
    })
}

fn l2tpv3(args: &Args<'_>) -> Result<L2tpv3Config, SpecError> {
    const T: &str = "l2tpv3";
    let (rx, tx) = pair(args, T, "rx_session", "tx_session")?.ok_or_else(|| {
        bad(
            T,
            "rx_session",
            "",
            "rx_session= and tx_session= are required",
        )
    })?;
    let rx_session = u32_base0(T, "rx_session", rx)?;
    let tx_session = u32_base0(T, "tx_session", tx)?;
    let cookie64 = flag(args, T, "cookie64")?;
    let cookie = pair(args, T, "rx_cookie", "tx_cookie")?
        .map(|(r, x)| {
            let read = |key, v: &str| {
                number_base0(v)
                    .ok_or_else(|| bad(T, key, v, "expected a number (decimal, 0x hex or 0 octal)"))
            };
            let (r, x) = (read("rx_cookie", r)?, read("tx_cookie", x)?);
            if cookie64 {
                return Ok(Cookie::Bits64 { rx: r, tx: x });
            }
            let fit = |key, n: u64, v: &str| {
                u32::try_from(n).map_err(|_| bad(T, key, v, "longer than 32 bits (add cookie64=1)"))
            };
            Ok::<_, SpecError>(Cookie::Bits32 {
                rx: fit("rx_cookie", r, args.get("rx_cookie").unwrap_or_default())?,
                tx: fit("tx_cookie", x, args.get("tx_cookie").unwrap_or_default())?,
            })
        })
        .transpose()?;
    let udp = if flag(args, T, "udp")? {
        let need = |key| {
            args.get(key)
                .ok_or_else(|| bad(T, key, "", "udp=1 needs srcport= and dstport="))
        };
        Some((
            port(T, "srcport", need("srcport")?)?,
            port(T, "dstport", need("dstport")?)?,
        ))
    } else {
        None
    };
    let counter = flag(args, T, "counter")?;
    Ok(L2tpv3Config {
        ends: endpoints(args, T)?,
        udp,
        rx_session,
        tx_session,
        cookie,
        counter,
        pin_counter: counter && flag(args, T, "pin_counter")?,
    })
}

/// Parses the value of `vec<N>:` (after the `:`). Returns the config, the MAC if one was
/// given and accepted, and warnings (a dropped MAC, ignored options).
pub fn parse_vector(
    value: &str,
) -> Result<(VectorConfig, Option<MacAddr>, Vec<String>), SpecError> {
    const T: &str = "vec";
    let args = Args::parse(value)?;
    let mut warnings = Vec::new();
    let transport = args
        .get("transport")
        .ok_or_else(|| bad(T, "transport", "", "transport=<name> is required"))?;
    let kind = match transport {
        "tap" => VectorKind::Tap {
            ifname: args
                .get("ifname")
                .filter(|i| !i.is_empty())
                .map(|i| check_ifname("tap", i))
                .transpose()?,
        },
        "raw" => VectorKind::Raw {
            ifname: check_ifname(
                "raw",
                args.get("ifname")
                    .filter(|i| !i.is_empty())
                    .ok_or_else(|| {
                        bad("raw", "ifname", "", "ifname=<host interface> is required")
                    })?,
            )?,
        },
        "gre" => VectorKind::Gre(gre(&args)?),
        "l2tpv3" => VectorKind::L2tpv3(l2tpv3(&args)?),
        "fd" => VectorKind::Fd {
            fd: args
                .get("fd")
                .and_then(decimal)
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| {
                    bad(
                        "fd",
                        "fd",
                        args.get("fd").unwrap_or_default(),
                        "fd open: bad or missing fd argument",
                    )
                })?,
        },
        t @ ("hybrid" | "bess") => return Err(SpecError::UnsupportedVector(t.to_string())),
        t => return Err(SpecError::UnknownVectorTransport(t.to_string())),
    };
    let mtu = match args.get("mtu") {
        None => DEFAULT_MTU,
        Some(v) => decimal(v)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (576..65535).contains(n))
            .ok_or_else(|| bad(T, "mtu", v, "expected a decimal number 576..65534"))?,
    };
    if mtu != DEFAULT_MTU {
        warnings.push(format!(
            "vec: mtu={mtu} ignored: kuml's virtio-net gives the guest an MTU of {DEFAULT_MTU}"
        ));
    }
    let depth = match args.get("depth") {
        None => DEFAULT_DEPTH,
        Some(v) => decimal(v)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=MAX_DEPTH).contains(n))
            .ok_or_else(|| bad(T, "depth", v, "expected a decimal number 1..1024"))?,
    };
    let batch = match args.get("vec") {
        None => true,
        Some(v) => decimal(v).map(|n| n != 0).ok_or_else(|| {
            bad(
                T,
                "vec",
                v,
                "expected a decimal number (0 turns vector I/O off)",
            )
        })?,
    };
    if let Some(v) = args.get("headroom") {
        decimal(v).ok_or_else(|| bad(T, "headroom", v, "expected a decimal number"))?;
    }
    if flag(&args, T, "gro")? {
        return Err(bad(
            T,
            "gro",
            args.get("gro").unwrap_or_default(),
            "kuml's virtio-net takes no frames above the MTU (use gro=0)",
        ));
    }
    for ignored in ["bpffile", "bpfflash"] {
        if args.get(ignored).is_some() {
            warnings.push(format!(
                "vec: {ignored}= ignored: kuml loads no BPF programs"
            ));
        }
    }
    const KNOWN: &[&str] = &[
        "transport",
        "mac",
        "mtu",
        "depth",
        "vec",
        "headroom",
        "gro",
        "bpffile",
        "bpfflash",
        "ifup",
        "ifname",
        "src",
        "dst",
        "srcport",
        "dstport",
        "v6",
        "udp",
        "rx_key",
        "tx_key",
        "sequence",
        "pin_sequence",
        "rx_session",
        "tx_session",
        "cookie64",
        "rx_cookie",
        "tx_cookie",
        "counter",
        "pin_counter",
        "fd",
    ];
    for (k, _) in &args.pairs {
        if !KNOWN.contains(k) {
            warnings.push(format!("vec: unknown option '{k}' ignored"));
        }
    }
    let ifup = args
        .get("ifup")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if ifup.is_some() && !matches!(kind, VectorKind::Tap { .. } | VectorKind::Raw { .. }) {
        warnings.push(format!("vec: ifup= ignored for transport={transport}"));
    }
    let mac = args.get("mac").and_then(|m| accept_mac(m, &mut warnings));
    Ok((
        VectorConfig {
            kind,
            depth,
            batch,
            mtu,
            ifup,
        },
        mac,
        warnings,
    ))
}

/// The canonical `vec<N>:` value of a config (all options UML would need), which parses
/// back to the same config.
pub fn render_vector(cfg: &VectorConfig, mac: Option<MacAddr>) -> String {
    let mut o: Vec<String> = vec![format!("transport={}", cfg.transport_name())];
    let mut kv = |k: &str, v: String| o.push(format!("{k}={v}"));
    let ends = |kv: &mut dyn FnMut(&str, String), e: &Endpoints| {
        kv("dst", e.dst.clone());
        if let Some(s) = &e.src {
            kv("src", s.clone());
        }
        if e.v6 {
            kv("v6", "1".into());
        }
    };
    match &cfg.kind {
        VectorKind::Tap { ifname } => {
            if let Some(i) = ifname {
                kv("ifname", i.clone());
            }
        }
        VectorKind::Raw { ifname } => kv("ifname", ifname.clone()),
        VectorKind::Gre(g) => {
            ends(&mut kv, &g.ends);
            if let Some((r, t)) = g.keys {
                kv("rx_key", r.to_string());
                kv("tx_key", t.to_string());
            }
            if g.sequence {
                kv("sequence", "1".into());
            }
            if g.pin_sequence {
                kv("pin_sequence", "1".into());
            }
        }
        VectorKind::L2tpv3(l) => {
            ends(&mut kv, &l.ends);
            kv("rx_session", l.rx_session.to_string());
            kv("tx_session", l.tx_session.to_string());
            if let Some((s, d)) = l.udp {
                kv("udp", "1".into());
                kv("srcport", s.to_string());
                kv("dstport", d.to_string());
            }
            match l.cookie {
                Some(Cookie::Bits32 { rx, tx }) => {
                    kv("rx_cookie", rx.to_string());
                    kv("tx_cookie", tx.to_string());
                }
                Some(Cookie::Bits64 { rx, tx }) => {
                    kv("cookie64", "1".into());
                    kv("rx_cookie", rx.to_string());
                    kv("tx_cookie", tx.to_string());
                }
                None => {}
            }
            if l.counter {
                kv("counter", "1".into());
            }
            if l.pin_counter {
                kv("pin_counter", "1".into());
            }
        }
        VectorKind::Fd { fd } => kv("fd", fd.to_string()),
    }
    if let Some(m) = mac {
        kv("mac", m.to_string());
    }
    if cfg.mtu != DEFAULT_MTU {
        kv("mtu", cfg.mtu.to_string());
    }
    if cfg.depth != DEFAULT_DEPTH {
        kv("depth", cfg.depth.to_string());
    }
    if !cfg.batch {
        kv("vec", "0".into());
    }
    if let Some(s) = &cfg.ifup {
        kv("ifup", s.clone());
    }
    o.join(",")
}

impl fmt::Display for VectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_vector(self, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> VectorConfig {
        parse_vector(s).unwrap_or_else(|e| panic!("{s}: {e}")).0
    }

    fn field_of(s: &str) -> &'static str {
        match parse_vector(s) {
            Err(SpecError::BadField { field, .. }) => field,
            r => panic!("{s}: {r:?}"),
        }
    }

    #[test]
    fn defaults_follow_uml() {
        let c = parse("transport=tap");
        assert_eq!(c.kind, VectorKind::Tap { ifname: None });
        assert_eq!((c.depth, c.batch, c.mtu), (64, true, 1500));
        let c = parse("transport=raw,ifname=veth0,vec=0,depth=8");
        assert_eq!(
            c.kind,
            VectorKind::Raw {
                ifname: "veth0".into()
            }
        );
        assert_eq!((c.depth, c.batch), (8, false));
    }

    #[test]
    fn gre_options() {
        let c = parse("transport=gre,src=10.0.0.1,dst=10.0.0.2,rx_key=0x10,tx_key=010,sequence=1,pin_sequence=1");
        let VectorKind::Gre(g) = c.kind else { panic!() };
        assert_eq!(
            g.keys,
            Some((16, 8)),
            "0x hex and 0 octal, as kstrtoint(.., 0)"
        );
        assert!(g.sequence && g.pin_sequence);
        assert_eq!(g.ends.src.as_deref(), Some("10.0.0.1"));
        assert_eq!(field_of("transport=gre,dst=h,rx_key=1"), "tx_key");
        assert_eq!(field_of("transport=gre,dst=h,tx_key=1"), "rx_key");
        assert_eq!(field_of("transport=gre"), "dst");
        assert_eq!(field_of("transport=gre,dst=h,rx_key=x,tx_key=1"), "rx_key");
        assert_eq!(field_of("transport=gre,dst=h,v6=yes"), "v6");
    }

    #[test]
    fn l2tpv3_options() {
        let c = parse("transport=l2tpv3,dst=10.0.0.2,rx_session=0xffffffff,tx_session=0xffffffff,udp=1,srcport=1701,dstport=1702,cookie64=1,rx_cookie=0x0102030405060708,tx_cookie=1,counter=1");
        let VectorKind::L2tpv3(l) = c.kind else {
            panic!()
        };
        assert_eq!((l.rx_session, l.tx_session), (u32::MAX, u32::MAX));
        assert_eq!(l.udp, Some((1701, 1702)));
        assert_eq!(
            l.cookie,
            Some(Cookie::Bits64 {
                rx: 0x0102030405060708,
                tx: 1
            })
        );
        assert!(l.counter && !l.pin_counter);
        assert_eq!(field_of("transport=l2tpv3,dst=h"), "rx_session");
        assert_eq!(
            field_of("transport=l2tpv3,dst=h,rx_session=1"),
            "tx_session"
        );
        assert_eq!(
            field_of("transport=l2tpv3,dst=h,rx_session=1,tx_session=2,udp=1,srcport=1"),
            "dstport"
        );
        assert_eq!(
            field_of("transport=l2tpv3,dst=h,rx_session=1,tx_session=2,rx_cookie=0x100000000,tx_cookie=1"),
            "rx_cookie"
        );
        assert_eq!(
            field_of("transport=l2tpv3,dst=h,rx_session=1,tx_session=0x100000000"),
            "tx_session"
        );
    }

    #[test]
    fn fd_and_errors() {
        assert_eq!(parse("transport=fd,fd=3").kind, VectorKind::Fd { fd: 3 });
        let e = parse_vector("transport=fd").unwrap_err();
        assert!(
            e.to_string()
                .contains("fd open: bad or missing fd argument"),
            "{e}"
        );
        assert_eq!(field_of("transport=fd,fd=-1"), "fd");
        assert_eq!(field_of("transport=raw"), "ifname");
        assert_eq!(field_of("transport=tap,mtu=100"), "mtu");
        assert_eq!(field_of("transport=tap,depth=0"), "depth");
        assert_eq!(field_of("transport=tap,vec=x"), "vec");
        assert_eq!(field_of("transport=tap,gro=1"), "gro");
        assert_eq!(field_of("ifname=x"), "transport");
        assert!(matches!(
            parse_vector("transport=tap,ifname=a=b"),
            Err(SpecError::VectorSyntax(_))
        ));
        // The errors name the vector transports, not the eth<N>= ones.
        assert_eq!(
            parse_vector("transport=hybrid,ifname=x")
                .unwrap_err()
                .to_string(),
            "the 'hybrid' vector transport is not supported by kuml (use one of tap, raw, gre, \
             l2tpv3, fd)"
        );
        assert_eq!(
            parse_vector("transport=rawx,ifname=x")
                .unwrap_err()
                .to_string(),
            "unknown vector transport 'rawx' (kuml supports tap, raw, gre, l2tpv3, fd)"
        );
        let many = (0..21)
            .map(|i| format!("k{i}=1"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(field_of(&format!("transport=tap,{many}")), "options");
    }

    #[test]
    fn warnings() {
        let (_, mac, w) =
            parse_vector("transport=tap,mac=01:00:5e:00:00:01,bpffile=x,foo=1,mtu=9000").unwrap();
        assert_eq!(mac, None);
        assert_eq!(w.len(), 4, "{w:?}");
        let (_, mac, w) = parse_vector("transport=tap,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert!(w.is_empty());
    }

    fn arb_ends() -> impl Strategy<Value = Endpoints> {
        (
            proptest::option::of("[a-z0-9.]{1,12}"),
            "[a-z0-9.:]{1,12}",
            any::<bool>(),
        )
            .prop_map(|(src, dst, v6)| Endpoints { src, dst, v6 })
    }

    fn arb_kind() -> impl Strategy<Value = VectorKind> {
        let tap = proptest::option::of("[a-z][a-z0-9]{0,14}")
            .prop_map(|ifname| VectorKind::Tap { ifname });
        let raw = "[a-z][a-z0-9]{0,14}".prop_map(|ifname| VectorKind::Raw { ifname });
        let gre = (
            arb_ends(),
            proptest::option::of(any::<(u32, u32)>()),
            any::<(bool, bool)>(),
        )
            .prop_map(|(ends, keys, (s, p))| {
                VectorKind::Gre(GreConfig {
                    ends,
                    keys,
                    sequence: s,
                    pin_sequence: s && p,
                })
            });
        let cookie = prop_oneof![
            any::<(u32, u32)>().prop_map(|(rx, tx)| Cookie::Bits32 { rx, tx }),
            any::<(u64, u64)>().prop_map(|(rx, tx)| Cookie::Bits64 { rx, tx }),
        ];
        let l2 = (
            arb_ends(),
            proptest::option::of((1u16.., 1u16..)),
            any::<(u32, u32)>(),
            proptest::option::of(cookie),
            any::<(bool, bool)>(),
        )
            .prop_map(|(ends, udp, (rx, tx), cookie, (c, p))| {
                VectorKind::L2tpv3(L2tpv3Config {
                    ends,
                    udp,
                    rx_session: rx,
                    tx_session: tx,
                    cookie,
                    counter: c,
                    pin_counter: c && p,
                })
            });
        let fd = (0..i32::MAX).prop_map(|fd| VectorKind::Fd { fd });
        prop_oneof![tap, raw, gre, l2, fd]
    }

    proptest! {
        #[test]
        fn render_parse_roundtrip(
            kind in arb_kind(),
            depth in 1usize..=1024,
            batch in any::<bool>(),
            mac in proptest::option::of(any::<[u8; 5]>().prop_map(|b| MacAddr([2, b[0], b[1], b[2], b[3], b[4]]))),
        ) {
            let cfg = VectorConfig { kind, depth, batch, mtu: DEFAULT_MTU, ifup: None };
            let text = render_vector(&cfg, mac);
            let (back, back_mac, _) = parse_vector(&text).unwrap();
            prop_assert_eq!(back, cfg);
            prop_assert_eq!(back_mac, mac);
        }

        #[test]
        fn never_panics(s in "[a-z_0-9=,.:x]{0,80}") {
            let _ = parse_vector(&s);
        }
    }
}
