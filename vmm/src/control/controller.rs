//! Acts on [`VmmAction`]s against the running [`Machine`], on the event loop's thread, and
//! answers each through its [`Responder`]: at once, or when the guest has done its part.

use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use devices::virtio::fs::Fs;
use event_manager::SubscriberOps;
use vmm_sys_util::eventfd::EventFd;

use super::{ControlError, DeviceId, Responder, StopReason, VmmAction, VmmData, HOTPLUG_TIMEOUT};
use crate::device_manager::{DeviceEvent, PciId, Subscriber};
use crate::exit::VmExit;
use crate::hostfs_shares::ShareError;
use crate::machine::{Attached, Machine};

/// A request that waits for the guest.
struct Pending {
    id: DeviceId,
    pci: PciId,
    /// Waiting for an eject (else for an activation).
    removal: bool,
    respond: Responder,
    deadline: Instant,
}

/// A share whose virtiofsd starts on a thread of its own: starting it and the vhost-user
/// handshake may take up to `hostfs::REQUEST_TIMEOUT` per message when the daemon does not
/// answer, which the event loop (consoles, network, other requests) must not wait for.
struct Starting {
    spec: hostfs::ShareSpec,
    respond: Responder,
    /// The daemon's device, or why there is none; the thread wakes the loop after sending.
    done: mpsc::Receiver<Result<Fs, ShareError>>,
}

/// Where a share's daemon is started: [`crate::hostfs_shares::open_share`]; tests give another.
pub type ShareStarter = fn(&hostfs::ShareSpec) -> Result<Fs, ShareError>;

/// The controller of one machine: the requests waiting for its guest.
pub struct Controller {
    pending: Vec<Pending>,
    starting: Vec<Starting>,
    guest_version: String,
    /// The event loop's wake eventfd, for the threads that start shares.
    wake: Arc<EventFd>,
    start_share: ShareStarter,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("pending", &self.pending.len())
            .field("starting", &self.starting.len())
            .finish()
    }
}

fn pci_of(id: DeviceId) -> Option<PciId> {
    match id {
        DeviceId::Disk(u) => Some(PciId::Disk(u)),
        DeviceId::Nic(n) => Some(PciId::Nic(n)),
        DeviceId::Share(n) => Some(PciId::Share(n)),
        DeviceId::Console(_) | DeviceId::Serial(_) => None,
    }
}

impl Controller {
    /// A controller; `guest_version` answers [`VmmAction::QueryVersion`]; `wake` wakes the
    /// event loop (which then calls [`Controller::on_shares_started`]); `start_share` starts a
    /// share's daemon and makes its device.
    pub fn new(guest_version: String, wake: EventFd, start_share: ShareStarter) -> Self {
        Controller {
            pending: Vec::new(),
            starting: Vec::new(),
            guest_version,
            wake: Arc::new(wake),
            start_share,
        }
    }

