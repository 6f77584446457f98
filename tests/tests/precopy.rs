//! End to end, real CRIU: `haul migrate pid --pre-dump ...` between the "src" and "dst" network
//! namespaces. This kind of machine has no soft-dirty bits (CRIU's FEATURE_CHECK reports
//! `mem_track` false), so real pre-dumps cannot run here: `auto` must fall back to one dump and
//! say why, and `always` must fail before anything is frozen. The iterations themselves are
//! tested against scripted CRIUs (agent/src/source/precopy.rs, agent/src/protocol_tests.rs).
//! On a host that can track memory, the same tests check that pre-copy ran instead.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use haul_e2e::*;

use std::process::Command;
use std::time::Duration;

const PORT: u16 = 7070;

/// Longest heartbeat gap allowed while nothing may freeze the workload: it beats every 5 ms;
/// the slack is for a busy 2-core machine, far below a dump's freeze plus restore.
const UNFROZEN_GAP: Duration = Duration::from_millis(1500);

fn setup(tag: &str) -> Option<PidLab> {
    PidLab::create(tag, PORT)
}

/// Whether this host's kernel and CRIU can track memory (`criu check --feature
/// mem_dirty_track` succeeds), which decides what `auto` and `always` must do.
fn tracks_memory(s: &PidLab) -> bool {
    let criu = s.lab.tool("criu").unwrap();
    let out = Command::new(criu)
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .unwrap();
    let yes = out.status.success();
    eprintln!(
        "memory tracking on this host: {}",
        if yes {
            "yes"
        } else {
            "no (no soft-dirty bits)"
        }
    );
    yes
}

#[test]
fn auto_falls_back_to_one_dump_and_says_why() {
    let Some(s) = setup("pcauto") else { return };
    let tracking = tracks_memory(&s);
    let key = s.keygen("key");
    let dst_work = s.dir.join("dst-work");
    let serve = s.serve(&key, &dst_work);

    let hb = s.dir.join("heartbeat");
    let w = Workload::start(&s.net, Side::Src, 4, &hb).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let stats_json = s.dir.join("stats.json");

    // No --pre-dump: auto is the default.
    let out = s.migrate(
        w.pid(),
        &key,
        &["--stats-json", stats_json.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "migrate failed: {stderr}");
    assert!(stderr.contains("migrated pid"), "no summary: {stderr}");
    let json = std::fs::read_to_string(&stats_json).unwrap();
    if tracking {
        assert!(
            !json.contains(r#""iterations":[]"#),
            "this host tracks memory, yet no iteration ran: {json}"
        );
    } else {
        // One line in the log, one in the summary, and the reason for programs.
        assert!(
            stderr.contains("pre-copy skipped: memory tracking is unavailable on this host: "),
            "{stderr}"
        );
        assert!(stderr.contains("soft-dirty"), "{stderr}");
        assert!(stderr.contains("pre-copy:     skipped:"), "{stderr}");
        assert!(
            json.contains(r#""pre_dump":{"mode":"auto","stop":"no-memory-tracking""#),
            "{json}"
        );
        assert!(json.contains(r#""iterations":[]"#), "{json}");
        // The destination served one page server, as without pre-copy.
        assert!(!serve.log_text().contains("pre-copy iteration"));
    }

    // The migration itself: exactly one copy, on the destination, still beating.
    let pids = find_workload_pids(&hb);
    assert_eq!(pids.len(), 1, "workload copies: {pids:?}");
    assert_ne!(pids[0], w.pid(), "the source copy still runs");
    let restored = PidGuard::new(pids[0]).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    assert!(serve.log_text().contains("done: pid"));
    assert!(dir_entries(&s.dir.join("src-work")).is_empty());
    restored.kill().unwrap();
    assert!(restored.wait_gone(Duration::from_secs(5)));
}

#[test]
fn always_without_memory_tracking_fails_before_anything_freezes() {
    let Some(s) = setup("pcalways") else { return };
    let tracking = tracks_memory(&s);
    let key = s.keygen("key");
    let dst_work = s.dir.join("dst-work");
    let serve = s.serve(&key, &dst_work);

    let hb = s.dir.join("heartbeat");
    let w = Workload::start(&s.net, Side::Src, 4, &hb).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let poller = Poller::start(&hb);

    // -v: haul logs every request it sends CRIU.
    let out = s.migrate(w.pid(), &key, &["--pre-dump", "always", "-v"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if tracking {
        assert!(out.status.success(), "pre-copy failed here: {stderr}");
        assert!(stderr.contains("criu <- PRE_DUMP"), "{stderr}");
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code for 'this host cannot': {stderr}"
    );
    for needed in [
        "--pre-dump always",
        "memory tracking is unavailable on this host",
        "soft-dirty",
        "nothing was frozen",
    ] {
        assert!(stderr.contains(needed), "{needed:?} not in: {stderr}");
    }
    // CRIU was asked its version and features, nothing that freezes.
    assert!(stderr.contains("criu <- FEATURE_CHECK"), "{stderr}");
    for never in ["criu <- PRE_DUMP", "criu <- DUMP", "freezing"] {
        assert!(!stderr.contains(never), "{never:?} in: {stderr}");
    }

    // The workload never stopped beating, and runs only here.
    Heartbeat::wait_advancing(&hb, Duration::from_secs(5)).unwrap();
    let stats = poller.stop_stats();
    eprintln!("largest heartbeat gap: {:?}", stats.max_gap);
    assert!(stats.changes > 0, "no heartbeat seen");
    assert!(
        stats.max_gap < UNFROZEN_GAP,
        "the workload stopped for {:?}",
        stats.max_gap
    );
    assert_eq!(stats.counter_regressions, 0);
    assert!(w.is_alive());
    assert_eq!(find_workload_pids(&hb), vec![w.pid()]);

    // The destination heard why, and neither side wrote a migration directory.
    serve
        .wait_for_line("--pre-dump always", Duration::from_secs(5))
        .unwrap();
    let dirs: Vec<_> = dir_entries(&dst_work)
        .into_iter()
        .filter(|e| e.starts_with("m-"))
        .collect();
    assert!(dirs.is_empty(), "destination directories: {dirs:?}");
    assert!(dir_entries(&s.dir.join("src-work")).is_empty());
}
