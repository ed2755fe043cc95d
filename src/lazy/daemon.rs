//! The userfaultfd daemon: one thread serving faults, following events, and pushing pages.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use super::{LazyError, LazyOptions, LazySource};
use crate::image::{ImageSet, PageId, PageRef, PAGE_SIZE};
use crate::report::LazyReport;
use crate::restore::LazyStart;
use crate::sys::uffd::{self, Uffd};
use crate::sys::uffd_restore::{self as ur, CopyResult, Watchdog};

const PAGE: u64 = PAGE_SIZE as u64;
/// Longest poll while idle: the daemon looks at its clock at least this often.
const MAX_POLL_MS: u64 = 200;

/// A page still missing in the process: stored (fetched from the source) or recorded zero
/// (copied as zeroes with its neighbours, so the memory is as it was at the dump).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pend {
    Stored(PageId),
    Zero,
}

/// One address space being served: the restored process, or a child it forked while pages
/// were missing (the kernel hands the child's uffd over with `UFFD_EVENT_FORK`).
struct Space {
    pid: i32,
    pidfd: Option<OwnedFd>,
    uffd: Uffd,
    pending: BTreeMap<u64, Pend>,
    dead: bool,
}

pub(super) struct Started {
    pub join: std::thread::JoinHandle<Result<LazyReport, LazyError>>,
    pub pages_lazy: u64,
}

/// Sets up the uffd (API with the event features, MISSING registration of `ls.ranges`), forks
/// the watchdog, and starts the daemon thread.
pub(super) fn start(
    set: &ImageSet,
    ls: LazyStart,
    source: Box<dyn LazySource>,
    opts: LazyOptions,
    start: Instant,
) -> Result<Started, String> {
    let want = uffd::UFFD_FEATURE_EVENT_FORK
        | uffd::UFFD_FEATURE_EVENT_REMAP
        | uffd::UFFD_FEATURE_EVENT_REMOVE
        | uffd::UFFD_FEATURE_EVENT_UNMAP;
    let (got, _) = ls.uffd.api(want).map_err(|e| e.to_string())?;
    if got & want != want {
        return Err(format!(
            "the kernel grants uffd features {got:#x}, lazy restore needs {want:#x}"
        ));
    }
    let mut pending = BTreeMap::new();
    for &(s, e) in &ls.ranges {
        ls.uffd
            .register(s, e - s, uffd::UFFDIO_REGISTER_MODE_MISSING)
            .map_err(|e| format!("pid {}: {e}", ls.pid))?;
        for (a, r) in set.pages.range(s, e) {
            pending.insert(
                a,
                match r {
                    PageRef::Stored(id) | PageRef::Lazy(id) => Pend::Stored(id),
                    PageRef::Zero => Pend::Zero,
                },
            );
        }
    }
    let pages_lazy = pending
        .values()
        .filter(|p| matches!(p, Pend::Stored(_)))
        .count() as u64;
    let watchdog = ur::spawn_watchdog(&ls.uffd, &ls.pidfd).map_err(|e| e.to_string())?;
    let pid = ls.pid;
    let d = Daemon {
        pid,
        set: set.id.clone(),
        spaces: vec![Space {
            pid,
            pidfd: Some(ls.pidfd),
            uffd: ls.uffd,
            pending,
            dead: false,
        }],
        source,
        opts,
        start,
        watchdog: Some(watchdog),
        stats: Stats::default(),
        buf: Vec::new(),
    };
    let join = std::thread::Builder::new()
        .name(format!("haul-lazy-{pid}"))
        .spawn(move || d.run())
        .map_err(|e| format!("cannot start the daemon thread: {e}"))?;
    Ok(Started { join, pages_lazy })
}

#[derive(Default)]
struct Stats {
    faults: u64,
    latencies: Vec<u64>,
    prefetched: u64,
    pushed: u64,
}

/// How serving ended.
enum End {
    /// Every page is resident (or every process that needed pages is gone).
    Done,
}

/// Why serving stopped early: the process(es) are killed.
enum Fatal {
    Source(String),
    Kernel(String),
}

/// Outcome of one copy of a run of pages.
enum Copied {
    /// The run is resident (copied now or found present).
    All,
    /// An event is pending (`EAGAIN`): read events, then retry.
    Again,
    /// The address space is gone (`ESRCH`).
    Gone,
}

