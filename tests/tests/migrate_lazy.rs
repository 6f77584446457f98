//! End to end, real CRIU with userfaultfd: `--lazy` (post-copy). The destination runs the
//! workload before its memory has moved; haul's userfaultfd handler there (or CRIU's
//! lazy-pages daemon, with HAUL_FILLER=criu) fetches the pages from the source's CRIU through
//! haul's connection.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use haul_e2e::*;

use std::time::Duration;

const PORT: u16 = 7071;

fn setup(tag: &str) -> Option<PidLab> {
    PidLab::create(tag, PORT)
}

#[test]
fn lazy_migration_runs_on_the_destination_before_the_memory_moved() {
    let Some(log) = lazy_migration("lazymv", &[]) else {
        return;
    };
    // haul's handler fetched the memory: every page of the 256 MiB, and faults answered.
    let mib = mib_filled_by_handler(&log).unwrap_or_else(|| panic!("no handler summary in {log}"));
    assert!(mib >= 256.0, "{mib} MiB filled: {log}");
    assert!(!log.contains("read-ahead:"), "CRIU's daemon ran: {log}");
}

/// The same with CRIU's lazy-pages daemon and haul's read-ahead filter (HAUL_FILLER=criu).
#[test]
fn lazy_migration_with_criu_lazy_pages() {
    let Some(log) = lazy_migration("lazycriu", &[("HAUL_FILLER", "criu")]) else {
        return;
    };
    assert!(log.contains("read-ahead:"), "{log}");
    assert!(!log.contains("userfaultfd handler:"), "{log}");
}

/// A 256 MiB workload migrated with `--lazy`, checked over a whole sweep of its memory after
/// the post-copy; serve's log (None without the lab).
fn lazy_migration(tag: &str, env: &[(&str, &str)]) -> Option<String> {
    let s = setup(tag)?;
    let key = s.keygen("key");
    let dst_work = s.dir.join("dst-work");
    let serve = s.serve_with_env(&key, &dst_work, &[], env);

    let hb = s.dir.join("heartbeat");
    let mib: u64 = 256;
    let opts = WorkloadOpts {
        mib,
        sweep_ms: 20_000,
        ..WorkloadOpts::default()
    };
    let mut w = Workload::start_with(Some((&s.net, Side::Src)), &hb, &opts).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(30)).unwrap();
    let poller = Poller::start(&hb);
    let stats_json = s.dir.join("stats.json");

    let out = s.migrate(
        w.pid(),
        &key,
        &["--lazy", "--stats-json", stats_json.to_str().unwrap()],
    );
    assert!(out.status.success(), "migrate failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("migrated pid"), "no summary: {stderr}");
    assert!(stderr.contains("post-copy"), "{stderr}");

    // The source's tasks are gone; one copy runs on the destination and continues.
    w.wait_exit(Duration::from_secs(10)).unwrap();
    let pids = find_workload_pids(&hb);
    assert_eq!(pids.len(), 1, "workload copies: {pids:?}");
    let restored = PidGuard::new(pids[0]).unwrap();
    // A whole sweep of the memory check after the post-copy: every page arrived intact.
    std::thread::sleep(Duration::from_millis(21_000));
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let stats = poller.stop_stats();
    eprintln!("downtime seen from outside: {:?}", stats.max_gap);
    assert_eq!(stats.counter_regressions, 0, "two copies?");
    assert_eq!(stats.bad, None, "memory check failed after the post-copy");

    // The memory moved after the resume, not before.
    let json = std::fs::read_to_string(&stats_json).unwrap();
    eprintln!("{json}");
    assert!(json.contains("\"lazy\":true"), "{json}");
    assert!(
        json_number(&json, "page_bytes") >= (mib << 20) * 9 / 10,
        "post-copy moved less than the workload's memory: {json}"
    );
    assert!(json_number(&json, "postcopy_ms") > 0, "{json}");
    assert!(
        json_number(&json, "image_bytes") < 32 << 20,
        "the memory went with the images, not lazily: {json}"
    );

    assert!(dir_entries(&s.dir.join("src-work")).is_empty());
    assert!(
        dir_entries(&dst_work).is_empty(),
        "destination left {:?}",
        dir_entries(&dst_work)
    );
    let log = serve.log_text();
    assert!(log.contains("post-copy done"), "{log}");
    restored.kill().unwrap();
    assert!(restored.wait_gone(Duration::from_secs(5)));
    Some(log)
}
