//! `cargo xtask size [--target T|all] [--compare-opt-levels]`: the size of each dist binary
//! against the 2 MiB goal, its largest sections, and the crates and symbols that take the most
//! room. Fails when a binary is over the goal.
//!
//! Attribution reads `.symtab` of a second build with the same code but its symbols kept
//! (profile `dist-symbols`, which inherits `release`), demangles each name and charges the
//! symbol's size to the first path segment of its name: `<alloc::vec::Vec<T> as
//! core::ops::Drop>::drop` counts for `alloc`, the crate whose code the symbol is. After LTO,
//! inlined code counts for the function it was inlined into, so the crate numbers are a guide,
//! not an invoice.

use crate::dist::{self, Artifact};
use crate::elf::{self, Elf};
use crate::targets::{self, Target};
use std::collections::HashMap;
use std::fs;

/// The goal from the "Edge build" issue: each binary at most 2 MiB.
pub const GOAL_BYTES: u64 = 2 * 1024 * 1024;
/// How many crates and symbols the report lists.
const TOP: usize = 15;
/// The opt-levels `--compare-opt-levels` builds.
const OPT_LEVELS: [&str; 3] = ["\"s\"", "\"z\"", "3"];
/// Name under which symbols without Rust mangling are counted (musl, LLVM libunwind, builtins).
const UNMANGLED: &str = "[C and C++: musl libc, libunwind]";

pub fn run(args: &[String]) -> Result<(), String> {
    let compare = args.iter().any(|a| a == "--compare-opt-levels");
    let rest: Vec<String> = args
        .iter()
        .filter(|a| *a != "--compare-opt-levels")
        .cloned()
        .collect();
    let targets = targets::parse(&rest).map_err(|e| {
        format!("size: {e}; usage: cargo xtask size [--target T|all] [--compare-opt-levels]")
    })?;
    if compare {
        compare_opt_levels(&targets)?;
    }
    // Built last so that target/dist holds the binaries of the configured profile.
    let built = dist::build_all(&targets)?;
    let mut over = Vec::new();
    for a in &built {
        report(a)?;
        if a.bytes > GOAL_BYTES {
            over.push(a.target.triple);
        }
    }
    println!();
    for a in &built {
        println!(
            "{:<28} {:>9} bytes  {:>6} KiB",
            a.target.triple,
            a.bytes,
            a.bytes.div_ceil(1024)
        );
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "size: over the {} KiB goal: {}",
            GOAL_BYTES / 1024,
            over.join(", ")
        ))
    }
}

