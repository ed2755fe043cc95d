//! Terminal calls injected into a thread: `ioctl(TIOCSCTTY)` (a session leader takes its
//! controlling terminal) and `ioctl(TIOCSPGRP)` (the terminal's foreground process group),
//! which only the process itself can make. See ioctl_tty(2).

use super::{put, Inject};
use crate::sys::Result;

/// `ioctl(fd, TIOCSCTTY, 0)`: the calling session leader's terminal becomes the one at `fd`
/// (never stolen from another session).
pub fn set_ctty<R: Inject + ?Sized>(r: &mut R, fd: u64) -> Result<()> {
    r.call_ok(
        libc::SYS_ioctl,
        [fd, libc::TIOCSCTTY, 0, 0, 0, 0],
        &format!("ioctl(TIOCSCTTY) on fd {fd}"),
    )?;
    Ok(())
}

/// `ioctl(fd, TIOCSPGRP, &pgrp)`: `pgrp` becomes the foreground process group of the
/// caller's controlling terminal at `fd`.
pub fn set_fg_pgrp<R: Inject + ?Sized>(r: &mut R, fd: u64, pgrp: i32) -> Result<()> {
    let at = put(r, &pgrp.to_ne_bytes())?;
    r.call_ok(
        libc::SYS_ioctl,
        [fd, libc::TIOCSPGRP, at, 0, 0, 0],
        &format!("ioctl(TIOCSPGRP, {pgrp}) on fd {fd}"),
    )?;
    Ok(())
}
