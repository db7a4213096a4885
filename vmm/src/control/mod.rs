//! The control seam: typed requests to the VMM ([`VmmAction`]) and their typed answers
//! (`Result<VmmData, ControlError>`), as Firecracker's `VmmAction` / `VmmData`.
//!
//! Every front-end speaks this: the mconsole adapter (`crate::mconsole_adapter`) maps UML's
//! text to actions and results to UML's replies; tests drive a VMM with a [`ControlHandle`].
//! A request travels with a [`Responder`] through the [`ControlQueue`] to the event loop's
//! thread, where the [`controller`] acts on it. Requests that need the guest (a hot-plugged
//! device is answered once the guest driver has started it, a removal once the guest has
//! ejected the slot) are answered when that happens, or fail after [`HOTPLUG_TIMEOUT`], or
//! when the VM stops or restarts first.

pub mod controller;

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::chan::{ChannelSpec, LineClass};
use vmm_sys_util::eventfd::EventFd;

use crate::backends::{DiskError, NicError};
use crate::device_manager::{locked, DeviceError};
use crate::vstate::vcpu::PauseError;

/// How long the guest has to start a hot-plugged device or eject a removed one.
pub const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(180);

/// A device as UML names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceId {
    /// `ubd<unit>`.
    Disk(usize),
    /// `eth<index>`.
    Nic(u32),
    /// `con<index>`.
    Console(u32),
    /// `ssl<index>`.
    Serial(u32),
    /// `hostfs` (0, the default export) or `hostfs<index>`: a host directory share.
    Share(u32),
}

impl DeviceId {
    /// The line a console or serial id names.
    pub fn line(self) -> Option<(LineClass, u32)> {
        match self {
            DeviceId::Console(n) => Some((LineClass::Console, n)),
            DeviceId::Serial(n) => Some((LineClass::Serial, n)),
            _ => None,
        }
    }

    /// The id of a line.
    pub fn of_line(class: LineClass, index: u32) -> DeviceId {
        match class {
            LineClass::Console => DeviceId::Console(index),
            LineClass::Serial => DeviceId::Serial(index),
        }
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceId::Disk(u) => write!(f, "ubd{u}"),
            DeviceId::Nic(n) => write!(f, "eth{n}"),
            DeviceId::Console(n) => write!(f, "con{n}"),
            DeviceId::Serial(n) => write!(f, "ssl{n}"),
            DeviceId::Share(n) => f.write_str(&hostfs::share_name(*n)),
        }
    }
}

/// What a front-end asks of the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmAction {
    /// Plug a disk; answered once the guest driver has started it.
    AttachDisk(ubd::UbdSpec),
    /// Plug a network card; answered once the guest driver has started it.
    AttachNic {
        /// `ethN`'s N.
        index: u32,
        /// Its transport.
        spec: netdev::NetSpec,
    },
    /// Share a host directory: its virtiofsd is started (on a thread of its own: the event
    /// loop goes on meanwhile) and its virtio-fs device plugged; answered once the guest driver
    /// has started it.
    AttachShare(hostfs::ShareSpec),
    /// Give a console or serial line a new channel (a console that does not exist is added).
    SetLine {
        /// Console or serial line.
        class: LineClass,
        /// Its index.
        index: u32,
        /// The channel.
        channel: ChannelSpec,
    },
    /// Remove a device: a disk, NIC or share once the guest has ejected it (a share's
    /// virtiofsd is stopped then), a console at once.
    Detach(DeviceId),
    /// What a device is configured with.
    QueryDevice(DeviceId),
    /// The guest's memory size.
    QueryMemory,
    /// The guest kernel's version text.
    QueryVersion,
    /// Stop every vCPU (answered once all are out of KVM_RUN) and the guest clock.
    Pause,
    /// Let them run again.
    Resume,
    /// Restart the VM (the hot-plugged devices and line channels are kept).
    Reboot,
    /// Stop the VM; kuml exits 0.
    Halt,
    /// Ctrl-Alt-Del on the guest keyboard.
    CtrlAltDel,
    /// Alt-SysRq-`key` on the guest keyboard.
    SysRq(char),
}

/// What a successful action returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmData {
    /// Done; nothing to report.
    Empty,
    /// A disk's configuration (`None`: the unit is not configured).
    Disk(Option<ubd::UbdSpec>),
    /// A line's channel as it is now (`None`: the line does not exist).
    Line(Option<String>),
    /// A share's configuration (`None`: it is not configured).
    Share(Option<hostfs::ShareSpec>),
    /// Guest memory in bytes.
    Memory(u64),
    /// The guest kernel's `sysname nodename release version machine`.
    Version(String),
}

