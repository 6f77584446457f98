//! Options for a runc container: external mounts (binds, cgroup v1 hierarchies, masked files,
//! devices), the frozen cgroup, the root, and on restore the re-plumbed stdio pipes.
//!
//! Pure functions over a small view of the container (`Container`) and of the host's cgroup
//! hierarchies (`Hierarchy`), so both option sets can be shown by `haul inspect` and tested on
//! fixtures.

use super::LOG_LEVEL;
use haul_proto::criu::{
    CgroupRoot, CriuCgMode, CriuOpts, CriuPageServerInfo, ExtMountMap, InheritFd,
};

/// `CLONE_NEWNET`: runc restores the network namespace empty ("runc doesn't manage network
/// devices"); haul does the same.
pub const CLONE_NEWNET: u32 = 0x4000_0000;

/// What the plans need to know about the container.
#[derive(Debug, Clone, Default)]
pub struct Container {
    pub init_pid: i32,
    pub rootfs: String,
    /// Bind mounts: (destination inside the container, source on the host).
    pub binds: Vec<(String, String)>,
    /// Destinations of `cgroup` mounts inside the container (usually `/sys/fs/cgroup`).
    pub cgroup_mounts: Vec<String>,
    /// cgroup v1 hierarchies bound inside the container (from its mountinfo), e.g.
    /// `/sys/fs/cgroup/memory`: runc's cgroup mount is a tmpfs with one bind per hierarchy.
    pub cgroup_binds: Vec<String>,
    /// Masked paths that exist in the container and are not directories (runc bind-mounts
    /// /dev/null over them).
    pub masked_files: Vec<String>,
    /// Device node paths from the config.
    pub devices: Vec<String>,
    /// The container's freezer cgroup directory (cgroup v1), if any.
    pub freezer: Option<String>,
    /// Link targets of init's fds 0-2 (runc's descriptors.json).
    pub stdio: [String; 3],
    /// The container's root mount is read-only.
    pub readonly_root: bool,
    /// The container has a network namespace of its own (`NEWNET` without a path in its
    /// config). CRIU then runs inside it on the source, so it neither dumps nor locks it (that
    /// took ~45 ms of the freeze), and the destination's CRIU restores inside a new one with
    /// lo up, which the tasks inherit: what runc gives a new container, and all a restore with
    /// `empty_ns` kept of the old one anyway.
    pub own_netns: bool,
    /// Namespaces the config joins by path: (runc's kind, e.g. `NEWNET`; the path). A
    /// checkpoint cannot carry them (see [`refuse_joined_namespaces`]).
    pub joined_namespaces: Vec<(String, String)>,
}

/// What a namespace of runc's `kind` is called in messages.
fn namespace_name(kind: &str) -> &str {
    match kind {
        "NEWNET" => "network",
        "NEWPID" => "PID",
        "NEWIPC" => "IPC",
        "NEWUTS" => "UTS",
        "NEWNS" => "mount",
        "NEWUSER" => "user",
        "NEWCGROUP" => "cgroup",
        "NEWTIME" => "time",
        other => other,
    }
}

/// Refuses a checkpoint of a container that joins namespaces by path (a Kubernetes pod's
/// network namespace, `--network container:X`, a shared IPC namespace).
///
/// Such a namespace belongs to something else that stays on the source. haul hands CRIU no
/// external entry for it, so the restore would not rejoin it: a network namespace would arrive
/// as a new empty one with only lo, and any other kind as a private copy no longer shared with
/// anything, while the migration reports success. runc carries the network and PID kinds as
/// CRIU externals; haul does not, so every kind is refused before anything is frozen.
pub fn refuse_joined_namespaces(joined: &[(String, String)]) -> Result<(), String> {
    if joined.is_empty() {
        return Ok(());
    }
    let list = joined
        .iter()
        .map(|(kind, path)| format!("the {} namespace {path} ({kind})", namespace_name(kind)))
        .collect::<Vec<_>>()
        .join(", ");
    let effect = if joined.iter().any(|(kind, _)| kind == "NEWNET") {
        "a joined network namespace would arrive as a new empty one with only lo"
    } else {
        "it would arrive as a private copy, no longer shared with what shares it here"
    };
    Err(format!(
        "the container joins {list} by path (config.namespaces): haul carries only namespaces \
         the container owns and cannot make the restored container rejoin one; {effect}. \
         Nothing was frozen. Run the container with namespaces of its own, or use --mode \
         restart (runc starts it anew on the destination and joins the same paths, which must \
         exist there; its memory is not carried)"
    ))
}

