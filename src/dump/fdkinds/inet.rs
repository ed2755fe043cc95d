//! TCP and UDP sockets: recognised (or refused by name) before the freeze, their options
//! captured under it.
//!
//! Carried: listening TCP sockets (IPv4, IPv6, dual-stack) with their backlog, bound UDP
//! sockets (also connected to a peer), and established TCP connections (read in repair mode
//! under the freeze: [`repair_established`]), each with the options that differ from a fresh
//! socket's ([`crate::sys::inetsock::KNOWN`]). Refused by name: TCP sockets in any other
//! connected state (with their 4-tuple and state: SYN-SENT, FIN-WAIT-1/2, CLOSE-WAIT,
//! LAST-ACK, CLOSING), connections waiting in a listen queue (unless the job says
//! `dump.tcp_pending = "drop"`), and options haul does not carry. Dropped with a warning:
//! the datagrams queued in a UDP socket (the network may drop them anyway).

use super::unsupported;
use crate::dump::DumpError;
use crate::image::inet::{InetSocket, SockOpt, TcpConn, TcpWindow, Transport};
use crate::image::{FdImage, FdKind, ProcessImage};
use crate::job::TcpPending;
use crate::proc;
use crate::sys::inetdiag::{self, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
use crate::sys::inetsock::{self, OptUse, KNOWN};
use crate::sys::tcprepair;
use std::os::fd::{AsFd, OwnedFd};

/// The record of TCP or UDP socket `ino`, or its refusal; `Ok(None)` for a socket that is not
/// one the kernel lists (the caller then refuses it by its kind). Its options are checked here
/// (an option not carried is refused before the freeze) and recorded under it ([`capture`]).
pub(crate) fn kind(
    pid: i32,
    fd: i32,
    _target: &str,
    ino: u64,
    _info: &proc::FdInfo,
    pending: TcpPending,
) -> Result<Option<FdKind>, DumpError> {
    let Some(s) = inetdiag::inet_sock(ino)? else {
        return Ok(None);
    };
    let tcp = s.protocol == libc::IPPROTO_TCP;
    let mut sock = InetSocket {
        family: s.family,
        transport: if tcp { Transport::Tcp } else { Transport::Udp },
        local: Some(s.local),
        ..Default::default()
    };
    let who = format!("pid {pid} fd {fd}");
    match (tcp, s.state) {
        (true, TCP_LISTEN) => {
            sock.backlog = Some(s.wqueue);
            if s.rqueue > 0 {
                if pending == TcpPending::Refuse {
                    return Err(unsupported(format!(
                        "{who}: {} has {} connection{} not yet accepted: they are not carried \
                         (with dump.tcp_pending = \"drop\" or --tcp-pending drop they are \
                         dropped and their clients see a reset)",
                        sock.describe(),
                        s.rqueue,
                        if s.rqueue == 1 { "" } else { "s" }
                    )));
                }
                sock.dropped = u64::from(s.rqueue);
            }
        }
        // Bound, neither listening nor connected.
        (true, TCP_CLOSE) => {}
        // Read in repair mode under the freeze ([`repair_established`]).
        (true, TCP_ESTABLISHED) => {
            sock.peer = Some(s.remote);
            sock.conn = Some(TcpConn {
                state: TCP_ESTABLISHED,
                ..Default::default()
            });
        }
        (true, state) => {
            return Err(unsupported(format!(
                "{who}: TCP {} -> {} ({}): only established connections are carried, not \
                 connections in this state",
                s.local,
                s.remote,
                inetdiag::state_name(state)
            )));
        }
        (false, TCP_ESTABLISHED) => {
            sock.peer = Some(s.remote);
            sock.dropped = u64::from(s.rqueue);
        }
        (false, TCP_CLOSE) => sock.dropped = u64::from(s.rqueue),
        (false, state) => {
            return Err(unsupported(format!(
                "{who}: UDP {} in state {state} is not supported yet",
                s.local
            )))
        }
    }
    check_options(pid, fd, &sock)?;
    Ok(Some(FdKind::Inet(sock)))
}

/// Refuses an established connection that a process outside the tree holds too (an fd it
/// inherited or was passed): a kill-mode dump would leave that process's socket in repair
/// mode, and a restore would make the same 4-tuple twice. `pids` is the whole tree. One pass
/// over `/proc`, only when the tree has established connections.
pub(crate) fn rules<'a>(
    tables: impl Iterator<Item = (i32, &'a [FdImage])>,
    pids: &[i32],
    found: &mut crate::dump::check::Refusals,
) {
    let mut ours: std::collections::HashMap<std::ffi::OsString, (i32, i32, String)> =
        std::collections::HashMap::new();
    for (pid, fds) in tables {
        for f in fds {
            let FdKind::Inet(s) = &f.kind else { continue };
            if s.conn.is_none() {
                continue;
            }
            if let Ok(t) = std::fs::read_link(format!("/proc/{pid}/fd/{}", f.fd)) {
                ours.entry(t.into_os_string())
                    .or_insert((pid, f.fd, s.describe()));
            }
        }
    }
    if ours.is_empty() {
        return;
    }
    for other in crate::proc::pids()
        .into_iter()
        .filter(|p| !pids.contains(p))
    {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{other}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else {
                continue;
            };
            let Some((pid, fd, what)) = ours.remove(link.as_os_str()) else {
                continue;
            };
            found.add(unsupported(format!(
                "pid {pid} fd {fd}: {what} (established) is held by pid {other} fd {} too, \
                 outside the tree: its socket would be left in repair mode, and a restore would \
                 make the connection twice",
                e.file_name().to_string_lossy()
            )));
        }
    }
}

