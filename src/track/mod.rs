//! Dirty-page tracking (issue #6): which pages of a live process were written since the last
//! look. One trait, three trackers:
//!
//! - [`uffdwp::UffdWp`]: async userfaultfd write-protection read back by `PAGEMAP_SCAN`, which
//!   returns the written pages and protects them again in one atomic walk (DESIGN.md §4). The
//!   process is not stopped; it pays about 1 µs for the first write to a page per round.
//! - soft-dirty (`/proc/PID/clear_refs` + pagemap bit 55): only probed; kernels built without
//!   `CONFIG_MEM_SOFT_DIRTY` (ours) are refused with the reason ([`probe_soft_dirty`]).
//! - [`hash::HashTracker`]: no kernel help; every resident page is a candidate and the caller
//!   compares page contents with the last round ([`Tracker::compares_content`]).
//!
//! A tracker sees *areas*: the writable private mappings of the process, as the caller read
//! them from `/proc/PID/maps`. An area the tracker has not tracked before (mapped or changed
//! since) is reported wholly written, and tracked from then on.

pub mod hash;
pub mod uffdwp;

use crate::sys::SysError;
use std::fmt;

/// Errors of the `track` module.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// The tracker cannot work on this kernel or process; the message says why.
    #[error("{tracker} tracking is not available: {reason}")]
    Unsupported {
        tracker: TrackerKind,
        reason: String,
    },
    /// Soft-dirty tracking was asked for and this kernel cannot do it.
    #[error("soft-dirty tracking is not available: {0}")]
    SoftDirty(#[source] SoftDirtyError),
    /// A tracking step failed on process `pid`.
    #[error("{tracker} tracking of pid {pid}: {source}")]
    Sys {
        tracker: TrackerKind,
        pid: i32,
        #[source]
        source: SysError,
    },
}

/// The trackers haul has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackerKind {
    UffdWp,
    SoftDirty,
    Hash,
}

impl TrackerKind {
    pub fn name(self) -> &'static str {
        match self {
            TrackerKind::UffdWp => "uffd-wp",
            TrackerKind::SoftDirty => "soft-dirty",
            TrackerKind::Hash => "hash",
        }
    }
}

impl fmt::Display for TrackerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A page-aligned address range `[start, end)` of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Area {
    pub start: u64,
    pub end: u64,
}

impl Area {
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / crate::sys::PAGE_SIZE as u64
    }
}

/// Written pages: sorted, non-overlapping, page-aligned ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    ranges: Vec<Area>,
}

impl Dirty {
    /// Builds a set from ranges in any order (overlapping or adjacent ones are merged).
    pub fn from_ranges(mut ranges: Vec<Area>) -> Dirty {
        ranges.retain(|r| r.end > r.start);
        ranges.sort();
        let mut out: Vec<Area> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match out.last_mut() {
                Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
                _ => out.push(r),
            }
        }
        Dirty { ranges: out }
    }

    pub fn ranges(&self) -> &[Area] {
        &self.ranges
    }

    /// Number of pages in the set.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(Area::pages).sum()
    }

    /// The ranges of the set that overlap `[start, end)`, clipped to it.
    pub fn within(&self, start: u64, end: u64) -> Vec<Area> {
        let first = self.ranges.partition_point(|r| r.end <= start);
        self.ranges[first..]
            .iter()
            .take_while(|r| r.start < end)
            .map(|r| Area {
                start: r.start.max(start),
                end: r.end.min(end),
            })
            .collect()
    }

    /// True when page `addr` is in the set.
    pub fn contains(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= addr);
        self.ranges.get(i).is_some_and(|r| r.start <= addr)
    }
}

/// A dirty-page tracker of one process.
pub trait Tracker: Send {
    fn kind(&self) -> TrackerKind;

    /// Starts tracking `areas`: a write after this call is reported by the next
    /// [`collect`](Self::collect).
    fn start(&mut self, areas: &[Area]) -> Result<(), TrackError>;

    /// The pages of `areas` written since the last `start`/`collect`; tracking goes on from
    /// this instant (no write is lost between two calls). Areas not tracked before are
    /// reported whole and tracked from now on; areas that are gone are forgotten.
    fn collect(&mut self, areas: &[Area]) -> Result<Dirty, TrackError>;

    /// True when [`collect`](Self::collect) names candidates only and the caller must compare
    /// their contents with the last round to know which were written (the hash tracker).
    fn compares_content(&self) -> bool {
        false
    }

    /// Ends tracking: afterwards the process runs exactly as before tracking began (no page
    /// left write-protected). Idempotent; dropping a tracker stops it too.
    fn stop(&mut self) -> Result<(), TrackError>;
}

/// Why soft-dirty bits cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum SoftDirtyError {
    #[error("cannot map a probe page: {0}")]
    ProbePage(#[source] SysError),
    #[error("cannot open our own pagemap: {0}")]
    OpenPagemap(#[source] SysError),
    #[error("cannot read our own pagemap: {0}")]
    ReadPagemap(#[source] SysError),
    #[error(
        "a page just written shows no soft-dirty bit (pagemap bit 55): the kernel is built \
         without CONFIG_MEM_SOFT_DIRTY"
    )]
    NoBit,
    #[error("pagemap returned no entry for the probe page")]
    NoEntry,
}

/// Whether this kernel keeps soft-dirty bits: a page this process has just written must show
/// pagemap bit 55. `Err` carries the reason it does not.
pub fn probe_soft_dirty() -> Result<(), SoftDirtyError> {
    use crate::sys::pagemap::Pagemap;
    let mut buf = crate::sys::mem::AlignedBuf::new(crate::sys::PAGE_SIZE)
        .map_err(SoftDirtyError::ProbePage)?;
    buf.as_mut_slice()[0] = 1;
    let addr = buf.as_slice().as_ptr() as u64;
    let pm = Pagemap::open(crate::sys::process::getpid()).map_err(SoftDirtyError::OpenPagemap)?;
    let e = pm
        .entries(addr, addr + crate::sys::PAGE_SIZE as u64)
        .map_err(SoftDirtyError::ReadPagemap)?;
    match e.first() {
        Some(e) if e.soft_dirty() => Ok(()),
        Some(_) => Err(SoftDirtyError::NoBit),
        None => Err(SoftDirtyError::NoEntry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(start: u64, end: u64) -> Area {
        Area {
            start: start * 4096,
            end: end * 4096,
        }
    }

    #[test]
    fn dirty_merges_overlapping_and_adjacent_ranges_in_any_order() {
        let d = Dirty::from_ranges(vec![a(10, 12), a(1, 2), a(2, 4), a(11, 15), a(20, 20)]);
        assert_eq!(d.ranges(), &[a(1, 4), a(10, 15)]);
        assert_eq!(d.pages(), 8);
    }

    #[test]
    fn dirty_within_clips_to_the_asked_range_and_contains_tests_pages() {
        let d = Dirty::from_ranges(vec![a(1, 4), a(10, 15), a(30, 31)]);
        assert_eq!(d.within(3 * 4096, 12 * 4096), vec![a(3, 4), a(10, 12)]);
        assert!(d.within(5 * 4096, 10 * 4096).is_empty());
        assert!(d.contains(3 * 4096) && d.contains(30 * 4096));
        assert!(!d.contains(4 * 4096) && !d.contains(0) && !d.contains(31 * 4096));
    }
}
