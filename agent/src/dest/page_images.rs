//! The destination's page server: writes CRIU's `pagemap-*.img` and `pages-*.img` into the
//! migration's directory straight from the source's page stream, as CRIU's page server would
//! (criu/page-xfer.c: one page map per task or shared segment, its pages in `pages-<n>.img`
//! named by the map's head). It runs in the connection's reader thread (`transfer::mux`'s page
//! sink): the decrypted frame is written to the file it belongs to, with no CRIU process, no
//! socket in between and no copy of its own. Used for dumps without a parent image (no
//! pre-copy); pre-copy's dumps go to CRIU's page servers (`dest::precopy`), which check and
//! link parent images.
//!
//! The stream's answers (one byte per OPEN2, a status for the close) go back to the source's
//! CRIU in PAGE_DATA frames, followed by PAGE_EOF, as CRIU's page server's would.

use crate::criu::page_server::PE_PARENT;
use crate::criu::page_stream::{Event, PageStream};
use crate::criu::pagemap;
use crate::limits::FILES_MAX;
use crate::transfer::frame::{Kind, SendHalf};
use crate::transfer::mux::{send_frame, PageSink};
use rustix::fs::{Mode, OFlags};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Page-map records are gathered in a buffer of this size and written when it fills (a record
/// is ~20 bytes: one write per ~200 runs of pages) or when the map is complete.
const PAGEMAP_BUFFER: usize = 4096;

/// What one page stream wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Page maps (tasks and shared segments).
    pub images: u32,
    /// Runs of pages (page-map entries).
    pub runs: u64,
    /// Bytes of pages written.
    pub page_bytes: u64,
}

/// What goes back to the source's CRIU.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// Bytes of the page server's answers.
    Bytes(&'a [u8]),
    /// The page server's end of the stream (after the close's answer).
    End,
}

/// Sends answers to the source (PAGE_DATA and PAGE_EOF frames on the connection).
pub type Reply = Box<dyn Fn(Answer) -> Result<(), String> + Send + Sync>;

/// The page server of one migration: a `PageSink` for the connection.
pub struct PageImages {
    state: Mutex<State>,
    reply: Reply,
}

struct State {
    stream: PageStream,
    files: Files,
    error: Option<String>,
}

struct Files {
    dir: OwnedFd,
    dir_path: PathBuf,
    /// The restoring CRIU reads a page count of 64 bits (4.2 on).
    wide: bool,
    open: Option<Open>,
    next_pages_id: u32,
    written: Written,
}

/// The page map being written and its pages file.
struct Open {
    name: String,
    pagemap: OwnedFd,
    records: Vec<u8>,
    pages_name: String,
    pages: OwnedFd,
}

impl PageImages {
    /// A page server writing into `dir` (at `dir_path`, for messages) from a stream whose
    /// headers have `stream`'s layout, for a restoring CRIU that reads 64-bit counts if `wide`;
    /// answers go out through `reply`.
    pub fn new(
        dir: OwnedFd,
        dir_path: PathBuf,
        stream: PageStream,
        wide: bool,
        reply: Reply,
    ) -> PageImages {
        PageImages {
            state: Mutex::new(State {
                stream,
                files: Files {
                    dir,
                    dir_path,
                    wide,
                    open: None,
                    next_pages_id: 1,
                    written: Written::default(),
                },
                error: None,
            }),
            reply,
        }
    }

    /// After the images: what was written, or why the page images are not complete.
    pub fn finish(&self) -> Result<Written, String> {
        let st = self
            .state
            .lock()
            .map_err(|_| "page writer lock poisoned".to_string())?;
        if let Some(e) = &st.error {
            return Err(e.clone());
        }
        if let Some(e) = st.stream.unfinished() {
            return Err(e);
        }
        Ok(st.files.written)
    }

    fn answer(&self, bytes: &[u8]) -> Result<(), String> {
        (self.reply)(Answer::Bytes(bytes))
    }
}

