//! Frames: `[u32 big-endian length][body]`, the body encrypted with the session's keys
//! (AEGIS-128L or ChaCha20-Poly1305, as the handshake agreed; plain with `--insecure`). A decrypted body is `[kind][payload]`;
//! an encrypted one is `[kind][payload]` sealed, then the 16-byte tag.
//! The length is checked against `FRAME_MAX` before anything is allocated or read.

use super::WireError;
use crate::limits::{FRAME_MAX, FRAME_PLAINTEXT_MAX, FRAME_TAG};
use haul_seal::{SealError, SealKey};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A `haul.Control` protobuf.
    Control = 1,
    /// Bytes of CRIU's page-server protocol, relayed between the two CRIUs.
    PageData = 2,
    /// The sending side's CRIU closed its page-server socket.
    PageEof = 3,
    /// Bytes of the image file opened by the last `FileBegin`.
    FileData = 4,
    /// Nothing: the sender is alive and busy (the destination, during a long local wait on
    /// which the source waits too). Empty payload.
    Keepalive = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Result<Kind, WireError> {
        Ok(match b {
            1 => Kind::Control,
            2 => Kind::PageData,
            3 => Kind::PageEof,
            4 => Kind::FileData,
            5 => Kind::Keepalive,
            other => return Err(WireError::BadKind(other)),
        })
    }
}

/// Largest payload of one frame.
pub const PAYLOAD_MAX: usize = FRAME_PLAINTEXT_MAX - 1;

/// The length header in front of each frame body.
const HEADER: usize = 4;

const _: () = assert!(FRAME_TAG == haul_seal::TAG_LEN);

/// One direction's key of a session (see `haul_seal`: frames are sealed and opened in place,
/// without snow's copy of every frame; with ChaCha20-Poly1305 byte for byte Noise's transport
/// messages).
pub type FrameKey = SealKey;

fn seal_error(e: SealError) -> WireError {
    match e {
        SealError::NonceReserved => WireError::NoncesExhausted,
        SealError::Forged => WireError::Decrypt,
    }
}

/// A whole outgoing frame, `[length][kind][payload][tag]`, filled in place: a relay reads its
/// payload straight into it (`payload_mut`), and the frame is sealed and written from the
/// same bytes, with no copy in between.
pub struct FrameBuf(Vec<u8>);

impl FrameBuf {
    pub fn new() -> FrameBuf {
        FrameBuf(vec![0; HEADER + FRAME_MAX])
    }

    /// Where the payload goes: `PAYLOAD_MAX` bytes.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.0
            .get_mut(HEADER + 1..HEADER + 1 + PAYLOAD_MAX)
            .unwrap_or_default()
    }
}

impl Default for FrameBuf {
    fn default() -> Self {
        FrameBuf::new()
    }
}

/// The socket and the sending key with its frame counter.
struct Sealer {
    stream: TcpStream,
    key: Option<FrameKey>,
    nonce: u64,
}

impl Sealer {
    /// Seals the frame whose first `len` payload bytes are in `frame` and writes it, header
    /// and body in one write. Returns the bytes written.
    fn write(&mut self, kind: Kind, frame: &mut FrameBuf, len: usize) -> Result<usize, WireError> {
        let too_large = WireError::FrameTooLarge {
            len: len.saturating_add(1),
            limit: FRAME_PLAINTEXT_MAX,
        };
        if len > PAYLOAD_MAX {
            return Err(too_large);
        }
        let tag_len = if self.key.is_some() { FRAME_TAG } else { 0 };
        let end = HEADER + 1 + len + tag_len;
        let bytes = frame.0.get_mut(..end).ok_or(too_large)?;
        let (header, body) = bytes.split_at_mut(HEADER);
        let (plain, tag_slot) = body.split_at_mut(1 + len);
        if let Some(k) = plain.first_mut() {
            *k = kind as u8;
        }
        if let Some(key) = &self.key {
            let tag = key.seal(self.nonce, plain).map_err(seal_error)?;
            self.nonce += 1;
            tag_slot.copy_from_slice(&tag);
        }
        let body_len = u32::try_from(end - HEADER).unwrap_or(u32::MAX);
        header.copy_from_slice(&body_len.to_be_bytes());
        self.stream
            .write_all(bytes)
            .map_err(|err| WireError::Io { op: "write", err })?;
        Ok(end)
    }
}

