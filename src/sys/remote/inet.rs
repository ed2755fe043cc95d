//! TCP and UDP socket calls injected into a thread: `socket`, `setsockopt`, `bind`,
//! `listen`, `connect` (the socket is made by the restored process, in its network
//! namespace).

use super::{put, Inject};
use crate::sys::Result;
use std::net::SocketAddr;

/// `socket(family, sock_type | flags, 0)`; returns the new fd.
pub fn socket<R: Inject + ?Sized>(
    r: &mut R,
    family: i32,
    sock_type: i32,
    flags: i32,
) -> Result<u64> {
    r.call_ok(
        libc::SYS_socket,
        [family as u64, (sock_type | flags) as u64, 0, 0, 0, 0],
        &format!("socket({family}, {sock_type})"),
    )
}

/// `setsockopt(fd, level, opt, value, len)`; `name` names the option in errors.
pub fn setsockopt<R: Inject + ?Sized>(
    r: &mut R,
    fd: u64,
    level: i32,
    opt: i32,
    value: &[u8],
    name: &str,
) -> Result<()> {
    let at = put(r, value)?;
    r.call_ok(
        libc::SYS_setsockopt,
        [fd, level as u64, opt as u64, at, value.len() as u64, 0],
        &format!("setsockopt {name} on fd {fd}"),
    )?;
    Ok(())
}

/// `bind(fd, addr)`.
pub fn bind<R: Inject + ?Sized>(r: &mut R, fd: u64, addr: &SocketAddr) -> Result<()> {
    let sa = crate::sys::inetsock::sockaddr_bytes(addr);
    let at = put(r, &sa)?;
    r.call_ok(
        libc::SYS_bind,
        [fd, at, sa.len() as u64, 0, 0, 0],
        &format!("bind of fd {fd} to {addr}"),
    )?;
    Ok(())
}

/// `listen(fd, backlog)`.
pub fn listen<R: Inject + ?Sized>(r: &mut R, fd: u64, backlog: u32) -> Result<()> {
    r.call_ok(
        libc::SYS_listen,
        [fd, u64::from(backlog), 0, 0, 0, 0],
        &format!("listen on fd {fd}"),
    )?;
    Ok(())
}

/// `connect(fd, addr)` (a UDP socket's peer: no packet is sent).
pub fn connect<R: Inject + ?Sized>(r: &mut R, fd: u64, addr: &SocketAddr) -> Result<()> {
    let sa = crate::sys::inetsock::sockaddr_bytes(addr);
    let at = put(r, &sa)?;
    r.call_ok(
        libc::SYS_connect,
        [fd, at, sa.len() as u64, 0, 0, 0],
        &format!("connect of fd {fd} to {addr}"),
    )?;
    Ok(())
}
