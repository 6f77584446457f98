//! The crate's only unsafe code: AES round instructions for AEGIS-128L (x86_64 AES-NI, aarch64
//! ARMv8 Cryptography Extension), reached only through an `Engine`, which `Engine::detect`
//! makes only after the running CPU has been seen to have the instructions.
//!
//! Each backend compiles the whole of `aegis::seal` / `aegis::open` inside one
//! `#[target_feature]` function, so the rounds are inlined instructions, not calls.
#![allow(unsafe_code)]

/// A CPU's AES instructions, proven present at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Engine(Backend);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    #[cfg(target_arch = "x86_64")]
    AesNi,
    #[cfg(target_arch = "aarch64")]
    ArmCe,
}

impl Engine {
    /// The engine of this CPU, if it has AES instructions.
    pub(crate) fn detect() -> Option<Engine> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("sse2")
        {
            return Some(Engine(Backend::AesNi));
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("aes") {
            return Some(Engine(Backend::ArmCe));
        }
        None
    }

    pub(crate) fn seal(
        self,
        key: &[u8; 16],
        nonce: &[u8; 16],
        ad: &[u8],
        msg: &mut [u8],
    ) -> [u8; 16] {
        match self.0 {
            // SAFETY: `Backend::AesNi` exists only after `detect` saw AES-NI and SSE2.
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi => unsafe { x86::seal(key, nonce, ad, msg) },
            // SAFETY: `Backend::ArmCe` exists only after `detect` saw the AES extension.
            #[cfg(target_arch = "aarch64")]
            Backend::ArmCe => unsafe { arm::seal(key, nonce, ad, msg) },
        }
    }

    pub(crate) fn open(
        self,
        key: &[u8; 16],
        nonce: &[u8; 16],
        ad: &[u8],
        msg: &mut [u8],
    ) -> [u8; 16] {
        match self.0 {
            // SAFETY: as in `seal`.
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi => unsafe { x86::open(key, nonce, ad, msg) },
            // SAFETY: as in `seal`.
            #[cfg(target_arch = "aarch64")]
            Backend::ArmCe => unsafe { arm::open(key, nonce, ad, msg) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::aegis::{self, Aes};
    use core::arch::x86_64::{
        __m128i, _mm_aesenc_si128, _mm_and_si128, _mm_loadu_si128, _mm_storeu_si128, _mm_xor_si128,
    };

    /// Only ever made inside the `target_feature(enable = "aes,sse2")` functions below.
    #[derive(Clone, Copy)]
    struct Ni;

    impl Aes for Ni {
        type B = __m128i;
        #[inline(always)]
        fn load(self, bytes: &[u8; 16]) -> __m128i {
            // SAFETY: 16 readable bytes; loadu has no alignment requirement.
            unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
        }
        #[inline(always)]
        fn store(self, b: __m128i, out: &mut [u8; 16]) {
            // SAFETY: 16 writable bytes; storeu has no alignment requirement.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), b) }
        }
        #[inline(always)]
        fn xor(self, a: __m128i, b: __m128i) -> __m128i {
            // SAFETY: SSE2 is part of x86_64.
            unsafe { _mm_xor_si128(a, b) }
        }
        #[inline(always)]
        fn and(self, a: __m128i, b: __m128i) -> __m128i {
            // SAFETY: SSE2 is part of x86_64.
            unsafe { _mm_and_si128(a, b) }
        }
        #[inline(always)]
        fn round(self, x: __m128i, rk: __m128i) -> __m128i {
            // SAFETY: `Ni` values exist only where the caller checked for AES-NI.
            unsafe { _mm_aesenc_si128(x, rk) }
        }
    }

    #[target_feature(enable = "aes,sse2")]
    pub(super) unsafe fn seal(k: &[u8; 16], n: &[u8; 16], ad: &[u8], m: &mut [u8]) -> [u8; 16] {
        aegis::seal(Ni, k, n, ad, m)
    }

    #[target_feature(enable = "aes,sse2")]
    pub(super) unsafe fn open(k: &[u8; 16], n: &[u8; 16], ad: &[u8], m: &mut [u8]) -> [u8; 16] {
        aegis::open(Ni, k, n, ad, m)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use crate::aegis::{self, Aes};
    use core::arch::aarch64::{
        uint8x16_t, vaeseq_u8, vaesmcq_u8, vandq_u8, vdupq_n_u8, veorq_u8, vld1q_u8, vst1q_u8,
    };

    /// Only ever made inside the `target_feature(enable = "aes,neon")` functions below.
    #[derive(Clone, Copy)]
    struct Ce;

    impl Aes for Ce {
        type B = uint8x16_t;
        #[inline(always)]
        fn load(self, bytes: &[u8; 16]) -> uint8x16_t {
            // SAFETY: 16 readable bytes; NEON is part of aarch64.
            unsafe { vld1q_u8(bytes.as_ptr()) }
        }
        #[inline(always)]
        fn store(self, b: uint8x16_t, out: &mut [u8; 16]) {
            // SAFETY: 16 writable bytes.
            unsafe { vst1q_u8(out.as_mut_ptr(), b) }
        }
        #[inline(always)]
        fn xor(self, a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
            // SAFETY: NEON is part of aarch64.
            unsafe { veorq_u8(a, b) }
        }
        #[inline(always)]
        fn and(self, a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
            // SAFETY: NEON is part of aarch64.
            unsafe { vandq_u8(a, b) }
        }
        #[inline(always)]
        fn round(self, x: uint8x16_t, rk: uint8x16_t) -> uint8x16_t {
            // SAFETY: `Ce` values exist only where the caller checked for the AES extension.
            unsafe { aes_round(x, rk) }
        }
    }

    /// AESE xors its key first (zero here) and does SubBytes and ShiftRows; AESMC is
    /// MixColumns: together one AES round before its AddRoundKey. `#[inline]`, not always:
    /// it is inlined once `round` sits inside the `target_feature` functions below.
    #[inline]
    #[target_feature(enable = "aes,neon")]
    unsafe fn aes_round(x: uint8x16_t, rk: uint8x16_t) -> uint8x16_t {
        veorq_u8(vaesmcq_u8(vaeseq_u8(x, vdupq_n_u8(0))), rk)
    }

    #[target_feature(enable = "aes,neon")]
    pub(super) unsafe fn seal(k: &[u8; 16], n: &[u8; 16], ad: &[u8], m: &mut [u8]) -> [u8; 16] {
        aegis::seal(Ce, k, n, ad, m)
    }

    #[target_feature(enable = "aes,neon")]
    pub(super) unsafe fn open(k: &[u8; 16], n: &[u8; 16], ad: &[u8], m: &mut [u8]) -> [u8; 16] {
        aegis::open(Ce, k, n, ad, m)
    }
}
