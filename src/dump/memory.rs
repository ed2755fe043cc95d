//! Copying the target's memory (DESIGN.md §4 "Reading memory"): pagemap says which pages hold
//! something, `process_vm_readv` copies them into page-aligned buffers (≤ 1024 iovecs a call,
//! contiguous runs coalesced), `/proc/PID/mem` covers what it cannot read (`PROT_NONE`).

use super::{DumpError, DumpStats, PageSink};
use crate::image::{is_zero_page, Vma, VmaKind, PAGE_SIZE};
use crate::sys::mem::{process_vm_read, PageBuf, ProcMem, RemoteRange};
use crate::sys::pagemap::{
    PageRegion, Pagemap, ScanQuery, PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED,
};

/// Bytes per copy buffer (1024 pages: one `process_vm_readv` call at most per buffer).
pub(crate) const CHUNK: usize = 4 << 20;
const CHUNK_PAGES: usize = CHUNK / PAGE_SIZE;

/// Copy buffers: up to `limit` bytes of them hold pages until the thaw (pages that go to the
/// sink during the freeze are read into buffers the sink recycles, [`PageSink::buffer`]).
pub(crate) struct BufferPool {
    limit: u64,
    used: u64,
    free: Vec<PageBuf>,
}

/// A kept buffer, its pages faulted in now ([`PageBuf::try_zeroed`]) rather than under the
/// freeze; failing to get one is an error, not an abort.
fn kept_buffer() -> Result<PageBuf, DumpError> {
    PageBuf::try_zeroed(CHUNK)
        .map_err(|e| DumpError::Internal(format!("no memory for a {CHUNK} byte copy buffer: {e}")))
}

impl BufferPool {
    /// A pool of at most `limit` bytes, with about `estimate` bytes of it mapped right away
    /// (before the freeze, so the freeze does not pay for faulting buffers in).
    pub fn new(limit: u64, estimate: u64) -> BufferPool {
        let want = limit.min(estimate + CHUNK as u64) / CHUNK as u64;
        let mut free = Vec::new();
        for _ in 0..want {
            match kept_buffer() {
                Ok(b) => free.push(b),
                Err(_) => break,
            }
        }
        BufferPool {
            limit,
            used: 0,
            free,
        }
    }

    /// A buffer to keep until the thaw, if the limit allows one more.
    fn take_buffered(&mut self) -> Result<Option<PageBuf>, DumpError> {
        if self.used + CHUNK as u64 > self.limit {
            return Ok(None);
        }
        self.used += CHUNK as u64;
        match self.free.pop() {
            Some(b) => Ok(Some(b)),
            None => Ok(Some(kept_buffer()?)),
        }
    }
}

/// What a dump hands to the sink after the thaw, in address order: pages copied during the
/// freeze into kept buffers, and runs to read from the fork snapshot (`dump::snapshot`).
pub(crate) struct Buffered {
    items: Vec<Held>,
    /// The snapshot the [`Held::Later`] runs are read from.
    from: Option<i32>,
    /// The VMAs whose runs are read from the snapshot: the snapshot must have each, as a fork
    /// copies it ([`super::snapshot::copies`]).
    later_vmas: Vec<(u64, u64)>,
}

/// One chunk of [`Buffered`].
enum Held {
    /// Pages copied during the freeze: their addresses and the buffer holding them.
    Kept(Vec<u64>, PageBuf),
    /// Runs (one chunk's worth) to read from the snapshot after the thaw.
    Later(Vec<Run>),
}

/// One range to copy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub addr: u64,
    pub pages: usize,
    /// The VMA is readable: `process_vm_readv` works; else `/proc/PID/mem`.
    pub readable: bool,
    /// Of a private file mapping: a page that cannot be read (past the end of the file, say,
    /// which the pagemap may still list after uffd-wp marked it) is absent, the file's, not
    /// an error. Anywhere else an unreadable page fails the dump.
    pub file: bool,
}

