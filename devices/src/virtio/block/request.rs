//! PURE: a descriptor chain to a typed virtio-blk request (virtio 1.2, 5.2.6).
//!
//! Parsing never touches the disk; it reads only the request header and the discard /
//! write-zeroes segments from guest memory. It runs in two steps:
//!
//! 1. [`split_chain`] cuts the chain into its device-readable bytes, its device-writable bytes
//!    and the status byte (the last byte of the chain, which must be device-writable). The
//!    device does not assume any framing (virtio 1.2, 2.7.4): the 16-byte header may be spread
//!    over several descriptors and share one with the data.
//! 2. [`Request::parse`] reads the header and checks everything the spec asks of a request
//!    before any I/O: data direction, sizes, sector ranges against the capacity, the
//!    read-only state, negotiated features, segment limits and flags, and that every guest
//!    buffer lies in guest memory.
//!
//! A chain that fails step 1 cannot be answered (there is nowhere to put a status); one that
//! fails step 2 gets the status [`RequestError::status`] gives (IOERR or UNSUPP).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: the device ID (serial) string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: device lifetime (not supported).
pub const VIRTIO_BLK_T_GET_LIFETIME: u32 = 10;
/// Request type: discard sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: write zeroes.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
/// Request type: secure erase (not supported).
pub const VIRTIO_BLK_T_SECURE_ERASE: u32 = 14;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: the request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: the request is not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Discard / write-zeroes segment flag: the range may be deallocated.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Bytes per sector in requests (always 512, whatever `blk_size` says).
pub const SECTOR_SIZE: u64 = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;
/// Size of the request header (`struct virtio_blk_req` up to the data).
pub const HEADER_LEN: usize = 16;
/// Size of one discard / write-zeroes segment.
pub const SEGMENT_LEN: usize = 16;
/// Length of the ID string GET_ID returns.
pub const ID_BYTES: usize = 20;

/// The most sectors one discard segment may cover (2 GiB: a hole punch is cheap).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// The most segments in one discard request.
pub const MAX_DISCARD_SEG: u32 = 16;
/// The most sectors one write-zeroes segment may cover (32 MiB: a COW image may have to write
/// real zeros, synchronously).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16;
/// The most segments in one write-zeroes request.
pub const MAX_WRITE_ZEROES_SEG: u32 = 16;

/// Why a chain or a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain does not end in a device-writable byte: there is nowhere to put the status.
    #[error("the chain has no device-writable status byte at its end")]
    NoStatus,
    /// A device-readable descriptor follows a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// The device-readable part is shorter than the request header.
    #[error("the request header is {0} bytes, not {HEADER_LEN}")]
    ShortHeader(u64),
    /// A guest buffer is not (entirely) in guest memory.
    #[error("guest buffer {addr:#x}+{len:#x} is outside guest memory")]
    Memory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The request type is unknown or not supported.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// The request type needs a feature the device does not offer.
    #[error("request type {0} needs a feature the device does not offer")]
    NotOffered(u32),
    /// A write to a read-only device.
    #[error("write request (type {0}) to a read-only device")]
    ReadOnly(u32),
    /// The request carries data in the direction its type does not allow.
    #[error("request type {kind} carries {len} unexpected {dir} bytes")]
    UnexpectedData {
        /// Request type.
        kind: u32,
        /// "device-readable" or "device-writable".
        dir: &'static str,
        /// How many.
        len: u64,
    },
    /// Read or write data that is not a whole number of sectors.
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    NotSectorMultiple(u64),
    /// The request reaches past the end of the disk.
    #[error("sectors {sector}+{sectors} reach past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sector count.
        sectors: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// The segment list of a discard / write-zeroes request is empty or not whole segments.
    #[error("segment list of {0} bytes is not a non-empty multiple of {SEGMENT_LEN}")]
    BadSegments(u64),
    /// More segments than the configuration space allows.
    #[error("{got} segments, the device takes at most {max}")]
    TooManySegments {
        /// Segments in the request.
        got: u64,
        /// Limit.
        max: u32,
    },
    /// A segment covers more sectors than the configuration space allows.
    #[error("segment of {got} sectors, the device takes at most {max}")]
    SegmentTooLarge {
        /// Sectors in the segment.
        got: u32,
        /// Limit.
        max: u32,
    },
    /// A segment has flags the device does not know, or UNMAP on a discard.
    #[error("segment flags {0:#x} are not supported")]
    BadFlags(u32),
    /// GET_ID without a buffer for the ID.
    #[error("GET_ID without an ID buffer")]
    NoIdBuffer,
}

