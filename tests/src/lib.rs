//! Lab library for haul's end-to-end tests: two network namespaces ("hosts") joined by a veth
//! pair, a CRIU-friendly workload started as the init of its own pid namespace, heartbeat
//! readers that measure downtime from outside, and RAII guards for everything a test creates.
//!
//! Every guard cleans up on `Drop`; nothing here deletes or kills anything it did not create.
//! See `/work/shared/guides/test-lab.md` for the facts about the machine this relies on.

pub mod pid_lab;
pub use pid_lab::{dir_entries, json_number, PidLab};

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal};

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error of the lab library: a message with its context chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabError(pub String);

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

/// Result with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;

fn lab_err(msg: impl Into<String>) -> LabError {
    LabError(msg.into())
}

/// Adds context to errors (and turns `None` into an error).
pub trait Context<T> {
    fn context(self, ctx: impl fmt::Display) -> Result<T>;
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, ctx: impl fmt::Display) -> Result<T> {
        self.map_err(|e| LabError(format!("{ctx}: {e}")))
    }
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| LabError(format!("{}: {e}", f())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, ctx: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| LabError(ctx.to_string()))
    }
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| LabError(f().to_string()))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A number unique within this test process (names of namespaces, directories, ...).
fn next_seq() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn sanitize_tag(tag: &str, max: usize) -> String {
    let s: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(max)
        .collect();
    if s.is_empty() {
        "t".to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Lab requirements
// ---------------------------------------------------------------------------------------------

/// The environment variable that turns unmet lab requirements into a skip instead of a failure.
pub const SKIP_ENV: &str = "HAUL_E2E_SKIP";
/// The environment variable that keeps temporary directories for debugging.
pub const KEEP_ENV: &str = "HAUL_E2E_KEEP";

/// Proof that the lab requirements were checked, with the tools resolved to absolute paths.
#[derive(Debug, Clone)]
pub struct Lab {
    tools: Vec<(String, PathBuf)>,
}

impl Lab {
    /// Tools for network namespaces and workloads (no CRIU).
    pub const NET_TOOLS: &'static [&'static str] = &["ip", "nsenter", "unshare", "setsid"];
    /// Everything a migration test needs.
    pub const ALL_TOOLS: &'static [&'static str] = &[
        "criu", "runc", "ip", "nsenter", "iptables", "unshare", "setsid",
    ];

    /// Checks that we are root and that every tool in `tools` is on PATH (or in an sbin
    /// directory). Returns the reason otherwise.
    pub fn require(tools: &[&str]) -> Result<Lab> {
        let mut problems = Vec::new();
        if !rustix::process::geteuid().is_root() {
            problems.push("not running as root".to_string());
        }
        let mut found = Vec::new();
        for t in tools {
            match find_tool(t) {
                Some(p) => found.push(((*t).to_string(), p)),
                None => problems.push(format!("`{t}` not found on PATH")),
            }
        }
        if problems.is_empty() {
            Ok(Lab { tools: found })
        } else {
            Err(lab_err(format!(
                "lab requirements not met: {}",
                problems.join("; ")
            )))
        }
    }

    /// Like [`Lab::require`], but if `HAUL_E2E_SKIP=1` is set an unmet requirement prints
    /// `skipped: reason` and returns `Ok(None)`. Without it, the reason is the error, so a test
    /// fails instead of silently skipping:
    ///
    /// `let Some(lab) = Lab::require_or_skip(&[..]).expect("lab") else { return };`
    pub fn require_or_skip(tools: &[&str]) -> Result<Option<Lab>> {
        match Lab::require(tools) {
            Ok(lab) => Ok(Some(lab)),
            Err(e) if skip_requested() => {
                eprintln!("skipped: {e}");
                Ok(None)
            }
            Err(e) => Err(lab_err(format!("{e} (set {SKIP_ENV}=1 to skip instead)"))),
        }
    }

    /// The absolute path of a tool checked by `require`.
    pub fn tool(&self, name: &str) -> Option<&Path> {
        self.tools
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }
}

/// True if `HAUL_E2E_SKIP=1`.
pub fn skip_requested() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v == "1")
}

/// Finds an executable on PATH, then in the usual sbin/bin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The absolute path of a tool if found, else its bare name (so the error names it).
fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a command to completion; an error carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(lab_err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

fn workspace_target_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t));
    }
    dirs.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target"),
    );
    dirs
}

/// The haul binary: `$HAUL_BIN`, else `<workspace>/target/{debug,release}/haul` (the newer one
/// if both exist).
pub fn haul_bin() -> Result<PathBuf> {
    find_bin("HAUL_BIN", "haul")
}

/// The workload binary: `$HAUL_WORKLOAD_BIN`, else next to the running test executable
/// (`target/<profile>/deps/..`), else `<workspace>/target/{debug,release}/haul-workload`.
/// Integration tests of this package may prefer `env!("CARGO_BIN_EXE_haul-workload")`.
pub fn workload_bin() -> Result<PathBuf> {
    if std::env::var_os("HAUL_WORKLOAD_BIN").is_none() {
        if let Ok(exe) = std::env::current_exe() {
            for dir in exe.ancestors().skip(1).take(2) {
                let p = dir.join("haul-workload");
                if is_executable(&p) {
                    return Ok(p);
                }
            }
        }
    }
    find_bin("HAUL_WORKLOAD_BIN", "haul-workload")
}

fn find_bin(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(lab_err(format!(
                "${env}={} is not an executable file",
                p.display()
            )))
        };
    }
    let mut candidates: Vec<PathBuf> = workspace_target_dirs()
        .into_iter()
        .flat_map(|t| [t.join("debug").join(name), t.join("release").join(name)])
        .collect();
    candidates.retain(|p| is_executable(p));
    candidates.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    candidates.pop().with_context(|| {
        format!("no `{name}` binary in target/{{debug,release}}; build it or set ${env}")
    })
}

// ---------------------------------------------------------------------------------------------
// /proc helpers and a pid guard for processes that are not our children
// ---------------------------------------------------------------------------------------------

/// Fields of `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Start time in clock ticks after boot: with the pid it identifies a process.
    pub starttime: u64,
}

/// Reads `/proc/PID/stat`; `None` if the process does not exist.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); starttime is field 22.
    Some(ProcStat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// The pids of the process in every nested pid namespace (`NSpid:` of `/proc/PID/status`),
/// outermost first.
pub fn proc_nspids(pid: u32) -> Option<Vec<u32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("NSpid:"))?;
    line["NSpid:".len()..]
        .split_whitespace()
        .map(|p| p.parse().ok())
        .collect()
}

/// Children of `pid`: from `/proc/PID/task/*/children`, else by scanning `/proc` for the ppid.
pub fn proc_children(pid: u32) -> Vec<u32> {
    let mut out = BTreeSet::new();
    let mut have_children_file = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                have_children_file = true;
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    if !have_children_file {
        for p in all_pids() {
            if proc_stat(p).is_some_and(|s| s.ppid == pid) {
                out.insert(p);
            }
        }
    }
    out.into_iter().collect()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live (non-zombie) processes whose command line contains `arg` as one whole argument, e.g.
/// the heartbeat path of a restored workload.
pub fn find_pids_with_arg(arg: impl AsRef<OsStr>) -> Vec<u32> {
    use std::os::unix::ffi::OsStrExt;
    let needle = arg.as_ref().as_bytes();
    all_pids()
        .into_iter()
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == needle))
                && proc_stat(p).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
        })
        .collect()
}

/// Live workload processes (comm `haul-workload`) writing to `heartbeat`: finds a restored
/// workload, whose host pid differs from the dumped one. (The launcher's command line also
/// contains the path; it is excluded by the comm.)
pub fn find_workload_pids(heartbeat: &Path) -> Vec<u32> {
    find_pids_with_arg(heartbeat)
        .into_iter()
        .filter(|&p| proc_stat(p).is_some_and(|s| s.comm == "haul-workload"))
        .collect()
}

fn rustix_pid(pid: u32) -> Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .with_context(|| format!("invalid pid {pid}"))
}

/// Guards a process that is not our child (the workload inside its pid namespace, a restored
/// process): `Drop` sends SIGKILL if it is still the same process. Identity is kept by a pidfd
/// (opened, then checked against the start time) with a start-time check as fallback, so a
/// reused pid is never killed. It does not reap: the parent (or init) does.
#[derive(Debug)]
pub struct PidGuard {
    pid: u32,
    starttime: u64,
    pidfd: Option<OwnedFd>,
    armed: bool,
}

impl PidGuard {
    /// Guards `pid` as it is now.
    pub fn new(pid: u32) -> Result<Self> {
        let before = proc_stat(pid).with_context(|| format!("no process {pid}"))?;
        let pidfd = rustix::process::pidfd_open(rustix_pid(pid)?, PidfdFlags::empty()).ok();
        let after = proc_stat(pid).with_context(|| format!("process {pid} went away"))?;
        if after.starttime != before.starttime {
            return Err(lab_err(format!(
                "process {pid} was replaced while guarding it"
            )));
        }
        Ok(PidGuard {
            pid,
            starttime: before.starttime,
            pidfd,
            armed: true,
        })
    }

