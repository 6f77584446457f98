//! The cgroup settings of a runc container (`config.cgroups` in state.json), which the
//! destination applies to the cgroups it creates for the restored tasks, as `runc restore`
//! does (libcontainer's criuApplyCgroups: Apply, then Set of the resources).
//!
//! runc 1.1.5 writes the resources inline in `config.cgroups` (fixtures/runc-1.1.5-*):
//!
//! ```text
//! "cgroups":{"name":"ctp","path":"","devices":[{"type":97,"major":-1,"minor":-1,
//!   "permissions":"rwm","allow":false},{"type":99,"major":1,"minor":3,"permissions":"rwm",
//!   "allow":true},...],"memory":0,"memory_reservation":0,"memory_swap":0,"cpu_shares":0,
//!   "cpu_quota":0,"cpu_period":0,...,"pids_limit":0,"blkio_weight":0,...,"unified":null}
//! ```
//!
//! A device rule's `type` is a character code (`a` 97, `b` 98, `c` 99); `-1` is any major or
//! minor number. Zero, empty and null mean "not set". haul carries the device rules, memory,
//! pids, cpu and cpuset settings; a container that sets anything else is refused before it is
//! frozen (it would run on the destination without it), and [`Resources::unsupported`] names
//! the first such setting.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::bounds::MAX_DEVICE_RULES;
use super::json::{BoundedMap, BoundedSeq};

/// One device cgroup rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule<'a> {
    /// `a` (all), `b` (block) or `c` (character).
    pub kind: char,
    /// Major number; `None` is any.
    pub major: Option<u32>,
    /// Minor number; `None` is any.
    pub minor: Option<u32>,
    /// Some of `r`, `w`, `m`.
    pub permissions: &'a str,
    /// Allow (true) or deny.
    pub allow: bool,
}

/// The settings haul applies; zero, empty or negative values are "not set" except where a
/// field says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resources<'a> {
    /// Device rules, in order (runc starts with "deny all").
    pub devices: heapless::Vec<DeviceRule<'a>, MAX_DEVICE_RULES>,
    /// Memory limit in bytes (`-1`: unlimited).
    pub memory: i64,
    /// Memory soft limit in bytes.
    pub memory_reservation: i64,
    /// Memory plus swap limit in bytes (`-1`: unlimited).
    pub memory_swap: i64,
    /// CPU shares (cgroup v1 weight).
    pub cpu_shares: u64,
    /// CFS quota in microseconds per period (`-1`: unlimited).
    pub cpu_quota: i64,
    /// CFS period in microseconds.
    pub cpu_period: u64,
    /// CPUs the tasks may run on (`""`: the parent's).
    pub cpuset_cpus: &'a str,
    /// Memory nodes (`""`: the parent's).
    pub cpuset_mems: &'a str,
    /// Most tasks (`-1`: unlimited).
    pub pids_limit: i64,
    /// The first setting in the config that haul does not carry, if any.
    pub unsupported: Option<&'static str>,
}

/// A device rule as runc writes it.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct RawDeviceRule<'a> {
    #[serde(rename = "type")]
    kind: u32,
    major: i64,
    minor: i64,
    #[serde(borrow)]
    permissions: &'a str,
    allow: bool,
}

/// `config.cgroups` as runc writes it (the fields haul applies, and the ones it refuses).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct RawCgroups<'a> {
    #[serde(borrow)]
    devices: BoundedSeq<RawDeviceRule<'a>, MAX_DEVICE_RULES>,
    memory: i64,
    memory_reservation: i64,
    memory_swap: i64,
    cpu_shares: u64,
    cpu_quota: i64,
    cpu_period: u64,
    cpu_rt_quota: i64,
    cpu_rt_period: u64,
    #[serde(borrow)]
    cpuset_cpus: &'a str,
    #[serde(borrow)]
    cpuset_mems: &'a str,
    pids_limit: i64,
    blkio_weight: u64,
    blkio_leaf_weight: u64,
    blkio_weight_device: BoundedSeq<IgnoredAny, 0>,
    blkio_throttle_read_bps_device: BoundedSeq<IgnoredAny, 0>,
    blkio_throttle_write_bps_device: BoundedSeq<IgnoredAny, 0>,
    blkio_throttle_read_iops_device: BoundedSeq<IgnoredAny, 0>,
    blkio_throttle_write_iops_device: BoundedSeq<IgnoredAny, 0>,
    hugetlb_limit: BoundedSeq<IgnoredAny, 0>,
    oom_kill_disable: bool,
    memory_swappiness: Option<u64>,
    net_prio_ifpriomap: BoundedSeq<IgnoredAny, 0>,
    net_cls_classid_u: u64,
    #[serde(borrow)]
    rdma: BoundedMap<'a, 0>,
    #[serde(borrow)]
    unified: BoundedMap<'a, 0>,
    cpu_weight: u64,
}

