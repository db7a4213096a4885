//! The virtiofsd daemon behind one share: found, started with its sandbox on, connected, and
//! stopped with the share.
//!
//! kuml is the vhost-user frontend; the Rust `virtiofsd` (crates.io, pinned by
//! `resources/setup-host.sh`) is the backend that reads and writes the host directory. kuml
//! binds the vhost-user socket itself in a new directory only its user can enter, connects to
//! it before the daemon even runs, removes the socket's name and the directory, and hands the
//! daemon the listening socket as descriptor 3 (`--fd=3`): no other process can reach the
//! socket, and there is no start-up race.
//!
//! The daemon runs as kuml's user, never more privileged: in its sandbox (`--sandbox
//! namespace`: new mount, pid and network namespaces, and a user namespace when kuml is not
//! root; the share becomes its root with `pivot_root`) and under its seccomp filter
//! (`--seccomp kill`). When kuml runs as an ordinary user every guest user id is squashed to
//! kuml's (`--translate-uid squash-guest:…`), as UML's hostfs acts with the rights of the user
//! running it. The daemon ends when kuml closes the connection (also when kuml dies); dropping
//! the [`Daemon`] also sends it SIGTERM and waits for it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::spec::ShareSpec;

/// The descriptor the daemon finds its listening socket on.
pub const SOCKET_FD: i32 = 3;
/// How long one exchange with the daemon (the handshake, starting or stopping its rings) may
/// wait for its answers: kuml's virtio-fs device closes the connection then.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped daemon gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Lines of the daemon's own messages kept for an error report.
const KEPT_LINES: usize = 16;
/// Where kuml looks for the daemon when `$KUML_VIRTIOFSD` is not set and it is not on `PATH`.
pub const FALLBACK_PATHS: &[&str] = &["/usr/libexec/virtiofsd", "/usr/local/libexec/virtiofsd"];

/// Errors starting a share's daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No virtiofsd to run.
    #[error(
        "virtiofsd not found ($KUML_VIRTIOFSD, PATH, {}); install it with resources/setup-host.sh or `cargo install virtiofsd`",
        FALLBACK_PATHS.join(", ")
    )]
    NotFound,
    /// The shared directory cannot be used.
    #[error("cannot share {}", .0.display())]
    Dir(PathBuf, #[source] std::io::Error),
    /// The shared path is not a directory.
    #[error("{} is not a directory", .0.display())]
    NotADir(PathBuf),
    /// The vhost-user socket could not be set up.
    #[error("cannot set up the vhost-user socket {}", .0.display())]
    Socket(PathBuf, #[source] std::io::Error),
    /// The daemon could not be started.
    #[error("cannot start {}", .0.display())]
    Spawn(PathBuf, #[source] std::io::Error),
}

/// How a share's daemon is started.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The virtiofsd binary.
    pub program: PathBuf,
    /// Where kuml makes, for a moment, a private directory for the vhost-user socket
    /// (normally the temporary directory).
    pub runtime_dir: PathBuf,
    /// The effective user and group ids kuml runs as.
    pub ids: (u32, u32),
    /// virtiofsd's `--log-level` (`error`, `warn`, `info`, `debug`).
    pub log_level: String,
    /// The open-file limit the daemon raises itself to (kuml's hard limit: the daemon keeps a
    /// descriptor per file the guest has looked up, and cannot go higher).
    pub nofile: u64,
    /// Starts the prepared daemon command. A child inherits the seccomp filter of the thread
    /// that forks it, so kuml passes the spawner of its launcher thread; the default spawns
    /// on the calling thread.
    pub spawner: Spawner,
}

/// Starts a prepared command, as [`Command::spawn`] does.
pub type Spawner = fn(Command) -> std::io::Result<std::process::Child>;

impl DaemonOptions {
    /// Options for this process: `program`, the temporary directory, its own ids, and a log
    /// level that follows kuml's (`RUST_LOG=debug` shows the daemon's debug messages too).
    pub fn for_this_process(program: PathBuf) -> DaemonOptions {
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        let ids = unsafe { (libc::geteuid(), libc::getegid()) };
        let log_level = match log::max_level() {
            log::LevelFilter::Off | log::LevelFilter::Error => "error",
            log::LevelFilter::Warn => "warn",
            log::LevelFilter::Info => "info",
            log::LevelFilter::Debug | log::LevelFilter::Trace => "debug",
        };
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_max
        } else {
            0
        };
        DaemonOptions {
            program,
            runtime_dir: std::env::temp_dir(),
            ids,
            log_level: log_level.to_owned(),
            nofile,
            spawner: |mut cmd| cmd.spawn(),
        }
    }
}

