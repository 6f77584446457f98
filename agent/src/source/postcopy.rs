//! `--lazy` (post-copy) on the source.
//!
//! CRIU dumps without writing the private anonymous memory: it keeps those pages in pipes and,
//! once post-dump is answered `true`, serves them on the page socket while the tasks stay
//! frozen. The destination restores without that memory, lets the tasks run, and its CRIU
//! lazy-pages daemon fetches faulted and remaining pages through haul's connection (PAGE_DATA
//! frames both ways). When the last page is across, CRIU kills the tasks here and answers DUMP.
//!
//! Over RPC CRIU takes the page socket of a lazy dump only from a configuration file (`ps`
//! in the request is ignored in lazy mode), so haul writes one line, `ps-socket N`, into the work
//! directory and names it in `config_file`.
//!
//! Failure rules. Before the Commit is written, any failure resumes the tasks here (CRIU does
//! so when its page socket fails, as in a normal dump), haul's own death included: its guard
//! process fails the socket then (source::freeze). After it, the destination may be
//! running the workload with part of its memory: from then on the copy here never resumes. If
//! the post-copy fails (connection lost, either CRIU fails), haul kills the frozen tasks here
//! before CRIU could thaw them, and the destination kills its copy: the container is lost
//! (exit 8). This is the price of the short downtime, and why `--lazy` is opt-in.

use super::connect::wire_to_error;
use super::progress::phase;
use crate::criu::{Event, Swrk, Version};
use crate::error::{Error, Kind, Result};
use crate::limits::IDLE_TIMEOUT;
use crate::transfer::{mux, Conn, Incoming, WireError};
use haul_proto::criu::{CriuOpts, CriuReqType};
use haul_proto::haul::{control::Msg, Abort, Commit, Done};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The configuration file that hands CRIU its page socket for a lazy dump. Not sent.
pub const CONF_NAME: &str = "lazy-pages.conf";

/// How often the post-copy loop looks at CRIU, the connection and the clock.
const TICK: Duration = Duration::from_millis(5);
/// How often CRIU is looked at while the destination restores (see `finish`).
const READY_TICK: Duration = Duration::from_millis(1);

/// CRIU's lazy page server sizes a pipe to 8 pages' worth of kernel pipe buffers (40 bytes each
/// on 64-bit kernels): 819 pages of 4 KiB, 3.2 MiB. Above `fs.pipe-max-size` (1 MiB by default)
/// that needs CAP_SYS_RESOURCE; without it CRIU's first page answer fails ("splice: Bad file
/// descriptor"), after the destination started. So haul checks before anything freezes.
pub fn pipe_bytes_needed() -> u64 {
    let page = rustix::param::page_size() as u64;
    (8 * page / 40) * page
}

/// Whether CRIU can serve lazy pages on this host (see `pipe_bytes_needed`).
pub fn pipe_check() -> std::result::Result<String, String> {
    let needed = pipe_bytes_needed();
    let max = crate::util::read_bounded(Path::new("/proc/sys/fs/pipe-max-size"), 64)
        .ok()
        .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<u64>().ok())
        .unwrap_or(0);
    if max >= needed {
        return Ok(format!("fs.pipe-max-size is {max} (needs {needed})"));
    }
    if has_cap_sys_resource() {
        return Ok("CAP_SYS_RESOURCE lifts fs.pipe-max-size".into());
    }
    Err(format!(
        "CRIU's lazy page server needs pipes of {needed} bytes, above fs.pipe-max-size ({max}) \
         and this root lacks CAP_SYS_RESOURCE: run `sysctl -w fs.pipe-max-size=4194304` \
         (or add fs.pipe-max-size = 4194304 to /etc/sysctl.conf)"
    ))
}

/// The destination's lazy-pages daemon talks to this host's CRIU page server directly: both
/// must use the same page-server header, which CRIU changed in 4.2 (`criu::page_server`).
pub fn same_page_protocol(
    here: Version,
    there: Option<Version>,
) -> std::result::Result<(), String> {
    use crate::criu::page_server::Layout;
    match there {
        Some(t) if Layout::of(t) != Layout::of(here) => Err(format!(
            "CRIU {here} here and CRIU {t} on the destination speak different page-server \
             protocols (CRIU changed it in 4.2): use the same side of 4.2 on both hosts"
        )),
        _ => Ok(()),
    }
}

