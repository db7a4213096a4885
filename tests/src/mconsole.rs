//! The mconsole clients as the e2e tests run them: Debian's real `uml_mconsole` and this
//! project's `kuml-mconsole` ([`Mc`]), each call bounded so that a hung client fails its test.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::kuml_bin;

/// A client call; hot-plug replies wait for the guest driver (slow under PVM emulation).
pub const CALL: Duration = Duration::from_secs(240);

/// The mconsole client under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mc {
    /// Debian's `uml_mconsole` (uml-utilities).
    Uml,
    /// This project's `kuml-mconsole`.
    Kuml,
}

impl Mc {
    /// The client's command, without the socket and the request.
    pub fn command(self) -> Command {
        match self {
            Mc::Uml => Command::new("uml_mconsole"),
            Mc::Kuml => {
                let bin = kuml_bin().with_file_name("kuml-mconsole");
                assert!(
                    bin.is_file(),
                    "{} is missing: run `cargo build -p mconsole --bins`",
                    bin.display()
                );
                let mut c = Command::new(bin);
                c.args(["-t", &CALL.as_secs().to_string()]);
                c
            }
        }
    }

    /// Runs `<client> <socket> <cmd>`; returns (stdout, exit code). Panics on a hang.
    pub fn run(self, sock: &Path, cmd: &str) -> (String, i32) {
        let mut c = self.command();
        c.arg(sock).arg(cmd).stdin(Stdio::null());
        let (out, code) = run_with_timeout(c, None, CALL);
        eprintln!("[{self:?}] {cmd} -> {out:?} rc={code}");
        (out, code)
    }

    /// Runs `cmd` and checks the exact output line and exit code.
    pub fn expect(self, sock: &Path, cmd: &str, line: &str, code: i32) {
        let (out, rc) = self.run(sock, cmd);
        assert_eq!(out, format!("{line}\n"), "{self:?}: reply to {cmd:?}");
        assert_eq!(rc, code, "{self:?}: exit code of {cmd:?} (reply {out:?})");
    }
}

/// Spawns `cmd` (stdin `input` if any), waits at most `timeout`; (stdout, exit code).
pub fn run_with_timeout(
    mut cmd: Command,
    input: Option<String>,
    timeout: Duration,
) -> (String, i32) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let writer = input.map(|text| {
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        })
    });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the client") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} hung for {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    (reader.join().unwrap(), status.code().unwrap_or(-1))
}
