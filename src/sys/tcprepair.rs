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
//!
//! In repair mode a socket sends nothing: `connect` makes it established without a handshake,
//! data written to the send queue counts as sent but is not transmitted, data written to the
//! receive queue is queued as if it came from the peer, and `close` drops the connection
//! silently. `TCP_REPAIR_ON` also lets the socket bind a port others hold (`SK_FORCE_REUSE`):
//! an accepted connection shares its listener's port.

use super::{last_err, Result, SysError};
use linux_raw_sys::net as uapi;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// `TCPOPT_MAXSEG`, `TCPOPT_WINDOW`, `TCPOPT_SACK_PERM`, `TCPOPT_TIMESTAMP`: the option
/// codes `TCP_REPAIR_OPTIONS` takes (include/net/tcp.h; neither libc nor linux-raw-sys has
/// them, the uapi does not export them).
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

/// `SO_SNDBUFFORCE`, `SO_RCVBUFFORCE` (socket(7)): a buffer size beyond `wmem_max`/`rmem_max`
/// (`CAP_NET_ADMIN`), as an autotuned connection's may be; from linux-raw-sys (libc lacks
/// them on x86_64).
pub const SO_SNDBUFFORCE: i32 = uapi::SO_SNDBUFFORCE as i32;
pub const SO_RCVBUFFORCE: i32 = uapi::SO_RCVBUFFORCE as i32;

/// Which queue of a socket in repair mode `TCP_QUEUE_SEQ`, `recv` and `send` work on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// What the peer sent and the process has not read yet.
    Recv,
    /// What the process wrote and the peer has not acknowledged yet (sent or not).
    Send,
}

impl Queue {
    fn id(self) -> i32 {
        match self {
            Queue::Recv => uapi::TCP_RECV_QUEUE as i32,
            Queue::Send => uapi::TCP_SEND_QUEUE as i32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Queue::Recv => "receive",
            Queue::Send => "send",
        }
    }
}

/// What `TCP_INFO` tells of a connection that repair mode needs: its state and the options
/// negotiated at the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// `tcpi_state` (include/net/tcp_states.h).
    pub state: u8,
    /// Timestamps (`TCPI_OPT_TIMESTAMPS`).
    pub timestamps: bool,
    /// SACK (`TCPI_OPT_SACK`).
    pub sack: bool,
    /// Window scaling (`TCPI_OPT_WSCALE`), with the scales each way.
    pub wscale: bool,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
}

/// `struct tcp_repair_window` (linux/tcp.h): the windows of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

fn tcp_setsockopt<T>(fd: BorrowedFd<'_>, opt: i32, v: &T, what: &str) -> Result<()> {
    // SAFETY: setsockopt reads `size_of::<T>()` bytes of `v`, a live value.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last_err(what.to_string()));
    }
    Ok(())
}

/// `getsockopt(IPPROTO_TCP, opt)` into a `T` (plain old data); errors unless the kernel wrote
/// exactly `size_of::<T>()` bytes.
fn tcp_getsockopt<T: Copy + Default>(fd: BorrowedFd<'_>, opt: i32, what: &str) -> Result<T> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which we own, and the length
    // into `len`; T is plain old data, valid for any bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            opt,
            (&mut v as *mut T).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(last_err(what.to_string()));
    }
    if len as usize != std::mem::size_of::<T>() {
        return Err(SysError::Invalid(format!(
            "{what}: the kernel wrote {len} bytes, not {}",
            std::mem::size_of::<T>()
        )));
    }
    Ok(v)
}

/// Switches repair mode on: `setsockopt(TCP_REPAIR, TCP_REPAIR_ON)`, tcp(7). Needs
/// `CAP_NET_ADMIN`; the socket must be closed or established.
pub fn repair_on(fd: BorrowedFd<'_>) -> Result<()> {
    tcp_setsockopt(
        fd,
        libc::TCP_REPAIR,
        &(uapi::TCP_REPAIR_ON as i32),
        "setsockopt(TCP_REPAIR, on)",
    )
}

