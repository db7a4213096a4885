//! virtio-console: UML's consoles (`con0`, `con1`, …) as ports of two devices
//! ([`ConsoleSet`]).
//!
//! `con0` is the only port of a device without multiport ([`Console::single`]): the guest
//! makes it `hvc0` while it probes the device, so the kernel console (`console=hvc0`) and
//! `/dev/console` exist before init starts, on every boot. `con1` and up are ports of a
//! multiport device; port N is `conN`. Every port is announced as a console port
//! (CONSOLE_PORT), so the guest makes it an hvc tty. Ports come and go at run time (mconsole
//! `config conN=…` / `remove conN`) with DEVICE_ADD/DEVICE_REMOVE.
//!
//! * [`control`]: PURE codec of the control messages.
//! * [`port`]: descriptor chains to bytes and back.
//! * [`device`]: configuration space, features, ports, activation, reset ([`Console`]).
//! * [`event_handler`]: the event-manager subscriber: queues, channels, control protocol.
//!
//! Data flow: guest output (a port's transmit queue) goes to the port's [`Channel`] output,
//! which never blocks (see [`crate::chan`]). Host input is read from the channel into a
//! per-port buffer of [`INPUT_BUFFER_MAX`] bytes and copied into the guest's receive buffers
//! once the guest has the port open (PORT_OPEN; for `con0`, activation); while the buffer is full the channel is not
//! read, so nothing is lost and the host side feels the backpressure.
//!
//! A port's channel is set up with [`Channel::prepare`] and opened when the guest opens the
//! port (PORT_OPEN 1, which Linux sends as soon as it makes the port an hvc tty; `con0`'s when
//! the driver activates its device): a `pts` is
//! allocated and announced then, and a `port:` line starts taking telnet clients then
//! ([`Channel::set_guest_open`]).
//!
//! Wiring (VMM side):
//! ```ignore
//! let ctx = ChanContext { umid: Some(umid), ..ChanContext::from_env() };
//! let lines = chan::resolve_lines(LineClass::Console, cfg.con.all.as_deref(), &cfg.con.each,
//!                                 DEFAULT_MAX_PORTS, ctx.display)?;
//! let opened = open_consoles(&lines, DEFAULT_MAX_PORTS, &ctx)?;
//! for e in &opened.failures { log::warn!("{}", error_chain(e)); }
//! for dev in opened.consoles.devices() {             // con0's device first
//!     event_manager.add_subscriber(dev.clone());     // Arc<Mutex<Console>>
//!     transport = VirtioPci::new(dev as Arc<Mutex<dyn VirtioDevice>>, …);
//! }
//! // mconsole `config con3=pts`: opened.consoles.add_port(3, Channel::prepare(…)?)
//! // mconsole `remove con3` / `config con3=none`: opened.consoles.remove_port(3)
//! ```
//!
//! [`Channel`]: crate::chan::Channel
//! [`Channel::prepare`]: crate::chan::Channel::prepare
//! [`Channel::set_guest_open`]: crate::chan::Channel::set_guest_open

pub mod control;
pub mod device;
pub mod event_handler;
pub mod port;

pub use device::{
    open_consoles, Console, ConsoleError, ConsoleSet, OpenedConsoles, DEFAULT_MAX_PORTS,
    INPUT_BUFFER_MAX, QUEUE_SIZE, VIRTIO_CONSOLE_F_EMERG_WRITE, VIRTIO_CONSOLE_F_MULTIPORT,
    VIRTIO_CONSOLE_F_SIZE,
};

#[cfg(test)]
mod tests;
