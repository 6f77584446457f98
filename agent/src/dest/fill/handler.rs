//! The userfaultfd handler: one thread that takes the restored tasks' userfaultfds from the
//! restore (`restore_link`), answers their page faults first and fills the rest of their lazy
//! memory in the background, from the pages files here (`Pages::Local`, the fill after the
//! resume) or from the source's CRIU page server through the connection (`Pages::Remote`,
//! `--lazy`).
//!
//! Remote: questions are CRIU page-server GETs for one lazy run each (the source's page server
//! fails on any other address) and answers come in the order asked. A fault's question goes
//! out at once, but behind every question already on the wire: so while tasks fault, the
//! background keeps at most `REMOTE_IN_FLIGHT_FAULTING` questions of `REMOTE_CHUNK_FAULTING`
//! out, and only once faults stop for `FAULT_QUIET` does it go to `REMOTE_IN_FLIGHT` of up to
//! `REMOTE_CHUNK_MAX` (questions grow by `REMOTE_CHUNK_MIN` from that size). Measured with the
//! bench's workload (64 random pages read every 5 ms): one 64 KiB question while faulting
//! moved 1 GiB at ~110-190 MiB/s, two of 256 KiB at ~390 MiB/s with the same downtime.
//! The background goes on from where the last fault was (a task walking its memory then finds
//! it there), else from the lowest address.

use super::restore_link::{self, Event, Link};
use super::runs::{Run, Runs};
use crate::criu::page_server::{Iov, Layout, IOV_ADD_F, IOV_FORCE_CLOSE};
use crate::criu::pagemap::{self, Extent};
use crate::sys::uffd;
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Bytes filled around a fault: the faulting page and the pages after it in its run (a task
/// walking its memory then faults once per window, not once per page).
pub const FAULT_WINDOW: u64 = 64 << 10;
/// Bytes per background copy from local images.
pub const LOCAL_CHUNK: u64 = 256 << 10;
/// Background questions to the source: their size right after a fault, and how much each
/// next one grows while no fault comes.
pub const REMOTE_CHUNK_MIN: u64 = 64 << 10;
/// Largest background question to the source.
pub const REMOTE_CHUNK_MAX: u64 = 512 << 10;
/// Largest background question while tasks fault (a fault's answer waits behind it).
pub const REMOTE_CHUNK_FAULTING: u64 = 256 << 10;
/// Background questions on the wire at once while no task faults.
pub const REMOTE_IN_FLIGHT: usize = 3;
/// Background questions on the wire at once while tasks fault.
pub const REMOTE_IN_FLIGHT_FAULTING: usize = 2;
/// How long after a fault the background stays at one question.
pub const FAULT_QUIET: Duration = Duration::from_millis(10);
/// How long one wait for events lasts when there is nothing else to do (the stop flag is
/// looked at in between).
const IDLE_POLL: Duration = Duration::from_millis(20);
/// Faults that could not be served at once (the task's memory map was changing) and are tried
/// again: more than this many waiting is a task storm that this handler does not survive.
const RETRY_MAX: usize = 4096;
/// Longest wait for the source page server's answer to the final close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// uffd_msg events (linux/userfaultfd.h).
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const MSG_LEN: usize = 32;

/// Sends page-protocol bytes to the source (`Some`), or the end of this side's stream
/// (`None`: PAGE_EOF).
pub type Upstream = Box<dyn Fn(Option<&[u8]>) -> Result<(), String> + Send>;

/// Stops the restored tasks for good and returns once none of them runs any more (Err: they
/// may still run).
pub type StopTasks = Box<dyn FnMut() -> Result<(), String> + Send>;

/// Shared with the session: stop and pause requests, progress, how to stop the tasks.
#[derive(Default)]
pub struct Control {
    pub stop: AtomicBool,
    /// No background fill while set: only faults are answered (fault injection, tests).
    pub hold: AtomicBool,
    /// Bytes copied into the tasks so far.
    pub filled: AtomicU64,
    /// How a failed fill stops the tasks before it closes their userfaultfds; the session sets
    /// it before it lets them run. When the last reference to a userfaultfd closes, the
    /// kernel unregisters its ranges and wakes the threads waiting there: every page not yet
    /// filled then reads as a zero page, and a task still running would go on with that.
    pub stop_tasks: Mutex<Option<StopTasks>>,
    /// The userfaultfds of a failed fill whose tasks could not be stopped: kept open (their
    /// faults then wait instead of reading zero pages) until `release_parked`.
    parked: Mutex<Vec<OwnedFd>>,
}

impl Control {
    /// Runs `stop_tasks`: Ok once the tasks are stopped; Err if they may run (or there is no
    /// way to stop them yet).
    fn run_stop_tasks(&self) -> Result<(), String> {
        let mut hook = self
            .stop_tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match hook.as_mut() {
            Some(stop) => stop(),
            None => Err("no way to stop them was given".into()),
        }
    }

    /// Closes the userfaultfds a failed fill kept open, after stopping their tasks. Without a
    /// `stop_tasks` they are closed as they are: the session sets it before the tasks may run,
    /// so they never ran. If the tasks cannot be stopped the descriptors are left open for
    /// the life of this process: tasks waiting on faults for ever are better than tasks
    /// running on zero pages.
    pub fn release_parked(&self) {
        let parked =
            std::mem::take(&mut *self.parked.lock().unwrap_or_else(PoisonError::into_inner));
        if parked.is_empty() {
            return;
        }
        let mut hook = self
            .stop_tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(stop) = hook.as_mut() else {
            return;
        };
        if let Err(e) = stop() {
            log::error!(
                "the restored tasks of a failed fill could not be stopped ({e}): their {} userfaultfds stay open",
                parked.len()
            );
            for fd in parked {
                std::mem::forget(fd);
            }
        }
    }
}

/// What the handler did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub tasks: u64,
    pub faults: u64,
    pub bytes_filled: u64,
    pub zero_pages: u64,
    pub questions: u64,
}

/// Where the pages come from.
pub enum Pages {
    /// The pages files in the work directory.
    Local,
    /// The source's CRIU page server: questions through `up`, answers read from `answers`.
    Remote {
        answers: Arc<OwnedFd>,
        up: Upstream,
        layout: Layout,
    },
}

/// One task's images: its lazy runs and, for local filling, its pages file.
struct Images {
    extents: Vec<Extent>,
    pages: Option<std::fs::File>,
}

struct Task {
    /// The pid in the images (shared by a task and the children it forks after the resume).
    pid: i32,
    /// None once the task is gone (closed then: a task that forks often would otherwise
    /// leave a descriptor here per child).
    uffd: Option<OwnedFd>,
    images: Arc<Images>,
    pending: Runs,
    /// Asked of the source, not yet here.
    asked: Runs,
}

impl Task {
    fn gone(&self) -> bool {
        self.uffd.is_none()
    }

    fn done(&self) -> bool {
        self.gone() || (self.pending.is_empty() && self.asked.is_empty())
    }
}

/// A question on the wire.
struct Question {
    pid: i32,
    img: u64,
    pages: u64,
    bulk: bool,
}

/// An answer being read: its header and how much of its data is in.
struct Answer {
    hdr: Vec<u8>,
    iov: Option<Iov>,
    data: Vec<u8>,
    have: usize,
}

