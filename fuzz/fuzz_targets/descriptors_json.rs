//! Fuzzes the descriptors.json parser: it must never panic, and a text buffer as large as the
//! input must always be enough.
#![no_main]

use haul::inspect::{parse_descriptors, DescriptorsError, FdTarget, TextProblem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut text = vec![0u8; data.len()];
    match parse_descriptors(data, &mut text) {
        Ok(fds) => {
            for target in fds.targets {
                let _ = FdTarget::classify(target);
            }
            let _ = fds.pipes().count();
        }
        Err(DescriptorsError::Text { problem: TextProblem::NoRoom, .. }) => {
            panic!("a text buffer as large as the input ran out")
        }
        Err(_) => {}
    };
});
