//! TCP and UDP sockets, IPv4 and IPv6: listening TCP, bound UDP (also connected to a peer:
//! UDP has no connection to lose), and established TCP connections as repair mode read them
//! ([`TcpConn`]).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The transport of an inet socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
}

impl Transport {
    /// "TCP" or "UDP", as messages name them.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        }
    }
}

/// One socket option that differs from a fresh socket's, as `getsockopt(2)` returned it
/// (`value` holds its bytes: an int, a `struct linger`, a `struct timeval`, a device name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockOpt {
    /// Its name, for messages (`SO_REUSEADDR`, `TCP_NODELAY`, ...).
    pub name: String,
    pub level: i32,
    pub opt: i32,
    /// What `getsockopt` wrote. For `SO_RCVBUF`/`SO_SNDBUF` the doubled value the kernel
    /// reports: a restore sets half of it.
    pub value: Vec<u8>,
}

impl SockOpt {
    /// The value as an int (0 when it is not one).
    pub fn int(&self) -> i32 {
        self.value
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_ne_bytes)
    }
}

/// An inet socket's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: i32,
    pub transport: Transport,
    /// The address and port it is bound to (None: not bound).
    pub local: Option<SocketAddr>,
    /// Listening, with this backlog (`listen(2)`'s, as the kernel keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u32>,
    /// A UDP socket's peer (`connect(2)`), or an established TCP connection's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    /// The options that differ from a fresh socket's of the same kind, in the order a restore
    /// sets them (all before `bind`). `IPV6_V6ONLY` of an IPv6 socket is always here.
    #[serde(default)]
    pub options: Vec<SockOpt>,
    /// What the dump dropped: connections not yet accepted (a listener, with
    /// `dump.tcp_pending = "drop"`), or bytes of queued datagrams (UDP).
    #[serde(default)]
    pub dropped: u64,
    /// An established TCP connection (its peer in `peer`), as repair mode read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<TcpConn>,
}

/// The state of an established TCP connection that a restore needs to make it again in
/// repair mode, so that its peer notices nothing (issue #15).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConn {
    /// The kernel's TCP state (`TCP_ESTABLISHED`, ...; include/net/tcp_states.h).
    pub state: u8,
    /// The sequence number after the last byte of the send queue (`write_seq`).
    pub send_seq: u32,
    /// The sequence number after the last byte received (`rcv_nxt`).
    pub recv_seq: u32,
    /// The send queue: what the peer has not acknowledged, sent or not, in order. The last
    /// `unsent` bytes were never sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` were never sent.
    #[serde(default)]
    pub unsent: u32,
    /// What the peer sent and the process has not read yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recv_queue: Vec<u8>,
    /// The MSS clamp (what the peer announced at the handshake).
    pub mss: u32,
    /// Window scaling was negotiated, with these scales (sending, receiving).
    pub wscale: bool,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// SACK was negotiated.
    pub sack: bool,
    /// Timestamps were negotiated, and the connection's timestamp clock.
    pub timestamps: bool,
    pub timestamp: u32,
    /// The windows (`struct tcp_repair_window`).
    pub window: TcpWindow,
}

/// The windows of a connection (`struct tcp_repair_window`, linux/tcp.h).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// The network lock a kill-mode dump left in place for the restore to release (issue #15).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The nftables table holding the lock's rules.
    pub table: String,
}

impl InetSocket {
    /// How messages name it: `TCP 127.0.0.1:8080 (listening)`, `UDP [::1]:5353`.
    pub fn describe(&self) -> String {
        let mut s = self.transport.name().to_string();
        match self.local {
            Some(a) => s.push_str(&format!(" {a}")),
            None => s.push_str(" (not bound)"),
        }
        if let Some(p) = self.peer {
            s.push_str(&format!(" -> {p}"));
        }
        if self.backlog.is_some() {
            s.push_str(" (listening)");
        }
        s
    }

    /// The option named `name`, if recorded.
    pub fn option(&self, name: &str) -> Option<&SockOpt> {
        self.options.iter().find(|o| o.name == name)
    }

    /// Whether option `name` was set (recorded and non-zero).
    pub fn flag(&self, name: &str) -> bool {
        self.option(name).is_some_and(|o| o.int() != 0)
    }
}
