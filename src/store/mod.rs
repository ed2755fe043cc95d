//! The content-addressed page store (DESIGN.md §3): packs of zstd frames, a page index,
//! manifests of image sets, retention, gc and verify.
//!
//! ```text
//! store/
//!   HAUL-STORE            "haul-store\nformat 1\npage-size 4096\n"
//!   lock                  flock: SetWriters hold it shared, gc takes it exclusive
//!   packs/ab/<id>.pack    frames of pages + footer + trailer (see [`pack`])
//!   index/<pack id>.idx   one index segment per pack (see [`index`])
//!   sets/<job>/<set id>   manifests (see [`crate::image::encode`])
//!   precopy/<set id>.lock flock: held by the process writing a pre-copy (see [`chains`])
//!   tmp/                  files being written; leftovers of crashed writers, removed by gc
//! ```
//!
//! Every file is written under `tmp/`, fsynced, renamed into place and its directory fsynced; a
//! set's manifest is written last, so a crash leaves at most unreferenced packs and temp files.

pub mod bucket;
mod chains;
mod du;
mod error;
mod figures;
mod footer;
mod fsutil;
pub mod index;
mod list;
mod maint;
pub mod pack;
mod read;
#[cfg(test)]
mod tests;
mod verify;
mod view;
mod writer;

pub use chains::SetState;
pub use du::{DuReport, JobUsage};
pub use error::{PageAt, StoreError};
pub use figures::{ChainView, PageCosts};
pub use footer::PackId;
pub use list::{DamagedSet, ListRow, Listing};
pub use maint::GcReport;
pub use read::{NextBatch, PageStream, ReadOptions, StreamBatch, READ_BATCH_PAGES};
pub use verify::{VerifyProblem, VerifyReport};
pub use view::{set_view, show_text, ProcessView, SetView, VmaView};
pub use writer::SetWriter;

use crate::image::encode::{self, EncodeError, SetMeta};
use crate::image::{ImageSet, SetFigures, SetKind, PAGE_SIZE};
use crate::sys::file::{FileLock, LockError, LockMode};
use index::Index;
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The store format this build writes and the newest it reads.
pub const STORE_FORMAT: u32 = 1;
/// Name of the marker file at the top of a store.
pub const MARKER: &str = "HAUL-STORE";
/// Pages per frame: measured by `bench::frame_sizes` (see `src/bench/store.rs` and the report):
/// 16 pages keeps a fault's decode well under 100 µs while compressing within a few percent of
/// 64-page frames.
pub const DEFAULT_FRAME_PAGES: usize = 16;
/// A pack is closed once it holds this many bytes.
pub const DEFAULT_PACK_TARGET: u64 = 64 << 20;
/// How long gc and rm wait for writers to finish before refusing.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// One line of `haul images ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SetSummary {
    pub id: String,
    pub job: String,
    pub kind: SetKind,
    pub created_us: u64,
    pub parent: Option<String>,
    pub kernel: String,
    pub pid: Option<i32>,
    pub comm: Option<String>,
    pub figures: SetFigures,
    /// Whether gc keeps it: see [`SetState`].
    pub state: SetState,
}

impl SetSummary {
    fn of(m: SetMeta) -> SetSummary {
        SetSummary {
            state: SetState::Ok,
            pid: m.process.as_ref().map(|p| p.pid),
            comm: m.process.as_ref().map(|p| p.comm.clone()),
            id: m.id,
            job: m.job,
            kind: m.kind,
            created_us: m.created_us,
            parent: m.parent,
            kernel: m.kernel,
            figures: m.figures,
        }
    }
}

type FrameKey = (PackId, u32);

/// A small cache of decoded frames for lazy faults.
#[derive(Default)]
pub(crate) struct FrameCache {
    /// (pack, frame) → (decoded frame, last use).
    map: HashMap<FrameKey, (Arc<Vec<u8>>, u64)>,
    tick: u64,
}

pub(crate) const FRAME_CACHE: usize = 32;

impl FrameCache {
    fn get(&mut self, k: &FrameKey) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|(v, used)| {
            *used = t;
            v.clone()
        })
    }
    fn put(&mut self, k: FrameKey, v: Arc<Vec<u8>>) {
        if self.map.len() >= FRAME_CACHE {
            if let Some(old) = self
                .map
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(k, _)| *k)
            {
                self.map.remove(&old);
            }
        }
        self.tick += 1;
        self.map.insert(k, (v, self.tick));
    }
}

