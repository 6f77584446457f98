//! `tar --extract` of what haul's tar wrote, into a directory descriptor. The archive comes
//! from the source host: every name is checked (relative, no `..`), parents are opened one
//! component at a time with `O_NOFOLLOW` so no entry lands outside the directory
//! (through `..` or a symbolic link extracted earlier), files are created new (`O_EXCL`), and
//! owner, mode and mtime are set as GNU tar does for root (directories last, deepest first).

use super::gzip::StoredReader;
use super::ustar::{Header, Kind, BLOCK};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use std::io::{Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};

/// Directories whose mode and mtime wait until their contents are in place.
const MAX_DIRS: usize = 1 << 20;

/// Extracts `input` (a whole archive file) under `root`. Returns the number of entries.
pub fn extract<R: Read>(input: R, root: BorrowedFd<'_>) -> Result<u64, String> {
    let mut r = StoredReader::new(input).map_err(|e| format!("archive: {e}"))?;
    let mut dirs: Vec<(String, Header)> = Vec::new();
    let mut entries = 0u64;
    let mut block = [0u8; BLOCK];
    loop {
        r.read_exact(&mut block)
            .map_err(|e| format!("archive after {entries} entries: {e}"))?;
        let Some(h) = Header::decode(&block)? else {
            break;
        };
        let rel = relative(&h.path)?;
        entries += 1;
        if h.kind == Kind::Dir {
            if !rel.is_empty() {
                let (parent, name) = open_parent(root, &rel)?;
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(format!("{}: mkdir: {e}", h.path)),
                }
            }
            if dirs.len() >= MAX_DIRS {
                return Err(format!("more than {MAX_DIRS} directories"));
            }
            dirs.push((rel, h));
            continue;
        }
        let (parent, name) = open_parent(root, &rel)?;
        let p = &h.path;
        match h.kind {
            Kind::File => {
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| format!("{p}: create: {e}"))?;
                copy(&mut r, &fd, h.size).map_err(|e| format!("{p}: {e}"))?;
                let pad = (BLOCK as u64 - h.size % BLOCK as u64) % BLOCK as u64;
                let mut skip = [0u8; BLOCK];
                r.read_exact(&mut skip[..pad as usize])
                    .map_err(|e| format!("{p}: {e}"))?;
                attributes(&fd, &h).map_err(|e| format!("{p}: {e}"))?;
            }
            Kind::Symlink => {
                rustix::fs::symlinkat(h.link.as_str(), &parent, name)
                    .map_err(|e| format!("{p}: symlink: {e}"))?;
                owner_and_times(&parent, name, &h).map_err(|e| format!("{p}: {e}"))?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let ft = match h.kind {
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                rustix::fs::mknodat(
                    &parent,
                    name,
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(h.major, h.minor),
                )
                .map_err(|e| format!("{p}: mknod: {e}"))?;
                owner_and_times(&parent, name, &h).map_err(|e| format!("{p}: {e}"))?;
                rustix::fs::chmodat(&parent, name, Mode::from_raw_mode(h.mode), AtFlags::empty())
                    .map_err(|e| format!("{p}: chmod: {e}"))?;
                // chmod does not change the mtime; set it again after it for good measure.
                owner_and_times(&parent, name, &h).map_err(|e| format!("{p}: {e}"))?;
            }
            Kind::Dir => unreachable!("handled above"),
        }
    }
    // The rest of the gzip stream (the second zero block, the trailer's check).
    std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| format!("archive end: {e}"))?;
    for (rel, h) in dirs.iter().rev() {
        let fd = if rel.is_empty() {
            rustix::fs::openat(
                root,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        } else {
            beneath(root, rel)
        }
        .map_err(|e| format!("{}: {e}", h.path))?;
        attributes(&fd, h).map_err(|e| format!("{}: {e}", h.path))?;
    }
    Ok(entries)
}

/// `./a/b/` → `a/b`; `./` → ``. Refuses absolute names, `..`, empty components.
fn relative(path: &str) -> Result<String, String> {
    let rest = path
        .strip_prefix("./")
        .ok_or_else(|| format!("{path:?}: not under ./"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(String::new());
    }
    for c in rest.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!("{path:?}: component {c:?}"));
        }
    }
    Ok(rest.to_string())
}

/// Opens `rel` (a directory; components already checked: no `..`, none empty) under `root`,
/// one component at a time with `O_NOFOLLOW | O_DIRECTORY`: a symbolic link anywhere on the
/// way fails the open, so nothing resolves outside `root`. (openat2's RESOLVE_BENEATH would do
/// the same in one call, but kernels before 5.6 and QEMU's user mode lack it.)
fn beneath(root: BorrowedFd<'_>, rel: &str) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(root, ".", flags, Mode::empty())?;
    for c in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
        dir = rustix::fs::openat(&dir, c, flags, Mode::empty())?;
    }
    Ok(dir)
}

fn open_parent<'a>(root: BorrowedFd<'_>, rel: &'a str) -> Result<(OwnedFd, &'a str), String> {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => (".", rel),
    };
    let fd = beneath(root, parent).map_err(|e| format!("./{parent}: {e}"))?;
    Ok((fd, name))
}

fn copy<R: Read>(r: &mut R, fd: &OwnedFd, size: u64) -> std::io::Result<()> {
    let mut f = std::fs::File::from(fd.try_clone()?);
    let n = std::io::copy(&mut r.take(size), &mut f)?;
    if n != size {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    f.flush()
}

fn times(h: &Header) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(h.mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Owner, then mode (chown clears set-id bits), then times, on an open file or directory.
fn attributes(fd: &OwnedFd, h: &Header) -> rustix::io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(h.uid)),
        Some(rustix::fs::Gid::from_raw(h.gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(h.mode))?;
    rustix::fs::futimens(fd, &times(h))
}

fn owner_and_times(dir: &OwnedFd, name: &str, h: &Header) -> rustix::io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(h.uid)),
        Some(rustix::fs::Gid::from_raw(h.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    rustix::fs::utimensat(dir, name, &times(h), AtFlags::SYMLINK_NOFOLLOW)
}

/// Walks an archive without touching any file: what the fuzz target runs. Returns the entries.
pub fn list<R: Read>(input: R) -> Result<Vec<Header>, String> {
    let mut r = StoredReader::new(input).map_err(|e| format!("archive: {e}"))?;
    let mut out = Vec::new();
    let mut block = [0u8; BLOCK];
    loop {
        r.read_exact(&mut block).map_err(|e| e.to_string())?;
        let Some(h) = Header::decode(&block)? else {
            break;
        };
        relative(&h.path)?;
        let padded = h.size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let n = std::io::copy(&mut (&mut r).take(padded), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        if n != padded {
            return Err(format!("{}: content cut after {n} bytes", h.path));
        }
        out.push(h);
        if out.len() > 1 << 20 {
            return Err("too many entries".into());
        }
    }
    std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| e.to_string())?;
    Ok(out)
}
