//! Fuzzes haul's reading of an `mm-<id>.img` from the source (the destination's userfaultfd
//! handler cuts lazy runs where VMAs end): VMAs sorted and apart, runs exactly over them.
//! Input format: `haul::fuzzing::criu_mm`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::criu_mm(data));
