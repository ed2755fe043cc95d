//! SysV IPC objects the tree uses (issue #13): shared memory segments, semaphore sets and
//! message queues, carried with their contents (see `image::ipc` for which objects are the
//! tree's). haul reads them itself, under the freeze: a segment through its own read-only
//! `shmat`, a set with `semctl(GETALL)`, a queue's messages with `msgrcv(MSG_COPY)` (which
//! takes none of them).
//!
//! Refused by name: a segment a process outside the tree has attached too (the restored tree
//! would get a copy of its own: their writes would no longer meet), and an attachment the
//! tree mapped only part of (`munmap` of a piece: `shmat` maps the whole segment again).
//! Not carried, because the kernel shows them nowhere: the adjustments a process's
//! `SEM_UNDO` operations would make when it exits; and a set or queue no process of the tree
//! has operated, set, sent to or received from is not seen as the tree's.

use std::collections::{BTreeMap, BTreeSet};

use super::{Member, Refusals};
use crate::dump::{DumpError, PageSink};
use crate::image::ipc::{self, IpcImage, IpcPerm, Message, MsgQueue, SemSet, ShmSegment};
use crate::image::{ProcessImage, VmaKind, PAGE_SIZE};
use crate::sys::mem::PageBuf;
use crate::sys::sysvipc::{self, Perm, SHM_DEST, SHM_LOCKED};

/// One attachment of a segment as the maps show it: (pid, start, end, offset, path).
type Piece = (i32, u64, u64, u64, String);

/// The ids of the tree's objects, from `/proc/sysvipc` and the members' maps.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Ids {
    pub shm: BTreeSet<i32>,
    pub sem: BTreeSet<i32>,
    pub msg: BTreeSet<i32>,
}

/// Which objects are the tree's (`pids`), given the rows of `/proc/sysvipc/{shm,msg}`, the
/// segments the members attach (`attached`) and a semaphore set's last users
/// (`sem_pids(semid, nsems)`).
pub(crate) fn select(
    pids: &BTreeSet<i32>,
    attached: &BTreeSet<i32>,
    shm_rows: &[Vec<i64>],
    msg_rows: &[Vec<i64>],
    sem_rows: &[Vec<i64>],
    sem_pids: &mut dyn FnMut(i32, i64) -> Vec<i32>,
) -> Ids {
    let ours = |p: i64| i32::try_from(p).is_ok_and(|p| p > 0 && pids.contains(&p));
    let mut ids = Ids {
        shm: attached.clone(),
        ..Ids::default()
    };
    // key shmid perms size cpid lpid nattch ...
    for r in shm_rows {
        if let (Some(&id), Some(&cpid), Some(&lpid)) = (r.get(1), r.get(4), r.get(5)) {
            if ours(cpid) || ours(lpid) {
                ids.shm.insert(id as i32);
            }
        }
    }
    // key msqid perms cbytes qnum lspid lrpid ...
    for r in msg_rows {
        if let (Some(&id), Some(&lspid), Some(&lrpid)) = (r.get(1), r.get(5), r.get(6)) {
            if ours(lspid) || ours(lrpid) {
                ids.msg.insert(id as i32);
            }
        }
    }
    // key semid perms nsems ...
    for r in sem_rows {
        if let (Some(&id), Some(&n)) = (r.get(1), r.get(3)) {
            if sem_pids(id as i32, n)
                .into_iter()
                .any(|p| ours(i64::from(p)))
            {
                ids.sem.insert(id as i32);
            }
        }
    }
    ids
}

