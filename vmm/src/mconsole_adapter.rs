//! mconsole, UML's management console, as a front-end of the control seam: UML's command text
//! to a [`VmmAction`] ([`action_for`]), and the action's result to UML's reply ([`reply_for`]),
//! with UML's exact texts and error numbers. [`MconsoleFrontend`] serves the socket on the
//! event loop: it answers what needs no VMM itself and queues the rest.
//!
//! Where kuml answers differently from UML (documented in tests/tests/mconsole.rs):
//! `sysrq <c>` replies `""` (the key goes to the guest keyboard and the guest prints the
//! output on its console), `config mem` is the memory size (UML: the physical-memory base),
//! `log`/`proc`/`stack` are errors (they need an agent inside the guest). kuml adds hostfs
//! shares, which UML's mconsole does not know: `config hostfs<N>=<dir>[,flags]` with the
//! command line's syntax, `config hostfs<N>` (the share's value), `remove hostfs<N>`
//! (docs/hostfs.md).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::chan::{self, LineClass};
use devices::legacy::i8042;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use mconsole::{ClientAddr, Command, Device, DeviceSpec, Reply, Server};

use crate::control::{ControlError, ControlQueue, DeviceId, VmmAction, VmmData};
use crate::device_manager::locked;
use crate::hostfs_shares::ShareError;

/// UML's `sysrq` help text (its reply to a missing or unknown letter).
pub const SYSRQ_HELP: &str = "sysrq: HELP : loglevel(0-9) reboot(b) crash(c) terminate-all-tasks(e) memory-full-oom-kill(f) kill-all-tasks(i) thaw-filesystems(j) show-memory-usage(m) nice-all-RT-tasks(n) poweroff(o) show-registers(p) show-all-timers(q) sync(s) show-task-states(t) unmount(u) show-blocked-tasks(w) ";

/// UML's text when a device number does not parse.
const BAD_NUMBER: &str = mconsole::command::CANT_PARSE_DEVICE_NUMBER;

/// How the result of an action becomes UML's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyAs {
    /// `OK` with no text (or the data's text).
    Plain,
    /// `stop`: `OK stopped`.
    Stopped,
}

/// PURE: the action for `cmd`, or the reply mconsole gives itself (help, bad arguments,
/// what kuml cannot do).
pub fn action_for(cmd: Command) -> Result<(VmmAction, ReplyAs), Reply> {
    let plain = |a| Ok((a, ReplyAs::Plain));
    match cmd {
        Command::Version => plain(VmmAction::QueryVersion),
        Command::Help => Err(Reply::help()),
        Command::Halt => plain(VmmAction::Halt),
        Command::Reboot => plain(VmmAction::Reboot),
        Command::Cad => plain(VmmAction::CtrlAltDel),
        Command::Sysrq(key) => match key.filter(|k| i8042::sysrq_scancodes(*k).is_some()) {
            Some(k) => plain(VmmAction::SysRq(k)),
            None => Err(Reply::ok(SYSRQ_HELP)),
        },
        Command::Stop => Ok((VmmAction::Pause, ReplyAs::Stopped)),
        Command::Go => plain(VmmAction::Resume),
        Command::Config(d) if d.is_query() => query(&d).map(|a| (a, ReplyAs::Plain)),
        Command::Config(d) => configure(&d).map(|a| (a, ReplyAs::Plain)),
        Command::Remove(d) => remove(&d).map(|a| (a, ReplyAs::Plain)),
        Command::Log(_) => Err(needs_agent("log")),
        Command::Proc(_) => Err(needs_agent("proc")),
        Command::Stack(_) => Err(needs_agent("stack")),
    }
}

fn needs_agent(what: &str) -> Reply {
    Reply::error(format!(
        "kuml cannot do '{what}' from outside the guest: it needs an agent inside the guest, which kuml does not have yet"
    ))
}

fn line_index(d: &DeviceSpec) -> Result<u32, Reply> {
    d.id().parse::<u32>().map_err(|_| Reply::error(BAD_NUMBER))
}

