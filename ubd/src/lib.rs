//! `ubd`: UML disk images for kuml — raw files and UML COW files (v1/v2/v3).
//!
//! PURE modules: [`header`] (COW header codec), [`geometry`] (`cow_sizes`), [`bitmap`]
//! (sector bits) and [`spec`] (the `ubd<N><flags>=file[,backing][,serial]` grammar).
//! I/O: [`disk`] (the [`Disk`] trait, [`RawDisk`]), [`cow`] ([`CowDisk`]), [`lock`] (UML's
//! fcntl locks), [`image`] (open/create/validate like UML) and [`merge`] (`uml_moo`).

pub mod bitmap;
pub mod cow;
pub mod disk;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod geometry;
pub mod header;
pub mod image;
pub mod lock;
pub mod merge;
pub mod spec;

pub use cow::{CowDisk, CowError};
#[cfg(any(test, feature = "test-utils"))]
pub use disk::MemDisk;
pub use disk::{Disk, DiskError, RawDisk, SECTOR};
pub use geometry::{cow_sizes, CowGeometry, GeometryError};
pub use header::{parse_header, CowHeader, CowVersion, HeaderError};
pub use image::{create_cow_file, open_image, open_spec, Image, ImageOptions, OpenError};
pub use lock::LockError;
pub use spec::{parse_ubd, parse_ubd_with, SpecError, UbdOption, UbdSpec, MAX_UNITS};
