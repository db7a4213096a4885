//! UML channels: where a console's or a serial line's bytes come from and go to.
//!
//! [`spec`] is the PURE grammar (`fd:0,fd:1`, `pts`, `null`, `none`, …). This module opens a
//! [`ChannelSpec`] as a [`Channel`]: host descriptors the event loop polls, with reads and
//! writes that never block the VMM and never stop the VM.
//!
//! * Input: [`Channel::read`] returns data, [`ChanRead::WouldBlock`], or [`ChanRead::Closed`]
//!   once the input reached end of file or failed (the input then detaches: it behaves as
//!   `null`). A regular file (`fd:0 < file`) cannot be polled:
//!   [`Channel::input_always_ready`] says to read it whenever the guest has room.
//! * Output: [`Channel::write`] takes everything. What the host side cannot take now waits
//!   in a buffer of [`OUTPUT_BUFFER_MAX`] bytes that keeps the newest output (the oldest is
//!   dropped, with one warning per stall and the count once the reader is back), so that a
//!   stalled or absent reader never stalls the guest and finds recent output when it comes
//!   back; [`Channel::flush`] writes it when the descriptor is writable. EPIPE, EIO and other
//!   errors detach the output (it becomes `null`). The VMM must ignore SIGPIPE.
//! * Watching: [`Channel::watch`] adds what the event loop should watch to a device's
//!   [`Interest`]: the input while the device has room for it, the output while output
//!   waits; one descriptor that is both (a pts, a tty, a telnet connection) is watched once.
//!   The watch holds the descriptors it registered, so a half that detaches or a connection
//!   that ends is closed only once the loop stopped watching it.
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
//!
//! Files: `handle` (one descriptor and the raw-mode terminals), `output` (the output buffer),
//! `open` (opening `fd:`, `file:`, `tty:`), `pts` (pts, pty, xterm), `tcp` (telnet sessions
//! of `port:` lines), [`port`] (the listening ports they share), [`telnet`], `sys`.

mod handle;
mod open;
mod output;
pub mod port;
mod pts;
pub mod spec;
mod sys;
mod tcp;
pub mod telnet;

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::EventSet;
use log::{debug, warn};

pub use handle::restore_terminals;
pub use output::OUTPUT_BUFFER_MAX;
pub use spec::{
    default_line, parse_chan, parse_line, parse_xterm_option, resolve_line, resolve_lines,
    xterm_command, xterm_title, Chan, ChanSpecError, ChannelSpec, LineClass, LineSpecError,
    PortAddr, XtermConfig,
};

use crate::watch::{Interest, SharedFd};
use handle::Handle;
use output::OutputBuffer;
use pts::Deferred;
use tcp::TcpState;

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

/// An open channel: an input and an output, either of which may be absent (null).
#[derive(Debug)]
pub struct Channel {
    spec: ChannelSpec,
    input: Option<Arc<Handle>>,
    output: Option<Arc<Handle>>,
    out_buf: OutputBuffer,
    pts_path: Option<PathBuf>,
    /// Our own open slave of a pts, so that the master never sees a hang-up when the user's
    /// terminal program closes it.
    pts_keepalive: Option<OwnedFd>,
    announcement: Option<String>,
    /// A `port:` channel: a telnet server.
    tcp: Option<TcpState>,
    /// A pts, pty or xterm line waiting for the guest to open it.
    deferred: Option<Deferred>,
}

