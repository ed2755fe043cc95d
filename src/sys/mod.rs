//! The only door to the kernel (DESIGN.md §1): every `unsafe` block and raw syscall of haul lives
//! under this module. Each wrapper is small, names its syscall and man page, and returns
//! [`SysError`] with the context of the call (which pid, which address).
//!
//! - [`ptrace`]: seize/interrupt/wait/detach, registers and regsets, sigmask, rseq config.
//! - [`remote`]: syscalls injected into a ptrace-stopped thread, and a scratch page in it.
//! - [`clock`]: `CLOCK_MONOTONIC` in µs, shared by haul and its checkpoint worker.
//! - [`file`]: `flock(2)` locks and `posix_fadvise(2)` on haul's own files.
//! - [`host`]: haul's own process: child subreaper, reaping a child.
//! - [`kcmp`]: whether two processes share their address space.
//! - [`mem`]: page-aligned buffers, `process_vm_readv`/`writev`, `/proc/PID/mem`.
//! - [`net`]: TCP keepalive on a socket.
//! - [`pagemap`]: `/proc/PID/pagemap` entries and the `PAGEMAP_SCAN` ioctl.
//! - [`uffd`]: userfaultfd ioctls.
//! - [`spawn`]: the parked process a restore rebuilds (clone3 `set_tid`), re-parented away.
//! - [`shm`]: the filesystem of a mapped file (`statfs`), SysV semaphores' last users.
//! - [`sysvipc`]: SysV segments, semaphore sets and message queues: read, made, attached.
//! - [`tty`]: termios, window size, pty ioctls, a terminal's foreground group, unread bytes.
//! - [`process`]: pidfd, signals, robust lists, rlimits, clone3, `PR_SET_MM_MAP`, rseq constants.
//! - [`seccomp`]: a thread's seccomp filters read by ptrace, and their suspension while haul injects.
#![allow(unsafe_code)]

pub mod clock;
pub mod events;
pub mod file;
pub mod host;
pub mod inetdiag;
pub mod inetsock;
pub mod kcmp;
pub mod mem;
pub mod net;
pub mod pagemap;
pub mod pipe;
pub mod process;
pub mod ptrace;
pub mod remote;
pub mod seccomp;
pub mod shm;
pub mod sockdiag;
pub mod socket;
pub mod spawn;
pub mod stored;
pub mod sysvipc;
pub mod tcprepair;
pub mod tty;
pub mod uffd;
pub mod uffd_restore;

use std::io;

/// Errors of the `sys` module.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A syscall or file operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A traced thread exited or was killed while haul held it.
    #[error("thread {tid} is gone: {how}")]
    Gone { tid: i32, how: String },
    /// A traced thread stopped in a way haul did not ask for and cannot handle.
    #[error("thread {tid}: unexpected wait status {status:#x} ({what})")]
    UnexpectedStop { tid: i32, status: i32, what: String },
    /// No `syscall` instruction was found to run an injected syscall.
    #[error("thread {tid}: no syscall instruction found (not at rip-2, not in [vdso])")]
    NoSyscallInsn { tid: i32 },
    /// A value the kernel returned does not have the expected shape.
    #[error("{0}")]
    Invalid(String),
}

impl SysError {
    /// The errno of an [`SysError::Io`], if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SysError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Result of the `sys` module.
pub type Result<T, E = SysError> = std::result::Result<T, E>;

/// Builds a [`SysError::Io`] from the current `errno`.
pub(crate) fn last_err(context: impl Into<String>) -> SysError {
    SysError::Io {
        context: context.into(),
        source: io::Error::last_os_error(),
    }
}

/// Builds a [`SysError::Io`] from an `io::Error`.
pub(crate) fn io_err(context: impl Into<String>, source: io::Error) -> SysError {
    SysError::Io {
        context: context.into(),
        source,
    }
}

/// Turns a `-1`/errno return value into a result.
pub(crate) fn check(ret: libc::c_long, context: impl FnOnce() -> String) -> Result<libc::c_long> {
    if ret < 0 {
        Err(last_err(context()))
    } else {
        Ok(ret)
    }
}

/// Page size of x86_64.
pub const PAGE_SIZE: usize = 4096;