impl RequestError {
    /// The status byte the request gets (for errors other than [`RequestError::NoStatus`]).
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_)
            | RequestError::NotOffered(_)
            | RequestError::BadFlags(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A contiguous guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// A chain cut into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLayout {
    /// Device-readable buffers, in order.
    pub readable: Vec<Region>,
    /// Device-writable buffers, in order, without the status byte.
    pub writable: Vec<Region>,
    /// Where the status byte goes.
    pub status: GuestAddress,
    /// A device-readable descriptor followed a device-writable one (the request fails).
    pub misordered: bool,
}

fn total(regions: &[Region]) -> u64 {
    regions.iter().map(|r| u64::from(r.len)).sum()
}

/// Cuts a chain into device-readable bytes, device-writable bytes and the status byte.
/// Zero-length descriptors are ignored.
pub fn split_chain(
    descs: impl IntoIterator<Item = Descriptor>,
) -> Result<ChainLayout, RequestError> {
    let mut readable = Vec::new();
    let mut writable: Vec<Region> = Vec::new();
    let mut misordered = false;
    let mut last_writable = false;
    for d in descs {
        if d.len() == 0 {
            continue;
        }
        let r = Region {
            addr: d.addr(),
            len: d.len(),
        };
        if d.is_write_only() {
            writable.push(r);
            last_writable = true;
        } else {
            if !writable.is_empty() {
                misordered = true;
            }
            readable.push(r);
            last_writable = false;
        }
    }
    if !last_writable {
        return Err(RequestError::NoStatus);
    }
    // The last descriptor is writable and not empty: its last byte is the status.
    let last = writable.last_mut().ok_or(RequestError::NoStatus)?;
    let status = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .ok_or(RequestError::NoStatus)?;
    last.len -= 1;
    if last.len == 0 {
        writable.pop();
    }
    Ok(ChainLayout {
        readable,
        writable,
        status,
        misordered,
    })
}

/// `regions` without their first `skip` bytes.
pub fn skip_bytes(regions: &[Region], mut skip: u64) -> Vec<Region> {
    let mut out = Vec::with_capacity(regions.len());
    for r in regions {
        let len = u64::from(r.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        // skip < len <= u32::MAX, and addr + len was representable when the chain was split
        // only if the guest made it so: use checked arithmetic anyway.
        let Some(addr) = r.addr.checked_add(skip) else {
            continue;
        };
        out.push(Region {
            addr,
            len: (len - skip) as u32,
        });
        skip = 0;
    }
    out
}

/// Reads the first `out.len()` bytes of `regions` from guest memory.
pub fn read_prefix<M: GuestMemory>(
    mem: &M,
    regions: &[Region],
    out: &mut [u8],
) -> Result<(), RequestError> {
    let mut done = 0usize;
    for r in regions {
        if done == out.len() {
            break;
        }
        let n = (r.len as usize).min(out.len() - done);
        mem.read_slice(&mut out[done..done + n], r.addr)
            .map_err(|_| RequestError::Memory {
                addr: r.addr.raw_value(),
                len: r.len,
            })?;
        done += n;
    }
    if done < out.len() {
        return Err(RequestError::ShortHeader(done as u64));
    }
    Ok(())
}

fn check_in_memory<M: GuestMemory>(
    mem: &M,
    regions: &[Region],
    access: Permissions,
) -> Result<(), RequestError> {
    for r in regions {
        if !mem.check_range(r.addr, r.len as usize, access) {
            return Err(RequestError::Memory {
                addr: r.addr.raw_value(),
                len: r.len,
            });
        }
    }
    Ok(())
}

/// What parsing needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// The device is read-only (VIRTIO_BLK_F_RO offered).
    pub read_only: bool,
    /// VIRTIO_BLK_F_DISCARD is offered.
    pub discard: bool,
    /// VIRTIO_BLK_F_WRITE_ZEROES is offered.
    pub write_zeroes: bool,
}

/// One range of a discard / write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First sector.
    pub sector: u64,
    /// Sector count.
    pub sectors: u32,
    /// The UNMAP flag (write zeroes only).
    pub unmap: bool,
}

