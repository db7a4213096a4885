//! virtio-console with multiport: UML's consoles (`con0`, `con1`, …) as ports.
//!
//! Port N is `conN`. Every port is announced as a console port (CONSOLE_PORT), so the guest
//! makes it an hvc tty; port 0 is `hvc0`, the kernel console (`console=hvc0`). Ports come and
//! go at run time (mconsole `config conN=…` / `remove conN`) with DEVICE_ADD/DEVICE_REMOVE.
//!
//! * [`control`]: PURE codec of the control messages.
//! * [`port`]: descriptor chains to bytes and back.
//! * [`device`]: configuration space, features, ports, activation, reset ([`Console`]).
//! * [`event_handler`]: the event-manager subscriber: queues, channels, control protocol.
//!
//! Data flow: guest output (a port's transmit queue) goes to the port's [`Channel`] output,
//! which never blocks (see [`crate::chan`]). Host input is read from the channel into a
//! per-port buffer of [`INPUT_BUFFER_MAX`] bytes and copied into the guest's receive buffers
//! once the guest has the port open (PORT_OPEN); while the buffer is full the channel is not
//! read, so nothing is lost and the host side feels the backpressure.
//!
//! Wiring (VMM side):
//! ```ignore
//! let console = Arc::new(Mutex::new(Console::new(DEFAULT_MAX_PORTS)?));
//! for (id, spec) in chan::resolve_lines(LineClass::Console, all, &each, 16, display_set)? {
//!     let ch = Channel::open(&spec, LineClass::Console, id)?;
//!     if let Some(msg) = ch.announcement() { println!("{msg}"); }
//!     console.lock().unwrap().add_port(id, ch)?;
//! }
//! event_manager.add_subscriber(console.clone());   // Arc<Mutex<Console>>
//! transport = VirtioPci::new(console.clone() as Arc<Mutex<dyn VirtioDevice>>, …);
//! ```
//!
//! [`Channel`]: crate::chan::Channel

pub mod control;
pub mod device;
pub mod event_handler;
pub mod port;

pub use device::{
    Console, ConsoleError, DEFAULT_MAX_PORTS, INPUT_BUFFER_MAX, QUEUE_SIZE,
    VIRTIO_CONSOLE_F_EMERG_WRITE, VIRTIO_CONSOLE_F_MULTIPORT,
};

#[cfg(test)]
mod tests;
