//! The rebuild's sequence: every step drives the parked child by injected syscalls; each is a
//! module of its own (memory, vdso, mm, fds, fs, signals, threads, creds, timers, ...).

use std::time::Instant;

use super::error::{StepError, StepResult};
use super::layout::{ARGS_LEN, ARGS_OFF, SCRATCH_LEN};
use super::{memory, PageSource, RestoreError, RestoreOptions, RestoreOutcome, Step};
use crate::image::{ImageSet, ProcessImage};
use crate::sys::ptrace;
use crate::sys::remote::{self, RemoteSyscall};

/// Kills the half-built process unless disarmed: nothing is left behind on any error path.
struct Half {
    pid: Option<i32>,
    /// The threads created so far besides the main one (haul traces them too).
    threads: Vec<i32>,
}

impl Drop for Half {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = crate::sys::process::kill(pid, libc::SIGKILL);
            // We may be their tracer: reap the traces so that init can reap the process (a
            // traced thread stays a zombie until its tracer waits for it).
            for &tid in &self.threads {
                let _ = ptrace::wait_stop(tid);
            }
            let _ = ptrace::wait_stop(pid);
        }
    }
}

struct Ctx<'a> {
    set: &'a ImageSet,
    fail_at: Option<Step>,
}

impl Ctx<'_> {
    fn err(&self, step: Step, source: StepError) -> RestoreError {
        RestoreError::Step {
            set: self.set.id.clone(),
            step,
            source: Box::new(source),
        }
    }
    /// Enters a step: fails on purpose when the test switch names it.
    fn enter(&self, step: Step) -> Result<(), RestoreError> {
        if self.fail_at == Some(step) {
            return Err(self.err(step, StepError::TestSwitch));
        }
        tracing::debug!(set = %self.set.id, "restore step {step}");
        Ok(())
    }
}

