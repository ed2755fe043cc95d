//! Pre-copy (issue #6): pre-dumps of a running process, each an image set of kind `PreDump`
//! holding only the pages written since the previous one, then a final dump that copies under
//! the freeze only what was written since the last pre-dump and references the rest.
//!
//! - Round 1 starts the tracker, then copies every present page; later rounds copy the pages
//!   the tracker reports written. The tracker is re-armed *before* the copy, so a page written
//!   while it is copied is reported again next round; the final round runs frozen.
//! - With `uffd-wp` a pre-dump does not stop the process. Setting the tracker up does, briefly:
//!   the target creates the userfaultfd (injected syscall), haul takes it with `pidfd_getfd`
//!   and closes the target's copy (reported as the first iteration's `frozen_time`).
//! - Mappings are matched by identity (bounds, protection, sharing, offset, name): a new or
//!   changed mapping is copied whole; pages of gone mappings are forgotten; a page that is no
//!   longer present (freed with `MADV_DONTNEED`) is forgotten too, so the final dump's complete
//!   table only references pages present at the freeze.
//! - Tracking always ends: after the final dump, on any error or drop of [`Precopy`] (the
//!   tracker unregisters and closes its uffd), and when haul dies (its uffd closes with it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::freeze::Frozen;
use super::memory::{self, Run, VmaPlan, CHUNK};
use super::{DumpError, DumpOptions, FinalPlan, PageSink, StoredDump};
use crate::image::{is_zero_page, PageId, PageRef, SetKind, Vma, VmaKind, PAGE_SIZE};
use crate::report::{IterationReport, PredumpReport};
use crate::store::{SetWriter, Store};
use crate::sys::mem::{AlignedBuf, ProcMem};
use crate::sys::pagemap::{Pagemap, PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
use crate::sys::process::{self, nr};
use crate::sys::uffd::{Uffd, UFFD_USER_MODE_ONLY};
use crate::track::{hash::HashTracker, uffdwp::UffdWp, Area, Dirty, Tracker, TrackerKind};

const PAGE: u64 = PAGE_SIZE as u64;

/// Which tracker a pre-copy uses (`[predump] tracker`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrackerChoice {
    /// The best that works here: uffd-wp, else soft-dirty, else hash.
    #[default]
    Auto,
    Only(TrackerKind),
}

/// How to pre-dump (`[predump]` of a job).
#[derive(Clone, Debug, PartialEq)]
pub struct PrecopyOptions {
    /// Pause between two pre-dumps.
    pub interval: Duration,
    /// At most this many pre-dumps.
    pub max_iterations: u32,
    /// Converged: a pre-dump (after the first) wrote fewer bytes than this.
    pub stop_below: u64,
    /// Diverging: a pre-dump wrote this factor more pages than the one before.
    pub stop_growth: f64,
    pub tracker: TrackerChoice,
    /// zstd level of the sets (None: uncompressed).
    pub level: Option<i32>,
}

impl Default for PrecopyOptions {
    fn default() -> Self {
        PrecopyOptions {
            interval: Duration::from_secs(1),
            max_iterations: 8,
            stop_below: 256 * 1024,
            stop_growth: 1.1,
            tracker: TrackerChoice::Auto,
            level: Some(3),
        }
    }
}

/// Why pre-dumping stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Converged,
    Diverging,
    MaxIterations,
    Interrupted,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Converged => "converged",
            StopReason::Diverging => "diverging",
            StopReason::MaxIterations => "max_iterations",
            StopReason::Interrupted => "interrupted",
        }
    }
}

/// Identity of a mapping across rounds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ident {
    start: u64,
    end: u64,
    prot: u32,
    shared: bool,
    pgoff: u64,
    name: String,
}

/// Which pages of a mapping a dump holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pages {
    /// Every present or swapped page (anonymous memory).
    All,
    /// Only pages that are no longer the file's (private file mapping).
    NotFile,
}

/// A mapping as a pre-copy round sees it.
struct Region {
    ident: Ident,
    pages: Pages,
    /// Private and writable: the tracker follows it.
    tracked: bool,
    readable: bool,
}

