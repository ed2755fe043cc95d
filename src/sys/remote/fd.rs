//! File descriptor calls injected into a thread: open, close, `ftruncate`, `unlink`,
//! `close_range`, `dup3`, `lseek`, `fcntl`, `pipe2`, `write`, `eventfd2`, `signalfd4`,
//! timerfds, `flock` and record locks, and [`take_uffd`] (a userfaultfd made by the target
//! and taken into haul).

use std::mem::{offset_of, size_of};
use std::os::fd::OwnedFd;

use super::{cstr, field, put, Inject};
use crate::sys::{Result, SysError};

/// `open(path, flags)`; returns the new fd.
pub fn open<R: Inject + ?Sized>(r: &mut R, path: &str, flags: i32) -> Result<u64> {
    let at = put(r, &cstr(path)?)?;
    r.call_ok(
        libc::SYS_open,
        [at, flags as u64, 0, 0, 0, 0],
        &format!("open {path}"),
    )
}

/// `open(path, flags, mode)`: with `O_CREAT`, the new file's mode; returns the new fd.
pub fn open_mode<R: Inject + ?Sized>(r: &mut R, path: &str, flags: i32, mode: u32) -> Result<u64> {
    let at = put(r, &cstr(path)?)?;
    r.call_ok(
        libc::SYS_open,
        [at, flags as u64, u64::from(mode), 0, 0, 0],
        &format!("open {path}"),
    )
}

/// `ftruncate(fd, len)`.
pub fn ftruncate<R: Inject + ?Sized>(r: &mut R, fd: u64, len: u64) -> Result<()> {
    r.call_ok(
        libc::SYS_ftruncate,
        [fd, len, 0, 0, 0, 0],
        &format!("ftruncate fd {fd} to {len}"),
    )?;
    Ok(())
}

/// `unlink(path)`.
pub fn unlink<R: Inject + ?Sized>(r: &mut R, path: &str) -> Result<()> {
    let at = put(r, &cstr(path)?)?;
    r.call_ok(
        libc::SYS_unlink,
        [at, 0, 0, 0, 0, 0],
        &format!("unlink {path}"),
    )?;
    Ok(())
}

/// `close(fd)`.
pub fn close<R: Inject + ?Sized>(r: &mut R, fd: u64) -> Result<()> {
    r.call_ok(libc::SYS_close, [fd, 0, 0, 0, 0, 0], "close")?;
    Ok(())
}

/// `close_range(first, last, 0)`.
pub fn close_range<R: Inject + ?Sized>(r: &mut R, first: u32, last: u32) -> Result<()> {
    r.call_ok(
        libc::SYS_close_range,
        [u64::from(first), u64::from(last), 0, 0, 0, 0],
        "close_range",
    )?;
    Ok(())
}

/// `dup3(old, new, O_CLOEXEC if cloexec)`.
pub fn dup3<R: Inject + ?Sized>(r: &mut R, old: u64, new: u64, cloexec: bool) -> Result<()> {
    let flags = if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
    r.call_ok(
        libc::SYS_dup3,
        [old, new, flags, 0, 0, 0],
        &format!("dup3 fd {old} to fd {new}"),
    )?;
    Ok(())
}

/// `lseek(fd, pos, SEEK_SET)`.
pub fn lseek<R: Inject + ?Sized>(r: &mut R, fd: u64, pos: u64) -> Result<()> {
    r.call_ok(
        libc::SYS_lseek,
        [fd, pos, libc::SEEK_SET as u64, 0, 0, 0],
        &format!("lseek fd {fd} to {pos}"),
    )?;
    Ok(())
}

/// `fcntl(fd, F_DUPFD, 0)`: a copy of `fd` at the lowest free number.
pub fn dup_any<R: Inject + ?Sized>(r: &mut R, fd: u64) -> Result<u64> {
    r.call_ok(
        libc::SYS_fcntl,
        [fd, libc::F_DUPFD as u64, 0, 0, 0, 0],
        &format!("fcntl F_DUPFD of fd {fd}"),
    )
}

/// `fcntl(fd, F_SETPIPE_SZ, size)`.
pub fn set_pipe_size<R: Inject + ?Sized>(r: &mut R, fd: u64, size: u32) -> Result<()> {
    r.call_ok(
        libc::SYS_fcntl,
        [fd, libc::F_SETPIPE_SZ as u64, u64::from(size), 0, 0, 0],
        &format!("fcntl F_SETPIPE_SZ of fd {fd}"),
    )?;
    Ok(())
}

