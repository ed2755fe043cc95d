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

mod copier;
mod region;
mod tracking;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::memory::{self, Run, VmaPlan};
use super::tree::FrozenTree;
use super::{DumpError, DumpOptions, FinalPlan, PageSink, StoredDump};
use crate::image::{SetKind, Vma, PAGE_SIZE};
use crate::report::{IterationReport, PredumpReport};
use crate::store::Store;
use crate::sys::pagemap::Pagemap;
use crate::track::{Area, Dirty, Tracker, TrackerKind};
use copier::RoundCopier;
use region::{in_sorted, intersect, keep, lookup, Known, Pages, Region};
use tracking::choose;

/// The page size as an address step.
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
        // Pre-copy tracks one process: a tree is refused before anything is touched.
        let pids = super::check::precheck(pid)?;
        super::tree::refuse_tree(pid, &pids[1..], "pre-copy")?;
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
                "pid {pid} forked during pre-copy (children {kids:?}): pre-copy of a process \
                 tree is not supported yet"
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
    pub fn final_dump(self, opts: &DumpOptions) -> Result<(StoredDump, PredumpReport), DumpError> {
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
    ) -> Result<(StoredDump, PredumpReport, super::FrozenSource), DumpError> {
        let opts = DumpOptions {
            lazy: true,
            ..opts.clone()
        };
        let (d, report, frozen) = self.final_dump_inner(&opts)?;
        let frozen = frozen
            .ok_or_else(|| DumpError::Internal("the lazy final dump lost its source".into()))?
            .into_root()?;
        Ok((d, report, super::FrozenSource::new(frozen)))
    }

    fn final_dump_inner(
        mut self,
        opts: &DumpOptions,
    ) -> Result<(StoredDump, PredumpReport, Option<FrozenTree>), DumpError> {
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
