//! runc's state.json: the part of a container's state that migration needs.
//!
//! runc 1.1.5 keeps `<runc root>/<id>/state.json`, one line of JSON (about 6 KiB for a `runc
//! spec` container). Shortened from fixtures/runc-1.1.5-cgroupv1-hybrid/state.json:
//!
//! ```text
//! {"id":"ctp","init_process_pid":7769,"init_process_start":98019,
//!  "config":{"rootfs":"/srv/bundles/ctp/rootfs","mounts":[{"source":"/srv/bundles/ctp/hostdata",
//!   "destination":"/data","device":"bind","flags":20480,...},...],"devices":[{"path":"/dev/null",
//!   ...}],"namespaces":[{"type":"NEWPID","path":""},...],"mask_paths":["/proc/acpi",...],
//!   "labels":["bundle=/srv/bundles/ctp"],...},
//!  "cgroup_paths":{"":"/sys/fs/cgroup/unified/ctp","blkio":"/sys/fs/cgroup/blkio/ctp",...},
//!  "namespace_paths":{"NEWCGROUP":"/proc/7769/ns/cgroup",...},
//!  "external_descriptors":["/dev/null","pipe:[21245]","/srv/bundles/ctp/err.log"],...}
//! ```
//!
//! Only those fields are modelled; serde-json-core skips the others (hooks, seccomp,
//! capabilities, ...) without decoding them. Strings are borrowed from the file when they have
//! no JSON escapes and decoded into a text buffer when they do (see `json_text`): Go escapes
//! `&`, `<` and `>`, so a bundle under `/tmp/haul-runc/edge&co` is stored as `edge\u0026co`.
//! Every list has a limit in `bounds.rs`; a longer one is a [`StateParseError::TooMany`] naming
//! the list, its length and the limit.
//!
//! Labels: runc turns every OCI annotation into a `key=value` label and appends
//! `bundle=<bundle dir>` last; like runc's `utils.Annotations`, the last `bundle=` label wins.
//! Only `bundle` and `org.criu.config` (runc's per-container CRIU configuration file; empty
//! means none) are kept, so annotations need no limit and are never decoded.

use core::fmt;
use std::path::{Path, PathBuf};

use rustix::process::Pid;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::bounded_read::{DecodeBuf, ReadError};
use super::bounds::{
    CONTAINER_ID_MAX, MAX_CGROUP_PATHS, MAX_DEVICES, MAX_MASKED_PATHS, MAX_MOUNTS, MAX_NAMESPACES,
    PATH_MAX, STATE_JSON_MAX, STDIO_FDS,
};
use super::container_id::{ContainerId, ContainerIdError};
use super::descriptors::{self, DescriptorsError, StdioDescriptors};
use super::json::{BoundedMap, BoundedSeq, JsonError};
use super::json_text::{self, TextProblem};
use super::text_arena::TextArena;

/// The name of the file in a container's state directory.
pub const STATE_FILE: &str = "state.json";

/// Buffers for reading one state.json.
pub type StateBuf = DecodeBuf<STATE_JSON_MAX>;

