//! PURE: Ethernet MAC addresses and UML's rules for them.
//!
//! * [`parse_mac`] follows UML's `setup_etheraddr`: six hex bytes separated by `:`, each
//!   read like `simple_strtoul(.., 16)` (one or two hex digits), nothing after the sixth.
//! * [`check_mac`] applies UML's acceptance rules: multicast and all-zero addresses are
//!   refused, a globally administered address is accepted with UML's warning.
//! * [`derive_mac`] is kuml's rule when no MAC is given: a stable, locally administered
//!   unicast address derived from the umid and the interface index (UML 6.1 picks a random
//!   one each boot; a stable one keeps guest interface configuration and host ARP caches
//!   valid across reboots).
//! * [`uml_ip_mac`] is UML's historical `fe:fd:<ipv4>` rule (2.4 – 2.6.12), offered for
//!   callers that want the UML-era behaviour.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Errors of MAC parsing and validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// The text is not six `:`-separated hex bytes.
    #[error("failed to parse '{0}' as an ethernet address")]
    Syntax(String),
    /// Bit 0 of the first byte is set.
    #[error("'{0}' is a multicast ethernet address, which a device may not use")]
    Multicast(String),
    /// All zero.
    #[error("'{0}' is an invalid (all-zero) ethernet address")]
    Zero(String),
}

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The six bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Group (multicast or broadcast) address: bit 0 of the first byte.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Locally administered: bit 1 of the first byte.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// All six bytes zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The destination address of an Ethernet frame (bytes 0..6), if the frame is long enough.
    pub fn dst_of(frame: &[u8]) -> Option<MacAddr> {
        frame.get(0..6).and_then(|b| b.try_into().ok()).map(MacAddr)
    }

    /// The source address of an Ethernet frame (bytes 6..12), if the frame is long enough.
    pub fn src_of(frame: &[u8]) -> Option<MacAddr> {
        frame
            .get(6..12)
            .and_then(|b| b.try_into().ok())
            .map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_mac(s)
    }
}

/// Parses `xx:xx:xx:xx:xx:xx` (each byte one or two hex digits, case-insensitive).
///
/// Only the syntax is checked; see [`check_mac`] for UML's acceptance rules.
pub fn parse_mac(s: &str) -> Result<MacAddr, MacError> {
    let syntax = || MacError::Syntax(s.to_string());
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in out.iter_mut() {
        let part = parts.next().ok_or_else(syntax)?;
        if part.is_empty() || part.len() > 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(syntax());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
    }
    if parts.next().is_some() {
        return Err(syntax());
    }
    Ok(MacAddr(out))
}

/// UML's acceptance rules for a configured MAC (`setup_etheraddr`).
///
/// Multicast and all-zero addresses are errors (UML then falls back to a generated address).
/// A globally administered address is accepted; the returned warning carries UML's advice.
pub fn check_mac(mac: MacAddr) -> Result<Option<String>, MacError> {
    if mac.is_multicast() {
        return Err(MacError::Multicast(mac.to_string()));
    }
    if mac.is_zero() {
        return Err(MacError::Zero(mac.to_string()));
    }
    if !mac.is_local() {
        let mut fixed = mac.0;
        fixed[0] |= 0x02;
        return Ok(Some(format!(
            "Warning: assigning a globally valid ethernet address ({mac}) to a device; \
             you should set the 2nd rightmost bit in the first byte of the MAC, i.e. {}",
            MacAddr(fixed)
        )));
    }
    Ok(None)
}

