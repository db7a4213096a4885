//! A lab across hosts (issue 19, item 4): two "hosts" — two network namespaces joined by a veth
//! pair, 172.16.0.1 and 172.16.0.2 — each running a kuml guest, and the guests on one Ethernet
//! segment through kuml's vector tunnels (`gre`, `l2tpv3`) and through `mcast` with a TTL above
//! 0. The veth is the only path between the namespaces, so every frame a guest gets from the
//! other one crossed it inside a tunnel or a multicast datagram.
//!
//! * [`gre_guests_on_two_hosts_reach_each_other`], kernel level (every lane; the PVM host lane
//!   boots it): the guests' kernels configure eth0 from `ip=`; a test peer on host B speaks GRE
//!   itself through a raw IP socket ([`GrePeer`], independent of kuml's implementation), joins
//!   the tunnel as a third station and sends ARP and ICMP through guest A, which routes them to
//!   guest B on the other host and back.
//! * [`guests_on_two_hosts_share_gre_l2tpv3_and_mcast_segments`], user space (the nested lane):
//!   each guest has three NICs, one per segment; busybox `ip` configures them, `ping` goes both
//!   ways on each segment and 1 MiB crosses each over TCP.
//!
//! Linux's own `gretap`/`ip l2tp` at the far end need CONFIG_NET_IPGRE/CONFIG_L2TP, which the
//! PVM hosts' kernels lack; kuml-to-kuml needs only raw IP sockets (and UDP for `udp=1`).
//!
//! NETWORK SAFETY: both namespaces are created and deleted by the test (also when it panics);
//! kuml and the peers run inside them; the only addresses used are those of the veth pair and of
//! the guests.

#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

use std::net::Ipv4Addr;

use kuml_e2e::net::*;
use kuml_e2e::user_space_or_skip;

/// Host A's and host B's addresses on the veth pair between them.
const HOST_A: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
const HOST_B: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
/// The lab's multicast group and port (TTL 2: the datagrams leave the host).
const LAB_GROUP: Ipv4Addr = Ipv4Addr::new(239, 192, 168, 9);
const LAB_PORT: u16 = 1103;
const GRE_KEY: u32 = 7;

/// Two "hosts": namespaces `a` and `b` joined by the veth pair `lab-a` (172.16.0.1/24, in `a`)
/// – `lab-b` (172.16.0.2/24, in `b`). Multicast goes out through the veth (the route for
/// 224.0.0.0/4), so a group spans both hosts as it spans two machines on one LAN.
struct Hosts {
    a: Netns,
    b: Netns,
}

impl Hosts {
    fn new(tag: &str) -> Hosts {
        let a = Netns::new(&format!("{tag}A"));
        let b = Netns::new(&format!("{tag}B"));
        a.ip(&format!(
            "link add lab-a type veth peer name lab-b netns {}",
            b.name
        ));
        for (ns, dev, addr) in [(&a, "lab-a", HOST_A), (&b, "lab-b", HOST_B)] {
            ns.ip(&format!("addr add {addr}/24 dev {dev}"));
            ns.ip(&format!("link set {dev} up"));
            ns.ip(&format!("route add 224.0.0.0/4 dev {dev}"));
        }
        Hosts { a, b }
    }

    /// Bytes received on each end of the veth (`a`'s, `b`'s).
    fn veth_rx_bytes(&self) -> (u64, u64) {
        let rx = |ns: &Netns, dev: &str| -> u64 {
            let out = ns.ip_out(&format!("-s -o link show dev {dev}"));
            // `-o` puts the statistics on the same line: "RX: bytes packets ... \    <bytes> ..."
            let after = out
                .split("RX:")
                .nth(1)
                .unwrap_or_else(|| panic!("no RX statistics for {dev}: {out}"));
            after
                .split('\\')
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("cannot read the RX bytes of {dev}: {out}"))
        };
        (rx(&self.a, "lab-a"), rx(&self.b, "lab-b"))
    }
}

/// `vec<n>:transport=gre` from `src` to `dst`, with the lab's key and `mac`.
fn gre(n: u32, src: Ipv4Addr, dst: Ipv4Addr, mac: [u8; 6]) -> String {
    format!(
        "vec{n}:transport=gre,src={src},dst={dst},rx_key={GRE_KEY},tx_key={GRE_KEY},mac={}",
        mac_str(mac)
    )
}

// ------------------------------------------------------------------ kernel level