/// What haul needs from a container's state.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuncState<'a> {
    /// `id`.
    pub id: ContainerId,
    /// `init_process_pid`: the container's init, in the host's pid namespace.
    pub init_pid: Pid,
    /// `init_process_start`: field 22 (starttime) of init's /proc/PID/stat, in clock ticks
    /// since boot; compare it with [`super::ProcStat::start_time`] to detect a reused pid.
    pub init_start_time: u64,
    /// `config.rootfs`.
    pub rootfs: &'a str,
    /// The value of the last `bundle=` label in `config.labels`.
    pub bundle: Option<&'a str>,
    /// The value of the last `org.criu.config=` label; `Some("")` disables runc's default
    /// `/etc/criu/runc.conf`.
    pub criu_config: Option<&'a str>,
    /// `config.mounts`, in order.
    pub mounts: heapless::Vec<Mount<'a>, MAX_MOUNTS>,
    /// `config.mask_paths`.
    pub masked_paths: heapless::Vec<&'a str, MAX_MASKED_PATHS>,
    /// `config.devices[].path`: the device nodes runc created in the container.
    pub devices: heapless::Vec<&'a str, MAX_DEVICES>,
    /// `config.namespaces`: kind (`NEWNET`, ...) and the path of a namespace to join (`""`
    /// for a new one).
    pub namespaces: heapless::Vec<Namespace<'a>, MAX_NAMESPACES>,
    /// `cgroup_paths`: controller (`""` for the unified hierarchy, `name=systemd` for a named
    /// one) and the container's cgroup directory, in file order.
    pub cgroup_paths: heapless::Vec<CgroupPath<'a>, MAX_CGROUP_PATHS>,
    /// `namespace_paths`: kind and /proc path of each of init's namespaces.
    pub namespace_paths: heapless::Vec<Namespace<'a>, MAX_NAMESPACES>,
    /// `external_descriptors`, which runc omits when it has none.
    pub external_descriptors: Option<StdioDescriptors<'a>>,
}

impl<'a> RuncState<'a> {
    /// The container's cgroup directory for `controller` (`""`: the unified hierarchy).
    pub fn cgroup_path(&self, controller: &str) -> Option<&'a str> {
        self.cgroup_paths.iter().find(|c| c.controller == controller).map(|c| c.path)
    }

    /// The path of init's namespace of `kind` (`NEWNET`, `NEWPID`, ...).
    pub fn namespace_path(&self, kind: &str) -> Option<&'a str> {
        self.namespace_paths.iter().find(|n| n.kind == kind).map(|n| n.path)
    }
}

/// One of `config.mounts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount<'a> {
    /// `source`: a host path for bind mounts, else a name such as `proc` or `tmpfs`.
    pub source: &'a str,
    /// `destination`, inside the container.
    pub destination: &'a str,
    /// `device`: the filesystem type, or `bind`.
    pub device: &'a str,
    /// `flags`: mount(2) flags (`MS_BIND` = 0x1000, `MS_REC` = 0x4000, ...).
    pub flags: u64,
}

impl Mount<'_> {
    /// Whether runc bind-mounts it (CRIU needs such mounts declared external).
    pub fn is_bind(&self) -> bool {
        self.device == "bind"
    }

    /// Whether it is runc's cgroup filesystem mount.
    pub fn is_cgroup(&self) -> bool {
        self.device == "cgroup"
    }
}

/// A namespace kind and path, from `config.namespaces` or `namespace_paths`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace<'a> {
    /// runc's name of the kind: `NEWNS`, `NEWUTS`, `NEWIPC`, `NEWUSER`, `NEWPID`, `NEWNET`,
    /// `NEWCGROUP` or `NEWTIME`.
    pub kind: &'a str,
    /// The namespace's path.
    pub path: &'a str,
}

/// One entry of `cgroup_paths`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupPath<'a> {
    /// The controller; `""` is the unified (cgroup2) hierarchy.
    pub controller: &'a str,
    /// The container's cgroup directory under /sys/fs/cgroup.
    pub path: &'a str,
}

/// Names a JSON field in errors: `config.mounts[3].source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field or list, as a dotted path.
    pub name: &'static str,
    /// The index in the list or object, if any.
    pub index: Option<usize>,
    /// The member of that element, if any.
    pub member: Option<&'static str>,
}

impl Field {
    const fn at(name: &'static str) -> Self {
        Field { name, index: None, member: None }
    }

    const fn item(name: &'static str, index: usize, member: Option<&'static str>) -> Self {
        Field { name, index: Some(index), member }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        if let Some(member) = self.member {
            write!(f, ".{member}")?;
        }
        Ok(())
    }
}

