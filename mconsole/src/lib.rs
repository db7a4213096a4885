//! mconsole: UML's management console for kuml.
//!
//! * [`protocol`] (PURE): request/reply/notification packets.
//! * [`command`] (PURE): the command parser, device table and UML's exact texts.
//! * [`server`]: the VM's datagram socket, with reply queueing so no packet is dropped.
//! * [`umid`]: the `<uml_dir>/<umid>/` directory, pid file and its cleanup.
//! * [`notify`]: `mconsole=notify:<socket>` notifications.
//! * [`client`]: what `kuml-mconsole` uses to talk to a VM.
//!
//! # Integration in the VMM's event loop
//!
//! ```no_run
//! use std::os::fd::AsRawFd;
//! use mconsole::{command, notify::Notifier, umid, Command, Reply, Server, UmidDir};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let uml_dir = umid::default_uml_dir()?; // or umid::expand_uml_dir(value_of_uml_dir)?
//! let dir = UmidDir::create(&uml_dir, Some("web1"))?; // RAII: removed on drop
//! let mut server = Server::bind(dir.socket_path())?;
//! if let Some(path) = mconsole::notify::parse_mconsole_option("notify:/tmp/n") {
//!     Notifier::new(path)?.socket_ready(server.path())?;
//! }
//! let _fd = server.as_raw_fd(); // register for EPOLLIN, level-triggered
//! // On readability:
//! while let Some(req) = server.recv()? {
//!     match req.command {
//!         Command::Version => server.reply(&req.client, &Reply::ok("Linux kuml 6.1 #1 x86_64")),
//!         Command::Help => server.reply(&req.client, &Reply::help()),
//!         Command::Proc(_) => server.reply_all(&req.client, &command::proc_replies(b"42\n")),
//!         Command::Stop => server.reply(&req.client, &Reply::stopped()), // after pausing vCPUs
//!         // Deferred: keep req.client and reply when the guest has enumerated the disk.
//!         Command::Config(spec) if !spec.is_query() => { let _token = req.client; }
//!         _ => server.reply(&req.client, &Reply::ok("")),
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod command;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod notify;
pub mod protocol;
pub mod server;
pub mod umid;

pub use command::{Command, Device, DeviceSpec, Parsed};
pub use protocol::{NotifyType, Reply};
pub use server::{ClientAddr, Incoming, Server, ServerError, ServerStats};
pub use umid::{UmidDir, UmidError};
