//! Fuzzes the source's page stream during a post-copy through the destination's read-ahead
//! filter: its cache stays within bounds, every question of the daemon is accounted for.
//! Input format: `haul::fuzzing::lazy_answers`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::lazy_answers(data));