/// A cgroup v1 hierarchy mounted on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Host mount point, e.g. `/sys/fs/cgroup/memory`.
    pub mount_point: String,
    /// Directory for the container in this hierarchy on this host.
    pub container_dir: String,
}

impl Hierarchy {
    /// The name runc gives the bind inside the container: the mount point's last component.
    pub fn name(&self) -> &str {
        self.mount_point.rsplit('/').next().unwrap_or("")
    }
}

/// A note shown by `haul inspect` about what the plan does or leaves to CRIU.
pub type Notes = Vec<String>;

fn ext(key: &str, val: &str) -> ExtMountMap {
    ExtMountMap {
        key: key.into(),
        val: val.into(),
    }
}

/// External mounts on dump: every key maps to itself (or /dev/null for masked files).
pub fn dump_ext_mounts(c: &Container, notes: &mut Notes) -> Vec<ExtMountMap> {
    let mut out = Vec::new();
    for (dest, _) in &c.binds {
        out.push(ext(dest, dest));
    }
    if c.cgroup_binds.is_empty() {
        for m in &c.cgroup_mounts {
            notes.push(format!(
                "{m}: a cgroup2 mount, not a bind: CRIU dumps and restores it itself"
            ));
        }
    }
    for key in &c.cgroup_binds {
        out.push(ext(key, key));
    }
    for p in &c.masked_files {
        out.push(ext(p, "/dev/null"));
    }
    for d in &c.devices {
        out.push(ext(d, d));
    }
    out
}

/// DUMP of the container: pages through `ps_fd`, held at post-dump, cgroup already frozen.
pub fn dump(c: &Container, images_dir_fd: i32, ps_fd: i32) -> (CriuOpts, Notes) {
    let mut notes = Notes::new();
    let ext_mnt = dump_ext_mounts(c, &mut notes);
    // Its own namespace: CRIU runs inside it and leaves it alone. None in the config: the
    // host's, which is CRIU's too, so it is neither dumped nor created. One joined by path is
    // refused before this plan is used (`refuse_joined_namespaces`).
    let empty_ns = if c.own_netns {
        notes.push(
            "network namespace: the container's own; CRIU runs inside it to dump, and the \
             destination restores into a new one with lo up"
                .into(),
        );
        None
    } else {
        Some(CLONE_NEWNET)
    };
    let opts = CriuOpts {
        images_dir_fd,
        pid: Some(c.init_pid),
        root: Some(c.rootfs.clone()),
        log_level: Some(LOG_LEVEL),
        log_file: Some("dump.log".into()),
        ps: Some(CriuPageServerInfo {
            fd: Some(ps_fd),
            ..Default::default()
        }),
        notify_scripts: Some(true),
        manage_cgroups: Some(true),
        manage_cgroups_mode: Some(CriuCgMode::Ignore as i32),
        freeze_cgroup: c.freezer.clone(),
        file_locks: Some(true),
        ext_unix_sk: Some(true),
        tcp_established: Some(true),
        orphan_pts_master: Some(true),
        empty_ns,
        ext_mnt,
        ..Default::default()
    };
    if c.freezer.is_none() {
        notes.push("no v1 freezer cgroup: CRIU freezes the tasks with ptrace".into());
    }
    (opts, notes)
}

/// Where things are on the destination.
#[derive(Debug, Clone, Default)]
pub struct Destination {
    /// Bind sources on this host, by destination inside the container.
    pub binds: Vec<(String, String)>,
    /// This host's hierarchies with the new container's directories.
    pub hierarchies: Vec<Hierarchy>,
    /// The rootfs bind-mounted on a private temporary mount point.
    pub root_mount: String,
    /// (key `pipe:[N]`, fd number inherited by CRIU) for each stdio pipe.
    pub inherit: Vec<(String, i32)>,
    /// The restoring CRIU runs inside a new network namespace the tasks inherit (the source's
    /// CRIU ran inside the container's own); `false`: CRIU creates an empty one (`empty_ns`).
    pub new_netns: bool,
}

