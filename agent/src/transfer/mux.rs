//! One connection, three streams: control messages and image-file bytes go to the orchestrator
//! through a bounded queue; page-server bytes go straight from the reader thread into the local
//! CRIU's page socket (the "page sink"), so pages never wait behind the orchestrator.

use super::frame::{FrameBuf, Kind, RecvHalf, SendHalf};
use super::WireError;
use crate::limits::INCOMING_QUEUE;
use haul_proto::haul::{control::Msg, Control};
use prost::Message;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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

type Sink = Arc<Mutex<Option<Arc<OwnedFd>>>>;
/// Bytes written into the page sink before it is shut down when the connection is lost.
type Farewell = Arc<Mutex<Option<&'static [u8]>>>;

pub struct Conn {
    tx: Arc<Mutex<SendHalf>>,
    rx: Receiver<Result<Incoming, WireError>>,
    sink: Sink,
    farewell: Farewell,
    reader: Option<JoinHandle<u64>>,
    pub counters: Arc<Counters>,
}

impl Conn {
    /// Starts the reader thread over an authenticated connection.
    pub fn start(tx: SendHalf, rx: RecvHalf) -> Conn {
        let (qtx, qrx) = sync_channel(INCOMING_QUEUE);
        let sink: Sink = Arc::new(Mutex::new(None));
        let farewell: Farewell = Arc::new(Mutex::new(None));
        let counters = Arc::new(Counters::default());
        let reader = {
            let sink = sink.clone();
            let farewell = farewell.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("haul-conn-rx".into())
                .spawn(move || read_loop(rx, qtx, sink, farewell, counters))
                .ok()
        };
        Conn {
            tx: Arc::new(Mutex::new(tx)),
            rx: qrx,
            sink,
            farewell,
            reader,
            counters,
        }
    }

    /// The shared sending half (for the page relay thread).
    pub fn sender(&self) -> Arc<Mutex<SendHalf>> {
        self.tx.clone()
    }

    /// Where incoming page-server bytes go from now on.
    pub fn set_page_sink(&self, fd: Arc<OwnedFd>) {
        if let Ok(mut s) = self.sink.lock() {
            *s = Some(fd);
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
        send_frame(&self.tx, Kind::Control, &bytes)
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
        self.tx.lock().map(|t| t.wire_bytes).unwrap_or(0)
    }
}

/// Sends one frame through the shared half.
pub fn send_frame(tx: &Mutex<SendHalf>, kind: Kind, payload: &[u8]) -> Result<(), WireError> {
    let mut guard = tx
        .lock()
        .map_err(|_| WireError::Protocol("sender lock poisoned".into()))?;
    guard.send(kind, payload)
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

fn read_loop(
    mut rx: RecvHalf,
    q: std::sync::mpsc::SyncSender<Result<Incoming, WireError>>,
    sink: Sink,
    farewell: Farewell,
    counters: Arc<Counters>,
) -> u64 {
    loop {
        let item = match rx.recv("the migration") {
            Ok((Kind::Control, body)) => match Control::decode(body) {
                Ok(Control { msg: Some(m) }) => Ok(Incoming::Control(m)),
                Ok(Control { msg: None }) => Err(WireError::BadControl("empty message".into())),
                Err(e) => Err(WireError::BadControl(e.to_string())),
            },
            Ok((Kind::FileData, body)) => Ok(Incoming::FileData(body.to_vec())),
            Ok((Kind::PageData, body)) => {
                let fd = sink.lock().ok().and_then(|s| s.clone());
                match fd {
                    Some(fd) => match write_all(&fd, body) {
                        Ok(()) => {
                            counters
                                .pages_in
                                .fetch_add(body.len() as u64, Ordering::Relaxed);
                            continue;
                        }
                        Err(err) => Err(WireError::Protocol(format!(
                            "local CRIU page server stopped taking pages: {err}"
                        ))),
                    },
                    None => Err(WireError::Protocol(
                        "page data before the page server".into(),
                    )),
                }
            }
            Ok((Kind::PageEof, _)) => {
                if let Some(fd) = sink.lock().ok().and_then(|s| s.clone()) {
                    let _ = rustix::net::shutdown(&*fd, rustix::net::Shutdown::Write);
                }
                continue;
            }
            Err(e) => Err(e),
        };
        let stop = item.is_err();
        if stop {
            // The connection is gone: the local CRIU must not wait on its page socket.
            if let Some(fd) = sink.lock().ok().and_then(|s| s.clone()) {
                if let Some(bytes) = farewell.lock().ok().and_then(|f| *f) {
                    let _ = write_all(&fd, bytes);
                }
                let _ = rustix::net::shutdown(&*fd, rustix::net::Shutdown::Both);
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
