//! TCP and UDP sockets: recognised (or refused by name) before the freeze, their state
//! captured under it.

use crate::dump::DumpError;
use crate::image::{FdImage, FdKind};
use crate::proc;
use std::os::fd::OwnedFd;

/// The record of TCP or UDP socket `ino`, or its refusal; `Ok(None)` for a socket that is not
/// one (the caller then refuses it by its kind).
pub(crate) fn kind(
    _pid: i32,
    _fd: i32,
    _target: &str,
    _ino: u64,
    _info: &proc::FdInfo,
) -> Result<Option<FdKind>, DumpError> {
    Ok(None)
}

/// What only the socket itself tells (its options), read under the freeze through `pidfd`.
pub(crate) fn capture(_pidfd: &OwnedFd, _f: &mut FdImage) -> Result<(), DumpError> {
    Ok(())
}
