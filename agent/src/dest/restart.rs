//! `--mode restart` on the destination: no CRIU; receive the bundle (with `--fs copy`), wait
//! for Start (the source has stopped the container), then `runc run -d` it here with its stdout
//! and stderr going to the relay log, and report its pid.

use super::runc::RuncRestore;
use super::session::{msg_name, SessionConfig};
use crate::error::{Error, Result};
use crate::transfer::{Conn, Incoming};
use haul_proto::haul::{control::Msg, Done, Prepared};
use std::process::{Command, Stdio};

pub fn run(conn: &Conn, cfg: &SessionConfig, mut job: RuncRestore) -> Result<()> {
    let mut tree = job.tree_sink()?;
    conn.send(Msg::Prepared(Prepared {}))
        .map_err(|e| Error::other(format!("prepared: {e}")))?;
    loop {
        let wire =
            |e: crate::transfer::WireError| Error::other(format!("receiving the bundle: {e}"));
        match conn.recv(cfg.idle_timeout, "restart").map_err(wire)? {
            Incoming::FileData(d) => match tree.as_mut() {
                Some(t) => t.data(&d).map_err(wire)?,
                None => return Err(Error::other("file data without --fs copy")),
            },
            Incoming::Control(Msg::TreeEntry(e)) => match tree.as_mut() {
                Some(t) => t.entry(e).map_err(wire)?,
                None => return Err(Error::other("bundle tree sent without --fs copy")),
            },
            Incoming::Control(Msg::FileEnd(e)) => match tree.as_mut() {
                Some(t) => t.end(e).map_err(wire)?,
                None => return Err(Error::other("file end without --fs copy")),
            },
            Incoming::Control(Msg::TreeDone(d)) => {
                log::info!(
                    "bundle pass {}: {} entries, {} bytes",
                    d.pass,
                    d.entries,
                    d.bytes
                )
            }
            Incoming::Control(Msg::Start(_)) => break,
            Incoming::Control(Msg::Abort(a)) => {
                return Err(Error::other(format!(
                    "source aborted during {}: {}",
                    crate::util::printable(&a.stage),
                    crate::util::printable(&a.reason)
                )))
            }
            Incoming::Control(other) => {
                return Err(Error::other(format!(
                    "unexpected {} in restart mode",
                    msg_name(&other)
                )))
            }
        }
    }
    // stdout and stderr: a pipe to the relay log when they were pipes on the source.
    job.plumb()?;
    let out = job.stdout_for_run();
    let mut cmd = Command::new(&cfg.runc);
    cmd.arg("--root")
        .arg(&cfg.runc_root)
        .args(["run", "-d", "--bundle"])
        .arg(job.bundle())
        .arg(job.dst_id())
        .stdin(Stdio::null());
    match out {
        Some(fd) => {
            let err = fd
                .try_clone()
                .map_err(|e| Error::other(format!("dup: {e}")))?;
            cmd.stdout(Stdio::from(fd)).stderr(Stdio::from(err));
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    crate::sys::unblock_signals_in_child(&mut cmd)
        .map_err(|e| Error::other(format!("signal mask: {e}")))?;
    let status = cmd
        .status()
        .map_err(|e| Error::other(format!("running {}: {e}", cfg.runc.display())))?;
    job.release_pipes();
    if !status.success() {
        return Err(Error::other(format!(
            "runc run {} failed: {status}",
            job.dst_id()
        )));
    }
    // The container runs here from now on: whatever happens next, its bundle stays (see
    // report_started), and no error may reach the source (it would start it again there).
    let pid = started_pid(cfg, job.dst_id());
    log::info!("started container {} with runc (pid {pid})", job.dst_id());
    crate::util::fault_point("dst-started");
    report_started(conn, &mut job, pid);
    Ok(())
}

/// The pid `runc state` reports for the container just started (0 if it cannot be read).
fn started_pid(cfg: &SessionConfig, id: &str) -> i32 {
    let state = match Command::new(&cfg.runc)
        .arg("--root")
        .arg(&cfg.runc_root)
        .args(["state", id])
        .output()
    {
        Ok(s) => s,
        Err(e) => {
            log::warn!("runc state {id}: {e}; reporting pid 0");
            return 0;
        }
    };
    let text = String::from_utf8_lossy(&state.stdout);
    text.split("\"pid\":")
        .nth(1)
        .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0)
}

/// Tells the source the container runs here. The bundle and the stdio relays are kept before
/// Done is sent; a Done that cannot be sent only leaves the source in doubt (it keeps its copy
/// stopped).
fn report_started(conn: &Conn, job: &mut RuncRestore, pid: i32) {
    job.keep_bundle();
    job.keep_relays();
    if let Err(e) = conn.send(Msg::Done(Done {
        restored_pid: pid,
        ..Default::default()
    })) {
        log::error!(
            "container {} runs here (pid {pid}) but telling the source failed: {e}; the source \
             reports the restart IN DOUBT and keeps its copy stopped",
            job.dst_id()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_container_keeps_its_bundle_when_done_cannot_be_sent() {
        let dir = std::env::temp_dir().join(format!("haul-restart-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        let (here, source) = crate::transfer::mux::loopback_pair();
        // The connection is gone before Done goes out.
        source.close();
        if let Ok(tx) = here.sender().lock() {
            tx.shutdown_both();
        }
        let mut job = RuncRestore::with_created_bundle(dir.clone());
        report_started(&here, &mut job, 42);
        drop(job);
        assert!(
            dir.join("config.json").is_file(),
            "the running container's bundle was removed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
