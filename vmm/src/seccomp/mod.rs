//! Least privilege: after its setup each kuml thread runs under a seccomp filter that allows
//! only what that kind of thread does (built with rust-vmm's `seccompiler`).
//!
//! * the main thread installs the event loop's filter once the process is set up (umid
//!   directory, mconsole socket, signals) and before it builds the first machine, so the
//!   boot itself (and every reboot, which builds the machine again) runs filtered;
//! * each vCPU thread adds the vCPU filter before its first KVM_RUN (filters stack: a call
//!   must pass both);
//! * the launcher thread, started before any filter, starts every helper process (xterm,
//!   passt, virtiofsd, ifup scripts): a child inherits its parent thread's filter, and the
//!   helpers sandbox themselves with calls kuml never makes (namespaces, mount, their own
//!   filters). Its filter denies a list instead: what no helper needs;
//! * threads the event loop starts later (relays of a helper's messages) run under the
//!   event loop's filter, which they inherit.
//!
//! A refused call raises SIGSYS; the handler ([`trap`]) prints which thread, which filter and
//! which call, and ends kuml with exit status 1. `KUML_SECCOMP` chooses the mode: `on`
//! (default), `log` (nothing refused, every call outside a filter logged by the kernel as an
//! audit record while the kernel's audit is enabled) or `off`.

mod allow;
mod launcher;
mod names;
mod trap;

use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use allow::{rules, ThreadKind};
pub use launcher::spawn;
pub use trap::syscall_name;

/// The environment variable that chooses the [`Mode`].
pub const ENV: &str = "KUML_SECCOMP";

/// Whether and how the filters act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A call outside the filter ends kuml (SIGSYS, reported).
    On,
    /// A call outside the filter is allowed and logged by the kernel (audit, `dmesg`).
    Log,
    /// No filters.
    Off,
}

/// Why the filters could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `KUML_SECCOMP` has a value kuml does not know.
    #[error("{ENV}={0}: expected on, log or off")]
    BadMode(String),
    /// A filter could not be built.
    #[error("cannot build the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused a filter.
    #[error("cannot install the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    /// The SIGSYS handler.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    /// The launcher thread.
    #[error("cannot start the launcher thread")]
    Launcher(#[source] std::io::Error),
}

impl Mode {
    /// The mode `KUML_SECCOMP`'s value asks for (unset: on).
    pub fn parse(value: Option<&str>) -> Result<Mode, SeccompError> {
        match value.map(str::trim) {
            None | Some("") | Some("on") => Ok(Mode::On),
            Some("log") => Ok(Mode::Log),
            Some("off") => Ok(Mode::Off),
            Some(other) => Err(SeccompError::BadMode(other.to_owned())),
        }
    }

    /// The mode the environment asks for.
    pub fn from_env() -> Result<Mode, SeccompError> {
        let v = std::env::var_os(ENV).map(|v| v.to_string_lossy().into_owned());
        Mode::parse(v.as_deref())
    }
}

/// The process's mode, once [`enable`] ran; threads of a process that never called it (unit
/// tests, other users of the library) install nothing.
static MODE: OnceLock<Mode> = OnceLock::new();

/// Turns the filters on for this process in `mode`: the SIGSYS handler, and the launcher
/// thread (started now, before any filter, then filtered itself). Call once, before any
/// other thread starts.
pub fn enable(mode: Mode) -> Result<(), SeccompError> {
    if MODE.set(mode).is_err() || mode == Mode::Off {
        return Ok(());
    }
    trap::install_handler().map_err(SeccompError::Handler)?;
    launcher::start().map_err(SeccompError::Launcher)?;
    Ok(())
}

/// The compiled filter of `kind` in `mode` (`Off` has none).
pub fn program(kind: ThreadKind, mode: Mode) -> Result<Option<BpfProgram>, SeccompError> {
    let (mismatch, matched) = match (kind, mode) {
        (_, Mode::Off) => return Ok(None),
        (ThreadKind::Launcher, Mode::On) => (SeccompAction::Allow, SeccompAction::Trap),
        (ThreadKind::Launcher, Mode::Log) => (SeccompAction::Allow, SeccompAction::Log),
        (_, Mode::On) => (SeccompAction::Trap, SeccompAction::Allow),
        (_, Mode::Log) => (SeccompAction::Log, SeccompAction::Allow),
    };
    let build = |e| SeccompError::Build(kind.name(), e);
    let filter = SeccompFilter::new(rules(kind).map_err(build)?, mismatch, matched, arch())
        .map_err(build)?;
    Ok(Some(filter.try_into().map_err(build)?))
}

fn arch() -> TargetArch {
    TargetArch::x86_64
}

/// Puts the calling thread under `kind`'s filter, if [`enable`] turned filters on.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(mode) = MODE.get().copied() else {
        return Ok(());
    };
    install_in(kind, mode)
}

/// Puts the calling thread under `kind`'s filter in `mode`, whether or not [`enable`] ran
/// (tests use this in a child process).
pub fn install_in(kind: ThreadKind, mode: Mode) -> Result<(), SeccompError> {
    let Some(prog) = program(kind, mode)? else {
        return Ok(());
    };
    trap::set_filter_name(kind.name());
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(kind.name(), e))?;
    log::debug!(
        "seccomp: thread {:?} runs under the {} filter ({mode:?})",
        std::thread::current().name().unwrap_or("?"),
        kind.name()
    );
    Ok(())
}

/// Sets up the handler only: for a test that installs a filter with [`install_in`] and
/// then makes a forbidden call, to see the report.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    trap::install_handler().map_err(SeccompError::Handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mode_from_the_environment_value() {
        assert_eq!(Mode::parse(None).unwrap(), Mode::On);
        assert_eq!(Mode::parse(Some("")).unwrap(), Mode::On);
        assert_eq!(Mode::parse(Some("on")).unwrap(), Mode::On);
        assert_eq!(Mode::parse(Some("log")).unwrap(), Mode::Log);
        assert_eq!(Mode::parse(Some("off")).unwrap(), Mode::Off);
        let e = Mode::parse(Some("yes")).unwrap_err();
        assert_eq!(e.to_string(), "KUML_SECCOMP=yes: expected on, log or off");
    }

    #[test]
    fn test_every_filter_compiles_in_every_mode() {
        for kind in [
            ThreadKind::EventLoop,
            ThreadKind::Vcpu,
            ThreadKind::Launcher,
        ] {
            for mode in [Mode::On, Mode::Log] {
                let p = program(kind, mode).unwrap().unwrap();
                assert!(
                    p.len() > 10,
                    "{} {mode:?}: {} instructions",
                    kind.name(),
                    p.len()
                );
            }
            assert!(program(kind, Mode::Off).unwrap().is_none());
        }
    }

    #[test]
    fn test_install_without_enable_does_nothing() {
        // This test process never called enable(): the thread stays unfiltered.
        install(ThreadKind::Vcpu).unwrap();
        let fd = std::net::UdpSocket::bind("127.0.0.1:0");
        assert!(fd.is_ok(), "socket() still works");
    }
}
