//! The SysV IPC objects of a set (`Tree::ipc`), made again before any process exists, each
//! under its own id and key, with its owner, permissions and a segment's pages (written
//! through haul's own attachment). The root, once its memory is mapped, sets the sets' values
//! (`SETALL`) and sends the queues' messages in order ([`claim`], injected: so a process of
//! the tree is their last user, as at the dump). The processes attach their segments
//! themselves (`memory::map_vmas`, an injected `shmat` at the dumped address).
//!
//! **Ids.** The kernel gives the next object the id written to
//! `/proc/sys/kernel/{shm,sem,msg}_next_id` (an id is `index + seq * 32768`; it takes the
//! lowest free index from that one on), so each object is made right after writing its id
//! there, under a lock haul's restores share, and its id is checked.
//!
//! **What is at that id already** ([`judge`], from `check_compat` before anything is
//! touched): nothing, and no other object has its key: it is made. The set's own object
//! left behind (after `dump --kill` objects outlive their processes): the same id and key,
//! created or last used by a process of the dumped tree, attached by none: it is removed and
//! made again from the image (the image wins). Anything else is refused naming it.
//!
//! A failed restore removes every object it made ([`Made`] on drop). A segment marked for
//! deletion is marked again once every process has attached it ([`Made::finish`]).
//!
//! Not carried: the creator's uid/gid (`cuid`, `cgid`: haul's), a segment's creator pid
//! (haul's), and which process of the tree was each object's last user and when (the root
//! is).

use std::collections::BTreeSet;

use crate::image::ipc::{self, IpcImage, IpcPerm};
use crate::image::{ImageSet, PageRef};
use crate::restore::error::StepResult;
use crate::sys::remote::{self, Inject};
use crate::sys::sysvipc::{self, Kind};
use crate::sys::SysError;

/// The ids of one kind live in `index + seq * IPCMNI` (`ipc/util.h`, without
/// `ipcmni_extend`).
const IPCMNI: i32 = 32768;

/// Why the SysV objects could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SysvError {
    /// A call on one object failed.
    #[error("SysV {} id {id} (key {key:#x}): {source}", kind.name())]
    Sys {
        kind: Kind,
        id: i32,
        key: i32,
        #[source]
        source: SysError,
    },
    /// The kernel gave the object another id (another process took its index meanwhile).
    #[error(
        "SysV {} id {want} (key {key:#x}) was made as id {got}: its index was taken meanwhile",
        kind.name()
    )]
    WrongId {
        kind: Kind,
        want: i32,
        got: i32,
        key: i32,
    },
    /// Reading a segment's pages failed.
    #[error("SysV shm id {id}: reading its pages: {source}")]
    Pages {
        id: i32,
        #[source]
        source: super::super::BoxError,
    },
    /// The lock haul's restores take around making objects.
    #[error("locking {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An object the namespace holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub id: i32,
    pub key: i32,
    /// Its creator and last users (0: none).
    pub pids: Vec<i32>,
    /// Attachments (segments only).
    pub nattch: i64,
    /// Who holds it, for a refusal.
    pub who: String,
}

/// What to do about the id and key an object of the image wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing is there: make it.
    Free,
    /// The set's own object left behind: remove it, then make it.
    Leftover,
    /// Refused, saying why.
    Taken(String),
}

/// The rule of the module documentation, for an object of `kind` wanting `id` and `key`,
/// given what the namespace holds of that kind and the pids of the dumped tree.
pub(crate) fn judge(
    kind: Kind,
    id: i32,
    key: i32,
    found: &[Found],
    tree: &BTreeSet<i32>,
) -> Verdict {
    let name = kind.name();
    let at = found.iter().find(|f| f.id % IPCMNI == id % IPCMNI);
    if let Some(f) = at {
        let ours = f.pids.iter().any(|p| *p > 0 && tree.contains(p));
        if f.id == id && f.key == key && ours && f.nattch == 0 {
            return Verdict::Leftover;
        }
        return Verdict::Taken(format!(
            "SysV {name} id {id} (key {key:#x}) is taken: id {} (key {:#x}) is there, {}",
            f.id, f.key, f.who
        ));
    }
    if key != 0 {
        if let Some(f) = found.iter().find(|f| f.key == key) {
            return Verdict::Taken(format!(
                "SysV {name} id {id} (key {key:#x}) is taken: its key names id {} there, {}",
                f.id, f.who
            ));
        }
    }
    Verdict::Free
}

