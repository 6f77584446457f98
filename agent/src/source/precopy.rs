//! Pre-copy (`--pre-dump`): while the workload keeps running, pre-dump iterations send its
//! memory to the destination, each only what changed since the one before (CRIU's memory
//! tracking, the kernel's soft-dirty bits), so that the final dump, with the tasks frozen, sends
//! little. P.Haul's stop rules (the planner below) decide when to stop iterating.
//!
//! Images directories, named alike on both hosts: iteration k writes into `<work>/pre-k` with
//! parent `../pre-(k-1)`; the final DUMP writes into `<work>` itself with parent `pre-N`. CRIU
//! resolves `parent_img` relative to the images directory and creates the `parent` link there
//! itself (criu/image.c, `open_image_dir`); on the destination the page server of each dump
//! does the same from the `parent_img` haul gives it, so a restore from `<work>` finds the chain.
//!
//! One `criu swrk` answers FEATURE_CHECK, the PRE_DUMPs and the DUMP: after a PRE_DUMP it
//! accepts only PRE_DUMP or DUMP (criu/cr-service.c, `pre_dump_loop`). Each PRE_DUMP runs in a
//! child of swrk, which keeps `ps.fd` open: one page stream carries every dump, and each dump
//! ends its page-server session with a close command that the page server answers before the
//! dump reports success (criu/page-xfer.c, `disconnect_from_page_server`).

use super::connect::wire_to_error;
use super::progress::{phase, Progress};
use crate::criu::{stats, Swrk};
use crate::error::{Context, Error, Kind, Result};
use crate::limits::{IDLE_TIMEOUT, PRE_DUMP_ITERATIONS_MAX};
use crate::transfer::mux::{load, Counters};
use crate::transfer::Conn;
use haul_proto::criu::{CriuOpts, CriuReqType};
use haul_proto::haul::{control::Msg, Abort, PageServerStart, Prepare, Welcome};
use serde::Serialize;
use std::fmt;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// P.Haul's limit on iterations (phaul/iters.py, `MAX_ITERS_COUNT`): a workload that has not
/// converged after 8 rounds dirties memory about as fast as it is copied, and more rounds only
/// delay the freeze.
pub const DEFAULT_MAX_ITERATIONS: u32 = 8;

/// An iteration that wrote at most this many pages (256 KiB of 4 KiB pages) leaves so little
/// that the final dump sends the rest in a few milliseconds; another round (CRIU's start, a brief
/// freeze to collect the pages) would cost more than it saves (P.Haul's `MIN_ITER_PAGES_COUNT`).
pub const DEFAULT_MIN_PAGES: u64 = 64;

/// An iteration that wrote more than this many percent more pages than the one before shows
/// memory changing faster than it is copied: more rounds would not shrink the final dump
/// (P.Haul's `MAX_ITER_GROW_RATE`).
pub const DEFAULT_MAX_GROWTH_PERCENT: u32 = 10;

/// `iteration` of a page-server request for the final dump (pre-dumps count from 1).
pub const FINAL: u32 = 0;

/// CRIU's log of each dump, in that dump's images directory (the job's DUMP options name it).
const DUMP_LOG: &str = "dump.log";

/// Images directory of pre-dump iteration `k`, relative to the migration's work directory.
pub fn dir_name(k: u32) -> String {
    format!("pre-{k}")
}

/// `--pre-dump`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Pre-copy when this host's CRIU reports memory tracking and the destination serves it;
    /// else one dump, with a line in the log saying why.
    #[default]
    Auto,
    /// Pre-copy or fail before anything is frozen.
    Always,
    /// One dump, as without pre-copy.
    Never,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Always => "always",
            Mode::Never => "never",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "always" => Ok(Mode::Always),
            "never" => Ok(Mode::Never),
            other => Err(format!("{other:?}: use auto, always or never")),
        }
    }
}

/// The stop rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// At most this many iterations (1 ..= `PRE_DUMP_ITERATIONS_MAX`).
    pub max_iterations: u32,
    /// Stop after an iteration that wrote at most this many pages.
    pub min_pages: u64,
    /// Stop after an iteration that wrote more than this many percent more pages than the one
    /// before.
    pub max_growth_percent: u32,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            max_iterations: DEFAULT_MAX_ITERATIONS,
            min_pages: DEFAULT_MIN_PAGES,
            max_growth_percent: DEFAULT_MAX_GROWTH_PERCENT,
        }
    }
}

/// Everything `--pre-dump*` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub rules: Rules,
}

impl Settings {
    /// From the command line; the iteration count must be 1 ..= `PRE_DUMP_ITERATIONS_MAX`.
    pub fn from_flags(
        mode: Mode,
        max_iterations: u32,
        min_pages: u64,
        max_growth_percent: u32,
    ) -> Result<Settings> {
        if max_iterations == 0 || max_iterations > PRE_DUMP_ITERATIONS_MAX {
            return Err(Error::usage(format!(
                "--pre-dump-max-iterations {max_iterations}: use 1 to {PRE_DUMP_ITERATIONS_MAX} \
                 (--pre-dump never for none)"
            )));
        }
        Ok(Settings {
            mode,
            rules: Rules {
                max_iterations,
                min_pages,
                max_growth_percent,
            },
        })
    }
}

