//! The e2e fixture: boot a guest under kuml, read its console, drive the test agent.
//!
//! [`TestVm`] spawns the `kuml` binary with a console on pipes, collects everything the guest
//! prints into a log file, and offers [`TestVm::wait_for`] (a pattern with a timeout, no sleeps)
//! and [`TestVm::agent`] (the line protocol of the in-guest test agent, docs/testing.md). The
//! process is killed on drop; if the test failed, the console log is kept and its tail printed.
//!
//! Host kinds: on hosts whose /dev/kvm is PVM (this project's CI), guest user space cannot run,
//! so the fixture asks for the in-kernel agent (`kuml.agent=`) and adds the kernel options a
//! PVM host needs (from `resources/pvm-cmdline.sh`). On hardware KVM (real, or the emulated SVM
//! of the nested lane, `resources/nested.sh`) it uses the user-space agent (`kuml.uagent=`)
//! that the test init starts. Tests call the same methods either way.
//!
//! User-space tests: [`user_space_or_skip`] at the top of a test that needs guest user space
//! (on a PVM host it says so loudly and the test returns); [`TestVm::sh`] runs a shell script in
//! the guest through the user-space agent and returns its exit status and output. See
//! docs/testing.md, "Writing a test that runs user-space commands in the guest".

pub mod mconsole;
pub mod net;
pub mod stall;
pub mod user;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The kuml binary: `$KUML_BIN`, else the workspace's target directory.
pub fn kuml_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KUML_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("kuml");
        if p.is_file() {
            return p;
        }
    }
    panic!("kuml binary not found: run `cargo build -p kuml` or set KUML_BIN");
}

/// kuml arguments of a test VM on the project's vmlinux: `mem`, `noreboot`, then `extra`.
pub fn vmlinux_args(mem: &str, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("kernel={}", artifact("vmlinux").display()),
        format!("mem={mem}"),
        "noreboot".to_owned(),
    ];
    args.extend(extra.iter().cloned());
    args
}

/// Guest artifacts built by resources/build-guest.sh.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("KUML_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("build/guest"))
}

/// A guest artifact, or a loud panic naming how to build it.
pub fn artifact(name: &str) -> PathBuf {
    let p = guest_dir().join(name);
    assert!(
        p.is_file(),
        "guest artifact {} is missing: run resources/build-guest.sh",
        p.display()
    );
    p
}

/// Where the tests keep their console logs: `$KUML_E2E_LOGS` (run-tests.sh points it at a
/// host directory that the nested lane shares writable, so the logs of tests in L1 can be read
/// on the host while they run), else `<tmp>/kuml-e2e`. Created if missing.
pub fn log_dir() -> PathBuf {
    let dir = std::env::var_os("KUML_E2E_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("kuml-e2e"));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("create the log directory {}: {e}", dir.display()));
    dir
}

/// What kind of KVM this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Hardware virtualization: guest user space runs.
    Hardware,
    /// PVM: guest kernel code runs (emulated), guest user space does not.
    Pvm,
}

/// Detects the host kind.
pub fn host_kind() -> HostKind {
    if Path::new("/sys/module/kvm_pvm").exists() {
        HostKind::Pvm
    } else {
        HostKind::Hardware
    }
}

/// The lane this test runs in: `nested` inside the nested lane's L1 (resources/nested.sh sets
/// `KUML_LANE`), else `host`.
pub fn lane() -> String {
    std::env::var("KUML_LANE").unwrap_or_else(|_| "host".to_owned())
}

/// For a test that needs guest user space: true when it can run here. On a PVM host it prints
/// a SKIPPED line naming the test, the lane and why (straight to stderr, past the test
/// harness's output capture, and appended to `$KUML_SKIP_LOG` when set, which run-tests.sh
/// lists at the end), and returns false: the test then returns without checking anything.
pub fn user_space_or_skip() -> bool {
    if host_kind() == HostKind::Hardware {
        return true;
    }
    skip(NO_USER_SPACE);
    false
}

