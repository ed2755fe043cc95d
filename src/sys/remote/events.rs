//! Epoll and inotify calls injected into a thread: `epoll_create1`, `epoll_ctl`,
//! `epoll_pwait` (without waiting), `inotify_init1`, `inotify_add_watch`,
//! `inotify_rm_watch`, and a `read` whose bytes are thrown away.

use std::mem::{offset_of, size_of};

use super::{cstr, field, put, Inject};
use crate::sys::Result;

/// `epoll_create1(flags)`; returns the new fd.
pub fn epoll_create1<R: Inject + ?Sized>(r: &mut R, flags: u64) -> Result<u64> {
    r.call_ok(
        libc::SYS_epoll_create1,
        [flags, 0, 0, 0, 0, 0],
        "epoll_create1",
    )
}

/// The bytes of a `struct epoll_event` (libc's layout: packed on x86_64).
pub fn epoll_event_bytes(events: u32, data: u64) -> Vec<u8> {
    type E = libc::epoll_event;
    let mut b = vec![0u8; size_of::<E>()];
    field(&mut b, offset_of!(E, events), &events.to_ne_bytes());
    field(&mut b, offset_of!(E, u64), &data.to_ne_bytes());
    b
}

/// `epoll_ctl(epfd, op, fd, &{events, data})`.
pub fn epoll_ctl<R: Inject + ?Sized>(
    r: &mut R,
    epfd: u64,
    op: i32,
    fd: u64,
    events: u32,
    data: u64,
) -> Result<()> {
    let at = put(r, &epoll_event_bytes(events, data))?;
    let name = match op {
        libc::EPOLL_CTL_ADD => "EPOLL_CTL_ADD",
        libc::EPOLL_CTL_MOD => "EPOLL_CTL_MOD",
        _ => "EPOLL_CTL_DEL",
    };
    r.call_ok(
        libc::SYS_epoll_ctl,
        [epfd, op as u64, fd, at, 0, 0],
        &format!("epoll_ctl {name} of fd {fd} (events {events:#x}) in epoll fd {epfd}"),
    )?;
    Ok(())
}

/// `epoll_pwait(epfd, events, max, 0, NULL)`: takes up to `max` ready events without waiting;
/// returns the data of each.
pub fn epoll_take_ready<R: Inject + ?Sized>(r: &mut R, epfd: u64, max: usize) -> Result<Vec<u64>> {
    type E = libc::epoll_event;
    let len = size_of::<E>() * max.max(1);
    let at = put(r, &vec![0u8; len])?;
    let n = r.call_ok(
        libc::SYS_epoll_pwait,
        [epfd, at, max.max(1) as u64, 0, 0, 0],
        &format!("epoll_pwait of epoll fd {epfd}"),
    )? as usize;
    let mut b = vec![0u8; len];
    r.read_mem(at, &mut b)?;
    Ok((0..n.min(max.max(1)))
        .map(|i| {
            let o = i * size_of::<E>() + offset_of!(E, u64);
            u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
        })
        .collect())
}

/// `inotify_init1(flags)`; returns the new fd.
pub fn inotify_init1<R: Inject + ?Sized>(r: &mut R, flags: u64) -> Result<u64> {
    r.call_ok(
        libc::SYS_inotify_init1,
        [flags, 0, 0, 0, 0, 0],
        "inotify_init1",
    )
}

/// `inotify_add_watch(fd, path, mask)`; returns the watch descriptor.
pub fn inotify_add_watch<R: Inject + ?Sized>(
    r: &mut R,
    fd: u64,
    path: &str,
    mask: u32,
) -> Result<u64> {
    let at = put(r, &cstr(path)?)?;
    r.call_ok(
        libc::SYS_inotify_add_watch,
        [fd, at, u64::from(mask), 0, 0, 0],
        &format!("inotify_add_watch of {path} (mask {mask:#x}) to fd {fd}"),
    )
}

/// `inotify_rm_watch(fd, wd)`.
pub fn inotify_rm_watch<R: Inject + ?Sized>(r: &mut R, fd: u64, wd: u64) -> Result<()> {
    r.call_ok(
        libc::SYS_inotify_rm_watch,
        [fd, wd, 0, 0, 0, 0],
        &format!("inotify_rm_watch of wd {wd} from fd {fd}"),
    )?;
    Ok(())
}

/// `read(fd, buf, len)` into the argument area, the bytes thrown away; returns how many
/// were read.
pub fn read_discard<R: Inject + ?Sized>(r: &mut R, fd: u64, len: u64, what: &str) -> Result<u64> {
    let at = put(r, &vec![0u8; len as usize])?;
    r.call_ok(libc::SYS_read, [fd, at, len, 0, 0, 0], what)
}
