//! Post-copy (lazy) restore: the userfaultfd daemon (DESIGN.md §4 "Lazy restore", issue #7).
//!
//! The restore rebuilds the process (every process of a tree) as usual but leaves its private
//! anonymous memory that holds stored pages empty, registered MISSING with a userfaultfd the
//! process created (so kernel-mode accesses fault too). One daemon serves every process of the
//! tree, each an address space with its own pages (its page space of the set). The daemon serves each fault with `UFFDIO_COPY` (plus `prefetch` pages
//! after it), follows fork/mremap/madvise/munmap events, and pushes the pages no fault asked
//! for in large copies until every page is resident: between faults from the moment the process
//! runs ([`PushPolicy::Continuous`]), or only after `idle_push` without a fault
//! ([`PushPolicy::Idle`]). File-backed private VMAs and shared anonymous memory are filled
//! eagerly, as in an eager restore.
//!
//! Safety of the restored process: the daemon never reads its memory. If the page source is
//! lost for `source_timeout`, the daemon SIGKILLs every process of the tree (and the children
//! they forked while pages were missing) through pidfds. If the daemon itself dies, a watchdog
//! process per restored process, holding a copy of its uffd (so pending faults keep waiting
//! instead of reading zero pages), kills it.

mod daemon;
mod missing;
mod source;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub(crate) use source::COUNT_NICE;
pub use source::{DirtyCounts, LazySource, NextPush, PushStream, SourceError, StoreSource};

use crate::image::ImageSet;
use crate::report::LazyReport;
use crate::restore::{PageSource, RestoreOptions, RestoreOutcome};

/// Errors of the `lazy` module.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// The rebuild failed; nothing is left running.
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
    /// The daemon failed on a kernel call; the process was killed.
    #[error("lazy daemon for pid {pid}: {source} (process killed)")]
    Daemon {
        pid: i32,
        #[source]
        source: DaemonError,
    },
    /// The page source was lost; the process was killed.
    #[error("lazy restore of pid {pid}: {reason}; the process was killed")]
    SourceLost { pid: i32, reason: String },
    /// The page source failed while the eager part of the restore read from it.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The daemon thread panicked (a bug in haul); dropping its watchdog on the way made the
    /// watchdog kill the process, which had pages missing.
    #[error("lazy daemon for pid {pid} panicked: the process was killed, its memory incomplete")]
    Panicked { pid: i32 },
}

/// Why the daemon could not start, or stopped on a kernel call. Either way the restored
/// process is killed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// `UFFDIO_API` on the uffd taken from the process failed.
    #[error("uffd handshake: {0}")]
    Api(#[source] crate::sys::SysError),
    /// The kernel lacks an event feature the daemon needs to follow the process.
    #[error("the kernel grants uffd features {got:#x}, lazy restore needs {want:#x}")]
    Features { got: u64, want: u64 },
    /// A lazy range could not be registered for missing-page faults.
    #[error("pid {pid}: registering {start:#x}..{end:#x} for missing-page faults: {source}")]
    Register {
        pid: i32,
        start: u64,
        end: u64,
        #[source]
        source: userfaultfd::Error,
    },
    /// The watchdog process could not be started.
    #[error("starting the watchdog: {0}")]
    Watchdog(#[source] crate::sys::SysError),
    /// The daemon thread could not be started.
    #[error("cannot start the daemon thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The daemon ended (its page source was lost, or it failed) before it could take the
    /// next process of the tree.
    #[error("the lazy daemon ended before it could serve pid {pid}")]
    Ended { pid: i32 },
    /// `poll(2)` over the uffds and pidfds failed.
    #[error("waiting for faults: {0}")]
    Poll(#[source] crate::sys::SysError),
    /// Reading the events of a uffd failed.
    #[error("pid {pid}: reading uffd events: {source}")]
    Read {
        pid: i32,
        #[source]
        source: userfaultfd::Error,
    },
    /// `UFFDIO_ZEROPAGE` failed with an errno other than present/retry/gone.
    #[error("pid {pid}: UFFDIO_ZEROPAGE at {addr:#x}: {source}")]
    Zeropage {
        pid: i32,
        addr: u64,
        #[source]
        source: nix::errno::Errno,
    },
    /// `UFFDIO_COPY` failed with an errno other than present/retry/gone.
    #[error("pid {pid}: UFFDIO_COPY at {addr:#x}: {source}")]
    Copy {
        pid: i32,
        addr: u64,
        #[source]
        source: nix::errno::Errno,
    },
}

/// Order of the background push.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PushOrder {
    /// Ascending addresses.
    #[default]
    Address,
    /// Most often dirtied over the pre-dumps first (counted from the set's chain of pre-dumps
    /// in the store). Without that history (no pre-dumps, or a page server as the source):
    /// address order, and the report says so.
    HotFirst,
}

/// When the background push runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PushPolicy {
    /// From the moment the process runs, whenever no fault waits: faults are served first,
    /// the push goes on between them (a fault waits for at most one push chunk), so a
    /// process that faults all the time still gets every page about as fast as an eager
    /// restore would place it.
    #[default]
    Continuous,
    /// Only after [`LazyOptions::idle_push`] without a fault (the push stops for each
    /// fault and waits for the next quiet spell).
    Idle,
}

