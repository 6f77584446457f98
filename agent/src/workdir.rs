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

/// Mount points at or under `path`, from /proc/self/mountinfo (field 5, octal escapes decoded).
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = crate::util::read_bounded(Path::new("/proc/self/mountinfo"), 4 << 20) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(path))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
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
    String::from_utf8_lossy(&out).into_owned()
}

/// `rm -r` that refuses when anything is mounted at or under `path`.
pub fn remove_tree_checked(path: &Path) -> Result<()> {
    let mounts = mounts_under(path);
    if !mounts.is_empty() {
        return Err(Error::other(format!(
            "not removing {}: {} is still mounted there (unmount it first)",
            path.display(),
            mounts
                .first()
                .map(|m| m.display().to_string())
                .unwrap_or_default()
        )));
    }
    std::fs::remove_dir_all(path).ctx(Kind::Other, format!("removing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
        assert_eq!(unescape("/plain"), "/plain");
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
