//! Checkpoint of a live process tree (issues #4, #13): refuse what cannot be restored, freeze
//! every thread of every process of the tree rooted at the job's process, capture each
//! process's state, link what they share, copy each one's memory into its own page space,
//! thaw (or kill), and hand the pages to a [`PageSink`].
//!
//! The processes are never harmed: from the first `PTRACE_SEIZE` on, a guard
//! ([`tree::FrozenTree`], one [`freeze::Frozen`] per process) owns the stopped threads;
//! whatever happens (an error, a panic, a process of the tree leaving it), dropping it restores
//! the registers haul changed, unmaps the scratch pages and detaches every thread of every
//! process, re-sending the signals that arrived meanwhile. A kill-mode dump kills them only once
//! the set is committed.

mod check;
mod fdkinds;
mod freeze;
mod keeper;
mod lazy;
mod memory;
mod netlock;
mod precopy;
mod seccomp;
mod share;
mod snapshot;
mod state;
mod to_store;
mod tree;

pub use lazy::{dump_to_store_lazy, FrozenSource, LiveReader};
pub use precopy::{Precopy, PrecopyOptions, StopReason, TrackerChoice};
pub use to_store::{dump_to_store, StoredDump};

pub use check::{precheck, socket_kind, CheckPolicy};

use crate::image::ProcessImage;
use crate::proc::ProcError;
use crate::sys::mem::PageBuf;
use crate::sys::SysError;
use std::fmt;
use std::time::Instant;

/// Errors of the `dump` module.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The process cannot be checkpointed (pid 1, haul itself, a zombie, ...).
    #[error("{0}")]
    Refused(String),
    /// The process uses something haul cannot restore yet; the message names it precisely,
    /// e.g. `pid 4242 fd 3: socket:[81723] (TCP) is not supported yet`.
    #[error("{0}")]
    Unsupported(String),
    /// Several refusals at once (each a `Refused` or `Unsupported`): every reason the process
    /// cannot be checkpointed, in the order the checks found them.
    #[error("pid {pid} cannot be checkpointed, for {} reasons:{}", reasons.len(), list_reasons(reasons))]
    Refusals { pid: i32, reasons: Vec<DumpError> },
    /// The process exited or was killed while being dumped.
    #[error("pid {pid} went away during {step}: {detail}")]
    Gone {
        pid: i32,
        step: Step,
        detail: String,
    },
    /// A step failed; the target was left running (or as it was).
    #[error("dump of pid {pid} failed at {step}: {source}")]
    At {
        pid: i32,
        step: Step,
        #[source]
        source: Box<DumpError>,
    },
    /// What went wrong with one process of a tree other than its root, naming it.
    #[error("pid {pid} ({comm}) in the tree of pid {root}: {source}")]
    Member {
        root: i32,
        pid: i32,
        comm: String,
        #[source]
        source: Box<DumpError>,
    },
    /// A failure injected on purpose by [`DumpOptions::fail_at`] (tests only).
    #[error("failure injected at step {0} (fail_at, test-only)")]
    Injected(Step),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// Dirty-page tracking failed (pre-copy).
    #[error(transparent)]
    Track(#[from] crate::track::TrackError),
    /// The store refused a pre-dump set or a page reference.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The network lock could not be taken (issue #15): the tree is thawed.
    #[error(transparent)]
    NetLock(#[from] crate::netlock::NetLockError),
    /// The fork snapshot of a checkpoint (`dump::snapshot`) does not hold a mapping as the
    /// process had it under the freeze: it was marked `MADV_DONTFORK` or `MADV_WIPEONFORK`
    /// after the checks read its flags. Nothing is committed; the process runs on.
    #[error(
        "the snapshot (pid {snapshot}) does not hold {start:#x}-{end:#x} as the process had \
         it under the freeze ({why}): the mapping changed during the checkpoint; nothing was \
         committed, and a new checkpoint copies it under the freeze"
    )]
    SnapshotChanged {
        snapshot: i32,
        start: u64,
        end: u64,
        why: &'static str,
    },
    /// A broken invariant of haul itself (a bug), never the target's doing.
    #[error("internal error: {0}")]
    Internal(String),
    /// The page sink refused pages.
    #[error("writing pages: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The reasons of [`DumpError::Refusals`], one per indented line.
fn list_reasons(reasons: &[DumpError]) -> String {
    reasons.iter().map(|r| format!("\n  {r}")).collect()
}

impl DumpError {
    /// Whether this is a refusal (the process cannot be checkpointed as it is), as opposed to
    /// a failure of the dump itself.
    pub fn is_refusal(&self) -> bool {
        match self {
            DumpError::Member { source, .. } => source.is_refusal(),
            e => matches!(
                e,
                DumpError::Refused(_) | DumpError::Unsupported(_) | DumpError::Refusals { .. }
            ),
        }
    }

