//! The event loop: host input for the consoles, signals, and the machine's exit.

use std::sync::{Arc, Mutex};

use crate::sys::signalfd::SignalFd;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use std::os::fd::AsRawFd;

use mconsole::{Incoming, Server};

use crate::builder::{Machine, Subscriber};
use crate::control::{Control, Outcome};
use crate::device_manager::locked;
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

/// Reads mconsole requests into a queue the loop handles with the machine at hand.
struct Mconsole {
    server: Arc<Mutex<Server>>,
    queue: Arc<Mutex<Vec<Incoming>>>,
}

impl MutEventSubscriber for Mconsole {
    fn init(&mut self, ops: &mut EventOps) {
        let fd = locked(&self.server).as_raw_fd();
        if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
            log::error!("cannot watch the mconsole socket: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut server = locked(&self.server);
        loop {
            match server.recv() {
                Ok(Some(inc)) => locked(&self.queue).push(inc),
                Ok(None) => break,
                Err(e) => {
                    log::warn!("mconsole: {e}");
                    break;
                }
            }
        }
        server.flush();
    }
}

/// Wakes the loop when an eventfd is written (the loop then looks at what changed).
struct Wake(Arc<crate::builder::EjectQueue>);

impl MutEventSubscriber for Wake {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0.evt, EventSet::IN)) {
            log::error!("cannot watch ejections: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
}

/// Runs the machine until it has a reason to stop; returns it.
pub fn run(
    machine: &mut Machine,
    control: &mut Control,
    server: &Arc<Mutex<Server>>,
) -> Result<VmExit, EventLoopError> {
    let exit = machine.exit.clone();
    let mut em: EventManager<Subscriber> = EventManager::new().map_err(EventLoopError::Epoll)?;
    let sigfd = SignalFd::new(&STOP_SIGNALS).map_err(EventLoopError::Signals)?;
    em.add_subscriber(Arc::new(Mutex::new(Signals {
        fd: sigfd,
        exit: exit.clone(),
    })));
    em.add_subscriber(Arc::new(Mutex::new(ExitWatch { exit: exit.clone() })));
    let queue = Arc::new(Mutex::new(Vec::new()));
    em.add_subscriber(Arc::new(Mutex::new(Mconsole {
        server: server.clone(),
        queue: queue.clone(),
    })));
    em.add_subscriber(Arc::new(Mutex::new(Wake(machine.ejects.clone()))));
    for s in &machine.subscribers {
        em.add_subscriber(s.clone());
    }
    for (_, block, p) in &machine.disks {
        let id = em.add_subscriber(block.clone());
        control.set_subscriber(p.slot, id);
    }
    for (_, net, p) in &machine.nics {
        let id = em.add_subscriber(net.clone());
        control.set_subscriber(p.slot, id);
    }
    loop {
        if let Some(reason) = exit.get() {
            return Ok(reason);
        }
        let timeout = if control.has_pending() { 20 } else { 1000 };
        em.run_with_timeout(timeout)
            .map_err(EventLoopError::Epoll)?;
        let requests = std::mem::take(&mut *locked(&queue));
        for inc in requests {
            match control.handle(machine, &mut em, &inc.client, inc.command) {
                Outcome::Reply(replies) => locked(server).reply_all(&inc.client, &replies),
                Outcome::Later => {}
                Outcome::Exit(reply, why) => {
                    let mut s = locked(server);
                    s.reply(&inc.client, &reply);
                    s.flush();
                    exit.set(why);
                }
            }
        }
        control.poll(machine, &mut em, &mut |client, reply| {
            locked(server).reply(client, &reply)
        });
    }
}
