//! Bounded reads: a whole file into a buffer of fixed capacity, and lines of bounded length.
//!
//! A file larger than its buffer is an error naming the file, its size and the bound; it is
//! never cut. Files under /proc report size 0, so the only reliable test is to fill the buffer
//! and then try to read one more byte.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::bounds::OVERSIZE_PROBE_MAX;

/// A heap buffer of exactly `N` bytes, allocated once, that one bounded file is read into.
pub struct FileBuf<const N: usize> {
    bytes: Box<[u8]>,
}

impl<const N: usize> FileBuf<N> {
    /// The bound: the largest file this buffer accepts, in bytes.
    pub const CAPACITY: usize = N;

    /// Allocates the buffer (zeroed, on the heap: `N` may be too large for a thread's stack).
    pub fn new() -> Self {
        Self {
            bytes: vec![0; N].into_boxed_slice(),
        }
    }

    /// Reads the whole file at `path`; see [`read_into`].
    pub fn read(&mut self, path: &Path) -> Result<&[u8], ReadError> {
        read_into(path, &mut self.bytes)
    }
}

impl<const N: usize> Default for FileBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`FileBuf`] plus a text buffer of the same size, for parsers that decode escapes (JSON
/// `\u0026`, mountinfo `\040`). Decoded text is never longer than its escaped form, so text
/// decoded from a file that fits the first buffer always fits the second.
pub struct DecodeBuf<const N: usize> {
    file: FileBuf<N>,
    text: Box<[u8]>,
}

impl<const N: usize> DecodeBuf<N> {
    /// The bound: the largest file this buffer accepts, in bytes.
    pub const CAPACITY: usize = N;

    /// Allocates both buffers on the heap.
    pub fn new() -> Self {
        Self {
            file: FileBuf::new(),
            text: vec![0; N].into_boxed_slice(),
        }
    }

    /// Reads the whole file at `path` (see [`read_into`]); returns its bytes and the text
    /// buffer a parser decodes into.
    pub fn read(&mut self, path: &Path) -> Result<(&[u8], &mut [u8]), ReadError> {
        let bytes = self.file.read(path)?;
        Ok((bytes, &mut self.text))
    }
}

impl<const N: usize> Default for DecodeBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The size of a file found to be over its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSize {
    /// The file's whole size, in bytes.
    Exact(u64),
    /// A lower bound: the file went on past [`OVERSIZE_PROBE_MAX`] bytes, or failed to read.
    AtLeast(u64),
}

impl fmt::Display for FileSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileSize::Exact(n) => write!(f, "{n} bytes"),
            FileSize::AtLeast(n) => write!(f, "at least {n} bytes"),
        }
    }
}

/// What went wrong reading a file.
#[derive(Debug)]
pub enum ReadErrorKind {
    /// Opening or reading failed.
    Io(io::Error),
    /// The file is larger than the buffer it is read into.
    TooLarge {
        /// How large the file is.
        size: FileSize,
        /// The capacity of the buffer, in bytes.
        bound: usize,
    },
}

/// A file could not be read whole into its buffer.
#[derive(Debug)]
pub struct ReadError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: ReadErrorKind,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.kind {
            ReadErrorKind::Io(e) => write!(f, "cannot read {path}: {e}"),
            ReadErrorKind::TooLarge { size, bound } => write!(
                f,
                "{path} is {size}, over haul's bound of {bound} bytes for this file \
                 (refused, not cut; the bound is a constant in inspect/bounds.rs)"
            ),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ReadErrorKind::Io(e) => Some(e),
            ReadErrorKind::TooLarge { .. } => None,
        }
    }
}

/// A file was read but its content could not be parsed, or could not be read at all.
#[derive(Debug)]
pub enum FileError<E> {
    /// Reading failed (see [`ReadError`]).
    Read(ReadError),
    /// The content is malformed or over a limit.
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        error: E,
    },
}

impl<E> FileError<E> {
    /// Attaches the file's path to a parser's error.
    pub fn parse(path: &Path, error: E) -> Self {
        FileError::Parse {
            path: path.to_path_buf(),
            error,
        }
    }
}

impl<E> From<ReadError> for FileError<E> {
    fn from(e: ReadError) -> Self {
        FileError::Read(e)
    }
}

