//! UML's vector transports (`vec<N>:transport=…`, issue 19 items 3 and 5) with a guest, against
//! the other implementations of each one, and hot-plugged through the real `uml_mconsole`.
//!
//! * [`raw_and_tap_transports_reach_the_namespaces_own_stack`]: `transport=raw` on one end of
//!   a veth pair, `transport=tap` on a tap the namespace made and on one kuml makes
//!   (`tapXXXXXX`, as UML names it); the namespace's own IP stack reaches the guest's kernel
//!   through each (ARP and ICMP over the raw socket, neighbour discovery and ICMPv6 over the
//!   taps).
//! * [`l2tpv3_over_ip_and_udp_with_qemus_l2tpv3`]: `transport=l2tpv3` over IP and over UDP,
//!   each against QEMU's `-netdev l2tpv3` with the same sessions and cookies; QEMU (no guest)
//!   joins its end to a tap on which the namespace's stack talks to the guest.
//! * [`gre_and_l2tpv3_with_linuxs_gretap_and_ip_l2tp`]: `transport=gre` against Linux's own
//!   `gretap`, `transport=l2tpv3` (IP and UDP) against `ip l2tp`. The PVM hosts' kernels have no
//!   GRE and no L2TP (no CONFIG_NET_IPGRE, no CONFIG_L2TP): there the test says SKIPPED with
//!   the reason; it runs where the kernel has them (the nested lane's L1, Debian's kernel).
//! * [`new_transports_come_and_go_through_uml_mconsole`]: `config vec1:transport=…` (tap
//!   named and new, raw, gre, l2tpv3, fd) and `config eth1=slirp,…` (passt), `eth1=vde,…` (a
//!   real `vde_switch`) on a running guest, frames through each, `remove`; malformed options
//!   get an error reply and the guest carries on.
//!
//! A NIC other than the one that `ip=` configures has no IPv4 address without guest user
//! space; the in-kernel test agent brings it up through sysfs and the guest kernel speaks IPv6
//! on it (its link-local address; see `kuml_e2e::net`, "IPv6 link-local"). Where guest user
//! space runs (the nested lane) each test also pings and moves 1 MiB over TCP from user space.
//!
//! NETWORK SAFETY: every test creates its own named network namespace and deletes it on drop
//! (also when it panics); kuml, QEMU, passt and vde_switch run inside it; the tunnels' ends are
//! loopback addresses of that namespace; nothing else is addressed.

#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

use std::net::Ipv4Addr;
use std::os::fd::IntoRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kuml_e2e::mconsole::Mc;
use kuml_e2e::net::*;
use kuml_e2e::{skip, user_space_part_or_skip, TestVm};

/// The PCI ids the guest kernel logs when it enumerates a (modern) virtio-net device.
const VIRTIO_NET_PCI: &str = "[1af4:1041]";

/// The guest's NIC n: MAC 02:4b:55:4d:56:<n>.
const fn mac(n: u8) -> [u8; 6] {
    [0x02, 0x4b, 0x55, 0x4d, 0x56, n]
}

/// The loopback addresses the tunnels run between: kuml's end, and the other implementation's.
const KUML_END: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const FAR_END: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const QEMU_END: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// The namespace's interfaces whose name looks like a tap kuml made (UML's `tapXXXXXX`).
fn new_taps(ns: &Netns) -> Vec<String> {
    ns.ip_out("-o link show")
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?.split('@').next()?;
            let made = name.len() == 9
                && name.starts_with("tap")
                && name[3..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
            made.then(|| name.to_owned())
        })
        .collect()
}

/// Whether the namespace's neighbour table has `addr` at `mac` on `dev`.
fn assert_neighbour(ns: &Netns, v6: bool, dev: &str, addr: &str, mac: [u8; 6]) {
    let table = ns.ip_out(&format!(
        "{} neigh show dev {dev}",
        if v6 { "-6" } else { "-4" }
    ));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{addr} ")) && l.contains(&mac_str(mac))),
        "the namespace's kernel has no neighbour {addr} at {} on {dev}:\n{table}",
        mac_str(mac)
    );
}

