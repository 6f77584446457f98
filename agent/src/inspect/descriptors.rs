//! The standard descriptors of a container's init: descriptors.json in a checkpoint image
//! directory, and `external_descriptors` in runc's state.json.
//!
//! runc records the link targets of init's fds 0, 1 and 2 (readlink of /proc/PID/fd/N; an
//! entry stays `""` when reading it was not permitted) and, at checkpoint, writes them as a JSON
//! array into the image directory: `["/dev/null","pipe:[23204]","pipe:[23204]"]`
//! (fixtures/runc-1.1.5-cgroupv1-hybrid/descriptors.json). On restore runc passes every entry
//! containing `pipe:` to CRIU as an `inherit_fd` whose key is the whole string and whose fd is
//! the entry's index. haul recognises a pipe only in the kernel's exact form `pipe:[INODE]`.

use core::fmt;
use std::path::Path;

use super::bounded_read::{DecodeBuf, FileError};
use super::bounds::{DESCRIPTORS_JSON_MAX, PATH_MAX, STDIO_FDS};
use super::json::{BoundedSeq, JsonError};
use super::json_text::{self, TextProblem};
use super::text_arena::TextArena;

/// The name runc gives the file in the image directory.
pub const DESCRIPTORS_FILE: &str = "descriptors.json";

/// Buffers for reading one descriptors.json.
pub type DescriptorsBuf = DecodeBuf<DESCRIPTORS_JSON_MAX>;

/// The link targets of fds 0, 1 and 2, decoded from JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdioDescriptors<'a> {
    /// The link target of fd N is entry N, exactly as runc recorded it.
    pub targets: [&'a str; STDIO_FDS],
}

impl<'a> StdioDescriptors<'a> {
    /// Fd numbers with their link targets and what they are.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &'a str, FdTarget<'a>)> + '_ {
        self.targets
            .iter()
            .enumerate()
            .map(|(fd, &raw)| (fd, raw, FdTarget::classify(raw)))
    }

    /// The pipes among fds 0-2: fd number, link target (the `inherit_fd` key runc uses on
    /// restore) and pipe inode.
    pub fn pipes(&self) -> impl Iterator<Item = (usize, &'a str, u64)> + '_ {
        self.iter().filter_map(|(fd, raw, target)| match target {
            FdTarget::Pipe(inode) => Some((fd, raw, inode)),
            _ => None,
        })
    }
}

/// What a `/proc/PID/fd/N` link target names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdTarget<'a> {
    /// `pipe:[INODE]`.
    Pipe(u64),
    /// `socket:[INODE]`.
    Socket(u64),
    /// An absolute path (a file, a tty, /dev/null).
    Path(&'a str),
    /// `""`: runc could not read the link (it records nothing on EPERM).
    Unreadable,
    /// Anything else, such as `anon_inode:[eventfd]`.
    Other(&'a str),
}

impl<'a> FdTarget<'a> {
    /// Classifies a link target.
    pub fn classify(target: &'a str) -> Self {
        if target.is_empty() {
            FdTarget::Unreadable
        } else if target.starts_with('/') {
            FdTarget::Path(target)
        } else if let Some(inode) = inode_of(target, "pipe:[") {
            FdTarget::Pipe(inode)
        } else if let Some(inode) = inode_of(target, "socket:[") {
            FdTarget::Socket(inode)
        } else {
            FdTarget::Other(target)
        }
    }
}

/// The decimal inode of `<prefix>INODE]`, the form the kernel gives anonymous pipes and sockets.
fn inode_of(target: &str, prefix: &str) -> Option<u64> {
    let digits = target.strip_prefix(prefix)?.strip_suffix(']')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why descriptors.json (or state.json's external_descriptors) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorsError {
    /// Not a JSON array of strings.
    Json(JsonError),
    /// Not exactly three entries.
    WrongCount {
        /// How many entries there are.
        count: usize,
    },
    /// An entry could not be kept.
    Text {
        /// The entry's index, which is its fd number.
        fd: usize,
        /// What is wrong with it.
        problem: TextProblem,
    },
}

impl fmt::Display for DescriptorsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescriptorsError::Json(e) => {
                write!(f, "descriptors.json is not a JSON array of strings: {e}")
            }
            DescriptorsError::WrongCount { count } => write!(
                f,
                "descriptors.json has {count} entries; runc writes exactly {STDIO_FDS} (fds 0-2)"
            ),
            DescriptorsError::Text { fd, problem } => {
                write!(f, "descriptors.json: the entry for fd {fd} {problem}")
            }
        }
    }
}

impl std::error::Error for DescriptorsError {}

