//! Connection setup: an 8-byte preamble each way, then Noise `NNpsk0` (X25519, ChaCha20-Poly1305,
//! BLAKE2s) mixing the pre-shared key.
//!
//! Preamble: `b"HAUL"`, protocol version (u16 big-endian), security mode (1 = Noise with key,
//! 0 = plaintext), then the ciphers this side offers for the frames beyond ChaCha20-Poly1305
//! (bit 0: AEGIS-128L, offered where the CPU has AES instructions; other bits must be zero).
//! The destination always answers with its own preamble, so a source facing another version or
//! mode is told which; both preambles are the Noise prologue, so they are authenticated too (a
//! man in the middle cannot strip an offer). The frames use AEGIS-128L when both sides offer
//! it, else ChaCha20-Poly1305 (`haul_seal`); `HAUL_CIPHER=chacha20-poly1305` in either side's
//! environment withholds the offer. NNpsk0 gives mutual authentication (only holders of the
//! key complete it) and forward secrecy (fresh ephemeral keys per connection). Nothing the peer
//! sends beyond the fixed preamble is parsed before the first Noise message authenticates.

use super::frame::{FrameKey, RecvHalf, SendHalf};
use super::{Key, WireError, PROTOCOL_VERSION};
use crate::limits::{HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, KEEPALIVE_IDLE, TCP_USER_TIMEOUT};
use haul_seal::Cipher;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub(crate) const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
const MAGIC: &[u8; 4] = b"HAUL";
/// A Noise handshake message of NNpsk0 is at most 32 + 16 + payload bytes; haul sends no payload.
pub(crate) const HANDSHAKE_MSG_MAX: usize = 128;

/// Preamble bit: this side can seal frames with AEGIS-128L.
const OFFER_AEGIS: u8 = 1;

/// The environment variable that picks the frame cipher: `chacha20-poly1305` withholds the
/// AEGIS-128L offer (for comparisons, or a CPU whose AES instructions are suspect); `auto` or
/// unset offers what the CPU runs fast.
pub const CIPHER_ENV: &str = "HAUL_CIPHER";

/// The ciphers this side offers, as preamble bits.
pub(crate) fn offers() -> u8 {
    let forced_chacha = std::env::var(CIPHER_ENV)
        .map(|v| v.eq_ignore_ascii_case("chacha20-poly1305"))
        .unwrap_or(false);
    if haul_seal::aegis_available() && !forced_chacha {
        OFFER_AEGIS
    } else {
        0
    }
}

/// The preamble with the cipher offers `offers` (only sent with a key).
pub(crate) fn preamble_offering(secure: bool, offers: u8) -> [u8; 8] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        v[0],
        v[1],
        u8::from(secure),
        if secure { offers } else { 0 },
    ]
}

/// What a preamble says: (protocol version, keyed, offered ciphers).
fn describe(p: &[u8; 8]) -> Result<(u16, bool, u8), WireError> {
    if &p[..4] != MAGIC || p[7] & !OFFER_AEGIS != 0 || p[6] > 1 {
        return Err(WireError::Preamble(
            "the peer is not a haul agent (bad preamble)".into(),
        ));
    }
    Ok((u16::from_be_bytes([p[4], p[5]]), p[6] == 1, p[7]))
}

/// The frames' cipher for two preambles: AEGIS-128L when both offer it.
pub(crate) fn agreed_cipher(ours: &[u8; 8], theirs: &[u8; 8]) -> Cipher {
    if ours[7] & theirs[7] & OFFER_AEGIS != 0 {
        Cipher::Aegis128L
    } else {
        Cipher::ChaCha20Poly1305
    }
}

fn mode(secure: bool) -> &'static str {
    if secure {
        "a key (--key)"
    } else {
        "no key (--insecure)"
    }
}

fn io_err(during: &'static str) -> impl Fn(std::io::Error) -> WireError {
    move |e| WireError::from_read(e, during, HANDSHAKE_TIMEOUT.as_secs())
}

