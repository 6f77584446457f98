//! `haul migrate runc ID` and `haul inspect runc ID`: read the container from runc's state and
//! /proc (bounded), build the CRIU dump plan, and run the migration job.

use super::migrate::{run, Job, Options};
use crate::cli::MigrateRunc;
use crate::error::{Context, Error, Kind, Result};
use crate::inspect::{
    bounds::STATE_JSON_MAX, read_mountinfo, read_proc_stat, read_state, ContainerId, MountInfoBuf,
    ProcPid, ProcStatBuf, StateBuf,
};
use crate::plan::runc::{dump, Container};
use crate::transfer::Key;
use haul_proto::haul::{FsMode, Prepare, Purpose, RuncContainer};
use std::path::{Path, PathBuf};

const PROC: &str = "/proc";

/// A running container as haul sees it on this host.
pub struct Inspected {
    pub id: String,
    pub bundle: String,
    /// state.json verbatim (sent to the destination, which parses it with its own bounds).
    pub state_text: Vec<u8>,
    pub container: Container,
}

fn container_id(id: &str) -> Result<ContainerId> {
    ContainerId::new(id).map_err(|e| Error::usage(format!("container id {id:?}: {e}")))
}

/// Reads a running container's state and the facts only this host can see.
pub fn inspect_container(runc_root: &Path, id: &str) -> Result<Inspected> {
    let cid = container_id(id)?;
    let mut buf = StateBuf::new();
    let st = read_state(runc_root, &cid, &mut buf).map_err(|e| Error::usage(e.to_string()))?;
    let path = runc_root.join(id).join("state.json");
    let state_text = crate::util::read_bounded(&path, STATE_JSON_MAX).map_err(Error::usage)?;

    // The init pid must still be the container's init (not a reused pid).
    let pid = st.init_pid;
    let mut stat_buf = ProcStatBuf::new();
    let stat = read_proc_stat(Path::new(PROC), ProcPid::Pid(pid), &mut stat_buf).map_err(|_| {
        Error::usage(format!(
            "container {id} is not running (no process {})",
            pid.as_raw_nonzero()
        ))
    })?;
    if stat.start_time != st.init_start_time {
        return Err(Error::usage(format!(
            "container {id} is not running: pid {} is another process now",
            pid.as_raw_nonzero()
        )));
    }
    let raw_pid = pid.as_raw_nonzero().get();

    let binds: Vec<(String, String)> = st
        .mounts
        .iter()
        .filter(|m| m.is_bind())
        .map(|m| (m.destination.to_string(), m.source.to_string()))
        .collect();
    let cgroup_mounts: Vec<String> = st
        .mounts
        .iter()
        .filter(|m| m.is_cgroup())
        .map(|m| m.destination.to_string())
        .collect();

    // cgroup v1 hierarchies bound under the container's cgroup mounts, from init's mountinfo
    // (mount points there are paths inside the container).
    // (and whether the root is mounted read-only).
    let mut cgroup_binds = Vec::new();
    let mut readonly_root = false;
    {
        let mut mi = MountInfoBuf::new();
        let mounts = read_mountinfo(Path::new(PROC), ProcPid::Pid(pid), &mut mi)
            .map_err(|e| Error::other(e.to_string()))?;
        for m in mounts {
            let m = m.map_err(|e| Error::other(e.to_string()))?;
            if m.mount_point == Path::new("/") {
                readonly_root = m.mount_options.contains("ro");
            }
            if m.fs_type == "cgroup"
                && cgroup_mounts
                    .iter()
                    .any(|c| m.mount_point.starts_with(c) && m.mount_point != Path::new(c))
            {
                cgroup_binds.push(m.mount_point.to_string_lossy().into_owned());
            }
        }
    }

    // Masked paths that exist and are not directories (runc bind-mounts /dev/null on them).
    let root = PathBuf::from(format!("/proc/{raw_pid}/root"));
    let masked_files: Vec<String> = st
        .masked_paths
        .iter()
        .filter(|p| {
            std::fs::metadata(root.join(p.trim_start_matches('/')))
                .map(|m| !m.is_dir())
                .unwrap_or(false)
        })
        .map(|p| p.to_string())
        .collect();

    // What init's fds 0-2 are now (runc writes the same into descriptors.json).
    let stdio = [0, 1, 2].map(|fd| {
        std::fs::read_link(format!("/proc/{raw_pid}/fd/{fd}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    });

    let container = Container {
        init_pid: raw_pid,
        rootfs: st.rootfs.to_string(),
        binds,
        cgroup_mounts,
        cgroup_binds,
        masked_files,
        devices: st.devices.iter().map(|d| d.to_string()).collect(),
        freezer: st.cgroup_path("freezer").map(str::to_string),
        stdio,
        readonly_root,
        own_netns: st.has_own_netns(),
        joined_namespaces: st.joined_namespaces(),
    };
    Ok(Inspected {
        id: id.to_string(),
        bundle: st.bundle.unwrap_or("").to_string(),
        state_text,
        container,
    })
}

/// `haul migrate runc ID`.
pub fn migrate_runc(a: &MigrateRunc, key: Option<&Key>, criu: &Path, quiet: bool) -> Result<()> {
    let dst_id = a.dst_id.clone().unwrap_or_else(|| a.id.clone());
    container_id(&dst_id)?;
    let fs = match a.fs.as_str() {
        "shared" => FsMode::FsShared,
        "copy" => FsMode::FsCopy,
        other => return Err(Error::usage(format!("--fs {other}: use shared or copy"))),
    };
    let runc = match &a.runc {
        Some(p) => p.clone(),
        None => PathBuf::from("runc"),
    };
    let c = inspect_container(&a.runc_root, &a.id)?;
    let descriptors = format!(
        "[{}]",
        c.container
            .stdio
            .iter()
            .map(|s| crate::register::json_patch::string(s))
            .collect::<Vec<_>>()
            .join(",")
    );
    let container = c.container.clone();
    let tree = if fs == FsMode::FsCopy {
        let rel = Path::new(&c.container.rootfs)
            .strip_prefix(&c.bundle)
            .map_err(|_| {
                Error::usage(format!(
                    "--fs copy: rootfs {} is not inside the bundle {}",
                    c.container.rootfs, c.bundle
                ))
            })?
            .to_string_lossy()
            .into_owned();
        Some((
            PathBuf::from(&c.bundle),
            vec!["config.json".to_string(), rel],
        ))
    } else {
        None
    };
    let prepare = Prepare {
        expected_page_bytes: 0,
        runc: Some(RuncContainer {
            id: c.id.clone(),
            dst_id,
            state_json: c.state_text.clone(),
            stdio: c.container.stdio.to_vec(),
            cgroup_mounts: c.container.cgroup_binds.clone(),
            masked_files: c.container.masked_files.clone(),
            fs: fs as i32,
            readonly_root: c.container.readonly_root,
            restart: a.mode == "restart",
            own_netns: a.mode != "restart" && c.container.own_netns,
        }),
        ..Default::default()
    };
    match a.mode.as_str() {
        "checkpoint" => {
            crate::plan::runc::refuse_joined_namespaces(&c.container.joined_namespaces)
                .map_err(|m| Error::usage(format!("container {}: {m}", c.id)))?;
        }
        "restart" if a.lazy => {
            return Err(Error::usage(
                "--lazy moves memory after the resume; --mode restart moves none: use one",
            ))
        }
        "restart" => {
            return super::restart::run(a, key, &runc, prepare, c.bundle.clone(), tree, quiet)
        }
        other => {
            return Err(Error::usage(format!(
                "--mode {other}: use checkpoint or restart"
            )))
        }
    }
    let pre_dump = super::precopy::Settings::from_flags(
        a.pre_dump,
        a.pre_dump_max_iterations,
        a.pre_dump_min_pages,
        a.pre_dump_max_growth,
    )?;
    // CRIU dumps from inside the container's own network namespace (see plan::runc).
    let netns = if container.own_netns {
        let path = format!("/proc/{}/ns/net", container.init_pid);
        Some(
            rustix::fs::open(
                path.as_str(),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ctx(Kind::Other, format!("opening {path}"))?,
        )
    } else {
        None
    };
    let runc_root = a.runc_root.clone();
    let id = a.id.clone();
    let o = Options {
        to: &a.to,
        key,
        criu,
        work_root: &a.work_dir,
        stats_json: a.stats_json.as_deref(),
        keep_work: a.keep_work,
        quiet,
        pre_dump,
        lazy: a.lazy,
        eager_restore: a.eager_restore,
    };
    run(
        Job {
            kind: "runc",
            name: a.id.clone(),
            pid: container.init_pid,
            purpose: Purpose::MigrateRunc,
            prepare,
            dump_opts: Box::new(move |dir, ps| dump(&container, dir, ps).0),
            freezer: c.container.freezer.as_ref().map(PathBuf::from),
            extra_files: vec![("descriptors.json".into(), descriptors.into_bytes())],
            tree,
            after_commit: Some(Box::new(move || remove_source(&runc, &runc_root, &id))),
            netns,
        },
        &o,
    )
}

/// After commit: the container's tasks are gone; remove it from this host's runc root.
fn remove_source(runc: &Path, runc_root: &Path, id: &str) -> Result<()> {
    let out = std::process::Command::new(runc)
        .arg("--root")
        .arg(runc_root)
        .args(["delete", "--force", id])
        .output()
        .map_err(|e| Error::other(format!("running {}: {e}", runc.display())))?;
    if !out.status.success() {
        return Err(Error::other(format!(
            "runc delete {id} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    log::info!("removed container {id} from {}", runc_root.display());
    Ok(())
}

/// `haul inspect runc ID`: the parsed container and the dump and restore options on this host.
pub fn inspect(runc_root: &Path, id: &str, json: bool) -> Result<()> {
    let c = inspect_container(runc_root, id)?;
    let (dump_opts, mut notes) = dump(&c.container, 0, 0);
    let dest = crate::dest::runc::destination_plan(&c.container, id, &[])
        .map_err(|e| e.context("planning the restore on this host"))?;
    let (restore_opts, rnotes) = crate::plan::runc::restore(&c.container, &dest, 0);
    notes.extend(rnotes);
    if let Err(m) = crate::plan::runc::refuse_joined_namespaces(&c.container.joined_namespaces) {
        notes.push(format!("haul migrate refuses a checkpoint: {m}"));
    }
    if json {
        println!(
            "{}",
            crate::plan::show::json(
                &c.id,
                &c.bundle,
                &c.container,
                &dump_opts,
                &restore_opts,
                &notes
            )
        );
    } else {
        print!(
            "{}",
            crate::plan::show::text(
                &c.id,
                &c.bundle,
                &c.container,
                &dump_opts,
                &restore_opts,
                &notes
            )
        );
    }
    let _ = Kind::Other;
    Ok(())
}
