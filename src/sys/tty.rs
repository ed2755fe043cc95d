//! Terminals, from haul's side: termios (`TCGETS2`/`TCSETS2`), window size, the pty ioctls
//! (`TIOCGPTN`, `TIOCSPTLCK`, `TIOCGPTPEER`, `TIOCPKT`), the unread bytes of a tty
//! (`FIONREAD`), its foreground process group, and a relay between a pty master and haul's
//! own stdin/stdout. See ioctl_tty(2), pty(7), termios(3).

use super::{io_err, last_err, Result};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `ioctl(fd, req, arg)` with a pointer argument; `what` names it in the error.
fn ioctl_ptr<T>(fd: BorrowedFd<'_>, req: libc::Ioctl, arg: *mut T, what: &str) -> Result<i32> {
    // SAFETY: `arg` points to a live value of the type the request reads or writes (each
    // caller passes the struct or integer the ioctl documents).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        return Err(last_err(format!("ioctl({what}) on fd {}", fd.as_raw_fd())));
    }
    Ok(r)
}

/// `ioctl(fd, req, int_arg)`.
fn ioctl_int(fd: BorrowedFd<'_>, req: libc::Ioctl, arg: libc::c_ulong, what: &str) -> Result<i32> {
    // SAFETY: the request takes an integer argument, no pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        return Err(last_err(format!("ioctl({what}) on fd {}", fd.as_raw_fd())));
    }
    Ok(r)
}

/// The whole termios of the tty behind `fd` (on a pty master: its slave's): `TCGETS2`.
pub fn get_termios(fd: BorrowedFd<'_>) -> Result<libc::termios2> {
    // SAFETY: termios2 is plain data; all zeroes is a valid value.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    ioctl_ptr(fd, libc::TCGETS2, &mut t, "TCGETS2")?;
    Ok(t)
}

/// Sets the termios of the tty behind `fd` at once (no drain, no flush): `TCSETS2`, with
/// SIGTTOU blocked (haul may have given its own terminal's foreground to the job it
/// restores, `--tty inherit`).
pub fn set_termios(fd: BorrowedFd<'_>, t: &libc::termios2) -> Result<()> {
    let mut t = *t;
    ttou_blocked(|| ioctl_ptr(fd, libc::TCSETS2, &mut t, "TCSETS2"))?;
    Ok(())
}

/// The window size of the tty behind `fd`: `TIOCGWINSZ`.
pub fn get_winsize(fd: BorrowedFd<'_>) -> Result<libc::winsize> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    ioctl_ptr(fd, libc::TIOCGWINSZ, &mut w, "TIOCGWINSZ")?;
    Ok(w)
}

/// Sets the window size of the tty behind `fd`: `TIOCSWINSZ` (its foreground group gets
/// SIGWINCH if it changed).
pub fn set_winsize(fd: BorrowedFd<'_>, w: &libc::winsize) -> Result<()> {
    let mut w = *w;
    ioctl_ptr(fd, libc::TIOCSWINSZ, &mut w, "TIOCSWINSZ")?;
    Ok(())
}

/// The index of the pty whose master is `fd` (`/dev/pts/N`): `TIOCGPTN`.
pub fn pty_index(master: BorrowedFd<'_>) -> Result<u32> {
    let mut n: libc::c_uint = 0;
    ioctl_ptr(master, libc::TIOCGPTN, &mut n, "TIOCGPTN")?;
    Ok(n)
}

/// Whether the slave of master `fd` is locked (cannot be opened): `TIOCGPTLCK`.
pub fn pty_locked(master: BorrowedFd<'_>) -> Result<bool> {
    let mut n: libc::c_int = 0;
    ioctl_ptr(master, libc::TIOCGPTLCK, &mut n, "TIOCGPTLCK")?;
    Ok(n != 0)
}

/// Locks or unlocks the slave of master `fd`: `TIOCSPTLCK`.
pub fn set_pty_locked(master: BorrowedFd<'_>, locked: bool) -> Result<()> {
    let mut n: libc::c_int = locked.into();
    ioctl_ptr(master, libc::TIOCSPTLCK, &mut n, "TIOCSPTLCK")?;
    Ok(())
}

/// Whether master `fd` is in packet mode: `TIOCGPKT`.
pub fn packet_mode(master: BorrowedFd<'_>) -> Result<bool> {
    let mut n: libc::c_int = 0;
    ioctl_ptr(master, libc::TIOCGPKT, &mut n, "TIOCGPKT")?;
    Ok(n != 0)
}

/// Turns packet mode of master `fd` on or off: `TIOCPKT`.
pub fn set_packet_mode(master: BorrowedFd<'_>, on: bool) -> Result<()> {
    let mut n: libc::c_int = on.into();
    ioctl_ptr(master, libc::TIOCPKT, &mut n, "TIOCPKT")?;
    Ok(())
}

/// A new open file description of the slave of master `fd` (`TIOCGPTPEER`, no path needed):
/// read-write, never the opener's controlling terminal, close-on-exec, with `extra` flags.
pub fn open_peer(master: BorrowedFd<'_>, extra: i32) -> Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | extra;
    let fd = ioctl_int(
        master,
        libc::TIOCGPTPEER,
        flags as libc::c_ulong,
        "TIOCGPTPEER",
    )?;
    // SAFETY: TIOCGPTPEER returned a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new pty: its master (`/dev/ptmx`, close-on-exec, not a controlling terminal), unlocked.
pub fn open_pty() -> Result<OwnedFd> {
    // SAFETY: a NUL-terminated literal path and integer flags.
    let fd = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err("open /dev/ptmx"));
    }
    // SAFETY: open returned a new fd that nobody else owns.
    let m = unsafe { OwnedFd::from_raw_fd(fd) };
    set_pty_locked(m.as_fd(), false)?;
    Ok(m)
}

