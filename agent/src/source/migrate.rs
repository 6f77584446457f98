//! `haul migrate pid PID`: the source's state machine (see ARCHITECTURE.md).
//!
//! connect → Prepare (destination starts its page server) → DUMP with pages relayed →
//! post-dump (tasks frozen): send images, wait Ready → answer post-dump true (tasks die) →
//! Commit → Done. Any failure before the `true` answers post-dump `false` (or drops CRIU's
//! socket), so CRIU resumes the tasks with their memory intact.

use super::connect::{open, wire_to_error};
use super::progress::{phase, Progress};
use crate::criu::{self, stats, Event, Swrk};
use crate::error::{Context, Error, Kind, Result};
use crate::limits::IDLE_TIMEOUT;
use crate::summary::Summary;
use crate::transfer::WireError;
use crate::transfer::{images, pages, Key};
use crate::workdir::WorkDir;
use haul_proto::criu::CriuReqType;
use haul_proto::haul::{control::Msg, Abort, Commit, Prepare, Purpose};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Options<'a> {
    pub to: &'a str,
    pub key: Option<&'a Key>,
    pub criu: &'a Path,
    pub work_root: &'a Path,
    pub stats_json: Option<&'a Path>,
    /// Keep the work directory after success (debugging).
    pub keep_work: bool,
    pub quiet: bool,
    /// Post-copy (`--lazy`): the destination runs the workload before its memory has moved.
    pub lazy: bool,
    /// `--eager-restore`: the destination restores all memory before the resume.
    pub eager_restore: bool,
    /// `--pre-dump*`: pre-copy iterations before the final dump (source/precopy.rs).
    pub pre_dump: super::precopy::Settings,
}

/// Files of the source's images directory that are not sent.
fn sent(name: &str) -> bool {
    !name.ends_with(".log") && name != "stats-dump" && name != super::postcopy::CONF_NAME
}

/// What differs between a process tree and a runc container on the source.
pub struct Job<'a> {
    /// "pid" or "runc".
    pub kind: &'static str,
    /// What is moved, for messages: the pid or the container id.
    pub name: String,
    /// Root task.
    pub pid: i32,
    pub purpose: Purpose,
    pub prepare: Prepare,
    /// Builds the DUMP options from the images directory fd and the page socket number.
    pub dump_opts: Box<dyn Fn(i32, i32) -> haul_proto::criu::CriuOpts + 'a>,
    /// Freezer cgroup to freeze before CRIU starts (and thaw on rollback).
    pub freezer: Option<std::path::PathBuf>,
    /// Extra files written into the images directory before they are sent.
    pub extra_files: Vec<(String, Vec<u8>)>,
    /// `--fs copy`: the bundle directory and the entries of it to copy.
    pub tree: Option<(std::path::PathBuf, Vec<String>)>,
    /// Runs after the destination confirmed; its failure is only a warning.
    pub after_commit: Option<Box<dyn FnOnce() -> Result<()> + 'a>>,
    /// The network namespace CRIU runs in (the container's own, which CRIU then neither dumps
    /// nor locks); `None`: haul's.
    pub netns: Option<std::os::fd::OwnedFd>,
}

/// Migrates the process tree rooted at `pid`.
pub fn migrate_pid(pid: i32, o: &Options<'_>) -> Result<()> {
    if pid <= 1 {
        return Err(Error::usage(format!("pid {pid} cannot be migrated")));
    }
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::usage(format!("no process with pid {pid}")));
    }
    run(
        Job {
            kind: "pid",
            name: pid.to_string(),
            pid,
            purpose: Purpose::MigratePid,
            prepare: Prepare::default(),
            dump_opts: Box::new(move |dir, ps| crate::plan::pid::dump(pid, dir, ps)),
            freezer: None,
            extra_files: Vec::new(),
            tree: None,
            after_commit: None,
            netns: None,
        },
        o,
    )
}

