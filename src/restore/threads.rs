//! The thread steps: each thread's own state (scheduling, robust list, alternate signal
//! stack, `clear_child_tid`, rseq), the other threads created by an injected `clone3` with
//! their dumped tids, and the registers, XSTATE and signal mask every thread runs with.

use super::error::{StepError, StepResult};
use super::layout::{ARGS_LEN, ARGS_OFF, SCRATCH_LEN};
use crate::image::{ProcessImage, ThreadImage, PAGE_SIZE};
use crate::sys::ptrace::{self, Regs};
use crate::sys::remote::{self, Inject, RemoteSyscall};

/// The state a thread keeps for itself, set by syscalls injected into it: scheduling, robust
/// futex list, alternate signal stack, `clear_child_tid`, and rseq (last: it writes into
/// restored memory). Before the credentials: a lower nice value or a real-time policy may need
/// the privileges the process may not have.
pub(super) fn thread_state(rs: &mut dyn Inject, t: &ThreadImage) -> StepResult {
    if let Some(s) = &t.sched {
        set_sched(rs, s)?;
    }
    super::attrs::thread_before_creds(rs, &t.attrs)?;
    if let Some((head, len)) = t.robust_list {
        remote::set_robust_list(rs, head, len)?;
    }
    // Always set the alternate stack: with none in the image it must be disabled, or the
    // one the parked child inherited from haul (Rust's main-thread guard stack, unmapped
    // since) stays, and the first SA_ONSTACK handler (every Python handler) dies on it.
    match &t.sigaltstack {
        Some(ss) => remote::sigaltstack(rs, ss.sp, ss.flags, ss.size)?,
        None => remote::sigaltstack(rs, 0, libc::SS_DISABLE, 0)?,
    }
    if t.clear_child_tid != 0 {
        remote::set_tid_address(rs, t.clear_child_tid)?;
    }
    if let Some(r) = &t.rseq {
        remote::rseq_register(rs, r.addr, r.len, r.sig)?;
    }
    Ok(())
}

/// Gives the thread `rs` drives its dumped policy and priority (`sched_setscheduler(2)`), nice
/// value (`setpriority(2)`, per thread in Linux) and CPUs (`sched_setaffinity(2)`): otherwise
/// it would run with haul's (a haul started by `nice` from cron would slow down every process
/// it restores). CPUs are host-specific: a set that names none of this host's is left as
/// haul's, with a warning.
fn set_sched(rs: &mut dyn Inject, s: &crate::image::Sched) -> StepResult {
    remote::sched_setscheduler(rs, s.policy, s.priority as i32)?;
    remote::setpriority(rs, s.nice)?;
    if s.cpus.is_empty() {
        return Ok(());
    }
    let r = remote::sched_setaffinity(rs, &s.cpus)?;
    if r < 0 {
        tracing::warn!(
            tid = rs.tid(),
            cpus = ?s.cpus,
            "the thread's CPUs cannot be set here ({}): it may run on haul's",
            std::io::Error::from_raw_os_error(-r as i32)
        );
    }
    Ok(())
}

/// Creates a thread in the rebuilt process by a `clone3(2)` injected into its main thread
/// (`rs`), with the dumped tid when `same`, and waits for its first stop. Returns its tid.
/// The stack is a scratch page the thread never runs on: its registers are replaced before
/// it runs.
pub(super) fn spawn_thread(
    rs: &mut dyn Inject,
    t: &ThreadImage,
    scratch: u64,
    same: bool,
) -> StepResult<i32> {
    let stack = scratch + SCRATCH_LEN - PAGE_SIZE as u64;
    let want = same.then_some(t.tid);
    let what = format!("clone3 of thread {}", t.tid);
    let tid = remote::clone3_thread(rs, stack, PAGE_SIZE as u64, want, &what)?;
    if same && tid != t.tid {
        return Err(StepError::ThreadId {
            want: t.tid,
            got: tid,
        });
    }
    // The new thread starts traced, with a PTRACE_EVENT_STOP before its first instruction.
    match ptrace::wait_stop(tid)? {
        ptrace::Stop::Event { .. } => Ok(tid),
        stop => Err(StepError::FirstStop { tid, stop }),
    }
}

