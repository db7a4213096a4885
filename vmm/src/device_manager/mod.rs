//! The one owner of buses, PCI slots, GSIs, BAR addresses, the GED, the PCI hot-plug register
//! block and the eject queue (Cloud Hypervisor's `DeviceManager` shape).
//!
//! Legacy devices sit at fixed ports ([`DeviceManager::add_pio`]). A virtio device is
//! [plugged](DeviceManager::plug) into a slot of the PCI root bus with a BAR from the 32-bit
//! window, a block of GSIs for its MSI-X vectors (with their irqfds), its queue notifiers
//! (ioeventfds) and its event-loop subscriber. Every resource taken is recorded as it is
//! taken in one [`Claim`]; a claim that is not committed gives everything back when it is
//! dropped, so a failed plug leaves nothing behind, and unplugging is dropping the claim
//! rebuilt from the registry: one release path. The registry (slot -> [`Plugged`]) is the
//! only record of which device sits where, and of the configuration a rebuilt machine needs
//! (the disks and NICs plugged at run time, as UML keeps them across a reboot).
//!
//! Hot-plug follows Cloud Hypervisor's scheme: [`DeviceManager::plug`] with `announce` sets
//! the slot's bit in the register block the DSDT scans and raises the GED interrupt;
//! [`DeviceManager::request_removal`] asks the guest to eject. What the guest does about it
//! arrives from vCPU threads (an activation, an eject) and is turned into [`DeviceEvent`]s by
//! [`DeviceManager::take_events`] on the event loop's thread.

pub mod allocator;
mod bars;
pub mod hotplug;
pub mod interrupts;
pub mod vm_ops;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, RwLock};

use devices::bus::{Bus, BusDevice};
use devices::legacy::ged::{Ged, GED_PCI_HOTPLUG};
use devices::pci::virtio::{msix_vectors, BAR_SIZE};
use devices::pci::{PciHotplug, PciRoot, VirtioPciDevice, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
use devices::virtio::block::Block;
use devices::virtio::console::Console;
use devices::virtio::fs::Fs;
use devices::virtio::net::device::Net;
use devices::virtio::{GuestMemory, VirtioDevice};
use event_manager::{MutEventSubscriber, SubscriberId, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use self::allocator::RangeAllocator;
use self::bars::BarMover;
use self::hotplug::EjectQueue;
use self::interrupts::{DeviceMsi, GsiRoutes, IOAPIC_PINS, MAX_GSI};
use self::vm_ops::{RoutingError, VmOps};
use crate::arch::x86_64::{hotplug_aml, layout};

/// Subscribers the event loop runs.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Takes a lock, recovering from poisoning (a panicked holder leaves its last state).
pub fn locked<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A virtio device the device manager can plug: its transport side, its event-loop side, and
/// how it lets go of its host resources once unplugged.
pub trait Pluggable: VirtioDevice + MutEventSubscriber + Send {
    /// Closes the backend (an image and its lock, a tap) now, even if a reference to the
    /// device outlives the unplug for a moment.
    fn release(&mut self) {}

    /// The device as a network card, for a backend to be replaced.
    fn as_net(&mut self) -> Option<&mut Net> {
        None
    }
}

impl Pluggable for Block {
    fn release(&mut self) {
        drop(self.release_disk());
    }
}

impl Pluggable for Net {
    fn release(&mut self) {
        self.close();
    }

    fn as_net(&mut self) -> Option<&mut Net> {
        Some(self)
    }
}

impl Pluggable for Console {}

impl Pluggable for Fs {
    fn release(&mut self) {
        Fs::release(self);
    }
}

/// What sits in a PCI slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PciId {
    /// A disk, by ubd unit.
    Disk(usize),
    /// A network card, by ethN index.
    Nic(u32),
    /// The n-th virtio-console device (never removable).
    Console(u8),
    /// A hostfs share's virtio-fs device, by N of `hostfs<N>=` (0: `hostfs=`, the default
    /// export).
    Share(u32),
}

impl PciId {
    /// Whether the guest may be asked to eject it.
    pub fn removable(self) -> bool {
        !matches!(self, PciId::Console(_))
    }
}

impl std::fmt::Display for PciId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PciId::Disk(u) => write!(f, "ubd{u}"),
            PciId::Nic(n) => write!(f, "eth{n}"),
            PciId::Console(n) => write!(f, "console device {n}"),
            PciId::Share(n) => f.write_str(&hostfs::share_name(*n)),
        }
    }
}

