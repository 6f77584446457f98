//! Re-plumbing a restored container's pipe stdio: for each `pipe:[N]` among init's fds 0-2 a
//! fresh pipe; CRIU gets the container's end through `inherit_fd`, and a small relay process
//! (`haul stdio-relay`, its own process group, so it outlives `haul serve`) appends what the
//! container writes to `<stdio-dir>/<id>.log`, or, for a stdin pipe, holds its write end open
//! until nothing reads the pipe any more. Relays of a migration that did not complete are
//! killed.

use crate::error::{Error, Result};
use rustix::pipe::{pipe_with, PipeFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Plumbing {
    /// (key `pipe:[N]`, the container's end, inherited by CRIU).
    pub ends: Vec<(String, OwnedFd)>,
    /// The relay processes, killed on drop unless `keep` was called.
    relays: Vec<Child>,
}

impl Plumbing {
    pub fn inherit(&self) -> Vec<(String, i32)> {
        self.ends
            .iter()
            .map(|(k, fd)| (k.clone(), fd.as_raw_fd()))
            .collect()
    }

    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.ends.iter().map(|(_, fd)| fd.as_fd()).collect()
    }

    /// The container runs with these pipes: its relays stay as long as it needs them, and are
    /// reaped (by a thread of this process) when they end.
    pub fn keep(mut self) {
        let relays = std::mem::take(&mut self.relays);
        if relays.is_empty() {
            return;
        }
        let reaper = std::thread::Builder::new()
            .name("haul-relay-reaper".into())
            .spawn(move || {
                for mut r in relays {
                    let _ = r.wait();
                }
            });
        if let Err(e) = reaper {
            // The relays still end on their own; they stay zombies until haul exits.
            log::warn!("reaping the stdio relays: {e}");
        }
    }
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        // Not kept: the container does not run here, nothing needs its relays.
        for r in self.relays.iter_mut() {
            if let Err(e) = r.kill() {
                log::warn!("stopping stdio relay {}: {e}", r.id());
            }
            let _ = r.wait();
        }
    }
}

/// Creates the pipes and starts the relays. `pipes` is from `plan::runc::stdio_pipes`.
pub fn plumb(pipes: &[(String, Vec<usize>)], log: &Path) -> Result<Plumbing> {
    let exe = std::env::current_exe().map_err(|e| Error::other(format!("own executable: {e}")))?;
    // Built as it goes: on an error, its drop stops the relays already started.
    let mut p = Plumbing {
        ends: Vec::new(),
        relays: Vec::new(),
    };
    for (key, fds) in pipes {
        let (r, w) =
            pipe_with(PipeFlags::CLOEXEC).map_err(|e| Error::other(format!("pipe: {e}")))?;
        let stdin_only = fds.iter().all(|&fd| fd == 0);
        // The container writes to fds 1 and 2 (gets the write end) and reads fd 0 (read end).
        let (container, relay) = if stdin_only { (r, w) } else { (w, r) };
        let mut cmd = Command::new(&exe);
        cmd.arg("stdio-relay").arg("--log").arg(log);
        if stdin_only {
            // Holds the write end open so the container's stdin never sees EOF.
            cmd.arg("--hold").stdin(Stdio::from(relay));
        } else {
            cmd.stdin(Stdio::from(relay));
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        crate::sys::unblock_signals_in_child(&mut cmd)
            .map_err(|e| Error::other(format!("signal mask: {e}")))?;
        let child = cmd
            .spawn()
            .map_err(|e| Error::other(format!("starting the stdio relay: {e}")))?;
        log::debug!("stdio relay {} for {key}", child.id());
        p.relays.push(child);
        p.ends.push((key.clone(), container));
    }
    Ok(p)
}

/// `haul stdio-relay --log FILE [--hold]`: copies stdin to FILE (appending) until EOF; with
/// `--hold`, keeps stdin (a pipe's write end) open until the pipe has no reader left.
pub fn relay(log: &Path, hold: bool) -> Result<()> {
    if hold {
        return hold_open(std::io::stdin().as_fd());
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::other(format!("{}: {e}", log.display())))?;
    let mut buf = vec![0u8; 64 * 1024];
    let stdin = std::io::stdin();
    let mut inp = stdin.lock();
    loop {
        use std::io::{Read, Write};
        let n = match inp.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::other(format!("reading stdio pipe: {e}"))),
        };
        out.write_all(buf.get(..n).unwrap_or_default())
            .map_err(|e| Error::other(format!("{}: {e}", log.display())))?;
    }
}

/// Waits until the pipe whose write end is `fd` has no reader left (the container and every
/// other holder of the read end closed it).
fn hold_open(fd: BorrowedFd<'_>) -> Result<()> {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        // No events asked for: a write end reports POLLERR once no reader is left.
        let mut fds = [PollFd::new(&fd, PollFlags::empty())];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::other(format!("waiting on the stdin pipe: {e}"))),
        }
        let got = fds
            .first()
            .map(|f| f.revents())
            .unwrap_or(PollFlags::empty());
        if got.contains(PollFlags::NVAL) {
            return Err(Error::other("stdin of the relay is not open"));
        }
        if got.intersects(PollFlags::ERR | PollFlags::HUP) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_held_stdin_pipe_is_let_go_once_no_reader_is_left() {
        let (r, w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let r2 = r.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(hold_open(w.as_fd()).map_err(|e| e.message));
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "let go while the pipe is read"
        );
        drop(r);
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "let go while a reader is left"
        );
        drop(r2);
        let done = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(done, Ok(Ok(())), "still holding a pipe nobody reads");
    }

    /// A `sleep` standing in for a relay, and the read end of its stdout (EOF once it is gone).
    fn stand_in() -> (Child, std::process::ChildStdout) {
        let mut c = Command::new("sleep")
            .arg("60")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = c.stdout.take().unwrap();
        (c, out)
    }

    /// Whether reading `out` ends (its process is gone) within `wait`.
    fn ends(mut out: std::process::ChildStdout, wait: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut sink = Vec::new();
            let _ = tx.send(out.read_to_end(&mut sink).is_ok());
        });
        rx.recv_timeout(wait) == Ok(true)
    }

    #[test]
    fn the_relays_of_a_migration_that_did_not_complete_are_stopped() {
        let (relay, out) = stand_in();
        drop(Plumbing {
            ends: Vec::new(),
            relays: vec![relay],
        });
        assert!(
            ends(out, Duration::from_secs(10)),
            "the relay outlived its failed migration"
        );
    }

    #[test]
    fn kept_relays_keep_running() {
        let (relay, out) = stand_in();
        let pid = relay.id();
        Plumbing {
            ends: Vec::new(),
            relays: vec![relay],
        }
        .keep();
        assert!(
            !ends(out, Duration::from_millis(300)),
            "a kept relay was stopped"
        );
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    }
}