struct Daemon {
    pid: i32,
    set: String,
    spaces: Vec<Space>,
    source: Box<dyn LazySource>,
    opts: LazyOptions,
    start: Instant,
    watchdog: Option<Watchdog>,
    stats: Stats,
    buf: Vec<u8>,
}

impl Daemon {
    fn run(mut self) -> Result<LazyReport, LazyError> {
        let r = self.serve();
        let mut report = LazyReport {
            faults_served: self.stats.faults,
            fault_latency_p50: super::percentile(&mut self.stats.latencies, 50),
            fault_latency_p99: super::percentile(&mut self.stats.latencies, 99),
            pages_prefetched: self.stats.prefetched,
            pages_pushed: self.stats.pushed,
            time_to_all_resident: crate::util::us(self.start.elapsed()),
            bytes_network: self.source.bytes_network(),
            source_lost: None,
        };
        match r {
            Ok(End::Done) => {
                if let Some(w) = self.watchdog.take() {
                    w.release();
                }
                tracing::info!(pid = self.pid, "every page is resident");
                Ok(report)
            }
            Err(f) => {
                self.kill_all();
                // Dropping the watchdog without "done": it kills the process too, then exits.
                self.watchdog = None;
                match f {
                    Fatal::Source(reason) => {
                        tracing::error!(pid = self.pid, "{reason}: process killed");
                        report.source_lost = Some(reason);
                        report.time_to_all_resident = 0;
                        Ok(report)
                    }
                    Fatal::Kernel(message) => Err(LazyError::Daemon {
                        pid: self.pid,
                        message: format!("{message} (process killed)"),
                    }),
                }
            }
        }
    }

    fn kill_all(&self) {
        for sp in &self.spaces {
            if let Some(fd) = &sp.pidfd {
                let _ = ur::pidfd_kill(fd, libc::SIGKILL);
            } else if !sp.dead {
                let _ = crate::sys::process::kill(sp.pid, libc::SIGKILL);
            }
        }
    }

    fn serve(&mut self) -> Result<End, Fatal> {
        let mut faults: VecDeque<(usize, u64, Instant)> = VecDeque::new();
        let mut last_fault = Instant::now();
        loop {
            for sp in self.spaces.iter_mut() {
                if sp.dead {
                    sp.pending.clear();
                }
            }
            if faults.is_empty() && self.spaces.iter().all(|s| s.pending.is_empty()) {
                return Ok(End::Done);
            }
            let idle_due = last_fault + self.opts.idle_push;
            let now = Instant::now();
            let timeout = if !faults.is_empty() || now >= idle_due {
                0
            } else {
                (idle_due - now).as_millis().min(u128::from(MAX_POLL_MS)) as i32 + 1
            };
            let mut fds = Vec::new();
            let mut who = Vec::new();
            for (i, sp) in self.spaces.iter().enumerate().filter(|(_, s)| !s.dead) {
                fds.push(sp.uffd.as_raw_fd());
                who.push((i, false));
                if let Some(p) = &sp.pidfd {
                    fds.push(p.as_raw_fd());
                    who.push((i, true));
                }
            }
            let ready =
                ur::poll_readable(&fds, timeout).map_err(|e| Fatal::Kernel(e.to_string()))?;
            for (k, &(i, is_pidfd)) in who.iter().enumerate() {
                if !ready[k] {
                    continue;
                }
                if is_pidfd {
                    tracing::debug!(pid = self.spaces[i].pid, "process exited");
                    self.spaces[i].dead = true;
                } else {
                    self.read_events(i, &mut faults)?;
                }
            }
            if !faults.is_empty() {
                last_fault = Instant::now();
            }
            // Serve the faults read so far; one that meets a pending event waits for it.
            let mut again = VecDeque::new();
            while let Some((i, addr, t0)) = faults.pop_front() {
                if self.spaces[i].dead {
                    continue;
                }
                match self.serve_fault(i, addr)? {
                    Copied::All => {
                        self.stats.faults += 1;
                        self.stats.latencies.push(crate::util::us(t0.elapsed()));
                    }
                    Copied::Again => again.push_back((i, addr, t0)),
                    Copied::Gone => self.spaces[i].dead = true,
                }
            }
            faults = again;
            if faults.is_empty() && Instant::now() >= last_fault + self.opts.idle_push {
                self.push_chunk()?;
            }
        }
    }

