//! Reading a bucket store's packs: what a whole-set read needs is fetched before it starts
//! (whole packs when the set needs most of them, else only the frames it needs, by ranges),
//! and single frames (lazy faults, the page server) go through a small cache of raw ranges.

use super::Remote;
use crate::image::PageId;
use crate::store::footer::PackId;
use crate::store::{fsutil, Inner, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// Raw bytes of fetched ranges kept at most (the lazy daemon's faults, the page server).
const RAW_CACHE_BYTES: usize = 128 << 20;
/// A pack is fetched whole when a read needs at least this share of its bytes.
const WHOLE_PACK_SHARE: f64 = 0.25;
/// Packs fetched at once (each by one request: several packs in flight keep the link busy
/// without the per-request cost of splitting one pack into ranges).
const PACKS_IN_FLIGHT: usize = 4;

/// (pack, offset) → (bytes, last use).
type RangeMap = HashMap<(PackId, u64), (Arc<Vec<u8>>, u64)>;

/// Fetched ranges of packs, by (pack, offset), least recently used dropped first.
#[derive(Default)]
pub(crate) struct RawCache {
    map: RangeMap,
    bytes: usize,
    tick: u64,
}

impl RawCache {
    pub(crate) fn get(&mut self, pack: &PackId, off: u64, len: usize) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let t = self.tick;
        let (v, used) = self.map.get_mut(&(*pack, off))?;
        if v.len() != len {
            return None;
        }
        *used = t;
        Some(v.clone())
    }

    pub(crate) fn put(&mut self, pack: PackId, off: u64, v: Arc<Vec<u8>>) {
        if v.len() > RAW_CACHE_BYTES / 4 {
            return;
        }
        while self.bytes + v.len() > RAW_CACHE_BYTES {
            let Some(old) = self
                .map
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((o, _)) = self.map.remove(&old) {
                self.bytes -= o.len();
            }
        }
        self.tick += 1;
        self.bytes += v.len();
        if let Some((o, _)) = self.map.insert((pack, off), (v, self.tick)) {
            self.bytes -= o.len();
        }
    }
}

/// Fetches a whole pack into the cache directory, checked against its id (the BLAKE3 of its
/// bytes) before it is renamed into place: a cached pack is always a good copy.
pub(crate) fn fetch_pack(
    remote: &Remote,
    id: &PackId,
    len: u64,
    root: &Path,
) -> Result<(), StoreError> {
    let key = id.key();
    let bytes = remote
        .get(&key)?
        .ok_or_else(|| super::BucketError::Damaged {
            url: remote.url.clone(),
            key: key.clone(),
            problem: "the pack is gone from the bucket".into(),
        })?;
    if bytes.len() as u64 != len || blake3::hash(&bytes).as_bytes()[..16] != id.0 {
        return Err(super::BucketError::Damaged {
            url: remote.url.clone(),
            key,
            problem: "its bytes do not hash to its name (the object is corrupt)".into(),
        }
        .into());
    }
    let dest = id.path(root);
    if let Some(d) = dest.parent() {
        fsutil::create_dir(d)?;
    }
    fsutil::write_cache(root, &dest, &bytes)
}

impl Inner {
    /// For a bucket store, brings into the cache what reading `pages` will need: whole packs
    /// the read needs a good share of (fetched in parallel, checked, kept on disk), and the
    /// frames it needs of the others (by ranges, into the raw cache). A local store, or a
    /// bucket store whose cache holds everything, does nothing. Failures are left for the
    /// reads themselves to report, page by page.
    pub(crate) fn prefetch(&self, pages: impl Iterator<Item = PageId>) {
        let Some(remote) = &self.remote else {
            return;
        };
        if self
            .remote_reads_only
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        // pack -> (length, frames needed: offset -> length)
        let mut want: BTreeMap<PackId, (u64, BTreeMap<u64, u64>)> = BTreeMap::new();
        {
            let Ok(idx) = self.index.read() else { return };
            for id in pages {
                let Some((loc, pack)) = idx.lookup(&id) else {
                    continue;
                };
                let Some(f) = pack.frames.get(loc.frame as usize) else {
                    continue;
                };
                want.entry(pack.id)
                    .or_insert_with(|| (pack.len, BTreeMap::new()))
                    .1
                    .insert(f.offset, f.clen as u64);
            }
        }
        want.retain(|id, _| !id.path(&self.root).exists());
        let jobs: Vec<(PackId, u64, BTreeMap<u64, u64>)> = want
            .into_iter()
            .map(|(id, (len, f))| (id, len, f))
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let fetch_one = |(id, len, frames): &(PackId, u64, BTreeMap<u64, u64>)| {
            let needed: u64 = frames.values().sum();
            if needed as f64 >= WHOLE_PACK_SHARE * *len as f64 {
                if let Err(e) = fetch_pack(remote, id, *len, &self.root) {
                    tracing::debug!("prefetch of pack {id}: {e}");
                }
                return;
            }
            let ranges: Vec<Range<u64>> = frames.iter().map(|(o, l)| *o..*o + *l).collect();
            match remote.get_ranges_parallel(&id.key(), &ranges) {
                Ok(parts) => {
                    if let Ok(mut c) = self.raw_cache.lock() {
                        for (r, p) in ranges.iter().zip(parts) {
                            c.put(*id, r.start, Arc::new(p));
                        }
                    }
                }
                Err(e) => tracing::debug!("prefetch of frames of pack {id}: {e}"),
            }
        };
        std::thread::scope(|s| {
            for _ in 0..PACKS_IN_FLIGHT.min(jobs.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match jobs.get(i) {
                        Some(j) => fetch_one(j),
                        None => break,
                    }
                });
            }
        });
    }
}
