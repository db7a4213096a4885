//! Network test helpers shared by the e2e network tests (`tests/tests/net*.rs`): named network
//! namespaces, kuml and QEMU guests whose kernel configures eth0 from `ip=`, Ethernet/ARP/ICMP
//! frame builders, and test peers that play a host on a guest's segment (a multicast group
//! member, a port on a switch, any [`netdev::Backend`]).
//!
//! NETWORK SAFETY: every test creates its own named network namespace (`ip netns add`) and
//! deletes it on drop, also when the test panics. Test bodies run on a thread that has joined
//! that namespace with setns(2); kuml, QEMU and switches are spawned from that thread and
//! therefore run in the namespace exactly as under `ip netns exec <ns>`. Packets only go to
//! addresses that exist inside the namespaces.

#![allow(missing_docs)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{artifact, hex, host_guest_options, TestVm, VmOptions};

/// Boot bounds only catch hangs (PVM boots take ~35-60 s, more on a loaded host).
pub const BOOT: Duration = Duration::from_secs(600);
/// How long a guest kernel may take to answer (emulated on PVM hosts).
pub const ANSWER: Duration = Duration::from_secs(60);

pub const MASK: &str = "255.255.255.0";
pub const GUEST_A: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GUEST_B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 16);
pub const QEMU_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 17);
pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// The test peer on the mcast group / switch.
pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 99);
pub const PEER_MAC: [u8; 6] = [0x02, 0x6b, 0x75, 0x6d, 0x6c, 0x99];
/// An address outside the guests' /24: replies to it go through the guest's gateway.
pub const FAR: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 192, 168, 1);
pub const MCAST_PORT: u16 = 1102;

// ------------------------------------------------------------------ namespaces