/// kuml's stable MAC for interface `index` of the VM named `umid`.
///
/// Derivation (documented so other tools can predict it): compute 64-bit FNV-1a
/// (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over the bytes
/// `"kuml-eth" ‖ umid ‖ 0x00 ‖ index as u32 little-endian`; take the first six bytes of the
/// big-endian hash; clear bit 0 (unicast) and set bit 1 (locally administered) of byte 0.
pub fn derive_mac(umid: &str, index: u32) -> MacAddr {
    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = BASIS;
    let bytes = b"kuml-eth"
        .iter()
        .chain(umid.as_bytes())
        .chain(&[0u8])
        .chain(&index.to_le_bytes())
        .copied()
        .collect::<Vec<u8>>();
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    let be = h.to_be_bytes();
    let mut mac = [be[0], be[1], be[2], be[3], be[4], be[5]];
    mac[0] = (mac[0] & !0x01) | 0x02;
    MacAddr(mac)
}

/// UML's historical rule: `fe:fd` followed by the interface's first IPv4 address.
pub fn uml_ip_mac(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0xfe, 0xfd, o[0], o[1], o[2], o[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_accepts_uml_forms() {
        assert_eq!(
            parse_mac("fe:fd:c0:a8:00:05").unwrap(),
            MacAddr([0xfe, 0xfd, 0xc0, 0xa8, 0, 5])
        );
        assert_eq!(
            parse_mac("2:0:A:b:c:D").unwrap(),
            MacAddr([2, 0, 0xa, 0xb, 0xc, 0xd])
        );
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "fe:fd",
            "fe:fd:00:00:00:00:00",
            "fe:fd:00:00:00:0g",
            "fe:fd:00:00:00:100",
            "fe:fd::00:00:00",
            "fe-fd-00-00-00-00",
            "fe:fd:00:00:00:00:",
            "+f:fd:00:00:00:00",
        ] {
            assert_eq!(parse_mac(bad), Err(MacError::Syntax(bad.into())), "{bad}");
        }
    }

    #[test]
    fn check_rules() {
        assert_eq!(check_mac(parse_mac("fe:fd:0:0:0:1").unwrap()), Ok(None));
        assert!(matches!(
            check_mac(parse_mac("01:00:5e:00:00:01").unwrap()),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(check_mac(MacAddr([0; 6])), Err(MacError::Zero(_))));
        let warn = check_mac(parse_mac("00:16:3e:00:00:01").unwrap())
            .unwrap()
            .unwrap();
        assert!(warn.contains("02:16:3e:00:00:01"), "{warn}");
    }

    #[test]
    fn derive_is_stable_and_documented() {
        // Pinned value: changing the derivation changes guests' MACs.
        assert_eq!(derive_mac("web1", 0), derive_mac("web1", 0));
        assert_ne!(derive_mac("web1", 0), derive_mac("web1", 1));
        assert_ne!(derive_mac("web1", 0), derive_mac("web2", 0));
        assert_eq!(derive_mac("web1", 0).to_string(), PINNED_WEB1_0);
    }
    const PINNED_WEB1_0: &str = "56:8d:b2:24:d7:7b";

    #[test]
    fn fe_fd_rule() {
        assert_eq!(
            uml_ip_mac(Ipv4Addr::new(192, 168, 0, 5)).to_string(),
            "fe:fd:c0:a8:00:05"
        );
    }

    #[test]
    fn frame_addresses() {
        let f = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 8, 6];
        assert_eq!(MacAddr::dst_of(&f), Some(MacAddr([1, 2, 3, 4, 5, 6])));
        assert_eq!(MacAddr::src_of(&f), Some(MacAddr([7, 8, 9, 10, 11, 12])));
        assert_eq!(MacAddr::src_of(&f[..11]), None);
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(b in any::<[u8; 6]>()) {
            let m = MacAddr(b);
            prop_assert_eq!(parse_mac(&m.to_string()), Ok(m));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = parse_mac(&s);
        }

        #[test]
        fn derived_is_local_unicast(umid in ".{0,40}", idx in any::<u32>()) {
            let m = derive_mac(&umid, idx);
            prop_assert!(m.is_local());
            prop_assert!(!m.is_multicast());
            prop_assert_eq!(check_mac(m), Ok(None));
        }
    }
}
