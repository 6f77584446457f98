//! Registration with runc on the destination: claim `<runc-root>/<id>` atomically and write
//! runc's state.json for the restored container, patched from the source's.

pub mod json_patch;

use crate::error::{Context, Error, Kind, Result};
use json_patch::{patch, string, Edit};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What changes between the source's state.json and the destination's.
pub struct Registration<'a> {
    pub id: &'a str,
    pub init_pid: i32,
    /// Start time of the init process in clock ticks after boot (/proc/PID/stat field 22).
    pub init_start: u64,
    /// RFC 3339 creation time.
    pub created: String,
    pub rootfs: &'a str,
    pub bundle: &'a str,
    /// (controller key as in state.json, absolute cgroup directory)
    pub cgroup_paths: Vec<(String, String)>,
    /// (namespace type, path)
    pub namespace_paths: Vec<(String, String)>,
    /// New link targets of init's fds 0-2.
    pub external_descriptors: [String; 3],
    /// Annotation-style labels kept (everything but `bundle=` and `org.criu.*`).
    pub labels: Vec<String>,
}

fn object(pairs: &[(String, String)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{}", string(k), string(v)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn array(items: &[String]) -> String {
    let body: Vec<String> = items.iter().map(|s| string(s)).collect();
    format!("[{}]", body.join(","))
}

/// The destination's state.json text: the source's, with the new identity and places, and
/// without hooks or CRIU configuration coming from the peer.
pub fn state_json(source: &str, r: &Registration<'_>) -> Result<String> {
    let mut labels = vec![format!("bundle={}", r.bundle)];
    labels.extend(r.labels.iter().cloned());
    let edits = [
        Edit::Set(&["id"], string(r.id)),
        Edit::Set(&["init_process_pid"], r.init_pid.to_string()),
        Edit::Set(&["init_process_start"], r.init_start.to_string()),
        Edit::Set(&["created"], string(&r.created)),
        Edit::Set(&["config", "rootfs"], string(r.rootfs)),
        Edit::Set(&["config", "labels"], array(&labels)),
        Edit::Set(&["config", "cgroups", "name"], string(r.id)),
        // Any spelling runc reads as its `Hooks` field ("Hooks", "HOOKS", "hook\u0073" ...).
        Edit::Remove(&["config", "hooks"]),
        Edit::Set(&["cgroup_paths"], object(&r.cgroup_paths)),
        Edit::Set(&["namespace_paths"], object(&r.namespace_paths)),
        Edit::Set(&["external_descriptors"], array(&r.external_descriptors)),
    ];
    patch(source, &edits).map_err(|e| Error::other(format!("state.json from the source: {e}")))
}

/// A claimed `<runc-root>/<id>` directory; removed on drop unless kept.
pub struct Claim {
    pub dir: PathBuf,
    keep: bool,
}

impl Claim {
    /// `mkdir <runc-root>/<id>`: atomic; fails if the id exists.
    pub fn take(runc_root: &Path, id: &str) -> Result<Claim> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(runc_root)
            .ctx(
                Kind::Setup,
                format!("creating runc root {}", runc_root.display()),
            )?;
        let dir = runc_root.join(id);
        match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => Ok(Claim { dir, keep: false }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::new(
                Kind::Refused,
                format!("container {id} already exists in {}", runc_root.display()),
            )),
            Err(e) => Err(Error::io(format!("creating {}", dir.display()), e)),
        }
    }

    /// Writes state.json atomically (temporary file, fsync, rename), mode 0600 like runc.
    pub fn write_state(&self, text: &str) -> Result<()> {
        let tmp = self.dir.join(".state.json.haul");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(Kind::Other, format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .ctx(Kind::Other, format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join("state.json"))
            .ctx(Kind::Other, "renaming state.json into place")
    }

    /// The container is runc's now: keep the directory.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.keep {
            // Only files haul wrote live here; never a mount point.
            let _ = std::fs::remove_file(self.dir.join("state.json"));
            let _ = std::fs::remove_file(self.dir.join(".state.json.haul"));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// RFC 3339 UTC timestamp with nanoseconds, as runc writes `created`.
pub fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut s = String::new();
    crate::logger::push_date_time(&mut s, d.as_secs());
    format!("{s}.{:09}Z", d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/runc-1.1.5-cgroupv1-hybrid/state.json"
        ))
        .unwrap()
    }

    #[test]
    fn destination_state_has_the_new_identity_and_no_hooks() {
        let r = Registration {
            id: "web2",
            init_pid: 4242,
            init_start: 123_456,
            created: "2026-11-29T08:00:00.000000000Z".into(),
            rootfs: "/srv/b/web2/rootfs",
            bundle: "/srv/b/web2",
            cgroup_paths: vec![("memory".into(), "/sys/fs/cgroup/memory/web2".into())],
            namespace_paths: vec![("NEWNET".into(), "/proc/4242/ns/net".into())],
            external_descriptors: ["/dev/null".into(), "pipe:[1]".into(), "pipe:[1]".into()],
            labels: vec![],
        };
        let out = state_json(&fixture(), &r).unwrap();
        for needle in [
            r#""id":"web2""#,
            r#""init_process_pid":4242"#,
            r#""init_process_start":123456"#,
            r#""rootfs":"/srv/b/web2/rootfs""#,
            r#""labels":["bundle=/srv/b/web2"]"#,
            r#""cgroup_paths":{"memory":"/sys/fs/cgroup/memory/web2"}"#,
            r#""external_descriptors":["/dev/null","pipe:[1]","pipe:[1]"]"#,
            r#""name":"web2""#,
        ] {
            assert!(out.contains(needle), "missing {needle}");
        }
        assert!(!out.contains("Hooks"));
        assert!(!out.contains("7769"), "old pid left in: {out}");
    }

    #[test]
    fn claims_are_exclusive_and_released() {
        let root = std::env::temp_dir().join(format!("haul-claim-{}", std::process::id()));
        let c = Claim::take(&root, "c1").unwrap();
        let again = Claim::take(&root, "c1").err().unwrap();
        assert_eq!(again.kind, Kind::Refused);
        assert!(again.message.contains("already exists"));
        c.write_state("{}").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("c1/state.json")).unwrap(),
            "{}"
        );
        drop(c);
        assert!(!root.join("c1").exists());
        std::fs::remove_dir(&root).unwrap();
    }
}
