//! `port:` lines: telnet sessions on a listening port shared by the lines configured with it
//! (see [`super::port`]).
//!
//! While the guest has the line open and no client is connected, the line waits on the
//! shared listening socket (its input is the line's own descriptor of it); once a client is
//! connected, input and output are the connection, spoken to in telnet (IAC escaped out,
//! negotiation decoded in). When the client leaves, the line waits for the next one.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use log::warn;

use super::handle::Handle;
use super::sys::{self, FdKind};
use super::{port, telnet, ChanRead, Channel};

/// The state of a `port:` channel.
#[derive(Debug)]
pub(super) struct TcpState {
    pub(super) hub: Arc<port::PortHub>,
    pub(super) waiter: Option<port::Waiter>,
    pub(super) guest_open: bool,
    pub(super) decoder: telnet::TelnetDecoder,
}

impl TcpState {
    pub(super) fn new(hub: Arc<port::PortHub>) -> Self {
        TcpState {
            hub,
            waiter: None,
            guest_open: false,
            decoder: telnet::TelnetDecoder::new(),
        }
    }
}

impl Channel {
    /// The guest opened or closed a `port:` line: it waits for a client while open.
    pub(super) fn set_tcp_guest_open(&mut self, open: bool) {
        if let Some(t) = self.tcp.as_mut() {
            t.guest_open = open;
        }
        if open {
            self.start_waiting();
        } else {
            self.stop_waiting();
        }
    }

    /// A `port:` line the guest has open and no client holds starts waiting for one.
    fn start_waiting(&mut self) {
        let connected = self.input.is_some();
        let Some(t) = self.tcp.as_mut() else {
            return;
        };
        if !t.guest_open || connected || t.waiter.is_some() {
            return;
        }
        match t.hub.wait() {
            Ok(w) => t.waiter = Some(w),
            Err(e) => warn!("port {}: cannot listen: {e}", t.hub.addr()),
        }
    }

    fn stop_waiting(&mut self) {
        // The listener's descriptor closes once the event loop stopped watching it.
        drop(self.tcp.as_mut().and_then(|t| t.waiter.take()));
    }

    /// Reads a `port:` line: accepts a client while waiting, decodes telnet once connected,
    /// and goes back to waiting when the client leaves.
    pub(super) fn read_tcp(&mut self, buf: &mut [u8]) -> ChanRead {
        if self.input.is_none() {
            self.accept();
            return ChanRead::WouldBlock;
        }
        match self.read_fd(buf) {
            ChanRead::Data(n) => {
                let mut out = Vec::with_capacity(n);
                if let Some(t) = self.tcp.as_mut() {
                    t.decoder.decode(&buf[..n], &mut out);
                }
                buf[..out.len()].copy_from_slice(&out);
                if out.is_empty() {
                    ChanRead::WouldBlock
                } else {
                    ChanRead::Data(out.len())
                }
            }
            ChanRead::WouldBlock => ChanRead::WouldBlock,
            ChanRead::Closed => {
                self.disconnect();
                ChanRead::WouldBlock
            }
        }
    }

    // A waiting port line's listener is readable: take the client, unless another line on
    // the port took it first.
    fn accept(&mut self) {
        let Some(t) = self.tcp.as_mut() else {
            return;
        };
        let Some(w) = t.waiter.as_ref() else {
            return;
        };
        match w.accept() {
            Ok(Some(conn)) => {
                log::info!("port {}: client connected", t.hub.addr());
                t.decoder = telnet::TelnetDecoder::new();
                // Stop waiting first: once the client hears from us, a port with no other
                // line waiting already refuses the next client.
                self.stop_waiting();
                // Offer echo and character mode; a failure shows up on the next read.
                let _ = sys::write(conn.as_raw_fd(), telnet::NEGOTIATION);
                let h = Arc::new(Handle::owned(conn, FdKind::Socket));
                self.input = Some(h.clone());
                self.output = Some(h);
                self.out_buf.clear();
            }
            Ok(None) => {}
            Err(e) => warn!("port {}: accept failed: {e}", t.hub.addr()),
        }
    }

    // A port line's client left: wait for the next one if the guest has the line open.
    fn disconnect(&mut self) {
        let Some(t) = self.tcp.as_ref() else {
            return;
        };
        log::info!("port {}: client disconnected", t.hub.addr());
        self.input = None;
        self.output = None;
        self.out_buf.clear();
        self.start_waiting();
    }

