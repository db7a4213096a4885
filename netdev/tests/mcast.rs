//! McastBackend over the loopback of a private network namespace.
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

mod common;

use std::time::Duration;

use common::{in_fresh_netns, lo_multicast, recv_timeout, test_frame};
use netdev::{Backend, MacAddr, McastBackend, McastConfig, McastError};

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

#[test]
fn two_backends_exchange_frames_both_ways() {
    in_fresh_netns(|| {
        lo_multicast();
        let cfg = McastConfig::default();
        let mut a = McastBackend::open(&cfg, Some(MacAddr(A))).unwrap();
        let mut b = McastBackend::open(&cfg, Some(MacAddr(B))).unwrap();
        let mut buf = vec![0u8; netdev::RECV_BUF_LEN];

        // Broadcast ARP-sized frame from A: B sees it unchanged.
        let f1 = test_frame([0xff; 6], A, &[1; 28]);
        a.send(&f1).unwrap();
        let n = recv_timeout(&mut b, &mut buf, Duration::from_secs(2)).expect("B got nothing");
        assert_eq!(
            &buf[..n],
            &f1[..],
            "frame changed in transit (42 bytes, no padding)"
        );

        // Unicast back from B. A's own copy of f1 was looped back before B even got f1, so
        // A's first frame being f2 shows that A dropped its own.
        let f2 = test_frame(A, B, &[2; 1486]);
        b.send(&f2).unwrap();
        let n = recv_timeout(&mut a, &mut buf, Duration::from_secs(2)).expect("A got nothing");
        assert_eq!(&buf[..n], &f2[..], "A received its own frame first");
    });
}

#[test]
fn without_own_mac_a_sender_sees_its_frames_as_uml_does() {
    in_fresh_netns(|| {
        lo_multicast();
        let cfg = McastConfig {
            port: 1103,
            ttl: 2,
            ..Default::default()
        };
        let mut a = McastBackend::open(&cfg, None).unwrap();
        let f = test_frame([0xff; 6], A, b"hello");
        a.send(&f).unwrap();
        let mut buf = vec![0u8; 64];
        let n = recv_timeout(&mut a, &mut buf, Duration::from_secs(2)).expect("no loopback");
        assert_eq!(&buf[..n], &f[..]);
        // A frame longer than the buffer is dropped, not truncated: the next frame that
        // arrives is the short one sent after it.
        a.send(&test_frame([0xff; 6], A, &[0; 100])).unwrap();
        let marker = test_frame([0xff; 6], A, b"after");
        a.send(&marker).unwrap();
        let n = recv_timeout(&mut a, &mut buf, Duration::from_secs(2)).expect("no marker");
        assert_eq!(&buf[..n], &marker[..], "the long frame was not dropped");
    });
}

#[test]
fn no_multicast_route_gives_uml_hint() {
    in_fresh_netns(|| {
        common::ip("link set lo up");
        let err = McastBackend::open(&McastConfig::default(), None).unwrap_err();
        assert!(matches!(err, McastError::Join { .. }), "{err:?}");
        assert!(err.to_string().contains("multicast-capable"), "{err}");
    });
}
