//! Socket options the standard library does not expose.

use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::{io_err, Result};

/// Sets one integer socket option: `setsockopt(2)`.
fn set_int(fd: &impl AsFd, level: i32, name: i32, value: i32, what: &str) -> Result<()> {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: `raw` is a descriptor borrowed from `fd`, open for this call; the option value
    // is a live c_int whose size is passed along.
    let r = unsafe {
        libc::setsockopt(
            raw,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io_err(
            format!("setsockopt({what}) on fd {raw}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Turns on TCP keepalive for a connected socket: after `idle` without traffic the kernel
/// probes every `interval`, and after `count` unanswered probes the connection fails (reads
/// return an error). `SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`: see
/// socket(7) and tcp(7).
pub fn set_tcp_keepalive(
    sock: &impl AsFd,
    idle: Duration,
    interval: Duration,
    count: u32,
) -> Result<()> {
    let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as i32;
    set_int(
        sock,
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        1,
        "SO_KEEPALIVE",
    )?;
    set_int(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        secs(idle),
        "TCP_KEEPIDLE",
    )?;
    set_int(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        secs(interval),
        "TCP_KEEPINTVL",
    )?;
    set_int(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        count.clamp(1, i32::MAX as u32) as i32,
        "TCP_KEEPCNT",
    )
}