/// `fcntl(fd, F_SETFD, FD_CLOEXEC or 0)`.
pub fn set_cloexec<R: Inject + ?Sized>(r: &mut R, fd: u64, cloexec: bool) -> Result<()> {
    let v = if cloexec { libc::FD_CLOEXEC } else { 0 };
    r.call_ok(
        libc::SYS_fcntl,
        [fd, libc::F_SETFD as u64, v as u64, 0, 0, 0],
        &format!("fcntl F_SETFD of fd {fd}"),
    )?;
    Ok(())
}

/// `fcntl(fd, F_SETFL, flags)`: the status flags (O_NONBLOCK, O_APPEND, ...).
pub fn set_status_flags<R: Inject + ?Sized>(r: &mut R, fd: u64, flags: u32) -> Result<()> {
    r.call_ok(
        libc::SYS_fcntl,
        [fd, libc::F_SETFL as u64, u64::from(flags), 0, 0, 0],
        &format!("fcntl F_SETFL of fd {fd}"),
    )?;
    Ok(())
}

/// `pipe2(fds, 0)`; returns (read end, write end).
pub fn pipe2<R: Inject + ?Sized>(r: &mut R) -> Result<(u64, u64)> {
    let at = put(r, &[0u8; 8])?;
    r.call_ok(libc::SYS_pipe2, [at, 0, 0, 0, 0, 0], "pipe2")?;
    let mut two = [0u8; 8];
    r.read_mem(at, &mut two)?;
    let rd = i32::from_ne_bytes([two[0], two[1], two[2], two[3]]);
    let wr = i32::from_ne_bytes([two[4], two[5], two[6], two[7]]);
    Ok((rd as u64, wr as u64))
}

/// `write(fd, data, len)` from the argument area; returns how many bytes were written.
pub fn write<R: Inject + ?Sized>(r: &mut R, fd: u64, data: &[u8], what: &str) -> Result<u64> {
    let at = put(r, data)?;
    r.call_ok(libc::SYS_write, [fd, at, data.len() as u64, 0, 0, 0], what)
}

/// `eventfd2(0, flags)`; returns the new fd.
pub fn eventfd2<R: Inject + ?Sized>(r: &mut R, flags: u64) -> Result<u64> {
    r.call_ok(libc::SYS_eventfd2, [0, flags, 0, 0, 0, 0], "eventfd2")
}

/// `signalfd4(-1, &mask, 8, flags)`; returns the new fd.
pub fn signalfd4<R: Inject + ?Sized>(r: &mut R, mask: u64, flags: u64) -> Result<u64> {
    let at = put(r, &mask.to_ne_bytes())?;
    r.call_ok(
        libc::SYS_signalfd4,
        [u64::MAX, at, 8, flags, 0, 0],
        "signalfd4",
    )
}

/// `timerfd_create(clock, flags)`; returns the new fd.
pub fn timerfd_create<R: Inject + ?Sized>(r: &mut R, clock: i32, flags: u64) -> Result<u64> {
    r.call_ok(
        libc::SYS_timerfd_create,
        [clock as u64, flags, 0, 0, 0, 0],
        "timerfd_create",
    )
}

/// `timerfd_settime(fd, 0, &{interval, value} in ns, NULL)`: relative.
pub fn timerfd_settime<R: Inject + ?Sized>(
    r: &mut R,
    fd: u64,
    interval_ns: u64,
    value_ns: u64,
) -> Result<()> {
    let b = super::interval_and_value(interval_ns, value_ns, 1_000_000_000);
    let at = put(r, &b)?;
    r.call_ok(
        libc::SYS_timerfd_settime,
        [fd, 0, at, 0, 0, 0],
        "timerfd_settime",
    )?;
    Ok(())
}

/// `ioctl(fd, TFD_IOC_SET_TICKS, &ticks)`: a timerfd's expirations not read yet
/// (CONFIG_CHECKPOINT_RESTORE; the number from linux-raw-sys, libc has none).
pub fn timerfd_set_ticks<R: Inject + ?Sized>(r: &mut R, fd: u64, ticks: u64) -> Result<()> {
    let at = put(r, &ticks.to_ne_bytes())?;
    r.call_ok(
        libc::SYS_ioctl,
        [
            fd,
            u64::from(linux_raw_sys::ioctl::TFD_IOC_SET_TICKS),
            at,
            0,
            0,
            0,
        ],
        "ioctl TFD_IOC_SET_TICKS",
    )?;
    Ok(())
}