/// Like [`user_space_or_skip`] for the user-space part of a test whose other checks ran: the
/// SKIPPED line names the part.
pub fn user_space_part_or_skip(part: &str) -> bool {
    if host_kind() == HostKind::Hardware {
        return true;
    }
    skip(&format!("{part}: {NO_USER_SPACE}"));
    false
}

/// For a test that, where guest user space cannot run (a PVM host lane), proves nothing that
/// another test (`covered_by`) does not already prove there at kernel level: on such a host it
/// prints a SKIPPED line naming that test and returns false (the test then returns); where
/// user space runs (hardware KVM, the nested lane) it returns true and the test runs in full.
/// This keeps the PVM host lane to boots that prove something of their own (docs/testing.md,
/// "The host lane on PVM hosts"); `KUML_PVM_ALL_TESTS=1` runs such a test on PVM anyway.
pub fn kernel_level_duplicate_or_skip(covered_by: &str) -> bool {
    if host_kind() == HostKind::Hardware
        || std::env::var("KUML_PVM_ALL_TESTS").is_ok_and(|v| v == "1")
    {
        return true;
    }
    skip(&format!(
        "without guest user space (PVM) it proves nothing that {covered_by} does not; it runs \
         in the nested lane (run-tests.sh), or here with KUML_PVM_ALL_TESTS=1"
    ));
    false
}

const NO_USER_SPACE: &str = "needs guest user space, which this host's /dev/kvm (PVM) cannot \
     run; it runs in the nested lane (run-tests.sh --nested, resources/nested.sh)";

/// Says loudly that the current test cannot run in this lane and why: a `SKIPPED <test> [lane
/// <lane>]: <why>` line straight to stderr (past the test harness's output capture) and
/// appended to `$KUML_SKIP_LOG` when set (run-tests.sh lists them at the end). The caller
/// then returns without checking anything.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    let line = format!("SKIPPED {test} [lane {}]: {why}\n", lane());
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("KUML_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Whether /dev/kvm can be used; tests that need it call [`require_kvm`].
pub fn require_kvm() {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert!(
        ok,
        "/dev/kvm is not usable on this host: the e2e tests need KVM"
    );
}

/// Extra guest kernel options this host needs (from resources/pvm-cmdline.sh).
pub fn host_guest_options() -> Vec<String> {
    resource_script_words("pvm-cmdline.sh")
}

/// The `-cpu` model for a QEMU guest on this host's KVM (from resources/qemu-cpu.sh: PVM's
/// KVM makes QEMU abort on `-cpu host`).
pub fn qemu_cpu() -> String {
    resource_script_words("qemu-cpu.sh").join(" ")
}

/// The words a script in resources/ prints.
fn resource_script_words(name: &str) -> Vec<String> {
    let script = workspace().join("resources").join(name);
    let out = Command::new("sh")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The console output so far, shared with the reader thread.
#[derive(Debug, Default)]
struct Console {
    text: Mutex<String>,
    /// What arrived on kuml's stdout alone (con0 by default).
    stdout: Mutex<String>,
    grew: Condvar,
    closed: Mutex<bool>,
}

/// The most descriptors [`VmOptions::extra_fds`] can hand to kuml.
const MAX_EXTRA_FDS: usize = 8;

/// Options for a test VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// kuml arguments (kernel=, mem=, devices, guest words).
    pub args: Vec<String>,
    /// Start the test agent on this guest tty (e.g. `ttyS0`, `hvc1`).
    pub agent_tty: Option<String>,
    /// Add the host's required guest options (PVM).
    pub host_options: bool,
    /// Descriptors to hand to kuml: (child fd number, our fd), e.g. for `con1=fd:3,fd:4`.
    /// Ours are handed over: they are closed in this process once kuml has started.
    pub extra_fds: Vec<(i32, std::os::fd::RawFd)>,
    /// Also print the kernel log on COM1 (`ssl0`) to kuml's stderr: a second copy of the log,
    /// next to con0's, which helps when a guest dies before con0's device has probed
    /// (default: `KUML_E2E_EARLY_LOG=1`).
    pub early_log: bool,
    /// Extra environment for kuml (e.g. `DISPLAY`).
    pub env: Vec<(String, String)>,
    /// Run kuml as this user and group instead of the test's (it needs /dev/kvm, its kernel,
    /// and a `uml_dir=` it can write).
    pub user: Option<(u32, u32)>,
    /// Keep kuml's default hostfs export (the host's `/`, or the `hostfs=` in `args`). Off by
    /// default: the fixture passes [`NO_HOSTFS`], so that each test proves its own feature, a
    /// boot starts no virtiofsd, and a hostfs defect fails only the hostfs tests
    /// (tests/tests/hostfs.rs turns it on).
    pub hostfs: bool,
    /// The program to run instead of [`kuml_bin`] (e.g. a link to it named `linux`).
    pub program: Option<PathBuf>,
    /// kuml's working directory (default: the test's).
    pub cwd: Option<PathBuf>,
    /// A program and its leading arguments that run kuml (e.g. `setpriv …`, from
    /// [`user::OrdinaryUser::wrapper`]); empty: kuml is started directly.
    pub wrapper: Vec<String>,
}

/// kuml's option that turns its default hostfs export off: every kuml the suite starts gets
/// it, except in the hostfs tests ([`VmOptions::hostfs`]). A test that runs kuml itself
/// passes it too.
pub const NO_HOSTFS: &str = "nohostfs";

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            args: Vec::new(),
            agent_tty: None,
            host_options: true,
            extra_fds: Vec::new(),
            // Off by default: con0 carries the whole boot log, and each byte on a UART is an
            // exit to kuml (costly under PVM and in the nested lane). KUML_E2E_EARLY_LOG=1
            // turns the serial copy on, e.g. to see a guest that dies before con0 probes.
            early_log: std::env::var("KUML_E2E_EARLY_LOG").is_ok_and(|v| v == "1"),
            env: Vec::new(),
            user: None,
            hostfs: false,
            program: None,
            cwd: None,
            wrapper: Vec::new(),
        }
    }
}

