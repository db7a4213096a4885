#!/usr/bin/env python3
"""Write a tiny ELF64 "kernel" whose entry does `mov al,0; out 0xf4,al; hlt`.

Usage: mktiny.py OUT [STATUS]

The bytes (b0 NN e6 f4 f4) mean the same in 32- and 64-bit mode, so the image runs whether a
VMM enters it in long mode at e_entry (kuml, the 64-bit boot protocol) or in 32-bit protected
mode through the Xen PVH ELF note (QEMU microvm with qboot). Both point to the same address.
"""
import struct
import sys

BASE = 0x100000          # 1 MiB: the lowest address linux-loader accepts (HIMEM)
XEN_ELFNOTE_PHYS32_ENTRY = 18


def build(status: int = 0) -> bytes:
    ehsize, phentsize, phnum = 64, 56, 2
    note_name = b"Xen\0"
    note_desc = struct.pack("<Q", BASE)  # the 32-bit entry, as 8 bytes: QEMU 7.2 reads a size_t
    note = struct.pack("<III", len(note_name), len(note_desc), XEN_ELFNOTE_PHYS32_ENTRY)
    note += note_name + note_desc
    code = bytes([0xB0, status & 0xFF, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])  # mov al,N; out; hlt; jmp hlt
    note_off = ehsize + phentsize * phnum
    code_off = 0x1000  # page-aligned so p_offset % align == p_vaddr % align
    ehdr = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,   # ELF64, little endian, SysV
        2, 0x3E, 1,                              # ET_EXEC, x86-64, version
        BASE, ehsize, 0,                         # entry, phoff, shoff
        0, ehsize, phentsize, phnum, 64, 0, 0)
    # PT_LOAD: the code at BASE (vaddr == paddr, RWX), PT_NOTE: the PVH note
    load = struct.pack("<IIQQQQQQ", 1, 7, code_off, BASE, BASE, len(code), len(code), 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    img = ehdr + load + pnote + note
    img += b"\0" * (code_off - len(img)) + code
    return img


if __name__ == "__main__":
    status = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    with open(sys.argv[1], "wb") as f:
        f.write(build(status))
