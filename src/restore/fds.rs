//! Restoring the file descriptors: files reopened at their offsets with their locks, pipes
//! the process held both ends of, eventfds, timerfds and signalfds, each at its number.

use super::error::{At, StepError, StepResult};
use super::layout::ARGS_LEN;
use super::share::FdTable;
use crate::image::{FdImage, FdKind, ProcessImage};
use crate::sys::process;
use crate::sys::remote::{self, Inject};
use std::os::fd::{AsFd, OwnedFd};

/// Closes every inherited fd, then reopens the dumped ones at their numbers, flags and offsets.
/// Epoll instances come last (with the fds that share them), once every target they watch is
/// in place.
pub(super) fn restore_fds(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    shared: &mut super::share::Shared,
) -> StepResult {
    shared.fds.restoring(p.pid, rs.pid());
    remote::close_range(rs, 0, u32::MAX)?;
    let mut fds: Vec<_> = p.fds.iter().collect();
    fds.sort_by_key(|f| f.fd);
    let is_epoll = |f: &FdImage| {
        let first = f.same_as.and_then(|n| p.fds.iter().find(|g| g.fd == n));
        matches!(first.unwrap_or(f).kind, FdKind::Epoll(_))
    };
    let (later, now): (Vec<&FdImage>, Vec<&FdImage>) = fds.into_iter().partition(|f| is_epoll(f));
    // Pipes and socket pairs made here (by inode): their other end is placed with them.
    let mut made = std::collections::HashSet::new();
    for f in now {
        restore_fd(rs, p, f, shared, &mut made)?;
    }
    for f in super::events::epoll_order(p, later) {
        restore_fd(rs, p, f, shared, &mut made)?;
    }
    Ok(())
}

/// Restores fd `f` of `p` at its number.
fn restore_fd(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    f: &FdImage,
    shared: &mut super::share::Shared,
    made: &mut std::collections::HashSet<u64>,
) -> StepResult {
    if let Some(first) = f.same_as {
        // One open file description with a lower fd, already restored: share it.
        remote::dup3(rs, first as u64, f.fd as u64, cloexec(f))?;
        return Ok(());
    }
    let table = &mut shared.fds;
    if let Some(r) = f.inherited {
        // An earlier process's open file description: a copy of it, from that process.
        let at = || format!("fd {}", f.fd);
        let copy = table.copy_of(r, at)?;
        remote::install_fd(rs, copy.as_fd(), f.fd as u64, cloexec(f)).at(at)?;
        return Ok(());
    }
    let (path, pos) = match &f.kind {
        FdKind::File { path, pos, .. } => (path.as_str(), Some(*pos)),
        FdKind::DevNull => ("/dev/null", None),
        FdKind::DevZero => ("/dev/zero", None),
        FdKind::DevUrandom => ("/dev/urandom", None),
        FdKind::Pipe { ino, write, .. } => {
            if made.contains(ino) {
                return Ok(());
            }
            if table.pipe_end(*ino, *write).is_some() {
                // Made by an earlier process: haul kept this end for it.
                install_pipe_end(rs, f, table)?;
            } else if own_end(
                p,
                |k| matches!(k, FdKind::Pipe { ino: i, write: w, .. } if i == ino && w != write),
            )
            .is_some()
            {
                // Both ends here: both are made when the first of them comes.
                made.insert(*ino);
                make_pipe(rs, p, *ino)?;
            } else {
                // The other end is a later process's.
                made.insert(*ino);
                make_pipe_for_later(rs, f, table)?;
            }
            return Ok(());
        }
        FdKind::UnixPair { ino, peer, .. } => {
            if made.contains(ino) {
                return Ok(());
            }
            if table.socket(*ino).is_some() {
                install_socket(rs, f, table)?;
            } else {
                made.insert(*ino);
                made.insert(*peer);
                make_pair(rs, p, f, table)?;
            }
            return Ok(());
        }
        FdKind::Unix(u) => return super::unix::make(rs, p, f, u, shared),
        FdKind::Inet(i) => return super::inet::make(rs, p, f, i, shared),
        FdKind::Epoll(e) => return super::events::make_epoll(rs, p, f, e, shared),
        FdKind::Inotify(i) => return super::events::make_inotify(rs, p, f, i, shared),
        FdKind::Stored(s) => return super::stored::make(rs, p, f, s, shared),
        FdKind::Tty(t) => return super::tty::make(rs, p, f, t, shared),
        FdKind::Anon(a) => {
            let got = make_anon(rs, a, f.flags).at(|| format!("fd {}", f.fd))?;
            move_fd(rs, got, f)?;
            return Ok(());
        }
    };
    let flags = f.flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY) as u32);
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
    Ok(())
}

