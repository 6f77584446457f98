//! `cargo xtask fuzz [--seconds N] [--target NAME] [--update-seeds]`: builds the cargo-fuzz
//! targets in `fuzz/` and runs each (or one) for N seconds from its committed seeds, then reports
//! runs, coverage and new inputs per target; a crash fails the command with its input's path.
//!
//! Works with the stable toolchain and without cargo-fuzz: the targets are built by cargo with
//! the coverage instrumentation cargo-fuzz 0.13 asks of rustc for `--sanitizer none`, all
//! stable codegen options, and libFuzzer itself is C++ built by libfuzzer-sys (g++). The
//! targets' bugs are Rust panics, which libfuzzer-sys's panic hook turns into crashes, so no
//! sanitizer is needed. Building directly saves CI installing cargo-fuzz (about 90 s of CPU);
//! `cargo fuzz` still works on the same crate for whoever has it.

use crate::util;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Seconds per target without `--seconds`.
const DEFAULT_SECONDS: u64 = 30;

/// An input running longer than this is reported as a hang (libFuzzer's `-timeout`).
const INPUT_TIMEOUT_SECS: u64 = 10;

pub struct Options {
    pub seconds: u64,
    pub target: Option<String>,
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut opts = Options {
        seconds: DEFAULT_SECONDS,
        target: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                opts.seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("fuzz: --seconds needs a whole number of seconds above 0")?
            }
            "--target" => {
                opts.target = Some(it.next().ok_or("fuzz: --target needs a name")?.clone())
            }
            "--update-seeds" => return update_seeds(),
            other => return Err(format!("fuzz: unknown option {other:?}")),
        }
    }
    fuzz(&opts)
}

/// Rewrites the generated seeds in `fuzz/seeds/` (`haul::fuzzing::seeds`).
fn update_seeds() -> Result<(), String> {
    util::run(
        util::cargo()
            .args([
                "test",
                "-p",
                "haul",
                "--lib",
                "fuzzing::tests::committed_seeds_are_current",
            ])
            .env("HAUL_UPDATE_SEEDS", "1"),
    )
}

/// What one target's run did.
#[derive(Debug, Default)]
struct Report {
    target: String,
    runs: u64,
    exec_per_sec: u64,
    coverage: u64,
    features: u64,
    corpus: u64,
    new_units: u64,
    seconds: f64,
    /// The input that crashed or hung it.
    artifact: Option<String>,
    /// The last lines of its output, when it failed.
    tail: String,
}

pub fn fuzz(opts: &Options) -> Result<(), String> {
    let root = util::root();
    let fuzz_dir = root.join("fuzz");
    let all = targets(&fuzz_dir.join("Cargo.toml"))?;
    let chosen: Vec<String> = match &opts.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => {
            return Err(format!(
                "fuzz: no target {t:?}; the targets are {}",
                all.join(", ")
            ))
        }
        None => all,
    };
    let started = Instant::now();
    let host = host_triple()?;
    build(&fuzz_dir, &host, &chosen)?;
    let built = started.elapsed();
    let bin_dir = fuzz_dir.join("target").join(&host).join("release");
    let mut reports = Vec::new();
    for t in &chosen {
        let seeds = fuzz_dir.join("seeds").join(t);
        if !seeds.is_dir() {
            return Err(format!(
                "fuzz: {} is missing: every target starts from committed seeds",
                seeds.display()
            ));
        }
        eprintln!("xtask: fuzzing {t} for {} s", opts.seconds);
        reports.push(run_target(&fuzz_dir, &bin_dir, t, &seeds, opts.seconds)?);
    }
    print_reports(&reports);
    eprintln!(
        "xtask: fuzz: {} target(s), build {:.0} s, total {:.0} s",
        reports.len(),
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&Report> = reports.iter().filter(|r| r.artifact.is_some()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut msg = String::from("fuzz: crashes found:\n");
    for r in failed {
        let artifact = r.artifact.as_deref().unwrap_or("?");
        msg.push_str(&format!(
            "  {}: {artifact}\n    reproduce: {} {artifact}\n    (make it a fixture under fixtures/fuzz-crashes/ and a unit test beside the parser)\n    last output:\n{}\n",
            r.target,
            bin_dir.join(&r.target).display(),
            indent(&r.tail)
        ));
    }
    Err(msg)
}

/// The `[[bin]]` names of `fuzz/Cargo.toml`, in order.
fn targets(manifest: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(manifest)
        .map_err(|e| format!("fuzz: {}: {e}", manifest.display()))?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name") {
                let name = v
                    .trim_start()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"');
                names.push(name.to_string());
            }
        }
    }
    if names.is_empty() {
        return Err(format!("fuzz: no [[bin]] in {}", manifest.display()));
    }
    Ok(names)
}

