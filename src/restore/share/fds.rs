//! The file side of [`super::Shared`]: haul's copies of the pipe ends and socket pair ends
//! made in one process of the tree for a later one, and where each process restored so far
//! is, so a later process gets a copy of an earlier one's open file description.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use crate::image::FdRef;
use crate::restore::error::{StepError, StepResult};
use crate::sys::process;

/// haul's copies of the open file descriptions the tree's processes made.
#[derive(Default)]
pub(crate) struct FdTable {
    /// The pid each process of the image (by its pid in the image) was restored as.
    procs: HashMap<i32, i32>,
    /// Both ends of each pipe made with an end for a later process: (inode, write end).
    pipe_ends: HashMap<(u64, bool), OwnedFd>,
    /// Both sockets of each socket pair made with an end for a later process, by inode.
    sockets: HashMap<u64, OwnedFd>,
}

impl FdTable {
    /// Notes that process `image_pid` of the image is being restored as `pid`.
    pub(crate) fn restoring(&mut self, image_pid: i32, pid: i32) {
        self.procs.insert(image_pid, pid);
    }

    /// A copy of fd `r.fd` of the earlier process `r.pid` (restored and stopped), taken with
    /// `pidfd_getfd`: the same open file description.
    pub(crate) fn copy_of(&self, r: FdRef, what: impl Fn() -> String) -> StepResult<OwnedFd> {
        let pid = *self.procs.get(&r.pid).ok_or_else(|| StepError::NotYet {
            what: format!(
                "{} (the open file description of fd {} of pid {}, not restored before it)",
                what(),
                r.fd,
                r.pid
            ),
        })?;
        let pidfd = process::pidfd_open(pid)?;
        Ok(process::pidfd_getfd(&pidfd, r.fd)?)
    }

    /// haul's copy of an end of pipe `ino` made for a later process.
    pub(crate) fn pipe_end(&self, ino: u64, write: bool) -> Option<&OwnedFd> {
        self.pipe_ends.get(&(ino, write))
    }

    /// Keeps haul's copies of both ends of pipe `ino`.
    pub(crate) fn keep_pipe(&mut self, ino: u64, read: OwnedFd, write: OwnedFd) {
        self.pipe_ends.insert((ino, false), read);
        self.pipe_ends.insert((ino, true), write);
    }

    /// haul's copy of socket `ino` of a pair made for a later process.
    pub(crate) fn socket(&self, ino: u64) -> Option<&OwnedFd> {
        self.sockets.get(&ino)
    }

    /// Keeps haul's copies of both sockets of a pair: `ino` and its peer `peer`.
    pub(crate) fn keep_pair(&mut self, ino: u64, mine: OwnedFd, peer: u64, theirs: OwnedFd) {
        self.sockets.insert(ino, mine);
        self.sockets.insert(peer, theirs);
    }
}
