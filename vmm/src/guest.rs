//! The guest kernel as kuml presents it: which image boots, its version for mconsole
//! `version`, and its command line (kuml's defaults, then the user's words with UML's root
//! device names mapped to the virtio disks).

use std::path::{Path, PathBuf};

use crate::config::Config;

/// No kernel was given and none was found where resources/ builds it.
#[derive(Debug, thiserror::Error)]
#[error("no guest kernel: give kernel=<vmlinux or bzImage>, set KUML_KERNEL, or build one with resources/build-guest.sh")]
pub struct NoKernel;

/// The kernel to boot: `kernel=`, else `$KUML_KERNEL`, else the one resources/ builds.
pub fn resolve_kernel(cfg: &Config) -> Result<PathBuf, NoKernel> {
    if let Some(k) = &cfg.kernel {
        return Ok(k.clone());
    }
    if let Some(k) = std::env::var_os("KUML_KERNEL") {
        return Ok(PathBuf::from(k));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/kuml → <checkout>/build/guest/vmlinux
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join("build/guest/vmlinux"));
        }
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/guest/vmlinux"));
    candidates.into_iter().find(|p| p.is_file()).ok_or(NoKernel)
}

/// PURE: `sysname nodename release version machine` from the kernel's banner
/// (`Linux version 6.1.192-kuml (user@host) (gcc …) #1 SMP … 2026`), as `uname -a` prints it
/// before the guest has set a host name.
pub fn version_from_banner(image: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut at = 0;
    while let Some(pos) = image[at..].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let start = at + pos + NEEDLE.len();
        at = start;
        let rest = &image[start..];
        let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == 0) else {
            continue;
        };
        let Ok(banner) = std::str::from_utf8(&rest[..end]) else {
            continue;
        };
        // Skip templates such as "… # SMP": the real banner has a build number.
        let Some(hash) = banner.find(" #") else {
            continue;
        };
        if !banner[hash + 2..].starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let release = banner.split_whitespace().next()?;
        let version = banner[hash + 1..].trim_end();
        return Some(format!("Linux (none) {release} {version} x86_64"));
    }
    None
}

/// The guest kernel's version text for mconsole `version`, read from the kernel image.
pub fn guest_version(cfg: &Config) -> String {
    resolve_kernel(cfg)
        .ok()
        .and_then(|k| std::fs::read(k).ok())
        .and_then(|img| version_from_banner(&img))
        .unwrap_or_else(|| format!("Linux (none) unknown kuml-{}", env!("CARGO_PKG_VERSION")))
}

/// The guest kernel command line: kuml's defaults, then the user's words with UML's root
/// device names mapped to the virtio disks and `console=hvcK` added after each UML console
/// word (`console=tty1`, see [`crate::config::map_consoles`]).
pub fn guest_cmdline(cfg: &Config) -> String {
    let mut words: Vec<String> = Vec::new();
    // Words after `--` are init's arguments, not the kernel's.
    let has = |key: &str| {
        cfg.guest_args
            .iter()
            .take_while(|w| *w != "--")
            .any(|w| w == key || w.starts_with(&format!("{key}=")))
    };
    if !has("console") {
        words.push("console=hvc0".into());
    }
    if !has("net.ifnames") {
        words.push("net.ifnames=0".into());
    }
    let units: Vec<usize> = cfg.ubd.keys().copied().collect();
    let user = crate::config::rewrite_root(&cfg.guest_args, &units);
    words.extend(crate::config::map_consoles(
        &user,
        &crate::builder::boot_console_ids(cfg),
    ));
    words.join(" ")
}

/// What kuml made of each UML console word (`console=tty1` → hvc1), one line each, for the
/// user once at start.
pub fn console_notes(cfg: &Config) -> Vec<String> {
    crate::config::console_notes(
        &cfg.guest_args,
        &crate::builder::boot_console_ids(cfg),
        &crate::builder::consoles_for_console_words(cfg),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        match crate::config::parse(args).unwrap() {
            crate::config::Action::Run(c) => *c,
            _ => unreachable!(),
        }
    }

    #[test]
    fn version_text() {
        let img = b"junk\0Linux version 6.1.192-kuml (a) # SMP \0Linux version 6.1.192-kuml (root@h) (gcc 12) #3 SMP Sun Nov 29 09:00:00 UTC 2026\n\0";
        assert_eq!(
            version_from_banner(img).as_deref(),
            Some("Linux (none) 6.1.192-kuml #3 SMP Sun Nov 29 09:00:00 UTC 2026 x86_64")
        );
        assert_eq!(version_from_banner(b"nothing"), None);
    }

    #[test]
    fn uml_console_words_get_their_hvc() {
        // con1 is not named: a console= word makes it exist (default channel), as hvc1.
        let c = cfg(&["console=tty1", "ubd1=/d", "root=/dev/ubdb"]);
        assert_eq!(
            guest_cmdline(&c),
            "net.ifnames=0 console=tty1 console=hvc1 root=/dev/vda"
        );
        assert_eq!(crate::builder::boot_console_ids(&c), [0, 1]);
        assert_eq!(crate::builder::consoles_for_console_words(&c), [1]);
        // con3 named, con1 and con2 not: con3 is the guest's hvc1.
        let c = cfg(&["con3=null", "console=tty3", "console=ttyS0"]);
        assert_eq!(
            guest_cmdline(&c),
            "net.ifnames=0 console=tty3 console=hvc1 console=ttyS0"
        );
        assert!(crate::builder::consoles_for_console_words(&c).is_empty());
        // con=pts: all 16 exist; con2=none leaves a gap.
        let c = cfg(&["con=pts", "con2=none", "console=tty3"]);
        assert_eq!(crate::builder::boot_console_ids(&c).len(), 15);
        assert_eq!(guest_cmdline(&c), "net.ifnames=0 console=tty3 console=hvc2");
        // tty and tty0 are con0.
        assert_eq!(
            guest_cmdline(&cfg(&["console=tty"])),
            "net.ifnames=0 console=tty console=hvc0"
        );
        // A console that does not exist is left alone.
        let c = cfg(&["con1=none", "console=tty1"]);
        assert_eq!(guest_cmdline(&c), "net.ifnames=0 console=tty1");
        assert_eq!(crate::builder::boot_console_ids(&c), [0]);
    }

    #[test]
    fn default_console_unless_given() {
        assert_eq!(
            guest_cmdline(&cfg(&["quiet"])),
            "console=hvc0 net.ifnames=0 quiet"
        );
        assert_eq!(
            guest_cmdline(&cfg(&["console=ttyS0", "x", "ubd0=/i", "root=/dev/ubda"])),
            "net.ifnames=0 console=ttyS0 x root=/dev/vda"
        );
        assert_eq!(
            guest_cmdline(&cfg(&["ubd0=/i", "FOO=1", "--", "console=x"])),
            "console=hvc0 net.ifnames=0 FOO=1 root=/dev/vda -- console=x"
        );
    }
}
