//! Process identity as UML's: kuml leads its own session and process group.
//!
//! UML calls `setsid()` at start, so tools that launch it find its process group id equal to
//! its pid and can signal the whole instance (`kill -- -<pid>`) without hitting their own
//! group. Helpers kuml starts (an xterm, a slirp helper) stay in that group. Since a new
//! session has no controlling terminal, the terminal's keys (Ctrl-C) only reach the guest
//! through con0 in raw mode, as with UML.

/// Makes kuml a session and process group leader. When it already leads a process group (a
/// shell with job control started it as a job, or it was started by `setsid`), `setsid()`
/// refuses with `EPERM`; the group id already equals the pid then, and kuml keeps its session
/// and controlling terminal.
pub fn become_session_leader() {
    // SAFETY: setsid takes no arguments and touches no memory of ours.
    if unsafe { libc::setsid() } < 0 {
        let e = std::io::Error::last_os_error();
        log::debug!(
            "setsid: {e}: kuml already leads process group {}",
            getpgrp()
        );
    }
}

/// kuml's process group id.
pub fn getpgrp() -> i32 {
    // SAFETY: getpgrp takes no arguments and cannot fail.
    unsafe { libc::getpgrp() }
}
