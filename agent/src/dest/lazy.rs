//! `--lazy` (post-copy) on the destination: CRIU's lazy-pages daemon.
//!
//! After the images arrive, haul starts `criu lazy-pages` on the migration directory with one
//! end of a socketpair as its page-server connection (`--ps-socket`); haul relays that socket
//! to the source's CRIU through the connection (PAGE_DATA frames both ways). RESTORE then runs
//! with `lazy_pages`: the restored tasks hand their userfaultfds to the daemon, which fills
//! each fault from the source and, once the restore finished, fetches the remaining pages.
//! The daemon exits 0 when every page is in place: that ends the post-copy.
//!
//! If the daemon fails or the connection is lost before that, the restored tasks would run on
//! with missing memory: haul kills them (see `source::postcopy` for the whole failure story).
//!
//! Without `--lazy` the same daemon fills memory locally (`start_local`): every page is already
//! in the migration directory, but CRIU's restore skips the pages it marks lazy (private
//! anonymous memory, which a plain dump marks lazy *and* present), the tasks resume, and the
//! daemon copies those pages from the images into place (userfaultfd), faults first. The
//! restore itself then costs about what an empty container's does.

use crate::error::{Error, Kind, Result};
use crate::limits::LAZY_DAEMON_START;
use crate::transfer::{mux, pages, Conn, Incoming, WireError};
use crate::workdir::WorkDir;
use haul_proto::haul::control::Msg;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Niceness of CRIU's lazy-pages daemon (see `start`).
const LAZY_DAEMON_NICE: i32 = 10;

/// The daemon's log, in the migration directory.
pub const LOG_NAME: &str = "lazy-pages.log";

/// A running `criu lazy-pages`.
pub struct LazyDaemon {
    child: Child,
    /// haul's end of the daemon's page-server socket (none when it fills from local images).
    pub ps: Option<Arc<OwnedFd>>,
    log: std::path::PathBuf,
}

/// Starts the daemon on `work` (the images must all be there), fetching pages from the source
/// through `ps` (haul's end of its page-server socket), and waits until it listens for the
/// restore.
pub fn start(criu: &Path, work: &WorkDir) -> Result<LazyDaemon> {
    start_with(criu, work, true)
}

/// Starts the daemon on `work` to fill the lazy pages from the images there (no `--lazy`: the
/// source sent every page), and waits until it listens for the restore.
pub fn start_local(criu: &Path, work: &WorkDir) -> Result<LazyDaemon> {
    start_with(criu, work, false)
}

fn start_with(criu: &Path, work: &WorkDir, remote: bool) -> Result<LazyDaemon> {
    let (ours, theirs) =
        pages::socket_pair().map_err(|e| Error::other(format!("socketpair: {e}")))?;
    let (status_r, status_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::other(format!("pipe: {e}")))?;
    let mut cmd = Command::new(criu);
    cmd.arg("lazy-pages");
    if remote {
        cmd.arg("--page-server")
            .arg("--ps-socket")
            .arg(theirs.as_raw_fd().to_string());
    }
    cmd.arg("--status-fd")
        .arg(status_w.as_raw_fd().to_string())
        .arg("--images-dir")
        .arg(&work.path)
        .arg("--work-dir")
        .arg(&work.path)
        .arg("--log-file")
        .arg(LOG_NAME)
        .arg("-v4")
        // As every CRIU haul starts (criu/swrk.rs): nothing of haul's environment, haul's tar
        // first in its PATH.
        .env_clear()
        .env("PATH", crate::criu::tar::criu_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Tied to this session's thread: if `haul serve` dies while the daemon still waits for the
    // restore, it must not linger (the guard handles the tasks once they run).
    let child = crate::sys::spawn_inheriting_tied(&mut cmd, &[theirs.as_fd(), status_w.as_fd()])
        .map_err(|e| Error::setup(format!("starting {} lazy-pages: {e}", criu.display())))?;
    // The daemon has its copies; ours would keep its socket and status pipe open forever.
    drop(theirs);
    drop(status_w);
    // CRIU's daemon polls without sleeping while it waits for an answer from the source
    // (criu/uffd.c, handle_requests with a zero timeout once the restore finished): at normal
    // priority it takes a core from the restored workload and from haul's relay. Filling from
    // local images it never waits; it keeps its priority and finishes sooner.
    if remote {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            if let Err(e) = rustix::process::setpriority_process(Some(pid), LAZY_DAEMON_NICE) {
                log::debug!("lowering the priority of criu lazy-pages: {e}");
            }
        }
    }
    let mut d = LazyDaemon {
        child,
        ps: remote.then(|| Arc::new(ours)),
        log: work.path.join(LOG_NAME),
    };
    match wait_ready(&status_r, LAZY_DAEMON_START) {
        Ok(()) => Ok(d),
        Err(why) => {
            let _ = d.child.kill();
            let status = d.child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(d.failed(&format!("{why} ({status})")))
        }
    }
}

