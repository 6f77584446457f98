//! Freezing the container for the dump, and the guard process that resumes the source if
//! `haul migrate` dies before the commit.
//!
//! haul freezes a v1 freezer cgroup itself, looking every millisecond (`cgroups::freeze`):
//! CRIU's own freezing sleeps 100 ms between looks. CRIU then finds the cgroup frozen, seizes
//! the tasks and thaws it; but having found it frozen, a failed dump puts it back to frozen.
//! haul thaws it on every rollback it sees (after CRIU exited); for the one it cannot see, its
//! own death, a guard process started before the freeze thaws it once CRIU has exited.
//!
//! `--lazy` has a second death haul cannot see. Once post-dump is answered, CRIU serves the
//! pages on its page socket and takes the end of that stream for the end of a successful
//! transfer: it kills the tasks. If haul dies before the commit (SIGKILL, the OOM killer) its
//! end of the socket closes, CRIU kills the tasks, and the destination, never committed, stops
//! its copy: the container would be lost. So the guard also holds a duplicate of haul's end of
//! the page socket; if haul dies before the commit, the guard writes the request CRIU rejects
//! (`postcopy::FAIL_REQUEST`), CRIU fails and resumes the tasks.
//!
//! After the Commit the destination may run the container with part of its memory: the copy
//! here must never resume, and failing the page server would resume it. haul says `commit` to
//! the guard just before it sends the Commit. The guard's copy of the socket matters then too:
//! a haul that dies with page data unread in its end resets the socket, which CRIU takes for a
//! failure (it would resume the tasks). With the guard's copy open, the socket outlives haul,
//! and the guard kills the tasks (pending while they are frozen) before it ends the stream.
//!
//! haul tells the guard what it handled itself through the guard's stdin, one word a line:
//! `done` (the cgroup), `commit` (see above), `release` (the page socket: haul leaves alive,
//! having handled it). A pipe that ends without a word (haul died) leaves that job to the
//! guard.

use crate::error::{Error, Result};
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long haul waits for the cgroup to report FROZEN before leaving the freezing to CRIU
/// (whose first look comes after 100 ms).
pub const FREEZE_LIMIT: Duration = Duration::from_millis(100);
/// How long the guard waits for CRIU to exit before thawing anyway.
pub const GUARD_WAIT: Duration = Duration::from_secs(60);
/// What haul writes to the guard when it has handled the cgroup itself.
const DONE: &str = "done";
/// What haul writes to the guard just before it sends the Commit.
const COMMIT: &str = "commit";
/// What haul writes to the guard when it leaves with the page socket handled (rolled back,
/// post-copy over or failed).
const RELEASE: &str = "release";

/// What the guard watches.
pub struct Watch<'a> {
    /// The dumping CRIU: the guard thaws only after it exited (it restores the frozen state it
    /// found).
    pub criu_pid: u32,
    /// The freezer cgroup haul is about to freeze.
    pub freezer: Option<&'a Path>,
    /// `--lazy`: haul's end of CRIU's page socket.
    pub page_socket: Option<BorrowedFd<'a>>,
    /// `--lazy`: the root task, whose network namespace CRIU locked (one it did not run in):
    /// CRIU resumes the tasks after a failed lazy transfer without removing its lock.
    pub unlock_network_of: Option<i32>,
    /// `--lazy`: the frozen tasks, killed if haul dies after the commit.
    pub tasks: &'a [i32],
}

/// The guard process, seen from haul: the write end of its stdin.
pub struct Guard {
    pipe: OwnedFd,
}

