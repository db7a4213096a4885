//! Config -> a running [`Machine`]: memory, devices, kernel, ACPI tables, vCPU threads.

use std::sync::{Arc, Mutex};

use devices::chan::{self, ChanContext, Channel, ChannelSpec, LineClass};
use devices::legacy::i8042::{self, I8042};
use devices::legacy::pm::{ExitPort, PmDevice, PvPanic};
use devices::legacy::serial::{SerialDevice, COM_PORTS, COM_PORT_LEN};
use devices::virtio::console::{open_consoles, ConsoleError, DEFAULT_MAX_PORTS};
use event_manager::SubscriberOps;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{acpi, boot, cpuid, hotplug_aml, layout, regs};
use crate::backends::{open_disk, open_nic, DiskError, NicError};
use crate::config::Config;
use crate::device_manager::{DeviceConfig, DeviceError, DeviceManager, PciId, Subscriber};
use crate::exit::ExitState;
use crate::guest::{guest_cmdline, resolve_kernel, NoKernel};
use crate::hostfs_shares::{self, ShareError};
use crate::machine::Machine;
use crate::vstate::vcpu::{VcpuContext, Vcpus};
use crate::vstate::vm::{Vm, VmError};

/// The test exit port: a byte written here becomes kuml's exit status.
pub const EXIT_PORT: u16 = 0xf4;

/// Consoles UML has (`MAX_TTYS`): with `con=` given they all exist at boot.
const UML_CONSOLES: u32 = 16;

