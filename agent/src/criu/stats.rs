//! Reads CRIU's `stats-dump` / `stats-restore` files: two little-endian u32 magics
//! (0x55105940, 0x57093306), a u32 length, then one `stats_entry` protobuf.

use haul_proto::criu::{DumpStatsEntry, RestoreStatsEntry, StatsEntry};
use prost::Message;
use std::path::Path;

const MAGIC_IMG_SERVICE: u32 = 0x5510_5940;
const MAGIC_STATS: u32 = 0x5709_3306;
/// A stats entry is a handful of varints; anything larger is not a stats file.
const STATS_MAX: usize = 4096;

/// Parses the bytes of a stats file.
pub fn parse(bytes: &[u8]) -> Option<StatsEntry> {
    let word = |i: usize| -> Option<u32> {
        let b = bytes.get(i..i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if word(0)? != MAGIC_IMG_SERVICE || word(4)? != MAGIC_STATS {
        return None;
    }
    let len = usize::try_from(word(8)?).ok()?;
    let body = bytes.get(12..12usize.checked_add(len)?)?;
    StatsEntry::decode(body).ok()
}

fn read(path: &Path) -> Option<StatsEntry> {
    let bytes = crate::util::read_bounded(path, STATS_MAX).ok()?;
    parse(&bytes)
}

/// Dump statistics in the directory CRIU worked in, if present.
pub fn dump(dir: &Path) -> Option<DumpStatsEntry> {
    read(&dir.join("stats-dump"))?.dump
}

/// Restore statistics in the directory CRIU worked in, if present.
pub fn restore(dir: &Path) -> Option<RestoreStatsEntry> {
    read(&dir.join("stats-restore"))?.restore
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dump_stats_file() {
        let entry = StatsEntry {
            dump: Some(DumpStatsEntry {
                freezing_time: 1200,
                frozen_time: 45_000,
                pages_written: 300,
                ..Default::default()
            }),
            restore: None,
        };
        let body = entry.encode_to_vec();
        let mut file = Vec::new();
        file.extend_from_slice(&MAGIC_IMG_SERVICE.to_le_bytes());
        file.extend_from_slice(&MAGIC_STATS.to_le_bytes());
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&body);
        let got = parse(&file).unwrap().dump.unwrap();
        assert_eq!(got.frozen_time, 45_000);
        assert_eq!(got.pages_written, 300);
        // Truncated: no panic, no result.
        assert!(parse(&file[..file.len() - 1]).is_none());
        assert!(parse(&file[..6]).is_none());
    }
}