/// A guest running under kuml.
#[derive(Debug)]
pub struct TestVm {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Console>,
    log_path: PathBuf,
    name: String,
    seq: u32,
    status: Option<ExitStatus>,
}

/// A reply from the test agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReply {
    /// `KAGENT <seq> ok <payload>`
    Ok(String),
    /// `KAGENT <seq> err <message>`
    Err(String),
}

impl TestVm {
    /// A VM started with `args` and the test agent on con0 (hvc0: the in-kernel agent on PVM,
    /// the user-space one where guest user space runs), with hostfs' default export if
    /// `hostfs`; returns once the agent is ready, within `boot`.
    pub fn with_agent_on_con0(
        name: &str,
        args: Vec<String>,
        hostfs: bool,
        boot: Duration,
    ) -> TestVm {
        let mut vm = TestVm::start(
            name,
            VmOptions {
                args,
                agent_tty: Some("hvc0".into()),
                hostfs,
                ..VmOptions::default()
            },
        );
        vm.wait_agent(boot);
        vm
    }

    /// Starts kuml with `opts`; `name` labels the log file.
    pub fn start(name: &str, opts: VmOptions) -> TestVm {
        require_kvm();
        // The fixture's words are the kernel's: they go before a `--` (after it, every word is
        // an argument of init).
        let dashes = opts
            .args
            .iter()
            .position(|a| a == "--")
            .unwrap_or(opts.args.len());
        let mut args = opts.args[..dashes].to_vec();
        if !opts.hostfs {
            args.push(NO_HOSTFS.to_owned());
        }
        if opts.early_log {
            args.extend(["ssl0=null,fd:2", "console=ttyS0", "console=hvc0"].map(String::from));
        }
        if opts.host_options {
            args.extend(host_guest_options());
        }
        if let Some(tty) = &opts.agent_tty {
            args.push(match host_kind() {
                HostKind::Pvm => format!("kuml.agent={tty}"),
                HostKind::Hardware => format!("kuml.uagent={tty}"),
            });
        }
        args.extend(opts.args[dashes..].iter().cloned());
        let log_dir = log_dir();
        let log_path = log_dir.join(format!("{name}-{}.log", std::process::id()));
        let program = opts.program.clone().unwrap_or_else(kuml_bin);
        let mut cmd = match opts.wrapper.split_first() {
            Some((wrapper, wrapper_args)) => {
                let mut cmd = Command::new(wrapper);
                cmd.args(wrapper_args).arg(&program);
                cmd
            }
            None => Command::new(&program),
        };
        if let Some(dir) = &opts.cwd {
            cmd.current_dir(dir);
        }
        // Every test runs kuml with its seccomp filters on (kuml's default), whatever the
        // test's environment says; KUML_E2E_SECCOMP=log runs them in kuml's log mode, which
        // lets the kernel's audit log list the calls outside a filter (where audit is enabled).
        let filters = std::env::var("KUML_E2E_SECCOMP").unwrap_or_else(|_| "on".to_owned());
        cmd.args(&args)
            .env("KUML_SECCOMP", filters)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = opts.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        pass_fds(&mut cmd, &opts.extra_fds);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        for (_, src) in &opts.extra_fds {
            // SAFETY: the descriptors were handed over to this call (see VmOptions::extra_fds);
            // kuml has its own copies now.
            unsafe { libc::close(*src) };
        }
        let console = Arc::new(Console::default());
        let log = Arc::new(Mutex::new(
            std::fs::File::create(&log_path).expect("create the console log"),
        ));
        writeln!(log.lock().unwrap(), "# kuml {}", args.join(" ")).ok();
        spawn_reader(
            child.stdout.take().expect("piped stdout"),
            console.clone(),
            log.clone(),
            true,
        );
        spawn_reader(
            child.stderr.take().expect("piped stderr"),
            console.clone(),
            log,
            false,
        );
        TestVm {
            stdin: child.stdin.take(),
            child,
            console,
            log_path,
            name: name.to_owned(),
            seq: 0,
            status: None,
        }
    }

