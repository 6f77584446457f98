//! One connection, three streams: control messages and image-file bytes go to the orchestrator
//! through a bounded queue; page-server bytes go straight from the reader thread into the local
//! CRIU's page socket (the "page sink"), so pages never wait behind the orchestrator.

use super::frame::{FrameBuf, Kind, RecvHalf, SendHalf};
use super::WireError;
use crate::limits::{CONTROL_MAX, INCOMING_QUEUE};
use haul_proto::haul::{control::Msg, Control};
use prost::Message;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the orchestrator receives.
#[derive(Debug)]
pub enum Incoming {
    Control(Msg),
    FileData(Vec<u8>),
}

/// Byte counters of a connection, readable while it runs (for progress).
#[derive(Debug, Default)]
pub struct Counters {
    /// Page-server bytes received from the peer and written to the local CRIU.
    pub pages_in: AtomicU64,
    /// Page-server bytes read from the local CRIU and sent to the peer.
    pub pages_out: AtomicU64,
}

/// Where the reader puts incoming page-server bytes: the local CRIU's page socket, or a filter
/// in front of it (`dest::prefetch`).
pub trait PageSink: Send + Sync {
    /// The next bytes of the peer's page stream; an error (saying what stopped) ends the
    /// connection.
    fn put(&self, bytes: &[u8]) -> Result<(), String>;
    /// The peer's page stream ended (PAGE_EOF).
    fn end(&self);
    /// The connection is lost: write `farewell` if any, then make the local CRIU stop waiting.
    fn lost(&self, farewell: Option<&[u8]>);
}

/// The local CRIU's page socket itself.
struct FdSink(Arc<OwnedFd>);

impl PageSink for FdSink {
    fn put(&self, bytes: &[u8]) -> Result<(), String> {
        write_all(&self.0, bytes)
            .map_err(|e| format!("local CRIU page server stopped taking pages: {e}"))
    }

    fn end(&self) {
        let _ = rustix::net::shutdown(&*self.0, rustix::net::Shutdown::Write);
    }

    fn lost(&self, farewell: Option<&[u8]>) {
        if let Some(bytes) = farewell {
            let _ = write_all(&self.0, bytes);
        }
        let _ = rustix::net::shutdown(&*self.0, rustix::net::Shutdown::Both);
    }
}

type Sink = Arc<Mutex<Option<Arc<dyn PageSink>>>>;
/// Bytes written into the page sink before it is shut down when the connection is lost.
type Farewell = Arc<Mutex<Option<&'static [u8]>>>;

type Queue = (
    SyncSender<Result<Incoming, WireError>>,
    Receiver<Result<Incoming, WireError>>,
);

/// The queue between the reader thread and the orchestrator: `INCOMING_QUEUE` frames at most,
/// then the reader waits (and so does the peer, through TCP's window).
fn queue() -> Queue {
    sync_channel(INCOMING_QUEUE)
}

