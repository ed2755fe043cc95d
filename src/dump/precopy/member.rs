//! One process of a pre-copied tree: its tracker, what the pre-dumps stored of its mappings,
//! and its part of a pre-dump round and of the final dump. Its pages go to its own page space
//! of each set (`image::page_key(space, addr)`), the space being its index in tree order.

use std::collections::BTreeMap;
use std::time::Instant;

use super::copier::RoundCopier;
use super::region::{in_sorted, intersect, keep, lookup, Known, Pages, Region};
use super::PAGE;
use crate::dump::memory::{self, Run, VmaPlan};
use crate::dump::{DumpError, FinalPlan, PageSink};
use crate::image::{PageRef, Vma, PAGE_SIZE};
use crate::proc::TreeMember;
use crate::store::SetWriter;
use crate::sys::pagemap::Pagemap;
use crate::track::{Area, Dirty, Tracker};

/// One tracked process of the tree.
pub(super) struct Member {
    pub(super) pid: i32,
    pub(super) comm: String,
    /// Its page space: its index in tree order.
    pub(super) space: u16,
    pub(super) tracker: Box<dyn Tracker>,
    pub(super) known: BTreeMap<u64, Known>,
    /// The final round's written pages (filled under the freeze).
    pub(super) final_dirty: Dirty,
}

/// Pages a round looked at and wrote.
pub(super) struct RoundFigures {
    pub(super) scanned: u64,
    pub(super) written: u64,
    pub(super) scan_us: u64,
}

impl Member {
    pub(super) fn new(m: &TreeMember, space: u16, tracker: Box<dyn Tracker>) -> Member {
        Member {
            pid: m.pid,
            comm: m.comm.clone(),
            space,
            tracker,
            known: BTreeMap::new(),
            final_dirty: Dirty::default(),
        }
    }

    /// This process's part of pre-dump `index`: arms the tracker (first round) or collects
    /// what was written, then hands the pages to copy to `writer` in its page space.
    pub(super) fn round(
        &mut self,
        index: u32,
        writer: &mut SetWriter<'_>,
    ) -> Result<RoundFigures, DumpError> {
        let pid = self.pid;
        let maps = crate::proc::maps(pid)?;
        let regions: Vec<Region> = maps.iter().filter_map(Region::from_map).collect();
        let areas: Vec<Area> = regions
            .iter()
            .filter(|r| r.tracked)
            .map(Region::area)
            .collect();
        let t_scan = Instant::now();
        let dirty = if index == 0 {
            self.tracker.start(&areas)?;
            None
        } else {
            Some(self.tracker.collect(&areas)?)
        };
        let scan_us = crate::util::us(t_scan.elapsed());
        // Forget mappings that are gone or changed.
        self.known.retain(|start, k| {
            regions
                .iter()
                .any(|r| r.ident.start == *start && r.ident == k.ident)
        });

        let pm = Pagemap::open(pid)?;
        let compare = self.tracker.compares_content();
        let mut copier = RoundCopier::new(pid, self.space)?;
        let mut scanned = 0;
        let mut written = 0;
        let mut to_copy = Vec::new();
        for r in &regions {
            scanned += r.npages();
            let fresh = !self.known.contains_key(&r.ident.start);
            if fresh {
                self.known.insert(
                    r.ident.start,
                    Known {
                        ident: r.ident.clone(),
                        refs: vec![None; r.npages() as usize],
                    },
                );
            }
            let whole = vec![r.area()];
            let candidates = match &dirty {
                None => whole,
                Some(_) if fresh || r.ident.shared => whole,
                Some(d) if r.tracked => d.within(r.ident.start, r.ident.end),
                // Private and not writable: unchanged while its identity is.
                Some(_) => Vec::new(),
            };
            if candidates.is_empty() {
                continue;
            }
            let file = matches!(r.pages, Pages::NotFile);
            let resident: Vec<Area> =
                memory::resident_regions(&pm, r.ident.start, r.ident.end, file)?
                    .into_iter()
                    .filter(|g| keep(r.pages, g.categories))
                    .map(|g| Area {
                        start: g.start,
                        end: g.end,
                    })
                    .collect();
            let copy = intersect(&candidates, &resident);
            let Some(known) = self.known.get_mut(&r.ident.start) else {
                return Err(DumpError::Internal("pre-copy lost a mapping".into()));
            };
            // Candidates that are not present any more are forgotten (not resurrected).
            for c in &candidates {
                for a in (c.start..c.end).step_by(PAGE_SIZE) {
                    let i = ((a - r.ident.start) / PAGE) as usize;
                    if !in_sorted(&copy, a) {
                        if let Some(slot) = known.refs.get_mut(i) {
                            *slot = None;
                        }
                    }
                }
            }
            to_copy.extend(copy.into_iter().map(|c| Run {
                addr: c.start,
                pages: c.pages() as usize,
                readable: r.readable,
                file: r.pages == Pages::NotFile,
            }));
        }
        for run in to_copy {
            written += copier.add(run, &self.known, compare, writer)?;
        }
        written += copier.flush(&self.known, compare, writer)?;
        Ok(RoundFigures {
            scanned,
            written,
            scan_us,
        })
    }

    /// Records that the committed set stores page `addr` of this process as `r`.
    pub(super) fn stored(&mut self, addr: u64, r: PageRef) {
        if let Some((_, k)) = self.known.range_mut(..=addr).next_back() {
            let i = ((addr - k.ident.start) / PAGE) as usize;
            if let Some(slot) = k.refs.get_mut(i) {
                *slot = Some(r);
            }
        }
    }