/// Runs `f` as step `s`, turning its error into a [`RestoreError::Step`].
fn step<T, E: Into<StepError>>(
    c: &Ctx<'_>,
    s: Step,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, RestoreError> {
    c.enter(s)?;
    f().map_err(|e| c.err(s, e.into()))
}

/// The current mappings of `pid` as (start, end, path).
fn maps(pid: i32) -> StepResult<Vec<(u64, u64, String)>> {
    Ok(crate::proc::maps(pid)?
        .into_iter()
        .map(|m| (m.start, m.end, m.path))
        .collect())
}

pub(super) fn rebuild(
    set: &ImageSet,
    p: &ProcessImage,
    source: &dyn PageSource,
    opts: &RestoreOptions,
    start: Instant,
    mut lazy: Option<&mut dyn super::LazyHooks>,
) -> Result<RestoreOutcome, RestoreError> {
    // What the processes of a tree share (one process: nothing, but the same code path).
    let mut shared = super::share::Shared::default();
    let c = Ctx {
        set,
        fail_at: opts.fail_at,
    };
    let want = match opts.pid {
        super::PidChoice::Same => Some(p.pid),
        super::PidChoice::Any => None,
    };
    if want.is_none() && p.threads.len() > 1 {
        tracing::warn!(
            pid = p.pid,
            threads = p.threads.len(),
            "restoring a multi-threaded process under new thread ids: what it recorded of its \
             own ids (glibc's, for pthread_kill and PI mutexes) still names the old ones"
        );
    }
    let pid = step(&c, Step::Spawn, || crate::sys::spawn::spawn_parked(want))?;
    let mut half = Half {
        pid: Some(pid),
        threads: Vec::new(),
    };
    if let Some(h) = lazy.as_mut() {
        h.spawned();
    }

    step(&c, Step::Seize, || -> Result<(), crate::sys::SysError> {
        // Syscall stops of injected syscalls report SIGTRAP|0x80 (threads made later inherit it).
        ptrace::seize(pid, ptrace::PTRACE_O_TRACESYSGOOD)?;
        ptrace::interrupt(pid)?;
        loop {
            if let ptrace::Stop::Event { .. } = ptrace::wait_stop(pid)? {
                return Ok(());
            }
            // A signal-delivery stop before the interrupt: let it go and wait again.
            ptrace::cont(pid, 0)?;
        }
    })?;
    let mut rs = step(&c, Step::Seize, || RemoteSyscall::new(pid, pid))?;

    step(&c, Step::Rseq, || -> StepResult {
        if let Some(r) = ptrace::get_rseq_config(pid)? {
            let (addr, len, sig) = (r.rseq_abi_pointer, r.rseq_abi_size, r.signature);
            remote::rseq_unregister(&mut rs, addr, len, sig)?;
        }
        Ok(())
    })?;

    let scratch = step(&c, Step::Scratch, || -> StepResult<u64> {
        let now: Vec<(u64, u64)> = maps(pid)?.iter().map(|m| (m.0, m.1)).collect();
        let addr = memory::map_scratch(&mut rs, &now, p)?;
        rs.set_insn(addr);
        rs.set_args_area(addr + ARGS_OFF, ARGS_LEN);
        Ok(addr)
    })?;

    step(&c, Step::Unmap, || {
        memory::unmap_old(&mut rs, &maps(pid)?, scratch)
    })?;
    step(&c, Step::Vdso, || {
        super::vdso::move_vdso(&mut rs, &maps(pid)?, p)
    })?;

    // Lazy: the daemon takes the private anonymous memory; the fill skips it.
    let lazy_ranges: Vec<(u64, u64)> = match lazy {
        Some(_) => super::lazy_ranges(set, p),
        None => Vec::new(),
    };
    let temp_prot = step(&c, Step::Map, || {
        memory::map_vmas(&mut rs, set, p, &lazy_ranges, &mut shared)
    })?;

    if let Some(hooks) = lazy {
        let ranges = lazy_ranges.clone();
        step(&c, Step::Lazy, || -> StepResult {
            let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
            let t = remote::take_uffd(&mut rs, flags)?;
            hooks
                .start(super::LazyStart {
                    pid,
                    uffd: crate::sys::uffd::Uffd::from_owned(t.uffd),
                    pidfd: t.pidfd,
                    ranges,
                })
                .map_err(StepError::LazyStart)
        })?;
    }

    let fill_start = Instant::now();
    let pages_restored = step(&c, Step::Fill, || {
        if lazy_ranges.is_empty() {
            memory::fill(pid, set, p, source)
        } else {
            let eager = memory::eager_part(set, p, &lazy_ranges);
            memory::fill(pid, &eager, p, source)
        }
    })?;
    let fill_time = crate::util::us(fill_start.elapsed());

    step(&c, Step::Protect, || {
        memory::protect(&mut rs, p, &temp_prot)
    })?;
    step(&c, Step::MmMap, || super::mm::set_mm(&mut rs, p))?;
    step(&c, Step::Files, || {
        super::fds::restore_fds(&mut rs, p, &mut shared)
    })?;
    step(&c, Step::Fs, || super::fs::restore_fs(&mut rs, p))?;
    step(&c, Step::Limits, || super::fs::restore_limits(&mut rs, p))?;
    step(&c, Step::Signals, || {
        super::signals::restore_sigactions(&mut rs, p)
    })?;
    let t = &p.threads[0];
    // The other threads, each created by an injected clone3 with its dumped tid and given its
    // own state (credentials are per thread too), left stopped with its registers set.
    let threads = step(&c, Step::Threads, || -> StepResult<Vec<(i32, u64)>> {
        super::threads::thread_state(&mut rs, t)?;
        let mut made = vec![(pid, t.pending)];
        let same = opts.pid == super::PidChoice::Same;
        for t in &p.threads[1..] {
            let tid = super::threads::spawn_thread(&mut rs, t, scratch, same)?;
            half.threads.push(tid);
            super::threads::finish_thread(pid, tid, t, p, scratch)?;
            made.push((tid, t.pending));
        }
        Ok(made)
    })?;
    // Every thread exists: each goes back into its cgroups.
    step(&c, Step::Threads, || {
        let tids: Vec<i32> = threads.iter().map(|t| t.0).collect();
        super::cgroup::place(pid, p, &tids)
    })?;
    step(&c, Step::Creds, || -> StepResult {
        super::creds::restore_creds(&mut rs, p)?;
        super::attrs::thread_after_creds(&mut rs, &t.attrs)?;
        super::attrs::dumpable(&mut rs, p)
    })?;

    step(&c, Step::Regs, || -> StepResult {
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

    step(&c, Step::Run, || {
        drop(rs);
        super::signals::queue_pending(pid, p, &threads)
    })?;
    // --verify state: compared while every thread is still stopped, so a process that differs
    // is killed (by `half`) before it runs.
    if opts.verify_state {
        super::verify::check(set, p, pid, &lazy_ranges)?;
    }
    step(&c, Step::Run, || -> StepResult {
        for &(tid, _) in &threads[1..] {
            ptrace::detach(tid, 0).map_err(|source| StepError::Detach { tid, source })?;
        }
        Ok(ptrace::detach(pid, 0)?)
    })?;
    half.pid = None;
    Ok(RestoreOutcome {
        pid,
        restore_time: 0,
        time_to_running: crate::util::us(start.elapsed()),
        pages_restored,
        fill_time,
    })
}
