//! One migration on the destination: authenticate, answer Hello, start a CRIU page server on a
//! socketpair, receive pages and image files into a fresh per-migration directory, restore
//! holding the tasks at post-restore, report Ready, and let them run only on Commit.

use super::journal::{self, Stage};
use super::lazy::Fill;
use super::page_images::PageImages;
use super::runc::RuncRestore;
use super::serve::{Limits, Slot};
use crate::criu::page_server::Layout;
use crate::criu::page_stream::PageStream;
use crate::criu::{self, stats, Event, Swrk, Version};
use crate::error::{Error, Kind, Result};
use crate::limits::{CONCURRENT_MIGRATIONS, HANDSHAKE_TIMEOUT, LOCAL_FILL_LIMIT};
use crate::transfer::images::ImageSink;
use crate::transfer::{handshake, pages, Conn, Incoming, Key, WireError, PROTOCOL_VERSION};
use crate::workdir::WorkDir;
use haul_proto::criu::CriuReqType;
use haul_proto::haul::{
    control::Msg, Abort, CriuVersion, Done, Hello, Prepare, Prepared, Purpose, Ready, Resumed,
    Welcome,
};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct SessionConfig {
    pub key: Option<Key>,
    pub criu: PathBuf,
    pub work_root: PathBuf,
    /// Keep the images after a successful restore (for debugging).
    pub keep_images: bool,
    /// runc state root where restored containers are registered.
    pub runc_root: PathBuf,
    /// Where bundles go with `--fs copy`.
    pub bundle_root: PathBuf,
    /// Where restored containers' stdio logs go.
    pub stdio_dir: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// Longest silence of the peer while this side waits for it (`--idle-timeout`).
    pub idle_timeout: Duration,
    /// How long restored tasks are held for Commit (`COMMIT_TIMEOUT`; shorter in tests).
    pub commit_timeout: Duration,
}

/// Handles one connection; logs its outcome (never panics the server).
pub fn run(stream: TcpStream, peer: &str, cfg: &SessionConfig, limits: &Limits, pending: Slot) {
    let (tx, rx) = match handshake::accept(stream, cfg.key.as_ref(), cfg.idle_timeout) {
        Ok(h) => h,
        Err(e) => {
            log::warn!("{peer}: connection refused: {e}");
            return;
        }
    };
    drop(pending);
    let conn = Conn::start(tx, rx);
    let hello = match conn.recv_control(HANDSHAKE_TIMEOUT, "hello") {
        Ok(Msg::Hello(h)) => h,
        Ok(other) => {
            log::warn!("{peer}: expected hello, got {}", msg_name(&other));
            conn.close();
            return;
        }
        Err(e) => {
            log::warn!("{peer}: {e}");
            conn.close();
            return;
        }
    };
    let Some(_slot) = Slot::take(&limits.migrations, CONCURRENT_MIGRATIONS) else {
        refuse(
            &conn,
            "admission",
            &format!("{CONCURRENT_MIGRATIONS} migrations already running; try again later"),
        );
        log::warn!("{peer}: refused: too many migrations");
        conn.close();
        return;
    };
    if limits.stopping.load(std::sync::atomic::Ordering::Acquire) {
        refuse(
            &conn,
            "admission",
            "the destination is shutting down; try again later",
        );
        log::warn!("{peer}: refused: shutting down");
        conn.close();
        return;
    }
    let result = match Purpose::try_from(hello.purpose) {
        Ok(Purpose::MigratePid) | Ok(Purpose::MigrateRunc) => migrate(&conn, &hello, cfg, peer),
        Ok(Purpose::Check) => check(&conn, cfg),
        _ => Err(Error::other(format!(
            "unsupported purpose {}",
            hello.purpose
        ))),
    };
    match result {
        Ok(()) => {}
        Err(e) => {
            log::error!("{peer}: {e}");
            refuse(&conn, "destination", &e.to_string());
        }
    }
    conn.close();
}

fn refuse(conn: &Conn, stage: &str, reason: &str) {
    let _ = conn.send(Msg::Abort(Abort {
        stage: stage.into(),
        reason: reason.into(),
    }));
}

fn wire(e: WireError, what: &str) -> Error {
    Error::other(format!("{what}: {e}"))
}

fn proto_version(v: Version) -> CriuVersion {
    CriuVersion {
        major: v.major,
        minor: v.minor,
        sublevel: v.sublevel,
    }
}

