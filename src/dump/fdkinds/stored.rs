//! Files whose contents the image stores: memfds, deleted-but-open files, `/dev/shm` files.

use super::unsupported;
use crate::dump::DumpError;
use crate::image::{FdImage, FdKind};
use crate::proc;
use std::os::fd::OwnedFd;

/// The record of memfd or deleted file `fd` (`md`: its metadata, None for a memfd), or its
/// refusal.
pub(crate) fn kind(
    pid: i32,
    fd: i32,
    target: &str,
    _info: &proc::FdInfo,
    md: Option<&std::fs::Metadata>,
) -> Result<FdKind, DumpError> {
    let what = if md.is_some() {
        "deleted file"
    } else {
        "memfd"
    };
    Err(unsupported(format!(
        "pid {pid} fd {fd}: {target} ({what}) is not supported yet"
    )))
}

/// The contents (and seals), read under the freeze through `pidfd`.
pub(crate) fn capture(_pidfd: &OwnedFd, _f: &mut FdImage) -> Result<(), DumpError> {
    Ok(())
}
