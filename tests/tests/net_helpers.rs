//! Network transports whose other end is a real program (issue 19, items 1 and 2): kuml guests
//! on `eth0=slirp` with passt, on `vec0:transport=fd` with libslirp-helper at the other end of
//! a socketpair, and on `eth0=vde` with Debian's `vde_switch` next to a QEMU guest.
//!
//! Kernel level (the PVM host lane boots them): the guest kernels configure eth0 themselves
//! (`ip=dhcp` from the helper, or `ip=`), and what reaches the guest is answered by the guest
//! kernel: the lease, a TCP SYN through a passt port forward (answered by a reset, as nothing
//! listens), ARP and ICMP on the switch. User space (where guest user space runs): TCP both ways
//! through passt and out through libslirp-helper, and `ping` both ways between the kuml guest
//! and the QEMU guest on the switch.
//!
//! passt sandboxes itself in a new user namespace (as `nobody`, when started as root): where
//! the kernel refuses one (a chroot, no unprivileged user namespaces) its test says SKIPPED.
//!
//! passt does not take ICMP into a guest (it only forwards the guest's own echo requests,
//! through ping sockets), so the host side reaches a passt guest through a TCP port forward
//! (`-t`), and libslirp-helper offers none without D-Bus: that guest is reached only through
//! the connections it opens.
//!
//! NETWORK SAFETY: every test creates its own named network namespace (tests/src/net.rs) and
//! deletes it at its end, also when it panics; kuml, the helpers, the switch and QEMU run in
//! it, and the only addresses used are the namespace's own and the ones the helpers give the
//! guests. passt is told a DNS server inside the namespace (`-D`), so even the lease points
//! nowhere else.

#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kuml_e2e::net::*;
use kuml_e2e::{
    artifact, kuml_bin, pass_fds, run_output, skip, user_space_part_or_skip, AgentReply, TestVm,
};

/// The namespace's address, which passt copies to the guest (from the interface with the
/// default route), and its gateway (which passt's DHCP names as the guest's router).
const PASST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PASST_GW: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Another address in the namespace, where the guest's outbound connections go.
const FAR_END: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 9);
/// The DNS server passt announces (`-D`): an address inside the namespace.
const PASST_DNS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 53);
/// Host port forwarded by passt (`-t 5003:5001`) to the guest's port 5001.
const FORWARDED: u16 = 5003;
const GUEST_PORT: u16 = 5001;
/// Where the guest's outbound connections go.
const OUT_PORT: u16 = 5002;

/// libslirp's defaults: the guest's first lease and the host's (and DHCP server's) address.
const SLIRP_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const SLIRP_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

const MIB: usize = 1 << 20;

/// Whether passt can run here. Started as root it becomes `nobody` and then sandboxes itself
/// in a new user namespace, which the kernel refuses to a process in a chroot and where
/// unprivileged user namespaces are off.
fn passt_can_sandbox() -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "unshare",
            "--user",
            "true",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for the guest kernel's DHCP and checks the lease: "IP-Config: Got DHCP answer from
/// `server`, my address is `addr`" and eth0 configured with `mac`, `addr` and `gw`.
fn dhcp_lease(vm: &mut TestVm, server: Ipv4Addr, addr: Ipv4Addr, gw: Ipv4Addr, mac: [u8; 6]) {
    // "IP-Config: Complete:" follows the whole "Got DHCP answer …" line; the device's line
    // comes after it, before the servers'.
    let out = vm
        .wait_until(BOOT, |o| {
            o.find("IP-Config: Complete")
                .is_some_and(|at| o[at..].contains("bootserver="))
        })
        .unwrap_or_else(|| panic!("no IP-Config from DHCP:\n{}", vm.output()));
    assert!(
        out.lines().any(|l| l.trim_end().ends_with(&format!(
            "IP-Config: Got DHCP answer from {server}, my address is {addr}"
        ))),
        "the lease from {server}:\n{out}"
    );
    let eth0 = format!(
        "device=eth0, hwaddr={}, ipaddr={addr}, mask=255.255.255.0, gw={gw}",
        mac_str(mac)
    );
    assert!(out.contains(&eth0), "{eth0:?} in the kernel log:\n{out}");
}