    /// Everything the guest printed so far (and kuml's stderr).
    pub fn output(&self) -> String {
        self.console.text.lock().unwrap().clone()
    }

    /// What arrived on kuml's stdout only: con0 (the guest's `hvc0`) by default.
    pub fn stdout(&self) -> String {
        self.console.stdout.lock().unwrap().clone()
    }

    /// Waits until the output contains `pattern`; returns the output. Panics on timeout or
    /// if kuml exits first.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> String {
        self.wait_until(timeout, |out| out.contains(pattern))
            .unwrap_or_else(|| self.fail(&format!("waiting for {pattern:?}")))
    }

    /// Waits until `pred(output)` holds; `None` on timeout or exit.
    pub fn wait_until(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut text = self.console.text.lock().unwrap();
        loop {
            if pred(&text) {
                return Some(text.clone());
            }
            let now = Instant::now();
            if now >= deadline || *self.console.closed.lock().unwrap() {
                return None;
            }
            let (t, _) = self
                .console
                .grew
                .wait_timeout(text, (deadline - now).min(Duration::from_millis(500)))
                .unwrap();
            text = t;
        }
    }

    /// Writes raw bytes to the console (kuml's stdin).
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(bytes)
            .and_then(|_| stdin.flush())
            .expect("write to kuml's stdin");
    }

    /// Closes kuml's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the agent to announce itself on the console.
    pub fn wait_agent(&mut self, timeout: Duration) -> String {
        let out = self.wait_for("KAGENT ready", timeout);
        let line = out
            .lines()
            .find(|l| l.contains("KAGENT ready"))
            .unwrap_or_default();
        line.to_owned()
    }

    /// Sends one agent command over the console and waits for its reply.
    pub fn agent(&mut self, command: &str, timeout: Duration) -> AgentReply {
        self.seq += 1;
        let seq = self.seq;
        self.send(format!("{seq} {command}\n").as_bytes());
        let out = self
            .wait_until(timeout, |o| reply_line(o, seq).is_some())
            .unwrap_or_else(|| self.fail(&format!("agent command {command:?}")));
        parse_reply(&reply_line(&out, seq).unwrap_or_default())
    }

    /// Like [`TestVm::agent`], but panics unless the reply is `ok`; returns the payload.
    pub fn agent_ok(&mut self, command: &str, timeout: Duration) -> String {
        match self.agent(command, timeout) {
            AgentReply::Ok(p) => p,
            AgentReply::Err(e) => self.fail(&format!("agent command {command:?} failed: {e}")),
        }
    }

    /// The agent's `ls` of a directory, as a sorted list.
    pub fn ls(&mut self, dir: &str, timeout: Duration) -> Vec<String> {
        let mut names: Vec<String> = self
            .agent_ok(&format!("ls {dir}"), timeout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }

    /// Mounts sysfs on `/sys` through the agent, for tests that read it. The kernel agent (PVM
    /// hosts) starts before any mount; where user space runs, the test init has mounted it
    /// already and the agent's mount says EBUSY, which is taken as done.
    pub fn mount_sysfs(&mut self, timeout: Duration) {
        match self.agent("mount sysfs /sys sysfs -", timeout) {
            AgentReply::Ok(_) => {}
            AgentReply::Err(e) if e.starts_with("EBUSY") && host_kind() == HostKind::Hardware => {}
            AgentReply::Err(e) => self.fail(&format!("mount sysfs on /sys failed: {e}")),
        }
    }

    /// Runs `script` with `sh -c` in the guest through the user-space agent (`run`; needs
    /// `agent_tty` and guest user space, see [`user_space_or_skip`]); returns its exit status
    /// and its output (stdout and stderr together).
    pub fn sh(&mut self, script: &str, timeout: Duration) -> (i32, String) {
        let payload = self.agent_ok(&format!("run {}", hex(script.as_bytes())), timeout);
        let (status, out) = payload.split_once(' ').unwrap_or((&payload, ""));
        let status = status
            .parse()
            .unwrap_or_else(|_| self.fail(&format!("a run reply without a status: {payload:?}")));
        (status, String::from_utf8_lossy(&unhex(out)).into_owned())
    }

    /// Like [`TestVm::sh`], but panics (with the output) unless the script exits 0; returns its
    /// output.
    pub fn sh_ok(&mut self, script: &str, timeout: Duration) -> String {
        let (status, out) = self.sh(script, timeout);
        if status != 0 {
            self.fail(&format!("guest script {script:?} exited {status}:\n{out}"));
        }
        out
    }

    /// Waits for kuml to exit; returns its exit code (or 128+signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for kuml") {
                self.status = Some(st);
                // Let the readers drain the last output.
                let _ = self.wait_until(Duration::from_secs(2), |_| false);
                return st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
            }
            if Instant::now() >= deadline {
                self.fail("waiting for kuml to exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to kuml.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// kuml's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the console log is kept.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Panics with `what`, the console's last lines and a stall report of kuml (its threads,
    /// KVM's counters and exits, the host kernel's log).
    pub fn fail(&self, what: &str) -> ! {
        let out = self.output();
        let tail: String = out
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        // A guest that stopped: what kuml's threads and its vCPUs were doing, in the log and
        // in the panic message.
        let stall = if stall::alive(self.pid()) {
            let report = stall::report(self.pid());
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.log_path)
                .and_then(|mut f| f.write_all(report.as_bytes()));
            report
        } else {
            stall::ended(self.pid())
                .map(|how| format!("kuml ended: {how}\n"))
                .unwrap_or_default()
        };
        panic!(
            "{}: timed out or exited while {what}\n--- last console lines (full log: {}) ---\n{tail}\n{stall}",
            self.name,
            self.log_path.display()
        );
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SIGTERM first: kuml stops cleanly and removes its umid directory (killed, it
            // left one in ~/.uml per test); SIGKILL if it has not ended after a few seconds.
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("console log kept: {}", self.log_path.display());
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    console: Arc<Console>,
    log: Arc<Mutex<std::fs::File>>,
    is_stdout: bool,
) {
    std::thread::spawn(move || {
        let mut stream = stream;
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let s = String::from_utf8_lossy(&buf[..n]);
                    let _ = log.lock().unwrap().write_all(&buf[..n]);
                    console.text.lock().unwrap().push_str(&s);
                    if is_stdout {
                        console.stdout.lock().unwrap().push_str(&s);
                    }
                    console.grew.notify_all();
                }
            }
        }
        if is_stdout {
            *console.closed.lock().unwrap() = true;
            console.grew.notify_all();
        }
    });
}