/// From the namespace's stack on `dev`: ICMPv6 to the guest NIC with `mac` (after neighbour
/// discovery), then its neighbour entry.
fn ping6_from_namespace(ns: &Netns, dev: &str, mac: [u8; 6]) {
    let target = link_local(mac);
    let d = dev.to_owned();
    let rtt = ns.run(move || host_ping6(&d, target));
    eprintln!("{target} answered ICMPv6 from the namespace on {dev} after {rtt:?}");
    assert_neighbour(ns, true, dev, &target.to_string(), mac);
}

/// Configures `addr`/24 on the guest's `dev` from user space and pings `host` through it.
fn user_space_ping_on(vm: &mut TestVm, dev: &str, addr: Ipv4Addr, host: Ipv4Addr) {
    let out = vm.sh_ok(
        &format!(
            "ip addr add {addr}/24 dev {dev} && ip link set {dev} up && ping -c 3 -W 20 {host}"
        ),
        ANSWER,
    );
    eprintln!("{out}");
}

// ------------------------------------------------------------------ raw and tap

#[test]
fn raw_and_tap_transports_reach_the_namespaces_own_stack() {
    let ns = Netns::new("vraw");
    // The namespace's stack on vr-host; the guest's AF_PACKET socket on the other end.
    ns.veth("vr-host", "vr-guest", HOST);
    // A tap the namespace made for the guest.
    ns.tap("vt-named", Ipv4Addr::new(10, 0, 3, 1));
    assert!(new_taps(&ns).is_empty());
    let args = vec![
        format!("vec0:transport=raw,ifname=vr-guest,mac={}", mac_str(mac(0))),
        format!("vec1:transport=tap,ifname=vt-named,mac={}", mac_str(mac(1))),
        format!("vec2:transport=tap,mac={}", mac_str(mac(2))),
        ip_arg(GUEST_A, HOST),
    ];
    let mut vm = ns.run(move || {
        let mut vm = start_kuml("vec-raw-tap", args, Vec::new());
        ready(&mut vm, GUEST_A);
        vm
    });
    // transport=tap without ifname=: kuml made one tap named as UML names it.
    let made = new_taps(&ns);
    assert_eq!(made.len(), 1, "one new tapXXXXXX: {made:?}");
    let made = made[0].clone();
    ns.ip(&format!("addr add 10.0.4.1/24 dev {made}"));
    ns.ip(&format!("link set {made} up"));

    // raw: the namespace's kernel ARPs for the guest across the veth and pings it.
    let rtt = ns.run(|| host_ping(GUEST_A));
    eprintln!("the guest answered the namespace's ping over the raw socket after {rtt:?}");
    assert_neighbour(&ns, false, "vr-host", &GUEST_A.to_string(), mac(0));

    // The taps: eth1 and eth2, brought up by the guest kernel without user space.
    vm.mount_sysfs(ANSWER);
    for (dev, n, tap) in [("eth1", 1, "vt-named"), ("eth2", 2, made.as_str())] {
        assert_eq!(guest_link_up(&mut vm, dev), mac(n), "{dev} is vec{n}");
        ping6_from_namespace(&ns, tap, mac(n));
    }
    assert!(
        !vm.output().contains("dropped a received packet"),
        "kuml dropped frames"
    );

    if user_space_part_or_skip(
        "the user-space part (ping and TCP through raw, ping through both taps)",
    ) {
        user_space_ping_and_tcp_to(&ns, &mut vm, HOST, 5003);
        user_space_ping_on(
            &mut vm,
            "eth1",
            Ipv4Addr::new(10, 0, 3, 15),
            Ipv4Addr::new(10, 0, 3, 1),
        );
        user_space_ping_on(
            &mut vm,
            "eth2",
            Ipv4Addr::new(10, 0, 4, 15),
            Ipv4Addr::new(10, 0, 4, 1),
        );
    }
    drop(vm);
    // The tap kuml made lives as long as kuml.
    let deadline = Instant::now() + ANSWER;
    while !new_taps(&ns).is_empty() {
        assert!(Instant::now() < deadline, "{made} outlived kuml");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------ l2tpv3 with QEMU

/// QEMU's end of an L2TPv3 tunnel to kuml (`-net l2tpv3` options, QEMU's names) on a hub with
/// the tap `tap`, up in the namespace with `addr`/24 if given; returns once the tap exists.
fn qemu_l2tpv3_to_tap(
    ns: &Netns,
    l2tpv3: String,
    tap: &'static str,
    addr: Option<Ipv4Addr>,
) -> Proc {
    let log = kuml_e2e::log_dir().join(format!("vec-qemu-{tap}-{}.log", std::process::id()));
    let hub = ns.run(move || {
        let hub = qemu_hub_of(
            &log,
            &[l2tpv3, format!("tap,ifname={tap},script=no,downscript=no")],
        );
        wait_for_interface(tap, ANSWER);
        hub
    });
    if let Some(addr) = addr {
        ns.ip(&format!("addr add {addr}/24 dev {tap}"));
    }
    ns.ip(&format!("link set {tap} up"));
    hub
}

#[test]
fn l2tpv3_over_ip_and_udp_with_qemus_l2tpv3() {
    let ns = Netns::new("vl2tpq");
    // vec0 over IP with 32-bit cookies; vec1 over UDP with 64-bit cookies and the counter.
    let _ip = qemu_l2tpv3_to_tap(
        &ns,
        format!(
            "l2tpv3,src={QEMU_END},dst={KUML_END},rxsession=0x110,txsession=0x111,\
             rxcookie=0x0a0b0c0d,txcookie=0x01020304,counter=off"
        ),
        "qt-ip",
        Some(HOST),
    );
    let _udp = qemu_l2tpv3_to_tap(
        &ns,
        format!(
            "l2tpv3,src={QEMU_END},dst={KUML_END},udp=on,srcport=1702,dstport=1701,\
             rxsession=0x120,txsession=0x121,cookie64=on,rxcookie=0x1112131415161718,\
             txcookie=0x0102030405060708,counter=on"
        ),
        "qt-udp",
        Some(Ipv4Addr::new(10, 0, 3, 1)),
    );
    let args = vec![
        format!(
            "vec0:transport=l2tpv3,src={KUML_END},dst={QEMU_END},rx_session=0x111,tx_session=0x110,\
             rx_cookie=0x01020304,tx_cookie=0x0a0b0c0d,mac={}",
            mac_str(mac(0))
        ),
        format!(
            "vec1:transport=l2tpv3,udp=1,src={KUML_END},dst={QEMU_END},srcport=1701,dstport=1702,\
             rx_session=0x121,tx_session=0x120,cookie64=1,rx_cookie=0x0102030405060708,\
             tx_cookie=0x1112131415161718,counter=1,mac={}",
            mac_str(mac(1))
        ),
        ip_arg(GUEST_A, HOST),
    ];
    let mut vm = ns.run(move || {
        let mut vm = start_kuml("vec-l2tpv3-qemu", args, Vec::new());
        ready(&mut vm, GUEST_A);
        vm
    });
    // Over IP: the namespace's kernel ARPs and pings through QEMU's tunnel end.
    let rtt = ns.run(|| host_ping(GUEST_A));
    eprintln!("the guest answered through QEMU's l2tpv3 over IP after {rtt:?}");
    assert_neighbour(&ns, false, "qt-ip", &GUEST_A.to_string(), mac(0));
    // Over UDP: eth1, up without user space, answers ICMPv6.
    vm.mount_sysfs(ANSWER);
    assert_eq!(guest_link_up(&mut vm, "eth1"), mac(1), "eth1 is vec1");
    ping6_from_namespace(&ns, "qt-udp", mac(1));
    assert!(
        !vm.output().contains("dropped a received packet"),
        "kuml dropped tunnel packets (session, cookie or counter mismatch?)"
    );
    if user_space_part_or_skip("the user-space part (ping and TCP over both tunnels)") {
        user_space_ping_and_tcp_to(&ns, &mut vm, HOST, 5004);
        user_space_ping_on(
            &mut vm,
            "eth1",
            Ipv4Addr::new(10, 0, 3, 15),
            Ipv4Addr::new(10, 0, 3, 1),
        );
    }
}

// ------------------------------------------------------------------ Linux's gretap and ip l2tp

/// Why this host's kernel cannot make a `gretap` or an L2TP session in a namespace (`None`:
/// it can). Probes in a namespace of its own, after asking for the modules.
fn linux_tunnels_missing() -> Vec<String> {
    for m in ["ip_gre", "l2tp_eth", "l2tp_ip"] {
        let _ = Command::new("modprobe")
            .arg(m)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let probe = Netns::new("vprobe");
    let mut missing = Vec::new();
    let try_ip = |args: &str| {
        Command::new("ip")
            .args(["-n", &probe.name])
            .args(args.split_whitespace())
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stderr).trim().replace('\n', " "),
                )
            })
            .unwrap_or((false, "cannot run ip".to_owned()))
    };
    let (ok, err) = try_ip("link add probe0 type gretap local 127.0.0.2 remote 127.0.0.1");
    if !ok {
        missing.push(format!(
            "host kernel lacks gretap (CONFIG_NET_IPGRE): `ip link add type gretap`: {err}"
        ));
    }
    let (ok, err) = try_ip(
        "l2tp add tunnel tunnel_id 9 peer_tunnel_id 9 encap ip local 127.0.0.2 remote 127.0.0.1",
    );
    if !ok {
        missing.push(format!(
            "host kernel lacks L2TP over IP (CONFIG_L2TP_IP): `ip l2tp add tunnel`: {err}"
        ));
    }
    missing
}

