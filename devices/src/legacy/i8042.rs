//! A minimal i8042 keyboard controller: enough for Linux to find a keyboard, to reset the
//! machine (command 0xFE, or the output port's reset line), and to receive injected scancodes
//! (mconsole `cad` sends Ctrl-Alt-Del).

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{GuestEvent, GuestEvents};
use crate::bus::BusDevice;

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Status (read) and command (write) port.
pub const COMMAND_PORT: u16 = 0x64;
/// The keyboard's IRQ.
pub const KBD_IRQ: u32 = 1;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM: u8 = 1 << 2;
const STATUS_COMMAND: u8 = 1 << 3;
const STATUS_UNLOCKED: u8 = 1 << 4;
/// Controller configuration byte: keyboard interrupt enabled.
const CTR_KBD_INT: u8 = 1 << 0;
/// Controller configuration byte: keyboard clock disabled.
const CTR_KBD_DISABLE: u8 = 1 << 4;
/// Controller configuration byte: mouse clock disabled.
const CTR_AUX_DISABLE: u8 = 1 << 5;
/// Controller configuration byte: system flag.
const CTR_SYSTEM: u8 = 1 << 2;
/// Controller configuration byte: scancode translation (set 2 to set 1).
const CTR_XLATE: u8 = 1 << 6;

const ACK: u8 = 0xfa;

/// Bytes the controller holds for the guest: a real keyboard buffers 16 (the controller
/// itself one). A guest that sends commands without reading the answers, or mconsole `sysrq`
/// to a guest that does not read its keyboard, cannot grow the queue beyond this: what does
/// not fit is dropped (a whole reply or scancode sequence at a time).
pub const OUTPUT_MAX: usize = 16;

/// Set-1 scancodes for Ctrl-Alt-Del press and release (Ctrl, Alt, E0 Del, releases).
pub const CTRL_ALT_DEL: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// PURE: the set-1 make code of a letter or digit key.
fn key_make_code(c: char) -> Option<u8> {
    const ROW_QWERTY: &[u8] = b"qwertyuiop";
    const ROW_ASDF: &[u8] = b"asdfghjkl";
    const ROW_ZXCV: &[u8] = b"zxcvbnm";
    let c = c.to_ascii_lowercase() as u8;
    let pos = |row: &[u8]| row.iter().position(|k| *k == c);
    match c {
        b'1'..=b'9' => Some(c - b'1' + 0x02),
        b'0' => Some(0x0b),
        _ => pos(ROW_QWERTY)
            .map(|p| 0x10 + p as u8)
            .or_else(|| pos(ROW_ASDF).map(|p| 0x1e + p as u8))
            .or_else(|| pos(ROW_ZXCV).map(|p| 0x2c + p as u8)),
    }
}

/// PURE: set-1 scancodes for Alt-SysRq-`key` (press Alt, SysRq, the key; release in reverse),
/// which the guest kernel's keyboard driver turns into its magic SysRq action.
pub fn sysrq_scancodes(key: char) -> Option<Vec<u8>> {
    const ALT: u8 = 0x38;
    const SYSRQ: u8 = 0x54;
    const BREAK: u8 = 0x80;
    let k = key_make_code(key)?;
    Some(vec![ALT, SYSRQ, k, k | BREAK, SYSRQ | BREAK, ALT | BREAK])
}

/// What the next write to the data port means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A byte for the keyboard.
    Keyboard,
    /// The new controller configuration byte (after command 0x60).
    WriteCtr,
    /// The output port (after command 0xD1).
    WriteOutputPort,
    /// A byte for the (absent) mouse port, after 0xD3 (loop back) or 0xD4 (send to mouse).
    Aux,
}

/// The controller.
pub struct I8042 {
    events: Arc<dyn GuestEvents>,
    irq: EventFd,
    ctr: u8,
    status_command: bool,
    pending: Pending,
    out: VecDeque<u8>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("ctr", &self.ctr)
            .field("out", &self.out)
            .finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller raising `irq` (IRQ 1) and reporting resets to `events`.
    pub fn new(events: Arc<dyn GuestEvents>, irq: EventFd) -> Self {
        I8042 {
            events,
            irq,
            ctr: CTR_KBD_INT | CTR_SYSTEM | CTR_XLATE,
            status_command: false,
            pending: Pending::Keyboard,
            out: VecDeque::new(),
        }
    }

