//! What the processes of a tree share (issue #13): open file descriptions, pipes and socket
//! pairs between them (`fds.rs`), shared memory objects (`memory.rs`), SysV IPC objects
//! (`sysv.rs`, carried whole in `Tree::ipc`).
//!
//! Two passes over the whole tree, root first then the descendants in tree order (parents
//! before children), the order a restore creates them in:
//! - [`check`], before anything is frozen and again under the freeze: every fd or mapping
//!   shared with a process outside the tree is refused by name (pid, fd, what, which end);
//! - [`link`], under the freeze, once every process's state is captured and before memory is
//!   copied: marks what a process shares with an earlier one (`FdImage::inherited`,
//!   `Vma::shared_with`, the one holder of a pipe's contents), so a restore builds each
//!   shared object once and the memory copy stores a shared object's pages once.

mod fds;
mod memory;
pub(crate) mod sysv;

pub(crate) use memory::object_regions;

use super::check::{Refusals, Snapshot};
use super::DumpError;
use crate::image::ProcessImage;

/// One process of the tree as the checks read it.
pub(crate) struct Member<'a> {
    pub pid: i32,
    pub snapshot: &'a Snapshot,
}

/// Notes in `found` every refusal about what the members share with processes outside the
/// tree. Reads `/proc` only.
pub(crate) fn check(members: &[Member<'_>], found: &mut Refusals) -> Result<(), DumpError> {
    fds::check(members, found)?;
    super::fdkinds::stored::check_outside(members, found);
    memory::check(members, found)?;
    sysv::check(members, found)
}

/// Marks what each process shares with an earlier one of `procs` (root first, tree order).
/// The processes are frozen; reads only.
pub(crate) fn link(procs: &mut [ProcessImage]) -> Result<(), DumpError> {
    fds::link(procs)?;
    memory::link(procs)
}
