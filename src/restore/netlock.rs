//! The network lock of a restore (issue #15): the connections of the set to peers outside it
//! are locked before any socket is made and released once the restored tree runs; a lock a
//! kill-mode dump left in place ([`crate::image::Tree::netlock`]) is removed with it (on
//! another host or network namespace it is simply not there).
//!
//! A restore that fails drops its own lock but leaves the kept one: the set can be restored
//! again, and its peers are still held.

use super::RestoreOptions;
use crate::image::{FdKind, ImageSet};
use crate::netlock::{Conn, LockMode, NetLock, NetLockError};
use std::time::Instant;

/// A lock the restore holds, and since when.
pub(super) struct NetLockHeld {
    lock: Option<NetLock>,
    /// The kill-mode dump's table, removed at release.
    kept: Option<String>,
    since: Instant,
}

impl NetLockHeld {
    /// Releases it: returns how long it was held (µs). The kept table goes first (the restore's
    /// own lock still holds meanwhile), then the restore's own. A kept table that cannot be
    /// removed is logged: the restored tree runs regardless.
    pub fn release(self) -> u64 {
        if let Some(t) = &self.kept {
            if let Err(e) = crate::netlock::remove_kept(t) {
                tracing::warn!(
                    error = %e,
                    "the network lock the dump kept could not be removed: remove it with \
                     `nft delete table inet {t}`"
                );
            }
        }
        drop(self.lock);
        crate::util::us(self.since.elapsed())
    }
}

/// The established TCP connections of `set` to peers outside it.
pub(crate) fn connections(set: &ImageSet) -> Vec<Conn> {
    let conns = set.processes().flat_map(|(_, p)| {
        p.fds.iter().filter_map(|f| match &f.kind {
            FdKind::Inet(s) if s.conn.is_some() => Some(Conn {
                local: s.local?,
                remote: s.peer?,
            }),
            _ => None,
        })
    });
    crate::netlock::outside(conns)
}

/// Locks the connections of `set` to peers outside it, if it has any and `opts` asks for a
/// lock; None otherwise. A set whose dump kept a lock gets it removed at release, whatever
/// `opts` says (it was left for this restore).
pub(super) fn take(
    set: &ImageSet,
    opts: &RestoreOptions,
) -> Result<Option<NetLockHeld>, NetLockError> {
    let since = Instant::now();
    let kept = set.tree.netlock.as_ref().map(|r| r.table.clone());
    let conns = match opts.network_lock {
        LockMode::None => Vec::new(),
        LockMode::Nftables => connections(set),
    };
    let lock = if conns.is_empty() {
        None
    } else {
        Some(NetLock::take(&conns)?)
    };
    if lock.is_none() && kept.is_none() {
        return Ok(None);
    }
    Ok(Some(NetLockHeld { lock, kept, since }))
}