pub struct Handler {
    dir: OwnedFd,
    page: u64,
    listener: Option<OwnedFd>,
    link: Option<Link>,
    finished: bool,
    tasks: Vec<Task>,
    images: HashMap<i32, Arc<Images>>,
    pages: Pages,
    questions: VecDeque<Question>,
    answer: Answer,
    buf: Vec<u8>,
    retry: Vec<(usize, u64)>,
    /// Where the background goes on: a task and an address in it.
    cursor: Option<(usize, u64)>,
    /// Size of the next background question to the source.
    chunk: u64,
    last_fault: Option<Instant>,
    ctl: Arc<Control>,
    counts: Counts,
    started: Instant,
}

impl Handler {
    /// A handler listening on `restore_link::SOCKET_NAME` in `dir` (the restore's work
    /// directory, which holds the images).
    pub fn new(dir: OwnedFd, pages: Pages, ctl: Arc<Control>) -> Result<Handler, String> {
        let listener = restore_link::listen(dir.as_fd())?;
        let hlen = match &pages {
            Pages::Remote { layout, .. } => layout.header_len(),
            Pages::Local => 0,
        };
        Ok(Handler {
            dir,
            page: rustix::param::page_size() as u64,
            listener: Some(listener),
            link: None,
            finished: false,
            tasks: Vec::new(),
            images: HashMap::new(),
            pages,
            questions: VecDeque::new(),
            answer: Answer {
                hdr: Vec::with_capacity(hlen),
                iov: None,
                data: Vec::new(),
                have: 0,
            },
            buf: Vec::new(),
            retry: Vec::new(),
            cursor: None,
            chunk: REMOTE_CHUNK_MIN,
            last_fault: None,
            ctl,
            counts: Counts::default(),
            started: Instant::now(),
        })
    }

    /// Runs until every task's memory is filled (or the task is gone), then closes the
    /// source's page server (remote). On an error, tasks whose memory is not all in are
    /// stopped before their userfaultfds close (see `Control::stop_tasks`).
    pub fn run(mut self) -> Result<Counts, String> {
        let out = self.fill();
        if let Err(why) = &out {
            self.fail(why);
        }
        out
    }

    /// The fill failed (`why`): the tasks still missing memory are stopped, then their
    /// userfaultfds closed; if they cannot be stopped, the descriptors are parked in `ctl`
    /// (their faults wait) for `Control::release_parked`.
    fn fail(&mut self, why: &str) {
        let open: Vec<OwnedFd> = self
            .tasks
            .iter_mut()
            .filter(|t| !t.done())
            .filter_map(|t| t.uffd.take())
            .collect();
        if open.is_empty() {
            return;
        }
        match self.ctl.run_stop_tasks() {
            Ok(()) => log::info!(
                "userfaultfd handler failed ({why}); its {} restored tasks are stopped",
                open.len()
            ),
            Err(e) => {
                log::warn!(
                    "userfaultfd handler failed ({why}) and cannot stop its tasks now ({e}): their {} userfaultfds stay open until they are",
                    open.len()
                );
                self.ctl
                    .parked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(open);
            }
        }
    }

    fn fill(&mut self) -> Result<Counts, String> {
        loop {
            if self.ctl.stop.load(Ordering::Relaxed) {
                return Err("stopped".into());
            }
            let busy = self.finished && self.background_ready();
            self.poll_once(if busy { Duration::ZERO } else { IDLE_POLL })?;
            self.retry_faults()?;
            if self.finished {
                self.background()?;
                if self.all_done() {
                    self.close_source()?;
                    log::info!(
                        "userfaultfd handler: {} tasks, {} faults, {:.1} MiB filled, {} zero pages, {} questions to the source, in {} ms",
                        self.counts.tasks,
                        self.counts.faults,
                        self.counts.bytes_filled as f64 / 1048576.0,
                        self.counts.zero_pages,
                        self.counts.questions,
                        self.started.elapsed().as_millis()
                    );
                    return Ok(self.counts);
                }
            }
        }
    }

    fn all_done(&self) -> bool {
        self.questions.is_empty() && self.tasks.iter().all(Task::done)
    }

    fn background_ready(&self) -> bool {
        if self.ctl.hold.load(Ordering::Relaxed) {
            return false;
        }
        match self.pages {
            Pages::Local => self
                .tasks
                .iter()
                .any(|t| !t.gone() && !t.pending.is_empty()),
            Pages::Remote { .. } => {
                let faulting = self.last_fault.is_some_and(|t| t.elapsed() < FAULT_QUIET);
                let limit = if faulting {
                    REMOTE_IN_FLIGHT_FAULTING
                } else {
                    REMOTE_IN_FLIGHT
                };
                self.questions.iter().filter(|q| q.bulk).count() < limit
                    && self
                        .tasks
                        .iter()
                        .any(|t| !t.gone() && !t.pending.is_empty())
            }
        }
    }

