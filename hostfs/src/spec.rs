//! PURE: the hostfs options of kuml's command line (and of mconsole `config`).
//!
//! ```text
//! hostfs=<dir>[,<flag>...]       UML's option: every `mount -t hostfs` in the guest (and a
//!                                root on `rootfstype=hostfs`) is confined to <dir>; the default
//!                                export is the host's `/`. Its virtio-fs tag is `hostfs`.
//! hostfs<N>=<dir>[,<flag>...]    N = 1..15: one more directory, for `mount -t virtiofs <tag>`;
//!                                its tag is `hostfs<N>` unless `tag=` names another.
//! flags:   ro                    the guest cannot change anything in the share
//!          rw                    (the default) the guest writes with the rights of kuml's user
//!          tag=<tag>             the virtio-fs tag: 1 to 36 printable characters, no spaces
//!          append                UML's flag (open every file in append mode): accepted and
//!                                reported as not supported
//! ```
//!
//! As in UML, the directory is everything before the first comma, so a directory whose name
//! has a comma cannot be given. An empty directory means `/` for `hostfs=` (UML's "no
//! confinement") and is refused for `hostfs<N>=`.

use std::fmt;
use std::path::PathBuf;

/// The tag of the default export, the one the guest's `hostfs` type mounts.
pub const DEFAULT_TAG: &str = "hostfs";
/// The longest virtio-fs tag (the `tag` field of `struct virtio_fs_config`).
pub const MAX_TAG_LEN: usize = 36;
/// Shares kuml serves: the default export (index 0) and `hostfs1` to `hostfs15`.
pub const MAX_SHARES: u32 = 16;
/// The option name of the default export.
pub const OPTION: &str = "hostfs";

/// One directory kuml exports to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// 0 for the default export (`hostfs=`), N for `hostfs<N>=`.
    pub index: u32,
    /// The host directory, as given (kuml resolves it when it starts the share).
    pub dir: PathBuf,
    /// `ro`: the guest cannot write.
    pub read_only: bool,
    /// The virtio-fs tag.
    pub tag: String,
    /// UML's `append` flag was given.
    pub append: bool,
}

impl ShareSpec {
    /// The default export: the host's `/`, writable, tag `hostfs`.
    pub fn default_export() -> ShareSpec {
        ShareSpec {
            index: 0,
            dir: PathBuf::from("/"),
            read_only: false,
            tag: DEFAULT_TAG.to_owned(),
            append: false,
        }
    }

    /// The share's name on the command line and over mconsole: `hostfs` or `hostfs<N>`.
    pub fn name(&self) -> String {
        share_name(self.index)
    }

    /// The option value that gives this share again (`<dir>[,ro][,tag=<tag>][,append]`).
    pub fn value(&self) -> String {
        let mut v = self.dir.to_string_lossy().into_owned();
        if self.read_only {
            v.push_str(",ro");
        }
        if self.tag != default_tag(self.index) {
            v.push_str(",tag=");
            v.push_str(&self.tag);
        }
        if self.append {
            v.push_str(",append");
        }
        v
    }
}

impl fmt::Display for ShareSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name(), self.value())
    }
}

/// A hostfs option kuml cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `hostfs<N>=` with N out of range or not a number.
    #[error("share number {0} out of range (hostfs1 to hostfs{max})", max = MAX_SHARES - 1)]
    Index(String),
    /// `hostfs<N>=` without a directory.
    #[error("no directory given")]
    EmptyDir,
    /// A directory with a NUL byte.
    #[error("the directory holds a NUL byte")]
    NulInDir,
    /// A flag kuml does not know.
    #[error("unknown flag '{0}' (ro, rw, tag=<tag> or append)")]
    Flag(String),
    /// A tag that virtio-fs cannot carry or a shell cannot type.
    #[error(
        "tag '{0}': expected 1 to {MAX_TAG_LEN} printable characters without spaces or commas"
    )]
    Tag(String),
}

/// The tag a share has unless `tag=` names another: `hostfs`, `hostfs1`, ….
pub fn default_tag(index: u32) -> String {
    share_name(index)
}

