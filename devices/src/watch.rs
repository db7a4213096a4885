//! What the event loop watches for a device, and for how long the descriptors stay open.
//!
//! Every device and channel with host descriptors (queue notify eventfds, taps, sockets,
//! ptys, listening ports) states what it wants watched as an [`Interest`], computed from its
//! state after each event, and hands it to its [`Watch`], which brings event-manager's
//! registrations in line (add, modify, remove). Three rules hold by construction:
//!
//! * **One registration per descriptor.** event-manager refuses to add a descriptor it
//!   already knows (`FdAlreadyRegistered`), and one descriptor often serves two purposes (a
//!   pts is a line's input and its output). [`Interest::add`] merges by descriptor: it is
//!   registered once, for everything asked of it (`IN | OUT`).
//! * **Closed only after the loop forgot it.** event-manager 0.4.2 keeps its entry when a
//!   `remove` fails (the descriptor number can then never be added again), and epoll keeps
//!   reporting a closed descriptor whose file is still open through a duplicate (a queue's
//!   notify eventfd is a duplicate of the transport's). So each registration holds a
//!   reference to what owns its descriptor ([`SharedFd`]): a device may drop its own reference
//!   at any time, and the descriptor is closed once the watch has removed it. A removal that
//!   fails is retried on the next update, and the descriptor stays open until one succeeds.
//! * **Re-armed from any thread.** The watch owns the device's wake-up eventfd (event data
//!   [`WAKE`]). Code that changes the device's state outside the event loop (a vCPU writing a
//!   register, activation, a control request) calls [`Watch::wake`], or [`Watch::rearm`] to
//!   wake the loop only when the interest changed; the loop then runs the device's handler,
//!   which applies the new interest.
//!
//! ```ignore
//! impl MutEventSubscriber for Dev {
//!     fn init(&mut self, ops: &mut EventOps) { self.watch.apply(ops, self.interest()); }
//!     fn process(&mut self, events: Events, ops: &mut EventOps) {
//!         match events.data() { WAKE => self.watch.take_wake(), … }
//!         self.watch.apply(ops, self.interest());
//!     }
//! }
//! ```

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use log::{debug, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Event data of a device's wake-up eventfd; a device's own event data must differ.
pub const WAKE: u32 = 0;

/// A descriptor and what keeps it open: a registration holds one, so the descriptor outlives
/// its registration.
pub type SharedFd = Arc<dyn AsRawFd + Send + Sync>;

/// One descriptor to watch.
struct Wanted {
    fd: RawFd,
    data: u32,
    set: EventSet,
    keep: SharedFd,
}

/// What a device wants watched now: descriptors, their event data and events.
#[derive(Default)]
pub struct Interest {
    wanted: Vec<Wanted>,
}

impl std::fmt::Debug for Interest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.wanted.iter().map(|w| (w.fd, w.data, w.set.bits())))
            .finish()
    }
}

impl Interest {
    /// Nothing watched (the wake-up eventfd always is).
    pub fn new() -> Self {
        Self::default()
    }

    /// Watches `source` for `set`, reported with `data`. A descriptor asked for twice is
    /// watched once for both sets; it keeps the data it was first asked with (one descriptor
    /// has one meaning for a device). An empty set asks for nothing: a descriptor that is
    /// not wanted is not registered at all (epoll would still report its errors).
    pub fn add(&mut self, source: SharedFd, data: u32, set: EventSet) {
        if set.is_empty() {
            return;
        }
        let fd = source.as_raw_fd();
        match self.wanted.iter_mut().find(|w| w.fd == fd) {
            Some(w) => {
                if w.data != data {
                    debug!("watch: fd {fd} asked with data {data:#x} and {:#x}", w.data);
                }
                w.set |= set;
            }
            None => self.wanted.push(Wanted {
                fd,
                data,
                set,
                keep: source,
            }),
        }
    }

