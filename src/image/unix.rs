//! Unix sockets other than unbound pairs ([`super::FdKind::UnixPair`]): bound to a path or an
//! abstract name, listening, or connected to such a socket of the checkpoint.

use serde::{Deserialize, Serialize};

/// A unix socket's state: filled in by the unix sockets work (issue 14).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSocket {}
