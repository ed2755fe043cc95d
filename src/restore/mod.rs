//! Restore: rebuild a process, or a whole process tree, from an image set so that it continues
//! exactly where it was.
//!
//! The rebuild (DESIGN.md §4): a parked child with the dumped PID (clone3 `set_tid`), re-parented
//! away from haul, is seized; by syscalls injected into it haul unregisters its inherited rseq,
//! maps a scratch page at a hole of the target layout, unmaps everything else, moves the vDSO
//! unit to the dumped addresses, maps every VMA, fills memory from the store, sets the mm fields
//! and auxv (`PR_SET_MM_MAP`), reopens files at their numbers and offsets, restores cwd, umask,
//! rlimits, credentials, signal actions, sigaltstack, robust list, rseq, mask, registers and
//! XSTATE, and lets it run. Any failure kills the half-built process and names the step.
//!
//! **A tree** (`ImageSet::tree`): the root is parked as above; every descendant is forked by a
//! `clone3` injected into its parent while that parent is still the parked copy (its pid by
//! `set_tid`, its exit signal, `CLONE_FILES` when it shares its parent's fd table), so each is
//! rebuilt by the same steps, with its own page space. Sessions and process groups are set as
//! the tree is made (`tree.rs` plans the order, `create.rs` does it); zombies are forked last
//! and made to end with their wait status, the parent's extra SIGCHLD taken back. One
//! `share::Shared` serves the whole set. Nothing runs until every process is built (and, with
//! `--verify state`, checked); a failure anywhere kills every process made so far. A lazy
//! restore leaves every process's private anonymous memory to the daemon (`LazyHooks::start`
//! once per process, at its *lazy* step, with its page space).
//!
//! **`pid = "any"`** gives every process a new PID. It is refused where the image shows that
//! the program holds PIDs haul cannot change: a zombie (its parent reaps it by the PID fork
//! returned), or a descendant whose PID names a process group or session (a shell with job
//! control keeps and signals those). A parent keeping its children's PIDs in its own memory
//! cannot be seen in an image: as with a multi-threaded process's thread ids, that is warned
//! about, not refused (`compat::any_pid_cares`).
//!
//! `rebuild` holds the sequence only; each step is a module (`memory`, `vdso`, `mm`, `fds`,
//! `fs`, `signals`, `threads`, `creds`, `timers`, `attrs`, `cgroup`) that drives the process
//! through `sys::remote`'s typed calls on a `&mut dyn Inject` and fails with a [`StepError`]
//! that keeps its source (the call and its errno, the `/proc` read, what it acted on). A step
//! of a process other than the root names its pid.

mod adopt;
mod attrs;
mod cgroup;
mod compat;
mod create;
mod creds;
mod error;
mod events;
mod fds;
mod fs;
mod inet;
mod layout;
mod memory;
mod mm;
mod netlock;
mod rebuild;
mod seccomp;
mod share;
mod signals;
mod stored;
#[cfg(test)]
mod tests;
mod threads;
mod timers;
mod tree;
mod tty;
mod unix;
mod vdso;
mod verify;

use std::time::Instant;

use crate::image::{ImageSet, ProcessImage};

pub use cgroup::CgroupError;
pub use compat::{check_compat, FileMismatch, VdsoMismatch};
pub use error::StepError;
pub use share::MemShareError;
pub use tty::{outside_terminals, TtyMode, TtyTarget};
pub use verify::{compare as compare_state, StateDifference};

