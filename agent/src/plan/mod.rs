//! Building CRIU requests: pure functions from what was inspected to `criu_opts`.
//! No I/O here, so every option set is unit-tested and shown by `haul inspect`.

pub mod pid;
pub mod runc;
pub mod show;

/// CRIU log verbosity haul asks for (runc uses 4 as well: enough to diagnose mount and
/// cgroup failures).
pub const LOG_LEVEL: i32 = 4;
