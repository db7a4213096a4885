//! PURE: COW bitmap math (uml-formats.md §1.8).
//!
//! One bit per sector, byte-addressed, LSB first: sector `i` is `byte[i / 8] & (1 << (i % 8))`.
//! A set bit means the sector's data lives in the COW file.

use std::ops::Range;

/// Byte index and mask of sector `i`'s bit.
pub fn bit_pos(sector: u64) -> (u64, u8) {
    (sector / 8, 1u8 << (sector % 8))
}

/// Whether sector `i` is in the COW file. Sectors beyond the bitmap are not.
pub fn test_bit(bitmap: &[u8], sector: u64) -> bool {
    let (byte, mask) = bit_pos(sector);
    usize::try_from(byte)
        .ok()
        .and_then(|b| bitmap.get(b))
        .is_some_and(|v| v & mask != 0)
}

/// Byte range of the bitmap that holds the bits of sectors `start..start + count`
/// (clamped to the bitmap).
pub fn byte_range(bitmap_len: usize, start: u64, count: u64) -> Range<usize> {
    if count == 0 {
        return 0..0;
    }
    let clamp = |b: u64| usize::try_from(b).unwrap_or(usize::MAX).min(bitmap_len);
    let first = clamp(start / 8);
    let last = clamp(start.saturating_add(count - 1) / 8 + 1);
    first..last.max(first)
}

/// Set the bits of sectors `start..start + count` in `bitmap`, which must cover them.
///
/// Returns the range of bytes that changed (to write back to the file), or `None` if every
/// bit was already set. Sectors beyond the bitmap are ignored; callers check
/// [`covers`] first.
pub fn set_range(bitmap: &mut [u8], start: u64, count: u64) -> Option<Range<usize>> {
    let mut changed: Option<Range<usize>> = None;
    let end = start.saturating_add(count);
    let mut s = start;
    while s < end {
        let (byte, _) = bit_pos(s);
        let Some(slot) = usize::try_from(byte).ok().and_then(|b| bitmap.get_mut(b)) else {
            break;
        };
        // Bits of this byte inside [s, end).
        let lo = (s % 8) as u32;
        let hi = (end - (s - u64::from(lo))).min(8) as u32;
        let mask = (((1u16 << hi) - 1) as u8) & !(((1u16 << lo) - 1) as u8);
        if *slot & mask != mask {
            *slot |= mask;
            let b = byte as usize;
            changed = Some(match changed {
                Some(r) => r.start..b + 1,
                None => b..b + 1,
            });
        }
        s = (s - u64::from(lo)) + 8;
    }
    changed
}

/// Whether every sector in `start..start + count` has a bit in a bitmap of `bitmap_len` bytes.
pub fn covers(bitmap_len: usize, start: u64, count: u64) -> bool {
    start
        .checked_add(count)
        .is_some_and(|end| end <= (bitmap_len as u64).saturating_mul(8))
}

/// Split `start..start + count` into maximal runs of sectors with the same bit:
/// `(first_sector, sectors, in_cow)`.
pub fn runs(bitmap: &[u8], start: u64, count: u64) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let end = start.saturating_add(count);
    let mut s = start;
    while s < end {
        let bit = test_bit(bitmap, s);
        // Fast path over whole bytes that are all-0 or all-1.
        let step = if s % 8 == 0 && end - s >= 8 {
            match usize::try_from(s / 8).ok().and_then(|b| bitmap.get(b)) {
                Some(0xff) if bit => 8,
                Some(0) if !bit => 8,
                None => end - s,
                _ => 1,
            }
        } else {
            1
        };
        match out.last_mut() {
            Some(last) if last.2 == bit && last.0 + last.1 == s => last.1 += step,
            _ => out.push((s, step, bit)),
        }
        s += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn lsb_first() {
        // uml-behaviour.md §5.2: bitmap byte 0 = 0x3c means sectors 2..=5 are in the COW.
        let bm = [0x3c, 0x00];
        let set: Vec<u64> = (0..16).filter(|&i| test_bit(&bm, i)).collect();
        assert_eq!(set, vec![2, 3, 4, 5]);
        assert!(!test_bit(&bm, 1000));
    }

    #[test]
    fn set_range_reports_changed_bytes() {
        let mut bm = [0u8; 4];
        assert_eq!(set_range(&mut bm, 2, 4), Some(0..1));
        assert_eq!(bm, [0x3c, 0, 0, 0]);
        assert_eq!(set_range(&mut bm, 3, 2), None);
        assert_eq!(set_range(&mut bm, 7, 10), Some(0..3));
        assert_eq!(bm, [0xbc, 0xff, 0x01, 0]);
        assert_eq!(set_range(&mut bm, 30, 10), Some(3..4)); // clamped to the bitmap
        assert_eq!(bm[3], 0xc0);
    }

    #[test]
    fn runs_split() {
        let bm = [0x3c, 0xff, 0x00];
        assert_eq!(
            runs(&bm, 0, 24),
            vec![
                (0, 2, false),
                (2, 4, true),
                (6, 2, false),
                (8, 8, true),
                (16, 8, false)
            ]
        );
        assert_eq!(runs(&bm, 3, 2), vec![(3, 2, true)]);
        assert_eq!(runs(&bm, 20, 100), vec![(20, 100, false)]);
    }

    #[test]
    fn ranges_and_coverage() {
        assert_eq!(byte_range(10, 7, 2), 0..2);
        assert_eq!(byte_range(10, 0, 0), 0..0);
        assert_eq!(byte_range(1, 0, 100), 0..1);
        assert!(covers(2, 0, 16));
        assert!(!covers(2, 1, 16));
        assert!(!covers(2, u64::MAX, 2));
    }

    proptest! {
        #[test]
        fn random_sector_sets(ranges in proptest::collection::vec((0u64..512, 0u64..40), 0..20)) {
            let mut bm = vec![0u8; 64];
            let mut model = BTreeSet::new();
            for (start, count) in ranges {
                let before = bm.clone();
                let changed = set_range(&mut bm, start, count);
                for s in start..(start + count).min(512) {
                    model.insert(s);
                }
                // Exactly the reported bytes changed.
                for (i, (a, b)) in before.iter().zip(&bm).enumerate() {
                    let inside = changed.as_ref().is_some_and(|r| r.contains(&i));
                    prop_assert!(a == b || inside);
                }
                if let Some(r) = changed {
                    prop_assert!(r.start <= r.end && r.end <= bm.len());
                }
            }
            for s in 0..600 {
                prop_assert_eq!(test_bit(&bm, s), model.contains(&s));
            }
            // Runs tile the range and agree with test_bit.
            let rs = runs(&bm, 0, 600);
            let mut next = 0;
            for (first, n, bit) in rs {
                prop_assert_eq!(first, next);
                for s in first..first + n {
                    prop_assert_eq!(test_bit(&bm, s), bit);
                }
                next = first + n;
            }
            prop_assert_eq!(next, 600);
        }
    }
}
