//! TCP and UDP sockets: recognised (or refused by name) before the freeze, their options
//! captured under it.
//!
//! Carried: listening TCP sockets (IPv4, IPv6, dual-stack) with their backlog, and bound UDP
//! sockets (also connected to a peer), each with the options that differ from a fresh
//! socket's ([`crate::sys::inetsock::KNOWN`]). Refused by name: connected TCP sockets (with
//! their 4-tuple and state), connections waiting in a listen queue (unless the job says
//! `dump.tcp_pending = "drop"`), and options haul does not carry. Dropped with a warning:
//! the datagrams queued in a UDP socket (the network may drop them anyway).

use super::unsupported;
use crate::dump::DumpError;
use crate::image::inet::{InetSocket, SockOpt, Transport};
use crate::image::{FdImage, FdKind, ProcessImage};
use crate::job::TcpPending;
use crate::proc;
use crate::sys::inetdiag::{self, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
use crate::sys::inetsock::{self, OptUse, KNOWN};
use std::os::fd::{AsFd, OwnedFd};

/// The record of TCP or UDP socket `ino`, or its refusal; `Ok(None)` for a socket that is not
/// one the kernel lists (the caller then refuses it by its kind). Its options are read under
/// the freeze ([`capture`]).
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
        (true, state) => {
            let why = if state == TCP_ESTABLISHED {
                "established connections are not carried yet"
            } else {
                "connected TCP sockets are not carried yet"
            };
            return Err(unsupported(format!(
                "{who}: TCP {} -> {} ({}): {why}",
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
    Ok(Some(FdKind::Inet(sock)))
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
    let tcp = sock.transport == Transport::Tcp;
    let fresh = inetsock::fresh(sock.family, tcp)?;
    sock.options.clear();
    for k in KNOWN.iter().filter(|k| k.applies(sock.family, tcp)) {
        let Some(value) = inetsock::get_opt(copy.as_fd(), k.level, k.opt)? else {
            continue;
        };
        let base = inetsock::get_opt(fresh.as_fd(), k.level, k.opt)?;
        let always = k.name == "IPV6_V6ONLY";
        if base.as_ref() == Some(&value) && !always {
            continue;
        }
        if k.what == OptUse::Refuse {
            return Err(unsupported(format!(
                "pid {} fd {}: {} has {} set: this option is not carried yet",
                pid_of(pidfd),
                f.fd,
                sock.describe(),
                k.name
            )));
        }
        sock.options.push(SockOpt {
            name: k.name.to_string(),
            level: k.level,
            opt: k.opt,
            value,
        });
    }
    Ok(())
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
pub(crate) fn repair_established(
    _frozen: &mut crate::dump::tree::FrozenTree,
    _procs: &mut [ProcessImage],
) -> Result<(), DumpError> {
    Ok(())
}