    fn poll_once(&mut self, timeout: Duration) -> Result<(), String> {
        #[derive(Clone, Copy)]
        enum Who {
            Listener,
            Link,
            Answers,
            Task(usize),
        }
        let mut who = Vec::with_capacity(self.tasks.len() + 3);
        let mut fds = Vec::with_capacity(self.tasks.len() + 3);
        if let Some(l) = &self.listener {
            who.push(Who::Listener);
            fds.push(PollFd::new(l, PollFlags::IN));
        }
        if let Some(l) = &self.link {
            who.push(Who::Link);
            fds.push(PollFd::from_borrowed_fd(l.fd(), PollFlags::IN));
        }
        if let Pages::Remote { answers, .. } = &self.pages {
            who.push(Who::Answers);
            fds.push(PollFd::new(&**answers, PollFlags::IN));
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if let Some(fd) = &t.uffd {
                who.push(Who::Task(i));
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
        }
        let ts = rustix::event::Timespec::try_from(timeout).map_err(|e| e.to_string())?;
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready: Vec<Who> = who
            .iter()
            .zip(fds.iter())
            .filter(|(_, f)| !f.revents().is_empty())
            .map(|(w, _)| *w)
            .collect();
        drop(fds);
        for w in ready {
            match w {
                Who::Listener => self.accept()?,
                Who::Link => self.read_link()?,
                Who::Answers => self.read_answers()?,
                Who::Task(i) => self.read_events(i)?,
            }
        }
        Ok(())
    }

    fn accept(&mut self) -> Result<(), String> {
        let Some(l) = &self.listener else {
            return Ok(());
        };
        match rustix::net::accept_with(l, rustix::net::SocketFlags::CLOEXEC) {
            Ok(s) => {
                rustix::io::ioctl_fionbio(&s, true).map_err(|e| e.to_string())?;
                self.link = Some(Link::new(s));
                // CRIU's restore connects once.
                self.listener = None;
                Ok(())
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(()),
            Err(e) => Err(format!("accepting the restore's link: {e}")),
        }
    }

    fn read_link(&mut self) -> Result<(), String> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        let mut events = Vec::new();
        let closed = link.read(&mut events)?;
        for e in events {
            match e {
                Event::Task { pid, uffd } => self.add_task(pid, uffd)?,
                Event::Zombie(pid) => log::debug!("userfaultfd handler: zombie {pid}"),
                Event::Finished => self.finished = true,
            }
        }
        if closed {
            self.link = None;
            if !self.finished {
                return Err("the restore closed its link before it finished".into());
            }
        }
        Ok(())
    }

    fn add_task(&mut self, pid: i32, uffd: OwnedFd) -> Result<(), String> {
        let images = match self.images.get(&pid) {
            Some(i) => i.clone(),
            None => {
                let i = Arc::new(self.load_images(pid)?);
                self.images.insert(pid, i.clone());
                i
            }
        };
        let vmas = crate::criu::mm::read_vmas(&proc_dir(&self.dir), pid)?;
        let pending = Runs::from_lazy(&images.extents, &vmas);
        log::debug!(
            "userfaultfd handler: task {pid}: {} lazy runs, {:.1} MiB",
            pending.len(),
            pending.bytes() as f64 / 1048576.0
        );
        self.counts.tasks += 1;
        self.tasks.push(Task {
            pid,
            uffd: Some(uffd),
            images,
            pending,
            asked: Runs::default(),
        });
        Ok(())
    }

    fn load_images(&self, pid: i32) -> Result<Images, String> {
        let dir = proc_dir(&self.dir);
        let id = u64::try_from(pid).map_err(|_| format!("pid {pid}"))?;
        let map = pagemap::read_lazy_map(&dir, id, self.page)?;
        let pages = match self.pages {
            Pages::Local => {
                if let Some(e) = map.extents.iter().find(|e| e.offset.is_none()) {
                    return Err(format!(
                        "pagemap-{pid}.img: lazy pages at {:#x} are not in the images",
                        e.start
                    ));
                }
                let name = format!("pages-{}.img", map.pages_id);
                let fd = rustix::fs::openat(
                    &self.dir,
                    name.as_str(),
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::CLOEXEC
                        | rustix::fs::OFlags::NOFOLLOW,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| format!("opening {name}: {e}"))?;
                Some(std::fs::File::from(fd))
            }
            Pages::Remote { .. } => None,
        };
        Ok(Images {
            extents: map.extents,
            pages,
        })
    }

    /// Reads and handles every message waiting on task `i`'s userfaultfd.
    fn read_events(&mut self, i: usize) -> Result<(), String> {
        let mut msgs = [0u8; MSG_LEN * 16];
        loop {
            let Some(t) = self.tasks.get(i) else {
                return Ok(());
            };
            let Some(fd) = &t.uffd else {
                return Ok(());
            };
            let n = match rustix::io::read(fd, &mut msgs) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                // The kernel fails a read when it cannot install the descriptor of a forked
                // child (EMFILE, ENOMEM): it keeps the fork waiting and the task is not gone.
                // Nothing could fill the child's memory: the fill fails.
                Err(e) => {
                    return Err(format!("reading the userfaultfd of task {}: {e}", t.pid));
                }
            };
            for m in msgs.get(..n).unwrap_or_default().chunks_exact(MSG_LEN) {
                self.event(i, m)?;
            }
            if n < msgs.len() {
                return Ok(());
            }
        }
    }

