//! Reads the VMA bounds of CRIU's `mm-<pid>.img`. A userfaultfd copy must stay inside one VMA,
//! and one pagemap entry can cover two adjacent VMAs, so the destination splits lazy runs where
//! a VMA ends (`dest::fill`).
//!
//! Layout: two little-endian u32 magics (images, mm), then one record: a u32 length and an
//! `mm_entry` whose field 14 repeats `vma_entry` (start = 1, end = 2).

use super::pagemap::Range;
use haul_proto::criu::MmEntry;
use prost::Message;
use std::path::Path;

const MAGIC_IMG_COMMON: u32 = 0x5456_4319;
const MAGIC_MM: u32 = 0x5749_2820;
/// An mm image larger than this is refused: a VMA record is ~40 bytes, so ~25 000 VMAs
/// (Linux's default vm.max_map_count is 65530, but containers' tasks have hundreds).
pub const MM_MAX: usize = 1 << 20;

/// The VMAs of an mm image, sorted by address; each `start < end`, none overlapping.
pub fn vmas(bytes: &[u8]) -> Result<Vec<Range>, String> {
    let word = |i: usize| super::pagemap::image_word(bytes, i);
    if word(0)? != MAGIC_IMG_COMMON || word(4)? != MAGIC_MM {
        return Err("not an mm image (magic)".into());
    }
    let len = usize::try_from(word(8)?).map_err(|e| e.to_string())?;
    let body = bytes
        .get(12..12usize.saturating_add(len))
        .ok_or_else(|| format!("record of {len} bytes cut short"))?;
    let mm = MmEntry::decode(body).map_err(|e| format!("mm entry: {e}"))?;
    let mut v: Vec<Range> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    if let Some(bad) = v.iter().find(|r| r.0 >= r.1) {
        return Err(format!(
            "a VMA {:#x}-{:#x} that ends before it starts",
            bad.0, bad.1
        ));
    }
    v.sort_unstable();
    if let Some(w) = v.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(format!("overlapping VMAs at {:#x}", w[1].0));
    }
    Ok(v)
}

/// Reads `mm-<pid>.img` in `dir` (at most `MM_MAX` bytes).
pub fn read_vmas(dir: &Path, pid: i32) -> Result<Vec<Range>, String> {
    let path = dir.join(format!("mm-{pid}.img"));
    let bytes = crate::util::read_bounded(&path, MM_MAX)?;
    vmas(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// An mm image of `vmas`, as CRIU writes it (tests).
#[cfg(test)]
pub fn test_image(vmas: &[Range]) -> Vec<u8> {
    use haul_proto::criu::VmaEntry;
    let mm = MmEntry {
        vmas: vmas
            .iter()
            .map(|&(start, end)| VmaEntry { start, end })
            .collect(),
    };
    let mut b = Vec::new();
    b.extend_from_slice(&MAGIC_IMG_COMMON.to_le_bytes());
    b.extend_from_slice(&MAGIC_MM.to_le_bytes());
    b.extend_from_slice(&(mm.encoded_len() as u32).to_le_bytes());
    b.extend_from_slice(&mm.encode_to_vec());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../fixtures/criu-4.1.1-dump/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn image(vmas: &[(u64, u64)]) -> Vec<u8> {
        test_image(vmas)
    }

    /// A real mm image of python3 (fixtures/criu-4.1.1-dump): every lazy run of its pagemap
    /// lies inside one of its VMAs.
    #[test]
    fn a_real_mm_image_holds_the_pagemaps_runs() {
        let v = vmas(&fixture("mm-7542.img")).unwrap();
        assert!(v.len() > 20, "{} VMAs", v.len());
        assert!(v.iter().all(|r| r.0 % 4096 == 0 && r.1 % 4096 == 0));
        let map = super::super::pagemap::lazy_map(&fixture("pagemap-7542.img"), 4096).unwrap();
        assert!(!map.extents.is_empty());
        for e in &map.extents {
            let i = v.partition_point(|r| r.1 <= e.start);
            let vma = v[i];
            assert!(vma.0 <= e.start && e.start < vma.1, "{e:?} in no VMA");
        }
    }

    #[test]
    fn vmas_sorted_and_checked() {
        assert_eq!(
            vmas(&image(&[(0x5000, 0x6000), (0x1000, 0x3000)])).unwrap(),
            [(0x1000, 0x3000), (0x5000, 0x6000)]
        );
        assert!(vmas(&image(&[(0x1000, 0x3000), (0x2000, 0x4000)]))
            .unwrap_err()
            .contains("overlapping"));
        assert!(vmas(&image(&[(0x3000, 0x3000)])).is_err());
        let good = image(&[(0x1000, 0x2000)]);
        assert!(vmas(&good[..good.len() - 1]).is_err());
        assert!(vmas(&good[4..]).is_err());
        assert!(vmas(&[]).is_err());
    }
}
