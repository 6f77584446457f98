//! gzip with stored (uncompressed) deflate blocks: what haul's tar writes, and the only gzip
//! its extractor reads. tmpfs contents are small and the images cross a link haul encrypts
//! anyway; not compressing keeps the frozen time short and needs no deflate implementation.
//! The header carries a comment naming the format, so an archive from GNU tar (compressed) is
//! recognised and left to GNU tar.

use std::io::{self, Read, Write};

/// Header: magic, CM = deflate, FLG = FCOMMENT, MTIME 0, XFL 0, OS = Unix; then the comment.
pub const HEADER: &[u8] = b"\x1f\x8b\x08\x10\x00\x00\x00\x00\x00\x03haul-tar 1\x00";
/// Largest stored block.
const BLOCK: usize = 65_535;

/// CRC-32 (IEEE 802.3, reflected), as gzip's trailer needs.
#[derive(Clone, Copy)]
pub struct Crc32(u32);

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

impl Default for Crc32 {
    fn default() -> Crc32 {
        Crc32::new()
    }
}

impl Crc32 {
    pub fn new() -> Crc32 {
        Crc32(0xFFFF_FFFF)
    }
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }
    pub fn value(&self) -> u32 {
        !self.0
    }
}

/// Writes a gzip stream of stored blocks; `finish` writes the last block and the trailer.
pub struct StoredWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    crc: Crc32,
    size: u32,
}

impl<W: Write> StoredWriter<W> {
    pub fn new(mut out: W) -> io::Result<StoredWriter<W>> {
        out.write_all(HEADER)?;
        Ok(StoredWriter {
            out,
            buf: Vec::with_capacity(BLOCK),
            crc: Crc32::new(),
            size: 0,
        })
    }

    fn block(&mut self, last: bool) -> io::Result<()> {
        let n = self.buf.len() as u16;
        let head = [
            u8::from(last),
            n as u8,
            (n >> 8) as u8,
            !n as u8,
            (!n >> 8) as u8,
        ];
        self.out.write_all(&head)?;
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.block(true)?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.value().to_le_bytes());
        trailer[4..].copy_from_slice(&self.size.to_le_bytes());
        self.out.write_all(&trailer)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for StoredWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.crc.update(&data[..n]);
        self.size = self.size.wrapping_add(n as u32);
        if self.buf.len() == BLOCK {
            self.block(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads what `StoredWriter` wrote: checks the header, the block framing, the CRC and the size.
/// Any other gzip (compressed blocks, other flags) is an error.
pub struct StoredReader<R: Read> {
    inner: R,
    /// Bytes left in the current block.
    left: usize,
    last: bool,
    done: bool,
    crc: Crc32,
    size: u32,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl<R: Read> StoredReader<R> {
    pub fn new(mut inner: R) -> io::Result<StoredReader<R>> {
        let mut head = [0u8; HEADER.len()];
        inner.read_exact(&mut head)?;
        if head != HEADER {
            return Err(bad("not a haul-tar gzip header".into()));
        }
        Ok(StoredReader {
            inner,
            left: 0,
            last: false,
            done: false,
            crc: Crc32::new(),
            size: 0,
        })
    }

    fn next_block(&mut self) -> io::Result<()> {
        let mut h = [0u8; 5];
        self.inner.read_exact(&mut h)?;
        if h[0] & !1 != 0 {
            return Err(bad(format!(
                "block header {:#04x}: not a stored block",
                h[0]
            )));
        }
        let n = u16::from_le_bytes([h[1], h[2]]);
        if !n != u16::from_le_bytes([h[3], h[4]]) {
            return Err(bad("stored block length and its complement disagree".into()));
        }
        self.last = h[0] & 1 == 1;
        self.left = usize::from(n);
        Ok(())
    }

    fn trailer(&mut self) -> io::Result<()> {
        let mut t = [0u8; 8];
        self.inner.read_exact(&mut t)?;
        let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        if crc != self.crc.value() || size != self.size {
            return Err(bad("gzip trailer: CRC or size mismatch".into()));
        }
        self.done = true;
        Ok(())
    }
}

impl<R: Read> Read for StoredReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            if self.left > 0 {
                let want = out.len().min(self.left);
                let n = self.inner.read(&mut out[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.left -= n;
                self.crc.update(&out[..n]);
                self.size = self.size.wrapping_add(n as u32);
                return Ok(n);
            }
            if self.last {
                self.trailer()?;
                continue;
            }
            self.next_block()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_the_check_string() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_across_block_boundaries() {
        for len in [0usize, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut w = StoredWriter::new(Vec::new()).unwrap();
            w.write_all(&data).unwrap();
            let gz = w.finish().unwrap();
            let mut back = Vec::new();
            StoredReader::new(&gz[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
        }
    }

    #[test]
    fn gnu_gzip_reads_it() {
        let data = b"haul writes stored blocks\n".repeat(5000);
        let mut w = StoredWriter::new(Vec::new()).unwrap();
        w.write_all(&data).unwrap();
        let gz = w.finish().unwrap();
        let mut child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&gz));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn damage_is_detected() {
        let mut w = StoredWriter::new(Vec::new()).unwrap();
        w.write_all(b"some bytes").unwrap();
        let gz = w.finish().unwrap();
        let read = |b: &[u8]| -> io::Result<Vec<u8>> {
            let mut v = Vec::new();
            StoredReader::new(b)?.read_to_end(&mut v)?;
            Ok(v)
        };
        // A flipped data byte: the CRC; a cut: EOF; GNU's compressed gzip: the header.
        let mut flipped = gz.clone();
        let at = HEADER.len() + 5;
        flipped[at] ^= 1;
        assert!(read(&flipped).is_err());
        assert!(read(&gz[..gz.len() - 3]).is_err());
        assert!(read(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03").is_err());
        let mut compressed = gz.clone();
        compressed[HEADER.len()] = 0x03; // BTYPE 01, final
        assert!(read(&compressed).is_err());
        assert_eq!(read(&gz).unwrap(), b"some bytes");
    }
}