    /// Each reason of a refusal, one message per reason (empty for other errors).
    pub fn reasons(&self) -> Vec<String> {
        match self {
            DumpError::Refused(m) | DumpError::Unsupported(m) => vec![m.clone()],
            DumpError::Refusals { reasons, .. } => {
                reasons.iter().flat_map(|r| r.reasons()).collect()
            }
            DumpError::At { source, .. } | DumpError::Member { source, .. } => source.reasons(),
            _ => Vec::new(),
        }
    }

    /// The step an error happened at, if known.
    pub fn step(&self) -> Option<Step> {
        match self {
            DumpError::At { step, .. } | DumpError::Gone { step, .. } => Some(*step),
            DumpError::Injected(s) => Some(*s),
            DumpError::Member { source, .. } => source.step(),
            _ => None,
        }
    }
}

/// Receives the pages copied from the target.
pub trait PageSink {
    /// Pages copied from the target; `addrs[i]` is the address of page i of `data`.
    fn add_pages(&mut self, addrs: &[u64], data: PageBuf) -> Result<(), DumpError>;

    /// A buffer of `len` bytes (content unspecified) for the next `add_pages`: a sink that
    /// gives its batches back once done with them recycles one, so that the copy writes into
    /// memory already faulted in rather than a fresh allocation it then copies over.
    fn buffer(&mut self, len: usize) -> PageBuf {
        PageBuf::zeroed(len)
    }

    /// A page carried without data from an earlier pre-dump (its content is already stored).
    /// Sinks that cannot carry references refuse.
    fn add_ref(&mut self, addr: u64, r: crate::image::PageRef) -> Result<(), DumpError> {
        let _ = r;
        Err(DumpError::Sink(
            format!("this sink cannot carry page {addr:#x} by reference").into(),
        ))
    }
}

/// A sink that keeps every page in memory (tests, small tools).
#[derive(Debug, Default)]
pub struct VecSink {
    /// (address, page content) in the order received.
    pub pages: Vec<(u64, Vec<u8>)>,
    /// Pages carried by reference (pre-copy), in the order received.
    pub refs: Vec<(u64, crate::image::PageRef)>,
}

impl PageSink for VecSink {
    fn add_pages(&mut self, addrs: &[u64], data: PageBuf) -> Result<(), DumpError> {
        for (i, a) in addrs.iter().enumerate() {
            let page = data
                .get(i * crate::image::PAGE_SIZE..(i + 1) * crate::image::PAGE_SIZE)
                .ok_or_else(|| {
                    DumpError::Sink(
                        format!("{} addresses for {} bytes", addrs.len(), data.len()).into(),
                    )
                })?;
            self.pages.push((*a, page.to_vec()));
        }
        Ok(())
    }

    fn add_ref(&mut self, addr: u64, r: crate::image::PageRef) -> Result<(), DumpError> {
        self.refs.push((addr, r));
        Ok(())
    }
}

/// The steps of a dump, in order. [`DumpOptions::fail_at`] makes one fail on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Refusals, before touching the process.
    Check,
    /// Seizing and stopping every thread.
    Seize,
    /// Registers, regsets, signal masks, rseq, robust lists.
    Regs,
    /// Mapping the scratch page in the target.
    Scratch,
    /// Signal dispositions (injected `rt_sigaction`), alternate stacks.
    Sigactions,
    /// Address space, files, credentials, limits.
    State,
    /// Copying memory.
    Memory,
    /// Detaching (or killing) the target.
    Resume,
    /// Handing the buffered pages to the sink after the thaw.
    Write,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::Check,
        Step::Seize,
        Step::Regs,
        Step::Scratch,
        Step::Sigactions,
        Step::State,
        Step::Memory,
        Step::Resume,
        Step::Write,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Check => "check",
            Step::Seize => "seize",
            Step::Regs => "regs",
            Step::Scratch => "scratch",
            Step::Sigactions => "sigactions",
            Step::State => "state",
            Step::Memory => "memory",
            Step::Resume => "resume",
            Step::Write => "write",
        }
    }

    /// Parses a step name (as [`Step::name`] prints it).
    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|x| x.name() == s.trim())
    }

    /// **Test-only switch.** Reads `HAUL_FAIL_AT=<step>` from the environment; the CLI feeds
    /// it into [`DumpOptions::fail_at`] so fault tests can make a dump fail at each step. This is
    /// the one place the variable is read; the library itself never looks at the environment.
    pub fn from_env() -> Option<Step> {
        std::env::var("HAUL_FAIL_AT")
            .ok()
            .and_then(|v| Step::parse(&v))
    }
}

