//! The event loop: host input for the consoles, signals, and the machine's exit.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use crate::sys::signalfd::SignalFd;

use crate::builder::Subscriber;
use crate::exit::{ExitState, VmExit};

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll failed.
    #[error("the event loop failed")]
    Epoll(#[source] event_manager::Error),
    /// The signal descriptor could not be created.
    #[error("cannot watch signals")]
    Signals(#[source] std::io::Error),
}

/// SIGTERM, SIGINT and SIGHUP stop the VM cleanly.
struct Signals {
    fd: SignalFd,
    exit: Arc<ExitState>,
}

impl MutEventSubscriber for Signals {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch signals: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Ok(Some(signo)) = self.fd.read() {
            self.exit.set(VmExit::Signal(signo));
        }
    }
}

/// Wakes the loop when the machine stops.
struct ExitWatch {
    exit: Arc<ExitState>,
}

impl MutEventSubscriber for ExitWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.exit.evt, EventSet::IN)) {
            log::error!("cannot watch the exit event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.evt.read();
    }
}

/// Signals that stop the VM.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks the stop signals in the calling thread (and the threads it starts later), so that
/// only the signalfd sees them. Call before starting vCPU threads.
pub fn block_stop_signals() -> std::io::Result<()> {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// Runs until the machine has a reason to stop; returns it.
pub fn run(exit: Arc<ExitState>, subscribers: &[Subscriber]) -> Result<VmExit, EventLoopError> {
    let mut em: EventManager<Subscriber> = EventManager::new().map_err(EventLoopError::Epoll)?;
    let sigfd = SignalFd::new(&STOP_SIGNALS).map_err(EventLoopError::Signals)?;
    em.add_subscriber(Arc::new(Mutex::new(Signals {
        fd: sigfd,
        exit: exit.clone(),
    })));
    em.add_subscriber(Arc::new(Mutex::new(ExitWatch { exit: exit.clone() })));
    for s in subscribers {
        em.add_subscriber(s.clone());
    }
    loop {
        if let Some(reason) = exit.get() {
            return Ok(reason);
        }
        em.run_with_timeout(1000).map_err(EventLoopError::Epoll)?;
    }
}
