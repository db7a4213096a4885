//! Opening a ubd image as UML does (`open_ubd_file`, uml-formats.md §1.9–§1.10): COW
//! detection by magic, backing size/mtime validation, backing-path switching, COW creation,
//! host locking, read-only fallback.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::cow::{CowDisk, CowError};
use crate::disk::{Disk, DiskError, RawDisk};
use crate::geometry::cow_sizes;
use crate::header::{
    parse_header, CowHeader, CowVersion, HeaderError, DEFAULT_ALIGNMENT, MAX_HEADER_LEN,
    SECTOR_SIZE,
};
use crate::lock::{lock_file, LockError};
use crate::spec::UbdSpec;

/// Why an image could not be opened or created. Messages follow UML's.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `open(2)` failed.
    #[error("Failed to open '{path}', errno = {}", errno(.source))]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is locked by another process.
    #[error("Failed to open '{path}'")]
    Lock {
        /// The file.
        path: PathBuf,
        /// The lock error.
        #[source]
        source: LockError,
    },
    /// A backing file was given but the file has no readable COW header.
    #[error("Failed to read COW header from COW file \"{path}\", errno = 22")]
    ReadHeader {
        /// The COW file.
        path: PathBuf,
        /// Why.
        #[source]
        source: HeaderError,
    },
    /// The file has COW magic but a header kuml refuses (zero alignment, huge size, ...).
    #[error("invalid COW header in '{path}'")]
    BadHeader {
        /// The COW file.
        path: PathBuf,
        /// Why.
        #[source]
        source: HeaderError,
    },
    /// Header and backing file sizes differ.
    #[error("Size mismatch ({header} vs {actual}) of COW header vs backing file")]
    SizeMismatch {
        /// Size in the header.
        header: u64,
        /// Size of the backing file.
        actual: u64,
        /// The backing file.
        backing: PathBuf,
    },
    /// Header and backing file mtimes differ.
    #[error("mtime mismatch ({header} vs {actual}) of COW header vs backing file")]
    MtimeMismatch {
        /// mtime in the header.
        header: i64,
        /// mtime of the backing file.
        actual: i64,
        /// The backing file.
        backing: PathBuf,
    },
    /// The backing file cannot be examined.
    #[error("Failed to get modification time of backing file \"{path}\", err = {}", errno(.source))]
    BackingStat {
        /// The backing file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Creating a COW file failed.
    #[error("Open of COW file '{path}' failed, errno = {}", errno(.source))]
    Create {
        /// The COW file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Writing a COW header (creation or backing switch) failed.
    #[error("write_cow_header - write of header to '{path}' failed")]
    WriteHeader {
        /// The COW file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The backing path cannot be made absolute or stored.
    #[error("Backing file name \"{path}\" cannot be stored in a COW header")]
    BackingName {
        /// The backing file.
        path: PathBuf,
        /// Why.
        #[source]
        source: HeaderError,
    },
    /// `absolutize` failed.
    #[error("absolutize : Can't cd to '{dir}' - errno = {}", errno(.source))]
    Absolutize {
        /// The directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The COW layout is unusable.
    #[error(transparent)]
    Cow(#[from] CowError),
    /// Reading the file failed.
    #[error("reading '{path}' failed")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: DiskError,
    },
    /// The spec names no file.
    #[error("ubd{unit} has no file")]
    NoFile {
        /// The unit.
        unit: usize,
    },
}

impl OpenError {
    /// The positive errno UML would report for this failure (`Failed to open '%s', errno = %d`,
    /// mconsole `config` replies): the host error where there is one, else `EINVAL`.
    pub fn errno(&self) -> i32 {
        let io = match self {
            OpenError::Open { source, .. }
            | OpenError::BackingStat { source, .. }
            | OpenError::Create { source, .. }
            | OpenError::WriteHeader { source, .. }
            | OpenError::Absolutize { source, .. } => source.raw_os_error(),
            OpenError::Lock {
                source: LockError::Locked { errno, .. },
                ..
            } => Some(*errno),
            OpenError::Lock {
                source: LockError::Fcntl { source, .. },
                ..
            } => source.raw_os_error(),
            OpenError::Read { source, .. } => source.raw_os_error(),
            _ => None,
        };
        io.unwrap_or(libc::EINVAL)
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// How to open an image (the ubd flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageOptions {
    /// `r`: open read-only.
    pub read_only: bool,
    /// `s` or `ubd=sync`: `O_SYNC`.
    pub sync: bool,
    /// `d`: do not look for a COW header.
    pub no_cow: bool,
    /// `c`: take no host locks.
    pub shared: bool,
}

impl ImageOptions {
    /// Options from a parsed `ubd` spec; `global_sync` is `ubd=sync`.
    pub fn from_spec(spec: &UbdSpec, global_sync: bool) -> Self {
        ImageOptions {
            read_only: spec.read_only,
            sync: spec.sync || global_sync,
            no_cow: spec.no_cow,
            shared: spec.shared,
        }
    }
}

/// An opened ubd image: a plain file or a COW file over its backing file.
#[derive(Debug)]
pub enum Image {
    /// A plain image.
    Raw(RawDisk),
    /// A COW file and its backing file.
    Cow(CowDisk<RawDisk>),
}

impl Image {
    /// The image or COW file.
    pub fn path(&self) -> &Path {
        match self {
            Image::Raw(r) => r.path(),
            Image::Cow(c) => c.cow_path(),
        }
    }

    /// The backing file in use, for a COW image.
    pub fn backing_path(&self) -> Option<&Path> {
        match self {
            Image::Raw(_) => None,
            Image::Cow(c) => Some(c.backing().path()),
        }
    }
}

impl Disk for Image {
    fn len(&self) -> u64 {
        match self {
            Image::Raw(d) => d.len(),
            Image::Cow(d) => d.len(),
        }
    }
    fn is_read_only(&self) -> bool {
        match self {
            Image::Raw(d) => d.is_read_only(),
            Image::Cow(d) => d.is_read_only(),
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        match self {
            Image::Raw(d) => d.read_at(buf, offset),
            Image::Cow(d) => d.read_at(buf, offset),
        }
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        match self {
            Image::Raw(d) => d.write_at(buf, offset),
            Image::Cow(d) => d.write_at(buf, offset),
        }
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        match self {
            Image::Raw(d) => d.flush(),
            Image::Cow(d) => d.flush(),
        }
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        match self {
            Image::Raw(d) => d.discard(offset, len),
            Image::Cow(d) => d.discard(offset, len),
        }
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        match self {
            Image::Raw(d) => d.write_zeroes(offset, len),
            Image::Cow(d) => d.write_zeroes(offset, len),
        }
    }
}

fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// Size of a file or block device in bytes.
pub fn file_size(path: &Path) -> io::Result<u64> {
    let md = std::fs::metadata(path)?;
    if std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type()) {
        let mut f = File::open(path)?;
        return f.seek(SeekFrom::End(0));
    }
    Ok(md.len())
}

/// UML's `absolutize`: the directory part is resolved like `getcwd` (symlinks followed),
/// the last component is kept as given.
pub fn absolutize(path: &Path) -> Result<PathBuf, OpenError> {
    let bytes = path.as_os_str().as_bytes();
    let (dir, name): (PathBuf, &[u8]) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(i) => {
            let d = if i == 0 { &b"/"[..] } else { &bytes[..i] };
            (path_of(d), &bytes[i + 1..])
        }
        None => (PathBuf::from("."), bytes),
    };
    let abs = std::fs::canonicalize(&dir).map_err(|source| OpenError::Absolutize {
        dir: dir.clone(),
        source,
    })?;
    Ok(abs.join(OsStr::from_bytes(name)))
}

/// Stat the backing file: (size, mtime seconds).
fn backing_stat(path: &Path) -> Result<(u64, i64), OpenError> {
    let md = std::fs::metadata(path).map_err(|source| OpenError::BackingStat {
        path: path.to_path_buf(),
        source,
    })?;
    let size = file_size(path).map_err(|source| OpenError::BackingStat {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((size, md.mtime()))
}

/// `backing_file_mismatch`: the header's size and mtime must match the backing file.
pub fn check_backing(path: &Path, size: u64, mtime: u32) -> Result<(), OpenError> {
    let (actual, actual_mtime) = backing_stat(path)?;
    if actual != size {
        log::error!(target: "uml", "Size mismatch ({size} vs {actual}) of COW header vs backing file");
        return Err(OpenError::SizeMismatch {
            header: size,
            actual,
            backing: path.to_path_buf(),
        });
    }
    if actual_mtime != i64::from(mtime) {
        log::error!(target: "uml", "mtime mismatch ({mtime} vs {actual_mtime}) of COW header vs backing file");
        return Err(OpenError::MtimeMismatch {
            header: i64::from(mtime),
            actual: actual_mtime,
            backing: path.to_path_buf(),
        });
    }
    Ok(())
}

/// A fresh v3 header for `backing` (absolutized, stat'ed now), as `write_cow_header` builds it.
pub fn header_for_backing(
    backing: &Path,
    sectorsize: u32,
    alignment: u32,
) -> Result<CowHeader, OpenError> {
    let abs = absolutize(backing)?;
    let (size, mtime) = backing_stat(backing)?;
    CowHeader::new_v3(
        abs.as_os_str().as_bytes().to_vec(),
        mtime as u32,
        size,
        sectorsize,
        alignment,
    )
    .map_err(|source| OpenError::BackingName {
        path: backing.to_path_buf(),
        source,
    })
}

/// `init_cow_file`: write a v3 header for `backing` into `file` and extend it to
/// `data_offset + size` with a single zero byte (the bitmap stays sparse and zero).
pub fn init_cow_file(file: &File, cow_path: &Path, backing: &Path) -> Result<CowHeader, OpenError> {
    let header = header_for_backing(backing, SECTOR_SIZE, DEFAULT_ALIGNMENT)?;
    let geo = cow_sizes(&header).map_err(|source| {
        OpenError::Cow(CowError::Geometry {
            path: cow_path.to_path_buf(),
            source,
        })
    })?;
    let bytes = header
        .encode_v3()
        .map_err(|source| OpenError::BackingName {
            path: backing.to_path_buf(),
            source,
        })?;
    let werr = |source| OpenError::WriteHeader {
        path: cow_path.to_path_buf(),
        source,
    };
    file.write_all_at(&bytes, 0).map_err(werr)?;
    file.write_all_at(&[0], geo.file_len - 1).map_err(werr)?;
    Ok(header)
}

/// Create a COW file for `backing` as `uml_mkcow` does: mode 0644, `O_EXCL` unless `force`.
pub fn create_cow_file(cow: &Path, backing: &Path, force: bool) -> Result<File, OpenError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).mode(0o644);
    if force {
        o.create(true);
    } else {
        o.create_new(true);
    }
    let f = o.open(cow).map_err(|source| OpenError::Create {
        path: cow.to_path_buf(),
        source,
    })?;
    init_cow_file(&f, cow, backing)?;
    Ok(f)
}

fn open_file(path: &Path, write: bool, sync: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(write);
    if sync {
        o.custom_flags(libc::O_SYNC);
    }
    o.open(path)
}

fn take_lock(
    f: &File,
    path: &Path,
    write: bool,
    shared: bool,
) -> Result<Option<crate::lock::HostLock>, OpenError> {
    if shared {
        log::info!(target: "uml", "Not locking \"{}\" on the host", path.display());
        return Ok(None);
    }
    lock_file(f, path, write)
        .map(Some)
        .map_err(|source| OpenError::Lock {
            path: path.to_path_buf(),
            source,
        })
}

/// `path_requires_switch`: the requested backing differs from the header's path and is
/// not the same file.
fn requires_switch(requested: &Path, in_header: &Path, cow: &Path) -> bool {
    if requested.as_os_str().as_bytes() == in_header.as_os_str().as_bytes() {
        return false;
    }
    let r = match std::fs::metadata(requested) {
        Ok(m) => m,
        Err(e) => {
            log::error!(
                "Couldn't stat '{}', err = {}",
                requested.display(),
                errno(&e)
            );
            return false;
        }
    };
    let h = match std::fs::metadata(in_header) {
        Ok(m) => m,
        Err(e) => {
            log::error!(
                "Couldn't stat '{}', err = {}",
                in_header.display(),
                errno(&e)
            );
            return true;
        }
    };
    if r.dev() == h.dev() && r.ino() == h.ino() {
        return false;
    }
    log::error!(
        "Backing file mismatch - \"{}\" requested, \"{}\" specified in COW header of \"{}\"",
        requested.display(),
        in_header.display(),
        cow.display()
    );
    true
}

/// Open a ubd image: `file`, with `backing` when the command line gave one.
///
/// Follows UML: a missing `file` with a `backing` becomes a new COW file; a file that cannot
/// be opened for writing (`EROFS`/`EACCES`) is opened read-only; the image (or COW file) is
/// write-locked and the backing file read-locked unless `shared`; without `backing`, a file
/// without COW magic is a plain image; the backing's size and mtime must match the header.
pub fn open_image(
    file: &Path,
    backing: Option<&Path>,
    opts: &ImageOptions,
) -> Result<Image, OpenError> {
    let mut write = !opts.read_only;
    let backing = backing.filter(|_| !opts.no_cow);
    let f = match open_file(file, write, opts.sync) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && backing.is_some() && write => {
            let b = backing.unwrap_or(file);
            let f = open_file_create(file, opts.sync)?;
            init_cow_file(&f, file, b)?;
            log::info!(
                target: "uml",
                "Creating \"{}\" as COW file for \"{}\"",
                file.display(),
                b.display()
            );
            f
        }
        Err(e) if write && matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) => {
            write = false;
            open_file(file, false, opts.sync).map_err(|source| OpenError::Open {
                path: file.to_path_buf(),
                source,
            })?
        }
        Err(source) => {
            return Err(OpenError::Open {
                path: file.to_path_buf(),
                source,
            })
        }
    };
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(OpenError::Open {
            path: file.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::EISDIR),
        });
    }
    let lock = take_lock(&f, file, write, opts.shared)?;
    let raw = RawDisk::from_file(f, file, !write)
        .map_err(|source| OpenError::Read {
            path: file.to_path_buf(),
            source,
        })?
        .with_lock(lock);
    if opts.no_cow {
        return Ok(Image::Raw(raw));
    }
    // The real length (not rounded up) so that a truncated header is recognised; block
    // devices report st_size 0 and use the device size.
    let real_len = match raw.file().metadata() {
        Ok(m) if m.is_file() => m.len(),
        _ => raw.len(),
    };
    let mut head = vec![0u8; (MAX_HEADER_LEN as u64).min(real_len) as usize];
    raw.read_at(&mut head, 0)
        .map_err(|source| OpenError::Read {
            path: file.to_path_buf(),
            source,
        })?;
    let header = match parse_header(&head) {
        Ok(h) => h,
        Err(source) if backing.is_some() => {
            log::error!(
                "Failed to read COW header from COW file \"{}\", errno = 22",
                file.display()
            );
            return Err(OpenError::ReadHeader {
                path: file.to_path_buf(),
                source,
            });
        }
        Err(e) if e.is_not_cow() => return Ok(Image::Raw(raw)),
        Err(e @ (HeaderError::InvalidVersion { .. } | HeaderError::Truncated { .. })) => {
            log::warn!(
                "read_cow_header - {e}; using '{}' as a plain image",
                file.display()
            );
            return Ok(Image::Raw(raw));
        }
        Err(source) => {
            return Err(OpenError::BadHeader {
                path: file.to_path_buf(),
                source,
            })
        }
    };
    let in_header = path_of(&header.backing_file);
    let mut header = header;
    let mut use_path = in_header.clone();
    let switch = backing.is_some_and(|b| requires_switch(b, &in_header, file));
    let switched = match backing {
        Some(b) if switch && check_backing(b, header.size, header.mtime).is_ok() => {
            use_path = b.to_path_buf();
            if header.version == CowVersion::V3 && write {
                log::info!("Switching backing file to '{}'", b.display());
                let new = header_for_backing(b, header.sectorsize, header.alignment)?;
                let bytes = new.encode_v3().map_err(|source| OpenError::BackingName {
                    path: b.to_path_buf(),
                    source,
                })?;
                raw.file()
                    .write_all_at(&bytes, 0)
                    .map_err(|source| OpenError::WriteHeader {
                        path: file.to_path_buf(),
                        source,
                    })?;
                header = new;
            } else {
                // Rewriting a v1/v2 header as v3 would move its bitmap; use `b` as is.
                log::warn!(
                    "Using backing file '{}' for '{}' without rewriting its header",
                    b.display(),
                    file.display()
                );
            }
            true
        }
        _ => false,
    };
    if !switched {
        check_backing(&use_path, header.size, header.mtime)?;
    }
    let bf = open_file(&use_path, false, false).map_err(|source| OpenError::Open {
        path: use_path.clone(),
        source,
    })?;
    let block = take_lock(&bf, &use_path, false, opts.shared)?;
    let back = RawDisk::from_file(bf, &use_path, true)
        .map_err(|source| OpenError::Read {
            path: use_path.clone(),
            source,
        })?
        .with_lock(block);
    Ok(Image::Cow(CowDisk::new(raw, back, header, !write)?))
}

