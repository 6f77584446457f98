//! The one module allowed `unsafe`: starting a child process that inherits chosen descriptors.
//!
//! Everything else goes through rustix's safe wrappers.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// `fork` + `fcntl(F_SETFD, 0)` on each of `inherit` + `execve`: spawns `cmd` so that exactly
/// the descriptors in `inherit` (besides stdio) survive `exec`, under their current numbers.
///
/// Every descriptor haul opens is close-on-exec (Rust's std and rustix open them so); clearing
/// the flag in the child only, between fork and exec, keeps other threads' spawns from leaking
/// these descriptors.
pub fn spawn_inheriting(cmd: &mut Command, inherit: &[BorrowedFd<'_>]) -> io::Result<Child> {
    let fds: Vec<RawFd> = inherit.iter().map(|fd| fd.as_raw_fd()).collect();
    // SAFETY: the closure runs in the child between fork and exec. It only borrows descriptor
    // numbers that are open in the parent (the caller holds `BorrowedFd`s, so they stay open
    // until `spawn` returns, and fork copies them) and calls `fcntl(F_SETFD)` through rustix,
    // a raw system call that neither allocates nor takes locks, so it is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let borrowed = BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// `fcntl(fd, F_SETFD, FD_CLOEXEC)` on a descriptor number that may not be open.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: the borrow lasts for one fcntl call; if `fd` is not open, fcntl fails with EBADF
    // and nothing else happens.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::process::Stdio;

    #[test]
    fn only_the_chosen_descriptor_is_inherited() {
        let (keep_r, _keep_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let (other_r, _other_w) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let script = format!(
            "test -e /proc/self/fd/{} && ! test -e /proc/self/fd/{}",
            keep_r.as_raw_fd(),
            other_r.as_raw_fd()
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &script]).stdin(Stdio::null());
        let mut child = spawn_inheriting(&mut cmd, &[keep_r.as_fd()]).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "child saw the wrong descriptors");
    }
}
