//! Fuzz harnesses for the device crate (feature `fuzzing`, and tests).
//!
//! Parsers and codecs here; the device-level harnesses, which drive the real block, net and
//! console models (and the virtio-pci transport) over guest memory and rings built from the
//! input, are in [`device`], on the rig in [`rig`].
//!
//! The libFuzzer targets in `fuzz/fuzz_targets/<name>.rs` only call these; the `kuml`
//! crate's `fuzzing::tests` replays the committed seeds in `fuzz/seeds/<name>/` through
//! [`TARGETS`] on the stable toolchain.

pub mod device;
pub mod rig;
#[cfg(test)]
mod seeds;

use std::sync::Mutex;

use virtio_queue::desc::split::Descriptor;

use crate::chan::telnet::{escape, TelnetDecoder};
use crate::chan::{parse_chan, parse_line, parse_xterm_option};
use crate::pci::msix::{MsiMessage, MsiRouting, Msix, MSIX_ENTRY_SIZE};
use crate::pci::{BarKind, PciConfig, PciIdentity};
use crate::virtio::block::request::{fuzz_parse, Operation};
use crate::virtio::console::control::{GuestMsg, HostMsg};
use crate::virtio::console::port::{read_tx_chain, write_rx_chain};
use crate::virtio::net::rxtx::{read_tx_frame, write_rx_frame};
use crate::virtio::net::{NetHdr, NET_HDR_LEN};
pub use device::{block_device, console_device, legacy_ports, net_device, virtio_pci};
use rig::WriteCheck;

/// A harness: fuzz input in, panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// The targets this crate owns, by the name of their `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("chan_spec", chan_spec),
    ("telnet", telnet),
    ("virtio_blk_request", virtio_blk_request),
    ("virtio_net_frames", virtio_net_frames),
    ("virtio_console_control", virtio_console_control),
    ("pci_config", pci_config),
    ("block_device", block_device),
    ("net_device", net_device),
    ("console_device", console_device),
    ("virtio_pci", virtio_pci),
    ("legacy_ports", legacy_ports),
];

/// The channel grammar of `conN=`/`sslN=` (and `xterm=`): a parsed line prints back as text
/// that parses to the same line (what `config conN` answers must be usable again).
pub fn chan_spec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(Some(spec)) = parse_line(&text) {
        let printed = spec.to_string();
        assert_eq!(
            parse_line(&printed).as_ref(),
            Ok(&Some(spec)),
            "{text:?} printed as {printed:?}"
        );
    }
    let _ = parse_chan(&text);
    let _ = parse_xterm_option(&text);
}

/// Telnet negotiation on `port:` lines: decoding keeps its state across reads (any split of
/// the input decodes alike), never yields more bytes than it got, and undoes [`escape`] on
/// data without CR. The first byte picks the split points.
pub fn telnet(data: &[u8]) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let mut whole = Vec::new();
    TelnetDecoder::new().decode(input, &mut whole);
    assert!(whole.len() <= input.len());
    let mut pieces = Vec::new();
    let mut d = TelnetDecoder::new();
    for c in input.chunks(usize::from(step % 16) + 1) {
        d.decode(c, &mut pieces);
    }
    assert_eq!(
        pieces, whole,
        "decoding does not depend on how reads split the input"
    );
    let plain: Vec<u8> = input.iter().copied().filter(|&b| b != b'\r').collect();
    let mut escaped = Vec::new();
    escape(&plain, &mut escaped);
    let mut back = Vec::new();
    TelnetDecoder::new().decode(&escaped, &mut back);
    assert_eq!(back, plain, "escape then decode is the identity");
}