pub fn msg_name(m: &Msg) -> &'static str {
    match m {
        Msg::Hello(_) => "Hello",
        Msg::Welcome(_) => "Welcome",
        Msg::Prepare(_) => "Prepare",
        Msg::Prepared(_) => "Prepared",
        Msg::FileBegin(_) => "FileBegin",
        Msg::FileEnd(_) => "FileEnd",
        Msg::ImagesDone(_) => "ImagesDone",
        Msg::Ready(_) => "Ready",
        Msg::Commit(_) => "Commit",
        Msg::Done(_) => "Done",
        Msg::Abort(_) => "Abort",
        Msg::CpuCheck(_) => "CpuCheck",
        Msg::CpuCheckResult(_) => "CpuCheckResult",
        Msg::TreeEntry(_) => "TreeEntry",
        Msg::TreeDone(_) => "TreeDone",
        Msg::Start(_) => "Start",
        Msg::Resumed(_) => "Resumed",
        Msg::PageServerStart(_) => "PageServerStart",
        Msg::PageServerReady(_) => "PageServerReady",
    }
}

/// Answers `haul check --to`: versions and features, then an optional CPU check.
fn check(conn: &Conn, cfg: &SessionConfig) -> Result<()> {
    let mut swrk = Swrk::spawn(&cfg.criu, &[]).map_err(|e| Error::setup(e.to_string()))?;
    let v = swrk.version().map_err(|e| Error::setup(e.to_string()))?;
    let f = swrk.features().map_err(|e| Error::setup(e.to_string()))?;
    conn.send(Msg::Welcome(Welcome {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        criu: Some(proto_version(v)),
        lazy_pages: f.lazy_pages.unwrap_or(false),
        mem_track: f.mem_track.unwrap_or(false),
        pre_copy: true,
    }))
    .map_err(|e| wire(e, "welcome"))?;
    drop(swrk);
    match conn.recv_control(cfg.idle_timeout, "check") {
        Ok(Msg::CpuCheck(c)) => {
            let result = crate::check::cpu_check_here(&cfg.criu, &cfg.work_root, &c.cpuinfo_img);
            conn.send(Msg::CpuCheckResult(result))
                .map_err(|e| wire(e, "cpu check result"))?;
            Ok(())
        }
        Ok(_) | Err(WireError::Closed { .. }) => Ok(()),
        Err(e) => Err(wire(e, "check")),
    }
}