/// A named network namespace, deleted on drop (also when the test panics).
#[derive(Debug)]
pub struct Netns {
    /// The name (`ip netns` and `/run/netns/<name>`).
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("kuml-e2e-{tag}-{}", std::process::id());
        // A stale one from a killed run of this same test and pid cannot exist; any other
        // name is not ours and is left alone.
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n <ns> <args>`, panicking on failure.
    pub fn ip(&self, args: &str) {
        let mut a = vec!["-n", &self.name];
        a.extend(args.split_whitespace());
        run("ip", &a);
    }

    /// Output of `ip -n <ns> <args>`.
    pub fn ip_out(&self, args: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace())
            .output()
            .expect("TEST CANNOT RUN: cannot run `ip`");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A veth pair `a`–`b`, both up, with `addr`/24 on `a`.
    pub fn veth(&self, a: &str, b: &str, addr: Ipv4Addr) {
        self.ip(&format!("link add {a} type veth peer name {b}"));
        self.ip(&format!("addr add {addr}/24 dev {a}"));
        self.ip(&format!("link set {a} up"));
        self.ip(&format!("link set {b} up"));
    }

    /// A tap `name` (owned by root), up, with `addr`/24 on the namespace's side.
    pub fn tap(&self, name: &str, addr: Ipv4Addr) {
        self.ip(&format!("tuntap add {name} mode tap"));
        self.ip(&format!("addr add {addr}/24 dev {name}"));
        self.ip(&format!("link set {name} up"));
    }

    /// Multicast on the namespace's loopback (the mcast transport's only interface).
    pub fn multicast(&self) {
        self.ip("link set lo multicast on");
        self.ip("route add 224.0.0.0/4 dev lo");
    }

    /// Runs `f` on a thread that has joined this namespace; processes it spawns run there.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = PathBuf::from("/run/netns").join(&self.name);
        // The thread carries the test's name, which SKIPPED lines (crate::skip) print.
        let mut builder = std::thread::Builder::new();
        if let Some(name) = std::thread::current().name() {
            builder = builder.name(name.to_owned());
        }
        let t = builder.spawn(move || {
            let ns = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("TEST CANNOT RUN: open {}: {e}", path.display()));
            // SAFETY: setns on a descriptor we own; CLONE_NEWNET moves only this thread.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "TEST CANNOT RUN: setns into {}: {} (needs root)",
                path.display(),
                std::io::Error::last_os_error()
            );
            f()
        });
        t.expect("TEST CANNOT RUN: spawn the namespace's thread")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("TEST CANNOT RUN: cannot run `{prog}`: {e}"));
    assert!(
        out.status.success(),
        "{prog} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------ guests

/// `ip=<addr>::<gw>:<mask>::eth0:off`: the guest kernel configures eth0 by itself.
pub fn ip_arg(addr: Ipv4Addr, gw: Ipv4Addr) -> String {
    format!("ip={addr}::{gw}:{MASK}::eth0:off")
}

/// Starts a kuml guest with `eth0=<eth>`, `ip=` and `extra` guest words (several guests boot
/// in parallel; [`ready`] waits for each).
pub fn start_guest(name: &str, eth: &str, addr: Ipv4Addr, gw: Ipv4Addr, extra: &[&str]) -> TestVm {
    let mut args = vec![format!("eth0={eth}"), ip_arg(addr, gw)];
    args.extend(extra.iter().map(|s| s.to_string()));
    start_kuml(name, args, Vec::new())
}

/// Starts a kuml guest (the test kernel and initramfs, 128M, the agent on hvc0) with `args`
/// (kuml options and guest words) and descriptors `fds` (see [`VmOptions::extra_fds`]).
pub fn start_kuml(name: &str, args: Vec<String>, fds: Vec<(i32, std::os::fd::RawFd)>) -> TestVm {
    TestVm::start(name, kuml_options(args, fds))
}

/// The options [`start_kuml`] starts a guest with; `noreboot` is among them (a guest's reboot
/// ends kuml with exit code 3).
pub fn kuml_options(args: Vec<String>, fds: Vec<(i32, std::os::fd::RawFd)>) -> VmOptions {
    let mut all = vec![
        format!("kernel={}", artifact("vmlinux").display()),
        format!("initrd={}", artifact("initramfs.cpio.gz").display()),
        "mem=128M".to_owned(),
        "noreboot".to_owned(),
    ];
    all.extend(args);
    VmOptions {
        args: all,
        agent_tty: Some("hvc0".into()),
        extra_fds: fds,
        ..VmOptions::default()
    }
}

/// Waits until the guest's kernel has configured eth0 with `addr` and the test agent is up
/// (the agent only proves the kernel got that far and is alive).
pub fn ready(vm: &mut TestVm, addr: Ipv4Addr) {
    vm.wait_for("IP-Config: Complete", BOOT);
    vm.wait_agent(BOOT);
    let out = vm.output();
    assert!(
        out.contains("device=eth0, hwaddr=") && out.contains(&format!("ipaddr={addr},")),
        "the kernel did not configure eth0 with the ip= address {addr}"
    );
}

pub fn kuml_guest(name: &str, eth: &str, addr: Ipv4Addr, gw: Ipv4Addr) -> TestVm {
    let mut vm = start_guest(name, eth, addr, gw, &[]);
    ready(&mut vm, addr);
    vm
}

/// A QEMU microvm guest with the same kernel, a virtio-net-device on `-netdev <netdev>` and
/// `ip=`; the in-kernel agent on ttyS0 keeps the kernel alive without user space (or, from
/// [`Qemu::start_with_user_space`] where guest user space runs, the user-space agent). Killed
/// (by its own pid) on drop.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    log: PathBuf,
    stdin: Option<std::process::ChildStdin>,
    seq: u32,
}

impl Qemu {
    pub fn start(log: &Path, netdev: &str, mac: &str, addr: Ipv4Addr, gw: Ipv4Addr) -> Qemu {
        Qemu::start_with(log, &Qemu::nic(netdev, mac), &[], addr, gw)
    }

    /// Like [`Qemu::start`], but where guest user space runs (hardware KVM, the nested lane)
    /// the guest runs its init and the user-space agent on ttyS0, which [`Qemu::sh_ok`]
    /// drives; elsewhere (PVM) the in-kernel agent, as [`Qemu::start`].
    pub fn start_with_user_space(
        log: &Path,
        netdev: &str,
        mac: &str,
        addr: Ipv4Addr,
        gw: Ipv4Addr,
    ) -> Qemu {
        let agent = match crate::host_kind() {
            crate::HostKind::Hardware => "kuml.uagent=ttyS0",
            crate::HostKind::Pvm => "kuml.agent=ttyS0",
        };
        Qemu::launch(log, &Qemu::nic(netdev, mac), &[], addr, gw, agent)
    }

    fn nic(netdev: &str, mac: &str) -> [String; 4] {
        [
            "-netdev".to_owned(),
            format!("{netdev},id=n0"),
            "-device".to_owned(),
            format!("virtio-net-device,netdev=n0,mac={mac}"),
        ]
    }

    /// A QEMU guest with the network options `net` (`-netdev …`, `-device …`), descriptors
    /// `fds` handed over as with [`crate::pass_fds`] (closed here once QEMU has them), and
    /// eth0 configured from `ip=`.
    pub fn start_with(
        log: &Path,
        net: &[String],
        fds: &[(i32, std::os::fd::RawFd)],
        addr: Ipv4Addr,
        gw: Ipv4Addr,
    ) -> Qemu {
        Qemu::launch(log, net, fds, addr, gw, "kuml.agent=ttyS0")
    }

    fn launch(
        log: &Path,
        net: &[String],
        fds: &[(i32, std::os::fd::RawFd)],
        addr: Ipv4Addr,
        gw: Ipv4Addr,
        agent: &str,
    ) -> Qemu {
        let mut append = vec![
            "console=ttyS0".to_owned(),
            agent.to_owned(),
            ip_arg(addr, gw),
        ];
        append.extend(host_guest_options());
        let out = std::fs::File::create(log).expect("create the QEMU log");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "microvm", "-accel", "kvm", "-m", "128"])
            .args(["-cpu", &crate::qemu_cpu()])
            .args([
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
            ])
            .args(["-no-reboot", "-serial", "stdio"])
            .arg("-kernel")
            .arg(artifact("vmlinux"))
            .arg("-initrd")
            .arg(artifact("initramfs.cpio.gz"))
            .args(["-append", &append.join(" ")])
            .args(net)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        crate::pass_fds(&mut cmd, fds);
        let mut child = cmd
            .spawn()
            .expect("TEST CANNOT RUN: cannot start qemu-system-x86_64");
        for (_, src) in fds {
            // SAFETY: the descriptors were handed over to this call; QEMU has its copies.
            unsafe { libc::close(*src) };
        }
        let stdin = child.stdin.take();
        Qemu {
            child,
            log: log.to_owned(),
            stdin,
            seq: 0,
        }
    }

    /// Sends one agent command on ttyS0 (QEMU's stdin) and waits for its reply (the agent's
    /// protocol, as [`TestVm::agent`]).
    pub fn agent(&mut self, command: &str, timeout: Duration) -> crate::AgentReply {
        use std::io::Write;
        self.seq += 1;
        let seq = self.seq;
        let stdin = self.stdin.as_mut().expect("QEMU's stdin is open");
        stdin
            .write_all(format!("{seq} {command}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to QEMU's serial line");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = crate::reply_line(&self.output(), seq) {
                return crate::parse_reply(&line);
            }
            self.fail_if_gone(deadline, &format!("no reply to agent command {command:?}"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `script` with `sh -c` through the user-space agent (a guest from
    /// [`Qemu::start_with_user_space`] where user space runs); panics (with the output) unless
    /// it exits 0; returns its output.
    pub fn sh_ok(&mut self, script: &str, timeout: Duration) -> String {
        let reply = self.agent(&format!("run {}", crate::hex(script.as_bytes())), timeout);
        let crate::AgentReply::Ok(payload) = reply else {
            panic!("QEMU guest: run {script:?}: {reply:?}");
        };
        let (status, out) = payload.split_once(' ').unwrap_or((&payload, ""));
        let out = String::from_utf8_lossy(&crate::unhex(out)).into_owned();
        assert_eq!(
            status, "0",
            "QEMU guest: {script:?} exited {status}:\n{out}"
        );
        out
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.contains(pattern) {
                return;
            }
            self.fail_if_gone(deadline, &format!("{pattern:?} not seen"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Panics with `what` and the last 30 console lines once QEMU has exited or `deadline`
    /// has passed.
    fn fail_if_gone(&mut self, deadline: Instant, what: &str) {
        let exited = self.child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            let out = self.output();
            let tail: Vec<&str> = out.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "QEMU guest: {what} ({})\n{}",
                exited.map_or("timeout".to_owned(), |s| format!("exited: {s}")),
                tail.join("\n")
            );
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("QEMU log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A process (a switch, a helper, a QEMU hub) killed by its own pid on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Debian's `uml_switch` from `cmd` (a `Command::new("uml_switch")`, or one that runs
/// it as another user) with its control socket at `ctl` and its output in `log`, in the
/// calling thread's network namespace (its data sockets are abstract: its ports must be
/// there too); returns once the socket exists.
pub fn uml_switch(mut cmd: Command, ctl: &Path, log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("create the switch log");
    cmd.arg("-unix")
        .arg(ctl)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup the switch log"))
        .stderr(out);
    let switch = Proc(
        cmd.spawn()
            .expect("TEST CANNOT RUN: cannot start uml_switch (apt-get install uml-utilities)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctl.exists() {
        assert!(
            Instant::now() < deadline,
            "uml_switch made no {}",
            ctl.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    switch
}

/// Debian's `vde_switch` (package vde2) in the calling thread's network namespace, its
/// directory (control socket `ctl`, the ports' data sockets) at `dir`, its console on a pipe
/// (it ends at EOF on its stdin) and its output in `log`. Killed by its own pid on drop.
#[derive(Debug)]
pub struct VdeSwitch {
    _proc: Proc,
    console: std::process::ChildStdin,
    log: PathBuf,
}

impl VdeSwitch {
    /// Starts the switch; returns once its control socket exists.
    pub fn start(dir: &Path, log: &Path) -> VdeSwitch {
        let out = std::fs::File::create(log).expect("create the switch log");
        let mut child = Command::new("vde_switch")
            .arg("-s")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().expect("dup the switch log"))
            .stderr(out)
            .spawn()
            .expect("TEST CANNOT RUN: cannot start vde_switch (apt-get install vde2)");
        let console = child.stdin.take().expect("piped stdin");
        let switch = VdeSwitch {
            _proc: Proc(child),
            console,
            log: log.to_owned(),
        };
        let ctl = dir.join("ctl");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ctl.exists() {
            assert!(
                Instant::now() < deadline,
                "vde_switch made no {}:\n{}",
                ctl.display(),
                switch.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        switch
    }

    /// Everything the switch printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Runs `command` on the switch's console (e.g. `port/print`); returns what it printed
    /// up to its status line (`1000 Success`, or the error).
    pub fn console(&mut self, command: &str) -> String {
        use std::io::Write;
        let before = self.output().len();
        writeln!(self.console, "{command}").expect("write to the switch console");
        self.console.flush().expect("write to the switch console");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.output();
            let new = &out[before.min(out.len())..];
            // Each reply ends with a status line: "1000 Success" or "1xxx <error>".
            if new.lines().any(|l| {
                let b = l.as_bytes();
                b.len() > 5 && b[0] == b'1' && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b' '
            }) {
                return new.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "vde_switch did not answer {command:?}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A QEMU without a guest (`-machine none`) whose hub joins the backends `nets` (`-net`
/// option values, e.g. `l2tpv3,…` or `vde,sock=…`) and the multicast group
/// [`GROUP`]:[`MCAST_PORT`], where a [`McastPeer`] sits (the caller's namespace needs
/// [`Netns::multicast`]). So a test peer reaches a kuml guest through QEMU's own
/// implementation of a transport, without booting a second guest. Its output goes to `log`.
pub fn qemu_hub(log: &Path, nets: &[String]) -> Proc {
    let mut all = nets.to_vec();
    all.push(format!("socket,mcast={GROUP}:{MCAST_PORT}"));
    qemu_hub_of(log, &all)
}

/// A QEMU without a guest whose hub joins exactly the backends `nets` (`-net` option values):
/// e.g. `l2tpv3,…` and `tap,ifname=<dev>,script=no,downscript=no`, so that the namespace's
/// own IP stack on that tap reaches a kuml guest through QEMU's implementation of the
/// transport. Its output goes to `log`.
pub fn qemu_hub_of(log: &Path, nets: &[String]) -> Proc {
    let out = std::fs::File::create(log).expect("create the QEMU hub log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "none", "-nodefaults", "-display", "none"]);
    for n in nets {
        cmd.arg("-net").arg(n);
    }
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    Proc(
        cmd.spawn()
            .expect("TEST CANNOT RUN: cannot start qemu-system-x86_64"),
    )
}

/// Waits until interface `dev` exists in the calling thread's namespace (a tap that QEMU or
/// kuml is still creating).
pub fn wait_for_interface(dev: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let cdev = std::ffi::CString::new(dev).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    while unsafe { libc::if_nametoindex(cdev.as_ptr()) } == 0 {
        assert!(Instant::now() < deadline, "no interface {dev} appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------ frames

pub fn eth_header(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A broadcast ARP request "who has `target`? tell `sip` at `smac`".
pub fn arp_request(smac: [u8; 6], sip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = eth_header([0xff; 6], smac, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&sip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// An ARP reply "`sip` is at `smac`" to `tmac`/`tip`.
pub fn arp_reply(smac: [u8; 6], sip: Ipv4Addr, tmac: [u8; 6], tip: Ipv4Addr) -> Vec<u8> {
    let mut f = eth_header(tmac, smac, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&sip.octets());
    f.extend_from_slice(&tmac);
    f.extend_from_slice(&tip.octets());
    f
}

/// (opcode, sender MAC, sender IP, target MAC, target IP) of an ARP frame.
pub type Arp = (u16, [u8; 6], Ipv4Addr, [u8; 6], Ipv4Addr);

pub fn parse_arp(f: &[u8]) -> Option<Arp> {
    if f.len() < 42 || f[12..14] != [8, 6] || f[14..20] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    let mac = |o: usize| <[u8; 6]>::try_from(&f[o..o + 6]).unwrap();
    Some((
        u16::from_be_bytes([f[20], f[21]]),
        mac(22),
        ip(28),
        mac(32),
        ip(38),
    ))
}

pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request frame.
pub fn icmp_echo(
    dst: [u8; 6],
    src: [u8; 6],
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    id: u16,
    seq: u16,
) -> Vec<u8> {
    let payload = b"kuml-e2e network test payload";
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    iph.extend_from_slice(&sip.octets());
    iph.extend_from_slice(&dip.octets());
    let c = checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = eth_header(dst, src, 0x0800);
    f.extend_from_slice(&iph);
    f.extend_from_slice(&icmp);
    f
}

/// (destination MAC, source IP, destination IP, id, seq) of an ICMP echo reply frame whose
/// checksum is right and whose payload is ours.
pub fn parse_echo_reply(f: &[u8]) -> Option<([u8; 6], Ipv4Addr, Ipv4Addr, u16, u16)> {
    if f.len() < 34 || f[12..14] != [8, 0] || f[23] != 1 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let icmp = f.get(14 + ihl..14 + total)?;
    if icmp.len() < 8 || icmp[0] != 0 || checksum(icmp) != 0 {
        return None;
    }
    if &icmp[8..] != b"kuml-e2e network test payload" {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    Some((
        <[u8; 6]>::try_from(&f[0..6]).unwrap(),
        ip(26),
        ip(30),
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

// ------------------------------------------------------------------ test peers

/// Something that carries raw Ethernet frames: a multicast group or a switch port.
pub trait Wire {
    fn send_frame(&mut self, f: &[u8]);
    /// The next frame within `timeout` (frames we sent ourselves are skipped).
    fn recv_frame(&mut self, timeout: Duration) -> Option<Vec<u8>>;
}

/// A plain UDP socket joined to the group, written here independently of kuml's backend.
#[derive(Debug)]
pub struct McastPeer {
    sock: UdpSocket,
    dest: SocketAddrV4,
}

impl McastPeer {
    /// Joins the default group 239.192.168.1:1102.
    pub fn join() -> McastPeer {
        McastPeer::join_group(GROUP, MCAST_PORT, 1)
    }

    /// Joins `group:port`; frames it sends carry `ttl`.
    pub fn join_group(group: Ipv4Addr, port: u16, ttl: u32) -> McastPeer {
        // SAFETY: plain socket calls on a descriptor created and owned here; the option
        // values live across the calls.
        let sock = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let sock = UdpSocket::from_raw_fd(fd);
            let one: libc::c_int = 1;
            let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let p = (&one as *const libc::c_int).cast();
            assert_eq!(
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, p, len),
                0
            );
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(group).to_be(),
                },
                sin_zero: [0; 8],
            };
            let r = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(
                r,
                0,
                "bind {group}:{port}: {}",
                std::io::Error::last_os_error()
            );
            sock
        };
        sock.set_multicast_loop_v4(true).unwrap();
        sock.set_multicast_ttl_v4(ttl).unwrap();
        sock.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)
            .expect("join the group (multicast route in the namespace?)");
        McastPeer {
            sock,
            dest: SocketAddrV4::new(group, port),
        }
    }
}

impl Wire for McastPeer {
    fn send_frame(&mut self, f: &[u8]) {
        self.sock.send_to(f, self.dest).expect("send to the group");
    }

    fn recv_frame(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv(&mut buf) {
                Ok(n) if n >= 14 && buf[6..12] != PEER_MAC => return Some(buf[..n].to_vec()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv from the group: {e}"),
            }
        }
    }
}

/// A peer through any of kuml's own backends (a port on uml_switch or vde_switch, a tunnel).
#[derive(Debug)]
pub struct BackendPeer(pub Box<dyn netdev::Backend>);

impl Wire for BackendPeer {
    fn send_frame(&mut self, f: &[u8]) {
        self.0.send(f).expect("send through the backend");
        self.0.flush().expect("send through the backend");
    }

    fn recv_frame(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; netdev::RECV_BUF_LEN];
        loop {
            match self.0.recv(&mut buf) {
                Ok(n) => return Some(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("recv through the backend: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.0.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: polls one live pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }
}

/// Sends `request` every second until `pick` accepts a received frame; panics after
/// `timeout` naming `what` and how many frames were seen.
pub fn exchange<T>(
    w: &mut dyn Wire,
    what: &str,
    request: Option<&[u8]>,
    timeout: Duration,
    mut pick: impl FnMut(&[u8]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    loop {
        if let Some(r) = request {
            w.send_frame(r);
        }
        let round = Instant::now() + Duration::from_secs(1);
        while Instant::now() < round {
            let Some(f) = w.recv_frame(round.saturating_duration_since(Instant::now())) else {
                break;
            };
            seen += 1;
            // The peer plays HOST (the guests' default gateway) and PEER.
            if let Some((1, smac, sip, _, tip)) = parse_arp(&f) {
                if tip == HOST || tip == PEER {
                    w.send_frame(&arp_reply(PEER_MAC, tip, smac, sip));
                    continue;
                }
            }
            // And its IPv6 link-local address.
            if let Some((smac, sip, _, 135, body)) = parse_icmp6(&f) {
                if body.get(4..20) == Some(&peer6().octets()[..]) {
                    w.send_frame(&neighbour_advert(PEER_MAC, peer6(), smac, sip));
                    continue;
                }
            }
            if let Some(t) = pick(&f) {
                return t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no answer within {timeout:?} ({seen} other frames seen)"
        );
    }
}

/// ARP-resolves `target` from the peer; returns its MAC.
pub fn resolve(w: &mut dyn Wire, target: Ipv4Addr) -> [u8; 6] {
    let req = arp_request(PEER_MAC, PEER, target);
    exchange(
        w,
        &format!("ARP for {target}"),
        Some(&req),
        ANSWER,
        |f| match parse_arp(f) {
            Some((2, mac, sip, tmac, tip)) if sip == target && tip == PEER && tmac == PEER_MAC => {
                Some(mac)
            }
            _ => None,
        },
    )
}

/// ICMP echo from the peer (as `from`) to `target` at `mac`; returns (the reply's
/// destination MAC, round trip).
pub fn ping(
    w: &mut dyn Wire,
    from: Ipv4Addr,
    mac: [u8; 6],
    target: Ipv4Addr,
    seq: u16,
) -> ([u8; 6], Duration) {
    let req = icmp_echo(mac, PEER_MAC, from, target, 0x4b55, seq);
    let t0 = Instant::now();
    let dst = exchange(
        w,
        &format!("ICMP echo {from} -> {target}"),
        Some(&req),
        ANSWER,
        |f| match parse_echo_reply(f) {
            Some((dst, s, d, 0x4b55, q)) if s == target && d == from && q == seq => Some(dst),
            _ => None,
        },
    );
    (dst, t0.elapsed())
}

// ------------------------------------------------------------------ user space

/// From user space in guest `a`: busybox `ping` to `b_addr`, then 1 MiB of random bytes over
/// TCP (busybox `nc`) to a listener in guest `b`; both sides' SHA-256 must match.
pub fn user_space_ping_and_tcp(a: &mut TestVm, b: &mut TestVm, b_addr: Ipv4Addr) {
    let out = a.sh_ok(&format!("ping -c 3 -W 20 {b_addr}"), ANSWER);
    eprintln!("ping from user space:\n{out}");
    // The listener's stdin must stay open: busybox nc half-closes the connection when its
    // stdin ends (the agent runs scripts with stdin /dev/null), and the sending nc exits at that
    // FIN with its data only partly sent (43008 of 1048576 bytes in the nested lane).
    b.sh_ok(
        "sleep 600 | nc -l -p 5001 > /tmp/got 2> /tmp/nc.err & echo $! > /tmp/nc.pid",
        ANSWER,
    );
    // The listener may need a moment: retry while the connection is refused.
    let sent = a.sh_ok(
        &format!(
            "head -c 1048576 /dev/urandom > /tmp/p; n=0; \
             until nc {b_addr} 5001 < /tmp/p; do n=$((n + 1)); [ $n -lt 60 ] || exit 1; sleep 0.5; done; \
             sha256sum < /tmp/p"
        ),
        ANSWER,
    );
    let got = b.sh_ok(
        "n=0; while kill -0 $(cat /tmp/nc.pid) 2>/dev/null; do n=$((n + 1)); [ $n -lt 300 ] || exit 1; sleep 0.2; done; \
         wc -c < /tmp/got; sha256sum < /tmp/got",
        ANSWER,
    );
    let sum = |s: &str| {
        s.split_whitespace()
            .find(|w| w.len() == 64)
            .map(str::to_owned)
    };
    assert!(got.starts_with("1048576"), "the listener got: {got}");
    assert_eq!(sum(&got), sum(&sent), "the bytes arrived unchanged");
    assert!(sum(&sent).is_some(), "sha256sum output: {sent}");
}

/// 1 MiB of a fixed pattern that a guest can produce with `yes | head`.
pub fn pattern_line() -> &'static str {
    "kuml-user-space-tcp-pattern-0123456789"
}

pub fn pattern(len: usize) -> Vec<u8> {
    format!("{}\n", pattern_line())
        .bytes()
        .cycle()
        .take(len)
        .collect()
}

/// A raw socket of `domain` for `protocol`, in a `UdpSocket` wrapper: only `send_to` and
/// `recv_from` are used on it, the same system calls on any datagram-style socket.
fn raw_socket(domain: libc::c_int, protocol: libc::c_int, what: &str) -> UdpSocket {
    // SAFETY: socket(2) takes no pointers; the descriptor, checked, is owned by the wrapper.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol);
        assert!(
            fd >= 0,
            "TEST CANNOT RUN: raw {what} socket: {}",
            std::io::Error::last_os_error()
        );
        UdpSocket::from_raw_fd(fd)
    }
}

/// An ICMP echo from the namespace's own IP stack (a raw ICMP socket, i.e. what `ping`
/// does) to `target`, resent every second until the reply arrives.
pub fn host_ping(target: Ipv4Addr) -> Duration {
    let sock = raw_socket(libc::AF_INET, libc::IPPROTO_ICMP, "ICMP");
    let id = (std::process::id() & 0xffff) as u16;
    let deadline = Instant::now() + ANSWER;
    let t0 = Instant::now();
    let mut seq = 0u16;
    let mut buf = [0u8; 2048];
    loop {
        seq += 1;
        let f = icmp_echo([0; 6], [0; 6], HOST, target, id, seq);
        let icmp = &f[34..];
        // Sent before the neighbour is resolved: the host kernel ARPs through the tap.
        let _ = sock.send_to(icmp, SocketAddrV4::new(target, 0));
        let round = Instant::now() + Duration::from_secs(1);
        while let Some(left) = round.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            // Raw sockets deliver the IP header; a fake Ethernet header keeps one parser.
            let mut frame = eth_header([0; 6], [0; 6], 0x0800);
            frame.extend_from_slice(&buf[..n]);
            if let Some((_, s, _, rid, _)) = parse_echo_reply(&frame) {
                if s == target && rid == id && from.ip() == std::net::IpAddr::V4(target) {
                    return t0.elapsed();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no ICMP echo reply from {target} over the tap"
        );
    }
}

/// Sends ARP requests for `target` out of `dev` with an AF_PACKET socket (from the gate's
/// address) until the guest's reply arrives.
pub fn arp_via_packet_socket(dev: &str, mac: [u8; 6], target: Ipv4Addr) {
    let cdev = std::ffi::CString::new(dev).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cdev.as_ptr()) };
    assert!(ifindex > 0, "no interface {dev}");
    // SAFETY: a packet socket owned by the wrapper below; sendto/recv on it.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from((libc::ETH_P_ARP as u16).to_be()),
        )
    };
    assert!(
        fd >= 0,
        "TEST CANNOT RUN: packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just created and is owned here (closed by the wrapper).
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let req = arp_request(mac, HOST, target);
    let deadline = Instant::now() + ANSWER;
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: sendto with a valid buffer and sockaddr_ll.
        unsafe {
            libc::sendto(
                fd,
                req.as_ptr().cast(),
                req.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        while let Ok(n) = sock.recv(&mut buf) {
            if let Some((2, _, sip, _, _)) = parse_arp(&buf[..n]) {
                if sip == target {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no ARP reply from {target} on {dev}"
        );
    }
}

/// ICMP echo from FAR to `target`, handed to `router`'s MAC: `router` (a guest with
/// `ip_forward=1` whose gateway is HOST, played by the peer) forwards it to `target` (ARP both
/// ways, then the request), `target` answers through its gateway `router`, which forwards the
/// reply to the peer. The reply must arrive from `router`'s MAC with `target`'s address:
/// frames crossed router -> target and target -> router.
pub fn routed_ping(w: &mut dyn Wire, router_mac: [u8; 6], target: Ipv4Addr, seq: u16, what: &str) {
    let req = icmp_echo(router_mac, PEER_MAC, FAR, target, 0x4b55, seq);
    exchange(w, what, Some(&req), ANSWER, |f| match parse_echo_reply(f) {
        // On a hub (mcast) the peer also sees `target`'s reply on its way to the router.
        Some((dst, s, d, 0x4b55, q)) if s == target && d == FAR && q == seq && dst == PEER_MAC => {
            assert_eq!(
                f[6..12],
                router_mac,
                "{what}: the reply comes through the router"
            );
            Some(())
        }
        _ => None,
    });
}

/// Makes a guest route between its peers on the wire.
pub const FORWARD: &str = "sysctl.net.ipv4.ip_forward=1";
/// The share of one CPU that kuml's event-loop thread (its main thread) used over a few
/// seconds. A functional check, not a benchmark: a loop that spins takes all the CPU it
/// can get, an idle one almost none.
pub fn event_loop_cpu(vm: &TestVm) -> f64 {
    let stat = || -> u64 {
        let path = format!("/proc/{0}/task/{0}/stat", vm.pid());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
        let rest = &text[text.rfind(')').expect("stat has a comm") + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        f[0] + f[1]
    };
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let span = Duration::from_secs(5);
    let (t0, c0) = (Instant::now(), stat());
    std::thread::sleep(span);
    let (c1, dt) = (stat(), t0.elapsed());
    (c1 - c0) as f64 / hz / dt.as_secs_f64()
}

/// kuml's event loop is idle: under a tenth of a CPU over a few seconds.
pub fn assert_idle(vm: &TestVm) {
    let cpu = event_loop_cpu(vm);
    eprintln!("kuml event loop: {:.1} % of a CPU", cpu * 100.0);
    assert!(
        cpu < 0.1,
        "kuml's event loop keeps a CPU busy ({:.0} %) after its backend failed",
        cpu * 100.0
    );
}

// ------------------------------------------------------------------ IPv6 link-local
//
// A NIC that a guest gets after boot (hot-plug, or any NIC but the one `ip=` configures) has no
// IPv4 address without guest user space. Its kernel still speaks IPv6 on it once the link is up
// ([`guest_link_up`]): it takes the EUI-64 link-local address ([`link_local`]), answers
// neighbour solicitations for it and ICMPv6 echo to it. The tests use that as the IPv6
// counterpart of ARP and ICMP at kernel level.

/// The link-local address (EUI-64) that Linux gives an interface whose MAC is `mac`.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// The test peer's link-local address.
pub fn peer6() -> Ipv6Addr {
    link_local(PEER_MAC)
}

/// Brings the guest's interface `dev` up from the test agent, without user space: the agent
/// writes `IFF_UP | IFF_BROADCAST | IFF_MULTICAST` to its sysfs `flags` (sysfs must be mounted,
/// [`TestVm::mount_sysfs`]). Returns the MAC the guest kernel reports for it.
pub fn guest_link_up(vm: &mut TestVm, dev: &str) -> [u8; 6] {
    vm.agent_ok(
        &format!("write /sys/class/net/{dev}/flags 0 {}", hex(b"0x1003\n")),
        ANSWER,
    );
    guest_mac(vm, dev)
}

/// The MAC of the guest's interface `dev` (from sysfs, through the agent).
pub fn guest_mac(vm: &mut TestVm, dev: &str) -> [u8; 6] {
    let text =
        crate::unhex(&vm.agent_ok(&format!("read /sys/class/net/{dev}/address 0 17"), ANSWER));
    parse_mac(&String::from_utf8_lossy(&text))
}

/// `aa:bb:cc:dd:ee:ff` as bytes; panics on anything else.
pub fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("not a MAC: {text:?}")))
        .collect();
    <[u8; 6]>::try_from(bytes).unwrap_or_else(|_| panic!("not a MAC: {text:?}"))
}

/// An ICMPv6 echo from the namespace's own IP stack (a raw ICMPv6 socket, as `ping -6` does)
/// out of `dev` to the link-local `target`, resent every second until the reply arrives; the
/// namespace's kernel resolves the target with neighbour discovery first.
pub fn host_ping6(dev: &str, target: Ipv6Addr) -> Duration {
    let cdev = std::ffi::CString::new(dev).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cdev.as_ptr()) };
    assert!(ifindex > 0, "no interface {dev}");
    let sock = raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6, "ICMPv6");
    let id = (std::process::id() & 0xffff) as u16;
    let dest = SocketAddrV6::new(target, 0, 0, ifindex);
    let deadline = Instant::now() + ANSWER;
    let t0 = Instant::now();
    let mut seq = 0u16;
    let mut buf = [0u8; 2048];
    loop {
        seq += 1;
        // The kernel fills in an ICMPv6 raw socket's checksum.
        let mut echo = vec![128, 0, 0, 0];
        echo.extend_from_slice(&id.to_be_bytes());
        echo.extend_from_slice(&seq.to_be_bytes());
        echo.extend_from_slice(ECHO_PAYLOAD);
        // Fails while the namespace's own link-local address is tentative: resent.
        let _ = sock.send_to(&echo, dest);
        let round = Instant::now() + Duration::from_secs(1);
        while let Some(left) = round.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            // Raw ICMPv6 sockets deliver the ICMPv6 message alone.
            let m = &buf[..n];
            if m.len() >= 8
                && m[0] == 129
                && m[4..6] == id.to_be_bytes()
                && &m[8..] == ECHO_PAYLOAD
                && from.ip() == std::net::IpAddr::V6(target)
            {
                return t0.elapsed();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no ICMPv6 echo reply from {target} on {dev}"
        );
    }
}

const ECHO_PAYLOAD: &[u8] = b"kuml-e2e network test payload";

/// An Ethernet frame with an IPv6 packet carrying the ICMPv6 message `icmp` (its checksum
/// field is filled in here).
pub fn icmp6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mut icmp: Vec<u8>,
) -> Vec<u8> {
    let len = icmp.len() as u32;
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    icmp[2..4].copy_from_slice(&[0, 0]);
    pseudo.extend_from_slice(&icmp);
    let c = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = eth_header(dst_mac, src_mac, 0x86dd);
    // Version 6; payload length; next header ICMPv6; hop limit 255 (neighbour discovery
    // takes nothing less).
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(len as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// (source MAC, source address, destination address, ICMPv6 type, the message).
pub type Icmp6<'a> = ([u8; 6], Ipv6Addr, Ipv6Addr, u8, &'a [u8]);

/// The parts of an ICMPv6 frame whose checksum is right.
pub fn parse_icmp6(f: &[u8]) -> Option<Icmp6<'_>> {
    if f.len() < 14 + 40 + 4 || f[12..14] != [0x86, 0xdd] || f[14] >> 4 != 6 || f[20] != 58 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([f[18], f[19]]));
    let icmp = f.get(54..54 + len)?;
    let addr = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[o..o + 16]).unwrap());
    let (src, dst) = (addr(22), addr(38));
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(icmp);
    if checksum(&pseudo) != 0 {
        return None;
    }
    Some((
        <[u8; 6]>::try_from(&f[6..12]).unwrap(),
        src,
        dst,
        icmp[0],
        icmp,
    ))
}

/// A neighbour solicitation for `target` from `smac`/`src`, to the target's solicited-node
/// group, with the source's link-layer address (so the target learns it).
pub fn neighbour_solicit(smac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
    ]);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&smac);
    icmp6_frame(
        [0x33, 0x33, 0xff, t[13], t[14], t[15]],
        smac,
        src,
        group,
        icmp,
    )
}

/// A solicited neighbour advertisement "`src` is at `smac`" to `dmac`/`dst`.
pub fn neighbour_advert(smac: [u8; 6], src: Ipv6Addr, dmac: [u8; 6], dst: Ipv6Addr) -> Vec<u8> {
    // Solicited and override.
    let mut icmp = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    icmp.extend_from_slice(&src.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&smac);
    icmp6_frame(dmac, smac, src, dst, icmp)
}

/// Resolves the link-local `target` from the peer with neighbour discovery (the IPv6 ARP);
/// returns the MAC in the guest's advertisement.
pub fn resolve6(w: &mut dyn Wire, target: Ipv6Addr) -> [u8; 6] {
    let ns = neighbour_solicit(PEER_MAC, peer6(), target);
    exchange(
        w,
        &format!("neighbour solicitation for {target}"),
        Some(&ns),
        ANSWER,
        |f| match parse_icmp6(f) {
            Some((smac, _, dst, 136, m))
                if dst == peer6() && m.get(8..24) == Some(&target.octets()[..]) =>
            {
                Some(smac)
            }
            _ => None,
        },
    )
}

/// ICMPv6 echo from the peer to the link-local `target` at `mac`; the reply must come back
/// from `mac`. Returns the round trip.
pub fn ping6(w: &mut dyn Wire, mac: [u8; 6], target: Ipv6Addr, seq: u16) -> Duration {
    let mut echo = vec![128, 0, 0, 0, 0x4b, 0x55];
    echo.extend_from_slice(&seq.to_be_bytes());
    echo.extend_from_slice(ECHO_PAYLOAD);
    let req = icmp6_frame(mac, PEER_MAC, peer6(), target, echo);
    let t0 = Instant::now();
    exchange(
        w,
        &format!("ICMPv6 echo to {target}"),
        Some(&req),
        ANSWER,
        |f| match parse_icmp6(f) {
            Some((smac, src, dst, 129, m))
                if smac == mac
                    && src == target
                    && dst == peer6()
                    && m[4..6] == [0x4b, 0x55]
                    && m[6..8] == seq.to_be_bytes()
                    && &m[8..] == ECHO_PAYLOAD =>
            {
                Some(())
            }
            _ => None,
        },
    );
    t0.elapsed()
}

// ------------------------------------------------------------------ a GRE peer

/// A station on a GRE tunnel that ends on this namespace: a raw IP socket for protocol 47
/// (the test's own GRE, independent of kuml's `netdev/src/tunnel.rs`). It sends Ethernet over
/// GRE (`0x6558`, with `key`) to `far`, and as a raw socket receives a copy of every GRE
/// packet that reaches the namespace, of which it takes those from `far`.
#[derive(Debug)]
pub struct GrePeer {
    sock: UdpSocket,
    far: Ipv4Addr,
    header: [u8; 8],
}

impl GrePeer {
    /// Opens the socket in the calling thread's namespace; with `local`, bound to that
    /// address (the source of what it sends).
    pub fn open(local: Option<Ipv4Addr>, far: Ipv4Addr, key: u32) -> GrePeer {
        // SAFETY: creates a raw socket that the UdpSocket below owns; only bind, send_to and
        // recv_from, the same system calls on any datagram-style socket, are used on it.
        let sock = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 47);
            assert!(
                fd >= 0,
                "TEST CANNOT RUN: raw GRE socket: {}",
                std::io::Error::last_os_error()
            );
            UdpSocket::from_raw_fd(fd)
        };
        if let Some(local) = local {
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(local).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: binds the live socket to a sockaddr_in of its exact size.
            let r = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            assert_eq!(
                r,
                0,
                "bind the GRE peer to {local}: {}",
                std::io::Error::last_os_error()
            );
        }
        let k = key.to_be_bytes();
        // Flags: key present (0x2000), version 0; protocol: transparent Ethernet bridging.
        let header = [0x20, 0x00, 0x65, 0x58, k[0], k[1], k[2], k[3]];
        GrePeer { sock, far, header }
    }
}

impl Wire for GrePeer {
    fn send_frame(&mut self, f: &[u8]) {
        let mut p = self.header.to_vec();
        p.extend_from_slice(f);
        self.sock
            .send_to(&p, SocketAddrV4::new(self.far, 0))
            .expect("send GRE to the far end");
    }

    fn recv_frame(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let n = match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from.ip() == std::net::IpAddr::V4(self.far) => n,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("recv GRE: {e}"),
            };
            // A raw IPv4 socket delivers the IP header.
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            let gre = &buf[ihl.min(n)..n];
            if gre.len() >= 8 + 14 && gre[..8] == self.header {
                return Some(gre[8..].to_vec());
            }
            eprintln!(
                "GRE peer: a packet with another header from {}: {:02x?}",
                self.far,
                &gre[..gre.len().min(8)]
            );
        }
    }
}

/// A peer at the other end of a datagram socket pair (`vec<N>:transport=fd`): one frame per
/// datagram.
#[derive(Debug)]
pub struct DgramPeer(pub std::os::unix::net::UnixDatagram);

impl Wire for DgramPeer {
    fn send_frame(&mut self, f: &[u8]) {
        self.0.send(f).expect("send on the socket pair");
    }

    fn recv_frame(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.0.set_read_timeout(Some(left)).unwrap();
            match self.0.recv(&mut buf) {
                Ok(n) => return Some(buf[..n].to_vec()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv on the socket pair: {e}"),
            }
        }
    }
}

/// From guest user space: `ping` to `host`, then 1 MiB over TCP (busybox `nc`) to a listener
/// on `host` in the namespace, compared byte for byte.
pub fn user_space_ping_and_tcp_to(ns: &Netns, vm: &mut TestVm, host: Ipv4Addr, port: u16) {
    let out = vm.sh_ok(&format!("ping -c 3 -W 20 {host}"), ANSWER);
    eprintln!("{out}");
    let listener =
        ns.run(move || std::net::TcpListener::bind((host, port)).expect("listen in the namespace"));
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("the guest connects");
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut got).expect("read the transfer");
        got
    });
    vm.sh_ok(
        &format!(
            "yes {} | head -c 1048576 | nc {host} {port}",
            pattern_line()
        ),
        ANSWER,
    );
    let got = reader.join().expect("the reader thread");
    assert_eq!(got.len(), 1 << 20, "bytes received from the guest");
    assert!(
        got == pattern(1 << 20),
        "the guest's bytes arrived unchanged"
    );
}
