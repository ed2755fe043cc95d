//! What the processes of a tree share, as a restore builds it (issue #13): haul keeps its own
//! copy of every shared object a process of the tree made (an open file description, a
//! pipe's other end, a memory object), so that a later process gets the same object instead
//! of a new one. One [`Shared`] lives for the whole restore of a set; the processes are built
//! in tree order (root first, parents before children), so the first holder always comes
//! first. `fds.rs` keeps the file side, `memory.rs` the memory side; `sysv.rs` makes the SysV IPC
//! objects before any process exists.

mod fds;
mod memory;
pub(crate) mod sysv;

pub(crate) use fds::FdTable;
pub(crate) use memory::check_paths;
pub use memory::MemShareError;
pub(crate) use memory::{Holder, MemTable};
pub use sysv::SysvError;

/// What the processes built so far share with those still to come.
#[derive(Default)]
pub(crate) struct Shared {
    pub fds: FdTable,
    pub mem: MemTable,
    /// The memfds and deleted files of the set, with haul's copy of each one made so far.
    pub stored: super::stored::StoredTable,
    /// The unix sockets of the set made so far (haul's copies, by inode).
    pub unix: super::unix::UnixTable,
    /// The terminals made so far, and where an outside one goes (`restore::tty`).
    pub tty: super::tty::Ttys,
    /// The established TCP sockets made so far, still in repair mode until the tree runs.
    pub tcp: crate::sys::tcprepair::Repairing,
}
