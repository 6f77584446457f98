//! Fuzzes the mountinfo parser: it must never panic, decoded fields are never longer than
//! their line, and a text buffer as large as the input is always enough.
#![no_main]

use haul::inspect::{bounds, parse_mountinfo, MountInfoError, MountInfoProblem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut text = vec![0u8; data.len()];
    for mount in parse_mountinfo(data, &mut text) {
        match mount {
            Ok(m) => {
                assert!(m.mount_point.as_os_str().len() <= bounds::MOUNTINFO_LINE_MAX);
                assert!(m.root.as_os_str().len() <= bounds::MOUNTINFO_LINE_MAX);
                let _ = m.super_options.iter().count();
                let _ = m.mount_options.contains("ro");
            }
            Err(MountInfoError::Malformed { problem: MountInfoProblem::NoRoom, .. }) => {
                panic!("a text buffer as large as the input ran out")
            }
            Err(_) => {}
        }
    }
});
