//! The device manager without a guest or KVM: a [`FakeVm`] records irqfds, ioeventfds and the
//! routing table, and can refuse the n-th registration; the event loop is a real
//! event-manager.

use std::sync::{Arc, Mutex};

use devices::pci::hotplug::B0EJ;
use devices::virtio::{ActivateError, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber};
use proptest::prelude::*;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::vm_ops::fake::{FakeVm, Registered};
use super::*;

/// A virtio device with `queues` queues that counts its releases.
struct FakeDevice {
    sizes: Vec<u16>,
    released: Arc<Mutex<usize>>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        devices::virtio::types::BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        1 << devices::virtio::VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, _: u64) {}
    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(
        &mut self,
        _: GuestMemory,
        _: Arc<dyn VirtioInterrupt>,
        _: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) -> bool {
        true
    }
}

impl MutEventSubscriber for FakeDevice {
    fn process(&mut self, _: Events, _: &mut EventOps) {}
    fn init(&mut self, _: &mut EventOps) {}
}

impl Pluggable for FakeDevice {
    fn release(&mut self) {
        *self.released.lock().unwrap() += 1;
    }
}

struct Rig {
    vm: Arc<FakeVm>,
    dm: DeviceManager,
    em: EventManager<Subscriber>,
    released: Arc<Mutex<usize>>,
}

fn rig() -> Rig {
    let vm = Arc::new(FakeVm::default());
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let dm = DeviceManager::new(vm.clone(), mem, 256 << 20, &wake).unwrap();
    Rig {
        vm,
        dm,
        em: EventManager::new().unwrap(),
        released: Arc::new(Mutex::new(0)),
    }
}

impl Rig {
    fn device(&self, queues: usize) -> Arc<Mutex<FakeDevice>> {
        Arc::new(Mutex::new(FakeDevice {
            sizes: vec![256; queues],
            released: self.released.clone(),
        }))
    }

    fn plug(&mut self, id: PciId, queues: usize) -> Result<u8, DeviceError> {
        let d = self.device(queues);
        self.dm.plug(id, d, DeviceConfig::Boot, &mut self.em, true)
    }

    fn baseline(&self) -> (Usage, Registered) {
        (self.dm.usage(), self.vm.registered())
    }
}

#[test]
fn plug_takes_and_remove_gives_back() {
    let mut r = rig();
    let (usage0, regs0) = r.baseline();
    assert_eq!(usage0.slots, 1, "the host bridge");
    assert_eq!(regs0.irqfds.len(), 1, "the GED's interrupt");
    let slot = r.plug(PciId::Disk(1), 2).unwrap();
    assert_eq!(slot, 1);
    let u = r.dm.usage();
    assert_eq!(
        (u.slots, u.gsis, u.bars),
        (2, 3, 1),
        "2 queues + config vector"
    );
    assert_eq!(r.vm.registered().irqfds.len(), 1 + 3);
    assert_eq!(r.vm.registered().ioevents.len(), 2);
    assert_eq!(r.dm.state(PciId::Disk(1)), Some(PlugState::Announced));
    assert!(matches!(
        r.plug(PciId::Disk(1), 1),
        Err(DeviceError::Plugged(PciId::Disk(1)))
    ));
    r.dm.remove(PciId::Disk(1), &mut r.em).unwrap();
    assert_eq!(r.baseline(), (usage0, regs0));
    assert_eq!(
        *r.released.lock().unwrap(),
        1,
        "the removed one (the refused duplicate was never taken)"
    );
    assert!(matches!(
        r.dm.remove(PciId::Disk(1), &mut r.em),
        Err(DeviceError::NotPlugged(_))
    ));
}

#[test]
fn a_failed_plug_leaves_nothing_behind() {
    // Refuse each registration in turn (2 queues: 3 irqfds, then 2 notifiers).
    for n in 0..5 {
        let mut r = rig();
        let before = r.baseline();
        *r.vm.fail_after.lock().unwrap() = Some(n);
        let e = r.plug(PciId::Nic(0), 2).unwrap_err();
        assert!(matches!(e, DeviceError::Kvm(..)), "{e}");
        assert_eq!(r.baseline(), before, "after refusing registration {n}");
        assert_eq!(r.dm.state(PciId::Nic(0)), None);
        // And the manager still works.
        r.plug(PciId::Nic(0), 2).unwrap();
    }
}

#[test]
fn slots_and_gsis_run_out_cleanly_and_come_back() {
    let mut r = rig();
    let before = r.baseline();
    let mut plugged = Vec::new();
    for unit in 0.. {
        match r.plug(PciId::Disk(unit), 1) {
            Ok(_) => plugged.push(unit),
            Err(e) => {
                assert!(
                    matches!(e, DeviceError::Exhausted(Resource::PciSlots)),
                    "{e}"
                );
                break;
            }
        }
    }
    assert_eq!(plugged.len(), 31);
    for unit in plugged {
        r.dm.remove(PciId::Disk(unit), &mut r.em).unwrap();
    }
    assert_eq!(r.baseline(), before);
    // 4072 GSIs above the IOAPIC pins: a device with 2047 queues (2048 vectors) fits once.
    let big = r.plug(PciId::Nic(0), 2047);
    assert!(big.is_err(), "virtio-pci limits queues: {big:?}");
}

