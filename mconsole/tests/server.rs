//! The server on raw sockets: malformed packets get UML's error replies, nothing is
//! dropped under bursts, queued packets are retried and given up only for dead clients.
#![allow(clippy::tests_outside_test_module)] // integration tests: the crate is the test module

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{raw_client, recv, TestVm, VERSION_TEXT};
use mconsole::protocol::{decode_reply, encode_request, ReplyPacket, MAGIC};
use mconsole::{Command, Reply, Server};

fn packet(err: u32, more: bool, text: &str) -> ReplyPacket {
    ReplyPacket {
        err,
        more,
        text: text.as_bytes().to_vec(),
    }
}

#[test]
fn malformed_requests_get_umls_error_replies() {
    let vm = TestVm::start("m1");
    let c = raw_client();
    let send = |b: &[u8]| {
        c.send_to(b, &vm.socket).unwrap();
    };
    // Wrong magic: the raw 63-byte version-0 text, no header, no NUL.
    let mut r = encode_request(b"version");
    r[0..4].copy_from_slice(&0x1234_5678u32.to_ne_bytes());
    send(&r);
    assert_eq!(
        recv(&c),
        b"ERR Version 0 mconsole clients are not supported by this driver"
    );
    // Datagrams too short to hold a magic: the same.
    send(&[]);
    assert_eq!(recv(&c).len(), 63);
    send(&[0xbe, 0xba]);
    assert_eq!(recv(&c).len(), 63);
    // len >= 512: "Request too large", err 1, one 30-byte datagram.
    let mut r = encode_request(b"version");
    r[8..12].copy_from_slice(&512u32.to_ne_bytes());
    send(&r);
    let d = recv(&c);
    assert_eq!(d.len(), 30);
    assert_eq!(
        decode_reply(&d).unwrap(),
        packet(1, false, "Request too large")
    );
    r[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
    send(&r);
    assert_eq!(decode_reply(&recv(&c)).unwrap().text, b"Request too large");
    // Version 3 (and 1): the error, then the command is still processed.
    for v in [1u32, 3] {
        let mut r = encode_request(b"version");
        r[4..8].copy_from_slice(&v.to_ne_bytes());
        send(&r);
        assert_eq!(
            decode_reply(&recv(&c)).unwrap(),
            packet(1, false, "This driver only supports version 2 clients")
        );
        assert_eq!(
            decode_reply(&recv(&c)).unwrap(),
            packet(0, false, VERSION_TEXT)
        );
    }
    // Truncated: magic only -> version 0 (error) and len 0 -> Unknown command.
    send(&MAGIC.to_ne_bytes());
    assert_eq!(
        decode_reply(&recv(&c)).unwrap().text,
        b"This driver only supports version 2 clients"
    );
    assert_eq!(
        decode_reply(&recv(&c)).unwrap(),
        packet(1, false, "Unknown command")
    );
    // A short request (header + text, no padding) is fine; len past the end is cut.
    let r = encode_request(b"version");
    send(&r[..19]);
    assert_eq!(
        decode_reply(&recv(&c)).unwrap(),
        packet(0, false, VERSION_TEXT)
    );
    send(&r[..15]);
    assert_eq!(
        decode_reply(&recv(&c)).unwrap(),
        packet(1, false, "Unknown command")
    );
    // Oversized datagram: only the first 524 bytes count.
    let mut big = encode_request(b"version");
    big.extend_from_slice(&[0xAA; 1000]);
    send(&big);
    assert_eq!(
        decode_reply(&recv(&c)).unwrap(),
        packet(0, false, VERSION_TEXT)
    );
    // Leading spaces, empty text: Unknown command. Exact empty-reply layout.
    send(&encode_request(b"  version"));
    assert_eq!(decode_reply(&recv(&c)).unwrap().text, b"Unknown command");
    send(&encode_request(b""));
    assert_eq!(decode_reply(&recv(&c)).unwrap().text, b"Unknown command");
    send(&encode_request(b"halt"));
    assert_eq!(recv(&c), [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    // Wire bytes of an errno reply (uml-behaviour §4.1).
    send(&encode_request(b"remove ubd7"));
    let d = recv(&c);
    assert_eq!(
        &d[..12],
        &[0xed, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x15, 0, 0, 0]
    );
    // proc: "\n" more=1, data more=1, "" more=0.
    send(&encode_request(b"proc uptime"));
    assert_eq!(decode_reply(&recv(&c)).unwrap(), packet(0, true, "\n"));
    assert_eq!(
        decode_reply(&recv(&c)).unwrap(),
        packet(0, true, "137.74 135.81\n")
    );
    assert_eq!(recv(&c), [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    // help: 524 + 224 bytes.
    send(&encode_request(b"help"));
    assert_eq!(recv(&c).len(), 524);
    assert_eq!(recv(&c).len(), 224);
    // The server survived all of it.
    send(&encode_request(b"version"));
    assert_eq!(
        decode_reply(&recv(&c)).unwrap().text,
        VERSION_TEXT.as_bytes()
    );
}

#[test]
fn unbound_client_is_served_without_reply() {
    let vm = TestVm::start("m2");
    let c = UnixDatagram::unbound().unwrap();
    c.send_to(&encode_request(b"cad"), &vm.socket).unwrap();
    let start = std::time::Instant::now();
    while !vm.seen().contains(&Command::Cad) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cad never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // And the server still answers bound clients.
    let b = raw_client();
    b.send_to(&encode_request(b"version"), &vm.socket).unwrap();
    assert_eq!(
        decode_reply(&recv(&b)).unwrap().text,
        VERSION_TEXT.as_bytes()
    );
}

#[test]
fn burst_of_10000_requests_from_several_clients_gets_every_reply() {
    let mut vm = TestVm::start("m3");
    const CLIENTS: usize = 5;
    const PER_CLIENT: usize = 2000;
    const WINDOW: usize = 40; // > net.unix.max_dgram_qlen: forces EAGAIN and queueing
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let path = vm.socket.clone();
            std::thread::spawn(move || {
                let c = raw_client();
                let req = |i: usize| encode_request(format!("proc echo{t}-{i}").as_bytes());
                let mut sent = 0;
                for _ in 0..WINDOW {
                    c.send_to(&req(sent), &path).unwrap();
                    sent += 1;
                }
                for i in 0..PER_CLIENT {
                    let p = decode_reply(&recv(&c)).unwrap();
                    assert_eq!(p.text, format!("echo{t}-{i}").as_bytes(), "client {t}");
                    assert!(!p.more);
                    if sent < PER_CLIENT {
                        c.send_to(&req(sent), &path).unwrap();
                        sent += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let echoes = vm
        .seen()
        .iter()
        .filter(|c| matches!(c, Command::Proc(p) if p.starts_with("echo")))
        .count();
    assert_eq!(echoes, CLIENTS * PER_CLIENT);
    let stats = vm.finish();
    eprintln!("server stats after the burst: {stats:?}");
    assert_eq!(stats.packets_dropped, 0);
    assert_eq!(stats.commands, (CLIENTS * PER_CLIENT) as u64);
}

#[test]
fn full_client_queue_is_retried_then_dropped_when_client_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::bind(tmp.path().join("mconsole")).unwrap();
    let c = raw_client();
    c.send_to(&encode_request(b"proc big"), server.path())
        .unwrap();
    assert!(server.wait(Some(Duration::from_secs(5))).unwrap());
    let inc = server.recv().unwrap().expect("a request");
    assert_eq!(inc.command, Command::Proc("big".into()));
    // 40 packets to a client that reads nothing: the queue (qlen 10) fills.
    let text = "y".repeat(511 * 40);
    server.reply(&inc.client, &Reply::ok(text.clone()));
    let queued = server.queued_packets();
    assert!(queued >= 20, "only {queued} packets queued");
    // The retry timer makes the fd readable; recv() retries and returns nothing.
    assert!(server.wait(Some(Duration::from_secs(1))).unwrap());
    assert!(server.recv().unwrap().is_none());
    assert_eq!(server.queued_packets(), queued);
    // A second reply keeps its place behind the first.
    server.reply(&inc.client, &Reply::ok("second"));
    // The client reads: everything arrives, in order.
    let mut got = Vec::new();
    let mut packets = 0;
    loop {
        let reader = std::thread::scope(|s| {
            let h = s.spawn(|| recv(&c));
            while !h.is_finished() {
                if server.wait(Some(Duration::from_millis(10))).unwrap() {
                    assert!(server.recv().unwrap().is_none());
                }
            }
            h.join().unwrap()
        });
        let p = decode_reply(&reader).unwrap();
        packets += 1;
        got.extend_from_slice(&p.text);
        if !p.more {
            break;
        }
    }
    assert_eq!(packets, 40);
    assert_eq!(got, text.as_bytes());
    while server.queued_packets() > 0 {
        server.wait(Some(Duration::from_millis(10))).unwrap();
        server.flush();
    }
    assert_eq!(decode_reply(&recv(&c)).unwrap().text, b"second");
    // Once nothing is queued the timer is off: the fd is quiet.
    assert!(!server.wait(Some(Duration::from_millis(50))).unwrap());

    // A client that vanishes with packets queued: the queue is dropped.
    let c2 = raw_client();
    c2.send_to(&encode_request(b"proc big"), server.path())
        .unwrap();
    server.wait(Some(Duration::from_secs(5))).unwrap();
    let inc = server.recv().unwrap().expect("a request");
    server.reply(&inc.client, &Reply::ok(text));
    assert!(server.queued_packets() > 0);
    drop(c2);
    server.wait(Some(Duration::from_secs(1))).unwrap();
    assert!(server.recv().unwrap().is_none());
    assert_eq!(server.queued_packets(), 0);
    assert!(!server.wait(Some(Duration::from_millis(50))).unwrap());
    let stats = server.stats();
    assert_eq!(stats.commands, 2);
    assert!(stats.packets_queued >= 20);
    assert!(stats.packets_dropped > 0);
}

#[test]
fn deferred_reply_token_stays_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::bind(tmp.path().join("mconsole")).unwrap();
    let c = raw_client();
    c.send_to(&encode_request(b"config ubd1=/srv/a.img"), server.path())
        .unwrap();
    server.wait(Some(Duration::from_secs(5))).unwrap();
    let inc = server.recv().unwrap().unwrap();
    let Command::Config(spec) = &inc.command else {
        panic!("{:?}", inc.command)
    };
    assert_eq!(spec.text, "ubd1=/srv/a.img");
    // Other requests come and go meanwhile.
    c.send_to(&encode_request(b"bogus"), server.path()).unwrap();
    server.wait(Some(Duration::from_secs(5))).unwrap();
    assert!(server.recv().unwrap().is_none());
    assert_eq!(decode_reply(&recv(&c)).unwrap().text, b"Unknown command");
    let token = inc.client.clone();
    drop(inc);
    server.reply(&token, &Reply::ok(""));
    assert_eq!(decode_reply(&recv(&c)).unwrap(), packet(0, false, ""));
}

#[test]
fn stop_state_is_tracked_by_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::bind(tmp.path().join("mconsole")).unwrap();
    let c = raw_client();
    let mut ask = |text: &[u8]| -> Option<Command> {
        c.send_to(&encode_request(text), tmp.path().join("mconsole"))
            .unwrap();
        server.wait(Some(Duration::from_secs(5))).unwrap();
        let got = server.recv().unwrap().map(|i| {
            server.reply(&i.client, &Reply::ok("x"));
            i.command
        });
        let _ = recv(&c);
        got
    };
    assert_eq!(ask(b"go"), None);
    assert_eq!(ask(b"stop"), Some(Command::Stop));
    assert_eq!(ask(b"stop"), None);
    assert_eq!(ask(b"version"), Some(Command::Version));
    assert_eq!(ask(b"go"), Some(Command::Go));
    assert_eq!(ask(b"go"), None);
    assert!(!server.is_stopped());
}

#[test]
fn socket_file_is_removed_on_drop_and_stale_one_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mconsole");
    std::fs::write(&path, b"stale").unwrap();
    let server = Server::bind(&path).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() == 0);
    drop(server);
    assert!(!path.exists());
}

#[test]
fn random_datagrams_do_not_disturb_the_server() {
    let vm = TestVm::start("m4");
    let junk = UnixDatagram::unbound().unwrap();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..500 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 600) as usize;
        let mut d: Vec<u8> = (0..len).map(|j| (seed >> (j % 56)) as u8).collect();
        if i % 2 == 0 && d.len() >= 4 {
            d[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
        }
        junk.send_to(&d, &vm.socket).unwrap();
    }
    let c = raw_client();
    c.send_to(&encode_request(b"version"), &vm.socket).unwrap();
    let reply = decode_reply(&recv(&c)).unwrap();
    assert_eq!(reply.text, VERSION_TEXT.as_bytes());
}

// Review S2: a local client sending from many bound addresses and reading nothing made the
// server queue up to MAX_QUEUED_PACKETS (then 65 536, about 34 MiB) per address, for any
// number of addresses. All queues together are bounded now.
#[test]
fn clients_that_never_read_cannot_grow_the_queues_without_bound() {
    use mconsole::server::{MAX_QUEUED_PACKETS, MAX_QUEUED_TOTAL};
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::bind(tmp.path().join("mconsole")).unwrap();
    // About 2 000 packets per reply.
    let reply = Reply::ok("z".repeat(1 << 20));
    let per_reply = mconsole::protocol::encode_reply(&reply).len();
    let ask = |server: &mut Server, c: &UnixDatagram| {
        c.send_to(&encode_request(b"version"), server.path())
            .unwrap();
        assert!(server.wait(Some(Duration::from_secs(5))).unwrap());
        server.recv().unwrap().expect("a request").client
    };

    // One client: its own cap.
    let c = raw_client();
    let client = ask(&mut server, &c);
    for _ in 0..MAX_QUEUED_PACKETS / per_reply + 2 {
        server.reply(&client, &reply);
    }
    let queued = server.queued_packets();
    assert!(queued <= MAX_QUEUED_PACKETS, "{queued}");
    assert!(queued > MAX_QUEUED_PACKETS - per_reply, "{queued}");
    drop(c);
    server.flush();
    assert_eq!(server.queued_packets(), 0);

    // Many clients: the cap of all of them.
    let clients: Vec<UnixDatagram> = (0..40).map(|_| raw_client()).collect();
    assert!(per_reply * clients.len() > MAX_QUEUED_TOTAL);
    for c in &clients {
        let client = ask(&mut server, c);
        server.reply(&client, &reply);
        assert!(server.queued_packets() <= MAX_QUEUED_TOTAL);
    }
    assert!(server.queued_packets() > MAX_QUEUED_TOTAL - per_reply);
    let stats = server.stats();
    assert!(stats.packets_dropped > 0, "{stats:?}");
    // The clients go: their queues are dropped.
    drop(clients);
    server.flush();
    assert_eq!(server.queued_packets(), 0);
}
