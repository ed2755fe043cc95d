//! The memory side of [`super::Shared`]: the shared memory objects (shared anonymous memory,
//! deleted tmpfs files) mapped so far, by the image mapping of their first holder, so that a
//! later mapping of the same object (`Vma::shared_with`) maps that very object again, through
//! `/proc/PID/map_files/` of the restored first holder.

use std::collections::HashMap;

use crate::image::{ImageSet, VmaKind, VmaRef};

/// A shared memory object mapped by a restored process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The restored process that maps it (its pid now, which `pid = "any"` may change).
    pub pid: i32,
    /// Its mapping there.
    pub start: u64,
    pub end: u64,
    /// The object offset (bytes) of the image that is at offset 0 of the restored object:
    /// a shared anonymous object is made afresh from its first holder's mapping, whose own
    /// offset into the old object was this; a file keeps its offsets (0).
    pub shift: u64,
}

impl Holder {
    /// The path through which the object can be opened (by a process with haul's
    /// credentials: `map_files/` wants CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE).
    pub fn map_files(&self) -> String {
        format!(
            "/proc/{}/map_files/{:x}-{:x}",
            self.pid, self.start, self.end
        )
    }
}

/// Where the shared memory objects made so far can be mapped from, by the image's (pid,
/// start) of their first holder's mapping.
#[derive(Default)]
pub(crate) struct MemTable {
    made: HashMap<(i32, u64), Holder>,
}

impl MemTable {
    /// Notes that the image mapping `start` of process `pid` (its image pid) is restored as
    /// `holder`.
    pub fn add(&mut self, pid: i32, start: u64, holder: Holder) {
        self.made.insert((pid, start), holder);
    }

    /// The restored first holder of the object `r` names.
    pub fn get(&self, r: VmaRef) -> Option<Holder> {
        self.made.get(&(r.pid, r.start)).copied()
    }
}

/// What stops a shared memory object from being made or mapped again.
#[derive(Debug, thiserror::Error)]
pub enum MemShareError {
    /// The image names a first holder that was not restored before this mapping.
    #[error(
        "VMA {start:#x}-{end:#x} maps the object of pid {from_pid}'s mapping at {from_start:#x}, \
         which no process restored so far maps"
    )]
    NoHolder {
        start: u64,
        end: u64,
        from_pid: i32,
        from_start: u64,
    },
    /// The mapping starts before its first holder's part of the object (the dump refuses it).
    #[error(
        "VMA {start:#x}-{end:#x} maps object offset {pgoff:#x}, before its first holder's \
         ({shift:#x})"
    )]
    BeforeHolder {
        start: u64,
        end: u64,
        pgoff: u64,
        shift: u64,
    },
    /// Something is at the path where a deleted shared memory file is made again.
    #[error(
        "{path} exists: pid {pid} mapped a deleted file of that name at {start:#x}, which a \
         restore makes there again (is the original still running? else remove {path})"
    )]
    PathTaken { path: String, pid: i32, start: u64 },
}

/// Before any process exists: every deleted tmpfs file the set makes again (each first
/// holder's `DeletedShm` mapping) has its path free. To be called by `check_compat` (the
/// `O_EXCL` create of the map step refuses it too, but only once processes exist).
pub(crate) fn check_paths(set: &ImageSet) -> Result<(), MemShareError> {
    for (_, p) in set.processes() {
        for v in &p.vmas {
            if v.kind == VmaKind::DeletedShm
                && v.shared_with.is_none()
                && std::fs::symlink_metadata(&v.name).is_ok()
            {
                return Err(MemShareError::PathTaken {
                    path: v.name.clone(),
                    pid: p.pid,
                    start: v.start,
                });
            }
        }
    }
    Ok(())
}
