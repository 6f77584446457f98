//! `cargo xtask dist [--target T|all]`: fully static, stripped, size-tuned `haul` binaries in
//! target/dist/haul-<target>, each with a `sha256sum`-format checksum file, checked to be a
//! plain static executable for the right machine and to start (`haul --help`, under QEMU for
//! aarch64).
//!
//! The size tuning is the `release` profile in the workspace Cargo.toml; the builds go to their
//! own target directory (target/xtask-dist) because the static RUSTFLAGS would otherwise make
//! every ordinary musl build (clippy, cross tests) start again from scratch.

use crate::elf::{self, Elf};
use crate::targets::{self, Target};
use crate::{sha256, util};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the finished binaries go, relative to the workspace root.
pub const OUT_DIR: &str = "target/dist";
/// Cargo's target directory for these builds, relative to the workspace root.
pub const BUILD_DIR: &str = "target/xtask-dist";

/// One finished binary.
pub struct Artifact {
    pub target: Target,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

pub fn run(args: &[String]) -> Result<(), String> {
    let targets = targets::parse(args).map_err(|e| format!("dist: {e}"))?;
    let built = build_all(&targets)?;
    for a in &built {
        println!(
            "{}  {} bytes ({} KiB)  sha256 {}",
            a.path.display(),
            a.bytes,
            a.bytes.div_ceil(1024),
            a.sha256
        );
    }
    Ok(())
}

/// Builds, checks and checksums `targets`, installing rustup targets and QEMU when missing.
pub fn build_all(targets: &[Target]) -> Result<Vec<Artifact>, String> {
    targets::ensure_rustup_targets()?;
    targets::ensure_runners(targets)?;
    targets.iter().map(|&t| build(t)).collect()
}

/// `cargo build --release -p haul --target T` with the static flags, in [`BUILD_DIR`];
/// `profile` is `release` or a profile inheriting it; `extra` are more cargo arguments (such as
/// `--config` overrides). Returns the path of the built binary.
pub fn cargo_build(t: Target, profile: &str, extra: &[&str]) -> Result<PathBuf, String> {
    let root = util::root();
    let mut cmd = util::cargo();
    cmd.args([
        "build",
        "--locked",
        "-p",
        "haul",
        "--bin",
        "haul",
        "--profile",
        profile,
    ])
    .args(["--target", t.triple, "--target-dir"])
    .arg(root.join(BUILD_DIR))
    // Replaces, not extends, the caller's flags: the result must not depend on them.
    .env("RUSTFLAGS", targets::STATIC_RUSTFLAGS)
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .args(extra);
    util::run(&mut cmd)?;
    Ok(root
        .join(BUILD_DIR)
        .join(t.triple)
        .join(profile)
        .join("haul"))
}

fn build(t: Target) -> Result<Artifact, String> {
    let built = cargo_build(t, "release", &[])?;
    let data = fs::read(&built).map_err(|e| format!("read {}: {e}", built.display()))?;
    check_static(&data, t).map_err(|e| format!("{}: {e}", built.display()))?;

    let out_dir = util::root().join(OUT_DIR);
    fs::create_dir_all(&out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let name = format!("haul-{}", t.triple);
    let path = out_dir.join(&name);
    fs::copy(&built, &path).map_err(|e| format!("copy to {}: {e}", path.display()))?;
    let sha = sha256::hex(&data);
    write(
        &out_dir.join(format!("{name}.sha256")),
        &format!("{sha}  {name}\n"),
    )?;
    smoke_test(t, &path)?;
    Ok(Artifact {
        target: t,
        path,
        bytes: data.len() as u64,
        sha256: sha,
    })
}

/// Checks that `data` is what a device can run with nothing else installed: an ET_EXEC for the
/// target's machine with no program interpreter, no dynamic segment or section, and no symbol
/// table (stripped).
pub fn check_static(data: &[u8], t: Target) -> Result<(), String> {
    let e = |x: elf::Error| x.to_string();
    let f = Elf::parse(data).map_err(e)?;
    if f.machine != t.elf_machine {
        return Err(format!(
            "e_machine is {}, expected {} for {}",
            f.machine, t.elf_machine, t.triple
        ));
    }
    if f.e_type != elf::ET_EXEC {
        return Err(format!(
            "ELF type {} is not ET_EXEC ({}): a position-independent (static-pie) build? \
             expected RUSTFLAGS {:?}",
            f.e_type,
            elf::ET_EXEC,
            targets::STATIC_RUSTFLAGS
        ));
    }
    let segments = f.segment_types().map_err(e)?;
    if segments.contains(&elf::PT_INTERP) {
        return Err("has a PT_INTERP segment: it needs a dynamic loader".into());
    }
    if segments.contains(&elf::PT_DYNAMIC) {
        return Err("has a PT_DYNAMIC segment: not fully static".into());
    }
    let sections = f.sections().map_err(e)?;
    if let Some(s) = sections.iter().find(|s| s.kind == elf::SHT_DYNAMIC) {
        return Err(format!("has a dynamic section ({})", s.name));
    }
    if sections.iter().any(|s| s.kind == elf::SHT_SYMTAB) {
        return Err("has a symbol table: not stripped (profile.release.strip)".into());
    }
    Ok(())
}

/// Runs `haul --help` (through the target's runner) and expects argh's usage text.
fn smoke_test(t: Target, path: &Path) -> Result<(), String> {
    let mut cmd = match t.runner {
        Some(r) => {
            let mut c = Command::new(r);
            c.arg(path);
            c
        }
        None => Command::new(path),
    };
    let out = util::output(cmd.arg("--help"))?;
    if out.starts_with("Usage: ") {
        Ok(())
    } else {
        Err(format!("{} --help printed no usage", path.display()))
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::sample;

    #[test]
    fn static_check_names_what_is_wrong() {
        let x86 = targets::SHIPPED[0];
        // sample() has a symbol table, so a clean header gets as far as that check.
        let ok_but_symbols = sample(&[1, 1], elf::ET_EXEC);
        assert!(check_static(&ok_but_symbols, x86)
            .unwrap_err()
            .contains("symbol table"));
        let pie = sample(&[1], 3);
        assert!(check_static(&pie, x86).unwrap_err().contains("ET_EXEC"));
        let interp = sample(&[elf::PT_INTERP, 1], elf::ET_EXEC);
        assert!(check_static(&interp, x86)
            .unwrap_err()
            .contains("PT_INTERP"));
        let dynamic = sample(&[1, elf::PT_DYNAMIC], elf::ET_EXEC);
        assert!(check_static(&dynamic, x86)
            .unwrap_err()
            .contains("PT_DYNAMIC"));
        let arm = targets::SHIPPED[1];
        assert!(check_static(&ok_but_symbols, arm)
            .unwrap_err()
            .contains("e_machine"));
    }
}