/// The virtio-blk request parser ([`fuzz_parse`]: descriptors and guest memory from the
/// input): a parsed request's data buffers lie in guest memory, within what the chain named.
pub fn virtio_blk_request(data: &[u8]) {
    let Some(Ok(req)) = fuzz_parse(data) else {
        return;
    };
    let bufs = match &req.op {
        Operation::In { bufs, .. } | Operation::Out { bufs, .. } => bufs,
        Operation::GetId { bufs } => bufs,
        _ => return,
    };
    for b in bufs {
        assert!(b.len > 0, "no empty buffer in a request");
        let end = b.addr.0.checked_add(u64::from(b.len)).expect("buffer end");
        assert!(
            end <= 0x1_0000,
            "buffer {:#x}+{:#x} in memory",
            b.addr.0,
            b.len
        );
    }
}

/// Descriptors from 13-byte records: `addr` u64 LE (kept in `0..2 * rig::MEM_SIZE` so half
/// of them are valid), `len` u32 LE (mod 2 × memory), flags byte (bit 0: WRITE).
fn descriptors(table: &[u8]) -> Vec<Descriptor> {
    let span = 2 * rig::MEM_SIZE as u64;
    table
        .chunks_exact(13)
        .map(|d| {
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default()) % span;
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default()) % span as u32;
            let flags = if d[12] & 1 != 0 { rig::DESC_F_WRITE } else { 0 };
            Descriptor::new(addr, len, flags, 0)
        })
        .collect()
}

/// virtio-net and virtio-console buffers: `[n][n × 13-byte descriptors][frame or data]`,
/// the rest of the frame also filling guest memory. A transmit chain reads back its header
/// and frame; a receive chain takes the header and frame only inside the device-writable
/// buffers it names, or nothing when refused; the console's receive path alike.
pub fn virtio_net_frames(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8);
    let Some(table) = rest.get(..n * 13) else {
        return;
    };
    let payload = &rest[n * 13..];
    let descs = descriptors(table);
    let mem = rig::guest_memory(payload);
    let mut frame = Vec::new();
    if let Ok(hdr) = read_tx_frame(&mem, &descs, &mut frame) {
        assert_eq!(NetHdr::from_bytes(&hdr.to_bytes()), hdr);
        let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
        assert_eq!(frame.len() as u64 + NET_HDR_LEN as u64, total);
    }
    let _ = read_tx_chain(&mem, descs.iter().copied());
    let writable = |d: &&Descriptor| d.is_write_only();
    let allowed: Vec<(u64, u64)> = descs
        .iter()
        .filter(writable)
        .map(|d| (d.addr().0, d.addr().0 + u64::from(d.len())))
        .collect();
    let check = WriteCheck::with_ranges(&mem, allowed);
    match write_rx_frame(&mem, &descs, payload) {
        Ok(used) => assert_eq!(used as usize, NET_HDR_LEN + payload.len()),
        Err(crate::virtio::net::ChainError::Memory { .. }) => {}
        Err(_) => assert!(
            check.unchanged(&mem),
            "a refused receive chain is left alone"
        ),
    }
    let _ = write_rx_chain(&mem, &descs, payload);
    check.check(&mem);
}

/// virtio-console control messages: what decodes encodes back to the same message, both
/// the driver's (guest to host) and the device's (host to guest).
pub fn virtio_console_control(data: &[u8]) {
    if let Ok(m) = GuestMsg::decode(data) {
        assert_eq!(
            GuestMsg::decode(&m.encode()),
            Ok(m),
            "guest message round trip"
        );
    }
    if let Ok(m) = HostMsg::decode(data) {
        assert_eq!(
            HostMsg::decode(&m.encode()).as_ref(),
            Ok(&m),
            "host message round trip"
        );
    }
}

/// An [`MsiRouting`] that checks every vector it is asked about is one the table has.
#[derive(Debug, Default)]
pub struct CheckedRouting {
    /// Vectors in the table.
    pub vectors: u16,
    /// Vectors fired.
    pub fired: Mutex<Vec<u16>>,
}

