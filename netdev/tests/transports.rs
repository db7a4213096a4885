//! The new transports against the real programs on the other side, without a guest: passt
//! and libslirp-helper answer DHCP through `SlirpBackend`; two ports on a real `vde_switch`
//! and QEMU's `-netdev vde` exchange frames; QEMU's `-netdev l2tpv3` (UDP and IP) and
//! `-netdev stream` carry frames to and from kuml's backends byte for byte (QEMU, with no
//! guest, joins each netdev to a plain UDP socket through its hub). Each test runs in a
//! fresh network namespace.
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::{in_fresh_netns, ip, recv_timeout, test_frame};
use netdev::{
    Backend, BackendState, SlirpBackend, SlirpConfig, SlirpProtocol, VdeBackend, VdeConfig,
};

const GUEST: [u8; 6] = [0x02, 0x6b, 0x75, 0x6d, 0x6c, 0x01];
const OTHER: [u8; 6] = [0x02, 0x6b, 0x75, 0x6d, 0x6c, 0x02];

/// A process killed (by its own pid) on drop; its stdin stays open while it lives.
struct Proc(Child, Option<ChildStdin>);

impl Drop for Proc {
    fn drop(&mut self) {
        self.1.take();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Proc {
    let mut c = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("TEST CANNOT RUN: cannot start {what}: {e} (resources/setup-host.sh)")
        });
    let stdin = c.stdin.take();
    Proc(c, stdin)
}

fn ones_complement(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A DHCPDISCOVER from `mac`, broadcast.
fn dhcp_discover(mac: [u8; 6]) -> Vec<u8> {
    let mut bootp = vec![1, 1, 6, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0x80, 0];
    bootp.extend_from_slice(&[0; 16]);
    bootp.extend_from_slice(&mac);
    bootp.extend_from_slice(&[0; 10 + 64 + 128]);
    bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]);
    let mut udp = Vec::new();
    udp.extend_from_slice(&68u16.to_be_bytes());
    udp.extend_from_slice(&67u16.to_be_bytes());
    udp.extend_from_slice(&((8 + bootp.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&bootp);
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    iph.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]);
    let c = ones_complement(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[8, 0]);
    f.extend_from_slice(&iph);
    f.extend_from_slice(&udp);
    f
}

/// The address a DHCP reply to `mac` (transaction 0x12345678) offers.
fn dhcp_offer(f: &[u8], mac: [u8; 6]) -> Option<Ipv4Addr> {
    if f.get(12..14)? != [8, 0] || *f.get(23)? != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = f.get(14 + ihl..)?;
    if udp.get(0..4)? != [0, 67, 0, 68] {
        return None;
    }
    let b = udp.get(8..)?;
    if b[0] != 2 || b.get(4..8)? != [0x12, 0x34, 0x56, 0x78] || b.get(28..34)? != mac {
        return None;
    }
    Some(Ipv4Addr::new(b[16], b[17], b[18], b[19]))
}

/// Sends `f` every half second until `pick` likes a received frame.
fn ask<T>(
    b: &mut dyn Backend,
    f: &[u8],
    what: &str,
    mut pick: impl FnMut(&[u8]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; netdev::RECV_BUF_LEN];
    loop {
        assert!(Instant::now() < deadline, "{what}: no answer");
        b.send(f).unwrap();
        b.flush().unwrap();
        let round = Instant::now() + Duration::from_millis(500);
        while let Some(n) =
            recv_timeout(b, &mut buf, round.saturating_duration_since(Instant::now()))
        {
            if let Some(t) = pick(&buf[..n]) {
                return t;
            }
        }
    }
}

#[test]
fn passt_answers_dhcp_over_its_stream() {
    in_fresh_netns(|| {
        // passt copies the address and route of the host's interface with the default route.
        ip("link set lo up");
        ip("link add h0 type veth peer name h1");
        ip("addr add 192.168.77.5/24 dev h0");
        ip("link set h0 up");
        ip("link set h1 up");
        ip("route add default via 192.168.77.1");
        let cfg = SlirpConfig::default();
        assert_eq!(cfg.protocol, SlirpProtocol::Stream);
        let mut b =
            SlirpBackend::start(&cfg).expect("TEST CANNOT RUN: passt (apt-get install passt)");
        let got = ask(&mut b, &dhcp_discover(GUEST), "passt DHCP", |f| {
            dhcp_offer(f, GUEST)
        });
        assert_eq!(
            got,
            Ipv4Addr::new(192, 168, 77, 5),
            "passt offers the host's address"
        );
    });
}

