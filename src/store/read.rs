//! Reading pages back: one page for a lazy fault (one frame decode, small frame cache), or a
//! whole set in address order, decoded in parallel. Every page is hashed again and compared
//! with its id.

use super::footer::{FrameInfo, PackId, CODEC_RAW};
use super::index::Loc;
use super::pack::decode_frame;
use super::{Inner, PageAt, Store, StoreError};
use crate::image::{as_page, ImageSet, PageId, PageRef, HASH_LANES, PAGE_SIZE};
use rayon::prelude::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Pages per batch handed to the callback of [`Store::read_set_pages`] (at most).
pub const READ_BATCH_PAGES: usize = 256;
/// Decoded frames a batch keeps at hand.
const RECENT_FRAMES: usize = 4;
/// Batches decoded in parallel ahead of the callback.
const READ_WINDOW: usize = 8;

/// Where a page is, resolved from the index.
#[derive(Clone, Copy)]
pub(crate) struct Located {
    pub pack: PackId,
    pub frame_no: u32,
    pub frame: FrameInfo,
    pub slot: u16,
}

/// Options of [`Store::read_set_pages_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Leave zero pages out of the batches (fresh anonymous memory is zero already).
    pub skip_zero: bool,
}

impl Inner {
    pub(crate) fn locate(&self, id: &PageId) -> Result<Located, StoreError> {
        let idx = self
            .index
            .read()
            .map_err(|_| StoreError::Writer("index lock poisoned".into()))?;
        Self::locate_in(&idx, id)
    }

    fn locate_in(idx: &super::index::Index, id: &PageId) -> Result<Located, StoreError> {
        match idx.lookup(id) {
            Some((Loc { frame, slot, .. }, pack)) => match pack.frames.get(frame as usize) {
                Some(f) => Ok(Located {
                    pack: pack.id,
                    frame_no: frame,
                    frame: *f,
                    slot,
                }),
                None => Err(StoreError::PageUnreadable {
                    at: at(id, Some(pack.id)),
                    problem: format!("index names frame {frame}, which the pack does not have"),
                }),
            },
            None => match idx.missing.get(id) {
                // Not missing: hidden in a directory the index could not list.
                Some(p) if idx.unlisted.iter().any(|d| d.holds(p)) => {
                    Err(StoreError::PageUnreadable {
                        at: at(id, Some(*p)),
                        problem: idx
                            .unlisted
                            .iter()
                            .find(|d| d.holds(p))
                            .map(|d| format!("its directory cannot be listed ({d})"))
                            .unwrap_or_default(),
                    })
                }
                Some(p) => Err(StoreError::PackMissing {
                    at: at(id, Some(*p)),
                }),
                None => Err(StoreError::PageMissing { at: at(id, None) }),
            },
        }
    }

    /// An open pack, cached. `random`: opened for single-page reads, with readahead off
    /// (POSIX_FADV_RANDOM) so that a fault reads only its frame.
    fn pack_file(&self, id: &PackId, random: bool) -> Result<Arc<File>, std::io::Error> {
        if let Ok(files) = self.files.lock() {
            if let Some(f) = files.get(&(*id, random)) {
                return Ok(f.clone());
            }
        }
        let f = File::open(id.path(&self.root))?;
        if random {
            // Only a hint: reads work the same without it.
            let _ = crate::sys::file::advise(&f, crate::sys::file::Advice::Random);
        }
        let f = Arc::new(f);
        if let Ok(mut files) = self.files.lock() {
            if files.len() > 256 {
                files.clear();
            }
            files.insert((*id, random), f.clone());
        }
        Ok(f)
    }

    /// Whether reads of `pack` go to the bucket (a bucket store whose cache lacks it).
    fn reads_remotely(&self, pack: &PackId) -> bool {
        self.remote.is_some()
            && (self
                .remote_reads_only
                .load(std::sync::atomic::Ordering::Relaxed)
                || !pack.path(&self.root).exists())
    }