impl PushPolicy {
    /// The name the job key `lazy.push`, the flag `--push` and the report's
    /// `lazy.push_policy` use.
    pub fn name(self) -> &'static str {
        match self {
            PushPolicy::Continuous => "continuous",
            PushPolicy::Idle => "idle",
        }
    }

    /// The policy when `push` was asked for (or not) and an idle delay was given explicitly
    /// (or not): without `push`, an explicit idle delay means the idle policy (what it meant
    /// before there was a choice), none means continuous. `None` when the two contradict:
    /// continuous with an idle delay, which it would ignore.
    pub fn resolve(push: Option<PushPolicy>, idle_push_given: bool) -> Option<PushPolicy> {
        match (push, idle_push_given) {
            (Some(PushPolicy::Continuous), true) => None,
            (Some(p), _) => Some(p),
            (None, true) => Some(PushPolicy::Idle),
            (None, false) => Some(PushPolicy::Continuous),
        }
    }
}

/// The `[lazy]` policy.
#[derive(Clone, Debug)]
pub struct LazyOptions {
    /// When the background push runs.
    pub push: PushPolicy,
    /// With [`PushPolicy::Idle`]: no fault for this long, push the remaining pages in the
    /// background. Unused by the continuous push.
    pub idle_push: Duration,
    /// Pages copied after each faulting page (when they are still missing).
    pub prefetch: u32,
    /// Order of the background push.
    pub order: PushOrder,
    /// The page source failing for this long: the process is killed.
    pub source_timeout: Duration,
    /// Pages per `UFFDIO_COPY` of the background push (512 = 2 MiB).
    pub push_pages: usize,
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            push: PushPolicy::Continuous,
            idle_push: Duration::from_secs(5),
            prefetch: 16,
            order: PushOrder::Address,
            source_timeout: Duration::from_secs(10),
            push_pages: 512,
        }
    }
}

impl LazyOptions {
    /// The policy of a job's `[lazy]` table (validated: `push = "continuous"` does not come
    /// with `idle_push`).
    pub fn from_spec(s: &crate::job::LazySpec) -> LazyOptions {
        LazyOptions {
            push: match s.push_policy() {
                crate::job::LazyPush::Continuous => PushPolicy::Continuous,
                crate::job::LazyPush::Idle => PushPolicy::Idle,
            },
            idle_push: s.idle_push().0,
            prefetch: s.prefetch,
            order: match s.order {
                crate::job::LazyOrder::Address => PushOrder::Address,
                crate::job::LazyOrder::HotFirst => PushOrder::HotFirst,
            },
            source_timeout: s.source_timeout.0,
            ..Default::default()
        }
    }
}

/// A restored process (tree) whose memory a daemon thread is still serving.
pub struct LazyRestore {
    /// What the rebuild did; `pid` (and every process of its tree) runs already.
    pub outcome: RestoreOutcome,
    /// Pages left to the daemon (stored pages of the private anonymous VMAs of every process).
    pub pages_lazy: u64,
    daemon: std::thread::JoinHandle<Result<LazyReport, LazyError>>,
}

impl LazyRestore {
    /// The restored process (running; its missing pages still being served).
    pub fn pid(&self) -> i32 {
        self.outcome.pid
    }

    /// Waits until every page of every process is resident (or the processes exited, or the
    /// source was lost and every process killed: then `source_lost` says why) and returns the
    /// lazy figures of the whole tree.
    pub fn wait(self) -> Result<LazyReport, LazyError> {
        let pid = self.outcome.pid;
        self.daemon
            .join()
            .map_err(|_| LazyError::Panicked { pid })?
    }
}

