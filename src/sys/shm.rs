//! Shared memory objects as haul looks at them from outside: the filesystem a mapped file
//! lives on (`statfs(2)`), and who last operated a SysV semaphore (`semctl(2)` `GETPID`).

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
