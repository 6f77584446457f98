//! `haul migrate runc ID --mode restart`: for hosts where checkpointing is impossible. The
//! destination checks it can start the container; the bundle is copied (`--fs copy`) while it
//! still runs here; then it is stopped here (signal, grace period, KILL), what changed in the
//! bundle is sent, and the destination starts it afresh with runc. If the destination fails to
//! start it, it is started again here. Process state (memory) is not carried over.

use super::connect::{open, wire_to_error};
use super::progress::phase;
use crate::cli::MigrateRunc;
use crate::criu::Version;
use crate::error::{Error, Kind, Result};
use crate::limits::IDLE_TIMEOUT;
use crate::transfer::Key;
use haul_proto::haul::{control::Msg, Prepare, Purpose, Start};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn runc(bin: &Path, root: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--root").arg(root);
    c
}

fn status_of(bin: &Path, root: &Path, id: &str) -> Option<String> {
    let out = runc(bin, root).args(["state", id]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rest = text.split("\"status\":").nth(1)?;
    Some(
        rest.trim_start()
            .trim_start_matches('"')
            .split('"')
            .next()?
            .to_string(),
    )
}

/// Stops the container: `signal`, then KILL after `timeout`.
fn stop(bin: &Path, root: &Path, id: &str, signal: &str, timeout: Duration) -> Result<()> {
    let _ = runc(bin, root).args(["kill", id, signal]).status();
    let start = Instant::now();
    while start.elapsed() < timeout {
        if status_of(bin, root, id).as_deref() == Some("stopped") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    log::warn!(
        "{id} did not stop within {} s after SIG{signal}: killing it",
        timeout.as_secs()
    );
    let _ = runc(bin, root).args(["kill", id, "KILL"]).status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if status_of(bin, root, id).as_deref() == Some("stopped") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::other(format!("container {id} does not stop")))
}

/// Starts the container here again after a failed restart elsewhere (stdio to /dev/null: the
/// original pipes are gone).
fn start_again(bin: &Path, root: &Path, id: &str, bundle: &str) -> Result<()> {
    let _ = runc(bin, root).args(["delete", "--force", id]).status();
    let mut cmd = runc(bin, root);
    crate::sys::unblock_signals_in_child(&mut cmd)
        .map_err(|e| Error::other(format!("signal mask: {e}")))?;
    let st = cmd
        .args(["run", "-d", "--bundle", bundle, id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| Error::other(format!("runc run: {e}")))?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::other(format!("runc run {id} failed here too: {st}")))
    }
}

pub fn run(
    a: &MigrateRunc,
    key: Option<&Key>,
    runc_bin: &Path,
    prepare: Prepare,
    bundle: String,
    tree: Option<(PathBuf, Vec<String>)>,
    quiet: bool,
) -> Result<()> {
    let started = Instant::now();
    let id = &a.id;
    phase(quiet, &format!("connecting to {}", a.to));
    // No CRIU is involved: report a version that satisfies the destination's check.
    let (conn, _) = open(
        &a.to,
        key,
        Purpose::MigrateRunc,
        Version::default(),
        &crate::util::migration_id(),
    )?;
    phase(
        quiet,
        "preflight: the destination checks it can start the container",
    );
    super::connect::preflight(&conn, prepare)?;
    let mut snapshot = None;
    if let Some((root, tops)) = &tree {
        phase(quiet, &format!("copying the bundle {}", root.display()));
        let tops: Vec<&str> = tops.iter().map(String::as_str).collect();
        let (snap, _, _) = crate::transfer::tree::send_tree(&conn, root, &tops, 1, None)
            .map_err(|e| Error::new(Kind::Refused, format!("copying the bundle: {e}")))?;
        snapshot = Some(snap);
    }
    phase(
        quiet,
        &format!(
            "stopping {id} here (SIG{}, up to {} s)",
            a.stop_signal, a.stop_timeout
        ),
    );
    let stopped_at = Instant::now();
    stop(
        runc_bin,
        &a.runc_root,
        id,
        &a.stop_signal,
        Duration::from_secs(a.stop_timeout),
    )?;
    let result = (|| -> Result<i32> {
        if let (Some((root, tops)), Some(snap)) = (&tree, &snapshot) {
            let tops: Vec<&str> = tops.iter().map(String::as_str).collect();
            crate::transfer::tree::send_tree(&conn, root, &tops, 2, Some(snap))
                .map_err(|e| Error::other(format!("copying the bundle's changes: {e}")))?;
        }
        conn.send(Msg::Start(Start {}))
            .map_err(|e| wire_to_error(e, "sending start"))?;
        match conn.recv_control(IDLE_TIMEOUT, "start") {
            Ok(Msg::Done(d)) => Ok(d.restored_pid),
            Ok(Msg::Abort(a)) => Err(Error::other(format!(
                "destination could not start it: {}",
                crate::util::printable(&a.reason)
            ))),
            Ok(other) => Err(Error::other(format!("unexpected {other:?}"))),
            Err(e) => Err(wire_to_error(e, "waiting for the destination")),
        }
    })();
    conn.close();
    match result {
        Ok(pid) => {
            let _ = runc(runc_bin, &a.runc_root)
                .args(["delete", "--force", id])
                .status();
            if !quiet {
                eprintln!(
                    "haul: restarted runc {id} on {} (pid {pid})\n  total:        {} ms\n  stopped:      {} ms (from the stop signal until it ran there)",
                    a.to,
                    started.elapsed().as_millis(),
                    stopped_at.elapsed().as_millis()
                );
            }
            Ok(())
        }
        Err(e) => {
            let again = start_again(runc_bin, &a.runc_root, id, &bundle);
            let how = match again {
                Ok(()) => "started again on this host".to_string(),
                Err(e2) => format!("and starting it again here failed too: {e2}"),
            };
            Err(e
                .with_kind(Kind::RolledBack)
                .context(format!("restart of {id} failed; {how}")))
        }
    }
}