/// Restores `set` lazily: `eager` fills what is not left to the daemon (file-backed private and
/// shared anonymous memory), `lazy` serves the rest. Returns once the process runs; the daemon
/// keeps serving in a thread until [`LazyRestore::wait`] says every page is resident.
pub fn restore_lazy(
    set: &Arc<ImageSet>,
    eager: &dyn PageSource,
    lazy: Box<dyn LazySource>,
    ropts: &RestoreOptions,
    lopts: &LazyOptions,
) -> Result<LazyRestore, LazyError> {
    let start = Instant::now();
    let running = Arc::new(OnceLock::new());
    let mut hooks = Hooks {
        set,
        source: Some(lazy),
        lopts,
        start,
        running: running.clone(),
        started: None,
    };
    let outcome = crate::restore::restore_lazy(set, eager, ropts, &mut hooks);
    // The processes run from now on (or were killed): the daemon pushes, and may end.
    let _ = running.set(Instant::now());
    let started = hooks.started.take();
    if let Some(s) = &started {
        s.wake();
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // The rebuild killed the process; the daemon sees it go and ends.
            if let Some(s) = started {
                end_after_failed_rebuild(&set.id, s.join);
            }
            return Err(e.into());
        }
    };
    let Some(s) = started else {
        // Nothing was left lazy (no private anonymous memory with stored pages).
        return Ok(LazyRestore {
            outcome,
            pages_lazy: 0,
            daemon: {
                let push_policy = lopts.push.name().into();
                std::thread::spawn(move || {
                    Ok(LazyReport {
                        push_policy,
                        ..Default::default()
                    })
                })
            },
        });
    };
    let pages_lazy = set
        .processes()
        .map(|(space, p)| {
            let anon: Vec<(u64, u64)> = p
                .vmas
                .iter()
                .filter(|v| v.kind == crate::image::VmaKind::Anon && !v.shared)
                .map(|v| (v.start, v.end))
                .collect();
            missing::Missing::new(set.clone(), space, &anon).left()
        })
        .sum();
    Ok(LazyRestore {
        outcome,
        pages_lazy,
        daemon: s.join,
    })
}

/// The restore's hooks of [`restore_lazy`]: start the daemon when the uffd is there.
struct Hooks<'a> {
    set: &'a Arc<ImageSet>,
    source: Option<Box<dyn LazySource>>,
    lopts: &'a LazyOptions,
    start: Instant,
    running: Arc<OnceLock<Instant>>,
    started: Option<daemon::Started>,
}

impl Hooks<'_> {
    /// The first process starts the daemon; every other is handed to it.
    fn start_daemon(&mut self, ls: crate::restore::LazyStart) -> Result<(), DaemonError> {
        if let Some(s) = &self.started {
            return daemon::add(s, ls);
        }
        let Some(src) = self.source.take() else {
            // The first start failed (and failed the restore): nothing is served.
            return Err(DaemonError::Ended { pid: ls.pid });
        };
        let s = daemon::start(
            self.set.clone(),
            ls,
            src,
            self.lopts.clone(),
            self.start,
            self.running.clone(),
        )?;
        self.started = Some(s);
        Ok(())
    }
}

impl crate::restore::LazyHooks for Hooks<'_> {
    fn start(&mut self, ls: crate::restore::LazyStart) -> Result<(), crate::restore::BoxError> {
        Ok(self.start_daemon(ls)?)
    }
}

/// Waits for the daemon of a restore whose rebuild failed (and killed the process), so that
/// no thread outlives the restore; says what its end means, since nobody else will see it.
fn end_after_failed_rebuild(
    set: &str,
    join: std::thread::JoinHandle<Result<LazyReport, LazyError>>,
) {
    match join.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(
            set,
            "lazy daemon after the failed rebuild: {}",
            crate::util::error_chain(&e)
        ),
        Err(_) => tracing::error!(
            set,
            "the lazy daemon panicked while the failed restore was undone (a bug in haul); \
             its watchdog kills the restored process, so nothing is left running"
        ),
    }
}

/// Percentile `q` (0..=100) of `v` (sorted in place), 0 when empty.
pub(crate) fn percentile(v: &mut [u64], q: u32) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) * q as usize + 50) / 100;
    v[i.min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_picks_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&mut v, 50), 51);
        assert_eq!(percentile(&mut v, 99), 99);
        assert_eq!(percentile(&mut [], 50), 0);
        assert_eq!(percentile(&mut [7], 99), 7);
    }
}
