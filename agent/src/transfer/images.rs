//! Image files: the source streams each file of its images directory as FileBegin, FILE_DATA
//! frames and FileEnd (explicit end markers: a cut stream is detected, not guessed); the
//! destination creates each one inside its per-migration directory with
//! `openat(O_CREAT|O_EXCL|O_NOFOLLOW)`, accepting plain names only and enforcing the limits.

use super::frame::PAYLOAD_MAX;
use super::{Conn, WireError};
use crate::limits::{FILES_MAX, FILE_NAME_MAX, IMAGE_BYTES_MAX};
use haul_proto::haul::{control::Msg, FileBegin, FileEnd, ImagesDone};
use rustix::fs::{openat, Mode, OFlags};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

/// Sends every regular file of `dir` whose name `include` accepts; returns (files, bytes).
pub fn send_dir(
    conn: &Conn,
    dir: &Path,
    include: impl Fn(&str) -> bool,
) -> Result<(u32, u64), String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| include(n))
        .collect();
    names.sort();
    let mut buf = vec![0u8; PAYLOAD_MAX];
    let (mut files, mut bytes) = (0u32, 0u64);
    for name in names {
        let path = dir.join(&name);
        let mut f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mode = f
            .metadata()
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .unwrap_or(0o600);
        conn.send(Msg::FileBegin(FileBegin {
            name: name.clone(),
            mode,
        }))
        .map_err(|e| format!("sending {}: {e}", path.display()))?;
        let size = stream_file(conn, &mut f, &path, &mut buf)?;
        files += 1;
        bytes += size;
    }
    conn.send(Msg::ImagesDone(ImagesDone { files, bytes }))
        .map_err(|e| format!("sending the end of the images of {}: {e}", dir.display()))?;
    Ok((files, bytes))
}

