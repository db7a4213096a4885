//! The event loop: host input for the consoles, signals, and the machine's exit.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::legacy::serial::SerialDevice;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use crate::sys::signalfd::SignalFd;

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

/// Host input (a readable fd) feeding a UART.
struct SerialInput {
    fd: RawFd,
    serial: Arc<Mutex<SerialDevice>>,
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            log::warn!("cannot watch console input: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer from a descriptor we were given; a bad fd
        // only makes read fail.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            n if n > 0 => {
                let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                s.enqueue(&buf[..n as usize]);
            }
            n if n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => {}
            _ => {
                // End of input or an error: the console keeps running without input.
                log::info!("console input closed");
                let _ = ops.remove(events);
            }
        }
        if events.event_set().contains(EventSet::HANG_UP) && n <= 0 {
            let _ = ops.remove(Events::new_raw(self.fd, EventSet::IN));
        }
    }
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
pub fn run(
    exit: Arc<ExitState>,
    input: Option<(RawFd, Arc<Mutex<SerialDevice>>)>,
) -> Result<VmExit, EventLoopError> {
    let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> =
        EventManager::new().map_err(EventLoopError::Epoll)?;
    let sigfd = SignalFd::new(&STOP_SIGNALS).map_err(EventLoopError::Signals)?;
    em.add_subscriber(Box::new(Signals {
        fd: sigfd,
        exit: exit.clone(),
    }));
    em.add_subscriber(Box::new(ExitWatch { exit: exit.clone() }));
    if let Some((fd, serial)) = input {
        em.add_subscriber(Box::new(SerialInput { fd, serial }));
    }
    loop {
        if let Some(reason) = exit.get() {
            return Ok(reason);
        }
        em.run_with_timeout(1000).map_err(EventLoopError::Epoll)?;
    }
}

/// Stdin as a raw descriptor.
pub fn stdin_fd() -> RawFd {
    std::io::stdin().as_raw_fd()
}
