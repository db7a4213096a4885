//! Virtio devices, independent of their transport.
//!
//! A device model implements [`VirtioDevice`]. The transport (virtio-pci, see `crate::pci`)
//! owns the common configuration state (feature negotiation, queue setup, device status) and
//! calls into the device for its configuration space, activation and reset.
//!
//! Threading: the transport runs on vCPU threads (register accesses are exits). Queue
//! notifications never reach it: every queue's notify address is a KVM ioeventfd, handed to the
//! device at activation, and the device handles those eventfds on the event-loop thread as an
//! event-manager subscriber. A device learns that it was activated through its own activation
//! eventfd, which its subscriber watches from the start; on that event it registers the queue
//! eventfds it was given.

pub mod block;
pub mod console;
pub mod fs;
pub mod net;
mod rings;
#[cfg(test)]
pub(crate) mod test_utils;

pub(crate) use rings::{QueueSlots, Rings};

use std::io;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Device type numbers (virtio 1.2, 5).
pub mod types {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// File system (virtio-fs).
    pub const FS: u32 = 26;
}

/// Feature bit: the device complies with virtio 1.0 and later (modern interface).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const NEEDS_RESET: u8 = 64;
    /// The guest gave up on the device.
    pub const FAILED: u8 = 128;
}

/// What an interrupt signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// The device configuration changed.
    Config,
    /// The used ring of this queue has new entries.
    Queue(u16),
}

/// How a device raises interrupts; the transport implements it (MSI-X vectors and irqfds).
pub trait VirtioInterrupt: Send + Sync {
    /// Signals the guest.
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;
    /// Marks the device as needing a reset (sets NEEDS_RESET and signals a config change).
    fn needs_reset(&self);
}

/// A queue handed to a device at activation: its index, its state and its notify eventfd.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Index of the queue in the device.
    pub index: u16,
    /// The queue as the driver configured it.
    pub queue: Queue,
    /// Written by KVM when the driver notifies this queue (shared, so that the device's
    /// [`crate::watch::Watch`] keeps it open until the event loop stopped watching it).
    pub notify: Arc<EventFd>,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer queues than the device needs.
    #[error("the driver enabled {got} queues, the device needs {need}")]
    MissingQueues {
        /// Queues enabled.
        got: usize,
        /// Queues required.
        need: usize,
    },
    /// An eventfd or another host resource could not be set up.
    #[error("cannot set up the device's host resources")]
    Host(#[source] io::Error),
    /// The device's backend (a vhost-user daemon) refused to start.
    #[error("the device's backend cannot start")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A virtio device model, transport-agnostic.
pub trait VirtioDevice: Send {
    /// Device type (see [`types`]).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers, including [`VIRTIO_F_VERSION_1`].
    fn features(&self) -> u64;
    /// Records the features the driver accepted (a subset of [`VirtioDevice::features`]).
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device once the driver set DRIVER_OK.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// Stops the device after the driver wrote 0 to the status register. Returns false if the
    /// device cannot be reset (the transport then leaves it failed).
    fn reset(&mut self) -> bool;
}

/// Copies `data.len()` bytes of a device's configuration space `config` from `offset`;
/// bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// The capacity of a receive chain, or `None` if a descriptor in it is device-readable (a
/// receive chain must be all device-writable).
pub fn writable_capacity(chain: &[Descriptor]) -> Option<usize> {
    chain.iter().try_fold(0usize, |total, d| {
        d.is_write_only()
            .then(|| total.saturating_add(d.len() as usize))
    })
}

/// Takes the next available descriptor chain of `queue`: its head index and descriptors.
/// `Err` means the driver's available ring is unusable (the device should ask for a reset).
pub fn next_chain(
    queue: &mut Queue,
    mem: &GuestMemory,
) -> Result<Option<(u16, Vec<Descriptor>)>, virtio_queue::Error> {
    use virtio_queue::QueueOwnedT;
    Ok(queue
        .iter(mem)?
        .next()
        .map(|chain| (chain.head_index(), chain.collect())))
}
