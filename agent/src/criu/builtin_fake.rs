//! A fake `criu swrk` that runs as a thread of the test process: `Swrk::spawn` starts it
//! (test builds only) when the criu path is `builtin:fake-criu`, so whole migrations run
//! between two haul instances without CRIU, root or exec (they also run under qemu-user,
//! which cannot start other aarch64 programs here).
//!
//! It speaks the real RPC, one protobuf per SOCK_SEQPACKET datagram: VERSION and FEATURE_CHECK
//! (with `keep_open`), PAGE_SERVER (a thread copies one page-server session from `ps.fd` into
//! `pages-1.img`; with `keep_open` swrk stays for the next one), PRE_DUMP (a session of its own
//! per iteration, `stats-dump` with the pages it wrote; then only PRE_DUMP or DUMP are accepted,
//! as CRIU's `pre_dump_loop`), DUMP (pre-dump, a fixed page session on `ps.fd`, image files,
//! post-dump) and RESTORE (checks the images byte for byte, down the `parent` chain of
//! pre-dumps, then pre-restore … post-restore … post-resume). Like CRIU, it uses inherited
//! descriptors by number (`ps.fd`: only those passed to `spawn`), opens `images_dir_fd` through
//! `/proc/self/fd/N` (CRIU: `/proc/<peer>/fd/N`) and turns `parent_img` into a `parent` link in
//! the images directory after checking it resolves there.
//!
//! A page-server session is CRIU 4.1's protocol (criu/page-xfer.c), reduced to one task: OPEN2
//! of task 1 (answered by one byte, no parent), one ADD_F with PE_PRESENT and the pages, CLOSE
//! (answered by a 4-byte status). The close and its answer let one socket carry several
//! sessions, each read exactly. The destination's own page writer (`dest::page_images`) or the
//! fake's page server (pre-copy) receives it.
//!
//! The path may carry options after commas: `builtin:fake-criu,tag=NAME,fail-restore`.
//! `tag` files each session's log under NAME for [`join`]; `fail-restore` makes RESTORE fail
//! after pre-restore, as a restore that cannot recreate a resource does; `mem-track` makes
//! FEATURE_CHECK report memory tracking; `pre-dump-pages=A/B/C` are the pages successive
//! PRE_DUMPs write (the last repeats; default `PAGES`); `fail-pre-dump=K` fails the K-th
//! PRE_DUMP. Options live in the path, not in globals, so tests running in parallel do not see
//! each other's switches.

