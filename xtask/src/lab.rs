//! `cargo xtask lab`: installs what the tests and the demo need (xtask/lab/install.sh).

use crate::util;
use std::process::Command;

pub fn install() -> Result<(), String> {
    let script = util::root().join("xtask/lab/install.sh");
    util::run(Command::new("bash").arg(script))
}
