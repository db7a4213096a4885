//! The server driven by the REAL Debian `uml_mconsole` and by `kuml-mconsole`: replies,
//! output and exit codes as in reference §3.4/§3.7 and uml-behaviour §4.2.
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

mod common;

use common::{big_text, huge_text, sysrq_lines, TestVm, UML_MCONSOLE, VERSION_TEXT};
use mconsole::command::HELP_TEXT;
use mconsole::{Command, Device};

const KUML_MCONSOLE: &str = env!("CARGO_BIN_EXE_kuml-mconsole");
const LOCAL_HELP: &str = "Additional local mconsole commands:
    quit - Quit mconsole
    switch <socket-name> - Switch control to the given machine
    log -f <filename> - use contents of <filename> as UML log messages
    mconsole-version - version of this mconsole program
    int  - Interrupt UML session
";

/// Run `args` with both clients; both must print `stdout`, nothing on stderr, and exit
/// with `rc`.
fn check(vm: &TestVm, args: &[&str], stdout: &str, rc: i32) {
    for bin in [UML_MCONSOLE, KUML_MCONSOLE] {
        let mut full = vec![vm.umid.as_str()];
        full.extend_from_slice(args);
        let out = vm.run(bin, &full, None);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            stdout,
            "{bin} {args:?}: stdout"
        );
        assert_eq!(out.status.code(), Some(rc), "{bin} {args:?}: exit code");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "{bin} {args:?}: stderr"
        );
    }
}

#[test]
fn basic_commands() {
    let vm = TestVm::start("t1");
    check(&vm, &["version"], &format!("OK {VERSION_TEXT}\n"), 0);
    check(&vm, &["versionXYZ"], &format!("OK {VERSION_TEXT}\n"), 0);
    check(&vm, &["help"], &format!("OK {HELP_TEXT}\n{LOCAL_HELP}"), 0);
    check(&vm, &["halt"], "OK \n", 0);
    check(&vm, &["reboot"], "OK \n", 0);
    check(&vm, &["cad"], "OK \n", 0);
    check(&vm, &["bogus"], "ERR Unknown command\n", 1);
    check(
        &vm,
        &["mconsole-version"],
        "uml_mconsole client version 2\n",
        0,
    );
    check(&vm, &["stack"], "ERR Please specify a pid\n", 1);
    check(&vm, &["stack", "99999"], "ERR Couldn't find that pid\n", 1);
    check(&vm, &["stack", "1"], "OK Stack:\n\n", 0);
    check(&vm, &["proc", "uptime"], "OK \n137.74 135.81\n\n", 0);
    check(
        &vm,
        &["proc", "nonexistent"],
        "ERR Failed to open file\n",
        1,
    );
    check(&vm, &["sysrq"], "OK sysrq: HELP\n\n", 0);
}

#[test]
fn config_and_remove() {
    let vm = TestVm::start("t2");
    check(&vm, &["config", "ubd0"], "OK rootfs.img\n", 0);
    check(&vm, &["config", "ubd5"], "OK \n", 0);
    check(
        &vm,
        &["config", "ubd99"],
        "ERR ubd_get_config : device number out of range\n",
        1,
    );
    check(&vm, &["config", "ubd1=/srv/extra1.img"], "OK \n", 0);
    check(
        &vm,
        &["config", "ubd20=x"],
        "ERR Device number out of range\n",
        1,
    );
    check(
        &vm,
        &["config", "ubd3=/tmp/nonexistent.img"],
        "ERR Couldn't determine size of device's file\n",
        254,
    );
    check(&vm, &["remove", "ubd1"], "OK \n", 0);
    check(&vm, &["remove", "ubd7"], "ERR Device doesn't exist\n", 237);
    check(
        &vm,
        &["remove", "ubd0"],
        "ERR Device is currently open\n",
        240,
    );
    check(
        &vm,
        &["remove", "ubd99"],
        "ERR Invalid device number - must be between 0 and 15\n",
        1,
    );
    check(
        &vm,
        &["config", "eth0"],
        "ERR No get_config routine defined\n",
        1,
    );
    check(&vm, &["config", "eth0=mcast"], "OK \n", 0);
    check(&vm, &["config", "con1"], "OK pts:/dev/pts/0\n", 0);
    check(
        &vm,
        &["config", "con1=pts"],
        "ERR Device is already open\n",
        234,
    );
    check(&vm, &["config", "mem"], "OK 1610612736\n", 0);
    check(
        &vm,
        &["config", "foo=bar"],
        "ERR Bad configuration option\n",
        1,
    );
    check(&vm, &["config", "foo"], "ERR Bad configuration option\n", 1);
    check(&vm, &["config"], "ERR Bad configuration option\n", 1);
    check(&vm, &["remove", "foo"], "ERR Bad remove option\n", 1);
    check(&vm, &["remove"], "ERR Bad remove option\n", 1);
    // Both clients absolutize relative ubd paths against their cwd (the VM's home here).
    check(&vm, &["config", "ubd4=rel.img"], "OK \n", 0);
    let want = format!("ubd4={}/rel.img", vm.home.path().display());
    let got: Vec<_> = vm
        .seen()
        .into_iter()
        .filter_map(|c| match c {
            Command::Config(s) if s.device == Device::Ubd && s.text.starts_with("ubd4=") => {
                Some(s.text)
            }
            _ => None,
        })
        .collect();
    assert_eq!(got, [want.clone(), want]);
}

