//! Fuzz harnesses for the hostfs grammars (feature `fuzzing`, and tests).
//!
//! The libFuzzer targets in `fuzz/fuzz_targets/<name>.rs` only call these; the `kuml`
//! crate's `fuzzing::tests` replays the committed seeds in `fuzz/seeds/<name>/` through
//! [`TARGETS`] on the stable toolchain.

use std::path::Path;

use crate::mount_data::{parse_mount_data, PATH_MAX};
use crate::spec::{check_tag, parse_share, parse_share_name, MAX_SHARES};

/// A harness: fuzz input in, panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// The targets this crate owns, by the name of their `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("hostfs_spec", hostfs_spec),
    ("hostfs_mount_data", hostfs_mount_data),
];

/// `hostfs<N>=<dir>[,flags]`: the input is an option word; a parsed share has a valid tag and
/// index and prints back to itself.
pub fn hostfs_spec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (name, value) = text.split_once('=').unwrap_or((&text, ""));
    let Some(Ok(index)) = parse_share_name(name) else {
        return;
    };
    assert!(index < MAX_SHARES);
    if let Ok(spec) = parse_share(index, value) {
        assert!(check_tag(&spec.tag).is_ok(), "a parsed tag is valid");
        assert!(!spec.dir.as_os_str().is_empty());
        let again = parse_share(index, &spec.value()).expect("a share's value parses");
        assert_eq!(again, spec, "a share prints back to itself");
    }
}

/// UML's mount data: a parsed path has no leading slash, fits the kernel, and resolves inside
/// the export.
pub fn hostfs_mount_data(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = parse_mount_data(&text) {
        assert!(!m.path.starts_with('/'));
        assert!(m.path.len() < PATH_MAX);
        let export = Path::new("/export");
        assert!(
            m.host_path(export).starts_with(export),
            "stays in the export"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harnesses_take_odd_input() {
        for (_, h) in TARGETS {
            for input in [
                &b""[..],
                b"hostfs",
                b"hostfs=",
                b"hostfs1=,ro",
                b"\xff\0,,ro",
            ] {
                h(input);
            }
        }
    }
}