impl Segment {
    /// Byte offset and length on the disk (checked against the capacity at parse time).
    pub fn byte_range(&self) -> (u64, u64) {
        (
            self.sector << SECTOR_SHIFT,
            u64::from(self.sectors) << SECTOR_SHIFT,
        )
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Read from `sector` into the buffers.
    In {
        /// First sector.
        sector: u64,
        /// Device-writable buffers (a whole number of sectors in total).
        bufs: Vec<Region>,
    },
    /// Write the buffers at `sector`.
    Out {
        /// First sector.
        sector: u64,
        /// Device-readable buffers (a whole number of sectors in total).
        bufs: Vec<Region>,
    },
    /// Make completed writes durable.
    Flush,
    /// Write the ID string into the buffers (at most [`ID_BYTES`]).
    GetId {
        /// Device-writable buffers.
        bufs: Vec<Region>,
    },
    /// Discard ranges.
    Discard(Vec<Segment>),
    /// Zero ranges.
    WriteZeroes(Vec<Segment>),
}

/// A parsed, checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub op: Operation,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

fn check_range(sector: u64, sectors: u64, capacity: u64) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity,
        }),
    }
}

fn no_data(kind: u32, dir: &'static str, regions: &[Region]) -> Result<(), RequestError> {
    let len = total(regions);
    if len != 0 {
        return Err(RequestError::UnexpectedData { kind, dir, len });
    }
    Ok(())
}

fn parse_segments<M: GuestMemory>(
    mem: &M,
    kind: u32,
    data: &[Region],
    info: &DiskInfo,
) -> Result<Vec<Segment>, RequestError> {
    let (max_seg, max_sectors) = if kind == VIRTIO_BLK_T_DISCARD {
        (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
    } else {
        (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
    };
    let len = total(data);
    if len == 0 || !len.is_multiple_of(SEGMENT_LEN as u64) {
        return Err(RequestError::BadSegments(len));
    }
    let count = len / SEGMENT_LEN as u64;
    if count > u64::from(max_seg) {
        return Err(RequestError::TooManySegments {
            got: count,
            max: max_seg,
        });
    }
    // count <= max_seg, so this is a small buffer.
    let mut raw = vec![0u8; len as usize];
    read_prefix(mem, data, &mut raw)?;
    let mut segs = Vec::with_capacity(count as usize);
    for s in raw.chunks_exact(SEGMENT_LEN) {
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&s[0..8]);
        let sector = u64::from_le_bytes(b8);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&s[8..12]);
        let sectors = u32::from_le_bytes(b4);
        b4.copy_from_slice(&s[12..16]);
        let flags = u32::from_le_bytes(b4);
        // Unknown flags, and UNMAP on a discard, are UNSUPP (virtio 1.2, 5.2.6.2).
        let allowed = if kind == VIRTIO_BLK_T_WRITE_ZEROES {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Err(RequestError::BadFlags(flags));
        }
        if sectors > max_sectors {
            return Err(RequestError::SegmentTooLarge {
                got: sectors,
                max: max_sectors,
            });
        }
        check_range(sector, u64::from(sectors), info.capacity)?;
        segs.push(Segment {
            sector,
            sectors,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(segs)
}

impl Request {
    /// Reads the header and checks the request against the spec and the device.
    pub fn parse<M: GuestMemory>(
        mem: &M,
        chain: &ChainLayout,
        info: &DiskInfo,
    ) -> Result<Request, RequestError> {
        if chain.misordered {
            return Err(RequestError::ReadableAfterWritable);
        }
        let readable_len = total(&chain.readable);
        if readable_len < HEADER_LEN as u64 {
            return Err(RequestError::ShortHeader(readable_len));
        }
        let mut hdr = [0u8; HEADER_LEN];
        read_prefix(mem, &chain.readable, &mut hdr)?;
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&hdr[0..4]);
        let kind = u32::from_le_bytes(b4);
        // hdr[4..8] is `reserved` (the I/O priority); ignored.
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&hdr[8..16]);
        let sector = u64::from_le_bytes(b8);

        let out_data = skip_bytes(&chain.readable, HEADER_LEN as u64);
        let in_data = &chain.writable;
        let op = match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let (bufs, other, dir) = if kind == VIRTIO_BLK_T_IN {
                    (in_data.clone(), &out_data[..], "device-readable")
                } else {
                    if info.read_only {
                        return Err(RequestError::ReadOnly(kind));
                    }
                    (out_data.clone(), &in_data[..], "device-writable")
                };
                no_data(kind, dir, other)?;
                let len = total(&bufs);
                if !len.is_multiple_of(SECTOR_SIZE) {
                    return Err(RequestError::NotSectorMultiple(len));
                }
                check_range(sector, len >> SECTOR_SHIFT, info.capacity)?;
                let access = if kind == VIRTIO_BLK_T_IN {
                    Permissions::Write
                } else {
                    Permissions::Read
                };
                check_in_memory(mem, &bufs, access)?;
                if kind == VIRTIO_BLK_T_IN {
                    Operation::In { sector, bufs }
                } else {
                    Operation::Out { sector, bufs }
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                no_data(kind, "device-readable", &out_data)?;
                no_data(kind, "device-writable", in_data)?;
                Operation::Flush
            }
            VIRTIO_BLK_T_GET_ID => {
                no_data(kind, "device-readable", &out_data)?;
                if in_data.is_empty() {
                    return Err(RequestError::NoIdBuffer);
                }
                // Only the first ID_BYTES bytes are written.
                let mut bufs = Vec::new();
                let mut left = ID_BYTES as u32;
                for r in in_data {
                    if left == 0 {
                        break;
                    }
                    let len = r.len.min(left);
                    bufs.push(Region { addr: r.addr, len });
                    left -= len;
                }
                check_in_memory(mem, &bufs, Permissions::Write)?;
                Operation::GetId { bufs }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                // A read-only device refuses every write with IOERR, offered or not.
                if info.read_only {
                    return Err(RequestError::ReadOnly(kind));
                }
                let offered = if kind == VIRTIO_BLK_T_DISCARD {
                    info.discard
                } else {
                    info.write_zeroes
                };
                if !offered {
                    return Err(RequestError::NotOffered(kind));
                }
                no_data(kind, "device-writable", in_data)?;
                let segs = parse_segments(mem, kind, &out_data, info)?;
                if kind == VIRTIO_BLK_T_DISCARD {
                    Operation::Discard(segs)
                } else {
                    Operation::WriteZeroes(segs)
                }
            }
            other => return Err(RequestError::Unsupported(other)),
        };
        Ok(Request {
            op,
            status: chain.status,
        })
    }
}

