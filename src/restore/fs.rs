//! The fs and limits steps: cwd, umask, personality, the process's name and its prctl-style
//! attributes, then its resource limits. Sessions and process groups are set while the tree is
//! created (`create.rs`), by the plan of `tree.rs`, of which [`session_plan`] is the root's.

use super::error::StepResult;
use crate::image::ProcessImage;
use crate::sys::remote::{self, Inject};

/// cwd, umask, personality, name, then the process-wide attributes.
pub(super) fn restore_fs(rs: &mut dyn Inject, p: &ProcessImage) -> StepResult {
    remote::chdir(rs, &p.cwd)?;
    remote::umask(rs, p.umask)?;
    remote::personality(rs, p.personality)?;
    remote::set_name(rs, &p.comm)?;
    super::attrs::process_attrs(rs, p)
}

/// What the root of a restore does about its session and group (`tree::plan` uses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Session {
    /// A session of its own (`setsid`).
    New,
    /// Into this group of haul's session (0: a group of its own), or, if it is gone, a group
    /// of its own.
    Group(i32),
    /// It stays in the group it was started in (haul's).
    Stay,
}

/// The dumped session and process group, as far as a lone process can have them back: a
/// session leader gets a new session (its id is the process's own, as before); a process of
/// haul's own session goes back to its group (its own, or one that still exists there); a
/// process of another session cannot rejoin it and gets a new session of its own.
///
/// Ids read 0 when the session or group leader lives outside our PID namespace (a container,
/// a CI sandbox): a session of 0 is haul's own when haul's reads 0 too, and a group of 0 is
/// one we cannot name, so the process stays in the group it was started in (haul's) when that
/// one reads 0 as well, and gets a group of its own otherwise. `ours` is haul's (session,
/// process group).
pub(super) fn session_plan(p: &ProcessImage, ours: (i32, i32)) -> Session {
    if p.sid == p.pid || p.sid != ours.0 {
        return Session::New;
    }
    if p.pgid == 0 && ours.1 == 0 {
        return Session::Stay;
    }
    if p.pgid == p.pid || p.pgid == 0 {
        Session::Group(0)
    } else {
        Session::Group(p.pgid)
    }
}

/// Every resource limit of the image (`prlimit64` on the process itself).
pub(super) fn restore_limits(rs: &mut dyn Inject, p: &ProcessImage) -> StepResult {
    for l in &p.rlimits {
        remote::prlimit64(rs, l.resource, l.cur, l.max)?;
    }
    Ok(())
}
