//! The destination's half of a runc migration: preflight (before the source freezes anything),
//! stdio pipes and relays, cgroups for the new container, the rootfs on a private temporary
//! mount point, the RESTORE options, and registration with runc at post-restore.

use super::session::SessionConfig;
use super::stdio::{plumb, Plumbing};
use crate::cgroups::{hierarchies, Created, HostHierarchy};
use crate::error::{Context, Error, Kind, Result};
use crate::inspect::bounds::{MAX_MASKED_PATHS, MAX_MOUNTS, STATE_JSON_MAX, STDIO_FDS};
use crate::inspect::{parse_state, read_proc_stat, ContainerId, ProcPid, ProcStatBuf};
use crate::plan::runc::{self, Container, Destination, Hierarchy};
use crate::register::{rfc3339_now, state_json, Claim, Registration};
use crate::transfer::tree::TreeSink;
use crate::workdir::WorkDir;
use haul_proto::criu::CriuOpts;
use haul_proto::haul::{FsMode, RuncContainer};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The restore plan's `Destination` for `container` under the id `dst_id` on this host.
pub fn destination_plan(
    c: &Container,
    dst_id: &str,
    inherit: &[(String, i32)],
) -> Result<Destination> {
    let hier = hierarchies(Path::new("/proc"), ProcPid::Current)?;
    Ok(destination_from(
        c,
        dst_id,
        &hier,
        inherit,
        "<temporary mount of the rootfs>",
        c.own_netns,
    ))
}

fn destination_from(
    c: &Container,
    dst_id: &str,
    hier: &[HostHierarchy],
    inherit: &[(String, i32)],
    root_mount: &str,
    new_netns: bool,
) -> Destination {
    Destination {
        // --fs shared: bind sources are where they were.
        binds: c.binds.clone(),
        hierarchies: hier
            .iter()
            .filter(|h| !h.is_v2())
            .map(|h| Hierarchy {
                mount_point: h.mount_point.to_string_lossy().into_owned(),
                container_dir: h.child(dst_id).to_string_lossy().into_owned(),
            })
            .collect(),
        root_mount: root_mount.into(),
        inherit: inherit.to_vec(),
        new_netns,
    }
}

/// Checks what a container description from the source must satisfy before anything on this
/// host is looked at: a valid destination id, a bounded state.json that haul's parser accepts
/// and that is UTF-8 (it is patched as text at registration), three stdio entries, and no more
/// cgroup mounts or masked files than the source's own parser keeps, and for a checkpoint no
/// namespace joined by path. Returns state.json's text.
pub fn check_description(rc: &RuncContainer) -> Result<String> {
    let refuse = |m: String| Error::new(Kind::Refused, m);
    ContainerId::new(&rc.dst_id)
        .map_err(|e| refuse(format!("container id {:?}: {e}", rc.dst_id)))?;
    if rc.state_json.len() > STATE_JSON_MAX {
        return Err(refuse(format!(
            "state.json from the source is {} bytes; the limit is {STATE_JSON_MAX}",
            rc.state_json.len()
        )));
    }
    let mut text = vec![0u8; rc.state_json.len()];
    let st = parse_state(&rc.state_json, &mut text)
        .map_err(|e| refuse(format!("state.json from the source: {e}")))?;
    // The source refuses these too; a source that did not (an older haul) would otherwise get
    // a silently different container here.
    if !rc.restart {
        runc::refuse_joined_namespaces(&st.joined_namespaces())
            .map_err(|m| refuse(format!("container {}: {m}", rc.id)))?;
    }
    if rc.stdio.len() != STDIO_FDS {
        return Err(refuse(format!(
            "malformed container description from the source: {} stdio entries, not {STDIO_FDS}",
            rc.stdio.len()
        )));
    }
    for (what, n, max) in [
        ("cgroup mounts", rc.cgroup_mounts.len(), MAX_MOUNTS),
        ("masked files", rc.masked_files.len(), MAX_MASKED_PATHS),
    ] {
        if n > max {
            return Err(refuse(format!(
                "malformed container description from the source: {n} {what}; the limit is {max}"
            )));
        }
    }
    let text = String::from_utf8(rc.state_json.clone())
        .map_err(|_| refuse("state.json from the source is not UTF-8".into()))?;
    // The registration patches this text once the tasks are restored: a text it cannot patch is
    // refused now, before anything freezes.
    crate::register::json_patch::patch(&text, &[])
        .map_err(|e| refuse(format!("state.json from the source: {e}")))?;
    Ok(text)
}

