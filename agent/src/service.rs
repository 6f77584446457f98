//! What `haul serve` offers an init system: the listening socket (bound here, or inherited with
//! `--fd N` or systemd's `LISTEN_FDS`), the pid file, and stop/reload signals turned into
//! requests the accept loop reads from a pipe.

use crate::sys;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketType};
use rustix::process::Signal;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The first descriptor systemd passes with socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The listening socket for `--listen ADDR` or `--fd N` (exactly one); without either, the one
/// socket systemd passed with `LISTEN_FDS=1` to this pid. Errors are for the operator (exit 2).
pub fn listener(listen: Option<&str>, fd: Option<u32>) -> Result<TcpListener, String> {
    let n = match (listen, fd) {
        (Some(_), Some(_)) => {
            return Err("give either --listen ADDR:PORT or --fd N, not both".into())
        }
        (Some(addr), None) => {
            return TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
        }
        (None, Some(n)) => {
            RawFd::try_from(n).map_err(|_| format!("--fd {n}: not a descriptor number"))?
        }
        (None, None) => systemd_fd(
            std::env::var("LISTEN_PID").ok().as_deref(),
            std::env::var("LISTEN_FDS").ok().as_deref(),
            std::process::id(),
        )?
        .ok_or("give --listen ADDR:PORT, or --fd N for an inherited listening socket")?,
    };
    let owned =
        sys::adopt_fd(n, |fd| check_listening_tcp(fd, n)).map_err(|e| format!("--fd {n}: {e}"))?;
    Ok(TcpListener::from(owned))
}

/// The descriptor of systemd socket activation: `LISTEN_PID` must be this process (the variables
/// are inherited by children it did not mean them for) and `LISTEN_FDS` must be 1.
///
/// Sample environment: `LISTEN_PID=812 LISTEN_FDS=1 LISTEN_FDNAMES=haul.socket`.
fn systemd_fd(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    our_pid: u32,
) -> Result<Option<RawFd>, String> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(our_pid) {
        return Ok(None);
    }
    match fds.trim().parse::<u32>() {
        Ok(0) => Ok(None),
        Ok(1) => Ok(Some(LISTEN_FDS_START)),
        Ok(k) => Err(format!(
            "systemd passed {k} sockets (LISTEN_FDS={k}); haul serve uses one: pass --fd N"
        )),
        Err(_) => Err(format!("LISTEN_FDS={fds:?} is not a number")),
    }
}

/// `getsockopt(SO_TYPE, SO_DOMAIN, SO_ACCEPTCONN)`: the descriptor must be a TCP socket (IPv4 or
/// IPv6) on which `listen` was called.
fn check_listening_tcp(fd: BorrowedFd<'_>, n: RawFd) -> Result<(), String> {
    let ty = rustix::net::sockopt::socket_type(fd).map_err(|e| match e {
        rustix::io::Errno::NOTSOCK => format!("descriptor {n} is not a socket"),
        e => format!("descriptor {n}: {e}"),
    })?;
    let domain = rustix::net::sockopt::socket_domain(fd).map_err(|e| e.to_string())?;
    if ty != SocketType::STREAM || (domain != AddressFamily::INET && domain != AddressFamily::INET6)
    {
        return Err(format!("descriptor {n} is a socket but not a TCP socket"));
    }
    if !rustix::net::sockopt::socket_acceptconn(fd).map_err(|e| e.to_string())? {
        return Err(format!(
            "descriptor {n} is a TCP socket that is not listening (with systemd: a .socket unit \
             with ListenStream= and Accept=no)"
        ));
    }
    Ok(())
}

/// The pid file: written once haul listens, removed when dropped.
pub struct PidFile {
    path: PathBuf,
    content: String,
}

