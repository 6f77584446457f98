//! The dumping CRIU's half of the page-server protocol (criu/page-xfer.c), parsed as it
//! arrives, in pieces of any size: what a page server receives from `criu dump --page-server`.
//! haul's destination writes the images itself from these events (`dest::page_images`), in
//! place of CRIU's page server.
//!
//! A dump sends, per task and per shared-memory segment: OPEN2 (answered by one byte: has a
//! parent image), then ADD_F headers, each followed by its pages when its flags say PE_PRESENT;
//! at the end one CLOSE (or FORCE_CLOSE), answered by a 4-byte status. PARENT asks whether a
//! parent image exists (a 4-byte answer). Older commands (ADD, HOLE, OPEN), a GET (lazy-pages
//! daemons ask that of a dump, not of a page server) and anything else are refused.
//!
//! Input is the peer's: every header is checked (known command and flags, an image id of a
//! known kind, a page-aligned run of pages that does not wrap), pages are passed through as
//! the slices they arrived in, and nothing is buffered but one header.

use super::page_server::{
    Iov, Layout, HEADER, IOV_ADD_F, IOV_CLOSE, IOV_FORCE_CLOSE, IOV_OPEN2, IOV_PARENT, PE_FLAGS,
    PE_PRESENT,
};

/// The kind of image an id names (the low 8 bits of a page-server id, criu/page-xfer.c).
const TYPE_BITS: u32 = 8;
const TYPE_TASK: u64 = 1;
const TYPE_SHMEM: u64 = 2;

/// The image a page-server id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// `pagemap-<pid>.img`: the memory of one task.
    Task(u64),
    /// `pagemap-shmem-<shmid>.img`: one shared-memory segment.
    Shmem(u64),
}

impl Image {
    /// The image an id of the protocol names, if it is of a kind CRIU 4 sends.
    pub fn from_id(dst_id: u64) -> Option<Image> {
        let id = dst_id >> TYPE_BITS;
        match dst_id & ((1 << TYPE_BITS) - 1) {
            TYPE_TASK => Some(Image::Task(id)),
            TYPE_SHMEM => Some(Image::Shmem(id)),
            _ => None,
        }
    }

    /// The file name of its page map (criu/image-desc.c).
    pub fn pagemap_name(&self) -> String {
        match self {
            Image::Task(pid) => format!("pagemap-{pid}.img"),
            Image::Shmem(id) => format!("pagemap-shmem-{id}.img"),
        }
    }
}

/// One step of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// OPEN2: the following runs belong to this image; answer one byte (has a parent).
    Open(Image),
    /// PARENT: does this image have a parent? Answer a 4-byte int.
    Parent(Image),
    /// ADD_F: a run of pages of the open image. With `PE_PRESENT` in `flags`, `Pages` events
    /// carrying exactly `nr_pages` pages follow.
    Run {
        vaddr: u64,
        nr_pages: u64,
        flags: u32,
    },
    /// Bytes of the pages of the last run, in order.
    Pages(&'a [u8]),
    /// CLOSE: the dump is complete; answer a 4-byte status. Nothing may follow.
    Close,
}

/// Parser state of one page stream.
#[derive(Debug)]
pub struct PageStream {
    layout: Layout,
    page: u64,
    header: [u8; HEADER],
    have: usize,
    /// Bytes of pages still to come for the last run.
    pages_left: u64,
    /// The id of the open image (OPEN2), if any.
    open: Option<u64>,
    closed: bool,
    failed: bool,
    /// Bytes accepted so far (for messages).
    offset: u64,
}

impl PageStream {
    /// A stream from a CRIU of header `layout`, on a host of `page`-byte pages.
    pub fn new(layout: Layout, page: u64) -> PageStream {
        PageStream {
            layout,
            page,
            header: [0; HEADER],
            have: 0,
            pages_left: 0,
            open: None,
            closed: false,
            failed: false,
            offset: 0,
        }
    }

