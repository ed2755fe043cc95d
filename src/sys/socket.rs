//! haul's own calls on sockets it holds (copies of a target's sockets taken with
//! `pidfd_getfd(2)`, or its end of a socket pair made in a target): reading a socket's queue
//! without taking it (`MSG_PEEK` from `SO_PEEK_OFF`), sending bytes, and passing an fd with
//! `SCM_RIGHTS`, see unix(7), socket(7).

use super::{last_err, Result, SysError};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// What waits in a socket's receive queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Queued {
    /// One element per datagram or record; for a stream, its bytes in one element (none when
    /// nothing waits).
    pub messages: Vec<Vec<u8>>,
    /// Fds wait in flight in the queue (`SCM_RIGHTS`): they cannot be carried.
    pub fds_in_flight: bool,
    /// For datagrams, the address each came from (as [`sockaddr_name`] gives it: None for an
    /// unbound sender), one per element of `messages`; empty for a stream.
    pub senders: Vec<Option<Vec<u8>>>,
}

/// Largest datagram read whole (a larger one is an error: it would be split).
const MAX_MESSAGE: usize = 4 << 20;
/// Bound on what one queue may hold (a bug or a racing writer would loop forever).
const MAX_QUEUE: usize = 256 << 20;

pub fn sockopt_int(fd: BorrowedFd<'_>, opt: libc::c_int) -> Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which we own.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(last_err(format!("getsockopt({opt})")));
    }
    Ok(v)
}

pub fn set_sockopt_int(fd: BorrowedFd<'_>, opt: libc::c_int, v: libc::c_int) -> Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `v`.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last_err(format!("setsockopt({opt}, {v})")));
    }
    Ok(())
}

/// What one peek found: its length, whether it was cut, whether fds came with it, and the
/// sender's address.
type Peeked = (usize, bool, bool, Option<Vec<u8>>);

/// One `recvmsg(fd, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC)` into `buf`: the byte count
/// (None: nothing more waits), whether the message was cut, whether fds came with it
/// (they are closed at once), and the sender's address.
fn peek_one(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Option<Peeked>> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // Room for SCM_MAX_FD (253) fds and a struct ucred.
    let mut control = vec![0u64; 160];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovec, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_name = (&mut from as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    // SAFETY: recvmsg writes into the iovec's buffer and the control buffer, both ours and as
    // long as the msghdr says.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(None);
        }
        return Err(super::io_err("recvmsg(MSG_PEEK) of a socket's queue", e));
    }
    let mut fds = msg.msg_flags & libc::MSG_CTRUNC != 0;
    // SAFETY: the CMSG_* walk stays inside the control buffer the kernel filled
    // (msg_controllen was set by recvmsg).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                fds = true;
                let data = libc::CMSG_DATA(c);
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    let got = std::ptr::read_unaligned(data.add(i * 4).cast::<libc::c_int>());
                    // A copy of an fd in flight was installed in haul: drop it.
                    drop(OwnedFd::from_raw_fd(got));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let cut = msg.msg_flags & libc::MSG_TRUNC != 0;
    let sender = sockaddr_name(&from, msg.msg_namelen);
    Ok(Some((n as usize, cut, fds, sender)))
}

/// What waits in the receive queue of the unix socket `fd` (a copy of a frozen process's
/// socket), read with `MSG_PEEK` from a peek offset (`SO_PEEK_OFF` set to 0, then put back)
/// so the queue stays as it was. `stream`: one element with every byte; otherwise one
/// element per datagram or record.
pub fn peek_queue(fd: BorrowedFd<'_>, stream: bool) -> Result<Queued> {
    let old = sockopt_int(fd, libc::SO_PEEK_OFF)?;
    set_sockopt_int(fd, libc::SO_PEEK_OFF, 0)?;
    let got = peek_all(fd, stream);
    let back = set_sockopt_int(fd, libc::SO_PEEK_OFF, old);
    let got = got?;
    back?;
    Ok(got)
}

