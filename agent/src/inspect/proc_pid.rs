//! Which process's directory under /proc (or under a fixture standing in for /proc) to read.

use std::path::{Path, PathBuf};

use rustix::process::Pid;

/// A process, as named in /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcPid {
    /// The reading process: `/proc/self`.
    Current,
    /// Another process, by its pid in the pid namespace of the /proc mount.
    Pid(Pid),
}

impl ProcPid {
    /// `<proc_root>/self/<name>` or `<proc_root>/<pid>/<name>`.
    pub fn file(self, proc_root: &Path, name: &str) -> PathBuf {
        match self {
            ProcPid::Current => proc_root.join("self").join(name),
            ProcPid::Pid(pid) => proc_root.join(pid.as_raw_nonzero().to_string()).join(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_files_under_a_proc_root() {
        let root = Path::new("/proc");
        assert_eq!(
            ProcPid::Current.file(root, "cgroup"),
            Path::new("/proc/self/cgroup")
        );
        let pid = ProcPid::Pid(Pid::INIT);
        assert_eq!(pid.file(Path::new("/fx"), "stat"), Path::new("/fx/1/stat"));
    }
}
