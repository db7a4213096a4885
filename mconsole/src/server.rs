//! The VM side of mconsole: a non-blocking unix datagram socket at
//! `<uml_dir>/<umid>/mconsole`, polled by the VMM's event loop.
//!
//! Reliability: UML drops reply packets when the client's receive queue is full
//! (`net.unix.max_dgram_qlen`, default 10), which hangs `uml_mconsole` (reference §3.8).
//! This server never drops a packet for a live client: when `sendto` fails with
//! `EAGAIN`/`ENOBUFS`, the rest of that client's packets wait in a per-client FIFO, and an
//! internal timer retries them (after [`RETRY_INTERVAL`], doubling up to [`MAX_RETRY_INTERVAL`]
//! while no client makes progress) until the client has read them. Order is
//! kept per client. A queue is given up only if the client's socket is gone
//! (`ECONNREFUSED`/`ENOENT`), if it made no progress for [`STALL_TIMEOUT`], or beyond
//! [`MAX_QUEUED_PACKETS`] (a client that sends requests but never reads replies). All clients
//! together hold at most [`MAX_QUEUED_TOTAL`] packets (about 34 MiB): a client that sends from
//! many bound addresses and reads none cannot make the queues grow without bound.
//!
//! Polling: [`Server::as_raw_fd`] is an internal epoll fd that is readable when a request
//! arrived or a retry is due; on readability call [`Server::recv`] until it returns
//! `Ok(None)`. Unsent packets can also be pushed with [`Server::flush`].

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, warn};
use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use crate::command::{self, Command, Parsed};
use crate::protocol::{self, Reply, REQUEST_LEN};

/// How often queued reply packets are retried.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(2);
/// Longest retry interval (back-off while no queued client reads).
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_millis(64);
/// A client whose queue makes no progress for this long is given up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most packets queued for one client (8 MiB of replies).
pub const MAX_QUEUED_PACKETS: usize = 16_384;
/// Most packets queued for all clients together.
pub const MAX_QUEUED_TOTAL: usize = 65_536;
/// Most datagrams handled by one [`Server::recv`] call that yield no command, so a flood
/// of bad packets cannot starve the event loop (the fd stays readable).
const MAX_SILENT_DATAGRAMS: usize = 256;

