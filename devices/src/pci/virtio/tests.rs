use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::pci::config::{reg, COMMAND_MEMORY};
use crate::pci::msix::fake::{Call, FakeRouting};
use crate::pci::msix::{MsiMessage, MSIX_ENABLE};
use crate::virtio::{status, ActivateError, InterruptKind, VIRTIO_F_VERSION_1};

const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << common::VIRTIO_RING_F_EVENT_IDX | 1;
const BAR: u64 = 0x1_0000_0000;

#[derive(Default)]
struct FakeDev {
    acked: Option<u64>,
    activated: Option<Vec<(u16, u64, u16, bool)>>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    notify: Vec<Arc<EventFd>>,
    resets: usize,
    fail_activate: bool,
    cfg: [u8; 8],
}

impl VirtioDevice for FakeDev {
    fn device_type(&self) -> u32 {
        types::BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64, 16]
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| self.cfg.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.cfg.get_mut(o..o + data.len()))
        {
            dst.copy_from_slice(data);
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::MissingQueues { got: 0, need: 2 });
        }
        self.activated = Some(
            queues
                .iter()
                .map(|q| {
                    (
                        q.index,
                        q.queue.desc_table(),
                        q.queue.size(),
                        q.queue.event_idx_enabled(),
                    )
                })
                .collect(),
        );
        self.notify = queues.into_iter().map(|q| q.notify).collect();
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.resets += 1;
        self.activated = None;
        self.notify.clear();
        true
    }
}

struct Rig {
    fake: Arc<Mutex<FakeDev>>,
    dev: VirtioPciDevice,
    routing: Arc<FakeRouting>,
}

fn rig() -> Rig {
    let fake = Arc::new(Mutex::new(FakeDev::default()));
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let routing = Arc::new(FakeRouting::default());
    let dev = VirtioPciDevice::new(fake.clone(), mem, routing.clone(), BAR).unwrap();
    Rig { fake, dev, routing }
}

