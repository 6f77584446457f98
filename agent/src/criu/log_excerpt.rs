//! Quotes the error lines of a CRIU log, read from its tail with a bounded buffer.
//!
//! A CRIU log line looks like `(00.012345) Error (criu/mount.c:1234): mnt: Can't ...`.
//! Every log on some kernels starts with a harmless `rlimit: Can't setup RLIMIT_NOFILE`
//! error, which is skipped.

use crate::limits::{CRIU_LOG_ERROR_LINES, CRIU_LOG_TAIL};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Errors known to be harmless on the kernels haul runs on.
const HARMLESS: &[&str] = &["RLIMIT_NOFILE"];

/// True for an error CRIU logs that is known to be harmless.
pub fn is_harmless(line: &str) -> bool {
    HARMLESS.iter().any(|h| line.contains(h))
}

/// The last error lines of the log at `path` (at most `CRIU_LOG_ERROR_LINES`), or nothing.
pub fn error_lines(path: &Path) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(CRIU_LOG_TAIL as u64);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::with_capacity(CRIU_LOG_TAIL);
    if file
        .take(CRIU_LOG_TAIL as u64)
        .read_to_end(&mut buf)
        .is_err()
    {
        return Vec::new();
    }
    select(&String::from_utf8_lossy(&buf))
}

/// Picks the error lines from a log excerpt.
pub fn select(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| l.contains("Error") || l.contains("error ("))
        .filter(|l| !is_harmless(l))
        .map(|l| l.trim().to_string())
        .collect();
    let skip = out.len().saturating_sub(CRIU_LOG_ERROR_LINES);
    out.drain(..skip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_real_errors_and_drops_the_rlimit_noise() {
        let log = "(00.000010) Error (criu/util.c:123): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
                   (00.001000) Dumping task 42\n\
                   (00.002000) Error (criu/mount.c:1100): mnt: Can't lookup mount=123 for fd=1 path=/x\n";
        let lines = select(log);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("Can't lookup mount=123"));
    }

    #[test]
    fn keeps_only_the_last_lines() {
        let log: String = (0..20)
            .map(|i| format!("Error (x.c:{i}): e{i}\n"))
            .collect();
        let lines = select(&log);
        assert_eq!(lines.len(), CRIU_LOG_ERROR_LINES);
        assert!(lines[CRIU_LOG_ERROR_LINES - 1].ends_with("e19"));
        // Exactly CRIU_LOG_ERROR_LINES lines: all quoted; one more: the oldest goes.
        let log =
            |n: usize| -> String { (0..n).map(|i| format!("Error (x.c:1): e{i}\n")).collect() };
        let at = select(&log(CRIU_LOG_ERROR_LINES));
        assert_eq!(at.len(), CRIU_LOG_ERROR_LINES);
        assert!(at[0].ends_with("e0"));
        let over = select(&log(CRIU_LOG_ERROR_LINES + 1));
        assert_eq!(over.len(), CRIU_LOG_ERROR_LINES);
        assert!(over[0].ends_with("e1"));
    }

    /// Only the last CRIU_LOG_TAIL bytes are read: an error line starting right at the tail's
    /// first byte is quoted; one byte further back, its start ("E") is cut off and it is not.
    #[test]
    fn reads_only_the_last_criu_log_tail_bytes() {
        let dir = std::env::temp_dir().join(format!("haul-logtail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dump.log");
        let error = "Error (criu/mount.c:1): the one\n";
        for (filler_after, quoted) in [
            (CRIU_LOG_TAIL - error.len(), true),
            (CRIU_LOG_TAIL - error.len() + 1, false),
        ] {
            let text = format!("(00.000001) start\n{error}{}", "x".repeat(filler_after));
            std::fs::write(&path, &text).unwrap();
            let lines = error_lines(&path);
            assert_eq!(!lines.is_empty(), quoted, "{filler_after}: {lines:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
