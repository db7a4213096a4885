//! Device models for kuml: buses, legacy PC devices, PCI and virtio.
//!
//! This crate depends on the disk (`ubd`) and network (`netdev`) crates, never on the VMM.

pub mod bus;
pub mod chan;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod legacy;
pub mod pci;
#[cfg(test)]
mod test_log;
pub mod virtio;
pub mod warn;
pub mod watch;

/// Locks `m`, recovering from a poisoned lock: a device whose handler panicked on another
/// thread keeps its last state rather than taking every vCPU down with it.
pub fn locked<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An error and its sources, joined with ": " (how kuml prints errors, once).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
