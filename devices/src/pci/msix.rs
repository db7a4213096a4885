//! MSI-X: the capability, the vector table and the pending-bit array (PBA).
//!
//! [`Msix`] is the device-side state. Whenever a vector's effective routing changes (its message
//! is written while unmasked, it is masked or unmasked, the function mask or the enable bit
//! changes) it tells the VMM through [`MsiRouting::set_vector`]; raising an unmasked vector calls
//! [`MsiRouting::trigger`] (the VMM writes the vector's irqfd). A masked vector only sets its
//! pending bit, and fires as soon as it is unmasked.
//!
//! The guest reaches the table and PBA through a memory BAR: accesses must be 4 or 8 bytes and
//! naturally aligned; any other access is ignored (reads return zeros).

use std::io;

use log::{debug, warn};

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Size of the MSI-X capability in configuration space.
pub const MSIX_CAP_LEN: usize = 12;
/// Offset of Message Control inside the capability.
pub const MSIX_CAP_CONTROL: usize = 2;
/// Message Control: MSI-X enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// Message Control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Size of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Vector control: the entry is masked.
const ENTRY_MASKED: u32 = 1;
/// The largest table the capability can describe.
pub const MSIX_MAX_VECTORS: u16 = 2048;

/// An MSI message: where the device writes and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// How MSI-X vectors reach the guest; the VMM implements it (KVM GSI routes and irqfds), one
/// object per device.
pub trait MsiRouting: Send + Sync {
    /// Routes `vector` to `msg`, or disables it (`None`: masked, or MSI-X off).
    fn set_vector(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()>;
    /// Raises `vector`, which was last routed with `Some` (e.g. writes its irqfd).
    fn trigger(&self, vector: u16) -> io::Result<()>;
}

/// Errors from setting up MSI-X.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    /// The table size is 0 or above 2048.
    #[error("invalid MSI-X table size {0}")]
    BadTableSize(u16),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

/// MSI-X state of one function.
#[derive(Debug)]
pub struct Msix {
    table: Vec<Entry>,
    pba: Vec<u64>,
    enabled: bool,
    function_mask: bool,
    // What the VMM was last told for each vector.
    routed: Vec<Option<MsiMessage>>,
}

/// Builds the 12 bytes of an MSI-X capability and their write mask. The offsets must be
/// 8-byte aligned inside BAR `bir`.
pub fn capability(
    vectors: u16,
    bir: u8,
    table_offset: u32,
    pba_offset: u32,
) -> ([u8; MSIX_CAP_LEN], [u8; MSIX_CAP_LEN]) {
    let mut data = [0u8; MSIX_CAP_LEN];
    data[0] = MSIX_CAP_ID;
    data[2..4].copy_from_slice(&(vectors.saturating_sub(1) & 0x7ff).to_le_bytes());
    data[4..8].copy_from_slice(&((table_offset & !7) | u32::from(bir & 7)).to_le_bytes());
    data[8..12].copy_from_slice(&((pba_offset & !7) | u32::from(bir & 7)).to_le_bytes());
    let mut wmask = [0u8; MSIX_CAP_LEN];
    wmask[3] = ((MSIX_ENABLE | MSIX_FUNCTION_MASK) >> 8) as u8;
    (data, wmask)
}

fn log_err(what: &str, vector: u16, r: io::Result<()>) {
    if let Err(e) = r {
        warn!("msix: cannot {what} vector {vector}: {e}");
    }
}

impl Msix {
    /// Creates a table of `vectors` entries, all masked, MSI-X disabled.
    pub fn new(vectors: u16) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::BadTableSize(vectors));
        }
        let n = usize::from(vectors);
        Ok(Self {
            table: vec![
                Entry {
                    control: ENTRY_MASKED,
                    ..Entry::default()
                };
                n
            ],
            pba: vec![0; n.div_ceil(64)],
            enabled: false,
            function_mask: false,
            routed: vec![None; n],
        })
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        // new() bounds the table to 2048 entries.
        self.table.len() as u16
    }

    /// Size in bytes of the table.
    pub fn table_size(&self) -> u64 {
        self.table.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size in bytes of the PBA.
    pub fn pba_size(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the function mask is set.
    pub fn function_masked(&self) -> bool {
        self.function_mask
    }

    /// Whether `vector`'s pending bit is set.
    pub fn pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, v: usize, on: bool) {
        if let Some(w) = self.pba.get_mut(v / 64) {
            if on {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    fn masked(&self, v: usize) -> bool {
        !self.enabled || self.function_mask || self.table[v].control & ENTRY_MASKED != 0
    }

    // Brings the VMM's routing of vector `v` up to date and delivers a pending interrupt.
    fn sync(&mut self, v: usize, routing: &dyn MsiRouting) {
        let want = (!self.masked(v)).then(|| self.table[v].message());
        let vector = v as u16;
        if want != self.routed[v] {
            log_err("route", vector, routing.set_vector(vector, want));
            self.routed[v] = want;
        }
        if want.is_some() && self.pending(vector) {
            self.set_pending(v, false);
            log_err("trigger", vector, routing.trigger(vector));
        }
    }

    /// Applies a new Message Control value (the enable and function-mask bits).
    pub fn set_control(&mut self, control: u16, routing: &dyn MsiRouting) {
        let enabled = control & MSIX_ENABLE != 0;
        let function_mask = control & MSIX_FUNCTION_MASK != 0;
        if (enabled, function_mask) == (self.enabled, self.function_mask) {
            return;
        }
        debug!("msix: enable={enabled} function_mask={function_mask}");
        self.enabled = enabled;
        self.function_mask = function_mask;
        for v in 0..self.table.len() {
            self.sync(v, routing);
        }
    }

    fn access_ok(offset: u64, len: usize) -> bool {
        matches!(len, 4 | 8) && offset & (len as u64 - 1) == 0
    }

    /// Reads the table at `offset` (relative to its start).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !Self::access_ok(offset, data.len()) {
            debug!("msix: bad table read of {} at {offset:#x}", data.len());
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let off = offset + 4 * i as u64;
            let Some(e) = self.table.get((off / MSIX_ENTRY_SIZE) as usize) else {
                return;
            };
            let v = match off % MSIX_ENTRY_SIZE {
                0 => e.addr_lo,
                4 => e.addr_hi,
                8 => e.data,
                _ => e.control,
            };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Writes the table at `offset` (relative to its start).
    pub fn write_table(&mut self, offset: u64, data: &[u8], routing: &dyn MsiRouting) {
        if !Self::access_ok(offset, data.len()) {
            debug!("msix: bad table write of {} at {offset:#x}", data.len());
            return;
        }
        let idx = (offset / MSIX_ENTRY_SIZE) as usize;
        let Some(e) = self.table.get_mut(idx) else {
            debug!("msix: table write past the end at {offset:#x}");
            return;
        };
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            let v = u32::from_le_bytes(b);
            match (offset + 4 * i as u64) % MSIX_ENTRY_SIZE {
                0 => e.addr_lo = v,
                4 => e.addr_hi = v,
                8 => e.data = v,
                // Only the mask bit of vector control is writable.
                _ => e.control = v & ENTRY_MASKED,
            }
        }
        self.sync(idx, routing);
    }

    /// Reads the PBA at `offset` (relative to its start). The PBA is read-only.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !Self::access_ok(offset, data.len()) {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let off = offset + 4 * i as u64;
            let Some(w) = self.pba.get((off / 8) as usize) else {
                return;
            };
            let half = (w >> (32 * ((off / 4) % 2))) as u32;
            chunk.copy_from_slice(&half.to_le_bytes());
        }
    }

    /// Raises `vector`: delivers it, or marks it pending if it is masked. Vectors past the table
    /// and interrupts while MSI-X is disabled are dropped.
    pub fn trigger(&mut self, vector: u16, routing: &dyn MsiRouting) -> io::Result<()> {
        let v = usize::from(vector);
        if v >= self.table.len() {
            debug!("msix: no vector {vector}");
            return Ok(());
        }
        if !self.enabled {
            debug!("msix: vector {vector} raised while MSI-X is disabled");
            return Ok(());
        }
        if self.masked(v) {
            self.set_pending(v, true);
            return Ok(());
        }
        if self.routed[v].is_none() {
            // Cannot happen: an unmasked vector is always routed by sync().
            self.sync(v, routing);
        }
        routing.trigger(vector)
    }
}