/// How to copy one VMA in a final dump after pre-dumps: the pages known from the pre-dumps
/// (`known[i]` for page i of the VMA) that were not written since (`dirty`, sorted ranges) are
/// carried; the others are copied.
pub(crate) struct VmaPlan<'a> {
    pub start: u64,
    pub known: &'a [Option<crate::image::PageRef>],
    pub dirty: &'a [crate::track::Area],
}

impl VmaPlan<'_> {
    /// Splits `[addr, addr + pages)` into (start, pages, copy?) runs, in order. `cursor` is an
    /// index into `dirty` that only moves forward (addresses come in increasing order).
    fn split(&self, addr: u64, pages: u64, cursor: &mut usize, out: &mut Vec<(u64, u64, bool)>) {
        out.clear();
        for i in 0..pages {
            let a = addr + i * PAGE_SIZE as u64;
            while *cursor < self.dirty.len() && self.dirty[*cursor].end <= a {
                *cursor += 1;
            }
            let written = self.dirty.get(*cursor).is_some_and(|d| d.start <= a);
            let idx = ((a - self.start) / PAGE_SIZE as u64) as usize;
            let known = self.known.get(idx).is_some_and(|k| k.is_some());
            let copy = written || !known;
            match out.last_mut() {
                Some(l) if l.2 == copy => l.1 += 1,
                _ => out.push((a, 1, copy)),
            }
        }
    }
}

/// Copies the memory of every dumpable VMA: see the module documentation. With `snapshot` (a
/// fork of `pid` made under the freeze), the pages of the VMAs a fork copies are only listed,
/// to be read from it after the thaw ([`write_buffered`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_memory(
    pid: i32,
    snapshot: Option<i32>,
    vmas: &[Vma],
    pool: &mut BufferPool,
    sink: &mut dyn PageSink,
    stats: &mut DumpStats,
    plan: Option<&dyn super::FinalPlan>,
    carried: &mut Vec<(u64, u64)>,
) -> Result<Buffered, DumpError> {
    let pm = Pagemap::open(pid)?;
    let mut split = Vec::new();
    let mut scan_time = std::time::Duration::ZERO;
    let mut copier = Copier {
        pid,
        mem: None,
        runs: Vec::new(),
        pages: 0,
        buffered: Buffered {
            items: Vec::new(),
            from: snapshot,
            later_vmas: Vec::new(),
        },
        pending: Vec::new(),
        later: false,
    };
    for vma in vmas {
        // A mapping shared with an earlier process of the tree: its pages are stored once,
        // with that process (pre-copy, whose regions follow the same rule, dumps one process
        // only, so it never sees one).
        if vma.shared_with.is_some() {
            continue;
        }
        let keep: fn(u64) -> bool = match (&vma.kind, vma.shared) {
            (VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall, _) => {
                continue
            }
            // The file holds the pages of a shared file mapping (a memfd's are stored with
            // the file, `fdkinds::stored`); a SysV segment's are stored with the segment
            // (`share::sysv`).
            (VmaKind::File | VmaKind::Memfd, true) | (VmaKind::SysvShm, _) => continue,
            // Private file mapping: only pages that are no longer the file's (copied on write),
            // which includes swapped ones (file pages are dropped, never swapped).
            (VmaKind::File | VmaKind::Memfd, false) => {
                |c| c & PAGE_IS_SWAPPED != 0 || (c & PAGE_IS_PRESENT != 0 && c & PAGE_IS_FILE == 0)
            }
            // Anonymous memory, private or shared: every page present or swapped.
            _ => |_| true,
        };
        stats.pages_scanned += vma.pages();
        let later = snapshot.is_some() && super::snapshot::copies(vma);
        copier.read_later(later, pool, sink, stats)?;
        if later {
            copier.buffered.later_vmas.push((vma.start, vma.end));
        }
        let readable = vma.prot & libc::PROT_READ as u32 != 0;
        // Only a private file mapping tells its pages copied on write from the file's.
        let file_pages = matches!(vma.kind, VmaKind::File | VmaKind::Memfd);
        let t = std::time::Instant::now();
        let regions = match vma.kind {
            // A shared object's pages are its own, not only those in this page table.
            VmaKind::SharedAnon | VmaKind::DeletedShm => super::share::object_regions(pid, vma)?,
            _ => resident_regions(&pm, vma.start, vma.end, file_pages)?,
        };
        scan_time += t.elapsed();
        let vplan = plan.and_then(|p| p.vma_plan(vma));
        let mut cursor = 0;
        for r in regions {
            if keep(r.categories) && vplan.is_some() {
                if let Some(vp) = &vplan {
                    vp.split(r.start, r.pages(), &mut cursor, &mut split);
                }
                for &(addr, pages, copy) in &split {
                    if copy {
                        copier.add(
                            Run {
                                addr,
                                pages: pages as usize,
                                readable,
                                file: matches!(vma.kind, VmaKind::File | VmaKind::Memfd),
                            },
                            pool,
                            sink,
                            stats,
                        )?;
                    } else {
                        match carried.last_mut() {
                            Some(l) if l.1 == addr => l.1 += pages * PAGE_SIZE as u64,
                            _ => carried.push((addr, addr + pages * PAGE_SIZE as u64)),
                        }
                    }
                }
            } else if keep(r.categories) {
                copier.add(
                    Run {
                        addr: r.start,
                        pages: r.pages() as usize,
                        readable,
                        file: matches!(vma.kind, VmaKind::File | VmaKind::Memfd),
                    },
                    pool,
                    sink,
                    stats,
                )?;
            } else {
                stats.pages_file += r.pages();
            }
        }
    }
    copier.flush(pool, sink, stats)?;
    copier.read_pending(sink, stats)?;
    tracing::debug!(
        pid,
        scan_us = crate::util::us(scan_time),
        "pagemap scan of every VMA"
    );
    Ok(copier.buffered)
}

