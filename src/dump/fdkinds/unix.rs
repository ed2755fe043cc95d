//! Unix sockets: recognised (or refused by name) before the freeze, their state captured
//! under it.
//!
//! An unbound socket connected to an unbound peer is one end of a socket pair
//! ([`FdKind::UnixPair`]); every other stream, datagram or seqpacket socket is a
//! [`FdKind::Unix`]: bound to a path or an abstract name, listening (with its backlog),
//! accepted, or connected to a socket the checkpoint holds too (checked over the whole tree
//! by [`rules`]). Refused by name: connections waiting in a listener's queue, fds in flight
//! (`SCM_RIGHTS`), a peer outside the tree, a path bound relative to a directory, a
//! listener or datagram socket whose path was unlinked, a bound or seqpacket connection whose
//! peer is closed (an unbound stream is carried: [`UnixSocket::peer_closed`]).

use super::unsupported;
use crate::dump::DumpError;
use crate::image::unix::{Message, SockOpts, SocketFile, UnixSocket};
use crate::image::{FdImage, FdKind};
use crate::sys::sockdiag::{unix_sock, UnixSock};
use crate::sys::socket::{self, show_name};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// `TCP_ESTABLISHED` (include/net/tcp_states.h, which libc lacks).
const ESTABLISHED: u8 = 1;

/// What a unix socket is, in words: `a stream socket listening on /run/x`, `a datagram
/// socket bound to @name`, `an unbound stream socket`, and `, connected to socket:[N]`.
pub(crate) fn describe(u: &UnixSocket) -> String {
    let ty = match u.sock_type {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unknown",
    };
    let name = u.name.as_deref().map(show_name).unwrap_or_default();
    let mut d = if u.listening {
        format!("a {ty} socket listening on {name}")
    } else if u.accepted {
        format!("a {ty} socket accepted on {name}")
    } else if u.name.is_some() {
        format!("a {ty} socket bound to {name}")
    } else {
        format!("an unbound {ty} socket")
    };
    if u.peer != 0 {
        d += &format!(", connected to socket:[{}]", u.peer);
    } else if u.peer_closed {
        d += ", connected to a peer that is closed";
    }
    d
}

/// The refusal of fds in flight in the queue of socket `ino` (fd `fd` of `pid`).
fn in_flight(pid: i32, fd: i32, ino: u64, what: &str) -> DumpError {
    unsupported(format!(
        "pid {pid} fd {fd}: socket:[{ino}] (UNIX, {what}) has fds in flight in its queue \
         (SCM_RIGHTS): this is not supported yet"
    ))
}

/// The record of unix socket `ino`, or the refusal of one that cannot be carried; `Ok(None)`
/// for a socket that is not a unix one. Whether its peer is held in the tree is checked over
/// the whole tree ([`rules`]); what waits in it is read under the freeze ([`capture`]), but
/// fds in flight in a stream are looked for here too (so `haul dump --check` names them)
/// when the process does not use a peek offset (reading the queue moves it for a moment).
pub(crate) fn kind(pid: i32, fd: i32, target: &str, ino: u64) -> Result<Option<FdKind>, DumpError> {
    let Some(s) = unix_sock(ino)? else {
        return Ok(None);
    };
    let no = |why: String| {
        Err(unsupported(format!(
            "pid {pid} fd {fd}: {target} (UNIX, {why}) is not supported yet"
        )))
    };
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&s.sock_type) {
        return no(format!("socket type {}", s.sock_type));
    }
    let peer = if s.peer != 0 {
        match unix_sock(s.peer)? {
            Some(p) => Some(p),
            None => return no(format!("its peer socket:[{}] is gone", s.peer)),
        }
    } else {
        None
    };
    if s.name.is_none() && !s.is_listening() {
        if let Some(p) = peer.as_ref().filter(|p| p.name.is_none()) {
            // Unbound, connected to an unbound peer: a socket pair.
            if s.shutdown != 0 {
                return no("a socket pair, shut down".into());
            }
            if in_flight_now(pid, fd, &s)? {
                return Err(in_flight(pid, fd, ino, "a socket pair"));
            }
            let _ = p;
            return Ok(Some(FdKind::UnixPair {
                ino,
                peer: s.peer,
                sock_type: s.sock_type,
                queued: Vec::new(),
                opts: SockOpts::default(),
            }));
        }
    }
    let u = match record(&s, peer.as_ref()) {
        Ok(u) => u,
        Err(NotCarried(why)) => return no(why),
    };
    if !u.listening && in_flight_now(pid, fd, &s)? {
        return Err(in_flight(pid, fd, ino, &describe(&u)));
    }
    Ok(Some(FdKind::Unix(u)))
}