fn ubd_unit(d: &DeviceSpec) -> Result<usize, Reply> {
    match ubd::spec::parse_unit(d.id()) {
        // parse_unit bounds the unit to the letters and numbers UML accepts.
        Ok((unit, _)) => Ok(unit as usize),
        Err(e) => Err(Reply::error(e.to_string())),
    }
}

/// The share `hostfs` (0) or `hostfs<N>` names.
fn share_index(d: &DeviceSpec) -> Result<u32, Reply> {
    let name = d.text.split_once('=').map_or(d.text.as_str(), |(n, _)| n);
    match hostfs::parse_share_name(name) {
        Some(Ok(index)) => Ok(index),
        Some(Err(e)) => Err(Reply::with_err(-libc::EINVAL, format!("{name}: {e}"))),
        None => Err(Reply::error(BAD_NUMBER)),
    }
}

fn query(d: &DeviceSpec) -> Result<VmmAction, Reply> {
    let id = match d.device {
        Device::Hostfs => DeviceId::Share(share_index(d)?),
        Device::Ubd => DeviceId::Disk(ubd_unit(d)?),
        Device::Con => DeviceId::Console(line_index(d)?),
        Device::Ssl => DeviceId::Serial(line_index(d)?),
        // UML's network drivers have no get_config routine.
        Device::Eth | Device::Vec => {
            return Err(Reply::error(mconsole::command::NO_GET_CONFIG));
        }
        Device::Mem => return Ok(VmmAction::QueryMemory),
    };
    Ok(VmmAction::QueryDevice(id))
}

fn configure(d: &DeviceSpec) -> Result<VmmAction, Reply> {
    match d.device {
        Device::Ubd => match ubd::parse_ubd(d.rest()) {
            Ok(ubd::UbdOption::Device(spec)) => Ok(VmmAction::AttachDisk(spec)),
            Ok(_) => Err(Reply::error(mconsole::command::BAD_CONFIG_OPTION)),
            Err(e) => Err(Reply::with_err(e.mconsole_err(), e.to_string())),
        },
        Device::Eth => match netdev::parse_eth_arg(&d.text) {
            Ok((index, spec)) => Ok(VmmAction::AttachNic { index, spec }),
            Err(e) => Err(Reply::error(e.to_string())),
        },
        Device::Con | Device::Ssl => {
            let index = line_index(d)?;
            let class = if d.device == Device::Con {
                LineClass::Console
            } else {
                LineClass::Serial
            };
            match chan::parse_line(d.value().unwrap_or_default()) {
                Ok(Some(channel)) => Ok(VmmAction::SetLine {
                    class,
                    index,
                    channel,
                }),
                Ok(None) => Err(Reply::with_err(
                    -libc::EINVAL,
                    "kuml cannot configure a line to none; remove it",
                )),
                Err(e) => Err(Reply::with_err(-libc::EINVAL, e.to_string())),
            }
        }
        Device::Vec => match netdev::parse_vec_arg(&d.text) {
            Ok((index, spec)) => Ok(VmmAction::AttachNic { index, spec }),
            Err(e) => Err(Reply::error(e.to_string())),
        },
        Device::Mem => Err(reply_for_error(&ControlError::MemoryFixed)),
        Device::Hostfs => {
            let index = share_index(d)?;
            match hostfs::parse_share(index, d.value().unwrap_or_default()) {
                Ok(spec) => Ok(VmmAction::AttachShare(spec)),
                Err(e) => Err(Reply::with_err(
                    -libc::EINVAL,
                    format!("{}: {e}", hostfs::share_name(index)),
                )),
            }
        }
    }
}

fn remove(d: &DeviceSpec) -> Result<VmmAction, Reply> {
    let id = match d.device {
        Device::Ubd => DeviceId::Disk(ubd_unit(d)?),
        Device::Eth | Device::Vec => DeviceId::Nic(line_index(d)?),
        Device::Con => DeviceId::Console(line_index(d)?),
        Device::Ssl => DeviceId::Serial(line_index(d)?),
        Device::Hostfs => DeviceId::Share(share_index(d)?),
        Device::Mem => {
            return Err(Reply::with_err(
                -libc::EBUSY,
                "Memory doesn't support the remove operation",
            ))
        }
    };
    Ok(VmmAction::Detach(id))
}

