//! SysV IPC objects as haul reads and makes them itself: shared memory segments
//! (`shmget(2)`, `shmat(2)`, `shmctl(2)`), semaphore sets (`semget(2)`, `semctl(2)`) and
//! message queues (`msgget(2)`, `msgrcv(2)` with `MSG_COPY`, `msgctl(2)`),
//! and the id the next one gets (`/proc/sys/kernel/{shm,sem,msg}_next_id`, see proc(5);
//! the kernel needs CONFIG_CHECKPOINT_RESTORE for it and for `MSG_COPY`).
//!
//! haul runs as root: `CAP_IPC_OWNER` lets it read and attach every object whatever its
//! permissions, and `CAP_SYS_ADMIN` set its owner.

use super::{last_err, Result, SysError};

/// The three kinds of SysV objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Shm,
    Sem,
    Msg,
}

impl Kind {
    /// The name of its `/proc/sys/kernel/*_next_id` and `/proc/sysvipc/*` files.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Shm => "shm",
            Kind::Sem => "sem",
            Kind::Msg => "msg",
        }
    }
}

/// `SHM_DEST` in a segment's mode: marked for deletion (linux/shm.h; not in libc).
pub const SHM_DEST: u32 = 0o1000;
/// `SHM_LOCKED` in a segment's mode: locked in memory (linux/shm.h; not in libc).
pub const SHM_LOCKED: u32 = 0o2000;

/// What `IPC_STAT` shows of any object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Perm {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// The whole mode (permission bits, and `SHM_DEST`/`SHM_LOCKED` for a segment).
    pub mode: u32,
}

fn perm(p: &libc::ipc_perm) -> Perm {
    Perm {
        key: p.__key,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
        mode: u32::from(p.mode),
    }
}

/// A segment as `shmctl(IPC_STAT)` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShmStat {
    pub perm: Perm,
    pub size: u64,
    pub cpid: i32,
    pub lpid: i32,
    pub nattch: u64,
}

/// A semaphore set as `semctl(IPC_STAT)` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SemStat {
    pub perm: Perm,
    pub nsems: u64,
}

/// A queue as `msgctl(IPC_STAT)` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsgStat {
    pub perm: Perm,
    pub qbytes: u64,
    pub qnum: u64,
    pub cbytes: u64,
    pub lspid: i32,
    pub lrpid: i32,
}

/// `EINVAL` or `EIDRM` from an `IPC_STAT`: no object has that id (any more).
fn absent(e: &SysError) -> bool {
    matches!(e.errno(), Some(libc::EINVAL) | Some(libc::EIDRM))
}

/// `shmctl(id, IPC_STAT)`, see shmctl(2); None if no segment has that id.
pub fn shm_stat(id: i32) -> Result<Option<ShmStat>> {
    // SAFETY: an all-zero shmid_ds is a valid value for the call to overwrite.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds into `ds`, which we own.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } < 0 {
        let e = last_err(format!("shmctl(IPC_STAT) of shmid {id}"));
        return if absent(&e) { Ok(None) } else { Err(e) };
    }
    Ok(Some(ShmStat {
        perm: perm(&ds.shm_perm),
        size: ds.shm_segsz as u64,
        cpid: ds.shm_cpid,
        lpid: ds.shm_lpid,
        nattch: ds.shm_nattch,
    }))
}

/// `semctl(id, 0, IPC_STAT)`, see semctl(2); None if no set has that id.
pub fn sem_stat(id: i32) -> Result<Option<SemStat>> {
    // SAFETY: an all-zero semid_ds is a valid value for the call to overwrite.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT takes a pointer to one semid_ds (the `buf` of union semun), which we own.
    if unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) } < 0 {
        let e = last_err(format!("semctl(IPC_STAT) of semid {id}"));
        return if absent(&e) { Ok(None) } else { Err(e) };
    }
    Ok(Some(SemStat {
        perm: perm(&ds.sem_perm),
        nsems: ds.sem_nsems,
    }))
}

