//! UML channels: where a console's or a serial line's bytes come from and go to.
//!
//! [`spec`] is the PURE grammar (`fd:0,fd:1`, `pts`, `null`, `none`, …). This module opens a
//! [`ChannelSpec`] as a [`Channel`]: host descriptors the event loop polls, with reads and
//! writes that never block the VMM and never stop the VM.
//!
//! * Input: [`Channel::input_fd`] is the descriptor to watch for readability (nonblocking);
//!   [`Channel::read`] returns data, [`ChanRead::WouldBlock`], or [`ChanRead::Closed`] once the
//!   input reached end of file or failed (the input then detaches: it behaves as `null`).
//!   A regular file (`fd:0 < file`) cannot be polled: [`Channel::input_always_ready`] says to
//!   read it whenever the guest has room.
//! * Output: [`Channel::write`] takes everything. What the host side cannot take now is kept
//!   (up to [`OUTPUT_BUFFER_MAX`] bytes, then dropped with a warning so that a stalled reader
//!   cannot stall the guest); [`Channel::wants_writable`] then asks the event loop to watch
//!   [`Channel::output_fd`] for writability and call [`Channel::flush`]. EPIPE, EIO and other
//!   errors detach the output (it becomes `null`). The VMM must ignore SIGPIPE.
//!
//! Descriptors given with `fd:N` that are terminals or pipes are reopened through
//! `/proc/self/fd/N`, so that O_NONBLOCK stays on kuml's own file description and does not leak
//! into the shell's or kuml's stderr; a socket gets O_NONBLOCK directly, restored on drop. An
//! input terminal is put in raw mode (as UML does) and restored on drop.
//!
//! Implemented: `fd`, `null`, `pts`, `pty` (served by a Unix98 pts), `tty`, `file`, and `port`
//! as a built-in telnet server (UML runs the host's in.telnetd and its port-helper; kuml needs
//! neither) on `127.0.0.1:P` (or the address given as `port:ADDR:P`). `xterm` is a pts with a
//! terminal window attached by a shell relay (UML's port-helper is not needed). A channel type
//! used as one half of an `in,out` pair where that makes no sense (`pts`, `port`, `xterm`) is
//! [`ChanError::Unsupported`].
//!
//! Opening happens in two steps, as in UML, where a line's host side comes up when the guest
//! opens the line: [`Channel::prepare`] checks what can be checked at start (the `port:`
//! address is bound, `$DISPLAY` is set for `xterm`), and [`Channel::set_guest_open`] does the
//! rest when the guest opens the device: the pts is allocated and announced, the terminal
//! window started, the port's lines start waiting for clients ([`port`]). Connections to a
//! port are refused while none of its lines waits; output while no client is connected is
//! discarded. [`Channel::open_in`] does both steps at once (serial lines, which the guest
//! cannot be seen to open).

pub mod port;
pub mod spec;
mod sys;
pub mod telnet;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use log::{debug, warn};

pub use spec::{
    default_line, parse_chan, parse_line, parse_xterm_option, resolve_line, resolve_lines,
    xterm_command, xterm_title, Chan, ChanSpecError, ChannelSpec, LineClass, LineSpecError,
    PortAddr, XtermConfig,
};

use sys::FdKind;