/// The rootfs bind-mounted on a private mount point; unmounted (then removed) on drop.
struct RootMount(PathBuf);

impl RootMount {
    fn new(rootfs: &Path, at: PathBuf, readonly: bool) -> Result<RootMount> {
        match std::fs::create_dir(&at) {
            // Left by an interrupted migration being recovered: reuse it if nothing is on it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mounts = crate::workdir::mounts_under(&at)
                    .map_err(|e| e.context(format!("not reusing {}", at.display())))?;
                if let Some(m) = mounts.first() {
                    return Err(Error::other(format!(
                        "not reusing {}: {} is mounted there",
                        at.display(),
                        m.display()
                    )));
                }
            }
            other => other.ctx(Kind::Other, format!("creating {}", at.display()))?,
        }
        rustix::mount::mount_bind(rootfs, &at).ctx(
            Kind::Other,
            format!("bind-mounting {} on {}", rootfs.display(), at.display()),
        )?;
        let m = RootMount(at);
        rustix::mount::mount_change(&m.0, rustix::mount::MountPropagationFlags::PRIVATE)
            .ctx(Kind::Other, format!("making {} private", m.0.display()))?;
        if readonly {
            // CRIU restores the mounts inside the container, not the flags of the root it is
            // given: a read-only root must be read-only here already.
            use rustix::mount::MountFlags;
            rustix::mount::mount_remount(&m.0, MountFlags::BIND | MountFlags::RDONLY, "")
                .ctx(Kind::Other, format!("making {} read-only", m.0.display()))?;
        }
        Ok(m)
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH) {
            log::error!("unmounting {}: {e}; not removing it", self.0.display());
            return;
        }
        // Unmounted: now it is an empty directory of ours.
        let _ = std::fs::remove_dir(&self.0);
    }
}

pub struct RuncRestore {
    rc: RuncContainer,
    state_text: String,
    container: Container,
    bundle: String,
    hier: Vec<HostHierarchy>,
    runc_root: PathBuf,
    stdio_log: PathBuf,
    plumbing: Option<Plumbing>,
    /// (key, fd number in the restoring CRIU) for each stdio pipe.
    inherit: Vec<(String, i32)>,
    cgroups: Option<Created>,
    /// The container's cgroup settings, written into its cgroups before CRIU moves in.
    limits: Vec<super::cgroup_limits::Write>,
    root: Option<RootMount>,
    claim: Option<Claim>,
    /// `--fs copy`: where the bundle goes.
    copy_to: Option<PathBuf>,
    /// The new network namespace the restoring CRIU runs in (the container has its own).
    netns: Option<OwnedFd>,
    /// The bundle directory haul created (removed on failure).
    created_bundle: Option<PathBuf>,
}

impl Drop for RuncRestore {
    fn drop(&mut self) {
        // Unmount first: the root mount may be of the copied rootfs.
        drop(self.root.take());
        if let Some(dir) = self.created_bundle.take() {
            if let Err(e) = crate::workdir::remove_tree_checked(&dir) {
                log::warn!("{e}");
            }
        }
    }
}

impl RuncRestore {
    /// Preflight: everything checked before the source freezes; nothing changed here yet.
    pub fn preflight(rc: RuncContainer, cfg: &SessionConfig) -> Result<RuncRestore> {
        Self::preflight_with(rc, cfg, false)
    }

    /// Preflight for `haul recover`: a copied bundle is expected to be there already.
    pub fn preflight_kept(rc: RuncContainer, cfg: &SessionConfig) -> Result<RuncRestore> {
        Self::preflight_with(rc, cfg, true)
    }