use super::CriuError;
use haul_proto::criu::{
    CriuDumpResp, CriuFeatures, CriuNotify, CriuPageServerInfo, CriuReq, CriuReqType, CriuResp,
    CriuRestoreResp, CriuVersion, DumpStatsEntry, RestoreStatsEntry, StatsEntry,
};
use prost::Message;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use rustix::net::{
    recv, send, socketpair, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

/// The criu path that selects the fake (optionally followed by `,option`s).
pub const PATH: &str = "builtin:fake-criu";

/// Pid the fake reports for the restored root task. The destination only waits for it with a
/// runc job, so no process of that number is ever touched.
pub const RESTORED_PID: i32 = 4242;

/// Pid the fake reports for its page server.
const PAGE_SERVER_PID: i32 = 4243;

/// Length of the page stream the dumping fake writes to `ps.fd`: 1 MiB, many relay frames.
pub const PAGE_STREAM_LEN: usize = 1 << 20;

/// Pages in that stream, as the fake's stats report them.
pub const PAGES: u64 = (PAGE_STREAM_LEN / 4096) as u64;

/// CRIU's `stats-dump` numbers the fake writes (microseconds), read back by the summary.
pub const DUMP_FROZEN_US: u32 = 21_000;
/// CRIU's `stats-restore` restore time the fake writes (microseconds).
pub const RESTORE_US: u32 = 7_000;

/// Error message of the DUMP that ends with post-dump answered `false` (CRIU's wording).
pub const POST_DUMP_FAILED: &str = "post-dump script failed";

/// Error message of a RESTORE failed by `fail-restore`.
pub const RESTORE_REFUSED: &str = "fake restore refused by the test";

/// Error message of a PRE_DUMP failed by `fail-pre-dump`.
pub const PRE_DUMP_REFUSED: &str = "fake pre-dump refused by the test";

/// Bytes of a page-server session with pages around its pages: three 24-byte headers (OPEN2,
/// ADD_F, CLOSE); the answers travel the other way.
pub const SESSION_OVERHEAD: u64 = 3 * 24;

/// The page server's answer to a complete session (CRIU's is a 32-bit status, 0).
const SESSION_ANSWER: [u8; 4] = [0; 4];

/// The page-server id of task 1's page map (pid << 8 | type 1).
const TASK_1: u64 = 1 << 8 | 1;

/// Where the fake's pages start in the fake task's memory.
const PAGES_AT: u64 = 0x10_0000;

/// Bytes in a page.
pub const PAGE_SIZE: u64 = 4096;

/// CRIU's `stats-dump` frozen time of each fake PRE_DUMP (microseconds).
pub const PRE_DUMP_FROZEN_US: u32 = 3_000;

/// Longest `parent` chain the restoring fake follows (a loop would be endless).
const CHAIN_MAX: usize = 64;

/// How long the fake waits for the driver before it gives up instead of hanging a test.
const STALL: Duration = Duration::from_secs(60);

/// Requests are a few KiB; a bigger one is a driver bug.
const REQUEST_MAX: usize = 64 * 1024;

/// The page server keeps at most this much of a stream (16 times the fake's).
const PAGE_SERVER_MAX: usize = 16 * PAGE_STREAM_LEN;

/// Largest image file the restoring fake reads back.
const IMAGE_MAX: u64 = 1 << 20;

/// CRIU's image magics (criu/include/magic.h) as the first bytes of the fake images.
const MAGIC_IMG_SERVICE: u32 = 0x5510_5940;
const MAGIC_STATS: u32 = 0x5709_3306;

/// What one fake session (or page-server thread) saw, in order.
#[derive(Debug, Default)]
pub struct Log {
    /// "VERSION", "DUMP", "pre-dump -> true", "page server: 1048576 bytes", "RESTORE ok" ...
    pub events: Vec<String>,
    /// Set when the driver broke the protocol or the images did not match.
    pub failure: Option<String>,
}

impl Log {
    pub fn saw(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

/// Sessions started, by tag; [`join`] takes them out.
static SESSIONS: Mutex<Vec<(String, JoinHandle<Log>)>> = Mutex::new(Vec::new());

/// Options from the criu path.
#[derive(Debug, Clone, Default)]
struct Spec {
    tag: String,
    fail_restore: bool,
    mem_track: bool,
    /// Pages written by PRE_DUMP 1, 2, ...; the last repeats.
    pre_dump_pages: Vec<u64>,
    fail_pre_dump: Option<u32>,
}

impl Spec {
    /// Pages PRE_DUMP `k` (from 1) writes.
    fn pre_dump_pages(&self, k: u32) -> u64 {
        let i = usize::try_from(k.saturating_sub(1)).unwrap_or(usize::MAX);
        self.pre_dump_pages
            .get(i)
            .or(self.pre_dump_pages.last())
            .copied()
            .unwrap_or(PAGES)
    }
}

impl Spec {
    /// `None` when `criu` is not the fake.
    fn parse(criu: &Path) -> Option<Result<Spec, String>> {
        let text = criu.to_str()?;
        let rest = text.strip_prefix(PATH)?;
        if !rest.is_empty() && !rest.starts_with(',') {
            return None;
        }
        let mut spec = Spec::default();
        for opt in rest.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("tag", t)) => spec.tag = t.to_string(),
                Some(("pre-dump-pages", list)) => {
                    let pages: Result<Vec<u64>, _> = list.split('/').map(str::parse).collect();
                    match pages {
                        Ok(p) => spec.pre_dump_pages = p,
                        Err(e) => return Some(Err(format!("pre-dump-pages {list:?}: {e}"))),
                    }
                }
                Some(("fail-pre-dump", k)) => match k.parse() {
                    Ok(k) => spec.fail_pre_dump = Some(k),
                    Err(e) => return Some(Err(format!("fail-pre-dump {k:?}: {e}"))),
                },
                None if opt == "fail-restore" => spec.fail_restore = true,
                None if opt == "mem-track" => spec.mem_track = true,
                _ => return Some(Err(format!("unknown fake criu option {opt:?}"))),
            }
        }
        Some(Ok(spec))
    }
}

/// The fake's side of `Swrk::spawn`: `None` unless `criu` names the fake; else the driver's end
/// of a new socketpair whose other end a fake session thread serves. The inherited descriptors
/// are duplicated first: callers close their copies (the page socket) right after spawning.
pub fn spawn(criu: &Path, inherit: &[BorrowedFd<'_>]) -> Result<Option<OwnedFd>, CriuError> {
    let spec = match Spec::parse(criu) {
        None => return Ok(None),
        Some(Ok(s)) => s,
        Some(Err(detail)) => {
            return Err(CriuError::NotFound {
                tried: criu.display().to_string(),
                detail,
            })
        }
    };
    let io = |op| move |err| CriuError::Io { op, err };
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io("socketpair"))?;
    set_socket_timeout(&theirs, Timeout::Recv, Some(STALL)).map_err(io("SO_RCVTIMEO"))?;
    let mut fds = HashMap::new();
    for fd in inherit {
        let copy = rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(io("dup"))?;
        fds.insert(fd.as_raw_fd(), copy);
    }
    let tag = spec.tag.clone();
    let handle = std::thread::Builder::new()
        .name("fake-criu".into())
        .spawn(move || serve(&spec, &theirs, fds))
        .map_err(|e| CriuError::NotFound {
            tried: PATH.into(),
            detail: e.to_string(),
        })?;
    register(tag, handle);
    Ok(Some(ours))
}

fn register(tag: String, handle: JoinHandle<Log>) {
    if let Ok(mut s) = SESSIONS.lock() {
        s.push((tag, handle));
    }
}

