//! `cargo xtask bench`: measures haul against the ways people migrate runc containers by hand,
//! on this machine, between two network namespaces joined by a veth pair.
//!
//! The workload is a runc busybox container running `haul-workload` (static musl build): it
//! fills N MiB with a checked non-zero pattern and writes `counter timestamp_us` to a
//! bind-mounted heartbeat file every 5 ms; a poller outside measures the largest gap between
//! heartbeats, which is the downtime a user sees. Every method does the same thing: start the
//! container on the source, migrate it, see the heartbeat continue on the destination with the
//! memory check passing, then kill and delete it. Methods:
//!
//! - `haul`: a fresh `haul serve` per migration (so its peak RSS is one migration's) in the
//!   destination namespace and its own cgroups, `haul migrate runc` in the source namespace;
//! - `expert`: `criu page-server` on the destination, `runc checkpoint --page-server`, the
//!   remaining images as a tar stream over TCP (1 MiB buffers), `runc restore -d`;
//! - `manual`: `runc checkpoint` to tmpfs, tar over TCP, `runc restore -d`;
//! - `local` (lower bound): `runc checkpoint` and `runc restore -d` in one runc root, no transfer;
//! - `link`: 1 GiB over a plain TCP stream on the same veth.
//!
//! Every image directory is on tmpfs (`/dev/shm`). `runc checkpoint` deletes the source
//! container, so the runc methods restore under the same id: in the destination's runc root
//! and, like `haul serve`, inside the destination's own cgroups (`local`: the same root and
//! cgroups). Runs are interleaved (round robin, the order rotated each round) after one
//! discarded warm-up round per size. Results: `bench/RESULTS.md` and `bench/results.json`
//! (`--quick`: `target/bench-quick/`).
//!
//! `$HAUL_BIN` names the haul binary to measure instead of building the shipped static one.
//! Hidden helpers run inside a namespace through `nsenter`: `bench __recv PORT (--discard |
//! --tar-x DIR)` and `bench __send ADDR:PORT (--bytes N | --tar-c DIR)`.

use crate::util;
use haul_e2e::{
    haul_bin, mounts_under, proc_children, proc_stat, proc_vm_hwm_kib, read_criu_stats, runc_state,
    unmount_under, wait_tcp_listening, ChildGuard, ChildWithLog, DedicatedCgroup, Heartbeat, Lab,
    NetnsPair, PipeLog, Poller, RuncBundle, RuncContainer, Side, TempDir,
};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: cargo xtask bench [--quick] [--reps N] [--sizes 0,64,256,1024] \
                     [--methods haul,haul-lazy,haul-eager,expert,manual,local,link] [--no-warmup] [--out DIR] \
                     [--keep-logs DIR]";

/// `--lazy` target: the service stops at most this long, whatever the memory size.
const LAZY_DOWNTIME_TARGET_MS: f64 = 150.0;

/// Copy buffer of the TCP helpers: 1 MiB (8 KiB buffers were 7x slower on this veth).
const COPY_BUF: usize = 1 << 20;
/// Bytes of the raw link measurement.
const LINK_BYTES: u64 = 1 << 30;
/// Heartbeat period of the workload.
const INTERVAL_MS: u64 = 5;
/// Where image directories go: tmpfs, for every method.
const SHM: &str = "/dev/shm";
const MUSL: &str = "x86_64-unknown-linux-musl";
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Haul,
    /// `haul migrate --lazy` (post-copy).
    HaulLazy,
    /// `haul migrate --eager-restore`: all memory in place before the resume, as the runc
    /// methods restore (the like-for-like comparison with them).
    HaulEager,
    Expert,
    Manual,
    Local,
    Link,
}

impl Method {
    const ALL: [Method; 7] = [
        Method::Haul,
        Method::HaulLazy,
        Method::HaulEager,
        Method::Expert,
        Method::Manual,
        Method::Local,
        Method::Link,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Haul => "haul",
            Method::HaulLazy => "haul-lazy",
            Method::HaulEager => "haul-eager",
            Method::Expert => "expert",
            Method::Manual => "manual",
            Method::Local => "local",
            Method::Link => "link",
        }
    }

    /// A method that runs `haul serve` and `haul migrate`.
    fn is_haul(self) -> bool {
        matches!(self, Method::Haul | Method::HaulLazy | Method::HaulEager)
    }

    fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }
}

#[derive(Debug)]
struct Opts {
    sizes: Vec<u64>,
    reps: usize,
    methods: Vec<Method>,
    warmup: bool,
    quick: bool,
    out: PathBuf,
    /// Copy every run's logs here (haul: also CRIU's dump.log/restore.log and stats).
    keep_logs: Option<PathBuf>,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        sizes: vec![0, 64, 256, 1024],
        reps: 3,
        methods: Method::ALL.to_vec(),
        warmup: true,
        quick: false,
        out: util::root().join("bench"),
        keep_logs: None,
    };
    let (mut sizes, mut reps, mut out) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-warmup" => o.warmup = false,
            "--reps" => {
                let v = value()?;
                let n: usize = v.parse().map_err(|_| format!("bad --reps {v:?}"))?;
                if n == 0 {
                    return Err("--reps must be at least 1".into());
                }
                reps = Some(n);
            }
            "--sizes" => {
                let v = value()?;
                let s: Vec<u64> = v
                    .split(',')
                    .map(|x| x.trim().parse().map_err(|_| format!("bad size {x:?}")))
                    .collect::<Result<_, _>>()?;
                sizes = Some(s);
            }
            "--methods" => {
                let v = value()?;
                o.methods = v
                    .split(',')
                    .map(|x| Method::parse(x.trim()).ok_or_else(|| format!("bad method {x:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--out" => out = Some(PathBuf::from(value()?)),
            "--keep-logs" => o.keep_logs = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    if o.quick {
        o.sizes = vec![0, 64];
        o.reps = 1;
        o.out = util::root().join("target/bench-quick");
    }
    if let Some(s) = sizes {
        o.sizes = s;
    }
    if let Some(r) = reps {
        o.reps = r;
    }
    if let Some(d) = out {
        o.out = d;
    }
    if o.sizes.is_empty() || o.methods.is_empty() {
        return Err(format!("nothing to measure\n{USAGE}"));
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("__recv") => return tcp_recv(&args[1..]),
        Some("__send") => return tcp_send(&args[1..]),
        _ => {}
    }
    let opts = parse_opts(args)?;
    crate::lab::install()?;
    build()?;
    let started = Instant::now();
    let machine = Machine::probe();
    let mut lab = BenchLab::create(opts.keep_logs.is_some())?;
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for &mib in &opts.sizes {
        let bundle = lab.bundle(mib)?;
        let first = if opts.warmup { 0 } else { 1 };
        for round in first..=opts.reps {
            let k = opts.methods.len();
            for i in 0..k {
                let method = opts.methods[(i + round) % k];
                let what = if round == 0 {
                    "warm-up".to_string()
                } else {
                    format!("rep {round}/{}", opts.reps)
                };
                eprintln!("bench: {} {mib} MiB, {what}", method.name());
                let load1 = loadavg()
                    .split_whitespace()
                    .next()
                    .and_then(|l| l.parse().ok());
                let cpu0 = cpu_times();
                match lab.measure(method, mib, &bundle) {
                    Ok(mut s) => {
                        s.load1 = load1;
                        s.steal_pct = steal_pct(cpu0, cpu_times());
                        eprintln!("bench:   {}", s.one_line());
                        if round > 0 {
                            s.rep = round;
                            samples.push(s);
                        }
                    }
                    Err(e) => {
                        eprintln!("bench:   FAILED: {e}");
                        failures.push(Failure {
                            method,
                            mib,
                            rep: round,
                            error: e,
                        });
                    }
                }
            }
        }
    }
    if let Some(dest) = &opts.keep_logs {
        let from = lab.dir.join("logs");
        std::fs::create_dir_all(dest).map_err(|e| format!("mkdir {}: {e}", dest.display()))?;
        util::run(Command::new("cp").arg("-r").arg(&from).arg(dest))?;
        eprintln!("bench: logs kept in {}", dest.join("logs").display());
    } else if !failures.is_empty() {
        // haul's and CRIU's logs of every run (text only: images are not kept without
        // --keep-logs), for the failed ones.
        let from = lab.dir.join("logs");
        std::fs::create_dir_all(&opts.out)
            .map_err(|e| format!("mkdir {}: {e}", opts.out.display()))?;
        util::run(Command::new("cp").arg("-r").arg(&from).arg(&opts.out))?;
        eprintln!(
            "bench: {} run(s) failed; logs of every run in {}",
            failures.len(),
            opts.out.join("logs").display()
        );
    }
    drop(lab);
    let report = Report {
        opts: &opts,
        args,
        machine,
        machine_end_load: loadavg(),
        elapsed: started.elapsed(),
        samples,
        failures,
    };
    report.write()?;
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "bench: {} run(s) failed; see {}",
            report.failures.len(),
            opts.out.join("RESULTS.md").display()
        ))
    }
}

