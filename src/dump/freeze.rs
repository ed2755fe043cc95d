//! The freeze guard: every thread of the target seized and stopped, the injector of the main
//! thread, and the signals held back meanwhile. Dropping it (on any error path, or a panic)
//! restores registers, unmaps the scratch page and detaches every thread.

use super::DumpError;
use crate::proc;
use crate::sys::ptrace::{self, Stop, PTRACE_O_TRACESYSGOOD};
use crate::sys::remote::RemoteSyscall;
use crate::sys::{process, SysError};

/// One stopped thread.
pub(crate) struct Thread {
    pub tid: i32,
    /// Signals that arrived while it was stopped, to send again when it is released.
    pub held: Vec<i32>,
}

/// Every thread of one process, seized and stopped.
pub(crate) struct Frozen {
    pub pid: i32,
    pub threads: Vec<Thread>,
    /// The injector of the main thread (owns its registers while it exists).
    injector: Option<RemoteSyscall>,
    remote_calls: u64,
    released: bool,
    /// Once SIGKILL is sent: a pidfd, through which the death collector frees the memory
    /// alongside the process's own exit (see [`Frozen::collect_death`]).
    dying: Option<std::os::fd::OwnedFd>,
    /// The process sharing its address space while it is killed (see `dump::keeper`).
    keeper: Option<super::keeper::Keeper>,
}