/// **Test-only switch.** When the environment variable `var` names a file, writes `content`
/// to it and waits until the file is removed (at most a minute), so that a test can act while
/// the dump holds the target at that point: `HAUL_TEST_HOLD_LOCKED` (the network lock taken,
/// `content` its table) and `HAUL_TEST_HOLD_FROZEN` (every process of the tree frozen and
/// checked, `content` the root's pid). The one place these variables are read.
pub(crate) fn test_hold(var: &str, content: &str) {
    let Some(path) = std::env::var_os(var) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    if std::fs::write(&path, content).is_err() {
        return;
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while path.exists() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpOptions {
    /// true: detach and let the process go on (periodic checkpoint); false: kill it (SIGKILL)
    /// once its state is copied (migration).
    pub leave_running: bool,
    /// Bytes of memory for copied pages: up to this much is held in memory while the process
    /// is frozen and written to the sink after the thaw; beyond it, pages go to the sink
    /// during the freeze. Default 1 GiB. A dump that stops the process (neither
    /// `leave_running` nor `lazy`) buffers nothing: it stays frozen until its set is committed
    /// anyway, so its pages go to the sink as they are copied.
    pub buffer: u64,
    /// A dump that leaves the root running reads its private memory after the thaw from a
    /// fork of it made under the freeze, when it can (`dump::snapshot`): the freeze then
    /// copies only what a fork does not, and `buffer` holds only that. Default true
    /// (`dump.snapshot`).
    pub snapshot: bool,
    /// Test-only: fail on purpose at this step (see [`Step::from_env`]).
    pub fail_at: Option<Step>,
    /// Lazy final dump (`dump.lazy`): the pages of private anonymous VMAs (those a lazy restore
    /// registers MISSING) are read and hashed but handed to the sink as `PageRef::Lazy(id)`
    /// references, and the process is neither thawed nor killed: the dump returns it still
    /// frozen, to serve those pages ([`dump_to_store_lazy`]). Excludes `leave_running`.
    pub lazy: bool,
    /// What the checks accept that the dump may lose (`dump.tcp_pending`).
    pub policy: CheckPolicy,
    /// How established connections to peers outside the tree are held while frozen
    /// (`[network] lock`, issue #15).
    pub network_lock: crate::netlock::LockMode,
    /// A dump that kills: collect the deaths (as their tracer) on a thread of its own and
    /// return once every process is sent its SIGKILL, so the caller can answer while the
    /// processes exit (a 1 GiB process takes ~60 ms to free its memory). The caller must call
    /// [`join_deaths`] before it exits. Not with established TCP connections or a network
    /// lock (those are dealt with after the deaths). The checkpoint worker sets it.
    pub deaths_in_background: bool,
    /// The caller's parent reaps children of the root's parent that the dump leaves it (a
    /// fork snapshot, `dump::snapshot`, is one when that parent is the caller's: haul, which
    /// launched the root). The checkpoint worker sets it; haul reaps [`DumpStats::keepers`].
    pub parent_reaps: bool,
    /// A dump that kills a lone process for a restore on this host that takes its memory
    /// over (`restore.adopt_memory`): its memory keeper is an adoptable one, handed over once
    /// the process is dead ([`hand_over_keepers`], `dump::keeper`). The checkpoint worker sets it
    /// from the request.
    pub hand_keepers: bool,
}

pub use tree::{hand_over_keepers, join_deaths};

impl DumpOptions {
    /// Whether the set's packs are written around the page cache
    /// (`store::SetWriter::write_around_page_cache`): a dump that stops the process for a
    /// restore that adopts its memory ([`DumpOptions::hand_keepers`]) reads none of them back,
    /// and their writes, inside the freeze, then cost no fresh page-cache memory.
    pub fn around_page_cache(&self) -> bool {
        self.hand_keepers && !self.leave_running && !self.lazy
    }
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            leave_running: false,
            buffer: 1 << 30,
            snapshot: true,
            fail_at: None,
            lazy: false,
            policy: CheckPolicy::default(),
            network_lock: Default::default(),
            deaths_in_background: false,
            parent_reaps: false,
            hand_keepers: false,
        }
    }
}