    fn preflight_with(rc: RuncContainer, cfg: &SessionConfig, kept: bool) -> Result<RuncRestore> {
        let refuse = |m: String| Error::new(Kind::Refused, m);
        let state_text = check_description(&rc)?;
        let copy = rc.fs == FsMode::FsCopy as i32;
        // Parsed again to keep its fields (they borrow these buffers); it parsed above.
        let json = rc.state_json.clone();
        let mut text = vec![0u8; json.len()];
        let st = parse_state(&json, &mut text)
            .map_err(|e| refuse(format!("state.json from the source: {e}")))?;

        let joined_namespaces = st.joined_namespaces();
        let dir = cfg.runc_root.join(&rc.dst_id);
        if dir.exists() {
            return Err(refuse(format!(
                "container {} already exists in {} on the destination",
                rc.dst_id,
                cfg.runc_root.display()
            )));
        }
        let src_bundle = st.bundle.unwrap_or("").to_string();
        let (bundle, rootfs, copy_to) = if copy {
            // The rootfs moves with the bundle: same place relative to it.
            let rel = Path::new(st.rootfs)
                .strip_prefix(&src_bundle)
                .map_err(|_| {
                    refuse(format!(
                        "--fs copy: rootfs {} is not inside the bundle {src_bundle}",
                        st.rootfs
                    ))
                })?
                .to_path_buf();
            let dir = cfg.bundle_root.join(&rc.dst_id);
            if kept {
                if !dir.join("config.json").is_file() {
                    return Err(refuse(format!(
                        "the kept bundle {} is missing",
                        dir.display()
                    )));
                }
                let rootfs = dir.join(rel).to_string_lossy().into_owned();
                (dir.to_string_lossy().into_owned(), rootfs, None)
            } else if dir.exists() {
                return Err(refuse(format!(
                    "bundle {} already exists on the destination",
                    dir.display()
                )));
            } else {
                let rootfs = dir.join(rel).to_string_lossy().into_owned();
                (dir.to_string_lossy().into_owned(), rootfs, Some(dir))
            }
        } else {
            if !src_bundle.is_empty() && !Path::new(&src_bundle).join("config.json").is_file() {
                return Err(refuse(format!(
                    "bundle {src_bundle} is not on the destination (use --fs copy or make it shared)"
                )));
            }
            if !Path::new(st.rootfs).is_dir() {
                return Err(refuse(format!(
                    "rootfs {} is not on the destination",
                    st.rootfs
                )));
            }
            (src_bundle, st.rootfs.to_string(), None)
        };
        let binds: Vec<(String, String)> = st
            .mounts
            .iter()
            .filter(|m| m.is_bind())
            .map(|m| (m.destination.to_string(), m.source.to_string()))
            .collect();
        for (dest, src) in &binds {
            if !Path::new(src).exists() {
                return Err(refuse(format!(
                    "bind-mount source {src} (for {dest}) is missing on the destination"
                )));
            }
        }
        let runc_version = std::process::Command::new(&cfg.runc)
            .arg("--version")
            .output()
            .map_err(|e| {
                refuse(format!(
                    "runc ({}) not usable on the destination: {e}",
                    cfg.runc.display()
                ))
            })?;
        let v = String::from_utf8_lossy(&runc_version.stdout);
        log::info!("preflight: {}", v.lines().next().unwrap_or("runc"));
        let hier = hierarchies(Path::new("/proc"), ProcPid::Current)?;
        for key in &rc.cgroup_mounts {
            let name = key.rsplit('/').next().unwrap_or("");
            if !hier.iter().any(|h| !h.is_v2() && h.name() == name) {
                return Err(refuse(format!(
                    "cgroup hierarchy {name} (for {key}) is not mounted on the destination"
                )));
            }
        }
        let limits = super::cgroup_limits::plan(&st.resources, &hier).map_err(refuse)?;
        for h in &hier {
            let d = h.child(&rc.dst_id);
            if d.exists() {
                return Err(refuse(format!(
                    "cgroup {} already exists on the destination",
                    d.display()
                )));
            }
        }
        let container = Container {
            init_pid: 0,
            rootfs,
            binds,
            cgroup_mounts: st
                .mounts
                .iter()
                .filter(|m| m.is_cgroup())
                .map(|m| m.destination.to_string())
                .collect(),
            cgroup_binds: rc.cgroup_mounts.clone(),
            masked_files: rc.masked_files.clone(),
            devices: st.devices.iter().map(|d| d.to_string()).collect(),
            freezer: None,
            stdio: [
                rc.stdio[0].clone(),
                rc.stdio[1].clone(),
                rc.stdio[2].clone(),
            ],
            readonly_root: rc.readonly_root,
            // The source's CRIU ran inside the container's namespace: the restore needs a new one.
            own_netns: rc.own_netns,
            joined_namespaces,
        };
        Ok(RuncRestore {
            stdio_log: cfg.stdio_dir.join(format!("{}.log", rc.dst_id)),
            rc,
            state_text,
            container,
            bundle,
            hier,
            runc_root: cfg.runc_root.clone(),
            plumbing: None,
            inherit: Vec::new(),
            cgroups: None,
            limits,
            root: None,
            claim: None,
            copy_to,
            created_bundle: None,
            netns: None,
        })
    }

