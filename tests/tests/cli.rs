//! The command line: usage errors and setup errors are one line naming the argument.

// Integration tests: each file is its own crate of tests.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;

use kuml_e2e::{kuml_bin, run_output};

fn run(args: &[&str]) -> (i32, String, String) {
    run_output(Command::new(kuml_bin()).args(args))
}

#[test]
fn help_lists_options_and_exit_codes() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for needle in [
        "mem=",
        "ncpus=",
        "umid=",
        "kernel=",
        "initrd=",
        "Exit status",
        "143",
    ] {
        assert!(out.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn version() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("kuml "));
}

#[test]
fn bad_values_are_usage_errors_naming_the_argument() {
    for (arg, name) in [
        ("mem=12Q", "mem=12Q"),
        ("ncpus=0", "ncpus=0"),
        ("umid=", "umid="),
    ] {
        let (code, _, err) = run(&[arg]);
        assert_eq!(code, 2, "{arg}");
        assert!(err.starts_with(&format!("kuml: {name}")), "{arg}: {err}");
    }
}

#[test]
fn missing_kernel_is_a_one_line_error() {
    // (An initrd, so that UML's default disk ./root_fs is not needed.)
    let (code, _, err) = run(&["kernel=/nonexistent/vmlinux", "initrd=/nonexistent/initrd"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/vmlinux"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
