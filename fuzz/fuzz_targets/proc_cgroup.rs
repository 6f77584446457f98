//! Fuzzes the /proc/PID/cgroup parser: it must never panic.
#![no_main]

use haul::inspect::parse_proc_cgroup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cgroups) = parse_proc_cgroup(data) {
        let _ = cgroups.unified();
        let _ = cgroups.controller("memory");
        let _ = cgroups.is_cgroup2_only();
    }
});
