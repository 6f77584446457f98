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

use crate::error::{Error, Kind, Result};
use crate::limits::{IDLE_TIMEOUT, LAZY_DAEMON_START};
use crate::transfer::{mux, pages, Conn, Incoming, WireError};
use crate::workdir::WorkDir;
use haul_proto::haul::control::Msg;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The daemon's log, in the migration directory.
pub const LOG_NAME: &str = "lazy-pages.log";

/// A running `criu lazy-pages`.
pub struct LazyDaemon {
    child: Child,
    /// haul's end of the daemon's page-server socket.
    pub ps: Arc<OwnedFd>,
    log: std::path::PathBuf,
}

/// Starts the daemon on `work` (the images must all be there) and waits until it listens for
/// the restore.
pub fn start(criu: &Path, work: &WorkDir) -> Result<LazyDaemon> {
    let (ours, theirs) =
        pages::socket_pair().map_err(|e| Error::other(format!("socketpair: {e}")))?;
    let (status_r, status_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::other(format!("pipe: {e}")))?;
    let mut cmd = Command::new(criu);
    cmd.arg("lazy-pages")
        .arg("--page-server")
        .arg("--ps-socket")
        .arg(theirs.as_raw_fd().to_string())
        .arg("--status-fd")
        .arg(status_w.as_raw_fd().to_string())
        .arg("--images-dir")
        .arg(&work.path)
        .arg("--work-dir")
        .arg(&work.path)
        .arg("--log-file")
        .arg(LOG_NAME)
        .arg("-v4")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = crate::sys::spawn_inheriting(&mut cmd, &[theirs.as_fd(), status_w.as_fd()])
        .map_err(|e| Error::setup(format!("starting {} lazy-pages: {e}", criu.display())))?;
    // The daemon has its copies; ours would keep its socket and status pipe open forever.
    drop(theirs);
    drop(status_w);
    let mut d = LazyDaemon {
        child,
        ps: Arc::new(ours),
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

    /// Follows the post-copy until the daemon has every page (Ok: how long it took), the daemon
    /// fails, the source aborts or the connection goes quiet or breaks (Err). On Err the caller
    /// kills the restored tasks.
    pub fn wait(&mut self, conn: &Conn) -> Result<Duration> {
        let start = Instant::now();
        let mut last = (Instant::now(), mux::load(&conn.counters.pages_in));
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(start.elapsed()),
                Ok(Some(st)) => return Err(self.failed(&format!("failed ({st})"))),
                Ok(None) => {}
                Err(e) => return Err(Error::other(format!("waiting for criu lazy-pages: {e}"))),
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
            } else if last.0.elapsed() > IDLE_TIMEOUT {
                return Err(Error::other(format!(
                    "post-copy: no page arrived for {} s",
                    IDLE_TIMEOUT.as_secs()
                )));
            }
        }
    }
}

impl Drop for LazyDaemon {
    /// A daemon still running is killed: its tasks are being killed too, or never ran.
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&*self.ps, rustix::net::Shutdown::Both);
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

/// How a failed post-copy is reported.
pub fn lost(e: Error) -> Error {
    Error::new(
        Kind::Lost,
        format!("{e}; the restored tasks were killed: their memory had not all arrived"),
    )
}
