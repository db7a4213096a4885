//! A logger for tests: what each thread logged, so that a test can count what the device it
//! drives (on its own thread) said.

use std::cell::RefCell;

use log::{Level, LevelFilter, Log, Metadata, Record};

thread_local! {
    static RECORDS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

struct ThreadLog;

impl Log for ThreadLog {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        RECORDS.with(|r| {
            r.borrow_mut()
                .push((record.level(), record.args().to_string()))
        });
    }

    fn flush(&self) {}
}

static LOGGER: ThreadLog = ThreadLog;

/// Records this thread's log from now on (the logger is installed once per process).
pub fn start() {
    // Fails only when it is installed already, which is what we want.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Trace);
    RECORDS.with(|r| r.borrow_mut().clear());
}

/// The messages this thread logged at `level` since [`start`].
pub fn at(level: Level) -> Vec<String> {
    RECORDS.with(|r| {
        r.borrow()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, m)| m.clone())
            .collect()
    })
}
