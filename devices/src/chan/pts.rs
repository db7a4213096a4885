//! `pts`, `pty` and `xterm` lines: a host pseudo-terminal allocated when the guest opens the
//! line, announced as UML announces it, with a terminal window on it for `xterm`.

use std::io;
use std::sync::Arc;

use super::handle::Handle;
use super::sys::{self, FdKind};
use super::{xterm_command, xterm_title, Chan, ChanContext, ChanError, Channel, LineClass};

/// A pts, pty or xterm line set up but not allocated until the guest opens it.
#[derive(Debug)]
pub(super) struct Deferred {
    pub(super) class: LineClass,
    pub(super) index: u32,
    pub(super) ctx: ChanContext,
}

impl Channel {
    /// Allocates the pts of a deferred pts, pty or xterm line.
    pub(super) fn allocate_pts(&mut self, d: Deferred) -> Result<(), ChanError> {
        let (master, path) = sys::open_pts().map_err(ChanError::Pts)?;
        let keep = sys::open_path(&path, true, true, false).map_err(ChanError::Pts)?;
        let h = Arc::new(Handle::owned(master, FdKind::Tty));
        self.input = Some(h.clone());
        self.output = Some(h);
        self.pts_path = Some(path.clone());
        self.pts_keepalive = Some(keep);
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
}

/// Starts `cmd` in the background through `sh`, which exits at once: the program is
/// reparented to init and never becomes kuml's zombie.
fn spawn_detached(cmd: &[String]) -> io::Result<()> {
    let mut sh = std::process::Command::new("/bin/sh");
    sh.arg("-c")
        .arg("\"$@\" </dev/null >/dev/null 2>&1 &")
        .arg("sh")
        .args(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Through the launcher thread: the shell and the xterm must not inherit a filter.
    let status = netdev::launch::spawn(sh)?.wait()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("sh exited with {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Announcer, ChanRead, ChannelSpec, XtermConfig};
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Mutex;

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
        let ch = Channel::open_in(
            &ChannelSpec::single(Chan::Xterm),
            LineClass::Console,
            2,
            &ctx,
        )
        .expect("TEST CANNOT RUN: allocating a pts needs /dev/ptmx");
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
        let mut ch = Channel::open(&ChannelSpec::single(Chan::Pts), LineClass::Serial, 2)
            .expect("TEST CANNOT RUN: allocating a pts needs /dev/ptmx");
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
            .expect("TEST CANNOT RUN: allocating a pts needs /dev/ptmx");
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
}
