//! Small helpers shared by xtask subcommands: workspace root, running commands.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Runs a command in the workspace root, echoing it; an error names the command and its status.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    cmd.current_dir(root());
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {}: {e}", show(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status}", show(cmd)))
    }
}

/// `cargo` with the toolchain that runs xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs a command in the workspace root, echoing it, and returns its standard output as text;
/// standard error passes through. An error names the command and its status.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    cmd.current_dir(root()).stderr(Stdio::inherit());
    eprintln!("xtask: $ {}", show(cmd));
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start {}: {e}", show(cmd)))?;
    if out.status.success() {
        String::from_utf8(out.stdout).map_err(|_| format!("{}: output is not UTF-8", show(cmd)))
    } else {
        Err(format!("{} failed: {}", show(cmd), out.status))
    }
}

/// Whether `name` is an executable file in a directory of `$PATH`.
pub fn on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// The command line as a shell would show it, with the environment variables xtask set first.
pub fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!(
                "{}={:?} ",
                k.to_string_lossy(),
                v.to_string_lossy()
            ));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
