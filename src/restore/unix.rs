//! Restoring unix sockets that are not unbound pairs: bound, listening, connected.
//!
//! Each socket is made by injected calls in the process that holds it (`socket`, `bind`,
//! `listen`, `connect`: what the kernel records of the caller, the credentials a listener
//! or a connecting socket hands its peer, is the process's), then haul works on its own
//! copy of it (`pidfd_getfd`): options, what waited in it, shutdown.
//!
//! - A listener is bound again (a path's stale socket file, left when the dumped socket
//!   died, is unlinked first: `check_compat` made sure it is that one) and listens with its
//!   backlog; the file gets its owner and mode back.
//! - A connection (stream or seqpacket) is made at its first end in tree order: the client
//!   connects to its listener (the real one if made already, else a listener bound to the
//!   same name for the moment) and haul accepts; each end then gets its own queue sent
//!   from the other. The other end waits in [`UnixTable`] for its holder.
//! - A connection whose peer was closed is one end of a new socket pair, the other end
//!   closed once what waited is sent.
//! - A datagram socket is bound again and each queued datagram sent to it from its sender's
//!   name (the sender's new socket if it is made, else a socket haul binds to that name
//!   for the moment), then connected to its peer once the peer is bound.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;

use super::error::{At, StepError, StepResult};
use super::fds::{cloexec, move_fd};
use super::share::Shared;
use super::tree::Refusal;
use crate::image::unix::{SockOpts, SocketFile, UnixSocket};
use crate::image::{FdImage, FdKind, ImageSet, ProcessImage};
use crate::sys::remote::{self, Inject};
use crate::sys::socket::{self, show_name};
use crate::sys::{process, SysError};

/// haul's copies of the unix sockets made so far in a restore, by their inode in the image.
#[derive(Default)]
pub(crate) struct UnixTable {
    made: HashMap<u64, OwnedFd>,
    /// Made with their peer, for a later fd to take.
    waiting: HashSet<u64>,
    /// Listeners and bound sockets by name (inode).
    listeners: HashMap<Vec<u8>, u64>,
    bound: HashMap<Vec<u8>, u64>,
    /// Datagram sockets to connect once their peer (the key) is bound: (inode, peer name).
    connect_later: HashMap<u64, Vec<(u64, Vec<u8>)>>,
}

fn sys_err(context: String, source: std::io::Error) -> SysError {
    SysError::Io { context, source }
}

/// haul's copy of fd `fd` of the process being built.
fn take(rs: &dyn Inject, fd: u64) -> crate::sys::Result<OwnedFd> {
    let pidfd = process::pidfd_open(rs.pid())?;
    process::pidfd_getfd(&pidfd, fd as i32)
}

/// Makes unix socket `f` again at its number (bound, listening or connected as the image says).
pub(super) fn make(
    rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    s: &UnixSocket,
    shared: &mut Shared,
) -> StepResult {
    let t = &mut shared.unix;
    let at = || format!("fd {}: socket:[{}]", f.fd, s.ino);
    if t.waiting.remove(&s.ino) {
        // Made with its peer by an earlier fd: haul kept it.
        if let Some(copy) = t.made.get(&s.ino) {
            remote::install_fd(rs, copy.as_fd(), f.fd as u64, cloexec(f)).at(at)?;
        }
        remote::set_status_flags(rs, f.fd as u64, f.flags).at(at)?;
        return finish(t, s).at(at);
    }
    let stream = s.sock_type != libc::SOCK_DGRAM;
    if s.listening {
        make_listener(rs, f, s, t).at(at)
    } else if stream && s.peer != 0 {
        make_connection(rs, f, s, t).at(at)
    } else if stream && s.peer_closed {
        make_orphan(rs, f, s, t).at(at)
    } else {
        make_bound(rs, f, s, t).at(at)
    }
}