#[test]
fn gre_and_l2tpv3_with_linuxs_gretap_and_ip_l2tp() {
    let missing = linux_tunnels_missing();
    if !missing.is_empty() {
        skip(&missing.join("; "));
        return;
    }
    let ns = Netns::new("vlinux");
    // gretap: Linux's end on FAR_END, kuml's on KUML_END, key 7 both ways.
    ns.ip(&format!(
        "link add lgre type gretap local {FAR_END} remote {KUML_END} key 7"
    ));
    ns.ip(&format!("addr add {HOST}/24 dev lgre"));
    ns.ip("link set lgre up");
    // ip l2tp over IP (l2tp_ip) and over UDP, with cookies; no L2-specific sublayer. Linux's
    // session_id is the one it receives (kuml's tx_session), peer_session_id the one it sends
    // (kuml's rx_session); `cookie` is what it sends, `peer_cookie` what it expects.
    ns.ip(&format!(
        "l2tp add tunnel tunnel_id 1 peer_tunnel_id 1 encap ip local {FAR_END} remote {KUML_END}"
    ));
    ns.ip(
        "l2tp add session name ll2tp tunnel_id 1 session_id 0x211 peer_session_id 0x210 \
         cookie 0a0b0c0d peer_cookie 01020304 l2spec_type none",
    );
    ns.ip(&format!(
        "l2tp add tunnel tunnel_id 2 peer_tunnel_id 2 encap udp local {FAR_END} remote {KUML_END} \
         udp_sport 1802 udp_dport 1801"
    ));
    ns.ip(
        "l2tp add session name ll2tpu tunnel_id 2 session_id 0x221 peer_session_id 0x220 \
         l2spec_type none",
    );
    ns.ip("addr add 10.0.3.1/24 dev ll2tp");
    ns.ip("addr add 10.0.4.1/24 dev ll2tpu");
    ns.ip("link set ll2tp up");
    ns.ip("link set ll2tpu up");
    let args = vec![
        format!(
            "vec0:transport=gre,src={KUML_END},dst={FAR_END},rx_key=7,tx_key=7,mac={}",
            mac_str(mac(0))
        ),
        format!(
            "vec1:transport=l2tpv3,src={KUML_END},dst={FAR_END},rx_session=0x210,tx_session=0x211,\
             rx_cookie=0x0a0b0c0d,tx_cookie=0x01020304,mac={}",
            mac_str(mac(1))
        ),
        format!(
            "vec2:transport=l2tpv3,udp=1,src={KUML_END},dst={FAR_END},srcport=1801,dstport=1802,\
             rx_session=0x220,tx_session=0x221,mac={}",
            mac_str(mac(2))
        ),
        ip_arg(GUEST_A, HOST),
    ];
    let mut vm = ns.run(move || {
        let mut vm = start_kuml("vec-linux-tunnels", args, Vec::new());
        ready(&mut vm, GUEST_A);
        vm
    });
    let rtt = ns.run(|| host_ping(GUEST_A));
    eprintln!("the guest answered through Linux's gretap after {rtt:?}");
    assert_neighbour(&ns, false, "lgre", &GUEST_A.to_string(), mac(0));
    vm.mount_sysfs(ANSWER);
    for (dev, n, tunnel) in [("eth1", 1, "ll2tp"), ("eth2", 2, "ll2tpu")] {
        assert_eq!(guest_link_up(&mut vm, dev), mac(n), "{dev} is vec{n}");
        ping6_from_namespace(&ns, tunnel, mac(n));
    }
    if user_space_part_or_skip("the user-space part (ping and TCP over gretap, ping over ip l2tp)")
    {
        // The namespace's stack leaves TCP checksums to the device, and a tunnel device
        // carries them unfinished to a socket on the same host: computed before, here.
        kuml_e2e::run_ok(Command::new("ip").args([
            "netns", "exec", &ns.name, "ethtool", "-K", "lgre", "tx", "off",
        ]));
        user_space_ping_and_tcp_to(&ns, &mut vm, HOST, 5005);
        user_space_ping_on(
            &mut vm,
            "eth1",
            Ipv4Addr::new(10, 0, 3, 15),
            Ipv4Addr::new(10, 0, 3, 1),
        );
        user_space_ping_on(
            &mut vm,
            "eth2",
            Ipv4Addr::new(10, 0, 4, 15),
            Ipv4Addr::new(10, 0, 4, 1),
        );
    }
}

