//! `kuml-mkcow`: `uml_mkcow` compatible COW file creator (same usage, output, exit codes).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;

use ubd::geometry::cow_sizes;
use ubd::header::{CowHeader, DEFAULT_ALIGNMENT, PATH_LEN_V3, SECTOR_SIZE};
use ubd::image::absolutize;
use ubd::merge::strerror;

fn usage(prog: &str) -> ExitCode {
    eprintln!("{prog} usage: ");
    eprintln!("\t{prog} [-f] <COW file> <backing file>");
    eprintln!("\t-f forces overwrite of an existing COW file");
    ExitCode::from(2)
}

/// Like uml_mkcow: a message on stdout, then `perror("write_cow_header")` with `errno`.
fn fail(stdout_line: &str, errno: i32) -> ExitCode {
    println!("{stdout_line}");
    let _ = std::io::stdout().flush();
    eprintln!(
        "write_cow_header: {}",
        strerror(&std::io::Error::from_raw_os_error(errno))
    );
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let prog = args.first().map(String::as_str).unwrap_or("uml_mkcow");
    let mut rest = &args[1.min(args.len())..];
    if rest.is_empty() {
        return usage(prog);
    }
    let force = rest[0] == "-f";
    if force {
        rest = &rest[1..];
    }
    if rest.len() < 2 {
        return usage(prog);
    }
    let (cow, backing) = (Path::new(&rest[0]), Path::new(&rest[1]));
    let mut o = OpenOptions::new();
    o.read(true).write(true).mode(0o644);
    if force {
        o.create(true);
    } else {
        o.create_new(true);
    }
    let file = match o.open(cow) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("open COW file: {}", strerror(&e));
            return ExitCode::from(1);
        }
    };
    let bytes = backing.as_os_str().as_bytes();
    if bytes.len() > PATH_LEN_V3 - 1 {
        return fail(
            &format!(
                "Backing file name \"{}\" is too long - names are limited to {} characters",
                backing.display(),
                PATH_LEN_V3 - 1
            ),
            libc::EINVAL,
        );
    }
    let abs = match absolutize(backing) {
        Ok(a) => a,
        Err(e) => return fail(&e.to_string(), libc::EPERM),
    };
    let md = match std::fs::metadata(&abs) {
        Ok(m) => m,
        Err(_) => {
            return fail(
                &format!(
                    "write_cow_header - backing file '{}' mtime request failed, err = 1",
                    abs.display()
                ),
                libc::EPERM,
            )
        }
    };
    let size = match ubd::image::file_size(&abs) {
        Ok(s) => s,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            return fail(
                &format!(
                    "write_cow_header - couldn't get size of backing file '{}', err = {errno}",
                    abs.display()
                ),
                errno,
            );
        }
    };
    let header = match CowHeader::new_v3(
        abs.as_os_str().as_bytes().to_vec(),
        md.mtime() as u32,
        size,
        SECTOR_SIZE,
        DEFAULT_ALIGNMENT,
    ) {
        Ok(h) => h,
        Err(e) => return fail(&format!("write_cow_header - {e}"), libc::EINVAL),
    };
    let (Ok(encoded), Ok(geo)) = (header.encode_v3(), cow_sizes(&header)) else {
        return fail("write_cow_header - invalid header", libc::EINVAL);
    };
    if let Err(e) = file.write_all_at(&encoded, 0) {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        return fail(
            &format!(
                "write_cow_header - write of header to new COW file '{}' failed, err = {errno}",
                cow.display()
            ),
            errno,
        );
    }
    if let Err(e) = file.write_all_at(&[0], geo.file_len - 1) {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        return fail(
            &format!(
                "Write of bitmap to new COW file '{}' failed, err = {errno}",
                cow.display()
            ),
            errno,
        );
    }
    ExitCode::SUCCESS
}