/// Whether `f` is close-on-exec.
pub(super) fn cloexec(f: &FdImage) -> bool {
    f.flags & libc::O_CLOEXEC as u32 != 0
}

/// Moves the new fd `got` to `f`'s number (with its close-on-exec flag), unless it is there.
pub(super) fn move_fd(rs: &mut dyn Inject, got: u64, f: &FdImage) -> StepResult {
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
                    && g.inherited.is_none()
                    && matches!(g.kind, FdKind::Pipe { ino: i, write: w, .. } if i == ino && w == write)
            })
            .ok_or(StepError::PipeEnd {
                ino,
                end: if write { "write" } else { "read" },
            })
    };
    let (rd, wr) = (end(false)?, end(true)?);
    let (want_r, want_w) = (rd.fd as u64, wr.fd as u64);
    let two = remote::pipe2(rs).at(at)?;
    place_two(rs, two, (want_r, want_w)).at(at)?;
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

/// Moves two new fds `(a, b)` to the numbers `(want_a, want_b)` without either landing on
/// the other first, and closes what is left of them.
fn place_two(
    rs: &mut dyn Inject,
    (mut a, mut b): (u64, u64),
    (want_a, want_b): (u64, u64),
) -> crate::sys::Result<()> {
    if a == want_b && b == want_a {
        // Swapped: the first goes to a free number first.
        let t = remote::dup_any(rs, a)?;
        remote::close(rs, a)?;
        a = t;
    }
    if b == want_a {
        remote::dup3(rs, b, want_b, false)?;
        remote::close(rs, b)?;
        b = want_b;
    }
    if a != want_a {
        remote::dup3(rs, a, want_a, false)?;
    }
    if b != want_b {
        remote::dup3(rs, b, want_b, false)?;
    }
    for t in [a, b] {
        if t != want_a && t != want_b {
            remote::close(rs, t)?;
        }
    }
    Ok(())
}

