//! The 64-bit Linux boot protocol: loading a vmlinux or bzImage and an initrd, and the zero page.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{self, E820Kind};

/// `setup_header.header`: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `setup_header.boot_flag`.
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader`: undefined boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry point inside a bzImage's protected-mode code.
const BZIMAGE_ENTRY_64: u64 = 0x200;
/// `initrd_addr_max` when the kernel gives none (a vmlinux has no setup header).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// `loadflags` bit: protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1;
/// `loadflags` bit: `heap_end_ptr` is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// Page size used to align the initrd.
const PAGE: u64 = 4096;
/// `xloadflags` bit: the kernel has the 64-bit entry point at +0x200 (boot protocol 2.12).
const XLF_KERNEL_64: u16 = 1;

/// Errors loading the guest kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("cannot read the kernel {}", .0.display())]
    KernelFile(PathBuf, #[source] std::io::Error),
    /// The kernel is neither an x86_64 ELF vmlinux nor a bzImage.
    #[error("{} is neither a vmlinux (ELF) nor a bzImage", .0.display())]
    KernelFormat(PathBuf),
    /// The loader rejected the image.
    #[error("cannot load the kernel {}", .0.display())]
    KernelLoad(PathBuf, #[source] linux_loader::loader::Error),
    /// The initrd could not be opened or read.
    #[error("cannot read the initrd {}", .0.display())]
    InitrdFile(PathBuf, #[source] std::io::Error),
    /// A bzImage without the 64-bit entry point kuml jumps to.
    #[error("{} is a bzImage without a 64-bit entry point (XLF_KERNEL_64 is not set in its setup header; boot protocol {}.{:02}): kuml boots only x86_64 kernels", path.display(), version >> 8, version & 0xff)]
    Not64Bit {
        /// The file.
        path: PathBuf,
        /// Its boot protocol version.
        version: u16,
    },
    /// The initrd does not fit between the kernel's footprint and the top of low memory (or
    /// the kernel's `initrd_addr_max`).
    #[error("the initrd {} ({size} bytes) does not fit in guest memory between the end of the kernel ({kernel_end:#x}) and {limit:#x}; give the guest more memory (mem=)", path.display())]
    InitrdTooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Where the kernel's footprint ends.
        kernel_end: u64,
        /// Where the initrd must end.
        limit: u64,
    },
    /// The kernel command line is longer than the guest kernel accepts.
    #[error("the kernel command line is {0} bytes long; the limit is {max}", max = layout::CMDLINE_MAX)]
    CmdlineTooLong(usize),
    /// Writing boot data into guest memory failed.
    #[error("cannot write boot data into guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// A loaded kernel: where to start, where it ends, and the bzImage's setup header, if any.
#[derive(Debug)]
pub struct LoadedKernel {
    /// Guest physical address of the 64-bit entry point.
    pub entry: u64,
    /// The end of the memory the kernel uses while it boots: nothing may be loaded below it.
    pub end: u64,
    /// The bzImage setup header, to copy into the zero page.
    pub setup_header: Option<setup_header>,
}

/// PURE: where a bzImage loaded at `load_addr` (its protected-mode code) ends up using memory
/// to: the kernel decompresses itself into `[start, start + init_size)`, where `start` is
/// `load_addr` aligned up to `kernel_alignment` if it is relocatable, and never below
/// `pref_address` (the 64-bit entry moves a kernel loaded lower up to `LOAD_PHYSICAL_ADDR`,
/// arch/x86/boot/compressed/head_64.S), and plain `pref_address` if it is not.
/// (Documentation/arch/x86/boot.rst, "init_size".)
pub fn bzimage_end(hdr: &setup_header, load_addr: u64) -> u64 {
    let pref = hdr.pref_address;
    let start = if hdr.relocatable_kernel != 0 {
        let align = u64::from(hdr.kernel_alignment).max(1);
        load_addr
            .checked_next_multiple_of(align)
            .unwrap_or(u64::MAX)
            .max(pref)
    } else {
        pref
    };
    start.saturating_add(u64::from(hdr.init_size))
}

/// PURE: refuses a bzImage kuml cannot start at its 64-bit entry point.
pub fn check_bzimage(path: &Path, hdr: &setup_header) -> Result<(), BootError> {
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::Not64Bit {
            path: path.to_owned(),
            version: hdr.version,
        });
    }
    Ok(())
}

/// Kind of kernel image, by magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An uncompressed ELF vmlinux.
    Elf,
    /// A bzImage.
    BzImage,
}

/// PURE: detects a kernel image from its first 0x210 bytes.
pub fn detect(head: &[u8]) -> Option<KernelKind> {
    if head.starts_with(b"\x7fELF") {
        return Some(KernelKind::Elf);
    }
    let magic = head.get(0x202..0x206)?;
    (magic == b"HdrS").then_some(KernelKind::BzImage)
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let io_err = |e| BootError::KernelFile(path.to_owned(), e);
    let mut file = File::open(path).map_err(io_err)?;
    let mut head = [0u8; 0x210];
    let n = read_up_to(&mut file, &mut head).map_err(io_err)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let load_err = |e| BootError::KernelLoad(path.to_owned(), e);
    match detect(&head[..n]) {
        Some(KernelKind::Elf) => {
            let r = Elf::load(mem, None, &mut file, Some(GuestAddress(layout::HIMEM)))
                .map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load.0,
                // The end of the highest PT_LOAD segment, .bss included.
                end: r.kernel_end,
                setup_header: None,
            })
        }
        Some(KernelKind::BzImage) => {
            let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(layout::HIMEM)))
                .map_err(load_err)?;
            let hdr = r
                .setup_header
                .ok_or_else(|| BootError::KernelFormat(path.to_owned()))?;
            check_bzimage(path, &hdr)?;
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + BZIMAGE_ENTRY_64,
                end: r.kernel_end.max(bzimage_end(&hdr, r.kernel_load.0)),
                setup_header: Some(hdr),
            })
        }
        None => Err(BootError::KernelFormat(path.to_owned())),
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// PURE: where an initrd of `size` bytes goes: page-aligned, as high as possible below both the
/// end of low RAM and the kernel's `initrd_addr_max`, above `kernel_end`.
pub fn initrd_address(size: u64, low_ram_end: u64, addr_max: u64, kernel_end: u64) -> Option<u64> {
    let limit = low_ram_end.min(addr_max.saturating_add(1));
    let start = limit.checked_sub(size)? & !(PAGE - 1);
    (start >= kernel_end).then_some(start)
}

/// Loads the initrd at the top of low memory, above `kernel`; returns its address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel: &LoadedKernel,
) -> Result<(u64, u64), BootError> {
    let io_err = |e| BootError::InitrdFile(path.to_owned(), e);
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    let addr_max = kernel
        .setup_header
        .as_ref()
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let low_end = layout::low_ram_end(mem_size);
    let too_big = || BootError::InitrdTooBig {
        path: path.to_owned(),
        size,
        kernel_end: kernel.end,
        limit: low_end.min(addr_max.saturating_add(1)),
    };
    let addr = initrd_address(size, low_end, addr_max, kernel.end).ok_or_else(too_big)?;
    let len = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(BootError::GuestMemory)?;
    Ok((addr, size))
}

/// What goes into the zero page besides the kernel's own setup header.
#[derive(Debug, Clone)]
pub struct BootInfo<'a> {
    /// Guest RAM size.
    pub mem_size: u64,
    /// The kernel command line (without NUL).
    pub cmdline: &'a str,
    /// Initrd address and size, if any.
    pub initrd: Option<(u64, u64)>,
    /// Where the RSDP is.
    pub rsdp: u64,
}

/// PURE: builds the zero page.
pub fn boot_params_for(
    info: &BootInfo,
    hdr: Option<&setup_header>,
) -> Result<boot_params, BootError> {
    if info.cmdline.len() > layout::CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(info.cmdline.len()));
    }
    let mut p = boot_params::default();
    if let Some(h) = hdr {
        p.hdr = *h;
    }
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.boot_flag = BOOT_FLAG;
    p.hdr.header = HDRS_MAGIC;
    p.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    p.hdr.heap_end_ptr = 0xfe00;
    p.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    p.hdr.cmdline_size = info.cmdline.len() as u32 + 1;
    if hdr.is_none() {
        p.hdr.kernel_alignment = 0x0100_0000;
    }
    if let Some((addr, size)) = info.initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    p.acpi_rsdp_addr = info.rsdp;
    let map = layout::e820(info.mem_size);
    for (slot, (addr, size, kind)) in p.e820_table.iter_mut().zip(&map) {
        slot.addr = *addr;
        slot.size = *size;
        slot.r#type = match kind {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        };
    }
    p.e820_entries = map.len().min(p.e820_table.len()) as u8;
    Ok(p)
}

/// Writes the command line and the zero page into guest memory.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    info: &BootInfo,
    hdr: Option<&setup_header>,
) -> Result<(), BootError> {
    let params = boot_params_for(info, hdr)?;
    let mut cmdline = info.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(layout::CMDLINE))
        .map_err(BootError::GuestMemory)?;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE))
        .map_err(BootError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_magic() {
        assert_eq!(detect(b"\x7fELF\x02\x01"), Some(KernelKind::Elf));
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), Some(KernelKind::BzImage));
        assert_eq!(detect(&[0u8; 0x210]), None);
        assert_eq!(detect(b"short"), None);
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        assert_eq!(
            initrd_address(0x1800, 0x800_0000, u64::MAX, 0),
            Some(0x7ffe000)
        );
        assert_eq!(
            initrd_address(0x1000, 0x1_0000_0000, 0x7fff_ffff, 0),
            Some(0x7fff_f000)
        );
        assert_eq!(initrd_address(0x900_0000, 0x800_0000, u64::MAX, 0), None);
        assert_eq!(
            initrd_address(0x100_0000, 0x800_0000, u64::MAX, 0x780_0000),
            None
        );
    }

    fn bz_header(init_size: u32, relocatable: bool) -> setup_header {
        setup_header {
            version: 0x020f,
            xloadflags: XLF_KERNEL_64 | 2,
            pref_address: 0x100_0000,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: u8::from(relocatable),
            init_size,
            ..Default::default()
        }
    }

    #[test]
    fn bzimage_footprint_starts_at_pref_address() {
        // A distro kernel: loaded at 1 MiB, runs from 16 MiB, needs 60 MiB there.
        let hdr = bz_header(60 << 20, true);
        assert_eq!(bzimage_end(&hdr, layout::HIMEM), (16 + 60) << 20);
        // Loaded higher than pref_address: aligned up from there.
        assert_eq!(bzimage_end(&hdr, 0x210_0000), 0x220_0000 + (60 << 20));
        // Not relocatable: always pref_address.
        assert_eq!(
            bzimage_end(&bz_header(60 << 20, false), 0x300_0000),
            (16 + 60) << 20
        );
        // A header full of garbage does not overflow.
        let wild = setup_header {
            relocatable_kernel: 1,
            kernel_alignment: 0,
            pref_address: u64::MAX,
            init_size: u32::MAX,
            ..Default::default()
        };
        assert_eq!(bzimage_end(&wild, u64::MAX - 3), u64::MAX);
    }

    #[test]
    fn initrd_stays_above_a_distro_kernel() {
        // Review §4: mem=128M, a 50 MiB initramfs and a kernel that runs in [16, 86) MiB. The
        // old fixed floor (1 MiB + 64 MiB) let the initrd start at 78 MiB, inside the kernel;
        // placed against the kernel's real end it does not fit, and with more memory it goes
        // above the end.
        let hdr = bz_header(70 << 20, true);
        let end = bzimage_end(&hdr, layout::HIMEM);
        assert_eq!(initrd_address(50 << 20, 128 << 20, u64::MAX, end), None);
        let at = initrd_address(50 << 20, 256 << 20, u64::MAX, end).unwrap();
        assert!(at >= end);
    }

    #[test]
    fn bzimage_without_64bit_entry_is_refused() {
        let p = Path::new("/boot/bzImage-32");
        assert!(check_bzimage(p, &bz_header(1, true)).is_ok());
        let old = setup_header {
            version: 0x020b,
            xloadflags: 0,
            ..bz_header(1, true)
        };
        let e = check_bzimage(p, &old).unwrap_err();
        assert!(matches!(
            e,
            BootError::Not64Bit {
                version: 0x020b,
                ..
            }
        ));
        let text = e.to_string();
        assert!(
            text.contains("/boot/bzImage-32")
                && text.contains("XLF_KERNEL_64")
                && text.contains("2.11"),
            "{text}"
        );
    }

    #[test]
    fn zero_page_fields() {
        let info = BootInfo {
            mem_size: 128 << 20,
            cmdline: "console=ttyS0",
            initrd: Some((0x7000000, 0x1234)),
            rsdp: layout::RSDP,
        };
        let p = boot_params_for(&info, None).unwrap();
        let hdr = p.hdr;
        let (header, flag, ptr, size) = (
            hdr.header,
            hdr.boot_flag,
            hdr.cmd_line_ptr,
            hdr.cmdline_size,
        );
        assert_eq!(header, HDRS_MAGIC);
        assert_eq!(flag, BOOT_FLAG);
        assert_eq!(ptr, layout::CMDLINE as u32);
        assert_eq!(size, 14);
        let (image, len) = (hdr.ramdisk_image, hdr.ramdisk_size);
        assert_eq!((image, len), (0x7000000, 0x1234));
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, layout::RSDP);
        assert_eq!(p.e820_entries, 3);
        let long = "x".repeat(layout::CMDLINE_MAX + 1);
        let info = BootInfo {
            cmdline: &long,
            ..info
        };
        assert!(matches!(
            boot_params_for(&info, None),
            Err(BootError::CmdlineTooLong(_))
        ));
    }
}
