//! The userfaultfd daemon: one thread serving faults, following events, and pushing pages.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Instant;

use super::missing::Missing;
use super::{DaemonError, LazyError, LazyOptions, LazySource, PushPolicy, PushStream, SourceError};
use crate::image::{ImageSet, PageId, PAGE_SIZE};
use crate::report::LazyReport;
use crate::restore::LazyStart;
use crate::store::StreamBatch;
use crate::sys::uffd;
use crate::sys::uffd_restore::{self as ur, CopyResult, Watchdog};
use nix::errno::Errno;
use userfaultfd::{Event, Uffd};

mod push;
mod resident;

const PAGE: u64 = PAGE_SIZE as u64;
/// Longest poll while idle: the daemon looks at its clock at least this often.
const MAX_POLL_MS: u64 = 200;
/// Longest wait for the next batch of the push's stream before looking at faults again.
const STREAM_WAIT: std::time::Duration = std::time::Duration::from_micros(50);
/// While pushing a batch, the daemon looks for waiting faults every this many pages.
const CHECK_PAGES: usize = 16;
/// The push copies runs of up to this many zero pages between missing ones along.
const BRIDGE_PAGES: usize = 4;

/// One address space being served: a restored process of the tree (each with its own page
/// space of the set), or a child one forked while pages were missing (the kernel hands the
/// child's uffd over with `UFFD_EVENT_FORK`; it misses what its parent missed).
struct Space {
    pid: i32,
    /// A process of the restored tree (the push's stream covers it), not a fork of one.
    tree: bool,
    pidfd: Option<OwnedFd>,
    /// The `userfaultfd` crate's handle of the space's uffd.
    uffd: Uffd,
    /// Stored pages still missing. Zero and never-touched pages are not listed: a fault on
    /// one gets the zero page, and once every stored page is resident the uffd is closed and
    /// the untouched ones read as zero the ordinary way.
    pending: Missing,
    dead: bool,
}

pub(super) struct Started {
    pub join: std::thread::JoinHandle<Result<LazyReport, LazyError>>,
    image: Arc<ImageSet>,
    /// Hands the daemon the next process of the tree.
    add: mpsc::Sender<Added>,
    /// A byte here wakes the daemon's poll to take what `add` holds.
    wake: UnixStream,
}

/// A process of the tree handed to the running daemon (by [`add`]).
struct Added {
    space: Space,
    set_space: u16,
    ranges: Vec<(u64, u64)>,
    watchdog: Option<Watchdog>,
    /// Answered once the daemon serves the process's faults.
    ack: mpsc::SyncSender<()>,
}

/// A process's uffd taken over (see [`take`]).
struct Taken {
    space: Space,
    ranges: Vec<(u64, u64)>,
    watchdog: Option<Watchdog>,
}

/// Takes over the uffd of `ls`: the handshake with the event features, the MISSING
/// registration of `ls.ranges`, and a watchdog holding a copy of it (none when nothing is
/// registered: nothing can wait on a fault then).
fn take(set: &Arc<ImageSet>, ls: LazyStart) -> Result<Taken, DaemonError> {
    let want = uffd::UFFD_FEATURE_EVENT_FORK
        | uffd::UFFD_FEATURE_EVENT_REMAP
        | uffd::UFFD_FEATURE_EVENT_REMOVE
        | uffd::UFFD_FEATURE_EVENT_UNMAP;
    let pid = ls.pid;
    // The handshake stays haul's own: the crate only makes it on uffds it creates itself.
    let (got, _) = ls.uffd.api(want).map_err(DaemonError::Api)?;
    if got & want != want {
        return Err(DaemonError::Features { got, want });
    }
    let handler = ls.uffd.into_handler();
    for &(start, end) in &ls.ranges {
        handler
            .register(start as *mut libc::c_void, (end - start) as usize)
            .map_err(|source| DaemonError::Register {
                pid,
                start,
                end,
                source,
            })?;
    }
    let watchdog = if ls.ranges.is_empty() {
        None
    } else {
        Some(ur::spawn_watchdog(handler.as_fd(), &ls.pidfd).map_err(DaemonError::Watchdog)?)
    };
    let space = Space {
        pid,
        tree: true,
        pidfd: Some(ls.pidfd),
        uffd: handler,
        // Filled by the daemon thread (counting the missing pages takes a walk over the
        // page table, which the restore need not wait for).
        pending: Missing::new(set.clone(), ls.space, &[]),
        dead: false,
    };
    Ok(Taken {
        space,
        ranges: ls.ranges,
        watchdog,
    })
}

