//! vCPU threads: each runs KVM_RUN and dispatches port and MMIO exits to the buses.
//!
//! Pausing and stopping (Firecracker's pattern): the VMM records what it wants in the thread's
//! [`VcpuControl`], then kicks the thread with a real-time signal. The signal handler sets
//! `kvm_run.immediate_exit` through a thread-local pointer, so a kick that lands anywhere (in
//! KVM_RUN, which returns EINTR, or between the thread's last look at its state and its next
//! KVM_RUN, which then returns at once) brings the thread back to look at its state: no kick
//! is lost. A paused thread parks on a condition variable and says so; [`Vcpus::pause`]
//! kicks every thread at once and waits until all of them are parked, or fails.

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::bus::Bus;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// How long [`Vcpus::pause`] waits for every vCPU to leave KVM_RUN. A kicked vCPU leaves at
/// once unless a device handler it is running blocks; this only bounds that case.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a vCPU cannot continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VcpuCrash {
    /// KVM reported a system event kuml does not know.
    #[error("vCPU {vcpu}: KVM system event {kind}")]
    SystemEvent {
        /// The vCPU.
        vcpu: u8,
        /// `kvm_run.system_event.type`.
        kind: u32,
    },
    /// KVM could not emulate an instruction.
    #[error("vCPU {vcpu}: KVM internal error (instruction emulation failed){}", rip.map(|r| format!(" at rip {r:#x}")).unwrap_or_default())]
    InternalError {
        /// The vCPU.
        vcpu: u8,
        /// Where the guest was, if KVM could tell.
        rip: Option<u64>,
    },
    /// The hardware refused to enter the guest.
    #[error("vCPU {vcpu}: KVM could not enter the guest (reason {reason:#x}, host cpu {cpu})")]
    FailEntry {
        /// The vCPU.
        vcpu: u8,
        /// `hardware_entry_failure_reason`.
        reason: u64,
        /// The host CPU.
        cpu: u32,
    },
    /// An exit kuml does not model (KVM_EXIT_UNKNOWN, KVM_EXIT_EXCEPTION, …).
    #[error("vCPU {vcpu}: unhandled KVM exit {exit}")]
    UnhandledExit {
        /// The vCPU.
        vcpu: u8,
        /// The exit as kvm-ioctls shows it.
        exit: String,
    },
    /// The thread could not put itself under its seccomp filter.
    #[error("vCPU {vcpu}: {message}")]
    Seccomp {
        /// The vCPU.
        vcpu: u8,
        /// What failed, with its causes.
        message: String,
    },
    /// KVM_RUN itself failed.
    #[error("vCPU {vcpu}: KVM_RUN failed")]
    Run {
        /// The vCPU.
        vcpu: u8,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// What ended a vCPU's run, as the VMM needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest asked to power off (a KVM system event).
    PowerOff,
    /// The guest reset the machine (triple fault or a KVM system event).
    Reset,
    /// The guest crashed in a way the VMM cannot continue from.
    Crash(VcpuCrash),
}

/// Pausing failed: these vCPUs were still in KVM_RUN when the time ran out (the others were
/// resumed again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vCPUs {running:?} did not leave KVM_RUN within {waited:?}")]
pub struct PauseError {
    /// The vCPUs that kept running.
    pub running: Vec<u8>,
    /// How long the pause waited.
    pub waited: Duration,
}

/// What the VMM wants a vCPU thread to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Want {
    #[default]
    Run,
    Pause,
    Stop,
}

#[derive(Debug, Default)]
struct State {
    want: Want,
    /// The thread is out of KVM_RUN and waiting (it acknowledges a pause).
    parked: bool,
    /// The thread reported an event and waits to be stopped; it never runs again.
    halted: bool,
    /// The thread has returned.
    finished: bool,
}

/// Shared between a vCPU thread and the VMM.
#[derive(Debug, Default)]
struct VcpuControl {
    state: Mutex<State>,
    cond: Condvar,
}

