//! `haul check [--to ADDR:PORT --key FILE]`: can this host (and the destination) migrate?
//! One line per check: `ok` or the reason.

use crate::criu::{self, Swrk, Version};
use crate::error::{Error, Kind, Result};
use crate::transfer::Key;
use crate::workdir::WorkDir;
use haul_proto::criu::{CriuOpts, CriuReqType};
use haul_proto::haul::{control::Msg, CpuCheck, CpuCheckResult, Purpose};
use std::path::Path;

/// Largest cpuinfo.img read (a few hundred bytes in practice).
const CPUINFO_MAX: usize = 64 * 1024;

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, name: &str, result: std::result::Result<String, String>) {
        match result {
            Ok(detail) => println!("ok    {name}: {detail}"),
            Err(reason) => {
                self.failed = true;
                println!("FAIL  {name}: {reason}");
            }
        }
    }
    fn info(&self, name: &str, detail: &str) {
        println!("note  {name}: {detail}");
    }
}

pub fn run(criu_path: &Path, work_root: &Path, to: Option<&str>, key: Option<&Key>) -> Result<()> {
    let mut r = Report { failed: false };
    let mut local = None;
    match Swrk::spawn(criu_path, &[]) {
        Err(e) => r.line("criu", Err(e.to_string())),
        Ok(mut s) => {
            match s.version() {
                Ok(v) if v >= criu::MIN_VERSION => {
                    r.line("criu", Ok(format!("{} (version {v})", criu_path.display())));
                    local = Some(v);
                }
                Ok(v) => r.line(
                    "criu",
                    Err(format!(
                        "criu {v} is too old: haul needs {} or newer",
                        criu::MIN_VERSION
                    )),
                ),
                Err(e) => r.line("criu", Err(e.to_string())),
            }
            match s.features() {
                Ok(f) => {
                    let mt = f.mem_track.unwrap_or(false);
                    let lp = f.lazy_pages.unwrap_or(false);
                    r.line(
                        "kernel: checkpoint/restore",
                        Ok("FEATURE_CHECK answered".into()),
                    );
                    r.info(
                        "kernel: memory tracking (pre-copy)",
                        if mt {
                            "available"
                        } else {
                            "not available (no soft-dirty bit): pre-dump iterations cannot run"
                        },
                    );
                    r.info(
                        "kernel: lazy pages (post-copy, --lazy)",
                        if lp {
                            "available; note: with --lazy, losing the connection or either CRIU after the \
                             destination started loses the container (both copies stop)"
                        } else {
                            "not available (no userfaultfd): --lazy cannot restore here"
                        },
                    );
                    r.info(
                        "as destination: memory fill after the resume",
                        if lp {
                            "yes: migrations without --lazy resume before haul serve fills the \
                             memory from this host's copy (--eager-restore or \
                             HAUL_FILL=before-resume: before)"
                        } else {
                            "no (no userfaultfd): all memory is restored before the resume"
                        },
                    );
                    r.info(
                        "tmpfs contents (CRIU's tar)",
                        &match crate::criu::tar::system_tar_path() {
                            Some(t) if !crate::criu::tar::builtin_enabled() => {
                                format!("{} (HAUL_CRIU_TAR=system)", t.display())
                            }
                            None if !crate::criu::tar::builtin_enabled() => {
                                "HAUL_CRIU_TAR=system but no system tar: tmpfs mounts cannot be \
                                 dumped"
                                    .to_string()
                            }
                            Some(t) => format!(
                                "haul itself ({}/bin/tar); {} for trees it does not handle",
                                work_root.display(),
                                t.display()
                            ),
                            None => format!(
                                "haul itself ({}/bin/tar); no system tar for trees it does not \
                                 handle (hard links, sparse files, sockets in a tmpfs)",
                                work_root.display()
                            ),
                        },
                    );
                    match crate::source::postcopy::pipe_check() {
                        Ok(d) => r.info("--lazy as source: page pipes", &d),
                        Err(why) => r.info(
                            "--lazy as source: page pipes",
                            &format!("--lazy will refuse: {why}"),
                        ),
                    }
                }
                Err(e) => r.line("kernel features", Err(e.to_string())),
            }
        }
    }
    r.info(
        "connection cipher",
        if haul_seal::aegis_available() {
            "AEGIS-128L with a peer that also has AES instructions (this CPU has them), else \
             ChaCha20-Poly1305 (HAUL_CIPHER=chacha20-poly1305 forces it)"
        } else {
            "ChaCha20-Poly1305 (this CPU has no AES instructions for AEGIS-128L)"
        },
    );
    if let Some(to) = to {
        remote(
            &mut r,
            criu_path,
            work_root,
            to,
            key,
            local.unwrap_or_default(),
        );
    }
    if r.failed {
        Err(Error::new(Kind::Setup, "some checks failed (see above)"))
    } else {
        Ok(())
    }
}