/// `hostfs` for the default export, `hostfs<N>` for the others.
pub fn share_name(index: u32) -> String {
    if index == 0 {
        OPTION.to_owned()
    } else {
        format!("{OPTION}{index}")
    }
}

/// The share an option name names: `hostfs` → 0, `hostfs3` → 3; `None` for a name that is not
/// a hostfs option (`hostfsx`, `hostname`); an error for `hostfs99` or `hostfs0`.
pub fn parse_share_name(name: &str) -> Option<Result<u32, SpecError>> {
    let digits = name.strip_prefix(OPTION)?;
    if digits.is_empty() {
        return Some(Ok(0));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        digits
            .parse::<u32>()
            .ok()
            .filter(|n| (1..MAX_SHARES).contains(n))
            .ok_or_else(|| SpecError::Index(digits.to_owned())),
    )
}

/// Checks a virtio-fs tag.
pub fn check_tag(tag: &str) -> Result<(), SpecError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if ok {
        Ok(())
    } else {
        Err(SpecError::Tag(tag.to_owned()))
    }
}

/// Parses the value of `hostfs=` (index 0) or `hostfs<index>=`.
pub fn parse_share(index: u32, value: &str) -> Result<ShareSpec, SpecError> {
    let mut fields = value.split(',');
    let dir = fields.next().unwrap_or_default();
    if dir.contains('\0') {
        return Err(SpecError::NulInDir);
    }
    let dir = match (dir, index) {
        ("", 0) => "/",
        ("", _) => return Err(SpecError::EmptyDir),
        (d, _) => d,
    };
    let mut spec = ShareSpec {
        index,
        dir: PathBuf::from(dir),
        read_only: false,
        tag: default_tag(index),
        append: false,
    };
    for flag in fields {
        match flag {
            "ro" => spec.read_only = true,
            "rw" => spec.read_only = false,
            "append" => spec.append = true,
            // UML ignores empty fields (`hostfs=/x,,append`).
            "" => {}
            f => match f.strip_prefix("tag=") {
                Some(tag) => {
                    check_tag(tag)?;
                    spec.tag = tag.to_owned();
                }
                None => return Err(SpecError::Flag(f.to_owned())),
            },
        }
    }
    Ok(spec)
}

/// Two shares with one tag: the guest could mount only one of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{first} and {second} both have the tag '{tag}'")]
pub struct DuplicateTag {
    /// The share named first.
    pub first: String,
    /// The other one.
    pub second: String,
    /// Their tag.
    pub tag: String,
}

