//! Fuzzes the destination's edit of the source's inventory.img (network lock skipped): one byte
//! changed or one field appended, and a second edit changes nothing.
//! Input format: `haul::fuzzing::criu_inventory`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::criu_inventory(data));
