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
use super::cgroup_resources::{self, RawCgroups, Resources, ResourcesError};
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
    /// `config.cgroups`: the device rules and limits to apply to the restored tasks.
    pub resources: Resources<'a>,
}

impl<'a> RuncState<'a> {
    /// The container's cgroup directory for `controller` (`""`: the unified hierarchy).
    pub fn cgroup_path(&self, controller: &str) -> Option<&'a str> {
        self.cgroup_paths
            .iter()
            .find(|c| c.controller == controller)
            .map(|c| c.path)
    }

    /// Whether the config gives the container a network namespace of its own (`NEWNET` with
    /// no path to join).
    pub fn has_own_netns(&self) -> bool {
        self.namespaces
            .iter()
            .any(|n| n.kind == "NEWNET" && n.path.is_empty())
    }

    /// The namespaces the config joins by path: (kind, path), in config order.
    pub fn joined_namespaces(&self) -> Vec<(String, String)> {
        self.namespaces
            .iter()
            .filter(|n| !n.path.is_empty())
            .map(|n| (n.kind.to_string(), n.path.to_string()))
            .collect()
    }

    /// The path of init's namespace of `kind` (`NEWNET`, `NEWPID`, ...).
    pub fn namespace_path(&self, kind: &str) -> Option<&'a str> {
        self.namespace_paths
            .iter()
            .find(|n| n.kind == kind)
            .map(|n| n.path)
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
        Field {
            name,
            index: None,
            member: None,
        }
    }

    const fn item(name: &'static str, index: usize, member: Option<&'static str>) -> Self {
        Field {
            name,
            index: Some(index),
            member,
        }
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
    /// `config.cgroups` has a device rule haul cannot read, or too many.
    Cgroups(ResourcesError),
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
                write!(
                    f,
                    "has more than {limit} {what} ({count} found, limit {limit})"
                )
            }
            StateParseError::Descriptors(DescriptorsError::WrongCount { count }) => write!(
                f,
                "has {count} external_descriptors; runc records exactly {STDIO_FDS} (fds 0-2)"
            ),
            StateParseError::Descriptors(DescriptorsError::Text { fd, problem }) => {
                write!(
                    f,
                    "has an external_descriptors entry for fd {fd} that {problem}"
                )
            }
            StateParseError::Descriptors(DescriptorsError::Json(e)) => {
                write!(f, "has malformed external_descriptors: {e}")
            }
            StateParseError::Text { field, problem } => write!(f, "has a `{field}` that {problem}"),
            StateParseError::Cgroups(e) => write!(f, "{e}"),
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
        let id = path
            .parent()
            .and_then(Path::file_name)
            .unwrap_or_default()
            .to_string_lossy();
        match self {
            StateError::Read(e) => write!(f, "state of container {id}: {e}"),
            StateError::Parse { path, error } => {
                write!(
                    f,
                    "state.json of container {id} ({}) {error}",
                    path.display()
                )
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
    let parse_error = |error| StateError::Parse {
        path: path.clone(),
        error,
    };
    let state = parse_state(json, text).map_err(parse_error)?;
    if state.id != *id {
        return Err(parse_error(StateParseError::IdMismatch));
    }
    Ok(state)
}

/// Parses state.json, decoding escaped strings into `text` (give it as many bytes as `json`
/// has and it never runs out).
pub fn parse_state<'a>(
    json: &'a [u8],
    text: &'a mut [u8],
) -> Result<RuncState<'a>, StateParseError> {
    let (raw, _) = serde_json_core::from_slice::<RawState<'a>>(json)
        .map_err(|e| StateParseError::Json(JsonError::from_serde(&e)))?;
    let mut keep = Keeper {
        arena: TextArena::new(text),
    };

    let raw_id = raw.id.ok_or(StateParseError::Missing(Field::at("id")))?;
    let id = keep.text(raw_id, Field::at("id"), CONTAINER_ID_MAX)?;
    let id = ContainerId::new(id).map_err(StateParseError::BadId)?;
    let pid = raw
        .init_process_pid
        .ok_or(StateParseError::Missing(Field::at("init_process_pid")))?;
    // Pid::from_raw asserts (in debug builds) that its argument is not negative.
    let init_pid = i32::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .and_then(Pid::from_raw)
        .ok_or(StateParseError::BadPid(pid))?;
    let init_start_time = raw
        .init_process_start
        .ok_or(StateParseError::Missing(Field::at("init_process_start")))?;
    let config = raw
        .config
        .ok_or(StateParseError::Missing(Field::at("config")))?;

    check_len("config.mounts", config.mounts.total, MAX_MOUNTS)?;
    check_len(
        "config.mask_paths",
        config.mask_paths.total,
        MAX_MASKED_PATHS,
    )?;
    check_len("config.devices", config.devices.total, MAX_DEVICES)?;
    check_len("config.namespaces", config.namespaces.total, MAX_NAMESPACES)?;
    check_len("cgroup_paths", raw.cgroup_paths.total, MAX_CGROUP_PATHS)?;
    check_len("namespace_paths", raw.namespace_paths.total, MAX_NAMESPACES)?;

    let rootfs = config
        .rootfs
        .ok_or(StateParseError::Missing(Field::at("config.rootfs")))?;
    let rootfs = keep.text(rootfs, Field::at("config.rootfs"), PATH_MAX)?;
    let bundle = match config.labels.bundle {
        Some(raw) => Some(keep.text(raw, Field::at("config.labels (bundle=)"), PATH_MAX)?),
        None => None,
    };
    let criu_config = match config.labels.criu_config {
        Some(raw) => {
            Some(keep.text(raw, Field::at("config.labels (org.criu.config=)"), PATH_MAX)?)
        }
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
        let _ =
            masked_paths.push(keep.text(p, Field::item("config.mask_paths", i, None), PATH_MAX)?);
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

    let resources = match &config.cgroups {
        Some(c) => cgroup_resources::from_raw(c).map_err(StateParseError::Cgroups)?,
        None => Resources::default(),
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
        resources,
    })
}

