//! Writing an image set: batches of pages go to a worker thread (bounded queue), which hashes
//! and zero-tests them in parallel, looks them up in the index and compresses the new ones into
//! frames in parallel; an appender thread (bounded queue) appends the frames to the current
//! pack and hashes it, beside the worker's next batch. The manifest is written by `commit`,
//! last.

use super::error::{joined, panicked};
use super::figures::{figures, ChainView, PageCosts};
use super::fsutil;
use super::index::IdMap;
use super::pack::{encode_frame, encode_frame_parts, PackWriter};
use super::{Inner, Store, StoreError};
use crate::image::encode::{compress_table, manifest_head};
use crate::image::{
    as_page, is_zero_page, ImageSet, PageId, PageRef, PageTable, ProcessImage, SetFigures, SetKind,
    HASH_LANES, PAGE_SIZE,
};
use crate::sys::file::FileLock;
use crate::sys::mem::PageBuf;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Batches in flight between the caller and the worker (bounded memory).
const QUEUE: usize = 4;

enum Msg {
    Pages(Vec<u64>, PageBuf),
    Refs(Vec<(u64, PageRef)>),
    Finish,
}

pub(super) struct Output {
    pub(super) table: PageTable,
    /// Pages this writer stored, with their compressed cost.
    pub(super) new: IdMap<u64>,
}

/// Writes one image set; see [`Store::begin_set`]. Dropping it without `commit` lists nothing:
/// packs already written become garbage for `gc`.
pub struct SetWriter<'a> {
    store: &'a Store,
    tx: Option<SyncSender<Msg>>,
    worker: Option<JoinHandle<Result<Output, StoreError>>>,
    refs: Vec<(u64, PageRef)>,
    job: String,
    kind: SetKind,
    parent: Option<String>,
    id: String,
    created_us: u64,
    failed: bool,
    pool: Pool,
    /// The descendants of the set's root, for a tree ([`SetWriter::set_tree`]).
    tree: crate::image::Tree,
    /// What the sets before this one (a pre-copy's chain) stored, with each page's cost: the
    /// commit's figures take the cost of a carried page from here rather than from the index.
    known: Option<Arc<PageCosts>>,
    /// What the set would hold if nothing changed since its chain's last set: the commit
    /// counts only what differs ([`SetWriter::know_view`]).
    view: Option<Arc<ChainView>>,
    /// Packs are written with direct I/O ([`SetWriter::write_around_page_cache`]).
    direct: Arc<AtomicBool>,
    /// The store lock (shared), and for a bucket store its lock object (shared) too.
    _lock: (FileLock, Option<super::bucket::lock::BucketLock>),
}

/// Batch buffers the worker is done with, for the caller to fill again (no fresh memory to
/// fault in for every batch).
type Pool = Arc<Mutex<Vec<PageBuf>>>;

fn set_id(job: &str, created_us: u64) -> String {
    let t = crate::util::rfc3339_us(created_us);
    let compact: String = t.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let compact = compact.trim_end_matches('Z');
    let salt = blake3::hash(
        format!(
            "{created_us}-{}-{:?}",
            std::process::id(),
            std::time::Instant::now()
        )
        .as_bytes(),
    );
    format!(
        "{job}-{compact}-{}",
        &crate::util::hex(&salt.as_bytes()[..3])
    )
}

