//! The virtio-fs device: the vhost-user handshake, features, configuration, activation, reset.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use log::{info, warn};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::deadline::Deadline;
use super::{config_bytes, CONFIG_LEN};
use crate::virtio::{
    types, ActivateError, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use crate::watch::Watch;

/// Queues: the high-priority queue (FORGET, INTERRUPT) and one request queue.
pub const NUM_QUEUES: usize = 2;
/// The size of each queue. It bounds one FUSE request (the guest splits larger ones).
pub const QUEUE_SIZE: u16 = 1024;
/// Feature bit (ring): indirect descriptor tables.
const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit (ring): `used_event` / `avail_event` interrupt suppression.
const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Virtio features the guest may negotiate, if the daemon offers them.
const GUEST_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// Errors of a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The daemon did not complete the vhost-user handshake.
    #[error("virtiofsd did not answer the vhost-user handshake ({report})")]
    Handshake {
        /// What the daemon said or how it ended.
        report: String,
        /// The failed request.
        #[source]
        source: vhost::Error,
    },
    /// The daemon could not enter its sandbox (as an ordinary user: no user namespace).
    #[error(
        "virtiofsd could not enter its sandbox: run by an ordinary user it needs a user \
         namespace, which the kernel refuses to kuml's user here (a chroot, or user namespaces \
         turned off: sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone); hostfs \
         needs one (or root), nohostfs starts without hostfs ({report})"
    )]
    Sandbox {
        /// What the daemon said or how it ended.
        report: String,
        /// The failed request.
        #[source]
        source: vhost::Error,
    },
    /// The daemon lacks something kuml needs.
    #[error("virtiofsd does not offer {0}")]
    Unsupported(&'static str),
    /// The daemon's connection was already taken.
    #[error("the daemon has no vhost-user connection")]
    NoConnection,
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Guest memory cannot be shared with the daemon.
    #[error("guest memory is not backed by a file the daemon can map")]
    PrivateMemory(#[source] vhost::Error),
    /// A queue's rings are not in guest memory.
    #[error("queue {0}'s rings are outside guest memory")]
    QueueAddress(u16),
    /// The daemon refused a request while the driver started the device.
    #[error("virtiofsd refused {0}")]
    Request(&'static str, #[source] vhost::Error),
}

/// What exists once the driver set DRIVER_OK.
pub(super) struct Active {
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    /// The queues started, by index.
    pub(super) queues: Vec<u16>,
    /// The call eventfds the daemon signals, by queue index.
    pub(super) calls: Vec<Arc<EventFd>>,
    /// The kick eventfds (the transport's), kept open while the daemon may use them.
    _kicks: Vec<Arc<EventFd>>,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// A virtio-fs device whose file system a vhost-user daemon serves.
///
/// Share it as `Arc<Mutex<Fs>>` between the transport (as a [`VirtioDevice`]) and the event
/// loop (as an event-manager `MutEventSubscriber`).
pub struct Fs {
    pub(super) name: String,
    tag: String,
    frontend: Frontend,
    /// A duplicate of the vhost-user socket, watched for the daemon's hang-up.
    pub(super) socket: Arc<UnixStream>,
    /// The daemon hung up: the device stays failed.
    pub(super) dead: bool,
    backend_features: u64,
    acked_features: u64,
    queue_sizes: [u16; NUM_QUEUES],
    pub(super) watch: Watch,
    pub(super) active: Option<Active>,
    pub(super) daemon: Option<hostfs::Daemon>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("name", &self.name)
            .field("tag", &self.tag)
            .field("dead", &self.dead)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// PURE: the error for a failed handshake, from what the daemon said: virtiofsd says "Error
/// entering sandbox" when it could not make its namespaces (for an ordinary user: the user
/// namespace), which gets its own message.
pub(crate) fn handshake_error(report: String, source: vhost::Error) -> FsError {
    if report.contains("Error entering sandbox") {
        FsError::Sandbox { report, source }
    } else {
        FsError::Handshake { report, source }
    }
}

impl Fs {
    /// The device for the share `spec`, served by `daemon` (which it stops when dropped).
    pub fn new(spec: &hostfs::ShareSpec, mut daemon: hostfs::Daemon) -> Result<Fs, FsError> {
        let stream = daemon.take_stream().ok_or(FsError::NoConnection)?;
        let socket = Arc::new(stream.try_clone().map_err(FsError::EventFd)?);
        let name = spec.name();
        let frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        let deadline = Deadline::arm(&socket, hostfs::REQUEST_TIMEOUT, &name, "the handshake");
        let shaken = handshake(&frontend);
        deadline.passed();
        let (backend_features, protocol) = match shaken {
            Ok(f) => f,
            Err(source) => {
                let report = daemon.failure_report(std::time::Duration::from_secs(2));
                return Err(handshake_error(report, source));
            }
        };
        if backend_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::Unsupported("VIRTIO_F_VERSION_1"));
        }
        info!(
            "{name}: vhost-user backend features {backend_features:#x}, protocol {:#x}",
            protocol.bits()
        );
        Ok(Fs {
            watch: Watch::new(&name).map_err(FsError::EventFd)?,
            name,
            tag: spec.tag.clone(),
            frontend,
            socket,
            dead: false,
            backend_features,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            active: None,
            daemon: Some(daemon),
        })
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(hostfs::Daemon::pid)
    }

    /// Stops the daemon, for hot-unplug (the guest has let the device go). Later activations
    /// fail.
    pub fn release(&mut self) {
        self.active = None;
        self.dead = true;
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
        self.watch.wake();
    }

    /// Called when the socket hung up: the daemon is gone.
    pub(super) fn daemon_died(&mut self) {
        if self.dead {
            return;
        }
        self.dead = true;
        let report = self
            .daemon
            .as_mut()
            .map(|d| d.failure_report(std::time::Duration::from_millis(500)))
            .unwrap_or_default();
        warn!(
            "{}: the daemon closed the connection ({report}); the guest loses the share",
            self.name
        );
        if let Some(a) = &self.active {
            a.interrupt.needs_reset();
        }
    }

    fn start(
        &self,
        mem: &GuestMemory,
        queues: &[ActiveQueue],
        calls: &[Arc<EventFd>],
    ) -> Result<(), FsError> {
        let f = &self.frontend;
        let mut features = self.acked_features;
        if self.rings_need_enable() {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        f.set_features(features)
            .map_err(|e| FsError::Request("SET_FEATURES", e))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::PrivateMemory)?;
        f.set_mem_table(&regions)
            .map_err(|e| FsError::Request("SET_MEM_TABLE", e))?;
        let hva = |index: u16, addr: u64| {
            mem.get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|_| FsError::QueueAddress(index))
        };
        for (q, call) in queues.iter().zip(calls) {
            let i = usize::from(q.index);
            let queue = &q.queue;
            let config = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: hva(q.index, queue.desc_table())?,
                used_ring_addr: hva(q.index, queue.used_ring())?,
                avail_ring_addr: hva(q.index, queue.avail_ring())?,
                log_addr: None,
            };
            f.set_vring_num(i, queue.size())
                .map_err(|e| FsError::Request("SET_VRING_NUM", e))?;
            f.set_vring_addr(i, &config)
                .map_err(|e| FsError::Request("SET_VRING_ADDR", e))?;
            f.set_vring_base(i, queue.next_avail())
                .map_err(|e| FsError::Request("SET_VRING_BASE", e))?;
            f.set_vring_call(i, call)
                .map_err(|e| FsError::Request("SET_VRING_CALL", e))?;
            f.set_vring_kick(i, &q.notify)
                .map_err(|e| FsError::Request("SET_VRING_KICK", e))?;
        }
        if self.rings_need_enable() {
            // With protocol features, rings start disabled.
            let mut f = f.clone();
            for q in queues {
                f.set_vring_enable(usize::from(q.index), true)
                    .map_err(|e| FsError::Request("SET_VRING_ENABLE", e))?;
            }
        }
        Ok(())
    }

    /// A bound on an exchange with the daemon that starts now.
    fn deadline(&self, what: &'static str) -> Deadline {
        Deadline::arm(&self.socket, hostfs::REQUEST_TIMEOUT, &self.name, what)
    }

    /// Whether VHOST_USER_F_PROTOCOL_FEATURES is in use: rings then start disabled.
    fn rings_need_enable(&self) -> bool {
        self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    /// Stops the daemon's rings (the driver reset the device).
    fn stop_rings(&mut self, queues: &[u16]) {
        let mut f = self.frontend.clone();
        for q in queues {
            let i = usize::from(*q);
            if self.rings_need_enable() {
                if let Err(e) = f.set_vring_enable(i, false) {
                    warn!("{}: cannot disable queue {q}: {e}", self.name);
                }
            }
            if let Err(e) = f.get_vring_base(i) {
                warn!("{}: cannot stop queue {q}: {e}", self.name);
            }
        }
    }
}

/// SET_OWNER, the features and the protocol features kuml uses.
fn handshake(f: &Frontend) -> Result<(u64, VhostUserProtocolFeatures), vhost::Error> {
    f.set_owner()?;
    let features = f.get_features()?;
    let mut protocol = VhostUserProtocolFeatures::empty();
    if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        let mut f = f.clone();
        let offered = f.get_protocol_features()?;
        protocol = offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
        f.set_protocol_features(protocol)?;
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = f.get_queue_num()?;
            if n < NUM_QUEUES as u64 {
                return Err(vhost::Error::InvalidQueue);
            }
        }
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
    }
    Ok((features, protocol))
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        types::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.backend_features & GUEST_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c: [u8; CONFIG_LEN] = config_bytes(&self.tag);
        crate::virtio::read_config_bytes(&c, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{}: ignoring a {}-byte config write at {offset}",
            self.name,
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if self.dead {
            return Err(ActivateError::Backend(Box::new(FsError::NoConnection)));
        }
        if queues.len() < NUM_QUEUES {
            return Err(ActivateError::MissingQueues {
                got: queues.len(),
                need: NUM_QUEUES,
            });
        }
        let calls = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ActivateError::Host)?;
        let deadline = self.deadline("starting the device");
        let started = self.start(&mem, &queues, &calls);
        if let Err(e) = started {
            warn!("{}: cannot start the device: {e}", self.name);
            let started: Vec<u16> = queues.iter().map(|q| q.index).collect();
            self.stop_rings(&started);
            self.dead |= deadline.passed();
            return Err(ActivateError::Backend(Box::new(e)));
        }
        if deadline.passed() {
            // Answered just in time, but the connection is closed now.
            self.dead = true;
            return Err(ActivateError::Backend(Box::new(FsError::NoConnection)));
        }
        info!("{}: started ({} queues)", self.name, queues.len());
        self.active = Some(Active {
            interrupt,
            queues: queues.iter().map(|q| q.index).collect(),
            calls,
            _kicks: queues.into_iter().map(|q| q.notify).collect(),
        });
        self.watch.wake();
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(a) = self.active.take() {
            if !self.dead {
                let deadline = self.deadline("stopping the device");
                self.stop_rings(&a.queues);
                self.dead |= deadline.passed();
            }
        }
        self.acked_features = 0;
        self.watch.wake();
        true
    }
}