/// Waits for the byte CRIU writes to its status descriptor once it listens.
fn wait_ready(status: &OwnedFd, limit: Duration) -> Result<(), String> {
    let ts = rustix::event::Timespec::try_from(limit).map_err(|e| e.to_string())?;
    let mut fds = [rustix::event::PollFd::new(
        status,
        rustix::event::PollFlags::IN,
    )];
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(0) => return Err(format!("not ready after {} s", limit.as_secs())),
        Ok(_) => {}
        Err(e) => return Err(format!("poll: {e}")),
    }
    let mut byte = [1u8; 1];
    match rustix::io::read(status, &mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => Err("exited before it was ready".into()),
        Err(e) => Err(format!("reading its status: {e}")),
    }
}

impl LazyDaemon {
    fn failed(&self, what: &str) -> Error {
        let lines = crate::criu::log_excerpt::error_lines(&self.log);
        let mut msg = format!("criu lazy-pages {what}");
        for l in lines {
            msg.push_str("\n    ");
            msg.push_str(&crate::util::printable(&l));
        }
        Error::other(msg)
    }
}

impl LazyDaemon {
    /// Whether the daemon has exited successfully (every page in place); Err if it failed.
    fn exited(&mut self) -> Result<bool> {
        match self.child.try_wait() {
            Ok(Some(st)) if st.success() => Ok(true),
            Ok(Some(st)) => Err(self.failed(&format!("failed ({st})"))),
            Ok(None) => Ok(false),
            Err(e) => Err(Error::other(format!("waiting for criu lazy-pages: {e}"))),
        }
    }

    /// Ends the daemon now (SIGKILL); `wait_local` then reports how it ended.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }
}

/// Who fills the restored memory after the resume: haul's userfaultfd handler or CRIU's
/// lazy-pages daemon (`dest::fill::FILLER_ENV`).
pub enum Fill {
    Haul(super::fill::Filler),
    Criu(LazyDaemon),
}

impl Fill {
    /// Whether the filler has ended: Ok(true) with every page in place, Err if it failed.
    fn exited(&mut self) -> Result<bool> {
        match self {
            Fill::Haul(f) => f.exited(),
            Fill::Criu(d) => d.exited(),
        }
    }

    /// Ends the filler now; `wait_local` then reports how it ended.
    pub fn kill(&mut self) {
        match self {
            Fill::Haul(f) => f.kill(),
            Fill::Criu(d) => d.kill(),
        }
    }

    /// From the resume on, a failed fill stops the tree rooted at `root` before it lets go
    /// of the tasks' memory (haul's handler; CRIU's daemon is a process of its own).
    pub fn stop_tasks_on_failure(&self, root: i32) -> Result<()> {
        match self {
            Fill::Haul(f) => f.stop_tasks_on_failure(root),
            Fill::Criu(_) => Ok(()),
        }
    }

    /// Holds the background fill until `kill` (fault injection). CRIU's daemon cannot be held
    /// safely (stopped, it would also leave the restore's own faults unanswered): it runs on.
    pub fn pause(&self) {
        match self {
            Fill::Haul(f) => f.pause(),
            Fill::Criu(_) => {}
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Fill::Haul(_) => "haul's userfaultfd handler",
            Fill::Criu(_) => "criu lazy-pages",
        }
    }

    /// Filling from local images: waits until every page is in place (Ok: how long it took),
    /// the filler fails, or `limit` passes (Err). `alive` runs every `KEEPALIVE_FRAME_EVERY`
    /// meanwhile (the source waits on this fill: it must hear from us).
    pub fn wait_local(&mut self, limit: Duration, alive: impl FnMut()) -> Result<Duration> {
        let name = self.name();
        super::fill::wait_local(|| self.exited(), limit, name, alive)
    }