/// Keeps exactly three raw JSON strings, decoded; shared with state.json's
/// external_descriptors.
pub(crate) fn from_raw<'a>(
    raw: &BoundedSeq<&'a str, STDIO_FDS>,
    arena: &mut TextArena<'a>,
) -> Result<StdioDescriptors<'a>, DescriptorsError> {
    if raw.total != STDIO_FDS {
        return Err(DescriptorsError::WrongCount { count: raw.total });
    }
    let mut targets = [""; STDIO_FDS];
    for (fd, (slot, &text)) in targets.iter_mut().zip(raw.items.iter()).enumerate() {
        *slot = json_text::decode(text, arena, PATH_MAX)
            .map_err(|problem| DescriptorsError::Text { fd, problem })?;
    }
    Ok(StdioDescriptors { targets })
}

/// Parses descriptors.json, decoding escaped strings into `text` (give it as many bytes as
/// `json` has and it never runs out).
pub fn parse_descriptors<'a>(
    json: &'a [u8],
    text: &'a mut [u8],
) -> Result<StdioDescriptors<'a>, DescriptorsError> {
    let (raw, _) = serde_json_core::from_slice::<BoundedSeq<&'a str, STDIO_FDS>>(json)
        .map_err(|e| DescriptorsError::Json(JsonError::from_serde(&e)))?;
    from_raw(&raw, &mut TextArena::new(text))
}

/// Reads and parses `<image_dir>/descriptors.json`.
pub fn read_descriptors<'b>(
    image_dir: &Path,
    buf: &'b mut DescriptorsBuf,
) -> Result<StdioDescriptors<'b>, FileError<DescriptorsError>> {
    let path = image_dir.join(DESCRIPTORS_FILE);
    let (json, text) = buf.read(&path)?;
    parse_descriptors(json, text).map_err(|e| FileError::parse(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::test_support::{fixtures, TestResult};

    #[test]
    fn reads_the_fixture_runc_wrote_at_checkpoint() -> TestResult {
        let mut buf = DescriptorsBuf::new();
        let dir = fixtures().join("runc-1.1.5-cgroupv1-hybrid");
        let fds = read_descriptors(&dir, &mut buf)?;
        assert_eq!(fds.targets, ["/dev/null", "pipe:[23204]", "pipe:[23204]"]);
        let pipes: Vec<_> = fds.pipes().collect();
        assert_eq!(
            pipes,
            vec![(1, "pipe:[23204]", 23204), (2, "pipe:[23204]", 23204)]
        );
        assert_eq!(
            FdTarget::classify(fds.targets[0]),
            FdTarget::Path("/dev/null")
        );
        Ok(())
    }

    #[test]
    fn classifies_link_targets() {
        assert_eq!(FdTarget::classify("pipe:[230688]"), FdTarget::Pipe(230_688));
        assert_eq!(FdTarget::classify("socket:[17]"), FdTarget::Socket(17));
        assert_eq!(
            FdTarget::classify("/dev/pts/0"),
            FdTarget::Path("/dev/pts/0")
        );
        assert_eq!(FdTarget::classify(""), FdTarget::Unreadable);
        for other in [
            "anon_inode:[eventfd]",
            "pipe:[]",
            "pipe:[12",
            "pipe:[+1]",
            "pipe:[1]x",
            "pipe:[99999999999999999999]",
        ] {
            assert_eq!(FdTarget::classify(other), FdTarget::Other(other), "{other}");
        }
    }

    #[test]
    fn decodes_escaped_paths() -> TestResult {
        let json = br#"["/dev/null","/srv/edge\u0026co/out.log","socket:[5]"]"#;
        let mut text = [0u8; 64];
        let fds = parse_descriptors(json, &mut text)?;
        assert_eq!(
            fds.targets,
            ["/dev/null", "/srv/edge&co/out.log", "socket:[5]"]
        );
        Ok(())
    }

    #[test]
    fn refuses_other_counts_and_bad_json() {
        let mut text = [0u8; 64];
        let two = parse_descriptors(br#"["/dev/null","pipe:[1]"]"#, &mut text);
        assert_eq!(two, Err(DescriptorsError::WrongCount { count: 2 }));
        let four = parse_descriptors(br#"["a","b","c","d"]"#, &mut text);
        assert_eq!(four, Err(DescriptorsError::WrongCount { count: 4 }));
        assert!(matches!(
            parse_descriptors(b"[1,2,3]", &mut text),
            Err(DescriptorsError::Json(_))
        ));
        assert!(matches!(
            parse_descriptors(b"{}", &mut text),
            Err(DescriptorsError::Json(_))
        ));
        let bad = parse_descriptors(br#"["a","b\q","c"]"#, &mut text);
        assert_eq!(
            bad,
            Err(DescriptorsError::Text {
                fd: 1,
                problem: TextProblem::BadEscape
            })
        );
        let msg = DescriptorsError::WrongCount { count: 4 }.to_string();
        assert!(
            msg.contains("4 entries") && msg.contains("exactly 3"),
            "{msg}"
        );
    }
}
