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
            for (cmd, reply) in rx {
                // The asker may have given up; nothing to do then (the child is dropped
                // and, not waited for, reaped by nobody until kuml exits).
                let _ = reply.send(spawn_here(cmd));
            }
        })?;
    let _ = LAUNCHER.set(Mutex::new(tx));
    netdev::launch::set_spawner(spawn);
    Ok(())
}

/// Starts `cmd` on the launcher thread (on this thread when there is none).
pub fn spawn(cmd: Command) -> io::Result<Child> {
    let Some(tx) = LAUNCHER.get() else {
        return spawn_here(cmd);
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

/// Starts `cmd` from this thread with no signal blocked: kuml blocks the signals it reads
/// through a signalfd (SIGHUP, SIGINT, SIGTERM, SIGWINCH) in every thread, and a child
/// inherits its parent thread's mask across execve, so a helper would otherwise ignore the
/// SIGTERM that stops it and an xterm the SIGWINCH of its window.
fn spawn_here(mut cmd: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls (sigemptyset,
    // pthread_sigmask) on a set on the child's own stack.
    unsafe {
        cmd.pre_exec(|| {
            let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(none.as_mut_ptr());
            match libc::pthread_sigmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mask(how: libc::c_int, signals: &[libc::c_int]) {
        // SAFETY: a set on this stack, changed only by libc's set functions.
        unsafe {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            for s in signals {
                libc::sigaddset(set.as_mut_ptr(), *s);
            }
            assert_eq!(
                libc::pthread_sigmask(how, set.as_ptr(), std::ptr::null_mut()),
                0
            );
        }
    }

    #[test]
    fn a_helper_starts_with_no_signal_blocked() {
        // On a thread of its own: the mask is per thread, as in kuml.
        let out = std::thread::spawn(|| {
            let kuml_blocks = [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGWINCH];
            set_mask(libc::SIG_BLOCK, &kuml_blocks);
            let mut cmd = Command::new("grep");
            cmd.args(["^SigBlk", "/proc/self/status"]);
            cmd.stdout(std::process::Stdio::piped());
            let out = spawn_here(cmd).unwrap().wait_with_output().unwrap();
            set_mask(libc::SIG_UNBLOCK, &kuml_blocks);
            String::from_utf8(out.stdout).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(out.trim(), "SigBlk:\t0000000000000000");
    }
}
