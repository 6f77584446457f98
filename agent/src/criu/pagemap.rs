//! Reads CRIU's `pagemap-<id>.img`: which address ranges of a task the dump recorded, and how.
//! On the destination of a `--lazy` migration haul needs the lazy ones: the source's page
//! server holds exactly those, and a request for any other address makes it fail (see
//! `dest::prefetch`).
//!
//! Layout: two little-endian u32 magics (images, pagemap), then records of a u32 length and a
//! protobuf message: one `pagemap_head`, then one `pagemap_entry` per run of pages.

use haul_proto::criu::{PagemapEntry, PagemapHead};
use prost::Message;
use std::path::Path;

const MAGIC_IMG_COMMON: u32 = 0x5456_4319;
const MAGIC_PAGEMAP: u32 = 0x5608_4025;
/// Longest record `write_entry` makes: a length word and an entry of five fields at their
/// largest (11 + 6 + 2 + 6 + 11 bytes).
pub const RECORD_MAX: usize = 4 + 36;
/// Pages are in the source's page server, to be fetched on demand (CRIU's PE_LAZY).
pub use super::page_server::PE_LAZY;
/// A pagemap file larger than this is refused (~70 000 entries: far more runs of pages than a
/// container's tasks have).
pub const PAGEMAP_MAX: usize = 1 << 20;
/// An entry is five small fields; a record longer than this is not a pagemap entry.
const ENTRY_MAX: usize = 64;

/// A run of pages, in bytes: `start..end`.
pub type Range = (u64, u64);

/// A lazy run of a pagemap image: `start..end`, and where its pages are in the image's pages
/// file (`pages-<pages_id>.img`) when the dump wrote them there (PE_PRESENT; not in a `--lazy`
/// dump, whose lazy pages stay at the source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub end: u64,
    pub offset: Option<u64>,
}

/// A parsed pagemap image: the pages file it names and its lazy runs, sorted by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyMap {
    pub pages_id: u32,
    pub extents: Vec<Extent>,
}

/// The lazy ranges of a pagemap image, one per entry, sorted by address. `page` is the
/// page size the image was written with (the host's).
pub fn lazy_ranges(bytes: &[u8], page: u64) -> Result<Vec<Range>, String> {
    Ok(lazy_map(bytes, page)?
        .extents
        .iter()
        .map(|e| (e.start, e.end))
        .collect())
}

/// The lazy runs of a pagemap image with their offsets in its pages file. Pages of entries
/// with PE_PRESENT follow each other in the pages file in the order of the entries.
pub fn lazy_map(bytes: &[u8], page: u64) -> Result<LazyMap, String> {
    let word = |i: usize| image_word(bytes, i);
    if word(0)? != MAGIC_IMG_COMMON || word(4)? != MAGIC_PAGEMAP {
        return Err("not a pagemap image (magic)".into());
    }
    let mut at = 8usize;
    let mut pages_id = None;
    let mut offset = 0u64;
    let mut extents: Vec<Extent> = Vec::new();
    while at < bytes.len() {
        let len = usize::try_from(word(at)?).map_err(|e| e.to_string())?;
        if len > ENTRY_MAX {
            return Err(format!(
                "a record of {len} bytes at byte {at}; the limit is {ENTRY_MAX}"
            ));
        }
        let body = bytes
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| format!("record at byte {at} cut short"))?;
        at += 4 + len;
        if pages_id.is_none() {
            let h = PagemapHead::decode(body).map_err(|e| format!("pagemap head: {e}"))?;
            pages_id = Some(h.pages_id);
            continue;
        }
        let e = PagemapEntry::decode(body).map_err(|e| format!("pagemap entry: {e}"))?;
        let flags = e.flags.unwrap_or(0);
        let pages = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
        let bytes_of = pages
            .checked_mul(page)
            .ok_or_else(|| format!("entry at {:#x} of {pages} pages overflows", e.vaddr))?;
        let end = e
            .vaddr
            .checked_add(bytes_of)
            .ok_or_else(|| format!("entry at {:#x} of {pages} pages overflows", e.vaddr))?;
        let present = flags & super::page_server::PE_PRESENT != 0;
        let here = present.then_some(offset);
        if present {
            offset = offset
                .checked_add(bytes_of)
                .ok_or_else(|| "pages file offset overflows".to_string())?;
        }
        if flags & PE_LAZY == 0 {
            continue;
        }
        if e.vaddr % page != 0 || pages == 0 {
            return Err(format!("entry at {:#x} of {pages} pages", e.vaddr));
        }
        extents.push(Extent {
            start: e.vaddr,
            end,
            offset: here,
        });
    }
    let Some(pages_id) = pages_id else {
        return Err("no pagemap head".into());
    };
    extents.sort_unstable_by_key(|e| e.start);
    // Adjacent entries stay apart: the source's page server holds each as its own run and
    // answers a question crossing from one to the next short.
    if let Some(w) = extents.windows(2).find(|w| w[1].start < w[0].end) {
        return Err(format!("overlapping entries at {:#x}", w[1].start));
    }
    Ok(LazyMap { pages_id, extents })
}

