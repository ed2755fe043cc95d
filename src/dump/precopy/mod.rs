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
//! - A process tree (issue #13): every living process of it has its own tracker, and its pages
//!   go to its own page space of each set (its index in tree order). The tree must keep its
//!   processes: one that forks or exits during pre-copy (or before the final freeze) fails the
//!   pre-copy naming that process; every process is left running and untracked.

mod copier;
mod member;
mod region;
mod tracking;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::tree::FrozenTree;
use super::{DumpError, DumpOptions, FinalPlan, PageSink, StoredDump, TreePlan};
use crate::image::{page_key, split_key, PageRef, SetKind, Vma, PAGE_SIZE};
use crate::report::{IterationReport, PredumpReport};
use crate::store::Store;
use crate::track::TrackerKind;
use member::Member;
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

/// A pre-copy in progress on a process tree: see the module documentation.
pub struct Precopy<'s> {
    /// The root of the tree.
    pid: i32,
    store: &'s Store,
    job: String,
    level: Option<i32>,
    /// Every living process of the tree, tree order (root first): the index is the space.
    members: Vec<Member>,
    /// The last committed pre-dump set.
    parent: Option<String>,
    /// What the committed pre-dumps stored, with each page's cost: the next set's figures
    /// look their carried pages up here ([`crate::store::SetWriter::know_costs`]).
    costs: Option<std::sync::Arc<crate::store::PageCosts>>,
    /// The longest a process was stopped to set its tracker up.
    setup_frozen_us: u64,
    report: PredumpReport,
    /// How long the last tracking round (`start`/`collect`) took, in µs (every process).
    last_scan_us: u64,
}