/// Why iterating stopped, or why no iteration ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// `--pre-dump never`.
    Disabled,
    /// This host's CRIU cannot track memory (or could not say): why.
    NoMemoryTracking(String),
    /// The destination's haul does not serve pre-copy.
    DestinationCannot,
    /// The last iteration wrote at most `min` pages.
    FewPages { pages: u64, min: u64 },
    /// The last iteration wrote more than `max_percent` percent more pages than the one before.
    Growing {
        pages: u64,
        previous: u64,
        max_percent: u32,
    },
    /// `max` iterations ran.
    MaxIterations { max: u32 },
    /// CRIU left no readable statistics after `iteration`: the planner has nothing to go on.
    NoStats { iteration: u32 },
}

impl Stop {
    /// A stable word for programs (`--stats-json`).
    pub fn token(&self) -> &'static str {
        match self {
            Stop::Disabled => "disabled",
            Stop::NoMemoryTracking(_) => "no-memory-tracking",
            Stop::DestinationCannot => "destination-unsupported",
            Stop::FewPages { .. } => "few-pages",
            Stop::Growing { .. } => "growing",
            Stop::MaxIterations { .. } => "max-iterations",
            Stop::NoStats { .. } => "no-stats",
        }
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Disabled => write!(f, "--pre-dump never"),
            Stop::NoMemoryTracking(why) => {
                write!(f, "memory tracking is unavailable on this host: {why}")
            }
            Stop::DestinationCannot => write!(
                f,
                "the destination's haul does not serve pre-copy (an older version)"
            ),
            Stop::FewPages { pages, min } => write!(
                f,
                "the last iteration wrote {pages} pages, at most {min}: the final dump sends the rest"
            ),
            Stop::Growing {
                pages,
                previous,
                max_percent,
            } => write!(
                f,
                "the last iteration wrote {pages} pages against {previous} before, more than \
                 {max_percent}% more: memory changes faster than it is copied"
            ),
            Stop::MaxIterations { max } => write!(f, "{max} iterations, the most allowed"),
            Stop::NoStats { iteration } => write!(
                f,
                "CRIU left no readable stats-dump after pre-dump {iteration}"
            ),
        }
    }
}

/// What the planner says after an iteration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Stop(Stop),
}

/// P.Haul's stop rules as a state machine over the pages each iteration wrote. The first
/// iteration always runs (there is nothing to decide on before it); after each one, in this
/// order: at most `min_pages` written → stop; more than `max_growth_percent` over the previous
/// iteration → stop; `max_iterations` done → stop; else another iteration.
#[derive(Debug, Clone)]
pub struct Planner {
    rules: Rules,
    done: u32,
    previous: Option<u64>,
}

impl Planner {
    pub fn new(rules: Rules) -> Planner {
        Planner {
            rules,
            done: 0,
            previous: None,
        }
    }

    /// Iterations recorded so far.
    pub fn done(&self) -> u32 {
        self.done
    }

    /// Records the pages the iteration just run wrote and says whether another one runs.
    pub fn record(&mut self, pages_written: u64) -> Decision {
        self.done = self.done.saturating_add(1);
        let previous = self.previous.replace(pages_written);
        if pages_written <= self.rules.min_pages {
            return Decision::Stop(Stop::FewPages {
                pages: pages_written,
                min: self.rules.min_pages,
            });
        }
        if let Some(previous) = previous {
            if grew_too_much(previous, pages_written, self.rules.max_growth_percent) {
                return Decision::Stop(Stop::Growing {
                    pages: pages_written,
                    previous,
                    max_percent: self.rules.max_growth_percent,
                });
            }
        }
        if self.done >= self.rules.max_iterations {
            return Decision::Stop(Stop::MaxIterations {
                max: self.rules.max_iterations,
            });
        }
        Decision::Continue
    }
}

/// `pages` is more than `max_percent` percent above `previous` (in integers: no rounding, no
/// overflow, and any growth from 0 counts).
fn grew_too_much(previous: u64, pages: u64, max_percent: u32) -> bool {
    u128::from(pages) * 100 > u128::from(previous) * (100 + u128::from(max_percent))
}

/// Whether pre-copy runs; decided before anything is frozen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Run(Rules),
    Skip(Stop),
}

impl Choice {
    pub fn runs(&self) -> bool {
        matches!(self, Choice::Run(_))
    }

    /// The Prepare to send: it tells the destination whether page servers start per dump.
    pub fn prepare(&self, mut p: Prepare) -> Prepare {
        p.pre_copy = self.runs();
        p
    }
}

/// Decides from the mode, this host's memory tracking (asked only when the mode is not
/// `never`: `Ok(false)` = not available, `Err` = the check failed) and whether the destination
/// serves pre-copy. `always` without either is an error that says so; nothing is frozen yet.
pub fn choose(
    settings: &Settings,
    mem_track: impl FnOnce() -> std::result::Result<bool, String>,
    destination: bool,
) -> Result<Choice> {
    if settings.mode == Mode::Never {
        return Ok(Choice::Skip(Stop::Disabled));
    }
    let here = match mem_track() {
        Ok(true) => None,
        Ok(false) => Some(
            "CRIU's feature check says the kernel has no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)"
                .to_string(),
        ),
        Err(e) => Some(format!("CRIU's feature check failed: {e}")),
    };
    let stop = match (here, destination) {
        (Some(why), _) => Stop::NoMemoryTracking(why),
        (None, false) => Stop::DestinationCannot,
        (None, true) => return Ok(Choice::Run(settings.rules)),
    };
    if settings.mode == Mode::Auto {
        return Ok(Choice::Skip(stop));
    }
    let kind = match stop {
        Stop::DestinationCannot => Kind::Refused,
        _ => Kind::Setup,
    };
    Err(Error::new(
        kind,
        format!(
            "--pre-dump always: {stop}; nothing was frozen and the workload keeps running \
             here; use --pre-dump auto (one dump when pre-copy is impossible) or never"
        ),
    ))
}