#[test]
fn deferred_reply_is_awaited() {
    let vm = TestVm::start("t3");
    // The handler answers `config ubd2=` only 300 ms later (as after guest enumeration).
    check(&vm, &["config", "ubd2=/srv/data.img"], "OK \n", 0);
}

#[test]
fn stop_and_go() {
    let vm = TestVm::start("t4");
    check(&vm, &["go"], "ERR Not stopped\n", 1);
    for bin in [UML_MCONSOLE, KUML_MCONSOLE] {
        let run = |args: &[&str]| {
            let mut full = vec![vm.umid.as_str()];
            full.extend_from_slice(args);
            let o = vm.run(bin, &full, None);
            (
                String::from_utf8_lossy(&o.stdout).into_owned(),
                o.status.code(),
            )
        };
        assert_eq!(run(&["stop"]), ("OK stopped\n".into(), Some(0)), "{bin}");
        assert_eq!(
            run(&["stop"]),
            ("ERR Already stopped\n".into(), Some(1)),
            "{bin}"
        );
        assert_eq!(
            run(&["version"]),
            (format!("OK {VERSION_TEXT}\n"), Some(0)),
            "{bin}"
        );
        assert_eq!(run(&["go"]), ("OK \n".into(), Some(0)), "{bin}");
        assert_eq!(run(&["go"]), ("ERR Not stopped\n".into(), Some(1)), "{bin}");
    }
}