/// RESTORE of the container on the destination.
pub fn restore(c: &Container, d: &Destination, images_dir_fd: i32) -> (CriuOpts, Notes) {
    let mut notes = Notes::new();
    let mut ext_mnt = Vec::new();
    for (dest, src) in &c.binds {
        let here = d
            .binds
            .iter()
            .find(|(k, _)| k == dest)
            .map(|(_, v)| v.as_str())
            .unwrap_or(src);
        ext_mnt.push(ext(dest, here));
    }
    for key in &c.cgroup_binds {
        // Exact match of the hierarchy's name (the last component of its mount point).
        let name = key.rsplit('/').next().unwrap_or("");
        match d.hierarchies.iter().find(|h| h.name() == name) {
            Some(h) => ext_mnt.push(ext(key, &h.container_dir)),
            None => notes.push(format!(
                "{key}: no cgroup hierarchy named {name} on this host; CRIU will fail on it"
            )),
        }
    }
    // On dump each masked file was recorded under the name "/dev/null" (the value of its
    // entry); on restore the entry is keyed by that name.
    if !c.masked_files.is_empty() {
        ext_mnt.push(ext("/dev/null", "/dev/null"));
    }
    for dev in &c.devices {
        ext_mnt.push(ext(dev, dev));
    }
    let opts = CriuOpts {
        images_dir_fd,
        root: Some(d.root_mount.clone()),
        log_level: Some(LOG_LEVEL),
        log_file: Some("restore.log".into()),
        notify_scripts: Some(true),
        rst_sibling: Some(true),
        evasive_devices: Some(true),
        manage_cgroups: Some(true),
        manage_cgroups_mode: Some(CriuCgMode::Ignore as i32),
        file_locks: Some(true),
        ext_unix_sk: Some(true),
        tcp_established: Some(true),
        orphan_pts_master: Some(true),
        empty_ns: (!d.new_netns).then_some(CLONE_NEWNET),
        ext_mnt,
        inherit_fd: d
            .inherit
            .iter()
            .map(|(key, fd)| InheritFd {
                key: key.clone(),
                fd: *fd,
            })
            .collect(),
        cg_root: Vec::<CgroupRoot>::new(),
        ..Default::default()
    };
    (opts, notes)
}

