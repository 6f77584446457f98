//! /proc/PID/mountinfo: the mounts of a process's mount namespace.
//!
//! One line per mount (proc(5)); from fixtures/mountinfo-octal-escapes/proc-self-mountinfo:
//!
//! ```text
//! 70 65 0:40 /sub\040dir /tmp/haul-esc/mnt/bind\040target rw,relatime - tmpfs src\040with\040space rw,size=64k
//! 75 65 0:41 / /tmp/haul-esc/mnt/slave rw,relatime master:2 - tmpfs tabsrc rw,size=64k
//! ```
//!
//! Fields: mount id, parent id, major:minor, root, mount point, per-mount options, zero or
//! more optional fields (`shared:N`, `master:N`, `propagate_from:N`, `unbindable`), a `-`, the
//! filesystem type, the source and the superblock options. Fields are separated by single
//! spaces, and a field may be empty (a mount whose source is `""`). The kernel writes space,
//! tab, newline and backslash in root, mount point, type and source as octal escapes (`\040`,
//! `\011`, `\012`, `\134`), so a line never holds a raw one. Those four fields are decoded
//! (into a text buffer, borrowing plain fields from the input); option lists keep their
//! escapes, because an escaped comma (`\054`) inside an option value must not split it.

use core::fmt;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::bounded_read::{lines, DecodeBuf, FileError, LineTooLong, Lines, ReadError};
use super::bounds::{MOUNTINFO_LINE_MAX, MOUNTINFO_MAX};
use super::decimal::parse_u32;
use super::proc_pid::ProcPid;
use super::text_arena::TextArena;

/// Buffers for reading one /proc/PID/mountinfo.
pub type MountInfoBuf = DecodeBuf<MOUNTINFO_MAX>;

/// One line of mountinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountInfo<'a> {
    /// Field 1: the mount's id.
    pub mount_id: u32,
    /// Field 2: the parent mount's id (its own id for the namespace's root).
    pub parent_id: u32,
    /// Field 3, before `:`: the major number of the filesystem's device.
    pub major: u32,
    /// Field 3, after `:`: the minor number.
    pub minor: u32,
    /// Field 4, decoded: the directory of the filesystem that is mounted (not `/` for binds).
    pub root: &'a Path,
    /// Field 5, decoded: where it is mounted, relative to the reader's root.
    pub mount_point: &'a Path,
    /// Field 6: per-mount options (`rw,nosuid,relatime`).
    pub mount_options: MountOptions<'a>,
    /// The optional fields.
    pub propagation: Propagation,
    /// Decoded: the filesystem type (`ext4`, `cgroup2`, `fuse.sshfs`).
    pub fs_type: &'a OsStr,
    /// Decoded: the mount source (`/dev/vda`, `tmpfs`, possibly empty).
    pub source: &'a OsStr,
    /// Superblock options (`rw,size=64k`; `rw,cpu` for a cgroup v1 hierarchy).
    pub super_options: MountOptions<'a>,
}

/// The optional fields of a mountinfo line: the mount's propagation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    /// `shared:N`: the mount's peer group.
    pub shared: Option<u32>,
    /// `master:N`: the peer group it receives propagation from.
    pub master: Option<u32>,
    /// `propagate_from:N`: the closest dominant peer group visible to the reader.
    pub propagate_from: Option<u32>,
    /// `unbindable`.
    pub unbindable: bool,
}

/// A comma-separated option list as the kernel printed it, octal escapes kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountOptions<'a> {
    raw: &'a [u8],
}

impl<'a> MountOptions<'a> {
    /// The whole list, escapes kept.
    pub fn raw(&self) -> &'a OsStr {
        OsStr::from_bytes(self.raw)
    }

    /// The options one by one, escapes kept (`lowerdir=/a\040b`; decode a value with
    /// [`unescape_octal`]).
    pub fn iter(&self) -> impl Iterator<Item = &'a OsStr> {
        self.raw.split(|&b| b == b',').filter(|o| !o.is_empty()).map(OsStr::from_bytes)
    }

    /// Whether the list has `option` (`ro`, `cpu`, `name=systemd`) as a whole entry.
    pub fn contains(&self, option: &str) -> bool {
        self.iter().any(|o| o == option)
    }

    /// The value of `key=value`, escapes kept.
    pub fn value(&self, key: &str) -> Option<&'a OsStr> {
        self.iter().find_map(|o| {
            let rest = o.as_bytes().strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
            Some(OsStr::from_bytes(rest))
        })
    }
}