impl Region {
    fn area(&self) -> Area {
        Area {
            start: self.ident.start,
            end: self.ident.end,
        }
    }

    fn npages(&self) -> u64 {
        (self.ident.end - self.ident.start) / PAGE
    }

    /// From a line of `/proc/PID/maps`; None for mappings a dump does not copy.
    fn from_map(m: &crate::proc::MapEntry) -> Option<Region> {
        let special = matches!(
            m.path.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
        );
        let file = m.inode != 0 && m.path.starts_with('/') && !super::check::is_shared_anon(m);
        let pages = match (special, file, m.shared) {
            (true, _, _) | (false, true, true) => return None,
            (false, true, false) => Pages::NotFile,
            (false, false, _) => Pages::All,
        };
        Some(Region {
            ident: Ident {
                start: m.start,
                end: m.end,
                prot: m.prot(),
                shared: m.shared,
                pgoff: m.offset,
                name: m.path.clone(),
            },
            pages,
            tracked: !m.shared && m.write,
            readable: m.read,
        })
    }

    /// From a VMA of the final dump's image (same rules as [`Region::from_map`]).
    fn from_vma(v: &Vma) -> Option<Region> {
        let pages = match (&v.kind, v.shared) {
            (VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall, _) => {
                return None
            }
            (VmaKind::File, true) => return None,
            (VmaKind::File, false) => Pages::NotFile,
            _ => Pages::All,
        };
        let write = v.prot & libc::PROT_WRITE as u32 != 0;
        Some(Region {
            ident: Ident {
                start: v.start,
                end: v.end,
                prot: v.prot,
                shared: v.shared,
                pgoff: v.pgoff,
                name: v.name.clone(),
            },
            pages,
            tracked: !v.shared && write,
            readable: v.prot & libc::PROT_READ as u32 != 0,
        })
    }
}

/// What the pre-dumps stored for the pages of one mapping: `refs[i]` for page i, None when
/// the page is not stored (never present, freed, or not read).
struct Known {
    ident: Ident,
    refs: Vec<Option<PageRef>>,
}

/// A pre-copy in progress on one process: see the module documentation.
pub struct Precopy<'s> {
    pid: i32,
    store: &'s Store,
    job: String,
    level: Option<i32>,
    tracker: Box<dyn Tracker>,
    known: BTreeMap<u64, Known>,
    /// The last committed pre-dump set.
    parent: Option<String>,
    /// The process was stopped this long to set the tracker up.
    setup_frozen_us: u64,
    report: PredumpReport,
    /// The final round's written pages (filled under the freeze).
    final_dirty: Dirty,
    /// How long the last tracking round (`start`/`collect`) took, in µs.
    last_scan_us: u64,
}