#[test]
fn log_is_split_like_uml_mconsole() {
    let vm = TestVm::start("t5");
    check(&vm, &["log", "hello", "from", "mconsole"], "OK \nOK \n", 0);
    let logs: Vec<_> = vm
        .seen()
        .into_iter()
        .filter_map(|c| match c {
            Command::Log(t) => Some(t),
            _ => None,
        })
        .collect();
    let one = ["hello from mconsole".to_string(), "\n".to_string()];
    assert_eq!(logs, [one.clone(), one].concat());
    // A long text goes in 506-byte chunks, plus the final newline request.
    let long = "x".repeat(1200);
    check(&vm, &["log", &long], "OK \nOK \nOK \nOK \n", 0);
    // log -f <file>
    let file = vm.home.path().join("msgs");
    std::fs::write(&file, "line one\nline two\n").unwrap();
    check(&vm, &["log", "-f", file.to_str().unwrap()], "OK \n", 0);
    let logs: Vec<_> = vm
        .seen()
        .into_iter()
        .filter_map(|c| match c {
            Command::Log(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(
        &logs[logs.len() - 2..],
        ["line one\nline two\n", "line one\nline two\n"]
    );
    assert!(logs.iter().filter(|l| l.len() == 506).count() == 4);
}

#[test]
fn multi_packet_replies_arrive_whole() {
    let mut vm = TestVm::start("t6");
    // 16 packets: more than net.unix.max_dgram_qlen (10), which hangs uml_mconsole with UML.
    check(
        &vm,
        &["sysrq", "m"],
        &format!("OK {}\n", sysrq_lines().concat()),
        0,
    );
    // About 45 packets.
    check(&vm, &["proc", "big"], &format!("OK \n{}\n", big_text()), 0);
    // 1 MiB in about 2300 packets: the server must wait for the client, never drop.
    check(
        &vm,
        &["proc", "huge"],
        &format!("OK \n{}\n", huge_text()),
        0,
    );
    let stats = vm.finish();
    eprintln!("server stats after the multi-packet replies: {stats:?}");
    assert_eq!(stats.packets_dropped, 0);
}

#[test]
fn interactive_mode() {
    let vm = TestVm::start("t7");
    let input = "version\nconfig ubd0\nbogus\nmconsole-version\nswitch nosuch\nswitch t7\nquit\n";
    let want = format!(
        "(t7) version\nOK {VERSION_TEXT}\n(t7) config ubd0\nOK rootfs.img\n(t7) bogus\n\
         ERR Unknown command\n(t7) mconsole-version\numl_mconsole client version 2\n\
         (t7) switch nosuch\n(t7) switch t7\nSwitched to 't7'\n(t7) quit\n"
    );
    for bin in [UML_MCONSOLE, KUML_MCONSOLE] {
        let o = vm.run(bin, &["t7"], Some(input));
        assert_eq!(String::from_utf8_lossy(&o.stdout), want, "{bin}");
        assert_eq!(o.status.code(), Some(0), "{bin}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 3, "{bin}: {err}");
        assert!(err
            .lines()
            .all(|l| l.starts_with("Warning: couldn't stat file: ")));
        // EOF without quit: a newline, exit 0.
        let o = vm.run(bin, &["t7"], Some("version\n"));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            format!("(t7) version\nOK {VERSION_TEXT}\n(t7) \n"),
            "{bin}"
        );
        assert_eq!(o.status.code(), Some(0), "{bin}");
    }
}

#[test]
fn socket_lookup_and_errors() {
    let vm = TestVm::start("t8");
    let sock = vm.socket.to_str().unwrap().to_string();
    for bin in [UML_MCONSOLE, KUML_MCONSOLE] {
        // A full socket path works, after the same warnings.
        let o = vm.run(bin, &[&sock, "version"], None);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            format!("OK {VERSION_TEXT}\n"),
            "{bin}"
        );
        assert_eq!(o.status.code(), Some(0));
        let err = String::from_utf8_lossy(&o.stderr);
        // $HOME/.uml is skipped for a name under it: only the /tmp/uml miss is reported.
        assert_eq!(err.lines().count(), 1, "{bin}: {err}");
        assert!(err
            .lines()
            .all(|l| l.starts_with("Warning: couldn't stat file: ")
                && l.ends_with(" - No such file or directory")));
        // No pid file next to a bare socket path: `int` cannot signal.
        let o = vm.run(bin, &[&sock, "int"], None);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "Cannot determine the PID of your UML session, not sending signal.\n",
            "{bin}"
        );
        assert_eq!(o.status.code(), Some(0));
        // No arguments: usage on stderr, exit 1.
        let o = vm.run(bin, &[], None);
        assert_eq!(o.status.code(), Some(1), "{bin}");
        assert!(
            String::from_utf8_lossy(&o.stderr).starts_with("Usage : "),
            "{bin}"
        );
        assert!(o.stdout.is_empty());
        // An unknown name: three warnings, then the send fails, exit 1.
        let o = vm.run(bin, &["nosuch", "version"], None);
        assert_eq!(o.status.code(), Some(1), "{bin}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("Warning: couldn't stat"))
                .count(),
            3
        );
        assert!(err.contains("Sending command to '"), "{bin}: {err}");
    }
    // -d uml_dir
    let dir = vm.home.path().join(".uml");
    let o = vm.run(
        KUML_MCONSOLE,
        &["-d", dir.to_str().unwrap(), "t8", "version"],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("OK {VERSION_TEXT}\n")
    );
    assert!(o.stderr.is_empty());
}

#[test]
fn kuml_mconsole_never_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("silent");
    let _silent = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let start = std::time::Instant::now();
    let o = std::process::Command::new(KUML_MCONSOLE)
        .args(["-t", "0.5", path.to_str().unwrap(), "version"])
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("kuml-mconsole: no reply from"), "{err}");
}
