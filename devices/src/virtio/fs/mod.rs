//! virtio-fs (device type 26) as a vhost-user frontend: UML's hostfs on KVM.
//!
//! kuml does not serve the file system itself: a `virtiofsd` per share (started by the
//! `hostfs` crate, sandboxed) does, reading the guest's queues directly. This device is the
//! frontend side of the vhost-user protocol (rust-vmm's `vhost` crate):
//!
//! * at creation: `SET_OWNER`, the backend's features and protocol features (`MQ`,
//!   `REPLY_ACK`: every later request is acknowledged, so a failure is seen where it happens);
//! * on DRIVER_OK ([`Fs::activate`](crate::virtio::VirtioDevice::activate), on a vCPU thread):
//!   the acknowledged features, the guest memory table (each region's memfd, so the daemon maps
//!   guest memory itself), and per queue its size, addresses, start index, kick descriptor (the
//!   transport's KVM ioeventfd: the daemon is woken by the guest's notifications without kuml)
//!   and call descriptor;
//! * the call descriptors are kuml's eventfds: the event loop turns each signal into the
//!   queue's MSI-X interrupt (so masking and vector changes stay with the transport);
//! * on reset: every ring stopped (`GET_VRING_BASE`), so the driver can start again;
//! * every exchange with the daemon (the handshake, starting and stopping the rings) has a
//!   deadline, `hostfs::REQUEST_TIMEOUT`: past it the socket is shut down and the daemon
//!   treated as gone, never a caller held for ever;
//! * the vhost-user socket is watched for a hang-up: a daemon that dies leaves the device
//!   failed (NEEDS_RESET) with its last messages in kuml's log, never a hung guest request.
//!
//! The configuration space (`struct virtio_fs_config`) is kuml's: the share's tag and one
//! request queue.

mod deadline;
mod device;
mod event_handler;
#[cfg(test)]
mod tests;

pub use device::{Fs, FsError, NUM_QUEUES, QUEUE_SIZE};
pub use event_handler::{CALL_BASE, SOCKET, WAKE};

/// Configuration space: the tag (36 bytes, NUL-padded) and the number of request queues.
pub const CONFIG_LEN: usize = hostfs::MAX_TAG_LEN + 4;

/// PURE: the configuration space of a share with `tag` (at most 36 bytes; longer is cut).
pub fn config_bytes(tag: &str) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let t = tag.as_bytes();
    let n = t.len().min(hostfs::MAX_TAG_LEN);
    c[..n].copy_from_slice(&t[..n]);
    c[hostfs::MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
    c
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn config_space() {
        let c = config_bytes("hostfs");
        assert_eq!(&c[..7], b"hostfs\0");
        assert!(c[6..36].iter().all(|b| *b == 0));
        assert_eq!(&c[36..], &[1, 0, 0, 0]);
        let long = config_bytes(&"t".repeat(40));
        assert!(long[..36].iter().all(|b| *b == b't'));
    }
}
