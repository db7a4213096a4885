//! PURE: UML's root device names, rewritten for the virtio disks that carry the ubd units.
//!
//! UML's guest sees `ubd0` as `/dev/ubda` (major 98, 16 minors per disk) and appends
//! `root=98:0` when the user gives no `root=`. Under kuml the units are virtio-blk disks that
//! the guest names `vda`, `vdb`, … in unit order (kuml plugs them in that order), so
//! `root=/dev/ubdb1`, `root=98:17` and the missing `root=` become the matching `/dev/vdX`.

/// UML's ubd block major.
const UBD_MAJOR: u32 = 98;
/// Minors per ubd disk.
const UBD_MINORS: u32 = 16;

/// The guest's name for the `position`-th virtio disk (0 → `vda`, 26 → `vdaa`).
pub fn vd_name(position: usize) -> String {
    let mut n = position;
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    letters.reverse();
    format!("vd{}", String::from_utf8_lossy(&letters))
}

/// The `vdX[part]` for ubd `unit` (partition `part`, 0 = whole disk), if the unit is plugged.
fn vd_for(unit: u32, part: u32, units: &[usize]) -> Option<String> {
    let pos = units.iter().position(|u| *u as u32 == unit)?;
    let disk = vd_name(pos);
    Some(if part == 0 {
        disk
    } else {
        format!("{disk}{part}")
    })
}

