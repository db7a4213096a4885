//! PURE: UML's hostfs mount data, as the guest passes it to `mount(2)`.
//!
//! In UML the whole data string is the host path (`mount -t hostfs none /mnt -o /home/u`,
//! `rootflags=/srv/root`); kernels since 6.11 also take `hostfs=<path>`. kuml's guest kernel
//! (patch `0006`, the `hostfs` type in `fs/fuse/virtio_fs.c`) and the `mount.hostfs` helper for
//! stock kernels read the same grammar, which this module defines:
//!
//! * the data is split at commas; empty items are ignored;
//! * `ro` and `rw` make the mount read-only or writable (the last one wins; `mount(8)` takes
//!   them out of the data itself and passes them as flags);
//! * `hostfs=<path>` names the path;
//! * every other item is part of a bare path, joined back with commas in order (so UML's
//!   `-o /srv/a,b` still names the directory `a,b`);
//! * a `hostfs=` path and a bare path together are refused, and so are NUL bytes and paths
//!   longer than [`PATH_MAX`].
//!
//! The path is relative to the export (`hostfs=<dir>` on kuml's command line, by default the
//! host's `/`), as UML joins it to its `hostfs=` root; a leading `/` changes nothing. The guest
//! resolves it inside the share: `..` stops at the export's root, and symbolic links resolve
//! there too (an absolute link target starts at the export's root).

use std::path::{Path, PathBuf};

/// The longest path the guest kernel takes (`PATH_MAX`, with its NUL).
pub const PATH_MAX: usize = 4096;

/// What a hostfs mount asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountData {
    /// The path inside the export, without leading slashes; empty for the export's root.
    pub path: String,
    /// `Some(true)` for `ro`, `Some(false)` for `rw`, `None` when neither was given.
    pub read_only: Option<bool>,
}

/// Mount data the hostfs type refuses (the guest kernel answers `EINVAL`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountDataError {
    /// `hostfs=` twice, or together with a bare path.
    #[error("more than one path in the mount data")]
    TwoPaths,
    /// A NUL byte (mount(2) data is a C string).
    #[error("the mount data holds a NUL byte")]
    Nul,
    /// Longer than the kernel takes.
    #[error("the path is longer than {PATH_MAX} bytes")]
    TooLong,
}

/// Parses hostfs mount data (see the module documentation).
pub fn parse_mount_data(data: &str) -> Result<MountData, MountDataError> {
    if data.contains('\0') {
        return Err(MountDataError::Nul);
    }
    let mut read_only = None;
    let mut named: Option<&str> = None;
    let mut bare: Vec<&str> = Vec::new();
    for item in data.split(',') {
        match item {
            "" => {}
            "ro" => read_only = Some(true),
            "rw" => read_only = Some(false),
            _ => match item.strip_prefix("hostfs=") {
                Some(p) => {
                    if named.replace(p).is_some() {
                        return Err(MountDataError::TwoPaths);
                    }
                }
                None => bare.push(item),
            },
        }
    }
    let path = match (named, bare.is_empty()) {
        (Some(_), false) => return Err(MountDataError::TwoPaths),
        (Some(p), true) => p.to_owned(),
        (None, _) => bare.join(","),
    };
    if path.len() >= PATH_MAX {
        return Err(MountDataError::TooLong);
    }
    Ok(MountData {
        path: path.trim_start_matches('/').to_owned(),
        read_only,
    })
}

