//! Interrupts of PCI devices: KVM's GSI routing table, owned in full, and the MSI-X routing
//! of each device (vector `n` is GSI `base + n`, raised by writing its irqfd).
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the default IOAPIC/PIC routes of the
//! legacy IRQs are rewritten with every MSI change.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use devices::pci::{MsiMessage, MsiRouting};
use kvm_bindings::{
    kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use vmm_sys_util::eventfd::EventFd;

use super::vm_ops::{RoutingError, VmOps};

/// Pins of the IOAPIC; MSI GSIs are allocated above them.
pub const IOAPIC_PINS: u32 = 24;
/// Most GSIs KVM routes.
pub const MAX_GSI: u32 = 4096;

/// An MSI-X vector a device does not have.
#[derive(Debug, thiserror::Error)]
#[error("MSI-X vector {vector} is out of range (the device has {vectors})")]
pub struct VectorError {
    /// The vector asked for.
    pub vector: u16,
    /// Vectors the device has.
    pub vectors: usize,
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

/// KVM's GSI routing table.
pub struct GsiRoutes {
    vm: Arc<dyn VmOps>,
    routes: Mutex<BTreeMap<u32, Vec<kvm_irq_routing_entry>>>,
}

impl std::fmt::Debug for GsiRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRoutes")
            .field("routes", &self.len())
            .finish()
    }
}

impl GsiRoutes {
    /// The default table (legacy IRQs), not yet pushed to KVM.
    pub fn new(vm: Arc<dyn VmOps>) -> GsiRoutes {
        GsiRoutes {
            vm,
            routes: Mutex::new(default_routes()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Vec<kvm_irq_routing_entry>>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (or with `None` clears) the route of `gsi` and pushes the table to KVM.
    pub fn set(&self, gsi: u32, entry: Option<kvm_irq_routing_entry>) -> Result<(), RoutingError> {
        let mut routes = self.table();
        match entry {
            Some(e) => routes.insert(gsi, vec![e]),
            None => routes.remove(&gsi),
        };
        self.push_table(&routes)
    }

    /// Clears the routes of `count` GSIs from `base` with one push.
    pub fn clear(&self, base: u32, count: u32) -> Result<(), RoutingError> {
        let mut routes = self.table();
        let before = routes.len();
        routes.retain(|gsi, _| !(base..base.saturating_add(count)).contains(gsi));
        if routes.len() == before {
            return Ok(());
        }
        self.push_table(&routes)
    }

    /// Pushes the current table to KVM.
    pub fn push(&self) -> Result<(), RoutingError> {
        self.push_table(&self.table())
    }

    /// GSIs with a route.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Never true: the legacy routes are always there.
    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }

    fn push_table(
        &self,
        routes: &BTreeMap<u32, Vec<kvm_irq_routing_entry>>,
    ) -> Result<(), RoutingError> {
        let all: Vec<kvm_irq_routing_entry> = routes.values().flatten().copied().collect();
        self.vm.set_gsi_routing(&all)
    }
}

/// MSI-X routing of one device: vector `n` is GSI `base + n`, raised by writing its irqfd.
#[derive(Debug)]
pub struct DeviceMsi {
    pub(super) routes: Arc<GsiRoutes>,
    pub(super) base: u32,
    pub(super) irqfds: Vec<EventFd>,
}

impl DeviceMsi {
    fn irqfd(&self, vector: u16) -> io::Result<&EventFd> {
        self.irqfds.get(usize::from(vector)).ok_or_else(|| {
            io::Error::other(VectorError {
                vector,
                vectors: self.irqfds.len(),
            })
        })
    }
}

impl MsiRouting for DeviceMsi {
    fn set_vector(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()> {
        self.irqfd(vector)?;
        let gsi = self.base + u32::from(vector);
        // The typed error stays the io::Error's source, so its chain is printed in full.
        self.routes
            .set(gsi, msg.map(|m| msi_route(gsi, m)))
            .map_err(io::Error::other)
    }

    fn trigger(&self, vector: u16) -> io::Result<()> {
        self.irqfd(vector)?.write(1)
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

    #[test]
    fn vectors_out_of_range_are_typed_errors() {
        let vm = Arc::new(super::super::vm_ops::fake::FakeVm::default());
        let msi = DeviceMsi {
            routes: Arc::new(GsiRoutes::new(vm)),
            base: 24,
            irqfds: vec![EventFd::new(0).unwrap()],
        };
        let e = msi.trigger(3).unwrap_err();
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<VectorError>());
        assert!(
            matches!(
                inner,
                Some(VectorError {
                    vector: 3,
                    vectors: 1
                })
            ),
            "{e}"
        );
        msi.set_vector(
            0,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 1,
            }),
        )
        .unwrap();
        assert_eq!(msi.routes.len(), 25);
        msi.routes.clear(24, 1).unwrap();
        assert_eq!(msi.routes.len(), 24);
    }
}
