//! What the kernel tells of a unix socket by its inode: `NETLINK_SOCK_DIAG` with a
//! `unix_diag_req` (sock_diag(7)): its type and state, whether it is bound, its peer's inode,
//! whether it was shut down, and how much waits in its receive queue.
//!
//! linux/unix_diag.h is in neither libc nor linux-raw-sys: its request and reply structs and
//! numbers are written out here (from the kernel header, stable uapi).

use super::{check, last_err, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `udiag_show` bits (linux/unix_diag.h).
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
/// Reply attributes (linux/unix_diag.h).
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
/// `struct unix_diag_req`: family u8, protocol u8, pad u16, states u32, ino u32, show u32,
/// cookie [u32; 2].
const REQ_LEN: usize = 24;
/// `struct unix_diag_msg`: family u8, type u8, state u8, pad u8, ino u32, cookie [u32; 2].
const MSG_LEN: usize = 16;
/// `NLMSG_HDRLEN`.
const NLMSG_HDRLEN: usize = std::mem::size_of::<libc::nlmsghdr>();

/// A unix socket as sock_diag reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixSock {
    pub ino: u64,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub sock_type: i32,
    /// `TCP_ESTABLISHED` (1), `TCP_LISTEN` (10), `TCP_CLOSE` (7), ...
    pub state: u8,
    /// Its address, if bound (abstract names start with a NUL byte; a path without its
    /// terminating NUL). An accepted socket shows its listener's.
    pub name: Option<Vec<u8>>,
    /// The socket file a path-bound socket made (`udiag_vfs_ino`, `udiag_vfs_dev`, the
    /// device as `stat` encodes it): only the socket that bound it has one.
    pub vfs: Option<(u64, u64)>,
    /// The inode of the socket it is connected to (0: none).
    pub peer: u64,
    /// `sk_shutdown`: RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
    /// Bytes waiting to be read (a stream's or seqpacket's whole queue; a datagram socket's
    /// first datagram); for a listener, the connections waiting to be accepted.
    pub rqueue: u32,
    /// Bytes sent and not yet read by the peer; for a listener, its backlog.
    pub wqueue: u32,
}

impl UnixSock {
    /// Listening for connections (`TCP_LISTEN` in include/net/tcp_states.h, which libc lacks).
    pub fn is_listening(&self) -> bool {
        self.state == 10
    }
}

