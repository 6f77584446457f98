//! /proc/PID/cgroup: the cgroup of a process in every mounted hierarchy.
//!
//! One line per hierarchy, `hierarchy-ID:controller-list:cgroup-path` (cgroups(7)). On a hybrid
//! host (fixtures/runc-1.1.5-cgroupv1-hybrid/proc-container-init-cgroup):
//!
//! ```text
//! 9:name=systemd:/ctp
//! 4:memory:/system.slice/edge-runtime.service/ctp
//! 0::/ctp
//! ```
//!
//! On a cgroup2-only host there is the single line `0::/system.slice/x.service`. The path is
//! relative to the root of the hierarchy as seen from the reader's cgroup namespace and may
//! contain `:`, so a line is split at its first two colons only. The kernel does not escape
//! the path; for a removed cgroup2 directory it appends ` (deleted)`, which is kept.

use core::fmt;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::bounded_read::{lines, FileBuf, FileError, LineTooLong};
use super::bounds::{MAX_CGROUP_HIERARCHIES, PROC_CGROUP_LINE_MAX, PROC_CGROUP_MAX};
use super::decimal::parse_u32;
use super::proc_pid::ProcPid;

/// Buffer for reading one /proc/PID/cgroup.
pub type ProcCgroupBuf = FileBuf<PROC_CGROUP_MAX>;

/// One line: a process's cgroup in one hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLine<'a> {
    /// The hierarchy id; 0 is the unified (cgroup2) hierarchy.
    pub hierarchy_id: u32,
    /// The comma-separated controllers bound to the hierarchy (`cpu,cpuacct`,
    /// `name=systemd`); empty for the unified hierarchy.
    pub controllers: &'a str,
    /// The cgroup, relative to the hierarchy's root.
    pub path: &'a Path,
}

impl<'a> CgroupLine<'a> {
    /// The controllers one by one.
    pub fn controllers(&self) -> impl Iterator<Item = &'a str> {
        self.controllers.split(',').filter(|c| !c.is_empty())
    }

    /// Whether `controller` (such as `memory` or `name=systemd`) is bound to this hierarchy.
    pub fn has_controller(&self, controller: &str) -> bool {
        self.controllers().any(|c| c == controller)
    }

    /// Whether this is the unified (cgroup2) hierarchy.
    pub fn is_unified(&self) -> bool {
        self.hierarchy_id == 0 && self.controllers.is_empty()
    }
}

/// All lines of a /proc/PID/cgroup, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup<'a> {
    /// One line per hierarchy.
    pub lines: heapless::Vec<CgroupLine<'a>, MAX_CGROUP_HIERARCHIES>,
}

impl<'a> ProcCgroup<'a> {
    /// The cgroup in the unified (cgroup2) hierarchy, if one is mounted.
    pub fn unified(&self) -> Option<&'a Path> {
        self.lines.iter().find(|l| l.is_unified()).map(|l| l.path)
    }

    /// The line of the v1 hierarchy `controller` is bound to.
    pub fn controller(&self, controller: &str) -> Option<&CgroupLine<'a>> {
        self.lines.iter().find(|l| l.has_controller(controller))
    }

    /// Whether the unified hierarchy is the only one (a cgroup2-only host).
    pub fn is_cgroup2_only(&self) -> bool {
        matches!(self.lines.as_slice(), [only] if only.is_unified())
    }
}

/// Why a /proc/PID/cgroup was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcCgroupError {
    /// A line is longer than [`PROC_CGROUP_LINE_MAX`].
    LineTooLong(LineTooLong),
    /// A line is not `id:controllers:/path`.
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// More hierarchies than [`MAX_CGROUP_HIERARCHIES`].
    TooManyLines {
        /// How many lines the file has.
        count: usize,
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for ProcCgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcCgroupError::LineTooLong(e) => e.fmt(f),
            ProcCgroupError::Malformed { line, problem } => write!(f, "line {line}: {problem}"),
            ProcCgroupError::TooManyLines { count, limit } => write!(
                f,
                "has more than {limit} cgroup hierarchies ({count} found, limit {limit})"
            ),
        }
    }
}

