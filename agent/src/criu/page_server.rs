//! CRIU's page-server protocol, the part haul reads: every request and every reply starts with
//! CRIU's `struct page_server_iov`, 32 bytes in the host's byte order: a u32 command (flags in
//! its high 16 bits), 4 bytes of padding, then u64 page count, u64 address and u64 image id.
//! A GET (lazy-pages daemon to the dump's page server) is answered by an ADD_F header and that
//! many pages; a CLOSE or FORCE_CLOSE by a 4-byte status.

/// Size of a header.
pub const HEADER: usize = 32;
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
/// Flag of an ADD_F: the pages follow (CRIU's PE_PRESENT).
pub const PE_PRESENT: u32 = 1 << 2;
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

    pub fn decode(b: &[u8; HEADER]) -> Iov {
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_ne_bytes(w)
        };
        Iov {
            cmd: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            nr_pages: u64_at(8),
            vaddr: u64_at(16),
            dst_id: u64_at(24),
        }
    }

    pub fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[..4].copy_from_slice(&self.cmd.to_ne_bytes());
        b[8..16].copy_from_slice(&self.nr_pages.to_ne_bytes());
        b[16..24].copy_from_slice(&self.vaddr.to_ne_bytes());
        b[24..32].copy_from_slice(&self.dst_id.to_ne_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_criu_s() {
        let g = Iov::get(42, 0x7f00_0000_1000, 16);
        let b = g.encode();
        assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()), 7);
        assert_eq!(&b[4..8], &[0; 4], "padding");
        assert_eq!(u64::from_ne_bytes(b[8..16].try_into().unwrap()), 16);
        assert_eq!(
            u64::from_ne_bytes(b[16..24].try_into().unwrap()),
            0x7f00_0000_1000
        );
        assert_eq!(u64::from_ne_bytes(b[24..].try_into().unwrap()), 42);
        assert_eq!(Iov::decode(&b), g);
        let a = Iov::pages(42, 0x1000, 1);
        assert_eq!(a.command(), IOV_ADD_F);
        assert_eq!(a.cmd, 0x0004_0006);
    }
}
