//! Terminals: pty masters and slaves, and the terminal a process was started on.

use super::unsupported;
use crate::dump::DumpError;
use crate::image::{FdImage, FdKind};
use crate::proc;
use std::os::fd::OwnedFd;

/// The record of terminal `fd` (a character device of a tty major), or its refusal.
pub(crate) fn kind(
    pid: i32,
    fd: i32,
    target: &str,
    _info: &proc::FdInfo,
    _md: &std::fs::Metadata,
) -> Result<FdKind, DumpError> {
    Err(unsupported(format!(
        "pid {pid} fd {fd}: {target} (tty) is not supported yet"
    )))
}

/// What only the terminal tells (termios, window size, unread data), read under the freeze
/// through `pidfd`.
pub(crate) fn capture(_pidfd: &OwnedFd, _f: &mut FdImage) -> Result<(), DumpError> {
    Ok(())
}