    fn take(&mut self, fd: RawFd) -> Option<Wanted> {
        let i = self.wanted.iter().position(|w| w.fd == fd)?;
        Some(self.wanted.swap_remove(i))
    }

    fn get(&self, fd: RawFd) -> Option<&Wanted> {
        self.wanted.iter().find(|w| w.fd == fd)
    }
}

/// One descriptor event-manager watches for the device.
struct Registration {
    fd: RawFd,
    data: u32,
    set: EventSet,
    /// Keeps the descriptor open while registered.
    _keep: SharedFd,
    /// A failed change was logged (once).
    complained: bool,
}

/// A device's registrations with the event loop and its wake-up eventfd (see the module
/// documentation).
pub struct Watch {
    name: String,
    wake: Arc<EventFd>,
    registered: Vec<Registration>,
    /// Descriptors event-manager refused to add, logged once while they stay wanted.
    refused: Vec<RawFd>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("name", &self.name)
            .field("registered", &self.registered())
            .finish()
    }
}

impl Watch {
    /// A watch for the device called `name` (in log messages), with a new wake-up eventfd.
    pub fn new(name: impl Into<String>) -> io::Result<Self> {
        Ok(Watch {
            name: name.into(),
            wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            registered: Vec::new(),
            refused: Vec::new(),
        })
    }

    /// Renames the device in log messages.
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// Wakes the event loop: the device's handler runs with event data [`WAKE`] and applies
    /// its interest. Callable from any thread.
    pub fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            warn!("{}: cannot wake the event loop: {e}", self.name);
        }
    }

    /// Consumes the pending wake-ups (call on event data [`WAKE`]).
    pub fn take_wake(&self) {
        // WouldBlock only means that another event consumed it already.
        let _ = self.wake.read();
    }

    /// Wakes the event loop if `want` differs from what is registered, so that the loop
    /// applies it. Returns whether it woke the loop. Callable from any thread.
    pub fn rearm(&self, want: &Interest) -> bool {
        let registered_matches = self.registered.iter().all(|r| {
            r.fd == self.wake.as_raw_fd()
                || want
                    .get(r.fd)
                    .is_some_and(|w| w.data == r.data && w.set == r.set)
        });
        let wanted_present = want
            .wanted
            .iter()
            .all(|w| self.registered.iter().any(|r| r.fd == w.fd));
        if registered_matches && wanted_present {
            return false;
        }
        self.wake();
        true
    }

    /// Brings event-manager's registrations in line with `want` plus the wake-up eventfd:
    /// removals first (a descriptor no longer wanted is closed here if nothing else holds
    /// it), then changes, then additions. Failures are logged once per descriptor and
    /// retried on the next call.
    pub fn apply(&mut self, ops: &mut EventOps, mut want: Interest) {
        want.add(self.wake.clone(), WAKE, EventSet::IN);
        let mut kept = Vec::with_capacity(self.registered.len());
        for mut r in std::mem::take(&mut self.registered) {
            match want.take(r.fd) {
                None => match ops.remove(Events::empty_raw(r.fd)) {
                    Ok(()) => {}
                    Err(e) => {
                        if !r.complained {
                            warn!(
                                "{}: cannot stop watching fd {}, keeping it open: {e}",
                                self.name, r.fd
                            );
                            r.complained = true;
                        }
                        kept.push(r);
                    }
                },
                Some(w) => {
                    if (w.data, w.set) != (r.data, r.set) {
                        match ops.modify(Events::with_data_raw(r.fd, w.data, w.set)) {
                            Ok(()) => {
                                r.data = w.data;
                                r.set = w.set;
                                r.complained = false;
                            }
                            Err(e) if !r.complained => {
                                warn!("{}: cannot change the watch on fd {}: {e}", self.name, r.fd);
                                r.complained = true;
                            }
                            Err(_) => {}
                        }
                    }
                    kept.push(r);
                }
            }
        }
        self.refused.retain(|fd| want.get(*fd).is_some());
        for w in want.wanted {
            match ops.add(Events::with_data_raw(w.fd, w.data, w.set)) {
                Ok(()) => {
                    self.refused.retain(|fd| *fd != w.fd);
                    kept.push(Registration {
                        fd: w.fd,
                        data: w.data,
                        set: w.set,
                        _keep: w.keep,
                        complained: false,
                    });
                }
                Err(e) => {
                    if !self.refused.contains(&w.fd) {
                        warn!("{}: cannot watch fd {}: {e}", self.name, w.fd);
                        self.refused.push(w.fd);
                    }
                }
            }
        }
        self.registered = kept;
    }

    /// What is registered: (descriptor, event data, events), in no particular order.
    pub fn registered(&self) -> Vec<(RawFd, u32, EventSet)> {
        self.registered
            .iter()
            .map(|r| (r.fd, r.data, r.set))
            .collect()
    }

    /// Whether `fd` is registered for at least `set`.
    pub fn watches(&self, fd: RawFd, set: EventSet) -> bool {
        self.registered
            .iter()
            .any(|r| r.fd == fd && r.set.contains(set))
    }
}