/// Binds socket `fd` of the process to `name`: a path's stale socket file is unlinked first
/// (a file of any other kind was refused by [`check_names`]), and the new file gets the
/// dumped owner and mode (`file`).
fn bind_name(rs: &mut dyn Inject, fd: u64, name: &[u8], file: Option<&SocketFile>) -> StepResult {
    let path = as_path(name);
    if let Some(path) = path {
        clear_path(path)?;
    }
    remote::bind_unix(rs, fd, name)?;
    if let (Some(path), Some(file)) = (path, file) {
        std::os::unix::fs::chown(path, Some(file.uid), Some(file.gid))
            .map_err(|e| sys_err(format!("chown of {}", path.display()), e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| sys_err(format!("chmod of {}", path.display()), e))?;
    }
    Ok(())
}

/// The path of a path name (None for an abstract one).
fn as_path(name: &[u8]) -> Option<&std::path::Path> {
    (name.first() != Some(&0)).then(|| {
        std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name))
    })
}

/// Unlinks the socket file at `path`, if one is there.
fn clear_path(path: &std::path::Path) -> StepResult {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| sys_err(format!("unlink of {}", path.display()), e).into()),
        _ => Ok(()),
    }
}

/// A listener: bound, listening with its backlog, its options.
fn make_listener(
    rs: &mut dyn Inject,
    f: &FdImage,
    s: &UnixSocket,
    t: &mut UnixTable,
) -> StepResult {
    let fd = remote::unix_socket(rs, s.sock_type)?;
    if let Some(n) = &s.name {
        bind_name(rs, fd, n, s.file.as_ref())?;
    }
    remote::listen(rs, fd, s.backlog)?;
    let copy = take(rs, fd)?;
    place(rs, fd, f)?;
    t.made.insert(s.ino, copy);
    if let Some(n) = &s.name {
        t.listeners.insert(n.clone(), s.ino);
        t.bound.insert(n.clone(), s.ino);
    }
    finish(t, s)
}

/// Moves new socket `fd` to `f`'s number with `f`'s close-on-exec and status flags.
fn place(rs: &mut dyn Inject, fd: u64, f: &FdImage) -> StepResult {
    move_fd(rs, fd, f)?;
    remote::set_cloexec(rs, f.fd as u64, cloexec(f))?;
    remote::set_status_flags(rs, f.fd as u64, f.flags)?;
    Ok(())
}

/// A stream or seqpacket connection, made at its first end `s`: the client connects (in the
/// process) to the listener's name, haul accepts, and the other end waits for its holder.
fn make_connection(
    rs: &mut dyn Inject,
    f: &FdImage,
    s: &UnixSocket,
    t: &mut UnixTable,
) -> StepResult {
    let name = if s.accepted { &s.name } else { &s.peer_name };
    let Some(name) = name.clone() else {
        return Err(StepError::NotYet {
            what: "a connection to no name".into(),
        });
    };
    let client = remote::unix_socket(rs, s.sock_type)?;
    let (listener, temp) = match t.listeners.get(&name).and_then(|i| t.made.get(i)) {
        Some(l) => (l.try_clone().map_err(|e| sys_err("dup".into(), e))?, None),
        None => {
            // The listener is made later, or was closed: one bound to its name for now.
            let l = remote::unix_socket(rs, s.sock_type)?;
            bind_name(rs, l, &name, None)?;
            remote::listen(rs, l, 1)?;
            (take(rs, l)?, Some(l))
        }
    };
    remote::connect_unix(rs, client, &name)?;
    let accepted = socket::accept(listener.as_fd())?;
    if let Some(l) = temp {
        remote::close(rs, l)?;
        if let Some(path) = as_path(&name) {
            clear_path(path)?;
        }
    }
    let client_copy = take(rs, client)?;
    if s.accepted {
        remote::close(rs, client)?;
        remote::install_fd(rs, accepted.as_fd(), f.fd as u64, cloexec(f))?;
        remote::set_status_flags(rs, f.fd as u64, f.flags)?;
        t.made.insert(s.ino, accepted);
        t.made.insert(s.peer, client_copy);
    } else {
        place(rs, client, f)?;
        t.made.insert(s.ino, client_copy);
        t.made.insert(s.peer, accepted);
    }
    t.waiting.insert(s.peer);
    finish(t, s)
}