/// Mappings up to this size whose file pages must be told apart are classified from their
/// pagemap entries (8 bytes a page), which is faster than `PAGEMAP_SCAN` asked for
/// `PAGE_IS_FILE` over resident memory (2.0 against 3.5 ms per 256 MiB here); larger ones,
/// often sparse reservations, by `PAGEMAP_SCAN`, which skips empty page tables.
const ENTRIES_UP_TO: u64 = 1 << 30;

/// Present or swapped pages of `[start, end)`, by category. `file`: whether their categories
/// must tell file pages apart (`PAGE_IS_FILE`, what a private file mapping needs). Without it,
/// `PAGEMAP_SCAN` for presence alone walks a GiB of present pages in ~3.4 ms here, against
/// ~13 ms for its pagemap entries: a final dump after pre-copy does this walk frozen.
pub(crate) fn resident_regions(
    pm: &Pagemap,
    start: u64,
    end: u64,
    file: bool,
) -> Result<Vec<PageRegion>, DumpError> {
    let query = match file {
        false => Some(ScanQuery::present_or_swapped(start, end)),
        true if end - start > ENTRIES_UP_TO => Some(ScanQuery::resident(start, end)),
        true => None,
    };
    if let Some(query) = query {
        match pm.scan(&query) {
            Ok(r) => return Ok(r),
            // Kernels before 6.7 have no PAGEMAP_SCAN: read the entries.
            Err(e)
                if matches!(
                    e.errno(),
                    Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut out: Vec<PageRegion> = Vec::new();
    let mut at = start;
    while at < end {
        let stop = end.min(at + ENTRIES_UP_TO);
        for (i, e) in pm.entries(at, stop)?.into_iter().enumerate() {
            let mut c = 0;
            if e.present() {
                c |= PAGE_IS_PRESENT;
            }
            if e.swapped() {
                c |= PAGE_IS_SWAPPED;
            }
            if c == 0 {
                continue;
            }
            if e.file_or_shared() {
                c |= PAGE_IS_FILE;
            }
            let a = at + (i * PAGE_SIZE) as u64;
            match out.last_mut() {
                Some(l) if l.end == a && l.categories == c => l.end += PAGE_SIZE as u64,
                _ => out.push(PageRegion {
                    start: a,
                    end: a + PAGE_SIZE as u64,
                    categories: c,
                }),
            }
        }
        at = stop;
    }
    Ok(out)
}

struct Copier {
    pid: i32,
    mem: Option<ProcMem>,
    /// Runs of the chunk being filled.
    runs: Vec<Run>,
    pages: usize,
    buffered: Buffered,
    /// Chunks given a kept buffer and not read yet: read together, on every core.
    pending: Vec<Pending>,
    /// The runs of the chunk being filled are to be read from the snapshot after the thaw.
    later: bool,
}

/// A chunk waiting to be read into its kept buffer.
struct Pending {
    runs: Vec<Run>,
    addrs: Vec<u64>,
    buf: PageBuf,
}

/// Kept chunks read at once, split over the cores: 16 chunks of 4 MiB. One thread copies
/// about 3.5 GB/s with `process_vm_readv` here, which made the copy of a big process most of
/// a checkpoint's freeze.
const PENDING_CHUNKS: usize = 16;

impl Copier {
    /// Makes the runs added next be read after the thaw from the snapshot (`later`), or now:
    /// the chunk being filled is flushed first if it was the other kind.
    fn read_later(
        &mut self,
        later: bool,
        pool: &mut BufferPool,
        sink: &mut dyn PageSink,
        stats: &mut DumpStats,
    ) -> Result<(), DumpError> {
        if later != self.later {
            self.flush(pool, sink, stats)?;
            self.later = later;
        }
        Ok(())
    }

    fn add(
        &mut self,
        mut run: Run,
        pool: &mut BufferPool,
        sink: &mut dyn PageSink,
        stats: &mut DumpStats,
    ) -> Result<(), DumpError> {
        while run.pages > 0 {
            let take = run.pages.min(CHUNK_PAGES - self.pages);
            self.runs.push(Run { pages: take, ..run });
            self.pages += take;
            run.addr += (take * PAGE_SIZE) as u64;
            run.pages -= take;
            if self.pages == CHUNK_PAGES {
                self.flush(pool, sink, stats)?;
            }
        }
        Ok(())
    }

    /// Copies the runs of the current chunk into a buffer: a kept one while the pool allows,
    /// else one of the sink's, whose pages go to the sink right away.
    fn flush(
        &mut self,
        pool: &mut BufferPool,
        sink: &mut dyn PageSink,
        stats: &mut DumpStats,
    ) -> Result<(), DumpError> {
        if self.pages == 0 {
            return Ok(());
        }
        let runs = std::mem::take(&mut self.runs);
        let pages = std::mem::replace(&mut self.pages, 0);
        if self.later {
            // The kept chunks before it first, so that pages reach the sink in address order.
            self.read_pending(sink, stats)?;
            self.buffered.items.push(Held::Later(runs));
            return Ok(());
        }
        let addrs = page_addrs(&runs);
        // Whole chunks stay in the buffer; a chunk with absent pages (see `Run::file`) goes to
        // the sink now, without them.
        let (addrs, data) = match pool.take_buffered()? {
            Some(buf) => {
                debug_assert_eq!(addrs.len(), pages);
                self.pending.push(Pending { runs, addrs, buf });
                if self.pending.len() >= PENDING_CHUNKS {
                    self.read_pending(sink, stats)?;
                }
                return Ok(());
            }
            None => {
                // The kept chunks first, so that pages reach the sink in address order.
                self.read_pending(sink, stats)?;
                // Read straight into a buffer the sink recycles: no copy of the chunk.
                let mut data = sink.buffer(pages * PAGE_SIZE);
                match read_runs_lenient(self.pid, &mut self.mem, &runs, &mut data)? {
                    None => (addrs, data),
                    Some(ok) => present_only(&addrs, &data, &ok),
                }
            }
        };
        to_sink(addrs, data, pages, sink, stats)
    }

    /// Reads every pending chunk into its buffer, the chunks split over rayon's threads (each
    /// with a `/proc/PID/mem` of its own for unreadable mappings), then keeps them in order. A
    /// chunk with absent pages (see `Run::file`) goes to the sink now, without them.
    fn read_pending(
        &mut self,
        sink: &mut dyn PageSink,
        stats: &mut DumpStats,
    ) -> Result<(), DumpError> {
        use rayon::prelude::*;
        let mut pending = std::mem::take(&mut self.pending);
        let pid = self.pid;
        let read: Vec<Result<Option<Vec<bool>>, DumpError>> = pending
            .par_iter_mut()
            .map(|p| {
                let len = p.addrs.len() * PAGE_SIZE;
                read_runs_lenient(pid, &mut None, &p.runs, &mut p.buf.as_mut_slice()[..len])
            })
            .collect();
        for (p, r) in pending.into_iter().zip(read) {
            match r? {
                None => self.buffered.items.push(Held::Kept(p.addrs, p.buf)),
                Some(ok) => {
                    let pages = p.addrs.len();
                    let (addrs, data) =
                        present_only(&p.addrs, &p.buf.as_slice()[..pages * PAGE_SIZE], &ok);
                    to_sink(addrs, data, pages, sink, stats)?;
                }
            }
        }
        Ok(())
    }
}

/// The address of every page of `runs`, in order.
fn page_addrs(runs: &[Run]) -> Vec<u64> {
    runs.iter()
        .flat_map(|r| (0..r.pages).map(move |i| r.addr + (i * PAGE_SIZE) as u64))
        .collect()
}

/// Hands `addrs` (with their `data`, of a chunk of `pages` pages) to the sink during the freeze.
fn to_sink(
    addrs: Vec<u64>,
    data: PageBuf,
    pages: usize,
    sink: &mut dyn PageSink,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    stats.pages_zero += data
        .chunks_exact(PAGE_SIZE)
        .filter(|p| is_zero_page(p))
        .count() as u64;
    stats.pages_written += addrs.len() as u64;
    stats.pages_during_freeze += addrs.len() as u64;
    stats.pages_file += (pages - addrs.len()) as u64;
    if !addrs.is_empty() {
        sink.add_pages(&addrs, data)?;
    }
    Ok(())
}

/// The pages of `addrs` (and `data`, a page each) whose `ok` is true.
fn present_only(addrs: &[u64], data: &[u8], ok: &[bool]) -> (Vec<u64>, PageBuf) {
    let mut a = Vec::with_capacity(addrs.len());
    let mut d = PageBuf::with_capacity(data.len());
    for ((addr, page), ok) in addrs.iter().zip(data.chunks_exact(PAGE_SIZE)).zip(ok) {
        if *ok {
            a.push(*addr);
            d.extend_from_slice(page);
        }
    }
    (a, d)
}

/// [`read_runs`], where a page of a [`Run::file`] run that cannot be read is absent rather than
/// an error: `None` when every page was read, else which ones were (per page of `runs`).
pub(crate) fn read_runs_lenient(
    pid: i32,
    mem: &mut Option<ProcMem>,
    runs: &[Run],
    dst: &mut [u8],
) -> Result<Option<Vec<bool>>, DumpError> {
    let first = match read_runs(pid, mem, runs, dst) {
        Ok(()) => return Ok(None),
        Err(e) => e,
    };
    if !runs.iter().any(|r| r.file) {
        return Err(first);
    }
    let mut ok = Vec::with_capacity(dst.len() / PAGE_SIZE);
    let mut off = 0;
    for r in runs {
        let len = r.pages * PAGE_SIZE;
        if !r.file {
            read_runs(pid, mem, &[*r], &mut dst[off..off + len])?;
            ok.extend(std::iter::repeat_n(true, r.pages));
        } else {
            for i in 0..r.pages {
                let page = Run {
                    addr: r.addr + (i * PAGE_SIZE) as u64,
                    pages: 1,
                    ..*r
                };
                let at = off + i * PAGE_SIZE;
                match read_runs(pid, mem, &[page], &mut dst[at..at + PAGE_SIZE]) {
                    Ok(()) => ok.push(true),
                    Err(e) if unreadable(&e) => ok.push(false),
                    Err(e) => return Err(e),
                }
            }
        }
        off += len;
    }
    Ok(Some(ok))
}

/// EFAULT (process_vm_readv) or EIO (/proc/PID/mem): the page cannot be faulted in.
fn unreadable(e: &DumpError) -> bool {
    let errno = match e {
        DumpError::Sys(s) => s.errno(),
        _ => None,
    };
    matches!(errno, Some(libc::EFAULT) | Some(libc::EIO))
}

/// Reads `runs` back to back into `dst`: readable runs by `process_vm_readv` (batched), the
/// rest, and whatever it could not read, through `/proc/PID/mem`.
pub(crate) fn read_runs(
    pid: i32,
    mem: &mut Option<ProcMem>,
    runs: &[Run],
    dst: &mut [u8],
) -> Result<(), DumpError> {
    let mut off = 0usize;
    let mut i = 0;
    while i < runs.len() {
        if runs[i].readable {
            let j = runs[i..]
                .iter()
                .position(|r| !r.readable)
                .map_or(runs.len(), |p| i + p);
            let ranges: Vec<RemoteRange> = runs[i..j]
                .iter()
                .map(|r| RemoteRange {
                    addr: r.addr,
                    len: r.pages * PAGE_SIZE,
                })
                .collect();
            let want: usize = ranges.iter().map(|r| r.len).sum();
            let got = process_vm_read(pid, &mut dst[off..off + want], &ranges)?;
            if got < want {
                // Fall back for the rest: the copy stopped `got` bytes in; read on from there.
                let mut pos = off;
                let mut copied = got;
                for r in &runs[i..j] {
                    let len = r.pages * PAGE_SIZE;
                    if copied < len {
                        proc_mem(pid, mem)?
                            .read_at(r.addr + copied as u64, &mut dst[pos + copied..pos + len])?;
                    }
                    copied = copied.saturating_sub(len);
                    pos += len;
                }
            }
            off += want;
            i = j;
        } else {
            let len = runs[i].pages * PAGE_SIZE;
            proc_mem(pid, mem)?.read_at(runs[i].addr, &mut dst[off..off + len])?;
            off += len;
            i += 1;
        }
    }
    Ok(())
}

fn proc_mem(pid: i32, mem: &mut Option<ProcMem>) -> Result<&ProcMem, DumpError> {
    if mem.is_none() {
        *mem = Some(ProcMem::open(pid)?);
    }
    mem.as_ref()
        .ok_or_else(|| DumpError::Internal("/proc/PID/mem not open".into()))
}

/// Hands the pages held during the freeze to the sink (after the thaw), and those to read from
/// the snapshot, read now into the sink's buffers. The snapshot's mappings are checked on a
/// thread of their own meanwhile (its smaps walks its page tables: ~15 ms per GiB): a VMA it
/// does not have as a fork copies it fails the dump.
pub(crate) fn write_buffered(
    b: Buffered,
    sink: &mut dyn PageSink,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let Buffered {
        items,
        from,
        later_vmas,
    } = b;
    let Some(snapshot) = from.filter(|_| !later_vmas.is_empty()) else {
        return write_items(items, None, sink, stats);
    };
    std::thread::scope(|scope| {
        let checked = std::thread::Builder::new()
            .name("haul-snapshot".into())
            .spawn_scoped(scope, || {
                super::snapshot::check_copied(snapshot, &later_vmas)
            });
        let written = write_items(items, Some(snapshot), sink, stats);
        let checked = match checked {
            Ok(t) => t
                .join()
                .map_err(|_| DumpError::Internal("the snapshot's check panicked".into()))?,
            // No thread: checked here.
            Err(_) => super::snapshot::check_copied(snapshot, &later_vmas),
        };
        // A snapshot that lacks a mapping is the first thing to name: its reads are wrong too.
        checked.and(written)
    })
}

/// The items of [`write_buffered`], in order; `Later` ones are read from `snapshot`.
fn write_items(
    items: Vec<Held>,
    snapshot: Option<i32>,
    sink: &mut dyn PageSink,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let mut mem = None;
    for item in items {
        let (addrs, data) = match item {
            Held::Kept(addrs, mut data) => {
                // The buffer itself goes to the sink (which may recycle it): no copy.
                data.resize(addrs.len() * PAGE_SIZE);
                (addrs, data)
            }
            Held::Later(runs) => {
                let pid = snapshot.ok_or_else(|| {
                    DumpError::Internal("pages to read from a snapshot that is not there".into())
                })?;
                let addrs = page_addrs(&runs);
                let pages = addrs.len();
                // Through `/proc/PID/mem` only: `process_vm_readv` pins the pages it reads,
                // and the kernel first copies a page shared with the process (all of them, in
                // a fork) for a pin: 2.5–3.8 s per GiB here, against ~0.25 s.
                let runs: Vec<Run> = runs
                    .into_iter()
                    .map(|r| Run {
                        readable: false,
                        ..r
                    })
                    .collect();
                let mut data = sink.buffer(pages * PAGE_SIZE);
                let (addrs, data) = match read_runs_lenient(pid, &mut mem, &runs, &mut data)? {
                    None => (addrs, data),
                    Some(ok) => present_only(&addrs, &data, &ok),
                };
                stats.pages_file += (pages - addrs.len()) as u64;
                stats.pages_from_snapshot += addrs.len() as u64;
                (addrs, data)
            }
        };
        stats.pages_zero += data
            .chunks_exact(PAGE_SIZE)
            .filter(|p| is_zero_page(p))
            .count() as u64;
        stats.pages_written += addrs.len() as u64;
        if !addrs.is_empty() {
            sink.add_pages(&addrs, data)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over memory of this test's own with pages present and pages never touched, the scan
    /// for presence alone finds exactly the pages the pagemap entries say are present.
    #[test]
    fn the_presence_scan_finds_the_present_pages_the_entries_show() {
        // A fresh zeroed allocation this big is mapped untouched: its pages are not present.
        let mut v = vec![0u8; 600 * PAGE_SIZE];
        let base = (v.as_ptr() as usize).next_multiple_of(PAGE_SIZE) - v.as_ptr() as usize;
        for (i, p) in v[base..].chunks_mut(PAGE_SIZE).enumerate().take(512) {
            if i % 7 < 3 || (100..300).contains(&i) {
                p[0] = 1;
            }
        }
        let start = v[base..].as_ptr() as u64;
        let end = start + 512 * PAGE_SIZE as u64;
        let pm = Pagemap::open(crate::sys::process::getpid()).expect("our pagemap");
        let present: Vec<u64> = pm
            .entries(start, end)
            .expect("entries")
            .iter()
            .enumerate()
            .filter(|(_, e)| e.present())
            .map(|(i, _)| start + (i * PAGE_SIZE) as u64)
            .collect();
        assert!(
            present.len() > 250 && present.len() < 512,
            "{}",
            present.len()
        );
        let scanned: Vec<u64> = resident_regions(&pm, start, end, false)
            .expect("scan")
            .iter()
            .inspect(|r| assert_eq!(r.categories, PAGE_IS_PRESENT, "{r:?}"))
            .flat_map(|r| (r.start..r.end).step_by(PAGE_SIZE))
            .collect();
        assert_eq!(scanned, present);
        std::hint::black_box(&v);
    }
}