fn peek_all(fd: BorrowedFd<'_>, stream: bool) -> Result<Queued> {
    let mut q = Queued::default();
    let mut buf = vec![0u8; if stream { 64 << 10 } else { MAX_MESSAGE }];
    let mut total = 0usize;
    let mut bytes = Vec::new();
    while let Some((n, cut, fds, from)) = peek_one(fd, &mut buf)? {
        q.fds_in_flight |= fds;
        if stream {
            if n == 0 {
                break; // end of stream: the peer is gone
            }
            bytes.extend_from_slice(&buf[..n]);
        } else {
            if cut {
                return Err(SysError::Invalid(format!(
                    "a queued message of {n} bytes is larger than {MAX_MESSAGE}"
                )));
            }
            q.messages.push(buf[..n].to_vec());
            q.senders.push(from);
        }
        total += n.max(1);
        if total > MAX_QUEUE || q.messages.len() > MAX_QUEUE / 64 {
            return Err(SysError::Invalid(format!(
                "a socket's queue holds more than {MAX_QUEUE} bytes (or keeps growing)"
            )));
        }
    }
    if !bytes.is_empty() {
        q.messages.push(bytes);
    }
    Ok(q)
}

/// `send(fd, data, MSG_DONTWAIT | MSG_NOSIGNAL)` until all of `data` is sent (a datagram or
/// record in one call).
pub fn send_all(fd: BorrowedFd<'_>, data: &[u8], stream: bool) -> Result<()> {
    let mut done = 0;
    loop {
        let rest = &data[done..];
        // SAFETY: send reads `rest.len()` bytes from a buffer we own.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(last_err(format!("send of {} queued bytes", rest.len())));
        }
        done += n as usize;
        if done >= data.len() {
            return Ok(());
        }
        if !stream || n == 0 {
            return Err(SysError::Invalid(format!(
                "sent {done} of a {}-byte message",
                data.len()
            )));
        }
    }
}

/// The name in a `sockaddr_un` of `len` bytes: None when unnamed (only the family), an
/// abstract name with its leading NUL, a path up to its first NUL.
pub fn sockaddr_name(a: &libc::sockaddr_un, len: libc::socklen_t) -> Option<Vec<u8>> {
    let off = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let n = (len as usize).checked_sub(off)?.min(a.sun_path.len());
    if n == 0 {
        return None;
    }
    let b: Vec<u8> = a.sun_path[..n].iter().map(|c| *c as u8).collect();
    if b[0] == 0 {
        return Some(b);
    }
    Some(b.split(|c| *c == 0).next().unwrap_or_default().to_vec())
}

/// The bytes of a `sockaddr_un` for `name` (an abstract name starts with a NUL; a path gets
/// its terminating NUL), at libc's layout, ready for bind(2) or connect(2).
pub fn sockaddr_bytes(name: &[u8]) -> Result<Vec<u8>> {
    let off = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    // SAFETY: an all-zero sockaddr_un is valid.
    let a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let abstract_ = name.first() == Some(&0);
    let len = name.len() + usize::from(!abstract_);
    if name.is_empty() || len > a.sun_path.len() {
        return Err(SysError::Invalid(format!(
            "unix socket name {:?} is empty or longer than {} bytes",
            String::from_utf8_lossy(name),
            a.sun_path.len()
        )));
    }
    let mut b = vec![0u8; off + len];
    b[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    b[off..off + name.len()].copy_from_slice(name);
    Ok(b)
}

/// A name as people read it: a path, or `@` and an abstract name.
pub fn show_name(n: &[u8]) -> String {
    match n.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(n).into_owned(),
    }
}

/// `socket(AF_UNIX, sock_type | SOCK_CLOEXEC, 0)` in haul.
pub fn unix_socket(sock_type: i32) -> Result<OwnedFd> {
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, sock_type | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err(format!("socket(AF_UNIX, {sock_type})")));
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// bind(2) or connect(2) of haul's `fd` to unix name `name`.
fn addr_call(fd: BorrowedFd<'_>, name: &[u8], connect: bool) -> Result<()> {
    let a = sockaddr_bytes(name)?;
    // SAFETY: both read `a.len()` bytes of a sockaddr_un laid out at libc's offsets.
    let r = unsafe {
        let p = a.as_ptr().cast::<libc::sockaddr>();
        let n = a.len() as libc::socklen_t;
        if connect {
            libc::connect(fd.as_raw_fd(), p, n)
        } else {
            libc::bind(fd.as_raw_fd(), p, n)
        }
    };
    if r < 0 {
        let what = if connect { "connect" } else { "bind" };
        return Err(last_err(format!("{what} to {}", show_name(name))));
    }
    Ok(())
}

