//! The command line teaches: every command's `--help` has an example and its exit codes; no
//! root, no CRIU needed.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use haul_e2e::haul_bin;
use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(haul_bin().unwrap())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} --help failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        &[][..],
        &["serve"],
        &["migrate"],
        &["migrate", "pid"],
        &["migrate", "runc"],
        &["keygen"],
        &["check"],
        &["inspect"],
        &["inspect", "runc"],
        &["recover"],
    ] {
        let text = help(cmd);
        assert!(
            text.contains("Examples:"),
            "haul {cmd:?} --help has no example:\n{text}"
        );
        assert!(
            text.contains("haul "),
            "haul {cmd:?} --help example does not run haul:\n{text}"
        );
        assert!(
            text.contains("exit codes: 0 "),
            "haul {cmd:?} --help has no exit codes:\n{text}"
        );
    }
}

#[test]
fn exit_codes_are_in_the_help() {
    for cmd in [
        &[][..],
        &["migrate"],
        &["migrate", "pid"],
        &["migrate", "runc"],
    ] {
        let text = help(cmd);
        for code in ["5 ", "6 ", "7 "] {
            assert!(
                text.contains(code),
                "haul {cmd:?} --help lacks exit code {code}:\n{text}"
            );
        }
        assert!(text.contains("rolled back"), "{text}");
    }
}

#[test]
fn a_missing_key_is_a_usage_error_that_says_what_to_do() {
    let out = Command::new(haul_bin().unwrap())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("haul keygen"), "{err}");
    assert!(err.contains("--insecure"), "{err}");
}

#[test]
fn lazy_and_pre_dump_always_together_are_refused_before_anything_runs() {
    // An existing pid (this test's), so that only the flags can be refused.
    let me = std::process::id().to_string();
    let out = Command::new(haul_bin().unwrap())
        .args([
            "migrate",
            "pid",
            &me,
            "--to",
            "127.0.0.1:9",
            "--insecure",
            "--lazy",
            "--pre-dump",
            "always",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot pre-dump for a lazy dump"), "{err}");
}