pub(crate) struct Inner {
    root: PathBuf,
    /// What messages call the store: its directory, or `s3://bucket/prefix`.
    display: PathBuf,
    /// What [`Store::open`] takes to open this store again (a bucket's settings included).
    open_as: PathBuf,
    /// The bucket, for a bucket store (`root` is then its local cache).
    remote: Option<Arc<bucket::Remote>>,
    /// Read packs from the bucket even when the cache holds them (verify checks the bucket).
    remote_reads_only: std::sync::atomic::AtomicBool,
    /// Ranges of the bucket's packs fetched lately (a bucket store's faults and page server).
    raw_cache: Mutex<bucket::fetch::RawCache>,
    index: RwLock<Index>,
    cache: Mutex<FrameCache>,
    /// Open packs by (id, opened for random access).
    files: Mutex<HashMap<(PackId, bool), Arc<File>>>,
    lock_timeout_ms: AtomicU64,
    /// How old an unreferenced pack of a bucket must be before gc deletes it.
    gc_grace_ms: AtomicU64,
    pack_target: AtomicU64,
    frame_pages: AtomicUsize,
    /// The pre-copy chains this process is writing (see [`chains`]).
    chains: Mutex<chains::Chains>,
}

/// An open store. Cheap to share between threads (`&Store` is `Sync`); a clone is another
/// handle on the same open store (its index, frame cache and open packs), not a new open.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn marker_text() -> String {
    format!("haul-store\nformat {STORE_FORMAT}\npage-size {PAGE_SIZE}\n")
}

fn check_marker(path: &Path) -> Result<(), StoreError> {
    let m = path.join(MARKER);
    let text = match std::fs::read(&m) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotAStore {
                path: path.into(),
                reason: if path.is_dir() {
                    format!("it has no {MARKER} file")
                } else if path.exists() {
                    "it is not a directory".into()
                } else {
                    "it does not exist".into()
                },
            })
        }
        Err(e) => return Err(StoreError::io(format!("reading {}", m.display()), e)),
    };
    parse_marker(path, &text)
}

