//! haul's own logger behind the `log` facade: one line per record, one write per line,
//! UTC timestamps, to stderr (or syslog for `haul serve --syslog`, later).

use log::{Level, LevelFilter, Metadata, Record};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

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
}
