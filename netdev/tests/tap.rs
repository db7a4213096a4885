//! TapBackend in a private network namespace: the host kernel exchanges ARP and UDP with a
//! "guest" that the test plays through the backend.
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

mod common;

use std::net::Ipv4Addr;

use common::{in_fresh_netns, ip, ip_output, udp_exchange};
use netdev::{Backend, TapBackend, TapConfig};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

#[test]
fn created_tap_gets_uml_net_host_side_and_carries_frames() {
    in_fresh_netns(|| {
        let gate = Ipv4Addr::new(10, 0, 77, 254);
        let mut tap = TapBackend::open(&TapConfig {
            dev: None,
            gate: Some(gate),
        })
        .unwrap();
        let name = tap.name().to_string();
        assert!(name.starts_with("tap"), "{name}");
        let addr = ip_output(&format!("-o -4 addr show dev {name}"));
        assert!(addr.contains("10.0.77.254/32"), "{addr}");
        let link = ip_output(&format!("link show dev {name}"));
        assert!(link.contains(",UP"), "{link}");
        // The guest announces its address (gratuitous ARP); kuml then routes it to the tap,
        // as `uml_net 4 add <tap> <guest ip>` did. A spoofed foreign address is not routed.
        tap.send(&common::arp_announce(GUEST_MAC, [10, 9, 9, 9]))
            .unwrap();
        tap.send(&common::arp_announce(GUEST_MAC, [10, 0, 77, 1]))
            .unwrap();
        let routes = ip_output(&format!("-4 route show dev {name}"));
        assert!(routes.contains("10.0.77.1 "), "{routes}");
        assert!(!routes.contains("10.9.9.9"), "{routes}");
        udp_exchange(&mut tap, GUEST_MAC, Ipv4Addr::new(10, 0, 77, 1), gate);
        drop(tap);
        // Not persistent: the tap goes away with the backend.
        // (Unregistering is asynchronous: allow it a moment.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while ip_output("-o link").contains(&name) {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} outlived its backend"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
}

#[test]
fn existing_tap_is_opened_by_name_without_host_changes() {
    in_fresh_netns(|| {
        ip("tuntap add dev kumltap0 mode tap");
        ip("addr add 10.0.78.254/24 dev kumltap0");
        ip("link set kumltap0 up");
        let spec = netdev::parse_net_spec("tuntap,kumltap0,,10.9.9.9").unwrap();
        let netdev::Transport::Tap(cfg) = &spec.transport else {
            panic!("{spec:?}")
        };
        let mut tap = TapBackend::open(cfg).unwrap();
        assert_eq!(tap.name(), "kumltap0");
        let addr = ip_output("-o -4 addr show dev kumltap0");
        assert!(
            !addr.contains("10.9.9.9"),
            "gate applied to a fixed tap: {addr}"
        );
        udp_exchange(
            &mut tap,
            GUEST_MAC,
            Ipv4Addr::new(10, 0, 78, 1),
            Ipv4Addr::new(10, 0, 78, 254),
        );
        // Nonblocking: nothing pending now.
        let mut buf = vec![0u8; 2048];
        loop {
            match tap.recv(&mut buf) {
                Ok(_) => continue, // IPv6 noise
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
                    break;
                }
            }
        }
    });
}

/// Drops CAP_NET_ADMIN from the calling thread's effective set (capabilities are per thread;
/// the thread is the test's own namespace thread).
fn drop_cap_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut hdr = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes one header and two data structs, which we pass live and
    // correctly sized (version 3 layout).
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: capset reads the same live structures.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn creating_a_tap_without_cap_net_admin_is_a_clear_error() {
    in_fresh_netns(|| {
        drop_cap_net_admin();
        let err = TapBackend::open(&TapConfig {
            dev: None,
            gate: Some(Ipv4Addr::new(10, 0, 79, 254)),
        })
        .unwrap_err();
        assert!(
            matches!(err, netdev::TapError::NotPermitted { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("needs root"), "{err}");
    });
}

/// A persistent tap whose last user turned checksum and segmentation offload on (QEMU does,
/// with a virtio-net header on its descriptor): kuml reads frames without that header, so on
/// opening the tap it turns them off again; the host stack then never hands it 64 KiB
/// packets or unfinished checksums.
#[test]
fn opening_a_tap_turns_off_the_offloads_its_last_user_left_on() {
    in_fresh_netns(|| {
        ip("tuntap add tapoff mode tap");
        let last_user = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        // SAFETY: ifreq is plain old data; TUNSETIFF and TUNSETOFFLOAD get a valid ifreq and
        // a value on a descriptor owned by `last_user`.
        unsafe {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(b"tapoff") {
                *d = *s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
            use std::os::fd::AsRawFd;
            let fd = last_user.as_raw_fd();
            assert_eq!(libc::ioctl(fd, libc::TUNSETIFF, &mut ifr), 0, "TUNSETIFF");
            let on = (libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6) as libc::c_ulong;
            assert_eq!(libc::ioctl(fd, libc::TUNSETOFFLOAD, on), 0, "TUNSETOFFLOAD");
        }
        drop(last_user);
        assert_eq!(offload("tapoff", "tcp-segmentation-offload"), "on");
        let tap = TapBackend::open_named("tapoff").unwrap();
        assert_eq!(offload("tapoff", "tcp-segmentation-offload"), "off");
        assert_eq!(offload("tapoff", "tx-checksumming"), "off");
        drop(tap);
    });
}

/// An offload's state (`on`/`off`) as `ethtool -k` shows it.
fn offload(dev: &str, feature: &str) -> String {
    let out = std::process::Command::new("ethtool")
        .args(["-k", dev])
        .output()
        .expect("ethtool (resources/setup-host.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{feature}: ")))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {feature} in ethtool -k {dev}:\n{text}"))
        .to_owned()
}