/// Errors of the mconsole server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket could not be created or bound.
    #[error("cannot bind the mconsole socket {path:?}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Setting up the socket, epoll or timer failed.
    #[error("cannot set up the mconsole server")]
    Setup(#[source] io::Error),
    /// Receiving from the socket failed.
    #[error("mconsole receive failed")]
    Recv(#[source] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AddrKey {
    Path(PathBuf),
    Abstract(Vec<u8>),
    Unnamed,
}

/// The address a request came from, where its replies go. It stays valid as long as the
/// client keeps its socket, so a reply may be sent long after the request (deferred
/// `config`/`remove`).
#[derive(Debug, Clone)]
pub struct ClientAddr {
    key: AddrKey,
    addr: SocketAddr,
}

impl ClientAddr {
    fn new(addr: SocketAddr) -> ClientAddr {
        let key = if let Some(p) = addr.as_pathname() {
            AddrKey::Path(p.to_path_buf())
        } else if let Some(a) = addr.as_abstract_name() {
            AddrKey::Abstract(a.to_vec())
        } else {
            AddrKey::Unnamed
        };
        ClientAddr { key, addr }
    }

    /// An unbound client: replies cannot reach it (they are dropped with a debug log).
    pub fn is_unnamed(&self) -> bool {
        self.key == AddrKey::Unnamed
    }
}

impl PartialEq for ClientAddr {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for ClientAddr {}
impl Hash for ClientAddr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

/// A request for the VMM.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Where the reply goes: pass it to [`Server::reply`].
    pub client: ClientAddr,
    /// The command.
    pub command: Command,
}

#[derive(Debug)]
struct Queue {
    packets: VecDeque<Vec<u8>>,
    last_progress: Instant,
}

enum SendOutcome {
    Sent,
    Full,
    Gone(io::Error),
    Failed(io::Error),
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Commands delivered by [`Server::recv`].
    pub commands: u64,
    /// Requests answered by the server itself (malformed, unknown, stop/go state).
    pub answered_locally: u64,
    /// Reply packets handed to the kernel.
    pub packets_sent: u64,
    /// Packets that had to wait in a queue (the client's receive queue was full).
    pub packets_queued: u64,
    /// Packets given up (client gone, stalled, over the cap, unnamed, send error).
    pub packets_dropped: u64,
}

/// The mconsole server socket.
#[derive(Debug)]
pub struct Server {
    sock: UnixDatagram,
    path: PathBuf,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    retry_interval: Duration,
    stats: ServerStats,
    queues: HashMap<ClientAddr, Queue>,
    /// Packets in `queues`, all clients together.
    queued: usize,
    stopped: bool,
}

const TOKEN_SOCKET: u64 = 0;
const TOKEN_TIMER: u64 = 1;

impl Server {
    /// Bind the server socket at `path` (normally `UmidDir::socket_path()`), replacing a
    /// stale socket file there, non-blocking and close-on-exec.
    pub fn bind(path: impl AsRef<Path>) -> Result<Server, ServerError> {
        let path = path.as_ref().to_path_buf();
        let bind_err = |source| ServerError::Bind {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => debug!("removed stale mconsole socket {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let sock = UnixDatagram::bind(&path).map_err(bind_err)?;
        sock.set_nonblocking(true).map_err(ServerError::Setup)?;
        let epoll = Epoll::new().map_err(ServerError::Setup)?;
        let timer = TimerFd::new()
            .map_err(|e| ServerError::Setup(io::Error::from_raw_os_error(e.errno())))?;
        epoll
            .ctl(
                ControlOperation::Add,
                sock.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_SOCKET),
            )
            .map_err(ServerError::Setup)?;
        epoll
            .ctl(
                ControlOperation::Add,
                timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_TIMER),
            )
            .map_err(ServerError::Setup)?;
        // UML's console line (kuml prints target "uml" on stdout, as UML's con0 shows it).
        log::info!(target: "uml", "mconsole (version 2) initialized on {}", path.display());
        Ok(Server {
            sock,
            path,
            epoll,
            timer,
            timer_armed: false,
            retry_interval: RETRY_INTERVAL,
            stats: ServerStats::default(),
            queues: HashMap::new(),
            queued: 0,
            stopped: false,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a `stop` was delivered and no `go` since.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Override the stopped state (e.g. after a reboot the VM runs again).
    pub fn set_stopped(&mut self, stopped: bool) {
        self.stopped = stopped;
    }

    /// Counters since the server was bound.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Reply packets still waiting for their clients.
    pub fn queued_packets(&self) -> usize {
        self.queued
    }

    /// Receive the next command, or `Ok(None)` when nothing more is ready now.
    ///
    /// Errors UML answers by itself are answered here and not returned: the version-0
    /// text for a bad magic, `Request too large`, `Unknown command`,
    /// `Bad configuration option`, `Bad remove option`, `Already stopped` (a `stop` while
    /// stopped) and `Not stopped` (a `go` while running). A request with a version other
    /// than 2 first gets `This driver only supports version 2 clients` and is then
    /// returned anyway, as UML does. Delivering [`Command::Stop`] marks the server stopped
    /// (the VMM must pause and reply [`Reply::stopped`]); delivering [`Command::Go`] marks
    /// it running. Requests keep being served while stopped. Due retries are sent first.
    pub fn recv(&mut self) -> Result<Option<Incoming>, ServerError> {
        self.flush();
        let mut buf = [0u8; REQUEST_LEN];
        for _ in 0..MAX_SILENT_DATAGRAMS {
            let (n, addr) = match self.sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Recv(e)),
            };
            let client = ClientAddr::new(addr);
            let request = match protocol::decode_request(&buf[..n]) {
                Ok(r) => r,
                Err(e) => {
                    debug!("mconsole: refused request: {e}");
                    self.stats.answered_locally += 1;
                    self.send_packets(&client, vec![e.reply_datagram()]);
                    continue;
                }
            };
            if request.version_mismatch() {
                self.reply(&client, &Reply::error(protocol::BAD_VERSION_TEXT));
            }
            let local = match command::parse(&request.text) {
                Parsed::Reply(r) => r,
                Parsed::Command(Command::Stop) if self.stopped => {
                    Reply::error(command::ALREADY_STOPPED)
                }
                Parsed::Command(Command::Go) if !self.stopped => Reply::error(command::NOT_STOPPED),
                Parsed::Command(command) => {
                    self.stats.commands += 1;
                    match command {
                        Command::Stop => self.stopped = true,
                        Command::Go => self.stopped = false,
                        _ => {}
                    }
                    return Ok(Some(Incoming { client, command }));
                }
            };
            self.stats.answered_locally += 1;
            self.reply(&client, &local);
        }
        Ok(None)
    }

    /// Send one reply (split into UML's packets) to `client`. Packets that cannot be sent
    /// now are queued (see the module docs); this never blocks.
    pub fn reply(&mut self, client: &ClientAddr, reply: &Reply) {
        self.send_packets(client, protocol::encode_reply(reply));
    }

    /// Send several replies in order (e.g. `proc`: `"\n"`+more, data+more, `""`).
    pub fn reply_all(&mut self, client: &ClientAddr, replies: &[Reply]) {
        let packets = replies.iter().flat_map(protocol::encode_reply).collect();
        self.send_packets(client, packets);
    }

    fn send_one(&self, client: &ClientAddr, packet: &[u8]) -> SendOutcome {
        loop {
            return match self.sock.send_to_addr(packet, &client.addr) {
                Ok(_) => SendOutcome::Sent,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    SendOutcome::Full
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED | libc::ENOENT | libc::ENOTDIR)
                    ) =>
                {
                    SendOutcome::Gone(e)
                }
                Err(e) => SendOutcome::Failed(e),
            };
        }
    }

    /// Send as much of `q` as the client takes now. Returns `(sent, keep)`: `keep` is
    /// false when the queue is finished or given up (then `q` holds the dropped rest).
    fn drain(&self, client: &ClientAddr, q: &mut Queue, now: Instant) -> (u64, bool) {
        let mut sent = 0;
        while let Some(p) = q.packets.front() {
            match self.send_one(client, p) {
                SendOutcome::Sent => {
                    q.packets.pop_front();
                    q.last_progress = now;
                    sent += 1;
                }
                SendOutcome::Full => {
                    if now.duration_since(q.last_progress) <= STALL_TIMEOUT {
                        return (sent, true);
                    }
                    warn!(
                        "mconsole: client {:?} read nothing for {:?}, dropping {} packets",
                        client.addr,
                        STALL_TIMEOUT,
                        q.packets.len()
                    );
                    return (sent, false);
                }
                SendOutcome::Gone(e) => {
                    debug!("mconsole: client {:?} is gone: {e}", client.addr);
                    return (sent, false);
                }
                SendOutcome::Failed(e) => {
                    // Any other error (EPERM, ...): this client cannot be served.
                    warn!("mconsole: reply to {:?} failed: {e}", client.addr);
                    return (sent, false);
                }
            }
        }
        (sent, false)
    }

    fn send_packets(&mut self, client: &ClientAddr, packets: Vec<Vec<u8>>) {
        let count = packets.len() as u64;
        if client.is_unnamed() {
            debug!("mconsole: client has no address, dropping {count} reply packets");
            self.stats.packets_dropped += count;
            return;
        }
        let now = Instant::now();
        let mut q = match self.queues.remove(client) {
            Some(q) if !self.room_for(q.packets.len(), packets.len()) => {
                warn!(
                    "mconsole: client {:?} does not read its replies, dropping a reply",
                    client.addr
                );
                self.stats.packets_dropped += count;
                self.queues.insert(client.clone(), q);
                return;
            }
            Some(q) => {
                self.queued -= q.packets.len();
                q
            }
            None => Queue {
                packets: VecDeque::new(),
                last_progress: now,
            },
        };
        // Behind what is already waiting, to keep the order.
        q.packets.extend(packets);
        let (sent, mut keep) = self.drain(client, &mut q, now);
        self.stats.packets_sent += sent;
        let left = q.packets.len() as u64;
        if keep && !self.room_for(0, q.packets.len()) {
            // What a client without a queue could not take now does not fit (a reply of more
            // than a client's cap, or the queues of all clients are full).
            warn!(
                "mconsole: too many reply packets wait for their clients, dropping {left} for {:?}",
                client.addr
            );
            keep = false;
        }
        if keep {
            self.queued += q.packets.len();
            self.stats.packets_queued += left.min(count);
            let was_idle = self.queues.is_empty();
            self.queues.insert(client.clone(), q);
            if was_idle {
                self.retry_interval = RETRY_INTERVAL;
                self.update_timer();
            }
        } else {
            self.stats.packets_dropped += left;
        }
    }

    // Whether a client with `has` queued packets may queue `more`: within its own cap and
    // the cap of all clients (`self.queued` counts every queued packet but the `more`).
    fn room_for(&self, has: usize, more: usize) -> bool {
        has + more <= MAX_QUEUED_PACKETS && self.queued + more <= MAX_QUEUED_TOTAL
    }

    /// Try to send queued packets now. [`Server::recv`] calls it first; call it yourself
    /// only if the loop does not call `recv` when the fd is readable.
    pub fn flush(&mut self) {
        if self.queues.is_empty() {
            if self.timer_armed {
                self.update_timer();
            }
            return;
        }
        let now = Instant::now();
        let (mut sent, mut dropped) = (0u64, 0u64);
        let mut queues = std::mem::take(&mut self.queues);
        queues.retain(|client, q| {
            let (n, keep) = self.drain(client, q, now);
            sent += n;
            if !keep {
                dropped += q.packets.len() as u64;
            }
            keep
        });
        self.queues = queues;
        self.queued = self.queues.values().map(|q| q.packets.len()).sum();
        self.stats.packets_sent += sent;
        self.stats.packets_dropped += dropped;
        // Back off while nobody reads; retry fast again after progress.
        self.retry_interval = if sent > 0 {
            RETRY_INTERVAL
        } else {
            (self.retry_interval * 2).min(MAX_RETRY_INTERVAL)
        };
        self.update_timer();
    }

    /// Arm the retry timer while packets wait, disarm it otherwise. Setting the timer
    /// also clears an expiry that was not read, so the epoll fd stops being readable.
    fn update_timer(&mut self) {
        let res = if self.queues.is_empty() {
            self.timer_armed = false;
            self.timer.clear()
        } else {
            self.timer_armed = true;
            self.timer.reset(self.retry_interval, None)
        };
        if let Err(e) = res {
            warn!("mconsole: retry timer: {e}");
        }
    }

    /// Wait up to `timeout` for the fd to become ready (for simple loops and tests).
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut events = [EpollEvent::default(); 2];
        loop {
            match self.epoll.wait(ms, &mut events) {
                Ok(n) => return Ok(n > 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for Server {
    /// An epoll fd: readable when a request or a due retry is waiting.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}