/// Why a unix socket cannot be carried (the end of its refusal).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotCarried(String);

/// The image record of `s` (connected to `peer`), or why it cannot be carried.
fn record(s: &UnixSock, peer: Option<&UnixSock>) -> Result<UnixSocket, NotCarried> {
    let mut u = UnixSocket {
        ino: s.ino,
        sock_type: s.sock_type,
        name: s.name.clone(),
        listening: s.is_listening(),
        peer: s.peer,
        peer_name: peer.and_then(|p| p.name.clone()),
        shutdown: s.shutdown,
        ..Default::default()
    };
    let name = s.name.as_deref().map(show_name).unwrap_or_default();
    let stream = s.sock_type != libc::SOCK_DGRAM;
    if u.listening {
        if s.rqueue > 0 {
            return Err(NotCarried(format!(
                "listening on {name}, with {} connections waiting to be accepted",
                s.rqueue
            )));
        }
        u.backlog = s.wqueue;
    } else if stream && s.peer == 0 && s.state == ESTABLISHED {
        // (A seqpacket's end of file reads as an empty record: its queue cannot be told.)
        if s.name.is_some() || s.sock_type != libc::SOCK_STREAM {
            return Err(NotCarried(format!(
                "{}, connected to a peer that is closed",
                describe(&u)
            )));
        }
        // An unbound stream (one end of a pair, or a client, whose peer went away): what it
        // still holds to read comes back in a pair whose other end is closed.
        u.peer_closed = true;
    }
    let Some(n) = s.name.as_deref() else {
        return Ok(u);
    };
    if n.first() != Some(&0) && n.first() != Some(&b'/') {
        return Err(NotCarried(format!("bound to the relative path {name}")));
    }
    if stream && s.peer != 0 && !u.listening {
        // A connected socket with a name: accepted on a listener of that name (it shows
        // the listener's name, and its socket file), its client unbound.
        if peer.is_some_and(|p| p.name.is_some()) {
            return Err(NotCarried(format!(
                "{}, whose peer is bound too: a connecting socket bound to a name of its own",
                describe(&u)
            )));
        }
        u.accepted = true;
        return Ok(u);
    }
    if n.first() == Some(&0) {
        return Ok(u);
    }
    let path =
        std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(n));
    match (s.vfs, std::fs::symlink_metadata(path)) {
        (Some((vino, vdev)), Ok(m)) if m.ino() == vino && m.dev() == vdev => {
            u.file = Some(SocketFile {
                dev: vdev,
                ino: vino,
                uid: m.uid(),
                gid: m.gid(),
                mode: m.mode() & 0o7777,
            });
        }
        _ => {
            return Err(NotCarried(format!(
                "{}, whose socket file was unlinked or replaced since",
                describe(&u)
            )))
        }
    }
    Ok(u)
}

/// Whether fds wait in flight in the queue of `s` (fd `fd` of `pid`), read through a copy
/// of the fd; not looked at (false) when the process uses a peek offset of its own.
///
/// Only a stream is looked at: a peek at an offset marks an empty datagram or record as
/// peeked, and later peeks at an offset (the capture's) skip it. Datagrams and records are
/// looked at once, by [`capture`] under the freeze.
fn in_flight_now(pid: i32, fd: i32, s: &UnixSock) -> Result<bool, DumpError> {
    if s.rqueue == 0 || s.sock_type != libc::SOCK_STREAM {
        return Ok(false);
    }
    let pidfd = crate::sys::process::pidfd_open(pid)?;
    let sock = crate::sys::process::pidfd_getfd(&pidfd, fd)?;
    if socket::sockopt_int(sock.as_fd(), libc::SO_PEEK_OFF)? != -1 {
        return Ok(false);
    }
    Ok(socket::peek_queue(sock.as_fd(), s.sock_type == libc::SOCK_STREAM)?.fds_in_flight)
}

/// The options of socket `sock` that a restore sets again.
pub(crate) fn opts(sock: &OwnedFd) -> Result<SockOpts, DumpError> {
    let get = |o| socket::sockopt_int(sock.as_fd(), o);
    Ok(SockOpts {
        passcred: get(libc::SO_PASSCRED)? != 0,
        sndbuf: get(libc::SO_SNDBUF)?,
        rcvbuf: get(libc::SO_RCVBUF)?,
        peek_off: get(libc::SO_PEEK_OFF)?,
    })
}