    /// Like `new`, but also requires the process's parent to be `ppid` (checked after the
    /// pidfd is open, so the guard surely holds the child of `ppid`).
    pub fn new_child_of(pid: u32, ppid: u32) -> Result<Self> {
        let g = PidGuard::new(pid)?;
        match proc_stat(pid) {
            Some(s) if s.ppid == ppid && s.starttime == g.starttime => Ok(g),
            _ => Err(lab_err(format!("process {pid} is not a child of {ppid}"))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Same process, still running (not a zombie).
    pub fn is_alive(&self) -> bool {
        proc_stat(self.pid)
            .is_some_and(|s| s.starttime == self.starttime && !matches!(s.state, 'Z' | 'X'))
    }

    /// Sends a signal if it is still the same process. Returns whether it was sent.
    pub fn signal(&self, sig: Signal) -> Result<bool> {
        if let Some(fd) = &self.pidfd {
            return match rustix::process::pidfd_send_signal(fd, sig) {
                Ok(()) => Ok(true),
                Err(rustix::io::Errno::SRCH) => Ok(false),
                Err(e) => Err(lab_err(format!("signal {sig:?} to {}: {e}", self.pid))),
            };
        }
        match proc_stat(self.pid) {
            Some(s) if s.starttime == self.starttime => {
                match rustix::process::kill_process(rustix_pid(self.pid)?, sig) {
                    Ok(()) => Ok(true),
                    Err(rustix::io::Errno::SRCH) => Ok(false),
                    Err(e) => Err(lab_err(format!("signal {sig:?} to {}: {e}", self.pid))),
                }
            }
            _ => Ok(false),
        }
    }

    /// SIGKILL if still the same process.
    pub fn kill(&self) -> Result<bool> {
        self.signal(Signal::KILL)
    }

    /// Waits until the process is gone or a zombie.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.is_alive() {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Don't kill on drop (e.g. the process was handed over to someone else).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        if self.armed && self.is_alive() {
            if let Err(e) = self.kill() {
                eprintln!("haul-e2e: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// Owns a child process: `Drop` signals it (SIGKILL, or SIGTERM first if a grace period is
/// set) and waits for it, so no zombie is left. Signals only go to a child not yet reaped, so
/// the pid cannot have been reused.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    status: Option<ExitStatus>,
    grace: Duration,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let name = format!("{:?}", cmd.get_program());
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        Ok(ChildGuard::new(child).named(name))
    }

    pub fn new(child: Child) -> Self {
        ChildGuard {
            child,
            status: None,
            grace: Duration::ZERO,
            name: String::new(),
        }
    }

    /// A name for log messages.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// On drop/stop, send SIGTERM and wait up to `grace` before SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("wait for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends a signal unless it has been reaped already.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        match rustix::process::kill_process(rustix_pid(self.pid())?, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(lab_err(format!("signal {sig:?} to {}: {e}", self.name))),
        }
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL; waits and returns the status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if !self.grace.is_zero() {
            self.signal(Signal::TERM)?;
            if let Some(s) = self.wait_timeout(self.grace)? {
                return Ok(s);
            }
        }
        self.kill()
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::KILL)?;
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self
            .child
            .wait()
            .with_context(|| format!("wait for {}", self.name))?;
        self.status = Some(s);
        Ok(s)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("haul-e2e: stopping {}: {e}", self.name);
        }
    }
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    open_streams: usize,
}

#[derive(Default)]
struct LogBuf {
    state: Mutex<LogState>,
    cv: Condvar,
}

/// A child whose stdout and stderr lines are collected (and echoed to our stderr as
/// `[name] line`) by reader threads; [`ChildWithLog::wait_for_line`] waits for e.g.
/// `listening on ADDR`. Stops the child on drop like [`ChildGuard`].
pub struct ChildWithLog {
    guard: ChildGuard,
    log: Arc<LogBuf>,
    name: String,
}

