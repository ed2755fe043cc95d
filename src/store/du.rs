//! `haul images du`: where the store's bytes are, per job, and what gc would free.

use super::chains::SetState;
use super::footer::PackId;
use super::index::IdMap;
use super::maint::{dir_bytes, gc_plan, live_pages, load_all, set_states};
use super::{Store, StoreError};
use crate::image::{ImageSet, PageId, PageRef, PAGE_SIZE};
use serde::Serialize;
use std::collections::BTreeMap;

/// Disk use of one job's sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobUsage {
    pub job: String,
    pub sets: u64,
    pub newest: Option<String>,
    /// Sum of the sets' logical bytes (non-zero pages × 4096).
    pub bytes_logical: u64,
    /// Compressed bytes of the distinct pages this job's sets reference.
    pub bytes_referenced: u64,
    /// Of those, bytes referenced by this job only.
    pub bytes_exclusive: u64,
}

/// What [`Store::du`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DuReport {
    pub sets: u64,
    pub jobs: Vec<JobUsage>,
    pub packs: u64,
    pub bytes_packs: u64,
    pub bytes_index: u64,
    pub bytes_manifests: u64,
    pub bytes_temp: u64,
    /// Distinct pages in the store.
    pub pages_stored: u64,
    /// Distinct pages some set references.
    pub pages_referenced: u64,
    /// Compressed bytes of the referenced pages.
    pub bytes_referenced: u64,
    /// Compressed bytes of pages no set gc keeps references. gc frees what
    /// `bytes_gc_frees` says: the pages of packs that are still mostly in use stay.
    pub bytes_unreferenced: u64,
    /// Sum over sets of their logical bytes.
    pub bytes_logical: u64,
    /// Logical bytes of the distinct referenced pages / their compressed bytes.
    pub compression_ratio: f64,
    /// Sum of the sets' logical bytes / logical bytes of the distinct referenced pages.
    pub dedup_ratio: f64,
    pub unreadable_manifests: u64,
    /// Pre-dump sets a pre-copy left (see [`super::SetState::Incomplete`]): gc removes them.
    /// Counted in `sets`; the other figures leave them out, as gc will.
    pub sets_incomplete: u64,
    /// Pre-dump sets of a pre-copy still running.
    pub sets_in_progress: u64,
    /// What `haul images gc` would free now (pack bytes, as its `bytes_freed`): the packs it
    /// would delete, plus what repacking the mostly dead ones saves (estimated from the sizes
    /// of their frames). 0 while an unreadable manifest makes gc refuse.
    pub bytes_gc_frees: u64,
    /// Packs gc would delete, and those it would repack.
    pub gc_packs_removed: u64,
    pub gc_packs_repacked: u64,
}

/// Bytes of the files under `dir`; what cannot be read is logged as left out (`left_out` says of what).
fn tally(dir: &std::path::Path, left_out: &str) -> u64 {
    let t = dir_bytes(dir);
    t.warn_unread(&format!("du: {left_out}"));
    t.bytes
}