    /// Performs `action` on `machine`; `ops` is the event loop's (hot-plugged devices join
    /// it). The answer goes to `respond`, now or later.
    pub fn handle(
        &mut self,
        action: VmmAction,
        respond: Responder,
        machine: &mut Machine,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) {
        match action {
            VmmAction::AttachDisk(spec) => {
                let id = DeviceId::Disk(spec.unit);
                match self
                    .check_idle(id)
                    .and_then(|()| machine.attach_disk(spec, ops))
                {
                    Ok(()) => self.wait(id, false, respond),
                    Err(e) => respond(Err(e)),
                }
            }
            VmmAction::AttachNic { index, spec } => {
                let id = DeviceId::Nic(index);
                match self
                    .check_idle(id)
                    .and_then(|()| machine.attach_nic(index, spec, ops))
                {
                    Ok(Attached::Announced) => self.wait(id, false, respond),
                    // The device the guest has runs on: nothing to wait for.
                    Ok(Attached::BackendReplaced) => respond(Ok(VmmData::Empty)),
                    Err(e) => respond(Err(e)),
                }
            }
            VmmAction::AttachShare(spec) => {
                let id = DeviceId::Share(spec.index);
                let starting: Vec<_> = self.starting.iter().map(|s| s.spec.clone()).collect();
                match self
                    .check_idle(id)
                    .and_then(|()| machine.check_share(&spec, &starting))
                    .and_then(|()| self.spawn_start(&spec))
                {
                    Ok(done) => self.starting.push(Starting {
                        spec,
                        respond,
                        done,
                    }),
                    Err(e) => respond(Err(e)),
                }
            }
            VmmAction::SetLine {
                class,
                index,
                channel,
            } => respond(
                machine
                    .set_line(class, index, channel)
                    .map(|()| VmmData::Empty),
            ),
            VmmAction::Detach(id) => match (id, pci_of(id)) {
                (_, Some(pci)) => match self
                    .check_idle(id)
                    .and_then(|()| machine.request_removal(id, pci))
                {
                    Ok(()) => self.wait(id, true, respond),
                    Err(e) => respond(Err(e)),
                },
                (DeviceId::Console(n), None) => {
                    respond(machine.remove_console(n).map(|()| VmmData::Empty))
                }
                (_, None) => respond(Err(ControlError::NotRemovable(id))),
            },
            VmmAction::QueryDevice(id) => respond(Ok(match id {
                DeviceId::Disk(unit) => VmmData::Disk(machine.disk_config(unit)),
                DeviceId::Console(n) => {
                    VmmData::Line(machine.line_description(devices::chan::LineClass::Console, n))
                }
                DeviceId::Serial(n) => {
                    VmmData::Line(machine.line_description(devices::chan::LineClass::Serial, n))
                }
                DeviceId::Share(n) => VmmData::Share(machine.share_config(n)),
                DeviceId::Nic(n) => VmmData::Line(
                    machine
                        .next_config()
                        .eth
                        .get(&n)
                        .map(|s| s.transport_line()),
                ),
            })),
            VmmAction::QueryMemory => respond(Ok(VmmData::Memory(machine.memory_size()))),
            VmmAction::QueryVersion => respond(Ok(VmmData::Version(self.guest_version.clone()))),
            VmmAction::Pause => respond(
                machine
                    .pause()
                    .map(|()| VmmData::Empty)
                    .map_err(ControlError::Pause),
            ),
            VmmAction::Resume => {
                machine.resume();
                respond(Ok(VmmData::Empty))
            }
            VmmAction::Reboot => {
                respond(Ok(VmmData::Empty));
                machine.request_exit(VmExit::Reboot);
            }
            VmmAction::Halt => {
                respond(Ok(VmmData::Empty));
                machine.request_exit(VmExit::Halt);
            }
            VmmAction::CtrlAltDel => {
                machine.ctrl_alt_del();
                respond(Ok(VmmData::Empty))
            }
            VmmAction::SysRq(key) => {
                // Keys without a scancode are dropped, as a keyboard would.
                machine.sysrq(key);
                respond(Ok(VmmData::Empty))
            }
        }
    }

    fn check_idle(&self, id: DeviceId) -> Result<(), ControlError> {
        let starting = |s: &Starting| DeviceId::Share(s.spec.index) == id;
        if self.pending.iter().any(|p| p.id == id) || self.starting.iter().any(starting) {
            return Err(ControlError::Busy(id));
        }
        Ok(())
    }

    /// Starts the daemon of `spec` on a thread that sends the result and wakes the loop.
    fn spawn_start(
        &self,
        spec: &hostfs::ShareSpec,
    ) -> Result<mpsc::Receiver<Result<Fs, ShareError>>, ControlError> {
        let (tx, rx) = mpsc::channel();
        let (spec, wake, start) = (spec.clone(), self.wake.clone(), self.start_share);
        let id = DeviceId::Share(spec.index);
        std::thread::Builder::new()
            .name(format!("kuml-{}", spec.name()))
            .spawn(move || {
                // A loop that gave up on the share (the VM stopped) has dropped the receiver:
                // the device is dropped here then, which stops its daemon.
                let _ = tx.send(start(&spec));
                if let Err(e) = wake.write(1) {
                    log::error!("cannot wake the event loop for {}: {e}", spec.name());
                }
            })
            .map_err(|e| ControlError::ShareThread(id, e))?;
        Ok(rx)
    }

    /// Plugs the shares whose daemon is up, or answers why it is not; a plugged share then
    /// waits for the guest like any hot-plugged device.
    pub fn on_shares_started(
        &mut self,
        machine: &mut Machine,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) {
        self.take_started(|spec, fs| machine.plug_share(spec, fs, ops));
    }

    fn take_started(
        &mut self,
        mut plug: impl FnMut(hostfs::ShareSpec, Fs) -> Result<(), ControlError>,
    ) {
        let mut i = 0;
        while i < self.starting.len() {
            let id = DeviceId::Share(self.starting[i].spec.index);
            let result = match self.starting[i].done.try_recv() {
                Err(TryRecvError::Empty) => {
                    i += 1;
                    continue;
                }
                Ok(r) => r.map_err(ControlError::Share),
                Err(TryRecvError::Disconnected) => Err(ControlError::ShareThread(
                    id,
                    std::io::Error::other("its thread ended without an answer"),
                )),
            };
            let s = self.starting.remove(i);
            match result.and_then(|fs| plug(s.spec, fs)) {
                Ok(()) => self.wait(id, false, s.respond),
                Err(e) => (s.respond)(Err(e)),
            }
        }
    }

