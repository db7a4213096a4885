//! PURE: COW file geometry (`cow_sizes`, uml-formats.md §1.7).
//!
//! Where the bitmap and the data area sit, how long the bitmap is, and how many sectors it
//! covers. Reproduces the v1/v2 bitmap-length rounding bug. All arithmetic is checked, so a
//! hostile header gives an error rather than an overflow.

use crate::header::{CowHeader, CowVersion};

/// Layout of a COW file's bitmap and data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CowGeometry {
    /// Sector size from the header.
    pub sectorsize: u64,
    /// File offset of the bitmap.
    pub bitmap_offset: u64,
    /// Bitmap length in bytes.
    pub bitmap_len: u64,
    /// File offset of sector 0's data.
    pub data_offset: u64,
    /// Sectors of the backing file, rounded up (`ceil(size / sectorsize)`).
    pub sectors: u64,
    /// Sectors that have a bit (`min(sectors, 8 * bitmap_len)`); v1/v2 files leave the last
    /// `sectors % 8` without one.
    pub mapped_sectors: u64,
    /// Length the COW file has after creation: `data_offset + size`.
    pub file_len: u64,
}

/// Geometry that cannot be represented.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeometryError {
    /// Offsets overflow a file offset.
    #[error("COW geometry overflows: backing size {size}, sector size {sectorsize}, alignment {alignment}")]
    Overflow {
        /// Header size field.
        size: u64,
        /// Header sector size.
        sectorsize: u32,
        /// Header alignment.
        alignment: u32,
    },
    /// Sector size or alignment zero (a header that skipped validation).
    #[error("COW geometry needs a non-zero sector size and alignment (got {sectorsize} and {alignment})")]
    Zero {
        /// Header sector size.
        sectorsize: u32,
        /// Header alignment.
        alignment: u32,
    },
}

fn round_up(x: u64, align: u64) -> Option<u64> {
    x.checked_next_multiple_of(align)
}

/// `cow_sizes` for a decoded header.
pub fn cow_sizes(h: &CowHeader) -> Result<CowGeometry, GeometryError> {
    let (ss32, al32) = (h.sectorsize, h.alignment);
    if ss32 == 0 || al32 == 0 {
        return Err(GeometryError::Zero {
            sectorsize: ss32,
            alignment: al32,
        });
    }
    let ovf = || GeometryError::Overflow {
        size: h.size,
        sectorsize: ss32,
        alignment: al32,
    };
    let ss = u64::from(ss32);
    let size = h.size;
    let bitmap_offset = h.bitmap_offset();
    let sectors = size.div_ceil(ss);
    let (bitmap_len, data_offset) = match h.version {
        CowVersion::V1 | CowVersion::V2 => {
            // (S + ss - 1) / (8 * ss): the historical rounding bug, reproduced.
            let bitmap_len = size.checked_add(ss - 1).ok_or_else(ovf)? / (8 * ss);
            let end = bitmap_offset.checked_add(bitmap_len).ok_or_else(ovf)?;
            (bitmap_len, round_up(end, ss).ok_or_else(ovf)?)
        }
        CowVersion::V3 | CowVersion::V3Broken => {
            let bitmap_len = sectors.div_ceil(8);
            let end = bitmap_offset.checked_add(bitmap_len).ok_or_else(ovf)?;
            (bitmap_len, round_up(end, u64::from(al32)).ok_or_else(ovf)?)
        }
    };
    let file_len = data_offset.checked_add(size).ok_or_else(ovf)?;
    // Every byte we may touch must be a valid (signed) file offset.
    let last = data_offset
        .checked_add(sectors.checked_mul(ss).ok_or_else(ovf)?)
        .ok_or_else(ovf)?;
    if last > i64::MAX as u64 {
        return Err(ovf());
    }
    Ok(CowGeometry {
        sectorsize: ss,
        bitmap_offset,
        bitmap_len,
        data_offset,
        sectors,
        mapped_sectors: sectors.min(bitmap_len.saturating_mul(8)),
        file_len,
    })
}

