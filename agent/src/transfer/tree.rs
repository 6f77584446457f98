//! `--fs copy`: the bundle tree (config.json and the rootfs) streamed as TreeEntry messages,
//! file bytes in FILE_DATA frames, FileEnd, and TreeDone per pass. Pass 1 runs before the
//! freeze; pass 2, while frozen, sends only what changed since (new entries, files whose size
//! or modification time differ). Deletions between the passes are not propagated.
//!
//! The destination creates every entry beneath its bundle directory, opening the parent one
//! component at a time with `O_NOFOLLOW` and the last component with `O_NOFOLLOW` too, so a
//! symlink the peer sent earlier can never redirect a later write outside.

use super::frame::PAYLOAD_MAX;
use super::{Conn, WireError};
use crate::limits::{TREE_BYTES_MAX, TREE_ENTRIES_MAX, TREE_PATH_MAX};
use haul_proto::haul::{control::Msg, FileEnd, TreeDone, TreeEntry, TreeKind};
use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What pass 1 saw of each path: (size, mtime seconds, mtime nanoseconds).
pub type Snapshot = HashMap<PathBuf, (u64, i64, i64)>;

/// Sends the entries under `root` named by `tops` (e.g. `config.json`, `rootfs`), depth
/// first, parents before children. With `since`, only new or changed entries are sent.
/// Returns what was seen (for the next pass), entries sent and file bytes sent.
pub fn send_tree(
    conn: &Conn,
    root: &Path,
    tops: &[&str],
    pass: u32,
    since: Option<&Snapshot>,
) -> Result<(Snapshot, u64, u64), String> {
    let mut seen = Snapshot::new();
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut stack: Vec<PathBuf> = tops.iter().rev().map(PathBuf::from).collect();
    let mut buf = vec![0u8; PAYLOAD_MAX];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let meta =
            std::fs::symlink_metadata(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
        if seen.len() as u64 >= TREE_ENTRIES_MAX {
            return Err(format!(
                "bundle has more than {TREE_ENTRIES_MAX} entries (limit)"
            ));
        }
        let stamp = (meta.len(), meta.mtime(), meta.mtime_nsec());
        let changed = since.is_none_or(|s| s.get(&rel) != Some(&stamp));
        seen.insert(rel.clone(), stamp);
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            TreeKind::TreeDir
        } else if ft.is_file() {
            TreeKind::TreeFile
        } else if ft.is_symlink() {
            TreeKind::TreeSymlink
        } else {
            log::debug!("--fs copy: skipping special file {}", abs.display());
            continue;
        };
        if kind == TreeKind::TreeDir {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&abs)
                .map_err(|e| format!("{}: {e}", abs.display()))?
                .filter_map(|e| e.ok())
                .map(|e| rel.join(e.file_name()))
                .collect();
            children.sort();
            stack.extend(children.into_iter().rev());
        }
        // A directory is re-sent in pass 2 only if new (its times change with its entries).
        if !changed || (kind == TreeKind::TreeDir && since.is_some_and(|s| s.contains_key(&rel))) {
            continue;
        }
        let target = if kind == TreeKind::TreeSymlink {
            let t = std::fs::read_link(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
            utf8(&t, &abs, "points to a name")?
        } else {
            String::new()
        };
        conn.send(Msg::TreeEntry(TreeEntry {
            path: utf8(&rel, &abs, "has a name")?,
            kind: kind as i32,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_sec: meta.mtime(),
            mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
            target,
        }))
        .map_err(|e| format!("sending {}: {e}", abs.display()))?;
        entries += 1;
        if kind == TreeKind::TreeFile {
            let mut f = std::fs::File::open(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
            bytes += super::images::stream_file(conn, &mut f, &abs, &mut buf)?;
        }
    }
    conn.send(Msg::TreeDone(TreeDone {
        pass,
        entries,
        bytes,
    }))
    .map_err(|e| format!("sending the end of {} (pass {pass}): {e}", root.display()))?;
    Ok((seen, entries, bytes))
}

/// `p` as UTF-8, which the protocol's names are: a name that is not would arrive renamed
/// (and two such names could become one), so the copy is refused instead.
fn utf8(p: &Path, abs: &Path, what: &str) -> Result<String, String> {
    p.to_str().map(str::to_string).ok_or_else(|| {
        format!(
            "{} {what} that is not UTF-8, which --fs copy cannot carry; rename it, or put the \
             bundle on storage both hosts share (--fs shared)",
            abs.display()
        )
    })
}