/// A connection whose peer was closed: a socket pair in the process, what waited in `s` sent
/// from the other end, which is then closed (its release shuts `s` down both ways, as the
/// dumped peer's did).
fn make_orphan(rs: &mut dyn Inject, f: &FdImage, s: &UnixSocket, t: &mut UnixTable) -> StepResult {
    let (mine, other) = remote::socketpair(rs, s.sock_type, 0)?;
    let copy = take(rs, mine)?;
    let peer = take(rs, other)?;
    remote::close(rs, other)?;
    set_buffers(copy.as_fd(), &s.opts)?;
    for m in &s.queued {
        socket::send_all(peer.as_fd(), &m.data, s.sock_type == libc::SOCK_STREAM)?;
    }
    drop(peer);
    place(rs, mine, f)?;
    t.made.insert(s.ino, copy);
    finish_opts(t, s)
}

/// A datagram socket, or a stream or seqpacket one neither listening nor connected: bound
/// to its name, its queued datagrams sent to it from their senders' names, connected to
/// its peer (now or once the peer is bound).
fn make_bound(rs: &mut dyn Inject, f: &FdImage, s: &UnixSocket, t: &mut UnixTable) -> StepResult {
    let fd = remote::unix_socket(rs, s.sock_type)?;
    if let Some(n) = &s.name {
        bind_name(rs, fd, n, s.file.as_ref())?;
    }
    let copy = take(rs, fd)?;
    place(rs, fd, f)?;
    set_buffers(copy.as_fd(), &s.opts)?;
    if let Some(to) = &s.name {
        for m in &s.queued {
            send_from(t, m.from.as_deref(), to, &m.data)?;
        }
    }
    if let Some(n) = &s.name {
        t.bound.insert(n.clone(), s.ino);
    }
    if let Some(pn) = s.peer_name.as_ref().filter(|_| s.peer != 0) {
        match t.made.get(&s.peer) {
            // Outside the checkpoint: connected to its name again (checked by `check_names`).
            _ if s.external_peer => socket::connect(copy.as_fd(), pn)?,
            Some(_) => socket::connect(copy.as_fd(), pn)?,
            None => t
                .connect_later
                .entry(s.peer)
                .or_default()
                .push((s.ino, pn.clone())),
        }
    }
    t.made.insert(s.ino, copy);
    for (ino, name) in t.connect_later.remove(&s.ino).unwrap_or_default() {
        if let Some(c) = t.made.get(&ino) {
            socket::connect(c.as_fd(), &name)?;
        }
    }
    finish_opts(t, s)
}

/// Sends a queued datagram `data` to `to` from the name `from`: from the socket bound to it
/// if it is made, else from a socket haul binds to it for the moment (unbound: haul's own).
fn send_from(t: &UnixTable, from: Option<&[u8]>, to: &[u8], data: &[u8]) -> StepResult {
    if let Some(s) = from
        .and_then(|n| t.bound.get(n))
        .and_then(|i| t.made.get(i))
    {
        return Ok(socket::send_to(s.as_fd(), data, to)?);
    }
    let tmp = socket::unix_socket(libc::SOCK_DGRAM)?;
    let path = from.and_then(as_path);
    if let Some(n) = from {
        if let Some(path) = path {
            clear_path(path)?;
        }
        socket::bind(tmp.as_fd(), n)?;
    }
    let sent = socket::send_to(tmp.as_fd(), data, to);
    drop(tmp);
    if let Some(path) = path {
        clear_path(path)?;
    }
    Ok(sent?)
}

/// The rest of socket `s` once it is at its number: its options, what waits in it (sent by
/// its peer), its shutdown.
fn finish(t: &UnixTable, s: &UnixSocket) -> StepResult {
    let Some(me) = t.made.get(&s.ino) else {
        return Ok(());
    };
    set_buffers(me.as_fd(), &s.opts)?;
    if let Some(peer) = t.made.get(&s.peer).filter(|_| s.peer != 0) {
        let stream = s.sock_type == libc::SOCK_STREAM;
        for m in &s.queued {
            socket::send_all(peer.as_fd(), &m.data, stream)?;
        }
    }
    finish_opts(t, s)
}

