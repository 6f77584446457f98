//! `cargo xtask demo [--pid]`: builds haul, creates two test hosts (network namespaces joined
//! by a veth pair, each with its own runc root), starts `haul serve` on one and a busybox runc
//! container on the other, migrates it with `haul migrate runc`, shows it running under runc on
//! the destination (heartbeat, `runc list`, `runc exec`, its output log) and the summary, and
//! cleans up everything it created. `--pid` migrates a 256 MiB process tree instead.

use crate::{lab, util};
use haul_e2e::{
    find_workload_pids, haul_bin, max_tick, run, runc_cmd, runc_list, ChildWithLog,
    DedicatedCgroup, Heartbeat, NetnsPair, PidGuard, PipeLog, Poller, RuncBundle, RuncContainer,
    Side, TempDir, Workload, WorkloadOpts,
};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 256;

pub fn run_demo(args: &[String]) -> Result<(), String> {
    let pid_mode = match args {
        [] => false,
        [a] if a == "--pid" => true,
        _ => return Err("usage: cargo xtask demo [--pid]".into()),
    };
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

    if pid_mode {
        pid_demo()
    } else {
        runc_demo()
    }
}

fn runc_demo() -> Result<(), String> {
    let e = |e: haul_e2e::LabError| e.to_string();
    let haul = haul_bin().map_err(e)?;
    let net = NetnsPair::create("demo").map_err(e)?;
    let dir = TempDir::new("demo").map_err(e)?;
    // Both "hosts" share this machine's cgroup tree: the destination's `haul serve` runs in a
    // cgroup of its own, under which it creates restored containers' cgroups.
    let cgroup =
        DedicatedCgroup::create(&format!("haul-demo-{}-dst", std::process::id())).map_err(e)?;
    let key = dir.join("key");
    run(Command::new(&haul).arg("keygen").arg(&key)).map_err(e)?;
    let (src_root, dst_root) = (dir.join("src-root"), dir.join("dst-root"));
    for d in [&src_root, &dst_root] {
        std::fs::create_dir(d).map_err(|err| err.to_string())?;
    }
    let bundle =
        RuncBundle::busybox(&dir.join("bundle"), RuncBundle::HEARTBEAT_SCRIPT).map_err(e)?;
    let dst = format!("{}:7070", net.dst_addr());
    println!(
        "demo: hosts {} ({}) and {} ({}), one veth pair between them",
        net.name(Side::Src),
        net.src_addr(),
        net.name(Side::Dst),
        net.dst_addr()
    );

    let mut serve_cmd = cgroup.wrap(net.cmd_in(Side::Dst, "sh"), &haul);
    serve_cmd
        .args(["serve", "--listen", &dst, "--key"])
        .arg(&key)
        .arg("--work-dir")
        .arg(dir.join("dst-work"))
        .arg("--runc-root")
        .arg(&dst_root)
        .arg("--stdio-dir")
        .arg(dir.join("stdio"));
    let serve = ChildWithLog::spawn("dst: haul serve", &mut serve_cmd).map_err(e)?;
    serve
        .wait_for_line("listening on", Duration::from_secs(10))
        .map_err(e)?;

    let id = "demo-web";
    let mut log = PipeLog::start(&dir.join("src-demo-web.log")).map_err(e)?;
    let container = RuncContainer::run_detached(&src_root, &bundle.dir, id, &log).map_err(e)?;
    log.close_writer();
    let hb = bundle.heartbeat();
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).map_err(e)?;
    println!(
        "demo: busybox container {id} runs on the source (runc root {}): a read-only rootfs, a \
         bind-mounted data directory, a file bind mount, a tmpfs, stdout a pipe; it writes a \
         heartbeat every 20 ms",
        src_root.display()
    );
    let poller = Poller::start(&hb);

    let mut mig = net.cmd_in(Side::Src, &haul);
    mig.args(["migrate", "runc", id, "--to", &dst, "--key"])
        .arg(&key)
        .arg("--runc-root")
        .arg(&src_root)
        .arg("--work-dir")
        .arg(dir.join("src-work"))
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit());
    println!(
        "demo: $ haul migrate runc {id} --to {dst} --key {}",
        key.display()
    );
    let status = mig.status().map_err(|err| format!("haul migrate: {err}"))?;
    if !status.success() {
        return Err(format!("haul migrate failed: {status}"));
    }
    // runc on the destination owns it now.
    let moved = RuncContainer::adopt(&dst_root, id);
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).map_err(e)?;
    let stats = poller.stop_stats();
    let list = runc_list(&dst_root).map_err(e)?;
    let beat = moved.exec(&["cat", "/data/hb"]).map_err(e)?;
    std::thread::sleep(Duration::from_millis(300));
    let out =
        std::fs::read_to_string(dir.join("stdio").join(format!("{id}.log"))).unwrap_or_default();
    let src_gone = !runc_cmd(&src_root)
        .args(["state", id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(true);
    println!(
        "demo: on the destination: runc list {list:?}; runc exec {id} cat /data/hb -> {}; its \
         output continues in {}/stdio/{id}.log (last: tick {}); source runc root no longer has it: \
         {src_gone}; largest heartbeat gap seen from outside: {} ms",
        beat.trim(),
        dir.path().display(),
        max_tick(&out).unwrap_or(0),
        stats.max_gap.as_millis()
    );
    drop(container);
    drop(moved);
    drop(serve);
    drop(cgroup);
    println!("demo: cleaned up");
    Ok(())
}

fn pid_demo() -> Result<(), String> {
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