/// `choose` with this host's CRIU (FEATURE_CHECK on `swrk`) and the destination's Welcome. An
/// `auto` that falls back says why in one line; an `always` that cannot pre-copy tells the
/// destination (Abort) before it returns the error.
pub fn decide(
    settings: &Settings,
    swrk: &mut Swrk,
    welcome: &Welcome,
    conn: &Conn,
) -> Result<Choice> {
    let choice = choose(
        settings,
        || {
            swrk.features()
                .map(|f| f.mem_track.unwrap_or(false))
                .map_err(|e| e.to_string())
        },
        welcome.pre_copy,
    );
    match &choice {
        Ok(Choice::Skip(stop)) if settings.mode == Mode::Auto => {
            log::info!("pre-copy skipped: {stop}; dumping once")
        }
        Ok(Choice::Run(r)) => log::info!(
            "pre-copy: at most {} iterations, stopping at {} pages or {}% growth",
            r.max_iterations,
            r.min_pages,
            r.max_growth_percent
        ),
        Ok(Choice::Skip(_)) => {}
        Err(e) => {
            let _ = conn.send(Msg::Abort(Abort {
                stage: "pre-copy".into(),
                reason: e.to_string(),
            }));
        }
    }
    choice
}

/// The destination's part in pre-copy as the iterations need it (a trait, so the request chain
/// can be tested against a scripted CRIU without a destination).
pub trait Destination {
    /// Asks for a page server for `iteration` (`FINAL` for the final dump) and waits until it
    /// runs.
    fn page_server(&mut self, iteration: u32) -> Result<()>;
    /// Page-protocol bytes sent to the destination so far (`pages_out`).
    fn counters(&self) -> Arc<Counters>;
}

/// The destination at the other end of the connection.
pub struct Remote<'a>(pub &'a Conn);

impl Destination for Remote<'_> {
    fn page_server(&mut self, iteration: u32) -> Result<()> {
        let rolled_back = |e: Error| e.with_kind(Kind::RolledBack);
        self.0
            .send(Msg::PageServerStart(PageServerStart { iteration }))
            .map_err(|e| rolled_back(wire_to_error(e, "asking for a page server")))?;
        match self.0.recv_control(IDLE_TIMEOUT, "page server start") {
            Ok(Msg::PageServerReady(r)) if r.iteration == iteration => Ok(()),
            Ok(Msg::PageServerReady(r)) => Err(Error::new(
                Kind::RolledBack,
                format!(
                    "the destination started a page server for iteration {}, asked for {iteration}",
                    r.iteration
                ),
            )),
            Ok(Msg::Abort(a)) => Err(Error::new(
                Kind::RolledBack,
                format!(
                    "the destination could not start a page server ({}): {}",
                    crate::util::printable(&a.stage),
                    crate::util::printable(&a.reason)
                ),
            )),
            Ok(other) => Err(Error::new(
                Kind::RolledBack,
                format!(
                    "unexpected {} instead of PageServerReady",
                    crate::dest::session::msg_name(&other)
                ),
            )),
            Err(e) => Err(rolled_back(wire_to_error(
                e,
                "waiting for the destination's page server",
            ))),
        }
    }

    fn counters(&self) -> Arc<Counters> {
        self.0.counters.clone()
    }
}

/// One pre-dump iteration's numbers (summary and `--stats-json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Iteration {
    /// Pages CRIU wrote (its `stats-dump` of the iteration; 0 when it left none).
    pub pages_written: u64,
    /// Pages it looked at: every page mapped by the tasks.
    pub pages_scanned: u64,
    /// Page-protocol bytes sent to the destination during the iteration.
    pub bytes: u64,
    /// Wall time of the PRE_DUMP request.
    pub ms: u64,
    /// How long CRIU held the tasks frozen to collect the pages, microseconds.
    pub frozen_us: u32,
}

/// What pre-copy did.
#[derive(Debug, Default)]
pub struct Report {
    /// Iterations that ran, in order (`pre-1` first).
    pub iterations: Vec<Iteration>,
    /// Why iterating stopped or why none ran (`None` only before a decision).
    pub stop: Option<Stop>,
    /// `stop` as a sentence.
    pub detail: String,
}

impl Report {
    fn new(iterations: Vec<Iteration>, stop: Stop) -> Report {
        Report {
            iterations,
            detail: stop.to_string(),
            stop: Some(stop),
        }
    }

    /// Page-protocol bytes the iterations sent.
    pub fn page_bytes(&self) -> u64 {
        self.iterations.iter().map(|i| i.bytes).sum()
    }