/// Where a channel's announcements go (`Virtual console 1 assigned device '/dev/pts/3'`): by
/// default the log target `uml`, which kuml prints on standard output as UML's console shows
/// them.
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
        Announcer::new(|msg| log::info!(target: "uml", "{msg}"))
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
                    ch.tcp = Some(TcpState::new(hub));
                    return Ok(ch);
                }
                Chan::Tty(path) => {
                    let h = open::open_tty(path, true, true)?;
                    ch.input = Some(h.clone());
                    ch.output = Some(h);
                    return Ok(ch);
                }
                _ => {}
            }
        }
        ch.input = open::open_half(&spec.input, false)?;
        ch.output = open::open_half(&spec.output, true)?;
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
        if self.tcp.is_some() {
            self.set_tcp_guest_open(open);
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
        ch.input = input.map(open::owned).transpose()?;
        ch.output = output.map(open::owned).transpose()?;
        Ok(ch)
    }

    /// A channel over one descriptor kuml owns for both directions (a socket, a terminal),
    /// made nonblocking. `spec` is only used to describe the channel.
    pub fn from_fd(spec: ChannelSpec, fd: OwnedFd) -> io::Result<Self> {
        let mut ch = Channel::empty(spec);
        let h = open::owned(fd)?;
        ch.input = Some(h.clone());
        ch.output = Some(h);
        Ok(ch)
    }

    fn empty(spec: ChannelSpec) -> Self {
        Self {
            spec,
            input: None,
            output: None,
            out_buf: OutputBuffer::new(OUTPUT_BUFFER_MAX),
            pts_path: None,
            pts_keepalive: None,
            announcement: None,
            tcp: None,
            deferred: None,
        }
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

    /// The host terminal's size as `(cols, rows)` when the channel's output (else its input)
    /// is a terminal: a `fd:0,fd:1` on the user's terminal, a `tty:` line, an allocated `pts`
    /// (its master reports the size the program on the slave set); a `port:` line's size as
    /// its telnet client last reported it (NAWS). `None` for anything else,
    /// and for a terminal whose size was never set (0×0: a new pts nobody sized yet).
    pub fn window_size(&self) -> Option<(u16, u16)> {
        // A `port:` line's telnet client reports its window (NAWS) while connected.
        if let Some(t) = self.tcp.as_ref().filter(|_| self.input.is_some()) {
            return t.decoder.window_size().filter(|ws| *ws != (0, 0));
        }
        [self.output.as_ref(), self.input.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|h| sys::window_size(h.fd).ok())
            .filter(|ws| *ws != (0, 0))
    }

    /// Adds to `want` what the event loop should watch for this channel, reported with
    /// `data`: the input (or a `port:` line's listener) while `input_room`, the output while
    /// output waits. A descriptor that is both is watched once, for both.
    pub fn watch(&self, want: &mut Interest, data: u32, input_room: bool) {
        if input_room {
            if let Some(fd) = self.input_source() {
                want.add(fd, data, EventSet::IN);
            }
        }
        if !self.out_buf.is_empty() {
            if let Some(h) = self.output.as_ref().filter(|h| h.pollable) {
                want.add(h.clone(), data, EventSet::OUT);
            }
        }
    }

    // The descriptor that becomes readable when there is input (or a client to accept).
    fn input_source(&self) -> Option<SharedFd> {
        if let Some(h) = self.input.as_ref() {
            return h.pollable.then(|| h.clone() as SharedFd);
        }
        self.tcp
            .as_ref()
            .and_then(|t| t.waiter.as_ref())
            .and_then(|w| w.fd())
            .map(|fd| fd.clone() as SharedFd)
    }

    /// The descriptor to watch for readability, if the input can be polled.
    pub fn input_fd(&self) -> Option<RawFd> {
        self.input_source().map(|fd| fd.as_raw_fd())
    }

    /// True when the input is a regular file: read it whenever there is room, without polling.
    pub fn input_always_ready(&self) -> bool {
        self.input.as_ref().is_some_and(|h| !h.pollable)
    }

    /// True while the channel has an input at all.
    pub fn has_input(&self) -> bool {
        self.input.is_some() || self.tcp.as_ref().is_some_and(|t| t.waiter.is_some())
    }

    /// Reads what is available, without blocking.
    pub fn read(&mut self, buf: &mut [u8]) -> ChanRead {
        if self.tcp.is_some() {
            self.read_tcp(buf)
        } else {
            self.read_fd(buf)
        }
    }

    fn read_fd(&mut self, buf: &mut [u8]) -> ChanRead {
        let Some(fd) = self.input.as_ref().map(|h| h.fd) else {
            return ChanRead::Closed;
        };
        if buf.is_empty() {
            return ChanRead::WouldBlock;
        }
        loop {
            match sys::read(fd, buf) {
                Ok(0) => {
                    debug!("channel {}: input reached end of file", self.describe());
                    // Closed once the event loop stopped watching it (the watch holds it).
                    self.input = None;
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
        if self.output.is_none() || data.is_empty() {
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
        if data.is_empty() || self.output.is_none() {
            return;
        }
        let stalled = self.out_buf.dropped() > 0;
        if self.out_buf.push(data) > 0 && !stalled {
            warn!(
                "channel {}: the host side is not reading; keeping the newest {} KiB of \
                 output, dropping older output",
                self.describe(),
                OUTPUT_BUFFER_MAX >> 10
            );
        }
    }

    /// Writes buffered output; call when the output descriptor is writable.
    pub fn flush(&mut self) {
        while !self.out_buf.is_empty() && self.output.is_some() {
            let chunk = self.out_buf.front().to_vec();
            let n = self.write_now(&chunk);
            self.out_buf.consume(n);
            if n < chunk.len() {
                break;
            }
        }
        let dropped = self.out_buf.take_dropped();
        if dropped > 0 {
            log::info!(
                "channel {}: the host side reads again; {dropped} bytes of older output were \
                 dropped",
                self.describe()
            );
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
        self.output.as_ref().filter(|h| h.pollable).map(|h| h.fd)
    }

    // Writes as much as the descriptor takes now; detaches the output on a hard error.
    fn write_now(&mut self, data: &[u8]) -> usize {
        let Some(fd) = self.output.as_ref().map(|h| h.fd) else {
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
}
