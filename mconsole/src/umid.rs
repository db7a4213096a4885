//! The per-VM directory `<uml_dir>/<umid>/` holding `pid` and the `mconsole` socket
//! (UML `arch/um/os-Linux/umid.c`, reference §4).
//!
//! * `uml_dir` defaults to `$HOME/.uml`; a leading `~` is `$HOME`.
//! * No umid (or an empty one): a random 6-character umid, as UML's `mkstemp` gives.
//! * An existing directory whose `pid` names a live process is left alone: a warning
//!   `umid "<u>" is already in use by pid <p>` and `Failed to initialize umid "<u>",
//!   trying with a random umid`, then a random umid is used ([`UmidDir::collision`]).
//! * An existing directory whose owner is dead (or whose pid file is unreadable) is
//!   emptied, removed and re-created.
//! * `pid` is created with `O_EXCL`, mode 0644, content `"<pid>\n"`.
//! * Directories are created with mode 0700 (UML uses 0777 minus the umask).
//! * Dropping the [`UmidDir`] removes every file in the directory and the directory
//!   (UML does this on a clean halt); [`UmidDir::keep`] leaves them (as after a crash).

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::warn;
use thiserror::Error;

/// Longest umid (`UMID_LEN - 1`).
pub const MAX_UMID_LEN: usize = 63;
/// Length of a random umid.
pub const RANDOM_UMID_LEN: usize = 6;

/// Errors of the umid directory.
#[derive(Debug, Error)]
pub enum UmidError {
    /// `$HOME` is not set and no `uml_dir=` was given.
    #[error("make_uml_dir: no value in environment for $HOME")]
    NoHome,
    /// `uml_dir=` was empty.
    #[error("uml_dir can't be an empty string")]
    EmptyUmlDir,
    /// The umid cannot name a directory (`/`, `.`, `..`, NUL).
    #[error("invalid umid {0:?}")]
    InvalidUmid(String),
    /// A directory could not be created.
    #[error("Failed to mkdir '{}'", path.display())]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A stale directory could not be removed.
    #[error("cannot remove the stale umid directory '{}'", path.display())]
    RemoveStale {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The pid file could not be written.
    #[error("cannot create the pid file '{}'", path.display())]
    PidFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No random umid could be created.
    #[error("cannot create a random umid in '{}'", dir.display())]
    Random {
        /// The uml_dir.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// `$HOME/.uml`.
pub fn default_uml_dir() -> Result<PathBuf, UmidError> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h).join(".uml")),
        _ => Err(UmidError::NoHome),
    }
}

/// The value of `uml_dir=`, with a leading `~` replaced by `$HOME`.
pub fn expand_uml_dir(value: &str) -> Result<PathBuf, UmidError> {
    if value.is_empty() {
        return Err(UmidError::EmptyUmlDir);
    }
    match value.strip_prefix('~') {
        Some(rest) => {
            let home = std::env::var_os("HOME").ok_or(UmidError::NoHome)?;
            let mut p = PathBuf::from(home).into_os_string();
            p.push(rest);
            Ok(PathBuf::from(p))
        }
        None => Ok(PathBuf::from(value)),
    }
}

/// A umid that was already in use by a live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    /// The requested umid.
    pub umid: String,
    /// The pid in its pid file.
    pub pid: i32,
}

impl std::fmt::Display for Collision {
    /// UML's two log lines for this case.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "umid \"{}\" is already in use by pid {}\nFailed to initialize umid \"{}\", trying with a random umid",
            self.umid, self.pid, self.umid
        )
    }
}

/// The created `<uml_dir>/<umid>/` with its pid file; removed on drop.
#[derive(Debug)]
pub struct UmidDir {
    umid: String,
    dir: PathBuf,
    collision: Option<Collision>,
    keep: bool,
}

enum Attempt {
    Created(PathBuf),
    InUse(i32),
}

/// The pid in a pid file, parsed like `strtoul` followed by UML's end check; `None` for
/// unparsable content.
pub fn parse_pid(content: &[u8]) -> Option<i32> {
    let s = std::str::from_utf8(content).ok()?;
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let rest = &s[digits..];
    if digits == 0 || !(rest.is_empty() || rest.starts_with('\n')) {
        return None;
    }
    s[..digits].parse::<i32>().ok().filter(|&p| p > 0)
}

