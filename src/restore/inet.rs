//! Restoring TCP and UDP sockets: made by the restored process (an injected `socket`, so in
//! its network namespace), their options set, re-bound at their address and port, listening
//! again with their backlog (a UDP socket connected to its peer); an established TCP
//! connection made again in repair mode with its sequence numbers and queues ([`established`]).
//!
//! TIME-WAIT: connections the original accepted and closed keep its port in TIME-WAIT for a
//! minute. They inherited the listener's `SO_REUSEADDR`: with it, the bind succeeds; without
//! it, no option of the new socket helps (the kernel wants both sides to allow reuse), and
//! [`check_ports`] fails before anything is made, saying so.

use super::error::{At, StepError, StepResult};
use super::share::Shared;
use crate::image::inet::{InetSocket, SockOpt, TcpConn, Transport};
use crate::image::{FdImage, FdKind, ImageSet, ProcessImage};
use crate::sys::remote::{self, Inject};
use crate::sys::SysError;
use std::net::SocketAddr;

/// Makes inet socket `s` again at fd `f`'s number.
pub(super) fn make(
    rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    s: &InetSocket,
    shared: &mut Shared,
) -> StepResult {
    let at = || format!("fd {}: {}", f.fd, s.describe());
    let got = match &s.conn {
        Some(c) => established(rs, f, s, c, shared).at(at)?,
        None => build(rs, f, s).at(at)?,
    };
    super::fds::move_fd(rs, got, f).at(at)
}

/// Whether option `o` is set apart for a connection: the buffer sizes (room for the queues
/// first, the sizes the connection had once they are in) and `SO_REUSEADDR` (set once out of
/// repair mode, which resets it).
fn set_after(o: &SockOpt) -> bool {
    o.level == libc::SOL_SOCKET
        && [libc::SO_RCVBUF, libc::SO_SNDBUF, libc::SO_REUSEADDR].contains(&o.opt)
}

/// The value a restore sets for option `o` (half the reported size of a buffer).
fn value_of(o: &SockOpt) -> Vec<u8> {
    if o.level == libc::SOL_SOCKET && (o.opt == libc::SO_RCVBUF || o.opt == libc::SO_SNDBUF) {
        (o.int() / 2).to_ne_bytes().to_vec()
    } else {
        o.value.clone()
    }
}

