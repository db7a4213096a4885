//! Config → a running machine: memory, kernel, ACPI tables, devices, vCPU threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::chan::{self, ChanContext, Channel, ChannelSpec, LineClass};
use devices::legacy::ged::Ged;
use devices::legacy::i8042::{self, I8042};
use devices::legacy::pm::{ExitPort, PmDevice, PvPanic};
use devices::legacy::serial::{SerialDevice, COM_PORTS, COM_PORT_LEN};
use devices::pci::{EjectHandler, PciHotplug};
use devices::virtio::block::Block;
use devices::virtio::console::{open_consoles, ConsoleSet, DEFAULT_MAX_PORTS};
use devices::virtio::net::device::Net;
use event_manager::MutEventSubscriber;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{acpi, boot, cpuid, hotplug_aml, layout, regs};
use crate::config::Config;
use crate::device_manager::{DeviceManager, PluggedDevice};
use crate::exit::ExitState;
use crate::vstate::vcpu::{VcpuContext, VcpuHandle};
use crate::vstate::vm::{Vm, VmError};

/// The test exit port: a byte written here becomes kuml's exit status.
pub const EXIT_PORT: u16 = 0xf4;

/// Errors building the machine.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No kernel was given and none was found where resources/ builds it.
    #[error("no guest kernel: give kernel=<vmlinux or bzImage>, set KUML_KERNEL, or build one with resources/build-guest.sh")]
    NoKernel,
    /// The VM could not be created.
    #[error("cannot create the VM")]
    Vm(#[from] VmError),
    /// The ACPI tables do not fit their region.
    #[error("cannot build the ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    /// Loading the kernel or initrd failed.
    #[error("cannot boot the guest")]
    Boot(#[from] boot::BootError),
    /// A vCPU could not be created or set up.
    #[error("cannot set up vCPU {0}")]
    Vcpu(u8, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// A ubd unit could not be opened (the message is UML's).
    #[error("ubd{0}")]
    Disk(usize, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// A network device could not be set up.
    #[error("eth{0}")]
    Nic(u32, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// A device could not be created or registered.
    #[error("cannot set up the {0}")]
    Device(
        &'static str,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
}

fn device_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> BuildError {
    move |e| BuildError::Device(what, Box::new(e))
}

/// The kernel to boot: `kernel=`, else `$KUML_KERNEL`, else the one resources/ builds.
pub fn resolve_kernel(cfg: &Config) -> Result<PathBuf, BuildError> {
    if let Some(k) = &cfg.kernel {
        return Ok(k.clone());
    }
    if let Some(k) = std::env::var_os("KUML_KERNEL") {
        return Ok(PathBuf::from(k));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/kuml → <checkout>/build/guest/vmlinux
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join("build/guest/vmlinux"));
        }
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/guest/vmlinux"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(BuildError::NoKernel)
}

/// PURE: `sysname nodename release version machine` from the kernel's banner
/// (`Linux version 6.1.192-kuml (user@host) (gcc …) #1 SMP … 2026`), as `uname -a` prints it
/// before the guest has set a host name.
pub fn version_from_banner(image: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut at = 0;
    while let Some(pos) = image[at..].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let start = at + pos + NEEDLE.len();
        at = start;
        let rest = &image[start..];
        let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == 0) else {
            continue;
        };
        let Ok(banner) = std::str::from_utf8(&rest[..end]) else {
            continue;
        };
        // Skip templates such as "… # SMP": the real banner has a build number.
        let Some(hash) = banner.find(" #") else {
            continue;
        };
        if !banner[hash + 2..].starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let release = banner.split_whitespace().next()?;
        let version = banner[hash + 1..].trim_end();
        return Some(format!("Linux (none) {release} {version} x86_64"));
    }
    None
}

/// The guest kernel's version text for mconsole `version`, read from the kernel image.
pub fn guest_version(cfg: &Config) -> String {
    resolve_kernel(cfg)
        .ok()
        .and_then(|k| std::fs::read(k).ok())
        .and_then(|img| version_from_banner(&img))
        .unwrap_or_else(|| format!("Linux (none) unknown kuml-{}", env!("CARGO_PKG_VERSION")))
}

/// The guest kernel command line: kuml's defaults, then the user's words with UML's root
/// device names mapped to the virtio disks.
pub fn guest_cmdline(cfg: &Config) -> String {
    let mut words: Vec<String> = Vec::new();
    let has = |key: &str| {
        cfg.guest_args
            .iter()
            .any(|w| w == key || w.starts_with(&format!("{key}=")))
    };
    if !has("console") {
        words.push("console=hvc0".into());
    }
    if !has("net.ifnames") {
        words.push("net.ifnames=0".into());
    }
    let units: Vec<usize> = cfg.ubd.keys().copied().collect();
    words.extend(crate::config::rewrite_root(&cfg.guest_args, &units));
    words.join(" ")
}

/// Subscribers the event loop runs for this machine.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A running machine.
pub struct Machine {
    /// Why it stops, once it does.
    pub exit: Arc<ExitState>,
    /// The keyboard controller (Ctrl-Alt-Del injection).
    pub i8042: Arc<Mutex<I8042>>,
    /// Serial lines present (index, UART).
    pub serials: Vec<(u32, Arc<Mutex<SerialDevice>>)>,
    /// The consoles: `con0`'s own device and the multiport device of `con1` and up.
    pub consoles: ConsoleSet,
    /// Disks plugged at boot, by ubd unit.
    pub disks: Vec<(usize, Arc<Mutex<Block>>, PluggedDevice)>,
    /// Network cards plugged at boot, by ethN index.
    pub nics: Vec<(u32, Arc<Mutex<Net>>, PluggedDevice)>,
    /// Event-loop subscribers (devices with host descriptors or queues), besides the disks and
    /// NICs, which the event loop registers itself so that it can remove them on hot-unplug.
    pub subscribers: Vec<Subscriber>,
    /// Buses, PCI, interrupts.
    pub devices: DeviceManager,
    /// The PCI hot-plug register block the DSDT scans.
    pub hotplug: Arc<Mutex<PciHotplug>>,
    /// The Generic Event Device that tells the guest to scan.
    pub ged: Arc<Mutex<Ged>>,
    /// Slots the guest has ejected, for the event loop to release.
    pub ejects: Arc<EjectQueue>,
    vcpus: Vec<VcpuHandle>,
    // Dropped after the vCPUs.
    _vm: Vm,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Stops every vCPU (the machine can then be dropped).
    pub fn stop(&mut self) {
        for v in &mut self.vcpus {
            v.stop();
        }
    }

    /// Pauses every vCPU.
    pub fn pause(&self) {
        self.vcpus.iter().for_each(VcpuHandle::pause);
    }

    /// Resumes every vCPU.
    pub fn resume(&self) {
        self.vcpus.iter().for_each(VcpuHandle::resume);
    }
}

/// Slots the guest ejected (`_EJ0`), handed from the vCPU that ran the AML to the event loop,
/// which unplugs the device: the eject handler runs with the MMIO bus locked, so it must not
/// change the buses itself.
#[derive(Debug)]
pub struct EjectQueue {
    slots: Mutex<Vec<u8>>,
    /// Readable when slots are waiting.
    pub evt: EventFd,
}

impl EjectQueue {
    fn new() -> std::io::Result<Self> {
        Ok(EjectQueue {
            slots: Mutex::new(Vec::new()),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Takes the ejected slots.
    pub fn take(&self) -> Vec<u8> {
        let _ = self.evt.read();
        std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl EjectHandler for EjectQueue {
    fn eject(&self, slot: u8) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal the ejection of slot {slot}: {e}");
        }
    }
}

/// Consoles UML has (`MAX_TTYS`): with `con=` given they all exist at boot.
const UML_CONSOLES: u32 = 16;

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

fn lines(
    class: LineClass,
    opts: &crate::config::IndexedOptions,
    count: u32,
    ctx: &ChanContext,
) -> Result<Vec<(u32, ChannelSpec)>, BuildError> {
    chan::resolve_lines(class, opts.all.as_deref(), &opts.each, count, ctx.display)
        .map_err(|e| BuildError::Device(class.display_name(), Box::new(e)))
}

/// Opens a ubd unit's image and makes its virtio-blk device.
pub fn open_disk(spec: &ubd::UbdSpec, global_sync: bool) -> Result<Block, BuildError> {
    let what = |e: Box<dyn std::error::Error + Send + Sync>| BuildError::Disk(spec.unit, e);
    let image = ubd::open_spec(spec, global_sync).map_err(|e| what(Box::new(e)))?;
    Block::from_image(image, spec, global_sync).map_err(|e| what(Box::new(e)))
}

/// Opens an ethN backend and makes its virtio-net device.
pub fn open_nic(index: u32, spec: &netdev::NetSpec, umid: &str) -> Result<Net, BuildError> {
    let what = |e: Box<dyn std::error::Error + Send + Sync>| BuildError::Nic(index, e);
    let mac = spec.mac_or_derived(umid, index);
    let backend = netdev::open_backend(spec, mac).map_err(|e| what(Box::new(e)))?;
    log::info!("eth{index}: {}", spec.transport_line());
    Net::new(backend, mac).map_err(|e| what(Box::new(e)))
}

/// Builds and starts the machine described by `cfg`, named `umid`.
pub fn build(cfg: &Config, umid: &str) -> Result<Machine, BuildError> {
    let kernel = resolve_kernel(cfg)?;
    let vm = Vm::new(cfg.mem_size)?;
    let vm_fd = vm.fd.clone();
    let exit = Arc::new(ExitState::new().map_err(device_err("exit event"))?);
    let mut dm = DeviceManager::new(vm_fd, vm.memory.clone(), cfg.mem_size)
        .map_err(device_err("PCI root"))?;
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let ctx = ChanContext {
        umid: cfg.umid.clone(),
        ..ChanContext::from_env()
    };

    // Serial lines: COM1..COM4, one UART per line that exists.
    let mut serials = Vec::new();
    for (index, spec) in lines(LineClass::Serial, &cfg.ssl, COM_PORTS.len() as u32, &ctx)? {
        let Some((port, irq)) = COM_PORTS.get(index as usize) else {
            continue;
        };
        // A UART cannot be seen to open: its channel opens (pts announced) now.
        let channel = match Channel::open_in(&spec, LineClass::Serial, index, &ctx) {
            Ok(ch) => ch,
            Err(e) => {
                eprintln!("kuml: serial line {index}: {}", error_chain(&e));
                Channel::null()
            }
        };
        let irq = dm.legacy_irq(*irq).map_err(device_err("serial line"))?;
        let dev = Arc::new(Mutex::new(
            SerialDevice::new(irq, channel).map_err(device_err("serial line"))?,
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

    // ACPI hot-plug: the register block the DSDT's slot scan reads, and the GED that starts it.
    let ejects = Arc::new(EjectQueue::new().map_err(device_err("hot-plug"))?);
    let hotplug = Arc::new(Mutex::new(PciHotplug::new(ejects.clone())));
    let ged = Arc::new(Mutex::new(Ged::new(
        dm.legacy_irq(hotplug_aml::GED_GSI)
            .map_err(device_err("GED"))?,
    )));
    dm.add_mmio(
        hotplug.clone(),
        hotplug_aml::PCI_HOTPLUG_ADDR,
        hotplug_aml::PCI_HOTPLUG_LEN,
    )
    .map_err(device_err("PCI hot-plug registers"))?;
    dm.add_mmio(ged.clone(), hotplug_aml::GED_ADDR, hotplug_aml::GED_LEN)
        .map_err(device_err("GED"))?;

    // Consoles: con0 on its own device, plugged first so that the guest names it hvc0 while
    // it probes, before init opens /dev/console; con1.. as ports of a multiport device.
    let opened = open_consoles(
        &lines(LineClass::Console, &cfg.con, boot_consoles(cfg), &ctx)?,
        DEFAULT_MAX_PORTS,
        &ctx,
    )
    .map_err(device_err("consoles"))?;
    for f in &opened.failures {
        eprintln!("kuml: {}", error_chain(f));
    }
    let consoles = opened.consoles;
    for dev in consoles.devices() {
        dm.add_virtio(dev.clone(), None)
            .map_err(device_err("virtio console"))?;
        subscribers.push(dev);
    }

    // Disks in unit order, so that the guest names them vda, vdb, … as `root=` expects.
    let mut disks = Vec::new();
    for (unit, spec) in &cfg.ubd {
        let block = Arc::new(Mutex::new(open_disk(spec, cfg.ubd_sync)?));
        let plugged = dm
            .add_virtio(block.clone(), None)
            .map_err(|e| BuildError::Disk(*unit, Box::new(e)))?;
        disks.push((*unit, block, plugged));
    }
    let mut nics = Vec::new();
    for (index, spec) in &cfg.eth {
        let net = Arc::new(Mutex::new(open_nic(*index, spec, umid)?));
        let plugged = dm
            .add_virtio(net.clone(), None)
            .map_err(|e| BuildError::Nic(*index, Box::new(e)))?;
        nics.push((*index, net, plugged));
    }

    // Boot data.
    let loaded = boot::load_kernel(&vm.memory, &kernel)?;
    let initrd = cfg
        .initrd
        .as_deref()
        .map(|p| boot::load_initrd(&vm.memory, p, cfg.mem_size, &loaded))
        .transpose()?;
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
            .map_err(device_err("ACPI tables"))?;
    }
    regs::write_boot_tables(&vm.memory).map_err(device_err("boot page tables"))?;

    // vCPUs.
    let vctx = VcpuContext {
        pio: dm.pio.clone(),
        mmio: dm.mmio.clone(),
        on_event: {
            let exit = exit.clone();
            Arc::new(move |ev| exit.vcpu_event(ev))
        },
    };
    let mut fds = Vec::new();
    for i in 0..cfg.ncpus {
        let verr = |e: Box<dyn std::error::Error + Send + Sync>| BuildError::Vcpu(i, e);
        let fd = vm
            .fd
            .create_vcpu(u64::from(i))
            .map_err(|e| verr(Box::new(e)))?;
        let mut entries = vm.supported_cpuid.as_slice().to_vec();
        cpuid::normalize(&mut entries, i, cfg.ncpus, vm.cpuid_caps);
        let id = kvm_bindings::CpuId::from_entries(&entries)
            .map_err(|_| verr("too many CPUID entries".into()))?;
        fd.set_cpuid2(&id).map_err(|e| verr(Box::new(e)))?;
        regs::setup_common(&fd).map_err(|e| verr(Box::new(e)))?;
        if i == 0 {
            regs::setup_boot_cpu(&fd, loaded.entry).map_err(|e| verr(Box::new(e)))?;
        }
        fds.push(fd);
    }
    let mut vcpus = Vec::new();
    for (i, fd) in fds.into_iter().enumerate() {
        let h = VcpuHandle::spawn(i as u8, fd, vctx.clone())
            .map_err(|e| BuildError::Vcpu(i as u8, Box::new(e)))?;
        vcpus.push(h);
    }
    Ok(Machine {
        exit,
        i8042: kbd,
        serials,
        consoles,
        disks,
        nics,
        subscribers,
        devices: dm,
        hotplug,
        ged,
        ejects,
        vcpus,
        _vm: vm,
    })
}

pub use devices::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        match crate::config::parse(args).unwrap() {
            crate::config::Action::Run(c) => *c,
            _ => unreachable!(),
        }
    }

    #[test]
    fn version_text() {
        let img = b"junk\0Linux version 6.1.192-kuml (a) # SMP \0Linux version 6.1.192-kuml (root@h) (gcc 12) #3 SMP Sun Nov 29 09:00:00 UTC 2026\n\0";
        assert_eq!(
            version_from_banner(img).as_deref(),
            Some("Linux (none) 6.1.192-kuml #3 SMP Sun Nov 29 09:00:00 UTC 2026 x86_64")
        );
        assert_eq!(version_from_banner(b"nothing"), None);
    }

    #[test]
    fn default_console_unless_given() {
        assert_eq!(
            guest_cmdline(&cfg(&["quiet"])),
            "console=hvc0 net.ifnames=0 quiet"
        );
        assert_eq!(
            guest_cmdline(&cfg(&["console=ttyS0", "x", "ubd0=/i", "root=/dev/ubda"])),
            "net.ifnames=0 console=ttyS0 x root=/dev/vda"
        );
    }
}
