//! Fuzzes the responder's handshake (preamble, Noise message 1) against an untrusted initiator.
//! Input format: `haul::fuzzing::handshake`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::handshake(data));
