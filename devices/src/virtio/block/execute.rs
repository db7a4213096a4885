//! Carrying out a parsed [`Request`] against a [`Disk`], and one whole chain end to end.
//!
//! I/O is synchronous: the event-loop thread reads and writes the image file itself. Data goes
//! through a bounce buffer of at most [`BOUNCE_MAX`] bytes (guest memory is only touched through
//! vm-memory), so a request of any size costs bounded host memory.

use log::{debug, log, warn};
use ubd::{Disk, DiskError};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use crate::warn::WarnBudget;

use super::request::{
    split_chain, DiskInfo, Operation, Region, Request, RequestError, Segment, ID_BYTES,
    SECTOR_SHIFT, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};

/// The largest bounce buffer used for one copy between the disk and guest memory.
pub const BOUNCE_MAX: usize = 256 << 10;

/// Why an I/O failed (the request gets VIRTIO_BLK_S_IOERR).
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The disk refused or failed.
    #[error("disk I/O failed")]
    Disk(#[source] DiskError),
    /// A guest buffer could not be accessed.
    #[error("guest buffer {addr:#x}+{len:#x} cannot be accessed")]
    Memory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: usize,
    },
}

/// How the device treats writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Flush after every write, discard and write-zeroes (UML's `s` flag, or the driver did not
    /// negotiate VIRTIO_BLK_F_FLUSH and expects write-through).
    pub write_through: bool,
}

/// The result of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The status byte.
    pub status: u8,
    /// Bytes written to the guest's data buffers (the status byte not included).
    pub written: u32,
}

fn mem_err(addr: GuestAddress, len: usize) -> ExecuteError {
    ExecuteError::Memory {
        addr: addr.raw_value(),
        len,
    }
}

fn bounce(scratch: &mut Vec<u8>, want: u64) -> usize {
    let n = usize::try_from(want).unwrap_or(BOUNCE_MAX).min(BOUNCE_MAX);
    if scratch.len() < n {
        scratch.resize(n, 0);
    }
    n
}

// Disk -> guest. `written` counts the bytes that reached guest memory.
fn read_into_guest<M: GuestMemory, D: Disk + ?Sized>(
    mem: &M,
    disk: &D,
    mut offset: u64,
    bufs: &[Region],
    scratch: &mut Vec<u8>,
    written: &mut u32,
) -> Result<(), ExecuteError> {
    for r in bufs {
        let mut done = 0u64;
        while done < u64::from(r.len) {
            let n = bounce(scratch, u64::from(r.len) - done);
            let buf = &mut scratch[..n];
            disk.read_at(buf, offset).map_err(ExecuteError::Disk)?;
            let addr = r.addr.checked_add(done).ok_or(mem_err(r.addr, n))?;
            mem.write_slice(buf, addr).map_err(|_| mem_err(addr, n))?;
            done += n as u64;
            offset += n as u64;
            *written = written.saturating_add(n as u32);
        }
    }
    Ok(())
}

// Guest -> disk.
fn write_from_guest<M: GuestMemory, D: Disk + ?Sized>(
    mem: &M,
    disk: &mut D,
    mut offset: u64,
    bufs: &[Region],
    scratch: &mut Vec<u8>,
) -> Result<(), ExecuteError> {
    for r in bufs {
        let mut done = 0u64;
        while done < u64::from(r.len) {
            let n = bounce(scratch, u64::from(r.len) - done);
            let buf = &mut scratch[..n];
            let addr = r.addr.checked_add(done).ok_or(mem_err(r.addr, n))?;
            mem.read_slice(buf, addr).map_err(|_| mem_err(addr, n))?;
            disk.write_at(buf, offset).map_err(ExecuteError::Disk)?;
            done += n as u64;
            offset += n as u64;
        }
    }
    Ok(())
}

fn write_id<M: GuestMemory>(
    mem: &M,
    id: &[u8; ID_BYTES],
    bufs: &[Region],
    written: &mut u32,
) -> Result<(), ExecuteError> {
    let mut done = 0usize;
    for r in bufs {
        let n = (r.len as usize).min(ID_BYTES - done);
        mem.write_slice(&id[done..done + n], r.addr)
            .map_err(|_| mem_err(r.addr, n))?;
        done += n;
        *written = written.saturating_add(n as u32);
        if done == ID_BYTES {
            break;
        }
    }
    Ok(())
}

fn each_segment<D: Disk + ?Sized>(
    disk: &mut D,
    segs: &[Segment],
    f: fn(&mut D, u64, u64) -> Result<(), DiskError>,
) -> Result<(), ExecuteError> {
    for s in segs {
        let (offset, len) = s.byte_range();
        f(disk, offset, len).map_err(ExecuteError::Disk)?;
    }
    Ok(())
}

