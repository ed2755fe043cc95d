//! TCP repair mode (tcp(7) `TCP_REPAIR`, `TCP_REPAIR_QUEUE`, `TCP_QUEUE_SEQ`,
//! `TCP_REPAIR_OPTIONS`, `TCP_REPAIR_WINDOW`; the `SIOCOUTQ`/`SIOCOUTQNSD`/`SIOCINQ` ioctls):
//! how haul reads an established connection's state without disturbing it and makes it again
//! with the same sequence numbers and queues (issue #15).
//!
//! [`Repairing`] is the guard of the sockets haul switched into repair mode: a frozen tree
//! holds one from the capture of its established sockets until it is thawed (repair off, so
//! the process never runs on a socket in repair mode) or killed (the sockets are closed still
//! in repair mode, so the kernel sends neither FIN nor RST to the peer); a restore holds one
//! until its processes are let go.

use std::os::fd::OwnedFd;

/// Sockets in repair mode, each a copy haul holds (`pidfd_getfd` of the target's, or of a
/// socket a restore made). Dropping it turns repair off on every one ([`Repairing::resume`]).
#[derive(Debug, Default)]
pub struct Repairing {
    socks: Vec<OwnedFd>,
}

impl Repairing {
    /// Holds `sock`, which the caller has switched into repair mode.
    pub fn push(&mut self, sock: OwnedFd) {
        self.socks.push(sock);
    }

    /// Whether it holds no socket.
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Turns repair mode off on every socket held and lets them go: the connections carry on
    /// from the state they are in. Errors are logged (the process must be let go regardless).
    pub fn resume(mut self) {
        self.resume_all();
    }

    /// Closes haul's copies still in repair mode: used once the processes that held the
    /// sockets are killed, so their close sends nothing to the peer.
    pub fn close_silently(mut self) {
        self.socks.clear();
    }

    fn resume_all(&mut self) {
        // Filled by the TCP repair work (issue #15).
        self.socks.clear();
    }
}

impl Drop for Repairing {
    fn drop(&mut self) {
        self.resume_all();
    }
}
