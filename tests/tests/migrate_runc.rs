//! End to end, real runc and CRIU: `haul migrate runc` moves a busybox container (bind-mounted
//! data directory, single-file bind mount, tmpfs, read-only rootfs, default cgroup mount and
//! masked paths, stdout/stderr as a pipe) from the "src" network namespace to the "dst" one,
//! each "host" with its own runc root. Both hosts share this machine's cgroup tree, so
//! `haul serve` runs in a dedicated cgroup of its own: it creates restored containers' cgroups
//! under its own, which never clash with the source container's.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use haul_e2e::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PORT: u16 = 7070;

/// One test's lab. Field order is drop order: serve stops before its cgroups are removed, the
/// namespaces and the directory go last. Containers and their stdio readers are locals of the
/// test, dropped (killed, deleted, reaped) before this.
struct Setup {
    serve: Option<ChildWithLog>,
    cgroup: DedicatedCgroup,
    dir: TempDir,
    net: NetnsPair,
    _lab: Lab,
    haul: PathBuf,
    key: PathBuf,
    bundle: RuncBundle,
    src_root: PathBuf,
    dst_root: PathBuf,
    stdio_dir: PathBuf,
}

fn setup(tag: &str) -> Option<Setup> {
    let mut tools = Lab::ALL_TOOLS.to_vec();
    tools.extend([BUSYBOX, "cat", "sh"]);
    let lab = Lab::require_or_skip(&tools).expect("lab requirements")?;
    let net = NetnsPair::create(tag).unwrap();
    let dir = TempDir::new(tag).unwrap();
    let haul = haul_bin().unwrap();
    let cgroup =
        DedicatedCgroup::create(&format!("haul-e2e-{}-dst-{tag}", std::process::id())).unwrap();
    let key = dir.join("key");
    run(Command::new(&haul).arg("keygen").arg(&key)).unwrap();
    let bundle = RuncBundle::busybox(&dir.join("bundle"), RuncBundle::HEARTBEAT_SCRIPT).unwrap();
    let s = Setup {
        serve: None,
        cgroup,
        src_root: dir.join("src-root"),
        dst_root: dir.join("dst-root"),
        stdio_dir: dir.join("stdio"),
        dir,
        net,
        _lab: lab,
        haul,
        key,
        bundle,
    };
    for d in [&s.src_root, &s.dst_root] {
        std::fs::create_dir(d).unwrap();
    }
    Some(s)
}

impl Setup {
    fn dst(&self) -> String {
        format!("{}:{PORT}", self.net.dst_addr())
    }

    fn src_work(&self) -> PathBuf {
        self.dir.join("src-work")
    }

    fn dst_work(&self) -> PathBuf {
        self.dir.join("dst-work")
    }

    /// `haul serve` in the dst namespace, inside the dedicated cgroups.
    fn serve(&mut self) {
        let mut cmd = self
            .cgroup
            .wrap(self.net.cmd_in(Side::Dst, "sh"), &self.haul);
        cmd.args(["serve", "--listen", &self.dst(), "--key"])
            .arg(&self.key)
            .arg("--work-dir")
            .arg(self.dst_work())
            .arg("--runc-root")
            .arg(&self.dst_root)
            .arg("--stdio-dir")
            .arg(&self.stdio_dir)
            .arg("--bundle-root")
            .arg(self.dir.join("bundles"))
            .arg("-v");
        let s = ChildWithLog::spawn("serve", &mut cmd)
            .unwrap()
            .with_grace(Duration::from_secs(5));
        s.wait_for_line("listening on", Duration::from_secs(10))
            .unwrap();
        // It really runs in its own cgroups.
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", s.pid())).unwrap();
        for d in self.cgroup.dirs() {
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            assert!(cg.contains(&name), "serve not in {}: {cg}", d.display());
        }
        self.serve = Some(s);
    }

    fn serve_pid(&self) -> u32 {
        self.serve.as_ref().expect("serve runs").pid()
    }

    fn serve_log(&self) -> String {
        self.serve
            .as_ref()
            .map(|s| s.log_text())
            .unwrap_or_default()
    }

