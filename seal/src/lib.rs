//! haul's frame ciphers, sealing and opening in place with a 16-byte tag and the frame counter
//! as nonce, no associated data:
//!
//! - **ChaCha20-Poly1305**, exactly as Noise's transport messages use it: the nonce is four
//!   zero bytes and then the counter little-endian. A sealed message is byte for byte what
//!   snow's `StatelessTransportState::write_message` makes. Fast on any CPU.
//! - **AEGIS-128L** (RFC 10032; `aegis`, `hw`): the nonce is the counter little-endian and
//!   eight zero bytes; the 16-byte key is derived from the Noise session key (`derive_aegis_key`).
//!   Built from AES rounds, so only offered where the CPU has AES instructions (x86_64 AES-NI,
//!   aarch64's Cryptography Extension); there it seals and opens several times faster than
//!   ChaCha20-Poly1305, which matters when one core seals a migration's pages.
//!
//! Why a crate of its own: the ChaCha20-Poly1305 code is generic (`ChaChaPoly1305<C, N>`), and
//! generic code is compiled in the crate that names the concrete type. Inside haul it would be
//! compiled with haul's own unoptimized dev profile, and an encrypted 64 KiB relay round trip in
//! a test build took ~27 ms instead of ~1 ms. Here the concrete functions are compiled once,
//! optimized in every profile (the workspace's `profile.dev.package.haul-seal`), and haul calls
//! them.
#![deny(unsafe_code)]

mod aegis;
mod hw;

use blake2::digest::{FixedOutput, Update};
use chacha20poly1305::{AeadInPlace, ChaCha20Poly1305, KeyInit, Nonce, Tag};

/// Bytes of the authentication tag after each sealed message.
pub const TAG_LEN: usize = 16;

/// A frame cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    ChaCha20Poly1305,
    Aegis128L,
}

impl Cipher {
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "ChaCha20-Poly1305",
            Cipher::Aegis128L => "AEGIS-128L",
        }
    }
}

/// Whether this CPU can run AEGIS-128L with AES instructions (otherwise haul does not offer it).
pub fn aegis_available() -> bool {
    hw::Engine::detect().is_some()
}

/// The AEGIS-128L key of a session direction, from that direction's 32-byte Noise key: the
/// first 16 bytes of keyed BLAKE2s-256 (the Noise key as its key) of a fixed label. Distinct
/// from anything else the Noise key is used for.
pub fn derive_aegis_key(noise_key: &[u8; 32]) -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(mut mac) = blake2::Blake2sMac256::new_from_slice(noise_key) {
        mac.update(b"haul frames: AEGIS-128L key v1");
        let full = mac.finalize_fixed();
        out.copy_from_slice(&full[..16]);
    }
    out
}

/// One direction's key of a session. The key is zeroed when dropped.
pub struct SealKey(Inner);

enum Inner {
    ChaCha(ChaCha20Poly1305),
    Aegis { key: [u8; 16], engine: hw::Engine },
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Inner::Aegis { key, .. } = self {
            *key = [0; 16];
            core::hint::black_box(key);
        }
    }
}

/// Never shows the key.
impl core::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SealKey({}, ..)", self.cipher().name())
    }
}

/// Why a message was not sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The counter value 2^64-1 is reserved (Noise's rule, kept for both ciphers): no message
    /// may use it.
    NonceReserved,
    /// The tag does not match: the message was changed, replayed, reordered or sealed with
    /// another key.
    Forged,
}

impl SealKey {
    /// A ChaCha20-Poly1305 key.
    pub fn new(key: &[u8; 32]) -> SealKey {
        SealKey(Inner::ChaCha(ChaCha20Poly1305::new(&(*key).into())))
    }

    /// An AEGIS-128L key, or `None` when this CPU has no AES instructions.
    pub fn aegis128l(key: &[u8; 16]) -> Option<SealKey> {
        let engine = hw::Engine::detect()?;
        Some(SealKey(Inner::Aegis { key: *key, engine }))
    }