impl Store {
    /// Where the store's bytes are: per job, referenced vs not, ratios.
    pub fn du(&self) -> Result<DuReport, StoreError> {
        self.refresh_index()?;
        let (sets, bad) = load_all(self)?;
        let root = &self.inner.root;
        let all_sets = sets.len() as u64;
        // As gc sees them: the sets a pre-copy left are as good as gone.
        let states = set_states(self, &sets);
        let count = |st: SetState| states.iter().filter(|s| **s == st).count() as u64;
        let (sets_incomplete, sets_in_progress) =
            (count(SetState::Incomplete), count(SetState::InProgress));
        let sets: Vec<ImageSet> = sets
            .into_iter()
            .zip(states)
            .filter(|(_, st)| *st != SetState::Incomplete)
            .map(|(s, _)| s)
            .collect();
        let idx = self
            .inner
            .index
            .read()
            .map_err(|_| StoreError::Writer("index lock poisoned".into()))?;
        let mut rep = DuReport {
            sets: all_sets,
            sets_incomplete,
            sets_in_progress,
            unreadable_manifests: bad.len() as u64,
            packs: idx.packs.len() as u64,
            bytes_packs: idx.packs.iter().map(|p| p.len).sum(),
            bytes_index: tally(&root.join("index"), "left out of bytes_index"),
            bytes_manifests: tally(&root.join("sets"), "left out of bytes_manifests"),
            bytes_temp: tally(&root.join("tmp"), "left out of bytes_temp"),
            pages_stored: idx.pages.len() as u64,
            ..Default::default()
        };
        let cost = |id: &PageId| {
            idx.lookup(id)
                .map(|(l, p)| p.page_cost(l.frame))
                .unwrap_or(0)
        };
        // page -> jobs referencing it (first job, and whether a second one does too)
        let mut owners: IdMap<(usize, bool)> = IdMap::default();
        let mut jobs: BTreeMap<String, JobUsage> = BTreeMap::new();
        let mut job_ix: Vec<String> = Vec::new();
        for s in &sets {
            rep.bytes_logical += s.figures.bytes_logical;
            let j = jobs.entry(s.job.clone()).or_insert_with(|| JobUsage {
                job: s.job.clone(),
                ..Default::default()
            });
            j.sets += 1;
            j.newest = Some(s.id.clone());
            j.bytes_logical += s.figures.bytes_logical;
            let ji = match job_ix.iter().position(|x| *x == s.job) {
                Some(i) => i,
                None => {
                    job_ix.push(s.job.clone());
                    job_ix.len() - 1
                }
            };
            for (_, r) in s.pages.iter() {
                if let PageRef::Stored(id) = r {
                    let e = owners.entry(id).or_insert((ji, false));
                    if e.0 != ji {
                        e.1 = true;
                    }
                }
            }
        }
        let mut per_job_ref: Vec<(u64, u64)> = vec![(0, 0); job_ix.len()];
        for (id, (ji, shared)) in &owners {
            let c = cost(id);
            rep.pages_referenced += 1;
            rep.bytes_referenced += c;
            per_job_ref[*ji].0 += c;
            if !shared {
                per_job_ref[*ji].1 += c;
            }
        }
        // Shared pages count toward every job referencing them.
        if job_ix.len() > 1 {
            for j in per_job_ref.iter_mut() {
                j.0 = 0;
            }
            let mut seen: Vec<IdMap<()>> = vec![IdMap::default(); job_ix.len()];
            for s in &sets {
                let ji = job_ix.iter().position(|x| *x == s.job).unwrap_or(0);
                for (_, r) in s.pages.iter() {
                    if let PageRef::Stored(id) = r {
                        if seen[ji].insert(id, ()).is_none() {
                            per_job_ref[ji].0 += cost(&id);
                        }
                    }
                }
            }
        }
        for (ji, name) in job_ix.iter().enumerate() {
            if let Some(j) = jobs.get_mut(name) {
                j.bytes_referenced = per_job_ref[ji].0;
                j.bytes_exclusive = per_job_ref[ji].1;
            }
        }
        rep.jobs = jobs.into_values().collect();
        let all: u64 = idx
            .pages
            .values()
            .map(|l| idx.packs[l.pack as usize].page_cost(l.frame))
            .sum();
        rep.bytes_unreferenced = all.saturating_sub(rep.bytes_referenced);
        if bad.is_empty() {
            let plan = gc_plan(&idx, &live_pages(&sets));
            let len = |id: &PackId| {
                idx.by_pack
                    .get(id)
                    .and_then(|i| idx.packs.get(*i as usize))
                    .map(|p| p.len)
                    .unwrap_or(0)
            };
            let removed: u64 = plan.doomed.iter().map(len).sum();
            let repacked: u64 = plan
                .repack
                .iter()
                .map(|(p, pages, _)| {
                    let kept: u64 = pages.iter().map(|(_, l)| p.page_cost(l.frame)).sum();
                    p.len.saturating_sub(kept)
                })
                .sum();
            rep.gc_packs_removed = plan.doomed.len() as u64;
            rep.gc_packs_repacked = plan.repack.len() as u64;
            rep.bytes_gc_frees = removed + repacked;
        }
        let unique_logical = rep.pages_referenced * PAGE_SIZE as u64;
        rep.compression_ratio = if rep.bytes_referenced > 0 {
            unique_logical as f64 / rep.bytes_referenced as f64
        } else {
            0.0
        };
        rep.dedup_ratio = if unique_logical > 0 {
            rep.bytes_logical as f64 / unique_logical as f64
        } else {
            0.0
        };
        Ok(rep)
    }
}
