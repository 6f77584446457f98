//! Pre-copy on the destination (Prepare.pre_copy): instead of one CRIU page server at Prepare,
//! one per dump when the source asks (PageServerStart), each writing into an images directory
//! that haul names and creates itself: `pre-k` for pre-dump iteration k, the migration directory
//! for the final dump. The source sends only iteration numbers; they must come in order (1, 2,
//! ..., at most `PRE_DUMP_ITERATIONS_MAX`, then `FINAL`).
//!
//! Each page server gets `parent_img` (`../pre-(k-1)`, or `pre-N` for the final dump), which
//! CRIU checks and turns into the `parent` link of that images directory (criu/image.c,
//! `open_image_dir`): the page server answers the dumping CRIU whether a parent exists, and the
//! restore from the migration directory follows the links down to `pre-1`. No link comes from
//! the peer: haul computes every target.
//!
//! All page servers read one socket. CRIU's page server reads exactly one session, up to the
//! dumping CRIU's close command, answers it and exits (criu/page-xfer.c, `page_server_serve`);
//! the source asks for the next one only after its dump finished, so two never read at once.
//! The `criu swrk` that starts them is kept open (`keep_open`) and holds its copy of the socket
//! until the final dump's page server, after which it exits and the page stream can end.

use crate::criu::Swrk;
use crate::error::{Error, Result};
use crate::limits::PRE_DUMP_ITERATIONS_MAX;
use crate::source::precopy::{dir_name, FINAL};
use crate::transfer::Conn;
use crate::workdir::WorkDir;
use haul_proto::criu::CriuReqType;
use haul_proto::haul::{control::Msg, PageServerReady};
use rustix::fs::{Mode, OFlags};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// CRIU's log of each page server, in that page server's images directory.
const LOG: &str = "page-server.log";

/// Where a page server goes, as checked against the requests before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Pre-dump iteration `k`: images into `pre-k`, parent `../pre-(k-1)` (none for the first).
    Iteration { k: u32, parent: Option<String> },
    /// The final dump: images into the migration directory, parent `pre-N` (none without
    /// iterations).
    Final { parent: Option<String> },
}

/// The page servers of one migration with pre-copy.
#[derive(Debug, Default)]
pub struct PageServers {
    /// CRIU's end of the page socket (its number is `ps.fd`), until the final page server runs.
    /// `None` without pre-copy: the page server started at Prepare.
    ps: Option<OwnedFd>,
    /// Iterations served so far.
    done: u32,
    final_started: bool,
}

impl PageServers {
    /// Page servers on demand over `ps`, CRIU's end of the page socket (inherited by the swrk
    /// that starts them).
    pub fn new(ps: OwnedFd) -> PageServers {
        PageServers {
            ps: Some(ps),
            done: 0,
            final_started: false,
        }
    }

    /// What a PageServerStart for `iteration` asks for, or why it is refused.
    pub fn target(&self, iteration: u32) -> std::result::Result<Target, String> {
        if self.final_started {
            return Err("a page server asked for after the final dump's".into());
        }
        if self.ps.is_none() {
            return Err("a page server asked for without pre-copy in Prepare".into());
        }
        match iteration {
            FINAL => Ok(Target::Final {
                parent: (self.done > 0).then(|| dir_name(self.done)),
            }),
            k if k > PRE_DUMP_ITERATIONS_MAX => Err(format!(
                "pre-dump {k}: more than {PRE_DUMP_ITERATIONS_MAX} iterations (limit)"
            )),
            k if Some(k) != self.done.checked_add(1) => Err(format!(
                "pre-dump {k} asked for after {} iterations: they come in order",
                self.done
            )),
            k => Ok(Target::Iteration {
                k,
                parent: (k > 1).then(|| format!("../{}", dir_name(k - 1))),
            }),
        }
    }

