//! mconsole requests as VMM actions: the only seam between the management console and the
//! machine.
//!
//! [`VmmAction::from_command`] turns a parsed [`mconsole::Command`] into what the VMM does;
//! [`Control::handle`] does it against the running [`Machine`] and answers. Actions that
//! need the guest (a hot-plugged device is answered once the guest driver has started it, a
//! removal once the guest has ejected the slot) become [`Pending`] replies that
//! [`Control::poll`] completes, or fails after [`HOTPLUG_TIMEOUT`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::chan::{self, ChanContext, Channel, LineClass};
use devices::legacy::ged::GED_PCI_HOTPLUG;
use devices::legacy::i8042;
use devices::virtio::console::ConsoleError;
use event_manager::{EventManager, SubscriberId, SubscriberOps};
use mconsole::{ClientAddr, Command, Device, DeviceSpec, Reply};

use crate::builder::{open_disk, open_nic, Machine, Subscriber};
use crate::config::Config;
use crate::device_manager::{locked, PluggedDevice};
use crate::exit::VmExit;

/// How long the guest has to enumerate a new device or eject an old one.
pub const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(180);

/// UML's `sysrq` help text (its reply to a missing or unknown letter).
const SYSRQ_HELP: &str = "sysrq: HELP : loglevel(0-9) reboot(b) crash(c) terminate-all-tasks(e) memory-full-oom-kill(f) kill-all-tasks(i) thaw-filesystems(j) show-memory-usage(m) nice-all-RT-tasks(n) poweroff(o) show-registers(p) show-all-timers(q) sync(s) show-task-states(t) unmount(u) show-blocked-tasks(w) ";

/// What an mconsole command asks of the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmAction {
    /// Report the guest kernel's version.
    Version,
    /// Print the help text.
    Help,
    /// Stop the VM now.
    Halt,
    /// Restart the VM.
    Reboot,
    /// Send Ctrl-Alt-Del to the guest keyboard.
    CtrlAltDel,
    /// Send Alt-SysRq-<key> to the guest keyboard.
    Sysrq(Option<char>),
    /// Pause every vCPU.
    Pause,
    /// Resume every vCPU.
    Resume,
    /// Query a device's configuration.
    QueryDevice(DeviceSpec),
    /// Add or change a device.
    ConfigureDevice(DeviceSpec),
    /// Remove a device.
    RemoveDevice(DeviceSpec),
    /// A request that needs an agent inside the guest (`log`, `proc`, `stack`).
    NeedsGuestAgent(&'static str),
}

impl VmmAction {
    /// The action for a command.
    pub fn from_command(cmd: Command) -> VmmAction {
        match cmd {
            Command::Version => VmmAction::Version,
            Command::Help => VmmAction::Help,
            Command::Halt => VmmAction::Halt,
            Command::Reboot => VmmAction::Reboot,
            Command::Cad => VmmAction::CtrlAltDel,
            Command::Sysrq(c) => VmmAction::Sysrq(c),
            Command::Stop => VmmAction::Pause,
            Command::Go => VmmAction::Resume,
            Command::Config(d) if d.is_query() => VmmAction::QueryDevice(d),
            Command::Config(d) => VmmAction::ConfigureDevice(d),
            Command::Remove(d) => VmmAction::RemoveDevice(d),
            Command::Log(_) => VmmAction::NeedsGuestAgent("log"),
            Command::Proc(_) => VmmAction::NeedsGuestAgent("proc"),
            Command::Stack(_) => VmmAction::NeedsGuestAgent("stack"),
        }
    }
}

/// What a device in a PCI slot is, for removal and queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotUse {
    Disk(usize),
    Nic(u32),
}

/// A reply that waits for the guest.
#[derive(Debug)]
struct Pending {
    client: ClientAddr,
    slot: u8,
    what: PendingKind,
    deadline: Instant,
}

#[derive(Debug)]
enum PendingKind {
    /// Waiting for the guest driver to start the new device.
    Added,
    /// Waiting for the guest to eject the slot.
    Removed,
}

/// The outcome of an action.
#[derive(Debug)]
pub enum Outcome {
    /// Answer now.
    Reply(Vec<Reply>),
    /// Answer later (hot-plug).
    Later,
    /// Answer, then stop the VM this way.
    Exit(Reply, VmExit),
}

