//! Where the daemon gets pages: the local store here, or a page server (`xfer::RemoteSource`
//! implements [`LazySource`] there).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::image::{PageId, PageRef, SetKind, PAGE_SIZE};
use crate::store::{NextBatch, PageStream, Store, StoreError, StreamBatch};

/// Why a page source could not deliver. Either way the daemon kills the process: it must never
/// run with a page it does not have.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source is gone, in its own words (for sources that can only say why in words).
    #[error("page source lost: {0}")]
    Lost(String),
    /// The source answered with something unusable, in its own words.
    #[error("page source failed: {0}")]
    Failed(String),
    /// The store could not give a page (a page that does not hash to its id, a missing pack).
    #[error("page source failed: {0}")]
    Store(#[source] Box<StoreError>),
    /// The page server refused, broke the protocol, or could not be told `Done`.
    #[error("page source failed: {0}")]
    Remote(#[source] crate::restore::BoxError),
    /// The page server was unreachable for `source_timeout`; `last` is the last failure.
    #[error("page source lost: {addr} unreachable for {timeout:?}: {last}")]
    Unreachable {
        addr: String,
        timeout: Duration,
        #[source]
        last: crate::restore::BoxError,
    },
    /// A thread panicked while holding the source's connection (a bug in haul).
    #[error("page source failed: its connection's lock was poisoned by a panicked thread")]
    Poisoned,
    /// The source handed over a different number of bytes than asked for.
    #[error("page source failed: it returned {bytes} bytes for {pages} pages")]
    Short { bytes: usize, pages: usize },
}

impl From<StoreError> for SourceError {
    fn from(e: StoreError) -> SourceError {
        SourceError::Store(Box::new(e))
    }
}

/// A page source of the daemon.
pub trait LazySource: Send {
    /// Appends the content of each `(addr, id)` page of set `set` to `out` (4096 bytes each,
    /// in order), each checked against its id.
    fn fetch(
        &mut self,
        set: &str,
        pages: &[(u64, PageId)],
        out: &mut Vec<u8>,
    ) -> Result<(), SourceError>;

    /// Bytes received over the network so far (0 for local sources).
    fn bytes_network(&self) -> u64 {
        0
    }

    /// How often each page of `set` was written over the pre-dumps that led to it (for the
    /// hot-first push): address → count, `Ready(None)` when the source cannot tell. A source
    /// that works it out in the background answers `NotYet` until it is done: the first call
    /// (the daemon's first push step, once the process runs: not during the restore, which it
    /// would slow down) starts the work.
    fn dirty_counts(&mut self, set: &Arc<crate::image::ImageSet>) -> DirtyCounts {
        let _ = set;
        DirtyCounts::Ready(None)
    }

    /// Starts reading `pages` of set `set` in the background, in the order given, for the
    /// push (zero pages, where given, come as zeroes, or are left out): batches arrive ahead
    /// of the daemon, which only copies them in. `None`: this source has no such stream, the
    /// daemon fetches chunk by chunk.
    fn stream(&mut self, set: &str, pages: Vec<(u64, PageRef)>) -> Option<Box<dyn PushStream>> {
        let _ = (set, pages);
        None
    }

    /// Every page of `set` is resident: the source may let go of them. For a page server
    /// serving a frozen source (`dump.lazy`), this says `Done`, upon which the source process
    /// is killed; without it the source is thawed after `source_timeout` (rolled back) while
    /// the restored copy runs on. Call it once every page is resident, not on failure. An
    /// error means the source may not have heard it (it may then resume). Default: nothing
    /// to release (local sources).
    fn finished(&mut self, set: &str) -> Result<(), SourceError> {
        let _ = set;
        Ok(())
    }
}

/// Pages a source reads ahead for the daemon's push, in batches (see [`LazySource::stream`]).
pub trait PushStream: Send {
    /// The next batch if one is ready within `wait`.
    fn next_within(&mut self, wait: Duration) -> NextPush;

    /// Gives a batch's buffer back to be filled again.
    fn recycle(&mut self, b: StreamBatch) {
        drop(b);
    }
}

/// What [`PushStream::next_within`] found.
pub enum NextPush {
    /// Pages, each checked against its id; an error is fatal to the restore.
    Batch(Result<StreamBatch, SourceError>),
    /// None is ready yet.
    NotYet,
    /// Every page was handed over, or the stream gave up (the daemon then fetches what is
    /// still missing page by page, with the source's own retries).
    End,
}

impl PushStream for PageStream {
    fn next_within(&mut self, wait: Duration) -> NextPush {
        match PageStream::next_within(self, wait) {
            NextBatch::Batch(b) => NextPush::Batch(b.map_err(SourceError::from)),
            NextBatch::NotYet => NextPush::NotYet,
            NextBatch::End => NextPush::End,
        }
    }

    fn recycle(&mut self, b: StreamBatch) {
        PageStream::recycle(self, b);
    }
}

/// What [`LazySource::dirty_counts`] has.
pub enum DirtyCounts {
    /// Still being worked out.
    NotYet,
    Ready(Option<HashMap<u64, u32>>),
}

/// Pages from a local store ([`Store::read_page_at`] checks each page's hash).
pub struct StoreSource {
    store: Arc<Store>,
    /// The dirty counts being worked out on a thread of their own.
    counting: Option<std::sync::mpsc::Receiver<Option<HashMap<u64, u32>>>>,
}

impl StoreSource {
    /// Pages of `store`, each checked against its id as it is read.
    pub fn new(store: Arc<Store>) -> StoreSource {
        StoreSource {
            store,
            counting: None,
        }
    }
}

/// Nice value of the thread that counts the pre-dumps' writes. It starts with the restored
/// process, beside the faults of its first instants (and the source's memory being freed): at
/// nice 0 it took a third of the 2 CPUs' time there: the first tick of `haul bench migrate`'s
/// workload came 12–32 ms after the process was running (6–17 ms at nice 5).
pub(crate) const COUNT_NICE: i32 = 5;

impl LazySource for StoreSource {
    fn fetch(
        &mut self,
        set: &str,
        pages: &[(u64, PageId)],
        out: &mut Vec<u8>,
    ) -> Result<(), SourceError> {
        out.reserve(pages.len() * PAGE_SIZE);
        for (addr, id) in pages {
            let p = self.store.read_page_at(id, set, *addr)?;
            out.extend_from_slice(&p);
        }
        Ok(())
    }

    fn stream(&mut self, set: &str, pages: Vec<(u64, PageRef)>) -> Option<Box<dyn PushStream>> {
        Some(Box::new(self.store.stream_pages(set, pages)))
    }

    /// Reads the chain of pre-dumps on a thread of its own (their manifests hold a page table
    /// of the whole memory each: ~100 ms per GiB that faults must not wait behind).
    fn dirty_counts(&mut self, set: &Arc<crate::image::ImageSet>) -> DirtyCounts {
        use std::sync::mpsc::TryRecvError;
        let rx = match &self.counting {
            Some(rx) => rx,
            None => {
                let (tx, rx) = std::sync::mpsc::channel();
                let (store, image) = (self.store.clone(), set.clone());
                let spawned = std::thread::Builder::new()
                    .name("haul-lazy-counts".into())
                    .spawn(move || {
                        if let Err(e) = crate::sys::process::set_thread_nice(COUNT_NICE) {
                            tracing::debug!("dirty counts thread: {e}");
                        }
                        let _ = tx.send(count_chain(&store, &image));
                    });
                if spawned.is_err() {
                    return DirtyCounts::Ready(count_chain(&self.store, set));
                }
                self.counting.insert(rx)
            }
        };
        match rx.try_recv() {
            Ok(c) => DirtyCounts::Ready(c),
            Err(TryRecvError::Empty) => DirtyCounts::NotYet,
            Err(TryRecvError::Disconnected) => DirtyCounts::Ready(None),
        }
    }
}

/// Walks the set's chain of pre-dumps: each holds the pages written since the one before (the
/// first, every page), and a page of the final dump that differs from the last pre-dump's was
/// written once more.
fn count_chain(store: &Store, last: &crate::image::ImageSet) -> Option<HashMap<u64, u32>> {
    {
        let mut counts: HashMap<u64, u32> = HashMap::new();
        let mut latest: HashMap<u64, PageRef> = HashMap::new();
        let mut parent = last.parent.clone();
        let mut any = false;
        while let Some(p) = parent {
            let s = store.load_set(&p).ok()?;
            if s.kind != SetKind::PreDump {
                break;
            }
            any = true;
            for (a, r) in s.pages.iter() {
                *counts.entry(a).or_default() += 1;
                latest.entry(a).or_insert(r);
            }
            parent = s.parent.clone();
        }
        if !any {
            return None;
        }
        for (a, r) in last.pages.iter() {
            if latest.get(&a) != Some(&r) {
                *counts.entry(a).or_default() += 1;
            }
        }
        Some(counts)
    }
}
