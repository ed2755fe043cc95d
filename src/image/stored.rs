//! Files whose contents the image carries: memfds, deleted-but-open files, `/dev/shm` files.

use serde::{Deserialize, Serialize};

/// A stored file: filled in by the memfd / deleted files work (issue 14).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {}