/// What descriptor `fd` of this process names (`/proc/self/fd`), for tests that check that a
/// descriptor was closed: other tests' threads may take the number as soon as it is free, so
/// "closed" is "no longer names what it named", not "no longer open".
#[cfg(test)]
pub(crate) fn fd_names(fd: RawFd) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    /// A device that wants what the test says and records its events.
    struct Dev {
        watch: Watch,
        want: Vec<(SharedFd, u32, EventSet)>,
        seen: Vec<(u32, EventSet)>,
    }

    impl Dev {
        fn new() -> Arc<Mutex<Dev>> {
            Arc::new(Mutex::new(Dev {
                watch: Watch::new("test").unwrap(),
                want: Vec::new(),
                seen: Vec::new(),
            }))
        }

        fn interest(&self) -> Interest {
            let mut i = Interest::new();
            for (fd, data, set) in &self.want {
                i.add(fd.clone(), *data, *set);
            }
            i
        }
    }

    impl MutEventSubscriber for Dev {
        fn init(&mut self, ops: &mut EventOps) {
            let want = self.interest();
            self.watch.apply(ops, want);
        }

        fn process(&mut self, events: Events, ops: &mut EventOps) {
            if events.data() == WAKE {
                self.watch.take_wake();
            }
            self.seen.push((events.data(), events.event_set()));
            let want = self.interest();
            self.watch.apply(ops, want);
        }
    }

    type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only queries the descriptor table.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn test_one_fd_for_input_and_output_is_registered_once() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let ours: SharedFd = Arc::new(ours);
        let fd = ours.as_raw_fd();
        let dev = Dev::new();
        let mut em = Em::new().unwrap();
        em.add_subscriber(dev.clone());
        {
            let mut d = dev.lock().unwrap();
            d.want.push((ours.clone(), 7, EventSet::IN));
            d.want.push((ours.clone(), 7, EventSet::OUT));
            d.watch.wake();
        }
        em.run_with_timeout(1000).unwrap();
        let d = dev.lock().unwrap();
        assert!(d.watch.watches(fd, EventSet::IN | EventSet::OUT));
        assert_eq!(d.watch.registered().len(), 2, "{:?}", d.watch);
        drop(d);
        // The merged registration reports both directions.
        std::io::Write::write_all(&mut peer, b"x").unwrap();
        em.run_with_timeout(1000).unwrap();
        let d = dev.lock().unwrap();
        let (data, set) = *d.seen.last().unwrap();
        assert_eq!(data, 7);
        assert!(set.contains(EventSet::IN | EventSet::OUT), "{set:?}");
    }

    #[test]
    fn test_a_dropped_descriptor_stays_open_until_it_is_removed() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        // A duplicate, as a queue's notify eventfd is of the transport's; numbered 1000 or
        // more, where the other tests' threads (which take the lowest free numbers) do not
        // reopen it the moment it is closed.
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, checked and then owned.
        let dup: SharedFd = Arc::new(unsafe {
            let n = libc::fcntl(evt.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 1000);
            assert!(n >= 1000, "F_DUPFD: {}", std::io::Error::last_os_error());
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n)
        });
        let fd = dup.as_raw_fd();
        let dev = Dev::new();
        let mut em = Em::new().unwrap();
        dev.lock().unwrap().want.push((dup, 5, EventSet::IN));
        em.add_subscriber(dev.clone());
        assert!(dev.lock().unwrap().watch.watches(fd, EventSet::IN));
        {
            // The device lets go of it: the registration keeps it open…
            let mut d = dev.lock().unwrap();
            d.want.clear();
            assert!(is_open(fd));
            d.watch.wake();
        }
        // …until the loop has removed it.
        em.run_with_timeout(1000).unwrap();
        assert!(!is_open(fd));
        assert!(!dev.lock().unwrap().watch.watches(fd, EventSet::IN));
        // The original's events no longer reach anyone (no stale registration).
        evt.write(1).unwrap();
        assert_eq!(em.run_with_timeout(50).unwrap(), 0);
        // And the number can be registered again by whatever gets it next.
        let again: SharedFd = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut d = dev.lock().unwrap();
        d.want.push((again.clone(), 6, EventSet::IN));
        d.watch.wake();
        drop(d);
        em.run_with_timeout(1000).unwrap();
        assert!(dev
            .lock()
            .unwrap()
            .watch
            .watches(again.as_raw_fd(), EventSet::IN));
    }

    #[test]
    fn test_rearm_from_another_thread_wakes_the_loop_once_needed() {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let ours: SharedFd = Arc::new(ours);
        let fd = ours.as_raw_fd();
        let dev = Dev::new();
        let mut em = Em::new().unwrap();
        em.add_subscriber(dev.clone());
        let d2 = dev.clone();
        let o2 = ours.clone();
        std::thread::spawn(move || {
            let mut d = d2.lock().unwrap();
            d.want.push((o2, 3, EventSet::OUT));
            let want = d.interest();
            assert!(d.watch.rearm(&want));
        })
        .join()
        .unwrap();
        em.run_with_timeout(1000).unwrap();
        let d = dev.lock().unwrap();
        assert!(d.watch.watches(fd, EventSet::OUT));
        // Nothing changed since: no wake-up.
        assert!(!d.watch.rearm(&d.interest()));
    }

    #[test]
    fn test_a_refused_descriptor_is_not_registered_and_is_retried() {
        let file = tempfile::tempfile().unwrap();
        let file: SharedFd = Arc::new(file);
        let dev = Dev::new();
        let mut em = Em::new().unwrap();
        dev.lock()
            .unwrap()
            .want
            .push((file.clone(), 1, EventSet::IN));
        em.add_subscriber(dev.clone());
        // epoll refuses regular files (EPERM).
        let d = dev.lock().unwrap();
        assert!(!d.watch.watches(file.as_raw_fd(), EventSet::IN));
        assert_eq!(d.watch.refused, vec![file.as_raw_fd()]);
        assert_eq!(d.watch.registered().len(), 1, "only the wake-up eventfd");
    }

    #[test]
    fn test_empty_sets_ask_for_nothing_and_sets_merge() {
        let a: SharedFd = Arc::new(EventFd::new(0).unwrap());
        let mut i = Interest::new();
        i.add(a.clone(), 1, EventSet::empty());
        assert!(i.get(a.as_raw_fd()).is_none());
        i.add(a.clone(), 1, EventSet::IN);
        i.add(a.clone(), 2, EventSet::OUT);
        let w = i.get(a.as_raw_fd()).unwrap();
        assert_eq!((w.data, w.set), (1, EventSet::IN | EventSet::OUT));
    }
}
