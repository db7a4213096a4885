//! The transport's interrupt state, shared between vCPU threads (register accesses) and the
//! event-loop thread (devices raising interrupts through [`VirtioInterrupt`]).
//!
//! Vector assignments, the ISR, the configuration generation and the NEEDS_RESET flag are
//! atomics; only the MSI-X table sits behind a mutex, held for a table access or one trigger.
//! Lock order: the transport (and the device) may be locked before the MSI-X mutex, never after.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::pci::msix::{MsiRouting, Msix};
use crate::virtio::{InterruptKind, VirtioInterrupt};

/// "No vector" in msix_config and queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;
/// ISR bit: a queue interrupt.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: a configuration change.
pub const ISR_CONFIG: u8 = 2;

/// Interrupt state of one virtio-pci function.
pub struct InterruptState {
    isr: AtomicU8,
    generation: AtomicU8,
    needs_reset: AtomicBool,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    num_vectors: u16,
    msix: Mutex<Msix>,
    routing: Arc<dyn MsiRouting>,
}

impl std::fmt::Debug for InterruptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptState")
            .field("isr", &self.isr)
            .field("needs_reset", &self.needs_reset)
            .finish()
    }
}

impl InterruptState {
    /// Creates the state for `queues` queues and an MSI-X table.
    pub fn new(queues: usize, msix: Msix, routing: Arc<dyn MsiRouting>) -> Self {
        Self {
            isr: AtomicU8::new(0),
            generation: AtomicU8::new(0),
            needs_reset: AtomicBool::new(false),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            num_vectors: msix.num_vectors(),
            msix: Mutex::new(msix),
            routing,
        }
    }

    /// Locks the MSI-X state.
    pub fn msix(&self) -> MutexGuard<'_, Msix> {
        crate::locked(&self.msix)
    }

    /// The routing the MSI-X state reports to.
    pub fn routing(&self) -> &dyn MsiRouting {
        &*self.routing
    }

    /// Reads and clears the ISR.
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// The configuration generation.
    pub fn generation(&self) -> u8 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a device asked for a reset.
    pub fn needs_reset_set(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    // A vector the guest may assign: inside the table, or NO_VECTOR.
    fn checked(&self, vector: u16) -> u16 {
        if vector < self.num_vectors {
            vector
        } else {
            NO_VECTOR
        }
    }

    /// The configuration-change vector.
    pub fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Acquire)
    }

    /// Assigns the configuration-change vector (NO_VECTOR if out of range).
    pub fn set_config_vector(&self, vector: u16) {
        self.config_vector
            .store(self.checked(vector), Ordering::Release);
    }

    /// The vector of queue `q` (NO_VECTOR for a queue that does not exist).
    pub fn queue_vector(&self, q: u16) -> u16 {
        self.queue_vectors
            .get(usize::from(q))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    /// Assigns the vector of queue `q` (NO_VECTOR if out of range).
    pub fn set_queue_vector(&self, q: u16, vector: u16) {
        let vector = self.checked(vector);
        if let Some(v) = self.queue_vectors.get(usize::from(q)) {
            v.store(vector, Ordering::Release);
        }
    }

    /// Marks the device as needing a reset (in the device status).
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
    }

    /// Back to the power-on state, as a device reset requires (the MSI-X table is PCI state and
    /// is kept).
    pub fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
    }

    fn raise(&self, vector: u16) -> io::Result<()> {
        if vector == NO_VECTOR {
            return Ok(());
        }
        self.msix().trigger(vector, &*self.routing)
    }
}

impl VirtioInterrupt for InterruptState {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        match kind {
            InterruptKind::Config => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.isr.fetch_or(ISR_CONFIG, Ordering::AcqRel);
                self.raise(self.config_vector())
            }
            InterruptKind::Queue(q) => {
                if usize::from(q) >= self.queue_vectors.len() {
                    log::debug!("virtio-pci: interrupt for missing queue {q}");
                    return Ok(());
                }
                self.isr.fetch_or(ISR_QUEUE, Ordering::AcqRel);
                self.raise(self.queue_vector(q))
            }
        }
    }

    fn needs_reset(&self) {
        log::warn!("virtio-pci: device needs a reset");
        self.set_needs_reset();
        if let Err(e) = self.trigger(InterruptKind::Config) {
            log::warn!("virtio-pci: cannot signal the reset request: {e}");
        }
    }
}
