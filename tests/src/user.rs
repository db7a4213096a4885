//! An ordinary user for the tests of kuml without root (issue 17: "UML users never need root").
//!
//! The e2e tests run as root; [`OrdinaryUser::new`] makes the host as a Debian user of kuml
//! finds it and gives the test a user of it:
//!
//! * group `kvm` (made with `groupadd --system` if the host has none), and `/dev/kvm` given to
//!   it with mode 0660 when no ordinary user may open it, as Debian's udev rule does;
//!   `/dev/net/tun` read-write for everyone (Debian's 0666), so a tap made for the user can be
//!   attached to;
//! * the user [`NAME`] (`useradd --system`, its own group, member of `kvm`, no home);
//! * per test a new home directory (mode 0700, owned by the user) that kuml gets as `$HOME`, so
//!   `~/.uml`, COW files and sockets are the user's own.
//!
//! Commands run as the user through `setpriv --reuid --regid --init-groups` (its groups from
//! the group file, as after a login). What the fixture changed is undone when the last
//! [`OrdinaryUser`] of the process is dropped: the user and a group it made are deleted, the
//! device nodes get their old group and mode back. Tests of one binary share the user (they
//! may run in parallel); drop the `OrdinaryUser` after every process started as it (declare it
//! first in the test).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The user's name.
pub const NAME: &str = "kuml-test";

/// What the fixture changed on the host, undone by the last [`OrdinaryUser`].
#[derive(Debug, Default)]
struct Shared {
    users: usize,
    made_group: bool,
    /// (node, old gid, old mode) of each device node whose access was widened.
    nodes: Vec<(PathBuf, u32, u32)>,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    users: 0,
    made_group: false,
    nodes: Vec::new(),
});

/// The ordinary user of one test (see the module docs).
#[derive(Debug)]
pub struct OrdinaryUser {
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
    /// The home directory of this test (`$HOME` of every command run as the user).
    pub home: PathBuf,
    _home: tempfile::TempDir,
}

impl OrdinaryUser {
    /// Makes (or joins) the user and a new home directory for this test.
    pub fn new() -> OrdinaryUser {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if shared.users == 0 {
            set_up(&mut shared);
        }
        shared.users += 1;
        drop(shared);
        let uid = id("-u");
        let gid = id("-g");
        let home = tempfile::Builder::new()
            .prefix("kuml-user-home.")
            .tempdir()
            .expect("TEST CANNOT RUN: make the user's home directory");
        std::os::unix::fs::chown(home.path(), Some(uid), Some(gid)).expect("chown the home");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod the home");
        OrdinaryUser {
            uid,
            gid,
            home: home.path().to_owned(),
            _home: home,
        }
    }

    /// The program and leading arguments that run a command as the user (`setpriv …`), and
    /// the environment to add: `HOME` (this test's home), `USER`, `LOGNAME`.
    pub fn wrapper(&self) -> (Vec<String>, Vec<(String, String)>) {
        (
            [
                "setpriv",
                &format!("--reuid={NAME}"),
                &format!("--regid={NAME}"),
                "--init-groups",
                "--",
            ]
            .map(str::to_owned)
            .to_vec(),
            vec![
                ("HOME".to_owned(), self.home.display().to_string()),
                ("USER".to_owned(), NAME.to_owned()),
                ("LOGNAME".to_owned(), NAME.to_owned()),
            ],
        )
    }

    /// A command that runs `program` as the user, with its environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let (wrap, env) = self.wrapper();
        let mut cmd = Command::new(&wrap[0]);
        cmd.args(&wrap[1..]).arg(program).envs(env);
        cmd
    }

    /// Whether the user may make a user namespace, which the sandboxes of virtiofsd (hostfs)
    /// and passt (slirp) need for an ordinary user. A kernel refuses one in a chroot and where
    /// `user.max_user_namespaces` is 0; the nested lane runs its command outside a chroot for it.
    pub fn may_make_user_namespace(&self) -> bool {
        self.command("unshare")
            .args(["--user", "--map-root-user", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `path` if the user may read it (every directory above it searchable by others), else a
    /// copy of it in the home, the user's: a checkout under a private directory (`/root/…`)
    /// still runs these tests. Executables stay executable.
    pub fn reachable(&self, path: &Path) -> PathBuf {
        let readable = self
            .command("test")
            .arg("-r")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if readable {
            return path.to_owned();
        }
        let dir = self.home.join("from-root");
        self.mkdir(&dir);
        let copy = dir.join(path.file_name().expect("a file"));
        if !copy.exists() {
            std::fs::copy(path, &copy)
                .unwrap_or_else(|e| panic!("copy {} for the user: {e}", path.display()));
            std::os::unix::fs::chown(&copy, Some(self.uid), Some(self.gid)).expect("chown");
            eprintln!(
                "kuml-e2e: {NAME} cannot read {}; it uses a copy in its home",
                path.display()
            );
        }
        copy
    }

    /// Makes `path` (in the home) a directory of the user.
    pub fn mkdir(&self, path: &Path) {
        std::fs::create_dir_all(path).expect("mkdir in the user's home");
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).expect("chown");
    }
}

impl Default for OrdinaryUser {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OrdinaryUser {
    fn drop(&mut self) {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        shared.users -= 1;
        if shared.users == 0 {
            tear_down(&mut shared);
        }
    }
}

/// A numeric id of the user (`id -u` / `id -g`).
fn id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, NAME])
        .output()
        .expect("TEST CANNOT RUN: run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("TEST CANNOT RUN: no user {NAME}"))
}

