//! vCPU threads: each runs KVM_RUN and dispatches port and MMIO exits to the buses.
//!
//! A thread is stopped or paused by setting a flag in its [`VcpuControl`] and kicking it out of
//! KVM_RUN with a real-time signal whose handler does nothing (the ioctl then returns EINTR).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::bus::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// What ended a vCPU's run, as the VMM needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest asked to power off (a KVM system event).
    PowerOff,
    /// The guest reset the machine (triple fault or a KVM system event).
    Reset,
    /// The guest crashed in a way the VMM cannot continue from.
    Crash(String),
}

/// Shared between a vCPU thread and the VMM.
#[derive(Debug, Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    paused: Mutex<bool>,
    /// Whether the thread is parked (acknowledges a pause).
    parked: Mutex<bool>,
    cond: Condvar,
}

impl VcpuControl {
    fn wait_while_paused(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if *paused {
            *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.cond.notify_all();
            while *paused && !self.stop.load(Ordering::Acquire) {
                paused = self.cond.wait(paused).unwrap_or_else(|e| e.into_inner());
            }
            *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = false;
        }
    }
}

/// The signal that kicks a vCPU out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Installs the (empty) handler for the kick signal. Call once per process.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(kick_signal(), noop).map_err(std::io::Error::from)
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    thread: Option<JoinHandle<()>>,
    control: Arc<VcpuControl>,
}

/// Where a vCPU dispatches exits and reports events.
#[derive(Clone)]
pub struct VcpuContext {
    /// The port-I/O bus.
    pub pio: Arc<RwLock<Bus>>,
    /// The MMIO bus.
    pub mmio: Arc<RwLock<Bus>>,
    /// Called with the event that stopped the vCPU.
    pub on_event: Arc<dyn Fn(VcpuEvent) + Send + Sync>,
}

impl std::fmt::Debug for VcpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuContext").finish_non_exhaustive()
    }
}

impl VcpuHandle {
    /// Starts a thread running `vcpu`.
    pub fn spawn(index: u8, mut vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<VcpuHandle> {
        let control = Arc::new(VcpuControl::default());
        let ctl = control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || run(index, &mut vcpu, &ctx, &ctl))?;
        Ok(VcpuHandle {
            thread: Some(thread),
            control,
        })
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            if !t.is_finished() {
                let _ = t.kill(kick_signal());
            }
        }
    }

    /// Pauses the vCPU and waits until it is out of KVM_RUN.
    pub fn pause(&self) {
        *self
            .control
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        for _ in 0..500 {
            if *self
                .control
                .parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                || self.thread.as_ref().is_none_or(|t| t.is_finished())
            {
                return;
            }
            self.kick();
            std::thread::sleep(Duration::from_millis(2));
        }
        log::warn!("a vCPU did not acknowledge the pause in time");
    }

    /// Resumes a paused vCPU.
    pub fn resume(&self) {
        *self
            .control
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = false;
        self.control.cond.notify_all();
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.control.stop.store(true, Ordering::Release);
        self.control.cond.notify_all();
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                let _ = t.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext, control: &VcpuControl) {
    loop {
        if control.stop.load(Ordering::Acquire) {
            return;
        }
        control.wait_while_paused();
        if control.stop.load(Ordering::Acquire) {
            return;
        }
        let event = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                read_bus(&ctx.pio, u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                write_bus(&ctx.pio, u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                read_bus(&ctx.mmio, addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                write_bus(&ctx.mmio, addr, data);
                None
            }
            // With the in-kernel irqchip HLT stays in KVM; KVM_EXIT_INTR is a kick.
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) => None,
            Ok(VcpuExit::Shutdown) => Some(VcpuEvent::Reset),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuEvent::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuEvent::Reset,
                other => VcpuEvent::Crash(format!("vCPU {index}: KVM system event {other}")),
            }),
            Ok(VcpuExit::InternalError) => Some(VcpuEvent::Crash(format!(
                "vCPU {index}: KVM internal error (instruction emulation failed){}",
                describe_rip(vcpu)
            ))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VcpuEvent::Crash(format!(
                "vCPU {index}: KVM could not enter the guest (reason {reason:#x}, host cpu {cpu})"
            ))),
            // Anything else (KVM_EXIT_UNKNOWN, EXCEPTION, …) is an exit kuml does not model:
            // re-entering would repeat it for ever at full CPU, so the machine stops (as
            // Firecracker does).
            Ok(other) => Some(VcpuEvent::Crash(format!(
                "vCPU {index}: unhandled KVM exit {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VcpuEvent::Crash(format!(
                "vCPU {index}: KVM_RUN failed: {e}"
            ))),
        };
        if let Some(ev) = event {
            (ctx.on_event)(ev);
            // Park until the VMM stops or restarts the machine.
            *control.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
        }
    }
}

fn describe_rip(vcpu: &VcpuFd) -> String {
    vcpu.get_regs()
        .map(|r| format!(" at rip {:#x}", r.rip))
        .unwrap_or_default()
}

fn read_bus(bus: &RwLock<Bus>, addr: u64, data: &mut [u8]) {
    let bus = bus.read().unwrap_or_else(|e| e.into_inner());
    if !bus.read(addr, data) {
        log::trace!("read of unmapped address {addr:#x}");
    }
}

fn write_bus(bus: &RwLock<Bus>, addr: u64, data: &[u8]) {
    let bus = bus.read().unwrap_or_else(|e| e.into_inner());
    if !bus.write(addr, data) {
        log::trace!("write to unmapped address {addr:#x}");
    }
}
