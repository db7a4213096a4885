//! PURE: the virtio-console multiport control messages (virtio 1.2, 5.3.6.2).
//!
//! Every message starts with `struct virtio_console_control { le32 id; le16 event; le16 value; }`.
//! The guest sends DEVICE_READY, PORT_READY and PORT_OPEN on the control transmit queue; the
//! device sends DEVICE_ADD, DEVICE_REMOVE, CONSOLE_PORT, RESIZE, PORT_OPEN and PORT_NAME on the
//! control receive queue. RESIZE carries `struct virtio_console_resize { le16 cols; le16 rows; }`
//! after the header, as the spec lists it and as the guest's Linux 6.1 reads it (its
//! `handle_control_message` declares `cols` first). PORT_NAME carries the name's bytes, without
//! a terminating NUL.

/// Size of the control header.
pub const CONTROL_HEADER_LEN: usize = 8;

/// Control events.
pub mod event {
    /// Guest: the driver is ready (value 1) or failed (0).
    pub const DEVICE_READY: u16 = 0;
    /// Device: a port was added.
    pub const DEVICE_ADD: u16 = 1;
    /// Device: a port was removed.
    pub const DEVICE_REMOVE: u16 = 2;
    /// Guest: a port is set up (value 1) or failed (0).
    pub const PORT_READY: u16 = 3;
    /// Device: the port is a console (hvc).
    pub const CONSOLE_PORT: u16 = 4;
    /// Device: the console size changed.
    pub const RESIZE: u16 = 5;
    /// Both: the sender opened (1) or closed (0) the port.
    pub const PORT_OPEN: u16 = 6;
    /// Device: the port's name follows.
    pub const PORT_NAME: u16 = 7;
}

/// A message from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMsg {
    /// The driver finished probing (`ok`) or gave up.
    DeviceReady {
        /// Value 1.
        ok: bool,
    },
    /// The guest set up port `id` (`ok`) or failed to.
    PortReady {
        /// The port.
        id: u32,
        /// Value 1.
        ok: bool,
    },
    /// A guest program opened or closed port `id`.
    PortOpen {
        /// The port.
        id: u32,
        /// Value 1.
        open: bool,
    },
}

/// A message to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMsg {
    /// Port `id` exists.
    DeviceAdd(u32),
    /// Port `id` is gone.
    DeviceRemove(u32),
    /// Port `id` is a console (it becomes an hvc tty).
    ConsolePort(u32),
    /// The console on port `id` has a new size.
    Resize {
        /// The port.
        id: u32,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// The host side of port `id` is connected (or not).
    PortOpen {
        /// The port.
        id: u32,
        /// Connected.
        open: bool,
    },
    /// Port `id` is called `name` (`/sys/class/virtio-ports/vportXpN/name`).
    PortName {
        /// The port.
        id: u32,
        /// The name.
        name: String,
    },
}

/// Why a guest control message is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Shorter than the header.
    #[error("control message of {0} bytes is shorter than its 8-byte header")]
    Short(usize),
    /// An event number no message has.
    #[error("unknown control event {0}")]
    UnknownEvent(u16),
    /// An event only the device sends.
    #[error("control event {0} is not one the driver sends")]
    NotFromDriver(u16),
}

impl GuestMsg {
    /// Decodes a message the guest sent. Trailing bytes are ignored (the driver sends exactly
    /// the header).
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlError> {
        let h: &[u8; CONTROL_HEADER_LEN] = bytes
            .get(..CONTROL_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(ControlError::Short(bytes.len()))?;
        let id = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let ev = u16::from_le_bytes([h[4], h[5]]);
        let value = u16::from_le_bytes([h[6], h[7]]) != 0;
        match ev {
            event::DEVICE_READY => Ok(GuestMsg::DeviceReady { ok: value }),
            event::PORT_READY => Ok(GuestMsg::PortReady { id, ok: value }),
            event::PORT_OPEN => Ok(GuestMsg::PortOpen { id, open: value }),
            event::DEVICE_ADD
            | event::DEVICE_REMOVE
            | event::CONSOLE_PORT
            | event::RESIZE
            | event::PORT_NAME => Err(ControlError::NotFromDriver(ev)),
            other => Err(ControlError::UnknownEvent(other)),
        }
    }

    /// Encodes the message as the driver would (tests, fuzz replays).
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            GuestMsg::DeviceReady { ok } => header(0, event::DEVICE_READY, ok.into()),
            GuestMsg::PortReady { id, ok } => header(id, event::PORT_READY, ok.into()),
            GuestMsg::PortOpen { id, open } => header(id, event::PORT_OPEN, open.into()),
        }
    }
}

impl HostMsg {
    /// The port the message is about.
    pub fn id(&self) -> u32 {
        match self {
            HostMsg::DeviceAdd(id) | HostMsg::DeviceRemove(id) | HostMsg::ConsolePort(id) => *id,
            HostMsg::Resize { id, .. }
            | HostMsg::PortOpen { id, .. }
            | HostMsg::PortName { id, .. } => *id,
        }
    }