/// `ubda`, `ubdb3`, `ubd0`, `ubd1p2`… → (unit, partition).
fn parse_ubd_name(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("ubd")?;
    let first = rest.chars().next()?;
    if first.is_ascii_lowercase() {
        let part = &rest[1..];
        let part = if part.is_empty() {
            0
        } else {
            part.parse().ok()?
        };
        return Some((u32::from(first as u8 - b'a'), part));
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let unit = rest[..digits].parse().ok()?;
    let part = match &rest[digits..] {
        "" => 0,
        p => p.strip_prefix('p')?.parse().ok()?,
    };
    Some((unit, part))
}

/// The ubd (unit, partition) a `root=` value names: `/dev/ubdb1` or `98:17`.
fn root_unit(value: &str) -> Option<(u32, u32)> {
    if let Some(name) = value.strip_prefix("/dev/") {
        return parse_ubd_name(name);
    }
    let (major, minor) = value.split_once(':')?;
    if major.parse::<u32>().ok()? != UBD_MAJOR {
        return None;
    }
    let minor: u32 = minor.parse().ok()?;
    Some((minor / UBD_MINORS, minor % UBD_MINORS))
}

/// The rewritten value of a `root=` word, if it names a ubd device kuml can map.
fn rewrite_value(value: &str, units: &[usize]) -> Option<String> {
    let (unit, part) = root_unit(value)?;
    vd_for(unit, part, units).map(|d| format!("/dev/{d}"))
}

/// Root filesystem types that need no block device.
const DEVICELESS_ROOTS: &[&str] = &["hostfs", "virtiofs", "9p", "nfs", "tmpfs", "ramfs"];

/// Whether the guest's root is ubd0: no `root=` (UML's default `root=98:0`), or the last
/// `root=` before any `--` (the one Linux keeps) names unit 0; a `rootfstype=` that needs no
/// disk (`hostfs`, …) means another root.
pub fn root_needs_ubd0(words: &[String]) -> bool {
    let kernel_words: Vec<&String> = words.iter().take_while(|w| *w != "--").collect();
    let fstype = kernel_words
        .iter()
        .rev()
        .find_map(|w| w.strip_prefix("rootfstype="));
    if fstype.is_some_and(|t| DEVICELESS_ROOTS.contains(&t)) {
        return false;
    }
    match kernel_words
        .iter()
        .rev()
        .find_map(|w| w.strip_prefix("root="))
    {
        None => true,
        Some(v) => root_unit(v).is_some_and(|(unit, _)| unit == 0),
    }
}

/// Rewrites UML root names in the guest words for disks `units` (sorted unit numbers); with no
/// `root=` at all and a ubd0, adds UML's default (`root=98:0`, i.e. the first disk) to the
/// kernel's words (before a `--`, after which every word is init's).
pub fn rewrite_root(words: &[String], units: &[usize]) -> Vec<String> {
    let kernel_words = words.iter().position(|w| w == "--").unwrap_or(words.len());
    let (words, init_words) = words.split_at(kernel_words);
    let mut out: Vec<String> = words
        .iter()
        .map(|w| {
            match w
                .strip_prefix("root=")
                .and_then(|v| rewrite_value(v, units))
            {
                Some(v) => format!("root={v}"),
                None => w.clone(),
            }
        })
        .collect();
    if !words.iter().any(|w| w.starts_with("root=")) && units.contains(&0) {
        if let Some(v) = rewrite_value("98:0", units) {
            out.push(format!("root={v}"));
        }
    }
    out.extend(init_words.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names() {
        assert_eq!(vd_name(0), "vda");
        assert_eq!(vd_name(25), "vdz");
        assert_eq!(vd_name(26), "vdaa");
        assert_eq!(parse_ubd_name("ubda"), Some((0, 0)));
        assert_eq!(parse_ubd_name("ubdb1"), Some((1, 1)));
        assert_eq!(parse_ubd_name("ubd2"), Some((2, 0)));
        assert_eq!(parse_ubd_name("ubd2p3"), Some((2, 3)));
        assert_eq!(parse_ubd_name("sda"), None);
    }

    #[test]
    fn rewrites_uml_roots() {
        let units = [0, 2];
        assert_eq!(
            rewrite_root(&w(&["root=/dev/ubda"]), &units),
            w(&["root=/dev/vda"])
        );
        assert_eq!(
            rewrite_root(&w(&["root=98:0"]), &units),
            w(&["root=/dev/vda"])
        );
        assert_eq!(
            rewrite_root(&w(&["root=98:33"]), &units),
            w(&["root=/dev/vdb1"])
        );
        assert_eq!(
            rewrite_root(&w(&["root=/dev/ubdc1"]), &units),
            w(&["root=/dev/vdb1"])
        );
        // Not a plugged unit, or not a ubd: left alone.
        assert_eq!(
            rewrite_root(&w(&["root=/dev/ubdb"]), &units),
            w(&["root=/dev/ubdb"])
        );
        assert_eq!(
            rewrite_root(&w(&["root=/dev/sda1"]), &units),
            w(&["root=/dev/sda1"])
        );
        assert_eq!(rewrite_root(&w(&["root=8:1"]), &units), w(&["root=8:1"]));
    }

    #[test]
    fn default_root_is_the_first_disk() {
        assert_eq!(
            rewrite_root(&w(&["quiet"]), &[0]),
            w(&["quiet", "root=/dev/vda"])
        );
        assert_eq!(rewrite_root(&w(&["quiet"]), &[1]), w(&["quiet"]));
        // Words after `--` are init's: the default root goes before them, and a `root=`
        // there is an argument of init, not the kernel's root.
        assert_eq!(
            rewrite_root(&w(&["init=/x", "--", "a", "root=/dev/ubda"]), &[0]),
            w(&["init=/x", "root=/dev/vda", "--", "a", "root=/dev/ubda"])
        );
        assert_eq!(rewrite_root(&w(&["quiet"]), &[]), w(&["quiet"]));
    }

    #[test]
    fn which_roots_need_ubd0() {
        assert!(root_needs_ubd0(&w(&["quiet"])));
        assert!(root_needs_ubd0(&w(&["root=98:0"])));
        assert!(root_needs_ubd0(&w(&["root=/dev/ubda1"])));
        assert!(root_needs_ubd0(&w(&["root=/dev/sda", "root=/dev/ubd0"])));
        assert!(!root_needs_ubd0(&w(&["root=/dev/ubdb"])));
        assert!(!root_needs_ubd0(&w(&["root=98:16"])));
        assert!(!root_needs_ubd0(&w(&["root=/dev/nfs"])));
        assert!(!root_needs_ubd0(&w(&["root=/dev/ubda", "root=hostfs"])));
        assert!(root_needs_ubd0(&w(&["--", "root=/dev/nfs"])));
        assert!(!root_needs_ubd0(&w(&[
            "rootfstype=hostfs",
            "rootflags=/srv"
        ])));
        assert!(root_needs_ubd0(&w(&["rootfstype=ext4"])));
    }

    proptest! {
        #[test]
        fn never_panics(words in proptest::collection::vec("root=.{0,12}", 0..4),
                        units in proptest::collection::btree_set(0usize..16, 0..4)) {
            let units: Vec<usize> = units.into_iter().collect();
            let _ = rewrite_root(&words, &units);
        }
    }
}