    /// Serves a PageServerStart: creates the images directory (never existing before, never
    /// through a link), starts CRIU's page server into it, and answers PageServerReady.
    pub fn start(
        &mut self,
        conn: &Conn,
        swrk: &mut Swrk,
        work: &WorkDir,
        iteration: u32,
    ) -> Result<()> {
        let target = self
            .target(iteration)
            .map_err(|e| Error::other(format!("pre-copy: {e}")))?;
        let ps = self
            .ps
            .as_ref()
            .map(AsRawFd::as_raw_fd)
            .ok_or_else(|| Error::other("pre-copy: no page socket"))?;
        match target {
            Target::Iteration { k, parent } => {
                let name = dir_name(k);
                let path = work.path.join(&name);
                rustix::fs::mkdirat(&work.fd, name.as_str(), Mode::from_raw_mode(0o700))
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                let dir = rustix::fs::openat(
                    &work.fd,
                    name.as_str(),
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                // CRIU opens the directory through /proc/<haul>/fd/N before it answers.
                page_server(swrk, dir.as_raw_fd(), &path, ps, parent, true)?;
                self.done = k;
            }
            Target::Final { parent } => {
                page_server(swrk, work.raw(), &work.path, ps, parent, false)?;
                // CRIU holds the socket now; the page stream ends when its last user closes it.
                self.ps = None;
                self.final_started = true;
            }
        }
        log::debug!("page server for pre-copy iteration {iteration} runs (0: final dump)");
        conn.send(Msg::PageServerReady(PageServerReady { iteration }))
            .map_err(|e| Error::other(format!("page server ready: {e}")))
    }

    /// At the end of the images: a migration with pre-copy must have started the final dump's
    /// page server (else its pages went nowhere, and the page stream would never end).
    pub fn finish(&self) -> Result<()> {
        if self.ps.is_some() && !self.final_started {
            return Err(Error::other(
                "pre-copy: images sent without the final dump's page server",
            ));
        }
        Ok(())
    }
}

/// PAGE_SERVER into the images directory `dir_fd` (at `dir`, for the log) with `parent_img`.
/// `keep_open`: swrk stays for the next one; after the final one it exits, and with it its copy
/// of the page socket.
fn page_server(
    swrk: &mut Swrk,
    dir_fd: i32,
    dir: &Path,
    ps: i32,
    parent: Option<String>,
    keep_open: bool,
) -> Result<()> {
    let mut opts = crate::plan::pid::page_server(dir_fd, ps);
    opts.parent_img = parent;
    let mut req = Swrk::request(CriuReqType::PageServer, opts);
    req.keep_open = keep_open.then_some(true);
    swrk.set_log(dir.join(LOG));
    swrk.call(&req).map_err(|e| Error::other(e.to_string()))?;
    Ok(())
}

/// The page-server logs of the iterations in `work`, with the name each is kept under after a
/// failure (`pre-2-page-server.log`).
pub fn logs(work: &Path) -> Vec<(PathBuf, String)> {
    (1..=PRE_DUMP_ITERATIONS_MAX)
        .map(|k| {
            (
                work.join(dir_name(k)).join(LOG),
                format!("{}-{LOG}", dir_name(k)),
            )
        })
        .take_while(|(p, _)| p.parent().is_some_and(Path::is_dir))
        .filter(|(p, _)| p.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> PageServers {
        let (a, _b) = crate::transfer::pages::socket_pair().unwrap();
        PageServers::new(a)
    }

    #[test]
    fn iterations_come_in_order_with_their_parents_then_the_final_dump() {
        let mut s = servers();
        assert_eq!(s.target(1), Ok(Target::Iteration { k: 1, parent: None }));
        s.done = 1;
        assert_eq!(
            s.target(2),
            Ok(Target::Iteration {
                k: 2,
                parent: Some("../pre-1".into())
            })
        );
        s.done = 2;
        assert_eq!(
            s.target(FINAL),
            Ok(Target::Final {
                parent: Some("pre-2".into())
            })
        );
        // A final dump without iterations has no parent.
        assert_eq!(servers().target(FINAL), Ok(Target::Final { parent: None }));
    }

    #[test]
    fn out_of_order_repeated_or_too_many_iterations_are_refused() {
        let mut s = servers();
        for bad in [2, u32::MAX] {
            assert!(s.target(bad).is_err(), "{bad}");
        }
        s.done = 1;
        assert!(s.target(1).unwrap_err().contains("in order"));
        s.done = PRE_DUMP_ITERATIONS_MAX;
        let e = s.target(PRE_DUMP_ITERATIONS_MAX + 1).unwrap_err();
        assert!(e.contains("(limit)"), "{e}");
        assert!(
            s.target(FINAL).is_ok(),
            "at the limit the final dump still comes"
        );
    }

    #[test]
    fn nothing_after_the_final_dump_nor_without_pre_copy() {
        let mut s = servers();
        s.final_started = true;
        s.ps = None;
        assert!(s.target(FINAL).is_err());
        assert!(s.target(1).is_err());
        assert!(s.finish().is_ok());
        let none = PageServers::default();
        assert!(none.target(1).unwrap_err().contains("without pre-copy"));
        assert!(none.finish().is_ok());
        // Pre-copy announced but the final page server never asked for: the images are refused.
        assert!(servers().finish().is_err());
    }

    #[test]
    fn iteration_logs_are_found_in_order() {
        let dir = std::env::temp_dir().join(format!("haul-precopy-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for k in 1..=3 {
            std::fs::create_dir_all(dir.join(dir_name(k))).unwrap();
        }
        std::fs::write(dir.join("pre-1").join(LOG), b"1").unwrap();
        std::fs::write(dir.join("pre-3").join(LOG), b"3").unwrap();
        let names: Vec<String> = logs(&dir).into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, ["pre-1-page-server.log", "pre-3-page-server.log"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
