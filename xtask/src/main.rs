//! `cargo xtask`: everything CI and developers run, one file per subcommand.
//!
//! Subcommands: `proto [--check]`, `test [--target T]`, `demo`, `lab` (install test tools),
//! `dist`, `size`, `deps`, `init-check`, `bench`, `fuzz`.

mod bench;
mod demo;
mod deps;
mod dist;
mod elf;
mod fuzz;
mod init_check;
mod lab;
mod proto;
mod sha256;
mod size;
mod targets;
mod test;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  demo                 build haul, create two test hosts (network namespaces joined by a veth
                       pair), migrate a workload between them and print the summary
  test                 run every check and test CI runs (fmt, clippy also for the musl targets,
                       proto --check, init-check, deps, unit and end-to-end tests with real
                       CRIU, 3 s of each fuzz target); installs missing tools first
  test --target T      build the tests that need neither CRIU nor root (lib tests of haul and
                       haul-proto) for T and run them, under qemu-aarch64-static for aarch64
  dist [--target T]    fully static, stripped haul binaries in target/dist/haul-<T> with
                       <T>.sha256; T: x86_64-unknown-linux-musl, aarch64-unknown-linux-musl
                       or all (the default)
  size [--target T] [--compare-opt-levels]
                       dist, then each binary's size against the 2 MiB goal and its largest
                       sections, crates and symbols (--compare-opt-levels: also build with
                       opt-level s, z and 3)
  fuzz [--seconds N] [--target NAME] [--update-seeds]
                       build the cargo-fuzz targets in fuzz/ (stable toolchain, no cargo-fuzz
                       needed) and run each, or NAME, for N seconds (default 30)
                       from fuzz/seeds; prints runs, coverage and new inputs per target and fails
                       on a crash, naming the input (--update-seeds: rewrite the generated seeds)
  deps                 dependency policy of the shipped binary: no crate in two versions, no
                       crate that needs a C toolchain
  init-check           check the OpenRC, SysV and systemd files in init/ (syntax, config,
                       a start and stop of the SysV script, systemd-analyze verify)
  proto [--check]      regenerate proto/src/generated/*.rs from proto/proto/*.proto
                       (--check: fail if the committed files differ)
  bench [--quick] [--reps N] [--sizes 0,64,256,1024] [--methods haul,expert,manual,local,link]
        [--no-warmup] [--out DIR]
                       migrate a runc workload container of N MiB between two test hosts with
                       haul, CRIU's page server + tar, tar alone and locally, interleaved after a
                       warm-up; downtime, total time, bytes on the wire, peak RSS, CRIU times;
                       writes bench/RESULTS.md and bench/results.json (--quick: sizes 0,64, one
                       repetition, into target/bench-quick/)
  lab                  install the test tools (CRIU 4.x in a private prefix, runc, iptables,
                       busybox-static, qemu-user-static) and print what is there
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        "proto" => proto::run(rest),
        "test" => test::run(rest),
        "demo" => demo::run_demo(rest),
        "bench" => bench::run(rest),
        "lab" => lab::install(),
        "dist" => dist::run(rest),
        "size" => size::run(rest),
        "deps" => deps::run(rest),
        "init-check" => init_check::run(rest),
        "fuzz" => fuzz::run(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
