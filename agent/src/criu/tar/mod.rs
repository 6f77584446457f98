//! haul's own `tar` for CRIU's tmpfs contents. CRIU archives every tmpfs mount of a container
//! (a runc container has six: /dev, /dev/shm, /sys/fs/cgroup, /tmp and the masked /proc/acpi
//! and /sys/firmware) by running `tar --create --gzip ...` while the tasks are frozen, and
//! `tar --extract --gzip ...` while restoring. Each run forks CRIU, execs tar, which runs
//! `sh -c gzip`: ~5 ms on an idle 2-core host, 10 ms under load, twelve times per migration.
//!
//! haul puts a directory holding a `tar` link to its own executable first in CRIU's PATH
//! (`install`); run under the name `tar`, haul does the job itself (`main`): one exec of a
//! static binary, gzip with stored blocks, no compression. Anything outside the common case it
//! leaves to GNU tar, found in CRIU's ordinary PATH, with the same arguments and descriptors:
//! other options, a tree haul's format cannot hold (hard links, sparse files, sockets, long
//! names), an archive haul did not write (GNU tar's, from another tool). `HAUL_CRIU_TAR=system`
//! turns it off.

pub mod create;
pub mod extract;
pub mod gzip;
pub mod ustar;

use crate::criu::CRIU_PATH_ENV;
use crate::error::{Context, Error, Kind, Result};
use rustix::fs::{FileType, Mode, OFlags};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The directory put first in CRIU's PATH, once `install` made it.
static TAR_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Options of CRIU's `tar --create` (criu/filesystems.c, tmpfs_dump) that haul's tar honours.
const CREATE_FLAGS: &[&str] = &[
    "--create",
    "--gzip",
    "--no-unquote",
    "--no-wildcards",
    "--one-file-system",
    "--check-links",
    "--preserve-permissions",
    "--sparse",
    "--numeric-owner",
];
/// Options of CRIU's `tar --extract` (tmpfs_restore).
const EXTRACT_FLAGS: &[&str] = &["--extract", "--gzip", "--no-unquote", "--no-wildcards"];

/// CRIU's PATH: haul's tar directory first when installed.
pub fn criu_path() -> String {
    match TAR_DIR.get() {
        Some(d) => format!("{}:{CRIU_PATH_ENV}", d.display()),
        None => CRIU_PATH_ENV.to_string(),
    }
}

/// Makes `dir` (mode 0700, owned by this user) hold `tar` → this executable, and puts it
/// first in the PATH of every CRIU started from now on. Off with `HAUL_CRIU_TAR=system`.
pub fn install(dir: &Path) -> Result<()> {
    if !builtin_enabled() {
        log::info!("HAUL_CRIU_TAR=system: CRIU archives tmpfs contents with the system's tar");
        return Ok(());
    }
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .ctx(Kind::Setup, "finding haul's own executable")?;
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            if !m.is_dir()
                || m.uid() != rustix::process::geteuid().as_raw()
                || m.mode() & 0o022 != 0
            {
                return Err(Error::new(
                    Kind::Setup,
                    format!(
                        "{} must be a directory of this user that others cannot write",
                        dir.display()
                    ),
                ));
            }
        }
        Err(_) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .ctx(Kind::Setup, format!("creating {}", dir.display()))?;
        }
    }
    let link = dir.join("tar");
    if std::fs::read_link(&link).ok().as_deref() != Some(exe.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link)
            .ctx(Kind::Setup, format!("linking {}", link.display()))?;
    }
    let _ = TAR_DIR.set(dir.to_path_buf());
    Ok(())
}

/// False when `HAUL_CRIU_TAR=system` leaves tmpfs contents to the system's tar.
pub fn builtin_enabled() -> bool {
    !std::env::var("HAUL_CRIU_TAR").is_ok_and(|v| v == "system")
}

/// Whether haul was started under the name `tar` (by CRIU, through `install`'s link).
pub fn invoked_as_tar(argv0: &str) -> bool {
    Path::new(argv0).file_name().is_some_and(|n| n == "tar")
}

enum Job {
    Create(PathBuf),
    Extract(PathBuf),
}

