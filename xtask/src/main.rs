//! `cargo xtask`: everything CI and developers run, one file per subcommand.
//!
//! Subcommands: `proto [--check]`, `test [--target T]`, `demo`, `lab` (install test tools).

mod demo;
mod lab;
mod proto;
mod test;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  demo                 build haul, create two test hosts (network namespaces joined by a veth
                       pair), migrate a workload between them and print the summary
  test                 run every check and test CI runs (fmt, clippy, proto --check, unit and
                       end-to-end tests with real CRIU); installs missing tools first
  proto [--check]      regenerate proto/src/generated/*.rs from proto/proto/*.proto
                       (--check: fail if the committed files differ)
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
        "lab" => lab::install(),
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
