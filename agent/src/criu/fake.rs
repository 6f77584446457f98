//! A scripted fake CRIU on the other end of a SOCK_SEQPACKET socketpair, and the driver's tests
//! against it: no root, no criu binary, no external programs (they also run under qemu-user).
//!
//! The fake plays `criu swrk`'s side of the protocol: it reads one request per datagram, checks
//! it against the script, and answers with what the script says, including bytes no real CRIU
//! would send. Every request it read is recorded (decoded and raw) for the test to inspect.

use super::{CriuError, Event, Swrk};
use crate::limits::CRIU_RESPONSE_MAX;
use haul_proto::criu::{CriuReq, CriuReqType, CriuResp};
use prost::Message;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::sockopt::{
    set_socket_send_buffer_size, set_socket_timeout, socket_send_buffer_size, Timeout,
};
use rustix::net::{
    recv, sendmsg, socketpair, AddressFamily, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketFlags, SocketType,
};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long either side waits for the other before the test fails instead of hanging.
const STALL: Duration = Duration::from_secs(10);

/// Requests are small (a DUMP with every option is a few KiB); a bigger one is a driver bug.
const REQUEST_MAX: usize = 64 * 1024;

/// Linux refuses a datagram larger than the sender's SO_SNDBUF minus this much overhead
/// (net/unix/af_unix.c, `unix_dgram_sendmsg`).
const SNDBUF_OVERHEAD: usize = 32;

/// A check on a request: `Err` explains what is wrong with it.
pub type Check = Box<dyn Fn(&CriuReq) -> Result<(), String> + Send>;

/// One step of the fake's script, run in order.
pub enum Step {
    /// Read one request; it must have this type and pass the check.
    Expect(CriuReqType, Option<Check>),
    /// Send this response.
    Reply(CriuResp),
    /// Send this response with descriptors attached (SCM_RIGHTS), as CRIU does for
    /// orphan-pts-master.
    ReplyWithFds(CriuResp, Vec<OwnedFd>),
    /// Send these bytes as one datagram (garbage, oversized, empty ...).
    ReplyRaw(Vec<u8>),
    /// Close the socket, as a CRIU that exits or crashes does.
    Close,
    /// Wait until the driver's next request has arrived, then close without reading it: a CRIU
    /// that dies with a request still queued.
    CloseUnread,
}

impl Step {
    pub fn expect(kind: CriuReqType) -> Step {
        Step::Expect(kind, None)
    }

    pub fn expect_that(
        kind: CriuReqType,
        check: impl Fn(&CriuReq) -> Result<(), String> + Send + 'static,
    ) -> Step {
        Step::Expect(kind, Some(Box::new(check)))
    }
}

/// A request the fake read, decoded and as it was on the wire.
#[derive(Debug)]
pub struct Received {
    pub req: CriuReq,
    pub raw: Vec<u8>,
}

/// What the fake saw: the requests it read and, if the script broke, why.
#[derive(Debug)]
pub struct Report {
    pub received: Vec<Received>,
    pub failure: Option<String>,
}

pub struct FakeCriu {
    thread: JoinHandle<Report>,
    closed: mpsc::Receiver<()>,
}

impl FakeCriu {
    /// Starts the fake on one end of a new socketpair and returns a driver session on the other.
    pub fn start(script: Vec<Step>) -> (Swrk, FakeCriu) {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        // A driver waiting for an answer the script never sends fails with EAGAIN.
        set_socket_timeout(&ours, Timeout::Recv, Some(STALL)).expect("SO_RCVTIMEO");
        set_socket_timeout(&theirs, Timeout::Recv, Some(STALL)).expect("SO_RCVTIMEO");
        let (closed_tx, closed) = mpsc::channel();
        let thread = std::thread::spawn(move || run(theirs, script, &closed_tx));
        (Swrk::from_socket(ours), FakeCriu { thread, closed })
    }

    /// Blocks until the script has run a `Close` or `CloseUnread` step.
    pub fn wait_closed(&self) {
        self.closed
            .recv_timeout(STALL)
            .expect("the fake did not close its socket");
    }

