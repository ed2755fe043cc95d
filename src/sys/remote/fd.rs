//! File descriptor calls injected into a thread: open, close, `ftruncate`, `unlink`,
//! `close_range`, `dup3`, `lseek`, `fcntl`, `pipe2`, `write`, `eventfd2`, `signalfd4`,
//! timerfds, `flock` and record locks, `socketpair` and `sendto`, [`take_uffd`] (a
//! userfaultfd made by the target and taken into haul) and [`install_fd`] (an fd of haul's
//! put into the target at a given number).

use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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

/// `socketpair(AF_UNIX, sock_type | flags, 0, sv)`; returns the two sockets.
pub fn socketpair<R: Inject + ?Sized>(r: &mut R, sock_type: i32, flags: i32) -> Result<(u64, u64)> {
    let at = put(r, &[0u8; 8])?;
    r.call_ok(
        libc::SYS_socketpair,
        [
            libc::AF_UNIX as u64,
            (sock_type | flags) as u64,
            0,
            at,
            0,
            0,
        ],
        "socketpair",
    )?;
    let mut two = [0u8; 8];
    r.read_mem(at, &mut two)?;
    let a = i32::from_ne_bytes([two[0], two[1], two[2], two[3]]);
    let b = i32::from_ne_bytes([two[4], two[5], two[6], two[7]]);
    Ok((a as u64, b as u64))
}

/// `sendto(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL, NULL, 0)` from the argument area: one
/// datagram or record, or stream bytes; returns how many bytes were sent.
pub fn sendto<R: Inject + ?Sized>(r: &mut R, fd: u64, data: &[u8], what: &str) -> Result<u64> {
    let at = put(r, data)?;
    r.call_ok(
        libc::SYS_sendto,
        [
            fd,
            at,
            data.len() as u64,
            (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u64,
            0,
            0,
        ],
        what,
    )
}

/// The bytes of the `msghdr` [`install_fd`]'s `recvmsg` reads, with its iovec, data byte and
/// control buffer after it, all at `at` in the target: (bytes, offset of the control buffer,
/// its length).
fn recv_fd_msghdr(at: u64) -> (Vec<u8>, usize, usize) {
    type M = libc::msghdr;
    type V = libc::iovec;
    let iov_off = size_of::<M>().next_multiple_of(8);
    let byte_off = iov_off + size_of::<V>();
    let ctl_off = (byte_off + 1).next_multiple_of(8);
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let ctl_len = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
    let mut b = vec![0u8; ctl_off + ctl_len];
    let iov_at = at + iov_off as u64;
    field(&mut b, offset_of!(M, msg_iov), &iov_at.to_ne_bytes());
    field(&mut b, offset_of!(M, msg_iovlen), &1usize.to_ne_bytes());
    let ctl_at = at + ctl_off as u64;
    field(&mut b, offset_of!(M, msg_control), &ctl_at.to_ne_bytes());
    field(
        &mut b,
        offset_of!(M, msg_controllen),
        &ctl_len.to_ne_bytes(),
    );
    let byte_at = at + byte_off as u64;
    field(
        &mut b,
        iov_off + offset_of!(V, iov_base),
        &byte_at.to_ne_bytes(),
    );
    field(
        &mut b,
        iov_off + offset_of!(V, iov_len),
        &1usize.to_ne_bytes(),
    );
    (b, ctl_off, ctl_len)
}

/// The fd an `SCM_RIGHTS` control message carries (its bytes as the kernel wrote them).
fn scm_rights_fd(ctl: &[u8]) -> Option<u64> {
    type C = libc::cmsghdr;
    let get = |off: usize, n: usize| ctl.get(off..off + n);
    let len = usize::from_ne_bytes(get(offset_of!(C, cmsg_len), 8)?.try_into().ok()?);
    let level = i32::from_ne_bytes(get(offset_of!(C, cmsg_level), 4)?.try_into().ok()?);
    let ty = i32::from_ne_bytes(get(offset_of!(C, cmsg_type), 4)?.try_into().ok()?);
    // SAFETY: CMSG_LEN is arithmetic on its argument.
    let (hdr, one) = unsafe { (libc::CMSG_LEN(0) as usize, libc::CMSG_LEN(4) as usize) };
    if level != libc::SOL_SOCKET || ty != libc::SCM_RIGHTS || len != one {
        return None;
    }
    let fd = i32::from_ne_bytes(get(hdr, 4)?.try_into().ok()?);
    Some(fd as u64)
}

/// Puts a copy of haul's `fd` (one open file description: one offset, one set of status
/// flags) into the process at number `at`, close-on-exec or not. The process makes a unix
/// datagram socket pair (`socketpair` injected); haul takes one end with `pidfd_getfd(2)`
/// and sends `fd` over it with `SCM_RIGHTS`; the process `recvmsg`s it from the other end
/// (injected; msghdr, iovec and control buffer laid out at libc's offsets in the argument
/// area), closes the pair and `dup3`s what it got to `at`.
pub fn install_fd<R: Inject + ?Sized>(
    r: &mut R,
    fd: BorrowedFd<'_>,
    at: u64,
    cloexec: bool,
) -> Result<()> {
    let (a, b) = socketpair(r, libc::SOCK_DGRAM, libc::SOCK_CLOEXEC)?;
    let got = pass_fd(r, fd, a, b);
    // The pair goes whatever happened (its numbers may be ones later fds want).
    let ca = r.call_ok(
        libc::SYS_close,
        [a, 0, 0, 0, 0, 0],
        "close of a passing socket",
    );
    let cb = r.call_ok(
        libc::SYS_close,
        [b, 0, 0, 0, 0, 0],
        "close of a passing socket",
    );
    let got = got?;
    ca?;
    cb?;
    if got == at {
        set_cloexec(r, at, cloexec)
    } else {
        dup3(r, got, at, cloexec)?;
        close(r, got)
    }
}

/// The middle of [`install_fd`]: `fd` sent through `a`, received at `b`; returns its number
/// in the process.
fn pass_fd<R: Inject + ?Sized>(r: &mut R, fd: BorrowedFd<'_>, a: u64, b: u64) -> Result<u64> {
    let pidfd = crate::sys::process::pidfd_open(r.pid())?;
    let mine = crate::sys::process::pidfd_getfd(&pidfd, a as i32)?;
    crate::sys::socket::send_fd(mine.as_fd(), fd)?;
    let (at, _) = r.args_area().ok_or_else(|| {
        SysError::Invalid(format!(
            "thread {}: no argument area for an injected syscall",
            r.tid()
        ))
    })?;
    let (msg, ctl_off, ctl_len) = recv_fd_msghdr(at);
    let msg_at = put(r, &msg)?;
    let n = r.call_ok(
        libc::SYS_recvmsg,
        [b, msg_at, libc::MSG_CMSG_CLOEXEC as u64, 0, 0, 0],
        "recvmsg of a passed fd",
    )?;
    let mut ctl = vec![0u8; ctl_len];
    r.read_mem(msg_at + ctl_off as u64, &mut ctl)?;
    scm_rights_fd(&ctl).filter(|_| n == 1).ok_or_else(|| {
        SysError::Invalid(format!(
            "pid {}: recvmsg of a passed fd got {n} bytes and no fd",
            r.pid()
        ))
    })
}