#[test]
fn libslirp_helper_answers_dhcp_over_its_datagrams() {
    in_fresh_netns(|| {
        ip("link set lo up");
        let cfg = SlirpConfig {
            helper: "libslirp-helper".into(),
            args: vec!["--disable-ipv6".into()],
            protocol: SlirpProtocol::Datagram,
        };
        let mut b = SlirpBackend::start(&cfg).expect("TEST CANNOT RUN: libslirp-helper");
        let got = ask(&mut b, &dhcp_discover(GUEST), "libslirp-helper DHCP", |f| {
            dhcp_offer(f, GUEST)
        });
        assert_eq!(got, Ipv4Addr::new(10, 0, 2, 15), "libslirp's first lease");
    });
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ready(b: &mut VdeBackend) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.on_control().expect("the switch keeps the port") != BackendState::Ready {
        assert!(Instant::now() < deadline, "vde_switch never answered");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_ports_and_qemu_on_a_real_vde_switch() {
    in_fresh_netns(|| {
        ip("link set lo up");
        let dir = tempfile::tempdir().unwrap();
        let sw = dir.path().join("sw");
        let _switch = spawn(
            Command::new("vde_switch").arg("-s").arg(&sw),
            "vde_switch (apt-get install vde2)",
        );
        wait_for(&sw.join("ctl"));
        let cfg = VdeConfig {
            switch: Some(sw.clone()),
            description: "kuml test".into(),
            ..VdeConfig::default()
        };
        let mut a = VdeBackend::connect(&cfg).unwrap();
        let mut b = VdeBackend::connect(&VdeConfig {
            port: 7,
            ..cfg.clone()
        })
        .unwrap();
        ready(&mut a);
        ready(&mut b);
        assert!(
            a.data_path().starts_with(&sw),
            "the data socket lives in the switch directory"
        );
        let f = test_frame([0xff; 6], GUEST, b"through vde_switch");
        a.send(&f).unwrap();
        let mut buf = vec![0u8; netdev::RECV_BUF_LEN];
        let n =
            recv_timeout(&mut b, &mut buf, Duration::from_secs(5)).expect("b gets a's broadcast");
        assert_eq!(&buf[..n], &f[..]);
        // QEMU's -netdev vde on the same switch, bridged to a UDP socket through its hub.
        let udp = UdpSocket::bind("127.0.0.1:6100").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let _qemu = spawn(
            Command::new("qemu-system-x86_64")
                .args(["-machine", "none", "-nodefaults", "-display", "none"])
                .arg("-net")
                .arg(format!("vde,sock={}", sw.display()))
                .args(["-net", "socket,udp=127.0.0.1:6100,localaddr=127.0.0.1:6101"]),
            "qemu-system-x86_64",
        );
        let to_qemu = test_frame([0xff; 6], OTHER, b"kuml to qemu over vde");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut rb = [0u8; 2048];
        'seen: loop {
            assert!(
                Instant::now() < deadline,
                "QEMU never passed our vde frame on"
            );
            b.send(&to_qemu).unwrap();
            while let Ok(n) = udp.recv(&mut rb) {
                if rb[..n] == to_qemu[..] {
                    break 'seen;
                }
            }
        }
        let from_qemu = test_frame(OTHER, [0x52, 0x54, 0, 0, 0, 9], b"qemu to kuml over vde");
        udp.send_to(&from_qemu, "127.0.0.1:6101").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = recv_timeout(&mut b, &mut buf, left).expect("QEMU's frame reaches the port");
            if buf[..n] == from_qemu[..] {
                break;
            }
        }
        let data = b.data_path().to_path_buf();
        drop(b);
        assert!(!data.exists(), "the data socket is removed with the port");
    });
}