    /// Ends the session (the driver's socket closes first, so the fake sees the end) and
    /// returns what the fake saw.
    pub fn report(self, swrk: Swrk) -> Report {
        drop(swrk);
        self.thread.join().expect("fake CRIU thread panicked")
    }

    /// Like `report`, but the script must have run to its end without a failure.
    pub fn finish(self, swrk: Swrk) -> Vec<Received> {
        let report = self.report(swrk);
        if let Some(f) = report.failure {
            panic!("fake CRIU: {f}\nrequests received: {:#?}", report.received);
        }
        report.received
    }
}

fn run(sock: OwnedFd, script: Vec<Step>, closed: &mpsc::Sender<()>) -> Report {
    let mut received = Vec::new();
    let failure = play(sock, script, closed, &mut received).err();
    Report { received, failure }
}

fn play(
    sock: OwnedFd,
    script: Vec<Step>,
    closed: &mpsc::Sender<()>,
    received: &mut Vec<Received>,
) -> Result<(), String> {
    let mut sock = Some(sock);
    for (i, step) in script.into_iter().enumerate() {
        let fd = sock
            .as_ref()
            .ok_or_else(|| format!("step {i} comes after the socket was closed"))?;
        match step {
            Step::Expect(kind, check) => {
                let raw = read_datagram(fd)?.ok_or_else(|| {
                    format!("step {i}: the driver closed the socket instead of sending {kind:?}")
                })?;
                let req = CriuReq::decode(raw.as_slice())
                    .map_err(|e| format!("step {i}: undecodable request: {e}"))?;
                received.push(Received {
                    req: req.clone(),
                    raw,
                });
                if req.r#type != kind as i32 {
                    return Err(format!(
                        "step {i}: expected a {kind:?} request, got type {}",
                        req.r#type
                    ));
                }
                if let Some(check) = check {
                    check(&req).map_err(|e| format!("step {i} ({kind:?}): {e}"))?;
                }
            }
            Step::Reply(resp) => send_datagram(fd, &resp.encode_to_vec(), &[])
                .map_err(|e| format!("step {i}: {e}"))?,
            Step::ReplyWithFds(resp, fds) => send_datagram(fd, &resp.encode_to_vec(), &fds)
                .map_err(|e| format!("step {i}: {e}"))?,
            Step::ReplyRaw(bytes) => {
                send_datagram(fd, &bytes, &[]).map_err(|e| format!("step {i}: {e}"))?
            }
            Step::Close => {
                sock = None;
                let _ = closed.send(());
            }
            Step::CloseUnread => {
                let mut fds = [PollFd::new(fd, PollFlags::IN)];
                let timeout = Timespec::try_from(STALL).map_err(|e| e.to_string())?;
                match poll(&mut fds, Some(&timeout)) {
                    Ok(1) => {}
                    other => return Err(format!("step {i}: no request arrived: {other:?}")),
                }
                sock = None;
                let _ = closed.send(());
            }
        }
    }
    // The script is over: the driver must not send anything more, only close its end.
    if let Some(fd) = sock {
        match read_datagram(&fd) {
            Ok(None) => {}
            Ok(Some(raw)) => {
                let req = CriuReq::decode(raw.as_slice()).unwrap_or_default();
                let t = req.r#type;
                received.push(Received { req, raw });
                return Err(format!(
                    "the driver sent a request of type {t} after the script ended"
                ));
            }
            Err(e) => return Err(format!("after the script: {e}")),
        }
    }
    Ok(())
}

/// One datagram, or `None` when the driver has closed its end.
fn read_datagram(fd: &OwnedFd) -> Result<Option<Vec<u8>>, String> {
    let mut buf = vec![0u8; REQUEST_MAX];
    match recv(fd, &mut buf[..], RecvFlags::TRUNC) {
        Ok((_, 0)) => Ok(None),
        // The driver closed with a response of ours still unread in its queue.
        Err(Errno::CONNRESET) => Ok(None),
        Ok((_, total)) if total > REQUEST_MAX => Err(format!(
            "request of {total} bytes (the fake reads at most {REQUEST_MAX})"
        )),
        Ok((n, _)) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(e) => Err(format!("recv: {e} (did the driver stop sending?)")),
    }
}

