//! Fault injection, end to end: real CRIU and runc, the two "hosts" of the lab (network
//! namespaces "src" and "dst", each with its own runc root), `haul serve` in a dedicated cgroup
//! as in `migrate_runc.rs`. Each case breaks one thing during a migration of a runc container
//! whose process is the workload (it checks its own memory and writes a heartbeat), then checks
//! the invariants ([`Setup::check`]):
//!
//! - the container runs exactly once (one live process with its heartbeat argument) where the
//!   case expects it, heartbeat advancing across a full memory sweep without `BAD`, the data
//!   directory intact; or nowhere at all in the in-doubt cases, never twice;
//! - no freezer cgroup of this test process is left FROZEN, the survivor is THAWED;
//! - no CRIU network-lock rules in this namespace, the two lab namespaces, the survivor's;
//! - no mounts under the test directory, no runc state, cgroups, stdio relays or migration
//!   directories of the container on the destination (an in-doubt case keeps exactly one
//!   migration directory with complete images and an `IN-DOUBT` note);
//! - `haul migrate`'s exit code and message say what happened.
//!
//! Faults come from haul's `HAUL_FAULT=<point>` hook (the process SIGKILLs itself there),
//! signals, a link taken down or packets dropped (`ip link`, `iptables` in a namespace: no FIN,
//! no RST), a small tmpfs, CRIU's own `CRIU_FAULT` (through a wrapper script: haul clears
//! CRIU's environment) and fake CRIU binaries. Every case prints a line `EVIDENCE <case>: ...`.
//!
//! Run as root: `cargo build -p haul && cargo test -p haul-e2e --test fault_injection --
//! --test-threads=1 --nocapture`.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use haul_e2e::*;
use rustix::process::Signal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PORT: u16 = 7070;
/// Memory of the container's workload: more than the 2 MiB tmpfs of case e.
const MIB: u64 = 8;
/// The workload checks all its memory every SWEEP_MS.
const SWEEP_MS: u64 = 1000;
/// Rate of the source's veth in the cases that interrupt the page stream: 8 MiB take ~2 s
/// (a debug build of haul is slower than that anyway: its crypto runs at ~1-2 MiB/s).
const SLOW_RATE: &str = "32mbit";
/// A fast case's `haul migrate` must end within this.
const QUICK: Duration = Duration::from_secs(60);
/// A case that waits for haul to notice a dead connection ends within this: TCP_USER_TIMEOUT
/// (20 s) and keepalive (10 s, 3 probes) at worst IDLE_TIMEOUT (120 s).
const SLOW: Duration = Duration::from_secs(150);

// ---------------------------------------------------------------------------------------------
// The lab of one case
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct ServeOpts {
    env: Vec<(String, String)>,
    criu: Option<PathBuf>,
    runc: Option<PathBuf>,
}

/// One case's lab. Field order is drop order (after `Drop for Setup` stopped serve, killed
/// what it left in its cgroups and unmounted what is mounted under the directory).
struct Setup {
    serve: Option<ChildWithLog>,
    /// Logs of serve processes that were killed or stopped, for messages.
    old_serve_logs: Vec<String>,
    serve_opts: ServeOpts,
    cgroup: DedicatedCgroup,
    dir: TempDir,
    net: NetnsPair,
    _lab: Lab,
    haul: PathBuf,
    key: PathBuf,
    src_root: PathBuf,
    dst_root: PathBuf,
    stdio_dir: PathBuf,
    bundles: PathBuf,
    started: Instant,
    name: String,
    /// Parent cgroup of containers that need a cgroup path of their own (removed at the end).
    extra_cgroup: String,
}

fn setup(tag: &str) -> Option<Setup> {
    let mut tools = Lab::ALL_TOOLS.to_vec();
    tools.extend([BUSYBOX, "cat", "sh", "tc", "iptables-save"]);
    let lab = Lab::require_or_skip(&tools).expect("lab requirements")?;
    let started = Instant::now();
    let net = NetnsPair::create(tag).unwrap();
    let dir = TempDir::new(tag).unwrap();
    let haul = haul_bin().unwrap();
    let cgroup =
        DedicatedCgroup::create(&format!("haul-e2e-{}-dst-{tag}", std::process::id())).unwrap();
    let key = dir.join("key");
    run(Command::new(&haul).arg("keygen").arg(&key)).unwrap();
    let s = Setup {
        serve: None,
        old_serve_logs: Vec::new(),
        serve_opts: ServeOpts::default(),
        cgroup,
        src_root: dir.join("src-root"),
        dst_root: dir.join("dst-root"),
        stdio_dir: dir.join("stdio"),
        bundles: dir.join("bundles"),
        dir,
        net,
        _lab: lab,
        haul,
        key,
        started,
        name: tag.to_string(),
        extra_cgroup: format!("haul-e2e-{}-{tag}-extra", std::process::id()),
    };
    for d in [&s.src_root, &s.dst_root, &s.dst_work()] {
        std::fs::create_dir(d).unwrap();
    }
    Some(s)
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut s) = self.serve.take() {
            let _ = s.guard().stop();
        }
        // What a killed serve left in its cgroups (CRIU, stdio relays): started by this test.
        for d in self.cgroup.dirs() {
            for pid in cgroup_tree_pids(d) {
                if let Ok(g) = PidGuard::new(pid) {
                    eprintln!("cleanup: killing {pid} ({})", proc_cmdline(pid));
                    let _ = g.kill();
                    g.wait_gone(Duration::from_secs(5));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                let d = h.path().join(&self.extra_cgroup);
                if d.is_dir() {
                    if let Err(e) = std::fs::remove_dir(&d) {
                        eprintln!("cleanup: rmdir {}: {e}", d.display());
                    }
                }
            }
        }
        match unmount_under(self.dir.path()) {
            Ok(m) if !m.is_empty() => eprintln!("cleanup: unmounted {m:?}"),
            Ok(_) => {}
            Err(e) => eprintln!("cleanup: {e}"),
        }
        eprintln!(
            "case {} took {:.1} s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
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

    /// `haul serve` in the dst namespace and the dedicated cgroups, with `opts`.
    fn serve_with(&mut self, opts: ServeOpts) {
        assert!(self.serve.is_none(), "serve already runs");
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
            .arg(&self.bundles)
            .arg("-v");
        if let Some(c) = &opts.criu {
            cmd.arg("--criu").arg(c);
        }
        if let Some(r) = &opts.runc {
            cmd.arg("--runc").arg(r);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let s = ChildWithLog::spawn("serve", &mut cmd)
            .unwrap()
            .with_grace(Duration::from_secs(5));
        s.wait_for_line("listening on", Duration::from_secs(10))
            .unwrap();
        self.serve = Some(s);
        self.serve_opts = opts;
    }

    fn serve(&mut self) {
        self.serve_with(ServeOpts::default());
    }

    fn serve_ref(&self) -> &ChildWithLog {
        self.serve.as_ref().expect("serve runs")
    }

    /// All serve output so far, of this serve and of earlier ones.
    fn serve_log(&self) -> String {
        let mut all = self.old_serve_logs.clone();
        if let Some(s) = &self.serve {
            all.push(s.log_text());
        }
        all.join("\n--- serve restarted ---\n")
    }

    /// Waits for serve to exit (e.g. it SIGKILLed itself at a HAUL_FAULT point).
    fn wait_serve_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut s = self.serve.take().expect("serve runs");
        let st = s
            .guard()
            .wait_timeout(timeout)
            .unwrap()
            .unwrap_or_else(|| panic!("serve still runs after {timeout:?}:\n{}", s.log_text()));
        self.old_serve_logs.push(s.log_text());
        st
    }

    fn kill_serve(&mut self) {
        let mut s = self.serve.take().expect("serve runs");
        s.guard().kill().unwrap();
        self.old_serve_logs.push(s.log_text());
    }

    /// Starts `haul serve` again with the options of the last one minus its HAUL_FAULT, as an
    /// init system would after a crash, and gives it a moment to look at its work directory.
    fn restart_serve(&mut self) {
        let mut opts = self.serve_opts.clone();
        opts.env.retain(|(k, _)| k != "HAUL_FAULT");
        self.serve_with(opts);
        std::thread::sleep(Duration::from_millis(500));
    }

    /// A container running the workload in the source runc root (`root`, default src_root).
    fn start_container(&self, root: Option<&Path>, cgroups_path: Option<&str>) -> Ctr {
        let id = unique_container_id();
        self.start_container_as(&id, root, cgroups_path)
    }

    fn start_container_as(&self, id: &str, root: Option<&Path>, cgroups_path: Option<&str>) -> Ctr {
        let root = root.unwrap_or(&self.src_root);
        let bdir = self.dir.join(format!("bundle-{}", unique_container_id()));
        let wb = WorkloadBundle::create(
            &bdir,
            &WorkloadOpts {
                mib: MIB,
                interval_ms: 5,
                sweep_ms: SWEEP_MS,
                ..WorkloadOpts::default()
            },
        )
        .unwrap();
        if let Some(p) = cgroups_path {
            wb.set_cgroups_path(p).unwrap();
        }
        let mut log =
            PipeLog::start(&self.dir.join(format!("stdio-{id}-{}.log", rand_tag()))).unwrap();
        let src = RuncContainer::run_detached(root, &wb.bundle.dir, id, &log).unwrap();
        log.close_writer();
        let st = src.state().unwrap();
        assert_eq!(st.status, "running", "{st:?}");
        Heartbeat::wait_advancing(&wb.heartbeat, Duration::from_secs(20)).unwrap();
        let keep = wb.bundle.data.join("keep.txt");
        let keep_text = format!("written before migrating {id}\n");
        std::fs::write(&keep, &keep_text).unwrap();
        Ctr {
            _dst: RuncContainer::adopt(&self.dst_root, id),
            _src: src,
            _log: log,
            id: id.to_string(),
            src_root: root.to_path_buf(),
            src_pid: st.pid,
            keep,
            keep_text,
            wb,
        }
    }

    /// `haul migrate runc ID` in the src namespace, in the background, in its own process
    /// group (so a test can signal the group as a terminal's Ctrl-C would).
    fn spawn_migrate(&self, c: &Ctr, extra: &[&str], env: &[(&str, &str)]) -> ChildWithLog {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.net.cmd_in(Side::Src, &self.haul);
        cmd.args(["migrate", "runc", &c.id, "--to", &self.dst(), "--key"])
            .arg(&self.key)
            .arg("--runc-root")
            .arg(&c.src_root)
            .arg("--work-dir")
            .arg(self.src_work())
            .args(extra)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        ChildWithLog::spawn("migrate", &mut cmd).unwrap()
    }

    /// Runs `haul migrate` to the end.
    fn migrate(&self, c: &Ctr, extra: &[&str], env: &[(&str, &str)]) -> Outcome {
        let m = self.spawn_migrate(c, extra, env);
        finish(m, QUICK)
    }

    /// Entries of the destination's work directory, without the `logs` of failed migrations.
    fn dst_work_entries(&self) -> Vec<String> {
        entries(&self.dst_work())
            .into_iter()
            .filter(|e| e != "logs")
            .collect()
    }

    /// What the destination holds right now (for the report of a killed serve).
    fn dst_leftovers(&self, c: &Ctr) -> String {
        let mut parts = Vec::new();
        let work: Vec<String> = self
            .dst_work_entries()
            .iter()
            .map(|m| {
                let mut files = entries(&self.dst_work().join(m));
                files.sort();
                format!("{m}: {files:?}")
            })
            .collect();
        parts.push(format!("work dir {work:?}"));
        parts.push(format!("runc root {:?}", entries(&self.dst_root)));
        parts.push(format!(
            "mounts {:?}",
            mounts_under(self.dir.path()).unwrap_or_default()
        ));
        parts.push(format!(
            "cgroups {:?}",
            self.cgroup.children_named(&c.id).len()
        ));
        let procs: Vec<String> = self
            .cgroup
            .dirs()
            .iter()
            .flat_map(|d| cgroup_tree_pids(d))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|p| format!("{p} {}", proc_cmdline(p)))
            .collect();
        parts.push(format!("processes {procs:?}"));
        parts.join("; ")
    }
}

