//! Raw mode for a terminal on stdin, restored on every way out (drop, panic, signals).

use std::sync::Mutex;

static SAVED: Mutex<Option<(i32, libc::termios)>> = Mutex::new(None);

/// Puts `fd` in raw mode if it is a terminal; the guard restores it.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Enters raw mode on `fd` when it is a terminal; `None` otherwise.
    pub fn enter(fd: i32) -> Option<RawMode> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it or fails without touching memory
        // beyond it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, t));
        let mut raw = t;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so that the guest's "\n" still returns the carriage.
        raw.c_oflag = t.c_oflag;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            prev(info);
        }));
        Some(RawMode(()))
    }
}

/// Restores the saved terminal state, if any. Safe to call more than once.
pub fn restore() {
    if let Some((fd, t)) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: `t` is the state tcgetattr returned for this descriptor.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}
