//! Restoring TCP and UDP sockets that are not connected: made by the restored process (an
//! injected `socket`, so in its network namespace), their options set, re-bound at their
//! address and port, listening again with their backlog (a UDP socket connected to its peer).
//!
//! TIME-WAIT: connections the original accepted and closed keep its port in TIME-WAIT for a
//! minute. They inherited the listener's `SO_REUSEADDR`: with it, the bind succeeds; without
//! it, no option of the new socket helps (the kernel wants both sides to allow reuse), and
//! [`check_ports`] fails before anything is made, saying so.

use super::error::{At, StepResult};
use super::share::Shared;
use crate::image::inet::{InetSocket, Transport};
use crate::image::{FdImage, FdKind, ImageSet, ProcessImage};
use crate::sys::remote::{self, Inject};
use std::net::SocketAddr;

/// Makes inet socket `s` again at fd `f`'s number.
pub(super) fn make(
    rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    s: &InetSocket,
    _shared: &mut Shared,
) -> StepResult {
    let at = || format!("fd {}: {}", f.fd, s.describe());
    let got = build(rs, f, s).at(at)?;
    super::fds::move_fd(rs, got, f).at(at)
}

/// The socket made, its options set, bound, listening or connected: returns its fd.
fn build(rs: &mut dyn Inject, f: &FdImage, s: &InetSocket) -> StepResult<u64> {
    let tcp = s.transport == Transport::Tcp;
    let ty = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    let flags = f.flags as i32 & (libc::O_NONBLOCK | libc::O_CLOEXEC);
    let fd = remote::socket(rs, s.family, ty, flags)?;
    for o in &s.options {
        let half;
        let value = if o.level == libc::SOL_SOCKET
            && (o.opt == libc::SO_RCVBUF || o.opt == libc::SO_SNDBUF)
        {
            half = (o.int() / 2).to_ne_bytes();
            &half[..]
        } else {
            &o.value[..]
        };
        remote::setsockopt(rs, fd, o.level, o.opt, value, &o.name)?;
    }
    if let Some(addr) = &s.local {
        remote::bind(rs, fd, addr)?;
    }
    if let Some(backlog) = s.backlog {
        remote::listen(rs, fd, backlog)?;
    }
    if let Some(peer) = &s.peer {
        remote::connect(rs, fd, peer)?;
    }
    Ok(fd)
}

/// One address the set binds again, and how.
struct Wanted<'a> {
    pid: i32,
    fd: i32,
    sock: &'a InetSocket,
    addr: SocketAddr,
}

/// Checks, before any process exists, that every address a TCP or UDP socket of the set is
/// bound to can be bound here again (a trial bind by haul with the options that decide it:
/// `IPV6_V6ONLY`, `SO_REUSEADDR`/`SO_REUSEPORT` as the socket had them, `IP_FREEBIND`,
/// `IP_TRANSPARENT`, `SO_BINDTODEVICE`).
/// The reason names the address, the port and, when found, who holds it.
pub(super) fn check_ports(set: &ImageSet) -> Result<(), crate::restore::tree::Refusal> {
    let mut wanted = Vec::new();
    for (_, p) in set.processes() {
        for f in p
            .fds
            .iter()
            .filter(|f| f.same_as.is_none() && f.inherited.is_none())
        {
            if let FdKind::Inet(s) = &f.kind {
                if let Some(addr) = s.local {
                    wanted.push(Wanted {
                        pid: p.pid,
                        fd: f.fd,
                        sock: s,
                        addr,
                    });
                }
            }
        }
    }
    for w in &wanted {
        if let Err(e) = try_bind(w.sock, &w.addr) {
            let held = holder(w.sock, &w.addr)
                .map(|h| format!(" (held by {h})"))
                .unwrap_or_default();
            return Err(crate::restore::tree::Refusal(format!(
                "pid {} fd {}: {}: address {} port {} cannot be bound here{held}: {e}",
                w.pid,
                w.fd,
                w.sock.describe(),
                w.addr.ip(),
                w.addr.port()
            )));
        }
    }
    Ok(())
}

/// A trial bind of `addr` by haul with the options of `s` that decide whether it succeeds.
fn try_bind(s: &InetSocket, addr: &SocketAddr) -> Result<(), crate::sys::SysError> {
    use crate::sys::inetsock;
    use std::os::fd::AsFd;
    let tcp = s.transport == Transport::Tcp;
    let sock = inetsock::fresh(s.family, tcp)?;
    for o in s.options.iter().filter(|o| {
        [
            "IPV6_V6ONLY",
            "SO_REUSEADDR",
            "SO_REUSEPORT",
            "IP_FREEBIND",
            "IP_TRANSPARENT",
            "SO_BINDTODEVICE",
        ]
        .contains(&o.name.as_str())
    }) {
        inetsock::set_opt(sock.as_fd(), o.level, o.opt, &o.value)?;
    }
    inetsock::bind(sock.as_fd(), addr)
}

/// Who holds port `addr` of `s`'s transport: "pid N (comm)", the socket's inode when no
/// process of haul's view holds it, or the connections in TIME-WAIT on it.
fn holder(s: &InetSocket, addr: &SocketAddr) -> Option<String> {
    use crate::sys::inetdiag;
    let proto = match s.transport {
        Transport::Tcp => libc::IPPROTO_TCP,
        Transport::Udp => libc::IPPROTO_UDP,
    };
    let all: Vec<_> = [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .flat_map(|fam| inetdiag::sockets(fam, proto).unwrap_or_default())
        .filter(|d| d.local.port() == addr.port())
        .collect();
    let waiting = all.iter().filter(|d| d.state == 6).count();
    let ino = all
        .iter()
        .filter(|d| d.ino != 0)
        .filter(|d| s.transport == Transport::Udp || d.state == inetdiag::TCP_LISTEN)
        .map(|d| d.ino)
        .next();
    let Some(ino) = ino else {
        return (waiting > 0).then(|| {
            format!(
                "{waiting} connection{} in TIME-WAIT: without SO_REUSEADDR the socket can \
                 bind it only once they expire, within a minute",
                if waiting == 1 { "" } else { "s" }
            )
        });
    };
    let want = format!("socket:[{ino}]");
    let procs = std::fs::read_dir("/proc").ok()?;
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_str() == Some(&want)) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                return Some(format!("pid {pid} ({})", comm.trim()));
            }
        }
    }
    Some(want)
}
