//! `--lazy` on the destination: read-ahead between CRIU's lazy-pages daemon and the source.
//!
//! The daemon asks for exactly the page a task faulted on (criu/uffd.c), and every question is a
//! round trip to the source's page server (~0.2-0.4 ms here). A task walking its memory faults
//! on page after page. haul sits on the daemon's page socket anyway (it relays it through the
//! connection), so it reads the daemon's questions (`criu::page_server` headers): when a fault
//! continues a run of `RUN_TO_READ_AHEAD` pages asked one after the other, haul also asks the
//! source for the pages after it (a window of a quarter of `PREFETCH_WINDOW`, doubling while
//! the walk goes on), keeps the answers in a bounded cache (`PREFETCH_CACHE`) and answers the
//! daemon's next faults from it. Once the daemon starts its background sweep (questions of 16
//! pages and more, lowest address first), haul streams ahead of it (`STREAM_CHUNK`s, at most
//! half the cache ahead) and answers the sweep from the cache, shortened to what is there. The
//! source side is unchanged: it relays bytes to and from its CRIU, which answers haul's
//! questions as it answers the daemon's.
//!
//! Rules that keep the daemon's protocol intact:
//! - The daemon reads answers in the order it asked. A question the cache will answer waits
//!   until the daemon's earlier questions to the source are answered; questions after it are
//!   held until it is answered, so no answer from the source can overtake it (`Ask`).
//! - A lone fault sent to the source brings its neighbour page along: data straddling a page
//!   boundary faults twice, and the second fault then costs no round trip.
//! - The source's page server fails on an address it does not hold, so haul asks only within
//!   one lazy entry of the task's `pagemap-<id>.img` (`criu::pagemap`).
//! - A question the cache cannot answer whole goes to the source unchanged.
//!
//! `HAUL_PREFETCH=off` (environment of `haul serve`) relays the daemon's socket as is.

use crate::criu::page_server::{self, Iov, Layout};
use crate::criu::pagemap::{self, Range};
use crate::transfer::mux::{write_all, PageSink};
use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// How far ahead of a sequential fault haul asks, in bytes.
pub const PREFETCH_WINDOW: u64 = 256 << 10;
/// Chunks of the background stream: what haul asks the source for, ahead of the daemon's own
/// background sweep (which it then answers from the cache).
pub const STREAM_CHUNK: u64 = 64 << 10;
/// Chunks of the background stream on the wire at once: a fault's question waits behind at
/// most these (~0.2 ms each here).
const STREAM_IN_FLIGHT: usize = 2;
/// Most bytes of prefetched pages held at once (received, or asked for and on the way).
pub const PREFETCH_CACHE: u64 = 1 << 20;
/// A fault is taken for a walk through memory once it continues this many pages asked for one
/// after the other (a task reading across a page boundary asks for two).
const RUN_TO_READ_AHEAD: u64 = 3;
/// How many of the daemon's recent questions are remembered to tell a sequential fault.
const RECENT: usize = 16;
/// Bytes read from the daemon's socket at a time.
const READ_CHUNK: usize = 4096;

/// Sends page-protocol bytes to the source (a PAGE_DATA frame).
pub type Upstream = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// Counts for the log at the end of the post-copy.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Questions of the daemon.
    pub asked: u64,
    /// Of these, answered from prefetched pages (whole or the first part).
    pub from_cache: u64,
    /// Pages those answers carried.
    pub pages_from_cache: u64,
    /// Pages haul asked the source for ahead of the daemon.
    pub prefetched: u64,
    /// Prefetched pages dropped unused (evicted or left at the end).
    pub unused: u64,
}

/// A question on the wire to the source, in the order sent.
#[derive(Debug)]
enum Wire {
    /// The daemon's; the answer is streamed to it.
    Daemon,
    /// haul's own read-ahead (`stream`: part of the background stream).
    Own {
        dst: u64,
        vaddr: u64,
        pages: u64,
        stream: bool,
    },
    /// The daemon's close; answered by a 4-byte status.
    Close,
}

/// A question of the daemon not answered yet, in the order asked. Order kept: questions
/// behind a `Cache` question are `Held` until it is answered, so a `Wire` question never
/// follows a `Cache` one and no answer from the source can overtake it.
#[derive(Debug, Clone, Copy)]
enum Ask {
    /// Sent to the source; its answer is the next one for the daemon on the wire.
    Wire,
    /// To be answered from the cache once its pages are there.
    Cache(Iov),
    /// Waiting behind a `Cache` question; decided when it reaches the head.
    Held(Iov),
}

/// Where the bytes of the current answer from the source go.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// Reading a header (`have` of its bytes).
    Header {
        buf: [u8; page_server::HEADER],
        have: usize,
    },
    /// Reading a close status (`have` of its bytes).
    Status { have: usize },
    /// `left` bytes of pages for the daemon.
    ToDaemon { left: u64 },
    /// Pages of a read-ahead: the page at `addr` goes to `slot`, `have` of its bytes are there;
    /// `left` pages to go, this one included.
    ToCache {
        dst: u64,
        addr: u64,
        slot: Option<usize>,
        have: usize,
        left: u64,
    },
}

const NEXT_HEADER: Reply = Reply::Header {
    buf: [0; page_server::HEADER],
    have: 0,
};

/// Prefetched pages: at most `cap`, received or on the way, in one buffer allocated at the
/// first read-ahead.
struct Cache {
    page: usize,
    cap: usize,
    buf: Vec<u8>,
    free: Vec<usize>,
    /// (image id, address) → slot, for pages received in full.
    index: HashMap<(u64, u64), usize>,
    /// Received pages, oldest first (the eviction order); may name pages already taken.
    order: VecDeque<(u64, u64)>,
    /// Slots promised to read-aheads on the wire.
    reserved: usize,
}

impl Cache {
    fn new(page: usize, bytes: u64) -> Cache {
        let cap = usize::try_from(bytes).unwrap_or(usize::MAX) / page.max(1);
        Cache {
            page,
            cap,
            buf: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            order: VecDeque::new(),
            reserved: 0,
        }
    }

    fn has(&self, dst: u64, addr: u64) -> bool {
        self.index.contains_key(&(dst, addr))
    }