impl Guard {
    /// Starts the guard (its own process group, so a Ctrl-C aimed at haul does not reach it),
    /// inheriting the page socket under its number.
    pub fn start(w: &Watch<'_>) -> Result<Guard> {
        let pid = w.criu_pid.to_string();
        let socket = w.page_socket.map(|s| s.as_raw_fd().to_string());
        let unlock = w.unlock_network_of.map(|p| p.to_string());
        let tasks = w
            .tasks
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        use std::ffi::OsStr;
        let mut args = vec![
            OsStr::new("freeze-guard"),
            OsStr::new("--criu-pid"),
            OsStr::new(&pid),
        ];
        if let Some(dir) = w.freezer {
            args.extend([OsStr::new("--freezer"), dir.as_os_str()]);
        }
        if let Some(s) = &socket {
            args.extend([OsStr::new("--page-socket"), OsStr::new(s)]);
            args.extend([OsStr::new("--tasks"), OsStr::new(&tasks)]);
        }
        if let Some(p) = &unlock {
            args.extend([OsStr::new("--unlock-network-of"), OsStr::new(p)]);
        }
        let inherit: Vec<BorrowedFd<'_>> = w.page_socket.into_iter().collect();
        let pipe = crate::util::start_guard(&args, &inherit, "freeze guard")?;
        Ok(Guard { pipe })
    }

    /// haul handled the cgroup (thawed it, or left the freezing to CRIU).
    pub fn cgroup_handled(&self) {
        self.say(DONE);
    }

    /// haul is about to send the Commit: from now on the guard never fails the page server.
    pub fn commit(&self) {
        self.say(COMMIT);
    }

    /// haul handled the page socket: the guard closes its copy and leaves it alone.
    pub fn release_page_socket(&self) {
        self.say(RELEASE);
    }

    fn say(&self, word: &str) {
        let _ = rustix::io::write(&self.pipe, format!("{word}\n").as_bytes());
    }
}

impl Drop for Guard {
    /// haul leaves the migration alive (no SIGKILL, no abort runs this): whatever happened to
    /// the page socket, haul did it.
    fn drop(&mut self) {
        self.release_page_socket();
    }
}

/// Freezes `dir` for the dump: whether it reported FROZEN within [`FREEZE_LIMIT`] (if not, it
/// is thawed again and CRIU freezes it).
pub fn freeze(dir: &Path) -> Result<bool> {
    crate::cgroups::freeze(dir, FREEZE_LIMIT)
}

/// What the guard does with the page socket when haul dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDeath {
    /// Before the commit: fail CRIU's page server (it resumes the tasks).
    Fail,
    /// After the commit: kill the tasks, then end the stream.
    Kill,
}

