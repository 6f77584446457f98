//! Checks the lab's assumptions about CRIU with plain `criu` (no haul): the workload started
//! by [`Workload`] dumps in the src namespace and restores in the dst namespace, its heartbeat
//! continues from where it stopped, and the poller sees the downtime.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use haul_e2e::*;

fn criu(net: &NetnsPair, side: Side, args: &[&str], log: &std::path::Path) {
    let st = net
        .cmd_in(side, "criu")
        .args(args)
        .arg("-o")
        .arg(log)
        .arg("-v4")
        .status()
        .unwrap();
    if !st.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        panic!(
            "criu {args:?} failed ({st}); log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn criu_roundtrip_between_namespaces() {
    let mut tools = Lab::NET_TOOLS.to_vec();
    tools.push("criu");
    let Some(_lab) = Lab::require_or_skip(&tools).expect("lab requirements") else {
        return;
    };
    let net = NetnsPair::create("criu").unwrap();
    let dir = TempDir::new("criu").unwrap();
    let hb = dir.join("heartbeat");
    let img = dir.join("img");
    std::fs::create_dir(&img).unwrap();
    let opts = WorkloadOpts {
        mib: 64,
        ..WorkloadOpts::default()
    };
    let mut w = Workload::start_with(Some((&net, Side::Src)), &hb, &opts).unwrap();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let poller = Poller::start(&hb);
    std::thread::sleep(Duration::from_millis(200));

    let pid = w.pid().to_string();
    let img_s = img.to_str().unwrap();
    criu(
        &net,
        Side::Src,
        &["dump", "-t", &pid, "-D", img_s],
        &dir.join("dump.log"),
    );
    let st = w.wait_exit(Duration::from_secs(5)).unwrap();
    eprintln!("launcher after dump: {st:?}");
    assert!(!w.is_alive(), "dump kills the source");
    let before = Heartbeat::read(&hb).unwrap();

    criu(
        &net,
        Side::Dst,
        &["restore", "-D", img_s, "-d"],
        &dir.join("restore.log"),
    );
    let pids = find_workload_pids(&hb);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let restored = PidGuard::new(pids[0]).unwrap();
    assert_ne!(restored.pid(), w.pid());
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let stats = poller.stop_stats();
    eprintln!("downtime (plain criu dump+restore, 64 MiB): {stats:?}");
    assert_eq!(stats.counter_regressions, 0);
    assert_eq!(stats.bad, None);
    assert!(stats.last.unwrap().0 > before.0);
    assert!(stats.max_gap > Duration::from_millis(5));
    // The restored workload runs in the dst namespace.
    let ns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_eq!(
        ns(&format!("/proc/{}/ns/net", restored.pid())).unwrap(),
        ns(net.path(Side::Dst).to_str().unwrap()).unwrap()
    );
    assert_eq!(proc_nspids(restored.pid()).unwrap().last(), Some(&1));
    restored.kill().unwrap();
    assert!(restored.wait_gone(Duration::from_secs(5)));
}
