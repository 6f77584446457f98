//! Progress on stderr while pages stream: updated in place on a terminal, one line per few
//! seconds otherwise; silent with `--quiet`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Prints a phase line ("haul: freeze and dump …").
pub fn phase(quiet: bool, text: &str) {
    if !quiet {
        let _ = writeln!(std::io::stderr().lock(), "haul: {text}");
    }
}

impl Progress {
    /// Reports the bytes `bytes.pages_out` grows by from now on (a live counter), until stopped.
    /// `expected`: the resident memory of the tasks (an estimate of the pages to send), 0 if
    /// unknown.
    pub fn start(
        quiet: bool,
        label: &'static str,
        bytes: Arc<crate::transfer::mux::Counters>,
        expected: u64,
    ) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if quiet {
            return Progress { stop, handle: None };
        }
        let tty = std::io::stderr().is_terminal();
        let s = stop.clone();
        // Pre-copy iterations sent pages before: count from here.
        let base = load(&bytes.pages_out);
        let handle = std::thread::Builder::new()
            .name("haul-progress".into())
            .spawn(move || {
                let start = Instant::now();
                let tick = if tty {
                    Duration::from_millis(200)
                } else {
                    Duration::from_secs(2)
                };
                let mut printed = false;
                let mut last = 0;
                while !s.load(Ordering::Relaxed) {
                    std::thread::park_timeout(tick);
                    let b = load(&bytes.pages_out).saturating_sub(base);
                    if b == last {
                        continue;
                    }
                    last = b;
                    let secs = start.elapsed().as_secs_f64().max(0.001);
                    let mib = b as f64 / 1048576.0;
                    let total = if expected > 0 {
                        format!(" of ~{:.0}", expected as f64 / 1048576.0)
                    } else {
                        String::new()
                    };
                    let line = format!(
                        "haul: {label}: {mib:.1}{total} MiB at {:.0} MiB/s",
                        mib / secs
                    );
                    let mut err = std::io::stderr().lock();
                    if tty {
                        let _ = write!(err, "\r{line}\x1b[K");
                    } else {
                        let _ = writeln!(err, "{line}");
                    }
                    printed = true;
                }
                if tty && printed {
                    let _ = writeln!(std::io::stderr().lock());
                }
            })
            .ok();
        Progress { stop, handle }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Resident memory of `pids` (VmRSS from /proc/PID/status, bounded reads): what CRIU will
/// roughly send as pages.
pub fn resident_bytes(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            let bytes = crate::util::read_bounded(
                std::path::Path::new(&format!("/proc/{p}/status")),
                16 * 1024,
            )
            .ok()?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .sum()
}

/// The pids of the tasks in a cgroup directory (`cgroup.procs`), or just `root`.
pub fn tasks(root: i32, cgroup: Option<&std::path::Path>) -> Vec<i32> {
    let from_cgroup = cgroup.and_then(|d| {
        let bytes = crate::util::read_bounded(&d.join("cgroup.procs"), 1 << 20).ok()?;
        Some(
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>(),
        )
    });
    match from_cgroup {
        Some(v) if !v.is_empty() => v,
        _ => vec![root],
    }
}
