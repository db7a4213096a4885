//! What a kuml process was doing when a test gave up waiting for its guest.
//!
//! A guest that stops printing can be stuck in the guest (its vCPU spinning: KVM exits keep
//! counting), in the host kernel (a vCPU thread blocked in `KVM_RUN`), or in kuml itself (a
//! thread waiting on a lock or a pipe). The report tells these apart: each thread's state,
//! kernel wait channel, system call and kernel stack, the VM's KVM exit counters sampled twice
//! a second apart (debugfs), every thread's user-space stack (gdb, when installed) and the end
//! of the kernel log. Everything here only reads; a part that cannot be read says why.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// KVM's per-VM counters worth comparing (the sums over the VM's vCPUs).
const KVM_STATS: &[&str] = &[
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "halt_wakeup",
    "irq_exits",
    "signal_exits",
    "request_irq_exits",
    "irq_injections",
    "hypercalls",
];

/// The report for kuml process `pid` (several dozen lines).
pub fn report(pid: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "--- stall report for kuml pid {pid} ---");
    threads(pid, &mut out);
    kvm_counters(pid, &mut out);
    user_stacks(pid, &mut out);
    kernel_log_tail(&mut out);
    let _ = writeln!(out, "--- end of stall report ---");
    out
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|e| format!("({}: {e})", path.as_ref().display()))
}

fn threads(pid: u32, out: &mut String) {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        let _ = writeln!(out, "threads: cannot read {}", dir.display());
        return;
    };
    let mut tids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    for tid in tids {
        let t = dir.join(tid.to_string());
        let stat = read(t.join("stat"));
        // The state is the first field after the parenthesised command name.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        let _ = writeln!(
            out,
            "thread {tid} {:?} state {state} wchan {} syscall {}",
            read(t.join("comm")),
            read(t.join("wchan")),
            read(t.join("syscall")),
        );
        for line in read(t.join("stack")).lines().take(10) {
            let _ = writeln!(out, "    {line}");
        }
    }
}

fn kvm_dirs(pid: u32) -> Vec<PathBuf> {
    let root = Path::new("/sys/kernel/debug/kvm");
    if !root.is_dir() {
        // debugfs is not mounted in the nested lane's L1; mounting it there changes nothing
        // else (on a host, where it may be absent on purpose, it is left alone).
        if crate::lane() == "nested" {
            let _ = Command::new("mount")
                .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
                .status();
        }
    }
    let prefix = format!("{pid}-");
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn sample(dir: &Path) -> Vec<Option<u64>> {
    KVM_STATS
        .iter()
        .map(|s| read(dir.join(s)).parse().ok())
        .collect()
}

fn kvm_counters(pid: u32, out: &mut String) {
    let dirs = kvm_dirs(pid);
    if dirs.is_empty() {
        let _ = writeln!(
            out,
            "kvm counters: no /sys/kernel/debug/kvm/{pid}-* (debugfs not mounted?)"
        );
        return;
    }
    let before: Vec<_> = dirs.iter().map(|d| sample(d)).collect();
    std::thread::sleep(Duration::from_secs(1));
    for (dir, before) in dirs.iter().zip(before) {
        let after = sample(dir);
        let _ = write!(
            out,
            "kvm counters {} (value, +change in 1 s):",
            dir.display()
        );
        for ((name, b), a) in KVM_STATS.iter().zip(before).zip(after) {
            match (b, a) {
                (Some(b), Some(a)) => {
                    let _ = write!(out, " {name} {a} (+{})", a.saturating_sub(b));
                }
                _ => {
                    let _ = write!(out, " {name} ?");
                }
            }
        }
        let _ = writeln!(out);
    }
}

fn user_stacks(pid: u32, out: &mut String) {
    let gdb = Command::new("timeout")
        .args(["60", "gdb", "-nx", "-batch", "-p", &pid.to_string()])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt 16"])
        .output();
    match gdb {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let _ = writeln!(out, "user-space stacks (gdb):");
            for line in text
                .lines()
                .filter(|l| l.starts_with("Thread ") || l.starts_with('#'))
            {
                let _ = writeln!(out, "    {line}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "user-space stacks: cannot run gdb: {e}");
        }
    }
}

fn kernel_log_tail(out: &mut String) {
    match Command::new("dmesg").output() {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let lines: Vec<&str> = text.lines().collect();
            let _ = writeln!(out, "kernel log (last 15 lines):");
            for line in &lines[lines.len().saturating_sub(15)..] {
                let _ = writeln!(out, "    {line}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "kernel log: cannot run dmesg: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_each_thread_and_its_state() {
        let mut child = Command::new("sleep").arg("60").spawn().expect("sleep");
        let pid = child.id();
        assert!(alive(pid));
        let text = report(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!alive(pid), "a reaped child is gone");
        assert!(
            text.contains(&format!("thread {pid} ")) && text.contains(" state "),
            "{text}"
        );
        assert!(text.contains("kvm counters"), "{text}");
        assert!(text.contains("kernel log"), "{text}");
    }
}
