//! The virtio-net device: configuration space, features, backend, activation and reset.

use std::sync::Arc;

use log::{info, warn};
use netdev::{Backend, BackendState, MacAddr};
use virtio_queue::QueueT;

use crate::virtio::{
    types, ActivateError, ActiveQueue, GuestMemory, InterruptKind, QueueSlots, Rings, VirtioDevice,
    VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use crate::watch::Watch;

/// Feature bit: the configuration space holds the MTU.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// Feature bit: the configuration space holds the MAC address.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the configuration space holds the link status.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Feature bit: used_event / avail_event notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Link status bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// The MTU offered to the guest.
pub const MTU: u16 = 1500;
/// Queue size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;

/// Configuration space (virtio 1.2, 5.1.4): mac, status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

/// Why a virtio-net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The device's wake-up eventfd could not be created.
    #[error("cannot create the network device's eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Counters of one device (frames moved and lost), logged when it is closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames sent to the backend.
    pub tx_frames: u64,
    /// Bytes sent to the backend (frames only).
    pub tx_bytes: u64,
    /// Guest frames dropped: malformed chains, backend errors, link down.
    pub tx_dropped: u64,
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Bytes given to the guest (frames only).
    pub rx_bytes: u64,
    /// Host frames dropped: too long for the MTU or the guest's buffers, link down.
    pub rx_dropped: u64,
    /// Malformed receive chains returned unused (the frame waited for the next one).
    pub rx_bad_buffers: u64,
}

/// The receive and transmit queues.
pub(super) struct RxTx {
    pub(super) rx: ActiveQueue,
    pub(super) tx: ActiveQueue,
}

impl QueueSlots for RxTx {
    fn slot(&mut self, qi: usize) -> Option<&mut ActiveQueue> {
        match qi {
            RX_QUEUE => Some(&mut self.rx),
            TX_QUEUE => Some(&mut self.tx),
            _ => None,
        }
    }
}

/// What exists once the driver set DRIVER_OK.
pub(super) type Active = Rings<RxTx>;

/// A virtio-net device (UML's `ethN`) carrying raw Ethernet frames to a [`Backend`].
///
/// The link the guest sees (VIRTIO_NET_S_LINK_UP, with a configuration interrupt when it
/// changes) is up while the link is set up ([`Net::set_link_up`]) and the backend carries
/// frames: a `uml_switch` port is down until the switch answered, and a backend that failed
/// (a deleted tap, a switch that went away) takes the link down until
/// [`Net::replace_backend`] gives the device a new one.
///
/// Share it as `Arc<Mutex<Net>>` between the transport (as a [`VirtioDevice`]) and the event
/// loop (as an event-manager `MutEventSubscriber`).
#[derive(Debug)]
pub struct Net {
    pub(super) mac: MacAddr,
    /// The link as set with [`Net::set_link_up`] (the cable).
    pub(super) admin_up: bool,
    /// The link status the guest was last shown.
    pub(super) link_up: bool,
    pub(super) acked_features: u64,
    pub(super) queue_sizes: [u16; 2],
    /// `None` once [`Net::close`] released it.
    pub(super) backend: Option<Box<dyn Backend>>,
    /// The backend's state: whether frames flow.
    pub(super) backend_state: BackendState,
    /// The backend failed for good: it is no longer watched or used.
    pub(super) backend_failed: bool,
    /// Backend errors since a frame last moved (a persistent error must not keep the event
    /// loop busy: past [`super::event_handler::ERRORS_IN_A_ROW_MAX`] the backend has failed).
    pub(super) errors_in_a_row: u32,
    /// What the event loop watches; woken on activation, reset, link changes and close,
    /// and when a round hit its budget.
    pub(super) watch: Watch,
    pub(super) active: Option<Active>,
    /// Receive buffer ([`netdev::RECV_BUF_LEN`] bytes).
    pub(super) rx_buf: Vec<u8>,
    /// A frame in `rx_buf` waiting for a guest buffer: its length. While one waits the
    /// backend is not read.
    pub(super) rx_pending: Option<usize>,
    /// Transmit buffer: the frame being sent.
    pub(super) tx_buf: Vec<u8>,
    /// Head of the chain whose frame is in `tx_buf` and that the backend refused with
    /// `WouldBlock`: it is retried when the backend becomes writable.
    pub(super) tx_pending: Option<u16>,
    pub(super) stats: NetStats,
}

