//! PURE: the UML COW header codec.
//!
//! Reads the four layouts UML ever wrote (v1 in host order, v2 and v3 big-endian, and the
//! unpacked 64-bit "v3 broken" layout) and writes only packed v3 (uml-formats.md §1.2–§1.6).
//! Bytes in, a typed [`CowHeader`] out; no I/O.

use zerocopy::byteorder::{BigEndian, NativeEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `COW_MAGIC`: "OOOM" when stored big-endian.
pub const COW_MAGIC: u32 = 0x4F4F_4F4D;
/// The only version that is written.
pub const COW_VERSION: u32 = 3;
/// Length of the backing path field in a v1 header.
pub const PATH_LEN_V1: usize = 256;
/// Length of the backing path field in v2 and v3 headers.
pub const PATH_LEN_V3: usize = 4096;
/// Size of the packed v1 header (the bitmap follows immediately).
pub const V1_HEADER_LEN: usize = 280;
/// Size of the packed v2 header (the bitmap follows immediately).
pub const V2_HEADER_LEN: usize = 4120;
/// Size of the packed v3 header.
pub const V3_HEADER_LEN: usize = 4128;
/// Size of the unpacked 64-bit "v3 broken" header.
pub const V3_BROKEN_HEADER_LEN: usize = 4136;
/// How many bytes a reader should offer [`parse_header`]: `sizeof(union cow_header)`.
pub const MAX_HEADER_LEN: usize = V3_BROKEN_HEADER_LEN;
/// Sector size UML and `uml_mkcow` always write.
pub const SECTOR_SIZE: u32 = 512;
/// Alignment UML and `uml_mkcow` write (the x86 page size).
pub const DEFAULT_ALIGNMENT: u32 = 4096;
/// Largest sector size or alignment accepted from a file (sanity bound, 1 MiB).
pub const MAX_SECTOR_OR_ALIGN: u32 = 1 << 20;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawV1 {
    magic: U32<NativeEndian>,
    version: U32<NativeEndian>,
    backing_file: [u8; PATH_LEN_V1],
    mtime: U32<NativeEndian>,
    size: U64<NativeEndian>,
    sectorsize: U32<NativeEndian>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawV2 {
    magic: U32<BigEndian>,
    version: U32<BigEndian>,
    backing_file: [u8; PATH_LEN_V3],
    mtime: U32<BigEndian>,
    size: U64<BigEndian>,
    sectorsize: U32<BigEndian>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawV3 {
    magic: U32<BigEndian>,
    version: U32<BigEndian>,
    mtime: U32<BigEndian>,
    size: U64<BigEndian>,
    sectorsize: U32<BigEndian>,
    alignment: U32<BigEndian>,
    cow_format: U32<BigEndian>,
    backing_file: [u8; PATH_LEN_V3],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawV3Broken {
    magic: U32<BigEndian>,
    version: U32<BigEndian>,
    /// `htonl` was applied to the low 32 bits of a native `time_t`.
    mtime: U32<BigEndian>,
    mtime_pad: [u8; 4],
    size: U64<BigEndian>,
    sectorsize: U32<BigEndian>,
    alignment: U32<BigEndian>,
    cow_format: U32<BigEndian>,
    backing_file: [u8; PATH_LEN_V3],
    tail_pad: [u8; 4],
}

const _: () = assert!(std::mem::size_of::<RawV1>() == V1_HEADER_LEN);
const _: () = assert!(std::mem::size_of::<RawV2>() == V2_HEADER_LEN);
const _: () = assert!(std::mem::size_of::<RawV3>() == V3_HEADER_LEN);
const _: () = assert!(std::mem::size_of::<RawV3Broken>() == V3_BROKEN_HEADER_LEN);

/// Which on-disk layout a header used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CowVersion {
    /// v1: host byte order, 256-byte path, bitmap at 280.
    V1,
    /// v2: big-endian, 4096-byte path, bitmap at 4120.
    V2,
    /// v3: big-endian, packed, bitmap at `ROUND_UP(4128, alignment)`.
    V3,
    /// v3 as written by unpacked 64-bit builds before Dec 2005 (read-only support).
    V3Broken,
}

impl CowVersion {
    /// The number stored in the version field.
    pub fn number(self) -> u32 {
        match self {
            CowVersion::V1 => 1,
            CowVersion::V2 => 2,
            CowVersion::V3 | CowVersion::V3Broken => 3,
        }
    }
}

/// A decoded COW header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowHeader {
    /// Layout the header was read from ([`CowVersion::V3`] for headers we build).
    pub version: CowVersion,
    /// Backing file path as stored (bytes up to the first NUL; may be relative in old files).
    pub backing_file: Vec<u8>,
    /// Backing file mtime, seconds, truncated to 32 bits.
    pub mtime: u32,
    /// Backing file size in bytes.
    pub size: u64,
    /// Sector size (512 in every file UML writes).
    pub sectorsize: u32,
    /// Alignment of bitmap and data (v1/v2: the sector size).
    pub alignment: u32,
}

/// Errors decoding or encoding a COW header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 8 bytes: not even magic and version (`read_cow_header - short header`).
    #[error("short COW header: {len} bytes, need at least 8")]
    Short {
        /// Bytes available.
        len: usize,
    },
    /// The magic is not "OOOM" in either byte order: the file is not a COW file.
    #[error("no COW magic (found {found:#010x})")]
    NotCow {
        /// The first four bytes, read in host order.
        found: u32,
    },
    /// Magic matched but the version is not 1, 2 or 3 (`read_cow_header - invalid COW version`).
    #[error("invalid COW version {version}")]
    InvalidVersion {
        /// The version read.
        version: u32,
    },
    /// The file is shorter than its layout (`read_cow_header - failed to read V3 header`).
    #[error("truncated COW V{version} header: {len} bytes, need {need}")]
    Truncated {
        /// Version number from the header.
        version: u32,
        /// Bytes available.
        len: usize,
        /// Bytes the layout needs.
        need: usize,
    },
    /// `cow_format` other than 0 (the bitmap format).
    #[error("unsupported COW format {format} (only 0, the bitmap format, exists)")]
    UnsupportedFormat {
        /// The value read.
        format: u32,
    },
    /// Sector size 0 or absurdly large.
    #[error("invalid COW sector size {sectorsize} (must be 1..={MAX_SECTOR_OR_ALIGN})")]
    BadSectorSize {
        /// The value read.
        sectorsize: u32,
    },
    /// Alignment 0 (UML logs `invalid COW header, align == 0` and goes on; we refuse) or too large.
    #[error("invalid COW header, align == {alignment} (must be 1..={MAX_SECTOR_OR_ALIGN})")]
    BadAlignment {
        /// The value read.
        alignment: u32,
    },
    /// Backing size larger than any file can be (`i64::MAX`).
    #[error("COW header backing size {size} is too large")]
    SizeTooLarge {
        /// The value read.
        size: u64,
    },
    /// Backing path does not fit the v3 field (names are limited to 4095 characters).
    #[error("backing file name is too long - names are limited to 4095 characters ({len} given)")]
    PathTooLong {
        /// Length given.
        len: usize,
    },
    /// A NUL inside the backing path, or an empty path, cannot be written.
    #[error("backing file name must be non-empty and contain no NUL byte")]
    BadPath,
}

impl HeaderError {
    /// True for the "this is simply not a COW file" cases, which UML handles silently by
    /// treating the file as a plain image when no backing file was requested.
    pub fn is_not_cow(&self) -> bool {
        matches!(self, HeaderError::Short { .. } | HeaderError::NotCow { .. })
    }
}

fn nul_terminated(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

fn truncated(version: u32, len: usize, need: usize) -> HeaderError {
    HeaderError::Truncated { version, len, need }
}

/// Decode a COW header from the first bytes of a file (offer up to [`MAX_HEADER_LEN`]).
///
/// Follows `read_cow_header`: the magic decides the byte order of the version field, the
/// version decides the layout; v1 fields are host order, v2/v3 big-endian; a v3 header whose
/// path field starts with four NULs is the broken 64-bit layout. Then the values are checked
/// (sector size, alignment, format, size) so that geometry can never divide by zero or overflow.
pub fn parse_header(buf: &[u8]) -> Result<CowHeader, HeaderError> {
    if buf.len() < 8 {
        return Err(HeaderError::Short { len: buf.len() });
    }
    let magic = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let raw_version = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let version = if magic == COW_MAGIC {
        raw_version
    } else if magic == COW_MAGIC.swap_bytes() {
        raw_version.swap_bytes()
    } else {
        return Err(HeaderError::NotCow { found: magic });
    };
    let (header, format) = match version {
        1 => {
            let (raw, _) =
                RawV1::ref_from_prefix(buf).map_err(|_| truncated(1, buf.len(), V1_HEADER_LEN))?;
            let ss = raw.sectorsize.get();
            let h = CowHeader {
                version: CowVersion::V1,
                backing_file: nul_terminated(&raw.backing_file),
                mtime: raw.mtime.get(),
                size: raw.size.get(),
                sectorsize: ss,
                alignment: ss,
            };
            (h, 0)
        }
        2 => {
            let (raw, _) =
                RawV2::ref_from_prefix(buf).map_err(|_| truncated(2, buf.len(), V2_HEADER_LEN))?;
            let ss = raw.sectorsize.get();
            let h = CowHeader {
                version: CowVersion::V2,
                backing_file: nul_terminated(&raw.backing_file),
                mtime: raw.mtime.get(),
                size: raw.size.get(),
                sectorsize: ss,
                alignment: ss,
            };
            (h, 0)
        }
        3 => {
            // Offset 32 starts the path in the packed layout; an absolute path never begins
            // with four NULs, while the broken layout has cow_format (0) there.
            let broken = buf.len() >= 36 && buf[32..36] == [0, 0, 0, 0];
            if broken {
                log::warn!(
                    "read_cow_header - broken V3 file with 64-bit layout - recovering content."
                );
                let (raw, _) = RawV3Broken::ref_from_prefix(buf)
                    .map_err(|_| truncated(3, buf.len(), V3_BROKEN_HEADER_LEN))?;
                let h = CowHeader {
                    version: CowVersion::V3Broken,
                    backing_file: nul_terminated(&raw.backing_file),
                    mtime: raw.mtime.get(),
                    size: raw.size.get(),
                    sectorsize: raw.sectorsize.get(),
                    alignment: raw.alignment.get(),
                };
                (h, raw.cow_format.get())
            } else {
                let (raw, _) = RawV3::ref_from_prefix(buf)
                    .map_err(|_| truncated(3, buf.len(), V3_HEADER_LEN))?;
                let h = CowHeader {
                    version: CowVersion::V3,
                    backing_file: nul_terminated(&raw.backing_file),
                    mtime: raw.mtime.get(),
                    size: raw.size.get(),
                    sectorsize: raw.sectorsize.get(),
                    alignment: raw.alignment.get(),
                };
                (h, raw.cow_format.get())
            }
        }
        version => return Err(HeaderError::InvalidVersion { version }),
    };
    if format != 0 {
        return Err(HeaderError::UnsupportedFormat { format });
    }
    header.validate()?;
    Ok(header)
}

impl CowHeader {
    /// A fresh v3 header as UML and `uml_mkcow` write it.
    pub fn new_v3(
        backing_file: Vec<u8>,
        mtime: u32,
        size: u64,
        sectorsize: u32,
        alignment: u32,
    ) -> Result<Self, HeaderError> {
        let h = CowHeader {
            version: CowVersion::V3,
            backing_file,
            mtime,
            size,
            sectorsize,
            alignment,
        };
        h.validate()?;
        h.check_path()?;
        Ok(h)
    }

    fn validate(&self) -> Result<(), HeaderError> {
        if self.sectorsize == 0 || self.sectorsize > MAX_SECTOR_OR_ALIGN {
            return Err(HeaderError::BadSectorSize {
                sectorsize: self.sectorsize,
            });
        }
        if self.alignment == 0 || self.alignment > MAX_SECTOR_OR_ALIGN {
            return Err(HeaderError::BadAlignment {
                alignment: self.alignment,
            });
        }
        if self.size > i64::MAX as u64 {
            return Err(HeaderError::SizeTooLarge { size: self.size });
        }
        Ok(())
    }

    fn check_path(&self) -> Result<(), HeaderError> {
        if self.backing_file.is_empty() || self.backing_file.contains(&0) {
            return Err(HeaderError::BadPath);
        }
        if self.backing_file.len() > PATH_LEN_V3 - 1 {
            return Err(HeaderError::PathTooLong {
                len: self.backing_file.len(),
            });
        }
        Ok(())
    }

    /// Offset of the bitmap: right after v1/v2 headers, `ROUND_UP(header, alignment)` for v3.
    pub fn bitmap_offset(&self) -> u64 {
        let align = u64::from(self.alignment.max(1));
        let round = |len: u64| len.div_ceil(align) * align;
        match self.version {
            CowVersion::V1 => V1_HEADER_LEN as u64,
            CowVersion::V2 => V2_HEADER_LEN as u64,
            CowVersion::V3 => round(V3_HEADER_LEN as u64),
            CowVersion::V3Broken => round(V3_BROKEN_HEADER_LEN as u64),
        }
    }

    /// Encode as a packed v3 header (4128 bytes), whatever layout this header was read from
    /// (UML upgrades to v3 when it switches backing files). The path field is NUL-padded.
    pub fn encode_v3(&self) -> Result<Vec<u8>, HeaderError> {
        self.validate()?;
        self.check_path()?;
        let mut path = [0u8; PATH_LEN_V3];
        path[..self.backing_file.len()].copy_from_slice(&self.backing_file);
        let raw = RawV3 {
            magic: U32::new(COW_MAGIC),
            version: U32::new(COW_VERSION),
            mtime: U32::new(self.mtime),
            size: U64::new(self.size),
            sectorsize: U32::new(self.sectorsize),
            alignment: U32::new(self.alignment),
            cow_format: U32::new(0),
            backing_file: path,
        };
        Ok(raw.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The first 32 bytes of the header real UML wrote in uml-behaviour.md §5.2, followed by
    /// a path and garbage after its NUL (UML never zeroes the header buffer).
    fn uml_observed_v3() -> Vec<u8> {
        let mut b = vec![
            0x4f, 0x4f, 0x4f, 0x4d, // magic "OOOM" (BE)
            0x00, 0x00, 0x00, 0x03, // version 3
            0x6b, 0x0b, 0xd5, 0x8a, // mtime 1795937674
            0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, // size 134217728 (128 MiB)
            0x00, 0x00, 0x02, 0x00, // sectorsize 512
            0x00, 0x00, 0x10, 0x00, // alignment 4096
            0x00, 0x00, 0x00, 0x00, // cow_format 0
        ];
        b.extend_from_slice(b"/scratch/cow/base.img\0");
        b.resize(V3_HEADER_LEN, 0);
        b[4097..4100].copy_from_slice(&[0x00, 0xe0, 0x49]); // garbage after the NUL
        b
    }

    #[test]
    fn parses_uml_observed_v3() {
        let h = parse_header(&uml_observed_v3()).unwrap();
        assert_eq!(h.version, CowVersion::V3);
        assert_eq!(h.mtime, 1_795_937_674);
        assert_eq!(h.size, 134_217_728);
        assert_eq!(h.sectorsize, 512);
        assert_eq!(h.alignment, 4096);
        assert_eq!(h.backing_file, b"/scratch/cow/base.img");
        assert_eq!(h.bitmap_offset(), 8192);
    }

    #[test]
    fn parses_uml_formats_1_9_example_and_encodes_identically() {
        // uml-formats.md §1.9: 1 MiB backing, mtime 1700000000.
        let mut b = vec![
            0x4f, 0x4f, 0x4f, 0x4d, 0x00, 0x00, 0x00, 0x03, // magic, version 3
            0x65, 0x53, 0xf1, 0x00, // mtime 0x6553f100
            0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, // size 0x100000
            0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x10, 0x00, // ss 512, align 4096
            0x00, 0x00, 0x00, 0x00, // cow_format 0
            b'/', b'b', 0x00,
        ];
        b.resize(V3_HEADER_LEN, 0);
        let h = parse_header(&b).unwrap();
        assert_eq!((h.mtime, h.size), (1_700_000_000, 1 << 20));
        assert_eq!(h.encode_v3().unwrap(), b);
    }

    #[test]
    fn v1_host_order() {
        let mut b = vec![0u8; V1_HEADER_LEN];
        b[0..4].copy_from_slice(&COW_MAGIC.to_ne_bytes()); // 4D 4F 4F 4F on x86
        b[4..8].copy_from_slice(&1u32.to_ne_bytes());
        b[8..12].copy_from_slice(b"back");
        b[264..268].copy_from_slice(&1234u32.to_ne_bytes()); // mtime
        b[268..276].copy_from_slice(&4608u64.to_ne_bytes()); // size
        b[276..280].copy_from_slice(&512u32.to_ne_bytes()); // sectorsize
        let h = parse_header(&b).unwrap();
        assert_eq!(h.version, CowVersion::V1);
        assert_eq!(
            (h.mtime, h.size, h.sectorsize, h.alignment),
            (1234, 4608, 512, 512)
        );
        assert_eq!(h.backing_file, b"back");
        assert_eq!(h.bitmap_offset(), 280);
    }

    #[test]
    fn v2_big_endian() {
        let mut b = vec![0u8; V2_HEADER_LEN];
        b[0..8].copy_from_slice(&[0x4f, 0x4f, 0x4f, 0x4d, 0, 0, 0, 2]);
        b[8..10].copy_from_slice(b"/x");
        b[4104..4108].copy_from_slice(&[0, 0, 0x04, 0xd2]); // mtime 1234
        b[4108..4116].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0x12, 0x00]); // size 4608
        b[4116..4120].copy_from_slice(&[0, 0, 0x02, 0x00]); // ss 512
        let h = parse_header(&b).unwrap();
        assert_eq!(h.version, CowVersion::V2);
        assert_eq!((h.mtime, h.size, h.sectorsize), (1234, 4608, 512));
        assert_eq!(h.bitmap_offset(), 4120);
        assert_eq!(
            parse_header(&b[..4119]),
            Err(HeaderError::Truncated {
                version: 2,
                len: 4119,
                need: 4120
            })
        );
    }

    #[test]
    fn v3_broken_layout_detected_by_zeros_at_32() {
        let mut b = vec![0u8; V3_BROKEN_HEADER_LEN];
        b[0..8].copy_from_slice(&[0x4f, 0x4f, 0x4f, 0x4d, 0, 0, 0, 3]);
        b[8..12].copy_from_slice(&[0, 0, 0x04, 0xd2]); // mtime 1234 (htonl of 32 bits)
        b[12..16].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]); // padding garbage
        b[16..24].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0x12, 0]); // size 4608
        b[24..28].copy_from_slice(&[0, 0, 2, 0]); // ss 512
        b[28..32].copy_from_slice(&[0, 0, 0x10, 0]); // align 4096
                                                     // 32..36 cow_format 0 -> the detection rule
        b[36..38].copy_from_slice(b"/b");
        let h = parse_header(&b).unwrap();
        assert_eq!(h.version, CowVersion::V3Broken);
        assert_eq!(
            (h.mtime, h.size, h.sectorsize, h.alignment),
            (1234, 4608, 512, 4096)
        );
        assert_eq!(h.backing_file, b"/b");
        assert_eq!(h.bitmap_offset(), 8192);
    }

    #[test]
    fn rejections() {
        assert_eq!(parse_header(&[0x4f; 7]), Err(HeaderError::Short { len: 7 }));
        assert!(parse_header(&[0u8; 4200]).unwrap_err().is_not_cow());
        let mut b = uml_observed_v3();
        b[7] = 4;
        assert_eq!(
            parse_header(&b),
            Err(HeaderError::InvalidVersion { version: 4 })
        );
        let mut b = uml_observed_v3();
        b[24..28].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            parse_header(&b),
            Err(HeaderError::BadAlignment { alignment: 0 })
        );
        let mut b = uml_observed_v3();
        b[20..24].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            parse_header(&b),
            Err(HeaderError::BadSectorSize { sectorsize: 0 })
        );
        let mut b = uml_observed_v3();
        b[12] = 0xff;
        assert!(matches!(
            parse_header(&b),
            Err(HeaderError::SizeTooLarge { .. })
        ));
        let mut b = uml_observed_v3();
        b[31] = 1;
        assert_eq!(
            parse_header(&b),
            Err(HeaderError::UnsupportedFormat { format: 1 })
        );
        assert!(matches!(
            parse_header(&uml_observed_v3()[..100]),
            Err(HeaderError::Truncated { version: 3, .. })
        ));
        assert_eq!(
            CowHeader::new_v3(vec![b'a'; 4096], 0, 0, 512, 4096),
            Err(HeaderError::PathTooLong { len: 4096 })
        );
        assert!(CowHeader::new_v3(vec![b'a'; 4095], 0, 0, 512, 4096).is_ok());
    }

    proptest! {
        #[test]
        fn v3_round_trip(
            path in proptest::collection::vec(1u8..=255, 1..4096),
            mtime: u32,
            size in 0u64..=i64::MAX as u64,
            ss in 1u32..=MAX_SECTOR_OR_ALIGN,
            align in 1u32..=MAX_SECTOR_OR_ALIGN,
        ) {
            let h = CowHeader::new_v3(path, mtime, size, ss, align).unwrap();
            let bytes = h.encode_v3().unwrap();
            prop_assert_eq!(bytes.len(), V3_HEADER_LEN);
            prop_assert_eq!(parse_header(&bytes).unwrap(), h);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4200), v in 0u32..5) {
            let mut bytes = bytes;
            if bytes.len() >= 8 {
                bytes[0..4].copy_from_slice(&COW_MAGIC.to_be_bytes());
                bytes[4..8].copy_from_slice(&v.to_be_bytes());
            }
            let _ = parse_header(&bytes);
        }
    }
}