/// The TCP segments in a pcap file (microsecond or nanosecond records, either byte order) of
/// Ethernet frames: (source, source port, destination, destination port, flags).
fn tcp_segments(pcap: &[u8]) -> Vec<(Ipv4Addr, u16, Ipv4Addr, u16, u8)> {
    let Some(magic) = pcap.get(0..4) else {
        return Vec::new();
    };
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file: {:02x?}", &pcap[..pcap.len().min(24)]),
    };
    let u32_at = |o: usize| {
        let b: [u8; 4] = pcap[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut segs = Vec::new();
    let mut at = 24;
    // Record: ts_sec, ts_frac, incl_len, orig_len, then incl_len bytes (the last record may
    // still be being written: stop at anything incomplete).
    while at + 16 <= pcap.len() {
        let len = u32_at(at + 8) as usize;
        let Some(f) = pcap.get(at + 16..at + 16 + len) else {
            break;
        };
        at += 16 + len;
        if f.len() < 14 + 20 || f[12..14] != [8, 0] || f[14 + 9] != 6 {
            continue;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let Some(tcp) = f.get(14 + ihl..14 + ihl + 20) else {
            continue;
        };
        let ip = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
        segs.push((
            ip(26),
            u16::from_be_bytes([tcp[0], tcp[1]]),
            ip(30),
            u16::from_be_bytes([tcp[2], tcp[3]]),
            tcp[13],
        ));
    }
    segs
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;

/// In the calling thread's namespace: connects to `to`, sends `data` and closes the
/// connection (the guest's `nc -l` ends at the FIN, after the data).
fn send_to_guest(to: SocketAddrV4, data: &[u8]) {
    let mut s = TcpStream::connect(to).unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    s.write_all(data)
        .unwrap_or_else(|e| panic!("send {} bytes to {to}: {e}", data.len()));
}

/// Starts busybox `nc -l -p <port>` in the guest (output in /tmp/got) and waits until the
/// guest kernel lists the listening socket.
fn guest_listens(vm: &mut TestVm, port: u16) {
    // The listener's stdin stays open: busybox nc half-closes the connection when its stdin
    // ends (see user_space_ping_and_tcp).
    vm.sh_ok(
        &format!(
            "sleep 600 | nc -l -p {port} > /tmp/got 2> /tmp/nc.err & echo $! > /tmp/nc.pid; \
             n=0; until grep -qsE ':{port:04X} 0+:0000 0A' /proc/net/tcp /proc/net/tcp6; do \
             n=$((n + 1)); [ $n -lt 200 ] || exit 1; sleep 0.1; done"
        ),
        ANSWER,
    );
}

/// After [`guest_listens`] and a transfer: the listener has ended and /tmp/got holds the
/// 1 MiB pattern ([`pattern`]), compared in the guest against the same bytes made there.
fn guest_got_the_pattern(vm: &mut TestVm) {
    let out = vm.sh_ok(
        &format!(
            "n=0; while kill -0 $(cat /tmp/nc.pid) 2>/dev/null; do n=$((n + 1)); [ $n -lt 2500 ] || exit 1; sleep 0.2; done; \
             wc -c < /tmp/got; sha256sum < /tmp/got; yes {} | head -c {MIB} | sha256sum",
            pattern_line()
        ),
        // Bounds a hang only: the transfer runs under emulation in the nested lane.
        BOOT,
    );
    let words: Vec<&str> = out.split_whitespace().collect();
    let sums: Vec<&&str> = words.iter().filter(|w| w.len() == 64).collect();
    assert_eq!(
        words.first(),
        Some(&MIB.to_string().as_str()),
        "bytes the guest got:\n{out}"
    );
    assert!(
        sums.len() == 2 && sums[0] == sums[1],
        "the guest got the bytes unchanged:\n{out}"
    );
}

/// The guest connects to `to` (busybox `nc`) and sends the 1 MiB pattern; `listener`, bound
/// in the namespace, must receive it unchanged.
fn guest_sends(vm: &mut TestVm, listener: TcpListener, to: SocketAddrV4) {
    listener.set_nonblocking(false).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut conn, from) = listener.accept().expect("the guest connects");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).expect("read the transfer");
        (got, from)
    });
    vm.sh_ok(
        &format!(
            "yes {} | head -c {MIB} | nc {} {}",
            pattern_line(),
            to.ip(),
            to.port()
        ),
        BOOT,
    );
    let (got, from) = reader.join().expect("the reader thread");
    eprintln!("the guest's connection to {to} arrived from {from}");
    assert_eq!(got.len(), MIB, "bytes received from the guest");
    assert!(got == pattern(MIB), "the guest's bytes arrived unchanged");
}

// ------------------------------------------------------------------ slirp: passt