/// Answers through `tx`, the connection's sending half.
pub fn reply_over(tx: Arc<Mutex<SendHalf>>) -> Reply {
    Box::new(move |a| match a {
        Answer::Bytes(b) => send_frame(&tx, Kind::PageData, b)
            .map_err(|e| format!("answering the source's CRIU: {e}")),
        Answer::End => {
            send_frame(&tx, Kind::PageEof, &[]).map_err(|e| format!("ending the page stream: {e}"))
        }
    })
}

impl PageSink for PageImages {
    fn put(&self, bytes: &[u8]) -> Result<(), String> {
        let mut guard = self
            .state
            .lock()
            .map_err(|_| "page writer lock poisoned".to_string())?;
        let State {
            stream,
            files,
            error,
        } = &mut *guard;
        if let Some(e) = error {
            return Err(e.clone());
        }
        let r = stream.feed(bytes, &mut |ev| match ev {
            Event::Open(img) => {
                files.open_map(&img.pagemap_name())?;
                // No parent image: this dump is complete in itself.
                self.answer(&[0])
            }
            Event::Parent(_) => self.answer(&0i32.to_ne_bytes()),
            Event::Run {
                vaddr,
                nr_pages,
                flags,
            } => {
                if flags & PE_PARENT != 0 {
                    return Err(format!(
                        "page stream: a run at {vaddr:#x} refers to a parent image, and this \
                         dump has none"
                    ));
                }
                files.run(vaddr, nr_pages, flags)
            }
            Event::Pages(b) => files.pages(b),
            Event::Close => {
                files.close_map()?;
                self.answer(&0i32.to_ne_bytes())?;
                (self.reply)(Answer::End)
            }
        });
        if let Err(e) = &r {
            *error = Some(e.clone());
        }
        r
    }

    fn end(&self) {
        // The source's CRIU closed its page socket; `finish` says whether the stream was
        // complete.
    }

    fn lost(&self, _farewell: Option<&[u8]>) {
        // No local process waits on this stream.
    }
}

impl Files {
    fn create(&self, name: &str) -> Result<OwnedFd, String> {
        rustix::fs::openat(
            &self.dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| {
            let why = if e == rustix::io::Errno::EXIST {
                "the dump sent it twice".to_string()
            } else {
                e.to_string()
            };
            format!("creating {}: {why}", self.dir_path.join(name).display())
        })
    }

    fn open_map(&mut self, name: &str) -> Result<(), String> {
        self.close_map()?;
        if self.written.images >= FILES_MAX / 2 {
            return Err(format!(
                "page stream: more than {} page maps (limit)",
                FILES_MAX / 2
            ));
        }
        let id = self.next_pages_id;
        let pages_name = format!("pages-{id}.img");
        let pagemap = self.create(name)?;
        let pages = self.create(&pages_name)?;
        let mut records = Vec::with_capacity(PAGEMAP_BUFFER);
        records.extend_from_slice(&pagemap::image_start(id));
        self.next_pages_id = id.wrapping_add(1);
        self.written.images += 1;
        self.open = Some(Open {
            name: name.to_string(),
            pagemap,
            records,
            pages_name,
            pages,
        });
        Ok(())
    }

    fn run(&mut self, vaddr: u64, nr_pages: u64, flags: u32) -> Result<(), String> {
        let Some(o) = self.open.as_mut() else {
            return Err("page stream: a run of pages before any page map".into());
        };
        pagemap::write_entry(&mut o.records, vaddr, nr_pages, flags, self.wide);
        self.written.runs += 1;
        if o.records.len() + pagemap::RECORD_MAX > PAGEMAP_BUFFER {
            let written = write_all(&o.pagemap, &o.records);
            o.records.clear();
            if let Err(e) = written {
                let name = o.name.clone();
                return Err(self.failed(&name, e));
            }
        }
        Ok(())
    }

    fn pages(&mut self, b: &[u8]) -> Result<(), String> {
        let Some(o) = self.open.as_ref() else {
            return Err("page stream: pages before any page map".into());
        };
        write_all(&o.pages, b).map_err(|e| self.failed(&o.pages_name, e))?;
        self.written.page_bytes += b.len() as u64;
        Ok(())
    }

