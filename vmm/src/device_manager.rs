//! The one owner of buses, PCI slots, MMIO and interrupt allocation.
//!
//! Legacy devices sit at fixed ports; PCI devices get a slot on the root bus, a BAR from the
//! 32-bit MMIO window and a block of GSIs for their MSI-X vectors. KVM's GSI routing table is
//! kept here in full ([`GsiRoutes`]): KVM_SET_GSI_ROUTING replaces the whole table, so the
//! default IOAPIC/PIC routes of the legacy IRQs are rewritten with every MSI change.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, RwLock};

use devices::bus::{Bus, BusDevice};
use devices::pci::virtio::{msix_vectors, BAR_SIZE};
use devices::pci::{
    BarHook, BarMove, MsiMessage, MsiRouting, PciRoot, VirtioPciDevice, PCI_CONFIG_IO_BASE,
    PCI_CONFIG_IO_LEN,
};
use devices::virtio::{GuestMemory, VirtioDevice};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout;

/// Pins of the IOAPIC; MSI GSIs are allocated above them.
const IOAPIC_PINS: u32 = 24;
/// Most GSIs KVM routes.
const MAX_GSI: u32 = 4096;

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
    /// KVM refused an irqfd, ioeventfd or routing change.
    #[error("KVM refused to {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    /// KVM refused the interrupt routing table.
    #[error("KVM refused the interrupt routing table")]
    Routes(#[source] io::Error),
    /// The MMIO window or the GSI space is exhausted.
    #[error("no room left for another device ({0})")]
    Exhausted(&'static str),
}

/// KVM's GSI routing table, owned in full.
#[derive(Debug)]
pub struct GsiRoutes {
    vm: Arc<VmFd>,
    routes: Mutex<BTreeMap<u32, Vec<kvm_irq_routing_entry>>>,
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// PURE: the default routes of the legacy IRQs: IRQ 0-15 to the PICs and the IOAPIC pin of the
/// same number (IRQ 2 is the PIC cascade), 16-23 to the IOAPIC only.
pub fn default_routes() -> BTreeMap<u32, Vec<kvm_irq_routing_entry>> {
    let mut m = BTreeMap::new();
    for gsi in 0..IOAPIC_PINS {
        let mut v = vec![irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi)];
        if gsi < 8 && gsi != 2 {
            v.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if (8..16).contains(&gsi) {
            v.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        m.insert(gsi, v);
    }
    m
}

/// PURE: an MSI route.
pub fn msi_route(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = msg.address as u32;
    e.u.msi.address_hi = (msg.address >> 32) as u32;
    e.u.msi.data = msg.data;
    e
}

impl GsiRoutes {
    /// The default table (legacy IRQs), not yet pushed to KVM.
    pub fn new(vm: Arc<VmFd>) -> GsiRoutes {
        GsiRoutes {
            vm,
            routes: Mutex::new(default_routes()),
        }
    }

    /// Sets (or with `None` clears) the route of `gsi` and pushes the table to KVM.
    pub fn set(&self, gsi: u32, entry: Option<kvm_irq_routing_entry>) -> io::Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        match entry {
            Some(e) => routes.insert(gsi, vec![e]),
            None => routes.remove(&gsi),
        };
        Self::push_table(&self.vm, &routes)
    }

    /// Pushes the current table to KVM.
    pub fn push(&self) -> io::Result<()> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        Self::push_table(&self.vm, &routes)
    }

    fn push_table(vm: &VmFd, routes: &BTreeMap<u32, Vec<kvm_irq_routing_entry>>) -> io::Result<()> {
        let all: Vec<kvm_irq_routing_entry> = routes.values().flatten().copied().collect();
        let table = KvmIrqRouting::from_entries(&all)
            .map_err(|_| io::Error::other("too many interrupt routes"))?;
        vm.set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// MSI-X routing of one device: vector `n` is GSI `base + n`, raised by writing its irqfd.
#[derive(Debug)]
struct DeviceMsi {
    routes: Arc<GsiRoutes>,
    base: u32,
    irqfds: Vec<EventFd>,
}

impl MsiRouting for DeviceMsi {
    fn set_vector(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()> {
        if usize::from(vector) >= self.irqfds.len() {
            return Err(io::Error::other(format!(
                "MSI-X vector {vector} out of range"
            )));
        }
        let gsi = self.base + u32::from(vector);
        self.routes.set(gsi, msg.map(|m| msi_route(gsi, m)))
    }

    fn trigger(&self, vector: u16) -> io::Result<()> {
        match self.irqfds.get(usize::from(vector)) {
            Some(fd) => fd.write(1),
            None => Err(io::Error::other(format!(
                "MSI-X vector {vector} out of range"
            ))),
        }
    }
}

/// Moves a BAR's bus range and ioeventfds when the guest reprograms it.
struct BarMover {
    vm: Arc<VmFd>,
    /// The PCI windows the DSDT gives the root bridge: BARs may move anywhere inside them.
    windows: [(u64, u64); 2],
    mmio: Arc<RwLock<Bus>>,
    devices: Arc<Mutex<BTreeMap<u8, Arc<Mutex<VirtioPciDevice>>>>>,
}

impl BarHook for BarMover {
    fn bar_moved(&self, slot: u8, mv: BarMove) -> io::Result<()> {
        let in_window = |a: u64| {
            self.windows.iter().any(|(start, end)| {
                a >= *start && a.checked_add(mv.size).is_some_and(|e| e <= *end)
            })
        };
        if !in_window(mv.new) {
            return Err(io::Error::other(format!(
                "BAR {:#x} outside the PCI window",
                mv.new
            )));
        }
        let dev = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&slot)
            .cloned()
            .ok_or_else(|| io::Error::other("no such slot"))?;
        let mut mmio = self.mmio.write().unwrap_or_else(|e| e.into_inner());
        let shared = mmio
            .remove(mv.old)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if let Err(e) = mmio.insert(shared.clone(), mv.new, mv.size) {
            let _ = mmio.insert(shared, mv.old, mv.size);
            return Err(io::Error::other(e.to_string()));
        }
        let d = dev.lock().unwrap_or_else(|e| e.into_inner());
        for (addr, fd) in d.ioeventfds(mv.old) {
            let _ = self
                .vm
                .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch);
        }
        for (addr, fd) in d.ioeventfds(mv.new) {
            self.vm
                .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        }
        log::debug!("slot {slot}: BAR moved {:#x} -> {:#x}", mv.old, mv.new);
        Ok(())
    }
}

/// A virtio device plugged into a PCI slot.
#[derive(Debug, Clone)]
pub struct PluggedDevice {
    /// The slot (device number on bus 0).
    pub slot: u8,
    /// The transport.
    pub transport: Arc<Mutex<VirtioPciDevice>>,
}

/// Buses, PCI and interrupts of one machine.
pub struct DeviceManager {
    vm: Arc<VmFd>,
    mem: GuestMemory,
    /// Port-I/O bus.
    pub pio: Arc<RwLock<Bus>>,
    /// MMIO bus.
    pub mmio: Arc<RwLock<Bus>>,
    /// The PCI root bus.
    pub pci: Arc<Mutex<PciRoot>>,
    routes: Arc<GsiRoutes>,
    pci_devices: Arc<Mutex<BTreeMap<u8, Arc<Mutex<VirtioPciDevice>>>>>,
    plugged: BTreeMap<u8, Arc<DeviceMsi>>,
    next_gsi: u32,
    /// Next never-used BAR address in the 32-bit window.
    next_bar: u64,
    /// BAR addresses given back by removed devices (BAR_SIZE each).
    free_bars: Vec<u64>,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceManager")
            .field("next_gsi", &self.next_gsi)
            .finish_non_exhaustive()
    }
}

/// Takes a lock, recovering from poisoning (a panicked holder leaves its last state).
pub fn locked<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceManager {
    /// A manager with empty buses and the PCI root at 0xCF8.
    pub fn new(
        vm: Arc<VmFd>,
        mem: GuestMemory,
        mem_size: u64,
    ) -> Result<DeviceManager, DeviceError> {
        let mmio64 = layout::mmio64_start(mem_size);
        let mut pio = Bus::new();
        let mmio = Arc::new(RwLock::new(Bus::new()));
        let pci_devices = Arc::new(Mutex::new(BTreeMap::new()));
        let pci = Arc::new(Mutex::new(PciRoot::new()));
        locked(&pci).set_bar_hook(Arc::new(BarMover {
            vm: vm.clone(),
            windows: [
                (layout::MMIO32_START, layout::MMIO32_END),
                (mmio64, mmio64 + layout::MMIO64_SIZE),
            ],
            mmio: mmio.clone(),
            devices: pci_devices.clone(),
        }));
        pio.insert(pci.clone(), PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN)?;
        let routes = Arc::new(GsiRoutes::new(vm.clone()));
        routes.push().map_err(DeviceError::Routes)?;
        Ok(DeviceManager {
            vm,
            mem,
            pio: Arc::new(RwLock::new(pio)),
            mmio,
            pci,
            routes,
            pci_devices,
            plugged: BTreeMap::new(),
            next_gsi: IOAPIC_PINS,
            next_bar: layout::MMIO32_START,
            free_bars: Vec::new(),
        })
    }

    /// Maps a legacy device at fixed ports.
    pub fn add_pio(
        &self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        self.pio
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dev, base, len)?;
        Ok(())
    }

    /// Maps a platform device on the MMIO bus.
    pub fn add_mmio(
        &self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        self.mmio
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dev, base, len)?;
        Ok(())
    }

    /// An eventfd routed to legacy IRQ `gsi`.
    pub fn legacy_irq(&self, gsi: u32) -> Result<EventFd, DeviceError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        self.vm
            .register_irqfd(&evt, gsi)
            .map_err(|e| DeviceError::Kvm("route an interrupt", e))?;
        Ok(evt)
    }

    fn alloc_bar(&mut self) -> Result<u64, DeviceError> {
        if let Some(bar) = self.free_bars.pop() {
            return Ok(bar);
        }
        let bar = self.next_bar;
        if bar + BAR_SIZE > layout::MMIO32_END {
            return Err(DeviceError::Exhausted("PCI memory window"));
        }
        self.next_bar += BAR_SIZE;
        Ok(bar)
    }

    /// Plugs a virtio device into a free PCI slot (or `slot`), with its BAR, MSI-X GSIs,
    /// irqfds and ioeventfds.
    pub fn add_virtio(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
        slot: Option<u8>,
    ) -> Result<PluggedDevice, DeviceError> {
        let vectors = u32::from(msix_vectors(&*locked(&device)));
        let base = self.next_gsi;
        if base + vectors > MAX_GSI {
            return Err(DeviceError::Exhausted("interrupt routes"));
        }
        let mut irqfds = Vec::new();
        for v in 0..vectors {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
            self.vm
                .register_irqfd(&evt, base + v)
                .map_err(|e| DeviceError::Kvm("register an MSI irqfd", e))?;
            irqfds.push(evt);
        }
        self.next_gsi += vectors;
        let routing = Arc::new(DeviceMsi {
            routes: self.routes.clone(),
            base,
            irqfds,
        });
        let bar = self.alloc_bar()?;
        let transport = Arc::new(Mutex::new(VirtioPciDevice::new(
            device,
            self.mem.clone(),
            routing.clone(),
            bar,
        )?));
        let slot = locked(&self.pci).insert(transport.clone(), slot)?;
        self.mmio
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(transport.clone(), bar, BAR_SIZE)?;
        for (addr, fd) in locked(&transport).ioeventfds(bar) {
            self.vm
                .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(|e| DeviceError::Kvm("register a queue notifier", e))?;
        }
        locked(&self.pci_devices).insert(slot, transport.clone());
        self.plugged.insert(slot, routing);
        log::info!(
            "virtio device in PCI slot {slot}, BAR {bar:#x}, GSIs {base}..{}",
            base + vectors
        );
        Ok(PluggedDevice { slot, transport })
    }
}