/// Control state that outlives single requests.
pub struct Control {
    cfg: Config,
    version: String,
    pending: Vec<Pending>,
    /// Subscriber ids of hot-plugged and boot devices by slot, and what they are.
    slots: Vec<(u8, SlotUse, Option<SubscriberId>)>,
    ctx: ChanContext,
    umid: String,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Control for a machine built from `cfg`; `version` is the guest kernel's uname text.
    pub fn new(cfg: &Config, machine: &Machine, umid: &str, version: String) -> Control {
        let mut slots = Vec::new();
        for (unit, _, p) in &machine.disks {
            slots.push((p.slot, SlotUse::Disk(*unit), None));
        }
        for (index, _, p) in &machine.nics {
            slots.push((p.slot, SlotUse::Nic(*index), None));
        }
        // Boot disks and NICs can be removed (the guest may eject them); nothing else can.
        for (slot, _, _) in &slots {
            locked(&machine.hotplug).set_removable(*slot, true);
        }
        Control {
            cfg: cfg.clone(),
            version,
            pending: Vec::new(),
            slots,
            ctx: ChanContext {
                umid: Some(umid.to_owned()),
                ..ChanContext::from_env()
            },
            umid: umid.to_owned(),
        }
    }

    /// Performs `cmd` for `client`.
    pub fn handle(
        &mut self,
        machine: &mut Machine,
        em: &mut EventManager<Subscriber>,
        client: &ClientAddr,
        cmd: Command,
    ) -> Outcome {
        let now = |r: Reply| Outcome::Reply(vec![r]);
        match VmmAction::from_command(cmd) {
            VmmAction::Version => now(Reply::ok(self.version.clone())),
            VmmAction::Help => now(Reply::help()),
            VmmAction::Halt => Outcome::Exit(Reply::ok(""), VmExit::Halt),
            VmmAction::Reboot => Outcome::Exit(Reply::ok(""), VmExit::Reboot),
            VmmAction::CtrlAltDel => {
                locked(&machine.i8042).inject_scancodes(&i8042::CTRL_ALT_DEL);
                now(Reply::ok(""))
            }
            VmmAction::Sysrq(c) => match c.and_then(i8042::sysrq_scancodes) {
                Some(codes) => {
                    locked(&machine.i8042).inject_scancodes(&codes);
                    now(Reply::ok(""))
                }
                None => now(Reply::ok(SYSRQ_HELP)),
            },
            VmmAction::Pause => {
                machine.pause();
                now(Reply::stopped())
            }
            VmmAction::Resume => {
                machine.resume();
                now(Reply::ok(""))
            }
            VmmAction::QueryDevice(d) => now(self.query(machine, &d)),
            VmmAction::ConfigureDevice(d) => self.configure(machine, em, client, &d),
            VmmAction::RemoveDevice(d) => self.remove(machine, em, client, &d),
            VmmAction::NeedsGuestAgent(what) => now(Reply::error(format!(
                "kuml cannot do '{what}' from outside the guest: it needs an agent inside the guest, which kuml does not have yet"
            ))),
        }
    }

    fn query(&self, machine: &Machine, d: &DeviceSpec) -> Reply {
        let index = d.id().parse::<u32>();
        match d.device {
            Device::Ubd => match ubd::spec::parse_unit(d.id()) {
                Ok((unit, _)) => Reply::ok(
                    self.cfg
                        .ubd
                        .get(&(unit as usize))
                        .map(|s| s.config_string())
                        .unwrap_or_default(),
                ),
                Err(e) => Reply::error(e.to_string()),
            },
            Device::Con => match index {
                Ok(n) => Reply::ok(
                    machine
                        .consoles
                        .port_description(n)
                        .unwrap_or_else(|| "none".into()),
                ),
                Err(_) => Reply::error("Couldn't parse device number"),
            },
            Device::Ssl => match index {
                Ok(n) => Reply::ok(
                    machine
                        .serials
                        .iter()
                        .find(|(i, _)| *i == n)
                        .map(|(_, s)| locked(s).channel().describe())
                        .unwrap_or_else(|| "none".into()),
                ),
                Err(_) => Reply::error("Couldn't parse device number"),
            },
            Device::Eth | Device::Vec => Reply::error("No get_config routine defined"),
            Device::Mem => Reply::ok(self.cfg.mem_size.to_string()),
        }
    }

