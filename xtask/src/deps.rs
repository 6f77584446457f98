//! `cargo xtask deps`: the dependency policy of the shipped binary, for each shipped target.
//! 1. No crate in two versions (style guide: a heapless 0.8/0.9 split under serde-json-core is
//!    easy to miss and doubles that code in the binary).
//! 2. Pure Rust: no crate that compiles C or assembly with a C toolchain, so aarch64 links with
//!    rust-lld alone and no cross compiler is needed.
//!
//! Both look at what is compiled for the target: normal dependencies of `haul` and `haul-proto`,
//! without proc macros and their dependencies (those run on the build host only); the second
//! also follows build dependencies, since a build script is where C gets compiled.

use crate::targets::{self, Target};
use crate::util;

/// Build-time crates that mean a C (or C++) toolchain is involved.
const C_TOOLCHAIN_CRATES: [&str; 5] = ["cc", "cmake", "pkg-config", "bindgen", "vcpkg"];

pub fn run(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: cargo xtask deps".into());
    }
    let mut problems = Vec::new();
    for t in targets::SHIPPED {
        let dups = tree(t, &["-e", "normal,no-proc-macro", "--duplicates"])?;
        if !dups.trim().is_empty() {
            problems.push(format!(
                "{}: crates in more than one version in the shipped binary:\n{dups}",
                t.triple
            ));
        }
        let all = tree(t, &["-e", "normal,build,no-proc-macro", "--prefix", "none"])?;
        for c in c_toolchain_users(&all) {
            problems.push(format!(
                "{t}: {c} compiles C for the target, which needs a C cross toolchain; keep \
                 dependencies pure Rust (`cargo tree -p haul --target {t} -e normal,build -i {c}` \
                 shows what pulls it in)",
                t = t.triple
            ));
        }
    }
    if problems.is_empty() {
        eprintln!("xtask: deps: no duplicate versions, no C toolchain crates");
        Ok(())
    } else {
        Err(format!("deps:\n{}", problems.join("\n")))
    }
}

/// `cargo tree -p haul -p haul-proto --target T` with `extra` options; `cargo tree` prints
/// nothing on standard output when no package matches (e.g. no duplicates).
fn tree(t: Target, extra: &[&str]) -> Result<String, String> {
    util::output(
        util::cargo()
            .args([
                "tree",
                "-p",
                "haul",
                "-p",
                "haul-proto",
                "--target",
                t.triple,
            ])
            .args(extra),
    )
}

/// The C-toolchain crates named in `cargo tree --prefix none` output
/// (lines such as `cc v1.2.3` or `ring v0.17.14 (*)`).
fn c_toolchain_users(tree: &str) -> Vec<&str> {
    let mut found: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| C_TOOLCHAIN_CRATES.contains(name))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::c_toolchain_users;

    #[test]
    fn finds_cc_in_tree_output() {
        let out = "haul v0.1.0 (/work/main/agent)\nsnow v0.10.0\nring v0.17.14\ncc v1.2.3\n\
                   cc v1.2.3 (*)\nccm v1.0.0\n";
        assert_eq!(c_toolchain_users(out), ["cc"]);
        assert!(c_toolchain_users("haul v0.1.0\nprost v0.14.6\n").is_empty());
    }
}
