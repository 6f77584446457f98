//! cgroups on a host: the hierarchies mounted here (from /proc/self/mountinfo and
//! /proc/self/cgroup), freezing and thawing a container's v1 freezer, and creating a restored
//! container's cgroups on the destination.

use crate::error::{Context, Error, Kind, Result};
use crate::inspect::{read_mountinfo, read_proc_cgroup, MountInfoBuf, ProcCgroupBuf, ProcPid};
use std::path::{Path, PathBuf};

/// A hierarchy mounted on this host and this process's cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHierarchy {
    /// `cpu,cpuacct`, `memory`, `name=systemd`; empty for cgroup2.
    pub controllers: String,
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mount_point: PathBuf,
    /// This process's cgroup relative to the mount's root (`/proc/self/cgroup` minus the
    /// mount's root), e.g. `system.slice/haul.service`.
    pub own: PathBuf,
}

impl HostHierarchy {
    pub fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    /// The directory of a child cgroup `name` of this process's cgroup.
    pub fn child(&self, name: &str) -> PathBuf {
        self.mount_point.join(&self.own).join(name)
    }

    /// The last component of the mount point: the name runc gives the bind in the container.
    pub fn name(&self) -> String {
        self.mount_point
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The hierarchies of the process `pid` (as seen under `proc_root`), matched by exact
/// controller sets between its cgroup file and its mountinfo (never by substring).
pub fn hierarchies(proc_root: &Path, pid: ProcPid) -> Result<Vec<HostHierarchy>> {
    let mut cg_buf = ProcCgroupBuf::new();
    let cg =
        read_proc_cgroup(proc_root, pid, &mut cg_buf).map_err(|e| Error::other(e.to_string()))?;
    let mut mi_buf = MountInfoBuf::new();
    let mounts =
        read_mountinfo(proc_root, pid, &mut mi_buf).map_err(|e| Error::other(e.to_string()))?;
    let mut found: Vec<HostHierarchy> = Vec::new();
    let mut all = Vec::new();
    for m in mounts {
        let m = m.map_err(|e| Error::other(e.to_string()))?;
        all.push((
            m.fs_type.to_string_lossy().into_owned(),
            m.super_options
                .iter()
                .map(|o| o.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            m.mount_point.to_path_buf(),
            m.root.to_path_buf(),
        ));
    }
    for line in &cg.lines {
        let want: Vec<&str> = line.controllers().collect();
        let mount = all.iter().find(|(fs, opts, _, _)| {
            if line.is_unified() {
                fs == "cgroup2"
            } else {
                fs == "cgroup"
                    && want.iter().all(|c| opts.iter().any(|o| o == c))
                    && opts
                        .iter()
                        .filter(|o| is_controller_option(o))
                        .all(|o| want.contains(&o.as_str()))
            }
        });
        let Some((_, _, mount_point, root)) = mount else {
            continue;
        };
        // Relative, so joining it to the mount point can never replace the mount point.
        let rel = line.path.strip_prefix(root).unwrap_or(line.path);
        let own = rel.strip_prefix("/").unwrap_or(rel).to_path_buf();
        found.push(HostHierarchy {
            controllers: line.controllers.to_string(),
            mount_point: mount_point.clone(),
            own,
        });
    }
    Ok(found)
}

/// Super options of a cgroup v1 mount that name controllers (not `rw`, `relatime`, ...).
fn is_controller_option(o: &str) -> bool {
    !matches!(
        o,
        "rw" | "ro"
            | "relatime"
            | "noprefix"
            | "xattr"
            | "clone_children"
            | "nosuid"
            | "nodev"
            | "noexec"
            | "cpuset_v2_mode"
            | "favordynmods"
            | "nsdelegate"
            | "memory_recursiveprot"
    ) && !o.starts_with("release_agent=")
}

/// Reaps haul's own zombie children before a cgroup is removed: with `rst_sibling` a restored
/// root task is haul's child, and after a failed restore its zombie keeps the cgroup busy.
/// Only zombies (state Z) whose parent is this process are waited for, by pid, so this never
/// blocks; a zombie is dead, so nothing else needs its status.
fn reap_dead_children_in(_dir: &Path) {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": the fields after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut f = rest.split(' ');
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<i32>().ok()));
        if state == Some("Z") && ppid == Some(me) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
    }
}