/// Why a state.json was refused. Displayed as a clause: "has more than 64 mounts ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateParseError {
    /// Not JSON, or a field has the wrong type.
    Json(JsonError),
    /// A required field is missing or null.
    Missing(Field),
    /// `id` is not a container id runc would accept.
    BadId(ContainerIdError),
    /// `id` differs from the name of the directory the file was read from.
    IdMismatch,
    /// `init_process_pid` is not a process id.
    BadPid(i64),
    /// A list or object is longer than haul's limit.
    TooMany {
        /// The field, such as `config.mounts`.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The limit, from `bounds.rs`.
        limit: usize,
    },
    /// `external_descriptors` is not three strings.
    Descriptors(DescriptorsError),
    /// A kept string is too long or malformed.
    Text {
        /// Which string.
        field: Field,
        /// What is wrong with it.
        problem: TextProblem,
    },
}

impl fmt::Display for StateParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateParseError::Json(e) => write!(f, "is not the JSON runc writes: {e}"),
            StateParseError::Missing(field) => write!(f, "has no `{field}`"),
            StateParseError::BadId(e) => write!(f, "has an `id` runc would not accept ({e})"),
            StateParseError::IdMismatch => {
                f.write_str("has an `id` that differs from its directory's name")
            }
            StateParseError::BadPid(pid) => {
                write!(f, "has init_process_pid {pid}, which is not a process id")
            }
            StateParseError::TooMany { what, count, limit } => {
                write!(f, "has more than {limit} {what} ({count} found, limit {limit})")
            }
            StateParseError::Descriptors(DescriptorsError::WrongCount { count }) => write!(
                f,
                "has {count} external_descriptors; runc records exactly {STDIO_FDS} (fds 0-2)"
            ),
            StateParseError::Descriptors(DescriptorsError::Text { fd, problem }) => {
                write!(f, "has an external_descriptors entry for fd {fd} that {problem}")
            }
            StateParseError::Descriptors(DescriptorsError::Json(e)) => {
                write!(f, "has malformed external_descriptors: {e}")
            }
            StateParseError::Text { field, problem } => write!(f, "has a `{field}` that {problem}"),
        }
    }
}

impl std::error::Error for StateParseError {}

/// A container's state could not be read or used.
#[derive(Debug)]
pub enum StateError {
    /// Reading state.json failed or it is over [`STATE_JSON_MAX`].
    Read(ReadError),
    /// state.json was read but refused.
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        error: StateParseError,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = match self {
            StateError::Read(e) => &e.path,
            StateError::Parse { path, .. } => path,
        };
        // The state directory is named after the container.
        let id = path.parent().and_then(Path::file_name).unwrap_or_default().to_string_lossy();
        match self {
            StateError::Read(e) => write!(f, "cannot read the state of container {id}: {e}"),
            StateError::Parse { path, error } => {
                write!(f, "state.json of container {id} ({}) {error}", path.display())
            }
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Read(e) => Some(e),
            StateError::Parse { error, .. } => Some(error),
        }
    }
}

/// Reads and parses `<runc_root>/<id>/state.json` (runc's default root is /run/runc) and checks
/// that it describes container `id`.
pub fn read_state<'b>(
    runc_root: &Path,
    id: &ContainerId,
    buf: &'b mut StateBuf,
) -> Result<RuncState<'b>, StateError> {
    let path = runc_root.join(id.as_str()).join(STATE_FILE);
    let (json, text) = buf.read(&path).map_err(StateError::Read)?;
    let parse_error = |error| StateError::Parse { path: path.clone(), error };
    let state = parse_state(json, text).map_err(parse_error)?;
    if state.id != *id {
        return Err(parse_error(StateParseError::IdMismatch));
    }
    Ok(state)
}