/// Switches repair mode off: `setsockopt(TCP_REPAIR, TCP_REPAIR_OFF)`, tcp(7), which sends
/// the peer a window probe (its answer tells the socket the peer's window and what it
/// acknowledged), or with `probe` false `TCP_REPAIR_OFF_NO_WP`, which sends nothing (for a
/// connection read and left as it was).
pub fn repair_off(fd: BorrowedFd<'_>, probe: bool) -> Result<()> {
    let v = if probe {
        uapi::TCP_REPAIR_OFF as i32
    } else {
        uapi::TCP_REPAIR_OFF_NO_WP
    };
    tcp_setsockopt(fd, libc::TCP_REPAIR, &v, "setsockopt(TCP_REPAIR, off)")
}

/// Whether the socket is in repair mode: `getsockopt(TCP_REPAIR)`, tcp(7).
pub fn in_repair(fd: BorrowedFd<'_>) -> Result<bool> {
    Ok(tcp_getsockopt::<i32>(fd, libc::TCP_REPAIR, "getsockopt(TCP_REPAIR)")? != 0)
}

/// Selects the queue the next `TCP_QUEUE_SEQ`, `recv` and `send` work on:
/// `setsockopt(TCP_REPAIR_QUEUE)`, tcp(7).
pub fn select_queue(fd: BorrowedFd<'_>, q: Queue) -> Result<()> {
    tcp_setsockopt(
        fd,
        libc::TCP_REPAIR_QUEUE,
        &q.id(),
        &format!("setsockopt(TCP_REPAIR_QUEUE, {})", q.name()),
    )
}

/// The sequence number after the last byte of queue `q` (the receive queue: `rcv_nxt`; the
/// send queue: `write_seq`): `TCP_REPAIR_QUEUE` then `getsockopt(TCP_QUEUE_SEQ)`, tcp(7).
pub fn queue_seq(fd: BorrowedFd<'_>, q: Queue) -> Result<u32> {
    select_queue(fd, q)?;
    tcp_getsockopt(
        fd,
        libc::TCP_QUEUE_SEQ,
        &format!("getsockopt(TCP_QUEUE_SEQ, {})", q.name()),
    )
}

/// Sets the sequence number queue `q` starts at (before `connect` in repair mode):
/// `TCP_REPAIR_QUEUE` then `setsockopt(TCP_QUEUE_SEQ)`, tcp(7).
pub fn set_queue_seq(fd: BorrowedFd<'_>, q: Queue, seq: u32) -> Result<()> {
    select_queue(fd, q)?;
    tcp_setsockopt(
        fd,
        libc::TCP_QUEUE_SEQ,
        &seq,
        &format!("setsockopt(TCP_QUEUE_SEQ, {}, {seq})", q.name()),
    )
}