/// The test agent on a console other than con0, reached over a pair of pipes that kuml gets as
/// `fd:N,fd:M` (see [`PipeAgent::new`]).
#[derive(Debug)]
pub struct PipeAgent {
    to_guest: std::fs::File,
    from_guest: Arc<Console>,
    seq: u32,
}

impl PipeAgent {
    /// Pipes for a console line: returns the agent and the `(child fd, our fd)` pairs and the
    /// channel text (`fd:3,fd:4`) to give kuml for `in_fd`/`out_fd` in the child.
    pub fn new(in_fd: i32, out_fd: i32) -> (PipeAgent, Vec<(i32, std::os::fd::RawFd)>, String) {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let mut to = [0; 2];
        let mut from = [0; 2];
        // SAFETY: pipe2 fills the two arrays with new descriptors.
        unsafe {
            assert_eq!(libc::pipe2(to.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(from.as_mut_ptr(), libc::O_CLOEXEC), 0);
        }
        // SAFETY: the descriptors were just created and are owned here.
        let (to_read, to_write, from_read, from_write) = unsafe {
            (
                std::fs::File::from_raw_fd(to[0]),
                std::fs::File::from_raw_fd(to[1]),
                std::fs::File::from_raw_fd(from[0]),
                std::fs::File::from_raw_fd(from[1]),
            )
        };
        let console = Arc::new(Console::default());
        let log = Arc::new(Mutex::new(
            std::fs::File::create("/dev/null").expect("open /dev/null"),
        ));
        spawn_reader(from_read, console.clone(), log, true);
        // The child's copies: kuml reads from `to_read` and writes to `from_write`. They are
        // handed to TestVm::start (VmOptions::extra_fds), which places them in the child and
        // closes them here.
        let fds = vec![
            (in_fd, to_read.into_raw_fd()),
            (out_fd, from_write.into_raw_fd()),
        ];
        (
            PipeAgent {
                to_guest: to_write,
                from_guest: console,
                seq: 1000,
            },
            fds,
            format!("fd:{in_fd},fd:{out_fd}"),
        )
    }

    /// Everything the guest wrote on this line.
    pub fn output(&self) -> String {
        self.from_guest.text.lock().unwrap().clone()
    }

    /// Writes raw bytes to the guest on this line.
    pub fn send(&mut self, bytes: &[u8]) {
        self.to_guest
            .write_all(bytes)
            .expect("write to the console pipe");
    }

    /// Waits until the line's output satisfies `pred`.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut text = self.from_guest.text.lock().unwrap();
        loop {
            if pred(&text) {
                return Some(text.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let (t, _) = self
                .from_guest
                .grew
                .wait_timeout(text, (deadline - now).min(Duration::from_millis(500)))
                .unwrap();
            text = t;
        }
    }

    /// Sends an agent command on this line and returns its reply.
    pub fn agent(&mut self, command: &str, timeout: Duration) -> Option<AgentReply> {
        self.seq += 1;
        let seq = self.seq;
        self.send(format!("{seq} {command}\n").as_bytes());
        let out = self.wait_until(timeout, |o| reply_line(o, seq).is_some())?;
        Some(parse_reply(&reply_line(&out, seq)?))
    }
}

/// The complete reply line to request `seq` in `out`, without its `KAGENT <seq> ` prefix.
pub fn reply_line(out: &str, seq: u32) -> Option<String> {
    let prefix = format!("KAGENT {seq} ");
    let start = out.find(&prefix)? + prefix.len();
    let end = out[start..].find('\n')? + start;
    Some(out[start..end].trim_end_matches('\r').to_owned())
}

/// Lower-case hex of `bytes` (the agent protocol's binary encoding).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string; panics on a malformed one.
pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `ok <payload>` / `err <message>`.
pub fn parse_reply(line: &str) -> AgentReply {
    match line.split_once(' ') {
        Some(("ok", p)) => AgentReply::Ok(p.to_owned()),
        Some(("err", p)) => AgentReply::Err(p.to_owned()),
        _ if line == "ok" => AgentReply::Ok(String::new()),
        _ => AgentReply::Err(line.to_owned()),
    }
}

/// What /proc says of a process (or a thread): its command name, state, process group,
/// session and, for a zombie, how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// The command name (`comm`).
    pub comm: String,
    /// The state letter (`R`, `S`, `D`, `Z`, …).
    pub state: char,
    /// The process group id.
    pub pgrp: u32,
    /// The session id.
    pub session: u32,
    /// The wait status a parent would read (field 52, `exit_code`); 0 while it runs.
    pub exit_code: i32,
}

/// `/proc/<pid>/stat` of a process; `None` once it is gone (reaped).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` text.
pub fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    // pid (comm) state ppid pgrp session …; comm may hold spaces and parentheses.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // `fields[0]` is field 3 (state).
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        comm: stat[open + 1..close].to_owned(),
        state: field(3)?.chars().next()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        exit_code: field(52).and_then(|f| f.parse().ok()).unwrap_or(0),
    })
}

