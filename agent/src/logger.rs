//! haul's own logger behind the `log` facade: one line per record, one write per line, UTC
//! timestamps, to stderr; or, for `haul serve --syslog`, one datagram per record to /dev/log.

use log::{Level, LevelFilter, Metadata, Record};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The local syslog socket (systemd-journald, rsyslog and busybox syslogd all listen there).
pub const DEV_LOG: &str = "/dev/log";

/// syslog facility `daemon` (3), shifted as in a PRI value.
const FACILITY_DAEMON: u8 = 3 << 3;

/// Set once `to_syslog` connected; read on every record, so an atomic rather than the lock.
static USE_SYSLOG: AtomicBool = AtomicBool::new(false);
static SYSLOG: Mutex<Option<Syslog>> = Mutex::new(None);

struct Logger {
    level: LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if USE_SYSLOG.load(Ordering::Acquire) {
            let mut guard = SYSLOG.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = guard.as_mut() {
                let mut msg = String::with_capacity(160);
                push_syslog(&mut msg, record.level(), s.pid, record.args());
                if s.send(msg.as_bytes()).is_ok() {
                    return;
                }
                // No syslog daemon for now (restarting, queue full): this record goes to stderr.
            }
        }
        let mut line = String::with_capacity(160);
        push_timestamp(&mut line, SystemTime::now());
        let lvl = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        use std::fmt::Write as _;
        let _ = writeln!(line, " {lvl} {}", record.args());
        // One write per record so lines from threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Level from the number of `-v` flags, overridden by `HAUL_LOG` (error|warn|info|debug|trace).
pub fn level_from(verbose: u8, quiet: bool) -> LevelFilter {
    if let Ok(v) = std::env::var("HAUL_LOG") {
        if let Ok(l) = v.parse::<LevelFilter>() {
            return l;
        }
    }
    match (quiet, verbose) {
        (true, _) => LevelFilter::Error,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    }
}

pub fn init(level: LevelFilter) {
    let logger = Box::leak(Box::new(Logger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Sends the records of this process to the syslog socket at /dev/log from now on.
/// Errors (no syslog daemon here) leave logging on stderr.
pub fn to_syslog() -> Result<(), String> {
    to_syslog_at(Path::new(DEV_LOG))
}

fn to_syslog_at(path: &Path) -> Result<(), String> {
    let s = Syslog::connect(path)
        .map_err(|e| format!("cannot log to syslog at {}: {e}", path.display()))?;
    *SYSLOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    USE_SYSLOG.store(true, Ordering::Release);
    Ok(())
}

/// A connected datagram socket to the syslog daemon.
pub struct Syslog {
    sock: UnixDatagram,
    path: PathBuf,
    pid: u32,
}

impl Syslog {
    /// `socket(AF_UNIX, SOCK_DGRAM)` + `connect(path)`, non-blocking: a stuck syslog daemon must
    /// not stop a migration; when its queue is full, records go to stderr instead.
    pub fn connect(path: &Path) -> std::io::Result<Syslog> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        sock.set_nonblocking(true)?;
        Ok(Syslog {
            sock,
            path: path.to_path_buf(),
            pid: std::process::id(),
        })
    }

    /// `send` one record; after a restart of the daemon (ECONNREFUSED: the socket we connected
    /// to is gone), connects again once and retries.
    pub fn send(&mut self, datagram: &[u8]) -> std::io::Result<()> {
        match self.sock.send(datagram) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
            Err(_) => {
                *self = Syslog::connect(&self.path)?;
                self.sock.send(datagram).map(|_| ())
            }
        }
    }
}

/// Appends an RFC 3164-style record as local syslog daemons take it: `<PRI>haul[PID]: message`,
/// PRI = facility daemon * 8 + severity; the daemon adds time and host.
///
/// Sample: `<30>haul[812]: listening on 0.0.0.0:7070 (key required), work directory /var/lib/haul`
fn push_syslog(out: &mut String, level: Level, pid: u32, msg: &std::fmt::Arguments<'_>) {
    let severity: u8 = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    use std::fmt::Write as _;
    let _ = write!(out, "<{}>haul[{pid}]: {msg}", FACILITY_DAEMON | severity);
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    push_date_time(out, d.as_secs());
    use std::fmt::Write as _;
    let _ = write!(out, ".{:03}Z", d.subsec_millis());
}

/// Appends `YYYY-MM-DDTHH:MM:SS` (UTC) for seconds since the epoch.
pub fn push_date_time(out: &mut String, secs: u64) {
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let mut s = String::new();
        // 2026-11-29T07:51:01.250Z
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_795_938_661_250),
        );
        assert_eq!(s, "2026-11-29T07:51:01.250Z");
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn syslog_records_carry_priority_tag_and_pid() {
        let mut s = String::new();
        push_syslog(
            &mut s,
            Level::Info,
            812,
            &format_args!("listening on {}", "x:1"),
        );
        assert_eq!(s, "<30>haul[812]: listening on x:1");
        let pri = |l| {
            let mut s = String::new();
            push_syslog(&mut s, l, 1, &format_args!(""));
            s
        };
        assert!(pri(Level::Error).starts_with("<27>"));
        assert!(pri(Level::Warn).starts_with("<28>"));
        assert!(pri(Level::Debug).starts_with("<31>"));
        assert!(pri(Level::Trace).starts_with("<31>"));
    }

    #[test]
    fn syslog_datagrams_reach_the_socket_and_survive_a_daemon_restart() {
        let dir = std::env::temp_dir().join(format!("haul-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let daemon = UnixDatagram::bind(&path).unwrap();
        let mut s = Syslog::connect(&path).unwrap();
        s.send(b"<30>haul[1]: one").unwrap();
        let mut buf = [0u8; 64];
        let n = daemon.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>haul[1]: one");

        // The daemon restarts: a new socket under the same name.
        drop(daemon);
        std::fs::remove_file(&path).unwrap();
        let daemon = UnixDatagram::bind(&path).unwrap();
        s.send(b"<30>haul[1]: two").unwrap();
        let n = daemon.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>haul[1]: two");

        // No daemon at all: an error, for the caller to fall back to stderr.
        drop(daemon);
        std::fs::remove_file(&path).unwrap();
        assert!(s.send(b"three").is_err());
        assert!(to_syslog_at(&path)
            .unwrap_err()
            .contains("cannot log to syslog at"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
