//! PURE: mconsole command parsing with UML's prefix matching (`mconsole_get_request`,
//! `mconsole_kern.c`), the device table used by `config`/`remove`, and the exact texts.

use crate::protocol::Reply;

/// The exact `help` reply (note the trailing spaces and the TAB): 722 bytes.
pub const HELP_TEXT: &str = "Commands: \n\
    \x20   version - Get kernel version \n\
    \x20   help - Print this message \n\
    \x20   halt - Halt UML \n\
    \x20   reboot - Reboot UML \n\
    \x20   config <dev>=<config> - Add a new device to UML;  \n\
    \tsame syntax as command line \n\
    \x20   config <dev> - Query the configuration of a device \n\
    \x20   remove <dev> - Remove a device from UML \n\
    \x20   sysrq <letter> - Performs the SysRq action controlled by the letter \n\
    \x20   cad - invoke the Ctrl-Alt-Del handler \n\
    \x20   stop - pause the UML; it will do nothing until it receives a 'go' \n\
    \x20   go - continue the UML after a 'stop' \n\
    \x20   log <string> - make UML enter <string> into the kernel log\n\
    \x20   proc <file> - returns the contents of the UML's /proc/<file>\n\
    \x20   stack <pid> - returns the stack of the specified pid\n";

/// `Unknown command` (err 1).
pub const UNKNOWN_COMMAND: &str = "Unknown command";
/// `config` with no known device (err 1).
pub const BAD_CONFIG_OPTION: &str = "Bad configuration option";
/// `remove` with no known device (err 1).
pub const BAD_REMOVE_OPTION: &str = "Bad remove option";
/// `remove` whose id does not parse (err 1).
pub const CANT_PARSE_DEVICE_NUMBER: &str = "Couldn't parse device number";
/// `remove` of an unconfigured device (err -ENODEV).
pub const DEVICE_DOESNT_EXIST: &str = "Device doesn't exist";
/// `remove` of a device in use (err -EBUSY).
pub const DEVICE_BUSY: &str = "Device is currently open";
/// `config <dev>` on a device without a query routine (`eth`, `vec`; err 1).
pub const NO_GET_CONFIG: &str = "No get_config routine defined";
/// Reply to `stop` (err 0).
pub const STOPPED: &str = "stopped";
/// `stop` while stopped (err 1).
pub const ALREADY_STOPPED: &str = "Already stopped";
/// `go` while running (err 1).
pub const NOT_STOPPED: &str = "Not stopped";
/// `stack` without a number (err 1).
pub const SPECIFY_PID: &str = "Please specify a pid";
/// `stack` of an unknown pid (err 1).
pub const NO_SUCH_PID: &str = "Couldn't find that pid";

/// Ready-made replies for the device-independent errors the VMM sends.
impl Reply {
    /// `Invalid device number - must be between <start> and <end>` (err 1).
    pub fn invalid_device_number(start: u32, end: u32) -> Reply {
        Reply::error(format!(
            "Invalid device number - must be between {start} and {end}"
        ))
    }
    /// `Device doesn't exist` with err -ENODEV.
    pub fn no_device() -> Reply {
        Reply::with_err(-libc::ENODEV, DEVICE_DOESNT_EXIST)
    }
    /// `Device is currently open` with err -EBUSY.
    pub fn device_busy() -> Reply {
        Reply::with_err(-libc::EBUSY, DEVICE_BUSY)
    }
    /// `stopped`: the answer to [`Command::Stop`].
    pub fn stopped() -> Reply {
        Reply::ok(STOPPED)
    }
}

/// UML reads `/proc` files in chunks of `PAGE_SIZE - 1` bytes, one reply each.
pub const PROC_CHUNK: usize = 4095;

/// The replies of a successful `proc <file>`: `"\n"` (more), the data in chunks of
/// [`PROC_CHUNK`] bytes (more), then `""` -- what UML sends.
pub fn proc_replies(data: &[u8]) -> Vec<Reply> {
    let mut v = vec![Reply::ok("\n").more()];
    v.extend(data.chunks(PROC_CHUNK).map(|c| Reply::ok(c).more()));
    v.push(Reply::ok(""));
    v
}

/// Console output captured for `sysrq`/`stack`: each write its own reply with more=1,
/// then the final `""`.
pub fn console_replies<I, T>(writes: I) -> Vec<Reply>
where
    I: IntoIterator<Item = T>,
    T: Into<Vec<u8>>,
{
    let mut v: Vec<Reply> = writes.into_iter().map(|w| Reply::ok(w).more()).collect();
    v.push(Reply::ok(""));
    v
}