    /// Reads `len` bytes at `off` of a pack; names the problem (missing, truncated).
    fn pread(
        &self,
        id: &PageId,
        l: &Located,
        off: u64,
        len: usize,
        random: bool,
    ) -> Result<Vec<u8>, StoreError> {
        if let Some(r) = &self.remote {
            // A bucket store reads what its cache lacks from the bucket, by range: only the
            // bytes asked for.
            let cached = !self
                .remote_reads_only
                .load(std::sync::atomic::Ordering::Relaxed);
            if self.reads_remotely(&l.pack) {
                if cached {
                    if let Some(b) = self
                        .raw_cache
                        .lock()
                        .ok()
                        .and_then(|mut c| c.get(&l.pack, off, len))
                    {
                        return Ok(b.to_vec());
                    }
                }
                let buf = r
                    .get_range(&l.pack.key(), off..off + len as u64)
                    .map_err(|e| match e.is_not_found() {
                        true => StoreError::PackMissing {
                            at: at(id, Some(l.pack)),
                        },
                        false => StoreError::PageUnreadable {
                            at: at(id, Some(l.pack)),
                            problem: e.to_string(),
                        },
                    })?;
                if buf.len() != len {
                    return Err(StoreError::PageUnreadable {
                        at: at(id, Some(l.pack)),
                        problem: format!(
                            "the pack is truncated (frame {} ends past its end)",
                            l.frame_no
                        ),
                    });
                }
                if cached {
                    if let Ok(mut c) = self.raw_cache.lock() {
                        c.put(l.pack, off, Arc::new(buf.clone()));
                    }
                }
                return Ok(buf);
            }
        }
        let f = match self.pack_file(&l.pack, random) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::PackMissing {
                    at: at(id, Some(l.pack)),
                })
            }
            Err(e) => {
                return Err(StoreError::PageUnreadable {
                    at: at(id, Some(l.pack)),
                    problem: format!("cannot open the pack: {e}"),
                })
            }
        };
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off)
            .map_err(|e| StoreError::PageUnreadable {
                at: at(id, Some(l.pack)),
                problem: if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    format!(
                        "the pack is truncated (frame {} ends past its end)",
                        l.frame_no
                    )
                } else {
                    format!("reading frame {}: {e}", l.frame_no)
                },
            })?;
        Ok(buf)
    }

    /// Reads and decodes a whole frame.
    pub(crate) fn read_frame(
        &self,
        id: &PageId,
        l: &Located,
        random: bool,
    ) -> Result<Vec<u8>, StoreError> {
        let raw = self.pread(id, l, l.frame.offset, l.frame.clen as usize, random)?;
        decode_frame(raw, &l.frame).map_err(|problem| StoreError::PageUnreadable {
            at: at(id, Some(l.pack)),
            problem: format!("frame {}: {problem}", l.frame_no),
        })
    }

    /// One page, checked against its id.
    pub(crate) fn read_page_once(&self, id: &PageId) -> Result<Vec<u8>, StoreError> {
        let l = self.locate(id)?;
        // From a bucket, a request costs far more than its bytes: a raw frame is fetched (and
        // cached) whole too, so its other pages need no request of their own.
        let page = if l.frame.codec == CODEC_RAW && !self.reads_remotely(&l.pack) {
            // Raw frames need no decode: read just the page.
            self.pread(
                id,
                &l,
                l.frame.offset + l.slot as u64 * PAGE_SIZE as u64,
                PAGE_SIZE,
                true,
            )?
        } else {
            let key = (l.pack, l.frame_no);
            let cached = self.cache.lock().ok().and_then(|mut c| c.get(&key));
            let frame = match cached {
                Some(f) => f,
                None => {
                    let f = Arc::new(self.read_frame(id, &l, true)?);
                    if let Ok(mut c) = self.cache.lock() {
                        c.put(key, f.clone());
                    }
                    f
                }
            };
            let s = l.slot as usize * PAGE_SIZE;
            frame[s..s + PAGE_SIZE].to_vec()
        };
        check(id, &page, Some(l.pack))?;
        Ok(page)
    }
}

fn at(id: &PageId, pack: Option<PackId>) -> PageAt {
    PageAt {
        set: None,
        page: *id,
        addr: None,
        pack,
    }
}

pub(crate) fn check(id: &PageId, page: &[u8], pack: Option<PackId>) -> Result<(), StoreError> {
    if PageId::of(page) != *id {
        return Err(StoreError::PageCorrupt { at: at(id, pack) });
    }
    Ok(())
}

