//! A migration's journal on the destination: `<work dir>/journal` says how far it got, and
//! `<work dir>/prepare.pb` keeps the source's container description, so that after a crash
//! `haul serve` can clean up what was interrupted, and an in-doubt migration (the destination
//! reported Ready, the commit never arrived) can be completed with `haul recover DIR`.

use crate::error::{Context, Error, Kind, Result};
use std::io::Write;
use std::path::Path;

pub const JOURNAL: &str = "journal";
pub const PREPARE: &str = "prepare.pb";
/// Most bytes of a journal: a few short lines.
const JOURNAL_MAX: usize = 4096;
/// Most bytes of a saved Prepare (state.json is at most 64 KiB).
pub const PREPARE_MAX: usize = 128 * 1024;

/// How far a migration got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Receiving pages and images; nothing restored yet.
    Receiving,
    /// CRIU restores; the tasks are not yet held.
    Restoring,
    /// Ready was sent: the source may have stopped its tasks. In doubt if interrupted here.
    Ready,
    /// Committed and resumed; CRIU's lazy-pages daemon fills the tasks' memory from these
    /// images. In doubt if interrupted here (the guard stops the tasks), like `Ready`.
    Filling,
    /// Committed: the container runs here.
    Done,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Receiving => "receiving",
            Stage::Restoring => "restoring",
            Stage::Ready => "ready",
            Stage::Filling => "filling",
            Stage::Done => "done",
        }
    }

    fn parse(s: &str) -> Option<Stage> {
        Some(match s {
            "receiving" => Stage::Receiving,
            "restoring" => Stage::Restoring,
            "ready" => Stage::Ready,
            "filling" => Stage::Filling,
            "done" => Stage::Done,
            _ => return None,
        })
    }
}

/// Writes the journal atomically: `stage=...` and `id=...` (the container id, if any).
pub fn write(dir: &Path, stage: Stage, id: &str) -> Result<()> {
    let tmp = dir.join(".journal.tmp");
    let mut f =
        std::fs::File::create(&tmp).ctx(Kind::Other, format!("writing {}", tmp.display()))?;
    f.write_all(format!("stage={}\nid={id}\n", stage.as_str()).as_bytes())
        .and_then(|()| f.sync_all())
        .ctx(Kind::Other, format!("writing {}", tmp.display()))?;
    let journal = dir.join(JOURNAL);
    std::fs::rename(&tmp, &journal).ctx(
        Kind::Other,
        format!("renaming {} to {}", tmp.display(), journal.display()),
    )
}

/// Reads a journal: (stage, container id).
pub fn read(dir: &Path) -> Result<(Stage, String)> {
    let bytes = crate::util::read_bounded(&dir.join(JOURNAL), JOURNAL_MAX).map_err(Error::other)?;
    parse(&String::from_utf8_lossy(&bytes))
        .ok_or_else(|| Error::other(format!("{}: malformed journal", dir.display())))
}

fn parse(text: &str) -> Option<(Stage, String)> {
    let mut stage = None;
    let mut id = String::new();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("stage", v)) => stage = Stage::parse(v),
            Some(("id", v)) => id = v.to_string(),
            _ => {}
        }
    }
    Some((stage?, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_rejects_garbage() {
        let d = std::env::temp_dir().join(format!("haul-journal-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        write(&d, Stage::Ready, "web1").unwrap();
        assert_eq!(read(&d).unwrap(), (Stage::Ready, "web1".to_string()));
        std::fs::write(d.join(JOURNAL), "stage=sideways\n").unwrap();
        assert!(read(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
