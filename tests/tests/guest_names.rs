//! Issue 17 (UML's names in the guest), on the host: `resources/rootfs/uml-names`, which gives
//! the project's guest (through mdev) and distribution roots (through udev) UML's `/dev/ubdX`
//! and `/dev/ttyN`, run on a fake `/sys` and `/dev` by each POSIX shell the guests use
//! (busybox ash, dash); and the udev rules' disk lines. No guest boots here: the same script
//! in a guest is proven by `dropin::uml_names_for_disks_and_consoles` (nested lane).

// Integration tests: each file is its own crate of tests.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kuml_e2e::workspace;

/// A fake sysfs and /dev under a temporary directory.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let t = Tree {
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        for d in [
            "sys/class/block",
            "sys/class/virtio-ports",
            "sys/devices",
            "dev",
        ] {
            std::fs::create_dir_all(t.path(d)).unwrap();
        }
        // The virtual terminals' nodes the consoles' links replace (plain files here).
        for n in 0..8 {
            std::fs::write(t.path(&format!("dev/tty{n}")), "").unwrap();
        }
        t
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Virtio disk `name` with ID `serial` and partitions `parts`, as sysfs shows them
    /// (class entries are links into the device tree; a partition sits in its disk's directory).
    fn disk(&self, name: &str, serial: &str, parts: &[u32]) {
        let dev = self.path(&format!("sys/devices/virtio/block/{name}"));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("serial"), serial).unwrap();
        std::os::unix::fs::symlink(&dev, self.path(&format!("sys/class/block/{name}"))).unwrap();
        for p in parts {
            let part = dev.join(format!("{name}{p}"));
            std::fs::create_dir_all(&part).unwrap();
            std::fs::write(part.join("partition"), format!("{p}\n")).unwrap();
            std::os::unix::fs::symlink(&part, self.path(&format!("sys/class/block/{name}{p}")))
                .unwrap();
        }
    }

    fn unplug_disk(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.path(&format!("sys/devices/virtio/block/{name}")));
        for e in std::fs::read_dir(self.path("sys/class/block")).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with(name) {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }

    fn port(&self, name: &str) {
        std::fs::create_dir_all(self.path(&format!("sys/class/virtio-ports/{name}"))).unwrap();
    }

    fn unplug_port(&self, name: &str) {
        std::fs::remove_dir_all(self.path(&format!("sys/class/virtio-ports/{name}"))).unwrap();
    }

    /// Runs uml-names with `shell`, for one event (`dev`, `action`) or for everything.
    fn run(&self, shell: &[&str], event: Option<(&str, &str)>) {
        let mut cmd = Command::new(shell[0]);
        cmd.args(&shell[1..])
            .arg(workspace().join("resources/rootfs/uml-names"))
            .env("UML_NAMES_ROOT", self.dir.path())
            .env_remove("MDEV")
            .env_remove("ACTION");
        if let Some((dev, action)) = event {
            cmd.arg(dev).env("ACTION", action);
        }
        let out = cmd.output().expect("run uml-names");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "uml-names {event:?} with {shell:?}: {out:?}"
        );
    }

    /// Where /dev/<name> links to, or None when it is not a link.
    fn link(&self, name: &str) -> Option<String> {
        std::fs::read_link(self.path(&format!("dev/{name}")))
            .ok()
            .map(|p| p.display().to_string())
    }
}

/// The POSIX shells the guests run uml-names with, those this host has: busybox's ash (the
/// project's guest) and dash (Debian's /bin/sh, for udev).
fn shells() -> Vec<Vec<&'static str>> {
    let found: Vec<Vec<&str>> = [vec!["/bin/busybox", "sh"], vec!["/bin/dash"]]
        .into_iter()
        .filter(|c| Path::new(c[0]).is_file())
        .collect();
    assert!(!found.is_empty(), "neither busybox nor dash on this host");
    found
}

