//! Fuzzes the reader of CRIU's `stats-dump` / `stats-restore` files.
//! Input format: `haul::fuzzing::criu_stats`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::criu_stats(data));
