//! The signal steps: every changed signal action, and the signals pending at the dump,
//! queued again with their siginfo where the image has it, else re-sent.

use super::error::{StepError, StepResult};
use crate::image::ProcessImage;
use crate::sys::ptrace;
use crate::sys::remote::{self, Inject, SigAction};

/// Every signal action the process changed from the default (SIGKILL and SIGSTOP cannot be
/// set). The parked child starts with every action at the default (`spawn_parked`): only the
/// ones the process changed cost an injected syscall.
pub(super) fn restore_sigactions(rs: &mut dyn Inject, p: &ProcessImage) -> StepResult {
    for (i, a) in p.sigactions.iter().enumerate() {
        let sig = i as i32 + 1;
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        if a.handler == 0 && a.flags == 0 && a.restorer == 0 && a.mask == 0 {
            continue;
        }
        let action = SigAction {
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        };
        remote::rt_sigaction(rs, sig, &action)?;
    }
    Ok(())
}

/// The pending-set bit of the signal in a raw `siginfo_t` (its first int), 0 if none.
pub(super) fn siginfo_bit(info: &[u8]) -> u64 {
    remote::siginfo_signo(info).map_or(0, |sig| 1u64 << (sig - 1))
}

/// Queues `infos` again (raw `siginfo_t`s) by syscalls injected into the thread `rs` drives:
/// `rt_tgsigqueueinfo(2)` to that thread `tid`, or with `shared` `rt_sigqueueinfo(2)` to the
/// process. A process may queue any siginfo to itself, so sender, code and value are kept.
/// SIGKILL and SIGSTOP are left out.
pub(super) fn queue_siginfo(
    rs: &mut dyn Inject,
    tid: i32,
    infos: &[Vec<u8>],
    shared: bool,
) -> StepResult {
    let pid = rs.pid();
    for info in infos {
        let sig = match remote::siginfo_signo(info) {
            Some(sig) if info.len() == ptrace::SIGINFO_SIZE => sig,
            _ => return Err(StepError::BadSiginfo { len: info.len() }),
        };
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        if shared {
            remote::rt_sigqueueinfo(rs, pid, sig, info)?;
        } else {
            remote::rt_tgsigqueueinfo(rs, pid, tid, sig, info)?;
        }
    }
    Ok(())
}

/// The signals to send again, once no more syscalls will be injected: `(tid, sig)` to a thread
/// (`tid` Some) or to the process. These are the pending signals [`queue_siginfo`] did not
/// queue already (an image without their siginfo, or one the kernel could not queue one for);
/// SIGKILL and SIGSTOP are left out. `threads` are the (tid, thread-private pending set) of
/// the rebuilt threads, in image order.
pub(super) fn to_resend(p: &ProcessImage, threads: &[(i32, u64)]) -> Vec<(Option<i32>, i32)> {
    let queued = |infos: &[Vec<u8>]| infos.iter().fold(0u64, |m, i| m | siginfo_bit(i));
    let shared = p.shared_pending & !queued(&p.shared_pending_info);
    let mut out = Vec::new();
    for sig in 1..=64i32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let bit = 1u64 << (sig - 1);
        for (&(tid, pending), t) in threads.iter().zip(&p.threads) {
            if pending & !queued(&t.pending_info) & bit != 0 {
                out.push((Some(tid), sig));
            }
        }
        if shared & bit != 0 {
            out.push((None, sig));
        }
    }
    out
}

/// Sends the process the signals [`to_resend`] names (thread-private ones with tgkill,
/// process-wide ones with kill): they are queued while it is stopped and delivered (or stay
/// pending, if blocked) once it runs. Their siginfo is not kept: the sender is haul.
pub(super) fn queue_pending(pid: i32, p: &ProcessImage, threads: &[(i32, u64)]) -> StepResult {
    for (tid, sig) in to_resend(p, threads) {
        let r = match tid {
            Some(tid) => crate::sys::process::tgkill(pid, tid, sig),
            None => crate::sys::process::kill(pid, sig),
        };
        r.map_err(|source| StepError::Resend { sig, tid, source })?;
    }
    Ok(())
}