impl<E: fmt::Display> fmt::Display for FileError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Read(e) => e.fmt(f),
            FileError::Parse { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for FileError<E> {}

/// Reads the whole file at `path` into `buf`, whose length is the bound, and returns the
/// filled part.
///
/// open(2) and read(2) until end of file. If the buffer fills up, one more byte is read: if
/// there is one, the file is over the bound and the error tells its size (from fstat(2) for a
/// regular file, else by reading on, up to [`OVERSIZE_PROBE_MAX`] bytes).
pub fn read_into<'b>(path: &Path, buf: &'b mut [u8]) -> Result<&'b [u8], ReadError> {
    let io_error = |e| ReadError {
        path: path.to_path_buf(),
        kind: ReadErrorKind::Io(e),
    };
    let mut file = File::open(path).map_err(io_error)?;
    let bound = buf.len();
    let mut filled = 0;
    let mut at_eof = false;
    while let Some(free) = buf.get_mut(filled..).filter(|free| !free.is_empty()) {
        match file.read(free) {
            Ok(0) => {
                at_eof = true;
                break;
            }
            Ok(n) => filled = filled.saturating_add(n).min(bound),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    if !at_eof && read_one_more(&mut file).map_err(io_error)? {
        let size = oversize(&mut file, bound);
        return Err(ReadError {
            path: path.to_path_buf(),
            kind: ReadErrorKind::TooLarge { size, bound },
        });
    }
    Ok(buf.get(..filled).unwrap_or_default())
}

/// Whether the file has at least one more byte.
fn read_one_more(file: &mut File) -> io::Result<bool> {
    let mut probe = [0u8; 1];
    loop {
        match file.read(&mut probe) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The size of a file found to have more than `bound` bytes, `bound + 1` of which are read.
fn oversize(file: &mut File, bound: usize) -> FileSize {
    let read_so_far = u64::try_from(bound).unwrap_or(u64::MAX).saturating_add(1);
    if let Ok(meta) = file.metadata() {
        if meta.is_file() && meta.len() >= read_so_far {
            return FileSize::Exact(meta.len());
        }
    }
    let mut count = read_so_far;
    let mut scratch = [0u8; 4096];
    while count <= OVERSIZE_PROBE_MAX {
        match file.read(&mut scratch) {
            Ok(0) => return FileSize::Exact(count),
            Ok(n) => count = count.saturating_add(u64::try_from(n).unwrap_or(u64::MAX)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    FileSize::AtLeast(count)
}

/// One line of a file, without its `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// 1-based line number.
    pub number: usize,
    /// The line's bytes.
    pub bytes: &'a [u8],
}

/// A line is longer than its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong {
    /// 1-based line number.
    pub line: usize,
    /// The line's length in bytes, without its `\n`.
    pub len: usize,
    /// The longest line accepted, in bytes.
    pub bound: usize,
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {} is {} bytes long, over haul's bound of {} bytes per line \
             (refused, not cut)",
            self.line, self.len, self.bound
        )
    }
}

/// The lines of a buffer, each at most `bound` bytes long; see [`lines`].
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    rest: &'a [u8],
    number: usize,
    bound: usize,
    failed: bool,
}

/// Splits `bytes` at `\n` into lines of at most `bound` bytes (not counting the `\n`).
///
/// A last line without `\n` is still a line; nothing after a final `\n` is. A line over the
/// bound yields one error and ends the iteration.
pub fn lines(bytes: &[u8], bound: usize) -> Lines<'_> {
    Lines {
        rest: bytes,
        number: 0,
        bound,
        failed: false,
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<Line<'a>, LineTooLong>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match self.rest.iter().position(|&b| b == b'\n') {
            Some(end) => (
                self.rest.get(..end).unwrap_or_default(),
                self.rest.get(end.saturating_add(1)..).unwrap_or_default(),
            ),
            None => (self.rest, &[][..]),
        };
        self.rest = rest;
        self.number = self.number.saturating_add(1);
        if line.len() > self.bound {
            self.failed = true;
            return Some(Err(LineTooLong {
                line: self.number,
                len: line.len(),
                bound: self.bound,
            }));
        }
        Some(Ok(Line {
            number: self.number,
            bytes: line,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::test_support::{TempDir, TestResult};

    #[test]
    fn reads_a_file_exactly_at_the_bound() -> TestResult {
        let dir = TempDir::new("bounded-exact")?;
        let path = dir.write("f", &[b'x'; 16])?;
        let mut buf = [0u8; 16];
        assert_eq!(read_into(&path, &mut buf)?, &[b'x'; 16][..]);
        Ok(())
    }

    #[test]
    fn refuses_a_file_one_byte_over_the_bound_and_names_size_and_bound() -> TestResult {
        let dir = TempDir::new("bounded-over")?;
        let path = dir.write("f", &[b'x'; 17])?;
        let mut buf = [0u8; 16];
        let err = read_into(&path, &mut buf)
            .err()
            .ok_or("17 bytes fit a 16-byte buffer")?;
        assert!(matches!(
            err.kind,
            ReadErrorKind::TooLarge {
                size: FileSize::Exact(17),
                bound: 16
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("17 bytes") && msg.contains("bound of 16 bytes"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn sizes_a_proc_file_by_reading_on() -> TestResult {
        // /proc files report size 0 in fstat; this one is a few hundred bytes.
        let mut buf = [0u8; 8];
        let err = read_into(Path::new("/proc/self/stat"), &mut buf)
            .err()
            .ok_or("/proc/self/stat fit in 8 bytes")?;
        assert!(
            matches!(err.kind, ReadErrorKind::TooLarge { size: FileSize::Exact(n), bound: 8 } if n > 50),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn reads_an_empty_file_and_reports_a_missing_one() -> TestResult {
        let dir = TempDir::new("bounded-empty")?;
        let path = dir.write("empty", b"")?;
        let mut buf = [0u8; 4];
        assert_eq!(read_into(&path, &mut buf)?, &[][..]);
        let missing = dir.path().join("missing");
        let err = read_into(&missing, &mut buf)
            .err()
            .ok_or("a missing file was read")?;
        assert!(
            matches!(err.kind, ReadErrorKind::Io(ref e) if e.kind() == io::ErrorKind::NotFound)
        );
        assert!(err.to_string().contains("missing"));
        Ok(())
    }

    #[test]
    fn file_bufs_read_up_to_their_capacity() -> TestResult {
        let dir = TempDir::new("bounded-filebuf")?;
        let path = dir.write("f", &[7u8; 32])?;
        let mut buf = FileBuf::<32>::new();
        assert_eq!(buf.read(&path)?.len(), 32);
        let mut decode = DecodeBuf::<32>::new();
        let (bytes, text) = decode.read(&path)?;
        assert_eq!((bytes.len(), text.len()), (32, 32));
        let mut small = DecodeBuf::<31>::new();
        assert!(small.read(&path).is_err());
        Ok(())
    }

    #[test]
    fn splits_lines_and_numbers_them() {
        let got: Vec<_> = lines(b"a\n\nbc\nlast", 4).collect();
        assert_eq!(
            got,
            vec![
                Ok(Line {
                    number: 1,
                    bytes: b"a"
                }),
                Ok(Line {
                    number: 2,
                    bytes: b""
                }),
                Ok(Line {
                    number: 3,
                    bytes: b"bc"
                }),
                Ok(Line {
                    number: 4,
                    bytes: b"last"
                }),
            ]
        );
        assert_eq!(lines(b"x\n", 4).count(), 1);
        assert_eq!(lines(b"", 4).count(), 0);
    }

    #[test]
    fn a_line_at_the_bound_passes_and_one_byte_over_fails() {
        assert_eq!(
            lines(b"abcd\n", 4).next(),
            Some(Ok(Line {
                number: 1,
                bytes: b"abcd"
            }))
        );
        let got: Vec<_> = lines(b"ok\nabcde\nnever", 4).collect();
        assert_eq!(
            got,
            vec![
                Ok(Line {
                    number: 1,
                    bytes: b"ok"
                }),
                Err(LineTooLong {
                    line: 2,
                    len: 5,
                    bound: 4
                })
            ]
        );
        let msg = LineTooLong {
            line: 2,
            len: 5,
            bound: 4,
        }
        .to_string();
        assert!(msg.contains("line 2") && msg.contains("5 bytes") && msg.contains("4 bytes"));
    }
}