/// The peek offset and shutdown of `s` (after its queue is filled). A connected socket
/// shuts down only its receiving side: its peer does the same, which shuts the sending one.
fn finish_opts(t: &UnixTable, s: &UnixSocket) -> StepResult {
    let Some(me) = t.made.get(&s.ino) else {
        return Ok(());
    };
    set_peek_off(me.as_fd(), &s.opts)?;
    // (A datagram socket's shutdown stays its own.)
    let bits = if s.peer != 0 && s.sock_type != libc::SOCK_DGRAM {
        s.shutdown & 1
    } else {
        s.shutdown & 3
    };
    let how = match bits {
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        3 => libc::SHUT_RDWR,
        _ => return Ok(()),
    };
    Ok(socket::shutdown(me.as_fd(), how)?)
}

/// Sets `SO_PASSCRED`, `SO_SNDBUF` and `SO_RCVBUF` of `fd` as `o` says (nothing for an
/// image that did not read them). The kernel doubles a buffer size set: half of what was
/// read is set, and what it reads back must be what was read (else `SO_*BUFFORCE`, past
/// the host's `net.core.*mem_max`).
pub(super) fn set_buffers(fd: BorrowedFd<'_>, o: &SockOpts) -> StepResult {
    if o.is_unset() {
        return Ok(());
    }
    let pc = i32::from(o.passcred);
    if socket::sockopt_int(fd, libc::SO_PASSCRED)? != pc {
        socket::set_sockopt_int(fd, libc::SO_PASSCRED, pc)?;
    }
    for (opt, force, want, what) in [
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, o.sndbuf, "SO_SNDBUF"),
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, o.rcvbuf, "SO_RCVBUF"),
    ] {
        if want <= 0 || socket::sockopt_int(fd, opt)? == want {
            continue;
        }
        socket::set_sockopt_int(fd, opt, want / 2)?;
        if socket::sockopt_int(fd, opt)? != want {
            socket::set_sockopt_int(fd, force, want / 2)?;
        }
        let got = socket::sockopt_int(fd, opt)?;
        if got != want {
            return Err(SysError::Invalid(format!(
                "{what} reads {got} after setting {}, not the {want} dumped",
                want / 2
            ))
            .into());
        }
    }
    Ok(())
}

/// Sets `SO_PEEK_OFF` of `fd` as `o` says, after its queue is filled.
pub(super) fn set_peek_off(fd: BorrowedFd<'_>, o: &SockOpts) -> StepResult {
    if o.is_unset() || socket::sockopt_int(fd, libc::SO_PEEK_OFF)? == o.peek_off {
        return Ok(());
    }
    Ok(socket::set_sockopt_int(fd, libc::SO_PEEK_OFF, o.peek_off)?)
}

/// The options of socket pair end `fd` of the process (restored, its queue filled).
pub(super) fn pair_opts(rs: &dyn Inject, fd: u64, o: &SockOpts) -> StepResult {
    if o.is_unset() {
        return Ok(());
    }
    let copy = take(rs, fd)?;
    set_buffers(copy.as_fd(), o)?;
    set_peek_off(copy.as_fd(), o)
}

/// Whether every name the set's unix sockets bind can be bound here: a path must be free
/// or hold a socket file nobody listens on (the dumped one, left when it died, or one
/// `connect` is refused on), and its directory must exist; an abstract name must be free.
pub(super) fn check_names(set: &ImageSet) -> Result<(), Refusal> {
    let mut seen = HashSet::new();
    for (_, p) in set.processes() {
        for f in p
            .fds
            .iter()
            .filter(|f| f.same_as.is_none() && f.inherited.is_none())
        {
            let FdKind::Unix(u) = &f.kind else { continue };
            if let Some(peer) = u.peer_name.as_ref().filter(|_| u.external_peer) {
                check_external(peer).map_err(|why| {
                    Refusal(format!(
                        "pid {} fd {} (socket:[{}]) is connected to {}, outside the \
                         checkpoint: {why}",
                        p.pid,
                        f.fd,
                        u.ino,
                        show_name(peer)
                    ))
                })?;
            }
            let Some(name) = u.name.as_ref() else {
                continue;
            };
            if !seen.insert(name.clone()) {
                continue;
            }
            let who = format!("pid {} fd {} (socket:[{}])", p.pid, f.fd, u.ino);
            check_name(name, u.sock_type, u.file.as_ref())
                .map_err(|why| Refusal(format!("{who} binds {}: {why}", show_name(name))))?;
        }
    }
    Ok(())
}