/// Figures of one dump; names follow CRIU's stats (DESIGN.md §5), times in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DumpStats {
    /// From the first seize to every thread stopped.
    pub freezing_time: u64,
    /// From every thread stopped to the process resumed (or killed, after its set is
    /// committed).
    pub frozen_time: u64,
    /// Copying memory out of the process (within the freeze).
    pub memdump_time: u64,
    /// Handing the buffered pages to the sink after the thaw (or, when the process is
    /// killed, before it), and committing the set.
    pub memwrite_time: u64,
    /// Of `frozen_time`, the part spent writing and committing the image set while the
    /// process waited frozen (a dump that kills it does so only once its set is durable).
    /// Zero when the process was left running.
    #[serde(default)]
    pub frozen_commit_time: u64,
    /// Pages of the VMAs whose content a dump may copy.
    pub pages_scanned: u64,
    /// Pages handed to the sink with their content (lazy pages not included).
    pub pages_written: u64,
    /// Pages recorded as `PageRef::Lazy` (lazy final dump): hashed, not written; the frozen
    /// source serves them.
    #[serde(default)]
    pub pages_lazy: u64,
    /// Present pages unchanged since the last pre-dump, carried by reference (not copied).
    #[serde(default)]
    pub pages_skipped_parent: u64,
    /// Of those, pages that are all zeroes.
    pub pages_zero: u64,
    /// Present pages of private file mappings left out because they are still the file's.
    pub pages_file: u64,
    /// Pages handed to the sink during the freeze (beyond the buffer).
    pub pages_during_freeze: u64,
    /// Pages read after the thaw from a fork of the process made under the freeze
    /// (`dump::snapshot`); 0 when none was made.
    #[serde(default)]
    pub pages_from_snapshot: u64,
    /// Processes dumped: the root and its descendants, zombies included.
    #[serde(default)]
    pub processes: u64,
    /// Threads and VMAs of every process of the tree.
    pub threads: u64,
    pub vmas: u64,
    /// Syscalls injected into the target.
    pub remote_syscalls: u64,
    /// The memory keepers of the processes killed (see `dump::keeper`), and the fork
    /// snapshot of a checkpoint (`dump::snapshot`): children of haul's, for the launching
    /// haul to reap once they are gone. Not in the report.
    #[serde(default)]
    pub keepers: Vec<i32>,
    /// What the dump dropped that the process had (datagrams queued in a UDP socket,
    /// connections not yet accepted with `dump.tcp_pending = "drop"`), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How long the network lock held the tree's connections to peers outside it: from its
    /// taking under the freeze to the thaw, or to the kill (then it is kept for the restore).
    /// Zero: no lock.
    #[serde(default)]
    pub lock_time: u64,
    /// The instants of the freeze (`freeze`, `state`, `copy`, then `thaw` and `running`, or
    /// `write`, `commit` and `kill` for a dump that stops the process): the start of the
    /// report's pause timeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<crate::report::Mark>,
}

/// A mark of the pause timeline named `name`, now (`CLOCK_MONOTONIC`, which haul and its
/// checkpoint worker share).
pub fn mark(name: &str) -> crate::report::Mark {
    crate::report::Mark {
        name: name.into(),
        at_us: crate::sys::clock::monotonic_us(),
    }
}

/// What a dump produced: the state of the root and of its descendants, and the figures. The
/// pages went to the sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpOutcome {
    /// The root (the job's process).
    pub process: ProcessImage,
    /// Its descendants, living and zombie (empty for one process).
    pub tree: crate::image::Tree,
    pub stats: DumpStats,
}

/// Checkpoints the tree rooted at process `pid`: see the module documentation. Pages go to
/// `sink`, each process's in its own page space (during the freeze beyond `opts.buffer`, the
/// rest after the thaw).
pub fn dump(
    pid: i32,
    opts: &DumpOptions,
    sink: &mut dyn PageSink,
) -> Result<DumpOutcome, DumpError> {
    if opts.lazy {
        return Err(DumpError::Internal(
            "a lazy dump keeps the process frozen: use dump_to_store_lazy".into(),
        ));
    }
    let (mut out, kept) = dump_planned(pid, opts, sink, None)?;
    // Every page is in the sink: nothing more to commit before the kill.
    end_frozen(pid, kept, &mut out.stats, opts)?;
    Ok(out)
}

/// Ends a kill-mode dump once its pages are safe (for a store: the set committed and
/// fsynced): kills every process of the tree [`dump_planned`] kept frozen and records how long
/// it stayed frozen, `frozen_commit_time` of it spent writing and committing (`memwrite_time`,
/// which the caller has completed with the commit). `None` (a dump that left it running) does
/// nothing.
pub(crate) fn end_frozen(
    pid: i32,
    kept: Option<tree::FrozenTree>,
    stats: &mut DumpStats,
    opts: &DumpOptions,
) -> Result<(), DumpError> {
    let Some(frozen) = kept else {
        return Ok(());
    };
    stats.frozen_commit_time = stats.memwrite_time;
    stats.frozen_time = crate::util::us(frozen.frozen_for());
    stats.marks.push(mark("kill"));
    stats.lock_time = frozen
        .lock
        .as_ref()
        .map_or(0, |l| crate::util::us(l.since().elapsed()));
    let background = opts.deaths_in_background;
    stats.keepers = frozen
        .kill(&mut stats.marks, background, opts.hand_keepers)
        .map_err(|e| DumpError::At {
            pid,
            step: Step::Resume,
            source: Box::new(e),
        })?;
    stats.marks.push(mark("handover"));
    Ok(())
}

