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
        self.raw
            .split(|&b| b == b',')
            .filter(|o| !o.is_empty())
            .map(OsStr::from_bytes)
    }

    /// Whether the list has `option` (`ro`, `cpu`, `name=systemd`) as a whole entry.
    pub fn contains(&self, option: &str) -> bool {
        self.iter().any(|o| o == option)
    }

    /// The value of `key=value`, escapes kept.
    pub fn value(&self, key: &str) -> Option<&'a OsStr> {
        self.iter().find_map(|o| {
            let rest = o
                .as_bytes()
                .strip_prefix(key.as_bytes())?
                .strip_prefix(b"=")?;
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
                write!(
                    f,
                    "the {field} field has a backslash not followed by 3 octal digits"
                )
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
            Ok(line) => parse_line(line.bytes, &mut self.arena).map_err(|problem| {
                MountInfoError::Malformed {
                    line: line.number,
                    problem,
                }
            }),
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
fn parse_line<'a>(
    line: &'a [u8],
    arena: &mut TextArena<'a>,
) -> Result<MountInfo<'a>, MountInfoProblem> {
    let mut fields = Fields { rest: Some(line) };
    let number = |field: &[u8], name| parse_u32(field).ok_or(MountInfoProblem::BadNumber(name));

    let mount_id = number(fields.next("mount ID")?, "mount ID")?;
    let parent_id = number(fields.next("parent ID")?, "parent ID")?;
    let dev = fields.next("major:minor")?;
    let colon = dev.iter().position(|&b| b == b':');
    let (major, minor) = colon
        .and_then(|c| Some((dev.get(..c)?, dev.get(c.saturating_add(1)..)?)))
        .and_then(|(major, minor)| Some((parse_u32(major)?, parse_u32(minor)?)))
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
        // Decoding never lengthens a field: room for `raw` is room enough.
        if out.len() < raw.len() {
            return Err(MountInfoProblem::NoRoom);
        }
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
        Some(
            self.mounts
                .next()?
                .map_err(|e| FileError::parse(&self.path, e)),
        )
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
    Ok(MountInfoFile {
        mounts: parse_mountinfo(bytes, text),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::bounded_read::ReadErrorKind;
    use crate::inspect::test_support::{fixture, TempDir, TestResult};

    /// All mounts of `bytes`, with a text buffer as large as the input.
    fn parse_all(bytes: &[u8]) -> Result<Vec<MountInfo<'static>>, MountInfoError> {
        let bytes: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
        let text: &'static mut [u8] = Box::leak(vec![0u8; bytes.len()].into_boxed_slice());
        parse_mountinfo(bytes, text).collect()
    }

    fn at<'m>(
        mounts: &'m [MountInfo<'static>],
        mount_point: &str,
    ) -> Result<&'m MountInfo<'static>, String> {
        mounts
            .iter()
            .find(|m| m.mount_point == Path::new(mount_point))
            .ok_or_else(|| format!("no mount at {mount_point:?}"))
    }

    #[test]
    fn parses_the_hybrid_host() -> TestResult {
        let mounts = parse_all(&fixture("runc-1.1.5-cgroupv1-hybrid/proc-self-mountinfo")?)?;
        assert_eq!(mounts.len(), 19);
        let root = at(&mounts, "/")?;
        assert_eq!(
            (root.mount_id, root.parent_id, root.major, root.minor),
            (27, 1, 254, 0)
        );
        assert_eq!(
            (root.fs_type, root.source),
            (OsStr::new("ext4"), OsStr::new("/dev/vda"))
        );
        assert!(root.super_options.contains("discard"));
        assert_eq!(
            root.super_options.value("resuid"),
            Some(OsStr::new("65534"))
        );
        let unified = at(&mounts, "/sys/fs/cgroup/unified")?;
        assert_eq!(unified.fs_type, OsStr::new("cgroup2"));
        let v1: Vec<_> = mounts
            .iter()
            .filter(|m| m.fs_type == OsStr::new("cgroup"))
            .collect();
        assert_eq!(v1.len(), 9);
        let memory = v1
            .iter()
            .find(|m| m.super_options.contains("memory"))
            .ok_or("no memory")?;
        assert_eq!(memory.mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert!(at(&mounts, "/sys/fs/cgroup/systemd")?
            .super_options
            .contains("name=systemd"));
        assert_eq!(root.propagation, Propagation::default());
        Ok(())
    }

    #[test]
    fn parses_the_container_init() -> TestResult {
        let mounts = parse_all(&fixture(
            "runc-1.1.5-cgroupv1-hybrid/proc-container-init-mountinfo",
        )?)?;
        assert_eq!(mounts.len(), 26);
        let data = at(&mounts, "/data")?;
        assert_eq!(data.root, Path::new("/srv/bundles/ctp/hostdata"));
        assert_eq!((data.mount_id, data.parent_id), (82, 65));
        let memory = at(&mounts, "/sys/fs/cgroup/memory")?;
        assert_eq!(
            memory.root,
            Path::new("/system.slice/edge-runtime.service/ctp")
        );
        assert!(memory.mount_options.contains("ro") && memory.super_options.contains("rw"));
        let keys = at(&mounts, "/proc/keys")?;
        assert_eq!(
            (keys.root, keys.fs_type),
            (Path::new("/null"), OsStr::new("tmpfs"))
        );
        Ok(())
    }

    #[test]
    fn decodes_octal_escapes_and_reads_propagation() -> TestResult {
        let mounts = parse_all(&fixture("mountinfo-octal-escapes/proc-self-mountinfo")?)?;
        let space = at(&mounts, "/tmp/haul-esc/mnt/with space")?;
        assert_eq!(space.source, OsStr::new("src with space"));
        assert_eq!(
            at(&mounts, "/tmp/haul-esc/mnt/tab\there")?.source,
            OsStr::new("tabsrc")
        );
        assert_eq!(
            at(&mounts, "/tmp/haul-esc/mnt/new\nline")?.source,
            OsStr::new("nlsrc")
        );
        assert_eq!(
            at(&mounts, "/tmp/haul-esc/mnt/back\\slash")?.source,
            OsStr::new("back\\src")
        );
        let bind = at(&mounts, "/tmp/haul-esc/mnt/bind target")?;
        assert_eq!(
            (bind.root, bind.minor),
            (Path::new("/sub dir"), space.minor)
        );

        let overlay = at(&mounts, "/tmp/haul-esc/mnt/merged")?;
        let lower = overlay
            .super_options
            .value("lowerdir")
            .ok_or("no lowerdir")?;
        assert_eq!(lower, OsStr::new("/tmp/haul-esc/mnt/lower\\040dir"));
        let mut out = [0u8; 64];
        let n = unescape_octal(lower.as_bytes(), &mut out).ok_or("bad escape")?;
        assert_eq!(out.get(..n), Some(&b"/tmp/haul-esc/mnt/lower dir"[..]));

        let shared = Propagation {
            shared: Some(2),
            ..Propagation::default()
        };
        assert_eq!(
            at(&mounts, "/tmp/haul-esc/mnt/tab\there")?.propagation,
            shared
        );
        assert_eq!(at(&mounts, "/tmp/haul-esc/mnt/peer")?.propagation, shared);
        let slave = Propagation {
            master: Some(2),
            ..Propagation::default()
        };
        assert_eq!(at(&mounts, "/tmp/haul-esc/mnt/slave")?.propagation, slave);
        assert!(
            at(&mounts, "/tmp/haul-esc/mnt/unbindable")?
                .propagation
                .unbindable
        );
        Ok(())
    }

    #[test]
    fn parses_a_bind_mount_with_spaces_in_a_runc_container() -> TestResult {
        let mounts = parse_all(&fixture(
            "runc-1.1.5-escapes/proc-container-init-mountinfo",
        )?)?;
        let data = at(&mounts, "/data dir")?;
        assert_eq!(data.root, Path::new("/tmp/haul-runc/host data"));
        // mountinfo does not escape `&`.
        assert_eq!(
            at(&mounts, "/")?.root,
            Path::new("/tmp/haul-runc/edge&co/rootfs")
        );
        Ok(())
    }

    #[test]
    fn parses_a_cgroup2_only_host() -> TestResult {
        let mounts = parse_all(&fixture("cgroup2-only-synthetic/proc-self-mountinfo")?)?;
        let cgroups: Vec<_> = mounts
            .iter()
            .filter(|m| m.fs_type == OsStr::new("cgroup2") || m.fs_type == OsStr::new("cgroup"))
            .collect();
        assert_eq!(cgroups.len(), 1);
        let cg = cgroups.first().ok_or("no cgroup2")?;
        assert_eq!(cg.mount_point, Path::new("/sys/fs/cgroup"));
        assert_eq!(cg.propagation.shared, Some(4));
        assert!(cg.super_options.contains("nsdelegate"));
        assert!(cg.mount_options.contains("noexec"));
        Ok(())
    }

    #[test]
    fn accepts_empty_fields_unknown_tags_and_missing_super_options() -> TestResult {
        let mounts = parse_all(
            b"1 0 0:1 / /x rw future:7 propagate_from:3 - tmpfs  rw\n2 1 0:2 / /y rw - proc proc\n",
        )?;
        let x = mounts.first().ok_or("no /x")?;
        assert_eq!(
            (x.source, x.propagation.propagate_from),
            (OsStr::new(""), Some(3))
        );
        let y = mounts.get(1).ok_or("no /y")?;
        assert_eq!(
            (y.source, y.super_options.raw()),
            (OsStr::new("proc"), OsStr::new(""))
        );
        assert_eq!(y.super_options.iter().count(), 0);
        Ok(())
    }

    #[test]
    fn refuses_malformed_lines_and_stops() {
        let malformed = |line, problem| Err(MountInfoError::Malformed { line, problem });
        use MountInfoProblem::*;
        assert_eq!(
            parse_all(b"1 0 0:1 / /x rw tmpfs tmpfs rw"),
            malformed(1, Missing("`-` separator"))
        );
        assert_eq!(
            parse_all(b"1 0 0:1 / /x rw -"),
            malformed(1, Missing("filesystem type"))
        );
        assert_eq!(
            parse_all(b"1 0 0:1 / /x"),
            malformed(1, Missing("mount options"))
        );
        assert_eq!(
            parse_all(b"x 0 0:1 / /x rw - t s o"),
            malformed(1, BadNumber("mount ID"))
        );
        assert_eq!(
            parse_all(b"1 0 01 / /x rw - t s o"),
            malformed(1, BadNumber("major:minor"))
        );
        assert_eq!(
            parse_all(b"1 0 0:1:2 / /x rw - t s o"),
            malformed(1, BadNumber("major:minor"))
        );
        assert_eq!(
            parse_all(b"1 0 0:1 / /x rw shared:x - t s o"),
            malformed(1, BadNumber("shared:N"))
        );
        assert_eq!(
            parse_all(b"1 0 0:1 / /a\\04 rw - t s o"),
            malformed(1, BadEscape("mount point"))
        );
        assert_eq!(
            parse_all(b"1 0 0:1 / /a\\400 rw - t s o"),
            malformed(1, BadEscape("mount point"))
        );
        assert_eq!(
            parse_all(b"1 0 0:1 /\\x12 /a rw - t s o"),
            malformed(1, BadEscape("root"))
        );
        assert_eq!(
            parse_all(b"1 0 0:1 / /a rw - t s o\\9"),
            malformed(1, BadEscape("super options"))
        );
        assert_eq!(
            parse_all(b"1 0 0:1 / /a rw - t s o\n\n"),
            malformed(2, BadNumber("mount ID"))
        );
        assert_eq!(parse_all(b"1"), malformed(1, Missing("parent ID")));
        let mut bytes = b"1 0 0:1 / /a rw - t s o\nbad\n".to_vec();
        bytes.extend_from_slice(b"2 0 0:1 / /b rw - t s o\n");
        let text = &mut vec![0u8; bytes.len()][..];
        let results: Vec<_> = parse_mountinfo(&bytes, text).collect();
        assert_eq!(results.len(), 2, "the iteration stops at the first error");
        assert!(matches!(results.as_slice(), [Ok(_), Err(_)]));
        let msg = MountInfoError::Malformed {
            line: 2,
            problem: Missing("parent ID"),
        }
        .to_string();
        assert_eq!(msg, "line 2: no parent ID field");
    }

    #[test]
    fn a_line_at_the_bound_parses_and_one_byte_more_is_refused() -> TestResult {
        let head = b"1 0 0:1 / /";
        let tail = b" rw - tmpfs tmpfs rw";
        let fill = MOUNTINFO_LINE_MAX - head.len() - tail.len();
        let line = [&head[..], &vec![b'a'; fill], &tail[..], b"\n"].concat();
        assert_eq!(
            parse_all(&line)?
                .first()
                .map(|m| m.mount_point.as_os_str().len()),
            Some(fill + 1)
        );
        let long = [&head[..], &vec![b'a'; fill + 1], &tail[..], b"\n"].concat();
        let too_long = LineTooLong {
            line: 1,
            len: MOUNTINFO_LINE_MAX + 1,
            bound: MOUNTINFO_LINE_MAX,
        };
        assert_eq!(parse_all(&long), Err(MountInfoError::LineTooLong(too_long)));
        Ok(())
    }

    #[test]
    fn a_file_at_the_bound_is_read_and_one_byte_more_is_refused() -> TestResult {
        let line = b"1 0 0:1 / /x rw - tmpfs tmpfs rw\n";
        let full_lines = MOUNTINFO_MAX / line.len() - 1;
        let mut bytes = line.repeat(full_lines);
        // One last line, its mount point padded to reach the bound exactly.
        let (head, tail) = (&b"1 0 0:1 / /"[..], &b" rw - tmpfs tmpfs rw\n"[..]);
        let pad = MOUNTINFO_MAX - bytes.len() - head.len() - tail.len();
        bytes.extend_from_slice(&[head, &vec![b'x'; pad], tail].concat());
        assert_eq!(bytes.len(), MOUNTINFO_MAX);
        let proc_root = TempDir::new("mountinfo-bound")?;
        proc_root.write("self/mountinfo", &bytes)?;
        let mut buf = MountInfoBuf::new();
        let count = read_mountinfo(proc_root.path(), ProcPid::Current, &mut buf)?
            .collect::<Result<Vec<_>, _>>()?
            .len();
        assert_eq!(count, full_lines + 1);

        bytes.push(b'x');
        let path = proc_root.write("self/mountinfo", &bytes)?;
        let err = read_mountinfo(proc_root.path(), ProcPid::Current, &mut buf)
            .err()
            .ok_or("a mountinfo over the bound was read")?;
        assert!(matches!(
            err.kind,
            ReadErrorKind::TooLarge {
                bound: MOUNTINFO_MAX,
                ..
            }
        ));
        assert_eq!(err.path, path);
        Ok(())
    }

    #[test]
    fn reads_from_a_proc_root_and_names_the_file_in_errors() -> TestResult {
        let proc_root = TempDir::new("mountinfo-root")?;
        proc_root.write(
            "1/mountinfo",
            b"1 0 0:1 / / rw - ext4 /dev/vda rw\nbroken\n",
        )?;
        let mut buf = MountInfoBuf::new();
        let pid = ProcPid::Pid(rustix::process::Pid::INIT);
        let mut mounts = read_mountinfo(proc_root.path(), pid, &mut buf)?;
        assert_eq!(mounts.path(), proc_root.path().join("1/mountinfo"));
        assert!(mounts.next().is_some_and(|m| m.is_ok()));
        let err = mounts
            .next()
            .ok_or("no second line")?
            .err()
            .ok_or("`broken` parsed")?;
        let msg = err.to_string();
        assert!(
            msg.ends_with("1/mountinfo: line 2: the mount ID field is not a number"),
            "{msg}"
        );
        drop(mounts);

        let own = read_mountinfo(Path::new("/proc"), ProcPid::Current, &mut buf)?;
        let own: Vec<_> = own.collect::<Result<_, _>>()?;
        assert!(own.iter().any(|m| m.mount_point == Path::new("/")));
        Ok(())
    }

    #[test]
    fn a_small_text_buffer_is_an_error_not_a_cut() {
        let bytes = b"1 0 0:1 / /a\\040b rw - t s o\n";
        let mut text = [0u8; 3];
        let got: Vec<_> = parse_mountinfo(bytes, &mut text).collect();
        assert_eq!(
            got,
            vec![Err(MountInfoError::Malformed {
                line: 1,
                problem: MountInfoProblem::NoRoom
            })]
        );
    }
}