/// The pid whose pidfd is `pidfd` (its fdinfo's `Pid:` line), for messages.
fn pid_of(pidfd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pid:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// The options of the socket (those that differ from a fresh socket's of the same family
/// and transport, and `IPV6_V6ONLY` always), read under the freeze through a copy of it taken
/// with `pidfd_getfd`; refuses by name an option haul does not carry.
pub(crate) fn capture(pidfd: &OwnedFd, f: &mut FdImage) -> Result<(), DumpError> {
    let FdKind::Inet(sock) = &mut f.kind else {
        return Ok(());
    };
    let copy = crate::sys::process::pidfd_getfd(pidfd, f.fd)?;
    sock.options = read_options(pid_of(pidfd), f.fd, &copy, sock)?;
    Ok(())
}

/// Refuses, before the freeze, a socket with an option haul does not carry (so that
/// `haul dump --check` names it): the same reading as [`capture`], on a copy of the running
/// process's socket, which changes nothing. If the copy cannot be taken now, the reading
/// under the freeze refuses it.
fn check_options(pid: i32, fd: i32, sock: &InetSocket) -> Result<(), DumpError> {
    let Ok(copy) = crate::sys::process::pidfd_open(pid)
        .and_then(|pidfd| crate::sys::process::pidfd_getfd(&pidfd, fd))
    else {
        return Ok(());
    };
    read_options(pid, fd, &copy, sock).map(|_| ())
}

/// The options of `sock` (fd `fd` of `pid`, read through haul's copy `copy`) that differ
/// from a fresh socket's of the same family and transport, and `IPV6_V6ONLY` always; refuses
/// by name an option haul does not carry.
fn read_options(
    pid: i32,
    fd: i32,
    copy: &OwnedFd,
    sock: &InetSocket,
) -> Result<Vec<SockOpt>, DumpError> {
    let tcp = sock.transport == Transport::Tcp;
    let fresh = inetsock::fresh(sock.family, tcp)?;
    let mut options = Vec::new();
    for k in KNOWN.iter().filter(|k| k.applies(sock.family, tcp)) {
        let Some(value) = inetsock::get_opt(copy.as_fd(), k.level, k.opt)? else {
            continue;
        };
        let base = inetsock::get_opt(fresh.as_fd(), k.level, k.opt)?;
        // An established connection's MSS is what the handshake set (carried by repair
        // mode), not an option the process chose.
        if sock.conn.is_some() && k.name == "TCP_MAXSEG" {
            continue;
        }
        // Multicast options mean nothing to TCP (the kernel refuses to set them on a stream
        // socket): a connected socket reads them from its route, not from the process.
        if tcp && k.name.contains("MULTICAST") {
            continue;
        }
        let always = k.name == "IPV6_V6ONLY";
        if base.as_ref() == Some(&value) && !always {
            continue;
        }
        if k.what == OptUse::Refuse {
            return Err(unsupported(format!(
                "pid {pid} fd {fd}: {} has {} set: this option is not carried yet",
                sock.describe(),
                k.name
            )));
        }
        options.push(SockOpt {
            name: k.name.to_string(),
            level: k.level,
            opt: k.opt,
            value,
        });
    }
    Ok(options)
}

/// What the dump of `p` dropped from its TCP and UDP sockets, one warning each.
pub(crate) fn warnings(p: &ProcessImage) -> Vec<String> {
    let mut out = Vec::new();
    for f in &p.fds {
        let FdKind::Inet(s) = &f.kind else { continue };
        if s.dropped == 0 {
            continue;
        }
        let what = match (s.transport, s.backlog) {
            (Transport::Tcp, _) => format!(
                "{} connection{} not yet accepted {} dropped (their clients see a reset)",
                s.dropped,
                if s.dropped == 1 { "" } else { "s" },
                if s.dropped == 1 { "was" } else { "were" }
            ),
            (Transport::Udp, _) => format!(
                "the datagrams queued in it ({} bytes of receive buffer) were dropped",
                s.dropped
            ),
        };
        out.push(format!(
            "pid {} fd {}: {}: {what}",
            p.pid,
            f.fd,
            s.describe()
        ));
    }
    out
}

/// Reads every established TCP connection of the frozen tree in repair mode (issue #15): each
/// socket's copy stays in repair mode in `frozen.repair` until the tree is thawed or killed.
/// A socket shared by several fds or processes of the tree is read once (at the fd that is
/// neither `same_as` nor `inherited`). On any error the copies switched so far are in
/// `frozen.repair`, whose drop (or the thaw) turns repair off again.
pub(crate) fn repair_established(
    frozen: &mut crate::dump::tree::FrozenTree,
    procs: &mut [ProcessImage],
) -> Result<(), DumpError> {
    for p in procs.iter_mut() {
        let mut pidfd = None;
        for f in p
            .fds
            .iter_mut()
            .filter(|f| f.same_as.is_none() && f.inherited.is_none())
        {
            let FdKind::Inet(sock) = &mut f.kind else {
                continue;
            };
            if sock.conn.is_none() {
                continue;
            }
            if pidfd.is_none() {
                pidfd = Some(crate::sys::process::pidfd_open(p.pid)?);
            }
            let Some(pidfd) = &pidfd else { continue };
            let who = format!("pid {} fd {}: {}", p.pid, f.fd, sock.describe());
            let copy = crate::sys::process::pidfd_getfd(pidfd, f.fd).map_err(|e| at(&who, e))?;
            tcprepair::repair_on(copy.as_fd()).map_err(|e| at(&who, e))?;
            let fd = copy.try_clone().map_err(|e| DumpError::Io {
                context: format!("{who}: dup of haul's copy"),
                source: e,
            });
            // Held (and so switched off again on any error) before anything is read.
            frozen.repair.push(copy);
            let fd = fd?;
            sock.conn = Some(read_conn(fd.as_fd()).map_err(|e| at(&who, e))?);
        }
    }
    Ok(())
}

/// `e` with the socket it happened on (pid, fd, 4-tuple) in front of its context.
fn at(who: &str, e: crate::sys::SysError) -> DumpError {
    use crate::sys::SysError;
    DumpError::Sys(match e {
        SysError::Io { context, source } => SysError::Io {
            context: format!("{who}: {context}"),
            source,
        },
        SysError::Invalid(m) => SysError::Invalid(format!("{who}: {m}")),
        other => other,
    })
}

/// Everything a restore needs of the established connection `fd` (in repair mode).
fn read_conn(fd: std::os::fd::BorrowedFd<'_>) -> Result<TcpConn, crate::sys::SysError> {
    use tcprepair::Queue;
    let n = tcprepair::negotiated(fd)?;
    if n.state != TCP_ESTABLISHED {
        return Err(crate::sys::SysError::Invalid(format!(
            "the connection left ESTABLISHED ({}) while it was read",
            inetdiag::state_name(n.state)
        )));
    }
    let outq = tcprepair::outq(fd)?;
    let unsent = tcprepair::outq_unsent(fd)?;
    let inq = tcprepair::inq(fd)?;
    let mss = tcprepair::mss_clamp(fd)?;
    let timestamp = if n.timestamps {
        tcprepair::timestamp(fd)?
    } else {
        0
    };
    let w = tcprepair::window(fd)?;
    let recv_seq = tcprepair::queue_seq(fd, Queue::Recv)?;
    let recv_queue = tcprepair::peek_queue(fd, Queue::Recv, inq)?;
    let send_seq = tcprepair::queue_seq(fd, Queue::Send)?;
    let send_queue = tcprepair::peek_queue(fd, Queue::Send, outq)?;
    Ok(TcpConn {
        state: n.state,
        send_seq,
        recv_seq,
        send_queue,
        unsent: unsent.min(outq),
        recv_queue,
        mss,
        wscale: n.wscale,
        snd_wscale: n.snd_wscale,
        rcv_wscale: n.rcv_wscale,
        sack: n.sack,
        timestamps: n.timestamps,
        timestamp,
        window: TcpWindow {
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window,
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
        },
    })
}
