#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
//! AEGIS-128L (RFC 10032, formerly draft-irtf-cfrg-aegis-aead) with a 128-bit tag, written once
//! over an abstract AES round (`Aes`) so that each hardware backend in `hw` compiles it with
//! its own instructions inlined. The algorithm, from the RFC's description:
//!
//! - the state is eight 128-bit blocks S0..S7; `update(M0, M1)` replaces each Si by
//!   AESRound(S(i-1), Si), with S7 feeding S0, and M0 xored into S0's round key, M1 into S4's;
//! - init: S0 = S4 = key ^ nonce, S1 = S3 = C1, S2 = C0, S5 = S7 = key ^ C0, S6 = key ^ C1,
//!   then ten updates with (nonce, key);
//! - associated data and the message go in 32-byte blocks, the last one zero-padded; each
//!   message block is xored with the keystream z0 = S6 ^ S1 ^ (S2 & S3),
//!   z1 = S2 ^ S5 ^ (S6 & S7) and the plaintext block is absorbed with `update`;
//! - finalize: t = S2 ^ (LE64(ad bits) || LE64(message bits)), seven updates with (t, t), and
//!   the tag is S0 ^ S1 ^ ... ^ S6.

/// One AES encryption round and the block operations AEGIS needs, on some block type. The
/// implementations (in `hw`) are zero-sized proofs that the CPU has the instructions.
pub(crate) trait Aes: Copy {
    type B: Copy;
    fn load(self, bytes: &[u8; 16]) -> Self::B;
    fn store(self, b: Self::B, out: &mut [u8; 16]);
    fn xor(self, a: Self::B, b: Self::B) -> Self::B;
    fn and(self, a: Self::B, b: Self::B) -> Self::B;
    /// SubBytes, ShiftRows, MixColumns of `x`, then xor `rk` (x86's AESENC).
    fn round(self, x: Self::B, rk: Self::B) -> Self::B;
}

const C0: [u8; 16] = [
    0x00, 0x01, 0x01, 0x02, 0x03, 0x05, 0x08, 0x0d, 0x15, 0x22, 0x37, 0x59, 0x90, 0xe9, 0x79, 0x62,
];
const C1: [u8; 16] = [
    0xdb, 0x3d, 0x18, 0x55, 0x6d, 0xc2, 0x2f, 0xf1, 0x20, 0x11, 0x31, 0x42, 0x73, 0xb5, 0x28, 0xdd,
];

/// Bytes absorbed per update.
const RATE: usize = 32;

struct State<A: Aes> {
    a: A,
    s: [A::B; 8],
}

impl<A: Aes> State<A> {
    #[inline(always)]
    fn new(a: A, key: &[u8; 16], nonce: &[u8; 16]) -> Self {
        let (k, n) = (a.load(key), a.load(nonce));
        let (c0, c1) = (a.load(&C0), a.load(&C1));
        let kn = a.xor(k, n);
        let mut st = State {
            a,
            s: [kn, c1, c0, c1, kn, a.xor(k, c0), a.xor(k, c1), a.xor(k, c0)],
        };
        for _ in 0..10 {
            st.update(n, k);
        }
        st
    }

    #[inline(always)]
    fn update(&mut self, m0: A::B, m1: A::B) {
        let a = self.a;
        let [s0, s1, s2, s3, s4, s5, s6, s7] = self.s;
        self.s = [
            a.round(s7, a.xor(s0, m0)),
            a.round(s0, s1),
            a.round(s1, s2),
            a.round(s2, s3),
            a.round(s3, a.xor(s4, m1)),
            a.round(s4, s5),
            a.round(s5, s6),
            a.round(s6, s7),
        ];
    }

    #[inline(always)]
    fn keystream(&self) -> (A::B, A::B) {
        let a = self.a;
        let [_, s1, s2, s3, _, s5, s6, s7] = self.s;
        (
            a.xor(a.xor(s6, s1), a.and(s2, s3)),
            a.xor(a.xor(s2, s5), a.and(s6, s7)),
        )
    }

    #[inline(always)]
    fn absorb(&mut self, block: &[u8; RATE]) {
        let (m0, m1) = halves(self.a, block);
        self.update(m0, m1);
    }

    /// Encrypts one full block in place and absorbs its plaintext.
    #[inline(always)]
    fn enc(&mut self, block: &mut [u8; RATE]) {
        let a = self.a;
        let (z0, z1) = self.keystream();
        let (t0, t1) = halves(a, block);
        store_halves(a, a.xor(t0, z0), a.xor(t1, z1), block);
        self.update(t0, t1);
    }

    /// Decrypts one full block in place and absorbs the plaintext.
    #[inline(always)]
    fn dec(&mut self, block: &mut [u8; RATE]) {
        let a = self.a;
        let (z0, z1) = self.keystream();
        let (c0, c1) = halves(a, block);
        let (p0, p1) = (a.xor(c0, z0), a.xor(c1, z1));
        store_halves(a, p0, p1, block);
        self.update(p0, p1);
    }

