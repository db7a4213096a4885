//! `kuml-mconsole [-d uml_dir] [-t seconds] umid|socket-path [command...]`
//!
//! A drop-in for `uml_mconsole`: the same socket lookup and warnings, `OK <text>` /
//! `ERR <text>` output, exit status `err & 0xff`, the same local commands (`quit`, `help`,
//! `switch`, `log`, `log -f`, `mconsole-version`, `int`) and interactive mode with the
//! `(<name>) ` prompt. Unlike `uml_mconsole` it never hangs: each reply packet is awaited
//! at most `-t` seconds (default 10); a timeout prints a message on stderr and exits 1.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mconsole::client::{absolutize_config, candidates, Client, ClientError};

const USAGE: &str = "Usage : kuml-mconsole [-d uml_dir] [-t seconds] socket-name [command]";
/// `log` chunk size: 512 - sizeof("log ") - 1.
const LOG_CHUNK: usize = 506;
const LOCAL_HELP: &str = "Additional local mconsole commands:
    quit - Quit mconsole
    switch <socket-name> - Switch control to the given machine
    log -f <filename> - use contents of <filename> as UML log messages
    mconsole-version - version of this mconsole program
    int  - Interrupt UML session
";

struct State {
    client: Client,
    uml_dir: Option<PathBuf>,
    /// The prompt name: the socket argument cut to 11 bytes, `[None]` if not found.
    name: String,
    pid: Option<i32>,
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(1);
}

/// Look `name` up like `uml_mconsole`'s `switch_common`, printing a warning per miss.
fn lookup(name: &str, uml_dir: Option<&Path>) -> Option<(PathBuf, Option<i32>)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for c in candidates(name, uml_dir, home.as_deref()) {
        match std::fs::metadata(&c.socket) {
            Ok(_) => {
                let pid = c
                    .pid_file
                    .and_then(|p| std::fs::read(p).ok())
                    .and_then(|b| mconsole::umid::parse_pid(&b));
                return Some((c.socket, pid));
            }
            Err(e) => eprintln!(
                "Warning: couldn't stat file: {} - {}",
                c.socket.display(),
                strerror(&e)
            ),
        }
    }
    None
}

/// The bare C strerror text (without Rust's " (os error N)").
fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn prompt_name(name: &str) -> String {
    let mut end = name.len().min(11);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// Send a command to the VM and print the answer. Returns the exit status.
fn remote(st: &State, command: &str) -> i32 {
    let command = match std::env::current_dir() {
        Ok(cwd) => absolutize_config(command, &cwd),
        Err(_) => command.to_string(),
    };
    match st.client.command(command.as_bytes()) {
        Ok(r) => {
            println!("{}", r.format());
            r.exit_code()
        }
        Err(e @ ClientError::Timeout { .. }) => {
            eprintln!("kuml-mconsole: {e}");
            1
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Sends `text` as `log` requests. Like `uml_mconsole`, the exit status is 0 whatever the
/// replies were (they are printed).
fn log_text(st: &State, text: &[u8]) -> i32 {
    let mut newline = false;
    for chunk in text.chunks(LOG_CHUNK) {
        let mut cmd = b"log ".to_vec();
        cmd.extend_from_slice(chunk);
        remote(st, &String::from_utf8_lossy(&cmd));
        newline = chunk.last() == Some(&b'\n');
    }
    if !newline {
        remote(st, "log \n");
    }
    0
}

fn log_cmd(st: &State, command: &str) -> i32 {
    let arg = command["log".len()..].trim_start();
    if let Some(file) = arg.strip_prefix("-f") {
        let file = file.trim_start();
        let mut data = Vec::new();
        let read = std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut data));
        if let Err(e) = read {
            eprintln!("opening file: {}", strerror(&e));
            std::process::exit(1);
        }
        if data.is_empty() {
            return 0;
        }
        return log_text(st, &data);
    }
    if arg.is_empty() {
        remote(st, "log \n");
        return 0;
    }
    log_text(st, arg.as_bytes())
}

fn issue(st: &mut State, command: &str) -> i32 {
    let command = command.trim_end();
    if command.starts_with("quit") {
        std::process::exit(0);
    } else if command.starts_with("help") {
        remote(st, command);
        print!("{LOCAL_HELP}");
        0
    } else if let Some(rest) = command.strip_prefix("switch") {
        let name = rest.trim_start();
        match lookup(name, st.uml_dir.as_deref()) {
            Some((path, pid)) => {
                st.client.set_target(path);
                st.name = prompt_name(name);
                st.pid = pid;
                println!("Switched to '{name}'");
                0
            }
            None => 1,
        }
    } else if command.starts_with("log") {
        log_cmd(st, command)
    } else if command.starts_with("mconsole-version") {
        println!("uml_mconsole client version 2");
        0
    } else if command.starts_with("int") {
        match st.pid {
            // SAFETY: kill() with a pid and a signal number touches no memory.
            Some(pid) => unsafe {
                libc::kill(pid, libc::SIGINT);
            },
            None => {
                println!("Cannot determine the PID of your UML session, not sending signal.")
            }
        }
        0
    } else {
        remote(st, command)
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut uml_dir = None;
    let mut timeout = Duration::from_secs(10);
    while let Some(opt) = args.first().cloned() {
        match opt.as_str() {
            "-d" | "-t" if args.len() >= 2 => {
                let value = args.remove(1);
                args.remove(0);
                if opt == "-d" {
                    uml_dir = Some(PathBuf::from(value));
                } else {
                    match value.parse::<f64>() {
                        Ok(s) if s > 0.0 && s.is_finite() => timeout = Duration::from_secs_f64(s),
                        _ => usage(),
                    }
                }
            }
            "--" => {
                args.remove(0);
                break;
            }
            "-h" | "--help" | "-d" | "-t" => usage(),
            _ => break,
        }
    }
    if args.is_empty() {
        usage();
    }
    let name = args.remove(0);
    let (target, name_shown, pid) = match lookup(&name, uml_dir.as_deref()) {
        Some((path, pid)) => (path, prompt_name(&name), pid),
        None => (PathBuf::from(&name), "[None]".to_string(), None),
    };
    let client = match Client::new(target, timeout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kuml-mconsole: {e}");
            std::process::exit(1);
        }
    };
    let mut st = State {
        client,
        uml_dir,
        name: name_shown,
        pid,
    };
    if !args.is_empty() {
        let status = issue(&mut st, &args.join(" "));
        let _ = io::stdout().flush();
        std::process::exit(status);
    }
    let stdin = io::stdin();
    let echo = !stdin.is_terminal();
    let mut line = String::new();
    loop {
        print!("({}) ", st.name);
        let _ = io::stdout().flush();
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let command = line.trim_end_matches(['\n', '\r']);
        if echo {
            println!("{command}");
        }
        if command.trim().is_empty() {
            continue;
        }
        issue(&mut st, command);
        let _ = io::stdout().flush();
    }
    println!();
}