fn migrate(conn: &Conn, hello: &Hello, cfg: &SessionConfig, peer: &str) -> Result<()> {
    if hello.protocol != u32::from(PROTOCOL_VERSION) {
        return Err(Error::new(Kind::Auth, "protocol version differs"));
    }
    // CRIU page server first: its socket end is inherited, so spawn with it.
    let (ps_ours, ps_criu) =
        pages::socket_pair().map_err(|e| Error::other(format!("socketpair: {e}")))?;
    // Without CRIU here only a restart (no checkpoint) can be served; the source learns it from
    // the missing version and says so.
    let mut criu_here =
        Swrk::spawn(&cfg.criu, &[ps_criu.as_fd()]).and_then(|mut w| w.version().map(|v| (w, v)));
    let features = criu_here
        .as_mut()
        .ok()
        .and_then(|(w, _)| w.features().ok())
        .unwrap_or_default();
    conn.send(Msg::Welcome(Welcome {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        criu: criu_here.as_ref().ok().map(|(_, v)| proto_version(*v)),
        lazy_pages: features.lazy_pages.unwrap_or(false),
        mem_track: features.mem_track.unwrap_or(false),
        // Page servers per dump (dest/precopy.rs).
        pre_copy: true,
    }))
    .map_err(|e| wire(e, "welcome"))?;

    let prepare = match conn.recv_control(cfg.idle_timeout, "prepare") {
        Ok(Msg::Prepare(p)) => p,
        Ok(Msg::Abort(a)) => {
            return Err(Error::other(format!(
                "source aborted: {}",
                crate::util::printable(&a.reason)
            )))
        }
        Ok(other) => {
            return Err(Error::other(format!(
                "expected Prepare, got {}",
                msg_name(&other)
            )))
        }
        Err(e) => return Err(wire(e, "prepare")),
    };
    let prepare_bytes = prost::Message::encode_to_vec(&prepare);
    let lazy = prepare.lazy;
    if lazy && !features.lazy_pages.unwrap_or(false) {
        return Err(Error::setup(
            "lazy pages (post-copy) are not available here: the kernel lacks userfaultfd or CRIU cannot use it",
        ));
    }
    let fill_after = fill_after_resume(&prepare, features.lazy_pages.unwrap_or(false));
    let mut job = match (Purpose::try_from(hello.purpose), prepare.runc) {
        (Ok(Purpose::MigrateRunc), Some(rc)) => Some(RuncRestore::preflight(rc, cfg)?),
        (Ok(Purpose::MigrateRunc), None) => {
            return Err(Error::other(
                "runc migration without a container description",
            ))
        }
        _ => None,
    };
    if let Some(j) = job.take_if(|j| j.is_restart()) {
        drop(criu_here);
        log::info!("{peer}: restart of container {} here", j.dst_id());
        return super::restart::run(conn, cfg, j);
    }
    let (mut swrk, version) = criu_here.map_err(|e| Error::setup(e.to_string()))?;
    if version < criu::MIN_VERSION {
        return Err(Error::setup(format!(
            "criu {version} on the destination is too old: haul needs {} or newer",
            criu::MIN_VERSION
        )));
    }
    let id = crate::util::migration_id();
    let work = WorkDir::create(&cfg.work_root, &id)?;
    // The journal and the container description let a restarted `haul serve` clean up after a
    // crash, or `haul recover` complete an in-doubt migration.
    std::fs::write(work.path.join(journal::PREPARE), prepare_bytes)
        .map_err(|e| Error::io("saving the container description", e))?;
    journal::write(
        &work.path,
        Stage::Receiving,
        job.as_ref().map(|j| j.dst_id()).unwrap_or(""),
    )?;
    log::info!(
        "{peer}: migration {id} (source's {}): receiving into {}",
        crate::util::printable(&hello.migration_id),
        work.path.display()
    );
    let outcome = receive_and_restore(
        conn,
        cfg,
        &work,
        &mut swrk,
        ps_ours,
        ps_criu,
        &mut job,
        Memory {
            lazy,
            fill_after,
            pre_copy: prepare.pre_copy,
        },
        CriuVersions {
            source: hello
                .criu
                .as_ref()
                .map(Version::from_wire)
                .unwrap_or(version),
            here: version,
        },
    );
    match outcome {
        Ok(Outcome::Done(done)) => {
            if let Some(j) = job.take() {
                j.commit();
            }
            if !cfg.keep_images {
                if let Err(e) = work.remove() {
                    log::warn!("{e}");
                }
            } else if let Err(e) = std::fs::write(work.path.join(super::recover::KEPT), b"") {
                log::warn!("marking {} kept: {e}", work.path.display());
            }
            conn.send(Msg::Done(done)).map_err(|e| wire(e, "done"))?;
            log::info!(
                "{peer}: migration {id} done: pid {} runs here (restore {} ms)",
                done.restored_pid,
                done.restore_time_us / 1000
            );
            Ok(())
        }
        Ok(Outcome::InDoubt(why)) => {
            // The images, the container description and a copied bundle stay for
            // `haul recover`; the held tasks are gone, so their registration, cgroups and root
            // mount go (RuncRestore's drop).
            if let Some(mut j) = job.take() {
                j.keep_bundle();
            }
            let note = work.path.join("IN-DOUBT");
            let _ = std::fs::write(
                &note,
                format!(
                    "{why}\nIf the source's tasks are gone, complete it with: haul recover {}\n",
                    work.path.display()
                ),
            );
            Err(Error::new(
                Kind::InDoubt,
                format!(
                    "migration {id} IN DOUBT: {why}; the restored tasks were stopped; complete images kept in {}",
                    work.path.display()
                ),
            ))
        }
        Err(e) => {
            // Unmount the container's root before anything under the directory goes.
            drop(job.take());
            let kept = keep_logs(cfg, &work, &id);
            if let Err(r) = work.remove() {
                log::warn!("{r}");
            }
            let e = e.context(format!("migration {id}"));
            if kept.is_empty() {
                Err(e)
            } else {
                // The logs quoted above were in the removed directory; these are the copies.
                Err(Error::new(
                    e.kind,
                    format!("{e}\n    CRIU logs kept: {}", kept.join(", ")),
                ))
            }
        }
    }
}

enum Outcome {
    Done(Done),
    InDoubt(String),
}

/// Copies CRIU's logs of a failed migration to `<work root>/logs/` before the directory goes.
fn keep_logs(cfg: &SessionConfig, work: &WorkDir, id: &str) -> Vec<String> {
    let mut kept = Vec::new();
    let logs = cfg.work_root.join("logs");
    if std::fs::create_dir_all(&logs).is_err() {
        return kept;
    }
    for name in ["page-server.log", "restore.log", super::lazy::LOG_NAME] {
        let from = work.path.join(name);
        if from.exists() {
            let to = logs.join(format!("{id}-{name}"));
            if std::fs::copy(&from, &to).is_ok() {
                kept.push(to.display().to_string());
            }
        }
    }
    // Pre-copy: the page servers of the iterations.
    for (from, name) in super::precopy::logs(&work.path) {
        let to = logs.join(format!("{id}-{name}"));
        if std::fs::copy(&from, &to).is_ok() {
            kept.push(to.display().to_string());
        }
    }
    kept
}

