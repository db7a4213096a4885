//! `hostfs`: UML's hostfs for kuml, on virtio-fs.
//!
//! The guest mounts host directories as UML's guests do (`mount -t hostfs none /mnt/host -o
//! /home/u`, `rootfstype=hostfs rootflags=/srv/root`); underneath, kuml is the vhost-user
//! frontend of a `virtiofsd` per share (see `docs/hostfs.md`).
//!
//! PURE modules: [`spec`] (the `hostfs=` / `hostfs<N>=` options) and [`mount_data`] (UML's
//! mount data, as the guest's `hostfs` type and `mount.hostfs` read it). I/O: [`daemon`] (the
//! virtiofsd behind a share).

pub mod daemon;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mount_data;
pub mod spec;

pub use daemon::{find_virtiofsd, Daemon, DaemonError, DaemonOptions, REQUEST_TIMEOUT};
pub use mount_data::{parse_mount_data, MountData, MountDataError};
pub use spec::{
    check_unique_tags, parse_share, parse_share_name, share_name, DuplicateTag, ShareSpec,
    SpecError, DEFAULT_TAG, MAX_SHARES, MAX_TAG_LEN,
};

/// Locks `m`, recovering from a poisoned lock.
fn locked<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