/// Freezes a v1 freezer cgroup and waits until the kernel says FROZEN, looking every
/// millisecond for at most `limit`. CRIU's own freezing looks every 100 ms, so a tree that takes
/// 1 ms to freeze can cost it 100 ms of downtime; frozen here first, CRIU finds it FROZEN, seizes
/// the tasks and thaws the cgroup as usual (it leaves a cgroup frozen only when its dump fails:
/// the caller thaws it then). Returns false, with the cgroup thawed again, if it did not freeze
/// in time: CRIU then freezes it itself, with its remedies for a freezer stuck in FREEZING.
pub fn freeze(dir: &Path, limit: std::time::Duration) -> Result<bool> {
    let state = dir.join("freezer.state");
    std::fs::write(&state, "FROZEN").ctx(Kind::Other, format!("freezing {}", dir.display()))?;
    let end = std::time::Instant::now() + limit;
    loop {
        // A short kernel-generated file: THAWED, FREEZING or FROZEN.
        let now = crate::util::read_bounded(&state, 64)
            .ctx(Kind::Other, format!("reading {}", state.display()))?;
        if now.trim_ascii() == b"FROZEN" {
            return Ok(true);
        }
        if std::time::Instant::now() >= end {
            thaw(dir)?;
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Thaws a v1 freezer cgroup.
pub fn thaw(dir: &Path) -> Result<()> {
    std::fs::write(dir.join("freezer.state"), "THAWED")
        .ctx(Kind::Other, format!("thawing {}", dir.display()))
}

/// cgroups created for a restored container; removed on drop unless kept.
pub struct Created {
    /// (controllers of the hierarchy, directory)
    pub dirs: Vec<(String, PathBuf)>,
    /// (directory, its parent): where the moved process goes back on rollback.
    parents: Vec<PathBuf>,
    pid: u32,
    keep: bool,
}

impl Created {
    /// Creates `<own cgroup>/<name>` in every hierarchy, writes the container's settings
    /// (`limits`, from `dest::cgroup_limits::plan`) and moves `pid` (the restoring CRIU) into
    /// each, so the tasks CRIU forks start in the container's cgroups under its limits.
    pub fn create(
        hier: &[HostHierarchy],
        name: &str,
        pid: u32,
        limits: &[crate::dest::cgroup_limits::Write],
    ) -> Result<Created> {
        let mut created = Created {
            dirs: Vec::new(),
            parents: Vec::new(),
            pid,
            keep: false,
        };
        for h in hier {
            let dir = h.child(name);
            if dir.exists() {
                return Err(Error::new(
                    Kind::Refused,
                    format!("cgroup {} already exists", dir.display()),
                ));
            }
            std::fs::create_dir_all(&dir)
                .ctx(Kind::Setup, format!("creating cgroup {}", dir.display()))?;
            created.dirs.push((h.controllers.clone(), dir.clone()));
            created.parents.push(h.mount_point.join(&h.own));
            if h.controllers.split(',').any(|c| c == "cpuset") {
                // A v1 cpuset cgroup takes no task until its cpus and mems are set: inherit
                // the parent's, as runc does.
                let parent = h.mount_point.join(&h.own);
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                    std::fs::write(dir.join(f), v.trim())
                        .ctx(Kind::Setup, format!("setting {f} of {}", dir.display()))?;
                }
            }
            for (controller, file, value) in limits {
                if !crate::dest::cgroup_limits::has_controller(h, controller) {
                    continue;
                }
                let path = dir.join(file);
                // Without swap accounting there is no memsw file; "unlimited" needs none.
                if value == "-1" && !path.exists() {
                    continue;
                }
                write_setting(&path, value)?;
            }
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .ctx(Kind::Setup, format!("moving criu into {}", dir.display()))?;
        }
        Ok(created)
    }

    /// runc's `cgroup_paths`: one key per controller (`""` for cgroup2).
    pub fn runc_paths(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (ctrls, dir) in &self.dirs {
            let d = dir.to_string_lossy().into_owned();
            if ctrls.is_empty() {
                out.push((String::new(), d));
            } else {
                for c in ctrls.split(',') {
                    out.push((c.to_string(), d.clone()));
                }
            }
        }
        out
    }

    pub fn keep(mut self) {
        self.keep = true;
    }
}

/// One write into a cgroup file (each write to `devices.allow`/`devices.deny` is one rule:
/// the file is opened for each, in append mode so a plain directory in tests keeps them all).
fn write_setting(path: &Path, value: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .create(false)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .ctx(
            Kind::Setup,
            format!("setting {} to {value:?}", path.display()),
        )
}

impl Drop for Created {
    fn drop(&mut self) {
        if !self.keep {
            for ((_, d), parent) in self.dirs.iter().zip(&self.parents).rev() {
                // The process moved in (CRIU) may still live: move it back first. rmdir
                // only: a cgroup with tasks left is not removed.
                let _ = std::fs::write(parent.join("cgroup.procs"), self.pid.to_string());
                // A task killed by a failed restore may still be exiting: reap and retry
                // for up to a second.
                let mut last = None;
                for _ in 0..50 {
                    reap_dead_children_in(d);
                    match std::fs::remove_dir(d) {
                        Ok(()) => {
                            last = None;
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            last = None;
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                if let Some(e) = last {
                    log::warn!("cannot remove cgroup {}: {e}", d.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_waits_for_frozen_and_thaw_lets_the_task_run() {
        let root = Path::new("/sys/fs/cgroup/freezer");
        if !rustix::process::geteuid().is_root() || !root.join("cgroup.procs").exists() {
            eprintln!("skipped: needs root and a cgroup v1 freezer hierarchy");
            return;
        }
        let dir = root.join(format!("haul-test-freeze-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        let state = |d: &Path| std::fs::read_to_string(d.join("freezer.state")).unwrap();

        let froze = freeze(&dir, std::time::Duration::from_secs(5)).unwrap();
        let frozen_state = state(&dir);
        thaw(&dir).unwrap();
        let thawed_state = state(&dir);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir(&dir);
        assert!(froze);
        assert_eq!(frozen_state.trim(), "FROZEN");
        assert_eq!(thawed_state.trim(), "THAWED");
    }

    fn fixture_proc(case: &str) -> PathBuf {
        // Lay the fixture out as <root>/self/{cgroup,mountinfo}.
        let root = std::env::temp_dir().join(format!("haul-cg-{case}-{}", std::process::id()));
        let me = root.join("self");
        std::fs::create_dir_all(&me).unwrap();
        let fx = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures")).join(case);
        std::fs::copy(fx.join("proc-self-cgroup"), me.join("cgroup")).unwrap();
        std::fs::copy(fx.join("proc-self-mountinfo"), me.join("mountinfo")).unwrap();
        root
    }

    #[test]
    fn hybrid_host_hierarchies_match_by_exact_controller_sets() {
        let root = fixture_proc("runc-1.1.5-cgroupv1-hybrid");
        let h = hierarchies(&root, ProcPid::Current).unwrap();
        let mem = h.iter().find(|h| h.controllers == "memory").unwrap();
        assert_eq!(mem.mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(mem.own, Path::new("system.slice/edge-runtime.service"));
        assert_eq!(
            mem.child("web2"),
            Path::new("/sys/fs/cgroup/memory/system.slice/edge-runtime.service/web2")
        );
        let cpu = h.iter().find(|h| h.controllers == "cpu").unwrap();
        // "cpu" must not match the "cpuacct" or "cpuset" mounts.
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu"));
        let sd = h.iter().find(|h| h.controllers == "name=systemd").unwrap();
        assert_eq!(sd.name(), "systemd");
        let v2 = h.iter().find(|h| h.is_v2()).unwrap();
        assert_eq!(v2.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(h.len(), 10);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
