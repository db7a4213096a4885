//! DaemonBackend against Debian's real `uml_switch` (uml-utilities), in a private network
//! namespace (the data sockets are abstract unix sockets, which are per namespace).
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{in_fresh_netns, recv_timeout, test_frame};
use netdev::{Backend, BackendState, DaemonBackend, DaemonError};

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];

/// The switch process, killed (by its own pid) on drop.
struct Switch(Child);

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_switch(ctl: &Path, log: &Path) -> Switch {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new("uml_switch")
        .arg("-unix")
        .arg(ctl)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("TEST CANNOT RUN: cannot start `uml_switch` (apt-get install uml-utilities)");
    Switch(child)
}

// Connects once the switch listens, and waits for its answer.
fn connect_retry(ctl: &Path) -> DaemonBackend {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut b = loop {
        match DaemonBackend::connect_path(ctl) {
            Ok(b) => break b,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to uml_switch: {e:?}"),
        }
    };
    b.wait_ready(Duration::from_secs(5))
        .expect("uml_switch answers the handshake");
    b
}

#[test]
fn two_ports_on_uml_switch_exchange_frames() {
    in_fresh_netns(|| {
        let dir = tempfile::tempdir().unwrap();
        let ctl = dir.path().join("ctl");
        let log = dir.path().join("switch.log");
        let switch = start_switch(&ctl, &log);
        let mut a = connect_retry(&ctl);
        let mut b = connect_retry(&ctl);
        let mut c = connect_retry(&ctl);
        let mut buf = vec![0u8; netdev::RECV_BUF_LEN];
        let wait = Duration::from_secs(2);

        // Broadcast from A is flooded to B and C. (The switch finds each port by its data
        // address: "Unknown connection" frames are dropped, so delivery shows it matched.)
        let f1 = test_frame([0xff; 6], A, &[1; 28]);
        a.send(&f1).unwrap();
        let n = recv_timeout(&mut b, &mut buf, wait).expect("B got no broadcast");
        assert_eq!(&buf[..n], &f1[..]);
        let n = recv_timeout(&mut c, &mut buf, wait).expect("C got no broadcast");
        assert_eq!(&buf[..n], &f1[..]);

        // B answers A by unicast: A's MAC was learned, so only A gets it. A's first frame
        // is f2 (its own broadcast did not come back to it).
        let f2 = test_frame(A, B, &[2; 1486]);
        b.send(&f2).unwrap();
        let n = recv_timeout(&mut a, &mut buf, wait).expect("A got no unicast");
        assert_eq!(&buf[..n], &f2[..], "A got its own broadcast back");
        // C's next frame is B's next broadcast, not f2: the learned unicast was not flooded.
        let f4 = test_frame([0xff; 6], B, b"after the unicast");
        b.send(&f4).unwrap();
        let n = recv_timeout(&mut c, &mut buf, wait).expect("C got no broadcast");
        assert_eq!(
            &buf[..n],
            &f4[..],
            "learned unicast was flooded: the switch did not match our port address"
        );

        // And A to B.
        let f3 = test_frame(B, A, b"to b");
        a.send(&f3).unwrap();
        let n = recv_timeout(&mut b, &mut buf, wait).expect("B got no unicast");
        assert_eq!(&buf[..n], &f3[..]);

        assert_eq!(a.on_control().expect("switch alive"), BackendState::Ready);
        let _ = C;

        // The switch going away is visible on the control connection.
        drop(switch);
        assert_eq!(
            a.on_control().unwrap_err().kind(),
            std::io::ErrorKind::NotConnected
        );
        drop(log);
    });
}

#[test]
fn missing_switch_is_a_connect_error_naming_the_path() {
    in_fresh_netns(|| {
        let dir = tempfile::tempdir().unwrap();
        let ctl = dir.path().join("nothing");
        let err = DaemonBackend::connect_path(&ctl).unwrap_err();
        assert!(matches!(err, DaemonError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("nothing"), "{err}");
    });
}

// Runs `f` on a thread; fails the test if it has not returned within `limit` (instead of
// hanging the test run, as a blocking call would).
fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("blocked for more than {} s", limit.as_secs()))
}

#[test]
fn a_switch_that_does_not_answer_blocks_nothing() {
    // A control socket that takes connections and never answers (a stuck switch).
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let listener = UnixListener::bind(&ctl).unwrap();
    let path = ctl.clone();
    let mut port = within(Duration::from_secs(3), move || {
        DaemonBackend::connect_path(&path).expect("the request is sent without waiting")
    });
    assert_eq!(port.state(), BackendState::Connecting);
    assert_eq!(port.on_control().unwrap(), BackendState::Connecting);
    assert!(port
        .wait_ready(Duration::from_millis(50))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut));
    // The switch refuses the port by closing the connection.
    let (conn, _) = listener.accept().unwrap();
    let mut req = vec![0u8; netdev::daemon::REQUEST_LEN];
    (&conn).read_exact(&mut req).unwrap();
    assert!(netdev::daemon::decode_request(&req).is_ok());
    drop(conn);
    let e = port.on_control().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotConnected);
    assert!(e.to_string().contains("refused"), "{e}");
}

#[test]
fn a_switch_whose_queue_is_full_fails_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let _listener = UnixListener::bind(&ctl).unwrap();
    let path = ctl.clone();
    let err = within(Duration::from_secs(10), move || {
        let mut ports = Vec::new();
        // The listener never accepts: its queue (SOMAXCONN) fills up.
        for _ in 0..100_000 {
            match DaemonBackend::connect_path(&path) {
                Ok(p) => ports.push(p),
                Err(e) => return e,
            }
        }
        panic!("100000 connections to a listener that never accepts");
    });
    assert!(matches!(err, DaemonError::Connect { .. }), "{err:?}");
}

#[test]
fn a_bad_reply_ends_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let listener = UnixListener::bind(&ctl).unwrap();
    let mut port = DaemonBackend::connect_path(&ctl).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let mut reply = netdev::daemon::encode_reply(&[0; netdev::daemon::SUN_PATH_LEN]);
    reply[0] = 2; // AF_INET
    conn.write_all(&reply[..50]).unwrap();
    // Half a reply: still connecting.
    assert_eq!(port.on_control().unwrap(), BackendState::Connecting);
    conn.write_all(&reply[50..]).unwrap();
    let e = port.on_control().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}