/// Waits for every fake session and page server started under `tag` and returns their logs,
/// in the order they started. Empty when none started.
pub fn join(tag: &str) -> Vec<Log> {
    let mut logs = Vec::new();
    // A session may start a page-server thread while it runs: look again until none is left.
    loop {
        let mine: Vec<JoinHandle<Log>> = match SESSIONS.lock() {
            Ok(mut all) => {
                let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|(t, _)| t == tag);
                *all = rest;
                mine.into_iter().map(|(_, h)| h).collect()
            }
            Err(_) => return logs,
        };
        if mine.is_empty() {
            return logs;
        }
        for h in mine {
            logs.push(h.join().unwrap_or_else(|_| Log {
                failure: Some("fake criu thread panicked".into()),
                ..Log::default()
            }));
        }
    }
}

/// The page stream the dumping fake sends: a position hash, so a lost, repeated or reordered
/// chunk shows.
pub fn page_stream() -> Vec<u8> {
    (0..PAGE_STREAM_LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// The pages PRE_DUMP `k` sends, `len` bytes: a position hash seeded with `k`, so pages stored
/// in another iteration's directory show.
pub fn pre_dump_stream(k: u32, len: usize) -> Vec<u8> {
    let seed = k.wrapping_mul(0x9e37_79b9);
    (0..len)
        .map(|i| {
            let i = u32::try_from(i % (1 << 31)).unwrap_or(0);
            (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8
        })
        .collect()
}

/// The image files the dumping fake writes and the restoring fake expects, byte for byte:
/// small ones, an empty one, and one over a relay frame (64 KiB) so it is sent in pieces.
pub fn image_files() -> Vec<(&'static str, Vec<u8>)> {
    let magic = |m: u32, body: &[u8]| {
        let mut v = MAGIC_IMG_SERVICE.to_le_bytes().to_vec();
        v.extend_from_slice(&m.to_le_bytes());
        v.extend_from_slice(body);
        v
    };
    let core: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    vec![
        ("inventory.img", magic(0x5820_2a51, b"fake inventory")),
        ("core-1.img", magic(0x5537_3d0f, &core)),
        ("pstree.img", magic(0x5019_4d1b, &4242u32.to_le_bytes())),
        ("fs-1.img", Vec::new()),
    ]
}

/// Files CRIU leaves in the source's images directory that haul does not send.
const NOT_SENT: [&str; 2] = ["dump.log", "stats-dump"];

/// The name of the link CRIU makes from `parent_img` (criu/include/image.h, CR_PARENT_LINK).
pub const PARENT_LINK: &str = "parent";

fn serve(spec: &Spec, sock: &OwnedFd, mut fds: HashMap<i32, OwnedFd>) -> Log {
    let mut log = Log::default();
    if let Err(e) = session(spec, sock, &mut fds, &mut log) {
        log.failure = Some(e);
    }
    log
}

/// One `criu swrk` run: requests until one without `keep_open`, or until the driver closes.
fn session(
    spec: &Spec,
    sock: &OwnedFd,
    fds: &mut HashMap<i32, OwnedFd>,
    log: &mut Log,
) -> Result<(), String> {
    let mut pre_dumps = 0u32;
    loop {
        let Some(req) = read_req(sock)? else {
            log.events.push("closed".into());
            return Ok(());
        };
        let kind = CriuReqType::try_from(req.r#type).unwrap_or(CriuReqType::Empty);
        log.events.push(super::req_name(req.r#type).into());
        // After a PRE_DUMP, CRIU's pre_dump_loop takes only PRE_DUMP or DUMP.
        if pre_dumps > 0 && kind != CriuReqType::PreDump && kind != CriuReqType::Dump {
            let _ = reply(sock, &failed(CriuReqType::Empty, "Bad req seq"));
            return Err(format!(
                "{} after PRE_DUMP: CRIU answers \"Bad req seq\" and exits",
                super::req_name(req.r#type)
            ));
        }
        match kind {
            CriuReqType::Version => reply(
                sock,
                &CriuResp {
                    version: Some(CriuVersion {
                        major_number: 4,
                        minor_number: 1,
                        sublevel: Some(1),
                        ..Default::default()
                    }),
                    ..ok(kind)
                },
            )?,
            CriuReqType::FeatureCheck => reply(
                sock,
                &CriuResp {
                    features: Some(CriuFeatures {
                        mem_track: Some(spec.mem_track),
                        lazy_pages: Some(true),
                        pidfd_store: None,
                    }),
                    ..ok(kind)
                },
            )?,
            CriuReqType::PageServer => page_server(spec, sock, &req, fds, log)?,
            CriuReqType::PreDump => {
                pre_dumps += 1;
                if !pre_dump(spec, sock, &req, fds, log, pre_dumps)? {
                    // A failed pre-dump ends pre_dump_loop, and swrk exits.
                    return Ok(());
                }
                continue;
            }
            CriuReqType::Dump => return dump(sock, &req, fds, log),
            CriuReqType::Restore => return restore(spec, sock, &req, log),
            _ => {
                let _ = reply(sock, &failed(kind, "the fake does not do this request"));
                return Err(format!(
                    "unexpected request {}",
                    super::req_name(req.r#type)
                ));
            }
        }
        // swrk exits after a request without keep_open.
        if req.keep_open != Some(true) {
            return Ok(());
        }
    }
}

/// PAGE_SERVER with `ps.fd`: answers at once, while a thread stores the stream in
/// `pages-1.img` and closes the socket at its end (CRIU's page server answers the dumping
/// CRIU's close request, then exits).
fn page_server(
    spec: &Spec,
    sock: &OwnedFd,
    req: &CriuReq,
    fds: &mut HashMap<i32, OwnedFd>,
    log: &mut Log,
) -> Result<(), String> {
    // With keep_open swrk stays, and keeps its copy of the socket for the next page server.
    let keep_open = req.keep_open == Some(true);
    let (dir, ps) = match dir_and_ps(req, fds, keep_open).and_then(|(d, p)| {
        link_parent(&d, req)?;
        Ok((d, p))
    }) {
        Ok(v) => v,
        Err(e) => {
            let _ = reply(sock, &failed(CriuReqType::PageServer, &e));
            return Err(e);
        }
    };
    set_socket_timeout(&ps, Timeout::Recv, Some(STALL)).map_err(|e| e.to_string())?;
    let handle = std::thread::Builder::new()
        .name("fake-criu-ps".into())
        .spawn(move || {
            let mut log = Log::default();
            match receive_pages(&dir, &ps) {
                Ok(n) => log.events.push(format!("page server: {n} bytes")),
                Err(e) => {
                    log.events.push("page server: no complete session".into());
                    log.failure = Some(format!("page server: {e}"));
                }
            }
            drop(ps);
            log
        })
        .map_err(|e| e.to_string())?;
    register(spec.tag.clone(), handle);
    reply(
        sock,
        &CriuResp {
            ps: Some(CriuPageServerInfo {
                pid: Some(PAGE_SERVER_PID),
                ..Default::default()
            }),
            ..ok(CriuReqType::PageServer)
        },
    )?;
    log.events.push("PAGE_SERVER ok".into());
    Ok(())
}

/// A page-server header as CRIU 4.1 writes it: u32 command (flags in the high 16 bits), u32
/// pages, u64 address, u64 id, in the host's byte order.
fn ps_header(cmd: u32, pages: u32, vaddr: u64, id: u64) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..4].copy_from_slice(&cmd.to_ne_bytes());
    h[4..8].copy_from_slice(&pages.to_ne_bytes());
    h[8..16].copy_from_slice(&vaddr.to_ne_bytes());
    h[16..].copy_from_slice(&id.to_ne_bytes());
    h
}

/// The fields of a header in `ps_header`'s layout.
fn ps_fields(h: &[u8; 24]) -> (u32, u32, u64, u64) {
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let long = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_ne_bytes(b)
    };
    (word(0), word(4), long(8), long(16))
}

const CMD_OPEN2: u32 = 4;
const CMD_ADD_F: u32 = 6;
const CMD_CLOSE: u32 = 0x1023;
const FLAG_PRESENT: u32 = 1 << 2;

/// One session from `ps`, read exactly (the next session on the socket is another page
/// server's), stored in `pages-1.img` before its close is answered.
fn receive_pages(dir: &OwnedFd, ps: &OwnedFd) -> Result<usize, String> {
    let mut h = [0u8; 24];
    read_exact(ps, &mut h)?;
    if ps_fields(&h) != (CMD_OPEN2, 0, 0, TASK_1) {
        return Err(format!("a session that does not open task 1: {h:?}"));
    }
    send_all(ps, &[0]).map_err(|e| format!("answering the open: {e}"))?;
    let mut pages = Vec::new();
    loop {
        read_exact(ps, &mut h)?;
        match ps_fields(&h) {
            (CMD_CLOSE, ..) => break,
            (cmd, n, _, TASK_1) if cmd == FLAG_PRESENT << 16 | CMD_ADD_F => {
                let len = usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(4096);
                if pages.len().saturating_add(len) > PAGE_SERVER_MAX {
                    return Err(format!("a session over {PAGE_SERVER_MAX} bytes"));
                }
                let at = pages.len();
                pages.resize(at + len, 0);
                read_exact(ps, &mut pages[at..])?;
            }
            other => return Err(format!("a header the fake does not send: {other:x?}")),
        }
    }
    write_file(dir, "pages-1.img", &pages)?;
    send_all(ps, &SESSION_ANSWER).map_err(|e| format!("answering the session: {e}"))?;
    Ok(pages.len())
}

/// A whole session as the dumping side sends it (tests that script a source).
pub fn session_stream(pages: &[u8]) -> Vec<u8> {
    let n = u32::try_from(pages.len() / PAGE_SIZE as usize).unwrap_or(u32::MAX);
    let mut s = ps_header(CMD_OPEN2, 0, 0, TASK_1).to_vec();
    s.extend(ps_header(
        FLAG_PRESENT << 16 | CMD_ADD_F,
        n,
        PAGES_AT,
        TASK_1,
    ));
    s.extend_from_slice(pages);
    s.extend(ps_header(CMD_CLOSE, 0, 0, 0));
    s
}

/// The dumping side of a session: open task 1 and wait for the answer, the pages as one run,
/// the close and the page server's answer.
fn send_session(ps: &OwnedFd, pages: &[u8]) -> Result<(), String> {
    set_socket_timeout(ps, Timeout::Recv, Some(STALL)).map_err(|e| e.to_string())?;
    send_all(ps, &ps_header(CMD_OPEN2, 0, 0, TASK_1))
        .map_err(|e| format!("writing to ps.fd: {e}"))?;
    let mut parent = [0xffu8; 1];
    read_exact(ps, &mut parent).map_err(|e| format!("the page server's open answer: {e}"))?;
    if parent != [0] {
        return Err(format!("the page server has a parent image: {parent:?}"));
    }
    if !pages.is_empty() {
        let n = u32::try_from(pages.len() / PAGE_SIZE as usize).unwrap_or(u32::MAX);
        let add = ps_header(FLAG_PRESENT << 16 | CMD_ADD_F, n, PAGES_AT, TASK_1);
        send_all(ps, &add).map_err(|e| format!("writing to ps.fd: {e}"))?;
        send_all(ps, pages).map_err(|e| format!("writing pages to ps.fd: {e}"))?;
    }
    send_all(ps, &ps_header(CMD_CLOSE, 0, 0, 0)).map_err(|e| format!("writing to ps.fd: {e}"))?;
    let mut answer = [0xffu8; 4];
    read_exact(ps, &mut answer).map_err(|e| format!("the page server's answer: {e}"))?;
    if answer != SESSION_ANSWER {
        return Err(format!("the page server answered {answer:?}"));
    }
    Ok(())
}

fn read_exact(fd: &OwnedFd, mut buf: &mut [u8]) -> Result<(), String> {
    while !buf.is_empty() {
        match recv(fd, &mut *buf, RecvFlags::empty()) {
            Ok((0, _)) => return Err(format!("end of stream, {} bytes short", buf.len())),
            Ok((n, _)) => buf = buf.get_mut(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("reading ps.fd: {e}")),
        }
    }
    Ok(())
}

/// `parent_img` as CRIU handles it when it opens an images directory (criu/image.c,
/// `open_image_dir`): it must resolve relative to the directory, and becomes its `parent` link.
fn link_parent(dir: &OwnedFd, req: &CriuReq) -> Result<(), String> {
    let Some(parent) = req.opts.as_ref().and_then(|o| o.parent_img.as_deref()) else {
        return Ok(());
    };
    rustix::fs::accessat(
        dir,
        parent,
        rustix::fs::Access::READ_OK,
        rustix::fs::AtFlags::empty(),
    )
    .map_err(|e| format!("Invalid parent image directory provided: {parent}: {e}"))?;
    match rustix::fs::symlinkat(parent, dir, PARENT_LINK) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(format!("Can't link parent snapshot: {e}")),
    }
}

/// PRE_DUMP number `k` of this swrk: its own page session on `ps.fd` (which swrk keeps for the
/// next dump), `stats-dump` in its images directory. False when it failed as asked
/// (`fail-pre-dump`): CRIU's pre_dump_loop then ends and swrk exits.
fn pre_dump(
    spec: &Spec,
    sock: &OwnedFd,
    req: &CriuReq,
    fds: &mut HashMap<i32, OwnedFd>,
    log: &mut Log,
    k: u32,
) -> Result<bool, String> {
    if req.keep_open.is_some() {
        // chk_keepopen_req refuses it: swrk exits without answering.
        return Err("PRE_DUMP with keep_open: swrk exits without answering".into());
    }
    let checked = dir_and_ps(req, fds, true).and_then(|(dir, ps)| {
        let opts = req.opts.as_ref().ok_or("PRE_DUMP without options")?;
        if opts.track_mem != Some(true) || opts.pid.is_none() {
            return Err(format!(
                "PRE_DUMP needs track_mem and a pid, got {:?} and {:?}",
                opts.track_mem, opts.pid
            ));
        }
        link_parent(&dir, req)?;
        Ok((dir, ps, opts.parent_img.clone()))
    });
    let (dir, ps, parent) = match checked {
        Ok(v) => v,
        Err(e) => {
            let _ = reply(sock, &failed(CriuReqType::PreDump, &e));
            return Err(e);
        }
    };
    if spec.fail_pre_dump == Some(k) {
        let line = format!("(00.004321) Error (criu/cr-dump.c:1700): {PRE_DUMP_REFUSED}\n");
        write_file(&dir, "dump.log", line.as_bytes())?;
        reply(sock, &failed(CriuReqType::PreDump, PRE_DUMP_REFUSED))?;
        log.events.push(format!("pre-dump {k} failed"));
        return Ok(false);
    }
    let pages = spec.pre_dump_pages(k);
    let len = usize::try_from(pages.saturating_mul(PAGE_SIZE)).unwrap_or(usize::MAX);
    send_session(&ps, &pre_dump_stream(k, len))?;
    drop(ps);
    write_file(
        &dir,
        "dump.log",
        b"(00.000100) Pre-dumping processes (fake)\n",
    )?;
    let stats = StatsEntry {
        dump: Some(DumpStatsEntry {
            frozen_time: PRE_DUMP_FROZEN_US,
            pages_scanned: PAGES,
            pages_written: pages,
            ..Default::default()
        }),
        restore: None,
    };
    write_file(&dir, "stats-dump", &stats_file(&stats))?;
    reply(sock, &ok(CriuReqType::PreDump))?;
    log.events.push(format!(
        "pre-dump {k}: {pages} pages, parent {}",
        parent.as_deref().unwrap_or("none")
    ));
    Ok(true)
}

/// DUMP with `ps.fd` and notify scripts.
fn dump(
    sock: &OwnedFd,
    req: &CriuReq,
    fds: &mut HashMap<i32, OwnedFd>,
    log: &mut Log,
) -> Result<(), String> {
    let (dir, ps) = match dir_and_ps(req, fds, false).and_then(|(d, p)| {
        let o = req.opts.as_ref().ok_or("DUMP without options")?;
        // CRIU skips unchanged pages only with both (mem.c, page_in_parent).
        if o.parent_img.is_some() && o.track_mem != Some(true) {
            return Err("DUMP with parent_img but without track_mem".to_string());
        }
        link_parent(&d, req)?;
        Ok((d, p))
    }) {
        Ok(v) => v,
        Err(e) => {
            let _ = reply(sock, &failed(CriuReqType::Dump, &e));
            return Err(e);
        }
    };
    let opts = req.opts.as_ref().ok_or("DUMP without options")?;
    if let Some(parent) = &opts.parent_img {
        log.events.push(format!("DUMP parent {parent}"));
    }
    if opts.notify_scripts != Some(true) || opts.pid.is_none() {
        let e = format!(
            "DUMP needs notify_scripts and a pid, got {:?} and {:?}",
            opts.notify_scripts, opts.pid
        );
        let _ = reply(sock, &failed(CriuReqType::Dump, &e));
        return Err(e);
    }
    match notify(sock, "pre-dump", None, log)? {
        Some(true) => {}
        Some(false) => return reply(sock, &failed(CriuReqType::Dump, "pre-dump script failed")),
        None => return Ok(()),
    }
    // Pages go out while the tasks are frozen; the stream ends when ps.fd closes.
    send_session(&ps, &page_stream())?;
    drop(ps);
    for (name, bytes) in image_files() {
        write_file(&dir, name, &bytes)?;
    }
    write_file(
        &dir,
        "dump.log",
        b"(00.000100) Dumping processes (pid: fake)\n",
    )?;
    let stats = StatsEntry {
        dump: Some(DumpStatsEntry {
            freezing_time: 900,
            frozen_time: DUMP_FROZEN_US,
            memdump_time: 4_000,
            memwrite_time: 3_000,
            pages_scanned: PAGES,
            pages_written: PAGES,
            ..Default::default()
        }),
        restore: None,
    };
    write_file(&dir, "stats-dump", &stats_file(&stats))?;
    match notify(sock, "post-dump", None, log)? {
        // The tasks would be killed now.
        Some(true) => {
            reply(
                sock,
                &CriuResp {
                    dump: Some(CriuDumpResp { restored: None }),
                    ..ok(CriuReqType::Dump)
                },
            )?;
            log.events.push("DUMP ok".into());
        }
        // CRIU resumes the tasks and reports the script's failure (or, with the socket
        // closed, cannot report anything).
        Some(false) => {
            // The driver may be gone already: it has given its answer.
            let _ = reply(sock, &failed(CriuReqType::Dump, POST_DUMP_FAILED));
            log.events.push("DUMP failed".into());
        }
        None => log.events.push("DUMP abandoned".into()),
    }
    Ok(())
}

/// RESTORE from `images_dir_fd`, held by notify scripts.
fn restore(spec: &Spec, sock: &OwnedFd, req: &CriuReq, log: &mut Log) -> Result<(), String> {
    let opts = req.opts.as_ref().ok_or("RESTORE without options")?;
    let dir = match open_dir(opts.images_dir_fd) {
        Ok(d) => d,
        Err(e) => {
            let _ = reply(sock, &failed(CriuReqType::Restore, &e));
            return Err(e);
        }
    };
    let chain = check_images(&dir).and_then(|()| check_chain(&dir));
    let chain = match chain {
        Ok(n) => n,
        Err(e) => {
            let _ = reply(sock, &failed(CriuReqType::Restore, &e));
            return Err(e);
        }
    };
    log.events.push("images intact".into());
    if chain > 0 {
        log.events
            .push(format!("parent chain: {chain} pre-dumps intact"));
    }
    if opts.notify_scripts != Some(true) {
        let e = "RESTORE without notify_scripts: the tasks could not be held".to_string();
        let _ = reply(sock, &failed(CriuReqType::Restore, &e));
        return Err(e);
    }
    if notify(sock, "pre-restore", None, log)? != Some(true) {
        return reply(
            sock,
            &failed(CriuReqType::Restore, "pre-restore script failed"),
        );
    }
    if spec.fail_restore {
        let line = format!("(00.012345) Error (criu/cr-restore.c:2400): {RESTORE_REFUSED}\n");
        write_file(&dir, "restore.log", line.as_bytes())?;
        reply(sock, &failed(CriuReqType::Restore, RESTORE_REFUSED))?;
        log.events.push("RESTORE failed".into());
        return Ok(());
    }
    if notify(sock, "setup-namespaces", Some(RESTORED_PID), log)? != Some(true) {
        return reply(
            sock,
            &failed(CriuReqType::Restore, "setup-namespaces failed"),
        );
    }
    match notify(sock, "post-restore", Some(RESTORED_PID), log)? {
        Some(true) => {}
        Some(false) => {
            // CRIU kills the restored tasks; the driver may be gone already.
            let _ = reply(
                sock,
                &failed(CriuReqType::Restore, "post-restore script failed"),
            );
            log.events.push("RESTORE failed".into());
            return Ok(());
        }
        None => {
            log.events.push("RESTORE abandoned".into());
            return Ok(());
        }
    }
    for script in ["pre-resume", "post-resume"] {
        if notify(sock, script, Some(RESTORED_PID), log)? != Some(true) {
            return reply(sock, &failed(CriuReqType::Restore, "resume script failed"));
        }
    }
    let stats = StatsEntry {
        dump: None,
        restore: Some(RestoreStatsEntry {
            forking_time: 500,
            restore_time: RESTORE_US,
            pages_restored: Some(PAGES),
            ..Default::default()
        }),
    };
    write_file(&dir, "stats-restore", &stats_file(&stats))?;
    reply(
        sock,
        &CriuResp {
            restore: Some(CriuRestoreResp { pid: RESTORED_PID }),
            ..ok(CriuReqType::Restore)
        },
    )?;
    log.events.push("RESTORE ok".into());
    Ok(())
}

/// The images the dumping fake wrote arrived intact: the page stream through the page server,
/// every image file, and none of the files haul must not send.
fn check_images(dir: &OwnedFd) -> Result<(), String> {
    let pages = read_file(dir, "pages-1.img")?;
    let want = page_stream();
    if pages != want {
        let at = pages.iter().zip(&want).take_while(|(a, b)| a == b).count();
        return Err(format!(
            "pages-1.img differs from the dumped stream: {} bytes, want {}, first difference at {at}",
            pages.len(),
            want.len()
        ));
    }
    for (name, bytes) in image_files() {
        if read_file(dir, name)? != bytes {
            return Err(format!("{name} differs from the dumped image"));
        }
    }
    for name in NOT_SENT {
        if read_file(dir, name).is_ok() {
            return Err(format!("{name} was sent; haul must keep it on the source"));
        }
    }
    Ok(())
}

/// Follows the `parent` links from the images directory as CRIU's page reads do (through the
/// link): the pre-dumps, newest first, each with the pages of its own iteration. Returns their
/// number.
fn check_chain(dir: &OwnedFd) -> Result<usize, String> {
    let mut levels = Vec::new();
    let mut at = rustix::io::fcntl_dupfd_cloexec(dir, 3).map_err(|e| format!("dup: {e}"))?;
    loop {
        let parent = match rustix::fs::openat(
            &at,
            PARENT_LINK,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(p) => p,
            Err(Errno::NOENT) => break,
            Err(e) => return Err(format!("opening parent: {e}")),
        };
        levels.push(read_file(&parent, "pages-1.img")?);
        if levels.len() > CHAIN_MAX {
            return Err(format!(
                "a parent chain of more than {CHAIN_MAX} directories"
            ));
        }
        at = parent;
    }
    let n = levels.len();
    for (depth, pages) in levels.iter().enumerate() {
        let k = u32::try_from(n - depth).unwrap_or(0);
        if *pages != pre_dump_stream(k, pages.len()) {
            return Err(format!(
                "the parent at depth {} does not hold pre-dump {k}'s pages",
                depth + 1
            ));
        }
    }
    Ok(n)
}

/// Opens the images directory CRIU gets as a number of its peer's descriptors.
fn open_dir(images_dir_fd: i32) -> Result<OwnedFd, String> {
    if images_dir_fd < 0 {
        return Err(format!("images_dir_fd is {images_dir_fd}"));
    }
    rustix::fs::open(
        format!("/proc/self/fd/{images_dir_fd}"),
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("images_dir_fd {images_dir_fd}: {e}"))
}

/// The images directory and the page socket of a DUMP, PRE_DUMP or PAGE_SERVER. `ps.fd` must be
/// one of the descriptors given to `spawn` under that number, as real CRIU uses it by number.
/// `keep`: swrk keeps its copy (a PRE_DUMP's child, a page server started with keep_open).
fn dir_and_ps(
    req: &CriuReq,
    fds: &mut HashMap<i32, OwnedFd>,
    keep: bool,
) -> Result<(OwnedFd, OwnedFd), String> {
    let opts = req.opts.as_ref().ok_or("request without options")?;
    let dir = open_dir(opts.images_dir_fd)?;
    let n = opts
        .ps
        .as_ref()
        .and_then(|p| p.fd)
        .ok_or("no ps.fd in the request")?;
    let missing = || format!("ps.fd {n} was not inherited by criu");
    let ps = if keep {
        let fd = fds.get(&n).ok_or_else(missing)?;
        rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| format!("dup: {e}"))?
    } else {
        fds.remove(&n).ok_or_else(missing)?
    };
    Ok((dir, ps))
}

/// Sends a notification and waits for its answer: `None` when the driver closed instead.
fn notify(
    sock: &OwnedFd,
    script: &str,
    pid: Option<i32>,
    log: &mut Log,
) -> Result<Option<bool>, String> {
    reply(
        sock,
        &CriuResp {
            notify: Some(CriuNotify {
                script: Some(script.into()),
                pid,
            }),
            ..ok(CriuReqType::Notify)
        },
    )?;
    let Some(req) = read_req(sock)? else {
        log.events.push(format!("{script} -> closed"));
        return Ok(None);
    };
    if req.r#type != CriuReqType::Notify as i32 {
        return Err(format!(
            "{script}: expected a NOTIFY answer, got {}",
            super::req_name(req.r#type)
        ));
    }
    if req.opts.is_some() || req.keep_open.is_some() {
        return Err(format!("{script}: the answer carries options or keep_open"));
    }
    let answer = req
        .notify_success
        .ok_or_else(|| format!("{script}: answer without notify_success"))?;
    log.events.push(format!("{script} -> {answer}"));
    Ok(Some(answer))
}

fn ok(kind: CriuReqType) -> CriuResp {
    CriuResp {
        r#type: kind as i32,
        success: true,
        ..Default::default()
    }
}

fn failed(kind: CriuReqType, msg: &str) -> CriuResp {
    CriuResp {
        r#type: kind as i32,
        success: false,
        cr_errmsg: Some(msg.into()),
        ..Default::default()
    }
}

/// One request, or `None` when the driver closed its end.
fn read_req(sock: &OwnedFd) -> Result<Option<CriuReq>, String> {
    let mut buf = vec![0u8; REQUEST_MAX];
    let n = loop {
        match recv(sock, &mut buf[..], RecvFlags::TRUNC) {
            Ok((_, 0)) | Err(Errno::CONNRESET) => return Ok(None),
            Ok((_, total)) if total > REQUEST_MAX => {
                return Err(format!("request of {total} bytes"))
            }
            Ok((n, _)) => break n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("waiting for a request: {e}")),
        }
    };
    let req = CriuReq::decode(buf.get(..n).unwrap_or_default())
        .map_err(|e| format!("undecodable request: {e}"))?;
    Ok(Some(req))
}

fn reply(sock: &OwnedFd, resp: &CriuResp) -> Result<(), String> {
    let bytes = resp.encode_to_vec();
    match send(sock, &bytes, SendFlags::NOSIGNAL) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => Err(format!("sent {n} of {} bytes", bytes.len())),
        Err(e) => Err(format!("sending a response: {e}")),
    }
}

fn send_all(fd: &OwnedFd, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match send(fd, buf, SendFlags::NOSIGNAL) {
            Ok(0) => return Err(Errno::PIPE),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A CRIU stats file: the two magics, the length, the entry.
pub fn stats_file(entry: &StatsEntry) -> Vec<u8> {
    let body = entry.encode_to_vec();
    let mut v = MAGIC_IMG_SERVICE.to_le_bytes().to_vec();
    v.extend_from_slice(&MAGIC_STATS.to_le_bytes());
    v.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_le_bytes());
    v.extend_from_slice(&body);
    v
}

fn write_file(dir: &OwnedFd, name: &str, bytes: &[u8]) -> Result<(), String> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| format!("creating {name}: {e}"))?;
    std::fs::File::from(fd)
        .write_all(bytes)
        .map_err(|e| format!("writing {name}: {e}"))
}

