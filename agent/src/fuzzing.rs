//! Entry points of the fuzz targets in `fuzz/` (not an API): each feeds bytes to a parser of
//! outside input the way haul runs it, returns normally for any bytes, and asserts the
//! properties that parser promises. A panic is a finding. The input format of each target is
//! defined here, next to [`seeds`], which builds the generated seed inputs in `fuzz/seeds/`.
//!
//! | target | what haul does with the bytes |
//! |---|---|
//! | `frames` | frame headers and bodies as `RecvHalf` reads them, plain or decrypted |
//! | `handshake` | preamble and Noise message 1 from an untrusted initiator, as `accept` reads them |
//! | `dest_control` | frames of a source as `haul serve` handles them: control messages, the runc description and its state.json patch, image files, the `--fs copy` tree |
//! | `criu_responses` | datagrams of `criu swrk` as `Swrk` reads them (VERSION, FEATURE_CHECK, a DUMP with notifications) |
//! | `criu_stats` | CRIU's `stats-dump` / `stats-restore` files |
//! | `criu_log` | the error lines picked from a CRIU log |
//! | `json_patch` | the source's state.json text patched for registration |
//! | `tmpfs_archive` | a tmpfs archive from the source as haul's `tar --extract` reads it |
//! | `criu_pagemap` | a `pagemap-<id>.img` from the source, as the destination's userfaultfd handler and `--lazy`'s read-ahead read it |
//! | `criu_mm` | an `mm-<id>.img` from the source, whose VMAs cut the handler's lazy runs |
//! | `lazy_answers` | the source's page stream during a post-copy, through the read-ahead filter |
//! | `page_stream` | the source's page stream of a dump, as the destination writes it into page images |

use crate::criu::page_stream::PageStream;
use crate::criu::{log_excerpt, stats, Event, Swrk};
use crate::dest::page_images::{PageImages, Reply};
use crate::dest::precopy::PageServers;
use crate::dest::runc::check_description;
use crate::limits::{CRIU_LOG_ERROR_LINES, FRAME_MAX, FRAME_PLAINTEXT_MAX, HANDSHAKE_TIMEOUT};
use crate::register::{state_json, Registration};
use crate::transfer::frame::{FrameKey, Kind, RecvHalf};
use crate::transfer::handshake::{
    self, builder, preamble_offering, HandshakeIo, HANDSHAKE_MSG_MAX,
};

/// The cipher offers of every preamble the fuzz targets and their seeds make or expect: none
/// beyond ChaCha20-Poly1305, so that the seeds do not depend on the CPU's AES instructions.
const FUZZ_OFFERS: u8 = 0;
use crate::transfer::images::ImageSink;
use crate::transfer::mux::decode_control;
use crate::transfer::mux::PageSink;
use crate::transfer::tree::TreeSink;
use crate::transfer::{Key, PROTOCOL_VERSION};
use haul_proto::criu::{
    CriuFeatures, CriuNotify, CriuOpts, CriuReqType, CriuResp, CriuRestoreResp, CriuVersion,
    DumpStatsEntry, RestoreStatsEntry, StatsEntry,
};
use haul_proto::haul::{
    control::Msg, Abort, Commit, Control, CpuCheck, FileBegin, FileEnd, FsMode, Hello, ImagesDone,
    PageServerStart, Prepare, Purpose, RuncContainer, Start, TreeDone, TreeEntry, TreeKind,
};
use prost::Message;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The pre-shared key of the fuzz targets and their seeds (not a secret: the seeds must
/// authenticate).
pub const KEY: [u8; 32] = *b"haul fuzz key, not a secret!!!!!";

/// The initiator's ephemeral key in the handshake seeds, fixed so the seeds are reproducible.
const SEED_EPHEMERAL: [u8; 32] = [7; 32];

// ---------------------------------------------------------------------------------------------
// Byte streams from memory
// ---------------------------------------------------------------------------------------------

/// A peer in memory: reads hand out at most `chunk` bytes (the peer's segments), then end of
/// file; what is written is kept.
struct Memory<'a> {
    input: &'a [u8],
    chunk: usize,
    output: Vec<u8>,
}

impl Read for Memory<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.input.len());
        let (head, tail) = self.input.split_at(n);
        if let Some(dst) = buf.get_mut(..n) {
            dst.copy_from_slice(head);
        }
        self.input = tail;
        Ok(n)
    }
}

impl Write for Memory<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl HandshakeIo for Memory<'_> {
    fn set_read_timeout(&mut self, _: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

/// Splits `data` into `[u16 big-endian length][bytes]` records; a short last one is kept.
fn records(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let n = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (rec, rest) = rest.split_at(n);
        data = rest;
        Some(rec)
    })
}

/// Appends one `[u16 big-endian length][bytes]` record.
fn push_record(out: &mut Vec<u8>, rec: &[u8]) {
    let len = u16::try_from(rec.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(rec.get(..usize::from(len)).unwrap_or(rec));
}

// ---------------------------------------------------------------------------------------------
// frames
// ---------------------------------------------------------------------------------------------

/// The initiator's sending key of a Noise session with [`KEY`] (the responder receives with
/// it), from a real handshake, made once per process.
pub(crate) fn session() -> Option<[u8; 32]> {
    static SESSION: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    *SESSION.get_or_init(|| {
        let key = Key(KEY);
        let (hello, mut hs) = initiate(&key, None)?;
        let mut peer = Memory {
            input: &hello,
            chunk: usize::MAX,
            output: Vec::new(),
        };
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        handshake::respond_offering(&mut peer, Some(&key), deadline, FUZZ_OFFERS).ok()??;
        // The responder wrote its preamble, then [u32 length][Noise message 2].
        let msg2 = peer.output.get(12..)?;
        let mut payload = [0u8; HANDSHAKE_MSG_MAX];
        hs.read_message(msg2, &mut payload).ok()?;
        // Noise's split: the initiator sends with the first key.
        Some(hs.dangerously_get_raw_split().0)
    })
}

/// The initiator's first bytes (keyed preamble, then Noise message 1 with its length) and its
/// handshake state.
fn initiate(key: &Key, ephemeral: Option<&[u8; 32]>) -> Option<(Vec<u8>, snow::HandshakeState)> {
    let ours = preamble_offering(true, FUZZ_OFFERS);
    let mut prologue = [0u8; 16];
    prologue[..8].copy_from_slice(&ours);
    prologue[8..].copy_from_slice(&preamble_offering(true, FUZZ_OFFERS));
    let mut b = builder(key, &prologue).ok()?;
    if let Some(e) = ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut hs = b.build_initiator().ok()?;
    let mut msg = [0u8; HANDSHAKE_MSG_MAX];
    let n = hs.write_message(&[], &mut msg).ok()?;
    let mut bytes = ours.to_vec();
    bytes.extend_from_slice(&u32::try_from(n).ok()?.to_be_bytes());
    bytes.extend_from_slice(msg.get(..n)?);
    Some((bytes, hs))
}

/// `frames`: the first byte picks the cipher (bit 7: AEGIS-128L where the CPU runs it, else
/// ChaCha20-Poly1305) and, with its low 7 bits, how the rest reaches a `RecvHalf`:
/// - `0 mod 3`: as the wire bytes of a plaintext (`--insecure`) connection;
/// - `1 mod 3`: as the wire bytes of an encrypted connection (forgeries: nothing may decrypt);
/// - `2 mod 3`: as `[u16 length][plaintext]` records, each encrypted into one frame by the peer's
///   half of a real session first, so the decrypted `[kind][payload]` bodies are the fuzzer's.
pub fn frames(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Bit 7 picks the cipher: AEGIS-128L where the CPU has AES instructions.
    let cipher = if mode & 0x80 != 0 && haul_seal::aegis_available() {
        haul_seal::Cipher::Aegis128L
    } else {
        haul_seal::Cipher::ChaCha20Poly1305
    };
    let key = |k: &[u8; 32]| FrameKey::for_session(cipher, k);
    match (mode & 0x7f) % 3 {
        0 => {
            read_frames(RecvHalf::new(rest, None, 0));
        }
        1 => {
            if let Some(k) = session().as_ref().and_then(key) {
                let n = read_frames(RecvHalf::new(rest, Some(k), 0));
                // Without the session's keys nothing authenticates.
                assert_eq!(n, 0, "a forged frame decrypted");
            }
        }
        _ => {
            if let (Some(tx), Some(rx)) = (
                session().as_ref().and_then(key),
                session().as_ref().and_then(key),
            ) {
                let wire = seal(&tx, rest);
                read_frames(RecvHalf::new(&wire[..], Some(rx), 0));
            }
        }
    }
}

/// Encrypts each record (cut to `FRAME_PLAINTEXT_MAX`) into one `[u32 length][body]` frame.
fn seal(initiator: &FrameKey, data: &[u8]) -> Vec<u8> {
    seal_each(initiator, records(data))
}

/// Encrypts each plaintext (cut to `FRAME_PLAINTEXT_MAX`) into one `[u32 length][body]` frame,
/// with nonces from 0, as a `SendHalf` would.
pub(crate) fn seal_each<'p>(
    initiator: &FrameKey,
    plaintexts: impl IntoIterator<Item = &'p [u8]>,
) -> Vec<u8> {
    let mut wire = Vec::new();
    for (nonce, rec) in (0u64..).zip(plaintexts) {
        let mut body = rec.get(..FRAME_PLAINTEXT_MAX).unwrap_or(rec).to_vec();
        let Ok(tag) = initiator.seal(nonce, &mut body) else {
            return wire;
        };
        body.extend_from_slice(&tag);
        wire.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        wire.extend_from_slice(&body);
    }
    wire
}

