//! What the kernel tells of TCP and UDP sockets: `NETLINK_SOCK_DIAG` with an
//! `inet_diag_req_v2` (sock_diag(7)), a dump of every socket of one family and protocol in
//! haul's network namespace: its state, local and remote address, queues (for a listener: the
//! connections not yet accepted and its backlog) and inode.
//!
//! linux/inet_diag.h is in neither libc nor linux-raw-sys (with the features haul builds): its
//! request and reply structs are written out here (from the kernel header, stable uapi).

use super::{check, last_err, Result, SysError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct inet_diag_req_v2`: family u8, protocol u8, ext u8, pad u8, states u32, then a
/// `struct inet_diag_sockid` (48 bytes).
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`: family u8, state u8, timer u8, retrans u8, id (48 bytes: sport
/// be16, dport be16, src [be32; 4], dst [be32; 4], if u32, cookie [u32; 2]), expires u32,
/// rqueue u32, wqueue u32, uid u32, inode u32.
const MSG_LEN: usize = 72;
const NLMSG_HDRLEN: usize = std::mem::size_of::<libc::nlmsghdr>();

/// TCP states (include/net/tcp_states.h, which libc lacks); UDP uses `ESTABLISHED` (connected)
/// and `CLOSE` (not).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// The name of TCP state `s`, as `ss` prints it.
pub fn state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "CLOSE",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW-SYN-RECV",
        _ => "UNKNOWN",
    }
}

/// A TCP or UDP socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetSock {
    /// `AF_INET` or `AF_INET6`.
    pub family: i32,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: i32,
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// A listener: connections waiting to be accepted; otherwise bytes waiting to be read.
    pub rqueue: u32,
    /// A listener: its backlog; otherwise bytes waiting to be sent.
    pub wqueue: u32,
    /// 0 for a socket no process holds any more (TIME-WAIT, a connection in a listen queue).
    pub ino: u64,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Lays out the dump request for every socket of `family` and `protocol`, in every state.
fn request(family: i32, protocol: i32) -> Vec<u8> {
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
        &((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes(),
    );
    put(
        &mut b,
        std::mem::offset_of!(H, nlmsg_seq),
        &1u32.to_ne_bytes(),
    );
    let r = NLMSG_HDRLEN;
    b[r] = family as u8;
    b[r + 1] = protocol as u8;
    put(&mut b, r + 4, &u32::MAX.to_ne_bytes()); // every state
    b
}

/// The address at `at` of an `inet_diag_sockid` (port at `port_at`, big-endian).
fn addr(family: i32, m: &[u8], port_at: usize, at: usize) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(m.get(port_at..port_at + 2)?.try_into().ok()?);
    let raw: [u8; 16] = m.get(at..at + 16)?.try_into().ok()?;
    let ip = if family == libc::AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    };
    Some(match ip {
        IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
        v4 => SocketAddr::new(v4, port),
    })
}

/// Decodes one `inet_diag_msg`.
fn parse_msg(m: &[u8], protocol: i32) -> Option<InetSock> {
    if m.len() < MSG_LEN {
        return None;
    }
    let family = i32::from(m[0]);
    Some(InetSock {
        family,
        protocol,
        state: m[1],
        local: addr(family, m, 4, 8)?,
        remote: addr(family, m, 6, 24)?,
        rqueue: u32_at(m, 56)?,
        wqueue: u32_at(m, 60)?,
        ino: u64::from(u32_at(m, 68)?),
    })
}

/// Every TCP (`protocol` = `IPPROTO_TCP`) or UDP socket of `family` in haul's network
/// namespace, see sock_diag(7).
pub fn sockets(family: i32, protocol: i32) -> Result<Vec<InetSock>> {
    let what = || format!("sock_diag dump of family {family} protocol {protocol}");
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
    let req = request(family, protocol);
    // SAFETY: send reads `req.len()` bytes from a buffer we own; no address (the kernel).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(last_err(format!("send of the {}", what())));
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32768];
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into a buffer we own.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(last_err(format!("recv of the {}", what())));
        }
        if n == 0 {
            return Ok(out);
        }
        let b = &buf[..n as usize];
        let mut at = 0;
        while at + NLMSG_HDRLEN <= b.len() {
            let bad = |w: &str| SysError::Invalid(format!("{}: {w}", what()));
            let len = u32_at(b, at).ok_or_else(|| bad("short"))? as usize;
            let ty = u16_at(b, at + 4).ok_or_else(|| bad("short"))?;
            if len < NLMSG_HDRLEN || at + len > b.len() {
                return Err(bad("bad length"));
            }
            let body = &b[at + NLMSG_HDRLEN..at + len];
            match ty {
                t if t == libc::NLMSG_DONE as u16 => return Ok(out),
                t if t == libc::NLMSG_ERROR as u16 => {
                    let err = u32_at(body, 0).ok_or_else(|| bad("short error"))? as i32;
                    if err == 0 {
                        return Ok(out);
                    }
                    // A protocol whose diag module is not loaded (udp_diag): none to list.
                    if err == -libc::ENOENT {
                        return Ok(out);
                    }
                    return Err(super::io_err(
                        what(),
                        std::io::Error::from_raw_os_error(-err),
                    ));
                }
                SOCK_DIAG_BY_FAMILY => out.extend(parse_msg(body, protocol)),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// The TCP or UDP socket with inode `ino` in haul's network namespace, or None if there is
/// none (another kind, or one the kernel does not list: not bound).
pub fn inet_sock(ino: u64) -> Result<Option<InetSock>> {
    if ino == 0 {
        return Ok(None);
    }
    for protocol in [libc::IPPROTO_TCP, libc::IPPROTO_UDP] {
        for family in [libc::AF_INET, libc::AF_INET6] {
            if let Some(s) = sockets(family, protocol)?
                .into_iter()
                .find(|s| s.ino == ino)
            {
                return Ok(Some(s));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ino(fd: i32) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino()
    }

    #[test]
    fn a_listener_and_a_udp_socket_are_seen_with_their_addresses() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = inet_sock(ino(l.as_raw_fd()))
            .unwrap()
            .expect("listener found");
        assert_eq!(s.local, l.local_addr().unwrap());
        assert_eq!((s.state, s.protocol), (TCP_LISTEN, libc::IPPROTO_TCP));
        assert_eq!(s.rqueue, 0);
        // A connection not accepted yet waits in the listener's queue.
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = inet_sock(ino(l.as_raw_fd())).unwrap().unwrap();
        assert_eq!(s.rqueue, 1);
        assert!(s.wqueue > 0, "the backlog");

        let u = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let s = inet_sock(ino(u.as_raw_fd())).unwrap().expect("udp found");
        assert_eq!(s.local, u.local_addr().unwrap());
        assert_eq!((s.family, s.state), (libc::AF_INET6, TCP_CLOSE));
        // An inode that is no socket.
        assert_eq!(inet_sock(u64::from(u32::MAX) - 7).unwrap(), None);
    }
}
