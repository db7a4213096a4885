//! `kuml`: run a Linux guest on KVM with User-Mode Linux's command line.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use kuml::config::{self, Action};
use kuml::control::ControlQueue;
use kuml::exit::{VmExit, EXIT_ERROR, EXIT_USAGE};
use kuml::mconsole_adapter::MconsoleFrontend;
use kuml::uml_log::UML_TARGET;
use kuml::vmm::{Vmm, VmmError};
use kuml::{error_chain, event_loop, guest, seccomp, session, vstate};

const USAGE: &str = "\
kuml — run a Linux kernel on KVM with User-Mode Linux's command line

Usage: kuml [option=value ...] [guest kernel arguments ...] [-- init arguments ...]

Every word kuml does not recognise goes to the guest kernel command line untouched and in order,
as UML does (KEY=value words the kernel does not know become init's environment; words after
-- are init's arguments, and kuml reads no option there). Options may carry double quotes, as
UML's kernel parser strips them (\"ubd0=a.cow,base.img\"). kuml also works as UML's `linux` or
`linux.uml` (a link to it; docs/uml-compat.md).

Options:
  mem=<size>          guest memory, with K, M, G or T suffix (default 64M)
  ncpus=<n>           number of vCPUs, 1 to 64 (default 1)
  kernel=<file>       guest kernel: an uncompressed vmlinux (fast) or a bzImage
                      (default: $KUML_KERNEL, else build/guest/vmlinux from resources/)
  initrd=<file>       initial ramdisk
  umid=<name>         instance name (default: random)
  uml_dir=<dir>       directory of instance directories (default ~/.uml)
  noreboot            exit when the guest reboots instead of restarting it
  ubd<N><flags>=<file>[,<backing>]   block device (see the README); N is 0..15 or a..p.
                      Without ubd0, UML's default ubd0=root_fs (in the working directory);
                      when it is missing kuml stops with an error, unless initrd=, a root=
                      other than ubd0 or rootfstype=hostfs is given. root= defaults to ubd0
                      (UML's 98:0). The guest's disks are virtio vda, vdb, ... in unit order,
                      serial ubdN; root=/dev/ubdX and root=98:M are rewritten to that vdY.
  eth<N>=<transport>,...             network device: tuntap, mcast, daemon (uml_switch),
                                     slirp (passt, libslirp-helper: no root), vde (vde_switch)
  vec<N>:transport=<t>,<key>=<v>,... UML's vector network device: tap, raw, gre, l2tpv3, fd
  con=<chan>, con<N>=<chan>          consoles
  ssl=<chan>, ssl<N>=<chan>          serial lines
  mconsole=notify:<socket>           notification socket
  hostfs=<dir>[,ro]   UML's hostfs root: the guest's `mount -t hostfs none <mnt> -o <path>`
                      and `rootfstype=hostfs rootflags=<path>` reach <dir>/<path> (default /)
  hostfs<N>=<dir>[,ro][,tag=<tag>]   another shared directory, N=1..15 (guest:
                      mount -t virtiofs <tag> <mnt>; tag default hostfs<N>)
  nohostfs            no hostfs export
  xterm=<term>[,<title sw>[,<exec sw>]]  terminal for xterm channels (default xterm,-T,-e)
  time-travel[=...], ssl-non-raw, nosysemu, fake_ide, iomem=..., udb...
                      UML options with no meaning under KVM: one warning each, ignored
  --help, -h          print this text
  --version, -V       print the version

hostfs: each share is served by a sandboxed virtiofsd (virtio-fs) running as kuml's user;
the project's guest kernel has UML's `hostfs` type, stock kernels use mount.hostfs or
`mount -t virtiofs hostfs <mnt>` (docs/hostfs.md). Without virtiofsd the guest has no hostfs.
mconsole adds and removes shares at run time with the same syntax (a kuml addition):
`config hostfs1=/srv/data,ro`, `config hostfs1` (its value), `remove hostfs1`.

Consoles: con0 is the guest's hvc0 and its kernel console (console=hvc0 unless the guest
command line names another console=), on kuml's stdin and stdout by default (con0=fd:0,fd:1).
UML's console names work: console=tty0 (or tty) is con0, console=ttyN conN (created with the
default channel if nothing names it), console=ttySN the serial line sslN; kuml keeps the word
and adds console=hvcK after it (K: conN's place among the consoles at boot, N without gaps),
saying so once on stderr. The project's guest links UML's /dev/ttyN to conN's hvc and
/dev/ubdX to disk ubdN's vdY (serial ubdN); resources/udev/ does it for distribution roots.
A terminal on stdin is put in raw mode, so Ctrl-C goes to the guest. Other consoles con1..15
are /dev/hvc1..; serial lines ssl0..ssl3 are COM1..COM4 (/dev/ttyS0..3). A channel is fd:N,
null, none (the line does not exist), pts, pty, port:P (telnet on 127.0.0.1; port:ADDR:P
listens on ADDR), xterm, tty:DEV or file:PATH, or an in,out pair. UML's default for consoles
other than con0 and for serial lines is xterm; kuml uses pts when DISPLAY is not set.
A console's pts is allocated and announced (Virtual console N assigned device '/dev/pts/M'),
and its xterm started, when the guest opens it; a serial line's at start. Lines may share a
port: each telnet client takes the next line the guest has open and no client holds;
connections are refused while there is none.
Consoles beyond con0 exist at boot only when named (all 16 with con=).

UML's console lines (mconsole (version 2) initialized on ..., Creating \"<cow>\" as COW file
for \"<backing>\", Virtual console N assigned device '...', Netdevice N (...) : ...) go to
stdout at every RUST_LOG level, as UML prints them on con0.

No root: kuml runs as any user who may read and write /dev/kvm (Debian: group kvm, mode 0660;
`sudo adduser $USER kvm`). ~/.uml, COW files, every console channel, mcast, daemon, slirp and
hostfs work as that user. eth<N>=tuntap,<tap> needs a tap root made for the user beforehand
(`sudo ip tuntap add dev <tap> mode tap user $USER`) and a /dev/net/tun the user may open;
creating a tap (eth<N>=tuntap, a tap that does not exist) and UML's gate (tuntap,,,<gate>)
need root (CAP_NET_ADMIN): kuml stops before the boot saying so (exit 1).

Process: kuml calls setsid() at start (its process group id is its pid; helpers such as an
xterm stay in its group) and writes its pid to <uml_dir>/<umid>/pid. SIGTERM, SIGINT (when not
from the terminal) and SIGHUP stop the VM and remove the umid directory. SIGWINCH: consoles on a
terminal give the guest its new size.

Exit status:
  0    the guest powered off
  1    kuml could not start or run the VM (the message says why)
  2    the command line is wrong
  3    the guest rebooted and noreboot was given (otherwise the VM restarts)
  4    the guest kernel panicked (reported through pvpanic)
  5    the guest crashed in a way KVM cannot continue (e.g. an instruction KVM cannot emulate)
  128+N  stopped by signal N (SIGTERM: 143)
  other  the status the guest wrote to the test exit port (I/O port 0xf4)

Least privilege: after its setup each kuml thread (the event loop, each vCPU, the launcher
that starts helpers) runs under a seccomp filter that allows only what it does; a call outside
it ends kuml (status 1) with a line naming the thread, its filter and the system call.

Environment: RUST_LOG=info|debug|trace for kuml's own log on stderr.
             KUML_SECCOMP=on|log|off: the seccomp filters (default on; log: refuse nothing,
             the kernel logs each call outside a filter; off: no filters, for debugging).
";

fn main() -> ExitCode {
    // Before kuml opens anything: what is open now was handed over (vecN:transport=fd,fd=N).
    netdev::inherited::record();
    kuml::uml_log::init();
    let action = match config::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kuml: {}", error_chain(&e));
            eprintln!("Try 'kuml --help' for more information.");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let cfg = match action {
        Action::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Action::Version => {
            println!("kuml {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Action::Run(cfg) => cfg,
    };
    let mut cfg = *cfg;
    let filters = match seccomp::Mode::from_env() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kuml: {e}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    for w in &cfg.warnings {
        eprintln!("kuml: {w}");
    }
    for note in guest::console_notes(&cfg) {
        eprintln!("kuml: {note}");
    }
    if let Err(e) = cfg.apply_default_ubd0(Path::new(config::DEFAULT_UBD0).exists()) {
        eprintln!("kuml: {e}");
        return ExitCode::from(EXIT_ERROR as u8);
    }
    session::become_session_leader();
    match run(&cfg, filters) {
        Ok(exit) => {
            devices::chan::restore_terminals();
            if let VmExit::Crash(what) = &exit {
                eprintln!("kuml: the guest crashed: {}", error_chain(what));
            }
            ExitCode::from(exit.code().clamp(0, 255) as u8)
        }
        Err(e) => {
            devices::chan::restore_terminals();
            eprintln!("kuml: {}", error_chain(&e));
            ExitCode::from(EXIT_ERROR as u8)
        }
    }
}

/// Why kuml could not start or run the VM.
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// The process setup (signal mask, kick handler).
    #[error("cannot set up kuml's signals")]
    Signals(#[source] std::io::Error),
    /// The instance directory.
    #[error(transparent)]
    Umid(#[from] mconsole::UmidError),
    /// The mconsole socket.
    #[error(transparent)]
    Mconsole(#[from] mconsole::ServerError),
    /// The notification socket.
    #[error("mconsole=notify")]
    Notify(#[source] mconsole::notify::NotifyError),
    /// The control queue's eventfd.
    #[error("cannot create the control queue")]
    Control(#[source] std::io::Error),
    /// The main thread's seccomp filter.
    #[error(transparent)]
    Seccomp(kuml::seccomp::SeccompError),
    /// Building or running the VM.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

fn run(cfg: &config::Config, filters: seccomp::Mode) -> Result<VmExit, RunError> {
    event_loop::block_loop_signals().map_err(RunError::Signals)?;
    vstate::vcpu::install_kick_handler().map_err(RunError::Signals)?;
    // The launcher thread starts here: after the stop signals are blocked (it inherits the
    // mask, so SIGTERM reaches the event loop's signalfd and never kills kuml on the
    // launcher), before any filter (it must be unfiltered when it starts).
    seccomp::enable(filters).map_err(RunError::Seccomp)?;
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        devices::chan::restore_terminals();
        prev(info);
    }));
    let uml_dir = match &cfg.uml_dir {
        Some(d) => mconsole::umid::expand_uml_dir(&d.to_string_lossy())?,
        None => mconsole::umid::default_uml_dir()?,
    };
    let umid_dir = mconsole::UmidDir::create(&uml_dir, cfg.umid.as_deref())?;
    if let Some(c) = umid_dir.collision() {
        log::warn!(target: UML_TARGET, "{c}");
    }
    let umid = umid_dir.umid().to_owned();
    let server = Arc::new(Mutex::new(mconsole::Server::bind(umid_dir.socket_path())?));
    let notifier = cfg
        .mconsole_notify
        .as_ref()
        .map(mconsole::notify::Notifier::new)
        .transpose()
        .map_err(RunError::Notify)?;
    if let Some(n) = &notifier {
        if let Err(e) = n.socket_ready(&umid_dir.socket_path()) {
            log::warn!("mconsole notification: {}", error_chain(&e));
        }
    }
    let version = guest::guest_version(cfg);
    let wake =
        vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(RunError::Control)?;
    let queue = ControlQueue::new(wake);
    let mconsole = Arc::new(Mutex::new(MconsoleFrontend::new(server, queue.clone())));
    // The process is set up: the main thread runs the event loop from here on, and builds
    // each machine (the first and every one after a reboot) under its filter.
    seccomp::install(seccomp::ThreadKind::EventLoop).map_err(RunError::Seccomp)?;
    let mut next = cfg.clone();
    loop {
        let mut vmm = Vmm::build(&next, &umid, queue.clone(), version.clone())?;
        vmm.add_subscriber(mconsole.clone());
        let exit = vmm.run().map_err(VmmError::from)?;
        if exit == VmExit::Panic {
            if let Some(n) = &notifier {
                if let Err(e) = n.panic("the guest kernel panicked") {
                    log::warn!("mconsole notification: {}", error_chain(&e));
                }
            }
        }
        // Requests still waiting for the guest are answered (with an error) before the
        // machine goes; a restarted machine has the devices and lines of this one.
        next = vmm.shutdown(&exit);
        kuml::device_manager::locked(&mconsole).flush();
        if exit == VmExit::Reboot && !cfg.noreboot {
            log::info!("the guest rebooted; restarting it");
            kuml::device_manager::locked(&mconsole).machine_restarted();
            continue;
        }
        return Ok(exit);
    }
}