    /// Writes the rest of the open page map and closes both files.
    fn close_map(&mut self) -> Result<(), String> {
        if let Some(o) = self.open.take() {
            write_all(&o.pagemap, &o.records).map_err(|e| self.failed(&o.name, e))?;
        }
        Ok(())
    }

    fn failed(&self, name: &str, e: rustix::io::Errno) -> String {
        format!("writing {}: {e}", self.dir_path.join(name).display())
    }
}

fn write_all(fd: &OwnedFd, mut b: &[u8]) -> Result<(), rustix::io::Errno> {
    while !b.is_empty() {
        match rustix::io::write(fd, b) {
            Ok(0) => return Err(rustix::io::Errno::NOSPC),
            Ok(n) => b = b.get(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::page_server::{Layout, PE_LAZY};
    use crate::criu::page_stream::tests::{header, sample};
    use crate::criu::pagemap::lazy_ranges;
    use std::path::Path;

    struct Run {
        images: PageImages,
        answers: Arc<Mutex<Vec<u8>>>,
        ended: Arc<Mutex<bool>>,
        dir: crate::inspect::test_support::TempDir,
    }

    fn run(wide: bool) -> Run {
        let dir = crate::inspect::test_support::TempDir::new("page-images").unwrap();
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(false));
        let (a, e) = (answers.clone(), ended.clone());
        let reply: Reply = Box::new(move |ans| {
            assert!(!*e.lock().unwrap(), "an answer after the end");
            match ans {
                Answer::Bytes(b) => a.lock().unwrap().extend_from_slice(b),
                Answer::End => *e.lock().unwrap() = true,
            }
            Ok(())
        });
        let stream = PageStream::new(Layout::Narrow, 4096);
        let images = PageImages::new(fd, dir.path().into(), stream, wide, reply);
        Run {
            images,
            answers,
            ended,
            dir,
        }
    }

    fn read(dir: &Path, name: &str) -> Vec<u8> {
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../fixtures/criu-4.1.1-page-server/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A real dump's stream (fixtures/criu-4.1.1-page-server) gives the files CRIU's own page
    /// server wrote, byte for byte but for the page id in the map's head, and the same answers.
    #[test]
    fn a_real_dump_gives_what_criu_s_page_server_wrote() {
        let stream = fixture("stream.bin");
        for piece in [stream.len(), 1, 24, 4096, 65_536, 5000] {
            let r = run(false);
            for chunk in stream.chunks(piece) {
                r.images.put(chunk).unwrap();
            }
            r.images.end();
            let w = r.images.finish().unwrap();
            assert_eq!(
                w,
                Written {
                    images: 1,
                    runs: 7,
                    page_bytes: 16 * 4096
                }
            );
            assert_eq!(*r.answers.lock().unwrap(), fixture("answers.bin"));
            assert!(*r.ended.lock().unwrap());
            assert_eq!(
                read(r.dir.path(), "pages-1.img"),
                fixture("pages-65537.img")
            );
            let ours = read(r.dir.path(), "pagemap-5868.img");
            let criu = fixture("pagemap-5868.img");
            // The magics, the head (pages_id 1: 2 bytes, against CRIU's 0x10001: 4), then the
            // seven entries.
            assert_eq!(ours[..8], criu[..8]);
            assert_eq!(ours[8..14], [2, 0, 0, 0, 0x08, 1]);
            assert_eq!(criu[8..16], [4, 0, 0, 0, 0x08, 0x81, 0x80, 0x04]);
            assert_eq!(ours[14..], criu[16..]);
            let names: Vec<String> = std::fs::read_dir(r.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(names.len(), 2, "{names:?}");
        }
    }

    #[test]
    fn tasks_and_shared_segments_get_their_maps_and_pages() {
        let (s, pages) = sample();
        let r = run(true);
        for chunk in s.chunks(1000) {
            r.images.put(chunk).unwrap();
        }
        assert_eq!(
            r.images.finish().unwrap(),
            Written {
                images: 3,
                runs: 5,
                page_bytes: 5 * 4096
            }
        );
        assert_eq!(*r.answers.lock().unwrap(), [0, 0, 0, 0, 0, 0, 0]);
        let d = r.dir.path();
        assert_eq!(read(d, "pages-1.img"), pages[..3 * 4096]);
        assert_eq!(read(d, "pages-2.img"), pages[3 * 4096..4 * 4096]);
        assert_eq!(read(d, "pages-3.img"), pages[4 * 4096..]);
        // The maps, read back as the lazy-pages code reads them.
        let lazy1 = lazy_ranges(&read(d, "pagemap-1.img"), 4096).unwrap();
        assert_eq!(lazy1, [(0x7f00_0000_0000, 0x7f00_0000_1000)]);
        let lazy7 = lazy_ranges(&read(d, "pagemap-7.img"), 4096).unwrap();
        assert_eq!(lazy7, [(0x2000, 0x6000)]);
        assert!(lazy_ranges(&read(d, "pagemap-shmem-3.img"), 4096)
            .unwrap()
            .is_empty());
    }

    /// Up to 4.1 CRIU reads the count from field 2; 4.2 on from field 5, written only then.
    #[test]
    fn the_count_field_follows_the_restoring_criu() {
        let (s, _) = sample();
        for wide in [false, true] {
            let r = run(wide);
            r.images.put(&s).unwrap();
            let map = read(r.dir.path(), "pagemap-7.img");
            // Head record (4 + 2 bytes), then the first entry: vaddr 0x2000, 4 pages, PE_LAZY.
            let entry = &map[8 + 6..];
            let body: &[u8] = if wide {
                &[0x08, 0x80, 0x40, 0x10, 4, 0x20, 2, 0x28, 4]
            } else {
                &[0x08, 0x80, 0x40, 0x10, 4, 0x20, 2]
            };
            assert_eq!(entry[..4], (body.len() as u32).to_le_bytes());
            assert_eq!(&entry[4..4 + body.len()], body);
        }
    }

    #[test]
    fn a_map_bigger_than_the_buffer_is_written_whole() {
        let r = run(false);
        let id = 9 << 8 | 1;
        let mut s = header(4, 0, 0, id);
        for i in 0..1000u64 {
            s.extend(header(PE_LAZY << 16 | 6, 1, 0x10_0000 + 2 * i * 4096, id));
        }
        s.extend(header(0x1023, 0, 0, 0));
        r.images.put(&s).unwrap();
        r.images.finish().unwrap();
        let lazy = lazy_ranges(&read(r.dir.path(), "pagemap-9.img"), 4096).unwrap();
        assert_eq!(lazy.len(), 1000);
        assert_eq!(lazy[999].0, 0x10_0000 + 2 * 999 * 4096);
        assert!(read(r.dir.path(), "pages-1.img").is_empty());
    }

    #[test]
    fn what_cannot_be_restored_is_an_error_that_stays() {
        let id = 1 << 8 | 1;
        let open = header(4, 0, 0, id);
        // A run in a parent image: this dump has none.
        let r = run(false);
        let s = [open.clone(), header(1 << 16 | 6, 1, 0x1000, id)].concat();
        let err = r.images.put(&s).unwrap_err();
        assert!(err.contains("parent image"), "{err}");
        assert_eq!(r.images.put(&[0]).unwrap_err(), err);
        assert_eq!(r.images.finish().unwrap_err(), err);
        // The same task twice would overwrite its map.
        let r = run(false);
        let err = r
            .images
            .put(&[open.clone(), open.clone()].concat())
            .unwrap_err();
        assert!(
            err.contains("pagemap-1.img: the dump sent it twice"),
            "{err}"
        );
        // A stream cut short.
        let r = run(false);
        r.images.put(&open).unwrap();
        r.images.end();
        let err = r.images.finish().unwrap_err();
        assert!(err.contains("without the dump's close"), "{err}");
        // A failing answer fails the stream.
        let dir = crate::inspect::test_support::TempDir::new("page-images").unwrap();
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
        let images = PageImages::new(
            fd,
            dir.path().into(),
            PageStream::new(Layout::Narrow, 4096),
            false,
            Box::new(|_| Err("connection lost".into())),
        );
        assert_eq!(images.put(&open).unwrap_err(), "connection lost");
    }
}
