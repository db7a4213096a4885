//! Config → a running machine: memory, kernel, ACPI tables, devices, vCPU threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use devices::bus::Bus;
use devices::legacy::i8042::{self, I8042};
use devices::legacy::pm::{ExitPort, PmDevice, PvPanic};
use devices::legacy::serial::{SerialDevice, COM_PORTS, COM_PORT_LEN};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{acpi, boot, cpuid, layout, regs};
use crate::config::Config;
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
    /// Loading the kernel or initrd failed.
    #[error("cannot boot the guest")]
    Boot(#[from] boot::BootError),
    /// A vCPU could not be created or set up.
    #[error("cannot set up vCPU {0}")]
    Vcpu(u8, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// A device could not be created or registered.
    #[error("cannot set up the {0}")]
    Device(&'static str, #[source] Box<dyn std::error::Error + Send + Sync>),
}

fn device_err<E: std::error::Error + Send + Sync + 'static>(what: &'static str) -> impl FnOnce(E) -> BuildError {
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

/// The guest kernel command line: the user's words plus kuml's defaults.
pub fn guest_cmdline(cfg: &Config) -> String {
    let mut words: Vec<String> = Vec::new();
    let has = |key: &str| {
        cfg.guest_args
            .iter()
            .any(|w| w == key || w.starts_with(&format!("{key}=")))
    };
    if !has("console") {
        words.push("console=ttyS0".into());
    }
    words.extend(cfg.guest_args.iter().cloned());
    words.join(" ")
}

/// Host-side handles of the console devices, for the event loop.
#[derive(Debug, Clone)]
pub struct Consoles {
    /// COM1..COM4.
    pub serials: Vec<Arc<Mutex<SerialDevice>>>,
    /// The keyboard controller (Ctrl-Alt-Del injection).
    pub i8042: Arc<Mutex<I8042>>,
}

/// A running machine.
#[derive(Debug)]
pub struct Machine {
    /// Why it stops, once it does.
    pub exit: Arc<ExitState>,
    /// Console devices.
    pub consoles: Consoles,
    vcpus: Vec<VcpuHandle>,
    // Dropped after the vCPUs.
    _vm: Vm,
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

/// Where the guest's serial output goes.
pub type OutputFactory<'a> = &'a dyn Fn(usize) -> Box<dyn std::io::Write + Send>;

/// Builds and starts the machine described by `cfg`.
pub fn build(cfg: &Config, serial_out: OutputFactory) -> Result<Machine, BuildError> {
    let kernel = resolve_kernel(cfg)?;
    let vm = Vm::new(cfg.mem_size)?;
    let exit = Arc::new(ExitState::new().map_err(device_err("exit event"))?);

    // Devices on the port-I/O bus.
    let mut pio = Bus::new();
    let irq_evt = |gsi: u32| -> Result<EventFd, BuildError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(device_err("interrupt eventfd"))?;
        vm.fd
            .register_irqfd(&evt, gsi)
            .map_err(device_err("interrupt routing"))?;
        Ok(evt)
    };
    let mut serials = Vec::new();
    for (i, (port, irq)) in COM_PORTS.iter().enumerate() {
        let dev = Arc::new(Mutex::new(SerialDevice::new(irq_evt(*irq)?, serial_out(i))));
        pio.insert(dev.clone(), u64::from(*port), u64::from(COM_PORT_LEN))
            .map_err(device_err("serial port"))?;
        serials.push(dev);
    }
    let kbd = Arc::new(Mutex::new(I8042::new(exit.clone(), irq_evt(i8042::KBD_IRQ)?)));
    pio.insert(kbd.clone(), u64::from(i8042::DATA_PORT), 1)
        .map_err(device_err("i8042"))?;
    pio.insert(kbd.clone(), u64::from(i8042::COMMAND_PORT), 1)
        .map_err(device_err("i8042"))?;
    let pm = Arc::new(Mutex::new(PmDevice::new(
        exit.clone(),
        acpi::S5_SLP_TYP,
        acpi::PM_RESET_VALUE,
    )));
    pio.insert(pm, u64::from(acpi::PM_PORTS.0), u64::from(acpi::PM_PORTS.1))
        .map_err(device_err("power management block"))?;
    pio.insert(
        Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
        u64::from(acpi::PVPANIC_PORT),
        1,
    )
    .map_err(device_err("pvpanic"))?;
    pio.insert(
        Arc::new(Mutex::new(ExitPort::new(exit.clone()))),
        u64::from(EXIT_PORT),
        1,
    )
    .map_err(device_err("exit port"))?;

    // Boot data.
    let loaded = boot::load_kernel(&vm.memory, &kernel)?;
    let initrd = cfg
        .initrd
        .as_deref()
        .map(|p| boot::load_initrd(&vm.memory, p, cfg.mem_size, loaded.setup_header.as_ref()))
        .transpose()?;
    let cmdline = guest_cmdline(cfg);
    log::info!("guest kernel {} with command line: {cmdline}", kernel.display());
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
        extra_dsdt: &[],
    }) {
        vm.memory
            .write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(device_err("ACPI tables"))?;
    }
    regs::write_boot_tables(&vm.memory).map_err(device_err("boot page tables"))?;

    // vCPUs.
    let ctx = VcpuContext {
        pio: Arc::new(RwLock::new(pio)),
        mmio: Arc::new(RwLock::new(Bus::new())),
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
        cpuid::adjust(&mut entries, i, cfg.ncpus);
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
        let h = VcpuHandle::spawn(i as u8, fd, ctx.clone())
            .map_err(|e| BuildError::Vcpu(i as u8, Box::new(e)))?;
        vcpus.push(h);
    }
    Ok(Machine {
        exit,
        consoles: Consoles {
            serials,
            i8042: kbd,
        },
        vcpus,
        _vm: vm,
    })
}

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
    fn default_console_unless_given() {
        assert_eq!(guest_cmdline(&cfg(&["quiet"])), "console=ttyS0 quiet");
        assert_eq!(guest_cmdline(&cfg(&["console=hvc0", "x"])), "console=hvc0 x");
    }
}