    fn event(&mut self, i: usize, m: &[u8]) -> Result<(), String> {
        let u64_at = |o: usize| -> u64 {
            m.get(o..o + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .unwrap_or(0)
        };
        match m.first().copied().unwrap_or(0) {
            EVENT_PAGEFAULT => {
                self.counts.faults += 1;
                let addr = u64_at(16) & !(self.page - 1);
                self.fault(i, addr)
            }
            EVENT_FORK => {
                let raw = u32::from_ne_bytes(
                    m.get(8..12)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or([0xff; 4]),
                ) as i32;
                let uffd = uffd::adopt_fork_fd(raw)
                    .ok_or_else(|| format!("fork event with descriptor {raw}"))?;
                rustix::io::ioctl_fionbio(&uffd, true).map_err(|e| e.to_string())?;
                let Some(p) = self.tasks.get(i) else {
                    return Ok(());
                };
                let child = Task {
                    pid: p.pid,
                    uffd: Some(uffd),
                    images: p.images.clone(),
                    pending: p.pending.clone(),
                    asked: p.asked.clone(),
                };
                self.counts.tasks += 1;
                self.tasks.push(child);
                Ok(())
            }
            EVENT_REMAP => {
                let (from, to, len) = (u64_at(8), u64_at(16), u64_at(24));
                if let Some(t) = self.tasks.get_mut(i) {
                    t.pending.remap(from, to, len);
                    t.asked.remap(from, to, len);
                }
                Ok(())
            }
            ev @ (EVENT_REMOVE | EVENT_UNMAP) => {
                let (start, end) = (u64_at(8), u64_at(16));
                let Some(t) = self.tasks.get_mut(i) else {
                    return Ok(());
                };
                let Some(fd) = &t.uffd else {
                    return Ok(());
                };
                if ev == EVENT_REMOVE {
                    // The VMA stays: later faults there must not reach this handler.
                    match uffd::unregister(fd.as_fd(), start, end.saturating_sub(start)) {
                        Ok(()) => {}
                        Err(Errno::NOMEM) => {
                            self.gone(i);
                            return Ok(());
                        }
                        Err(e) => return Err(format!("unregistering {start:#x}-{end:#x}: {e}")),
                    }
                }
                t.pending.take(start, end);
                t.asked.take(start, end);
                Ok(())
            }
            other => Err(format!("unexpected userfaultfd event {other:#x}")),
        }
    }

    /// A fault at `addr` (page-aligned) of task `i`.
    fn fault(&mut self, i: usize, addr: u64) -> Result<(), String> {
        let Some(t) = self.tasks.get_mut(i) else {
            return Ok(());
        };
        let Some(fd) = t.uffd.as_ref().map(|f| f.as_fd()) else {
            return Ok(());
        };
        if let Some(run) = t.pending.containing(addr) {
            let end = run.end.min(addr.saturating_add(FAULT_WINDOW));
            let parts = t.pending.take(addr, end);
            self.cursor = Some((i, end));
            self.last_fault = Some(Instant::now());

            for p in parts {
                self.fetch(i, p, false)?;
            }
            return Ok(());
        }
        if t.asked.containing(addr).is_some() {
            // Its answer will wake the task.
            return Ok(());
        }
        // Registered but never dumped (or already filled): the zero page, as the kernel
        // would have mapped without userfaultfd.
        match uffd::zero(fd, addr, self.page) {
            Ok(()) => self.counts.zero_pages += 1,
            Err(Errno::EXIST) => {
                let _ = uffd::wake(fd, addr, self.page);
            }
            Err(Errno::AGAIN) => self.retry_later(i, addr)?,
            Err(Errno::SRCH) | Err(Errno::NOSPC) => self.gone(i),
            // No registered VMA there any more: nothing to map, but the thread must not sleep.
            Err(Errno::NOENT) => {
                let _ = uffd::wake(fd, addr, self.page);
            }
            Err(e) => return Err(format!("zero page at {addr:#x}: {e}")),
        }
        Ok(())
    }

    fn retry_later(&mut self, i: usize, addr: u64) -> Result<(), String> {
        if self.retry.len() >= RETRY_MAX {
            return Err(format!("{RETRY_MAX} faults waiting to be tried again"));
        }
        self.retry.push((i, addr));
        Ok(())
    }

    fn retry_faults(&mut self) -> Result<(), String> {
        for (i, addr) in std::mem::take(&mut self.retry) {
            self.fault(i, addr)?;
        }
        Ok(())
    }

    /// Brings run `p` (taken from task `i`'s pending runs) in: copied now from the images, or
    /// asked of the source.
    fn fetch(&mut self, i: usize, p: Run, bulk: bool) -> Result<(), String> {
        match &self.pages {
            Pages::Local => {
                let Some(t) = self.tasks.get(i) else {
                    return Ok(());
                };
                let images = t.images.clone();
                let len = usize::try_from(p.len()).map_err(|e| e.to_string())?;
                let mut buf = std::mem::take(&mut self.buf);
                buf.resize(len, 0);
                let r = read_local(&images, p.img, &mut buf);
                let out = r.and_then(|()| self.copy(i, p, &buf));
                self.buf = buf;
                out
            }
            Pages::Remote { up, layout, .. } => {
                let pages = p.len() / self.page;
                let Some(t) = self.tasks.get_mut(i) else {
                    return Ok(());
                };
                t.asked.insert(p);
                let q = Iov::get(u64::try_from(t.pid).unwrap_or(0), p.img, pages);
                up(Some(&q.encode(*layout)[..layout.header_len()]))?;
                self.counts.questions += 1;
                self.questions.push_back(Question {
                    pid: t.pid,
                    img: p.img,
                    pages,
                    bulk,
                });
                Ok(())
            }
        }
    }

    /// UFFDIO_COPY of `data` to run `p` of task `i`, page by page past pages already there.
    ///
    /// The kernel copies only within one VMA and fails a range that crosses a VMA's end with
    /// ENOENT, copying nothing. The task can split a VMA after the dump (mprotect, mlock,
    /// madvise) without any userfaultfd event, so a run can cross boundaries this handler
    /// never heard of: on ENOENT the copy is tried again on half as much until a single page
    /// fails, and only then is there no VMA (or no registration) at that page.
    fn copy(&mut self, i: usize, p: Run, data: &[u8]) -> Result<(), String> {
        let page = self.page;
        let Some(t) = self.tasks.get_mut(i) else {
            return Ok(());
        };
        let Some(fd) = t.uffd.as_ref().map(|f| f.as_fd()) else {
            return Ok(());
        };
        let mut at = 0u64;
        // Bytes tried in the next copy: the whole rest, unless a VMA boundary was found in it.
        let mut span = p.len();
        while at < p.len() {
            let end = p.len().min(at + span);
            let Some(chunk) = data.get(at as usize..end as usize) else {
                return Err("page data shorter than its run".into());
            };
            match uffd::copy(fd, p.start + at, chunk) {
                Ok(n) => {
                    self.counts.bytes_filled += n;
                    self.ctl.filled.fetch_add(n, Ordering::Relaxed);
                    at += n;
                    span = p.len();
                }
                Err(s) => {
                    self.counts.bytes_filled += s.copied;
                    self.ctl.filled.fetch_add(s.copied, Ordering::Relaxed);
                    at += s.copied - s.copied % page;
                    match s.errno {
                        // A page already there (the task's own write raced the copy): skip it.
                        // The kernel wakes no waiter on this error: a thread that faulted
                        // there would sleep on.
                        Errno::EXIST => {
                            let _ = uffd::wake(fd, p.start + at, page);
                            at += page;
                            span = p.len();
                        }
                        Errno::SRCH | Errno::NOSPC => {
                            self.gone(i);
                            return Ok(());
                        }
                        // The range crosses a VMA's end: the part before it, then the rest.
                        Errno::NOENT if end - at > page => {
                            span = ((end - at) / 2).next_multiple_of(page);
                        }
                        // No registered VMA at this page (an unmap this handler has yet to
                        // read): nothing to fill, and no thread may be left waiting there.
                        Errno::NOENT => {
                            let _ = uffd::wake(fd, p.start + at, page);
                            at += page;
                            span = p.len();
                        }
                        Errno::AGAIN => {
                            // The task's map is changing: put the rest back and try again
                            // once its event is read.
                            let rest = Run {
                                start: p.start + at,
                                end: p.end,
                                img: p.img + at,
                            };
                            t.pending.insert(rest);
                            return self.retry_later(i, rest.start);
                        }
                        e => return Err(format!("copying pages to {:#x}: {e}", p.start + at)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Task `i`'s memory is gone (its mm exited): nothing of it is filled any more and its
    /// userfaultfd is closed.
    fn gone(&mut self, i: usize) {
        if let Some(t) = self.tasks.get_mut(i) {
            if !t.gone() {
                log::debug!(
                    "userfaultfd handler: task {} gone with {} KiB unfilled",
                    t.pid,
                    (t.pending.bytes() + t.asked.bytes()) / 1024
                );
            }
            t.uffd = None;
            t.pending = Runs::default();
            t.asked = Runs::default();
        }
    }

    /// One step of the background fill: a chunk copied (local) or questions topped up
    /// (remote).
    fn background(&mut self) -> Result<(), String> {
        loop {
            if !self.background_ready() {
                return Ok(());
            }
            // From the cursor, else the lowest pages of the first task with any.
            let at = self.cursor.and_then(|(i, addr)| {
                let t = self.tasks.get(i).filter(|t| !t.gone())?;
                Some((i, t.pending.from(addr)?))
            });
            let at = at.or_else(|| {
                self.tasks.iter().enumerate().find_map(|(i, t)| {
                    (!t.gone()).then_some(())?;
                    Some((i, t.pending.first()?))
                })
            });
            let Some((i, first)) = at else {
                return Ok(());
            };
            let chunk = match self.pages {
                Pages::Local => LOCAL_CHUNK,
                Pages::Remote { .. } => {
                    let faulting = self.last_fault.is_some_and(|t| t.elapsed() < FAULT_QUIET);
                    let cap = if faulting {
                        REMOTE_CHUNK_FAULTING
                    } else {
                        REMOTE_CHUNK_MAX
                    };
                    let c = self.chunk.min(cap);
                    self.chunk = (c + REMOTE_CHUNK_MIN).min(REMOTE_CHUNK_MAX);
                    c
                }
            };
            let end = first.end.min(first.start.saturating_add(chunk));
            self.cursor = Some((i, end));
            let Some(t) = self.tasks.get_mut(i) else {
                return Ok(());
            };
            let parts = t.pending.take(first.start, end);
            for p in parts {
                self.fetch(i, p, true)?;
            }
            if matches!(self.pages, Pages::Local) {
                // One chunk, then back to the faults.
                return Ok(());
            }
        }
    }

    /// Reads answers from the source.
    fn read_answers(&mut self) -> Result<(), String> {
        let Pages::Remote {
            answers, layout, ..
        } = &self.pages
        else {
            return Ok(());
        };
        let hlen = layout.header_len();
        let layout = *layout;
        let fd = answers.clone();
        loop {
            if self.answer.iov.is_none() {
                let have = self.answer.hdr.len();
                let mut b = [0u8; 32];
                let want = b.get_mut(..hlen - have).unwrap_or_default();
                let n = match rustix::net::recv(&*fd, want, rustix::net::RecvFlags::DONTWAIT) {
                    Ok((0, _)) => return Err(self.source_closed()),
                    Ok((n, _)) => n,
                    Err(Errno::AGAIN) => return Ok(()),
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(format!("reading the source's pages: {e}")),
                };
                self.answer
                    .hdr
                    .extend_from_slice(b.get(..n).unwrap_or_default());
                if self.answer.hdr.len() < hlen {
                    continue;
                }
                let iov = Iov::decode(&self.answer.hdr, layout)
                    .ok_or("the source's page answer has a bad header")?;
                self.answer.hdr.clear();
                self.start_answer(iov)?;
            }
            let Some(iov) = self.answer.iov else {
                continue;
            };
            let have = self.answer.have;
            let Some(rest) = self.answer.data.get_mut(have..) else {
                return Err("page answer buffer overrun".into());
            };
            if !rest.is_empty() {
                let n = match rustix::net::recv(&*fd, rest, rustix::net::RecvFlags::DONTWAIT) {
                    Ok((0, _)) => return Err(self.source_closed()),
                    Ok((n, _)) => n,
                    Err(Errno::AGAIN) => return Ok(()),
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(format!("reading the source's pages: {e}")),
                };
                self.answer.have += n;
            }
            if self.answer.have == self.answer.data.len() {
                self.answer.iov = None;
                let data = std::mem::take(&mut self.answer.data);
                let r = self.apply_answer(iov, &data);
                self.answer.data = data;
                self.answer.data.clear();
                r?;
            }
        }
    }

    fn source_closed(&self) -> String {
        format!(
            "the source's page server closed with {} questions unanswered",
            self.questions.len()
        )
    }

    /// Checks an answer's header against the oldest question and sizes its buffer.
    fn start_answer(&mut self, iov: Iov) -> Result<(), String> {
        let q = self
            .questions
            .front()
            .ok_or("a page answer nobody asked for")?;
        if iov.command() != IOV_ADD_F
            || iov.vaddr != q.img
            || iov.dst_id != u64::try_from(q.pid).unwrap_or(0)
            || iov.nr_pages == 0
            || iov.nr_pages > q.pages
        {
            return Err(format!(
                "the source answered {:?} to a question for {} pages at {:#x} of task {}",
                iov, q.pages, q.img, q.pid
            ));
        }
        let len = usize::try_from(iov.nr_pages * self.page).map_err(|e| e.to_string())?;
        self.answer.data.resize(len, 0);
        self.answer.have = 0;
        self.answer.iov = Some(iov);
        Ok(())
    }

    /// Copies an answer into every task that waits for those pages (a task and the children it
    /// forked share them); a short answer's rest is asked again.
    fn apply_answer(&mut self, iov: Iov, data: &[u8]) -> Result<(), String> {
        let Some(q) = self.questions.pop_front() else {
            return Err("a page answer nobody asked for".into());
        };
        let lo = iov.vaddr;
        let hi = lo + iov.nr_pages * self.page;
        let sharing = self.tasks.iter().filter(|t| t.pid == q.pid).count();
        for i in 0..self.tasks.len() {
            let Some(t) = self.tasks.get_mut(i) else {
                continue;
            };
            if t.pid != q.pid || t.gone() {
                continue;
            }
            let mut parts = Vec::new();
            for r in t.asked.iter() {
                if let Some(p) = overlap(r, lo, hi) {
                    parts.push(p);
                }
            }
            if sharing > 1 {
                for r in t.pending.iter() {
                    if let Some(p) = overlap(r, lo, hi) {
                        parts.push(p);
                    }
                }
            }
            for p in &parts {
                t.asked.take(p.start, p.end);
                t.pending.take(p.start, p.end);
            }
            for p in parts {
                let off = (p.img - lo) as usize;
                let Some(d) = data.get(off..off + p.len() as usize) else {
                    return Err("page answer shorter than its run".into());
                };
                self.copy(i, p, d)?;
                if self.tasks.get(i).is_none_or(Task::gone) {
                    break;
                }
            }
        }
        if iov.nr_pages < q.pages {
            // The rest, asked again (still in the tasks' asked runs).
            let img = hi;
            let pages = q.pages - iov.nr_pages;
            if let Pages::Remote { up, layout, .. } = &self.pages {
                let again = Iov::get(u64::try_from(q.pid).unwrap_or(0), img, pages);
                up(Some(&again.encode(*layout)[..layout.header_len()]))?;
                self.counts.questions += 1;
                self.questions.push_back(Question {
                    pid: q.pid,
                    img,
                    pages,
                    bulk: q.bulk,
                });
            }
        }
        Ok(())
    }

    /// Remote: every page is here; tells the source's page server to end (its answer is a
    /// status word) and ends this side's page stream.
    fn close_source(&mut self) -> Result<(), String> {
        let Pages::Remote {
            answers,
            up,
            layout,
        } = &self.pages
        else {
            return Ok(());
        };
        let close = Iov {
            cmd: IOV_FORCE_CLOSE,
            nr_pages: 0,
            vaddr: 0,
            dst_id: 0,
        };
        up(Some(&close.encode(*layout)[..layout.header_len()]))?;
        let mut status = [0u8; 4];
        let mut have = 0;
        let deadline = Instant::now() + CLOSE_WAIT;
        while have < status.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the source's page server did not answer the close".into());
            }
            let ts = rustix::event::Timespec::try_from(left).map_err(|e| e.to_string())?;
            let mut fds = [PollFd::new(&**answers, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let Some(want) = status.get_mut(have..) else {
                break;
            };
            match rustix::net::recv(&**answers, want, rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    return Err("the source's page server closed before its status".into())
                }
                Ok((n, _)) => have += n,
                Err(Errno::AGAIN) | Err(Errno::INTR) => {}
                Err(e) => return Err(format!("reading the close status: {e}")),
            }
        }
        let st = i32::from_ne_bytes(status);
        if st != 0 {
            return Err(format!("the source's page server ended with status {st}"));
        }
        up(None)
    }
}

/// The part of run `r` whose image pages lie in `lo..hi`.
fn overlap(r: &Run, lo: u64, hi: u64) -> Option<Run> {
    let s = r.img.max(lo);
    let e = (r.img + r.len()).min(hi);
    (s < e).then(|| Run {
        start: r.start + (s - r.img),
        end: r.start + (e - r.img),
        img: s,
    })
}

/// Reads the image pages at `img` (within one lazy extent) into `buf`.
fn read_local(images: &Images, img: u64, buf: &mut [u8]) -> Result<(), String> {
    let i = images.extents.partition_point(|e| e.end <= img);
    let e = images
        .extents
        .get(i)
        .filter(|e| e.start <= img && img + buf.len() as u64 <= e.end)
        .ok_or_else(|| format!("no lazy entry holds {img:#x}"))?;
    let off = e.offset.ok_or("lazy pages not in the images")? + (img - e.start);
    let file = images.pages.as_ref().ok_or("no pages file")?;
    let mut done = 0usize;
    while done < buf.len() {
        let Some(rest) = buf.get_mut(done..) else {
            break;
        };
        match rustix::io::pread(file, rest, off + done as u64) {
            Ok(0) => return Err(format!("pages file ends before {:#x}", off + done as u64)),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("reading pages: {e}")),
        }
    }
    Ok(())
}

/// The directory behind `dir` as a path (for the readers that take one).
fn proc_dir(dir: &OwnedFd) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::page_server::{IOV_GET, PE_LAZY, PE_PRESENT};
    use crate::sys::uffd::testing::{register, Region};
    use crate::workdir::WorkDir;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;

    const PID: i32 = 4242;
    const PAGE: u64 = 4096;

    /// The content of the page the images hold at `img`.
    fn pattern(img: u64) -> Vec<u8> {
        let mut p = vec![0u8; PAGE as usize];
        for (i, c) in p.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&(img ^ (i as u64) << 40 ^ 0x5a5a).to_le_bytes());
        }
        p
    }

    struct Lab {
        dir: crate::inspect::test_support::TempDir,
        region: Arc<Region>,
        /// Lazy runs of the images, in pages from the region's start.
        lazy: Vec<(u64, u64)>,
    }

    impl Lab {
        /// A 64-page region whose images hold pages 0..20 and 24..64 (20..24 never touched at
        /// dump time: the zero page).
        fn new(tag: &str) -> Option<Lab> {
            if let Some(why) = crate::sys::uffd::testing::unavailable() {
                eprintln!("skipped: {why} (QEMU's user mode has no userfaultfd)");
                return None;
            }
            let dir = crate::inspect::test_support::TempDir::new(tag).unwrap();
            let region = Arc::new(Region::new(64));
            let lazy = vec![(0, 20), (24, 64)];
            let base = region.addr;
            let entries: Vec<(u64, u32, u32)> = lazy
                .iter()
                .map(|&(a, b)| (base + a * PAGE, (b - a) as u32, PE_LAZY | PE_PRESENT))
                .collect();
            std::fs::write(
                dir.path().join(format!("pagemap-{PID}.img")),
                pagemap::test_image(&entries),
            )
            .unwrap();
            let mut pages = std::fs::File::create(dir.path().join("pages-1.img")).unwrap();
            for &(a, b) in &lazy {
                for p in a..b {
                    pages.write_all(&pattern(base + p * PAGE)).unwrap();
                }
            }
            std::fs::write(
                dir.path().join(format!("mm-{PID}.img")),
                crate::criu::mm::test_image(&[(base, base + region.len)]),
            )
            .unwrap();
            Some(Lab { dir, region, lazy })
        }

        fn work(&self) -> WorkDir {
            let fd = rustix::fs::open(
                self.dir.path(),
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            WorkDir {
                path: self.dir.path().to_path_buf(),
                fd,
            }
        }

        /// What CRIU's restore does: connects, hands over the task's userfaultfd, ends.
        fn hand_over(&self) -> UnixStream {
            let uffd = register(&self.region);
            let s = UnixStream::connect(self.dir.path().join(restore_link::SOCKET_NAME)).unwrap();
            let fd = OwnedFd::from(s.try_clone().unwrap());
            rustix::net::send(&fd, &PID.to_ne_bytes(), rustix::net::SendFlags::empty()).unwrap();
            let mut space =
                [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut anc = rustix::net::SendAncillaryBuffer::new(&mut space);
            let fds = [uffd.as_fd()];
            assert!(anc.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
            rustix::net::sendmsg(
                &fd,
                &[std::io::IoSlice::new(b"*")],
                &mut anc,
                rustix::net::SendFlags::empty(),
            )
            .unwrap();
            rustix::net::send(
                &fd,
                &restore_link::RESTORE_FINISHED.to_ne_bytes(),
                rustix::net::SendFlags::empty(),
            )
            .unwrap();
            s
        }

        /// The page a task sees at page `i` once the fill is right.
        fn expected(&self, i: u64) -> Vec<u8> {
            if self.lazy.iter().any(|&(a, b)| a <= i && i < b) {
                pattern(self.region.addr + i * PAGE)
            } else {
                vec![0; PAGE as usize]
            }
        }

        /// A "task" touching `order` (faults) then every page: its view of each page comes
        /// on the channel (nothing if it hung: the handler never answered).
        fn touch(&self, order: Vec<u64>) -> mpsc::Receiver<Vec<Vec<u8>>> {
            let (tx, rx) = mpsc::channel();
            let r = self.region.clone();
            std::thread::spawn(move || {
                for i in order {
                    let _ = r.page(i);
                }
                let all: Vec<Vec<u8>> = (0..64).map(|i| r.page(i)).collect();
                let _ = tx.send(all);
            });
            rx
        }
    }

    fn wait_until(mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// From the images here: faults in any order (one on a page never dumped) are answered,
    /// the rest is filled in the background, and the handler ends with every page in place.
    #[test]
    fn local_fill_answers_faults_and_fills_the_rest() {
        let Some(lab) = Lab::new("fill-local") else {
            return;
        };
        let work = lab.work();
        let mut f = super::super::Filler::start_local(&work).unwrap();
        // No background fill until the task has touched its pages: those are faults.
        f.pause();
        let _link = lab.hand_over();
        let seen = lab.touch(vec![40, 3, 22, 63, 19, 24]);
        let seen = seen.recv_timeout(Duration::from_secs(20));
        // The handler counts a window after its copy has woken the task: the task can be done
        // touching before the last count lands. Nothing else fills while the hold is on.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut faults_before_the_fill = f.ctl.filled.load(Ordering::Relaxed);
        while faults_before_the_fill < 60 * PAGE && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            faults_before_the_fill = f.ctl.filled.load(Ordering::Relaxed);
        }
        f.ctl.hold.store(false, Ordering::Relaxed);
        let Ok(seen) = seen else {
            f.kill();
            panic!("the task hung on a fault: {:?}", f.exited());
        };
        for (i, page) in seen.iter().enumerate() {
            assert!(*page == lab.expected(i as u64), "page {i} differs");
        }
        wait_until(|| f.exited().unwrap());
        let c = f.counts().unwrap();
        assert_eq!(c.tasks, 1);
        assert_eq!(c.bytes_filled, 60 * PAGE);
        // Touching every page faulted: windows of FAULT_WINDOW filled them, the hole took
        // zero pages.
        assert!(c.faults >= 6, "{c:?}");
        assert_eq!(faults_before_the_fill, 60 * PAGE, "{c:?}");
        assert_eq!(c.zero_pages, 4, "{c:?}");
    }

    /// The task drops some of its memory (MADV_DONTNEED) before the fill reached it: the
    /// handler must not put the old pages back there.
    #[test]
    fn removed_memory_is_not_filled_again() {
        let Some(lab) = Lab::new("fill-remove") else {
            return;
        };
        let work = lab.work();
        let mut f = super::super::Filler::start_local(&work).unwrap();
        f.pause();
        let _link = lab.hand_over();
        // The madvise's REMOVE event waits until the handler reads it; no background fill
        // can have reached those pages before.
        lab.region.dont_need(50, 60);
        f.ctl.hold.store(false, Ordering::Relaxed);
        let seen = lab
            .touch(vec![])
            .recv_timeout(Duration::from_secs(20))
            .expect("hung");
        for (i, page) in seen.iter().enumerate() {
            let want = if (50..60).contains(&(i as u64)) {
                vec![0; PAGE as usize]
            } else {
                lab.expected(i as u64)
            };
            assert!(*page == want, "page {i} differs");
        }
        wait_until(|| f.exited().unwrap());
        assert_eq!(f.counts().unwrap().bytes_filled, 50 * PAGE);
    }

    /// The task splits a mapping after the dump (an mprotect inside a lazy run, which the
    /// kernel reports to no userfaultfd): a copy across the new VMA boundary fails as a whole,
    /// yet every page arrives, faults first (held background) or background first, and no
    /// fault is left waiting.
    #[test]
    fn a_mapping_split_after_the_dump_is_filled_on_both_sides() {
        for faults_first in [true, false] {
            let Some(lab) = Lab::new("fill-split") else {
                return;
            };
            // Three VMAs: 0..30, 30..32 (read-only; the task only reads), 32..64.
            lab.region.read_only(30, 32);
            let work = lab.work();
            let mut f = super::super::Filler::start_local(&work).unwrap();
            let seen = if faults_first {
                f.pause();
                let _link = lab.hand_over();
                // The window of a fault at 26 is 26..42: it crosses both boundaries.
                let seen = lab
                    .touch(vec![26, 44])
                    .recv_timeout(Duration::from_secs(20));
                f.ctl.hold.store(false, Ordering::Relaxed);
                if seen.is_ok() {
                    wait_until(|| !matches!(f.exited(), Ok(false)));
                }
                seen
            } else {
                let _link = lab.hand_over();
                wait_until(|| f.exited().unwrap());
                lab.touch(vec![]).recv_timeout(Duration::from_secs(20))
            };
            let Ok(seen) = seen else {
                f.kill();
                panic!("the task hung on a fault (faults first: {faults_first})");
            };
            for (i, page) in seen.iter().enumerate() {
                assert!(
                    *page == lab.expected(i as u64),
                    "page {i} differs (faults first: {faults_first})"
                );
            }
            assert!(f.exited().unwrap(), "{:?}", f.counts());
            assert_eq!(f.counts().unwrap().bytes_filled, 60 * PAGE);
        }
    }

    /// A handler with the Lab's task handed over, driven step by step by the test.
    fn handler_with_task(lab: &Lab, work: &WorkDir) -> (Handler, UnixStream) {
        let mut h = Handler::new(
            work.fd.try_clone().unwrap(),
            Pages::Local,
            Arc::new(Control::default()),
        )
        .unwrap();
        let link = lab.hand_over();
        wait_until(|| {
            h.poll_once(Duration::from_millis(5)).unwrap();
            h.finished
        });
        assert_eq!(h.tasks.len(), 1);
        (h, link)
    }

    /// A task found gone has its userfaultfd closed at once (a task forking often would
    /// otherwise leave one descriptor here per child).
    #[test]
    fn a_gone_task_has_its_userfaultfd_closed() {
        let Some(lab) = Lab::new("fill-gone") else {
            return;
        };
        let work = lab.work();
        let (mut h, _link) = handler_with_task(&lab, &work);
        h.gone(0);
        // Closed (its last reference), the userfaultfd no longer holds the range: the kernel
        // maps zero pages for the faults, no handler is asked.
        let seen = lab
            .touch(vec![])
            .recv_timeout(Duration::from_secs(5))
            .expect("the userfaultfd of a gone task is still open");
        assert!(seen.iter().all(|p| p.iter().all(|&b| b == 0)));
        assert!(h.tasks.first().is_some_and(Task::gone));
    }

    /// A userfaultfd that cannot be read (the kernel had no descriptor for a forked child)
    /// ends the fill with an error; the task is not taken as gone.
    #[test]
    fn a_userfaultfd_read_error_ends_the_fill() {
        let Some(lab) = Lab::new("fill-read-error") else {
            return;
        };
        let work = lab.work();
        let (mut h, _link) = handler_with_task(&lab, &work);
        // A directory in its place: poll says readable, read fails with EISDIR.
        let dir = rustix::fs::open(
            lab.dir.path(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let _real = h.tasks[0].uffd.replace(dir);
        let err = h.poll_once(Duration::from_millis(5)).unwrap_err();
        assert!(
            err.contains("reading the userfaultfd of task 4242"),
            "{err}"
        );
        assert!(!h.tasks[0].gone());
    }

    /// A fake source page server: answers GETs as CRIU's does (failing on an address outside
    /// the lazy runs), every other answer cut short to `short` pages; answers FORCE_CLOSE with
    /// status 0. Returns the GETs seen and whether PAGE_EOF came.
    fn fake_source(
        rx: mpsc::Receiver<Option<Vec<u8>>>,
        mut answers: UnixStream,
        layout: Layout,
        lazy: Vec<(u64, u64)>,
        short: u64,
    ) -> std::thread::JoinHandle<(Vec<Iov>, bool)> {
        std::thread::spawn(move || {
            let hlen = layout.header_len();
            let mut pending: Vec<u8> = Vec::new();
            let mut gets = Vec::new();
            let mut n = 0u64;
            while let Ok(msg) = rx.recv() {
                let Some(b) = msg else {
                    return (gets, true);
                };
                pending.extend_from_slice(&b);
                while pending.len() >= hlen {
                    let q = Iov::decode(&pending[..hlen], layout).unwrap();
                    pending.drain(..hlen);
                    if q.command() == IOV_FORCE_CLOSE {
                        answers.write_all(&0i32.to_ne_bytes()).unwrap();
                        continue;
                    }
                    assert_eq!(q.command(), IOV_GET);
                    assert_eq!(q.dst_id, PID as u64);
                    let end = q.vaddr + q.nr_pages * PAGE;
                    assert!(
                        lazy.iter().any(|&(a, b)| a <= q.vaddr && end <= b),
                        "GET {q:?} outside the lazy runs"
                    );
                    gets.push(q);
                    n += 1;
                    let pages = if n.is_multiple_of(2) {
                        q.nr_pages.min(short)
                    } else {
                        q.nr_pages
                    };
                    let a = Iov::pages(q.dst_id, q.vaddr, pages);
                    answers.write_all(&a.encode(layout)[..hlen]).unwrap();
                    for p in 0..pages {
                        answers.write_all(&pattern(q.vaddr + p * PAGE)).unwrap();
                    }
                }
            }
            (gets, false)
        })
    }

    type Mangle = fn(Iov) -> Iov;

    /// A remote fill whose source answers the first question with `mangle` of it and leaves
    /// the rest unanswered, started with `ctl`; a thread of the task faults on page 30 and
    /// sets `released` once its read is done. Returns the handler's and the source's threads.
    fn failing_remote_fill(
        lab: &Lab,
        work: &WorkDir,
        mangle: Mangle,
        ctl: Arc<Control>,
        released: Arc<AtomicBool>,
    ) -> (
        std::thread::JoinHandle<Result<Counts, String>>,
        std::thread::JoinHandle<()>,
    ) {
        let layout = Layout::Narrow;
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
        let tx = std::sync::Mutex::new(tx);
        let up: Upstream = Box::new(move |b: Option<&[u8]>| {
            tx.lock()
                .unwrap()
                .send(b.map(<[u8]>::to_vec))
                .map_err(|e| e.to_string())
        });
        let source = std::thread::spawn(move || {
            let hlen = layout.header_len();
            let mut got = Vec::new();
            while got.len() < hlen {
                match rx.recv() {
                    Ok(Some(b)) => got.extend_from_slice(&b),
                    _ => return,
                }
            }
            let q = Iov::decode(&got[..hlen], layout).unwrap();
            let a = mangle(q);
            let _ = theirs.write_all(&a.encode(layout)[..hlen]);
            for p in 0..a.nr_pages {
                let _ = theirs.write_all(&pattern(a.vaddr + p * PAGE));
            }
            // Later questions are taken and left unanswered.
            while rx.recv().is_ok() {}
        });
        let h = Handler::new(
            work.fd.try_clone().unwrap(),
            Pages::Remote {
                answers: Arc::new(OwnedFd::from(ours)),
                up,
                layout,
            },
            ctl,
        )
        .unwrap();
        let run = std::thread::spawn(move || h.run());
        let _link = lab.hand_over();
        let r = lab.region.clone();
        std::thread::spawn(move || {
            let _ = r.page(30);
            released.store(true, Ordering::SeqCst);
        });
        (run, source)
    }

    /// A source whose answer does not match the question (another address, another task, no
    /// pages, more pages than asked): the fill ends with an error naming it, and stops the
    /// task before it closes the task's userfaultfd (closed, it would let the waiting thread
    /// read a zero page).
    #[test]
    fn a_mismatched_answer_ends_the_fill() {
        let cases: [(&str, Mangle); 4] = [
            ("address", |q| {
                Iov::pages(q.dst_id, q.vaddr + PAGE, q.nr_pages)
            }),
            ("task", |q| Iov::pages(q.dst_id + 1, q.vaddr, q.nr_pages)),
            ("no pages", |q| Iov::pages(q.dst_id, q.vaddr, 0)),
            ("too many", |q| {
                Iov::pages(q.dst_id, q.vaddr, q.nr_pages + 1)
            }),
        ];
        for (what, mangle) in cases {
            let Some(lab) = Lab::new("fill-bad-answer") else {
                return;
            };
            let work = lab.work();
            let ctl = Arc::new(Control::default());
            // The tasks here are this process's own threads (the pid in the images is made
            // up): the hook only notes whether the faulting thread still waited when called.
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let released = Arc::new(AtomicBool::new(false));
            let (s, r) = (seen.clone(), released.clone());
            *ctl.stop_tasks.lock().unwrap() = Some(Box::new(move || {
                // Long enough for a closed userfaultfd to have let the thread go.
                std::thread::sleep(Duration::from_millis(50));
                s.lock().unwrap().push(r.load(Ordering::SeqCst));
                Ok(())
            }));
            let (run, source) =
                failing_remote_fill(&lab, &work, mangle, ctl.clone(), released.clone());
            let err = run.join().unwrap().unwrap_err();
            assert!(err.contains("the source answered"), "{what}: {err}");
            // Called once, while the thread still waited on its fault.
            assert_eq!(*seen.lock().unwrap(), [false], "{what}");
            // Stopped, the task's userfaultfd is closed: the thread here goes on.
            wait_until(|| released.load(Ordering::SeqCst));
            source.join().unwrap();
        }
    }

    /// A failed fill that cannot stop its tasks (no way given yet, or it failed) keeps their
    /// userfaultfds open, the faulting thread waiting, until `release_parked` has stopped them.
    #[test]
    fn a_failed_fill_that_cannot_stop_its_tasks_keeps_their_userfaultfds() {
        for hook_fails in [false, true] {
            let Some(lab) = Lab::new("fill-parked") else {
                return;
            };
            let work = lab.work();
            let ctl = Arc::new(Control::default());
            if hook_fails {
                *ctl.stop_tasks.lock().unwrap() = Some(Box::new(|| Err("no".into())));
            }
            let mangle: Mangle = |q| Iov::pages(q.dst_id, q.vaddr + PAGE, q.nr_pages);
            let released = Arc::new(AtomicBool::new(false));
            let (run, source) =
                failing_remote_fill(&lab, &work, mangle, ctl.clone(), released.clone());
            assert!(run.join().unwrap().is_err());
            std::thread::sleep(Duration::from_millis(50));
            assert!(!released.load(Ordering::SeqCst), "hook fails: {hook_fails}");
            assert_eq!(ctl.parked.lock().unwrap().len(), 1);
            let stopped = Arc::new(AtomicBool::new(false));
            if hook_fails {
                let s = stopped.clone();
                *ctl.stop_tasks.lock().unwrap() = Some(Box::new(move || {
                    s.store(true, Ordering::SeqCst);
                    Ok(())
                }));
            }
            ctl.release_parked();
            assert_eq!(stopped.load(Ordering::SeqCst), hook_fails);
            assert!(ctl.parked.lock().unwrap().is_empty());
            wait_until(|| released.load(Ordering::SeqCst));
            source.join().unwrap();
        }
    }

    /// From the source (`--lazy`), in both header layouts, with short answers: every page
    /// arrives, questions stay inside the lazy runs, the source's page server is closed and
    /// the stream ended.
    #[test]
    fn remote_fill_asks_within_lazy_runs_and_closes_the_source() {
        for layout in [Layout::Narrow, Layout::Wide] {
            let Some(lab) = Lab::new("fill-remote") else {
                return;
            };
            let work = lab.work();
            let (ours, theirs) = UnixStream::pair().unwrap();
            let (tx, rx) = mpsc::channel();
            let tx = std::sync::Mutex::new(tx);
            let up: Upstream = Box::new(move |b: Option<&[u8]>| {
                tx.lock()
                    .unwrap()
                    .send(b.map(<[u8]>::to_vec))
                    .map_err(|e| e.to_string())
            });
            let base = lab.region.addr;
            let lazy_abs: Vec<(u64, u64)> = lab
                .lazy
                .iter()
                .map(|&(a, b)| (base + a * PAGE, base + b * PAGE))
                .collect();
            let source = fake_source(rx, theirs, layout, lazy_abs, 3);
            let ctl = Arc::new(Control::default());
            let h = Handler::new(
                work.fd.try_clone().unwrap(),
                Pages::Remote {
                    answers: Arc::new(OwnedFd::from(ours)),
                    up,
                    layout,
                },
                ctl,
            )
            .unwrap();
            let run = std::thread::spawn(move || h.run());
            let _link = lab.hand_over();
            let seen = lab
                .touch(vec![30, 2, 21, 63])
                .recv_timeout(Duration::from_secs(20))
                .expect("the task hung on a fault");
            for (i, page) in seen.iter().enumerate() {
                assert!(
                    *page == lab.expected(i as u64),
                    "page {i} differs ({layout:?})"
                );
            }
            let c = run.join().unwrap().unwrap();
            assert_eq!(c.bytes_filled, 60 * PAGE, "{layout:?}");
            let (gets, eof) = source.join().unwrap();
            assert!(eof, "PAGE_EOF after the close");
            assert_eq!(gets.len() as u64, c.questions);
            // Each question at most a background chunk.
            assert!(gets.iter().all(|q| q.nr_pages * PAGE <= REMOTE_CHUNK_MAX));
        }
    }
}
