//! PURE: the UML-style command line (`mem=256M ubd0=… eth0=… con0=… umid=…`) to a [`Config`].
//!
//! kuml reads its arguments the way User-Mode Linux does: each `name=value` word it knows is
//! consumed, and every other word is appended, in order, to the guest kernel command line.
//! Device options (`ubdN`, `ethN`, `conN`, `sslN`) are kept as text here, keyed by index, and
//! parsed by their device crates when the VM is built, so that this module stays a pure
//! argv-to-struct step.

mod console;
mod root;
mod size;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use console::{console_notes, map_consoles, named_consoles, UML_CONSOLES};
pub use root::{rewrite_root, root_needs_ubd0, vd_name};
pub use size::{parse_size, SizeError};

/// Default guest memory, as UML's (`mem=` absent).
pub const DEFAULT_MEM: u64 = 64 << 20;
/// The most vCPUs kuml starts.
pub const MAX_VCPUS: u8 = 64;
/// Longest umid UML accepts (`UMID_LEN` minus the terminating NUL).
pub const MAX_UMID_LEN: usize = 63;

/// What the command line asks kuml to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Print the usage text and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
    /// Run a VM.
    Run(Box<Config>),
}

/// Per-index device options plus the `name=` form that applies to all of them (`con=`, `ssl=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexedOptions {
    /// The value of the bare option (`con=pts`), which applies to every index not given alone.
    pub all: Option<String>,
    /// Values given for one index (`con1=pts`); the specific one wins over `all`.
    pub each: BTreeMap<u32, String>,
}

impl IndexedOptions {
    /// The value in force for `index`: the specific one, else the shared one.
    pub fn get(&self, index: u32) -> Option<&str> {
        self.each
            .get(&index)
            .or(self.all.as_ref())
            .map(String::as_str)
    }
}

/// A validated kuml configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub ncpus: u8,
    /// Instance name (`umid=`); a random one is chosen at start when absent.
    pub umid: Option<String>,
    /// Directory holding the instance directories (`uml_dir=`, default `~/.uml`).
    pub uml_dir: Option<PathBuf>,
    /// Guest kernel (`kernel=`), a vmlinux ELF or a bzImage; default: the one resources/ builds.
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (`initrd=`).
    pub initrd: Option<PathBuf>,
    /// Exit instead of restarting when the guest reboots (`noreboot`, as UML).
    pub noreboot: bool,
    /// Block devices, `ubd<N|letter><flags>=…`, by unit.
    pub ubd: BTreeMap<usize, ubd::UbdSpec>,
    /// `ubd=sync`: synchronous writes on every disk.
    pub ubd_sync: bool,
    /// Network devices `ethN=…` (and `vecN:transport=tap,…`), by index.
    pub eth: BTreeMap<u32, netdev::NetSpec>,
    /// Consoles `con=`/`conN=`.
    pub con: IndexedOptions,
    /// Serial lines `ssl=`/`sslN=`.
    pub ssl: IndexedOptions,
    /// `mconsole=notify:<socket>`.
    pub mconsole_notify: Option<PathBuf>,
    /// `hostfs=<dir>[,flags]`: the export the guest's `hostfs` type mounts, when given (the
    /// default is the host's `/`, see [`Config::hostfs_shares`]).
    pub hostfs: Option<hostfs::ShareSpec>,
    /// `nohostfs`: no default hostfs export.
    pub nohostfs: bool,
    /// `hostfs<N>=<dir>[,flags]`: more shared directories, by N.
    pub shares: BTreeMap<u32, hostfs::ShareSpec>,
    /// The terminal emulator for `xterm` channels (UML's `xterm=<emulator>,<title>,<exec>`).
    pub xterm: Option<devices::chan::XtermConfig>,
    /// Words passed to the guest kernel command line, in order.
    pub guest_args: Vec<String>,
    /// One line per UML option kuml accepted but ignores (printed once at start).
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mem_size: DEFAULT_MEM,
            ncpus: 1,
            umid: None,
            uml_dir: None,
            kernel: None,
            initrd: None,
            noreboot: false,
            ubd: BTreeMap::new(),
            ubd_sync: false,
            eth: BTreeMap::new(),
            con: IndexedOptions::default(),
            ssl: IndexedOptions::default(),
            mconsole_notify: None,
            hostfs: None,
            nohostfs: false,
            shares: BTreeMap::new(),
            xterm: None,
            guest_args: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl Config {
    /// The directories kuml shares with the guest: the default export (`hostfs=`, else the
    /// host's `/`, unless `nohostfs`), then `hostfs1`, `hostfs2`, ….
    pub fn hostfs_shares(&self) -> Vec<hostfs::ShareSpec> {
        let default = match (&self.hostfs, self.nohostfs) {
            (_, true) => None,
            (Some(s), false) => Some(s.clone()),
            (None, false) => Some(hostfs::ShareSpec::default_export()),
        };
        default
            .into_iter()
            .chain(self.shares.values().cloned())
            .collect()
    }

    /// Records a share added at run time (`config hostfs<N>=…`): a rebuilt machine has it.
    pub fn add_share(&mut self, spec: hostfs::ShareSpec) {
        if spec.index == 0 {
            self.hostfs = Some(spec);
            self.nohostfs = false;
        } else {
            self.shares.insert(spec.index, spec);
        }
    }

    /// Records that share `index` was removed at run time: a rebuilt machine has no such
    /// share (for the default export: as with `nohostfs`).
    pub fn remove_share(&mut self, index: u32) {
        if index == 0 {
            self.hostfs = None;
            self.nohostfs = true;
        } else {
            self.shares.remove(&index);
        }
    }
}

