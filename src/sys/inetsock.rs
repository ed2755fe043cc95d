//! haul's own calls on TCP and UDP sockets: reading a socket's options (on a `pidfd_getfd`
//! copy of a target's socket, and on a fresh socket to compare), laying out a `sockaddr_in` or
//! `sockaddr_in6`, and a trial bind of an address (restore checks the port is free), see
//! socket(7), ip(7), ipv6(7), tcp(7), udp(7).

use super::{io_err, last_err, Result};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// What a restore does with an option that differs from a fresh socket's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptUse {
    /// Set it again as read.
    Carry,
    /// `SO_RCVBUF`/`SO_SNDBUF`: the kernel reports twice what was set; set half.
    Buffer,
    /// Not carried: a socket with it is refused by name.
    Refuse,
}

/// Which sockets an option applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptOn {
    All,
    Tcp,
    Udp,
    V6,
}

/// One option haul knows: name, level, number, what a restore does with it, where it applies.
pub struct KnownOpt {
    pub name: &'static str,
    pub level: i32,
    pub opt: i32,
    pub what: OptUse,
    pub on: OptOn,
}

const fn k(name: &'static str, level: i32, opt: i32, what: OptUse, on: OptOn) -> KnownOpt {
    KnownOpt {
        name,
        level,
        opt,
        what,
        on,
    }
}

use libc::{IPPROTO_IP as IP, IPPROTO_IPV6 as IP6, IPPROTO_TCP as TCP, SOL_SOCKET as SOL};
use OptOn::{All, Tcp, Udp, V6};
use OptUse::{Buffer, Carry, Refuse};

/// `TCP_ULP` (linux/tcp.h): an upper-layer protocol (kTLS) on the socket.
const TCP_ULP: i32 = 31;
/// `UDP_SEGMENT`, `UDP_GRO` (linux/udp.h).
const UDP_SEGMENT: i32 = 103;
const UDP_GRO: i32 = 104;
/// `SO_GET_FILTER` is `SO_ATTACH_FILTER` read back (asm-generic/socket.h).
const SO_GET_FILTER: i32 = libc::SO_ATTACH_FILTER;