/// The devices UML registers for `config`/`remove`, matched as a prefix of the argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// Block devices `ubd<n>`.
    Ubd,
    /// Consoles `con<n>`.
    Con,
    /// Serial lines `ssl<n>`.
    Ssl,
    /// Network devices `eth<n>`.
    Eth,
    /// Vector network devices `vec<n>`.
    Vec,
    /// Memory (`config mem`, `config mem=+64M`).
    Mem,
    /// kuml's host directory shares `hostfs` and `hostfs<n>` (UML's hostfs has no
    /// `config`/`remove`; kuml adds and removes shares at run time with its command-line
    /// syntax, `config hostfs1=/srv/data,ro` / `remove hostfs1`).
    Hostfs,
}

impl Device {
    /// All devices, in lookup order.
    pub const ALL: [Device; 7] = [
        Device::Ubd,
        Device::Con,
        Device::Ssl,
        Device::Eth,
        Device::Vec,
        Device::Mem,
        Device::Hostfs,
    ];

    /// The device's name as typed.
    pub fn name(self) -> &'static str {
        match self {
            Device::Ubd => "ubd",
            Device::Con => "con",
            Device::Ssl => "ssl",
            Device::Eth => "eth",
            Device::Vec => "vec",
            Device::Mem => "mem",
            Device::Hostfs => "hostfs",
        }
    }

    /// The device whose name is a prefix of `s` (`mconsole_find_dev`).
    pub fn find(s: &str) -> Option<Device> {
        Device::ALL.into_iter().find(|d| s.starts_with(d.name()))
    }
}

/// The argument of `config`/`remove`: a known device and the full text after the command
/// word and its spaces, e.g. `ubd1=/srv/a.img`, `eth1`, `con2=pts`, `mem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The device matched by prefix.
    pub device: Device,
    /// The whole argument, device name included (what UML's command line parsers take).
    pub text: String,
}

impl DeviceSpec {
    /// Everything after the device name: `1=/srv/a.img`, `1`, `=+64M`.
    pub fn rest(&self) -> &str {
        &self.text[self.device.name().len()..]
    }
    /// The part between the device name and the first `=` (the unit, possibly with
    /// flags): `1`, `1rc`, `` for `mem`.
    pub fn id(&self) -> &str {
        let rest = self.rest();
        rest.split_once('=').map_or(rest, |(id, _)| id)
    }
    /// The value after the first `=`, or `None` for a query (`config ubd1`) or a removal.
    pub fn value(&self) -> Option<&str> {
        self.rest().split_once('=').map(|(_, v)| v)
    }
    /// `config <dev>` without `=`: a query of the current configuration.
    pub fn is_query(&self) -> bool {
        self.value().is_none()
    }
}

/// A parsed mconsole command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `version`: reply `sysname nodename release version machine`.
    Version,
    /// `halt`: reply `""`, then stop the VM and exit 0.
    Halt,
    /// `reboot`: reply `""`, then restart the VM.
    Reboot,
    /// `config <dev>[=<cfg>]`: add/change a device, or query it when `is_query()`.
    Config(DeviceSpec),
    /// `remove <dev><id>`.
    Remove(DeviceSpec),
    /// `sysrq <letter>`: the first character after the spaces (`None`: help text).
    Sysrq(Option<char>),
    /// `help`: reply [`HELP_TEXT`] ([`Reply::help`]).
    Help,
    /// `cad`: reply `""`, then inject Ctrl-Alt-Del.
    Cad,
    /// `stop`: pause the vCPUs and reply [`Reply::stopped`]. The server delivers it only
    /// when running (it answers `Already stopped` itself).
    Stop,
    /// `go`: resume the vCPUs and reply `""`. Delivered only when stopped (the server
    /// answers `Not stopped` itself).
    Go,
    /// `log <text>`: write the text (no newline added) to the log; reply `""`.
    Log(String),
    /// `proc <path>`: reply `"\n"` (more), the file in chunks (more), then `""`.
    Proc(String),
    /// `stack <pid>`: `None` when no number was given (reply [`SPECIFY_PID`]).
    Stack(Option<i32>),
}

/// What a request text parses to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A command for the VMM.
    Command(Command),
    /// An error UML answers without involving the machine (`Unknown command`,
    /// `Bad configuration option`, `Bad remove option`).
    Reply(Reply),
}

/// The command table, in UML's lookup order.
const TABLE: [&str; 13] = [
    "version", "halt", "reboot", "config", "remove", "sysrq", "help", "cad", "stop", "go", "log",
    "proc", "stack",
];