// One call site; the arguments are the session's distinct parts.
#[allow(clippy::too_many_arguments)]
fn receive_and_restore(
    conn: &Conn,
    cfg: &SessionConfig,
    work: &WorkDir,
    swrk: &mut Swrk,
    ps_ours: std::os::fd::OwnedFd,
    ps_criu: std::os::fd::OwnedFd,
    job: &mut Option<RuncRestore>,
    memory: Memory,
    criu: CriuVersions,
) -> Result<Outcome> {
    let Memory {
        lazy,
        mut fill_after,
        pre_copy,
    } = memory;
    // Page servers. Pre-copy: CRIU's, one per dump when the source asks (dest/precopy.rs).
    // --lazy: none, the memory comes after the resume (dest/lazy.rs). Else haul's own: the
    // connection's reader writes pagemap-*.img and pages-*.img into `work` (dest/page_images.rs).
    let mut page_servers = super::precopy::PageServers::default();
    let mut relay = None;
    let mut stop_pages = None;
    let mut page_images = None;
    if !lazy && !pre_copy {
        let dir = rustix::io::fcntl_dupfd_cloexec(&work.fd, 3)
            .map_err(|e| Error::other(format!("dup: {e}")))?;
        let stream = PageStream::new(Layout::of(criu.source), rustix::param::page_size() as u64);
        let images = Arc::new(PageImages::new(
            dir,
            work.path.clone(),
            stream,
            Layout::of(criu.here) == Layout::Wide,
            super::page_images::reply_over(conn.sender()),
        ));
        conn.set_page_filter(images.clone());
        page_images = Some(images);
        drop((ps_ours, ps_criu));
    } else if pre_copy {
        page_servers = super::precopy::PageServers::new(ps_criu);
        let ps_ours = Arc::new(ps_ours);
        conn.set_page_sink(ps_ours.clone());
        relay = Some(
            pages::spawn_outbound(ps_ours.clone(), conn.sender(), conn.counters.clone())
                .map_err(|e| wire(e, "page relay"))?,
        );
        // Whatever happens next, the page server must not wait forever on its socket.
        stop_pages = Some(scopeguard(ps_ours.clone()));
    }

    // Start the restoring CRIU now, so it is ready when the images are; for a container, with
    // the stdio pipes it hands over and inside the container's new cgroups.
    let mut restorer = spawn_restorer(cfg, job.as_mut())?;
    conn.send(Msg::Prepared(Prepared {}))
        .map_err(|e| wire(e, "prepared"))?;

    let mut tree = match job.as_mut() {
        Some(j) => j.tree_sink()?,
        None => None,
    };
    let mut sink = ImageSink::new(
        rustix::io::fcntl_dupfd_cloexec(&work.fd, 3)
            .map_err(|e| Error::other(format!("dup: {e}")))?,
    );
    loop {
        match conn
            .recv_until_silent(cfg.idle_timeout, "image transfer")
            .map_err(|e| match disk_full(&work.path) {
                Some(full) => Error::other(format!("{full} ({e})")),
                None => wire(e, "receiving images"),
            })? {
            Incoming::FileData(d) => match tree.as_mut() {
                Some(t) if t.in_file() => t.data(&d).map_err(|e| wire(e, "bundle"))?,
                _ => sink.data(&d).map_err(|e| wire(e, "images"))?,
            },
            Incoming::Control(Msg::TreeEntry(e)) => match tree.as_mut() {
                Some(t) => t.entry(e).map_err(|e| wire(e, "bundle"))?,
                None => return Err(Error::other("bundle tree sent without --fs copy")),
            },
            Incoming::Control(Msg::TreeDone(d)) => {
                log::info!(
                    "bundle pass {}: {} entries, {} bytes",
                    d.pass,
                    d.entries,
                    d.bytes
                );
            }
            Incoming::Control(Msg::FileBegin(b)) => {
                crate::util::fault_point("dst-receiving");
                sink.begin(b).map_err(|e| wire(e, "images"))?
            }
            Incoming::Control(Msg::FileEnd(e)) => match tree.as_mut() {
                Some(t) if t.in_file() => t.end(e).map_err(|e| wire(e, "bundle"))?,
                _ => sink.end(e).map_err(|e| wire(e, "images"))?,
            },
            Incoming::Control(Msg::PageServerStart(p)) => {
                page_servers.start(conn, swrk, work, p.iteration)?
            }
            Incoming::Control(Msg::ImagesDone(d)) => {
                sink.done(&d).map_err(|e| wire(e, "images"))?;
                page_servers.finish()?;
                // The source sends ImagesDone after its dump, whose page stream (read by this
                // connection's reader before it queued ImagesDone) ended with the close.
                if let Some(images) = page_images.take() {
                    let w = images.finish().map_err(|e| match disk_full(&work.path) {
                        Some(full) => Error::other(format!("{full} ({e})")),
                        None => Error::other(e),
                    })?;
                    log::debug!(
                        "page images: {} maps, {} runs, {} bytes of pages",
                        w.images,
                        w.runs,
                        w.page_bytes
                    );
                }
                break;
            }
            Incoming::Control(Msg::Abort(a)) => {
                return Err(Error::other(format!(
                    "source aborted during {}: {}",
                    crate::util::printable(&a.stage),
                    crate::util::printable(&a.reason)
                )))
            }
            Incoming::Control(other) => {
                return Err(Error::other(format!(
                    "unexpected {} while receiving images",
                    msg_name(&other)
                )))
            }
        }
    }
    // The source's CRIU closed its page stream before post-dump; our page server has answered
    // its close request, so its end is closing too.
    let received = match relay.map(|r| r.join()) {
        Some(Ok(Ok(_))) | None => crate::transfer::mux::load(&conn.counters.pages_in),
        Some(Ok(Err(e))) => return Err(wire(e, "page server stream")),
        Some(Err(_)) => return Err(Error::other("page relay thread failed")),
    };
    drop(stop_pages);
    // --lazy: the daemon that will fetch the memory, listening before the restore starts.
    let mut lazy_daemon = None;
    let mut lazy_relay = None;
    let mut prefetch = None;
    if lazy && super::fill::haul_fills() {
        let f = super::fill::Filler::start_remote(work, conn, Layout::of(criu.source))?;
        lazy_daemon = Some(Fill::Haul(f));
    } else if lazy {
        let d = super::lazy::start(&cfg.criu, work)?;
        let ps =
            d.ps.clone()
                .ok_or_else(|| Error::other("lazy-pages daemon without a page-server socket"))?;
        let (relay, filter) = super::prefetch::start_relay(ps, work.path.clone(), conn, criu.here)
            .map_err(|e| wire(e, "page relay"))?;
        lazy_relay = Some(relay);
        prefetch = filter;
        lazy_daemon = Some(Fill::Criu(d));
    }
    // Every page is here: the daemon fills the lazy ones from these images after the resume.
    // If it cannot start, the restore copies them in before the resume, as without userfaultfd.
    let mut fill_daemon = None;
    if fill_after {
        let started = if super::fill::haul_fills() {
            super::fill::Filler::start_local(work).map(Fill::Haul)
        } else {
            super::lazy::start_local(&cfg.criu, work).map(Fill::Criu)
        };
        match started {
            Ok(d) => {
                if crate::util::fault_named("dst-fill-fails") {
                    // It answers faults but fills nothing in the background until it is
                    // killed after the resume below, however little memory there is.
                    d.pause();
                }
                fill_daemon = Some(d)
            }
            Err(e) => {
                log::warn!("{e}; restoring all memory before the resume instead");
                fill_after = false;
            }
        }
    }
    log::info!(
        "received {:.1} MiB of pages and {} image files ({} bytes); restoring",
        received as f64 / 1048576.0,
        sink.files,
        sink.bytes
    );

    journal::write(
        &work.path,
        Stage::Restoring,
        job.as_ref().map(|j| j.dst_id()).unwrap_or(""),
    )?;
    let jid = job
        .as_ref()
        .map(|j| j.dst_id().to_string())
        .unwrap_or_default();
    let mut guard = None;
    let decide = |pid: i32| -> Result<Decision> {
        // Before the tasks may run: a fill that fails must stop them before it lets go of
        // their memory.
        for fill in [&lazy_daemon, &fill_daemon].into_iter().flatten() {
            fill.stop_tasks_on_failure(pid)?;
        }
        // Written before Ready: from here on, an interruption leaves the migration in doubt.
        journal::write(&work.path, Stage::Ready, &jid)?;
        conn.send(Msg::Ready(Ready { restored_pid: pid }))
            .map_err(|e| wire(e, "ready"))?;
        crate::util::fault_point("dst-ready");
        Ok(match conn.recv_control(cfg.commit_timeout, "commit") {
            // --lazy, or memory filled after the resume: from the resume, the tasks need the
            // daemon; if serve dies, they must not run on with missing memory.
            Ok(Msg::Commit(_)) if lazy || fill_after => {
                let t = Instant::now();
                match super::lazy::Guard::start(pid) {
                    Ok(g) => {
                        guard = Some(g);
                        log::debug!("guard started in {} us", t.elapsed().as_micros());
                        Decision::Commit
                    }
                    // The source's tasks are gone: keep the images, stop ours.
                    Err(e) => Decision::InDoubt(format!(
                        "the commit came, but the guard of the restored tasks did not start: {e}"
                    )),
                }
            }
            Ok(Msg::Commit(_)) => Decision::Commit,
            Ok(Msg::Abort(a)) => Decision::Abort(format!(
                "source aborted ({}): {}; restored tasks stopped",
                crate::util::printable(&a.stage),
                crate::util::printable(&a.reason)
            )),
            Ok(other) => Decision::Abort(format!("expected Commit, got {}", msg_name(&other))),
            // The source may or may not have stopped its tasks: never run a second copy; stop
            // ours and keep the images so the restore can be completed.
            Err(e) => Decision::InDoubt(format!("no commit from the source: {e}")),
        })
    };
    let restored_pid = match restore_held(
        work,
        job,
        &mut restorer,
        lazy || fill_after,
        !fill_after,
        decide,
    )? {
        Held::Done(pid) => pid,
        Held::InDoubt(why) if lazy => {
            // Without the source's memory these images cannot be completed: nothing to keep.
            return Err(Error::other(format!("{why}; post-copy never started")));
        }
        Held::InDoubt(why) => return Ok(Outcome::InDoubt(why)),
    };
    let resumed = Instant::now();
    let rs = stats::restore(&work.path).unwrap_or_default();
    let mut done = Done {
        restored_pid,
        restore_time_us: u64::from(rs.restore_time),
        forking_time_us: u64::from(rs.forking_time),
        pages_restored: rs.pages_restored.unwrap_or(0),
        page_bytes_received: received,
        ..Default::default()
    };
    if let Some(mut d) = lazy_daemon {
        let before = crate::transfer::mux::load(&conn.counters.pages_in);
        log::info!(
            "restored tasks (pid {restored_pid}) run; fetching their memory from the source (post-copy)"
        );
        let waited = conn
            .send(Msg::Resumed(Resumed { restored_pid }))
            .map_err(|e| wire(e, "resumed"))
            .and_then(|()| d.wait(conn, cfg.idle_timeout));
        let took = match waited {
            Ok(t) => t,
            Err(e) => {
                super::lazy::kill_restored(restored_pid);
                drop(d);
                return Err(super::lazy::lost(e));
            }
        };
        drop(d);
        if let Some(g) = guard.take() {
            g.done();
        }
        if let Some(Ok(Err(e))) = lazy_relay.map(|r| r.join()) {
            log::debug!("page relay after the post-copy: {e}");
        }
        if let Some(p) = prefetch {
            let c = p.counts();
            log::info!(
                "read-ahead: {} of the lazy-pages daemon's {} requests answered here ({} pages); {} pages fetched ahead, {} unused",
                c.from_cache,
                c.asked,
                c.pages_from_cache,
                c.prefetched,
                c.unused
            );
        }
        done.postcopy_us = took.as_micros() as u64;
        done.postcopy_bytes = crate::transfer::mux::load(&conn.counters.pages_in) - before;
        log::info!(
            "post-copy done: {:.1} MiB in {} ms",
            done.postcopy_bytes as f64 / 1048576.0,
            took.as_millis()
        );
    }
    if let Some(mut d) = fill_daemon {
        log::info!(
            "restored tasks (pid {restored_pid}) run; filling their memory from the images here"
        );
        journal_after_commit(work, job, Stage::Filling);
        // The source's downtime ends here, not when the fill is over. The source is no longer
        // needed: losing it now costs only its summary.
        if let Err(e) = conn.send(Msg::Resumed(Resumed { restored_pid })) {
            log::warn!("telling the source the tasks run: {e}");
        }
        crate::util::fault_point("dst-filling");
        if crate::util::fault_named("dst-fill-fails") {
            log::error!("HAUL_FAULT=dst-fill-fails: killing the lazy-pages daemon");
            d.kill();
        }
        let alive = || {
            if let Err(e) = conn.send_keepalive() {
                log::debug!("keepalive to the source: {e}");
            }
        };
        match d.wait_local(LOCAL_FILL_LIMIT, alive) {
            Ok(_) => {
                // From the resume (the restore's own end), not from this wait's start.
                let took = resumed.elapsed();
                done.fill_us = took.as_micros() as u64;
                log::info!("memory filled after the resume in {} ms", took.as_millis());
                journal_after_commit(work, job, Stage::Done);
            }
            Err(e) => {
                // The pages are all here, but tasks whose memory is not filled cannot run on:
                // stop them and keep the complete images for `haul recover` (the source's
                // tasks are gone).
                super::lazy::kill_restored(restored_pid);
                drop(d);
                return Ok(Outcome::InDoubt(format!(
                    "filling the restored memory after the resume failed: {e}"
                )));
            }
        }
        drop(d);
        if let Some(g) = guard.take() {
            g.done();
        }
    }
    // Done goes out after the clean-up below (migrate), so a source that exits 0 finds the
    // destination already tidy.
    Ok(Outcome::Done(done))
}