/// The objects of `kind` in haul's IPC namespace now.
fn found(kind: Kind) -> std::io::Result<Vec<Found>> {
    let rows = crate::proc::sysvipc_rows(kind.name())?;
    let mut out = Vec::new();
    for r in rows {
        let (Some(&key), Some(&id)) = (r.first(), r.get(1)) else {
            continue;
        };
        let col = |i: usize| r.get(i).copied().unwrap_or(0);
        let (pids, nattch, who) = match kind {
            Kind::Shm => (
                vec![col(4) as i32, col(5) as i32],
                col(6),
                format!(
                    "created by pid {}, last attached or detached by pid {}, attached {} times",
                    col(4),
                    col(5),
                    col(6)
                ),
            ),
            Kind::Msg => (
                vec![col(5) as i32, col(6) as i32],
                0,
                format!(
                    "last sent to by pid {} and received from by pid {}, {} messages queued",
                    col(5),
                    col(6),
                    col(4)
                ),
            ),
            Kind::Sem => {
                let pids: Vec<i32> = (0..col(3) as i32)
                    .map_while(|n| crate::sys::shm::sem_last_pid(id as i32, n).ok())
                    .collect();
                let who = format!("last operated by pids {pids:?}");
                (pids, 0, who)
            }
        };
        out.push(Found {
            id: id as i32,
            key: key as i32,
            pids,
            nattch,
            who,
        });
    }
    Ok(out)
}

/// Every object of `ipc` with what to do about it, in the order they are made.
fn wanted(ipc: &IpcImage) -> Vec<(Kind, &IpcPerm)> {
    let shm = ipc.shm.iter().map(|s| (Kind::Shm, &s.perm));
    let sem = ipc.sem.iter().map(|s| (Kind::Sem, &s.perm));
    let msg = ipc.msg.iter().map(|s| (Kind::Msg, &s.perm));
    shm.chain(sem).chain(msg).collect()
}

/// The pids of the dumped tree, zombies included.
fn tree_pids(set: &ImageSet) -> BTreeSet<i32> {
    set.processes()
        .map(|(_, p)| p.pid)
        .chain(set.tree.zombies.iter().map(|z| z.pid))
        .collect()
}

/// Before anything is touched: what to do about each object of the set, or the first
/// refusal (naming the object and who holds its id or key).
pub(crate) fn plan(set: &ImageSet) -> Result<Vec<Verdict>, crate::restore::tree::Refusal> {
    let Some(ipc) = &set.tree.ipc else {
        return Ok(Vec::new());
    };
    let tree = tree_pids(set);
    let mut cache: Vec<(Kind, Vec<Found>)> = Vec::new();
    let mut out = Vec::new();
    for (kind, perm) in wanted(ipc) {
        if !cache.iter().any(|(k, _)| *k == kind) {
            let f = found(kind).map_err(|e| {
                crate::restore::tree::Refusal(format!("reading /proc/sysvipc/{}: {e}", kind.name()))
            })?;
            cache.push((kind, f));
        }
        let f = cache
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, f)| f.as_slice())
            .unwrap_or_default();
        match judge(kind, perm.id, perm.key, f, &tree) {
            Verdict::Taken(why) => return Err(crate::restore::tree::Refusal(why)),
            v => out.push(v),
        }
    }
    Ok(out)
}

/// The objects a restore made: removed when dropped, unless the restore went through.
#[derive(Debug, Default)]
pub(crate) struct Made {
    made: Vec<(Kind, i32)>,
    /// Segments to mark for deletion once the processes have attached them.
    removed: Vec<i32>,
    armed: bool,
}

impl Made {
    /// The processes have attached their segments and are about to run: marks the segments
    /// that were marked for deletion, and keeps every object.
    pub(crate) fn finish(mut self) -> Result<(), SysvError> {
        for id in std::mem::take(&mut self.removed) {
            sysvipc::remove(Kind::Shm, id).map_err(|source| SysvError::Sys {
                kind: Kind::Shm,
                id,
                key: 0,
                source,
            })?;
        }
        self.armed = false;
        Ok(())
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for &(kind, id) in self.made.iter().rev() {
            if let Err(e) = sysvipc::remove(kind, id) {
                tracing::warn!(id, kind = kind.name(), "removing a SysV object made: {e}");
            }
        }
    }
}