fn send_datagram(fd: &OwnedFd, bytes: &[u8], fds: &[OwnedFd]) -> Result<(), String> {
    let need = bytes.len() + SNDBUF_OVERHEAD;
    if socket_send_buffer_size(fd).map_err(|e| e.to_string())? < need {
        // The kernel doubles the value asked for and caps it at net.core.wmem_max.
        set_socket_send_buffer_size(fd, need).map_err(|e| format!("SO_SNDBUF: {e}"))?;
        let got = socket_send_buffer_size(fd).map_err(|e| e.to_string())?;
        if got < need {
            return Err(format!(
                "cannot send a {}-byte datagram without privileges: SO_SNDBUF is {got} bytes; \
                 raise net.core.wmem_max to at least {need}",
                bytes.len()
            ));
        }
    }
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err("ancillary buffer too small".into());
    }
    let sent = sendmsg(
        fd,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(|e| format!("send of {} bytes: {e}", bytes.len()))?;
    if sent != bytes.len() {
        return Err(format!("sent {sent} of {} bytes", bytes.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::Version;
    use haul_proto::criu::{CriuFeatures, CriuNotify, CriuOpts, CriuVersion};
    use std::path::PathBuf;

    const EBADRQC: i32 = 56;

    fn ok(kind: CriuReqType) -> CriuResp {
        CriuResp {
            r#type: kind as i32,
            success: true,
            ..Default::default()
        }
    }

    fn notify(script: &str, pid: Option<i32>) -> CriuResp {
        CriuResp {
            notify: Some(CriuNotify {
                script: Some(script.into()),
                pid,
            }),
            ..ok(CriuReqType::Notify)
        }
    }

    fn version_resp(name: Option<String>) -> CriuResp {
        CriuResp {
            version: Some(CriuVersion {
                major_number: 4,
                minor_number: 1,
                sublevel: Some(1),
                gitid: None,
                extra: None,
                name,
            }),
            ..ok(CriuReqType::Version)
        }
    }

    /// A valid VERSION response (4.1.1) padded through `version.name` to exactly `len` bytes.
    fn version_resp_of_len(len: usize) -> Vec<u8> {
        let mut n = len - version_resp(None).encoded_len() - 16;
        loop {
            let bytes = version_resp(Some("x".repeat(n))).encode_to_vec();
            if bytes.len() >= len {
                assert_eq!(
                    bytes.len(),
                    len,
                    "cannot pad a VERSION response to {len} bytes"
                );
                return bytes;
            }
            n += 1;
        }
    }

    fn dump_request() -> CriuReq {
        Swrk::request(
            CriuReqType::Dump,
            CriuOpts {
                pid: Some(4242),
                notify_scripts: Some(true),
                log_file: Some("dump.log".into()),
                ..Default::default()
            },
        )
    }

    /// Runs `script` against a driver that asks VERSION, and returns the driver's result.
    fn version_against(script: Vec<Step>) -> Result<Version, CriuError> {
        let (mut swrk, fake) = FakeCriu::start(script);
        let result = swrk.version();
        fake.finish(swrk);
        result
    }

    /// A log file in the temporary directory, removed when dropped.
    struct TempLog(PathBuf);

    impl TempLog {
        fn new(name: &str, text: &str) -> TempLog {
            let path = std::env::temp_dir()
                .join(format!("haul-fake-criu-{name}-{}.log", std::process::id()));
            std::fs::write(&path, text).expect("write log");
            TempLog(path)
        }
    }

    impl Drop for TempLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn version_round_trip() {
        let (mut swrk, fake) = FakeCriu::start(vec![
            Step::expect_that(CriuReqType::Version, |r| match r.keep_open {
                Some(true) => Ok(()),
                other => Err(format!(
                    "keep_open is {other:?}; swrk would exit after answering"
                )),
            }),
            Step::Reply(version_resp(None)),
        ]);
        let v = swrk.version().expect("version");
        let got = fake.finish(swrk);
        assert_eq!(
            v,
            Version {
                major: 4,
                minor: 1,
                sublevel: 1
            }
        );
        assert_eq!(v.to_string(), "4.1.1");
        assert_eq!(got.len(), 1);
        assert!(got[0].req.opts.is_none(), "VERSION needs no options");
    }

    #[test]
    fn feature_check_propagates_each_answer() {
        let (mut swrk, fake) = FakeCriu::start(vec![
            Step::expect_that(CriuReqType::FeatureCheck, |r| {
                let f = r.features.ok_or("no features asked")?;
                if r.keep_open != Some(true) {
                    return Err("keep_open not set".into());
                }
                if f.mem_track == Some(true) && f.lazy_pages == Some(true) {
                    Ok(())
                } else {
                    Err(format!("asked for {f:?}"))
                }
            }),
            Step::Reply(CriuResp {
                features: Some(CriuFeatures {
                    mem_track: Some(false),
                    lazy_pages: Some(true),
                    pidfd_store: None,
                }),
                ..ok(CriuReqType::FeatureCheck)
            }),
        ]);
        let f = swrk.features().expect("features");
        fake.finish(swrk);
        assert_eq!(f.mem_track, Some(false));
        assert_eq!(f.lazy_pages, Some(true));
    }

    #[test]
    fn dump_notifications_arrive_in_order_and_each_gets_its_answer() {
        let no_options = |r: &CriuReq| match (&r.opts, r.keep_open) {
            (None, None) => Ok(()),
            _ => Err(format!(
                "a NOTIFY answer carries options or keep_open: {r:?}"
            )),
        };
        let (mut swrk, fake) = FakeCriu::start(vec![
            Step::expect(CriuReqType::Dump),
            Step::Reply(notify("pre-dump", None)),
            Step::expect_that(CriuReqType::Notify, no_options),
            Step::Reply(notify("network-lock", Some(4242))),
            Step::expect_that(CriuReqType::Notify, no_options),
            Step::Reply(notify("post-dump", None)),
            Step::expect_that(CriuReqType::Notify, no_options),
            Step::Reply(ok(CriuReqType::Dump)),
            Step::Close,
        ]);
        swrk.send(&dump_request()).expect("send DUMP");
        let mut answers = [true, true, false].into_iter();
        let mut seen = Vec::new();
        let done = loop {
            match swrk.next_event().expect("event") {
                Event::Notify { script, pid } => {
                    seen.push((script, pid));
                    swrk.notify_reply(answers.next().expect("more notifications than answers"))
                        .expect("notify reply");
                }
                Event::Done(resp) => break resp,
            }
        };
        let got = fake.finish(swrk);
        assert_eq!(
            seen,
            [
                ("pre-dump".to_string(), 0),
                ("network-lock".to_string(), 4242),
                ("post-dump".to_string(), 0)
            ]
        );
        assert_eq!(done.r#type, CriuReqType::Dump as i32);
        let sequence: Vec<_> = got
            .iter()
            .map(|r| (r.req.r#type, r.req.notify_success))
            .collect();
        let notify = CriuReqType::Notify as i32;
        assert_eq!(
            sequence,
            [
                (CriuReqType::Dump as i32, None),
                (notify, Some(true)),
                (notify, Some(true)),
                (notify, Some(false)),
            ]
        );
        assert_eq!(got[0].req.opts.as_ref().and_then(|o| o.pid), Some(4242));
    }

    #[test]
    fn failed_dump_names_the_request_errno_message_and_log_errors() {
        let log = TempLog::new(
            "failed-dump",
            "(00.000010) Error (criu/util.c:123): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
             (00.001000) Dumping task 4242\n\
             (00.002000) Error (criu/cr-service.c:421): Bad options: images_dir_fd is -1\n",
        );
        let (mut swrk, fake) = FakeCriu::start(vec![
            Step::expect(CriuReqType::Dump),
            Step::Reply(CriuResp {
                success: false,
                cr_errno: Some(EBADRQC),
                cr_errmsg: Some("bad options".into()),
                ..ok(CriuReqType::Dump)
            }),
            Step::Close,
        ]);
        swrk.set_log(log.0.clone());
        swrk.send(&dump_request()).expect("send DUMP");
        let err = swrk.next_event().expect_err("a failed DUMP is an error");
        fake.finish(swrk);
        let text = err.to_string();
        match &err {
            CriuError::Failed {
                request,
                errno,
                errmsg,
                log: l,
                errors,
            } => {
                assert_eq!(*request, "DUMP");
                assert_eq!(*errno, Some(EBADRQC));
                assert_eq!(errmsg.as_deref(), Some("bad options"));
                assert_eq!(l.as_deref(), Some(log.0.as_path()));
                assert_eq!(errors.len(), 1, "{errors:?}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(
            text.starts_with("criu DUMP failed: bad options (errno 56"),
            "{text}"
        );
        assert!(text.contains(&log.0.display().to_string()), "{text}");
        assert!(text.contains("Bad options: images_dir_fd is -1"), "{text}");
        assert!(!text.contains("RLIMIT_NOFILE"), "{text}");
    }

    #[test]
    fn failed_dump_without_a_log_says_so_plainly() {
        let (mut swrk, fake) = FakeCriu::start(vec![
            Step::expect(CriuReqType::Dump),
            Step::Reply(CriuResp {
                success: false,
                cr_errno: Some(EBADRQC),
                ..ok(CriuReqType::Dump)
            }),
        ]);
        swrk.send(&dump_request()).expect("send DUMP");
        let err = swrk.next_event().expect_err("a failed DUMP is an error");
        fake.finish(swrk);
        let text = err.to_string();
        assert!(text.starts_with("criu DUMP failed (errno 56"), "{text}");
        assert!(!text.contains("CRIU log"), "{text}");
    }

    #[test]
    fn an_empty_typed_failure_names_the_request_in_flight() {
        // After PRE_DUMP, swrk answers anything but PRE_DUMP/DUMP with an EMPTY-typed error.
        let (mut swrk, fake) = FakeCriu::start(vec![
            Step::expect(CriuReqType::Restore),
            Step::Reply(CriuResp {
                success: false,
                cr_errmsg: Some("Bad req seq".into()),
                ..ok(CriuReqType::Empty)
            }),
        ]);
        let err = swrk
            .call(&Swrk::request(CriuReqType::Restore, CriuOpts::default()))
            .expect_err("failure");
        fake.finish(swrk);
        assert!(
            matches!(
                err,
                CriuError::Failed {
                    request: "RESTORE",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_response_one_byte_over_the_limit_is_refused() {
        let err = version_against(vec![
            Step::expect(CriuReqType::Version),
            Step::ReplyRaw(version_resp_of_len(CRIU_RESPONSE_MAX + 1)),
        ])
        .expect_err("over the limit");
        assert!(
            matches!(err, CriuError::ResponseTooLarge { size, limit }
                if size == CRIU_RESPONSE_MAX + 1 && limit == CRIU_RESPONSE_MAX),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_bytes_exactly_at_the_limit_are_read_and_rejected_as_undecodable() {
        // Zero bytes: a field key of 0 is invalid protobuf.
        let err = version_against(vec![
            Step::expect(CriuReqType::Version),
            Step::ReplyRaw(vec![0u8; CRIU_RESPONSE_MAX]),
        ])
        .expect_err("invalid");
        assert!(matches!(err, CriuError::BadResponse { .. }), "{err:?}");
    }

    #[test]
    fn a_valid_response_exactly_at_the_limit_is_read_whole() {
        // Decoding succeeds only if none of the bytes was cut off.
        let v = version_against(vec![
            Step::expect(CriuReqType::Version),
            Step::ReplyRaw(version_resp_of_len(CRIU_RESPONSE_MAX)),
        ])
        .expect("a response of exactly the limit is accepted");
        assert_eq!(v.to_string(), "4.1.1");
    }

    #[test]
    fn garbage_is_a_bad_response() {
        let cases: [&[u8]; 4] = [
            &[0xff; 16],                  // a varint longer than ten bytes
            &[0x08],                      // field 1 (type) without its value
            &[0x52, 0x10, 0x08],          // field 10 (version) claiming 16 bytes, having 1
            b"criu: unknown command\n\0", // text, not protobuf
        ];
        for bytes in cases {
            let err = version_against(vec![
                Step::expect(CriuReqType::Version),
                Step::ReplyRaw(bytes.to_vec()),
            ])
            .expect_err("garbage");
            assert!(
                matches!(err, CriuError::BadResponse { .. }),
                "{bytes:?}: {err:?}"
            );
        }
    }

    #[test]
    fn the_peer_closing_mid_dump_is_exited_during_dump() {
        let log = TempLog::new(
            "closed-mid-dump",
            "(00.002000) Error (criu/cr-dump.c:2100): Dumping FAILED.\n",
        );
        let (mut swrk, fake) = FakeCriu::start(vec![
            Step::expect(CriuReqType::Dump),
            Step::Reply(notify("pre-dump", None)),
            Step::expect(CriuReqType::Notify),
            Step::Close,
        ]);
        swrk.set_log(log.0.clone());
        swrk.send(&dump_request()).expect("send DUMP");
        assert!(matches!(swrk.next_event(), Ok(Event::Notify { .. })));
        swrk.notify_reply(true).expect("notify reply");
        let err = swrk.next_event().expect_err("peer closed");
        fake.finish(swrk);
        assert!(
            matches!(err, CriuError::Exited { during: "DUMP", .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("exited during DUMP"), "{text}");
        assert!(text.contains("Dumping FAILED."), "{text}");
    }

    #[test]
    fn the_peer_dying_with_our_answer_unread_is_exited_not_an_io_error() {
        // Linux reports ECONNRESET (not end of file) to the survivor of a SEQPACKET pair whose
        // peer closed with datagrams unread: what a crashing CRIU leaves behind.
        let (mut swrk, fake) = FakeCriu::start(vec![
            Step::expect(CriuReqType::Dump),
            Step::Reply(notify("pre-dump", None)),
            Step::CloseUnread,
        ]);
        swrk.send(&dump_request()).expect("send DUMP");
        assert!(matches!(swrk.next_event(), Ok(Event::Notify { .. })));
        swrk.notify_reply(true)
            .expect("the answer is queued before the fake dies");
        fake.wait_closed();
        let err = swrk.next_event().expect_err("peer died");
        fake.finish(swrk);
        assert!(
            matches!(err, CriuError::Exited { during: "DUMP", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn sending_to_a_closed_peer_is_exited() {
        let (mut swrk, fake) = FakeCriu::start(vec![Step::Close]);
        fake.wait_closed();
        let err = swrk.version().expect_err("peer closed");
        fake.finish(swrk);
        assert!(
            matches!(
                err,
                CriuError::Exited {
                    during: "VERSION",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn an_answer_of_another_type_is_unexpected() {
        let err = version_against(vec![
            Step::expect(CriuReqType::Version),
            Step::Reply(ok(CriuReqType::FeatureCheck)),
        ])
        .expect_err("mismatch");
        assert!(
            matches!(
                err,
                CriuError::UnexpectedResponse {
                    asked: "VERSION",
                    got: "FEATURE_CHECK"
                }
            ),
            "{err:?}"
        );
    }

    /// Whether this kernel (or emulator) reports MSG_CTRUNC when descriptors do not fit the
    /// receiver's control buffer. QEMU user mode does not, so the truncation case cannot be
    /// observed there.
    fn ctrunc_is_reported() -> bool {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let pipes: Vec<_> = (0..8)
            .map(|_| {
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .expect("pipe")
                    .1
            })
            .collect();
        send_datagram(&a, b"x", &pipes).expect("send");
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let mut buf = [0u8; 4];
        let msg = rustix::net::recvmsg(
            &b,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        for m in control.drain() {
            drop(m);
        }
        msg.flags.contains(rustix::net::ReturnFlags::CTRUNC)
    }

    #[test]
    fn descriptors_sent_with_a_response_are_closed_by_the_driver() {
        let ctrunc = ctrunc_is_reported();
        if !ctrunc {
            eprintln!("MSG_CTRUNC is not reported here (QEMU user mode?): not checking that truncated descriptors are an error");
        }
        // The fake passes pipe write ends and closes its copies; once the driver has closed
        // its copies too (or the kernel dropped those that did not fit), each read end reports
        // hang-up. The driver's control buffer is sized for one descriptor plus alignment
        // slack (`cmsg_space!`), so a few more fit and are closed as well; eight never fit.
        for count in [1usize, 2, 8] {
            let mut readers = Vec::new();
            let mut writers = Vec::new();
            for _ in 0..count {
                let (r, w) = rustix::pipe::pipe().expect("pipe");
                readers.push(r);
                writers.push(w);
            }
            let (mut swrk, fake) = FakeCriu::start(vec![
                Step::expect(CriuReqType::Version),
                Step::ReplyWithFds(version_resp(None), writers),
            ]);
            let result = swrk.version();
            match count {
                1 => assert!(
                    result.is_ok(),
                    "one descriptor (orphan-pts-master): {result:?}"
                ),
                8 if ctrunc => assert!(
                    matches!(result, Err(CriuError::BadResponse { .. })),
                    "truncated descriptors must be an error: {result:?}"
                ),
                _ => {}
            }
            if count == 8 && !ctrunc {
                // The emulator neither reports nor cleanly drops descriptors that do not fit.
                fake.finish(swrk);
                continue;
            }
            for r in &readers {
                let mut fds = [PollFd::new(r, PollFlags::IN)];
                let timeout = Timespec::try_from(Duration::from_secs(2)).expect("timespec");
                poll(&mut fds, Some(&timeout)).expect("poll");
                assert!(
                    fds[0].revents().contains(PollFlags::HUP),
                    "{count} descriptor(s): one is still open after the response was read"
                );
            }
            fake.finish(swrk);
        }
    }

    /// Protobuf wire values, enough to look at a request byte by byte.
    #[derive(Debug, PartialEq)]
    enum Wire<'a> {
        Varint(u64),
        Len(&'a [u8]),
        Fixed(&'a [u8]),
    }

    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = b.split_first().expect("truncated varint");
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint longer than ten bytes");
    }

    fn fields(mut b: &[u8]) -> Vec<(u64, Wire<'_>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let value = match key & 7 {
                0 => Wire::Varint(varint(&mut b)),
                2 => {
                    let n = usize::try_from(varint(&mut b)).expect("length");
                    let (v, rest) = b.split_at(n);
                    b = rest;
                    Wire::Len(v)
                }
                1 | 5 => {
                    let (v, rest) = b.split_at(if key & 7 == 1 { 8 } else { 4 });
                    b = rest;
                    Wire::Fixed(v)
                }
                w => panic!("wire type {w}"),
            };
            out.push((key >> 3, value));
        }
        out
    }

    /// The one DUMP request the driver sent with `opts`, as it was on the wire.
    fn dump_bytes(opts: CriuOpts) -> Vec<u8> {
        let (mut swrk, fake) = FakeCriu::start(vec![
            Step::expect(CriuReqType::Dump),
            Step::Reply(ok(CriuReqType::Dump)),
        ]);
        swrk.send(&Swrk::request(CriuReqType::Dump, opts))
            .expect("send DUMP");
        assert!(matches!(swrk.next_event(), Ok(Event::Done(_))));
        let got = fake.finish(swrk);
        got.into_iter().next().expect("one request").raw
    }

    /// Every field 1 inside the `opts` (field 2) of a request.
    fn images_dir_fd_fields(req: &[u8]) -> Vec<Wire<'_>> {
        let opts: Vec<_> = fields(req).into_iter().filter(|(n, _)| *n == 2).collect();
        let [(_, Wire::Len(opts))] = opts.as_slice() else {
            panic!("opts (field 2) not sent exactly once: {opts:?}");
        };
        fields(opts)
            .into_iter()
            .filter(|(n, _)| *n == 1)
            .map(|(_, v)| v)
            .collect()
    }

    #[test]
    fn a_dump_request_carries_images_dir_fd_even_when_it_is_minus_one() {
        // protobuf-c rejects a message without a required field, and CRIU reads -1 as "use
        // images_dir (68)". An int32 -1 is the ten-byte varint of 2^64 - 1.
        assert_eq!(CriuOpts::default().images_dir_fd, -1);
        let unset = dump_bytes(CriuOpts {
            images_dir: Some("/var/lib/haul/images".into()),
            ..Default::default()
        });
        assert_eq!(images_dir_fd_fields(&unset), [Wire::Varint(u64::MAX)]);
        let set = dump_bytes(CriuOpts {
            images_dir_fd: 7,
            ..Default::default()
        });
        assert_eq!(images_dir_fd_fields(&set), [Wire::Varint(7)]);
    }
}