/// Runs a migration job (see the module docs for the order of events).
pub fn run(job: Job<'_>, o: &Options<'_>) -> Result<()> {
    // Before any thread starts: SIGTERM/SIGINT are taken by a thread, which rolls back.
    let signals =
        crate::service::Signals::start().ctx(Kind::Setup, "setting up signal handling")?;
    let started = Instant::now();
    let id = crate::util::migration_id();
    let what = format!("{} {}", job.kind, job.name);

    if o.lazy && o.pre_dump.mode == super::precopy::Mode::Always {
        return Err(Error::usage(
            "--lazy and --pre-dump always: CRIU cannot pre-dump for a lazy dump; use one",
        ));
    }
    if o.lazy {
        super::postcopy::pipe_check()
            .map_err(|why| Error::setup(format!("--lazy on this host: {why}")))?;
    }
    // CRIU is started before anything freezes, with its end of the page socket.
    let (ps_ours, ps_criu) = pages::socket_pair().ctx(Kind::Other, "page socketpair")?;
    let mut swrk = Swrk::spawn_in(
        o.criu,
        &[ps_criu.as_fd()],
        job.netns.as_ref().map(|n| n.as_fd()),
    )
    .map_err(|e| Error::setup(e.to_string()))?;
    // CRIU has its own copy under the same number; ours must go, or the page stream never ends.
    let ps_criu_no = std::os::fd::AsRawFd::as_raw_fd(&ps_criu);
    drop(ps_criu);
    let version = swrk.version().map_err(|e| Error::setup(e.to_string()))?;
    if version < criu::MIN_VERSION {
        return Err(Error::setup(format!(
            "criu {version} here is too old: haul needs {} or newer",
            criu::MIN_VERSION
        )));
    }

    phase(o.quiet, &format!("connecting to {}", o.to));
    let (conn, welcome) = open(o.to, o.key, job.purpose, version, &id)?;
    if o.key.is_none() {
        log::warn!("connection is not authenticated nor encrypted (--insecure)");
    }
    if o.lazy && !welcome.lazy_pages {
        conn.close();
        return Err(Error::setup(format!(
            "--lazy: the destination {} cannot restore with lazy pages (its kernel lacks \
             userfaultfd or its CRIU does not support it; see `haul check --to`); nothing was frozen",
            o.to
        )));
    }
    if o.lazy {
        let there = welcome.criu.as_ref().map(|v| criu::Version {
            major: v.major,
            minor: v.minor,
            sublevel: v.sublevel,
        });
        if let Err(why) = super::postcopy::same_page_protocol(version, there) {
            conn.close();
            return Err(Error::setup(format!("--lazy: {why}; nothing was frozen")));
        }
    }
    // From now on a lost connection must reach CRIU's page socket, even before the dump (the
    // bundle copy can take minutes): CRIU then fails at once instead of waiting for answers.
    let ps_ours = Arc::new(ps_ours);
    conn.set_page_sink(ps_ours.clone());
    if o.lazy {
        // Until the Commit, a lost connection must fail CRIU's lazy page server (it then
        // resumes the tasks), not end its stream (it would kill them).
        conn.set_sink_farewell(Some(super::postcopy::FAIL_REQUEST));
    }
    // SIGTERM/SIGINT before the commit: cut CRIU's page stream and the connection, so the dump
    // fails and everything rolls back; after it, finish.
    let stage = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let interrupted = Arc::new(std::sync::Mutex::new(None::<&'static str>));
    {
        let (stage, interrupted, lazy) = (stage.clone(), interrupted.clone(), o.lazy);
        let ps = ps_ours.clone();
        // Its own handle on the socket: a send blocked on a slow link holds the sender's lock.
        let sock = conn
            .sender()
            .lock()
            .ok()
            .and_then(|t| t.socket_handle().ok());
        let _ = std::thread::Builder::new()
            .name("haul-interrupt".into())
            .spawn(move || loop {
                let Ok(reqs) = signals.wait(None) else { return };
                for r in reqs {
                    let crate::service::Request::Stop(name) = r else {
                        continue;
                    };
                    if stage.load(std::sync::atomic::Ordering::Acquire) != 0 {
                        log::warn!(
                            "{name}: the tasks here are already stopped; finishing the commit"
                        );
                        continue;
                    }
                    log::warn!("{name}: aborting the migration; the container stays here");
                    if let Ok(mut i) = interrupted.lock() {
                        *i = Some(name);
                    }
                    if lazy {
                        super::postcopy::fail_page_server(&ps);
                    } else {
                        let _ = rustix::net::shutdown(&*ps, rustix::net::Shutdown::Both);
                    }
                    if let Some(s) = &sock {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    return;
                }
            });
    }
    let mut job = job;
    job.prepare.lazy = o.lazy;
    job.prepare.eager_restore = o.eager_restore;

    // Pre-copy or one dump: decided before anything freezes (source/precopy.rs). CRIU cannot
    // pre-dump for a lazy dump: --lazy dumps once.
    let mut pre_settings = o.pre_dump;
    if o.lazy {
        pre_settings.mode = super::precopy::Mode::Never;
    }
    let pre_copy = early(
        super::precopy::decide(&pre_settings, &mut swrk, &welcome, &conn),
        (&interrupted, &what),
    )?;
    phase(
        o.quiet,
        "preflight: the destination checks it can restore and starts its page server",
    );
    early(
        super::connect::preflight(&conn, pre_copy.prepare(job.prepare.clone())),
        (&interrupted, &what),
    )?;

    // --fs copy, pass 1: the whole bundle tree, while the container still runs.
    let mut snapshot = None;
    if let Some((root, tops)) = &job.tree {
        phase(
            o.quiet,
            &format!(
                "copying the bundle {} (config.json and rootfs)",
                root.display()
            ),
        );
        let tops: Vec<&str> = tops.iter().map(String::as_str).collect();
        let (snap, n, b) = early(
            crate::transfer::tree::send_tree(&conn, root, &tops, 1, None)
                .map_err(|e| Error::new(Kind::Refused, format!("copying the bundle: {e}"))),
            (&interrupted, &what),
        )?;
        log::info!(
            "bundle pass 1: {n} entries, {:.1} MiB",
            b as f64 / 1048576.0
        );
        snapshot = Some(snap);
    }

    let work = WorkDir::create(o.work_root, &id)?;
    for (name, bytes) in &job.extra_files {
        std::fs::write(work.path.join(name), bytes).ctx(Kind::Other, format!("writing {name}"))?;
    }
    let lazy_conf = if o.lazy {
        Some(super::postcopy::write_conf(&work.path, ps_criu_no)?)
    } else {
        None
    };
    let relay = pages::spawn_outbound(ps_ours.clone(), conn.sender(), conn.counters.clone())
        .map_err(|e| wire_to_error(e, "page relay"))?;
    // A lazy dump writes no pages to the socket until post-dump: its relay runs to the end of the
    // post-copy instead of being joined at post-dump.
    let (relay, lazy_relay) = if o.lazy {
        (None, Some(relay))
    } else {
        (Some(relay), None)
    };

    // haul freezes the cgroup just before DUMP (source/freeze.rs); CRIU seizes the tasks and
    // thaws it, but re-freezes it when a dump fails. So haul thaws it on every rollback (after
    // CRIU exited), and its freeze guard does if haul dies; unless it was frozen before haul
    // started: then it is left as it was.
    let mut thaw_guard = job.freezer.as_ref().and_then(|dir| {
        let state = std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
        (state.trim() == "THAWED").then(|| Thaw {
            dir: dir.clone(),
            guard: None,
        })
    });
    // Pre-copy: pre-dumps while the workload runs, then the final dump's page server.
    let pre = super::precopy::iterate(
        &pre_copy,
        super::precopy::Chain {
            swrk: &mut swrk,
            dest: &mut super::precopy::Remote(&conn),
            work: &work.path,
            ps_fd: ps_criu_no,
            dump_opts: &*job.dump_opts,
            quiet: o.quiet,
        },
    );
    if pre.is_ok() {
        phase(o.quiet, &format!("freezing and dumping {what}"));
    }
    let frozen_start = Instant::now();
    let expected = match &pre {
        // After pre-copy only what changed since the last iteration goes: no estimate.
        Ok(p) if !p.iterations.is_empty() => 0,
        _ => super::progress::resident_bytes(&super::progress::tasks(
            job.pid,
            job.freezer.as_deref(),
        )),
    };
    let progress = Progress::start(o.quiet, "pages", conn.counters.clone(), expected);
    let opts = (job.dump_opts)(work.raw(), ps_criu_no);
    let opts = match &lazy_conf {
        Some(conf) => super::postcopy::lazy_dump(opts, conf),
        None => opts,
    };
    swrk.set_log(work.path.join("dump.log"));
    let pass2 = match (&job.tree, &snapshot) {
        (Some((root, tops)), Some(snap)) => Some((root.as_path(), tops.as_slice(), snap)),
        _ => None,
    };
    let tasks = super::progress::tasks(job.pid, job.freezer.as_deref());
    let mut guard: Option<Arc<super::freeze::Guard>> = None;
    let (pre, outcome) = match pre {
        Ok(pre) => {
            let opts = pre.final_opts(opts);
            // The guard (source/freeze.rs) covers haul's own death: it thaws the cgroup haul
            // freezes, and for --lazy fails CRIU's page server before the commit. Frozen here
            // at a 1 ms pace rather than by CRIU's 100 ms one; only a cgroup haul thaws on a
            // rollback (`thaw_guard`: it was running when haul started).
            let freezer = job.freezer.as_deref().filter(|_| thaw_guard.is_some());
            let started = match swrk.pid() {
                Some(criu_pid) if freezer.is_some() || o.lazy => {
                    super::freeze::Guard::start(&super::freeze::Watch {
                        criu_pid,
                        freezer,
                        page_socket: o.lazy.then(|| ps_ours.as_fd()),
                        // CRIU locks the tasks' network namespace only if it did not run in it.
                        unlock_network_of: (o.lazy && job.netns.is_none()).then_some(job.pid),
                        tasks: &tasks,
                    })
                    .map(|g| Some(Arc::new(g)))
                }
                _ => Ok(None),
            };
            let started = match started {
                Err(e) if o.lazy => Err(e.context(
                    "--lazy: without its guard process a haul killed before the commit would \
                     lose the container; nothing was frozen",
                )),
                Err(e) => {
                    log::warn!("{e}; CRIU freezes the cgroup");
                    Ok(None)
                }
                ok => ok,
            };
            let outcome = match started {
                Ok(g) => {
                    if let (Some(dir), Some(t), Some(g)) = (freezer, thaw_guard.as_mut(), &g) {
                        match super::freeze::freeze(dir) {
                            Ok(true) => {
                                log::debug!("froze {} before the dump", dir.display());
                                t.guard = Some(g.clone());
                            }
                            Ok(false) => {
                                log::info!(
                                    "{} did not freeze within {} ms; CRIU freezes it",
                                    dir.display(),
                                    super::freeze::FREEZE_LIMIT.as_millis()
                                );
                                g.cgroup_handled();
                            }
                            Err(e) => {
                                log::warn!("{e}; CRIU freezes the cgroup");
                                g.cgroup_handled();
                            }
                        }
                    }
                    guard = g;
                    run_dump(
                        &mut swrk, &conn, &work.path, relay, opts, job.pid, pass2, &stage, o.quiet,
                    )
                }
                Err(e) => Err(e),
            };
            (pre, outcome)
        }
        Err(e) => (super::precopy::Report::default(), Err(e)),
    };
    progress.stop();

    let (image_files, image_bytes, page_bytes) = match outcome {
        // The relay's count includes the pre-copy iterations: keep the final dump's.
        Ok((files, bytes, pages)) => (files, bytes, pages.saturating_sub(pre.page_bytes())),
        Err(e) => {
            let _ = conn.send(Msg::Abort(Abort {
                stage: "dump".into(),
                reason: e.to_string(),
            }));
            // CRIU resumes the tasks when its socket closes; the cgroup frozen by haul is
            // thawed after that.
            drop(swrk);
            drop(thaw_guard);
            conn.close();
            let kept = keep_log(o.work_root, &id, &work);
            if let Err(r) = work.remove() {
                log::warn!("{r}");
            }
            let e = if kept.is_empty() {
                e
            } else {
                Error::new(e.kind, format!("{e}\n    CRIU log kept: {kept}"))
            };
            let e = match interrupted.lock().ok().and_then(|i| *i) {
                Some(name) => Error::new(
                    Kind::RolledBack,
                    format!("interrupted by {name}; rolled back ({e})"),
                ),
                None => e,
            };
            return Err(e.context(format!(
                "migration failed; {what} keeps running on this host"
            )));
        }
    };
    if o.lazy {
        let progress = Progress::start(o.quiet, "post-copy", conn.counters.clone(), expected);
        let post = super::postcopy::finish(
            &mut swrk,
            &conn,
            &ps_ours,
            guard.as_deref(),
            &tasks,
            &stage,
            frozen_start,
            o.quiet,
        );
        progress.stop();
        let post = match post {
            Ok(p) => p,
            Err(e) => {
                // CRIU resumes the tasks (rolled back) or they were killed (lost); then the
                // cgroup haul may have frozen is thawed.
                drop(swrk);
                drop(thaw_guard);
                // CRIU locked the tasks' network namespace only if it was not its own.
                if e.kind == Kind::RolledBack && job.netns.is_none() {
                    super::postcopy::unlock_network(job.pid);
                }
                conn.close();
                keep_log(o.work_root, &id, &work);
                if let Err(r) = work.remove() {
                    log::warn!("{r}");
                }
                let e = match interrupted.lock().ok().and_then(|i| *i) {
                    Some(name) if e.kind == Kind::RolledBack => Error::new(
                        Kind::RolledBack,
                        format!("interrupted by {name}; rolled back ({e})"),
                    ),
                    _ => e,
                };
                return Err(if e.kind == Kind::RolledBack {
                    e.context(format!(
                        "migration failed; {what} keeps running on this host"
                    ))
                } else {
                    e.context(format!("migration of {what}"))
                });
            }
        };
        drop(thaw_guard);
        if let Some(Ok(Err(e))) = lazy_relay.map(|h| h.join()) {
            log::debug!("page relay after the post-copy: {e}");
        }
        let wire_bytes = wind_down(conn, swrk, job.after_commit);
        let dstats = stats::dump(&work.path).unwrap_or_default();
        let summary = Summary {
            kind: job.kind,
            id: &job.name,
            destination: o.to,
            insecure: o.key.is_none(),
            total_ms: started.elapsed().as_millis() as u64,
            peak_rss_kib: crate::util::peak_rss_kib().unwrap_or(0),
            frozen_ms: post.frozen_ms,
            // CRIU's lazy page server restarts its statistics: only the freezing time and
            // the pages written into the images survive.
            criu_freezing_us: dstats.freezing_time,
            pages_written: dstats.pages_written,
            criu_restore_us: post.done.restore_time_us,
            criu_forking_us: post.done.forking_time_us,
            page_bytes: post.bytes,
            image_files,
            image_bytes,
            wire_bytes,
            page_mib_per_s: if post.postcopy_ms > 0 {
                post.bytes as f64 / 1048576.0 / (post.postcopy_ms as f64 / 1000.0)
            } else {
                0.0
            },
            restored_pid: post.done.restored_pid,
            lazy: true,
            postcopy_ms: post.postcopy_ms,
            ..Default::default()
        };
        return finish_summary(&summary, o, work);
    }
    let _ = (page_bytes, lazy_relay, &tasks);
    // The tasks are gone; thawing the now empty cgroup lets runc remove it.
    drop(thaw_guard);

    // The source's tasks are gone: from here on only the destination holds the workload.
    crate::util::fault_point("src-committing");
    phase(
        o.quiet,
        "commit: the destination lets the restored tasks run",
    );
    // The destination answers Done once the tasks run; if it fills their memory after the
    // resume (no --eager-restore), it says Resumed first and Done when the fill is over.
    let mut resumed_ms = None;
    let done = conn
        .send(Msg::Commit(Commit {}))
        .map_err(|e| wire_to_error(e, "sending commit"))
        .and_then(|()| loop {
            let wait = match resumed_ms {
                None => IDLE_TIMEOUT,
                Some(_) => crate::limits::LOCAL_FILL_LIMIT + IDLE_TIMEOUT,
            };
            break match conn.recv_control(wait, "commit") {
                Ok(Msg::Resumed(_)) if resumed_ms.is_none() => {
                    resumed_ms = Some(frozen_start.elapsed().as_millis() as u64);
                    continue;
                }
                Ok(Msg::Done(d)) => Ok(d),
                Ok(Msg::Abort(a)) => Err(Error::other(format!(
                    "{}: {}",
                    crate::util::printable(&a.stage),
                    crate::util::printable(&a.reason)
                ))),
                Ok(other) => Err(Error::other(format!("unexpected {other:?} after commit"))),
                Err(e) => Err(wire_to_error(
                    e,
                    "waiting for the destination's confirmation",
                )),
            };
        });
    let done = match done {
        Ok(d) => d,
        Err(e) if resumed_ms.is_some() => {
            return Err(e.with_kind(Kind::InDoubt).context(format!(
                "IN DOUBT: the destination resumed the tasks of {what} after the tasks here were \
                 stopped, then failed while filling their memory from its own images; a `haul \
                 serve` that dies then stops them, and its work directory keeps the complete \
                 images for `haul recover` (see `haul serve`'s log on {}); source images: {}",
                o.to,
                work.path.display()
            )))
        }
        Err(e) => {
            return Err(e.with_kind(Kind::InDoubt).context(format!(
            "IN DOUBT: the tasks of {what} were stopped here after the destination restored them, \
                 but it did not confirm they run; its work directory keeps the complete images \
                 (see `haul serve`'s log on {}); source images: {}",
            o.to,
            work.path.display()
        )))
        }
    };
    let frozen_ms = resumed_ms.unwrap_or_else(|| frozen_start.elapsed().as_millis() as u64);
    let wire_bytes = wind_down(conn, swrk, job.after_commit);

    let dstats = stats::dump(&work.path).unwrap_or_default();
    // CRIU alternates collecting a chunk of pages from the tasks and writing it out (memwrite,
    // inside memdump): the pages crossed during memwrite.
    let transfer_us = match dstats.memwrite_time {
        0 => dstats.memdump_time,
        w => w,
    };
    let transfer_secs = f64::from(transfer_us) / 1e6;
    let summary = Summary {
        kind: job.kind,
        id: &job.name,
        destination: o.to,
        insecure: o.key.is_none(),
        total_ms: started.elapsed().as_millis() as u64,
        peak_rss_kib: crate::util::peak_rss_kib().unwrap_or(0),
        frozen_ms,
        criu_freezing_us: dstats.freezing_time,
        criu_frozen_us: dstats.frozen_time,
        criu_memdump_us: dstats.memdump_time,
        criu_memwrite_us: dstats.memwrite_time,
        pages_written: dstats.pages_written,
        criu_restore_us: done.restore_time_us,
        criu_forking_us: done.forking_time_us,
        page_bytes,
        image_files,
        image_bytes,
        wire_bytes,
        page_mib_per_s: if transfer_secs > 0.0 {
            page_bytes as f64 / 1048576.0 / transfer_secs
        } else {
            0.0
        },
        restored_pid: done.restored_pid,
        pre_dump: pre.summary(o.pre_dump.mode),
        fill_ms: done.fill_us / 1000,
        ..Default::default()
    };
    finish_summary(&summary, o, work)
}

/// Keeps CRIU's log of a failed dump, not the images (a device's disk is small); returns its
/// path, or "" if it could not be copied.
fn keep_log(work_root: &Path, id: &str, work: &WorkDir) -> String {
    let logs = work_root.join("logs");
    let kept = logs.join(format!("{id}-dump.log"));
    std::fs::create_dir_all(&logs)
        .and_then(|()| std::fs::copy(work.path.join("dump.log"), &kept))
        .map(|_| kept.display().to_string())
        .unwrap_or_default()
}

/// Prints and saves the summary, then removes (or keeps) the work directory.
fn finish_summary(summary: &Summary<'_>, o: &Options<'_>, work: WorkDir) -> Result<()> {
    if !o.quiet {
        summary.print();
    }
    if let Some(p) = o.stats_json {
        summary.write_json(p).map_err(Error::other)?;
    }
    if o.keep_work {
        log::info!("work directory kept: {}", work.path.display());
    } else if let Err(e) = work.remove() {
        log::warn!("{e}");
    }
    Ok(())
}

/// The destination confirmed: closes the connection, lets CRIU finish, runs the after-commit
/// step (its failure is only a warning). Returns the bytes sent on the connection.
fn wind_down(
    conn: crate::transfer::Conn,
    swrk: Swrk,
    after_commit: Option<Box<dyn FnOnce() -> Result<()> + '_>>,
) -> u64 {
    let wire_bytes = conn.wire_bytes_out();
    conn.close();
    swrk.finish();
    if let Some(after) = after_commit {
        if let Err(e) = after() {
            log::warn!("after the migration: {e}");
        }
    }
    wire_bytes
}

/// Thaws a freezer cgroup haul froze, when dropped (rollback, or the tasks are gone), then
/// tells the guard (source::freeze) if one watches it.
struct Thaw {
    dir: std::path::PathBuf,
    guard: Option<Arc<super::freeze::Guard>>,
}

impl Drop for Thaw {
    fn drop(&mut self) {
        if let Err(e) = crate::cgroups::thaw(&self.dir) {
            log::error!("{e}");
        }
        if let Some(g) = self.guard.take() {
            g.cgroup_handled();
        }
    }
}

/// Sends DUMP and runs it until CRIU's final answer. Returns (image files, image bytes, page
/// bytes). On error, post-dump was not answered `true`: the caller drops CRIU and the tasks
/// resume with their memory intact.
// One call site; the arguments are the dump's distinct inputs, grouping them would only rename.
#[allow(clippy::too_many_arguments)]
fn run_dump(
    swrk: &mut Swrk,
    conn: &crate::transfer::Conn,
    dir: &Path,
    relay: Option<JoinHandle<Result<u64, WireError>>>,
    opts: haul_proto::criu::CriuOpts,
    pid: i32,
    pass2: Option<(&Path, &[String], &crate::transfer::tree::Snapshot)>,
    stage: &std::sync::atomic::AtomicU8,
    quiet: bool,
) -> Result<(u32, u64, u64)> {
    swrk.send(&Swrk::request(CriuReqType::Dump, opts))
        .map_err(|e| Error::other(e.to_string()))?;
    let lazy = relay.is_none();
    let mut relay = relay;
    let mut result = None;
    let mut committed = false;
    loop {
        let event = match swrk.next_event() {
            Ok(ev) => ev,
            Err(e) if committed => {
                // post-dump was answered true: CRIU should have killed the tasks. If it failed
                // after that, the tasks may or may not be gone; decide by looking.
                if process_exists(pid) {
                    return Err(Error::new(Kind::RolledBack, e.to_string()));
                }
                log::warn!("criu reported an error after the tasks were stopped: {e}");
                break;
            }
            Err(e) => {
                let why = dump_failure_cause(relay.take(), conn, Duration::from_millis(500));
                return Err(Error::new(Kind::RolledBack, format!("{why}{e}")));
            }
        };
        match event {
            Event::Notify { script, .. } if script == "post-dump" => {
                // Tasks are frozen, pages are on the destination, images are written here.
                crate::util::fault_point("src-frozen");
                let page_bytes = match relay.take().map(|h| h.join()) {
                    Some(Ok(Ok(n))) => n,
                    Some(Ok(Err(e))) => {
                        return Err(wire_to_error(e, "streaming pages").with_kind(Kind::RolledBack))
                    }
                    // A lazy dump sends its pages after post-dump (post-copy).
                    None if lazy => 0,
                    _ => return Err(Error::new(Kind::RolledBack, "page relay thread failed")),
                };
                if lazy {
                    phase(
                        quiet,
                        "sending images; the memory stays here until the destination asks for it",
                    );
                } else {
                    phase(
                        quiet,
                        &format!(
                            "pages sent ({:.1} MiB); sending images",
                            page_bytes as f64 / 1048576.0
                        ),
                    );
                }
                // --fs copy, pass 2: what changed since pass 1, now that the tasks are frozen.
                if let Some((root, tops, snap)) = pass2 {
                    let tops: Vec<&str> = tops.iter().map(String::as_str).collect();
                    let (_, n, b) =
                        crate::transfer::tree::send_tree(conn, root, &tops, 2, Some(snap))
                            .map_err(|e| {
                                Error::new(
                                    Kind::RolledBack,
                                    format!("copying the bundle's changes: {e}"),
                                )
                            })?;
                    log::info!("bundle pass 2: {n} changed entries, {b} bytes");
                }
                let (files, bytes) = images::send_dir(conn, dir, sent)
                    .map_err(|e| Error::new(Kind::RolledBack, format!("sending images: {e}")))?;
                if lazy {
                    // CRIU now serves the pages while the tasks stay frozen: the restore on the
                    // destination already faults some in. Not a commit: a failure of the page
                    // stream before the Commit resumes the tasks here (postcopy::finish).
                    swrk.notify_reply(true)
                        .map_err(|e| Error::new(Kind::RolledBack, e.to_string()))?;
                    result = Some((files, bytes, 0));
                    break;
                }
                phase(quiet, "restoring on the destination");
                match conn.recv_control(IDLE_TIMEOUT, "restore") {
                    Ok(Msg::Ready(r)) => {
                        log::info!(
                            "destination holds the restored tasks (pid {})",
                            r.restored_pid
                        )
                    }
                    Ok(Msg::Abort(a)) => {
                        let _ = swrk.notify_reply(false);
                        return Err(Error::new(
                            Kind::RolledBack,
                            format!(
                                "destination failed to restore ({}): {}",
                                crate::util::printable(&a.stage),
                                crate::util::printable(&a.reason)
                            ),
                        ));
                    }
                    Ok(other) => {
                        let _ = swrk.notify_reply(false);
                        return Err(Error::new(
                            Kind::RolledBack,
                            format!("unexpected {other:?} during restore"),
                        ));
                    }
                    Err(e) => {
                        let _ = swrk.notify_reply(false);
                        return Err(wire_to_error(e, "waiting for the destination to restore")
                            .with_kind(Kind::RolledBack));
                    }
                }
                stage.store(1, std::sync::atomic::Ordering::Release);
                swrk.notify_reply(true)
                    .map_err(|e| Error::new(Kind::RolledBack, e.to_string()))?;
                committed = true;
                result = Some((files, bytes, page_bytes));
                // CRIU now kills the tasks, then cleans up before answering DUMP (seconds for a
                // large memory). The commit only needs the tasks dead: the root task is the init
                // of its pid namespace, so when it is gone every task of the tree is. Commit
                // then, and collect CRIU's answer afterwards (`finish`).
                if wait_gone_or_answer(pid, swrk) {
                    log::debug!("pid {pid} is gone; committing before criu's DUMP answer");
                    break;
                }
            }
            Event::Notify { .. } => swrk
                .notify_reply(true)
                .map_err(|e| Error::new(Kind::RolledBack, e.to_string()))?,
            Event::Done(resp) if resp.r#type == CriuReqType::Dump as i32 => break,
            Event::Done(resp) => {
                return Err(Error::new(
                    Kind::RolledBack,
                    format!("criu answered {} during DUMP", criu::req_name(resp.r#type)),
                ))
            }
        }
    }
    result.ok_or_else(|| Error::new(Kind::RolledBack, "criu finished the dump without post-dump"))
}

/// Waits until `pid` no longer runs (true) or CRIU has something to say (false), checking
/// every millisecond.
fn wait_gone_or_answer(pid: i32, swrk: &Swrk) -> bool {
    loop {
        if !process_exists(pid) {
            return true;
        }
        if swrk.readable(std::time::Duration::from_millis(1)) {
            return false;
        }
    }
}

/// An error before anything froze, named for what caused it when SIGINT/SIGTERM did (the
/// interrupt thread cut the connection under the step that failed).
fn early<T>(
    r: Result<T>,
    (interrupted, what): (&std::sync::Mutex<Option<&'static str>>, &str),
) -> Result<T> {
    r.map_err(|e| match interrupted.lock().ok().and_then(|i| *i) {
        Some(name) => Error::new(
            Kind::RolledBack,
            format!(
                "interrupted by {name} before anything was frozen; {what} keeps running on this \
                 host ({e})"
            ),
        ),
        None => e,
    })
}

/// True when `/proc/<pid>` exists (a zombie counts as gone: its memory is released).
pub fn process_exists(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Why a dump failed when the cause is on the other side: the page relay broke (destination
/// gone, link cut), the connection was lost, or the destination aborted with a reason. Empty
/// when the connection is fine and the destination says nothing within `wait`: CRIU's own
/// error then stands alone.
fn dump_failure_cause(
    relay: Option<JoinHandle<Result<u64, WireError>>>,
    conn: &crate::transfer::Conn,
    wait: Duration,
) -> String {
    let mut why = String::new();
    if let Some(h) = relay {
        // A broken link fails CRIU's page writes and the relay at about the same moment: give
        // the relay a moment to finish and say so.
        let end = Instant::now() + Duration::from_millis(200);
        while !h.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(2));
        }
        if h.is_finished() {
            if let Ok(Err(we)) = h.join() {
                why = format!(
                    "the connection to the destination broke while pages streamed ({we}); "
                );
            }
        }
    }
    match conn.recv_control(wait, "abort") {
        Ok(Msg::Abort(a)) => why.push_str(&format!(
            "the destination says: {}; ",
            crate::util::printable(&a.reason)
        )),
        // The connection's reader saw the loss first and shut CRIU's page socket: the relay
        // then ended cleanly (its read saw the end), but the link is what failed.
        Err(we) if why.is_empty() && !matches!(we, WireError::Timeout { .. }) => {
            why = format!("the connection to the destination was lost ({we}); ");
        }
        _ => {}
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::{handshake, Conn};
    use std::net::{TcpListener, TcpStream};

    /// A connection to a peer that `peer` drives once the handshake is done.
    fn conn_to(peer: impl FnOnce(Conn) + Send + 'static) -> (Conn, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (tx, rx) = handshake::accept(s, None, IDLE_TIMEOUT).unwrap();
            peer(Conn::start(tx, rx));
        });
        let (tx, rx) = handshake::connect(TcpStream::connect(addr).unwrap(), None).unwrap();
        (Conn::start(tx, rx), h)
    }

    fn relay_that_ended(r: Result<u64, WireError>) -> JoinHandle<Result<u64, WireError>> {
        std::thread::spawn(move || r)
    }

    #[test]
    fn a_lost_connection_is_named_even_when_the_relay_ended_cleanly() {
        // The reader saw the peer vanish first and shut the page socket: the relay read the
        // end and returned Ok. The cause must still be the connection.
        let (conn, peer) = conn_to(|c| {
            c.close();
        });
        peer.join().unwrap();
        let why = dump_failure_cause(
            Some(relay_that_ended(Ok(4096))),
            &conn,
            Duration::from_secs(5),
        );
        assert!(
            why.starts_with("the connection to the destination was lost ("),
            "{why}"
        );
    }

    #[test]
    fn a_broken_relay_is_named_once() {
        let (conn, peer) = conn_to(|c| {
            c.close();
        });
        peer.join().unwrap();
        let broken = WireError::Closed { during: "pages" };
        let why = dump_failure_cause(
            Some(relay_that_ended(Err(broken))),
            &conn,
            Duration::from_secs(5),
        );
        assert!(
            why.starts_with(
                "the connection to the destination broke while pages streamed (peer closed"
            ),
            "{why}"
        );
        assert_eq!(
            why.matches("connection to the destination").count(),
            1,
            "{why}"
        );
    }

    #[test]
    fn the_destination_s_reason_is_quoted() {
        let (conn, peer) = conn_to(|c| {
            c.send(Msg::Abort(Abort {
                reason: "disk full".into(),
                ..Default::default()
            }))
            .unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        let why = dump_failure_cause(None, &conn, Duration::from_secs(5));
        peer.join().unwrap();
        assert_eq!(why, "the destination says: disk full; ");
    }

    #[test]
    fn a_live_silent_destination_adds_nothing() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (conn, peer) = conn_to(move |_c| {
            let _ = rx.recv();
        });
        let why = dump_failure_cause(
            Some(relay_that_ended(Ok(1))),
            &conn,
            Duration::from_millis(100),
        );
        assert_eq!(why, "");
        tx.send(()).unwrap();
        peer.join().unwrap();
    }
}