    /// Room for `n` more pages on the way, evicting the oldest received pages that `keep`
    /// does not protect. False (nothing reserved) if there is no such room.
    fn reserve(&mut self, n: usize, keep: impl Fn(u64, u64) -> bool, counts: &mut Counts) -> bool {
        if n > self.cap {
            return false;
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; self.cap * self.page];
            self.free = (0..self.cap).rev().collect();
        }
        let mut kept = VecDeque::new();
        while self.free.len() < self.reserved + n {
            let Some((dst, addr)) = self.order.pop_front() else {
                break;
            };
            if !self.index.contains_key(&(dst, addr)) {
                continue;
            }
            if keep(dst, addr) {
                kept.push_back((dst, addr));
                continue;
            }
            if let Some(slot) = self.index.remove(&(dst, addr)) {
                self.free.push(slot);
                counts.unused += 1;
            }
        }
        while let Some(k) = kept.pop_back() {
            self.order.push_front(k);
        }
        if self.free.len() < self.reserved + n {
            return false;
        }
        self.reserved += n;
        true
    }

    /// A slot for a page of a read-ahead arriving (reserved before).
    fn slot_for(&mut self) -> Option<usize> {
        if self.reserved == 0 {
            return None;
        }
        self.reserved -= 1;
        self.free.pop()
    }

    /// A page arrived in full in `slot`.
    fn filled(&mut self, dst: u64, addr: u64, slot: usize) {
        if let Some(old) = self.index.insert((dst, addr), slot) {
            self.free.push(old);
        }
        self.order.push_back((dst, addr));
        // Names of pages taken meanwhile pile up in `order`: drop them now and then.
        if self.order.len() > 2 * self.cap {
            let index = &self.index;
            self.order.retain(|k| index.contains_key(k));
        }
    }

    fn page_mut(&mut self, slot: usize) -> &mut [u8] {
        let p = self.page;
        self.buf
            .get_mut(slot * p..(slot + 1) * p)
            .unwrap_or_default()
    }
}

struct State {
    /// Questions on the wire to the source, in the order sent.
    wire: VecDeque<Wire>,
    /// The daemon's questions not answered yet, in the order asked.
    asks: VecDeque<Ask>,
    reply: Reply,
    cache: Cache,
    /// Lazy ranges per image id (None: its pagemap is unreadable; no read-ahead for it).
    ranges: HashMap<u64, Option<Vec<Range>>>,
    /// (image id, end address, pages in its run) of the daemon's recent questions.
    recent: VecDeque<(u64, u64, u64)>,
    /// Per image id: the stream of read-ahead windows (start of the first, end of the last)
    /// and the size of the last one.
    ahead: HashMap<u64, (u64, u64, u64)>,
    /// Per image id: where the background stream goes on (after the daemon's latest
    /// background question).
    /// (where the daemon's latest background question started, where the stream goes on).
    stream: HashMap<u64, (u64, u64)>,
    /// The daemon asked to close: nothing more goes to the source for the cache.
    closing: bool,
    counts: Counts,
}

impl State {
    /// Whether the cache will answer `q`: a fault (one page) once its page is there, a longer
    /// question with as many of its first pages as are there once the first is (the daemon
    /// takes a shorter answer and asks again for the rest).
    fn answerable(&self, q: &Iov, page: u64) -> bool {
        if q.command() != page_server::IOV_GET || q.nr_pages == 0 {
            return false;
        }
        self.cache.has(q.dst_id, q.vaddr) || on_the_way(&self.wire, q.dst_id, q.vaddr, page)
    }

    /// How many of the first pages of `q` the cache holds (at most its capacity).
    fn leading_cached(&self, q: &Iov, page: u64) -> u64 {
        pages(q, page)
            .take(self.cache.cap)
            .take_while(|&a| self.cache.has(q.dst_id, a))
            .count() as u64
    }
}

/// The pages of a question.
fn pages(q: &Iov, page: u64) -> impl Iterator<Item = u64> + '_ {
    (0..q.nr_pages).map(move |i| q.vaddr.wrapping_add(i.wrapping_mul(page)))
}

/// Whether a read-ahead on the wire covers page `addr` of task `dst`.
fn on_the_way(wire: &VecDeque<Wire>, dst: u64, addr: u64, page: u64) -> bool {
    wire.iter().any(|w| match *w {
        Wire::Own {
            dst: d,
            vaddr,
            pages,
            ..
        } => d == dst && vaddr <= addr && addr < vaddr.saturating_add(pages.saturating_mul(page)),
        _ => false,
    })
}

fn daemon_gone(e: rustix::io::Errno) -> String {
    format!("writing to the lazy-pages daemon: {e}")
}

/// The filter on the daemon's page socket. The connection's reader hands it the source's
/// answers (`PageSink::put`); `run_outbound` reads the daemon's questions.
pub struct Prefetch {
    daemon: Arc<OwnedFd>,
    upstream: Upstream,
    images: PathBuf,
    layout: Layout,
    page: u64,
    window: u64,
    state: Mutex<State>,
}

/// A header as it goes on the page socket: its layout's first bytes.
struct HeaderBytes([u8; page_server::HEADER], usize);

impl HeaderBytes {
    fn as_slice(&self) -> &[u8] {
        self.0.get(..self.1).unwrap_or_default()
    }
}

impl Prefetch {
    /// `daemon`: haul's end of the daemon's page socket; `images`: the migration directory
    /// (pagemap images); `upstream` sends bytes to the source's page server; `layout`: the
    /// header layout of the local CRIU (the source's must be the same).
    pub fn new(
        daemon: Arc<OwnedFd>,
        images: PathBuf,
        upstream: Upstream,
        layout: Layout,
    ) -> Prefetch {
        let page = rustix::param::page_size() as u64;
        Prefetch::with_sizes(
            daemon,
            images,
            upstream,
            layout,
            page,
            PREFETCH_WINDOW,
            PREFETCH_CACHE,
        )
    }

    pub fn with_sizes(
        daemon: Arc<OwnedFd>,
        images: PathBuf,
        upstream: Upstream,
        layout: Layout,
        page: u64,
        window: u64,
        cache: u64,
    ) -> Prefetch {
        let page = page.max(1);
        Prefetch {
            daemon,
            upstream,
            images,
            layout,
            page,
            window: window.max(page),
            state: Mutex::new(State {
                wire: VecDeque::new(),
                asks: VecDeque::new(),
                reply: NEXT_HEADER,
                cache: Cache::new(usize::try_from(page).unwrap_or(4096), cache),
                ranges: HashMap::new(),
                recent: VecDeque::new(),
                ahead: HashMap::new(),
                stream: HashMap::new(),
                closing: false,
                counts: Counts::default(),
            }),
        }
    }