impl DeviceManager {
    /// Unplugs the virtio device in `slot` (after the guest ejected it): the slot, its BAR,
    /// queue notifiers, interrupt routes and irqfds. Returns the transport, whose device the
    /// caller then releases.
    pub fn remove_virtio(&mut self, slot: u8) -> Result<Arc<Mutex<VirtioPciDevice>>, DeviceError> {
        locked(&self.pci).remove(slot)?;
        let transport = locked(&self.pci_devices)
            .remove(&slot)
            .ok_or(DeviceError::Exhausted("no such PCI slot"))?;
        let bar = locked(&transport).bar_address();
        let _ = self
            .mmio
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(bar);
        for (addr, fd) in locked(&transport).ioeventfds(bar) {
            let _ = self
                .vm
                .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch);
        }
        if let Some(msi) = self.plugged.remove(&slot) {
            for (v, fd) in msi.irqfds.iter().enumerate() {
                let gsi = msi.base + v as u32;
                let _ = self.vm.unregister_irqfd(fd, gsi);
                let _ = self.routes.set(gsi, None);
            }
        }
        self.free_bars.push(bar);
        log::info!("PCI slot {slot} unplugged");
        Ok(transport)
    }

    /// The transport in `slot`, if any.
    pub fn transport(&self, slot: u8) -> Option<Arc<Mutex<VirtioPciDevice>>> {
        locked(&self.pci_devices).get(&slot).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_cover_legacy_irqs() {
        let r = default_routes();
        assert_eq!(r.len(), 24);
        assert_eq!(r[&2].len(), 1, "IRQ 2 is the PIC cascade");
        assert_eq!(r[&4].len(), 2);
        // SAFETY: reading the union member this route was built with.
        let chip = unsafe { r[&9][1].u.irqchip };
        assert_eq!((chip.irqchip, chip.pin), (KVM_IRQCHIP_PIC_SLAVE, 1));
        assert_eq!(r[&20].len(), 1);
    }

    #[test]
    fn msi_route_splits_the_address() {
        let e = msi_route(
            30,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4041,
            },
        );
        // SAFETY: reading the union member this route was built with.
        let msi = unsafe { e.u.msi };
        assert_eq!((e.gsi, e.type_), (30, KVM_IRQ_ROUTING_MSI));
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_1000, 1, 0x4041)
        );
    }
}
