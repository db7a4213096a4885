//! kuml as an ordinary user (issue 17, item 6: "UML users never need root"). The tests run as
//! root and start kuml as the user [`kuml_e2e::user::NAME`] they make (member of group `kvm`,
//! a new home directory per test as `$HOME`; see `tests/src/user.rs`), through `setpriv`:
//!
//! * the guest boots with a COW file kuml creates in the user's home over a backing file the
//!   user cannot write, the default `~/.uml`, consoles on `pts`, `port:` and `file:`, an mcast
//!   network and a hostfs share, and the user's `uml_mconsole` drives it;
//! * what needs root (creating a tap, a `gate`) fails before the boot with a line saying so;
//! * passt, started by kuml as the user, leases the guest an address;
//! * the guest is reached on a tap root made for the user, and on the user's `uml_switch`.
//!
//! NETWORK SAFETY: each test that touches the network does so in its own network namespace
//! (tests/src/net.rs), deleted at its end.

#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kuml_e2e::net::*;
use kuml_e2e::user::{OrdinaryUser, NAME};
use kuml_e2e::{
    announced_pts, artifact, expect_text, hex, kuml_bin, make_raw, open_terminal, skip, unhex,
    user_space_part_or_skip, AgentReply, TestVm, VmOptions,
};

const SHORT: Duration = Duration::from_secs(120);

/// Starts kuml as `user` with the test kernel, 128M, the agent on hvc0 and `args`; the
/// default hostfs export only when `hostfs` (the args then name one).
fn start_as(user: &OrdinaryUser, name: &str, args: Vec<String>, hostfs: bool) -> TestVm {
    let mut all = vec![
        format!("kernel={}", user.reachable(&artifact("vmlinux")).display()),
        "mem=128M".to_owned(),
        "noreboot".to_owned(),
    ];
    all.extend(args);
    TestVm::start(name, user_options(user, all, hostfs))
}

/// Options that start kuml (a copy the user can reach, if it must be) as `user` in its home.
fn user_options(user: &OrdinaryUser, args: Vec<String>, hostfs: bool) -> VmOptions {
    let (wrapper, env) = user.wrapper();
    VmOptions {
        args,
        agent_tty: Some("hvc0".into()),
        wrapper,
        env,
        hostfs,
        cwd: Some(user.home.clone()),
        program: Some(user.reachable(&kuml_bin())),
        ..VmOptions::default()
    }
}

/// Starts kuml with `opts` (from [`user_options`]) and the test kernel `kernel`, 128M, on the
/// calling thread (a namespace's).
fn start_in_namespace(kernel: &Path, name: &str, mut opts: VmOptions) -> TestVm {
    let mut args = vec![
        format!("kernel={}", kernel.display()),
        "mem=128M".to_owned(),
        "noreboot".to_owned(),
    ];
    args.append(&mut opts.args);
    opts.args = args;
    TestVm::start(name, opts)
}

/// An agent request that may answer EEXIST (the user agent's tree has the directory).
fn mkdir(vm: &mut TestVm, dir: &str) {
    match vm.agent(&format!("mkdir {dir}"), SHORT) {
        AgentReply::Ok(_) => {}
        AgentReply::Err(e) if e.starts_with("EEXIST") => {}
        AgentReply::Err(e) => panic!("mkdir {dir}: {e}"),
    }
}