/// Reads frames until the first error, as the connection's reader does; returns how many.
fn read_frames<R: Read>(mut rx: RecvHalf<R>) -> usize {
    let mut frames = 0usize;
    loop {
        match rx.recv("fuzzing") {
            Ok((kind, payload)) => {
                frames += 1;
                assert!(payload.len() < FRAME_MAX, "payload over the frame cap");
                if kind == Kind::Control {
                    let _ = decode_control(payload);
                }
            }
            Err(e) => {
                let _ = e.to_string();
                return frames;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// handshake
// ---------------------------------------------------------------------------------------------

/// `handshake`: the first byte's low bit says whether the responder has [`KEY`] (1) or runs
/// `--insecure` (0); its other bits, if not zero, how many bytes each read returns (a peer
/// trickling its bytes). The rest is what the initiator sends.
pub fn handshake(data: &[u8]) {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let key = Key(KEY);
    let key = (opts & 1 == 1).then_some(&key);
    let chunk = match usize::from(opts >> 1) {
        0 => usize::MAX,
        n => n,
    };
    let mut peer = Memory {
        input: rest,
        chunk,
        output: Vec::new(),
    };
    let result = handshake::respond_offering(
        &mut peer,
        key,
        Instant::now() + HANDSHAKE_TIMEOUT,
        FUZZ_OFFERS,
    );
    // The responder answers a complete preamble with its own before judging it ...
    if rest.len() >= 8 {
        assert!(peer
            .output
            .starts_with(&preamble_offering(key.is_some(), FUZZ_OFFERS)));
    }
    match result {
        Ok(cipher) => assert_eq!(cipher.is_some(), key.is_some(), "mode changed"),
        // ... and sends nothing more to a peer it refused.
        Err(e) => {
            let _ = e.to_string();
            assert!(peer.output.len() <= 8, "answered a refused peer");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dest_control
// ---------------------------------------------------------------------------------------------

/// Where the destination's files go while fuzzing: `<tmp>/haul-fuzz-<pid>/`, holding `canary/`
/// (absolute symlink targets are moved under it) and `l1/l2/l3/l4/work/` (the migration's
/// directory, deep enough that the relative targets kept stay inside). Made once per process.
fn scratch() -> Option<&'static Path> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("haul-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("canary")).ok()?;
        std::fs::create_dir_all(root.join("l1/l2/l3/l4")).ok()?;
        Some(root)
    })
    .as_deref()
}

/// Most `..` components kept in a symlink target: from the deepest directory a migration can
/// name within a few levels they stay inside the scratch root.
const DOTDOT_KEPT: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Hello,
    Check,
    Prepare { runc: bool },
    Receiving,
    Restart,
    Commit,
    Done,
}

/// The destination's side of one migration, as `dest::session` and `dest::restart` route what
/// the source sends, with real sinks in a scratch directory but no CRIU and no runc.
struct Dest {
    work: PathBuf,
    canary: PathBuf,
    stage: Stage,
    images: Option<ImageSink>,
    tree: Option<TreeSink>,
    /// Pre-copy asked for in Prepare. Each PageServerStart is judged as the first of the
    /// migration would be (no CRIU here starts the page server that moves the count on).
    pre_copy: bool,
    /// `--lazy` in Prepare: no page server, the memory comes after the resume.
    lazy: bool,
    /// Without pre-copy or `--lazy`: haul's page writer, from Prepared on.
    pages: Option<PageImages>,
}

type Step = Result<(), String>;

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn open_dir(p: &Path) -> Result<OwnedFd, String> {
    std::fs::create_dir_all(p).map_err(text)?;
    rustix::fs::open(
        p,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(text)
}

impl Dest {
    fn frame(&mut self, kind: u8, payload: &[u8]) -> Step {
        match kind {
            1 => {
                let m = decode_control(payload).map_err(text)?;
                self.control(m)
            }
            4 => self.file_data(payload),
            // Page data and its end go to haul's page writer, or with pre-copy to a CRIU page
            // server; both exist from Prepared on.
            2 if self.stage == Stage::Receiving && !self.lazy => match self.pages.as_ref() {
                Some(w) => w.put(payload),
                None => Ok(()),
            },
            3 if self.stage == Stage::Receiving && !self.lazy => Ok(()),
            other => Err(format!("frame kind {other} here")),
        }
    }

    fn file_data(&mut self, d: &[u8]) -> Step {
        match (self.stage, self.tree.as_mut(), self.images.as_mut()) {
            (Stage::Receiving, Some(t), _) if t.in_file() => t.data(d).map_err(text),
            (Stage::Receiving, _, Some(s)) => s.data(d).map_err(text),
            (Stage::Restart, Some(t), _) => t.data(d).map_err(text),
            _ => Err("file data outside a file".into()),
        }
    }

    fn control(&mut self, m: Msg) -> Step {
        match (self.stage, m) {
            (_, Msg::Abort(a)) => Err(format!(
                "aborted during {}: {}",
                crate::util::printable(&a.stage),
                crate::util::printable(&a.reason)
            )),
            (Stage::Hello, Msg::Hello(h)) => {
                let _ = crate::util::printable(&h.migration_id);
                if h.protocol != u32::from(PROTOCOL_VERSION) {
                    return Err("protocol version differs".into());
                }
                self.stage = match Purpose::try_from(h.purpose) {
                    Ok(Purpose::Check) => Stage::Check,
                    Ok(Purpose::MigratePid) => Stage::Prepare { runc: false },
                    Ok(Purpose::MigrateRunc) => Stage::Prepare { runc: true },
                    _ => return Err("unsupported purpose".into()),
                };
                Ok(())
            }
            // Its image goes to CRIU's CPU check as a file.
            (Stage::Check, Msg::CpuCheck(_)) => {
                self.stage = Stage::Done;
                Ok(())
            }
            (Stage::Prepare { runc }, Msg::Prepare(p)) => self.prepare(runc, p),
            (Stage::Receiving | Stage::Restart, Msg::TreeEntry(e)) => match self.tree.as_mut() {
                Some(t) => t.entry(confine(e, &self.canary)).map_err(text),
                None => Err("bundle tree sent without --fs copy".into()),
            },
            (Stage::Receiving | Stage::Restart, Msg::TreeDone(d)) => {
                let _ = (d.pass, d.entries, d.bytes);
                Ok(())
            }
            (Stage::Receiving, Msg::FileBegin(b)) => match self.images.as_mut() {
                Some(s) => s.begin(b).map_err(text),
                None => Err("no image directory".into()),
            },
            (Stage::Receiving, Msg::FileEnd(e)) => match (self.tree.as_mut(), self.images.as_mut())
            {
                (Some(t), _) if t.in_file() => t.end(e).map_err(text),
                (_, Some(s)) => s.end(e).map_err(text),
                _ => Err("no image directory".into()),
            },
            (Stage::Restart, Msg::FileEnd(e)) => match self.tree.as_mut() {
                Some(t) => t.end(e).map_err(text),
                None => Err("file end without --fs copy".into()),
            },
            (Stage::Receiving, Msg::PageServerStart(p)) => {
                let ps = open_dir(&self.work)?;
                let servers = if self.pre_copy {
                    PageServers::new(ps)
                } else {
                    PageServers::default()
                };
                servers.target(p.iteration).map(|_| ())
            }
            (Stage::Receiving, Msg::ImagesDone(d)) => match self.images.as_ref() {
                Some(s) => {
                    s.done(&d).map_err(text)?;
                    if let Some(w) = self.pages.take() {
                        w.finish()?;
                    }
                    self.stage = Stage::Commit;
                    Ok(())
                }
                None => Err("no image directory".into()),
            },
            (Stage::Restart, Msg::Start(_)) | (Stage::Commit, Msg::Commit(_)) => {
                self.stage = Stage::Done;
                Ok(())
            }
            (stage, other) => Err(format!(
                "unexpected {} at {stage:?}",
                crate::dest::session::msg_name(&other)
            )),
        }
    }

    fn prepare(&mut self, runc: bool, p: Prepare) -> Step {
        let _ = p.encode_to_vec();
        self.lazy = p.lazy;
        self.pre_copy = p.pre_copy && !p.lazy;
        let mut copy = false;
        let mut restart = false;
        if runc {
            let rc = p
                .runc
                .ok_or("runc migration without a container description")?;
            let source = check_description(&rc).map_err(text)?;
            patch_for_registration(&source, &rc)?;
            copy = rc.fs == FsMode::FsCopy as i32;
            restart = rc.restart;
        }
        if copy {
            self.tree = Some(TreeSink::new(open_dir(&self.work.join("bundle"))?));
        }
        if restart {
            self.stage = Stage::Restart;
        } else {
            let dir = self.work.join("images");
            self.images = Some(ImageSink::new(open_dir(&dir)?));
            if !self.lazy && !self.pre_copy {
                self.pages = Some(page_writer(&dir, false, Box::new(|_| Ok(())))?);
            }
            self.stage = Stage::Receiving;
        }
        Ok(())
    }
}

/// Patches the source's state.json as the registration does, and checks the result is a fixed
/// point of the same patch and, if haul's own parser accepted the source, accepted too with the
/// new id.
fn patch_for_registration(source: &str, rc: &RuncContainer) -> Step {
    let reg = Registration {
        id: &rc.dst_id,
        init_pid: 4242,
        init_start: 123_456,
        created: "2026-01-01T00:00:00.000000000Z".into(),
        rootfs: "/var/lib/haul/bundles/x/rootfs",
        bundle: "/var/lib/haul/bundles/x",
        cgroup_paths: vec![("memory".into(), "/sys/fs/cgroup/memory/x".into())],
        namespace_paths: vec![("NEWPID".into(), "/proc/4242/ns/pid".into())],
        // Read from /proc/PID/fd of the restored init on this host, not sent by the peer.
        external_descriptors: ["/dev/null".into(), "pipe:[1]".into(), "pipe:[1]".into()],
        labels: Vec::new(),
    };
    let out = state_json(source, &reg).map_err(text)?;
    let again = state_json(&out, &reg).map_err(|e| format!("patched text: {e}"));
    assert_eq!(
        again.as_deref(),
        Ok(out.as_str()),
        "patch is not a fixed point"
    );
    let mut buf = vec![0u8; source.len()];
    if crate::inspect::parse_state(source.as_bytes(), &mut buf).is_ok() {
        let mut buf = vec![0u8; out.len()];
        let parsed = crate::inspect::parse_state(out.as_bytes(), &mut buf);
        let id = parsed.as_ref().map(|s| s.id.as_str());
        assert_eq!(
            id,
            Ok(rc.dst_id.as_str()),
            "haul rejects or misreads its own patch"
        );
    }
    Ok(())
}

/// The harness's only change to what the peer sends: symlink targets that would point outside
/// the scratch root (absolute, or with many `..`) are moved under `canary`, and directories
/// keep their owner's access so the scratch directory can be removed without root.
fn confine(mut e: TreeEntry, canary: &Path) -> TreeEntry {
    if e.kind == TreeKind::TreeDir as i32 {
        e.mode |= 0o700;
    }
    if e.kind == TreeKind::TreeSymlink as i32 {
        let t = Path::new(&e.target);
        let dotdots = t
            .components()
            .filter(|c| *c == Component::ParentDir)
            .count();
        if t.is_absolute() {
            e.target = format!("{}{}", canary.display(), e.target);
        } else if dotdots > DOTDOT_KEPT {
            let mut kept = 0;
            let parts: Vec<&str> = e
                .target
                .split('/')
                .filter(|c| {
                    let drop = *c == ".." && kept >= DOTDOT_KEPT;
                    if *c == ".." {
                        kept += 1;
                    }
                    !drop
                })
                .collect();
            e.target = parts.join("/");
        }
    }
    e
}

/// Splits `data` into `[kind][u16 big-endian length][payload]` frames.
fn script(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&kind, rest) = data.split_first()?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let n = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (payload, rest) = rest.split_at(n);
        data = rest;
        Some((kind, payload))
    })
}

fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    push_record(out, payload);
}

