//! The whole boot log on con0, every boot: from `Linux version` on, no line twice, and (where
//! guest user space runs) every line the init prints, because the guest has its console
//! (`hvc0`, `/dev/console`) before init starts.
//!
//! con0 is its own non-multiport virtio-console device, which the guest makes `hvc0` while it
//! probes it, and the project's kernel carries a fix so that the log replay on registering
//! `hvc0` reaches the port (resources/kernel/patches/0004-*). These tests boot with con0 on
//! each channel kind (`fd`, `pts`, `file`) and no other console, and look only at what
//! arrived on con0.
//!
//! Where guest user space runs (hardware KVM, the nested lane) the tests boot many times,
//! with one and two vCPUs; on PVM hosts, where only the kernel runs, once per channel kind
//! (each boot there takes about a minute of emulation), and check the kernel's side: the log
//! from its first line and no `unable to open an initial console` warning.

#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kuml_e2e::{artifact, host_kind, HostKind, TestVm, VmOptions};

/// Bounds that only catch hangs: a PVM boot takes a minute to many minutes on a loaded host
/// (every guest kernel instruction is emulated); where user space runs (hardware KVM, the
/// nested lane) a boot takes seconds to tens of seconds, and a stall should end the test
/// rather than hold the lane.
fn boot_bound() -> Duration {
    match host_kind() {
        HostKind::Pvm => Duration::from_secs(1500),
        HostKind::Hardware => Duration::from_secs(300),
    }
}
const SHORT: Duration = Duration::from_secs(180);

/// What the test init prints, in order, before its shell starts (resources/rootfs/init).
const INIT_LINES: &[&str] = &[
    "KUML-INIT: started pid=1",
    "KUML-INIT: uname ",
    "KUML-INIT: uptime ",
    "KUML-INIT: cmdline ",
    "KUML-INIT: root ",
    "KUML-INIT: disks ",
    "KUML-INIT: nets ",
    "KUML-INIT: ttys ",
    "KUML-INIT: uml names ",
    "KUML-INIT: shell on console",
];

/// Lines the kernel prints once per boot.
const ONCE_PER_BOOT: &[&str] = &[
    "Linux version ",
    "Kernel command line: ",
    "Run /init as init process",
];

/// Where con0 goes in one boot.
#[derive(Debug, Clone, Copy)]
enum Con0 {
    Fd,
    Pts,
    File,
}

fn boots() -> Vec<(Con0, u8)> {
    match host_kind() {
        HostKind::Pvm => vec![(Con0::Fd, 1), (Con0::Pts, 2), (Con0::File, 1)],
        HostKind::Hardware => {
            let kinds = [Con0::Fd, Con0::Pts, Con0::File];
            (0..10).map(|i| (kinds[i % 3], 1 + (i % 2) as u8)).collect()
        }
    }
}

/// Checks one boot's con0 text; `user_space` also asks for the init's lines.
fn check_con0(text: &str, user_space: bool, ncpus: u8, what: &str) {
    let kernel_lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with('[') && l.contains(']'))
        .collect();
    let first = kernel_lines.first().copied().unwrap_or_default();
    assert!(
        first.contains("Linux version"),
        "{what}: con0 starts with {first:?}, not the kernel's first line\n{text}"
    );
    // A part of the log sent twice shows as a run of lines, timestamps included, that
    // appears again later. (A single repeated line is legitimate: a stack dump repeats its
    // frames' timestamps.)
    let mut seen = std::collections::HashSet::new();
    for w in kernel_lines.windows(3) {
        assert!(
            seen.insert(w),
            "{what}: con0 has these lines twice (a part sent again?): {w:#?}\n{text}"
        );
    }
    // With one vCPU the timestamps do not go back (but for a hair: an interrupt between a
    // record's timestamp and its slot in the ring). With more, a secondary CPU's first lines
    // carry its own clock until kvm-clock is set up on it, so order proves nothing there.
    if ncpus == 1 {
        let mut last = 0.0f64;
        for l in &kernel_lines {
            let Some(t) = l[1..l.find(']').unwrap_or(1)].trim().parse::<f64>().ok() else {
                continue;
            };
            assert!(
                t + 0.05 >= last,
                "{what}: con0's log goes back in time at {l:?} (a part sent twice?)\n{text}"
            );
            last = last.max(t);
        }
    }
    for once in ONCE_PER_BOOT {
        let n = text.matches(once).count();
        assert_eq!(n, 1, "{what}: {once:?} {n} times on con0\n{text}");
    }
    assert!(
        text.contains("Run /init as init process"),
        "{what}: con0 lacks the init handover\n{text}"
    );
    assert!(
        !text.contains("unable to open an initial console"),
        "{what}: init started without its console\n{text}"
    );
    if user_space {
        let mut at = 0;
        for want in INIT_LINES {
            let Some(pos) = text[at..].find(want) else {
                panic!("{what}: con0 lacks the init's {want:?} (in order)\n{text}");
            };
            at += pos + want.len();
        }
    }
}

