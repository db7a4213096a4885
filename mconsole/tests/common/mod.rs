//! A test VM: a real mconsole [`Server`] in `<HOME>/.uml/<umid>/mconsole`, served by a
//! thread whose small handler answers as UML does (fixed replies from the reference, including
//! the multi-packet `proc` and `stack` replies kuml itself refuses). It tests the wire protocol
//! and the clients; what kuml answers is tested through its real front-end in
//! `vmm/tests/mconsole_frontend.rs`.

#![allow(dead_code)]

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mconsole::command::{self, NO_GET_CONFIG, SPECIFY_PID};
use mconsole::{ClientAddr, Command, Device, Reply, Server, ServerStats, UmidDir};

pub const VERSION_TEXT: &str = "Linux (none) 6.1.176 #1 Sat Jul  4 15:38:16 UTC 2026 x86_64";
pub const UML_MCONSOLE: &str = "/usr/bin/uml_mconsole";

/// The text of `proc big`: many lines, about 40 packets.
pub fn big_text() -> String {
    (0..700)
        .map(|i| format!("line {i:05} of a large proc file\n"))
        .collect::<String>()
}

/// The text of `proc huge`: 1 MiB, about 2300 packets.
pub fn huge_text() -> String {
    (0..32768).map(|i| format!("{i:031}\n")).collect::<String>()
}

/// `sysrq m`: 15 console lines, each its own packet with more=1, then "".
pub fn sysrq_lines() -> Vec<String> {
    (0..15).map(|i| format!("sysrq line {i}\n")).collect()
}

fn handle(cmd: &Command, seen: &Mutex<Vec<Command>>) -> Option<Vec<Reply>> {
    seen.lock().unwrap().push(cmd.clone());
    let one = |r: Reply| Some(vec![r]);
    match cmd {
        Command::Version => one(Reply::ok(VERSION_TEXT)),
        Command::Help => one(Reply::help()),
        Command::Halt | Command::Reboot | Command::Cad | Command::Go | Command::Log(_) => {
            one(Reply::ok(""))
        }
        Command::Stop => one(Reply::stopped()),
        Command::Config(spec) => match (spec.device, spec.text.as_str()) {
            (Device::Ubd, "ubd0") => one(Reply::ok("rootfs.img")),
            (Device::Ubd, "ubd99") => {
                one(Reply::error("ubd_get_config : device number out of range"))
            }
            (Device::Ubd, t) if t.starts_with("ubd2=") => None, // deferred
            (Device::Ubd, _) if spec.is_query() => one(Reply::ok("")),
            (Device::Ubd, t) if t.starts_with("ubd20=") => {
                one(Reply::error("Device number out of range"))
            }
            (Device::Ubd, t) if t.contains("nonexistent") => one(Reply::with_err(
                -libc::ENOENT,
                "Couldn't determine size of device's file",
            )),
            (Device::Ubd, _) => one(Reply::ok("")),
            (Device::Eth, _) if spec.is_query() => one(Reply::error(NO_GET_CONFIG)),
            (Device::Con, "con1") => one(Reply::ok("pts:/dev/pts/0")),
            (Device::Con, "con1=pts") => {
                one(Reply::with_err(-libc::EINVAL, "Device is already open"))
            }
            (Device::Mem, "mem") => one(Reply::ok("1610612736")),
            _ => one(Reply::ok("")),
        },
        Command::Remove(spec) => match spec.text.as_str() {
            "ubd0" => one(Reply::device_busy()),
            "ubd7" => one(Reply::no_device()),
            "ubd99" => one(Reply::invalid_device_number(0, 15)),
            _ => one(Reply::ok("")),
        },
        Command::Sysrq(Some('m')) => Some(command::console_replies(sysrq_lines())),
        Command::Sysrq(_) => Some(vec![Reply::ok("sysrq: HELP\n").more(), Reply::ok("")]),
        Command::Proc(p) if p == "big" => Some(vec![
            Reply::ok("\n").more(),
            Reply::ok(big_text()).more(),
            Reply::ok(""),
        ]),
        Command::Proc(p) if p == "huge" => Some(command::proc_replies(huge_text().as_bytes())),
        Command::Proc(p) if p.starts_with("echo") => one(Reply::ok(p.clone())),
        Command::Proc(p) if p == "uptime" => Some(command::proc_replies(b"137.74 135.81\n")),
        Command::Proc(_) => one(Reply::error("Failed to open file")),
        Command::Stack(None) => one(Reply::error(SPECIFY_PID)),
        Command::Stack(Some(1)) => Some(vec![Reply::ok("Stack:\n").more(), Reply::ok("")]),
        Command::Stack(Some(_)) => one(Reply::error(command::NO_SUCH_PID)),
    }
}

/// A running test VM.
pub struct TestVm {
    pub home: tempfile::TempDir,
    pub umid: String,
    pub socket: PathBuf,
    pub seen: Arc<Mutex<Vec<Command>>>,
    pub stats: Arc<Mutex<ServerStats>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: UmidDir,
}

impl TestVm {
    pub fn start(umid: &str) -> TestVm {
        let home = tempfile::tempdir().unwrap();
        let dir = UmidDir::create(&home.path().join(".uml"), Some(umid)).unwrap();
        assert_eq!(dir.umid(), umid);
        let socket = dir.socket_path();
        let mut server = Server::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(ServerStats::default()));
        let (seen2, done2, stats2) = (seen.clone(), done.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            let mut deferred: Vec<(Instant, ClientAddr)> = Vec::new();
            while !done2.load(Ordering::Relaxed) {
                server.wait(Some(Duration::from_millis(5))).unwrap();
                while let Some(inc) = server.recv().unwrap() {
                    match handle(&inc.command, &seen2) {
                        Some(replies) => server.reply_all(&inc.client, &replies),
                        None => {
                            deferred.push((Instant::now() + Duration::from_millis(300), inc.client))
                        }
                    }
                }
                let now = Instant::now();
                deferred.retain(|(due, client)| {
                    if *due <= now {
                        server.reply(client, &Reply::ok(""));
                        false
                    } else {
                        true
                    }
                });
                *stats2.lock().unwrap() = server.stats();
            }
        });
        TestVm {
            home,
            umid: umid.to_string(),
            socket,
            seen,
            stats,
            done,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Run a client binary with `HOME` pointing at this VM's home, cwd = home.
    pub fn run(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
        if bin == UML_MCONSOLE {
            assert!(
                Path::new(UML_MCONSOLE).exists(),
                "THE REAL uml_mconsole IS NOT INSTALLED: apt-get install uml-utilities \
                 (this test cannot run without it)"
            );
        }
        let mut child = Proc::new(bin)
            .args(args)
            .env("HOME", self.home.path())
            .current_dir(self.home.path())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        // Never hang: kill the client after 20 s. Output is drained while it runs.
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: signalling our own child process by its pid; no memory involved.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("{bin} {args:?} hung (killed after 20 s)");
            }
        }
    }

    pub fn seen(&self) -> Vec<Command> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops the server thread and returns its counters as of its last round (no waiting
    /// for it to get round to publishing them).
    pub fn finish(&mut self) -> ServerStats {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the server thread");
        }
        *self.stats.lock().unwrap()
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A raw client socket bound to a unique abstract address, with a 10 s receive timeout.
pub fn raw_client() -> UnixDatagram {
    let name = format!(
        "mconsole-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let s =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Receive one datagram (panics after the 10 s timeout).
pub fn recv(s: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let n = s.recv(&mut buf).expect("no reply within 10 s");
    buf.truncate(n);
    buf
}