#[test]
fn slirp_passt_leases_an_address_and_forwards_a_port_to_the_guest() {
    if !passt_can_sandbox() {
        skip(
            "passt (started as root, it becomes nobody) sandboxes itself in a new user \
             namespace, which the kernel refuses here (a chroot, or no unprivileged user \
             namespaces)",
        );
        return;
    }
    let ns = Netns::new("passt");
    // passt copies the address and route of the interface with the default route.
    ns.veth("up0", "up1", PASST_ADDR);
    ns.ip(&format!("addr add {FAR_END}/32 dev up1"));
    ns.ip(&format!("route add default via {PASST_GW} dev up0"));
    // passt (as nobody) writes its capture into this directory.
    let dir = tempfile::Builder::new()
        .prefix("kuml-passt")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let pcap = dir.path().join("guest.pcap");
    // kuml reads `_` in a slirp argument as a space.
    assert!(
        !pcap.display().to_string().contains(['_', ',']),
        "TEST CANNOT RUN: the capture's path {} holds '_' or ','",
        pcap.display()
    );
    let mac = [0x02, 0x4b, 0x55, 0x4d, 0x4c, 0xa1];
    let args = vec![
        format!(
            "eth0=slirp,{},passt,-t,{FORWARDED}:{GUEST_PORT},-D,{PASST_DNS},--pcap,{}",
            mac_str(mac),
            pcap.display()
        ),
        "ip=dhcp".to_owned(),
    ];
    let mut vm = ns.run(move || start_kuml("passt", args, Vec::new()));
    dhcp_lease(&mut vm, PASST_GW, PASST_ADDR, PASST_GW, mac);
    // The lease names passt's -D server (the kernel prints it after the device's line).
    vm.wait_for(&format!("nameserver0={PASST_DNS}"), ANSWER);
    vm.wait_agent(BOOT);

    // The host side connects to the forwarded port; passt accepts and opens the connection
    // to the guest, whose kernel (nothing listens on its port 5001) answers with a reset.
    // passt's capture shows both.
    let segs = ns.run(move || {
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, FORWARDED);
        let deadline = Instant::now() + ANSWER;
        loop {
            let conn = TcpStream::connect(to);
            let round = Instant::now() + Duration::from_secs(1);
            while Instant::now() < round {
                let segs = tcp_segments(&std::fs::read(&pcap).unwrap_or_default());
                if segs
                    .iter()
                    .any(|&(s, sp, _, _, f)| s == PASST_ADDR && sp == GUEST_PORT && f & RST != 0)
                {
                    return segs;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(
                Instant::now() < deadline,
                "no reset from the guest's port {GUEST_PORT} in passt's capture (connect: {:?}); \
                 TCP segments: {:?}",
                conn.map(|_| ()),
                tcp_segments(&std::fs::read(&pcap).unwrap_or_default())
            );
        }
    });
    assert!(
        segs.iter()
            .any(|&(_, _, d, dp, f)| d == PASST_ADDR && dp == GUEST_PORT && f & SYN != 0),
        "passt forwarded the connection to the guest's port {GUEST_PORT}: {segs:?}"
    );
    eprintln!("the guest kernel answered the forwarded connection: {segs:?}");

    if user_space_part_or_skip("TCP both ways through passt (busybox nc in the guest)") {
        // Into the guest through the port forward.
        guest_listens(&mut vm, GUEST_PORT);
        ns.run(|| {
            send_to_guest(
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, FORWARDED),
                &pattern(MIB),
            )
        });
        guest_got_the_pattern(&mut vm);
        // Out of the guest: passt connects from the namespace to the address the guest named.
        let to = SocketAddrV4::new(FAR_END, OUT_PORT);
        let listener = ns.run(move || TcpListener::bind(to).expect("listen in the namespace"));
        guest_sends(&mut vm, listener, to);
    }
}

// ------------------------------------------------------------------ fd: libslirp-helper