    fn migrate(&self, id: &str, extra: &[&str]) -> Output {
        let mut cmd = self.net.cmd_in(Side::Src, &self.haul);
        cmd.args(["migrate", "runc", id, "--to", &self.dst(), "--key"])
            .arg(&self.key)
            .arg("--runc-root")
            .arg(&self.src_root)
            .arg("--work-dir")
            .arg(self.src_work())
            .args(extra);
        let t = Instant::now();
        let out = cmd.output().unwrap();
        eprintln!(
            "haul migrate ({:?}): {}\n{}",
            t.elapsed(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts the busybox container in the source runc root with its stdout/stderr drained
    /// into `<dir>/src-<id>.log`; waits for its heartbeat.
    fn start_container(&self, id: &str) -> (PipeLog, RuncContainer) {
        let mut log = PipeLog::start(&self.dir.join(format!("src-{id}.log"))).unwrap();
        let c = RuncContainer::run_detached(&self.src_root, &self.bundle.dir, id, &log).unwrap();
        log.close_writer();
        let st = c.state().unwrap();
        assert_eq!(st.status, "running", "{st:?}");
        Heartbeat::wait_advancing(&self.bundle.heartbeat(), Duration::from_secs(10)).unwrap();
        (log, c)
    }
}

/// Names in `dir`, without `bin` (haul's own `tar` for CRIU, `<work root>/bin/tar`).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "bin")
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `f` returns `Some`, polling every 20 ms.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Migrates the container (to a new id if `new_id`). With `check_ro`, stops after checking
/// that the rootfs is still read-only on the destination.
fn moves(tag: &str, new_id: bool, check_ro: bool) {
    moves_with(tag, new_id, check_ro, false)
}

/// As `moves`; with `copy`, the bundle is copied (`--fs copy`) to the destination's bundle root.
fn moves_with(tag: &str, new_id: bool, check_ro: bool, copy: bool) {
    let Some(mut s) = setup(tag) else { return };
    s.serve();
    let id = unique_container_id();
    let dst_id = if new_id {
        unique_container_id()
    } else {
        id.clone()
    };
    // Drop order (reverse of declaration): the destination container, then the source one,
    // then the source's stdio reader.
    let (mut src_log, mut src) = s.start_container(&id);
    let mut dst = RuncContainer::adopt(&s.dst_root, &dst_id);
    let hb = s.bundle.heartbeat();

    // State that must survive: a file in the data directory, one in the tmpfs.
    let keep = s.bundle.data.join("keep.txt");
    let keep_text = format!("written before migrating {id}\n");
    std::fs::write(&keep, &keep_text).unwrap();
    let tmp_text = format!("tmpfs of {id}");
    src.exec(&["sh", "-c", &format!("echo '{tmp_text}' > /tmp/t")])
        .unwrap();
    assert_eq!(src.exec(&["cat", "/tmp/t"]).unwrap().trim(), tmp_text);
    // tmpfs contents CRIU archives (with haul's tar): owners, modes with set-id bits, a
    // FIFO, a symbolic link, nested directories; and the listing of /dev (runc's tmpfs).
    src.exec(&[
        "sh",
        "-c",
        "busybox mkdir -p /dev/shm/d/e && echo x > /dev/shm/d/f \
         && busybox mkfifo -m 640 /dev/shm/fifo && busybox ln -s /proc/self/fd /dev/shm/l",
    ])
    .unwrap();
    {
        // The container has no CAP_CHOWN: from the host, through its root.
        use std::os::unix::fs::PermissionsExt;
        let f = format!("/proc/{}/root/dev/shm/d/f", src.state().unwrap().pid);
        std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4711)).unwrap();
    }
    let tmpfs_listing = |c: &RuncContainer| {
        let out = c
            .exec(&[
                "sh",
                "-c",
                "busybox ls -lanR /dev/shm /tmp; busybox ls -lan /dev",
            ])
            .unwrap();
        // Left out: mount points under /dev and the tmpfs mounts' parents (`..`), which show
        // what is mounted or copied there, new on the destination.
        out.lines()
            .filter(|l| {
                ![" pts", " shm", " mqueue", " .."]
                    .iter()
                    .any(|end| l.ends_with(end))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let tmpfs_before = tmpfs_listing(&src);
    assert!(tmpfs_before.contains("-rws--x--x"), "{tmpfs_before}");
    let lo_up = |c: &RuncContainer| {
        c.exec(&["busybox", "ip", "-o", "link", "show", "lo"])
            .unwrap()
    };
    assert!(lo_up(&src).contains(",UP"), "{}", lo_up(&src));
    let src_pid = src.state().unwrap().pid;
    let ro = src.exec(&["sh", "-c", "echo x > /bin/x"]);
    assert!(ro.is_err(), "rootfs writable on the source: {ro:?}");
    let src_mounts = src.exec(&["cat", "/proc/1/mountinfo"]).unwrap();

    let poller = Poller::start(&hb);
    let stats_json = s.dir.join("stats.json");
    let mut extra = vec!["--stats-json", stats_json.to_str().unwrap()];
    if new_id {
        extra.extend(["--dst-id", dst_id.as_str()]);
    }
    if copy {
        extra.extend(["--fs", "copy"]);
    }
    let freezer = proc_cgroup_dir(src_pid, "freezer").expect("freezer cgroup of the container");
    let watch = FreezerWatch::start(freezer.join("freezer.state"));
    let out = s.migrate(&id, &extra);
    let freezer_seen = watch.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "migrate failed: {stderr}\nserve log:\n{}",
        s.serve_log()
    );
    assert!(
        stderr.contains(&format!("haul: migrated runc {id} to {}", s.dst())),
        "no summary: {stderr}"
    );
    assert!(stderr.contains("frozen:"), "no summary: {stderr}");
    // CRIU froze the container through its freezer cgroup (freeze_cgroup) for a measurable
    // time; the watcher usually sees it too, but CRIU's freeze can fall between two polls.
    let json = std::fs::read_to_string(&stats_json).unwrap();
    let frozen_us: u64 = json
        .split("\"criu_frozen_us\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(frozen_us > 0, "CRIU reports no frozen time: {json}");
    if !freezer_seen
        .iter()
        .any(|s| s == "FROZEN" || s == "FREEZING")
    {
        eprintln!("the freezer watcher missed CRIU's freeze: {freezer_seen:?}");
    }
    eprintln!("stats: {json}");

    // The source's tasks are gone and the source runc root no longer has the container.
    src_log
        .wait_eof(Duration::from_secs(10))
        .unwrap()
        .expect("the source container's stdout pipe is still open: its tasks still run?");
    let src_ticks = max_tick(&src_log.text()).expect("tick lines in the source log");
    assert!(
        !proc_stat(src_pid).is_some_and(|p| !matches!(p.state, 'Z' | 'X')),
        "the source container's init {src_pid} still runs"
    );
    let st = run(runc_cmd(&s.src_root).args(["state", &id]));
    assert!(st.is_err(), "source runc root still has {id}: {st:?}");
    assert!(!s.src_root.join(&id).exists());
    src.disarm();

    // The heartbeat continues, without going back.
    let at_commit = Heartbeat::read(&hb);
    let (after, _) = Heartbeat::wait_advancing(&hb, Duration::from_secs(10)).unwrap();
    let stats = poller.stop_stats();
    eprintln!(
        "downtime seen from outside: {:?} (heartbeat every ~20 ms)",
        stats.max_gap
    );
    assert_eq!(stats.counter_regressions, 0, "heartbeat went backwards");
    assert!(
        after > src_ticks,
        "counter {after} <= last source tick {src_ticks}"
    );
    assert!(after > at_commit.map(|b| b.0).unwrap_or(0));
    assert!(stats.last.unwrap().0 > stats.first.unwrap().0, "{stats:?}");

    // The data directory is intact.
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), keep_text);

    // Output keeps arriving in the destination's log, continuing the source's.
    let dst_log = s.stdio_dir.join(format!("{dst_id}.log"));
    let first = wait_for(
        "tick lines in the destination log",
        Duration::from_secs(10),
        || max_tick(&std::fs::read_to_string(&dst_log).ok()?).filter(|&n| n > src_ticks),
    );
    let len1 = std::fs::metadata(&dst_log).unwrap().len();
    let later = wait_for(
        "the destination log growing",
        Duration::from_secs(10),
        || max_tick(&std::fs::read_to_string(&dst_log).ok()?).filter(|&n| n >= first + 5),
    );
    assert!(std::fs::metadata(&dst_log).unwrap().len() > len1);
    eprintln!("source log ended at tick {src_ticks}; destination log at {later}");
    let dst_text = std::fs::read_to_string(&dst_log).unwrap();
    let min_dst = dst_text
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse::<u64>().ok())
        .min()
        .unwrap();
    assert!(
        min_dst > src_ticks,
        "destination log repeats tick {min_dst} (source ended at {src_ticks})"
    );

    // runc works with it on the destination.
    let st = dst.state().unwrap();
    assert_eq!(st.status, "running", "{st:?}");
    let p = proc_stat(st.pid).expect("runc state's pid exists");
    assert_eq!(p.comm, "sh", "{p:?}");
    if copy {
        // The destination runs from its own copy of the bundle.
        let copied = s.dir.join("bundles").join(&dst_id);
        assert_eq!(st.bundle, copied.to_string_lossy());
        let (a, b) = (
            std::fs::metadata(s.bundle.dir.join("rootfs/bin/busybox")).unwrap(),
            std::fs::metadata(copied.join("rootfs/bin/busybox")).unwrap(),
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (a.len(), a.mode(), a.mtime()),
            (b.len(), b.mode(), b.mtime())
        );
        assert_eq!(
            std::fs::read_link(copied.join("rootfs/bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(copied.join("config.json").is_file());
        let root = dst.exec(&["cat", "/proc/1/mountinfo"]).unwrap();
        assert!(
            root.lines()
                .any(|l| l.contains(&format!("{}/rootfs / ", copied.display()))),
            "root is not the copy: {root}"
        );
    } else {
        assert_eq!(st.bundle, s.bundle.dir.to_string_lossy());
    }
    let list = runc_list(&s.dst_root).unwrap();
    assert!(
        list.contains(&(dst_id.clone(), "running".into())),
        "runc list: {list:?}"
    );
    // The writer truncates then writes: an empty read is possible, retry.
    let hb_inside: u64 = wait_for(
        "a counter from runc exec cat",
        Duration::from_secs(5),
        || {
            let out = dst.exec(&["cat", "/data/hb"]).unwrap();
            out.split_whitespace().next()?.parse().ok()
        },
    );
    assert!(hb_inside > src_ticks);
    assert_eq!(
        dst.exec(&["cat", "/etc/app.conf"]).unwrap(),
        RuncBundle::APP_CONF
    );
    assert_eq!(dst.exec(&["cat", "/tmp/t"]).unwrap().trim(), tmp_text);
    assert_eq!(tmpfs_listing(&dst), tmpfs_before);
    // Its own network namespace, new (not serve's), with the loopback up as runc left it.
    assert!(lo_up(&dst).contains(",UP"), "{}", lo_up(&dst));
    let netns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(netns(st.pid), netns(s.serve_pid()));
    // Still read-only and the data bind still read-write.
    if check_ro {
        let ro = dst.exec(&["sh", "-c", "echo x > /bin/x"]);
        assert!(
            ro.is_err(),
            "rootfs writable after restore: {ro:?}\nsource mountinfo:\n{src_mounts}\n\
             destination mountinfo:\n{}",
            dst.exec(&["cat", "/proc/1/mountinfo"]).unwrap_or_default()
        );
        return;
    }
    dst.exec(&["sh", "-c", "echo from-dst > /data/from-dst"])
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(s.bundle.data.join("from-dst")).unwrap(),
        "from-dst\n"
    );
    // Its cgroups are under serve's, not the source's.
    let restored_cg = s.cgroup.children_named(&dst_id);
    assert_eq!(
        restored_cg.len(),
        s.cgroup.dirs().len(),
        "restored cgroups {restored_cg:?}"
    );
    // And they carry the container's settings, as `runc restore` applies them: device rules
    // from deny-all (runc's defaults allow /dev/null, c 1:3), the memory and pids limits.
    let setting = |controller: &str, file: &str| {
        let dir = restored_cg
            .iter()
            .find(|d| {
                d.components().any(|c| {
                    c.as_os_str()
                        .to_str()
                        .is_some_and(|n| n.split(',').any(|x| x == controller))
                })
            })
            .unwrap_or_else(|| panic!("no restored {controller} cgroup in {restored_cg:?}"));
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
    };
    let devices = setting("devices", "devices.list");
    assert!(
        !devices.contains("a *:* rwm") && devices.contains("c 1:3 rwm"),
        "restored devices.list:\n{devices}"
    );
    assert_eq!(
        setting("memory", "memory.limit_in_bytes").trim(),
        BUNDLE_MEMORY_LIMIT.to_string()
    );
    assert_eq!(
        setting("pids", "pids.max").trim(),
        BUNDLE_PIDS_LIMIT.to_string()
    );

    // Nothing mounted under the test's directories (work dirs, runc roots, bundle) in this
    // mount namespace, nothing left in the work directories.
    // haul's own tar for CRIU is in place on both sides (`<work root>/bin/tar` -> haul), unless
    // this run leaves tmpfs contents to the system's tar (then the listings above compared GNU
    // tar's work).
    let system_tar = std::env::var("HAUL_CRIU_TAR").is_ok_and(|v| v == "system");
    for w in [s.src_work(), s.dst_work()] {
        match std::fs::read_link(w.join("bin/tar")) {
            Ok(link) if !system_tar => {
                assert_eq!(link.canonicalize().unwrap(), s.haul.canonicalize().unwrap())
            }
            Err(_) if system_tar => {}
            other => panic!(
                "{}/bin/tar: {other:?} (HAUL_CRIU_TAR=system: {system_tar})",
                w.display()
            ),
        }
    }
    let mounts = mounts_under(s.dir.path()).unwrap();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(
        entries(&s.src_work()).is_empty(),
        "{:?}",
        entries(&s.src_work())
    );
    let left: Vec<_> = entries(&s.dst_work())
        .into_iter()
        .filter(|e| e != "logs")
        .collect();
    assert!(left.is_empty(), "destination work dir left {left:?}");

    // runc kill stops it; runc delete removes it and its cgroups.
    dst.kill("KILL").unwrap();
    runc_wait_status(&s.dst_root, &dst_id, "stopped", Duration::from_secs(10)).unwrap();
    dst.delete().unwrap();
    dst.disarm();
    assert!(runc_state(&s.dst_root, &dst_id).is_err());
    let hb_end = Heartbeat::read(&hb);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(Heartbeat::read(&hb), hb_end, "heartbeat goes on after kill");
    // runc delete removes the directories named in state.json's cgroup_paths, which haul's
    // registration wrote: one left means the registration named it wrong. The lab's cgroup
    // removes what is left when it drops, also after a failed assertion.
    let left = s.cgroup.children_named(&dst_id);
    assert!(
        left.is_empty(),
        "runc delete left the restored container's cgroups {left:?}: the cgroup_paths haul \
         registered do not name them"
    );
    eprintln!("serve log:\n{}", s.serve_log());
}

#[test]
fn runc_container_moves_with_the_same_id() {
    moves("runcsame", false, false);
}

#[test]
fn runc_container_moves_to_a_new_id() {
    moves("runcnew", true, false);
}

#[test]
fn runc_container_moves_with_its_bundle_copied() {
    moves_with("runccopy", true, false, true);
}

/// The rootfs is read-only on the source (`/` mounted `ro`) and must stay so after the restore:
/// CRIU does not restore the flags of the root mount it is given (checkpoint-restore/criu#2632),
/// so haul's destination mounts that root read-only itself.
#[test]
fn read_only_rootfs_stays_read_only_after_migration() {
    moves("runcro", false, true);
}

/// Polls a freezer.state file; remembers every state other than THAWED.
struct FreezerWatch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl FreezerWatch {
    fn start(state: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let s = std::fs::read_to_string(&state).unwrap_or_else(|e| format!("ERR {e}"));
                let s = s.trim().to_string();
                if s != "THAWED" && !seen.contains(&s) {
                    seen.push(s);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            seen
        });
        FreezerWatch {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

#[test]
fn existing_destination_id_is_refused_before_freezing() {
    let Some(mut s) = setup("runcexists") else {
        return;
    };
    s.serve();
    let id = unique_container_id();
    let (_src_log, src) = s.start_container(&id);
    // A container with that id "exists" on the destination.
    std::fs::create_dir(s.dst_root.join(&id)).unwrap();
    let hb = s.bundle.heartbeat();
    let pid = src.state().unwrap().pid;
    let freezer = proc_cgroup_dir(pid, "freezer").expect("freezer cgroup of the container");
    let freezer_state = freezer.join("freezer.state");
    assert_eq!(
        std::fs::read_to_string(&freezer_state).unwrap().trim(),
        "THAWED"
    );

    let poller = Poller::start(&hb);
    let watch = FreezerWatch::start(freezer_state.clone());
    let out = s.migrate(&id, &[]);
    let seen = watch.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(5),
        "exit code for 'refused before freezing': {stderr}"
    );
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(seen.is_empty(), "the source was frozen: {seen:?}");
    assert_eq!(
        std::fs::read_to_string(&freezer_state).unwrap().trim(),
        "THAWED"
    );

    // The source still runs, the same process, heartbeat advancing.
    let st = src.state().unwrap();
    assert_eq!(st.status, "running", "{st:?}");
    assert_eq!(st.pid, pid);
    Heartbeat::wait_advancing(&hb, Duration::from_secs(5)).unwrap();
    let stats = poller.stop_stats();
    eprintln!(
        "largest heartbeat gap during the refusal: {:?}",
        stats.max_gap
    );
    assert_eq!(stats.counter_regressions, 0);
    assert!(
        stats.max_gap < Duration::from_millis(500),
        "the workload stalled: {stats:?}"
    );

    // The destination changed nothing: no cgroups, no log, the placeholder untouched.
    assert!(s.cgroup.children_named(&id).is_empty());
    assert!(entries(&s.dst_root.join(&id)).is_empty());
    assert_eq!(entries(&s.dst_root), vec![id.clone()]);
    assert!(!s.stdio_dir.join(format!("{id}.log")).exists());
    // CRIU was asked for its version only: no page server, no restore.
    let log = s.serve_log();
    assert!(!log.contains("PAGE_SERVER"), "{log}");
    assert!(!log.contains("RESTORE"), "{log}");
    assert!(
        entries(&s.dst_work()).is_empty(),
        "{:?}",
        entries(&s.dst_work())
    );
    assert!(
        entries(&s.src_work()).is_empty(),
        "{:?}",
        entries(&s.src_work())
    );
    let mounts = mounts_under(s.dir.path()).unwrap();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}

/// `--mode restart`: no checkpoint; the container is stopped here and started afresh from its
/// copied bundle on the destination, under runc there, its output in the destination's log.
#[test]
fn runc_container_restarts_on_the_destination() {
    let Some(mut s) = setup("runcrestart") else {
        return;
    };
    s.serve();
    let id = unique_container_id();
    let dst_id = unique_container_id();
    let (_src_log, mut src) = s.start_container(&id);
    let mut dst = RuncContainer::adopt(&s.dst_root, &dst_id);
    let out = s.migrate(
        &id,
        &[
            "--mode",
            "restart",
            "--fs",
            "copy",
            "--dst-id",
            &dst_id,
            "--stop-timeout",
            "1",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", s.serve_log());
    assert!(stderr.contains(&format!("restarted runc {id}")), "{stderr}");
    // Gone here, running there from the copied bundle.
    assert!(run(runc_cmd(&s.src_root).args(["state", &id])).is_err());
    src.disarm();
    let st = dst.state().unwrap();
    assert_eq!(st.status, "running", "{st:?}");
    assert_eq!(
        st.bundle,
        s.dir.join("bundles").join(&dst_id).to_string_lossy()
    );
    Heartbeat::wait_advancing(&s.bundle.heartbeat(), Duration::from_secs(10)).unwrap();
    let dst_log = s.stdio_dir.join(format!("{dst_id}.log"));
    wait_for(
        "tick lines in the destination log",
        Duration::from_secs(10),
        || max_tick(&std::fs::read_to_string(&dst_log).ok()?),
    );
    dst.kill("KILL").unwrap();
    runc_wait_status(&s.dst_root, &dst_id, "stopped", Duration::from_secs(10)).unwrap();
    dst.delete().unwrap();
    dst.disarm();
}
