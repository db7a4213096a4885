//! `kuml`: run a Linux guest on KVM with User-Mode Linux's command line.

use std::io::Write;
use std::process::ExitCode;

use kuml::config::{self, Action};
use kuml::exit::{VmExit, EXIT_ERROR, EXIT_USAGE};
use kuml::{builder, event_loop, terminal, vstate};

const USAGE: &str = "\
kuml — run a Linux kernel on KVM with User-Mode Linux's command line

Usage: kuml [option=value ...] [guest kernel arguments ...]

Every word kuml does not recognise goes to the guest kernel command line, as UML does.

Options:
  mem=<size>          guest memory, with K, M, G or T suffix (default 64M)
  ncpus=<n>           number of vCPUs, 1 to 64 (default 1)
  kernel=<file>       guest kernel: an uncompressed vmlinux (fast) or a bzImage
                      (default: $KUML_KERNEL, else build/guest/vmlinux from resources/)
  initrd=<file>       initial ramdisk
  umid=<name>         instance name (default: random)
  uml_dir=<dir>       directory of instance directories (default ~/.uml)
  noreboot            exit when the guest reboots instead of restarting it
  ubd<N><flags>=<file>[,<backing>]   block device (see the README)
  eth<N>=<transport>,...             network device
  con=<chan>, con<N>=<chan>          consoles
  ssl=<chan>, ssl<N>=<chan>          serial lines
  mconsole=notify:<socket>           notification socket
  --help, -h          print this text
  --version, -V       print the version

Console: the guest's console is COM1 (ttyS0) on kuml's stdin and stdout unless the guest
command line names another console=. A terminal on stdin is put in raw mode, so Ctrl-C
goes to the guest. SIGTERM, SIGINT (when not from the terminal) and SIGHUP stop the VM.

Exit status:
  0    the guest powered off
  1    kuml could not start or run the VM (the message says why)
  2    the command line is wrong
  3    the guest rebooted and noreboot was given (otherwise the VM restarts)
  4    the guest kernel panicked (reported through pvpanic)
  5    the guest crashed in a way KVM cannot continue (e.g. an instruction KVM cannot emulate)
  128+N  stopped by signal N (SIGTERM: 143)
  other  the status the guest wrote to the test exit port (I/O port 0xf4)

Environment: RUST_LOG=info|debug|trace for kuml's own log on stderr.
";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let action = match config::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kuml: {e}");
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
    match run(&cfg) {
        Ok(exit) => {
            if let VmExit::Crash(what) = &exit {
                eprintln!("kuml: the guest crashed: {what}");
            }
            ExitCode::from(exit.code().clamp(0, 255) as u8)
        }
        Err(e) => {
            terminal::restore();
            eprintln!("kuml: {}", chain(e.as_ref()));
            ExitCode::from(EXIT_ERROR as u8)
        }
    }
}

/// "outer: inner: innermost", printed once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn run(cfg: &config::Config) -> Result<VmExit, Box<dyn std::error::Error>> {
    event_loop::block_stop_signals()?;
    vstate::vcpu::install_kick_handler()?;
    let _raw = terminal::RawMode::enter(event_loop::stdin_fd());
    let output = |i: usize| -> Box<dyn Write + Send> {
        if i == 0 {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::io::sink())
        }
    };
    loop {
        let mut machine = builder::build(cfg, &output)?;
        let input = Some((event_loop::stdin_fd(), machine.consoles.serials[0].clone()));
        let exit = event_loop::run(machine.exit.clone(), input)?;
        machine.stop();
        drop(machine);
        if exit == VmExit::Reboot && !cfg.noreboot {
            log::info!("the guest rebooted; restarting it");
            continue;
        }
        return Ok(exit);
    }
}