/// `msgctl(id, IPC_STAT)`, see msgctl(2); None if no queue has that id.
pub fn msg_stat(id: i32) -> Result<Option<MsgStat>> {
    // SAFETY: an all-zero msqid_ds is a valid value for the call to overwrite.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one msqid_ds into `ds`, which we own.
    if unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } < 0 {
        let e = last_err(format!("msgctl(IPC_STAT) of msqid {id}"));
        return if absent(&e) { Ok(None) } else { Err(e) };
    }
    Ok(Some(MsgStat {
        perm: perm(&ds.msg_perm),
        qbytes: ds.msg_qbytes,
        qnum: ds.msg_qnum,
        cbytes: ds.__msg_cbytes,
        lspid: ds.msg_lspid,
        lrpid: ds.msg_lrpid,
    }))
}

/// Every semaphore's value: `semctl(id, 0, GETALL, values)`, see semctl(2).
pub fn sem_values(id: i32, nsems: usize) -> Result<Vec<u16>> {
    let mut v = vec![0u16; nsems];
    // SAFETY: GETALL writes `nsems` unsigned shorts (the set's size, from IPC_STAT) into `v`.
    if unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) } < 0 {
        return Err(last_err(format!("semctl(GETALL) of semid {id}")));
    }
    Ok(v)
}

/// Message `index` (0: the oldest) of queue `id`, read without taking it:
/// `msgrcv(id, buf, max, index, IPC_NOWAIT | MSG_COPY)`, see msgrcv(2). Returns (mtype, text).
pub fn msg_copy(id: i32, index: u64, max: usize) -> Result<(i64, Vec<u8>)> {
    let word = std::mem::size_of::<libc::c_long>();
    let mut buf = vec![0u8; word + max];
    // SAFETY: `buf` holds a long (mtype) and `max` bytes of text; msgrcv writes at most that.
    let n = unsafe {
        libc::msgrcv(
            id,
            buf.as_mut_ptr().cast(),
            max,
            index as libc::c_long,
            libc::IPC_NOWAIT | libc::MSG_COPY,
        )
    };
    if n < 0 {
        return Err(last_err(format!(
            "msgrcv(MSG_COPY) of message {index} of msqid {id}"
        )));
    }
    let mtype = i64::from_ne_bytes(buf[..word].try_into().unwrap_or([0; 8]));
    Ok((mtype, buf[word..word + n as usize].to_vec()))
}

/// Makes a new object with key `key` (never one that exists: `IPC_CREAT | IPC_EXCL`):
/// `shmget(key, size, ...)`, `semget(key, nsems, ...)` or `msgget(key, ...)`. `size` is the
/// segment's bytes or the set's semaphores (unused for a queue). Returns its id.
pub fn create(kind: Kind, key: i32, size: u64, mode: u32) -> Result<i32> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as libc::c_int;
    // SAFETY: integer arguments only.
    let r = unsafe {
        match kind {
            Kind::Shm => libc::shmget(key, size as libc::size_t, flags),
            Kind::Sem => libc::semget(key, size as libc::c_int, flags),
            Kind::Msg => libc::msgget(key, flags),
        }
    };
    if r < 0 {
        return Err(last_err(format!(
            "{}get of key {key:#x} (size {size})",
            kind.name()
        )));
    }
    Ok(r)
}

/// Asks the kernel to give the next object of `kind` made in haul's IPC namespace the id
/// `id`: writes `/proc/sys/kernel/KIND_next_id` (reset to -1 by the kernel once used; an id
/// whose index is taken gets the next free index instead, so the caller checks the id it got).
pub fn set_next_id(kind: Kind, id: i32) -> Result<()> {
    let path = format!("/proc/sys/kernel/{}_next_id", kind.name());
    std::fs::write(&path, id.to_string()).map_err(|e| super::io_err(format!("writing {path}"), e))
}

/// Removes an object: `shmctl`/`semctl`/`msgctl(id, IPC_RMID)`. A segment still attached
/// stays until its last detach, marked for deletion.
pub fn remove(kind: Kind, id: i32) -> Result<()> {
    // SAFETY: IPC_RMID takes no buffer (a null one is ignored).
    let r = unsafe {
        match kind {
            Kind::Shm => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            Kind::Sem => libc::semctl(id, 0, libc::IPC_RMID),
            Kind::Msg => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
        }
    };
    if r < 0 {
        return Err(last_err(format!("IPC_RMID of {} id {id}", kind.name())));
    }
    Ok(())
}

