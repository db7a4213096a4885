//! The event loop's own subscribers: the stop signals, SIGWINCH (the terminal's size changed),
//! the machine's exit event, and the VMM's wake eventfd (control requests, ejected slots,
//! activated devices). The loop itself is [`crate::vmm::Vmm::run`].

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitState, VmExit};
use crate::sys::signalfd::SignalFd;

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll failed.
    #[error("the event loop failed")]
    Epoll(#[source] event_manager::Error),
    /// The signal descriptor could not be created.
    #[error("cannot watch signals")]
    Signals(#[source] std::io::Error),
    /// The wake eventfd could not be shared.
    #[error("cannot watch the VMM's wake eventfd")]
    Wake(#[source] std::io::Error),
}

/// Signals that stop the VM.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The terminal kuml runs on changed its size (sent to the foreground process group of a
/// controlling terminal: kuml gets it when started as a shell's foreground job).
pub const RESIZE_SIGNAL: i32 = libc::SIGWINCH;

/// Blocks the stop signals and [`RESIZE_SIGNAL`] in the calling thread (and the threads it
/// starts later), so that only the signalfds see them. Call before starting vCPU threads.
/// Children started with `std::process::Command` get an empty mask again.
pub fn block_loop_signals() -> std::io::Result<()> {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS.into_iter().chain([RESIZE_SIGNAL]) {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP stop the VM cleanly.
pub(crate) struct Signals {
    pub(crate) fd: SignalFd,
    pub(crate) exit: Arc<ExitState>,
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

/// SIGWINCH: the host terminal changed size; `on_resize` (the consoles re-read their
/// terminals' sizes) runs once per wake-up, however many signals came.
pub(crate) struct Winch {
    pub(crate) fd: SignalFd,
    pub(crate) on_resize: Box<dyn FnMut() + Send>,
}

impl MutEventSubscriber for Winch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch SIGWINCH: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut any = false;
        while let Ok(Some(_)) = self.fd.read() {
            any = true;
        }
        if any {
            (self.on_resize)();
        }
    }
}

/// Ends the loop's wait when the machine has a reason to stop.
pub(crate) struct ExitWatch {
    pub(crate) exit: Arc<ExitState>,
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

/// Ends the loop's wait when the VMM has work: a control request, an ejected slot or an
/// activated device were signalled on the wake eventfd. It consumes the count; the VMM then
/// looks at each source once.
pub(crate) struct Wake {
    pub(crate) evt: EventFd,
}

impl MutEventSubscriber for Wake {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("cannot watch the VMM's wake eventfd: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn sigwinch_makes_the_consoles_look_again() {
        // This test thread's mask only (kuml blocks it in every thread).
        block_loop_signals().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(Arc::new(Mutex::new(Winch {
            fd: SignalFd::new(&[RESIZE_SIGNAL]).unwrap(),
            on_resize: Box::new(move || {
                seen.fetch_add(1, Ordering::SeqCst);
            }),
        })));
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
        assert_eq!(count.load(Ordering::SeqCst), 0);
        // SAFETY: raise sends a signal to this thread, which blocks it; the signalfd takes it.
        assert_eq!(unsafe { libc::raise(RESIZE_SIGNAL) }, 0);
        assert!(em.run_with_timeout(5000).unwrap() > 0);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Consumed: nothing is left to wake the loop.
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