/// What rustc is asked for the fuzz build, as `cargo fuzz build --sanitizer none` (0.13) asks
/// it: SanitizerCoverage's edge counters, PC table, comparison tracing and stack depth, which
/// libFuzzer reads; `cfg(fuzzing)`; debug assertions (overflow checks) on.
const FUZZ_RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Ccodegen-units=1",
];

/// Builds the chosen targets into `fuzz/target/<host>/release/`, where cargo-fuzz puts them.
/// `--target` keeps the flags off build scripts and proc macros.
fn build(fuzz_dir: &Path, host: &str, chosen: &[String]) -> Result<(), String> {
    let mut flags = FUZZ_RUSTFLAGS.join(" ");
    if let Ok(extra) = std::env::var("RUSTFLAGS") {
        flags = format!("{extra} {flags}");
    }
    let mut cmd = util::cargo();
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(fuzz_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(fuzz_dir.join("target"))
        .args(["--target", host])
        .env("RUSTFLAGS", flags)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only");
    for t in chosen {
        cmd.args(["--bin", t]);
    }
    util::run(&mut cmd)
}

/// The host's target triple (where cargo-fuzz puts the binaries).
fn host_triple() -> Result<String, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = util::output(Command::new(rustc).arg("-vV"))?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
        .ok_or_else(|| "fuzz: rustc -vV names no host".into())
}