    /// The key of `cipher` for one direction of a Noise session whose split key is `noise_key`.
    /// `None` when the cipher cannot run on this CPU.
    pub fn for_session(cipher: Cipher, noise_key: &[u8; 32]) -> Option<SealKey> {
        match cipher {
            Cipher::ChaCha20Poly1305 => Some(SealKey::new(noise_key)),
            Cipher::Aegis128L => SealKey::aegis128l(&derive_aegis_key(noise_key)),
        }
    }

    pub fn cipher(&self) -> Cipher {
        match self.0 {
            Inner::ChaCha(_) => Cipher::ChaCha20Poly1305,
            Inner::Aegis { .. } => Cipher::Aegis128L,
        }
    }

    /// Encrypts `buf` in place as message number `n`; returns the tag that follows it.
    pub fn seal(&self, n: u64, buf: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        if n == u64::MAX {
            return Err(SealError::NonceReserved);
        }
        match &self.0 {
            Inner::ChaCha(c) => c
                .encrypt_in_place_detached(&chacha_nonce(n), &[], buf)
                .map(Into::into)
                .map_err(|_| SealError::NonceReserved),
            Inner::Aegis { key, engine } => Ok(engine.seal(key, &aegis_nonce(n), &[], buf)),
        }
    }

    /// Checks `tag` and decrypts `buf` in place as message number `n`. On failure `buf` holds
    /// no plaintext: ChaCha20-Poly1305 leaves it encrypted, AEGIS-128L (which decrypts while
    /// it checks) zeroes it.
    pub fn open(&self, n: u64, buf: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), SealError> {
        if n == u64::MAX {
            return Err(SealError::NonceReserved);
        }
        match &self.0 {
            Inner::ChaCha(c) => c
                .decrypt_in_place_detached(&chacha_nonce(n), &[], buf, &Tag::from(*tag))
                .map_err(|_| SealError::Forged),
            Inner::Aegis { key, engine } => {
                let want = engine.open(key, &aegis_nonce(n), &[], buf);
                if aegis::tags_equal(&want, tag) {
                    Ok(())
                } else {
                    buf.fill(0);
                    Err(SealError::Forged)
                }
            }
        }
    }
}

fn chacha_nonce(n: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    if let Some(tail) = nonce.get_mut(4..) {
        tail.copy_from_slice(&n.to_le_bytes());
    }
    Nonce::from(nonce)
}