/// Builds each target at each opt-level of [`OPT_LEVELS`] and prints the stripped sizes.
fn compare_opt_levels(targets: &[Target]) -> Result<(), String> {
    targets::ensure_rustup_targets()?;
    let mut rows = Vec::new();
    for &t in targets {
        for level in OPT_LEVELS {
            let setting = format!("profile.release.opt-level={level}");
            let path = dist::cargo_build(t, "release", &["--config", &setting])?;
            let bytes = fs::metadata(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            rows.push((t.triple, level, bytes));
        }
    }
    println!("opt-level comparison (stripped, static, LTO, 1 codegen unit, panic=abort):");
    for (triple, level, bytes) in rows {
        println!(
            "  {triple:<28} opt-level={level:<4} {bytes:>9} bytes  {:>6} KiB",
            bytes.div_ceil(1024)
        );
    }
    Ok(())
}

fn report(a: &Artifact) -> Result<(), String> {
    let verdict = if a.bytes <= GOAL_BYTES {
        "within"
    } else {
        "OVER"
    };
    println!(
        "\n{}: {} bytes ({} KiB), {verdict} the {} KiB goal",
        a.target.triple,
        a.bytes,
        a.bytes.div_ceil(1024),
        GOAL_BYTES / 1024
    );

    let data = fs::read(&a.path).map_err(|e| format!("read {}: {e}", a.path.display()))?;
    let f = Elf::parse(&data).map_err(|e| format!("{}: {e}", a.path.display()))?;
    let mut sections = f.sections().map_err(|e| e.to_string())?;
    sections.retain(|s| s.size > 0 && !s.name.is_empty());
    sections.sort_by_key(|s| std::cmp::Reverse(s.size));
    let list: Vec<String> = sections
        .iter()
        .take(6)
        .map(|s| format!("{} {}", s.name, kib(s.size)))
        .collect();
    println!("  largest sections: {}", list.join(", "));

    let with_symbols = dist::cargo_build(a.target, "dist-symbols", &[])?;
    let data =
        fs::read(&with_symbols).map_err(|e| format!("read {}: {e}", with_symbols.display()))?;
    let symbols = Elf::parse(&data)
        .and_then(|f| f.symbols())
        .map_err(|e| format!("{}: {e}", with_symbols.display()))?;
    let sized = sized_symbols(&symbols);
    let total: u64 = sized.iter().map(|s| s.1).sum();

    let mut crates: HashMap<String, (u64, usize)> = HashMap::new();
    for (name, size) in &sized {
        let e = crates.entry(crate_of(name)).or_default();
        e.0 += size;
        e.1 += 1;
    }
    let mut crates: Vec<_> = crates.into_iter().collect();
    crates.sort_by(|x, y| y.1 .0.cmp(&x.1 .0).then(x.0.cmp(&y.0)));
    println!(
        "  largest crates ({} in {} function and data symbols):",
        kib(total),
        sized.len()
    );
    for (name, (size, count)) in crates.iter().take(TOP) {
        println!(
            "    {:>10}  {:>5.1}%  {name} ({count} symbols)",
            kib(*size),
            percent(*size, total)
        );
    }
    println!("  largest symbols:");
    for (name, size) in sized.iter().take(TOP) {
        println!("    {:>10}  {}", kib(*size), shorten(&demangle(name), 110));
    }
    Ok(())
}

/// Functions and data objects with a size, each address counted once (aliases share one),
/// largest first.
fn sized_symbols(symbols: &[elf::Symbol]) -> Vec<(String, u64)> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(String, u64)> = symbols
        .iter()
        .filter(|s| {
            (s.kind == elf::STT_FUNC || s.kind == elf::STT_OBJECT) && s.size > 0 && s.shndx != 0
        })
        .filter(|s| seen.insert((s.value, s.size)))
        .map(|s| (s.name.clone(), s.size))
        .collect();
    out.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    out
}

fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_string(),
    }
}

/// The crate a symbol's code comes from: the first `ident::` in its demangled name, or
/// [`UNMANGLED`] for C symbols.
fn crate_of(name: &str) -> String {
    let Ok(d) = rustc_demangle::try_demangle(name) else {
        return UNMANGLED.to_string();
    };
    let text = format!("{d:#}");
    first_path_segment(&text)
        .unwrap_or("[other Rust]")
        .to_string()
}

fn first_path_segment(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            if text[i..].starts_with("::") {
                return Some(&text[start..i]);
            }
        } else {
            i += 1;
        }
    }
    None
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crates_from_legacy_and_v0_names() {
        // Legacy mangling (the project's own code on stable rustc).
        assert_eq!(
            crate_of("_ZN4haul4dest5serve3run17h0123456789abcdefE"),
            "haul"
        );
        assert_eq!(
            crate_of("_ZN60_$LT$alloc..string..String$u20$as$u20$core..fmt..Display$GT$3fmt17h0123456789abcdefE"),
            "alloc"
        );
        assert_eq!(
            crate_of("_ZN44_$LT$$RF$T$u20$as$u20$core..fmt..Display$GT$3fmt17h0123456789abcdefE"),
            "core"
        );
        // v0 mangling (the precompiled standard library).
        assert_eq!(crate_of("_RNvNtCs1234_4core3fmt5write"), "core");
        assert_eq!(crate_of("memcpy"), UNMANGLED);
        assert_eq!(first_path_segment("<[u8] as x::Y>::z"), Some("x"));
        assert_eq!(first_path_segment("main"), None);
    }

    #[test]
    fn aliases_count_once_and_undefined_symbols_not_at_all() {
        let sym = |name: &str, kind, shndx, value, size| elf::Symbol {
            name: name.into(),
            kind,
            shndx,
            value,
            size,
        };
        let syms = [
            sym("a", elf::STT_FUNC, 1, 0x10, 8),
            sym("a_alias", elf::STT_FUNC, 1, 0x10, 8),
            sym("big", elf::STT_OBJECT, 2, 0x20, 100),
            sym("undef", elf::STT_FUNC, 0, 0, 50),
            sym("section", 3, 1, 0, 500),
        ];
        assert_eq!(
            sized_symbols(&syms),
            [("big".to_string(), 100), ("a".to_string(), 8)]
        );
    }
}