impl Net {
    /// A network device with MAC `mac` whose frames go to and come from `backend`.
    /// The link is up once the backend is ready.
    pub fn new(backend: Box<dyn Backend>, mac: MacAddr) -> Result<Self, NetError> {
        let backend_state = backend.state();
        Ok(Self {
            mac,
            admin_up: true,
            link_up: backend_state == BackendState::Ready,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; 2],
            backend: Some(backend),
            backend_state,
            backend_failed: false,
            errors_in_a_row: 0,
            watch: Watch::new(format!("net {mac}")).map_err(NetError::EventFd)?,
            active: None,
            rx_buf: vec![0u8; netdev::RECV_BUF_LEN],
            rx_pending: None,
            tx_buf: Vec::new(),
            tx_pending: None,
            stats: NetStats::default(),
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// True while the guest sees the link up.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// True when the backend failed for good (or was closed): [`Net::replace_backend`]
    /// can bring the link back.
    pub fn backend_failed(&self) -> bool {
        self.backend_failed || self.backend.is_none()
    }

    /// Plugs or unplugs the cable: while it is out (or the backend does not carry frames),
    /// frames in both directions are dropped and the guest sees the link down.
    pub fn set_link_up(&mut self, up: bool) {
        self.admin_up = up;
        self.update_link();
        self.watch.wake();
    }

    /// Gives the device a new backend in place of one that failed or was closed (mconsole
    /// `config ethN=…` on a NIC whose tap was deleted): the link comes back up once it is
    /// ready. The old backend is closed once the event loop no longer watches it.
    pub fn replace_backend(&mut self, backend: Box<dyn Backend>) {
        self.backend_state = backend.state();
        self.backend = Some(backend);
        self.backend_failed = false;
        self.errors_in_a_row = 0;
        self.rx_pending = None;
        log::info!("net {}: new backend", self.mac);
        self.update_link();
        self.watch.wake();
    }

    /// Releases the backend (hot-unplug): the link goes down and the backend is closed once
    /// the event loop no longer watches it. Guest frames are dropped from then on.
    pub fn close(&mut self) {
        if self.backend.take().is_some() {
            log::info!("net {}: closed ({:?})", self.mac, self.stats);
        }
        self.rx_pending = None;
        self.update_link();
        self.watch.wake();
    }

    /// True once [`Net::close`] released the backend.
    pub fn is_closed(&self) -> bool {
        self.backend.is_none()
    }

    /// Whether frames can move between the guest and the backend now.
    pub(super) fn carrier(&self) -> bool {
        self.admin_up
            && self.backend.is_some()
            && !self.backend_failed
            && self.backend_state == BackendState::Ready
    }

    /// The backend failed for good: the link goes down (logged once), the backend is no
    /// longer watched, and frames are dropped until [`Net::replace_backend`].
    pub(super) fn fail_backend(&mut self, why: &str) {
        if self.backend_failed {
            return;
        }
        warn!(
            "net {}: the backend failed ({why}); link down until it is replaced",
            self.mac
        );
        self.backend_failed = true;
        self.rx_pending = None;
        self.update_link();
    }

    /// Shows the guest the link as it is now, with a configuration interrupt on a change.
    pub(super) fn update_link(&mut self) {
        let up = self.carrier();
        if self.link_up == up {
            return;
        }
        self.link_up = up;
        info!("net {}: link {}", self.mac, if up { "up" } else { "down" });
        if let Some(a) = self.active.as_ref() {
            if self.acked_features & (1 << VIRTIO_NET_F_STATUS) != 0 {
                if let Err(e) = a.interrupt.trigger(InterruptKind::Config) {
                    warn!("net {}: cannot signal the link change: {e}", self.mac);
                }
            }
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut cfg = [0u8; CONFIG_LEN];
        cfg[0..6].copy_from_slice(&self.mac.octets());
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        cfg[6..8].copy_from_slice(&status.to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg[10..12].copy_from_slice(&MTU.to_le_bytes());
        cfg
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        types::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MTU)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable for a modern driver (the MAC is read-only without
        // VIRTIO_NET_F_CTRL_MAC_ADDR, which is not offered).
        log::debug!(
            "net {}: ignoring a {}-byte configuration write at {offset:#x}",
            self.mac,
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        // A second activation without a reset replaces the first one's queues (dropped:
        // their eventfds stay open until the event loop, woken below, stopped watching them).
        self.active = None;
        let got = queues.len();
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match usize::from(q.index) {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                i => warn!("net {}: ignoring queue {i}", self.mac),
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::MissingQueues { got, need: 2 });
        };
        let broken = !rx.queue.is_valid(&mem) || !tx.queue.is_valid(&mem);
        if broken {
            warn!("net {}: a queue is not valid in guest memory", self.mac);
        }
        // Anything left from a previous activation belongs to a ring that no longer exists.
        self.tx_pending = None;
        let mut active = Rings::new("net", mem, interrupt, RxTx { rx, tx }, broken);
        active.signal_reset();
        self.active = Some(active);
        self.watch.wake();
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.tx_pending = None;
        self.acked_features = 0;
        self.watch.wake();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netdev::FakeBackend;

    fn net() -> Net {
        let b = FakeBackend::new().unwrap();
        Net::new(Box::new(b), MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])).unwrap()
    }

    #[test]
    fn test_config_space() {
        let mut n = net();
        let mut b = [0xffu8; 16];
        n.read_config(0, &mut b);
        assert_eq!(
            b,
            [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0xdc, 0x05, 0, 0, 0, 0]
        );
        let mut b = [0u8; 2];
        n.read_config(10, &mut b);
        assert_eq!(u16::from_le_bytes(b), 1500);
        n.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0, 0]);
        n.write_config(0, &[1, 2, 3, 4, 5, 6]);
        n.set_link_up(false);
        let mut b = [0xffu8; 2];
        n.read_config(6, &mut b);
        assert_eq!(b, [0, 0]);
        assert_eq!(n.mac(), MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
    }

    #[test]
    fn test_features() {
        let mut n = net();
        assert_eq!(n.device_type(), types::NET);
        assert_eq!(n.queue_max_sizes(), &[256, 256]);
        let f = n.features();
        for bit in [32, 29, 5, 16, 3] {
            assert_ne!(f & (1 << bit), 0, "bit {bit}");
        }
        // No offloads, no control queue, no mergeable buffers.
        for bit in [0, 1, 7, 11, 15, 17] {
            assert_eq!(f & (1 << bit), 0, "bit {bit}");
        }
        n.ack_features(u64::MAX);
        assert_eq!(n.acked_features, f);
    }
}