fn read_text(vm: &mut TestVm, path: &str) -> String {
    String::from_utf8_lossy(&unhex(&vm.agent_ok(&format!("read {path} 0 4096"), SHORT)))
        .into_owned()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `uml_mconsole <umid> <cmd>` run as the user (it finds the socket in the user's `~/.uml`);
/// returns its output and exit code.
fn mconsole(user: &OrdinaryUser, umid: &str, cmd: &str) -> (String, i32) {
    let out = user
        .command("uml_mconsole")
        .arg(umid)
        .args(cmd.split_whitespace())
        .current_dir(&user.home)
        .output()
        .expect("TEST CANNOT RUN: uml_mconsole (package uml-utilities)");
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.code().unwrap_or(-1),
    )
}

/// The whole of an ordinary user's UML session in one guest: COW disk in the home, `~/.uml`,
/// consoles on pts, port and file, mcast, hostfs, mconsole; the guest ends by mconsole `halt`.
/// Kernel level everywhere (the in-kernel agent on PVM); where guest user space runs, shells
/// on the pts and port consoles too.
#[test]
fn an_ordinary_users_guest_boots_on_a_cow_in_its_home_with_consoles_mcast_hostfs_and_mconsole() {
    let user = OrdinaryUser::new();
    let hostfs = user.may_make_user_namespace();
    let ns = Netns::new("user");
    ns.multicast();
    ns.run(move || {
        let user = user;
        let home = user.home.clone();
        let backing = user.reachable(&artifact("data.ext4"));
        let backing_sum = sha256(&backing);
        let cow = home.join("data.cow");
        let share = home.join("share");
        user.mkdir(&share);
        std::fs::write(share.join("from-host.txt"), "written on the host\n").unwrap();
        let umid = format!("kuml-user-{}", std::process::id());
        let port = 40000 + (std::process::id() % 20000) as u16;
        let file_log = home.join("con3.log");
        let mut args = vec![
            format!(
                "initrd={}",
                user.reachable(&artifact("initramfs.cpio")).display()
            ),
            format!("umid={umid}"),
            format!("ubd0={},{}", cow.display(), backing.display()),
            "con1=pts".to_owned(),
            format!("con2=port:{port}"),
            format!("con3=file:{}", file_log.display()),
            "eth0=mcast".to_owned(),
            ip_arg(GUEST_A, HOST),
        ];
        if hostfs {
            args.push(format!("hostfs={}", share.display()));
        } else {
            skip(
                "the hostfs part: an ordinary user cannot make a user namespace here \
                 (virtiofsd's sandbox needs one)",
            );
        }
        let mut peer = McastPeer::join();
        let mut vm = start_as(&user, "user-session", args, hostfs);
        vm.wait_agent(BOOT);

        // ~/.uml is the default uml_dir; the umid directory and its pid file are the user's.
        let dir = home.join(".uml").join(&umid);
        let stdout = vm.stdout();
        assert!(
            stdout.contains(&format!(
                "mconsole (version 2) initialized on {}/mconsole",
                dir.display()
            )),
            "UML's mconsole line with ~/.uml:\n{stdout}"
        );
        let pid_file = dir.join("pid");
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            vm.pid().to_string()
        );
        assert_eq!(std::fs::metadata(&pid_file).unwrap().uid(), user.uid);
        // The COW file was made by kuml in the user's home, owned by the user.
        assert!(
            stdout.contains(&format!(
                "Creating \"{}\" as COW file for \"{}\"",
                cow.display(),
                backing.display()
            )),
            "UML's COW line:\n{stdout}"
        );
        let meta = std::fs::metadata(&cow).expect("the COW file exists");
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));

        // The disk: read from the backing file, written into the COW file.
        mkdir(&mut vm, "/mnt");
        vm.agent_ok("mount /dev/vda /mnt ext4 -", SHORT);
        assert_eq!(
            read_text(&mut vm, "/mnt/hello.txt"),
            "hello from kuml data disk\n"
        );
        let note = b"written by an ordinary user's guest\n";
        vm.agent_ok(&format!("write /mnt/user.txt 0 {}", hex(note)), SHORT);
        vm.agent_ok("fsync /mnt/user.txt", SHORT);
        vm.agent_ok("umount /mnt", SHORT);
        vm.agent_ok("sync", SHORT);

        // mcast: the guest kernel answers the group's ARP and ping.
        let mac = resolve(&mut peer, GUEST_A);
        let (dst, _) = ping(&mut peer, PEER, mac, GUEST_A, 1);
        assert_eq!(dst, PEER_MAC);

        // Consoles: the pts is the user's, the port listens, the file is the user's.
        let out = vm.wait_for("Virtual console 1 assigned device '/dev/pts/", SHORT);
        let pts = announced_pts(&out, "Virtual console 1 assigned device");
        assert_eq!(
            std::fs::metadata(&pts).unwrap().uid(),
            user.uid,
            "{pts} belongs to kuml's user"
        );
        let mut conn = telnet(port);
        let mut neg = [0u8; 3];
        conn.read_exact(&mut neg)
            .expect("the port console negotiates");
        assert_eq!(neg, [255, 251, 1], "telnet WILL ECHO from the port console");
        drop(conn);
        vm.agent_ok(
            &format!("write /dev/hvc3 0 {}", hex(b"to the file console\n")),
            SHORT,
        );
        wait_file(&file_log, "to the file console");
        assert_eq!(std::fs::metadata(&file_log).unwrap().uid(), user.uid);

        // hostfs: virtiofsd runs as the user, in its sandbox.
        if hostfs {
            mkdir(&mut vm, "/mnt/host");
            vm.agent_ok("mount none /mnt/host hostfs /", SHORT);
            assert_eq!(
                read_text(&mut vm, "/mnt/host/from-host.txt"),
                "written on the host\n"
            );
            let data = b"written through hostfs\n";
            vm.agent_ok(
                &format!("write /mnt/host/from-guest.txt 0 {}", hex(data)),
                SHORT,
            );
            vm.agent_ok("umount /mnt/host", SHORT);
            let made = std::fs::metadata(share.join("from-guest.txt")).unwrap();
            assert_eq!(
                (made.uid(), made.gid()),
                (user.uid, user.gid),
                "guest root writes as kuml's user"
            );
        }

        if user_space_part_or_skip("the user-space part (shells on the pts and port consoles)") {
            vm.sh_ok(
                "setsid -c sh -i </dev/hvc1 >/dev/hvc1 2>&1 & \
                 setsid -c sh -i </dev/hvc2 >/dev/hvc2 2>&1 &",
                SHORT,
            );
            // The pts is the user's (checked above); the test types into it as a terminal
            // would, and into the port console over telnet.
            let mut term = open_terminal(&pts);
            make_raw(&term);
            term.write_all(b"echo typed-on-pts-$((6 * 7))\n").unwrap();
            expect_text(&mut term, "typed-on-pts-42", SHORT);
            let mut conn = telnet(port);
            let mut neg = [0u8; 9];
            conn.read_exact(&mut neg).expect("the telnet negotiation");
            conn.write_all(b"echo typed-on-port-$((7 * 6))\n").unwrap();
            expect_text(&mut conn, "typed-on-port-42", SHORT);
        }

        // The user's uml_mconsole finds the guest in ~/.uml and drives it.
        let (out, rc) = mconsole(&user, &umid, "version");
        assert_eq!(rc, 0, "uml_mconsole version: {out}");
        assert!(out.starts_with("OK "), "{out}");
        let (out, rc) = mconsole(&user, &umid, "config ubd0");
        assert_eq!(rc, 0, "uml_mconsole config ubd0: {out}");
        assert!(out.contains(&cow.display().to_string()), "{out}");
        let (out, rc) = mconsole(&user, &umid, "halt");
        assert_eq!((out.trim(), rc), ("OK", 0), "uml_mconsole halt");
        assert_eq!(vm.wait_exit(SHORT), 0, "halt ends kuml with 0");
        assert!(!dir.exists(), "{} is removed at the end", dir.display());

        // The backing file is untouched; the user's uml_moo merges the user's COW file.
        assert_eq!(
            sha256(&backing),
            backing_sum,
            "the backing file is unchanged"
        );
        let merged = home.join("merged.img");
        let out = user
            .command("uml_moo")
            .arg(&cow)
            .arg(&merged)
            .output()
            .expect("TEST CANNOT RUN: uml_moo (package uml-utilities)");
        assert!(out.status.success(), "uml_moo as the user: {out:?}");
        let out = Command::new("debugfs")
            .args(["-R", "cat /user.txt"])
            .arg(&merged)
            .output()
            .expect("TEST CANNOT RUN: debugfs (e2fsprogs)");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(note),
            "the guest's write is in the merged image"
        );
        drop(vm);
    });
}