/// The pid a pidfd stands for (`Pid:` in its fdinfo), for messages.
fn pid_of(pidfd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pid:").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

/// What only the socket itself tells (its options, what waits in its queue), read under
/// the freeze through `pidfd`, a pidfd of its process.
pub(crate) fn capture(pidfd: &OwnedFd, f: &mut FdImage) -> Result<(), DumpError> {
    let FdKind::Unix(u) = &mut f.kind else {
        return Ok(());
    };
    let sock = crate::sys::process::pidfd_getfd(pidfd, f.fd)?;
    u.opts = opts(&sock)?;
    if u.listening {
        return Ok(());
    }
    let q = socket::peek_queue(sock.as_fd(), u.sock_type == libc::SOCK_STREAM)?;
    if q.fds_in_flight {
        return Err(in_flight(pid_of(pidfd), f.fd, u.ino, &describe(u)));
    }
    let mut from = q.senders.into_iter();
    u.queued = q
        .messages
        .into_iter()
        .map(|data| Message {
            data,
            from: from.next().flatten(),
        })
        .collect();
    if u.sock_type == libc::SOCK_DGRAM && u.name.is_none() && !u.queued.is_empty() {
        return Err(unsupported(format!(
            "pid {} fd {}: socket:[{}] (UNIX, {}) has datagrams queued, but no name to send \
             them to again: this is not supported yet",
            pid_of(pidfd),
            f.fd,
            u.ino,
            describe(u)
        )));
    }
    Ok(())
}

/// Notes in `found` every unix socket of the tree (`tables`: pid and fds of each process
/// that has an fd table of its own) connected to a socket no process of the tree holds,
/// naming who outside holds it when a process does.
pub(crate) fn rules<'a>(
    tables: impl Iterator<Item = (i32, &'a [FdImage])> + Clone,
    found: &mut crate::dump::check::Refusals,
) {
    let mut inos = std::collections::HashSet::new();
    let mut pids = Vec::new();
    for (pid, fds) in tables.clone() {
        pids.push(pid);
        for f in fds {
            match &f.kind {
                FdKind::Unix(u) => {
                    inos.insert(u.ino);
                }
                FdKind::UnixPair { ino, .. } => {
                    inos.insert(*ino);
                }
                _ => {}
            }
        }
    }
    let n = pids.len();
    let outside = if n == 1 {
        "another process".to_string()
    } else {
        format!("another process, outside the tree of {n} processes")
    };
    for (pid, fds) in tables {
        for f in fds {
            let FdKind::Unix(u) = &f.kind else { continue };
            let target = format!("socket:[{}]", u.peer);
            // (A peer a process of the tree holds but that is refused for a reason of its
            // own is not outside.)
            if u.peer == 0 || inos.contains(&u.peer) || held_by(&target, &pids) {
                continue;
            }
            // A datagram socket sends to a name: connected again to it ([`mark_external`]).
            if external(u) {
                continue;
            }
            let by = crate::proc::fd_holder(&target, &pids)
                .map(|(p, fd)| format!(", but by pid {p} fd {fd}"))
                .unwrap_or_default();
            found.add(unsupported(format!(
                "pid {pid} fd {}: socket:[{}] (UNIX, {}) leads to {outside}: its peer \
                 socket:[{}]{} is held by no process of the tree{by}",
                f.fd,
                u.ino,
                describe(u),
                u.peer,
                u.peer_name
                    .as_deref()
                    .map(|n| format!(" (bound to {})", show_name(n)))
                    .unwrap_or_default()
            )));
        }
    }
}

/// Whether `u`, whose peer no process of the tree holds, can be connected again by name: a
/// datagram socket connected to a bound socket (a logging socket such as `/dev/log`). The
/// peer keeps nothing of the connection: what `u` sent is in the peer's queue already, and
/// a restore connects to the same name.
fn external(u: &UnixSocket) -> bool {
    u.sock_type == libc::SOCK_DGRAM && u.peer_name.is_some()
}

/// Marks the datagram sockets of the tree connected to a socket outside it (see
/// [`external`]): their restore connects them to the peer's name.
pub(crate) fn mark_external(procs: &mut [crate::image::ProcessImage]) {
    let inos: std::collections::HashSet<u64> = procs
        .iter()
        .flat_map(|p| p.fds.iter())
        .filter_map(|f| match &f.kind {
            FdKind::Unix(u) => Some(u.ino),
            FdKind::UnixPair { ino, .. } => Some(*ino),
            _ => None,
        })
        .collect();
    for f in procs.iter_mut().flat_map(|p| p.fds.iter_mut()) {
        if let FdKind::Unix(u) = &mut f.kind {
            if u.peer != 0 && !inos.contains(&u.peer) && external(u) {
                u.external_peer = true;
            }
        }
    }
}

/// Whether one of `pids` has an fd whose link is `target`.
fn held_by(target: &str, pids: &[i32]) -> bool {
    pids.iter().any(|p| {
        std::fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == target))
        })
    })
}