/// Sets up the uffd of the first process of the tree the restore hands over (see [`take`])
/// and starts the daemon thread; [`add`] hands it the others. It pushes only once `running`
/// says the restore is over (every process runs, since that instant; [`Started::wake`] tells
/// the daemon), so the push never slows the restore down, and it ends no earlier.
pub(super) fn start(
    set: Arc<ImageSet>,
    ls: LazyStart,
    source: Box<dyn LazySource>,
    opts: LazyOptions,
    start: Instant,
    running: Arc<OnceLock<Instant>>,
) -> Result<Started, DaemonError> {
    let pid = ls.pid;
    let first = ls.space;
    let Taken {
        space,
        ranges,
        watchdog,
    } = take(&set, ls)?;
    let (tx, adds) = mpsc::channel();
    let (wake_r, wake) = UnixStream::pair().map_err(DaemonError::Thread)?;
    wake_r.set_nonblocking(true).map_err(DaemonError::Thread)?;
    let d = Daemon {
        pid,
        set: set.id.clone(),
        image: set.clone(),
        spaces: vec![space],
        source,
        opts,
        start,
        watchdogs: watchdog.into_iter().collect(),
        stats: Stats::default(),
        buf: Vec::new(),
        stream: Stream::NotStarted,
        running,
        adds,
        wake: wake_r,
        lazy_total: 0,
        sampler: resident::Sampler::new(),
        counting: false,
        listing: None,
    };
    let join = std::thread::Builder::new()
        .name(format!("haul-lazy-{pid}"))
        .spawn(move || {
            let mut d = d;
            d.spaces[0].pending = Missing::new(d.image.clone(), first, &ranges);
            d.lazy_total = d.spaces[0].pending.left();
            d.run()
        })
        .map_err(DaemonError::Thread)?;
    Ok(Started {
        join,
        image: set,
        add: tx,
        wake,
    })
}

impl Started {
    /// Wakes the daemon to look again at what it waits for (the restore is over).
    pub(super) fn wake(&self) {
        let _ = (&self.wake).write(b"+");
    }
}

/// Hands the next process of the tree to the running daemon; returns once the daemon serves
/// its faults. If the daemon ended (the source was lost), the process is killed by its
/// watchdog and the restore fails.
pub(super) fn add(started: &Started, ls: LazyStart) -> Result<(), DaemonError> {
    let pid = ls.pid;
    let set_space = ls.space;
    let t = take(&started.image, ls)?;
    let (ack, acked) = mpsc::sync_channel(1);
    let a = Added {
        space: t.space,
        set_space,
        ranges: t.ranges,
        watchdog: t.watchdog,
        ack,
    };
    // A send to a daemon that ended drops `a`: its watchdog kills the process.
    started
        .add
        .send(a)
        .map_err(|_| DaemonError::Ended { pid })?;
    started.wake();
    acked.recv().map_err(|_| DaemonError::Ended { pid })
}

#[derive(Default)]
struct Stats {
    faults: u64,
    latencies: Vec<u64>,
    prefetched: u64,
    pushed: u64,
    push_order: String,
    /// Time the push spent copying in, and waiting for the source's stream.
    push_copy: std::time::Duration,
    push_wait: std::time::Duration,
    /// The longest single copy of the push (µs): no fault is looked for during one.
    push_copy_max: u64,
}

/// How serving ended.
enum End {
    /// Every page is resident (or every process that needed pages is gone).
    Done,
}

