//! Shared memory objects as haul looks at them from outside: the filesystem a mapped file
//! lives on (`statfs(2)`), which of its pages hold data (`SEEK_DATA`), and who last operated a
//! SysV semaphore (`semctl(2)` `GETPID`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{last_err, Result, SysError};

/// Whether `path` (followed, so `/proc/PID/map_files/A-B` names the mapped file itself) is
/// on a tmpfs: `statfs(2)`, `f_type == TMPFS_MAGIC`.
pub fn on_tmpfs(path: &Path) -> Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SysError::Invalid(format!("path {} holds a NUL byte", path.display())))?;
    // SAFETY: an all-zero statfs is a valid value for statfs(2) to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a statfs the call writes into.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return Err(last_err(format!("statfs {}", path.display())));
    }
    Ok(st.f_type == libc::TMPFS_MAGIC)
}

/// The pid of the last process that operated semaphore `num` of SysV set `semid`:
/// `semctl(semid, num, GETPID)`, see semctl(2). 0 if none has yet.
pub fn sem_last_pid(semid: i32, num: i32) -> Result<i32> {
    // SAFETY: GETPID takes no fourth argument; integer arguments only.
    let r = unsafe { libc::semctl(semid, num, libc::GETPID) };
    if r < 0 {
        return Err(last_err(format!(
            "semctl(GETPID) of semaphore {num} of set {semid}"
        )));
    }
    Ok(r)
}

/// The byte ranges of file `path` between `from` and `to` that hold data, in order:
/// `lseek(2)` `SEEK_DATA`/`SEEK_HOLE` on the file opened read-only. On tmpfs this counts
/// pages swapped out as data, and holes (never written) not: opened through
/// `/proc/PID/map_files/`, it lists the pages of a shared memory object whatever process
/// wrote them.
pub fn data_ranges(path: &Path, from: u64, to: u64) -> Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)
        .map_err(|e| super::io_err(format!("open {}", path.display()), e))?;
    let seek = |at: u64, whence: libc::c_int| -> Result<Option<u64>> {
        // SAFETY: lseek on a descriptor we own, integer arguments.
        let r = unsafe { libc::lseek(f.as_raw_fd(), at as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // No data at or after `at`.
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(super::io_err(
                format!("lseek {} to {at}", path.display()),
                e,
            ));
        }
        Ok(Some(r as u64))
    };
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let Some(data) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        if data >= to {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(to).min(to);
        out.push((data, hole));
        at = hole;
    }
    Ok(out)
}
