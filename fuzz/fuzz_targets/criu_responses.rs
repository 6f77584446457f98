//! Fuzzes the `criu swrk` client on scripted datagrams: VERSION, FEATURE_CHECK and a DUMP with
//! notifications.
//! Input format: `haul::fuzzing::criu_responses`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::criu_responses(data));