/// Why serving stopped early: the process(es) are killed.
enum Fatal {
    /// The page source failed: the report's `source_lost` says why.
    Source(SourceError),
    /// A kernel call failed: the restore fails with it.
    Kernel(DaemonError),
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
    /// The root's pid (what messages name the restore by).
    pid: i32,
    set: String,
    image: Arc<ImageSet>,
    spaces: Vec<Space>,
    source: Box<dyn LazySource>,
    opts: LazyOptions,
    start: Instant,
    /// One per process of the tree with memory left lazy.
    watchdogs: Vec<Watchdog>,
    stats: Stats,
    buf: Vec<u8>,
    stream: Stream,
    /// Set once the restore is over (every process runs, since then; or the restore failed
    /// and killed them): the push waits for it, and serving does not end before it.
    running: Arc<OnceLock<Instant>>,
    /// The other processes of the tree, as the restore reaches them.
    adds: mpsc::Receiver<Added>,
    wake: UnixStream,
    /// Pages the tree's processes missed when the daemon took them.
    lazy_total: u64,
    /// Residency over time, for the report.
    sampler: resident::Sampler,
    /// The push waits for its order: the source's counts (see `LazySource::dirty_counts`),
    /// then the list (`listing`).
    counting: bool,
    /// The push list being worked out on a thread of its own (`push_list`).
    listing: Option<mpsc::Receiver<Vec<(u64, crate::image::PageRef)>>>,
}

/// The background read that feeds the push of the tree's spaces.
enum Stream {
    NotStarted,
    /// Reading; `partial`: a batch copied up to its `.1`th page when a fault came.
    Running {
        st: Box<dyn PushStream>,
        partial: Option<(StreamBatch, usize)>,
    },
    /// Exhausted, or the source has none: the push fetches chunk by chunk.
    Over,
}