    fn bytes(&self, q: &Iov) -> HeaderBytes {
        HeaderBytes(q.encode(self.layout), self.layout.header_len())
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, String> {
        self.state
            .lock()
            .map_err(|_| "prefetch state lock poisoned".to_string())
    }

    /// What happened so far.
    pub fn counts(&self) -> Counts {
        self.lock()
            .map(|s| {
                let mut c = s.counts;
                c.unused += s.cache.index.len() as u64;
                c
            })
            .unwrap_or_default()
    }

    /// One question of the daemon, as if read from its socket (tests and fuzzing).
    pub fn ask(&self, q: Iov) -> Result<(), String> {
        let mut st = self.lock()?;
        self.question(&mut st, q)
    }

    /// What must hold whatever the source sent: the cache within its bounds, every question
    /// of the daemon still counted once.
    pub fn invariants(&self) -> Result<(), String> {
        let st = self.lock()?;
        let c = &st.cache;
        if c.index.len() + c.reserved > c.cap {
            return Err(format!(
                "cache: {} pages held and {} promised; the capacity is {}",
                c.index.len(),
                c.reserved,
                c.cap
            ));
        }
        let filling = usize::from(matches!(st.reply, Reply::ToCache { slot: Some(_), .. }));
        if !c.buf.is_empty() && c.free.len() + c.index.len() + filling != c.cap {
            return Err(format!(
                "cache: {} slots free, {} held, {filling} filling; the capacity is {}",
                c.free.len(),
                c.index.len(),
                c.cap
            ));
        }
        if c.reserved > c.free.len() {
            return Err(format!(
                "cache: {} slots promised, {} free",
                c.reserved,
                c.free.len()
            ));
        }
        let daemon_on_wire = st
            .wire
            .iter()
            .filter(|w| matches!(w, Wire::Daemon | Wire::Close))
            .count();
        let asks_on_wire = st.asks.iter().filter(|a| matches!(a, Ask::Wire)).count();
        if daemon_on_wire != asks_on_wire {
            return Err(format!(
                "{daemon_on_wire} of the daemon's questions on the wire, {asks_on_wire} waiting for the wire"
            ));
        }
        Ok(())
    }

    /// Relays the daemon's questions until it closes its socket; returns the bytes it sent.
    /// On an error the daemon's socket is shut down (the daemon fails, the post-copy with it).
    pub fn run_outbound(&self) -> Result<u64, String> {
        let r = self.outbound();
        if r.is_err() {
            let _ = rustix::net::shutdown(&*self.daemon, rustix::net::Shutdown::Both);
        }
        r
    }

    fn outbound(&self) -> Result<u64, String> {
        let mut buf = [0u8; READ_CHUNK];
        let mut have = 0usize;
        let mut total = 0u64;
        loop {
            let room = buf.get_mut(have..).unwrap_or_default();
            let n = match rustix::io::read(&*self.daemon, room) {
                Ok(0) => break,
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(format!("reading the lazy-pages daemon's questions: {e}")),
            };
            total += n as u64;
            have += n;
            let hlen = self.layout.header_len();
            let whole = have - have % hlen;
            {
                let mut st = self.lock()?;
                for q in buf.get(..whole).unwrap_or_default().chunks_exact(hlen) {
                    if let Some(q) = Iov::decode(q, self.layout) {
                        self.question(&mut st, q)?;
                    }
                }
            }
            buf.copy_within(whole..have, 0);
            have -= whole;
        }
        if have != 0 {
            return Err(format!(
                "the lazy-pages daemon closed its socket in the middle of a question ({have} bytes)"
            ));
        }
        Ok(total)
    }

    /// Sends a question of the daemon to the source.
    fn send(&self, st: &mut State, q: &Iov) -> Result<(), String> {
        (self.upstream)(self.bytes(q).as_slice())?;
        st.wire.push_back(match q.command() {
            page_server::IOV_CLOSE | page_server::IOV_FORCE_CLOSE => Wire::Close,
            // A GET, or a command haul does not know: its answer is a header and pages.
            _ => Wire::Daemon,
        });
        Ok(())
    }

    /// One question of the daemon.
    fn question(&self, st: &mut State, q: Iov) -> Result<(), String> {
        let get = q.command() == page_server::IOV_GET;
        if get {
            st.counts.asked += 1;
        }
        if matches!(
            q.command(),
            page_server::IOV_CLOSE | page_server::IOV_FORCE_CLOSE
        ) {
            st.closing = true;
        }
        // Pages in the run of consecutive questions this one continues (itself included).
        let run = st
            .recent
            .iter()
            .rev()
            .find(|r| r.0 == q.dst_id && r.1 == q.vaddr)
            .map_or(0, |r| r.2)
            .saturating_add(q.nr_pages);
        let in_window = st
            .ahead
            .get(&q.dst_id)
            .is_some_and(|a| a.0 <= q.vaddr && q.vaddr < a.1);
        let sequential = get && (in_window || run >= RUN_TO_READ_AHEAD);
        if get {
            if let Some(end) = q
                .nr_pages
                .checked_mul(self.page)
                .and_then(|n| q.vaddr.checked_add(n))
            {
                if st.recent.len() == RECENT {
                    st.recent.pop_front();
                }
                st.recent.push_back((q.dst_id, end, run));
                // A background question (the daemon's own sweep): the stream goes on after
                // it, unless it is already further along inside it.
                if q.nr_pages > 1 {
                    let c = st.stream.entry(q.dst_id).or_insert((q.vaddr, end));
                    c.0 = q.vaddr;
                    if c.1 < q.vaddr {
                        c.1 = end;
                    }
                }
            }
        }
        let behind_cache = st
            .asks
            .iter()
            .any(|a| matches!(a, Ask::Cache(_) | Ask::Held(_)));
        if behind_cache {
            st.asks.push_back(Ask::Held(q));
        } else if st.answerable(&q, self.page) {
            st.asks.push_back(Ask::Cache(q));
        } else {
            self.send(st, &q)?;
            st.asks.push_back(Ask::Wire);
        }
        let next = q.vaddr.saturating_add(self.page);
        if sequential && q.nr_pages == 1 {
            self.read_ahead(st, q.dst_id, next)?;
        } else if get
            && q.nr_pages == 1
            && matches!(st.asks.back(), Some(Ask::Wire))
            && !st.cache.has(q.dst_id, next)
            && !on_the_way(&st.wire, q.dst_id, next, self.page)
        {
            // A lone fault sent to the source: its neighbour comes along (data that straddles
            // a page boundary faults twice, one round trip each otherwise).
            self.fetch(st, q.dst_id, next, self.page, false)?;
        }
        self.answer_ready(st)?;
        self.pump(st)
    }

    /// Keeps the background stream going: for each task whose daemon started its background
    /// sweep, up to `STREAM_IN_FLIGHT` chunks of `STREAM_CHUNK` on the wire, in address order
    /// through its lazy entries, into free cache room only.
    fn pump(&self, st: &mut State) -> Result<(), String> {
        if st.closing {
            return Ok(());
        }
        let tasks: Vec<u64> = st.stream.keys().copied().collect();
        for dst in tasks {
            loop {
                let in_flight = st
                    .wire
                    .iter()
                    .filter(|w| matches!(w, Wire::Own { stream: true, .. }))
                    .count();
                if in_flight >= STREAM_IN_FLIGHT {
                    return Ok(());
                }
                let Some(&(from, cursor)) = st.stream.get(&dst) else {
                    break;
                };
                // At most half the cache ahead of the daemon: the rest stays for read-ahead.
                if cursor.saturating_sub(from) / self.page >= (st.cache.cap / 2) as u64 {
                    return Ok(());
                }
                self.load_ranges(st, dst);
                let next = match st.ranges.get(&dst) {
                    Some(Some(r)) => r
                        .get(r.partition_point(|e| e.1 <= cursor))
                        .map(|e| e.0.max(cursor)),
                    _ => None,
                };
                let Some(start) = next else {
                    // Past the last lazy entry (or no pagemap): this task's stream is over.
                    st.stream.remove(&dst);
                    break;
                };
                match self.fetch(st, dst, start, STREAM_CHUNK, true)? {
                    Some(end) => {
                        st.stream.insert(dst, (from, end));
                    }
                    None => return Ok(()),
                }
            }
        }
        Ok(())
    }

    /// Reads the lazy entries of task `dst` once (None on error: no read-ahead for it).
    fn load_ranges(&self, st: &mut State, dst: u64) {
        let images = &self.images;
        let page = self.page;
        st.ranges.entry(dst).or_insert_with(|| {
            pagemap::read_lazy_ranges(images, dst, page)
                .map_err(|e| log::warn!("no read-ahead for task {dst}: {e}"))
                .ok()
        });
    }

    /// Asks the source for the window after `from`, within the lazy range holding it, unless
    /// the last window still reaches far enough.
    fn read_ahead(&self, st: &mut State, dst: u64, from: u64) -> Result<(), String> {
        // The stream of windows so far (a0..a1): the next one starts where it ends and is
        // twice as long, up to `window`; a new stream starts with a quarter of it.
        let mut start = from;
        let mut stream = from;
        let mut size = (self.window / 4).max(self.page);
        if let Some(&(a0, a1, last)) = st.ahead.get(&dst) {
            if a0 <= from && from <= a1 {
                if a1 - from > last / 2 {
                    return Ok(());
                }
                start = a1;
                stream = a0;
                size = last.saturating_mul(2).min(self.window);
            }
        }
        if let Some(end) = self.fetch(st, dst, start, size, false)? {
            st.ahead.insert(dst, (stream, end, size));
        }
        Ok(())
    }

    /// Asks the source for up to `size` bytes from `start`, cut at the end of the lazy entry
    /// holding `start`, if the cache has room. Returns the end of what was asked for.
    fn fetch(
        &self,
        st: &mut State,
        dst: u64,
        start: u64,
        size: u64,
        stream: bool,
    ) -> Result<Option<u64>, String> {
        self.load_ranges(st, dst);
        let Some(Some(ranges)) = st.ranges.get(&dst) else {
            return Ok(None);
        };
        // Within one pagemap entry: the source's page server holds each as one run and would
        // answer a longer question short.
        let Some((_, range_end)) = pagemap::containing(ranges, start) else {
            return Ok(None);
        };
        let end = range_end.min(start.saturating_add(size));
        let n = (end - start) / self.page;
        if n == 0 {
            return Ok(None);
        }
        // The pages the question at the head waits for stay, and the stream's pages ahead of
        // the daemon's sweep; older pages nobody asked for make room.
        let head = match st.asks.front() {
            Some(Ask::Cache(q)) => Some(*q),
            _ => None,
        };
        let page = self.page;
        let streams: Vec<(u64, u64, u64)> =
            st.stream.iter().map(|(&d, &(f, c))| (d, f, c)).collect();
        let keep = move |d: u64, a: u64| {
            head.is_some_and(|q| {
                q.dst_id == d
                    && q.vaddr <= a
                    && a < q.vaddr.saturating_add(q.nr_pages.saturating_mul(page))
            }) || streams.iter().any(|&(sd, f, c)| sd == d && f <= a && a < c)
        };
        let n_pages = usize::try_from(n).unwrap_or(usize::MAX);
        let mut counts = st.counts;
        let room = st.cache.reserve(n_pages, keep, &mut counts);
        st.counts = counts;
        if !room {
            return Ok(None);
        }
        (self.upstream)(self.bytes(&Iov::get(dst, start, n)).as_slice())?;
        st.wire.push_back(Wire::Own {
            dst,
            vaddr: start,
            pages: n,
            stream,
        });
        st.counts.prefetched += n;
        Ok(Some(end))
    }

    /// Answers the daemon's questions at the head of the queue that the cache can answer now;
    /// decides held questions as they reach the head; sends to the source what the cache
    /// will not answer.
    fn answer_ready(&self, st: &mut State) -> Result<(), String> {
        loop {
            let q = match st.asks.front() {
                None | Some(Ask::Wire) => return Ok(()),
                Some(Ask::Held(q)) => {
                    let q = *q;
                    let cacheable = st.answerable(&q, self.page);
                    if let Some(a) = st.asks.front_mut() {
                        *a = if cacheable { Ask::Cache(q) } else { Ask::Wire };
                    }
                    if !cacheable {
                        self.send(st, &q)?;
                        return self.send_held(st);
                    }
                    continue;
                }
                Some(Ask::Cache(q)) => *q,
            };
            let k = st.leading_cached(&q, self.page);
            if k == 0 {
                if on_the_way(&st.wire, q.dst_id, q.vaddr, self.page) {
                    return Ok(());
                }
                // Its first page will not come (evicted, or a short answer): ask the source.
                self.send(st, &q)?;
                if let Some(a) = st.asks.front_mut() {
                    *a = Ask::Wire;
                }
                return self.send_held(st);
            }
            let head = self.bytes(&Iov::pages(q.dst_id, q.vaddr, k));
            write_all(&self.daemon, head.as_slice()).map_err(daemon_gone)?;
            for a in pages(&q, self.page).take(usize::try_from(k).unwrap_or(usize::MAX)) {
                if let Some(slot) = st.cache.index.remove(&(q.dst_id, a)) {
                    let r = write_all(&self.daemon, st.cache.page_mut(slot));
                    st.cache.free.push(slot);
                    r.map_err(daemon_gone)?;
                }
            }
            st.counts.from_cache += 1;
            st.counts.pages_from_cache += k;
            st.asks.pop_front();
        }
    }

    /// The head went to the source: the questions held behind it follow it there, in order.
    fn send_held(&self, st: &mut State) -> Result<(), String> {
        let held: Vec<Iov> = st
            .asks
            .iter()
            .filter_map(|a| match a {
                Ask::Held(q) => Some(*q),
                _ => None,
            })
            .collect();
        for q in &held {
            self.send(st, q)?;
        }
        for a in st.asks.iter_mut() {
            if matches!(a, Ask::Held(_)) {
                *a = Ask::Wire;
            }
        }
        Ok(())
    }

    /// The source's answers, as they arrive.
    /// The source's answers, as they arrive. Pages for the daemon are written with the lock
    /// released (the daemon may be slow to read; its next questions must still go out): no
    /// other write to the daemon can come meanwhile, since its question at the head of the
    /// queue is the one being answered.
    fn answers(&self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let mut st = self.lock()?;
            if let Reply::ToDaemon { left } = st.reply {
                if left > 0 {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    st.reply = Reply::ToDaemon {
                        left: left - take as u64,
                    };
                    drop(st);
                    let (now, rest) = bytes.split_at(take);
                    write_all(&self.daemon, now).map_err(daemon_gone)?;
                    bytes = rest;
                    let mut st = self.lock()?;
                    self.finish_if_done(&mut st)?;
                    continue;
                }
            }
            let reply = st.reply;
            let (next, used) = self.advance(&mut st, reply, bytes)?;
            st.reply = next;
            bytes = bytes.get(used..).unwrap_or_default();
            self.finish_if_done(&mut st)?;
        }
        Ok(())
    }