/// `flock(fd, LOCK_EX or LOCK_SH | LOCK_NB)`.
pub fn flock<R: Inject + ?Sized>(r: &mut R, fd: u64, write: bool) -> Result<()> {
    let op = if write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
    r.call_ok(
        libc::SYS_flock,
        [fd, op as u64, 0, 0, 0, 0],
        &format!("flock of fd {fd}"),
    )?;
    Ok(())
}

/// The `struct flock` bytes of a lock of `[start, start + len)` from the start of the file
/// (libc layout; `l_pid` 0, as OFD locks require).
pub fn flock_bytes(write: bool, start: u64, len: u64) -> Vec<u8> {
    type F = libc::flock;
    let ty = if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
    let mut b = vec![0u8; size_of::<F>()];
    field(&mut b, offset_of!(F, l_type), &ty.to_ne_bytes());
    field(
        &mut b,
        offset_of!(F, l_whence),
        &(libc::SEEK_SET as i16).to_ne_bytes(),
    );
    field(&mut b, offset_of!(F, l_start), &start.to_ne_bytes());
    field(&mut b, offset_of!(F, l_len), &len.to_ne_bytes());
    b
}

/// `fcntl(fd, F_SETLK or F_OFD_SETLK, &flock)`: takes a record lock without waiting.
pub fn set_record_lock<R: Inject + ?Sized>(
    r: &mut R,
    fd: u64,
    ofd: bool,
    write: bool,
    start: u64,
    len: u64,
) -> Result<()> {
    let at = put(r, &flock_bytes(write, start, len))?;
    let (cmd, name) = if ofd {
        (libc::F_OFD_SETLK, "F_OFD_SETLK")
    } else {
        (libc::F_SETLK, "F_SETLK")
    };
    r.call_ok(
        libc::SYS_fcntl,
        [fd, cmd as u64, at, 0, 0, 0],
        &format!("fcntl {name} of fd {fd}"),
    )?;
    Ok(())
}

/// A userfaultfd taken from a process by [`take_uffd`].
#[derive(Debug)]
pub struct TakenUffd {
    /// haul's copy of the uffd (no `UFFDIO_API` done on it yet).
    pub uffd: OwnedFd,
    /// A pidfd of the process.
    pub pidfd: OwnedFd,
}

/// Why [`take_uffd`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TakeUffdError {
    /// The injected `userfaultfd(2)` itself failed (EPERM: not allowed without
    /// `UFFD_USER_MODE_ONLY`; ENOSYS: not in this kernel).
    #[error("injected userfaultfd({flags:#x}) in pid {pid} failed: {source}")]
    Refused {
        flags: u64,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    /// Injecting, `pidfd_getfd` or the close of the target's copy failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl TakeUffdError {
    /// The errno of a refused `userfaultfd(2)`.
    pub fn refused_errno(&self) -> Option<i32> {
        match self {
            TakeUffdError::Refused { source, .. } => source.raw_os_error(),
            TakeUffdError::Sys(_) => None,
        }
    }
}

/// Makes the process create a userfaultfd (`userfaultfd(flags)` injected), takes it into
/// haul with `pidfd_getfd(2)`, and closes the process's copy whatever happened: it would keep
/// the uffd open (and its faults waiting, or its tracking alive) after haul is done with it.
pub fn take_uffd<R: Inject + ?Sized>(r: &mut R, flags: u64) -> Result<TakenUffd, TakeUffdError> {
    let pid = r.pid();
    let fd = r.call(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    if (-4095..0).contains(&fd) {
        return Err(TakeUffdError::Refused {
            flags,
            pid,
            source: std::io::Error::from_raw_os_error((-fd) as i32),
        });
    }
    let taken = crate::sys::process::pidfd_open(pid).and_then(|pidfd| {
        let uffd = crate::sys::process::pidfd_getfd(&pidfd, fd as i32)?;
        Ok(TakenUffd { uffd, pidfd })
    });
    let closed = r.call_ok(
        libc::SYS_close,
        [fd as u64, 0, 0, 0, 0, 0],
        "close of the target's userfaultfd",
    );
    let taken = taken?;
    closed?;
    Ok(taken)
}