impl MsiRouting for CheckedRouting {
    fn set_vector(&self, vector: u16, _msg: Option<MsiMessage>) -> std::io::Result<()> {
        assert!(
            vector < self.vectors,
            "routing of vector {vector} out of range"
        );
        Ok(())
    }
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        assert!(vector < self.vectors, "vector {vector} fired out of range");
        crate::locked(&self.fired).push(vector);
        Ok(())
    }
}

/// PCI configuration space and MSI-X table write sequences: 8-byte ops
/// `[kind][offset: u16 LE][size][value: u32 LE]` on a function with a 64-bit and a 32-bit BAR
/// and an 8-vector MSI-X table. The identity never changes, a moved BAR lands on its size
/// alignment, and a raised vector is delivered at once when open, pends when masked and is
/// dropped while MSI-X is disabled.
pub fn pci_config(data: &[u8]) {
    const VECTORS: u16 = 8;
    let id = PciIdentity {
        vendor_id: 0x1af4,
        device_id: 0x1042,
        revision: 1,
        class_code: 0x01_80_00,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
    };
    let mut cfg = PciConfig::new(id);
    let (Ok(()), Ok(())) = (
        cfg.add_bar(0, BarKind::Mem64, 0x8000, 0x1_0000_0000, false),
        cfg.add_bar(2, BarKind::Mem32, 0x1000, 0xe000_0000, false),
    ) else {
        panic!("the BARs are valid");
    };
    let (cap, wmask) = crate::pci::msix::capability(VECTORS, 0, 0x4000, 0x6000);
    let _ = cfg.add_capability(&cap, &wmask);
    let Ok(mut msix) = Msix::new(VECTORS) else {
        panic!("8 vectors are valid");
    };
    let routing = CheckedRouting {
        vectors: VECTORS,
        ..Default::default()
    };
    let ident = |c: &PciConfig| (c.read_u32(0), c.read_u32(8), c.read_u32(0x2c));
    let before = ident(&cfg);
    for op in data.chunks_exact(8).take(256) {
        let offset = u16::from_le_bytes([op[1], op[2]]);
        let size = [1usize, 2, 4, 8][usize::from(op[3] % 4)];
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[4..8]);
        value[4..].copy_from_slice(&op[4..8]);
        match op[0] % 6 {
            0 => {
                if let Some(mv) = cfg.write(usize::from(offset % 256), &value[..size]) {
                    assert_eq!(mv.new % mv.size, 0, "BAR {} moved off alignment", mv.index);
                    assert_eq!(cfg.bar_committed(mv.index), Some(mv.new));
                }
            }
            1 => {
                let mut out = vec![0u8; size];
                cfg.read(usize::from(offset), &mut out);
            }
            2 => msix.write_table(u64::from(offset), &value[..size], &routing),
            3 => {
                let mut out = vec![0u8; size];
                msix.read_table(u64::from(offset), &mut out);
                msix.read_pba(u64::from(offset), &mut out);
            }
            4 => msix.set_control(u16::from_le_bytes([op[4], op[5]]), &routing),
            _ => {
                let v = u16::from(op[1]) % (VECTORS + 1);
                let mut ctl = [0u8; 4];
                msix.read_table(u64::from(v) * MSIX_ENTRY_SIZE + 12, &mut ctl);
                let masked = msix.function_masked() || ctl[0] & 1 != 0;
                let was_pending = msix.pending(v);
                let fired = crate::locked(&routing.fired).len();
                let _ = msix.trigger(v, &routing);
                let now = crate::locked(&routing.fired).len();
                // Disabled: dropped; masked: pending; open: delivered at once.
                let (fires, pends) = match (v < VECTORS && msix.enabled(), masked) {
                    (false, _) => (false, was_pending),
                    (true, true) => (false, true),
                    (true, false) => (true, false),
                };
                assert_eq!(now > fired, fires, "vector {v} delivery");
                assert_eq!(msix.pending(v), pends, "vector {v} pending bit");
            }
        }
        assert_eq!(ident(&cfg), before, "read-only identity changed");
    }
}