/// The configuration a device was made from, which a rebuilt machine plugs again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceConfig {
    /// A ubd unit.
    Disk(ubd::UbdSpec),
    /// An ethN card.
    Nic(netdev::NetSpec),
    /// A hostfs share (a rebuilt machine takes its shares from [`crate::config::Config`],
    /// which the machine keeps up to date as shares are added and removed).
    Share(hostfs::ShareSpec),
    /// Made from the boot configuration, which a rebuilt machine reads again (the consoles,
    /// built from the lines); never plugged or removed at run time.
    Boot,
}

/// Where a device is in its hot-plug life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlugState {
    /// There (plugged at boot, or the guest has activated it).
    Present,
    /// Announced to the guest, which has not activated it yet.
    Announced,
    /// The guest was asked to eject it.
    Removing,
}

/// What the guest did with the devices since the last call to
/// [`DeviceManager::take_events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The guest driver started an announced device.
    Activated(PciId),
    /// The guest ejected the device; its slot and resources are free again.
    Ejected(PciId),
}

/// Resources a device manager can run out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Free slots on the root bus.
    PciSlots,
    /// Room in the 32-bit PCI memory window.
    PciWindow,
    /// GSIs for MSI-X vectors.
    Gsis,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::PciSlots => "PCI slots",
            Resource::PciWindow => "room in the PCI memory window",
            Resource::Gsis => "interrupt routes (GSIs)",
        })
    }
}