impl CowGeometry {
    /// File offset of sector `i`'s data in the COW file.
    pub fn data_pos(&self, sector: u64) -> u64 {
        self.data_offset + sector * self.sectorsize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hdr(version: CowVersion, size: u64, ss: u32, align: u32) -> CowHeader {
        CowHeader {
            version,
            backing_file: b"/b".to_vec(),
            mtime: 0,
            size,
            sectorsize: ss,
            alignment: align,
        }
    }

    #[test]
    fn worked_examples_from_uml_formats_1_7() {
        // (version, size, align) -> (bitmap_offset, bitmap_len, data_offset, file_len)
        let cases = [
            (CowVersion::V3, 4608, 4096, (8192, 2, 12288, 16896)), // observed uml_mkcow
            (CowVersion::V3, 1 << 20, 4096, (8192, 256, 12288, 1_060_864)), // observed UML
            (CowVersion::V2, 4608, 512, (4120, 1, 4608, 9216)),    // rounding bug
            (CowVersion::V1, 4608, 512, (280, 1, 512, 5120)),      // rounding bug
            (
                CowVersion::V3,
                134_217_728,
                4096,
                (8192, 32768, 40960, 134_258_688),
            ), // §5.2
            (CowVersion::V3, 4608, 512, (4608, 2, 5120, 9728)),    // v3 alignment 512
            (CowVersion::V3Broken, 4608, 4096, (8192, 2, 12288, 16896)),
        ];
        for (v, size, align, want) in cases {
            let ss = if matches!(v, CowVersion::V1 | CowVersion::V2) {
                align
            } else {
                512
            };
            let g = cow_sizes(&hdr(v, size, ss, align)).unwrap();
            assert_eq!(
                (g.bitmap_offset, g.bitmap_len, g.data_offset, g.file_len),
                want,
                "{v:?}"
            );
        }
    }

    #[test]
    fn v1_v2_bug_leaves_tail_sectors_unmapped() {
        let g = cow_sizes(&hdr(CowVersion::V2, 4608, 512, 512)).unwrap();
        assert_eq!((g.sectors, g.mapped_sectors), (9, 8));
        let g = cow_sizes(&hdr(CowVersion::V3, 4608, 512, 4096)).unwrap();
        assert_eq!((g.sectors, g.mapped_sectors), (9, 9));
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(matches!(
            cow_sizes(&hdr(CowVersion::V3, u64::MAX, 512, 4096)),
            Err(GeometryError::Overflow { .. })
        ));
        assert!(matches!(
            cow_sizes(&hdr(CowVersion::V3, i64::MAX as u64, 1, 1 << 20)),
            Err(GeometryError::Overflow { .. })
        ));
        assert!(matches!(
            cow_sizes(&hdr(CowVersion::V3, 1, 0, 4096)),
            Err(GeometryError::Zero { .. })
        ));
    }

    proptest! {
        #[test]
        fn v3_invariants(size in 0u64..(1u64 << 50), align_shift in 0u32..=20) {
            let align = 1u32 << align_shift;
            let g = cow_sizes(&hdr(CowVersion::V3, size, 512, align)).unwrap();
            prop_assert!(g.bitmap_offset >= 4128);
            prop_assert_eq!(g.bitmap_offset % u64::from(align), 0);
            prop_assert_eq!(g.data_offset % u64::from(align), 0);
            prop_assert!(g.data_offset >= g.bitmap_offset + g.bitmap_len);
            prop_assert!(g.bitmap_len * 8 >= g.sectors);
            prop_assert_eq!(g.mapped_sectors, g.sectors);
        }

        #[test]
        fn never_panics(size: u64, ss: u32, align: u32, v in 0usize..4) {
            let v = [CowVersion::V1, CowVersion::V2, CowVersion::V3, CowVersion::V3Broken][v];
            let _ = cow_sizes(&hdr(v, size, ss, align));
        }
    }
}
