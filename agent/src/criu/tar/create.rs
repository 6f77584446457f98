//! `tar --create`: the tree under a directory descriptor as a gzip'd ustar stream, the way GNU
//! tar archives it for CRIU (`--one-file-system --preserve-permissions --numeric-owner`, names
//! `./…`, a mount point's directory without its contents). Anything haul's format does not
//! hold (hard links, sparse files, sockets, long names, non-UTF-8 names, huge numbers) is
//! reported as `Unsupported` before or while writing; the caller then lets GNU tar do it.

use super::gzip::StoredWriter;
use super::ustar::{Header, Kind, Unsupported, BLOCK};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Deeper trees are left to GNU tar (each level holds a directory descriptor).
pub const MAX_DEPTH: usize = 64;

pub enum Created {
    Done { entries: u64, bytes: u64 },
    Unsupported(Unsupported),
}

/// Archives the tree under `root` into `out`.
pub fn create<W: Write>(root: BorrowedFd<'_>, out: W) -> io::Result<Created> {
    let mut w = Walker {
        out: StoredWriter::new(out)?,
        dev: rustix::fs::fstat(root)?.st_dev,
        entries: 0,
        bytes: 0,
    };
    let st = rustix::fs::fstat(root)?;
    if let Err(u) = w.entry("./", &st, None, root, "") {
        return Ok(Created::Unsupported(u));
    }
    match w.dir(root, "./", 0) {
        Ok(Ok(())) => {}
        Ok(Err(u)) => return Ok(Created::Unsupported(u)),
        Err(e) => return Err(e),
    }
    w.out.write_all(&[0u8; 2 * BLOCK])?;
    let (entries, bytes) = (w.entries, w.bytes);
    w.out.finish()?;
    Ok(Created::Done { entries, bytes })
}

struct Walker<W: Write> {
    out: StoredWriter<W>,
    dev: u64,
    entries: u64,
    bytes: u64,
}

fn unsupported<T>(s: String) -> io::Result<Result<T, Unsupported>> {
    Ok(Err(Unsupported(s)))
}

impl<W: Write> Walker<W> {
    /// Writes one entry's header and, for a regular file, its content (`file`: open for reading).
    fn entry(
        &mut self,
        path: &str,
        st: &Stat,
        file: Option<OwnedFd>,
        dir: BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), Unsupported> {
        let ft = FileType::from_raw_mode(st.st_mode);
        let kind = match ft {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::CharacterDevice => Kind::Char,
            FileType::BlockDevice => Kind::Block,
            FileType::Fifo => Kind::Fifo,
            other => return Err(Unsupported(format!("{path}: a {other:?}"))),
        };
        if kind == Kind::File && st.st_nlink > 1 {
            return Err(Unsupported(format!("{path}: hard-linked")));
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if kind == Kind::File && (st.st_blocks as u64).saturating_mul(512) < size {
            return Err(Unsupported(format!("{path}: sparse")));
        }
        let mtime = u64::try_from(st.st_mtime)
            .map_err(|_| Unsupported(format!("{path}: modified before 1970")))?;
        let link = if kind == Kind::Symlink {
            let target = rustix::fs::readlinkat(dir, name, Vec::new())
                .map_err(|e| Unsupported(format!("{path}: readlink: {e}")))?;
            target
                .into_string()
                .map_err(|_| Unsupported(format!("{path}: link target is not UTF-8")))?
        } else {
            String::new()
        };
        let h = Header {
            path: path.to_string(),
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: if kind == Kind::File { size } else { 0 },
            mtime,
            link,
            major: rustix::fs::major(st.st_rdev),
            minor: rustix::fs::minor(st.st_rdev),
        };
        let block = h.encode()?;
        self.out
            .write_all(&block)
            .map_err(|e| Unsupported(format!("writing: {e}")))?;
        self.entries += 1;
        if let Some(fd) = file {
            self.content(fd, size)
                .map_err(|e| Unsupported(format!("{path}: {e}")))?;
        }
        Ok(())
    }

    /// Exactly `size` bytes (zeros if the file shrank, as GNU tar does), padded to a block.
    fn content(&mut self, fd: OwnedFd, size: u64) -> io::Result<()> {
        let mut f = std::fs::File::from(fd).take(size);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        buf.fill(0);
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.out.write_all(&buf[..pad as usize])?;
        self.bytes += size;
        Ok(())
    }

    fn dir(
        &mut self,
        dir: BorrowedFd<'_>,
        prefix: &str,
        depth: usize,
    ) -> io::Result<Result<(), Unsupported>> {
        if depth >= MAX_DEPTH {
            return unsupported(format!("{prefix}: deeper than {MAX_DEPTH} levels"));
        }
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(dir)? {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            match std::str::from_utf8(n) {
                Ok(s) => names.push(s.to_string()),
                Err(_) => {
                    return unsupported(format!(
                        "{prefix}{}: name is not UTF-8",
                        String::from_utf8_lossy(n)
                    ))
                }
            }
        }
        for name in names {
            let st = match rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Gone since the listing (tasks are frozen; kernel-side removals only).
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            let ft = FileType::from_raw_mode(st.st_mode);
            let path = format!("{prefix}{name}");
            match ft {
                FileType::Directory => {
                    let dpath = format!("{path}/");
                    if let Err(u) = self.entry(&dpath, &st, None, dir, &name) {
                        return Ok(Err(u));
                    }
                    // --one-file-system: a mount point's directory, not what is mounted there.
                    if st.st_dev != self.dev {
                        continue;
                    }
                    let sub = rustix::fs::openat(
                        dir,
                        name.as_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    if let Err(u) = self.dir(sub.as_fd(), &dpath, depth + 1)? {
                        return Ok(Err(u));
                    }
                }
                FileType::RegularFile => {
                    let fd = rustix::fs::openat(
                        dir,
                        name.as_str(),
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    if let Err(u) = self.entry(&path, &st, Some(fd), dir, &name) {
                        return Ok(Err(u));
                    }
                }
                _ => {
                    if let Err(u) = self.entry(&path, &st, None, dir, &name) {
                        return Ok(Err(u));
                    }
                }
            }
        }
        Ok(Ok(()))
    }
}
