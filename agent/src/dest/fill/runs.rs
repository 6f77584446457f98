//! The memory of one restored task that is still to fill: runs of pages at their address in
//! the task now (`start..end`) and where the images or the source hold them (`img`, the
//! address at dump time). Runs start as the lazy entries of the task's pagemap split where its
//! VMAs end (a userfaultfd copy stays inside one VMA); the task's own mremap, munmap and
//! madvise move or drop them (`remap`, `take`).

use crate::criu::pagemap::{Extent, Range};
use std::collections::BTreeMap;

/// Pages `start..end` of a task, held at `img..img + (end - start)` in the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub end: u64,
    pub img: u64,
}

impl Run {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The part `s..e` of this run (within it).
    fn part(&self, s: u64, e: u64) -> Run {
        Run {
            start: s,
            end: e,
            img: self.img + (s - self.start),
        }
    }
}

/// Disjoint runs keyed by their start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs {
    map: BTreeMap<u64, Run>,
    bytes: u64,
}

impl Runs {
    /// The lazy extents of a pagemap (sorted, disjoint), cut where the VMAs (sorted, disjoint)
    /// end; parts outside every VMA are left out (the restore maps nothing there).
    pub fn from_lazy(extents: &[Extent], vmas: &[Range]) -> Runs {
        let mut runs = Runs::default();
        for e in extents {
            let mut i = vmas.partition_point(|v| v.1 <= e.start);
            while let Some(&(vs, ve)) = vmas.get(i) {
                if vs >= e.end {
                    break;
                }
                let (s, t) = (e.start.max(vs), e.end.min(ve));
                runs.insert(Run {
                    start: s,
                    end: t,
                    img: s,
                });
                i += 1;
            }
        }
        runs
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes in all runs.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds a run that overlaps none of these.
    pub fn insert(&mut self, r: Run) {
        if r.start < r.end {
            self.bytes += r.len();
            self.map.insert(r.start, r);
        }
    }

    /// The run holding `addr`.
    pub fn containing(&self, addr: u64) -> Option<Run> {
        let (_, r) = self.map.range(..=addr).next_back()?;
        (addr < r.end).then_some(*r)
    }

    /// The lowest run.
    pub fn first(&self) -> Option<Run> {
        self.map.values().next().copied()
    }

    /// The pages at or after `addr`: the rest of the run holding it, else the next run up.
    pub fn from(&self, addr: u64) -> Option<Run> {
        if let Some(r) = self.containing(addr) {
            return Some(r.part(addr, r.end));
        }
        self.map.range(addr..).next().map(|(_, r)| *r)
    }

    /// Removes `start..end` from these runs; returns the parts removed, lowest first.
    pub fn take(&mut self, start: u64, end: u64) -> Vec<Run> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let first = match self.map.range(..=start).next_back() {
            Some((&k, r)) if r.end > start => k,
            _ => start,
        };
        let keys: Vec<u64> = self.map.range(first..end).map(|(&k, _)| k).collect();
        for k in keys {
            let Some(r) = self.map.remove(&k) else {
                continue;
            };
            self.bytes -= r.len();
            let (s, e) = (r.start.max(start), r.end.min(end));
            if r.start < s {
                self.insert(r.part(r.start, s));
            }
            if e < r.end {
                self.insert(r.part(e, r.end));
            }
            out.push(r.part(s, e));
        }
        out
    }