/// The virtiofsd to run: `$KUML_VIRTIOFSD`, else `virtiofsd` on `PATH`, else
/// [`FALLBACK_PATHS`]. (QEMU 7's C virtiofsd in /usr/lib/qemu is not used: it needs root and
/// takes other options.)
pub fn find_virtiofsd() -> Result<PathBuf, DaemonError> {
    if let Some(p) = std::env::var_os("KUML_VIRTIOFSD") {
        return Ok(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("virtiofsd"));
    on_path
        .chain(FALLBACK_PATHS.iter().map(PathBuf::from))
        .find(|p| is_executable(p))
        .ok_or(DaemonError::NotFound)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// PURE: virtiofsd's arguments for `spec`, whose directory resolved to `dir`.
pub fn daemon_args(spec: &ShareSpec, dir: &Path, opts: &DaemonOptions) -> Vec<OsString> {
    let mut shared = OsString::from("--shared-dir=");
    shared.push(dir);
    let mut args: Vec<OsString> = vec![
        format!("--fd={SOCKET_FD}").into(),
        shared,
        "--sandbox=namespace".into(),
        "--seccomp=kill".into(),
        // Host mount points inside the share are plain directories of one guest file system,
        // as in UML's hostfs.
        "--no-announce-submounts".into(),
        "--cache=auto".into(),
        format!("--log-level={}", opts.log_level).into(),
        // 0 leaves the limit as it is.
        format!("--rlimit-nofile={}", opts.nofile).into(),
    ];
    if spec.read_only {
        args.push("--readonly".into());
    }
    let (uid, gid) = opts.ids;
    if uid != 0 {
        // Every guest user acts as kuml's user, as in UML (the daemon's user namespace maps
        // kuml's ids only).
        args.push(format!("--translate-uid=squash-guest:0:{uid}:{}", u32::MAX).into());
        args.push(format!("--translate-gid=squash-guest:0:{gid}:{}", u32::MAX).into());
    }
    args
}

/// A running virtiofsd serving one share.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    stream: Option<UnixStream>,
    messages: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    /// Starts the daemon for `spec` and connects to it.
    pub fn spawn(spec: &ShareSpec, opts: &DaemonOptions) -> Result<Daemon, DaemonError> {
        let dir =
            std::fs::canonicalize(&spec.dir).map_err(|e| DaemonError::Dir(spec.dir.clone(), e))?;
        if !dir.is_dir() {
            return Err(DaemonError::NotADir(dir));
        }
        let name = spec.name();
        let (listener, stream) = connected_pair(&opts.runtime_dir, &name)?;

        let mut cmd = Command::new(&opts.program);
        cmd.args(daemon_args(spec, &dir, opts))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let fd = listener.as_raw_fd();
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if fd == SOCKET_FD {
                    // dup2 onto itself would keep close-on-exec.
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, SOCKET_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child =
            (opts.spawner)(cmd).map_err(|e| DaemonError::Spawn(opts.program.clone(), e))?;
        drop(listener);
        let messages = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let keep = messages.clone();
            let who = name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-log"))
                .spawn(move || relay_messages(&who, err, &keep));
            if let Err(e) = spawned {
                log::warn!("{name}: cannot relay virtiofsd's messages: {e}");
            }
        }
        log::info!(
            "{name}: virtiofsd (pid {}) shares {}{} as tag '{}'",
            child.id(),
            dir.display(),
            if spec.read_only { " read-only" } else { "" },
            spec.tag
        );
        Ok(Daemon {
            name,
            child: Some(child),
            stream: Some(stream),
            messages,
        })
    }

    /// The connected vhost-user socket (once).
    pub fn take_stream(&mut self) -> Option<UnixStream> {
        self.stream.take()
    }

    /// The share's name (`hostfs`, `hostfs1`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's exit status if it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Why the daemon failed, for an error report: its exit status (waiting up to `wait` for
    /// it) and its last messages.
    pub fn failure_report(&mut self, wait: Duration) -> String {
        let until = Instant::now() + wait;
        let mut status = self.exited();
        while status.is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            status = self.exited();
        }
        let lines: Vec<String> = crate::locked(&self.messages).iter().cloned().collect();
        let mut report = match status {
            Some(s) => format!("virtiofsd {s}"),
            None => "virtiofsd still runs".to_owned(),
        };
        if !lines.is_empty() {
            report.push_str(": ");
            report.push_str(&lines.join(" / "));
        }
        report
    }

    /// Stops the daemon: SIGTERM, then SIGKILL after a grace period; waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.stream = None;
        if child.try_wait().ok().flatten().is_none() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: a signal to our own child, which has not been waited for.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let until = Instant::now() + STOP_GRACE;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if child.try_wait().ok().flatten().is_none() {
                log::warn!("{}: virtiofsd ignored SIGTERM; killing it", self.name);
                let _ = child.kill();
            }
        }
        match child.wait() {
            Ok(s) => log::info!("{}: virtiofsd {s}", self.name),
            Err(e) => log::warn!("{}: cannot wait for virtiofsd: {e}", self.name),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listening socket and a connection to it, queued until the daemon accepts it; the socket's
/// name exists only for a moment, in a new directory that only this user can enter.
fn connected_pair(parent: &Path, name: &str) -> Result<(UnixListener, UnixStream), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = parent.join(format!("kuml-{name}.{}.{n}", std::process::id()));
    let sock = dir.join("vhost-user.sock");
    // A directory that exists already (left by a killed kuml with the same pid, or made by
    // someone else) is refused, never used.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| DaemonError::Socket(sock.clone(), e))?;
    let pair = UnixListener::bind(&sock).and_then(|l| {
        let s = UnixStream::connect(&sock)?;
        s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        Ok((l, s))
    });
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_dir(&dir);
    pair.map_err(|e| DaemonError::Socket(sock, e))
}

