//! Test helpers: fixture paths and self-removing temporary directories.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a test returns, so that it can use `?` instead of `unwrap`.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The repository's fixtures directory.
pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures"))
}

/// Reads `fixtures/<rel>`.
pub fn fixture(rel: &str) -> io::Result<Vec<u8>> {
    std::fs::read(fixtures().join(rel))
}

/// A directory under the system's temporary directory, removed with its content on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates an empty directory named after `name`, the process and a counter.
    pub fn new(name: &str) -> io::Result<Self> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("haul-test-{name}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to `rel` inside the directory, creating parent directories.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let path = self.path.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in /tmp is harmless.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
