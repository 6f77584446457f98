//! Inspect: what runc and the kernel say about a container, read within fixed bounds.
//!
//! The first stage of the source side. Every file is handled in two steps:
//!
//! 1. a bounded read into a buffer of fixed capacity ([`FileBuf`], [`DecodeBuf`],
//!    [`read_into`]); a larger file is an error naming the file, its size and the bound, never
//!    a silent cut;
//! 2. a pure parser over the bytes read (`parse_*`), which does no I/O and never panics on
//!    input. Every list it keeps has a limit in [`bounds`]; going over one is a named error.
//!
//! The `read_*` functions join the two and take a root directory (runc's root, /proc, an
//! image directory), so tests point them at `fixtures/` instead of the live system.
//!
//! | file | parser | reader |
//! |---|---|---|
//! | `<runc root>/<id>/state.json` | [`parse_state`] | [`read_state`] |
//! | `<images>/descriptors.json` | [`parse_descriptors`] | [`read_descriptors`] |
//! | `/proc/PID/mountinfo` | [`parse_mountinfo`] | [`read_mountinfo`] |
//! | `/proc/PID/cgroup` | [`parse_proc_cgroup`] | [`read_proc_cgroup`] |
//! | `/proc/PID/stat` | [`parse_proc_stat`] | [`read_proc_stat`] |
//!
//! Parsed values borrow from the caller's buffers. Strings with escapes (JSON `\u0026`,
//! mountinfo `\040`) are decoded into the second buffer of a [`DecodeBuf`], which is as large
//! as the first, so decoding never runs out of room.

#![deny(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod bounded_read;
pub mod bounds;
mod cgroup_resources;
mod container_id;
mod decimal;
mod descriptors;
mod json;
mod json_text;
mod mountinfo;
mod proc_cgroup;
mod proc_pid;
mod proc_stat;
mod runc_state;
mod text_arena;

#[cfg(test)]
pub(crate) mod test_support;

pub use bounded_read::{
    lines, read_into, DecodeBuf, FileBuf, FileError, FileSize, Line, LineTooLong, Lines, ReadError,
    ReadErrorKind,
};
pub use cgroup_resources::{DeviceRule, Resources, ResourcesError};
pub use container_id::{ContainerId, ContainerIdError};
pub use descriptors::{
    parse_descriptors, read_descriptors, DescriptorsBuf, DescriptorsError, FdTarget,
    StdioDescriptors, DESCRIPTORS_FILE,
};
pub use json::JsonError;
pub use json_text::TextProblem;
pub use mountinfo::{
    parse_mountinfo, read_mountinfo, unescape_octal, MountInfo, MountInfoBuf, MountInfoError,
    MountInfoFile, MountInfoIter, MountInfoProblem, MountOptions, Propagation,
};
pub use proc_cgroup::{
    parse_proc_cgroup, read_proc_cgroup, CgroupLine, ProcCgroup, ProcCgroupBuf, ProcCgroupError,
};
pub use proc_pid::ProcPid;
pub use proc_stat::{parse_proc_stat, read_proc_stat, ProcStat, ProcStatBuf, ProcStatError};
pub use runc_state::{
    parse_state, read_state, CgroupPath, Field, Mount, Namespace, RuncState, StateBuf, StateError,
    StateParseError, STATE_FILE,
};