    /// If the answer in progress is complete: its question is done, the next answer starts.
    fn finish_if_done(&self, st: &mut State) -> Result<(), String> {
        let done = match st.reply {
            Reply::ToDaemon { left } | Reply::ToCache { left, .. } => left == 0,
            Reply::Status { have } => have == page_server::CLOSE_STATUS,
            Reply::Header { .. } => false,
        };
        if done {
            if let Some(Wire::Daemon | Wire::Close) = st.wire.pop_front() {
                st.asks.pop_front();
            }
            st.reply = NEXT_HEADER;
            self.answer_ready(st)?;
            self.pump(st)?;
        }
        Ok(())
    }

    /// Takes what it can of `bytes` for the answer in progress; returns its new state and how
    /// many bytes it used.
    fn advance(
        &self,
        st: &mut State,
        reply: Reply,
        bytes: &[u8],
    ) -> Result<(Reply, usize), String> {
        Ok(match reply {
            Reply::Header { mut buf, have } => {
                if have == 0 && matches!(st.wire.front(), Some(Wire::Close)) {
                    return Ok((Reply::Status { have: 0 }, 0));
                }
                let hlen = self.layout.header_len();
                let take = (hlen - have).min(bytes.len());
                buf[have..have + take].copy_from_slice(&bytes[..take]);
                if have + take < hlen {
                    return Ok((
                        Reply::Header {
                            buf,
                            have: have + take,
                        },
                        take,
                    ));
                }
                let a = Iov::decode(&buf[..hlen], self.layout)
                    .ok_or("prefetch: a header shorter than its layout")?;
                let len = a
                    .nr_pages
                    .checked_mul(self.page)
                    .ok_or_else(|| format!("the source answered with {} pages", a.nr_pages))?;
                let next = match st.wire.front() {
                    Some(Wire::Daemon) => {
                        write_all(&self.daemon, &buf[..hlen]).map_err(daemon_gone)?;
                        Reply::ToDaemon { left: len }
                    }
                    Some(&Wire::Own {
                        dst, vaddr, pages, ..
                    }) => {
                        if a.dst_id != dst || a.vaddr != vaddr || a.nr_pages > pages {
                            return Err(format!(
                                "the source answered {} pages at {:#x} of task {} to a read-ahead of {pages} pages at {vaddr:#x} of task {dst}",
                                a.nr_pages, a.vaddr, a.dst_id
                            ));
                        }
                        // Slots promised to pages the answer does not carry are free again.
                        let short = usize::try_from(pages - a.nr_pages).unwrap_or(0);
                        st.cache.reserved = st.cache.reserved.saturating_sub(short);
                        Reply::ToCache {
                            dst,
                            addr: vaddr,
                            slot: None,
                            have: 0,
                            left: a.nr_pages,
                        }
                    }
                    Some(Wire::Close) | None => {
                        return Err("the source sent page data nobody asked for".into())
                    }
                };
                (next, take)
            }
            Reply::Status { have } => {
                let take = (page_server::CLOSE_STATUS - have).min(bytes.len());
                write_all(&self.daemon, &bytes[..take]).map_err(daemon_gone)?;
                (Reply::Status { have: have + take }, take)
            }
            Reply::ToDaemon { left } => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                write_all(&self.daemon, &bytes[..take]).map_err(daemon_gone)?;
                (
                    Reply::ToDaemon {
                        left: left - take as u64,
                    },
                    take,
                )
            }
            Reply::ToCache {
                dst,
                addr,
                slot,
                have,
                left,
            } => {
                let slot = match slot {
                    Some(s) => s,
                    None => st
                        .cache
                        .slot_for()
                        .ok_or("prefetch cache: a page arrived without a slot")?,
                };
                let page = st.cache.page;
                let take = (page - have).min(bytes.len());
                if let Some(dst_bytes) = st.cache.page_mut(slot).get_mut(have..have + take) {
                    dst_bytes.copy_from_slice(&bytes[..take]);
                }
                if have + take < page {
                    return Ok((
                        Reply::ToCache {
                            dst,
                            addr,
                            slot: Some(slot),
                            have: have + take,
                            left,
                        },
                        take,
                    ));
                }
                st.cache.filled(dst, addr, slot);
                (
                    Reply::ToCache {
                        dst,
                        addr: addr.wrapping_add(self.page),
                        slot: None,
                        have: 0,
                        left: left - 1,
                    },
                    take,
                )
            }
        })
    }
}