impl PidFile {
    /// Writes `PID\n` to a temporary file next to `path` and renames it over `path`, so a reader
    /// never sees a partial file.
    pub fn write(path: &Path) -> Result<PidFile, String> {
        let content = format!("{}\n", std::process::id());
        let name = path
            .file_name()
            .ok_or_else(|| format!("pid file {}: not a file name", path.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let written = std::fs::write(&tmp, &content).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot write pid file {}: {e}", path.display()));
        }
        Ok(PidFile {
            path: path.to_path_buf(),
            content,
        })
    }
}

impl Drop for PidFile {
    /// Removes the file if it still holds this pid (a newer instance may have taken it over).
    fn drop(&mut self) {
        match std::fs::read_to_string(&self.path) {
            Ok(c) if c == self.content => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("cannot remove pid file {}: {e}", self.path.display());
                }
            }
            Ok(_) => log::warn!(
                "pid file {} now names another process; left in place",
                self.path.display()
            ),
            Err(e) => log::warn!("pid file {}: {e}", self.path.display()),
        }
    }
}

/// What a signal asks of the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM or SIGINT: stop accepting, let migrations in flight end, exit.
    Stop(&'static str),
    /// SIGHUP: read the key file again.
    Reload,
}

/// The signals `haul serve` handles.
const HANDLED: [Signal; 3] = [Signal::TERM, Signal::INT, Signal::HUP];

/// Signal numbers (each below 64, so one byte) arrive on a pipe: the accept loop polls it with
/// the listener, so it needs neither signal handlers nor a periodic wake-up.
pub struct Signals {
    rx: OwnedFd,
}

impl Signals {
    /// Blocks SIGTERM, SIGINT and SIGHUP in this thread and every thread it starts later (call
    /// it before starting any), then starts a thread that takes them with `sigwait` and writes
    /// their numbers to the pipe. Blocked and taken this way, they never interrupt a system
    /// call of another thread (a CRIU exchange, a page copy).
    pub fn start() -> std::io::Result<Signals> {
        let set = sys::SignalSet::new(&HANDLED)?;
        sys::block_signals(&set)?;
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        std::thread::Builder::new()
            .name("haul-signals".into())
            .spawn(move || loop {
                let sig = match sys::wait_signal(&set) {
                    Ok(s) => s,
                    Err(e) => {
                        log::error!("waiting for signals failed: {e}; only SIGKILL stops haul now");
                        return;
                    }
                };
                let byte = encode(sig);
                // Fails (EPIPE) only once the accept loop has gone: nothing left to tell.
                if rustix::io::write(&tx, &[byte]).is_err() {
                    return;
                }
            })?;
        Ok(Signals { rx })
    }

    /// Requests come from whoever holds the write end of this pipe (tests).
    pub fn from_pipe(rx: OwnedFd) -> Signals {
        Signals { rx }
    }

    /// Waits up to `timeout` (forever with `None`) for requests, then returns those queued.
    pub fn wait(&self, timeout: Option<Duration>) -> std::io::Result<Vec<Request>> {
        let ts = timeout
            .map(Timespec::try_from)
            .transpose()
            .map_err(std::io::Error::other)?;
        let mut fds = [PollFd::new(&self.rx, PollFlags::IN)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(0) | Err(rustix::io::Errno::INTR) => Ok(Vec::new()),
            Ok(_) => self.read(),
            Err(e) => Err(e.into()),
        }
    }

    /// The requests queued now; call it when the pipe is readable.
    pub fn read(&self) -> std::io::Result<Vec<Request>> {
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&self.rx, &mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("the signal thread has stopped"));
        }
        Ok(buf.iter().take(n).filter_map(|&b| decode(b)).collect())
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

/// The request for a signal number read from the pipe.
pub fn decode(byte: u8) -> Option<Request> {
    match Signal::from_named_raw(i32::from(byte))? {
        Signal::TERM => Some(Request::Stop("SIGTERM")),
        Signal::INT => Some(Request::Stop("SIGINT")),
        Signal::HUP => Some(Request::Reload),
        _ => None,
    }
}