#[test]
fn the_guest_ejects_only_removable_devices() {
    let mut r = rig();
    let before = r.baseline();
    let disk = r.plug(PciId::Disk(0), 1).unwrap();
    let console = {
        let d = r.device(2);
        r.dm.plug(PciId::Console(0), d, DeviceConfig::Boot, &mut r.em, false)
            .unwrap()
    };
    r.dm.request_removal(PciId::Disk(0)).unwrap();
    assert!(matches!(
        r.dm.request_removal(PciId::Console(0)),
        Err(DeviceError::NotRemovable(_))
    ));
    assert_eq!(r.dm.state(PciId::Disk(0)), Some(PlugState::Removing));
    // The guest's _EJ0 writes B0EJ: both slots, and one that is empty.
    let bits: u32 = (1 << disk) | (1 << console) | (1 << 9);
    let mmio = r.dm.mmio();
    let wrote = mmio
        .read()
        .unwrap()
        .write(hotplug_aml::PCI_HOTPLUG_ADDR + B0EJ, &bits.to_le_bytes());
    assert!(wrote);
    let events = r.dm.take_events(&mut r.em);
    assert_eq!(events, vec![DeviceEvent::Ejected(PciId::Disk(0))]);
    assert_eq!(r.dm.state(PciId::Console(0)), Some(PlugState::Present));
    r.dm.remove(PciId::Console(0), &mut r.em).unwrap();
    assert_eq!(r.baseline(), before);
}

/// A disk present at boot was never announced, yet the guest may eject it (mconsole `remove`);
/// once it is gone its slot is not ejectable, whatever is plugged there next.
#[test]
fn a_device_plugged_at_boot_can_be_ejected_once() {
    let mut r = rig();
    let before = r.baseline();
    let eject = |r: &mut Rig, slot: u8| {
        let wrote = r.dm.mmio().read().unwrap().write(
            hotplug_aml::PCI_HOTPLUG_ADDR + B0EJ,
            &(1u32 << slot).to_le_bytes(),
        );
        assert!(wrote);
        r.dm.take_events(&mut r.em)
    };
    let slot = {
        let d = r.device(1);
        r.dm.plug(PciId::Disk(0), d, DeviceConfig::Boot, &mut r.em, false)
            .unwrap()
    };
    assert_eq!(r.dm.state(PciId::Disk(0)), Some(PlugState::Present));
    r.dm.request_removal(PciId::Disk(0)).unwrap();
    assert_eq!(
        eject(&mut r, slot),
        vec![DeviceEvent::Ejected(PciId::Disk(0))]
    );
    assert_eq!(r.baseline(), before);
    // The slot is reused by a console, which the guest cannot eject.
    let again = {
        let d = r.device(2);
        r.dm.plug(PciId::Console(0), d, DeviceConfig::Boot, &mut r.em, false)
            .unwrap()
    };
    assert_eq!(again, slot);
    assert_eq!(eject(&mut r, slot), vec![]);
    assert_eq!(r.dm.state(PciId::Console(0)), Some(PlugState::Present));
}

#[test]
fn configs_are_what_a_rebuilt_machine_plugs() {
    let mut r = rig();
    let spec = ubd::parse_ubd("1=/tmp/a.img").unwrap();
    let ubd::UbdOption::Device(spec) = spec else {
        panic!("a device spec")
    };
    let d = r.device(1);
    r.dm.plug(
        PciId::Disk(1),
        d,
        DeviceConfig::Disk(spec.clone()),
        &mut r.em,
        true,
    )
    .unwrap();
    r.plug(PciId::Console(0), 2).unwrap();
    assert_eq!(
        r.dm.configs(),
        vec![(PciId::Disk(1), DeviceConfig::Disk(spec))]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    /// Thousands of plug/remove cycles, several devices at a time, some refused part-way:
    /// every resource ends where it started.
    #[test]
    fn thousands_of_cycles_end_at_baseline(
        ops in proptest::collection::vec((0usize..6, 1usize..5, 0usize..12), 2500..3000)
    ) {
        let mut r = rig();
        let before = r.baseline();
        let mut live = std::collections::BTreeSet::new();
        for (unit, queues, fail) in ops {
            let id = PciId::Disk(unit);
            if live.remove(&unit) {
                r.dm.remove(id, &mut r.em).unwrap();
                continue;
            }
            // One attempt in four is refused at a random registration.
            if fail < 3 {
                *r.vm.fail_after.lock().unwrap() = Some(fail * 2);
            }
            match r.plug(id, queues) {
                Ok(_) => {
                    live.insert(unit);
                }
                Err(e) => prop_assert!(matches!(e, DeviceError::Kvm(..)), "{}", e),
            }
            *r.vm.fail_after.lock().unwrap() = None;
        }
        for unit in live {
            r.dm.remove(PciId::Disk(unit), &mut r.em).unwrap();
        }
        prop_assert_eq!(r.baseline(), before);
    }
}
