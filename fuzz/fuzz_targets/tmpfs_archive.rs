//! Fuzzes haul's reading of a tmpfs archive from the source (`tar --extract` without the files):
//! accepted names are relative and free of `..`.
//! Input format: `haul::fuzzing::tmpfs_archive`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| haul::fuzzing::tmpfs_archive(data));