/// A batch of pages of a set in address order: (address, ref).
type Batch = Vec<(u64, PageRef)>;

impl Store {
    /// One page by id (for lazy faults): one frame decode at most; the page is hashed again
    /// and compared with `id`.
    pub fn read_page(&self, id: &PageId) -> Result<Vec<u8>, StoreError> {
        match self.inner.read_page_once(id) {
            // gc may have repacked the page since the index was loaded: reload, try once more.
            Err(StoreError::PackMissing { .. } | StoreError::PageMissing { .. }) => {
                self.inner.refresh_index()?;
                self.inner.read_page_once(id)
            }
            r => r,
        }
    }

    /// For a bucket store, fetches what reading `set` will need into the cache (see
    /// [`Inner::prefetch`]), in a thread of its own: the page server starts it for each set
    /// it serves, so that its clients' requests find the frames at hand. Nothing for a local
    /// store.
    pub fn prefetch_set_in_background(&self, set: &ImageSet) {
        if self.inner.remote.is_none() {
            return;
        }
        let inner = self.inner.clone();
        let ids: Vec<PageId> = set.pages.iter().filter_map(|(_, r)| r.stored()).collect();
        let _ = std::thread::Builder::new()
            .name("haul-prefetch".into())
            .spawn(move || inner.prefetch(ids.into_iter()));
    }

    /// [`Store::read_page`] for a page of a known set: errors name the set and the address.
    pub fn read_page_at(&self, id: &PageId, set: &str, addr: u64) -> Result<Vec<u8>, StoreError> {
        self.read_page(id).map_err(|e| e.in_set(set, Some(addr)))
    }

    /// Whether the page `id` is in the store (by the index as last loaded or refreshed; a
    /// [`Store::begin_set`] refreshes it). Store-to-store sync skips the pages this says yes to.
    pub fn has_page(&self, id: &PageId) -> bool {
        self.inner
            .index
            .read()
            .map(|i| i.lookup(id).is_some())
            .unwrap_or(false)
    }

    /// Every page of `set` (zero pages as zeroes; lazy pages are not in the store and are left
    /// out) in address order: `f(addr, bytes)` gets runs of consecutive pages, at most
    /// [`READ_BATCH_PAGES`] at a time, `bytes.len()` a multiple of 4096. Batches are decoded
    /// and checked in parallel ahead of the callback. Stops at the first error.
    pub fn read_set_pages<E, F>(&self, set: &ImageSet, f: F) -> Result<(), E>
    where
        E: From<StoreError> + Send,
        F: FnMut(u64, &[u8]) -> Result<(), E>,
    {
        self.read_set_pages_with(set, ReadOptions::default(), f)
    }

    /// [`Store::read_set_pages`] with options.
    pub fn read_set_pages_with<E, F>(
        &self,
        set: &ImageSet,
        opts: ReadOptions,
        mut f: F,
    ) -> Result<(), E>
    where
        E: From<StoreError> + Send,
        F: FnMut(u64, &[u8]) -> Result<(), E>,
    {
        let batches = self.batches(set, opts)?;
        let inner = &*self.inner;
        let set_id = set.id.as_str();
        // Output buffers go back here once the callback is done with them.
        let pool: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
        let pool = &pool;
        std::thread::scope(|s| -> Result<(), E> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(Batch, Vec<u8>), StoreError>>(
                READ_WINDOW * 2,
            );
            let producer = s.spawn(move || {
                for window in batches.chunks(READ_WINDOW) {
                    let decoded = decode_window(inner, window, pool, set_id)
                        .into_iter()
                        .zip(window)
                        .map(|(d, batch)| d.map(|b| (batch.clone(), b)));
                    for d in decoded {
                        let stop = d.is_err();
                        if tx.send(d).is_err() || stop {
                            return;
                        }
                    }
                }
            });
            let mut result = Ok(());
            for item in rx.iter() {
                match item {
                    Ok((batch, bytes)) => {
                        // Hand the batch over in runs of contiguous pages.
                        let mut i = 0;
                        while i < batch.len() {
                            let mut j = i + 1;
                            while j < batch.len()
                                && batch[j].0 == batch[i].0 + ((j - i) * PAGE_SIZE) as u64
                            {
                                j += 1;
                            }
                            if let Err(e) = f(batch[i].0, &bytes[i * PAGE_SIZE..j * PAGE_SIZE]) {
                                result = Err(e);
                                break;
                            }
                            i = j;
                        }
                        if result.is_err() {
                            break;
                        }
                        if let Ok(mut p) = pool.lock() {
                            p.push(bytes);
                        }
                    }
                    Err(e) => {
                        result = Err(E::from(e));
                        break;
                    }
                }
            }
            drop(rx);
            // A producer that panicked stopped sending: without this the read would end early
            // as if every page had been handed over.
            let joined = super::error::joined(producer.join(), "page reader");
            result.and(joined.map_err(E::from))
        })
    }
}

