//! virtio-blk over a ubd image: UML's `ubdN` disks as `/dev/vdX`.
//!
//! * [`request`]: PURE: a descriptor chain to a checked, typed [`Request`].
//! * [`execute`]: a request carried out against a [`ubd::Disk`] and guest memory.
//! * [`device`]: features, configuration space, the image, activation, reset ([`Block`]).
//! * [`event_handler`]: the event-manager subscriber that serves the request queue.
//!
//! The device offers VERSION_1, SEG_MAX, BLK_SIZE (512), FLUSH, EVENT_IDX, INDIRECT_DESC, RO
//! for a read-only image and, unless the `t` flag is given, DISCARD and WRITE_ZEROES. It has one
//! queue of [`QUEUE_SIZE`] entries. Requests are served synchronously on the event-loop thread
//! when the queue's notify eventfd fires: the guest's buffers are copied through a bounded
//! bounce buffer to or from the image with `pread`/`pwrite`, so a slow disk stalls the event
//! loop for as long as one batch of requests takes (at most [`BATCH_LIMIT`] per event; the
//! device then re-arms its queue eventfd and lets the other event sources run).
//!
//! A hostile guest cannot make the device panic: a request it gets wrong fails with
//! VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP; a chain without a status byte, or a broken
//! ring, marks the device NEEDS_RESET and the device stops serving until the guest resets it.
//!
//! Wiring (VMM side):
//! ```ignore
//! let image = ubd::open_spec(&spec, global_sync)?;              // takes the host locks
//! let block = Arc::new(Mutex::new(Block::from_image(image, &spec, global_sync)?));
//! let sub_id = event_manager.add_subscriber(block.clone());     // Arc<Mutex<Block>>
//! let pci = VirtioPciDevice::new(block.clone(), mem.clone(), msi_routing, bar_addr)?;
//! // (register pci.ioeventfds(bar_addr) with KVM; the queue eventfds reach the device at
//! // activation, its subscriber watches them)
//! // Hot-unplug, once the guest ejected the slot:
//! event_manager.remove_subscriber(sub_id)?;
//! drop(block.lock().unwrap().release_disk());                   // flushes, closes, unlocks
//! ```

pub mod device;
pub mod event_handler;
pub mod execute;
pub mod request;

pub use device::{Block, BlockConfig, BlockError, BATCH_LIMIT, QUEUE_SIZE};
pub use execute::{process_chain, ChainContext, ExecOptions, ExecuteError};
pub use request::{Request, RequestError};

#[cfg(test)]
mod tests;
