//! Self test of the lab library: namespaces, veth, workload in its own pid namespace,
//! heartbeat poller, and cleanup. Needs root, `ip`, `nsenter`, `unshare`, `setsid` and
//! `/bin/busybox`; not CRIU.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haul_e2e::*;

const BUSYBOX: &str = "/bin/busybox";

fn tools() -> Vec<&'static str> {
    let mut t = Lab::NET_TOOLS.to_vec();
    t.push(BUSYBOX);
    t
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .ino()
}

#[test]
fn lab_selftest() {
    let Some(_lab) = Lab::require_or_skip(&tools()).expect("lab requirements") else {
        return;
    };
    let built_bin = PathBuf::from(env!("CARGO_BIN_EXE_haul-workload"));
    assert_eq!(
        workload_bin()
            .expect("workload_bin()")
            .canonicalize()
            .unwrap(),
        built_bin.canonicalize().unwrap(),
        "workload_bin() finds the binary cargo built"
    );

    let names: Vec<String>;
    let dir_path: PathBuf;
    let workload_pid: u32;
    {
        let net = NetnsPair::create("selftest").expect("netns pair");
        names = vec![
            net.name(Side::Src).to_string(),
            net.name(Side::Dst).to_string(),
        ];
        let listed = netns_list().unwrap();
        assert!(names.iter().all(|n| listed.contains(n)), "{listed:?}");
        eprintln!(
            "netns {} {} / {} {}",
            names[0],
            net.src_addr(),
            names[1],
            net.dst_addr()
        );

        // ICMP from src to dst over the veth.
        let st = net
            .cmd_in(Side::Src, BUSYBOX)
            .args(["ping", "-c1", "-W1", &net.dst_addr().to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "ping dst from src: {st}");
        // The root namespace has no route to it.
        let st = Command::new(BUSYBOX)
            .args(["ping", "-c1", "-W1", &net.dst_addr().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            !st.success(),
            "dst must not be reachable from the root netns"
        );

        // TCP from src to dst; the listener's output is collected by ChildWithLog.
        let port = "7301";
        let listener = ChildWithLog::spawn(
            "nc-listen",
            net.cmd_in(Side::Dst, BUSYBOX)
                .args(["nc", "-l", "-p", port]),
        )
        .unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let out = net
                .cmd_in(Side::Src, "/bin/sh")
                .args([
                    "-c",
                    &format!(
                        "echo hello-over-veth | {BUSYBOX} nc -w1 {} {port}",
                        net.dst_addr()
                    ),
                ])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if out.success() || Instant::now() > end {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        listener
            .wait_for_line("hello-over-veth", Duration::from_secs(5))
            .unwrap();
        drop(listener);

        // The workload: pid 1 of a new pid namespace, in the src network namespace.
        let dir = TempDir::new("selftest").unwrap();
        dir_path = dir.path().to_path_buf();
        let hb = dir.join("heartbeat");
        let mut w = Workload::start(&net, Side::Src, 8, &hb).expect("start workload");
        workload_pid = w.pid();
        let nspids = proc_nspids(w.pid()).unwrap();
        assert_eq!(
            nspids.last(),
            Some(&1),
            "workload is init of its pid ns: {nspids:?}"
        );
        assert_eq!(proc_stat(w.pid()).unwrap().ppid, w.launcher_pid());
        assert_eq!(
            inode(&PathBuf::from(format!("/proc/{}/ns/net", w.pid()))),
            inode(&net.path(Side::Src)),
            "workload runs in the src netns"
        );
        // Session leader: sid == pid (field 6 of stat).
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", w.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let sid: u32 = after.split(' ').nth(3).unwrap().parse().unwrap();
        assert_eq!(sid, w.pid(), "workload is a session leader");
        assert_eq!(find_workload_pids(&hb), vec![w.pid()]);
        assert_eq!(
            find_pids_with_arg(&hb).len(),
            2,
            "workload and its launcher"
        );

        let (c1, _) = Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
        // Only stdio and the heartbeat file are open.
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", w.pid()))
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let target = std::fs::read_link(e.path()).ok()?;
                Some(format!(
                    "{}->{}",
                    e.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect();
        assert_eq!(fds.len(), 4, "open fds of the workload: {fds:?}");
        assert!(fds.contains(&format!("3->{}", hb.display())), "{fds:?}");
        let poller = Poller::start(&hb);
        std::thread::sleep(Duration::from_millis(600));
        let stats = poller.stop_stats();
        eprintln!("poller: {stats:?}");
        assert!(stats.max_gap > Duration::ZERO);
        assert!(stats.max_gap < Duration::from_secs(1), "{stats:?}");
        assert!(stats.changes > 10, "{stats:?}");
        assert_eq!(stats.counter_regressions, 0);
        assert_eq!(stats.bad, None);
        assert!(stats.last.unwrap().0 > c1);

        let status = w.kill().unwrap();
        eprintln!("launcher status after kill: {status:?}");
        assert!(!w.is_alive());
        let frozen = Heartbeat::read(&hb).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            Heartbeat::read(&hb),
            Some(frozen),
            "heartbeat stops after kill"
        );
    }
    // Everything is gone after the drops.
    let listed = netns_list().unwrap();
    for n in &names {
        assert!(!listed.contains(n), "{n} still listed: {listed:?}");
        assert!(!Path::new("/run/netns").join(n).exists());
    }
    assert!(!dir_path.exists(), "temp dir removed");
    assert!(
        proc_stat(workload_pid).is_none_or(|s| s.state == 'Z'),
        "workload gone"
    );
}

#[test]
fn workload_drop_kills_it() {
    let Some(_lab) = Lab::require_or_skip(&tools()).expect("lab requirements") else {
        return;
    };
    let dir = TempDir::new("dropkill").unwrap();
    let hb = dir.join("hb");
    let opts = WorkloadOpts {
        mib: 1,
        interval_ms: 2,
        ..WorkloadOpts::default()
    };
    let w = Workload::start_with(None, &hb, &opts).unwrap();
    let (pid, launcher) = (w.pid(), w.launcher_pid());
    Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    drop(w);
    assert!(
        proc_stat(pid).is_none_or(|s| s.state == 'Z'),
        "workload gone"
    );
    assert!(proc_stat(launcher).is_none(), "launcher reaped");
}

#[test]
fn tempdir_refuses_to_cross_mount_points() {
    let Some(_lab) = Lab::require_or_skip(&["mount", "umount"]).expect("lab requirements") else {
        return;
    };
    let dir = TempDir::new("mounts").unwrap();
    let path = dir.path().to_path_buf();
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "haul-e2e-test", mnt.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(mnt.join("precious"), b"x").unwrap();
    assert_eq!(mounts_under(&path).unwrap(), vec![mnt.clone()]);
    drop(dir);
    assert!(
        mnt.join("precious").exists(),
        "must not delete across a mount"
    );
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    std::fs::remove_dir_all(&path).unwrap();
}

#[test]
fn child_with_log_waits_for_lines() {
    let mut c = ChildWithLog::spawn(
        "sh",
        Command::new("/bin/sh").args([
            "-c",
            "echo one; echo 'listening on 1.2.3.4:5' >&2; sleep 30",
        ]),
    )
    .unwrap()
    .with_grace(Duration::from_millis(200));
    let l = c
        .wait_for_line("listening on", Duration::from_secs(5))
        .unwrap();
    assert_eq!(l, "listening on 1.2.3.4:5");
    assert!(c.wait_for_line("one", Duration::from_secs(1)).is_ok());
    let t = Instant::now();
    assert!(c
        .wait_for_line("never", Duration::from_millis(100))
        .is_err());
    assert!(t.elapsed() >= Duration::from_millis(100));
    let st = c.guard().stop().unwrap();
    assert!(!st.success());

    let c = ChildWithLog::spawn("true", &mut Command::new("true")).unwrap();
    let e = c
        .wait_for_line("x", Duration::from_secs(5))
        .expect_err("ends without the line");
    assert!(e.to_string().contains("output ended"), "{e}");
}
