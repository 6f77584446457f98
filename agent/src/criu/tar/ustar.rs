//! POSIX ustar headers, the subset haul's tar writes and reads: regular files, directories,
//! symbolic links, character and block devices, FIFOs; names up to 255 bytes (prefix + name),
//! link targets up to 100, numbers in octal. What does not fit is `Unsupported` on writing
//! (GNU tar then archives the tree) and an error on reading.

pub const BLOCK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
    fn from_flag(f: u8) -> Option<Kind> {
        Some(match f {
            b'0' | 0 => Kind::File,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// As GNU tar names entries under `--directory D .`: `./`, `./dir/`, `./dir/file`.
    pub path: String,
    pub kind: Kind,
    /// Permission bits with set-id and sticky bits (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of content (regular files only).
    pub size: u64,
    /// Seconds since the epoch (not before it).
    pub mtime: u64,
    /// Symbolic link target.
    pub link: String,
    pub major: u32,
    pub minor: u32,
}

/// Something ustar (as haul writes it) cannot hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsupported(pub String);

fn put_octal(field: &mut [u8], value: u64, what: &str, path: &str) -> Result<(), Unsupported> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        return Err(Unsupported(format!("{path}: {what} {value} does not fit")));
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

fn put_str(field: &mut [u8], s: &str) {
    field[..s.len()].copy_from_slice(s.as_bytes());
}

/// Splits a name into (prefix, name) for ustar: name ≤ 100 bytes, prefix ≤ 155, split at '/'.
fn split_name(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    // The last '/' such that the prefix fits; a trailing '/' (directories) stays in the name.
    let body = path.strip_suffix('/').unwrap_or(path);
    for (i, _) in body.match_indices('/').rev() {
        let (prefix, name) = (&path[..i], &path[i + 1..]);
        if prefix.len() <= 155 && name.len() <= 100 && !name.is_empty() {
            return Some((prefix, name));
        }
    }
    None
}

impl Header {
    pub fn encode(&self) -> Result<[u8; BLOCK], Unsupported> {
        let p = &self.path;
        let mut b = [0u8; BLOCK];
        let (prefix, name) =
            split_name(p).ok_or_else(|| Unsupported(format!("{p}: name too long for ustar")))?;
        if self.link.len() > 100 {
            return Err(Unsupported(format!(
                "{p}: link target longer than 100 bytes"
            )));
        }
        put_str(&mut b[0..100], name);
        put_octal(&mut b[100..108], u64::from(self.mode & 0o7777), "mode", p)?;
        put_octal(&mut b[108..116], u64::from(self.uid), "uid", p)?;
        put_octal(&mut b[116..124], u64::from(self.gid), "gid", p)?;
        put_octal(&mut b[124..136], self.size, "size", p)?;
        put_octal(&mut b[136..148], self.mtime, "mtime", p)?;
        b[156] = self.kind.flag();
        put_str(&mut b[157..257], &self.link);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        if matches!(self.kind, Kind::Char | Kind::Block) {
            put_octal(&mut b[329..337], u64::from(self.major), "device major", p)?;
            put_octal(&mut b[337..345], u64::from(self.minor), "device minor", p)?;
        }
        put_str(&mut b[345..500], prefix);
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        let s = format!("{sum:06o}");
        b[148..154].copy_from_slice(s.as_bytes());
        b[154] = 0;
        b[155] = b' ';
        Ok(b)
    }

    /// `None` for an all-zero block (the end of the archive).
    pub fn decode(b: &[u8; BLOCK]) -> Result<Option<Header>, String> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let stored = octal(&b[148..156]).ok_or("header checksum is not octal")?;
        let sum: u64 = b
            .iter()
            .enumerate()
            .map(|(i, &x)| u64::from(if (148..156).contains(&i) { b' ' } else { x }))
            .sum();
        if stored != sum {
            return Err(format!("header checksum {stored:o}, computed {sum:o}"));
        }
        if &b[257..263] != b"ustar\0" || &b[263..265] != b"00" {
            return Err("not a POSIX ustar header".into());
        }
        let kind =
            Kind::from_flag(b[156]).ok_or_else(|| format!("entry type {:?}", b[156] as char))?;
        let name = cstr(&b[0..100])?;
        let prefix = cstr(&b[345..500])?;
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let num = |r: std::ops::Range<usize>, what: &str| {
            octal(&b[r]).ok_or_else(|| format!("{path}: {what} is not octal"))
        };
        let small = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| format!("{path}: {what} {v} out of range"))
        };
        let (major, minor) = if matches!(kind, Kind::Char | Kind::Block) {
            (
                small(num(329..337, "major")?, "major")?,
                small(num(337..345, "minor")?, "minor")?,
            )
        } else {
            (0, 0)
        };
        let h = Header {
            kind,
            mode: small(num(100..108, "mode")?, "mode")? & 0o7777,
            uid: small(num(108..116, "uid")?, "uid")?,
            gid: small(num(116..124, "gid")?, "gid")?,
            size: num(124..136, "size")?,
            mtime: num(136..148, "mtime")?,
            link: cstr(&b[157..257])?,
            major,
            minor,
            path,
        };
        if h.kind != Kind::File && h.size != 0 {
            return Err(format!(
                "{}: a {:?} with {} bytes of content",
                h.path, h.kind, h.size
            ));
        }
        Ok(Some(h))
    }
}

