//! Seccomp filters of a process's threads.

use serde::{Deserialize, Serialize};

/// The seccomp filters of a process's threads: filled in by the seccomp work (issue 14).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompImage {}