    /// The final DUMP's options: after pre-dumps, the last one is its parent and memory
    /// tracking stays on, so CRIU sends only the pages changed since (mem.c, `page_in_parent`,
    /// needs both). Unchanged when no iteration ran.
    pub fn final_opts(&self, mut o: CriuOpts) -> CriuOpts {
        let Ok(last) = u32::try_from(self.iterations.len()) else {
            return o;
        };
        if last > 0 {
            o.track_mem = Some(true);
            o.parent_img = Some(dir_name(last));
        }
        o
    }

    /// The summary's view.
    pub fn summary(&self, mode: Mode) -> crate::summary::PreDump<'_> {
        crate::summary::PreDump {
            mode: mode.as_str(),
            stop: self.stop.as_ref().map(Stop::token).unwrap_or(""),
            detail: &self.detail,
            iterations: &self.iterations,
        }
    }
}

/// A PRE_DUMP's options: the job's DUMP options with memory tracking, the previous iteration as
/// parent (relative to this iteration's images directory), no notifications (a pre-dump sends
/// none and leaves the tasks running) and no external mount map (as runc: only a full dump
/// records mounts).
pub fn pre_dump_opts(mut o: CriuOpts, iteration: u32) -> CriuOpts {
    o.track_mem = Some(true);
    o.parent_img = (iteration > 1).then(|| format!("../{}", dir_name(iteration - 1)));
    o.notify_scripts = None;
    o.ext_mnt.clear();
    o
}

/// What the iterations act on.
pub struct Chain<'a> {
    pub swrk: &'a mut Swrk,
    pub dest: &'a mut dyn Destination,
    /// The migration's work directory: the final dump's images directory, iterations below it.
    pub work: &'a Path,
    /// `ps.fd`: the number of CRIU's end of the page socket, in CRIU.
    pub ps_fd: i32,
    /// The job's DUMP options for an images directory descriptor and `ps.fd`.
    pub dump_opts: &'a dyn Fn(i32, i32) -> CriuOpts,
    pub quiet: bool,
}

/// Runs the iterations `choice` asks for, then asks the destination for the final dump's page
/// server. A failure leaves the tasks running (a pre-dump freezes them only while it collects
/// their pages): the caller rolls back as for a failed dump, after which CRIU's log of the
/// failed iteration is the work directory's `dump.log`.
pub fn iterate(choice: &Choice, mut c: Chain<'_>) -> Result<Report> {
    let rules = match choice {
        Choice::Run(r) => *r,
        Choice::Skip(stop) => return Ok(Report::new(Vec::new(), stop.clone())),
    };
    let mut planner = Planner::new(rules);
    let mut iterations = Vec::new();
    let stop = loop {
        let k = planner.done().saturating_add(1);
        let (it, stats) = pre_dump(&mut c, k)?;
        log::info!(
            "pre-dump {k}: {} pages written ({:.1} MiB sent) in {} ms, tasks frozen {} ms",
            it.pages_written,
            it.bytes as f64 / 1048576.0,
            it.ms,
            it.frozen_us / 1000
        );
        iterations.push(it);
        if !stats {
            break Stop::NoStats { iteration: k };
        }
        if let Decision::Stop(s) = planner.record(it.pages_written) {
            break s;
        }
    };
    let report = Report::new(iterations, stop);
    log::info!(
        "pre-copy: {} iterations, {:.1} MiB; stopped: {}",
        report.iterations.len(),
        report.page_bytes() as f64 / 1048576.0,
        report.detail
    );
    c.dest.page_server(FINAL)?;
    Ok(report)
}

