//! Fuzzes haul's reading of a `pagemap-<id>.img` from the source (`--lazy` read-ahead): the
//! lazy ranges it takes are page-aligned, sorted and apart.
//! Input format: `haul::fuzzing::criu_pagemap`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::criu_pagemap(data));
