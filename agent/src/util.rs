//! Small helpers used by several stages: bounded file reads, unique names.

use std::io::Read;
use std::path::Path;

/// Reads a whole file of at most `limit` bytes; a larger file is an error naming its size and
/// the limit (never a silent cut).
pub fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    file.take(cap)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() > limit {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        return Err(format!(
            "{} is {} bytes; the limit is {limit} bytes",
            path.display(),
            size
        ));
    }
    Ok(buf)
}

/// This process's peak resident memory (`VmHWM` of /proc/self/status), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = read_bounded(Path::new("/proc/self/status"), 16 * 1024).ok()?;
    vm_hwm_kib(&String::from_utf8_lossy(&status))
}

/// The `VmHWM:` line of a /proc/PID/status text, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// A unique name for a migration: time in ms and 32 random bits, e.g. `m-1795938661250-9f3a01c2`.
pub fn migration_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut r = [0u8; 4];
    let _ = rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty());
    format!("m-{ms}-{:08x}", u32::from_le_bytes(r))
}

/// Marks every descriptor above stderr close-on-exec. haul may be started with descriptors its
/// parent leaked (not close-on-exec); they must not reach CRIU or the tasks it dumps.
pub fn cloexec_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // The directory's own descriptor is among them, closed by now: errors are expected.
        let _ = crate::sys::set_cloexec(fd);
    }
}

/// Text from the peer made safe for a log line or a message: control characters escaped (no
/// forged log lines), at most 512 characters.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(512));
    for c in s.chars().take(512) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(512).is_some() {
        out.push_str("...");
    }
    out
}

/// Test hook for fault injection: when `HAUL_FAULT` names this point, the process kills itself
/// with SIGKILL right here, as a crash or `kill -9` would. Points: `src-frozen` (source, tasks
/// frozen at post-dump), `src-committing` (source, after its tasks were stopped, before Commit),
/// `dst-receiving` (destination, first image file), `dst-restoring` (destination, RESTORE sent),
/// `dst-ready` (destination, after Ready, before Commit arrives).
pub fn fault_point(name: &str) {
    let Ok(v) = std::env::var("HAUL_FAULT") else {
        return;
    };
    if v == name {
        log::error!("HAUL_FAULT={name}: killing this process");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    } else if v.strip_suffix(":pause") == Some(name) {
        log::warn!("HAUL_FAULT={v}: pausing 3 s");
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
}

/// Test hook for fault injection that is not a crash of haul itself: whether `HAUL_FAULT`
/// names `name` (`dst-fill-fails`: the destination holds the background fill of the memory
/// and stops the filler right after the resume, as a filler that crashes would end;
/// `dst-journal-fails`: the journal cannot be written once the restored tasks run).
pub fn fault_named(name: &str) -> bool {
    std::env::var("HAUL_FAULT").is_ok_and(|v| v == name)
}

/// Starts haul itself with `args` as a guard process: its own process group (a Ctrl-C aimed at
/// this haul does not reach it), stdin the read end of a pipe whose write end is returned, and
/// `inherit` open under their numbers. The guard acts when that pipe ends without the word it
/// waits for; it is reaped in the background. `what` names it in errors.
pub fn start_guard(
    args: &[&std::ffi::OsStr],
    inherit: &[std::os::fd::BorrowedFd<'_>],
    what: &str,
) -> crate::error::Result<std::os::fd::OwnedFd> {
    use crate::error::Error;
    let exe = std::env::current_exe().map_err(|e| Error::other(format!("own executable: {e}")))?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::other(format!("pipe: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .stdin(std::process::Stdio::from(r))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = crate::sys::spawn_inheriting(&mut cmd, inherit)
        .map_err(|e| Error::other(format!("starting the {what}: {e}")))?;
    let _ = std::thread::Builder::new()
        .name("haul-guard-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_resident_memory_comes_from_vm_hwm() {
        let status =
            "Name:\thaul\nVmPeak:\t   10360 kB\nVmHWM:\t    3968 kB\nVmRSS:\t    3200 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(3968));
        assert_eq!(vm_hwm_kib("VmRSS:\t 12 kB\n"), None);
        assert_eq!(vm_hwm_kib("VmHWM:\t 12 MB\n"), None);
        // This test process has touched some memory.
        assert!(
            peak_rss_kib().is_some_and(|k| k > 100),
            "{:?}",
            peak_rss_kib()
        );
    }

    #[test]
    fn peer_text_cannot_forge_log_lines() {
        assert_eq!(printable("a\nERROR x"), "a\\nERROR x");
        assert_eq!(printable(&"x".repeat(600)).len(), 515);
        assert_eq!(printable("web1"), "web1");
    }

    #[test]
    fn bounded_read_at_and_over_the_limit() {
        let dir = std::env::temp_dir().join(format!("haul-util-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, vec![b'x'; 100]).unwrap();
        assert_eq!(read_bounded(&f, 100).unwrap().len(), 100);
        let err = read_bounded(&f, 99).unwrap_err();
        assert!(err.contains("is 100 bytes; the limit is 99 bytes"), "{err}");
        std::fs::remove_file(&f).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
}