fn telnet(port: u16) -> std::net::TcpStream {
    let deadline = Instant::now() + SHORT;
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                return s;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "port {port}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn wait_file(path: &Path, text: &str) {
    let deadline = Instant::now() + SHORT;
    loop {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} lacks {text:?}: {got:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// kuml as the user with `eth0=<eth>` in namespace `ns`: it must fail before any boot; returns
/// its exit code and what it said.
fn refused(user: &OrdinaryUser, ns: &Netns, eth: &str) -> (i32, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]);
    let (wrap, env) = user.wrapper();
    cmd.args(&wrap)
        .arg(user.reachable(&kuml_bin()))
        .arg(format!(
            "kernel={}",
            user.reachable(&artifact("vmlinux")).display()
        ))
        .args([
            "mem=64M",
            "nohostfs",
            "initrd=/dev/null",
            "ssl=null",
            "con=null",
        ])
        .arg(format!("eth0={eth}"))
        .envs(env)
        .current_dir(&user.home)
        .stdin(Stdio::null());
    let child = cmd.output().expect("run kuml as the user");
    (
        child.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        ),
    )
}

/// What needs root fails before the boot, with a line that says so and what to do: a tap
/// kuml would create (with and without UML's gate), a tap that does not exist, a tap made for
/// another user. No guest boots here.
#[test]
fn an_ordinary_user_is_told_that_making_a_tap_or_gate_needs_root() {
    let user = OrdinaryUser::new();
    let ns = Netns::new("usertap");
    ns.ip("tuntap add kumlroot0 mode tap user root");
    let before = ns.ip_out("-o link show");
    let cases = [
        (
            "tuntap,,,10.0.2.1".to_owned(),
            "creating a tap device with a gate address and host routes needs root (CAP_NET_ADMIN)",
        ),
        (
            "tuntap".to_owned(),
            "creating a tap device needs root (CAP_NET_ADMIN)",
        ),
        (
            "tuntap,kumlnone0".to_owned(),
            "tap device 'kumlnone0' does not exist, and creating one needs root (CAP_NET_ADMIN)",
        ),
        (
            "tuntap,kumlroot0".to_owned(),
            "tap device 'kumlroot0' was not made for kuml's user",
        ),
    ];
    for (eth, says) in &cases {
        let start = Instant::now();
        let (code, out) = refused(&user, &ns, eth);
        eprintln!(
            "eth0={eth}: exit {code} after {:?}:\n{out}",
            start.elapsed()
        );
        assert_ne!(code, 0, "eth0={eth} as {NAME}: {out}");
        assert!(
            out.contains(says),
            "eth0={eth}: expected {says:?} in:\n{out}"
        );
        assert!(
            out.contains("ip tuntap add dev") && out.contains("user $USER"),
            "eth0={eth}: the line names the command a root user runs:\n{out}"
        );
        assert!(!out.contains("Linux version"), "no guest booted:\n{out}");
    }
    assert_eq!(
        ns.ip_out("-o link show"),
        before,
        "no interface was made in the namespace"
    );
    assert!(
        !user.home.join(".uml").exists()
            || std::fs::read_dir(user.home.join(".uml"))
                .unwrap()
                .next()
                .is_none(),
        "no umid directory is left behind"
    );
}