/// Lays out the request for `ino` (NLM_F_REQUEST, exact lookup).
fn request(ino: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut b = vec![0u8; len];
    type H = libc::nlmsghdr;
    let put = |b: &mut [u8], at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(
        &mut b,
        std::mem::offset_of!(H, nlmsg_len),
        &(len as u32).to_ne_bytes(),
    );
    put(
        &mut b,
        std::mem::offset_of!(H, nlmsg_type),
        &SOCK_DIAG_BY_FAMILY.to_ne_bytes(),
    );
    put(
        &mut b,
        std::mem::offset_of!(H, nlmsg_flags),
        &(libc::NLM_F_REQUEST as u16).to_ne_bytes(),
    );
    put(
        &mut b,
        std::mem::offset_of!(H, nlmsg_seq),
        &1u32.to_ne_bytes(),
    );
    let r = NLMSG_HDRLEN;
    b[r] = libc::AF_UNIX as u8;
    put(&mut b, r + 4, &u32::MAX.to_ne_bytes()); // every state
    put(&mut b, r + 8, &ino.to_ne_bytes());
    put(
        &mut b,
        r + 12,
        &(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes(),
    );
    // INET_DIAG_NOCOOKIE: look the socket up by inode alone.
    put(&mut b, r + 16, &u32::MAX.to_ne_bytes());
    put(&mut b, r + 20, &u32::MAX.to_ne_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// A name as the kernel keeps it: a path up to its first NUL (the kernel counts the
/// terminating NUL in the address length), an abstract name (leading NUL) whole.
fn trim_path(n: &[u8]) -> Vec<u8> {
    match n.first() {
        Some(0) | None => n.to_vec(),
        Some(_) => n.split(|b| *b == 0).next().unwrap_or_default().to_vec(),
    }
}

/// Decodes one reply: `Ok(None)` when the kernel knows no such socket (ENOENT).
fn parse_reply(b: &[u8], ino: u64) -> Result<Option<UnixSock>> {
    let bad = |what: &str| SysError::Invalid(format!("sock_diag reply for socket:[{ino}]: {what}"));
    let len = u32_at(b, 0).ok_or_else(|| bad("too short"))? as usize;
    let ty = u16_at(b, 4).ok_or_else(|| bad("too short"))?;
    if len > b.len() || len < NLMSG_HDRLEN {
        return Err(bad("bad length"));
    }
    if ty == libc::NLMSG_ERROR as u16 {
        let err = u32_at(b, NLMSG_HDRLEN).ok_or_else(|| bad("short error"))? as i32;
        if err == -libc::ENOENT {
            return Ok(None);
        }
        return Err(super::io_err(
            format!("sock_diag of socket:[{ino}]"),
            std::io::Error::from_raw_os_error(-err),
        ));
    }
    if ty != SOCK_DIAG_BY_FAMILY {
        return Err(bad(&format!("message type {ty}")));
    }
    let m = &b[NLMSG_HDRLEN..len];
    if m.len() < MSG_LEN {
        return Err(bad("short unix_diag_msg"));
    }
    let mut s = UnixSock {
        sock_type: i32::from(m[1]),
        state: m[2],
        ino: u64::from(u32_at(m, 4).unwrap_or(0)),
        ..Default::default()
    };
    // The attributes: (len u16, type u16, payload), each aligned to 4.
    let mut at = MSG_LEN;
    while at + 4 <= m.len() {
        let alen = u16_at(m, at).unwrap_or(0) as usize;
        let aty = u16_at(m, at + 2).unwrap_or(0) & 0x3fff;
        if alen < 4 || at + alen > m.len() {
            return Err(bad("bad attribute"));
        }
        let data = &m[at + 4..at + alen];
        match aty {
            UNIX_DIAG_NAME => s.name = Some(trim_path(data)),
            UNIX_DIAG_VFS => {
                if let (Some(ino), Some(dev)) = (u32_at(data, 0), u32_at(data, 4)) {
                    // The kernel's own dev_t (major << 20 | minor), as stat(2) does not give it.
                    let dev = libc::makedev(dev >> 20, dev & 0xfffff);
                    s.vfs = Some((u64::from(ino), dev));
                }
            }
            UNIX_DIAG_PEER => s.peer = u64::from(u32_at(data, 0).unwrap_or(0)),
            UNIX_DIAG_RQLEN => {
                s.rqueue = u32_at(data, 0).unwrap_or(0);
                s.wqueue = u32_at(data, 4).unwrap_or(0);
            }
            UNIX_DIAG_SHUTDOWN => s.shutdown = data.first().copied().unwrap_or(0),
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok(Some(s))
}

/// The unix socket with inode `ino` in haul's network namespace, or None if there is none:
/// a `SOCK_DIAG_BY_FAMILY` request for `AF_UNIX` on a `NETLINK_SOCK_DIAG` socket, see
/// sock_diag(7).
pub fn unix_sock(ino: u64) -> Result<Option<UnixSock>> {
    let Ok(ino32) = u32::try_from(ino) else {
        return Ok(None);
    };
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    let fd = check(fd as libc::c_long, || {
        "socket(AF_NETLINK, NETLINK_SOCK_DIAG)".into()
    })?;
    // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let req = request(ino32);
    // SAFETY: send reads `req.len()` bytes from a buffer we own; no address (the kernel).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(last_err(format!(
            "send of the sock_diag request for socket:[{ino}]"
        )));
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: recv writes at most `buf.len()` bytes into a buffer we own.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(last_err(format!(
            "recv of the sock_diag reply for socket:[{ino}]"
        )));
    }
    parse_reply(&buf[..n as usize], ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socketpair_is_seen_with_its_peer_and_its_queue() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        (&b).write_all(b"hello").unwrap();
        let ia = std::fs::metadata(format!("/proc/self/fd/{}", a.as_raw_fd()))
            .unwrap()
            .ino();
        let ib = std::fs::metadata(format!("/proc/self/fd/{}", b.as_raw_fd()))
            .unwrap()
            .ino();
        let s = unix_sock(ia).unwrap().expect("found");
        assert_eq!(s.ino, ia);
        assert_eq!(s.peer, ib);
        assert_eq!(s.sock_type, libc::SOCK_STREAM);
        assert_eq!(s.name, None);
        assert_eq!(s.rqueue, 5);
        assert_eq!(s.shutdown, 0);
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(unix_sock(ia).unwrap().unwrap().shutdown & 2, 2);
        // An inode that is no socket.
        assert_eq!(unix_sock(u64::from(u32::MAX) - 7).unwrap(), None);
    }
}