fn rand_tag() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// Names in `dir`, without `bin` (haul's own `tar` for CRIU, `<work root>/bin/tar`).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "bin")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
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

/// A container of the source. Field order is drop order: the destination's copy goes first.
struct Ctr {
    _dst: RuncContainer,
    _src: RuncContainer,
    _log: PipeLog,
    id: String,
    src_root: PathBuf,
    src_pid: u32,
    keep: PathBuf,
    keep_text: String,
    wb: WorkloadBundle,
}

impl Drop for Ctr {
    fn drop(&mut self) {
        // A case that failed may leave it frozen; runc cannot kill a frozen task.
        for (p, _) in frozen_cgroups(&self.id) {
            let _ = std::fs::write(p.join("freezer.state"), "THAWED");
        }
    }
}

impl Ctr {
    fn freezer_state(&self) -> PathBuf {
        proc_cgroup_dir(self.src_pid, "freezer")
            .expect("freezer cgroup of the container")
            .join("freezer.state")
    }
}

/// How `haul migrate` ended.
struct Outcome {
    /// None: killed by a signal.
    code: Option<i32>,
    log: String,
    took: Duration,
}

fn finish(mut m: ChildWithLog, timeout: Duration) -> Outcome {
    let t = Instant::now();
    let st = m.guard().wait_timeout(timeout).unwrap();
    let took = t.elapsed();
    let Some(st) = st else {
        let log = m.log_text();
        m.guard().kill().unwrap();
        panic!("haul migrate did not end within {timeout:?}; its output:\n{log}");
    };
    // Let the reader threads take the last lines.
    std::thread::sleep(Duration::from_millis(50));
    let log = m.log_text();
    eprintln!("haul migrate ended ({st}) after {took:?}");
    Outcome {
        code: st.code(),
        log,
        took,
    }
}

impl Outcome {
    /// haul's error line (else its last line), at most 300 characters, for the evidence.
    fn last_line(&self) -> String {
        let l = self.error_line();
        match l.char_indices().nth(300) {
            Some((i, _)) => format!("{}...", &l[..i]),
            None => l,
        }
    }

    /// The last line with ` ERROR ` (haul's error message), else the last line.
    fn error_line(&self) -> String {
        let lines: Vec<&str> = self.log.lines().filter(|l| !l.trim().is_empty()).collect();
        lines
            .iter()
            .rev()
            .find(|l| l.contains(" ERROR "))
            .or(lines.last())
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    }

    fn expect(&self, code: i32, needles: &[&str], s: &Setup) {
        assert_eq!(
            self.code,
            Some(code),
            "exit code of haul migrate\n{}\nserve log:\n{}",
            self.log,
            s.serve_log()
        );
        for n in needles {
            assert!(
                self.log.contains(n),
                "haul migrate's message lacks {n:?}:\n{}",
                self.log
            );
        }
    }
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

/// Waits until the destination has received `bytes` more than `base` on its veth (the page
/// stream is under way); returns what it had received.
fn wait_rx(s: &Setup, base: u64, bytes: u64) -> u64 {
    wait_for("pages arriving at the destination", QUICK, || {
        let rx = s.net.veth_bytes(Side::Dst).ok()?.0;
        (rx >= base + bytes).then_some(rx - base)
    })
}

// ---------------------------------------------------------------------------------------------
// The invariant check
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runs {
    /// Still (again) on the source: the same process, resumed.
    Src,
    /// On the destination, registered with runc there under `dst_id`.
    Dst,
    /// Nowhere (in doubt: the source's tasks are gone, the destination stopped its copy).
    Nowhere,
}

struct Expect<'a> {
    runs: Runs,
    dst_id: &'a str,
    /// The destination keeps one migration directory with images and an IN-DOUBT note.
    in_doubt: bool,
    /// Other containers expected in the destination's runc root.
    other_dst: &'a [&'a str],
    /// Mount points expected under the test directory.
    mounts: &'a [PathBuf],
    /// The source's runc root may still list the container, not running (after exit 7).
    src_stale: bool,
}

impl<'a> Expect<'a> {
    fn new(runs: Runs, c: &'a Ctr) -> Self {
        Expect {
            runs,
            dst_id: &c.id,
            in_doubt: false,
            other_dst: &[],
            mounts: &[],
            src_stale: false,
        }
    }
}