/// Checks a relative path from the peer: plain components only.
pub fn check_path(p: &str) -> Result<(), WireError> {
    let bad = |why: &str| {
        Err(WireError::Protocol(format!(
            "tree path {p:?} refused: {why}"
        )))
    };
    if p.is_empty() || p.len() > TREE_PATH_MAX {
        return bad("empty or too long");
    }
    if p.starts_with('/') || p.contains('\0') {
        return bad("absolute or contains NUL");
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("empty, '.' or '..' component");
    }
    Ok(())
}

/// The destination's side: creates entries beneath `root` (a directory fd).
pub struct TreeSink {
    root: OwnedFd,
    current: Option<(String, std::fs::File, u64, TreeEntry)>,
    pub entries: u64,
    pub bytes: u64,
}

fn perr(what: &str, p: &str, e: impl std::fmt::Display) -> WireError {
    WireError::Protocol(format!("{what} {p:?}: {e}"))
}

impl TreeSink {
    pub fn new(root: OwnedFd) -> Self {
        TreeSink {
            root,
            current: None,
            entries: 0,
            bytes: 0,
        }
    }

    /// The parent directory of `p`, opened beneath the root one component at a time with
    /// `O_NOFOLLOW | O_DIRECTORY`, so no symlink is ever followed. (openat2's RESOLVE_BENEATH
    /// would do the same in one call, but kernels before 5.6 and QEMU user mode lack it.)
    fn parent(&self, p: &str) -> Result<(OwnedFd, String), WireError> {
        let (dir, name) = match p.rsplit_once('/') {
            Some((d, n)) => (Some(d), n),
            None => (None, p),
        };
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let mut fd = rustix::fs::openat(&self.root, ".", flags, Mode::empty())
            .map_err(|e| perr("parent of", p, e))?;
        // Components were checked by `check_path`: plain names, no "." or "..".
        for comp in dir.into_iter().flat_map(|d| d.split('/')) {
            fd = rustix::fs::openat(&fd, comp, flags, Mode::empty())
                .map_err(|e| perr("parent of", p, e))?;
        }
        Ok((fd, name.to_string()))
    }

    pub fn entry(&mut self, e: TreeEntry) -> Result<(), WireError> {
        if self.current.is_some() {
            return Err(WireError::Protocol("TreeEntry inside a file".into()));
        }
        check_path(&e.path)?;
        self.entries += 1;
        if self.entries > TREE_ENTRIES_MAX {
            return Err(WireError::Protocol(format!(
                "more than {TREE_ENTRIES_MAX} tree entries (limit)"
            )));
        }
        let (dir, name) = self.parent(&e.path)?;
        let mode = Mode::from_raw_mode(e.mode & 0o7777);
        match TreeKind::try_from(e.kind) {
            Ok(TreeKind::TreeDir) => {
                match rustix::fs::mkdirat(&dir, name.as_str(), mode) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(err) => return Err(perr("mkdir", &e.path, err)),
                }
                // Whatever is there now must be a directory, not a symlink the peer planted:
                // open it without following links and set its metadata through that fd.
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_str(),
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|err| perr("not a directory:", &e.path, err))?;
                set_meta(&fd, &e)?;
            }
            Ok(TreeKind::TreeSymlink) => {
                // Replace on pass 2; never follow.
                let _ = rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty());
                rustix::fs::symlinkat(e.target.as_str(), &dir, name.as_str())
                    .map_err(|err| perr("symlink", &e.path, err))?;
                // A symlink's own owner and times; never anything through it.
                rustix::fs::chownat(
                    &dir,
                    name.as_str(),
                    Some(rustix::fs::Uid::from_raw(e.uid)),
                    Some(rustix::fs::Gid::from_raw(e.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|err| perr("chown", &e.path, err))?;
                rustix::fs::utimensat(&dir, name.as_str(), &times(&e), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| perr("utimens", &e.path, err))?;
            }
            Ok(TreeKind::TreeFile) => {
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::TRUNC
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|err| perr("create", &e.path, err))?;
                let path = e.path.clone();
                self.current = Some((path, std::fs::File::from(fd), 0, e));
                drop(dir);
            }
            Err(_) => return Err(perr("unknown kind of", &e.path, e.kind)),
        }
        Ok(())
    }

    pub fn data(&mut self, chunk: &[u8]) -> Result<(), WireError> {
        let Some((path, file, size, _)) = self.current.as_mut() else {
            return Err(WireError::Protocol("tree file data outside a file".into()));
        };
        self.bytes += chunk.len() as u64;
        if self.bytes > TREE_BYTES_MAX {
            return Err(WireError::Protocol(format!(
                "bundle exceeds {TREE_BYTES_MAX} bytes (limit)"
            )));
        }
        file.write_all(chunk)
            .map_err(|e| perr("writing", path, e))?;
        *size += chunk.len() as u64;
        Ok(())
    }

    /// Returns true if a file was open (the FileEnd belonged to the tree).
    pub fn in_file(&self) -> bool {
        self.current.is_some()
    }

    pub fn end(&mut self, end: FileEnd) -> Result<(), WireError> {
        let Some((path, file, size, e)) = self.current.take() else {
            return Err(WireError::Protocol("FileEnd outside a tree file".into()));
        };
        if size != end.size {
            return Err(WireError::Protocol(format!(
                "tree file {path:?}: received {size} bytes, sender says {}",
                end.size
            )));
        }
        set_meta(&file, &e)?;
        Ok(())
    }
}

