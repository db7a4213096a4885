//! PURE: the `ubd` option grammar (uml-formats.md §2.1), as `ubd_setup_common` parses it.
//!
//! ```text
//! ubd<unit><flags>=<file>[SEP<backing>[SEP<serial>]]     SEP := ',' | ':'
//! ubd=sync | ubd=<anything else>
//! ```

/// Number of ubd units (`MAX_DEV`).
pub const MAX_UNITS: usize = 16;

/// A parsed `ubd<unit>...=...` device option.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UbdSpec {
    /// Unit 0..=15 (`ubda`..`ubdp`).
    pub unit: usize,
    /// `r`: read-only.
    pub read_only: bool,
    /// `s`: open with `O_SYNC`.
    pub sync: bool,
    /// `d`: never look for a COW header; the file is a plain image.
    pub no_cow: bool,
    /// `c`: shared, take no host locks.
    pub shared: bool,
    /// `t`: no trim/discard.
    pub no_trim: bool,
    /// The image or COW file (`None` when the field was empty).
    pub file: Option<String>,
    /// The backing file of a COW file.
    pub backing: Option<String>,
    /// Serial number shown to the guest.
    pub serial: Option<String>,
}

impl UbdSpec {
    /// What `config ubd<n>` replies for this unit: `<file>` or `<file>,<backing>`.
    pub fn config_string(&self) -> String {
        match (&self.file, &self.backing) {
            (Some(f), Some(b)) => format!("{f},{b}"),
            (Some(f), None) => f.clone(),
            (None, _) => String::new(),
        }
    }
}

/// What a `ubd...` option means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UbdOption {
    /// `ubd=sync`: `O_SYNC` for every device.
    GlobalSync,
    /// `ubd=<other>`: UML logs "fake major not supported any more" and ignores it.
    FakeMajor(String),
    /// A device.
    Device(UbdSpec),
}

/// A rejected `ubd` option; `Display` is UML's exact text.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The unit is neither a number nor a letter.
    #[error("Couldn't parse device number")]
    BadUnit,
    /// Unit 16 or more (letters q..z included).
    #[error("Device number out of range")]
    UnitOutOfRange,
    /// The unit already has a file.
    #[error("Device is already configured")]
    AlreadyConfigured,
    /// A character other than a flag letter or '='.
    #[error("Expected '=' or flag letter (r, s, c, t or d)")]
    BadFlag,
    /// Seven flag letters followed by '='.
    #[error("Too many flags specified")]
    TooManyFlags,
    /// Seven flag letters and no '='.
    #[error("Missing '='")]
    MissingEquals,
    /// `d` together with a backing file.
    #[error("Can't specify both 'd' and a cow file")]
    NoCowWithBacking,
}

impl SpecError {
    /// The error code UML returns over mconsole for this error (`-EINVAL`, `-EBUSY` or 1).
    pub fn mconsole_err(&self) -> i32 {
        match self {
            SpecError::UnitOutOfRange => 1,
            SpecError::AlreadyConfigured => -libc::EBUSY,
            _ => -libc::EINVAL,
        }
    }
}

/// `simple_strtoul(s, &end, 0)` on a string starting with a digit: returns the value
/// (saturated on overflow) and the number of bytes consumed.
fn strtoul_base0(s: &[u8]) -> (u64, usize) {
    let (radix, skip) =
        if s.len() >= 3 && s[0] == b'0' && (s[1] | 0x20) == b'x' && s[2].is_ascii_hexdigit() {
            (16, 2)
        } else if s.first() == Some(&b'0') {
            (8, 0)
        } else {
            (10, 0)
        };
    let mut v: u64 = 0;
    let mut i = skip;
    while let Some(d) = s.get(i).and_then(|&c| (c as char).to_digit(radix)) {
        v = v
            .saturating_mul(u64::from(radix))
            .saturating_add(u64::from(d));
        i += 1;
    }
    (v, i)
}

/// `parse_unit`: a base-0 number or a letter `a`..`z`. Returns the unit and the rest.
/// The mconsole `remove` id parser is this function with the rest ignored.
pub fn parse_unit(s: &str) -> Result<(u64, &str), SpecError> {
    let b = s.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_digit() => {
            let (v, used) = strtoul_base0(b);
            Ok((v, &s[used..]))
        }
        Some(c) if c.is_ascii_lowercase() => Ok((u64::from(c - b'a'), &s[1..])),
        _ => Err(SpecError::BadUnit),
    }
}

/// Parse the text after `ubd` (`"0r=file,back"`, `"=sync"`), with no unit configured yet.
pub fn parse_ubd(after_ubd: &str) -> Result<UbdOption, SpecError> {
    parse_ubd_with(after_ubd, |_| false)
}