/// Errors of the device manager.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A bus range was refused.
    #[error("cannot map the device")]
    Bus(#[from] devices::bus::BusError),
    /// The PCI root refused the device.
    #[error("cannot plug the PCI device")]
    Pci(#[from] devices::pci::HostError),
    /// The virtio-pci transport refused the device.
    #[error("cannot create the virtio-pci transport")]
    VirtioPci(#[from] devices::pci::VirtioPciError),
    /// KVM refused an irqfd or ioeventfd.
    #[error("KVM refused to {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    /// KVM refused the interrupt routing table.
    #[error("cannot set the interrupt routes")]
    Routes(#[source] RoutingError),
    /// Nothing left of a resource.
    #[error("no {0} left for another device")]
    Exhausted(Resource),
    /// The device is already plugged.
    #[error("{0} is already plugged")]
    Plugged(PciId),
    /// No such device is plugged.
    #[error("{0} is not plugged")]
    NotPlugged(PciId),
    /// The device cannot be removed.
    #[error("{0} cannot be removed")]
    NotRemovable(PciId),
    /// The GED could not raise its interrupt.
    #[error("cannot tell the guest about the change")]
    Notify(#[source] devices::legacy::ged::GedError),
}

/// A plugged device and everything it holds.
pub(crate) struct Plugged {
    id: PciId,
    config: DeviceConfig,
    state: PlugState,
    device: Arc<Mutex<dyn Pluggable>>,
    transport: Arc<Mutex<VirtioPciDevice>>,
    msi: Arc<DeviceMsi>,
    /// The BAR address allocated (the guest may have moved the BAR since).
    bar: u64,
    subscriber: SubscriberId,
}

/// Slot -> device: the only record of which device sits where.
pub(crate) type Registry = BTreeMap<u8, Plugged>;

/// Buses, PCI, interrupts and hot-plug of one machine.
pub struct DeviceManager {
    vm: Arc<dyn VmOps>,
    mem: GuestMemory,
    pio: Arc<RwLock<Bus>>,
    mmio: Arc<RwLock<Bus>>,
    pci: Arc<Mutex<PciRoot>>,
    routes: Arc<GsiRoutes>,
    gsis: RangeAllocator,
    bars: RangeAllocator,
    registry: Arc<Mutex<Registry>>,
    hotplug: Arc<Mutex<PciHotplug>>,
    ged: Arc<Mutex<Ged>>,
    ejects: Arc<EjectQueue>,
    /// Written by every transport when its device is activated, and by the eject queue.
    wake: EventFd,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceManager")
            .field("slots", &locked(&self.registry).keys().collect::<Vec<_>>())
            .field("gsis", &self.gsis.in_use())
            .finish_non_exhaustive()
    }
}

/// What a device manager holds, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Occupied slots (the host bridge included).
    pub slots: usize,
    /// GSIs allocated to MSI-X vectors.
    pub gsis: u64,
    /// BARs allocated.
    pub bars: usize,
    /// Routes in the GSI routing table.
    pub routes: usize,
    /// Ranges on the MMIO bus.
    pub mmio_ranges: usize,
}

impl DeviceManager {
    /// A manager with empty buses, the PCI root at 0xCF8, and the hot-plug register block and
    /// GED on the MMIO bus. `wake` is written when the guest activates or ejects a device.
    pub fn new(
        vm: Arc<dyn VmOps>,
        mem: GuestMemory,
        mem_size: u64,
        wake: &EventFd,
    ) -> Result<DeviceManager, DeviceError> {
        let clone = |e: &EventFd| e.try_clone().map_err(DeviceError::EventFd);
        let mmio64 = layout::mmio64_start(mem_size);
        let mut pio = Bus::new();
        let mmio = Arc::new(RwLock::new(Bus::new()));
        let registry = Arc::new(Mutex::new(Registry::new()));
        let pci = Arc::new(Mutex::new(PciRoot::new()));
        locked(&pci).set_bar_hook(Arc::new(BarMover {
            vm: vm.clone(),
            windows: [
                (layout::MMIO32_START, layout::MMIO32_END),
                (mmio64, mmio64 + layout::MMIO64_SIZE),
            ],
            mmio: mmio.clone(),
            registry: registry.clone(),
        }));
        pio.insert(pci.clone(), PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN)?;
        let routes = Arc::new(GsiRoutes::new(vm.clone()));
        routes.push().map_err(DeviceError::Routes)?;
        let ejects = Arc::new(EjectQueue::new(clone(wake)?));
        let hotplug = Arc::new(Mutex::new(PciHotplug::new(ejects.clone())));
        let ged_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&ged_irq, hotplug_aml::GED_GSI)
            .map_err(|e| DeviceError::Kvm("route the GED interrupt", e))?;
        let ged = Arc::new(Mutex::new(Ged::new(ged_irq)));
        let dm = DeviceManager {
            vm,
            mem,
            pio: Arc::new(RwLock::new(pio)),
            mmio,
            pci,
            routes,
            gsis: RangeAllocator::new(u64::from(IOAPIC_PINS), u64::from(MAX_GSI)),
            bars: RangeAllocator::new(layout::MMIO32_START, layout::MMIO32_END),
            registry,
            hotplug: hotplug.clone(),
            ged: ged.clone(),
            ejects,
            wake: clone(wake)?,
        };
        dm.add_mmio(
            hotplug,
            hotplug_aml::PCI_HOTPLUG_ADDR,
            hotplug_aml::PCI_HOTPLUG_LEN,
        )?;
        dm.add_mmio(ged, hotplug_aml::GED_ADDR, hotplug_aml::GED_LEN)?;
        Ok(dm)
    }

    /// The port-I/O bus, for the vCPUs.
    pub fn pio(&self) -> Arc<RwLock<Bus>> {
        self.pio.clone()
    }

    /// The MMIO bus, for the vCPUs.
    pub fn mmio(&self) -> Arc<RwLock<Bus>> {
        self.mmio.clone()
    }

    /// Maps a legacy device at fixed ports.
    pub fn add_pio(
        &self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        map(&self.pio, dev, base, len)
    }

    /// Maps a platform device on the MMIO bus.
    pub fn add_mmio(
        &self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        map(&self.mmio, dev, base, len)
    }

    /// An eventfd routed to legacy IRQ `gsi` (for the machine's lifetime).
    pub fn legacy_irq(&self, gsi: u32) -> Result<EventFd, DeviceError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        self.vm
            .register_irqfd(&evt, gsi)
            .map_err(|e| DeviceError::Kvm("route an interrupt", e))?;
        Ok(evt)
    }

    fn slot_of(&self, id: PciId) -> Option<u8> {
        locked(&self.registry)
            .iter()
            .find(|(_, p)| p.id == id)
            .map(|(s, _)| *s)
    }

    /// Starts a claim on this manager's resources; see [`Claim`].
    fn claim<'a>(
        &'a mut self,
        ops: &'a mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) -> Claim<'a> {
        Claim {
            vm: &*self.vm,
            routes: &self.routes,
            gsis: &mut self.gsis,
            bars: &mut self.bars,
            pci: &self.pci,
            mmio: &self.mmio,
            ops,
            held: Held::default(),
        }
    }

    /// Plugs `device` as `id` into a free PCI slot with its BAR, MSI-X GSIs and irqfds, queue
    /// notifiers and event-loop subscriber (registered with `ops`). With `announce` (hot-plug),
    /// the guest is told through the register block and the GED; [`DeviceEvent::Activated`]
    /// follows once its driver started the device. On error nothing is left taken.
    pub fn plug<D: Pluggable + 'static>(
        &mut self,
        id: PciId,
        device: Arc<Mutex<D>>,
        config: DeviceConfig,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
        announce: bool,
    ) -> Result<u8, DeviceError> {
        if self.slot_of(id).is_some() {
            return Err(DeviceError::Plugged(id));
        }
        let activated = self.wake.try_clone().map_err(DeviceError::EventFd)?;
        let mem = self.mem.clone();
        let vectors = u64::from(msix_vectors(&*locked(&device)));
        let mut c = self.claim(ops);
        let dyn_device: Arc<Mutex<dyn Pluggable>> = device.clone();
        c.held.device = Some(dyn_device.clone());

        // GSIs and irqfds for the MSI-X vectors.
        let base = c
            .gsis
            .allocate(vectors, 1)
            .ok_or(DeviceError::Exhausted(Resource::Gsis))?;
        c.held.gsis = Some((base, vectors));
        // The GSI window is [24, 4096): it fits u32.
        let base = base as u32;
        let irqfds = (0..vectors)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(DeviceError::EventFd)?;
        let msi = Arc::new(DeviceMsi {
            routes: c.routes_arc(),
            base,
            irqfds,
        });
        c.held.msi = Some(msi.clone());
        for (gsi, fd) in (base..).zip(&msi.irqfds) {
            c.vm.register_irqfd(fd, gsi)
                .map_err(|e| DeviceError::Kvm("register an MSI irqfd", e))?;
            c.held.irqfds += 1;
        }

        // The BAR, the transport, the slot, the MMIO range and the queue notifiers.
        let bar = c
            .bars
            .allocate(BAR_SIZE, BAR_SIZE)
            .ok_or(DeviceError::Exhausted(Resource::PciWindow))?;
        c.held.bar = Some(bar);
        let as_virtio: Arc<Mutex<dyn VirtioDevice>> = device.clone();
        let mut transport = VirtioPciDevice::new(as_virtio, mem, msi.clone(), bar)?;
        transport.notify_activation(activated);
        let transport = Arc::new(Mutex::new(transport));
        c.held.transport = Some(transport.clone());
        let slot = locked(c.pci)
            .insert(transport.clone(), None)
            .map_err(|e| match e {
                devices::pci::HostError::NoFreeSlot => DeviceError::Exhausted(Resource::PciSlots),
                e => DeviceError::Pci(e),
            })?;
        c.held.slot = Some(slot);
        c.mmio.write().unwrap_or_else(|e| e.into_inner()).insert(
            transport.clone(),
            bar,
            BAR_SIZE,
        )?;
        c.held.mapped = Some(bar);
        for (addr, fd) in locked(&transport).ioeventfds(bar) {
            c.vm.register_ioevent(fd, addr)
                .map_err(|e| DeviceError::Kvm("register a queue notifier", e))?;
            c.held.notifiers += 1;
        }

        // The event loop serves the device from now on.
        let sub: Subscriber = device;
        let subscriber = c.ops.add_subscriber(sub);
        c.held.subscriber = Some(subscriber);
        c.commit();
        locked(&self.registry).insert(
            slot,
            Plugged {
                id,
                config,
                state: if announce {
                    PlugState::Announced
                } else {
                    PlugState::Present
                },
                device: dyn_device,
                transport,
                msi,
                bar,
                subscriber,
            },
        );
        log::info!(
            "{id} in PCI slot {slot}, BAR {bar:#x}, GSIs {base}..{}",
            u64::from(base) + vectors
        );
        if announce {
            locked(&self.hotplug).announce_add(slot);
            // The slot stays announced: the guest finds it at its next scan if this
            // interrupt is lost.
            if let Err(e) = self.notify_guest() {
                log::warn!("{id}: {}", crate::error_chain(&e));
            }
        } else {
            // A device present at boot may be ejected only if mconsole may remove it.
            locked(&self.hotplug).set_removable(slot, id.removable());
        }
        Ok(slot)
    }

    fn notify_guest(&self) -> Result<(), DeviceError> {
        locked(&self.ged)
            .notify(GED_PCI_HOTPLUG)
            .map_err(DeviceError::Notify)
    }

    /// Asks the guest to eject `id`; [`DeviceEvent::Ejected`] follows once it did.
    pub fn request_removal(&mut self, id: PciId) -> Result<(), DeviceError> {
        if !id.removable() {
            return Err(DeviceError::NotRemovable(id));
        }
        let slot = {
            let mut reg = locked(&self.registry);
            let (slot, p) = reg
                .iter_mut()
                .find(|(_, p)| p.id == id)
                .ok_or(DeviceError::NotPlugged(id))?;
            p.state = PlugState::Removing;
            *slot
        };
        locked(&self.hotplug).request_removal(slot);
        self.notify_guest()
    }

    /// Unplugs `id` at once, without asking the guest (for a machine that is not running, and
    /// for tests); everything it held is given back.
    pub fn remove(
        &mut self,
        id: PciId,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) -> Result<(), DeviceError> {
        let slot = self.slot_of(id).ok_or(DeviceError::NotPlugged(id))?;
        self.release_slot(slot, ops);
        Ok(())
    }

    fn release_slot(
        &mut self,
        slot: u8,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) -> Option<PciId> {
        let p = locked(&self.registry).remove(&slot)?;
        locked(&self.hotplug).set_removable(slot, false);
        let at = locked(&p.transport).bar_address();
        let mut c = self.claim(ops);
        c.held = Held {
            device: Some(p.device),
            gsis: Some((u64::from(p.msi.base), p.msi.irqfds.len() as u64)),
            irqfds: p.msi.irqfds.len(),
            msi: Some(p.msi),
            bar: Some(p.bar),
            notifiers: usize::MAX,
            mapped: Some(at),
            transport: Some(p.transport),
            slot: Some(slot),
            subscriber: Some(p.subscriber),
        };
        drop(c);
        log::info!("{} unplugged from PCI slot {slot}", p.id);
        Some(p.id)
    }

    /// What the guest did since the last call: devices it activated (announced ones only) and
    /// slots it ejected, which are unplugged here. `ops` is the event loop's.
    pub fn take_events(
        &mut self,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) -> Vec<DeviceEvent> {
        // The wake eventfd is the caller's; it drains it.
        let mut events = Vec::new();
        for slot in self.ejects.take() {
            let known = locked(&self.registry).get(&slot).map(|p| p.id);
            match known {
                Some(id) if id.removable() => {
                    self.release_slot(slot, ops);
                    events.push(DeviceEvent::Ejected(id));
                }
                // The register block passes on ejects of removable slots only (and logs the
                // others within a budget); a slot released meanwhile holds nothing now.
                other => log::debug!("eject of PCI slot {slot} ({other:?}) ignored"),
            }
        }
        for p in locked(&self.registry).values_mut() {
            if p.state == PlugState::Announced && locked(&p.transport).is_activated() {
                p.state = PlugState::Present;
                events.push(DeviceEvent::Activated(p.id));
            }
        }
        events
    }

    /// Runs `f` on the network card `id`, if it is plugged.
    pub fn with_nic<R>(&self, id: PciId, f: impl FnOnce(&mut Net) -> R) -> Option<R> {
        let device = self.with_plugged(id, |p| p.device.clone())?;
        let mut device = locked(&device);
        device.as_net().map(f)
    }

    fn with_plugged<R>(&self, id: PciId, f: impl FnOnce(&Plugged) -> R) -> Option<R> {
        locked(&self.registry).values().find(|p| p.id == id).map(f)
    }

    /// The state of `id`, if it is plugged.
    pub fn state(&self, id: PciId) -> Option<PlugState> {
        self.with_plugged(id, |p| p.state)
    }

    /// The configuration of every device plugged from its own option (disks, NICs, shares),
    /// in slot order: what a rebuilt machine plugs again.
    pub fn configs(&self) -> Vec<(PciId, DeviceConfig)> {
        locked(&self.registry)
            .values()
            .filter(|p| p.config != DeviceConfig::Boot)
            .map(|p| (p.id, p.config.clone()))
            .collect()
    }

    /// The configuration of `id`, if it is plugged.
    pub fn config(&self, id: PciId) -> Option<DeviceConfig> {
        self.with_plugged(id, |p| p.config.clone())
    }

    /// Records that `id` is now made from `config` (a NIC given a new backend).
    pub fn set_config(&mut self, id: PciId, config: DeviceConfig) {
        if let Some(p) = locked(&self.registry).values_mut().find(|p| p.id == id) {
            p.config = config;
        }
    }

    /// What is held now.
    pub fn usage(&self) -> Usage {
        let pci = locked(&self.pci);
        let slots = (0..devices::pci::host::NUM_SLOTS as u8)
            .filter(|s| pci.device(*s).is_some())
            .count();
        Usage {
            slots,
            gsis: self.gsis.in_use(),
            bars: self.bars.ranges(),
            routes: self.routes.len(),
            mmio_ranges: self.mmio.read().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }
}

