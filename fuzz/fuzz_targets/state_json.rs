//! Fuzzes the state.json parser: it must never panic, and a text buffer as large as the input
//! must always be enough to decode the strings it keeps.
#![no_main]

use haul::inspect::{bounds, parse_state, StateParseError, TextProblem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut text = vec![0u8; data.len()];
    let parsed = parse_state(data, &mut text);
    match parsed {
        Ok(state) => {
            assert!(state.rootfs.len() <= bounds::PATH_MAX);
            assert!(state.mounts.iter().all(|m| m.source.len() <= bounds::PATH_MAX));
        }
        Err(StateParseError::Text { problem: TextProblem::NoRoom, .. }) => {
            panic!("a text buffer as large as the input ran out")
        }
        Err(_) => {}
    };
});
