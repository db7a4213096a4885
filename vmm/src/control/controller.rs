//! Acts on [`VmmAction`]s against the running [`Machine`], on the event loop's thread, and
//! answers each through its [`Responder`]: at once, or when the guest has done its part.

use std::time::Instant;

use event_manager::SubscriberOps;

use super::{ControlError, DeviceId, Responder, StopReason, VmmAction, VmmData, HOTPLUG_TIMEOUT};
use crate::device_manager::{DeviceEvent, PciId, Subscriber};
use crate::exit::VmExit;
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

/// The controller of one machine: the requests waiting for its guest.
#[derive(Default)]
pub struct Controller {
    pending: Vec<Pending>,
    guest_version: String,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("pending", &self.pending.len())
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
    /// A controller; `guest_version` answers [`VmmAction::QueryVersion`].
    pub fn new(guest_version: String) -> Self {
        Controller {
            pending: Vec::new(),
            guest_version,
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
                match self
                    .check_idle(id)
                    .and_then(|()| machine.attach_share(spec, ops))
                {
                    Ok(()) => self.wait(id, false, respond),
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
        if self.pending.iter().any(|p| p.id == id) {
            return Err(ControlError::Busy(id));
        }
        Ok(())
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

    fn responder(answers: &Answers) -> Responder {
        let a = answers.clone();
        Box::new(move |r| a.lock().unwrap().push(r.map_err(|e| e.to_string())))
    }

    #[test]
    fn pending_requests_complete_on_events_and_fail_on_abort() {
        let answers = Answers::default();
        let mut c = Controller::new("Linux".into());
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
        let mut c = Controller::new(String::new());
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
        let mut c = Controller::new(String::new());
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