/// The kernel's `skip_spaces` (isspace: space, \t, \n, \v, \f, \r).
fn skip_spaces(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
        .unwrap_or(s.len());
    &s[n..]
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

/// `sscanf("%d")`: optional white space, optional sign, digits. Saturates on overflow.
fn scan_int(s: &[u8]) -> Option<i32> {
    let s = skip_spaces(s);
    let (neg, s) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut v: i64 = 0;
    for &b in &s[..digits] {
        v = (v * 10 + i64::from(b - b'0')).min(i64::from(i32::MAX) + 1);
    }
    let v = if neg { -v } else { v };
    Some(v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
}

/// Parse a request text (already cut at its NUL) the way UML dispatches it.
pub fn parse(text: &[u8]) -> Parsed {
    let Some(name) = TABLE.iter().find(|n| text.starts_with(n.as_bytes())) else {
        return Parsed::Reply(Reply::error(UNKNOWN_COMMAND));
    };
    let after = &text[name.len()..];
    let cmd = match *name {
        "version" => Command::Version,
        "halt" => Command::Halt,
        "reboot" => Command::Reboot,
        "config" | "remove" => {
            let arg = lossy(skip_spaces(after));
            match Device::find(&arg) {
                Some(device) => {
                    let spec = DeviceSpec { device, text: arg };
                    if *name == "config" {
                        Command::Config(spec)
                    } else {
                        Command::Remove(spec)
                    }
                }
                None if *name == "config" => return Parsed::Reply(Reply::error(BAD_CONFIG_OPTION)),
                None => return Parsed::Reply(Reply::error(BAD_REMOVE_OPTION)),
            }
        }
        "sysrq" => Command::Sysrq(lossy(skip_spaces(after)).chars().next()),
        "help" => Command::Help,
        "cad" => Command::Cad,
        "stop" => Command::Stop,
        "go" => Command::Go,
        // UML skips exactly "log " (4 bytes), whatever they are.
        "log" => Command::Log(lossy(text.get(4..).unwrap_or(&[]))),
        "proc" => Command::Proc(lossy(skip_spaces(after))),
        _ => Command::Stack(scan_int(skip_spaces(after))),
    };
    Parsed::Command(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cmd(s: &str) -> Command {
        match parse(s.as_bytes()) {
            Parsed::Command(c) => c,
            Parsed::Reply(r) => panic!("{s:?} gave reply {r:?}"),
        }
    }
    fn reply(s: &str) -> Reply {
        match parse(s.as_bytes()) {
            Parsed::Reply(r) => r,
            Parsed::Command(c) => panic!("{s:?} gave command {c:?}"),
        }
    }

    #[test]
    fn help_text_is_exact() {
        assert_eq!(HELP_TEXT.len(), 722);
        assert!(HELP_TEXT.starts_with("Commands: \n    version - Get kernel version \n"));
        assert!(HELP_TEXT.contains("Add a new device to UML;  \n\tsame syntax as command line \n"));
        assert!(HELP_TEXT.ends_with("stack <pid> - returns the stack of the specified pid\n"));
        assert_eq!(HELP_TEXT.lines().count(), 16);
    }

    #[test]
    fn prefix_matching_in_table_order() {
        assert_eq!(cmd("version"), Command::Version);
        assert_eq!(cmd("versionXYZ"), Command::Version);
        assert_eq!(cmd("halt"), Command::Halt);
        assert_eq!(cmd("reboot now"), Command::Reboot);
        assert_eq!(cmd("help"), Command::Help);
        assert_eq!(cmd("cad"), Command::Cad);
        assert_eq!(cmd("stop"), Command::Stop);
        assert_eq!(cmd("go"), Command::Go);
        assert_eq!(cmd("gopher"), Command::Go);
        assert_eq!(reply("  version"), Reply::error("Unknown command"));
        assert_eq!(reply(""), Reply::error("Unknown command"));
        assert_eq!(reply("bogus"), Reply::error("Unknown command"));
        assert_eq!(reply("VERSION"), Reply::error("Unknown command"));
    }

    #[test]
    fn config_and_remove() {
        let Command::Config(s) = cmd("config   ubd1=/srv/a.img,/srv/b.img") else {
            panic!()
        };
        assert_eq!(s.device, Device::Ubd);
        assert_eq!(s.text, "ubd1=/srv/a.img,/srv/b.img");
        assert_eq!(s.rest(), "1=/srv/a.img,/srv/b.img");
        assert_eq!(s.id(), "1");
        assert_eq!(s.value(), Some("/srv/a.img,/srv/b.img"));
        assert!(!s.is_query());
        let Command::Config(s) = cmd("config eth1") else {
            panic!()
        };
        assert_eq!((s.device, s.id(), s.is_query()), (Device::Eth, "1", true));
        let Command::Config(s) = cmd("config con2=pts") else {
            panic!()
        };
        assert_eq!((s.device, s.value()), (Device::Con, Some("pts")));
        let Command::Config(s) = cmd("config mem") else {
            panic!()
        };
        assert_eq!((s.device, s.id()), (Device::Mem, ""));
        let Command::Config(s) = cmd("config mem=+64M") else {
            panic!()
        };
        assert_eq!(s.value(), Some("+64M"));
        let Command::Remove(s) = cmd("remove ubd0x") else {
            panic!()
        };
        assert_eq!((s.device, s.id()), (Device::Ubd, "0x"));
        let Command::Config(s) = cmd("configssl0") else {
            panic!()
        };
        assert_eq!(s.device, Device::Ssl);
        let Command::Remove(s) = cmd("remove vec0") else {
            panic!()
        };
        assert_eq!(s.device, Device::Vec);
        let Command::Config(s) = cmd("config hostfs1=/srv/data,ro,tag=data") else {
            panic!()
        };
        assert_eq!(
            (s.device, s.id(), s.value()),
            (Device::Hostfs, "1", Some("/srv/data,ro,tag=data"))
        );
        let Command::Remove(s) = cmd("remove hostfs") else {
            panic!()
        };
        assert_eq!((s.device, s.id()), (Device::Hostfs, ""));
        // Not a prefix of another device's name, nor the other way round.
        assert_eq!(
            reply("config host=/x"),
            Reply::error("Bad configuration option")
        );
        assert_eq!(reply("config"), Reply::error("Bad configuration option"));
        assert_eq!(
            reply("config foo=bar"),
            Reply::error("Bad configuration option")
        );
        assert_eq!(
            reply("config foo"),
            Reply::error("Bad configuration option")
        );
        assert_eq!(reply("remove"), Reply::error("Bad remove option"));
        assert_eq!(reply("remove foo"), Reply::error("Bad remove option"));
    }

    #[test]
    fn arguments() {
        assert_eq!(cmd("sysrq m"), Command::Sysrq(Some('m')));
        assert_eq!(cmd("sysrq"), Command::Sysrq(None));
        assert_eq!(cmd("sysrq   b extra"), Command::Sysrq(Some('b')));
        assert_eq!(cmd("log hello"), Command::Log("hello".into()));
        assert_eq!(cmd("log \n"), Command::Log("\n".into()));
        assert_eq!(cmd("log"), Command::Log(String::new()));
        assert_eq!(cmd("logXhello"), Command::Log("hello".into()));
        assert_eq!(cmd("proc  meminfo"), Command::Proc("meminfo".into()));
        assert_eq!(cmd("proc"), Command::Proc(String::new()));
        assert_eq!(cmd("stack 1"), Command::Stack(Some(1)));
        assert_eq!(cmd("stack -5x"), Command::Stack(Some(-5)));
        assert_eq!(cmd("stack"), Command::Stack(None));
        assert_eq!(cmd("stack abc"), Command::Stack(None));
        assert_eq!(cmd("stack 99999999999"), Command::Stack(Some(i32::MAX)));
    }

    #[test]
    fn multi_reply_helpers() {
        let v = proc_replies(b"137.74 135.81\n");
        assert_eq!(
            v,
            [
                Reply::ok("\n").more(),
                Reply::ok("137.74 135.81\n").more(),
                Reply::ok("")
            ]
        );
        assert_eq!(proc_replies(&[b'a'; 5000]).len(), 4);
        assert_eq!(proc_replies(b"").len(), 2);
        let v = console_replies(["sysrq: Show Memory\n", "Mem-Info:\n"]);
        assert_eq!(v.len(), 3);
        assert!(v[0].more && v[1].more && !v[2].more && v[2].text.is_empty());
    }

    #[test]
    fn reply_helpers() {
        assert_eq!(Reply::no_device().err, -19);
        assert_eq!(Reply::device_busy().err, -16);
        assert_eq!(
            Reply::invalid_device_number(0, 15).text,
            b"Invalid device number - must be between 0 and 15"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn device_spec_accessors_never_panic(rest in ".{0,40}") {
            for dev in Device::ALL {
                if let Parsed::Command(Command::Config(s)) =
                    parse(format!("config {}{}", dev.name(), rest).as_bytes())
                {
                    let _ = (s.rest(), s.id(), s.value(), s.is_query());
                }
            }
        }
    }
}
