//! TCP and UDP sockets, IPv4 and IPv6, that are not connected: listening TCP, bound UDP.

use serde::{Deserialize, Serialize};

/// An inet socket's state: filled in by the TCP/UDP work (issue 14).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetSocket {}
