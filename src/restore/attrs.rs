//! The prctl-style attributes of a rebuilt process (issue #11: carry it or refuse it), set by
//! syscalls injected into it. Each function runs in the step whose privilege it needs: the
//! process-wide ones in *fs*, with haul's credentials; a thread's timer slack and speculation
//! control before its credentials; its parent-death signal and the process's dumpable flag
//! after them (the kernel clears both whenever an effective or filesystem id changes).

use super::error::{StepError, StepResult};
use crate::image::{ProcAttrs, ProcessImage, ThreadAttrs};
use crate::sys::remote::{self, prctl, Inject};

/// Process-wide, before the credentials: THP disabled, child subreaper, `oom_score_adj`,
/// membarrier registrations, the core dump filter and the audit loginuid. Images without them leave the process as spawned.
pub(super) fn process_attrs(rs: &mut dyn Inject, p: &ProcessImage) -> StepResult {
    let a: &ProcAttrs = &p.attrs;
    let pid = rs.pid();
    if let Some(v) = a.thp_disable.filter(|&v| v != 0) {
        // PR_GET_THP_DISABLE gives 1, or 1 | PR_THP_DISABLE_EXCEPT_ADVISED (6.18): the flags
        // above bit 0 go back in the third argument.
        prctl(
            rs,
            [libc::PR_SET_THP_DISABLE as u64, 1, u64::from(v & !1), 0, 0],
            &format!("prctl PR_SET_THP_DISABLE {v:#x}"),
        )?;
    }
    if a.child_subreaper == Some(true) {
        prctl(
            rs,
            [libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0],
            "prctl PR_SET_CHILD_SUBREAPER",
        )?;
    }
    if let Some(adj) = a.oom_score_adj {
        let now = crate::proc::oom_score_adj(pid)?;
        if now != adj {
            // Written while the process still has haul's privilege (CAP_SYS_RESOURCE):
            // that also makes it the process's floor (oom_score_adj_min), as when an
            // administrator set it; the floor the process had cannot be read.
            write_self_file(rs, "/proc/self/oom_score_adj", &adj.to_string())?;
        }
    }
    if let Some(mask) = a.membarrier {
        // Registered again, each command it had made (a fresh process has none).
        for cmd in crate::sys::process::membarrier::REGISTER {
            if u64::from(mask) & cmd != 0 {
                remote::membarrier(rs, cmd)?;
            }
        }
    }
    if let Some(filter) = a.coredump_filter {
        let now = crate::proc::coredump_filter(pid)?;
        if now != filter {
            write_self_file(rs, "/proc/self/coredump_filter", &format!("{filter:#x}"))?;
        }
    }
    if let Some(uid) = a.loginuid {
        let now = crate::proc::loginuid(pid)?;
        if now != uid {
            // Only a process may set its own loginuid: unset (haul's, most often), anyone
            // may set it once; changing a set one needs CAP_AUDIT_CONTROL and is refused when
            // the loginuid is immutable. A failure fails the restore, naming it.
            write_self_file(rs, "/proc/self/loginuid", &uid.to_string()).map_err(|e| {
                StepError::Loginuid {
                    now,
                    source: Box::new(e),
                }
            })?;
        }
    }
    Ok(())
}

/// Writes `value` to `path` by an open, write and close injected into the process.
fn write_self_file(rs: &mut dyn Inject, path: &str, value: &str) -> StepResult {
    let fd = remote::open(rs, path, libc::O_WRONLY | libc::O_CLOEXEC)?;
    let r = remote::write(
        rs,
        fd,
        value.as_bytes(),
        &format!("write {value} to {path}"),
    );
    let _ = remote::close(rs, fd);
    r?;
    Ok(())
}

/// A thread's own, before the credentials: timer slack and speculation control.
pub(super) fn thread_before_creds(rs: &mut dyn Inject, a: &ThreadAttrs) -> StepResult {
    if let Some(ns) = a.timer_slack_ns {
        // 0 would mean "the default" (haul's slack at the spawn), and real-time threads have
        // none and ignore the call: set only a real value.
        if ns != 0 {
            prctl(
                rs,
                [libc::PR_SET_TIMERSLACK as u64, ns, 0, 0, 0],
                &format!("prctl PR_SET_TIMERSLACK {ns}"),
            )?;
        }
    }
    for (&which, &want) in crate::image::attrs::SPEC_CTRLS.iter().zip(&a.spec_ctrl) {
        if want & libc::PR_SPEC_PRCTL == 0 {
            continue; // not controllable by prctl there: nothing the process chose
        }
        let now = remote::prctl_raw(
            rs,
            [libc::PR_GET_SPECULATION_CTRL as u64, which as u64, 0, 0, 0],
        )?;
        if now == i64::from(want) {
            continue;
        }
        let state = want
            & (libc::PR_SPEC_ENABLE
                | libc::PR_SPEC_DISABLE
                | libc::PR_SPEC_FORCE_DISABLE
                | libc::PR_SPEC_DISABLE_NOEXEC);
        prctl(
            rs,
            [
                libc::PR_SET_SPECULATION_CTRL as u64,
                which as u64,
                u64::from(state),
                0,
                0,
            ],
            &format!("prctl PR_SET_SPECULATION_CTRL {which} {state:#x} (this host cannot)"),
        )?;
    }
    Ok(())
}

/// A thread's own, after its credentials: the parent-death signal. The restored process's
/// parent is not the one it had (it is re-parented to init or a subreaper): the signal comes
/// when that one dies.
pub(super) fn thread_after_creds(rs: &mut dyn Inject, a: &ThreadAttrs) -> StepResult {
    if let Some(sig) = a.pdeathsig.filter(|&s| s != 0) {
        prctl(
            rs,
            [libc::PR_SET_PDEATHSIG as u64, sig as u64, 0, 0, 0],
            &format!("prctl PR_SET_PDEATHSIG {sig}"),
        )?;
    }
    Ok(())
}

/// The dumpable flag, once every thread has its credentials (setting a non-root uid made the
/// process non-dumpable, its /proc files root's).
pub(super) fn dumpable(rs: &mut dyn Inject, p: &ProcessImage) -> StepResult {
    if let Some(d) = p.attrs.dumpable {
        prctl(
            rs,
            [libc::PR_SET_DUMPABLE as u64, u64::from(d), 0, 0, 0],
            &format!("prctl PR_SET_DUMPABLE {d}"),
        )?;
    }
    Ok(())
}
