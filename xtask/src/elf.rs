//! A reader for the parts of 64-bit little-endian ELF files that `dist` and `size` look at:
//! the header, program header types, section headers and the symbol table. Every read is
//! bounds-checked; a short or inconsistent file is an error, never a panic.
//!
//! Layouts from the System V ABI (gABI) "ELF-64 Object File Format": header 64 bytes, program
//! header 56, section header 64, symbol 24.

use std::fmt;

pub const ET_EXEC: u16 = 2;
pub const PT_DYNAMIC: u32 = 2;
pub const PT_INTERP: u32 = 3;
pub const SHT_SYMTAB: u32 = 2;
pub const SHT_DYNAMIC: u32 = 6;
pub const STT_OBJECT: u8 = 1;
pub const STT_FUNC: u8 = 2;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;

/// A parsed ELF header over the whole file's bytes.
#[derive(Debug)]
pub struct Elf<'a> {
    data: &'a [u8],
    pub e_type: u16,
    pub machine: u16,
    phoff: usize,
    phnum: usize,
    shoff: usize,
    shnum: usize,
    shstrndx: usize,
}

/// One section header, with its name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub kind: u32,
    pub offset: usize,
    pub size: u64,
    pub link: u32,
}

/// One symbol of `.symtab`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub kind: u8,
    pub shndx: u16,
    pub value: u64,
    pub size: u64,
}

/// What was wrong with the file: a field that points outside it, or a header that is not
/// ELF64 little-endian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ELF: {}", self.0)
    }
}

fn err<T>(what: impl Into<String>) -> Result<T, Error> {
    Err(Error(what.into()))
}

fn bytes<'a>(data: &'a [u8], off: usize, len: usize, what: &str) -> Result<&'a [u8], Error> {
    off.checked_add(len)
        .and_then(|end| data.get(off..end))
        .ok_or_else(|| {
            Error(format!(
                "{what}: {len} bytes at offset {off} are past the end ({} bytes)",
                data.len()
            ))
        })
}