/// Parse the text after `ubd`; `is_configured(unit)` tells whether the unit already has a
/// file (checked where UML checks it: after the unit, before the flags).
pub fn parse_ubd_with(
    after_ubd: &str,
    is_configured: impl Fn(usize) -> bool,
) -> Result<UbdOption, SpecError> {
    if let Some(rest) = after_ubd.strip_prefix('=') {
        return Ok(if rest == "sync" {
            UbdOption::GlobalSync
        } else {
            UbdOption::FakeMajor(rest.to_string())
        });
    }
    let (unit, mut rest) = parse_unit(after_ubd)?;
    if unit >= MAX_UNITS as u64 {
        return Err(SpecError::UnitOutOfRange);
    }
    let unit = unit as usize;
    if is_configured(unit) {
        return Err(SpecError::AlreadyConfigured);
    }
    let mut spec = UbdSpec {
        unit,
        ..UbdSpec::default()
    };
    // Up to sizeof("rscdt=") == 7 characters: six flags and the '='.
    let mut found_eq = false;
    for _ in 0..7 {
        let Some(c) = rest.chars().next() else {
            return Err(SpecError::BadFlag);
        };
        rest = &rest[c.len_utf8()..];
        match c {
            'r' => spec.read_only = true,
            's' => spec.sync = true,
            'd' => spec.no_cow = true,
            'c' => spec.shared = true,
            't' => spec.no_trim = true,
            '=' => {
                found_eq = true;
                break;
            }
            _ => return Err(SpecError::BadFlag),
        }
    }
    if !found_eq {
        return Err(if rest.starts_with('=') {
            SpecError::TooManyFlags
        } else {
            SpecError::MissingEquals
        });
    }
    let mut fields = rest.splitn(4, [',', ':']);
    let mut field = || fields.next().filter(|f| !f.is_empty()).map(str::to_string);
    spec.file = field();
    spec.backing = field();
    spec.serial = field();
    if spec.backing.is_some() && spec.no_cow {
        return Err(SpecError::NoCowWithBacking);
    }
    Ok(UbdOption::Device(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(s: &str) -> UbdSpec {
        match parse_ubd(s).unwrap() {
            UbdOption::Device(d) => d,
            o => panic!("not a device: {o:?}"),
        }
    }

    #[test]
    fn grammar() {
        let d = dev("0=cow.img,base.img");
        assert_eq!(
            (d.unit, d.file.as_deref(), d.backing.as_deref()),
            (0, Some("cow.img"), Some("base.img"))
        );
        assert_eq!(d.config_string(), "cow.img,base.img");
        let d = dev("b=x:y,serial1");
        assert_eq!(
            (d.unit, d.backing.as_deref(), d.serial.as_deref()),
            (1, Some("y"), Some("serial1"))
        );
        let d = dev("1rsdct=File,,Serial");
        assert!(d.read_only && d.sync && d.no_cow && d.shared && d.no_trim);
        assert_eq!((d.backing, d.serial.as_deref()), (None, Some("Serial")));
        assert_eq!(dev("010=f").unit, 8); // octal
        assert_eq!(dev("0x1=f").unit, 1); // hex
        assert_eq!(dev("15=f").unit, 15);
        assert_eq!(dev("p=f").unit, 15);
        assert_eq!(dev("0rrrrrr=f").unit, 0); // six repeated flags are fine
        assert_eq!(dev("0=").file, None);
        assert_eq!(dev("0=a,b,c,d").serial.as_deref(), Some("c"));
        assert_eq!(parse_ubd("=sync"), Ok(UbdOption::GlobalSync));
        assert_eq!(parse_ubd("=98"), Ok(UbdOption::FakeMajor("98".into())));
    }

    #[test]
    fn errors_with_uml_texts() {
        let cases = [
            ("X", "Couldn't parse device number"),
            ("", "Couldn't parse device number"),
            ("20=x", "Device number out of range"),
            ("z=x", "Device number out of range"),
            ("1rx=x", "Expected '=' or flag letter (r, s, c, t or d)"),
            ("1", "Expected '=' or flag letter (r, s, c, t or d)"),
            ("08=x", "Expected '=' or flag letter (r, s, c, t or d)"),
            ("0rrrrrrr=x", "Too many flags specified"),
            ("0rrrrrrr", "Missing '='"),
            ("0d=a,b", "Can't specify both 'd' and a cow file"),
        ];
        for (s, msg) in cases {
            assert_eq!(parse_ubd(s).unwrap_err().to_string(), msg, "{s}");
        }
        assert_eq!(
            parse_ubd_with("1rx=x", |u| u == 1),
            Err(SpecError::AlreadyConfigured)
        );
        assert_eq!(SpecError::UnitOutOfRange.mconsole_err(), 1);
        assert_eq!(SpecError::BadFlag.mconsole_err(), -libc::EINVAL);
        assert_eq!(SpecError::AlreadyConfigured.mconsole_err(), -libc::EBUSY);
        // mconsole `remove ubd0x`: trailing garbage ignored, "0x" is 0.
        assert_eq!(parse_unit("0x"), Ok((0, "x")));
        assert_eq!(parse_unit("99999999999999999999999"), Ok((u64::MAX, "")));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = parse_ubd(&s);
        }

        #[test]
        fn round_trip(unit in 0usize..16, flags in "[rsdct]{0,6}", file in "[a-z/._]{1,20}",
                      backing in proptest::option::of("[a-z/._]{1,20}"), serial in proptest::option::of("[A-Z0-9]{1,8}")) {
            let mut s = format!("{unit}{flags}={file}");
            if backing.is_some() || serial.is_some() {
                s.push(',');
                s.push_str(backing.as_deref().unwrap_or(""));
            }
            if let Some(ser) = &serial {
                s.push(':');
                s.push_str(ser);
            }
            let r = parse_ubd(&s);
            if flags.contains('d') && backing.is_some() {
                prop_assert_eq!(r, Err(SpecError::NoCowWithBacking));
            } else {
                let UbdOption::Device(d) = r.unwrap() else { panic!() };
                prop_assert_eq!(d.unit, unit);
                prop_assert_eq!(d.file.as_deref(), Some(file.as_str()));
                prop_assert_eq!(d.backing, backing);
                prop_assert_eq!(d.serial, serial);
                prop_assert_eq!(d.read_only, flags.contains('r'));
                prop_assert_eq!(d.no_cow, flags.contains('d'));
            }
        }
    }
}
