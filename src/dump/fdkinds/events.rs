//! Epoll and inotify instances: recognised (or refused by name) before the freeze, their
//! state captured under it.

use super::unsupported;
use crate::dump::DumpError;
use crate::image::{FdImage, FdKind};
use crate::proc;
use std::os::fd::OwnedFd;

/// The record of epoll instance `fd`, or its refusal.
pub(crate) fn epoll(
    pid: i32,
    fd: i32,
    target: &str,
    _info: &proc::FdInfo,
) -> Result<FdKind, DumpError> {
    Err(unsupported(format!(
        "pid {pid} fd {fd}: {target} (epoll) is not supported yet"
    )))
}

/// The record of inotify instance `fd`, or its refusal.
pub(crate) fn inotify(
    pid: i32,
    fd: i32,
    target: &str,
    _info: &proc::FdInfo,
) -> Result<FdKind, DumpError> {
    Err(unsupported(format!(
        "pid {pid} fd {fd}: {target} (inotify) is not supported yet"
    )))
}

/// What only the instance itself tells, read under the freeze through `pidfd`.
pub(crate) fn capture(_pidfd: &OwnedFd, _f: &mut FdImage) -> Result<(), DumpError> {
    Ok(())
}