/// Errors setting up one vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    /// KVM_CREATE_VCPU failed.
    #[error("KVM refused to create it")]
    Create(#[source] kvm_ioctls::Error),
    /// The CPUID table does not fit KVM's structure.
    #[error("its CPUID table has too many entries")]
    CpuidTooBig,
    /// KVM_SET_CPUID2 failed.
    #[error("KVM refused its CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
    /// Registers, MSRs, FPU or LAPIC.
    #[error("cannot set its boot state")]
    Registers(#[source] regs::RegsError),
    /// The thread could not be started.
    #[error("cannot start its thread")]
    Thread(#[source] std::io::Error),
}

/// Errors building the machine.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No kernel to boot.
    #[error(transparent)]
    NoKernel(#[from] NoKernel),
    /// The VM could not be created.
    #[error("cannot create the VM")]
    Vm(#[from] VmError),
    /// Loading the kernel or initrd failed.
    #[error("cannot boot the guest")]
    Boot(#[from] boot::BootError),
    /// The ACPI tables do not fit their region.
    #[error("cannot build the ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    /// Writing boot data into guest memory failed.
    #[error("cannot write the {0} into guest memory")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
    /// The identity page tables could not be written.
    #[error("cannot write the boot page tables")]
    BootTables(#[source] regs::RegsError),
    /// A vCPU could not be created or set up.
    #[error("cannot set up vCPU {0}")]
    Vcpu(u8, #[source] VcpuSetupError),
    /// A ubd unit could not be opened (the message is UML's).
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A network device could not be set up.
    #[error(transparent)]
    Nic(#[from] NicError),
    /// A hostfs share could not be set up.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// A device could not be plugged or mapped.
    #[error("cannot set up the {0}")]
    Device(&'static str, #[source] DeviceError),
    /// A PCI device could not be plugged.
    #[error("cannot plug {0}")]
    Plug(PciId, #[source] DeviceError),
    /// The console or serial line options are wrong.
    #[error("bad {} options", .0.option_name())]
    Lines(LineClass, #[source] chan::LineSpecError),
    /// The console device could not be built.
    #[error("cannot set up the consoles")]
    Consoles(#[source] ConsoleError),
    /// An eventfd or another host object could not be created.
    #[error("cannot create the {0}")]
    Host(&'static str, #[source] std::io::Error),
}

fn device_err(what: &'static str) -> impl FnOnce(DeviceError) -> BuildError {
    move |e| BuildError::Device(what, e)
}

/// How many consoles exist at boot: all of UML's when `con=` applies to every console,
/// otherwise only con0 and the ones named on the command line (each virtio-console port costs
/// the guest two queues and a round of control messages at boot, so kuml does not create
/// fifteen unused ones; `config conN=` adds more at run time).
fn boot_consoles(cfg: &Config) -> u32 {
    if cfg.con.all.is_some() {
        UML_CONSOLES
    } else {
        1
    }
}

/// The consoles that exist at boot, ascending: those [`boot_consoles`] counts, every one named
/// (`conN=`), and every one a UML `console=ttyN` word names (UML has all its consoles, so a
/// launcher may name one it gave no channel: it gets the default channel). A console set to
/// `none` does not exist. The guest names them hvc0, hvc1, … in this order.
pub(crate) fn boot_console_ids(cfg: &Config) -> Vec<u32> {
    let ids: std::collections::BTreeSet<u32> = (0..boot_consoles(cfg))
        .chain(cfg.con.each.keys().copied())
        .chain(crate::config::named_consoles(&cfg.guest_args))
        .collect();
    ids.into_iter()
        .filter(|n| !matches!(cfg.con.get(*n).map(chan::parse_line), Some(Ok(None))))
        .collect()
}

/// The consoles that exist only because a UML `console=ttyN` word names them.
pub(crate) fn consoles_for_console_words(cfg: &Config) -> Vec<u32> {
    crate::config::named_consoles(&cfg.guest_args)
        .into_iter()
        .filter(|n| *n >= boot_consoles(cfg) && cfg.con.get(*n).is_none())
        .collect()
}

/// The channel of each console in [`boot_console_ids`].
fn console_lines(cfg: &Config, ctx: &ChanContext) -> Result<Vec<(u32, ChannelSpec)>, BuildError> {
    let mut out = Vec::new();
    for i in boot_console_ids(cfg) {
        let each = cfg.con.each.get(&i).map(String::as_str);
        let spec = chan::resolve_line(
            LineClass::Console,
            i,
            each,
            cfg.con.all.as_deref(),
            ctx.display,
        )
        .map_err(|e| BuildError::Lines(LineClass::Console, e))?;
        out.extend(spec.map(|s| (i, s)));
    }
    Ok(out)
}

fn lines(
    class: LineClass,
    opts: &crate::config::IndexedOptions,
    count: u32,
    ctx: &ChanContext,
) -> Result<Vec<(u32, ChannelSpec)>, BuildError> {
    chan::resolve_lines(class, opts.all.as_deref(), &opts.each, count, ctx.display)
        .map_err(|e| BuildError::Lines(class, e))
}

/// Builds and starts the machine described by `cfg`, named `umid`. Its devices join `em`;
/// `wake` is written when the guest activates or ejects a device.
pub fn build(
    cfg: &Config,
    umid: &str,
    wake: &EventFd,
    em: &mut dyn SubscriberOps<Subscriber = Subscriber>,
) -> Result<Machine, BuildError> {
    let kernel = resolve_kernel(cfg)?;
    let vm = Vm::new(cfg.mem_size)?;
    let exit = Arc::new(ExitState::new().map_err(|e| BuildError::Host("exit event", e))?);
    let mut dm = DeviceManager::new(vm.fd.clone(), vm.memory.clone(), cfg.mem_size, wake)
        .map_err(device_err("PCI root"))?;
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let chan_ctx = ChanContext {
        umid: Some(umid.to_owned()),
        xterm: cfg.xterm.clone().unwrap_or_default(),
        ..ChanContext::from_env()
    };

    // Serial lines: COM1..COM4, one UART per line that exists.
    let mut serials = Vec::new();
    for (index, spec) in lines(
        LineClass::Serial,
        &cfg.ssl,
        COM_PORTS.len() as u32,
        &chan_ctx,
    )? {
        let Some((port, irq)) = COM_PORTS.get(index as usize) else {
            continue;
        };
        // A UART cannot be seen to open: its channel opens (pts announced) now.
        let channel = match Channel::open_in(&spec, LineClass::Serial, index, &chan_ctx) {
            Ok(ch) => ch,
            Err(e) => {
                eprintln!("kuml: serial line {index}: {}", crate::error_chain(&e));
                Channel::null()
            }
        };
        let irq = dm.legacy_irq(*irq).map_err(device_err("serial line"))?;
        let dev = Arc::new(Mutex::new(
            SerialDevice::new(irq, channel).map_err(|e| BuildError::Host("serial line", e))?,
        ));
        dm.add_pio(dev.clone(), u64::from(*port), u64::from(COM_PORT_LEN))
            .map_err(device_err("serial line"))?;
        subscribers.push(dev.clone());
        serials.push((index, dev));
    }

    // Legacy platform devices.
    let kbd = Arc::new(Mutex::new(I8042::new(
        exit.clone(),
        dm.legacy_irq(i8042::KBD_IRQ).map_err(device_err("i8042"))?,
    )));
    for port in [i8042::DATA_PORT, i8042::COMMAND_PORT] {
        dm.add_pio(kbd.clone(), u64::from(port), 1)
            .map_err(device_err("i8042"))?;
    }
    let pm = PmDevice::new(exit.clone(), acpi::S5_SLP_TYP, acpi::PM_RESET_VALUE);
    dm.add_pio(
        Arc::new(Mutex::new(pm)),
        u64::from(acpi::PM_PORTS.0),
        u64::from(acpi::PM_PORTS.1),
    )
    .map_err(device_err("power management block"))?;
    dm.add_pio(
        Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
        u64::from(acpi::PVPANIC_PORT),
        1,
    )
    .map_err(device_err("pvpanic"))?;
    dm.add_pio(
        Arc::new(Mutex::new(ExitPort::new(exit.clone()))),
        u64::from(EXIT_PORT),
        1,
    )
    .map_err(device_err("exit port"))?;

    // Consoles: con0 on its own device, plugged first so that the guest names it hvc0 while
    // it probes, before init opens /dev/console; con1.. as ports of a multiport device.
    let opened = open_consoles(
        &console_lines(cfg, &chan_ctx)?,
        DEFAULT_MAX_PORTS,
        &chan_ctx,
    )
    .map_err(BuildError::Consoles)?;
    for f in &opened.failures {
        eprintln!("kuml: {}", crate::error_chain(f));
    }
    let consoles = opened.consoles;
    for (n, dev) in (0u8..).zip(consoles.devices()) {
        let id = PciId::Console(n);
        dm.plug(id, dev, DeviceConfig::Boot, em, false)
            .map_err(|e| BuildError::Plug(id, e))?;
    }

    // Disks in unit order, so that the guest names them vda, vdb, … as `root=` expects.
    for (unit, spec) in &cfg.ubd {
        let block = Arc::new(Mutex::new(open_disk(spec, cfg.ubd_sync)?));
        let id = PciId::Disk(*unit);
        dm.plug(id, block, DeviceConfig::Disk(spec.clone()), em, false)
            .map_err(|e| BuildError::Plug(id, e))?;
    }
    for (index, spec) in &cfg.eth {
        let net = Arc::new(Mutex::new(open_nic(*index, spec, umid)?));
        let id = PciId::Nic(*index);
        dm.plug(id, net, DeviceConfig::Nic(spec.clone()), em, false)
            .map_err(|e| BuildError::Plug(id, e))?;
    }
    for s in &subscribers {
        em.add_subscriber(s.clone());
    }

    // Boot data.
    let loaded = boot::load_kernel(&vm.memory, &kernel)?;
    let initrd = cfg
        .initrd
        .as_deref()
        .map(|p| boot::load_initrd(&vm.memory, p, cfg.mem_size, &loaded))
        .transpose()?;
    // hostfs: a virtio-fs device per share (after the kernel loaded: a bad kernel= fails
    // before any daemon starts). Rebuilt on reboot from the configuration, which the machine
    // keeps with the shares added and removed at run time.
    for (spec, fs) in hostfs_shares::open_shares(cfg)? {
        let id = PciId::Share(spec.index);
        dm.plug(
            id,
            Arc::new(Mutex::new(fs)),
            DeviceConfig::Share(spec),
            em,
            false,
        )
        .map_err(|e| BuildError::Plug(id, e))?;
    }
    let cmdline = guest_cmdline(cfg);
    log::info!(
        "guest kernel {} with command line: {cmdline}",
        kernel.display()
    );
    boot::write_boot_params(
        &vm.memory,
        &boot::BootInfo {
            mem_size: cfg.mem_size,
            cmdline: &cmdline,
            initrd,
            rsdp: layout::RSDP,
        },
        loaded.setup_header.as_ref(),
    )?;
    for t in acpi::build(&acpi::AcpiConfig {
        ncpus: cfg.ncpus,
        mem_size: cfg.mem_size,
        extra_dsdt: &hotplug_aml::hotplug_aml(hotplug_aml::HOTPLUG_SLOTS),
    })? {
        vm.memory
            .write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(|e| BuildError::GuestMemory("ACPI tables", e))?;
    }
    regs::write_boot_tables(&vm.memory).map_err(BuildError::BootTables)?;

    // vCPUs.
    let vctx = VcpuContext {
        pio: dm.pio(),
        mmio: dm.mmio(),
        on_event: {
            let exit = exit.clone();
            Arc::new(move |ev| exit.vcpu_event(ev))
        },
    };
    let mut fds = Vec::new();
    for i in 0..cfg.ncpus {
        let fd = setup_vcpu(&vm, i, cfg.ncpus, loaded.entry).map_err(|e| BuildError::Vcpu(i, e))?;
        fds.push(fd);
    }
    let vcpus = Vcpus::spawn(fds, &vctx)
        .map_err(|(i, e)| BuildError::Vcpu(i, VcpuSetupError::Thread(e)))?;
    Ok(Machine {
        config: cfg.clone(),
        exit,
        devices: dm,
        i8042: kbd,
        serials,
        consoles,
        chan: chan_ctx,
        umid: umid.to_owned(),
        vcpus,
        frozen_clock: None,
        vm,
    })
}

/// Creates vCPU `index` of `ncpus` with its CPUID, MSRs, FPU and LAPIC; the boot vCPU also
/// gets the registers that start the kernel at `entry`.
fn setup_vcpu(vm: &Vm, index: u8, ncpus: u8, entry: u64) -> Result<VcpuFd, VcpuSetupError> {
    let fd = vm
        .fd
        .create_vcpu(u64::from(index))
        .map_err(VcpuSetupError::Create)?;
    let mut entries = vm.supported_cpuid.as_slice().to_vec();
    cpuid::normalize(&mut entries, index, ncpus, vm.cpuid_caps);
    let table =
        kvm_bindings::CpuId::from_entries(&entries).map_err(|_| VcpuSetupError::CpuidTooBig)?;
    fd.set_cpuid2(&table).map_err(VcpuSetupError::Cpuid)?;
    regs::setup_common(&fd).map_err(VcpuSetupError::Registers)?;
    if index == 0 {
        regs::setup_boot_cpu(&fd, entry).map_err(VcpuSetupError::Registers)?;
    }
    Ok(fd)
}