/// PURE: UML's reply for the result of an action.
pub fn reply_for(how: ReplyAs, result: &Result<VmmData, ControlError>) -> Reply {
    match result {
        Ok(data) => match (how, data) {
            (ReplyAs::Stopped, _) => Reply::stopped(),
            (_, VmmData::Empty) => Reply::ok(""),
            (_, VmmData::Disk(spec)) => Reply::ok(
                spec.as_ref()
                    .map(ubd::UbdSpec::config_string)
                    .unwrap_or_default(),
            ),
            (_, VmmData::Share(spec)) => Reply::ok(
                spec.as_ref()
                    .map(hostfs::ShareSpec::value)
                    .unwrap_or_default(),
            ),
            (_, VmmData::Line(desc)) => Reply::ok(desc.clone().unwrap_or_else(|| "none".into())),
            (_, VmmData::Memory(bytes)) => Reply::ok(bytes.to_string()),
            (_, VmmData::Version(v)) => Reply::ok(v.clone()),
        },
        Err(e) => reply_for_error(e),
    }
}

/// PURE: UML's text and error number where UML has one, else kuml's message with its causes.
pub fn reply_for_error(e: &ControlError) -> Reply {
    match e {
        ControlError::AlreadyConfigured(DeviceId::Disk(_) | DeviceId::Share(_)) => {
            let uml = ubd::SpecError::AlreadyConfigured;
            Reply::with_err(uml.mconsole_err(), uml.to_string())
        }
        ControlError::AlreadyConfigured(DeviceId::Nic(_)) => {
            Reply::with_err(-libc::EBUSY, "Device is already open")
        }
        ControlError::AlreadyConfigured(_) => {
            Reply::with_err(-libc::EINVAL, "Device is already open")
        }
        ControlError::NoSuchDevice(_) => Reply::no_device(),
        // UML removes a line by configuring it to none, which an open line refuses.
        ControlError::NotRemovable(DeviceId::Console(_)) => {
            Reply::with_err(-libc::EINVAL, "Device is already open")
        }
        ControlError::NotRemovable(_) | ControlError::Busy(_) => Reply::device_busy(),
        ControlError::Disk(..) => {
            // UML's one message for an image it cannot open; the cause goes to kuml's log.
            log::warn!("{}", crate::error_chain(e));
            Reply::with_err(-libc::ENOENT, "Couldn't determine size of device's file")
        }
        // The error number of the cause (a missing directory: -ENOENT), kuml's text.
        ControlError::Share(share) => Reply::with_err(-share_errno(share), crate::error_chain(e)),
        ControlError::ShareTag(..) => Reply::with_err(-libc::EEXIST, crate::error_chain(e)),
        ControlError::Line(..) | ControlError::Console(..) | ControlError::MemoryFixed => {
            Reply::with_err(-libc::EINVAL, crate::error_chain(e))
        }
        _ => Reply::error(crate::error_chain(e)),
    }
}

/// PURE: the error number that says why a share could not be set up.
fn share_errno(e: &ShareError) -> i32 {
    let io = |e: &std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    match e {
        ShareError::Daemon { source, .. } => match source {
            hostfs::DaemonError::NotFound => libc::ENOENT,
            hostfs::DaemonError::NotADir(_) => libc::ENOTDIR,
            hostfs::DaemonError::Dir(_, e)
            | hostfs::DaemonError::Socket(_, e)
            | hostfs::DaemonError::Spawn(_, e) => io(e),
        },
        ShareError::Device { .. } => libc::EIO,
    }
}

/// The mconsole socket on the event loop: each request is answered by the server itself,
/// here, or by the VMM through the control queue.
pub struct MconsoleFrontend {
    server: Arc<Mutex<Server>>,
    queue: Arc<ControlQueue>,
}

