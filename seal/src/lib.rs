//! ChaCha20-Poly1305 in place, exactly as Noise's transport messages use it: the nonce is four
//! zero bytes and then the message counter little-endian, and there is no associated data. A
//! sealed message is byte for byte what snow's `StatelessTransportState::write_message` makes.
//!
//! Why a crate of its own: the cipher's code is generic (`ChaChaPoly1305<C, N>`), and generic
//! code is compiled in the crate that names the concrete type. Inside haul it would be compiled
//! with haul's own unoptimized dev profile, and an encrypted 64 KiB relay round trip in a test
//! build took ~27 ms instead of ~1 ms. Here the concrete functions are compiled once, optimized
//! in every profile (the workspace's `profile.dev.package.haul-seal`), and haul calls them.
#![forbid(unsafe_code)]

use chacha20poly1305::{AeadInPlace, ChaCha20Poly1305, KeyInit, Nonce, Tag};

/// Bytes of the authentication tag after each sealed message.
pub const TAG_LEN: usize = 16;

/// One direction's key of a session. The key is zeroed when dropped.
pub struct SealKey(ChaCha20Poly1305);

/// Never shows the key.
impl core::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Why a message was not sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// Noise reserves the counter value 2^64-1: no message may use it.
    NonceReserved,
    /// The tag does not match: the message was changed, replayed, reordered or sealed with
    /// another key.
    Forged,
}

impl SealKey {
    pub fn new(key: &[u8; 32]) -> SealKey {
        SealKey(ChaCha20Poly1305::new(&(*key).into()))
    }

    /// Encrypts `buf` in place as message number `n`; returns the tag that follows it.
    pub fn seal(&self, n: u64, buf: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        let nonce = nonce(n)?;
        self.0
            .encrypt_in_place_detached(&nonce, &[], buf)
            .map(Into::into)
            .map_err(|_| SealError::NonceReserved)
    }

    /// Checks `tag` and decrypts `buf` in place as message number `n`. On failure `buf` is
    /// left encrypted.
    pub fn open(&self, n: u64, buf: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), SealError> {
        let nonce = nonce(n)?;
        self.0
            .decrypt_in_place_detached(&nonce, &[], buf, &Tag::from(*tag))
            .map_err(|_| SealError::Forged)
    }
}

fn nonce(n: u64) -> Result<Nonce, SealError> {
    if n == u64::MAX {
        return Err(SealError::NonceReserved);
    }
    let mut nonce = [0u8; 12];
    if let Some(tail) = nonce.get_mut(4..) {
        tail.copy_from_slice(&n.to_le_bytes());
    }
    Ok(Nonce::from(nonce))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a finished NNpsk0 handshake (initiator, responder), as haul runs it.
    fn handshake() -> (snow::HandshakeState, snow::HandshakeState) {
        let params: snow::params::NoiseParams =
            "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
        let psk = [9u8; 32];
        let mut i = snow::Builder::new(params.clone())
            .psk(0, &psk)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = snow::Builder::new(params)
            .psk(0, &psk)
            .unwrap()
            .build_responder()
            .unwrap();
        let (mut m, mut p) = ([0u8; 128], [0u8; 128]);
        let n = i.write_message(&[], &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(&[], &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        (i, r)
    }

    /// Messages sealed in place open with snow's transport state, and snow's open in place:
    /// haul's wire format is Noise's.
    #[test]
    fn messages_are_byte_for_byte_snows_transport_messages() {
        let (mut i, r) = handshake();
        let (k1, k2) = i.dangerously_get_raw_split();
        let (send, recv) = (SealKey::new(&k1), SealKey::new(&k2));
        let peer = r.into_stateless_transport_mode().unwrap();
        for n in [0u64, 1, 2, 1000, 1 << 40, u64::MAX - 1] {
            let msg: Vec<u8> = (0..1000u32).map(|x| (x as u8) ^ (n as u8)).collect();
            let mut ours = msg.clone();
            let tag = send.seal(n, &mut ours).unwrap();
            ours.extend_from_slice(&tag);
            let mut snows = vec![0u8; msg.len() + TAG_LEN];
            let len = peer.write_message(n, &msg, &mut snows).unwrap();
            assert_eq!(len, msg.len() + TAG_LEN);
            let mut out = vec![0u8; msg.len()];
            assert_eq!(peer.read_message(n, &ours, &mut out).unwrap(), msg.len());
            assert_eq!(out, msg, "snow opens haul's message {n}");
            let (text, tag) = snows.split_at_mut(msg.len());
            recv.open(n, text, &tag.try_into().unwrap()).unwrap();
            assert_eq!(text, &msg[..], "haul opens snow's message {n}");
        }
    }

    #[test]
    fn a_changed_byte_a_replay_or_the_wrong_direction_does_not_open() {
        let (mut i, _) = handshake();
        let (k1, k2) = i.dangerously_get_raw_split();
        let (send, recv, other) = (SealKey::new(&k1), SealKey::new(&k1), SealKey::new(&k2));
        let mut msg = b"kind and payload".to_vec();
        let tag = send.seal(5, &mut msg).unwrap();
        for flip in 0..msg.len() {
            let mut m = msg.clone();
            m[flip] ^= 1;
            assert_eq!(recv.open(5, &mut m, &tag), Err(SealError::Forged));
        }
        let mut bad_tag = tag;
        bad_tag[0] ^= 0x80;
        assert_eq!(
            recv.open(5, &mut msg.clone(), &bad_tag),
            Err(SealError::Forged)
        );
        assert!(
            recv.open(4, &mut msg.clone(), &tag).is_err(),
            "another nonce"
        );
        assert!(other.open(5, &mut msg.clone(), &tag).is_err(), "other key");
        recv.open(5, &mut msg, &tag).unwrap();
        assert_eq!(msg, b"kind and payload");
    }

    #[test]
    fn the_reserved_last_nonce_is_never_used() {
        let k = SealKey::new(&[1; 32]);
        let mut buf = [0u8; 8];
        assert_eq!(k.seal(u64::MAX, &mut buf), Err(SealError::NonceReserved));
        assert_eq!(
            k.open(u64::MAX, &mut buf, &[0; TAG_LEN]),
            Err(SealError::NonceReserved)
        );
    }
}
