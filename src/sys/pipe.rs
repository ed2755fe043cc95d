//! Reading what a pipe holds without taking it: the target's pipe end, taken with
//! `pidfd_getfd(2)`, is `tee(2)`d into a pipe of haul's own, which haul then reads.

use super::{check, last_err, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `fcntl(2)` `F_GETPIPE_SZ` / `F_SETPIPE_SZ`.
const F_SETPIPE_SZ: libc::c_int = 1031;
const F_GETPIPE_SZ: libc::c_int = 1032;

/// The capacity of the pipe behind `fd`: `fcntl(fd, F_GETPIPE_SZ)`, see fcntl(2).
pub fn pipe_size(fd: &OwnedFd) -> Result<u32> {
    // SAFETY: fcntl with an integer command on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETPIPE_SZ) };
    Ok(check(r as libc::c_long, || "fcntl(F_GETPIPE_SZ)".into())? as u32)
}

/// A new pipe of haul's own (read end, write end), close-on-exec and non-blocking:
/// `pipe2(2)`.
fn own_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(last_err("pipe2"));
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The bytes queued in the pipe whose read end is `read_end`, left in place: `tee(2)` into a
/// pipe of haul's own as large (`F_SETPIPE_SZ`), then `read(2)` from that. The pipe's writers
/// must not run meanwhile (the process is frozen).
pub fn pipe_contents(read_end: &OwnedFd) -> Result<Vec<u8>> {
    let size = pipe_size(read_end)?;
    let (r, w) = own_pipe()?;
    // SAFETY: fcntl with integer arguments on a descriptor we own.
    let set = unsafe { libc::fcntl(w.as_raw_fd(), F_SETPIPE_SZ, size as libc::c_int) };
    check(set as libc::c_long, || {
        format!("fcntl(F_SETPIPE_SZ, {size})")
    })?;
    // SAFETY: tee between two pipe descriptors, integer length and flags.
    let n = unsafe {
        libc::tee(
            read_end.as_raw_fd(),
            w.as_raw_fd(),
            size as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        // Nothing queued.
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(Vec::new());
        }
        return Err(super::io_err("tee of the target's pipe", e));
    }
    drop(w);
    let mut out = vec![0u8; n as usize];
    let mut got = 0;
    while got < out.len() {
        // SAFETY: read into the unfilled tail of a buffer we own.
        let k = unsafe {
            libc::read(
                r.as_raw_fd(),
                out[got..].as_mut_ptr().cast(),
                out.len() - got,
            )
        };
        if k < 0 {
            return Err(last_err("read of the tee'd pipe contents"));
        }
        if k == 0 {
            return Err(super::SysError::Invalid(
                "the tee'd pipe contents ended early".into(),
            ));
        }
        got += k as usize;
    }
    Ok(out)
}

/// `pipe2(2)` with `O_CLOEXEC`: a new pipe, (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| super::io_err("pipe2", std::io::Error::from(e)))
}

/// Sets the capacity of the pipe behind `fd` (haul's copy of a target's end):
/// `fcntl(fd, F_SETPIPE_SZ, size)`, see fcntl(2).
pub fn set_size(fd: std::os::fd::BorrowedFd<'_>, size: u32) -> Result<()> {
    // SAFETY: fcntl with integer arguments on a descriptor we hold.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_SETPIPE_SZ, size as libc::c_int) };
    check(r as libc::c_long, || format!("fcntl(F_SETPIPE_SZ, {size})"))?;
    Ok(())
}

/// Writes all of `data` into the pipe's write end `fd` (haul's copy): write(2) until done.
pub fn write_all(fd: std::os::fd::BorrowedFd<'_>, data: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: write reads the unsent tail of a buffer we own.
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
            )
        };
        if n < 0 {
            return Err(last_err(format!(
                "write of {} bytes back into a pipe",
                data.len() - done
            )));
        }
        done += n as usize;
    }
    Ok(())
}