/// Errors of the `restore` module.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The image cannot be restored on this machine as it is; nothing was created.
    #[error("set {set}: cannot restore: {reason}")]
    Incompatible { set: String, reason: String },
    /// A file the image names is not the one the process had; nothing was created.
    #[error("set {set}: cannot restore: {what} {source}")]
    File {
        set: String,
        what: String,
        #[source]
        source: Box<compat::FileMismatch>,
    },
    /// The dumped vDSO unit does not fit this kernel's; nothing was created.
    #[error("set {set}: cannot restore: {source}")]
    Vdso {
        set: String,
        #[source]
        source: Box<compat::VdsoMismatch>,
    },
    /// A cgroup of the image cannot be joined here; nothing was created.
    #[error("set {set}: cannot restore: {source}")]
    Cgroup {
        set: String,
        #[source]
        source: Box<CgroupError>,
    },
    /// What haul holds itself could not be read; nothing was created.
    #[error("set {set}: cannot restore: reading haul's own {what}: {source}")]
    Own {
        set: String,
        what: &'static str,
        #[source]
        source: Box<crate::proc::ProcError>,
    },
    /// A step of the rebuild failed; the half-built process was killed.
    #[error("set {set}: restore failed at step {step}: {source}")]
    Step {
        set: String,
        step: Step,
        #[source]
        source: Box<StepError>,
    },
    /// `--verify state`: the rebuilt process does not show the state the image recorded; it
    /// was killed before it ran.
    #[error(
        "set {set}: the restored process (pid {pid}) differs from the image in {n} field(s); \
         it was killed before it ran:{list}",
        n = differences.len(),
        list = verify::list(differences)
    )]
    StateDiffers {
        set: String,
        pid: i32,
        differences: Vec<StateDifference>,
    },
}

/// The error of a [`PageSource`] or of [`LazyHooks::start`], whichever module implements them
/// (the store, a page server, the lazy daemon). restore cannot name their error types (those
/// modules depend on it), so it keeps the error boxed, with its sources, and a caller that
/// knows the type can downcast it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The steps of a rebuild, in order; each failure names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Spawn,
    Seize,
    Rseq,
    Scratch,
    Unmap,
    Vdso,
    Map,
    Fill,
    Protect,
    MmMap,
    Files,
    Fs,
    Limits,
    Signals,
    Threads,
    Creds,
    Regs,
    Run,
    /// Lazy restore only: the userfaultfd is created, taken and registered, and the daemon
    /// starts serving (between `map` and `fill`). Not in [`Step::ALL`], which the eager
    /// restore walks.
    Lazy,
}

impl Step {
    pub const ALL: [Step; 18] = [
        Step::Spawn,
        Step::Seize,
        Step::Rseq,
        Step::Scratch,
        Step::Unmap,
        Step::Vdso,
        Step::Map,
        Step::Fill,
        Step::Protect,
        Step::MmMap,
        Step::Files,
        Step::Fs,
        Step::Limits,
        Step::Signals,
        Step::Threads,
        Step::Creds,
        Step::Regs,
        Step::Run,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Spawn => "spawn",
            Step::Seize => "seize",
            Step::Rseq => "rseq",
            Step::Scratch => "scratch",
            Step::Unmap => "unmap",
            Step::Vdso => "vdso",
            Step::Map => "map",
            Step::Fill => "fill",
            Step::Protect => "protect",
            Step::MmMap => "mm-map",
            Step::Files => "files",
            Step::Fs => "fs",
            Step::Limits => "limits",
            Step::Signals => "signals",
            Step::Threads => "threads",
            Step::Creds => "creds",
            Step::Regs => "regs",
            Step::Run => "run",
            Step::Lazy => "lazy",
        }
    }

    pub fn from_name(s: &str) -> Option<Step> {
        Step::ALL
            .into_iter()
            .chain([Step::Lazy])
            .find(|st| st.name() == s)
    }

    /// Test-only: the step named by `$HAUL_RESTORE_FAIL_AT`, which makes a restore fail there on
    /// purpose (the tests prove that nothing is left behind).
    pub fn from_env() -> Option<Step> {
        std::env::var("HAUL_RESTORE_FAIL_AT")
            .ok()
            .and_then(|v| Step::from_name(&v))
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which PID the restored process gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PidChoice {
    /// The dumped PID; refused if it is taken.
    #[default]
    Same,
    /// Whatever PID the kernel hands out.
    Any,
}

/// Options of a restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub pid: PidChoice,
    /// Test-only: fail on purpose at this step (to prove nothing is left behind).
    pub fail_at: Option<Step>,
    /// `--verify state`: before the process runs, compare what `/proc` shows of it with what
    /// the dump recorded; any difference fails the restore (the process is killed).
    pub verify_state: bool,
    /// Where a terminal outside the checkpoint goes (`restore.tty`, `--tty`); None: such a
    /// terminal is refused before anything is made.
    pub tty: Option<TtyTarget>,
    /// How the restored tree's connections to peers outside it are held until it runs
    /// (`[network] lock`, issue #15).
    pub network_lock: crate::netlock::LockMode,
    /// A memory keeper handed over by the dump that stopped the process (`dump::keeper`):
    /// the restore makes the process from it and adopts its memory when it can
    /// ([`adopt`]); else it writes the memory from the set as usual.
    pub adopt: Option<i32>,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// The root's pid.
    pub pid: i32,
    /// (pid in the image, pid here) of every process restored: the root, its descendants in
    /// tree order, then the zombies.
    pub pids: Vec<(i32, i32)>,
    /// Whole restore, compatibility check to running (µs).
    pub restore_time: u64,
    /// From the start of the restore until the process runs (µs).
    pub time_to_running: u64,
    pub pages_restored: u64,
    /// Time spent filling memory (µs).
    pub fill_time: u64,
    /// How long the restore held the network lock, taking to release (µs; 0: no lock).
    pub lock_time: u64,
    /// The memory was adopted from a keeper ([`RestoreOptions::adopt`]), not written.
    pub adopted: bool,
}

