//! Per-migration work directories and their safe removal: never recursively across a mount
//! point (CRIU and runc can leave bind mounts of whole root filesystems behind).

use crate::error::{Context, Error, Kind, Result};
use rustix::fs::{Mode, OFlags};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub struct WorkDir {
    pub path: PathBuf,
    pub fd: OwnedFd,
}

impl WorkDir {
    /// Creates `<root>/<name>` (mode 0700); `name` must be new.
    pub fn create(root: &Path, name: &str) -> Result<WorkDir> {
        std::fs::create_dir_all(root).ctx(
            Kind::Setup,
            format!("creating work root {}", root.display()),
        )?;
        let path = root.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&path).ctx(
            Kind::Setup,
            format!("creating work directory {}", path.display()),
        )?;
        let fd = rustix::fs::open(
            &path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .ctx(Kind::Setup, format!("opening {}", path.display()))?;
        Ok(WorkDir { path, fd })
    }

    /// Opens an existing `<root>/<name>` (to complete a kept migration).
    pub fn open(root: &Path, name: &str) -> Result<WorkDir> {
        let path = root.join(name);
        let fd = rustix::fs::open(
            &path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .ctx(Kind::Usage, format!("opening {}", path.display()))?;
        Ok(WorkDir { path, fd })
    }

    /// Raw number of the directory descriptor, for `images_dir_fd`.
    pub fn raw(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Removes the directory and what it holds, after checking nothing is mounted under it.
    pub fn remove(self) -> Result<()> {
        remove_tree_checked(&self.path)
    }
}

use std::os::unix::fs::DirBuilderExt;

/// Where the kernel lists this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The most of the mount list read: a longer one is refused rather than read in part.
const MOUNTINFO_MAX: usize = 4 << 20;

/// Mount points at or under `path`, from /proc/self/mountinfo (field 5, octal escapes decoded).
/// An error when the list cannot be read whole or parsed: then nobody can tell.
pub fn mounts_under(path: &Path) -> Result<Vec<PathBuf>> {
    mounts_under_in(Path::new(MOUNTINFO), path)
}

fn mounts_under_in(mountinfo: &Path, path: &Path) -> Result<Vec<PathBuf>> {
    let cannot = |why: String| {
        Error::other(format!(
            "cannot tell what is mounted under {}: {why}",
            path.display()
        ))
    };
    // The kernel lists mount points by their real path: resolve symbolic links in the parent
    // (the last component itself is not followed by the removal either).
    let real = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            std::fs::canonicalize(parent)
                .map(|p| p.join(name))
                .map_err(|e| cannot(format!("resolving {}: {e}", parent.display())))?
        }
        _ => std::fs::canonicalize(path)
            .map_err(|e| cannot(format!("resolving {}: {e}", path.display())))?,
    };
    let text = crate::util::read_bounded(mountinfo, MOUNTINFO_MAX).map_err(cannot)?;
    let points =
        mount_points(&text).map_err(|e| cannot(format!("{}: {e}", mountinfo.display())))?;
    Ok(points
        .into_iter()
        .filter(|m| m.starts_with(&real))
        .collect())
}

/// Every mount point of a mountinfo text; an error for a line without one, or no line at all
/// (every mount namespace has a root).
fn mount_points(text: &[u8]) -> Result<Vec<PathBuf>, String> {
    use std::os::unix::ffi::OsStringExt;
    let mut points = Vec::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match line.split(|&b| b == b' ').nth(4) {
            Some(m) if m.first() == Some(&b'/') => {
                points.push(PathBuf::from(std::ffi::OsString::from_vec(unescape(m))))
            }
            _ => return Err(format!("line {} has no mount point", n + 1)),
        }
    }
    if points.is_empty() {
        return Err("no mounts listed".into());
    }
    Ok(points)
}

fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b.get(i).copied().unwrap_or(0);
        if c == b'\\' {
            if let Some(d) = b.get(i + 1..i + 4) {
                if d.iter().all(|x| (b'0'..=b'7').contains(x)) {
                    let v = d.iter().fold(0u32, |a, x| a * 8 + u32::from(x - b'0'));
                    out.push(u8::try_from(v).unwrap_or(b'?'));
                    i += 4;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// `rm -r` that refuses when anything is mounted at or under `path`, or when the mount list
/// cannot be read.
pub fn remove_tree_checked(path: &Path) -> Result<()> {
    remove_tree_checked_in(Path::new(MOUNTINFO), path)
}

fn remove_tree_checked_in(mountinfo: &Path, path: &Path) -> Result<()> {
    let mounts = mounts_under_in(mountinfo, path)
        .map_err(|e| e.context(format!("not removing {}", path.display())))?;
    if let Some(m) = mounts.first() {
        return Err(Error::other(format!(
            "not removing {}: {} is still mounted there (unmount it first)",
            path.display(),
            m.display()
        )));
    }
    std::fs::remove_dir_all(path).ctx(Kind::Other, format!("removing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(b"/a\\040b"), b"/a b");
        assert_eq!(unescape(b"/x\\134y"), b"/x\\y");
        assert_eq!(unescape(b"/plain"), b"/plain");
        assert_eq!(unescape(b"/not\\9ok"), b"/not\\9ok");
    }

    /// A directory holding a file, for the removal tests; its path and the file's.
    fn tree(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("haul-wd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        let file = dir.join("root/x.img");
        std::fs::write(&file, b"1").unwrap();
        (dir, file)
    }

    #[test]
    fn nothing_is_removed_when_the_mount_list_cannot_be_read_whole() {
        let (dir, file) = tree("unread");
        let missing = dir.with_extension("no-mountinfo");
        let e = remove_tree_checked_in(&missing, &dir).unwrap_err().message;
        assert!(e.starts_with("not removing"), "{e}");
        assert!(e.contains("cannot tell what is mounted under"), "{e}");
        assert!(file.is_file());

        let long = dir.with_extension("long-mountinfo");
        let mut text = b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n".to_vec();
        text.resize(MOUNTINFO_MAX + 1, b'x');
        std::fs::write(&long, &text).unwrap();
        let e = remove_tree_checked_in(&long, &dir).unwrap_err().message;
        assert!(e.contains("the limit is 4194304 bytes"), "{e}");
        assert!(file.is_file());
        std::fs::remove_file(&long).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_is_removed_when_the_mount_list_does_not_parse() {
        let (dir, file) = tree("garbage");
        let info = dir.with_extension("mountinfo");
        for text in [
            &b""[..],
            b"garbage\n",
            b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n23 1\n",
        ] {
            std::fs::write(&info, text).unwrap();
            let e = remove_tree_checked_in(&info, &dir).unwrap_err().message;
            assert!(e.contains("cannot tell what is mounted under"), "{e}");
            assert!(file.is_file());
        }
        std::fs::remove_file(&info).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_listed_mount_under_the_tree_stops_the_removal_and_none_lets_it_run() {
        use std::os::unix::ffi::OsStrExt;
        let (dir, file) = tree("listed");
        let info = dir.with_extension("mountinfo");
        let root = b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n".to_vec();
        // The kernel lists the real path of the mount point.
        let real = std::fs::canonicalize(&dir).unwrap();
        let mut text = root.clone();
        text.extend_from_slice(b"40 22 8:1 /srv ");
        text.extend_from_slice(real.join("root").as_os_str().as_bytes());
        text.extend_from_slice(b" rw - ext4 /dev/sda1 rw\n");
        std::fs::write(&info, &text).unwrap();
        let e = remove_tree_checked_in(&info, &dir).unwrap_err().message;
        assert!(e.contains("is still mounted there"), "{e}");
        assert!(file.is_file());
        std::fs::write(&info, &root).unwrap();
        remove_tree_checked_in(&info, &dir).unwrap();
        assert!(!dir.exists());
        std::fs::remove_file(&info).unwrap();
    }

    #[test]
    fn refuses_to_remove_across_a_mount_point() {
        // "/" is always a mount point.
        assert!(remove_tree_checked(Path::new("/proc")).is_err());
        let root = std::env::temp_dir().join(format!("haul-wd-{}", std::process::id()));
        let wd = WorkDir::create(&root, "m1").unwrap();
        std::fs::write(wd.path.join("x.img"), b"1").unwrap();
        wd.remove().unwrap();
        assert!(!root.join("m1").exists());
        std::fs::remove_dir(&root).unwrap();
    }
}
