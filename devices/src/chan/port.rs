//! Listening ports shared by `port:` lines.
//!
//! Every line configured with the same address shares one TCP socket (a [`PortHub`]), bound
//! when the first such line is set up, so that a clash with a server already listening there
//! is reported at start (a program that binds the port later with SO_REUSEADDR and listens
//! first makes the line's listen fail, with a warning naming the port). The socket
//! listens only while at least one line waits for a client (the guest opened the line and no
//! client holds it): until then, and once every line has a client, connections are refused.
//! Each waiting line watches its own duplicate of the socket ([`Waiter`]); when a client
//! connects, the first line to accept it gets the session, the others go on waiting.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use log::{debug, warn};

use super::spec::PortAddr;
use super::sys;

/// The hubs alive in this process, by address.
static HUBS: Mutex<Option<HashMap<PortAddr, Weak<PortHub>>>> = Mutex::new(None);

/// One bound TCP socket shared by the lines configured with its address.
#[derive(Debug)]
pub struct PortHub {
    addr: PortAddr,
    sock: OwnedFd,
    /// Lines waiting for a client; the socket listens while this is not zero.
    waiting: Mutex<usize>,
}

impl PortHub {
    /// The hub of `addr`: the one other lines already share, or a newly bound socket.
    pub fn get(addr: PortAddr) -> io::Result<Arc<PortHub>> {
        let mut hubs = crate::locked(&HUBS);
        let hubs = hubs.get_or_insert_with(HashMap::new);
        hubs.retain(|_, h| h.strong_count() > 0);
        if let Some(hub) = hubs.get(&addr).and_then(Weak::upgrade) {
            return Ok(hub);
        }
        let hub = Arc::new(PortHub {
            addr,
            sock: sys::tcp_bind(addr)?,
            waiting: Mutex::new(0),
        });
        hubs.insert(addr, Arc::downgrade(&hub));
        Ok(hub)
    }

    /// The address the hub is bound to.
    pub fn addr(&self) -> PortAddr {
        self.addr
    }

    fn waiting(&self) -> MutexGuard<'_, usize> {
        crate::locked(&self.waiting)
    }

    /// Registers a line as waiting for a client: the socket listens from now on.
    pub fn wait(self: &Arc<Self>) -> io::Result<Waiter> {
        let fd = sys::dup(self.sock.as_raw_fd())?;
        let mut waiting = self.waiting();
        if *waiting == 0 {
            sys::listen(self.sock.as_raw_fd())?;
            debug!("port {}: listening", self.addr);
        }
        *waiting += 1;
        Ok(Waiter {
            hub: self.clone(),
            fd: Some(Arc::new(fd)),
        })
    }

    fn unwait(&self) {
        let mut waiting = self.waiting();
        *waiting = waiting.saturating_sub(1);
        if *waiting == 0 {
            match sys::stop_listening(self.sock.as_raw_fd()) {
                Ok(()) => debug!("port {}: no line waits, refusing connections", self.addr),
                Err(e) => warn!("port {}: cannot stop listening: {e}", self.addr),
            }
        }
    }
}

/// A line waiting for a client on a [`PortHub`]; dropping it stops the wait.
#[derive(Debug)]
pub struct Waiter {
    hub: Arc<PortHub>,
    /// Shared, so that the event loop can keep it open until it stopped watching it.
    fd: Option<Arc<OwnedFd>>,
}

impl Waiter {
    /// The line's own descriptor of the listening socket, to watch for readability.
    pub fn fd(&self) -> Option<&Arc<OwnedFd>> {
        self.fd.as_ref()
    }

    /// Accepts a client if one is queued (`Ok(None)` when another line took it first).
    pub fn accept(&self) -> io::Result<Option<OwnedFd>> {
        let Some(fd) = self.fd.as_ref() else {
            return Ok(None);
        };
        match sys::accept(fd.as_raw_fd()) {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // The peer gave up before it was accepted: nothing to take.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.hub.unwait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpStream};

    // A port free now (bound by the kernel's choice, then released).
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    }

    fn connect(port: u16) -> io::Result<TcpStream> {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port))
    }

    fn accept_soon(w: &Waiter) -> Option<OwnedFd> {
        for _ in 0..200 {
            if let Some(c) = w.accept().unwrap() {
                return Some(c);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn test_refused_until_a_line_waits_and_after_the_last_stops() {
        let port = free_port();
        let hub = PortHub::get(PortAddr::local(port)).unwrap();
        let e = connect(port).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let w = hub.wait().unwrap();
        let _client = connect(port).unwrap();
        assert!(accept_soon(&w).is_some());
        drop(w);
        let e = connect(port).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        // Waiting again listens again on the same port.
        let w = hub.wait().unwrap();
        let _client = connect(port).unwrap();
        assert!(accept_soon(&w).is_some());
    }

    #[test]
    fn test_lines_on_one_address_share_the_socket_and_clash_elsewhere() {
        let port = free_port();
        let a = PortHub::get(PortAddr::local(port)).unwrap();
        let b = PortHub::get(PortAddr::local(port)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // Two waiting lines: each client goes to one of them, a third is refused once
        // both are taken.
        let wa = a.wait().unwrap();
        let wb = b.wait().unwrap();
        let _c1 = connect(port).unwrap();
        let got_a = accept_soon(&wa);
        assert!(got_a.is_some());
        assert!(wb.accept().unwrap().is_none(), "one client, one line");
        drop(wa);
        let _c2 = connect(port).unwrap();
        assert!(accept_soon(&wb).is_some());
        drop(wb);
        let e = connect(port).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        drop((a, b));
        // Once no line holds it, the port is free again.
        assert!(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
    }

    #[test]
    fn test_a_port_another_server_listens_on_is_refused_at_start() {
        let other = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = other.local_addr().unwrap().port();
        let e = PortHub::get(PortAddr::local(port)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
