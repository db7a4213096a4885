//! A running machine: its vCPUs, its devices (through the [`DeviceManager`]), its lines, and
//! the configuration it would be rebuilt from. The controller changes it only through the
//! methods here.

use std::sync::{Arc, Mutex};

use devices::chan::{ChanContext, Channel, ChannelSpec, LineClass};
use devices::legacy::i8042::{self, I8042};
use devices::legacy::serial::SerialDevice;
use devices::virtio::console::{ConsoleError, ConsoleSet};
use devices::virtio::fs::Fs;

use crate::backends::{open_disk, open_nic, NicError};
use crate::config::Config;
use crate::control::{ControlError, DeviceId};
use crate::device_manager::{
    locked, DeviceConfig, DeviceEvent, DeviceManager, PciId, PlugState, Pluggable, Subscriber,
};
use crate::exit::{ExitState, VmExit};
use crate::hostfs_shares;
use crate::vstate::vcpu::{PauseError, Vcpus};
use crate::vstate::vm::Vm;
use event_manager::SubscriberOps;

/// What an attach did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new device, announced to the guest: done once its driver has started it.
    Announced,
    /// An existing NIC whose backend had failed got the new one: done now.
    BackendReplaced,
}

/// Everything one boot of the guest runs on.
pub struct Machine {
    /// The configuration the machine was built from, with the lines changed at run time.
    pub(crate) config: Config,
    pub(crate) exit: Arc<ExitState>,
    pub(crate) devices: DeviceManager,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) serials: Vec<(u32, Arc<Mutex<SerialDevice>>)>,
    /// `con0`'s own device and the multiport device of `con1` and up.
    pub(crate) consoles: ConsoleSet,
    pub(crate) chan: ChanContext,
    pub(crate) umid: String,
    pub(crate) vcpus: Vcpus,
    /// The guest clock (kvmclock, ns) while paused.
    pub(crate) frozen_clock: Option<u64>,
    // Dropped after the vCPUs (see `Vm::new`).
    pub(crate) vm: Vm,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.vcpus)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Why the machine stops, once it does.
    pub fn exit(&self) -> &Arc<ExitState> {
        &self.exit
    }

    /// Stops the machine for `why` (the first reason wins).
    pub fn request_exit(&self, why: VmExit) {
        self.exit.set(why);
    }

    /// Stops every vCPU (the machine can then be dropped).
    pub fn stop(&mut self) {
        self.vcpus.stop();
    }

    /// Pauses every vCPU; fails (and leaves the machine running) unless all left KVM_RUN.
    /// The guest's clock stops with them (as QEMU's `stop` does): kvmclock is read now and
    /// set back to that value on [`Machine::resume`].
    pub fn pause(&mut self) -> Result<(), PauseError> {
        self.vcpus.pause()?;
        if self.frozen_clock.is_some() {
            // Paused already: the clock stands where the first pause left it.
            return Ok(());
        }
        match self.vm.fd.get_clock() {
            Ok(c) => self.frozen_clock = Some(c.clock),
            Err(e) => log::warn!("the guest clock keeps running while paused: KVM_GET_CLOCK: {e}"),
        }
        Ok(())
    }

    /// Resumes every vCPU, the guest clock where it stopped.
    pub fn resume(&mut self) {
        if let Some(clock) = self.frozen_clock.take() {
            // Only the value: with KVM_CLOCK_REALTIME, KVM would add the time paused.
            let data = kvm_bindings::kvm_clock_data {
                clock,
                ..Default::default()
            };
            if let Err(e) = self.vm.fd.set_clock(&data) {
                log::warn!("the guest clock jumps over the pause: KVM_SET_CLOCK: {e}");
            }
        }
        self.vcpus.resume();
    }

    /// Ctrl-Alt-Del on the guest keyboard.
    pub fn ctrl_alt_del(&self) {
        locked(&self.i8042).inject_scancodes(&i8042::CTRL_ALT_DEL);
    }

    /// Alt-SysRq-`key` on the guest keyboard; false for a key with no scancode.
    pub fn sysrq(&self, key: char) -> bool {
        match i8042::sysrq_scancodes(key) {
            Some(codes) => {
                locked(&self.i8042).inject_scancodes(&codes);
                true
            }
            None => false,
        }
    }

    /// Guest memory in bytes.
    pub fn memory_size(&self) -> u64 {
        self.config.mem_size
    }

    /// Plugs a disk and announces it to the guest.
    pub fn attach_disk(
        &mut self,
        spec: ubd::UbdSpec,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) -> Result<(), ControlError> {
        let id = DeviceId::Disk(spec.unit);
        self.check_free(id, PciId::Disk(spec.unit))?;
        let block =
            open_disk(&spec, self.config.ubd_sync).map_err(|e| ControlError::Disk(id, e))?;
        let pci = PciId::Disk(spec.unit);
        self.announce(id, pci, block, DeviceConfig::Disk(spec), ops)
    }

    /// Plugs a NIC and announces it to the guest. A NIC that exists keeps its backend while
    /// that works; one whose backend failed (its tap was deleted, its switch went away) gets
    /// the new one, keeping its MAC, and its link comes back: the guest has nothing to do.
    pub fn attach_nic(
        &mut self,
        index: u32,
        spec: netdev::NetSpec,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) -> Result<Attached, ControlError> {
        let id = DeviceId::Nic(index);
        if self.devices.state(PciId::Nic(index)).is_some() {
            return self
                .reattach_nic(index, spec)
                .map(|()| Attached::BackendReplaced);
        }
        let net = open_nic(index, &spec, &self.umid).map_err(|e| ControlError::Nic(id, e))?;
        self.announce(id, PciId::Nic(index), net, DeviceConfig::Nic(spec), ops)
            .map(|()| Attached::Announced)
    }

    /// Whether `spec` may be added now: its slot free and its tag unlike those of the shares
    /// plugged and of `starting` (shares whose virtiofsd is still starting).
    pub fn check_share(
        &self,
        spec: &hostfs::ShareSpec,
        starting: &[hostfs::ShareSpec],
    ) -> Result<(), ControlError> {
        let id = DeviceId::Share(spec.index);
        self.check_free(id, PciId::Share(spec.index))?;
        let mut shares = self.shares();
        shares.extend(starting.iter().cloned());
        shares.push(spec.clone());
        hostfs::check_unique_tags(&shares).map_err(|e| ControlError::ShareTag(id, e))
    }

    /// Plugs the virtio-fs device of a share whose virtiofsd is up
    /// ([`crate::hostfs_shares::open_share`]), announced to the guest; the configuration a
    /// rebuilt machine starts from has the share from now on.
    pub fn plug_share(
        &mut self,
        spec: hostfs::ShareSpec,
        fs: Fs,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) -> Result<(), ControlError> {
        // Again: the daemon started while the loop went on.
        self.check_share(&spec, &[])?;
        hostfs_shares::warnings(&spec);
        let (id, pci) = (DeviceId::Share(spec.index), PciId::Share(spec.index));
        self.announce(id, pci, fs, DeviceConfig::Share(spec.clone()), ops)?;
        self.config.add_share(spec);
        Ok(())
    }

    /// The shares plugged now, in slot order.
    fn shares(&self) -> Vec<hostfs::ShareSpec> {
        self.devices
            .configs()
            .into_iter()
            .filter_map(|(_, c)| match c {
                DeviceConfig::Share(spec) => Some(spec),
                _ => None,
            })
            .collect()
    }

    /// A share's configuration, if it is plugged.
    pub fn share_config(&self, index: u32) -> Option<hostfs::ShareSpec> {
        match self.devices.config(PciId::Share(index)) {
            Some(DeviceConfig::Share(spec)) => Some(spec),
            _ => None,
        }
    }

    fn check_free(&self, id: DeviceId, pci: PciId) -> Result<(), ControlError> {
        match self.devices.state(pci) {
            Some(_) => Err(ControlError::AlreadyConfigured(id)),
            None => Ok(()),
        }
    }

    fn announce<D: Pluggable + 'static>(
        &mut self,
        id: DeviceId,
        pci: PciId,
        device: D,
        config: DeviceConfig,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) -> Result<(), ControlError> {
        self.devices
            .plug(pci, Arc::new(Mutex::new(device)), config, ops, true)
            .map_err(|e| ControlError::Plug(id, e))?;
        Ok(())
    }

    fn reattach_nic(&mut self, index: u32, spec: netdev::NetSpec) -> Result<(), ControlError> {
        let id = DeviceId::Nic(index);
        let pci = PciId::Nic(index);
        let opened = self.devices.with_nic(pci, |net| {
            if !net.backend_failed() {
                return None;
            }
            Some(
                netdev::open_backend(&spec, net.mac())
                    .map(|backend| net.replace_backend(backend))
                    .map_err(|source| {
                        let option = spec.option_name(index);
                        ControlError::Nic(id, NicError::Backend { option, source })
                    }),
            )
        });
        match opened.flatten() {
            None => Err(ControlError::AlreadyConfigured(id)),
            Some(Err(e)) => Err(e),
            Some(Ok(())) => {
                self.devices.set_config(pci, DeviceConfig::Nic(spec));
                Ok(())
            }
        }
    }

    /// Asks the guest to eject a disk, NIC or share.
    pub fn request_removal(&mut self, id: DeviceId, pci: PciId) -> Result<(), ControlError> {
        match self.devices.state(pci) {
            None => Err(ControlError::NoSuchDevice(id)),
            Some(PlugState::Present) => self
                .devices
                .request_removal(pci)
                .map_err(|e| ControlError::Plug(id, e)),
            Some(_) => Err(ControlError::Busy(id)),
        }
    }

    /// A disk's configuration.
    pub fn disk_config(&self, unit: usize) -> Option<ubd::UbdSpec> {
        match self.devices.config(PciId::Disk(unit)) {
            Some(DeviceConfig::Disk(spec)) => Some(spec),
            _ => None,
        }
    }

    /// What the guest did with its devices (see [`DeviceManager::take_events`]). A share the
    /// guest ejected (its virtiofsd is stopped by then) is gone from the configuration a
    /// rebuilt machine starts from.
    pub fn take_device_events(
        &mut self,
        ops: &mut dyn SubscriberOps<Subscriber = Subscriber>,
    ) -> Vec<DeviceEvent> {
        let events = self.devices.take_events(ops);
        for ev in &events {
            if let DeviceEvent::Ejected(PciId::Share(index)) = ev {
                self.config.remove_share(*index);
            }
        }
        events
    }

    fn serial(&self, index: u32) -> Option<&Arc<Mutex<SerialDevice>>> {
        self.serials
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, s)| s)
    }

    /// A line's channel as it is now (`pts:/dev/pts/3`, `fd:0,fd:1`), `None` if it does not
    /// exist.
    pub fn line_description(&self, class: LineClass, index: u32) -> Option<String> {
        match class {
            LineClass::Console => self.consoles.port_description(index),
            LineClass::Serial => self.serial(index).map(|s| locked(s).channel().describe()),
        }
    }

    /// Gives a line a new channel: a serial line's channel is replaced, a console that does
    /// not exist yet is added (an existing one is refused, as UML does).
    pub fn set_line(
        &mut self,
        class: LineClass,
        index: u32,
        spec: ChannelSpec,
    ) -> Result<(), ControlError> {
        let id = DeviceId::of_line(class, index);
        match class {
            LineClass::Console => {
                // Refuse before setting the channel up: a port: line would bind for nothing.
                if self.consoles.port_ids().contains(&index) {
                    return Err(ControlError::AlreadyConfigured(id));
                }
                // A console's pts is allocated when the guest opens the new port.
                let channel = Channel::prepare(&spec, class, index, &self.chan)
                    .map_err(|e| ControlError::Line(id, e))?;
                self.consoles
                    .add_port(index, channel)
                    .map_err(|e| ControlError::Console(id, e))?;
            }
            LineClass::Serial => {
                let serial = self
                    .serial(index)
                    .ok_or(ControlError::NoSuchDevice(id))?
                    .clone();
                // A UART cannot be seen to open: its channel opens (pts announced) now.
                let channel = Channel::open_in(&spec, class, index, &self.chan)
                    .map_err(|e| ControlError::Line(id, e))?;
                locked(&serial).set_channel(channel);
            }
        }
        self.lines_mut(class).each.insert(index, spec.to_string());
        Ok(())
    }

    /// Removes console `index`.
    pub fn remove_console(&mut self, index: u32) -> Result<(), ControlError> {
        let id = DeviceId::Console(index);
        self.consoles.remove_port(index).map_err(|e| match e {
            ConsoleError::Fixed => ControlError::NotRemovable(id),
            _ => ControlError::NoSuchDevice(id),
        })?;
        self.lines_mut(LineClass::Console)
            .each
            .insert(index, "none".to_owned());
        Ok(())
    }

    fn lines_mut(&mut self, class: LineClass) -> &mut crate::config::IndexedOptions {
        match class {
            LineClass::Console => &mut self.config.con,
            LineClass::Serial => &mut self.config.ssl,
        }
    }

    /// The configuration a rebuilt machine starts from: the boot configuration with the
    /// disks and NICs plugged now (hot-plugged ones included, removed ones gone) and the
    /// lines as they were last set.
    pub fn next_config(&self) -> Config {
        let mut cfg = self.config.clone();
        cfg.ubd.clear();
        cfg.eth.clear();
        for (id, config) in self.devices.configs() {
            match (id, config) {
                (PciId::Disk(unit), DeviceConfig::Disk(spec)) => {
                    cfg.ubd.insert(unit, spec);
                }
                (PciId::Nic(index), DeviceConfig::Nic(spec)) => {
                    cfg.eth.insert(index, spec);
                }
                _ => {}
            }
        }
        cfg
    }
}