/// A command-line word kuml could not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `mem=` is not a size kuml can give the guest.
    #[error("mem={value}")]
    Mem {
        /// The value given.
        value: String,
        /// Why it was refused.
        #[source]
        source: SizeError,
    },
    /// `ncpus=` is not a number from 1 to [`MAX_VCPUS`].
    #[error("ncpus={0}: expected a number of vCPUs from 1 to {MAX_VCPUS}")]
    Ncpus(String),
    /// `umid=` is empty, too long, or holds a character that cannot name a directory.
    #[error("umid={0}: expected 1 to {MAX_UMID_LEN} characters without '/'")]
    Umid(String),
    /// An option that needs a value got an empty one.
    #[error("{0}=: the value is empty")]
    Empty(String),
    /// A device option's index is not a number (`con1x=`) or out of range.
    #[error("{0}: bad device index")]
    Index(String),
    /// A `ubd` option is malformed (UML's message).
    #[error("{arg}")]
    Ubd {
        /// The argument.
        arg: String,
        /// UML's reason.
        #[source]
        source: ubd::SpecError,
    },
    /// An `eth`/`vec` option is malformed.
    #[error("{arg}")]
    Eth {
        /// The argument.
        arg: String,
        /// What is wrong.
        #[source]
        source: netdev::SpecError,
    },
    /// `mconsole=` holds something other than `notify:<socket>`.
    #[error("mconsole={0}: expected notify:<socket>")]
    Mconsole(String),
    /// A `hostfs` option is malformed.
    #[error("{arg}: {source}")]
    Hostfs {
        /// The argument.
        arg: String,
        /// What is wrong.
        #[source]
        source: hostfs::SpecError,
    },
    /// `nohostfs` together with `hostfs=`.
    #[error("nohostfs and hostfs= contradict each other")]
    HostfsOff,
    /// Two shares with the same tag.
    #[error("hostfs")]
    HostfsTags(#[source] hostfs::DuplicateTag),
    /// `xterm=` is not `<emulator>[,<title switch>[,<exec switch>]]`.
    #[error("xterm={value}")]
    Xterm {
        /// The value given.
        value: String,
        /// What is wrong.
        #[source]
        source: devices::chan::ChanSpecError,
    },
}

/// UML's default disk, `ubd0=root_fs`, is missing and the guest would boot from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "ubd0: no file '{DEFAULT_UBD0}' in the working directory (UML's default disk when no \
     ubd0= is given): give ubd0=<image>, or initrd= for a guest without disks"
)]
pub struct MissingRootFs;

