//! The socket CRIU's restore hands userfaultfds over (`criu restore --lazy-pages`): it connects
//! to `lazy-pages.socket` in its work directory and sends, per restored task, the task's pid
//! (a native-endian i32, the pid in the images) and then one byte carrying the task's
//! userfaultfd (SCM_RIGHTS); a zombie sends its pid negated and nothing else. When the restore
//! is over it sends `RESTORE_FINISHED` in place of a pid.

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};
use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// The socket's name in the restore's work directory (CRIU's LAZY_PAGES_SOCK_NAME).
pub const SOCKET_NAME: &str = "lazy-pages.socket";
/// "RSTF": the restore is over (CRIU's LAZY_PAGES_RESTORE_FINISHED).
pub const RESTORE_FINISHED: u32 = 0x5253_5446;
/// Descriptors received but not yet matched with their pid: CRIU sends one per task, each
/// right after its pid, so more than a few waiting means a peer that is not CRIU.
const FDS_WAITING_MAX: usize = 8;

/// What the restore said.
#[derive(Debug)]
pub enum Event {
    /// A restored task and its userfaultfd.
    Task { pid: i32, uffd: OwnedFd },
    /// A restored zombie (no memory to fill).
    Zombie(i32),
    /// The restore is over.
    Finished,
}

/// Creates the listening socket in the directory `dir` (bound through `/proc/self/fd`, so the
/// directory's path may be longer than a socket address).
pub fn listen(dir: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    let _ = rustix::fs::unlinkat(dir, SOCKET_NAME, rustix::fs::AtFlags::empty());
    let path = format!("/proc/self/fd/{}/{SOCKET_NAME}", dir.as_raw_fd());
    let addr = SocketAddrUnix::new(path.as_str()).map_err(|e| format!("{path}: {e}"))?;
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    rustix::net::bind(&sock, &addr).map_err(|e| format!("binding {SOCKET_NAME}: {e}"))?;
    rustix::net::listen(&sock, 4).map_err(|e| format!("listen on {SOCKET_NAME}: {e}"))?;
    Ok(sock)
}

/// The restore's connection, read without blocking.
pub struct Link {
    sock: OwnedFd,
    buf: [u8; 64],
    len: usize,
    fds: VecDeque<OwnedFd>,
}

impl Link {
    pub fn new(sock: OwnedFd) -> Link {
        Link {
            sock,
            buf: [0; 64],
            len: 0,
            fds: VecDeque::new(),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Reads what is there and appends the messages it completes to `out`. Ok(true): the
    /// restore closed its end.
    pub fn read(&mut self, out: &mut Vec<Event>) -> Result<bool, String> {
        loop {
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            let Some(free) = self.buf.get_mut(self.len..) else {
                return Err("restore link buffer overrun".into());
            };
            if free.is_empty() {
                return Err("restore link: a message longer than any CRIU sends".into());
            }
            let mut iov = [IoSliceMut::new(free)];
            let r = rustix::net::recvmsg(
                &self.sock,
                &mut iov,
                &mut anc,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            );
            let msg = match r {
                Ok(m) => m,
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(format!("reading the restore's link: {e}")),
            };
            if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                return Err("the restore sent more descriptors than expected".into());
            }
            for m in anc.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    for fd in fds {
                        if self.fds.len() >= FDS_WAITING_MAX {
                            return Err("the restore sent descriptors without pids".into());
                        }
                        self.fds.push_back(fd);
                    }
                }
            }
            if msg.bytes == 0 {
                return Ok(true);
            }
            self.len += msg.bytes;
            self.parse(out)?;
        }
    }

    fn parse(&mut self, out: &mut Vec<Event>) -> Result<(), String> {
        let mut at = 0;
        while at + 4 <= self.len {
            let Some(word) = self.buf.get(at..at + 4) else {
                break;
            };
            let raw = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
            let pid = raw as i32;
            if raw == RESTORE_FINISHED {
                out.push(Event::Finished);
                at += 4;
            } else if pid < 0 {
                out.push(Event::Zombie(pid.saturating_neg()));
                at += 4;
            } else if pid == 0 {
                return Err("the restore sent pid 0".into());
            } else if at + 5 <= self.len {
                // The byte after the pid carries the descriptor.
                let uffd = self.fds.pop_front().ok_or_else(|| {
                    format!("the restore sent task {pid} without its userfaultfd")
                })?;
                out.push(Event::Task { pid, uffd });
                at += 5;
            } else {
                break;
            }
        }
        let at = at.min(self.len);
        self.buf.copy_within(at..self.len, 0);
        self.len -= at;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;

    fn send(sock: &OwnedFd, bytes: &[u8], fd: Option<BorrowedFd<'_>>) {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        let fds;
        if let Some(fd) = fd {
            fds = [fd];
            assert!(anc.push(SendAncillaryMessage::ScmRights(&fds)));
        }
        rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut anc, SendFlags::empty()).unwrap();
    }

    /// CRIU's sequence over a real socket in a directory: two tasks, a zombie, the end.
    #[test]
    fn tasks_zombies_and_the_end_as_criu_sends_them() {
        let dir = crate::inspect::test_support::TempDir::new("restore-link").unwrap();
        let dfd = rustix::fs::open(
            dir.path(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let l = listen(dfd.as_fd()).unwrap();
        let client = std::os::unix::net::UnixStream::connect(dir.path().join(SOCKET_NAME)).unwrap();
        let client = OwnedFd::from(client);
        let conn = rustix::net::accept(&l).unwrap();
        rustix::io::ioctl_fionbio(&conn, true).unwrap();
        let mut link = Link::new(conn);
        let (a, _keep_a) = rustix::pipe::pipe().unwrap();
        let (b, _keep_b) = rustix::pipe::pipe().unwrap();
        let mut ev = Vec::new();
        assert!(!link.read(&mut ev).unwrap());
        assert!(ev.is_empty());
        send(&client, &7i32.to_ne_bytes(), None);
        assert!(!link.read(&mut ev).unwrap());
        assert!(ev.is_empty(), "a pid alone waits for its descriptor");
        send(&client, b"*", Some(a.as_fd()));
        send(&client, &(-9i32).to_ne_bytes(), None);
        send(&client, &12i32.to_ne_bytes(), None);
        send(&client, b"*", Some(b.as_fd()));
        send(&client, &RESTORE_FINISHED.to_ne_bytes(), None);
        drop(client);
        assert!(link.read(&mut ev).unwrap(), "closed");
        let names: Vec<String> = ev
            .iter()
            .map(|e| match e {
                Event::Task { pid, .. } => format!("task {pid}"),
                Event::Zombie(p) => format!("zombie {p}"),
                Event::Finished => "finished".into(),
            })
            .collect();
        assert_eq!(names, ["task 7", "zombie 9", "task 12", "finished"]);
    }

    #[test]
    fn a_pid_without_a_descriptor_is_an_error() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let mut link = Link::new(b);
        send(&a, &[5, 0, 0, 0, b'*'], None);
        let mut ev = Vec::new();
        assert!(link
            .read(&mut ev)
            .unwrap_err()
            .contains("without its userfaultfd"));
    }
}
