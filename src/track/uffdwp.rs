//! The uffd-wp tracker (DESIGN.md §4): the target's own userfaultfd (created by an injected
//! syscall and taken with `pidfd_getfd`, see `dump::precopy`), in async write-protect mode.
//! [`start`](UffdWp::start) registers the areas in WP mode and write-protects them; each
//! [`collect`](UffdWp::collect) is one `PAGEMAP_SCAN` per area with `PM_SCAN_WP_MATCHING |
//! PM_SCAN_CHECK_WPASYNC` that returns the written pages and protects them again atomically.
//! An area mapped after registration gives `EPERM` under `CHECK_WPASYNC`: it is reported whole
//! and registered from then on.
//!
//! [`stop`](UffdWp::stop) unregisters every mapping (which clears the pte write-protect bits)
//! and closes the uffd. If haul dies instead, closing its uffd (the only one left) ends the
//! registration with it.

use super::{Area, Dirty, TrackError, Tracker, TrackerKind};
use crate::sys::pagemap::{Pagemap, ScanQuery};
use crate::sys::uffd::{
    Uffd, UFFDIO_REGISTER_MODE_WP, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED,
};
use crate::sys::SysError;
use std::collections::BTreeSet;

/// See the module documentation.
pub struct UffdWp {
    pid: i32,
    uffd: Option<Uffd>,
    pagemap: Pagemap,
    /// Areas registered and write-protected.
    registered: BTreeSet<Area>,
    /// Areas the kernel would not register: reported whole every round.
    untrackable: BTreeSet<Area>,
}

impl UffdWp {
    /// Takes `uffd`, a userfaultfd of process `pid` (created in it), and enables async
    /// write-protect tracking on it (`UFFDIO_API` with `WP_ASYNC | WP_UNPOPULATED`).
    pub fn new(pid: i32, uffd: Uffd) -> Result<UffdWp, TrackError> {
        let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        let (got, _) = uffd.api(want).map_err(|e| match e.errno() {
            Some(libc::EINVAL) => TrackError::Unsupported {
                tracker: TrackerKind::UffdWp,
                reason: format!("the kernel refuses UFFD_FEATURE_WP_ASYNC|WP_UNPOPULATED ({e})"),
            },
            _ => sys(pid, e),
        })?;
        if got & want != want {
            return Err(TrackError::Unsupported {
                tracker: TrackerKind::UffdWp,
                reason: format!("the kernel grants uffd features {got:#x}, not {want:#x}"),
            });
        }
        let pagemap = Pagemap::open(pid).map_err(|e| sys(pid, e))?;
        Ok(UffdWp {
            pid,
            uffd: Some(uffd),
            pagemap,
            registered: BTreeSet::new(),
            untrackable: BTreeSet::new(),
        })
    }

    fn uffd(&self) -> Result<&Uffd, TrackError> {
        self.uffd.as_ref().ok_or_else(|| TrackError::Unsupported {
            tracker: TrackerKind::UffdWp,
            reason: "tracking was stopped".into(),
        })
    }

    /// Registers `a` in WP mode and write-protects it; an area the kernel refuses is remembered
    /// as untrackable.
    fn arm(&mut self, a: Area) -> Result<(), TrackError> {
        let len = a.end - a.start;
        let uffd = self.uffd()?;
        match uffd.register(a.start, len, UFFDIO_REGISTER_MODE_WP) {
            Ok(_) => {}
            // EBUSY: the process registered the range with a userfaultfd of its own.
            Err(e)
                if matches!(
                    e.errno(),
                    Some(libc::EINVAL) | Some(libc::EPERM) | Some(libc::EBUSY)
                ) =>
            {
                tracing::debug!(pid = self.pid, start = a.start, "area not trackable: {e}");
                self.untrackable.insert(a);
                return Ok(());
            }
            Err(e) => return Err(sys(self.pid, e)),
        }
        uffd.writeprotect(a.start, len, true, false)
            .map_err(|e| sys(self.pid, e))?;
        self.registered.insert(a);
        Ok(())
    }

    /// Areas registered so far (for tests and reports).
    pub fn registered(&self) -> usize {
        self.registered.len()
    }
}

fn sys(pid: i32, source: SysError) -> TrackError {
    TrackError::Sys {
        tracker: TrackerKind::UffdWp,
        pid,
        source,
    }
}

impl Tracker for UffdWp {
    fn kind(&self) -> TrackerKind {
        TrackerKind::UffdWp
    }

    fn start(&mut self, areas: &[Area]) -> Result<(), TrackError> {
        for a in areas {
            self.arm(*a)?;
        }
        Ok(())
    }

    fn collect(&mut self, areas: &[Area]) -> Result<Dirty, TrackError> {
        let now: BTreeSet<Area> = areas.iter().copied().collect();
        // Unmapped (or changed) areas: the kernel dropped their registration with them.
        self.registered.retain(|a| now.contains(a));
        self.untrackable.retain(|a| now.contains(a));
        let mut dirty = Vec::new();
        for a in areas {
            if self.untrackable.contains(a) {
                dirty.push(*a);
                continue;
            }
            if !self.registered.contains(a) {
                // Mapped or changed since the last round: wholly dirty, tracked from now on.
                self.arm(*a)?;
                dirty.push(*a);
                continue;
            }
            match self
                .pagemap
                .scan(&ScanQuery::written_and_reprotect(a.start, a.end))
            {
                Ok(regions) => dirty.extend(regions.iter().map(|r| Area {
                    start: r.start,
                    end: r.end,
                })),
                // Part of the range is a mapping made after registration (same bounds by
                // chance): wholly dirty, and registered now.
                Err(e) if e.errno() == Some(libc::EPERM) => {
                    self.registered.remove(a);
                    self.arm(*a)?;
                    dirty.push(*a);
                }
                Err(e) => return Err(sys(self.pid, e)),
            }
        }
        Ok(Dirty::from_ranges(dirty))
    }

    fn stop(&mut self) -> Result<(), TrackError> {
        let Some(uffd) = self.uffd.take() else {
            return Ok(());
        };
        // Unregister the mappings that overlap what we registered (this clears the
        // write-protect bits of their ptes), one at a time and whole: a registered mapping may
        // have grown (brk, stack) or been split since. A process that exited has nothing left.
        let mut first_err = None;
        if let Ok(maps) = crate::proc::maps(self.pid) {
            let ours = |m: &&crate::proc::MapEntry| {
                self.registered
                    .iter()
                    .any(|a| a.start < m.end && m.start < a.end)
            };
            for m in maps.iter().filter(ours) {
                if let Err(e) = uffd.unregister(m.start, m.end - m.start) {
                    if !matches!(
                        e.errno(),
                        Some(libc::EINVAL) | Some(libc::ENOMEM) | Some(libc::ESRCH)
                    ) {
                        tracing::warn!(pid = self.pid, "unregistering {:#x}: {e}", m.start);
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        self.registered.clear();
        drop(uffd);
        match first_err {
            Some(e) => Err(sys(self.pid, e)),
            None => Ok(()),
        }
    }
}

impl Drop for UffdWp {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(pid = self.pid, "ending uffd-wp tracking: {e}");
        }
    }
}
