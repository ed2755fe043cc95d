//! Maintenance: verify (re-read and re-hash everything), gc (drop and repack dead packs),
//! du (where the bytes are).

use super::chains::{self, SetRef, SetState};
use super::footer::{PackId, CODEC_ZSTD};
use super::index::{IdMap, Index, Loc, PackInfo};
use super::pack::{encode_frame, PackWriter};
use super::read::{check, Located};
use super::{fsutil, Store, StoreError};
use crate::image::{ImageSet, PageId, PageRef, PAGE_SIZE};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// One problem found by [`Store::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyProblem {
    /// `manifest`, `page` or `pack`.
    pub kind: String,
    pub set: Option<String>,
    pub page: Option<String>,
    pub addr: Option<u64>,
    pub pack: Option<String>,
    pub message: String,
}

/// What [`Store::verify`] checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// No problems.
    pub ok: bool,
    pub sets_checked: u64,
    /// Distinct stored pages read back and re-hashed.
    pub pages_checked: u64,
    pub frames_checked: u64,
    /// Packs whose whole content was hashed against their id: every pack of the store, or
    /// every pack one set has a page in.
    pub packs_checked: u64,
    pub bytes_read: u64,
    /// Packs no set references (garbage for gc; not a problem). Whole-store verify only.
    pub packs_unreferenced: u64,
    /// Files left in `tmp/` (by writers in progress or crashed; gc removes them).
    pub temp_files: u64,
    pub problems: Vec<VerifyProblem>,
    pub duration_us: u64,
}

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
    /// Packs left alone because reading them failed (verify says why).
    pub skipped: Vec<String>,
    pub duration_us: u64,
}

/// (pack, frame) and the pages (id, slot) to check in it.
type FrameGroup = ((u32, u32), Vec<(PageId, u16)>);

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

fn problem(kind: &str, message: String) -> VerifyProblem {
    VerifyProblem {
        kind: kind.into(),
        set: None,
        page: None,
        addr: None,
        pack: None,
        message,
    }
}

fn page_problem(e: &StoreError, set: &str, addr: u64) -> VerifyProblem {
    let at = match e {
        StoreError::PageCorrupt { at }
        | StoreError::PackMissing { at }
        | StoreError::PageMissing { at }
        | StoreError::PageUnreadable { at, .. } => Some(at.clone()),
        _ => None,
    };
    let e = e.clone_message_in_set(set, addr);
    VerifyProblem {
        kind: "page".into(),
        set: Some(set.into()),
        page: at.as_ref().map(|a| a.page.to_hex()),
        addr: Some(addr),
        pack: at.and_then(|a| a.pack.map(|p| p.to_hex())),
        message: e,
    }
}