/// The file UML attaches as `ubd0` when the command line has none (relative to the working
/// directory).
pub const DEFAULT_UBD0: &str = "root_fs";

/// UML's options that mean nothing under KVM: accepted with one warning each, never an error
/// (a launcher written for UML passes them). `(option, what kuml does instead)`; an option
/// ending in `=` matches any value, one without matches the bare word.
const UML_ONLY: &[(&str, &str)] = &[
    (
        "time-travel",
        "the guest runs on the host's real time under KVM",
    ),
    (
        "time-travel=",
        "the guest runs on the host's real time under KVM",
    ),
    (
        "ssl-non-raw",
        "serial lines are UARTs; a host terminal on one is always raw",
    ),
    (
        "nosysemu",
        "there is no ptrace system-call emulation under KVM",
    ),
    ("fake_ide", "UML removed it too"),
    ("iomem=", "UML's iomem regions have no KVM counterpart"),
];

/// Highest `ethN` index accepted.
const MAX_ETH: u32 = 15;
/// Highest `conN` index: UML has 16 consoles (`MAX_TTYS`), and so has kuml's console
/// device; a higher index is a usage error here rather than a warning at build time (C4).
const MAX_CON: u32 = devices::virtio::console::DEFAULT_MAX_PORTS - 1;
/// Highest `sslN` index: COM1 to COM4.
const MAX_SSL: u32 = 3;

/// Parses kuml's arguments (without the program name).
pub fn parse<I, S>(args: I) -> Result<Action, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut cfg = Config::default();
    let mut after_dashes = false;
    for word in args {
        let word = word.as_ref();
        if after_dashes {
            // `init=/bin/x -- args`: everything after `--` is init's, untouched.
            cfg.guest_args.push(word.to_owned());
            continue;
        }
        // Options are read as the kernel's parser reads them (quotes stripped); a word that is
        // not kuml's goes to the guest as given, quotes included.
        let unquoted = kernel_unquote(word);
        let arg = unquoted.as_str();
        match arg {
            "--help" | "-h" => return Ok(Action::Help),
            "--version" | "-V" => return Ok(Action::Version),
            "--" => {
                after_dashes = true;
                cfg.guest_args.push(word.to_owned());
                continue;
            }
            "noreboot" => {
                cfg.noreboot = true;
                continue;
            }
            "nohostfs" => {
                cfg.nohostfs = true;
                continue;
            }
            _ => {}
        }
        if let Some(rest) = arg.strip_prefix("udb") {
            // UML's typo catcher: the word is consumed with this warning.
            cfg.warnings.push(format!(
                "udb{rest} specified on command line is almost certainly a ubd -> udb TYPO"
            ));
            continue;
        }
        if let Some(why) = uml_only(arg) {
            cfg.warnings
                .push(format!("{arg}: UML option ignored: {why}"));
            continue;
        }
        if let Some(after) = arg.strip_prefix("ubd") {
            apply_ubd(&mut cfg, arg, after)?;
            continue;
        }
        if is_vec_arg(arg) {
            let (n, spec) = netdev::parse_vec_arg(arg).map_err(|source| ConfigError::Eth {
                arg: arg.to_owned(),
                source,
            })?;
            cfg.eth.insert(n, spec);
            continue;
        }
        let Some((name, value)) = arg.split_once('=') else {
            cfg.guest_args.push(word.to_owned());
            continue;
        };
        if !apply(&mut cfg, name, value)? {
            cfg.guest_args.push(word.to_owned());
        }
    }
    if cfg.nohostfs && cfg.hostfs.is_some() {
        return Err(ConfigError::HostfsOff);
    }
    hostfs::check_unique_tags(&cfg.hostfs_shares()).map_err(ConfigError::HostfsTags)?;
    Ok(Action::Run(Box::new(cfg)))
}

/// The reason kuml ignores UML-only option `arg`, if it is one.
fn uml_only(arg: &str) -> Option<&'static str> {
    UML_ONLY.iter().find_map(|(opt, why)| {
        let hit = match opt.strip_suffix('=') {
            Some(name) => arg.split_once('=').is_some_and(|(n, _)| n == name),
            None => arg == *opt,
        };
        hit.then_some(*why)
    })
}

