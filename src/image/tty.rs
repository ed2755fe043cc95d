//! Terminals: pty masters and slaves, and the terminal a process was started on.

use serde::{Deserialize, Serialize};

/// A terminal fd: filled in by the terminals work (issue 14).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyImage {}