/// bind(2) of haul's unix socket `fd` to `name`.
pub fn bind(fd: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
    addr_call(fd, name, false)
}

/// connect(2) of haul's unix socket `fd` to `name`.
pub fn connect(fd: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
    addr_call(fd, name, true)
}

/// accept4(2) on haul's copy of a listening socket (close-on-exec, non-blocking: a
/// connection is known to wait).
pub fn accept(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    // SAFETY: no address is asked for; returns a new fd or -1.
    let got = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if got < 0 {
        return Err(last_err("accept4 of a unix connection"));
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(got) })
}

/// shutdown(2) of `fd` with `how` (`SHUT_RD`, `SHUT_WR`, `SHUT_RDWR`).
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> Result<()> {
    // SAFETY: integers only.
    if unsafe { libc::shutdown(fd.as_raw_fd(), how) } < 0 {
        return Err(last_err(format!("shutdown({how})")));
    }
    Ok(())
}

/// `sendto(fd, data, MSG_DONTWAIT | MSG_NOSIGNAL, name)`: one datagram to the unix name
/// `name`, sent whole.
pub fn send_to(fd: BorrowedFd<'_>, data: &[u8], name: &[u8]) -> Result<()> {
    let a = sockaddr_bytes(name)?;
    // SAFETY: sendto reads `data.len()` bytes of `data` and `a.len()` bytes of the address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            a.as_ptr().cast(),
            a.len() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(last_err(format!(
            "sendto {} of a {}-byte datagram",
            show_name(name),
            data.len()
        )));
    }
    if n as usize != data.len() {
        return Err(SysError::Invalid(format!(
            "sent {n} of a {}-byte datagram to {}",
            data.len(),
            show_name(name)
        )));
    }
    Ok(())
}

/// Sends `fd` over the unix socket `sock` with `SCM_RIGHTS` (one data byte, `b"F"`):
/// sendmsg(2), cmsg(3).
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<()> {
    let byte = [b'F'];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    // SAFETY: the control buffer (32 bytes) holds CMSG_SPACE(4) (24) bytes: one header and
    // one int, written inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    // SAFETY: sendmsg reads the msghdr, iovec and control buffer, all ours.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(last_err("sendmsg(SCM_RIGHTS)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    #[test]
    fn a_stream_queue_is_read_without_taking_it() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"hello ").unwrap();
        a.write_all(b"world").unwrap();
        let q = peek_queue(b.as_fd(), true).unwrap();
        assert_eq!(q.messages, vec![b"hello world".to_vec()]);
        assert!(!q.fds_in_flight);
        // Still there, and the peek offset is back (disabled: -1).
        assert_eq!(sockopt_int(b.as_fd(), libc::SO_PEEK_OFF).unwrap(), -1);
        let mut got = [0u8; 11];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");
        assert_eq!(peek_queue(b.as_fd(), true).unwrap(), Queued::default());
    }

    #[test]
    fn datagrams_are_read_one_by_one_and_fds_in_flight_are_seen() {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.send(b"one").unwrap();
        a.send(b"").unwrap();
        a.send(b"three").unwrap();
        let q = peek_queue(b.as_fd(), false).unwrap();
        assert_eq!(q.messages, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert!(!q.fds_in_flight);
        // (An empty datagram peeked once is skipped by later peeks at an offset: the
        // kernel marks it peeked. Fds in flight on a pair of their own.)
        let (a, b) = UnixDatagram::pair().unwrap();
        a.send(b"x").unwrap();
        send_fd(a.as_fd(), a.as_fd()).unwrap();
        let q = peek_queue(b.as_fd(), false).unwrap();
        assert!(q.fds_in_flight);
        assert_eq!(q.messages, vec![b"x".to_vec(), b"F".to_vec()]);
    }
}