/// Where haul's restores take their lock around `*_next_id`.
fn lock_path() -> std::path::PathBuf {
    let run = std::path::Path::new("/run");
    let dir = if run.is_dir() {
        run.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join("haul-sysvipc.lock")
}

/// Makes every object of the set (see the module documentation), `verdicts` from [`plan`].
pub(crate) fn make(
    set: &ImageSet,
    verdicts: &[Verdict],
    source: &dyn super::super::PageSource,
) -> Result<Made, SysvError> {
    let mut made = Made {
        made: Vec::new(),
        removed: Vec::new(),
        armed: true,
    };
    let Some(ipc) = &set.tree.ipc else {
        return Ok(made);
    };
    let path = lock_path();
    let lock_err = |source| SysvError::Lock {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    let _lock = crate::sys::file::lock(file, crate::sys::file::LockMode::Exclusive, false)
        .map_err(|e| lock_err(std::io::Error::other(e.to_string())))?;
    let objs = wanted(ipc);
    for (i, (kind, perm)) in objs.iter().enumerate() {
        let sys = |source| SysvError::Sys {
            kind: *kind,
            id: perm.id,
            key: perm.key,
            source,
        };
        if verdicts.get(i) == Some(&Verdict::Leftover) {
            sysvipc::remove(*kind, perm.id).map_err(sys)?;
        }
        let size = match kind {
            Kind::Shm => ipc.shm[i].size,
            Kind::Sem => ipc.sem[i - ipc.shm.len()].values.len() as u64,
            Kind::Msg => 0,
        };
        sysvipc::set_next_id(*kind, perm.id).map_err(sys)?;
        let got = sysvipc::create(*kind, perm.key, size, 0o600).map_err(sys)?;
        made.made.push((*kind, got));
        if got != perm.id {
            return Err(SysvError::WrongId {
                kind: *kind,
                want: perm.id,
                got,
                key: perm.key,
            });
        }
    }
    // The lock only guards the ids.
    drop(_lock);
    for (i, seg) in ipc.shm.iter().enumerate() {
        let id = seg.perm.id;
        let sys = |source| SysvError::Sys {
            kind: Kind::Shm,
            id,
            key: seg.perm.key,
            source,
        };
        fill_segment(set, i, id, seg.size, source)?;
        if seg.locked {
            sysvipc::shm_lock(id).map_err(sys)?;
        }
        let p = &seg.perm;
        sysvipc::set_owner(Kind::Shm, id, p.uid, p.gid, p.mode, 0).map_err(sys)?;
        if seg.removed {
            made.removed.push(id);
        }
    }
    // Their values and messages are given by the root ([`claim`]).
    for s in &ipc.sem {
        let p = &s.perm;
        let sys = |source| SysvError::Sys {
            kind: Kind::Sem,
            id: p.id,
            key: p.key,
            source,
        };
        sysvipc::set_owner(Kind::Sem, p.id, p.uid, p.gid, p.mode, 0).map_err(sys)?;
    }
    for q in &ipc.msg {
        let p = &q.perm;
        let sys = |source| SysvError::Sys {
            kind: Kind::Msg,
            id: p.id,
            key: p.key,
            source,
        };
        // Its capacity before its messages: they may not fit in the default one.
        sysvipc::set_owner(Kind::Msg, p.id, p.uid, p.gid, p.mode, q.qbytes).map_err(sys)?;
    }
    Ok(made)
}

/// In the root, once its memory is mapped (it still has haul's credentials): sets every
/// semaphore set's values and queues every queue's messages in order, and attaches and
/// detaches every segment, by injected calls. So the tree's process, not haul, is the last
/// user of each object (`sempid`, `lspid`, `lpid`), as a dump of the restored tree needs to
/// find them its own.
pub(crate) fn claim(rs: &mut dyn Inject, set: &ImageSet) -> StepResult {
    let Some(ipc) = &set.tree.ipc else {
        return Ok(());
    };
    for s in &ipc.sem {
        remote::semctl_setall(rs, s.perm.id, &s.values)?;
    }
    for q in &ipc.msg {
        for m in &q.messages {
            remote::msgsnd(rs, q.perm.id, m.mtype, &m.data)?;
        }
    }
    for seg in &ipc.shm {
        let at = remote::shmat(rs, seg.perm.id, 0, libc::SHM_RDONLY)?;
        remote::shmdt(rs, at)?;
    }
    Ok(())
}

/// Writes segment `index`'s pages (its page space) into segment `id` through a writable
/// attachment of haul's own.
fn fill_segment(
    set: &ImageSet,
    index: usize,
    id: i32,
    size: u64,
    source: &dyn super::super::PageSource,
) -> Result<(), SysvError> {
    let (lo, hi) = crate::image::space_bounds(ipc::shm_space(index));
    let pages: crate::image::PageTable = set
        .pages
        .range(lo, hi)
        .filter(|(_, r)| *r != PageRef::Zero)
        .collect();
    if pages.is_empty() {
        return Ok(());
    }
    let view = set.with_only_pages(pages);
    let mut seg = sysvipc::Attached::new(id, size, true).map_err(|source| SysvError::Sys {
        kind: Kind::Shm,
        id,
        key: 0,
        source,
    })?;
    let whole = seg.bytes().len();
    source
        .for_each_page(&view, &mut |key, data| {
            let at = (key - lo) as usize;
            // The last page of a segment whose size is not a multiple of pages.
            let n = data.len().min(whole.saturating_sub(at));
            seg.write(at, &data[..n]).map_err(|e| e.into())
        })
        .map_err(|source| SysvError::Pages { id, source })
}