/// The sending half: one per connection, shared by the threads that send.
pub struct SendHalf {
    out: Sealer,
    /// For `send`, which copies its payload in.
    frame: FrameBuf,
    /// Bytes written to the socket, headers included; shared with the connection's reader,
    /// which reads progress here when the peer is silent (`mux::read_loop`).
    sent: Arc<AtomicU64>,
}

/// The receiving half, owned by the connection's reader thread. Generic over the byte source
/// so the fuzz targets and tests can feed it from memory; haul reads a `TcpStream`.
pub struct RecvHalf<S = TcpStream> {
    stream: S,
    key: Option<FrameKey>,
    nonce: u64,
    /// One frame body and room for the next frame's header: each read asks for both, so a
    /// stream of frames costs one read system call per frame, not two (header, then body).
    wire: Vec<u8>,
    /// The start of the next frame's header, read together with the last body.
    ahead: [u8; HEADER],
    ahead_len: usize,
    /// Bytes read from the socket, headers included.
    pub wire_bytes: u64,
    /// Idle timeout in seconds, for messages.
    pub timeout_secs: u64,
    /// The longest silence of both directions the reader tolerates (`None`: no read timeout
    /// is set, the reader waits for the peer as long as the connection lives).
    pub silence: Option<Duration>,
}