    fn configure(
        &mut self,
        machine: &mut Machine,
        em: &mut EventManager<Subscriber>,
        client: &ClientAddr,
        d: &DeviceSpec,
    ) -> Outcome {
        let now = |r: Reply| Outcome::Reply(vec![r]);
        match d.device {
            Device::Ubd => {
                let configured = |u: usize| self.cfg.ubd.contains_key(&u);
                let spec = match ubd::parse_ubd_with(d.rest(), configured) {
                    Ok(ubd::UbdOption::Device(s)) => s,
                    Ok(_) => return now(Reply::error("Bad configuration option")),
                    Err(e) => return now(Reply::with_err(e.mconsole_err(), e.to_string())),
                };
                let block = match open_disk(&spec, self.cfg.ubd_sync) {
                    Ok(b) => Arc::new(Mutex::new(b)),
                    Err(e) => {
                        log::warn!("config {}: {}", d.text, crate::builder::error_chain(&e));
                        return now(Reply::with_err(
                            -libc::ENOENT,
                            "Couldn't determine size of device's file",
                        ));
                    }
                };
                let unit = spec.unit;
                match self.plug(machine, em, block.clone(), SlotUse::Disk(unit), client) {
                    Ok(p) => {
                        machine.disks.push((unit, block, p));
                        self.cfg.ubd.insert(unit, spec);
                        Outcome::Later
                    }
                    Err(r) => now(r),
                }
            }
            Device::Eth => {
                let (index, spec) = match netdev::parse_eth_arg(&d.text) {
                    Ok(v) => v,
                    Err(e) => return now(Reply::error(e.to_string())),
                };
                if self.cfg.eth.contains_key(&index) {
                    return now(self.reattach_nic(machine, index, spec));
                }
                let net = match open_nic(index, &spec, &self.umid) {
                    Ok(n) => Arc::new(Mutex::new(n)),
                    Err(e) => return now(Reply::error(crate::builder::error_chain(&e))),
                };
                match self.plug(machine, em, net.clone(), SlotUse::Nic(index), client) {
                    Ok(p) => {
                        machine.nics.push((index, net, p));
                        self.cfg.eth.insert(index, spec);
                        Outcome::Later
                    }
                    Err(r) => now(r),
                }
            }
            Device::Con | Device::Ssl => now(self.configure_line(machine, d)),
            Device::Vec => now(Reply::error(
                "kuml supports vec devices only on the command line",
            )),
            Device::Mem => now(Reply::with_err(
                -libc::EINVAL,
                "kuml cannot change the memory size of a running guest",
            )),
        }
    }

    /// `config ethN=…` for a NIC that exists: refused while its backend works; a NIC whose
    /// backend failed (its tap was deleted, its switch went away) gets the new one, keeping
    /// its MAC, and its link comes back.
    fn reattach_nic(&mut self, machine: &Machine, index: u32, spec: netdev::NetSpec) -> Reply {
        let Some((_, net, _)) = machine.nics.iter().find(|n| n.0 == index) else {
            return Reply::with_err(-libc::EBUSY, "Device is already open");
        };
        let mut net = locked(net);
        if !net.backend_failed() {
            return Reply::with_err(-libc::EBUSY, "Device is already open");
        }
        match netdev::open_backend(&spec, net.mac()) {
            Ok(b) => {
                net.replace_backend(b);
                self.cfg.eth.insert(index, spec);
                Reply::ok("")
            }
            Err(e) => Reply::error(crate::builder::error_chain(&e)),
        }
    }