/// The connection's state and negotiated options: `getsockopt(TCP_INFO)`, tcp(7).
pub fn negotiated(fd: BorrowedFd<'_>) -> Result<Negotiated> {
    let mut ti = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ti`, which we own.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            ti.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(last_err("getsockopt(TCP_INFO)"));
    }
    if (len as usize) < 8 {
        return Err(SysError::Invalid(format!(
            "getsockopt(TCP_INFO): only {len} bytes"
        )));
    }
    // SAFETY: zeroed, then (partly) written by the kernel: every field is an integer.
    let ti = unsafe { ti.assume_init() };
    let o = u32::from(ti.tcpi_options);
    let wscale = o & uapi::TCPI_OPT_WSCALE != 0;
    Ok(Negotiated {
        state: ti.tcpi_state,
        timestamps: o & uapi::TCPI_OPT_TIMESTAMPS != 0,
        sack: o & uapi::TCPI_OPT_SACK != 0,
        wscale,
        // Bitfields `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4`: the first is the low nibble.
        snd_wscale: if wscale {
            ti.tcpi_snd_rcv_wscale & 0xf
        } else {
            0
        },
        rcv_wscale: if wscale {
            ti.tcpi_snd_rcv_wscale >> 4
        } else {
            0
        },
    })
}

/// The MSS clamp (in repair mode `getsockopt(TCP_MAXSEG)` reads `mss_clamp`, what the peer
/// announced), tcp(7).
pub fn mss_clamp(fd: BorrowedFd<'_>) -> Result<u32> {
    tcp_getsockopt(fd, libc::TCP_MAXSEG, "getsockopt(TCP_MAXSEG)")
}

/// The connection's timestamp clock (with its offset): `getsockopt(TCP_TIMESTAMP)`, tcp(7).
pub fn timestamp(fd: BorrowedFd<'_>) -> Result<u32> {
    tcp_getsockopt(fd, libc::TCP_TIMESTAMP, "getsockopt(TCP_TIMESTAMP)")
}

/// Sets the timestamp clock so the peer sees it carry on: `setsockopt(TCP_TIMESTAMP)`
/// (repair mode), tcp(7).
pub fn set_timestamp(fd: BorrowedFd<'_>, ts: u32) -> Result<()> {
    tcp_setsockopt(fd, libc::TCP_TIMESTAMP, &ts, "setsockopt(TCP_TIMESTAMP)")
}

/// The windows: `getsockopt(TCP_REPAIR_WINDOW)` (repair mode), tcp(7).
pub fn window(fd: BorrowedFd<'_>) -> Result<Window> {
    let w: WindowRaw =
        tcp_getsockopt(fd, libc::TCP_REPAIR_WINDOW, "getsockopt(TCP_REPAIR_WINDOW)")?;
    let w = w.0;
    Ok(Window {
        snd_wl1: w.snd_wl1,
        snd_wnd: w.snd_wnd,
        max_window: w.max_window,
        rcv_wnd: w.rcv_wnd,
        rcv_wup: w.rcv_wup,
    })
}

/// `struct tcp_repair_window` with a Default, for [`tcp_getsockopt`].
#[derive(Clone, Copy)]
struct WindowRaw(uapi::tcp_repair_window);

impl Default for WindowRaw {
    fn default() -> Self {
        WindowRaw(uapi::tcp_repair_window {
            snd_wl1: 0,
            snd_wnd: 0,
            max_window: 0,
            rcv_wnd: 0,
            rcv_wup: 0,
        })
    }
}

/// Sets the windows (after the queues are filled): `setsockopt(TCP_REPAIR_WINDOW)` (repair
/// mode), tcp(7).
pub fn set_window(fd: BorrowedFd<'_>, w: &Window) -> Result<()> {
    let raw = uapi::tcp_repair_window {
        snd_wl1: w.snd_wl1,
        snd_wnd: w.snd_wnd,
        max_window: w.max_window,
        rcv_wnd: w.rcv_wnd,
        rcv_wup: w.rcv_wup,
    };
    tcp_setsockopt(
        fd,
        libc::TCP_REPAIR_WINDOW,
        &raw,
        "setsockopt(TCP_REPAIR_WINDOW)",
    )
}

/// Sets what the handshake negotiated (after `connect` in repair mode):
/// `setsockopt(TCP_REPAIR_OPTIONS)` with the MSS clamp, and SACK, window scales and
/// timestamps where `n` has them, tcp(7).
pub fn set_negotiated(fd: BorrowedFd<'_>, n: &Negotiated, mss: u32) -> Result<()> {
    let opt = |code, val| uapi::tcp_repair_opt {
        opt_code: code,
        opt_val: val,
    };
    let mut opts = Vec::with_capacity(4);
    if n.sack {
        opts.push(opt(TCPOPT_SACK_PERM, 0));
    }
    if n.wscale {
        opts.push(opt(
            TCPOPT_WINDOW,
            u32::from(n.snd_wscale) | (u32::from(n.rcv_wscale) << 16),
        ));
    }
    if n.timestamps {
        opts.push(opt(TCPOPT_TIMESTAMP, 0));
    }
    opts.push(opt(TCPOPT_MAXSEG, mss));
    let len = std::mem::size_of_val(opts.as_slice());
    // SAFETY: setsockopt reads `len` bytes: the array of `tcp_repair_opt` we own.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_OPTIONS,
            opts.as_ptr().cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last_err("setsockopt(TCP_REPAIR_OPTIONS)"));
    }
    Ok(())
}

fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong, what: &str) -> Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int into `v`, which we own.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v) };
    if r < 0 {
        return Err(last_err(what.to_string()));
    }
    Ok(v.max(0) as u32)
}

/// Bytes in the send queue, sent or not (`write_seq - snd_una`): `ioctl(SIOCOUTQ)`, tcp(7).
pub fn outq(fd: BorrowedFd<'_>) -> Result<u32> {
    // SIOCOUTQ is TIOCOUTQ (linux/sockios.h).
    ioctl_int(fd, libc::TIOCOUTQ as libc::c_ulong, "ioctl(SIOCOUTQ)")
}

/// Bytes in the send queue not sent yet (`write_seq - snd_nxt`): `ioctl(SIOCOUTQNSD)`, tcp(7).
pub fn outq_unsent(fd: BorrowedFd<'_>) -> Result<u32> {
    ioctl_int(fd, libc::SIOCOUTQNSD, "ioctl(SIOCOUTQNSD)")
}

/// Bytes in the receive queue not read yet: `ioctl(SIOCINQ)`, tcp(7).
pub fn inq(fd: BorrowedFd<'_>) -> Result<u32> {
    // SIOCINQ is FIONREAD (linux/sockios.h).
    ioctl_int(fd, libc::FIONREAD as libc::c_ulong, "ioctl(SIOCINQ)")
}

/// The `len` bytes of queue `q`, left in it: `TCP_REPAIR_QUEUE` then
/// `recv(MSG_PEEK | MSG_DONTWAIT)` (repair mode), recv(2). One byte more is asked for: a queue
/// that does not hold exactly `len` bytes is an error (it changed since it was measured).
pub fn peek_queue(fd: BorrowedFd<'_>, q: Queue, len: u32) -> Result<Vec<u8>> {
    select_queue(fd, q)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; len as usize + 1];
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which we own.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(last_err(format!(
            "recv(MSG_PEEK) of the {} queue",
            q.name()
        )));
    }
    if n as usize != len as usize {
        return Err(SysError::Invalid(format!(
            "the {} queue holds {n} bytes, not the {len} measured: it changed while read",
            q.name()
        )));
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// Writes `data` whole with `send(MSG_DONTWAIT)`, send(2): in repair mode into the queue
/// selected ([`select_queue`]; the send queue takes it as sent, not transmitted), else
/// for the kernel to transmit. A chunk the kernel refuses for want of memory (a repaired
/// receive queue is one linear buffer per call) is split in halves, as CRIU's soccr does.
pub fn send_all(fd: BorrowedFd<'_>, data: &[u8], what: &str) -> Result<()> {
    let mut off = 0;
    let mut max = data.len().max(1);
    while off < data.len() {
        let chunk = (data.len() - off).min(max);
        // SAFETY: send reads `chunk` bytes of `data` from `off`, in bounds.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data[off..].as_ptr().cast(),
                chunk,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            if n < 0 && e.raw_os_error() == Some(libc::ENOMEM) && max > 1024 {
                max /= 2;
                continue;
            }
            return Err(super::io_err(
                format!("send of {what} ({} of {} bytes written)", off, data.len()),
                e,
            ));
        }
        off += n as usize;
    }
    Ok(())
}

/// `connect(fd, addr)`, connect(2): in repair mode the socket becomes established with the
/// sequence numbers set, without a packet.
pub fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> Result<()> {
    let sa = super::inetsock::sockaddr_bytes(addr);
    // SAFETY: connect reads `sa.len()` bytes of a sockaddr we laid out.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            sa.as_ptr().cast(),
            sa.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last_err(format!("connect to {addr} in repair mode")));
    }
    Ok(())
}

/// Sockets in repair mode, each a copy haul holds (`pidfd_getfd` of the target's, or of a
/// socket a restore made). Dropping it turns repair off on every one ([`Repairing::resume`]),
/// except a restore's ([`Repairing::push_restored`]), closed still in repair mode.
#[derive(Debug, Default)]
pub struct Repairing {
    socks: Vec<Held>,
    /// A restore's: repair goes off with a window probe (the peer answers with what it
    /// acknowledged and its window); dropped without `resume`, the sockets are closed still
    /// in repair mode (a failed restore sends the peer nothing).
    restore: bool,
}

/// One socket held in repair mode, and what a restore does once repair is off.
#[derive(Debug)]
struct Held {
    sock: OwnedFd,
    /// Bytes the process wrote that were never sent: sent now, once every socket of the
    /// restore is out of repair mode (its peer may be one of them).
    unsent: Vec<u8>,
    /// Options set after those bytes (`level`, `opt`, value): the buffer sizes (a small send
    /// buffer set earlier could refuse them) and `SO_REUSEADDR` (repair mode resets it).
    after: Vec<(i32, i32, Vec<u8>)>,
}

impl Repairing {
    /// Holds `sock`, which the caller has switched into repair mode.
    pub fn push(&mut self, sock: OwnedFd) {
        self.socks.push(Held {
            sock,
            unsent: Vec::new(),
            after: Vec::new(),
        });
    }

    /// Holds `sock`, a socket a restore made in repair mode: on [`Repairing::resume`] repair
    /// goes off with a window probe, then `unsent` is sent and the options `after` are set;
    /// dropped without `resume`, every socket held is closed still in repair mode.
    pub fn push_restored(
        &mut self,
        sock: OwnedFd,
        unsent: Vec<u8>,
        after: Vec<(i32, i32, Vec<u8>)>,
    ) {
        self.restore = true;
        self.socks.push(Held {
            sock,
            unsent,
            after,
        });
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
        // Every socket leaves repair mode before any sends: both ends of a connection may be
        // here, and a segment must not reach an end still being made.
        for h in &self.socks {
            if let Err(e) = repair_off(h.sock.as_fd(), self.restore) {
                tracing::error!(error = %e, "a TCP socket could not leave repair mode");
            }
        }
        for h in self.socks.drain(..) {
            if !h.unsent.is_empty() {
                if let Err(e) = send_all(h.sock.as_fd(), &h.unsent, "the unsent send queue") {
                    tracing::error!(error = %e, "a restored TCP socket lost what it had not sent");
                }
            }
            for (level, opt, v) in &h.after {
                if let Err(e) = super::inetsock::set_opt(h.sock.as_fd(), *level, *opt, v) {
                    tracing::error!(error = %e, "a restored TCP socket lost an option");
                }
            }
        }
    }
}

impl Drop for Repairing {
    fn drop(&mut self) {
        if self.restore {
            self.socks.clear();
        } else {
            self.resume_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsFd, OwnedFd};
    use std::time::Duration;

    /// What repair mode reads of one end.
    #[derive(Clone, Debug)]
    struct State {
        n: Negotiated,
        mss: u32,
        ts: u32,
        w: Window,
        recv_seq: u32,
        send_seq: u32,
        recv_queue: Vec<u8>,
        send_queue: Vec<u8>,
        unsent: u32,
    }

    /// Switches `fd` into repair mode and reads it (left in repair mode).
    fn read(fd: BorrowedFd<'_>) -> State {
        repair_on(fd).unwrap();
        assert!(in_repair(fd).unwrap());
        let n = negotiated(fd).unwrap();
        assert_eq!(n.state, 1);
        let (iq, oq) = (inq(fd).unwrap(), outq(fd).unwrap());
        State {
            n,
            mss: mss_clamp(fd).unwrap(),
            ts: timestamp(fd).unwrap(),
            w: window(fd).unwrap(),
            recv_seq: queue_seq(fd, Queue::Recv).unwrap(),
            send_seq: queue_seq(fd, Queue::Send).unwrap(),
            recv_queue: peek_queue(fd, Queue::Recv, iq).unwrap(),
            send_queue: peek_queue(fd, Queue::Send, oq).unwrap(),
            unsent: outq_unsent(fd).unwrap(),
        }
    }

    /// A new socket made again as `st` says, at `local` connected to `peer`, still in repair
    /// mode, held by `g` with its unsent bytes.
    fn make(st: &State, local: SocketAddr, peer: SocketAddr, g: &mut Repairing) -> OwnedFd {
        let fd = crate::sys::inetsock::fresh(libc::AF_INET, true).unwrap();
        let f = fd.as_fd();
        repair_on(f).unwrap();
        crate::sys::inetsock::bind(f, &local).unwrap();
        let sent = st.send_queue.len() - st.unsent as usize;
        set_queue_seq(
            f,
            Queue::Recv,
            st.recv_seq.wrapping_sub(st.recv_queue.len() as u32),
        )
        .unwrap();
        set_queue_seq(
            f,
            Queue::Send,
            st.send_seq.wrapping_sub(st.send_queue.len() as u32),
        )
        .unwrap();
        connect(f, &peer).unwrap();
        set_negotiated(f, &st.n, st.mss).unwrap();
        if st.n.timestamps {
            set_timestamp(f, st.ts).unwrap();
        }
        select_queue(f, Queue::Recv).unwrap();
        send_all(f, &st.recv_queue, "receive queue").unwrap();
        select_queue(f, Queue::Send).unwrap();
        send_all(f, &st.send_queue[..sent], "send queue").unwrap();
        set_window(f, &st.w).unwrap();
        g.push_restored(
            fd.try_clone().unwrap(),
            st.send_queue[sent..].to_vec(),
            Vec::new(),
        );
        fd
    }

    /// A loopback connection whose ends each hold 11 unread bytes, read in repair mode, their
    /// fds closed silently; returns (server state and address, client state and address).
    fn read_pair() -> ((State, SocketAddr), (State, SocketAddr)) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"unread by s").unwrap();
        s.write_all(b"unread by c").unwrap();
        let sfd: OwnedFd = s.try_clone().unwrap().into();
        let cfd: OwnedFd = c.try_clone().unwrap().into();
        for fd in [&sfd, &cfd] {
            let t = std::time::Instant::now();
            while inq(fd.as_fd()).unwrap() < 11 {
                assert!(t.elapsed().as_secs() < 10);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let (saddr, caddr) = (s.local_addr().unwrap(), c.local_addr().unwrap());
        let ss = read(sfd.as_fd());
        let cs = read(cfd.as_fd());
        // Every fd of both ends closed in repair mode: no FIN, no RST.
        drop((s, c, sfd, cfd, l));
        ((ss, saddr), (cs, caddr))
    }

    fn stream(fd: OwnedFd) -> TcpStream {
        let s = TcpStream::from(fd);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// A connection over loopback with bytes unread both ways: read in repair mode, made
    /// again on new sockets with the same 4-tuple, and both ends carry on.
    #[test]
    fn a_connection_read_in_repair_mode_is_made_again_and_carries_on() {
        let ((ss, saddr), (cs, caddr)) = read_pair();
        assert_eq!(ss.recv_queue, b"unread by s");
        assert!(ss.send_queue.is_empty());
        let mut g = Repairing::default();
        let s2 = make(&ss, saddr, caddr, &mut g);
        let c2 = make(&cs, caddr, saddr, &mut g);
        g.resume();
        assert!(!in_repair(s2.as_fd()).unwrap());
        let (mut s2, mut c2) = (stream(s2), stream(c2));
        let mut buf = [0u8; 11];
        s2.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"unread by s");
        c2.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"unread by c");
        c2.write_all(b"after").unwrap();
        let mut b5 = [0u8; 5];
        s2.read_exact(&mut b5).unwrap();
        assert_eq!(&b5, b"after");
        assert_eq!(s2.local_addr().unwrap(), saddr);
        assert_eq!(s2.peer_addr().unwrap(), caddr);
    }

    /// A send queue with a part sent but not acknowledged (queued as sent, so retransmitted)
    /// and a part never sent (sent once out of repair mode): the peer gets both, in order.
    #[test]
    fn the_sent_and_the_unsent_part_of_a_send_queue_both_reach_the_peer() {
        let ((mut ss, saddr), (mut cs, caddr)) = read_pair();
        // As if s had not received "unread by s" yet: still in c's send queue, sent but not
        // acknowledged, followed by "+more" never sent.
        ss.recv_seq = ss.recv_seq.wrapping_sub(11);
        ss.recv_queue.clear();
        ss.w.rcv_wup = ss.recv_seq;
        cs.send_queue = b"unread by s+more".to_vec();
        cs.send_seq = cs.send_seq.wrapping_add(5);
        cs.unsent = 5;
        let mut g = Repairing::default();
        let s2 = make(&ss, saddr, caddr, &mut g);
        let c2 = make(&cs, caddr, saddr, &mut g);
        g.resume();
        let (mut s2, mut c2) = (stream(s2), stream(c2));
        let mut buf = [0u8; 16];
        s2.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"unread by s+more");
        let mut b11 = [0u8; 11];
        c2.read_exact(&mut b11).unwrap();
        assert_eq!(&b11, b"unread by c");
    }

    /// A restore's guard dropped without `resume` closes its sockets still in repair mode.
    #[test]
    fn a_restore_guard_dropped_closes_silently() {
        let ((ss, saddr), (cs, caddr)) = read_pair();
        let mut g = Repairing::default();
        let s2 = make(&ss, saddr, caddr, &mut g);
        drop(g);
        assert!(in_repair(s2.as_fd()).unwrap(), "left in repair mode");
        drop(s2);
        let _ = cs;
    }
}