/// The byte the signal thread writes for `sig`.
pub fn encode(sig: Signal) -> u8 {
    u8::try_from(sig.as_raw()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn systemd_activation_needs_our_pid_and_one_socket() {
        assert_eq!(systemd_fd(None, None, 10), Ok(None));
        assert_eq!(systemd_fd(Some("10"), Some("1"), 10), Ok(Some(3)));
        // Inherited from a parent that was activated, not meant for us.
        assert_eq!(systemd_fd(Some("9"), Some("1"), 10), Ok(None));
        assert_eq!(systemd_fd(Some("10"), Some("0"), 10), Ok(None));
        let err = systemd_fd(Some("10"), Some("2"), 10).unwrap_err();
        assert!(err.contains("pass --fd N"), "{err}");
        assert!(systemd_fd(Some("10"), Some("x"), 10).is_err());
    }

    #[test]
    fn listen_and_fd_exclude_each_other() {
        let err = listener(Some("127.0.0.1:0"), Some(3)).unwrap_err();
        assert!(err.contains("not both"), "{err}");
        let l = listener(Some("127.0.0.1:0"), None).unwrap();
        assert!(l.local_addr().unwrap().port() > 0);
    }

    #[test]
    fn only_a_listening_tcp_socket_is_accepted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let n = l.as_raw_fd();
        assert_eq!(check_listening_tcp(l.as_fd(), n), Ok(()));

        let connected = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let err = check_listening_tcp(connected.as_fd(), 7).unwrap_err();
        assert!(
            err.contains("descriptor 7 is a TCP socket that is not listening"),
            "{err}"
        );

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = check_listening_tcp(udp.as_fd(), 7).unwrap_err();
        assert!(err.contains("not a TCP socket"), "{err}");

        let (unix, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = check_listening_tcp(unix.as_fd(), 7).unwrap_err();
        assert!(err.contains("not a TCP socket"), "{err}");

        let (r, _w) = rustix::pipe::pipe().unwrap();
        let err = check_listening_tcp(r.as_fd(), 7).unwrap_err();
        assert_eq!(err, "descriptor 7 is not a socket");
    }

    #[test]
    fn a_rejected_descriptor_stays_open() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let n = u32::try_from(udp.as_raw_fd()).unwrap();
        let err = listener(None, Some(n)).unwrap_err();
        assert!(err.starts_with(&format!("--fd {n}: ")), "{err}");
        assert!(udp.local_addr().is_ok());
    }

    #[test]
    fn pid_file_is_written_whole_and_removed_when_ours() {
        let dir = std::env::temp_dir().join(format!("haul-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("haul.pid");
        let pf = PidFile::write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        // Only the pid file: the temporary name is gone.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        drop(pf);
        assert!(!path.exists());

        // Taken over by another process: left alone.
        let pf = PidFile::write(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pf);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        std::fs::remove_dir_all(&dir).unwrap();

        let err = PidFile::write(&dir.join("missing/haul.pid")).err().unwrap();
        assert!(err.starts_with("cannot write pid file"), "{err}");
    }

    #[test]
    fn signal_bytes_decode_to_requests() {
        assert_eq!(decode(encode(Signal::TERM)), Some(Request::Stop("SIGTERM")));
        assert_eq!(decode(encode(Signal::INT)), Some(Request::Stop("SIGINT")));
        assert_eq!(decode(encode(Signal::HUP)), Some(Request::Reload));
        assert_eq!(decode(encode(Signal::USR1)), None);
        assert_eq!(decode(0), None);
    }

    #[test]
    fn requests_arrive_through_the_pipe() {
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let s = Signals::from_pipe(rx);
        assert!(s.wait(Some(Duration::from_millis(10))).unwrap().is_empty());
        rustix::io::write(&tx, &[encode(Signal::HUP), encode(Signal::TERM)]).unwrap();
        assert_eq!(
            s.wait(None).unwrap(),
            vec![Request::Reload, Request::Stop("SIGTERM")]
        );
        drop(tx);
        assert!(s.wait(None).is_err());
    }
}
