//! Restoring the file descriptors: files reopened at their offsets with their locks, pipes
//! the process held both ends of, eventfds, timerfds and signalfds, each at its number.

use super::rebuild::{cstr, interval_and_value, ARGS_OFF, SCRATCH_LEN, SYS_OPEN};
use crate::image::{FdKind, ProcessImage};
use crate::sys::process::nr;
use crate::sys::remote::RemoteSyscall;

const SYS_CLOSE_RANGE: i64 = 436;
const SYS_DUP3: i64 = 292;
const SYS_LSEEK: i64 = 8;
const SYS_FCNTL: i64 = 72;
const SYS_PIPE2: i64 = 293;
const SYS_EVENTFD2: i64 = 290;
const SYS_SIGNALFD4: i64 = 289;
const SYS_TIMERFD_CREATE: i64 = 283;
const SYS_TIMERFD_SETTIME: i64 = 286;
const SYS_IOCTL: i64 = 16;
/// `_IOW('T', 0, u64)`: set a timerfd's expiration count (CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
const F_SETPIPE_SZ: u64 = 1031;
const SYS_FLOCK: i64 = 73;

/// Closes every inherited fd, then reopens the dumped ones at their numbers, flags and offsets.
pub(super) fn restore_fds(
    rs: &mut RemoteSyscall,
    p: &ProcessImage,
    args: u64,
) -> Result<(), String> {
    rs.call_ok(
        SYS_CLOSE_RANGE,
        [0, u64::from(u32::MAX), 0, 0, 0, 0],
        "close_range",
    )
    .map_err(|e| e.to_string())?;
    let mut fds: Vec<_> = p.fds.iter().collect();
    fds.sort_by_key(|f| f.fd);
    let mut pipes_made = std::collections::HashSet::new();
    for f in fds {
        if let Some(first) = f.same_as {
            // One open file description with a lower fd, already restored: share it.
            let cloexec = u64::from(f.flags & libc::O_CLOEXEC as u32);
            rs.call_ok(
                SYS_DUP3,
                [first as u64, f.fd as u64, cloexec, 0, 0, 0],
                &format!("dup3 fd {first} to fd {}", f.fd),
            )
            .map_err(|e| e.to_string())?;
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
                    make_pipe(rs, p, *ino, args)?;
                }
                continue;
            }
            FdKind::Anon(a) => {
                let got =
                    make_anon(rs, a, f.flags, args).map_err(|e| format!("fd {}: {e}", f.fd))?;
                move_fd(rs, got, f)?;
                continue;
            }
        };
        let flags =
            f.flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY) as u32);
        rs.write_mem(args, &cstr(path)?)
            .map_err(|e| e.to_string())?;
        let got = rs
            .call_ok(
                SYS_OPEN,
                [args, u64::from(flags), 0, 0, 0, 0],
                &format!("open fd {} {path}", f.fd),
            )
            .map_err(|e| e.to_string())?;
        let fd = f.fd as u64;
        move_fd(rs, got, f)?;
        // An O_PATH fd has no offset (lseek fails with EBADF).
        let o_path = f.flags & libc::O_PATH as u32 != 0;
        if let Some(pos) = pos.filter(|_| !o_path) {
            rs.call_ok(
                SYS_LSEEK,
                [fd, pos, libc::SEEK_SET as u64, 0, 0, 0],
                &format!("lseek fd {fd} to {pos}"),
            )
            .map_err(|e| e.to_string())?;
        }
        for l in &f.locks {
            take_lock(rs, f.fd, path, l, args)?;
        }
    }
    Ok(())
}

