//! PURE: the boot GDT and the segment registers derived from it.

use kvm_bindings::kvm_segment;

/// Selector index of the 64-bit code segment.
pub const CODE: usize = 1;
/// Selector index of the data segment.
pub const DATA: usize = 2;
/// Selector index of the TSS.
pub const TSS: usize = 3;

/// Packs a segment descriptor from its flags (high 4 bits: G, D/B, L, AVL; low 8: access byte),
/// base and limit.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The four boot descriptors: null, 64-bit code, data, TSS.
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        entry(0xa09b, 0, 0xfffff), // code: present, ring 0, execute/read, accessed, L, G
        entry(0xc093, 0, 0xfffff), // data: present, ring 0, read/write, accessed, D/B, G
        entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS, G
    ]
}

/// The `kvm_segment` a descriptor loads when selected by `index`.
pub fn segment(index: usize, desc: u64) -> kvm_segment {
    let base = (((desc >> 16) & 0x00ff_ffff) | ((desc >> 32) & 0xff00_0000)) as u32;
    let limit = ((desc & 0xffff) | ((desc >> 32) & 0xf_0000)) as u32;
    let g = (desc >> 55) & 1;
    kvm_segment {
        base: u64::from(base),
        // With G set the limit counts 4 KiB pages.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: (index * 8) as u16,
        type_: ((desc >> 40) & 0xf) as u8,
        present: ((desc >> 47) & 1) as u8,
        dpl: ((desc >> 45) & 3) as u8,
        db: ((desc >> 54) & 1) as u8,
        s: ((desc >> 44) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        g: g as u8,
        avl: ((desc >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_long_mode_ring0() {
        let gdt = boot_gdt();
        let cs = segment(CODE, gdt[CODE]);
        assert_eq!(cs.selector, 0x8);
        assert_eq!((cs.l, cs.db, cs.dpl, cs.present, cs.s), (1, 0, 0, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(DATA, gdt[DATA]);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 0x3, 1, 0));
        let tr = segment(TSS, gdt[TSS]);
        assert_eq!((tr.selector, tr.type_, tr.s), (0x18, 0xb, 0));
    }

    #[test]
    fn entry_round_trips_base_and_limit() {
        let d = entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment(DATA, d);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
    }
}