/// What the handshake needs of its socket: a byte stream whose reads can be given a timeout.
/// haul's is a `TcpStream`; the fuzz target drives the responder from memory.
pub trait HandshakeIo: Read + Write {
    /// `SO_RCVTIMEO`: a blocked read returns `WouldBlock` after `timeout`.
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl HandshakeIo for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

fn write_msg(s: &mut impl Write, msg: &[u8]) -> Result<(), WireError> {
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes();
    s.write_all(&len)
        .and_then(|()| s.write_all(msg))
        .map_err(|err| WireError::Io { op: "write", err })
}

/// `read_exact` that must finish by `deadline` in total: the handshake timeout bounds the whole
/// handshake, so a peer trickling one byte at a time cannot hold a slot.
fn read_by(s: &mut impl HandshakeIo, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(buf.get_mut(filled..).unwrap_or_default()) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_msg<'b>(
    s: &mut impl HandshakeIo,
    buf: &'b mut [u8; HANDSHAKE_MSG_MAX],
    deadline: Instant,
) -> Result<&'b [u8], WireError> {
    let mut len = [0u8; 4];
    read_by(s, &mut len, deadline).map_err(io_err("authentication"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > HANDSHAKE_MSG_MAX {
        return Err(WireError::FrameTooLarge {
            len,
            limit: HANDSHAKE_MSG_MAX,
        });
    }
    let msg = buf.get_mut(..len).ok_or(WireError::FrameTooShort { len })?;
    read_by(s, msg, deadline).map_err(io_err("authentication"))?;
    Ok(msg)
}

pub(crate) fn builder<'a>(
    key: &'a Key,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, WireError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| WireError::Auth(format!("noise parameters: {e}")))?;
    snow::Builder::new(params)
        .psk(0, &key.0)
        .and_then(|b| b.prologue(prologue))
        .map_err(|e| WireError::Auth(format!("noise setup: {e}")))
}

/// The session's two keys, (sending, receiving), once the handshake is complete. Noise's split
/// gives the initiator's sending key first; the responder sends with the second.
fn session_keys(
    mut hs: snow::HandshakeState,
    cipher: Cipher,
) -> Result<Option<(FrameKey, FrameKey)>, WireError> {
    if !hs.is_handshake_finished() {
        return Err(WireError::Auth("noise: handshake not finished".into()));
    }
    let (first, second) = hs.dangerously_get_raw_split();
    let key = |k: &[u8; 32]| {
        FrameKey::for_session(cipher, k).ok_or_else(|| {
            WireError::Auth(format!("{} is not available on this CPU", cipher.name()))
        })
    };
    log::debug!("frames are sealed with {}", cipher.name());
    Ok(Some(if hs.is_initiator() {
        (key(&first)?, key(&second)?)
    } else {
        (key(&second)?, key(&first)?)
    }))
}

/// The two halves of an authenticated connection. `read_timeout` is the socket's: the source
/// sets `IDLE_TIMEOUT`; the destination none, since each of its waits on the peer has its own
/// timeout (`Conn::recv`) and a silence while it restores is no fault of the peer's. `idle`
/// bounds a blocked write.
/// The connection's halves over `stream`. With `silence`, the reader gives the connection up
/// once neither direction moved for that long (the socket's read timeout is its tick, a
/// quarter of it); without, it waits for the peer as long as TCP keeps the connection.
fn halves(
    stream: TcpStream,
    keys: Option<(FrameKey, FrameKey)>,
    silence: Option<Duration>,
    idle: Duration,
) -> Result<(SendHalf, RecvHalf), WireError> {
    stream
        .set_read_timeout(silence.map(|s| s / SILENCE_TICKS))
        .map_err(|err| WireError::Io {
            op: "set timeout",
            err,
        })?;
    let _ = stream.set_nodelay(true);
    // A peer that vanishes without FIN (link down, packets dropped) must not leave a write
    // blocked for TCP's retransmission timeout (~15 min) while the container is frozen:
    // unacknowledged data aborts the connection after TCP_USER_TIMEOUT, a blocked write
    // returns after the idle timeout, and keepalive probes find a silent dead peer.
    let _ = stream.set_write_timeout(Some(idle));
    let ms = u32::try_from(TCP_USER_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    let _ = rustix::net::sockopt::set_tcp_user_timeout(&stream, ms);
    let _ = rustix::net::sockopt::set_socket_keepalive(&stream, true);
    let _ = rustix::net::sockopt::set_tcp_keepidle(&stream, KEEPALIVE_IDLE);
    let _ = rustix::net::sockopt::set_tcp_keepintvl(&stream, KEEPALIVE_IDLE);
    let _ = rustix::net::sockopt::set_tcp_keepcnt(&stream, 3);
    let rx = stream.try_clone().map_err(|err| WireError::Io {
        op: "clone socket",
        err,
    })?;
    let (send, recv) = match keys {
        Some((s, r)) => (Some(s), Some(r)),
        None => (None, None),
    };
    let rx = RecvHalf::new(rx, recv, idle.as_secs());
    Ok((
        SendHalf::new(stream, send),
        match silence {
            Some(s) => rx.with_silence(s),
            None => rx,
        },
    ))
}

/// Read timeouts per `silence`: how often a silent connection is looked at.
const SILENCE_TICKS: u32 = 4;

/// Source side (Noise initiator). `key = None` is plaintext and needs `--insecure`.
pub fn connect(stream: TcpStream, key: Option<&Key>) -> Result<(SendHalf, RecvHalf), WireError> {
    connect_offering(stream, key, offers())
}

fn connect_offering(
    mut stream: TcpStream,
    key: Option<&Key>,
    offers: u8,
) -> Result<(SendHalf, RecvHalf), WireError> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|err| WireError::Io {
            op: "set timeout",
            err,
        })?;
    let ours = preamble_offering(key.is_some(), offers);
    stream
        .write_all(&ours)
        .map_err(|err| WireError::Io { op: "write", err })?;
    let mut theirs = [0u8; 8];
    read_by(&mut stream, &mut theirs, deadline).map_err(io_err("the protocol preamble"))?;
    let (version, secure, _) = describe(&theirs)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Preamble(format!(
            "the destination speaks haul protocol {version}, this haul speaks {PROTOCOL_VERSION}: install the same haul version on both hosts"
        )));
    }
    if secure != key.is_some() {
        return Err(WireError::Preamble(format!(
            "the destination runs with {}, this side with {}: use the same mode on both",
            mode(secure),
            mode(key.is_some())
        )));
    }
    let Some(key) = key else {
        return halves(stream, None, Some(IDLE_TIMEOUT), IDLE_TIMEOUT);
    };
    let mut prologue = [0u8; 16];
    prologue[..8].copy_from_slice(&ours);
    prologue[8..].copy_from_slice(&theirs);
    let mut hs = builder(key, &prologue)?
        .build_initiator()
        .map_err(|e| WireError::Auth(format!("noise: {e}")))?;
    let mut out = [0u8; HANDSHAKE_MSG_MAX];
    let n = hs
        .write_message(&[], &mut out)
        .map_err(|e| WireError::Auth(format!("noise: {e}")))?;
    write_msg(&mut stream, out.get(..n).unwrap_or_default())?;
    let mut buf = [0u8; HANDSHAKE_MSG_MAX];
    let msg = match read_msg(&mut stream, &mut buf, deadline) {
        Ok(m) => m,
        Err(WireError::Closed { .. }) | Err(WireError::Io { .. }) => {
            return Err(WireError::Auth(
                "the destination refused the authentication: the keys differ (copy the same key file to both hosts)".into(),
            ))
        }
        Err(e) => return Err(e),
    };
    let mut payload = [0u8; HANDSHAKE_MSG_MAX];
    hs.read_message(msg, &mut payload).map_err(|_| {
        WireError::Auth("the destination failed authentication: the keys differ".into())
    })?;
    let cipher = agreed_cipher(&ours, &theirs);
    halves(
        stream,
        session_keys(hs, cipher)?,
        Some(IDLE_TIMEOUT),
        IDLE_TIMEOUT,
    )
}

