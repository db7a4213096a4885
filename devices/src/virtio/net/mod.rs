//! virtio-net: UML's `ethN` as a virtio network card over a [`netdev::Backend`].
//!
//! Features: VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_NET_F_MAC,
//! VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MTU (1500). No offloads, no mergeable receive buffers,
//! no control queue: queue 0 receives, queue 1 transmits, 256 entries each.
//!
//! * [`header`] (PURE): the 12-byte `virtio_net_hdr_v1`.
//! * [`rxtx`]: descriptor chains to frames and back.
//! * [`device`]: configuration space, features, link status, activation, reset, close ([`Net`]).
//! * [`event_handler`]: the event-manager subscriber moving frames between rings and backend.
//!
//! Wiring (VMM side):
//! ```ignore
//! let mac = spec.mac_or_derived(umid, index);
//! let backend = netdev::open_backend(&spec, mac)?;           // Box<dyn netdev::Backend>
//! let net = Arc::new(Mutex::new(Net::new(backend, mac)?));
//! let sub_id = event_manager.add_subscriber(net.clone());   // Arc<Mutex<Net>>
//! let pci = VirtioPciDevice::new(net.clone() as Arc<Mutex<dyn VirtioDevice>>, mem, routing, bar)?;
//! // at run time: net.lock().unwrap().set_link_up(false);
//! // a backend that failed (deleted tap, dead switch) leaves the link down until
//! // net.lock().unwrap().replace_backend(netdev::open_backend(&spec, mac)?);
//! // hot-unplug, once the guest ejected the slot:
//! event_manager.remove_subscriber(sub_id)?;    // the loop forgets the device's descriptors
//! net.lock().unwrap().close();                 // logs the counters, lets go of the backend
//! ```

pub mod device;
pub mod event_handler;
pub mod header;
pub mod rxtx;

pub use device::{Net, NetError, NetStats, MTU, QUEUE_SIZE};
pub use header::{NetHdr, NET_HDR_LEN};
pub use rxtx::{ChainError, TX_FRAME_MAX};

#[cfg(test)]
mod tests;