impl<'a> SetWriter<'a> {
    pub(super) fn start(
        store: &'a Store,
        inner: Arc<Inner>,
        lock: (FileLock, Option<super::bucket::lock::BucketLock>),
        job: &str,
        kind: SetKind,
        parent: Option<&str>,
        level: Option<i32>,
    ) -> Result<SetWriter<'a>, StoreError> {
        let created_us = crate::util::now_us();
        let (tx, rx) = sync_channel(QUEUE);
        let pool: Pool = Arc::default();
        let wpool = pool.clone();
        let direct = Arc::new(AtomicBool::new(false));
        let wdirect = direct.clone();
        let worker = std::thread::Builder::new()
            .name("haul-store-writer".into())
            .spawn(move || Worker::new(inner, level, wpool, wdirect)?.run(rx))
            .map_err(|e| StoreError::io("starting the store writer thread", e))?;
        Ok(SetWriter {
            store,
            tx: Some(tx),
            worker: Some(worker),
            refs: Vec::new(),
            job: job.into(),
            kind,
            parent: parent.map(String::from),
            id: set_id(job, created_us),
            created_us,
            failed: false,
            pool,
            tree: Default::default(),
            known: None,
            view: None,
            direct,
            _lock: lock,
        })
    }

    /// Writes the packs of this set with direct I/O (`O_DIRECT`, see
    /// [`super::pack::PackWriter::create_direct`]) from now on: for a set that nothing reads
    /// back soon, whose writes should cost no fresh page-cache memory (a migration's final dump
    /// when the restore adopts the process's memory). A local store only.
    pub fn write_around_page_cache(&self) {
        if self.store.inner.remote.is_none() {
            self.direct.store(true, Ordering::Relaxed);
        }
    }

    /// Commits under the id and creation time of a set copied from another store (sync), so
    /// that both stores name it alike. Refused when the id is not one of this job's ids.
    pub fn keep_identity(&mut self, id: &str, created_us: u64) -> Result<(), StoreError> {
        let of_job = id
            .strip_prefix(self.job.as_str())
            .is_some_and(|rest| rest.starts_with('-'));
        if !super::valid_set_id(id) || !of_job {
            return Err(StoreError::Writer(format!(
                "cannot copy set {id:?} as a set of job {:?}",
                self.job
            )));
        }
        self.id = id.into();
        self.created_us = created_us;
        Ok(())
    }

    /// The id the set will have once committed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// An empty buffer for the next batch, recycled from an earlier `add_pages` when one is
    /// free (its capacity is kept): filling it does not fault in fresh memory.
    pub fn buffer(&mut self) -> PageBuf {
        let mut b = self.recycled().unwrap_or_default();
        b.clear();
        b
    }

    /// A buffer of exactly `len` bytes whose content is left over from an earlier batch (a
    /// recycled one is as long as a copy chunk already: no pass over it to zero it).
    pub fn buffer_of_len(&mut self, len: usize) -> PageBuf {
        let mut b = self.recycled().unwrap_or_default();
        b.resize(len);
        b
    }

    fn recycled(&self) -> Option<PageBuf> {
        self.pool.lock().ok().and_then(|mut p| p.pop())
    }

    /// Waits for the worker after it stopped early and returns its error.
    fn worker_error(&mut self) -> StoreError {
        self.failed = true;
        self.tx = None;
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            Some(Ok(Ok(_))) => StoreError::Writer("the writer stopped unexpectedly".into()),
            Some(Err(p)) => panicked(p, "set writer"),
            None => StoreError::Writer("the writer already failed".into()),
        }
    }

    fn send(&mut self, m: Msg) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Writer(
                "an earlier error stopped this set writer".into(),
            ));
        }
        let ok = self
            .tx
            .as_ref()
            .map(|tx| tx.send(m).is_ok())
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(self.worker_error())
        }
    }

    /// Adds pages: `addrs[i]` is the address of page i of `data`
    /// (`data.len() == addrs.len() * 4096`). Returns once the batch is queued; the work on it
    /// overlaps with the caller copying the next one. A later entry for the same address
    /// replaces an earlier one.
    pub fn add_pages(&mut self, addrs: &[u64], data: PageBuf) -> Result<(), StoreError> {
        if data.len() != addrs.len() * PAGE_SIZE {
            return Err(StoreError::BatchShape {
                addrs: addrs.len(),
                bytes: data.len(),
            });
        }
        if !self.refs.is_empty() {
            // Room made for the references to come ([`SetWriter::know_view`]) stays here.
            let refs = if self.refs.capacity() > 2 * self.refs.len() {
                self.refs.drain(..).collect()
            } else {
                std::mem::take(&mut self.refs)
            };
            self.send(Msg::Refs(refs))?;
        }
        self.send(Msg::Pages(addrs.to_vec(), data))
    }

    /// Records a page without data (carried from a parent set, or `PageRef::Lazy`).
    /// A `Stored` id must already be in the store; `commit` checks it.
    pub fn add_ref(&mut self, addr: u64, r: PageRef) {
        self.refs.push((addr, r));
    }

    /// Finishes the packs, then writes the manifest (temp, fsync, rename, fsync): from then on
    /// the set is listed. Returns the committed set with its figures.
    /// A dump of a process tree: the root's descendants go into the set with `commit`'s
    /// process (their pages are in their own page spaces, see [`crate::image::page_key`]).
    pub fn set_tree(&mut self, tree: crate::image::Tree) {
        self.tree = tree;
    }

    /// Tells the commit what the sets this one carries pages from stored, and at what cost
    /// ([`SetWriter::commit_costed`] of each): its figures then look up only the other pages
    /// in the index. A final dump carries most of its pages from its pre-dumps, and its
    /// figures are counted inside the pause: with random probes into the index they took
    /// 19–27 ms per GiB here, along the sorted costs 5–10 ms (the sort included).
    pub fn know_costs(&mut self, known: Arc<PageCosts>) {
        self.known = Some(known);
    }

    /// Tells the commit what the set would hold if nothing had changed since the last set
    /// of its chain ([`Store::chain_view`]): its figures then count only the entries that
    /// differ. A final dump after pre-copy counts its figures inside the pause: sorting its
    /// distinct pages took 8–12 ms per GiB here.
    ///
    /// The references the set will carry are about as many as the view's entries: room for
    /// them is made and faulted in now, before the freeze (8 MB per GiB of pages, which took
    /// ~4 ms of page faults when they were pushed under it).
    pub fn know_view(&mut self, view: Arc<ChainView>) {
        let n = view.len();
        if self.refs.try_reserve_exact(n + n / 16 + 1024).is_ok() {
            if let Err(e) = crate::sys::mem::prefault_spare(&mut self.refs) {
                tracing::debug!("{e}");
            }
        }
        self.view = Some(view);
    }

    pub fn commit(self, process: Option<ProcessImage>) -> Result<ImageSet, StoreError> {
        self.commit_inner(process, false).map(|(set, _)| set)
    }

    /// [`SetWriter::commit`], also returning the cost of each distinct page the set holds,
    /// for the next set of a chain ([`SetWriter::know_costs`]).
    pub fn commit_costed(
        self,
        process: Option<ProcessImage>,
    ) -> Result<(ImageSet, PageCosts), StoreError> {
        self.commit_inner(process, true)
    }

    fn commit_inner(
        mut self,
        process: Option<ProcessImage>,
        want_costs: bool,
    ) -> Result<(ImageSet, PageCosts), StoreError> {
        let refs = std::mem::take(&mut self.refs);
        if !refs.is_empty() {
            self.send(Msg::Refs(refs))?;
        }
        self.send(Msg::Finish)?;
        self.tx = None;
        let out = match self.worker.take().map(|w| w.join()) {
            Some(Ok(r)) => r?,
            Some(Err(p)) => return Err(panicked(p, "set writer")),
            None => return Err(StoreError::Writer("the writer already failed".into())),
        };
        let inner = &self.store.inner;
        let known = self.known.take();
        let known = known.as_deref();
        let view = self.view.take();
        let view = view.as_deref();
        // The table's encoding does not depend on the figures: both at once.
        let (figured, table) = rayon::join(
            || self.figured(&out, known, view, want_costs),
            || compress_table(&out.table),
        );
        let (figures, costs) = figured?;
        let set = ImageSet {
            id: self.id.clone(),
            job: self.job.clone(),
            created_us: self.created_us,
            kind: self.kind,
            parent: self.parent.clone(),
            kernel: crate::util::kernel_release(),
            process,
            tree: std::mem::take(&mut self.tree),
            pages: out.table,
            figures,
        };
        // The manifest: its head, then the table (written after it, not copied behind it).
        let (head, table) = table
            .and_then(|table| Ok((manifest_head(&set, &table)?, table)))
            .map_err(|source| StoreError::Manifest {
                path: self
                    .store
                    .path()
                    .join("sets")
                    .join(&self.job)
                    .join(&self.id),
                source,
            })?;
        // A pre-dump is locked as part of its pre-copy's chain before it is listed, so that
        // gc never takes it for one a pre-copy left (see `chains`); a dump ends the chain it
        // names. Both happen under the store lock we hold shared.
        let parent = self.parent.as_deref();
        if self.kind == SetKind::PreDump {
            inner.chain_hold(&self.id, parent)?;
        }
        let dir = inner.root.join("sets").join(&self.job);
        let written = (|| {
            if let Some(r) = &inner.remote {
                // The set exists once its manifest object does: every pack it needs was
                // uploaded before (commit_pack). Created only if absent: a set is never
                // replaced. The cache's copy needs no fsync (the bucket holds the set).
                let key = format!("sets/{}/{}", self.job, self.id);
                let bytes = [&head[..], &table[..]].concat();
                if !r.put_new(&key, bytes.clone())? {
                    return Err(StoreError::Writer(format!(
                        "{}: a set named {} exists already in the bucket",
                        r.url, self.id
                    )));
                }
                fsutil::create_dir(&dir)?;
                return fsutil::write_cache(&inner.root, &dir.join(&self.id), &bytes);
            }
            if !dir.exists() {
                fsutil::create_dir(&dir)?;
                fsutil::fsync_dir(&inner.root.join("sets"))?;
            }
            fsutil::write_atomic_parts(&inner.root, &dir.join(&self.id), &[&head, &table])
        })();
        match (written, self.kind) {
            (Err(e), SetKind::PreDump) => {
                inner.chain_undo(&self.id, parent);
                Err(e)
            }
            (Err(e), SetKind::Dump) => Err(e),
            (Ok(()), SetKind::PreDump) => Ok((set, costs)),
            (Ok(()), SetKind::Dump) => {
                inner.chain_release(parent);
                Ok((set, costs))
            }
        }
    }

    /// The set's figures (and its pages' costs when `want_costs`) from the writer's output,
    /// the index and the costs the pre-dumps made known; see [`figures`].
    fn figured(
        &self,
        out: &Output,
        known: Option<&PageCosts>,
        view: Option<&ChainView>,
        want_costs: bool,
    ) -> Result<(SetFigures, PageCosts), StoreError> {
        let inner = &self.store.inner;
        let mut idx = inner
            .index
            .write()
            .map_err(|_| StoreError::Writer("index lock poisoned".into()))?;
        let mut checked_refresh = false;
        loop {
            match figures(out, &idx, known, view, want_costs) {
                Ok(f) => return Ok(f),
                // A carried page may be in a pack another process committed after we loaded
                // the index: look once more before refusing.
                Err(_) if !checked_refresh => {
                    checked_refresh = true;
                    let present = match &inner.remote {
                        Some(r) => Some(super::bucket::sync::pull_index(r, &inner.root)?),
                        None => None,
                    };
                    idx.refresh_from(&inner.root, present.as_ref())?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for SetWriter<'_> {
    fn drop(&mut self) {
        // Closing the queue without `Finish` tells the worker to abandon its pack; wait for it
        // so that the temp file is gone before the lock is released.
        self.tx = None;
        if let Some(w) = self.worker.take() {
            match joined(w.join(), "set writer") {
                Ok(Ok(_)) | Ok(Err(StoreError::Abandoned)) => {}
                Ok(Err(e)) => tracing::warn!(
                    "abandoned set writer: {e} (nothing was committed; gc removes what it left)"
                ),
                Err(e) => tracing::warn!(
                    "{e} while abandoning its set (nothing was committed; a temp pack may remain in tmp/ until gc)"
                ),
            }
        }
    }
}

struct Worker {
    level: Option<i32>,
    frame_pages: usize,
    /// Page-table entries of the pages, in arrival order (a later one for the same address
    /// wins).
    table: Vec<(u64, PageRef)>,
    /// The references, kept apart: a final dump's are most of its table, and both come in
    /// address order, so the table is one merge of the two (see [`PageTable::merged`]).
    refs: Vec<(u64, PageRef)>,
    new: IdMap<u64>,
    /// New pages waiting for their frame: [0] pages worth compressing, [1] pages that look
    /// incompressible (stored raw, so a fault reads just the page and no CPU is spent on them).
    streams: [Stream; 2],
    /// The thread that writes the encoded frames into packs ([`Appender`]), so that the
    /// writes and the pack's checksum overlap with hashing and compressing the next batch.
    appender: Option<AppenderHandle>,
    inner: Arc<Inner>,
    pool: Pool,
}

/// Encoded frames on their way to the appender: (bytes, codec, the ids of its pages).
type Frames = Vec<(Vec<u8>, u8, Vec<PageId>)>;

enum AppendMsg {
    Frames(Frames),
    Finish,
}

struct AppenderHandle {
    tx: SyncSender<AppendMsg>,
    thread: JoinHandle<Result<(), StoreError>>,
}

impl Worker {
    fn new(
        inner: Arc<Inner>,
        level: Option<i32>,
        pool: Pool,
        direct: Arc<AtomicBool>,
    ) -> Result<Worker, StoreError> {
        let frame_pages = inner.frame_pages.load(Ordering::Relaxed);
        let (tx, rx) = sync_channel(QUEUE);
        let appender = Appender::new(inner.clone(), direct);
        let thread = std::thread::Builder::new()
            .name("haul-store-append".into())
            .spawn(move || appender.run(rx))
            .map_err(|e| StoreError::io("starting the pack appender thread", e))?;
        Ok(Worker {
            level,
            frame_pages,
            table: Vec::new(),
            refs: Vec::new(),
            new: IdMap::default(),
            streams: Default::default(),
            appender: Some(AppenderHandle { tx, thread }),
            inner,
            pool,
        })
    }

    fn run(mut self, rx: Receiver<Msg>) -> Result<Output, StoreError> {
        let r = self.run_inner(rx);
        if r.is_err() {
            // Closing its queue without `Finish` has the appender abandon its pack.
            if let Some(a) = self.appender.take() {
                drop(a.tx);
                match joined(a.thread.join(), "pack appender") {
                    Ok(Ok(())) | Ok(Err(StoreError::Abandoned)) => {}
                    Ok(Err(e)) | Err(e) => tracing::warn!(
                        "writing the packs of the failed set: {e} (the set was not committed; gc removes its packs)"
                    ),
                }
            }
        }
        r
    }

    fn run_inner(&mut self, rx: Receiver<Msg>) -> Result<Output, StoreError> {
        loop {
            match rx.recv() {
                Ok(Msg::Pages(addrs, data)) => self.pages(&addrs, data)?,
                Ok(Msg::Refs(refs)) => {
                    if self.refs.is_empty() {
                        self.refs = refs;
                    } else {
                        self.refs.extend(refs);
                    }
                }
                Ok(Msg::Finish) => {
                    self.flush_frames()?;
                    self.send_frames(AppendMsg::Finish)?;
                    if let Some(a) = self.appender.take() {
                        drop(a.tx);
                        joined(a.thread.join(), "pack appender")??;
                    }
                    return Ok(Output {
                        table: PageTable::merged(
                            std::mem::take(&mut self.table),
                            std::mem::take(&mut self.refs),
                        ),
                        new: std::mem::take(&mut self.new),
                    });
                }
                // Dropped without commit.
                Err(_) => return Err(StoreError::Abandoned),
            }
        }
    }

    fn pages(&mut self, addrs: &[u64], data: PageBuf) -> Result<(), StoreError> {
        let sort = self.level.is_some();
        // Per page: `None` for a zero page, else its id and whether it looks incompressible.
        // Pages with data are hashed side by side, a group of lanes at a time.
        let ids: Vec<Option<(PageId, bool)>> = data
            .par_chunks(HASH_LANES * PAGE_SIZE)
            .with_min_len(2)
            .flat_map_iter(|group| {
                let group: Vec<&[u8; PAGE_SIZE]> =
                    group.chunks_exact(PAGE_SIZE).map(as_page).collect();
                let zero: Vec<bool> = group.iter().map(|p| is_zero_page(&p[..])).collect();
                let with_data: Vec<&[u8; PAGE_SIZE]> = group
                    .iter()
                    .zip(&zero)
                    .filter(|(_, z)| !**z)
                    .map(|(p, _)| *p)
                    .collect();
                let mut ids = PageId::of_pages(&with_data).into_iter();
                group
                    .into_iter()
                    .zip(zero)
                    .map(move |(p, zero)| match zero {
                        true => None,
                        false => ids.next().map(|id| (id, sort && looks_incompressible(p))),
                    })
            })
            .collect();
        // Indices (in `data`) of pages the store does not have yet, per stream.
        let mut fresh: [Vec<usize>; 2] = Default::default();
        {
            let idx = self
                .inner
                .index
                .read()
                .map_err(|_| StoreError::Writer("index lock poisoned".into()))?;
            for (i, (addr, id)) in addrs.iter().zip(ids).enumerate() {
                let Some((id, raw)) = id else {
                    self.table.push((*addr, PageRef::Zero));
                    continue;
                };
                self.table.push((*addr, PageRef::Stored(id)));
                if self.new.contains_key(&id) || idx.pages.contains_key(&id) {
                    continue;
                }
                self.new.insert(id, 0);
                self.streams[raw as usize].ids.push(id);
                fresh[raw as usize].push(i);
            }
        }
        let mut frames = Frames::new();
        for (k, fresh) in fresh.iter().enumerate() {
            let level = if k == 0 { self.level } else { None };
            let encoded = self.streams[k].frames(&data, fresh, self.frame_pages, level)?;
            self.take_frames(k, encoded, &mut frames);
        }
        self.recycle(data);
        if frames.is_empty() {
            return Ok(());
        }
        self.send_frames(AppendMsg::Frames(frames))
    }

    fn recycle(&self, data: PageBuf) {
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < QUEUE + 2 {
                pool.push(data);
            }
        }
    }

    /// Records the cost of the pages of encoded frames (bytes, codec, pages) holding the first
    /// ids of a stream, and moves them into `out` with their ids, for the appender.
    fn take_frames(&mut self, stream: usize, encoded: Vec<(Vec<u8>, u8, usize)>, out: &mut Frames) {
        let mut used = 0;
        for (bytes, codec, n) in encoded {
            let ids = self.streams[stream].ids[used..used + n].to_vec();
            let cost = bytes.len() as u64 / n.max(1) as u64;
            for id in &ids {
                self.new.insert(*id, cost);
            }
            used += n;
            out.push((bytes, codec, ids));
        }
        self.streams[stream].ids.drain(..used);
    }

    /// Hands a message to the appender; if it stopped, its error.
    fn send_frames(&mut self, m: AppendMsg) -> Result<(), StoreError> {
        let sent = self.appender.as_ref().is_some_and(|a| a.tx.send(m).is_ok());
        if sent {
            return Ok(());
        }
        match self.appender.take().map(|a| {
            drop(a.tx);
            joined(a.thread.join(), "pack appender")
        }) {
            Some(Ok(Err(e))) | Some(Err(e)) => Err(e),
            _ => Err(StoreError::Writer(
                "the pack appender stopped unexpectedly".into(),
            )),
        }
    }

    /// Writes the pages still pending as last (short) frames.
    fn flush_frames(&mut self) -> Result<(), StoreError> {
        let mut frames = Frames::new();
        for k in 0..2 {
            let st = &mut self.streams[k];
            if st.pending.is_empty() {
                continue;
            }
            let level = if k == 0 { self.level } else { None };
            let (bytes, codec) = encode_frame(&st.pending, level)
                .map_err(|e| StoreError::io("compressing a frame", e))?;
            let n = st.pending.len() / PAGE_SIZE;
            st.pending.clear();
            self.take_frames(k, vec![(bytes, codec, n)], &mut frames);
        }
        if frames.is_empty() {
            return Ok(());
        }
        self.send_frames(AppendMsg::Frames(frames))
    }
}

/// Appends encoded frames to the current pack, starts a new pack once it reaches the
/// store's pack size and commits the full one in the background.
struct Appender {
    inner: Arc<Inner>,
    pack_target: u64,
    pack: Option<PackWriter>,
    /// Packs being finished (and, for a bucket store, uploaded) in the background, oldest
    /// first: at most one for a local store, [`UPLOADS_IN_FLIGHT`] for a bucket store.
    finishers: std::collections::VecDeque<JoinHandle<Result<(), StoreError>>>,
    /// New packs are written with direct I/O ([`SetWriter::write_around_page_cache`]).
    direct: Arc<AtomicBool>,
}

impl Appender {
    fn new(inner: Arc<Inner>, direct: Arc<AtomicBool>) -> Appender {
        let pack_target = inner.pack_target.load(Ordering::Relaxed);
        Appender {
            inner,
            pack_target,
            pack: None,
            finishers: Default::default(),
            direct,
        }
    }

    /// Until `Finish` (the last pack committed) or until the worker hangs up without it (the
    /// pack being written is abandoned; a pack being finished may still commit: unreferenced,
    /// gc removes it).
    fn run(mut self, rx: Receiver<AppendMsg>) -> Result<(), StoreError> {
        let r = (|| loop {
            match rx.recv() {
                Ok(AppendMsg::Frames(frames)) => self.append(frames)?,
                Ok(AppendMsg::Finish) => return self.finish_pack(),
                Err(_) => return Err(StoreError::Abandoned),
            }
        })();
        if r.is_err() {
            if let Some(p) = self.pack.take() {
                p.abandon();
            }
            if let Err(e) = self.join_finisher() {
                tracing::warn!(
                    "finishing an earlier pack of the failed set: {e} (the set was not committed; gc removes its packs)"
                );
            }
        }
        r
    }

    fn append(&mut self, frames: Frames) -> Result<(), StoreError> {
        for (bytes, codec, ids) in frames {
            if self.pack.is_none() {
                let root = &self.inner.root;
                self.pack = Some(match self.direct.load(Ordering::Relaxed) {
                    true => PackWriter::create_direct(root)?,
                    false => PackWriter::create(root)?,
                });
            }
            if let Some(p) = self.pack.as_mut() {
                p.append_frame(&bytes, codec, &ids)?;
            }
            if self
                .pack
                .as_ref()
                .is_some_and(|p| p.len() >= self.pack_target)
            {
                self.finish_pack_async()?;
            }
        }
        Ok(())
    }

    /// Commits the current pack in the background (footer, fsync, rename, index segment) while
    /// the next one fills; at most one pack is being finished at a time.
    fn finish_pack_async(&mut self) -> Result<(), StoreError> {
        let in_flight = if self.inner.remote.is_some() {
            UPLOADS_IN_FLIGHT
        } else {
            1
        };
        while self.finishers.len() >= in_flight {
            self.join_oldest_finisher()?;
        }
        let Some(p) = self.pack.take() else {
            return Ok(());
        };
        let inner = self.inner.clone();
        let h = std::thread::Builder::new()
            .name("haul-store-pack".into())
            .spawn(move || commit_pack(&inner, p))
            .map_err(|e| StoreError::io("starting the pack finisher thread", e))?;
        self.finishers.push_back(h);
        Ok(())
    }

    fn join_oldest_finisher(&mut self) -> Result<(), StoreError> {
        match self.finishers.pop_front().map(|h| h.join()) {
            None => Ok(()),
            Some(Ok(r)) => r,
            Some(Err(p)) => Err(panicked(p, "pack finisher")),
        }
    }

    /// Waits for every pack being finished; the first error wins, but every one is joined.
    fn join_finisher(&mut self) -> Result<(), StoreError> {
        let mut first = Ok(());
        while !self.finishers.is_empty() {
            let r = self.join_oldest_finisher();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn finish_pack(&mut self) -> Result<(), StoreError> {
        self.join_finisher()?;
        match self.pack.take() {
            Some(p) => commit_pack(&self.inner, p),
            None => Ok(()),
        }
    }
}

/// New pages on their way into frames.
#[derive(Default)]
struct Stream {
    /// Pages carried to the next frame (fewer than a frame).
    pending: Vec<u8>,
    /// Ids of every page not in an appended frame yet: the carried ones, then the fresh ones.
    ids: Vec<PageId>,
}

impl Stream {
    /// Encodes, in parallel, every full frame of the carried pages followed by the pages
    /// `fresh` of `data`; the pages are gathered inside the parallel tasks. The remainder
    /// (less than a frame) is carried.
    fn frames(
        &mut self,
        data: &[u8],
        fresh: &[usize],
        fp: usize,
        level: Option<i32>,
    ) -> Result<Vec<(Vec<u8>, u8, usize)>, StoreError> {
        let carried = self.pending.len() / PAGE_SIZE;
        let total = carried + fresh.len();
        let full = total / fp * fp;
        let pending = &self.pending;
        let page = |k: usize| -> &[u8] {
            if k < carried {
                &pending[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]
            } else {
                let i = fresh[k - carried];
                &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]
            }
        };
        let frames: Vec<(Vec<u8>, u8, usize)> = (0..full / fp)
            .into_par_iter()
            .map(|f| {
                let parts: Vec<&[u8]> = (f * fp..(f + 1) * fp).map(page).collect();
                encode_frame_parts(&parts, level).map(|(b, c)| (b, c, fp))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::io("compressing a frame", e))?;
        let mut rest = Vec::with_capacity((total - full) * PAGE_SIZE);
        for k in full..total {
            rest.extend_from_slice(page(k));
        }
        self.pending = rest;
        Ok(frames)
    }
}

/// A cheap test for pages zstd cannot shrink (random, encrypted or already compressed data):
/// how many distinct values 124 bytes of the page take, one every 33 bytes (33 is coprime with
/// the 2/4/8-byte strides of typical data, so every byte position of a word is sampled).
/// Uniform bytes take about 98 of 256 (standard deviation about 4); a page passes with at
/// least [`INCOMPRESSIBLE_DISTINCT`]. Text, machine code and typical heap data take far fewer,
/// and 7-bit data (zstd still gains an eighth) about 79. A misjudged page is still stored
/// correctly, only less compactly or with more CPU spent.
///
/// Two bitsets, one for every other sample, so that their updates do not wait on each other:
/// about 0.2 µs per page here, a third of a byte histogram's time (which this replaced: it
/// cost 140 ms of CPU per GiB dumped).
pub(crate) fn looks_incompressible(p: &[u8; PAGE_SIZE]) -> bool {
    let mut even = [0u64; 4];
    let mut odd = [0u64; 4];
    for pair in p.chunks_exact(2 * INCOMPRESSIBLE_STRIDE) {
        let (a, b) = (pair[0], pair[INCOMPRESSIBLE_STRIDE]);
        even[usize::from(a >> 6)] |= 1u64 << (a & 63);
        odd[usize::from(b >> 6)] |= 1u64 << (b & 63);
    }
    let distinct: u32 = even
        .iter()
        .zip(&odd)
        .map(|(e, o)| (e | o).count_ones())
        .sum();
    distinct >= INCOMPRESSIBLE_DISTINCT
}

/// Bytes between two samples of [`looks_incompressible`].
const INCOMPRESSIBLE_STRIDE: usize = 33;
/// Distinct sampled byte values from which a page looks incompressible: three standard
/// deviations under what uniform bytes give.
const INCOMPRESSIBLE_DISTINCT: u32 = 85;

/// Packs of a bucket store uploaded at once while the next one fills.
const UPLOADS_IN_FLIGHT: usize = 3;

fn commit_pack(inner: &Inner, p: PackWriter) -> Result<(), StoreError> {
    if p.is_empty() {
        p.abandon();
        return Ok(());
    }
    let c = p.finish_as(&inner.root, inner.remote.is_none())?;
    // A bucket store offers a pack for deduplication only once the bucket has it.
    if let Some(r) = &inner.remote {
        r.upload_file(&c.id.key(), &c.id.path(&inner.root))?;
    }
    inner
        .index
        .write()
        .map_err(|_| StoreError::Writer("index lock poisoned".into()))?
        .add_committed(&c);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::looks_incompressible;
    use crate::image::PAGE_SIZE;

    fn page(bytes: impl Iterator<Item = u8>) -> [u8; PAGE_SIZE] {
        let mut p = [0u8; PAGE_SIZE];
        p.iter_mut().zip(bytes).for_each(|(d, s)| *d = s);
        p
    }

    #[test]
    fn incompressible_test_tells_random_from_text() {
        // Random pages pass, nearly all of them (three standard deviations of margin).
        let mut xof = blake3::Hasher::new().update(b"seed").finalize_xof();
        let mut random = [0u8; PAGE_SIZE];
        let mut passed = 0;
        for _ in 0..1000 {
            xof.fill(&mut random);
            passed += looks_incompressible(&random) as usize;
        }
        assert!(passed >= 990, "{passed} of 1000 random pages");
        let text = page(b"page 12: the quick brown fox. ".iter().cycle().copied());
        assert!(!looks_incompressible(&text));
        assert!(!looks_incompressible(&[0u8; PAGE_SIZE]));
        // Small integers (a typical heap array) are compressible: every byte of each word is
        // sampled, not only the low one.
        let ints = page((0..1024u32).flat_map(|i| (i * 7).to_le_bytes()));
        assert!(!looks_incompressible(&ints));
        let longs = page((0..512u64).flat_map(|i| (i * 0x9E37_79B9).to_le_bytes()));
        assert!(!looks_incompressible(&longs));
        // Six random bits per byte: zstd still gains a quarter.
        xof.fill(&mut random);
        assert!(!looks_incompressible(&page(
            random.iter().map(|b| b & 0x3f)
        )));
    }
}
