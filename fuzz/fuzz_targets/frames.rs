//! Fuzzes the frame reader (header cap, kind, decryption, control decoding) on plaintext,
//! forged and sealed streams.
//! Input format: `haul::fuzzing::frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::frames(data));