fn open_file_create(path: &Path, sync: bool) -> Result<File, OpenError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).mode(0o644);
    if sync {
        o.custom_flags(libc::O_SYNC);
    }
    o.open(path).map_err(|source| {
        log::error!(
            "Open of COW file '{}' failed, errno = {}",
            path.display(),
            errno(&source)
        );
        OpenError::Create {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Open the image a parsed `ubd` option describes (`global_sync`: `ubd=sync` was given).
pub fn open_spec(spec: &UbdSpec, global_sync: bool) -> Result<Image, OpenError> {
    let file = spec
        .file
        .as_deref()
        .ok_or(OpenError::NoFile { unit: spec.unit })?;
    open_image(
        Path::new(file),
        spec.backing.as_deref().map(Path::new),
        &ImageOptions::from_spec(spec, global_sync),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let back = dir.path().join("base.img");
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&back, data).unwrap();
        let cow = dir.path().join("c.cow");
        (dir, back, cow)
    }

    #[test]
    fn creates_then_reopens_cow() {
        let (_d, back, cow) = setup();
        let opts = ImageOptions::default();
        let mut img = open_image(&cow, Some(&back), &opts).unwrap();
        assert!(matches!(img, Image::Cow(_)));
        assert_eq!(img.len(), 64 * 1024);
        img.write_at(&[0xEE; 512], 4096).unwrap();
        drop(img);
        // Backing taken from the header.
        let img = open_image(&cow, None, &opts).unwrap();
        assert_eq!(
            img.backing_path(),
            Some(back.canonicalize().unwrap().as_path())
        );
        let mut b = [0u8; 1024];
        img.read_at(&mut b, 4096 - 512).unwrap();
        assert_eq!(b[0], ((4096 - 512) % 251) as u8);
        assert!(b[512..].iter().all(|&x| x == 0xEE));
        // Layout as uml_mkcow: 64 KiB backing -> data at 12288, file length 12288 + 65536.
        assert_eq!(std::fs::metadata(&cow).unwrap().len(), 12288 + 65536);
    }

    #[test]
    fn plain_image_and_d_flag() {
        let (_d, back, _cow) = setup();
        let img = open_image(&back, None, &ImageOptions::default()).unwrap();
        assert!(matches!(img, Image::Raw(_)));
        let img = open_image(
            &back,
            None,
            &ImageOptions {
                no_cow: true,
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(img.is_read_only());
    }

    #[test]
    fn raw_file_with_backing_is_an_error() {
        let (_d, back, _cow) = setup();
        let other = back.with_file_name("other.img");
        std::fs::write(&other, [0u8; 1024]).unwrap();
        let e = open_image(&other, Some(&back), &ImageOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Failed to read COW header from COW file"),
            "{e}"
        );
    }

    #[test]
    fn mismatch_messages() {
        let (d, back, cow) = setup();
        drop(open_image(&cow, Some(&back), &ImageOptions::default()).unwrap());
        let f = OpenOptions::new().write(true).open(&back).unwrap();
        f.set_len(1024).unwrap();
        let e = open_image(&cow, None, &ImageOptions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Size mismatch (65536 vs 1024) of COW header vs backing file"
        );
        assert_eq!(e.errno(), libc::EINVAL);
        let e =
            open_image(Path::new("/nonexistent/x"), None, &ImageOptions::default()).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
        assert_eq!(e.to_string(), "Failed to open '/nonexistent/x', errno = 2");
        let ro = ImageOptions {
            read_only: true,
            ..Default::default()
        };
        for o in [ImageOptions::default(), ro] {
            assert_eq!(
                open_image(d.path(), None, &o).unwrap_err().errno(),
                libc::EISDIR
            );
        }
    }

    #[test]
    fn backing_switch_like_uml() {
        let (d, back, cow) = setup();
        drop(open_image(&cow, Some(&back), &ImageOptions::default()).unwrap());
        // Move the backing file (rename keeps its mtime): the header path no longer exists,
        // the requested one matches size and mtime -> the header is rewritten.
        let moved_dir = d.path().join("moved");
        std::fs::create_dir(&moved_dir).unwrap();
        let moved = moved_dir.join("base.img");
        std::fs::rename(&back, &moved).unwrap();
        assert!(open_image(&cow, None, &ImageOptions::default()).is_err());
        let img = open_image(&cow, Some(&moved), &ImageOptions::default()).unwrap();
        assert_eq!(img.backing_path(), Some(moved.as_path()));
        drop(img);
        let img = open_image(&cow, None, &ImageOptions::default()).unwrap();
        let abs = moved_dir.canonicalize().unwrap().join("base.img");
        assert_eq!(img.backing_path(), Some(abs.as_path()));
        drop(img);
        // A requested backing that does not match is dropped silently; the header's path
        // is validated and used instead.
        let other = d.path().join("other.img");
        std::fs::write(&other, [1u8; 512]).unwrap();
        let img = open_image(&cow, Some(&other), &ImageOptions::default()).unwrap();
        assert_eq!(img.backing_path(), Some(abs.as_path()));
    }

    #[test]
    fn bad_cow_headers_are_errors_or_plain_images() {
        let (d, _back, _cow) = setup();
        let p = d.path().join("bad.cow");
        let mut h = vec![0u8; 8192];
        h[0..8].copy_from_slice(&[0x4f, 0x4f, 0x4f, 0x4d, 0, 0, 0, 3]);
        h[32] = b'/';
        std::fs::write(&p, &h).unwrap(); // alignment 0, sector size 0
        let e = open_image(&p, None, &ImageOptions::default()).unwrap_err();
        assert!(matches!(e, OpenError::BadHeader { .. }), "{e:?}");
        h[7] = 9; // invalid version: UML uses the file as a plain image
        std::fs::write(&p, &h).unwrap();
        assert!(matches!(
            open_image(&p, None, &ImageOptions::default()).unwrap(),
            Image::Raw(_)
        ));
        h[7] = 3; // truncated v3: plain image too
        std::fs::write(&p, &h[..100]).unwrap();
        assert!(matches!(
            open_image(&p, None, &ImageOptions::default()).unwrap(),
            Image::Raw(_)
        ));
        // A huge size in an otherwise valid header: no giant allocation, a clear error.
        h[20..24].copy_from_slice(&512u32.to_be_bytes());
        h[24..28].copy_from_slice(&4096u32.to_be_bytes());
        h[12..20].copy_from_slice(&(1u64 << 60).to_be_bytes());
        std::fs::write(&p, &h).unwrap();
        assert!(open_image(&p, None, &ImageOptions::default()).is_err());
    }

    #[test]
    fn absolutize_keeps_last_component() {
        let (d, back, _) = setup();
        let abs = absolutize(&back).unwrap();
        assert_eq!(abs, d.path().canonicalize().unwrap().join("base.img"));
        assert_eq!(absolutize(Path::new("/x")).unwrap(), PathBuf::from("/x"));
    }
}