/// Takes file lock `l` again through fd `fd` (without waiting: if another process holds it
/// now, the restore fails rather than run on without it).
pub(super) fn take_lock(
    rs: &mut dyn Inject,
    fd: i32,
    path: &str,
    l: &crate::image::FileLock,
) -> StepResult {
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

/// The fd of `p` (neither `same_as` nor `inherited`: one it makes itself) whose kind
/// `is` says.
fn own_end(p: &ProcessImage, is: impl Fn(&FdKind) -> bool) -> Option<&FdImage> {
    p.fds
        .iter()
        .find(|g| g.same_as.is_none() && g.inherited.is_none() && is(&g.kind))
}

/// Takes haul's copies of fds `a` and `b` of the process (`pidfd_getfd`).
fn take_two(rs: &dyn Inject, a: u64, b: u64) -> StepResult<(OwnedFd, OwnedFd)> {
    let pidfd = process::pidfd_open(rs.pid())?;
    Ok((
        process::pidfd_getfd(&pidfd, a as i32)?,
        process::pidfd_getfd(&pidfd, b as i32)?,
    ))
}

/// Puts `mine` (a new fd) at `f`'s number after closing `other` (the other new fd, whose copy
/// haul keeps), with `f`'s close-on-exec and status flags.
fn keep_one(rs: &mut dyn Inject, mine: u64, other: u64, f: &FdImage) -> crate::sys::Result<()> {
    let fd = f.fd as u64;
    if other != fd {
        remote::close(rs, other)?;
    }
    if mine != fd {
        remote::dup3(rs, mine, fd, false)?;
        remote::close(rs, mine)?;
    }
    remote::set_cloexec(rs, fd, cloexec(f))?;
    remote::set_status_flags(rs, fd, f.flags)
}

/// Makes the pipe of `f` here, the first process of the tree to hold an end of it, when its
/// other end is a later process's: `f`'s end goes to its number, haul keeps copies of both
/// ends (the later process gets the other), and what the pipe held is written back if `f`
/// is its read end.
fn make_pipe_for_later(rs: &mut dyn Inject, f: &FdImage, table: &mut FdTable) -> StepResult {
    let FdKind::Pipe {
        ino,
        write,
        size,
        data,
    } = &f.kind
    else {
        return Ok(());
    };
    let at = || format!("pipe:[{ino}]");
    let (tr, tw) = remote::pipe2(rs).at(at)?;
    let (cr, cw) = take_two(rs, tr, tw).at(at)?;
    if !write {
        fill_pipe(rs, *ino, tw, *size, data)?;
    }
    let (mine, other) = if *write { (tw, tr) } else { (tr, tw) };
    keep_one(rs, mine, other, f).at(at)?;
    table.keep_pipe(*ino, cr, cw);
    Ok(())
}

/// Gives the process the end of pipe `f` an earlier process made for it (haul's copy), and
/// if `f` is the read end that carries what the pipe held, writes that back through haul's
/// copy of the write end.
fn install_pipe_end(rs: &mut dyn Inject, f: &FdImage, table: &FdTable) -> StepResult {
    let FdKind::Pipe {
        ino,
        write,
        size,
        data,
    } = &f.kind
    else {
        return Ok(());
    };
    let at = || format!("pipe:[{ino}]");
    let fd = f.fd as u64;
    if let Some(end) = table.pipe_end(*ino, *write) {
        remote::install_fd(rs, end.as_fd(), fd, cloexec(f)).at(at)?;
    }
    remote::set_status_flags(rs, fd, f.flags).at(at)?;
    if let (false, Some(w)) = (*write, table.pipe_end(*ino, true)) {
        if *size > 0 {
            crate::sys::pipe::set_size(w.as_fd(), *size).at(at)?;
        }
        crate::sys::pipe::write_all(w.as_fd(), data).at(at)?;
    }
    Ok(())
}

/// Sets the capacity of the pipe whose new write end is `w` and writes back what it held.
fn fill_pipe(rs: &mut dyn Inject, ino: u64, w: u64, size: u32, data: &[u8]) -> StepResult {
    let at = || format!("pipe:[{ino}]");
    if size > 0 {
        remote::set_pipe_size(rs, w, size).at(at)?;
    }
    for chunk in data.chunks(ARGS_LEN as usize) {
        let n = remote::write(rs, w, chunk, "write of its contents").at(at)?;
        if n != chunk.len() as u64 {
            return Err(StepError::PipeShort {
                ino,
                wrote: n,
                len: chunk.len(),
            });
        }
    }
    Ok(())
}

/// Makes the socket pair of `f` here (the first process of the tree to hold one of its
/// ends): `socketpair` of its type, what waits at each end sent from the other, both ends
/// at their numbers if both are here; otherwise the peer's socket is kept by haul for the
/// later process that holds it.
fn make_pair(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    f: &FdImage,
    table: &mut FdTable,
) -> StepResult {
    let FdKind::UnixPair {
        ino,
        peer,
        sock_type,
        queued,
        opts,
    } = &f.kind
    else {
        return Ok(());
    };
    let at = || format!("socket:[{ino}]");
    let (s0, s1) = remote::socketpair(rs, *sock_type, 0).at(at)?;
    send_queue(rs, s1, *ino, *sock_type, queued)?;
    let theirs = own_end(
        p,
        |k| matches!(k, FdKind::UnixPair { ino: i, .. } if i == peer),
    );
    match theirs {
        Some(g) => {
            if let FdKind::UnixPair { queued, .. } = &g.kind {
                send_queue(rs, s0, *peer, *sock_type, queued)?;
            }
            place_two(rs, (s0, s1), (f.fd as u64, g.fd as u64)).at(at)?;
            for h in [f, g] {
                remote::set_cloexec(rs, h.fd as u64, cloexec(h)).at(at)?;
                remote::set_status_flags(rs, h.fd as u64, h.flags).at(at)?;
                if let FdKind::UnixPair { opts, .. } = &h.kind {
                    super::unix::pair_opts(rs, h.fd as u64, opts).at(at)?;
                }
            }
        }
        None => {
            let (c0, c1) = take_two(rs, s0, s1).at(at)?;
            keep_one(rs, s0, s1, f).at(at)?;
            super::unix::set_buffers(c0.as_fd(), opts).at(at)?;
            super::unix::set_peek_off(c0.as_fd(), opts).at(at)?;
            table.keep_pair(*ino, c0, *peer, c1);
        }
    }
    Ok(())
}

/// Gives the process the socket of pair `f` an earlier process made for it (haul's copy),
/// and sends what waited at it from haul's copy of its peer.
fn install_socket(rs: &mut dyn Inject, f: &FdImage, table: &FdTable) -> StepResult {
    let FdKind::UnixPair {
        ino,
        peer,
        sock_type,
        queued,
        opts,
    } = &f.kind
    else {
        return Ok(());
    };
    let at = || format!("socket:[{ino}]");
    let fd = f.fd as u64;
    if let Some(s) = table.socket(*ino) {
        remote::install_fd(rs, s.as_fd(), fd, cloexec(f)).at(at)?;
    }
    remote::set_status_flags(rs, fd, f.flags).at(at)?;
    if let Some(from) = table.socket(*peer) {
        for m in queued {
            crate::sys::socket::send_all(from.as_fd(), m, *sock_type == libc::SOCK_STREAM)
                .at(at)?;
        }
    }
    if let Some(s) = table.socket(*ino) {
        super::unix::set_buffers(s.as_fd(), opts).at(at)?;
        super::unix::set_peek_off(s.as_fd(), opts).at(at)?;
    }
    Ok(())
}

/// Sends `queued` (what waited at socket `ino`) from `from`, its peer's new socket in the
/// process: a stream's bytes in pieces, each datagram or record whole.
fn send_queue(
    rs: &mut dyn Inject,
    from: u64,
    ino: u64,
    sock_type: i32,
    queued: &[Vec<u8>],
) -> StepResult {
    let at = || format!("socket:[{ino}]");
    let stream = sock_type == libc::SOCK_STREAM;
    for m in queued {
        if !stream && m.len() as u64 > ARGS_LEN {
            // Larger than the argument area: sent whole from haul's copy of the socket.
            let pidfd = process::pidfd_open(rs.pid()).at(at)?;
            let copy = process::pidfd_getfd(&pidfd, from as i32).at(at)?;
            crate::sys::socket::send_all(copy.as_fd(), m, false).at(at)?;
            continue;
        }
        let pieces: Vec<&[u8]> = if m.is_empty() {
            vec![&m[..]]
        } else {
            m.chunks(ARGS_LEN as usize).collect()
        };
        for piece in pieces {
            let n = remote::sendto(rs, from, piece, "sendto of its queued bytes").at(at)?;
            if n != piece.len() as u64 {
                return Err(StepError::NotYet {
                    what: format!(
                        "socket:[{ino}]: {} queued bytes of which {n} were taken back",
                        piece.len()
                    ),
                });
            }
        }
    }
    Ok(())
}