/// Reads `pagemap-<id>.img` in `dir` (at most `PAGEMAP_MAX` bytes) as a `LazyMap`.
pub fn read_lazy_map(dir: &Path, id: u64, page: u64) -> Result<LazyMap, String> {
    let path = dir.join(format!("pagemap-{id}.img"));
    let bytes = crate::util::read_bounded(&path, PAGEMAP_MAX)?;
    lazy_map(&bytes, page).map_err(|e| format!("{}: {e}", path.display()))
}

/// The little-endian u32 at byte `i` of a CRIU image (magics, record lengths).
pub(crate) fn image_word(bytes: &[u8], i: usize) -> Result<u32, String> {
    bytes
        .get(i..i.saturating_add(4))
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| format!("cut short at byte {i}"))
}

/// The start of a pagemap image as CRIU writes it: the magics and the head naming
/// `pages-<pages_id>.img`.
pub fn image_start(pages_id: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&MAGIC_IMG_COMMON.to_le_bytes());
    b.extend_from_slice(&MAGIC_PAGEMAP.to_le_bytes());
    let head = PagemapHead { pages_id };
    b.extend_from_slice(&(head.encoded_len() as u32).to_le_bytes());
    head.encode(&mut b).unwrap_or_default();
    b
}

/// Appends the record of one entry (a run of `nr_pages` pages at `vaddr`) to `out`. CRIU up
/// to 4.1 reads the count from field 2, 4.2 on from field 5 (`wide`, which 4.1 skips), so both
/// carry it when the restoring CRIU is 4.2 or newer.
pub fn write_entry(out: &mut Vec<u8>, vaddr: u64, nr_pages: u64, flags: u32, wide: bool) {
    let e = PagemapEntry {
        vaddr,
        compat_nr_pages: u32::try_from(nr_pages).unwrap_or(u32::MAX),
        in_parent: None,
        flags: Some(flags),
        nr_pages: wide.then_some(nr_pages),
    };
    out.extend_from_slice(&(e.encoded_len() as u32).to_le_bytes());
    e.encode(out).unwrap_or_default();
}

/// Reads `pagemap-<id>.img` in `dir` (at most `PAGEMAP_MAX` bytes).
pub fn read_lazy_ranges(dir: &Path, id: u64, page: u64) -> Result<Vec<Range>, String> {
    let path = dir.join(format!("pagemap-{id}.img"));
    let bytes = crate::util::read_bounded(&path, PAGEMAP_MAX)?;
    lazy_ranges(&bytes, page).map_err(|e| format!("{}: {e}", path.display()))
}

/// The range of `ranges` (sorted, disjoint) that holds `addr`.
pub fn containing(ranges: &[Range], addr: u64) -> Option<Range> {
    let i = ranges.partition_point(|r| r.1 <= addr);
    ranges.get(i).copied().filter(|r| r.0 <= addr)
}