    /// Follows the post-copy until the filler has every page (Ok: how long it took), the
    /// filler fails, the source aborts or the connection goes quiet or breaks (Err). On Err
    /// the caller kills the restored tasks.
    /// `idle`: `haul serve --idle-timeout`, the longest time without a page.
    pub fn wait(&mut self, conn: &Conn, idle: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut last = (Instant::now(), mux::load(&conn.counters.pages_in));
        loop {
            if self.exited()? {
                return Ok(start.elapsed());
            }
            match conn.recv(Duration::from_millis(5), "post-copy") {
                Ok(Incoming::Control(Msg::Abort(a))) => {
                    return Err(Error::other(format!(
                        "source aborted the post-copy: {}",
                        crate::util::printable(&a.reason)
                    )))
                }
                Ok(Incoming::Control(m)) => {
                    return Err(Error::other(format!(
                        "unexpected {} during the post-copy",
                        super::session::msg_name(&m)
                    )))
                }
                Ok(Incoming::FileData(_)) => {
                    return Err(Error::other("file data during the post-copy"))
                }
                Err(WireError::Timeout { .. }) => {}
                Err(e) => return Err(Error::other(format!("post-copy: {e}"))),
            }
            let got = mux::load(&conn.counters.pages_in);
            if got != last.1 {
                last = (Instant::now(), got);
            } else if last.0.elapsed() > idle {
                return Err(Error::other(format!(
                    "post-copy: no page arrived for {} s",
                    idle.as_secs()
                )));
            }
        }
    }
}

impl Drop for LazyDaemon {
    /// A daemon still running is killed: its tasks are being killed too, or never ran.
    fn drop(&mut self) {
        if let Some(ps) = &self.ps {
            let _ = rustix::net::shutdown(&**ps, rustix::net::Shutdown::Both);
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// SIGKILL to a restored root task (the init of its pid namespace, so the whole tree goes).
pub fn kill_restored(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        if let Err(e) = rustix::process::kill_process(p, rustix::process::Signal::KILL) {
            log::warn!("killing restored task {pid}: {e}");
        }
    }
}

/// SIGKILL to the restored root `pid` (started at `start`, its start time), then waits up to
/// `limit` until no task of its tree runs. The root is the init of its pid namespace: the
/// kernel kills every other task of the namespace when it exits and makes it a zombie only
/// once they and its own threads are all gone, so a zombie root (or a reaped one) means the
/// whole tree is dead. Err: it may still run.
pub fn stop_restored(pid: i32, start: u64, limit: Duration) -> std::result::Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut killed = false;
    loop {
        if tree_dead(pid, start)? {
            return Ok(());
        }
        if !killed {
            kill_restored(pid);
            killed = true;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "restored task {pid} still runs {} s after SIGKILL",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether the tree rooted at `pid` (started at `start`) is dead: the root gone, replaced by
/// another process, or a zombie with no thread left but its leader.
fn tree_dead(pid: i32, start: u64) -> std::result::Result<bool, String> {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return Ok(true);
    };
    let mut buf = crate::inspect::ProcStatBuf::new();
    let stat = match crate::inspect::read_proc_stat(
        Path::new("/proc"),
        crate::inspect::ProcPid::Pid(p),
        &mut buf,
    ) {
        Ok(s) => s,
        Err(e) if proc_gone(&e) => return Ok(true),
        Err(e) => return Err(format!("reading the state of restored task {pid}: {e}")),
    };
    if stat.start_time != start {
        return Ok(true);
    }
    if !matches!(stat.state, b'Z' | b'X') {
        return Ok(false);
    }
    // A zombie leader's other threads may still run: each is listed under task/.
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(d) => Ok(d.count() <= 1),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("listing the threads of restored task {pid}: {e}")),
    }
}

/// Whether reading a /proc file failed because the process is gone (ENOENT when it was
/// reaped before the open, ESRCH when it was between the open and the read).
fn proc_gone<E>(e: &crate::inspect::FileError<E>) -> bool {
    match e {
        crate::inspect::FileError::Read(r) => match &r.kind {
            crate::inspect::ReadErrorKind::Io(io) => {
                io.kind() == std::io::ErrorKind::NotFound
                    || io.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
            }
            _ => false,
        },
        _ => false,
    }
}

/// Watches a restored tree during the post-copy from a separate process (`haul postcopy-guard`,
/// its own process group, so it outlives `haul serve`). If serve dies before every page
/// arrived, the filler dies with it (haul's handler is a thread of serve; CRIU's daemon is tied
/// to it) and the tasks would run on with zero-filled memory where pages were missing: the
/// guard, seeing its pipe close without "done", kills them.
pub struct Guard {
    /// Write end of the guard's stdin; "done" then close means: the post-copy completed.
    pipe: Option<OwnedFd>,
}

/// What serve writes to the guard when every page arrived.
const GUARD_DONE: &[u8] = b"done\n";

impl Guard {
    /// Starts the guard for the restored root task `pid` (its start time, from /proc, guards
    /// against a reused pid).
    pub fn start(pid: i32) -> Result<Guard> {
        let start =
            start_time(pid).ok_or_else(|| Error::other(format!("restored task {pid} is gone")))?;
        let (pid, start) = (pid.to_string(), start.to_string());
        let w = crate::util::start_guard(
            &[
                "postcopy-guard".as_ref(),
                "--pid".as_ref(),
                pid.as_ref(),
                "--start-time".as_ref(),
                start.as_ref(),
            ],
            &[],
            "post-copy guard",
        )?;
        Ok(Guard { pipe: Some(w) })
    }

