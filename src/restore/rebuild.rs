//! The rebuild's sequence: every step drives a parked process by injected syscalls; each is a
//! module of its own (memory, vdso, mm, fds, fs, signals, threads, creds, timers, ...). A tree
//! is created first (`create.rs`, planned by `tree.rs`), then each process is rebuilt by the
//! same steps, and all run together.

use std::time::Instant;

use super::create::{self, maps, Ctx, Made, Proc};
use super::error::{StepError, StepResult};
use super::layout::SCRATCH_LEN;
use super::{memory, PageSource, RestoreError, RestoreOptions, RestoreOutcome, Step};
use crate::image::ImageSet;
use crate::sys::remote;

/// Rebuilds every process of `set` (root first, then its descendants in tree order, then its
/// zombies) and lets them all run together once each is built. Any failure kills every process
/// made so far.
pub(super) fn rebuild(
    set: &ImageSet,
    source: &dyn PageSource,
    opts: &RestoreOptions,
    start: Instant,
    mut lazy: Option<&mut dyn super::LazyHooks>,
) -> Result<RestoreOutcome, RestoreError> {
    let root = super::process_of(set)?;
    let ours = (
        crate::sys::process::own_sid(),
        crate::sys::process::own_pgrp(),
    );
    // A shell job's root goes where its terminal is the controlling one (restore::tty).
    let planned = super::tty::planned(set, opts.tty.as_ref(), ours);
    let same = opts.pid == super::PidChoice::Same;
    // A keeper handed over by the dump: the process is made from it, in its session and
    // group, when it can be (restore::adopt).
    let adopting = opts.adopt.and_then(|keeper| {
        let eager_same = lazy.is_none() && same && planned.is_none() && opts.tty.is_none();
        super::adopt::check(set, root, keeper, eager_same)
            .map_err(|why| tracing::info!(keeper, "memory written from the set: {why}"))
            .ok()
    });
    let plan_for = |ours: (i32, i32)| {
        super::tree::plan(planned.as_ref().unwrap_or(set), ours).map_err(|reason| {
            RestoreError::Incompatible {
                set: set.id.clone(),
                reason: reason.0,
            }
        })
    };
    let mut plan = plan_for(adopting.map_or(ours, |a| (a.sid, a.pgrp)))?;
    // What the processes of a tree share, built as they are (one for the whole set).
    let mut shared = super::share::Shared::default();
    let c = Ctx {
        set,
        fail_at: opts.fail_at,
        root: root.pid,
    };
    // The contents of the memfds and deleted files (read before any process exists), made
    // again by whichever process first needs each.
    shared.stored = super::stored::StoredTable::load(set, source)
        .map_err(|e| c.err(Step::Fill, root.pid, e))?;
    for (_, p) in set.processes() {
        if !same && p.threads.len() > 1 {
            tracing::warn!(
                pid = p.pid,
                threads = p.threads.len(),
                "restoring a multi-threaded process under new thread ids: what it recorded of \
                 its own ids (glibc's, for pthread_kill and PI mutexes) still names the old ones"
            );
        }
    }
    // The SysV objects exist before the processes that attach them; removed again (after
    // the processes are killed: `made` is dropped first) if the restore fails.
    let verdicts = super::share::sysv::plan(set).map_err(|reason| RestoreError::Incompatible {
        set: set.id.clone(),
        reason: reason.0,
    })?;
    let ipc = c.step(Step::Spawn, root.pid, || {
        super::share::sysv::make(set, &verdicts, source)
    })?;
    // The connections to peers outside the set stay locked until the restored tree runs
    // (released when dropped, also if the restore fails).
    let netlock = c.step(Step::Spawn, root.pid, || super::netlock::take(set, opts))?;
    let adopted = match adopting {
        // (Entered as the spawn it stands for: the test switch fails it alike.)
        Some(a) => match c.enter(Step::Spawn, root.pid).and_then(|()| {
            super::adopt::make(a.keeper, root.pid).map_err(|e| c.err(Step::Spawn, root.pid, e))
        }) {
            Ok(pid) => Some(pid),
            Err(e) => {
                tracing::warn!(
                    keeper = a.keeper,
                    "adopting the memory of the process's keeper: {e}; written from the set"
                );
                plan = plan_for(ours)?;
                None
            }
        },
        None => None,
    };
    let pid = match adopted {
        Some(pid) => pid,
        None => c.step(Step::Spawn, root.pid, || {
            crate::sys::spawn::spawn_parked(same.then_some(root.pid))
        })?,
    };
    let adopted = adopted.is_some();
    let mut made = Made::new(set);
    made.made_as(0, pid);
    if let Some(h) = lazy.as_mut() {
        h.spawned();
    }
    // A process made from a keeper is seized and stopped already.
    if !adopted {
        c.step(Step::Seize, root.pid, || create::seize_root(pid))?;
    }

    // Every process exists, in its session, before any is rebuilt (tree.rs says why).
    for i in 0..plan.living.len() {
        create::prepare(&c, &mut made, &plan, i, same)?;
    }
    create::groups(&c, &mut made, &plan)?;
    create::end_zombies(&c, &mut made)?;
    super::tty::start(&mut shared, set, opts.tty.as_ref(), &made.pids())
        .map_err(|e| c.err(Step::Files, root.pid, e))?;

    let mut pages_restored = 0;
    let mut fill_time = 0;
    // Each process's ranges left to the lazy daemon (none in an eager restore).
    let mut lazy_ranges = Vec::new();
    for i in 0..made.living.len() {
        let hooks: Option<&mut dyn super::LazyHooks> = match lazy.as_mut() {
            Some(h) => Some(&mut **h),
            None => None,
        };
        let b = build(
            &c,
            &mut made.living[i],
            source,
            opts,
            &mut shared,
            hooks,
            adopted,
        )?;
        pages_restored += b.pages_restored;
        fill_time += b.fill_time;
        lazy_ranges.push(b.lazy_ranges);
    }
    // Seals last, once every mapping of a sealed file is made.
    c.step(Step::Files, root.pid, || shared.stored.seal())?;
    // --verify state: compared while every thread of every process is still stopped, so a
    // process that differs is killed with the rest (by `made`) before any runs.
    if opts.verify_state {
        // Group and session ids as the restore gave them: the tree's under their pids here,
        // the root's outside ones as the root has them now.
        // (The root's own are compared as the image has them.)
        let own: std::collections::BTreeMap<i32, i32> = made.pids().into_iter().collect();
        let mut ids = own.clone();
        let st = c.step(Step::Run, root.pid, || crate::proc::stat(pid))?;
        for (was, now) in [(root.pgid, st.pgrp), (root.sid, st.session)] {
            ids.entry(was).or_insert(now);
        }
        for (i, pr) in made.living.iter().enumerate() {
            let view = memory::space_view(set, pr.space, false);
            let ids = if i == 0 { &own } else { &ids };
            super::verify::check(&view, pr.p, pr.pid, &lazy_ranges[i], ids)?;
        }
    }
    // Every segment is attached: the ones marked for deletion are marked again.
    c.step(Step::Run, root.pid, || ipc.finish())?;
    // Established TCP sockets leave repair mode just before their processes run.
    std::mem::take(&mut shared.tcp).resume();
    // Let them all go, children before their parents.
    for pr in made.living.iter_mut().rev() {
        let pid = pr.pid;
        c.step(Step::Run, pr.p.pid, || -> StepResult {
            for (&(tid, _), t) in pr.threads[1..].iter().zip(&pr.p.threads[1..]) {
                super::threads::let_go(tid, t).map_err(|e| match e {
                    StepError::Sys(source) => StepError::Detach { tid, source },
                    e => e,
                })?;
            }
            super::threads::let_go(pid, &pr.p.threads[0])
        })?;
    }
    made.armed = false;
    // Running: the peers' packets reach the restored sockets again.
    let lock_time = netlock.map_or(0, super::netlock::NetLockHeld::release);
    Ok(RestoreOutcome {
        pid,
        pids: made.pids(),
        restore_time: 0,
        time_to_running: crate::util::us(start.elapsed()),
        pages_restored,
        fill_time,
        lock_time,
        adopted,
    })
}