/// Moves the new fd `got` to `f`'s number (with its close-on-exec flag), unless it is there.
fn move_fd(rs: &mut RemoteSyscall, got: u64, f: &crate::image::FdImage) -> Result<(), String> {
    let fd = f.fd as u64;
    if got != fd {
        let cloexec = u64::from(f.flags & libc::O_CLOEXEC as u32);
        rs.call_ok(
            SYS_DUP3,
            [got, fd, cloexec, 0, 0, 0],
            &format!("dup3 to fd {fd}"),
        )
        .map_err(|e| e.to_string())?;
        rs.call_ok(nr::CLOSE, [got, 0, 0, 0, 0, 0], "close")
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Makes an eventfd, timerfd or signalfd again with its state; returns the new fd. `flags`
/// are the fd's open flags (O_NONBLOCK and O_CLOEXEC are what these take).
fn make_anon(
    rs: &mut RemoteSyscall,
    a: &crate::image::AnonFd,
    flags: u32,
    args: u64,
) -> Result<u64, String> {
    use crate::image::AnonFd;
    let fl = u64::from(flags & (libc::O_NONBLOCK | libc::O_CLOEXEC) as u32);
    let err = |e: crate::sys::SysError| e.to_string();
    match a {
        AnonFd::EventFd { count, semaphore } => {
            let sem = if *semaphore {
                libc::EFD_SEMAPHORE as u64
            } else {
                0
            };
            let fd = rs
                .call_ok(SYS_EVENTFD2, [0, fl | sem, 0, 0, 0, 0], "eventfd2")
                .map_err(err)?;
            // The initial value of eventfd2 is 32-bit; a write adds any 64-bit count.
            if *count > 0 {
                rs.write_mem(args, &count.to_ne_bytes()).map_err(err)?;
                rs.call_ok(
                    nr::WRITE,
                    [fd, args, 8, 0, 0, 0],
                    "write of the eventfd count",
                )
                .map_err(err)?;
            }
            Ok(fd)
        }
        AnonFd::SignalFd { mask } => {
            rs.write_mem(args, &mask.to_ne_bytes()).map_err(err)?;
            rs.call_ok(SYS_SIGNALFD4, [u64::MAX, args, 8, fl, 0, 0], "signalfd4")
                .map_err(err)
        }
        AnonFd::TimerFd {
            clock,
            ticks,
            value_ns,
            interval_ns,
        } => {
            let fd = rs
                .call_ok(
                    SYS_TIMERFD_CREATE,
                    [*clock as u64, fl, 0, 0, 0, 0],
                    "timerfd_create",
                )
                .map_err(err)?;
            // A periodic timerfd with expirations not read yet reads as disarmed (the kernel
            // re-arms it on read): it runs again one period on.
            let value = if *value_ns == 0 {
                *interval_ns
            } else {
                *value_ns
            };
            if value > 0 {
                let b = interval_and_value(*interval_ns, value, 1_000_000_000);
                rs.write_mem(args, &b).map_err(err)?;
                rs.call_ok(
                    SYS_TIMERFD_SETTIME,
                    [fd, 0, args, 0, 0, 0],
                    "timerfd_settime",
                )
                .map_err(err)?;
            }
            if *ticks > 0 {
                rs.write_mem(args, &ticks.to_ne_bytes()).map_err(err)?;
                rs.call_ok(
                    SYS_IOCTL,
                    [fd, TFD_IOC_SET_TICKS, args, 0, 0, 0],
                    "ioctl TFD_IOC_SET_TICKS",
                )
                .map_err(err)?;
            }
            Ok(fd)
        }
    }
}

/// Makes pipe `ino` again: both ends at their dumped fds with their flags, its capacity, and
/// what it held written back into it.
fn make_pipe(rs: &mut RemoteSyscall, p: &ProcessImage, ino: u64, args: u64) -> Result<(), String> {
    let end = |write: bool| {
        p.fds
            .iter()
            .find(|g| {
                g.same_as.is_none()
                    && matches!(g.kind, FdKind::Pipe { ino: i, write: w, .. } if i == ino && w == write)
            })
            .ok_or_else(|| format!("pipe:[{ino}] has no {} end in the image", if write { "write" } else { "read" }))
    };
    let (rd, wr) = (end(false)?, end(true)?);
    let (want_r, want_w) = (rd.fd as u64, wr.fd as u64);
    rs.call_ok(
        SYS_PIPE2,
        [args, 0, 0, 0, 0, 0],
        &format!("pipe2 for pipe:[{ino}]"),
    )
    .map_err(|e| e.to_string())?;
    let mut two = [0u8; 8];
    rs.read_mem(args, &mut two).map_err(|e| e.to_string())?;
    let mut tr = u64::from(u32::from_ne_bytes([two[0], two[1], two[2], two[3]]));
    let mut tw = u64::from(u32::from_ne_bytes([two[4], two[5], two[6], two[7]]));
    let call = |rs: &mut RemoteSyscall, nr: i64, a: [u64; 6], what: &str| {
        rs.call_ok(nr, a, &format!("{what} for pipe:[{ino}]"))
            .map_err(|e| e.to_string())
    };
    // Move the two new fds to their numbers without either landing on the other first.
    if tr == want_w && tw == want_r {
        // Swapped: the read end goes to a free number first.
        let t = call(
            rs,
            SYS_FCNTL,
            [tr, libc::F_DUPFD as u64, 0, 0, 0, 0],
            "fcntl F_DUPFD",
        )?;
        call(rs, nr::CLOSE, [tr, 0, 0, 0, 0, 0], "close")?;
        tr = t;
    }
    if tw == want_r {
        call(
            rs,
            SYS_DUP3,
            [tw, want_w, 0, 0, 0, 0],
            "dup3 of the write end",
        )?;
        call(rs, nr::CLOSE, [tw, 0, 0, 0, 0, 0], "close")?;
        tw = want_w;
    }
    if tr != want_r {
        call(
            rs,
            SYS_DUP3,
            [tr, want_r, 0, 0, 0, 0],
            "dup3 of the read end",
        )?;
    }
    if tw != want_w {
        call(
            rs,
            SYS_DUP3,
            [tw, want_w, 0, 0, 0, 0],
            "dup3 of the write end",
        )?;
    }
    for t in [tr, tw] {
        if t != want_r && t != want_w {
            call(rs, nr::CLOSE, [t, 0, 0, 0, 0, 0], "close")?;
        }
    }
    if let FdKind::Pipe { size, data, .. } = &rd.kind {
        if *size > 0 {
            call(
                rs,
                SYS_FCNTL,
                [want_w, F_SETPIPE_SZ, u64::from(*size), 0, 0, 0],
                "fcntl F_SETPIPE_SZ",
            )?;
        }
        for chunk in data.chunks((SCRATCH_LEN - ARGS_OFF) as usize) {
            rs.write_mem(args, chunk).map_err(|e| e.to_string())?;
            let n = call(
                rs,
                nr::WRITE,
                [want_w, args, chunk.len() as u64, 0, 0, 0],
                "write of its contents",
            )?;
            if n != chunk.len() as u64 {
                return Err(format!(
                    "pipe:[{ino}] took {n} of {} bytes back",
                    chunk.len()
                ));
            }
        }
    }
    // Close-on-exec per fd, status flags (O_NONBLOCK, ...) per end.
    for f in [rd, wr] {
        let fd = f.fd as u64;
        let cloexec = if f.flags & libc::O_CLOEXEC as u32 != 0 {
            libc::FD_CLOEXEC
        } else {
            0
        };
        call(
            rs,
            SYS_FCNTL,
            [fd, libc::F_SETFD as u64, cloexec as u64, 0, 0, 0],
            "fcntl F_SETFD",
        )?;
        call(
            rs,
            SYS_FCNTL,
            [fd, libc::F_SETFL as u64, u64::from(f.flags), 0, 0, 0],
            "fcntl F_SETFL",
        )?;
    }
    Ok(())
}

/// Takes file lock `l` again through fd `fd` (without waiting: if another process holds it
/// now, the restore fails rather than run on without it).
fn take_lock(
    rs: &mut RemoteSyscall,
    fd: i32,
    path: &str,
    l: &crate::image::FileLock,
    args: u64,
) -> Result<(), String> {
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
        LockKind::Flock => {
            let op = if l.write {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            } | libc::LOCK_NB;
            rs.call(SYS_FLOCK, [fd as u64, op as u64, 0, 0, 0, 0])
        }
        LockKind::Posix | LockKind::Ofd => {
            // struct flock: l_type, l_whence (shorts), l_start, l_len, l_pid (0 for OFD).
            let mut b = vec![0u8; 32];
            let ty = if l.write {
                libc::F_WRLCK
            } else {
                libc::F_RDLCK
            } as i16;
            b[0..2].copy_from_slice(&ty.to_ne_bytes());
            b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
            b[8..16].copy_from_slice(&l.start.to_ne_bytes());
            b[16..24].copy_from_slice(&l.len.to_ne_bytes());
            rs.write_mem(args, &b).map_err(|e| e.to_string())?;
            let cmd = if l.kind == LockKind::Ofd {
                libc::F_OFD_SETLK
            } else {
                libc::F_SETLK
            };
            rs.call(SYS_FCNTL, [fd as u64, cmd as u64, args, 0, 0, 0])
        }
    }
    .map_err(|e| e.to_string())?;
    match r {
        0 => Ok(()),
        e if e == -i64::from(libc::EAGAIN) || e == -i64::from(libc::EACCES) => {
            Err(format!("the {what} is held by another process now"))
        }
        e => Err(format!(
            "taking the {what}: {}",
            std::io::Error::from_raw_os_error(-e as i32)
        )),
    }
}
