//! Merging a COW file into a new image or into its backing file, exactly as `uml_moo` does
//! (uml-formats.md §1.11): same checks, same messages, same sparse output, no locks.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::bitmap;
use crate::geometry::cow_sizes;
use crate::header::{parse_header, HeaderError, MAX_HEADER_LEN};

/// Largest bitmap `kuml-moo` allocates (a 16 TiB disk).
const MAX_MERGE_BITMAP: u64 = 4 << 30;
/// Sectors handled per batch.
const BATCH: u64 = 2048;

/// A failed merge. `Display` is `uml_moo`'s stderr line (perror style).
#[derive(Debug, thiserror::Error)]
pub enum MooError {
    /// A system call failed; `what` is uml_moo's perror prefix.
    #[error("{what}: {}", strerror(.source))]
    Sys {
        /// "COW file open", "Reading data", ...
        what: &'static str,
        /// The error (errno 0 for short reads, printed as "Success").
        #[source]
        source: io::Error,
    },
    /// The COW header could not be read.
    #[error("Reading COW header failed")]
    Header {
        /// Why (already reported on stdout as uml_moo does, when it has a message there).
        #[source]
        source: HeaderError,
    },
    /// Sizes differ.
    #[error("Size mismatch ({header} vs {actual}) of COW header vs backing file \"{}\"", .backing.display())]
    Size {
        /// Header size.
        header: u64,
        /// Backing size.
        actual: u64,
        /// Backing path.
        backing: PathBuf,
    },
    /// mtimes differ.
    #[error("mtime mismatch ({header} vs {actual}) of COW header vs backing file \"{}\"", .backing.display())]
    Mtime {
        /// Header mtime.
        header: i64,
        /// Backing mtime.
        actual: i64,
        /// Backing path.
        backing: PathBuf,
    },
}

/// `strerror` text of an io error (`perror` style, without Rust's "(os error N)").
pub fn strerror(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(0) => "Success".to_string(),
        Some(code) => {
            let s = io::Error::from_raw_os_error(code).to_string();
            match s.rfind(" (os error ") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
        None => e.to_string(),
    }
}

fn sys(what: &'static str) -> impl Fn(io::Error) -> MooError {
    move |source| MooError::Sys { what, source }
}

fn short() -> io::Error {
    io::Error::from_raw_os_error(0)
}