impl Rig {
    fn w(&mut self, off: u64, val: u64, len: usize) {
        self.dev.write(BAR, off, &val.to_le_bytes()[..len]);
    }
    fn r(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read(BAR, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn status(&mut self) -> u8 {
        self.r(0x14, 1) as u8
    }
    fn cfg_r32(&mut self, off: usize) -> u32 {
        let mut b = [0; 4];
        self.dev.read_config(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn negotiate(&mut self, features: u64) {
        self.w(0x14, u64::from(status::ACKNOWLEDGE), 1);
        self.w(0x14, u64::from(status::ACKNOWLEDGE | status::DRIVER), 1);
        self.w(0x08, 0, 4);
        self.w(0x0c, features & 0xffff_ffff, 4);
        self.w(0x08, 1, 4);
        self.w(0x0c, features >> 32, 4);
        self.w(
            0x14,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
            1,
        );
    }
    fn setup_queue(&mut self, q: u16, base: u64, size: u16) {
        self.w(0x16, q.into(), 2);
        self.w(0x18, size.into(), 2);
        self.w(0x20, base, 4);
        self.w(0x24, 0, 4);
        self.w(0x28, base + 0x400, 8);
        self.w(0x30, base + 0x800, 8);
        self.w(0x1c, 1, 2);
    }
    fn driver_ok(&mut self) {
        let s = self.status() | status::DRIVER_OK;
        self.w(0x14, s.into(), 1);
    }
    fn full_init(&mut self) {
        self.negotiate(FEATURES);
        self.setup_queue(0, 0x1000, 32);
        self.setup_queue(1, 0x2000, 16);
        self.driver_ok();
    }
}

#[test]
fn pci_identity_and_capabilities() {
    let mut rig = rig();
    assert_eq!(rig.cfg_r32(0), 0x1042_1af4);
    assert_eq!(rig.cfg_r32(8), 0x0180_0001);
    assert_eq!(rig.cfg_r32(0x3c) >> 8 & 0xff, 0, "no INTx pin");
    // BAR sizing.
    rig.dev.write_config(0x10, &[0xff; 4]);
    rig.dev.write_config(0x14, &[0xff; 4]);
    assert_eq!(rig.cfg_r32(0x10), !(BAR_SIZE as u32 - 1) | 4);
    assert_eq!(rig.cfg_r32(0x14), u32::MAX);
    rig.dev.write_config(0x10, &(BAR as u32).to_le_bytes());
    rig.dev
        .write_config(0x14, &((BAR >> 32) as u32).to_le_bytes());
    // Walk the capability list.
    let mut found = Vec::new();
    let mut p = rig.cfg_r32(reg::CAP_PTR) as usize & 0xff;
    while p != 0 {
        let head = rig.cfg_r32(p);
        let id = head as u8;
        if id == CAP_VENDOR {
            let cfg_type = (head >> 24) as u8;
            let bar = rig.cfg_r32(p + 4) as u8;
            let off = rig.cfg_r32(p + 8);
            let len = rig.cfg_r32(p + 12);
            found.push((cfg_type, bar, off, len));
            if cfg_type == CAP_NOTIFY_CFG {
                assert_eq!((head >> 16) as u8, 20);
                assert_eq!(rig.cfg_r32(p + 16), NOTIFY_OFF_MULTIPLIER);
            }
        } else {
            assert_eq!(id, msix::MSIX_CAP_ID);
            assert_eq!(head >> 16 & 0x7ff, 2, "3 vectors");
            assert_eq!(rig.cfg_r32(p + 4), MSIX_TABLE_OFFSET as u32);
            assert_eq!(rig.cfg_r32(p + 8), MSIX_PBA_OFFSET as u32);
            found.push((0x11, 0, 0, 0));
        }
        p = (head >> 8) as usize & 0xff;
    }
    assert_eq!(
        found,
        vec![
            (CAP_COMMON_CFG, 0, 0, 0x1000),
            (CAP_ISR_CFG, 0, 0x1000, 0x1000),
            (CAP_DEVICE_CFG, 0, 0x2000, 0x1000),
            (CAP_NOTIFY_CFG, 0, 0x3000, 8),
            (CAP_PCI_CFG, 0, 0, 0),
            (0x11, 0, 0, 0),
        ]
    );
}

#[test]
fn pci_cfg_capability_window() {
    let mut rig = rig();
    let cap = rig.dev.pci_cfg_cap;
    assert_eq!(rig.cfg_r32(cap) & 0xff00_00ff, 0x0500_0009);
    // num_queues through the window.
    rig.dev.write_config(cap + 8, &0x12u32.to_le_bytes());
    rig.dev.write_config(cap + 12, &2u32.to_le_bytes());
    assert_eq!(rig.cfg_r32(cap + 8), 0x12);
    assert_eq!(rig.cfg_r32(cap + 16) & 0xffff, 2);
    // device_status write through the window.
    rig.dev.write_config(cap + 8, &0x14u32.to_le_bytes());
    rig.dev.write_config(cap + 12, &1u32.to_le_bytes());
    rig.dev.write_config(cap + 16, &[status::ACKNOWLEDGE]);
    assert_eq!(rig.status(), status::ACKNOWLEDGE);
    assert_eq!(rig.dev.device_status(), status::ACKNOWLEDGE);
    // Bad selections read zero and write nothing.
    for (bar, off, len) in [
        (1u8, 0x14u32, 1u32),
        (0, 0x15, 2),
        (0, 0x14, 3),
        (0, 0x7fff, 4),
    ] {
        rig.dev.write_config(cap + 4, &[bar]);
        rig.dev.write_config(cap + 8, &off.to_le_bytes());
        rig.dev.write_config(cap + 12, &len.to_le_bytes());
        rig.dev.write_config(cap + 16, &[0xff; 4]);
        assert_eq!(rig.cfg_r32(cap + 16), 0);
    }
    assert_eq!(rig.status(), status::ACKNOWLEDGE);
}

#[test]
fn feature_negotiation() {
    let mut rig = rig();
    rig.w(0x00, 0, 4);
    assert_eq!(rig.r(0x04, 4), FEATURES & 0xffff_ffff);
    rig.w(0x00, 1, 4);
    assert_eq!(rig.r(0x04, 4), FEATURES >> 32);
    rig.w(0x00, 7, 4);
    assert_eq!(rig.r(0x04, 4), 0);
    // Unoffered feature: FEATURES_OK refused.
    rig.negotiate(FEATURES | 1 << 3);
    assert_eq!(rig.status() & status::FEATURES_OK, 0);
    assert_eq!(rig.fake.lock().unwrap().acked, None);
    // Without VERSION_1: refused.
    rig.negotiate(1);
    assert_eq!(rig.status() & status::FEATURES_OK, 0);
    // A subset with VERSION_1: accepted, and features freeze.
    rig.negotiate(1 << VIRTIO_F_VERSION_1 | 1);
    assert_ne!(rig.status() & status::FEATURES_OK, 0);
    assert_eq!(
        rig.fake.lock().unwrap().acked,
        Some(1 << VIRTIO_F_VERSION_1 | 1)
    );
    rig.w(0x08, 0, 4);
    rig.w(0x0c, 0x20, 4);
    assert_eq!(rig.r(0x0c, 4), 1);
}

#[test]
fn queue_setup_and_activation() {
    let mut rig = rig();
    assert_eq!(rig.r(0x12, 2), 2);
    rig.w(0x16, 0, 2);
    assert_eq!(rig.r(0x18, 2), 64);
    rig.w(0x16, 1, 2);
    assert_eq!(rig.r(0x18, 2), 16);
    assert_eq!(rig.r(0x1e, 2), 1);
    rig.w(0x16, 9, 2);
    assert_eq!(rig.r(0x18, 2), 0, "missing queue has size 0");
    rig.w(0x18, 8, 2);
    rig.full_init();
    assert!(rig.dev.is_activated());
    assert_eq!(rig.status() & status::NEEDS_RESET, 0);
    let fake = rig.fake.lock().unwrap();
    assert_eq!(
        fake.activated,
        Some(vec![(0, 0x1000, 32, true), (1, 0x2000, 16, true)])
    );
    drop(fake);
    // Address halves read back.
    rig.w(0x16, 1, 2);
    assert_eq!(rig.r(0x28, 8), 0x2400);
    assert_eq!(rig.r(0x2c, 4), 0);
    assert_eq!(rig.r(0x30, 4), 0x2800);
    // Frozen after DRIVER_OK.
    rig.w(0x20, 0x3000, 8);
    assert_eq!(rig.r(0x20, 8), 0x2000);
    // Notifications: ioeventfd addresses, and the fallback through the bus.
    let fds = rig.dev.ioeventfds(BAR);
    assert_eq!(fds[0].0, BAR + 0x3000);
    assert_eq!(fds[1].0, BAR + 0x3004);
    rig.w(0x3004, 1, 2);
    rig.w(0x3008, 1, 2);
    rig.w(0x3001, 1, 2);
    assert_eq!(rig.fake.lock().unwrap().notify[1].read().unwrap(), 1);
    assert!(rig.fake.lock().unwrap().notify[0].read().is_err());
}

#[test]
fn bad_queue_sets_needs_reset() {
    let mut rig = rig();
    rig.negotiate(FEATURES);
    rig.setup_queue(0, 0xfff_0000, 32);
    rig.driver_ok();
    assert!(!rig.dev.is_activated());
    assert_ne!(rig.status() & status::NEEDS_RESET, 0);
    // Non-power-of-two size, and a misaligned ring.
    for (size, base) in [(24, 0x1000), (32, 0x1001)] {
        let mut rig = super::tests::rig();
        rig.negotiate(FEATURES);
        rig.setup_queue(0, base, size);
        rig.driver_ok();
        assert!(!rig.dev.is_activated());
        assert_ne!(rig.status() & status::NEEDS_RESET, 0);
    }
    // Failed activation.
    let mut rig = super::tests::rig();
    rig.fake.lock().unwrap().fail_activate = true;
    rig.full_init();
    assert!(!rig.dev.is_activated());
    assert_ne!(rig.status() & status::NEEDS_RESET, 0);
    // Reset clears it.
    rig.w(0x14, 0, 1);
    assert_eq!(rig.status(), 0);
}

#[test]
fn status_rules_and_reset() {
    let mut rig = rig();
    // DRIVER_OK without FEATURES_OK is dropped.
    rig.w(0x14, 0x7, 1);
    assert_eq!(rig.status(), 0x3);
    // Clearing bits is ignored.
    rig.w(0x14, 0x1, 1);
    assert_eq!(rig.status(), 0x3);
    rig.w(0x14, 0, 1);
    rig.full_init();
    rig.w(0x10, 0, 2);
    rig.w(0x16, 1, 2);
    rig.w(0x1a, 1, 2);
    assert_eq!(rig.r(0x1a, 2), 1);
    rig.w(0x14, 0, 1);
    assert_eq!(rig.status(), 0);
    assert!(!rig.dev.is_activated());
    assert_eq!(rig.fake.lock().unwrap().resets, 1);
    assert_eq!(rig.r(0x10, 2), u64::from(NO_VECTOR));
    rig.w(0x16, 1, 2);
    assert_eq!(rig.r(0x1a, 2), u64::from(NO_VECTOR));
    assert_eq!(rig.r(0x1c, 2), 0);
    assert_eq!(rig.r(0x20, 8), 0);
    // And it comes back up.
    rig.full_init();
    assert!(rig.dev.is_activated());
}

#[test]
fn interrupts_through_msix() {
    let mut rig = rig();
    rig.negotiate(FEATURES);
    rig.w(0x10, 2, 2);
    rig.w(0x16, 0, 2);
    rig.w(0x1a, 0, 2);
    rig.w(0x16, 1, 2);
    rig.w(0x1a, 7, 2);
    assert_eq!(rig.r(0x1a, 2), u64::from(NO_VECTOR), "out of range");
    rig.w(0x1a, 1, 2);
    rig.setup_queue(0, 0x1000, 64);
    rig.setup_queue(1, 0x2000, 16);
    rig.driver_ok();
    // Program vectors 0..3 and enable MSI-X through config space.
    for v in 0..3u64 {
        rig.w(MSIX_TABLE_OFFSET + 16 * v, 0xfee0_0000, 8);
        rig.w(MSIX_TABLE_OFFSET + 16 * v + 8, 0x30 + v, 4);
        rig.w(MSIX_TABLE_OFFSET + 16 * v + 12, 0, 4);
    }
    assert!(rig.routing.take().is_empty());
    let ctl = rig.dev.msix_cap + 2;
    rig.dev.write_config(ctl, &MSIX_ENABLE.to_le_bytes());
    let msg = |d| {
        Some(MsiMessage {
            address: 0xfee0_0000,
            data: d,
        })
    };
    assert_eq!(
        rig.routing.take(),
        vec![
            Call::Set(0, msg(0x30)),
            Call::Set(1, msg(0x31)),
            Call::Set(2, msg(0x32))
        ]
    );
    let irq = rig.fake.lock().unwrap().interrupt.clone().unwrap();
    irq.trigger(InterruptKind::Queue(1)).unwrap();
    irq.trigger(InterruptKind::Queue(0)).unwrap();
    irq.trigger(InterruptKind::Queue(9)).unwrap();
    let gen = rig.r(0x15, 1);
    irq.trigger(InterruptKind::Config).unwrap();
    assert_eq!(rig.r(0x15, 1), gen + 1);
    assert_eq!(
        rig.routing.take(),
        vec![Call::Fire(1), Call::Fire(0), Call::Fire(2)]
    );
    assert_eq!(rig.r(ISR_OFFSET, 1), 3);
    assert_eq!(rig.r(ISR_OFFSET, 1), 0);
    // Mask vector 1: pending in the PBA, delivered on unmask.
    rig.w(MSIX_TABLE_OFFSET + 16 + 12, 1, 4);
    irq.trigger(InterruptKind::Queue(1)).unwrap();
    assert_eq!(rig.r(MSIX_PBA_OFFSET, 8), 2);
    rig.w(MSIX_TABLE_OFFSET + 16 + 12, 0, 4);
    assert_eq!(
        rig.routing.take(),
        vec![Call::Set(1, None), Call::Set(1, msg(0x31)), Call::Fire(1)]
    );
    assert_eq!(rig.r(MSIX_PBA_OFFSET, 8), 0);
    // needs_reset from the device.
    irq.needs_reset();
    assert_ne!(rig.status() & status::NEEDS_RESET, 0);
}

#[test]
fn device_config_passthrough_and_bar_move() {
    let mut rig = rig();
    rig.w(DEVICE_CFG_OFFSET + 2, 0xabcd, 2);
    assert_eq!(rig.r(DEVICE_CFG_OFFSET, 4), 0xabcd_0000);
    assert_eq!(rig.dev.bar_address(), BAR);
    rig.dev
        .write_config(reg::COMMAND, &COMMAND_MEMORY.to_le_bytes());
    rig.dev.write_config(0x10, &0x8000u32.to_le_bytes());
    let mv = rig.dev.write_config(0x14, &2u32.to_le_bytes()).unwrap();
    assert_eq!((mv.old, mv.new, mv.size), (BAR, 0x2_0000_8000, BAR_SIZE));
    assert_eq!(rig.dev.bar_address(), 0x2_0000_8000);
    assert_eq!(rig.dev.ioeventfds(mv.new)[0].0, 0x2_0000_b000);
}

#[test]
fn rejects_bad_devices() {
    struct NoQueues;
    impl VirtioDevice for NoQueues {
        fn device_type(&self) -> u32 {
            3
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[]
        }
        fn features(&self) -> u64 {
            0
        }
        fn ack_features(&mut self, _: u64) {}
        fn read_config(&self, _: u64, _: &mut [u8]) {}
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
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let r = Arc::new(FakeRouting::default());
    assert!(matches!(
        VirtioPciDevice::new(Arc::new(Mutex::new(NoQueues)), mem.clone(), r.clone(), BAR),
        Err(VirtioPciError::QueueCount(0))
    ));
    let fake = Arc::new(Mutex::new(FakeDev::default()));
    assert!(matches!(
        VirtioPciDevice::new(fake, mem, r, BAR + 0x1000),
        Err(VirtioPciError::Config(_))
    ));
}

proptest! {
    #[test]
    fn random_register_traffic_never_panics(ops in proptest::collection::vec(
        (0u8..4, 0u64..0x9000, any::<u64>(), 0usize..10), 0..200)) {
        let mut rig = rig();
        // Start from a live device half the time, so that post-DRIVER_OK paths are hit.
        if ops.len() % 2 == 0 {
            rig.full_init();
        }
        for (kind, off, val, len) in ops {
            let mut buf = vec![0u8; len];
            let n = len.min(8);
            buf[..n].copy_from_slice(&val.to_le_bytes()[..n]);
            match kind {
                0 => rig.dev.write(BAR, off, &buf),
                1 => rig.dev.read(BAR, off, &mut buf),
                2 => { rig.dev.write_config((off % 0x110) as usize, &buf); }
                _ => {
                    // A device raising interrupts concurrently with the driver's traffic.
                    let irq = rig.dev.interrupt();
                    let _ = irq.trigger(InterruptKind::Queue((val % 4) as u16));
                    let _ = irq.trigger(InterruptKind::Config);
                }
            }
        }
        // Whatever happened, every delivered vector was routed first.
        let mut routed = [false; 4];
        for c in rig.routing.take() {
            match c {
                Call::Set(v, m) => routed[usize::from(v)] = m.is_some(),
                Call::Fire(v) => prop_assert!(routed[usize::from(v)]),
            }
        }
        // A reset always brings the status back to 0.
        rig.w(0x14, 0, 1);
        prop_assert_eq!(rig.status(), 0);
    }
}

// The sequence Linux's virtio_pci_modern driver goes through, over the real buses.
#[test]
fn linux_like_probe_over_ports_and_bar() {
    use crate::bus::Bus;
    use crate::pci::host::PciRoot;
    use crate::pci::msix::MSIX_FUNCTION_MASK;

    let fake = Arc::new(Mutex::new(FakeDev::default()));
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let routing = Arc::new(FakeRouting::default());
    let pci = Arc::new(Mutex::new(
        VirtioPciDevice::new(fake.clone(), mem, routing.clone(), BAR).unwrap(),
    ));
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let slot = root.lock().unwrap().insert(pci.clone(), None).unwrap();
    let mut pio = Bus::new();
    pio.insert(root.clone(), 0xcf8, 8).unwrap();
    let mut mmio = Bus::new();
    mmio.insert(pci.clone(), BAR, BAR_SIZE).unwrap();

    let cfg_addr = |reg: u32| (1u32 << 31 | u32::from(slot) << 11 | reg).to_le_bytes();
    let cfg_r = |reg: u32, len: usize| {
        pio.write(0xcf8, &cfg_addr(reg & !3));
        let mut b = [0u8; 4];
        pio.read(0xcfc + u64::from(reg & 3), &mut b[..len]);
        u32::from_le_bytes(b)
    };
    let cfg_w = |reg: u32, v: u32, len: usize| {
        pio.write(0xcf8, &cfg_addr(reg & !3));
        pio.write(0xcfc + u64::from(reg & 3), &v.to_le_bytes()[..len]);
    };
    let bar_w = |off: u64, v: u64, len: usize| {
        assert!(mmio.write(BAR + off, &v.to_le_bytes()[..len]));
    };
    let bar_r = |off: u64, len: usize| {
        let mut b = [0u8; 8];
        assert!(mmio.read(BAR + off, &mut b[..len]));
        u64::from_le_bytes(b)
    };

    assert_eq!(cfg_r(0, 2), 0x1af4);
    assert_eq!(cfg_r(2, 2), 0x1042);
    assert_eq!(cfg_r(0x0e, 1), 0, "single-function type-0 header");
    // Size BAR 0 with decode off, then restore and enable memory + bus master.
    cfg_w(4, 0, 2);
    cfg_w(0x10, u32::MAX, 4);
    assert_eq!(cfg_r(0x10, 4), !(BAR_SIZE as u32 - 1) | 4);
    cfg_w(0x10, BAR as u32, 4);
    cfg_w(0x14, u32::MAX, 4);
    assert_eq!(cfg_r(0x14, 4), u32::MAX);
    cfg_w(0x14, (BAR >> 32) as u32, 4);
    cfg_w(4, 0x6, 2);
    assert_eq!(cfg_r(4, 2), 0x6);
    // Find the MSI-X capability and enable it function-masked, as Linux does.
    let mut p = cfg_r(0x34, 1);
    while cfg_r(p, 1) != 0x11 {
        p = cfg_r(p + 1, 1);
        assert_ne!(p, 0);
    }
    assert_eq!(cfg_r(p + 2, 2) & 0x7ff, 2);
    cfg_w(p + 2, u32::from(MSIX_ENABLE | MSIX_FUNCTION_MASK), 2);
    for v in 0..3u64 {
        bar_w(MSIX_TABLE_OFFSET + 16 * v, 0xfee0_0000, 4);
        bar_w(MSIX_TABLE_OFFSET + 16 * v + 4, 0, 4);
        bar_w(MSIX_TABLE_OFFSET + 16 * v + 8, 0x40 + v, 4);
        bar_w(MSIX_TABLE_OFFSET + 16 * v + 12, 0, 4);
    }
    cfg_w(p + 2, u32::from(MSIX_ENABLE), 2);
    assert_eq!(routing.take().len(), 3);
    // virtio init.
    bar_w(0x14, 0, 1);
    assert_eq!(bar_r(0x14, 1), 0);
    bar_w(0x14, 1, 1);
    bar_w(0x14, 3, 1);
    bar_w(0x00, 1, 4);
    let high = bar_r(0x04, 4);
    bar_w(0x00, 0, 4);
    let low = bar_r(0x04, 4);
    bar_w(0x08, 0, 4);
    bar_w(0x0c, low, 4);
    bar_w(0x08, 1, 4);
    bar_w(0x0c, high, 4);
    bar_w(0x14, 0xb, 1);
    assert_eq!(bar_r(0x14, 1), 0xb);
    bar_w(0x10, 0, 2);
    assert_eq!(bar_r(0x10, 2), 0);
    for q in 0..bar_r(0x12, 2) {
        bar_w(0x16, q, 2);
        let size = bar_r(0x18, 2);
        assert!(size > 0);
        assert_eq!(bar_r(0x1c, 2), 0);
        let base = 0x1000 * (q + 1);
        bar_w(0x20, base, 4);
        bar_w(0x24, 0, 4);
        bar_w(0x28, base + 0x400, 4);
        bar_w(0x2c, 0, 4);
        bar_w(0x30, base + 0x800, 4);
        bar_w(0x34, 0, 4);
        bar_w(0x1a, q + 1, 2);
        assert_eq!(bar_r(0x1a, 2), q + 1);
        assert_eq!(bar_r(0x1e, 2), q);
    }
    for q in 0..2 {
        bar_w(0x16, q, 2);
        bar_w(0x1c, 1, 2);
    }
    bar_w(0x14, 0xf, 1);
    assert_eq!(bar_r(0x14, 1), 0xf);
    assert!(pci.lock().unwrap().is_activated());
    let irq = fake.lock().unwrap().interrupt.clone().unwrap();
    irq.trigger(InterruptKind::Queue(0)).unwrap();
    irq.trigger(InterruptKind::Config).unwrap();
    assert_eq!(routing.take(), vec![Call::Fire(1), Call::Fire(0)]);
    // Unplug: the slot reads all ones again.
    root.lock().unwrap().remove(slot).unwrap();
    assert_eq!(cfg_r(0, 4), u32::MAX);
}
