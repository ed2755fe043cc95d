//! Calls injected to make a stored file again (memfds, deleted files): `memfd_create`, a
//! new open file description of an fd (`open("/proc/self/fd/N")`), and a copy of the
//! target's fd taken into haul (`pidfd_getfd(2)`), through which haul writes the contents.

use std::os::fd::OwnedFd;

use super::{cstr, put, Inject};
use crate::sys::Result;

/// `memfd_create(name, flags)` (`MFD_*`); returns the new fd.
pub fn memfd_create<R: Inject + ?Sized>(r: &mut R, name: &str, flags: u32) -> Result<u64> {
    let at = put(r, &cstr(name)?)?;
    r.call_ok(
        libc::SYS_memfd_create,
        [at, u64::from(flags), 0, 0, 0, 0],
        &format!("memfd_create {name}"),
    )
}

/// A new open file description of the file of the process's `fd`, opened with `flags`
/// (`open("/proc/self/fd/FD", flags)`: the magic link reaches a memfd or a deleted file
/// too); returns its number.
pub fn reopen<R: Inject + ?Sized>(r: &mut R, fd: u64, flags: i32) -> Result<u64> {
    super::open(r, &format!("/proc/self/fd/{fd}"), flags)
}

/// haul's own copy of the process's `fd` (one open file description with it):
/// `pidfd_getfd(2)`.
pub fn copy_fd<R: Inject + ?Sized>(r: &mut R, fd: u64) -> Result<OwnedFd> {
    let pidfd = crate::sys::process::pidfd_open(r.pid())?;
    crate::sys::process::pidfd_getfd(&pidfd, fd as i32)
}