/// CAP_SYS_RESOURCE (bit 24) in this process's effective set.
fn has_cap_sys_resource() -> bool {
    crate::util::read_bounded(Path::new("/proc/self/status"), 16 * 1024)
        .ok()
        .and_then(|b| {
            let text = String::from_utf8_lossy(&b).into_owned();
            let hex = text
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Writes `CONF_NAME` into `dir` and returns its absolute path.
pub fn write_conf(dir: &Path, ps_fd: i32) -> Result<PathBuf> {
    let path = dir.join(CONF_NAME);
    std::fs::write(&path, conf_text(ps_fd))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

fn conf_text(ps_fd: i32) -> String {
    format!("ps-socket {ps_fd}\n")
}

/// Turns DUMP options into a lazy dump: no page server while dumping (non-lazy pages go into
/// the images), pages served afterwards on the socket named in `conf`.
pub fn lazy_dump(mut opts: CriuOpts, conf: &Path) -> CriuOpts {
    opts.lazy_pages = Some(true);
    opts.ps = None;
    opts.config_file = Some(conf.display().to_string());
    opts
}

/// What the post-copy phase measured.
pub struct PostCopy {
    pub done: Done,
    /// From the freeze until the destination said its tasks run.
    pub frozen_ms: u64,
    /// From then until the destination had every page.
    pub postcopy_ms: u64,
    /// Page-protocol bytes sent during the post-copy phase.
    pub bytes: u64,
}

/// After post-dump was answered `true` (CRIU serves the pages, the tasks stay frozen): waits
/// for the destination to hold its restored tasks, commits, and follows the post-copy to its
/// end. `tasks` are the frozen tasks, killed here if the post-copy fails after the commit.
/// `guard` holds a copy of `ps` to fail it if haul dies before the commit (source::freeze).
// One call site; the arguments are the post-copy's distinct inputs.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    swrk: &mut Swrk,
    conn: &Conn,
    ps: &OwnedFd,
    guard: Option<&super::freeze::Guard>,
    tasks: &[i32],
    stage: &AtomicU8,
    frozen_start: Instant,
    quiet: bool,
) -> Result<PostCopy> {
    // 1. Until the Commit is written, failing CRIU's page server makes it resume the tasks.
    let rollback = |why: String| -> Error {
        fail_page_server(ps);
        rolled_back(conn, why)
    };
    phase(
        quiet,
        "restoring on the destination (it fetches memory as it needs)",
    );
    let since = Instant::now();
    loop {
        // CRIU says little here (status-ready, then nothing until the end); the Ready it waits
        // for ends the downtime sooner the sooner it is seen, so CRIU is only glanced at and
        // the connection waited on, in short ticks.
        if swrk.readable(Duration::ZERO) {
            match swrk.next_event() {
                // status-ready: CRIU's page server runs.
                Ok(Event::Notify { .. }) => swrk
                    .notify_reply(true)
                    .map_err(|e| rollback(e.to_string()))?,
                Ok(Event::Done(_)) => {
                    return Err(rollback(
                        "criu ended the dump while serving its pages".into(),
                    ))
                }
                Err(e) => return Err(rollback(format!("criu: {e}"))),
            }
        }
        match conn.recv(READY_TICK, "restore") {
            Ok(Incoming::Control(Msg::Ready(r))) => {
                log::info!(
                    "destination holds the restored tasks (pid {})",
                    r.restored_pid
                );
                break;
            }
            Ok(Incoming::Control(Msg::Abort(a))) => {
                return Err(rollback(format!(
                    "destination failed to restore ({}): {}",
                    crate::util::printable(&a.stage),
                    crate::util::printable(&a.reason)
                )))
            }
            Ok(Incoming::Control(other)) => {
                return Err(rollback(format!("unexpected {other:?} during restore")))
            }
            Ok(Incoming::FileData(_)) => return Err(rollback("file data during restore".into())),
            Err(WireError::Timeout { .. }) if since.elapsed() < IDLE_TIMEOUT => {}
            Err(WireError::Timeout { .. }) => {
                return Err(rollback(format!(
                    "the destination has not finished restoring after {} s",
                    IDLE_TIMEOUT.as_secs()
                )))
            }
            Err(e) => {
                return Err(rollback(format!(
                    "waiting for the destination to restore: {e}"
                )))
            }
        }
    }
    // 2. Commit. Until it is written the destination holds its tasks and will stop them.
    // From now on a lost connection must end CRIU's stream (it then kills the tasks), not fail
    // it (it would resume them while the destination runs); and if haul dies, the guard kills
    // the tasks instead of failing the page server (source::freeze): it is told first.
    if let Some(g) = guard {
        g.commit();
    }
    conn.set_sink_farewell(None);
    stage.store(1, Ordering::Release);
    crate::util::fault_point("src-committing");
    phase(
        quiet,
        "commit: the destination lets the restored tasks run (post-copy)",
    );
    if let Err(e) = conn.send(Msg::Commit(Commit {})) {
        fail_page_server(ps);
        return Err(wire_to_error(e, "sending commit").with_kind(Kind::RolledBack));
    }
    // 3. From here the copy here never resumes. (The end of the page stream alone would make
    // CRIU kill the tasks too: it takes it for the end of the transfer.)
    let lost = |why: String| -> Error {
        kill_tasks(tasks);
        let _ = rustix::net::shutdown(ps, rustix::net::Shutdown::Both);
        let _ = conn.send(Msg::Abort(Abort {
            stage: "post-copy".into(),
            reason: why.clone(),
        }));
        Error::new(
            Kind::Lost,
            format!(
                "post-copy failed after the container started on the destination: {why}; \
                 its memory had not all moved, so both copies were stopped and the container is lost"
            ),
        )
    };
    let sent_before = mux::load(&conn.counters.pages_out);
    let mut resumed: Option<Instant> = None;
    let mut done: Option<Done> = None;
    let mut criu_done = false;
    let mut last_progress = (Instant::now(), sent_before);
    let mut done_at = Instant::now();
    while done.is_none() || !criu_done {
        // The destination has every page and runs the container: a CRIU here that does not
        // end its dump must not keep haul (and the frozen tasks) here for ever.
        if done.is_some() && !criu_done && done_at.elapsed() > IDLE_TIMEOUT {
            kill_tasks(tasks);
            log::warn!(
                "criu has not ended its dump {} s after the post-copy completed; its tasks here \
                 were killed",
                IDLE_TIMEOUT.as_secs()
            );
            break;
        }
        if !criu_done && swrk.readable(TICK) {
            match swrk.next_event() {
                Ok(Event::Notify { .. }) => {
                    swrk.notify_reply(true).map_err(|e| lost(e.to_string()))?
                }
                Ok(Event::Done(resp)) if resp.r#type == CriuReqType::Dump as i32 => {
                    criu_done = true
                }
                Ok(Event::Done(resp)) => {
                    return Err(lost(format!(
                        "criu answered {} during the post-copy",
                        crate::criu::req_name(resp.r#type)
                    )))
                }
                Err(e) if done.is_some() => {
                    // Every page is across; CRIU failed while finishing. Its tasks must not
                    // resume here whatever it did.
                    kill_tasks(tasks);
                    log::warn!("criu reported an error after the post-copy completed: {e}");
                    criu_done = true;
                }
                Err(e) => return Err(lost(format!("criu failed serving pages: {e}"))),
            }
        }
        if done.is_none() {
            let wait = if criu_done {
                Duration::from_millis(100)
            } else {
                TICK
            };
            match conn.recv(wait, "post-copy") {
                Ok(Incoming::Control(Msg::Resumed(r))) => {
                    let now = Instant::now();
                    resumed = Some(now);
                    log::info!(
                        "the destination runs the restored tasks (pid {}); moving the rest of the memory",
                        r.restored_pid
                    );
                    phase(
                        quiet,
                        &format!(
                            "running on the destination after {} ms frozen; moving the remaining memory",
                            now.duration_since(frozen_start).as_millis()
                        ),
                    );
                }
                Ok(Incoming::Control(Msg::Done(d))) => {
                    done = Some(d);
                    done_at = Instant::now();
                }
                Ok(Incoming::Control(Msg::Abort(a))) => {
                    return Err(lost(format!(
                        "the destination says: {}",
                        crate::util::printable(&a.reason)
                    )))
                }
                Ok(Incoming::Control(other)) => {
                    return Err(lost(format!("unexpected {other:?} during the post-copy")))
                }
                Ok(Incoming::FileData(_)) => {
                    return Err(lost("file data during the post-copy".into()))
                }
                Err(WireError::Timeout { .. }) => {}
                Err(e) => return Err(lost(format!("connection: {e}"))),
            }
        }
        // Silence: no page moved and no message for the idle timeout.
        let sent = mux::load(&conn.counters.pages_out);
        if sent != last_progress.1 {
            last_progress = (Instant::now(), sent);
        } else if done.is_none() && last_progress.0.elapsed() > IDLE_TIMEOUT {
            return Err(lost(format!(
                "no page moved for {} s",
                IDLE_TIMEOUT.as_secs()
            )));
        }
    }
    let end = Instant::now();
    let done = done.unwrap_or_default();
    let resumed_at = resumed.unwrap_or(end);
    Ok(PostCopy {
        frozen_ms: resumed_at.duration_since(frozen_start).as_millis() as u64,
        postcopy_ms: if done.postcopy_us > 0 {
            done.postcopy_us / 1000
        } else {
            end.duration_since(resumed_at).as_millis() as u64
        },
        bytes: mux::load(&conn.counters.pages_out).saturating_sub(sent_before),
        done,
    })
}

/// Makes CRIU's lazy page server fail rather than end. CRIU takes the end of its page stream
/// for the end of the transfer and kills the tasks; only an error makes it resume them. An
/// all-zero request (command 0, which does not exist) is that error. Requests from the
/// destination are whole 24-byte records, so this one does not split another.
pub fn fail_page_server(ps: &OwnedFd) {
    let _ = mux::write_all(ps, FAIL_REQUEST);
    let _ = rustix::net::shutdown(ps, rustix::net::Shutdown::Both);
}

/// A page-server request (`page_server_iov`: u32 command, u32 pages, u64 address, u64 image
/// id) with command 0, which CRIU rejects.
pub const FAIL_REQUEST: &[u8] = &[0u8; 24];

/// Tells the destination and returns the error of a rollback (the tasks resume here).
fn rolled_back(conn: &Conn, why: String) -> Error {
    let _ = conn.send(Msg::Abort(Abort {
        stage: "dump".into(),
        reason: why.clone(),
    }));
    Error::new(Kind::RolledBack, why)
}

/// CRIU's network lock (iptables chain CRIU jumped to from INPUT and OUTPUT, IPv4 and IPv6) in
/// the tasks' network namespace: after a failed lazy page transfer CRIU resumes the tasks
/// without removing it (its unlock runs before the transfer), which would leave the container
/// cut off. Only in a namespace other than haul's own: CRIU locks only namespaces it dumps.
pub fn unlock_network(pid: i32) {
    let ns = format!("/proc/{pid}/ns/net");
    let same = |a: &str, b: &str| {
        let ino = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        matches!((ino(a), ino(b)), (Ok(x), Ok(y)) if x == y)
    };
    if same(&ns, "/proc/self/ns/net") {
        return;
    }
    let Ok(fd) = std::fs::File::open(&ns) else {
        return;
    };
    for tool in ["iptables", "ip6tables"] {
        for args in [
            ["-D", "INPUT", "-j", "CRIU"],
            ["-D", "OUTPUT", "-j", "CRIU"],
            ["-F", "CRIU", "", ""],
            ["-X", "CRIU", "", ""],
        ] {
            let mut cmd = std::process::Command::new(tool);
            cmd.arg("-w")
                .args(args.iter().filter(|a| !a.is_empty()))
                .env("PATH", crate::criu::CRIU_PATH_ENV)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            match crate::sys::spawn_in_netns(&mut cmd, std::os::fd::AsFd::as_fd(&fd))
                .and_then(|mut c| c.wait())
            {
                Ok(_) => {}
                Err(e) => {
                    log::warn!("removing CRIU's network lock of pid {pid}: {tool}: {e}");
                    break;
                }
            }
        }
    }
    log::info!("removed CRIU's network lock in the network namespace of pid {pid}");
}

/// SIGKILL to every frozen task: pending while they are frozen, so they die before running
/// again whatever CRIU does next.
pub fn kill_tasks(tasks: &[i32]) {
    for &pid in tasks {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            if let Err(e) = rustix::process::kill_process(p, rustix::process::Signal::KILL) {
                log::warn!("killing task {pid}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_dump_moves_the_page_socket_into_the_configuration_file() {
        let opts = crate::plan::pid::dump(42, 7, 11);
        assert!(opts.ps.is_some());
        let lazy = lazy_dump(opts, Path::new("/var/lib/haul/m-1/lazy-pages.conf"));
        assert_eq!(lazy.lazy_pages, Some(true));
        assert!(lazy.ps.is_none(), "CRIU ignores ps in a lazy RPC dump");
        assert_eq!(
            lazy.config_file.as_deref(),
            Some("/var/lib/haul/m-1/lazy-pages.conf")
        );
        assert_eq!(
            lazy.notify_scripts,
            Some(true),
            "post-dump still holds the tasks"
        );
        assert_eq!(lazy.pid, Some(42));
        assert_eq!(conf_text(11), "ps-socket 11\n");
    }

    #[test]
    fn lazy_needs_both_criu_on_the_same_side_of_4_2() {
        let v = |minor, sublevel| Version {
            major: 4,
            minor,
            sublevel,
        };
        assert!(same_page_protocol(v(1, 1), Some(v(1, 0))).is_ok());
        assert!(same_page_protocol(v(2, 0), Some(v(3, 1))).is_ok());
        assert!(same_page_protocol(v(1, 1), None).is_ok());
        let e = same_page_protocol(v(1, 1), Some(v(2, 0))).unwrap_err();
        assert!(
            e.contains("4.1.1 here") && e.contains("4.2 on the destination"),
            "{e}"
        );
    }

    #[test]
    fn page_pipe_size_matches_criu_for_4k_pages() {
        if rustix::param::page_size() == 4096 {
            assert_eq!(pipe_bytes_needed(), 819 * 4096);
        }
        assert!(
            pipe_bytes_needed() > 1 << 20,
            "above the default pipe-max-size"
        );
    }

    #[test]
    fn conf_file_is_written_beside_the_images() {
        let dir = std::env::temp_dir().join(format!("haul-lazy-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write_conf(&dir, 5).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ps-socket 5\n");
        assert!(path.is_absolute());
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
}
