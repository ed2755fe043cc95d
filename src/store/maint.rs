//! Maintenance: gc (drop and repack dead packs) and what it shares with du and verify (the
//! live pages, the plan, the byte counts of directories).

use super::chains::{self, SetRef, SetState};
use super::footer::{PackId, CODEC_ZSTD};
use super::index::{IdMap, Index, Loc, PackInfo};
use super::pack::{encode_frame, PackWriter};
use super::read::{check, Located};
use super::{fsutil, Store, StoreError};
use crate::image::{ImageSet, PageId, PageRef, PAGE_SIZE};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What [`Store::gc`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Sets kept.
    pub sets: u64,
    pub packs_before: u64,
    pub packs_after: u64,
    /// Packs deleted because no set references any of their pages.
    pub packs_removed: u64,
    /// Packs mostly (>50%) dead whose live pages were moved to new packs.
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub pages_moved: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_freed: u64,
    pub temp_files_removed: u64,
    pub stale_segments_removed: u64,
    /// Pre-dump sets a pre-copy left (interrupted, killed, refused by the final dump): no dump
    /// named them and no process was writing their chain any more.
    pub incomplete_sets_removed: Vec<String>,
    /// What gc left alone, each entry naming itself: `pack <id>: why` (reading it failed) or
    /// `packs/<xx> (not listed: ...)` (a directory it could not list). `verify` says more.
    pub skipped: Vec<String>,
    pub duration_us: u64,
}

/// Files and bytes under a directory, and what could not be read on the way (counted as
/// nothing).
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub files: u64,
    pub bytes: u64,
    pub unread: Vec<walkdir::Error>,
}

impl Tally {
    /// Logs every entry that could not be read, with what it means for the figure (`meaning`).
    pub fn warn_unread(&self, meaning: &str) {
        for e in &self.unread {
            let path = e
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            tracing::warn!("cannot read {path}: {e} ({meaning})");
        }
    }
}

/// Counts the files under `dir` and their bytes.
pub(super) fn dir_bytes(dir: &std::path::Path) -> Tally {
    let mut t = Tally::default();
    for e in walkdir::WalkDir::new(dir) {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                t.unread.push(err);
                continue;
            }
        };
        if e.file_type().is_file() {
            t.files += 1;
            match e.metadata() {
                Ok(m) => t.bytes += m.len(),
                Err(err) => t.unread.push(err),
            }
        }
    }
    t
}

/// Manifests that loaded, and the paths of those that did not with why.
pub(super) type Loaded = (Vec<ImageSet>, Vec<(PathBuf, StoreError)>);

/// Every manifest, oldest set first.
pub(super) fn load_all(store: &Store) -> Result<Loaded, StoreError> {
    let paths = store.manifest_paths(None)?;
    let results: Vec<(PathBuf, Result<ImageSet, StoreError>)> = paths
        .into_par_iter()
        .map(|p| {
            let r = std::fs::read(&p)
                .map_err(|e| StoreError::io(format!("reading manifest {}", p.display()), e))
                .and_then(|b| {
                    crate::image::encode::decode_manifest(&b).map_err(|source| {
                        StoreError::Manifest {
                            path: p.clone(),
                            source,
                        }
                    })
                });
            (p, r)
        })
        .collect();
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (p, r) in results {
        match r {
            Ok(s) => ok.push(s),
            Err(e) => bad.push((p, e)),
        }
    }
    ok.sort_by(|a, b| (a.created_us, &a.id).cmp(&(b.created_us, &b.id)));
    Ok((ok, bad))
}

/// A pack to repack, its live pages in frame order, and whether it had zstd frames.
pub(super) type Repack = (PackInfo, Vec<(PageId, Loc)>, bool);

/// What gc does with the packs, given the live pages: [`Store::gc`] carries it out and
/// [`Store::du`] adds it up, so that what du says gc frees is what gc frees.
pub(super) struct GcPlan {
    /// Packs no live page is in: deleted.
    pub doomed: Vec<PackId>,
    /// Packs mostly (>50%) dead: their live pages (in frame order) are moved to new packs and
    /// the packs deleted.
    pub repack: Vec<Repack>,
    /// Index segments of missing packs that name no live page.
    pub stale: Vec<PackId>,
}

