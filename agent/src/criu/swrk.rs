//! One `criu swrk` process and its SOCK_SEQPACKET socket: spawn, requests, responses,
//! notifications.
//!
//! CRIU sends one protobuf per datagram without a length prefix. haul sizes each response with
//! `recv(MSG_PEEK | MSG_TRUNC)` and refuses one over `CRIU_RESPONSE_MAX` instead of cutting it.

use super::{log_excerpt, req_name, CriuError, Version};
use crate::limits::CRIU_RESPONSE_MAX;
use haul_proto::criu::{CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp};
use prost::Message;
use rustix::net::{
    recv, recvmsg, send, socketpair, AddressFamily, RecvAncillaryBuffer, RecvFlags, ReturnFlags,
    SendFlags, SocketFlags, SocketType,
};
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// PATH given to CRIU (its environment is otherwise empty): CRIU runs `iptables-restore`
/// for the network lock and finds it through PATH.
pub const CRIU_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What CRIU says while a DUMP or RESTORE runs.
#[derive(Debug)]
pub enum Event {
    /// CRIU waits for an answer (`notify_reply`) before it goes on.
    Notify { script: String, pid: i32 },
    /// The request finished (successfully: failures are returned as errors).
    Done(CriuResp),
}

/// Finds criu: `--criu PATH`, else `HAUL_CRIU`, else `criu` on PATH.
pub fn find_criu(flag: Option<&Path>) -> Result<PathBuf, CriuError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("HAUL_CRIU") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| CRIU_PATH_ENV.into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("criu");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(CriuError::NotFound {
        tried: "criu on PATH".into(),
        detail: "not found".into(),
    })
}

pub struct Swrk {
    /// None when the peer is not a child process (tests).
    child: Option<Child>,
    sock: OwnedFd,
    /// Log file of the request in flight, quoted in errors.
    log: Option<PathBuf>,
    /// Request in flight, for messages.
    current: &'static str,
    buf: Vec<u8>,
}