    fn wait(&mut self, id: DeviceId, removal: bool, respond: Responder) {
        let Some(pci) = pci_of(id) else {
            respond(Err(ControlError::NoSuchDevice(id)));
            return;
        };
        self.pending.push(Pending {
            id,
            pci,
            removal,
            respond,
            deadline: Instant::now() + HOTPLUG_TIMEOUT,
        });
    }

    fn complete(
        &mut self,
        pci: PciId,
        answer: impl Fn(&Pending) -> Option<Result<VmmData, ControlError>>,
    ) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            match (p.pci == pci).then(|| answer(p)).flatten() {
                Some(r) => {
                    let p = self.pending.remove(i);
                    (p.respond)(r);
                }
                None => i += 1,
            }
        }
    }

    /// Answers what the guest's device events complete.
    pub fn on_device_events(&mut self, events: &[DeviceEvent]) {
        for ev in events {
            match *ev {
                DeviceEvent::Activated(pci) => {
                    self.complete(pci, |p| (!p.removal).then_some(Ok(VmmData::Empty)))
                }
                DeviceEvent::Ejected(pci) => self.complete(pci, |p| {
                    Some(if p.removal {
                        Ok(VmmData::Empty)
                    } else {
                        Err(ControlError::EjectedInstead(p.id))
                    })
                }),
            }
        }
    }

    /// Fails the requests whose time is up (the device stays as it is; the error says so).
    pub fn expire(&mut self, now: Instant) {
        let (late, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.pending = waiting;
        for p in late {
            (p.respond)(Err(ControlError::GuestTimeout {
                id: p.id,
                removal: p.removal,
            }));
        }
    }

    /// The earliest deadline of a waiting request.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    /// Answers every waiting request with an error: the VM stops or restarts (a client such
    /// as `uml_mconsole`, which has no timeout, would otherwise wait for ever).
    pub fn abort_all(&mut self, reason: StopReason) {
        for s in std::mem::take(&mut self.starting) {
            let id = DeviceId::Share(s.spec.index);
            (s.respond)(Err(ControlError::ShareInterrupted { id, reason }));
        }
        for p in std::mem::take(&mut self.pending) {
            (p.respond)(Err(ControlError::Interrupted {
                id: p.id,
                removal: p.removal,
                reason,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    type Answers = Arc<Mutex<Vec<Result<VmmData, String>>>>;

    fn no_daemon(spec: &hostfs::ShareSpec) -> Result<Fs, ShareError> {
        Err(ShareError::Daemon {
            name: spec.name(),
            source: hostfs::DaemonError::NotFound,
        })
    }

    fn controller() -> Controller {
        let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Controller::new("Linux".into(), wake, no_daemon)
    }

    fn share(index: u32) -> hostfs::ShareSpec {
        hostfs::parse_share(index, "/srv").unwrap()
    }

    /// A share request as `handle` records it, with the sender of its daemon's result.
    fn starting(
        c: &mut Controller,
        index: u32,
        answers: &Answers,
    ) -> mpsc::Sender<Result<Fs, ShareError>> {
        let (tx, done) = mpsc::channel();
        c.starting.push(Starting {
            spec: share(index),
            respond: responder(answers),
            done,
        });
        tx
    }

    /// Released by the test: the daemon of `gated_daemon` starts then.
    static GATE: (Mutex<bool>, std::sync::Condvar) = (Mutex::new(false), std::sync::Condvar::new());

    fn gated_daemon(spec: &hostfs::ShareSpec) -> Result<Fs, ShareError> {
        let mut open = GATE.0.lock().unwrap();
        while !*open {
            open = GATE.1.wait(open).unwrap();
        }
        no_daemon(spec)
    }

    #[test]
    fn a_share_starts_on_its_own_thread_and_wakes_the_loop() {
        let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let c = Controller::new(String::new(), wake.try_clone().unwrap(), gated_daemon);
        // Returns while the daemon cannot have started: the loop does not wait for it.
        let done = c.spawn_start(&share(1)).unwrap();
        assert!(matches!(done.try_recv(), Err(TryRecvError::Empty)));
        assert!(wake.read().is_err(), "woken before the daemon was up");
        *GATE.0.lock().unwrap() = true;
        GATE.1.notify_all();
        let r = done.recv().unwrap();
        assert!(matches!(r, Err(ShareError::Daemon { .. })));
        // The wake comes after the result (the thread sends first).
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while wake.read().is_err() {
            assert!(Instant::now() < deadline, "the loop was never woken");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_starting_share_is_busy_until_its_daemon_answers() {
        let answers = Answers::default();
        let mut c = controller();
        let failing = starting(&mut c, 1, &answers);
        let lost = starting(&mut c, 2, &answers);
        let _waiting = starting(&mut c, 3, &answers);
        assert!(matches!(
            c.check_idle(DeviceId::Share(1)),
            Err(ControlError::Busy(_))
        ));
        assert!(c.check_idle(DeviceId::Share(4)).is_ok());
        let mut plugged = Vec::new();
        c.take_started(|spec, _| {
            plugged.push(spec.index);
            Ok(())
        });
        assert!(answers.lock().unwrap().is_empty() && c.starting.len() == 3);
        // A daemon that failed: its error is the answer; a thread gone: an error too.
        failing.send(no_daemon(&share(1))).unwrap();
        drop(lost);
        c.take_started(|spec, _| {
            plugged.push(spec.index);
            Ok(())
        });
        let a = answers.lock().unwrap().clone();
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(matches!(&a[0], Err(e) if e == "hostfs1"), "{a:?}");
        assert_eq!(a[1], Err("cannot start hostfs2".into()));
        assert!(plugged.is_empty());
        assert!(c.check_idle(DeviceId::Share(1)).is_ok());
        // A stop answers the share still starting; it is not added.
        c.abort_all(StopReason::Restart);
        assert_eq!(
            answers.lock().unwrap()[2],
            Err("the VM restarted while the virtiofsd of hostfs3 was starting; hostfs3 is not added".into())
        );
        assert!(c.starting.is_empty());
    }

    fn responder(answers: &Answers) -> Responder {
        let a = answers.clone();
        Box::new(move |r| a.lock().unwrap().push(r.map_err(|e| e.to_string())))
    }

    #[test]
    fn pending_requests_complete_on_events_and_fail_on_abort() {
        let answers = Answers::default();
        let mut c = controller();
        c.wait(DeviceId::Disk(1), false, responder(&answers));
        c.wait(DeviceId::Nic(0), true, responder(&answers));
        c.wait(DeviceId::Disk(2), false, responder(&answers));
        assert!(c.check_idle(DeviceId::Disk(1)).is_err());
        // An activation answers the addition only.
        c.on_device_events(&[
            DeviceEvent::Activated(PciId::Disk(1)),
            DeviceEvent::Activated(PciId::Nic(0)),
        ]);
        assert_eq!(*answers.lock().unwrap(), vec![Ok(VmmData::Empty)]);
        // An eject answers the removal with OK, an addition with an error.
        c.on_device_events(&[DeviceEvent::Ejected(PciId::Nic(0))]);
        assert_eq!(answers.lock().unwrap().len(), 2);
        c.wait(DeviceId::Disk(3), false, responder(&answers));
        c.on_device_events(&[DeviceEvent::Ejected(PciId::Disk(3))]);
        assert_eq!(
            answers.lock().unwrap()[2],
            Err("the guest ejected ubd3 instead of starting it".into())
        );
        // A restart answers what is left.
        c.abort_all(StopReason::Restart);
        assert_eq!(
            answers.lock().unwrap()[3],
            Err("the VM restarted before the guest started ubd2; it stays configured".into())
        );
        assert!(c.pending.is_empty() && c.next_deadline().is_none());
    }

    #[test]
    fn share_requests_wait_for_their_device() {
        let answers = Answers::default();
        let mut c = controller();
        c.wait(DeviceId::Share(1), false, responder(&answers));
        c.wait(DeviceId::Share(0), true, responder(&answers));
        assert!(c.check_idle(DeviceId::Share(1)).is_err());
        assert!(c.check_idle(DeviceId::Share(2)).is_ok());
        // Another share's slot, or a disk's, answers neither.
        c.on_device_events(&[
            DeviceEvent::Activated(PciId::Share(2)),
            DeviceEvent::Ejected(PciId::Disk(0)),
        ]);
        assert!(answers.lock().unwrap().is_empty());
        c.on_device_events(&[
            DeviceEvent::Activated(PciId::Share(1)),
            DeviceEvent::Ejected(PciId::Share(0)),
        ]);
        assert_eq!(
            *answers.lock().unwrap(),
            vec![Ok(VmmData::Empty), Ok(VmmData::Empty)]
        );
        c.wait(DeviceId::Share(3), false, responder(&answers));
        c.abort_all(StopReason::Shutdown);
        assert_eq!(
            answers.lock().unwrap()[2],
            Err("the VM stopped before the guest started hostfs3; it stays configured".into())
        );
    }

    #[test]
    fn late_requests_fail() {
        let answers = Answers::default();
        let mut c = controller();
        c.wait(DeviceId::Disk(1), true, responder(&answers));
        let deadline = c.next_deadline().unwrap();
        c.expire(deadline - Duration::from_secs(1));
        assert!(answers.lock().unwrap().is_empty());
        c.expire(deadline);
        let a = answers.lock().unwrap();
        assert!(
            matches!(&a[0], Err(e) if e.starts_with("the guest did not eject ubd1 within 180 s")),
            "{a:?}"
        );
    }
}
