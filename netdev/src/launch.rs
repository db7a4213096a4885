//! Where this crate starts helper processes.
//!
//! kuml runs its threads under seccomp filters, and a child process inherits the filter of
//! the thread that forked it. So helpers (an ifup script, a network helper, an xterm, a
//! daemon) are started by one thread kept for that; the binary names it once with
//! [`set_spawner`]. Without one (tests, other users of the crate) the calling thread spawns.

use std::io;
use std::process::{Child, Command};
use std::sync::OnceLock;

/// Starts a prepared command, as [`Command::spawn`] does.
pub type Spawner = fn(Command) -> io::Result<Child>;

static SPAWNER: OnceLock<Spawner> = OnceLock::new();

/// Makes `f` start every helper process of this crate from now on. Only the first call
/// counts; returns false for a later one.
pub fn set_spawner(f: Spawner) -> bool {
    SPAWNER.set(f).is_ok()
}

/// Starts `cmd` through the spawner, or on this thread when none is set.
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    match SPAWNER.get() {
        Some(f) => f(cmd),
        None => cmd.spawn(),
    }
}