impl std::error::Error for ProcCgroupError {}

/// Parses the content of a /proc/PID/cgroup file.
pub fn parse_proc_cgroup(bytes: &[u8]) -> Result<ProcCgroup<'_>, ProcCgroupError> {
    let mut out = ProcCgroup {
        lines: heapless::Vec::new(),
    };
    let mut all = lines(bytes, PROC_CGROUP_LINE_MAX);
    while let Some(line) = all.next() {
        let line = line.map_err(ProcCgroupError::LineTooLong)?;
        let parsed = parse_line(line.bytes).map_err(|problem| ProcCgroupError::Malformed {
            line: line.number,
            problem,
        })?;
        if out.lines.push(parsed).is_err() {
            let count = line.number.saturating_add(all.count());
            return Err(ProcCgroupError::TooManyLines {
                count,
                limit: MAX_CGROUP_HIERARCHIES,
            });
        }
    }
    Ok(out)
}

fn parse_line(line: &[u8]) -> Result<CgroupLine<'_>, &'static str> {
    let mut parts = line.splitn(3, |&b| b == b':');
    let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("not `hierarchy-ID:controller-list:cgroup-path`");
    };
    let hierarchy_id = parse_u32(id).ok_or("the hierarchy id is not a number")?;
    let controllers =
        core::str::from_utf8(controllers).map_err(|_| "the controller list is not UTF-8")?;
    if !path.starts_with(b"/") {
        return Err("the cgroup path does not start with `/`");
    }
    Ok(CgroupLine {
        hierarchy_id,
        controllers,
        path: Path::new(OsStr::from_bytes(path)),
    })
}