/// passt, started by kuml as the user, leases the guest its address (the guest kernel's DHCP,
/// `ip=dhcp`, so this proves it at kernel level too).
#[test]
fn an_ordinary_users_guest_gets_a_lease_from_passt() {
    let user = OrdinaryUser::new();
    if !user.may_make_user_namespace() {
        skip(
            "passt as an ordinary user sandboxes itself in a user namespace, which the kernel \
             refuses here",
        );
        return;
    }
    let ns = Netns::new("userpasst");
    // passt copies the address and route of the interface with the default route.
    ns.veth("up0", "up1", Ipv4Addr::new(10, 77, 0, 2));
    ns.ip("route add default via 10.77.0.1");
    let user_kernel = user.reachable(&artifact("vmlinux"));
    let opts = user_options(
        &user,
        vec![
            format!(
                "initrd={}",
                user.reachable(&artifact("initramfs.cpio")).display()
            ),
            "eth0=slirp".to_owned(),
            "ip=dhcp".to_owned(),
        ],
        false,
    );
    let mut vm = ns.run(move || start_in_namespace(&user_kernel, "user-passt", opts));
    // "IP-Config: Complete:" follows the whole "Got DHCP answer …, my address is …" line.
    let out = vm.wait_for("IP-Config: Complete", BOOT);
    assert!(
        out.lines().any(|l| l
            .trim_end()
            .ends_with("IP-Config: Got DHCP answer from 10.77.0.1, my address is 10.77.0.2")),
        "passt leased the host's address:\n{out}"
    );
    vm.wait_agent(BOOT);
    let ps = Command::new("ps")
        .args(["-o", "uid=,args=", "--ppid", &vm.pid().to_string()])
        .output()
        .expect("ps");
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(
        ps.lines()
            .any(|l| l.contains("passt")
                && l.split_whitespace().next() == Some(&user.uid.to_string())),
        "passt runs as kuml's user: {ps}"
    );
    vm.send(b"999 poweroff\n");
    assert_eq!(vm.wait_exit(SHORT), 0);
}

