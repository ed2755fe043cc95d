//! Pre-copy chains: which pre-dump sets belong to a pre-copy still running, and which ones a
//! pre-copy that will never finish left behind (gc removes those).
//!
//! A pre-copy commits a chain of pre-dump sets, each the parent of the next, then a final dump
//! whose parent is the newest of them. A pre-dump set that no dump names (through its parents)
//! is either part of a pre-copy in progress, or left by one that was interrupted, killed, or
//! refused by the final dump. Telling them apart by age would need a grace period longer than
//! any pre-copy (whose length the job decides), so it is told by a lock instead:
//!
//! - The process writing a chain holds an `flock` on `precopy/<set id>.lock` for every set of
//!   the chain, taken when the set is committed, before its manifest exists, while the writer
//!   holds the store lock shared. gc holds the store lock exclusively, so it never sees a set of
//!   a chain without its lock.
//! - The locks are let go (and their files removed) when the final dump that names the chain
//!   is committed, and by the kernel when the process ends, however it ends. A pre-copy
//!   abandoned by a process that lives on stays "in progress" until that process drops its
//!   [`Store`](super::Store).
//!
//! So a pre-dump set no dump names is in progress exactly when its lock is held by someone;
//! no clock is involved, and a pre-copy of any length, or a machine that rebooted, is judged
//! right. Pre-dump sets copied from another store (`images push/pull`) are not part of a
//! pre-copy here: unless a dump names them, gc removes them too.

use super::{fsutil, Inner, StoreError};
use crate::image::SetKind;
use crate::sys::file::{FileLock, LockError, LockMode};
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Directory of the chain locks, in the store.
pub(crate) const DIR: &str = "precopy";

/// The chains this process is writing: by newest set, the locks of all of the chain's sets.
#[derive(Default)]
pub(crate) struct Chains(HashMap<String, Vec<(String, FileLock)>>);

/// What a set is to gc (`haul images ls` shows it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetState {
    /// A dump, or a pre-dump that a dump names (through its parents).
    #[default]
    Ok,
    /// A pre-dump of a pre-copy still running (its process holds the chain's locks).
    InProgress,
    /// A pre-dump of a pre-copy that will never finish (interrupted, killed, refused): no dump
    /// names it and no process holds its lock. gc removes it.
    Incomplete,
    /// The manifest cannot be read (`haul images verify` says more).
    Damaged,
}

impl std::fmt::Display for SetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SetState::Ok => "ok",
            SetState::InProgress => "in progress",
            SetState::Incomplete => "incomplete",
            SetState::Damaged => "DAMAGED",
        })
    }
}

/// A set as the chain rules see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SetRef<'a> {
    pub id: &'a str,
    pub kind: SetKind,
    pub parent: Option<&'a str>,
    pub created_us: u64,
}

pub(crate) fn lock_path(root: &Path, id: &str) -> PathBuf {
    root.join(DIR).join(format!("{id}.lock"))
}

/// Creates and locks the lock file of set `id`.
fn take(root: &Path, id: &str) -> Result<FileLock, StoreError> {
    fsutil::create_dir(&root.join(DIR))?;
    let p = lock_path(root, id);
    let f = fsutil::open_lock(&p)?;
    crate::sys::file::lock(f, LockMode::Exclusive, true).map_err(|e| {
        let source = match e {
            LockError::Failed { source, .. } => source,
            LockError::Held(_) => std::io::Error::from_raw_os_error(libc::EWOULDBLOCK),
            LockError::Interrupted(_) => std::io::Error::from_raw_os_error(libc::EINTR),
        };
        StoreError::io(format!("locking {}", p.display()), source)
    })
}

/// Lets go of the locks of a chain, removing their files first (while still held).
fn let_go(root: &Path, locks: Vec<(String, FileLock)>) {
    for (id, lock) in locks {
        let p = lock_path(root, &id);
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", p.display());
            }
        }
        drop(lock);
    }
}