#[test]
fn gre_guests_on_two_hosts_reach_each_other() {
    let hosts = Hosts::new("gre");
    let a_mac = [0x02, 0x4b, 0x55, 0x4d, 0x4c, 0xa0];
    let b_mac = [0x02, 0x4b, 0x55, 0x4d, 0x4c, 0xb0];
    // A routes (its gateway HOST is the peer); B has A as its gateway.
    let a_args = vec![
        gre(0, HOST_A, HOST_B, a_mac),
        ip_arg(GUEST_A, HOST),
        FORWARD.to_owned(),
    ];
    let b_args = vec![gre(0, HOST_B, HOST_A, b_mac), ip_arg(GUEST_B, GUEST_A)];
    let mut a = hosts
        .a
        .run(move || start_kuml("lab-gre-a", a_args, Vec::new()));
    let mut b = hosts
        .b
        .run(move || start_kuml("lab-gre-b", b_args, Vec::new()));
    ready(&mut a, GUEST_A);
    ready(&mut b, GUEST_B);
    let mut peer = hosts.b.run(|| GrePeer::open(None, HOST_A, GRE_KEY));
    let before = hosts.veth_rx_bytes();

    // From host B through the tunnel to guest A on host A, and back.
    assert_eq!(
        resolve(&mut peer, GUEST_A),
        a_mac,
        "guest A answers ARP with its mac="
    );
    let (dst, rtt) = ping(&mut peer, PEER, a_mac, GUEST_A, 1);
    assert_eq!(dst, PEER_MAC, "the echo reply goes back to the peer");
    eprintln!("guest A answered ICMP across the hosts, rtt {rtt:?}");
    // Guest A forwards to guest B: A ARPs for B, B answers, the request goes A -> B, B's
    // reply B -> A, and A hands it to the peer. Host A -> B -> A -> B on the veth.
    routed_ping(
        &mut peer,
        a_mac,
        GUEST_B,
        2,
        "peer -> guest A (host A) -> guest B (host B) and back",
    );
    let after = hosts.veth_rx_bytes();
    eprintln!(
        "veth RX: host A {} -> {} bytes, host B {} -> {} bytes",
        before.0, after.0, before.1, after.1
    );
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "traffic crossed the veth both ways"
    );
    for vm in [&a, &b] {
        assert!(
            !vm.output().contains("the backend failed"),
            "a tunnel failed:\n{}",
            vm.output()
        );
    }
}

// ------------------------------------------------------------------ user space

#[test]
fn guests_on_two_hosts_share_gre_l2tpv3_and_mcast_segments() {
    if !user_space_or_skip() {
        return;
    }
    let hosts = Hosts::new("lab");
    // NIC n of guest g: MAC 02:4b:55:4d:<g>:<n>, address 10.<n+1>.0.<g> (one subnet per segment).
    let mac = |g: u8, n: u8| [0x02, 0x4b, 0x55, 0x4d, g, n];
    let args = |g: u8, src: Ipv4Addr, dst: Ipv4Addr, rx: u32, tx: u32| -> Vec<String> {
        vec![
            format!(
                "eth0=mcast,{},{LAB_GROUP},{LAB_PORT},2",
                mac_str(mac(g, 0))
            ),
            gre(1, src, dst, mac(g, 1)),
            format!(
                "vec2:transport=l2tpv3,src={src},dst={dst},rx_session={rx:#x},tx_session={tx:#x},mac={}",
                mac_str(mac(g, 2))
            ),
        ]
    };
    let a_args = args(1, HOST_A, HOST_B, 0x200, 0x100);
    let b_args = args(2, HOST_B, HOST_A, 0x100, 0x200);
    let mut a = hosts.a.run(move || start_kuml("lab-a", a_args, Vec::new()));
    let mut b = hosts.b.run(move || start_kuml("lab-b", b_args, Vec::new()));
    let addr = |g: u8, n: u8| Ipv4Addr::new(10, n + 1, 0, g);
    for (g, vm) in [(1, &mut a), (2, &mut b)] {
        vm.wait_agent(BOOT);
        let mut script = String::new();
        for n in 0..3 {
            script += &format!(
                "ip addr add {}/24 dev eth{n} && ip link set eth{n} up && ",
                addr(g, n)
            );
        }
        script += "ip -o addr show";
        let out = vm.sh_ok(&script, ANSWER);
        eprintln!("guest {g}:\n{out}");
    }
    for (n, what) in [(0, "mcast TTL 2"), (1, "gre"), (2, "l2tpv3")] {
        eprintln!("== {what}: host A -> host B");
        let before = hosts.veth_rx_bytes();
        user_space_ping_and_tcp(&mut a, &mut b, addr(2, n));
        let after = hosts.veth_rx_bytes();
        assert!(
            after.1 >= before.1 + (1 << 20),
            "{what}: the 1 MiB crossed the veth to host B ({} -> {} bytes)",
            before.1,
            after.1
        );
        eprintln!("== {what}: host B -> host A");
        let out = b.sh_ok(&format!("ping -c 3 -W 20 {}", addr(1, n)), ANSWER);
        eprintln!("{out}");
    }
    // The guests go (kuml killed by the fixture) before the namespaces (declared first).
}
