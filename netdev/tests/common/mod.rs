//! Shared helpers of the netdev integration tests: a private network namespace per test,
//! frame builders and a poll-with-timeout receive.
//!
//! NETWORK SAFETY: every test body runs on a thread that has called
//! `unshare(CLONE_NEWNET)`; sockets, taps and child processes (`ip`, `ping`, `uml_switch`)
//! created from that thread live in that namespace, which disappears with them.
#![allow(dead_code)]

use std::io;
use std::net::Ipv4Addr;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use netdev::Backend;

/// Runs `f` on a new thread inside a fresh network namespace. Panics loudly (the test
/// fails, it never passes silently) when the namespace cannot be created.
pub fn in_fresh_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let t = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread (the test
        // thread we just created) into a new network namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        if r != 0 {
            panic!(
                "TEST CANNOT RUN: unshare(CLONE_NEWNET) failed ({}); these tests need root",
                io::Error::last_os_error()
            );
        }
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev")
            .expect("TEST CANNOT RUN: cannot read /proc/thread-self/net/dev");
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(
            ifaces,
            ["lo"],
            "not in a fresh network namespace: refusing to run"
        );
        f()
    });
    t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs `ip <args>` (in the caller thread's namespace) and panics on failure.
pub fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("TEST CANNOT RUN: cannot run `ip`");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of `ip <args>`.
pub fn ip_output(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("TEST CANNOT RUN: cannot run `ip`");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes multicast work on the namespace's loopback.
pub fn lo_multicast() {
    ip("link set lo up multicast on");
    ip("route add 224.0.0.0/4 dev lo");
}

/// Waits up to `timeout` for one frame.
pub fn recv_timeout(b: &mut dyn Backend, buf: &mut [u8], timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        match b.recv(buf) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("recv: {e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: b.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: polls one live pollfd for at most `ms` milliseconds.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

/// An Ethernet frame with an arbitrary payload (ethertype 0x88b5, local experimental).
pub fn test_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f
}

/// A gratuitous ARP request announcing `ip` at `mac`.
pub fn arp_announce(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip);
    f
}

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Plays a minimal IPv4 host (`mac`, `ip`) behind backend `b`, facing the host kernel at
/// `host_ip` (an address of the tap in the caller's namespace):
///
/// 1. the host sends a UDP datagram to `ip:7777`; the kernel ARPs for `ip` through the tap,
///    the test answers through the backend, and the datagram arrives through the backend;
/// 2. the test sends a UDP datagram from `ip:7777` through the backend to the host socket,
///    which must receive it.
pub fn udp_exchange(b: &mut dyn Backend, mac: [u8; 6], ip: Ipv4Addr, host_ip: Ipv4Addr) {
    let host = UdpSocket::bind((host_ip, 5555)).expect("bind host socket");
    host.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    host.send_to(b"from-host", (ip, 7777)).expect("host send");

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; netdev::RECV_BUF_LEN];
    let mut host_mac = None;
    let mut got_udp = false;
    while !got_udp {
        assert!(
            Instant::now() < deadline,
            "no ARP/UDP from the host (arp seen: {host_mac:?})"
        );
        let Some(n) = recv_timeout(b, &mut buf, Duration::from_millis(100)) else {
            continue;
        };
        let f = &buf[..n];
        if n >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] && f[38..42] == ip.octets() {
            let mut r = Vec::with_capacity(42);
            r.extend_from_slice(&f[6..12]);
            r.extend_from_slice(&mac);
            r.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
            r.extend_from_slice(&mac);
            r.extend_from_slice(&ip.octets());
            r.extend_from_slice(&f[22..32]);
            b.send(&r).expect("send ARP reply");
            host_mac = Some(<[u8; 6]>::try_from(&f[6..12]).unwrap());
        } else if n >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[30..34] == ip.octets() {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let udp = 14 + ihl;
            assert_eq!(&f[udp + 2..udp + 4], &7777u16.to_be_bytes());
            assert_eq!(&f[udp + 8..], b"from-host");
            got_udp = true;
        }
    }
    let host_mac = host_mac.expect("UDP arrived without ARP");

    let payload = b"from-guest";
    let mut f = Vec::new();
    f.extend_from_slice(&host_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    iph.extend_from_slice(&ip.octets());
    iph.extend_from_slice(&host_ip.octets());
    let c = csum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&7777u16.to_be_bytes());
    f.extend_from_slice(&5555u16.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
    f.extend_from_slice(payload);
    b.send(&f).expect("send UDP frame");
    let mut rb = [0u8; 64];
    let (n, from) = host
        .recv_from(&mut rb)
        .expect("host did not receive the guest's datagram");
    assert_eq!(&rb[..n], payload);
    assert_eq!(from, std::net::SocketAddr::from((ip, 7777)));
}
