//! DaemonBackend against Debian's real `uml_switch` (uml-utilities), in a private network
//! namespace (the data sockets are abstract unix sockets, which are per namespace).
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

mod common;

use std::io::IoSlice;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{in_fresh_netns, recv_timeout, test_frame};
use netdev::{Backend, DaemonBackend, DaemonError};

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

fn connect_retry(ctl: &Path) -> DaemonBackend {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match DaemonBackend::connect_path(ctl) {
            Ok(b) => return b,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to uml_switch: {e:?}"),
        }
    }
}

#[test]
fn two_ports_on_uml_switch_exchange_frames() {
    in_fresh_netns(|| {
        let dir = tempfile::tempdir().unwrap();
        let ctl = dir.path().join("ctl");
        let log = dir.path().join("switch.log");
        let switch = start_switch(&ctl, &log);
        let mut a = connect_retry(&ctl);
        let mut b = DaemonBackend::connect_path(&ctl).unwrap();
        let mut c = DaemonBackend::connect_path(&ctl).unwrap();
        let mut buf = vec![0u8; netdev::RECV_BUF_LEN];
        let wait = Duration::from_secs(2);

        // Broadcast from A is flooded to B and C (not back to A).
        let f1 = test_frame([0xff; 6], A, &[1; 28]);
        a.send(&f1).unwrap();
        let n = recv_timeout(&mut b, &mut buf, wait).expect("B got no broadcast");
        assert_eq!(&buf[..n], &f1[..]);
        let n = recv_timeout(&mut c, &mut buf, wait).expect("C got no broadcast");
        assert_eq!(&buf[..n], &f1[..]);
        assert_eq!(
            recv_timeout(&mut a, &mut buf, Duration::from_millis(200)),
            None
        );

        // B answers A by unicast: A's MAC was learned, so only A gets it.
        let f2 = test_frame(A, B, &[2; 1486]);
        b.send(&f2).unwrap();
        let n = recv_timeout(&mut a, &mut buf, wait).expect("A got no unicast");
        assert_eq!(&buf[..n], &f2[..]);
        assert_eq!(
            recv_timeout(&mut c, &mut buf, Duration::from_millis(200)),
            None,
            "learned unicast was flooded: the switch did not match our port address"
        );

        // And A to B.
        let f3 = test_frame(B, A, b"to b");
        a.send_vectored(&[IoSlice::new(&f3[..6]), IoSlice::new(&f3[6..])])
            .unwrap();
        let n = recv_timeout(&mut b, &mut buf, wait).expect("B got no unicast");
        assert_eq!(&buf[..n], &f3[..]);

        a.check_control().expect("switch alive");
        drop((b, c));
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains("Unknown connection"),
            "switch could not identify our ports:\n{text}"
        );
        let _ = C;

        // The switch going away is visible on the control connection.
        drop(switch);
        assert_eq!(
            a.check_control().unwrap_err().kind(),
            std::io::ErrorKind::NotConnected
        );
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
