//! Container ids, validated as runc 1.1.5 validates them before using one as a directory name.
//!
//! runc 1.1.5 (libcontainer/factory_linux.go) accepts an id when it matches the Go regexp
//! `^[\w+-\.]+$` and `"/" + id` is unchanged by path cleaning. In RE2, `\w` is `[0-9A-Za-z_]`
//! and `+-\.` inside a class is the *range* from `+` (0x2B) to `.` (0x2E), so the allowed bytes
//! are `A-Z a-z 0-9 _ + , - .`; cleaning only changes `.` and `..`, which are refused. Checked on
//! this kind of machine: `runc create 'x,y'` and `runc create ...` succeed, `runc create 'a b'`
//! and `runc create ..` fail with "invalid container ID format". runc 1.2 replaced the regexp
//! with an explicit list that drops the comma; haul follows 1.1.5 because it must read the
//! state of every container such a runc created. Nothing longer than a file name
//! ([`CONTAINER_ID_MAX`] bytes) can be runc's state directory, so longer ids are refused too.
//! Either way an id has no `/`, newline or NUL and is never `.` or `..`, so `<root>/<id>` stays
//! inside runc's root.

use core::fmt;
use std::path::Path;

use super::bounds::CONTAINER_ID_MAX;

/// A container id that runc 1.1.5 would accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId {
    id: heapless::String<CONTAINER_ID_MAX>,
}

/// Why a string is not a valid container id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerIdError {
    /// The id is empty.
    Empty,
    /// The id is longer than [`CONTAINER_ID_MAX`] bytes.
    TooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// The id has a byte outside `A-Z a-z 0-9 _ + , - .`.
    BadByte {
        /// The byte.
        byte: u8,
        /// Its offset in the id.
        at: usize,
    },
    /// The id is `.` or `..`.
    Dots,
}

impl fmt::Display for ContainerIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid container id: ")?;
        match self {
            ContainerIdError::Empty => f.write_str("it is empty"),
            ContainerIdError::TooLong { len } => {
                write!(
                    f,
                    "it is {len} bytes long, over the limit of {CONTAINER_ID_MAX} bytes"
                )
            }
            ContainerIdError::BadByte { byte, at } => write!(
                f,
                "byte {} at offset {at} is not allowed (runc allows A-Z a-z 0-9 _ + , - .)",
                core::ascii::escape_default(*byte)
            ),
            ContainerIdError::Dots => f.write_str("`.` and `..` are not container ids"),
        }
    }
}

impl std::error::Error for ContainerIdError {}

/// Whether runc 1.1.5's id regexp `[\w+-\.]` accepts `b`.
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b',' | b'-' | b'.')
}

impl ContainerId {
    /// Validates `id`.
    pub fn new(id: &str) -> Result<Self, ContainerIdError> {
        if id.is_empty() {
            return Err(ContainerIdError::Empty);
        }
        if let Some((at, &byte)) = id.as_bytes().iter().enumerate().find(|(_, &b)| !allowed(b)) {
            return Err(ContainerIdError::BadByte { byte, at });
        }
        if id == "." || id == ".." {
            return Err(ContainerIdError::Dots);
        }
        let id = heapless::String::try_from(id)
            .map_err(|_| ContainerIdError::TooLong { len: id.len() })?;
        Ok(Self { id })
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl core::str::FromStr for ContainerId {
    type Err = ContainerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for ContainerId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<Path> for ContainerId {
    fn as_ref(&self) -> &Path {
        Path::new(self.as_str())
    }
}

impl PartialEq<str> for ContainerId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_runc_1_1_5_accepts() {
        // "x,y" and "..." were accepted by runc 1.1.5 on this machine (see the module docs).
        for id in ["ctp", "esc", "x,y", "...", ".a", "a..b", "A-Z_a+z.0-9", "-"] {
            assert_eq!(
                ContainerId::new(id).map(|c| c.to_string()),
                Ok(id.to_owned()),
                "{id}"
            );
        }
        let max = "a".repeat(CONTAINER_ID_MAX);
        assert!(ContainerId::new(&max).is_ok());
    }

    #[test]
    fn refuses_what_runc_refuses() {
        assert_eq!(ContainerId::new(""), Err(ContainerIdError::Empty));
        assert_eq!(ContainerId::new("."), Err(ContainerIdError::Dots));
        assert_eq!(ContainerId::new(".."), Err(ContainerIdError::Dots));
        assert_eq!(
            ContainerId::new("a b"),
            Err(ContainerIdError::BadByte { byte: b' ', at: 1 })
        );
        assert_eq!(
            ContainerId::new("../x"),
            Err(ContainerIdError::BadByte { byte: b'/', at: 2 })
        );
        assert_eq!(
            ContainerId::new("a\n"),
            Err(ContainerIdError::BadByte { byte: b'\n', at: 1 })
        );
        assert_eq!(
            ContainerId::new("a\0"),
            Err(ContainerIdError::BadByte { byte: 0, at: 1 })
        );
        assert_eq!(
            ContainerId::new("é"),
            Err(ContainerIdError::BadByte { byte: 0xc3, at: 0 })
        );
        for bad in ["a:b", "a*", "a=b", "a@b", "a/b"] {
            assert!(ContainerId::new(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(CONTAINER_ID_MAX + 1);
        assert_eq!(
            ContainerId::new(&long),
            Err(ContainerIdError::TooLong {
                len: CONTAINER_ID_MAX + 1
            })
        );
        let msg = ContainerIdError::BadByte { byte: b'\n', at: 1 }.to_string();
        assert!(msg.contains("\\n") && msg.contains("offset 1"), "{msg}");
    }
}