impl Store {
    /// The pages of `set` to read, in batches of up to [`READ_BATCH_PAGES`] in address order,
    /// not necessarily contiguous: skipped (zero, lazy) pages do not cut a batch short, so the
    /// frames its pages share are decoded once per batch, not once per run between skipped
    /// pages. The index is refreshed first, so a gc since the store was opened does not fail
    /// the read.
    fn batches(&self, set: &ImageSet, opts: ReadOptions) -> Result<Vec<Batch>, StoreError> {
        self.inner.refresh_index()?;
        // A bucket store fetches what the read needs first, in parallel.
        self.inner
            .prefetch(set.pages.iter().filter_map(|(_, r)| r.stored()));
        let mut batches: Vec<Batch> = Vec::new();
        for (addr, r) in set.pages.iter() {
            match r {
                PageRef::Lazy(_) => continue,
                PageRef::Zero if opts.skip_zero => continue,
                _ => {}
            }
            match batches.last_mut() {
                Some(b) if b.len() < READ_BATCH_PAGES => b.push((addr, r)),
                _ => batches.push(vec![(addr, r)]),
            }
        }
        Ok(batches)
    }

    /// [`Store::read_set_pages_with`] for a consumer that takes pages in any order from
    /// several threads at once (a restore writing into the process): `f(addrs, bytes)` is
    /// called on the decoding threads (rayon) with each batch as soon as it is decoded and
    /// checked, `bytes[i * 4096..][..4096]` being the page at `addrs[i]` (at most
    /// [`READ_BATCH_PAGES`] of them). No thread waits for another to hand pages over, so
    /// decoding, checking and the consumer's work share every core. Stops at the first error.
    pub fn read_set_pages_par<E, F>(&self, set: &ImageSet, opts: ReadOptions, f: F) -> Result<(), E>
    where
        E: From<StoreError> + Send,
        F: Fn(&[u64], &[u8]) -> Result<(), E> + Sync,
    {
        let batches = self.batches(set, opts)?;
        let inner = &*self.inner;
        let set_id = set.id.as_str();
        batches.par_iter().try_for_each_init(
            || (Vec::new(), Vec::with_capacity(READ_BATCH_PAGES)),
            |(buf, addrs): &mut (Vec<u8>, Vec<u64>), batch| {
                let out = decode_batch(inner, batch, std::mem::take(buf))
                    .map_err(|(e, addr)| E::from(e.in_set(set_id, Some(addr))))?;
                addrs.clear();
                addrs.extend(batch.iter().map(|(a, _)| *a));
                let r = f(addrs, &out);
                *buf = out;
                r
            },
        )
    }
}

/// A background read of chosen pages of a set, in the order given: see [`Store::stream_pages`].
/// Dropping it stops the reader thread after the batch it is decoding.
pub struct PageStream {
    rx: Option<std::sync::mpsc::Receiver<Result<StreamBatch, StoreError>>>,
    pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What [`PageStream::next_within`] found.
pub enum NextBatch {
    Batch(Result<StreamBatch, StoreError>),
    /// None is decoded yet.
    NotYet,
    /// Every page was handed over (or an error was).
    End,
}

/// Pages of a [`PageStream`]: `addrs[i]`'s content is `bytes[i * 4096..][..4096]`, checked.
pub struct StreamBatch {
    pub addrs: Vec<u64>,
    pub bytes: Vec<u8>,
}

impl PageStream {
    /// The next batch if one is ready within `wait`.
    pub fn next_within(&mut self, wait: std::time::Duration) -> NextBatch {
        let Some(rx) = self.rx.as_ref() else {
            return NextBatch::End;
        };
        match rx.recv_timeout(wait) {
            Ok(b) => NextBatch::Batch(b),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => NextBatch::NotYet,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                self.rx = None;
                // The reader is done (it dropped its end): a panic in it is an error, not the
                // end of the pages.
                match self
                    .thread
                    .take()
                    .map(|t| super::error::joined(t.join(), "page stream"))
                {
                    Some(Err(e)) => NextBatch::Batch(Err(e)),
                    _ => NextBatch::End,
                }
            }
        }
    }