/// An established connection, made again in repair mode (issue #15): the process makes the
/// socket (its network namespace, its credentials), haul works on its copy: options, repair
/// on, bound to the local address (repair mode allows the port of a listener), the queues'
/// sequence numbers, connected to the peer without a packet, the negotiated options and
/// timestamp, the receive queue and the sent part of the send queue, the windows. The copy
/// stays in repair mode in `shared.tcp`; the unsent part of the send queue goes out once
/// every socket of the restore has left repair mode, just before the processes run.
fn established(
    rs: &mut dyn Inject,
    f: &FdImage,
    s: &InetSocket,
    c: &TcpConn,
    shared: &mut Shared,
) -> StepResult<u64> {
    use crate::sys::tcprepair::{self as tr, Queue};
    use std::os::fd::AsFd;
    let (Some(local), Some(peer)) = (s.local, s.peer) else {
        return Err(StepError::NotYet {
            what: "an established TCP connection without its two addresses".into(),
        });
    };
    let flags = f.flags as i32 & (libc::O_NONBLOCK | libc::O_CLOEXEC);
    let fd = remote::socket(rs, s.family, libc::SOCK_STREAM, flags)?;
    let pidfd = crate::sys::process::pidfd_open(rs.pid())?;
    let copy = crate::sys::process::pidfd_getfd(&pidfd, fd as i32)?;
    let sock = copy.as_fd();
    for o in s.options.iter().filter(|o| !set_after(o)) {
        crate::sys::inetsock::set_opt(sock, o.level, o.opt, &value_of(o))?;
    }
    tr::repair_on(sock)?;
    let unsent = c.unsent.min(c.send_queue.len() as u32) as usize;
    let sent = c.send_queue.len() - unsent;
    // The buffers hold the queues while they are filled (an autotuned connection's may be
    // far beyond a fresh socket's, and beyond what SO_SNDBUF/SO_RCVBUF allow), then get the
    // sizes the connection had (a fresh socket's when none was recorded).
    let fresh = crate::sys::inetsock::fresh(s.family, true)?;
    let mut after = Vec::new();
    for (name, opt, force, queue) in [
        (
            "SO_RCVBUF",
            libc::SO_RCVBUF,
            tr::SO_RCVBUFFORCE,
            c.recv_queue.len(),
        ),
        (
            "SO_SNDBUF",
            libc::SO_SNDBUF,
            tr::SO_SNDBUFFORCE,
            c.send_queue.len(),
        ),
    ] {
        let had = match s.option(name) {
            Some(o) => o.int() / 2,
            None => crate::sys::inetsock::get_int(fresh.as_fd(), libc::SOL_SOCKET, opt)? / 2,
        };
        let room = i32::try_from(queue + queue / 2 + (256 << 10)).unwrap_or(i32::MAX / 2);
        let v = had.max(room).to_ne_bytes();
        crate::sys::inetsock::set_opt(sock, libc::SOL_SOCKET, force, &v)?;
        after.push((libc::SOL_SOCKET, force, had.to_ne_bytes().to_vec()));
    }
    if let Some(o) = s.option("SO_REUSEADDR") {
        after.push((o.level, o.opt, o.value.clone()));
    }
    // Held from here: a failed restore closes it still in repair mode.
    shared.tcp.push_restored(
        copy.try_clone().map_err(|e| SysError::Io {
            context: "dup of haul's copy".into(),
            source: e,
        })?,
        c.send_queue[sent..].to_vec(),
        after,
    );
    crate::sys::inetsock::bind(sock, &local)?;
    tr::set_queue_seq(
        sock,
        Queue::Recv,
        c.recv_seq.wrapping_sub(c.recv_queue.len() as u32),
    )?;
    // The unsent bytes are not in the send queue yet: it ends where they begin.
    tr::set_queue_seq(
        sock,
        Queue::Send,
        c.send_seq.wrapping_sub(c.send_queue.len() as u32),
    )?;
    tr::connect(sock, &peer)?;
    let n = tr::Negotiated {
        state: c.state,
        timestamps: c.timestamps,
        sack: c.sack,
        wscale: c.wscale,
        snd_wscale: c.snd_wscale,
        rcv_wscale: c.rcv_wscale,
    };
    tr::set_negotiated(sock, &n, c.mss)?;
    if c.timestamps {
        tr::set_timestamp(sock, c.timestamp)?;
    }
    tr::select_queue(sock, Queue::Recv)?;
    tr::send_all(sock, &c.recv_queue, "the receive queue")?;
    tr::select_queue(sock, Queue::Send)?;
    tr::send_all(
        sock,
        &c.send_queue[..sent],
        "the sent part of the send queue",
    )?;
    let w = &c.window;
    tr::set_window(
        sock,
        &tr::Window {
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window,
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
        },
    )?;
    Ok(fd)
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
                if s.conn.is_some() {
                    // Repair mode binds over the listener's port; the 4-tuple must be free.
                    check_four_tuple(p.pid, f.fd, s)?;
                    continue;
                }
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

/// Refuses established connection `s` of fd `fd` of `pid` when a socket here has its 4-tuple
/// already (its original still alive, or another connection that took the same ports).
fn check_four_tuple(
    pid: i32,
    fd: i32,
    s: &InetSocket,
) -> Result<(), crate::restore::tree::Refusal> {
    use crate::sys::inetdiag;
    let (Some(local), Some(peer)) = (s.local, s.peer) else {
        return Ok(());
    };
    let mut found = None;
    for fam in [libc::AF_INET, libc::AF_INET6] {
        let all = inetdiag::sockets(fam, libc::IPPROTO_TCP).map_err(|e| {
            crate::restore::tree::Refusal(format!(
                "pid {pid} fd {fd}: {}: the TCP sockets here cannot be listed: {e}",
                s.describe()
            ))
        })?;
        if let Some(d) = all.iter().find(|d| d.local == local && d.remote == peer) {
            found = Some(d.state);
            break;
        }
    }
    match found {
        None => Ok(()),
        Some(state) => Err(crate::restore::tree::Refusal(format!(
            "pid {pid} fd {fd}: {} (ESTABLISHED): a TCP socket here has this 4-tuple already \
             ({}): is the original still running?",
            s.describe(),
            inetdiag::state_name(state)
        ))),
    }
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