/// Whether some process (this one included, through another handle) holds the lock of set
/// `id`. A missing lock file is a lock no one holds.
pub(crate) fn held(root: &Path, id: &str) -> bool {
    let Ok(f) = File::open(lock_path(root, id)) else {
        return false;
    };
    match crate::sys::file::lock(f, LockMode::Exclusive, true) {
        Ok(_) => false,
        Err(LockError::Held(_)) => true,
        // Cannot tell: keep the set (gc must never remove a set still in use).
        Err(_) => true,
    }
}

impl Inner {
    /// Before the manifest of pre-dump `id` is written: lock it, as part of the chain of
    /// `parent` when this process is writing that chain, or as a new chain when it has no
    /// parent. A pre-dump whose parent some other process wrote (a copied set) is not locked.
    pub(crate) fn chain_hold(&self, id: &str, parent: Option<&str>) -> Result<(), StoreError> {
        let mut chains = self
            .chains
            .lock()
            .map_err(|_| StoreError::Writer("chain lock table poisoned".into()))?;
        let mut chain = match parent {
            None => Vec::new(),
            Some(p) => match chains.0.remove(p) {
                Some(c) => c,
                None => return Ok(()),
            },
        };
        match take(&self.root, id) {
            Ok(l) => chain.push((id.to_string(), l)),
            Err(e) => {
                if let Some(p) = parent {
                    chains.0.insert(p.to_string(), chain);
                }
                return Err(e);
            }
        }
        chains.0.insert(id.to_string(), chain);
        Ok(())
    }

    /// The manifest of pre-dump `id` could not be written: undoes [`Inner::chain_hold`].
    pub(crate) fn chain_undo(&self, id: &str, parent: Option<&str>) {
        let Ok(mut chains) = self.chains.lock() else {
            return;
        };
        let Some(mut chain) = chains.0.remove(id) else {
            return;
        };
        if let Some(last) = chain.pop() {
            let_go(&self.root, vec![last]);
        }
        match parent {
            Some(p) if !chain.is_empty() => {
                chains.0.insert(p.to_string(), chain);
            }
            _ => let_go(&self.root, chain),
        }
    }

    /// A dump whose parent is `parent` was committed: the chain it names, if this process
    /// wrote it, is done.
    pub(crate) fn chain_release(&self, parent: Option<&str>) {
        let Some(p) = parent else {
            return;
        };
        let chain = match self.chains.lock() {
            Ok(mut c) => c.0.remove(p),
            Err(_) => None,
        };
        if let Some(chain) = chain {
            let_go(&self.root, chain);
        }
    }
}

/// The state of each of `sets` (in the same order). Dumps are [`SetState::Ok`]; so is every
/// pre-dump a dump names through its parents; the other pre-dumps are in progress when their
/// lock is held, incomplete otherwise. In a bucket store (`shared`), the pre-copy may run on
/// another host, whose locks this one cannot see: there a pre-dump is taken for one left only
/// once it is older than a lock object goes stale ([`super::bucket::lock::STALE`]).
pub(crate) fn states(root: &Path, sets: &[SetRef<'_>], shared: bool) -> Vec<SetState> {
    let now = crate::util::now_us();
    let young = |s: &SetRef<'_>| {
        shared && now.saturating_sub(s.created_us) < super::bucket::lock::STALE.as_micros() as u64
    };
    let by_id: HashMap<&str, usize> = sets.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let mut named = vec![false; sets.len()];
    for s in sets.iter().filter(|s| s.kind == SetKind::Dump) {
        let mut parent = s.parent;
        while let Some(p) = parent {
            match by_id.get(p) {
                Some(&j) if sets[j].kind == SetKind::PreDump && !named[j] => {
                    named[j] = true;
                    parent = sets[j].parent;
                }
                _ => break,
            }
        }
    }
    sets.iter()
        .zip(named)
        .map(|(s, named)| match s.kind {
            SetKind::Dump => SetState::Ok,
            SetKind::PreDump if named => SetState::Ok,
            SetKind::PreDump if held(root, s.id) || young(s) => SetState::InProgress,
            SetKind::PreDump => SetState::Incomplete,
        })
        .collect()
}

/// Removes the lock files no one holds (left by processes that ended). Only under the store
/// lock held exclusively: no writer is taking a new one then. Returns how many.
pub(crate) fn remove_stale_locks(root: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(root.join(DIR)) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        if !held(root, id) && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}