/// Sends the bytes of an open file in FILE_DATA frames, then FileEnd with their count.
pub fn stream_file(
    conn: &Conn,
    f: &mut std::fs::File,
    path: &Path,
    buf: &mut [u8],
) -> Result<u64, String> {
    let mut size = 0u64;
    loop {
        let n = f
            .read(buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        conn.send_file_data(buf.get(..n).unwrap_or_default())
            .map_err(|e| format!("sending {}: {e}", path.display()))?;
        size += n as u64;
    }
    conn.send(Msg::FileEnd(FileEnd { size }))
        .map_err(|e| format!("sending {}: {e}", path.display()))?;
    Ok(size)
}

/// Checks a file name from the peer: a plain, short, printable name.
pub fn check_name(name: &str) -> Result<(), WireError> {
    let bad = |why: &str| {
        Err(WireError::Protocol(format!(
            "file name {name:?} refused: {why}"
        )))
    };
    if name.is_empty() || name == "." || name == ".." {
        return bad("not a file name");
    }
    if name.len() > FILE_NAME_MAX {
        return bad(&format!("longer than {FILE_NAME_MAX} bytes"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == 0 || b.is_ascii_control())
    {
        return bad("contains '/', NUL or a control character");
    }
    Ok(())
}

/// Receives image files into a directory (the destination's per-migration directory).
pub struct ImageSink {
    dir: OwnedFd,
    current: Option<(String, std::fs::File, u64)>,
    pub files: u32,
    pub bytes: u64,
}

impl ImageSink {
    pub fn new(dir: OwnedFd) -> Self {
        ImageSink {
            dir,
            current: None,
            files: 0,
            bytes: 0,
        }
    }

    pub fn begin(&mut self, b: FileBegin) -> Result<(), WireError> {
        if self.current.is_some() {
            return Err(WireError::Protocol("FileBegin inside another file".into()));
        }
        check_name(&b.name)?;
        if self.files >= FILES_MAX {
            return Err(WireError::Protocol(format!(
                "more than {FILES_MAX} image files (limit)"
            )));
        }
        let fd = openat(
            &self.dir,
            b.name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(b.mode & 0o600 | 0o400),
        )
        .map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                WireError::Protocol(format!("file {:?} sent twice or already present", b.name))
            } else {
                WireError::Protocol(format!("cannot create image file {:?}: {e}", b.name))
            }
        })?;
        self.current = Some((b.name, std::fs::File::from(fd), 0));
        self.files += 1;
        Ok(())
    }

    pub fn data(&mut self, chunk: &[u8]) -> Result<(), WireError> {
        let Some((name, file, size)) = self.current.as_mut() else {
            return Err(WireError::Protocol("file data outside a file".into()));
        };
        self.bytes += chunk.len() as u64;
        if self.bytes > IMAGE_BYTES_MAX {
            return Err(WireError::Protocol(format!(
                "image files exceed {IMAGE_BYTES_MAX} bytes (limit)"
            )));
        }
        file.write_all(chunk)
            .map_err(|e| WireError::Protocol(format!("writing image file {name:?}: {e}")))?;
        *size += chunk.len() as u64;
        Ok(())
    }

    pub fn end(&mut self, e: FileEnd) -> Result<(), WireError> {
        let Some((name, _file, size)) = self.current.take() else {
            return Err(WireError::Protocol("FileEnd outside a file".into()));
        };
        if size != e.size {
            return Err(WireError::Protocol(format!(
                "file {name:?}: received {size} bytes, sender says {}",
                e.size
            )));
        }
        Ok(())
    }

    pub fn done(&self, d: &ImagesDone) -> Result<(), WireError> {
        if self.current.is_some() {
            return Err(WireError::Protocol("ImagesDone inside a file".into()));
        }
        if d.files != self.files || d.bytes != self.bytes {
            return Err(WireError::Protocol(format!(
                "received {} files / {} bytes, sender says {} / {}",
                self.files, self.bytes, d.files, d.bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("haul-img-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sink(d: &Path) -> ImageSink {
        let fd = rustix::fs::open(
            d,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        ImageSink::new(fd)
    }

    #[test]
    fn names_with_slashes_dots_nul_or_too_long_are_refused() {
        for n in ["", ".", "..", "../x", "a/b", "a\0b", "a\nb"] {
            assert!(check_name(n).is_err(), "{n:?}");
        }
        assert!(check_name(&"a".repeat(FILE_NAME_MAX)).is_ok());
        assert!(check_name(&"a".repeat(FILE_NAME_MAX + 1)).is_err());
        assert!(check_name("pages-1.img").is_ok());
    }

    #[test]
    fn receives_files_and_refuses_duplicates_and_symlinks() {
        let d = tempdir("recv");
        let mut s = sink(&d);
        s.begin(FileBegin {
            name: "core-1.img".into(),
            mode: 0o644,
        })
        .unwrap();
        s.data(b"abc").unwrap();
        s.end(FileEnd { size: 3 }).unwrap();
        assert_eq!(std::fs::read(d.join("core-1.img")).unwrap(), b"abc");
        // Duplicate.
        assert!(s
            .begin(FileBegin {
                name: "core-1.img".into(),
                mode: 0
            })
            .is_err());
        // A planted symlink is not followed.
        std::os::unix::fs::symlink("/etc/passwd", d.join("evil.img")).unwrap();
        assert!(s
            .begin(FileBegin {
                name: "evil.img".into(),
                mode: 0
            })
            .is_err());
        // Size mismatch.
        s.begin(FileBegin {
            name: "x.img".into(),
            mode: 0,
        })
        .unwrap();
        s.data(b"12").unwrap();
        assert!(s.end(FileEnd { size: 3 }).is_err());
        assert!(s.done(&ImagesDone { files: 9, bytes: 0 }).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_files_max_th_file_is_taken_and_the_next_refused() {
        let d = tempdir("files-max");
        let mut s = sink(&d);
        // As if FILES_MAX - 1 had come before (they would all be on disk).
        s.files = FILES_MAX - 1;
        let b = |name: &str| FileBegin {
            name: name.into(),
            mode: 0o600,
        };
        s.begin(b("last.img")).unwrap();
        s.end(FileEnd { size: 0 }).unwrap();
        assert_eq!(s.files, FILES_MAX);
        let e = s.begin(b("one-more.img")).unwrap_err().to_string();
        assert!(e.contains("more than 4096 image files (limit)"), "{e}");
        assert!(!d.join("one-more.img").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn image_bytes_up_to_the_limit_are_written_and_one_more_is_refused() {
        let d = tempdir("bytes-max");
        let mut s = sink(&d);
        s.begin(FileBegin {
            name: "big.img".into(),
            mode: 0o600,
        })
        .unwrap();
        // As if IMAGE_BYTES_MAX - 3 had come before.
        s.bytes = IMAGE_BYTES_MAX - 3;
        s.data(b"abc").unwrap();
        assert_eq!(s.bytes, IMAGE_BYTES_MAX);
        let e = s.data(b"!").unwrap_err().to_string();
        assert!(
            e.contains("image files exceed 1073741824 bytes (limit)"),
            "{e}"
        );
        assert_eq!(std::fs::read(d.join("big.img")).unwrap(), b"abc");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn data_outside_a_file_is_refused() {
        let d = tempdir("outside");
        let mut s = sink(&d);
        assert!(s.data(b"x").is_err());
        assert!(s.end(FileEnd { size: 0 }).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