/// Sets an object's owner and permission bits (and a queue's capacity, `qbytes`):
/// `IPC_SET` with the object's own `*_ds` (read by `IPC_STAT` first), see shmctl(2),
/// semctl(2), msgctl(2).
pub fn set_owner(kind: Kind, id: i32, uid: u32, gid: u32, mode: u32, qbytes: u64) -> Result<()> {
    let mode = (mode & 0o777) as libc::c_ushort;
    let what = || format!("IPC_SET of {} id {id}", kind.name());
    // SAFETY (all three): an all-zero *_ds is valid to overwrite; IPC_STAT fills it, IPC_SET
    // reads it back, both through a pointer to memory we own.
    let r = unsafe {
        match kind {
            Kind::Shm => {
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                if libc::shmctl(id, libc::IPC_STAT, &mut ds) < 0 {
                    return Err(last_err(what()));
                }
                (ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.mode) = (uid, gid, mode);
                libc::shmctl(id, libc::IPC_SET, &mut ds)
            }
            Kind::Sem => {
                let mut ds: libc::semid_ds = std::mem::zeroed();
                if libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) < 0 {
                    return Err(last_err(what()));
                }
                (ds.sem_perm.uid, ds.sem_perm.gid, ds.sem_perm.mode) = (uid, gid, mode);
                libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds)
            }
            Kind::Msg => {
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                if libc::msgctl(id, libc::IPC_STAT, &mut ds) < 0 {
                    return Err(last_err(what()));
                }
                (ds.msg_perm.uid, ds.msg_perm.gid, ds.msg_perm.mode) = (uid, gid, mode);
                ds.msg_qbytes = qbytes as libc::msglen_t;
                libc::msgctl(id, libc::IPC_SET, &mut ds)
            }
        }
    };
    if r < 0 {
        return Err(last_err(what()));
    }
    Ok(())
}

/// Locks a segment in memory: `shmctl(id, SHM_LOCK)`, see shmctl(2).
pub fn shm_lock(id: i32) -> Result<()> {
    // SAFETY: SHM_LOCK takes no buffer.
    if unsafe { libc::shmctl(id, libc::SHM_LOCK, std::ptr::null_mut()) } < 0 {
        return Err(last_err(format!("shmctl(SHM_LOCK) of shmid {id}")));
    }
    Ok(())
}

/// A segment attached in haul itself (`shmat(2)`), detached (`shmdt`) when dropped.
#[derive(Debug)]
pub struct Attached {
    addr: *mut u8,
    len: usize,
    id: i32,
}

impl Attached {
    /// `shmat(id, NULL, SHM_RDONLY or 0)`: the segment of `len` bytes (its size) mapped
    /// somewhere in haul.
    pub fn new(id: i32, len: u64, writable: bool) -> Result<Attached> {
        let flags = if writable { 0 } else { libc::SHM_RDONLY };
        // SAFETY: the kernel picks the address; nothing of ours is there.
        let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if p as isize == -1 {
            return Err(last_err(format!("shmat of shmid {id}")));
        }
        Ok(Attached {
            addr: p.cast(),
            len: len as usize,
            id,
        })
    }

    /// The segment's bytes. Another process may write them meanwhile (the ones haul reads
    /// are frozen).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes at `addr` stay mapped until `self` is dropped.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }

    /// Copies `data` to offset `at` of a segment attached writable.
    pub fn write(&mut self, at: usize, data: &[u8]) -> Result<()> {
        if at.checked_add(data.len()).is_none_or(|e| e > self.len) {
            return Err(SysError::Invalid(format!(
                "{} bytes at offset {at:#x} do not fit in shmid {} of {} bytes",
                data.len(),
                self.id,
                self.len
            )));
        }
        // SAFETY: checked above that the range lies in the mapped segment; `data` is ours
        // and cannot overlap a mapping haul just made.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(at), data.len()) };
        Ok(())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: `addr` is what shmat returned; nothing borrows it past `self`.
        unsafe { libc::shmdt(self.addr.cast()) };
    }
}
