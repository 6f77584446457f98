//! Whole migrations between two haul instances in one test process: the source orchestrator
//! (`migrate_pid`) and a destination session (`dest::session::run`, as `haul serve` runs it)
//! talk over a real loopback TCP connection authenticated with a key, each driving the fake
//! CRIU of `criu::builtin_fake` instead of `criu swrk`. No root, no CRIU, no exec, so they
//! also run under qemu-user (`cargo xtask test --target aarch64-unknown-linux-musl`).
//!
//! The fake never touches the pid it "dumps" (the test process itself) nor the pid it
//! "restores"; the destination serves a pid migration, which mounts nothing and creates no
//! cgroups. Each test has its own port, directories and fake tags, so they run in parallel.

use crate::criu::builtin_fake::{self, Log};
use crate::dest::serve::{Limits, Slot};
use crate::dest::session::{self, SessionConfig};
use crate::error::{Error, Kind};
use crate::limits::PENDING_HANDSHAKES;
use crate::source::migrate::{migrate_pid, Options};
use crate::source::precopy::{Mode, Settings};
use crate::transfer::{handshake, Conn, Key};
use haul_proto::haul::{
    control::Msg, Commit, FileBegin, FileEnd, Hello, ImagesDone, Prepare, Purpose,
};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A fresh directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("haul-protocol-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fake CRIU's path, its sessions filed under `tag`.
fn fake(tag: &str, options: &str) -> PathBuf {
    PathBuf::from(format!("{},tag={tag}{options}", builtin_fake::PATH))
}

/// A destination that serves one connection, as `haul serve` does, on 127.0.0.1.
struct Destination {
    addr: String,
    work_root: PathBuf,
    thread: JoinHandle<()>,
}

fn destination(dir: &Scratch, key: Key, criu: PathBuf) -> Destination {
    destination_with(dir, key, criu, false, crate::limits::COMMIT_TIMEOUT)
}

/// A destination that keeps the images after a restore (`--keep-images`) if `keep_images`.
fn destination_keeping(dir: &Scratch, key: Key, criu: PathBuf, keep_images: bool) -> Destination {
    destination_with(dir, key, criu, keep_images, crate::limits::COMMIT_TIMEOUT)
}

fn destination_with(
    dir: &Scratch,
    key: Key,
    criu: PathBuf,
    keep_images: bool,
    commit_timeout: std::time::Duration,
) -> Destination {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let work_root = dir.join("dst-work");
    let cfg = SessionConfig {
        key: Some(key),
        criu,
        work_root: work_root.clone(),
        keep_images,
        runc_root: dir.join("runc"),
        bundle_root: dir.join("bundles"),
        stdio_dir: dir.join("stdio"),
        runc: "runc".into(),
        idle_timeout: crate::limits::IDLE_TIMEOUT,
        commit_timeout,
    };
    let thread = std::thread::spawn(move || {
        let limits = Limits::new();
        let (stream, peer) = listener.accept().unwrap();
        let pending = Slot::take(&limits.pending, PENDING_HANDSHAKES).unwrap();
        session::run(stream, &peer.to_string(), &cfg, &limits, pending);
    });
    Destination {
        addr,
        work_root,
        thread,
    }
}

/// What a migration left: the source's result and what each side's fake saw.
struct Outcome {
    result: Result<(), Error>,
    source: Vec<Log>,
    destination: Vec<Log>,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "source fake: {:#?}\ndestination fakes: {:#?}",
            self.source, self.destination
        )
    }

    /// The destination's fake session (or page server) whose log starts with `first`.
    fn dst(&self, first: &str) -> &Log {
        self.destination
            .iter()
            .find(|l| l.events.first().is_some_and(|e| e.starts_with(first)))
            .unwrap_or_else(|| {
                panic!(
                    "no destination fake began with {first}\n{}",
                    self.describe()
                )
            })
    }
}

/// Migrates this test process's pid (the fake dumps nothing) to `dst` and waits for both sides.
fn migrate(s: &Scratch, dst: Destination, tag: &str, key: &Key, dst_tag: &str) -> Outcome {
    migrate_with(s, dst, (tag, ""), key, dst_tag, Settings::default())
}

