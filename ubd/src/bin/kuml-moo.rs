//! `kuml-moo`: `uml_moo` compatible COW merge tool (same usage, output, exit codes).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "%s usage:
\t%s [ -b <actual backing file> ] <COW file> <new backing file>
\t%s [ -b <actual backing file> ] -d <COW file>
Creates a new filesystem image from the COW file and its backing file.
Specifying -d will cause a destructive, in-place merge of the COW file into
its current backing file
Specifying -b overrides the backing_file specified in the COW file.  This is
needed when dealing with a COW file that was created inside a chroot jail.
%s supports version 1,2 and 3 COW files.
";

fn usage(prog: &str) -> ExitCode {
    eprint!("{}", USAGE.replace("%s", prog));
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let prog = args.first().map(String::as_str).unwrap_or("uml_moo");
    let mut rest = &args[1.min(args.len())..];
    if rest.is_empty() {
        return usage(prog);
    }
    let mut in_place = false;
    if rest[0] == "-d" {
        in_place = true;
        rest = &rest[1..];
    }
    let mut actual_backing = None;
    // uml_moo reads argv[0] here even when nothing follows -d; we print the usage instead.
    if rest.first().map(String::as_str) == Some("-b") {
        actual_backing = rest.get(1).map(Path::new);
        rest = &rest[2.min(rest.len())..];
    }
    let (cow, out) = match (in_place, rest) {
        (true, [cow]) => (cow, None),
        (false, [cow, out]) => (cow, Some(Path::new(out.as_str()))),
        _ => return usage(prog),
    };
    let tty = std::io::stderr().is_terminal();
    let mut last_pct = u64::MAX;
    let mut progress = |done: u64, total: u64| {
        if tty && total > 0 {
            let pct = done * 100 / total;
            if pct != last_pct {
                last_pct = pct;
                eprint!("\r{pct:3}%");
                if done == total {
                    eprintln!();
                }
            }
        }
    };
    let mut stdout = std::io::stdout();
    let r = ubd::merge::merge(
        Path::new(cow.as_str()),
        out,
        actual_backing,
        &mut stdout,
        &mut progress,
    );
    let _ = stdout.flush();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if tty && last_pct != u64::MAX && last_pct != 100 {
                eprintln!();
            }
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
