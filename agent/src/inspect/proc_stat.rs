//! /proc/PID/stat: a process's pid, command name, state, parent and start time.
//!
//! One line (proc(5)); from fixtures/runc-1.1.5-cgroupv1-hybrid/proc-container-init-stat:
//!
//! ```text
//! 7769 (sh) S 1 7769 7769 0 -1 4194560 782 1208 0 0 0 1 1 0 20 0 1 0 98019 2322432 ...
//! ```
//!
//! Field 2, the command name in parentheses, may itself contain spaces, parentheses and even
//! newlines (a process can set any name with prctl(PR_SET_NAME)), so it runs from the first `(`
//! to the *last* `)` and the file is not split into lines. Field 22, starttime, is in clock
//! ticks since boot; runc stores it as `init_process_start` to recognise its init later.

use core::fmt;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::process::Pid;

use super::bounded_read::{FileBuf, FileError};
use super::bounds::PROC_STAT_MAX;
use super::decimal::{parse_u32, parse_u64};
use super::proc_pid::ProcPid;

/// Buffer for reading one /proc/PID/stat.
pub type ProcStatBuf = FileBuf<PROC_STAT_MAX>;

/// The fields of /proc/PID/stat haul uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat<'a> {
    /// Field 1, pid.
    pub pid: Pid,
    /// Field 2, comm, without its parentheses.
    pub comm: &'a OsStr,
    /// Field 3, state: `R`, `S`, `D`, `T`, `t`, `Z`, ...
    pub state: u8,
    /// Field 4, ppid; `None` for 0 (the process's parent is outside its pid namespace).
    pub ppid: Option<Pid>,
    /// Field 22, starttime: clock ticks after boot when the process started.
    pub start_time: u64,
}

/// Why a /proc/PID/stat was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatError {
    /// No `(comm)` after the pid.
    NoComm,
    /// A field is missing or not what proc(5) describes.
    BadField {
        /// The field's number in proc(5) (1-based).
        number: u8,
        /// Its name in proc(5).
        name: &'static str,
    },
    /// The file is of another process than the one asked for.
    PidMismatch {
        /// The pid asked for.
        expected: Pid,
        /// The pid in the file.
        found: Pid,
    },
}

impl fmt::Display for ProcStatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcStatError::NoComm => f.write_str("no `(comm)` field after the pid"),
            ProcStatError::BadField { number, name } => {
                write!(f, "field {number} ({name}) is missing or malformed")
            }
            ProcStatError::PidMismatch { expected, found } => {
                write!(f, "describes process {found}, not {expected}")
            }
        }
    }
}

impl std::error::Error for ProcStatError {}

/// Parses the content of a /proc/PID/stat file.
pub fn parse_proc_stat(bytes: &[u8]) -> Result<ProcStat<'_>, ProcStatError> {
    let bad = |number, name| ProcStatError::BadField { number, name };
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let open = line
        .iter()
        .position(|&b| b == b'(')
        .ok_or(ProcStatError::NoComm)?;
    let close = line
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(ProcStatError::NoComm)?;
    let comm = line
        .get(open.saturating_add(1)..close)
        .ok_or(ProcStatError::NoComm)?;
    let pid = line
        .get(..open)
        .and_then(|s| s.strip_suffix(b" "))
        .and_then(parse_u32)
        .and_then(|p| i32::try_from(p).ok())
        .and_then(Pid::from_raw)
        .ok_or(bad(1, "pid"))?;
    let after = line.get(close.saturating_add(1)..).unwrap_or_default();
    let mut fields = after
        .strip_prefix(b" ")
        .ok_or(bad(3, "state"))?
        .split(|&b| b == b' ');
    let state = match fields.next() {
        Some(&[state]) => state,
        _ => return Err(bad(3, "state")),
    };
    let ppid = fields
        .next()
        .and_then(parse_u32)
        .and_then(|p| i32::try_from(p).ok())
        .ok_or(bad(4, "ppid"))?;
    // Fields 5 to 21 are skipped; the 18th field from here is 22.
    let start_time = fields
        .nth(17)
        .and_then(parse_u64)
        .ok_or(bad(22, "starttime"))?;
    Ok(ProcStat {
        pid,
        comm: OsStr::from_bytes(comm),
        state,
        ppid: Pid::from_raw(ppid),
        start_time,
    })
}

