//! After a crash: `haul serve` looks at the migration directories left in its work root at
//! start. Interrupted before Ready: the source rolled back, so everything is removed (root
//! mount unmounted first, a stale runc registration of dead tasks, cgroups, a copied bundle).
//! Interrupted at Ready (in doubt): the held tasks died with CRIU, but the source may have
//! stopped its own; the images, the container description and a copied bundle are kept, with an
//! IN-DOUBT note, and `haul recover DIR` completes the restore once the operator has checked the
//! source no longer runs the container.

use super::journal::{self, Stage, PREPARE, PREPARE_MAX};
use super::runc::RuncRestore;
use super::session::{restore_held, Decision, Held, SessionConfig};
use crate::error::{Error, Result};
use crate::workdir::{mounts_under, remove_tree_checked, WorkDir};
use haul_proto::haul::{FsMode, Prepare};
use prost::Message;
use std::path::Path;

/// A finished migration's directory kept by `--keep-images` holds this (empty) file: the scan
/// at the next start leaves it alone, whatever that serve's flags.
pub const KEPT: &str = "KEPT";

/// Cleans the work root at start; never fails the start (problems are logged).
pub fn scan(cfg: &SessionConfig) {
    let Ok(entries) = std::fs::read_dir(&cfg.work_root) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("m-") || !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let dir = e.path();
        if dir.join("IN-DOUBT").exists() {
            log::warn!(
                "in-doubt migration kept in {}: if the source no longer runs it, complete it with `haul recover {}`",
                dir.display(),
                dir.display()
            );
            continue;
        }
        let (stage, id) = journal::read(&dir).unwrap_or((Stage::Receiving, String::new()));
        if stage == Stage::Done && dir.join(KEPT).exists() {
            log::info!("kept images of a finished migration: {}", dir.display());
            continue;
        }
        let prepare = load_prepare(&dir).ok();
        unmount_root(&dir);
        // Only a registration whose tasks are gone, and only empty cgroups, go (a --lazy
        // migration's journal says done while its post-copy still runs: serve's death then
        // killed its tasks).
        if !id.is_empty() {
            drop_stale_registration(cfg, &id);
            remove_cgroups(&id);
        }
        match stage {
            Stage::Ready | Stage::Filling => {
                let why = if stage == Stage::Ready {
                    "haul serve stopped after reporting Ready, before the commit arrived"
                } else {
                    "haul serve stopped while the resumed tasks' memory was being filled from \
                     these images; its guard stopped them"
                };
                let _ = std::fs::write(
                    dir.join("IN-DOUBT"),
                    format!("{why}\nIf the source's tasks are gone, complete it with: haul recover {}\n", dir.display()),
                );
                log::error!(
                    "migration {} IN DOUBT ({why}); images kept; if the source no longer runs {id}, run `haul recover {}`",
                    dir.display(),
                    dir.display()
                );
            }
            Stage::Done => {
                log::info!("removing finished migration directory {}", dir.display());
                if let Err(e) = remove_tree_checked(&dir) {
                    log::warn!("{e}");
                }
            }
            Stage::Receiving | Stage::Restoring => {
                if let (Some(p), false) = (&prepare, id.is_empty()) {
                    if p.runc
                        .as_ref()
                        .is_some_and(|r| r.fs == FsMode::FsCopy as i32)
                    {
                        let bundle = cfg.bundle_root.join(&id);
                        // Registered tasks that still run use it (a container of that id
                        // started since): only an unused bundle goes.
                        if cfg.runc_root.join(&id).exists() {
                            log::warn!(
                                "keeping {}: a container {id} is registered in {}",
                                bundle.display(),
                                cfg.runc_root.display()
                            );
                        } else if bundle.exists() {
                            if let Err(e) = remove_tree_checked(&bundle) {
                                log::warn!("{e}");
                            }
                        }
                    }
                }
                log::warn!(
                    "abandoned interrupted migration {} (stage {stage:?}): the source rolled back; removed",
                    dir.display()
                );
                if let Err(e) = remove_tree_checked(&dir) {
                    log::warn!("{e}");
                }
            }
        }
    }
}

fn load_prepare(dir: &Path) -> Result<Prepare> {
    let bytes = crate::util::read_bounded(&dir.join(PREPARE), PREPARE_MAX).map_err(Error::other)?;
    Prepare::decode(bytes.as_slice())
        .map_err(|e| Error::other(format!("{}: {e}", dir.join(PREPARE).display())))
}

fn unmount_root(dir: &Path) {
    let mounts = match mounts_under(dir) {
        Ok(m) => m,
        Err(e) => {
            // The removal that follows refuses for the same reason.
            log::warn!("{e}");
            return;
        }
    };
    for m in mounts.into_iter().rev() {
        if let Err(e) = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH) {
            log::warn!("unmounting {}: {e}", m.display());
        }
    }
}

