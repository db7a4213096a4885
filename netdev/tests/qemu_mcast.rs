//! Wire compatibility of McastBackend with QEMU's `-netdev socket,mcast=`: QEMU (no guest,
//! `-machine none`) bridges its mcast socket and a plain UDP socket on one hub, so frames
//! can be checked byte for byte in both directions. Runs in a private network namespace.
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{in_fresh_netns, lo_multicast, recv_timeout, test_frame};
use netdev::{Backend, MacAddr, McastBackend, McastConfig};

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const Q: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0e];

/// The QEMU process, killed (by its own pid) on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn frames_cross_qemu_socket_mcast_netdev_unchanged() {
    in_fresh_netns(|| {
        lo_multicast();
        let udp = UdpSocket::bind("127.0.0.1:6000").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let _qemu = Qemu(
            Command::new("qemu-system-x86_64")
                .args(["-machine", "none", "-nodefaults", "-display", "none"])
                .args(["-net", "socket,mcast=239.192.168.1:1102"])
                .args(["-net", "socket,udp=127.0.0.1:6000,localaddr=127.0.0.1:6001"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("TEST CANNOT RUN: cannot start qemu-system-x86_64"),
        );
        let mut a = McastBackend::open(&McastConfig::default(), Some(MacAddr(A))).unwrap();

        // kuml -> QEMU: resend until QEMU is up and bridges it to the UDP side.
        let f1 = test_frame([0xff; 6], A, &[0x42; 28]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut rb = [0u8; 2048];
        'outer: loop {
            assert!(
                Instant::now() < deadline,
                "QEMU never bridged our mcast frame"
            );
            a.send(&f1).unwrap();
            while let Ok(n) = udp.recv(&mut rb) {
                if rb[..n] == f1[..] {
                    break 'outer;
                }
            }
        }

        // QEMU -> kuml: a frame QEMU sends on the group arrives as the same bytes.
        let f2 = test_frame(A, Q, &[0x17; 100]);
        udp.send_to(&f2, "127.0.0.1:6001").unwrap();
        let mut buf = vec![0u8; netdev::RECV_BUF_LEN];
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = recv_timeout(&mut a, &mut buf, left).expect("QEMU's frame never arrived");
            if buf[..n] == f2[..] {
                break;
            }
        }
    });
}
