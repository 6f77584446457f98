//! Fuzzes the selection of error lines quoted from a CRIU log.
//! Input format: `haul::fuzzing::criu_log`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::criu_log(data));