fn map(
    bus: &RwLock<Bus>,
    dev: Arc<Mutex<dyn BusDevice>>,
    base: u64,
    len: u64,
) -> Result<(), DeviceError> {
    bus.write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(dev, base, len)?;
    Ok(())
}

/// Resources taken for one device, in the order they are taken.
#[derive(Default)]
struct Held {
    device: Option<Arc<Mutex<dyn Pluggable>>>,
    /// (first GSI, count).
    gsis: Option<(u64, u64)>,
    msi: Option<Arc<DeviceMsi>>,
    /// How many of `msi`'s irqfds are registered.
    irqfds: usize,
    bar: Option<u64>,
    transport: Option<Arc<Mutex<VirtioPciDevice>>>,
    slot: Option<u8>,
    /// Where the BAR is mapped on the MMIO bus.
    mapped: Option<u64>,
    /// How many of the transport's queue notifiers are registered at `mapped`.
    notifiers: usize,
    subscriber: Option<SubscriberId>,
}

/// The resources of one device being plugged (or unplugged): whatever is recorded in `held`
/// when the claim is dropped is given back, newest first. [`Claim::commit`] empties it.
struct Claim<'a> {
    vm: &'a dyn VmOps,
    routes: &'a Arc<GsiRoutes>,
    gsis: &'a mut RangeAllocator,
    bars: &'a mut RangeAllocator,
    pci: &'a Mutex<PciRoot>,
    mmio: &'a RwLock<Bus>,
    ops: &'a mut dyn SubscriberOps<Subscriber = Subscriber>,
    held: Held,
}