/// A word as Linux's command-line parser (`next_arg`) sees it: a leading double quote, the
/// quote opening the value and the closing quote are dropped, so `"ubd0=a.cow,b.img"` and
/// `ubd0="a.cow,b.img"` both read as `ubd0=a.cow,b.img`. Quotes elsewhere stay.
pub fn kernel_unquote(word: &str) -> String {
    let (quoted, body) = match word.strip_prefix('"') {
        Some(rest) => (true, rest),
        None => (false, word),
    };
    let mut out = body.to_owned();
    let mut value_quoted = false;
    if let Some(eq) = out.find('=') {
        if out[eq + 1..].starts_with('"') {
            out.remove(eq + 1);
            value_quoted = true;
        }
    }
    if (quoted || value_quoted) && out.ends_with('"') {
        out.pop();
    }
    out
}

impl Config {
    /// UML's default disk: without `ubd0`, UML attaches the file `root_fs` from the working
    /// directory. `root_fs_exists` says whether that file is there. It is attached when it
    /// exists; when it is missing, booting on (the guest would panic for want of a root) is an
    /// error unless the guest has another root: an initrd, or a `root=` that is not ubd0.
    pub fn apply_default_ubd0(&mut self, root_fs_exists: bool) -> Result<(), MissingRootFs> {
        if self.ubd.contains_key(&0) {
            return Ok(());
        }
        if root_fs_exists {
            let spec = match ubd::parse_ubd_with(&format!("0={DEFAULT_UBD0}"), |_| false) {
                Ok(ubd::UbdOption::Device(spec)) => spec,
                // A fixed, valid option: parsed by the same code as the user's.
                _ => return Err(MissingRootFs),
            };
            self.ubd.insert(0, spec);
            return Ok(());
        }
        if self.initrd.is_some() || !root_needs_ubd0(&self.guest_args) {
            return Ok(());
        }
        Err(MissingRootFs)
    }
}

/// Applies one `name=value` option; returns false if it is not kuml's.
fn apply(cfg: &mut Config, name: &str, value: &str) -> Result<bool, ConfigError> {
    let nonempty = |v: &str| {
        if v.is_empty() {
            Err(ConfigError::Empty(name.to_owned()))
        } else {
            Ok(v.to_owned())
        }
    };
    match name {
        "mem" => {
            cfg.mem_size = parse_size(value).map_err(|source| ConfigError::Mem {
                value: value.to_owned(),
                source,
            })?;
        }
        "ncpus" => {
            cfg.ncpus = value
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=MAX_VCPUS).contains(n))
                .ok_or_else(|| ConfigError::Ncpus(value.to_owned()))?;
        }
        "umid" => {
            if value.is_empty() || value.len() > MAX_UMID_LEN || value.contains('/') {
                return Err(ConfigError::Umid(value.to_owned()));
            }
            // UML: only the first umid= counts.
            cfg.umid.get_or_insert_with(|| value.to_owned());
        }
        "uml_dir" => cfg.uml_dir = Some(PathBuf::from(nonempty(value)?)),
        "kernel" => cfg.kernel = Some(PathBuf::from(nonempty(value)?)),
        "initrd" => cfg.initrd = Some(PathBuf::from(nonempty(value)?)),
        "mconsole" => {
            let socket = value
                .strip_prefix("notify:")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ConfigError::Mconsole(value.to_owned()))?;
            cfg.mconsole_notify = Some(PathBuf::from(socket));
        }
        "xterm" => {
            cfg.xterm = Some(devices::chan::parse_xterm_option(value).map_err(|source| {
                ConfigError::Xterm {
                    value: value.to_owned(),
                    source,
                }
            })?);
        }
        "con" => cfg.con.all = Some(nonempty(value)?),
        "ssl" => cfg.ssl.all = Some(nonempty(value)?),
        _ => {
            if let Some(index) = hostfs::parse_share_name(name) {
                let err = |source| ConfigError::Hostfs {
                    arg: format!("{name}={value}"),
                    source,
                };
                let spec = hostfs::parse_share(index.map_err(err)?, value).map_err(err)?;
                match spec.index {
                    0 => cfg.hostfs = Some(spec),
                    n => {
                        cfg.shares.insert(n, spec);
                    }
                }
            } else if let Some(n) = indexed(name, "eth", MAX_ETH)? {
                let spec = netdev::parse_net_spec(value).map_err(|source| ConfigError::Eth {
                    arg: format!("{name}={value}"),
                    source,
                })?;
                cfg.eth.insert(n, spec);
            } else if let Some(n) = indexed(name, "con", MAX_CON)? {
                cfg.con.each.insert(n, nonempty(value)?);
            } else if let Some(n) = indexed(name, "ssl", MAX_SSL)? {
                cfg.ssl.each.insert(n, nonempty(value)?);
            } else {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// `vec<N>:…`, UML's vector network option.
fn is_vec_arg(arg: &str) -> bool {
    arg.strip_prefix("vec").is_some_and(|rest| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest.as_bytes().get(digits) == Some(&b':')
    })
}

/// A `ubd…` word: a device, `ubd=sync`, or UML's obsolete fake major.
fn apply_ubd(cfg: &mut Config, arg: &str, after: &str) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Ubd {
        arg: arg.to_owned(),
        source,
    };
    match ubd::parse_ubd_with(after, |unit| cfg.ubd.contains_key(&unit)).map_err(err)? {
        ubd::UbdOption::GlobalSync => cfg.ubd_sync = true,
        ubd::UbdOption::FakeMajor(_) => log::warn!("{arg}: fake major not supported any more"),
        ubd::UbdOption::Device(spec) => {
            cfg.ubd.insert(spec.unit, spec);
        }
    }
    Ok(())
}