/// Copies the logs and stats of every directory haul kept under `work` into `to`, then removes
/// those directories (images included: 1 GiB runs would fill the tmpfs), checking for mounts.
fn keep_work_logs(work: &Path, to: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(work) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let dest = to.join(e.file_name());
        std::fs::create_dir_all(&dest).map_err(|e| format!("mkdir {}: {e}", dest.display()))?;
        for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log")
                || name.starts_with("stats-")
                || name.ends_with(".json")
                || name == "inventory.img"
            {
                let _ = std::fs::copy(f.path(), dest.join(&name));
            }
        }
        match mounts_under(&dir) {
            Ok(m) if m.is_empty() => std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("remove {}: {e}", dir.display()))?,
            Ok(m) => return Err(format!("mounts under {}: {m:?}", dir.display())),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Builds the haul that ships (`cargo xtask dist`'s static x86_64 musl build) and the static
/// workload (the container has no libc). With `$HAUL_BIN` set, that haul binary is measured
/// and none is built.
///
/// The shipped build, not `target/release/haul`: CRIU starts haul as its `tar` once per tmpfs
/// mount on each side while the container is frozen (7 + 6 times for the bench's container),
/// and a dynamically linked PIE takes ~2 ms longer per start than the static binary.
fn build() -> Result<(), String> {
    let installed = util::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == MUSL) {
        util::run(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    match std::env::var_os("HAUL_BIN") {
        Some(b) => eprintln!("bench: measuring $HAUL_BIN={}", Path::new(&b).display()),
        None => {
            let t = crate::targets::SHIPPED
                .into_iter()
                .find(|t| t.triple == MUSL)
                .ok_or("no shipped x86_64 musl target")?;
            let bin = crate::dist::cargo_build(t, "release", &[])?;
            std::env::set_var("HAUL_BIN", bin);
        }
    }
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "haul-e2e",
        "--bin",
        "haul-workload",
        "--target",
        MUSL,
    ]))?;
    Ok(())
}

fn workload_musl() -> PathBuf {
    util::root().join(format!("target/{MUSL}/release/haul-workload"))
}

// ---------------------------------------------------------------------------------------------
// One measured migration
// ---------------------------------------------------------------------------------------------

/// What one run measured. Times in ms, sizes in bytes or KiB as named.
#[derive(Debug, Clone)]
struct Sample {
    method: Method,
    mib: u64,
    rep: usize,
    /// Largest heartbeat gap seen by the poller (link: none).
    downtime_ms: Option<f64>,
    /// From the first command of the migration until the container runs on the destination.
    total_ms: f64,
    /// Bytes through the source's veth, both directions, IP headers included.
    wire_bytes: Option<u64>,
    criu_frozen_ms: Option<f64>,
    criu_restore_ms: Option<f64>,
    /// CRIU's memdump_time: collecting the pages and writing them out (memwrite runs inside).
    criu_memdump_ms: Option<f64>,
    /// CRIU's memwrite_time: writing the collected pages out (to the page server's socket, or
    /// into the images); CRIU alternates collecting and writing chunks of pages, never both
    /// at once (criu/mem.c, chunk mode).
    criu_memwrite_ms: Option<f64>,
    criu_pages_written: Option<u64>,
    /// Page throughput: pages_written × 4 KiB / memwrite_time, the pages' transfer, as fast as
    /// the page server (haul's connection, or the expert's `criu page-server`) takes them.
    page_mib_s: Option<f64>,
    /// The same over memdump_time (CRIU's collecting of the pages included).
    memdump_mib_s: Option<f64>,
    /// haul only: its own numbers (`--stats-json`).
    haul_frozen_ms: Option<f64>,
    haul_total_ms: Option<f64>,
    haul_wire_bytes: Option<u64>,
    haul_page_bytes: Option<u64>,
    haul_page_mib_s: Option<f64>,
    serve_hwm_kib: Option<u64>,
    migrate_hwm_kib: Option<u64>,
    relay_hwm_kib: Option<u64>,
    /// haul-lazy only: from the resume on the destination until its last page arrived.
    postcopy_ms: Option<f64>,
    /// haul without --lazy: from the resume until the destination filled the memory.
    fill_ms: Option<f64>,
    /// link only.
    link_mib_s: Option<f64>,
    /// 1-minute load average of the machine just before the run.
    load1: Option<f64>,
    /// Share of the CPU time the hypervisor gave to others during the run (steal, /proc/stat).
    steal_pct: Option<f64>,
}

impl Sample {
    fn new(method: Method, mib: u64) -> Sample {
        Sample {
            method,
            mib,
            rep: 0,
            downtime_ms: None,
            total_ms: 0.0,
            wire_bytes: None,
            criu_frozen_ms: None,
            criu_restore_ms: None,
            criu_memdump_ms: None,
            criu_memwrite_ms: None,
            criu_pages_written: None,
            page_mib_s: None,
            memdump_mib_s: None,
            haul_frozen_ms: None,
            haul_total_ms: None,
            haul_wire_bytes: None,
            haul_page_bytes: None,
            haul_page_mib_s: None,
            serve_hwm_kib: None,
            migrate_hwm_kib: None,
            relay_hwm_kib: None,
            postcopy_ms: None,
            fill_ms: None,
            link_mib_s: None,
            load1: None,
            steal_pct: None,
        }
    }

    fn one_line(&self) -> String {
        let mut s = format!("total {:.0} ms", self.total_ms);
        if let Some(d) = self.downtime_ms {
            let _ = write!(s, ", downtime {d:.0} ms");
        }
        if let Some(w) = self.wire_bytes {
            let _ = write!(s, ", wire {:.1} MiB", w as f64 / MIB);
        }
        if let (Some(f), Some(r)) = (self.criu_frozen_ms, self.criu_restore_ms) {
            let _ = write!(s, ", CRIU frozen {f:.0} ms restore {r:.0} ms");
        }
        if let Some(t) = self.page_mib_s.or(self.link_mib_s) {
            let _ = write!(s, ", {t:.0} MiB/s");
        }
        if let (Some(a), Some(b)) = (self.serve_hwm_kib, self.migrate_hwm_kib) {
            let _ = write!(s, ", peak RSS serve {a} KiB migrate {b} KiB");
        }
        if let Some(p) = self.steal_pct {
            let _ = write!(s, ", steal {p:.1}%");
        }
        s
    }
}

#[derive(Debug)]
struct Failure {
    method: Method,
    mib: u64,
    rep: usize,
    error: String,
}

/// The two hosts and everything the runs share. Field order is drop order: the dedicated
/// cgroups go once nothing runs in them, the tmpfs directory and the work directory after an
/// unmount check, the namespaces last.
struct BenchLab {
    cgroup: DedicatedCgroup,
    shm: TempDir,
    dir: TempDir,
    net: NetnsPair,
    haul: PathBuf,
    xtask: PathBuf,
    key: PathBuf,
    src_root: PathBuf,
    dst_root: PathBuf,
    seq: u32,
    /// haul keeps its work directories; each run's logs are copied out of them.
    keep_logs: bool,
}

fn lab_err(e: haul_e2e::LabError) -> String {
    e.to_string()
}