fn push_control(out: &mut Vec<u8>, m: Msg) {
    push_frame(out, 1, &Control { msg: Some(m) }.encode_to_vec());
}

/// Lists a directory (empty if it cannot be read).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `dest_control`: `[kind][u16 big-endian length][payload]` frames from a source (kind 1
/// control, 2 page data, 3 page end, 4 file data), handled in order until the destination
/// would close the connection. Afterwards nothing may exist outside the migration's directory.
pub fn dest_control(data: &[u8]) {
    let Some(root) = scratch() else {
        return;
    };
    let work = root.join("l1/l2/l3/l4/work");
    let _ = std::fs::remove_dir_all(&work);
    if std::fs::create_dir(&work).is_err() {
        return;
    }
    let mut dest = Dest {
        work: work.clone(),
        canary: root.join("canary"),
        stage: Stage::Hello,
        images: None,
        tree: None,
        pre_copy: false,
        lazy: false,
        pages: None,
    };
    for (kind, payload) in script(data) {
        if dest.frame(kind, payload).is_err() {
            break;
        }
    }
    drop(dest);
    let _ = std::fs::remove_dir_all(&work);
    assert_eq!(
        entries(&root.join("canary")),
        Vec::<String>::new(),
        "wrote through a symlink"
    );
    for (dir, expected) in [
        ("", &["canary", "l1"][..]),
        ("l1", &["l2"]),
        ("l1/l2", &["l3"]),
        ("l1/l2/l3", &["l4"]),
        ("l1/l2/l3/l4", &[]),
    ] {
        let mut found = entries(&root.join(dir));
        found.sort();
        assert_eq!(found, expected, "created outside the migration in {dir:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// CRIU
// ---------------------------------------------------------------------------------------------

/// `criu_responses`: `[u16 length][datagram]` records, queued as what `criu swrk` sends; haul
/// then asks VERSION and FEATURE_CHECK and runs a DUMP, answering each notification, as far as
/// the datagrams take it.
pub fn criu_responses(data: &[u8]) {
    use rustix::net::{send, socketpair, AddressFamily, SendFlags, SocketFlags, SocketType};
    let Ok((ours, theirs)) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    ) else {
        return;
    };
    for d in records(data) {
        if send(&theirs, d, SendFlags::NOSIGNAL | SendFlags::DONTWAIT).is_err() {
            break;
        }
    }
    // Non-blocking: once the queued datagrams are read, a read fails instead of waiting.
    let mut swrk = Swrk::from_socket(ours);
    match swrk.version() {
        Ok(v) => {
            let _ = (v < crate::criu::MIN_VERSION, v.to_string());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(f) = swrk.features() {
        let _ = (f.mem_track, f.lazy_pages);
    }
    if swrk
        .send(&Swrk::request(CriuReqType::Dump, CriuOpts::default()))
        .is_err()
    {
        return;
    }
    loop {
        match swrk.next_event() {
            Ok(Event::Notify { script, pid }) => {
                let _ = (script.len(), pid);
                if swrk.notify_reply(true).is_err() {
                    break;
                }
            }
            Ok(Event::Done(resp)) => {
                let _ = resp.dump.map(|d| d.restored);
                break;
            }
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
    drop(theirs);
}

/// `criu_stats`: the bytes of a `stats-dump` or `stats-restore` file.
pub fn criu_stats(data: &[u8]) {
    if let Some(e) = stats::parse(data) {
        let _ = (
            e.dump.map(|d| d.frozen_time),
            e.restore.map(|r| r.restore_time),
        );
    }
}

/// `criu_log`: the tail of a CRIU log; the lines quoted in an error.
pub fn criu_log(data: &[u8]) {
    let lines = log_excerpt::select(&String::from_utf8_lossy(data));
    assert!(lines.len() <= CRIU_LOG_ERROR_LINES, "too many lines quoted");
    assert!(lines
        .iter()
        .all(|l| !log_excerpt::is_harmless(l) && !l.contains('\n')));
}

/// `json_patch`: the source's state.json text, patched for registration.
pub fn json_patch(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let rc = RuncContainer {
        dst_id: "web2".into(),
        stdio: vec!["/dev/null".into(), "pipe:[1]".into(), "pipe:[1]".into()],
        ..Default::default()
    };
    let _ = patch_for_registration(source, &rc);
}

/// `tmpfs_archive`: a tmpfs archive (`tmpfs-dev-N.tar.gz.img`) from the source, walked as
/// haul's `tar --extract` walks it, without writing files: every name it accepts is relative
/// and free of `..`.
pub fn tmpfs_archive(data: &[u8]) {
    if let Ok(entries) = crate::criu::tar::extract::list(data) {
        for h in entries {
            assert!(h.path.starts_with("./"), "{:?}", h.path);
            assert!(!h.path.split('/').any(|c| c == ".."), "{:?}", h.path);
        }
    }
}

/// `criu_pagemap`: a pagemap image from the source. The lazy ranges haul takes from it are
/// page-aligned, non-empty, sorted and apart; their places in the pages file do not overlap.
pub fn criu_pagemap(data: &[u8]) {
    if let Ok(r) = crate::criu::pagemap::lazy_ranges(data, 4096) {
        assert!(
            r.iter()
                .all(|&(s, e)| s < e && s % 4096 == 0 && e % 4096 == 0),
            "{r:x?}"
        );
        assert!(r.windows(2).all(|w| w[0].1 <= w[1].0), "{r:x?}");
    }
    if let Ok(m) = crate::criu::pagemap::lazy_map(data, 4096) {
        let mut placed: Vec<(u64, u64)> = m
            .extents
            .iter()
            .filter_map(|e| Some((e.offset?, e.offset? + (e.end - e.start))))
            .collect();
        placed.sort_unstable();
        assert!(placed.windows(2).all(|w| w[0].1 <= w[1].0), "{placed:x?}");
    }
}

/// `criu_mm`: an mm image from the source. Its VMAs are sorted, non-empty and apart, and a
/// lazy run over all of memory cut at them covers exactly the VMAs.
pub fn criu_mm(data: &[u8]) {
    use crate::criu::pagemap::Extent;
    use crate::dest::fill::runs::Runs;
    let Ok(v) = crate::criu::mm::vmas(data) else {
        return;
    };
    assert!(v.iter().all(|&(s, e)| s < e), "{v:x?}");
    assert!(v.windows(2).all(|w| w[0].1 <= w[1].0), "{v:x?}");
    let all = [Extent {
        start: 0,
        end: u64::MAX,
        offset: None,
    }];
    let runs = Runs::from_lazy(&all, &v);
    let total: u64 = v.iter().map(|&(s, e)| e - s).sum();
    assert_eq!(runs.bytes(), total, "{v:x?}");
    assert!(runs
        .iter()
        .all(|r| v.iter().any(|&(s, e)| s <= r.start && r.end <= e)));
}

/// A page writer into `dir` (created), reading headers of CRIU 4.2's layout if `wide`.
fn page_writer(dir: &Path, wide: bool, reply: Reply) -> Result<PageImages, String> {
    use crate::criu::page_server::Layout;
    let layout = if wide { Layout::Wide } else { Layout::Narrow };
    Ok(PageImages::new(
        open_dir(dir)?,
        dir.to_path_buf(),
        PageStream::new(layout, 4096),
        wide,
        reply,
    ))
}

/// `page_stream`: the page stream of a dump from the source, as the destination writes it
/// into page maps and pages files (`dest::page_images`). Byte 0: bit 0 picks the header layout
/// (1: CRIU 4.2's 32 bytes, 0: 24 bytes). Byte 1: the size of the pieces the rest arrives in
/// (1-256). Whatever it is: the answers are the protocol's (one byte per open, four per parent
/// question and for the close, then the end), and a stream the writer calls complete left
/// exactly its pages in the files.
pub fn page_stream(data: &[u8]) {
    let _ = page_stream_run(data);
}

/// `page_stream`, telling what the writer made of a complete stream (None: not run).
fn page_stream_run(data: &[u8]) -> Option<Result<crate::dest::page_images::Written, String>> {
    use crate::dest::page_images::Answer;
    use std::sync::{Arc, Mutex};
    let (&mode, &piece, root) = (data.first()?, data.get(1)?, scratch()?);
    let dir = root.join("l1/l2/l3/l4/pages");
    let _ = std::fs::remove_dir_all(&dir);
    let answers = Arc::new(Mutex::new((0usize, false)));
    let seen = answers.clone();
    let reply: Reply = Box::new(move |a| {
        let mut g = seen.lock().map_err(|_| "poisoned".to_string())?;
        assert!(!g.1, "an answer after the end");
        match a {
            Answer::Bytes(b) => {
                assert!(matches!(b.len(), 1 | 4), "{b:?}");
                g.0 += b.len();
            }
            Answer::End => g.1 = true,
        }
        Ok(())
    });
    let w = page_writer(&dir, mode & 1 == 1, reply).ok()?;
    let mut fed = 0u64;
    for chunk in data
        .get(2..)
        .unwrap_or_default()
        .chunks(usize::from(piece).max(1))
    {
        if w.put(chunk).is_err() {
            break;
        }
        fed += chunk.len() as u64;
    }
    let result = w.finish();
    if let Ok(written) = result {
        let (answered, ended) = *answers.lock().unwrap_or_else(|e| e.into_inner());
        assert!(ended, "complete without the end");
        assert!(answered >= 4, "complete without the close's answer");
        assert!(written.page_bytes <= fed);
        let on_disk: u64 = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(on_disk, written.page_bytes);
    }
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
    Some(result)
}

/// A dump's page stream for seeds: task 1 with a present run of two pages and a lazy one,
/// a shared segment with one page, the close.
fn page_session(wide: bool) -> Vec<u8> {
    use crate::criu::page_server::{Iov, Layout, IOV_ADD_F, IOV_CLOSE, IOV_OPEN2};
    let layout = if wide { Layout::Wide } else { Layout::Narrow };
    let h = |cmd: u32, nr_pages: u64, vaddr: u64, dst_id: u64| {
        Iov {
            cmd,
            nr_pages,
            vaddr,
            dst_id,
        }
        .encode(layout)[..layout.header_len()]
            .to_vec()
    };
    let (task, shm) = (1 << 8 | 1, 5 << 8 | 2);
    let mut s = h(IOV_OPEN2, 0, 0, task);
    s.extend(h(4 << 16 | IOV_ADD_F, 2, 0x40_0000, task));
    s.extend((0..2 * 4096u32).map(|i| (i % 253) as u8));
    s.extend(h(6 << 16 | IOV_ADD_F, 1, 0x7f00_0000_0000, task));
    s.extend([0x5a; 4096]);
    s.extend(h(IOV_OPEN2, 0, 0, shm));
    s.extend(h(4 << 16 | IOV_ADD_F, 1, 0, shm));
    s.extend([0xa5; 4096]);
    s.extend(h(IOV_CLOSE, 0, 0, 0));
    s
}

/// Image id and first address of the lazy run `lazy_answers` sets up (64 pages).
const LAZY_TASK: u64 = 7;
const LAZY_BASE: u64 = 0x7f00_0000_0000;

/// `lazy_answers`: the source's bytes on the page stream of a post-copy, through haul's
/// read-ahead filter on the destination (`dest::prefetch`). Byte 0: bit 0 picks the header
/// layout (1: CRIU 4.2's 32 bytes, 0: 24 bytes), bits 1-4 how many consecutive single-page
/// faults the daemon asked first, from the start of a 64-page lazy run (3 or more put a
/// read-ahead on the wire), bit 5 a background question of 16 pages after them (it starts
/// the background stream). Byte 1: the size of the pieces the rest arrives in (1-256). The
/// rest: what the source sends. Whatever it is, the filter keeps its cache within bounds and
/// every question of the daemon accounted for, and a wrong answer is an error, not a panic.
pub fn lazy_answers(data: &[u8]) {
    let _ = lazy_answers_run(data);
}

/// `lazy_answers`, telling whether the filter took all the source's bytes (None: not run).
fn lazy_answers_run(data: &[u8]) -> Option<Result<(), String>> {
    use crate::criu::page_server::Layout;
    use crate::dest::prefetch::Prefetch;
    let (&mode, &piece) = (data.first()?, data.get(1)?);
    let images = lazy_images()?.to_path_buf();
    let (ours, theirs) = crate::transfer::pages::socket_pair().ok()?;
    rustix::io::ioctl_fionbio(&theirs, true).ok()?;
    let layout = if mode & 1 == 1 {
        Layout::Wide
    } else {
        Layout::Narrow
    };
    let f = Prefetch::with_sizes(
        std::sync::Arc::new(ours),
        images,
        Box::new(|_: &[u8]| Ok(())),
        layout,
        4096,
        16 * 4096,
        64 * 4096,
    );
    let drain = || {
        let mut buf = [0u8; 65536];
        while matches!(rustix::io::read(&theirs, &mut buf), Ok(n) if n > 0) {}
    };
    lazy_questions(mode, |q| f.ask(q)).ok()?;
    let piece = usize::from(piece).max(1);
    for chunk in data.get(2..).unwrap_or_default().chunks(piece) {
        let r = f.put(chunk);
        drain();
        let held = f.invariants();
        assert!(held.is_ok(), "{held:?}");
        if let Err(e) = r {
            return Some(Err(e));
        }
    }
    let c = f.counts();
    Some(if mode >> 1 & 0xf >= 3 && c.prefetched == 0 {
        Err("no read-ahead".into())
    } else {
        Ok(())
    })
}

/// `<tmp>/haul-fuzz-lazy-<pid>/` holding `pagemap-<LAZY_TASK>.img` (`lazy_pagemap_seed`),
/// made once per process.
fn lazy_images() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("haul-fuzz-lazy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(
            dir.join(format!("pagemap-{LAZY_TASK}.img")),
            lazy_pagemap_seed(),
        )
        .ok()?;
        Some(dir)
    })
    .as_deref()
}

/// The daemon's questions of `lazy_answers` (mode byte: see there).
fn lazy_questions(
    mode: u8,
    mut ask: impl FnMut(crate::criu::page_server::Iov) -> Result<(), String>,
) -> Result<(), String> {
    use crate::criu::page_server::Iov;
    for i in 0..u64::from(mode >> 1 & 0xf) {
        ask(Iov::get(LAZY_TASK, LAZY_BASE + i * 4096, 1))?;
    }
    if mode & 0x20 != 0 {
        ask(Iov::get(LAZY_TASK, LAZY_BASE + 32 * 4096, 16))?;
    }
    Ok(())
}

/// A pagemap image with one lazy run of 64 pages at `LAZY_BASE` (and a run that is not lazy).
fn lazy_pagemap_seed() -> Vec<u8> {
    use haul_proto::criu::{PagemapEntry, PagemapHead};
    let mut b = Vec::new();
    b.extend_from_slice(&0x5456_4319u32.to_le_bytes());
    b.extend_from_slice(&0x5608_4025u32.to_le_bytes());
    let mut rec = |m: Vec<u8>| {
        b.extend_from_slice(&u32::try_from(m.len()).unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&m);
    };
    rec(PagemapHead { pages_id: 1 }.encode_to_vec());
    for (vaddr, pages, flags) in [(0x5555_0000_0000u64, 2u32, 4u32), (LAZY_BASE, 64, 2)] {
        rec(PagemapEntry {
            vaddr,
            compat_nr_pages: pages,
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(u64::from(pages)),
        }
        .encode_to_vec());
    }
    b
}

/// The source's answers to `faults` faults from `LAZY_BASE` and to the read-aheads they start,
/// in `layout`: what a filter set up as `lazy_answers` does sent to the source, answered in
/// order as CRIU's page server answers.
fn lazy_answers_seed(wide: bool, faults: u64, background: bool) -> Vec<u8> {
    use crate::criu::page_server::{Iov, Layout};
    use crate::dest::prefetch::Prefetch;
    use std::sync::{Arc, Mutex};
    let layout = if wide { Layout::Wide } else { Layout::Narrow };
    let hlen = layout.header_len();
    let mode = u8::from(wide) | (faults as u8) << 1 | u8::from(background) << 5;
    let mut out = vec![mode, 200];
    let (Some(images), Ok((ours, _theirs))) =
        (lazy_images(), crate::transfer::pages::socket_pair())
    else {
        return out;
    };
    let images = images.to_path_buf();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    let f = Prefetch::with_sizes(
        Arc::new(ours),
        images,
        Box::new(move |b: &[u8]| {
            if let Ok(mut l) = log.lock() {
                l.extend_from_slice(b);
            }
            Ok(())
        }),
        layout,
        4096,
        16 * 4096,
        64 * 4096,
    );
    let _ = lazy_questions(mode, |q| f.ask(q));
    let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
    for q in sent
        .chunks_exact(hlen)
        .filter_map(|h| Iov::decode(h, layout))
    {
        out.extend_from_slice(
            Iov::pages(q.dst_id, q.vaddr, q.nr_pages)
                .encode(layout)
                .get(..hlen)
                .unwrap_or_default(),
        );
        for i in 0..q.nr_pages * 4096 {
            out.push((i % 251) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// One generated seed: `fuzz/seeds/<target>/<name>`.
#[derive(Debug)]
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: &'static str, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name,
        bytes,
    }
}

fn hello(purpose: Purpose) -> Msg {
    Msg::Hello(Hello {
        protocol: u32::from(PROTOCOL_VERSION),
        agent_version: "0.1.0".into(),
        criu: None,
        purpose: purpose as i32,
        migration_id: "m-1795938661250-9f3a01c2".into(),
    })
}

fn file(out: &mut Vec<u8>, name: &str, bytes: &[u8]) {
    push_control(
        out,
        Msg::FileBegin(FileBegin {
            name: name.into(),
            mode: 0o600,
        }),
    );
    push_frame(out, 4, bytes);
    push_control(
        out,
        Msg::FileEnd(FileEnd {
            size: bytes.len() as u64,
        }),
    );
}

fn tree_entry(out: &mut Vec<u8>, path: &str, kind: TreeKind, target: &str) {
    push_control(
        out,
        Msg::TreeEntry(TreeEntry {
            path: path.into(),
            kind: kind as i32,
            mode: if kind == TreeKind::TreeDir {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
            target: target.into(),
        }),
    );
}

fn images(out: &mut Vec<u8>) {
    let session = page_session(false);
    let (a, b) = session.split_at(30);
    push_frame(out, 2, a);
    push_frame(out, 2, b);
    push_frame(out, 3, &[]);
    file(out, "core-1.img", b"\x54\x59\x04\x12core");
    file(out, "pstree.img", b"\x54\x59\x04\x12pstree");
    push_control(
        out,
        Msg::ImagesDone(ImagesDone {
            files: 2,
            bytes: 18,
        }),
    );
}

fn runc_description(state_json: Vec<u8>, fs: FsMode, restart: bool) -> Msg {
    Msg::Prepare(Prepare {
        expected_page_bytes: 0,
        runc: Some(RuncContainer {
            id: "ctp".into(),
            dst_id: "ctp-b".into(),
            state_json,
            stdio: vec!["/dev/null".into(), "pipe:[1]".into(), "pipe:[1]".into()],
            cgroup_mounts: vec!["/sys/fs/cgroup/memory".into()],
            masked_files: vec!["/proc/kcore".into()],
            fs: fs as i32,
            readonly_root: false,
            restart,
            own_netns: false,
        }),
        ..Default::default()
    })
}

fn bundle_tree(out: &mut Vec<u8>) {
    tree_entry(out, "config.json", TreeKind::TreeFile, "");
    push_frame(out, 4, b"{}");
    push_control(out, Msg::FileEnd(FileEnd { size: 2 }));
    tree_entry(out, "rootfs", TreeKind::TreeDir, "");
    tree_entry(out, "rootfs/bin", TreeKind::TreeDir, "");
    tree_entry(out, "rootfs/bin/busybox", TreeKind::TreeFile, "");
    push_frame(out, 4, b"\x7fELF");
    push_control(out, Msg::FileEnd(FileEnd { size: 4 }));
    tree_entry(out, "rootfs/bin/sh", TreeKind::TreeSymlink, "busybox");
    tree_entry(out, "rootfs/etc", TreeKind::TreeSymlink, "/etc");
    push_control(
        out,
        Msg::TreeDone(TreeDone {
            pass: 1,
            entries: 6,
            bytes: 6,
        }),
    );
}

fn criu_resp(kind: CriuReqType, success: bool) -> CriuResp {
    CriuResp {
        r#type: kind as i32,
        success,
        ..Default::default()
    }
}

fn notify(script: &str, pid: i32) -> Vec<u8> {
    CriuResp {
        notify: Some(CriuNotify {
            script: Some(script.into()),
            pid: Some(pid),
        }),
        ..criu_resp(CriuReqType::Notify, true)
    }
    .encode_to_vec()
}

fn version_4_1_1() -> Vec<u8> {
    CriuResp {
        version: Some(CriuVersion {
            major_number: 4,
            minor_number: 1,
            sublevel: Some(1),
            ..Default::default()
        }),
        ..criu_resp(CriuReqType::Version, true)
    }
    .encode_to_vec()
}

fn features() -> Vec<u8> {
    CriuResp {
        features: Some(CriuFeatures {
            mem_track: Some(true),
            lazy_pages: Some(false),
            pidfd_store: None,
        }),
        ..criu_resp(CriuReqType::FeatureCheck, true)
    }
    .encode_to_vec()
}

fn records_of(recs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        push_record(&mut out, r);
    }
    out
}

fn stats_file(entry: &StatsEntry) -> Vec<u8> {
    let body = entry.encode_to_vec();
    let mut out = Vec::new();
    out.extend_from_slice(&0x5510_5940u32.to_le_bytes());
    out.extend_from_slice(&0x5709_3306u32.to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The generated seeds (messages encoded here, and copies of files under `fixtures`).
pub fn seeds(fixtures: &Path) -> Result<Vec<Seed>, String> {
    let fixture = |rel: &str| -> Result<Vec<u8>, String> {
        let p = fixtures.join(rel);
        std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut out = Vec::new();

    // frames
    let mut plain = vec![0u8];
    for (kind, payload) in [
        (
            1u8,
            Control {
                msg: Some(hello(Purpose::MigratePid)),
            }
            .encode_to_vec(),
        ),
        (4, b"file bytes".to_vec()),
        (2, b"page-server bytes".to_vec()),
        (3, Vec::new()),
    ] {
        plain.extend_from_slice(&u32::try_from(payload.len() + 1).unwrap_or(0).to_be_bytes());
        plain.push(kind);
        plain.extend_from_slice(&payload);
    }
    out.push(seed("frames", "plain-stream", plain));
    let mut big = vec![0u8];
    big.extend_from_slice(&u32::try_from(FRAME_MAX + 1).unwrap_or(0).to_be_bytes());
    out.push(seed("frames", "plain-over-the-cap", big));
    out.push(seed(
        "frames",
        "plain-unknown-kind",
        vec![0, 0, 0, 0, 2, 9, 0],
    ));
    let mut sealed = vec![2u8];
    for rec in [
        [
            &[1u8][..],
            &Control {
                msg: Some(hello(Purpose::MigrateRunc)),
            }
            .encode_to_vec(),
        ]
        .concat(),
        b"\x04file bytes".to_vec(),
        b"\x02page-server bytes".to_vec(),
        vec![3],
        Vec::new(),
        vec![1, 0xff, 0xff],
        vec![0x7f],
    ] {
        push_record(&mut sealed, &rec);
    }
    out.push(seed("frames", "sealed-stream", sealed));
    let mut forged = vec![1u8, 0, 0, 0, 40];
    forged.extend_from_slice(&[0x5a; 40]);
    out.push(seed("frames", "forged", forged));

    // handshake
    let key = Key(KEY);
    let (keyed, _) = initiate(&key, Some(&SEED_EPHEMERAL)).ok_or("noise initiator")?;
    out.push(seed("handshake", "keyed", [&[1u8][..], &keyed].concat()));
    out.push(seed(
        "handshake",
        "keyed-trickle",
        [&[1u8 | 3 << 1][..], &keyed].concat(),
    ));
    out.push(seed(
        "handshake",
        "insecure",
        [&[0u8][..], &preamble_offering(false, FUZZ_OFFERS)].concat(),
    ));
    let mut v2 = preamble_offering(true, FUZZ_OFFERS);
    v2[5] = 2;
    out.push(seed(
        "handshake",
        "other-version",
        [&[1u8][..], &v2].concat(),
    ));
    out.push(seed(
        "handshake",
        "mode-differs",
        [&[1u8][..], &preamble_offering(false, FUZZ_OFFERS)].concat(),
    ));
    out.push(seed(
        "handshake",
        "not-haul",
        b"\x01GET / HTTP/1.0\r\n\r\n".to_vec(),
    ));
    let mut long = vec![1u8];
    long.extend_from_slice(&preamble_offering(true, FUZZ_OFFERS));
    long.extend_from_slice(&1000u32.to_be_bytes());
    out.push(seed("handshake", "noise-too-long", long));

    // dest_control
    let state = fixture("runc-1.1.5-cgroupv1-hybrid/state.json")?;
    let mut pid = Vec::new();
    push_control(&mut pid, hello(Purpose::MigratePid));
    push_control(&mut pid, Msg::Prepare(Prepare::default()));
    images(&mut pid);
    push_control(&mut pid, Msg::Commit(Commit {}));
    out.push(seed("dest_control", "pid", pid));
    let mut shared = Vec::new();
    push_control(&mut shared, hello(Purpose::MigrateRunc));
    push_control(
        &mut shared,
        runc_description(state.clone(), FsMode::FsShared, false),
    );
    images(&mut shared);
    push_control(&mut shared, Msg::Commit(Commit {}));
    out.push(seed("dest_control", "runc-shared", shared));
    let mut copy = Vec::new();
    push_control(&mut copy, hello(Purpose::MigrateRunc));
    push_control(
        &mut copy,
        runc_description(state.clone(), FsMode::FsCopy, false),
    );
    bundle_tree(&mut copy);
    images(&mut copy);
    push_control(&mut copy, Msg::Commit(Commit {}));
    out.push(seed("dest_control", "runc-copy", copy));
    let mut restart = Vec::new();
    push_control(&mut restart, hello(Purpose::MigrateRunc));
    push_control(&mut restart, runc_description(state, FsMode::FsCopy, true));
    bundle_tree(&mut restart);
    push_control(&mut restart, Msg::Start(Start {}));
    out.push(seed("dest_control", "runc-restart", restart));
    let mut precopy = Vec::new();
    push_control(&mut precopy, hello(Purpose::MigratePid));
    push_control(
        &mut precopy,
        Msg::Prepare(Prepare {
            pre_copy: true,
            ..Default::default()
        }),
    );
    for iteration in [1, crate::source::precopy::FINAL] {
        push_control(
            &mut precopy,
            Msg::PageServerStart(PageServerStart { iteration }),
        );
    }
    images(&mut precopy);
    push_control(&mut precopy, Msg::Commit(Commit {}));
    out.push(seed("dest_control", "pid-pre-copy", precopy));
    let mut lazy = Vec::new();
    push_control(&mut lazy, hello(Purpose::MigratePid));
    push_control(
        &mut lazy,
        Msg::Prepare(Prepare {
            lazy: true,
            ..Default::default()
        }),
    );
    file(&mut lazy, "core-1.img", b"\x54\x59\x04\x12core");
    push_control(
        &mut lazy,
        Msg::ImagesDone(ImagesDone { files: 1, bytes: 8 }),
    );
    push_control(&mut lazy, Msg::Commit(Commit {}));
    out.push(seed("dest_control", "pid-lazy", lazy));
    let mut check = Vec::new();
    push_control(&mut check, hello(Purpose::Check));
    push_control(
        &mut check,
        Msg::CpuCheck(CpuCheck {
            cpuinfo_img: b"\x54\x59\x04\x12cpuinfo".to_vec(),
        }),
    );
    out.push(seed("dest_control", "check", check));
    let mut abort = Vec::new();
    push_control(&mut abort, hello(Purpose::MigratePid));
    push_control(&mut abort, Msg::Prepare(Prepare::default()));
    file(&mut abort, "../evil", b"x");
    push_control(
        &mut abort,
        Msg::Abort(Abort {
            stage: "dump".into(),
            reason: "criu failed\nnext line".into(),
        }),
    );
    out.push(seed("dest_control", "bad-name-abort", abort));

    // criu_responses
    let dump_resp = CriuResp {
        dump: Some(haul_proto::criu::CriuDumpResp {
            restored: Some(false),
        }),
        ..criu_resp(CriuReqType::Dump, true)
    };
    out.push(seed(
        "criu_responses",
        "dump",
        records_of(&[
            version_4_1_1(),
            features(),
            notify("network-lock", 0),
            notify("post-dump", 0),
            notify("network-unlock", 0),
            dump_resp.encode_to_vec(),
        ]),
    ));
    out.push(seed(
        "criu_responses",
        "restore-events",
        records_of(&[
            version_4_1_1(),
            features(),
            notify("setup-namespaces", 4242),
            notify("post-restore", 4242),
            CriuResp {
                restore: Some(CriuRestoreResp { pid: 4242 }),
                ..criu_resp(CriuReqType::Restore, true)
            }
            .encode_to_vec(),
        ]),
    ));
    out.push(seed(
        "criu_responses",
        "failures",
        records_of(&[
            CriuResp {
                cr_errno: Some(1),
                cr_errmsg: Some("rlimit: Can't setup RLIMIT_NOFILE".into()),
                ..criu_resp(CriuReqType::Version, false)
            }
            .encode_to_vec(),
            criu_resp(CriuReqType::Dump, true).encode_to_vec(),
            CriuResp {
                cr_errno: Some(16),
                cr_errmsg: Some("Can't freeze".into()),
                ..criu_resp(CriuReqType::Empty, false)
            }
            .encode_to_vec(),
        ]),
    ));

    // criu_stats
    out.push(seed(
        "criu_stats",
        "dump",
        stats_file(&StatsEntry {
            dump: Some(DumpStatsEntry {
                freezing_time: 1200,
                frozen_time: 45_000,
                memdump_time: 9000,
                memwrite_time: 8000,
                pages_scanned: 2048,
                pages_written: 300,
                page_pipes: Some(1),
                ..Default::default()
            }),
            restore: None,
        }),
    ));
    out.push(seed(
        "criu_stats",
        "restore",
        stats_file(&StatsEntry {
            dump: None,
            restore: Some(RestoreStatsEntry {
                forking_time: 800,
                restore_time: 52_000,
                pages_restored: Some(300),
                ..Default::default()
            }),
        }),
    ));

    // criu_log
    out.push(seed(
        "criu_log",
        "errors",
        b"(00.000010) Error (criu/util.c:123): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
          (00.001000) Dumping task 42\n\
          (00.002000) Error (criu/mount.c:1100): mnt: Can't lookup mount=123 for fd=1 path=/x\n\
          (00.002100) Error (criu/cr-dump.c:2000): Dumping FAILED.\n"
            .to_vec(),
    ));

    // json_patch
    for (name, rel) in [
        ("hybrid-state.json", "runc-1.1.5-cgroupv1-hybrid/state.json"),
        ("escapes-state.json", "runc-1.1.5-escapes/state.json"),
        (
            "cgroup2-only-state.json",
            "cgroup2-only-synthetic/state.json",
        ),
    ] {
        out.push(seed("json_patch", name, fixture(rel)?));
    }
    out.push(seed(
        "json_patch",
        "hooks-spelled-otherwise.json",
        br#"{"id":"a","config":{"rootfs":"/r","HOOKS":{"poststop":[{"path":"/bin/sh"}]},"hook\u0073":{},"labels":["bundle=/b"]},"CONFIG":{"Hooks":{}}}"#
            .to_vec(),
    ));

    // tmpfs_archive: a small tree as haul's tar writes it.
    out.push(seed("tmpfs_archive", "dev-like", tmpfs_archive_seed()));

    // criu_pagemap: a real lazy dump's, and the one lazy_answers uses.
    out.push(seed(
        "criu_pagemap",
        "criu-4.1.1-sleep",
        fixture("criu-4.1.1-lazy/pagemap-sleep.img")?,
    ));
    out.push(seed("criu_pagemap", "one-lazy-run", lazy_pagemap_seed()));
    out.push(seed(
        "criu_pagemap",
        "criu-4.1.1-python3",
        fixture("criu-4.1.1-dump/pagemap-7542.img")?,
    ));

    // criu_mm: a real dump's.
    out.push(seed(
        "criu_mm",
        "criu-4.1.1-python3",
        fixture("criu-4.1.1-dump/mm-7542.img")?,
    ));

    // lazy_answers: three faults and the read-ahead they start, both layouts; one fault.
    out.push(seed(
        "lazy_answers",
        "wide-read-ahead",
        lazy_answers_seed(true, 3, false),
    ));
    out.push(seed(
        "lazy_answers",
        "narrow-read-ahead",
        lazy_answers_seed(false, 3, false),
    ));
    out.push(seed(
        "lazy_answers",
        "one-fault",
        lazy_answers_seed(true, 1, false),
    ));
    out.push(seed(
        "lazy_answers",
        "background-stream",
        lazy_answers_seed(true, 0, true),
    ));

    // page_stream: a real dump's (CRIU 4.1.1 to its page server), whole and in pieces of
    // 7 bytes; a sample of both layouts.
    let real = fixture("criu-4.1.1-page-server/stream.bin")?;
    out.push(seed(
        "page_stream",
        "criu-4.1.1-busybox",
        [&[0u8, 0][..], &real].concat(),
    ));
    out.push(seed(
        "page_stream",
        "criu-4.1.1-pieces",
        [&[0u8, 7][..], &real].concat(),
    ));
    out.push(seed(
        "page_stream",
        "narrow",
        [&[0u8, 0][..], &page_session(false)].concat(),
    ));
    out.push(seed(
        "page_stream",
        "wide",
        [&[1u8, 200][..], &page_session(true)].concat(),
    ));

    Ok(out)
}

/// `./`, a directory, a file with content, a symbolic link, a device node, a FIFO.
fn tmpfs_archive_seed() -> Vec<u8> {
    use crate::criu::tar::gzip::StoredWriter;
    use crate::criu::tar::ustar::{Header, Kind as TarKind};
    use std::io::Write as _;
    let h = |path: &str, kind: TarKind, size: u64, link: &str, dev: (u32, u32)| Header {
        path: path.into(),
        kind,
        mode: if kind == TarKind::Dir { 0o1777 } else { 0o644 },
        uid: 0,
        gid: 5,
        size,
        mtime: 1_795_960_000,
        link: link.into(),
        major: dev.0,
        minor: dev.1,
    };
    let mut w = match StoredWriter::new(Vec::new()) {
        Ok(w) => w,
        Err(_) => return Vec::new(),
    };
    let entries = [
        h("./", TarKind::Dir, 0, "", (0, 0)),
        h("./pts/", TarKind::Dir, 0, "", (0, 0)),
        h("./data", TarKind::File, 5, "", (0, 0)),
        h("./fd", TarKind::Symlink, 0, "/proc/self/fd", (0, 0)),
        h("./null", TarKind::Char, 0, "", (1, 3)),
        h("./fifo", TarKind::Fifo, 0, "", (0, 0)),
    ];
    for e in entries {
        let Ok(block) = e.encode() else { continue };
        let _ = w.write_all(&block);
        if e.kind == TarKind::File {
            let mut data = [0u8; 512];
            data[..5].copy_from_slice(b"hello");
            let _ = w.write_all(&data);
        }
    }
    let _ = w.write_all(&[0u8; 1024]);
    w.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
    }

    /// The committed seeds are what [`seeds`] builds; `HAUL_UPDATE_SEEDS=1` (what
    /// `cargo xtask fuzz --update-seeds` sets) writes them instead.
    #[test]
    fn committed_seeds_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let update = std::env::var_os("HAUL_UPDATE_SEEDS").is_some_and(|v| v == "1");
        let mut stale = Vec::new();
        for s in seeds(&fixtures()).unwrap() {
            let path = dir.join(s.target).join(s.name);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &s.bytes).unwrap();
            } else if std::fs::read(&path).ok().as_deref() != Some(&s.bytes[..]) {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "stale or missing seeds (run `cargo xtask fuzz --update-seeds`): {stale:#?}"
        );
    }

    /// Every seed runs through its target without a finding, and the seeds reach deep: the
    /// handshake completes, the sealed frames decrypt, the migrations get to their end.
    #[test]
    fn seeds_pass_and_reach_the_end_of_their_protocol() {
        for s in seeds(&fixtures()).unwrap() {
            match s.target {
                "frames" => frames(&s.bytes),
                "handshake" => handshake(&s.bytes),
                "dest_control" => dest_control(&s.bytes),
                "criu_responses" => criu_responses(&s.bytes),
                "criu_stats" => criu_stats(&s.bytes),
                "criu_log" => criu_log(&s.bytes),
                "json_patch" => json_patch(&s.bytes),
                "tmpfs_archive" => tmpfs_archive(&s.bytes),
                "criu_pagemap" => criu_pagemap(&s.bytes),
                "criu_mm" => criu_mm(&s.bytes),
                "lazy_answers" => lazy_answers(&s.bytes),
                "page_stream" => page_stream(&s.bytes),
                other => panic!("seed for unknown target {other}"),
            }
        }
        let all = seeds(&fixtures()).unwrap();
        let get = |t: &str, n: &str| {
            &all.iter()
                .find(|s| s.target == t && s.name == n)
                .unwrap()
                .bytes
        };
        // The post-copy seeds are taken whole, read-ahead answers included.
        for n in [
            "wide-read-ahead",
            "narrow-read-ahead",
            "one-fault",
            "background-stream",
        ] {
            assert_eq!(
                lazy_answers_run(get("lazy_answers", n)),
                Some(Ok(())),
                "{n}"
            );
        }
        // The archive seed is read to its end, every entry.
        let archive = crate::criu::tar::extract::list(&get("tmpfs_archive", "dev-like")[..]);
        assert_eq!(archive.map(|e| e.len()), Ok(6));
        // The keyed handshake authenticates.
        let keyed = get("handshake", "keyed");
        let key = Key(KEY);
        let mut peer = Memory {
            input: &keyed[1..],
            chunk: 3,
            output: Vec::new(),
        };
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        assert!(
            handshake::respond_offering(&mut peer, Some(&key), deadline, FUZZ_OFFERS)
                .unwrap()
                .is_some()
        );
        // Sealed records decrypt into frames of every kind.
        let k = session().unwrap();
        let wire = seal(&FrameKey::new(&k), &get("frames", "sealed-stream")[1..]);
        let mut rx = RecvHalf::new(&wire[..], Some(FrameKey::new(&k)), 0);
        let kinds: Vec<Kind> = std::iter::from_fn(|| rx.recv("t").ok().map(|(k, _)| k)).collect();
        assert_eq!(
            kinds,
            [Kind::Control, Kind::FileData, Kind::PageData, Kind::PageEof]
        );
        // Each migration seed is handled to its end.
        let root = scratch().unwrap();
        for name in [
            "pid",
            "pid-pre-copy",
            "pid-lazy",
            "runc-shared",
            "runc-copy",
            "runc-restart",
            "check",
        ] {
            let work = root.join("l1/l2/l3/l4/work");
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir(&work).unwrap();
            let mut d = Dest {
                work: work.clone(),
                canary: root.join("canary"),
                stage: Stage::Hello,
                images: None,
                tree: None,
                pre_copy: false,
                lazy: false,
                pages: None,
            };
            for (kind, payload) in script(get("dest_control", name)) {
                if let Err(e) = d.frame(kind, payload) {
                    // Not root: the tree's chown fails; everything before it ran.
                    assert!(
                        e.contains("chown") && !rustix::process::geteuid().is_root(),
                        "{name}: {e}"
                    );
                    break;
                }
            }
            if rustix::process::geteuid().is_root() {
                assert_eq!(d.stage, Stage::Done, "{name}");
            }
            drop(d);
            std::fs::remove_dir_all(&work).unwrap();
        }
        // The page-stream seeds are complete dumps: 16 pages of busybox, 4 of the samples.
        for (name, pages) in [
            ("criu-4.1.1-busybox", 16),
            ("criu-4.1.1-pieces", 16),
            ("narrow", 4),
            ("wide", 4),
        ] {
            let w = page_stream_run(get("page_stream", name)).unwrap().unwrap();
            assert_eq!(w.page_bytes, pages * 4096, "{name}");
        }
        // No other test of this process uses the scratch directory.
        std::fs::remove_dir_all(root).unwrap();
    }
}