/// A list over its limit is an error naming it. (The parsed list holds only the first `limit`
/// items; `count` is how many the file has.)
fn check_len(what: &'static str, count: usize, limit: usize) -> Result<(), StateParseError> {
    if count > limit {
        return Err(StateParseError::TooMany { what, count, limit });
    }
    Ok(())
}

/// Decodes the strings that are kept into the text buffer.
struct Keeper<'a> {
    arena: TextArena<'a>,
}

impl<'a> Keeper<'a> {
    fn text(
        &mut self,
        raw: &'a str,
        field: Field,
        limit: usize,
    ) -> Result<&'a str, StateParseError> {
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
    #[serde(borrow)]
    cgroups: Option<RawCgroups<'a>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::bounded_read::{FileSize, ReadErrorKind};
    use crate::inspect::descriptors::FdTarget;
    use crate::inspect::test_support::{fixture, TempDir, TestResult};

    /// Parses `json` with a text buffer as large as the input.
    fn parse(json: &[u8]) -> Result<RuncState<'static>, StateParseError> {
        let json: &'static [u8] = Box::leak(json.to_vec().into_boxed_slice());
        let text: &'static mut [u8] = Box::leak(vec![0u8; json.len()].into_boxed_slice());
        parse_state(json, text)
    }

    /// A minimal state.json with `config` members added.
    fn minimal(config_members: &str) -> String {
        format!(
            r#"{{"id":"ctp","init_process_pid":7769,"init_process_start":98019,"config":{{"rootfs":"/r"{config_members}}}}}"#
        )
    }

    #[test]
    fn parses_the_hybrid_fixture() -> TestResult {
        let s = parse(&fixture("runc-1.1.5-cgroupv1-hybrid/state.json")?)?;
        assert_eq!(s.id.as_str(), "ctp");
        assert_eq!(
            (s.init_pid.as_raw_nonzero().get(), s.init_start_time),
            (7769, 98019)
        );
        assert_eq!(s.rootfs, "/srv/bundles/ctp/rootfs");
        assert_eq!((s.bundle, s.criu_config), (Some("/srv/bundles/ctp"), None));

        assert_eq!(s.mounts.len(), 8);
        let data = s
            .mounts
            .iter()
            .find(|m| m.destination == "/data")
            .ok_or("no /data mount")?;
        // MS_BIND | MS_REC.
        assert_eq!(
            *data,
            Mount {
                source: "/srv/bundles/ctp/hostdata",
                destination: "/data",
                device: "bind",
                flags: 0x5000
            }
        );
        assert!(data.is_bind());
        assert_eq!(s.mounts.iter().filter(|m| m.is_bind()).count(), 1);
        let cgroup = s
            .mounts
            .iter()
            .find(|m| m.is_cgroup())
            .ok_or("no cgroup mount")?;
        assert_eq!(
            (cgroup.destination, cgroup.flags),
            ("/sys/fs/cgroup", 2_097_167)
        );

        assert_eq!(s.masked_paths.len(), 10);
        assert_eq!(s.masked_paths.first().copied(), Some("/proc/acpi"));
        assert_eq!(s.masked_paths.last().copied(), Some("/proc/scsi"));
        assert_eq!(
            s.devices.as_slice(),
            [
                "/dev/null",
                "/dev/random",
                "/dev/full",
                "/dev/tty",
                "/dev/zero",
                "/dev/urandom"
            ]
        );
        assert_eq!(s.namespaces.len(), 5);
        assert_eq!(
            s.namespaces.first(),
            Some(&Namespace {
                kind: "NEWPID",
                path: ""
            })
        );

        assert_eq!(s.cgroup_paths.len(), 10);
        assert_eq!(s.cgroup_path(""), Some("/sys/fs/cgroup/unified/ctp"));
        assert_eq!(
            s.cgroup_path("memory"),
            Some("/sys/fs/cgroup/memory/system.slice/edge-runtime.service/ctp")
        );
        assert_eq!(
            s.cgroup_path("name=systemd"),
            Some("/sys/fs/cgroup/systemd/ctp")
        );
        assert_eq!(s.cgroup_path("freezer"), Some("/sys/fs/cgroup/freezer/ctp"));
        assert_eq!(s.cgroup_path("hugetlb"), None);
        assert_eq!(s.namespace_paths.len(), 7);
        assert_eq!(s.namespace_path("NEWNET"), Some("/proc/7769/ns/net"));
        assert_eq!(s.namespace_path("NEWNS"), Some("/proc/7769/ns/mnt"));
        assert!(s.has_own_netns());

        let fds = s.external_descriptors.ok_or("no external_descriptors")?;
        assert_eq!(
            fds.targets,
            ["/dev/null", "pipe:[21245]", "/srv/bundles/ctp/err.log"]
        );
        assert_eq!(
            fds.pipes().collect::<Vec<_>>(),
            vec![(1, "pipe:[21245]", 21245)]
        );
        Ok(())
    }

    #[test]
    fn a_network_namespace_joined_by_path_is_not_the_containers_own() -> TestResult {
        let text = String::from_utf8(fixture("runc-1.1.5-cgroupv1-hybrid/state.json")?)?;
        let own = r#"{"type":"NEWNET","path":""}"#;
        assert_eq!(text.matches(own).count(), 1);
        let joined = text.replace(own, r#"{"type":"NEWNET","path":"/var/run/netns/cni-1"}"#);
        assert!(!parse(joined.as_bytes())?.has_own_netns());
        let none = text.replace(&format!("{own},"), "");
        assert!(!parse(none.as_bytes())?.has_own_netns());
        Ok(())
    }

    #[test]
    fn parses_the_state_after_restore() -> TestResult {
        let s = parse(&fixture(
            "runc-1.1.5-cgroupv1-hybrid/state-after-restore.json",
        )?)?;
        assert_eq!(
            (s.init_pid.as_raw_nonzero().get(), s.init_start_time),
            (8704, 99429)
        );
        assert_eq!(s.namespace_path("NEWPID"), Some("/proc/8704/ns/pid"));
        let fds = s.external_descriptors.ok_or("no external_descriptors")?;
        assert_eq!(fds.targets, ["/dev/null", "pipe:[23780]", "pipe:[23780]"]);
        Ok(())
    }

    #[test]
    fn decodes_what_go_escaped() -> TestResult {
        let s = parse(&fixture("runc-1.1.5-escapes/state.json")?)?;
        assert_eq!(s.id.as_str(), "esc");
        assert_eq!(s.rootfs, "/tmp/haul-runc/edge&co/rootfs");
        assert_eq!(s.bundle, Some("/tmp/haul-runc/edge&co"));
        // The annotation org.criu.config="" disables runc's default CRIU configuration file.
        assert_eq!(s.criu_config, Some(""));
        let data = s
            .mounts
            .iter()
            .find(|m| m.is_bind())
            .ok_or("no bind mount")?;
        assert_eq!(
            (data.source, data.destination),
            ("/tmp/haul-runc/host data", "/data dir")
        );
        assert_eq!(s.init_start_time, 38097);
        let fds = s.external_descriptors.ok_or("no external_descriptors")?;
        assert_eq!(
            fds.targets,
            ["/dev/null", "pipe:[14031]", "/tmp/haul-runc/err.log"]
        );
        assert_eq!(
            FdTarget::classify(fds.targets[2]),
            FdTarget::Path("/tmp/haul-runc/err.log")
        );
        assert_eq!(
            s.cgroup_path("memory"),
            Some("/sys/fs/cgroup/memory/system.slice/edge-runtime.service/esc")
        );
        Ok(())
    }

    #[test]
    fn parses_a_cgroup2_only_state() -> TestResult {
        let s = parse(&fixture("cgroup2-only-synthetic/state.json")?)?;
        assert_eq!(
            s.cgroup_paths.as_slice(),
            [CgroupPath {
                controller: "",
                path: "/sys/fs/cgroup/system.slice/ctp"
            }]
        );
        Ok(())
    }

    #[test]
    fn reads_from_a_runc_root() -> TestResult {
        let root = TempDir::new("runc-root")?;
        root.write(
            "ctp/state.json",
            &fixture("runc-1.1.5-cgroupv1-hybrid/state.json")?,
        )?;
        root.write(
            "x,y/state.json",
            &fixture("runc-1.1.5-escapes/state-comma-id.json")?,
        )?;
        root.write(
            "other/state.json",
            &fixture("runc-1.1.5-cgroupv1-hybrid/state.json")?,
        )?;
        let mut buf = StateBuf::new();

        let s = read_state(root.path(), &ContainerId::new("ctp")?, &mut buf)?;
        assert_eq!(s.init_pid.as_raw_nonzero().get(), 7769);
        drop(s);
        let s = read_state(root.path(), &ContainerId::new("x,y")?, &mut buf)?;
        assert_eq!((s.id.as_str(), s.init_start_time), ("x,y", 37740));
        drop(s);

        let err = read_state(root.path(), &ContainerId::new("other")?, &mut buf)
            .err()
            .ok_or("the state of ctp was accepted as other's")?;
        assert!(matches!(
            err,
            StateError::Parse {
                error: StateParseError::IdMismatch,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.starts_with("state.json of container other ("), "{msg}");
        assert!(
            msg.ends_with("has an `id` that differs from its directory's name"),
            "{msg}"
        );

        let err = read_state(root.path(), &ContainerId::new("gone")?, &mut buf)
            .err()
            .ok_or("a missing state was read")?;
        let msg = err.to_string();
        assert!(
            msg.starts_with("state of container gone: cannot read "),
            "{msg}"
        );
        assert!(msg.contains("gone/state.json"), "{msg}");
        Ok(())
    }

    #[test]
    fn a_state_json_exactly_at_the_bound_parses_and_one_byte_more_is_refused() -> TestResult {
        let real = fixture("runc-1.1.5-cgroupv1-hybrid/state.json")?;
        let root = TempDir::new("state-bound")?;
        let mut at_bound = real.clone();
        // JSON allows whitespace after the value; pad to exactly STATE_JSON_MAX bytes.
        at_bound.resize(STATE_JSON_MAX, b' ');
        root.write("ctp/state.json", &at_bound)?;
        let mut buf = StateBuf::new();
        let s = read_state(root.path(), &ContainerId::new("ctp")?, &mut buf)?;
        assert_eq!(s.rootfs, "/srv/bundles/ctp/rootfs");
        drop(s);

        at_bound.push(b' ');
        let path = root.write("ctp/state.json", &at_bound)?;
        let err = read_state(root.path(), &ContainerId::new("ctp")?, &mut buf)
            .err()
            .ok_or("a state.json over the bound was read")?;
        let StateError::Read(read) = &err else {
            return Err(format!("unexpected {err:?}").into());
        };
        assert!(matches!(
            read.kind,
            ReadErrorKind::TooLarge {
                size: FileSize::Exact(65537),
                bound: STATE_JSON_MAX
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("65537 bytes") && msg.contains("65536 bytes"),
            "{msg}"
        );
        assert!(msg.contains("container ctp"), "{msg}");

        // The same bound holds with an unknown field as padding.
        let pad = STATE_JSON_MAX - real.len() - r#","pad":"""#.len();
        let mut padded = real.strip_suffix(b"}").ok_or("no closing brace")?.to_vec();
        padded.extend_from_slice(format!(r#","pad":"{}"}}"#, "x".repeat(pad)).as_bytes());
        assert_eq!(padded.len(), STATE_JSON_MAX);
        assert!(parse(&padded).is_ok());
        Ok(())
    }

    #[test]
    fn every_list_has_a_named_limit() -> TestResult {
        // The list's name in errors, its member of config (none: a top-level object), its
        // limit, and the JSON of its i-th item.
        type Case = (&'static str, &'static str, usize, fn(usize) -> String);
        let cases: [Case; 6] = [
            ("config.mounts", "mounts", MAX_MOUNTS, |_| {
                r#"{"source":"s","destination":"/d","device":"tmpfs","flags":0}"#.to_owned()
            }),
            ("config.mask_paths", "mask_paths", MAX_MASKED_PATHS, |i| {
                format!(r#""/m{i}""#)
            }),
            ("config.devices", "devices", MAX_DEVICES, |i| {
                format!(r#"{{"path":"/dev/d{i}"}}"#)
            }),
            ("config.namespaces", "namespaces", MAX_NAMESPACES, |i| {
                format!(r#"{{"type":"T{i}","path":""}}"#)
            }),
            ("cgroup_paths", "", MAX_CGROUP_PATHS, |i| {
                format!(r#""c{i}":"/p""#)
            }),
            ("namespace_paths", "", MAX_NAMESPACES, |i| {
                format!(r#""N{i}":"/p""#)
            }),
        ];
        for (what, member, limit, item) in cases {
            for count in [limit, limit + 1] {
                let items: Vec<String> = (0..count).map(item).collect();
                let json = if member.is_empty() {
                    let inner = minimal("");
                    let top = inner.strip_suffix('}').ok_or("no brace")?;
                    format!(r#"{top},"{what}":{{{}}}}}"#, items.join(","))
                } else {
                    minimal(&format!(r#","{member}":[{}]"#, items.join(",")))
                };
                let got = parse(json.as_bytes());
                if count == limit {
                    assert!(got.is_ok(), "{what} at its limit: {got:?}");
                } else {
                    assert_eq!(
                        got,
                        Err(StateParseError::TooMany { what, count, limit }),
                        "{what}"
                    );
                }
            }
        }
        let msg = StateParseError::TooMany {
            what: "config.mounts",
            count: 70,
            limit: 64,
        }
        .to_string();
        assert_eq!(msg, "has more than 64 config.mounts (70 found, limit 64)");
        Ok(())
    }

    #[test]
    fn too_many_mounts_is_reported_with_the_container_and_file() -> TestResult {
        let mounts: Vec<&str> = vec![r#"{"device":"tmpfs"}"#; MAX_MOUNTS + 6];
        let json = minimal(&format!(r#","mounts":[{}]"#, mounts.join(",")));
        let root = TempDir::new("state-many")?;
        root.write("ctp/state.json", json.as_bytes())?;
        let mut buf = StateBuf::new();
        let err = read_state(root.path(), &ContainerId::new("ctp")?, &mut buf)
            .err()
            .ok_or("70 mounts accepted")?;
        let msg = err.to_string();
        assert!(msg.starts_with("state.json of container ctp ("), "{msg}");
        assert!(
            msg.ends_with(") has more than 64 config.mounts (70 found, limit 64)"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn paths_are_limited_to_path_max_after_decoding() -> TestResult {
        let at = minimal(&format!(
            r#","mounts":[{{"source":"/{}"}}]"#,
            "a".repeat(PATH_MAX - 1)
        ));
        assert_eq!(
            parse(at.as_bytes())?.mounts.first().map(|m| m.source.len()),
            Some(PATH_MAX)
        );
        // An escape makes the raw text longer than PATH_MAX, but not the path.
        let escaped = minimal(&format!(
            r#","mounts":[{{"source":"/{}\u0026"}}]"#,
            "a".repeat(PATH_MAX - 2)
        ));
        assert_eq!(
            parse(escaped.as_bytes())?
                .mounts
                .first()
                .map(|m| m.source.len()),
            Some(PATH_MAX)
        );
        let over = minimal(&format!(
            r#","mounts":[{{"device":"bind"}},{{"source":"/{}"}}]"#,
            "a".repeat(PATH_MAX)
        ));
        let err = parse(over.as_bytes()).err().ok_or("a long path was kept")?;
        let field = Field {
            name: "config.mounts",
            index: Some(1),
            member: Some("source"),
        };
        let problem = TextProblem::TooLong {
            len: PATH_MAX + 1,
            limit: PATH_MAX,
        };
        assert_eq!(err, StateParseError::Text { field, problem });
        assert_eq!(
            err.to_string(),
            "has a `config.mounts[1].source` that is 4097 bytes long, over the limit of 4096 bytes"
        );
        let nul = minimal(r#","mask_paths":["/a\u0000b"]"#);
        assert_eq!(
            parse(nul.as_bytes()),
            Err(StateParseError::Text {
                field: Field::item("config.mask_paths", 0, None),
                problem: TextProblem::Nul
            })
        );
        Ok(())
    }

    #[test]
    fn labels_keep_the_last_bundle_and_skip_annotations() -> TestResult {
        let json = minimal(
            r#","labels":["bundle=/first","note=\"quoted\" \u0026 \\","org.criu.config=/etc/c.conf","bundle=/srv/a\u0026b"]"#,
        );
        let s = parse(json.as_bytes())?;
        assert_eq!(
            (s.bundle, s.criu_config),
            (Some("/srv/a&b"), Some("/etc/c.conf"))
        );
        let s = parse(minimal(r#","labels":null"#).as_bytes())?;
        assert_eq!((s.bundle, s.criu_config), (None, None));
        // Annotations are never decoded, so a bad escape in one does not matter.
        let many: Vec<String> = (0..100).map(|i| format!(r#""k{i}=v\q""#)).collect();
        let s =
            parse(minimal(&format!(r#","labels":[{},"bundle=/b"]"#, many.join(","))).as_bytes())?;
        assert_eq!(s.bundle, Some("/b"));
        Ok(())
    }

    #[test]
    fn required_fields_and_values_are_checked() {
        let missing = |name| Err(StateParseError::Missing(Field::at(name)));
        assert_eq!(
            parse(br#"{"init_process_pid":1,"init_process_start":1,"config":{"rootfs":"/"}}"#),
            missing("id")
        );
        assert_eq!(
            parse(br#"{"id":"a","init_process_start":1,"config":{"rootfs":"/"}}"#),
            missing("init_process_pid")
        );
        assert_eq!(
            parse(br#"{"id":"a","init_process_pid":1,"config":{"rootfs":"/"}}"#),
            missing("init_process_start")
        );
        assert_eq!(
            parse(br#"{"id":"a","init_process_pid":1,"init_process_start":1}"#),
            missing("config")
        );
        assert_eq!(
            parse(br#"{"id":"a","init_process_pid":1,"init_process_start":1,"config":null}"#),
            missing("config")
        );
        assert_eq!(
            parse(br#"{"id":"a","init_process_pid":1,"init_process_start":1,"config":{}}"#),
            missing("config.rootfs")
        );
        for (pid, text) in [(0, "0"), (-5, "-5"), (1 << 40, "1099511627776")] {
            let json = format!(
                r#"{{"id":"a","init_process_pid":{text},"init_process_start":1,"config":{{"rootfs":"/"}}}}"#
            );
            assert_eq!(parse(json.as_bytes()), Err(StateParseError::BadPid(pid)));
        }
        let bad_id =
            br#"{"id":"../x","init_process_pid":1,"init_process_start":1,"config":{"rootfs":"/"}}"#;
        assert_eq!(
            parse(bad_id),
            Err(StateParseError::BadId(ContainerIdError::BadByte {
                byte: b'/',
                at: 2
            }))
        );
        let two = minimal("").replace(
            r#""config""#,
            r#""external_descriptors":["/dev/null","x"],"config""#,
        );
        assert_eq!(
            parse(two.as_bytes()),
            Err(StateParseError::Descriptors(DescriptorsError::WrongCount {
                count: 2
            }))
        );
        assert_eq!(
            parse(minimal("").as_bytes()).map(|s| s.external_descriptors),
            Ok(None)
        );
    }

    #[test]
    fn malformed_json_is_an_error_in_words() -> TestResult {
        let real = fixture("runc-1.1.5-cgroupv1-hybrid/state.json")?;
        let truncated = real.get(..real.len() / 2).ok_or("short fixture")?;
        let err = parse(truncated).err().ok_or("truncated JSON accepted")?;
        assert!(matches!(err, StateParseError::Json(_)));
        assert!(
            err.to_string().starts_with("is not the JSON runc writes: "),
            "{err}"
        );
        assert!(matches!(
            parse(br#"{"id":1}"#),
            Err(StateParseError::Json(_))
        ));
        assert!(matches!(
            parse(br#"{"id":"a","id":"b"}"#),
            Err(StateParseError::Json(_))
        ));
        assert!(matches!(parse(b""), Err(StateParseError::Json(_))));
        assert!(matches!(
            parse(br#"{"config":{"mounts":[{"flags":-1}]}}"#),
            Err(StateParseError::Json(_))
        ));
        Ok(())
    }
}