fn aegis_nonce(n: u64) -> [u8; 16] {
    let mut nonce = [0u8; 16];
    if let Some(head) = nonce.get_mut(..8) {
        head.copy_from_slice(&n.to_le_bytes());
    }
    nonce
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

    fn hex(s: &str) -> Vec<u8> {
        if s == "-" {
            return Vec::new();
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn arr16(v: &[u8]) -> [u8; 16] {
        v.try_into().unwrap()
    }

    /// This CPU's AES engine; the AEGIS tests need one (x86_64 with AES-NI, aarch64 with the
    /// Cryptography Extension, QEMU's emulated aarch64 too).
    fn engine() -> Option<hw::Engine> {
        let e = hw::Engine::detect();
        if e.is_none() {
            eprintln!(
                "this CPU has no AES instructions: AEGIS-128L is not offered here, not tested"
            );
        }
        e
    }

    /// RFC 10032's first AEGIS-128L test vector (one zero block, no associated data).
    #[test]
    fn aegis_matches_the_rfc_test_vector() {
        let Some(e) = engine() else { return };
        let key = arr16(&hex("10010000000000000000000000000000"));
        let nonce = arr16(&hex("10000200000000000000000000000000"));
        let mut msg = [0u8; 16];
        let tag = e.seal(&key, &nonce, &[], &mut msg);
        assert_eq!(msg.to_vec(), hex("c1c0e58bd913006feba00f4b3cc3594e"));
        assert_eq!(tag.to_vec(), hex("abe0ece80c24868a226a35d16bdae37a"));
        let want = e.open(&key, &nonce, &[], &mut msg);
        assert_eq!(want, tag);
        assert_eq!(msg, [0u8; 16]);
    }

    /// All 479 of Wycheproof's AEGIS-128L vectors (fixtures/aegis128l/wycheproof.txt): valid
    /// ones seal to the given ciphertext and tag and open again; invalid ones (modified tags,
    /// the paper's old tag) do not open.
    #[test]
    fn aegis_passes_wycheproof() {
        let Some(e) = engine() else { return };
        let text = include_str!("../../fixtures/aegis128l/wycheproof.txt");
        let (mut valid, mut invalid) = (0, 0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 8, "{line}");
            let (id, result) = (f[0], f[1]);
            let (key, iv, ad) = (arr16(&hex(f[2])), arr16(&hex(f[3])), hex(f[4]));
            let (msg, ct, tag) = (hex(f[5]), hex(f[6]), arr16(&hex(f[7])));
            let mut buf = ct.clone();
            let want = e.open(&key, &iv, &ad, &mut buf);
            match result {
                "valid" => {
                    valid += 1;
                    assert!(aegis::tags_equal(&want, &tag), "vector {id}: tag");
                    assert_eq!(buf, msg, "vector {id}: plaintext");
                    let mut sealed = msg.clone();
                    assert_eq!(e.seal(&key, &iv, &ad, &mut sealed), tag, "vector {id}");
                    assert_eq!(sealed, ct, "vector {id}: ciphertext");
                }
                "invalid" => {
                    invalid += 1;
                    assert!(!aegis::tags_equal(&want, &tag), "vector {id} opened");
                }
                other => panic!("vector {id}: result {other}"),
            }
        }
        assert_eq!((valid, invalid), (367, 112));
    }

    /// Through `SealKey`: every length around the 32-byte block and a whole frame round-trip;
    /// a changed byte, another counter or another key do not open, and leave no plaintext.
    #[test]
    fn aegis_keys_seal_and_open_frames() {
        let Some(_) = engine() else { return };
        let (mut i, _) = handshake();
        let (k1, k2) = i.dangerously_get_raw_split();
        let send = SealKey::for_session(Cipher::Aegis128L, &k1).unwrap();
        let recv = SealKey::for_session(Cipher::Aegis128L, &k1).unwrap();
        let other = SealKey::for_session(Cipher::Aegis128L, &k2).unwrap();
        assert_eq!(send.cipher(), Cipher::Aegis128L);
        let chacha = SealKey::new(&k1);
        for len in (0..100).chain([4095, 4096, 4097, 65518]) {
            let msg: Vec<u8> = (0..len).map(|x| (x * 7 + len) as u8).collect();
            let mut buf = msg.clone();
            let tag = send.seal(len as u64, &mut buf).unwrap();
            if len >= 16 {
                assert_ne!(buf, msg, "{len} bytes were not encrypted");
            }
            let mut plain = buf.clone();
            recv.open(len as u64, &mut plain, &tag).unwrap();
            assert_eq!(plain, msg, "{len} bytes");
            let mut b = buf.clone();
            assert_eq!(
                recv.open(len as u64 + 1, &mut b, &tag),
                Err(SealError::Forged)
            );
            assert!(b.iter().all(|&x| x == 0), "a forged message left plaintext");
            let mut b = buf.clone();
            assert_eq!(other.open(len as u64, &mut b, &tag), Err(SealError::Forged));
            let mut b = buf.clone();
            assert!(
                chacha.open(len as u64, &mut b, &tag).is_err(),
                "ChaCha opened AEGIS"
            );
            if let Some(first) = buf.first_mut() {
                *first ^= 0x40;
                assert_eq!(
                    recv.open(len as u64, &mut buf, &tag),
                    Err(SealError::Forged)
                );
            }
        }
        let mut buf = [0u8; 8];
        assert_eq!(send.seal(u64::MAX, &mut buf), Err(SealError::NonceReserved));
    }

    #[test]
    fn the_aegis_key_is_derived_not_copied() {
        let a = derive_aegis_key(&[1; 32]);
        let b = derive_aegis_key(&[2; 32]);
        assert_ne!(a, b);
        assert_ne!(a, [1; 16]);
        assert_ne!(a, [0; 16]);
        assert_eq!(a, derive_aegis_key(&[1; 32]));
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
