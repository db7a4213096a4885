//! mconsole: UML's management console for kuml.
//!
//! * [`protocol`] (PURE): request/reply/notification packets.
//! * [`command`] (PURE): the command parser, device table and UML's exact texts.
//! * [`server`]: the VM's datagram socket, with reply queueing so no packet is dropped.
//! * [`umid`]: the `<uml_dir>/<umid>/` directory, pid file and its cleanup.
//! * [`notify`]: `mconsole=notify:<socket>` notifications.
//! * [`client`]: what `kuml-mconsole` uses to talk to a VM.

pub mod client;
pub mod command;
pub mod notify;
pub mod protocol;
pub mod server;
pub mod umid;

pub use command::{Command, Device, DeviceSpec, Parsed};
pub use protocol::{NotifyType, Reply};
pub use server::{ClientAddr, Incoming, Server, ServerError, ServerStats};
pub use umid::{UmidDir, UmidError};