    /// Gives a batch's buffer back for the reader to fill again (saves faulting in fresh
    /// memory for every batch).
    pub fn recycle(&self, b: StreamBatch) {
        if let Ok(mut p) = self.pool.lock() {
            if p.len() < 2 * READ_WINDOW {
                p.push(b.bytes);
            }
        }
    }
}

impl Drop for PageStream {
    fn drop(&mut self) {
        self.rx = None;
        if let Some(t) = self.thread.take() {
            if let Err(e) = super::error::joined(t.join(), "page stream") {
                tracing::warn!("{e} (the stream was dropped; its remaining pages were not needed)");
            }
        }
    }
}

/// Nice value of the threads that read and decode a [`PageStream`]: the lazy daemon's
/// background push runs while the restored processes run (and fault), and when the CPUs are
/// short it yields to them and to the daemon serving their faults, yet keeps about a quarter
/// of a busy CPU's time (a nice-5 thread weighs 335 against a nice-0 one's 1024). On 2 CPUs
/// with a process faulting all the time (`haul bench lazy`), it cut the daemon's fault p99
/// from milliseconds to a few hundred µs at the price of a somewhat slower push.
const STREAM_NICE: i32 = 5;

/// Lowers the calling thread's priority to [`STREAM_NICE`] (best effort: it only orders work).
fn stream_nice() {
    if let Err(e) = crate::sys::process::set_thread_nice(STREAM_NICE) {
        tracing::debug!("page stream thread: {e}");
    }
}

/// The rayon pool that decodes page streams, its threads at [`STREAM_NICE`] (the global pool's
/// threads, which other work uses, keep theirs); `None` if it could not be built: the global
/// pool decodes then.
fn stream_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("haul-stream-{i}"))
            .start_handler(|_| stream_nice())
            .build()
            .map_err(|e| tracing::debug!("page stream pool: {e}; decoding in the global pool"))
            .ok()
    })
    .as_ref()
}

impl Store {
    /// Reads `pages` (`(address, ref)` of set `set`, in the order to hand them over; zero
    /// pages come as zeroes) in a thread of its own, decoding and checking batches in parallel
    /// (rayon) a window ahead of the consumer, as [`Store::read_set_pages`] does. For the lazy
    /// daemon's background push: the reading threads run at a lower priority
    /// ([`STREAM_NICE`]) than the restored processes and the daemon.
    pub fn stream_pages(&self, set: &str, pages: Vec<(u64, PageRef)>) -> PageStream {
        // A gc since open must not fail the read; a failed refresh shows up per page.
        let _ = self.inner.refresh_index();
        let (tx, rx) =
            std::sync::mpsc::sync_channel::<Result<StreamBatch, StoreError>>(READ_WINDOW);
        let pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let inner = self.inner.clone();
        let set = set.to_string();
        let pool2 = pool.clone();
        let thread = std::thread::Builder::new()
            .name("haul-page-stream".into())
            .spawn(move || {
                stream_nice();
                inner.prefetch(pages.iter().filter_map(|(_, r)| r.stored()));
                let batches: Vec<Batch> =
                    pages.chunks(READ_BATCH_PAGES).map(|c| c.to_vec()).collect();
                let decode = |window: &[Batch]| decode_window(&inner, window, &pool2, &set);
                for window in batches.chunks(READ_WINDOW) {
                    let decoded = match stream_pool() {
                        Some(p) => p.install(|| decode(window)),
                        None => decode(window),
                    };
                    let decoded = decoded.into_iter().zip(window).map(|(d, batch)| {
                        d.map(|bytes| StreamBatch {
                            addrs: batch.iter().map(|(a, _)| *a).collect(),
                            bytes,
                        })
                    });
                    for d in decoded {
                        let stop = d.is_err();
                        if tx.send(d).is_err() || stop {
                            return;
                        }
                    }
                }
            });
        match thread {
            Ok(t) => PageStream {
                rx: Some(rx),
                pool,
                thread: Some(t),
            },
            Err(e) => {
                // No thread: the stream yields the error once.
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                let _ = tx.send(Err(StoreError::io("starting the page stream thread", e)));
                PageStream {
                    rx: Some(rx),
                    pool,
                    thread: None,
                }
            }
        }
    }
}

