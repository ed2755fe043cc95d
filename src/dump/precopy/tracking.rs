//! Tracking setup of a pre-copy: which tracker, why, and taking a userfaultfd from the target
//! for uffd-wp.

use std::time::Instant;

use super::TrackerChoice;
use crate::dump::freeze::Frozen;
use crate::dump::DumpError;
use crate::sys::remote;
use crate::sys::uffd::{Uffd, UFFD_USER_MODE_ONLY};
use crate::track::{hash::HashTracker, uffdwp::UffdWp, Tracker, TrackerKind};
/// Picks the tracker: returns it, why, and how long the process was stopped to set it up (µs).
pub(super) fn choose(
    pid: i32,
    choice: TrackerChoice,
) -> Result<(Box<dyn Tracker>, String, u64), DumpError> {
    let uffd_wp = || -> Result<(Box<dyn Tracker>, u64), DumpError> {
        let (uffd, us) = take_uffd(pid)?;
        Ok((Box::new(UffdWp::new(pid, uffd)?), us))
    };
    match choice {
        TrackerChoice::Only(TrackerKind::UffdWp) => {
            let (t, us) = uffd_wp()?;
            Ok((t, "asked for".into(), us))
        }
        TrackerChoice::Only(TrackerKind::Hash) => {
            Ok((Box::new(HashTracker::new()), "asked for".into(), 0))
        }
        TrackerChoice::Only(TrackerKind::SoftDirty) => Err(soft_dirty_refusal()),
        TrackerChoice::Auto => match uffd_wp() {
            Ok((t, us)) => Ok((
                t,
                "auto: async uffd write-protect with PAGEMAP_SCAN works here (no freeze per \
                 pre-dump, exact written pages)"
                    .into(),
                us,
            )),
            // A process that is gone or refused is not a reason to fall back.
            Err(e @ (DumpError::Gone { .. } | DumpError::Refused(_))) => Err(e),
            Err(e) => {
                let sd = match crate::track::probe_soft_dirty() {
                    Ok(()) => "soft-dirty is not implemented yet".to_string(),
                    Err(r) => format!("soft-dirty: {r}"),
                };
                Ok((
                    Box::new(HashTracker::new()),
                    format!(
                        "auto: uffd-wp unavailable ({e}); {sd}; hash compares page contents \
                         (reads every page each round)"
                    ),
                    0,
                ))
            }
        },
    }
}

fn soft_dirty_refusal() -> DumpError {
    match crate::track::probe_soft_dirty() {
        Ok(()) => crate::track::TrackError::Unsupported {
            tracker: TrackerKind::SoftDirty,
            reason: "this kernel has soft-dirty bits, but haul's soft-dirty tracker is not \
                     implemented yet (use uffd-wp or hash)"
                .into(),
        },
        Err(r) => crate::track::TrackError::SoftDirty(r),
    }
    .into()
}

/// Makes `pid` create a userfaultfd (injected `userfaultfd(O_CLOEXEC|O_NONBLOCK)`, with
/// `UFFD_USER_MODE_ONLY` for a non-root target or when the plain call is refused), takes it
/// with `pidfd_getfd` and closes the target's copy. The process is stopped meanwhile; returns
/// the uffd and how long it was stopped (µs). On any error the process is resumed as it was.
fn take_uffd(pid: i32) -> Result<(Uffd, u64), DumpError> {
    let root = crate::proc::status(pid)?.uid[1] == 0;
    let base = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let t = Instant::now();
    let mut frozen = Frozen::seize_all(pid)?;
    let r = (|| -> Result<Uffd, DumpError> {
        let inj = frozen.injector()?;
        let mut flags = base | if root { 0 } else { UFFD_USER_MODE_ONLY as u64 };
        let mut r = remote::take_uffd(inj, flags);
        if root && r.as_ref().err().and_then(|e| e.refused_errno()) == Some(libc::EPERM) {
            flags |= UFFD_USER_MODE_ONLY as u64;
            r = remote::take_uffd(inj, flags);
        }
        match r {
            Ok(t) => Ok(Uffd::from_owned(t.uffd)),
            Err(e @ remote::TakeUffdError::Refused { .. }) => {
                Err(crate::track::TrackError::Unsupported {
                    tracker: TrackerKind::UffdWp,
                    reason: e.to_string(),
                }
                .into())
            }
            Err(remote::TakeUffdError::Sys(e)) => Err(e.into()),
        }
    })();
    let thawed = frozen.thaw();
    let us = crate::util::us(t.elapsed());
    let uffd = r?;
    thawed?;
    Ok((uffd, us))
}
