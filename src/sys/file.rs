//! Advisory whole-file locks (`flock(2)`) and access-pattern advice (`posix_fadvise(2)`) on
//! files haul opens itself: the store's lock, a job's run lock, pack reads.
//!
//! The lock is nix's `Flock` (released when dropped, with the file closed); this module only
//! keeps nix behind the door and turns its errno into a [`LockError`] a caller can match on.

use std::fs::File;

/// How a lock is shared: `LOCK_SH` or `LOCK_EX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// A held `flock(2)` lock on a file; dropping it unlocks and closes the file.
#[derive(Debug)]
pub struct FileLock {
    _lock: nix::fcntl::Flock<File>,
}

/// Why [`lock`] did not lock. The file is handed back so the caller can try again.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds a conflicting lock (`EWOULDBLOCK`, non-blocking only).
    #[error("held by another process")]
    Held(File),
    /// A signal interrupted a blocking wait (`EINTR`).
    #[error("interrupted while waiting")]
    Interrupted(File),
    /// Any other failure of `flock(2)`.
    #[error("flock: {source}")]
    Failed {
        file: File,
        #[source]
        source: std::io::Error,
    },
}

/// `flock(2)`: locks `file` in `mode`, waiting for a conflicting lock to go away unless
/// `nonblocking` (then [`LockError::Held`]).
pub fn lock(file: File, mode: LockMode, nonblocking: bool) -> Result<FileLock, LockError> {
    use nix::fcntl::{Flock, FlockArg};
    let arg = match (mode, nonblocking) {
        (LockMode::Shared, false) => FlockArg::LockShared,
        (LockMode::Shared, true) => FlockArg::LockSharedNonblock,
        (LockMode::Exclusive, false) => FlockArg::LockExclusive,
        (LockMode::Exclusive, true) => FlockArg::LockExclusiveNonblock,
    };
    match Flock::lock(file, arg) {
        Ok(l) => Ok(FileLock { _lock: l }),
        Err((f, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held(f)),
        Err((f, nix::errno::Errno::EINTR)) => Err(LockError::Interrupted(f)),
        Err((f, e)) => Err(LockError::Failed {
            file: f,
            source: e.into(),
        }),
    }
}

/// What [`advise`] tells the kernel about the file's pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// `POSIX_FADV_RANDOM`: no read-ahead.
    Random,
    /// `POSIX_FADV_DONTNEED`: drop the cached pages.
    DontNeed,
}

/// `posix_fadvise(2)` over the whole file. Advice only: a failure changes nothing but speed,
/// so it is returned for the caller to ignore or log.
pub fn advise(file: &File, advice: Advice) -> std::io::Result<()> {
    use nix::fcntl::PosixFadviseAdvice as A;
    let a = match advice {
        Advice::Random => A::POSIX_FADV_RANDOM,
        Advice::DontNeed => A::POSIX_FADV_DONTNEED,
    };
    use std::os::fd::AsRawFd;
    nix::fcntl::posix_fadvise(file.as_raw_fd(), 0, 0, a).map_err(std::io::Error::from)
}

/// Turns `O_DIRECT` on or off for `file`: `fcntl(2)` `F_GETFL` then `F_SETFL`. With it,
/// writes go from the caller's buffer to the device without the page cache, and must be
/// aligned (buffer address, file offset and length) to the device's logical block size; whole
/// 4 KiB pages of a [`crate::sys::mem::PageBuf`] at page-aligned offsets suit every device.
/// EINVAL where the filesystem has no direct I/O (tmpfs).
pub fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_DIRECT
    } else {
        flags - OFlag::O_DIRECT
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}
