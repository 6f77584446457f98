//! The targets haul ships for (static musl, x86_64 and aarch64) and the tools that build and run
//! them here: their rustup standard libraries and, for aarch64, `qemu-aarch64-static`.

use crate::util;
use std::process::Command;

/// One shipped target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The Rust target triple.
    pub triple: &'static str,
    /// `e_machine` in the ELF header of a binary built for it.
    pub elf_machine: u16,
    /// What runs its binaries on this x86_64 machine (`None`: they run natively).
    pub runner: Option<&'static str>,
}

/// Every target `cargo xtask dist` builds; both link with rust-lld (.cargo/config.toml).
pub const SHIPPED: [Target; 2] = [
    Target {
        triple: "x86_64-unknown-linux-musl",
        elf_machine: 62, // EM_X86_64
        runner: None,
    },
    Target {
        triple: "aarch64-unknown-linux-musl",
        elf_machine: 183, // EM_AARCH64
        runner: Some("qemu-aarch64-static"),
    },
];

/// Flags for a fully static executable. musl targets link statically already, but as a
/// static-pie (an ELF of type DYN with a DYNAMIC segment that the program relocates itself);
/// `relocation-model=static` makes a plain ET_EXEC with neither PT_INTERP nor PT_DYNAMIC. These go
/// through RUSTFLAGS, which with `--target` reach only the target's crates, not build scripts or
/// proc macros.
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C relocation-model=static";

/// Parses `[--target TRIPLE|all]` (also `--target=...`); no option means every shipped target.
pub fn parse(args: &[String]) -> Result<Vec<Target>, String> {
    let value = match args {
        [] => return Ok(SHIPPED.to_vec()),
        [flag, v] if flag == "--target" => v.as_str(),
        [one] if one.starts_with("--target=") => &one["--target=".len()..],
        _ => return Err(format!("expected [--target {}|all]", names())),
    };
    if value == "all" {
        return Ok(SHIPPED.to_vec());
    }
    find(value).map(|t| vec![t])
}

/// The shipped target named `triple`.
pub fn find(triple: &str) -> Result<Target, String> {
    SHIPPED
        .iter()
        .copied()
        .find(|t| t.triple == triple)
        .ok_or_else(|| format!("unknown target {triple:?}: expected one of {}", names()))
}

fn names() -> String {
    SHIPPED
        .iter()
        .map(|t| t.triple)
        .collect::<Vec<_>>()
        .join("|")
}

/// `CARGO_TARGET_<TRIPLE>_RUNNER`, the variable cargo reads for the command that runs a target's
/// test binaries.
pub fn runner_var(t: Target) -> String {
    format!(
        "CARGO_TARGET_{}_RUNNER",
        t.triple.to_uppercase().replace('-', "_")
    )
}

/// `rustup target add` for every shipped target that `rustup target list --installed` lacks.
pub fn ensure_rustup_targets() -> Result<(), String> {
    let installed = util::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let missing: Vec<&str> = SHIPPED
        .iter()
        .map(|t| t.triple)
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    util::run(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing),
    )
}

/// Makes sure the runners of `targets` are on PATH, installing Debian's qemu-user-static (which
/// registers nothing: the runner is named explicitly) when one is missing.
pub fn ensure_runners(targets: &[Target]) -> Result<(), String> {
    let missing: Vec<&str> = targets
        .iter()
        .filter_map(|t| t.runner)
        .filter(|r| !util::on_path(r))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "{} not found; install Debian's qemu-user-static (as root: apt-get install \
             qemu-user-static) or run `cargo xtask lab` as root",
            missing.join(", ")
        ));
    }
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "qemu-user-static",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    match missing.iter().find(|r| !util::on_path(r)) {
        Some(r) => Err(format!(
            "{r} still missing after installing qemu-user-static"
        )),
        None => Ok(()),
    }
}

/// Whether xtask runs as root, from `id -u` (xtask has no libc or rustix dependency).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn target_options() {
        assert_eq!(parse(&[]).unwrap(), SHIPPED.to_vec());
        assert_eq!(
            parse(&args(&["--target", "all"])).unwrap(),
            SHIPPED.to_vec()
        );
        assert_eq!(
            parse(&args(&["--target=aarch64-unknown-linux-musl"])).unwrap(),
            vec![SHIPPED[1]]
        );
        assert!(parse(&args(&["--target", "x86_64-unknown-linux-gnu"])).is_err());
        assert!(parse(&args(&["--target"])).is_err());
        assert_eq!(
            runner_var(SHIPPED[1]),
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER"
        );
    }
}
