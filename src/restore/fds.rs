//! Restoring the file descriptors: files reopened at their offsets with their locks, pipes
//! the process held both ends of, eventfds, timerfds and signalfds, each at its number.

use super::error::{At, StepError, StepResult};
use super::layout::ARGS_LEN;
use crate::image::{FdImage, FdKind, ProcessImage};
use crate::sys::remote::{self, Inject};

/// Closes every inherited fd, then reopens the dumped ones at their numbers, flags and offsets.
pub(super) fn restore_fds(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    shared: &mut super::share::Shared,
) -> StepResult {
    let _ = &shared.fds;
    remote::close_range(rs, 0, u32::MAX)?;
    let mut fds: Vec<_> = p.fds.iter().collect();
    fds.sort_by_key(|f| f.fd);
    let mut pipes_made = std::collections::HashSet::new();
    for f in fds {
        if let Some(first) = f.same_as {
            // One open file description with a lower fd, already restored: share it.
            remote::dup3(rs, first as u64, f.fd as u64, cloexec(f))?;
            continue;
        }
        let (path, pos) = match &f.kind {
            FdKind::File { path, pos, .. } => (path.as_str(), Some(*pos)),
            FdKind::DevNull => ("/dev/null", None),
            FdKind::DevZero => ("/dev/zero", None),
            FdKind::DevUrandom => ("/dev/urandom", None),
            FdKind::Pipe { ino, .. } => {
                // Both ends are made when the first of them comes.
                if pipes_made.insert(*ino) {
                    make_pipe(rs, p, *ino)?;
                }
                continue;
            }
            FdKind::UnixPair { ino, .. } => {
                return Err(StepError::NotYet {
                    what: format!("fd {} (socket:[{ino}], a unix socket pair)", f.fd),
                })
            }
            FdKind::Anon(a) => {
                let got = make_anon(rs, a, f.flags).at(|| format!("fd {}", f.fd))?;
                move_fd(rs, got, f)?;
                continue;
            }
        };
        let flags =
            f.flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY) as u32);
        let got = remote::open(rs, path, flags as i32).at(|| format!("fd {}", f.fd))?;
        let fd = f.fd as u64;
        move_fd(rs, got, f)?;
        // An O_PATH fd has no offset (lseek fails with EBADF).
        let o_path = f.flags & libc::O_PATH as u32 != 0;
        if let Some(pos) = pos.filter(|_| !o_path) {
            remote::lseek(rs, fd, pos)?;
        }
        for l in &f.locks {
            take_lock(rs, f.fd, path, l)?;
        }
    }
    Ok(())
}

/// Whether `f` is close-on-exec.
fn cloexec(f: &FdImage) -> bool {
    f.flags & libc::O_CLOEXEC as u32 != 0
}

/// Moves the new fd `got` to `f`'s number (with its close-on-exec flag), unless it is there.
fn move_fd(rs: &mut dyn Inject, got: u64, f: &FdImage) -> StepResult {
    let fd = f.fd as u64;
    if got != fd {
        remote::dup3(rs, got, fd, cloexec(f))?;
        remote::close(rs, got)?;
    }
    Ok(())
}

/// Makes an eventfd, timerfd or signalfd again with its state; returns the new fd. `flags`
/// are the fd's open flags (O_NONBLOCK and O_CLOEXEC are what these take).
fn make_anon(rs: &mut dyn Inject, a: &crate::image::AnonFd, flags: u32) -> StepResult<u64> {
    use crate::image::AnonFd;
    let fl = u64::from(flags & (libc::O_NONBLOCK | libc::O_CLOEXEC) as u32);
    match a {
        AnonFd::EventFd { count, semaphore } => {
            let sem = if *semaphore {
                libc::EFD_SEMAPHORE as u64
            } else {
                0
            };
            let fd = remote::eventfd2(rs, fl | sem)?;
            // The initial value of eventfd2 is 32-bit; a write adds any 64-bit count.
            if *count > 0 {
                remote::write(rs, fd, &count.to_ne_bytes(), "write of the eventfd count")?;
            }
            Ok(fd)
        }
        AnonFd::SignalFd { mask } => Ok(remote::signalfd4(rs, *mask, fl)?),
        AnonFd::TimerFd {
            clock,
            ticks,
            value_ns,
            interval_ns,
        } => {
            let fd = remote::timerfd_create(rs, *clock, fl)?;
            // A periodic timerfd with expirations not read yet reads as disarmed (the kernel
            // re-arms it on read): it runs again one period on.
            let value = if *value_ns == 0 {
                *interval_ns
            } else {
                *value_ns
            };
            if value > 0 {
                remote::timerfd_settime(rs, fd, *interval_ns, value)?;
            }
            if *ticks > 0 {
                remote::timerfd_set_ticks(rs, fd, *ticks)?;
            }
            Ok(fd)
        }
    }
}