impl SendHalf {
    /// `key` seals outgoing frames; `None` is plaintext (`--insecure`).
    pub fn new(stream: TcpStream, key: Option<FrameKey>) -> Self {
        SendHalf {
            out: Sealer {
                stream,
                key,
                nonce: 0,
            },
            frame: FrameBuf::new(),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes written to the socket so far, headers included.
    pub fn wire_bytes(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The counter behind `wire_bytes`, readable without this half's lock.
    pub fn sent_counter(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// Sends one frame. `payload` longer than `PAYLOAD_MAX` is a caller bug reported as an
    /// error, never a cut.
    pub fn send(&mut self, kind: Kind, payload: &[u8]) -> Result<(), WireError> {
        let dst =
            self.frame
                .payload_mut()
                .get_mut(..payload.len())
                .ok_or(WireError::FrameTooLarge {
                    len: payload.len().saturating_add(1),
                    limit: FRAME_PLAINTEXT_MAX,
                })?;
        dst.copy_from_slice(payload);
        let n = self.out.write(kind, &mut self.frame, payload.len())?;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends the frame whose first `len` payload bytes the caller wrote into `frame`: sealed in
    /// place, header and body in one write.
    pub fn send_buf(
        &mut self,
        kind: Kind,
        frame: &mut FrameBuf,
        len: usize,
    ) -> Result<(), WireError> {
        let n = self.out.write(kind, frame, len)?;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The cipher sealing the frames (`None`: plaintext).
    pub fn cipher(&self) -> Option<haul_seal::Cipher> {
        self.out.key.as_ref().map(FrameKey::cipher)
    }

    /// Closes the sending direction (the peer reads EOF after the last frame).
    pub fn shutdown(&self) {
        let _ = self.out.stream.shutdown(std::net::Shutdown::Write);
    }

    /// A second handle on the socket, to shut it down from another thread without this half's
    /// lock (which a send blocked on a stalled link holds).
    pub fn socket_handle(&self) -> std::io::Result<TcpStream> {
        self.out.stream.try_clone()
    }

    /// Closes both directions: the peer reads EOF, and a read blocked on this socket returns.
    pub fn shutdown_both(&self) {
        let _ = self.out.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl<S> RecvHalf<S> {
    /// The cipher opening the frames (`None`: plaintext).
    pub fn cipher(&self) -> Option<haul_seal::Cipher> {
        self.key.as_ref().map(FrameKey::cipher)
    }
}

impl<S: Read> RecvHalf<S> {
    /// `key` opens incoming frames; `None` is plaintext (`--insecure`).
    pub fn new(stream: S, key: Option<FrameKey>, timeout_secs: u64) -> Self {
        RecvHalf {
            stream,
            key,
            nonce: 0,
            wire: vec![0; FRAME_MAX + HEADER],
            ahead: [0; HEADER],
            ahead_len: 0,
            wire_bytes: 0,
            timeout_secs,
            silence: None,
        }
    }

    /// Sets `silence` (see the field): the socket's own read timeout must be a fraction of it,
    /// the reader's tick.
    pub fn with_silence(mut self, silence: Duration) -> Self {
        self.silence = Some(silence);
        self
    }

    /// Receives one frame; the payload borrows the half's buffer until the next call. An
    /// encrypted frame is opened in place.
    ///
    /// The read timeout (`WireError::Timeout`) can come only between frames or inside a
    /// header, whose bytes are kept: the next call goes on where this one stopped. A peer that
    /// stops inside a frame's body is an I/O error.
    pub fn recv(&mut self, during: &'static str) -> Result<(Kind, &[u8]), WireError> {
        let mut header = [0u8; HEADER];
        let mut have = std::mem::take(&mut self.ahead_len);
        if let (Some(h), Some(a)) = (header.get_mut(..have), self.ahead.get(..have)) {
            h.copy_from_slice(a);
        }
        while have < HEADER {
            match self.stream.read(header.get_mut(have..).unwrap_or_default()) {
                Ok(0) => return Err(WireError::Closed { during }),
                Ok(n) => have += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if let (Some(a), Some(h)) = (self.ahead.get_mut(..have), header.get(..have)) {
                        a.copy_from_slice(h);
                        self.ahead_len = have;
                    }
                    return Err(WireError::from_read(e, during, self.timeout_secs));
                }
            }
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > FRAME_MAX {
            return Err(WireError::FrameTooLarge {
                len,
                limit: FRAME_MAX,
            });
        }
        let min = if self.key.is_some() { FRAME_TAG + 1 } else { 1 };
        if len < min {
            return Err(WireError::FrameTooShort { len });
        }
        // At least the body; the next header too if it is already there (a read never waits
        // for more than the body, so a lone frame is not held back).
        let buf = self
            .wire
            .get_mut(..len + HEADER)
            .ok_or(WireError::FrameTooShort { len })?;
        let mut got = 0;
        while got < len {
            match self.stream.read(buf.get_mut(got..).unwrap_or_default()) {
                Ok(0) => return Err(WireError::Closed { during }),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(WireError::Io {
                        op: "read (the peer stopped in the middle of a frame)",
                        err: e,
                    })
                }
                Err(e) => return Err(WireError::from_read(e, during, self.timeout_secs)),
            }
        }
        let (body, next) = buf.split_at_mut(len);
        let extra = next.get(..got - len).unwrap_or_default();
        if let Some(a) = self.ahead.get_mut(..extra.len()) {
            a.copy_from_slice(extra);
            self.ahead_len = extra.len();
        }
        self.wire_bytes += (HEADER + len) as u64;
        let plain: &[u8] = match &self.key {
            Some(key) => {
                let (text, tag) = body.split_at_mut(len - FRAME_TAG);
                let tag = <&[u8; FRAME_TAG]>::try_from(&*tag).map_err(|_| WireError::Decrypt)?;
                key.open(self.nonce, text, tag).map_err(seal_error)?;
                self.nonce += 1;
                text
            }
            None => body,
        };
        let (&k, payload) = plain
            .split_first()
            .ok_or(WireError::FrameTooShort { len })?;
        Ok((Kind::from_u8(k)?, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{seal_each, session};

    /// A byte source that hands out scripted chunks, and read timeouts where the script says.
    struct Script(std::collections::VecDeque<Option<Vec<u8>>>);

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(None) => Err(std::io::ErrorKind::WouldBlock.into()),
                Some(Some(mut chunk)) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.0.push_front(Some(chunk.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    /// A read timeout between frames or inside a header loses nothing: the next call goes on.
    #[test]
    fn a_timeout_inside_a_header_is_resumed() {
        let wire = plain_frame(Kind::Control, 9);
        let script = [
            None,
            Some(wire[..2].to_vec()),
            None,
            Some(wire[2..7].to_vec()),
            Some(wire[7..].to_vec()),
        ];
        let mut rx = RecvHalf::new(Script(script.into_iter().collect()), None, 1);
        for _ in 0..2 {
            assert!(matches!(rx.recv("test"), Err(WireError::Timeout { .. })));
        }
        let (kind, payload) = rx.recv("test").unwrap();
        assert_eq!((kind, payload.len()), (Kind::Control, 8));
        assert!(matches!(rx.recv("test"), Err(WireError::Closed { .. })));
    }

    /// A peer that stops inside a frame's body is not a timeout to wait out.
    #[test]
    fn a_timeout_inside_a_body_is_an_error() {
        let wire = plain_frame(Kind::Control, 9);
        let script = [Some(wire[..7].to_vec()), None, Some(wire[7..].to_vec())];
        let mut rx = RecvHalf::new(Script(script.into_iter().collect()), None, 1);
        match rx.recv("test") {
            Err(WireError::Io { op, .. }) => assert!(op.contains("middle of a frame"), "{op}"),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    fn plain_frame(kind: Kind, len: usize) -> Vec<u8> {
        let mut wire = u32::try_from(len).unwrap().to_be_bytes().to_vec();
        wire.push(kind as u8);
        wire.resize(4 + len, 0x5a);
        wire
    }

    #[test]
    fn a_frame_of_frame_max_is_read_and_one_byte_more_is_refused_before_reading() {
        let wire = plain_frame(Kind::FileData, FRAME_MAX);
        let mut rx = RecvHalf::new(&wire[..], None, 0);
        let (kind, payload) = rx.recv("test").unwrap();
        assert_eq!((kind, payload.len()), (Kind::FileData, FRAME_MAX - 1));
        // Only the header of the larger frame is there: it is judged before any body is read.
        let over = u32::try_from(FRAME_MAX + 1).unwrap().to_be_bytes();
        let mut rx = RecvHalf::new(&over[..], None, 0);
        match rx.recv("test") {
            Err(WireError::FrameTooLarge { len, limit }) => {
                assert_eq!((len, limit), (FRAME_MAX + 1, FRAME_MAX))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_encrypted_frame_carries_up_to_frame_plaintext_max_and_more_than_its_tag() {
        let k = session().unwrap();
        let mut full = vec![Kind::PageData as u8];
        full.resize(FRAME_PLAINTEXT_MAX, 7);
        let wire = seal_each(
            &FrameKey::new(&k),
            [&full[..], &[Kind::PageEof as u8][..], &[][..]],
        );
        let mut half = RecvHalf::new(&wire[..], Some(FrameKey::new(&k)), 0);
        // FRAME_PLAINTEXT_MAX bytes of plaintext are FRAME_MAX on the wire: at the limit.
        assert_eq!(
            u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize,
            FRAME_MAX
        );
        let (kind, payload) = half.recv("test").unwrap();
        assert_eq!((kind, payload.len()), (Kind::PageData, PAYLOAD_MAX));
        // A kind byte and the tag: the smallest frame.
        assert_eq!(half.recv("test").unwrap(), (Kind::PageEof, &[][..]));
        // The tag alone has no kind.
        match half.recv("test") {
            Err(WireError::FrameTooShort { len }) => assert_eq!(len, FRAME_TAG),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plaintext_frame_needs_its_kind_byte() {
        let wire = [0u8, 0, 0, 0];
        let mut rx = RecvHalf::new(&wire[..], None, 0);
        assert!(matches!(
            rx.recv("test"),
            Err(WireError::FrameTooShort { len: 0 })
        ));
        let wire = [0u8, 0, 0, 1, 9];
        let mut rx = RecvHalf::new(&wire[..], None, 0);
        assert!(matches!(rx.recv("test"), Err(WireError::BadKind(9))));
    }

    /// A loopback TCP pair: (one end, the other).
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// The bytes `frames` make on the wire, and how each should arrive.
    fn wire_of(frames: &[(Kind, Vec<u8>)], key: Option<[u8; 32]>) -> Vec<u8> {
        let (a, mut b) = tcp_pair();
        let mut tx = SendHalf::new(a, key.map(|k| FrameKey::new(&k)));
        let expected: usize = frames
            .iter()
            .map(|(_, p)| HEADER + 1 + p.len() + if key.is_some() { FRAME_TAG } else { 0 })
            .sum();
        for (kind, p) in frames {
            tx.send(*kind, p).unwrap();
        }
        let mut bytes = vec![0u8; expected];
        b.read_exact(&mut bytes).unwrap();
        bytes
    }

    /// However the stream is cut (a header split across reads, several frames in one read,
    /// one byte at a time), the receiver finds the same frames, including the last one.
    #[test]
    fn frames_arrive_whole_however_the_stream_is_cut() {
        let frames = vec![
            (Kind::Control, b"hello".to_vec()),
            (Kind::PageData, vec![0xa5; PAYLOAD_MAX]),
            (Kind::PageEof, Vec::new()),
            (Kind::FileData, (0..3000u32).map(|x| x as u8).collect()),
            (Kind::PageData, vec![1, 2, 3]),
        ];
        for key in [None, Some([3u8; 32])] {
            let bytes = wire_of(&frames, key);
            for piece in [1usize, 3, 4, 5, 7, 4096, 70_000, bytes.len()] {
                let (mut a, b) = tcp_pair();
                let mut rx = RecvHalf::new(b, key.map(|k| FrameKey::new(&k)), 5);
                let data = bytes.clone();
                let writer = std::thread::spawn(move || {
                    for chunk in data.chunks(piece) {
                        a.write_all(chunk).unwrap();
                        if piece < 8 {
                            a.flush().unwrap();
                        }
                    }
                });
                for (i, (kind, payload)) in frames.iter().enumerate() {
                    let (k, p) = rx.recv("test").unwrap();
                    assert_eq!(
                        (k, p),
                        (*kind, &payload[..]),
                        "frame {i}, pieces of {piece}"
                    );
                }
                writer.join().unwrap();
                assert!(matches!(rx.recv("test"), Err(WireError::Closed { .. })));
                assert_eq!(rx.wire_bytes, bytes.len() as u64);
            }
        }
    }

    /// A connection that ends inside a frame is a closed connection, not a short frame.
    #[test]
    fn a_stream_cut_inside_a_frame_reads_as_closed() {
        let bytes = wire_of(&[(Kind::PageData, vec![9; 1000])], Some([4; 32]));
        for cut in [2, HEADER, HEADER + 10, bytes.len() - 1] {
            let (mut a, b) = tcp_pair();
            let mut rx = RecvHalf::new(b, Some(FrameKey::new(&[4; 32])), 5);
            a.write_all(&bytes[..cut]).unwrap();
            drop(a);
            assert!(
                matches!(rx.recv("test"), Err(WireError::Closed { .. })),
                "cut at {cut}"
            );
        }
    }

    /// Any changed byte of an encrypted frame, header aside, fails authentication.
    #[test]
    fn a_changed_byte_on_the_wire_is_refused() {
        let bytes = wire_of(&[(Kind::Control, b"commit".to_vec())], Some([5; 32]));
        for at in HEADER..bytes.len() {
            let (mut a, b) = tcp_pair();
            let mut rx = RecvHalf::new(b, Some(FrameKey::new(&[5; 32])), 5);
            let mut forged = bytes.clone();
            forged[at] ^= 0x10;
            a.write_all(&forged).unwrap();
            assert!(
                matches!(rx.recv("test"), Err(WireError::Decrypt)),
                "byte {at}"
            );
        }
        let (mut a, b) = tcp_pair();
        let mut rx = RecvHalf::new(b, Some(FrameKey::new(&[6; 32])), 5);
        a.write_all(&bytes).unwrap();
        assert!(
            matches!(rx.recv("test"), Err(WireError::Decrypt)),
            "another key"
        );
    }

    /// A payload over the cap is an error before anything is sealed or written.
    #[test]
    fn an_oversized_payload_is_refused_not_cut() {
        let (a, _b) = tcp_pair();
        let mut tx = SendHalf::new(a, Some(FrameKey::new(&[7; 32])));
        let mut frame = FrameBuf::new();
        assert_eq!(frame.payload_mut().len(), PAYLOAD_MAX);
        assert!(matches!(
            tx.send_buf(Kind::PageData, &mut frame, PAYLOAD_MAX + 1),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            tx.send(Kind::FileData, &vec![0; PAYLOAD_MAX + 1]),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert_eq!(tx.wire_bytes(), 0);
        tx.send_buf(Kind::PageData, &mut frame, PAYLOAD_MAX)
            .unwrap();
        assert_eq!(tx.wire_bytes(), (HEADER + FRAME_MAX) as u64);
    }
}
