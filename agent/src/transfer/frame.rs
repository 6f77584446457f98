//! Frames: `[u32 big-endian length][body]`, the body encrypted with the session's
//! ChaCha20-Poly1305 keys (or plain with `--insecure`). A decrypted body is `[kind][payload]`.
//! The length is checked against `FRAME_MAX` before anything is allocated or read.

use super::WireError;
use crate::limits::{FRAME_MAX, FRAME_PLAINTEXT_MAX, FRAME_TAG};
use snow::StatelessTransportState;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

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
}

impl Kind {
    fn from_u8(b: u8) -> Result<Kind, WireError> {
        Ok(match b {
            1 => Kind::Control,
            2 => Kind::PageData,
            3 => Kind::PageEof,
            4 => Kind::FileData,
            other => return Err(WireError::BadKind(other)),
        })
    }
}

/// Largest payload of one frame.
pub const PAYLOAD_MAX: usize = FRAME_PLAINTEXT_MAX - 1;

/// Session keys shared by both halves; `None` is plaintext (`--insecure`).
pub type Cipher = Option<Arc<StatelessTransportState>>;

/// The sending half: one per connection, shared by the threads that send.
pub struct SendHalf {
    stream: TcpStream,
    cipher: Cipher,
    nonce: u64,
    plain: Vec<u8>,
    wire: Vec<u8>,
    /// Bytes written to the socket, headers included.
    pub wire_bytes: u64,
}

/// The receiving half, owned by the connection's reader thread. Generic over the byte source
/// so the fuzz targets and tests can feed it from memory; haul reads a `TcpStream`.
pub struct RecvHalf<S = TcpStream> {
    stream: S,
    cipher: Cipher,
    nonce: u64,
    wire: Vec<u8>,
    plain: Vec<u8>,
    /// Bytes read from the socket, headers included.
    pub wire_bytes: u64,
    /// Idle timeout in seconds, for messages.
    pub timeout_secs: u64,
}

impl SendHalf {
    pub fn new(stream: TcpStream, cipher: Cipher) -> Self {
        SendHalf {
            stream,
            cipher,
            nonce: 0,
            plain: Vec::with_capacity(FRAME_PLAINTEXT_MAX),
            wire: vec![0; FRAME_MAX + 4],
            wire_bytes: 0,
        }
    }

    /// Sends one frame. `payload` longer than `PAYLOAD_MAX` is a caller bug reported as an
    /// error, never a cut.
    pub fn send(&mut self, kind: Kind, payload: &[u8]) -> Result<(), WireError> {
        if payload.len() > PAYLOAD_MAX {
            return Err(WireError::FrameTooLarge {
                len: payload.len() + 1,
                limit: FRAME_PLAINTEXT_MAX,
            });
        }
        self.plain.clear();
        self.plain.push(kind as u8);
        self.plain.extend_from_slice(payload);
        let body_len = match &self.cipher {
            Some(c) => {
                let out = self.wire.get_mut(4..).unwrap_or_default();
                let n = c
                    .write_message(self.nonce, &self.plain, out)
                    .map_err(|_| WireError::Decrypt)?;
                self.nonce = self.nonce.wrapping_add(1);
                n
            }
            None => {
                let n = self.plain.len();
                if let Some(out) = self.wire.get_mut(4..4 + n) {
                    out.copy_from_slice(&self.plain);
                }
                n
            }
        };
        let len = u32::try_from(body_len).unwrap_or(u32::MAX);
        if let Some(h) = self.wire.get_mut(..4) {
            h.copy_from_slice(&len.to_be_bytes());
        }
        let frame = self.wire.get(..4 + body_len).unwrap_or_default();
        self.stream
            .write_all(frame)
            .map_err(|err| WireError::Io { op: "write", err })?;
        self.wire_bytes += frame.len() as u64;
        Ok(())
    }

    /// Closes the sending direction (the peer reads EOF after the last frame).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Closes both directions: the peer reads EOF, and a read blocked on this socket returns.
    pub fn shutdown_both(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl<S: Read> RecvHalf<S> {
    pub fn new(stream: S, cipher: Cipher, timeout_secs: u64) -> Self {
        RecvHalf {
            stream,
            cipher,
            nonce: 0,
            wire: vec![0; FRAME_MAX],
            plain: vec![0; FRAME_MAX],
            wire_bytes: 0,
            timeout_secs,
        }
    }

    /// Receives one frame; the payload borrows the half's buffer until the next call.
    pub fn recv(&mut self, during: &'static str) -> Result<(Kind, &[u8]), WireError> {
        let mut header = [0u8; 4];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| WireError::from_read(e, during, self.timeout_secs))?;
        let len = u32::from_be_bytes(header) as usize;
        if len > FRAME_MAX {
            return Err(WireError::FrameTooLarge {
                len,
                limit: FRAME_MAX,
            });
        }
        let min = if self.cipher.is_some() {
            FRAME_TAG + 1
        } else {
            1
        };
        if len < min {
            return Err(WireError::FrameTooShort { len });
        }
        let body = self
            .wire
            .get_mut(..len)
            .ok_or(WireError::FrameTooShort { len })?;
        self.stream
            .read_exact(body)
            .map_err(|e| WireError::from_read(e, during, self.timeout_secs))?;
        self.wire_bytes += 4 + len as u64;
        let plain: &[u8] = match &self.cipher {
            Some(c) => {
                let n = c
                    .read_message(self.nonce, body, &mut self.plain)
                    .map_err(|_| WireError::Decrypt)?;
                self.nonce = self.nonce.wrapping_add(1);
                self.plain.get(..n).unwrap_or_default()
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
        let (tx, rx) = session().unwrap();
        let mut full = vec![Kind::PageData as u8];
        full.resize(FRAME_PLAINTEXT_MAX, 7);
        let wire = seal_each(&tx, [&full[..], &[Kind::PageEof as u8][..], &[][..]]);
        let mut half = RecvHalf::new(&wire[..], Some(rx), 0);
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
}