/// Decodes a window of batches in parallel (rayon), each into a buffer from `pool`; errors
/// name the set and the address.
fn decode_window(
    inner: &Inner,
    window: &[Batch],
    pool: &std::sync::Mutex<Vec<Vec<u8>>>,
    set: &str,
) -> Vec<Result<Vec<u8>, StoreError>> {
    window
        .par_iter()
        .map(|batch| {
            let buf = pool
                .lock()
                .ok()
                .and_then(|mut p| p.pop())
                .unwrap_or_default();
            decode_batch(inner, batch, buf).map_err(|(e, addr)| e.in_set(set, Some(addr)))
        })
        .collect()
}

/// Decodes one batch: consecutive pages from `start`. On error, also says which address.
fn decode_batch(
    inner: &Inner,
    batch: &[(u64, PageRef)],
    mut out: Vec<u8>,
) -> Result<Vec<u8>, (StoreError, u64)> {
    // Every slot is written below (stored pages copied, zero pages cleared): a recycled
    // buffer need not be cleared first.
    out.resize(batch.len() * PAGE_SIZE, 0);
    let start = batch.first().map(|(a, _)| *a).unwrap_or(0);
    // The last few frames decoded: pages of neighbouring addresses sit in a handful of frames
    // (e.g. compressible and incompressible pages interleave in two streams).
    let mut recent: Vec<((PackId, u32), Vec<u8>)> = Vec::with_capacity(RECENT_FRAMES);
    let idx = inner
        .index
        .read()
        .map_err(|_| (StoreError::Writer("index lock poisoned".into()), start))?;
    // The stored pages copied into `out`, checked together once the batch is decoded.
    let mut copied: Vec<(usize, PageId, PackId)> = Vec::with_capacity(batch.len());
    for (i, (addr, r)) in batch.iter().enumerate() {
        let addr = *addr;
        let PageRef::Stored(id) = r else {
            out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].fill(0);
            continue;
        };
        let l = Inner::locate_in(&idx, id).map_err(|e| (e, addr))?;
        let key = (l.pack, l.frame_no);
        let pos = match recent.iter().position(|(k, _)| *k == key) {
            Some(p) => p,
            None => {
                let frame = inner.read_frame(id, &l, false).map_err(|e| (e, addr))?;
                if recent.len() == RECENT_FRAMES {
                    recent.remove(0);
                }
                recent.push((key, frame));
                recent.len() - 1
            }
        };
        if let Some((_, frame)) = recent.get(pos) {
            let s = l.slot as usize * PAGE_SIZE;
            out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(&frame[s..s + PAGE_SIZE]);
            copied.push((i, *id, l.pack));
        }
    }
    drop(idx);
    check_copied(&out, &copied).map_err(|(e, i)| (e, batch[i].0))?;
    Ok(out)
}

/// Hashes the stored pages copied into `out` (`(slot in out, id, pack)`) side by side and
/// compares each with its id; on a mismatch, also says which slot.
fn check_copied(out: &[u8], copied: &[(usize, PageId, PackId)]) -> Result<(), (StoreError, usize)> {
    for group in copied.chunks(HASH_LANES) {
        let refs: Vec<&[u8; PAGE_SIZE]> = group
            .iter()
            .map(|(i, ..)| as_page(&out[i * PAGE_SIZE..]))
            .collect();
        for ((i, id, pack), got) in group.iter().zip(PageId::of_pages(&refs)) {
            if got != *id {
                return Err((
                    StoreError::PageCorrupt {
                        at: at(id, Some(*pack)),
                    },
                    *i,
                ));
            }
        }
    }
    Ok(())
}
