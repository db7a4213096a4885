//! The virtio-console device: configuration space, features, ports, activation and reset.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use log::warn;
use virtio_queue::QueueT;

use super::control::HostMsg;
use crate::chan::{ChanContext, ChanError, Channel, ChannelSpec, LineClass};
use crate::virtio::{
    types, ActivateError, ActiveQueue, GuestMemory, InterruptKind, Rings, VirtioDevice,
    VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use crate::warn::WarnBudget;
use crate::watch::Watch;

/// Feature bit: the console size is given to the guest (port 0 of a single-port device in the
/// configuration space, with a configuration interrupt; the ports of a multiport device with
/// RESIZE control messages). Linux applies either only when it acked this bit.
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;
/// Feature bit: several ports and the control queues.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;
/// Feature bit: the guest may write characters to `emerg_wr` before the queues work.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u32 = 2;

/// The size of every queue.
pub const QUEUE_SIZE: u16 = 256;
/// Ports kuml offers by default: `con0` to `con15`, UML's 16 consoles (`MAX_TTYS`). Every port
/// costs the guest two queues at probe time, so more ports slow the boot down.
pub const DEFAULT_MAX_PORTS: u32 = 16;
/// The most ports a device can have (event data keeps port ids in 16 bits).
pub const MAX_PORTS_LIMIT: u32 = 1 << 15;
/// Host input kept for a port whose guest side is not reading; the channel is not read
/// while this is full.
pub const INPUT_BUFFER_MAX: usize = 64 << 10;
/// Control messages kept while the guest posts no control buffers.
pub(super) const CONTROL_PENDING_MAX: usize = 4096;

/// Configuration space layout (virtio 1.2, 5.3.4).
const CONFIG_LEN: usize = 12;
const CONFIG_EMERG_WR: u64 = 8;

/// Why a port operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The port number is not below the device's `max_nr_ports`.
    #[error("port {id} is out of range (the device has {max} ports)")]
    OutOfRange {
        /// The port asked for.
        id: u32,
        /// The device's port count.
        max: u32,
    },
    /// The port exists already.
    #[error("port {0} already exists")]
    Exists(u32),
    /// The port does not exist.
    #[error("port {0} does not exist")]
    NoSuchPort(u32),
    /// `max_nr_ports` is 0 or too large.
    #[error("a console device needs 1 to {MAX_PORTS_LIMIT} ports, not {0}")]
    BadMaxPorts(u32),
    /// `con0` is the guest's console device; it stays for the VM's lifetime.
    #[error("con0 is the guest's console and cannot be removed")]
    Fixed,
    /// The port's channel could not be opened.
    #[error("cannot open the channel of console {id}")]
    Channel {
        /// The port.
        id: u32,
        /// The cause.
        #[source]
        source: ChanError,
    },
    /// The device's wake-up eventfd could not be created.
    #[error("cannot create the console's eventfd")]
    EventFd(#[source] std::io::Error),
}

/// One port: a UML console `conN` is port N.
#[derive(Debug)]
pub(super) struct Port {
    pub(super) name: String,
    pub(super) console: bool,
    pub(super) channel: Channel,
    /// The guest sent PORT_READY for it.
    pub(super) ready: bool,
    /// A guest program has it open (PORT_OPEN 1): input may be delivered.
    pub(super) guest_open: bool,
    /// Host input not yet given to the guest.
    pub(super) input: VecDeque<u8>,
    /// The host side's window size `(cols, rows)`, once known (a terminal channel, or
    /// [`Console::resize`]).
    pub(super) winsize: Option<(u16, u16)>,
    /// The size the guest was last told since its driver started the port.
    pub(super) told: Option<(u16, u16)>,
}

/// What exists once the driver set DRIVER_OK: the queues by index (a queue the driver did not
/// enable is `None`).
pub(super) type Active = Rings<Vec<Option<ActiveQueue>>>;

/// A virtio-console device: either multiport (UML's consoles as ports) or a single port
/// without control queues ([`Console::single`], for `con0`).
///
/// Port N carries `conN`; every port is a console port (an hvc tty in the guest) named
/// `conN` (`/sys/class/virtio-ports/vport*pN/name`). The guest numbers hvc ttys in the order
/// console ports come up, so `/dev/hvcN` is `conN` when the ports are `con0..conK` without
/// gaps and none was removed at run time.
///
/// Share it as `Arc<Mutex<Console>>` between the transport (as a [`VirtioDevice`]) and the
/// event loop (as an event-manager `MutEventSubscriber`).
#[derive(Debug)]
pub struct Console {
    /// Offers VIRTIO_CONSOLE_F_MULTIPORT (control queues, ports added at run time). Without
    /// it the device is one console port that exists as soon as the driver probes it.
    pub(super) multiport: bool,
    pub(super) max_ports: u32,
    pub(super) queue_sizes: Vec<u16>,
    pub(super) acked_features: u64,
    pub(super) cols: u16,
    pub(super) rows: u16,
    pub(super) ports: BTreeMap<u32, Port>,
    /// What the event loop watches; woken on activation, reset, port changes, and when a
    /// round hit its budget.
    pub(super) watch: Watch,
    pub(super) active: Option<Active>,
    /// The driver sent DEVICE_READY.
    pub(super) driver_ready: bool,
    pub(super) control_pending: VecDeque<Vec<u8>>,
    /// Queues whose round ran out of budget, served again on the next wake-up.
    pub(super) resume: Vec<usize>,
    /// Log lines left for what the guest gets wrong (bad chains, messages for ports that do
    /// not exist).
    pub(super) guest_warnings: WarnBudget,
}

impl Console {
    /// A console device with room for `max_ports` ports (`con0` to `con<max_ports - 1>`;
    /// [`DEFAULT_MAX_PORTS`] suits kuml). It has 2 × (max_ports + 1) queues.
    pub fn new(max_ports: u32) -> Result<Self, ConsoleError> {
        if max_ports == 0 || max_ports > MAX_PORTS_LIMIT {
            return Err(ConsoleError::BadMaxPorts(max_ports));
        }
        let nq = 2 * (max_ports as usize + 1);
        Ok(Self {
            multiport: true,
            max_ports,
            queue_sizes: vec![QUEUE_SIZE; nq],
            acked_features: 0,
            cols: 0,
            rows: 0,
            ports: BTreeMap::new(),
            watch: Watch::new("console").map_err(ConsoleError::EventFd)?,
            active: None,
            driver_ready: false,
            control_pending: VecDeque::new(),
            resume: Vec::new(),
            guest_warnings: WarnBudget::new("console: guest mistakes"),
        })
    }

    /// A console device without multiport: one port (port 0), two queues, no control
    /// messages. Linux makes its port an hvc console while it probes the device, so the tty
    /// exists before `kernel_init` opens `/dev/console`; a multiport port only appears after
    /// a control-message round trip through the VMM, which can lose that race.
    pub fn single() -> Result<Self, ConsoleError> {
        let mut c = Self::new(1)?;
        c.multiport = false;
        c.queue_sizes.truncate(2);
        Ok(c)
    }

    /// True for a multiport device, false for a [`Console::single`] one.
    pub fn is_multiport(&self) -> bool {
        self.multiport
    }

    /// Adds port `id` (UML's `con<id>`) carried by `channel`: at boot, or at run time (the
    /// guest is told with DEVICE_ADD and creates the hvc tty).
    pub fn add_port(&mut self, id: u32, channel: Channel) -> Result<(), ConsoleError> {
        if id >= self.max_ports {
            return Err(ConsoleError::OutOfRange {
                id,
                max: self.max_ports,
            });
        }
        if self.ports.contains_key(&id) {
            return Err(ConsoleError::Exists(id));
        }
        self.ports.insert(
            id,
            Port {
                name: format!("con{id}"),
                console: true,
                channel,
                ready: false,
                guest_open: false,
                input: VecDeque::new(),
                winsize: None,
                told: None,
            },
        );
        if self.driver_ready {
            self.send_control(HostMsg::DeviceAdd(id));
        }
        if !self.multiport && self.active.is_some() {
            self.open_single_port();
        }
        self.kick();
        Ok(())
    }

    // A single-port device's port is the guest's as soon as the driver runs it: there is no
    // PORT_READY or PORT_OPEN. Its channel opens now (a pts is allocated and announced), so
    // that the first output the guest sends, the kernel's replay of its log, is not lost.
    fn open_single_port(&mut self) {
        let Some(p) = self.ports.get_mut(&0) else {
            return;
        };
        if p.guest_open {
            return;
        }
        p.ready = true;
        p.guest_open = true;
        if let Err(e) = p.channel.set_guest_open(true) {
            warn!("console 0: {}", crate::error_chain(&e));
        }
        self.refresh_size(0);
    }

    /// Removes port `id` (the guest is told with DEVICE_REMOVE); its channel is closed once
    /// the event loop has let go of it.
    pub fn remove_port(&mut self, id: u32) -> Result<(), ConsoleError> {
        let port = self.ports.remove(&id).ok_or(ConsoleError::NoSuchPort(id))?;
        if self.driver_ready {
            self.send_control(HostMsg::DeviceRemove(id));
        }
        // Its descriptors stay open until the event loop, woken now, stopped watching them.
        drop(port);
        self.kick();
        Ok(())
    }

    /// The ports, in order.
    pub fn port_ids(&self) -> Vec<u32> {
        self.ports.keys().copied().collect()
    }

    /// The live description of port `id`'s channel (mconsole `config conN`), e.g.
    /// `fd:0,fd:1` or `pts:/dev/pts/3`.
    pub fn port_description(&self, id: u32) -> Option<String> {
        self.ports.get(&id).map(|p| p.channel.describe())
    }

    /// True when a guest program has port `id` open (a console port is open as soon as the
    /// guest made it an hvc tty).
    pub fn is_guest_open(&self, id: u32) -> bool {
        self.ports.get(&id).is_some_and(|p| p.guest_open)
    }

    /// Sets the size of console port `id`'s host side (for channels that are not terminals,
    /// whose size kuml cannot read); the guest is told as soon as its driver can take it.
    pub fn resize(&mut self, id: u32, cols: u16, rows: u16) -> Result<(), ConsoleError> {
        let p = self
            .ports
            .get_mut(&id)
            .ok_or(ConsoleError::NoSuchPort(id))?;
        p.winsize = Some((cols, rows));
        self.tell_size(id);
        Ok(())
    }

    /// Reads the host terminal size of port `id`'s channel (if it is a terminal) and tells
    /// the guest when it changed. Called when the driver starts the port, on host input, and
    /// for every port on SIGWINCH ([`ConsoleSet::refresh_sizes`]).
    pub fn refresh_size(&mut self, id: u32) {
        let Some(p) = self.ports.get_mut(&id) else {
            return;
        };
        if let Some(ws) = p.channel.window_size() {
            p.winsize = Some(ws);
        }
        self.tell_size(id);
    }

    /// [`Console::refresh_size`] for every port.
    pub fn refresh_sizes(&mut self) {
        let ids: Vec<u32> = self.ports.keys().copied().collect();
        for id in ids {
            self.refresh_size(id);
        }
    }

    // Tells the guest port `id`'s host size if it differs from what the guest has and the
    // driver can take it: a single-port device through its configuration space and a
    // configuration interrupt, a multiport device with RESIZE once the port is a console.
    fn tell_size(&mut self, id: u32) {
        if self.acked_features & (1 << VIRTIO_CONSOLE_F_SIZE) == 0 {
            return;
        }
        let multiport = self.multiport;
        let driver_ready = self.driver_ready;
        let active = self.active.is_some();
        let Some(p) = self.ports.get_mut(&id) else {
            return;
        };
        let Some((cols, rows)) = p.winsize.filter(|ws| p.told != Some(*ws)) else {
            return;
        };
        if !p.console || !p.ready {
            return;
        }
        if multiport {
            if !driver_ready {
                return;
            }
            p.told = Some((cols, rows));
            self.send_control(HostMsg::Resize { id, cols, rows });
        } else if id == 0 && active {
            p.told = Some((cols, rows));
            self.cols = cols;
            self.rows = rows;
            if let Some(a) = self.active.as_ref() {
                if let Err(e) = a.interrupt.trigger(InterruptKind::Config) {
                    warn!("console 0: cannot tell the guest its new size: {e}");
                }
            }
        }
    }

    /// The number of queues: port 0 rx/tx, then (multiport only) control rx/tx and rx/tx for
    /// ports 1 and up.
    pub fn queue_count(&self) -> usize {
        self.queue_sizes.len()
    }

    // Wakes the event loop so that it updates its watch list.
    pub(super) fn kick(&self) {
        self.watch.wake();
    }

    /// Queues a control message for the guest and sends what the guest has buffers for.
    pub(super) fn send_control(&mut self, msg: HostMsg) {
        if self.control_pending.len() >= CONTROL_PENDING_MAX {
            warn!("console: too many control messages pending, dropping {msg:?}");
            return;
        }
        self.control_pending.push_back(msg.encode());
        self.flush_control();
    }
}

/// UML's consoles as two virtio devices: `con0` on a [`Console::single`] device, so that the
/// guest's `hvc0` and `/dev/console` exist from the driver's probe on, and `con1` and up as
/// ports of a multiport device, so that consoles can come and go at run time. Port ids are
/// UML's console numbers on both (the multiport device never has a port 0).
#[derive(Debug, Clone)]
pub struct ConsoleSet {
    first: Arc<Mutex<Console>>,
    rest: Arc<Mutex<Console>>,
}

impl ConsoleSet {
    /// An empty set whose multiport device has room for `con1` to `con<max_ports - 1>`.
    pub fn new(max_ports: u32) -> Result<Self, ConsoleError> {
        Ok(Self {
            first: Arc::new(Mutex::new(Console::single()?)),
            rest: Arc::new(Mutex::new(Console::new(max_ports)?)),
        })
    }

    /// The `con0` device, then the multiport device: plug them in this order so that the
    /// guest probes `con0` first and names it `hvc0`.
    pub fn devices(&self) -> [Arc<Mutex<Console>>; 2] {
        [self.first.clone(), self.rest.clone()]
    }

    fn device(&self, id: u32) -> MutexGuard<'_, Console> {
        let d = if id == 0 { &self.first } else { &self.rest };
        crate::locked(d)
    }

    /// Adds console `id` (see [`Console::add_port`]).
    pub fn add_port(&self, id: u32, channel: Channel) -> Result<(), ConsoleError> {
        self.device(id).add_port(id, channel)
    }

    /// Removes console `id` (see [`Console::remove_port`]); `con0` is the guest's console
    /// device and cannot go.
    pub fn remove_port(&self, id: u32) -> Result<(), ConsoleError> {
        if id == 0 {
            return Err(ConsoleError::Fixed);
        }
        self.device(id).remove_port(id)
    }

    /// The consoles that exist, in order.
    pub fn port_ids(&self) -> Vec<u32> {
        let mut ids = self.device(0).port_ids();
        ids.extend(self.device(1).port_ids());
        ids
    }

    /// The live description of console `id`'s channel (see [`Console::port_description`]).
    pub fn port_description(&self, id: u32) -> Option<String> {
        self.device(id).port_description(id)
    }

    /// True when the guest has console `id` open (see [`Console::is_guest_open`]).
    pub fn is_guest_open(&self, id: u32) -> bool {
        self.device(id).is_guest_open(id)
    }

    /// Re-reads every console's host terminal size and tells the guest what changed (the
    /// VMM calls it on SIGWINCH, on the event loop's thread).
    pub fn refresh_sizes(&self) {
        crate::locked(&self.first).refresh_sizes();
        crate::locked(&self.rest).refresh_sizes();
    }
}