/// Refuses a tree of more than one process for a lazy dump, naming the others, before anything
/// is frozen or tracked (a lazy final dump after pre-dumps checks this before the pre-dumps).
pub(crate) fn refuse_lazy_tree(pid: i32) -> Result<(), DumpError> {
    let pids = check::precheck(pid, CheckPolicy::default())?;
    tree::refuse_tree(pid, &pids[1..], "a lazy dump")
}

/// How a final dump after pre-dumps copies one process: which pages of a VMA changed since the
/// last pre-dump.
pub(crate) trait FinalPlan {
    /// How to copy `vma`: None copies every present page.
    fn vma_plan(&self, vma: &crate::image::Vma) -> Option<memory::VmaPlan<'_>>;
}

/// What a final dump after pre-dumps needs from the pre-copy state of a tree: the processes it
/// tracked; under the freeze, the pages each wrote since the last pre-dump; after the thaw, the
/// references for the rest. `space` is a process's index in tree order.
pub(crate) trait TreePlan {
    /// Under the freeze: fails, naming the process, unless `members` (the frozen tree, tree
    /// order) are the processes the pre-copy tracked.
    fn check_tree(&self, members: &[crate::proc::TreeMember]) -> Result<(), DumpError>;
    /// Bytes the final copy is expected to take (buffers are mapped for that much before the
    /// freeze; more are mapped if needed). None: the whole resident memory.
    fn copy_estimate(&self) -> Option<u64> {
        None
    }
    /// Whether the root's memory is registered with haul's own userfaultfd (uffd-wp tracking):
    /// its `uw` mappings are haul's, not another monitor's (see `dump::snapshot`).
    fn root_tracked_by_uffd(&self) -> bool {
        false
    }
    /// Under the freeze, before memory is copied: the last tracking round of process `space`
    /// over its `vmas`.
    fn prepare(&mut self, space: usize, vmas: &[crate::image::Vma]) -> Result<(), DumpError>;
    /// How to copy process `space`.
    fn space(&self, space: usize) -> Option<&dyn FinalPlan>;
    /// After the thaw: hands the pages of `carried` (present, unchanged) of process `space`
    /// to the sink by reference, at their addresses; returns how many.
    fn carry(
        &mut self,
        space: usize,
        carried: &[(u64, u64)],
        sink: &mut dyn PageSink,
    ) -> Result<u64, DumpError>;
}

