//! CRIU's page-server protocol, the part haul reads: every request and every reply starts with
//! CRIU's `struct page_server_iov` in the host's byte order: a u32 command (flags in its high 16
//! bits), the page count, a u64 address and a u64 image id. The page count was a u32 up to
//! CRIU 4.1 (a 24-byte header) and is a u64 from 4.2 on (4 bytes of padding after the command:
//! 32 bytes): `Layout`. A GET (lazy-pages daemon to the dump's page server) is answered by an
//! ADD_F header and that many pages; a CLOSE or FORCE_CLOSE by a 4-byte status.

use super::Version;

/// The longest header (CRIU 4.2 on).
pub const HEADER: usize = 32;

/// The header's layout, which depends on the CRIU version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Up to CRIU 4.1: u32 command, u32 pages, u64 address, u64 id (24 bytes).
    Narrow,
    /// CRIU 4.2 on: u32 command, 4 bytes of padding, u64 pages, u64 address, u64 id (32 bytes).
    Wide,
}

impl Layout {
    /// The layout CRIU `v` speaks.
    pub fn of(v: Version) -> Layout {
        let wide = Version {
            major: 4,
            minor: 2,
            sublevel: 0,
        };
        if v >= wide {
            Layout::Wide
        } else {
            Layout::Narrow
        }
    }

    /// Bytes of a header.
    pub fn header_len(self) -> usize {
        match self {
            Layout::Narrow => 24,
            Layout::Wide => 32,
        }
    }
}
/// Opens the page map of one image (a task's or a shared segment's); answered by one byte: 1
/// if the page server has a parent image of it.
pub const IOV_OPEN2: u32 = 4;
/// Is there a parent image of this one? Answered by a 4-byte int.
pub const IOV_PARENT: u32 = 5;
/// Pages of the range starting at `vaddr`, please (lazy-pages daemon).
pub const IOV_GET: u32 = 7;
/// Here are pages (also the answer to a GET).
pub const IOV_ADD_F: u32 = 6;
/// End of the session; answered by a 4-byte status.
pub const IOV_CLOSE: u32 = 0x1023;
/// The same, when the server cannot see the socket close (`--ps-socket`).
pub const IOV_FORCE_CLOSE: u32 = 0x1024;
/// Size of the answer to a close.
pub const CLOSE_STATUS: usize = 4;
/// Flag of an ADD_F: the pages are in the parent image (CRIU's PE_PARENT).
pub const PE_PARENT: u32 = 1 << 0;
/// Flag of an ADD_F: the pages may be restored lazily (CRIU's PE_LAZY).
pub const PE_LAZY: u32 = 1 << 1;
/// Flag of an ADD_F: the pages follow (CRIU's PE_PRESENT).
pub const PE_PRESENT: u32 = 1 << 2;
/// Every flag an ADD_F may carry (criu/include/pagemap.h).
pub const PE_FLAGS: u32 = PE_PARENT | PE_LAZY | PE_PRESENT;
const CMD_BITS: u32 = 16;

/// One `page_server_iov`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iov {
    pub cmd: u32,
    pub nr_pages: u64,
    pub vaddr: u64,
    pub dst_id: u64,
}

impl Iov {
    pub fn get(dst_id: u64, vaddr: u64, nr_pages: u64) -> Iov {
        Iov {
            cmd: IOV_GET,
            nr_pages,
            vaddr,
            dst_id,
        }
    }

    /// The page server's answer carrying `nr_pages` pages from `vaddr`.
    pub fn pages(dst_id: u64, vaddr: u64, nr_pages: u64) -> Iov {
        Iov {
            cmd: (PE_PRESENT << CMD_BITS) | IOV_ADD_F,
            nr_pages,
            vaddr,
            dst_id,
        }
    }

    /// The command without its flags.
    pub fn command(&self) -> u32 {
        self.cmd & ((1 << CMD_BITS) - 1)
    }

    /// Decodes a header of `layout.header_len()` bytes (None if `b` is shorter).
    pub fn decode(b: &[u8], layout: Layout) -> Option<Iov> {
        let u32_at = |i: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        Some(match layout {
            Layout::Narrow => Iov {
                cmd: u32_at(0)?,
                nr_pages: u64::from(u32_at(4)?),
                vaddr: u64_at(8)?,
                dst_id: u64_at(16)?,
            },
            Layout::Wide => Iov {
                cmd: u32_at(0)?,
                nr_pages: u64_at(8)?,
                vaddr: u64_at(16)?,
                dst_id: u64_at(24)?,
            },
        })
    }

    /// The header in `layout`: the first `layout.header_len()` bytes. A page count over u32 in the
    /// narrow layout is cut to u32::MAX (haul never asks for that many).
    pub fn encode(&self, layout: Layout) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[..4].copy_from_slice(&self.cmd.to_ne_bytes());
        match layout {
            Layout::Narrow => {
                let n = u32::try_from(self.nr_pages).unwrap_or(u32::MAX);
                b[4..8].copy_from_slice(&n.to_ne_bytes());
                b[8..16].copy_from_slice(&self.vaddr.to_ne_bytes());
                b[16..24].copy_from_slice(&self.dst_id.to_ne_bytes());
            }
            Layout::Wide => {
                b[8..16].copy_from_slice(&self.nr_pages.to_ne_bytes());
                b[16..24].copy_from_slice(&self.vaddr.to_ne_bytes());
                b[24..32].copy_from_slice(&self.dst_id.to_ne_bytes());
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_layout_is_criu_4_2_s() {
        let g = Iov::get(42, 0x7f00_0000_1000, 16);
        let b = g.encode(Layout::Wide);
        assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()), 7);
        assert_eq!(&b[4..8], &[0; 4], "padding");
        assert_eq!(u64::from_ne_bytes(b[8..16].try_into().unwrap()), 16);
        assert_eq!(
            u64::from_ne_bytes(b[16..24].try_into().unwrap()),
            0x7f00_0000_1000
        );
        assert_eq!(u64::from_ne_bytes(b[24..].try_into().unwrap()), 42);
        assert_eq!(Iov::decode(&b, Layout::Wide), Some(g));
        let a = Iov::pages(42, 0x1000, 1);
        assert_eq!(a.command(), IOV_ADD_F);
        assert_eq!(a.cmd, 0x0004_0006);
    }

    #[test]
    fn narrow_layout_is_criu_4_1_s() {
        let g = Iov::get(42, 0x7f00_0000_1000, 16);
        let b = g.encode(Layout::Narrow);
        assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), 16);
        assert_eq!(
            u64::from_ne_bytes(b[8..16].try_into().unwrap()),
            0x7f00_0000_1000
        );
        assert_eq!(u64::from_ne_bytes(b[16..24].try_into().unwrap()), 42);
        assert_eq!(&b[24..], &[0; 8], "not part of the header");
        assert_eq!(Iov::decode(&b[..24], Layout::Narrow), Some(g));
        assert_eq!(Iov::decode(&b[..23], Layout::Narrow), None);
    }

    #[test]
    fn the_layout_follows_the_version() {
        let v = |minor, sublevel| Version {
            major: 4,
            minor,
            sublevel,
        };
        assert_eq!(Layout::of(v(1, 1)), Layout::Narrow);
        assert_eq!(Layout::of(v(0, 0)), Layout::Narrow);
        assert_eq!(Layout::of(v(2, 0)), Layout::Wide);
        assert_eq!(Layout::Narrow.header_len(), 24);
        assert_eq!(Layout::Wide.header_len(), HEADER);
    }
}