/// One thread of a process as /proc shows it: its name and its seccomp state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSeccomp {
    /// The thread's name (`comm`: `vcpu0`, `launcher`; the main thread has the program's).
    pub comm: String,
    /// `Seccomp:` 0 none, 1 strict, 2 filter.
    pub mode: u32,
    /// `Seccomp_filters:` how many filters apply (stacked ones count each).
    pub filters: u32,
}

/// The seccomp state of every thread of `pid`, main thread first.
pub fn thread_seccomp(pid: u32) -> Vec<ThreadSeccomp> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_by_key(|t| (*t != pid, *t));
    tids.into_iter()
        .filter_map(|t| {
            let dir = format!("/proc/{pid}/task/{t}");
            let comm = std::fs::read_to_string(format!("{dir}/comm")).ok()?;
            let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            };
            Some(ThreadSeccomp {
                comm: comm.trim_end().to_owned(),
                mode: field("Seccomp:")?,
                filters: field("Seccomp_filters:").unwrap_or(0),
            })
        })
        .collect()
}

/// Runs `cmd` to its end: (exit code, or -1 after a signal; stdout; stderr).
pub fn run_output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd`, panics (with its output) unless it succeeds; returns its standard output.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- terminals (pts consoles, telnet sessions)

/// Opens a terminal device as a user's program would attach to it, without making it the
/// test's controlling terminal.
pub fn open_terminal(path: &str) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"))
}

pub fn make_raw(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: termios calls on a descriptor we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(f.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
}

/// Reads until `needle` shows up or `timeout` passes; returns what was read.
pub fn read_until(r: &mut impl Read, needle: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        if String::from_utf8_lossy(&out).contains(needle) {
            break;
        }
        match r.read(&mut buf) {
            Ok(0) => std::thread::sleep(Duration::from_millis(100)),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Like [`read_until`], but panics (with what came) unless `needle` showed up.
pub fn expect_text(r: &mut impl Read, needle: &str, timeout: Duration) -> String {
    let got = read_until(r, needle, timeout);
    assert!(got.contains(needle), "{needle:?} not seen; got {got:?}");
    got
}

/// The device path in kuml's (UML's) announcement of a pts line, e.g. `Virtual console 1
/// assigned device '/dev/pts/3'` (`what` is the text before the quote).
pub fn announced_pts(out: &str, what: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no announcement {what:?} in:\n{out}"));
    line.split('\'').nth(1).expect("a quoted device").to_owned()
}