impl Frozen {
    /// Seizes and stops every thread of `pid`, looping until no new thread appears.
    pub fn seize_all(pid: i32) -> Result<Frozen, DumpError> {
        let mut f = Frozen {
            pid,
            threads: Vec::new(),
            injector: None,
            remote_calls: 0,
            released: false,
            dying: None,
            keeper: None,
        };
        loop {
            let tids = proc::tids(pid)?;
            let mut new = false;
            for tid in tids {
                if f.threads.iter().any(|t| t.tid == tid) {
                    continue;
                }
                new = true;
                match ptrace::seize(tid, PTRACE_O_TRACESYSGOOD) {
                    Ok(()) => {}
                    Err(e) if ptrace::is_esrch(&e) && tid != pid => continue, // thread exited
                    Err(e) if e.errno() == Some(libc::EPERM) => {
                        return Err(DumpError::Refused(format!(
                            "pid {pid}: haul may not trace thread {tid} (ptrace: permission denied)"
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
                f.threads.push(Thread {
                    tid,
                    held: Vec::new(),
                });
                ptrace::interrupt(tid)?;
                match f.wait_interrupted(tid) {
                    Ok(()) => {}
                    Err(DumpError::Sys(SysError::Gone { .. })) if tid != pid => {
                        f.threads.retain(|t| t.tid != tid);
                    }
                    Err(e) => return Err(e),
                }
            }
            if !new {
                // Every thread is stopped: none can install a filter any more.
                super::seccomp::suspend_filtered(&f)?;
                return Ok(f);
            }
        }
    }

    /// Waits for a just-interrupted thread to stop at the interrupt. A signal it was already
    /// taking meets haul at its signal-delivery-stop first: it is delivered there (`PTRACE_CONT`
    /// with the signal keeps its siginfo; a handler's frame is set up, and the interrupt, still
    /// pending, stops the thread before the handler runs). Holding it back instead would mean
    /// sending it again later with haul's siginfo, and a receiver that reads `si_pid` or a
    /// queued value would see another sender. A thread that keeps taking signals is held at
    /// the last one, which is then sent again at the thaw.
    fn wait_interrupted(&mut self, tid: i32) -> Result<(), DumpError> {
        for round in 0..80 {
            match ptrace::wait_stop(tid)? {
                Stop::Signal { sig } if round < 64 => ptrace::cont(tid, sig)?,
                Stop::Signal { sig } => {
                    self.hold(tid, sig);
                    ptrace::cont(tid, 0)?;
                }
                _ => return Ok(()),
            }
        }
        Err(DumpError::Internal(format!(
            "thread {tid} keeps taking signals and does not stop at the interrupt"
        )))
    }

    fn hold(&mut self, tid: i32, sig: i32) {
        if let Some(t) = self.threads.iter_mut().find(|t| t.tid == tid) {
            if !t.held.contains(&sig) {
                t.held.push(sig);
            }
        }
    }

    /// Bitmask of the signals held back for `tid`.
    pub fn held_signals(&self, tid: i32) -> u64 {
        self.threads
            .iter()
            .find(|t| t.tid == tid)
            .map(|t| t.held.iter().fold(0u64, |m, s| m | 1u64 << (s - 1)))
            .unwrap_or(0)
    }

    /// The injector of the main thread (created on first use).
    pub fn injector(&mut self) -> Result<&mut RemoteSyscall, DumpError> {
        if self.injector.is_none() {
            self.injector = Some(RemoteSyscall::new(self.pid, self.pid)?);
        }
        self.injector
            .as_mut()
            .ok_or_else(|| DumpError::Internal("the injector of the main thread is missing".into()))
    }

    /// Runs `f` with an injector for thread `tid` (the main thread's own, or a temporary one
    /// whose registers are restored when it is dropped).
    pub fn with_thread<T>(
        &mut self,
        tid: i32,
        f: impl FnOnce(&mut RemoteSyscall) -> Result<T, DumpError>,
    ) -> Result<T, DumpError> {
        if tid == self.pid {
            let inj = self.injector()?;
            let r = f(inj);
            let sigs = inj.take_signals();
            for s in sigs {
                self.hold(tid, s);
            }
            return r;
        }
        let mut inj = RemoteSyscall::new(self.pid, tid)?;
        let r = f(&mut inj);
        self.remote_calls += inj.calls();
        for s in inj.take_signals() {
            self.hold(tid, s);
        }
        r
    }

    /// Maps the scratch page in the target (through the main thread).
    pub fn map_scratch(&mut self) -> Result<u64, DumpError> {
        Ok(self
            .injector()?
            .map_scratch(crate::image::PAGE_SIZE as u64)?)
    }

    /// The scratch page, if mapped.
    pub fn scratch(&self) -> Option<u64> {
        self.injector
            .as_ref()
            .and_then(|i| i.scratch())
            .map(|(a, _)| a)
    }

    /// Unmaps the scratch page.
    pub fn unmap_scratch(&mut self) -> Result<(), DumpError> {
        if let Some(inj) = self.injector.as_mut() {
            inj.unmap_scratch()?;
        }
        Ok(())
    }

    /// Syscalls injected so far.
    pub fn remote_syscalls(&self) -> u64 {
        self.remote_calls + self.injector.as_ref().map(|i| i.calls()).unwrap_or(0)
    }

    /// Drops the injector (unmapping the scratch page, restoring the main thread's registers)
    /// and collects the signals it held back.
    fn drop_injector(&mut self) {
        if let Some(mut inj) = self.injector.take() {
            if let Err(e) = inj.unmap_scratch() {
                tracing::warn!(pid = self.pid, "unmapping the scratch page: {e}");
            }
            self.remote_calls += inj.calls();
            let sigs = inj.take_signals();
            drop(inj);
            for s in sigs {
                self.hold(self.pid, s);
            }
        }
    }

    /// Gives the main thread its registers back and unmaps the scratch page (dropping the
    /// injector), and ends the syscall-tracing state the injected syscalls left, while every
    /// thread stays stopped: a lazy dump's source is then as it was before the dump, only
    /// stopped, so that a thaw, or the worker's death (the kernel then detaches it), resumes it
    /// intact.
    ///
    /// `PTRACE_SYSCALL` leaves the thread flagged to stop at syscalls until the next resume
    /// request; `PTRACE_CONT` clears it, and a `PTRACE_INTERRUPT` queued first makes the thread
    /// stop again inside the kernel's signal handling, before it runs any of its own code (and
    /// before an interrupted syscall is restarted, which a later resume does as usual).
    ///
    /// Every signal is blocked while the thread passes through: a signal that arrived during
    /// the freeze stays queued in the kernel with its siginfo (the image records it as pending,
    /// and the thread receives it once it runs) instead of being taken off the queue at a
    /// signal-delivery-stop, from where only a re-send without its siginfo could give it back.
    pub fn settle(&mut self) -> Result<(), DumpError> {
        self.drop_injector();
        for i in 0..self.threads.len() {
            let tid = self.threads[i].tid;
            let mask = ptrace::get_sigmask(tid)?;
            ptrace::set_sigmask(tid, u64::MAX)?;
            let passed = self.pass_through(tid);
            ptrace::set_sigmask(tid, mask)?;
            passed?;
        }
        Ok(())
    }

    /// One thread of [`Frozen::settle`]: `PTRACE_INTERRUPT`, then `PTRACE_CONT` until it stops
    /// at the interrupt.
    fn pass_through(&mut self, tid: i32) -> Result<(), DumpError> {
        ptrace::interrupt(tid)?;
        let mut stopped = false;
        for _ in 0..16 {
            ptrace::cont(tid, 0)?;
            match ptrace::wait_stop(tid)? {
                Stop::Event { .. } | Stop::OtherEvent { .. } => {
                    stopped = true;
                    break;
                }
                // Every signal is the thread's own (a SIGTRAP too: injected syscalls use
                // syscall stops, not single steps), kept to be sent again.
                Stop::Signal { sig } => self.hold(tid, sig),
                Stop::Syscall => {}
            }
        }
        if !stopped {
            return Err(DumpError::Internal(format!(
                "thread {tid} did not stop again after its syscall tracing was ended"
            )));
        }
        Ok(())
    }

    /// Lets every thread go on: registers restored, scratch unmapped, held signals sent again,
    /// `PTRACE_DETACH` (which restarts interrupted syscalls).
    pub fn thaw(mut self) -> Result<(), DumpError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), DumpError> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        self.drop_injector();
        let mut first_err = None;
        let mut gone = Vec::new();
        for t in &self.threads {
            // Every one is sent again before the detach: a signal given as PTRACE_DETACH's
            // argument is delivered only from a signal-delivery-stop, and the threads are
            // stopped at an interrupt here, where the kernel would drop it (a SIGCHLD lost that
            // way left a shell waiting for a child that had exited).
            for &s in &t.held {
                if let Err(e) = process::tgkill(self.pid, t.tid, s) {
                    tracing::warn!(tid = t.tid, "re-sending signal {s}: {e}");
                }
            }
            match ptrace::detach(t.tid, 0) {
                Ok(()) => {}
                Err(e) if ptrace::is_esrch(&e) && crate::dump::check::process_gone(self.pid) => {
                    gone.push(t.tid);
                }
                Err(e) => {
                    tracing::warn!(tid = t.tid, "detach: {e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(&tid) = gone.first() {
            // Killed while frozen (from outside): haul is still its tracer, so its parent would
            // not see its death until haul exits. Collect it now, as the tracer, the leader last
            // (when haul is the parent, its own wait() does that for the leader).
            let ours = crate::proc::stat(self.pid)
                .map(|s| s.ppid == process::getpid())
                .unwrap_or(false);
            for &t in gone.iter().filter(|&&t| t != self.pid) {
                wait_gone(t);
            }
            if gone.contains(&self.pid) && !ours {
                wait_gone(self.pid);
            }
            return Err(DumpError::Gone {
                pid: self.pid,
                step: super::Step::Resume,
                detail: format!("thread {tid} was killed while frozen"),
            });
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Kills the process (SIGKILL) and collects the deaths a tracer must see, so the real
    /// parent can reap the process.
    pub fn kill(mut self) -> Result<(), DumpError> {
        let parent_is_us = self.send_kill(Keep::No)?;
        if let Some(k) = self.collect_death(parent_is_us) {
            k.end();
        }
        Ok(())
    }

    /// The first half of [`Frozen::kill`]: SIGKILL, nothing collected yet (a tree sends every
    /// process its SIGKILL before waiting for any). Returns whether haul is its parent.
    ///
    /// With `keep`, a process holding much memory first gets a memory keeper (see
    /// `dump::keeper`; an adoptable one with [`Keep::Adoptable`]), so that its exit does not
    /// wait for its memory to be freed; without one, a pidfd opened here lets
    /// [`Frozen::collect_death`] free it alongside the exit.
    pub fn send_kill(&mut self, keep: Keep) -> Result<bool, DumpError> {
        if keep != Keep::No && super::keeper::wanted(self.pid) {
            let made = match keep {
                Keep::Adoptable => super::keeper::make_adoptable(self),
                _ => super::keeper::make(self),
            };
            match made {
                Ok(k) => {
                    tracing::debug!(pid = self.pid, keeper = k.pid, "memory keeper made");
                    self.keeper = Some(k);
                }
                Err(e) => tracing::debug!(pid = self.pid, "no memory keeper: {e}"),
            }
        }
        self.drop_injector();
        self.released = true;
        let parent_is_us = crate::proc::stat(self.pid)
            .map(|s| s.ppid == process::getpid())
            .unwrap_or(false);
        // Opened before the kill: as its tracer we hold the pid until we collect the death.
        if self.keeper.is_none() {
            self.dying = process::pidfd_open(self.pid).ok();
        }
        process::kill(self.pid, libc::SIGKILL)?;
        Ok(parent_is_us)
    }

    /// The pid of its memory keeper, if it has one.
    pub fn keeper_pid(&self) -> Option<i32> {
        self.keeper.as_ref().map(|k| k.pid)
    }

    /// The second half of [`Frozen::kill`]: collects the deaths of its threads as their tracer.
    /// Returns its memory keeper, for the caller to end ([`super::keeper::Keeper::end`]) now
    /// that the process is gone, off the path that waits for the pid if it can.
    ///
    /// Without a keeper it first frees the process's memory itself (`process_mrelease`), on
    /// this thread's core while the dying process frees it on its own: a process holding
    /// 1 GiB took 30–50 ms to exit alone here.
    pub fn collect_death(mut self, parent_is_us: bool) -> Option<super::keeper::Keeper> {
        if let Some(pidfd) = self.dying.take() {
            if let Err(e) = process::process_mrelease(&pidfd) {
                // Best effort: the exit frees the memory anyway.
                tracing::debug!(pid = self.pid, "process_mrelease: {e}");
            }
        }
        // Non-leader threads first: the leader's death is reported only once they are reaped.
        for t in self.threads.iter().filter(|t| t.tid != self.pid) {
            wait_gone(t.tid);
        }
        // The leader: a tracer that is not the parent must collect it to hand it back to the
        // parent; when we are the parent, our own wait() on the child does that.
        if !parent_is_us {
            wait_gone(self.pid);
        }
        self.keeper.take()
    }
}

/// Whether [`Frozen::send_kill`] makes a memory keeper first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    No,
    /// When the process holds much memory.
    Yes,
    /// An adoptable one (`dump::keeper::make_adoptable`), handed over to the restore.
    Adoptable,
}

/// Waits until tracee `tid` has exited (its death collected).
pub(super) fn wait_gone(tid: i32) {
    for _ in 0..64 {
        if ptrace::wait_stop(tid).is_err() {
            return;
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(pid = self.pid, "releasing the frozen process: {e}");
        }
        // A kill that failed after its keeper was made: the keeper goes (it only shares the
        // address space; the process keeps it).
        if let Some(k) = self.keeper.take() {
            k.end();
        }
    }
}