impl ChildWithLog {
    /// Spawns `cmd` with stdout and stderr captured (stdin as configured on `cmd`).
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        let log = Arc::new(LogBuf::default());
        let out = child.stdout.take();
        let err = child.stderr.take();
        let guard = ChildGuard::new(child).named(name);
        let streams: Vec<Box<dyn Read + Send>> = [
            out.map(|o| Box::new(o) as Box<dyn Read + Send>),
            err.map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        lock(&log.state).open_streams = streams.len();
        for s in streams {
            let log = Arc::clone(&log);
            let name = name.to_string();
            // Detached: a grandchild may keep the pipe open after the child is gone.
            std::thread::spawn(move || {
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[{name}] {line}");
                    lock(&log.state).lines.push(line);
                    log.cv.notify_all();
                }
                lock(&log.state).open_streams -= 1;
                log.cv.notify_all();
            });
        }
        Ok(ChildWithLog {
            guard,
            log,
            name: name.to_string(),
        })
    }

    /// Sets the grace period of the stop on drop (SIGTERM first).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.guard.grace = grace;
        self
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn guard(&mut self) -> &mut ChildGuard {
        &mut self.guard
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.log.state).lines.clone()
    }

    /// All lines so far, joined.
    pub fn log_text(&self) -> String {
        lock(&self.log.state).lines.join("\n")
    }

    /// Waits for a line containing `needle` (searching from the first line) and returns it.
    /// Fails on timeout or when the output ends without it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_line_from(0, needle, timeout).map(|(_, l)| l)
    }

    /// Like `wait_for_line`, searching lines from index `from`; returns (index, line).
    pub fn wait_for_line_from(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<(usize, String)> {
        let end = Instant::now() + timeout;
        let mut st = lock(&self.log.state);
        loop {
            if let Some((i, l)) = st
                .lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.contains(needle))
            {
                return Ok((i, l.clone()));
            }
            let now = Instant::now();
            if st.open_streams == 0 || now >= end {
                let why = if st.open_streams == 0 {
                    "output ended"
                } else {
                    "timed out"
                };
                return Err(lab_err(format!(
                    "{}: {why} waiting for a line containing {needle:?}; output:\n{}",
                    self.name,
                    st.lines.join("\n")
                )));
            }
            st = self
                .log
                .cv
                .wait_timeout(st, end - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A fresh directory `/tmp/haul-e2e-<tag>-<pid>-<n>`. `Drop` removes it recursively, but only
/// if no mount point is at or under it (`/proc/self/mountinfo`); otherwise it logs and leaves
/// it: unmounting is the caller's job. `HAUL_E2E_KEEP=1` keeps all directories.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let tag = sanitize_tag(tag, 32);
        loop {
            let path = PathBuf::from(format!(
                "/tmp/haul-e2e-{tag}-{}-{}",
                std::process::id(),
                next_seq()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let path = path.canonicalize().context("canonicalize temp dir")?;
                    return Ok(TempDir { path, keep: false });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(lab_err(format!("create {}: {e}", path.display()))),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Leave the directory in place on drop.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

/// The last `TAIL` bytes of every CRIU log (`*.log`) at most four levels under `dir`, printed
/// when a test failed: CI's output then holds what CRIU said on both sides.
fn print_criu_logs(dir: &Path) {
    const TAIL: u64 = 6 * 1024;
    fn walk(d: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            let p = e.path();
            if t.is_dir() && depth > 0 {
                walk(&p, depth - 1, out);
            } else if t.is_file() && p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    let mut logs = Vec::new();
    walk(dir, 4, &mut logs);
    logs.sort();
    for p in logs {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&p) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
        let mut text = String::new();
        let _ = f.take(TAIL).read_to_string(&mut text);
        eprintln!(
            "haul-e2e: ---- last {} bytes of {} ----\n{text}",
            text.len(),
            p.display()
        );
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_criu_logs(&self.path);
        }
        if self.keep || std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
            eprintln!("haul-e2e: keeping {}", self.path.display());
            return;
        }
        match mounts_under(&self.path) {
            Ok(m) if m.is_empty() => {
                if let Err(e) = std::fs::remove_dir_all(&self.path) {
                    eprintln!("haul-e2e: remove {}: {e}", self.path.display());
                }
            }
            Ok(m) => eprintln!(
                "haul-e2e: NOT removing {}: mount points under it: {m:?}",
                self.path.display()
            ),
            Err(e) => eprintln!(
                "haul-e2e: NOT removing {}: cannot check mounts: {e}",
                self.path.display()
            ),
        }
    }
}

/// Mount points of this mount namespace at or under `path` (which should be canonical).
pub fn mounts_under(path: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    Ok(parse_mountinfo_points(&info)
        .into_iter()
        .filter(|m| m.starts_with(path))
        .collect())
}

/// The mount points (field 5) of mountinfo text, with octal escapes decoded.
pub fn parse_mountinfo_points(info: &str) -> Vec<PathBuf> {
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

fn unescape_octal(s: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], oct) {
            let v = (u32::from(d[0] - b'0') << 6)
                | (u32::from(d[1] - b'0') << 3)
                | u32::from(d[2] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

// ---------------------------------------------------------------------------------------------
// Two network namespaces
// ---------------------------------------------------------------------------------------------

/// One of the two "hosts".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Src,
    Dst,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Src => "src",
            Side::Dst => "dst",
        }
    }
}

/// Serializes `ip netns add/delete` within this process (iproute2 races on the first mount of
/// /run/netns when run concurrently).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Two network namespaces `haul-<tag>-<pid>-<n>-src` / `-dst` joined by a veth pair
/// (`hv<xxxx>s` in src, `hv<xxxx>d` in dst, created directly inside the namespaces) with
/// 10.X.Y.1/30 (src) and 10.X.Y.2/30 (dst), links and loopback up. `Drop` deletes both
/// namespaces; the veth goes with them.
#[derive(Debug)]
pub struct NetnsPair {
    names: [String; 2],
    created: [bool; 2],
    veths: [String; 2],
    net: (u8, u8),
}

impl NetnsPair {
    pub fn create(tag: &str) -> Result<Self> {
        let pid = std::process::id();
        let seq = next_seq();
        let tag = sanitize_tag(tag, 24);
        let base = format!("haul-{tag}-{pid}-{seq}");
        // 16-bit id from pid and sequence: distinct for concurrent tests of one process and,
        // modulo 2^16, between processes. The addresses live in private namespaces anyway.
        let id = (pid.wrapping_mul(97).wrapping_add(seq.wrapping_mul(1 << 12)) & 0xffff) as u16;
        let mut pair = NetnsPair {
            names: [format!("{base}-src"), format!("{base}-dst")],
            created: [false, false],
            veths: [format!("hv{id:04x}s"), format!("hv{id:04x}d")],
            net: ((id >> 8) as u8, (id & 0xff) as u8),
        };
        pair.setup()?;
        Ok(pair)
    }

    fn setup(&mut self) -> Result<()> {
        let ip = tool("ip");
        {
            let _g = lock(&NETNS_LOCK);
            for i in 0..2 {
                run(Command::new(&ip).args(["netns", "add", &self.names[i]]))?;
                self.created[i] = true;
            }
        }
        run(Command::new(&ip).args([
            "link",
            "add",
            &self.veths[0],
            "netns",
            &self.names[0],
            "type",
            "veth",
            "peer",
            "name",
            &self.veths[1],
            "netns",
            &self.names[1],
        ]))?;
        for (i, side) in [Side::Src, Side::Dst].into_iter().enumerate() {
            let ns = &self.names[i];
            let addr = format!("{}/30", self.addr(side));
            run(Command::new(&ip).args(["-n", ns, "addr", "add", &addr, "dev", &self.veths[i]]))?;
            run(Command::new(&ip).args(["-n", ns, "link", "set", &self.veths[i], "up"]))?;
            run(Command::new(&ip).args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        Ok(())
    }

    fn idx(side: Side) -> usize {
        match side {
            Side::Src => 0,
            Side::Dst => 1,
        }
    }

    /// The namespace name (as in `ip netns list`).
    pub fn name(&self, side: Side) -> &str {
        &self.names[Self::idx(side)]
    }

    /// `/run/netns/NAME`.
    pub fn path(&self, side: Side) -> PathBuf {
        Path::new("/run/netns").join(self.name(side))
    }

    /// The veth interface name inside that namespace.
    pub fn veth(&self, side: Side) -> &str {
        &self.veths[Self::idx(side)]
    }

    pub fn addr(&self, side: Side) -> Ipv4Addr {
        let host = match side {
            Side::Src => 1,
            Side::Dst => 2,
        };
        Ipv4Addr::new(10, self.net.0, self.net.1, host)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        self.addr(Side::Src)
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        self.addr(Side::Dst)
    }

    /// `nsenter --net=/run/netns/NAME -- PROGRAM`: runs in that network namespace and nothing
    /// else changes (unlike `ip netns exec`, /sys and /sys/fs/cgroup stay visible).
    pub fn cmd_in(&self, side: Side, program: impl AsRef<OsStr>) -> Command {
        let mut net = OsString::from("--net=");
        net.push(self.path(side));
        let mut c = Command::new(tool("nsenter"));
        c.arg(net).arg("--").arg(program);
        c
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let ip = tool("ip");
        let _g = lock(&NETNS_LOCK);
        for i in 0..2 {
            if self.created[i] {
                if let Err(e) = run(Command::new(&ip).args(["netns", "delete", &self.names[i]])) {
                    eprintln!("haul-e2e: {e}");
                }
            }
        }
    }
}

/// Names of the network namespaces in `ip netns list`.
pub fn netns_list() -> Result<Vec<String>> {
    let out = run(Command::new(tool("ip")).args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------------

/// Options of the workload program.
#[derive(Debug, Clone)]
pub struct WorkloadOpts {
    /// MiB of memory filled with the check pattern.
    pub mib: u64,
    /// MiB of shared anonymous memory, checked the same way (0: none).
    pub shared_mib: u64,
    /// Heartbeat period.
    pub interval_ms: u64,
    /// Pages rewritten (same values) per tick, to dirty memory.
    pub dirty_pages: u64,
    /// Period of the full memory check, spread over the ticks. Each tick checks
    /// `mib / (sweep_ms / interval_ms)` MiB: raise it for big unoptimized (debug) workloads.
    pub sweep_ms: u64,
    /// The binary; default [`workload_bin`].
    pub bin: Option<PathBuf>,
}

impl Default for WorkloadOpts {
    fn default() -> Self {
        WorkloadOpts {
            mib: 8,
            shared_mib: 0,
            interval_ms: 5,
            dirty_pages: 0,
            sweep_ms: 2000,
            bin: None,
        }
    }
}

/// The workload as init of its own pid namespace and session leader, started as
/// `nsenter --net=NS bash -c CLOSE-FDS unshare -pf setsid haul-workload ...` (no
/// `--kill-child`, no `--mount-proc`; see [`fd_closer`]), stdio `/dev/null`; every process of
/// the chain before `unshare`'s fork execs in place, so the launcher pid is our child. [`Workload::pid`] is its host pid: the CRIU dump target.
/// `Drop` SIGKILLs the workload if it is still the same process, then reaps the launcher.
#[derive(Debug)]
pub struct Workload {
    proc_guard: PidGuard,
    launcher: ChildGuard,
    heartbeat: PathBuf,
}

impl Workload {
    /// Starts the workload in `net`'s `side` namespace with `mib` MiB and the default interval.
    pub fn start(net: &NetnsPair, side: Side, mib: u64, heartbeat: &Path) -> Result<Self> {
        let opts = WorkloadOpts {
            mib,
            ..WorkloadOpts::default()
        };
        Self::start_with(Some((net, side)), heartbeat, &opts)
    }

    /// Starts the workload in a network namespace, or in ours if `net` is `None`.
    pub fn start_with(
        net: Option<(&NetnsPair, Side)>,
        heartbeat: &Path,
        opts: &WorkloadOpts,
    ) -> Result<Self> {
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => workload_bin()?,
        };
        let closer = fd_closer()?;
        let (shell, shell_args) = closer.split_first().context("empty fd closer")?;
        let mut cmd = match net {
            Some((n, side)) => n.cmd_in(side, shell),
            None => Command::new(shell),
        };
        cmd.args(shell_args)
            .arg(tool("unshare"))
            .arg("-pf")
            .arg(tool("setsid"))
            .arg(&bin)
            .arg("--mib")
            .arg(opts.mib.to_string())
            .arg("--interval-ms")
            .arg(opts.interval_ms.to_string())
            .arg("--dirty-pages")
            .arg(opts.dirty_pages.to_string())
            .arg("--sweep-ms")
            .arg(opts.sweep_ms.to_string())
            .args(
                (opts.shared_mib > 0)
                    .then(|| ["--shared-mib".to_string(), opts.shared_mib.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .arg("--heartbeat")
            .arg(heartbeat)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut launcher = ChildGuard::spawn(&mut cmd)?.named("workload launcher");
        let comm: String = bin
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default();
        let proc_guard = find_ns_init(&mut launcher, &comm, Duration::from_secs(10))?;
        Ok(Workload {
            proc_guard,
            launcher,
            heartbeat: heartbeat.to_path_buf(),
        })
    }

    /// Host pid of the workload (pid 1 in its pid namespace).
    pub fn pid(&self) -> u32 {
        self.proc_guard.pid()
    }

    /// Pid of the `unshare` process (our child, the workload's parent).
    pub fn launcher_pid(&self) -> u32 {
        self.launcher.pid()
    }

    pub fn heartbeat(&self) -> &Path {
        &self.heartbeat
    }

    /// The original process still runs (false after a CRIU dump that killed it).
    pub fn is_alive(&self) -> bool {
        self.proc_guard.is_alive()
    }

    /// Waits for the launcher to exit (it exits when the workload does, e.g. after a dump).
    /// Its exit code is the workload's (3: memory mismatch, 4: inherited fds) or 1 if the
    /// workload was killed by a signal.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.launcher.wait_timeout(timeout)
    }

    /// SIGKILL the workload and reap the launcher.
    pub fn kill(&mut self) -> Result<Option<ExitStatus>> {
        self.proc_guard.kill()?;
        match self.launcher.wait_timeout(Duration::from_secs(5))? {
            Some(s) => Ok(Some(s)),
            None => {
                // The launcher should have reaped it; don't leave it around anyway.
                self.launcher.kill()?;
                Ok(None)
            }
        }
    }

    /// Don't kill the original process on drop (e.g. it is handed over to someone else); the
    /// launcher is still killed and reaped on drop, which orphans a still running workload.
    pub fn disarm(&mut self) {
        self.proc_guard.disarm();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if !self.proc_guard.armed {
            // The launcher guard kills and reaps `unshare` only.
            return;
        }
        if let Err(e) = self.kill() {
            eprintln!("haul-e2e: stopping workload {}: {e}", self.pid());
        }
    }
}

/// A shell and a script that closes every fd above 2 and then execs its arguments: the test
/// process may have inherited fds without close-on-exec (from cargo or the shell that runs it)
/// and CRIU would dump them with the workload. `dash` cannot close fds above 9, so this takes
/// `bash`, else `/bin/busybox sh`.
pub fn fd_closer() -> Result<Vec<OsString>> {
    const SCRIPT: &str = r#"for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done; exec "$@""#;
    let mut v: Vec<OsString> = if let Some(bash) = find_tool("bash") {
        vec![bash.into()]
    } else if is_executable(Path::new("/bin/busybox")) {
        vec!["/bin/busybox".into(), "sh".into()]
    } else {
        return Err(lab_err(
            "need bash or /bin/busybox to close inherited fds before starting the workload",
        ));
    };
    v.extend(["-c".into(), SCRIPT.into(), "haul-e2e-close-fds".into()]);
    Ok(v)
}

/// Finds the child of `launcher` that runs `comm` as pid 1 of a new pid namespace.
fn find_ns_init(launcher: &mut ChildGuard, comm: &str, timeout: Duration) -> Result<PidGuard> {
    let lpid = launcher.pid();
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = launcher.try_wait()? {
            return Err(lab_err(format!(
                "workload launcher exited ({s}) before the workload started"
            )));
        }
        for c in proc_children(lpid) {
            let ok = proc_stat(c).is_some_and(|s| s.comm == comm && s.state != 'Z')
                && proc_nspids(c).is_some_and(|n| n.len() >= 2 && n.last() == Some(&1));
            if ok {
                if let Ok(g) = PidGuard::new_child_of(c, lpid) {
                    return Ok(g);
                }
            }
        }
        if Instant::now() >= end {
            return Err(lab_err(format!(
                "no `{comm}` child of launcher {lpid} after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Heartbeat
// ---------------------------------------------------------------------------------------------

/// Content of a heartbeat file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beat {
    Alive {
        counter: u64,
        ts_us: u64,
    },
    /// The workload found a memory mismatch at this byte offset and exited with status 3.
    Bad {
        offset: u64,
    },
    /// Another fatal report, e.g. `FDS 10->/dev/null` (inherited fds; exit status 4).
    Fatal(String),
}

/// Reading the workload's heartbeat file.
pub struct Heartbeat;

impl Heartbeat {
    /// `(counter, timestamp_us)`, or `None` if missing, partial or `BAD`.
    pub fn read(path: &Path) -> Option<(u64, u64)> {
        match Self::read_beat(path)? {
            Beat::Alive { counter, ts_us } => Some((counter, ts_us)),
            Beat::Bad { .. } | Beat::Fatal(_) => None,
        }
    }

    /// The parsed heartbeat, `None` if missing or not a complete line.
    pub fn read_beat(path: &Path) -> Option<Beat> {
        parse_beat(&std::fs::read_to_string(path).ok()?)
    }

    /// Waits until the counter has increased at least twice; returns the last value. Fails
    /// on timeout or `BAD`.
    pub fn wait_advancing(path: &Path, timeout: Duration) -> Result<(u64, u64)> {
        let end = Instant::now() + timeout;
        let mut last: Option<u64> = None;
        let mut increases = 0;
        loop {
            match Self::read_beat(path) {
                Some(Beat::Bad { offset }) => {
                    return Err(lab_err(format!(
                        "{}: workload reports a memory mismatch at offset {offset}",
                        path.display()
                    )))
                }
                Some(Beat::Fatal(line)) => {
                    return Err(lab_err(format!(
                        "{}: workload failed: {line}",
                        path.display()
                    )))
                }
                Some(Beat::Alive { counter, ts_us }) => {
                    if last.is_some_and(|l| counter > l) {
                        increases += 1;
                        if increases >= 2 {
                            return Ok((counter, ts_us));
                        }
                    }
                    last = Some(counter);
                }
                None => {}
            }
            if Instant::now() >= end {
                return Err(lab_err(format!(
                    "{}: heartbeat not advancing within {timeout:?} (last counter {last:?})",
                    path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Parses `counter ts_us\n` or `BAD offset\n`; the newline must be there.
pub fn parse_beat(s: &str) -> Option<Beat> {
    let line = s.split_once('\n')?.0;
    let mut it = line.split_whitespace();
    let a = it.next()?;
    if a != "BAD" && a.len() >= 3 && a.bytes().all(|c| c.is_ascii_uppercase()) {
        return Some(Beat::Fatal(line.to_string()));
    }
    let b: u64 = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    if a == "BAD" {
        Some(Beat::Bad { offset: b })
    } else {
        Some(Beat::Alive {
            counter: a.parse().ok()?,
            ts_us: b,
        })
    }
}

/// What a [`Poller`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Largest time between consecutive observed changes, measured by the poller's clock from
    /// the first valid heartbeat it saw, including the time from the last change to `stop`.
    pub max_gap: Duration,
    /// Largest difference of the workload's own timestamps between consecutive observed beats.
    pub max_ts_gap_us: u64,
    /// The beat that ended the largest gap (the first one after it), if a change ended it.
    pub max_gap_end: Option<(u64, u64)>,
    /// Number of observed changes.
    pub changes: u64,
    pub first: Option<(u64, u64)>,
    pub last: Option<(u64, u64)>,
    /// Times the counter went down (e.g. two copies writing, or a restore of an older state).
    pub counter_regressions: u64,
    /// A `BAD offset` seen.
    pub bad: Option<u64>,
}

/// A thread that polls a heartbeat file and records the largest gap between changes: the
/// downtime a user sees, including freeze, transfer and restore.
pub struct Poller {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<PollStats>>,
}

impl Poller {
    /// Polls every 500 µs.
    pub fn start(path: &Path) -> Poller {
        Self::start_with_interval(path, Duration::from_micros(500))
    }

    pub fn start_with_interval(path: &Path, every: Duration) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let path = path.to_path_buf();
        let handle = std::thread::spawn(move || poll_loop(&path, every, &flag));
        Poller {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns the largest gap.
    pub fn stop(self) -> Duration {
        self.stop_stats().max_gap
    }

    /// Stops and returns everything seen.
    pub fn stop_stats(mut self) -> PollStats {
        self.finish()
    }

    fn finish(&mut self) -> PollStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.finish();
    }
}

fn poll_loop(path: &Path, every: Duration, stop: &AtomicBool) -> PollStats {
    let mut st = PollStats::default();
    let mut last_change: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let now = Instant::now();
        match Heartbeat::read_beat(path) {
            Some(Beat::Alive { counter, ts_us }) => {
                let cur = (counter, ts_us);
                match st.last {
                    None => {
                        st.first = Some(cur);
                        st.last = Some(cur);
                        last_change = Some(now);
                    }
                    Some(prev) if prev != cur => {
                        if let Some(t) = last_change {
                            let gap = now - t;
                            if gap > st.max_gap {
                                st.max_gap = gap;
                                st.max_gap_end = Some(cur);
                            }
                        }
                        st.max_ts_gap_us = st.max_ts_gap_us.max(ts_us.saturating_sub(prev.1));
                        if counter < prev.0 {
                            st.counter_regressions += 1;
                        }
                        st.changes += 1;
                        st.last = Some(cur);
                        last_change = Some(now);
                    }
                    Some(_) => {}
                }
            }
            Some(Beat::Bad { offset }) => st.bad = Some(offset),
            Some(Beat::Fatal(_)) | None => {}
        }
        if stopping {
            if let Some(t) = last_change {
                let gap = now - t;
                if gap > st.max_gap {
                    st.max_gap = gap;
                    st.max_gap_end = None;
                }
            }
            return st;
        }
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------------
// runc bundles
// ---------------------------------------------------------------------------------------------
//
// A busybox bundle for runc, a guard for a container started with `runc --root R run -d`, its
// stdout/stderr as a pipe drained into a file by a `cat` child, `runc state` parsing, and
// dedicated cgroups for a "host" that shares this machine's cgroup tree with the other one.

/// The static busybox copied into bundles.
pub const BUSYBOX: &str = "/bin/busybox";

/// A runc container id unique within this machine and run: `haul-e2e-<pid>-<n>` (runc ids
/// allow letters, digits, `_ + - .`).
pub fn unique_container_id() -> String {
    format!("haul-e2e-{}-{}", std::process::id(), next_seq())
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text right after `"key":` (whitespace skipped) in flat JSON such as `runc state`.
fn json_value_after<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{}:", json_string(key));
    let start = json.find(&pat)? + pat.len();
    Some(json.get(start..)?.trim_start())
}

/// A string field of flat JSON (no escapes in the value).
pub fn json_str_field(json: &str, key: &str) -> Option<String> {
    let v = json_value_after(json, key)?.strip_prefix('"')?;
    Some(v.get(..v.find('"')?)?.to_string())
}

/// An unsigned number field of flat JSON.
pub fn json_u64_field(json: &str, key: &str) -> Option<u64> {
    let v = json_value_after(json, key)?;
    let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The memory limit of the test bundles (`linux.resources.memory.limit`): above the largest
/// workload the bench migrates (1 GiB) and what CRIU needs beside it while restoring.
pub const BUNDLE_MEMORY_LIMIT: u64 = 4 << 30;
/// The pids limit of the test bundles (`linux.resources.pids.limit`).
pub const BUNDLE_PIDS_LIMIT: u64 = 512;

/// The OCI process of a bundle: `sh -c SCRIPT` as root with runc's default capabilities.
/// `mounts_json` are extra mount objects appended to the default ones of `runc spec` (proc,
/// /dev tmpfs, devpts, shm, mqueue, sysfs, the cgroup mount); masked and read-only paths are
/// runc's defaults; the root is read-only.
fn busybox_config(script: &str, extra_mounts: &[String]) -> String {
    let mut mounts = vec![
        r#"{"destination": "/proc", "type": "proc", "source": "proc"}"#.to_string(),
        r#"{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}"#.to_string(),
        r#"{"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}"#.to_string(),
        r#"{"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}"#.to_string(),
        r#"{"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}"#.to_string(),
        r#"{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}"#.to_string(),
        r#"{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}"#.to_string(),
    ];
    mounts.extend(extra_mounts.iter().cloned());
    let caps = r#"["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]"#;
    format!(
        r#"{{
  "ociVersion": "1.0.2-dev",
  "process": {{
    "terminal": false,
    "user": {{"uid": 0, "gid": 0}},
    "args": ["sh", "-c", {script}],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "cwd": "/",
    "capabilities": {{"bounding": {caps}, "effective": {caps}, "permitted": {caps}, "ambient": {caps}}},
    "rlimits": [{{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}}],
    "noNewPrivileges": true
  }},
  "root": {{"path": "rootfs", "readonly": true}},
  "hostname": "runc",
  "mounts": [
    {mounts}
  ],
  "linux": {{
    "resources": {{"devices": [{{"allow": false, "access": "rwm"}}], "memory": {{"limit": {memory_limit}}}, "pids": {{"limit": {pids_limit}}}}},
    "namespaces": [{{"type": "pid"}}, {{"type": "network"}}, {{"type": "ipc"}}, {{"type": "uts"}}, {{"type": "mount"}}],
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }}
}}
"#,
        script = json_string(script),
        mounts = mounts.join(",\n    "),
        memory_limit = BUNDLE_MEMORY_LIMIT,
        pids_limit = BUNDLE_PIDS_LIMIT,
    )
}

/// A bind mount object for config.json.
fn bind_mount_json(dest: &str, source: &Path, mode: &str) -> String {
    format!(
        r#"{{"destination": {}, "type": "bind", "source": {}, "options": ["rbind", "{mode}"]}}"#,
        json_string(dest),
        json_string(&source.to_string_lossy()),
    )
}

/// A busybox bundle for runc (config.json written from the template `runc spec` 1.1 produces):
/// read-only rootfs with `/bin/busybox` and the applets `sh sleep echo cat`; `data` bind-mounted
/// read-write at `/data`; the single file `app.conf` (content `conf=1`) bind-mounted read-only
/// at `/etc/app.conf`; a tmpfs at `/tmp`; the default /proc, /dev, /sys, cgroup mounts and
/// masked paths; stdio not a terminal. Lives in a directory of a [`TempDir`].
#[derive(Debug, Clone)]
pub struct RuncBundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    /// Host side of `/data`.
    pub data: PathBuf,
    /// Host side of `/etc/app.conf`.
    pub app_conf: PathBuf,
}

impl RuncBundle {
    /// The content of `app.conf`.
    pub const APP_CONF: &'static str = "conf=1\n";

    /// The heartbeat script: writes `counter uptime_us` ([`Heartbeat`] format, timestamps from
    /// /proc/uptime in 10 ms steps, no fork) to `/data/hb` and `tick counter` to stdout every
    /// ~20 ms.
    pub const HEARTBEAT_SCRIPT: &'static str = r#"i=0; while :; do i=$((i+1)); read up rest < /proc/uptime; echo "$i ${up%.*}${up#*.}0000" > /data/hb; echo "tick $i"; sleep 0.02; done"#;

    /// Creates the bundle in `dir` (which must not exist yet) running `sh -c script`.
    pub fn busybox(dir: &Path, script: &str) -> Result<RuncBundle> {
        let rootfs = dir.join("rootfs");
        let data = dir.join("hostdata");
        let app_conf = dir.join("app.conf");
        let mk =
            |p: &Path| std::fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()));
        for sub in ["bin", "proc", "sys", "dev", "data", "etc", "tmp"] {
            mk(&rootfs.join(sub))?;
        }
        mk(&data)?;
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox"))
            .with_context(|| format!("copy {BUSYBOX}"))?;
        for applet in ["sh", "sleep", "echo", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .with_context(|| format!("symlink {applet}"))?;
        }
        std::fs::write(rootfs.join("etc/app.conf"), "").context("create /etc/app.conf")?;
        std::fs::write(&app_conf, Self::APP_CONF).context("write app.conf")?;
        let extra = [
            bind_mount_json("/data", &data, "rw"),
            bind_mount_json("/etc/app.conf", &app_conf, "ro"),
            r#"{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}"#.to_string(),
        ];
        std::fs::write(dir.join("config.json"), busybox_config(script, &extra))
            .context("write config.json")?;
        Ok(RuncBundle {
            dir: dir.to_path_buf(),
            rootfs,
            data,
            app_conf,
        })
    }

    /// Host path of the heartbeat file written by [`RuncBundle::HEARTBEAT_SCRIPT`].
    pub fn heartbeat(&self) -> PathBuf {
        self.data.join("hb")
    }
}

/// `runc [--root ROOT] ARGS...`.
pub fn runc_cmd(root: &Path) -> Command {
    let mut c = Command::new(tool("runc"));
    c.arg("--root").arg(root);
    c
}

/// What `runc state` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuncState {
    pub status: String,
    pub pid: u32,
    pub bundle: String,
}

/// `runc --root ROOT state ID`; an error if runc fails (e.g. no such container).
pub fn runc_state(root: &Path, id: &str) -> Result<RuncState> {
    let out = run(runc_cmd(root).args(["state", id]))?;
    Ok(RuncState {
        status: json_str_field(&out, "status")
            .with_context(|| format!("no status in runc state: {out}"))?,
        pid: json_u64_field(&out, "pid")
            .and_then(|p| u32::try_from(p).ok())
            .with_context(|| format!("no pid in runc state: {out}"))?,
        bundle: json_str_field(&out, "bundle").unwrap_or_default(),
    })
}

/// Ids and statuses in `runc --root ROOT list`.
pub fn runc_list(root: &Path) -> Result<Vec<(String, String)>> {
    let out = run(runc_cmd(root).args(["list"]))?;
    Ok(out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.nth(1)?.to_string()))
        })
        .collect())
}

/// Waits until `runc state` reports `status` (e.g. "stopped").
pub fn runc_wait_status(root: &Path, id: &str, status: &str, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let st = runc_state(root, id);
        if st.as_ref().is_ok_and(|s| s.status == status) {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(lab_err(format!(
                "container {id} in {} not {status} within {timeout:?}: {st:?}",
                root.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file fed by a pipe: a `cat` child reads the pipe into the file; [`PipeLog::writer`]
/// hands out write ends (e.g. a container's stdout and stderr). `cat` ends when every write end
/// is closed; `Drop` kills and reaps it if it still runs.
#[derive(Debug)]
pub struct PipeLog {
    cat: ChildGuard,
    write: Option<OwnedFd>,
    path: PathBuf,
}

impl PipeLog {
    pub fn start(path: &Path) -> Result<PipeLog> {
        let file =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let mut cmd = Command::new(tool("cat"));
        cmd.stdin(Stdio::piped()).stdout(file).stderr(Stdio::null());
        let mut cat = ChildGuard::spawn(&mut cmd)?.named("stdio reader (cat)");
        let stdin = cat
            .child_mut()
            .stdin
            .take()
            .context("cat has no stdin pipe")?;
        Ok(PipeLog {
            cat,
            write: Some(OwnedFd::from(stdin)),
            path: path.to_path_buf(),
        })
    }

    /// A new write end of the pipe (close-on-exec in this process; `Command` dups it).
    pub fn writer(&self) -> Result<Stdio> {
        let w = self
            .write
            .as_ref()
            .context("pipe write end already closed")?;
        Ok(Stdio::from(w.try_clone().context("dup pipe write end")?))
    }

    /// Closes this process's write end: `cat` then ends when the other holders close theirs.
    pub fn close_writer(&mut self) {
        self.write = None;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's text so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Waits for `cat` to see end of file (all write ends closed) and exit.
    pub fn wait_eof(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.close_writer();
        self.cat.wait_timeout(timeout)
    }
}

/// The largest N of the lines `tick N` in `text`.
pub fn max_tick(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse::<u64>().ok())
        .max()
}

/// A container of a runc root. `Drop` runs `runc --root R kill ID KILL` and
/// `runc --root R delete -f ID` unless disarmed (errors such as "does not exist" are ignored).
#[derive(Debug)]
pub struct RuncContainer {
    root: PathBuf,
    id: String,
    armed: bool,
}

impl RuncContainer {
    /// Guards a container that may exist (or appear) in `root` under `id`, e.g. one restored
    /// there by someone else.
    pub fn adopt(root: &Path, id: &str) -> RuncContainer {
        RuncContainer {
            root: root.to_path_buf(),
            id: id.to_string(),
            armed: true,
        }
    }

    /// `runc --root ROOT run -d --bundle BUNDLE ID` with stdin `/dev/null` and stdout and
    /// stderr the pipe of `log` (no terminal). The guard exists before runc runs, so even a
    /// half-created container is deleted.
    pub fn run_detached(root: &Path, bundle: &Path, id: &str, log: &PipeLog) -> Result<Self> {
        let c = RuncContainer::adopt(root, id);
        let mut cmd = runc_cmd(root);
        cmd.args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log.writer()?)
            .stderr(log.writer()?);
        let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
        if !status.success() {
            return Err(lab_err(format!(
                "runc run -d {id} failed ({status}); its output is in {}",
                log.path().display()
            )));
        }
        Ok(c)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state(&self) -> Result<RuncState> {
        runc_state(&self.root, &self.id)
    }

    /// `runc exec ID ARGS...`: its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run(runc_cmd(&self.root).arg("exec").arg(&self.id).args(args))
    }

    /// `runc kill ID SIGNAL`.
    pub fn kill(&self, signal: &str) -> Result<()> {
        run(runc_cmd(&self.root).args(["kill", &self.id, signal])).map(drop)
    }

    /// `runc delete ID` (no --force).
    pub fn delete(&self) -> Result<()> {
        run(runc_cmd(&self.root).args(["delete", &self.id])).map(drop)
    }

    /// Don't kill or delete on drop (it was removed already, or handed over).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = run(runc_cmd(&self.root).args(["kill", &self.id, "KILL"]));
        let _ = run(runc_cmd(&self.root).args(["delete", "-f", &self.id]));
        if self.root.join(&self.id).exists() {
            eprintln!(
                "haul-e2e: container {} still in {} after delete -f",
                self.id,
                self.root.display()
            );
        }
    }
}

/// This process's cgroup in every hierarchy of `/proc/self/cgroup`, mapped to the directories
/// of a hybrid/v1 layout: `/sys/fs/cgroup/<controllers>` (`systemd` for `name=systemd`),
/// `/sys/fs/cgroup/unified` for cgroup2 (or `/sys/fs/cgroup` on a pure v2 host). Symlinked
/// hierarchy directories are resolved through their target's mount, so each is listed once.
pub fn own_cgroup_dirs() -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
    let base = Path::new("/sys/fs/cgroup");
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctrls, path) = match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let mount = if ctrls.is_empty() {
            let unified = base.join("unified");
            if unified.is_dir() {
                unified
            } else {
                base.to_path_buf()
            }
        } else {
            base.join(ctrls.strip_prefix("name=").unwrap_or(ctrls))
        };
        let is_symlink =
            std::fs::symlink_metadata(&mount).is_ok_and(|m| m.file_type().is_symlink());
        if is_symlink || !mount.is_dir() {
            return Err(lab_err(format!(
                "cgroup hierarchy {ctrls:?} is not a directory at {}",
                mount.display()
            )));
        }
        out.push(mount.join(path.trim_start_matches('/')));
    }
    Ok(out)
}

/// A cgroup `NAME` created under this process's cgroup in every hierarchy (so, on this lab, at
/// the root of all hierarchies but memory), for a "host" that must not share cgroup paths with
/// the other one on the same machine: run its agent inside with [`DedicatedCgroup::wrap`].
/// `Drop` removes (rmdir, never recursively) the children left in it, then the cgroups.
#[derive(Debug)]
pub struct DedicatedCgroup {
    dirs: Vec<PathBuf>,
}

impl DedicatedCgroup {
    pub fn create(name: &str) -> Result<Self> {
        let mut cg = DedicatedCgroup { dirs: Vec::new() };
        for parent in own_cgroup_dirs()? {
            let dir = parent.join(name);
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            cg.dirs.push(dir.clone());
            if std::fs::metadata(dir.join("cpuset.cpus")).is_ok() {
                // A v1 cpuset cgroup takes no task before its cpus and mems are set.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(parent.join(f))
                        .with_context(|| format!("read {}", parent.join(f).display()))?;
                    std::fs::write(dir.join(f), v.trim())
                        .with_context(|| format!("write {}", dir.join(f).display()))?;
                }
            }
        }
        Ok(cg)
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// `sh -c 'for d in DIRS; do echo $$ > $d/cgroup.procs; done; exec "$@"' sh PROGRAM ...`:
    /// `program` and its arguments, run inside these cgroups. `base` is the command that runs
    /// the shell, e.g. `NetnsPair::cmd_in(side, "sh")`; the returned command gets
    /// PROGRAM's arguments appended by the caller.
    pub fn wrap(&self, mut base: Command, program: impl AsRef<OsStr>) -> Command {
        let dirs: Vec<String> = self
            .dirs
            .iter()
            .map(|d| format!("'{}'", d.to_string_lossy()))
            .collect();
        let script = format!(
            "for d in {}; do echo $$ > \"$d/cgroup.procs\" || exit 111; done; exec \"$@\"",
            dirs.join(" ")
        );
        base.arg("-c").arg(script).arg("sh").arg(program);
        base
    }

    /// Child cgroups `name` that exist under these cgroups.
    pub fn children_named(&self, name: &str) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(name))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// Removes (rmdir) every child cgroup left; returns the ones it found.
    pub fn remove_children(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for d in &self.dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let p = e.path();
                    if let Err(err) = rmdir_retry(&p, Duration::from_secs(2)) {
                        eprintln!("haul-e2e: rmdir {}: {err}", p.display());
                    }
                    found.push(p);
                }
            }
        }
        found
    }
}

fn rmdir_retry(p: &Path, timeout: Duration) -> std::io::Result<()> {
    let end = Instant::now() + timeout;
    loop {
        match std::fs::remove_dir(p) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for DedicatedCgroup {
    fn drop(&mut self) {
        let left = self.remove_children();
        if !left.is_empty() {
            eprintln!("haul-e2e: removed child cgroups left behind: {left:?}");
        }
        for d in self.dirs.iter().rev() {
            if let Err(e) = rmdir_retry(d, Duration::from_secs(5)) {
                eprintln!("haul-e2e: rmdir {}: {e}", d.display());
            }
        }
    }
}

/// The directory of `pid`'s cgroup in the v1 hierarchy that has `controller` (e.g. `freezer`),
/// from `/proc/PID/cgroup`, under `/sys/fs/cgroup/<controllers>`.
pub fn proc_cgroup_dir(pid: u32, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let _ = it.next()?;
        let ctrls = it.next()?;
        let path = it.next()?;
        ctrls.split(',').any(|c| c == controller).then(|| {
            Path::new("/sys/fs/cgroup")
                .join(ctrls)
                .join(path.trim_start_matches('/'))
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Unit tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod unit {
    #![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn beats() {
        assert_eq!(
            parse_beat("12 1700000000000000\n"),
            Some(Beat::Alive {
                counter: 12,
                ts_us: 1_700_000_000_000_000
            })
        );
        assert_eq!(parse_beat("BAD 4096\n"), Some(Beat::Bad { offset: 4096 }));
        assert_eq!(parse_beat("12 17000"), None);
        assert_eq!(parse_beat(""), None);
        assert_eq!(parse_beat("x 1\n"), None);
        assert_eq!(
            parse_beat("FDS 10->/dev/null\n"),
            Some(Beat::Fatal("FDS 10->/dev/null".into()))
        );
    }

    #[test]
    fn mountinfo() {
        let info = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /tmp/x rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mountinfo_points(info),
            vec![PathBuf::from("/mnt/a b"), PathBuf::from("/tmp/x")]
        );
    }

    #[test]
    fn runc_json_and_ticks() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\n""#);
        let st = "{\n  \"ociVersion\": \"1.0.2-dev\",\n  \"id\": \"x\",\n  \"pid\": 4242,\n  \"status\": \"running\",\n  \"bundle\": \"/b\"\n}";
        assert_eq!(json_str_field(st, "status").as_deref(), Some("running"));
        assert_eq!(json_str_field(st, "bundle").as_deref(), Some("/b"));
        assert_eq!(json_u64_field(st, "pid"), Some(4242));
        assert_eq!(json_u64_field(st, "missing"), None);
        assert_eq!(max_tick("tick 3\ntick 12\ngarbage\ntick 7\n"), Some(12));
        assert_eq!(max_tick("nothing"), None);
    }

    #[test]
    fn proc_self() {
        let s = proc_stat(std::process::id()).expect("own stat");
        assert_eq!(s.pid, std::process::id());
        assert!(s.starttime > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Bench helpers (`cargo xtask bench`)
// ---------------------------------------------------------------------------------------------
//
// What the benchmark needs besides the lab above: scratch directories on tmpfs, peak RSS of a
// process, the byte counters of a namespace's veth, waiting for a listening socket of a process
// that is not ours to ask, unmounting what runc's restore can leave behind, and CRIU's
// `stats-dump` / `stats-restore` files.

impl TempDir {
    /// Like [`TempDir::new`], but `<base>/haul-e2e-<tag>-<pid>-<n>`, e.g. under `/dev/shm` so
    /// that CRIU images live on tmpfs like the benchmark's other image directories.
    pub fn new_in(base: &Path, tag: &str) -> Result<Self> {
        let tag = sanitize_tag(tag, 32);
        loop {
            let path = base.join(format!(
                "haul-e2e-{tag}-{}-{}",
                std::process::id(),
                next_seq()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let path = path.canonicalize().context("canonicalize temp dir")?;
                    return Ok(TempDir { path, keep: false });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(lab_err(format!("create {}: {e}", path.display()))),
            }
        }
    }
}

/// The value in KiB of a `Name:   1234 kB` line of `/proc/PID/status` text.
pub fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        let mut it = rest.split_whitespace();
        let v = it.next()?.parse().ok()?;
        (it.next() == Some("kB")).then_some(v)
    })
}

/// Peak resident set size of a live process (`VmHWM` of `/proc/PID/status`), in KiB.
pub fn proc_vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&s, "VmHWM")
}

/// Received and sent bytes of `iface` in `/proc/net/dev` text:
/// `  hv1234s: 1500 20 0 0 0 0 0 0 3000 25 0 0 0 0 0 0` (8 receive fields, then transmit).
pub fn parse_net_dev(text: &str, iface: &str) -> Option<(u64, u64)> {
    text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != iface {
            return None;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        Some((*f.first()?, *f.get(8)?))
    })
}

impl NetnsPair {
    /// Bytes received and sent so far by `side`'s end of the veth (IP packets with their
    /// headers, both directions), read from `/proc/net/dev` inside that namespace.
    pub fn veth_bytes(&self, side: Side) -> Result<(u64, u64)> {
        let text = run(self.cmd_in(side, tool("cat")).arg("/proc/net/dev"))?;
        parse_net_dev(&text, self.veth(side)).with_context(|| {
            format!(
                "no {} in /proc/net/dev of {}: {text}",
                self.veth(side),
                self.name(side)
            )
        })
    }
}

/// Whether `/proc/net/tcp` or `tcp6` text lists a socket listening (state `0A`) on `port`:
/// `   0: 00000000:1B9E 00000000:0000 0A 00000000:00000000 ...`.
pub fn parse_tcp_listening(text: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    text.lines().skip(1).any(|l| {
        let mut it = l.split_whitespace();
        let local = it.nth(1);
        let state = it.nth(1);
        state == Some("0A")
            && local.and_then(|a| a.rsplit_once(':')).map(|(_, p)| p) == Some(&*want)
    })
}

/// Waits until the network namespace of process `pid` has a TCP socket listening on `port`
/// (e.g. a `criu page-server` that prints nothing when ready; a probe connection would use up
/// its single accept). Fails if the process exits first or on timeout.
pub fn wait_tcp_listening(pid: u32, port: u16, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let listening = ["tcp", "tcp6"].iter().any(|f| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
                .is_ok_and(|t| parse_tcp_listening(&t, port))
        });
        if listening {
            return Ok(());
        }
        if !proc_stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X')) {
            return Err(lab_err(format!(
                "process {pid} exited before listening on port {port}"
            )));
        }
        if Instant::now() >= end {
            return Err(lab_err(format!(
                "process {pid} not listening on port {port} after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Unmounts every mount point at or under `path` (canonical), deepest first, with `umount`
/// (e.g. `<runc root>/<id>/criu-root`, which a restore can leave). Returns what it unmounted;
/// stops at the first failure so nothing under a mount is ever removed by the caller.
pub fn unmount_under(path: &Path) -> Result<Vec<PathBuf>> {
    let mut points = mounts_under(path)?;
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in &points {
        run(Command::new(tool("umount")).arg(p))?;
    }
    Ok(points)
}

/// What CRIU's `stats-dump` or `stats-restore` file says (times in microseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriuStats {
    /// `dump_stats_entry`: freezing_time 1, frozen_time 2, memdump_time 3, memwrite_time 4,
    /// pages_written 7.
    pub dump: Option<CriuDumpStats>,
    /// `restore_stats_entry`: forking_time 3, restore_time 4, pages_restored 5.
    pub restore: Option<CriuRestoreStats>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CriuDumpStats {
    pub freezing_us: u64,
    pub frozen_us: u64,
    pub memdump_us: u64,
    pub memwrite_us: u64,
    pub pages_written: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CriuRestoreStats {
    pub forking_us: u64,
    pub restore_us: u64,
    pub pages_restored: u64,
}

/// The two magics that open a CRIU stats image (`STATS_MAGIC`, then the common image magic).
const CRIU_STATS_MAGICS: [u32; 2] = [0x5510_5940, 0x5709_3306];

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The varint fields of one protobuf message (other wire types are skipped); `None` if it is
/// truncated or malformed.
fn varint_fields(b: &[u8]) -> Option<Vec<(u64, FieldValue<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        let key = read_varint(b, &mut pos)?;
        let value = match key & 7 {
            0 => FieldValue::Varint(read_varint(b, &mut pos)?),
            1 => {
                pos = pos.checked_add(8).filter(|&p| p <= b.len())?;
                continue;
            }
            2 => {
                let len = usize::try_from(read_varint(b, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|&e| e <= b.len())?;
                let v = b.get(pos..end)?;
                pos = end;
                FieldValue::Bytes(v)
            }
            5 => {
                pos = pos.checked_add(4).filter(|&p| p <= b.len())?;
                continue;
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}

#[derive(Debug, Clone, Copy)]
enum FieldValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Parses a `stats-dump` / `stats-restore` image: magic `0x55105940`, magic `0x57093306`,
/// a little-endian u32 length, then a `stats_entry` message (dump = 1, restore = 2).
pub fn parse_criu_stats(b: &[u8]) -> Option<CriuStats> {
    let word = |i: usize| -> Option<u32> {
        let s = b.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes(s.try_into().ok()?))
    };
    if [word(0)?, word(1)?] != CRIU_STATS_MAGICS {
        return None;
    }
    let len = usize::try_from(word(2)?).ok()?;
    let msg = b.get(12..12usize.checked_add(len)?)?;
    let mut st = CriuStats::default();
    for (field, value) in varint_fields(msg)? {
        let FieldValue::Bytes(inner) = value else {
            continue;
        };
        let nums: Vec<(u64, u64)> = varint_fields(inner)?
            .into_iter()
            .filter_map(|(f, v)| match v {
                FieldValue::Varint(n) => Some((f, n)),
                FieldValue::Bytes(_) => None,
            })
            .collect();
        let get = |f: u64| nums.iter().find(|(k, _)| *k == f).map_or(0, |(_, v)| *v);
        match field {
            1 => {
                st.dump = Some(CriuDumpStats {
                    freezing_us: get(1),
                    frozen_us: get(2),
                    memdump_us: get(3),
                    memwrite_us: get(4),
                    pages_written: get(7),
                })
            }
            2 => {
                st.restore = Some(CriuRestoreStats {
                    forking_us: get(3),
                    restore_us: get(4),
                    pages_restored: get(5),
                })
            }
            _ => {}
        }
    }
    Some(st)
}

/// Reads and parses a CRIU stats file (at most 64 KiB; they are about 50 bytes).
pub fn read_criu_stats(path: &Path) -> Result<CriuStats> {
    let b = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if b.len() > 64 * 1024 {
        return Err(lab_err(format!(
            "{}: {} bytes, more than the 64 KiB a stats file can be",
            path.display(),
            b.len()
        )));
    }
    parse_criu_stats(&b).with_context(|| format!("{}: not a CRIU stats image", path.display()))
}

#[cfg(test)]
mod bench_unit {
    #![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn status_and_net_dev() {
        let st = "Name:\thaul\nVmPeak:\t  12000 kB\nVmHWM:\t    4321 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(parse_status_kib(st, "VmHWM"), Some(4321));
        assert_eq!(parse_status_kib(st, "VmSwap"), None);
        let dev = "Inter-|   Receive                                                |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                   lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n\
                   hv12abs: 1500 20 0 0 0 0 0 0 3000 25 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev, "hv12abs"), Some((1500, 3000)));
        assert_eq!(parse_net_dev(dev, "lo"), Some((0, 0)));
        assert_eq!(parse_net_dev(dev, "eth0"), None);
    }

    #[test]
    fn tcp_listening() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                 0: 00000000:6979 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 322837 1\n   \
                 1: 0100007F:1B9E 0100007F:8000 01 00000000:00000000 00:00000000 00000000     0        0 1 1\n";
        assert!(parse_tcp_listening(t, 27001));
        // Port 7070 (0x1B9E) is only an established connection here.
        assert!(!parse_tcp_listening(t, 7070));
    }

    #[test]
    fn criu_stats_files() {
        // Captured from CRIU 4.1.1 (`runc checkpoint` of a 64 MiB workload, then `runc restore`).
        let dump = [
            0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x29, 0x00, 0x00, 0x00, 0x0a, 0x27,
            0x08, 0xb5, 0x05, 0x10, 0xae, 0xc3, 0x28, 0x18, 0xcb, 0xf9, 0x08, 0x20, 0x88, 0xe9,
            0x04, 0x28, 0x93, 0x80, 0x01, 0x30, 0x00, 0x38, 0x8d, 0x80, 0x01, 0x40, 0x00, 0x48,
            0x00, 0x50, 0x08, 0x58, 0x08, 0x60, 0x00, 0x68, 0x00, 0x70, 0x00,
        ];
        let st = parse_criu_stats(&dump).expect("dump stats");
        let d = st.dump.expect("dump entry");
        assert_eq!(d.freezing_us, 693);
        assert_eq!(d.frozen_us, 663_982);
        assert_eq!(d.pages_written, 16_397);
        assert_eq!(st.restore, None);
        let restore = [
            0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x10, 0x00, 0x00, 0x00, 0x12, 0x0e,
            0x08, 0x00, 0x10, 0x00, 0x18, 0x03, 0x20, 0xfc, 0xaf, 0x10, 0x28, 0x8d, 0x80, 0x01,
        ];
        let r = parse_criu_stats(&restore)
            .and_then(|s| s.restore)
            .expect("restore entry");
        assert_eq!(r.forking_us, 3);
        assert_eq!(r.restore_us, 268_284);
        assert_eq!(r.pages_restored, 16_397);
        // Truncated, wrong magic.
        assert_eq!(parse_criu_stats(&restore[..20]), None);
        assert_eq!(parse_criu_stats(&dump[4..]), None);
    }
}

// ---------------------------------------------------------------------------------------------
// Fault injection helpers
// ---------------------------------------------------------------------------------------------
//
// What `tests/fault_injection.rs` needs besides the lab above: the workload inside a runc
// bundle (so a container has the memory check), the CRIU network-lock rules and frozen cgroups
// a failure may leave anywhere, processes left in a cgroup tree, and a link slowed down or cut
// at a chosen moment.

/// A static build of the workload for a container's rootfs: `$HAUL_WORKLOAD_STATIC`, else the
/// newer of `target/x86_64-unknown-linux-musl/{release,debug}/haul-workload`.
pub fn static_workload_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HAUL_WORKLOAD_STATIC") {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let mut c: Vec<PathBuf> = workspace_target_dirs()
        .into_iter()
        .flat_map(|t| {
            let m = t.join("x86_64-unknown-linux-musl");
            [
                m.join("release").join("haul-workload"),
                m.join("debug").join("haul-workload"),
            ]
        })
        .filter(|p| is_executable(p))
        .collect();
    c.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    c.pop()
}

/// The absolute paths of the shared objects `ldd` lists for `bin` (none for a static binary).
pub fn ldd_paths(bin: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new(tool("ldd")).arg(bin).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let p = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect()
}

/// Copies `bin` to `rootfs/dest` (mode 0755) and, if it is dynamic, the shared objects `ldd`
/// names to the same paths inside `rootfs`.
pub fn install_in_rootfs(bin: &Path, rootfs: &Path, dest: &str) -> Result<()> {
    let mut files = vec![(bin.to_path_buf(), rootfs.join(dest.trim_start_matches('/')))];
    for lib in ldd_paths(bin) {
        let inside = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        files.push((lib.canonicalize().unwrap_or(lib), inside));
    }
    for (from, to) in files {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("mkdir {}", parent.display()))?;
        }
        std::fs::copy(&from, &to)
            .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", to.display()))?;
    }
    Ok(())
}

/// A busybox bundle ([`RuncBundle::busybox`]) whose process is the workload
/// (`exec /bin/haul-workload ... --heartbeat /data/<name>`), so that the container checks its
/// own memory: a restore that lost or corrupted a page makes it write `BAD offset`.
#[derive(Debug, Clone)]
pub struct WorkloadBundle {
    pub bundle: RuncBundle,
    /// The heartbeat inside the container (`/data/hb-...`), one whole argument of the
    /// workload's command line that no other process of this machine has.
    pub hb_arg: String,
    /// The same file on the host.
    pub heartbeat: PathBuf,
}

impl WorkloadBundle {
    /// Creates the bundle in `dir` (must not exist). The workload binary is
    /// [`static_workload_bin`], else [`workload_bin`] with its shared libraries copied in.
    pub fn create(dir: &Path, opts: &WorkloadOpts) -> Result<WorkloadBundle> {
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => match static_workload_bin() {
                Some(b) => b,
                None => workload_bin()?,
            },
        };
        let name = format!("hb-{}-{}", std::process::id(), next_seq());
        let hb_arg = format!("/data/{name}");
        let script = format!(
            "exec /bin/haul-workload --mib {} --interval-ms {} --dirty-pages {} --sweep-ms {} \
             --heartbeat {hb_arg}",
            opts.mib, opts.interval_ms, opts.dirty_pages, opts.sweep_ms
        );
        let bundle = RuncBundle::busybox(dir, &script)?;
        install_in_rootfs(&bin, &bundle.rootfs, "bin/haul-workload")?;
        let heartbeat = bundle.data.join(&name);
        Ok(WorkloadBundle {
            bundle,
            hb_arg,
            heartbeat,
        })
    }

    /// Live workload processes of this bundle (any host, any runc root).
    pub fn pids(&self) -> Vec<u32> {
        find_workload_pids(Path::new(&self.hb_arg))
    }

    /// Sets `linux.cgroupsPath` in config.json (runc's default is `/<id>`, which two containers
    /// with one id in two runc roots of one machine would share).
    pub fn set_cgroups_path(&self, path: &str) -> Result<()> {
        let cfg = self.bundle.dir.join("config.json");
        let text =
            std::fs::read_to_string(&cfg).with_context(|| format!("read {}", cfg.display()))?;
        let with = text.replacen(
            "\"linux\": {",
            &format!("\"linux\": {{\n    \"cgroupsPath\": {},", json_string(path)),
            1,
        );
        if with == text {
            return Err(lab_err(format!("no \"linux\" object in {}", cfg.display())));
        }
        std::fs::write(&cfg, with).with_context(|| format!("write {}", cfg.display()))
    }
}

/// `iptables-save`, `ip6tables-save` and (if installed) `nft list ruleset`, run in the network
/// namespace `netns` (a `/run/netns/NAME` or `/proc/PID/ns/net` path; `None`: ours): the lines
/// that mention CRIU (its network-lock chain and comments are named `CRIU`).
pub fn criu_netlock_rules(netns: Option<&Path>) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for (prog, args) in [
        ("iptables-save", &[][..]),
        ("ip6tables-save", &[][..]),
        ("nft", &["list", "ruleset"][..]),
    ] {
        let Some(bin) = find_tool(prog) else { continue };
        let mut cmd = match netns {
            Some(ns) => {
                let mut net = OsString::from("--net=");
                net.push(ns);
                let mut c = Command::new(tool("nsenter"));
                c.arg(net).arg("--").arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args);
        let out = run(&mut cmd)?;
        found.extend(
            out.lines()
                .filter(|l| l.to_ascii_uppercase().contains("CRIU"))
                .map(|l| format!("{prog}: {l}")),
        );
    }
    Ok(found)
}

/// v1 freezer cgroups under `/sys/fs/cgroup/freezer` whose path contains `needle` and whose
/// `freezer.state` is not `THAWED`, with that state.
pub fn frozen_cgroups(needle: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, needle: &str, depth: usize, out: &mut Vec<(PathBuf, String)>) {
        if dir.to_string_lossy().contains(needle) {
            if let Ok(s) = std::fs::read_to_string(dir.join("freezer.state")) {
                if s.trim() != "THAWED" {
                    out.push((dir.to_path_buf(), s.trim().to_string()));
                }
            }
        }
        if depth == 0 {
            return;
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), needle, depth - 1, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup/freezer"), needle, 8, &mut out);
    out
}

/// The pids in `cgroup.procs` of `dir` and of every cgroup below it.
pub fn cgroup_tree_pids(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_tree_pids(&e.path()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The command line of a process, arguments joined with spaces (empty if it is gone).
pub fn proc_cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// A shell command prepared in a network namespace that runs when [`Trigger::fire`] is
/// called: `sh -c 'read _; SCRIPT'` already started, so firing costs a pipe write, not a spawn
/// (e.g. cutting a link within a millisecond of an event).
pub struct Trigger {
    child: ChildGuard,
    stdin: Option<std::process::ChildStdin>,
    script: String,
}

impl Trigger {
    /// Fires and waits for the script to finish; an error if it fails.
    pub fn fire(&mut self) -> Result<()> {
        use std::io::Write;
        let mut stdin = self.stdin.take().context("trigger already fired")?;
        stdin
            .write_all(b"go\n")
            .with_context(|| format!("fire {:?}", self.script))?;
        drop(stdin);
        let st = self
            .child
            .wait_timeout(Duration::from_secs(10))?
            .with_context(|| format!("{:?} still runs after 10 s", self.script))?;
        if st.success() {
            Ok(())
        } else {
            Err(lab_err(format!("{:?} failed: {st}", self.script)))
        }
    }
}

impl NetnsPair {
    /// Prepares `script` (sh) to run in `side`'s namespace when fired.
    pub fn trigger(&self, side: Side, script: &str) -> Result<Trigger> {
        let mut cmd = self.cmd_in(side, tool("sh"));
        cmd.arg("-c")
            .arg(format!("read _ || exit 99; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = ChildGuard::spawn(&mut cmd)?.named("trigger");
        let stdin = child.child_mut().stdin.take().context("trigger stdin")?;
        Ok(Trigger {
            child,
            stdin: Some(stdin),
            script: script.to_string(),
        })
    }

    /// Script that takes `side`'s veth down: both ends lose carrier; no FIN, no RST.
    pub fn link_down_script(&self, side: Side) -> String {
        format!("ip link set dev {} down", self.veth(side))
    }

    /// Script that drops every TCP packet to and from `port` in `side`'s namespace (iptables
    /// rules with the comment `haul-e2e-cut`; the namespace goes with the pair).
    pub fn drop_port_script(port: u16) -> String {
        format!(
            "iptables -w -I INPUT -p tcp --dport {port} -m comment --comment haul-e2e-cut -j DROP && \
             iptables -w -I INPUT -p tcp --sport {port} -m comment --comment haul-e2e-cut -j DROP && \
             iptables -w -I OUTPUT -p tcp --sport {port} -m comment --comment haul-e2e-cut -j DROP && \
             iptables -w -I OUTPUT -p tcp --dport {port} -m comment --comment haul-e2e-cut -j DROP"
        )
    }

    /// Limits what `side` sends on its veth to `rate` (tc tbf, e.g. `40mbit`), so that a
    /// transfer lasts long enough to be interrupted in the middle.
    pub fn limit_rate(&self, side: Side, rate: &str) -> Result<()> {
        run(Command::new(tool("tc")).args([
            "-n",
            self.name(side),
            "qdisc",
            "add",
            "dev",
            self.veth(side),
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "64kb",
            "latency",
            "1s",
        ]))
        .map(drop)
    }
}

/// MiB filled by `haul serve`'s userfaultfd handler, from its summary line in serve's log
/// ("userfaultfd handler: ... 256.1 MiB filled ...").
pub fn mib_filled_by_handler(log: &str) -> Option<f64> {
    let line = log
        .lines()
        .find(|l| l.contains("userfaultfd handler:") && l.contains(" MiB filled"))?;
    line.split(" MiB filled")
        .next()?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}
