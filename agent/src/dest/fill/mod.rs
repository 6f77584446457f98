//! Filling restored memory after the resume with haul's own userfaultfd handler (the default),
//! in place of CRIU's `criu lazy-pages` daemon (`HAUL_FILLER=criu` in `haul serve`'s
//! environment keeps the daemon, for comparison).
//!
//! The restore runs with lazy pages: CRIU leaves the tasks' private anonymous memory unmapped,
//! registers it with a userfaultfd per task and hands those to whoever listens on
//! `lazy-pages.socket` in its work directory (`restore_link`). haul answers faults first and
//! fills the rest in the background (`handler`), from the pages files here (no `--lazy`: the
//! source sent every page before the restore) or from the source's CRIU page server through
//! the connection (`--lazy`). `runs` keeps each task's unfilled memory as the task moves it.
//!
//! Compared with the daemon: no process to start before the restore (it had to read every
//! image first), faults are never queued behind a background transfer of up to 4 MiB, and
//! background questions are pipelined instead of one at a time.

pub mod handler;
pub mod restore_link;
pub mod runs;

use crate::error::{Error, Result};
use crate::transfer::frame::Kind;
use crate::transfer::{mux, Conn};
use crate::workdir::WorkDir;
use handler::{Control, Counts, Handler, Pages, Upstream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The environment variable of `haul serve` that picks who fills: `criu` (CRIU's lazy-pages
/// daemon) or `haul` (the default).
pub const FILLER_ENV: &str = "HAUL_FILLER";

/// Whether haul's handler fills (not `HAUL_FILLER=criu`).
pub fn haul_fills() -> bool {
    !matches!(std::env::var(FILLER_ENV), Ok(v) if v.eq_ignore_ascii_case("criu"))
}

/// haul's handler, running on its own thread.
pub struct Filler {
    thread: Option<JoinHandle<std::result::Result<Counts, String>>>,
    pub(crate) ctl: Arc<Control>,
    outcome: Option<std::result::Result<Counts, String>>,
}

impl Filler {
    /// Fills from the images in `work` (every page is there); listening before it returns.
    pub fn start_local(work: &WorkDir) -> Result<Filler> {
        Filler::start(work, Pages::Local)
    }

    /// Fills from the source's CRIU page server through `conn` (whose page frames from now on
    /// go to the handler); `source` is the source's page-server header layout.
    pub fn start_remote(
        work: &WorkDir,
        conn: &Conn,
        source: crate::criu::page_server::Layout,
    ) -> Result<Filler> {
        let (ours, theirs) = crate::transfer::pages::socket_pair()
            .map_err(|e| Error::other(format!("socketpair: {e}")))?;
        let tx = conn.sender();
        let counters = conn.counters.clone();
        let up: Upstream = Box::new(move |b: Option<&[u8]>| match b {
            Some(b) => {
                counters
                    .pages_out
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                mux::send_frame(&tx, Kind::PageData, b).map_err(|e| e.to_string())
            }
            None => mux::send_frame(&tx, Kind::PageEof, &[]).map_err(|e| e.to_string()),
        });
        conn.set_page_sink(Arc::new(theirs));
        Filler::start(
            work,
            Pages::Remote {
                answers: Arc::new(ours),
                up,
                layout: source,
            },
        )
    }

    fn start(work: &WorkDir, pages: Pages) -> Result<Filler> {
        let dir = rustix::io::fcntl_dupfd_cloexec(&work.fd, 3)
            .map_err(|e| Error::other(format!("dup: {e}")))?;
        let ctl = Arc::new(Control::default());
        let h = Handler::new(dir, pages, ctl.clone())
            .map_err(|e| Error::setup(format!("userfaultfd handler: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("haul-fill".into())
            .spawn(move || h.run())
            .map_err(|e| Error::other(format!("starting the userfaultfd handler: {e}")))?;
        Ok(Filler {
            thread: Some(thread),
            ctl,
            outcome: None,
        })
    }

    /// Bytes copied into the tasks so far.
    pub fn filled(&self) -> u64 {
        self.ctl.filled.load(Ordering::Relaxed)
    }

    /// Whether the handler has ended: Ok(true) with every page in place, Err if it failed.
    pub fn exited(&mut self) -> Result<bool> {
        if self.outcome.is_none() {
            match &self.thread {
                Some(t) if t.is_finished() => {}
                _ => return Ok(false),
            }
            let out = match self.thread.take().map(JoinHandle::join) {
                Some(Ok(r)) => r,
                Some(Err(_)) => Err("the handler thread panicked".into()),
                None => Err("the handler is gone".into()),
            };
            self.outcome = Some(out);
        }
        match &self.outcome {
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(Error::other(format!("filling the memory failed: {e}"))),
            None => Ok(false),
        }
    }

    /// The handler's counts once it ended well.
    pub fn counts(&self) -> Option<Counts> {
        match &self.outcome {
            Some(Ok(c)) => Some(*c),
            _ => None,
        }
    }

    /// Holds the background fill: the handler answers faults (a restore can need that: the
    /// kernel writes a task's rseq area as it resumes) but fills nothing else until `kill`
    /// (fault injection, tests).
    pub fn pause(&self) {
        self.ctl.hold.store(true, Ordering::Relaxed);
    }

    /// From now on, a failed fill stops the restored tree whose root is `root` (its pid here,
    /// not the one in the images that the restore link names) before any of its tasks'
    /// userfaultfds closes. Called before the tasks may run.
    pub fn stop_tasks_on_failure(&self, root: i32) -> Result<()> {
        let start = super::lazy::start_time(root)
            .ok_or_else(|| Error::other(format!("restored task {root} is gone")))?;
        let stop: handler::StopTasks = Box::new(move || {
            super::lazy::stop_restored(root, start, crate::limits::RESTORED_STOP_WAIT)
        });
        *self
            .ctl
            .stop_tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stop);
        Ok(())
    }

    /// Stops the handler; `exited` then reports the failure. Tasks whose memory is not all
    /// in are stopped first (`stop_tasks_on_failure`).
    pub fn kill(&mut self) {
        self.ctl.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            self.outcome = Some(match t.join() {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("the handler thread panicked".into()),
            });
        }
    }
}

impl Drop for Filler {
    /// Stops the handler, and the tasks whose memory is not all in before their userfaultfds
    /// close (those a failed handler could not stop then are stopped now).
    fn drop(&mut self) {
        self.kill();
        self.ctl.release_parked();
    }
}

/// Waits until `done` says the fill is over (Ok: how long it took) or fails, or `limit`
/// passes.
pub fn wait_local(
    mut done: impl FnMut() -> Result<bool>,
    limit: Duration,
    what: &str,
    mut alive: impl FnMut(),
) -> Result<Duration> {
    let start = std::time::Instant::now();
    let mut shown = start;
    loop {
        if done()? {
            return Ok(start.elapsed());
        }
        if shown.elapsed() >= crate::limits::KEEPALIVE_FRAME_EVERY {
            alive();
            shown = std::time::Instant::now();
        }
        if start.elapsed() > limit {
            return Err(Error::other(format!(
                "{what} has not filled the memory after {} s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
