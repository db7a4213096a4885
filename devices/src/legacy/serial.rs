//! A 16550A UART (vm-superio) on the port-I/O bus, with input buffered beyond its FIFO.
//!
//! The guest's output goes to a writer; write errors (a closed terminal or pipe) are logged
//! once and the output is dropped, so a vanished reader never stops the VM. Input that does not
//! fit in the UART's 64-byte FIFO waits in a host-side queue and is moved in as the guest reads.

use std::collections::VecDeque;
use std::io::{self, Write};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// The I/O ports and IRQs of COM1 to COM4.
pub const COM_PORTS: [(u16, u32); 4] = [(0x3f8, 4), (0x2f8, 3), (0x3e8, 4), (0x2e8, 3)];
/// Registers per UART.
pub const COM_PORT_LEN: u16 = 8;
/// Most input bytes held for the guest before further input is dropped.
const MAX_PENDING: usize = 1 << 20;

/// Raises the UART's interrupt by writing an eventfd that KVM routes to its IRQ line.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Guest output sink that never fails: errors are logged once and the data dropped.
struct Sink {
    out: Box<dyn Write + Send>,
    broken: bool,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.broken {
            if let Err(e) = self.out.write_all(buf).and_then(|_| self.out.flush()) {
                log::warn!("serial output is gone ({e}); dropping further output");
                self.broken = true;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One UART with its pending input.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Sink>,
    pending: VecDeque<u8>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq` and writing the guest's output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), Sink { out, broken: false }),
            pending: VecDeque::new(),
        }
    }

    /// Queues input for the guest; returns how many bytes were accepted.
    pub fn enqueue(&mut self, input: &[u8]) -> usize {
        let room = MAX_PENDING.saturating_sub(self.pending.len());
        let n = input.len().min(room);
        if n < input.len() {
            log::warn!("serial input queue full, dropping {} bytes", input.len() - n);
        }
        self.pending.extend(&input[..n]);
        self.refill();
        n
    }

    /// Bytes waiting to enter the FIFO.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn refill(&mut self) {
        let room = self.uart.fifo_capacity();
        if room == 0 || self.pending.is_empty() {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..room.min(self.pending.len())).collect();
        if let Err(e) = self.uart.enqueue_raw_bytes(&chunk) {
            log::debug!("serial input not delivered: {e:?}");
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
        self.refill();
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Some(&v), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, v) {
                log::debug!("serial register write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn output_reaches_the_writer() {
        let out = Shared::default();
        let mut s = SerialDevice::new(evt(), Box::new(out.clone()));
        for b in b"hi" {
            s.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(*out.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn broken_output_is_dropped_quietly() {
        let mut s = SerialDevice::new(evt(), Box::new(Broken));
        s.write(0x3f8, 0, &[b'x']);
        s.write(0x3f8, 0, &[b'y']);
    }

    #[test]
    fn input_beyond_the_fifo_waits() {
        let mut s = SerialDevice::new(evt(), Box::new(io::sink()));
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(s.enqueue(&input), 200);
        assert!(s.pending() > 0);
        let mut got = Vec::new();
        for _ in 0..400 {
            let mut lsr = [0u8];
            s.read(0x3f8, 5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut b = [0u8];
            s.read(0x3f8, 0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
    }
}
