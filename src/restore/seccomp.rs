//! Seccomp at the restore: every thread gets its filters again, in the same order, with their
//! flags, and strict mode where it had it.
//!
//! The chain every thread shares (inherited at `clone`, or synced by
//! `SECCOMP_FILTER_FLAG_TSYNC`) is installed in the main thread before it makes the others,
//! so they inherit it and share it as the dump had it (a later `TSYNC` of the program then
//! finds every thread's chain an ancestor of its own). What a thread has beyond it is
//! installed by that thread. Each is installed before the thread's credentials are restored,
//! with haul's `CAP_SYS_ADMIN` (a thread without it would need `no_new_privs`), and the thread
//! traced with `PTRACE_O_SUSPEND_SECCOMP` first, so the filters apply to none of the syscalls
//! injected after them: they take effect when the restore detaches.
//!
//! Filters are installed with `SECCOMP_FILTER_FLAG_SPEC_ALLOW`: the thread's speculation
//! control is restored before, as the dump saw it (with whatever the original filters did to
//! it), and the install must leave it so.
//!
//! Limit: filters two threads have beyond the chain every thread shares are installed in each
//! (equal programs, no longer one filter): a later `TSYNC` by one of them fails where it
//! would have worked.

use super::error::{StepError, StepResult};
use super::tree::Refusal;
use crate::image::seccomp::SeccompImage;
use crate::image::ProcessImage;
use crate::sys::remote::{self, Inject};

/// Checks, before any process exists, that the filters of `p` can be installed here: haul
/// needs `CAP_SYS_ADMIN` (and no filter of its own) to suspend them while it injects, and the
/// image must name its threads and filters consistently.
pub(super) fn check(p: &ProcessImage) -> Result<(), Refusal> {
    let Some(img) = &p.seccomp else {
        return Ok(());
    };
    for t in &img.threads {
        if !p.threads.iter().any(|x| x.tid == t.tid) {
            return Err(Refusal(format!(
                "the seccomp filters of pid {} name thread {}, which the image does not have",
                p.pid, t.tid
            )));
        }
        if let Some(&i) = t.chain.iter().find(|&&i| img.filter(i).is_none()) {
            return Err(Refusal(format!(
                "thread {} of pid {} runs under seccomp filter {i}, which the image does not have",
                t.tid, p.pid
            )));
        }
    }
    let can = crate::sys::seccomp::can_suspend().map_err(|e| Refusal(e.to_string()))?;
    if !can {
        return Err(Refusal(format!(
            "pid {} ran under seccomp: restoring its filters needs CAP_SYS_ADMIN, and no \
             seccomp filter of haul's own",
            p.pid
        )));
    }
    Ok(())
}

/// How many filters (oldest first) every thread of `p` shares: the main thread installs them
/// before it makes the others.
fn shared_len(img: &SeccompImage, p: &ProcessImage) -> usize {
    let tids: Vec<i32> = p.threads.iter().map(|t| t.tid).collect();
    img.shared_len(&tids)
}

/// Traces thread `tid` (of a process being restored from `p`) with `PTRACE_O_SUSPEND_SECCOMP`
/// when `p` has seccomp state, before any filter is installed in it: the syscalls injected
/// after it must not be filtered. A no-op for a process without seccomp.
pub(super) fn suspend(p: &ProcessImage, tid: i32) -> StepResult {
    if p.seccomp.is_some() {
        crate::sys::seccomp::suspend(tid).map_err(|e| StepError::At {
            what: format!("thread {tid}: suspending seccomp while haul injects"),
            source: Box::new(e.into()),
        })?;
    }
    Ok(())
}

/// Installs, in the main thread (`rs`), the filters every thread of `p` shares, before it makes
/// the other threads. Call [`suspend`] on it first.
pub(super) fn install_shared(rs: &mut dyn Inject, p: &ProcessImage) -> StepResult {
    let Some(img) = &p.seccomp else {
        return Ok(());
    };
    let n = shared_len(img, p);
    install(rs, img, &img.chain_of(p.pid)[..n])
}

/// Installs what thread `tid` of `p` has beyond the shared chain (through `rs`, an injector of
/// that thread): its own filters, oldest first, or strict mode. Call [`suspend`] on it first.
pub(super) fn install_own(rs: &mut dyn Inject, p: &ProcessImage, tid: i32) -> StepResult {
    let Some(img) = &p.seccomp else {
        return Ok(());
    };
    let Some(t) = img.thread(tid) else {
        return Ok(());
    };
    if t.strict {
        return Ok(remote::seccomp_set_strict(rs)?);
    }
    let n = shared_len(img, p);
    install(rs, img, &t.chain[n..])
}

/// Installs the filters `chain` (indices into `img.filters`, oldest first).
fn install(rs: &mut dyn Inject, img: &SeccompImage, chain: &[usize]) -> StepResult {
    for &i in chain {
        let f = img.filter(i).ok_or_else(|| StepError::At {
            what: format!("thread {}: seccomp filter {i}", rs.tid()),
            source: Box::new(StepError::Sys(crate::sys::SysError::Invalid(
                "the image has no such filter".into(),
            ))),
        })?;
        // The thread's speculation control was restored before (*threads*, `attrs`), as the
        // dump saw it, effects of the original filters included: the install must not change it.
        let flags = f.flags | crate::sys::seccomp::FILTER_FLAG_SPEC_ALLOW;
        remote::seccomp_set_filter(rs, flags, &f.program)?;
    }
    Ok(())
}
