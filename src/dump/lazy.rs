//! Lazy final dump (`dump.lazy = true`, issue #7): the pages a lazy restore leaves to its
//! daemon stay in the frozen source process, which then serves them.
//!
//! - Which pages: those of the private anonymous VMAs (`VmaKind::Anon`, not shared), exactly the
//!   VMAs `restore::lazy_ranges` registers MISSING. They are read and hashed under the freeze and
//!   recorded as `PageRef::Lazy(id)`; all-zero pages stay `Zero`. Pages carried from a pre-dump
//!   stay `Stored`; file-backed private (COW) pages and shared anonymous memory are written as
//!   in any dump, since a lazy restore fills those eagerly.
//! - The process is neither thawed nor killed: [`dump_to_store_lazy`] returns it as a
//!   [`FrozenSource`] (every thread stopped, registers and memory as before the dump). Dropping
//!   it thaws it, so no error path leaves it stopped or traced.
//! - Serving it is the runner's part (`runner::worker::serve_frozen`, with the page server):
//!   at the end the source is killed (the restore said every page is resident) or thawed
//!   (nobody came, or the restore went away for `source_timeout`: the migration is rolled back).

use std::time::Instant;

use rayon::prelude::*;

use super::freeze::Frozen;
use super::memory::{read_runs, Run};
use super::{DumpError, DumpOptions, PageSink, StoredDump};
use crate::image::{is_zero_page, PageId, PageRef, SetKind, Vma, VmaKind, PAGE_SIZE};
use crate::store::Store;
use crate::sys::mem::{PageBuf, ProcMem};

/// The VMAs whose pages a lazy dump leaves in the source: the private anonymous ones, as
/// `restore::lazy_ranges` (the restore's side of the same rule) chooses them.
pub(crate) fn is_lazy_vma(v: &Vma) -> bool {
    v.kind == VmaKind::Anon && !v.shared
}

/// A page sink in front of another: pages inside the lazy VMAs become `Lazy(id)` (or `Zero`)
/// references, the others pass through. Without ranges it only passes pages on.
pub(crate) struct LazySplit<'a> {
    inner: &'a mut dyn PageSink,
    /// Sorted, disjoint `(start, end)` of the lazy VMAs.
    ranges: Vec<(u64, u64)>,
    /// Pages recorded `Lazy`.
    lazy: u64,
    /// Pages of the lazy VMAs recorded `Zero`.
    zero: u64,
}

impl<'a> LazySplit<'a> {
    /// `vmas`: the dumped VMAs for a lazy dump, None for a plain one.
    pub fn new(inner: &'a mut dyn PageSink, vmas: Option<&[Vma]>) -> LazySplit<'a> {
        let mut ranges: Vec<(u64, u64)> = vmas
            .unwrap_or(&[])
            .iter()
            .filter(|v| is_lazy_vma(v))
            .map(|v| (v.start, v.end))
            .collect();
        ranges.sort_unstable();
        LazySplit {
            inner,
            ranges,
            lazy: 0,
            zero: 0,
        }
    }

    /// Pages recorded as `Lazy` (the set's `pages_lazy`).
    pub fn lazy_pages(&self) -> u64 {
        self.lazy
    }

    /// Pages recorded by reference instead of being handed over with their content: the
    /// `Lazy` ones and the zero pages of the lazy VMAs.
    pub fn kept_back(&self) -> u64 {
        self.lazy + self.zero
    }

    fn is_lazy(&self, a: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= a);
        self.ranges.get(i).is_some_and(|r| r.0 <= a)
    }
}

impl PageSink for LazySplit<'_> {
    fn buffer(&mut self, len: usize) -> PageBuf {
        self.inner.buffer(len)
    }

    fn add_pages(&mut self, addrs: &[u64], data: PageBuf) -> Result<(), DumpError> {
        if self.ranges.is_empty() {
            return self.inner.add_pages(addrs, data);
        }
        if data.len() != addrs.len() * PAGE_SIZE {
            return Err(DumpError::Sink(
                format!("{} addresses for {} bytes", addrs.len(), data.len()).into(),
            ));
        }
        let lazy: Vec<bool> = addrs.iter().map(|&a| self.is_lazy(a)).collect();
        if !lazy.contains(&true) {
            return self.inner.add_pages(addrs, data);
        }
        // Hashed now, while the process is frozen: the id is what the restore checks every
        // served page against.
        let refs: Vec<Option<PageRef>> = data
            .par_chunks(PAGE_SIZE)
            .zip(lazy.par_iter())
            .map(|(page, &l)| {
                l.then(|| {
                    if is_zero_page(page) {
                        PageRef::Zero
                    } else {
                        PageRef::Lazy(PageId::of(page))
                    }
                })
            })
            .collect();
        let mut keep_addrs = Vec::new();
        let mut keep = PageBuf::default();
        for (i, (&a, r)) in addrs.iter().zip(refs).enumerate() {
            match r {
                Some(r) => {
                    match r {
                        PageRef::Lazy(_) => self.lazy += 1,
                        _ => self.zero += 1,
                    }
                    self.inner.add_ref(a, r)?;
                }
                None => {
                    keep_addrs.push(a);
                    keep.extend_from_slice(&data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
                }
            }
        }
        if keep_addrs.is_empty() {
            return Ok(());
        }
        self.inner.add_pages(&keep_addrs, keep)
    }

    fn add_ref(&mut self, addr: u64, r: PageRef) -> Result<(), DumpError> {
        self.inner.add_ref(addr, r)
    }
}

