//! UML's console lines (`mconsole (version 2) initialized on …`, `Creating "<cow>" as COW file
//! for "<backing>"`, `Netdevice 0 (<mac>) : `…) next to kuml's own log.
//!
//! UML prints these through its kernel log, which reaches con0: standard output by default
//! (`con0=fd:0,fd:1`). Tools that drive UML read them there, so kuml prints them on standard
//! output too, at every `RUST_LOG` level. The crates that produce them log them with the target
//! [`UML_TARGET`] (`log::info!(target: "uml", …)`); every other record is kuml's own log, on
//! standard error, filtered by `RUST_LOG` as before.

use std::io::{IsTerminal, Write};

use log::{LevelFilter, Log, Metadata, Record};

/// The log target of UML's console lines (the leaf crates spell it out: they share no crate).
pub const UML_TARGET: &str = "uml";

/// UML's lines on stdout, the rest to `inner`.
struct Split {
    inner: env_logger::Logger,
}

impl Log for Split {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.target() == UML_TARGET || self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if record.target() != UML_TARGET {
            self.inner.log(record);
            return;
        }
        let mut out = std::io::stdout().lock();
        // A terminal on con0 is in raw mode while the guest runs: end the line as the guest's
        // console does.
        let end = if out.is_terminal() { "\r\n" } else { "\n" };
        // Nothing to do if stdout is gone: the line is lost, as UML's would be.
        let _ = write!(out, "{}{end}", record.args()).and_then(|_| out.flush());
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger: UML's lines always, kuml's own log as `RUST_LOG` says (default `warn`),
/// with millisecond timestamps.
pub fn init() {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .build();
    let max = inner.filter().max(LevelFilter::Info);
    if log::set_boxed_logger(Box::new(Split { inner })).is_ok() {
        log::set_max_level(max);
    }
}