/// The CRIU versions of both sides: the page stream's headers are in the source's layout, the
/// page maps haul writes in the destination's format.
#[derive(Debug, Clone, Copy)]
struct CriuVersions {
    source: Version,
    here: Version,
}

/// How the memory reaches the restored tasks.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// `--lazy`: from the source after the resume (post-copy).
    lazy: bool,
    /// From this side's images after the resume (`fill_after_resume`).
    fill_after: bool,
    /// Pre-dump iterations with parent images.
    pre_copy: bool,
}

/// The name of the environment variable of `haul serve` that can turn the fill after the
/// resume off for every migration (`before-resume`), as `haul migrate --eager-restore` does
/// for one.
pub const FILL_ENV: &str = "HAUL_FILL";

/// Whether the memory of a migration without `--lazy` is filled after the resume: by default
/// yes where CRIU can restore with lazy pages (userfaultfd); not with `--eager-restore` or
/// `HAUL_FILL=before-resume`, and not with pre-copy (CRIU's lazy restore and parent images).
fn fill_after_resume(prepare: &Prepare, lazy_pages_here: bool) -> bool {
    let off_here = std::env::var(FILL_ENV)
        .map(|v| v.eq_ignore_ascii_case("before-resume"))
        .unwrap_or(false);
    fill_after(prepare, lazy_pages_here, off_here)
}