/// Where a restore reads the pages of a set: in address order, each page verified by the
/// source. The store implements this; tests may use an in-memory source.
pub trait PageSource {
    /// Calls `f(addr, page)` for every stored page of `set`, in address order; `f` may be
    /// called with runs of several contiguous pages (`page.len()` a multiple of 4096).
    #[allow(clippy::type_complexity)] // the callback type is the whole interface
    fn for_each_page(
        &self,
        set: &ImageSet,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<(), BoxError>,
    ) -> Result<(), BoxError>;

    /// The same pages, in any order, possibly from several threads at once: `f(addrs, bytes)`
    /// with `bytes[i * 4096..][..4096]` the page at `addrs[i]`. By default through
    /// [`PageSource::for_each_page`], gathered into batches of up to 256 pages (one
    /// `process_vm_writev` each for a restore, however short the runs); a source that can
    /// decode in parallel hands each batch over on the thread that decoded it.
    #[allow(clippy::type_complexity)]
    fn for_each_batch_par(
        &self,
        set: &ImageSet,
        f: &(dyn Fn(&[u64], &[u8]) -> Result<(), BoxError> + Sync),
    ) -> Result<(), BoxError> {
        const BATCH: usize = 256;
        let page = crate::image::PAGE_SIZE;
        let mut addrs: Vec<u64> = Vec::with_capacity(BATCH);
        let mut buf: Vec<u8> = Vec::with_capacity(BATCH * page);
        self.for_each_page(set, &mut |addr, bytes| {
            for (i, p) in bytes.chunks(page).enumerate() {
                addrs.push(addr + (i * page) as u64);
                buf.extend_from_slice(p);
                if addrs.len() == BATCH {
                    f(&addrs, &buf)?;
                    addrs.clear();
                    buf.clear();
                }
            }
            Ok(())
        })?;
        if addrs.is_empty() {
            return Ok(());
        }
        f(&addrs, &buf)
    }
}

impl PageSource for crate::store::Store {
    fn for_each_page(
        &self,
        set: &ImageSet,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<(), BoxError>,
    ) -> Result<(), BoxError> {
        // Fresh anonymous memory is zero already; the rebuild writes the zero pages of private
        // file mappings itself.
        let opts = crate::store::ReadOptions { skip_zero: true };
        self.read_set_pages_with::<BoxError, _>(set, opts, |addr, bytes| f(addr, bytes))
    }

    fn for_each_batch_par(
        &self,
        set: &ImageSet,
        f: &(dyn Fn(&[u64], &[u8]) -> Result<(), BoxError> + Sync),
    ) -> Result<(), BoxError> {
        let opts = crate::store::ReadOptions { skip_zero: true };
        self.read_set_pages_par::<BoxError, _>(set, opts, f)
    }
}

