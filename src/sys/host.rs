//! Calls about haul's own process: becoming the child subreaper and reaping a child (the
//! runner and the benchmarks; page-cache advice is in [`super::file`]).

use super::{last_err, Result};

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`, see PR_SET_CHILD_SUBREAPER(2const): orphaned
/// descendants (restored processes, whose parent is gone) are re-parented to this process, so
/// that it can reap them.
pub fn set_child_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        return Err(last_err("prctl(PR_SET_CHILD_SUBREAPER)"));
    }
    Ok(())
}

/// `waitpid(pid, &status, 0)`, see waitpid(2): waits for child `pid` to end and reaps it.
pub fn reap(pid: i32) -> Result<()> {
    let mut status = 0;
    // SAFETY: waitpid writes one c_int to `status`, a live local.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r < 0 {
        return Err(last_err(format!("waitpid({pid})")));
    }
    Ok(())
}

/// `waitpid(pid, &status, WNOHANG | __WALL)`, see waitpid(2): reaps child `pid` if it has
/// ended, whatever its exit signal (a fork snapshot of a checkpoint has none). Returns whether
/// it was reaped (false: it still runs). Only that pid is waited for, so the status of every
/// other child stays for whoever waits for it (`std::process::Child`).
pub fn reap_if_ended(pid: i32) -> Result<bool> {
    let mut status = 0;
    // SAFETY: waitpid writes one c_int to `status`, a live local.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
    if r < 0 {
        return Err(last_err(format!("waitpid({pid}, WNOHANG | __WALL)")));
    }
    Ok(r == pid)
}