    #[inline(always)]
    fn finalize(mut self, ad_len: usize, msg_len: usize) -> [u8; 16] {
        let a = self.a;
        let mut lens = [0u8; 16];
        lens[..8].copy_from_slice(&(ad_len as u64).wrapping_mul(8).to_le_bytes());
        lens[8..].copy_from_slice(&(msg_len as u64).wrapping_mul(8).to_le_bytes());
        let t = a.xor(self.s[2], a.load(&lens));
        for _ in 0..7 {
            self.update(t, t);
        }
        let [s0, s1, s2, s3, s4, s5, s6, _] = self.s;
        let sum = a.xor(
            a.xor(a.xor(s0, s1), a.xor(s2, s3)),
            a.xor(a.xor(s4, s5), s6),
        );
        let mut tag = [0u8; 16];
        a.store(sum, &mut tag);
        tag
    }

    #[inline(always)]
    fn absorb_ad(&mut self, ad: &[u8]) {
        let mut blocks = ad.chunks_exact(RATE);
        for b in blocks.by_ref() {
            if let Ok(b) = <&[u8; RATE]>::try_from(b) {
                self.absorb(b);
            }
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            let mut pad = [0u8; RATE];
            pad[..rest.len()].copy_from_slice(rest);
            self.absorb(&pad);
        }
    }
}

#[inline(always)]
fn halves<A: Aes>(a: A, block: &[u8; RATE]) -> (A::B, A::B) {
    let (lo, hi) = block.split_at(16);
    let lo: &[u8; 16] = lo.try_into().unwrap_or(&[0; 16]);
    let hi: &[u8; 16] = hi.try_into().unwrap_or(&[0; 16]);
    (a.load(lo), a.load(hi))
}

#[inline(always)]
fn store_halves<A: Aes>(a: A, b0: A::B, b1: A::B, block: &mut [u8; RATE]) {
    let (lo, hi) = block.split_at_mut(16);
    if let Ok(lo) = <&mut [u8; 16]>::try_from(lo) {
        a.store(b0, lo);
    }
    if let Ok(hi) = <&mut [u8; 16]>::try_from(hi) {
        a.store(b1, hi);
    }
}

/// Encrypts `msg` in place; returns the tag.
#[inline(always)]
pub(crate) fn seal<A: Aes>(
    a: A,
    key: &[u8; 16],
    nonce: &[u8; 16],
    ad: &[u8],
    msg: &mut [u8],
) -> [u8; 16] {
    let mut st = State::new(a, key, nonce);
    st.absorb_ad(ad);
    let len = msg.len();
    let mut blocks = msg.chunks_exact_mut(RATE);
    for b in blocks.by_ref() {
        if let Ok(b) = <&mut [u8; RATE]>::try_from(b) {
            st.enc(b);
        }
    }
    let rest = blocks.into_remainder();
    if !rest.is_empty() {
        let mut pad = [0u8; RATE];
        pad[..rest.len()].copy_from_slice(rest);
        st.enc(&mut pad);
        let n = rest.len();
        rest.copy_from_slice(&pad[..n]);
    }
    st.finalize(ad.len(), len)
}

/// Decrypts `msg` in place and returns the tag it should have; the caller compares. A
/// partial last block is absorbed as its plaintext padded with zeros (not the keystream's
/// leftover), as the RFC's DecPartial does.
#[inline(always)]
pub(crate) fn open<A: Aes>(
    a: A,
    key: &[u8; 16],
    nonce: &[u8; 16],
    ad: &[u8],
    msg: &mut [u8],
) -> [u8; 16] {
    let mut st = State::new(a, key, nonce);
    st.absorb_ad(ad);
    let len = msg.len();
    let mut blocks = msg.chunks_exact_mut(RATE);
    for b in blocks.by_ref() {
        if let Ok(b) = <&mut [u8; RATE]>::try_from(b) {
            st.dec(b);
        }
    }
    let rest = blocks.into_remainder();
    if !rest.is_empty() {
        let n = rest.len();
        let mut pad = [0u8; RATE];
        pad[..n].copy_from_slice(rest);
        let (z0, z1) = st.keystream();
        let mut z = [0u8; RATE];
        store_halves(a, z0, z1, &mut z);
        for (p, k) in pad.iter_mut().zip(z.iter()).take(n) {
            *p ^= k;
        }
        // The keystream beyond the message must not reach the state: pad with zeros.
        rest.copy_from_slice(&pad[..n]);
        pad[n..].fill(0);
        st.absorb(&pad);
    }
    st.finalize(ad.len(), len)
}

/// Tags equal, in time independent of where they differ.
pub(crate) fn tags_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    core::hint::black_box(diff) == 0
}