/// Reads and parses `<proc_root>/<pid>/cgroup`.
pub fn read_proc_cgroup<'b>(
    proc_root: &Path,
    pid: ProcPid,
    buf: &'b mut ProcCgroupBuf,
) -> Result<ProcCgroup<'b>, FileError<ProcCgroupError>> {
    let path = pid.file(proc_root, "cgroup");
    let bytes = buf.read(&path)?;
    parse_proc_cgroup(bytes).map_err(|e| FileError::parse(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::test_support::{fixture, TempDir, TestResult};

    #[test]
    fn parses_a_hybrid_container_init() -> TestResult {
        let bytes = fixture("runc-1.1.5-cgroupv1-hybrid/proc-container-init-cgroup")?;
        let cg = parse_proc_cgroup(&bytes)?;
        assert_eq!(cg.lines.len(), 10);
        assert_eq!(cg.unified(), Some(Path::new("/ctp")));
        let memory = cg.controller("memory").ok_or("no memory line")?;
        assert_eq!(memory.hierarchy_id, 4);
        assert_eq!(
            memory.path,
            Path::new("/system.slice/edge-runtime.service/ctp")
        );
        assert_eq!(
            cg.controller("name=systemd").map(|l| l.hierarchy_id),
            Some(9)
        );
        assert!(cg.controller("hugetlb").is_none());
        assert!(!cg.is_cgroup2_only());
        Ok(())
    }

    #[test]
    fn parses_a_cgroup2_only_host() -> TestResult {
        let bytes = fixture("cgroup2-only-synthetic/proc-self-cgroup")?;
        let cg = parse_proc_cgroup(&bytes)?;
        assert!(cg.is_cgroup2_only());
        assert_eq!(
            cg.unified(),
            Some(Path::new("/system.slice/edge-runtime.service"))
        );
        let bytes = fixture("cgroup2-only-synthetic/proc-container-init-cgroup")?;
        let cg = parse_proc_cgroup(&bytes)?;
        assert_eq!(cg.unified(), Some(Path::new("/system.slice/ctp")));
        Ok(())
    }

    #[test]
    fn splits_at_the_first_two_colons_and_keeps_co_mounted_controllers() -> TestResult {
        let cg = parse_proc_cgroup(b"3:cpu,cpuacct:/a:b\n0::/x (deleted)\n")?;
        let cpu = cg.controller("cpuacct").ok_or("no cpuacct")?;
        assert_eq!(
            cpu.controllers().collect::<Vec<_>>(),
            vec!["cpu", "cpuacct"]
        );
        assert_eq!(cpu.path, Path::new("/a:b"));
        assert_eq!(cg.unified(), Some(Path::new("/x (deleted)")));
        assert_eq!(parse_proc_cgroup(b"")?.lines.len(), 0);
        Ok(())
    }

    #[test]
    fn refuses_malformed_lines() {
        let malformed = |line, problem| Err(ProcCgroupError::Malformed { line, problem });
        assert_eq!(
            parse_proc_cgroup(b"0::/\n1:cpu\n"),
            malformed(2, "not `hierarchy-ID:controller-list:cgroup-path`")
        );
        assert_eq!(
            parse_proc_cgroup(b"x::/\n"),
            malformed(1, "the hierarchy id is not a number")
        );
        assert_eq!(
            parse_proc_cgroup(b"1:cpu:rel\n"),
            malformed(1, "the cgroup path does not start with `/`")
        );
        assert_eq!(
            parse_proc_cgroup(b"1:\xff:/\n"),
            malformed(1, "the controller list is not UTF-8")
        );
        assert_eq!(
            parse_proc_cgroup(b"\n"),
            malformed(1, "not `hierarchy-ID:controller-list:cgroup-path`")
        );
    }

    #[test]
    fn limits_lines_and_hierarchies() -> TestResult {
        let at = format!("0::/{}\n", "a".repeat(PROC_CGROUP_LINE_MAX - 4));
        assert_eq!(parse_proc_cgroup(at.as_bytes())?.lines.len(), 1);
        let over = format!("0::/{}\n", "a".repeat(PROC_CGROUP_LINE_MAX - 3));
        let err = parse_proc_cgroup(over.as_bytes())
            .err()
            .ok_or("long line accepted")?;
        assert_eq!(
            err,
            ProcCgroupError::LineTooLong(LineTooLong {
                line: 1,
                len: PROC_CGROUP_LINE_MAX + 1,
                bound: PROC_CGROUP_LINE_MAX
            })
        );
        let full: String = (1..=MAX_CGROUP_HIERARCHIES)
            .map(|i| format!("{i}:c{i}:/\n"))
            .collect();
        assert_eq!(
            parse_proc_cgroup(full.as_bytes())?.lines.len(),
            MAX_CGROUP_HIERARCHIES
        );
        let too_many = format!("{full}99:x:/\n0::/\n");
        let err = parse_proc_cgroup(too_many.as_bytes())
            .err()
            .ok_or("33 lines accepted")?;
        assert_eq!(
            err,
            ProcCgroupError::TooManyLines {
                count: MAX_CGROUP_HIERARCHIES + 2,
                limit: MAX_CGROUP_HIERARCHIES
            }
        );
        assert!(err
            .to_string()
            .contains("more than 32 cgroup hierarchies (34 found"));
        Ok(())
    }

    #[test]
    fn reads_from_a_proc_root() -> TestResult {
        let dir = TempDir::new("proc-cgroup")?;
        dir.write(
            "self/cgroup",
            &fixture("runc-1.1.5-cgroupv1-hybrid/proc-self-cgroup")?,
        )?;
        let mut buf = ProcCgroupBuf::new();
        let cg = read_proc_cgroup(dir.path(), ProcPid::Current, &mut buf)?;
        assert_eq!(
            cg.controller("memory").map(|l| l.path),
            Some(Path::new("/system.slice/edge-runtime.service"))
        );
        drop(cg);
        let own = read_proc_cgroup(Path::new("/proc"), ProcPid::Current, &mut buf)?;
        assert!(!own.lines.is_empty());
        Ok(())
    }
}
