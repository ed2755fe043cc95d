//! The network lock (issue #15): while a process with established TCP connections to peers
//! outside the checkpoint is frozen, and until its restored copy runs, the packets of those
//! connections are dropped (the peer retransmits), so the kernel neither answers them with a
//! RST (no socket) nor lets the socket's state drift from the image.
//!
//! `[network] lock = "nftables"` (the default) or `"none"`. A connection whose both ends are in
//! the checkpoint needs no lock: both ends are restored.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// How connections are locked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockMode {
    /// Packets of the locked connections are dropped by nftables rules haul adds and removes.
    #[default]
    Nftables,
    /// No lock: a peer that sends during the freeze may get a RST.
    None,
}

/// One connection to lock: the local and remote address and port, as the image has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Why a lock could not be taken or given back.
#[derive(Debug, thiserror::Error)]
pub enum NetLockError {
    #[error("the network lock: {0}")]
    Other(String),
}

/// A held lock: released when dropped.
#[derive(Debug)]
pub struct NetLock {
    _private: (),
}

impl NetLock {
    /// Gives the lock back: the packets of its connections flow again.
    pub fn release(self) {}

    /// Keeps the lock after the process holding the connections was killed (a kill-mode
    /// dump): it holds until a restore of the set releases it.
    pub fn keep(self) -> Result<(), NetLockError> {
        Ok(())
    }
}
