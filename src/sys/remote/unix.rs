//! Injected calls that make unix sockets in a process being restored: `socket(2)`,
//! `bind(2)`, `listen(2)` and `connect(2)`, see unix(7). They run in the process itself so
//! that what the kernel records of the caller (the credentials and pid a listener or a
//! connecting socket hands its peer, `SO_PEERCRED`) is the process's.

use super::{put, Inject};
use crate::sys::Result;

/// `socket(AF_UNIX, sock_type | SOCK_CLOEXEC, 0)`; returns the new socket. (Close-on-exec
/// until it is at its number, where the fd's own flag is set.)
pub fn unix_socket<R: Inject + ?Sized>(r: &mut R, sock_type: i32) -> Result<u64> {
    r.call_ok(
        libc::SYS_socket,
        [
            libc::AF_UNIX as u64,
            (sock_type | libc::SOCK_CLOEXEC) as u64,
            0,
            0,
            0,
            0,
        ],
        "socket(AF_UNIX)",
    )
}

/// `bind` (or, with `connect`, `connect`) of socket `fd` to the unix name `name` (an abstract name
/// starts with a NUL), the `sockaddr_un` in the argument area.
fn addr_call<R: Inject + ?Sized>(r: &mut R, fd: u64, name: &[u8], connect: bool) -> Result<()> {
    let a = crate::sys::socket::sockaddr_bytes(name)?;
    let at = put(r, &a)?;
    let (nr, what) = if connect {
        (libc::SYS_connect, "connect")
    } else {
        (libc::SYS_bind, "bind")
    };
    let what = format!("{what} to {}", crate::sys::socket::show_name(name));
    r.call_ok(nr, [fd, at, a.len() as u64, 0, 0, 0], &what)?;
    Ok(())
}

/// `bind(fd, name)`.
pub fn bind_unix<R: Inject + ?Sized>(r: &mut R, fd: u64, name: &[u8]) -> Result<()> {
    addr_call(r, fd, name, false)
}

/// `connect(fd, name)`.
pub fn connect_unix<R: Inject + ?Sized>(r: &mut R, fd: u64, name: &[u8]) -> Result<()> {
    addr_call(r, fd, name, true)
}
