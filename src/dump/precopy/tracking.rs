//! Tracking setup of a pre-copy: which tracker, why, and taking a userfaultfd from the target
//! for uffd-wp.

use std::time::Instant;

use super::TrackerChoice;
use crate::dump::freeze::Frozen;
use crate::dump::DumpError;
use crate::sys::process::{self, nr};
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
        let mut fd = inj.call(nr::USERFAULTFD, [flags, 0, 0, 0, 0, 0])?;
        if fd == -(libc::EPERM as i64) && root {
            flags |= UFFD_USER_MODE_ONLY as u64;
            fd = inj.call(nr::USERFAULTFD, [flags, 0, 0, 0, 0, 0])?;
        }
        if (-4095..0).contains(&fd) {
            return Err(crate::track::TrackError::Unsupported {
                tracker: TrackerKind::UffdWp,
                reason: format!(
                    "injected userfaultfd({flags:#x}) in pid {pid} failed: {}",
                    std::io::Error::from_raw_os_error((-fd) as i32)
                ),
            }
            .into());
        }
        let got = process::pidfd_open(pid).and_then(|p| process::pidfd_getfd(&p, fd as i32));
        // Close the target's copy whatever happened: only haul's copy may keep tracking alive.
        let closed = inj.call_ok(
            nr::CLOSE,
            [fd as u64, 0, 0, 0, 0, 0],
            "close of the target's userfaultfd",
        );
        let got = got?;
        closed?;
        Ok(Uffd::from_owned(got))
    })();
    let thawed = frozen.thaw();
    let us = crate::util::us(t.elapsed());
    let uffd = r?;
    thawed?;
    Ok((uffd, us))
}