impl MountData {
    /// Where the path lies on the host when the export is `export`, resolved by its words
    /// alone: `.` is dropped and `..` stops at the export's root, as in the guest. (Symbolic
    /// links are left to the file system: the guest resolves them inside the share.)
    pub fn host_path(&self, export: &Path) -> PathBuf {
        let mut parts: Vec<&str> = Vec::new();
        for c in self.path.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        let mut p = export.to_path_buf();
        p.extend(parts);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn md(path: &str, read_only: Option<bool>) -> MountData {
        MountData {
            path: path.to_owned(),
            read_only,
        }
    }

    #[test]
    fn uml_data() {
        assert_eq!(parse_mount_data("/home/u"), Ok(md("home/u", None)));
        assert_eq!(parse_mount_data("hostfs=/home/u"), Ok(md("home/u", None)));
        assert_eq!(parse_mount_data(""), Ok(md("", None)));
        assert_eq!(parse_mount_data("/"), Ok(md("", None)));
        assert_eq!(parse_mount_data("hostfs="), Ok(md("", None)));
        // UML joins a relative path to its root as well.
        assert_eq!(parse_mount_data("srv/x"), Ok(md("srv/x", None)));
    }

    #[test]
    fn flags_and_commas() {
        assert_eq!(parse_mount_data("/srv,ro"), Ok(md("srv", Some(true))));
        assert_eq!(parse_mount_data("ro,/srv"), Ok(md("srv", Some(true))));
        assert_eq!(
            parse_mount_data("ro,hostfs=/srv,rw"),
            Ok(md("srv", Some(false)))
        );
        assert_eq!(parse_mount_data("ro"), Ok(md("", Some(true))));
        // A bare path with a comma in it, as UML would take it.
        assert_eq!(parse_mount_data("/srv/a,b"), Ok(md("srv/a,b", None)));
        assert_eq!(
            parse_mount_data("/srv/a,,b,ro"),
            Ok(md("srv/a,b", Some(true)))
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse_mount_data("hostfs=/a,hostfs=/b"),
            Err(MountDataError::TwoPaths)
        );
        assert_eq!(
            parse_mount_data("hostfs=/a,/b"),
            Err(MountDataError::TwoPaths)
        );
        assert_eq!(parse_mount_data("/a\0b"), Err(MountDataError::Nul));
        let long = format!("/{}", "x".repeat(PATH_MAX));
        assert_eq!(parse_mount_data(&long), Err(MountDataError::TooLong));
        assert!(parse_mount_data(&format!("/{}", "x".repeat(PATH_MAX - 2))).is_ok());
    }

    #[test]
    fn host_paths_stay_in_the_export() {
        let e = Path::new("/srv/export");
        let p = |d: &str| parse_mount_data(d).unwrap().host_path(e);
        assert_eq!(p("/home/u"), PathBuf::from("/srv/export/home/u"));
        assert_eq!(p(""), PathBuf::from("/srv/export"));
        assert_eq!(p("/../../etc"), PathBuf::from("/srv/export/etc"));
        assert_eq!(p("/a/./b/../c"), PathBuf::from("/srv/export/a/c"));
    }

    proptest! {
        #[test]
        fn never_panics(data in ".{0,80}") {
            let _ = parse_mount_data(&data);
        }

        #[test]
        fn paths_survive_flags_around_them(
            path in "/?[a-z0-9_.]{1,8}(/[a-z0-9_.]{1,8}){0,4}",
            before in proptest::option::of(prop_oneof![Just("ro"), Just("rw")]),
            after in proptest::option::of(prop_oneof![Just("ro"), Just("rw")]),
            named in any::<bool>(),
        ) {
            prop_assume!(path.trim_start_matches('/') != "ro" && path.trim_start_matches('/') != "rw");
            let item = if named { format!("hostfs={path}") } else { path.clone() };
            let data: Vec<String> = before.iter().map(|s| s.to_string())
                .chain(std::iter::once(item))
                .chain(after.iter().map(|s| s.to_string()))
                .collect();
            let m = parse_mount_data(&data.join(",")).unwrap();
            prop_assert_eq!(m.path, path.trim_start_matches('/'));
            let last = after.or(before).map(|f| f == "ro");
            prop_assert_eq!(m.read_only, last);
        }

        #[test]
        fn host_path_never_leaves_the_export(path in "[a-z./]{0,40}") {
            let e = Path::new("/export");
            let m = MountData { path, read_only: None };
            prop_assert!(m.host_path(e).starts_with(e));
        }
    }
}
