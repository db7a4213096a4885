//! Descriptors kuml inherited from whoever started it, for `vec<N>:transport=fd,fd=<n>`.
//!
//! [`record`] runs first thing in `main`, before kuml opens anything: every descriptor open
//! then, other than 0, 1 and 2, was handed over by the caller. They are marked close-on-exec
//! (helpers kuml starts must not hold them) and each can be [`claim`]ed once, so that an
//! `fd=` option can never take a descriptor kuml opened for itself (its event loop, a disk)
//! or one another interface already uses.

use std::collections::BTreeSet;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// `None` until [`record`] ran; then the inherited descriptors not claimed yet.
static UNCLAIMED: Mutex<Option<BTreeSet<RawFd>>> = Mutex::new(None);

fn unclaimed() -> std::sync::MutexGuard<'static, Option<BTreeSet<RawFd>>> {
    UNCLAIMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the descriptors this process was started with (above 2) and marks them
/// close-on-exec. Call once, before opening anything.
pub fn record() {
    let mut found = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            if let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) {
                found.insert(fd);
            }
        }
    }
    // The directory's own descriptor was among them and is closed now.
    found.retain(|&fd| fd > 2 && crate::sock::fd_is_open(fd));
    for &fd in &found {
        // SAFETY: F_GETFD/F_SETFD with an integer flag on a descriptor that is open.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    if !found.is_empty() {
        log::debug!("inherited descriptors: {found:?}");
    }
    *unclaimed() = Some(found);
}

/// Takes ownership of inherited descriptor `fd`; the reason why not otherwise.
pub fn claim(fd: RawFd) -> Result<OwnedFd, String> {
    let mut guard = unclaimed();
    let Some(set) = guard.as_mut() else {
        return Err("kuml did not record the descriptors it was started with".to_string());
    };
    if fd <= 2 {
        return Err("descriptors 0, 1 and 2 are kuml's standard streams".to_string());
    }
    if !set.remove(&fd) {
        let free = if set.is_empty() {
            "none".to_string()
        } else {
            set.iter()
                .map(RawFd::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "not a descriptor kuml was started with, or already used by another interface \
             (inherited and still free: {free})"
        ));
    }
    // SAFETY: `fd` was open when kuml started, kuml never opened it itself, and the set hands
    // it out once: nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn only_recorded_descriptors_once() {
        // Played in one test: the registry is process-wide.
        assert!(claim(7).is_err(), "nothing recorded yet");
        let inherited = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        record();
        assert!(claim(1).is_err());
        let owned = claim(inherited).expect("an inherited descriptor");
        let again = claim(inherited).expect_err("claimed twice");
        // The descriptors still free are listed as numbers ("3, 7" or "none").
        let free = again
            .rsplit_once("(inherited and still free: ")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .expect(&again);
        assert!(
            free == "none" || free.split(", ").all(|n| n.parse::<RawFd>().is_ok()),
            "{again}"
        );
        drop(owned);
    }
}