fn u16_at(d: &[u8], off: usize, what: &str) -> Result<u16, Error> {
    let b = bytes(d, off, 2, what)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(d: &[u8], off: usize, what: &str) -> Result<u32, Error> {
    let mut a = [0u8; 4];
    a.copy_from_slice(bytes(d, off, 4, what)?);
    Ok(u32::from_le_bytes(a))
}

fn u64_at(d: &[u8], off: usize, what: &str) -> Result<u64, Error> {
    let mut a = [0u8; 8];
    a.copy_from_slice(bytes(d, off, 8, what)?);
    Ok(u64::from_le_bytes(a))
}

fn usize_of(v: u64, what: &str) -> Result<usize, Error> {
    usize::try_from(v).or_else(|_| err(format!("{what} {v} does not fit in memory")))
}

impl<'a> Elf<'a> {
    /// Reads the ELF header of `data`.
    pub fn parse(data: &'a [u8]) -> Result<Self, Error> {
        let ident = bytes(data, 0, 16, "identification")?;
        if &ident[..4] != b"\x7fELF" {
            return err("not an ELF file (no \\x7fELF magic)");
        }
        if ident[4] != 2 || ident[5] != 1 {
            return err(format!(
                "class {} data {}: only ELF64 little-endian (class 2, data 1) is supported",
                ident[4], ident[5]
            ));
        }
        bytes(data, 0, EHDR_SIZE, "ELF header")?;
        let phentsize = u16_at(data, 54, "e_phentsize")?;
        let shentsize = u16_at(data, 58, "e_shentsize")?;
        let phnum = usize::from(u16_at(data, 56, "e_phnum")?);
        let shnum = usize::from(u16_at(data, 60, "e_shnum")?);
        if phnum > 0 && usize::from(phentsize) != PHDR_SIZE {
            return err(format!("e_phentsize {phentsize}, expected {PHDR_SIZE}"));
        }
        if shnum > 0 && usize::from(shentsize) != SHDR_SIZE {
            return err(format!("e_shentsize {shentsize}, expected {SHDR_SIZE}"));
        }
        let elf = Elf {
            data,
            e_type: u16_at(data, 16, "e_type")?,
            machine: u16_at(data, 18, "e_machine")?,
            phoff: usize_of(u64_at(data, 32, "e_phoff")?, "e_phoff")?,
            phnum,
            shoff: usize_of(u64_at(data, 40, "e_shoff")?, "e_shoff")?,
            shnum,
            shstrndx: usize::from(u16_at(data, 62, "e_shstrndx")?),
        };
        // Both tables must lie inside the file.
        bytes(
            data,
            elf.phoff,
            table_len(phnum, PHDR_SIZE)?,
            "program header table",
        )?;
        bytes(
            data,
            elf.shoff,
            table_len(shnum, SHDR_SIZE)?,
            "section header table",
        )?;
        Ok(elf)
    }

    /// `p_type` of every program header, in order.
    pub fn segment_types(&self) -> Result<Vec<u32>, Error> {
        (0..self.phnum)
            .map(|i| u32_at(self.data, self.phoff + i * PHDR_SIZE, "p_type"))
            .collect()
    }

    /// Every section header, with names from the section name string table.
    pub fn sections(&self) -> Result<Vec<Section>, Error> {
        let raw: Vec<(u32, Section)> = (0..self.shnum)
            .map(|i| {
                let h = self.shoff + i * SHDR_SIZE;
                Ok((
                    u32_at(self.data, h, "sh_name")?,
                    Section {
                        name: String::new(),
                        kind: u32_at(self.data, h + 4, "sh_type")?,
                        offset: usize_of(u64_at(self.data, h + 24, "sh_offset")?, "sh_offset")?,
                        size: u64_at(self.data, h + 32, "sh_size")?,
                        link: u32_at(self.data, h + 40, "sh_link")?,
                    },
                ))
            })
            .collect::<Result<_, Error>>()?;
        let strtab = match raw.get(self.shstrndx) {
            Some((_, s)) if self.shstrndx != 0 => Some(self.contents(s)?),
            _ => None,
        };
        raw.into_iter()
            .map(|(name_off, mut s)| {
                if let Some(t) = strtab {
                    s.name = c_string(t, name_off, "section name")?;
                }
                Ok(s)
            })
            .collect()
    }

    /// The symbols of `.symtab` (an empty list when the file is stripped).
    pub fn symbols(&self) -> Result<Vec<Symbol>, Error> {
        let sections = self.sections()?;
        let Some(symtab) = sections.iter().find(|s| s.kind == SHT_SYMTAB) else {
            return Ok(Vec::new());
        };
        let strtab = match sections.get(usize_of(u64::from(symtab.link), "sh_link")?) {
            Some(s) => self.contents(s)?,
            None => {
                return err(format!(
                    "symbol table links to missing section {}",
                    symtab.link
                ))
            }
        };
        let table = self.contents(symtab)?;
        table
            .chunks_exact(SYM_SIZE)
            .map(|e| {
                let info = bytes(e, 4, 1, "st_info")?[0];
                Ok(Symbol {
                    name: c_string(strtab, u32_at(e, 0, "st_name")?, "symbol name")?,
                    kind: info & 0xf,
                    shndx: u16_at(e, 6, "st_shndx")?,
                    value: u64_at(e, 8, "st_value")?,
                    size: u64_at(e, 16, "st_size")?,
                })
            })
            .collect()
    }

    fn contents(&self, s: &Section) -> Result<&'a [u8], Error> {
        let len = usize_of(s.size, "sh_size")?;
        bytes(
            self.data,
            s.offset,
            len,
            &format!("contents of section {:?}", s.name),
        )
    }
}

fn table_len(n: usize, entry: usize) -> Result<usize, Error> {
    n.checked_mul(entry)
        .ok_or_else(|| Error(format!("{n} entries of {entry} bytes overflow")))
}