/// Pre-dump iteration `k` into `<work>/pre-k`; false with the numbers when CRIU left no stats.
fn pre_dump(c: &mut Chain<'_>, k: u32) -> Result<(Iteration, bool)> {
    let failed = |what: String| move |e: Error| e.with_kind(Kind::RolledBack).context(what);
    let name = dir_name(k);
    let dir = c.work.join(&name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .ctx(Kind::RolledBack, format!("creating {}", dir.display()))?;
    let fd = rustix::fs::open(
        &dir,
        rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
    )
    .ctx(Kind::RolledBack, format!("opening {}", dir.display()))?;
    c.dest
        .page_server(k)
        .map_err(failed(format!("pre-dump {k}")))?;
    phase(
        c.quiet,
        &format!("pre-copy {k}: copying memory while the workload runs"),
    );
    let opts = pre_dump_opts((c.dump_opts)(fd.as_raw_fd(), c.ps_fd), k);
    c.swrk.set_log(dir.join(DUMP_LOG));
    let counters = c.dest.counters();
    let before = load(&counters.pages_out);
    let started = Instant::now();
    let progress = Progress::start(c.quiet, "pre-copy pages", counters.clone(), 0);
    let answer = c.swrk.call(&Swrk::request(CriuReqType::PreDump, opts));
    progress.stop();
    // CRIU opened the directory through /proc/<haul>/fd/N; it has answered, so it may go.
    drop(fd);
    if let Err(e) = answer {
        // The rollback keeps the work directory's dump.log: make it this iteration's.
        let _ = std::fs::copy(dir.join(DUMP_LOG), c.work.join(DUMP_LOG));
        return Err(Error::new(
            Kind::RolledBack,
            format!("pre-dump {k} failed: {e}"),
        ));
    }
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let bytes = load(&counters.pages_out).saturating_sub(before);
    let st = stats::dump(&dir);
    let it = Iteration {
        pages_written: st.as_ref().map(|s| s.pages_written).unwrap_or(0),
        pages_scanned: st.as_ref().map(|s| s.pages_scanned).unwrap_or(0),
        bytes,
        ms,
        frozen_us: st.as_ref().map(|s| s.frozen_time).unwrap_or(0),
    };
    Ok((it, st.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(max_iterations: u32, min_pages: u64, max_growth_percent: u32) -> Rules {
        Rules {
            max_iterations,
            min_pages,
            max_growth_percent,
        }
    }

    /// Feeds `pages` to a planner until it stops; returns how many iterations ran and why.
    fn run(r: Rules, pages: &[u64]) -> (u32, Stop) {
        let mut p = Planner::new(r);
        for &n in pages {
            if let Decision::Stop(s) = p.record(n) {
                return (p.done(), s);
            }
        }
        panic!("the planner did not stop within {pages:?}");
    }

    #[test]
    fn an_iteration_of_at_most_min_pages_stops() {
        let r = Rules::default();
        assert_eq!(run(r, &[64]), (1, Stop::FewPages { pages: 64, min: 64 }));
        assert_eq!(
            run(r, &[5000, 2000, 65, 64]),
            (4, Stop::FewPages { pages: 64, min: 64 })
        );
        // The first iteration always runs, even if it finds nothing: the rule decides after it.
        assert_eq!(run(r, &[0]), (1, Stop::FewPages { pages: 0, min: 64 }));
    }

    #[test]
    fn growth_over_the_limit_stops_and_at_the_limit_continues() {
        let r = Rules::default();
        // Exactly 10% more continues; one page more stops.
        let mut p = Planner::new(r);
        assert_eq!(p.record(1000), Decision::Continue);
        assert_eq!(p.record(1100), Decision::Continue);
        assert_eq!(
            p.record(1211),
            Decision::Stop(Stop::Growing {
                pages: 1211,
                previous: 1100,
                max_percent: 10
            })
        );
        // Shrinking never counts as growth.
        assert_eq!(
            run(r, &[9000, 100, 70, 64]).1,
            Stop::FewPages { pages: 64, min: 64 }
        );
    }

    #[test]
    fn max_iterations_stops_after_that_many() {
        let (n, s) = run(rules(3, 64, 10), &[1000, 1000, 1000, 1000]);
        assert_eq!((n, s), (3, Stop::MaxIterations { max: 3 }));
        let (n, s) = run(rules(1, 64, 10), &[100_000]);
        assert_eq!((n, s), (1, Stop::MaxIterations { max: 1 }));
        // The default: P.Haul's 8.
        let (n, _) = run(Rules::default(), &[500; 20]);
        assert_eq!(n, DEFAULT_MAX_ITERATIONS);
    }

    #[test]
    fn rules_apply_in_p_hauls_order() {
        // Few pages wins over growth, growth over the iteration count.
        let r = rules(2, 64, 10);
        assert_eq!(run(r, &[10, 60]).1, Stop::FewPages { pages: 10, min: 64 });
        assert_eq!(
            run(r, &[100, 500]).1,
            Stop::Growing {
                pages: 500,
                previous: 100,
                max_percent: 10
            }
        );
        assert_eq!(run(r, &[100, 100]).1, Stop::MaxIterations { max: 2 });
    }

    #[test]
    fn changed_rules_change_the_decisions() {
        // --pre-dump-min-pages 0: only an empty iteration is small; growth from zero counts.
        assert_eq!(
            run(rules(8, 0, 10), &[5, 3, 0]).1,
            Stop::FewPages { pages: 0, min: 0 }
        );
        // --pre-dump-max-growth 100: doubling is allowed, more is not.
        assert_eq!(
            run(rules(8, 64, 100), &[100, 200, 401]),
            (
                3,
                Stop::Growing {
                    pages: 401,
                    previous: 200,
                    max_percent: 100
                }
            )
        );
    }

    #[test]
    fn growth_arithmetic_does_not_overflow_or_round() {
        assert!(!grew_too_much(u64::MAX, u64::MAX, u32::MAX));
        assert!(grew_too_much(0, 1, u32::MAX));
        assert!(!grew_too_much(0, 0, 0));
        assert!(grew_too_much(3, 4, 33)); // 33.3% > 33%
        assert!(!grew_too_much(3, 4, 34));
    }

    fn settings(mode: Mode) -> Settings {
        Settings {
            mode,
            rules: Rules::default(),
        }
    }

    #[test]
    fn never_does_not_even_ask_criu() {
        let c = choose(
            &settings(Mode::Never),
            || panic!("FEATURE_CHECK asked"),
            true,
        )
        .unwrap();
        assert_eq!(c, Choice::Skip(Stop::Disabled));
        assert!(!c.prepare(Prepare::default()).pre_copy);
    }

    #[test]
    fn auto_falls_back_and_says_why() {
        let c = choose(&settings(Mode::Auto), || Ok(false), true).unwrap();
        let Choice::Skip(stop) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(stop.token(), "no-memory-tracking");
        assert!(stop.to_string().contains("soft-dirty"), "{stop}");
        let c = choose(&settings(Mode::Auto), || Err("criu died".into()), true).unwrap();
        assert!(
            matches!(&c, Choice::Skip(Stop::NoMemoryTracking(w)) if w.contains("criu died")),
            "{c:?}"
        );
        let c = choose(&settings(Mode::Auto), || Ok(true), false).unwrap();
        assert_eq!(c, Choice::Skip(Stop::DestinationCannot));
        let c = choose(&settings(Mode::Auto), || Ok(true), true).unwrap();
        assert_eq!(c, Choice::Run(Rules::default()));
        assert!(c.prepare(Prepare::default()).pre_copy);
    }

    #[test]
    fn always_fails_with_a_reason_when_pre_copy_is_impossible() {
        let e = choose(&settings(Mode::Always), || Ok(false), true).unwrap_err();
        assert_eq!(e.kind, Kind::Setup);
        for needed in ["--pre-dump always", "memory tracking", "nothing was frozen"] {
            assert!(e.message.contains(needed), "{e}");
        }
        let e = choose(&settings(Mode::Always), || Ok(true), false).unwrap_err();
        assert_eq!(e.kind, Kind::Refused);
        assert!(e.message.contains("does not serve pre-copy"), "{e}");
        let c = choose(&settings(Mode::Always), || Ok(true), true).unwrap();
        assert!(c.runs());
    }

    #[test]
    fn flags_are_checked() {
        assert!(Settings::from_flags(Mode::Auto, 0, 64, 10).is_err());
        let e = Settings::from_flags(Mode::Auto, PRE_DUMP_ITERATIONS_MAX + 1, 64, 10).unwrap_err();
        assert_eq!(e.kind, Kind::Usage);
        let s = Settings::from_flags(Mode::Always, PRE_DUMP_ITERATIONS_MAX, 0, 0).unwrap();
        assert_eq!(s.rules.max_iterations, PRE_DUMP_ITERATIONS_MAX);
        assert_eq!("never".parse::<Mode>(), Ok(Mode::Never));
        assert!("sometimes".parse::<Mode>().is_err());
        assert_eq!(Settings::default().mode, Mode::Auto);
    }

    /// The request chain against a scripted CRIU (criu/fake.rs), with a recorder standing in
    /// for the destination. Both write into one journal, so the order across them shows.
    mod chain {
        use super::super::*;
        use crate::criu::fake::{FakeCriu, Step};
        use haul_proto::criu::{CriuResp, DumpStatsEntry, StatsEntry};
        use std::path::PathBuf;
        use std::sync::atomic::Ordering;
        use std::sync::Mutex;

        /// `ps.fd` as CRIU would number it (the scripted CRIU only checks it is passed on).
        const PS_FD: i32 = 9;
        const PID: i32 = 4242;

        type Journal = Arc<Mutex<Vec<String>>>;

        struct Recorder {
            journal: Journal,
            counters: Arc<Counters>,
        }

        impl Destination for Recorder {
            fn page_server(&mut self, iteration: u32) -> Result<()> {
                self.journal
                    .lock()
                    .unwrap()
                    .push(format!("page server {iteration}"));
                Ok(())
            }

            fn counters(&self) -> Arc<Counters> {
                self.counters.clone()
            }
        }

        /// A fresh work directory, removed when dropped.
        struct Work(PathBuf);

        impl Work {
            fn new(name: &str) -> Work {
                let p = std::env::temp_dir()
                    .join(format!("haul-precopy-{name}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Work(p)
            }
        }

        impl Drop for Work {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }

        fn ok(kind: CriuReqType) -> CriuResp {
            CriuResp {
                r#type: kind as i32,
                success: true,
                ..Default::default()
            }
        }

        /// The images directory a request names, as CRIU opens it (through our /proc fd).
        fn images_dir(o: &CriuOpts) -> std::result::Result<PathBuf, String> {
            std::fs::read_link(format!("/proc/self/fd/{}", o.images_dir_fd))
                .map_err(|e| format!("images_dir_fd {}: {e}", o.images_dir_fd))
        }

        /// PRE_DUMP `k`: checks the request as the brief of the chain says, then does what CRIU
        /// does that haul reads back: `stats-dump` with `pages` written (unless `stats` is
        /// false) and that many pages through the page socket.
        fn pre_dump(
            k: u32,
            pages: u64,
            stats: bool,
            work: &Path,
            journal: &Journal,
            counters: &Arc<Counters>,
        ) -> Step {
            let (work, journal, counters) = (work.to_path_buf(), journal.clone(), counters.clone());
            Step::expect_that(CriuReqType::PreDump, move |r| {
                journal.lock().unwrap().push(format!("PRE_DUMP {k}"));
                let o = r.opts.as_ref().ok_or("no options")?;
                if r.keep_open.is_some() {
                    return Err("keep_open: swrk would exit without answering".into());
                }
                if o.track_mem != Some(true) {
                    return Err(format!("track_mem is {:?}", o.track_mem));
                }
                if o.ps.as_ref().and_then(|p| p.fd) != Some(PS_FD) || o.pid != Some(PID) {
                    return Err(format!("ps {:?}, pid {:?}", o.ps, o.pid));
                }
                if o.notify_scripts.is_some() {
                    return Err("notify_scripts on a pre-dump".into());
                }
                let dir = images_dir(o)?;
                if dir != work.join(format!("pre-{k}")) {
                    return Err(format!("images in {}", dir.display()));
                }
                let want = (k > 1).then(|| format!("../pre-{}", k - 1));
                if o.parent_img != want {
                    return Err(format!("parent_img {:?}, want {want:?}", o.parent_img));
                }
                // CRIU checks the parent relative to the images directory.
                if let Some(p) = &o.parent_img {
                    if !dir.join(p).is_dir() {
                        return Err(format!("{p} does not resolve from {}", dir.display()));
                    }
                }
                if stats {
                    let entry = StatsEntry {
                        dump: Some(DumpStatsEntry {
                            pages_written: pages,
                            pages_scanned: 5000,
                            frozen_time: 1500,
                            ..Default::default()
                        }),
                        restore: None,
                    };
                    std::fs::write(
                        dir.join("stats-dump"),
                        crate::criu::builtin_fake::stats_file(&entry),
                    )
                    .map_err(|e| e.to_string())?;
                }
                counters
                    .pages_out
                    .fetch_add(pages * 4096, Ordering::Relaxed);
                Ok(())
            })
        }

        fn dump_opts(dir: i32, ps: i32) -> CriuOpts {
            crate::plan::pid::dump(PID, dir, ps)
        }

        /// Runs `iterate` with `rules` against `script`; returns its result, the journal and
        /// the driver (for a final request).
        fn run_chain(
            rules: Rules,
            work: &Path,
            script: impl FnOnce(&Journal, &Arc<Counters>) -> Vec<Step>,
        ) -> (Result<Report>, Journal, Swrk, FakeCriu) {
            let journal = Journal::default();
            let counters = Arc::new(Counters::default());
            let (mut swrk, fake) = FakeCriu::start(script(&journal, &counters));
            let mut dest = Recorder {
                journal: journal.clone(),
                counters,
            };
            let report = iterate(
                &Choice::Run(rules),
                Chain {
                    swrk: &mut swrk,
                    dest: &mut dest,
                    work,
                    ps_fd: PS_FD,
                    dump_opts: &dump_opts,
                    quiet: true,
                },
            );
            (report, journal, swrk, fake)
        }

        #[test]
        fn pre_dumps_chain_their_parents_and_the_final_dump_tops_the_chain() {
            let work = Work::new("chain");
            let w = work.0.clone();
            let (report, journal, mut swrk, fake) = run_chain(Rules::default(), &work.0, |j, c| {
                let final_check = {
                    let (w, j) = (w.clone(), j.clone());
                    move |r: &haul_proto::criu::CriuReq| {
                        j.lock().unwrap().push("DUMP".into());
                        let o = r.opts.as_ref().ok_or("no options")?;
                        if images_dir(o)? != w {
                            return Err(format!("final images in {:?}", images_dir(o)));
                        }
                        match (o.parent_img.as_deref(), o.track_mem) {
                            (Some("pre-3"), Some(true)) => Ok(()),
                            other => Err(format!("parent_img, track_mem: {other:?}")),
                        }
                    }
                };
                vec![
                    pre_dump(1, 1000, true, &w, j, c),
                    Step::Reply(ok(CriuReqType::PreDump)),
                    pre_dump(2, 500, true, &w, j, c),
                    Step::Reply(ok(CriuReqType::PreDump)),
                    pre_dump(3, 40, true, &w, j, c),
                    Step::Reply(ok(CriuReqType::PreDump)),
                    Step::expect_that(CriuReqType::Dump, final_check),
                    Step::Reply(ok(CriuReqType::Dump)),
                ]
            });
            let report = report.unwrap();
            // What migrate.rs sends next: the job's DUMP with the chain's top as parent.
            let dir = rustix::fs::open(
                &work.0,
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            let opts = report.final_opts(dump_opts(dir.as_raw_fd(), PS_FD));
            swrk.send(&Swrk::request(CriuReqType::Dump, opts)).unwrap();
            assert!(matches!(swrk.next_event(), Ok(crate::criu::Event::Done(_))));
            fake.finish(swrk);

            assert_eq!(
                *journal.lock().unwrap(),
                [
                    "page server 1",
                    "PRE_DUMP 1",
                    "page server 2",
                    "PRE_DUMP 2",
                    "page server 3",
                    "PRE_DUMP 3",
                    "page server 0",
                    "DUMP"
                ]
            );
            assert_eq!(report.stop, Some(Stop::FewPages { pages: 40, min: 64 }));
            let written: Vec<u64> = report.iterations.iter().map(|i| i.pages_written).collect();
            assert_eq!(written, [1000, 500, 40]);
            let bytes: Vec<u64> = report.iterations.iter().map(|i| i.bytes).collect();
            assert_eq!(bytes, [1000 * 4096, 500 * 4096, 40 * 4096]);
            assert!(report.iterations.iter().all(|i| i.frozen_us == 1500));
            assert_eq!(report.page_bytes(), 1540 * 4096);
            for k in 1..=3 {
                assert!(work.0.join(format!("pre-{k}")).is_dir());
            }
        }

        #[test]
        fn growth_stops_the_chain_after_the_iteration_that_grew() {
            let work = Work::new("grow");
            let w = work.0.clone();
            let (report, journal, swrk, fake) = run_chain(Rules::default(), &work.0, |j, c| {
                vec![
                    pre_dump(1, 1000, true, &w, j, c),
                    Step::Reply(ok(CriuReqType::PreDump)),
                    pre_dump(2, 1101, true, &w, j, c),
                    Step::Reply(ok(CriuReqType::PreDump)),
                ]
            });
            fake.finish(swrk);
            let report = report.unwrap();
            assert_eq!(report.stop.as_ref().map(Stop::token), Some("growing"));
            assert_eq!(report.iterations.len(), 2);
            assert_eq!(journal.lock().unwrap().last().unwrap(), "page server 0");
            let f = report.final_opts(CriuOpts::default());
            assert_eq!(f.parent_img.as_deref(), Some("pre-2"));
        }

        #[test]
        fn missing_stats_end_the_chain_but_keep_the_iteration_as_parent() {
            let work = Work::new("nostats");
            let w = work.0.clone();
            let (report, journal, swrk, fake) = run_chain(Rules::default(), &work.0, |j, c| {
                vec![
                    pre_dump(1, 1000, false, &w, j, c),
                    Step::Reply(ok(CriuReqType::PreDump)),
                ]
            });
            fake.finish(swrk);
            let report = report.unwrap();
            assert_eq!(report.stop, Some(Stop::NoStats { iteration: 1 }));
            assert_eq!(report.iterations[0].bytes, 1000 * 4096);
            assert_eq!(
                *journal.lock().unwrap(),
                ["page server 1", "PRE_DUMP 1", "page server 0"]
            );
            let f = report.final_opts(CriuOpts::default());
            assert_eq!(f.parent_img.as_deref(), Some("pre-1"));
        }

        #[test]
        fn a_failed_pre_dump_is_a_rollback_with_its_log_in_the_work_directory() {
            let work = Work::new("fail");
            let w = work.0.clone();
            let (report, journal, swrk, fake) = run_chain(Rules::default(), &work.0, |j, c| {
                let w2 = w.clone();
                vec![
                    pre_dump(1, 1000, true, &w, j, c),
                    Step::Reply(ok(CriuReqType::PreDump)),
                    Step::expect_that(CriuReqType::PreDump, move |_| {
                        std::fs::write(
                            w2.join("pre-2/dump.log"),
                            "(00.001000) Error (criu/cr-dump.c:1700): can't pre-dump\n",
                        )
                        .map_err(|e| e.to_string())
                    }),
                    Step::Reply(CriuResp {
                        success: false,
                        cr_errmsg: Some("pre-dump refused".into()),
                        ..ok(CriuReqType::PreDump)
                    }),
                ]
            });
            fake.finish(swrk);
            let e = report.unwrap_err();
            assert_eq!(e.kind, Kind::RolledBack);
            assert!(e.message.contains("pre-dump 2 failed"), "{e}");
            assert!(e.message.contains("pre-dump refused"), "{e}");
            assert!(
                e.message.contains("can't pre-dump"),
                "the log is quoted: {e}"
            );
            let kept = std::fs::read_to_string(work.0.join(DUMP_LOG)).unwrap();
            assert!(kept.contains("can't pre-dump"), "{kept}");
            // No final page server after a failure.
            assert_eq!(
                *journal.lock().unwrap(),
                ["page server 1", "PRE_DUMP 1", "page server 2"]
            );
        }
    }

    #[test]
    fn the_help_states_the_defaults_and_a_bad_mode_is_a_usage_error() {
        use argh::FromArgs;
        for what in ["pid", "runc"] {
            let early = crate::cli::Cli::from_args(&["haul"], &["migrate", what, "--help"])
                .expect_err("--help exits early");
            let text = early
                .output
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            for needed in [
                format!("(default {DEFAULT_MAX_ITERATIONS}, at most {PRE_DUMP_ITERATIONS_MAX})"),
                format!("at most N pages (default {DEFAULT_MIN_PAGES})"),
                format!("than the one before (default {DEFAULT_MAX_GROWTH_PERCENT})"),
                "auto dumps once, and logs why".to_string(),
            ] {
                assert!(text.contains(&needed), "{what}: {needed:?} not in {text}");
            }
            let early = crate::cli::Cli::from_args(
                &["haul"],
                &[
                    "migrate",
                    what,
                    "1",
                    "--to",
                    "h:1",
                    "--pre-dump",
                    "sometimes",
                ],
            )
            .expect_err("a bad mode");
            assert!(early.status.is_err());
            assert!(
                early.output.contains("use auto, always or never"),
                "{}",
                early.output
            );
        }
    }

    #[test]
    fn iteration_options_chain_parents_and_track_memory() {
        let base = crate::plan::pid::dump(4242, 7, 9);
        let o = pre_dump_opts(base.clone(), 1);
        assert_eq!(o.track_mem, Some(true));
        assert_eq!(o.parent_img, None);
        assert_eq!(o.notify_scripts, None);
        assert_eq!(o.ps.as_ref().and_then(|p| p.fd), Some(9));
        let o = pre_dump_opts(base.clone(), 3);
        assert_eq!(o.parent_img.as_deref(), Some("../pre-2"));
        let report = Report::new(
            vec![Iteration::default(); 3],
            Stop::MaxIterations { max: 3 },
        );
        let f = report.final_opts(base.clone());
        assert_eq!(f.parent_img.as_deref(), Some("pre-3"));
        assert_eq!(f.track_mem, Some(true));
        assert_eq!(
            f.notify_scripts,
            Some(true),
            "the final dump is held at post-dump"
        );
        let none = Report::new(Vec::new(), Stop::Disabled).final_opts(base.clone());
        assert_eq!(none, base);
    }
}