impl std::fmt::Debug for MconsoleFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MconsoleFrontend").finish_non_exhaustive()
    }
}

impl MconsoleFrontend {
    /// Serves `server`, sending actions to `queue`.
    pub fn new(server: Arc<Mutex<Server>>, queue: Arc<ControlQueue>) -> Self {
        MconsoleFrontend { server, queue }
    }

    /// The VM was rebuilt: it runs, whatever `stop` said to the old one.
    pub fn machine_restarted(&self) {
        locked(&self.server).set_stopped(false);
    }

    /// Sends what could not be sent yet.
    pub fn flush(&self) {
        locked(&self.server).flush();
    }

    fn submit(&self, client: ClientAddr, cmd: Command) {
        let (action, how) = match action_for(cmd) {
            Ok(a) => a,
            Err(reply) => {
                locked(&self.server).reply(&client, &reply);
                return;
            }
        };
        let server = self.server.clone();
        self.queue.push(
            action,
            Box::new(move |result| {
                let mut s = locked(&server);
                if how == ReplyAs::Stopped && result.is_err() {
                    // The pause failed: the VM runs, so `go` must not be refused.
                    s.set_stopped(false);
                }
                s.reply(&client, &reply_for(how, &result));
                s.flush();
            }),
        );
    }
}

impl MutEventSubscriber for MconsoleFrontend {
    fn init(&mut self, ops: &mut EventOps) {
        let fd = locked(&self.server).as_raw_fd();
        if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
            log::error!("cannot watch the mconsole socket: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        loop {
            let next = locked(&self.server).recv();
            match next {
                Ok(Some(inc)) => self.submit(inc.client, inc.command),
                Ok(None) => break,
                Err(e) => {
                    log::warn!("mconsole: {}", crate::error_chain(&e));
                    break;
                }
            }
        }
        locked(&self.server).flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mconsole::Parsed;

    fn cmd(text: &str) -> Command {
        match mconsole::command::parse(text.as_bytes()) {
            Parsed::Command(c) => c,
            Parsed::Reply(r) => panic!("{text}: answered by the parser: {r:?}"),
        }
    }

    fn act(text: &str) -> VmmAction {
        action_for(cmd(text)).unwrap().0
    }

    fn local(text: &str) -> Reply {
        action_for(cmd(text)).unwrap_err()
    }

    #[test]
    fn commands_become_typed_actions() {
        let spec = match ubd::parse_ubd("1=/tmp/x.img").unwrap() {
            ubd::UbdOption::Device(s) => s,
            _ => unreachable!(),
        };
        assert_eq!(act("config ubd1=/tmp/x.img"), VmmAction::AttachDisk(spec));
        assert!(matches!(
            act("config eth1=mcast"),
            VmmAction::AttachNic { index: 1, .. }
        ));
        assert!(matches!(
            act("config con2=pts"),
            VmmAction::SetLine {
                class: LineClass::Console,
                index: 2,
                ..
            }
        ));
        assert_eq!(act("remove ubdb"), VmmAction::Detach(DeviceId::Disk(1)));
        assert_eq!(act("remove eth0"), VmmAction::Detach(DeviceId::Nic(0)));
        // UML's vector devices are NICs too, in the same index space as ethN.
        match act("config vec3:transport=tap,ifname=kv3") {
            VmmAction::AttachNic { index: 3, spec } => {
                assert!(matches!(spec.transport, netdev::Transport::Vector(_)))
            }
            other => panic!("config vec3: {other:?}"),
        }
        assert_eq!(act("remove vec3"), VmmAction::Detach(DeviceId::Nic(3)));
        assert_eq!(act("remove ssl1"), VmmAction::Detach(DeviceId::Serial(1)));
        assert_eq!(
            act("config ubd3"),
            VmmAction::QueryDevice(DeviceId::Disk(3))
        );
        assert_eq!(act("config mem"), VmmAction::QueryMemory);
        assert_eq!(act("version"), VmmAction::QueryVersion);
        assert_eq!(act("sysrq h"), VmmAction::SysRq('h'));
        assert_eq!(
            action_for(cmd("stop")).unwrap(),
            (VmmAction::Pause, ReplyAs::Stopped)
        );
        assert_eq!(act("go"), VmmAction::Resume);
    }

    #[test]
    fn hostfs_shares_take_the_command_lines_syntax() {
        assert_eq!(
            act("config hostfs1=/srv/data,ro,tag=data"),
            VmmAction::AttachShare(hostfs::parse_share(1, "/srv/data,ro,tag=data").unwrap())
        );
        // The default export too (an empty directory is the host's `/`, as on the command
        // line).
        assert_eq!(
            act("config hostfs="),
            VmmAction::AttachShare(hostfs::ShareSpec::default_export())
        );
        assert_eq!(
            act("config hostfs15=rel/dir"),
            VmmAction::AttachShare(hostfs::parse_share(15, "rel/dir").unwrap())
        );
        assert_eq!(
            act("config hostfs3"),
            VmmAction::QueryDevice(DeviceId::Share(3))
        );
        assert_eq!(
            act("config hostfs"),
            VmmAction::QueryDevice(DeviceId::Share(0))
        );
        assert_eq!(act("remove hostfs2"), VmmAction::Detach(DeviceId::Share(2)));
        assert_eq!(act("remove hostfs"), VmmAction::Detach(DeviceId::Share(0)));

        // Refused before the VMM sees them, with the grammar's words.
        let r = local("config hostfs1=/x,rx");
        assert_eq!(r.err, -libc::EINVAL);
        assert_eq!(
            String::from_utf8_lossy(&r.text),
            "hostfs1: unknown flag 'rx' (ro, rw, tag=<tag> or append)"
        );
        let r = local("config hostfs1=");
        assert_eq!(
            (r.err, String::from_utf8_lossy(&r.text).into_owned()),
            (-libc::EINVAL, "hostfs1: no directory given".to_owned())
        );
        let r = local("config hostfs2=/x,tag=a b");
        assert_eq!(r.err, -libc::EINVAL);
        let r = local("remove hostfs16");
        assert_eq!(
            (r.err, String::from_utf8_lossy(&r.text).into_owned()),
            (
                -libc::EINVAL,
                "hostfs16: share number 16 out of range (hostfs1 to hostfs15)".to_owned()
            )
        );
        assert_eq!(local("remove hostfs0").err, -libc::EINVAL);
        assert_eq!(local("config hostfsx=/x").text, BAD_NUMBER.as_bytes());
        assert_eq!(local("remove hostfs1x").text, BAD_NUMBER.as_bytes());
    }

    #[test]
    fn hostfs_results_become_uml_replies() {
        let ok = |d| reply_for(ReplyAs::Plain, &Ok(d));
        let spec = hostfs::parse_share(1, "/srv/data,ro,tag=data").unwrap();
        assert_eq!(
            ok(VmmData::Share(Some(spec))),
            Reply::ok("/srv/data,ro,tag=data")
        );
        assert_eq!(ok(VmmData::Share(None)), Reply::ok(""));
        let err = |e| reply_for(ReplyAs::Plain, &Err(e));
        // As for a disk.
        assert_eq!(
            err(ControlError::AlreadyConfigured(DeviceId::Share(1))),
            Reply::with_err(-libc::EBUSY, "Device is already configured")
        );
        assert_eq!(
            err(ControlError::NoSuchDevice(DeviceId::Share(1))),
            Reply::no_device()
        );
        assert_eq!(
            err(ControlError::Busy(DeviceId::Share(1))),
            Reply::device_busy()
        );
        // A directory that does not exist: -ENOENT, and kuml's words for it.
        let missing = std::io::Error::from_raw_os_error(libc::ENOENT);
        let r = err(ControlError::Share(ShareError::Daemon {
            name: "hostfs1".into(),
            source: hostfs::DaemonError::Dir("/no/such".into(), missing),
        }));
        assert_eq!(r.err, -libc::ENOENT);
        assert!(
            String::from_utf8_lossy(&r.text).starts_with("hostfs1: cannot share /no/such: "),
            "{r:?}"
        );
        let r = err(ControlError::Share(ShareError::Daemon {
            name: "hostfs2".into(),
            source: hostfs::DaemonError::NotADir("/etc/passwd".into()),
        }));
        assert_eq!(r.err, -libc::ENOTDIR);
        let r = err(ControlError::Share(ShareError::Daemon {
            name: "hostfs2".into(),
            source: hostfs::DaemonError::NotFound,
        }));
        assert_eq!(r.err, -libc::ENOENT);
        assert!(String::from_utf8_lossy(&r.text).contains("virtiofsd not found"));
        let a = hostfs::parse_share(1, "/a,tag=data").unwrap();
        let b = hostfs::parse_share(2, "/b,tag=data").unwrap();
        let dup = hostfs::check_unique_tags([&a, &b]).unwrap_err();
        let r = err(ControlError::ShareTag(DeviceId::Share(2), dup));
        assert_eq!(r.err, -libc::EEXIST);
        assert_eq!(
            String::from_utf8_lossy(&r.text),
            "cannot add hostfs2: hostfs1 and hostfs2 both have the tag 'data'"
        );
        // The guest did not take it in time: the share stays, the reply says so.
        let r = err(ControlError::GuestTimeout {
            id: DeviceId::Share(1),
            removal: true,
        });
        assert!(
            String::from_utf8_lossy(&r.text).starts_with("the guest did not eject hostfs1"),
            "{r:?}"
        );
    }

    #[test]
    fn what_mconsole_answers_itself() {
        assert_eq!(local("help"), Reply::help());
        assert_eq!(local("sysrq"), Reply::ok(SYSRQ_HELP));
        assert_eq!(local("config eth1").text, b"No get_config routine defined");
        assert_eq!(local("config conx=pts").text, BAD_NUMBER.as_bytes());
        assert_eq!(local("config con1=none").err, -libc::EINVAL);
        assert_eq!(local("config mem=+64M").err, -libc::EINVAL);
        assert_eq!(local("remove mem").err, -libc::EBUSY);
        assert!(String::from_utf8_lossy(&local("proc uptime").text).contains("agent"));
        assert_ne!(local("config ubd1x=/a").err, 0);
    }

    #[test]
    fn results_become_uml_replies() {
        let ok = |d| reply_for(ReplyAs::Plain, &Ok(d));
        assert_eq!(ok(VmmData::Empty), Reply::ok(""));
        assert_eq!(ok(VmmData::Memory(128 << 20)), Reply::ok("134217728"));
        assert_eq!(ok(VmmData::Line(None)), Reply::ok("none"));
        assert_eq!(ok(VmmData::Disk(None)), Reply::ok(""));
        assert_eq!(
            reply_for(ReplyAs::Stopped, &Ok(VmmData::Empty)),
            Reply::stopped()
        );
        let err = |e| reply_for(ReplyAs::Plain, &Err(e));
        assert_eq!(
            err(ControlError::AlreadyConfigured(DeviceId::Disk(1))),
            Reply::with_err(-libc::EBUSY, "Device is already configured")
        );
        assert_eq!(
            err(ControlError::NoSuchDevice(DeviceId::Nic(1))),
            Reply::no_device()
        );
        assert_eq!(
            err(ControlError::NotRemovable(DeviceId::Serial(0))),
            Reply::device_busy()
        );
        assert_eq!(
            err(ControlError::NotRemovable(DeviceId::Console(0))),
            Reply::with_err(-libc::EINVAL, "Device is already open")
        );
        let r = err(ControlError::Interrupted {
            id: DeviceId::Disk(1),
            removal: false,
            reason: crate::control::StopReason::Restart,
        });
        assert_eq!(r.err, 1);
        assert_eq!(
            String::from_utf8_lossy(&r.text),
            "the VM restarted before the guest started ubd1; it stays configured"
        );
    }
}
