//! `cargo xtask test` and `cargo xtask demo`.

use crate::{lab, util};

pub fn run(_args: &[String]) -> Result<(), String> {
    lab::install()?;
    util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
    crate::proto::run(&["--check".to_string()])?;
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    util::run(util::cargo().args(["build", "--workspace", "--bins"]))?;
    util::run(util::cargo().args(["test", "--workspace", "--", "--test-threads=1"]))?;
    Ok(())
}
