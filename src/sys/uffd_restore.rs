//! What a lazy (post-copy) restore needs from the kernel beside the `userfaultfd` crate: safe
//! wrappers of the crate's `UFFDIO_COPY` (reporting exactly how much was copied and why it
//! stopped) and `UFFDIO_ZEROPAGE` (both `unsafe fn` in the crate, since they take raw
//! pointers), `poll(2)` over a few fds, `pidfd_send_signal`, and the watchdog process that
//! kills the restored process if the daemon disappears before every page is resident
//! (DESIGN.md §4 "Lazy restore").

use super::{last_err, Result};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Outcome of one [`copy_partial`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyResult {
    /// Every byte was copied.
    Done,
    /// `copied` bytes were copied, then the call stopped with `errno` (`EEXIST`: the next page
    /// is present already; `EAGAIN`: an event is pending, read it first, or a partial copy;
    /// `ESRCH`: the process is gone).
    Partial { copied: u64, errno: i32 },
}

/// `ioctl(uffd, UFFDIO_COPY)` of `data` to `dst` in the registered process (waking the
/// faulting threads), see ioctl_userfaultfd(2). Reports how much was copied before an error.
pub fn copy_partial(uffd: &userfaultfd::Uffd, dst: u64, data: &[u8]) -> CopyResult {
    // SAFETY: `src` points to `data.len()` readable bytes that outlive the call; the kernel
    // only reads them. `dst` is an address in the registered (other) process, which the
    // kernel checks against the registered ranges; nothing in this process is written.
    let r = unsafe {
        uffd.copy(
            data.as_ptr().cast(),
            dst as *mut libc::c_void,
            data.len(),
            true,
        )
    };
    copy_outcome(r)
}

/// What a `UFFDIO_COPY` did, from the crate's answer. The kernel copies page by page and
/// stops at the first page it cannot place; when it placed some, the ioctl fails with `EAGAIN`
/// and `uffdio_copy.copy` holds the bytes placed (the crate's `PartiallyCopied`); when it
/// placed none, it fails with the page's own errno (`EEXIST`, `ESRCH`, ...: `CopyFailed`), or
/// with `EAGAIN` and `copy` = `-EAGAIN`, which the crate passes on as a `PartiallyCopied` of
/// that negative number cast to `usize`: read back as nothing copied.
pub fn copy_outcome(r: userfaultfd::Result<usize>) -> CopyResult {
    match r {
        Ok(_) => CopyResult::Done,
        Err(userfaultfd::Error::PartiallyCopied(n)) => CopyResult::Partial {
            copied: u64::try_from(n as isize).unwrap_or(0),
            errno: libc::EAGAIN,
        },
        Err(userfaultfd::Error::CopyFailed(e)) => CopyResult::Partial {
            copied: 0,
            errno: e as i32,
        },
        Err(e) => CopyResult::Partial {
            copied: 0,
            errno: crate_errno(&e).unwrap_or(libc::EIO),
        },
    }
}

/// `ioctl(uffd, UFFDIO_ZEROPAGE)`: maps the zero page over `[start, start+len)` of the
/// registered process and wakes its faulting threads. The error is the ioctl's errno.
pub fn zeropage(
    uffd: &userfaultfd::Uffd,
    start: u64,
    len: u64,
) -> std::result::Result<(), nix::errno::Errno> {
    // SAFETY: `start` is an address in the registered (other) process, which the kernel
    // checks against the registered ranges; no memory of this process is touched.
    let r = unsafe { uffd.zeropage(start as *mut libc::c_void, len as usize, true) };
    r.map(|_| ())
        .map_err(|e| nix::errno::Errno::from_raw(crate_errno(&e).unwrap_or(libc::EIO)))
}

/// The errno inside an error of the `userfaultfd` crate, if it carries one.
pub fn crate_errno(e: &userfaultfd::Error) -> Option<i32> {
    match e {
        userfaultfd::Error::CopyFailed(n) | userfaultfd::Error::ZeropageFailed(n) => {
            Some(*n as i32)
        }
        userfaultfd::Error::SystemError(n) => Some(*n as i32),
        userfaultfd::Error::PartiallyCopied(_) => Some(libc::EAGAIN),
        _ => None,
    }
}

/// `poll(2)` for readability of `fds` for up to `timeout_ms` (-1: forever). Returns, per fd,
/// whether it is readable or hung up. `EINTR` counts as "nothing ready".
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfd structs the kernel writes revents into.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![false; fds.len()]);
        }
        return Err(super::io_err("poll", e));
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`, see pidfd_send_signal(2): signals exactly the
/// process the pidfd names (never a later process that reused its PID).
pub fn pidfd_kill(pidfd: &OwnedFd, sig: i32) -> Result<()> {
    // SAFETY: four integer arguments; info is NULL.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd() as libc::c_long,
            sig as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(last_err(format!("pidfd_send_signal(sig {sig})")));
    }
    Ok(())
}

/// The daemon's side of a [`spawn_watchdog`]: say "done" (every page is resident) to let the
/// watchdog go without killing; dropping it without [`Watchdog::release`] (or the daemon
/// dying) makes the watchdog SIGKILL the restored process.
#[derive(Debug)]
pub struct Watchdog {
    pid: i32,
    pipe_w: Option<OwnedFd>,
}

impl Watchdog {
    /// The watchdog's PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Tells the watchdog that every page is resident: it exits without killing anything.
    /// Reaps it.
    pub fn release(mut self) {
        if let Some(w) = self.pipe_w.take() {
            // SAFETY: writes one byte from a live local to an fd we own.
            let _ = unsafe { libc::write(w.as_raw_fd(), b"D".as_ptr().cast(), 1) };
        }
        self.reap();
    }

    fn reap(&mut self) {
        self.pipe_w = None;
        if self.pid > 0 {
            let mut st = 0;
            // SAFETY: waits for our own child; `st` is a live local.
            unsafe { libc::waitpid(self.pid, &mut st, 0) };
            self.pid = 0;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the pipe without "D": the watchdog kills the restored process.
        self.reap();
    }
}

/// Forks a watchdog process that holds `uffd` and `target` (a pidfd of the restored process),
/// see fork(2), pipe2(2), poll(2). While the watchdog holds its copy of the uffd, the uffd
/// stays open if the daemon dies, so a fault on a missing page keeps waiting instead of
/// getting a zero-filled page; the watchdog sees the pipe from the daemon end without "done"
/// and SIGKILLs the restored process (a fatal signal ends a waiting fault). It ignores SIGINT,
/// SIGTERM, SIGHUP and SIGPIPE and leaves the daemon's process group, so a Ctrl-C at the
/// daemon's terminal does not take it down with the daemon.
pub fn spawn_watchdog(uffd: BorrowedFd<'_>, target: &OwnedFd) -> Result<Watchdog> {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the live array `p`.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(last_err("pipe2 for the lazy watchdog"));
    }
    // SAFETY: fresh fds from pipe2, owned by nobody else.
    let (pipe_r, pipe_w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let keep = [uffd.as_raw_fd(), target.as_raw_fd(), pipe_r.as_raw_fd()];
    // SAFETY: the child only makes async-signal-safe raw syscalls (close_range, signal, setpgid,
    // poll, read, pidfd_send_signal, _exit) on values computed before the fork; it never
    // allocates, locks or returns into Rust code that could.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_err("fork of the lazy watchdog"));
    }
    if pid == 0 {
        // SAFETY: see above; this function never returns.
        unsafe { watchdog_child(keep) }
    }
    drop(pipe_r);
    Ok(Watchdog {
        pid,
        pipe_w: Some(pipe_w),
    })
}

/// The watchdog's life after fork: only raw syscalls.
///
/// # Safety
/// Must only be called in a freshly forked child; never returns.
unsafe fn watchdog_child(keep: [RawFd; 3]) -> ! {
    let [uffd, target, pipe_r] = keep;
    let mut sorted = keep;
    sorted.sort_unstable();
    let mut from: u32 = 0;
    for fd in sorted {
        let fd = fd as u32;
        if fd > from {
            // SAFETY: close_range of fds this child does not use (errors are harmless).
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    from as libc::c_long,
                    (fd - 1) as libc::c_long,
                    0 as libc::c_long,
                )
            };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from as libc::c_long,
            u32::MAX as libc::c_long,
            0 as libc::c_long,
        )
    };
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGPIPE,
        libc::SIGQUIT,
    ] {
        // SAFETY: setting a disposition to SIG_IGN is async-signal-safe.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // SAFETY: setpgid on ourselves.
    unsafe { libc::setpgid(0, 0) };
    let _ = uffd; // held open, never used: that is the point.
    loop {
        let mut pfd = libc::pollfd {
            fd: pipe_r,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r < 0 {
            continue; // EINTR
        }
        let mut b = 0u8;
        // SAFETY: reads at most one byte into a live local.
        let n = unsafe { libc::read(pipe_r, (&mut b as *mut u8).cast(), 1) };
        if n == 1 && b == b'D' {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: errno of this thread, read right after the failed read.
        if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
            continue;
        }
        // EOF (or anything else) before "done": the daemon is gone.
        // SAFETY: four integer arguments, info NULL.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                target as libc::c_long,
                libc::SIGKILL as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
            );
            libc::_exit(1)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use userfaultfd::Error as E;

    #[test]
    fn a_whole_copy_is_done_and_a_partial_one_keeps_its_count_with_eagain() {
        assert_eq!(copy_outcome(Ok(8192)), CopyResult::Done);
        assert_eq!(
            copy_outcome(Err(E::PartiallyCopied(8192))),
            CopyResult::Partial {
                copied: 8192,
                errno: libc::EAGAIN
            }
        );
    }

    #[test]
    fn eagain_with_nothing_copied_reads_back_as_zero_bytes_not_a_huge_count() {
        // The kernel leaves `copy` = -EAGAIN; the crate casts it to usize.
        let raw = (-(libc::EAGAIN as i64)) as usize;
        assert_eq!(
            copy_outcome(Err(E::PartiallyCopied(raw))),
            CopyResult::Partial {
                copied: 0,
                errno: libc::EAGAIN
            }
        );
    }

    #[test]
    fn a_failed_copy_keeps_the_pages_own_errno() {
        for errno in [libc::EEXIST, libc::ESRCH, libc::ENOENT, libc::EINVAL] {
            let e = E::CopyFailed(userfaultfd_errno(errno));
            assert_eq!(
                copy_outcome(Err(e)),
                CopyResult::Partial { copied: 0, errno },
                "{errno}"
            );
        }
    }

    #[test]
    fn the_errno_inside_the_crates_errors_is_found() {
        let z = E::ZeropageFailed(userfaultfd_errno(libc::EEXIST));
        assert_eq!(crate_errno(&z), Some(libc::EEXIST));
        let s = E::SystemError(userfaultfd_errno(libc::EBADF));
        assert_eq!(crate_errno(&s), Some(libc::EBADF));
        assert_eq!(crate_errno(&E::ReadEof), None);
    }

    /// An errno of the crate's own nix version (older than haul's, so not named here), from
    /// its number.
    fn userfaultfd_errno<T: TryFrom<std::io::Error>>(n: i32) -> T {
        match T::try_from(std::io::Error::from_raw_os_error(n)) {
            Ok(e) => e,
            Err(_) => panic!("errno {n}"),
        }
    }
}
