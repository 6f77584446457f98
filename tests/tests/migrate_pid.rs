//! End to end, real CRIU: `haul migrate pid` moves a process tree from the "src" network
//! namespace to the "dst" one over a veth pair, with `haul serve` on the other side.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use haul_e2e::*;
use std::path::Path;

use std::time::Duration;

const PORT: u16 = 7070;

fn setup(tag: &str) -> Option<PidLab> {
    PidLab::create(tag, PORT)
}

#[test]
fn process_tree_moves_between_hosts_and_keeps_running() {
    let Some(s) = setup("pidmv") else { return };
    let key = s.keygen("key");
    let dst_work = s.dir.join("dst-work");
    let serve = s.serve(&key, &dst_work);

    let hb = s.dir.join("heartbeat");
    let mib = 64;
    let opts = WorkloadOpts {
        mib,
        ..WorkloadOpts::default()
    };
    let mut w = Workload::start_with(Some((&s.net, Side::Src)), &hb, &opts).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let poller = Poller::start(&hb);
    let stats_json = s.dir.join("stats.json");

    let out = s.migrate(
        w.pid(),
        &key,
        &["--stats-json", stats_json.to_str().unwrap()],
    );
    assert!(out.status.success(), "migrate failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("migrated pid"), "no summary: {stderr}");
    assert!(!stderr.contains("INSECURE"));

    // The source's tasks are gone.
    w.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(!w.is_alive(), "the source copy still runs");
    let before = Heartbeat::read(&hb);

    // Exactly one copy runs, on the destination, and it continues the heartbeat.
    let pids = find_workload_pids(&hb);
    assert_eq!(pids.len(), 1, "workload copies: {pids:?}");
    let restored = PidGuard::new(pids[0]).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let stats = poller.stop_stats();
    eprintln!("downtime seen from outside: {:?}", stats.max_gap);
    assert_eq!(
        stats.counter_regressions, 0,
        "heartbeat went backwards: two copies?"
    );
    assert_eq!(stats.bad, None, "memory check failed after restore");
    assert!(stats.last.unwrap().0 > before.map(|b| b.0).unwrap_or(0));
    let ns = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_eq!(
        ns(Path::new(&format!("/proc/{}/ns/net", restored.pid()))).unwrap(),
        ns(&s.net.path(Side::Dst)).unwrap(),
        "restored outside the destination's network namespace"
    );

    // The summary's numbers.
    let json = std::fs::read_to_string(&stats_json).unwrap();
    assert!(json_number(&json, "page_bytes") >= mib << 20, "{json}");
    assert_eq!(
        json_number(&json, "restored_pid"),
        u64::from(restored.pid())
    );
    assert!(json_number(&json, "frozen_ms") > 0);

    // Nothing left behind in either work directory.
    assert!(dir_entries(&s.dir.join("src-work")).is_empty());
    let left: Vec<_> = dir_entries(&dst_work)
        .into_iter()
        .filter(|e| e != "logs")
        .collect();
    assert!(left.is_empty(), "destination left {left:?}");
    assert!(serve.log_text().contains("done: pid"));
    restored.kill().unwrap();
    assert!(restored.wait_gone(Duration::from_secs(5)));
}

#[test]
fn killed_destination_leaves_the_source_running() {
    let Some(s) = setup("pidkill") else { return };
    let key = s.keygen("key");
    let mut serve = s.serve(&key, &s.dir.join("dst-work"));

    let hb = s.dir.join("heartbeat");
    let opts = WorkloadOpts {
        mib: 512,
        sweep_ms: 20_000,
        ..WorkloadOpts::default()
    };
    let w = Workload::start_with(Some((&s.net, Side::Src)), &hb, &opts).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(30)).unwrap();

    // Migrate in the background; kill `haul serve` once the dump runs: pages stream then.
    let mut cmd = s.net.cmd_in(Side::Src, &s.haul);
    cmd.args([
        "migrate",
        "pid",
        &w.pid().to_string(),
        "--to",
        &s.dst(),
        "--key",
    ])
    .arg(&key)
    .arg("--work-dir")
    .arg(s.dir.join("src-work"));
    let migrate = ChildWithLog::spawn("migrate", &mut cmd).unwrap();
    migrate
        .wait_for_line("freezing and dumping", Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    serve.guard().kill().unwrap();

    let mut migrate = migrate;
    let status = migrate
        .guard()
        .wait_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("haul migrate did not exit after the destination died");
    let log = migrate.log_text();
    assert!(!status.success(), "migrate claims success: {log}");
    assert_eq!(
        status.code(),
        Some(6),
        "exit code should say 'rolled back': {log}"
    );
    assert!(log.contains("keeps running on this host"), "{log}");

    // The workload still runs on the source, heartbeat advancing, memory intact.
    assert!(w.is_alive(), "the source workload died");
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    assert_eq!(
        find_workload_pids(&hb),
        vec![w.pid()],
        "a second copy exists"
    );
}

#[test]
fn wrong_key_is_refused_before_any_criu_work() {
    let Some(s) = setup("pidkey") else { return };
    let key = s.keygen("key");
    let other = s.keygen("other-key");
    let dst_work = s.dir.join("dst-work");
    let serve = s.serve(&key, &dst_work);

    let hb = s.dir.join("heartbeat");
    let w = Workload::start(&s.net, Side::Src, 8, &hb).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();

    let out = s.migrate(w.pid(), &other, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "exit code for authentication: {stderr}"
    );
    assert!(stderr.contains("keys differ"), "{stderr}");
    let log = serve
        .wait_for_line("failed authentication", Duration::from_secs(5))
        .unwrap();
    assert!(log.contains("refused"), "{log}");
    // The destination started no CRIU and wrote nothing.
    assert!(!serve.log_text().contains("criu swrk started"));
    assert!(
        dir_entries(&dst_work).is_empty(),
        "{:?}",
        dir_entries(&dst_work)
    );
    // The source was never touched.
    assert!(w.is_alive());
    Heartbeat::wait_advancing(&hb, Duration::from_secs(5)).unwrap();
}

/// Shared anonymous memory (CRIU dumps it as a segment of its own, `pagemap-shmem-ID.img`, over
/// the page stream) arrives intact: the destination's page writer names and fills that image
/// as CRIU's page server would, and the restored workload's check of it passes a full sweep.
#[test]
fn shared_anonymous_memory_moves_intact() {
    let Some(s) = setup("pidshm") else { return };
    let key = s.keygen("key");
    let dst_work = s.dir.join("dst-work");
    let keep = std::ffi::OsStr::new("--keep-images");
    let serve = s.serve_with(&key, &dst_work, &[keep]);

    let hb = s.dir.join("heartbeat");
    let opts = WorkloadOpts {
        mib: 8,
        shared_mib: 16,
        sweep_ms: 500,
        ..WorkloadOpts::default()
    };
    let mut w = Workload::start_with(Some((&s.net, Side::Src)), &hb, &opts).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let poller = Poller::start(&hb);
    let out = s.migrate(w.pid(), &key, &[]);
    assert!(out.status.success(), "migrate failed");
    w.wait_exit(Duration::from_secs(5)).unwrap();
    let pids = find_workload_pids(&hb);
    assert_eq!(pids.len(), 1, "workload copies: {pids:?}");
    let restored = PidGuard::new(pids[0]).unwrap();
    // Two full sweeps of both memories on the destination.
    std::thread::sleep(Duration::from_millis(1200));
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let stats = poller.stop_stats();
    assert_eq!(stats.bad, None, "memory check failed after restore");
    assert!(serve.log_text().contains("done: pid"));

    // The kept images: a shared-memory page map next to the task's, each naming its pages.
    let kept: Vec<_> = dir_entries(&dst_work)
        .into_iter()
        .filter(|e| e != "logs")
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let images = dir_entries(&dst_work.join(&kept[0]));
    let shm: Vec<_> = images
        .iter()
        .filter(|n| n.starts_with("pagemap-shmem-"))
        .collect();
    assert_eq!(shm.len(), 1, "{images:?}");
    let pages: u64 = images
        .iter()
        .filter(|n| n.starts_with("pages-"))
        .map(|n| {
            std::fs::metadata(dst_work.join(&kept[0]).join(n))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        pages >= (16 + 8) << 20,
        "{pages} bytes of pages in {images:?}"
    );
    restored.kill().unwrap();
    assert!(restored.wait_gone(Duration::from_secs(5)));
    // What --keep-images kept is this test's to remove (no mounts under it for a pid tree).
    std::fs::remove_dir_all(dst_work.join(&kept[0])).unwrap();
}
