//! Fuzzes the destination's page writer with a dump's page stream from the source.
//! Input format: `haul::fuzzing::page_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::page_stream(data));