    /// Pipes and relays for the container's stdio; the ends CRIU must inherit.
    pub fn plumb(&mut self) -> Result<()> {
        if let Some(dir) = self.stdio_log.parent() {
            std::fs::create_dir_all(dir).ctx(Kind::Setup, format!("creating {}", dir.display()))?;
        }
        let pipes = runc::stdio_pipes(&self.container.stdio);
        let p = plumb(&pipes, &self.stdio_log)?;
        self.inherit = p.inherit();
        self.plumbing = Some(p);
        if self.container.own_netns {
            self.netns = Some(crate::sys::new_netns().map_err(|e| {
                Error::setup(format!(
                    "creating a network namespace for container {}: {e}",
                    self.rc.dst_id
                ))
            })?);
        }
        Ok(())
    }

    /// What the restoring CRIU inherits: the stdio pipes' container ends.
    pub fn restorer_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.plumbing.as_ref().map(|p| p.fds()).unwrap_or_default()
    }

    /// The network namespace the restoring CRIU runs in, if the container has its own.
    pub fn restorer_netns(&self) -> Option<BorrowedFd<'_>> {
        self.netns.as_ref().map(|n| n.as_fd())
    }

    /// Creates the container's cgroups with the restoring CRIU in them, and mounts the root.
    pub fn attach(&mut self, restorer_pid: u32) -> Result<()> {
        self.cgroups = Some(Created::create(
            &self.hier,
            &self.rc.dst_id,
            restorer_pid,
            &self.limits,
        )?);
        Ok(())
    }

    /// Bind-mounts the rootfs (shared, or the copy just received) on a private mount point.
    pub fn mount_root(&mut self, work: &WorkDir) -> Result<()> {
        self.root = Some(RootMount::new(
            Path::new(&self.container.rootfs),
            work.path.join("root"),
            self.container.readonly_root,
        )?);
        Ok(())
    }

    /// `--fs copy`: creates `<bundle-root>/<dst-id>` and returns the sink for the tree.
    pub fn tree_sink(&mut self) -> Result<Option<TreeSink>> {
        let Some(dir) = self.copy_to.clone() else {
            return Ok(None);
        };
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .ctx(Kind::Setup, format!("creating {}", parent.display()))?;
        }
        std::fs::create_dir(&dir)
            .ctx(Kind::Refused, format!("creating bundle {}", dir.display()))?;
        self.created_bundle = Some(dir.clone());
        let fd = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ctx(Kind::Other, format!("opening {}", dir.display()))?;
        Ok(Some(TreeSink::new(fd)))
    }

    pub fn restore_opts(&self, images_dir_fd: i32) -> CriuOpts {
        let inherit = self.inherit.clone();
        let root = self
            .root
            .as_ref()
            .map(|r| r.0.to_string_lossy().into_owned())
            .unwrap_or_default();
        let d = destination_from(
            &self.container,
            &self.rc.dst_id,
            &self.hier,
            &inherit,
            &root,
            self.netns.is_some(),
        );
        let (opts, notes) = runc::restore(&self.container, &d, images_dir_fd);
        for n in notes {
            log::info!("restore plan: {n}");
        }
        log::info!(
            "restore plan: {} external mounts, {} inherited fds, root {}",
            opts.ext_mnt.len(),
            opts.inherit_fd.len(),
            root
        );
        for e in &opts.ext_mnt {
            log::debug!("restore ext_mnt {} -> {}", e.key, e.val);
        }
        for i in &opts.inherit_fd {
            log::debug!("restore inherit_fd {} -> fd {}", i.key, i.fd);
        }
        opts
    }

    /// The pipes' container ends are CRIU's now; haul's copies must go so the relays see EOF
    /// when the container exits.
    pub fn release_pipes(&mut self) {
        if let Some(p) = self.plumbing.as_mut() {
            p.ends.clear();
        }
    }

    /// At post-restore: claim `<runc-root>/<dst-id>` and write runc's state.json.
    pub fn register(&mut self, pid: i32) -> Result<()> {
        let p = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| Error::other(format!("criu reported pid {pid}")))?;
        let mut sb = ProcStatBuf::new();
        let stat = read_proc_stat(Path::new("/proc"), ProcPid::Pid(p), &mut sb)
            .map_err(|e| Error::other(e.to_string()))?;
        let ns = [
            ("NEWNS", "mnt"),
            ("NEWNET", "net"),
            ("NEWPID", "pid"),
            ("NEWIPC", "ipc"),
            ("NEWUTS", "uts"),
            ("NEWUSER", "user"),
            ("NEWCGROUP", "cgroup"),
        ]
        .iter()
        .map(|(k, f)| (k.to_string(), format!("/proc/{pid}/ns/{f}")))
        .collect();
        let stdio = [0, 1, 2].map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        // Only `bundle=` is carried over: annotations from the peer (org.criu.* among them)
        // are dropped.
        let labels: Vec<String> = Vec::new();
        let reg = Registration {
            id: &self.rc.dst_id,
            init_pid: pid,
            init_start: stat.start_time,
            created: rfc3339_now(),
            rootfs: &self.container.rootfs,
            bundle: &self.bundle,
            cgroup_paths: self
                .cgroups
                .as_ref()
                .map(|c| c.runc_paths())
                .unwrap_or_default(),
            namespace_paths: ns,
            external_descriptors: stdio,
            labels,
        };
        let text = state_json(&self.state_text, &reg)?;
        let claim = Claim::take(&self.runc_root, &self.rc.dst_id)?;
        claim.write_state(&text)?;
        self.claim = Some(claim);
        log::info!(
            "registered container {} (init pid {pid}) in {}",
            self.rc.dst_id,
            self.runc_root.display()
        );
        Ok(())
    }

    /// After commit and restore: the container is runc's; unmount the temporary root.
    pub fn commit(mut self) {
        if let Some(c) = self.claim.take() {
            c.keep();
        }
        if let Some(c) = self.cgroups.take() {
            c.keep();
        }
        drop(self.root.take());
        // The copied bundle and the stdio relays are the container's now.
        self.created_bundle = None;
        self.keep_relays();
    }

    /// The bundle directory on this host.
    pub fn bundle(&self) -> &str {
        &self.bundle
    }

    /// `--mode restart`: the write end of the stdout/stderr pipe (fd 1's), if it was a pipe.
    pub fn stdout_for_run(&mut self) -> Option<std::os::fd::OwnedFd> {
        let key = self.container.stdio.get(1).cloned()?;
        let p = self.plumbing.as_mut()?;
        let i = p.ends.iter().position(|(k, _)| *k == key)?;
        Some(p.ends.swap_remove(i).1)
    }

    /// Whether the source asked for a restart instead of a checkpoint.
    pub fn is_restart(&self) -> bool {
        self.rc.restart
    }

    /// Keeps a copied bundle when this value is dropped (an in-doubt migration needs it).
    pub fn keep_bundle(&mut self) {
        self.created_bundle = None;
    }

    /// Keeps the stdio relays running when this value is dropped (the container runs here).
    pub fn keep_relays(&mut self) {
        if let Some(p) = self.plumbing.take() {
            p.keep();
        }
    }

    /// The container's id on this host.
    pub fn dst_id(&self) -> &str {
        &self.rc.dst_id
    }

    /// A job that created the bundle `dir` and nothing else (for tests of what its drop removes).
    #[cfg(test)]
    pub fn with_created_bundle(dir: PathBuf) -> RuncRestore {
        RuncRestore {
            rc: RuncContainer {
                dst_id: "ct-test".into(),
                ..Default::default()
            },
            state_text: String::new(),
            container: Container::default(),
            bundle: dir.to_string_lossy().into_owned(),
            hier: Vec::new(),
            runc_root: PathBuf::new(),
            stdio_log: PathBuf::new(),
            plumbing: None,
            inherit: Vec::new(),
            cgroups: None,
            limits: Vec::new(),
            root: None,
            claim: None,
            copy_to: None,
            netns: None,
            created_bundle: Some(dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description() -> RuncContainer {
        RuncContainer {
            id: "ctp".into(),
            dst_id: "ctp-b".into(),
            state_json: std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/runc-1.1.5-cgroupv1-hybrid/state.json"
            ))
            .unwrap(),
            stdio: vec!["/dev/null".into(); STDIO_FDS],
            ..Default::default()
        }
    }

    #[test]
    fn a_description_at_each_limit_passes_and_one_past_it_is_refused() {
        assert!(check_description(&description()).is_ok());
        // state.json of STATE_JSON_MAX bytes (trailing spaces are JSON whitespace), then one more.
        let mut rc = description();
        rc.state_json.resize(STATE_JSON_MAX, b' ');
        assert!(check_description(&rc).is_ok());
        rc.state_json.push(b' ');
        let e = check_description(&rc).unwrap_err();
        assert_eq!(e.kind, Kind::Refused);
        assert!(e.message.contains("the limit is 65536"), "{e}");
        let mut rc = description();
        rc.cgroup_mounts = vec!["/sys/fs/cgroup/memory".into(); MAX_MOUNTS];
        rc.masked_files = vec!["/proc/kcore".into(); MAX_MASKED_PATHS];
        assert!(check_description(&rc).is_ok());
        rc.cgroup_mounts.push("/sys/fs/cgroup/cpu".into());
        let e = check_description(&rc).unwrap_err().message;
        assert!(e.contains("65 cgroup mounts; the limit is 64"), "{e}");
        rc.cgroup_mounts.pop();
        rc.masked_files.push("/proc/keys".into());
        let e = check_description(&rc).unwrap_err().message;
        assert!(e.contains("33 masked files; the limit is 32"), "{e}");
        for n in [STDIO_FDS - 1, STDIO_FDS + 1] {
            let mut rc = description();
            rc.stdio = vec!["/dev/null".into(); n];
            assert!(check_description(&rc).is_err(), "{n} stdio entries");
        }
    }

    #[test]
    fn a_checkpoint_of_a_container_in_a_joined_namespace_is_refused_in_the_preflight() {
        let own = r#"{"type":"NEWNET","path":""}"#;
        let joined = r#"{"type":"NEWNET","path":"/var/run/netns/cni-1"}"#;
        let mut rc = description();
        let text = String::from_utf8(rc.state_json).unwrap();
        assert_eq!(text.matches(own).count(), 1);
        rc.state_json = text.replace(own, joined).into_bytes();
        let e = check_description(&rc).unwrap_err();
        assert_eq!(e.kind, Kind::Refused, "{e}");
        assert!(
            e.message.contains(
                "container ctp: the container joins the network namespace /var/run/netns/cni-1"
            ),
            "{e}"
        );
        // A restart runs the container anew with runc, which joins the path itself.
        rc.restart = true;
        assert!(check_description(&rc).is_ok());
    }

    #[test]
    fn a_state_json_the_registration_cannot_patch_is_refused_in_the_preflight() {
        let mut rc = description();
        // serde-json-core skips the unknown member; the patch would choke on its escape.
        let text = String::from_utf8(rc.state_json).unwrap();
        rc.state_json = text.replacen('{', r#"{"x\q":1,"#, 1).into_bytes();
        let e = check_description(&rc).unwrap_err();
        assert_eq!(e.kind, Kind::Refused, "{e}");
        assert!(
            e.message
                .contains("state.json from the source: malformed JSON at byte"),
            "{e}"
        );
    }

    #[test]
    fn destination_maps_hierarchies_to_the_new_id() {
        let c = Container {
            cgroup_binds: vec!["/sys/fs/cgroup/memory".into()],
            ..Default::default()
        };
        let hier = vec![
            HostHierarchy {
                controllers: "memory".into(),
                mount_point: "/sys/fs/cgroup/memory".into(),
                own: "system.slice/haul.service".into(),
            },
            HostHierarchy {
                controllers: String::new(),
                mount_point: "/sys/fs/cgroup/unified".into(),
                own: "".into(),
            },
        ];
        let d = destination_from(&c, "web2", &hier, &[], "/r", false);
        assert_eq!(
            d.hierarchies.len(),
            1,
            "cgroup2 is not a bind in the container"
        );
        assert_eq!(
            d.hierarchies[0].container_dir,
            "/sys/fs/cgroup/memory/system.slice/haul.service/web2"
        );
    }
}