#[test]
fn vector_fd_from_a_socketpair_gets_dhcp_from_libslirp_helper() {
    let ns = Netns::new("slirpfd");
    let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
    // libslirp-helper gets its end as descriptor 3 (`--fd 3`, a datagram socket: one frame
    // per datagram), in the namespace: its "host" 10.0.2.2 is the namespace's loopback.
    let theirs = OwnedFd::from(theirs).into_raw_fd();
    let _helper = ns.run(move || {
        let mut cmd = Command::new("libslirp-helper");
        cmd.args(["--fd", "3", "--disable-ipv6"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        pass_fds(&mut cmd, &[(3, theirs)]);
        let child = cmd.spawn().expect(
            "TEST CANNOT RUN: cannot start libslirp-helper (apt-get install libslirp-helper)",
        );
        // SAFETY: the descriptor was made above and handed over; the helper has its copy.
        unsafe { libc::close(theirs) };
        Proc(child)
    });
    let mac = [0x02, 0x4b, 0x55, 0x4d, 0x4c, 0xf3];
    let args = vec![
        format!("vec0:transport=fd,fd=3,mac={}", mac_str(mac)),
        "ip=dhcp".to_owned(),
    ];
    let fds = vec![(3, OwnedFd::from(ours).into_raw_fd())];
    let mut vm = ns.run(move || start_kuml("slirp-fd", args, fds));
    dhcp_lease(&mut vm, SLIRP_HOST, SLIRP_GUEST, SLIRP_HOST, mac);
    vm.wait_agent(BOOT);
    let out = vm.output();
    assert!(
        out.contains("vector fd 3"),
        "kuml names the transport (UML's line):\n{out}"
    );

    if user_space_part_or_skip("TCP out through libslirp-helper (busybox nc in the guest)") {
        // libslirp maps its host address to the loopback of the helper's namespace.
        let listener = ns.run(|| {
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, OUT_PORT))
                .expect("listen in the namespace")
        });
        guest_sends(&mut vm, listener, SocketAddrV4::new(SLIRP_HOST, OUT_PORT));
    }
}

// ------------------------------------------------------------------ vde

#[test]
fn vde_kuml_guest_and_qemu_guest_reach_each_other_on_vde_switch() {
    let ns = Netns::new("vde");
    ns.multicast();
    ns.run(|| {
        let dir = tempfile::tempdir().unwrap();
        let sw = dir.path().join("sw");
        let logs = kuml_e2e::log_dir();
        let pid = std::process::id();
        let mut switch = VdeSwitch::start(&sw, &logs.join(format!("net-vde-switch-{pid}.log")));
        // The test peer reaches the switch through QEMU's own VDE plug (libvdeplug), bridged
        // by QEMU's hub to the multicast group it sits on.
        let _hub = qemu_hub(
            &logs.join(format!("net-vde-hub-{pid}.log")),
            &[format!("vde,sock={}", sw.display())],
        );
        let mut peer = McastPeer::join();
        // QEMU's guest has the kuml guest as its gateway; the kuml guest routes.
        let q_mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x17];
        let mut qemu = Qemu::start_with_user_space(
            &logs.join(format!("net-vde-qemu-{pid}.log")),
            &format!("vde,sock={}", sw.display()),
            &mac_str(q_mac),
            QEMU_GUEST,
            GUEST_A,
        );
        let a_mac = [0x02, 0x4b, 0x55, 0x4d, 0x4c, 0xd0];
        let eth = format!("vde,{},{}", sw.display(), mac_str(a_mac));
        let mut vm = start_guest("net-vde", &eth, GUEST_A, HOST, &[FORWARD]);
        ready(&mut vm, GUEST_A);
        qemu.wait_for(&format!("ipaddr={QEMU_GUEST},"), BOOT);
        // Its agent answers on its serial line (the user-space part drives it).
        qemu.wait_for("KAGENT ready", BOOT);
        assert_eq!(
            qemu.agent("echo vde", ANSWER),
            AgentReply::Ok("vde".to_owned()),
            "QEMU guest's agent"
        );

        // kuml's port is on the switch with UML's description.
        let ports = switch.console("port/print");
        assert!(
            ports.contains("UML vde_transport"),
            "kuml's port on the switch:\n{ports}"
        );
        assert_eq!(
            resolve(&mut peer, GUEST_A),
            a_mac,
            "the kuml guest answers ARP with its MAC"
        );
        assert_eq!(
            resolve(&mut peer, QEMU_GUEST),
            q_mac,
            "QEMU's guest answers ARP"
        );
        let (dst, _) = ping(&mut peer, PEER, a_mac, GUEST_A, 1);
        assert_eq!(dst, PEER_MAC);
        let (dst, _) = ping(&mut peer, PEER, q_mac, QEMU_GUEST, 2);
        assert_eq!(dst, PEER_MAC);
        // Through the kuml guest to QEMU's and back: kuml -> QEMU (ARP, the request) and
        // QEMU -> kuml (ARP, the reply to its gateway) on the switch.
        routed_ping(
            &mut peer,
            a_mac,
            QEMU_GUEST,
            3,
            "vde_switch: peer -> kuml guest -> QEMU guest and back",
        );
        if user_space_part_or_skip("ping both ways between the guests' user space") {
            let out = vm.sh_ok(&format!("ping -c 3 -W 20 {QEMU_GUEST}"), ANSWER);
            eprintln!("ping from the kuml guest:\n{out}");
            let out = qemu.sh_ok(&format!("ping -c 3 -W 20 {GUEST_A}"), ANSWER);
            eprintln!("ping from QEMU's guest:\n{out}");
        }
        assert!(
            !vm.output().contains("the backend failed"),
            "the vde port failed:\n{}",
            vm.output()
        );
    });
}