fn fill_after(prepare: &Prepare, lazy_pages_here: bool, off_here: bool) -> bool {
    !prepare.lazy && !prepare.pre_copy && !prepare.eager_restore && lazy_pages_here && !off_here
}

/// "the destination's work directory ... is full" when it has almost no space left (a page
/// server that stopped taking pages usually means this).
fn disk_full(dir: &std::path::Path) -> Option<String> {
    let st = rustix::fs::statvfs(dir).ok()?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    (free < 4 << 20).then(|| {
        format!(
            "the destination's work directory {} is full ({} KiB free)",
            dir.display(),
            free / 1024
        )
    })
}

/// Starts the restoring CRIU: for a container, with the stdio pipes it hands over (inherited,
/// then haul's copies closed) and moved into the container's new cgroups.
pub fn spawn_restorer(cfg: &SessionConfig, job: Option<&mut RuncRestore>) -> Result<Swrk> {
    let Some(j) = job else {
        return Swrk::spawn(&cfg.criu, &[]).map_err(|e| Error::setup(e.to_string()));
    };
    j.plumb()?;
    let restorer = {
        let fds = j.restorer_fds();
        Swrk::spawn_in(&cfg.criu, &fds, j.restorer_netns())
            .map_err(|e| Error::setup(e.to_string()))?
    };
    j.release_pipes();
    let pid = restorer
        .pid()
        .ok_or_else(|| Error::other("restoring criu has no pid"))?;
    j.attach(pid)?;
    Ok(restorer)
}

