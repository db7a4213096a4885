//! PURE: memory sizes as Linux's `memparse` reads them (`64M`, `1g`, `4096`, `512k`).

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No digits, or a suffix other than K, M, G, T (either case).
    #[error("expected a number with an optional K, M, G or T suffix")]
    Syntax,
    /// The size does not fit in 64 bits.
    #[error("the size overflows")]
    Overflow,
    /// Zero bytes, or less than the guest kernel can boot in.
    #[error("at least 16M is needed")]
    TooSmall,
}

/// Smallest guest memory kuml accepts.
pub const MIN_SIZE: u64 = 16 << 20;

/// Parses a size with an optional binary suffix into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Syntax);
    }
    let shift = match suffix {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => return Err(SizeError::Syntax),
    };
    let n: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
    let bytes = n.checked_mul(1u64 << shift).ok_or(SizeError::Overflow)?;
    if bytes < MIN_SIZE {
        return Err(SizeError::TooSmall);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn suffixes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("65536k"), Ok(64 << 20));
        assert_eq!(parse_size("33554432"), Ok(32 << 20));
    }

    #[test]
    fn errors() {
        assert_eq!(parse_size("12Q"), Err(SizeError::Syntax));
        assert_eq!(parse_size("M"), Err(SizeError::Syntax));
        assert_eq!(parse_size(""), Err(SizeError::Syntax));
        assert_eq!(parse_size("1MB"), Err(SizeError::Syntax));
        assert_eq!(parse_size("-1M"), Err(SizeError::Syntax));
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::Overflow));
        assert_eq!(parse_size("99999999999T"), Err(SizeError::Overflow));
        assert_eq!(parse_size("1M"), Err(SizeError::TooSmall));
        assert_eq!(parse_size("0"), Err(SizeError::TooSmall));
    }

    proptest! {
        #[test]
        fn megabytes_round_trip(n in 16u64..1_000_000) {
            prop_assert_eq!(parse_size(&format!("{n}M")), Ok(n << 20));
        }

        #[test]
        fn never_panics(s in ".{0,30}") {
            let _ = parse_size(&s);
        }
    }
}