/// Distinct `pipe:[N]` keys among the stdio targets, with the fds that use each.
pub fn stdio_pipes(stdio: &[String; 3]) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (fd, t) in stdio.iter().enumerate() {
        if t.starts_with("pipe:[") && t.ends_with(']') {
            match out.iter_mut().find(|(k, _)| k == t) {
                Some((_, fds)) => fds.push(fd),
                None => out.push((t.clone(), vec![fd])),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        Container {
            init_pid: 7769,
            rootfs: "/srv/bundles/ctp/rootfs".into(),
            binds: vec![
                ("/data".into(), "/srv/bundles/ctp/hostdata".into()),
                ("/etc/app.conf".into(), "/srv/bundles/ctp/app.conf".into()),
            ],
            cgroup_mounts: vec!["/sys/fs/cgroup".into()],
            cgroup_binds: vec![
                "/sys/fs/cgroup/memory".into(),
                "/sys/fs/cgroup/systemd".into(),
            ],
            masked_files: vec!["/proc/kcore".into()],
            devices: vec!["/dev/null".into()],
            freezer: Some("/sys/fs/cgroup/freezer/ctp".into()),
            stdio: [
                "/dev/null".into(),
                "pipe:[23204]".into(),
                "pipe:[23204]".into(),
            ],
            readonly_root: true,
            own_netns: true,
            joined_namespaces: Vec::new(),
        }
    }

    fn hierarchies(dir: &str) -> Vec<Hierarchy> {
        ["memory", "systemd"]
            .iter()
            .map(|n| Hierarchy {
                mount_point: format!("/sys/fs/cgroup/{n}"),
                container_dir: format!("/sys/fs/cgroup/{n}/{dir}"),
            })
            .collect()
    }

    fn find<'a>(m: &'a [ExtMountMap], key: &str) -> Option<&'a str> {
        m.iter().find(|e| e.key == key).map(|e| e.val.as_str())
    }

    #[test]
    fn dump_maps_every_external_mount_to_itself() {
        let (o, notes) = dump(&container(), 5, 9);
        let m = &o.ext_mnt;
        assert_eq!(find(m, "/data"), Some("/data"));
        assert_eq!(find(m, "/etc/app.conf"), Some("/etc/app.conf"));
        assert_eq!(
            find(m, "/sys/fs/cgroup/memory"),
            Some("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            find(m, "/sys/fs/cgroup/systemd"),
            Some("/sys/fs/cgroup/systemd")
        );
        assert_eq!(find(m, "/proc/kcore"), Some("/dev/null"));
        assert_eq!(find(m, "/dev/null"), Some("/dev/null"));
        assert_eq!(
            o.freeze_cgroup.as_deref(),
            Some("/sys/fs/cgroup/freezer/ctp")
        );
        assert_eq!(o.root.as_deref(), Some("/srv/bundles/ctp/rootfs"));
        assert_eq!(o.manage_cgroups_mode, Some(CriuCgMode::Ignore as i32));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("network namespace"), "{notes:?}");
    }

    #[test]
    fn an_own_network_namespace_is_left_to_the_criu_running_inside_it() {
        let (o, _) = dump(&container(), 5, 9);
        assert_eq!(o.empty_ns, None, "CRIU would dump the namespace");
        assert!(o.external.is_empty());
        let d = Destination {
            inherit: vec![("pipe:[23204]".into(), 11)],
            new_netns: true,
            ..Default::default()
        };
        let (r, _) = restore(&container(), &d, 5);
        assert_eq!(
            r.empty_ns, None,
            "the tasks inherit the restoring CRIU's namespace"
        );
        assert_eq!(r.inherit_fd.len(), 1);
    }

    #[test]
    fn a_host_network_namespace_is_left_to_criu_which_shares_it() {
        let mut c = container();
        c.own_netns = false;
        let (o, notes) = dump(&c, 5, 9);
        assert_eq!(o.empty_ns, Some(CLONE_NEWNET));
        assert!(notes.iter().all(|n| !n.starts_with("network")), "{notes:?}");
        let (r, _) = restore(&c, &Destination::default(), 5);
        assert_eq!(r.empty_ns, Some(CLONE_NEWNET));
    }

    /// The namespaces joined by path in the fixture's state.json with `from` replaced by `to`.
    fn joined_in_fixture(from: &str, to: &str) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/runc-1.1.5-cgroupv1-hybrid/state.json"
        ))
        .unwrap();
        assert_eq!(text.matches(from).count(), 1, "{from}");
        let json = text.replace(from, to).into_bytes();
        let mut buf = vec![0u8; json.len()];
        let st = crate::inspect::parse_state(&json, &mut buf).unwrap();
        st.joined_namespaces()
    }

    #[test]
    fn a_container_with_namespaces_of_its_own_is_not_refused() {
        let own = r#"{"type":"NEWNET","path":""}"#;
        let none = joined_in_fixture(own, own);
        assert!(none.is_empty(), "{none:?}");
        assert_eq!(refuse_joined_namespaces(&none), Ok(()));
    }

    #[test]
    fn a_joined_network_namespace_is_refused_naming_it_and_what_to_do() {
        let joined = joined_in_fixture(
            r#"{"type":"NEWNET","path":""}"#,
            r#"{"type":"NEWNET","path":"/var/run/netns/cni-1"}"#,
        );
        assert_eq!(
            joined,
            vec![("NEWNET".to_string(), "/var/run/netns/cni-1".to_string())]
        );
        let e = refuse_joined_namespaces(&joined).unwrap_err();
        assert!(
            e.starts_with(
                "the container joins the network namespace /var/run/netns/cni-1 (NEWNET)"
            ),
            "{e}"
        );
        assert!(e.contains("a new empty one with only lo"), "{e}");
        assert!(e.contains("Nothing was frozen"), "{e}");
        assert!(e.contains("--mode restart"), "{e}");
    }

    #[test]
    fn every_kind_of_joined_namespace_is_refused_and_listed() {
        let joined = joined_in_fixture(
            r#"{"type":"NEWIPC","path":""},{"type":"NEWUTS","path":""}"#,
            r#"{"type":"NEWIPC","path":"/proc/42/ns/ipc"},{"type":"NEWUTS","path":"/proc/42/ns/uts"}"#,
        );
        let e = refuse_joined_namespaces(&joined).unwrap_err();
        assert!(
            e.contains("the IPC namespace /proc/42/ns/ipc (NEWIPC), the UTS namespace /proc/42/ns/uts (NEWUTS)"),
            "{e}"
        );
        assert!(e.contains("a private copy"), "{e}");
        for kind in ["NEWPID", "NEWNS", "NEWUSER", "NEWCGROUP", "NEWTIME"] {
            let one = vec![(kind.to_string(), "/proc/42/ns/x".to_string())];
            assert!(refuse_joined_namespaces(&one).is_err(), "{kind}");
        }
    }

    #[test]
    fn restore_maps_binds_and_cgroups_to_this_host_and_replumbs_pipes() {
        let d = Destination {
            binds: vec![("/data".into(), "/mnt/other/hostdata".into())],
            hierarchies: hierarchies("web2"),
            root_mount: "/var/lib/haul/m1/root".into(),
            inherit: vec![("pipe:[23204]".into(), 11)],
            new_netns: false,
        };
        let (o, _) = restore(&container(), &d, 5);
        let m = &o.ext_mnt;
        assert_eq!(find(m, "/data"), Some("/mnt/other/hostdata"));
        assert_eq!(find(m, "/etc/app.conf"), Some("/srv/bundles/ctp/app.conf"));
        assert_eq!(
            find(m, "/sys/fs/cgroup/memory"),
            Some("/sys/fs/cgroup/memory/web2")
        );
        assert_eq!(find(m, "/dev/null"), Some("/dev/null"));
        assert!(
            find(m, "/proc/kcore").is_none(),
            "restore keys are the names stored on dump"
        );
        assert_eq!(o.inherit_fd.len(), 1);
        assert_eq!(o.inherit_fd[0].key, "pipe:[23204]");
        assert_eq!(o.inherit_fd[0].fd, 11);
        assert_eq!(o.rst_sibling, Some(true));
        assert_eq!(o.evasive_devices, Some(true));
        assert_eq!(o.root.as_deref(), Some("/var/lib/haul/m1/root"));
    }

    #[test]
    fn a_missing_hierarchy_is_reported_not_guessed() {
        let d = Destination {
            hierarchies: vec![Hierarchy {
                mount_point: "/sys/fs/cgroup/memoryx".into(),
                container_dir: "/sys/fs/cgroup/memoryx/web2".into(),
            }],
            ..Default::default()
        };
        let (o, notes) = restore(&container(), &d, 5);
        assert!(find(&o.ext_mnt, "/sys/fs/cgroup/memory").is_none());
        assert!(notes
            .iter()
            .any(|n| n.contains("no cgroup hierarchy named memory")));
    }

    #[test]
    fn cgroup2_mounts_are_left_to_criu_and_said_so() {
        let mut c = container();
        c.cgroup_binds.clear();
        let (o, notes) = dump(&c, 5, 9);
        assert!(find(&o.ext_mnt, "/sys/fs/cgroup/memory").is_none());
        assert!(notes
            .iter()
            .any(|n| n.contains("CRIU dumps and restores it itself")));
    }

    #[test]
    fn one_pipe_for_stdout_and_stderr_is_one_inherit_entry() {
        let p = stdio_pipes(&container().stdio);
        assert_eq!(p, vec![("pipe:[23204]".to_string(), vec![1, 2])]);
        let p = stdio_pipes(&["pipe:[1]".into(), "/dev/null".into(), "pipe:[2]".into()]);
        assert_eq!(p.len(), 2);
    }
}