/// Makes `cmd`'s child get each `(target, source)` descriptor pair: the source's file as
/// descriptor number `target` (the sources stay open here; close them after spawning), and no
/// other descriptor of this process beyond 0, 1 and 2. In particular not the guest lock's,
/// which `flock /var/lock/kuml-guest.lock cargo test …` leaves open in the test process: a
/// kuml (or QEMU) that outlived a killed test would otherwise hold the lock for every later
/// guest on the machine (kuml keeps the descriptors it was started with, for `fd=` options).
pub fn pass_fds(cmd: &mut Command, fds_in: &[(i32, std::os::fd::RawFd)]) {
    // SAFETY: only async-signal-safe calls (close_range, fcntl) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            // Registered first: runs before the placing below, whose dup2 clears the flag on
            // each target again.
            let all = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if all != 0 {
                // Kernels before 5.11: one descriptor at a time, up to a bound.
                for fd in 3..4096 {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags >= 0 {
                        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                    }
                }
            }
            Ok(())
        });
    }
    if !fds_in.is_empty() {
        assert!(fds_in.len() <= MAX_EXTRA_FDS, "too many extra_fds");
        let mut fds = [(0, 0); MAX_EXTRA_FDS];
        fds[..fds_in.len()].copy_from_slice(fds_in);
        let n = fds_in.len();
        // Above every target: a copy that landed on a target's own number would keep its
        // close-on-exec flag through the dup2 onto itself.
        let floor = fds_in
            .iter()
            .map(|(t, _)| t + 1)
            .max()
            .unwrap_or(0)
            .max(100);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec, on a
        // fixed-size array (no allocation).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                // First copy every source above the targets (close-on-exec copies), so
                // that no dup2 overwrites a source still to be placed, and a source that
                // already has its target's number (dup2 would keep its close-on-exec flag)
                // is placed like any other.
                let mut moved = [(0, 0); MAX_EXTRA_FDS];
                for (m, (target, src)) in moved.iter_mut().zip(&fds[..n]) {
                    let high = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, floor);
                    if high < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    *m = (*target, high);
                }
                for (target, high) in &moved[..n] {
                    if libc::dup2(*high, *target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_fds_hands_over_only_the_given_descriptors() {
        use std::os::fd::AsRawFd;
        // A descriptor this process leaks to children (as flock(1) leaves its lock's).
        let leaked = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: F_SETFD on a descriptor owned by `leaked`.
        let r = unsafe { libc::fcntl(leaked.as_raw_fd(), libc::F_SETFD, 0) };
        assert_eq!(r, 0);
        let given = std::fs::File::open("/dev/null").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ls /proc/$$/fd"]);
        pass_fds(&mut cmd, &[(7, given.as_raw_fd())]);
        let out = cmd.output().expect("run sh");
        let fds: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(fds.contains(&7), "the given descriptor: {fds:?}");
        assert!(
            !fds.contains(&leaked.as_raw_fd()),
            "descriptor {} leaked to the child: {fds:?}",
            leaked.as_raw_fd()
        );
    }

    #[test]
    fn proc_stat_reads_a_comm_with_spaces_and_a_zombies_exit_code() {
        // 52 fields; comm "(a) b" holds a space and a parenthesis; exit_code 768 = exit 3.
        let mut text = String::from("42 ((a) b) Z 1 7 9");
        for _ in 7..52 {
            text.push_str(" 0");
        }
        text.push_str(" 768\n");
        assert_eq!(
            parse_proc_stat(&text),
            Some(ProcStat {
                comm: "(a) b".into(),
                state: 'Z',
                pgrp: 7,
                session: 9,
                exit_code: 768,
            })
        );
        // A kernel without field 52 still gives the rest.
        assert_eq!(
            parse_proc_stat("42 (kuml) S 1 7 9 0").map(|s| (s.state, s.exit_code)),
            Some(('S', 0))
        );
        assert_eq!(parse_proc_stat("garbage"), None);
    }
}