/// [`dump`], copying under the freeze only what `plan` says changed (pre-copy final dump).
/// With `opts.lazy`, the process is returned still frozen (settled: registers restored, no
/// scratch page) and the pages of its private anonymous VMAs went to `sink` as references.
/// A lazy dump handles one process: a tree is refused before anything is frozen. A pre-copy
/// final dump fails, naming the process, if the frozen tree is not the one `plan` tracked.
pub(crate) fn dump_planned(
    root: i32,
    opts: &DumpOptions,
    sink: &mut dyn PageSink,
    mut plan: Option<&mut dyn TreePlan>,
) -> Result<(DumpOutcome, Option<tree::FrozenTree>), DumpError> {
    if opts.lazy && opts.leave_running {
        return Err(DumpError::Refused(
            "a lazy dump keeps the process frozen to serve its pages: it cannot also leave it \
             running"
                .into(),
        ));
    }
    let one_only = opts.lazy.then_some("a lazy dump");
    let ctx = Ctx::root(root, opts);
    let before = ctx.step(Step::Check, || check::precheck_snapshot(root, opts.policy))?;
    if let Some(what) = one_only {
        ctx.step(Step::Check, || {
            tree::refuse_tree(root, &before.others(), what)
        })?;
    }
    // A dump that will need the network lock and cannot take it fails before the freeze.
    let living: Vec<i32> = before.members.iter().map(|(m, _)| m.pid).collect();
    ctx.step(Step::Check, || netlock::preflight(&living, opts))?;
    ctx.fail(Step::Check)?;
    let mut stats = DumpStats::default();

    // A dump that stops the process holds it frozen until the set is committed anyway: its
    // pages go to the sink (hashed and compressed on the other cores) while the copy goes on,
    // rather than all after it.
    let limit = if opts.leave_running || opts.lazy {
        opts.buffer
    } else {
        0
    };
    // The root's memory as (private, shared), from one walk of its page tables.
    let root_memory = if limit > 0 {
        check::memory_estimate(root).unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    // A checkpoint that leaves the root running reads its private memory after the thaw from
    // a fork made under the freeze, when it can (`snapshot`).
    let tracked = plan.as_deref().is_some_and(|p| p.root_tracked_by_uffd());
    let want_snapshot = match snapshot::unwanted(&before, opts, tracked, root_memory.0) {
        None => true,
        Some(why) => {
            if opts.leave_running {
                tracing::debug!(pid = root, "no fork snapshot: {why}");
            }
            false
        }
    };
    // Buffers are mapped (and faulted in) before the freeze, so the freeze only copies.
    // After pre-dumps only what was written since the last is copied: mapping buffers for the
    // whole memory would cost their unmapping inside the pause of a dump that kills. The
    // pages a snapshot holds need none.
    let estimate = if limit == 0 {
        0
    } else {
        match plan.as_deref().and_then(|p| p.copy_estimate()) {
            // Pre-copy dumps one process: the snapshot holds what it tracked.
            Some(_) if want_snapshot => 0,
            Some(e) => e,
            None => {
                let (private, shared) = root_memory;
                let root_kept = if want_snapshot {
                    shared
                } else {
                    private + shared
                };
                before.descendants_estimate() + root_kept
            }
        }
    };
    let mut pool = memory::BufferPool::new(limit, estimate);

    let t_seize = Instant::now();
    stats.marks.push(mark("freeze"));
    let mut frozen = ctx.step(Step::Seize, || tree::FrozenTree::seize(root))?;
    stats.freezing_time = crate::util::us(t_seize.elapsed());
    stats.marks.push(mark("state"));
    let t_frozen = Instant::now();
    ctx.fail(Step::Seize)?;
    // The page spaces above are the SysV segments' (`image::ipc`).
    let most = crate::image::ipc::SYSV_SPACE_BASE as usize;
    if frozen.procs.len() > most {
        return Err(DumpError::Refused(format!(
            "the tree of pid {root} has {} processes: at most {most} fit in an image set",
            frozen.procs.len(),
        )));
    }
    if let Some(what) = one_only {
        // A fork that raced the checks.
        let others: Vec<i32> = frozen.pids()[1..]
            .iter()
            .copied()
            .chain(frozen.zombies.iter().map(|z| z.pid))
            .collect();
        ctx.step(Step::Check, || tree::refuse_tree(root, &others, what))?;
    }
    if let Some(p) = plan.as_deref() {
        // A fork or an exit since the last pre-dump: its pages were not tracked.
        ctx.step(Step::Check, || p.check_tree(&frozen.members))?;
    }

    // Under the freeze the processes cannot change: check the refusal list again.
    let pids = frozen.pids();
    let snapshots = ctx.step(Step::Check, || check::check_frozen(root, &pids, &before))?;
    // Test-only: a test sends signals to the frozen tree here (`tests/fidelity.rs`).
    test_hold("HAUL_TEST_HOLD_FROZEN", &root.to_string());
    // Connections to peers outside the tree are locked before any socket is read.
    frozen.lock = ctx.step(Step::Check, || netlock::take(&pids, opts))?;

    let n = frozen.procs.len();
    let mut procs = Vec::with_capacity(n);
    let mut observed = Vec::with_capacity(n);
    for (i, (f, snapshot)) in frozen.procs.iter_mut().zip(snapshots).enumerate() {
        let pid = f.pid;
        let m = ctx.member(&frozen.members[i]);
        // Injected faults fire in the last process, once every one has been through the step.
        let fail = |step| if i + 1 == n { ctx.fail(step) } else { Ok(()) };
        let mut process = m.step(Step::Regs, || state::capture_threads(f))?;
        fail(Step::Regs)?;
        // What /proc shows of it, for `--verify state` (reads /proc only, before anything is
        // injected, so the scratch page and the masks haul sets while injecting are not in
        // it), with the mappings the check under the freeze has just read.
        let maps = snapshot.maps.clone();
        observed.push(m.step(Step::State, || {
            Ok(crate::proc::observe_with(pid, Some(maps))?)
        })?);
        // The address space is read before the scratch page exists.
        m.step(Step::State, || {
            state::capture_process(pid, &mut process, snapshot)
        })?;
        // Its threads' seccomp filters (read by ptrace, the threads stopped).
        m.step(Step::State, || seccomp::capture(f, &mut process))?;
        m.step(Step::Scratch, || f.map_scratch())?;
        fail(Step::Scratch)?;
        m.step(Step::Sigactions, || {
            state::capture_injected(f, &mut process)
        })?;
        fail(Step::Sigactions)?;
        m.step(Step::Scratch, || f.unmap_scratch())?;
        // No more injected syscalls: give the registers back and end the syscall-tracing
        // state now, so that if the worker dies during the copy (SIGKILL), the kernel's
        // detach resumes the process intact (see `Frozen::settle`).
        m.step(Step::Scratch, || f.settle())?;
        fail(Step::State)?;
        procs.push(process);
    }
    // What the processes share with each other, now that every one is captured and before
    // memory is copied (a mapping shared with an earlier process is stored only there).
    ctx.step(Step::State, || share::link(&mut procs))?;
    // Established TCP connections, read in repair mode (which holds until the thaw or kill).
    ctx.step(Step::State, || {
        fdkinds::inet::repair_established(&mut frozen, &mut procs)
    })?;

    // The fork snapshot of the root, the last syscall injected (a phase of its own in the
    // timeline: ~20 ms per GiB of page tables); the root is settled again after it. Killed
    // when dropped (any error below).
    let mut snap = None;
    if want_snapshot {
        stats.marks.push(mark("fork"));
        let f = &mut frozen.procs[0];
        snap = match snapshot::make(f) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    pid = root,
                    "no fork snapshot ({e}): its memory is copied under the freeze"
                );
                None
            }
        };
        ctx.step(Step::Scratch, || f.settle())?;
    }
    let t_mem = Instant::now();
    stats.marks.push(mark("copy"));
    // A lazy dump hands the pages of the VMAs a lazy restore leaves to its daemon to the sink
    // as `Lazy(id)` references; everything else passes through.
    let mut split = lazy::LazySplit::new(sink, opts.lazy.then_some(&procs[0].vmas[..]));
    if let Some(p) = plan.as_deref_mut() {
        for (space, proc_) in procs.iter().enumerate() {
            let m = ctx.member(&frozen.members[space]);
            m.step(Step::Memory, || p.prepare(space, &proc_.vmas))?;
        }
    }
    let mut carried = vec![Vec::new(); n];
    let mut buffered = Vec::with_capacity(n);
    for (space, p) in procs.iter().enumerate() {
        let m = ctx.member(&frozen.members[space]);
        let mut sink = tree::SpaceSink {
            inner: &mut split,
            space: space as u16,
        };
        buffered.push(m.step(Step::Memory, || {
            let plan = match plan.as_deref() {
                Some(t) => Some(t.space(space).ok_or_else(|| {
                    DumpError::Internal(format!("pre-copy has no page space {space}"))
                })?),
                None => None,
            };
            memory::copy_memory(
                p.pid,
                snap.as_ref().filter(|_| space == 0).map(|s| s.pid),
                &p.vmas,
                &mut pool,
                &mut sink,
                &mut stats,
                plan,
                &mut carried[space],
            )
        })?);
    }
    // The SysV objects the tree uses, with their contents (segments in their own page spaces).
    let ipc = ctx.step(Step::Memory, || share::sysv::capture(&procs, &mut split))?;
    // The contents of memfds and deleted files, still under the freeze, each in a page
    // space of its own.
    let files = ctx.step(Step::Memory, || {
        fdkinds::stored::store_contents(&procs, &mut split)
    })?;
    stats.memdump_time = crate::util::us(t_mem.elapsed());
    ctx.fail(Step::Memory)?;

    ctx.fail(Step::Resume)?;
    stats.remote_syscalls = frozen.remote_syscalls();
    stats.processes = frozen.count() as u64;
    stats.threads = procs.iter().map(|p| p.threads.len() as u64).sum();
    stats.vmas = procs.iter().map(|p| p.vmas.len() as u64).sum();
    stats.warnings = procs.iter().flat_map(fdkinds::warnings).collect();
    // The signals pending now, and those held back while frozen, stay pending in the image.
    for (i, (p, o)) in procs.iter_mut().zip(observed).enumerate() {
        let f = &frozen.procs[i];
        let m = ctx.member(&frozen.members[i]);
        m.step(Step::State, || {
            state::capture_pending(f.pid, p, |tid| f.held_signals(tid))
        })?;
        p.observed = observed_with_pending(o, p);
    }
    // Every process is still there: the image is the whole tree.
    ctx.step(Step::Resume, || frozen.check_whole(Step::Resume))?;
    let zombies = frozen.zombie_images();
    // A kill-mode dump keeps the lock for the restore: the image names its table.
    let netlock = match &frozen.lock {
        Some(l) if !opts.leave_running => Some(crate::image::inet::LockRecord {
            table: l.kept_name().to_string(),
        }),
        _ => None,
    };
    let kept = if opts.leave_running {
        let locked = frozen.lock.as_ref().map(crate::netlock::NetLock::since);
        stats.marks.push(mark("thaw"));
        ctx.step(Step::Resume, || frozen.thaw())?;
        stats.marks.push(mark("running"));
        stats.lock_time = locked.map_or(0, |t| crate::util::us(t.elapsed()));
        None
    } else {
        // Neither thawed nor killed (settled above). Lazy: the caller serves the lazy pages
        // from it. Kill: the caller kills them only once the image set is committed and
        // durable ([`end_frozen`]). Dropping the guard (any error below, or in the caller's
        // commit) thaws every process, so a failed write never costs the tree.
        Some(frozen)
    };
    stats.frozen_time = crate::util::us(t_frozen.elapsed());

    let t_write = Instant::now();
    if !opts.leave_running {
        stats.marks.push(mark("write"));
    }
    ctx.fail(Step::Write)?;
    ctx.step(Step::Write, || {
        for (space, b) in buffered.into_iter().enumerate() {
            let mut sink = tree::SpaceSink {
                inner: &mut split,
                space: space as u16,
            };
            memory::write_buffered(b, &mut sink, &mut stats)?;
        }
        if let Some(p) = plan {
            for (space, c) in carried.iter().enumerate() {
                let mut sink = tree::SpaceSink {
                    inner: &mut split,
                    space: space as u16,
                };
                stats.pages_skipped_parent += p.carry(space, c, &mut sink)?;
            }
        }
        Ok(())
    })?;
    // Every page it held is read.
    if let Some(s) = snap.take() {
        stats.keepers.extend(s.end());
    }
    stats.pages_lazy = split.lazy_pages();
    stats.pages_written = stats.pages_written.saturating_sub(split.kept_back());
    stats.memwrite_time = crate::util::us(t_write.elapsed());
    let mut procs = procs.into_iter();
    let process = procs
        .next()
        .ok_or_else(|| DumpError::Internal("the dump captured no process".into()))?;
    let tree = crate::image::Tree {
        descendants: procs.collect(),
        zombies,
        ipc,
        files,
        netlock,
    };
    Ok((
        DumpOutcome {
            process,
            tree,
            stats,
        },
        kept,
    ))
}