/// A fake [`MsiRouting`] recording calls, for tests here and in other modules.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::Mutex;

    /// A routing call.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Call {
        Set(u16, Option<MsiMessage>),
        Fire(u16),
    }

    #[derive(Debug, Default)]
    pub struct FakeRouting {
        pub calls: Mutex<Vec<Call>>,
    }

    impl FakeRouting {
        pub fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    impl MsiRouting for FakeRouting {
        fn set_vector(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()> {
            self.calls.lock().unwrap().push(Call::Set(vector, msg));
            Ok(())
        }
        fn trigger(&self, vector: u16) -> io::Result<()> {
            self.calls.lock().unwrap().push(Call::Fire(vector));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Call, FakeRouting};
    use super::*;
    use proptest::prelude::*;

    fn program(m: &mut Msix, r: &FakeRouting, v: u16, addr: u64, data: u32) {
        let o = u64::from(v) * MSIX_ENTRY_SIZE;
        m.write_table(o, &addr.to_le_bytes(), r);
        m.write_table(o + 8, &data.to_le_bytes(), r);
    }

    fn unmask(m: &mut Msix, r: &FakeRouting, v: u16, on: bool) {
        let o = u64::from(v) * MSIX_ENTRY_SIZE + 12;
        m.write_table(o, &u32::from(!on).to_le_bytes(), r);
    }

    const MSG: MsiMessage = MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };

    #[test]
    fn capability_layout() {
        let (d, w) = capability(3, 0, 0x4000, 0x6000);
        assert_eq!(d[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([d[2], d[3]]), 2);
        assert_eq!(u32::from_le_bytes([d[4], d[5], d[6], d[7]]), 0x4000);
        assert_eq!(u32::from_le_bytes([d[8], d[9], d[10], d[11]]), 0x6000);
        assert_eq!(w[3], 0xc0);
        assert_eq!(w[2], 0);
        assert!(Msix::new(0).is_err());
        assert!(Msix::new(2049).is_err());
    }

    #[test]
    fn routes_follow_masks_and_enable() {
        let r = FakeRouting::default();
        let mut m = Msix::new(4).unwrap();
        program(&mut m, &r, 1, MSG.address, MSG.data);
        unmask(&mut m, &r, 1, true);
        // Still disabled: nothing routed.
        assert!(r.take().is_empty());
        let mut b = [0; 4];
        m.read_table(16 + 12, &mut b);
        assert_eq!(b, [0; 4]);
        m.set_control(MSIX_ENABLE, &r);
        assert_eq!(r.take(), vec![Call::Set(1, Some(MSG))]);
        m.set_control(MSIX_ENABLE | MSIX_FUNCTION_MASK, &r);
        assert_eq!(r.take(), vec![Call::Set(1, None)]);
        m.set_control(MSIX_ENABLE, &r);
        assert_eq!(r.take(), vec![Call::Set(1, Some(MSG))]);
        unmask(&mut m, &r, 1, false);
        assert_eq!(r.take(), vec![Call::Set(1, None)]);
        m.read_table(16 + 12, &mut b);
        assert_eq!(b, [1, 0, 0, 0]);
        // Reprogramming a masked entry reports nothing until it is unmasked.
        program(&mut m, &r, 1, MSG.address, 0x42);
        assert!(r.take().is_empty());
        unmask(&mut m, &r, 1, true);
        assert_eq!(
            r.take(),
            vec![Call::Set(
                1,
                Some(MsiMessage {
                    address: MSG.address,
                    data: 0x42
                })
            )]
        );
    }

    #[test]
    fn masked_vector_pends_and_fires_on_unmask() {
        let r = FakeRouting::default();
        let mut m = Msix::new(70).unwrap();
        m.set_control(MSIX_ENABLE, &r);
        program(&mut m, &r, 65, MSG.address, MSG.data);
        m.trigger(65, &r).unwrap();
        assert!(m.pending(65));
        let mut b = [0; 8];
        m.read_pba(8, &mut b);
        assert_eq!(u64::from_le_bytes(b), 2);
        m.read_pba(12, &mut b[..4]);
        assert_eq!(b[..4], [0; 4]);
        assert!(r.take().is_empty());
        unmask(&mut m, &r, 65, true);
        assert_eq!(r.take(), vec![Call::Set(65, Some(MSG)), Call::Fire(65)]);
        assert!(!m.pending(65));
        m.trigger(65, &r).unwrap();
        assert_eq!(r.take(), vec![Call::Fire(65)]);
        // Function mask: pends, fires when lifted.
        m.set_control(MSIX_ENABLE | MSIX_FUNCTION_MASK, &r);
        m.trigger(65, &r).unwrap();
        assert_eq!(r.take(), vec![Call::Set(65, None)]);
        m.set_control(MSIX_ENABLE, &r);
        assert_eq!(r.take(), vec![Call::Set(65, Some(MSG)), Call::Fire(65)]);
    }

    #[test]
    fn abuse_is_ignored() {
        let r = FakeRouting::default();
        let mut m = Msix::new(2).unwrap();
        m.set_control(MSIX_ENABLE, &r);
        m.write_table(2, &[1, 2, 3, 4], &r);
        m.write_table(0, &[1, 2], &r);
        m.write_table(32, &[0; 4], &r);
        m.write_table(u64::MAX - 3, &[0; 4], &r);
        m.trigger(2, &r).unwrap();
        m.trigger(u16::MAX, &r).unwrap();
        assert!(r.take().is_empty());
        let mut b = [0xaa; 4];
        m.read_table(u64::MAX - 3, &mut b);
        assert_eq!(b, [0; 4]);
        m.read_pba(u64::MAX - 7, &mut [0; 8]);
        // Writing reserved vector-control bits keeps only the mask bit.
        m.write_table(12, &0xffff_fffeu32.to_le_bytes(), &r);
        m.read_table(12, &mut b);
        assert_eq!(b, [0; 4]);
    }

    proptest! {
        #[test]
        fn random_table_traffic_never_panics(ops in proptest::collection::vec(
            (0u8..4, any::<u64>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..9)),
            0..64)) {
            let r = FakeRouting::default();
            let mut m = Msix::new(5).unwrap();
            for (op, off, ctl, data) in ops {
                let off = off % 0x100;
                match op {
                    0 => m.write_table(off, &data, &r),
                    1 => { let mut d = data.clone(); m.read_table(off, &mut d); m.read_pba(off, &mut d) }
                    2 => m.set_control(ctl, &r),
                    _ => { let _ = m.trigger(ctl % 8, &r); }
                }
            }
            // Whatever happened, every delivered vector was routed first.
            let mut routed = [false; 8];
            for c in r.take() {
                match c {
                    Call::Set(v, msg) => routed[v as usize] = msg.is_some(),
                    Call::Fire(v) => prop_assert!(routed[v as usize]),
                }
            }
        }
    }
}
