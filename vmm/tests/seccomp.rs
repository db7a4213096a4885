//! kuml's seccomp filters refuse what a thread must not do, and the refusal ends the process
//! with one line that names the thread, its filter and the system call.
//!
//! Each case runs in a child process (this test binary again, told by an environment
//! variable which case to play): it installs kuml's SIGSYS handler and one of kuml's
//! filters, exactly as kuml's threads do, then makes a call. The parent checks how the child
//! ended and what it printed. A control case makes only allowed calls and must end well, so
//! a filter that refused everything (or nothing) fails here.

// Integration tests: each file is its own crate of tests.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;

use kuml::seccomp::{self, Mode, ThreadKind};

const CASE: &str = "KUML_SECCOMP_TEST_CASE";

/// Runs `case` in a child process (the test `test` of this binary); returns (exit code,
/// stderr).
fn run_case(test: &str, case: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// In the child: installs `kind`'s filter on a new thread named `thread` and runs `f` there.
fn in_filtered_thread(thread: &str, kind: ThreadKind, f: impl FnOnce() + Send + 'static) {
    seccomp::install_sigsys_handler().unwrap();
    std::thread::Builder::new()
        .name(thread.to_owned())
        .spawn(move || {
            seccomp::install_in(kind, Mode::On).unwrap();
            f();
        })
        .unwrap()
        .join()
        .unwrap();
}

fn socket() -> i32 {
    // SAFETY: socket() takes no pointers.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) }
}

fn unshare_nothing() -> i32 {
    // SAFETY: unshare() takes no pointers; with no flags it changes nothing.
    unsafe { libc::unshare(0) }
}

#[test]
fn a_vcpu_thread_that_unshares_ends_kuml_with_a_clear_line() {
    match std::env::var(CASE).as_deref() {
        Ok("vcpu-unshare") => in_filtered_thread("vcpu3", ThreadKind::Vcpu, || {
            let fd = unshare_nothing();
            // Not reached when the filter works: the process has exited in the handler.
            println!("unshare() returned {fd}");
            std::process::exit(0);
        }),
        Ok("vcpu-allowed") => in_filtered_thread("vcpu3", ThreadKind::Vcpu, || {
            // What a vCPU thread does: write (a UART's output), futex (locks), an eventfd
            // wake-up, time.
            let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
            evt.write(1).unwrap();
            let m = std::sync::Mutex::new(1);
            *m.lock().unwrap() += 1;
            let _ = std::time::Instant::now();
            eprintln!("vcpu-allowed: done");
            std::process::exit(0);
        }),
        Ok(other) => panic!("unknown case {other}"),
        Err(_) => {
            let t = "a_vcpu_thread_that_unshares_ends_kuml_with_a_clear_line";
            let (code, err) = run_case(t, "vcpu-allowed");
            assert_eq!(code, Some(0), "allowed calls pass the filter: {err}");
            assert!(err.contains("vcpu-allowed: done"), "{err}");

            let (code, err) = run_case(t, "vcpu-unshare");
            assert_eq!(code, Some(1), "kuml's error exit status: {err}");
            assert!(
                err.contains(
                    "kuml: seccomp: thread 'vcpu3' (filter vcpu) made system call 272 (unshare), \
                     which its filter forbids; kuml stops (KUML_SECCOMP=off runs without filters)"
                ),
                "{err}"
            );
            assert!(!err.contains("unshare() returned"), "{err}");
        }
    }
}

#[test]
fn the_event_loop_may_not_exec_or_ptrace() {
    match std::env::var(CASE).as_deref() {
        Ok("loop-execve") => in_filtered_thread("main-like", ThreadKind::EventLoop, || {
            let prog = c"/bin/true";
            let argv = [prog.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated program path and argv/envp arrays ending in null.
            let r = unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            println!("execve returned {r}");
            std::process::exit(0);
        }),
        Ok("loop-ptrace") => in_filtered_thread("main-like", ThreadKind::EventLoop, || {
            // SAFETY: PTRACE_TRACEME takes no pointers.
            let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            println!("ptrace returned {r}");
            std::process::exit(0);
        }),
        Ok("loop-allowed") => in_filtered_thread("main-like", ThreadKind::EventLoop, || {
            // A boot's kind of work: files, sockets, a thread, an epoll set.
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("f"), b"x").unwrap();
            assert!(socket() >= 0);
            let em = event_manager::EventManager::<
                std::sync::Arc<std::sync::Mutex<dyn event_manager::MutEventSubscriber + Send>>,
            >::new();
            assert!(em.is_ok());
            std::thread::spawn(|| 7).join().unwrap();
            eprintln!("loop-allowed: done");
            std::process::exit(0);
        }),
        Ok(other) => panic!("unknown case {other}"),
        Err(_) => {
            let t = "the_event_loop_may_not_exec_or_ptrace";
            let (code, err) = run_case(t, "loop-allowed");
            assert_eq!(code, Some(0), "allowed calls pass the filter: {err}");
            assert!(err.contains("loop-allowed: done"), "{err}");
            for (case, call) in [
                ("loop-execve", "59 (execve)"),
                ("loop-ptrace", "101 (ptrace)"),
            ] {
                let (code, err) = run_case(t, case);
                assert_eq!(code, Some(1), "{case}: {err}");
                assert!(
                    err.contains(&format!(
                        "thread 'main-like' (filter event-loop) made system call {call}"
                    )),
                    "{case}: {err}"
                );
            }
        }
    }
}

#[test]
fn the_launchers_children_inherit_only_its_deny_list() {
    match std::env::var(CASE).as_deref() {
        Ok("launcher-spawn") => in_filtered_thread("launcher", ThreadKind::Launcher, || {
            // A helper started from the launcher's thread can exec and do what helpers do.
            let out = Command::new("/bin/sh")
                .args(["-c", "echo helper-ran; exec cat /proc/self/status"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("helper-ran"), "{text}");
            assert!(
                text.contains("Seccomp:\t2"),
                "the helper is filtered: {text}"
            );
            eprintln!("launcher-spawn: done");
            std::process::exit(0);
        }),
        Ok("launcher-ptrace") => in_filtered_thread("launcher", ThreadKind::Launcher, || {
            // SAFETY: PTRACE_TRACEME takes no pointers.
            let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            println!("ptrace returned {r}");
            std::process::exit(0);
        }),
        Ok(other) => panic!("unknown case {other}"),
        Err(_) => {
            let t = "the_launchers_children_inherit_only_its_deny_list";
            let (code, err) = run_case(t, "launcher-spawn");
            assert_eq!(code, Some(0), "{err}");
            assert!(err.contains("launcher-spawn: done"), "{err}");
            let (code, err) = run_case(t, "launcher-ptrace");
            assert_eq!(code, Some(1), "{err}");
            assert!(
                err.contains("thread 'launcher' (filter launcher) made system call 101 (ptrace)"),
                "{err}"
            );
        }
    }
}

#[test]
fn helpers_started_from_a_filtered_thread_run_through_the_launcher() {
    match std::env::var(CASE).as_deref() {
        Ok("helper-via-launcher") => {
            // As kuml's main does: enable (starts the launcher), then filter the loop thread.
            seccomp::enable(Mode::On).unwrap();
            in_filtered_thread("kuml", ThreadKind::EventLoop, || {
                // A helper execs and sandboxes itself (here: exec, and a new session), which
                // the event loop's filter forbids; the crates' hooks reach the launcher.
                let mut cmd = Command::new("/bin/sh");
                cmd.args(["-c", "exec setsid /bin/echo helper-ran"])
                    .stdout(std::process::Stdio::piped());
                let out = netdev::launch::spawn(cmd)
                    .unwrap()
                    .wait_with_output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
                assert_eq!(String::from_utf8_lossy(&out.stdout), "helper-ran\n");
                eprintln!("helper-via-launcher: done");
                std::process::exit(0);
            });
        }
        Ok("helper-direct") => in_filtered_thread("kuml", ThreadKind::EventLoop, || {
            // Without the launcher the child inherits the loop's filter: its execve is
            // refused (SIGSYS; posix_spawn's child has the default action, so it dies of it).
            let st = Command::new("/bin/true").status();
            eprintln!("direct: {st:?}");
            std::process::exit(0);
        }),
        Ok(other) => panic!("unknown case {other}"),
        Err(_) => {
            let t = "helpers_started_from_a_filtered_thread_run_through_the_launcher";
            let (code, err) = run_case(t, "helper-via-launcher");
            assert_eq!(code, Some(0), "{err}");
            assert!(err.contains("helper-via-launcher: done"), "{err}");
            // The control: the same kind of start without the launcher fails.
            let (_, err) = run_case(t, "helper-direct");
            assert!(
                err.contains("direct: Ok(ExitStatus(unix_wait_status(31)))")
                    || err.contains("(filter event-loop) made system call 59 (execve)")
                    || err.contains("direct: Err"),
                "a child of a filtered thread cannot exec: {err}"
            );
        }
    }
}
