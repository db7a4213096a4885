//! Fuzz harness for kuml's whole command line (feature `fuzzing`, and tests), and the one
//! stable test that replays every fuzz target's committed seeds.
//!
//! The libFuzzer target `fuzz/fuzz_targets/cmdline.rs` only calls [`cmdline`]. The test below
//! replays `fuzz/seeds/<name>/` through the harness tables of every crate (`TARGETS`; this
//! crate's dev-dependencies turn on their `fuzzing` features) on the stable toolchain, and
//! checks that fuzz/Cargo.toml and the harness tables name the same targets.

use devices::chan::{resolve_lines, LineClass};

use crate::config::{parse, parse_size, Action};
use crate::guest::guest_cmdline;

/// A harness: fuzz input in, panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// The targets this crate owns, by the name of their `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Harness)] = &[("cmdline", cmdline)];

/// The whole command line: the input split at NUL bytes is argv (without the program name).
/// A configuration that parses gives a guest command line and resolves its console and
/// serial lines (the steps the builder takes before it opens anything); every word is also
/// tried as a size.
pub fn cmdline(data: &[u8]) {
    let args: Vec<String> = data
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for a in &args {
        let _ = parse_size(a);
    }
    let Ok(Action::Run(cfg)) = parse(&args) else {
        return;
    };
    let line = guest_cmdline(&cfg);
    assert!(!line.contains('\0'), "no NUL in the guest command line");
    let _ = resolve_lines(
        LineClass::Console,
        cfg.con.all.as_deref(),
        &cfg.con.each,
        16,
        false,
    );
    let _ = resolve_lines(
        LineClass::Serial,
        cfg.ssl.all.as_deref(),
        &cfg.ssl.each,
        4,
        false,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every crate's harness table, with the path its targets call it by.
    fn tables() -> [(&'static str, &'static [(&'static str, Harness)]); 6] {
        [
            ("ubd", ubd::fuzzing::TARGETS),
            ("hostfs", hostfs::fuzzing::TARGETS),
            ("netdev", netdev::fuzzing::TARGETS),
            ("mconsole", mconsole::fuzzing::TARGETS),
            ("devices", devices::fuzzing::TARGETS),
            ("kuml", TARGETS),
        ]
    }

    /// Replays every committed seed of every target, checks that each target's libFuzzer
    /// wrapper calls its harness, and that fuzz/Cargo.toml has exactly these targets.
    #[test]
    fn test_seed_corpora_replay() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
        let bins: BTreeSet<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| *n != "kuml-fuzz")
            .collect();
        let mut named = BTreeSet::new();
        for (krate, table) in tables() {
            for (name, harness) in table {
                named.insert(*name);
                let target = fuzz.join(format!("fuzz_targets/{name}.rs"));
                let src = std::fs::read_to_string(&target).expect("the fuzz target exists");
                assert!(
                    src.contains(&format!("{krate}::fuzzing::{name}(")),
                    "{} calls {krate}::fuzzing::{name}",
                    target.display()
                );
                let dir = fuzz.join("seeds").join(name);
                let mut seen = 0;
                for e in std::fs::read_dir(&dir).expect("the seed directory exists") {
                    harness(&std::fs::read(e.unwrap().path()).unwrap());
                    seen += 1;
                }
                assert!(seen > 0, "{} holds seeds", dir.display());
            }
        }
        assert_eq!(bins, named, "fuzz/Cargo.toml targets = the harness tables");
    }
}