/// The attachments of each segment the members map, in tree order.
fn pieces(members: &[Member<'_>]) -> BTreeMap<i32, Vec<Piece>> {
    let mut out: BTreeMap<i32, Vec<Piece>> = BTreeMap::new();
    for mb in members {
        for m in mb
            .snapshot
            .maps
            .iter()
            .filter(|m| m.path.starts_with("/SYSV"))
        {
            out.entry(m.inode as i32).or_default().push((
                mb.pid,
                m.start,
                m.end,
                m.offset,
                m.path.clone(),
            ));
        }
    }
    out
}

/// The refusal of segment `id` (of `size` bytes, attached `nattch` times) given its
/// attachments in the tree: one that maps only part of it, or more attachments than the
/// tree's (a process outside it). None if the tree holds every attachment whole.
pub(crate) fn refuse_segment(
    id: i32,
    key: i32,
    size: u64,
    nattch: u64,
    pieces: &[Piece],
) -> Option<String> {
    let whole = size.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
    let mut attaches = 0u64;
    // Per process, in address order: an attachment starts at offset 0 and runs on through
    // contiguous pieces (an mprotect splits it) to the segment's end.
    let mut by_pid: BTreeMap<i32, Vec<&Piece>> = BTreeMap::new();
    for p in pieces {
        by_pid.entry(p.0).or_default().push(p);
    }
    for (pid, mut ps) in by_pid {
        ps.sort_by_key(|p| p.1);
        let mut next: Option<(u64, u64)> = None; // (address, offset) the attachment goes on at
        for p in ps {
            let (_, start, end, off, ref path) = *p;
            let part = || {
                format!(
                    "pid {pid} mapping {start:x}-{end:x} ({path}) maps only part of SysV shared \
                     memory segment shmid {id} (key {key:#x}, {size} bytes): not supported yet"
                )
            };
            match next {
                Some((a, o)) if a == start && o == off => {}
                Some(_) => return Some(part()),
                None if off == 0 => attaches += 1,
                None => return Some(part()),
            }
            let o = off + (end - start);
            next = if o >= whole { None } else { Some((end, o)) };
        }
        if let Some((a, o)) = next {
            let _ = o;
            return Some(format!(
                "pid {pid} maps only part of SysV shared memory segment shmid {id} (key \
                 {key:#x}, {size} bytes), up to {a:x}: not supported yet"
            ));
        }
    }
    (nattch > attaches).then(|| {
        format!(
            "SysV shared memory segment shmid {id} (key {key:#x}) is attached {nattch} times, \
             {attaches} of them by the tree: a process outside the tree holds it too (not \
             supported yet)"
        )
    })
}

/// The tree's objects (`members`), read from `/proc` and `semctl(GETPID)`.
fn tree_ids(members: &[Member<'_>]) -> Result<Ids, DumpError> {
    let pids: BTreeSet<i32> = members.iter().map(|m| m.pid).collect();
    let attached: BTreeSet<i32> = pieces(members).into_keys().collect();
    let mut sem_pids = |id: i32, n: i64| {
        // A set removed meanwhile, or one haul may not read, tells nothing.
        (0..n as i32)
            .map_while(|num| sysvipc_last_pid(id, num))
            .collect()
    };
    Ok(select(
        &pids,
        &attached,
        &rows("shm")?,
        &rows("msg")?,
        &rows("sem")?,
        &mut sem_pids,
    ))
}

/// `/proc/sysvipc/KIND`'s rows.
fn rows(kind: &str) -> Result<Vec<Vec<i64>>, DumpError> {
    crate::proc::sysvipc_rows(kind).map_err(|e| DumpError::Io {
        context: format!("reading /proc/sysvipc/{kind}"),
        source: e,
    })
}

fn sysvipc_last_pid(id: i32, num: i32) -> Option<i32> {
    crate::sys::shm::sem_last_pid(id, num).ok()
}

/// Refuses the tree's segments it cannot carry: see the module documentation.
pub(super) fn check(members: &[Member<'_>], found: &mut Refusals) -> Result<(), DumpError> {
    let ids = tree_ids(members)?;
    let pieces = pieces(members);
    for id in &ids.shm {
        let Some(st) = sysvipc::shm_stat(*id)? else {
            continue;
        };
        let none = Vec::new();
        let ps = pieces.get(id).unwrap_or(&none);
        if let Some(why) = refuse_segment(*id, st.perm.key, st.size, st.nattch, ps) {
            found.add(DumpError::Unsupported(why));
        }
    }
    Ok(())
}

fn perm_image(id: i32, p: &Perm) -> IpcPerm {
    IpcPerm {
        id,
        key: p.key,
        mode: p.mode & 0o777,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
    }
}

/// Under the freeze: the tree's objects (`procs`, captured) with their contents; each
/// segment's pages go to `sink`, in its own page space (`ipc::shm_space`). None when the
/// tree uses none.
pub(crate) fn capture(
    procs: &[ProcessImage],
    sink: &mut dyn PageSink,
) -> Result<Option<IpcImage>, DumpError> {
    let pids: BTreeSet<i32> = procs.iter().map(|p| p.pid).collect();
    let attached: BTreeSet<i32> = procs
        .iter()
        .flat_map(|p| p.vmas.iter())
        .filter(|v| v.kind == VmaKind::SysvShm)
        .map(|v| v.ino as i32)
        .collect();
    let mut sem_pids = |id: i32, n: i64| {
        (0..n as i32)
            .map_while(|num| sysvipc_last_pid(id, num))
            .collect()
    };
    let ids = select(
        &pids,
        &attached,
        &rows("shm")?,
        &rows("msg")?,
        &rows("sem")?,
        &mut sem_pids,
    );
    let mut img = IpcImage::default();
    if ids.shm.len() > ipc::MAX_SEGMENTS {
        return Err(DumpError::Refused(format!(
            "the tree uses {} SysV shared memory segments: at most {} fit in an image set",
            ids.shm.len(),
            ipc::MAX_SEGMENTS
        )));
    }
    for id in ids.shm {
        let Some(st) = sysvipc::shm_stat(id)? else {
            if attached.contains(&id) {
                return Err(DumpError::Internal(format!(
                    "SysV shared memory segment shmid {id} is attached but cannot be read"
                )));
            }
            continue;
        };
        let space = ipc::shm_space(img.shm.len());
        copy_segment(id, st.size, space, sink)?;
        img.shm.push(ShmSegment {
            perm: perm_image(id, &st.perm),
            size: st.size,
            cpid: st.cpid,
            removed: st.perm.mode & SHM_DEST != 0,
            locked: st.perm.mode & SHM_LOCKED != 0,
        });
    }
    for id in ids.sem {
        let Some(st) = sysvipc::sem_stat(id)? else {
            continue;
        };
        img.sem.push(SemSet {
            perm: perm_image(id, &st.perm),
            values: sysvipc::sem_values(id, st.nsems as usize)?,
        });
    }
    for id in ids.msg {
        let Some(st) = sysvipc::msg_stat(id)? else {
            continue;
        };
        // One message is never longer than the queue holds.
        let max = st.qbytes.max(st.cbytes).max(1) as usize;
        let mut messages = Vec::with_capacity(st.qnum as usize);
        for i in 0..st.qnum {
            let (mtype, data) = sysvipc::msg_copy(id, i, max)?;
            if data.len() > crate::image::ipc::MAX_MESSAGE {
                return Err(DumpError::Unsupported(format!(
                    "SysV message queue id {id} key {:#x}: message {i} (type {mtype}) holds {} \
                     bytes: a restore queues messages of at most {} bytes",
                    st.perm.key,
                    data.len(),
                    crate::image::ipc::MAX_MESSAGE
                )));
            }
            messages.push(Message { mtype, data });
        }
        img.msg.push(MsgQueue {
            perm: perm_image(id, &st.perm),
            qbytes: st.qbytes,
            messages,
        });
    }
    Ok((!img.is_empty()).then_some(img))
}

/// Hands the non-zero pages of segment `id` (`size` bytes) to `sink` in page space `space`,
/// read through a read-only attachment of haul's own.
fn copy_segment(id: i32, size: u64, space: u16, sink: &mut dyn PageSink) -> Result<(), DumpError> {
    let seg = sysvipc::Attached::new(id, size, false)?;
    let bytes = seg.bytes();
    let page = PAGE_SIZE;
    let mut addrs = Vec::new();
    let mut data = PageBuf::default();
    for (i, chunk) in bytes.chunks(page).enumerate() {
        if crate::image::is_zero_page(chunk) {
            continue;
        }
        addrs.push(crate::image::page_key(space, (i * page) as u64));
        // The last page of a segment whose size is not a multiple of pages ends in zeros.
        let at = data.len();
        data.resize(addrs.len() * page);
        data[at..at + chunk.len()].copy_from_slice(chunk);
        if data.len() >= 4 << 20 {
            sink.add_pages(&std::mem::take(&mut addrs), std::mem::take(&mut data))?;
        }
    }
    if !addrs.is_empty() {
        sink.add_pages(&addrs, data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(pid: i32, start: u64, len: u64, off: u64) -> Piece {
        (
            pid,
            start,
            start + len,
            off,
            "/SYSV00000000 (deleted)".into(),
        )
    }

    #[test]
    fn the_tree_s_objects_are_those_it_attaches_created_or_used_last() {
        let pids: BTreeSet<i32> = [10, 11].into();
        let attached: BTreeSet<i32> = [5].into();
        let shm = [
            vec![0, 5, 600, 4096, 99, 99, 2],
            vec![0, 6, 600, 4096, 10, 99, 0],
            vec![0, 7, 600, 4096, 99, 11, 0],
            vec![0, 8, 600, 4096, 99, 98, 0],
        ];
        let msg = [
            vec![0, 20, 600, 0, 0, 11, 0],
            vec![0, 21, 600, 0, 0, 0, 10],
            vec![0, 22, 600, 0, 0, 99, 0],
            vec![0, 23, 600, 0, 0, 0, 0],
        ];
        let sem = [vec![0, 30, 600, 2], vec![0, 31, 600, 1]];
        let mut last = |id: i32, n: i64| {
            assert!(n > 0);
            if id == 30 {
                vec![0, 11]
            } else {
                vec![0]
            }
        };
        let ids = select(&pids, &attached, &shm, &msg, &sem, &mut last);
        assert_eq!(ids.shm, [5, 6, 7].into());
        assert_eq!(ids.msg, [20, 21].into());
        assert_eq!(ids.sem, [30].into());
    }

    #[test]
    fn a_segment_attached_whole_by_the_tree_only_is_carried() {
        // Parent and child attached it at the same address; the parent split it by mprotect.
        let ps = [
            piece(10, 0x1000, 0x1000, 0),
            piece(10, 0x2000, 0x1000, 0x1000),
            piece(11, 0x1000, 0x2000, 0),
        ];
        assert_eq!(refuse_segment(5, 0, 0x1800, 2, &ps), None);
    }

    #[test]
    fn a_segment_attached_outside_the_tree_or_in_part_is_refused_naming_it() {
        let ps = [piece(10, 0x1000, 0x2000, 0)];
        let e = refuse_segment(5, 0x2a, 0x2000, 2, &ps).unwrap();
        assert!(
            e.contains("shmid 5 (key 0x2a) is attached 2 times, 1 of them by the tree"),
            "{e}"
        );
        let part = [piece(10, 0x1000, 0x1000, 0)];
        let e = refuse_segment(5, 0, 0x2000, 1, &part).unwrap();
        assert!(
            e.starts_with("pid 10 maps only part of SysV shared memory segment shmid 5"),
            "{e}"
        );
        let tail = [piece(11, 0x5000, 0x1000, 0x1000)];
        let e = refuse_segment(5, 0, 0x2000, 1, &tail).unwrap();
        assert!(e.starts_with("pid 11 mapping 5000-6000"), "{e}");
    }
}