/// The observed state with the signal masks and pending signals as the image carries them.
/// Pending: the freeze holds some signals back, which `capture_pending` adds and the restore
/// queues again, so /proc under the freeze does not show all of them. Masks: a thread stopped
/// in `sigsuspend`, `ppoll`, `pselect` or `epoll_pwait` shows the temporary mask of that call
/// in /proc while its own is saved aside; ptrace reports (and the image keeps) its own, which
/// the restored thread has until it enters the call again.
fn observed_with_pending(
    mut o: crate::proc::Observed,
    p: &crate::image::ProcessImage,
) -> std::collections::BTreeMap<String, String> {
    for t in &p.threads {
        if let Some(i) = o.tids.iter().position(|&tid| tid == t.tid) {
            o.fields
                .insert(format!("thread {i} SigPnd"), format!("{:016x}", t.pending));
            o.fields
                .insert(format!("thread {i} SigBlk"), format!("{:016x}", t.sigmask));
        }
    }
    o.fields
        .insert("ShdPnd".into(), format!("{:016x}", p.shared_pending));
    o.fields
}

struct Ctx<'a> {
    /// The process the steps are about.
    pid: i32,
    /// The root of the tree, and the name of `pid` when it is not the root.
    root: i32,
    comm: &'a str,
    opts: &'a DumpOptions,
}