#[test]
fn disks_are_named_by_their_unit_only() {
    for sh in shells() {
        let t = Tree::new();
        // ubd1 and ubd3 only: the guest named them vda and vdb.
        t.disk("vda", "ubd1", &[]);
        t.disk("vdb", "ubd3", &[1, 2]);
        t.disk("vdc", "not-kuml", &[]);
        t.run(&sh, None);
        assert_eq!(t.link("ubdb").as_deref(), Some("vda"), "{sh:?}");
        assert_eq!(t.link("ubdd").as_deref(), Some("vdb"));
        assert_eq!(t.link("ubdd1").as_deref(), Some("vdb1"));
        assert_eq!(t.link("ubdd2").as_deref(), Some("vdb2"));
        assert_eq!(t.link("ubda"), None, "no ubd0: no /dev/ubda");
        assert!(!t.path("dev/ubd").exists());
        // Hot-plug (mconsole `config ubd15=`): the guest names it vdd.
        t.disk("vdd", "ubd15", &[]);
        t.run(&sh, Some(("vdd", "add")));
        assert_eq!(t.link("ubdp").as_deref(), Some("vdd"));
        // Removal: each node's event removes its link.
        t.run(&sh, Some(("vdb1", "remove")));
        t.run(&sh, Some(("vdb2", "remove")));
        t.run(&sh, Some(("vdb", "remove")));
        t.unplug_disk("vdb");
        assert_eq!(t.link("ubdd"), None);
        assert_eq!(t.link("ubdd1"), None);
        assert_eq!(t.link("ubdb").as_deref(), Some("vda"), "others stay");
    }
}

#[test]
fn consoles_are_tty_n_linked_to_their_hvc() {
    for sh in shells() {
        let t = Tree::new();
        // con0 on its own device, con1 and con3 on the multiport one: hvc0, hvc1, hvc2.
        t.port("vport0p0");
        t.port("vport1p3");
        t.port("vport1p1");
        t.run(&sh, None);
        assert_eq!(t.link("tty0").as_deref(), Some("hvc0"), "{sh:?}");
        assert_eq!(t.link("tty1").as_deref(), Some("hvc1"));
        assert_eq!(t.link("tty3").as_deref(), Some("hvc2"));
        assert_eq!(
            t.link("tty2"),
            None,
            "no con2: tty2 stays the terminal's node"
        );
        assert!(t.path("dev/tty2").is_file());
        // Running again (mdev's scan after the boot pass) changes nothing.
        t.run(&sh, Some(("vport1p1", "add")));
        assert_eq!(t.link("tty1").as_deref(), Some("hvc1"));
        // Hot-plugged con2 takes the lowest free hvc, as the guest's kernel gives it: hvc3.
        t.port("vport1p2");
        t.run(&sh, Some(("vport1p2", "add")));
        assert_eq!(t.link("tty2").as_deref(), Some("hvc3"));
        // con1 removed frees hvc1, which the next console gets.
        t.unplug_port("vport1p1");
        t.run(&sh, Some(("vport1p1", "remove")));
        assert_eq!(t.link("tty1"), None);
        t.port("vport1p5");
        t.run(&sh, Some(("vport1p5", "change")));
        assert_eq!(t.link("tty5").as_deref(), Some("hvc1"));
    }
}

/// The udev rules name disk ubdN /dev/ubd<a+N> for all of UML's 16 units, partitions too.
#[test]
fn udev_rules_name_every_unit() {
    let rules = std::fs::read_to_string(workspace().join("resources/udev/60-kuml-uml-names.rules"))
        .expect("the udev rules");
    let disk_lines: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains("ATTRS{serial}"))
        .collect();
    assert_eq!(disk_lines.len(), 16, "{rules}");
    for (n, line) in disk_lines.iter().enumerate() {
        let letter = char::from(b'a' + n as u8);
        assert_eq!(
            *line,
            format!(
                "SUBSYSTEM==\"block\", KERNEL==\"vd*\", ATTRS{{serial}}==\"ubd{n}\", \
                 SYMLINK+=\"ubd{letter}%n\""
            )
        );
    }
    assert!(
        rules.contains("SUBSYSTEM==\"virtio-ports\", KERNEL==\"vport*p*\", RUN+=\"/usr/local/lib/kuml/uml-names %k\""),
        "the consoles' rule runs uml-names"
    );
}