/// What is wrong with `config.cgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourcesError {
    /// More device rules than haul keeps.
    TooManyRules { count: usize },
    /// A device rule haul cannot read (`index` in `config.cgroups.devices`).
    BadRule { index: usize, why: &'static str },
}

impl core::fmt::Display for ResourcesError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ResourcesError::TooManyRules { count } => write!(
                f,
                "has more than {MAX_DEVICE_RULES} config.cgroups.devices rules ({count} found, \
                 limit {MAX_DEVICE_RULES})"
            ),
            ResourcesError::BadRule { index, why } => {
                write!(f, "has a config.cgroups.devices[{index}] rule that {why}")
            }
        }
    }
}

/// Checks and keeps the settings of `raw`. `permissions` and `cpuset_*` strings are taken as
/// they are in the file: runc writes them without escapes, and any escape is refused.
pub(crate) fn from_raw<'a>(raw: &RawCgroups<'a>) -> Result<Resources<'a>, ResourcesError> {
    if raw.devices.total > MAX_DEVICE_RULES {
        return Err(ResourcesError::TooManyRules {
            count: raw.devices.total,
        });
    }
    let mut devices = heapless::Vec::new();
    for (index, d) in raw.devices.items.iter().enumerate() {
        let bad = |why| ResourcesError::BadRule { index, why };
        let kind = match d.kind {
            97 => 'a',
            98 => 'b',
            99 => 'c',
            _ => return Err(bad("is not of type a, b or c")),
        };
        let number = |n: i64| -> Result<Option<u32>, ResourcesError> {
            match n {
                -1 => Ok(None),
                n => u32::try_from(n)
                    .map(Some)
                    .map_err(|_| bad("has a device number out of range")),
            }
        };
        if d.permissions.is_empty() || !d.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        {
            return Err(bad("has permissions other than r, w and m"));
        }
        let rule = DeviceRule {
            kind,
            major: number(d.major)?,
            minor: number(d.minor)?,
            permissions: d.permissions,
            allow: d.allow,
        };
        // Cannot fail: as many places as the raw list keeps.
        let _ = devices.push(rule);
    }
    let plain = |s: &'a str| -> Result<&'a str, ResourcesError> {
        if s.contains('\\') {
            Err(ResourcesError::BadRule {
                index: 0,
                why: "has an escaped cpuset value",
            })
        } else {
            Ok(s)
        }
    };
    Ok(Resources {
        devices,
        memory: raw.memory,
        memory_reservation: raw.memory_reservation,
        memory_swap: raw.memory_swap,
        cpu_shares: raw.cpu_shares,
        cpu_quota: raw.cpu_quota,
        cpu_period: raw.cpu_period,
        cpuset_cpus: plain(raw.cpuset_cpus)?,
        cpuset_mems: plain(raw.cpuset_mems)?,
        pids_limit: raw.pids_limit,
        unsupported: unsupported(raw),
    })
}

