//! One boot of the guest and its event loop: the [`Machine`], the event manager that serves
//! its devices and front-ends, and the [`Controller`] that acts on control requests.
//!
//! The loop blocks in epoll until something happens (a device fd, a signal, the machine's
//! exit, the wake eventfd); then the VMM acts on its control requests and on what the guest
//! did with its devices. It wakes by itself only when a hot-plug request's deadline is due.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, SubscriberOps};

use crate::builder::{self, BuildError};
use crate::config::Config;
use crate::control::controller::Controller;
use crate::control::{ControlHandle, ControlQueue, StopReason};
use crate::device_manager::Subscriber;
use crate::event_loop::{
    EventLoopError, ExitWatch, Signals, Wake, Winch, RESIZE_SIGNAL, STOP_SIGNALS,
};
use crate::exit::VmExit;
use crate::machine::Machine;
use crate::sys::signalfd::SignalFd;

/// Errors starting a VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The machine could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The event loop could not be set up.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
}

/// A running guest and its event loop.
pub struct Vmm {
    em: EventManager<Subscriber>,
    machine: Machine,
    controller: Controller,
    queue: Arc<ControlQueue>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("machine", &self.machine)
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

impl Vmm {
    /// Builds and starts the machine of `cfg` (named `umid`); control requests arrive through
    /// `queue`; `guest_version` answers version queries.
    pub fn build(
        cfg: &Config,
        umid: &str,
        queue: Arc<ControlQueue>,
        guest_version: String,
    ) -> Result<Vmm, VmmError> {
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(EventLoopError::Epoll)?;
        let wake = queue.wake_fd().map_err(EventLoopError::Wake)?;
        let machine = builder::build(cfg, umid, &wake, &mut em)?;
        let sigfd = SignalFd::new(&STOP_SIGNALS).map_err(EventLoopError::Signals)?;
        let exit = machine.exit().clone();
        em.add_subscriber(Arc::new(Mutex::new(Signals {
            fd: sigfd,
            exit: exit.clone(),
        })));
        em.add_subscriber(Arc::new(Mutex::new(ExitWatch { exit })));
        let consoles = machine.consoles.clone();
        em.add_subscriber(Arc::new(Mutex::new(Winch {
            fd: SignalFd::new(&[RESIZE_SIGNAL]).map_err(EventLoopError::Signals)?,
            on_resize: Box::new(move || consoles.refresh_sizes()),
        })));
        em.add_subscriber(Arc::new(Mutex::new(Wake { evt: wake })));
        Ok(Vmm {
            em,
            machine,
            controller: Controller::new(
                guest_version,
                queue.wake_fd().map_err(EventLoopError::Wake)?,
                crate::hostfs_shares::open_share,
            ),
            queue,
        })
    }

    /// Adds a front-end (or any other subscriber) to the event loop.
    pub fn add_subscriber(&mut self, s: Subscriber) {
        self.em.add_subscriber(s);
    }

    /// A handle to send this VMM actions from any thread.
    pub fn control_handle(&self) -> ControlHandle {
        ControlHandle::new(self.queue.clone())
    }

    /// Runs until the machine has a reason to stop; returns it.
    pub fn run(&mut self) -> Result<VmExit, EventLoopError> {
        loop {
            if let Some(reason) = self.machine.exit().get() {
                return Ok(reason);
            }
            let timeout = match self.controller.next_deadline() {
                Some(d) => {
                    let ms = d.saturating_duration_since(Instant::now()).as_millis();
                    // Round up so that the deadline has passed on waking.
                    i32::try_from(ms.saturating_add(1)).unwrap_or(i32::MAX)
                }
                None => -1,
            };
            self.em
                .run_with_timeout(timeout)
                .map_err(EventLoopError::Epoll)?;
            self.process();
        }
    }

    /// Acts on what woke the loop: control requests, the guest's device events, deadlines.
    fn process(&mut self) {
        for (action, respond) in self.queue.take() {
            self.controller
                .handle(action, respond, &mut self.machine, &mut self.em);
        }
        self.controller
            .on_shares_started(&mut self.machine, &mut self.em);
        let events = self.machine.take_device_events(&mut self.em);
        self.controller.on_device_events(&events);
        self.controller.expire(Instant::now());
    }

    /// Stops the machine after `exit`: requests still waiting for the guest get an error
    /// reply first, then the vCPUs stop. Returns the configuration a restart uses: the
    /// devices plugged now and the lines as last set (what UML keeps across a reboot).
    pub fn shutdown(mut self, exit: &VmExit) -> Config {
        // Actions that came with the exit are still answered.
        self.process();
        let reason = if *exit == VmExit::Reboot {
            StopReason::Restart
        } else {
            StopReason::Shutdown
        };
        self.controller.abort_all(reason);
        let next = self.machine.next_config();
        self.machine.stop();
        next
    }
}