/// Removes `<runc-root>/<id>` if it describes tasks that no longer exist (they died with the
/// CRIU that held them).
fn drop_stale_registration(cfg: &SessionConfig, id: &str) {
    let dir = cfg.runc_root.join(id);
    let state = dir.join("state.json");
    let Ok(bytes) = crate::util::read_bounded(&state, crate::inspect::bounds::STATE_JSON_MAX)
    else {
        return;
    };
    let mut text = vec![0u8; bytes.len()];
    let Ok(st) = crate::inspect::parse_state(&bytes, &mut text) else {
        return;
    };
    let pid = st.init_pid.as_raw_nonzero().get();
    if crate::source::migrate::process_exists(pid) {
        return;
    }
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_dir(&dir);
    log::info!("removed the stale registration of {id} (its tasks are gone)");
}

fn remove_cgroups(id: &str) {
    let Ok(hier) =
        crate::cgroups::hierarchies(Path::new("/proc"), crate::inspect::ProcPid::Current)
    else {
        return;
    };
    for h in hier {
        let d = h.child(id);
        if d.is_dir() {
            // rmdir only: a cgroup with tasks is left alone.
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// `haul recover DIR`: completes an in-doubt migration from its kept images.
pub fn complete(dir: &Path, cfg: &SessionConfig) -> Result<()> {
    if !dir.join("IN-DOUBT").exists() {
        return Err(Error::usage(format!(
            "{} is not an in-doubt migration directory (no IN-DOUBT note)",
            dir.display()
        )));
    }
    let prepare = load_prepare(dir)?;
    unmount_root(dir);
    let mut job = match prepare.runc {
        Some(rc) => {
            drop_stale_registration(cfg, &rc.dst_id);
            remove_cgroups(&rc.dst_id);
            Some(RuncRestore::preflight_kept(rc, cfg)?)
        }
        None => None,
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = dir.parent().unwrap_or(Path::new("/"));
    let work = WorkDir::open(root, &name)?;
    let mut restorer = super::session::spawn_restorer(cfg, job.as_mut())?;
    match restore_held(&work, &mut job, &mut restorer, false, true, |_| {
        Ok(Decision::Commit)
    })? {
        Held::Done(pid) => {
            if let Some(j) = job.take() {
                j.commit();
            }
            drop(restorer);
            let _ = std::fs::remove_file(dir.join("IN-DOUBT"));
            log::info!("recovered: pid {pid} runs here");
            eprintln!("haul: recovered {}: restored pid {pid}", dir.display());
            work.remove()
        }
        Held::InDoubt(why) => Err(Error::other(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config(root: &Path) -> SessionConfig {
        SessionConfig {
            key: None,
            criu: "criu".into(),
            work_root: root.join("work"),
            keep_images: false,
            runc_root: root.join("runc"),
            bundle_root: root.join("bundles"),
            stdio_dir: root.join("stdio"),
            runc: "runc".into(),
            idle_timeout: crate::limits::IDLE_TIMEOUT,
            commit_timeout: crate::limits::COMMIT_TIMEOUT,
        }
    }

    /// A migration directory at `stage` for container `id`, with an image file in it.
    fn migration(cfg: &SessionConfig, name: &str, stage: Stage, id: &str) -> PathBuf {
        let dir = cfg.work_root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pages-1.img"), b"pages").unwrap();
        journal::write(&dir, stage, id).unwrap();
        dir
    }

    #[test]
    fn the_scan_keeps_kept_images_and_registered_bundles() {
        let tmp = std::env::temp_dir().join(format!("haul-scan-{}", std::process::id()));
        let cfg = config(&tmp);
        // Finished, kept by --keep-images: stays, whatever this serve's flags.
        let kept = migration(&cfg, "m-1-kept", Stage::Done, "web1");
        std::fs::write(kept.join(KEPT), b"").unwrap();
        // Finished, not kept (serve stopped before removing it): goes.
        let done = migration(&cfg, "m-2-done", Stage::Done, "web2");
        // Interrupted while receiving a copied bundle of a container that is registered (and
        // so in use) now: the directory goes, the bundle stays.
        let prepare = Prepare {
            runc: Some(haul_proto::haul::RuncContainer {
                fs: FsMode::FsCopy as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let used = migration(&cfg, "m-3-used", Stage::Receiving, "web3");
        std::fs::write(used.join(PREPARE), prepare.encode_to_vec()).unwrap();
        std::fs::create_dir_all(cfg.bundle_root.join("web3/rootfs")).unwrap();
        std::fs::create_dir_all(cfg.runc_root.join("web3")).unwrap();
        // The same, of a container that is not registered: both go.
        let unused = migration(&cfg, "m-4-unused", Stage::Receiving, "web4");
        std::fs::write(unused.join(PREPARE), prepare.encode_to_vec()).unwrap();
        std::fs::create_dir_all(cfg.bundle_root.join("web4/rootfs")).unwrap();

        scan(&cfg);
        assert!(kept.join("pages-1.img").exists(), "kept images removed");
        assert!(!done.exists(), "finished directory left");
        assert!(
            !used.exists() && !unused.exists(),
            "interrupted directories left"
        );
        assert!(
            cfg.bundle_root.join("web3/rootfs").exists(),
            "bundle in use removed"
        );
        assert!(!cfg.bundle_root.join("web4").exists(), "unused bundle left");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
