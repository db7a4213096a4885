//! The launcher thread: it starts kuml's helper processes, so that they do not inherit the
//! filter of the thread that wants them (a child runs under its parent thread's filter,
//! across execve).
//!
//! It is started before any filter and then puts itself under the launcher filter, a deny
//! list that its children inherit harmlessly. Other threads hand it a prepared
//! [`Command`] and wait for the [`Child`]; the crates that start helpers reach it through
//! their `launch::set_spawner` hooks.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

use super::ThreadKind;

type Job = (Command, Sender<io::Result<Child>>);

static LAUNCHER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

/// Starts the launcher thread and points the crates' spawn hooks at it.
pub(super) fn start() -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("launcher".into())
        .spawn(move || {
            if let Err(e) = super::install(ThreadKind::Launcher) {
                log::error!("{}", devices::error_chain(&e));
                // Without its filter the launcher still starts helpers: they would not be
                // filtered by kuml anyway. The error is on the log.
            }
            for (mut cmd, reply) in rx {
                // The asker may have given up; nothing to do then (the child is dropped
                // and, not waited for, reaped by nobody until kuml exits).
                let _ = reply.send(cmd.spawn());
            }
        })?;
    let _ = LAUNCHER.set(Mutex::new(tx));
    netdev::launch::set_spawner(spawn);
    Ok(())
}

/// Starts `cmd` on the launcher thread (on this thread when there is none).
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    let Some(tx) = LAUNCHER.get() else {
        return cmd.spawn();
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("the launcher thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the launcher thread is gone"))?
}
