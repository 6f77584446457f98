//! Fuzzes the state.json patch the registration applies to the source's text; the result must
//! be a fixed point of the same patch.
//! Input format: `haul::fuzzing::json_patch`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::json_patch(data));