/// `eth3` with prefix `eth` → `Some(3)`; a word with another prefix → `None`.
fn indexed(name: &str, prefix: &str, max: u32) -> Result<Option<u32>, ConfigError> {
    let Some(digits) = name.strip_prefix(prefix) else {
        return Ok(None);
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        // `console=`, `conmode=`… are the guest kernel's, not ours.
        return Ok(None);
    }
    digits
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= max)
        .map(Some)
        .ok_or_else(|| ConfigError::Index(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(args: &[&str]) -> Config {
        match parse(args).unwrap() {
            Action::Run(cfg) => *cfg,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_uml() {
        let cfg = run(&[]);
        assert_eq!(cfg.mem_size, 64 << 20);
        assert_eq!(cfg.ncpus, 1);
        assert!(cfg.guest_args.is_empty());
    }

    #[test]
    fn consumes_kuml_options_and_passes_the_rest() {
        let cfg = run(&[
            "mem=256M",
            "ncpus=2",
            "umid=web1",
            "quiet",
            "ubd0=web1.cow,debian.img",
            "eth0=mcast",
            "con0=fd:0,fd:1",
            "con1=pts",
            "con=null",
            "ssl1=pts",
            "root=/dev/ubda",
            "console=hvc0",
            "initrd=/tmp/i.cpio",
            "kernel=/tmp/vmlinux",
            "uml_dir=/tmp/uml",
            "mconsole=notify:/tmp/n.sock",
            "noreboot",
        ]);
        assert_eq!(cfg.mem_size, 256 << 20);
        assert_eq!(cfg.ncpus, 2);
        assert_eq!(cfg.umid.as_deref(), Some("web1"));
        let u0 = &cfg.ubd[&0];
        assert_eq!(u0.file.as_deref(), Some("web1.cow"));
        assert_eq!(u0.backing.as_deref(), Some("debian.img"));
        assert!(matches!(cfg.eth[&0].transport, netdev::Transport::Mcast(_)));
        assert_eq!(cfg.con.get(0), Some("fd:0,fd:1"));
        assert_eq!(cfg.con.get(1), Some("pts"));
        assert_eq!(cfg.con.get(5), Some("null"));
        assert_eq!(cfg.ssl.get(1), Some("pts"));
        assert_eq!(cfg.ssl.get(0), None);
        assert_eq!(cfg.guest_args, ["quiet", "root=/dev/ubda", "console=hvc0"]);
        assert_eq!(cfg.initrd, Some(PathBuf::from("/tmp/i.cpio")));
        assert_eq!(cfg.kernel, Some(PathBuf::from("/tmp/vmlinux")));
        assert_eq!(cfg.uml_dir, Some(PathBuf::from("/tmp/uml")));
        assert_eq!(cfg.mconsole_notify, Some(PathBuf::from("/tmp/n.sock")));
        assert!(cfg.noreboot);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(["mem=1G", "--help"]).unwrap(), Action::Help);
        assert_eq!(parse(["--version"]).unwrap(), Action::Version);
    }

    #[test]
    fn first_umid_wins() {
        assert_eq!(run(&["umid=a", "umid=b"]).umid.as_deref(), Some("a"));
    }

    #[test]
    fn bad_values_name_the_argument() {
        let err = |a: &str| devices::error_chain(&parse([a]).unwrap_err());
        assert!(
            err("mem=12Q").starts_with("mem=12Q: "),
            "{}",
            err("mem=12Q")
        );
        assert!(err("ncpus=0").starts_with("ncpus=0: "));
        assert!(err("ncpus=65").starts_with("ncpus=65: "));
        assert!(err("ncpus=x").starts_with("ncpus=x: "));
        assert!(err("umid=").starts_with("umid=: "));
        assert!(err("umid=a/b").starts_with("umid=a/b: "));
        assert!(err(&format!("umid={}", "u".repeat(64))).contains("63"));
        assert!(err("kernel=").starts_with("kernel=: "));
        assert!(err("eth99=mcast").starts_with("eth99: "));
        assert!(err("ssl4=pts").starts_with("ssl4: "));
        assert!(err("con16=pts").starts_with("con16: "));
        assert_eq!(run(&["con15=pts"]).con.get(15), Some("pts"));
        assert!(err("mconsole=foo").starts_with("mconsole=foo: "));
        assert!(err("ubdz=x").starts_with("ubdz=x: "), "{}", err("ubdz=x"));
        assert!(err("eth0=carrier-pigeon").starts_with("eth0=carrier-pigeon: "));
    }

    #[test]
    fn hostfs_options() {
        let cfg = run(&[]);
        assert_eq!(cfg.hostfs_shares(), [hostfs::ShareSpec::default_export()]);
        let cfg = run(&[
            "hostfs=/srv/uml,append",
            "hostfs2=/data,ro,tag=data",
            "hostfs1=/x",
        ]);
        let shares = cfg.hostfs_shares();
        let names: Vec<String> = shares.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names,
            [
                "hostfs=/srv/uml,append",
                "hostfs1=/x",
                "hostfs2=/data,ro,tag=data"
            ]
        );
        assert!(cfg.guest_args.is_empty());
        let cfg = run(&["nohostfs", "hostfs3=/y"]);
        assert_eq!(cfg.hostfs_shares().len(), 1);
        assert_eq!(cfg.hostfs_shares()[0].index, 3);
        // The guest's own words stay the guest's.
        let cfg = run(&["rootfstype=hostfs", "rootflags=/srv/root", "hostfsx=1"]);
        assert_eq!(
            cfg.guest_args,
            ["rootfstype=hostfs", "rootflags=/srv/root", "hostfsx=1"]
        );
        let err = |a: &[&str]| parse(a).unwrap_err().to_string();
        assert_eq!(
            err(&["hostfs1=/x,rx"]),
            "hostfs1=/x,rx: unknown flag 'rx' (ro, rw, tag=<tag> or append)"
        );
        assert!(err(&["hostfs16=/x"]).starts_with("hostfs16=/x: share number 16"));
        assert_eq!(err(&["hostfs1="]), "hostfs1=: no directory given");
        assert_eq!(
            err(&["nohostfs", "hostfs=/x"]),
            "nohostfs and hostfs= contradict each other"
        );
        let e = parse(["hostfs1=/x,tag=hostfs"]).unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "hostfs: hostfs and hostfs1 both have the tag 'hostfs'"
        );
    }

    #[test]
    fn shares_added_and_removed_at_run_time() {
        let mut cfg = run(&["hostfs=/srv/uml"]);
        cfg.add_share(hostfs::parse_share(2, "/data,ro").unwrap());
        let names = |c: &Config| -> Vec<String> {
            c.hostfs_shares().iter().map(|s| s.to_string()).collect()
        };
        assert_eq!(names(&cfg), ["hostfs=/srv/uml", "hostfs2=/data,ro"]);
        cfg.remove_share(0);
        assert_eq!(names(&cfg), ["hostfs2=/data,ro"]);
        cfg.remove_share(2);
        assert!(cfg.hostfs_shares().is_empty());
        // The default export added back over mconsole.
        cfg.add_share(hostfs::parse_share(0, "/x").unwrap());
        assert_eq!(names(&cfg), ["hostfs=/x"]);
        // Without hostfs= given, removing the default export is nohostfs.
        let mut cfg = run(&[]);
        cfg.remove_share(0);
        assert!(cfg.nohostfs && cfg.hostfs_shares().is_empty());
    }

    #[test]
    fn lookalike_words_go_to_the_guest() {
        let cfg = run(&["console=ttyS0", "ethtool=1", "conmode=x"]);
        assert_eq!(cfg.guest_args, ["console=ttyS0", "ethtool=1", "conmode=x"]);
    }

    #[test]
    fn quoted_options_are_read_as_the_kernel_reads_them() {
        // A launcher that quotes for a shell twice: the quotes are inside the argument.
        let cfg = run(&[
            "\"ubd0=a.cow,base.img\"",
            "ubd1=\"data.img\"",
            "\"FOO=bar baz\"",
        ]);
        assert_eq!(cfg.ubd[&0].file.as_deref(), Some("a.cow"));
        assert_eq!(cfg.ubd[&0].backing.as_deref(), Some("base.img"));
        assert_eq!(cfg.ubd[&1].file.as_deref(), Some("data.img"));
        // Not kuml's: to the guest as given, quotes included.
        assert_eq!(cfg.guest_args, ["\"FOO=bar baz\""]);
        assert_eq!(kernel_unquote("\"a=b\""), "a=b");
        assert_eq!(kernel_unquote("a=\"b c\""), "a=b c");
        assert_eq!(kernel_unquote("a=b\"c"), "a=b\"c");
        assert_eq!(kernel_unquote("\""), "");
        assert_eq!(kernel_unquote("plain"), "plain");
    }

    #[test]
    fn words_after_dashes_are_inits() {
        let cfg = run(&["init=/bin/x", "FOO=1", "--", "-v", "mem=1G", "ubd0=x"]);
        assert_eq!(cfg.mem_size, DEFAULT_MEM);
        assert!(cfg.ubd.is_empty());
        assert_eq!(
            cfg.guest_args,
            ["init=/bin/x", "FOO=1", "--", "-v", "mem=1G", "ubd0=x"]
        );
    }

    #[test]
    fn uml_only_options_warn_once_each() {
        let cfg = run(&[
            "time-travel=inf-cpu",
            "time-travel",
            "ssl-non-raw",
            "nosysemu",
            "quiet",
            "hostname=web1",
        ]);
        assert_eq!(cfg.warnings.len(), 4, "{:?}", cfg.warnings);
        assert!(cfg.warnings[0].starts_with("time-travel=inf-cpu: UML option ignored: "));
        assert!(cfg.warnings[2].starts_with("ssl-non-raw: "));
        // hostname= is the guest kernel's (Linux 5.19+ sets the host name from it).
        assert_eq!(cfg.guest_args, ["quiet", "hostname=web1"]);
        assert!(run(&["time-traveller=1"]).warnings.is_empty());
        let typo = run(&["udb0=disk.img"]);
        assert_eq!(
            typo.warnings,
            ["udb0=disk.img specified on command line is almost certainly a ubd -> udb TYPO"]
        );
        assert!(typo.guest_args.is_empty() && typo.ubd.is_empty());
    }

    #[test]
    fn xterm_option_sets_the_terminal() {
        let cfg = run(&["xterm=gnome-terminal,-t,--"]);
        let x = cfg.xterm.unwrap();
        assert_eq!(
            (
                x.emulator.as_str(),
                x.title_switch.as_str(),
                x.exec_switch.as_str()
            ),
            ("gnome-terminal", "-t", "--")
        );
        assert!(run(&[]).xterm.is_none());
        let err = devices::error_chain(&parse(["xterm="]).unwrap_err());
        assert!(err.starts_with("xterm=: "), "{err}");
    }

    #[test]
    fn uml_line_defaults_are_accepted() {
        let cfg = run(&["con=none", "con0=fd:0,fd:1", "ssl=pts"]);
        let cons = devices::chan::resolve_lines(
            devices::chan::LineClass::Console,
            cfg.con.all.as_deref(),
            &cfg.con.each,
            16,
            false,
        )
        .unwrap();
        assert_eq!(cons.len(), 1, "con=none leaves only con0: {cons:?}");
        let ssl = devices::chan::resolve_lines(
            devices::chan::LineClass::Serial,
            cfg.ssl.all.as_deref(),
            &cfg.ssl.each,
            4,
            false,
        )
        .unwrap();
        assert_eq!(ssl.len(), 4);
        assert_eq!(run(&["ssl1=fd:100"]).ssl.get(1), Some("fd:100"));
    }

    #[test]
    fn root_fs_is_the_default_ubd0() {
        let mut cfg = run(&["mem=128M"]);
        cfg.apply_default_ubd0(true).unwrap();
        assert_eq!(cfg.ubd[&0].file.as_deref(), Some(DEFAULT_UBD0));
        assert!(cfg.ubd[&0].backing.is_none());
        // Missing: an error, unless the guest has another root.
        assert_eq!(run(&[]).apply_default_ubd0(false), Err(MissingRootFs));
        assert_eq!(
            run(&["root=/dev/ubda"]).apply_default_ubd0(false),
            Err(MissingRootFs)
        );
        let mut with_initrd = run(&["initrd=/i"]);
        with_initrd.apply_default_ubd0(false).unwrap();
        assert!(with_initrd.ubd.is_empty());
        run(&["root=/dev/nfs"]).apply_default_ubd0(false).unwrap();
        // ubd0 given (by letter too): root_fs is not looked at.
        let mut given = run(&["ubda=disk.img"]);
        given.apply_default_ubd0(true).unwrap();
        assert_eq!(given.ubd[&0].file.as_deref(), Some("disk.img"));
        // ubd1 alone: root_fs is still ubd0, as in UML.
        let mut one = run(&["ubdb=data.img"]);
        one.apply_default_ubd0(true).unwrap();
        assert_eq!(one.ubd.keys().copied().collect::<Vec<_>>(), [0, 1]);
        let msg = MissingRootFs.to_string();
        assert!(msg.contains("'root_fs'") && !msg.contains('\n'), "{msg}");
    }

    proptest! {
        #[test]
        fn never_panics(args in proptest::collection::vec(".{0,24}", 0..8)) {
            let _ = parse(&args);
        }

        #[test]
        fn unknown_words_pass_through_in_order(
            words in proptest::collection::vec("[a-z_.]{1,10}(=[a-z0-9]{0,6})?", 0..8)
        ) {
            let known = ["mem", "ncpus", "umid", "uml_dir", "kernel", "initrd", "mconsole",
                         "con", "ssl", "noreboot", "nohostfs", "xterm", "nosysemu", "fake_ide",
                         "iomem"];
            let words: Vec<String> = words
                .into_iter()
                .filter(|w| {
                    let n = w.split('=').next().unwrap_or("");
                    !known.contains(&n) && !n.starts_with("ubd") && !n.starts_with("udb")
                        && !n.starts_with("vec")
                        && !n.starts_with("eth") && !n.starts_with("con") && !n.starts_with("ssl")
                        && !n.starts_with("hostfs")
                })
                .collect();
            let cfg = run(&words.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(cfg.guest_args, words);
        }
    }
}