impl Claim<'_> {
    fn routes_arc(&self) -> Arc<GsiRoutes> {
        self.routes.clone()
    }

    /// Keeps everything taken.
    fn commit(mut self) {
        self.held = Held::default();
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let h = std::mem::take(&mut self.held);
        // The event loop lets go of the device's fds first (its queue eventfds stay open
        // until the transport goes: event-manager must forget an fd before it is closed).
        if let Some(id) = h.subscriber {
            if let Err(e) = self.ops.remove_subscriber(id) {
                log::warn!("cannot stop watching an unplugged device: {e:?}");
            }
        }
        if let (Some(t), Some(at)) = (&h.transport, h.mapped) {
            for (addr, fd) in locked(t).ioeventfds(at).into_iter().take(h.notifiers) {
                if let Err(e) = self.vm.unregister_ioevent(fd, addr) {
                    log::warn!("cannot remove the queue notifier at {addr:#x}: {e}");
                }
            }
        }
        if let Some(at) = h.mapped {
            if let Err(e) = self
                .mmio
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(at)
            {
                log::warn!("cannot unmap the BAR at {at:#x}: {e}");
            }
        }
        if let Some(slot) = h.slot {
            if let Err(e) = locked(self.pci).remove(slot) {
                log::warn!("cannot empty PCI slot {slot}: {e}");
            }
        }
        if let Some(bar) = h.bar {
            self.bars.free(bar);
        }
        if let Some(msi) = &h.msi {
            for (gsi, fd) in (msi.base..).zip(&msi.irqfds).take(h.irqfds) {
                if let Err(e) = self.vm.unregister_irqfd(fd, gsi) {
                    log::warn!("cannot remove the irqfd of GSI {gsi}: {e}");
                }
            }
            // The guest may have routed some vectors.
            if let Err(e) = self.routes.clear(msi.base, msi.irqfds.len() as u32) {
                log::warn!(
                    "cannot clear the routes of GSIs {}..: {}",
                    msi.base,
                    crate::error_chain(&e)
                );
            }
        }
        if let Some((base, _)) = h.gsis {
            self.gsis.free(base);
        }
        if let Some(d) = h.device {
            locked(&d).release();
        }
    }
}

#[cfg(test)]
mod tests;