/// The options read from every TCP/UDP socket, in the order a restore sets them (all before
/// `bind`). `IPV6_V6ONLY` first: it decides what the address means.
pub const KNOWN: &[KnownOpt] = &[
    k("IPV6_V6ONLY", IP6, libc::IPV6_V6ONLY, Carry, V6),
    k("SO_REUSEADDR", SOL, libc::SO_REUSEADDR, Carry, All),
    k("SO_REUSEPORT", SOL, libc::SO_REUSEPORT, Carry, All),
    k("SO_BINDTODEVICE", SOL, libc::SO_BINDTODEVICE, Carry, All),
    k("IP_FREEBIND", IP, libc::IP_FREEBIND, Carry, All),
    k("IP_TRANSPARENT", IP, libc::IP_TRANSPARENT, Carry, All),
    k(
        "IP_BIND_ADDRESS_NO_PORT",
        IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        Carry,
        All,
    ),
    k("SO_KEEPALIVE", SOL, libc::SO_KEEPALIVE, Carry, All),
    k("SO_RCVBUF", SOL, libc::SO_RCVBUF, Buffer, All),
    k("SO_SNDBUF", SOL, libc::SO_SNDBUF, Buffer, All),
    k("SO_BROADCAST", SOL, libc::SO_BROADCAST, Carry, All),
    k("SO_OOBINLINE", SOL, libc::SO_OOBINLINE, Carry, All),
    k("SO_PRIORITY", SOL, libc::SO_PRIORITY, Carry, All),
    k("SO_MARK", SOL, libc::SO_MARK, Carry, All),
    k("SO_RCVLOWAT", SOL, libc::SO_RCVLOWAT, Carry, All),
    k("SO_LINGER", SOL, libc::SO_LINGER, Carry, All),
    k("SO_RCVTIMEO", SOL, libc::SO_RCVTIMEO, Carry, All),
    k("SO_SNDTIMEO", SOL, libc::SO_SNDTIMEO, Carry, All),
    k("SO_TIMESTAMP", SOL, libc::SO_TIMESTAMP, Carry, All),
    k("SO_TIMESTAMPNS", SOL, libc::SO_TIMESTAMPNS, Carry, All),
    k("SO_PASSCRED", SOL, libc::SO_PASSCRED, Carry, All),
    k("SO_BUSY_POLL", SOL, libc::SO_BUSY_POLL, Carry, All),
    k("SO_ATTACH_FILTER", SOL, SO_GET_FILTER, Refuse, All),
    k("IP_TOS", IP, libc::IP_TOS, Carry, All),
    k("IP_TTL", IP, libc::IP_TTL, Carry, All),
    k("IP_MTU_DISCOVER", IP, libc::IP_MTU_DISCOVER, Carry, All),
    k("IP_RECVERR", IP, libc::IP_RECVERR, Carry, All),
    k("IP_PKTINFO", IP, libc::IP_PKTINFO, Carry, All),
    k("IP_RECVTOS", IP, libc::IP_RECVTOS, Carry, All),
    k("IP_RECVTTL", IP, libc::IP_RECVTTL, Carry, All),
    k("IP_MULTICAST_TTL", IP, libc::IP_MULTICAST_TTL, Carry, Udp),
    k("IP_MULTICAST_LOOP", IP, libc::IP_MULTICAST_LOOP, Carry, Udp),
    k("IP_OPTIONS", IP, libc::IP_OPTIONS, Refuse, All),
    k("IPV6_TCLASS", IP6, libc::IPV6_TCLASS, Carry, V6),
    k("IPV6_UNICAST_HOPS", IP6, libc::IPV6_UNICAST_HOPS, Carry, V6),
    k("IPV6_MTU_DISCOVER", IP6, libc::IPV6_MTU_DISCOVER, Carry, V6),
    k("IPV6_RECVERR", IP6, libc::IPV6_RECVERR, Carry, V6),
    k("IPV6_RECVPKTINFO", IP6, libc::IPV6_RECVPKTINFO, Carry, V6),
    k(
        "IPV6_MULTICAST_HOPS",
        IP6,
        libc::IPV6_MULTICAST_HOPS,
        Carry,
        V6,
    ),
    k(
        "IPV6_MULTICAST_LOOP",
        IP6,
        libc::IPV6_MULTICAST_LOOP,
        Carry,
        V6,
    ),
    k("TCP_NODELAY", TCP, libc::TCP_NODELAY, Carry, Tcp),
    k("TCP_CORK", TCP, libc::TCP_CORK, Carry, Tcp),
    k("TCP_KEEPIDLE", TCP, libc::TCP_KEEPIDLE, Carry, Tcp),
    k("TCP_KEEPINTVL", TCP, libc::TCP_KEEPINTVL, Carry, Tcp),
    k("TCP_KEEPCNT", TCP, libc::TCP_KEEPCNT, Carry, Tcp),
    k("TCP_DEFER_ACCEPT", TCP, libc::TCP_DEFER_ACCEPT, Carry, Tcp),
    k("TCP_FASTOPEN", TCP, libc::TCP_FASTOPEN, Carry, Tcp),
    k("TCP_MAXSEG", TCP, libc::TCP_MAXSEG, Carry, Tcp),
    k("TCP_USER_TIMEOUT", TCP, libc::TCP_USER_TIMEOUT, Carry, Tcp),
    k("TCP_SYNCNT", TCP, libc::TCP_SYNCNT, Carry, Tcp),
    k("TCP_LINGER2", TCP, libc::TCP_LINGER2, Carry, Tcp),
    k("TCP_WINDOW_CLAMP", TCP, libc::TCP_WINDOW_CLAMP, Carry, Tcp),
    k(
        "TCP_NOTSENT_LOWAT",
        TCP,
        libc::TCP_NOTSENT_LOWAT,
        Carry,
        Tcp,
    ),
    k("TCP_CONGESTION", TCP, libc::TCP_CONGESTION, Carry, Tcp),
    k("TCP_ULP", TCP, TCP_ULP, Refuse, Tcp),
    k("UDP_CORK", libc::IPPROTO_UDP, libc::UDP_CORK, Refuse, Udp),
    k("UDP_SEGMENT", libc::IPPROTO_UDP, UDP_SEGMENT, Carry, Udp),
    k("UDP_GRO", libc::IPPROTO_UDP, UDP_GRO, Carry, Udp),
];

