//! Event notification fds: epoll instances and inotify instances.

use serde::{Deserialize, Serialize};

/// An epoll instance: every registered target, in the order the kernel lists them (its
/// fdinfo's `tfd:` lines).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollImage {
    pub targets: Vec<EpollTarget>,
}

/// One registration of an epoll instance: the fd number it was made with (the target's
/// number in the process, whose fd there is that very file: the dump checks it), its event
/// mask as the kernel keeps it (with `EPOLLET`, `EPOLLONESHOT`, `EPOLLEXCLUSIVE`,
/// `EPOLLWAKEUP`; a one-shot registration that fired keeps only those flags) and its data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollTarget {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

impl EpollTarget {
    /// A one-shot registration that fired: disabled (no event bit left) until the program
    /// re-arms it with `EPOLL_CTL_MOD`.
    pub fn fired(&self) -> bool {
        self.events & libc::EPOLLONESHOT as u32 != 0 && self.events & !PRIVATE_BITS == 0
    }
}

/// The bits of a registration the kernel keeps when a one-shot one fires (`EP_PRIVATE_BITS`
/// of fs/eventpoll.c).
pub const PRIVATE_BITS: u32 =
    (libc::EPOLLWAKEUP | libc::EPOLLONESHOT | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32;

/// An inotify instance: its watches, and how many bytes of events were queued unread at the
/// dump (not carried: a restore drops them with a warning).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyImage {
    pub watches: Vec<InotifyWatch>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queued_bytes: u64,
}

/// One watch: its watch descriptor, the path of the inode it watches (found from the
/// watch's file handle at the dump) with that inode's identity, and its mask as
/// `inotify_add_watch` takes it (events, `IN_ONESHOT`, `IN_EXCL_UNLINK`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    pub wd: i32,
    pub path: String,
    pub mask: u32,
    pub dev: u64,
    pub ino: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