fn remote(
    r: &mut Report,
    criu_path: &Path,
    work_root: &Path,
    to: &str,
    key: Option<&Key>,
    local: Version,
) {
    let (conn, welcome) =
        match crate::source::connect::open(to, key, Purpose::Check, local, "check") {
            Ok(c) => c,
            Err(e) => {
                r.line(
                    "destination: connection and authentication",
                    Err(e.to_string()),
                );
                return;
            }
        };
    let sealing = match conn.cipher() {
        Some(c) => format!("key verified, frames sealed with {}", c.name()),
        None => "INSECURE: no key".to_string(),
    };
    r.line(
        "destination: connection and authentication",
        Ok(format!(
            "{to} ({sealing}, haul {})",
            crate::util::printable(&welcome.agent_version)
        )),
    );
    if conn.cipher() == Some(haul_seal::Cipher::ChaCha20Poly1305) && haul_seal::aegis_available() {
        r.info(
            "destination: cipher",
            "ChaCha20-Poly1305, not AEGIS-128L: the destination (or HAUL_CIPHER here) does not \
             offer it, e.g. a CPU without AES instructions; pages move slower",
        );
    }
    let dst = welcome
        .criu
        .as_ref()
        .map(Version::from_wire)
        .unwrap_or_default();
    r.line(
        "destination: criu version",
        if dst < criu::MIN_VERSION {
            Err(format!(
                "criu {dst} on the destination is too old: haul needs {} or newer",
                criu::MIN_VERSION
            ))
        } else if dst < local {
            Err(format!(
                "criu {dst} on the destination is older than criu {local} here"
            ))
        } else {
            Ok(format!("{dst} (here {local})"))
        },
    );
    r.info(
        "destination: lazy pages (--lazy)",
        if welcome.lazy_pages {
            "available; after the destination starts, a lost connection loses the container"
        } else {
            "not available there: --lazy will refuse before freezing"
        },
    );
    r.info(
        "destination: pre-copy",
        if welcome.pre_copy {
            "served (a page server per pre-dump)"
        } else {
            "not served (an older haul): --pre-dump auto dumps once, always fails"
        },
    );
    match cpuinfo_dump(criu_path, work_root) {
        Err(e) => r.info(
            "cpu compatibility",
            &format!("cannot describe this CPU: {e}"),
        ),
        Ok(img) => {
            let res = conn
                .send(Msg::CpuCheck(CpuCheck { cpuinfo_img: img }))
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    conn.recv_control(crate::limits::IDLE_TIMEOUT, "cpu check")
                        .map_err(|e| e.to_string())
                });
            match res {
                Ok(Msg::CpuCheckResult(c)) if !c.supported => {
                    r.info("cpu compatibility", &format!("not checked: {}", c.detail))
                }
                Ok(Msg::CpuCheckResult(c)) if c.compatible => r.line(
                    "cpu compatibility",
                    Ok("the destination's CRIU accepts this CPU".into()),
                ),
                Ok(Msg::CpuCheckResult(c)) => r.line("cpu compatibility", Err(c.detail)),
                Ok(_) => r.line("cpu compatibility", Err("unexpected answer".into())),
                Err(e) => r.line("cpu compatibility", Err(e)),
            }
        }
    }
    conn.close();
}

/// CPUINFO_DUMP into a temporary directory; returns cpuinfo.img.
fn cpuinfo_dump(criu_path: &Path, work_root: &Path) -> std::result::Result<Vec<u8>, String> {
    let dir =
        WorkDir::create(work_root, &crate::util::migration_id()).map_err(|e| e.to_string())?;
    let res = (|| {
        let mut s = Swrk::spawn(criu_path, &[]).map_err(|e| e.to_string())?;
        s.call(&Swrk::request(
            CriuReqType::CpuinfoDump,
            CriuOpts {
                images_dir_fd: dir.raw(),
                log_file: Some("cpuinfo.log".into()),
                ..Default::default()
            },
        ))
        .map_err(|e| e.to_string())?;
        crate::util::read_bounded(&dir.path.join("cpuinfo.img"), CPUINFO_MAX)
    })();
    let _ = dir.remove();
    res
}

/// Destination side of the CPU check.
pub fn cpu_check_here(criu_path: &Path, work_root: &Path, img: &[u8]) -> CpuCheckResult {
    let unsupported = |detail: String| CpuCheckResult {
        compatible: false,
        detail,
        supported: false,
    };
    let dir = match WorkDir::create(work_root, &crate::util::migration_id()) {
        Ok(d) => d,
        Err(e) => return unsupported(e.to_string()),
    };
    let res = (|| {
        std::fs::write(dir.path.join("cpuinfo.img"), img)
            .map_err(|e| unsupported(e.to_string()))?;
        let mut s = Swrk::spawn(criu_path, &[]).map_err(|e| unsupported(e.to_string()))?;
        s.set_log(dir.path.join("cpuinfo.log"));
        match s.call(&Swrk::request(
            CriuReqType::CpuinfoCheck,
            CriuOpts {
                images_dir_fd: dir.raw(),
                log_file: Some("cpuinfo.log".into()),
                ..Default::default()
            },
        )) {
            Ok(_) => Ok(CpuCheckResult {
                compatible: true,
                detail: String::new(),
                supported: true,
            }),
            Err(e) => Err(CpuCheckResult {
                compatible: false,
                detail: e.to_string(),
                supported: true,
            }),
        }
    })();
    let _ = dir.remove();
    res.unwrap_or_else(|e| e)
}