/// Reads and parses `<proc_root>/<pid>/stat`, and checks that it is of process `pid`.
pub fn read_proc_stat<'b>(
    proc_root: &Path,
    pid: ProcPid,
    buf: &'b mut ProcStatBuf,
) -> Result<ProcStat<'b>, FileError<ProcStatError>> {
    let path = pid.file(proc_root, "stat");
    let bytes = buf.read(&path)?;
    let stat = parse_proc_stat(bytes).map_err(|e| FileError::parse(&path, e))?;
    if let ProcPid::Pid(expected) = pid {
        if stat.pid != expected {
            let mismatch = ProcStatError::PidMismatch {
                expected,
                found: stat.pid,
            };
            return Err(FileError::parse(&path, mismatch));
        }
    }
    Ok(stat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::test_support::{fixture, TempDir, TestResult};

    fn pid(raw: i32) -> Result<Pid, &'static str> {
        Pid::from_raw(raw).ok_or("not a pid")
    }

    #[test]
    fn parses_the_container_init_fixtures() -> TestResult {
        let bytes = fixture("runc-1.1.5-cgroupv1-hybrid/proc-container-init-stat")?;
        let stat = parse_proc_stat(&bytes)?;
        assert_eq!(stat.pid, pid(7769)?);
        assert_eq!(stat.comm, "sh");
        assert_eq!((stat.state, stat.ppid), (b'S', Some(Pid::INIT)));
        // runc's state.json of the same container has "init_process_start":98019.
        assert_eq!(stat.start_time, 98019);
        let bytes = fixture("runc-1.1.5-escapes/proc-container-init-stat")?;
        let stat = parse_proc_stat(&bytes)?;
        assert_eq!((stat.pid, stat.start_time), (pid(6337)?, 38097));
        Ok(())
    }

    #[test]
    fn takes_comm_up_to_the_last_parenthesis() -> TestResult {
        // Fields 5 to 21 hold their own numbers here; field 22 is 777.
        let line = b"42 (a) b (c\nd) ) R 0 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 777 23\n";
        let stat = parse_proc_stat(line)?;
        assert_eq!(stat.comm, OsStr::from_bytes(b"a) b (c\nd) "));
        assert_eq!(
            (stat.pid, stat.state, stat.ppid, stat.start_time),
            (pid(42)?, b'R', None, 777)
        );
        Ok(())
    }

    #[test]
    fn refuses_malformed_lines() {
        let bad = |number, name| Err(ProcStatError::BadField { number, name });
        assert_eq!(parse_proc_stat(b""), Err(ProcStatError::NoComm));
        assert_eq!(parse_proc_stat(b"1 sh S 0"), Err(ProcStatError::NoComm));
        assert_eq!(parse_proc_stat(b"1 )sh( S 0"), Err(ProcStatError::NoComm));
        assert_eq!(parse_proc_stat(b"x (sh) S 0"), bad(1, "pid"));
        assert_eq!(parse_proc_stat(b"0 (sh) S 0"), bad(1, "pid"));
        assert_eq!(parse_proc_stat(b"1 (sh) SS 0"), bad(3, "state"));
        assert_eq!(parse_proc_stat(b"1 (sh)S 0"), bad(3, "state"));
        assert_eq!(parse_proc_stat(b"1 (sh) S -1"), bad(4, "ppid"));
        assert_eq!(parse_proc_stat(b"1 (sh) S 0 1 2"), bad(22, "starttime"));
        let msg = ProcStatError::BadField {
            number: 22,
            name: "starttime",
        }
        .to_string();
        assert!(msg.contains("22") && msg.contains("starttime"));
    }

    #[test]
    fn reads_from_a_proc_root_and_checks_the_pid() -> TestResult {
        let dir = TempDir::new("proc-stat")?;
        let bytes = fixture("runc-1.1.5-cgroupv1-hybrid/proc-container-init-stat")?;
        dir.write("7769/stat", &bytes)?;
        dir.write("12/stat", &bytes)?;
        let mut buf = ProcStatBuf::new();
        let stat = read_proc_stat(dir.path(), ProcPid::Pid(pid(7769)?), &mut buf)?;
        assert_eq!(stat.start_time, 98019);
        let err = read_proc_stat(dir.path(), ProcPid::Pid(pid(12)?), &mut buf)
            .err()
            .ok_or("stat of 7769 accepted as 12")?;
        assert!(
            err.to_string().contains("describes process 7769, not 12"),
            "{err}"
        );
        let own = read_proc_stat(Path::new("/proc"), ProcPid::Current, &mut buf)?;
        assert_eq!(
            own.pid.as_raw_nonzero().get(),
            i32::try_from(std::process::id())?
        );
        Ok(())
    }
}