/// The NUL-terminated string at `off` in a string table.
fn c_string(table: &[u8], off: u32, what: &str) -> Result<String, Error> {
    let start = usize_of(u64::from(off), what)?;
    let rest = table
        .get(start..)
        .ok_or_else(|| Error(format!("{what} at {start} is past its string table")))?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| Error(format!("{what} at {start} has no terminating NUL")))?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A minimal ELF64 file: two program headers of the given types and sections
    /// null, .shstrtab, .symtab (one null and one function symbol "main", 16 bytes), .strtab.
    pub fn sample(segments: &[u32], e_type: u16) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.symtab\0.strtab\0".to_vec();
        let strtab = b"\0main\0".to_vec();
        let mut symtab = vec![0u8; SYM_SIZE];
        let mut main = vec![0u8; SYM_SIZE];
        main[0..4].copy_from_slice(&1u32.to_le_bytes());
        main[4] = STT_FUNC;
        main[6..8].copy_from_slice(&1u16.to_le_bytes());
        main[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        main[16..24].copy_from_slice(&16u64.to_le_bytes());
        symtab.extend(main);

        let phoff = EHDR_SIZE;
        let data_off = phoff + segments.len() * PHDR_SIZE;
        let mut blobs = Vec::new();
        let mut off = data_off;
        for b in [&shstrtab, &symtab, &strtab] {
            blobs.push((off, b.len()));
            off += b.len();
        }
        let shoff = off;

        let mut f = vec![0u8; EHDR_SIZE];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&e_type.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        f[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        f[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        f[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        f[58..60].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        f[60..62].copy_from_slice(&4u16.to_le_bytes());
        f[62..64].copy_from_slice(&1u16.to_le_bytes());
        for &t in segments {
            let mut p = vec![0u8; PHDR_SIZE];
            p[..4].copy_from_slice(&t.to_le_bytes());
            f.extend(p);
        }
        f.extend(&shstrtab);
        f.extend(&symtab);
        f.extend(&strtab);
        f.extend(vec![0u8; SHDR_SIZE]);
        // (name offset in .shstrtab, type, blob, link)
        for (name, kind, (o, len), link) in [
            (1u32, 3u32, blobs[0], 0u32),
            (11, SHT_SYMTAB, blobs[1], 3),
            (19, 3, blobs[2], 0),
        ] {
            let mut s = vec![0u8; SHDR_SIZE];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[24..32].copy_from_slice(&(o as u64).to_le_bytes());
            s[32..40].copy_from_slice(&(len as u64).to_le_bytes());
            s[40..44].copy_from_slice(&link.to_le_bytes());
            f.extend(s);
        }
        f
    }

    #[test]
    fn reads_segments_sections_and_symbols() {
        let f = sample(&[1, PT_INTERP], ET_EXEC);
        let elf = Elf::parse(&f).unwrap();
        assert_eq!((elf.e_type, elf.machine), (ET_EXEC, 62));
        assert_eq!(elf.segment_types().unwrap(), vec![1, PT_INTERP]);
        let names: Vec<_> = elf
            .sections()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["", ".shstrtab", ".symtab", ".strtab"]);
        let syms = elf.symbols().unwrap();
        assert_eq!(syms.len(), 2);
        assert_eq!(
            (syms[1].name.as_str(), syms[1].kind, syms[1].size),
            ("main", STT_FUNC, 16)
        );
    }

    #[test]
    fn every_truncation_and_bad_header_is_an_error_not_a_panic() {
        let f = sample(&[1, 6], ET_EXEC);
        for len in 0..f.len() {
            let cut = &f[..len];
            if let Ok(elf) = Elf::parse(cut) {
                let _ = elf.segment_types();
                let _ = elf.symbols();
            }
        }
        let mut wrong_class = f.clone();
        wrong_class[4] = 1;
        assert!(Elf::parse(&wrong_class)
            .unwrap_err()
            .to_string()
            .contains("ELF64"));
        assert!(Elf::parse(b"#!/bin/sh\n").is_err());
        let mut far_table = f;
        far_table[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Elf::parse(&far_table).is_err());
    }
}