impl KnownOpt {
    /// Whether it applies to a socket of `family` and `tcp` (else UDP).
    pub fn applies(&self, family: i32, tcp: bool) -> bool {
        match self.on {
            All => true,
            Tcp => tcp,
            Udp => !tcp,
            V6 => family == libc::AF_INET6,
        }
    }
}

/// `getsockopt(fd, level, opt)`: the bytes it wrote (up to 64), or None when the socket has
/// no such option (`ENOPROTOOPT`, `EOPNOTSUPP`, `EINVAL`). `SO_ATTACH_FILTER` (read back as
/// `SO_GET_FILTER`) reads the filter's length in instructions, as an int.
pub fn get_opt(fd: BorrowedFd<'_>, level: i32, opt: i32) -> Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 64];
    let mut len: libc::socklen_t = if level == SOL && opt == SO_GET_FILTER {
        0
    } else {
        buf.len() as libc::socklen_t
    };
    // SAFETY: getsockopt writes at most `len` bytes into `buf`, which we own, and the length
    // into `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOENT) => Ok(None),
            _ => Err(io_err(format!("getsockopt({level}, {opt})"), e)),
        };
    }
    if level == SOL && opt == SO_GET_FILTER {
        // The kernel answers with the count of instructions in the length.
        return Ok(Some((len as i32).to_ne_bytes().to_vec()));
    }
    Ok(Some(buf[..(len as usize).min(buf.len())].to_vec()))
}

/// `getsockopt(SOL_SOCKET, opt)` as an int.
pub fn get_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> Result<i32> {
    let v = get_opt(fd, level, opt)?.unwrap_or_default();
    Ok(v.get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i32::from_ne_bytes))
}

/// `setsockopt(fd, level, opt, value)`.
pub fn set_opt(fd: BorrowedFd<'_>, level: i32, opt: i32, value: &[u8]) -> Result<()> {
    // SAFETY: setsockopt reads `value.len()` bytes from `value`.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last_err(format!("setsockopt({level}, {opt})")));
    }
    Ok(())
}

/// A new socket of haul's: `socket(family, SOCK_STREAM or SOCK_DGRAM | SOCK_CLOEXEC, 0)`.
pub fn fresh(family: i32, tcp: bool) -> Result<OwnedFd> {
    let ty = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err(format!("socket({family}, {ty})")));
    }
    // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `addr` laid out as a `sockaddr_in` or `sockaddr_in6` (libc's structs), as bind(2) and
/// connect(2) take it.
pub fn sockaddr_bytes(addr: &SocketAddr) -> Vec<u8> {
    match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a plain-old-data struct viewed as its bytes.
            unsafe { as_bytes(&sa) }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: a plain-old-data struct viewed as its bytes.
            unsafe { as_bytes(&sa) }
        }
    }
}

/// # Safety
/// `T` must be plain old data without padding that matters.
unsafe fn as_bytes<T>(v: &T) -> Vec<u8> {
    // SAFETY: (caller) `v` is a live value of `size_of::<T>()` bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// `bind(fd, addr)`.
pub fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> Result<()> {
    let sa = sockaddr_bytes(addr);
    // SAFETY: bind reads `sa.len()` bytes of a sockaddr we laid out.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            sa.as_ptr().cast(),
            sa.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last_err(format!("bind to {addr}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn options_read_back_and_addresses_bind() {
        let s = fresh(libc::AF_INET6, true).unwrap();
        let fd = s.as_fd();
        set_opt(fd, IP6, libc::IPV6_V6ONLY, &1i32.to_ne_bytes()).unwrap();
        assert_eq!(get_int(fd, IP6, libc::IPV6_V6ONLY).unwrap(), 1);
        assert_eq!(get_int(fd, SOL, SO_GET_FILTER).unwrap(), 0, "no filter");
        let cc = get_opt(fd, TCP, libc::TCP_CONGESTION).unwrap().unwrap();
        assert!(!cc.is_empty());
        bind(fd, &"[::1]:0".parse().unwrap()).unwrap();
        // A port someone holds.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t = fresh(libc::AF_INET, true).unwrap();
        let e = bind(t.as_fd(), &l.local_addr().unwrap()).unwrap_err();
        assert!(e.to_string().contains("Address already in use"), "{e}");
    }
}