// ------------------------------------------------------------------ hot-plug

/// A guest for the hot-plug test and the things it plugs into.
struct Plugged<'a> {
    ns: &'a Netns,
    vm: TestVm,
    sock: std::path::PathBuf,
}

impl Plugged<'_> {
    /// The real `uml_mconsole` in the namespace (its reply socket must be where kuml is).
    fn mconsole(&self, cmd: &str) -> (String, i32) {
        let (sock, cmd) = (self.sock.clone(), cmd.to_owned());
        self.ns.run(move || Mc::Uml.run(&sock, &cmd))
    }

    fn expect(&self, cmd: &str, line: &str, code: i32) {
        let (sock, cmd, line) = (self.sock.clone(), cmd.to_owned(), line.to_owned());
        self.ns
            .run(move || Mc::Uml.expect(&sock, &cmd, &line, code));
    }

    /// The guest's network interfaces other than `lo`.
    fn nics(&mut self) -> Vec<String> {
        let mut names = self.vm.ls("/sys/class/net", ANSWER);
        names.retain(|n| n != "lo");
        names
    }

    /// The guest's NICs once there are `n` (the driver registers the interface a moment
    /// after the PCI device appears); panics with what there is after a bounded wait.
    fn nics_when(&mut self, n: usize, what: &str) -> Vec<String> {
        let deadline = Instant::now() + ANSWER;
        loop {
            let nics = self.nics();
            if nics.len() == n {
                return nics;
            }
            assert!(
                Instant::now() < deadline,
                "{n} NICs in the guest {what}: {nics:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `config <device>=<value>` (the whole `what`): the reply, the guest kernel enumerating
    /// the new virtio-net device, its interface with `mac`, up. Returns the interface.
    fn plug(&mut self, what: &str, mac: [u8; 6]) -> String {
        let before = self.vm.output().matches(VIRTIO_NET_PCI).count();
        assert!(self.nics().is_empty(), "no NIC before config {what}");
        self.expect(&format!("config {what}"), "OK ", 0);
        self.vm
            .wait_until(ANSWER, |o| o.matches(VIRTIO_NET_PCI).count() > before)
            .unwrap_or_else(|| panic!("the guest kernel did not enumerate {what}"));
        let dev = self.nics_when(1, &format!("after config {what}"))[0].clone();
        assert_eq!(
            guest_link_up(&mut self.vm, &dev),
            mac,
            "{dev} has the mac of {what}"
        );
        eprintln!("config {what}: the guest's {dev}, up");
        dev
    }

    /// `remove <device>`: the reply once the guest has let the device go; its interface gone.
    fn unplug(&mut self, device: &str) {
        self.expect(&format!("remove {device}"), "OK ", 0);
        let nics = self.nics();
        assert!(
            nics.is_empty(),
            "the guest still has {nics:?} after remove {device}"
        );
        self.expect(&format!("remove {device}"), "ERR Device doesn't exist", 237);
    }
}

/// The processes whose parent is `pid` and whose command name starts with `comm` (Debian's
/// `passt` runs `passt.avx2` where the CPU has AVX2).
fn children(pid: u32, comm: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if stat[open + 1..close].starts_with(comm) && ppid == Some(&pid.to_string()) {
            found.push(child);
        }
    }
    found
}

/// Waits (a bounded while) until `gone` holds; panics naming `what` otherwise.
fn wait_gone(what: &str, gone: impl Fn() -> bool) {
    let deadline = Instant::now() + ANSWER;
    while !gone() {
        assert!(Instant::now() < deadline, "{what} is still there");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn new_transports_come_and_go_through_uml_mconsole() {
    let ns = Netns::new("vhot");
    let dir = tempfile::tempdir().unwrap();
    // What the NICs plug into, all inside the namespace.
    ns.ip("tuntap add hp-tap mode tap");
    ns.ip("link set hp-tap up");
    ns.veth("hp-vh", "hp-vg", Ipv4Addr::new(10, 0, 5, 1));
    // passt copies the address and default routes of the namespace's interface that has them.
    ns.veth("up0", "up1", Ipv4Addr::new(10, 77, 0, 2));
    ns.ip("route add default via 10.77.0.1");
    ns.ip("-6 addr add fd00:77::2/64 dev up0 nodad");
    ns.ip("-6 route add default via fd00:77::1 dev up0");
    let switch_dir = dir.path().join("switch");
    let sw = switch_dir.clone();
    let _switch = ns.run(move || {
        let sw_proc = Proc(
            Command::new("vde_switch")
                .arg("-s")
                .arg(&sw)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("TEST CANNOT RUN: vde_switch (resources/setup-host.sh: vde2)"),
        );
        let deadline = Instant::now() + ANSWER;
        while !sw.join("ctl").exists() {
            assert!(Instant::now() < deadline, "vde_switch made no ctl socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        sw_proc
    });
    let _qemu = qemu_l2tpv3_to_tap(
        &ns,
        format!("l2tpv3,src={QEMU_END},dst={KUML_END},rxsession=0x32,txsession=0x31,counter=off"),
        "hp-qtap",
        None,
    );
    // The fd transport's descriptor: kuml gets one end of a datagram socket pair as fd 3 at
    // start and uses it only when told to.
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let umid = "vec-hot";
    let args = vec![
        format!("umid={umid}"),
        format!("uml_dir={}", dir.path().display()),
    ];
    let fds = vec![(3, theirs.into_raw_fd())];
    let vm = ns.run(move || {
        let mut vm = start_kuml("vec-hotplug", args, fds);
        vm.wait_agent(BOOT);
        vm
    });
    let mut g = Plugged {
        ns: &ns,
        vm,
        sock: dir.path().join(umid).join("mconsole"),
    };
    g.vm.mount_sysfs(ANSWER);

    // tap, named: the namespace's stack on hp-tap.
    g.plug(
        &format!("vec1:transport=tap,ifname=hp-tap,mac={}", mac_str(mac(1))),
        mac(1),
    );
    ping6_from_namespace(&ns, "hp-tap", mac(1));
    g.unplug("vec1");

    // tap, new: kuml makes tapXXXXXX, and it goes with the NIC.
    assert!(new_taps(&ns).is_empty());
    g.plug(
        &format!("vec1:transport=tap,mac={}", mac_str(mac(2))),
        mac(2),
    );
    let made = new_taps(&ns);
    assert_eq!(made.len(), 1, "one new tapXXXXXX: {made:?}");
    ns.ip(&format!("link set {} up", made[0]));
    ping6_from_namespace(&ns, &made[0], mac(2));
    g.unplug("vec1");
    wait_gone(&made[0], || new_taps(&ns).is_empty());

    // raw, on a veth end.
    g.plug(
        &format!("vec1:transport=raw,ifname=hp-vg,mac={}", mac_str(mac(3))),
        mac(3),
    );
    ping6_from_namespace(&ns, "hp-vh", mac(3));
    g.unplug("vec1");

    // gre, to the test's own GRE station on the other loopback address.
    g.plug(
        &format!(
            "vec1:transport=gre,src={KUML_END},dst={FAR_END},rx_key=9,tx_key=9,mac={}",
            mac_str(mac(4))
        ),
        mac(4),
    );
    let mut peer = ns.run(|| GrePeer::open(Some(FAR_END), KUML_END, 9));
    assert_eq!(
        resolve6(&mut peer, link_local(mac(4))),
        mac(4),
        "neighbour discovery over gre"
    );
    let rtt = ping6(&mut peer, mac(4), link_local(mac(4)), 1);
    eprintln!("gre: ICMPv6 echo answered after {rtt:?}");
    drop(peer);
    g.unplug("vec1");

    // l2tpv3 over IP, to QEMU's end and its tap.
    g.plug(
        &format!(
            "vec1:transport=l2tpv3,src={KUML_END},dst={QEMU_END},rx_session=0x31,tx_session=0x32,mac={}",
            mac_str(mac(5))
        ),
        mac(5),
    );
    ping6_from_namespace(&ns, "hp-qtap", mac(5));
    g.unplug("vec1");

    // fd: the socket pair's other end is the test's station.
    g.plug(
        &format!("vec1:transport=fd,fd=3,mac={}", mac_str(mac(6))),
        mac(6),
    );
    let mut peer = DgramPeer(ours);
    assert_eq!(
        resolve6(&mut peer, link_local(mac(6))),
        mac(6),
        "neighbour discovery over fd 3"
    );
    ping6(&mut peer, mac(6), link_local(mac(6)), 2);
    g.unplug("vec1");
    // kuml closes its end with the NIC (once its event loop has let go of it), and fd 3 is
    // not there to take again.
    let deadline = Instant::now() + ANSWER;
    let err = loop {
        match peer.0.send(&[0u8; 60]) {
            Err(e) => break e,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "kuml kept fd 3 open after remove vec1"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("after remove vec1, a frame to fd 3: {err}");
    let (out, rc) = g.mconsole(&format!(
        "config vec1:transport=fd,fd=3,mac={}",
        mac_str(mac(6))
    ));
    assert!(
        out.starts_with("ERR ") && rc != 0,
        "fd 3 a second time: {out:?} rc={rc}"
    );

    // slirp: passt, started for the NIC, answers what the guest kernel sends once the link is
    // up (router solicitation: passt advertises the namespace's IPv6 prefix). The guest's
    // counters show frames both ways.
    let dev = g.plug(&format!("eth1=slirp,{}", mac_str(mac(7))), mac(7));
    let kuml = g.vm.pid();
    assert_eq!(children(kuml, "passt").len(), 1, "one passt for eth1");
    let (tx, rx) = frames_both_ways(&mut g.vm, &dev);
    eprintln!("slirp: the guest's {dev} sent {tx} frames to passt and got {rx} from it");
    g.unplug("eth1");
    wait_gone("passt after remove eth1", || {
        children(kuml, "passt").is_empty()
    });

    // vde: a port on the real vde_switch; the test's station is another port.
    g.plug(
        &format!("eth1=vde,{},{}", switch_dir.display(), mac_str(mac(8))),
        mac(8),
    );
    let cfg = netdev::VdeConfig {
        switch: Some(switch_dir.clone()),
        description: "kuml e2e station".into(),
        ..netdev::VdeConfig::default()
    };
    let mut peer = ns.run(move || {
        let mut port = netdev::VdeBackend::connect(&cfg).expect("a port on the switch");
        let deadline = Instant::now() + ANSWER;
        while netdev::Backend::on_control(&mut port).expect("the switch keeps the port")
            != netdev::BackendState::Ready
        {
            assert!(Instant::now() < deadline, "vde_switch never answered");
            std::thread::sleep(Duration::from_millis(10));
        }
        BackendPeer(Box::new(port))
    });
    assert_eq!(
        resolve6(&mut peer, link_local(mac(8))),
        mac(8),
        "neighbour discovery over vde"
    );
    ping6(&mut peer, mac(8), link_local(mac(8)), 3);
    drop(peer);
    g.unplug("eth1");

    // Malformed options and transports that cannot open: an error reply, no NIC, the guest
    // and kuml carry on.
    // Each reply names what is wrong; uml_mconsole exits 1, as for UML's config errors.
    let no_switch = dir.path().join("no-switch");
    for (bad, names) in [
        (
            "vec1:transport=nonesuch".to_owned(),
            "unknown vector transport 'nonesuch'",
        ),
        ("vec1:transport=raw".to_owned(), "ifname"),
        ("vec1:transport=raw,ifname=nosuch0".to_owned(), "nosuch0"),
        ("vec1:transport=gre".to_owned(), "dst"),
        (format!("vec1:transport=l2tpv3,dst={FAR_END}"), "rx_session"),
        ("vec1:transport=tap,mtu=abc".to_owned(), "mtu"),
        ("vec1:transport=fd,fd=77".to_owned(), "fd 77"),
        (
            "vec1:transport=tap,ifname=x=y".to_owned(),
            "vector_setup - Couldn't parse",
        ),
        (format!("eth1=vde,{}", no_switch.display()), "VDE switch"),
        (
            "eth1=slirp,,/nonexistent/helper".to_owned(),
            "/nonexistent/helper",
        ),
    ] {
        let (out, rc) = g.mconsole(&format!("config {bad}"));
        assert!(
            out.starts_with("ERR ") && out.contains(names) && rc == 1,
            "config {bad}: an error reply naming {names:?}, got {out:?} rc={rc}"
        );
        assert!(g.nics().is_empty(), "config {bad} left a NIC");
    }
    let (out, rc) = g.mconsole("version");
    assert_eq!(rc, 0, "kuml still answers: {out}");
    assert!(!g.vm.output().contains("panicked"), "kuml panicked");

    if user_space_part_or_skip("the user-space part (a hot-plugged tap carries ping and TCP)") {
        ns.ip("addr add 10.0.6.1/24 dev hp-tap");
        g.plug(
            &format!("vec1:transport=tap,ifname=hp-tap,mac={}", mac_str(mac(9))),
            mac(9),
        );
        let dev = g.nics()[0].clone();
        user_space_ping_on(
            &mut g.vm,
            &dev,
            Ipv4Addr::new(10, 0, 6, 15),
            Ipv4Addr::new(10, 0, 6, 1),
        );
        user_space_ping_and_tcp_to(&ns, &mut g.vm, Ipv4Addr::new(10, 0, 6, 1), 5006);
        g.unplug("vec1");
    }
}

/// A counter of the guest's interface `dev` (`/sys/class/net/<dev>/statistics/<name>`).
fn guest_counter(vm: &mut TestVm, dev: &str, name: &str) -> u64 {
    let raw = vm.agent_ok(
        &format!("read /sys/class/net/{dev}/statistics/{name} 0 24"),
        ANSWER,
    );
    let text = String::from_utf8_lossy(&kuml_e2e::unhex(&raw)).into_owned();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{dev}'s {name}: {text:?}"))
}

/// Waits until the guest's `dev` has sent and received frames; returns (sent, received).
fn frames_both_ways(vm: &mut TestVm, dev: &str) -> (u64, u64) {
    let deadline = Instant::now() + ANSWER;
    loop {
        let tx = guest_counter(vm, dev, "tx_packets");
        let rx = guest_counter(vm, dev, "rx_packets");
        if tx > 0 && rx > 0 {
            return (tx, rx);
        }
        assert!(
            Instant::now() < deadline,
            "{dev}: {tx} frames sent, {rx} received"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
