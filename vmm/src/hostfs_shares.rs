//! hostfs at boot: each share's virtiofsd started and its virtio-fs device made, with what
//! kuml says once about them (docs/hostfs.md).

use devices::virtio::fs::Fs;

use crate::config::Config;
use crate::error_chain;

/// A hostfs share could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// Its virtiofsd could not be started.
    #[error("{name}")]
    Daemon {
        /// `hostfs`, `hostfs1`, ….
        name: String,
        /// Why.
        #[source]
        source: hostfs::DaemonError,
    },
    /// The virtio-fs device could not be set up with it.
    #[error("{name}")]
    Device {
        /// `hostfs`, `hostfs1`, ….
        name: String,
        /// Why.
        #[source]
        source: devices::virtio::fs::FsError,
    },
}

/// Starts the virtiofsd of a hostfs share and makes its virtio-fs device.
pub fn open_share(spec: &hostfs::ShareSpec) -> Result<Fs, ShareError> {
    let name = spec.name();
    let daemon = hostfs::find_virtiofsd()
        .and_then(|program| {
            let opts = hostfs::DaemonOptions {
                spawner: crate::seccomp::spawn,
                ..hostfs::DaemonOptions::for_this_process(program)
            };
            hostfs::Daemon::spawn(spec, &opts)
        })
        .map_err(|source| ShareError::Daemon {
            name: name.clone(),
            source,
        })?;
    Fs::new(spec, daemon).map_err(|source| ShareError::Device { name, source })
}

/// The devices of every share `cfg` names, each with its options. The default export (the host's `/`, as UML's) is
/// there only if it can be: without virtiofsd the guest has no hostfs, with one message; a
/// share named on the command line that cannot be set up is an error.
pub fn open_shares(cfg: &Config) -> Result<Vec<(hostfs::ShareSpec, Fs)>, ShareError> {
    check_hostfs_root(cfg);
    let mut devices = Vec::new();
    for spec in &cfg.hostfs_shares() {
        match open_share(spec) {
            Ok(fs) => {
                warnings(spec);
                devices.push((spec.clone(), fs));
            }
            Err(e) if spec.index == 0 && cfg.hostfs.is_none() => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    eprintln!(
                        "kuml: {}; the guest has no hostfs (nohostfs turns it off without this \
                         message)",
                        error_chain(&e)
                    )
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(devices)
}

/// What kuml says once about a share it started: that a guest of root can change the
/// default export with root's rights, and that UML's `append` flag is not supported.
pub(crate) fn warnings(spec: &hostfs::ShareSpec) {
    static ROOT: std::sync::Once = std::sync::Once::new();
    static APPEND: std::sync::Once = std::sync::Once::new();
    // SAFETY: geteuid cannot fail and touches no memory.
    if spec.index == 0 && !spec.read_only && unsafe { libc::geteuid() } == 0 {
        ROOT.call_once(|| {
            eprintln!(
                "kuml: hostfs: the guest can change {} with root's rights (hostfs=<dir> \
                 confines it, hostfs=<dir>,ro makes it read-only, nohostfs turns it off)",
                spec.dir.display()
            )
        });
    }
    if spec.append {
        APPEND.call_once(|| {
            eprintln!(
                "kuml: {}: UML's append flag is not supported; files open as the guest asks",
                spec.name()
            )
        });
    }
}

/// With `rootfstype=hostfs`, says so when the root directory the guest will ask for
/// (`rootflags=`, inside the export) is not a directory on the host: the guest would end in
/// "VFS: Unable to mount root fs".
fn check_hostfs_root(cfg: &Config) {
    let word = |key: &str| {
        cfg.guest_args
            .iter()
            .rev()
            .find_map(|w| w.strip_prefix(key).map(str::to_owned))
    };
    if word("rootfstype=").as_deref() != Some("hostfs") {
        return;
    }
    let Some(export) = cfg.hostfs_shares().into_iter().find(|s| s.index == 0) else {
        eprintln!("kuml: rootfstype=hostfs: nohostfs was given, so the guest has no hostfs root");
        return;
    };
    let flags = word("rootflags=").unwrap_or_default();
    match hostfs::parse_mount_data(&flags) {
        Ok(data) => {
            let dir = data.host_path(&export.dir);
            if !dir.is_dir() {
                eprintln!(
                    "kuml: rootflags={flags}: {} is not a directory on the host; the guest will \
                     not find its root",
                    dir.display()
                );
            }
        }
        Err(e) => eprintln!("kuml: rootflags={flags}: {e}; the guest will refuse it"),
    }
}