/// Runs one target's binary for `seconds`, new inputs into `fuzz/corpus/<t>/`, a crash into
/// `fuzz/artifacts/<t>/`, temporary files into a directory removed afterwards.
fn run_target(
    fuzz_dir: &Path,
    bin_dir: &Path,
    t: &str,
    seeds: &Path,
    seconds: u64,
) -> Result<Report, String> {
    let corpus = fuzz_dir.join("corpus").join(t);
    let artifacts = fuzz_dir.join("artifacts").join(t);
    // dest_control creates and removes a directory tree per input: on tmpfs that costs
    // microseconds, on this VM's ext4 milliseconds (measured: 300 against 10 000 inputs/s).
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        shm.join(format!("haul-fuzz-{}-{t}", std::process::id()))
    } else {
        fuzz_dir.join("target").join("tmp").join(t)
    };
    for d in [&corpus, &artifacts, &tmp] {
        std::fs::create_dir_all(d).map_err(|e| format!("fuzz: {}: {e}", d.display()))?;
    }
    let bin: PathBuf = bin_dir.join(t);
    let started = Instant::now();
    let out = Command::new(&bin)
        .arg(&corpus)
        .arg(seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .env("TMPDIR", &tmp)
        .current_dir(fuzz_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("fuzz: cannot start {}: {e}", bin.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    let log = String::from_utf8_lossy(&out.stderr);
    let mut r = parse(t, &log);
    r.seconds = started.elapsed().as_secs_f64();
    if !out.status.success() && r.artifact.is_none() {
        r.artifact = Some(format!("(none written; {})", out.status));
    }
    if r.artifact.is_some() {
        r.tail = failure(&log);
    }
    Ok(r)
}

/// What to show of a failed run: the panic and its message, else the last lines.
fn failure(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let panic = lines.iter().position(|l| l.contains("panicked at"));
    let shown: Vec<&str> = match panic {
        Some(i) => lines
            .iter()
            .skip(i)
            .take_while(|l| {
                !l.starts_with("stack backtrace")
                    && !l.starts_with("==")
                    && !l.trim_start().starts_with("0:")
            })
            .take(12)
            .chain(lines.iter().filter(|l| l.contains("Test unit written")))
            .copied()
            .collect(),
        None => lines.iter().rev().take(25).rev().copied().collect(),
    };
    shown.join("\n")
}

/// Reads libFuzzer's output: the last status line (`#N ... cov: C ft: F corp: K/...`), the
/// final stats, and the path of a crashing input.
fn parse(target: &str, log: &str) -> Report {
    let mut r = Report {
        target: target.to_string(),
        ..Report::default()
    };
    let field = |line: &str, name: &str| -> Option<u64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        words.next()?.split('/').next()?.parse().ok()
    };
    for line in log.lines() {
        if line.starts_with('#') {
            if let Some(n) = line
                .trim_start_matches('#')
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
            {
                r.runs = n;
            }
            r.coverage = field(line, "cov:").unwrap_or(r.coverage);
            r.features = field(line, "ft:").unwrap_or(r.features);
            r.corpus = field(line, "corp:").unwrap_or(r.corpus);
        } else if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            r.runs = v.trim().parse().unwrap_or(r.runs);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            r.exec_per_sec = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("stat::new_units_added:") {
            r.new_units = v.trim().parse().unwrap_or(0);
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            r.artifact = Some(path.trim().to_string());
        }
    }
    r
}

fn print_reports(reports: &[Report]) {
    println!(
        "{:<18} {:>10} {:>8} {:>6} {:>7} {:>7} {:>5} {:>6}  result",
        "target", "runs", "exec/s", "cov", "ft", "corpus", "new", "secs"
    );
    for r in reports {
        println!(
            "{:<18} {:>10} {:>8} {:>6} {:>7} {:>7} {:>5} {:>6.1}  {}",
            r.target,
            r.runs,
            r.exec_per_sec,
            r.coverage,
            r.features,
            r.corpus,
            r.new_units,
            r.seconds,
            if r.artifact.is_some() { "CRASH" } else { "ok" }
        );
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_status_stats_and_crash_path() {
        let log = "INFO: Seed: 1\n\
                   #2\tINITED cov: 100 ft: 120 corp: 5/700b exec/s: 0 rss: 30Mb\n\
                   #65536\tpulse  cov: 150 ft: 300 corp: 40/2Kb lim: 4096 exec/s: 21845 rss: 40Mb\n\
                   #91000\tDONE   cov: 152 ft: 310 corp: 42/2Kb lim: 4096 exec/s: 30333 rss: 40Mb\n\
                   ==1== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='/w/fuzz/artifacts/frames/'; Test unit written to /w/fuzz/artifacts/frames/crash-abc\n\
                   stat::number_of_executed_units: 91234\n\
                   stat::average_exec_per_sec:     30411\n\
                   stat::new_units_added:          37\n";
        let r = parse("frames", log);
        assert_eq!(
            (
                r.runs,
                r.exec_per_sec,
                r.coverage,
                r.features,
                r.corpus,
                r.new_units
            ),
            (91234, 30411, 152, 310, 42, 37)
        );
        assert_eq!(
            r.artifact.as_deref(),
            Some("/w/fuzz/artifacts/frames/crash-abc")
        );
        assert!(parse("frames", "#5\tDONE cov: 1 ft: 1 corp: 1/1b\n")
            .artifact
            .is_none());
    }

    #[test]
    fn every_target_of_the_manifest_is_found() {
        let names = targets(&util::root().join("fuzz/Cargo.toml")).unwrap();
        for t in ["frames", "handshake", "dest_control", "state_json"] {
            assert!(names.iter().any(|n| n == t), "{t} in {names:?}");
        }
        for n in &names {
            assert!(
                util::root().join("fuzz/seeds").join(n).is_dir(),
                "no seeds for {n}"
            );
        }
    }
}
