//! The network lock of a dump (issue #15): taken once the tree is frozen, before any socket is
//! read, on the established TCP connections of the tree to peers outside it.
//!
//! The frozen tree holds it (`FrozenTree::lock`): a thaw releases it once the processes run, a
//! kill-mode dump keeps it for the restore (`NetLock::keep`, recorded in the image as
//! `Tree::netlock`), and if the worker dies the keeper `nft` exits with it and the kernel drops
//! the table (see [`crate::netlock`]).

use super::{DumpError, DumpOptions};
use crate::netlock::{Conn, LockMode, NetLock};
use crate::sys::inetdiag::{self, TCP_CLOSE, TCP_LISTEN};
use std::collections::BTreeSet;

/// Locks the established connections of processes `pids` (frozen) to peers outside them, if
/// there are any and `opts` asks for a lock; None otherwise (and then `nft` is not run).
pub(super) fn take(pids: &[i32], opts: &DumpOptions) -> Result<Option<NetLock>, DumpError> {
    if opts.network_lock == LockMode::None {
        return Ok(None);
    }
    let conns = connections(pids)?;
    if conns.is_empty() {
        return Ok(None);
    }
    let lock = NetLock::take(&conns)?;
    // Test-only: `HAUL_TEST_HOLD_LOCKED=<file>` holds the dump here with the lock taken, so a
    // test can look at the ruleset and kill haul meanwhile (`tests/netlock.rs`).
    super::test_hold("HAUL_TEST_HOLD_LOCKED", lock.table());
    Ok(Some(lock))
}

/// Before the freeze: if processes `pids` have connections to lock, checks that `nft` can be
/// used ([`crate::netlock::check_tool`]), so that a dump that cannot lock fails before
/// anything is touched. Connections made between this and the freeze are locked all the same
/// ([`take`] reads them again under the freeze).
pub(super) fn preflight(pids: &[i32], opts: &DumpOptions) -> Result<(), DumpError> {
    if opts.network_lock == LockMode::None {
        return Ok(());
    }
    let conns = connections(pids)?;
    if conns.is_empty() {
        return Ok(());
    }
    Ok(crate::netlock::check_tool(&conns)?)
}

/// The TCP connections of processes `pids` (connected: neither listening nor closed) to peers
/// outside them, from sock_diag of haul's network namespace (the tree's: a namespace of its
/// own is refused).
pub(crate) fn connections(pids: &[i32]) -> Result<Vec<Conn>, DumpError> {
    let mut inodes = BTreeSet::new();
    for &pid in pids {
        // Before the freeze a process of the tree may have exited meanwhile (a shell's child):
        // it holds no connection. (Under the freeze none can; one killed from outside is
        // named by the dump's later checks.)
        let Ok(fds) = crate::proc::fds(pid) else {
            continue;
        };
        for fd in fds {
            let Ok(target) = crate::proc::fd_target(pid, fd) else {
                continue;
            };
            if let Some(ino) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            {
                inodes.insert(ino);
            }
        }
    }
    if inodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut conns = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        for s in inetdiag::sockets(family, libc::IPPROTO_TCP)? {
            if s.ino != 0
                && inodes.contains(&s.ino)
                && s.state != TCP_LISTEN
                && s.state != TCP_CLOSE
                && s.remote.port() != 0
            {
                conns.push(Conn {
                    local: s.local,
                    remote: s.remote,
                });
            }
        }
    }
    Ok(crate::netlock::outside(conns))
}