impl BenchLab {
    fn create(keep_logs: bool) -> Result<BenchLab, String> {
        let mut tools = Lab::ALL_TOOLS.to_vec();
        tools.extend([
            haul_e2e::BUSYBOX,
            "cat",
            "sh",
            "tar",
            "umount",
            "/usr/bin/time",
        ]);
        Lab::require(&tools).map_err(lab_err)?;
        let haul = haul_bin().map_err(lab_err)?;
        let xtask = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let net = NetnsPair::create("bench").map_err(lab_err)?;
        let dir = TempDir::new("bench").map_err(lab_err)?;
        let shm = TempDir::new_in(Path::new(SHM), "bench").map_err(lab_err)?;
        let cgroup = DedicatedCgroup::create(&format!("haul-bench-{}-dst", std::process::id()))
            .map_err(lab_err)?;
        let key = dir.join("key");
        haul_e2e::run(Command::new(&haul).arg("keygen").arg(&key)).map_err(lab_err)?;
        let lab = BenchLab {
            cgroup,
            src_root: dir.join("src-root"),
            dst_root: dir.join("dst-root"),
            shm,
            dir,
            net,
            haul,
            xtask,
            key,
            seq: 0,
            keep_logs,
        };
        for d in [
            &lab.src_root,
            &lab.dst_root,
            &lab.dir.join("stdio"),
            &lab.dir.join("logs"),
        ] {
            std::fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        Ok(lab)
    }

    /// A busybox bundle whose init is the static workload with `mib` MiB.
    fn bundle(&self, mib: u64) -> Result<RuncBundle, String> {
        let script = format!(
            "exec /bin/haul-workload --mib {mib} --heartbeat /data/hb --interval-ms {INTERVAL_MS}"
        );
        let b = RuncBundle::busybox(&self.dir.join(format!("bundle-{mib}")), &script)
            .map_err(lab_err)?;
        let dst = b.rootfs.join("bin/haul-workload");
        std::fs::copy(workload_musl(), &dst)
            .map_err(|e| format!("copy {} into the rootfs: {e}", workload_musl().display()))?;
        Ok(b)
    }

    fn dst_addr(&self) -> String {
        self.net.dst_addr().to_string()
    }

    /// One run, then the cleanup of what runs leave: image directories, mounts under the runc
    /// roots, child cgroups of the destination.
    fn measure(&mut self, method: Method, mib: u64, bundle: &RuncBundle) -> Result<Sample, String> {
        self.seq += 1;
        let n = self.seq;
        let work = self.shm.join(format!("run-{n}"));
        let logs = self
            .dir
            .join(format!("logs/run-{n}-{}-{mib}", method.name()));
        for d in [&work, &logs] {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        // Ports: two per run, never reused within a bench.
        let port = 20_000 + u16::try_from(2 * (n % 10_000)).unwrap_or(0);
        let result = if method == Method::Link {
            self.link(port).map(|mib_s| {
                let mut s = Sample::new(method, mib);
                s.total_ms = LINK_BYTES as f64 / MIB / mib_s * 1000.0;
                s.link_mib_s = Some(mib_s);
                s
            })
        } else {
            self.migration(method, mib, bundle, &work, &logs, port, n)
        };
        let mut cleanup = Vec::new();
        // A failed run's CRIU logs are kept even without --keep-logs (run() copies them next to
        // RESULTS.md): an intermittent failure is otherwise gone with the run.
        if self.keep_logs || result.is_err() {
            for (side, dir) in [("src", "haul-src-work"), ("dst", "haul-dst-work")] {
                if let Err(e) = keep_work_logs(&self.shm.join(dir), &logs.join(side)) {
                    cleanup.push(e);
                }
            }
        }
        for root in [&self.src_root, &self.dst_root] {
            match unmount_under(root) {
                Ok(m) if !m.is_empty() => eprintln!("bench:   unmounted {m:?}"),
                Ok(_) => {}
                Err(e) => cleanup.push(e.to_string()),
            }
        }
        let left = self.cgroup.remove_children();
        if !left.is_empty() {
            eprintln!("bench:   removed child cgroups {left:?}");
        }
        match mounts_under(&work) {
            Ok(m) if m.is_empty() => {
                if let Err(e) = std::fs::remove_dir_all(&work) {
                    cleanup.push(format!("remove {}: {e}", work.display()));
                }
            }
            Ok(m) => cleanup.push(format!("mounts under {}: {m:?}", work.display())),
            Err(e) => cleanup.push(e.to_string()),
        }
        match (result, cleanup.is_empty()) {
            (Ok(s), true) => Ok(s),
            (Ok(_), false) => Err(format!("cleanup: {}", cleanup.join("; "))),
            (Err(e), _) => Err(e),
        }
    }

    /// Starts the container, runs `method`, checks the destination, tears down.
    #[allow(clippy::too_many_arguments)]
    fn migration(
        &self,
        method: Method,
        mib: u64,
        bundle: &RuncBundle,
        work: &Path,
        logs: &Path,
        port: u16,
        n: u32,
    ) -> Result<Sample, String> {
        let id = format!("haul-bench-{}-{n}", std::process::id());
        let hb = bundle.heartbeat();
        let _ = std::fs::remove_file(&hb);
        // Declared first, dropped last: serve outlives the containers it restored.
        let serve = if method.is_haul() {
            Some(self.start_serve(port)?)
        } else {
            None
        };
        let dst_root = if method == Method::Local {
            &self.src_root
        } else {
            &self.dst_root
        };
        let mut dst_log = PipeLog::start(&logs.join("dst-stdout.log")).map_err(lab_err)?;
        let mut src_log = PipeLog::start(&logs.join("src-stdout.log")).map_err(lab_err)?;
        let _src = RuncContainer::run_detached(&self.src_root, &bundle.dir, &id, &src_log)
            .map_err(lab_err)?;
        src_log.close_writer();
        let _dst = RuncContainer::adopt(dst_root, &id);
        // 1 GiB takes a while to fill before the first beat.
        Heartbeat::wait_advancing(&hb, Duration::from_secs(120)).map_err(lab_err)?;
        std::thread::sleep(Duration::from_millis(300));
        let poller = Poller::start(&hb);
        std::thread::sleep(Duration::from_millis(100));
        let (rx0, tx0) = self.net.veth_bytes(Side::Src).map_err(lab_err)?;

        let t0 = Instant::now();
        let mut s = Sample::new(method, mib);
        match method {
            Method::Haul | Method::HaulLazy | Method::HaulEager => {
                let serve = serve.as_ref().ok_or("no serve")?;
                let r = self.haul_migrate(&id, port, work, logs, serve, method, &mut s);
                if self.keep_logs {
                    let _ = std::fs::write(logs.join("serve.log"), serve.log_text());
                }
                r?;
            }
            Method::Expert => {
                self.expert(&id, bundle, work, logs, port, &dst_log, &mut s)?;
            }
            Method::Manual => self.manual(&id, bundle, work, logs, port, &dst_log, &mut s)?,
            Method::Local => self.local(&id, bundle, work, logs, &dst_log, &mut s)?,
            Method::Link => return Err("link is not a migration".into()),
        }
        s.total_ms = ms(t0.elapsed());
        dst_log.close_writer();
        // Below ~16 MiB this is mostly CRIU's fixed cost, not a throughput.
        let rate = |t: Option<f64>| match (s.criu_pages_written, t) {
            (Some(p), Some(t)) if p >= 4096 && t > 0.0 => {
                Some(p as f64 * 4096.0 / MIB / (t / 1000.0))
            }
            _ => None,
        };
        if s.page_mib_s.is_none() {
            s.page_mib_s = rate(s.criu_memwrite_ms);
        }
        s.memdump_mib_s = rate(s.criu_memdump_ms);
        let (rx1, tx1) = self.net.veth_bytes(Side::Src).map_err(lab_err)?;
        s.wire_bytes = Some((rx1 - rx0) + (tx1 - tx0));

        // The heartbeat continues on the destination, with the memory check passing.
        let alive = Heartbeat::wait_advancing(&hb, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
        let ps = poller.stop_stats();
        alive.map_err(|e| format!("after the migration: {e}"))?;
        if let Some(off) = ps.bad {
            return Err(format!(
                "memory mismatch at offset {off} after the migration"
            ));
        }
        if ps.counter_regressions > 0 {
            return Err(format!(
                "heartbeat counter went back {} times",
                ps.counter_regressions
            ));
        }
        s.downtime_ms = Some(ms(ps.max_gap));
        let st = runc_state(dst_root, &id).map_err(lab_err)?;
        if st.status != "running" {
            return Err(format!("destination container {id}: {st:?}"));
        }
        if let Some(serve) = &serve {
            // Read before serve stops: VmHWM of this migration's serve and of its relays.
            s.serve_hwm_kib = proc_vm_hwm_kib(serve.pid());
            s.relay_hwm_kib = proc_children(serve.pid())
                .into_iter()
                .filter(|&p| proc_stat(p).is_some_and(|st| st.comm == "haul"))
                .filter_map(proc_vm_hwm_kib)
                .max();
        }
        Ok(s)
    }

    /// `haul serve` in the destination namespace and cgroups, fresh for one migration.
    fn start_serve(&self, port: u16) -> Result<ChildWithLog, String> {
        let mut cmd = self
            .cgroup
            .wrap(self.net.cmd_in(Side::Dst, "sh"), &self.haul);
        cmd.args(["serve", "--listen", &format!("{}:{port}", self.dst_addr())])
            .arg("--key")
            .arg(&self.key)
            .arg("--work-dir")
            .arg(self.shm.join("haul-dst-work"))
            .arg("--runc-root")
            .arg(&self.dst_root)
            .arg("--stdio-dir")
            .arg(self.dir.join("stdio"))
            .arg("--bundle-root")
            .arg(self.dir.join("bundles"))
            .args(self.keep_logs.then_some("--keep-images"))
            .stdin(Stdio::null());
        if self.keep_logs {
            cmd.env("HAUL_LOG", "debug");
        }
        let serve = ChildWithLog::spawn("dst: haul serve", &mut cmd)
            .map_err(lab_err)?
            .with_grace(Duration::from_secs(5));
        serve
            .wait_for_line("listening on", Duration::from_secs(10))
            .map_err(lab_err)?;
        let comm = proc_stat(serve.pid()).map(|s| s.comm).unwrap_or_default();
        if comm != "haul" {
            return Err(format!(
                "serve pid {} runs {comm:?}, not haul: its VmHWM would not be haul's",
                serve.pid()
            ));
        }
        Ok(serve)
    }

    #[allow(clippy::too_many_arguments)]
    fn haul_migrate(
        &self,
        id: &str,
        port: u16,
        work: &Path,
        logs: &Path,
        serve: &ChildWithLog,
        method: Method,
        s: &mut Sample,
    ) -> Result<(), String> {
        let lazy = method == Method::HaulLazy;
        let stats = work.join("stats.json");
        let log_path = logs.join("migrate.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("create {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = self.net.cmd_in(Side::Src, &self.haul);
        cmd.args(["migrate", "runc", id, "--to"])
            .arg(format!("{}:{port}", self.dst_addr()))
            .arg("--key")
            .arg(&self.key)
            .arg("--runc-root")
            .arg(&self.src_root)
            .arg("--work-dir")
            .arg(self.shm.join("haul-src-work"))
            .arg("--stats-json")
            .arg(&stats)
            .args(lazy.then_some("--lazy"))
            .args((method == Method::HaulEager).then_some("--eager-restore"))
            .args(self.keep_logs.then_some("--keep-work"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if self.keep_logs {
            cmd.env("HAUL_LOG", "debug");
        }
        let mut child = ChildGuard::spawn(&mut cmd)
            .map_err(lab_err)?
            .named("haul migrate");
        // Its own peak RSS: haul reports its VmHWM in the JSON at the end (wait4's ru_maxrss
        // would also count CRIU and runc, its children). Sampling /proc every millisecond
        // instead took ~8% of this machine's two cores during the page transfer (perf), which
        // the other methods did not pay; a sample every 100 ms stays for binaries that do not
        // report it (`HAUL_BIN` of an older haul).
        let pid = child.pid();
        let end = Instant::now() + Duration::from_secs(300);
        let mut polls = 0u32;
        let status = loop {
            if polls.is_multiple_of(20) && proc_stat(pid).is_some_and(|p| p.comm == "haul") {
                if let Some(v) = proc_vm_hwm_kib(pid) {
                    s.migrate_hwm_kib = Some(s.migrate_hwm_kib.unwrap_or(0).max(v));
                }
            }
            polls = polls.wrapping_add(1);
            if let Some(st) = child.try_wait().map_err(lab_err)? {
                break st;
            }
            if Instant::now() >= end {
                return Err("haul migrate still runs after 300 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            return Err(format!(
                "haul migrate failed ({status}):\n{}\nserve:\n{}",
                tail(&stderr, 20),
                tail(&serve.log_text(), 20)
            ));
        }
        let json = std::fs::read_to_string(&stats)
            .map_err(|e| format!("read {}: {e}", stats.display()))?;
        let num = |k: &str| json_number(&json, k).ok_or(format!("no {k} in {json}"));
        s.haul_total_ms = Some(num("total_ms")?);
        s.haul_frozen_ms = Some(num("frozen_ms")?);
        s.criu_frozen_ms = Some(num("criu_frozen_us")? / 1000.0);
        s.criu_restore_ms = Some(num("criu_restore_us")? / 1000.0);
        s.haul_page_bytes = Some(num("page_bytes")? as u64);
        s.haul_wire_bytes = Some(num("wire_bytes")? as u64);
        s.haul_page_mib_s = Some(num("page_mib_per_s")?);
        s.criu_memdump_ms = Some(num("criu_memdump_us")? / 1000.0);
        s.criu_memwrite_ms = Some(num("criu_memwrite_us")? / 1000.0);
        s.criu_pages_written = Some(num("pages_written")? as u64);
        if let Some(kib) = json_number(&json, "peak_rss_kib").filter(|&k| k > 0.0) {
            s.migrate_hwm_kib = Some(s.migrate_hwm_kib.unwrap_or(0).max(kib as u64));
        }
        // Older binaries do not report it.
        s.fill_ms = json_number(&json, "fill_ms").filter(|_| !lazy);
        if lazy {
            s.postcopy_ms = Some(num("postcopy_ms")?);
            s.page_mib_s = s.haul_page_mib_s;
            // Pages move after the resume: their rate is the post-copy's, not memdump's.
            s.criu_memdump_ms = None;
            s.criu_memwrite_ms = None;
            s.criu_frozen_ms = None;
        }
        Ok(())
    }

    /// `runc checkpoint` in the source namespace (and root), its output logged.
    fn checkpoint(&self, id: &str, images: &Path, page_server: Option<&str>) -> Result<(), String> {
        let mut cmd = self.net.cmd_in(Side::Src, "runc");
        cmd.arg("--root").arg(&self.src_root).arg("checkpoint");
        if let Some(ps) = page_server {
            cmd.args(["--page-server", ps]);
        }
        cmd.arg("--image-path").arg(images).arg(id);
        haul_e2e::run(&mut cmd).map(drop).map_err(|e| {
            format!(
                "{e}\ndump.log:\n{}",
                tail(
                    &std::fs::read_to_string(images.join("dump.log")).unwrap_or_default(),
                    15
                )
            )
        })
    }

    /// `runc restore -d` of `images`: on the destination (its namespace, runc root and
    /// cgroups), or for `local` in the source's root. Its stdout and stderr are `log`'s pipe,
    /// which the restored container inherits for its pipe stdio.
    fn restore(
        &self,
        local: bool,
        id: &str,
        bundle: &RuncBundle,
        images: &Path,
        log: &PipeLog,
    ) -> Result<(), String> {
        let (mut cmd, root) = if local {
            let mut c = self.net.cmd_in(Side::Src, "runc");
            c.arg("--root").arg(&self.src_root);
            (c, &self.src_root)
        } else {
            let mut c = self.cgroup.wrap(self.net.cmd_in(Side::Dst, "sh"), "runc");
            c.arg("--root").arg(&self.dst_root);
            (c, &self.dst_root)
        };
        cmd.args(["restore", "-d", "--bundle"])
            .arg(&bundle.dir)
            .arg("--image-path")
            .arg(images)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log.writer().map_err(lab_err)?)
            .stderr(log.writer().map_err(lab_err)?);
        let status = cmd.status().map_err(|e| format!("runc restore: {e}"))?;
        if status.success() {
            return Ok(());
        }
        Err(format!(
            "runc --root {} restore {id} failed ({status}): {}\nrestore.log:\n{}",
            root.display(),
            tail(&log.text(), 5),
            tail(
                &std::fs::read_to_string(images.join("restore.log")).unwrap_or_default(),
                15
            )
        ))
    }

    fn criu_stats(
        &self,
        dump_dir: &Path,
        restore_dir: &Path,
        s: &mut Sample,
    ) -> Result<(), String> {
        let d = read_criu_stats(&dump_dir.join("stats-dump")).map_err(lab_err)?;
        let r = read_criu_stats(&restore_dir.join("stats-restore")).map_err(lab_err)?;
        s.criu_frozen_ms = d.dump.map(|d| d.frozen_us as f64 / 1000.0);
        s.criu_memdump_ms = d.dump.map(|d| d.memdump_us as f64 / 1000.0);
        s.criu_memwrite_ms = d.dump.map(|d| d.memwrite_us as f64 / 1000.0);
        s.criu_pages_written = d.dump.map(|d| d.pages_written);
        s.criu_restore_ms = r.restore.map(|r| r.restore_us as f64 / 1000.0);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn expert(
        &self,
        id: &str,
        bundle: &RuncBundle,
        work: &Path,
        logs: &Path,
        port: u16,
        dst_log: &PipeLog,
        s: &mut Sample,
    ) -> Result<(), String> {
        let (simg, dimg) = (work.join("src-images"), work.join("dst-images"));
        for d in [&simg, &dimg] {
            std::fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let (ps_port, tar_port) = (port, port + 1);
        // Destination: a page server for the pages and a receiver for the other images.
        let ps_log = std::fs::File::create(logs.join("page-server.log"))
            .map_err(|e| format!("page-server log: {e}"))?;
        let ps_err = ps_log
            .try_clone()
            .map_err(|e| format!("page-server log: {e}"))?;
        let mut ps_cmd = self.net.cmd_in(Side::Dst, "criu");
        ps_cmd
            .args(["page-server", "--images-dir"])
            .arg(&dimg)
            .args(["--port", &ps_port.to_string()])
            .stdin(Stdio::null())
            .stdout(ps_log)
            .stderr(ps_err);
        let mut ps = ChildGuard::spawn(&mut ps_cmd)
            .map_err(lab_err)?
            .named("criu page-server");
        let recv = Receiver::start(self, tar_port, &["--tar-x".as_ref(), dimg.as_os_str()])?;
        wait_tcp_listening(ps.pid(), ps_port, Duration::from_secs(10)).map_err(lab_err)?;

        let addr = format!("{}:{ps_port}", self.dst_addr());
        self.checkpoint(id, &simg, Some(&addr))?;
        match ps.wait_timeout(Duration::from_secs(30)).map_err(lab_err)? {
            Some(st) if st.success() => {}
            other => return Err(format!("criu page-server: {other:?}")),
        }
        self.send_tar(tar_port, &simg)?;
        recv.finish()?;
        self.restore(false, id, bundle, &dimg, dst_log)?;
        self.criu_stats(&simg, &dimg, s)
    }

    #[allow(clippy::too_many_arguments)]
    fn manual(
        &self,
        id: &str,
        bundle: &RuncBundle,
        work: &Path,
        _logs: &Path,
        port: u16,
        dst_log: &PipeLog,
        s: &mut Sample,
    ) -> Result<(), String> {
        let (simg, dimg) = (work.join("src-images"), work.join("dst-images"));
        for d in [&simg, &dimg] {
            std::fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let recv = Receiver::start(self, port, &["--tar-x".as_ref(), dimg.as_os_str()])?;
        self.checkpoint(id, &simg, None)?;
        self.send_tar(port, &simg)?;
        recv.finish()?;
        self.restore(false, id, bundle, &dimg, dst_log)?;
        self.criu_stats(&simg, &dimg, s)
    }

    fn local(
        &self,
        id: &str,
        bundle: &RuncBundle,
        work: &Path,
        _logs: &Path,
        dst_log: &PipeLog,
        s: &mut Sample,
    ) -> Result<(), String> {
        let img = work.join("images");
        std::fs::create_dir(&img).map_err(|e| format!("mkdir {}: {e}", img.display()))?;
        self.checkpoint(id, &img, None)?;
        self.restore(true, id, bundle, &img, dst_log)?;
        self.criu_stats(&img, &img, s)
    }

    /// `tar c DIR` streamed to the destination's receiver from the source namespace.
    fn send_tar(&self, port: u16, dir: &Path) -> Result<(), String> {
        let mut cmd = self.net.cmd_in(Side::Src, &self.xtask);
        cmd.args(["bench", "__send", &format!("{}:{port}", self.dst_addr())])
            .arg("--tar-c")
            .arg(dir);
        haul_e2e::run(&mut cmd).map(drop).map_err(lab_err)
    }

    /// Raw TCP throughput over the veth, MiB/s, as the receiver measured it.
    fn link(&self, port: u16) -> Result<f64, String> {
        let recv = Receiver::start(self, port, &["--discard".as_ref()])?;
        let mut cmd = self.net.cmd_in(Side::Src, &self.xtask);
        cmd.args(["bench", "__send", &format!("{}:{port}", self.dst_addr())])
            .args(["--bytes", &LINK_BYTES.to_string()]);
        haul_e2e::run(&mut cmd).map_err(lab_err)?;
        let (bytes, nanos) = recv.finish()?;
        if bytes != LINK_BYTES || nanos == 0 {
            return Err(format!("link: received {bytes} bytes in {nanos} ns"));
        }
        Ok(bytes as f64 / MIB / (nanos as f64 / 1e9))
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        for p in [self.dir.path(), self.shm.path()] {
            if let Err(e) = unmount_under(p) {
                eprintln!("bench: {e}");
            }
        }
    }
}

/// `bench __recv` in the destination namespace, listening.
struct Receiver {
    child: ChildGuard,
    out: BufReader<ChildStdout>,
}

impl Receiver {
    fn start(lab: &BenchLab, port: u16, mode: &[&std::ffi::OsStr]) -> Result<Receiver, String> {
        let mut cmd = lab.net.cmd_in(Side::Dst, &lab.xtask);
        cmd.args(["bench", "__recv", &port.to_string()])
            .args(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd)
            .map_err(lab_err)?
            .named("bench receiver");
        let out = child
            .child_mut()
            .stdout
            .take()
            .ok_or("receiver has no stdout")?;
        let mut r = Receiver {
            child,
            out: BufReader::new(out),
        };
        let line = r.line()?;
        if line != "listening" {
            return Err(format!("receiver said {line:?}"));
        }
        Ok(r)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.out
            .read_line(&mut line)
            .map_err(|e| format!("receiver output: {e}"))?;
        Ok(line.trim().to_string())
    }

    /// After the sender is done: `(bytes, nanoseconds from accept to the end)`.
    fn finish(mut self) -> Result<(u64, u64), String> {
        let line = self.line()?;
        let status = self
            .child
            .wait_timeout(Duration::from_secs(60))
            .map_err(lab_err)?;
        if !status.is_some_and(|s| s.success()) {
            return Err(format!("receiver failed: {status:?} ({line:?})"));
        }
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        match (it.next(), it.next()) {
            (Some(Ok(b)), Some(Ok(n))) => Ok((b, n)),
            _ => Err(format!("receiver said {line:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The TCP helpers (run through nsenter in a namespace)
// ---------------------------------------------------------------------------------------------

/// `__recv PORT (--discard | --tar-x DIR)`: listens on PORT, prints `listening`, takes one
/// connection, discards it or feeds it to `tar -x`, answers by closing the connection, and
/// prints `BYTES NANOS` (from accept until the end, tar included).
fn tcp_recv(args: &[String]) -> Result<(), String> {
    let (port, tar_dir) = match args {
        [p, m] if m == "--discard" => (p, None),
        [p, m, d] if m == "--tar-x" => (p, Some(d)),
        _ => return Err("usage: bench __recv PORT (--discard | --tar-x DIR)".into()),
    };
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind port {port}: {e}"))?;
    println!("listening");
    let (mut sock, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let start = Instant::now();
    let mut tar = match tar_dir {
        Some(d) => Some(
            Command::new("tar")
                .args(["-C", d, "-xf", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .map_err(|e| format!("tar -x: {e}"))?,
        ),
        None => None,
    };
    let mut sink = tar.as_mut().and_then(|t| t.stdin.take());
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        total += n as u64;
        if let Some(w) = sink.as_mut() {
            w.write_all(&buf[..n])
                .map_err(|e| format!("write to tar: {e}"))?;
        }
    }
    drop(sink);
    if let Some(mut t) = tar {
        let st = t.wait().map_err(|e| format!("tar -x: {e}"))?;
        if !st.success() {
            return Err(format!("tar -x failed: {st}"));
        }
    }
    let nanos = start.elapsed().as_nanos();
    drop(sock);
    println!("{total} {nanos}");
    Ok(())
}

/// `__send ADDR:PORT (--bytes N | --tar-c DIR)`: connects, sends N bytes or `tar -c` of DIR,
/// then waits for the receiver to close the connection (so everything has been consumed).
fn tcp_send(args: &[String]) -> Result<(), String> {
    let (addr, mode, val) = match args {
        [a, m, v] => (a, m.as_str(), v),
        _ => return Err("usage: bench __send ADDR:PORT (--bytes N | --tar-c DIR)".into()),
    };
    let mut sock = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let mut buf = vec![0x5au8; COPY_BUF];
    match mode {
        "--bytes" => {
            let mut left: u64 = val.parse().map_err(|_| format!("bad --bytes {val:?}"))?;
            while left > 0 {
                let n = usize::try_from(left.min(COPY_BUF as u64)).unwrap_or(COPY_BUF);
                sock.write_all(&buf[..n])
                    .map_err(|e| format!("send: {e}"))?;
                left -= n as u64;
            }
        }
        "--tar-c" => {
            let mut tar = Command::new("tar")
                .args(["-C", val, "-cf", "-", "."])
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("tar -c: {e}"))?;
            let mut out = tar.stdout.take().ok_or("tar has no stdout")?;
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("read from tar: {e}")),
                };
                sock.write_all(&buf[..n])
                    .map_err(|e| format!("send: {e}"))?;
            }
            let st = tar.wait().map_err(|e| format!("tar -c: {e}"))?;
            if !st.success() {
                return Err(format!("tar -c failed: {st}"));
            }
        }
        other => return Err(format!("bad mode {other:?}")),
    }
    sock.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    // The receiver closes once it has consumed everything.
    let mut rest = Vec::new();
    sock.read_to_end(&mut rest)
        .map_err(|e| format!("waiting for the receiver: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// Who fills a haul-lazy container's memory after the resume, as RESULTS.md says it: `haul
/// serve` inherits the bench's environment, and picks CRIU's daemon only for `HAUL_FILLER=criu`
/// (agent/src/dest/fill).
fn lazy_filler() -> &'static str {
    match std::env::var("HAUL_FILLER") {
        Ok(v) if v.eq_ignore_ascii_case("criu") => {
            "CRIU's lazy-pages daemon (`HAUL_FILLER=criu` in the bench's environment)"
        }
        _ => "`haul serve`'s own userfaultfd handler (agent/src/dest/fill)",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A number field of flat JSON such as haul's `--stats-json`: `"key":123` or `"key":12.5`.
fn json_number(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let rest = json.get(json.find(&pat)? + pat.len()..)?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

/// Median and range of a set of values.
#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Stat {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// `312 [298–340]` (`prec` decimals); just the value for one sample.
    fn show(&self, prec: usize) -> String {
        if self.n == 1 {
            format!("{:.prec$}", self.median)
        } else {
            format!(
                "{:.prec$} [{:.prec$}–{:.prec$}]",
                self.median, self.min, self.max
            )
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"median\": {}, \"min\": {}, \"max\": {}, \"n\": {}}}",
            jnum(self.median),
            jnum(self.min),
            jnum(self.max),
            self.n
        )
    }
}

fn jnum(x: f64) -> String {
    if x.is_finite() {
        format!("{}", (x * 1000.0).round() / 1000.0)
    } else {
        "null".into()
    }
}

fn jopt<T: Into<f64> + Copy>(x: Option<T>) -> String {
    x.map_or("null".into(), |v| jnum(v.into()))
}

fn jstat(s: Option<Stat>) -> String {
    s.map_or("null".into(), |s| s.json())
}

fn show(s: Option<Stat>, prec: usize) -> String {
    s.map_or("–".into(), |s| s.show(prec))
}

/// Per (size, method): the statistics of its samples.
struct Agg {
    mib: u64,
    method: Method,
    ok: usize,
    failed: usize,
    downtime: Option<Stat>,
    total: Option<Stat>,
    wire_mib: Option<Stat>,
    criu_frozen: Option<Stat>,
    criu_restore: Option<Stat>,
    haul_frozen: Option<Stat>,
    haul_wire_mib: Option<Stat>,
    throughput: Option<Stat>,
    serve_hwm_mib: Option<Stat>,
    migrate_hwm_mib: Option<Stat>,
    relay_hwm_mib: Option<Stat>,
    postcopy: Option<Stat>,
    fill: Option<Stat>,
}

impl Agg {
    fn of(mib: u64, method: Method, samples: &[Sample], failures: &[Failure]) -> Agg {
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.mib == mib && s.method == method)
            .collect();
        let st = |f: &dyn Fn(&Sample) -> Option<f64>| Stat::of(mine.iter().filter_map(|s| f(s)));
        let kib_mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
        Agg {
            mib,
            method,
            ok: mine.len(),
            failed: failures
                .iter()
                .filter(|f| f.mib == mib && f.method == method && f.rep > 0)
                .count(),
            downtime: st(&|s| s.downtime_ms),
            total: st(&|s| Some(s.total_ms)),
            wire_mib: st(&|s| s.wire_bytes.map(|b| b as f64 / MIB)),
            criu_frozen: st(&|s| s.criu_frozen_ms),
            criu_restore: st(&|s| s.criu_restore_ms),
            haul_frozen: st(&|s| s.haul_frozen_ms),
            haul_wire_mib: st(&|s| s.haul_wire_bytes.map(|b| b as f64 / MIB)),
            throughput: st(&|s| s.page_mib_s.or(s.link_mib_s)),
            serve_hwm_mib: st(&|s| kib_mib(s.serve_hwm_kib)),
            migrate_hwm_mib: st(&|s| kib_mib(s.migrate_hwm_kib)),
            relay_hwm_mib: st(&|s| kib_mib(s.relay_hwm_kib)),
            postcopy: st(&|s| s.postcopy_ms),
            fill: st(&|s| s.fill_ms),
        }
    }
}

/// A target of the issue, checked (never enforced).
struct Target {
    what: String,
    value: Option<f64>,
    limit: f64,
    detail: String,
}

impl Target {
    fn verdict(&self) -> &'static str {
        match self.value {
            None => "not measured",
            Some(v) if v <= self.limit => "met",
            Some(_) => "NOT met",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The machine and the report
// ---------------------------------------------------------------------------------------------

struct Machine {
    date: String,
    cpu: String,
    nproc: usize,
    kernel: String,
    mem_gib: f64,
    load_start: String,
    criu: String,
    runc: String,
    haul_rev: String,
}

/// (steal, total) jiffies of all CPUs from /proc/stat's `cpu` line.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    Some((*v.get(7)?, v.iter().take(8).sum()))
}

/// Steal time between two `cpu_times` readings, percent of all CPU time.
fn steal_pct(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((s0, t0), (s1, t1)) = (a?, b?);
    (t1 > t0).then(|| (s1.saturating_sub(s0)) as f64 * 100.0 / (t1 - t0) as f64)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

impl Machine {
    fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let dirty = !first_line(
            Command::new("git")
                .current_dir(util::root())
                .args(["status", "--porcelain"]),
        )
        .is_empty();
        Machine {
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default(),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            mem_gib: haul_e2e::parse_status_kib(&meminfo, "MemTotal")
                .map_or(0.0, |k| k as f64 / 1024.0 / 1024.0),
            load_start: loadavg(),
            criu: first_line(Command::new("criu").arg("--version")).replace("Version:", "CRIU"),
            runc: first_line(Command::new("runc").arg("--version")),
            haul_rev: format!(
                "{}{}",
                first_line(Command::new("git").current_dir(util::root()).args([
                    "rev-parse",
                    "--short",
                    "HEAD"
                ])),
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            ),
        }
    }
}

struct Report<'a> {
    opts: &'a Opts,
    args: &'a [String],
    machine: Machine,
    machine_end_load: String,
    elapsed: Duration,
    samples: Vec<Sample>,
    failures: Vec<Failure>,
}

impl Report<'_> {
    fn aggs(&self) -> Vec<Agg> {
        let mut v = Vec::new();
        for &mib in &self.opts.sizes {
            for &m in &self.opts.methods {
                v.push(Agg::of(mib, m, &self.samples, &self.failures));
            }
        }
        v
    }

    fn agg(aggs: &[Agg], mib: u64, m: Method) -> Option<&Agg> {
        aggs.iter().find(|a| a.mib == mib && a.method == m)
    }

    /// haul's median divided by another method's, for one column.
    fn ratio(aggs: &[Agg], mib: u64, other: Method, col: fn(&Agg) -> Option<Stat>) -> Option<f64> {
        let h = col(Self::agg(aggs, mib, Method::Haul)?)?.median;
        let o = col(Self::agg(aggs, mib, other)?)?.median;
        (o > 0.0).then(|| h / o)
    }

    fn link(&self) -> Option<Stat> {
        Stat::of(self.samples.iter().filter_map(|s| s.link_mib_s))
    }

    fn targets(&self, aggs: &[Agg]) -> Vec<Target> {
        let down = |a: &Agg| a.downtime;
        let med = |mib: u64, m: Method| {
            Self::agg(aggs, mib, m)
                .and_then(|a| a.downtime)
                .map_or("–".into(), |s| format!("{:.0} ms", s.median))
        };
        let mut t = Vec::new();
        for (mib, other, limit) in [
            (256, Method::Expert, 0.65),
            (256, Method::Local, 1.0),
            (64, Method::Expert, 0.5),
        ] {
            let value = Self::ratio(aggs, mib, other, down);
            t.push(Target {
                what: format!(
                    "{mib} MiB: haul's median downtime ≤ {limit} × {}",
                    other.name()
                ),
                value,
                limit,
                detail: format!(
                    "ratio {}: haul {}, {} {}",
                    value.map_or("–".into(), |v| format!("{v:.2}")),
                    med(mib, Method::Haul),
                    other.name(),
                    med(mib, other)
                ),
            });
        }
        // Page throughput at the largest size measured, against the raw link.
        let largest = self.opts.sizes.iter().copied().max().unwrap_or(0);
        let page = Self::agg(aggs, largest, Method::Haul).and_then(|a| a.throughput);
        let link = self.link();
        let frac = match (page, link) {
            (Some(p), Some(l)) if l.median > 0.0 => Some(p.median / l.median),
            _ => None,
        };
        t.push(Target {
            what: format!("page throughput with encryption ≥ 60% of the link ({largest} MiB)"),
            // Expressed as "link / page ≤ 1/0.6" so that smaller is better like the others.
            value: frac.map(|f| 1.0 / f.max(1e-9)),
            limit: 1.0 / 0.6,
            detail: format!(
                "haul pages {} MiB/s, link {} MiB/s: {}",
                page.map_or("–".into(), |s| format!("{:.0}", s.median)),
                link.map_or("–".into(), |s| format!("{:.0}", s.median)),
                frac.map_or("–".into(), |f| format!("{:.0}%", f * 100.0))
            ),
        });
        for mib in [256, 1024] {
            let d = Self::agg(aggs, mib, Method::HaulLazy).and_then(|a| a.downtime);
            t.push(Target {
                what: format!(
                    "{mib} MiB: haul --lazy median downtime ≤ {LAZY_DOWNTIME_TARGET_MS:.0} ms"
                ),
                value: d.map(|d| d.median),
                limit: LAZY_DOWNTIME_TARGET_MS,
                detail: format!(
                    "haul-lazy {}, post-copy {} after the resume",
                    d.map_or("–".into(), |d| format!("{:.0} ms", d.median)),
                    Self::agg(aggs, mib, Method::HaulLazy)
                        .and_then(|a| a.postcopy)
                        .map_or("–".into(), |p| format!("{:.0} ms", p.median))
                ),
            });
        }
        let at = Self::agg(aggs, 1024, Method::Haul);
        let peak = |f: fn(&Agg) -> Option<Stat>| at.and_then(f).map(|s| s.max);
        for (name, v) in [
            ("haul serve", peak(|a| a.serve_hwm_mib)),
            ("haul migrate", peak(|a| a.migrate_hwm_mib)),
            ("haul stdio-relay", peak(|a| a.relay_hwm_mib)),
        ] {
            t.push(Target {
                what: format!("1024 MiB: peak RSS of {name} ≤ 8 MiB"),
                value: v,
                limit: 8.0,
                detail: v.map_or("–".into(), |v| format!("largest of the reps {v:.1} MiB")),
            });
        }
        t
    }

    fn write(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.opts.out)
            .map_err(|e| format!("mkdir {}: {e}", self.opts.out.display()))?;
        let aggs = self.aggs();
        let md = self.markdown(&aggs);
        let json = self.json(&aggs);
        for (name, text) in [("RESULTS.md", &md), ("results.json", &json)] {
            let p = self.opts.out.join(name);
            std::fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))?;
        }
        println!("{md}");
        eprintln!(
            "bench: wrote {} and results.json",
            self.opts.out.join("RESULTS.md").display()
        );
        Ok(())
    }

    fn command(&self) -> String {
        let mut c = "cargo xtask bench".to_string();
        for a in self.args {
            c.push(' ');
            c.push_str(a);
        }
        c
    }

    fn markdown(&self, aggs: &[Agg]) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# haul benchmark\n");
        let _ = writeln!(
            s,
            "Written by `cargo xtask bench` (xtask/src/bench.rs); run it again to replace.\n"
        );
        let _ = writeln!(s, "- date: {}", m.date);
        let _ = writeln!(
            s,
            "- machine: {} × {}, {:.1} GiB RAM, kernel {}; load average {} at the start, {} at \
             the end (other work may run on this machine)",
            m.nproc, m.cpu, m.mem_gib, m.kernel, m.load_start, self.machine_end_load
        );
        if let Some(l) = Stat::of(self.samples.iter().filter_map(|x| x.load1)) {
            let _ = writeln!(
                s,
                "- 1-minute load average before each measured run: median {:.1}, {:.1} to {:.1} \
                 (2 cores: above 2, the runs shared the CPUs with other work)",
                l.median, l.min, l.max
            );
        }
        if let Some(l) = Stat::of(self.samples.iter().filter_map(|x| x.steal_pct)) {
            let _ = writeln!(
                s,
                "- CPU steal time during each measured run (/proc/stat: the hypervisor running \
                 others on these CPUs): median {:.1}%, {:.1} to {:.1}%",
                l.median, l.min, l.max
            );
        }
        let _ = writeln!(s, "- {}; {}; haul {}", m.criu, m.runc, m.haul_rev);
        let _ = writeln!(s, "- command: `{}`", self.command());
        let _ = writeln!(
            s,
            "- {} measured repetition(s) per size and method{}, interleaved (round robin, order \
             rotated each round); {:.1} min in all\n",
            self.opts.reps,
            if self.opts.warmup {
                " after one discarded warm-up round"
            } else {
                ", no warm-up"
            },
            self.elapsed.as_secs_f64() / 60.0
        );
        let _ = writeln!(s, "## What is measured\n");
        let _ = writeln!(
            s,
            "A runc busybox container whose init is `haul-workload --mib N --interval-ms {INTERVAL_MS}`: \
             N MiB of non-zero, checked memory and a heartbeat line every {INTERVAL_MS} ms in a \
             bind-mounted file (N = 0: the same program without memory). It moves from one network \
             namespace to another joined by a veth pair, each with its own runc root; image \
             directories are on tmpfs for every method.\n\n\
             - **haul**: `haul serve` (fresh per migration, in the destination's own cgroups) and \
             `haul migrate runc`, authenticated and encrypted. Its defaults: the restore leaves \
             the private memory out and serve copies it from its own images after the resume \
             (**fill ms**), so its CRIU restore does less than the runc methods'.\n\
             - **haul-eager**: the same with `--eager-restore`: every page in place before the \
             resume, as `runc restore` does (the like-for-like comparison with expert and \
             local).\n\
             - **haul-lazy**: the same with `--lazy` (post-copy): the container runs on the \
             destination before its memory has moved; {} fetches it after \
             the resume (**total** then ends when the last page arrived; **page MiB/s** is the \
             post-copy's rate; CRIU's frozen time is not kept by a lazy dump). The lab writes \
             CRIU's kernel-probe cache `/run/criu.kdat` once per boot (CRIU writes it only on a \
             tmpfs, which /run is on most hosts but not on this VM), for every method.\n\
             - **expert**: `criu page-server` on the destination, `runc checkpoint --page-server`, \
             the remaining images as a tar stream over TCP (1 MiB buffers), `runc restore -d`.\n\
             - **manual**: `runc checkpoint` to tmpfs, tar over TCP, `runc restore -d`.\n\
             - **local** (lower bound): `runc checkpoint` and `runc restore -d` in the same runc \
             root, no transfer.\n\
             - **link**: {} MiB over one plain TCP stream on the same veth.\n\n\
             `runc checkpoint` deletes the source container, so the runc methods restore under the \
             same id, in the destination's runc root and cgroups (local: the source's).\n\n\
             Columns: **downtime** is the largest gap between heartbeats seen by a poller reading \
             the file every 0.5 ms (freeze, transfer and restore as the user sees them); **total** \
             runs from the first command of the migration (for expert and manual: starting the \
             page server or receiver) until the container runs on the destination (haul migrate \
             or runc restore returned); **wire** counts the bytes through the source's veth in both \
             directions, IP and TCP headers included; **CRIU frozen / restore** are `frozen_time` \
             of CRIU's stats-dump and `restore_time` of its stats-restore; **page MiB/s** is the \
             page throughput, pages_written × 4 KiB / memwrite_time of CRIU's stats-dump: the time \
             CRIU spent writing pages out (to haul's socket, the expert's page server or tmpfs \
             images), which it alternates with collecting them from the tasks (criu/mem.c, chunk \
             mode), so this is the rate the transfer takes them at; results.json also has it over \
             memdump_time, collecting included (`memdump_mib_per_s`); shown from 16 MiB of pages; \
             for the link, the raw TCP stream; **peak RSS** is VmHWM of `haul serve` after the \
             migration, of `haul migrate` as it reports it at its end (`peak_rss_kib`; sampled \
             every 100 ms for a haul that does not), and of serve's stdio relay (CRIU and \
             runc, children of haul, are not counted). For haul, CRIU's frozen time includes the \
             destination's restore (the source holds its tasks frozen at `post-dump` until the \
             destination holds the restored copy), and CRIU's restore time includes the hold at \
             `post-restore` until the source's commit arrives (CRIU stops that timer after the \
             post-restore script). Cells: median [min–max].\n",
            lazy_filler(),
            LINK_BYTES >> 20
        );
        for &mib in &self.opts.sizes {
            let _ = writeln!(s, "## {mib} MiB\n");
            let _ = writeln!(
                s,
                "| method | runs | downtime ms | total ms | wire MiB | CRIU frozen ms | CRIU restore ms | page MiB/s | peak RSS MiB serve / migrate / relay |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
            for a in aggs.iter().filter(|a| a.mib == mib) {
                let runs = if a.failed > 0 {
                    format!("{} ({} failed)", a.ok, a.failed)
                } else {
                    a.ok.to_string()
                };
                let rss = if a.method.is_haul() {
                    format!(
                        "{} / {} / {}",
                        show(a.serve_hwm_mib, 1),
                        show(a.migrate_hwm_mib, 1),
                        show(a.relay_hwm_mib, 1)
                    )
                } else {
                    "–".into()
                };
                let is_link = a.method == Method::Link;
                let _ = writeln!(
                    s,
                    "| {} | {runs} | {} | {} | {} | {} | {} | {} | {rss} |",
                    a.method.name(),
                    show(a.downtime, 0),
                    if is_link {
                        "–".into()
                    } else {
                        show(a.total, 0)
                    },
                    show(a.wire_mib, 1),
                    show(a.criu_frozen, 0),
                    show(a.criu_restore, 0),
                    show(a.throughput, 0),
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "## Ratios (medians)\n");
        let _ = writeln!(
            s,
            "| size | downtime haul/expert | downtime haul/local | total haul/expert | total haul/local |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        let r = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.2}"));
        for &mib in &self.opts.sizes {
            let _ = writeln!(
                s,
                "| {mib} MiB | {} | {} | {} | {} |",
                r(Self::ratio(aggs, mib, Method::Expert, |a| a.downtime)),
                r(Self::ratio(aggs, mib, Method::Local, |a| a.downtime)),
                r(Self::ratio(aggs, mib, Method::Expert, |a| a.total)),
                r(Self::ratio(aggs, mib, Method::Local, |a| a.total)),
            );
        }
        let _ = writeln!(s, "\n## Targets (reported, not enforced)\n");
        let _ = writeln!(
            s,
            "Where a target is not met, bench/ANALYSIS.md says where the time goes.\n"
        );
        for t in self.targets(aggs) {
            let _ = writeln!(s, "- {}: **{}** ({})", t.what, t.verdict(), t.detail);
        }
        let _ = writeln!(s, "\nhaul's own numbers (`--stats-json`), medians:\n");
        let _ = writeln!(
            s,
            "| size | method | haul frozen ms (freeze → destination running) | post-copy ms (resume → last page) | fill ms (resume → memory in place, without --lazy) | haul wire MiB (its connection) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for a in aggs.iter().filter(|a| a.method.is_haul()) {
            let _ = writeln!(
                s,
                "| {} MiB | {} | {} | {} | {} | {} |",
                a.mib,
                a.method.name(),
                show(a.haul_frozen, 0),
                show(a.postcopy, 0),
                show(a.fill, 0),
                show(a.haul_wire_mib, 1)
            );
        }
        if !self.failures.is_empty() {
            let _ = writeln!(s, "\n## Failed runs\n");
            for f in &self.failures {
                let first = f.error.lines().next().unwrap_or_default();
                let _ = writeln!(
                    s,
                    "- {} {} MiB {}: {first}",
                    f.method.name(),
                    f.mib,
                    if f.rep == 0 {
                        "warm-up".to_string()
                    } else {
                        format!("rep {}", f.rep)
                    }
                );
            }
        }
        s
    }

    fn json(&self, aggs: &[Agg]) -> String {
        let m = &self.machine;
        let js = haul_e2e::json_string;
        let mut s = String::from("{\n");
        let _ = writeln!(s, "  \"date\": {},", js(&m.date));
        let _ = writeln!(s, "  \"command\": {},", js(&self.command()));
        let _ = writeln!(
            s,
            "  \"machine\": {{\"cpu\": {}, \"nproc\": {}, \"kernel\": {}, \"mem_gib\": {}, \
             \"load_start\": {}, \"load_end\": {}, \"criu\": {}, \"runc\": {}, \"haul\": {}}},",
            js(&m.cpu),
            m.nproc,
            js(&m.kernel),
            jnum(m.mem_gib),
            js(&m.load_start),
            js(&self.machine_end_load),
            js(&m.criu),
            js(&m.runc),
            js(&m.haul_rev)
        );
        let _ = writeln!(
            s,
            "  \"reps\": {}, \"warmup\": {}, \"elapsed_s\": {},",
            self.opts.reps,
            self.opts.warmup,
            jnum(self.elapsed.as_secs_f64())
        );
        let _ = writeln!(s, "  \"samples\": [");
        let rows: Vec<String> = self
            .samples
            .iter()
            .map(|x| {
                format!(
                    "    {{\"method\": \"{}\", \"mib\": {}, \"rep\": {}, \"downtime_ms\": {}, \
                     \"total_ms\": {}, \"wire_bytes\": {}, \"criu_frozen_ms\": {}, \
                     \"criu_restore_ms\": {}, \"haul_total_ms\": {}, \"haul_frozen_ms\": {}, \
                     \"haul_wire_bytes\": {}, \"haul_page_bytes\": {}, \
                     \"haul_page_mib_per_s\": {}, \"criu_memdump_ms\": {}, \
                     \"criu_memwrite_ms\": {}, \"criu_pages_written\": {}, \
                     \"page_mib_per_s\": {}, \"memdump_mib_per_s\": {}, \
                     \"serve_hwm_kib\": {}, \"migrate_hwm_kib\": {}, \"relay_hwm_kib\": {}, \
                     \"postcopy_ms\": {}, \"fill_ms\": {}, \"link_mib_per_s\": {}, \
                     \"load1\": {}, \"steal_pct\": {}}}",
                    x.method.name(),
                    x.mib,
                    x.rep,
                    jopt(x.downtime_ms),
                    jnum(x.total_ms),
                    jopt(x.wire_bytes.map(|b| b as f64)),
                    jopt(x.criu_frozen_ms),
                    jopt(x.criu_restore_ms),
                    jopt(x.haul_total_ms),
                    jopt(x.haul_frozen_ms),
                    jopt(x.haul_wire_bytes.map(|b| b as f64)),
                    jopt(x.haul_page_bytes.map(|b| b as f64)),
                    jopt(x.haul_page_mib_s),
                    jopt(x.criu_memdump_ms),
                    jopt(x.criu_memwrite_ms),
                    jopt(x.criu_pages_written.map(|b| b as f64)),
                    jopt(x.page_mib_s),
                    jopt(x.memdump_mib_s),
                    jopt(x.serve_hwm_kib.map(|b| b as f64)),
                    jopt(x.migrate_hwm_kib.map(|b| b as f64)),
                    jopt(x.relay_hwm_kib.map(|b| b as f64)),
                    jopt(x.postcopy_ms),
                    jopt(x.fill_ms),
                    jopt(x.link_mib_s),
                    jopt(x.load1),
                    jopt(x.steal_pct),
                )
            })
            .collect();
        let _ = writeln!(s, "{}\n  ],", rows.join(",\n"));
        let _ = writeln!(s, "  \"summary\": [");
        let rows: Vec<String> = aggs
            .iter()
            .map(|a| {
                format!(
                    "    {{\"mib\": {}, \"method\": \"{}\", \"runs\": {}, \"failed\": {}, \
                     \"downtime_ms\": {}, \"total_ms\": {}, \"wire_mib\": {}, \
                     \"criu_frozen_ms\": {}, \"criu_restore_ms\": {}, \"haul_frozen_ms\": {}, \
                     \"haul_wire_mib\": {}, \"mib_per_s\": {}, \"serve_hwm_mib\": {}, \
                     \"migrate_hwm_mib\": {}, \"relay_hwm_mib\": {}, \"postcopy_ms\": {}, \
                     \"fill_ms\": {}}}",
                    a.mib,
                    a.method.name(),
                    a.ok,
                    a.failed,
                    jstat(a.downtime),
                    jstat(a.total),
                    jstat(a.wire_mib),
                    jstat(a.criu_frozen),
                    jstat(a.criu_restore),
                    jstat(a.haul_frozen),
                    jstat(a.haul_wire_mib),
                    jstat(a.throughput),
                    jstat(a.serve_hwm_mib),
                    jstat(a.migrate_hwm_mib),
                    jstat(a.relay_hwm_mib),
                    jstat(a.postcopy),
                    jstat(a.fill),
                )
            })
            .collect();
        let _ = writeln!(s, "{}\n  ],", rows.join(",\n"));
        let _ = writeln!(s, "  \"ratios\": [");
        let rows: Vec<String> = self
            .opts
            .sizes
            .iter()
            .map(|&mib| {
                format!(
                    "    {{\"mib\": {mib}, \"downtime_haul_over_expert\": {}, \
                     \"downtime_haul_over_local\": {}, \"total_haul_over_expert\": {}, \
                     \"total_haul_over_local\": {}}}",
                    jopt(Self::ratio(aggs, mib, Method::Expert, |a| a.downtime)),
                    jopt(Self::ratio(aggs, mib, Method::Local, |a| a.downtime)),
                    jopt(Self::ratio(aggs, mib, Method::Expert, |a| a.total)),
                    jopt(Self::ratio(aggs, mib, Method::Local, |a| a.total)),
                )
            })
            .collect();
        let _ = writeln!(s, "{}\n  ],", rows.join(",\n"));
        let _ = writeln!(s, "  \"targets\": [");
        let rows: Vec<String> = self
            .targets(aggs)
            .iter()
            .map(|t| {
                format!(
                    "    {{\"target\": {}, \"value\": {}, \"limit\": {}, \"verdict\": \"{}\", \
                     \"detail\": {}}}",
                    js(&t.what),
                    jopt(t.value),
                    jnum(t.limit),
                    t.verdict(),
                    js(&t.detail)
                )
            })
            .collect();
        let _ = writeln!(s, "{}\n  ],", rows.join(",\n"));
        let _ = writeln!(s, "  \"failures\": [");
        let rows: Vec<String> = self
            .failures
            .iter()
            .map(|f| {
                format!(
                    "    {{\"method\": \"{}\", \"mib\": {}, \"rep\": {}, \"error\": {}}}",
                    f.method.name(),
                    f.mib,
                    f.rep,
                    js(&f.error)
                )
            })
            .collect();
        let _ = writeln!(s, "{}\n  ]\n}}", rows.join(",\n"));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_json_numbers() {
        let s = Stat::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(s.show(0), "2 [1–3]");
        assert_eq!(Stat::of([4.0, 1.0]).unwrap().median, 2.5);
        assert!(Stat::of([]).is_none());
        let j = r#"{"kind":"runc","total_ms":1500,"page_mib_per_s":212.75,"wire_bytes":67}"#;
        assert_eq!(json_number(j, "total_ms"), Some(1500.0));
        assert_eq!(json_number(j, "page_mib_per_s"), Some(212.75));
        assert_eq!(json_number(j, "wire_bytes"), Some(67.0));
        assert_eq!(json_number(j, "frozen_ms"), None);
    }

    #[test]
    fn options() {
        let a = |v: &[&str]| parse_opts(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let q = a(&["--quick"]).unwrap();
        assert_eq!((q.sizes, q.reps), (vec![0, 64], 1));
        let o = a(&["--sizes", "256", "--methods", "haul,local", "--reps", "5"]).unwrap();
        let l = a(&["--methods", "haul-lazy"]).unwrap();
        assert_eq!(l.methods, vec![Method::HaulLazy]);
        let e = a(&["--methods", "haul-eager,expert"]).unwrap();
        assert_eq!(e.methods, vec![Method::HaulEager, Method::Expert]);
        assert_eq!(Method::ALL.iter().filter(|m| m.is_haul()).count(), 3);
        assert_eq!(o.sizes, vec![256]);
        assert_eq!(o.methods, vec![Method::Haul, Method::Local]);
        assert_eq!(o.reps, 5);
        assert!(a(&["--methods", "scp"]).is_err());
        assert!(a(&["--reps", "0"]).is_err());
    }
}