/// Why a datagram socket cannot be connected to `name` here (nothing bound to it), if it
/// cannot: a trial connect of a socket of haul's own, which sends nothing.
fn check_external(name: &[u8]) -> Result<(), crate::restore::tree::Refusal> {
    let s = socket::unix_socket(libc::SOCK_DGRAM)
        .map_err(|e| crate::restore::tree::Refusal(e.to_string()))?;
    socket::connect(s.as_fd(), name).map_err(|e| {
        crate::restore::tree::Refusal(format!("no datagram socket is bound there here ({e})"))
    })
}

/// Why `name` cannot be bound here by a socket of `sock_type`, if it cannot.
fn check_name(
    name: &[u8],
    sock_type: i32,
    file: Option<&SocketFile>,
) -> Result<(), crate::restore::tree::Refusal> {
    let Some(path) = as_path(name) else {
        let s = socket::unix_socket(sock_type)
            .map_err(|e| crate::restore::tree::Refusal(e.to_string()))?;
        return match socket::bind(s.as_fd(), name) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Some(libc::EADDRINUSE) => Err(
                "the abstract name is taken on this host (is the original still running?)".into(),
            ),
            Err(e) => Err(crate::restore::tree::Refusal(e.to_string())),
        };
    };
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(std::path::Path::new("/"));
            return match dir.is_dir() {
                true => Ok(()),
                false => Err(crate::restore::tree::Refusal(format!(
                    "its directory {} does not exist",
                    dir.display()
                ))),
            };
        }
        Err(e) => return Err(crate::restore::tree::Refusal(e.to_string())),
    };
    if !m.file_type().is_socket() {
        return Err("something that is not a socket is there".into());
    }
    use std::os::unix::fs::MetadataExt;
    let dumped = file.is_some_and(|f| f.ino == m.ino() && f.dev == m.dev());
    let s =
        socket::unix_socket(sock_type).map_err(|e| crate::restore::tree::Refusal(e.to_string()))?;
    match socket::connect(s.as_fd(), name) {
        Ok(()) => Err(
            "a live socket is bound there and accepts connections (is the original \
                       still running?)"
                .into(),
        ),
        Err(e) if e.errno() == Some(libc::ECONNREFUSED) || dumped => Ok(()),
        Err(e) => Err(crate::restore::tree::Refusal(format!(
            "a socket file of another socket is there ({e})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_bindable_when_free_or_stale_and_refused_when_live_or_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).as_os_str().as_encoded_bytes().to_vec();
        let ty = libc::SOCK_STREAM;
        assert_eq!(check_name(&p("free.sock"), ty, None), Ok(()));
        assert_eq!(
            check_name(&p("no/dir.sock"), ty, None),
            Err(crate::restore::tree::Refusal(format!(
                "its directory {} does not exist",
                dir.path().join("no").display()
            )))
        );
        drop(std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).unwrap());
        assert_eq!(check_name(&p("stale.sock"), ty, None), Ok(()));
        let _live = std::os::unix::net::UnixListener::bind(dir.path().join("live.sock")).unwrap();
        let e = check_name(&p("live.sock"), ty, None).unwrap_err();
        assert!(e.0.starts_with("a live socket is bound there"), "{e}");
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert_eq!(
            check_name(&p("file"), ty, None),
            Err("something that is not a socket is there".into())
        );
        let name = format!("\0haul-unit-{}-taken", std::process::id());
        assert_eq!(check_name(name.as_bytes(), ty, None), Ok(()));
        let _taken = socket::unix_socket(ty).unwrap();
        socket::bind(_taken.as_fd(), name.as_bytes()).unwrap();
        let e = check_name(name.as_bytes(), ty, None).unwrap_err();
        assert!(e.0.starts_with("the abstract name is taken"), "{e}");
    }
}
