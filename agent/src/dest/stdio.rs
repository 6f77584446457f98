//! Re-plumbing a restored container's pipe stdio: for each `pipe:[N]` among init's fds 0-2 a
//! fresh pipe; CRIU gets the container's end through `inherit_fd`, and a small relay process
//! (`haul stdio-relay`, its own process group, so it outlives `haul serve`) appends what the
//! container writes to `<stdio-dir>/<id>.log`.

use crate::error::{Error, Result};
use rustix::pipe::{pipe_with, PipeFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

pub struct Plumbing {
    /// (key `pipe:[N]`, the container's end, inherited by CRIU).
    pub ends: Vec<(String, OwnedFd)>,
    /// Relay pids (for logs).
    pub relays: Vec<u32>,
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
}

/// Creates the pipes and starts the relays. `pipes` is from `plan::runc::stdio_pipes`.
pub fn plumb(pipes: &[(String, Vec<usize>)], log: &Path) -> Result<Plumbing> {
    let exe = std::env::current_exe().map_err(|e| Error::other(format!("own executable: {e}")))?;
    let mut ends = Vec::new();
    let mut relays = Vec::new();
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
        relays.push(child.id());
        // The relay is not waited for: it runs as long as the container writes. Dropping the
        // handle does not kill it.
        drop(child);
        ends.push((key.clone(), container));
    }
    Ok(Plumbing { ends, relays })
}

/// `haul stdio-relay --log FILE [--hold]`: copies stdin to FILE (appending) until EOF; with
/// `--hold`, keeps stdin (a pipe's write end) open until killed.
pub fn relay(log: &Path, hold: bool) -> Result<()> {
    if hold {
        loop {
            std::thread::park();
        }
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