/// `migrate` with options for the source's fake (`src.1`) and `--pre-dump*` settings.
fn migrate_with(
    s: &Scratch,
    dst: Destination,
    src: (&str, &str),
    key: &Key,
    dst_tag: &str,
    pre_dump: Settings,
) -> Outcome {
    let (tag, options) = src;
    let criu = fake(tag, options);
    let work_root = s.join("src-work");
    let stats = s.join("stats.json");
    let o = Options {
        to: &dst.addr,
        key: Some(key),
        criu: &criu,
        work_root: &work_root,
        stats_json: Some(&stats),
        keep_work: false,
        quiet: true,
        lazy: false,
        // The fake CRIU has no lazy-pages daemon: the destination restores everything before
        // the resume (the fill after it runs with real CRIU in tests/migrate_*).
        eager_restore: true,
        pre_dump,
    };
    let pid = i32::try_from(std::process::id()).unwrap();
    let result = migrate_pid(pid, &o);
    dst.thread.join().unwrap();
    Outcome {
        result,
        source: builtin_fake::join(tag),
        destination: builtin_fake::join(dst_tag),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The number after `"field":` in the summary JSON.
fn json_number(json: &str, field: &str) -> u64 {
    let key = format!("\"{field}\":");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("{field} missing: {json}"))
        + key.len();
    let digits: String = json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a number: {json}"))
}

fn events(log: &Log) -> Vec<&str> {
    log.events.iter().map(String::as_str).collect()
}

#[test]
fn a_pid_migration_runs_the_whole_protocol_over_loopback() {
    let s = Scratch::new("full");
    let key = Key::generate().unwrap();
    let dst = destination(&s, key.clone(), fake("full-dst", ""));
    let dst_work = dst.work_root.clone();
    let out = migrate(&s, dst, "full-src", &key, "full-dst");
    if let Err(e) = &out.result {
        panic!("migration failed: {e}\n{}", out.describe());
    }
    for log in out.source.iter().chain(&out.destination) {
        assert!(log.failure.is_none(), "{}", out.describe());
    }

    assert_eq!(out.source.len(), 1, "{}", out.describe());
    // --pre-dump auto asks for memory tracking, which this fake lacks: one dump.
    assert_eq!(
        events(&out.source[0]),
        [
            "VERSION",
            "FEATURE_CHECK",
            "DUMP",
            "pre-dump -> true",
            "post-dump -> true",
            "DUMP ok"
        ]
    );
    // Welcome's VERSION and features, the restorer; no CRIU page server: haul wrote the
    // pages (the restorer found pages-1.img as the source's fake sent it: "images intact").
    assert_eq!(out.destination.len(), 2, "{}", out.describe());
    assert_eq!(
        events(out.dst("VERSION")),
        ["VERSION", "FEATURE_CHECK", "closed"]
    );
    assert_eq!(
        events(out.dst("RESTORE")),
        [
            "RESTORE",
            "images intact",
            "pre-restore -> true",
            "setup-namespaces -> true",
            "post-restore -> true",
            "pre-resume -> true",
            "post-resume -> true",
            "RESTORE ok"
        ]
    );

    let json = std::fs::read_to_string(s.join("stats.json")).unwrap();
    assert_eq!(
        json_number(&json, "page_bytes"),
        builtin_fake::PAGE_STREAM_LEN as u64 + builtin_fake::SESSION_OVERHEAD
    );
    assert!(
        json.contains(r#""pre_dump":{"mode":"auto","stop":"no-memory-tracking""#),
        "{json}"
    );
    assert!(json.contains(r#""iterations":[]"#), "{json}");
    assert_eq!(
        json_number(&json, "restored_pid"),
        builtin_fake::RESTORED_PID as u64
    );
    let images = builtin_fake::image_files();
    assert_eq!(json_number(&json, "image_files"), images.len() as u64);
    assert_eq!(
        json_number(&json, "image_bytes"),
        images.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    );
    // CRIU's stats files on each side reach the summary.
    assert_eq!(json_number(&json, "pages_written"), builtin_fake::PAGES);
    assert_eq!(
        json_number(&json, "criu_frozen_us"),
        u64::from(builtin_fake::DUMP_FROZEN_US)
    );
    assert_eq!(
        json_number(&json, "criu_restore_us"),
        u64::from(builtin_fake::RESTORE_US)
    );
    assert!(
        entries(&dst_work).is_empty(),
        "destination left {:?}",
        entries(&dst_work)
    );
    assert!(entries(&s.join("src-work")).is_empty(), "source work left");
}

#[test]
fn a_failed_restore_rolls_the_source_back() {
    let s = Scratch::new("rollback");
    let key = Key::generate().unwrap();
    let dst = destination(&s, key.clone(), fake("rollback-dst", ",fail-restore"));
    let dst_work = dst.work_root.clone();
    let out = migrate(&s, dst, "rollback-src", &key, "rollback-dst");
    let err = match &out.result {
        Ok(()) => panic!("the migration succeeded\n{}", out.describe()),
        Err(e) => e,
    };
    assert_eq!(err.kind, Kind::RolledBack, "{err}\n{}", out.describe());
    assert!(
        err.message.contains(builtin_fake::RESTORE_REFUSED),
        "the source's error does not quote the destination's: {err}"
    );
    for log in out.source.iter().chain(&out.destination) {
        assert!(log.failure.is_none(), "{}", out.describe());
    }
    // The source's CRIU was told the post-dump script failed: the tasks resume there.
    assert_eq!(
        events(&out.source[0]),
        [
            "VERSION",
            "FEATURE_CHECK",
            "DUMP",
            "pre-dump -> true",
            "post-dump -> false",
            "DUMP failed"
        ]
    );
    assert_eq!(
        events(out.dst("RESTORE")),
        [
            "RESTORE",
            "images intact",
            "pre-restore -> true",
            "RESTORE failed"
        ]
    );
    assert!(
        !s.join("stats.json").exists(),
        "summary of a failed migration"
    );
    // The destination removed its work directory and kept CRIU's log of the failed restore.
    assert_eq!(entries(&dst_work), ["logs"]);
    let logs = entries(&dst_work.join("logs"));
    assert!(
        logs.len() == 1 && logs[0].ends_with("-restore.log"),
        "kept logs: {logs:?}"
    );
}

#[test]
fn a_wrong_key_is_refused_before_the_destination_starts_criu() {
    let s = Scratch::new("auth");
    let dst = destination(&s, Key::generate().unwrap(), fake("auth-dst", ""));
    let dst_work = dst.work_root.clone();
    let out = migrate(&s, dst, "auth-src", &Key::generate().unwrap(), "auth-dst");
    let err = match &out.result {
        Ok(()) => panic!("the migration succeeded with a wrong key"),
        Err(e) => e,
    };
    assert_eq!(err.kind, Kind::Auth, "{err}");
    assert!(
        out.destination.is_empty(),
        "the destination started CRIU for an unauthenticated peer: {}",
        out.describe()
    );
    // The source only asked its CRIU's version, then let it go.
    assert_eq!(out.source.len(), 1, "{}", out.describe());
    assert_eq!(events(&out.source[0]), ["VERSION", "closed"]);
    assert!(out.source[0].failure.is_none(), "{}", out.describe());
    assert!(entries(&dst_work).is_empty());
    assert!(entries(&s.join("src-work")).is_empty());
}

/// A source scripted through haul's own library: authenticated, Hello and Prepare of a pid
/// migration, the fake's page-server session and image files, ImagesDone; returns the connection once
/// the destination reported Ready, and the socket standing in for its CRIU's page socket.
fn scripted_source_until_ready(addr: &str, key: &Key) -> (Conn, OwnedFd) {
    use crate::transfer::frame::{Kind, PAYLOAD_MAX};
    use crate::transfer::mux::send_frame;
    let (tx, rx) = handshake::connect(TcpStream::connect(addr).unwrap(), Some(key)).unwrap();
    let conn = Conn::start(tx, rx);
    // What the destination's page server sends back goes to a socket nobody reads.
    let (sink, criu) = crate::transfer::pages::socket_pair().unwrap();
    conn.set_page_sink(Arc::new(sink));
    let wait = Duration::from_secs(10);
    conn.send(Msg::Hello(Hello {
        protocol: u32::from(crate::transfer::PROTOCOL_VERSION),
        agent_version: "scripted".into(),
        criu: None,
        purpose: Purpose::MigratePid as i32,
        migration_id: "scripted".into(),
    }))
    .unwrap();
    assert!(matches!(
        conn.recv_control(wait, "welcome"),
        Ok(Msg::Welcome(_))
    ));
    // The fake CRIU has no lazy-pages daemon: everything is restored before the resume.
    conn.send(Msg::Prepare(Prepare {
        eager_restore: true,
        ..Default::default()
    }))
    .unwrap();
    assert!(matches!(
        conn.recv_control(wait, "prepared"),
        Ok(Msg::Prepared(_))
    ));
    let tx = conn.sender();
    // One page-server session of the fake (CRIU's protocol), sent without waiting for the
    // destination's answers.
    let session = builtin_fake::session_stream(&builtin_fake::page_stream());
    for chunk in session.chunks(PAYLOAD_MAX) {
        send_frame(&tx, Kind::PageData, chunk).unwrap();
    }
    send_frame(&tx, Kind::PageEof, &[]).unwrap();
    let (mut files, mut bytes) = (0, 0);
    for (name, data) in builtin_fake::image_files() {
        conn.send(Msg::FileBegin(FileBegin {
            name: name.into(),
            mode: 0o600,
        }))
        .unwrap();
        for chunk in data.chunks(PAYLOAD_MAX) {
            conn.send_file_data(chunk).unwrap();
        }
        conn.send(Msg::FileEnd(FileEnd {
            size: data.len() as u64,
        }))
        .unwrap();
        files += 1;
        bytes += data.len() as u64;
    }
    conn.send(Msg::ImagesDone(ImagesDone { files, bytes }))
        .unwrap();
    match conn.recv_control(wait, "ready") {
        Ok(Msg::Ready(r)) => assert_eq!(r.restored_pid, builtin_fake::RESTORED_PID),
        other => panic!("expected Ready, got {other:?}"),
    }
    (conn, criu)
}

/// The destination holds the restored tasks for Commit at most its commit timeout (1 s here,
/// COMMIT_TIMEOUT in haul): a Commit inside it lets them run; without one it stops them and
/// keeps the complete images in doubt.
#[test]
fn the_commit_wait_ends_at_its_limit_and_keeps_the_images_in_doubt() {
    let limit = Duration::from_secs(1);
    for (tag, commit_after) in [("commit-in-time", Some(limit / 2)), ("commit-never", None)] {
        let s = Scratch::new(tag);
        let key = Key::generate().unwrap();
        let dst = destination_with(&s, key.clone(), fake(tag, ""), false, limit);
        let work_root = dst.work_root.clone();
        let (conn, _page_socket) = scripted_source_until_ready(&dst.addr, &key);
        let ready = Instant::now();
        match commit_after {
            Some(after) => {
                std::thread::sleep(after);
                conn.send(Msg::Commit(Commit {})).unwrap();
                match conn.recv_control(Duration::from_secs(10), "done") {
                    Ok(Msg::Done(d)) => assert_eq!(d.restored_pid, builtin_fake::RESTORED_PID),
                    other => panic!("{tag}: expected Done, got {other:?}"),
                }
                dst.thread.join().unwrap();
                assert!(
                    entries(&work_root).is_empty(),
                    "{tag}: {:?}",
                    entries(&work_root)
                );
                let events = builtin_fake::join(tag);
                let restore = events.iter().find(|l| l.saw("RESTORE ok"));
                assert!(
                    restore.is_some_and(|l| l.saw("post-restore -> true")),
                    "{events:#?}"
                );
            }
            None => {
                match conn.recv_control(limit * 5, "abort") {
                    Ok(Msg::Abort(a)) => assert!(a.reason.contains("IN DOUBT"), "{a:?}"),
                    other => panic!("{tag}: expected Abort, got {other:?}"),
                }
                // The destination's wait starts when it sends Ready, a moment before this side
                // has read it: allow that moment.
                let waited = ready.elapsed();
                assert!(
                    waited + Duration::from_millis(100) >= limit && waited < limit * 3,
                    "{waited:?}"
                );
                dst.thread.join().unwrap();
                let kept = entries(&work_root);
                assert_eq!(kept.len(), 1, "{kept:?}");
                let dir = work_root.join(&kept[0]);
                let note = std::fs::read_to_string(dir.join("IN-DOUBT")).unwrap();
                assert!(note.contains("no commit from the source"), "{note}");
                assert!(dir.join("pages-1.img").is_file() && dir.join("core-1.img").is_file());
                let events = builtin_fake::join(tag);
                assert!(
                    events.iter().any(|l| l.saw("post-restore -> false")),
                    "{events:#?}"
                );
            }
        }
        conn.close();
    }
}

/// The logs of the destination's page servers, in the order they started.
fn page_servers(out: &Outcome) -> Vec<&Log> {
    out.destination
        .iter()
        .filter(|l| {
            l.events
                .first()
                .is_some_and(|e| e.starts_with("page server"))
        })
        .collect()
}

/// The one migration directory the destination kept (`--keep-images`).
fn kept_dir(work_root: &Path) -> PathBuf {
    let dirs: Vec<String> = entries(work_root)
        .into_iter()
        .filter(|e| e.starts_with("m-"))
        .collect();
    assert_eq!(dirs.len(), 1, "kept: {dirs:?}");
    work_root.join(&dirs[0])
}

fn pre_copy_settings(mode: Mode, max_iterations: u32) -> Settings {
    Settings::from_flags(mode, max_iterations, 64, 10).unwrap()
}

#[test]
fn pre_copy_iterates_then_the_destination_restores_down_the_parent_chain() {
    let s = Scratch::new("precopy");
    let key = Key::generate().unwrap();
    let dst = destination_keeping(&s, key.clone(), fake("precopy-dst", ""), true);
    let dst_work = dst.work_root.clone();
    // 120 pages, then 90 (shrinking: go on), then 40 (at most 64: stop).
    let pages = [120u64, 90, 40];
    let out = migrate_with(
        &s,
        dst,
        ("precopy-src", ",mem-track,pre-dump-pages=120/90/40"),
        &key,
        "precopy-dst",
        Settings::default(),
    );
    if let Err(e) = &out.result {
        panic!("migration failed: {e}\n{}", out.describe());
    }
    for log in out.source.iter().chain(&out.destination) {
        assert!(log.failure.is_none(), "{}", out.describe());
    }

    // One swrk: FEATURE_CHECK, the PRE_DUMP chain, then the DUMP on the last pre-dump.
    assert_eq!(out.source.len(), 1, "{}", out.describe());
    assert_eq!(
        events(&out.source[0]),
        [
            "VERSION",
            "FEATURE_CHECK",
            "PRE_DUMP",
            "pre-dump 1: 120 pages, parent none",
            "PRE_DUMP",
            "pre-dump 2: 90 pages, parent ../pre-1",
            "PRE_DUMP",
            "pre-dump 3: 40 pages, parent ../pre-2",
            "DUMP",
            "DUMP parent pre-3",
            "pre-dump -> true",
            "post-dump -> true",
            "DUMP ok"
        ]
    );
    // The destination's swrk started a page server per dump, the last one without keep_open.
    let mut want = vec!["VERSION", "FEATURE_CHECK"];
    want.extend(["PAGE_SERVER", "PAGE_SERVER ok"].repeat(4));
    assert_eq!(events(out.dst("VERSION")), want);
    let sessions: Vec<String> = page_servers(&out)
        .iter()
        .map(|l| l.events.join(" "))
        .collect();
    let mut want: Vec<String> = pages
        .iter()
        .map(|p| format!("page server: {} bytes", p * builtin_fake::PAGE_SIZE))
        .collect();
    want.push(format!(
        "page server: {} bytes",
        builtin_fake::PAGE_STREAM_LEN
    ));
    assert_eq!(sessions, want);
    let restore = events(out.dst("RESTORE"));
    assert!(
        restore.contains(&"parent chain: 3 pre-dumps intact") && restore.contains(&"RESTORE ok"),
        "{restore:?}"
    );

    // The destination made the per-iteration directories, CRIU linked them.
    let kept = kept_dir(&dst_work);
    let link = |p: PathBuf| std::fs::read_link(&p).map(|l| l.display().to_string());
    assert_eq!(link(kept.join("parent")).unwrap(), "pre-3");
    assert_eq!(link(kept.join("pre-3/parent")).unwrap(), "../pre-2");
    assert_eq!(link(kept.join("pre-2/parent")).unwrap(), "../pre-1");
    assert!(!kept.join("pre-1/parent").exists());
    for (k, p) in pages.iter().enumerate() {
        let img = kept.join(format!("pre-{}/pages-1.img", k + 1));
        assert_eq!(
            std::fs::metadata(&img).unwrap().len(),
            p * builtin_fake::PAGE_SIZE,
            "{}",
            img.display()
        );
    }

    // The summary: three iterations, why they stopped, and the final dump's own bytes.
    let json = std::fs::read_to_string(s.join("stats.json")).unwrap();
    assert!(
        json.contains(r#""pre_dump":{"mode":"auto","stop":"few-pages""#),
        "{json}"
    );
    for p in pages {
        let it = format!(
            r#"{{"pages_written":{p},"pages_scanned":{},"bytes":{},"#,
            builtin_fake::PAGES,
            p * builtin_fake::PAGE_SIZE + builtin_fake::SESSION_OVERHEAD
        );
        assert!(json.contains(&it), "{it} in {json}");
    }
    assert_eq!(
        json.matches(&format!(
            r#""frozen_us":{}}}"#,
            builtin_fake::PRE_DUMP_FROZEN_US
        ))
        .count(),
        3,
        "{json}"
    );
    assert_eq!(
        json_number(&json, "page_bytes"),
        builtin_fake::PAGE_STREAM_LEN as u64 + builtin_fake::SESSION_OVERHEAD
    );
    assert!(entries(&s.join("src-work")).is_empty(), "source work left");
}

#[test]
fn pre_copy_stops_at_the_iteration_limit() {
    let s = Scratch::new("precopy-max");
    let key = Key::generate().unwrap();
    let dst = destination(&s, key.clone(), fake("precopy-max-dst", ""));
    let dst_work = dst.work_root.clone();
    let out = migrate_with(
        &s,
        dst,
        ("precopy-max-src", ",mem-track,pre-dump-pages=100"),
        &key,
        "precopy-max-dst",
        pre_copy_settings(Mode::Always, 2),
    );
    if let Err(e) = &out.result {
        panic!("migration failed: {e}\n{}", out.describe());
    }
    let src = events(&out.source[0]);
    assert_eq!(
        src.iter().filter(|e| **e == "PRE_DUMP").count(),
        2,
        "{src:?}"
    );
    assert!(src.contains(&"DUMP parent pre-2"), "{src:?}");
    let json = std::fs::read_to_string(s.join("stats.json")).unwrap();
    assert!(
        json.contains(r#""mode":"always","stop":"max-iterations""#),
        "{json}"
    );
    assert_eq!(json.matches(r#""pages_written":100,"#).count(), 2, "{json}");
    // Without --keep-images the destination removes every iteration's directory.
    assert!(entries(&dst_work).is_empty(), "{:?}", entries(&dst_work));
}

#[test]
fn a_failed_pre_dump_rolls_back_and_both_sides_clean_up() {
    let s = Scratch::new("precopy-fail");
    let key = Key::generate().unwrap();
    let dst = destination(&s, key.clone(), fake("precopy-fail-dst", ""));
    let dst_work = dst.work_root.clone();
    let out = migrate_with(
        &s,
        dst,
        (
            "precopy-fail-src",
            ",mem-track,pre-dump-pages=100,fail-pre-dump=2",
        ),
        &key,
        "precopy-fail-dst",
        Settings::default(),
    );
    let err = match &out.result {
        Ok(()) => panic!("the migration succeeded\n{}", out.describe()),
        Err(e) => e,
    };
    assert_eq!(err.kind, Kind::RolledBack, "{err}");
    for needed in [
        "pre-dump 2 failed",
        builtin_fake::PRE_DUMP_REFUSED,
        "keeps running on this host",
        "CRIU log kept",
    ] {
        assert!(err.message.contains(needed), "{needed:?} not in: {err}");
    }
    assert_eq!(
        events(&out.source[0]),
        [
            "VERSION",
            "FEATURE_CHECK",
            "PRE_DUMP",
            "pre-dump 1: 100 pages, parent none",
            "PRE_DUMP",
            "pre-dump 2 failed"
        ]
    );
    assert!(out.source[0].failure.is_none(), "{}", out.describe());
    // The second iteration's page server never got its session: it ends when haul closes the
    // page socket, as CRIU's would.
    let ps = page_servers(&out);
    assert_eq!(ps.len(), 2, "{}", out.describe());
    assert!(ps[0].failure.is_none(), "{}", out.describe());
    assert!(
        ps[1]
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("end of stream")),
        "{}",
        out.describe()
    );
    // Nothing restored, nothing left but the (empty) logs directory; the source kept the
    // failed iteration's CRIU log.
    assert!(out.destination.iter().all(|l| !l.saw("RESTORE")));
    assert_eq!(entries(&dst_work), ["logs"]);
    let logs = entries(&s.join("src-work").join("logs"));
    assert!(
        logs.len() == 1 && logs[0].ends_with("-dump.log"),
        "kept logs: {logs:?}"
    );
    let text = std::fs::read_to_string(s.join("src-work/logs").join(&logs[0])).unwrap();
    assert!(text.contains(builtin_fake::PRE_DUMP_REFUSED), "{text}");
    assert_eq!(entries(&s.join("src-work")), ["logs"]);
}

#[test]
fn pre_dump_always_without_memory_tracking_fails_before_anything_freezes() {
    let s = Scratch::new("precopy-always");
    let key = Key::generate().unwrap();
    let dst = destination(&s, key.clone(), fake("precopy-always-dst", ""));
    let dst_work = dst.work_root.clone();
    let out = migrate_with(
        &s,
        dst,
        ("precopy-always-src", ""),
        &key,
        "precopy-always-dst",
        pre_copy_settings(Mode::Always, 8),
    );
    let err = match &out.result {
        Ok(()) => panic!("the migration succeeded\n{}", out.describe()),
        Err(e) => e,
    };
    assert_eq!(err.kind, Kind::Setup, "{err}");
    assert_eq!(err.kind.exit_code(), 3);
    for needed in ["--pre-dump always", "memory tracking", "nothing was frozen"] {
        assert!(err.message.contains(needed), "{needed:?} not in: {err}");
    }
    // The source asked CRIU's features and nothing else: no PRE_DUMP, no DUMP.
    assert_eq!(
        events(&out.source[0]),
        ["VERSION", "FEATURE_CHECK", "closed"]
    );
    // The destination heard why, started no page server and created no directory.
    assert_eq!(
        events(out.dst("VERSION")),
        ["VERSION", "FEATURE_CHECK", "closed"]
    );
    assert_eq!(out.destination.len(), 1, "{}", out.describe());
    assert!(entries(&dst_work).is_empty(), "{:?}", entries(&dst_work));
    assert!(entries(&s.join("src-work")).is_empty());
    assert!(!s.join("stats.json").exists());
}
