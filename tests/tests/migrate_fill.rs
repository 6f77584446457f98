//! End to end, real CRIU with userfaultfd: without `--lazy` every page crosses before the
//! resume, and by default the destination restores without the memory CRIU marks lazy, lets the
//! tasks run, and fills that memory from its own images (CRIU's lazy-pages daemon, no source
//! involved). `--eager-restore` restores it all before the resume instead. Either way the
//! workload's memory check must pass over a whole sweep afterwards.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use haul_e2e::*;

use std::time::Duration;

const PORT: u16 = 7072;

/// Migrates a 128 MiB workload with `extra` options; returns the summary JSON and the serve
/// log after checking the memory and the clean-up.
fn migrate_and_check(tag: &str, extra: &[&str]) -> (String, String) {
    migrate_and_check_with(tag, extra, false)
}

/// [`migrate_and_check`]; with `no_daemon`, the destination's `criu lazy-pages` fails to
/// start (a wrapper around the real criu).
fn migrate_and_check_with(tag: &str, extra: &[&str], no_daemon: bool) -> (String, String) {
    let Some(s) = PidLab::create(tag, PORT) else {
        return (String::new(), String::new());
    };
    let key = s.keygen("key");
    let dst_work = s.dir.join("dst-work");
    let serve = if no_daemon {
        use std::os::unix::fs::PermissionsExt;
        let criu = find_tool("criu").expect("criu");
        let wrapper = s.dir.join("criu-without-lazy-pages");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n[ \"$1\" = lazy-pages ] && {{ echo 'no daemon here' >&2; exit 1; }}\nexec {} \"$@\"\n",
                criu.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        // CRIU's daemon as the filler (HAUL_FILLER=criu), which the wrapper keeps from
        // starting; haul's own handler falls back the same way when it cannot listen.
        s.serve_with_env(
            &key,
            &dst_work,
            &["--criu".as_ref(), wrapper.as_os_str()],
            &[("HAUL_FILLER", "criu")],
        )
    } else {
        s.serve(&key, &dst_work)
    };

    let hb = s.dir.join("heartbeat");
    let mib: u64 = 128;
    let opts = WorkloadOpts {
        mib,
        sweep_ms: 4_000,
        ..WorkloadOpts::default()
    };
    let mut w = Workload::start_with(Some((&s.net, Side::Src)), &hb, &opts).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(30)).unwrap();
    let poller = Poller::start(&hb);
    let stats_json = s.dir.join("stats.json");
    let mut args = vec!["--stats-json", stats_json.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = s.migrate(w.pid(), &key, &args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "migrate failed: {stderr}\nserve log:\n{}",
        serve.log_text()
    );
    assert!(stderr.contains("migrated pid"), "no summary: {stderr}");

    // One copy runs on the destination, and its memory is intact over a whole sweep.
    w.wait_exit(Duration::from_secs(10)).unwrap();
    let pids = find_workload_pids(&hb);
    assert_eq!(pids.len(), 1, "workload copies: {pids:?}");
    let restored = PidGuard::new(pids[0]).unwrap();
    std::thread::sleep(Duration::from_millis(4_500));
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let stats = poller.stop_stats();
    eprintln!("downtime seen from outside: {:?}", stats.max_gap);
    assert_eq!(stats.counter_regressions, 0, "two copies?");
    assert_eq!(stats.bad, None, "memory check failed on the destination");

    let json = std::fs::read_to_string(&stats_json).unwrap();
    eprintln!("{json}\n{stderr}");
    assert!(json.contains("\"lazy\":false"), "{json}");
    // Every page crossed before the resume.
    assert!(
        json_number(&json, "page_bytes") >= mib << 20,
        "fewer page bytes than the workload's memory: {json}"
    );
    assert!(dir_entries(&s.dir.join("src-work")).is_empty());
    assert!(
        dir_entries(&dst_work).is_empty(),
        "destination left {:?}",
        dir_entries(&dst_work)
    );
    let log = serve.log_text();
    restored.kill().unwrap();
    assert!(restored.wait_gone(Duration::from_secs(5)));
    (json, log)
}

#[test]
fn memory_is_filled_after_the_resume_from_the_destinations_images() {
    let (json, log) = migrate_and_check("fillafter", &[]);
    if json.is_empty() {
        return;
    }
    let fill = json_number(&json, "fill_ms");
    assert!(fill > 0, "no fill after the resume: {json}");
    assert!(
        log.contains("filling their memory from the images here"),
        "{log}"
    );
    assert!(log.contains("memory filled after the resume"), "{log}");
    // By haul's own handler (the default), every lazy page of the 128 MiB.
    let mib = mib_filled_by_handler(&log).unwrap_or_else(|| panic!("no handler summary in {log}"));
    assert!(mib >= 128.0, "{mib} MiB filled: {log}");
}

#[test]
fn eager_restore_fills_the_memory_before_the_resume() {
    let (json, log) = migrate_and_check("filleager", &["--eager-restore"]);
    if json.is_empty() {
        return;
    }
    assert_eq!(json_number(&json, "fill_ms"), 0, "{json}");
    assert!(!log.contains("filling their memory"), "{log}");
}

/// A destination whose filler cannot start (here CRIU's lazy-pages daemon, chosen with
/// HAUL_FILLER=criu) restores all memory before the resume instead of failing the migration.
#[test]
fn without_a_daemon_the_memory_is_restored_before_the_resume() {
    let (json, log) = migrate_and_check_with("fillnodaemon", &[], true);
    if json.is_empty() {
        return;
    }
    assert_eq!(json_number(&json, "fill_ms"), 0, "{json}");
    assert!(
        log.contains("restoring all memory before the resume instead"),
        "{log}"
    );
}