    /// For a `port:` channel: whether a client is connected.
    pub fn is_connected(&self) -> bool {
        self.tcp.is_some() && self.input.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_line, ChanContext, LineClass};
    use super::*;
    use std::io::{self, Read, Write};

    #[test]
    fn test_port_channel_speaks_telnet_and_relistens() {
        use std::net::{TcpListener, TcpStream};
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = parse_line(&format!("port:{port}")).unwrap().unwrap();
        let mut ch = Channel::open(&spec, LineClass::Serial, 1).unwrap();
        assert_eq!(ch.describe(), format!("port:{port}"));
        let listen_fd = ch.input_fd().unwrap();
        let mut buf = [0u8; 64];
        // Output with no client is dropped.
        ch.write(b"nobody");
        assert_eq!(ch.read(&mut buf), ChanRead::WouldBlock);
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(poll_until(&mut ch, true));
        assert_ne!(ch.input_fd(), Some(listen_fd));
        let mut neg = vec![0u8; telnet::NEGOTIATION.len()];
        client.read_exact(&mut neg).unwrap();
        assert_eq!(neg, telnet::NEGOTIATION);
        assert_eq!(ch.window_size(), None, "no size before the client says one");
        // DO ECHO, the window size (NAWS: 100 x 30), then text.
        client
            .write_all(&[
                telnet::IAC,
                253,
                1,
                telnet::IAC,
                250,
                31,
                0,
                100,
                0,
                30,
                telnet::IAC,
                240,
                b'l',
                b's',
                b'\r',
                b'\n',
            ])
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..1000 {
            if let ChanRead::Data(n) = ch.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            if got.len() >= 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(got, b"ls\r");
        assert_eq!(ch.window_size(), Some((100, 30)));
        ch.write(&[b'a', telnet::IAC]);
        let mut out = [0u8; 3];
        client.read_exact(&mut out).unwrap();
        assert_eq!(out, [b'a', telnet::IAC, telnet::IAC]);
        drop(client);
        assert!(poll_until(&mut ch, false));
        assert!(ch.input_fd().is_some());
        // The line listens again.
        let _second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    }

    // Reads `ch` until it has a client (`connected`) or has none; returns whether it got there.
    fn poll_until(ch: &mut Channel, connected: bool) -> bool {
        let mut buf = [0u8; 16];
        for _ in 0..1000 {
            let _ = ch.read(&mut buf);
            if ch.is_connected() == connected {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn test_port_lines_share_a_port_and_refuse_until_the_guest_opens() {
        use std::net::{TcpListener, TcpStream};
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = || {
            TcpStream::connect(("127.0.0.1", port))
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
        };
        let spec = parse_line(&format!("port:{port}")).unwrap().unwrap();
        let ctx = ChanContext::default();
        let mut a = Channel::prepare(&spec, LineClass::Console, 1, &ctx).unwrap();
        let mut b = Channel::prepare(&spec, LineClass::Console, 2, &ctx).unwrap();
        // Bound, but nobody waits: refused.
        assert!(refused());
        assert_eq!(a.input_fd(), None);
        a.set_guest_open(true).unwrap();
        b.set_guest_open(true).unwrap();
        let mut c1 = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let first_a = poll_until(&mut a, true);
        let (first, second) = if first_a {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        assert!(first_a || poll_until(first, true));
        assert!(!second.is_connected());
        let mut c2 = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(poll_until(second, true));
        // Both lines are taken: a third client is refused.
        assert!(refused());
        // Each client talks to its own line.
        let mut neg = vec![0u8; telnet::NEGOTIATION.len()];
        c1.read_exact(&mut neg).unwrap();
        c2.read_exact(&mut neg).unwrap();
        first.write(b"one");
        second.write(b"two");
        let mut got = [0u8; 3];
        c1.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one");
        c2.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"two");
        // A client that leaves frees its line for the next one.
        drop(c1);
        assert!(poll_until(first, false));
        let _c3 = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(poll_until(first, true));
        // The guest closing a line it has no client for stops the wait.
        drop(c2);
        poll_until(second, false);
        second.set_guest_open(false).unwrap();
        assert!(refused());
    }
}