/// What the destination does with tasks held at post-restore.
pub enum Decision {
    /// Let them run.
    Commit,
    /// Stop them: the migration failed.
    Abort(String),
    /// Stop them and keep the images: the source may have stopped its tasks.
    InDoubt(String),
}

pub enum Held {
    Done(i32),
    InDoubt(String),
}

/// Runs RESTORE on `restorer` from `work`, holding the tasks at post-restore (registered with
/// runc for a container) until `decide` says what to do with them. `lazy`: restore with lazy
/// pages (a lazy-pages daemon fills the memory after the resume). `journal_done`: mark the
/// journal done once the tasks run; the fill after the resume leaves that to its own end, so a
/// crash during the fill leaves the complete images in doubt, not removed.
pub fn restore_held(
    work: &WorkDir,
    job: &mut Option<RuncRestore>,
    restorer: &mut Swrk,
    lazy: bool,
    journal_done: bool,
    mut decide: impl FnMut(i32) -> Result<Decision>,
) -> Result<Held> {
    restorer.set_log(work.path.join("restore.log"));
    if let Some(j) = job.as_mut() {
        j.mount_root(work)?;
    }
    let mut opts = match job.as_ref() {
        Some(j) => j.restore_opts(work.raw()),
        None => crate::plan::pid::restore(work.raw()),
    };
    if lazy {
        opts.lazy_pages = Some(true);
    }
    restorer
        .send(&Swrk::request(CriuReqType::Restore, opts))
        .map_err(|e| Error::other(e.to_string()))?;
    crate::util::fault_point("dst-restoring");
    let mut restored_pid = 0;
    let mut committed = false;
    loop {
        let ev = match restorer.next_event() {
            Ok(ev) => ev,
            // The commit came: the source's tasks are gone, these images are the only complete
            // copy. A CRIU failure after that must not remove them (the caller's error path
            // would): whether the tasks run decides.
            Err(e) if committed => {
                if restored_pid > 0 && crate::source::migrate::process_exists(restored_pid) {
                    log::warn!("criu failed after the restored tasks were let run; they run: {e}");
                    break;
                }
                return Ok(Held::InDoubt(format!(
                    "criu failed after the commit and the restored tasks are gone: {e}"
                )));
            }
            Err(e) => return Err(Error::other(e.to_string())),
        };
        match ev {
            Event::Notify { script, pid } if script == "post-restore" => {
                restored_pid = pid;
                if let Some(j) = job.as_mut() {
                    if let Err(e) = j.register(pid) {
                        let _ = restorer.notify_reply(false);
                        return Err(e.context("registering with runc"));
                    }
                }
                let decision = match decide(pid) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = restorer.notify_reply(false);
                        return Err(e);
                    }
                };
                match decision {
                    Decision::Commit => {
                        // Whether CRIU got it shows at its next event (above).
                        if let Err(e) = restorer.notify_reply(true) {
                            log::warn!("answering post-restore: {e}");
                        }
                        committed = true;
                    }
                    Decision::Abort(why) => {
                        let _ = restorer.notify_reply(false);
                        return Err(Error::other(why));
                    }
                    Decision::InDoubt(why) => {
                        let _ = restorer.notify_reply(false);
                        return Ok(Held::InDoubt(why));
                    }
                }
            }
            Event::Notify { .. } => {
                if let Err(e) = restorer.notify_reply(true) {
                    if !committed {
                        return Err(Error::other(e.to_string()));
                    }
                    log::warn!("answering a notification after the commit: {e}");
                }
            }
            Event::Done(resp) => {
                if let Some(r) = resp.restore {
                    restored_pid = r.pid;
                }
                break;
            }
        }
    }
    if job.is_some() && restored_pid > 0 {
        reap_later(restored_pid);
    }
    if !committed {
        return Err(Error::other(
            "criu finished the restore without post-restore",
        ));
    }
    if journal_done {
        journal_after_commit(work, job, Stage::Done);
    }
    Ok(Held::Done(restored_pid))
}