    /// Under the freeze: the last tracking round over the final dump's `vmas`; returns how
    /// long it took (µs).
    pub(super) fn prepare(&mut self, vmas: &[Vma]) -> Result<u64, DumpError> {
        let areas: Vec<Area> = vmas
            .iter()
            .filter_map(Region::from_vma)
            .filter(|r| r.tracked)
            .map(|r| r.area())
            .collect();
        let t = Instant::now();
        self.final_dirty = self.tracker.collect(&areas)?;
        Ok(crate::util::us(t.elapsed()))
    }

    /// Hands the pages of `carried` (present, unchanged) to `sink` by reference, at their
    /// addresses (the caller puts them in this process's space); returns how many.
    pub(super) fn carry(
        &self,
        carried: &[(u64, u64)],
        sink: &mut dyn PageSink,
    ) -> Result<u64, DumpError> {
        let mut n = 0;
        // A carried range may span adjacent mappings: look the mapping up again at its end.
        let mut k: Option<&Known> = None;
        for &(s, e) in carried {
            for a in (s..e).step_by(PAGE_SIZE) {
                if !k.is_some_and(|k| a >= k.ident.start && a < k.ident.end) {
                    k = self.known.range(..=a).next_back().map(|(_, k)| k);
                }
                match k.and_then(|k| lookup(k, a)) {
                    Some(r) => sink.add_ref(a, r)?,
                    None => {
                        return Err(DumpError::Internal(format!(
                            "carried page {a:#x} of pid {} was never stored",
                            self.pid
                        )))
                    }
                }
                n += 1;
            }
        }
        Ok(n)
    }
}

impl FinalPlan for Member {
    fn vma_plan(&self, vma: &Vma) -> Option<VmaPlan<'_>> {
        if self.tracker.compares_content() {
            return None;
        }
        let r = Region::from_vma(vma)?;
        let k = self.known.get(&vma.start).filter(|k| k.ident == r.ident)?;
        if r.ident.shared {
            return None;
        }
        let ranges = self.final_dirty.ranges();
        let dirty = if r.tracked {
            let a = ranges.partition_point(|d| d.end <= vma.start);
            let b = ranges.partition_point(|d| d.start < vma.end);
            &ranges[a..b.max(a)]
        } else {
            &[]
        };
        Some(VmaPlan {
            start: vma.start,
            known: &k.refs,
            dirty,
        })
    }
}

/// The first difference between the tracked processes (`tracked`: pid and comm, tree order)
/// and the living processes of the tree now (`now`, tree order), as the error that fails the
/// pre-copy naming the process: one that joined the tree (forked) or left it (exited). None
/// when the tree is the same.
pub(super) fn changed(root: i32, tracked: &[(i32, &str)], now: &[TreeMember]) -> Option<DumpError> {
    let living: Vec<&TreeMember> = now.iter().filter(|m| !m.zombie).collect();
    if let Some(m) = living
        .iter()
        .find(|m| !tracked.iter().any(|(p, _)| *p == m.pid))
    {
        return Some(DumpError::Member {
            root,
            pid: m.pid,
            comm: m.comm.clone(),
            source: Box::new(DumpError::Unsupported(format!(
                "it was forked during pre-copy (by pid {}): a pre-copy tracks the processes \
                 of the tree it started with, and fails when one joins or leaves",
                m.ppid
            ))),
        });
    }
    if let Some((pid, comm)) = tracked
        .iter()
        .find(|(p, _)| !living.iter().any(|m| m.pid == *p))
    {
        let how = if now.iter().any(|m| m.pid == *pid) {
            "it exited during pre-copy"
        } else {
            "it left the tree during pre-copy"
        };
        return Some(DumpError::Member {
            root,
            pid: *pid,
            comm: comm.to_string(),
            source: Box::new(DumpError::Unsupported(format!(
                "{how}: a pre-copy tracks the processes of the tree it started with, and fails \
                 when one joins or leaves"
            ))),
        });
    }
    // Same processes in another order (a process re-parented within the tree): the page
    // spaces would not match the final dump's.
    let order: Vec<i32> = living.iter().map(|m| m.pid).collect();
    let was: Vec<i32> = tracked.iter().map(|(p, _)| *p).collect();
    if order != was {
        return Some(DumpError::Unsupported(format!(
            "the tree of pid {root} changed shape during pre-copy (processes {was:?}, now \
             {order:?})"
        )));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pid: i32, ppid: i32, zombie: bool) -> TreeMember {
        TreeMember {
            pid,
            ppid,
            comm: format!("p{pid}"),
            zombie,
            exit_signal: 17,
            exit_code: 0,
            pgid: 10,
            sid: 10,
        }
    }

    #[test]
    fn a_tree_that_gains_or_loses_a_process_names_it_and_a_zombie_from_the_start_is_no_change() {
        let tracked = [(10, "p10"), (11, "p11")];
        assert!(changed(10, &tracked, &[m(10, 1, false), m(11, 10, false)]).is_none());
        // A zombie that was one from the start is not tracked, and is no change.
        assert!(changed(
            10,
            &tracked,
            &[m(10, 1, false), m(11, 10, false), m(12, 10, true)]
        )
        .is_none());
        let e = changed(
            10,
            &tracked,
            &[m(10, 1, false), m(11, 10, false), m(13, 11, false)],
        )
        .unwrap();
        assert!(e.is_refusal());
        assert!(
            e.to_string().starts_with(
                "pid 13 (p13) in the tree of pid 10: it was forked during pre-copy (by pid 11)"
            ),
            "{e}"
        );
        let e = changed(10, &tracked, &[m(10, 1, false), m(11, 10, true)]).unwrap();
        assert!(
            e.to_string()
                .starts_with("pid 11 (p11) in the tree of pid 10: it exited during pre-copy"),
            "{e}"
        );
        let e = changed(10, &tracked, &[m(10, 1, false)]).unwrap();
        assert!(e.to_string().contains("it left the tree"), "{e}");
    }
}