    /// Reads every pending message of space `i`: faults are queued, events applied.
    fn read_events(
        &mut self,
        i: usize,
        faults: &mut VecDeque<(usize, u64, Instant)>,
    ) -> Result<(), Fatal> {
        loop {
            let m = match self.spaces[i].uffd.read_msg() {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Fatal::Kernel(e.to_string())),
            };
            match m.event {
                uffd::UFFD_EVENT_PAGEFAULT => faults.push_back((i, m.arg[1], Instant::now())),
                uffd::UFFD_EVENT_FORK => self.on_fork(i, m.arg[0] as u32)?,
                uffd::UFFD_EVENT_REMAP => {
                    let (from, to, len) = (m.arg[0], m.arg[1], m.arg[2]);
                    let sp = &mut self.spaces[i];
                    let moved: Vec<(u64, Pend)> = sp
                        .pending
                        .range(from..from.saturating_add(len))
                        .map(|(a, p)| (*a, *p))
                        .collect();
                    for (a, _) in &moved {
                        sp.pending.remove(a);
                    }
                    for (a, p) in moved {
                        sp.pending.insert(a - from + to, p);
                    }
                    tracing::debug!(pid = sp.pid, "mremap {from:#x} -> {to:#x} ({len:#x})");
                }
                uffd::UFFD_EVENT_REMOVE | uffd::UFFD_EVENT_UNMAP => {
                    let (s, e) = (m.arg[0], m.arg[1]);
                    let sp = &mut self.spaces[i];
                    let gone: Vec<u64> = sp.pending.range(s..e).map(|(a, _)| *a).collect();
                    for a in gone {
                        sp.pending.remove(&a);
                    }
                }
                other => tracing::warn!("uffd: unexpected event {other:#x}"),
            }
        }
    }

    /// A child forked while pages were missing: its uffd (same registrations) arrives with the
    /// event; its missing pages are the parent's missing pages.
    fn on_fork(&mut self, parent: usize, fd: u32) -> Result<(), Fatal> {
        let uffd = ur::uffd_from_fork_event(fd).map_err(|e| Fatal::Kernel(e.to_string()))?;
        let ppid = self.spaces[parent].pid;
        let known: Vec<i32> = self.spaces.iter().map(|s| s.pid).collect();
        let child = children_of(ppid).into_iter().find(|c| !known.contains(c));
        let pidfd = child.and_then(|c| crate::sys::process::pidfd_open(c).ok());
        tracing::debug!(ppid, child = ?child, "fork with pages missing");
        let pending = self.spaces[parent].pending.clone();
        self.spaces.push(Space {
            pid: child.unwrap_or(0),
            pidfd,
            uffd,
            pending,
            dead: false,
        });
        Ok(())
    }

    fn serve_fault(&mut self, i: usize, addr: u64) -> Result<Copied, Fatal> {
        let page = addr & !(PAGE - 1);
        let sp = &self.spaces[i];
        if !sp.pending.contains_key(&page) {
            // Never stored (or served already by a racing fault): a zero page, unless present.
            return match sp.uffd.zeropage(page, PAGE, 0) {
                Ok(_) => Ok(Copied::All),
                Err(e) => match e.errno() {
                    Some(libc::EEXIST) => {
                        let _ = sp.uffd.wake(page, PAGE);
                        Ok(Copied::All)
                    }
                    Some(libc::EAGAIN) => Ok(Copied::Again),
                    Some(libc::ESRCH) => Ok(Copied::Gone),
                    _ => Err(Fatal::Kernel(format!("pid {}: {e}", sp.pid))),
                },
            };
        }
        let max = 1 + self.opts.prefetch as usize;
        let mut run = Vec::with_capacity(max);
        let mut a = page;
        while run.len() < max {
            match sp.pending.get(&a) {
                Some(p) => run.push((a, *p)),
                None => break,
            }
            a += PAGE;
        }
        let n = run.len() as u64;
        let r = self.copy_run(i, &run)?;
        if matches!(r, Copied::All) {
            self.stats.prefetched += n - 1;
        }
        Ok(r)
    }

    /// Pushes the next `push_pages` missing pages (address order; hot-first has no dirty
    /// counts to go by yet) of the first space that has any.
    fn push_chunk(&mut self) -> Result<(), Fatal> {
        let Some(i) = self
            .spaces
            .iter()
            .position(|s| !s.dead && !s.pending.is_empty())
        else {
            return Ok(());
        };
        let take: Vec<(u64, Pend)> = self.spaces[i]
            .pending
            .iter()
            .take(self.opts.push_pages.max(1))
            .map(|(a, p)| (*a, *p))
            .collect();
        let mut runs: Vec<Vec<(u64, Pend)>> = Vec::new();
        for (a, p) in take {
            match runs.last_mut() {
                Some(r) if r.last().map(|(l, _)| l + PAGE) == Some(a) => r.push((a, p)),
                _ => runs.push(vec![(a, p)]),
            }
        }
        for run in runs {
            let n = run.len() as u64;
            match self.copy_run(i, &run)? {
                Copied::All => self.stats.pushed += n,
                Copied::Again => return Ok(()),
                Copied::Gone => {
                    self.spaces[i].dead = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Copies a run of contiguous missing pages into space `i` (one `UFFDIO_COPY`, more when
    /// some page turns out present), then forgets them.
    fn copy_run(&mut self, i: usize, run: &[(u64, Pend)]) -> Result<Copied, Fatal> {
        let Some(&(start, _)) = run.first() else {
            return Ok(Copied::All);
        };
        let ids: Vec<(u64, PageId)> = run
            .iter()
            .filter_map(|(a, p)| match p {
                Pend::Stored(id) => Some((*a, *id)),
                Pend::Zero => None,
            })
            .collect();
        let mut fetched = Vec::with_capacity(ids.len() * PAGE_SIZE);
        let t = Instant::now();
        if let Err(e) = self.source.fetch(&self.set, &ids, &mut fetched) {
            return Err(Fatal::Source(e.to_string()));
        }
        if fetched.len() != ids.len() * PAGE_SIZE {
            return Err(Fatal::Source(format!(
                "the source returned {} bytes for {} pages",
                fetched.len(),
                ids.len()
            )));
        }
        tracing::trace!("fetched {} pages in {:?}", ids.len(), t.elapsed());
        self.buf.clear();
        self.buf.resize(run.len() * PAGE_SIZE, 0);
        let mut k = 0;
        for (j, (_, p)) in run.iter().enumerate() {
            if let Pend::Stored(_) = p {
                self.buf[j * PAGE_SIZE..(j + 1) * PAGE_SIZE]
                    .copy_from_slice(&fetched[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]);
                k += 1;
            }
        }
        let sp = &mut self.spaces[i];
        let total = self.buf.len() as u64;
        let mut off = 0u64;
        let result = loop {
            if off >= total {
                break Copied::All;
            }
            let data = &self.buf[off as usize..];
            match ur::copy_partial(&sp.uffd, start + off, data, 0) {
                CopyResult::Done => {
                    off = total;
                }
                CopyResult::Partial { copied, errno } => {
                    off += copied - copied % PAGE;
                    match errno {
                        // That page is there already: skip it (and wake whoever waits on it).
                        libc::EEXIST => {
                            let _ = sp.uffd.wake(start + off, PAGE);
                            off += PAGE;
                        }
                        libc::EAGAIN if copied > 0 => {}
                        libc::EAGAIN => break Copied::Again,
                        libc::ESRCH => break Copied::Gone,
                        e => {
                            return Err(Fatal::Kernel(format!(
                                "pid {}: UFFDIO_COPY at {:#x}: {}",
                                sp.pid,
                                start + off,
                                std::io::Error::from_raw_os_error(e)
                            )))
                        }
                    }
                }
            }
        };
        let done_to = start + off.min(total);
        let gone: Vec<u64> = sp.pending.range(start..done_to).map(|(a, _)| *a).collect();
        for a in gone {
            sp.pending.remove(&a);
        }
        if matches!(result, Copied::Gone) {
            sp.dead = true;
        }
        Ok(result)
    }
}

/// The children of every thread of `pid` (`/proc/PID/task/*/children`).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|w| w.parse::<i32>().ok()));
        }
    }
    out
}