/// `haul freeze-guard`: reads haul's words on stdin until it ends. Then, with the page socket
/// not released: before the commit, fails CRIU's page server so that it resumes the tasks;
/// after it, kills the tasks and ends the stream. The cgroup not handled: waits for CRIU to
/// exit (it restores the frozen state it found), then thaws it.
pub fn guard(
    freezer: Option<&Path>,
    criu_pid: i32,
    page_socket: Option<i32>,
    unlock_network_of: Option<i32>,
    tasks: &str,
) -> Result<()> {
    let tasks = parse_tasks(tasks).map_err(|e| Error::usage(format!("--tasks: {e}")))?;
    let mut socket = match page_socket {
        Some(n) => Some(
            crate::sys::adopt_fd(n, is_socket)
                .map_err(|e| Error::usage(format!("--page-socket {n}: {e}")))?,
        ),
        None => None,
    };
    let mut cgroup_handled = freezer.is_none();
    let mut on_death = OnDeath::Fail;
    let mut words = Words::default();
    let stdin = std::io::stdin();
    let mut inp = stdin.lock();
    let mut buf = [0u8; 64];
    loop {
        let n = match inp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for w in words.feed(buf.get(..n).unwrap_or_default()) {
            match w.as_str() {
                DONE => cgroup_handled = true,
                COMMIT => on_death = OnDeath::Kill,
                RELEASE => socket = None,
                _ => {}
            }
        }
    }
    let failed = match (socket.take(), on_death) {
        (Some(ps), OnDeath::Fail) => fail_page_server(&ps),
        (Some(ps), OnDeath::Kill) => {
            // CRIU, alive, still holds the tasks seized: their pids are theirs.
            if super::migrate::process_exists(criu_pid) {
                log::error!(
                    "haul migrate ended during the post-copy, after the commit: killing the \
                     frozen tasks here ({} of them); the copy on the destination decides",
                    tasks.len()
                );
                super::postcopy::kill_tasks(&tasks);
            }
            let _ = rustix::net::shutdown(&ps, rustix::net::Shutdown::Both);
            false
        }
        (None, _) => false,
    };
    if cgroup_handled && !failed {
        return Ok(());
    }
    let end = Instant::now() + GUARD_WAIT;
    while super::migrate::process_exists(criu_pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    if failed {
        if let Some(pid) = unlock_network_of {
            super::postcopy::unlock_network(pid);
        }
    }
    match freezer {
        Some(dir) if !cgroup_handled && dir.join("freezer.state").exists() => {
            log::warn!(
                "haul migrate ended without thawing {}; thawing it (the container stays here)",
                dir.display()
            );
            crate::cgroups::thaw(dir)
        }
        _ => Ok(()),
    }
}

/// Fails CRIU's lazy page server through the guard's copy of the socket. Whether the request
/// went in: a socket haul already shut down or CRIU already closed takes nothing, and then
/// there is nothing to fail.
fn fail_page_server(ps: &OwnedFd) -> bool {
    match crate::transfer::mux::write_all(ps, super::postcopy::FAIL_REQUEST) {
        Ok(()) => {
            log::warn!(
                "haul migrate ended before the commit while CRIU served the pages; failing its \
                 page server so that it resumes the tasks (the container stays here)"
            );
            let _ = rustix::net::shutdown(ps, rustix::net::Shutdown::Both);
            true
        }
        Err(_) => false,
    }
}

fn parse_tasks(text: &str) -> std::result::Result<Vec<i32>, String> {
    text.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| match t.parse::<i32>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{t:?} is not a process id")),
        })
        .collect()
}

fn is_socket(fd: BorrowedFd<'_>) -> std::result::Result<(), String> {
    let st = rustix::fs::fstat(fd).map_err(|e| e.to_string())?;
    match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::Socket => Ok(()),
        other => Err(format!("not a socket but a {other:?}")),
    }
}

/// Splits the guard's stdin into lines; a line longer than any word is dropped.
#[derive(Default)]
struct Words {
    line: Vec<u8>,
    overlong: bool,
}

impl Words {
    const MAX: usize = 16;

    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if !self.overlong {
                    out.push(String::from_utf8_lossy(&self.line).into_owned());
                }
                self.line.clear();
                self.overlong = false;
            } else if self.line.len() < Self::MAX {
                self.line.push(b);
            } else {
                self.overlong = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_arrive_whole_whatever_the_reads_cut() {
        let mut w = Words::default();
        assert!(w.feed(b"rel").is_empty());
        assert_eq!(w.feed(b"ease\ndo"), vec!["release"]);
        assert_eq!(w.feed(b"ne\n"), vec!["done"]);
        assert_eq!(
            w.feed(b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxdone\ndone\n"),
            vec!["done"]
        );
    }

    #[test]
    fn task_lists_round_trip_and_bad_ones_are_named() {
        assert_eq!(parse_tasks("12,345"), Ok(vec![12, 345]));
        assert_eq!(parse_tasks(""), Ok(vec![]));
        assert!(parse_tasks("12,0").unwrap_err().contains("\"0\""));
        assert!(parse_tasks("x").is_err());
    }

    #[test]
    fn the_guard_fails_a_live_page_socket_once_and_not_a_dead_one() {
        let (ours, criu) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        assert!(fail_page_server(&ours));
        let mut got = [1u8; 32];
        let n = rustix::io::read(&criu, &mut got).unwrap();
        assert_eq!(&got[..n], super::super::postcopy::FAIL_REQUEST);
        assert!(!fail_page_server(&ours), "shut down: nothing to fail");
        drop(criu);
    }
}