/// Gives the new, stopped thread `tid` the state of `t`: its name, its own state, the
/// process's credentials, then its registers, XSTATE and signal mask.
pub(super) fn finish_thread(
    pid: i32,
    tid: i32,
    t: &ThreadImage,
    p: &ProcessImage,
    scratch: u64,
) -> StepResult {
    let mut ts = RemoteSyscall::new(pid, tid)?;
    ts.set_insn(scratch);
    ts.set_args_area(scratch + ARGS_OFF, ARGS_LEN);
    remote::set_name(&mut ts, &t.comm)?;
    thread_state(&mut ts, t)?;
    // Its own seccomp filters, with haul's privileges (the shared ones it inherited).
    super::seccomp::suspend(p, tid)?;
    super::seccomp::install_own(&mut ts, p, t.tid)?;
    super::creds::restore_creds(&mut ts, p)?;
    super::attrs::thread_after_creds(&mut ts, &t.attrs)?;
    super::signals::queue_siginfo(&mut ts, tid, &t.pending_info, false)?;
    let regs = final_regs(t)?;
    ts.set_orig_regs(regs);
    // Dropping the injector writes those registers back.
    drop(ts);
    set_thread_regs(tid, t, &regs)
}

/// Lets the stopped thread `tid`, rebuilt from `t` with its final registers set, run:
/// `PTRACE_DETACH`. A thread the dump found inside an interruptible syscall is first moved to
/// a stop inside the kernel's signal delivery (`PTRACE_INTERRUPT`, `PTRACE_CONT`, then its
/// `PTRACE_EVENT_STOP`), where it is given the syscall's own state back
/// ([`Regs::before_restart`]): on the detach the kernel then runs the syscall again, or
/// fails it with `EINTR` when a signal's handler runs first, exactly as for the live thread.
/// With the rewound registers alone, a signal arriving before the thread is back in the
/// syscall (one queued by the restore, or sent as it starts) would run its handler and then
/// the syscall again: `pause()` would go on waiting for the signal it had just handled.
pub(super) fn let_go(tid: i32, t: &ThreadImage) -> StepResult {
    let Some(code) = t.restart else {
        return Ok(ptrace::detach(tid, 0)?);
    };
    let regs = final_regs(t)?.before_restart(code);
    ptrace::interrupt(tid)?;
    ptrace::cont(tid, 0)?;
    // The interrupt's trap comes before any signal is dequeued; a signal-delivery stop is
    // inside signal delivery too, and its signal is delivered by the detach.
    let sig = match ptrace::wait_stop(tid)? {
        ptrace::Stop::Event { .. } => 0,
        ptrace::Stop::Signal { sig } => sig,
        stop => return Err(StepError::ReleaseStop { tid, stop }),
    };
    ptrace::setregs(tid, &regs)?;
    Ok(ptrace::detach(tid, sig)?)
}

/// A thread's registers as the image has them, ready to run: the dump already adjusted an
/// interrupted syscall, so no restart logic must run again ([`let_go`] hands that decision
/// back to the kernel at the very end).
pub(super) fn final_regs(t: &ThreadImage) -> StepResult<Regs> {
    let mut regs = Regs::from_bytes(&t.regs).ok_or(StepError::BadRegs)?;
    regs.orig_rax = u64::MAX;
    Ok(regs)
}

/// Sets the registers, XSTATE (or FPU state) and signal mask of stopped thread `tid`.
pub(super) fn set_thread_regs(tid: i32, t: &ThreadImage, regs: &Regs) -> StepResult {
    ptrace::setregs(tid, regs)?;
    if !t.xstate.is_empty() {
        ptrace::setregset(tid, ptrace::NT_X86_XSTATE, &t.xstate).map_err(StepError::Xstate)?;
    } else if !t.fpregs.is_empty() {
        ptrace::setregset(tid, ptrace::NT_PRFPREG, &t.fpregs)?;
    }
    Ok(ptrace::set_sigmask(tid, t.sigmask)?)
}
