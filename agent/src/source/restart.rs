//! `haul migrate runc ID --mode restart`: for hosts where checkpointing is impossible. The
//! destination checks it can start the container; the bundle is copied (`--fs copy`) while it
//! still runs here; then it is stopped here (signal, grace period, KILL), what changed in the
//! bundle is sent, and the destination starts it afresh with runc. If the destination answers
//! that it could not start it, it is started again here; if no answer comes, the migration is
//! in doubt and it stays stopped here (it must not run on both hosts). Process state (memory)
//! is not carried over.

use super::connect::{open, wire_to_error};
use super::progress::phase;
use crate::cli::MigrateRunc;
use crate::criu::Version;
use crate::error::{Error, Kind, Result};
use crate::limits::IDLE_TIMEOUT;
use crate::transfer::tree::Snapshot;
use crate::transfer::{Conn, Key};
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
    let dst_id = prepare
        .runc
        .as_ref()
        .map(|r| r.dst_id.clone())
        .unwrap_or_else(|| id.clone());
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
    let handover = hand_over(&conn, tree.as_ref(), snapshot.as_ref(), IDLE_TIMEOUT);
    conn.close();
    let manual = format!(
        "runc --root {root} delete {id} && runc --root {root} run -d --bundle {bundle} {id}",
        root = a.runc_root.display()
    );
    let pid = settle(handover, &a.to, id, &dst_id, &manual, || {
        start_again(runc_bin, &a.runc_root, id, &bundle)
    })?;
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

/// How the hand-over to the destination ended, once the container was stopped here.
#[derive(Debug)]
enum Handover {
    /// The destination runs it (its pid there).
    Started(i32),
    /// The destination does not run it: the failure came before Start was sent, or the
    /// destination answered Abort.
    NotStarted(Error),
    /// Start was sent but no answer came (timeout, lost connection, an unexpected message):
    /// the destination may run it.
    Unknown(Error),
}

/// Sends what changed in the bundle, then Start, and waits up to `wait` for the answer.
fn hand_over(
    conn: &Conn,
    tree: Option<&(PathBuf, Vec<String>)>,
    snapshot: Option<&Snapshot>,
    wait: Duration,
) -> Handover {
    if let (Some((root, tops)), Some(snap)) = (tree, snapshot) {
        let tops: Vec<&str> = tops.iter().map(String::as_str).collect();
        if let Err(e) = crate::transfer::tree::send_tree(conn, root, &tops, 2, Some(snap)) {
            return Handover::NotStarted(Error::other(format!(
                "copying the bundle's changes: {e}"
            )));
        }
    }
    // A Start that could not be sent whole cannot be decoded there: nothing was started.
    if let Err(e) = conn.send(Msg::Start(Start {})) {
        return Handover::NotStarted(wire_to_error(e, "sending start"));
    }
    match conn.recv_control(wait, "start") {
        Ok(Msg::Done(d)) => Handover::Started(d.restored_pid),
        Ok(Msg::Abort(a)) => Handover::NotStarted(Error::other(format!(
            "destination could not start it: {}",
            crate::util::printable(&a.reason)
        ))),
        Ok(other) => Handover::Unknown(Error::other(format!(
            "unexpected {other:?} instead of the destination's answer to Start"
        ))),
        Err(e) => Handover::Unknown(wire_to_error(e, "waiting for the destination")),
    }
}