impl<'s> Precopy<'s> {
    /// Prepares a pre-copy of `pid` into `store` as job `job`: runs the dump's refusal checks
    /// (so a process the final dump would refuse is refused before any pre-dump) and sets up
    /// the tracker. Nothing is copied yet.
    pub fn start(
        pid: i32,
        store: &'s Store,
        job: &str,
        popts: &PrecopyOptions,
    ) -> Result<Precopy<'s>, DumpError> {
        super::check::precheck(pid)?;
        let (tracker, reason, setup_frozen_us) = choose(pid, popts.tracker)?;
        tracing::info!(pid, tracker = %tracker.kind(), %reason, setup_frozen_us, "pre-copy tracker");
        Ok(Precopy {
            pid,
            store,
            job: job.into(),
            level: popts.level,
            report: PredumpReport {
                tracker: tracker.kind().name().into(),
                tracker_reason: reason,
                ..Default::default()
            },
            tracker,
            known: BTreeMap::new(),
            parent: None,
            setup_frozen_us,
            final_dirty: Dirty::default(),
            last_scan_us: 0,
        })
    }

    /// The tracker in use.
    pub fn tracker(&self) -> TrackerKind {
        self.tracker.kind()
    }

    /// The figures so far.
    pub fn report(&self) -> &PredumpReport {
        &self.report
    }

    /// How long the last tracking round took (µs): arming it in the first pre-dump, the
    /// written-page scan in the others.
    pub fn last_scan_us(&self) -> u64 {
        self.last_scan_us
    }

    /// The last pre-dump set committed.
    pub fn last_set(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    /// Pre-dumps until a stop rule of `opts` holds (or `stop` is set), pausing
    /// `opts.interval` between two. Returns why it stopped (also in the report).
    pub fn run(
        &mut self,
        opts: &PrecopyOptions,
        stop: &AtomicBool,
    ) -> Result<StopReason, DumpError> {
        let reason = loop {
            if stop.load(Ordering::Relaxed) {
                break StopReason::Interrupted;
            }
            let it = self.iterate()?;
            let n = self.report.iterations.len();
            if n >= 2 && it.pages_written * PAGE < opts.stop_below {
                break StopReason::Converged;
            }
            if n >= 3 {
                let prev = self.report.iterations[n - 2].pages_written;
                if prev > 0 && it.pages_written as f64 > prev as f64 * opts.stop_growth {
                    break StopReason::Diverging;
                }
            }
            if n as u32 >= opts.max_iterations {
                break StopReason::MaxIterations;
            }
            let until = Instant::now() + opts.interval;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
            }
        };
        self.report.stop_reason = reason.name().into();
        Ok(reason)
    }

    /// One pre-dump: a committed `PreDump` set of the pages written since the last one (every
    /// present page the first time). The process is not stopped.
    pub fn iterate(&mut self) -> Result<IterationReport, DumpError> {
        let t0 = Instant::now();
        let index = self.report.iterations.len() as u32;
        let pid = self.pid;
        // The final dump would refuse a process tree: say so now rather than pre-dump on.
        let kids = crate::proc::children(pid)?;
        if !kids.is_empty() {
            return Err(DumpError::Unsupported(format!(
                "pid {pid} forked during pre-copy (children {kids:?}): process trees are not \
                 supported yet"
            )));
        }
        let maps = crate::proc::maps(pid)?;
        let regions: Vec<Region> = maps.iter().filter_map(Region::from_map).collect();
        let areas: Vec<Area> = regions
            .iter()
            .filter(|r| r.tracked)
            .map(Region::area)
            .collect();
        let t_scan = Instant::now();
        let dirty = if index == 0 {
            self.tracker.start(&areas)?;
            None
        } else {
            Some(self.tracker.collect(&areas)?)
        };
        self.last_scan_us = crate::util::us(t_scan.elapsed());
        // Forget mappings that are gone or changed.
        self.known.retain(|start, k| {
            regions
                .iter()
                .any(|r| r.ident.start == *start && r.ident == k.ident)
        });

        let mut writer = self.store.begin_set(
            &self.job,
            SetKind::PreDump,
            self.parent.as_deref(),
            self.level,
        )?;
        let pm = Pagemap::open(pid)?;
        let compare = self.tracker.compares_content();
        let mut copier = RoundCopier::new(pid)?;
        let mut scanned = 0;
        let mut written = 0;
        let mut to_copy = Vec::new();
        {
            for r in &regions {
                scanned += r.npages();
                let fresh = !self.known.contains_key(&r.ident.start);
                if fresh {
                    self.known.insert(
                        r.ident.start,
                        Known {
                            ident: r.ident.clone(),
                            refs: vec![None; r.npages() as usize],
                        },
                    );
                }
                let whole = vec![r.area()];
                let candidates = match &dirty {
                    None => whole,
                    Some(_) if fresh || r.ident.shared => whole,
                    Some(d) if r.tracked => d.within(r.ident.start, r.ident.end),
                    // Private and not writable: unchanged while its identity is.
                    Some(_) => Vec::new(),
                };
                if candidates.is_empty() {
                    continue;
                }
                let resident: Vec<Area> =
                    memory::resident_regions(&pm, r.ident.start, r.ident.end)?
                        .into_iter()
                        .filter(|g| keep(r.pages, g.categories))
                        .map(|g| Area {
                            start: g.start,
                            end: g.end,
                        })
                        .collect();
                let copy = intersect(&candidates, &resident);
                let Some(known) = self.known.get_mut(&r.ident.start) else {
                    return Err(DumpError::Internal("pre-copy lost a mapping".into()));
                };
                // Candidates that are not present any more are forgotten (not resurrected).
                for c in &candidates {
                    for a in (c.start..c.end).step_by(PAGE_SIZE) {
                        let i = ((a - r.ident.start) / PAGE) as usize;
                        if !in_sorted(&copy, a) {
                            if let Some(slot) = known.refs.get_mut(i) {
                                *slot = None;
                            }
                        }
                    }
                }
                to_copy.extend(copy.into_iter().map(|c| Run {
                    addr: c.start,
                    pages: c.pages() as usize,
                    readable: r.readable,
                    file: r.pages == Pages::NotFile,
                }));
            }
        }
        for run in to_copy {
            written += copier.add(run, &self.known, compare, &mut writer)?;
        }
        written += copier.flush(&self.known, compare, &mut writer)?;
        let set = writer.commit(None)?;
        for (addr, r) in set.pages.iter() {
            if let Some((_, k)) = self.known.range_mut(..=addr).next_back() {
                let i = ((addr - k.ident.start) / PAGE) as usize;
                if let Some(slot) = k.refs.get_mut(i) {
                    *slot = Some(r);
                }
            }
        }
        let it = IterationReport {
            index,
            set: set.id.clone(),
            duration_us: crate::util::us(t0.elapsed()),
            frozen_time: if index == 0 { self.setup_frozen_us } else { 0 },
            pages_scanned: scanned,
            pages_written: written,
            bytes_raw: written * PAGE,
            bytes_stored: set.figures.bytes_stored,
            bytes_new: set.figures.bytes_new,
        };
        tracing::info!(pid, index, pages = written, set = %set.id, "pre-dump");
        self.parent = Some(set.id);
        self.report.iterations.push(it.clone());
        Ok(it)
    }

    /// The final dump after the pre-dumps: frozen, it copies only the pages written since the
    /// last pre-dump (every page with the hash tracker) and references the others, so the set
    /// (kind `Dump`, parent = the last pre-dump) has a complete page table. Tracking ends
    /// afterwards. Returns the set and the pre-copy figures.
    pub fn final_dump(
        self,
        opts: &DumpOptions,
    ) -> Result<(StoredDump, PredumpReport), crate::Error> {
        let opts = DumpOptions {
            lazy: false,
            ..opts.clone()
        };
        let pid = self.pid;
        let (mut d, report, kept) = self.final_dump_inner(&opts)?;
        // Killed only now that the set is committed (an error above thawed it).
        super::end_frozen(pid, kept, &mut d.stats)?;
        Ok((d, report))
    }

    /// [`Precopy::final_dump`] as a lazy final dump (`dump.lazy`): the pages written since the
    /// last pre-dump in private anonymous VMAs are recorded as `PageRef::Lazy` (the carried
    /// ones stay `Stored`), and the process is returned still frozen, to serve them.
    pub fn final_dump_lazy(
        self,
        opts: &DumpOptions,
    ) -> Result<(StoredDump, PredumpReport, super::FrozenSource), crate::Error> {
        let opts = DumpOptions {
            lazy: true,
            ..opts.clone()
        };
        let (d, report, frozen) = self.final_dump_inner(&opts)?;
        let frozen = frozen
            .ok_or_else(|| DumpError::Internal("the lazy final dump lost its source".into()))?;
        Ok((d, report, super::FrozenSource::new(frozen)))
    }

    fn final_dump_inner(
        mut self,
        opts: &DumpOptions,
    ) -> Result<(StoredDump, PredumpReport, Option<Frozen>), crate::Error> {
        let store = self.store;
        let mut writer =
            store.begin_set(&self.job, SetKind::Dump, self.parent.as_deref(), self.level)?;
        let (out, frozen) = super::dump_planned(self.pid, opts, &mut writer, Some(&mut self))?;
        let stop = self.tracker.stop();
        let t = Instant::now();
        let set = writer.commit(Some(out.process))?;
        let mut stats = out.stats;
        stats.memwrite_time += crate::util::us(t.elapsed());
        if let Err(e) = stop {
            // The dump is good; a process left behind with write protection is not harmed
            // (its first write to each page costs a fault), so this is only worth a warning.
            tracing::warn!(pid = self.pid, "ending tracking: {e}");
        }
        Ok((
            StoredDump { set, stats },
            std::mem::take(&mut self.report),
            frozen,
        ))
    }

    /// Ends tracking now (also done on drop): the process runs as before.
    pub fn stop_tracking(&mut self) -> Result<(), DumpError> {
        Ok(self.tracker.stop()?)
    }
}