fn process_alive(pid: i32) -> bool {
    if pid as u32 == std::process::id() {
        // Our own directory from before (e.g. an earlier instance in this process).
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission; no memory
    // is involved.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn remove_files_and_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn mkdir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(path)
}

fn random_umid() -> io::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; RANDOM_UMID_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

impl UmidDir {
    /// Create the directory for this process (`std::process::id()`).
    pub fn create(uml_dir: &Path, umid: Option<&str>) -> Result<UmidDir, UmidError> {
        Self::create_for_pid(uml_dir, umid, std::process::id())
    }

    /// Create the directory and write `pid` into its pid file.
    pub fn create_for_pid(
        uml_dir: &Path,
        umid: Option<&str>,
        pid: u32,
    ) -> Result<UmidDir, UmidError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(uml_dir)
            .map_err(|source| UmidError::Mkdir {
                path: uml_dir.to_path_buf(),
                source,
            })?;
        let mut collision = None;
        let requested = match umid {
            Some(u) if u.len() > MAX_UMID_LEN => {
                warn!("umid \"{u}\" is longer than {MAX_UMID_LEN} characters, ignored");
                None
            }
            Some("") | None => None,
            Some(u) if u == "." || u == ".." || u.contains(['/', '\0']) => {
                return Err(UmidError::InvalidUmid(u.to_string()))
            }
            Some(u) => Some(u),
        };
        if let Some(u) = requested {
            match Self::attempt(uml_dir, u, pid)? {
                Attempt::Created(dir) => {
                    return Ok(UmidDir {
                        umid: u.to_string(),
                        dir,
                        collision,
                        keep: false,
                    })
                }
                Attempt::InUse(owner) => {
                    let c = Collision {
                        umid: u.to_string(),
                        pid: owner,
                    };
                    warn!("{c}");
                    collision = Some(c);
                }
            }
        }
        let random_err = |source| UmidError::Random {
            dir: uml_dir.to_path_buf(),
            source,
        };
        for _ in 0..100 {
            let u = random_umid().map_err(random_err)?;
            let dir = uml_dir.join(&u);
            match mkdir(&dir) {
                Ok(()) => {
                    Self::write_pid(&dir, pid)?;
                    return Ok(UmidDir {
                        umid: u,
                        dir,
                        collision,
                        keep: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(UmidError::Mkdir { path: dir, source }),
            }
        }
        Err(random_err(io::Error::from(io::ErrorKind::AlreadyExists)))
    }

    fn attempt(uml_dir: &Path, umid: &str, pid: u32) -> Result<Attempt, UmidError> {
        let dir = uml_dir.join(umid);
        match mkdir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read(dir.join("pid"))
                    .ok()
                    .and_then(|c| parse_pid(&c));
                if let Some(owner) = owner.filter(|&o| process_alive(o)) {
                    return Ok(Attempt::InUse(owner));
                }
                remove_files_and_dir(&dir).map_err(|source| UmidError::RemoveStale {
                    path: dir.clone(),
                    source,
                })?;
                mkdir(&dir).map_err(|source| UmidError::Mkdir {
                    path: dir.clone(),
                    source,
                })?;
            }
            Err(source) => return Err(UmidError::Mkdir { path: dir, source }),
        }
        Self::write_pid(&dir, pid)?;
        Ok(Attempt::Created(dir))
    }

    fn write_pid(dir: &Path, pid: u32) -> Result<(), UmidError> {
        let path = dir.join("pid");
        let res = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{pid}\n").as_bytes()));
        res.map_err(|source| {
            let _ = remove_files_and_dir(dir);
            UmidError::PidFile { path, source }
        })
    }

    /// The umid in use (the requested one, or a random one).
    pub fn umid(&self) -> &str {
        &self.umid
    }
    /// `<uml_dir>/<umid>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `<uml_dir>/<umid>/mconsole`: where to bind the [`crate::Server`].
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("mconsole")
    }
    /// `<uml_dir>/<umid>/pid`.
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("pid")
    }
    /// The requested umid was in use by a live process (a random umid is used instead).
    pub fn collision(&self) -> Option<&Collision> {
        self.collision.as_ref()
    }
    /// Leave the directory behind when dropped (as UML does after a panic).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for UmidDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = remove_files_and_dir(&self.dir) {
            warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pid_parsing() {
        assert_eq!(parse_pid(b"3144\n"), Some(3144));
        assert_eq!(parse_pid(b"  42"), Some(42));
        assert_eq!(parse_pid(b"42x"), None);
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"0\n"), None);
        assert_eq!(parse_pid(b"\xff"), None);
    }

    #[test]
    fn creates_dir_and_pid_file_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("uml");
        let d = UmidDir::create(&base, Some("vm1")).unwrap();
        assert_eq!(d.umid(), "vm1");
        assert_eq!(d.dir(), base.join("vm1"));
        assert_eq!(d.socket_path(), base.join("vm1/mconsole"));
        let pid = std::fs::read_to_string(d.pid_path()).unwrap();
        assert_eq!(pid, format!("{}\n", std::process::id()));
        let mode = std::fs::metadata(d.pid_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let mode = std::fs::metadata(d.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(d.socket_path(), b"").unwrap();
        drop(d);
        assert!(!base.join("vm1").exists());
        assert!(base.exists());
    }

    #[test]
    fn random_umid_when_none() {
        let tmp = tempfile::tempdir().unwrap();
        let d = UmidDir::create(tmp.path(), None).unwrap();
        assert_eq!(d.umid().len(), 6);
        assert!(d.umid().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(d.dir().is_dir());
        let e = UmidDir::create(tmp.path(), Some("")).unwrap();
        assert_eq!(e.umid().len(), 6);
        assert_ne!(d.umid(), e.umid());
        let long = "x".repeat(64);
        assert_eq!(
            UmidDir::create(tmp.path(), Some(&long))
                .unwrap()
                .umid()
                .len(),
            6
        );
        assert_eq!(
            UmidDir::create(tmp.path(), Some(&long[..63]))
                .unwrap()
                .umid(),
            &long[..63]
        );
    }

    #[test]
    fn live_umid_falls_back_to_random_and_is_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = tmp.path().join("t1");
        std::fs::create_dir(&live).unwrap();
        std::fs::write(live.join("pid"), format!("{}\n", child.id())).unwrap();
        std::fs::write(live.join("mconsole"), b"").unwrap();
        let d = UmidDir::create(tmp.path(), Some("t1")).unwrap();
        assert_ne!(d.umid(), "t1");
        assert_eq!(
            d.collision(),
            Some(&Collision {
                umid: "t1".into(),
                pid: child.id() as i32
            })
        );
        assert!(live.join("mconsole").exists());
        assert_eq!(
            d.collision().unwrap().to_string(),
            format!(
                "umid \"t1\" is already in use by pid {}\n\
                 Failed to initialize umid \"t1\", trying with a random umid",
                child.id()
            )
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // Now the owner is dead: the directory is taken over.
        let d2 = UmidDir::create(tmp.path(), Some("t1")).unwrap();
        assert_eq!(d2.umid(), "t1");
        assert!(d2.collision().is_none());
        assert!(!live.join("mconsole").exists());
        assert_eq!(
            std::fs::read_to_string(live.join("pid")).unwrap(),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn stale_or_garbage_pid_file_is_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        for content in [&b"garbage"[..], b"", b"2147483646\n"] {
            let dir = tmp.path().join("s");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("pid"), content).unwrap();
            std::fs::write(dir.join("junk"), b"x").unwrap();
            let d = UmidDir::create(tmp.path(), Some("s")).unwrap();
            assert_eq!(d.umid(), "s");
            assert!(!dir.join("junk").exists());
        }
        // No pid file at all.
        std::fs::create_dir_all(tmp.path().join("n")).unwrap();
        assert_eq!(UmidDir::create(tmp.path(), Some("n")).unwrap().umid(), "n");
    }

    #[test]
    fn keep_leaves_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = UmidDir::create(tmp.path(), Some("k")).unwrap();
        d.keep();
        drop(d);
        assert!(tmp.path().join("k/pid").exists());
    }

    #[test]
    fn bad_umids_and_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        for u in ["a/b", ".", ".."] {
            assert!(matches!(
                UmidDir::create(tmp.path(), Some(u)),
                Err(UmidError::InvalidUmid(_))
            ));
        }
        assert!(matches!(expand_uml_dir(""), Err(UmidError::EmptyUmlDir)));
        assert_eq!(expand_uml_dir("/x/y").unwrap(), PathBuf::from("/x/y"));
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(
                expand_uml_dir("~/u").unwrap(),
                PathBuf::from(home).join("u")
            );
        }
    }
}