/// Rebuilds one seized, prepared process from *unmap* to *run* (signals queued, every thread
/// still stopped). `adopted`: made from a memory keeper (`restore::adopt`), its address space
/// is the set's already: no unmap, vDSO move, map, fill or protect.
fn build(
    c: &Ctx<'_>,
    pr: &mut Proc<'_>,
    source: &dyn PageSource,
    opts: &RestoreOptions,
    shared: &mut super::share::Shared,
    lazy: Option<&mut dyn super::LazyHooks>,
    adopted: bool,
) -> Result<Built, RestoreError> {
    let (p, pid, scratch, ipid) = (pr.p, pr.pid, pr.scratch, pr.p.pid);
    let set = c.set;
    let mut rs = pr.rs.take().expect("prepared");
    let Built {
        pages_restored,
        fill_time,
        lazy_ranges,
    } = if adopted {
        // The root sets the SysV objects' values and messages (made before any process).
        if pr.space == 0 {
            c.step(Step::Map, ipid, || super::share::sysv::claim(&mut rs, set))?;
        }
        Built {
            pages_restored: 0,
            fill_time: 0,
            lazy_ranges: Vec::new(),
        }
    } else {
        rebuild_memory(c, pr.space, p, pid, scratch, &mut rs, source, shared, lazy)?
    };
    c.step(Step::MmMap, ipid, || super::mm::set_mm(&mut rs, p, adopted))?;
    // A process sharing its parent's fd table (CLONE_FILES) has its fds from that one.
    if p.files_of.is_none() {
        c.step(Step::Files, ipid, || {
            super::fds::restore_fds(&mut rs, p, shared)
        })?;
    }
    c.step(Step::Fs, ipid, || super::fs::restore_fs(&mut rs, p))?;
    c.step(Step::Limits, ipid, || super::fs::restore_limits(&mut rs, p))?;
    c.step(Step::Signals, ipid, || {
        super::signals::restore_sigactions(&mut rs, p)
    })?;
    let t = &p.threads[0];
    // The other threads, each created by an injected clone3 with its dumped tid and given its
    // own state (credentials are per thread too), left stopped with its registers set.
    let same = opts.pid == super::PidChoice::Same;
    c.step(Step::Threads, ipid, || -> StepResult {
        super::threads::thread_state(&mut rs, t)?;
        // The seccomp filters every thread shares, inherited by the threads made next.
        super::seccomp::suspend(p, pid)?;
        super::seccomp::install_shared(&mut rs, p)?;
        pr.threads = vec![(pid, t.pending)];
        for t in &p.threads[1..] {
            let tid = super::threads::spawn_thread(&mut rs, t, scratch, same)?;
            pr.threads.push((tid, 0));
            super::threads::finish_thread(pid, tid, t, p, scratch)?;
            pr.threads.last_mut().expect("pushed").1 = t.pending;
        }
        // The main thread's own filters, now that no thread is made from it any more.
        super::seccomp::install_own(&mut rs, p, t.tid)
    })?;
    let threads = pr.threads.clone();
    // Every thread exists: each goes back into its cgroups.
    c.step(Step::Threads, ipid, || {
        let tids: Vec<i32> = threads.iter().map(|t| t.0).collect();
        super::cgroup::place(pid, p, &tids)
    })?;
    c.step(Step::Creds, ipid, || -> StepResult {
        super::creds::restore_creds(&mut rs, p)?;
        super::attrs::thread_after_creds(&mut rs, &t.attrs)?;
        super::attrs::dumpable(&mut rs, p)
    })?;

    c.step(Step::Regs, ipid, || -> StepResult {
        let regs = super::threads::final_regs(t)?;
        // Queued signals with their siginfo (every signal is blocked while haul injects, so
        // they stay queued until the thread runs with its own mask).
        super::signals::queue_siginfo(&mut rs, pid, &t.pending_info, false)?;
        super::signals::queue_siginfo(&mut rs, pid, &p.shared_pending_info, true)?;
        // Timers last, so they start counting as close to running as can be.
        super::timers::restore_posix_timers(&mut rs, p, &threads)?;
        super::timers::restore_itimers(&mut rs, p)?;
        remote::munmap(&mut rs, scratch, SCRATCH_LEN)?;
        rs.forget_scratch();
        rs.set_orig_regs(regs);
        rs.set_orig_sigmask(t.sigmask);
        super::threads::set_thread_regs(pid, t, &regs)
    })?;

    c.step(Step::Run, ipid, || {
        drop(rs);
        super::signals::queue_pending(pid, p, &threads)
    })?;
    Ok(Built {
        pages_restored,
        fill_time,
        lazy_ranges,
    })
}