/// How many bytes wait to be read from the tty behind `fd` (`FIONREAD`; in canonical mode,
/// those of complete lines).
pub fn unread(fd: BorrowedFd<'_>) -> Result<usize> {
    let mut n: libc::c_int = 0;
    ioctl_ptr(fd, libc::FIONREAD, &mut n, "FIONREAD")?;
    Ok(n.max(0) as usize)
}

/// Takes what can be read from tty `fd` now, without ever blocking: `poll(2)` with no
/// timeout before each `read(2)` of at most what `FIONREAD` counts.
pub fn take_available(fd: BorrowedFd<'_>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let n = unread(fd)?;
        if n == 0 || !poll_in(&[fd.as_raw_fd()], 0)?[0] {
            return Ok(out);
        }
        let mut buf = vec![0u8; n];
        match read(fd, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(got) => out.extend_from_slice(&buf[..got]),
            Err(e) if e.errno() == Some(libc::EAGAIN) || e.errno() == Some(libc::EIO) => {
                return Ok(out)
            }
            Err(e) => return Err(e),
        }
    }
}

/// `read(2)` into `buf`; returns how much it read.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
    let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(last_err(format!("read of fd {}", fd.as_raw_fd())));
    }
    Ok(r as usize)
}

/// Writes all of `data` to `fd` (`write(2)` until done; `EINTR` retried).
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is a live buffer of `data.len()` bytes.
        let r = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(io_err(format!("write to fd {}", fd.as_raw_fd()), e));
        }
        data = &data[r as usize..];
    }
    Ok(())
}

/// `poll(2)` for input on `fds` for up to `timeout_ms` (-1: forever): per fd, whether it is
/// readable, hung up or in error. `EINTR` counts as nothing ready.
pub fn poll_in(fds: &[RawFd], timeout_ms: i32) -> Result<Vec<bool>> {
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
        return Err(io_err("poll", e));
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// Whether `fd` is a terminal (`TCGETS2` succeeds).
pub fn is_tty(fd: BorrowedFd<'_>) -> bool {
    get_termios(fd).is_ok()
}

/// A new open file description of haul's own fd `fd` (a terminal), reopened through
/// `/proc/self/fd/N`: read-write, never a controlling terminal, close-on-exec. Its status
/// flags are its own, so a process given it cannot make haul's (or the shell's) blocking fd
/// non-blocking.
pub fn reopen(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(|e| io_err(format!("open {path}"), e))
}

/// The foreground process group of terminal `fd` (haul's controlling terminal): `TIOCGPGRP`.
pub fn foreground(fd: BorrowedFd<'_>) -> Result<i32> {
    let mut g: libc::pid_t = 0;
    ioctl_ptr(fd, libc::TIOCGPGRP, &mut g, "TIOCGPGRP")?;
    Ok(g)
}

/// Makes `pgrp` the foreground process group of terminal `fd` (haul's controlling terminal):
/// `TIOCSPGRP`, with SIGTTOU blocked so that a haul in the background may take the terminal
/// back (tcsetpgrp(3)).
pub fn set_foreground(fd: BorrowedFd<'_>, pgrp: i32) -> Result<()> {
    let mut g: libc::pid_t = pgrp;
    ttou_blocked(|| ioctl_ptr(fd, libc::TIOCSPGRP, &mut g, "TIOCSPGRP")).map(|_| ())
}

/// Runs `f` with SIGTTOU blocked in this thread (`pthread_sigmask(3)`): a change to haul's
/// controlling terminal (termios, foreground group) made while haul is not in its foreground
/// group is then done instead of stopping haul or, haul's group being orphaned, failing with
/// EIO (the kernel's tty_check_change treats a blocked SIGTTOU as ignored).
fn ttou_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: live sigset_t values; pthread_sigmask changes this thread's mask only.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
    }
    let r = f();
    // SAFETY: puts back the mask read above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    r
}

/// The raw mode of termios(3) `cfmakeraw` applied to `t`: no input or output processing, no
/// echo, no signals, one byte at a time.
pub fn make_raw(t: &libc::termios2) -> libc::termios2 {
    let mut t = *t;
    t.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON);
    t.c_oflag &= !libc::OPOST;
    t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    t.c_cflag &= !(libc::CSIZE | libc::PARENB);
    t.c_cflag |= libc::CS8;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    t
}

/// `t` with no echo, no signals, no input processing and no output processing; canonical
/// mode kept, so that written-back input is cut into the same lines.
pub fn quiet(t: &libc::termios2) -> libc::termios2 {
    let mut q = *t;
    q.c_iflag = 0;
    q.c_oflag &= !libc::OPOST;
    q.c_lflag &= !(libc::ECHO
        | libc::ECHOE
        | libc::ECHOK
        | libc::ECHONL
        | libc::ECHOCTL
        | libc::ECHOKE
        | libc::ISIG
        | libc::IEXTEN);
    q
}

/// haul's own stdin (fd 0).
pub fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the whole life of haul (nothing in haul closes it).
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// haul's own stdout (fd 1).
pub fn stdout() -> BorrowedFd<'static> {
    // SAFETY: fd 1 stays open for the whole life of haul (nothing in haul closes it).
    unsafe { BorrowedFd::borrow_raw(1) }
}
