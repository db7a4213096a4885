//! `vec<N>:transport=raw` against the host's own IP stack on a veth pair, no guest: the host
//! leaves TCP and UDP checksums to the veth ("the device") to finish, and a packet socket on
//! the other end sees them unfinished unless it reads the `virtio_net_hdr` that says so. kuml's
//! raw backend finishes them; a guest behind it would drop every TCP segment otherwise.
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{in_fresh_netns, ip, recv_timeout};

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

#[test]
fn raw_hands_on_frames_with_the_checksums_the_host_left_to_the_device() {
    in_fresh_netns(|| {
        ip("link set lo up");
        ip("link add rh type veth peer name rg");
        ip("addr add 10.0.9.1/24 dev rh");
        ip("link set rh up");
        ip("link set rg up");
        // The far station's MAC is known: the host's stack sends at once, without ARP.
        ip("neigh add 10.0.9.2 lladdr 02:00:00:00:00:02 dev rh");
        let (_, spec) = netdev::parse_vec_arg("vec0:transport=raw,ifname=rg").unwrap();
        let netdev::Transport::Vector(v) = &spec.transport else {
            panic!("not a vector transport: {spec:?}")
        };
        let mut raw = netdev::open_vector(v).expect("a raw socket on rg (needs root)");
        let udp = UdpSocket::bind("10.0.9.1:0").unwrap();
        let payload = b"a datagram whose checksum the veth was to finish";
        let mut buf = vec![0u8; netdev::RECV_BUF_LEN];
        let deadline = Instant::now() + Duration::from_secs(10);
        let frame = loop {
            udp.send_to(payload, "10.0.9.2:9").unwrap();
            let n = recv_timeout(&mut *raw, &mut buf, Duration::from_millis(200));
            // Skip what else the host sends (IPv6 neighbour discovery, MLD).
            if let Some(n) = n.filter(|&n| n > 42 && buf[12..14] == [8, 0] && buf[23] == 17) {
                break buf[..n].to_vec();
            }
            assert!(
                Instant::now() < deadline,
                "the host's datagram never came through rg"
            );
        };
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let udp_part = &frame[14 + ihl..];
        assert_eq!(&udp_part[8..], payload, "the datagram, whole");
        // The receiver's check: pseudo-header + datagram sum to all ones.
        let mut pseudo = frame[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp_part.len() as u16).to_be_bytes());
        let check = u16::from_be_bytes([udp_part[6], udp_part[7]]);
        assert_eq!(
            fold(sum16(&pseudo) + sum16(udp_part)),
            0xffff,
            "the UDP checksum {check:#06x} is the finished one"
        );
        // And the guest's frames go out: the host's stack takes one on rh.
        let sock = UdpSocket::bind("10.0.9.1:5999").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = frame.clone();
        // From 10.0.9.2:9 back to the sender's port, with the checksum left out (0: none).
        reply[0..6].copy_from_slice(&frame[6..12]);
        reply[6..12].copy_from_slice(&frame[0..6]);
        let (src, dst) = (frame[26..30].to_vec(), frame[30..34].to_vec());
        reply[26..30].copy_from_slice(&dst);
        reply[30..34].copy_from_slice(&src);
        let u = 14 + ihl;
        reply[u..u + 2].copy_from_slice(&9u16.to_be_bytes());
        reply[u + 2..u + 4].copy_from_slice(&5999u16.to_be_bytes());
        reply[u + 6..u + 8].copy_from_slice(&[0, 0]);
        netdev::Backend::send(&mut *raw, &reply).unwrap();
        netdev::Backend::flush(&mut *raw).unwrap();
        let mut got = [0u8; 256];
        let (n, from) = sock
            .recv_from(&mut got)
            .expect("the host takes the raw socket's frame");
        assert_eq!(&got[..n], payload);
        assert_eq!(from.to_string(), "10.0.9.2:9");
    });
}