    fn configure_line(&mut self, machine: &mut Machine, d: &DeviceSpec) -> Reply {
        let Ok(n) = d.id().parse::<u32>() else {
            return Reply::error("Couldn't parse device number");
        };
        let value = d.value().unwrap_or_default();
        let spec = match chan::parse_line(value) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Reply::with_err(
                    -libc::EINVAL,
                    "kuml cannot configure a line to none; remove it",
                )
            }
            Err(e) => return Reply::with_err(-libc::EINVAL, e.to_string()),
        };
        let class = if d.device == Device::Con {
            LineClass::Console
        } else {
            LineClass::Serial
        };
        // Refuse before setting the channel up: a port: line would bind its port for nothing.
        if class == LineClass::Console && machine.consoles.port_ids().contains(&n) {
            return Reply::with_err(-libc::EINVAL, "Device is already open");
        }
        // A console's pts is allocated when the guest opens the new port; a serial line's now.
        let opened = if class == LineClass::Console {
            Channel::prepare(&spec, class, n, &self.ctx)
        } else {
            Channel::open_in(&spec, class, n, &self.ctx)
        };
        let channel = match opened {
            Ok(c) => c,
            Err(e) => return Reply::with_err(-libc::EINVAL, crate::builder::error_chain(&e)),
        };
        if class == LineClass::Console {
            match machine.consoles.add_port(n, channel) {
                Ok(()) => Reply::ok(""),
                Err(e) => Reply::with_err(-libc::EINVAL, e.to_string()),
            }
        } else {
            match machine.serials.iter().find(|(i, _)| *i == n) {
                Some((_, s)) => {
                    locked(s).set_channel(channel);
                    Reply::ok("")
                }
                None => Reply::no_device(),
            }
        }
    }

    /// Plugs a virtio device and tells the guest; the reply waits for its driver.
    fn plug(
        &mut self,
        machine: &mut Machine,
        em: &mut EventManager<Subscriber>,
        device: Arc<Mutex<dyn VirtioSub>>,
        what: SlotUse,
        client: &ClientAddr,
    ) -> Result<PluggedDevice, Reply> {
        let as_virtio: Arc<Mutex<dyn devices::virtio::VirtioDevice>> = device.clone();
        let plugged = machine
            .devices
            .add_virtio(as_virtio, None)
            .map_err(|e| Reply::error(crate::builder::error_chain(&e)))?;
        let sub: Subscriber = device;
        let id = em.add_subscriber(sub);
        locked(&machine.hotplug).announce_add(plugged.slot);
        if let Err(e) = locked(&machine.ged).notify(GED_PCI_HOTPLUG) {
            log::warn!("cannot signal the hot-plug: {e}");
        }
        self.pending.push(Pending {
            client: client.clone(),
            slot: plugged.slot,
            what: PendingKind::Added,
            deadline: Instant::now() + HOTPLUG_TIMEOUT,
        });
        self.slots.push((plugged.slot, what, Some(id)));
        Ok(plugged)
    }

    /// Whether replies wait for the guest (the loop then polls more often).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records the event-loop id of a boot device's subscriber.
    pub fn set_subscriber(&mut self, slot: u8, id: SubscriberId) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.0 == slot) {
            s.2 = Some(id);
        }
    }

    /// Completes what waits for the guest: ejected slots are released and their removals
    /// answered; started devices answer their `config`; late ones fail.
    pub fn poll(
        &mut self,
        machine: &mut Machine,
        em: &mut EventManager<Subscriber>,
        answer: &mut dyn FnMut(&ClientAddr, Reply),
    ) {
        for slot in machine.ejects.take() {
            self.release(machine, em, slot);
            let mut i = 0;
            while i < self.pending.len() {
                if self.pending[i].slot == slot {
                    let p = self.pending.remove(i);
                    answer(
                        &p.client,
                        match p.what {
                            PendingKind::Removed => Reply::ok(""),
                            PendingKind::Added => Reply::error("the guest ejected the new device"),
                        },
                    );
                } else {
                    i += 1;
                }
            }
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let done = match p.what {
                PendingKind::Added => machine
                    .devices
                    .transport(p.slot)
                    .is_some_and(|t| locked(&t).is_activated()),
                PendingKind::Removed => false,
            };
            if done {
                let p = self.pending.remove(i);
                answer(&p.client, Reply::ok(""));
            } else if now >= p.deadline {
                let p = self.pending.remove(i);
                let what = match p.what {
                    PendingKind::Added => "start the new device",
                    PendingKind::Removed => "eject the device",
                };
                answer(
                    &p.client,
                    Reply::error(format!(
                        "the guest did not {what} in PCI slot {} within {} s",
                        p.slot,
                        HOTPLUG_TIMEOUT.as_secs()
                    )),
                );
            } else {
                i += 1;
            }
        }
    }

    /// Unplugs an ejected slot and lets go of its file or backend.
    fn release(&mut self, machine: &mut Machine, em: &mut EventManager<Subscriber>, slot: u8) {
        let Some(pos) = self.slots.iter().position(|s| s.0 == slot) else {
            log::warn!("the guest ejected PCI slot {slot}, which holds no removable device");
            return;
        };
        let (_, what, id) = self.slots.remove(pos);
        if let Some(id) = id {
            if let Err(e) = em.remove_subscriber(id) {
                log::warn!("slot {slot}: cannot stop watching the device: {e:?}");
            }
        }
        if let Err(e) = machine.devices.remove_virtio(slot) {
            log::warn!("slot {slot}: {}", crate::builder::error_chain(&e));
        }
        match what {
            SlotUse::Disk(unit) => {
                if let Some(i) = machine.disks.iter().position(|d| d.0 == unit) {
                    let (_, block, _) = machine.disks.remove(i);
                    drop(locked(&block).release_disk());
                }
                self.cfg.ubd.remove(&unit);
            }
            SlotUse::Nic(index) => {
                if let Some(i) = machine.nics.iter().position(|n| n.0 == index) {
                    let (_, net, _) = machine.nics.remove(i);
                    locked(&net).close();
                }
                self.cfg.eth.remove(&index);
            }
        }
    }

    fn remove(
        &mut self,
        machine: &mut Machine,
        _em: &mut EventManager<Subscriber>,
        client: &ClientAddr,
        d: &DeviceSpec,
    ) -> Outcome {
        let now = |r: Reply| Outcome::Reply(vec![r]);
        let target = match d.device {
            Device::Ubd => match ubd::spec::parse_unit(d.id()) {
                Ok((unit, _)) => SlotUse::Disk(unit as usize),
                Err(e) => return now(Reply::error(e.to_string())),
            },
            Device::Eth => match d.id().parse::<u32>() {
                Ok(n) => SlotUse::Nic(n),
                Err(_) => return now(Reply::error("Couldn't parse device number")),
            },
            Device::Con => {
                let Ok(n) = d.id().parse::<u32>() else {
                    return now(Reply::error("Couldn't parse device number"));
                };
                return now(match machine.consoles.remove_port(n) {
                    Ok(()) => Reply::ok(""),
                    // UML removes a line by configuring it to none, which an open line refuses.
                    Err(ConsoleError::Fixed) => {
                        Reply::with_err(-libc::EINVAL, "Device is already open")
                    }
                    Err(_) => Reply::no_device(),
                });
            }
            Device::Ssl => return now(Reply::with_err(-libc::EBUSY, "Device is currently open")),
            Device::Mem => {
                return now(Reply::with_err(
                    -libc::EBUSY,
                    "Memory doesn't support the remove operation",
                ))
            }
            Device::Vec => return now(Reply::no_device()),
        };
        let Some(slot) = self
            .slots
            .iter()
            .find(|(_, u, _)| *u == target)
            .map(|s| s.0)
        else {
            return now(Reply::no_device());
        };
        if self.pending.iter().any(|p| p.slot == slot) {
            return now(Reply::device_busy());
        }
        locked(&machine.hotplug).request_removal(slot);
        if let Err(e) = locked(&machine.ged).notify(GED_PCI_HOTPLUG) {
            log::warn!("cannot signal the removal: {e}");
        }
        self.pending.push(Pending {
            client: client.clone(),
            slot,
            what: PendingKind::Removed,
            deadline: Instant::now() + HOTPLUG_TIMEOUT,
        });
        Outcome::Later
    }
}

/// A virtio device that is also an event-loop subscriber.
pub trait VirtioSub:
    devices::virtio::VirtioDevice + event_manager::MutEventSubscriber + Send
{
}
impl<T: devices::virtio::VirtioDevice + event_manager::MutEventSubscriber + Send> VirtioSub for T {}