impl Setup {
    /// The invariants after a case; returns a one-line summary.
    fn check(&self, c: &Ctr, e: &Expect<'_>) -> String {
        let ctx = || format!("\nserve log:\n{}", self.serve_log());
        // 1. Exactly one copy where expected, or none.
        let want = usize::from(e.runs != Runs::Nowhere);
        let pids = wait_for(
            &format!("{want} live copy of the workload of {}", c.id),
            Duration::from_secs(15),
            || {
                let p = c.wb.pids();
                (p.len() == want).then_some(p)
            },
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(c.wb.pids(), pids, "copies of {} changed", c.id);
        let mut summary = format!("{} copy", pids.len());
        match e.runs {
            Runs::Src => {
                assert_eq!(pids, vec![c.src_pid], "not the source's process{}", ctx());
                let st = runc_state(&c.src_root, &c.id).unwrap();
                assert_eq!(st.status, "running", "{st:?}");
                summary.push_str(" (the source's, resumed)");
            }
            Runs::Dst => {
                let st = runc_state(&self.dst_root, e.dst_id).unwrap();
                assert_eq!(st.status, "running", "{st:?}");
                assert_eq!(st.pid, pids[0], "runc state of the destination");
                match runc_state(&c.src_root, &c.id) {
                    Err(_) => {}
                    // After exit 7 the source never heard Done, so it did not `runc delete`.
                    Ok(st) if e.src_stale => {
                        assert_ne!(st.status, "running", "{st:?}");
                        summary.push_str(&format!(
                            " [the source runc root still lists it: {}]",
                            st.status
                        ));
                    }
                    Ok(st) => panic!("the source runc root still has {}: {st:?}", c.id),
                }
                summary.push_str(" (on the destination, registered)");
            }
            Runs::Nowhere => {}
        }
        let hb = &c.wb.heartbeat;
        if let Some(&pid) = pids.first() {
            // 2. Heartbeat advancing over more than one full memory sweep, never BAD.
            Heartbeat::wait_advancing(hb, Duration::from_secs(10)).unwrap();
            let poller = Poller::start(hb);
            std::thread::sleep(Duration::from_millis(SWEEP_MS + 300));
            let (n, _) = Heartbeat::wait_advancing(hb, Duration::from_secs(10)).unwrap();
            let st = poller.stop_stats();
            assert_eq!(st.bad, None, "memory check failed");
            assert_eq!(st.counter_regressions, 0, "heartbeat went backwards");
            summary.push_str(&format!(", heartbeat at {n} over a full memory sweep"));
            // 3. Thawed, and no CRIU rules in its own network namespace.
            let fz = proc_cgroup_dir(pid, "freezer")
                .unwrap()
                .join("freezer.state");
            assert_eq!(
                std::fs::read_to_string(&fz).unwrap().trim(),
                "THAWED",
                "{}",
                fz.display()
            );
            let own = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let rules = criu_netlock_rules(Some(&own)).unwrap();
            assert!(rules.is_empty(), "CRIU rules in the container: {rules:?}");
        } else {
            let before = Heartbeat::read(hb);
            std::thread::sleep(Duration::from_secs(1));
            assert_eq!(
                Heartbeat::read(hb),
                before,
                "the heartbeat moves: a copy runs"
            );
            assert!(c.wb.pids().is_empty());
        }
        // 4. The data directory is intact.
        assert_eq!(std::fs::read_to_string(&c.keep).unwrap(), c.keep_text);
        // 5. No frozen cgroup of this test anywhere.
        let frozen = frozen_cgroups(&format!("haul-e2e-{}", std::process::id()));
        assert!(frozen.is_empty(), "frozen cgroups left: {frozen:?}");
        // 6. No CRIU network-lock rules on this host and in the two lab namespaces.
        for ns in [
            None,
            Some(self.net.path(Side::Src)),
            Some(self.net.path(Side::Dst)),
        ] {
            let rules = criu_netlock_rules(ns.as_deref()).unwrap();
            assert!(rules.is_empty(), "CRIU rules in {ns:?}: {rules:?}");
        }
        // 7. No mounts left under the test directory.
        let mounts: Vec<PathBuf> = mounts_under(self.dir.path())
            .unwrap()
            .into_iter()
            .filter(|m| !e.mounts.contains(m))
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}{}", ctx());
        // 8. The destination's runc root: the container only if it runs there.
        let mut want_root: Vec<String> = e.other_dst.iter().map(|s| s.to_string()).collect();
        if e.runs == Runs::Dst {
            want_root.push(e.dst_id.to_string());
        }
        want_root.sort();
        want_root.dedup();
        assert_eq!(
            entries(&self.dst_root),
            want_root,
            "destination runc root{}",
            ctx()
        );
        // 9. Its cgroups under serve's, only if it runs there.
        let cgs = self.cgroup.children_named(e.dst_id);
        if e.runs == Runs::Dst {
            assert_eq!(cgs.len(), self.cgroup.dirs().len(), "{cgs:?}");
        } else {
            assert!(cgs.is_empty(), "cgroups left on the destination: {cgs:?}");
        }
        // 10. The destination's work directory.
        let left = self.dst_work_entries();
        if e.in_doubt {
            assert_eq!(left.len(), 1, "in doubt: one kept migration, not {left:?}");
            let kept = self.dst_work().join(&left[0]);
            let files = entries(&kept);
            assert!(
                files.iter().any(|f| f == "IN-DOUBT"),
                "no IN-DOUBT note in {}: {files:?}{}",
                kept.display(),
                ctx()
            );
            assert!(files.iter().any(|f| f == "inventory.img"), "{files:?}");
            assert!(
                files.iter().any(|f| f.starts_with("pages-")),
                "no pages kept: {files:?}"
            );
            summary.push_str(&format!(
                ", images kept in {} with IN-DOUBT: {:?}",
                left[0],
                std::fs::read_to_string(kept.join("IN-DOUBT"))
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        } else {
            assert!(
                left.is_empty(),
                "destination work dir left {left:?}{}",
                ctx()
            );
        }
        // 11. No stdio relay for it unless it runs there; nothing else of serve's left.
        let log = self.stdio_dir.join(format!("{}.log", e.dst_id));
        let relays = find_pids_with_arg(&log);
        if e.runs != Runs::Dst {
            assert!(
                relays.is_empty(),
                "stdio relays left: {:?}",
                relays.iter().map(|p| proc_cmdline(*p)).collect::<Vec<_>>()
            );
        }
        let serve_pid = self.serve.as_ref().map(|s| s.pid());
        // Containers that run on the destination (this one if it runs there, the others of
        // the case): their processes and stdio relays are not leftovers.
        let mut legit: Vec<u32> = Vec::new();
        for id in &want_root {
            for d in self.cgroup.children_named(id) {
                legit.extend(cgroup_tree_pids(&d));
            }
            legit.extend(find_pids_with_arg(self.stdio_dir.join(format!("{id}.log"))));
        }
        let stray: Vec<String> = self
            .cgroup
            .dirs()
            .iter()
            .flat_map(|d| cgroup_tree_pids(d))
            .filter(|p| Some(*p) != serve_pid && !legit.contains(p))
            .filter(|p| proc_stat(*p).is_some_and(|s| s.state != 'Z'))
            .map(|p| format!("{p} {}", proc_cmdline(p)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(stray.is_empty(), "processes left by serve: {stray:?}");
        summary
    }
}

fn evidence(case: &str, text: &str) {
    eprintln!("EVIDENCE {case}: {text}");
}

// ---------------------------------------------------------------------------------------------
// a-c: the destination killed
// ---------------------------------------------------------------------------------------------

/// A serve killed mid-migration leaves what it leaves; a restarted serve must clean it up.
fn restart_and_check(s: &mut Setup, c: &Ctr, e: &Expect<'_>) -> String {
    let before = s.dst_leftovers(c);
    eprintln!("left on the destination by the killed serve: {before}");
    s.restart_serve();
    let after = s.check(c, e);
    format!("{after}; before serve's restart: {before}")
}

/// Case a: serve SIGKILLed once 1 MiB of pages arrived (the link slowed down). Returns how
/// haul migrate ended and the bytes the destination had received.
fn kill_serve_mid_pages(s: &mut Setup, c: &Ctr) -> (Outcome, u64) {
    s.net.limit_rate(Side::Src, SLOW_RATE).unwrap();
    let base = s.net.veth_bytes(Side::Dst).unwrap().0;
    let m = s.spawn_migrate(c, &[], &[]);
    m.wait_for_line("freezing and dumping", QUICK).unwrap();
    let got = wait_rx(s, base, 1 << 20);
    s.kill_serve();
    let out = finish(m, QUICK);
    out.expect(6, &["keeps running on this host"], s);
    assert!(
        got < MIB << 20,
        "all pages had arrived ({got} bytes): not mid-stream"
    );
    (out, got)
}

#[test]
fn a_destination_killed_while_pages_stream() {
    let Some(mut s) = setup("fia") else { return };
    s.serve();
    let c = s.start_container(None, None);
    let (out, got) = kill_serve_mid_pages(&mut s, &c);
    let sum = restart_and_check(&mut s, &c, &Expect::new(Runs::Src, &c));
    evidence(
        "a",
        &format!(
            "serve SIGKILLed after {:.1} of {MIB} MiB; migrate exit 6 in {:?} ({}); {sum}",
            got as f64 / 1048576.0,
            out.took,
            out.last_line()
        ),
    );
}

/// What haul migrate says after case a should name the cause: the destination (connection)
/// went away, not only that CRIU's dump failed.
#[test]
fn a2_message_names_the_lost_destination() {
    let Some(mut s) = setup("fia2") else { return };
    s.serve();
    let c = s.start_container(None, None);
    let (out, _) = kill_serve_mid_pages(&mut s, &c);
    let err = out.error_line();
    assert!(
        err.contains("destination") || err.contains("connection"),
        "the message does not say the destination or the connection failed: {err}"
    );
    evidence("a2", &out.last_line());
}

#[test]
fn b_destination_killed_while_image_files_stream() {
    let Some(mut s) = setup("fib") else { return };
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-receiving".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &[], &[]);
    let st = s.wait_serve_exit(Duration::from_secs(5));
    assert!(s.serve_log().contains("HAUL_FAULT=dst-receiving"), "{st}");
    out.expect(6, &["keeps running on this host"], &s);
    let sum = restart_and_check(&mut s, &c, &Expect::new(Runs::Src, &c));
    evidence(
        "b",
        &format!(
            "migrate exit 6 in {:?} ({}); {sum}",
            out.took,
            out.last_line()
        ),
    );
}

#[test]
fn c_destination_killed_during_restore() {
    let Some(mut s) = setup("fic") else { return };
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-restoring".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &[], &[]);
    s.wait_serve_exit(Duration::from_secs(5));
    assert!(s.serve_log().contains("HAUL_FAULT=dst-restoring"));
    out.expect(6, &["keeps running on this host"], &s);
    let sum = restart_and_check(&mut s, &c, &Expect::new(Runs::Src, &c));
    evidence(
        "c",
        &format!(
            "migrate exit 6 in {:?} ({}); {sum}",
            out.took,
            out.last_line()
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// d: the connection cut (no FIN) at each phase
// ---------------------------------------------------------------------------------------------

#[test]
fn d0_link_down_before_connecting() {
    let Some(mut s) = setup("fid0") else { return };
    s.serve();
    let c = s.start_container(None, None);
    s.net
        .trigger(Side::Dst, &s.net.link_down_script(Side::Dst))
        .unwrap()
        .fire()
        .unwrap();
    let watch = FreezerWatch::start(c.freezer_state());
    let out = s.migrate(&c, &[], &[]);
    assert!(watch.stop().is_empty(), "the container was frozen");
    out.expect(5, &["cannot connect"], &s);
    run(Command::new("ip").args([
        "-n",
        s.net.name(Side::Dst),
        "link",
        "set",
        "dev",
        s.net.veth(Side::Dst),
        "up",
    ]))
    .unwrap();
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        "d0",
        &format!(
            "exit 5 in {:?} ({}); never frozen; {sum}",
            out.took,
            out.last_line()
        ),
    );
}

/// A runc wrapper whose `--version` (the destination's preflight) takes 3 s: a window to cut
/// the connection while the source waits for Prepared.
fn slow_preflight_runc(s: &Setup) -> PathBuf {
    let p = s.dir.join("slow-runc");
    let runc = find_tool("runc").unwrap();
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && sleep 3\nexec {} \"$@\"\n",
            runc.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Case d1: every packet dropped while the destination's preflight runs (3 s: a slow runc).
fn cut_during_preflight(s: &mut Setup, c: &Ctr) -> Outcome {
    let runc = slow_preflight_runc(s);
    s.serve_with(ServeOpts {
        runc: Some(runc),
        ..ServeOpts::default()
    });
    let mut cut = s
        .net
        .trigger(Side::Dst, &NetnsPair::drop_port_script(PORT))
        .unwrap();
    let watch = FreezerWatch::start(c.freezer_state());
    let m = s.spawn_migrate(c, &[], &[]);
    m.wait_for_line("preflight:", QUICK).unwrap();
    cut.fire().unwrap();
    let out = finish(m, SLOW);
    assert!(watch.stop().is_empty(), "the container was frozen");
    out.expect(5, &["preflight"], s);
    out
}

#[test]
fn d1_packets_dropped_during_preflight() {
    let Some(mut s) = setup("fid1") else { return };
    let c = s.start_container(None, None);
    let out = cut_during_preflight(&mut s, &c);
    // The destination gives up on its own (idle timeout) and removes its work directory.
    wait_for("the destination giving up", SLOW, || {
        s.dst_work_entries().is_empty().then_some(())
    });
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        "d1",
        &format!(
            "exit 5 in {:?} ({}); never frozen; {sum}",
            out.took,
            out.last_line()
        ),
    );
}

/// A dead connection found by TCP_USER_TIMEOUT or keepalive (~20 s) must not be reported as
/// "peer sent nothing for 120 s" (the idle timeout): the message should say what happened.
#[test]
fn d5_dead_connection_message_states_the_cause() {
    let Some(mut s) = setup("fid5") else { return };
    let c = s.start_container(None, None);
    let out = cut_during_preflight(&mut s, &c);
    let err = out.error_line();
    assert!(
        out.took >= Duration::from_secs(120) || !err.contains("for 120 s"),
        "after {:?} the message claims 120 s of silence: {err}",
        out.took
    );
    evidence("d5", &out.last_line());
}

#[test]
fn d2_link_down_while_pages_stream() {
    let Some(mut s) = setup("fid2") else { return };
    s.serve();
    let c = s.start_container(None, None);
    s.net.limit_rate(Side::Src, SLOW_RATE).unwrap();
    let mut cut = s
        .net
        .trigger(Side::Dst, &s.net.link_down_script(Side::Dst))
        .unwrap();
    let base = s.net.veth_bytes(Side::Dst).unwrap().0;
    let m = s.spawn_migrate(&c, &[], &[]);
    m.wait_for_line("freezing and dumping", QUICK).unwrap();
    let got = wait_rx(&s, base, 1 << 20);
    cut.fire().unwrap();
    let out = finish(m, SLOW);
    out.expect(6, &["keeps running on this host"], &s);
    wait_for("the destination giving up", SLOW, || {
        s.dst_work_entries().is_empty().then_some(())
    });
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        "d2",
        &format!(
            "link down after {:.1} MiB; exit 6 in {:?} ({}); {sum}",
            got as f64 / 1048576.0,
            out.took,
            out.last_line()
        ),
    );
}

/// Cut (both directions) once the destination has all images and starts restoring: the
/// source never hears Ready and rolls back after its idle timeout; the destination, which
/// reported Ready and never heard Commit, stops its copy and keeps the images (it cannot know
/// the source did not stop its tasks).
#[test]
fn d3_packets_dropped_while_restoring() {
    let Some(mut s) = setup("fid3") else { return };
    // The destination pauses 3 s after sending RESTORE, so the cut (four iptables commands,
    // ~100 ms) surely lands before its Ready: a restore takes ~50 ms.
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-restoring:pause".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let mut cut = s
        .net
        .trigger(Side::Dst, &NetnsPair::drop_port_script(PORT))
        .unwrap();
    let m = s.spawn_migrate(&c, &[], &[]);
    s.serve_ref().wait_for_line("pausing 3 s", QUICK).unwrap();
    cut.fire().unwrap();
    let out = finish(m, SLOW);
    out.expect(6, &["keeps running on this host"], &s);
    // The destination restored (after its pause) and reported Ready, which never arrived: it
    // hears no Commit and keeps the images in doubt once the link times out.
    wait_for("the destination's verdict", SLOW, || {
        s.serve_log().contains("IN DOUBT").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut e = Expect::new(Runs::Src, &c);
    e.in_doubt = true;
    let sum = s.check(&c, &e);
    evidence(
        "d3",
        &format!(
            "exit 6 in {:?} ({}); destination reported Ready, no Commit: kept images IN DOUBT \
             (the source runs them); {sum}",
            out.took,
            out.last_line(),
        ),
    );
}

/// Drop what reaches serve (one direction) from the moment it registered the held container:
/// Ready still gets to the source, which stops its tasks and sends Commit, which never arrives.
/// Zero copies; the destination keeps the images; `haul recover` completes it.
#[test]
fn d4_packets_dropped_after_ready_before_commit() {
    let Some(mut s) = setup("fid4") else { return };
    s.serve();
    let c = s.start_container(None, None);
    let mut cut = s
        .net
        .trigger(
            Side::Dst,
            &format!(
                "iptables -w -I INPUT -p tcp --dport {PORT} -m comment --comment haul-e2e-cut -j DROP"
            ),
        )
        .unwrap();
    let m = s.spawn_migrate(&c, &[], &[]);
    s.serve_ref()
        .wait_for_line("registered container", QUICK)
        .unwrap();
    cut.fire().unwrap();
    let out = finish(m, SLOW);
    out.expect(7, &["IN DOUBT"], &s);
    wait_for("the destination's verdict", SLOW, || {
        s.serve_log().contains("IN DOUBT").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut e = Expect::new(Runs::Nowhere, &c);
    e.in_doubt = true;
    let sum = s.check(&c, &e);
    let rec = recover(&mut s, &c);
    evidence(
        "d4",
        &format!(
            "exit 7 in {:?} ({}); {sum}; then {rec}",
            out.took,
            out.last_line()
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// e, f: the destination cannot restore
// ---------------------------------------------------------------------------------------------

/// Case e: a 2 MiB tmpfs on the destination's work directory (unmounted by the caller, or by
/// `Drop for Setup`).
fn small_dst_work_dir(s: &Setup) -> PathBuf {
    let work = s.dst_work();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "haul-e2e-fie"])
        .arg(&work))
    .unwrap();
    work
}

#[test]
fn e_destination_work_dir_full() {
    let Some(mut s) = setup("fie") else { return };
    let work = small_dst_work_dir(&s);
    s.serve();
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &[], &[]);
    out.expect(6, &["keeps running on this host"], &s);
    let mut e = Expect::new(Runs::Src, &c);
    let mounts = [work.clone()];
    e.mounts = &mounts;
    let sum = s.check(&c, &e);
    // Unmount (serve holds nothing there now), then the directory is an empty one of ours.
    let serve_log = s.serve_log();
    if let Some(mut sv) = s.serve.take() {
        sv.guard().stop().unwrap();
        s.old_serve_logs.push(sv.log_text());
    }
    run(Command::new("umount").arg(&work)).unwrap();
    assert!(entries(&work).is_empty());
    let why = serve_log
        .lines()
        .find(|l| l.contains("No space") || l.contains("ENOSPC") || l.contains("space"))
        .unwrap_or("(no ENOSPC line in serve's log)")
        .to_string();
    evidence(
        "e",
        &format!(
            "2 MiB tmpfs, {MIB} MiB container: exit 6 in {:?} ({}); serve: {why}; {sum}",
            out.took,
            out.last_line()
        ),
    );
}

/// After case e the message should say the destination ran out of space.
#[test]
fn e2_message_says_the_destination_is_full() {
    let Some(mut s) = setup("fie2") else { return };
    small_dst_work_dir(&s);
    s.serve();
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &[], &[]);
    out.expect(6, &["keeps running on this host"], &s);
    let err = out.error_line();
    assert!(
        err.contains("space") || err.contains("full"),
        "the message does not say the destination is out of space: {err}"
    );
    evidence("e2", &out.last_line());
}

#[test]
fn f1_bind_source_removed_after_preflight() {
    let Some(mut s) = setup("fif1") else { return };
    s.serve();
    let c = s.start_container(None, None);
    let data = c.wb.bundle.data.clone();
    let moved = data.with_file_name("hostdata.moved");
    let m = s.spawn_migrate(&c, &[], &[]);
    m.wait_for_line("freezing and dumping", QUICK).unwrap();
    // The running container keeps its mount; the destination's restore finds no source.
    std::fs::rename(&data, &moved).unwrap();
    let out = finish(m, QUICK);
    std::fs::rename(&moved, &data).unwrap();
    out.expect(6, &["keeps running on this host"], &s);
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        "f1",
        &format!(
            "data dir renamed after preflight: exit 6 in {:?} ({}); {sum}",
            out.took,
            out.last_line()
        ),
    );
}

/// A criu wrapper that sets `CRIU_FAULT` (haul clears CRIU's environment).
fn criu_with_fault(s: &Setup, fault: u32) -> PathBuf {
    let p = s.dir.join(format!("criu-fault-{fault}"));
    let criu = find_tool("criu").unwrap();
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nexport CRIU_FAULT={fault}\nexec {} \"$@\"\n",
            criu.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// CRIU's own fault injection on the destination: FI_POST_RESTORE (6) fails the restore at its
/// very end, the tasks restored and about to be held (`goto out_kill`). (FI_RESTORE_ROOT_ONLY,
/// 2, does nothing to a container: the root task SIGKILLs itself, and the init of a pid
/// namespace ignores SIGKILL sent from inside it.)
#[test]
fn f2_criu_fault_injection_fails_the_restore() {
    let Some(mut s) = setup("fif2") else { return };
    let criu = criu_with_fault(&s, 6);
    s.serve_with(ServeOpts {
        criu: Some(criu),
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &[], &[]);
    out.expect(6, &["keeps running on this host"], &s);
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        "f2",
        &format!(
            "CRIU_FAULT=6 (FI_POST_RESTORE) on the destination: exit 6 in {:?} ({}); {sum}",
            out.took,
            out.last_line()
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// g, l: the source killed or interrupted
// ---------------------------------------------------------------------------------------------

#[test]
fn g_source_killed_while_frozen() {
    let Some(mut s) = setup("fig") else { return };
    s.serve();
    let c = s.start_container(None, None);
    let watch = FreezerWatch::start(c.freezer_state());
    let out = s.migrate(&c, &[], &[("HAUL_FAULT", "src-frozen")]);
    let seen = watch.stop();
    assert_eq!(out.code, None, "not killed: {}", out.log);
    assert!(out.log.contains("HAUL_FAULT=src-frozen"), "{}", out.log);
    assert!(seen.iter().any(|x| x == "FROZEN"), "never frozen: {seen:?}");
    // The destination sees the connection end and cleans up.
    wait_for("serve ending the migration", QUICK, || {
        s.dst_work_entries().is_empty().then_some(())
    });
    // CRIU resumed the tasks when haul's socket closed; the cgroup haul froze must thaw too.
    let fz = c.freezer_state();
    // (CRIU thaws it for a moment when it lets the tasks go: it must stay thawed.)
    let end = Instant::now() + Duration::from_secs(10);
    let mut thawed_since: Option<Instant> = None;
    while Instant::now() < end && thawed_since.is_none_or(|t| t.elapsed() < Duration::from_secs(1))
    {
        let thawed = std::fs::read_to_string(&fz).unwrap().trim() == "THAWED";
        thawed_since = if thawed {
            thawed_since.or(Some(Instant::now()))
        } else {
            None
        };
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = std::fs::read_to_string(&fz).unwrap();
    assert_eq!(
        state.trim(),
        "THAWED",
        "{} 10 s after haul migrate was killed; runc state: {:?}",
        fz.display(),
        runc_state(&s.src_root, &c.id)
    );
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        "g",
        &format!("haul migrate SIGKILLed at post-dump (container FROZEN); {sum}"),
    );
}

fn interrupted(tag: &str, sig: Signal, group: bool) -> String {
    let Some(mut s) = setup(tag) else {
        return String::new();
    };
    s.serve();
    let c = s.start_container(None, None);
    s.net.limit_rate(Side::Src, SLOW_RATE).unwrap();
    let base = s.net.veth_bytes(Side::Dst).unwrap().0;
    let mut m = s.spawn_migrate(&c, &[], &[]);
    m.wait_for_line("freezing and dumping", QUICK).unwrap();
    let got = wait_rx(&s, base, 1 << 20);
    // Stopped (CRIU holds the tasks with ptrace and thaws the cgroup meanwhile).
    let hb = Heartbeat::read(&c.wb.heartbeat);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(Heartbeat::read(&c.wb.heartbeat), hb, "the workload runs");
    let pid = rustix::process::Pid::from_raw(m.pid() as i32).unwrap();
    if group {
        rustix::process::kill_process_group(pid, sig).unwrap();
    } else {
        m.guard().signal(sig).unwrap();
    }
    let out = finish(m, QUICK);
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "2 s after the signal: freezer {}, runc {:?}, copies {:?}, destination {}",
        std::fs::read_to_string(c.freezer_state())
            .unwrap_or_default()
            .trim(),
        runc_state(&s.src_root, &c.id).map(|st| st.status),
        c.wb.pids(),
        s.dst_leftovers(&c)
    );
    out.expect(6, &["keeps running on this host"], &s);
    wait_for("serve ending the migration", QUICK, || {
        s.dst_work_entries().is_empty().then_some(())
    });
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    format!(
        "{sig:?} to {} after {:.1} MiB sent, container stopped: exit 6 in {:?} ({}); {sum}",
        if group { "the process group" } else { "haul" },
        got as f64 / 1048576.0,
        out.took,
        out.last_line()
    )
}

/// A page stream that lasts longer than the idle timeout (120 s) over a slow link, with a
/// destination that says nothing meanwhile: the migration succeeds. (The source used to give
/// the connection up after 120 s without a frame from the destination, rolling back every
/// migration that took longer to stream.) Takes about 3 minutes: run by hand with
/// `cargo test -p haul-e2e --test fault_injection -- --ignored n1`.
#[test]
#[ignore]
fn n1_a_page_stream_longer_than_the_idle_timeout() {
    let Some(mut s) = setup("fin1") else { return };
    s.serve();
    let c = s.start_container(None, None);
    // 8 MiB of workload at 400 kbit/s: ~170 s of pages.
    s.net.limit_rate(Side::Src, "400kbit").unwrap();
    let m = s.spawn_migrate(&c, &[], &[]);
    let out = finish(m, Duration::from_secs(400));
    out.expect(0, &["migrated runc"], &s);
    assert!(
        out.took > haul::limits::IDLE_TIMEOUT,
        "the stream took only {:?}: not longer than the idle timeout",
        out.took
    );
    let sum = s.check(&c, &Expect::new(Runs::Dst, &c));
    evidence(
        "n1",
        &format!("exit 0 in {:?} at 400 kbit/s; {sum}", out.took),
    );
}

/// SIGINT while `--fs copy` sends the bundle, before anything froze: haul stops at once (it
/// used to act on the signal only after the copy, minutes on a slow link) and says nothing was
/// frozen; the container runs on here.
#[test]
fn l3_sigint_during_the_bundle_copy() {
    let Some(mut s) = setup("fil3") else { return };
    s.serve();
    let c = s.start_container(None, None);
    s.net.limit_rate(Side::Src, "2mbit").unwrap();
    let mut m = s.spawn_migrate(&c, &["--fs", "copy"], &[]);
    m.wait_for_line("copying the bundle", QUICK).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    m.guard().signal(Signal::INT).unwrap();
    let out = finish(m, QUICK);
    out.expect(
        6,
        &[
            "interrupted by SIGINT before anything was frozen",
            "keeps running on this host",
        ],
        &s,
    );
    assert!(
        !out.log.contains("freezing"),
        "the dump started:\n{}",
        out.log
    );
    wait_for("serve ending the migration", QUICK, || {
        s.dst_work_entries().is_empty().then_some(())
    });
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        "l3",
        &format!(
            "SIGINT during the bundle copy: exit 6 in {:?}; {sum}",
            out.took
        ),
    );
}

#[test]
fn l1_sigterm_to_the_source_while_frozen() {
    let ev = interrupted("fil1", Signal::TERM, false);
    evidence("l1", &ev);
}

#[test]
fn l2_sigint_to_the_source_process_group_while_frozen() {
    let ev = interrupted("fil2", Signal::INT, true);
    evidence("l2", &ev);
}

// ---------------------------------------------------------------------------------------------
// h: the destination killed after Ready, before Commit
// ---------------------------------------------------------------------------------------------

/// `haul recover DIR` for the one kept migration, in serve's namespace and cgroups; then the
/// container must run exactly once on the destination.
fn recover(s: &mut Setup, c: &Ctr) -> String {
    let kept = s.dst_work().join(&s.dst_work_entries()[0]);
    let mut cmd = s.cgroup.wrap(s.net.cmd_in(Side::Dst, "sh"), &s.haul);
    cmd.arg("recover")
        .arg(&kept)
        .arg("--runc-root")
        .arg(&s.dst_root)
        .arg("--bundle-root")
        .arg(&s.bundles)
        .arg("--stdio-dir")
        .arg(&s.stdio_dir);
    let t = Instant::now();
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("haul recover ({:?}): {}\n{err}", t.elapsed(), out.status);
    assert!(out.status.success(), "haul recover failed: {err}");
    let mut e = Expect::new(Runs::Dst, c);
    e.src_stale = true;
    let sum = s.check(c, &e);
    format!("`haul recover` exit 0 in {:?}: {sum}", t.elapsed())
}

#[test]
fn h_destination_killed_after_ready_before_commit() {
    let Some(mut s) = setup("fih") else { return };
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-ready".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &[], &[]);
    s.wait_serve_exit(Duration::from_secs(5));
    assert!(s.serve_log().contains("HAUL_FAULT=dst-ready"));
    out.expect(7, &["IN DOUBT"], &s);
    // Never two copies, and here none: the source's tasks are gone, the held copy died with
    // serve's CRIU.
    wait_for("no copy running", Duration::from_secs(10), || {
        c.wb.pids().is_empty().then_some(())
    });
    let left = s.dst_leftovers(&c);
    eprintln!("left on the destination by the killed serve: {left}");
    // A restarted serve keeps the images with an IN-DOUBT note and removes the rest.
    s.restart_serve();
    let mut e = Expect::new(Runs::Nowhere, &c);
    e.in_doubt = true;
    let sum = s.check(&c, &e);
    let rec = recover(&mut s, &c);
    evidence(
        "h",
        &format!(
            "exit 7 in {:?} ({}); left by the killed serve: {left}; after restart: {sum}; then {rec}",
            out.took,
            out.last_line()
        ),
    );
}

/// The destination resumed the restored tasks and fills their memory from its own images when
/// its `haul serve` is killed: the post-copy guard stops the tasks (their memory would never
/// be filled), the source says in doubt, and the complete images stay for `haul recover`.
#[test]
fn h2_destination_killed_while_filling_memory_after_the_resume() {
    let Some(mut s) = setup("fih2") else { return };
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-filling".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &[], &[]);
    s.wait_serve_exit(Duration::from_secs(5));
    assert!(s.serve_log().contains("HAUL_FAULT=dst-filling"));
    out.expect(
        7,
        &["IN DOUBT", "resumed the tasks", "filling their memory"],
        &s,
    );
    // Never two copies, and here none: the source's tasks are gone, the guard stopped the
    // destination's.
    wait_for("no copy running", Duration::from_secs(10), || {
        c.wb.pids().is_empty().then_some(())
    });
    let left = s.dst_leftovers(&c);
    s.restart_serve();
    let mut e = Expect::new(Runs::Nowhere, &c);
    e.in_doubt = true;
    let sum = s.check(&c, &e);
    assert!(
        s.serve_log()
            .contains("while the resumed tasks' memory was being filled"),
        "{}",
        s.serve_log()
    );
    let rec = recover(&mut s, &c);
    evidence(
        "h2",
        &format!(
            "exit 7 in {:?} ({}); left by the killed serve: {left}; after restart: {sum}; then {rec}",
            out.took,
            out.last_line()
        ),
    );
}

/// The daemon filling the memory after the resume dies (HAUL_FAULT=dst-fill-fails: serve
/// kills it right after telling the source the tasks run): the destination stops the tasks
/// whose memory is not filled and keeps the complete images in doubt; `haul recover` runs them.
#[test]
fn h3_the_fill_after_the_resume_fails() {
    let Some(mut s) = setup("fih3") else { return };
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-fill-fails".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &[], &[]);
    out.expect(
        7,
        &["IN DOUBT", "resumed the tasks", "filling their memory"],
        &s,
    );
    wait_for("the destination's verdict", QUICK, || {
        s.serve_log().contains("IN DOUBT").then_some(())
    });
    assert!(
        s.serve_log()
            .contains("filling the restored memory after the resume failed"),
        "{}",
        s.serve_log()
    );
    // Never two copies, and here none: the source's tasks are gone, the destination stopped
    // its own.
    wait_for("no copy running", Duration::from_secs(10), || {
        c.wb.pids().is_empty().then_some(())
    });
    let mut e = Expect::new(Runs::Nowhere, &c);
    e.in_doubt = true;
    let sum = s.check(&c, &e);
    let rec = recover(&mut s, &c);
    evidence(
        "h3",
        &format!(
            "exit 7 in {:?} ({}); {sum}; then {rec}",
            out.took,
            out.last_line()
        ),
    );
}

/// The journal cannot be written once the restored tasks run (HAUL_FAULT=dst-journal-fails;
/// a full disk in life): the migration is done all the same. The old error path took it for a
/// failure and removed the runc registration and the only complete images of a running
/// container.
#[test]
fn h4_the_journal_fails_after_the_commit() {
    let Some(mut s) = setup("fih4") else { return };
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-journal-fails".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &[], &[]);
    out.expect(0, &["migrated runc"], &s);
    assert!(
        s.serve_log().contains("the journal could not say so"),
        "{}",
        s.serve_log()
    );
    let sum = s.check(&c, &Expect::new(Runs::Dst, &c));
    evidence("h4", &format!("exit 0 in {:?}; {sum}", out.took));
}

/// `--mode restart`: serve dies right after runc started the container, before it could say so
/// (HAUL_FAULT=dst-started). The source must not start its copy again: exit 7 with what to
/// check, the container stopped here and running on the destination.
#[test]
fn h5_restart_mode_destination_killed_after_the_start() {
    let Some(mut s) = setup("fih5") else { return };
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-started".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let out = s.migrate(
        &c,
        &["--mode", "restart", "--fs", "copy", "--stop-timeout", "1"],
        &[],
    );
    out.expect(7, &["IN DOUBT", "runc list"], &s);
    let here = runc_state(&s.src_root, &c.id).map(|st| st.status);
    assert!(
        !matches!(here.as_deref(), Ok("running")),
        "started again on the source: {here:?}"
    );
    let there = runc_state(&s.dst_root, &c.id).unwrap();
    assert_eq!(there.status, "running", "{there:?}");
    evidence(
        "h5",
        &format!(
            "exit 7 in {:?}; source {here:?}, destination {}",
            out.took, there.status
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// i: criu missing or too old
// ---------------------------------------------------------------------------------------------

/// A fake `criu` that answers VERSION with `major.minor` over the swrk socket (one SEQPACKET
/// message in, one out), then exits.
fn old_criu(s: &Setup, major: i32, minor: i32) -> PathBuf {
    use haul_proto::criu::{CriuReqType, CriuResp, CriuVersion};
    use prost::Message;
    let resp = CriuResp {
        r#type: CriuReqType::Version as i32,
        success: true,
        version: Some(CriuVersion {
            major_number: major,
            minor_number: minor,
            sublevel: Some(0),
            ..CriuVersion::default()
        }),
        ..CriuResp::default()
    };
    let bin = s.dir.join("version.pb");
    std::fs::write(&bin, resp.encode_to_vec()).unwrap();
    let p = s.dir.join(format!("criu-{major}.{minor}"));
    // bash: dash cannot redirect descriptors above 9, and haul's swrk socket often is one.
    let bash = find_tool("bash").expect("bash for the fake criu");
    std::fs::write(
        &p,
        format!(
            "#!{}\n\
             # fake criu {major}.{minor}: `criu swrk FD` answers one request (VERSION)\n\
             [ \"$1\" = swrk ] || {{ echo \"Version: {major}.{minor}\"; exit 0; }}\n\
             dd bs=65536 count=1 of=/dev/null status=none <&\"$2\"\n\
             cat {} >&\"$2\"\n",
            bash.display(),
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn criu_refused(
    tag: &str,
    case: &str,
    on_dst: bool,
    criu: impl Fn(&Setup) -> PathBuf,
    codes: &[i32],
    needles: &[&str],
) {
    let Some(mut s) = setup(tag) else { return };
    let fake = criu(&s);
    if on_dst {
        s.serve_with(ServeOpts {
            criu: Some(fake.clone()),
            ..ServeOpts::default()
        });
    } else {
        s.serve();
    }
    let c = s.start_container(None, None);
    let watch = FreezerWatch::start(c.freezer_state());
    let fake_s = fake.to_string_lossy().into_owned();
    let extra: Vec<&str> = if on_dst {
        vec![]
    } else {
        vec!["--criu", &fake_s]
    };
    let out = s.migrate(&c, &extra, &[]);
    assert!(watch.stop().is_empty(), "the container was frozen");
    assert!(
        out.code.is_some_and(|c| codes.contains(&c)),
        "exit code {:?}, want one of {codes:?}: {}",
        out.code,
        out.log
    );
    for n in needles {
        assert!(out.log.contains(n), "message lacks {n:?}: {}", out.log);
    }
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        case,
        &format!(
            "exit {:?} in {:?} ({}); never frozen; {sum}",
            out.code,
            out.took,
            out.last_line()
        ),
    );
}

#[test]
fn i1_criu_missing_on_the_source() {
    criu_refused(
        "fii1",
        "i1",
        false,
        |s| s.dir.join("no-such-criu"),
        &[3],
        &["criu", "no-such-criu"],
    );
}

#[test]
fn i2_criu_missing_on_the_destination() {
    criu_refused(
        "fii2",
        "i2",
        true,
        |s| s.dir.join("no-such-criu"),
        // The destination's to fix: refused (5), not "this host cannot" (3).
        &[5],
        &["criu", "destination"],
    );
}

#[test]
fn i3_criu_too_old_on_the_source() {
    criu_refused(
        "fii3",
        "i3",
        false,
        |s| old_criu(s, 3, 19),
        &[3],
        &["criu 3.19", "too old"],
    );
}

#[test]
fn i4_criu_too_old_on_the_destination() {
    criu_refused(
        "fii4",
        "i4",
        true,
        |s| old_criu(s, 3, 19),
        &[5],
        &["criu 3.19", "destination", "too old"],
    );
}

// ---------------------------------------------------------------------------------------------
// j, k: ids on the destination
// ---------------------------------------------------------------------------------------------

#[test]
fn j_id_already_exists_on_the_destination() {
    let Some(mut s) = setup("fij") else { return };
    s.serve();
    let c = s.start_container(None, None);
    // Another container with that id runs on the destination (its own cgroup path: runc's
    // default `/<id>` is the source container's on this one machine).
    let other = s.start_container_as(
        &c.id,
        Some(&s.dst_root.clone()),
        Some(&format!("/{}/{}", s.extra_cgroup, c.id)),
    );
    let other_pid = other.src_pid;
    let watch = FreezerWatch::start(c.freezer_state());
    let out = s.migrate(&c, &[], &[]);
    assert!(watch.stop().is_empty(), "the container was frozen");
    out.expect(5, &["already exists"], &s);
    let mut e = Expect::new(Runs::Src, &c);
    let ids = [c.id.as_str()];
    e.other_dst = &ids;
    let sum = s.check(&c, &e);
    // The destination's own container is untouched.
    assert_eq!(other.wb.pids(), vec![other_pid]);
    assert_eq!(runc_state(&s.dst_root, &c.id).unwrap().pid, other_pid);
    Heartbeat::wait_advancing(&other.wb.heartbeat, Duration::from_secs(5)).unwrap();
    evidence(
        "j",
        &format!(
            "exit 5 in {:?} ({}); never frozen; the destination's own {} untouched (pid {other_pid}); {sum}",
            out.took,
            out.last_line(),
            c.id
        ),
    );
}

#[test]
fn k1_two_migrations_of_one_id_at_once() {
    let Some(mut s) = setup("fik1") else { return };
    s.serve();
    // Two "source hosts" (runc roots) with a container each, one id.
    let root2 = s.dir.join("src-root-2");
    std::fs::create_dir(&root2).unwrap();
    let a = s.start_container(None, None);
    let b = s.start_container_as(
        &a.id,
        Some(&root2),
        Some(&format!("/{}/{}", s.extra_cgroup, a.id)),
    );
    let ma = s.spawn_migrate(&a, &[], &[]);
    let mb = s.spawn_migrate(&b, &[], &[]);
    let (oa, ob) = (finish(ma, QUICK), finish(mb, QUICK));
    let codes = (oa.code, ob.code);
    let (won, lost, ow, ol) = match codes {
        (Some(0), Some(_)) => (&a, &b, &oa, &ob),
        (Some(_), Some(0)) => (&b, &a, &ob, &oa),
        _ => panic!(
            "no migration succeeded: {codes:?}\n{}\n{}\nserve:\n{}",
            oa.log,
            ob.log,
            s.serve_log()
        ),
    };
    assert_eq!(
        ol.code,
        Some(5),
        "the other one must be refused before freezing:\n{}\nserve:\n{}",
        ol.log,
        s.serve_log()
    );
    assert!(ol.log.contains("already exists"), "{}", ol.log);
    let sw = s.check(won, &Expect::new(Runs::Dst, won));
    // The winner's runc state, cgroups and relay carry the same id: check the loser by its
    // process, heartbeat and freezer.
    let pids = lost.wb.pids();
    assert_eq!(pids, vec![lost.src_pid]);
    Heartbeat::wait_advancing(&lost.wb.heartbeat, Duration::from_secs(5)).unwrap();
    assert_eq!(
        std::fs::read_to_string(lost.freezer_state())
            .unwrap()
            .trim(),
        "THAWED"
    );
    evidence(
        "k1",
        &format!(
            "same id: one exit 0 ({}), the other exit 5 ({}); winner {sw}; loser still runs on its source (pid {})",
            ow.last_line(),
            ol.last_line(),
            lost.src_pid
        ),
    );
}

#[test]
fn k2_two_migrations_of_different_ids_at_once() {
    let Some(mut s) = setup("fik2") else { return };
    s.serve();
    let a = s.start_container(None, None);
    let b = s.start_container(None, None);
    let ma = s.spawn_migrate(&a, &[], &[]);
    let mb = s.spawn_migrate(&b, &[], &[]);
    let (oa, ob) = (finish(ma, QUICK), finish(mb, QUICK));
    oa.expect(0, &["migrated runc"], &s);
    ob.expect(0, &["migrated runc"], &s);
    let mut ea = Expect::new(Runs::Dst, &a);
    let ib = [b.id.as_str()];
    ea.other_dst = &ib;
    let sa = s.check(&a, &ea);
    let mut eb = Expect::new(Runs::Dst, &b);
    let ia = [a.id.as_str()];
    eb.other_dst = &ia;
    let sb = s.check(&b, &eb);
    evidence(
        "k2",
        &format!(
            "both exit 0 ({:?}, {:?}); {}: {sa}; {}: {sb}",
            oa.took, ob.took, a.id, b.id
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// m: --lazy (post-copy). Before the Commit a failure resumes the source; after it, the memory
// is split between the hosts and a failure stops both copies (exit 8).
// ---------------------------------------------------------------------------------------------

#[test]
fn m1_lazy_migration_runs_on_the_destination() {
    let Some(mut s) = setup("fim1") else { return };
    s.serve();
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &["--lazy"], &[]);
    out.expect(0, &["migrated runc", "post-copy"], &s);
    assert!(
        s.serve_log().contains("post-copy done"),
        "{}",
        s.serve_log()
    );
    let sum = s.check(&c, &Expect::new(Runs::Dst, &c));
    evidence("m1", &format!("--lazy exit 0 in {:?}; {sum}", out.took));
}

/// The destination dies while it restores, with the source's CRIU already serving pages: the
/// page server must fail (not end), so that CRIU resumes the tasks instead of killing them.
#[test]
fn m2_lazy_destination_killed_during_restore() {
    let Some(mut s) = setup("fim2") else { return };
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-restoring".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let out = s.migrate(&c, &["--lazy"], &[]);
    s.wait_serve_exit(Duration::from_secs(5));
    out.expect(6, &["keeps running on this host"], &s);
    let sum = restart_and_check(&mut s, &c, &Expect::new(Runs::Src, &c));
    evidence(
        "m2",
        &format!(
            "--lazy, destination killed while restoring: exit 6 in {:?} ({}); {sum}",
            out.took,
            out.last_line()
        ),
    );
}

/// SIGINT to the source while the destination restores (the source's CRIU serves pages):
/// rolled back, the container runs on the source.
#[test]
fn m3_lazy_sigint_before_the_commit() {
    let Some(mut s) = setup("fim3") else { return };
    // The destination pauses 3 s after sending RESTORE: the window before the Commit in which
    // the source's CRIU already serves pages.
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-restoring:pause".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let m = s.spawn_migrate(&c, &["--lazy"], &[]);
    m.wait_for_line("restoring on the destination", QUICK)
        .unwrap();
    s.serve_ref().wait_for_line("pausing 3 s", QUICK).unwrap();
    let pid = rustix::process::Pid::from_raw(m.pid() as i32).unwrap();
    rustix::process::kill_process_group(pid, Signal::INT).unwrap();
    let out = finish(m, QUICK);
    out.expect(6, &["keeps running on this host"], &s);
    wait_for("serve ending the migration", QUICK, || {
        s.dst_work_entries().is_empty().then_some(())
    });
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        "m3",
        &format!(
            "--lazy, SIGINT while the destination restores: exit 6 in {:?} ({}); {sum}",
            out.took,
            out.last_line()
        ),
    );
}

/// Every packet dropped once the destination's tasks run and fetch their memory: both sides
/// give up, both copies are stopped, exit 8, nothing is left on the destination.
#[test]
fn m4_lazy_packets_dropped_during_the_post_copy() {
    let Some(mut s) = setup("fim4") else { return };
    s.serve();
    let c = s.start_container(None, None);
    s.net.limit_rate(Side::Src, SLOW_RATE).unwrap();
    let mut cut = s
        .net
        .trigger(Side::Dst, &NetnsPair::drop_port_script(PORT))
        .unwrap();
    let m = s.spawn_migrate(&c, &["--lazy"], &[]);
    s.serve_ref()
        .wait_for_line("fetching their memory", QUICK)
        .unwrap();
    cut.fire().unwrap();
    let out = finish(m, SLOW);
    out.expect(8, &["container is lost"], &s);
    wait_for("the destination's verdict", SLOW, || {
        let l = s.serve_log();
        (l.contains("restored tasks were killed") || l.contains("post-copy done")).then_some(())
    });
    let log = s.serve_log();
    assert!(
        log.contains("restored tasks were killed"),
        "the destination finished a post-copy whose connection was cut?\n{log}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let sum = s.check(&c, &Expect::new(Runs::Nowhere, &c));
    evidence(
        "m4",
        &format!(
            "--lazy, packets dropped during the post-copy: exit 8 in {:?} ({}); {sum}",
            out.took,
            out.last_line()
        ),
    );
}

/// `haul serve` SIGKILLed while its restored tasks fetch their memory: CRIU's lazy-pages daemon
/// dies with it, so the tasks would run on with zero-filled pages. The post-copy guard kills
/// them; the source, having lost the connection after the commit, stops its copy too (exit 8).
#[test]
fn m5_lazy_destination_killed_during_the_post_copy() {
    let Some(mut s) = setup("fim5") else { return };
    s.serve();
    let c = s.start_container(None, None);
    s.net.limit_rate(Side::Src, SLOW_RATE).unwrap();
    let m = s.spawn_migrate(&c, &["--lazy"], &[]);
    s.serve_ref()
        .wait_for_line("fetching their memory", QUICK)
        .unwrap();
    s.kill_serve();
    let out = finish(m, SLOW);
    out.expect(8, &["container is lost"], &s);
    // Without the guard the restored copy would run on here (check: no copy anywhere).
    let sum = restart_and_check(&mut s, &c, &Expect::new(Runs::Nowhere, &c));
    evidence(
        "m5",
        &format!(
            "--lazy, serve SIGKILLed during the post-copy: guard killed the restored tasks; exit 8 in {:?} ({}); {sum}",
            out.took,
            out.last_line()
        ),
    );
}

/// `haul migrate --lazy` itself SIGKILLed (as the OOM killer would) while the destination
/// restores, after the source's CRIU started serving pages and before the Commit. The end of
/// CRIU's page stream would make it take the transfer for complete and kill the tasks while the
/// destination, never committed, stops its copy; haul's guard process fails the page server
/// instead, so CRIU resumes the tasks and the container keeps running on the source.
#[test]
fn m6_lazy_source_killed_before_the_commit() {
    let Some(mut s) = setup("fim6") else { return };
    // The destination pauses 3 s after sending RESTORE: the window before the Commit in which
    // the source's CRIU already serves pages.
    s.serve_with(ServeOpts {
        env: vec![("HAUL_FAULT".into(), "dst-restoring:pause".into())],
        ..ServeOpts::default()
    });
    let c = s.start_container(None, None);
    let m = s.spawn_migrate(&c, &["--lazy"], &[]);
    m.wait_for_line("restoring on the destination", QUICK)
        .unwrap();
    s.serve_ref().wait_for_line("pausing 3 s", QUICK).unwrap();
    // Only haul: its CRIU and its guard live on, as after an OOM kill.
    let pid = rustix::process::Pid::from_raw(m.pid() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::KILL).unwrap();
    let out = finish(m, QUICK);
    assert_eq!(out.code, None, "not killed: {}", out.log);
    wait_for("serve ending the migration", QUICK, || {
        s.dst_work_entries().is_empty().then_some(())
    });
    let sum = s.check(&c, &Expect::new(Runs::Src, &c));
    evidence(
        "m6",
        &format!(
            "--lazy, haul migrate SIGKILLed while the destination restores (before the commit): \
             the container runs on the source; {sum}"
        ),
    );
}

/// `haul migrate --lazy` SIGKILLed during the post-copy, after the Commit: the destination runs
/// the container with part of its memory, so the source must never resume it (the guard stood
/// down before the Commit and CRIU, its page stream ended, kills the tasks); the destination,
/// its page source gone, stops its copy: lost, never twice.
#[test]
fn m7_lazy_source_killed_during_the_post_copy() {
    let Some(mut s) = setup("fim7") else { return };
    s.serve();
    let c = s.start_container(None, None);
    s.net.limit_rate(Side::Src, SLOW_RATE).unwrap();
    let m = s.spawn_migrate(&c, &["--lazy"], &[]);
    s.serve_ref()
        .wait_for_line("fetching their memory", QUICK)
        .unwrap();
    let pid = rustix::process::Pid::from_raw(m.pid() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::KILL).unwrap();
    let out = finish(m, QUICK);
    assert_eq!(out.code, None, "not killed: {}", out.log);
    assert!(
        !out.log.contains("failing its page server"),
        "the guard acted after the commit:\n{}",
        out.log
    );
    wait_for("the destination's verdict", SLOW, || {
        let l = s.serve_log();
        (l.contains("restored tasks were killed") || l.contains("post-copy done")).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let sum = s.check(&c, &Expect::new(Runs::Nowhere, &c));
    evidence(
        "m7",
        &format!(
            "--lazy, haul migrate SIGKILLed during the post-copy (after the commit): no copy \
             resumed on the source; {sum}"
        ),
    );
}