/// Restores `set` (a final dump) from `source` and lets the process run. Returns its PID.
pub fn restore(
    set: &ImageSet,
    source: &dyn PageSource,
    opts: &RestoreOptions,
) -> Result<RestoreOutcome, RestoreError> {
    let start = Instant::now();
    compat::check_compat(set, opts.pid, false)?;
    tty::check(set, opts.tty.as_ref()).map_err(|reason| RestoreError::Incompatible {
        set: set.id.clone(),
        reason: reason.0,
    })?;
    if opts.verify_state {
        for (_, p) in set.processes() {
            verify::require_record(set, p)?;
        }
    }
    let mut out = rebuild::rebuild(set, source, opts, start, None)?;
    out.restore_time = crate::util::us(start.elapsed());
    Ok(out)
}

/// What a lazy restore hands to its daemon, once the rebuilt process's address space is mapped
/// and before anything touches its private anonymous memory.
#[derive(Debug)]
pub struct LazyStart {
    pub pid: i32,
    /// The process's page space in the set (`image::page_key`): 0 for the root.
    pub space: u16,
    /// The userfaultfd the process created (taken with pidfd_getfd; its own copy is closed).
    /// No `UFFDIO_API` has been done on it yet.
    pub uffd: crate::sys::uffd::Uffd,
    /// A pidfd of the process.
    pub pidfd: std::os::fd::OwnedFd,
    /// The private anonymous VMAs left to the daemon, `(start, end)`: their stored pages are
    /// not filled by the restore.
    pub ranges: Vec<(u64, u64)>,
}

/// The private anonymous VMAs of `p` that hold stored (or lazy) pages: the ones a lazy restore
/// leaves to its daemon. Everything else (file-backed private, shared anonymous) is filled
/// eagerly.
pub fn lazy_ranges(set: &ImageSet, p: &ProcessImage) -> Vec<(u64, u64)> {
    p.vmas
        .iter()
        .filter(|v| v.kind == crate::image::VmaKind::Anon && !v.shared)
        .filter(|v| {
            set.pages
                .range(v.start, v.end)
                .any(|(_, r)| !matches!(r, crate::image::PageRef::Zero))
        })
        .map(|v| (v.start, v.end))
        .collect()
}

/// What a lazy restore asks of its daemon, in this order (`start` once per process of the
/// set that has memory left lazy, root first, in tree order).
pub trait LazyHooks {
    /// The process exists (parked, not yet seized). Work that would slow the spawn's fork
    /// down (allocating much memory) can start now.
    fn spawned(&mut self) {}

    /// The uffd is taken (see [`LazyStart`]); the daemon must be serving faults when this
    /// returns, because the rest of the rebuild (and the process, once it runs) may fault.
    fn start(&mut self, ls: LazyStart) -> Result<(), BoxError>;
}

/// A lazy (post-copy) restore: like [`restore`], but the private anonymous memory holding
/// stored pages is registered with a userfaultfd created by the process and left empty;
/// `hooks` start the daemon that serves it. The time to running does not depend on how many
/// pages are left lazy.
pub fn restore_lazy(
    set: &ImageSet,
    source: &dyn PageSource,
    opts: &RestoreOptions,
    hooks: &mut dyn LazyHooks,
) -> Result<RestoreOutcome, RestoreError> {
    let start = Instant::now();
    compat::check_compat(set, opts.pid, true)?;
    tty::check(set, opts.tty.as_ref()).map_err(|reason| RestoreError::Incompatible {
        set: set.id.clone(),
        reason: reason.0,
    })?;
    if opts.verify_state {
        for (_, p) in set.processes() {
            verify::require_record(set, p)?;
        }
    }
    let mut out = rebuild::rebuild(set, source, opts, start, Some(hooks))?;
    out.restore_time = crate::util::us(start.elapsed());
    Ok(out)
}

/// The process image of a final dump, or an `Incompatible` error for a pre-dump.
pub fn process_of(set: &ImageSet) -> Result<&ProcessImage, RestoreError> {
    set.process
        .as_ref()
        .ok_or_else(|| RestoreError::Incompatible {
            set: set.id.clone(),
            reason: format!(
                "it is a {} (pages only); restore its job's final dump",
                set.kind
            ),
        })
}