/// A pts client: reads everything the guest writes to con0's pts, and can type.
struct PtsClient {
    file: std::fs::File,
    text: Arc<Mutex<String>>,
}

impl PtsClient {
    fn open(path: &str) -> PtsClient {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        // kuml makes its pts raw; make sure our side does not echo either.
        // SAFETY: tcgetattr/cfmakeraw/tcsetattr on an open terminal and a local struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(f.as_raw_fd(), &mut t), 0);
            libc::cfmakeraw(&mut t);
            assert_eq!(libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t), 0);
        }
        let text = Arc::new(Mutex::new(String::new()));
        let t = text.clone();
        let mut reader = f.try_clone().expect("a second pts descriptor");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                t.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        PtsClient { file: f, text }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

/// Polls `read` until `pred` holds or `timeout` passes; returns the last text.
fn poll_text(timeout: Duration, read: impl Fn() -> String, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let t = read();
        if pred(&t) || Instant::now() >= deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn boot_once(n: usize, con0: Con0, ncpus: u8) {
    let user_space = host_kind() == HostKind::Hardware;
    let what = format!("boot {n} (con0 on {con0:?}, ncpus={ncpus})");
    let name = format!("bootlog-{n}-{con0:?}-{ncpus}cpu").to_lowercase();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("con0.txt");
    let mut args = vec![
        format!("kernel={}", artifact("vmlinux").display()),
        format!("initrd={}", artifact("initramfs.cpio").display()),
        "mem=128M".to_owned(),
        format!("ncpus={ncpus}"),
        "noreboot".to_owned(),
    ];
    match con0 {
        Con0::Fd => {}
        Con0::Pts => args.push("con0=pts".into()),
        Con0::File => args.push(format!("con0=null,file:{}", file.display())),
    }
    let mut vm = TestVm::start(
        &name,
        VmOptions {
            args,
            early_log: false,
            ..VmOptions::default()
        },
    );
    // The boot is over for this test when the init's shell runs (user space) or the kernel
    // reports that init died (PVM: init's first system call faults).
    let end = if user_space {
        "KUML-INIT: shell on console"
    } else {
        "Attempted to kill init"
    };
    let (text, code) = match con0 {
        Con0::Fd => {
            vm.wait_for(end, boot_bound());
            let text = vm.stdout();
            // The shell reads kuml's stdin (a console has no end of file: type `exit`); init
            // then powers off.
            if user_space {
                vm.send(b"exit\n");
            }
            (text, if user_space { 0 } else { 4 })
        }
        Con0::Pts => {
            let out = vm.wait_for("Virtual console 0 assigned device '", boot_bound());
            let path = out
                .split("Virtual console 0 assigned device '")
                .nth(1)
                .and_then(|s| s.split('\'').next())
                .expect("the announced pts")
                .to_owned();
            let mut pts = PtsClient::open(&path);
            let text = poll_text(boot_bound(), || pts.text(), |t| t.contains(end));
            if user_space {
                use std::io::Write;
                pts.file.write_all(b"exit\n").expect("type into con0's pts");
            }
            (text, if user_space { 0 } else { 4 })
        }
        Con0::File => {
            let read = || std::fs::read_to_string(&file).unwrap_or_default();
            let text = poll_text(boot_bound(), read, |t| t.contains(end));
            // con0's input is null: the shell waits for ever; stop kuml instead.
            if user_space {
                vm.signal(libc::SIGTERM);
            }
            (text, if user_space { 143 } else { 4 })
        }
    };
    assert!(
        text.contains(end),
        "{what}: con0 never showed {end:?}\n{text}"
    );
    check_con0(&text, user_space, ncpus, &what);
    assert_eq!(vm.wait_exit(SHORT), code, "{what}: kuml's exit status");
    drop(dir);
}

#[test]
fn con0_has_the_whole_boot_log_every_boot() {
    let plan = boots();
    eprintln!(
        "{} boots ({}), con0 on fd, pts and file",
        plan.len(),
        match host_kind() {
            HostKind::Hardware => "guest user space runs: init lines checked",
            HostKind::Pvm => "PVM: kernel level only, init lines cannot be checked here",
        }
    );
    for (n, (con0, ncpus)) in plan.into_iter().enumerate() {
        boot_once(n, con0, ncpus);
    }
}