/// Writes the journal once the tasks run: a failure (disk full) is logged, never taken for a
/// failed migration, whose clean-up would remove the only complete images.
fn journal_after_commit(work: &WorkDir, job: &Option<RuncRestore>, stage: Stage) {
    let id = job.as_ref().map(|j| j.dst_id()).unwrap_or("");
    let written = if crate::util::fault_named("dst-journal-fails") {
        Err(Error::other("HAUL_FAULT=dst-journal-fails"))
    } else {
        journal::write(&work.path, stage, id)
    };
    if let Err(e) = written {
        log::error!("the restored tasks run, but the journal could not say so ({stage:?}): {e}");
    }
}

/// With `rst_sibling` the restored init is haul's child: reap it when it exits.
fn reap_later(pid: i32) {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("haul-reaper".into())
        .spawn(move || {
            let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
        });
}

/// Shuts the page socket down when dropped, so a page server still waiting exits.
struct PageStop(Arc<std::os::fd::OwnedFd>);

fn scopeguard(fd: Arc<std::os::fd::OwnedFd>) -> PageStop {
    PageStop(fd)
}

impl Drop for PageStop {
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&*self.0, rustix::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod fill_tests {
    use super::*;

    /// The fill after the resume is the default where CRIU can restore lazily, and only there;
    /// --lazy (memory from the source), pre-copy, --eager-restore and HAUL_FILL=before-resume
    /// each turn it off.
    #[test]
    fn the_fill_after_the_resume_is_the_default_only_where_it_can_run() {
        let plain = Prepare::default();
        assert!(fill_after(&plain, true, false));
        assert!(!fill_after(&plain, false, false), "no userfaultfd here");
        assert!(!fill_after(&plain, true, true), "HAUL_FILL=before-resume");
        for p in [
            Prepare {
                lazy: true,
                ..Default::default()
            },
            Prepare {
                pre_copy: true,
                ..Default::default()
            },
            Prepare {
                eager_restore: true,
                ..Default::default()
            },
        ] {
            assert!(!fill_after(&p, true, false), "{p:?}");
        }
    }
}
