//! Calls about haul's own process and files that the benchmarks need: becoming the child
//! subreaper, reaping a child, and dropping a file from the page cache.

use super::{last_err, Result};
use std::os::fd::AsRawFd;

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

/// `posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`, see posix_fadvise(2): asks the kernel to
/// drop the file's clean pages from the page cache (a hint).
pub fn drop_from_page_cache(f: &std::fs::File) -> Result<()> {
    // SAFETY: integer arguments only; `f` is open for the call.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(super::io_err(
            "posix_fadvise(DONTNEED)",
            std::io::Error::from_raw_os_error(r),
        ));
    }
    Ok(())
}