/// Parses state.json, decoding escaped strings into `text` (give it as many bytes as `json`
/// has and it never runs out).
pub fn parse_state<'a>(json: &'a [u8], text: &'a mut [u8]) -> Result<RuncState<'a>, StateParseError> {
    let (raw, _) = serde_json_core::from_slice::<RawState<'a>>(json)
        .map_err(|e| StateParseError::Json(JsonError::from_serde(&e)))?;
    let mut keep = Keeper { arena: TextArena::new(text) };

    let raw_id = raw.id.ok_or(StateParseError::Missing(Field::at("id")))?;
    let id = keep.text(raw_id, Field::at("id"), CONTAINER_ID_MAX)?;
    let id = ContainerId::new(id).map_err(StateParseError::BadId)?;
    let pid = raw.init_process_pid.ok_or(StateParseError::Missing(Field::at("init_process_pid")))?;
    let init_pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .filter(|p| p.as_raw_nonzero().get() > 0)
        .ok_or(StateParseError::BadPid(pid))?;
    let init_start_time =
        raw.init_process_start.ok_or(StateParseError::Missing(Field::at("init_process_start")))?;
    let config = raw.config.ok_or(StateParseError::Missing(Field::at("config")))?;

    check_len(config.mounts.overflowed(), "config.mounts", config.mounts.total, MAX_MOUNTS)?;
    check_len(config.mask_paths.overflowed(), "config.mask_paths", config.mask_paths.total, MAX_MASKED_PATHS)?;
    check_len(config.devices.overflowed(), "config.devices", config.devices.total, MAX_DEVICES)?;
    check_len(config.namespaces.overflowed(), "config.namespaces", config.namespaces.total, MAX_NAMESPACES)?;
    check_len(raw.cgroup_paths.overflowed(), "cgroup_paths", raw.cgroup_paths.total, MAX_CGROUP_PATHS)?;
    check_len(raw.namespace_paths.overflowed(), "namespace_paths", raw.namespace_paths.total, MAX_NAMESPACES)?;

    let rootfs = config.rootfs.ok_or(StateParseError::Missing(Field::at("config.rootfs")))?;
    let rootfs = keep.text(rootfs, Field::at("config.rootfs"), PATH_MAX)?;
    let bundle = match config.labels.bundle {
        Some(raw) => Some(keep.text(raw, Field::at("config.labels (bundle=)"), PATH_MAX)?),
        None => None,
    };
    let criu_config = match config.labels.criu_config {
        Some(raw) => Some(keep.text(raw, Field::at("config.labels (org.criu.config=)"), PATH_MAX)?),
        None => None,
    };

    let mut mounts = heapless::Vec::new();
    for (i, m) in config.mounts.items.iter().enumerate() {
        let field = |member| Field::item("config.mounts", i, Some(member));
        let mount = Mount {
            source: keep.text(m.source, field("source"), PATH_MAX)?,
            destination: keep.text(m.destination, field("destination"), PATH_MAX)?,
            device: keep.text(m.device, field("device"), PATH_MAX)?,
            flags: m.flags,
        };
        // Cannot fail: both vectors have MAX_MOUNTS places.
        let _ = mounts.push(mount);
    }
    let mut masked_paths = heapless::Vec::new();
    for (i, &p) in config.mask_paths.items.iter().enumerate() {
        let _ = masked_paths.push(keep.text(p, Field::item("config.mask_paths", i, None), PATH_MAX)?);
    }
    let mut devices = heapless::Vec::new();
    for (i, d) in config.devices.items.iter().enumerate() {
        let field = Field::item("config.devices", i, Some("path"));
        let _ = devices.push(keep.text(d.path, field, PATH_MAX)?);
    }
    let mut namespaces = heapless::Vec::new();
    for (i, n) in config.namespaces.items.iter().enumerate() {
        let field = |member| Field::item("config.namespaces", i, Some(member));
        let ns = Namespace {
            kind: keep.text(n.kind, field("type"), PATH_MAX)?,
            path: keep.text(n.path, field("path"), PATH_MAX)?,
        };
        let _ = namespaces.push(ns);
    }
    let mut cgroup_paths = heapless::Vec::new();
    for (i, &(controller, path)) in raw.cgroup_paths.entries.iter().enumerate() {
        let field = |member| Field::item("cgroup_paths", i, Some(member));
        let entry = CgroupPath {
            controller: keep.text(controller, field("key"), PATH_MAX)?,
            path: keep.text(path, field("value"), PATH_MAX)?,
        };
        let _ = cgroup_paths.push(entry);
    }
    let mut namespace_paths = heapless::Vec::new();
    for (i, &(kind, path)) in raw.namespace_paths.entries.iter().enumerate() {
        let field = |member| Field::item("namespace_paths", i, Some(member));
        let ns = Namespace {
            kind: keep.text(kind, field("key"), PATH_MAX)?,
            path: keep.text(path, field("value"), PATH_MAX)?,
        };
        let _ = namespace_paths.push(ns);
    }
    let external_descriptors = match &raw.external_descriptors {
        Some(fds) => Some(
            descriptors::from_raw(fds, &mut keep.arena).map_err(StateParseError::Descriptors)?,
        ),
        None => None,
    };

    Ok(RuncState {
        id,
        init_pid,
        init_start_time,
        rootfs,
        bundle,
        criu_config,
        mounts,
        masked_paths,
        devices,
        namespaces,
        cgroup_paths,
        namespace_paths,
        external_descriptors,
    })
}