impl StoreError {
    fn clone_message_in_set(&self, set: &str, addr: u64) -> String {
        let at = match self {
            StoreError::PageCorrupt { at }
            | StoreError::PackMissing { at }
            | StoreError::PageMissing { at }
            | StoreError::PageUnreadable { at, .. } => at.clone(),
            e => return e.to_string(),
        };
        let mut at = at;
        at.set = Some(set.into());
        at.addr = Some(addr);
        match self {
            StoreError::PageCorrupt { .. } => StoreError::PageCorrupt { at },
            StoreError::PackMissing { .. } => StoreError::PackMissing { at },
            StoreError::PageMissing { .. } => StoreError::PageMissing { at },
            StoreError::PageUnreadable { problem, .. } => StoreError::PageUnreadable {
                at,
                problem: problem.clone(),
            },
            _ => return self.to_string(),
        }
        .to_string()
    }
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
pub(super) fn set_states(root: &std::path::Path, sets: &[ImageSet]) -> Vec<SetState> {
    let refs: Vec<SetRef<'_>> = sets
        .iter()
        .map(|s| SetRef {
            id: &s.id,
            kind: s.kind,
            parent: s.parent.as_deref(),
        })
        .collect();
    chains::states(root, &refs)
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
    pub(super) fn refresh_index(&self) -> Result<(), StoreError> {
        self.inner
            .index
            .write()
            .map_err(|_| StoreError::Writer("index lock poisoned".into()))?
            .refresh(&self.inner.root)
    }

    /// Reads back every page of one set (or of every set) and hashes it again, and hashes
    /// every pack those pages are in against its id (a whole-store verify: every pack). Problems are listed, not returned as
    /// errors; an error means verify itself could not run.
    pub fn verify(&self, set: Option<&str>) -> Result<VerifyReport, StoreError> {
        let start = Instant::now();
        self.refresh_index()?;
        let mut rep = VerifyReport::default();
        let sets = match set {
            Some(id) => match self.load_set(id) {
                Ok(s) => vec![s],
                Err(e @ StoreError::SetNotFound { .. }) => return Err(e),
                Err(e) => {
                    let mut p = problem("manifest", e.to_string());
                    p.set = Some(id.into());
                    rep.problems.push(p);
                    vec![]
                }
            },
            None => {
                let (ok, bad) = load_all(self)?;
                for (path, e) in bad {
                    let mut p = problem("manifest", e.to_string());
                    p.set = path.file_name().and_then(|n| n.to_str()).map(String::from);
                    rep.problems.push(p);
                }
                ok
            }
        };
        rep.sets_checked = sets.len() as u64;
        // First reference of every distinct stored page, to name it in problems.
        let mut refs: IdMap<(usize, u64)> = IdMap::default();
        for (si, s) in sets.iter().enumerate() {
            for (addr, r) in s.pages.iter() {
                if let PageRef::Stored(id) = r {
                    refs.entry(id).or_insert((si, addr));
                }
            }
        }
        let idx = self
            .inner
            .index
            .read()
            .map_err(|_| StoreError::Writer("index lock poisoned".into()))?;
        let mut frames: HashMap<(u32, u32), Vec<(PageId, u16)>> = HashMap::new();
        for (id, (si, addr)) in &refs {
            match idx.pages.get(id) {
                Some(Loc { pack, frame, slot }) => frames
                    .entry((*pack, *frame))
                    .or_default()
                    .push((*id, *slot)),
                None => {
                    let e = match idx.missing.get(id) {
                        Some(p) => StoreError::PackMissing {
                            at: super::PageAt {
                                set: None,
                                page: *id,
                                addr: None,
                                pack: Some(*p),
                            },
                        },
                        None => StoreError::PageMissing {
                            at: super::PageAt {
                                set: None,
                                page: *id,
                                addr: None,
                                pack: None,
                            },
                        },
                    };
                    rep.problems.push(page_problem(&e, &sets[*si].id, *addr));
                }
            }
        }
        let inner = &*self.inner;
        let frame_list: Vec<FrameGroup> = frames.into_iter().collect();
        let results: Vec<(u64, u64, Vec<VerifyProblem>)> = frame_list
            .par_iter()
            .map(|((pack, frame), pages)| {
                let mut probs = Vec::new();
                let Some(p) = idx.packs.get(*pack as usize) else {
                    return (0, 0, probs);
                };
                let Some(f) = p.frames.get(*frame as usize) else {
                    return (0, 0, probs);
                };
                let name = |id: &PageId| {
                    let (si, addr) = refs[id];
                    (sets[si].id.as_str(), addr)
                };
                let l = Located {
                    pack: p.id,
                    frame_no: *frame,
                    frame: *f,
                    slot: 0,
                };
                match inner.read_frame(&pages[0].0, &l, false) {
                    Ok(data) => {
                        for (id, slot) in pages {
                            let s = *slot as usize * PAGE_SIZE;
                            if let Err(e) = check(id, &data[s..s + PAGE_SIZE], Some(p.id)) {
                                let (set, addr) = name(id);
                                probs.push(page_problem(&e, set, addr));
                            }
                        }
                    }
                    Err(e) => {
                        for (id, _) in pages {
                            let (set, addr) = name(id);
                            let e = match &e {
                                StoreError::PageUnreadable { at, problem } => {
                                    StoreError::PageUnreadable {
                                        at: super::PageAt {
                                            page: *id,
                                            ..at.clone()
                                        },
                                        problem: problem.clone(),
                                    }
                                }
                                StoreError::PackMissing { at } => StoreError::PackMissing {
                                    at: super::PageAt {
                                        page: *id,
                                        ..at.clone()
                                    },
                                },
                                e => StoreError::Writer(e.to_string()),
                            };
                            probs.push(page_problem(&e, set, addr));
                        }
                    }
                }
                (pages.len() as u64, f.clen as u64, probs)
            })
            .collect();
        for (n, b, probs) in results {
            rep.pages_checked += n;
            rep.bytes_read += b;
            rep.frames_checked += 1;
            rep.problems.extend(probs);
        }
        // Whole packs against their ids (frames, footer and trailer alike): every pack for
        // the whole store, every pack the set has a page in for one set.
        let mut referenced = vec![false; idx.packs.len()];
        for id in refs.keys() {
            if let Some(l) = idx.pages.get(id) {
                referenced[l.pack as usize] = true;
            }
        }
        if set.is_none() {
            rep.packs_unreferenced = referenced.iter().filter(|r| !**r).count() as u64;
        }
        {
            let root = &self.inner.root;
            let to_hash: Vec<&super::index::PackInfo> = idx
                .packs
                .iter()
                .zip(&referenced)
                .filter(|(_, r)| set.is_none() || **r)
                .map(|(p, _)| p)
                .collect();
            let pack_probs: Vec<(u64, Option<VerifyProblem>)> = to_hash
                .par_iter()
                .map(|p| {
                    let path = p.id.path(root);
                    let r = (|| -> std::io::Result<(u64, blake3::Hash)> {
                        let mut h = blake3::Hasher::new();
                        let f = std::fs::File::open(&path)?;
                        let n = std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, f), &mut h)?;
                        Ok((n, h.finalize()))
                    })();
                    let prob = match &r {
                        Ok((_, h)) if h.as_bytes()[..16] == p.id.0 => None,
                        Ok((n, _)) => Some(format!(
                            "pack {} ({n} bytes) does not hash to its id: it is corrupt or truncated",
                            path.display()
                        )),
                        Err(e) => Some(format!("pack {}: {e}", path.display())),
                    };
                    let n = r.map(|(n, _)| n).unwrap_or(0);
                    (
                        n,
                        prob.map(|m| VerifyProblem {
                            pack: Some(p.id.to_hex()),
                            ..problem("pack", m)
                        }),
                    )
                })
                .collect();
            for (n, p) in pack_probs {
                rep.packs_checked += 1;
                rep.bytes_read += n;
                rep.problems.extend(p);
            }
        }
        if set.is_none() {
            for d in &idx.unlisted {
                rep.problems.push(problem(
                    "pack",
                    format!("cannot list {d}: the packs in it were not checked"),
                ));
            }
            for (id, reason) in &idx.unreadable {
                rep.problems.push(VerifyProblem {
                    pack: Some(id.to_hex()),
                    ..problem(
                        "pack",
                        format!("pack {id} has no usable index segment and its footer is unreadable: {reason}"),
                    )
                });
            }
        }
        drop(idx);
        let tmp = dir_bytes(&self.inner.root.join("tmp"));
        tmp.warn_unread("verify does not count the temp files there");
        rep.temp_files = tmp.files;
        rep.ok = rep.problems.is_empty();
        rep.duration_us = crate::util::us(start.elapsed());
        Ok(rep)
    }

    /// Removes packs no set references and repacks packs that are mostly dead, and clears
    /// `tmp/`. Takes the store lock exclusively (waits up to the lock timeout for writers,
    /// then refuses); refuses when a manifest cannot be read, since its pages would look dead.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let start = Instant::now();
        let _lock = self.lock(true, "gc")?;
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
        let states = set_states(&root, &sets);
        let mut kept = Vec::with_capacity(sets.len());
        for (s, st) in sets.into_iter().zip(states) {
            if st == SetState::Incomplete {
                Store::remove_manifest(&self.find_set(&s.id)?)?;
                rep.incomplete_sets_removed.push(s.id);
            } else {
                kept.push(s);
            }
        }
        chains::remove_stale_locks(&root);
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
            if std::fs::remove_file(&seg).is_ok() {
                rep.stale_segments_removed += 1;
            }
        }
        fsutil::fsync_dir(&root.join("index"))?;
        // No writer is alive (we hold the lock alone): whatever is in tmp/ is a leftover.
        if let Ok(rd) = std::fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                if std::fs::remove_file(e.path()).is_ok() {
                    rep.temp_files_removed += 1;
                }
            }
        }
        self.drop_caches_quiet();
        let mut idx = self
            .inner
            .index
            .write()
            .map_err(|_| StoreError::Writer("index lock poisoned".into()))?;
        *idx = Index::load(&root)?;
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
        if let Some(dir) = path.parent() {
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
