//! Devices made from their options: a ubd unit's image as a virtio-blk device, an ethN
//! transport as a virtio-net device. Used at boot and for hot-plug alike.

use devices::virtio::block::{Block, BlockError};
use devices::virtio::net::{Net, NetError};

use crate::uml_log::UML_TARGET;

/// A ubd unit could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image (UML's message).
    #[error("ubd{unit}")]
    Image {
        /// The unit.
        unit: usize,
        /// UML's reason.
        #[source]
        source: ubd::OpenError,
    },
    /// The virtio-blk device.
    #[error("ubd{unit}")]
    Device {
        /// The unit.
        unit: usize,
        /// Why.
        #[source]
        source: BlockError,
    },
}

/// An ethN or vecN backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// The transport (tap, socket, switch).
    #[error("{option}")]
    Backend {
        /// The option that configured it (`eth0`, `vec1`).
        option: String,
        /// Why.
        #[source]
        source: netdev::OpenError,
    },
    /// The virtio-net device.
    #[error("{option}")]
    Device {
        /// The option that configured it.
        option: String,
        /// Why.
        #[source]
        source: NetError,
    },
}

/// Opens a ubd unit's image and makes its virtio-blk device.
pub fn open_disk(spec: &ubd::UbdSpec, global_sync: bool) -> Result<Block, DiskError> {
    let unit = spec.unit;
    let image =
        ubd::open_spec(spec, global_sync).map_err(|source| DiskError::Image { unit, source })?;
    Block::from_image(image, spec, global_sync).map_err(|source| DiskError::Device { unit, source })
}

/// Opens an ethN backend and makes its virtio-net device; `umid` seeds the default MAC.
pub fn open_nic(index: u32, spec: &netdev::NetSpec, umid: &str) -> Result<Net, NicError> {
    let mac = spec.mac_or_derived(umid, index);
    // UML's console lines for the device (its MAC is derived from the umid, not random, so
    // UML's "Choosing a random ethernet address" has no counterpart).
    if let netdev::Transport::Mcast(m) = &spec.transport {
        log::info!(target: UML_TARGET, "Configured mcast device: {}:{}-{}", m.group, m.port, m.ttl);
    }
    log::info!(target: UML_TARGET, "Netdevice {index} ({mac}) : ");
    log::info!(target: UML_TARGET, "{}", spec.transport_line());
    let option = spec.option_name(index);
    let backend = netdev::open_backend(spec, mac).map_err(|source| NicError::Backend {
        option: option.clone(),
        source,
    })?;
    Net::new(backend, mac).map_err(|source| NicError::Device { option, source })
}
