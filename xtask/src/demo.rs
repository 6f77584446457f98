//! `cargo xtask demo`: builds haul, creates two test hosts (network namespaces joined by a veth
//! pair), starts `haul serve` on one and a workload on the other, migrates it with
//! `haul migrate`, shows the heartbeat continuing on the destination and the summary, and
//! cleans up everything it created.

use crate::{lab, util};
use haul_e2e::{
    find_workload_pids, haul_bin, run, ChildWithLog, Heartbeat, NetnsPair, PidGuard, Poller, Side,
    TempDir, Workload, WorkloadOpts,
};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 256;

pub fn run_demo(_args: &[String]) -> Result<(), String> {
    lab::install()?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "haul",
        "-p",
        "haul-e2e",
        "--bins",
    ]))?;
    let release = util::root().join("target/release");
    std::env::set_var("HAUL_BIN", release.join("haul"));
    std::env::set_var("HAUL_WORKLOAD_BIN", release.join("haul-workload"));
    let e = |e: haul_e2e::LabError| e.to_string();

    let haul = haul_bin().map_err(e)?;
    let net = NetnsPair::create("demo").map_err(e)?;
    let dir = TempDir::new("demo").map_err(e)?;
    let key = dir.join("key");
    run(Command::new(&haul).arg("keygen").arg(&key)).map_err(e)?;
    let dst = format!("{}:7070", net.dst_addr());
    println!(
        "demo: hosts {} ({}) and {} ({}), one veth pair between them",
        net.name(Side::Src),
        net.src_addr(),
        net.name(Side::Dst),
        net.dst_addr()
    );

    let mut serve_cmd = net.cmd_in(Side::Dst, &haul);
    serve_cmd
        .args(["serve", "--listen", &dst, "--key"])
        .arg(&key)
        .arg("--work-dir")
        .arg(dir.join("dst-work"));
    let serve = ChildWithLog::spawn("dst: haul serve", &mut serve_cmd).map_err(e)?;
    serve
        .wait_for_line("listening on", Duration::from_secs(10))
        .map_err(e)?;

    let hb = dir.join("heartbeat");
    let opts = WorkloadOpts {
        mib: MIB,
        ..WorkloadOpts::default()
    };
    let w = Workload::start_with(Some((&net, Side::Src)), &hb, &opts).map_err(e)?;
    Heartbeat::wait_advancing(&hb, Duration::from_secs(20)).map_err(e)?;
    println!(
        "demo: workload pid {} on the source: {MIB} MiB of checked memory, heartbeat every 5 ms",
        w.pid()
    );
    let poller = Poller::start(&hb);

    let mut mig = net.cmd_in(Side::Src, &haul);
    mig.args([
        "migrate",
        "pid",
        &w.pid().to_string(),
        "--to",
        &dst,
        "--key",
    ])
    .arg(&key)
    .arg("--work-dir")
    .arg(dir.join("src-work"))
    .stdout(std::process::Stdio::inherit())
    .stderr(std::process::Stdio::inherit());
    println!(
        "demo: $ haul migrate pid {} --to {dst} --key {}",
        w.pid(),
        key.display()
    );
    let status = mig.status().map_err(|err| format!("haul migrate: {err}"))?;
    if !status.success() {
        return Err(format!("haul migrate failed: {status}"));
    }
    let pids = find_workload_pids(&hb);
    let restored = match pids.as_slice() {
        [p] => PidGuard::new(*p).map_err(e)?,
        other => return Err(format!("expected one workload copy, found {other:?}")),
    };
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).map_err(e)?;
    let stats = poller.stop_stats();
    println!(
        "demo: the workload now runs on the destination as pid {}; its heartbeat continues \
         (largest gap seen from outside: {} ms, memory check: {})",
        restored.pid(),
        stats.max_gap.as_millis(),
        if stats.bad.is_none() {
            "passing"
        } else {
            "FAILED"
        }
    );
    drop(restored);
    drop(w);
    drop(serve);
    println!("demo: cleaned up");
    Ok(())
}
