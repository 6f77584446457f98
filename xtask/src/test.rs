//! `cargo xtask test [--target T]`.
//!
//! Without `--target`: every check CI runs on this host, ending with a short fuzzing run. With
//! `--target` (a shipped musl target): the unit tests that need neither CRIU nor root (the lib
//! tests of `haul`, `haul-proto` and `haul-seal`: parsers on fixtures, protocol and crypto,
//! option building, bad input), built
//! for that target and run natively or under its QEMU runner.

use crate::targets::{self, Target};
use crate::{deps, init_check, lab, util};
use std::time::Instant;

/// Seconds each fuzz target runs in `cargo xtask test`: a smoke run that catches a target that
/// no longer builds or crashes on its seeds or near them; long runs are `cargo xtask fuzz`.
const FUZZ_SECONDS: u64 = 3;

pub fn run(args: &[String]) -> Result<(), String> {
    if args.is_empty() {
        return host();
    }
    let chosen = targets::parse(args).map_err(|e| format!("test: {e}"))?;
    for t in chosen {
        cross(t)?;
    }
    Ok(())
}

fn host() -> Result<(), String> {
    lab::install()?;
    targets::ensure_rustup_targets()?;
    util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
    crate::proto::run(&["--check".to_string()])?;
    init_check::run(&[])?;
    deps::run(&[])?;
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    for t in targets::SHIPPED {
        util::run(util::cargo().args([
            "clippy", "-p", "haul", "--target", t.triple, "--", "-D", "warnings",
        ]))?;
    }
    util::run(util::cargo().args(["build", "--workspace", "--bins"]))?;
    util::run(util::cargo().args(["test", "--workspace", "--", "--test-threads=1"]))?;
    // The CRIU-free tests again, built for each shipped target (aarch64 under QEMU).
    for t in targets::SHIPPED {
        cross(t)?;
    }
    crate::fuzz::fuzz(&crate::fuzz::Options {
        seconds: FUZZ_SECONDS,
        target: None,
    })
}

/// `cargo test --lib` of the CRIU-free packages for `t`, through its runner.
fn cross(t: Target) -> Result<(), String> {
    targets::ensure_rustup_targets()?;
    targets::ensure_runners(&[t])?;
    let started = Instant::now();
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "-p",
        "haul",
        "-p",
        "haul-proto",
        "-p",
        "haul-seal",
        "--lib",
        "--target",
        t.triple,
    ]);
    if let Some(runner) = t.runner {
        cmd.env(targets::runner_var(t), runner);
    }
    util::run(&mut cmd)?;
    eprintln!(
        "xtask: test --target {}: lib tests of haul, haul-proto and haul-seal passed in {:.1} s (build included)",
        t.triple,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
