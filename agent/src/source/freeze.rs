//! Freezing the container for the dump. haul freezes its v1 freezer cgroup itself, looking
//! every millisecond (`cgroups::freeze`): CRIU's own freezing sleeps 100 ms between looks. CRIU
//! then finds the cgroup frozen, seizes the tasks and thaws it; but having found it frozen, a
//! failed dump puts it back to frozen. haul thaws it on every rollback it sees (after CRIU
//! exited); for the one it cannot see, its own death, a guard process started before the
//! freeze thaws it once CRIU has exited: the container keeps running on the source whatever
//! kills haul.

use crate::error::Result;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long haul waits for the cgroup to report FROZEN before leaving the freezing to CRIU
/// (whose first look comes after 100 ms).
pub const FREEZE_LIMIT: Duration = Duration::from_millis(100);
/// How long the guard waits for CRIU to exit before thawing anyway.
pub const GUARD_WAIT: Duration = Duration::from_secs(60);
/// What haul writes to the guard when it has handled the cgroup itself.
const DONE: &[u8] = b"done";

/// Starts the guard for `dir` and the dumping CRIU `criu_pid`, then freezes `dir`. Returns the
/// guard's pipe (write [`done`] to it once the cgroup is handled) if the cgroup froze; `None`
/// if it did not in time (thawed again; CRIU freezes it).
pub fn freeze_guarded(dir: &Path, criu_pid: u32) -> Result<Option<OwnedFd>> {
    let pid = criu_pid.to_string();
    let w = crate::util::start_guard(
        &[
            "freeze-guard".as_ref(),
            "--freezer".as_ref(),
            dir.as_os_str(),
            "--criu-pid".as_ref(),
            pid.as_ref(),
        ],
        "freeze guard",
    )?;
    if crate::cgroups::freeze(dir, FREEZE_LIMIT)? {
        Ok(Some(w))
    } else {
        done(&w);
        Ok(None)
    }
}

/// Tells the guard haul handled the cgroup: it exits without touching it.
pub fn done(pipe: &OwnedFd) {
    let _ = rustix::io::write(pipe, DONE);
}

/// `haul freeze-guard`: waits for `done` on stdin; if stdin ends without it (haul died), waits
/// for CRIU to exit (it restores the frozen state it found), then thaws the cgroup.
pub fn guard(dir: &Path, criu_pid: i32) -> Result<()> {
    let mut got = Vec::new();
    let _ = std::io::stdin().lock().take(64).read_to_end(&mut got);
    if got.starts_with(DONE) {
        return Ok(());
    }
    let end = Instant::now() + GUARD_WAIT;
    while super::migrate::process_exists(criu_pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !dir.join("freezer.state").exists() {
        return Ok(());
    }
    log::warn!(
        "haul migrate ended without thawing {}; thawing it (the container stays here)",
        dir.display()
    );
    crate::cgroups::thaw(dir)
}
