//! The pre-shared key: 32 random bytes, stored as 64 hex digits and a newline, mode 0600.

use crate::limits::KEY_BYTES;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

#[derive(Clone)]
pub struct Key(pub [u8; KEY_BYTES]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Largest key file read: 64 hex digits plus whitespace.
const KEY_FILE_MAX: usize = 256;

impl Key {
    /// A new random key from the kernel's CSPRNG.
    pub fn generate() -> Result<Key, String> {
        let mut k = [0u8; KEY_BYTES];
        let n = rustix::rand::getrandom(&mut k, rustix::rand::GetRandomFlags::empty())
            .map_err(|e| format!("getrandom: {e}"))?;
        if n != KEY_BYTES {
            return Err("getrandom returned too few bytes".into());
        }
        Ok(Key(k))
    }

    /// Parses the hex text of a key file.
    pub fn parse(text: &str) -> Result<Key, String> {
        let hex = text.trim();
        if hex.len() != KEY_BYTES * 2 {
            return Err(format!(
                "expected {} hex digits, found {} characters",
                KEY_BYTES * 2,
                hex.len()
            ));
        }
        let mut k = [0u8; KEY_BYTES];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let hi = digit(pair.first().copied())?;
            let lo = digit(pair.get(1).copied())?;
            if let Some(slot) = k.get_mut(i) {
                *slot = hi << 4 | lo;
            }
        }
        Ok(Key(k))
    }

    /// Reads a key file; warns when others can read it.
    pub fn load(path: &Path) -> Result<Key, String> {
        let bytes = crate::util::read_bounded(path, KEY_FILE_MAX)
            .map_err(|e| format!("cannot read key file {e}"))?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!(
                    "key file {} is readable by other users (mode {:o}); run chmod 600",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("key file {} is not text", path.display()))?;
        Key::parse(text).map_err(|e| format!("key file {}: {e}", path.display()))
    }

    /// Writes a new key file with mode 0600; refuses to overwrite an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), String> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot create key file {}: {e}", path.display()))?;
        let mut text = String::with_capacity(KEY_BYTES * 2 + 1);
        for b in self.0 {
            text.push_str(&format!("{b:02x}"));
        }
        text.push('\n');
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write key file {}: {e}", path.display()))
    }
}

fn digit(c: Option<u8>) -> Result<u8, String> {
    match c {
        Some(c @ b'0'..=b'9') => Ok(c - b'0'),
        Some(c @ b'a'..=b'f') => Ok(c - b'a' + 10),
        Some(c @ b'A'..=b'F') => Ok(c - b'A' + 10),
        _ => Err("key contains a character that is not a hex digit".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_are_private() {
        let dir = std::env::temp_dir().join(format!("haul-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let key = Key::generate().unwrap();
        key.write_new(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Key::load(&path).unwrap().0, key.0);
        assert!(key.write_new(&path).is_err(), "must not overwrite");
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Key::parse("abc").is_err());
        assert!(Key::parse(&"g".repeat(64)).is_err());
        // KEY_BYTES as hex digits, one digit fewer, one more.
        assert!(Key::parse(&"0".repeat(KEY_BYTES * 2)).is_ok());
        assert!(Key::parse(&"0".repeat(KEY_BYTES * 2 - 1)).is_err());
        assert!(Key::parse(&"0".repeat(KEY_BYTES * 2 + 1)).is_err());
        assert!(Key::parse(&format!("{}\n", "aB".repeat(32))).is_ok());
    }
}