/// Owner, mode and times of an entry, set through its own descriptor.
fn set_meta(fd: impl std::os::fd::AsFd, e: &TreeEntry) -> Result<(), WireError> {
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(e.uid)),
        Some(rustix::fs::Gid::from_raw(e.gid)),
    )
    .map_err(|err| perr("chown", &e.path, err))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(e.mode & 0o7777))
        .map_err(|err| perr("chmod", &e.path, err))?;
    rustix::fs::futimens(&fd, &times(e)).map_err(|err| perr("utimens", &e.path, err))?;
    Ok(())
}

fn times(e: &TreeEntry) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: e.mtime_sec,
        tv_nsec: i64::from(e.mtime_nsec.min(999_999_999)),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("haul-tree-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sink(d: &Path) -> TreeSink {
        TreeSink::new(
            rustix::fs::open(
                d,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap(),
        )
    }

    fn entry(path: &str, kind: TreeKind, target: &str) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            kind: kind as i32,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            target: target.into(),
        }
    }

    #[test]
    fn paths_must_be_plain_and_relative() {
        for bad in ["", "/etc", "a/../b", "..", "a//b", "./a", "a/.", "a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_path("rootfs/bin/sh").is_ok());
        assert!(check_path(&"a/".repeat(2048)).is_err());
        // TREE_PATH_MAX bytes, then one more.
        let at = format!("{}/{}", "d".repeat(200), "f".repeat(TREE_PATH_MAX - 201));
        assert_eq!(at.len(), TREE_PATH_MAX);
        assert!(check_path(&at).is_ok());
        let e = check_path(&format!("{at}x")).unwrap_err().to_string();
        assert!(e.contains("empty or too long"), "{e}");
    }

    #[test]
    fn the_last_entry_and_byte_within_the_limits_are_taken_and_one_more_is_refused() {
        let d = tempdir("limits");
        let mut s = sink(&d);
        // As if TREE_ENTRIES_MAX - 1 entries had come before.
        s.entries = TREE_ENTRIES_MAX - 1;
        let mut file = entry("f", TreeKind::TreeFile, "");
        file.mode = 0o644;
        s.entry(file).unwrap();
        assert_eq!(s.entries, TREE_ENTRIES_MAX);
        // As if TREE_BYTES_MAX - 3 bytes had come before.
        s.bytes = TREE_BYTES_MAX - 3;
        s.data(b"abc").unwrap();
        let e = s.data(b"!").unwrap_err().to_string();
        assert!(
            e.contains("bundle exceeds 68719476736 bytes (limit)"),
            "{e}"
        );
        assert_eq!(std::fs::read(d.join("f")).unwrap(), b"abc");
        let mut s = sink(&d);
        s.entries = TREE_ENTRIES_MAX;
        let e = s
            .entry(entry("g", TreeKind::TreeDir, ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 200000 tree entries (limit)"), "{e}");
        assert!(!d.join("g").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn creates_dirs_files_symlinks_with_metadata() {
        let d = tempdir("ok");
        let mut s = sink(&d);
        s.entry(entry("rootfs", TreeKind::TreeDir, "")).unwrap();
        s.entry(entry("rootfs/bin", TreeKind::TreeDir, "")).unwrap();
        s.entry(entry("rootfs/bin/busybox", TreeKind::TreeFile, ""))
            .unwrap();
        s.data(b"ELF").unwrap();
        s.end(FileEnd { size: 3 }).unwrap();
        s.entry(entry("rootfs/bin/sh", TreeKind::TreeSymlink, "busybox"))
            .unwrap();
        let m = std::fs::metadata(d.join("rootfs/bin/busybox")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o755);
        assert_eq!(m.mtime(), 1_700_000_000);
        assert_eq!(
            std::fs::read_link(d.join("rootfs/bin/sh")).unwrap(),
            Path::new("busybox")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_from_the_peer_never_redirects_a_later_write() {
        let d = tempdir("evil");
        let outside = tempdir("outside");
        let mut s = sink(&d);
        s.entry(entry(
            "link",
            TreeKind::TreeSymlink,
            outside.to_str().unwrap(),
        ))
        .unwrap();
        assert!(s
            .entry(entry("link/passwd", TreeKind::TreeFile, ""))
            .is_err());
        assert!(s.entry(entry("link/x", TreeKind::TreeDir, "")).is_err());
        // A directory entry named like the symlink must not chmod through it.
        let canary = outside.join("canary");
        std::fs::write(&canary, b"x").unwrap();
        std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o600)).unwrap();
        s.entry(entry("c", TreeKind::TreeSymlink, canary.to_str().unwrap()))
            .unwrap();
        let mut dir_entry = entry("c", TreeKind::TreeDir, "");
        dir_entry.mode = 0o4777;
        assert!(s.entry(dir_entry).is_err());
        assert_eq!(std::fs::metadata(&canary).unwrap().mode() & 0o7777, 0o600);
        std::fs::remove_file(&canary).unwrap();
        // A file entry named like an existing symlink does not follow it either.
        assert!(s.entry(entry("link", TreeKind::TreeFile, "")).is_err());
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "wrote outside"
        );
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    /// Pass 2 sends exactly what changed since pass 1 (and new entries), nothing else.
    /// A name that is not UTF-8 (a file's, or a symlink's target) stops the copy with the
    /// path, instead of arriving renamed.
    #[test]
    fn names_that_are_not_utf8_are_refused() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let bad = OsStr::from_bytes(b"caf\xe9");
        for (tag, make) in [("file", 0u8), ("link", 1u8)] {
            let src = tempdir(&format!("latin1-{tag}"));
            std::fs::create_dir_all(src.join("rootfs")).unwrap();
            if make == 0 {
                std::fs::write(src.join("rootfs").join(bad), b"x").unwrap();
            } else {
                std::os::unix::fs::symlink(bad, src.join("rootfs/l")).unwrap();
            }
            let (conn, peer) = crate::transfer::mux::loopback_pair();
            let e = send_tree(&conn, &src, &["rootfs"], 1, None).unwrap_err();
            assert!(
                e.contains("not UTF-8") && e.contains("rootfs/"),
                "{tag}: {e}"
            );
            drop((conn, peer));
            std::fs::remove_dir_all(&src).unwrap();
        }
    }

    #[test]
    fn second_pass_sends_only_changes() {
        use crate::transfer::{handshake, Conn, Incoming};
        let src = tempdir("pass-src");
        std::fs::create_dir_all(src.join("rootfs/bin")).unwrap();
        std::fs::write(src.join("config.json"), b"{}").unwrap();
        std::fs::write(src.join("rootfs/bin/a"), b"aaa").unwrap();
        std::fs::write(src.join("rootfs/bin/b"), b"bbb").unwrap();

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (tx, rx) = handshake::accept(s, None, crate::limits::IDLE_TIMEOUT).unwrap();
            let conn = Conn::start(tx, rx);
            let mut passes: Vec<Vec<String>> = vec![Vec::new()];
            loop {
                match conn
                    .recv(std::time::Duration::from_secs(10), "test")
                    .unwrap()
                {
                    Incoming::Control(Msg::TreeEntry(e)) => passes.last_mut().unwrap().push(e.path),
                    Incoming::Control(Msg::TreeDone(d)) => {
                        if d.pass == 2 {
                            return passes;
                        }
                        passes.push(Vec::new());
                    }
                    _ => {}
                }
            }
        });
        let (tx, rx) =
            handshake::connect(std::net::TcpStream::connect(addr).unwrap(), None).unwrap();
        let conn = Conn::start(tx, rx);
        let (snap, n1, _) = send_tree(&conn, &src, &["config.json", "rootfs"], 1, None).unwrap();
        assert_eq!(n1, 5);
        std::fs::write(src.join("rootfs/bin/b"), b"bbbb").unwrap();
        std::fs::write(src.join("rootfs/bin/c"), b"c").unwrap();
        let (_, n2, b2) =
            send_tree(&conn, &src, &["config.json", "rootfs"], 2, Some(&snap)).unwrap();
        let passes = server.join().unwrap();
        assert_eq!(
            passes[0],
            [
                "config.json",
                "rootfs",
                "rootfs/bin",
                "rootfs/bin/a",
                "rootfs/bin/b"
            ]
        );
        assert_eq!(passes[1], ["rootfs/bin/b", "rootfs/bin/c"]);
        assert_eq!((n2, b2), (2, 5));
        conn.close();
        std::fs::remove_dir_all(&src).unwrap();
    }
}