    /// Queues keyboard scancodes for the guest (set 1) and raises IRQ 1. Returns false
    /// (and queues nothing) when the guest has not read enough of what it was sent before
    /// for the whole sequence to fit.
    pub fn inject_scancodes(&mut self, codes: &[u8]) -> bool {
        if !self.queue(codes) {
            log::warn!(
                "i8042: the guest is not reading its keyboard; {} scancodes dropped",
                codes.len()
            );
            return false;
        }
        self.interrupt();
        true
    }

    // Queues `bytes` whole, or not at all when they do not fit.
    fn queue(&mut self, bytes: &[u8]) -> bool {
        if self.out.len() + bytes.len() > OUTPUT_MAX {
            return false;
        }
        self.out.extend(bytes);
        true
    }

    fn interrupt(&self) {
        if self.ctr & CTR_KBD_INT != 0 && !self.out.is_empty() {
            if let Err(e) = self.irq.write(1) {
                log::warn!("cannot raise the keyboard interrupt: {e}");
            }
        }
    }

    fn reply(&mut self, bytes: &[u8]) {
        if !self.queue(bytes) {
            log::trace!("i8042: output full, reply {bytes:02x?} dropped");
            return;
        }
        self.interrupt();
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            0x20 => self.reply(&[self.ctr]),
            0x60 => self.pending = Pending::WriteCtr,
            0xaa => self.reply(&[0x55]), // controller self-test passed
            0xab => self.reply(&[0x00]), // keyboard interface test passed
            0xa9 => self.reply(&[0x01]), // aux interface: clock stuck low, i.e. no mouse port
            0xa7 => self.ctr |= CTR_AUX_DISABLE,
            0xa8 => self.ctr &= !CTR_AUX_DISABLE,
            0xad => self.ctr |= CTR_KBD_DISABLE,
            0xae => self.ctr &= !CTR_KBD_DISABLE,
            0xd1 => self.pending = Pending::WriteOutputPort,
            0xd3 | 0xd4 => self.pending = Pending::Aux,
            0xfe => self.events.report(GuestEvent::Reset),
            // Enable/disable ports, and anything else: accepted without a reply.
            _ => log::trace!("i8042 command {cmd:#x}"),
        }
    }

    fn data(&mut self, value: u8) {
        match std::mem::replace(&mut self.pending, Pending::Keyboard) {
            Pending::WriteCtr => self.ctr = value,
            Pending::WriteOutputPort => {
                if value & 1 == 0 {
                    self.events.report(GuestEvent::Reset);
                }
            }
            // There is no mouse port: a loop-back byte comes back as keyboard data (not AUX),
            // which Linux reads as "no AUX port" without waiting for a timeout.
            Pending::Aux => self.reply(&[0x00]),
            Pending::Keyboard => match value {
                0xff => self.reply(&[ACK, 0xaa]),       // reset and self-test
                0xf2 => self.reply(&[ACK, 0xab, 0x83]), // identify: MF2 keyboard
                0xee => self.reply(&[0xee]),            // echo
                _ => self.reply(&[ACK]),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        match base + offset {
            p if p == u64::from(DATA_PORT) => {
                *b = self.out.pop_front().unwrap_or(0);
                if !self.out.is_empty() {
                    self.interrupt();
                }
            }
            p if p == u64::from(COMMAND_PORT) => {
                let mut s = STATUS_SYSTEM | STATUS_UNLOCKED;
                if !self.out.is_empty() {
                    s |= STATUS_OUTPUT_FULL;
                }
                if self.status_command {
                    s |= STATUS_COMMAND;
                }
                *b = s;
            }
            _ => {}
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match base + offset {
            p if p == u64::from(DATA_PORT) => {
                self.status_command = false;
                self.data(v);
            }
            p if p == u64::from(COMMAND_PORT) => {
                self.status_command = true;
                self.command(v);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pm::tests::Recorder;
    use super::*;

    fn dev() -> (I8042, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(rec.clone(), irq), rec)
    }

    fn read(d: &mut I8042, port: u16) -> u8 {
        let mut b = [0u8];
        d.read(u64::from(port), 0, &mut b);
        b[0]
    }

    #[test]
    fn reset_command() {
        let (mut d, rec) = dev();
        d.write(u64::from(COMMAND_PORT), 0, &[0xfe]);
        assert_eq!(*rec.0.lock().unwrap(), vec![GuestEvent::Reset]);
    }

    #[test]
    fn ctr_round_trip_and_self_test() {
        let (mut d, _) = dev();
        d.write(u64::from(COMMAND_PORT), 0, &[0x60]);
        d.write(u64::from(DATA_PORT), 0, &[0x45]);
        d.write(u64::from(COMMAND_PORT), 0, &[0x20]);
        assert_ne!(read(&mut d, COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut d, DATA_PORT), 0x45);
        d.write(u64::from(COMMAND_PORT), 0, &[0xaa]);
        assert_eq!(read(&mut d, DATA_PORT), 0x55);
        assert_eq!(read(&mut d, COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn sysrq_keys() {
        assert_eq!(key_make_code('h'), Some(0x23));
        assert_eq!(key_make_code('s'), Some(0x1f));
        assert_eq!(key_make_code('b'), Some(0x30));
        assert_eq!(key_make_code('1'), Some(0x02));
        assert_eq!(key_make_code('0'), Some(0x0b));
        assert_eq!(key_make_code('!'), None);
        assert_eq!(
            sysrq_scancodes('m'),
            Some(vec![0x38, 0x54, 0x32, 0xb2, 0xd4, 0xb8])
        );
    }

    #[test]
    fn no_mouse_port() {
        let (mut d, _) = dev();
        d.write(u64::from(COMMAND_PORT), 0, &[0xd3]);
        d.write(u64::from(DATA_PORT), 0, &[0x5a]);
        let status = read(&mut d, COMMAND_PORT);
        assert_eq!(status & (STATUS_OUTPUT_FULL | (1 << 5)), STATUS_OUTPUT_FULL);
        assert_eq!(read(&mut d, DATA_PORT), 0x00);
        d.write(u64::from(COMMAND_PORT), 0, &[0xa7]);
        d.write(u64::from(COMMAND_PORT), 0, &[0x20]);
        assert_ne!(read(&mut d, DATA_PORT) & CTR_AUX_DISABLE, 0);
    }

    #[test]
    fn keyboard_identify_and_scancodes() {
        let (mut d, _) = dev();
        d.write(u64::from(DATA_PORT), 0, &[0xf2]);
        assert_eq!(
            [
                read(&mut d, DATA_PORT),
                read(&mut d, DATA_PORT),
                read(&mut d, DATA_PORT)
            ],
            [ACK, 0xab, 0x83]
        );
        d.inject_scancodes(&CTRL_ALT_DEL);
        let got: Vec<u8> = (0..8).map(|_| read(&mut d, DATA_PORT)).collect();
        assert_eq!(got, CTRL_ALT_DEL);
    }

    // G2: a guest that sends commands in a loop and never reads the answers used to grow
    // the output queue without bound (host memory).
    #[test]
    fn unread_answers_are_bounded() {
        let (mut d, _) = dev();
        for _ in 0..100_000 {
            d.write(u64::from(COMMAND_PORT), 0, &[0xaa]);
            d.write(u64::from(DATA_PORT), 0, &[0xf2]);
        }
        assert!(d.out.len() <= OUTPUT_MAX, "{} bytes queued", d.out.len());
        // What was queued is whole answers, read in order.
        assert_eq!(read(&mut d, DATA_PORT), 0x55);
        // Injected sequences are whole or not at all.
        let (mut d, _) = dev();
        assert!(d.inject_scancodes(&CTRL_ALT_DEL));
        assert!(!d.inject_scancodes(&[0x1e; OUTPUT_MAX - 7]));
        let got: Vec<u8> = (0..8).map(|_| read(&mut d, DATA_PORT)).collect();
        assert_eq!(got, CTRL_ALT_DEL);
        assert_eq!(read(&mut d, COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
    }
}