/// The user's own networks: `tuntap` on a tap that root made for the user beforehand
/// (`ip tuntap add … user U`, as UML's docs say), and `daemon` on a `uml_switch` the user
/// started. The guest kernel configures eth0 itself (`ip=`) and answers ARP and ICMP, so this
/// is proven at kernel level on every lane.
#[test]
fn an_ordinary_users_guest_is_reached_on_a_tap_made_for_it_and_on_its_uml_switch() {
    let user = OrdinaryUser::new();
    let ns = Netns::new("usernet");
    ns.ip(&format!("tuntap add kumluser0 mode tap user {}", user.uid));
    ns.ip(&format!("addr add {HOST}/24 dev kumluser0"));
    ns.ip("link set kumluser0 up");
    let initrd = format!(
        "initrd={}",
        user.reachable(&artifact("initramfs.cpio")).display()
    );
    let user_kernel = user.reachable(&artifact("vmlinux"));

    // tuntap: the user attaches to its tap; the namespace pings the guest over it.
    let opts = user_options(
        &user,
        vec![
            initrd.clone(),
            "eth0=tuntap,kumluser0".to_owned(),
            ip_arg(GUEST_A, HOST),
        ],
        false,
    );
    let kernel = user_kernel.clone();
    let mut vm = ns.run(move || start_in_namespace(&kernel, "user-tap", opts));
    ready(&mut vm, GUEST_A);
    let rtt = ns.run(|| host_ping(GUEST_A));
    eprintln!("the user's guest answered over its tap after {rtt:?}");
    let owner = std::fs::metadata(format!("/proc/{}", vm.pid())).map(|m| m.uid());
    assert_eq!(owner.ok(), Some(user.uid), "kuml runs as the user");
    vm.send(b"999 poweroff\n");
    assert_eq!(vm.wait_exit(SHORT), 0);

    // daemon: uml_switch started by the user, its socket in the user's home; a third port
    // (this test) resolves and pings the user's guest through the switch.
    let ctl = user.home.join("switch.ctl");
    let log = user.home.join("switch.log");
    let switch = {
        let (ctl, log) = (ctl.clone(), log.clone());
        let cmd = user.command("uml_switch");
        ns.run(move || uml_switch(cmd, &ctl, &log))
    };
    assert_eq!(
        std::fs::symlink_metadata(&ctl).unwrap().uid(),
        user.uid,
        "the switch's socket is the user's"
    );
    let opts = user_options(
        &user,
        vec![
            initrd,
            format!("eth0=daemon,,unix,{}", ctl.display()),
            ip_arg(GUEST_A, HOST),
        ],
        false,
    );
    let mut vm = ns.run(move || start_in_namespace(&user_kernel, "user-daemon", opts));
    ready(&mut vm, GUEST_A);
    // The switch's data sockets are abstract, so they live in its network namespace: the
    // third port is opened there too.
    let mut port = ns.run(move || {
        netdev::DaemonBackend::connect_path(&ctl).expect("a port on the user's switch")
    });
    port.wait_ready(ANSWER).expect("the switch answers");
    let mut peer = BackendPeer(Box::new(port));
    let mac = resolve(&mut peer, GUEST_A);
    let (dst, _) = ping(&mut peer, PEER, mac, GUEST_A, 1);
    assert_eq!(dst, PEER_MAC, "the guest answered the peer's echo");
    vm.send(b"999 poweroff\n");
    assert_eq!(vm.wait_exit(SHORT), 0);
    drop(switch);
    eprintln!(
        "uml_switch log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