/// Why a hot-plug request did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The VM restarts.
    Restart,
    /// The VM stops.
    Shutdown,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Restart => "restarted",
            StopReason::Shutdown => "stopped",
        })
    }
}

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The device is configured already.
    #[error("{0} is already configured")]
    AlreadyConfigured(DeviceId),
    /// The device does not exist.
    #[error("{0} does not exist")]
    NoSuchDevice(DeviceId),
    /// The device cannot be removed (serial lines, con0, …).
    #[error("{0} cannot be removed")]
    NotRemovable(DeviceId),
    /// A hot-plug request for the device is still waiting for the guest.
    #[error("{0} has a request in progress")]
    Busy(DeviceId),
    /// The disk's image could not be opened.
    #[error("cannot open the image of {0}")]
    Disk(DeviceId, #[source] DiskError),
    /// The NIC's backend could not be set up.
    #[error("cannot set up {0}")]
    Nic(DeviceId, #[source] NicError),
    /// The line's channel could not be opened.
    #[error("cannot open the channel of {0}")]
    Line(DeviceId, #[source] devices::chan::ChanError),
    /// The console device refused the change.
    #[error("cannot change {0}")]
    Console(DeviceId, #[source] devices::virtio::console::ConsoleError),
    /// The share's virtiofsd or its device could not be set up.
    #[error(transparent)]
    Share(crate::hostfs_shares::ShareError),
    /// The thread that starts the share's virtiofsd could not be made, or ended without an
    /// answer.
    #[error("cannot start {0}")]
    ShareThread(DeviceId, #[source] std::io::Error),
    /// The VM stopped or restarted while the share's virtiofsd was starting.
    #[error("the VM {reason} while the virtiofsd of {id} was starting; {id} is not added")]
    ShareInterrupted {
        /// The share.
        id: DeviceId,
        /// What happened to the VM.
        reason: StopReason,
    },
    /// The share's tag is another share's.
    #[error("cannot add {0}")]
    ShareTag(DeviceId, #[source] hostfs::DuplicateTag),
    /// No slot, interrupts or window room, or KVM refused.
    #[error("cannot plug {0}")]
    Plug(DeviceId, #[source] DeviceError),
    /// The guest ejected a device it was just given.
    #[error("the guest ejected {0} instead of starting it")]
    EjectedInstead(DeviceId),
    /// The guest did not start (or eject) the device in time; it stays as it is.
    #[error("the guest did not {} {id} within {} s; it stays {}", if *.removal { "eject" } else { "start" }, HOTPLUG_TIMEOUT.as_secs(), if *.removal { "configured: retry the removal" } else { "configured: remove it if it is not wanted" })]
    GuestTimeout {
        /// The device.
        id: DeviceId,
        /// A removal (else an addition).
        removal: bool,
    },
    /// The VM stopped or restarted before the guest finished the request.
    #[error("the VM {reason} before the guest {} {id}; it stays configured", if *.removal { "ejected" } else { "started" })]
    Interrupted {
        /// The device.
        id: DeviceId,
        /// A removal (else an addition).
        removal: bool,
        /// What happened to the VM.
        reason: StopReason,
    },
    /// Some vCPUs did not stop; the VM keeps running.
    #[error("cannot stop the VM")]
    Pause(#[source] PauseError),
    /// The guest's memory size is fixed.
    #[error("kuml cannot change the memory size of a running guest")]
    MemoryFixed,
}

/// Where the answer to one action goes. Called once, on the event loop's thread.
pub type Responder = Box<dyn FnOnce(Result<VmmData, ControlError>) + Send>;

/// Actions on their way to the event loop's thread.
pub struct ControlQueue {
    queue: Mutex<VecDeque<(VmmAction, Responder)>>,
    wake: EventFd,
}

impl std::fmt::Debug for ControlQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlQueue")
            .field("queued", &locked(&self.queue).len())
            .finish()
    }
}

impl ControlQueue {
    /// A queue that writes `wake` (the VMM's wake eventfd) for every action.
    pub fn new(wake: EventFd) -> Arc<ControlQueue> {
        Arc::new(ControlQueue {
            queue: Mutex::new(VecDeque::new()),
            wake,
        })
    }

    /// A copy of the wake eventfd, for the event loop to watch.
    pub fn wake_fd(&self) -> std::io::Result<EventFd> {
        self.wake.try_clone()
    }

    /// Sends `action`; `respond` gets the result.
    pub fn push(&self, action: VmmAction, respond: Responder) {
        locked(&self.queue).push_back((action, respond));
        if let Err(e) = self.wake.write(1) {
            log::error!("cannot wake the event loop for a control request: {e}");
        }
    }

    /// Takes the queued actions.
    pub fn take(&self) -> Vec<(VmmAction, Responder)> {
        locked(&self.queue).drain(..).collect()
    }
}

/// A front-end for code (tests, a future API): each request returns a receiver for its
/// answer.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    queue: Arc<ControlQueue>,
}

impl ControlHandle {
    /// A handle on `queue`.
    pub fn new(queue: Arc<ControlQueue>) -> Self {
        ControlHandle { queue }
    }

    /// Sends `action`; the answer arrives on the returned channel.
    pub fn request(&self, action: VmmAction) -> mpsc::Receiver<Result<VmmData, ControlError>> {
        let (tx, rx) = mpsc::channel();
        self.queue.push(
            action,
            Box::new(move |r| {
                // The requester may have given up waiting.
                let _ = tx.send(r);
            }),
        );
        rx
    }
}