/// `pread` that must fill `buf` (a short read is an error with errno 0, as uml_moo reports).
fn pread_exact(f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => return Err(short()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What `uml_moo`'s `read_cow_header` prints on stdout for a header error.
pub fn header_stdout_line(e: &HeaderError) -> Option<String> {
    Some(match e {
        HeaderError::Short { .. } => "read_cow_header - short header".into(),
        HeaderError::NotCow { .. } => return None,
        HeaderError::InvalidVersion { .. } => "read_cow_header - invalid COW version".into(),
        HeaderError::Truncated { version, .. } => {
            format!("read_cow_header - failed to read V{version} header")
        }
        HeaderError::BadAlignment { alignment: 0 } => {
            "read_cow_header - invalid COW header, align == 0".into()
        }
        other => format!("read_cow_header - {other}"),
    })
}

/// Progress callback: `(sectors done, total sectors)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Merge `cow` into `output` (a new file) or, with `output == None`, destructively into its
/// backing file. `actual_backing` overrides the header's backing path (`-b`). Lines that
/// `uml_moo` prints on stdout go to `stdout`.
pub fn merge(
    cow: &Path,
    output: Option<&Path>,
    actual_backing: Option<&Path>,
    stdout: &mut dyn Write,
    progress: Progress<'_>,
) -> Result<(), MooError> {
    let cow_f = File::open(cow).map_err(sys("COW file open"))?;
    let mut head = Vec::with_capacity(MAX_HEADER_LEN);
    {
        let mut buf = vec![0u8; MAX_HEADER_LEN];
        let mut n = 0;
        while n < buf.len() {
            match cow_f.read_at(&mut buf[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        head.extend_from_slice(&buf[..n]);
    }
    // The "broken V3" notice comes before any truncation complaint, as in uml_moo.
    if head.len() >= 36 && head[4..8] == [0, 0, 0, 3] && head[32..36] == [0, 0, 0, 0] {
        let _ = writeln!(
            stdout,
            "read_cow_header - broken V3 file with 64-bit layout - recovering content."
        );
    }
    let header = parse_header(&head).map_err(|source| {
        if let Some(line) = header_stdout_line(&source) {
            let _ = writeln!(stdout, "{line}");
        }
        MooError::Header { source }
    })?;
    let _ = stdout.flush();
    let backing: PathBuf = match actual_backing {
        Some(b) => b.to_path_buf(),
        None => PathBuf::from(std::ffi::OsStr::from_bytes(&header.backing_file)),
    };
    let md = std::fs::metadata(&backing).map_err(sys("Stating backing file"))?;
    if md.len() != header.size {
        return Err(MooError::Size {
            header: header.size,
            actual: md.len(),
            backing,
        });
    }
    if md.mtime() != i64::from(header.mtime) {
        return Err(MooError::Mtime {
            header: i64::from(header.mtime),
            actual: md.mtime(),
            backing,
        });
    }
    let destructive = output.is_none();
    let back_f = OpenOptions::new()
        .read(true)
        .write(destructive)
        .open(&backing)
        .map_err(sys("Opening backing file"))?;
    let out_f = match output {
        Some(o) => Some(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(o)
                .map_err(sys("Output file open"))?,
        ),
        None => None,
    };
    let out = out_f.as_ref().unwrap_or(&back_f);
    let geo = cow_sizes(&header).map_err(|_| MooError::Sys {
        what: "Can't allocate bitmap",
        source: io::Error::from_raw_os_error(libc::ENOMEM),
    })?;
    if geo.bitmap_len > MAX_MERGE_BITMAP {
        return Err(MooError::Sys {
            what: "Can't allocate bitmap",
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        });
    }
    let mut bm = vec![0u8; geo.bitmap_len as usize];
    pread_exact(&cow_f, &mut bm, geo.bitmap_offset).map_err(sys("Reading COW bitmap"))?;

    let ss = geo.sectorsize;
    let sectors = header.size / ss;
    let ssz = ss as usize;
    let mut buf = vec![0u8; (BATCH * ss) as usize];
    let mut backsec = vec![0u8; ssz];
    let mut i = 0;
    while i < sectors {
        let n = BATCH.min(sectors - i);
        // Fill the batch: COW sectors from the data area, others from the backing file
        // (a destructive merge never needs those).
        for (s, cnt, in_cow) in bitmap::runs(&bm, i, n) {
            let part = &mut buf[((s - i) * ss) as usize..((s - i + cnt) * ss) as usize];
            if in_cow {
                pread_exact(&cow_f, part, geo.data_offset + s * ss).map_err(sys("Reading data"))?;
            } else if !destructive {
                pread_exact(&back_f, part, s * ss).map_err(sys("Reading data"))?;
            }
        }
        // Decide per sector, coalescing consecutive writes.
        let mut run: Option<(u64, u64)> = None; // (first sector, count)
        for k in 0..n {
            let s = i + k;
            let in_cow = bitmap::test_bit(&bm, s);
            let sec = &mut buf[(k * ss) as usize..((k + 1) * ss) as usize];
            let write = if destructive && !in_cow {
                false
            } else if s < sectors - 1 && sec.iter().all(|&b| b == 0) {
                if !destructive {
                    false
                } else {
                    pread_exact(&back_f, &mut backsec, s * ss)
                        .map_err(sys("Checking backing file for zeros"))?;
                    backsec.iter().any(|&b| b != 0)
                }
            } else {
                true
            };
            match (write, run) {
                (true, Some((f, c))) if f + c == s => run = Some((f, c + 1)),
                (true, prev) => {
                    if let Some((f, c)) = prev {
                        write_run(out, &buf, i, f, c, ss)?;
                    }
                    run = Some((s, 1));
                }
                (false, Some((f, c))) => {
                    write_run(out, &buf, i, f, c, ss)?;
                    run = None;
                }
                (false, None) => {}
            }
        }
        if let Some((f, c)) = run {
            write_run(out, &buf, i, f, c, ss)?;
        }
        i += n;
        progress(i, sectors);
    }
    Ok(())
}

fn write_run(
    out: &File,
    buf: &[u8],
    base: u64,
    first: u64,
    count: u64,
    ss: u64,
) -> Result<(), MooError> {
    let lo = ((first - base) * ss) as usize;
    let hi = lo + (count * ss) as usize;
    out.write_all_at(&buf[lo..hi], first * ss)
        .map_err(sys("Writing data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_is_perror_text() {
        assert_eq!(
            strerror(&io::Error::from_raw_os_error(libc::ENOENT)),
            "No such file or directory"
        );
        assert_eq!(strerror(&short()), "Success");
    }

    #[test]
    fn header_lines() {
        assert_eq!(header_stdout_line(&HeaderError::NotCow { found: 0 }), None);
        assert_eq!(
            header_stdout_line(&HeaderError::Truncated {
                version: 2,
                len: 9,
                need: 4120
            })
            .unwrap(),
            "read_cow_header - failed to read V2 header"
        );
    }
}
