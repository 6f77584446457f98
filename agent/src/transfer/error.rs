//! Errors of the connection layer.

use std::fmt;

#[derive(Debug)]
pub enum WireError {
    /// A socket operation failed.
    Io {
        op: &'static str,
        err: std::io::Error,
    },
    /// The peer closed the connection.
    Closed { during: &'static str },
    /// No data within the allowed time.
    Timeout { during: &'static str, secs: u64 },
    /// A frame header announced more than the cap (checked before allocating).
    FrameTooLarge { len: usize, limit: usize },
    /// A frame too short to hold its kind and tag.
    FrameTooShort { len: usize },
    /// A frame failed authentication (forged, replayed, or from another session).
    Decrypt,
    /// The session's frame counter reached Noise's reserved last nonce (2^64-1 frames).
    NoncesExhausted,
    /// Unknown frame kind.
    BadKind(u8),
    /// A control message that does not decode.
    BadControl(String),
    /// A control message of ours over `CONTROL_MAX` (a bug: refused, never cut).
    ControlTooLarge { len: usize, limit: usize },
    /// The peer's preamble is not haul's, or another version or security mode.
    Preamble(String),
    /// The Noise handshake failed: the keys differ.
    Auth(String),
    /// The peer broke the protocol (an unexpected message at this point, a bad name...).
    Protocol(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io { op, err } => write!(f, "connection {op}: {err}"),
            WireError::Closed { during } => write!(f, "peer closed the connection during {during}"),
            WireError::Timeout { during, secs } => {
                write!(f, "peer sent nothing for {secs} s during {during}")
            }
            WireError::FrameTooLarge { len, limit } => {
                write!(
                    f,
                    "peer announced a frame of {len} bytes; the limit is {limit}"
                )
            }
            WireError::FrameTooShort { len } => write!(f, "peer sent a frame of only {len} bytes"),
            WireError::Decrypt => write!(f, "a frame failed authentication (tampered or forged)"),
            WireError::NoncesExhausted => {
                write!(
                    f,
                    "the connection sent 2^64-1 frames, the most one session allows"
                )
            }
            WireError::BadKind(k) => write!(f, "peer sent a frame of unknown kind {k}"),
            WireError::BadControl(e) => write!(f, "peer sent an undecodable control message: {e}"),
            WireError::ControlTooLarge { len, limit } => {
                write!(
                    f,
                    "a control message of {len} bytes is over the limit of {limit}"
                )
            }
            WireError::Preamble(m) => f.write_str(m),
            WireError::Auth(m) => f.write_str(m),
            WireError::Protocol(m) => write!(f, "protocol violation: {m}"),
        }
    }
}

impl std::error::Error for WireError {}

impl WireError {
    /// Classifies a read error: EOF, timeout or other.
    pub fn from_read(err: std::io::Error, during: &'static str, timeout_secs: u64) -> Self {
        match err.kind() {
            std::io::ErrorKind::UnexpectedEof => WireError::Closed { during },
            // Our own read timeout (SO_RCVTIMEO) reports WouldBlock.
            std::io::ErrorKind::WouldBlock => WireError::Timeout {
                during,
                secs: timeout_secs,
            },
            // ETIMEDOUT comes from the kernel: TCP_USER_TIMEOUT or keepalive gave up.
            std::io::ErrorKind::TimedOut => WireError::Io {
                op: "read (the peer stopped acknowledging: link down or host gone)",
                err,
            },
            _ => WireError::Io { op: "read", err },
        }
    }
}