/// Checks that no two shares have the same tag.
pub fn check_unique_tags<'a>(
    shares: impl IntoIterator<Item = &'a ShareSpec>,
) -> Result<(), DuplicateTag> {
    let mut seen: Vec<&ShareSpec> = Vec::new();
    for s in shares {
        if let Some(first) = seen.iter().find(|o| o.tag == s.tag) {
            return Err(DuplicateTag {
                first: first.name(),
                second: s.name(),
                tag: s.tag.clone(),
            });
        }
        seen.push(s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uml_forms() {
        let s = parse_share(0, "/srv/uml").unwrap();
        assert_eq!(s.dir, PathBuf::from("/srv/uml"));
        assert_eq!((s.read_only, s.append), (false, false));
        assert_eq!(s.tag, "hostfs");
        let s = parse_share(0, "/srv/uml,append").unwrap();
        assert!(s.append);
        // UML: an empty root means the whole host.
        assert_eq!(parse_share(0, "").unwrap().dir, PathBuf::from("/"));
        assert_eq!(parse_share(0, ",append").unwrap().dir, PathBuf::from("/"));
        assert_eq!(
            parse_share(0, "/x,,append").unwrap().dir,
            PathBuf::from("/x")
        );
    }

    #[test]
    fn kuml_flags() {
        let s = parse_share(2, "/data,ro,tag=data").unwrap();
        assert_eq!(
            s,
            ShareSpec {
                index: 2,
                dir: PathBuf::from("/data"),
                read_only: true,
                tag: "data".into(),
                append: false,
            }
        );
        assert_eq!(s.to_string(), "hostfs2=/data,ro,tag=data");
        assert!(!parse_share(1, "/d,ro,rw").unwrap().read_only);
        assert_eq!(parse_share(3, "/d").unwrap().tag, "hostfs3");
        assert_eq!(parse_share(3, "/d").unwrap().to_string(), "hostfs3=/d");
        // Relative directories are kept as given (resolved when the share starts).
        assert_eq!(
            parse_share(1, "rel/dir").unwrap().dir,
            PathBuf::from("rel/dir")
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(parse_share(1, ""), Err(SpecError::EmptyDir));
        assert_eq!(parse_share(1, ",ro"), Err(SpecError::EmptyDir));
        assert_eq!(parse_share(0, "/x,rx"), Err(SpecError::Flag("rx".into())));
        assert_eq!(
            parse_share(0, "/x,tag="),
            Err(SpecError::Tag(String::new()))
        );
        assert_eq!(
            parse_share(0, "/x,tag=a b"),
            Err(SpecError::Tag("a b".into()))
        );
        let long = "t".repeat(37);
        assert_eq!(
            parse_share(0, &format!("/x,tag={long}")),
            Err(SpecError::Tag(long))
        );
        assert!(parse_share(0, &format!("/x,tag={}", "t".repeat(36))).is_ok());
        assert_eq!(parse_share(0, "/x\0y"), Err(SpecError::NulInDir));
        assert_eq!(
            SpecError::Flag("rx".into()).to_string(),
            "unknown flag 'rx' (ro, rw, tag=<tag> or append)"
        );
    }

    #[test]
    fn names() {
        assert_eq!(parse_share_name("hostfs"), Some(Ok(0)));
        assert_eq!(parse_share_name("hostfs7"), Some(Ok(7)));
        assert_eq!(parse_share_name("hostfs15"), Some(Ok(15)));
        assert_eq!(
            parse_share_name("hostfs16"),
            Some(Err(SpecError::Index("16".into())))
        );
        assert_eq!(
            parse_share_name("hostfs0"),
            Some(Err(SpecError::Index("0".into())))
        );
        assert_eq!(parse_share_name("hostfsx"), None);
        assert_eq!(parse_share_name("hostname"), None);
        assert_eq!(share_name(0), "hostfs");
        assert_eq!(share_name(4), "hostfs4");
    }

    #[test]
    fn unique_tags() {
        let a = parse_share(0, "/").unwrap();
        let b = parse_share(1, "/b,tag=hostfs").unwrap();
        let c = parse_share(2, "/c").unwrap();
        assert!(check_unique_tags([&a, &c]).is_ok());
        let e = check_unique_tags([&a, &c, &b]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hostfs and hostfs1 both have the tag 'hostfs'"
        );
    }

    proptest! {
        #[test]
        fn never_panics(index in 0u32..20, value in ".{0,60}") {
            let _ = parse_share(index, &value);
        }

        #[test]
        fn a_share_prints_back_to_itself(
            index in 0u32..MAX_SHARES,
            dir in "/[a-z0-9_./ -]{0,20}",
            ro in any::<bool>(),
            tag in proptest::option::of("[!-+--~]{1,36}"),
            append in any::<bool>(),
        ) {
            let mut value = dir.clone();
            if ro { value.push_str(",ro"); }
            if let Some(t) = &tag { value.push_str(",tag="); value.push_str(t); }
            if append { value.push_str(",append"); }
            let spec = parse_share(index, &value).unwrap();
            prop_assert_eq!(&spec.dir, &PathBuf::from(&dir));
            prop_assert_eq!(spec.read_only, ro);
            let want = tag.clone().unwrap_or_else(|| default_tag(index));
            prop_assert_eq!(&spec.tag, &want);
            prop_assert_eq!(parse_share(index, &spec.value()).unwrap(), spec);
        }
    }
}
