//! SysV IPC objects a tree uses: shared memory segments, semaphore sets, message queues.

use serde::{Deserialize, Serialize};

/// The SysV IPC objects of a set: filled in by the SysV IPC work (issue 13).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcImage {}