    /// The task moved `from..from+len` to `to` (mremap): runs there move with it, keeping
    /// where the images hold them.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let Some(end) = from.checked_add(len) else {
            return;
        };
        let moved = self.take(from, end);
        // Whatever was mapped where they land is gone (mremap unmaps its target first).
        self.take(to, to.saturating_add(len));
        for r in moved {
            let start = to.wrapping_add(r.start - from);
            self.insert(Run {
                start,
                end: start.wrapping_add(r.len()),
                img: r.img,
            });
        }
    }

    /// All runs, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = &Run> {
        self.map.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(start: u64, end: u64) -> Extent {
        Extent {
            start,
            end,
            offset: None,
        }
    }

    fn runs(rs: &[(u64, u64, u64)]) -> Vec<Run> {
        rs.iter()
            .map(|&(start, end, img)| Run { start, end, img })
            .collect()
    }

    #[test]
    fn lazy_extents_split_at_vmas() {
        let r = Runs::from_lazy(
            &[ext(0x1000, 0x5000), ext(0x8000, 0x9000)],
            &[(0x0, 0x3000), (0x3000, 0x4000), (0x4800, 0x9000)],
        );
        // 0x4000..0x4800 is in no VMA: left out.
        assert_eq!(
            r.iter().copied().collect::<Vec<_>>(),
            runs(&[
                (0x1000, 0x3000, 0x1000),
                (0x3000, 0x4000, 0x3000),
                (0x4800, 0x5000, 0x4800),
                (0x8000, 0x9000, 0x8000)
            ])
        );
        assert_eq!(r.bytes(), 0x2000 + 0x1000 + 0x800 + 0x1000);
    }

    #[test]
    fn take_cuts_runs_and_returns_the_parts() {
        let mut r = Runs::from_lazy(&[ext(0x1000, 0x5000), ext(0x6000, 0x8000)], &[(0, 1 << 20)]);
        assert_eq!(r.take(0x2000, 0x3000), runs(&[(0x2000, 0x3000, 0x2000)]));
        assert_eq!(r.containing(0x2000), None);
        assert_eq!(
            r.containing(0x1fff),
            Some(runs(&[(0x1000, 0x2000, 0x1000)])[0])
        );
        assert_eq!(
            r.take(0x4000, 0x7000),
            runs(&[(0x4000, 0x5000, 0x4000), (0x6000, 0x7000, 0x6000)])
        );
        assert_eq!(
            r.iter().copied().collect::<Vec<_>>(),
            runs(&[
                (0x1000, 0x2000, 0x1000),
                (0x3000, 0x4000, 0x3000),
                (0x7000, 0x8000, 0x7000)
            ])
        );
        assert_eq!(r.bytes(), 0x3000);
        assert!(r.take(0x8000, 0x9000).is_empty());
        assert_eq!(r.from(0x1800), Some(runs(&[(0x1800, 0x2000, 0x1800)])[0]));
        assert_eq!(r.from(0x2000), Some(runs(&[(0x3000, 0x4000, 0x3000)])[0]));
        assert_eq!(r.from(0x8000), None);
        assert!(r.take(0x5000, 0x5000).is_empty());
    }

    #[test]
    fn remap_moves_runs_and_keeps_their_image_address() {
        let mut r = Runs::from_lazy(&[ext(0x10000, 0x14000)], &[(0, 1 << 20)]);
        // mremap of 0x11000..0x13000 to 0x80000 (as glibc's realloc does).
        r.remap(0x11000, 0x80000, 0x2000);
        assert_eq!(
            r.iter().copied().collect::<Vec<_>>(),
            runs(&[
                (0x10000, 0x11000, 0x10000),
                (0x13000, 0x14000, 0x13000),
                (0x80000, 0x82000, 0x11000)
            ])
        );
        // Moving onto mapped pages replaces them.
        r.remap(0x80000, 0x10000, 0x1000);
        assert_eq!(
            r.iter().copied().collect::<Vec<_>>(),
            runs(&[
                (0x10000, 0x11000, 0x11000),
                (0x13000, 0x14000, 0x13000),
                (0x81000, 0x82000, 0x12000)
            ])
        );
        assert_eq!(r.bytes(), 0x3000);
    }

    /// Random operations against a page-by-page model.
    #[test]
    fn matches_a_page_model() {
        use std::collections::BTreeMap as Model;
        let page = 0x1000u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut r = Runs::from_lazy(
                &[ext(0, 16 * page), ext(20 * page, 40 * page)],
                &[(0, 64 * page)],
            );
            let mut m: Model<u64, u64> = (0..16).chain(20..40).map(|p| (p, p)).collect();
            for _ in 0..20 {
                let s = rand(48);
                let n = 1 + rand(8);
                match rand(2) {
                    0 => {
                        let got = r.take(s * page, (s + n) * page);
                        let mut pages = 0;
                        for x in &got {
                            for p in x.start / page..x.end / page {
                                assert_eq!(m.remove(&p), Some(x.img / page + p - x.start / page));
                                pages += 1;
                            }
                        }
                        assert!((s..s + n).all(|p| !m.contains_key(&p)));
                        assert!(pages <= n);
                    }
                    _ => {
                        // Anywhere, over mapped pages or not, but not overlapping itself
                        // (mremap refuses that).
                        let to = rand(200);
                        if to + n > s && to < s + n {
                            continue;
                        }
                        r.remap(s * page, to * page, n * page);
                        let moved: Vec<(u64, u64)> =
                            m.range(s..s + n).map(|(&k, &v)| (k, v)).collect();
                        for (k, _) in &moved {
                            m.remove(k);
                        }
                        for p in to..to + n {
                            m.remove(&p);
                        }
                        for (k, v) in moved {
                            m.insert(to + k - s, v);
                        }
                    }
                }
                let mut model_runs = 0u64;
                for x in r.iter() {
                    for p in x.start / page..x.end / page {
                        assert_eq!(m.get(&p), Some(&(x.img / page + p - x.start / page)));
                        model_runs += 1;
                    }
                }
                assert_eq!(model_runs, m.len() as u64);
                assert_eq!(r.bytes(), m.len() as u64 * page);
            }
        }
    }
}
