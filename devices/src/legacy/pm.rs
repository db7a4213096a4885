//! Small port devices that end the VM: the ACPI power-management block (sleep control, sleep
//! status, reset), QEMU's pvpanic port and the test exit port.
//!
//! Their port numbers are the VMM's choice and are described to the guest in the FADT and DSDT.

use std::sync::Arc;

use crate::bus::BusDevice;

use super::{GuestEvent, GuestEvents};

/// Sleep control register bit: enter the sleep state in SLP_TYP.
const SLP_EN: u8 = 1 << 5;

/// The ACPI power-management block: offset 0 sleep control, 1 sleep status, 2 reset.
pub struct PmDevice {
    events: Arc<dyn GuestEvents>,
    s5_slp_typ: u8,
    reset_value: u8,
}

impl std::fmt::Debug for PmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PmDevice").finish_non_exhaustive()
    }
}

impl PmDevice {
    /// A block whose S5 state is `s5_slp_typ` and whose reset register expects `reset_value`.
    pub fn new(events: Arc<dyn GuestEvents>, s5_slp_typ: u8, reset_value: u8) -> Self {
        PmDevice {
            events,
            s5_slp_typ,
            reset_value,
        }
    }
}

impl BusDevice for PmDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 if value & SLP_EN != 0 && (value >> 2) & 0x7 == self.s5_slp_typ => {
                self.events.report(GuestEvent::PowerOff)
            }
            0 => log::debug!("guest asked for sleep control value {value:#x}, ignored"),
            2 if value == self.reset_value => self.events.report(GuestEvent::Reset),
            _ => {}
        }
    }
}

/// pvpanic capability and event bit: the guest kernel panicked.
const PVPANIC_PANICKED: u8 = 1;
/// pvpanic capability and event bit: a crash kernel is loaded.
const PVPANIC_CRASH_LOADED: u8 = 2;

/// QEMU's pvpanic device (one port).
pub struct PvPanic {
    events: Arc<dyn GuestEvents>,
}

impl std::fmt::Debug for PvPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvPanic").finish_non_exhaustive()
    }
}

impl PvPanic {
    /// A pvpanic port reporting to `events`.
    pub fn new(events: Arc<dyn GuestEvents>) -> Self {
        PvPanic { events }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        let value = data.first().copied().unwrap_or(0);
        if value & PVPANIC_PANICKED != 0 {
            self.events.report(GuestEvent::Panic);
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            log::info!("the guest kernel panicked and is starting its crash kernel");
        }
    }
}

/// The test exit port: a byte written to it becomes kuml's exit status.
pub struct ExitPort {
    events: Arc<dyn GuestEvents>,
}

impl std::fmt::Debug for ExitPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitPort").finish_non_exhaustive()
    }
}

impl ExitPort {
    /// An exit port reporting to `events`.
    pub fn new(events: Arc<dyn GuestEvents>) -> Self {
        ExitPort { events }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        if let Some(&status) = data.first() {
            self.events.report(GuestEvent::Exit(status));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct Recorder(pub Mutex<Vec<GuestEvent>>);

    impl GuestEvents for Recorder {
        fn report(&self, event: GuestEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn s5_powers_off_and_reset_resets() {
        let rec = Arc::new(Recorder::default());
        let mut pm = PmDevice::new(rec.clone(), 5, 1);
        pm.write(0x600, 0, &[5 << 2]); // SLP_TYP without SLP_EN: nothing
        pm.write(0x600, 0, &[SLP_EN | (3 << 2)]); // S3: not supported, ignored
        pm.write(0x600, 0, &[SLP_EN | (5 << 2)]);
        pm.write(0x600, 2, &[7]); // wrong reset value
        pm.write(0x600, 2, &[1]);
        pm.write(0x600, 2, &[]);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![GuestEvent::PowerOff, GuestEvent::Reset]
        );
    }

    #[test]
    fn pvpanic_and_exit_port() {
        let rec = Arc::new(Recorder::default());
        let mut p = PvPanic::new(rec.clone());
        let mut b = [0u8; 1];
        p.read(0x505, 0, &mut b);
        assert_eq!(b, [3]);
        p.write(0x505, 0, &[2]);
        p.write(0x505, 0, &[1]);
        let mut e = ExitPort::new(rec.clone());
        e.write(0xf4, 0, &[42]);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![GuestEvent::Panic, GuestEvent::Exit(42)]
        );
    }
}