impl PageSink for Prefetch {
    fn put(&self, bytes: &[u8]) -> Result<(), String> {
        let r = self
            .answers(bytes)
            .map_err(|e| format!("post-copy page stream: {e}"));
        if r.is_err() {
            let _ = rustix::net::shutdown(&*self.daemon, rustix::net::Shutdown::Both);
        }
        r
    }

    fn end(&self) {
        let _ = rustix::net::shutdown(&*self.daemon, rustix::net::Shutdown::Write);
    }

    fn lost(&self, farewell: Option<&[u8]>) {
        if let Some(b) = farewell {
            let _ = write_all(&self.daemon, b);
        }
        let _ = rustix::net::shutdown(&*self.daemon, rustix::net::Shutdown::Both);
    }
}

/// The relay thread of the daemon's questions: bytes relayed, or why it stopped.
pub type RelayThread = std::thread::JoinHandle<Result<u64, crate::transfer::WireError>>;

/// Whether `haul serve` reads ahead (`HAUL_PREFETCH=off` turns it off).
pub fn enabled() -> bool {
    !matches!(std::env::var_os("HAUL_PREFETCH"), Some(v) if v == "off")
}

/// Relays the daemon's page socket through `conn` for the post-copy: through a `Prefetch`
/// unless turned off. Returns the relay thread (bytes the daemon sent) and the filter, for
/// its counts.
pub fn start_relay(
    daemon: Arc<OwnedFd>,
    images: PathBuf,
    conn: &crate::transfer::Conn,
    criu: crate::criu::Version,
) -> Result<(RelayThread, Option<Arc<Prefetch>>), crate::transfer::WireError> {
    use crate::transfer::{frame::Kind, mux, WireError};
    if !enabled() {
        conn.set_page_sink(daemon.clone());
        let h =
            crate::transfer::pages::spawn_outbound(daemon, conn.sender(), conn.counters.clone())?;
        return Ok((h, None));
    }
    let tx = conn.sender();
    let counters = conn.counters.clone();
    let upstream: Upstream = Box::new(move |b: &[u8]| {
        counters
            .pages_out
            .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        mux::send_frame(&tx, Kind::PageData, b).map_err(|e| e.to_string())
    });
    let p = Arc::new(Prefetch::new(daemon, images, upstream, Layout::of(criu)));
    conn.set_page_filter(p.clone());
    let (relay, tx) = (p.clone(), conn.sender());
    let h = std::thread::Builder::new()
        .name("haul-prefetch".into())
        .spawn(move || {
            let n = relay.run_outbound().map_err(WireError::Protocol)?;
            mux::send_frame(&tx, Kind::PageEof, &[])?;
            Ok(n)
        })
        .map_err(|err| WireError::Io {
            op: "spawn prefetch thread",
            err,
        })?;
    Ok((h, Some(p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::page_server::HEADER;
    use crate::criu::pagemap::{test_image, PE_LAZY};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;

    const PAGE: u64 = 4096;
    const TASK: u64 = 7;

    /// The bytes of page `addr` of task `dst` at the source.
    fn content(dst: u64, addr: u64) -> Vec<u8> {
        let mut p = vec![0u8; PAGE as usize];
        for (i, c) in p.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&(dst ^ addr ^ (i as u64) << 48).to_le_bytes());
        }
        p
    }

    /// A world around one `Prefetch`: the daemon's end of its socket, a fake source page
    /// server (a thread answering what reaches it, as CRIU's does, failing on an address
    /// outside `ranges`) and the relay thread. `split`: the source's answers reach the filter
    /// in pieces of this many bytes.
    struct World {
        layout: Layout,
        daemon: UnixStream,
        filter: Arc<Prefetch>,
        source: Option<std::thread::JoinHandle<Result<Vec<Iov>, String>>>,
        relay: Option<std::thread::JoinHandle<Result<u64, String>>>,
        link: Arc<Mutex<Option<mpsc::Sender<Vec<u8>>>>>,
        _dir: crate::inspect::test_support::TempDir,
    }

    impl World {
        fn new(ranges: &[(u64, u32)], split: usize) -> World {
            World::with_layout(ranges, split, Layout::Wide)
        }

        fn with_layout(ranges: &[(u64, u32)], split: usize, layout: Layout) -> World {
            let hlen = layout.header_len();
            let dir = crate::inspect::test_support::TempDir::new("prefetch").unwrap();
            let entries: Vec<(u64, u32, u32)> =
                ranges.iter().map(|&(a, n)| (a, n, PE_LAZY)).collect();
            std::fs::write(
                dir.path().join(format!("pagemap-{TASK}.img")),
                test_image(&entries),
            )
            .unwrap();
            let lazy: Vec<(u64, u64)> = ranges
                .iter()
                .map(|&(a, n)| (a, a + u64::from(n) * PAGE))
                .collect();
            let (daemon, ours) = UnixStream::pair().unwrap();
            let (to_source, source_rx) = mpsc::channel::<Vec<u8>>();
            let to_source = Arc::new(Mutex::new(Some(to_source)));
            let link = to_source.clone();
            let upstream: Upstream = Box::new(move |b: &[u8]| match &*link.lock().unwrap() {
                Some(tx) => tx.send(b.to_vec()).map_err(|e| e.to_string()),
                None => Err("link closed".into()),
            });
            let filter = Arc::new(Prefetch::with_sizes(
                Arc::new(OwnedFd::from(ours)),
                dir.path().to_path_buf(),
                upstream,
                layout,
                PAGE,
                16 * PAGE,
                64 * PAGE,
            ));
            let f = filter.clone();
            let source = std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut pending = Vec::new();
                while let Ok(b) = source_rx.recv() {
                    pending.extend_from_slice(&b);
                    while pending.len() >= hlen {
                        let q = Iov::decode(&pending[..hlen], layout).unwrap();
                        pending.drain(..hlen);
                        seen.push(q);
                        let mut answer = Vec::new();
                        if q.command() == page_server::IOV_FORCE_CLOSE {
                            answer.extend_from_slice(&0i32.to_ne_bytes());
                        } else {
                            let Some(r) = lazy.iter().find(|r| r.0 <= q.vaddr && q.vaddr < r.1)
                            else {
                                return Err(format!("asked for {:#x}, not held", q.vaddr));
                            };
                            // Clamped to the run, as CRIU's page_pipe_read does.
                            let n = q.nr_pages.min((r.1 - q.vaddr) / PAGE);
                            answer.extend_from_slice(
                                &Iov::pages(q.dst_id, q.vaddr, n).encode(layout)[..hlen],
                            );
                            for i in 0..n {
                                answer.extend_from_slice(&content(q.dst_id, q.vaddr + i * PAGE));
                            }
                        }
                        for piece in answer.chunks(split) {
                            f.put(piece)?;
                        }
                    }
                }
                Ok(seen)
            });
            let f = filter.clone();
            let relay = std::thread::spawn(move || f.run_outbound());
            World {
                layout,
                daemon,
                filter,
                source: Some(source),
                relay: Some(relay),
                link: to_source,
                _dir: dir,
            }
        }

        /// Waits (at most 200 ms) until the filter has fetched nothing new for 2 ms: the
        /// stream's chunks in flight have arrived.
        fn settle(&self) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
            let mut last = self.filter.counts().prefetched;
            let mut still = 0;
            while still < 2 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
                let now = self.filter.counts().prefetched;
                still = if now == last { still + 1 } else { 0 };
                last = now;
            }
        }

        fn ask(&mut self, q: &Iov) {
            self.daemon
                .write_all(&q.encode(self.layout)[..self.layout.header_len()])
                .unwrap();
        }

        /// Reads one answer and checks it carries `q`'s pages (all of them, or the first `n`).
        fn expect(&mut self, q: &Iov, n: u64) {
            let mut h = vec![0u8; self.layout.header_len()];
            self.daemon.read_exact(&mut h).unwrap();
            let a = Iov::decode(&h, self.layout).unwrap();
            assert_eq!(a, Iov::pages(q.dst_id, q.vaddr, n), "answer to {q:?}");
            for i in 0..n {
                let mut p = vec![0u8; PAGE as usize];
                self.daemon.read_exact(&mut p).unwrap();
                assert!(
                    p == content(q.dst_id, q.vaddr + i * PAGE),
                    "page {i} of the answer to {q:?}"
                );
            }
        }

        /// Reads one answer to `q` that may be short (as CRIU's daemon takes it); checks its
        /// pages and returns how many came.
        fn expect_some(&mut self, q: &Iov) -> u64 {
            let mut h = vec![0u8; self.layout.header_len()];
            self.daemon.read_exact(&mut h).unwrap();
            let a = Iov::decode(&h, self.layout).unwrap();
            assert!(
                a.vaddr == q.vaddr
                    && a.dst_id == q.dst_id
                    && a.nr_pages >= 1
                    && a.nr_pages <= q.nr_pages,
                "answer {a:?} to {q:?}"
            );
            for i in 0..a.nr_pages {
                let mut p = vec![0u8; PAGE as usize];
                self.daemon.read_exact(&mut p).unwrap();
                assert!(
                    p == content(q.dst_id, q.vaddr + i * PAGE),
                    "page {i} of {q:?}"
                );
            }
            a.nr_pages
        }

        /// Closes as the daemon does (FORCE_CLOSE, status, close); returns what the source was
        /// asked and the counts.
        fn finish(mut self) -> (Vec<Iov>, Counts) {
            let close = Iov {
                cmd: page_server::IOV_FORCE_CLOSE,
                nr_pages: 0,
                vaddr: 0,
                dst_id: 0,
            };
            self.ask(&close);
            let mut status = [1u8; 4];
            self.daemon.read_exact(&mut status).unwrap();
            assert_eq!(status, [0; 4]);
            self.daemon.shutdown(std::net::Shutdown::Both).unwrap();
            let sent = self.relay.take().unwrap().join().unwrap().unwrap();
            assert!(sent > 0);
            let counts = self.filter.counts();
            // The relay is done: the source's link closes, its thread ends.
            self.link.lock().unwrap().take();
            let seen = self.source.take().unwrap().join().unwrap().unwrap();
            (seen, counts)
        }
    }

    const BASE: u64 = 0x7f00_0000_0000;

    #[test]
    fn a_sequential_walk_is_answered_from_read_ahead() {
        for (split, layout) in [
            (PAGE as usize + 32, Layout::Wide),
            (1000, Layout::Narrow),
            (7, Layout::Wide),
            (PAGE as usize + 24, Layout::Narrow),
        ] {
            let mut w = World::with_layout(&[(BASE, 200), (BASE + 300 * PAGE, 10)], split, layout);
            for i in 0..200 {
                let q = Iov::get(TASK, BASE + i * PAGE, 1);
                w.ask(&q);
                w.expect(&q, 1);
            }
            let (seen, c) = w.finish();
            assert_eq!(c.asked, 200);
            // The first three faults go to the source, then the read-ahead keeps ahead of the
            // walk (windows of 4, 8, 16 pages, the next asked at half).
            assert!(c.from_cache >= 190, "{c:?}");
            assert!(c.from_cache + 3 + 4 >= 200, "{c:?}");
            let own: Vec<&Iov> = seen.iter().filter(|q| q.nr_pages > 1).collect();
            assert!(!own.is_empty());
            for q in &own {
                assert!(
                    q.vaddr + q.nr_pages * PAGE <= BASE + 200 * PAGE,
                    "{q:?} leaves the run"
                );
            }
            // Only the pages of the run were fetched, each once: pages 1..200 (page 1 as the
            // neighbour of the first fault).
            assert!(c.prefetched <= 199, "{c:?}");
            assert_eq!(c.unused, c.prefetched - c.from_cache, "{c:?}");
        }
    }

    #[test]
    fn reads_across_page_boundaries_fetch_one_neighbour() {
        let mut w = World::new(&[(BASE, 1000)], 4096);
        // Random reads, each across a page boundary: two pages, then elsewhere. The second
        // page of each comes with the first; nothing more is fetched.
        for i in [5u64, 900, 17, 500, 300, 250, 998, 42] {
            for p in [i, i + 1] {
                let q = Iov::get(TASK, BASE + p * PAGE, 1);
                w.ask(&q);
                w.expect(&q, 1);
            }
        }
        let (seen, c) = w.finish();
        assert_eq!((c.from_cache, c.prefetched, c.unused), (8, 8, 0), "{c:?}");
        assert_eq!(
            seen.len(),
            17,
            "8 faults, 8 neighbours and the close: {seen:?}"
        );
    }

    #[test]
    fn a_lone_fault_at_the_end_of_a_run_fetches_nothing_more() {
        let mut w = World::new(&[(BASE, 4), (BASE + 10 * PAGE, 4)], 4096);
        for p in [3u64, 13] {
            let q = Iov::get(TASK, BASE + p * PAGE, 1);
            w.ask(&q);
            w.expect(&q, 1);
        }
        let (seen, c) = w.finish();
        assert_eq!(c.prefetched, 0, "{c:?}");
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[test]
    fn read_ahead_stops_at_the_end_of_a_run() {
        // Two adjacent runs: the page server would answer a question across both short.
        let mut w = World::new(&[(BASE, 4), (BASE + 4 * PAGE, 4)], 512);
        for i in 0..8 {
            let q = Iov::get(TASK, BASE + i * PAGE, 1);
            w.ask(&q);
            w.expect(&q, 1);
        }
        let (seen, _) = w.finish();
        for q in seen.iter().filter(|q| q.command() == page_server::IOV_GET) {
            let run_end = if q.vaddr < BASE + 4 * PAGE {
                BASE + 4 * PAGE
            } else {
                BASE + 8 * PAGE
            };
            assert!(
                q.vaddr + q.nr_pages * PAGE <= run_end,
                "{q:?} crosses a run"
            );
        }
    }

    #[test]
    fn answers_keep_the_daemon_s_order() {
        let mut w = World::new(&[(BASE, 400)], 3000);
        // A walk sets up a read-ahead window...
        for i in 0..4 {
            let q = Iov::get(TASK, BASE + i * PAGE, 1);
            w.ask(&q);
            w.expect(&q, 1);
        }
        // ...then three questions at once: one the window answers, a background chunk the
        // source must answer, and another from the window. Answers come in this order.
        let a = Iov::get(TASK, BASE + 4 * PAGE, 1);
        let b = Iov::get(TASK, BASE + 100 * PAGE, 16);
        let c = Iov::get(TASK, BASE + 5 * PAGE, 1);
        let mut three = Vec::new();
        for q in [a, b, c] {
            three.extend_from_slice(&q.encode(Layout::Wide));
        }
        w.daemon.write_all(&three).unwrap();
        w.expect(&a, 1);
        w.expect(&b, 16);
        w.expect(&c, 1);
        let (_, counts) = w.finish();
        assert!(counts.from_cache >= 1, "{counts:?}");
    }

    /// The daemon's usual order after a fault: a background chunk, then the task faults on
    /// the neighbour page. The neighbour comes from the cache, after the chunk's answer.
    #[test]
    fn a_neighbour_waits_behind_the_daemon_s_earlier_question() {
        let mut w = World::new(&[(BASE, 400)], 1500);
        let p = Iov::get(TASK, BASE + 10 * PAGE, 1);
        w.ask(&p);
        w.expect(&p, 1);
        let b = Iov::get(TASK, BASE + 200 * PAGE, 16);
        let n = Iov::get(TASK, BASE + 11 * PAGE, 1);
        let mut two = Vec::new();
        for q in [b, n] {
            two.extend_from_slice(&q.encode(Layout::Wide));
        }
        w.daemon.write_all(&two).unwrap();
        w.expect(&b, 16);
        w.expect(&n, 1);
        let (seen, c) = w.finish();
        assert_eq!(c.from_cache, 1, "{c:?}");
        // Fault, neighbour, chunk, close; after the chunk the stream goes on from page 216.
        let before: Vec<&Iov> = seen
            .iter()
            .filter(|q| q.vaddr < BASE + 216 * PAGE)
            .collect();
        assert_eq!(before.len(), 4, "{seen:?}");
    }

    /// CRIU's background sweep (criu/uffd.c xfer_pages): from the lowest page left, 16 pages
    /// more each time, asking again for what a short answer left out. After its first question
    /// haul streams ahead and answers the rest from the cache, across entries.
    #[test]
    fn the_daemon_s_background_sweep_is_answered_from_the_stream() {
        let runs = [
            (BASE, 300),
            (BASE + 400 * PAGE, 50),
            (BASE + 451 * PAGE, 100),
        ];
        let mut w = World::new(&runs, 5000);
        let (mut sent_pages, mut questions) = (0u64, 0u64);
        for &(start, n) in &runs {
            let end = start + u64::from(n) * PAGE;
            let (mut at, mut xfer) = (start, 16u64);
            while at < end {
                let q = Iov::get(TASK, at, xfer.min((end - at) / PAGE));
                w.ask(&q);
                let got = w.expect_some(&q);
                at += got * PAGE;
                sent_pages += got;
                questions += 1;
                xfer = (xfer + 16).min(1024);
                // CRIU's daemon copies each answer into the tasks before it asks again; here
                // the next question would otherwise race the stream's chunks in flight.
                w.settle();
            }
        }
        assert_eq!(sent_pages, 450);
        let (seen, c) = w.finish();
        assert!(c.pages_from_cache >= 400, "{c:?} in {questions} questions");
        // Nothing outside the runs (the fake source fails on that), nothing fetched twice.
        assert!(c.prefetched <= 450, "{c:?}");
        assert!(seen.len() < 60, "{} questions to the source", seen.len());
    }

    #[test]
    fn a_missing_pagemap_means_no_read_ahead() {
        let mut w = World::new(&[(BASE, 100)], 4096);
        std::fs::remove_file(w._dir.path().join(format!("pagemap-{TASK}.img"))).unwrap();
        for i in 0..20 {
            let q = Iov::get(TASK, BASE + i * PAGE, 1);
            w.ask(&q);
            w.expect(&q, 1);
        }
        let (seen, c) = w.finish();
        assert_eq!((c.from_cache, c.prefetched), (0, 0));
        assert_eq!(seen.len(), 21);
    }

    #[test]
    fn a_wrong_answer_to_a_read_ahead_is_an_error() {
        let (daemon, ours) = UnixStream::pair().unwrap();
        let dir = crate::inspect::test_support::TempDir::new("prefetch-bad").unwrap();
        std::fs::write(
            dir.path().join(format!("pagemap-{TASK}.img")),
            test_image(&[(BASE, 100, PE_LAZY)]),
        )
        .unwrap();
        let sent = Arc::new(Mutex::new(Vec::<u8>::new()));
        let log = sent.clone();
        let f = Prefetch::with_sizes(
            Arc::new(OwnedFd::from(ours)),
            dir.path().to_path_buf(),
            Box::new(move |b: &[u8]| {
                log.lock().unwrap().extend_from_slice(b);
                Ok(())
            }),
            Layout::Wide,
            PAGE,
            16 * PAGE,
            64 * PAGE,
        );
        for i in 0..3 {
            f.ask(Iov::get(TASK, BASE + i * PAGE, 1)).unwrap();
        }
        let asked: Vec<Iov> = sent
            .lock()
            .unwrap()
            .chunks_exact(HEADER)
            .map(|h| Iov::decode(h, Layout::Wide).unwrap())
            .collect();
        let (last, before) = asked.split_last().unwrap();
        assert!(
            last.nr_pages > 1,
            "the walk put a read-ahead last: {asked:?}"
        );
        // Right answers to what came before...
        for q in before {
            let mut a = Iov::pages(TASK, q.vaddr, q.nr_pages)
                .encode(Layout::Wide)
                .to_vec();
            for i in 0..q.nr_pages {
                a.extend_from_slice(&content(TASK, q.vaddr + i * PAGE));
            }
            f.put(&a).unwrap();
        }
        // ...then an answer to the read-ahead for another address.
        let e = f
            .put(&Iov::pages(TASK, BASE + 50 * PAGE, 1).encode(Layout::Wide))
            .unwrap_err();
        assert!(e.contains("read-ahead"), "{e}");
        // More data than anyone asked for.
        drop(daemon);
    }
}
