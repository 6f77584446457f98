//! The container's cgroup settings on the destination: what `runc restore` applies to the
//! cgroups of the restored tasks (libcontainer's criuApplyCgroups: the cgroups, then Set of
//! `config.cgroups`' resources), haul writes into the cgroups it creates for them before the
//! restoring CRIU moves in. Without it the restored container would run with no device
//! restrictions (any device node it can mknod, it could open) and no memory, pids or cpu
//! limits.
//!
//! Cgroup v1 files, as runc's fs driver writes them:
//!
//! | setting | file |
//! |---|---|
//! | device rules | `devices.deny` `a` first, then each rule to `devices.allow` or `devices.deny`: `c 1:3 rwm`, `*` for any number |
//! | memory, reservation, memory+swap | `memory.limit_in_bytes`, `memory.soft_limit_in_bytes`, `memory.memsw.limit_in_bytes` |
//! | pids | `pids.max` (`max` for -1) |
//! | cpu shares, period, quota | `cpu.shares`, `cpu.cfs_period_us`, `cpu.cfs_quota_us` |
//! | cpuset | `cpuset.cpus`, `cpuset.mems` |
//!
//! A host without the v1 hierarchy a setting needs (cgroup2-only: device rules there are an
//! eBPF program haul does not install) refuses the migration in the preflight, before the
//! source freezes anything, as it refuses settings haul does not carry at all.

use crate::cgroups::HostHierarchy;
use crate::inspect::{DeviceRule, Resources};

/// One write: (controller, file, value).
pub type Write = (&'static str, &'static str, String);

/// The writes that give the container's cgroups the settings of `r`, in order, or why this
/// host cannot carry them (`hier`: the destination's hierarchies).
pub fn plan(r: &Resources<'_>, hier: &[HostHierarchy]) -> Result<Vec<Write>, String> {
    if let Some(name) = r.unsupported {
        return Err(format!(
            "the container sets config.cgroups.{name}, which haul does not carry: it would run \
             on the destination without it"
        ));
    }
    let mut w: Vec<Write> = Vec::new();
    if !r.devices.is_empty() {
        w.push(("devices", "devices.deny", "a".into()));
        for d in &r.devices {
            let file = if d.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            w.push(("devices", file, device_line(d)));
        }
    }
    if r.memory != 0 {
        w.push(("memory", "memory.limit_in_bytes", r.memory.to_string()));
    }
    if r.memory_reservation != 0 {
        w.push((
            "memory",
            "memory.soft_limit_in_bytes",
            r.memory_reservation.to_string(),
        ));
    }
    if r.memory_swap != 0 {
        w.push((
            "memory",
            "memory.memsw.limit_in_bytes",
            r.memory_swap.to_string(),
        ));
    }
    match r.pids_limit {
        0 => {}
        n if n < 0 => w.push(("pids", "pids.max", "max".into())),
        n => w.push(("pids", "pids.max", n.to_string())),
    }
    if r.cpu_shares != 0 {
        w.push(("cpu", "cpu.shares", r.cpu_shares.to_string()));
    }
    if r.cpu_period != 0 {
        w.push(("cpu", "cpu.cfs_period_us", r.cpu_period.to_string()));
    }
    if r.cpu_quota != 0 {
        w.push(("cpu", "cpu.cfs_quota_us", r.cpu_quota.to_string()));
    }
    if !r.cpuset_cpus.is_empty() {
        w.push(("cpuset", "cpuset.cpus", r.cpuset_cpus.to_string()));
    }
    if !r.cpuset_mems.is_empty() {
        w.push(("cpuset", "cpuset.mems", r.cpuset_mems.to_string()));
    }
    for (controller, file, _) in &w {
        if !hier.iter().any(|h| has_controller(h, controller)) {
            return Err(format!(
                "the container's {file} needs a cgroup v1 {controller} hierarchy, which this \
                 host has not mounted (device rules on a cgroup2-only host need an eBPF \
                 program haul does not install)"
            ));
        }
    }
    Ok(w)
}

/// Whether `h` is a v1 hierarchy with `controller`.
pub fn has_controller(h: &HostHierarchy, controller: &str) -> bool {
    !h.is_v2() && h.controllers.split(',').any(|c| c == controller)
}

/// A v1 device rule line: `c 1:3 rwm`, `a *:* rwm`.
fn device_line(d: &DeviceRule<'_>) -> String {
    let n = |v: Option<u32>| v.map_or_else(|| "*".to_string(), |v| v.to_string());
    format!("{} {}:{} {}", d.kind, n(d.major), n(d.minor), d.permissions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn v1(controllers: &str) -> HostHierarchy {
        HostHierarchy {
            controllers: controllers.into(),
            mount_point: PathBuf::from("/sys/fs/cgroup").join(controllers),
            own: PathBuf::from("haul.service"),
        }
    }

    fn hybrid() -> Vec<HostHierarchy> {
        ["devices", "memory", "pids", "cpu,cpuacct", "cpuset", ""]
            .iter()
            .map(|c| v1(c))
            .collect()
    }

    fn rule(
        kind: char,
        major: Option<u32>,
        minor: Option<u32>,
        allow: bool,
    ) -> DeviceRule<'static> {
        DeviceRule {
            kind,
            major,
            minor,
            permissions: "rwm",
            allow,
        }
    }

    #[test]
    fn device_rules_start_from_deny_all_and_limits_follow() {
        let mut r = Resources {
            memory: 256 << 20,
            memory_swap: -1,
            pids_limit: 100,
            cpu_shares: 512,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpuset_cpus: "0",
            ..Resources::default()
        };
        for d in [
            rule('a', None, None, false),
            rule('c', Some(1), Some(3), true),
            rule('c', Some(136), None, true),
        ] {
            r.devices.push(d).unwrap();
        }
        let w = plan(&r, &hybrid()).unwrap();
        let got: Vec<String> = w.iter().map(|(_, f, v)| format!("{f}={v}")).collect();
        assert_eq!(
            got,
            [
                "devices.deny=a",
                "devices.deny=a *:* rwm",
                "devices.allow=c 1:3 rwm",
                "devices.allow=c 136:* rwm",
                "memory.limit_in_bytes=268435456",
                "memory.memsw.limit_in_bytes=-1",
                "pids.max=100",
                "cpu.shares=512",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=50000",
                "cpuset.cpus=0",
            ]
        );
        // "cpu" is found in the "cpu,cpuacct" hierarchy.
        assert!(w
            .iter()
            .all(|(c, _, _)| hybrid().iter().any(|h| has_controller(h, c))));
    }

    #[test]
    fn nothing_set_writes_nothing_and_unlimited_pids_is_max() {
        assert!(plan(&Resources::default(), &hybrid()).unwrap().is_empty());
        let r = Resources {
            pids_limit: -1,
            ..Resources::default()
        };
        assert_eq!(
            plan(&r, &hybrid()).unwrap(),
            [("pids", "pids.max", "max".to_string())]
        );
    }

    #[test]
    fn what_the_host_or_haul_cannot_carry_is_refused() {
        let mut r = Resources::default();
        r.devices.push(rule('a', None, None, false)).unwrap();
        let v2_only = [v1("")];
        let e = plan(&r, &v2_only).unwrap_err();
        assert!(e.contains("devices.deny") && e.contains("eBPF"), "{e}");
        let r = Resources {
            unsupported: Some("blkio_weight"),
            ..Resources::default()
        };
        let e = plan(&r, &hybrid()).unwrap_err();
        assert!(e.contains("config.cgroups.blkio_weight"), "{e}");
    }
}
