//! Verify: read back and re-hash every page of one set or of the whole store, and hash every
//! pack against its id. Problems are listed, not returned as errors.

use super::index::{IdMap, Loc};
use super::maint::{dir_bytes, load_all};
use super::read::{check, Located};
use super::{Store, StoreError};
use crate::image::{PageId, PageRef, PAGE_SIZE};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
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

/// (pack, frame) and the pages (id, slot) to check in it.
type FrameGroup = ((u32, u32), Vec<(PageId, u16)>);

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

/// Reads from the bucket only while it lives (verify of a bucket store).
struct RemoteReads<'a>(&'a super::Inner);

impl<'a> RemoteReads<'a> {
    fn on(inner: &'a super::Inner) -> RemoteReads<'a> {
        inner
            .remote_reads_only
            .store(true, std::sync::atomic::Ordering::Relaxed);
        RemoteReads(inner)
    }
}

impl Drop for RemoteReads<'_> {
    fn drop(&mut self) {
        self.0
            .remote_reads_only
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Store {
    /// Reads back every page of one set (or of every set) and hashes it again, and hashes
    /// every pack those pages are in against its id (a whole-store verify: every pack). Problems are listed, not returned as
    /// errors; an error means verify itself could not run.
    pub fn verify(&self, set: Option<&str>) -> Result<VerifyReport, StoreError> {
        let start = Instant::now();
        // A bucket store checks the bucket: manifests fetched again, pages and packs read from
        // the bucket, not from what the cache kept.
        let _remote_reads = match &self.inner.remote {
            Some(r) => {
                super::bucket::sync::pull_manifests(r, &self.inner.root, true)?;
                Some(RemoteReads::on(&self.inner))
            }
            None => None,
        };
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
                            let this = match &e {
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
                                // Any other error is the frame's, the same for every page: it
                                // is reported as it is (it used to be wrapped in a "set writer
                                // failed" message that had nothing to do with verify).
                                other => {
                                    probs.push(page_problem(other, set, addr));
                                    continue;
                                }
                            };
                            probs.push(page_problem(&this, set, addr));
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
            let remote = self.inner.remote.as_deref();
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
                    let path = match remote {
                        Some(r) => std::path::PathBuf::from(format!("{}/{}", r.url, p.id.key())),
                        None => p.id.path(root),
                    };
                    let r = (|| -> std::io::Result<(u64, blake3::Hash)> {
                        if let Some(r) = remote {
                            let b = r
                                .get(&p.id.key())
                                .map_err(std::io::Error::other)?
                                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
                            return Ok((b.len() as u64, blake3::hash(&b)));
                        }
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
}
