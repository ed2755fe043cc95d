//! SysV IPC calls injected into a thread: `shmat(2)`, which attaches a segment at the
//! address the dumped process had it, and `shmdt(2)`, `semctl(2)` `SETALL` and `msgsnd(2)`,
//! by which a restored process makes itself the last user of its objects (as it was).

use super::{put, Inject};
use crate::sys::Result;

/// `shmat(shmid, addr, flags)` (see shmat(2)): attaches segment `shmid` at exactly `addr`
/// (page-aligned; nothing may be mapped there) with `flags` (`SHM_RDONLY`, `SHM_EXEC`).
/// Returns the address attached.
pub fn shmat<R: Inject + ?Sized>(r: &mut R, shmid: i32, addr: u64, flags: i32) -> Result<u64> {
    r.call_ok(
        libc::SYS_shmat,
        [shmid as u64, addr, flags as u64, 0, 0, 0],
        &format!("shmat shmid {shmid} at {addr:#x}"),
    )
}

/// `shmdt(addr)` (see shmdt(2)): detaches the segment attached at `addr`.
pub fn shmdt<R: Inject + ?Sized>(r: &mut R, addr: u64) -> Result<()> {
    r.call_ok(
        libc::SYS_shmdt,
        [addr, 0, 0, 0, 0, 0],
        &format!("shmdt at {addr:#x}"),
    )?;
    Ok(())
}

/// `semctl(semid, 0, SETALL, values)` (see semctl(2)): sets every semaphore of the set (which
/// has `values.len()` of them); the values go through the argument area.
pub fn semctl_setall<R: Inject + ?Sized>(r: &mut R, semid: i32, values: &[u16]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let at = put(r, &bytes)?;
    r.call_ok(
        libc::SYS_semctl,
        [semid as u64, 0, libc::SETALL as u64, at, 0, 0],
        &format!("semctl(SETALL) of semid {semid}"),
    )?;
    Ok(())
}

/// `msgsnd(msqid, {mtype, text}, len, IPC_NOWAIT)` (see msgsnd(2)): queues one message; the
/// `struct msgbuf` goes through the argument area.
pub fn msgsnd<R: Inject + ?Sized>(r: &mut R, msqid: i32, mtype: i64, text: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(8 + text.len());
    buf.extend_from_slice(&mtype.to_ne_bytes());
    buf.extend_from_slice(text);
    let at = put(r, &buf)?;
    r.call_ok(
        libc::SYS_msgsnd,
        [
            msqid as u64,
            at,
            text.len() as u64,
            libc::IPC_NOWAIT as u64,
            0,
            0,
        ],
        &format!(
            "msgsnd of a {}-byte message of type {mtype} to msqid {msqid}",
            text.len()
        ),
    )?;
    Ok(())
}