fn run<M: GuestMemory, D: Disk + ?Sized>(
    req: &Request,
    mem: &M,
    disk: &mut D,
    id: &[u8; ID_BYTES],
    opts: ExecOptions,
    scratch: &mut Vec<u8>,
    written: &mut u32,
) -> Result<(), ExecuteError> {
    let flush = |disk: &mut D| {
        if opts.write_through {
            disk.flush().map_err(ExecuteError::Disk)
        } else {
            Ok(())
        }
    };
    match &req.op {
        Operation::In { sector, bufs } => {
            read_into_guest(mem, disk, sector << SECTOR_SHIFT, bufs, scratch, written)
        }
        Operation::Out { sector, bufs } => {
            write_from_guest(mem, disk, sector << SECTOR_SHIFT, bufs, scratch)?;
            flush(disk)
        }
        Operation::Flush => disk.flush().map_err(ExecuteError::Disk),
        Operation::GetId { bufs } => write_id(mem, id, bufs, written),
        Operation::Discard(segs) => {
            each_segment(disk, segs, |d, o, l| d.discard(o, l))?;
            flush(disk)
        }
        Operation::WriteZeroes(segs) => {
            each_segment(disk, segs, |d, o, l| d.write_zeroes(o, l))?;
            flush(disk)
        }
    }
}

/// Carries out a parsed request. Errors are logged and become VIRTIO_BLK_S_IOERR.
pub fn execute<M: GuestMemory, D: Disk + ?Sized>(
    req: &Request,
    mem: &M,
    disk: &mut D,
    id: &[u8; ID_BYTES],
    opts: ExecOptions,
    scratch: &mut Vec<u8>,
    warn_budget: &mut WarnBudget,
) -> Outcome {
    let mut written = 0u32;
    let status = match run(req, mem, disk, id, opts, scratch, &mut written) {
        Ok(()) => VIRTIO_BLK_S_OK,
        Err(e) => {
            log!(
                warn_budget.level(),
                "block: request failed: {}",
                error_chain(&e)
            );
            VIRTIO_BLK_S_IOERR
        }
    };
    Outcome { status, written }
}

pub(super) use crate::error_chain;

/// Everything the device knows when it handles a chain.
#[derive(Debug, Clone, Copy)]
pub struct ChainContext<'a> {
    /// The disk as the guest sees it.
    pub info: DiskInfo,
    /// The ID string (GET_ID).
    pub id: &'a [u8; ID_BYTES],
    /// Write handling.
    pub opts: ExecOptions,
}

/// Parses and carries out one chain, then writes its status byte. Returns the used length
/// (data bytes written to the guest plus the status byte), or `None` when the chain has no
/// status byte the device can write: the device then needs a reset.
///
/// `disk` is `None` once the image was released: every request then fails with IOERR.
pub fn process_chain<M: GuestMemory, D: Disk + ?Sized>(
    mem: &M,
    descs: impl IntoIterator<Item = Descriptor>,
    disk: Option<&mut D>,
    ctx: &ChainContext<'_>,
    scratch: &mut Vec<u8>,
    warn_budget: &mut WarnBudget,
) -> Option<u32> {
    let layout = match split_chain(descs) {
        Ok(l) => l,
        Err(e) => {
            warn!("block: cannot answer a request: {e}");
            return None;
        }
    };
    if !mem.check_range(layout.status, 1, Permissions::Write) {
        warn!(
            "block: status byte at {:#x} is outside guest memory",
            layout.status.raw_value()
        );
        return None;
    }
    let outcome = match (Request::parse(mem, &layout, &ctx.info), disk) {
        (Ok(req), Some(disk)) => execute(&req, mem, disk, ctx.id, ctx.opts, scratch, warn_budget),
        (Ok(_), None) => {
            debug!("block: request after the image was released");
            Outcome {
                status: VIRTIO_BLK_S_IOERR,
                written: 0,
            }
        }
        (Err(e), _) => {
            log_refused(&e, warn_budget);
            Outcome {
                status: e.status(),
                written: 0,
            }
        }
    };
    if mem.write_obj(outcome.status, layout.status).is_err() {
        return None;
    }
    Some(outcome.written.saturating_add(1))
}

fn log_refused(e: &RequestError, warn_budget: &mut WarnBudget) {
    match e {
        // Probing by the guest (an unknown type) is not worth a warning.
        RequestError::Unsupported(_) | RequestError::NotOffered(_) => {
            debug!("block: request refused: {e}")
        }
        _ => log!(warn_budget.level(), "block: request refused: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_error_chain_joins_sources() {
        let e = ExecuteError::Disk(DiskError::OutOfRange {
            offset: 1,
            len: 2,
            disk_len: 3,
        });
        assert_eq!(
            error_chain(&e),
            "disk I/O failed: request of 2 bytes at offset 1 is beyond the disk end (3 bytes)"
        );
    }
}