impl Swrk {
    /// Starts `criu swrk FD`. `inherit` are descriptors CRIU uses by number (`ps.fd`,
    /// `inherit_fd[].fd`); `images_dir_fd` and `work_dir_fd` need not be inherited (CRIU opens
    /// them through `/proc/<our pid>/fd/N`) but must stay open until CRIU answers.
    pub fn spawn(criu: &Path, inherit: &[BorrowedFd<'_>]) -> Result<Swrk, CriuError> {
        Swrk::spawn_in(criu, inherit, None)
    }

    /// [`Swrk::spawn`], CRIU running inside the network namespace `netns` if given.
    pub fn spawn_in(
        criu: &Path,
        inherit: &[BorrowedFd<'_>],
        netns: Option<BorrowedFd<'_>>,
    ) -> Result<Swrk, CriuError> {
        // Test builds: `builtin:fake-criu` is a scripted CRIU in a thread of this process.
        #[cfg(test)]
        if let Some(sock) = super::builtin_fake::spawn(criu, inherit)? {
            return Ok(Swrk::from_socket(sock));
        }
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|err| CriuError::Io {
            op: "socketpair",
            err,
        })?;
        let mut cmd = Command::new(criu);
        cmd.arg("swrk")
            .arg(theirs.as_raw_fd().to_string())
            .env_clear()
            .env("PATH", super::tar::criu_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C (SIGINT to the terminal's foreground group) must
            // reach haul, which rolls back through CRIU, not kill CRIU mid-dump (that would
            // leave its network lock in place).
            .process_group(0);
        let mut fds = Vec::with_capacity(inherit.len() + 1);
        fds.push(theirs.as_fd());
        fds.extend_from_slice(inherit);
        let spawned = match netns {
            Some(ns) => crate::sys::spawn_inheriting_in_netns(&mut cmd, &fds, ns),
            None => crate::sys::spawn_inheriting(&mut cmd, &fds),
        };
        let child = spawned.map_err(|e| CriuError::NotFound {
            tried: criu.display().to_string(),
            detail: e.to_string(),
        })?;
        drop(theirs);
        log::debug!("criu swrk started (pid {})", child.id());
        Ok(Swrk {
            child: Some(child),
            sock: ours,
            log: None,
            current: "start",
            buf: Vec::new(),
        })
    }

    /// A session over an already connected socket (a scripted fake CRIU in tests).
    pub fn from_socket(sock: OwnedFd) -> Swrk {
        Swrk {
            child: None,
            sock,
            log: None,
            current: "start",
            buf: Vec::new(),
        }
    }

    /// Sends one request.
    pub fn send(&mut self, req: &CriuReq) -> Result<(), CriuError> {
        if req.r#type != CriuReqType::Notify as i32 {
            self.current = req_name(req.r#type);
        }
        log::debug!("criu <- {}", req_name(req.r#type));
        let bytes = req.encode_to_vec();
        send(&self.sock, &bytes, SendFlags::NOSIGNAL).map_err(|err| {
            if err == rustix::io::Errno::PIPE || err == rustix::io::Errno::CONNRESET {
                self.exited()
            } else {
                CriuError::Io { op: "send", err }
            }
        })?;
        Ok(())
    }

    /// Pid of the CRIU process (None for a test peer).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether CRIU has sent something (or closed the socket) within `timeout`.
    pub fn readable(&self, timeout: Duration) -> bool {
        let Ok(ts) = rustix::event::Timespec::try_from(timeout) else {
            return true;
        };
        let mut fds = [rustix::event::PollFd::new(
            &self.sock,
            rustix::event::PollFlags::IN,
        )];
        !matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(0))
    }

    /// Sets the log file of the request in flight (quoted in errors).
    pub fn set_log(&mut self, path: PathBuf) {
        self.log = Some(path);
    }

    /// Receives one response; a failed one becomes `CriuError::Failed`.
    pub fn recv(&mut self) -> Result<CriuResp, CriuError> {
        let resp = self.recv_raw()?;
        if !resp.success {
            return Err(self.failed(&resp));
        }
        Ok(resp)
    }

    fn recv_raw(&mut self) -> Result<CriuResp, CriuError> {
        // Size the datagram first; an empty read with PEEK|TRUNC returns its full length.
        let (_, len) = loop {
            match recv(
                &self.sock,
                &mut [0u8; 0][..],
                RecvFlags::PEEK | RecvFlags::TRUNC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                // A peer that closed with our requests unread leaves ECONNRESET, not end of file.
                Err(rustix::io::Errno::CONNRESET) => return Err(self.exited()),
                other => break other.map_err(|err| CriuError::Io { op: "recv", err })?,
            }
        };
        if len == 0 {
            return Err(self.exited());
        }
        if len > CRIU_RESPONSE_MAX {
            return Err(CriuError::ResponseTooLarge {
                size: len,
                limit: CRIU_RESPONSE_MAX,
            });
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        // A response may carry one descriptor (orphan-pts-master); it is closed when dropped.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut self.buf)];
        let msg = match recvmsg(&self.sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(msg) => msg,
            Err(rustix::io::Errno::CONNRESET) => return Err(self.exited()),
            Err(err) => return Err(CriuError::Io { op: "recvmsg", err }),
        };
        // Descriptors CRIU attached (orphan-pts-master) are closed: haul never uses them.
        for msg in control.drain() {
            drop(msg);
        }
        if msg.flags.contains(ReturnFlags::TRUNC) || msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(CriuError::BadResponse {
                detail: "datagram or its descriptors were truncated".into(),
            });
        }
        let body = self.buf.get(..msg.bytes).unwrap_or(&[]);
        let resp = CriuResp::decode(body).map_err(|e| CriuError::BadResponse {
            detail: e.to_string(),
        })?;
        log::debug!("criu -> {} success={}", req_name(resp.r#type), resp.success);
        Ok(resp)
    }

    /// Sends `req` and returns its successful response of the same type.
    pub fn call(&mut self, req: &CriuReq) -> Result<CriuResp, CriuError> {
        self.send(req)?;
        let resp = self.recv()?;
        if resp.r#type != req.r#type {
            return Err(CriuError::UnexpectedResponse {
                asked: req_name(req.r#type),
                got: req_name(resp.r#type),
            });
        }
        Ok(resp)
    }

    /// Next event of a DUMP/RESTORE/PRE_DUMP in flight.
    pub fn next_event(&mut self) -> Result<Event, CriuError> {
        let resp = self.recv()?;
        if resp.r#type == CriuReqType::Notify as i32 {
            let n = resp.notify.unwrap_or_default();
            let script = n.script.unwrap_or_default();
            log::debug!("criu notify {script}");
            return Ok(Event::Notify {
                script,
                pid: n.pid.unwrap_or(0),
            });
        }
        Ok(Event::Done(resp))
    }

    /// Answers the notification CRIU waits on.
    pub fn notify_reply(&mut self, success: bool) -> Result<(), CriuError> {
        self.send(&CriuReq {
            r#type: CriuReqType::Notify as i32,
            notify_success: Some(success),
            ..Default::default()
        })
    }

    /// VERSION.
    pub fn version(&mut self) -> Result<Version, CriuError> {
        let resp = self.call(&CriuReq {
            r#type: CriuReqType::Version as i32,
            keep_open: Some(true),
            ..Default::default()
        })?;
        resp.version
            .as_ref()
            .map(Version::from_proto)
            .ok_or_else(|| CriuError::BadResponse {
                detail: "VERSION response without a version".into(),
            })
    }

    /// FEATURE_CHECK for memory tracking and lazy pages.
    pub fn features(&mut self) -> Result<CriuFeatures, CriuError> {
        let resp = self.call(&CriuReq {
            r#type: CriuReqType::FeatureCheck as i32,
            keep_open: Some(true),
            features: Some(CriuFeatures {
                mem_track: Some(true),
                lazy_pages: Some(true),
                pidfd_store: None,
            }),
            ..Default::default()
        })?;
        Ok(resp.features.unwrap_or_default())
    }

    /// A request with options, logging into `log_name` in the images/work directory `dir`.
    pub fn request(kind: CriuReqType, opts: CriuOpts) -> CriuReq {
        CriuReq {
            r#type: kind as i32,
            opts: Some(opts),
            ..Default::default()
        }
    }

    fn failed(&mut self, resp: &CriuResp) -> CriuError {
        let errors = self
            .log
            .as_deref()
            .map(log_excerpt::error_lines)
            .unwrap_or_default();
        CriuError::Failed {
            request: if resp.r#type == CriuReqType::Empty as i32 {
                self.current
            } else {
                req_name(resp.r#type)
            },
            errno: resp.cr_errno,
            // CRIU reports its first logged error, which on some kernels is the harmless
            // RLIMIT_NOFILE one; the log's error lines say more then.
            errmsg: resp
                .cr_errmsg
                .clone()
                .filter(|m| !log_excerpt::is_harmless(m)),
            log: self.log.clone(),
            errors,
        }
    }

    fn exited(&mut self) -> CriuError {
        let status = self.wait_briefly(Duration::from_millis(500));
        let errors = self
            .log
            .as_deref()
            .map(log_excerpt::error_lines)
            .unwrap_or_default();
        CriuError::Exited {
            during: self.current,
            status,
            log: self.log.clone(),
            errors,
        }
    }

    fn wait_briefly(&mut self, limit: Duration) -> String {
        let start = Instant::now();
        let Some(child) = self.child.as_mut() else {
            return "peer closed the socket".into();
        };
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return st.to_string(),
                Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => return "still running".into(),
                Err(e) => return e.to_string(),
            }
        }
    }

    /// Waits for CRIU to exit (after DUMP or RESTORE it exits by itself).
    pub fn finish(mut self) {
        // After a large dump CRIU may clean up for seconds; it is not killed for that.
        let _ = self.wait_briefly(Duration::from_secs(60));
    }
}

impl Drop for Swrk {
    /// Closing the socket makes CRIU treat any pending notification as failed (a frozen dump
    /// resumes its tasks, a held restore kills them); then CRIU is reaped, or killed if it
    /// lingers.
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Both);
        let _ = self.wait_briefly(Duration::from_secs(10));
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                log::warn!("criu (pid {}) did not exit; killing it", child.id());
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
