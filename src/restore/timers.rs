//! The timer steps: POSIX timers recreated with their ids, clocks and notifications and
//! re-armed, and the interval timers (`setitimer`). Last before the process runs, so that they
//! start counting as close to running as can be.

use super::error::{StepError, StepResult};
use crate::image::ProcessImage;
use crate::sys::remote::{self, Inject, SigEvent};

/// Recreates the POSIX timers with their dumped ids (`PR_TIMER_CREATE_RESTORE_IDS` makes
/// `timer_create(2)` take the id from its output argument), clocks and notifications (a
/// `SIGEV_THREAD_ID` timer signals the rebuilt thread that had the dumped tid), and re-arms
/// them with the time they had left. `threads` are the rebuilt tids in image order.
pub(super) fn restore_posix_timers(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    threads: &[(i32, u64)],
) -> StepResult {
    if p.posix_timers.is_empty() {
        return Ok(());
    }
    remote::timer_create_restore_ids(rs, true)?;
    for t in &p.posix_timers {
        let tid = if t.tid == 0 {
            0
        } else {
            p.threads
                .iter()
                .zip(threads)
                .find(|(old, _)| old.tid == t.tid)
                .map(|(_, new)| new.0)
                .ok_or(StepError::TimerThread {
                    id: t.id,
                    tid: t.tid,
                })?
        };
        let event = SigEvent {
            value: t.sigval,
            signo: t.signo,
            notify: t.notify,
            tid,
        };
        let got = remote::timer_create(rs, t.clock, &event, t.id)?;
        if got != t.id {
            return Err(StepError::TimerId { id: t.id, got });
        }
        if t.value_ns > 0 {
            // Relative: the time it had left.
            remote::timer_settime(rs, t.id, t.interval_ns, t.value_ns)?;
        }
    }
    remote::timer_create_restore_ids(rs, false)?;
    Ok(())
}

/// The interval timers (`alarm()` is `ITIMER_REAL`), each with the time it had left.
pub(super) fn restore_itimers(rs: &mut dyn Inject, p: &ProcessImage) -> StepResult {
    for t in &p.itimers {
        remote::setitimer(rs, t.which, t.interval_us, t.value_us)?;
    }
    Ok(())
}