    /// Every page arrived: the guard exits without touching the tasks.
    pub fn done(mut self) {
        if let Some(w) = self.pipe.take() {
            let _ = rustix::io::write(&w, GUARD_DONE);
        }
    }
}

/// Start time of a process (field 22 of /proc/PID/stat), in clock ticks since boot.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let p = rustix::process::Pid::from_raw(pid)?;
    let mut buf = crate::inspect::ProcStatBuf::new();
    crate::inspect::read_proc_stat(
        Path::new("/proc"),
        crate::inspect::ProcPid::Pid(p),
        &mut buf,
    )
    .ok()
    .map(|s| s.start_time)
}

/// `haul postcopy-guard --pid P --start-time T` (started by serve, stdin a pipe): waits for
/// "done"; on end of file without it, kills P if it is still the same process.
pub fn guard(pid: i32, start: u64) -> Result<()> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    let stdin = std::io::stdin();
    let mut inp = stdin.lock();
    loop {
        use std::io::Read;
        match inp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(buf.get(..n).unwrap_or_default());
                if got.len() > GUARD_DONE.len() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if got == GUARD_DONE {
        return Ok(());
    }
    if start_time(pid) == Some(start) {
        log::error!(
            "haul serve ended during the post-copy of pid {pid}: its memory never fully arrived; killing it"
        );
        kill_restored(pid);
    }
    Ok(())
}

/// How a failed post-copy is reported.
pub fn lost(e: Error) -> Error {
    Error::new(
        Kind::Lost,
        format!("{e}; the restored tasks were killed: their memory had not all arrived"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This running process is not dead; a zombie child (its exit not yet reaped) is, and
    /// stopping it returns at once without a signal.
    #[test]
    fn a_zombie_tree_is_dead_and_a_running_one_is_not() {
        let me = i32::try_from(std::process::id()).unwrap();
        let start = start_time(me).unwrap();
        assert_eq!(tree_dead(me, start), Ok(false));
        // Another process's start time: the pid was reused, the tree is gone.
        assert_eq!(tree_dead(me, start + 1), Ok(true));

        let mut child = Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let t = Instant::now();
        let start = loop {
            let mut buf = crate::inspect::ProcStatBuf::new();
            let p = rustix::process::Pid::from_raw(pid).unwrap();
            let s = crate::inspect::read_proc_stat(
                Path::new("/proc"),
                crate::inspect::ProcPid::Pid(p),
                &mut buf,
            )
            .unwrap();
            if s.state == b'Z' {
                break s.start_time;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no zombie");
            std::thread::sleep(Duration::from_millis(2));
        };
        assert_eq!(tree_dead(pid, start), Ok(true));
        assert_eq!(stop_restored(pid, start, Duration::ZERO), Ok(()));
        child.wait().unwrap();
        assert_eq!(tree_dead(pid, start), Ok(true));
    }
}