impl<'a> Ctx<'a> {
    fn root(root: i32, opts: &'a DumpOptions) -> Ctx<'a> {
        Ctx {
            pid: root,
            root,
            comm: "",
            opts,
        }
    }

    /// The steps about process `m` of the tree: its errors name it.
    fn member<'b>(&self, m: &'b crate::proc::TreeMember) -> Ctx<'b>
    where
        'a: 'b,
    {
        Ctx {
            pid: m.pid,
            root: self.root,
            comm: &m.comm,
            opts: self.opts,
        }
    }

    fn fail(&self, step: Step) -> Result<(), DumpError> {
        if self.opts.fail_at == Some(step) {
            return Err(DumpError::At {
                pid: self.pid,
                step,
                source: Box::new(DumpError::Injected(step)),
            });
        }
        Ok(())
    }

    fn step<T>(
        &self,
        step: Step,
        f: impl FnOnce() -> Result<T, DumpError>,
    ) -> Result<T, DumpError> {
        let t = Instant::now();
        let r = f();
        tracing::debug!(pid = self.pid, %step, us = crate::util::us(t.elapsed()), ok = r.is_ok(), "dump step");
        r.map_err(|e| self.name(self.at(step, e)))
    }

    /// A descendant's error names it (pid, comm); the root's is as it is.
    fn name(&self, e: DumpError) -> DumpError {
        if self.pid == self.root || matches!(e, DumpError::Member { .. }) {
            return e;
        }
        DumpError::Member {
            root: self.root,
            pid: self.pid,
            comm: self.comm.to_string(),
            source: Box::new(e),
        }
    }

    /// Maps errors to the step they happened at.
    fn at(&self, step: Step, e: DumpError) -> DumpError {
        match e {
            DumpError::Refused(_)
            | DumpError::Unsupported(_)
            | DumpError::Refusals { .. }
            | DumpError::Member { .. }
            | DumpError::Gone { .. }
            | DumpError::At { .. } => e,
            DumpError::Sys(SysError::Gone { tid, how }) => DumpError::Gone {
                pid: self.pid,
                step,
                detail: format!("thread {tid} {how}"),
            },
            // Whatever failed, a target that died meanwhile is the real story.
            other if check::process_gone(self.pid) => DumpError::Gone {
                pid: self.pid,
                step,
                detail: other.to_string(),
            },
            other => DumpError::At {
                pid: self.pid,
                step,
                source: Box::new(other),
            },
        }
    }
}