/// The job, if `args` (after argv[0]) are exactly what CRIU passes.
fn parse(args: &[String]) -> Option<Job> {
    let create = args.first().is_some_and(|a| a == "--create");
    let allowed = if create { CREATE_FLAGS } else { EXTRACT_FLAGS };
    let (mut dir, mut members, mut it) = (None, Vec::new(), args.iter());
    while let Some(a) = it.next() {
        if a == "--directory" {
            dir = Some(PathBuf::from(it.next()?));
        } else if a.starts_with('-') {
            if !allowed.contains(&a.as_str()) {
                return None;
            }
        } else {
            members.push(a.as_str());
        }
    }
    let dir = dir?;
    if !args.iter().any(|a| a == "--gzip") {
        return None;
    }
    match (create, args.first().map(String::as_str), members.as_slice()) {
        (true, _, ["."]) => Some(Job::Create(dir)),
        (false, Some("--extract"), []) => Some(Job::Extract(dir)),
        _ => None,
    }
}

/// Runs as CRIU's `tar`; returns the exit status.
pub fn main(args: &[String]) -> u8 {
    let job = match parse(args) {
        Some(j) => j,
        None => return system_tar(args, "options haul's tar does not take"),
    };
    match job {
        Job::Create(dir) => match create_to_stdout(&dir) {
            Ok(None) => 0,
            Ok(Some(why)) => system_tar(args, &why),
            Err(e) => system_tar(args, &e),
        },
        Job::Extract(dir) => match extract_from_stdin(&dir) {
            Ok(true) => 0,
            Ok(false) => system_tar(args, "an archive haul's tar did not write"),
            Err(e) => {
                eprintln!("haul tar: extracting into {}: {e}", dir.display());
                2
            }
        },
    }
}

/// `Ok(None)`: done; `Ok(Some(why))`: not done, stdout emptied again for GNU tar.
fn create_to_stdout(dir: &Path) -> std::result::Result<Option<String>, String> {
    let out = rustix::stdio::stdout();
    let st = rustix::fs::fstat(out).map_err(|e| format!("stdout: {e}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(Some("stdout is not a file".into()));
    }
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = std::fs::File::from(out.try_clone_to_owned().map_err(|e| e.to_string())?);
    let result = create::create(
        root.as_fd(),
        std::io::BufWriter::with_capacity(1 << 16, &file),
    );
    let why = match result {
        Ok(create::Created::Done { .. }) => return Ok(None),
        Ok(create::Created::Unsupported(u)) => u.0,
        Err(e) => e.to_string(),
    };
    rustix::fs::ftruncate(out, 0).map_err(|e| format!("emptying stdout: {e}"))?;
    rustix::fs::seek(out, rustix::fs::SeekFrom::Start(0))
        .map_err(|e| format!("rewinding stdout: {e}"))?;
    Ok(Some(why))
}

/// `Ok(false)`: stdin is not haul's format (left untouched for GNU tar).
fn extract_from_stdin(dir: &Path) -> std::result::Result<bool, String> {
    let input = rustix::stdio::stdin();
    let st = rustix::fs::fstat(input).map_err(|e| format!("stdin: {e}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(false);
    }
    let mut head = [0u8; gzip::HEADER.len()];
    let n = rustix::io::pread(input, &mut head, 0).map_err(|e| format!("stdin: {e}"))?;
    if n != head.len() || head != gzip::HEADER {
        return Ok(false);
    }
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = std::fs::File::from(input.try_clone_to_owned().map_err(|e| e.to_string())?);
    // The descriptor's offset is where CRIU left it: the start (pread moved nothing).
    extract::extract(
        std::io::BufReader::with_capacity(1 << 16, file),
        root.as_fd(),
    )?;
    Ok(true)
}

/// The system's tar in CRIU's ordinary PATH (which never holds haul's directory), unless it is
/// haul itself.
pub fn system_tar_path() -> Option<PathBuf> {
    let me = std::env::current_exe().and_then(|e| e.canonicalize()).ok();
    std::env::split_paths(CRIU_PATH_ENV)
        .map(|d| d.join("tar"))
        .find(|p| p.is_file() && p.canonicalize().ok() != me)
}

/// Replaces this process with GNU tar from CRIU's ordinary PATH (never haul's directory), same
/// arguments and descriptors. Returns only if that fails.
fn system_tar(args: &[String], why: &str) -> u8 {
    use std::os::unix::process::CommandExt;
    let Some(tar) = system_tar_path() else {
        eprintln!("haul tar: {why}; and no system tar in {CRIU_PATH_ENV} to do it");
        return 2;
    };
    eprintln!("haul tar: {why}; running {}", tar.display());
    let err = std::process::Command::new(&tar)
        .arg0("tar")
        .args(args)
        .exec();
    eprintln!("haul tar: {}: {err}", tar.display());
    2
}

#[cfg(test)]
mod tests;
