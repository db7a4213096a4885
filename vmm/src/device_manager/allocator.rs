//! PURE: first-fit allocation of aligned ranges from a fixed window (GSIs, BAR addresses),
//! with every range given back reusable at once.

use std::collections::BTreeMap;

/// Ranges handed out from `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeAllocator {
    start: u64,
    end: u64,
    /// Allocated ranges: start -> length.
    used: BTreeMap<u64, u64>,
}

impl RangeAllocator {
    /// An allocator for `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        RangeAllocator {
            start,
            end,
            used: BTreeMap::new(),
        }
    }

    /// The lowest free range of `len` (> 0) units starting at a multiple of `align` (a power of
    /// two); `None` when no gap is large enough.
    pub fn allocate(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let mut candidate = self.start.checked_next_multiple_of(align)?;
        for (&base, &used_len) in &self.used {
            if candidate.checked_add(len)? <= base {
                break;
            }
            candidate = candidate.max(
                base.checked_add(used_len)?
                    .checked_next_multiple_of(align)?,
            );
        }
        if candidate.checked_add(len)? > self.end {
            return None;
        }
        self.used.insert(candidate, len);
        Some(candidate)
    }

    /// Gives back the range that starts at `base`; false if none does.
    pub fn free(&mut self, base: u64) -> bool {
        self.used.remove(&base).is_some()
    }

    /// Units allocated now.
    pub fn in_use(&self) -> u64 {
        self.used.values().sum()
    }

    /// Ranges allocated now.
    pub fn ranges(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_fit_and_reuse() {
        let mut a = RangeAllocator::new(24, 40);
        assert_eq!(a.allocate(4, 1), Some(24));
        assert_eq!(a.allocate(4, 1), Some(28));
        assert_eq!(a.allocate(4, 1), Some(32));
        assert!(a.free(28));
        assert!(!a.free(28));
        assert_eq!(a.allocate(2, 1), Some(28), "the gap is reused");
        assert_eq!(a.allocate(3, 1), Some(36));
        assert_eq!(a.allocate(2, 1), Some(30));
        assert_eq!(a.allocate(1, 1), Some(39));
        assert_eq!(a.allocate(1, 1), None, "full");
        assert_eq!(a.in_use(), 16);
    }

    #[test]
    fn alignment() {
        let mut a = RangeAllocator::new(0x1000, 0x10000);
        assert_eq!(a.allocate(0x100, 0x4000), Some(0x4000));
        assert_eq!(a.allocate(0x100, 0x4000), Some(0x8000));
        assert_eq!(
            a.allocate(0x100, 3),
            None,
            "alignment must be a power of two"
        );
        assert_eq!(a.allocate(0, 1), None);
        let mut top = RangeAllocator::new(u64::MAX - 4, u64::MAX);
        assert_eq!(top.allocate(8, 1), None, "no overflow at the top");
    }

    proptest! {
        #[test]
        fn ranges_never_overlap_and_all_come_back(
            ops in proptest::collection::vec((1u64..9, 0u32..4, any::<bool>()), 1..200)
        ) {
            let mut a = RangeAllocator::new(24, 4096);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (len, align_log, free_one) in ops {
                if free_one && !live.is_empty() {
                    let (base, _) = live.remove(0);
                    prop_assert!(a.free(base));
                } else if let Some(base) = a.allocate(len, 1 << align_log) {
                    prop_assert_eq!(base % (1 << align_log), 0);
                    prop_assert!(base >= 24 && base + len <= 4096);
                    for (b, l) in &live {
                        prop_assert!(base + len <= *b || b + l <= base);
                    }
                    live.push((base, len));
                }
            }
            for (base, _) in live {
                prop_assert!(a.free(base));
            }
            prop_assert_eq!(a.in_use(), 0);
            prop_assert_eq!(a.ranges(), 0);
        }
    }
}