/// Output kept for a host reader that is not keeping up; more is dropped.
pub const OUTPUT_BUFFER_MAX: usize = 1 << 20;

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChanError {
    /// `fd:N` could not be set up (reopened, made nonblocking, put in raw mode).
    #[error("fd:{fd}: cannot set up the descriptor")]
    Fd {
        /// The descriptor.
        fd: i32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No host pseudo-terminal could be allocated.
    #[error("cannot allocate a host pseudo-terminal")]
    Pts(#[source] io::Error),
    /// A `tty:` or `file:` path could not be opened.
    #[error("cannot open {}", .path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A `port:` channel could not listen (UML: `binding to port %d failed`).
    #[error("binding to port {port} failed")]
    Listen {
        /// The TCP address and port.
        port: spec::PortAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An `xterm` channel without `$DISPLAY` (UML: `xterm_open: $DISPLAY not set.`).
    #[error("xterm_open: $DISPLAY not set.")]
    NoDisplay,
    /// The terminal emulator could not be started.
    #[error("cannot start the terminal emulator '{0}'")]
    Xterm(String, #[source] io::Error),
    /// The channel type is parsed but not implemented yet.
    #[error("channel type '{0}' is not supported yet")]
    Unsupported(&'static str),
}

/// What [`Channel::read`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChanRead {
    /// This many bytes were read.
    Data(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The input is gone (end of file, error, or null): stop watching it.
    Closed,
}

/// One host descriptor, restored (flags, terminal mode) and closed (if ours) on drop.
#[derive(Debug)]
struct Handle {
    fd: RawFd,
    _owned: Option<OwnedFd>,
    // False for regular files and devices epoll refuses (/dev/null): always ready.
    pollable: bool,
    restore_flags: Option<libc::c_int>,
    /// We put this terminal in raw mode (its saved settings are in [`RAW_TERMINALS`]).
    raw: bool,
}

/// Terminals put in raw mode and their previous settings, for [`restore_terminals`].
static RAW_TERMINALS: Mutex<Vec<(RawFd, sys::Termios)>> = Mutex::new(Vec::new());

fn raw_terminals() -> std::sync::MutexGuard<'static, Vec<(RawFd, sys::Termios)>> {
    RAW_TERMINALS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts a terminal in raw mode, remembering how to undo it.
fn make_raw_saved(fd: RawFd) -> io::Result<()> {
    let old = sys::make_raw(fd)?;
    raw_terminals().push((fd, old));
    Ok(())
}

/// Restores every terminal a channel put in raw mode. Dropping a channel does this for its
/// own terminals; call this on paths that exit without dropping (`process::exit`, fatal
/// signals, panics) so that the user's shell gets its terminal back.
pub fn restore_terminals() {
    for (fd, t) in raw_terminals().drain(..) {
        if let Err(e) = sys::set_termios(fd, &t) {
            debug!("cannot restore terminal settings of fd {fd}: {e}");
        }
    }
}

impl Handle {
    fn owned(fd: OwnedFd, kind: FdKind) -> Self {
        let mut h = Self::borrowed(fd.as_raw_fd(), kind);
        h._owned = Some(fd);
        h
    }

    fn borrowed(fd: RawFd, kind: FdKind) -> Self {
        Self {
            fd,
            _owned: None,
            pollable: kind != FdKind::Regular && sys::can_poll(fd),
            restore_flags: None,
            raw: false,
        }
    }

    fn make_raw(&mut self) -> io::Result<()> {
        make_raw_saved(self.fd)?;
        self.raw = true;
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.raw {
            let mut list = raw_terminals();
            if let Some(i) = list.iter().position(|(fd, _)| *fd == self.fd) {
                let (_, t) = list.remove(i);
                if let Err(e) = sys::set_termios(self.fd, &t) {
                    debug!("cannot restore terminal settings of fd {}: {e}", self.fd);
                }
            }
        }
        if let Some(f) = self.restore_flags {
            if let Err(e) = sys::set_flags(self.fd, f) {
                debug!("cannot restore flags of fd {}: {e}", self.fd);
            }
        }
    }
}

/// An open channel: an input and an output, either of which may be absent (null).
#[derive(Debug)]
pub struct Channel {
    spec: ChannelSpec,
    input: Option<Arc<Handle>>,
    output: Option<Arc<Handle>>,
    // Detached halves keep their descriptors open until the channel is dropped, so that the
    // event loop can still unregister them (epoll forgets closed descriptors, event-manager
    // does not).
    input_closed: bool,
    output_closed: bool,
    out_buf: VecDeque<u8>,
    dropped: u64,
    pts_path: Option<PathBuf>,
    // Our own open slave of a pts, so that the master never sees a hang-up when the user's
    // terminal program closes it.
    _pts_keepalive: Option<OwnedFd>,
    announcement: Option<String>,
    /// A `port:` channel: a telnet server.
    tcp: Option<TcpState>,
    /// A pts, pty or xterm line waiting for the guest to open it.
    deferred: Option<Deferred>,
    /// Descriptors replaced while the channel lives (a port channel's listener and past
    /// connections); kept open until [`Channel::reap`], after the event loop let go of them.
    retired: Vec<Arc<Handle>>,
}

/// The state of a `port:` channel. While the guest has the line open and no client is
/// connected, the line waits on the shared listening socket (its input is the line's own
/// descriptor of it); once a client is connected, input and output are the connection.
#[derive(Debug)]
struct TcpState {
    hub: Arc<port::PortHub>,
    waiter: Option<port::Waiter>,
    guest_open: bool,
    decoder: telnet::TelnetDecoder,
}

/// A pts, pty or xterm line set up but not allocated until the guest opens it.
#[derive(Debug)]
struct Deferred {
    class: LineClass,
    index: u32,
    ctx: ChanContext,
}

/// Where a channel's announcements go (`Virtual console 1 assigned device '/dev/pts/3'`):
/// standard output by default, as UML prints them.
#[derive(Clone)]
pub struct Announcer(Arc<dyn Fn(&str) + Send + Sync>);

impl Announcer {
    /// Announcements go to `f`.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Announcer(Arc::new(f))
    }

    fn announce(&self, msg: &str) {
        (self.0)(msg)
    }
}

impl Default for Announcer {
    fn default() -> Self {
        Announcer::new(|msg| println!("{msg}"))
    }
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Announcer")
    }
}

/// What opening a channel may need besides its spec.
#[derive(Debug, Clone, Default)]
pub struct ChanContext {
    /// The instance name, shown in xterm titles.
    pub umid: Option<String>,
    /// The terminal emulator for `xterm` (UML's `xterm=` option).
    pub xterm: XtermConfig,
    /// Whether `$DISPLAY` is set (an `xterm` needs it).
    pub display: bool,
    /// Where pts announcements go.
    pub announcer: Announcer,
}

impl ChanContext {
    /// No umid, the default emulator, and `$DISPLAY` as the environment has it.
    pub fn from_env() -> Self {
        Self {
            display: std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty()),
            ..Self::default()
        }
    }
}

impl Channel {
    /// Opens `spec` for line `index` of `class` (the class and index name the line in the
    /// pts announcement) with [`ChanContext::from_env`].
    pub fn open(spec: &ChannelSpec, class: LineClass, index: u32) -> Result<Self, ChanError> {
        Channel::open_in(spec, class, index, &ChanContext::from_env())
    }

    /// Opens `spec` for line `index` of `class` as a line the guest has open from the start
    /// ([`Channel::prepare`] then [`Channel::set_guest_open`]).
    pub fn open_in(
        spec: &ChannelSpec,
        class: LineClass,
        index: u32,
        ctx: &ChanContext,
    ) -> Result<Self, ChanError> {
        let mut ch = Channel::prepare(spec, class, index, ctx)?;
        ch.set_guest_open(true)?;
        Ok(ch)
    }

    /// Sets up `spec` for line `index` of `class` without allocating what UML allocates only
    /// when the guest opens the line: a `pts`/`pty` is allocated, an `xterm` started, and a
    /// `port:` line waits for clients from [`Channel::set_guest_open`] on. What can fail early
    /// fails here: the `port:` address is bound (a clash is reported now) and `xterm` needs
    /// `$DISPLAY`.
    pub fn prepare(
        spec: &ChannelSpec,
        class: LineClass,
        index: u32,
        ctx: &ChanContext,
    ) -> Result<Self, ChanError> {
        let mut ch = Channel::empty(spec.clone());
        if spec.is_single() {
            match &spec.input {
                Chan::Xterm if !ctx.display => return Err(ChanError::NoDisplay),
                Chan::Xterm | Chan::Pts | Chan::Pty => {
                    ch.deferred = Some(Deferred {
                        class,
                        index,
                        ctx: ctx.clone(),
                    });
                    return Ok(ch);
                }
                Chan::Port(port) => {
                    let port = *port;
                    let hub = port::PortHub::get(port)
                        .map_err(|source| ChanError::Listen { port, source })?;
                    ch.tcp = Some(TcpState {
                        hub,
                        waiter: None,
                        guest_open: false,
                        decoder: telnet::TelnetDecoder::new(),
                    });
                    return Ok(ch);
                }
                Chan::Tty(path) => {
                    let err = |source| ChanError::Open {
                        path: path.clone(),
                        source,
                    };
                    let fd = sys::open_path(path, true, true, false).map_err(err)?;
                    let mut h = Handle::owned(fd, FdKind::Tty);
                    if sys::is_tty(h.fd) {
                        h.make_raw().map_err(err)?;
                    }
                    let h = Arc::new(h);
                    ch.input = Some(h.clone());
                    ch.output = Some(h);
                    return Ok(ch);
                }
                _ => {}
            }
        }
        ch.input = open_half(&spec.input, false)?;
        ch.output = open_half(&spec.output, true)?;
        Ok(ch)
    }

    /// The guest opened (`true`) or closed (`false`) the line.
    ///
    /// The first open allocates a deferred pts (announced through the context's
    /// [`Announcer`], as UML prints `Virtual console N assigned device '/dev/pts/M'`) or
    /// starts the `xterm` on one (closing the window leaves the line usable: reopen it with
    /// `screen` on [`Channel::pts_path`]); the pts then stays for the channel's lifetime. A
    /// `port:` line waits for a client while the guest has it open and none is connected; a
    /// connected client stays connected when the guest closes the line. An error leaves the
    /// line unattached.
    pub fn set_guest_open(&mut self, open: bool) -> Result<(), ChanError> {
        if let Some(t) = self.tcp.as_mut() {
            t.guest_open = open;
            if open {
                self.start_waiting();
            } else {
                self.stop_waiting();
            }
            return Ok(());
        }
        match self.deferred.take() {
            Some(d) if open => self.allocate_pts(d),
            d => {
                self.deferred = d;
                Ok(())
            }
        }
    }

    // Allocates the pts of a deferred pts, pty or xterm line.
    fn allocate_pts(&mut self, d: Deferred) -> Result<(), ChanError> {
        let (master, path) = sys::open_pts().map_err(ChanError::Pts)?;
        let keep = sys::open_path(&path, true, true, false).map_err(ChanError::Pts)?;
        let h = Arc::new(Handle::owned(master, FdKind::Tty));
        self.input = Some(h.clone());
        self.output = Some(h);
        self.pts_path = Some(path.clone());
        self._pts_keepalive = Some(keep);
        if self.spec.input == Chan::Xterm {
            let title = xterm_title(d.class, d.index, d.ctx.umid.as_deref());
            let cmd = xterm_command(&d.ctx.xterm, &title, &path);
            return spawn_detached(&cmd)
                .map_err(|e| ChanError::Xterm(d.ctx.xterm.emulator.clone(), e));
        }
        if self.spec.input == Chan::Pty {
            log::info!(
                "{} {}: pty is served by a Unix98 pts (hosts have no BSD ptys)",
                d.class.display_name(),
                d.index
            );
        }
        let msg = format!(
            "{} {} assigned device '{}'",
            d.class.display_name(),
            d.index,
            path.display()
        );
        d.ctx.announcer.announce(&msg);
        self.announcement = Some(msg);
        Ok(())
    }

    // A `port:` line the guest has open and no client holds starts waiting for one.
    fn start_waiting(&mut self) {
        let connected = self.live_input().is_some();
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
        let Some(w) = self.tcp.as_mut().and_then(|t| t.waiter.take()) else {
            return;
        };
        // The event loop may still watch the descriptor: keep it until `reap`.
        if let Some(fd) = w.finish() {
            self.retired
                .push(Arc::new(Handle::owned(fd, FdKind::Socket)));
        }
    }

    /// A channel with no input and no output (`null`).
    pub fn null() -> Self {
        Channel::empty(ChannelSpec::single(Chan::Null))
    }

    /// A channel over descriptors kuml already owns (tests, socket pairs, pipes); they are
    /// made nonblocking. `spec` is only used to describe the channel.
    pub fn from_fds(
        spec: ChannelSpec,
        input: Option<OwnedFd>,
        output: Option<OwnedFd>,
    ) -> io::Result<Self> {
        let mut ch = Channel::empty(spec);
        let wrap = |fd: OwnedFd| -> io::Result<Arc<Handle>> {
            let kind = sys::fd_kind(fd.as_raw_fd())?;
            let flags = sys::get_flags(fd.as_raw_fd())?;
            sys::set_flags(fd.as_raw_fd(), flags | libc::O_NONBLOCK)?;
            Ok(Arc::new(Handle::owned(fd, kind)))
        };
        ch.input = input.map(wrap).transpose()?;
        ch.output = output.map(wrap).transpose()?;
        Ok(ch)
    }

    fn empty(spec: ChannelSpec) -> Self {
        Self {
            spec,
            input: None,
            output: None,
            input_closed: false,
            output_closed: false,
            out_buf: VecDeque::new(),
            dropped: 0,
            pts_path: None,
            _pts_keepalive: None,
            announcement: None,
            tcp: None,
            deferred: None,
            retired: Vec::new(),
        }
    }

    /// Closes descriptors the channel replaced; call once the event loop stopped watching
    /// them (the console device does this after each watch-list update).
    pub fn reap(&mut self) {
        self.retired.clear();
    }

    /// For a `port:` channel: whether a client is connected.
    pub fn is_connected(&self) -> bool {
        self.tcp.is_some() && self.live_input().is_some()
    }

    /// The spec this channel was opened from.
    pub fn spec(&self) -> &ChannelSpec {
        &self.spec
    }

    /// UML's announcement for a pts/pty channel, to print once the line is set up:
    /// `Virtual console 1 assigned device '/dev/pts/3'`.
    pub fn announcement(&self) -> Option<&str> {
        self.announcement.as_deref()
    }

    /// The slave path of a pts/pty channel.
    pub fn pts_path(&self) -> Option<&std::path::Path> {
        self.pts_path.as_deref()
    }

    /// The live description for mconsole `config conN`: `fd:0,fd:1`, `pts:/dev/pts/3`.
    pub fn describe(&self) -> String {
        let one = |c: &Chan| match (c, &self.pts_path) {
            (Chan::Pts, Some(p)) => format!("pts:{}", p.display()),
            (Chan::Pty, Some(p)) => format!("pty:{}", p.display()),
            _ => c.to_string(),
        };
        if self.spec.is_single() {
            one(&self.spec.input)
        } else {
            format!("{},{}", one(&self.spec.input), one(&self.spec.output))
        }
    }

    /// The descriptor to watch for readability, if the input can be polled.
    pub fn input_fd(&self) -> Option<RawFd> {
        if let Some(h) = self.live_input() {
            return Some(h.fd).filter(|_| h.pollable);
        }
        self.tcp
            .as_ref()
            .and_then(|t| t.waiter.as_ref())
            .and_then(|w| w.fd())
            .map(|fd| fd.as_raw_fd())
    }

    fn live_input(&self) -> Option<&Handle> {
        self.input.as_deref().filter(|_| !self.input_closed)
    }

    fn live_output(&self) -> Option<&Handle> {
        self.output.as_deref().filter(|_| !self.output_closed)
    }

    /// True when the input is a regular file: read it whenever there is room, without polling.
    pub fn input_always_ready(&self) -> bool {
        self.live_input().is_some_and(|h| !h.pollable)
    }

    /// True while the channel has an input at all.
    pub fn has_input(&self) -> bool {
        self.live_input().is_some() || self.tcp.as_ref().is_some_and(|t| t.waiter.is_some())
    }

    /// Reads what is available, without blocking.
    pub fn read(&mut self, buf: &mut [u8]) -> ChanRead {
        if self.tcp.is_none() {
            return self.read_fd(buf);
        }
        if self.live_input().is_none() {
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
                self.input_closed = false;
                self.output_closed = false;
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
        self.retired.extend(self.input.take());
        self.retired.extend(self.output.take());
        self.out_buf.clear();
        self.start_waiting();
    }

    fn read_fd(&mut self, buf: &mut [u8]) -> ChanRead {
        let Some(fd) = self.live_input().map(|h| h.fd) else {
            return ChanRead::Closed;
        };
        if buf.is_empty() {
            return ChanRead::WouldBlock;
        }
        loop {
            match sys::read(fd, buf) {
                Ok(0) => {
                    debug!("channel {}: input reached end of file", self.describe());
                    self.input_closed = true;
                    return ChanRead::Closed;
                }
                Ok(n) => return ChanRead::Data(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ChanRead::WouldBlock,
                Err(e) => {
                    warn!(
                        "channel {}: input failed, detaching it: {e}",
                        self.describe()
                    );
                    self.input = None;
                    return ChanRead::Closed;
                }
            }
        }
    }

    /// Writes `data` without blocking; what cannot be written now is buffered (see the module
    /// documentation). Output to a null or detached channel is discarded.
    pub fn write(&mut self, data: &[u8]) {
        if self.live_output().is_none() || data.is_empty() {
            return;
        }
        let escaped;
        let mut data = data;
        if self.tcp.is_some() {
            let mut v = Vec::with_capacity(data.len());
            telnet::escape(data, &mut v);
            escaped = v;
            data = &escaped;
        }
        if self.out_buf.is_empty() {
            let n = self.write_now(data);
            data = &data[n..];
        }
        if data.is_empty() || self.live_output().is_none() {
            return;
        }
        let room = OUTPUT_BUFFER_MAX.saturating_sub(self.out_buf.len());
        let keep = data.len().min(room);
        self.out_buf.extend(&data[..keep]);
        if keep < data.len() {
            if self.dropped == 0 {
                warn!(
                    "channel {}: the host side is not reading, dropping output",
                    self.describe()
                );
            }
            self.dropped += (data.len() - keep) as u64;
        }
    }

    /// Writes buffered output; call when [`Channel::output_fd`] is writable.
    pub fn flush(&mut self) {
        while !self.out_buf.is_empty() && self.live_output().is_some() {
            let (a, _) = self.out_buf.as_slices();
            let a = a.to_vec();
            let n = self.write_now(&a);
            self.out_buf.drain(..n);
            if n < a.len() {
                break;
            }
        }
        if self.out_buf.is_empty() {
            self.dropped = 0;
        }
    }

    /// Bytes waiting for the host side.
    pub fn pending_output(&self) -> usize {
        self.out_buf.len()
    }

    /// True when buffered output waits for [`Channel::output_fd`] to become writable.
    pub fn wants_writable(&self) -> bool {
        !self.out_buf.is_empty() && self.output_fd().is_some()
    }

    /// The output descriptor, if it can be polled.
    pub fn output_fd(&self) -> Option<RawFd> {
        self.live_output().filter(|h| h.pollable).map(|h| h.fd)
    }

    // Writes as much as the descriptor takes now; detaches the output on a hard error.
    fn write_now(&mut self, data: &[u8]) -> usize {
        let Some(fd) = self.live_output().map(|h| h.fd) else {
            return data.len();
        };
        let mut done = 0;
        while done < data.len() {
            match sys::write(fd, &data[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!(
                        "channel {}: output failed, detaching it: {e}",
                        self.describe()
                    );
                    self.output = None;
                    self.out_buf.clear();
                    return data.len();
                }
            }
        }
        done
    }
}

// Starts `cmd` in the background through `sh`, which exits at once: the program is
// reparented to init and never becomes kuml's zombie.
fn spawn_detached(cmd: &[String]) -> io::Result<()> {
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("\"$@\" </dev/null >/dev/null 2>&1 &")
        .arg("sh")
        .args(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("sh exited with {status}")))
    }
}

// Opens one direction of a pair.
fn open_half(chan: &Chan, write: bool) -> Result<Option<Arc<Handle>>, ChanError> {
    match chan {
        Chan::Null => Ok(None),
        Chan::Fd(n) if !sys::fd_is_open(*n) => {
            // A closed stdin/stdout (kuml started detached) leaves the line without that half.
            warn!("fd:{n} is not open; the channel works without it");
            Ok(None)
        }
        Chan::Fd(n) => open_fd(*n, write).map(|h| Some(Arc::new(h))),
        Chan::File(path) => {
            if !write {
                // file: is output-only; its input is null.
                return Ok(None);
            }
            let fd = sys::open_path(path, false, true, true).map_err(|source| ChanError::Open {
                path: path.clone(),
                source,
            })?;
            Ok(Some(Arc::new(Handle::owned(fd, FdKind::Regular))))
        }
        Chan::Tty(path) => {
            let fd =
                sys::open_path(path, !write, write, false).map_err(|source| ChanError::Open {
                    path: path.clone(),
                    source,
                })?;
            let mut h = Handle::owned(fd, FdKind::Tty);
            if !write && sys::is_tty(h.fd) {
                h.make_raw().map_err(|source| ChanError::Open {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(Some(Arc::new(h)))
        }
        Chan::Pts | Chan::Pty => Err(ChanError::Unsupported(
            "pts/pty as one half of a pair (use it for both directions)",
        )),
        Chan::Port(_) => Err(ChanError::Unsupported(
            "port as one half of a pair (use it for both directions)",
        )),
        Chan::Xterm => Err(ChanError::Unsupported(
            "xterm as one half of a pair (use it for both directions)",
        )),
    }
}

// Sets up an inherited descriptor: a private nonblocking file description when possible.
fn open_fd(n: i32, write: bool) -> Result<Handle, ChanError> {
    let err = |source| ChanError::Fd { fd: n, source };
    let kind = sys::fd_kind(n).map_err(err)?;
    let mut h = match kind {
        FdKind::Regular => Handle::borrowed(n, kind),
        FdKind::Tty | FdKind::Fifo => match sys::reopen(n, write) {
            Ok(fd) => Handle::owned(fd, kind),
            Err(e) => {
                debug!("fd:{n}: cannot reopen ({e}); making it nonblocking in place");
                in_place(n, kind).map_err(err)?
            }
        },
        FdKind::Socket | FdKind::Other => in_place(n, kind).map_err(err)?,
    };
    if !write && kind == FdKind::Tty {
        h.make_raw().map_err(err)?;
    }
    Ok(h)
}

fn in_place(n: RawFd, kind: FdKind) -> io::Result<Handle> {
    let flags = sys::get_flags(n)?;
    sys::set_flags(n, flags | libc::O_NONBLOCK)?;
    let mut h = Handle::borrowed(n, kind);
    h.restore_flags = Some(flags);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, OwnedFd) {
        let (a, b) = UnixStream::pair().unwrap();
        (a, b.into())
    }

    #[test]
    fn test_null_channel_reads_closed_and_discards() {
        let mut ch = Channel::null();
        let mut buf = [0u8; 4];
        assert_eq!(ch.read(&mut buf), ChanRead::Closed);
        ch.write(b"gone");
        assert_eq!(ch.pending_output(), 0);
        assert_eq!(ch.input_fd(), None);
        assert_eq!(ch.describe(), "null");
    }

    #[test]
    fn test_read_data_wouldblock_then_eof_detaches() {
        let (mut peer, fd) = pair();
        let mut ch = Channel::from_fds(ChannelSpec::single(Chan::Fd(9)), Some(fd), None).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(ch.read(&mut buf), ChanRead::WouldBlock);
        peer.write_all(b"hi").unwrap();
        assert_eq!(ch.read(&mut buf), ChanRead::Data(2));
        assert_eq!(&buf[..2], b"hi");
        drop(peer);
        assert_eq!(ch.read(&mut buf), ChanRead::Closed);
        assert!(!ch.has_input());
        assert_eq!(ch.read(&mut buf), ChanRead::Closed);
    }

    #[test]
    fn test_write_buffers_when_full_and_flushes() {
        let (mut peer, fd) = pair();
        let mut ch = Channel::from_fds(ChannelSpec::single(Chan::Fd(9)), None, Some(fd)).unwrap();
        let big = vec![7u8; 4 << 20];
        ch.write(&big);
        assert!(ch.wants_writable());
        assert!(ch.pending_output() <= OUTPUT_BUFFER_MAX);
        peer.set_nonblocking(true).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..10_000 {
            match peer.read(&mut buf) {
                Ok(n) => got += n,
                Err(_) => {
                    if ch.pending_output() == 0 {
                        break;
                    }
                    ch.flush();
                }
            }
        }
        assert!(!ch.wants_writable());
        assert!(got > 0);
    }

    #[test]
    fn test_write_to_closed_peer_detaches_output() {
        // SAFETY: ignoring SIGPIPE is what the VMM does; the test needs EPIPE, not a signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let (peer, fd) = pair();
        let mut ch = Channel::from_fds(ChannelSpec::single(Chan::Fd(9)), None, Some(fd)).unwrap();
        drop(peer);
        ch.write(b"x");
        ch.write(b"y");
        assert_eq!(ch.output_fd(), None);
        assert_eq!(ch.pending_output(), 0);
    }

    #[test]
    fn test_file_channel_appends_and_has_no_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        std::fs::write(&path, b"old\n").unwrap();
        let spec = parse_line(&format!("file:{}", path.display()))
            .unwrap()
            .unwrap();
        let mut ch = Channel::open(&spec, LineClass::Console, 1).unwrap();
        assert!(!ch.has_input());
        ch.write(b"new\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"old\nnew\n");
        assert_eq!(ch.describe(), format!("file:{}", path.display()));
    }

    #[test]
    fn test_fd_not_open_leaves_a_null_half() {
        let spec = parse_line("fd:987654,fd:987655").unwrap().unwrap();
        let mut ch = Channel::open(&spec, LineClass::Console, 0).unwrap();
        assert!(!ch.has_input());
        ch.write(b"x");
        assert_eq!(ch.describe(), "fd:987654,fd:987655");
    }

    #[test]
    fn test_regular_file_input_is_always_ready_then_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        std::fs::write(&path, b"typed").unwrap();
        let f: OwnedFd = std::fs::File::open(&path).unwrap().into();
        let n = f.as_raw_fd();
        let spec = parse_line(&format!("fd:{n},null")).unwrap().unwrap();
        let mut ch = Channel::open(&spec, LineClass::Console, 0).unwrap();
        assert_eq!(ch.input_fd(), None);
        assert!(ch.input_always_ready());
        let mut buf = [0u8; 16];
        assert_eq!(ch.read(&mut buf), ChanRead::Data(5));
        assert_eq!(ch.read(&mut buf), ChanRead::Closed);
        assert!(!ch.input_always_ready());
        drop(f);
    }

    #[test]
    fn test_dev_null_input_detaches_at_once() {
        let spec = parse_line("tty:/dev/null").unwrap().unwrap();
        let mut ch = Channel::open(&spec, LineClass::Serial, 0).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(ch.read(&mut buf), ChanRead::Closed);
    }

    #[test]
    fn test_fd_pipe_is_reopened_private() {
        let (r, w) = std::io::pipe().unwrap();
        let rfd: OwnedFd = r.into();
        let n = rfd.as_raw_fd();
        let spec = parse_line(&format!("fd:{n}")).unwrap().unwrap();
        let mut ch = Channel::open(&spec, LineClass::Console, 0).unwrap();
        // The inherited descriptor stays blocking; ours is nonblocking.
        assert_eq!(sys::get_flags(n).unwrap() & libc::O_NONBLOCK, 0);
        let mut buf = [0u8; 4];
        assert_eq!(ch.read(&mut buf), ChanRead::WouldBlock);
        let mut w = std::fs::File::from(OwnedFd::from(w));
        w.write_all(b"ab").unwrap();
        assert_eq!(ch.read(&mut buf), ChanRead::Data(2));
    }

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
        client
            .write_all(&[telnet::IAC, 253, 1, b'l', b's', b'\r', b'\n'])
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

    #[test]
    fn test_xterm_without_display_fails_like_uml() {
        let ctx = ChanContext::default();
        let err = Channel::open_in(
            &ChannelSpec::single(Chan::Xterm),
            LineClass::Console,
            2,
            &ctx,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "xterm_open: $DISPLAY not set.");
    }

    #[test]
    fn test_xterm_starts_the_emulator_on_a_pts() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        // A fake emulator that records its arguments.
        let fake = dir.path().join("fake-term");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$@\" > '{}'\n", marker.display()),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let ctx = ChanContext {
            umid: Some("t1".into()),
            xterm: XtermConfig {
                emulator: fake.display().to_string(),
                ..XtermConfig::default()
            },
            display: true,
            ..ChanContext::default()
        };
        let Ok(ch) = Channel::open_in(
            &ChannelSpec::single(Chan::Xterm),
            LineClass::Console,
            2,
            &ctx,
        ) else {
            return; // no /dev/ptmx here
        };
        assert_eq!(ch.describe(), "xterm");
        assert!(ch.announcement().is_none());
        let mut args = String::new();
        for _ in 0..2000 {
            if let Ok(a) = std::fs::read_to_string(&marker) {
                if !a.is_empty() {
                    args = a;
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            args.starts_with("-T Virtual Console #2 (t1) -e sh -c"),
            "{args}"
        );
    }

    #[test]
    fn test_pts_announces_and_carries_bytes() {
        let Ok(mut ch) = Channel::open(&ChannelSpec::single(Chan::Pts), LineClass::Serial, 2)
        else {
            // No /dev/ptmx in this sandbox.
            return;
        };
        let path = ch.pts_path().unwrap().to_path_buf();
        assert_eq!(
            ch.announcement().unwrap(),
            format!("Serial line 2 assigned device '{}'", path.display())
        );
        assert_eq!(ch.describe(), format!("pts:{}", path.display()));
        let mut slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        ch.write(b"out");
        let mut buf = [0u8; 3];
        slave.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"out");
        slave.write_all(b"in").unwrap();
        let mut got = [0u8; 8];
        let mut n = 0;
        for _ in 0..1000 {
            if let ChanRead::Data(k) = ch.read(&mut got[n..]) {
                n += k;
            }
            if n >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(&got[..n], b"in");
        // Closing the user's side does not hang up the channel.
        drop(slave);
        assert_eq!(ch.read(&mut got), ChanRead::WouldBlock);
    }

    // A context whose announcements are collected.
    fn collecting_ctx() -> (ChanContext, Arc<Mutex<Vec<String>>>) {
        let said = Arc::new(Mutex::new(Vec::new()));
        let sink = said.clone();
        let ctx = ChanContext {
            announcer: Announcer::new(move |m| sink.lock().unwrap().push(m.to_owned())),
            ..ChanContext::default()
        };
        (ctx, said)
    }

    #[test]
    fn test_console_pts_is_allocated_when_the_guest_opens_it() {
        let (ctx, said) = collecting_ctx();
        let spec = ChannelSpec::single(Chan::Pts);
        let mut ch = Channel::prepare(&spec, LineClass::Console, 1, &ctx).unwrap();
        assert_eq!(ch.pts_path(), None);
        assert_eq!(ch.describe(), "pts");
        assert_eq!(ch.input_fd(), None);
        assert!(said.lock().unwrap().is_empty());
        ch.set_guest_open(true)
            .expect("allocate a pts (/dev/ptmx is needed)");
        let path = ch.pts_path().unwrap().to_path_buf();
        let msg = format!("Virtual console 1 assigned device '{}'", path.display());
        assert_eq!(*said.lock().unwrap(), vec![msg]);
        assert!(ch.input_fd().is_some());
        // Closing and reopening keeps the same pts, announced once.
        ch.set_guest_open(false).unwrap();
        ch.set_guest_open(true).unwrap();
        assert_eq!(ch.pts_path(), Some(path.as_path()));
        assert_eq!(said.lock().unwrap().len(), 1);
    }

    // Reads `ch` until it has a client (`connected`) or has none; returns whether it got there.
    fn poll_until(ch: &mut Channel, connected: bool) -> bool {
        let mut buf = [0u8; 16];
        for _ in 0..1000 {
            let _ = ch.read(&mut buf);
            ch.reap();
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
        second.reap();
        assert!(refused());
    }
}