/// What the hand-over means for the container here: started there (its pid), not started
/// there (`start_here` runs it again on this host), or in doubt (it stays stopped here, and
/// the error tells the operator how to find out and what to run: `manual`).
fn settle(
    handover: Handover,
    to: &str,
    id: &str,
    dst_id: &str,
    manual: &str,
    start_here: impl FnOnce() -> Result<()>,
) -> Result<i32> {
    match handover {
        Handover::Started(pid) => Ok(pid),
        Handover::NotStarted(e) => match start_here() {
            Ok(()) => Err(e.with_kind(Kind::RolledBack).context(format!(
                "restart of {id} failed; started again on this host"
            ))),
            Err(e2) => Err(e.with_kind(Kind::Lost).context(format!(
                "restart of {id} failed, and starting it again here failed too ({e2}): it runs \
                 nowhere; start it by hand with: {manual}"
            ))),
        },
        Handover::Unknown(e) => Err(e.with_kind(Kind::InDoubt).context(format!(
            "IN DOUBT: {id} was stopped here and the destination {to} was told to start it as \
             {dst_id}, but it did not confirm it did; {id} stays stopped here so that it does \
             not run twice. Check `runc list` on {to} (under the runc root of its `haul serve`): \
             if {dst_id} is not running there, start it here again with: {manual}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::mux::loopback_pair;
    use haul_proto::haul::{Abort, Done};
    use std::cell::Cell;

    /// Hands over to a destination that takes Start, then does `answer` with its connection.
    fn hand_over_to(answer: impl FnOnce(Conn) + Send + 'static, wait: Duration) -> Handover {
        let (here, there) = loopback_pair();
        let dest = std::thread::spawn(move || {
            match there.recv_control(Duration::from_secs(10), "test") {
                Ok(Msg::Start(_)) => {}
                other => panic!("expected Start, got {other:?}"),
            }
            answer(there);
        });
        let h = hand_over(&here, None, None, wait);
        here.close();
        dest.join().unwrap();
        h
    }

    /// Settles `h` with a `start_here` that counts its calls.
    fn settle_counting(h: Handover) -> (Result<i32>, u32) {
        let calls = Cell::new(0);
        let r = settle(
            h,
            "10.0.0.2:7070",
            "web1",
            "web1-b",
            "runc run web1",
            || {
                calls.set(calls.get() + 1);
                Ok(())
            },
        );
        (r, calls.get())
    }

    fn assert_in_doubt(h: Handover) {
        assert!(matches!(h, Handover::Unknown(_)), "{h:?}");
        let (r, calls) = settle_counting(h);
        assert_eq!(
            calls, 0,
            "started again here while the destination may run it"
        );
        let e = r.unwrap_err();
        assert_eq!(e.kind, Kind::InDoubt, "{e}");
        assert!(
            e.message.starts_with("IN DOUBT: web1 was stopped here"),
            "{e}"
        );
        assert!(e.message.contains("`runc list` on 10.0.0.2:7070"), "{e}");
        assert!(e.message.contains("web1-b is not running there"), "{e}");
        assert!(e.message.contains("with: runc run web1"), "{e}");
    }

    #[test]
    fn a_lost_connection_after_start_is_in_doubt_and_nothing_starts_here() {
        assert_in_doubt(hand_over_to(
            |c| {
                c.close();
            },
            IDLE_TIMEOUT,
        ));
    }

    #[test]
    fn no_answer_to_start_is_in_doubt_and_nothing_starts_here() {
        let h = hand_over_to(
            |c| {
                std::thread::sleep(Duration::from_millis(500));
                c.close();
            },
            Duration::from_millis(100),
        );
        assert_in_doubt(h);
    }

    #[test]
    fn an_abort_after_start_starts_it_here_again() {
        let h = hand_over_to(
            |c| {
                c.send(Msg::Abort(Abort {
                    stage: "destination".into(),
                    reason: "runc run web1-b failed".into(),
                }))
                .unwrap();
                c.close();
            },
            IDLE_TIMEOUT,
        );
        assert!(matches!(h, Handover::NotStarted(_)), "{h:?}");
        let (r, calls) = settle_counting(h);
        assert_eq!(calls, 1);
        let e = r.unwrap_err();
        assert_eq!(e.kind, Kind::RolledBack, "{e}");
        assert!(e.message.contains("started again on this host"), "{e}");
        assert!(e.message.contains("runc run web1-b failed"), "{e}");
    }

    /// Refused there and failing here: the container runs nowhere, which is exit 8 with the
    /// command that starts it, not a "rolled back, still running here".
    #[test]
    fn refused_there_and_failing_here_is_lost() {
        let refused = Handover::NotStarted(Error::other("destination could not start it"));
        let e = settle(
            refused,
            "10.0.0.2:7070",
            "web1",
            "web1-b",
            "runc run web1",
            || Err(Error::other("runc run web1 failed here too")),
        )
        .unwrap_err();
        assert_eq!(e.kind, Kind::Lost, "{e}");
        assert!(e.message.contains("runs nowhere"), "{e}");
        assert!(e.message.contains("with: runc run web1"), "{e}");
    }

    #[test]
    fn done_reports_the_pid_there_and_nothing_starts_here() {
        let h = hand_over_to(
            |c| {
                c.send(Msg::Done(Done {
                    restored_pid: 4242,
                    ..Default::default()
                }))
                .unwrap();
                c.close();
            },
            IDLE_TIMEOUT,
        );
        let (r, calls) = settle_counting(h);
        assert_eq!(calls, 0);
        assert_eq!(r.unwrap(), 4242);
    }
}
