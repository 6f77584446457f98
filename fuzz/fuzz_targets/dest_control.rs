//! Fuzzes what `haul serve` does with a source's frames: control messages in order, the runc
//! description and its state.json patch, image files and the `--fs copy` tree in a scratch
//! directory; nothing may appear outside it.
//! Input format: `haul::fuzzing::dest_control`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::dest_control(data));