/// What is wrong with a mountinfo line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountInfoProblem {
    /// The line ends before this field.
    Missing(&'static str),
    /// This field is not a number (or `major:minor`).
    BadNumber(&'static str),
    /// This field has a backslash not followed by three octal digits.
    BadEscape(&'static str),
    /// The text buffer is full: only when a caller passes one smaller than the input.
    NoRoom,
}

impl fmt::Display for MountInfoProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountInfoProblem::Missing(field) => write!(f, "no {field} field"),
            MountInfoProblem::BadNumber(field) => write!(f, "the {field} field is not a number"),
            MountInfoProblem::BadEscape(field) => {
                write!(f, "the {field} field has a backslash not followed by 3 octal digits")
            }
            MountInfoProblem::NoRoom => f.write_str("no room left in the text buffer"),
        }
    }
}

/// Why mountinfo was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountInfoError {
    /// A line is longer than [`MOUNTINFO_LINE_MAX`].
    LineTooLong(LineTooLong),
    /// A line is malformed.
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: MountInfoProblem,
    },
}

impl fmt::Display for MountInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountInfoError::LineTooLong(e) => e.fmt(f),
            MountInfoError::Malformed { line, problem } => write!(f, "line {line}: {problem}"),
        }
    }
}

impl std::error::Error for MountInfoError {}

/// The mounts of a mountinfo file, in file order; see [`parse_mountinfo`]. After an error it
/// yields nothing more.
#[derive(Debug)]
pub struct MountInfoIter<'a> {
    lines: Lines<'a>,
    arena: TextArena<'a>,
    failed: bool,
}

/// Parses the content of a mountinfo file line by line, decoding escaped fields into `text`
/// (give it as many bytes as `bytes` has and it never runs out).
pub fn parse_mountinfo<'a>(bytes: &'a [u8], text: &'a mut [u8]) -> MountInfoIter<'a> {
    MountInfoIter {
        lines: lines(bytes, MOUNTINFO_LINE_MAX),
        arena: TextArena::new(text),
        failed: false,
    }
}

impl<'a> Iterator for MountInfoIter<'a> {
    type Item = Result<MountInfo<'a>, MountInfoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let result = match self.lines.next()? {
            Err(e) => Err(MountInfoError::LineTooLong(e)),
            Ok(line) => parse_line(line.bytes, &mut self.arena)
                .map_err(|problem| MountInfoError::Malformed { line: line.number, problem }),
        };
        self.failed = result.is_err();
        Some(result)
    }
}

/// The space-separated fields of a line, with access to the rest of the line.
struct Fields<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// The next field, or why there is none.
    fn next(&mut self, name: &'static str) -> Result<&'a [u8], MountInfoProblem> {
        let rest = self.rest.ok_or(MountInfoProblem::Missing(name))?;
        match rest.iter().position(|&b| b == b' ') {
            Some(space) => {
                self.rest = rest.get(space.saturating_add(1)..);
                Ok(rest.get(..space).unwrap_or_default())
            }
            None => {
                self.rest = None;
                Ok(rest)
            }
        }
    }
}