fn cstr(f: &[u8]) -> Result<String, String> {
    let end = f.iter().position(|&x| x == 0).unwrap_or(f.len());
    String::from_utf8(f[..end].to_vec()).map_err(|_| "a name is not UTF-8".to_string())
}

fn octal(f: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c| c == '\0' || c == ' ');
    if s.is_empty() || s.len() > 22 {
        return None;
    }
    u64::from_str_radix(s, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Header {
        Header {
            path: path.into(),
            kind: Kind::File,
            mode: 0o4755,
            uid: 1000,
            gid: 5,
            size: 12345,
            mtime: 1_795_960_000,
            link: String::new(),
            major: 0,
            minor: 0,
        }
    }

    #[test]
    fn headers_round_trip() {
        let long = format!("./{}/{}", "d".repeat(120), "f".repeat(90));
        for h in [
            file("./a"),
            file(&long),
            Header {
                kind: Kind::Char,
                major: 1,
                minor: 3,
                size: 0,
                ..file("./null")
            },
            Header {
                kind: Kind::Symlink,
                link: "/proc/self/fd".into(),
                size: 0,
                ..file("./fd")
            },
            Header {
                kind: Kind::Dir,
                size: 0,
                mode: 0o1777,
                ..file("./")
            },
        ] {
            let b = h.encode().unwrap();
            assert_eq!(Header::decode(&b).unwrap(), Some(h));
        }
        assert_eq!(Header::decode(&[0; BLOCK]).unwrap(), None);
    }

    #[test]
    fn what_ustar_cannot_hold_is_unsupported() {
        assert!(file(&format!("./{}", "x".repeat(101))).encode().is_err());
        let big = Header {
            size: 1 << 33,
            ..file("./big")
        };
        assert!(big.encode().is_err());
        let link = Header {
            kind: Kind::Symlink,
            link: "l".repeat(101),
            size: 0,
            ..file("./l")
        };
        assert!(link.encode().is_err());
    }

    #[test]
    fn gnu_tar_lists_what_haul_writes() {
        let mut archive = Vec::new();
        archive.extend(
            Header {
                kind: Kind::Dir,
                size: 0,
                mode: 0o755,
                ..file("./")
            }
            .encode()
            .unwrap(),
        );
        let mut f = file("./hello");
        f.size = 3;
        f.mode = 0o644;
        archive.extend(f.encode().unwrap());
        let mut data = [0u8; BLOCK];
        data[..3].copy_from_slice(b"hi\n");
        archive.extend(data);
        archive.extend([0u8; 2 * BLOCK]);
        let dir = std::env::temp_dir().join(format!("haul-ustar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.tar");
        std::fs::write(&path, &archive).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&path)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            listing.contains("-rwxr-xr-x") || listing.contains("-rw-r--r--"),
            "{listing}"
        );
        assert!(listing.contains("1000/5"), "{listing}");
        assert!(listing.contains("./hello"), "{listing}");
    }

    #[test]
    fn damaged_headers_are_refused() {
        let mut b = file("./a").encode().unwrap();
        b[0] = b'b';
        assert!(Header::decode(&b).unwrap_err().contains("checksum"));
        let mut h = file("./a");
        h.kind = Kind::Dir;
        let b = h.encode().unwrap();
        assert!(Header::decode(&b).unwrap_err().contains("bytes of content"));
    }
}