/// The pages gc keeps: every page (stored, or lazy) some kept set names.
pub(super) fn live_pages(sets: &[ImageSet]) -> IdMap<()> {
    let mut live: IdMap<()> = IdMap::default();
    for s in sets {
        for (_, r) in s.pages.iter() {
            if let PageRef::Stored(id) | PageRef::Lazy(id) = r {
                live.insert(id, ());
            }
        }
    }
    live
}

/// The state of each set (see [`SetState`]), in the same order.
pub(super) fn set_states(store: &Store, sets: &[ImageSet]) -> Vec<SetState> {
    let refs: Vec<SetRef<'_>> = sets
        .iter()
        .map(|s| SetRef {
            id: &s.id,
            kind: s.kind,
            parent: s.parent.as_deref(),
            created_us: s.created_us,
        })
        .collect();
    chains::states(&store.inner.root, &refs, store.inner.remote.is_some())
}

/// What gc would do to the packs of `idx` keeping the pages of `live`.
pub(super) fn gc_plan(idx: &Index, live: &IdMap<()>) -> GcPlan {
    let mut live_in = vec![0u64; idx.packs.len()];
    let mut live_pages: BTreeMap<u32, Vec<(PageId, Loc)>> = BTreeMap::new();
    for (id, loc) in &idx.pages {
        if live.contains_key(id) {
            live_in[loc.pack as usize] += 1;
            live_pages.entry(loc.pack).or_default().push((*id, *loc));
        }
    }
    let mut doomed = Vec::new();
    let mut repack = Vec::new();
    for (i, p) in idx.packs.iter().enumerate() {
        if live_in[i] == 0 {
            doomed.push(p.id);
        } else if live_in[i] * 2 < p.npages as u64 {
            let mut pages = live_pages.remove(&(i as u32)).unwrap_or_default();
            pages.sort_by_key(|(_, l)| (l.frame, l.slot));
            let zstd = p.frames.iter().any(|f| f.codec == CODEC_ZSTD);
            repack.push((p.clone(), pages, zstd));
        }
    }
    let mut stale: Vec<PackId> = idx
        .missing
        .iter()
        .filter(|(id, _)| !live.contains_key(*id))
        .map(|(_, p)| *p)
        .collect();
    stale.sort();
    stale.dedup();
    // Keep segments that still name a live page: they say which pack is missing.
    let keep: std::collections::HashSet<PackId> = idx
        .missing
        .iter()
        .filter(|(id, _)| live.contains_key(*id))
        .map(|(_, p)| *p)
        .collect();
    stale.retain(|p| !keep.contains(p));
    // A pack in a directory the index could not list is not missing: keep its segment.
    stale.retain(|p| !idx.unlisted.iter().any(|d| d.holds(p)));
    GcPlan {
        doomed,
        repack,
        stale,
    }
}

impl Store {
    /// Brings the in-memory index up to date with the packs other processes committed since
    /// it was loaded (only those are read). A migration calls it as each pre-dump of its
    /// worker is committed, so that the restore after the final dump reads only that dump's
    /// packs: indexing the pre-dumps' pages took 25 ms of the pause.
    pub fn refresh_index(&self) -> Result<(), StoreError> {
        self.inner.refresh_index()
    }