fn read_file(dir: &OwnedFd, name: &str) -> Result<Vec<u8>, String> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| format!("opening {name}: {e}"))?;
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(IMAGE_MAX + PAGE_SERVER_MAX as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading {name}: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fake_path_selects_the_fake() {
        assert!(Spec::parse(Path::new("/usr/sbin/criu")).is_none());
        assert!(Spec::parse(Path::new("builtin:fake-criux")).is_none());
        let s = Spec::parse(Path::new("builtin:fake-criu"))
            .unwrap()
            .unwrap();
        assert!(s.tag.is_empty() && !s.fail_restore);
        let s = Spec::parse(Path::new("builtin:fake-criu,tag=t1,fail-restore"))
            .unwrap()
            .unwrap();
        assert_eq!(s.tag, "t1");
        assert!(s.fail_restore);
        assert!(Spec::parse(Path::new("builtin:fake-criu,bogus"))
            .unwrap()
            .is_err());
        let s = Spec::parse(Path::new(
            "builtin:fake-criu,mem-track,pre-dump-pages=300/20,fail-pre-dump=3",
        ))
        .unwrap()
        .unwrap();
        assert!(s.mem_track);
        assert_eq!(
            [1, 2, 3].map(|k| s.pre_dump_pages(k)),
            [300, 20, 20],
            "the last count repeats"
        );
        assert_eq!(s.fail_pre_dump, Some(3));
        assert!(
            Spec::parse(Path::new("builtin:fake-criu,pre-dump-pages=1/x"))
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn the_page_stream_is_not_periodic_at_page_size() {
        let s = page_stream();
        assert_eq!(s.len(), PAGE_STREAM_LEN);
        assert_ne!(s[..4096], s[4096..8192]);
        // Each iteration's pages differ from every other's.
        assert_ne!(pre_dump_stream(1, 4096), pre_dump_stream(2, 4096));
    }
}
