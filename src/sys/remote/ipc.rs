//! SysV IPC calls injected into a thread: `shmat(2)`, which attaches a segment at the
//! address the dumped process had it.

use super::Inject;
use crate::sys::Result;

/// `shmat(shmid, addr, flags)` (see shmat(2)): attaches segment `shmid` at exactly `addr`
/// (page-aligned; nothing may be mapped there) with `flags` (`SHM_RDONLY`, `SHM_EXEC`).
/// Returns the address attached.
pub fn shmat<R: Inject + ?Sized>(r: &mut R, shmid: i32, addr: u64, flags: i32) -> Result<u64> {
    r.call_ok(
        libc::SYS_shmat,
        [shmid as u64, addr, flags as u64, 0, 0, 0],
        &format!("shmat shmid {shmid} at {addr:#x}"),
    )
}