impl Daemon {
    fn run(mut self) -> Result<LazyReport, LazyError> {
        let r = self.serve();
        let mut report = LazyReport {
            faults_served: self.stats.faults,
            fault_latency_histogram: crate::report::LatencyBucket::log2_histogram(
                &self.stats.latencies,
            ),
            fault_latency_p50: super::percentile(&mut self.stats.latencies, 50),
            fault_latency_p99: super::percentile(&mut self.stats.latencies, 99),
            pages_prefetched: self.stats.prefetched,
            pages_pushed: self.stats.pushed,
            time_to_all_resident: crate::util::us(self.start.elapsed()),
            bytes_network: self.source.bytes_network(),
            push_order: match std::mem::take(&mut self.stats.push_order) {
                o if o.is_empty() => "none (every page came by fault)".into(),
                o => o,
            },
            source_lost: None,
            push_policy: self.opts.push.name().into(),
            resident: std::mem::replace(&mut self.sampler, resident::Sampler::new())
                .finish(Instant::now(), self.pages_resident()),
        };
        match r {
            Ok(End::Done) => {
                for w in self.watchdogs.drain(..) {
                    w.release();
                }
                tracing::info!(pid = self.pid, "every page is resident");
                tracing::debug!(
                    "push: {:?} copying in, {:?} waiting for the source; the longest copy \
                     {}µs (what a fault may wait behind)",
                    self.stats.push_copy,
                    self.stats.push_wait,
                    self.stats.push_copy_max
                );
                Ok(report)
            }
            Err(f) => {
                self.kill_all();
                // Dropping the watchdogs without "done": each kills its process too, then
                // exits; so does the watchdog of a process handed over but not yet taken.
                self.watchdogs.clear();
                while let Ok(a) = self.adds.try_recv() {
                    let _ = a
                        .space
                        .pidfd
                        .as_ref()
                        .map(|fd| ur::pidfd_kill(fd, libc::SIGKILL));
                }
                match f {
                    Fatal::Source(e) => {
                        // The report carries it, and whoever waits says it (once).
                        let reason = crate::util::error_chain(&e);
                        tracing::debug!(pid = self.pid, "{reason}: process killed");
                        report.source_lost = Some(reason);
                        report.time_to_all_resident = 0;
                        Ok(report)
                    }
                    Fatal::Kernel(source) => Err(LazyError::Daemon {
                        pid: self.pid,
                        source,
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
        let continuous = self.opts.push == PushPolicy::Continuous;
        loop {
            self.take_added();
            let running = self.running.get().copied();
            if let (Some(at), false) = (running, self.sampler.started()) {
                self.sampler.start(at, self.pages_resident());
            }
            if faults.is_empty()
                && running.is_some()
                && self.spaces.iter().all(|s| s.dead || s.pending.is_empty())
            {
                return Ok(End::Done);
            }
            let now = Instant::now();
            let idle_due = last_fault + self.opts.idle_push;
            let timeout = if !faults.is_empty() {
                0
            } else if running.is_none() {
                // The restore wakes the daemon once it is over.
                MAX_POLL_MS as i32
            } else if continuous || now >= idle_due {
                // Push time: look for faults between push steps, never waiting.
                0
            } else {
                (idle_due - now).as_millis().min(u128::from(MAX_POLL_MS)) as i32 + 1
            };
            // Waiting for the push order: no spinning on a core the source needs.
            let timeout = if timeout == 0 && faults.is_empty() && self.counting {
                1
            } else {
                timeout
            };
            let timeout = match self.sampler.due_in(now, self.pages_resident()) {
                Some(d) => timeout.min(d.as_millis() as i32 + 1),
                None => timeout,
            };
            let mut fds = vec![self.wake.as_raw_fd()];
            let mut who = vec![(usize::MAX, false)];
            for (i, sp) in self.spaces.iter().enumerate().filter(|(_, s)| !s.dead) {
                fds.push(sp.uffd.as_raw_fd());
                who.push((i, false));
                if let Some(p) = &sp.pidfd {
                    fds.push(p.as_raw_fd());
                    who.push((i, true));
                }
            }
            let ready = ur::poll_readable(&fds, timeout)
                .map_err(|e| Fatal::Kernel(DaemonError::Poll(e)))?;
            for (k, &(i, is_pidfd)) in who.iter().enumerate() {
                if !ready[k] {
                    continue;
                }
                if i == usize::MAX {
                    // Taken at the top of the loop.
                    let mut b = [0u8; 64];
                    while matches!((&self.wake).read(&mut b), Ok(n) if n > 0) {}
                } else if is_pidfd {
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
                match self.serve_fault(i, addr, t0)? {
                    Copied::All => {}
                    Copied::Again => again.push_back((i, addr, t0)),
                    Copied::Gone => self.spaces[i].dead = true,
                }
            }
            faults = again;
            if faults.is_empty()
                && running.is_some()
                && (continuous || Instant::now() >= last_fault + self.opts.idle_push)
            {
                self.push()?;
            }
            self.sampler.tick(Instant::now(), self.pages_resident());
        }
    }

    /// Lazy pages of the tree's processes no longer missing: copied in, or their mapping or
    /// their process gone.
    fn pages_resident(&self) -> u64 {
        let left: u64 = self
            .spaces
            .iter()
            .filter(|s| s.tree && !s.dead)
            .map(|s| s.pending.left())
            .sum();
        self.lazy_total.saturating_sub(left)
    }

    /// Takes the processes of the tree the restore handed over since last looked, and says
    /// it serves them.
    fn take_added(&mut self) {
        while let Ok(a) = self.adds.try_recv() {
            let mut sp = a.space;
            sp.pending = Missing::new(self.image.clone(), a.set_space, &a.ranges);
            self.lazy_total += sp.pending.left();
            tracing::debug!(pid = sp.pid, pages = sp.pending.left(), "serving");
            self.spaces.push(sp);
            self.watchdogs.extend(a.watchdog);
            let _ = a.ack.send(());
        }
    }

    /// Reads every pending message of space `i`: faults are queued, events applied.
    fn read_events(
        &mut self,
        i: usize,
        faults: &mut VecDeque<(usize, u64, Instant)>,
    ) -> Result<(), Fatal> {
        loop {
            let ev = match self.spaces[i].uffd.read_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                // The message is read (and dropped) already: go on with the next.
                Err(userfaultfd::Error::UnrecognizedEvent(other)) => {
                    tracing::warn!("uffd: unexpected event {other:#x}");
                    continue;
                }
                // A short read: nothing more to read this round.
                Err(userfaultfd::Error::IncompleteMsg { .. }) => return Ok(()),
                Err(source) => {
                    return Err(Fatal::Kernel(DaemonError::Read {
                        pid: self.spaces[i].pid,
                        source,
                    }))
                }
            };
            match ev {
                Event::Pagefault { addr, .. } => faults.push_back((i, addr as u64, Instant::now())),
                Event::Fork { uffd } => self.on_fork(i, uffd),
                Event::Remap { from, to, len } => {
                    let (from, to, len) = (from as u64, to as u64, len as u64);
                    let sp = &mut self.spaces[i];
                    for (a, id) in sp.pending.take_range(from, from.saturating_add(len)) {
                        sp.pending.insert_moved(a - from + to, id);
                    }
                    tracing::debug!(pid = sp.pid, "mremap {from:#x} -> {to:#x} ({len:#x})");
                }
                Event::Remove { start, end } | Event::Unmap { start, end } => {
                    let sp = &mut self.spaces[i];
                    sp.pending.take_range(start as u64, end as u64);
                }
            }
        }
    }

    /// A child forked while pages were missing: its uffd (same registrations) arrives with the
    /// event; its missing pages are the parent's missing pages.
    fn on_fork(&mut self, parent: usize, uffd: Uffd) {
        let ppid = self.spaces[parent].pid;
        let known: Vec<i32> = self.spaces.iter().map(|s| s.pid).collect();
        let child = children_of(ppid).into_iter().find(|c| !known.contains(c));
        let pidfd = child.and_then(|c| crate::sys::process::pidfd_open(c).ok());
        tracing::debug!(ppid, child = ?child, "fork with pages missing");
        let pending = self.spaces[parent].pending.clone();
        self.spaces.push(Space {
            pid: child.unwrap_or(0),
            tree: false,
            pidfd,
            uffd,
            pending,
            dead: false,
        });
    }

    /// Serves one fault: the faulting page alone first (so the process waits for one page,
    /// not for the prefetch), then up to `prefetch` missing pages after it.
    fn serve_fault(&mut self, i: usize, addr: u64, t0: Instant) -> Result<Copied, Fatal> {
        let page = addr & !(PAGE - 1);
        let sp = &self.spaces[i];
        let Some(id) = sp.pending.get(page) else {
            // Never stored (or served already by a racing fault): a zero page, unless present.
            let r = match ur::zeropage(&sp.uffd, page, PAGE) {
                Ok(()) => Copied::All,
                Err(Errno::EEXIST) => {
                    let _ = sp.uffd.wake(page as *mut libc::c_void, PAGE_SIZE);
                    Copied::All
                }
                Err(Errno::EAGAIN) => Copied::Again,
                Err(Errno::ESRCH) => Copied::Gone,
                Err(source) => {
                    return Err(Fatal::Kernel(DaemonError::Zeropage {
                        pid: sp.pid,
                        addr: page,
                        source,
                    }))
                }
            };
            if matches!(r, Copied::All) {
                self.record_fault(t0);
            }
            return Ok(r);
        };
        let r = self.fetch_and_copy(i, &[(page, id)])?;
        if !matches!(r, Copied::All) {
            return Ok(r);
        }
        self.record_fault(t0);
        self.prefetch_after(i, page)?;
        Ok(Copied::All)
    }

    /// Places what the `prefetch` pages after `page` held at the dump: the stored ones still
    /// missing (fetched in one go, copied in runs) and the zero ones (zero page), so that a
    /// process walking its memory faults once per window, not once per run. A prefetch that
    /// meets an event (or a gone process) is just cut short: the rest stays missing.
    fn prefetch_after(&mut self, i: usize, page: u64) -> Result<(), Fatal> {
        let n = u64::from(self.opts.prefetch);
        if n == 0 {
            return Ok(());
        }
        let (from, to) = (page + PAGE, page + PAGE * (1 + n));
        let sp = &self.spaces[i];
        let stored = sp.pending.range(from, to);
        let zeros: Vec<u64> = (from..to)
            .step_by(PAGE_SIZE)
            .filter(|a| sp.pending.known_zero(*a))
            .collect();
        if !stored.is_empty() {
            if !matches!(self.fetch_and_copy(i, &stored)?, Copied::All) {
                return Ok(());
            }
            self.stats.prefetched += stored.len() as u64;
        }
        let sp = &mut self.spaces[i];
        for a in zeros {
            match ur::zeropage(&sp.uffd, a, PAGE) {
                Ok(()) => self.stats.prefetched += 1,
                Err(Errno::EEXIST) => {}
                Err(_) => return Ok(()),
            }
            sp.pending.zero_placed(a);
        }
        Ok(())
    }

    fn record_fault(&mut self, t0: Instant) {
        self.stats.faults += 1;
        self.stats.latencies.push(crate::util::us(t0.elapsed()));
    }

    /// Fetches missing pages (address order) of space `i` from the source in one go (under
    /// their page keys) and copies them into space `i`, a `UFFDIO_COPY` per run of contiguous
    /// addresses.
    fn fetch_and_copy(&mut self, i: usize, pages: &[(u64, PageId)]) -> Result<Copied, Fatal> {
        let mut fetched = std::mem::take(&mut self.buf);
        fetched.clear();
        let m = &self.spaces[i].pending;
        let keyed: Vec<(u64, PageId)> = pages.iter().map(|&(a, id)| (m.key(a), id)).collect();
        if let Err(e) = self.source.fetch(&self.set, &keyed, &mut fetched) {
            return Err(Fatal::Source(e));
        }
        if fetched.len() != pages.len() * PAGE_SIZE {
            return Err(Fatal::Source(SourceError::Short {
                bytes: fetched.len(),
                pages: pages.len(),
            }));
        }
        let mut r = Ok(Copied::All);
        let mut k = 0;
        while k < pages.len() {
            let mut j = k + 1;
            while j < pages.len() && pages[j].0 == pages[j - 1].0 + PAGE {
                j += 1;
            }
            r = self.copy_bytes(i, pages[k].0, &fetched[k * PAGE_SIZE..j * PAGE_SIZE]);
            if !matches!(r, Ok(Copied::All)) {
                break;
            }
            k = j;
        }
        self.buf = fetched;
        r
    }

    /// Copies `data` (whole pages) to `start` in space `i` (one `UFFDIO_COPY`, more when some
    /// page turns out present), then forgets the pages copied.
    fn copy_bytes(&mut self, i: usize, start: u64, data: &[u8]) -> Result<Copied, Fatal> {
        let sp = &mut self.spaces[i];
        let total = data.len() as u64;
        let mut off = 0u64;
        let result = loop {
            if off >= total {
                break Copied::All;
            }
            match ur::copy_partial(&sp.uffd, start + off, &data[off as usize..]) {
                CopyResult::Done => {
                    off = total;
                }
                CopyResult::Partial { copied, errno } => {
                    off += copied - copied % PAGE;
                    match errno {
                        // That page is there already: skip it (and wake whoever waits on it).
                        libc::EEXIST => {
                            let _ = sp.uffd.wake((start + off) as *mut libc::c_void, PAGE_SIZE);
                            off += PAGE;
                        }
                        libc::EAGAIN if copied > 0 => {}
                        libc::EAGAIN => break Copied::Again,
                        libc::ESRCH => break Copied::Gone,
                        e => {
                            return Err(Fatal::Kernel(DaemonError::Copy {
                                pid: sp.pid,
                                addr: start + off,
                                source: Errno::from_raw(e),
                            }))
                        }
                    }
                }
            }
        };
        let done_to = start + off.min(total);
        let mut a = start;
        while a < done_to {
            sp.pending.remove(a);
            a += PAGE;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_error_says_which_call_on_which_address_and_keeps_the_errno() {
        let e = DaemonError::Copy {
            pid: 42,
            addr: 0x7000,
            source: Errno::EFAULT,
        };
        let msg = crate::util::error_chain(&e);
        assert!(
            msg.contains("pid 42") && msg.contains("UFFDIO_COPY at 0x7000"),
            "{msg}"
        );
        let src = std::error::Error::source(&e).expect("the errno is kept as the source");
        assert_eq!(src.downcast_ref::<Errno>(), Some(&Errno::EFAULT));
        let lazy = LazyError::Daemon { pid: 42, source: e };
        assert!(lazy.to_string().contains("(process killed)"), "{lazy}");
    }
}