// ------------------------------------------------------------------ errors

/// Runs kuml (no guest gets to boot) with the test kernel and `args`, and descriptors `fds`;
/// returns its exit code and stderr.
fn kuml_fails(args: &[String], fds: &[(i32, std::os::fd::RawFd)]) -> (i32, String) {
    let mut cmd = Command::new(kuml_bin());
    cmd.arg(format!("kernel={}", artifact("vmlinux").display()))
        .arg(format!(
            "initrd={}",
            artifact("initramfs.cpio.gz").display()
        ))
        .args(["mem=64M", "nohostfs"])
        .args(args)
        .stdin(Stdio::null());
    // SAFETY: close is async-signal-safe; descriptor 1000 is never one of `fds`' targets.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::close(1000);
            Ok(())
        });
    }
    pass_fds(&mut cmd, fds);
    let (code, _, err) = run_output(&mut cmd);
    assert!(!err.contains("panicked"), "kuml panicked:\n{err}");
    (code, err)
}

#[test]
fn a_missing_switch_helper_or_descriptor_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    // A switch directory whose control socket nobody listens on any more (a dead switch).
    let stale = dir.path().join("stale");
    std::fs::create_dir(&stale).unwrap();
    drop(std::os::unix::net::UnixListener::bind(stale.join("ctl")).unwrap());
    let cases = [
        (
            format!("eth0=vde,{}", missing.display()),
            format!(
                "kuml: eth0: vde backend: cannot connect to the VDE switch control socket (tried {}/ctl",
                missing.display()
            ),
        ),
        (
            format!("eth0=vde,{}", stale.display()),
            format!(
                "kuml: eth0: vde backend: cannot connect to the VDE switch control socket (tried {}/ctl",
                stale.display()
            ),
        ),
        (
            "eth0=slirp,,/nonexistent/passt".to_owned(),
            "kuml: eth0: slirp backend: cannot start the slirp helper '/nonexistent/passt'".to_owned(),
        ),
        (
            // kuml_fails closes 1000 in kuml's process, whatever this one has open.
            "vec0:transport=fd,fd=1000".to_owned(),
            "kuml: vec0: vector backend: fd 1000: not a descriptor kuml was started with"
                .to_owned(),
        ),
    ];
    for (arg, line) in &cases {
        let (code, err) = kuml_fails(std::slice::from_ref(arg), &[]);
        assert_eq!(code, 1, "{arg}: {err}");
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(last.contains(line.as_str()), "{arg}: {line:?} in\n{err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("kuml:")).count(),
            1,
            "{arg}: one error line:\n{err}"
        );
    }
    // A stream socket keeps no frame boundaries: the fd transport refuses it.
    let (a, _b) = UnixStream::pair().unwrap();
    let (code, err) = kuml_fails(
        &["vec0:transport=fd,fd=3".to_owned()],
        &[(3, OwnedFd::from(a).into_raw_fd())],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("kuml: vec0: ") && err.contains("fd 3") && err.contains("stream socket"),
        "{err}"
    );
}

/// The pcap reader the passt test relies on, on a capture written here.
#[test]
fn tcp_segments_reads_a_pcap_capture() {
    let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    pcap.extend_from_slice(&[0; 8]);
    pcap.extend_from_slice(&65535u32.to_le_bytes());
    pcap.extend_from_slice(&1u32.to_le_bytes());
    let frame = |flags: u8| {
        let mut f = eth_header([2; 6], [4; 6], 0x0800);
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&PASST_ADDR.octets());
        f.extend_from_slice(&PASST_GW.octets());
        f.extend_from_slice(&GUEST_PORT.to_be_bytes());
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&[0x50, flags, 0, 0, 0, 0, 0, 0]);
        f
    };
    for f in [
        frame(RST | 0x10),
        arp_request(PEER_MAC, PEER, GUEST_A),
        frame(SYN),
    ] {
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&f);
    }
    // A record still being written is left out.
    pcap.extend_from_slice(&[0; 8]);
    pcap.extend_from_slice(&100u32.to_le_bytes());
    let segs = tcp_segments(&pcap);
    assert_eq!(
        segs,
        vec![
            (PASST_ADDR, GUEST_PORT, PASST_GW, 40000, RST | 0x10),
            (PASST_ADDR, GUEST_PORT, PASST_GW, 40000, SYN)
        ]
    );
    assert!(tcp_segments(&[]).is_empty());
}