/// Copies the daemon's messages into kuml's log, keeping the last few for error reports.
fn relay_messages(name: &str, err: impl std::io::Read, keep: &Mutex<VecDeque<String>>) {
    for line in BufReader::new(err).lines() {
        let Ok(line) = line else { break };
        log::warn!("{name}: {line}");
        let mut k = crate::locked(keep);
        if k.len() == KEPT_LINES {
            k.pop_front();
        }
        k.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_share;

    fn opts(ids: (u32, u32)) -> DaemonOptions {
        DaemonOptions {
            program: PathBuf::from("/usr/bin/virtiofsd"),
            runtime_dir: PathBuf::from("/run/u"),
            ids,
            log_level: "warn".into(),
            nofile: 4096,
            spawner: |mut cmd| cmd.spawn(),
        }
    }

    fn args(spec: &ShareSpec, ids: (u32, u32)) -> Vec<String> {
        daemon_args(spec, Path::new("/srv/x"), &opts(ids))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn sandbox_always_on() {
        let a = args(&parse_share(0, "/srv/x").unwrap(), (0, 0));
        assert_eq!(
            a,
            [
                "--fd=3",
                "--shared-dir=/srv/x",
                "--sandbox=namespace",
                "--seccomp=kill",
                "--no-announce-submounts",
                "--cache=auto",
                "--log-level=warn",
                "--rlimit-nofile=4096"
            ]
        );
    }

    #[test]
    fn read_only_and_ordinary_users() {
        let a = args(&parse_share(1, "/srv/x,ro").unwrap(), (1000, 100));
        assert!(a.contains(&"--readonly".to_owned()));
        assert!(a.contains(&"--translate-uid=squash-guest:0:1000:4294967295".to_owned()));
        assert!(a.contains(&"--translate-gid=squash-guest:0:100:4294967295".to_owned()));
    }

    #[test]
    fn missing_directories_are_named() {
        let spec = parse_share(1, "/nonexistent/kuml-hostfs-test").unwrap();
        let e = Daemon::spawn(&spec, &opts((0, 0))).unwrap_err();
        assert_eq!(e.to_string(), "cannot share /nonexistent/kuml-hostfs-test");
        let f = tempfile::NamedTempFile::new().unwrap();
        let spec = parse_share(1, f.path().to_str().unwrap()).unwrap();
        let e = Daemon::spawn(&spec, &opts((0, 0))).unwrap_err();
        assert!(e.to_string().ends_with("is not a directory"), "{e}");
    }

    #[test]
    fn a_daemon_that_cannot_start_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let spec = parse_share(1, dir.path().to_str().unwrap()).unwrap();
        let mut o = opts((0, 0));
        o.runtime_dir = dir.path().to_path_buf();
        o.program = dir.path().join("no-such-virtiofsd");
        let e = Daemon::spawn(&spec, &o).unwrap_err();
        assert!(e.to_string().starts_with("cannot start "), "{e}");
        // The socket's name and directory are gone either way.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
