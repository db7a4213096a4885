//! How a VM ends, and the process exit status each way maps to.

use std::sync::Mutex;

use devices::legacy::{GuestEvent, GuestEvents};
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::vcpu::{VcpuCrash, VcpuEvent};

/// Exit status: the guest powered off, or was halted (mconsole `halt`).
pub const EXIT_POWEROFF: i32 = 0;
/// Exit status: kuml could not start or run the VM.
pub const EXIT_ERROR: i32 = 1;
/// Exit status: the command line is wrong.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: the guest rebooted and `noreboot` was given.
pub const EXIT_REBOOT: i32 = 3;
/// Exit status: the guest kernel panicked.
pub const EXIT_PANIC: i32 = 4;
/// Exit status: the guest crashed in a way KVM cannot continue (emulation failure, bad state).
pub const EXIT_CRASH: i32 = 5;
/// Exit status base for a stop by signal: 128 + the signal number (SIGTERM: 143).
pub const EXIT_SIGNAL_BASE: i32 = 128;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    PowerOff,
    /// The guest rebooted.
    Reboot,
    /// The guest kernel panicked.
    Panic,
    /// The guest wrote this status to the test exit port.
    Status(u8),
    /// The guest crashed.
    Crash(VcpuCrash),
    /// The VMM was asked to stop (mconsole `halt`).
    Halt,
    /// A signal asked kuml to stop.
    Signal(i32),
}

impl VmExit {
    /// The process exit status for this ending.
    pub fn code(&self) -> i32 {
        match self {
            VmExit::PowerOff | VmExit::Halt => EXIT_POWEROFF,
            VmExit::Reboot => EXIT_REBOOT,
            VmExit::Panic => EXIT_PANIC,
            VmExit::Status(s) => i32::from(*s),
            VmExit::Crash(_) => EXIT_CRASH,
            VmExit::Signal(n) => EXIT_SIGNAL_BASE + n,
        }
    }
}

/// Collects the first reason to stop, and wakes the event loop when there is one.
#[derive(Debug)]
pub struct ExitState {
    reason: Mutex<Option<VmExit>>,
    /// Readable once a reason is set.
    pub evt: EventFd,
}

impl ExitState {
    /// A state with no reason yet.
    pub fn new() -> std::io::Result<ExitState> {
        Ok(ExitState {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `exit` unless a reason is already set.
    pub fn set(&self, exit: VmExit) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            log::info!("VM stopping: {exit:?}");
            *r = Some(exit);
            if let Err(e) = self.evt.write(1) {
                log::error!("cannot wake the event loop: {e}");
            }
        }
    }

    /// The reason, if any.
    pub fn get(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Maps a vCPU event.
    pub fn vcpu_event(&self, ev: VcpuEvent) {
        self.set(match ev {
            VcpuEvent::PowerOff => VmExit::PowerOff,
            VcpuEvent::Reset => VmExit::Reboot,
            VcpuEvent::Crash(what) => VmExit::Crash(what),
        });
    }
}

impl GuestEvents for ExitState {
    fn report(&self, event: GuestEvent) {
        self.set(match event {
            GuestEvent::PowerOff => VmExit::PowerOff,
            GuestEvent::Reset => VmExit::Reboot,
            GuestEvent::Panic => VmExit::Panic,
            GuestEvent::Exit(s) => VmExit::Status(s),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let all = [
            VmExit::PowerOff.code(),
            VmExit::Reboot.code(),
            VmExit::Panic.code(),
            VmExit::Crash(VcpuCrash::SystemEvent { vcpu: 0, kind: 9 }).code(),
            VmExit::Signal(15).code(),
        ];
        let mut sorted = all.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
        assert_eq!(VmExit::Signal(15).code(), 143);
        assert_eq!(VmExit::Status(42).code(), 42);
    }

    #[test]
    fn first_reason_wins() {
        let s = ExitState::new().unwrap();
        s.report(GuestEvent::Panic);
        s.vcpu_event(VcpuEvent::Reset);
        assert_eq!(s.get(), Some(VmExit::Panic));
        assert_eq!(s.evt.read().unwrap(), 1);
    }
}