/// [`split_chain`] then [`Request::parse`]: the whole PURE step, and the fuzz target's entry.
pub fn parse_chain<M: GuestMemory>(
    mem: &M,
    descs: impl IntoIterator<Item = Descriptor>,
    info: &DiskInfo,
) -> Result<Request, RequestError> {
    let layout = split_chain(descs)?;
    Request::parse(mem, &layout, info)
}

/// The fuzz harness, as a plain function that stable tests replay (the libFuzzer wrapper in
/// `fuzz/` only calls it).
///
/// Input: one byte `n` (descriptor count, mod 16), `n` descriptors of 13 bytes (`addr` u64 LE
/// folded into 0..2 × memory size so that half of them are valid, `len` u32 LE, a flags byte
/// whose bit 0 is WRITE), then bytes copied to guest address 0 (64 KiB of guest memory). The
/// disk has 128 sectors with every feature offered; bit 1 of the last flags byte makes it
/// read-only.
pub fn fuzz_parse(data: &[u8]) -> Option<Result<Request, RequestError>> {
    const MEM: u64 = 0x1_0000;
    let (&n, rest) = data.split_first()?;
    let n = usize::from(n % 16);
    let table = rest.get(..n * 13)?;
    let contents = &rest[n * 13..];
    let mem =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).ok()?;
    let k = contents.len().min(MEM as usize);
    mem.write_slice(&contents[..k], GuestAddress(0)).ok()?;
    let mut read_only = false;
    let descs: Vec<Descriptor> = table
        .chunks_exact(13)
        .map(|d| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&d[0..8]);
            let mut l = [0u8; 4];
            l.copy_from_slice(&d[8..12]);
            let flags = if d[12] & 1 != 0 {
                virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            read_only = d[12] & 2 != 0;
            Descriptor::new(
                u64::from_le_bytes(a) % (2 * MEM),
                u32::from_le_bytes(l),
                flags,
                0,
            )
        })
        .collect();
    let info = DiskInfo {
        capacity: 128,
        read_only,
        discard: true,
        write_zeroes: true,
    };
    Some(parse_chain(&mem, descs, &info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestMemoryMmap;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const INFO: DiskInfo = DiskInfo {
        capacity: 100,
        read_only: false,
        discard: true,
        write_zeroes: true,
    };

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn header(m: &GuestMemoryMmap<()>, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn parse(m: &GuestMemoryMmap<()>, descs: &[Descriptor]) -> Result<Request, RequestError> {
        let l = split_chain(descs.iter().copied())?;
        Request::parse(m, &l, &INFO)
    }

    fn seg(m: &GuestMemoryMmap<()>, at: u64, sector: u64, n: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&n.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        m.write_slice(&s, GuestAddress(at)).unwrap();
    }

    #[test]
    fn test_split_finds_status_and_strips_it() {
        let l = split_chain([
            Descriptor::new(0x1000, 16, 0, 0),
            Descriptor::new(0x2000, 0, W, 0),
            Descriptor::new(0x3000, 513, W, 0),
        ])
        .unwrap();
        assert_eq!(l.status, GuestAddress(0x3200));
        assert_eq!(
            l.writable,
            vec![Region {
                addr: GuestAddress(0x3000),
                len: 512
            }]
        );
        assert!(!l.misordered);
    }

    #[test]
    fn test_split_rejects_chains_without_status() {
        assert_eq!(split_chain([]), Err(RequestError::NoStatus));
        assert_eq!(
            split_chain([Descriptor::new(0x1000, 16, 0, 0)]),
            Err(RequestError::NoStatus)
        );
        assert_eq!(
            split_chain([
                Descriptor::new(0x1000, 1, W, 0),
                Descriptor::new(0x1000, 16, 0, 0)
            ]),
            Err(RequestError::NoStatus)
        );
        assert_eq!(
            split_chain([Descriptor::new(u64::MAX, 2, W, 0)]),
            Err(RequestError::NoStatus)
        );
    }

    #[test]
    fn test_header_split_across_descriptors_with_data() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_OUT, 3);
        // 10 header bytes, then 6 header bytes + 512 data bytes in one descriptor.
        let r = parse(
            &m,
            &[
                Descriptor::new(0x1000, 10, 0, 0),
                Descriptor::new(0x100a, 6 + 512, 0, 0),
                Descriptor::new(0x5000, 1, W, 0),
            ],
        )
        .unwrap();
        assert_eq!(
            r.op,
            Operation::Out {
                sector: 3,
                bufs: vec![Region {
                    addr: GuestAddress(0x1010),
                    len: 512
                }]
            }
        );
        assert_eq!(r.status, GuestAddress(0x5000));
    }

    #[test]
    fn test_request_errors_and_their_status() {
        let m = mem();
        let st = Descriptor::new(0x9000, 1, W, 0);
        let h = Descriptor::new(0x1000, 16, 0, 0);
        // Short header.
        let e = parse(&m, &[Descriptor::new(0x1000, 8, 0, 0), st]).unwrap_err();
        assert_eq!(e, RequestError::ShortHeader(8));
        // Unknown type.
        header(&m, 0x1000, 99, 0);
        let e = parse(&m, &[h, st]).unwrap_err();
        assert_eq!(e.status(), VIRTIO_BLK_S_UNSUPP);
        for k in [VIRTIO_BLK_T_GET_LIFETIME, VIRTIO_BLK_T_SECURE_ERASE] {
            header(&m, 0x1000, k, 0);
            assert_eq!(parse(&m, &[h, st]), Err(RequestError::Unsupported(k)));
        }
        // Read past the end.
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 99);
        let e = parse(&m, &[h, Descriptor::new(0x2000, 1024, W, 0), st]).unwrap_err();
        assert!(matches!(e, RequestError::OutOfRange { .. }));
        assert_eq!(e.status(), VIRTIO_BLK_S_IOERR);
        // Huge sector number does not overflow.
        header(&m, 0x1000, VIRTIO_BLK_T_IN, u64::MAX);
        let e = parse(&m, &[h, Descriptor::new(0x2000, 512, W, 0), st]).unwrap_err();
        assert!(matches!(e, RequestError::OutOfRange { .. }));
        // Not whole sectors.
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let e = parse(&m, &[h, Descriptor::new(0x2000, 100, W, 0), st]).unwrap_err();
        assert_eq!(e, RequestError::NotSectorMultiple(100));
        // Wrong direction: a read with device-readable data.
        let e = parse(&m, &[h, Descriptor::new(0x2000, 512, 0, 0), st]).unwrap_err();
        assert!(matches!(e, RequestError::UnexpectedData { .. }));
        // Data outside guest memory.
        let e = parse(&m, &[h, Descriptor::new(0xff_fe00, 0x1000, W, 0), st]).unwrap_err();
        assert!(matches!(e, RequestError::Memory { .. }));
        // Readable after writable.
        let e = parse(
            &m,
            &[
                h,
                Descriptor::new(0x2000, 512, W, 0),
                Descriptor::new(0x3000, 512, 0, 0),
                st,
            ],
        )
        .unwrap_err();
        assert_eq!(e, RequestError::ReadableAfterWritable);
    }

    #[test]
    fn test_read_only_refuses_writes() {
        let m = mem();
        // As the device describes itself: read-only, no discard or write zeroes offered.
        let ro = DiskInfo {
            read_only: true,
            discard: false,
            write_zeroes: false,
            ..INFO
        };
        let st = Descriptor::new(0x9000, 1, W, 0);
        for k in [
            VIRTIO_BLK_T_OUT,
            VIRTIO_BLK_T_DISCARD,
            VIRTIO_BLK_T_WRITE_ZEROES,
        ] {
            header(&m, 0x1000, k, 0);
            seg(&m, 0x1010, 0, 1, 0);
            let l = split_chain([Descriptor::new(0x1000, 32, 0, 0), st]).unwrap();
            assert_eq!(Request::parse(&m, &l, &ro), Err(RequestError::ReadOnly(k)));
        }
        header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let l = split_chain([Descriptor::new(0x1000, 16, 0, 0), st]).unwrap();
        assert_eq!(Request::parse(&m, &l, &ro).unwrap().op, Operation::Flush);
    }

    #[test]
    fn test_segments() {
        let m = mem();
        let st = Descriptor::new(0x9000, 1, W, 0);
        header(&m, 0x1000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        seg(&m, 0x1010, 4, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        seg(&m, 0x1020, 90, 10, 0);
        let r = parse(&m, &[Descriptor::new(0x1000, 48, 0, 0), st]).unwrap();
        assert_eq!(
            r.op,
            Operation::WriteZeroes(vec![
                Segment {
                    sector: 4,
                    sectors: 8,
                    unmap: true
                },
                Segment {
                    sector: 90,
                    sectors: 10,
                    unmap: false
                }
            ])
        );
        // Discard with UNMAP, unknown flags: UNSUPP.
        header(&m, 0x1000, VIRTIO_BLK_T_DISCARD, 0);
        let e = parse(&m, &[Descriptor::new(0x1000, 32, 0, 0), st]).unwrap_err();
        assert_eq!(e, RequestError::BadFlags(1));
        assert_eq!(e.status(), VIRTIO_BLK_S_UNSUPP);
        // Past the end.
        seg(&m, 0x1010, 95, 10, 0);
        let e = parse(&m, &[Descriptor::new(0x1000, 32, 0, 0), st]).unwrap_err();
        assert!(matches!(e, RequestError::OutOfRange { .. }));
        // Partial segment, no segment.
        let e = parse(&m, &[Descriptor::new(0x1000, 24, 0, 0), st]).unwrap_err();
        assert_eq!(e, RequestError::BadSegments(8));
        let e = parse(&m, &[Descriptor::new(0x1000, 16, 0, 0), st]).unwrap_err();
        assert_eq!(e, RequestError::BadSegments(0));
        // Too many.
        let n = MAX_DISCARD_SEG + 1;
        let e = parse(&m, &[Descriptor::new(0x1000, 16 + 16 * n, 0, 0), st]).unwrap_err();
        assert!(matches!(e, RequestError::TooManySegments { .. }));
        // Too large.
        seg(&m, 0x1010, 0, MAX_DISCARD_SECTORS + 1, 0);
        let e = parse(&m, &[Descriptor::new(0x1000, 32, 0, 0), st]).unwrap_err();
        assert!(matches!(e, RequestError::SegmentTooLarge { .. }));
        // Not offered.
        let l = split_chain([Descriptor::new(0x1000, 32, 0, 0), st]).unwrap();
        let no_trim = DiskInfo {
            discard: false,
            write_zeroes: false,
            ..INFO
        };
        assert_eq!(
            Request::parse(&m, &l, &no_trim),
            Err(RequestError::NotOffered(VIRTIO_BLK_T_DISCARD))
        );
    }

    #[test]
    fn test_get_id_is_capped_at_20_bytes() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_GET_ID, 0);
        let r = parse(
            &m,
            &[
                Descriptor::new(0x1000, 16, 0, 0),
                Descriptor::new(0x2000, 8, W, 0),
                Descriptor::new(0x3000, 100, W, 0),
            ],
        )
        .unwrap();
        assert_eq!(r.status, GuestAddress(0x3000 + 99));
        assert_eq!(
            r.op,
            Operation::GetId {
                bufs: vec![
                    Region {
                        addr: GuestAddress(0x2000),
                        len: 8
                    },
                    Region {
                        addr: GuestAddress(0x3000),
                        len: 12
                    }
                ]
            }
        );
    }

    #[test]
    fn test_skip_bytes() {
        let rs = [
            Region {
                addr: GuestAddress(0x1000),
                len: 10,
            },
            Region {
                addr: GuestAddress(0x2000),
                len: 10,
            },
        ];
        assert_eq!(skip_bytes(&rs, 0), rs.to_vec());
        assert_eq!(
            skip_bytes(&rs, 12),
            vec![Region {
                addr: GuestAddress(0x2002),
                len: 8
            }]
        );
        assert!(skip_bytes(&rs, 20).is_empty());
        assert!(skip_bytes(&rs, u64::MAX).is_empty());
    }

    #[test]
    fn test_fuzz_harness_replays() {
        assert!(fuzz_parse(&[]).is_none());
        assert!(fuzz_parse(&[2, 0, 0]).is_none());
        // A read of sector 1 into 512 bytes at 0x1000, status at 0x2000.
        let mut input = vec![3u8];
        for (addr, len, flags) in [(0x800u64, 16u32, 0u8), (0x1000, 512, 1), (0x2000, 1, 1)] {
            input.extend(addr.to_le_bytes());
            input.extend(len.to_le_bytes());
            input.push(flags);
        }
        let mut memory = vec![0u8; 0x810];
        memory[0x808] = 1;
        input.extend(&memory);
        let r = fuzz_parse(&input).unwrap().unwrap();
        assert_eq!(r.status, GuestAddress(0x2000));
        assert!(matches!(r.op, Operation::In { sector: 1, .. }));
        // The same request on a read-only disk (reads are fine).
        input[13 * 3] |= 2;
        assert!(fuzz_parse(&input).unwrap().is_ok());
    }

    proptest! {
        #[test]
        fn prop_fuzz_harness_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = fuzz_parse(&data);
        }

        #[test]
        fn prop_random_chains_never_panic(
            descs in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<bool>()), 0..8),
            kind in prop_oneof![0u32..16, any::<u32>()],
            sector in prop_oneof![0u64..200, any::<u64>()],
            seg_sector in any::<u64>(), seg_n in any::<u32>(), seg_flags in 0u32..4,
        ) {
            let m = mem();
            header(&m, 0, kind, sector);
            seg(&m, 16, seg_sector, seg_n, seg_flags);
            let descs: Vec<Descriptor> = descs.iter().enumerate().map(|(i, (a, l, w))| {
                // Half the descriptors point at the header, so parsing gets past it.
                let addr = if i == 0 && a % 2 == 0 { 0 } else { *a % 0x20_0000 };
                Descriptor::new(addr, *l % 0x2000, if *w { W } else { 0 }, 0)
            }).collect();
            if let Ok(l) = split_chain(descs.iter().copied()) {
                if let Ok(r) = Request::parse(&m, &l, &INFO) {
                    // Whatever parses is in range and in memory.
                    match &r.op {
                        Operation::In { sector, bufs } | Operation::Out { sector, bufs } => {
                            let len: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
                            prop_assert_eq!(len % 512, 0);
                            prop_assert!(sector + len / 512 <= INFO.capacity);
                        }
                        Operation::Discard(s) | Operation::WriteZeroes(s) => {
                            for s in s {
                                prop_assert!(s.sector + u64::from(s.sectors) <= INFO.capacity);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