/// The memory steps of [`build`]: *unmap* (what the parked process had), *vdso*, *map*, a
/// lazy restore's *lazy*, *fill* and *protect*.
#[allow(clippy::too_many_arguments)]
fn rebuild_memory(
    c: &Ctx<'_>,
    space: u16,
    p: &crate::image::ProcessImage,
    pid: i32,
    scratch: u64,
    rs: &mut remote::RemoteSyscall,
    source: &dyn PageSource,
    shared: &mut super::share::Shared,
    lazy: Option<&mut dyn super::LazyHooks>,
) -> Result<Built, RestoreError> {
    let (set, ipid) = (c.set, p.pid);
    // The process's own pages at their own addresses, and (for the page source, which checks
    // them against the set) under their keys.
    let view = memory::space_view(set, space, false);
    let keyed = memory::space_view(set, space, true);
    let base = crate::image::space_bounds(space).0;

    c.step(Step::Unmap, ipid, || {
        memory::unmap_old(&mut *rs, &maps(pid)?, scratch)
    })?;
    c.step(Step::Vdso, ipid, || {
        super::vdso::move_vdso(&mut *rs, &maps(pid)?, p)
    })?;

    // Lazy: the daemon takes the private anonymous memory; the fill skips it.
    let lazy_ranges: Vec<(u64, u64)> = match lazy {
        Some(_) => super::lazy_ranges(&view, p),
        None => Vec::new(),
    };
    let temp_prot = c.step(Step::Map, ipid, || {
        memory::map_vmas(&mut *rs, &view, p, &lazy_ranges, shared)
    })?;
    // The root sets the SysV objects' values and messages (made before any process).
    if space == 0 {
        c.step(Step::Map, ipid, || super::share::sysv::claim(&mut *rs, set))?;
    }

    if let Some(hooks) = lazy {
        let ranges = lazy_ranges.clone();
        c.step(Step::Lazy, ipid, || -> StepResult {
            let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
            let t = remote::take_uffd(&mut *rs, flags)?;
            hooks
                .start(super::LazyStart {
                    pid,
                    space,
                    uffd: crate::sys::uffd::Uffd::from_owned(t.uffd),
                    pidfd: t.pidfd,
                    ranges,
                })
                .map_err(StepError::LazyStart)
        })?;
    }

    let fill_start = Instant::now();
    let pages_restored = c.step(Step::Fill, ipid, || {
        if lazy_ranges.is_empty() {
            let uffd = memory::UffdFill::start(&mut *rs, &view, p);
            memory::fill(pid, &keyed, base, p, source, uffd)
        } else {
            // Under their keys (a page source checks them against the set).
            let eager = memory::eager_part(&keyed, base, p, &lazy_ranges);
            memory::fill(pid, &eager, base, p, source, None)
        }
    })?;
    let fill_time = crate::util::us(fill_start.elapsed());

    c.step(Step::Protect, ipid, || {
        memory::protect(&mut *rs, p, &temp_prot)
    })?;
    Ok(Built {
        pages_restored,
        fill_time,
        lazy_ranges,
    })
}

/// What [`build`] did for one process.
struct Built {
    pages_restored: u64,
    /// µs.
    fill_time: u64,
    /// The ranges left to a lazy daemon (empty for an eager restore).
    lazy_ranges: Vec<(u64, u64)>,
}