/// A pagemap image of `entries` (vaddr, pages, flags), as CRIU writes it (tests).
#[cfg(test)]
pub fn test_image(entries: &[(u64, u32, u32)]) -> Vec<u8> {
    let e: Vec<PagemapEntry> = entries
        .iter()
        .map(|&(vaddr, pages, flags)| PagemapEntry {
            vaddr,
            compat_nr_pages: pages,
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(u64::from(pages)),
        })
        .collect();
    tests::image(&e)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn image(entries: &[PagemapEntry]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC_IMG_COMMON.to_le_bytes());
        b.extend_from_slice(&MAGIC_PAGEMAP.to_le_bytes());
        let mut rec = |m: Vec<u8>| {
            b.extend_from_slice(&(m.len() as u32).to_le_bytes());
            b.extend_from_slice(&m);
        };
        rec(PagemapHead { pages_id: 1 }.encode_to_vec());
        for e in entries {
            rec(e.encode_to_vec());
        }
        b
    }

    fn entry(vaddr: u64, pages: u32, flags: u32) -> PagemapEntry {
        PagemapEntry {
            vaddr,
            compat_nr_pages: pages,
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(u64::from(pages)),
        }
    }

    #[test]
    fn lazy_entries_only_sorted_apart() {
        let img = image(&[
            entry(0x7000, 2, PE_LAZY | 4),
            entry(0x1000, 1, 4),
            entry(0x3000, 4, PE_LAZY | 4),
            entry(0x9000, 1, PE_LAZY),
        ]);
        let r = lazy_ranges(&img, 4096).unwrap();
        assert_eq!(
            r,
            vec![(0x3000, 0x7000), (0x7000, 0x9000), (0x9000, 0xa000)]
        );
        assert_eq!(containing(&r, 0x3000), Some((0x3000, 0x7000)));
        assert_eq!(containing(&r, 0x7000), Some((0x7000, 0x9000)));
        assert_eq!(containing(&r, 0x9fff), Some((0x9000, 0xa000)));
        assert_eq!(containing(&r, 0xa000), None);
        assert_eq!(containing(&r, 0x2fff), None);
    }

    /// A real lazy dump of `sleep` by CRIU 4.1.1 (fixtures/criu-4.1.1-lazy/SOURCE.md): 15 lazy
    /// pages of 5 VMAs in 7 runs, the other entries left out.
    #[test]
    fn a_real_lazy_pagemap() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/criu-4.1.1-lazy/pagemap-sleep.img"
        );
        let bytes = std::fs::read(path).unwrap();
        let r = lazy_ranges(&bytes, 4096).unwrap();
        let pages: Vec<u64> = r.iter().map(|(s, e)| (e - s) / 4096).collect();
        assert_eq!(pages.iter().sum::<u64>(), 15, "{r:x?}");
        // Five VMAs hold lazy pages; two of them in two runs each (pages absent between).
        assert_eq!(pages.len(), 7, "{r:x?}");
        assert!(r.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn the_compat_count_is_used_without_nr_pages() {
        let mut e = entry(0x10000, 3, PE_LAZY);
        e.nr_pages = None;
        assert_eq!(
            lazy_ranges(&image(&[e]), 4096).unwrap(),
            vec![(0x10000, 0x13000)]
        );
    }

    #[test]
    fn malformed_images_are_errors() {
        let good = image(&[entry(0x1000, 1, PE_LAZY)]);
        assert!(lazy_ranges(&good[..good.len() - 1], 4096).is_err());
        assert!(lazy_ranges(&good[4..], 4096).is_err());
        assert!(lazy_ranges(&good[..8], 4096).is_err(), "no head");
        assert!(lazy_ranges(&image(&[entry(0x1001, 1, PE_LAZY)]), 4096).is_err());
        assert!(lazy_ranges(&image(&[entry(!0xfff, 2, PE_LAZY)]), 4096).is_err());
        let overlap = image(&[entry(0x1000, 2, PE_LAZY), entry(0x2000, 1, PE_LAZY)]);
        assert!(lazy_ranges(&overlap, 4096).is_err());
        let mut long = good.clone();
        long.extend_from_slice(&1000u32.to_le_bytes());
        long.extend_from_slice(&[0u8; 1000]);
        assert!(lazy_ranges(&long, 4096).unwrap_err().contains("limit"));
    }
}