impl VcpuControl {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks while the VMM wants a pause (or the thread is halted); returns false once the
    /// thread must stop.
    fn wait_to_run(&self, on_park: impl Fn()) -> bool {
        let mut s = self.lock();
        loop {
            match s.want {
                Want::Stop => return false,
                Want::Run if !s.halted => {
                    if s.parked {
                        s.parked = false;
                        self.cond.notify_all();
                    }
                    return true;
                }
                _ => {
                    if !s.parked {
                        s.parked = true;
                        self.cond.notify_all();
                        on_park();
                    }
                    s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

/// The signal that kicks a vCPU out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run` page, while it runs a vCPU (null otherwise). `const`
    /// initialisation and no destructor: reading it from a signal handler allocates nothing.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's mapped `kvm_run` page, set by `run()` before
        // it enters the loop and cleared before the VcpuFd (and the mapping) goes away. A
        // volatile byte store is what KVM expects: it reads the flag on the next KVM_RUN.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the handler for the kick signal. Call once per process, before starting vCPUs.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), kick_handler).map_err(std::io::Error::from)
}

/// A running vCPU thread.
#[derive(Debug)]
struct VcpuHandle {
    index: u8,
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
    fn spawn(index: u8, mut vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<VcpuHandle> {
        let control = Arc::new(VcpuControl::default());
        let ctl = control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                run(index, &mut vcpu, &ctx, &ctl);
                ctl.lock().finished = true;
                ctl.cond.notify_all();
            })?;
        Ok(VcpuHandle {
            index,
            thread: Some(thread),
            control,
        })
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            if !t.is_finished() {
                // The thread may end between the check and the signal: nothing to kick then.
                let _ = t.kill(kick_signal());
            }
        }
    }

    fn want(&self, want: Want) {
        self.control.lock().want = want;
        self.control.cond.notify_all();
    }

    /// Out of KVM_RUN for good or for now.
    fn is_stopped(s: &State) -> bool {
        s.parked || s.finished
    }

    fn stop(&mut self) {
        self.want(Want::Stop);
        if let Some(t) = self.thread.take() {
            self.kick_until_finished(&t);
            if t.join().is_err() {
                log::error!("vCPU {} panicked", self.index);
            }
        }
    }

    fn kick_until_finished(&self, t: &JoinHandle<()>) {
        // One kick suffices (immediate_exit); repeat only in case the thread was not yet in
        // its loop when the first one came.
        while !t.is_finished() {
            let _ = t.kill(kick_signal());
            let s = self.control.lock();
            if s.finished {
                break;
            }
            let _ = self
                .control
                .cond
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The machine's vCPU threads.
#[derive(Debug, Default)]
pub struct Vcpus {
    handles: Vec<VcpuHandle>,
}

impl Vcpus {
    /// Starts a thread for each of `fds` (vCPU `i` is `fds[i]`).
    pub fn spawn(fds: Vec<VcpuFd>, ctx: &VcpuContext) -> Result<Vcpus, (u8, std::io::Error)> {
        let mut vcpus = Vcpus::default();
        for (i, fd) in (0u8..).zip(fds) {
            let h = VcpuHandle::spawn(i, fd, ctx.clone()).map_err(|e| (i, e))?;
            vcpus.handles.push(h);
        }
        Ok(vcpus)
    }

    /// Pauses every vCPU: all are asked and kicked at once, then this waits until every one
    /// is out of KVM_RUN. If one is still running after [`PAUSE_TIMEOUT`], the others are
    /// resumed and the error names it: the machine is then not paused.
    pub fn pause(&self) -> Result<(), PauseError> {
        self.pause_within(PAUSE_TIMEOUT)
    }

    fn pause_within(&self, timeout: Duration) -> Result<(), PauseError> {
        for h in &self.handles {
            h.want(Want::Pause);
        }
        for h in &self.handles {
            h.kick();
        }
        let deadline = Instant::now() + timeout;
        let mut running = Vec::new();
        for h in &self.handles {
            let mut s = h.control.lock();
            while !VcpuHandle::is_stopped(&s) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    running.push(h.index);
                    break;
                }
                s = h
                    .control
                    .cond
                    .wait_timeout(s, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if running.is_empty() {
            Ok(())
        } else {
            self.resume();
            Err(PauseError {
                running,
                waited: timeout,
            })
        }
    }

    /// Resumes every paused vCPU.
    pub fn resume(&self) {
        for h in &self.handles {
            h.want(Want::Run);
        }
    }

    /// Stops every vCPU thread and waits for it.
    pub fn stop(&mut self) {
        for h in &self.handles {
            h.want(Want::Stop);
            h.kick();
        }
        for h in &mut self.handles {
            h.stop();
        }
    }
}

fn run(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext, control: &VcpuControl) {
    // The thread's setup is done (the vCPU was configured by the VMM): from here on it
    // makes only the calls its filter allows.
    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
        (ctx.on_event)(VcpuEvent::Crash(VcpuCrash::Seccomp {
            vcpu: index,
            message: crate::error_chain(&e),
        }));
        return;
    }
    KVM_RUN.with(|p| p.set(vcpu.get_kvm_run() as *mut kvm_run));
    run_loop(index, vcpu, ctx, control);
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
}

fn run_loop(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext, control: &VcpuControl) {
    loop {
        // Tell the guest's kvmclock that it was paused, so that its soft-lockup detector does
        // not count the pause (EINVAL before the guest enabled kvmclock: nothing to tell).
        let told = |fd: &VcpuFd| {
            if let Err(e) = fd.kvmclock_ctrl() {
                log::trace!("vCPU {index}: KVM_KVMCLOCK_CTRL: {e}");
            }
        };
        if !control.wait_to_run(|| told(vcpu)) {
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
            Ok(VcpuExit::InternalError) => Some(VcpuEvent::Crash(VcpuCrash::InternalError {
                vcpu: index,
                rip: vcpu.get_regs().ok().map(|r| r.rip),
            })),
            Ok(other) => exit_event(index, other),
            // A kick: in KVM_RUN (EINTR) or before it (immediate_exit made KVM return at
            // once). Clear the flag, then look at what the VMM wants.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                None
            }
            Err(source) => Some(VcpuEvent::Crash(VcpuCrash::Run {
                vcpu: index,
                source,
            })),
        };
        if let Some(ev) = event {
            // Halt before reporting, so that the VMM finds this vCPU out of KVM_RUN.
            control.lock().halted = true;
            (ctx.on_event)(ev);
        }
    }
}

/// PURE: what an exit other than device I/O means to the VMM; `None`: enter the guest again.
fn exit_event(index: u8, exit: VcpuExit<'_>) -> Option<VcpuEvent> {
    match exit {
        // With the in-kernel irqchip HLT stays in KVM; KVM_EXIT_INTR is a kick.
        VcpuExit::Hlt | VcpuExit::Intr => None,
        VcpuExit::Shutdown => Some(VcpuEvent::Reset),
        VcpuExit::SystemEvent(kind, _) => Some(match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuEvent::PowerOff,
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuEvent::Reset,
            kind => VcpuEvent::Crash(VcpuCrash::SystemEvent { vcpu: index, kind }),
        }),
        VcpuExit::InternalError => Some(VcpuEvent::Crash(VcpuCrash::InternalError {
            vcpu: index,
            rip: None,
        })),
        VcpuExit::FailEntry(reason, cpu) => Some(VcpuEvent::Crash(VcpuCrash::FailEntry {
            vcpu: index,
            reason,
            cpu,
        })),
        // Anything else (KVM_EXIT_UNKNOWN, EXCEPTION, …) is an exit kuml does not model:
        // re-entering would repeat it for ever at full CPU, so the machine stops (as
        // Firecracker does). Device I/O never gets here: run_loop serves it.
        other => Some(VcpuEvent::Crash(VcpuCrash::UnhandledExit {
            vcpu: index,
            exit: format!("{other:?}"),
        })),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that behaves like `run_loop` without KVM: it "runs" by sleeping in short
    /// slices (as KVM_RUN would until kicked) and looks at its state between them.
    fn fake_vcpu(index: u8, stuck: bool) -> VcpuHandle {
        let control = Arc::new(VcpuControl::default());
        let ctl = control.clone();
        let thread = std::thread::spawn(move || {
            while ctl.wait_to_run(|| {}) {
                if stuck {
                    // A vCPU inside a device handler that never returns (for this test).
                    std::thread::sleep(Duration::from_secs(3600));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            ctl.lock().finished = true;
            ctl.cond.notify_all();
        });
        VcpuHandle {
            index,
            thread: Some(thread),
            control,
        }
    }

    // Review G6: c0c0e17 logged these at debug level and entered the guest again, so one
    // that repeats was a silent 100 % CPU loop.
    #[test]
    fn exits_kuml_does_not_model_stop_the_machine() {
        let unhandled = [
            VcpuExit::Unknown,
            VcpuExit::Exception,
            VcpuExit::IrqWindowOpen,
            VcpuExit::Nmi,
            VcpuExit::Watchdog,
            VcpuExit::Unsupported(99),
        ];
        for exit in unhandled {
            let shown = format!("{exit:?}");
            match exit_event(2, exit) {
                Some(VcpuEvent::Crash(VcpuCrash::UnhandledExit { vcpu: 2, exit })) => {
                    assert_eq!(exit, shown)
                }
                other => panic!("{shown}: {other:?}"),
            }
        }
        let e = VcpuCrash::UnhandledExit {
            vcpu: 1,
            exit: "Unknown".into(),
        };
        assert_eq!(e.to_string(), "vCPU 1: unhandled KVM exit Unknown");
        // The machine stops with the crash status.
        let state = crate::exit::ExitState::new().unwrap();
        state.vcpu_event(exit_event(1, VcpuExit::Unknown).unwrap());
        assert_eq!(state.get(), Some(crate::exit::VmExit::Crash(e)));
        assert_eq!(state.get().unwrap().code(), 5);
    }

    #[test]
    fn exits_the_vmm_acts_on() {
        assert_eq!(exit_event(0, VcpuExit::Hlt), None);
        assert_eq!(exit_event(0, VcpuExit::Intr), None);
        assert_eq!(exit_event(0, VcpuExit::Shutdown), Some(VcpuEvent::Reset));
        let ev = |kind| exit_event(0, VcpuExit::SystemEvent(kind, &[]));
        assert_eq!(
            ev(kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN),
            Some(VcpuEvent::PowerOff)
        );
        assert_eq!(
            ev(kvm_bindings::KVM_SYSTEM_EVENT_RESET),
            Some(VcpuEvent::Reset)
        );
        assert_eq!(
            ev(kvm_bindings::KVM_SYSTEM_EVENT_CRASH),
            Some(VcpuEvent::Crash(VcpuCrash::SystemEvent {
                vcpu: 0,
                kind: kvm_bindings::KVM_SYSTEM_EVENT_CRASH
            }))
        );
        assert_eq!(
            exit_event(3, VcpuExit::FailEntry(7, 1)),
            Some(VcpuEvent::Crash(VcpuCrash::FailEntry {
                vcpu: 3,
                reason: 7,
                cpu: 1
            }))
        );
    }

    #[test]
    fn pause_waits_for_every_vcpu_and_resume_releases_them() {
        install_kick_handler().unwrap();
        let vcpus = Vcpus {
            handles: (0..4).map(|i| fake_vcpu(i, false)).collect(),
        };
        vcpus.pause().unwrap();
        for h in &vcpus.handles {
            assert!(h.control.lock().parked, "vCPU {} parked", h.index);
        }
        vcpus.resume();
        for h in &vcpus.handles {
            let mut s = h.control.lock();
            while s.parked {
                s = h.control.cond.wait(s).unwrap();
            }
        }
        let mut vcpus = vcpus;
        vcpus.stop();
        assert!(vcpus.handles.iter().all(|h| h.control.lock().finished));
    }

    #[test]
    fn a_vcpu_that_stays_in_kvm_run_fails_the_pause() {
        install_kick_handler().unwrap();
        let vcpus = Vcpus {
            handles: vec![fake_vcpu(0, false), fake_vcpu(1, true)],
        };
        // Let vCPU 1 get stuck before the pause.
        std::thread::sleep(Duration::from_millis(50));
        let e = vcpus.pause_within(Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.running, vec![1]);
        assert!(e.to_string().contains("[1]"), "{e}");
        // The others were let go again.
        let h = &vcpus.handles[0];
        let mut s = h.control.lock();
        while s.parked {
            s = h.control.cond.wait(s).unwrap();
        }
        assert_eq!(s.want, Want::Run);
        drop(s);
        // Detach the stuck thread: it sleeps for an hour and holds nothing.
        let mut vcpus = vcpus;
        for h in &mut vcpus.handles {
            drop(h.thread.take());
        }
    }
}