/// The source of a lazy dump: the dumped process, every thread still stopped by haul.
/// Dropping it thaws the process (as [`FrozenSource::thaw`], errors logged).
pub struct FrozenSource {
    frozen: Frozen,
}

impl FrozenSource {
    pub(crate) fn new(frozen: Frozen) -> FrozenSource {
        FrozenSource { frozen }
    }

    /// The frozen process.
    pub fn pid(&self) -> i32 {
        self.frozen.pid
    }

    /// A reader of its memory for the page server's threads.
    pub fn reader(&self) -> LiveReader {
        LiveReader {
            pid: self.frozen.pid,
        }
    }

    /// Whether the process still exists (something else may SIGKILL it meanwhile).
    pub fn alive(&self) -> bool {
        !super::check::process_gone(self.frozen.pid)
    }

    /// Resumes it (signals held back during the freeze are sent again): the migration is
    /// rolled back and the process goes on as if never dumped.
    pub fn thaw(self) -> Result<(), DumpError> {
        self.frozen.thaw()
    }

    /// Kills it (SIGKILL): the restored copy has every page, the original is done.
    pub fn kill(self) -> Result<(), DumpError> {
        self.frozen.kill()
    }
}

/// Reads pages of a frozen source (`process_vm_readv`, `/proc/PID/mem` for what it cannot
/// read). Reading the *source* is safe: its memory is all present. It is the *restored*
/// process, with missing pages, that must never be read this way (DESIGN.md §4).
#[derive(Clone, Copy, Debug)]
pub struct LiveReader {
    pid: i32,
}

impl LiveReader {
    /// The process it reads.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Reads the page at each of `addrs` into `out` (`addrs.len()` × 4096 bytes), contiguous
    /// pages in one range.
    pub fn read(&self, addrs: &[u64], out: &mut [u8]) -> Result<(), DumpError> {
        if out.len() != addrs.len() * PAGE_SIZE {
            return Err(DumpError::Internal(format!(
                "{} bytes for {} pages",
                out.len(),
                addrs.len()
            )));
        }
        let mut runs: Vec<Run> = Vec::new();
        for &a in addrs {
            match runs.last_mut() {
                Some(r) if r.addr + (r.pages * PAGE_SIZE) as u64 == a && r.pages < 1024 => {
                    r.pages += 1
                }
                _ => runs.push(Run {
                    addr: a,
                    pages: 1,
                    readable: true,
                    file: false,
                }),
            }
        }
        let mut mem: Option<ProcMem> = None;
        let mut off = 0;
        for chunk in runs.chunks(1024) {
            let len: usize = chunk.iter().map(|r| r.pages * PAGE_SIZE).sum();
            read_runs(self.pid, &mut mem, chunk, &mut out[off..off + len])?;
            off += len;
        }
        Ok(())
    }
}

/// Dumps process `pid` into `store` as a lazy final dump of `job` (see the module doc):
/// returns the committed set and the process, still frozen. `opts.lazy` is implied.
pub fn dump_to_store_lazy(
    pid: i32,
    store: &Store,
    job: &str,
    opts: &DumpOptions,
    level: Option<i32>,
) -> Result<(StoredDump, FrozenSource), DumpError> {
    let opts = DumpOptions {
        lazy: true,
        ..opts.clone()
    };
    let mut writer = store.begin_set(job, SetKind::Dump, None, level)?;
    let (out, frozen) = super::dump_planned(pid, &opts, &mut writer, None)?;
    let frozen = frozen
        .ok_or_else(|| DumpError::Internal("the lazy dump lost its source".into()))?
        .into_root()?;
    // From here on, an error drops `frozen`, which thaws the process.
    let t = Instant::now();
    let set = writer.commit(Some(out.process))?;
    let mut stats = out.stats;
    stats.memwrite_time += crate::util::us(t.elapsed());
    Ok((StoredDump { set, stats }, FrozenSource::new(frozen)))
}
