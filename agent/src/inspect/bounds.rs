//! Every capacity of the inspect stage, each with the reason for its value.
//!
//! These will move into the crate-wide `limits.rs`; until then the inspect parsers read them
//! from here and nowhere else. Going over any of them is a named error, never a silent cut.

/// Longest path kept from state.json, descriptors.json or /proc, in bytes. Linux's `PATH_MAX`
/// (4096, counting the terminating NUL) is the longest path a system call accepts; runc and CRIU
/// hand these paths to system calls, so a longer one could not be used anyway.
pub const PATH_MAX: usize = 4096;

/// Longest container id, in bytes. runc makes `<root>/<id>` a directory, so an id is one file
/// name: at most `NAME_MAX` (255) bytes on every Linux filesystem.
pub const CONTAINER_ID_MAX: usize = 255;

/// Largest state.json read, in bytes. runc 1.1.5 writes about 6 KiB for a `runc spec` container
/// with one extra bind mount (fixtures/runc-1.1.5-cgroupv1-hybrid/state.json: 6132 bytes); ten
/// times that leaves room for many mounts, devices, hooks and annotations.
pub const STATE_JSON_MAX: usize = 64 * 1024;

/// Largest descriptors.json read, in bytes. It holds the link targets of fds 0-2: three strings
/// of at most `PATH_MAX` bytes plus JSON quoting (12 KiB), and room for some escaped characters.
pub const DESCRIPTORS_JSON_MAX: usize = 16 * 1024;

/// Most mounts kept from a container's config. `runc spec` has 7; the fixture container has 8
/// (one bind mount added); 64 covers generous volume lists of edge workloads.
pub const MAX_MOUNTS: usize = 64;

/// Most masked paths kept. `runc spec` masks 10 paths and Docker 12 to 14; 32 leaves room.
pub const MAX_MASKED_PATHS: usize = 32;

/// Most device nodes kept from a container's config. `runc spec` creates 6 (/dev/null, random,
/// full, tty, zero, urandom); 64 allows for containers given many extra devices.
pub const MAX_DEVICES: usize = 64;

/// Most device cgroup rules kept from `config.cgroups.devices`. runc 1.1.5's defaults are 12
/// (the fixture); Docker's about 15; 128 allows for containers given many devices.
pub const MAX_DEVICE_RULES: usize = 128;

/// Most namespaces kept per list (config.namespaces, namespace_paths). Linux has 8 namespace
/// types (mnt, uts, ipc, user, pid, net, cgroup, time) and runc lists each at most once; 16 leaves
/// room for types added later.
pub const MAX_NAMESPACES: usize = 16;

/// Most entries kept from state.json's cgroup_paths. runc lists one per cgroup v1 controller
/// (at most 14 in Linux 6.x) plus `name=systemd` and `""` for the unified hierarchy: 16 on a
/// hybrid host, 1 on a cgroup2-only host. 32 leaves room for named hierarchies.
pub const MAX_CGROUP_PATHS: usize = 32;

/// Number of standard descriptors runc records: the link targets of fds 0, 1 and 2 of the
/// container's init (`getPipeFds` in libcontainer/process_linux.go always returns 3 entries).
pub const STDIO_FDS: usize = 3;

/// Largest /proc/PID/mountinfo read, in bytes. A line is typically 100 to 200 bytes (the
/// fixtures: 20 lines on the host, 28 in a container); 256 KiB holds well over a thousand
/// mounts, more than an edge device running a few containers has.
pub const MOUNTINFO_MAX: usize = 256 * 1024;

/// Longest mountinfo line, in bytes. A line carries a root and a mount point of up to
/// `PATH_MAX` bytes each, plus a source and option lists (an overlay's lowerdir is a list of
/// paths); 8 KiB covers two full-length paths. A longer line is an error, not a cut.
pub const MOUNTINFO_LINE_MAX: usize = 8 * 1024;

/// Largest /proc/PID/cgroup read, in bytes: `MAX_CGROUP_HIERARCHIES` lines of up to
/// `PROC_CGROUP_LINE_MAX` bytes would be 256 KiB, but real files are a few hundred bytes (the
/// fixtures: 140 and 171); 64 KiB still fits sixteen lines with long paths.
pub const PROC_CGROUP_MAX: usize = 64 * 1024;

/// Longest /proc/PID/cgroup line, in bytes: a hierarchy id, a controller list (under 100 bytes
/// for all v1 controllers) and a cgroup path of up to `PATH_MAX` bytes.
pub const PROC_CGROUP_LINE_MAX: usize = 8 * 1024;

/// Most lines kept from /proc/PID/cgroup: one per mounted hierarchy. A hybrid host has at most
/// 14 v1 controller hierarchies, `name=systemd` and the unified one; 32 leaves room for named
/// hierarchies.
pub const MAX_CGROUP_HIERARCHIES: usize = 32;

/// Largest /proc/PID/stat read, in bytes. It is one line of 50 numbers (at most 20 digits each)
/// and a command name of at most 64 bytes: under 1.2 KiB.
pub const PROC_STAT_MAX: usize = 4096;

/// How far past its bound a file of unknown size (any /proc file reports size 0) is read, only
/// to tell its size in the error. Beyond that the error says "at least".
pub const OVERSIZE_PROBE_MAX: u64 = 16 * 1024 * 1024;
