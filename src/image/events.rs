//! Event notification fds: epoll instances and inotify instances.

use serde::{Deserialize, Serialize};

/// An epoll instance: filled in by the epoll work (issue 14).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollImage {}

/// An inotify instance: filled in by the inotify work (issue 14).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyImage {}
