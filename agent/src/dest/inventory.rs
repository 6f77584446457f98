//! The images' inventory (`inventory.img`), edited before the restore in one respect: CRIU's
//! restore takes its network-lock method from there (field 11 of `inventory_entry`), not from
//! the request. When the destination hands the restore a new network namespace (the source
//! took the container's own as external), nothing there was ever locked; set to "skip", CRIU
//! does not run an unlock that fails (two iptables execs and their errors in restore.log)
//! while the tasks wait.
//!
//! Layout: `INVENTORY_MAGIC` (u32, little-endian), the entry's length (u32), the entry
//! (protobuf). The edit keeps every other byte: the method is rewritten in place when it is a
//! one-byte varint, else a `network_lock_method = skip` field is appended (protobuf's last
//! value wins) and the length updated.

use crate::error::{Context, Error, Kind, Result};
use std::path::Path;

pub const INVENTORY_MAGIC: u32 = 0x5831_3116;
/// Larger than any inventory CRIU writes (~100 bytes; plugin names are the only lists).
pub const INVENTORY_MAX: usize = 16 * 1024;
const FIELD_NETWORK_LOCK_METHOD: u64 = 11;
/// CRIU's `NETWORK_LOCK_SKIP` as stored in images (iptables 0, nftables 1, skip 2; the RPC
/// enum counts from 1).
const LOCK_SKIP: u8 = 2;

/// Sets `network_lock_method` to skip in `img` (a whole inventory file). Returns the edited
/// file, or why the bytes are not an inventory.
pub fn with_lock_skipped(img: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if img.len() < 8 {
        return Err(format!("{} bytes, shorter than its header", img.len()));
    }
    let magic = u32::from_le_bytes([img[0], img[1], img[2], img[3]]);
    if magic != INVENTORY_MAGIC {
        return Err(format!("magic {magic:#010x}, not {INVENTORY_MAGIC:#010x}"));
    }
    let len = u32::from_le_bytes([img[4], img[5], img[6], img[7]]) as usize;
    let entry = &img[8..];
    if entry.len() != len {
        return Err(format!(
            "the entry is {} bytes; its header says {len}",
            entry.len()
        ));
    }
    let mut out = img.to_vec();
    let mut at = 0;
    let mut rewritten = false;
    while at < entry.len() {
        let key = varint(entry, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let start = at;
                let value = varint(entry, &mut at)?;
                if field == FIELD_NETWORK_LOCK_METHOD && at - start == 1 && value < 0x80 {
                    out[8 + start] = LOCK_SKIP;
                    rewritten = true;
                }
            }
            1 => at = skip(entry, at, 8)?,
            2 => {
                let n = varint(entry, &mut at)?;
                let n = usize::try_from(n).map_err(|_| format!("field {field}: length {n}"))?;
                at = skip(entry, at, n)?;
            }
            5 => at = skip(entry, at, 4)?,
            w => return Err(format!("field {field}: wire type {w} at byte {}", 8 + at)),
        }
    }
    if !rewritten {
        // Absent, or not a one-byte varint: a later occurrence wins.
        out.push((FIELD_NETWORK_LOCK_METHOD << 3) as u8);
        out.push(LOCK_SKIP);
        let new_len = u32::try_from(len + 2).map_err(|_| "entry too long".to_string())?;
        out[4..8].copy_from_slice(&new_len.to_le_bytes());
    }
    Ok(out)
}

fn varint(b: &[u8], at: &mut usize) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = b.get(*at) else {
            return Err(format!("varint cut at byte {}", 8 + *at));
        };
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(format!("varint longer than 10 bytes at byte {}", 8 + *at))
}

fn skip(b: &[u8], at: usize, n: usize) -> std::result::Result<usize, String> {
    at.checked_add(n)
        .filter(|&end| end <= b.len())
        .ok_or_else(|| format!("a field runs past the entry's end (byte {})", 8 + at))
}

/// Edits `<images>/inventory.img` so that the restore skips the network lock.
pub fn skip_network_lock(images: &Path) -> Result<()> {
    let path = images.join("inventory.img");
    let bytes = crate::util::read_bounded(&path, INVENTORY_MAX)
        .ctx(Kind::Other, format!("reading {}", path.display()))?;
    let edited = with_lock_skipped(&bytes)
        .map_err(|e| Error::other(format!("{} from the source: {e}", path.display())))?;
    std::fs::write(&path, edited).ctx(Kind::Other, format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/criu-4.1.1-inventory/inventory-external-netns.img"
        ))
        .unwrap()
    }

    /// (field, value) of every varint field, in order.
    fn varints(img: &[u8]) -> Vec<(u64, u64)> {
        let e = &img[8..];
        let (mut at, mut out) = (0, Vec::new());
        while at < e.len() {
            let key = varint(e, &mut at).unwrap();
            match key & 7 {
                0 => out.push((key >> 3, varint(e, &mut at).unwrap())),
                2 => {
                    let n = varint(e, &mut at).unwrap() as usize;
                    at += n;
                }
                w => panic!("wire type {w}"),
            }
        }
        out
    }

    #[test]
    fn criu_s_iptables_method_becomes_skip_in_place() {
        let img = fixture();
        assert!(
            varints(&img).contains(&(11, 0)),
            "the fixture locks with iptables"
        );
        let out = with_lock_skipped(&img).unwrap();
        assert_eq!(out.len(), img.len());
        let changed: Vec<usize> = (0..img.len()).filter(|&i| img[i] != out[i]).collect();
        assert_eq!(changed.len(), 1, "one byte changes");
        assert!(varints(&out).contains(&(11, 2)));
        // Editing again changes nothing.
        assert_eq!(with_lock_skipped(&out).unwrap(), out);
    }

    #[test]
    fn an_inventory_without_the_field_gets_it_appended() {
        // img_version = 2, then root_cg_set = 1: no field 11 (CRIU before 3.16).
        let mut img = INVENTORY_MAGIC.to_le_bytes().to_vec();
        img.extend(4u32.to_le_bytes());
        img.extend([0x08, 0x02, 0x28, 0x01]);
        let out = with_lock_skipped(&img).unwrap();
        assert_eq!(&out[4..8], &6u32.to_le_bytes());
        assert_eq!(varints(&out), vec![(1, 2), (5, 1), (11, 2)]);
    }

    #[test]
    fn what_is_not_an_inventory_is_refused_with_the_reason() {
        let img = fixture();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (img[..5].to_vec(), "shorter than its header"),
            ([&[0u8; 4][..], &img[4..]].concat(), "magic"),
            (img[..img.len() - 1].to_vec(), "its header says"),
            (
                {
                    let mut b = img[..8].to_vec();
                    b[4..8].copy_from_slice(&2u32.to_le_bytes());
                    b.extend([0x0b, 0x00]);
                    b
                },
                "wire type 3",
            ),
            (
                {
                    let mut b = img[..8].to_vec();
                    b[4..8].copy_from_slice(&2u32.to_le_bytes());
                    b.extend([0x12, 0x05]);
                    b
                },
                "runs past",
            ),
            (
                {
                    let mut b = img[..8].to_vec();
                    b[4..8].copy_from_slice(&1u32.to_le_bytes());
                    b.push(0x80);
                    b
                },
                "varint cut",
            ),
        ];
        for (bytes, want) in cases {
            let e = with_lock_skipped(&bytes).unwrap_err();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
    }
}