    /// Whether the CLOSE came.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Where the stream stands, for an error at its end: None if it ended where it may.
    pub fn unfinished(&self) -> Option<String> {
        if self.closed {
            None
        } else if self.pages_left > 0 {
            Some(format!(
                "the page stream ended {} bytes into a run of pages, {} bytes short",
                self.offset, self.pages_left
            ))
        } else {
            Some(format!(
                "the page stream ended after {} bytes without the dump's close",
                self.offset
            ))
        }
    }

    /// Parses `bytes`, the next piece of the stream, handing each step to `on`. The first error
    /// (the stream's or `on`'s) ends the stream: later calls fail too.
    pub fn feed<'a>(
        &mut self,
        bytes: &'a [u8],
        on: &mut dyn FnMut(Event<'a>) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.failed {
            return Err("the page stream failed before".into());
        }
        let r = self.feed_ok(bytes, on);
        self.failed = r.is_err();
        r
    }

    fn feed_ok<'a>(
        &mut self,
        mut bytes: &'a [u8],
        on: &mut dyn FnMut(Event<'a>) -> Result<(), String>,
    ) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.closed {
                return Err(format!(
                    "{} bytes of page stream after the dump's close",
                    bytes.len()
                ));
            }
            if self.pages_left > 0 {
                let n = usize::try_from(self.pages_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let (now, rest) = bytes.split_at(n);
                self.pages_left -= n as u64;
                self.offset += n as u64;
                bytes = rest;
                on(Event::Pages(now))?;
                continue;
            }
            let want = self.layout.header_len();
            let n = (want - self.have).min(bytes.len());
            let (now, rest) = bytes.split_at(n);
            self.header[self.have..self.have + n].copy_from_slice(now);
            self.have += n;
            bytes = rest;
            if self.have < want {
                break;
            }
            self.have = 0;
            let at = self.offset;
            self.offset += want as u64;
            let iov = Iov::decode(&self.header[..want], self.layout)
                .ok_or_else(|| format!("page stream: a short header at byte {at}"))?;
            let event = self
                .step(&iov)
                .map_err(|e| format!("page stream, header at byte {at}: {e}"))?;
            on(event)?;
        }
        Ok(())
    }

    /// Checks one header against the state and advances it.
    fn step(&mut self, iov: &Iov) -> Result<Event<'static>, String> {
        let flags = iov.cmd >> 16;
        let cmd = iov.command();
        if flags != 0 && cmd != IOV_ADD_F {
            return Err(format!("command {cmd} with flags {flags:#x}"));
        }
        let image = || {
            Image::from_id(iov.dst_id)
                .ok_or_else(|| format!("image id {:#x} of no kind CRIU sends", iov.dst_id))
        };
        match cmd {
            IOV_OPEN2 => {
                let img = image()?;
                self.open = Some(iov.dst_id);
                Ok(Event::Open(img))
            }
            IOV_PARENT => Ok(Event::Parent(image()?)),
            IOV_ADD_F => {
                if self.open != Some(iov.dst_id) {
                    return Err(format!(
                        "pages for image id {:#x}, which is not the open one",
                        iov.dst_id
                    ));
                }
                if flags & !PE_FLAGS != 0 {
                    return Err(format!("unknown page flags {flags:#x}"));
                }
                let len = iov
                    .nr_pages
                    .checked_mul(self.page)
                    .filter(|&l| l > 0)
                    .ok_or_else(|| format!("a run of {} pages", iov.nr_pages))?;
                if !iov.vaddr.is_multiple_of(self.page) || iov.vaddr.checked_add(len).is_none() {
                    return Err(format!(
                        "a run of {} pages at {:#x}",
                        iov.nr_pages, iov.vaddr
                    ));
                }
                if flags & PE_PRESENT != 0 {
                    self.pages_left = len;
                }
                Ok(Event::Run {
                    vaddr: iov.vaddr,
                    nr_pages: iov.nr_pages,
                    flags,
                })
            }
            IOV_CLOSE | IOV_FORCE_CLOSE => {
                self.closed = true;
                self.open = None;
                Ok(Event::Close)
            }
            other => Err(format!("command {other}, which a dump does not send")),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::super::page_server::{PE_LAZY, PE_PARENT};
    use super::*;

    /// A header as CRIU 4.1 sends it (narrow), for tests here and elsewhere.
    pub fn header(cmd: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Vec<u8> {
        header_in(Layout::Narrow, cmd, nr_pages, vaddr, dst_id)
    }

    /// A header in `layout`.
    fn header_in(layout: Layout, cmd: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Vec<u8> {
        let iov = Iov {
            cmd,
            nr_pages,
            vaddr,
            dst_id,
        };
        iov.encode(layout)[..layout.header_len()].to_vec()
    }

    fn add(flags: u32, nr: u64, vaddr: u64, id: u64) -> Vec<u8> {
        header((flags << 16) | IOV_ADD_F, nr, vaddr, id)
    }

    /// Two tasks (pids 1 and 7) and a shared segment: present, lazy and absent runs.
    pub fn sample() -> (Vec<u8>, Vec<u8>) {
        let task1 = 1 << 8 | 1;
        let task7 = 7 << 8 | 1;
        let shm = 3 << 8 | 2;
        let pages: Vec<u8> = (0..5 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut s = Vec::new();
        s.extend(header(IOV_OPEN2, 0, 0, task1));
        s.extend(add(PE_PRESENT, 2, 0x1000, task1));
        s.extend_from_slice(&pages[..2 * 4096]);
        s.extend(add(PE_PRESENT | PE_LAZY, 1, 0x7f00_0000_0000, task1));
        s.extend_from_slice(&pages[2 * 4096..3 * 4096]);
        s.extend(header(IOV_OPEN2, 0, 0, task7));
        s.extend(add(PE_LAZY, 4, 0x2000, task7));
        s.extend(add(PE_PRESENT, 1, 0x9000, task7));
        s.extend_from_slice(&pages[3 * 4096..4 * 4096]);
        s.extend(header(IOV_OPEN2, 0, 0, shm));
        s.extend(add(PE_PRESENT, 1, 0, shm));
        s.extend_from_slice(&pages[4 * 4096..]);
        s.extend(header(IOV_CLOSE, 0, 0, 0));
        (s, pages)
    }

    /// The events of `stream` fed in pieces of `piece` bytes, as owned values.
    fn events(stream: &[u8], piece: usize) -> Result<(Vec<String>, Vec<u8>), String> {
        let mut p = PageStream::new(Layout::Narrow, 4096);
        let mut out = Vec::new();
        let mut data = Vec::new();
        for chunk in stream.chunks(piece) {
            p.feed(chunk, &mut |e| {
                match e {
                    Event::Pages(b) => data.extend_from_slice(b),
                    other => out.push(format!("{other:x?}")),
                }
                Ok(())
            })?;
        }
        if let Some(e) = p.unfinished() {
            return Err(e);
        }
        Ok((out, data))
    }

    #[test]
    fn every_piece_size_gives_the_same_events() {
        let (s, pages) = sample();
        let (want, data) = events(&s, s.len()).unwrap();
        assert_eq!(data, pages);
        assert_eq!(
            want,
            [
                "Open(Task(1))",
                "Run { vaddr: 1000, nr_pages: 2, flags: 4 }",
                "Run { vaddr: 7f0000000000, nr_pages: 1, flags: 6 }",
                "Open(Task(7))",
                "Run { vaddr: 2000, nr_pages: 4, flags: 2 }",
                "Run { vaddr: 9000, nr_pages: 1, flags: 4 }",
                "Open(Shmem(3))",
                "Run { vaddr: 0, nr_pages: 1, flags: 4 }",
                "Close",
            ]
        );
        for piece in [1, 2, 3, 23, 24, 25, 4095, 4096, 4097, 9000] {
            assert_eq!(events(&s, piece).unwrap(), (want.clone(), pages.clone()));
        }
    }

    #[test]
    fn the_wide_layout_parses_the_same() {
        let mut p = PageStream::new(Layout::Wide, 4096);
        let mut seen = Vec::new();
        let id = 5 << 8 | 1;
        let mut s = header_in(Layout::Wide, IOV_OPEN2, 0, 0, id);
        s.extend(header_in(
            Layout::Wide,
            PE_PRESENT << 16 | IOV_ADD_F,
            1 << 33,
            0x1000,
            id,
        ));
        s.extend([9u8; 100]);
        p.feed(&s, &mut |e| {
            seen.push(format!("{e:x?}"));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                "Open(Task(5))",
                "Run { vaddr: 1000, nr_pages: 200000000, flags: 4 }",
                "Pages([9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9])"
            ]
        );
        assert!(p.unfinished().unwrap().contains("short"));
    }

    #[test]
    fn cut_streams_say_where_they_stopped() {
        let (s, _) = sample();
        for cut in [0, 10, 24, 24 + 24 + 100, s.len() - 24, s.len() - 1] {
            let err = events(&s[..cut], 7).unwrap_err();
            assert!(err.contains("ended"), "{cut}: {err}");
        }
        let err = events(&s[..24 + 24 + 100], 7).unwrap_err();
        assert!(err.contains("run of pages"), "{err}");
    }

    #[test]
    fn what_a_dump_does_not_send_is_refused() {
        let open = header(IOV_OPEN2, 0, 0, 1 << 8 | 1);
        let bad: [(&str, Vec<u8>); 10] = [
            ("not the open", add(PE_PRESENT, 1, 0x1000, 1 << 8 | 1)),
            ("no kind", header(IOV_OPEN2, 0, 0, 1 << 8 | 9)),
            (
                "does not send",
                header(IOV_GET_FOR_TEST, 1, 0x1000, 1 << 8 | 1),
            ),
            ("does not send", header(1, 1, 0x1000, 1 << 8 | 1)),
            (
                "with flags",
                header(PE_PRESENT << 16 | IOV_OPEN2, 0, 0, 1 << 8 | 1),
            ),
            (
                "unknown page flags",
                [open.clone(), add(1 << 5, 1, 0, 1 << 8 | 1)].concat(),
            ),
            (
                "run of 0 pages",
                [open.clone(), add(PE_PRESENT, 0, 0, 1 << 8 | 1)].concat(),
            ),
            (
                "at 0x1001",
                [open.clone(), add(PE_PRESENT, 1, 0x1001, 1 << 8 | 1)].concat(),
            ),
            (
                "at 0xfffffffffffff000",
                [open.clone(), add(PE_PARENT, 2, !0xfff, 1 << 8 | 1)].concat(),
            ),
            (
                "after the dump's close",
                [header(IOV_CLOSE, 0, 0, 0), vec![0]].concat(),
            ),
        ];
        for (why, s) in bad {
            let err = events(&s, 5).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
        // A page count whose bytes do not fit 64 bits (the wide layout's count is a u64).
        let mut p = PageStream::new(Layout::Wide, 4096);
        let id = 1 << 8 | 1;
        let s = [
            header_in(Layout::Wide, IOV_OPEN2, 0, 0, id),
            header_in(Layout::Wide, PE_PRESENT << 16 | IOV_ADD_F, 1 << 60, 0, id),
        ]
        .concat();
        let err = p.feed(&s, &mut |_| Ok(())).unwrap_err();
        assert!(err.contains("a run of 1152921504606846976 pages"), "{err}");
        let again = p.feed(&[0], &mut |_| Ok(())).unwrap_err();
        assert!(again.contains("failed before"), "{again}");
    }

    const IOV_GET_FOR_TEST: u32 = super::super::page_server::IOV_GET;

    #[test]
    fn an_error_of_the_handler_stops_the_stream() {
        let (s, _) = sample();
        let mut p = PageStream::new(Layout::Narrow, 4096);
        let err = p
            .feed(&s, &mut |e| match e {
                Event::Open(Image::Task(7)) => Err("disk full".into()),
                _ => Ok(()),
            })
            .unwrap_err();
        assert_eq!(err, "disk full");
    }
}