fn run(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("TEST CANNOT RUN: cannot run {prog} (passwd package): {e}"))
        .success()
}

fn group_id(name: &str) -> Option<u32> {
    let out = Command::new("getent").args(["group", name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)?
        .trim()
        .parse()
        .ok()
}

fn set_up(shared: &mut Shared) {
    assert!(
        // SAFETY: geteuid cannot fail and touches no memory.
        unsafe { libc::geteuid() } == 0,
        "TEST CANNOT RUN: making an ordinary user needs the tests to run as root"
    );
    let kvm = match group_id("kvm") {
        Some(g) => g,
        None => {
            assert!(run("groupadd", &["--system", "kvm"]), "groupadd kvm");
            shared.made_group = true;
            group_id("kvm").expect("the new group kvm")
        }
    };
    // A user left by a killed run of this fixture is reused (and deleted at the end).
    let known = Command::new("id")
        .args(["-u", NAME])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !known {
        assert!(
            run(
                "useradd",
                &[
                    "--system",
                    "--user-group",
                    "--groups",
                    "kvm",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    NAME,
                ],
            ),
            "useradd {NAME}"
        );
    } else {
        assert!(run("usermod", &["-a", "-G", "kvm", NAME]), "usermod {NAME}");
    }
    // /dev/kvm as Debian's udev leaves it (group kvm, 0660) when no ordinary user may use it.
    widen(shared, Path::new("/dev/kvm"), Some(kvm), 0o660);
    // /dev/net/tun as Debian leaves it (0666).
    widen(shared, Path::new("/dev/net/tun"), None, 0o666);
}

/// Gives `node` group `gid` (if given) and the permission bits of `mode` when ordinary users
/// (its group, or everyone for 0666) may not read and write it yet; records the old state.
fn widen(shared: &mut Shared, node: &Path, gid: Option<u32>, mode: u32) {
    let Ok(meta) = std::fs::metadata(node) else {
        return; // no such node here: the tests that need it say so
    };
    let old = meta.mode() & 0o7777;
    let usable = match gid {
        Some(g) => (meta.gid() == g && old & 0o060 == 0o060) || old & 0o006 == 0o006,
        None => old & 0o006 == 0o006,
    };
    if usable {
        return;
    }
    if let Some(g) = gid {
        std::os::unix::fs::chown(node, None, Some(g)).expect("chgrp the node");
    }
    std::fs::set_permissions(node, std::fs::Permissions::from_mode(old | mode))
        .expect("chmod the node");
    eprintln!(
        "kuml-e2e: {} was mode {old:04o} group {}; now {:04o} group {} as on Debian, until the \
         test ends",
        node.display(),
        meta.gid(),
        old | mode,
        gid.unwrap_or(meta.gid())
    );
    shared.nodes.push((node.to_owned(), meta.gid(), old));
}

fn tear_down(shared: &mut Shared) {
    // userdel refuses while a process of the user runs (one the test has just killed may
    // not be reaped yet): a few tries, then it says so.
    let mut deleted = false;
    for _ in 0..50 {
        if run("userdel", &[NAME]) {
            deleted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !deleted {
        eprintln!("kuml-e2e: could not delete the user {NAME}: a process of it still runs");
    }
    for (node, gid, mode) in shared.nodes.drain(..) {
        let _ = std::os::unix::fs::chown(&node, None, Some(gid));
        let _ = std::fs::set_permissions(&node, std::fs::Permissions::from_mode(mode));
    }
    if shared.made_group {
        let _ = run("groupdel", &["kvm"]);
        shared.made_group = false;
    }
}