/// Checks the text of a store's marker (`path` names the store in errors).
fn parse_marker(path: &Path, text: &[u8]) -> Result<(), StoreError> {
    let text = String::from_utf8_lossy(text);
    let mut lines = text.lines();
    if lines.next() != Some("haul-store") {
        return Err(StoreError::NotAStore {
            path: path.into(),
            reason: format!("{MARKER} does not start with \"haul-store\""),
        });
    }
    let mut format = None;
    let mut page = None;
    for l in lines {
        let mut kv = l.splitn(2, ' ');
        match (kv.next(), kv.next()) {
            (Some("format"), Some(v)) => format = v.trim().parse::<u32>().ok(),
            (Some("page-size"), Some(v)) => page = v.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let Some(format) = format else {
        return Err(StoreError::NotAStore {
            path: path.into(),
            reason: format!("{MARKER} has no valid \"format N\" line"),
        });
    };
    if format > STORE_FORMAT {
        return Err(StoreError::NewerFormat {
            path: path.into(),
            found: format,
            supported: STORE_FORMAT,
        });
    }
    match page {
        Some(p) if p == PAGE_SIZE => Ok(()),
        Some(p) => Err(StoreError::PageSize {
            path: path.into(),
            found: p,
            expected: PAGE_SIZE,
        }),
        None => Err(StoreError::NotAStore {
            path: path.into(),
            reason: format!("{MARKER} has no valid \"page-size N\" line"),
        }),
    }
}

/// Checks a job name: it becomes a directory name.
pub fn check_job_name(job: &str) -> Result<(), StoreError> {
    let bad = |reason: &str| {
        Err(StoreError::BadJobName {
            job: job.into(),
            reason: reason.into(),
        })
    };
    if job.is_empty() {
        return bad("it is empty");
    }
    if job.len() > 100 {
        return bad("longer than 100 characters");
    }
    if job.starts_with('.') {
        return bad("it starts with a dot");
    }
    if !job
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

fn valid_set_id(id: &str) -> bool {
    !id.is_empty() && !id.starts_with('.') && !id.contains('/') && id != ".."
}

impl Store {
    /// Opens an existing store; refuses a path that is not one, or one of a newer format.
    /// `s3://bucket/prefix[?settings]` opens a bucket store (see [`bucket`]).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if bucket::is_bucket(path) {
            return Store::open_bucket(path, false);
        }
        check_marker(path)?;
        Store::open_checked(path, path, path, None)
    }

    /// Opens a bucket store: checks (or, with `create`, creates) its marker object, then
    /// brings the local cache up to the bucket (index segments of new packs, manifests).
    fn open_bucket(loc: &Path, create: bool) -> Result<Store, StoreError> {
        let u = bucket::BucketUrl::parse(&loc.to_string_lossy())?;
        let remote = Arc::new(bucket::Remote::connect(&u)?);
        let display = PathBuf::from(u.display());
        match remote.get(MARKER)? {
            Some(text) => parse_marker(&display, &text)?,
            None if create => {
                // Created only if absent: two hosts creating the store at once make one.
                remote.put_new(MARKER, marker_text().into_bytes())?;
            }
            None => {
                return Err(StoreError::NotAStore {
                    path: display,
                    reason: format!(
                        "the bucket has no {MARKER} object under this prefix (a dump creates the store; the bucket must exist)"
                    ),
                })
            }
        }
        let cache = bucket::cache_dir(&u);
        if let Some(parent) = cache.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::io(format!("creating cache directory {}", parent.display()), e)
            })?;
        }
        // The cache is a local store of its own (made once, then reused across runs).
        drop(Store::open_or_create(&cache)?);
        Store::open_checked(&cache, &display, loc, Some(remote))
    }

    /// Opens a store whose marker was checked.
    fn open_checked(
        path: &Path,
        display: &Path,
        open_as: &Path,
        remote: Option<Arc<bucket::Remote>>,
    ) -> Result<Store, StoreError> {
        for d in ["packs", "index", "sets", "tmp"] {
            fsutil::create_dir(&path.join(d))?;
        }
        let index = match &remote {
            Some(r) => {
                let packs = bucket::sync::pull_index(r, path)?;
                bucket::sync::pull_manifests(r, path, false)?;
                Index::load_from(path, Some(&packs))?
            }
            None => Index::load(path)?,
        };
        Ok(Store {
            inner: Arc::new(Inner {
                root: path.to_path_buf(),
                display: display.to_path_buf(),
                open_as: open_as.to_path_buf(),
                remote,
                remote_reads_only: Default::default(),
                raw_cache: Mutex::default(),
                index: RwLock::new(index),
                cache: Mutex::new(FrameCache::default()),
                files: Mutex::new(HashMap::new()),
                lock_timeout_ms: AtomicU64::new(DEFAULT_LOCK_TIMEOUT.as_millis() as u64),
                gc_grace_ms: AtomicU64::new(bucket::maint::GRACE.as_millis() as u64),
                pack_target: AtomicU64::new(DEFAULT_PACK_TARGET),
                frame_pages: AtomicUsize::new(DEFAULT_FRAME_PAGES),
                chains: Mutex::default(),
            }),
        })
    }

    /// Opens a store, creating it when `path` does not exist or is an empty directory. A
    /// non-empty directory that is not a store is refused.
    pub fn open_or_create(path: &Path) -> Result<Store, StoreError> {
        if bucket::is_bucket(path) {
            return Store::open_bucket(path, true);
        }
        if !path.join(MARKER).exists() {
            // Empty, or holding only what a store's own creation puts there (a creation in
            // place that was cut short) or what a fresh file system comes with.
            let empty = match std::fs::read_dir(path) {
                Ok(rd) => rd.flatten().all(|e| {
                    matches!(
                        e.file_name().to_str(),
                        Some("packs" | "index" | "sets" | "tmp" | "lock" | "lost+found")
                    )
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
            };
            if !empty {
                return Err(StoreError::NotAStore {
                    path: path.into(),
                    reason: format!(
                        "it is a non-empty directory without a {MARKER} file; refusing to make it a store"
                    ),
                });
            }
            let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(p) => p.to_path_buf(),
                None => PathBuf::from("."),
            };
            std::fs::create_dir_all(&parent).map_err(|e| {
                StoreError::io(format!("creating directory {}", parent.display()), e)
            })?;
            // Built whole under a private name, then renamed into place: two haul runs creating
            // the same store at once never see each other's half-made one; the loser of the
            // rename finds the winner's store and opens it.
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = parent.join(format!(
                ".{name}.creating-{}-{}",
                std::process::id(),
                crate::util::now_us()
            ));
            let built = (|| {
                fsutil::create_dir(&tmp)?;
                for d in ["packs", "index", "sets", "tmp"] {
                    fsutil::create_dir(&tmp.join(d))?;
                }
                open_lock_file(&tmp)?;
                fsutil::write_atomic(&tmp, &tmp.join(MARKER), marker_text().as_bytes())
            })();
            if let Err(e) = built {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
            match std::fs::rename(&tmp, path) {
                Ok(()) => fsutil::fsync_dir(&parent)?,
                // An empty directory that is a mount point (a disk mounted for the store)
                // cannot be replaced: build the store inside it, the marker last, so that
                // until then it is no store (and the check above lets a creation resume).
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    for d in ["packs", "index", "sets", "tmp"] {
                        fsutil::create_dir(&path.join(d))?;
                    }
                    open_lock_file(path)?;
                    fsutil::fsync_dir(path)?;
                    fsutil::write_atomic(path, &path.join(MARKER), marker_text().as_bytes())?;
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    if !path.join(MARKER).exists() {
                        return Err(StoreError::io(
                            format!("creating store {}", path.display()),
                            e,
                        ));
                    }
                }
            }
        }
        Store::open(path)
    }

    /// The store's directory (for a bucket store, its local cache).
    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// What to call the store in messages: its directory, or `s3://bucket/prefix`.
    pub fn location(&self) -> &Path {
        &self.inner.display
    }

    /// What [`Store::open`] takes to open this same store, in another process too: its
    /// directory, or the bucket's location with its settings.
    pub fn open_as(&self) -> &Path {
        &self.inner.open_as
    }

    /// The bucket of a bucket store.
    pub fn remote(&self) -> Option<&Arc<bucket::Remote>> {
        self.inner.remote.as_ref()
    }

    /// How long gc and rm wait for writers before refusing (default 10 s).
    pub fn set_lock_timeout(&self, d: Duration) {
        self.inner
            .lock_timeout_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// How old an unreferenced pack of a bucket store must be before gc deletes it (default
    /// [`bucket::maint::GRACE`]); a local store's gc has its lock and needs none.
    pub fn set_gc_grace(&self, d: Duration) {
        self.inner
            .gc_grace_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    fn gc_grace(&self) -> Duration {
        Duration::from_millis(self.inner.gc_grace_ms.load(Ordering::Relaxed))
    }

    /// Size at which a pack is closed (default 64 MiB). Mostly for tests and benchmarks.
    pub fn set_pack_target(&self, bytes: u64) {
        self.inner
            .pack_target
            .store(bytes.max(1), Ordering::Relaxed);
    }

    /// Pages per frame for new packs (default [`DEFAULT_FRAME_PAGES`]); 1..=1024.
    pub fn set_frame_pages(&self, n: usize) {
        self.inner
            .frame_pages
            .store(n.clamp(1, 1024), Ordering::Relaxed);
    }

    /// Forgets the decoded frames only (the kernel's page cache keeps the packs): what a read
    /// costs when its frame must be decoded again (`haul bench store`'s warm reads).
    pub(crate) fn forget_decoded_frames(&self) {
        if let Ok(mut c) = self.inner.cache.lock() {
            *c = FrameCache::default();
        }
    }

    /// Forgets decoded frames and asks the kernel to drop the packs from the page cache (so
    /// that the next reads really go to the disk). Open pack handles are kept.
    pub fn drop_caches(&self) {
        if let Ok(mut c) = self.inner.cache.lock() {
            *c = FrameCache::default();
        }
        let packs: Vec<PackId> = match self.inner.index.read() {
            Ok(i) => i.packs.iter().map(|p| p.id).collect(),
            Err(_) => Vec::new(),
        };
        for id in packs {
            if let Ok(f) = File::open(id.path(&self.inner.root)) {
                // Only a hint; dirty pages are written first so that they can be dropped.
                let _ = f.sync_data();
                let _ = crate::sys::file::advise(&f, crate::sys::file::Advice::DontNeed);
            }
        }
    }

    fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.lock_timeout_ms.load(Ordering::Relaxed))
    }

    /// Takes the store lock, waiting up to the lock timeout.
    pub(crate) fn lock(&self, exclusive: bool, what: &str) -> Result<FileLock, StoreError> {
        let timeout = self.lock_timeout();
        let start = Instant::now();
        let mut file = open_lock_file(&self.inner.root)?;
        let mode = if exclusive {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        };
        loop {
            match crate::sys::file::lock(file, mode, true) {
                Ok(l) => return Ok(l),
                Err(LockError::Held(f)) | Err(LockError::Interrupted(f)) => {
                    if start.elapsed() >= timeout {
                        return Err(StoreError::Locked {
                            path: self.inner.display.clone(),
                            what: what.into(),
                            waited: timeout,
                        });
                    }
                    file = f;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(LockError::Failed { source, .. }) => {
                    return Err(StoreError::io(
                        format!("locking {}", self.inner.root.join("lock").display()),
                        source,
                    ))
                }
            }
        }
    }

    /// A pre-copy's view of its memory before the final dump ([`ChainView`]): `table` is the
    /// set that dump would write if nothing changed (keys strictly increasing), `known` the
    /// costs of its chain's pages. None if the table is out of order or names a page the
    /// store does not hold: the commit then counts every page (and names such a page).
    pub fn chain_view(
        &self,
        table: Vec<(u64, crate::image::PageRef)>,
        known: Option<&PageCosts>,
    ) -> Result<Option<ChainView>, StoreError> {
        let idx = self
            .inner
            .index
            .read()
            .map_err(|_| StoreError::Writer("index lock poisoned".into()))?;
        Ok(ChainView::new(table, &idx, known))
    }

    /// Starts writing a new image set. The writer holds the store lock shared until it is
    /// committed or dropped, so gc cannot remove packs it deduplicates against.
    pub fn begin_set(
        &self,
        job: &str,
        kind: SetKind,
        parent: Option<&str>,
        level: Option<i32>,
    ) -> Result<SetWriter<'_>, StoreError> {
        check_job_name(job)?;
        let lock = self.lock(false, "a set writer")?;
        // Another host's gc is kept off the bucket the same way, by a lock object.
        let bucket_lock = match &self.inner.remote {
            Some(r) => Some(bucket::lock::take(
                r,
                false,
                "a set writer",
                self.lock_timeout(),
            )?),
            None => None,
        };
        // gc may have run since this Store was opened: what the index offers for dedup must
        // exist now, and cannot go away while we hold the lock.
        self.inner.refresh_index()?;
        writer::SetWriter::start(
            self,
            self.inner.clone(),
            (lock, bucket_lock),
            job,
            kind,
            parent,
            level,
        )
    }

    fn sets_dir(&self) -> PathBuf {
        self.inner.root.join("sets")
    }

    fn jobs(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.sets_dir();
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        // An entry that cannot be read is an error, not a job less: gc would take the pages of
        // the sets it hides for garbage.
        let entries = rd
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let mut out: Vec<String> = entries
            .into_iter()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| !n.starts_with('.'))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Paths of every manifest (of one job, or all), unordered.
    pub(crate) fn manifest_paths(&self, job: Option<&str>) -> Result<Vec<PathBuf>, StoreError> {
        let jobs = match job {
            Some(j) => {
                check_job_name(j)?;
                vec![j.to_string()]
            }
            None => self.jobs()?,
        };
        let mut out = Vec::new();
        for j in jobs {
            let dir = self.sets_dir().join(&j);
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
            };
            for e in rd {
                let e = e.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
                let name = e.file_name();
                if name.to_str().is_some_and(|n| !n.starts_with('.')) {
                    out.push(e.path());
                }
            }
        }
        Ok(out)
    }

    /// The meta section of a manifest, after checking the checksums of the whole file (the
    /// page table's too, without decoding it): a set whose page table is damaged is damaged.
    fn read_meta(path: &Path) -> Result<SetMeta, StoreError> {
        let b = std::fs::read(path)
            .map_err(|e| StoreError::io(format!("reading manifest {}", path.display()), e))?;
        let bad = |source| StoreError::Manifest {
            path: path.into(),
            source,
        };
        let meta = encode::decode_meta(&b).map_err(bad)?;
        let h = encode::decode_header(&b).map_err(bad)?;
        let table_start = (encode::HEADER_LEN as u64).saturating_add(h.meta_len);
        if table_start.checked_add(h.table_len) != Some(b.len() as u64) {
            return Err(bad(EncodeError::Truncated("page table")));
        }
        if blake3::hash(&b[table_start as usize..]).as_bytes() != &h.table_hash {
            return Err(bad(EncodeError::Checksum {
                section: "page table",
            }));
        }
        Ok(meta)
    }

    /// Every readable set (of one job, or all), oldest first. Damaged manifests are skipped
    /// here (with a warning); [`Store::list`] lists them, `verify` says what is wrong.
    pub fn list_sets(&self, job: Option<&str>) -> Result<Vec<SetSummary>, StoreError> {
        let l = self.list(job)?;
        for d in &l.damaged {
            tracing::warn!("skipping unreadable manifest: {}", d.error);
        }
        Ok(l.sets)
    }

    /// The newest set of `job`.
    pub fn latest_set(&self, job: &str) -> Result<Option<SetSummary>, StoreError> {
        Ok(self.list_sets(Some(job))?.pop())
    }

    /// Where the manifest of set `id` is.
    fn find_set(&self, id: &str) -> Result<PathBuf, StoreError> {
        let not_found = || StoreError::SetNotFound {
            id: id.into(),
            store: self.inner.display.clone(),
        };
        if !valid_set_id(id) {
            return Err(not_found());
        }
        // Ids are `<job>-<time>-<rand>`: try the job they name first, then every job.
        let mut parts = id.rsplitn(3, '-');
        let guess = match (parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(_), Some(job)) => Some(job),
            _ => None,
        };
        if let Some(job) = guess.filter(|j| check_job_name(j).is_ok()) {
            let p = self.sets_dir().join(job).join(id);
            if p.is_file() {
                return Ok(p);
            }
        }
        for job in self.jobs()? {
            let p = self.sets_dir().join(job).join(id);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(not_found())
    }

    /// [`Store::find_set`]; a bucket store that does not know the set yet looks at the
    /// bucket again first (another host may have written it since this store was opened).
    fn find_set_fresh(&self, id: &str) -> Result<PathBuf, StoreError> {
        match (self.find_set(id), &self.inner.remote) {
            (Err(StoreError::SetNotFound { .. }), Some(r)) => {
                bucket::sync::pull_manifests(r, &self.inner.root, false)?;
                self.find_set(id)
            }
            (r, _) => r,
        }
    }

    /// Loads and checks a whole manifest.
    pub fn load_set(&self, id: &str) -> Result<ImageSet, StoreError> {
        let path = self.find_set_fresh(id)?;
        let b = std::fs::read(&path)
            .map_err(|e| StoreError::io(format!("reading manifest {}", path.display()), e))?;
        encode::decode_manifest(&b).map_err(|source| StoreError::Manifest { path, source })
    }

    /// Removes a set's manifest. Its pages stay until `gc`. Only a manifest is deleted, never
    /// pack data, so this takes the lock shared and runs alongside writers.
    pub fn remove_set(&self, id: &str) -> Result<(), StoreError> {
        let _lock = self.lock(false, "rm")?;
        let path = self.find_set_fresh(id)?;
        if let Some(r) = &self.inner.remote {
            // The bucket's manifest is the set; the cached copy follows it.
            let job = path
                .parent()
                .and_then(|d| d.file_name())
                .map(|j| j.to_string_lossy().into_owned())
                .unwrap_or_default();
            r.delete(&format!("sets/{job}/{id}"))?;
        }
        Store::remove_manifest(&path)
    }

    /// Removes a manifest file, and its job's directory once empty; the caller holds the lock.
    fn remove_manifest(path: &Path) -> Result<(), StoreError> {
        std::fs::remove_file(path)
            .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
        if let Some(dir) = path.parent() {
            fsutil::fsync_dir(dir)?;
            // Drop the job's directory once empty (ignore a race with a writer adding to it).
            if std::fs::read_dir(dir)
                .map(|mut r| r.next().is_none())
                .unwrap_or(false)
            {
                let _ = std::fs::remove_dir(dir);
            }
        }
        Ok(())
    }

    /// Removes the oldest sets of `job` beyond the newest `keep` (at least one is always kept).
    /// Returns the removed ids, oldest first.
    pub fn prune(&self, job: &str, keep: usize) -> Result<Vec<String>, StoreError> {
        let sets = self.list_sets(Some(job))?;
        let keep = keep.max(1);
        let n = sets.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for s in sets.into_iter().take(n) {
            self.remove_set(&s.id)?;
            removed.push(s.id);
        }
        Ok(removed)
    }
}

impl Inner {
    /// Reloads the index when packs came or went: for a bucket store, the bucket's packs
    /// (new ones get their segments first), else the packs under `packs/`.
    pub(crate) fn refresh_index(&self) -> Result<(), StoreError> {
        let present = match &self.remote {
            Some(r) => Some(bucket::sync::pull_index(r, &self.root)?),
            None => None,
        };
        self.index
            .write()
            .map_err(|_| StoreError::Writer("index lock poisoned".into()))?
            .refresh_from(&self.root, present.as_ref())
    }
}

fn open_lock_file(root: &Path) -> Result<File, StoreError> {
    fsutil::open_lock(&root.join("lock"))
}