/// Makes pipe `ino` again: both ends at their dumped fds with their flags, its capacity, and
/// what it held written back into it.
fn make_pipe(rs: &mut dyn Inject, p: &ProcessImage, ino: u64) -> StepResult {
    let at = || format!("pipe:[{ino}]");
    let end = |write: bool| {
        p.fds
            .iter()
            .find(|g| {
                g.same_as.is_none()
                    && matches!(g.kind, FdKind::Pipe { ino: i, write: w, .. } if i == ino && w == write)
            })
            .ok_or(StepError::PipeEnd {
                ino,
                end: if write { "write" } else { "read" },
            })
    };
    let (rd, wr) = (end(false)?, end(true)?);
    let (want_r, want_w) = (rd.fd as u64, wr.fd as u64);
    let (mut tr, mut tw) = remote::pipe2(rs).at(at)?;
    // Move the two new fds to their numbers without either landing on the other first.
    if tr == want_w && tw == want_r {
        // Swapped: the read end goes to a free number first.
        let t = remote::dup_any(rs, tr).at(at)?;
        remote::close(rs, tr).at(at)?;
        tr = t;
    }
    if tw == want_r {
        remote::dup3(rs, tw, want_w, false).at(at)?;
        remote::close(rs, tw).at(at)?;
        tw = want_w;
    }
    if tr != want_r {
        remote::dup3(rs, tr, want_r, false).at(at)?;
    }
    if tw != want_w {
        remote::dup3(rs, tw, want_w, false).at(at)?;
    }
    for t in [tr, tw] {
        if t != want_r && t != want_w {
            remote::close(rs, t).at(at)?;
        }
    }
    if let FdKind::Pipe { size, data, .. } = &rd.kind {
        if *size > 0 {
            remote::set_pipe_size(rs, want_w, *size).at(at)?;
        }
        for chunk in data.chunks(ARGS_LEN as usize) {
            let n = remote::write(rs, want_w, chunk, "write of its contents").at(at)?;
            if n != chunk.len() as u64 {
                return Err(StepError::PipeShort {
                    ino,
                    wrote: n,
                    len: chunk.len(),
                });
            }
        }
    }
    // Close-on-exec per fd, status flags (O_NONBLOCK, ...) per end.
    for f in [rd, wr] {
        let fd = f.fd as u64;
        remote::set_cloexec(rs, fd, cloexec(f)).at(at)?;
        remote::set_status_flags(rs, fd, f.flags).at(at)?;
    }
    Ok(())
}

/// Takes file lock `l` again through fd `fd` (without waiting: if another process holds it
/// now, the restore fails rather than run on without it).
fn take_lock(rs: &mut dyn Inject, fd: i32, path: &str, l: &crate::image::FileLock) -> StepResult {
    use crate::image::LockKind;
    let what = format!(
        "{} {} lock on {path} (fd {fd})",
        if l.write { "write" } else { "read" },
        match l.kind {
            LockKind::Flock => "flock",
            LockKind::Posix => "POSIX",
            LockKind::Ofd => "OFD",
        }
    );
    let r = match l.kind {
        LockKind::Flock => remote::flock(rs, fd as u64, l.write),
        LockKind::Posix | LockKind::Ofd => remote::set_record_lock(
            rs,
            fd as u64,
            l.kind == LockKind::Ofd,
            l.write,
            l.start,
            l.len,
        ),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.errno(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
            Err(StepError::LockHeld { what })
        }
        Err(source) => Err(StepError::Lock { what, source }),
    }
}