    /// Encodes the message for the control receive queue.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            HostMsg::DeviceAdd(id) => header(*id, event::DEVICE_ADD, 0),
            HostMsg::DeviceRemove(id) => header(*id, event::DEVICE_REMOVE, 0),
            HostMsg::ConsolePort(id) => header(*id, event::CONSOLE_PORT, 1),
            HostMsg::Resize { id, cols, rows } => {
                let mut v = header(*id, event::RESIZE, 0);
                v.extend_from_slice(&cols.to_le_bytes());
                v.extend_from_slice(&rows.to_le_bytes());
                v
            }
            HostMsg::PortOpen { id, open } => header(*id, event::PORT_OPEN, (*open).into()),
            HostMsg::PortName { id, name } => {
                let mut v = header(*id, event::PORT_NAME, 1);
                v.extend_from_slice(name.as_bytes());
                v
            }
        }
    }

    /// Decodes a device message (tests: checks what the device sent).
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlError> {
        let h: &[u8; CONTROL_HEADER_LEN] = bytes
            .get(..CONTROL_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(ControlError::Short(bytes.len()))?;
        let id = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let ev = u16::from_le_bytes([h[4], h[5]]);
        let value = u16::from_le_bytes([h[6], h[7]]);
        let rest = &bytes[CONTROL_HEADER_LEN..];
        match ev {
            event::DEVICE_ADD => Ok(HostMsg::DeviceAdd(id)),
            event::DEVICE_REMOVE => Ok(HostMsg::DeviceRemove(id)),
            event::CONSOLE_PORT => Ok(HostMsg::ConsolePort(id)),
            event::RESIZE => {
                let r = rest.get(..4).ok_or(ControlError::Short(bytes.len()))?;
                Ok(HostMsg::Resize {
                    id,
                    cols: u16::from_le_bytes([r[0], r[1]]),
                    rows: u16::from_le_bytes([r[2], r[3]]),
                })
            }
            event::PORT_OPEN => Ok(HostMsg::PortOpen {
                id,
                open: value != 0,
            }),
            event::PORT_NAME => Ok(HostMsg::PortName {
                id,
                name: String::from_utf8_lossy(rest).into_owned(),
            }),
            event::DEVICE_READY | event::PORT_READY => Err(ControlError::NotFromDriver(ev)),
            other => Err(ControlError::UnknownEvent(other)),
        }
    }
}

fn header(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(CONTROL_HEADER_LEN);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&event.to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn test_decode_guest_messages() {
        // id 3, PORT_READY, value 1
        let b = [3, 0, 0, 0, 3, 0, 1, 0];
        assert_eq!(
            GuestMsg::decode(&b),
            Ok(GuestMsg::PortReady { id: 3, ok: true })
        );
        let b = [0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0];
        assert_eq!(GuestMsg::decode(&b), Ok(GuestMsg::DeviceReady { ok: true }));
        let b = [1, 0, 0, 0, 6, 0, 0, 0, 9, 9];
        assert_eq!(
            GuestMsg::decode(&b),
            Ok(GuestMsg::PortOpen { id: 1, open: false })
        );
    }

    #[test]
    fn test_decode_rejects_bad_messages() {
        assert_eq!(GuestMsg::decode(&[1, 2, 3]), Err(ControlError::Short(3)));
        assert_eq!(GuestMsg::decode(&[]), Err(ControlError::Short(0)));
        assert_eq!(
            GuestMsg::decode(&[0, 0, 0, 0, 1, 0, 0, 0]),
            Err(ControlError::NotFromDriver(event::DEVICE_ADD))
        );
        assert_eq!(
            GuestMsg::decode(&[0, 0, 0, 0, 99, 0, 0, 0]),
            Err(ControlError::UnknownEvent(99))
        );
    }

    #[test]
    fn test_encode_host_messages() {
        assert_eq!(HostMsg::DeviceAdd(2).encode(), [2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(HostMsg::ConsolePort(0).encode(), [0, 0, 0, 0, 4, 0, 1, 0]);
        assert_eq!(
            HostMsg::PortOpen { id: 1, open: true }.encode(),
            [1, 0, 0, 0, 6, 0, 1, 0]
        );
        assert_eq!(
            HostMsg::Resize {
                id: 0,
                cols: 80,
                rows: 25
            }
            .encode(),
            // cols, then rows (virtio_console_resize).
            [0, 0, 0, 0, 5, 0, 0, 0, 80, 0, 25, 0]
        );
        assert_eq!(
            HostMsg::PortName {
                id: 1,
                name: "con1".into()
            }
            .encode(),
            [1, 0, 0, 0, 7, 0, 1, 0, b'c', b'o', b'n', b'1']
        );
    }

    fn arb_host() -> impl Strategy<Value = HostMsg> {
        prop_oneof![
            any::<u32>().prop_map(HostMsg::DeviceAdd),
            any::<u32>().prop_map(HostMsg::DeviceRemove),
            any::<u32>().prop_map(HostMsg::ConsolePort),
            (any::<u32>(), any::<u16>(), any::<u16>())
                .prop_map(|(id, cols, rows)| HostMsg::Resize { id, cols, rows }),
            (any::<u32>(), any::<bool>()).prop_map(|(id, open)| HostMsg::PortOpen { id, open }),
            (any::<u32>(), "[a-z0-9.]{0,16}").prop_map(|(id, name)| HostMsg::PortName { id, name }),
        ]
    }

    proptest! {
        #[test]
        fn prop_host_round_trip(m in arb_host()) {
            prop_assert_eq!(HostMsg::decode(&m.encode()), Ok(m));
        }

        #[test]
        fn prop_guest_round_trip(id in any::<u32>(), v in any::<bool>(), which in 0u8..3) {
            let m = match which {
                0 => GuestMsg::DeviceReady { ok: v },
                1 => GuestMsg::PortReady { id, ok: v },
                _ => GuestMsg::PortOpen { id, open: v },
            };
            let got = GuestMsg::decode(&m.encode()).unwrap();
            // DEVICE_READY carries no id.
            prop_assert_eq!(got, m);
        }

        #[test]
        fn prop_guest_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = GuestMsg::decode(&b);
            let _ = HostMsg::decode(&b);
        }
    }
}