/// When the last frame of any kind arrived. Page data goes straight to the page server, not
/// through the queue, so the orchestrator's waits ask this whether the peer was really silent.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last frame.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last frame (or since the connection started).
    fn silence(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

pub struct Conn {
    tx: Arc<Mutex<SendHalf>>,
    rx: Receiver<Result<Incoming, WireError>>,
    sink: Sink,
    farewell: Farewell,
    reader: Option<JoinHandle<u64>>,
    activity: Arc<Activity>,
    /// Bytes written to the socket (the sending half's counter, read without its lock).
    sent: Arc<AtomicU64>,
    pub counters: Arc<Counters>,
}

impl Conn {
    /// Starts the reader thread over an authenticated connection.
    pub fn start(tx: SendHalf, rx: RecvHalf) -> Conn {
        let (qtx, qrx) = queue();
        let sink: Sink = Arc::new(Mutex::new(None));
        let farewell: Farewell = Arc::new(Mutex::new(None));
        let counters = Arc::new(Counters::default());
        let activity = Arc::new(Activity::new());
        let sent = tx.sent_counter();
        let reader = {
            let sink = sink.clone();
            let farewell = farewell.clone();
            let counters = counters.clone();
            let activity = activity.clone();
            let sent = sent.clone();
            std::thread::Builder::new()
                .name("haul-conn-rx".into())
                .spawn(move || {
                    read_loop(
                        rx,
                        qtx,
                        Shared {
                            sink,
                            farewell,
                            counters,
                            activity,
                            sent,
                        },
                    )
                })
                .ok()
        };
        Conn {
            tx: Arc::new(Mutex::new(tx)),
            rx: qrx,
            sink,
            farewell,
            reader,
            activity,
            sent,
            counters,
        }
    }

    /// The cipher the frames are sealed with (None: plaintext, `--insecure`).
    pub fn cipher(&self) -> Option<haul_seal::Cipher> {
        self.tx.lock().ok().and_then(|t| t.cipher())
    }

    /// The shared sending half (for the page relay thread).
    pub fn sender(&self) -> Arc<Mutex<SendHalf>> {
        self.tx.clone()
    }

    /// Where incoming page-server bytes go from now on.
    pub fn set_page_sink(&self, fd: Arc<OwnedFd>) {
        self.set_page_filter(Arc::new(FdSink(fd)));
    }

    /// Where incoming page-server bytes go from now on: through `filter`.
    pub fn set_page_filter(&self, filter: Arc<dyn PageSink>) {
        if let Ok(mut s) = self.sink.lock() {
            *s = Some(filter);
        }
    }

    /// What the reader writes into the page sink, before shutting it down, if the connection
    /// is lost (None: only the shutdown, which the local CRIU sees as the end of its stream).
    pub fn set_sink_farewell(&self, bytes: Option<&'static [u8]>) {
        if let Ok(mut f) = self.farewell.lock() {
            *f = bytes;
        }
    }

    pub fn send(&self, msg: Msg) -> Result<(), WireError> {
        let bytes = Control { msg: Some(msg) }.encode_to_vec();
        if bytes.len() > CONTROL_MAX {
            return Err(WireError::ControlTooLarge {
                len: bytes.len(),
                limit: CONTROL_MAX,
            });
        }
        send_frame(&self.tx, Kind::Control, &bytes)
    }

    /// An empty keepalive frame: the peer's reader counts it as a sign of life and drops it.
    pub fn send_keepalive(&self) -> Result<(), WireError> {
        send_frame(&self.tx, Kind::Keepalive, &[])
    }

    pub fn send_file_data(&self, data: &[u8]) -> Result<(), WireError> {
        send_frame(&self.tx, Kind::FileData, data)
    }

    /// Next control message or file chunk, waiting at most `timeout`.
    pub fn recv(&self, timeout: Duration, during: &'static str) -> Result<Incoming, WireError> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(WireError::Timeout {
                during,
                secs: timeout.as_secs(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(WireError::Closed { during }),
        }
    }

    /// Next control message or file chunk while the peer talks: gives up once it has sent no
    /// frame at all, page data included, for `timeout` (and not before `timeout` has passed).
    /// For a wait during which pages may stream for longer than the timeout.
    pub fn recv_until_silent(
        &self,
        timeout: Duration,
        during: &'static str,
    ) -> Result<Incoming, WireError> {
        let mut wait = timeout;
        loop {
            match self.rx.recv_timeout(wait) {
                Ok(r) => return r,
                Err(RecvTimeoutError::Timeout) => {
                    let silence = self.activity.silence();
                    if silence >= timeout {
                        return Err(WireError::Timeout {
                            during,
                            secs: timeout.as_secs(),
                        });
                    }
                    // Pages kept coming: wait until `timeout` after the last one.
                    wait = timeout - silence;
                }
                Err(RecvTimeoutError::Disconnected) => return Err(WireError::Closed { during }),
            }
        }
    }

    /// Next message, which must be a control message.
    pub fn recv_control(&self, timeout: Duration, during: &'static str) -> Result<Msg, WireError> {
        match self.recv(timeout, during)? {
            Incoming::Control(m) => Ok(m),
            Incoming::FileData(_) => Err(WireError::Protocol(format!(
                "file data outside a file during {during}"
            ))),
        }
    }

    /// Closes the connection and waits for the reader thread; returns bytes received on the
    /// wire. Both directions are shut down and the queue is dropped first, so a reader blocked
    /// on a silent peer or on a full queue ends at once (a refused peer never keeps a slot).
    pub fn close(self) -> u64 {
        let Conn { tx, rx, reader, .. } = self;
        drop(rx);
        if let Ok(tx) = tx.lock() {
            tx.shutdown_both();
        }
        reader.and_then(|h| h.join().ok()).unwrap_or(0)
    }

    /// Bytes sent so far, headers included.
    pub fn wire_bytes_out(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Sends one frame through the shared half.
pub fn send_frame(tx: &Mutex<SendHalf>, kind: Kind, payload: &[u8]) -> Result<(), WireError> {
    let mut guard = tx
        .lock()
        .map_err(|_| WireError::Protocol("sender lock poisoned".into()))?;
    guard.send(kind, payload)
}

/// Decodes the payload of a control frame: one `haul.Control` carrying a message, of at most
/// `CONTROL_MAX` bytes (a plaintext frame could carry a few more).
pub fn decode_control(body: &[u8]) -> Result<Msg, WireError> {
    if body.len() > CONTROL_MAX {
        return Err(WireError::BadControl(format!(
            "{} bytes; the limit is {CONTROL_MAX}",
            body.len()
        )));
    }
    match Control::decode(body) {
        Ok(Control { msg: Some(m) }) => Ok(m),
        Ok(Control { msg: None }) => Err(WireError::BadControl("empty message".into())),
        Err(e) => Err(WireError::BadControl(e.to_string())),
    }
}

/// Sends the frame whose payload the caller wrote into `frame` (no copy: see `FrameBuf`).
pub fn send_frame_buf(
    tx: &Mutex<SendHalf>,
    kind: Kind,
    frame: &mut FrameBuf,
    len: usize,
) -> Result<(), WireError> {
    let mut guard = tx
        .lock()
        .map_err(|_| WireError::Protocol("sender lock poisoned".into()))?;
    guard.send_buf(kind, frame, len)
}

/// What the reader thread shares with the connection.
struct Shared {
    sink: Sink,
    farewell: Farewell,
    counters: Arc<Counters>,
    activity: Arc<Activity>,
    sent: Arc<AtomicU64>,
}

/// Whether a connection whose reader just timed out is still alive: the peer is silent, but
/// it may be taking our bytes (the destination says nothing while pages stream to it, for
/// minutes on a slow link). Dead only when neither direction moved for `silence`.
struct Liveness {
    silence: Option<Duration>,
    sent: u64,
    sent_at: Instant,
}

impl Liveness {
    fn new(silence: Option<Duration>) -> Liveness {
        Liveness {
            silence,
            sent: 0,
            sent_at: Instant::now(),
        }
    }

    /// After a read timeout: `true` if the reader should wait on.
    fn alive(&mut self, sent_now: u64, peer_silent: Duration) -> bool {
        let Some(silence) = self.silence else {
            return false;
        };
        if sent_now != self.sent {
            self.sent = sent_now;
            self.sent_at = Instant::now();
        }
        peer_silent < silence || self.sent_at.elapsed() < silence
    }
}

fn read_loop(mut rx: RecvHalf, q: SyncSender<Result<Incoming, WireError>>, sh: Shared) -> u64 {
    let Shared {
        sink,
        farewell,
        counters,
        activity,
        sent,
    } = sh;
    let mut live = Liveness::new(rx.silence);
    loop {
        let frame = rx.recv("the migration");
        if frame.is_ok() {
            activity.touch();
        }
        let item = match frame {
            Ok((Kind::Keepalive, _)) => continue,
            Err(WireError::Timeout { .. })
                if live.alive(sent.load(Ordering::Relaxed), activity.silence()) =>
            {
                continue
            }
            Err(WireError::Timeout { .. }) => Err(WireError::Timeout {
                during: "the migration (nothing went to the peer either)",
                secs: rx.silence.map(|d| d.as_secs()).unwrap_or_default(),
            }),
            Ok((Kind::Control, body)) => decode_control(body).map(Incoming::Control),
            Ok((Kind::FileData, body)) => Ok(Incoming::FileData(body.to_vec())),
            Ok((Kind::PageData, body)) => {
                let to = sink.lock().ok().and_then(|s| s.clone());
                match to {
                    Some(to) => match to.put(body) {
                        Ok(()) => {
                            counters
                                .pages_in
                                .fetch_add(body.len() as u64, Ordering::Relaxed);
                            continue;
                        }
                        Err(err) => Err(WireError::Protocol(err)),
                    },
                    None => Err(WireError::Protocol(
                        "page data before the page server".into(),
                    )),
                }
            }
            Ok((Kind::PageEof, _)) => {
                if let Some(to) = sink.lock().ok().and_then(|s| s.clone()) {
                    to.end();
                }
                continue;
            }
            Err(e) => Err(e),
        };
        let stop = item.is_err();
        if stop {
            // The connection is gone: the local CRIU must not wait on its page socket.
            if let Some(to) = sink.lock().ok().and_then(|s| s.clone()) {
                to.lost(farewell.lock().ok().and_then(|f| *f));
            }
        }
        if q.send(item).is_err() || stop {
            return rx.wire_bytes;
        }
    }
}

/// Writes all of `buf` to a socket without raising SIGPIPE.
pub fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> Result<(), rustix::io::Errno> {
    while !buf.is_empty() {
        match rustix::net::send(fd, buf, rustix::net::SendFlags::NOSIGNAL) {
            Ok(0) => return Err(rustix::io::Errno::PIPE),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Counter helper for progress.
pub fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Two connected `Conn`s over loopback, without a key (for tests of both ends of an exchange).
#[cfg(test)]
pub fn loopback_pair() -> (Conn, Conn) {
    use crate::transfer::handshake;
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let (tx, rx) = handshake::accept(s, None, crate::limits::IDLE_TIMEOUT).unwrap();
        Conn::start(tx, rx)
    });
    let (tx, rx) = handshake::connect(TcpStream::connect(addr).unwrap(), None).unwrap();
    (Conn::start(tx, rx), server.join().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::frame::{RecvHalf, SendHalf};
    use haul_proto::haul::{Abort, Commit};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    fn pair() -> (Conn, Conn) {
        loopback_pair()
    }

    /// Two plaintext `Conn`s over loopback: the first, like the source's, gives the connection
    /// up after `silence` in both directions (read timeout a quarter of it); the second, like
    /// the destination's, has no read timeout.
    fn pair_with_silence(silence: Duration) -> (Conn, Conn) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_read_timeout(Some(silence / 4)).unwrap();
        let half = |s: &TcpStream, quiet: Option<Duration>| {
            let rx = RecvHalf::new(s.try_clone().unwrap(), None, silence.as_secs());
            let rx = match quiet {
                Some(q) => rx.with_silence(q),
                None => rx,
            };
            Conn::start(SendHalf::new(s.try_clone().unwrap(), None), rx)
        };
        (half(&a, Some(silence)), half(&b, None))
    }

    fn abort(reason: &str) -> Msg {
        Msg::Abort(Abort {
            stage: String::new(),
            reason: reason.into(),
        })
    }

    /// While pages stream to the destination it says nothing: the source's connection lives
    /// on as long as its own bytes are taken, for longer than the silence allowed.
    #[test]
    fn a_silent_peer_taking_our_bytes_keeps_the_connection() {
        let silence = Duration::from_millis(400);
        let (src, dst) = pair_with_silence(silence);
        let until = Instant::now() + silence * 3;
        while Instant::now() < until {
            src.send_file_data(&[7; 1000]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        dst.send(abort("late")).unwrap();
        match src.recv(Duration::from_secs(5), "test") {
            Ok(Incoming::Control(Msg::Abort(a))) => assert_eq!(a.reason, "late"),
            other => panic!("expected the late message, got {other:?}"),
        }
    }

    /// The destination's keepalive frames alone keep the source waiting (the fill after the
    /// resume, when neither side has anything else to say), and never reach its queue.
    #[test]
    fn keepalives_keep_a_quiet_connection_and_are_not_delivered() {
        let silence = Duration::from_millis(400);
        let (src, dst) = pair_with_silence(silence);
        let until = Instant::now() + silence * 3;
        while Instant::now() < until {
            dst.send_keepalive().unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        dst.send(abort("after keepalives")).unwrap();
        match src.recv(Duration::from_secs(5), "test") {
            Ok(Incoming::Control(Msg::Abort(a))) => assert_eq!(a.reason, "after keepalives"),
            other => panic!("expected the message after the keepalives, got {other:?}"),
        }
    }

    /// Nothing either way for `silence`: the reader gives the connection up (a destination
    /// hung while the source's CRIU waits for its answer must not keep the container frozen).
    #[test]
    fn silence_both_ways_ends_the_connection() {
        let silence = Duration::from_millis(400);
        let (src, _dst) = pair_with_silence(silence);
        let start = Instant::now();
        match src.recv(Duration::from_secs(10), "test") {
            Err(WireError::Timeout { during, .. }) => {
                assert!(during.contains("nothing went to the peer"), "{during}")
            }
            other => panic!("expected the reader's timeout, got {other:?}"),
        }
        let took = start.elapsed();
        assert!(
            took >= silence,
            "gave up after {took:?}, before {silence:?}"
        );
    }

    #[test]
    fn liveness_needs_movement_in_one_direction() {
        let s = Duration::from_millis(50);
        let mut l = Liveness::new(Some(s));
        assert!(l.alive(0, Duration::ZERO), "the peer just spoke");
        std::thread::sleep(s);
        assert!(!l.alive(0, s), "nothing moved for the whole silence");
        assert!(l.alive(10, s), "our bytes went out just now");
        std::thread::sleep(s);
        assert!(!l.alive(10, s * 2), "and nothing since");
        assert!(
            !Liveness::new(None).alive(0, Duration::ZERO),
            "no rule: any timeout ends it"
        );
    }

    /// An Abort whose encoded Control is exactly `len` bytes.
    fn control_of_len(len: usize) -> Msg {
        let abort = |n: usize| {
            Msg::Abort(Abort {
                stage: String::new(),
                reason: "r".repeat(n),
            })
        };
        let size = |n: usize| {
            Control {
                msg: Some(abort(n)),
            }
            .encode_to_vec()
            .len()
        };
        let n = (0..len).rev().find(|&n| size(n) == len).unwrap();
        abort(n)
    }

    #[test]
    fn the_queue_holds_incoming_queue_frames_then_the_reader_waits() {
        let (tx, _rx) = queue();
        for _ in 0..INCOMING_QUEUE {
            tx.try_send(Ok(Incoming::FileData(Vec::new()))).unwrap();
        }
        assert!(matches!(
            tx.try_send(Ok(Incoming::FileData(Vec::new()))),
            Err(std::sync::mpsc::TrySendError::Full(_))
        ));
    }

    #[test]
    fn control_messages_up_to_control_max_go_through_and_larger_are_refused() {
        let (a, b) = pair();
        a.send(control_of_len(CONTROL_MAX)).unwrap();
        let got = b.recv_control(Duration::from_secs(10), "test").unwrap();
        assert_eq!(
            Control { msg: Some(got) }.encode_to_vec().len(),
            CONTROL_MAX
        );
        assert!(matches!(
            a.send(control_of_len(CONTROL_MAX + 1)),
            Err(WireError::ControlTooLarge { len, limit }) if len == CONTROL_MAX + 1 && limit == CONTROL_MAX
        ));
        // From a plaintext peer, whose frames may be larger: refused too.
        let big = Control {
            msg: Some(control_of_len(CONTROL_MAX + 1)),
        }
        .encode_to_vec();
        assert!(decode_control(&big).is_err());
        let at = Control {
            msg: Some(control_of_len(CONTROL_MAX)),
        }
        .encode_to_vec();
        assert!(decode_control(&at).is_ok());
        a.close();
        b.close();
    }

    /// Page data does not pass the queue, but it is the peer talking: `recv_until_silent` goes
    /// on while it comes, and ends once the peer has been silent for the whole timeout.
    #[test]
    fn a_wait_ends_after_a_silence_of_the_timeout_not_while_pages_flow() {
        let (src, dst) = pair();
        let (sink, _criu) = crate::transfer::pages::socket_pair().unwrap();
        dst.set_page_sink(Arc::new(sink));
        let timeout = Duration::from_millis(600);
        let sender = src.sender();
        let pages = std::thread::spawn(move || {
            for _ in 0..8 {
                std::thread::sleep(Duration::from_millis(200));
                send_frame(&sender, Kind::PageData, b"p").unwrap();
            }
            let commit = Control {
                msg: Some(Msg::Commit(Commit {})),
            };
            send_frame(&sender, Kind::Control, &commit.encode_to_vec()).unwrap();
        });
        let t = Instant::now();
        // A plain wait ends after its timeout whatever flows (callers poll with it).
        assert!(matches!(
            dst.recv(timeout / 2, "poll"),
            Err(WireError::Timeout { during: "poll", .. })
        ));
        // Pages for 1.6 s, over twice the timeout, then a control message.
        let waited = dst.recv_until_silent(timeout, "test");
        pages.join().unwrap();
        assert!(
            matches!(waited, Ok(Incoming::Control(Msg::Commit(_)))),
            "{waited:?} after {:?}",
            t.elapsed()
        );
        assert!(t.elapsed() >= Duration::from_millis(1500));
        assert_eq!(load(&dst.counters.pages_in), 8);
        // Then silence: the wait ends after the timeout, not before.
        let t = Instant::now();
        match dst.recv_until_silent(timeout, "test") {
            Err(WireError::Timeout { during, .. }) => assert_eq!(during, "test"),
            other => panic!("{other:?}"),
        }
        let waited = t.elapsed();
        assert!(waited >= timeout && waited < timeout * 2, "{waited:?}");
        src.close();
        dst.close();
    }
}