/// Destination side (Noise responder). The whole handshake must finish within
/// `HANDSHAKE_TIMEOUT`; afterwards a blocked write gives up after `idle` (`--idle-timeout`).
pub fn accept(
    mut stream: TcpStream,
    key: Option<&Key>,
    idle: Duration,
) -> Result<(SendHalf, RecvHalf), WireError> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let _ = stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let keys = respond(&mut stream, key, deadline)?;
    halves(stream, keys, None, idle)
}

/// The responder's handshake on `s`, finished by `deadline`: reads the initiator's preamble,
/// answers with ours, checks version and mode, then (with a key) reads Noise message 1 and
/// answers message 2. Returns the session keys (`None`: plaintext).
pub fn respond(
    s: &mut impl HandshakeIo,
    key: Option<&Key>,
    deadline: Instant,
) -> Result<Option<(FrameKey, FrameKey)>, WireError> {
    respond_offering(s, key, deadline, offers())
}

/// `respond` offering the ciphers `offers` (the fuzz targets fix them, so that their seeds do
/// not depend on the CPU's AES instructions).
pub(crate) fn respond_offering(
    s: &mut impl HandshakeIo,
    key: Option<&Key>,
    deadline: Instant,
    offers: u8,
) -> Result<Option<(FrameKey, FrameKey)>, WireError> {
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|err| WireError::Io {
            op: "set timeout",
            err,
        })?;
    let mut theirs = [0u8; 8];
    read_by(s, &mut theirs, deadline).map_err(io_err("the protocol preamble"))?;
    let ours = preamble_offering(key.is_some(), offers);
    // Answer before judging, so the source can say what differs.
    s.write_all(&ours)
        .map_err(|err| WireError::Io { op: "write", err })?;
    let (version, secure, _) = describe(&theirs)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Preamble(format!(
            "peer speaks haul protocol {version}, this haul speaks {PROTOCOL_VERSION}"
        )));
    }
    if secure != key.is_some() {
        return Err(WireError::Preamble(format!(
            "peer runs with {}, this side with {}",
            mode(secure),
            mode(key.is_some())
        )));
    }
    let Some(key) = key else {
        return Ok(None);
    };
    let mut prologue = [0u8; 16];
    prologue[..8].copy_from_slice(&theirs);
    prologue[8..].copy_from_slice(&ours);
    let mut hs = builder(key, &prologue)?
        .build_responder()
        .map_err(|e| WireError::Auth(format!("noise: {e}")))?;
    let mut buf = [0u8; HANDSHAKE_MSG_MAX];
    let msg = read_msg(s, &mut buf, deadline)?;
    let mut payload = [0u8; HANDSHAKE_MSG_MAX];
    hs.read_message(msg, &mut payload).map_err(|_| {
        WireError::Auth("peer failed authentication: its key differs from ours".into())
    })?;
    let mut out = [0u8; HANDSHAKE_MSG_MAX];
    let n = hs
        .write_message(&[], &mut out)
        .map_err(|e| WireError::Auth(format!("noise: {e}")))?;
    write_msg(s, out.get(..n).unwrap_or_default())?;
    session_keys(hs, agreed_cipher(&ours, &theirs))
}