/// The first setting of `raw` that haul does not apply on the destination.
fn unsupported(raw: &RawCgroups<'_>) -> Option<&'static str> {
    let set = [
        (raw.cpu_rt_quota != 0, "cpu_rt_quota"),
        (raw.cpu_rt_period != 0, "cpu_rt_period"),
        (raw.blkio_weight != 0, "blkio_weight"),
        (raw.blkio_leaf_weight != 0, "blkio_leaf_weight"),
        (raw.blkio_weight_device.total > 0, "blkio_weight_device"),
        (
            raw.blkio_throttle_read_bps_device.total > 0,
            "blkio_throttle_read_bps_device",
        ),
        (
            raw.blkio_throttle_write_bps_device.total > 0,
            "blkio_throttle_write_bps_device",
        ),
        (
            raw.blkio_throttle_read_iops_device.total > 0,
            "blkio_throttle_read_iops_device",
        ),
        (
            raw.blkio_throttle_write_iops_device.total > 0,
            "blkio_throttle_write_iops_device",
        ),
        (raw.hugetlb_limit.total > 0, "hugetlb_limit"),
        (raw.oom_kill_disable, "oom_kill_disable"),
        (raw.memory_swappiness.is_some(), "memory_swappiness"),
        (raw.net_prio_ifpriomap.total > 0, "net_prio_ifpriomap"),
        (raw.net_cls_classid_u != 0, "net_cls_classid_u"),
        (raw.rdma.total > 0, "rdma"),
        (raw.unified.total > 0, "unified"),
        (raw.cpu_weight != 0, "cpu_weight"),
    ];
    set.iter().find(|(on, _)| *on).map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Resources<'_>, ResourcesError> {
        let (raw, _) = serde_json_core::from_str::<RawCgroups<'_>>(json).unwrap();
        from_raw(&raw)
    }

    /// The fixture's rules, read through state.json's parser: runc's defaults, deny all first.
    #[test]
    fn the_fixture_s_rules_and_limits() {
        let json = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/runc-1.1.5-cgroupv1-hybrid/state.json"
        ))
        .unwrap();
        let mut text = vec![0u8; json.len()];
        let st = crate::inspect::parse_state(&json, &mut text).unwrap();
        let r = &st.resources;
        assert_eq!(r.devices.len(), 12);
        assert_eq!(
            r.devices.first(),
            Some(&DeviceRule {
                kind: 'a',
                major: None,
                minor: None,
                permissions: "rwm",
                allow: false
            })
        );
        assert!(r.devices.iter().skip(1).all(|d| d.allow));
        assert!(r
            .devices
            .iter()
            .any(|d| d.kind == 'c' && d.major == Some(1) && d.minor == Some(3)));
        assert_eq!((r.memory, r.pids_limit, r.cpu_shares), (0, 0, 0));
        assert_eq!(r.unsupported, None);
    }

    #[test]
    fn limits_are_kept_and_settings_haul_cannot_carry_are_named() {
        let r = parse(
            r#"{"memory":268435456,"memory_swap":-1,"pids_limit":100,"cpu_shares":512,
               "cpu_quota":50000,"cpu_period":100000,"cpuset_cpus":"0-1","unified":null,
               "rdma":null,"memory_swappiness":null,"hugetlb_limit":null}"#,
        )
        .unwrap();
        assert_eq!(
            (r.memory, r.memory_swap, r.pids_limit),
            (268435456, -1, 100)
        );
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.cpu_period),
            (512, 50000, 100000)
        );
        assert_eq!(r.cpuset_cpus, "0-1");
        assert_eq!(r.unsupported, None);
        for (json, name) in [
            (r#"{"blkio_weight":500}"#, "blkio_weight"),
            (
                r#"{"blkio_throttle_read_bps_device":[{"major":8,"minor":0,"rate":1}]}"#,
                "blkio_throttle_read_bps_device",
            ),
            (
                r#"{"hugetlb_limit":[{"Pagesize":"2MB","Limit":1}]}"#,
                "hugetlb_limit",
            ),
            (r#"{"memory_swappiness":0}"#, "memory_swappiness"),
            (r#"{"unified":{"memory.high":"1G"}}"#, "unified"),
            (r#"{"rdma":{"mlx4":{"hca_handles":1}}}"#, "rdma"),
            (r#"{"oom_kill_disable":true}"#, "oom_kill_disable"),
        ] {
            assert_eq!(parse(json).unwrap().unsupported, Some(name), "{json}");
        }
    }

    #[test]
    fn bad_rules_and_too_many_rules_are_refused() {
        let rule = r#"{"type":99,"major":1,"minor":3,"permissions":"rwm","allow":true}"#;
        let many = format!(
            r#"{{"devices":[{}]}}"#,
            vec![rule; MAX_DEVICE_RULES].join(",")
        );
        assert_eq!(parse(&many).unwrap().devices.len(), MAX_DEVICE_RULES);
        let over = format!(
            r#"{{"devices":[{}]}}"#,
            vec![rule; MAX_DEVICE_RULES + 1].join(",")
        );
        assert_eq!(
            parse(&over).unwrap_err(),
            ResourcesError::TooManyRules {
                count: MAX_DEVICE_RULES + 1
            }
        );
        for bad in [
            r#"{"devices":[{"type":120,"major":1,"minor":3,"permissions":"rwm","allow":true}]}"#,
            r#"{"devices":[{"type":99,"major":-2,"minor":3,"permissions":"rwm","allow":true}]}"#,
            r#"{"devices":[{"type":99,"major":1,"minor":3,"permissions":"rwx","allow":true}]}"#,
            r#"{"devices":[{"type":99,"major":1,"minor":3,"permissions":"","allow":true}]}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ResourcesError::BadRule { index: 0, .. })),
                "{bad}"
            );
        }
    }
}
