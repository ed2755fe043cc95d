//! Unix sockets other than unbound pairs ([`super::FdKind::UnixPair`]): bound to a path or an
//! abstract name, listening, or connected to such a socket of the checkpoint.

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A unix socket that is not one end of an unbound pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSocket {
    /// Its inode (`socket:[ino]`).
    pub ino: u64,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub sock_type: i32,
    /// The name it was bound to: a path (absolute), or an abstract name starting with a NUL
    /// byte. An accepted socket has its listener's (`accepted`), not one of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Vec<u8>>,
    /// The socket file a path bind made, as it was at the dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<SocketFile>,
    /// Listening, with its backlog.
    #[serde(default, skip_serializing_if = "is_false")]
    pub listening: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backlog: u32,
    /// Accepted from a listener bound to `name` (the other end, `peer`, connected to it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub accepted: bool,
    /// The inode of the socket it is connected to (0: none), held in the checkpoint, and
    /// that socket's name (a stream client's: its listener's; a datagram socket's: the
    /// address it sends to).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub peer: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_name: Option<Vec<u8>>,
    /// A datagram socket connected to a socket outside the checkpoint, bound to `peer_name`
    /// (a logging socket such as `/dev/log`): a restore connects it to that name again, and
    /// refuses, before anything is made, if nothing is bound there.
    #[serde(default, skip_serializing_if = "is_false")]
    pub external_peer: bool,
    /// An unbound stream connection whose peer was closed (the kernel shows no peer, and shut
    /// it down both ways): made again as a socket pair whose other end is closed once what
    /// waited in it is sent.
    #[serde(default, skip_serializing_if = "is_false")]
    pub peer_closed: bool,
    /// `sk_shutdown`: RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shutdown: u8,
    #[serde(default, skip_serializing_if = "SockOpts::is_unset")]
    pub opts: SockOpts,
    /// What waits to be read: a stream's bytes in one message, or one per datagram or
    /// record, with the name each datagram came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<Message>,
}

/// The socket file of a path-bound socket at the dump: a restore binds the path again
/// (unlinking this very file, left behind when the socket died) and gives the new file the
/// same owner and mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketFile {
    pub dev: u64,
    pub ino: u64,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

/// One queued message (a stream's bytes, a record, a datagram).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub data: Vec<u8>,
    /// The name a datagram was sent from (None: an unbound sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<u8>>,
}

/// The socket options a restore sets again (socket(7), unix(7)). Zero everywhere is "not
/// read" (an older image): nothing is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockOpts {
    /// `SO_PASSCRED`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub passcred: bool,
    /// `SO_SNDBUF` and `SO_RCVBUF` as getsockopt reads them (twice what was set).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sndbuf: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rcvbuf: i32,
    /// `SO_PEEK_OFF` (-1: off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub peek_off: i32,
}

impl SockOpts {
    /// Not read (an older image): a restore sets nothing.
    pub fn is_unset(&self) -> bool {
        *self == SockOpts::default()
    }
}