impl FinalPlan for Precopy<'_> {
    fn prepare(&mut self, _pid: i32, vmas: &[Vma]) -> Result<(), DumpError> {
        let areas: Vec<Area> = vmas
            .iter()
            .filter_map(Region::from_vma)
            .filter(|r| r.tracked)
            .map(|r| r.area())
            .collect();
        let t = Instant::now();
        self.final_dirty = self.tracker.collect(&areas)?;
        self.last_scan_us = crate::util::us(t.elapsed());
        Ok(())
    }

    fn vma_plan(&self, vma: &Vma) -> Option<VmaPlan<'_>> {
        if self.tracker.compares_content() {
            return None;
        }
        let r = Region::from_vma(vma)?;
        let k = self.known.get(&vma.start).filter(|k| k.ident == r.ident)?;
        if r.ident.shared {
            return None;
        }
        let ranges = self.final_dirty.ranges();
        let dirty = if r.tracked {
            let a = ranges.partition_point(|d| d.end <= vma.start);
            let b = ranges.partition_point(|d| d.start < vma.end);
            &ranges[a..b.max(a)]
        } else {
            &[]
        };
        Some(VmaPlan {
            start: vma.start,
            known: &k.refs,
            dirty,
        })
    }

    fn carry(&mut self, carried: &[(u64, u64)], sink: &mut dyn PageSink) -> Result<u64, DumpError> {
        let mut n = 0;
        // A carried range may span adjacent mappings: look the mapping up again at its end.
        let mut k: Option<&Known> = None;
        for &(s, e) in carried {
            for a in (s..e).step_by(PAGE_SIZE) {
                if !k.is_some_and(|k| a >= k.ident.start && a < k.ident.end) {
                    k = self.known.range(..=a).next_back().map(|(_, k)| k);
                }
                match k.and_then(|k| lookup(k, a)) {
                    Some(r) => sink.add_ref(a, r)?,
                    None => {
                        return Err(DumpError::Internal(format!(
                            "carried page {a:#x} was never stored"
                        )))
                    }
                }
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Whether a page of `categories` belongs in a dump of a mapping holding `pages`.
fn keep(pages: Pages, c: u64) -> bool {
    match pages {
        Pages::All => true,
        Pages::NotFile => {
            c & PAGE_IS_SWAPPED != 0 || (c & PAGE_IS_PRESENT != 0 && c & PAGE_IS_FILE == 0)
        }
    }
}

/// The intersection of two sorted lists of disjoint ranges.
fn intersect(a: &[Area], b: &[Area]) -> Vec<Area> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let s = a[i].start.max(b[j].start);
        let e = a[i].end.min(b[j].end);
        if s < e {
            out.push(Area { start: s, end: e });
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn in_sorted(ranges: &[Area], a: u64) -> bool {
    let i = ranges.partition_point(|r| r.end <= a);
    ranges.get(i).is_some_and(|r| r.start <= a)
}

/// Copies the pages of a running process a chunk at a time into the set writer. With
/// `compare`, only pages whose content differs from what the pre-dumps stored are kept.
struct RoundCopier {
    pid: i32,
    buf: AlignedBuf,
    mem: Option<ProcMem>,
    runs: Vec<Run>,
    pages: usize,
}

impl RoundCopier {
    fn new(pid: i32) -> Result<RoundCopier, DumpError> {
        Ok(RoundCopier {
            pid,
            buf: AlignedBuf::new(CHUNK)?,
            mem: None,
            runs: Vec::new(),
            pages: 0,
        })
    }

    /// Queues `run`; returns the pages handed to the writer by the flushes it caused.
    fn add(
        &mut self,
        mut run: Run,
        known: &BTreeMap<u64, Known>,
        compare: bool,
        writer: &mut SetWriter<'_>,
    ) -> Result<u64, DumpError> {
        let cap = CHUNK / PAGE_SIZE;
        let mut sent = 0;
        while run.pages > 0 {
            let take = run.pages.min(cap - self.pages);
            self.runs.push(Run { pages: take, ..run });
            self.pages += take;
            run.addr += (take * PAGE_SIZE) as u64;
            run.pages -= take;
            if self.pages == cap {
                sent += self.flush(known, compare, writer)?;
            }
        }
        Ok(sent)
    }

    fn flush(
        &mut self,
        known: &BTreeMap<u64, Known>,
        compare: bool,
        writer: &mut SetWriter<'_>,
    ) -> Result<u64, DumpError> {
        self.flush_with(
            |addr| {
                if !compare {
                    return None;
                }
                let (_, k) = known.range(..=addr).next_back()?;
                lookup(k, addr)
            },
            writer,
        )
    }

    /// Reads the queued runs and hands the pages to the writer, leaving out those for which
    /// `previous(addr)` is the same content. A run the process unmapped meanwhile is skipped
    /// (its mapping is gone or new next round).
    fn flush_with(
        &mut self,
        previous: impl Fn(u64) -> Option<PageRef> + Sync,
        writer: &mut SetWriter<'_>,
    ) -> Result<u64, DumpError> {
        if self.pages == 0 {
            return Ok(0);
        }
        let runs = std::mem::take(&mut self.runs);
        let pages = std::mem::replace(&mut self.pages, 0);
        let dst = &mut self.buf.as_mut_slice()[..pages * PAGE_SIZE];
        let mut ok = vec![true; runs.len()];
        if memory::read_runs(self.pid, &mut self.mem, &runs, dst).is_err() {
            // Not frozen: a mapping may have gone since maps was read. Read run by run.
            let mut off = 0;
            for (i, r) in runs.iter().enumerate() {
                let len = r.pages * PAGE_SIZE;
                if memory::read_runs(self.pid, &mut self.mem, &[*r], &mut dst[off..off + len])
                    .is_err()
                {
                    tracing::debug!(
                        pid = self.pid,
                        addr = r.addr,
                        "pre-dump skips a run it could not read"
                    );
                    ok[i] = false;
                }
                off += len;
            }
        }
        let addrs: Vec<u64> = runs
            .iter()
            .zip(&ok)
            .flat_map(|(r, ok)| {
                (0..r.pages).map(move |i| (*ok).then_some(r.addr + (i * PAGE_SIZE) as u64))
            })
            .map(|a| a.unwrap_or(u64::MAX))
            .collect();
        let dst = &self.buf.as_slice()[..pages * PAGE_SIZE];
        let send: Vec<bool> = dst
            .par_chunks(PAGE_SIZE)
            .zip(addrs.par_iter())
            .map(|(page, &a)| {
                if a == u64::MAX {
                    return false;
                }
                match previous(a) {
                    None => true,
                    Some(prev) => {
                        let now = if is_zero_page(page) {
                            PageRef::Zero
                        } else {
                            PageRef::Stored(PageId::of(page))
                        };
                        now != prev
                    }
                }
            })
            .collect();
        let n = send.iter().filter(|s| **s).count();
        if n == 0 {
            return Ok(0);
        }
        let mut data = Vec::with_capacity(n * PAGE_SIZE);
        let mut out_addrs = Vec::with_capacity(n);
        for (i, (&a, &s)) in addrs.iter().zip(&send).enumerate() {
            if s {
                out_addrs.push(a);
                data.extend_from_slice(&dst[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
            }
        }
        writer.add_pages(&out_addrs, data)?;
        Ok(n as u64)
    }
}

fn lookup(k: &Known, addr: u64) -> Option<PageRef> {
    if addr < k.ident.start || addr >= k.ident.end {
        return None;
    }
    k.refs
        .get(((addr - k.ident.start) / PAGE) as usize)
        .copied()
        .flatten()
}

/// Picks the tracker: returns it, why, and how long the process was stopped to set it up (µs).
fn choose(pid: i32, choice: TrackerChoice) -> Result<(Box<dyn Tracker>, String, u64), DumpError> {
    let uffd_wp = || -> Result<(Box<dyn Tracker>, u64), DumpError> {
        let (uffd, us) = take_uffd(pid)?;
        Ok((Box::new(UffdWp::new(pid, uffd)?), us))
    };
    match choice {
        TrackerChoice::Only(TrackerKind::UffdWp) => {
            let (t, us) = uffd_wp()?;
            Ok((t, "asked for".into(), us))
        }
        TrackerChoice::Only(TrackerKind::Hash) => {
            Ok((Box::new(HashTracker::new()), "asked for".into(), 0))
        }
        TrackerChoice::Only(TrackerKind::SoftDirty) => Err(soft_dirty_refusal()),
        TrackerChoice::Auto => match uffd_wp() {
            Ok((t, us)) => Ok((
                t,
                "auto: async uffd write-protect with PAGEMAP_SCAN works here (no freeze per \
                 pre-dump, exact written pages)"
                    .into(),
                us,
            )),
            // A process that is gone or refused is not a reason to fall back.
            Err(e @ (DumpError::Gone { .. } | DumpError::Refused(_))) => Err(e),
            Err(e) => {
                let sd = match crate::track::probe_soft_dirty() {
                    Ok(()) => "soft-dirty is not implemented yet".to_string(),
                    Err(r) => format!("soft-dirty: {r}"),
                };
                Ok((
                    Box::new(HashTracker::new()),
                    format!(
                        "auto: uffd-wp unavailable ({e}); {sd}; hash compares page contents \
                         (reads every page each round)"
                    ),
                    0,
                ))
            }
        },
    }
}

fn soft_dirty_refusal() -> DumpError {
    match crate::track::probe_soft_dirty() {
        Ok(()) => crate::track::TrackError::Unsupported {
            tracker: TrackerKind::SoftDirty,
            reason: "this kernel has soft-dirty bits, but haul's soft-dirty tracker is not \
                     implemented yet (use uffd-wp or hash)"
                .into(),
        },
        Err(r) => crate::track::TrackError::SoftDirty(r),
    }
    .into()
}

/// Makes `pid` create a userfaultfd (injected `userfaultfd(O_CLOEXEC|O_NONBLOCK)`, with
/// `UFFD_USER_MODE_ONLY` for a non-root target or when the plain call is refused), takes it
/// with `pidfd_getfd` and closes the target's copy. The process is stopped meanwhile; returns
/// the uffd and how long it was stopped (µs). On any error the process is resumed as it was.
fn take_uffd(pid: i32) -> Result<(Uffd, u64), DumpError> {
    let root = crate::proc::status(pid)?.uid[1] == 0;
    let base = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let t = Instant::now();
    let mut frozen = Frozen::seize_all(pid)?;
    let r = (|| -> Result<Uffd, DumpError> {
        let inj = frozen.injector()?;
        let mut flags = base | if root { 0 } else { UFFD_USER_MODE_ONLY as u64 };
        let mut fd = inj.call(nr::USERFAULTFD, [flags, 0, 0, 0, 0, 0])?;
        if fd == -(libc::EPERM as i64) && root {
            flags |= UFFD_USER_MODE_ONLY as u64;
            fd = inj.call(nr::USERFAULTFD, [flags, 0, 0, 0, 0, 0])?;
        }
        if (-4095..0).contains(&fd) {
            return Err(crate::track::TrackError::Unsupported {
                tracker: TrackerKind::UffdWp,
                reason: format!(
                    "injected userfaultfd({flags:#x}) in pid {pid} failed: {}",
                    std::io::Error::from_raw_os_error((-fd) as i32)
                ),
            }
            .into());
        }
        let got = process::pidfd_open(pid).and_then(|p| process::pidfd_getfd(&p, fd as i32));
        // Close the target's copy whatever happened: only haul's copy may keep tracking alive.
        let closed = inj.call_ok(
            nr::CLOSE,
            [fd as u64, 0, 0, 0, 0, 0],
            "close of the target's userfaultfd",
        );
        let got = got?;
        closed?;
        Ok(Uffd::from_owned(got))
    })();
    let thawed = frozen.thaw();
    let us = crate::util::us(t.elapsed());
    let uffd = r?;
    thawed?;
    Ok((uffd, us))
}