/// A console set built from the command line's lines (see [`open_consoles`]).
#[derive(Debug)]
pub struct OpenedConsoles {
    /// The devices, one port per line that opened.
    pub consoles: ConsoleSet,
    /// Lines that could not be set up; UML boots without them, printing why.
    pub failures: Vec<ConsoleError>,
}

/// Opens every console line (from [`crate::chan::resolve_lines`]) and builds the console set
/// with one port per line. A line whose channel fails is left out and reported in
/// `failures`, as UML boots without the lines it cannot set up.
pub fn open_consoles(
    lines: &[(u32, ChannelSpec)],
    max_ports: u32,
    ctx: &ChanContext,
) -> Result<OpenedConsoles, ConsoleError> {
    let consoles = ConsoleSet::new(max_ports)?;
    let mut failures = Vec::new();
    for (id, spec) in lines {
        if *id >= max_ports {
            failures.push(ConsoleError::OutOfRange {
                id: *id,
                max: max_ports,
            });
            continue;
        }
        match Channel::prepare(spec, LineClass::Console, *id, ctx) {
            Ok(ch) => consoles.add_port(*id, ch)?,
            Err(source) => failures.push(ConsoleError::Channel { id: *id, source }),
        }
    }
    Ok(OpenedConsoles { consoles, failures })
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        types::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let multiport = if self.multiport {
            1 << VIRTIO_CONSOLE_F_MULTIPORT
        } else {
            0
        };
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_CONSOLE_F_SIZE)
            | (1 << VIRTIO_CONSOLE_F_EMERG_WRITE)
            | multiport
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; CONFIG_LEN];
        cfg[0..2].copy_from_slice(&self.cols.to_le_bytes());
        cfg[2..4].copy_from_slice(&self.rows.to_le_bytes());
        cfg[4..8].copy_from_slice(&self.max_ports.to_le_bytes());
        // emerg_wr reads as 0.
        crate::virtio::read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only emerg_wr is writable: its low byte is a character for port 0.
        if offset == CONFIG_EMERG_WR
            && !data.is_empty()
            && self.acked_features & (1 << VIRTIO_CONSOLE_F_EMERG_WRITE) != 0
        {
            if let Some(p) = self.ports.get_mut(&0) {
                p.channel.write(&data[..1]);
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let need = if self.multiport { 4 } else { 2 };
        if queues.len() < need {
            return Err(ActivateError::MissingQueues {
                got: queues.len(),
                need,
            });
        }
        let mut slots: Vec<Option<ActiveQueue>> = Vec::new();
        slots.resize_with(self.queue_sizes.len(), || None);
        let mut broken = false;
        for q in queues {
            let i = usize::from(q.index);
            if !q.queue.is_valid(&mem) {
                warn!("console: queue {i} is not valid in guest memory");
                broken = true;
            }
            if let Some(s) = slots.get_mut(i) {
                *s = Some(q);
            }
        }
        for (i, s) in slots.iter().enumerate().take(need) {
            if s.is_none() {
                warn!("console: the driver did not enable queue {i}");
                broken = true;
            }
        }
        if self.active.take().is_some() {
            warn!("console: activated twice without a reset");
        }
        self.guest_warnings.refill();
        // A broken device asks for its reset from the event loop (woken below), not from
        // inside the transport's activation.
        self.active = Some(Rings::new("console", mem, interrupt, slots, broken));
        if !self.multiport {
            self.open_single_port();
        }
        self.kick();
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.resume.clear();
        self.driver_ready = false;
        self.control_pending.clear();
        self.acked_features = 0;
        for p in self.ports.values_mut() {
            p.ready = false;
            p.guest_open = false;
            p.told = None;
            if let Err(e) = p.channel.set_guest_open(false) {
                warn!("console: {}", crate::error_chain(&e));
            }
        }
        self.kick();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_space_reads() {
        let c = Console::new(8).unwrap();
        let mut b = [0u8; 4];
        c.read_config(4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 8);
        let mut b = [0xffu8; 16];
        c.read_config(0, &mut b);
        assert_eq!(&b[..12], &[0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[12..], &[0, 0, 0, 0]);
        let mut b = [0xffu8; 2];
        c.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn test_features_and_queues() {
        let mut c = Console::new(4).unwrap();
        assert_eq!(c.queue_count(), 10);
        assert_eq!(c.device_type(), types::CONSOLE);
        c.ack_features(u64::MAX);
        assert_eq!(c.acked_features, c.features());
        assert!(c.features() & (1 << VIRTIO_CONSOLE_F_MULTIPORT) != 0);
    }

    #[test]
    fn test_open_consoles_skips_failed_lines() {
        let lines = vec![
            (0, ChannelSpec::single(crate::chan::Chan::Null)),
            (1, ChannelSpec::single(crate::chan::Chan::Xterm)),
            (2, ChannelSpec::single(crate::chan::Chan::Null)),
            (40, ChannelSpec::single(crate::chan::Chan::Null)),
        ];
        let o = open_consoles(&lines, 16, &ChanContext::default()).unwrap();
        assert_eq!(o.consoles.port_ids(), vec![0, 2]);
        let [first, rest] = o.consoles.devices();
        assert_eq!(first.lock().unwrap().port_ids(), vec![0]);
        assert_eq!(rest.lock().unwrap().port_ids(), vec![2]);
        assert_eq!(o.failures.len(), 2);
        assert!(matches!(
            o.failures[0],
            ConsoleError::Channel {
                id: 1,
                source: ChanError::NoDisplay
            }
        ));
    }

    #[test]
    fn test_add_remove_port_errors() {
        let mut c = Console::new(2).unwrap();
        c.add_port(0, Channel::null()).unwrap();
        assert!(matches!(
            c.add_port(0, Channel::null()),
            Err(ConsoleError::Exists(0))
        ));
        assert!(matches!(
            c.add_port(2, Channel::null()),
            Err(ConsoleError::OutOfRange { id: 2, max: 2 })
        ));
        assert!(matches!(c.remove_port(1), Err(ConsoleError::NoSuchPort(1))));
        c.remove_port(0).unwrap();
        assert!(c.port_ids().is_empty());
        assert!(matches!(Console::new(0), Err(ConsoleError::BadMaxPorts(0))));
    }
}