impl<'s> Precopy<'s> {
    /// Prepares a pre-copy of the tree rooted at `pid` into `store` as job `job`: runs the
    /// dump's refusal checks (so a tree the final dump would refuse is refused before any
    /// pre-dump) and sets up a tracker for every process of it (the root's choice, then the
    /// same kind for the others). Nothing is copied yet. Any error ends the tracking of those
    /// already set up.
    pub fn start(
        pid: i32,
        store: &'s Store,
        job: &str,
        popts: &PrecopyOptions,
    ) -> Result<Precopy<'s>, DumpError> {
        // A pre-dump loses nothing (the process goes on): what only the final dump would drop
        // is its check's to refuse.
        let policy = super::check::CheckPolicy {
            tcp_pending: crate::job::TcpPending::Drop,
        };
        let snap = super::check::precheck_snapshot(pid, policy)?;
        let living: Vec<&crate::proc::TreeMember> = snap.members.iter().map(|(m, _)| m).collect();
        if living.len() > u16::MAX as usize {
            return Err(DumpError::Refused(format!(
                "the tree of pid {pid} has {} processes: at most {} fit in an image set",
                living.len(),
                u16::MAX
            )));
        }
        let mut members: Vec<Member> = Vec::with_capacity(living.len());
        let mut kind = popts.tracker;
        let mut reason = String::new();
        let mut setup_frozen_us = 0;
        for (space, m) in living.into_iter().enumerate() {
            let (tracker, why, us) = choose(m.pid, kind).map_err(|e| {
                if m.pid == pid {
                    e
                } else {
                    super::tree::member_err(pid, m, e)
                }
            })?;
            if space == 0 {
                reason = why;
                kind = TrackerChoice::Only(tracker.kind());
            }
            setup_frozen_us = setup_frozen_us.max(us);
            members.push(Member::new(m, space as u16, tracker));
        }
        let root_kind = members
            .first()
            .map(|m| m.tracker.kind())
            .ok_or_else(|| DumpError::Internal("pre-copy found no process".into()))?;
        tracing::info!(
            pid,
            processes = members.len(),
            tracker = %root_kind,
            %reason,
            setup_frozen_us,
            "pre-copy tracker"
        );
        Ok(Precopy {
            pid,
            store,
            job: job.into(),
            level: popts.level,
            report: PredumpReport {
                tracker: root_kind.name().into(),
                tracker_reason: reason,
                ..Default::default()
            },
            members,
            parent: None,
            costs: None,
            setup_frozen_us,
            last_scan_us: 0,
        })
    }

    /// Fails, naming the process, if a process joined or left the tree since the pre-copy
    /// started (its tracking would not cover the final dump).
    fn same_tree(&self, now: &[crate::proc::TreeMember]) -> Result<(), DumpError> {
        let tracked: Vec<(i32, &str)> = self
            .members
            .iter()
            .map(|m| (m.pid, m.comm.as_str()))
            .collect();
        match member::changed(self.pid, &tracked, now) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The tracker in use (the same kind for every process).
    pub fn tracker(&self) -> TrackerKind {
        self.members
            .first()
            .map(|m| m.tracker.kind())
            .unwrap_or(TrackerKind::Hash)
    }

    /// How many processes the pre-copy tracks.
    pub fn processes(&self) -> usize {
        self.members.len()
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
        self.run_with(opts, stop, &mut |_| {})
    }

    /// [`Precopy::run`], calling `done` with each pre-dump once it is committed (progress).
    pub fn run_with(
        &mut self,
        opts: &PrecopyOptions,
        stop: &AtomicBool,
        done: &mut dyn FnMut(&IterationReport),
    ) -> Result<StopReason, DumpError> {
        let reason = loop {
            if stop.load(Ordering::Relaxed) {
                break StopReason::Interrupted;
            }
            let it = self.iterate()?;
            done(&it);
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
    /// present page the first time), each process's in its own page space. The processes are
    /// not stopped. A tree whose processes changed since the start fails, naming the process.
    pub fn iterate(&mut self) -> Result<IterationReport, DumpError> {
        let t0 = Instant::now();
        let index = self.report.iterations.len() as u32;
        let pid = self.pid;
        self.same_tree(&crate::proc::tree(pid)?)?;
        let mut writer = self.store.begin_set(
            &self.job,
            SetKind::PreDump,
            self.parent.as_deref(),
            self.level,
        )?;
        let mut scanned = 0;
        let mut written = 0;
        let mut scan_us = 0;
        for m in &mut self.members {
            let (root, mpid, comm) = (pid, m.pid, m.comm.clone());
            let f = m.round(index, &mut writer).map_err(|e| {
                if mpid == root {
                    e
                } else {
                    DumpError::Member {
                        root,
                        pid: mpid,
                        comm,
                        source: Box::new(e),
                    }
                }
            })?;
            scanned += f.scanned;
            written += f.written;
            scan_us += f.scan_us;
        }
        self.last_scan_us = scan_us;
        if let Some(k) = &self.costs {
            writer.know_costs(k.clone());
        }
        let (set, costs) = writer.commit_costed(None)?;
        self.costs = Some(std::sync::Arc::new(match self.costs.take() {
            Some(k) => k.merged(&costs),
            None => costs,
        }));
        for (key, r) in set.pages.iter() {
            let (space, addr) = split_key(key);
            if let Some(m) = self.members.get_mut(space as usize) {
                m.stored(addr, r);
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
        let (mut d, report, kept, tracked) = self.final_dump_inner(&opts)?;
        // Killed only now that the set is committed (an error above thawed it). Its tracking
        // ends with it: nothing to unregister in a process that is gone, and nothing spent on it
        // while frozen. If the kill failed, dropping `tracked` ends the tracking of the living
        // process.
        let killed = super::end_frozen(pid, kept, &mut d.stats, &opts);
        if killed.is_ok() && opts.deaths_in_background {
            // A memory keeper holds the address space until its process's death is collected:
            // closing the userfaultfd before that would unregister every range of it, under
            // the lock the keeper's exit takes, and hold up the answer to the restore.
            super::tree::after_deaths(Box::new(tracked));
        } else {
            drop(tracked);
        }
        killed?;
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
        let (d, report, frozen, _) = self.final_dump_inner(&opts)?;
        let frozen = frozen
            .ok_or_else(|| DumpError::Internal("the lazy final dump lost its source".into()))?
            .into_root()?;
        Ok((d, report, super::FrozenSource::new(frozen)))
    }

    /// The final dump and its commit. A dump that kills the process keeps tracking it until
    /// the kill (the tracked members come back, to be dropped after it) unless the commit
    /// fails; any other ends the tracking before the commit, since its process runs on.
    #[allow(clippy::type_complexity)]
    fn final_dump_inner(
        mut self,
        opts: &DumpOptions,
    ) -> Result<(StoredDump, PredumpReport, Option<FrozenTree>, Vec<Member>), DumpError> {
        let store = self.store;
        let mut writer =
            store.begin_set(&self.job, SetKind::Dump, self.parent.as_deref(), self.level)?;
        if opts.around_page_cache() {
            writer.write_around_page_cache();
        }
        if let Some(k) = &self.costs {
            writer.know_costs(k.clone());
        }
        // Before the freeze: the set as it stands if nothing changes, counted.
        match store.chain_view(self.view_table(), self.costs.as_deref()) {
            Ok(Some(v)) => writer.know_view(std::sync::Arc::new(v)),
            Ok(None) => tracing::debug!("no view of the chain: the commit counts every page"),
            Err(e) => tracing::debug!("no view of the chain: {e}"),
        }
        let (out, frozen) = super::dump_planned(self.pid, opts, &mut writer, Some(&mut self))?;
        let to_kill = frozen.is_some() && !opts.lazy;
        if !to_kill {
            self.stop_tracking();
        }
        let t = Instant::now();
        let mut stats = out.stats;
        if frozen.is_some() {
            stats.marks.push(super::mark("commit"));
        }
        writer.set_tree(out.tree);
        let set = match writer.commit(Some(out.process)) {
            Ok(s) => s,
            Err(e) => {
                // The process runs on (dropping `frozen` thaws it): untracked first.
                self.stop_tracking();
                return Err(e.into());
            }
        };
        stats.memwrite_time += crate::util::us(t.elapsed());
        Ok((
            StoredDump { set, stats },
            std::mem::take(&mut self.report),
            frozen,
            std::mem::take(&mut self.members),
        ))
    }

    /// The table the final dump would write if no page changed since the last pre-dump: every
    /// page of the members' views, in key order (members in tree order, each by address).
    fn view_table(&self) -> Vec<(u64, PageRef)> {
        let views = || self.members.iter().flat_map(|m| m.known.values());
        let n = views().map(|k| k.refs.len()).sum();
        let mut t = Vec::with_capacity(n);
        for m in &self.members {
            for k in m.known.values() {
                let at = |i: usize| page_key(m.space, k.ident.start + i as u64 * PAGE);
                t.extend(
                    k.refs
                        .iter()
                        .enumerate()
                        .filter_map(|(i, r)| r.map(|r| (at(i), r))),
                );
            }
        }
        t
    }

    /// Ends the tracking of every member. A process left behind with write protection is not
    /// harmed (its first write to each page costs a fault), so a failed stop is only warned of.
    fn stop_tracking(&mut self) {
        for m in &mut self.members {
            if let Err(e) = m.tracker.stop() {
                tracing::warn!(pid = m.pid, "ending tracking: {e}");
            }
        }
    }
}

impl TreePlan for Precopy<'_> {
    fn check_tree(&self, members: &[crate::proc::TreeMember]) -> Result<(), DumpError> {
        self.same_tree(members)
    }

    /// Twice what the last pre-dump wrote (the final copy covers about one more interval).
    fn copy_estimate(&self) -> Option<u64> {
        let last = self.report.iterations.last()?;
        Some(last.pages_written.saturating_mul(2 * PAGE))
    }

    fn root_tracked_by_uffd(&self) -> bool {
        self.members
            .first()
            .is_some_and(|m| m.tracker.kind() == crate::track::TrackerKind::UffdWp)
    }

    fn prepare(&mut self, space: usize, vmas: &[Vma]) -> Result<(), DumpError> {
        let m = self
            .members
            .get_mut(space)
            .ok_or_else(|| DumpError::Internal(format!("pre-copy has no page space {space}")))?;
        let us = m.prepare(vmas)?;
        if space == 0 {
            self.last_scan_us = 0;
        }
        self.last_scan_us += us;
        Ok(())
    }

    fn space(&self, space: usize) -> Option<&dyn FinalPlan> {
        self.members.get(space).map(|m| m as &dyn FinalPlan)
    }

    fn carry(
        &mut self,
        space: usize,
        carried: &[(u64, u64)],
        sink: &mut dyn PageSink,
    ) -> Result<u64, DumpError> {
        match self.members.get(space) {
            Some(m) => m.carry(carried, sink),
            None if carried.is_empty() => Ok(0),
            None => Err(DumpError::Internal(format!(
                "pre-copy has no page space {space}"
            ))),
        }
    }
}