#[cfg(test)]
mod tests {
    use super::super::frame::Kind;
    use super::*;
    use std::net::TcpListener;

    type Side = Result<(SendHalf, RecvHalf), WireError>;

    fn pair(client_key: Option<Key>, server_key: Option<Key>) -> (Side, Side) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            accept(s, server_key.as_ref(), IDLE_TIMEOUT)
        });
        let c = connect(TcpStream::connect(addr).unwrap(), client_key.as_ref());
        (c, server.join().unwrap())
    }

    /// AEGIS-128L only when both preambles offer it; unknown offer bits are no haul preamble.
    #[test]
    fn the_cipher_is_aegis_only_when_both_offer_it() {
        let p = |offers| preamble_offering(true, offers);
        assert_eq!(agreed_cipher(&p(1), &p(1)), Cipher::Aegis128L);
        for (a, b) in [(0, 1), (1, 0), (0, 0)] {
            assert_eq!(agreed_cipher(&p(a), &p(b)), Cipher::ChaCha20Poly1305);
        }
        assert_eq!(preamble_offering(false, 1)[7], 0, "no offers without a key");
        assert_eq!(describe(&p(1)).unwrap(), (PROTOCOL_VERSION, true, 1));
        for bad in [2u8, 0x80, 0xff] {
            assert!(matches!(describe(&p(bad)), Err(WireError::Preamble(_))));
        }
    }

    /// A real pair picks AEGIS-128L on a CPU with AES instructions, ChaCha20-Poly1305 when the
    /// source withholds the offer (`HAUL_CIPHER=chacha20-poly1305`), and frames cross either way.
    #[test]
    fn both_sides_agree_on_the_cipher_and_frames_cross() {
        let k = Key::generate().unwrap();
        let want = if haul_seal::aegis_available() {
            Cipher::Aegis128L
        } else {
            Cipher::ChaCha20Poly1305
        };
        for (offers, cipher) in [(offers(), want), (0, Cipher::ChaCha20Poly1305)] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let sk = k.clone();
            let server = std::thread::spawn(move || {
                let (s, _) = l.accept().unwrap();
                accept(s, Some(&sk), IDLE_TIMEOUT)
            });
            let (mut ctx, mut crx) =
                connect_offering(TcpStream::connect(addr).unwrap(), Some(&k), offers).unwrap();
            let (mut stx, mut srx) = server.join().unwrap().unwrap();
            for half in [ctx.cipher(), crx.cipher(), stx.cipher(), srx.cipher()] {
                assert_eq!(half, Some(cipher));
            }
            let big: Vec<u8> = (0..super::super::frame::PAYLOAD_MAX)
                .map(|i| i as u8)
                .collect();
            for _ in 0..3 {
                ctx.send(Kind::PageData, &big).unwrap();
                let (kind, p) = srx.recv("test").unwrap();
                assert_eq!((kind, p), (Kind::PageData, &big[..]));
                stx.send(Kind::Control, b"ack").unwrap();
                assert_eq!(crx.recv("test").unwrap().1, b"ack");
            }
        }
    }

    #[test]
    fn same_key_authenticates_and_frames_round_trip() {
        let k = Key::generate().unwrap();
        let (c, s) = pair(Some(k.clone()), Some(k));
        let (mut ctx, mut crx) = c.unwrap();
        let (mut stx, mut srx) = s.unwrap();
        ctx.send(Kind::Control, b"hello").unwrap();
        let (kind, p) = srx.recv("test").unwrap();
        assert_eq!((kind, p), (Kind::Control, &b"hello"[..]));
        let big = vec![7u8; super::super::frame::PAYLOAD_MAX];
        stx.send(Kind::PageData, &big).unwrap();
        let (kind, p) = crx.recv("test").unwrap();
        assert_eq!(kind, Kind::PageData);
        assert_eq!(p, &big[..]);
        // One byte more than PAYLOAD_MAX does not fit a frame: refused, not cut.
        let over = vec![7u8; super::super::frame::PAYLOAD_MAX + 1];
        assert!(matches!(
            stx.send(Kind::PageData, &over),
            Err(WireError::FrameTooLarge { limit, .. }) if limit == crate::limits::FRAME_PLAINTEXT_MAX
        ));
        assert!(stx
            .send(Kind::PageData, &vec![0u8; crate::limits::FRAME_MAX + 1])
            .is_err());
    }

    /// Both ends get TCP_USER_TIMEOUT and keepalive; the destination's socket has no read
    /// timeout (its waits time themselves) and a write timeout of its idle timeout.
    #[test]
    fn connections_carry_the_tcp_timeouts_of_the_limits() {
        use crate::limits::{KEEPALIVE_IDLE, TCP_USER_TIMEOUT};
        use rustix::net::sockopt;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let idle = Duration::from_secs(7);
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let raw = s.try_clone().unwrap();
            let halves = accept(s, None, idle).unwrap();
            (raw, halves)
        });
        let s = TcpStream::connect(addr).unwrap();
        let client_raw = s.try_clone().unwrap();
        let _client = connect(s, None).unwrap();
        let (raw, _halves) = server.join().unwrap();
        for r in [&raw, &client_raw] {
            assert_eq!(
                u128::from(sockopt::tcp_user_timeout(r).unwrap()),
                TCP_USER_TIMEOUT.as_millis()
            );
            assert!(sockopt::socket_keepalive(r).unwrap());
            assert_eq!(sockopt::tcp_keepidle(r).unwrap(), KEEPALIVE_IDLE);
        }
        assert_eq!(raw.read_timeout().unwrap(), None);
        assert_eq!(raw.write_timeout().unwrap(), Some(idle));
        // The source's reader looks at the connection every quarter of the idle timeout and
        // gives up only when neither direction moved for all of it (mux::Liveness).
        assert_eq!(
            client_raw.read_timeout().unwrap(),
            Some(IDLE_TIMEOUT / SILENCE_TICKS)
        );
    }

    /// The deadline bounds the whole handshake, not each read: a preamble completed before it is
    /// answered; one whose last byte comes after it is refused as a timeout.
    #[test]
    fn the_handshake_deadline_covers_every_read() {
        let deadline = Duration::from_millis(600);
        for (pause, ok) in [
            (Duration::from_millis(150), true),
            (Duration::from_millis(1000), false),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let peer = std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let p = preamble_offering(false, 0);
                s.write_all(&p[..4]).unwrap();
                std::thread::sleep(pause);
                let _ = s.write_all(&p[4..]);
                std::thread::sleep(Duration::from_millis(300));
            });
            let (mut s, _) = l.accept().unwrap();
            let started = Instant::now();
            let got = respond(&mut s, None, started + deadline);
            let waited = started.elapsed();
            peer.join().unwrap();
            if ok {
                assert!(matches!(got, Ok(None)), "{pause:?}: {got:?}");
            } else {
                assert!(
                    matches!(got, Err(WireError::Timeout { .. })),
                    "{pause:?}: {got:?}"
                );
                assert!(
                    waited >= deadline && waited < deadline + Duration::from_millis(300),
                    "{waited:?}"
                );
            }
        }
    }

    #[test]
    fn wrong_key_is_refused_on_both_sides() {
        let (c, s) = pair(
            Some(Key::generate().unwrap()),
            Some(Key::generate().unwrap()),
        );
        let ce = c.err().unwrap().to_string();
        let se = s.err().unwrap().to_string();
        assert!(ce.contains("keys differ"), "{ce}");
        assert!(se.contains("failed authentication"), "{se}");
    }

    #[test]
    fn insecure_against_keyed_is_refused_with_the_reason() {
        let (c, s) = pair(None, Some(Key::generate().unwrap()));
        assert!(c
            .err()
            .unwrap()
            .to_string()
            .contains("destination runs with a key"));
        assert!(s.is_err());
    }

    #[test]
    fn insecure_both_sides_works() {
        let (c, s) = pair(None, None);
        let (mut ctx, _) = c.unwrap();
        let (_, mut srx) = s.unwrap();
        ctx.send(Kind::FileData, b"x").unwrap();
        assert_eq!(srx.recv("t").unwrap(), (Kind::FileData, &b"x"[..]));
    }

    #[test]
    fn oversized_frame_header_is_refused_before_reading() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let (_, mut rx) = accept(s, None, IDLE_TIMEOUT).unwrap();
            rx.recv("test").map(|_| ()).unwrap_err().to_string()
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&preamble_offering(false, 0)).unwrap();
        let mut p = [0u8; 8];
        s.read_exact(&mut p).unwrap();
        s.write_all(&(crate::limits::FRAME_MAX as u32 + 1).to_be_bytes())
            .unwrap();
        let e = t.join().unwrap();
        assert!(
            e.contains(&format!("limit is {}", crate::limits::FRAME_MAX)),
            "{e}"
        );
    }

    #[test]
    fn garbage_instead_of_a_preamble() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            accept(s, None, IDLE_TIMEOUT).err().unwrap().to_string()
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n").unwrap();
        assert!(t.join().unwrap().contains("not a haul agent"));
    }
}
