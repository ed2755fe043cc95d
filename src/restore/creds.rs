//! The credentials step, per thread (they are per thread in Linux): bounding set, groups,
//! gids and uids, filesystem ids, capabilities, ambient capabilities, securebits and
//! no_new_privs, in the one order the kernel allows them all.

use super::error::{StepError, StepResult};
use crate::image::ProcessImage;
use crate::sys::remote::{self, FsId, Inject};

/// Credentials, in the thread `rs` drives: the capability bounding set first (dropping needs
/// CAP_SETPCAP), then groups, gids and uids (dropping the uid first would forbid the rest; the
/// permitted capabilities are kept across it when the image has any), then the effective,
/// permitted and inheritable capabilities, the ambient ones, and no_new_privs. The
/// compatibility check made sure that haul holds every capability set here.
pub(super) fn restore_creds(rs: &mut dyn Inject, p: &ProcessImage) -> StepResult {
    let (pid, tid) = (rs.pid(), rs.tid());
    let bnd = crate::proc::task_status(pid, tid)?.cap_bnd;
    let mut permitted = || -> StepResult<u64> { Ok(crate::proc::task_status(pid, tid)?.cap_prm) };
    creds_in_order(rs, p, bnd, &mut permitted)
}

/// [`restore_creds`] with the thread's bounding set `bnd_now` read, and `permitted_now` to
/// read its permitted set when needed (after the uid change).
pub(super) fn creds_in_order(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    bnd_now: u64,
    permitted_now: &mut dyn FnMut() -> StepResult<u64>,
) -> StepResult {
    let c = &p.creds;
    for cap in 0..64u32 {
        let bit = 1u64 << cap;
        if bnd_now & bit != 0 && c.cap_bnd & bit == 0 {
            remote::capbset_drop(rs, cap)?;
        }
    }
    // The groups always: a root process has its own too, not haul's.
    remote::setgroups(rs, &c.groups)?;
    let is_root = c.uid == [0; 4] && c.gid == [0; 4];
    if !is_root {
        let keep = c.cap_prm != 0;
        if keep {
            remote::set_keepcaps(rs, true)?;
        }
        remote::setresgid(rs, [c.gid[0], c.gid[1], c.gid[2]])?;
        remote::setresuid(rs, [c.uid[0], c.uid[1], c.uid[2]])?;
        // setresuid/setresgid made the filesystem ids the effective ones; before capset,
        // which then sets the capabilities a change of fsuid adds or drops.
        set_fs_id(rs, FsId::Gid, c.gid[3])?;
        set_fs_id(rs, FsId::Uid, c.uid[3])?;
        if keep {
            remote::set_keepcaps(rs, false)?;
        }
    }
    let ambient = |rs: &mut dyn Inject| -> StepResult {
        for cap in (0..64u32).filter(|cap| c.cap_amb & (1 << cap) != 0) {
            remote::cap_ambient_raise(rs, cap)?;
        }
        Ok(())
    };
    let securebits = p.attrs.securebits.unwrap_or(0);
    if securebits & !(libc::SECBIT_KEEP_CAPS as u32) != 0 {
        // Setting securebits needs CAP_SETPCAP in effect, and SECBIT_NO_CAP_AMBIENT_RAISE
        // forbids the ambient raise: first every permitted capability in effect (setresuid
        // cleared them), the ambient ones, the bits, then the dumped sets.
        let prm = permitted_now()?;
        remote::capset(rs, prm, prm, c.cap_inh)?;
        ambient(rs)?;
        remote::set_securebits(rs, securebits)?;
        remote::capset(rs, c.cap_eff, c.cap_prm, c.cap_inh)?;
    } else {
        remote::capset(rs, c.cap_eff, c.cap_prm, c.cap_inh)?;
        ambient(rs)?;
        if securebits != 0 {
            remote::set_keepcaps(rs, true)?;
        }
    }
    if c.no_new_privs {
        remote::set_no_new_privs(rs)?;
    }
    Ok(())
}

/// setfsuid(2) or setfsgid(2) to `id`, checked by reading it back.
fn set_fs_id(rs: &mut dyn Inject, which: FsId, id: u32) -> StepResult {
    let now = remote::set_fs_id(rs, which, id)?;
    if now != id {
        return Err(StepError::FsId {
            call: which.name(),
            id,
            now,
        });
    }
    Ok(())
}
