//! Fuzzes the /proc/PID/stat parser: it must never panic.
#![no_main]

use haul::inspect::parse_proc_stat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_proc_stat(data);
});