/// Parses one line.
fn parse_line<'a>(line: &'a [u8], arena: &mut TextArena<'a>) -> Result<MountInfo<'a>, MountInfoProblem> {
    let mut fields = Fields { rest: Some(line) };
    let number = |field: &[u8], name| parse_u32(field).ok_or(MountInfoProblem::BadNumber(name));

    let mount_id = number(fields.next("mount ID")?, "mount ID")?;
    let parent_id = number(fields.next("parent ID")?, "parent ID")?;
    let (major, minor) = fields
        .next("major:minor")?
        .split(|&b| b == b':')
        .map(parse_u32)
        .collect::<Option<heapless::Vec<u32, 2>>>()
        .and_then(|mm| match mm.as_slice() {
            &[major, minor] => Some((major, minor)),
            _ => None,
        })
        .ok_or(MountInfoProblem::BadNumber("major:minor"))?;
    let root = decode(fields.next("root")?, arena, "root")?;
    let mount_point = decode(fields.next("mount point")?, arena, "mount point")?;
    let mount_options = options(fields.next("mount options")?, "mount options")?;

    let mut propagation = Propagation::default();
    loop {
        let tag = fields.next("`-` separator")?;
        if tag == b"-" {
            break;
        }
        // Unknown tags are skipped: proc(5) says to expect new ones.
        if let Some(n) = tag.strip_prefix(b"shared:") {
            propagation.shared = Some(number(n, "shared:N")?);
        } else if let Some(n) = tag.strip_prefix(b"master:") {
            propagation.master = Some(number(n, "master:N")?);
        } else if let Some(n) = tag.strip_prefix(b"propagate_from:") {
            propagation.propagate_from = Some(number(n, "propagate_from:N")?);
        } else if tag == b"unbindable" {
            propagation.unbindable = true;
        }
    }

    let fs_type = decode(fields.next("filesystem type")?, arena, "filesystem type")?;
    let source = decode(fields.next("mount source")?, arena, "mount source")?;
    // The superblock options are the rest of the line (the kernel escapes spaces in them,
    // but a filesystem's own show_options might not).
    let super_options = options(fields.rest.unwrap_or_default(), "super options")?;
    Ok(MountInfo {
        mount_id,
        parent_id,
        major,
        minor,
        root: Path::new(OsStr::from_bytes(root)),
        mount_point: Path::new(OsStr::from_bytes(mount_point)),
        mount_options,
        propagation,
        fs_type: OsStr::from_bytes(fs_type),
        source: OsStr::from_bytes(source),
        super_options,
    })
}

/// A field with its octal escapes decoded: borrowed when it has none.
fn decode<'a>(
    raw: &'a [u8],
    arena: &mut TextArena<'a>,
    name: &'static str,
) -> Result<&'a [u8], MountInfoProblem> {
    if !raw.contains(&b'\\') {
        return Ok(raw);
    }
    arena.write(MountInfoProblem::NoRoom, |out| {
        unescape_octal(raw, out).ok_or(MountInfoProblem::BadEscape(name))
    })
}

/// An option list, checked for well-formed escapes.
fn options<'a>(raw: &'a [u8], name: &'static str) -> Result<MountOptions<'a>, MountInfoProblem> {
    let mut rest = raw;
    while let Some(backslash) = rest.iter().position(|&b| b == b'\\') {
        let escape = rest.get(backslash..).unwrap_or_default();
        let (Some(head), Some(tail)) = (escape.get(..4), escape.get(4..)) else {
            return Err(MountInfoProblem::BadEscape(name));
        };
        if unescape_octal(head, &mut [0u8; 1]).is_none() {
            return Err(MountInfoProblem::BadEscape(name));
        }
        rest = tail;
    }
    Ok(MountOptions { raw })
}

/// Decodes the kernel's `\ooo` escapes (three octal digits, at most `\377`) of `raw` into
/// `out`; returns the decoded length, or `None` if an escape is malformed or `out` is too
/// small. Decoded text is never longer than `raw`.
pub fn unescape_octal(raw: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut written = 0usize;
    let mut rest = raw;
    while let Some((&b, tail)) = rest.split_first() {
        let (byte, tail) = if b == b'\\' {
            let digits = tail.get(..3)?;
            let value = digits.iter().try_fold(0u16, |v, &d| {
                let digit = char::from(d).to_digit(8)?;
                Some(v * 8 + u16::try_from(digit).ok()?)
            })?;
            (u8::try_from(value).ok()?, tail.get(3..)?)
        } else {
            (b, tail)
        };
        *out.get_mut(written)? = byte;
        written = written.checked_add(1)?;
        rest = tail;
    }
    Some(written)
}

/// The mounts of a mountinfo file read from disk; errors name the file.
#[derive(Debug)]
pub struct MountInfoFile<'a> {
    path: PathBuf,
    mounts: MountInfoIter<'a>,
}

impl MountInfoFile<'_> {
    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<'a> Iterator for MountInfoFile<'a> {
    type Item = Result<MountInfo<'a>, FileError<MountInfoError>>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.mounts.next()?.map_err(|e| FileError::parse(&self.path, e)))
    }
}

/// Reads `<proc_root>/<pid>/mountinfo`; the mounts are parsed as they are iterated.
pub fn read_mountinfo<'b>(
    proc_root: &Path,
    pid: ProcPid,
    buf: &'b mut MountInfoBuf,
) -> Result<MountInfoFile<'b>, ReadError> {
    let path = pid.file(proc_root, "mountinfo");
    let (bytes, text) = buf.read(&path)?;
    Ok(MountInfoFile { mounts: parse_mountinfo(bytes, text), path })
}