/// A list over its limit is an error naming it.
fn check_len(
    overflowed: bool,
    what: &'static str,
    count: usize,
    limit: usize,
) -> Result<(), StateParseError> {
    if overflowed {
        return Err(StateParseError::TooMany { what, count, limit });
    }
    Ok(())
}

/// Decodes the strings that are kept into the text buffer.
struct Keeper<'a> {
    arena: TextArena<'a>,
}

impl<'a> Keeper<'a> {
    fn text(&mut self, raw: &'a str, field: Field, limit: usize) -> Result<&'a str, StateParseError> {
        json_text::decode(raw, &mut self.arena, limit)
            .map_err(|problem| StateParseError::Text { field, problem })
    }
}

// The serde model: raw (still escaped) strings borrowed from the file. Every field has a
// default so that a missing one is reported by name rather than as a generic serde error.

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawState<'a> {
    #[serde(borrow)]
    id: Option<&'a str>,
    init_process_pid: Option<i64>,
    init_process_start: Option<u64>,
    #[serde(borrow)]
    config: Option<RawConfig<'a>>,
    #[serde(borrow)]
    cgroup_paths: BoundedMap<'a, MAX_CGROUP_PATHS>,
    #[serde(borrow)]
    namespace_paths: BoundedMap<'a, MAX_NAMESPACES>,
    #[serde(borrow)]
    external_descriptors: Option<BoundedSeq<&'a str, STDIO_FDS>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConfig<'a> {
    #[serde(borrow)]
    rootfs: Option<&'a str>,
    #[serde(borrow)]
    mounts: BoundedSeq<RawMount<'a>, MAX_MOUNTS>,
    #[serde(borrow)]
    devices: BoundedSeq<RawDevice<'a>, MAX_DEVICES>,
    #[serde(borrow)]
    namespaces: BoundedSeq<RawNamespace<'a>, MAX_NAMESPACES>,
    #[serde(borrow)]
    mask_paths: BoundedSeq<&'a str, MAX_MASKED_PATHS>,
    #[serde(borrow)]
    labels: Labels<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawMount<'a> {
    source: &'a str,
    destination: &'a str,
    device: &'a str,
    flags: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawDevice<'a> {
    path: &'a str,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawNamespace<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    path: &'a str,
}

/// The labels haul uses; the others are skipped, however many there are.
#[derive(Default)]
struct Labels<'a> {
    bundle: Option<&'a str>,
    criu_config: Option<&'a str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(LabelsVisitor(core::marker::PhantomData))
    }
}

struct LabelsVisitor<'a>(core::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for LabelsVisitor<'a> {
    type Value = Labels<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings or null")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Labels::default())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Labels::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut labels = Labels::default();
        // Keys are plain ASCII, so the raw text starts with them even when the value is escaped.
        while let Some(label) = seq.next_element::<&'de str>()? {
            if let Some(bundle) = label.strip_prefix("bundle=") {
                labels.bundle = Some(bundle);
            } else if let Some(config) = label.strip_prefix("org.criu.config=") {
                labels.criu_config = Some(config);
            }
        }
        Ok(labels)
    }
}