    /// Removes packs no set references and repacks packs that are mostly dead, and clears
    /// `tmp/`. Takes the store lock exclusively (waits up to the lock timeout for writers,
    /// then refuses); refuses when a manifest cannot be read, since its pages would look dead.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let start = Instant::now();
        let _lock = self.lock(true, "gc")?;
        // On a bucket: no writer of any host is between its lock object and its commit.
        let remote = self.inner.remote.clone();
        let _bucket_lock = match &remote {
            Some(r) => Some(super::bucket::lock::take(
                r,
                true,
                "gc",
                self.lock_timeout(),
            )?),
            None => None,
        };
        if let Some(r) = &remote {
            super::bucket::sync::pull_manifests(r, &self.inner.root, false)?;
        }
        self.refresh_index()?;
        let root = self.inner.root.clone();
        let (sets, bad) = load_all(self)?;
        if let Some((path, e)) = bad.into_iter().next() {
            return Err(StoreError::GcRefused {
                reason: format!(
                    "manifest {} is unreadable ({e}); its pages would look unreferenced. Remove it (haul images rm) or restore it first",
                    path.display()
                ),
            });
        }
        let mut rep = GcReport::default();
        // Pre-dumps a pre-copy left (no dump names them, no process holds their lock) go
        // first: then their pages are garbage like any other.
        let states = set_states(self, &sets);
        let mut kept = Vec::with_capacity(sets.len());
        for (s, st) in sets.into_iter().zip(states) {
            if st == SetState::Incomplete {
                if let Some(r) = &remote {
                    r.delete(&format!("sets/{}/{}", s.job, s.id))?;
                }
                Store::remove_manifest(&self.find_set(&s.id)?)?;
                rep.incomplete_sets_removed.push(s.id);
            } else {
                kept.push(s);
            }
        }
        chains::remove_stale_locks(&root);
        if let Some(r) = &remote {
            super::bucket::lock::remove_stale(r)?;
        }
        let sets = kept;
        rep.sets = sets.len() as u64;
        let live = live_pages(&sets);
        let GcPlan {
            doomed,
            repack,
            stale,
        } = {
            let idx = self
                .inner
                .index
                .read()
                .map_err(|_| StoreError::Writer("index lock poisoned".into()))?;
            for d in &idx.unlisted {
                rep.skipped
                    .push(format!("{d} (not listed: unreferenced packs in it remain)"));
            }
            rep.packs_before = idx.packs.len() as u64;
            rep.bytes_before = idx.packs.iter().map(|p| p.len).sum();
            gc_plan(&idx, &live)
        };
        // A bucket's packs are deleted whole, never repacked (a repack would rewrite objects
        // other hosts may be reading); the young ones are left for the next gc.
        let (doomed, repack) = match &remote {
            Some(r) => {
                let grace = self.gc_grace();
                let young = super::bucket::maint::young_packs(r, grace)?;
                let (young_doomed, doomed): (Vec<PackId>, Vec<PackId>) =
                    doomed.into_iter().partition(|p| young.contains(p));
                for p in young_doomed {
                    rep.skipped.push(format!(
                        "pack {p}: unreferenced but younger than the grace period ({}), left for a later gc",
                        humantime::format_duration(grace)
                    ));
                }
                (doomed, Vec::new())
            }
            None => (doomed, repack),
        };
        // Repack: copy live pages into new packs first; delete the old ones only after the new
        // ones are committed.
        let frame_pages = self.inner.frame_pages.load(Ordering::Relaxed);
        let target = self.inner.pack_target.load(Ordering::Relaxed);
        let mut replaced = Vec::new();
        let mut writer: Option<PackWriter> = None;
        let mut written = Vec::new();
        for (info, pages, zstd) in &repack {
            match self.repack_one(info, pages, *zstd, frame_pages, &mut writer) {
                Ok(n) => {
                    rep.pages_moved += n;
                    replaced.push(info.id);
                }
                Err(e) => rep.skipped.push(format!("pack {}: {e}", info.id)),
            }
            if writer.as_ref().is_some_and(|w| w.len() >= target) {
                if let Some(w) = writer.take() {
                    written.push(w.finish(&root)?);
                }
            }
        }
        if let Some(w) = writer.take() {
            if w.is_empty() {
                w.abandon();
            } else {
                written.push(w.finish(&root)?);
            }
        }
        rep.packs_written = written.len() as u64;
        rep.packs_repacked = replaced.len() as u64;
        for id in doomed.iter().chain(replaced.iter()) {
            self.delete_pack(id)?;
        }
        rep.packs_removed = doomed.len() as u64;
        for id in stale {
            let seg = root.join("index").join(format!("{}.idx", id.to_hex()));
            match std::fs::remove_file(&seg) {
                Ok(()) => rep.stale_segments_removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    "gc left {}: {e} (a stale index segment: it only names a missing pack)",
                    seg.display()
                ),
            }
        }
        fsutil::fsync_dir(&root.join("index"))?;
        // No writer is alive (we hold the lock alone): whatever is in tmp/ is a leftover.
        match std::fs::read_dir(root.join("tmp")) {
            Ok(rd) => {
                for e in rd {
                    let removed = e.and_then(|e| {
                        std::fs::remove_file(e.path())?;
                        Ok(())
                    });
                    match removed {
                        Ok(()) => rep.temp_files_removed += 1,
                        Err(e) => tracing::warn!(
                            "gc could not remove a file in tmp/: {e} (a leftover temp file keeps its space)"
                        ),
                    }
                }
            }
            Err(e) => {
                tracing::warn!("gc could not list tmp/: {e} (leftover temp files keep their space)")
            }
        }
        self.drop_caches_quiet();
        let mut idx = self
            .inner
            .index
            .write()
            .map_err(|_| StoreError::Writer("index lock poisoned".into()))?;
        let present = match &remote {
            Some(r) => Some(super::bucket::sync::pull_index(r, &root)?),
            None => None,
        };
        *idx = Index::load_from(&root, present.as_ref())?;
        rep.packs_after = idx.packs.len() as u64;
        rep.bytes_after = idx.packs.iter().map(|p| p.len).sum();
        rep.bytes_freed = rep.bytes_before.saturating_sub(rep.bytes_after);
        rep.duration_us = crate::util::us(start.elapsed());
        Ok(rep)
    }

    fn drop_caches_quiet(&self) {
        if let Ok(mut c) = self.inner.cache.lock() {
            *c = super::FrameCache::default();
        }
        if let Ok(mut f) = self.inner.files.lock() {
            f.clear();
        }
    }

    /// Deletes a pack: its index segment first (so no one dedups against it), then the file.
    fn delete_pack(&self, id: &PackId) -> Result<(), StoreError> {
        let root = &self.inner.root;
        // A bucket's pack goes first; the cache's copy and segment follow.
        if let Some(r) = &self.inner.remote {
            r.delete(&id.key())?;
        }
        let seg = root.join("index").join(format!("{}.idx", id.to_hex()));
        match std::fs::remove_file(&seg) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(format!("removing {}", seg.display()), e)),
        }
        fsutil::fsync_dir(&root.join("index"))?;
        let path = id.path(root);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(format!("removing {}", path.display()), e)),
        }
        // (A bucket store's cache may never have held the pack, nor its directory.)
        if let Some(dir) = path.parent().filter(|d| d.exists()) {
            fsutil::fsync_dir(dir)?;
        }
        Ok(())
    }

    /// Copies the live pages of one pack into `writer`; every page is checked on the way.
    fn repack_one(
        &self,
        info: &super::index::PackInfo,
        pages: &[(PageId, Loc)],
        zstd: bool,
        frame_pages: usize,
        writer: &mut Option<PackWriter>,
    ) -> Result<u64, StoreError> {
        let mut data = Vec::with_capacity(pages.len() * PAGE_SIZE);
        let mut ids = Vec::with_capacity(pages.len());
        let mut last: Option<(u32, Vec<u8>)> = None;
        for (id, loc) in pages {
            let Some(f) = info.frames.get(loc.frame as usize) else {
                continue;
            };
            if last.as_ref().map(|(n, _)| *n) != Some(loc.frame) {
                let l = Located {
                    pack: info.id,
                    frame_no: loc.frame,
                    frame: *f,
                    slot: loc.slot,
                };
                last = Some((loc.frame, self.inner.read_frame(id, &l, false)?));
            }
            if let Some((_, frame)) = &last {
                let s = loc.slot as usize * PAGE_SIZE;
                let page = &frame[s..s + PAGE_SIZE];
                check(id, page, Some(info.id))?;
                data.extend_from_slice(page);
                ids.push(*id);
            }
        }
        let level = zstd.then_some(3);
        let frames: Vec<(Vec<u8>, u8)> = data
            .par_chunks(frame_pages * PAGE_SIZE)
            .map(|c| encode_frame(c, level))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::io("compressing a frame", e))?;
        if writer.is_none() {
            *writer = Some(PackWriter::create(&self.inner.root)?);
        }
        if let Some(w) = writer.as_mut() {
            for (k, (bytes, codec)) in frames.iter().enumerate() {
                let end = ((k + 1) * frame_pages).min(ids.len());
                w.append_frame(bytes, *codec, &ids[k * frame_pages..end])?;
            }
        }
        Ok(ids.len() as u64)
    }
}
