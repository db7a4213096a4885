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

/// The report for kuml process `pid` (several dozen lines).
pub fn report(pid: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "--- stall report for kuml pid {pid} ---");
    threads(pid, &mut out);
    kvm_counters(pid, &mut out);
    kvm_exit_reasons(&mut out);
    user_stacks(pid, &mut out);
    kernel_log_tail(&mut out);
    let _ = writeln!(out, "--- end of stall report ---");
    out
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    crate::proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// How process `pid`, a zombie not yet waited for, ended ("exit code 1", "killed by signal
/// 9"); `None` for a live or reaped process.
pub fn ended(pid: u32) -> Option<String> {
    let stat = crate::proc_stat(pid).filter(|s| s.state == 'Z')?;
    Some(match stat.exit_code & 0x7f {
        0 => format!("exit code {}", (stat.exit_code >> 8) & 0xff),
        sig => format!("killed by signal {sig}"),
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
        let stat = crate::parse_proc_stat(&read(t.join("stat")));
        let _ = writeln!(
            out,
            "thread {tid} {:?} state {} wchan {} syscall {}",
            stat.as_ref().map_or("?", |s| s.comm.as_str()),
            stat.as_ref().map_or('?', |s| s.state),
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

/// Every counter in a VM's debugfs directory (the sums over its vCPUs), by name.
fn sample(dir: &Path) -> Vec<(String, u64)> {
    let mut stats: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| {
                    let value = std::fs::read_to_string(e.path())
                        .ok()?
                        .trim()
                        .parse()
                        .ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), value))
                })
                .collect()
        })
        .unwrap_or_default();
    stats.sort();
    stats
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
        let _ = write!(out, "kvm counters {} that moved in 1 s:", dir.display());
        for (name, a) in sample(dir) {
            let b = before
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, v)| *v);
            if a != b {
                let _ = write!(out, " {name} {a} (+{})", a.wrapping_sub(b));
            }
        }
        let _ = writeln!(out);
    }
}

/// In the nested lane: the reasons and guest RIPs of the vCPUs' exits for a fifth of a
/// second (the `kvm_exit` trace event of L1's kernel, which runs nothing but the test), the
/// most frequent first. Left alone on a host, whose tracing is not the test's.
fn kvm_exit_reasons(out: &mut String) {
    if crate::lane() != "nested" {
        return;
    }
    let t = Path::new("/sys/kernel/tracing");
    if !t.join("events").is_dir() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
    let enable = t.join("events/kvm/kvm_exit/enable");
    let _ = std::fs::write(t.join("trace"), "");
    if let Err(e) = std::fs::write(&enable, "1") {
        let _ = writeln!(out, "kvm exits: cannot enable {}: {e}", enable.display());
        return;
    }
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::fs::write(&enable, "0");
    let trace = std::fs::read_to_string(t.join("trace")).unwrap_or_default();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in trace.lines().filter(|l| l.contains("kvm_exit:")) {
        // "... kvm_exit: vcpu 0 reason npf rip 0xffffffff81001234 info1 ..."
        let what = line
            .split_once("kvm_exit: ")
            .map(|(_, rest)| rest.split(" info1").next().unwrap_or(rest).to_owned())
            .unwrap_or_default();
        match counts.iter_mut().find(|(w, _)| *w == what) {
            Some((_, n)) => *n += 1,
            None => counts.push((what, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    let _ = writeln!(out, "kvm exits in 0.2 s, most frequent first:");
    let symbols = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    for (what, n) in counts.iter().take(12) {
        // A guest RIP that is an address of L1's own kernel (a guest running L1's code, as a
        // broken world switch would make it) is named.
        let l1 = what
            .split_once("rip 0x")
            .and_then(|(_, r)| u64::from_str_radix(r.split_whitespace().next()?, 16).ok())
            .and_then(|rip| nearest_symbol(&symbols, rip))
            .map(|s| format!("  (in L1's kernel: {s})"))
            .unwrap_or_default();
        let _ = writeln!(out, "    {n:6}  {what}{l1}");
    }
}

/// `symbol+0xoffset [module]` for `addr` from a `/proc/kallsyms` text, when a symbol lies at
/// most 64 KiB below it.
fn nearest_symbol(kallsyms: &str, addr: u64) -> Option<String> {
    let mut best: Option<(u64, String)> = None;
    for line in kallsyms.lines() {
        let mut f = line.split_whitespace();
        let (Some(a), Some(_kind), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(a) = u64::from_str_radix(a, 16) else {
            continue;
        };
        if a != 0 && a <= addr && addr - a < 0x10000 && best.as_ref().is_none_or(|(b, _)| a > *b) {
            let module = f.next().map(|m| format!(" {m}")).unwrap_or_default();
            best = Some((a, format!("{name}+{:#x}{module}", addr - a)));
        }
    }
    best.map(|(_, s)| s)
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
        let mut quick = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let id = quick.id();
        while alive(id) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(ended(id).as_deref(), Some("exit code 3"));
        let _ = quick.wait();
        assert!(
            text.contains(&format!("thread {pid} ")) && text.contains(" state "),
            "{text}"
        );
        assert!(text.contains("kvm counters"), "{text}");
        assert!(text.contains("kernel log"), "{text}");
        let syms =
            "ffffffffc0750000 t __svm_vcpu_run\t[kvm_amd]\nffffffffc0751000 t other\t[kvm_amd]\n";
        assert_eq!(
            nearest_symbol(syms, 0xffff_ffff_c075_020c).as_deref(),
            Some("__svm_vcpu_run+0x20c [kvm_amd]")
        );
        assert_eq!(nearest_symbol(syms, 0xffff_ffff_c070_0000), None);
    }
}