/// kuml's backend and QEMU's netdev `netdev` (joined to UDP 127.0.0.1:`port` by QEMU's hub)
/// carry frames both ways unchanged.
fn through_qemu(kuml: &mut dyn Backend, netdev: &[&str], port: u16) {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "none", "-nodefaults", "-display", "none"]);
    for n in netdev {
        cmd.arg(n.split_once(' ').map_or(*n, |(o, _)| o));
        if let Some((_, v)) = n.split_once(' ') {
            cmd.arg(v);
        }
    }
    cmd.arg("-net").arg(format!(
        "socket,udp=127.0.0.1:{port},localaddr=127.0.0.1:{}",
        port + 1
    ));
    let _qemu = spawn(&mut cmd, "qemu-system-x86_64");
    exchange_via_udp(kuml, port);
}

/// Frames both ways between `kuml` and QEMU's hub, whose UDP socket sends to
/// 127.0.0.1:`port` and listens on `port + 1`: resent until QEMU is up.
fn exchange_via_udp(kuml: &mut dyn Backend, port: u16) {
    let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let out = test_frame([0xff; 6], GUEST, &[0x5a; 200]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut rb = [0u8; 2048];
    'seen: loop {
        assert!(Instant::now() < deadline, "QEMU never passed our frame on");
        kuml.send(&out).unwrap();
        kuml.flush().unwrap();
        while let Ok(n) = udp.recv(&mut rb) {
            if rb[..n] == out[..] {
                break 'seen;
            }
        }
    }
    let back = test_frame(GUEST, OTHER, &[0xa5; 1400]);
    let mut buf = vec![0u8; netdev::RECV_BUF_LEN];
    let deadline = Instant::now() + Duration::from_secs(5);
    udp.send_to(&back, ("127.0.0.1", port + 1)).unwrap();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = recv_timeout(kuml, &mut buf, left).expect("QEMU's frame reaches kuml");
        if buf[..n] == back[..] {
            break;
        }
    }
}

fn vector(spec: &str) -> Box<dyn Backend> {
    let (_, s) = netdev::parse_vec_arg(spec).unwrap();
    let netdev::Transport::Vector(v) = &s.transport else {
        panic!()
    };
    netdev::open_vector(v).unwrap()
}

#[test]
fn l2tpv3_over_udp_with_qemu() {
    in_fresh_netns(|| {
        ip("link set lo up");
        let mut k = vector(
            "vec0:transport=l2tpv3,udp=1,src=127.0.0.1,dst=127.0.0.1,srcport=1701,dstport=1702,\
             rx_session=0x11,tx_session=0x22,rx_cookie=0xdeadbeef,tx_cookie=0xfeedf00d,counter=1",
        );
        through_qemu(
            &mut *k,
            &[
                "-net l2tpv3,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport=1702,dstport=1701,\
               rxsession=0x22,txsession=0x11,rxcookie=0xfeedf00d,txcookie=0xdeadbeef,counter=on",
            ],
            6200,
        );
    });
}

#[test]
fn l2tpv3_over_ip_with_qemu_64_bit_cookies() {
    in_fresh_netns(|| {
        ip("link set lo up");
        let mut k = vector(
            "vec0:transport=l2tpv3,src=127.0.0.1,dst=127.0.0.1,rx_session=7,tx_session=8,\
             cookie64=1,rx_cookie=0x0102030405060708,tx_cookie=0x1112131415161718",
        );
        through_qemu(
            &mut *k,
            &[
                "-net l2tpv3,src=127.0.0.1,dst=127.0.0.1,rxsession=8,txsession=7,cookie64=on,\
               rxcookie=0x1112131415161718,txcookie=0x0102030405060708,counter=off",
            ],
            6300,
        );
    });
}

#[test]
fn stream_framing_is_qemus() {
    in_fresh_netns(|| {
        ip("link set lo up");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream");
        let port = 6400;
        let _qemu = spawn(
            Command::new("qemu-system-x86_64")
                .args(["-machine", "none", "-nodefaults", "-display", "none"])
                .arg("-netdev")
                .arg(format!(
                    "stream,id=s0,server=on,addr.type=unix,addr.path={}",
                    path.display()
                ))
                .args(["-netdev", "hubport,id=h0,hubid=0,netdev=s0"])
                .arg("-net")
                .arg(format!(
                    "socket,udp=127.0.0.1:{port},localaddr=127.0.0.1:{}",
                    port + 1
                )),
            "qemu-system-x86_64",
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        let sock = loop {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&path) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU never listened on {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut k = netdev::StreamBackend::new(sock, "qemu").unwrap();
        exchange_via_udp(&mut k, port);
    });
}
