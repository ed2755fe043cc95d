//! The unix sockets step (issue #14): listeners, connections and datagram sockets made by
//! injected calls, then finished on haul's own copy of each socket. The fake hands back real
//! sockets of the test process (its pid is the test's), so that haul's copies, the options it
//! sets and the bytes it sends are real; image fd numbers are >= 900, far from those.

use super::*;
use crate::image::unix::{Message, SockOpts, SocketFile, UnixSocket};
use crate::restore::share::Shared;
use crate::sys::socket;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};

fn me() -> i32 {
    std::process::id() as i32
}

fn unix_fd(fd: i32, flags: i32, u: UnixSocket) -> FdImage {
    FdImage {
        fd,
        flags: flags as u32,
        kind: FdKind::Unix(u),
        same_as: None,
        locks: Vec::new(),
        inherited: None,
    }
}

/// The unix name in the sockaddr_un the call's argument 1 points at.
fn name_arg(c: &crate::sys::remote::fake::Call) -> Vec<u8> {
    let b = c.arg_bytes(1).expect("an address");
    assert_eq!(
        b.len() as u64,
        c.args[2],
        "the length passed is the address's"
    );
    assert_eq!(&b[..2], &(libc::AF_UNIX as u16).to_ne_bytes());
    b[2..].to_vec()
}

/// The name bytes of an abstract name `n`.
fn abstract_(n: &str) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(n.as_bytes());
    v
}

#[test]
fn a_listener_replaces_its_stale_socket_file_listens_and_gets_owner_mode_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sock");
    // The file the dumped listener left behind.
    drop(UnixListener::bind(&path).unwrap());
    let stale = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let real = socket::unix_socket(libc::SOCK_STREAM).unwrap();
    let raw = real.as_raw_fd();
    let name = path.as_os_str().as_encoded_bytes().to_vec();
    let u = UnixSocket {
        ino: 7000,
        sock_type: libc::SOCK_STREAM,
        name: Some(name.clone()),
        file: Some(SocketFile {
            dev: stale.dev(),
            ino: stale.ino(),
            uid: 0,
            gid: 0,
            mode: 0o640,
        }),
        listening: true,
        backlog: 5,
        opts: SockOpts {
            passcred: true,
            sndbuf: 100_000,
            rcvbuf: 0,
            peek_off: -1,
        },
        ..Default::default()
    };
    let p = ProcessImage {
        fds: vec![unix_fd(900, libc::O_NONBLOCK, u)],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    r.when("socket", move |_, _| raw as i64);
    let bound = real.try_clone().unwrap();
    r.when("bind", move |a, mem| {
        let mut b = vec![0u8; a[2] as usize];
        mem.peek(a[1], &mut b);
        let n: Vec<u8> = b[2..].split(|c| *c == 0).next().unwrap().to_vec();
        match socket::bind(bound.as_fd(), &n) {
            Ok(()) => 0,
            Err(e) => -i64::from(e.errno().unwrap_or(libc::EINVAL)),
        }
    });
    crate::restore::fds::restore_fds(&mut r, &p, &mut Shared::default()).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "socket",
            "bind",
            "listen",
            "dup3",
            "close",
            "fcntl",
            "fcntl"
        ]
    );
    let c = &r.calls;
    assert_eq!(
        c[1].args[..3],
        [
            libc::AF_UNIX as u64,
            (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64,
            0
        ]
    );
    let mut with_nul = name.clone();
    with_nul.push(0);
    assert_eq!(
        name_arg(&c[2]),
        with_nul,
        "bound to the path, NUL-terminated"
    );
    assert_eq!(c[3].args[..2], [raw as u64, 5], "listens with its backlog");
    assert_eq!(c[4].args[..3], [raw as u64, 900, 0]);
    assert_eq!(c[6].args[..2], [900, libc::F_SETFD as u64]);
    assert_eq!(c[7].args[..2], [900, libc::F_SETFL as u64]);
    assert_ne!(c[7].args[2] & libc::O_NONBLOCK as u64, 0, "non-blocking");
    // The stale file was replaced by the new socket's, with the dumped mode.
    let now = std::fs::metadata(&path).unwrap();
    let ino = std::fs::metadata(format!("/proc/self/fd/{raw}"))
        .unwrap()
        .ino();
    let diag = crate::sys::sockdiag::unix_sock(ino).unwrap().unwrap();
    assert_eq!(
        diag.vfs,
        Some((now.ino(), now.dev())),
        "the file at the path is the new socket's"
    );
    assert_eq!(now.permissions().mode() & 0o7777, 0o640);
    // Options set on the socket itself: the buffer doubled back to what was read.
    assert_eq!(
        socket::sockopt_int(real.as_fd(), libc::SO_SNDBUF).unwrap(),
        100_000
    );
    assert_eq!(
        socket::sockopt_int(real.as_fd(), libc::SO_PASSCRED).unwrap(),
        1
    );
}

#[test]
fn a_failing_socket_call_stops_the_step_naming_fd_and_socket() {
    let u = UnixSocket {
        ino: 7000,
        sock_type: libc::SOCK_DGRAM,
        ..Default::default()
    };
    let p = ProcessImage {
        fds: vec![unix_fd(900, 0, u)],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    r.fail_nth(1, libc::EMFILE);
    let e = crate::restore::fds::restore_fds(&mut r, &p, &mut Shared::default()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("fd 900: socket:[7000]: injected socket(AF_UNIX)"),
        "{e}"
    );
    assert_eq!(e.errno(), Some(libc::EMFILE));
    assert_eq!(r.names(), ["close_range", "socket"]);
}

#[test]
fn a_client_connects_to_a_listener_bound_for_the_moment_and_gets_its_queue_from_the_peer() {
    // The listener is not in the image (closed after it accepted): one bound to its name
    // for the moment takes the connection; haul accepts it and sends the client its queue
    // from the accepted end, which waits for its own fd.
    let name = format!("haul-unit-{}-conn", me());
    let temp =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let client = socket::unix_socket(libc::SOCK_STREAM).unwrap();
    let (c_raw, t_raw) = (client.as_raw_fd(), temp.as_raw_fd());
    let u = UnixSocket {
        ino: 7001,
        sock_type: libc::SOCK_STREAM,
        peer: 7002,
        peer_name: Some(abstract_(&name)),
        queued: vec![Message {
            data: b"to-client".to_vec(),
            from: None,
        }],
        ..Default::default()
    };
    let p = ProcessImage {
        fds: vec![unix_fd(901, 0, u)],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    let mut fds = vec![t_raw, c_raw];
    r.when("socket", move |_, _| fds.pop().unwrap().into());
    let connecting: OwnedFd = client.try_clone().unwrap();
    r.when("connect", move |a, mem| {
        let mut b = vec![0u8; a[2] as usize];
        mem.peek(a[1], &mut b);
        match socket::connect(connecting.as_fd(), &b[2..]) {
            Ok(()) => 0,
            Err(e) => -i64::from(e.errno().unwrap_or(libc::EINVAL)),
        }
    });
    let mut shared = Shared::default();
    crate::restore::fds::restore_fds(&mut r, &p, &mut shared).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "socket",
            "socket",
            "bind",
            "listen",
            "connect",
            "close",
            "dup3",
            "close",
            "fcntl",
            "fcntl"
        ]
    );
    let c = &r.calls;
    assert_eq!(
        name_arg(&c[3]),
        abstract_(&name),
        "the temporary listener's name"
    );
    assert_eq!(c[3].args[0], t_raw as u64);
    assert_eq!(c[4].args[..2], [t_raw as u64, 1]);
    assert_eq!(c[5].args[0], c_raw as u64);
    assert_eq!(name_arg(&c[5]), abstract_(&name));
    assert_eq!(
        c[6].args[0], t_raw as u64,
        "the temporary listener is closed"
    );
    assert_eq!(c[7].args[..2], [c_raw as u64, 901]);
    // What waited at the client was sent to it from the accepted end; nothing else waits.
    let q = socket::peek_queue(client.as_fd(), true).unwrap();
    assert_eq!(q.messages, [b"to-client".to_vec()]);
    let mut ino = 0u64;
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(format!("/proc/self/fd/{c_raw}")) {
        ino = m.ino();
    }
    let diag = crate::sys::sockdiag::unix_sock(ino).unwrap().unwrap();
    assert_ne!(diag.peer, 0, "connected");
    assert_eq!(
        crate::sys::sockdiag::unix_sock(diag.peer)
            .unwrap()
            .unwrap()
            .rqueue,
        0
    );
}

#[test]
fn a_datagram_socket_gets_its_datagrams_from_their_senders_names() {
    let (rname, sname) = (
        format!("haul-unit-{}-r", me()),
        format!("haul-unit-{}-s", me()),
    );
    let real = UnixDatagram::unbound().unwrap();
    let raw = real.as_raw_fd();
    let bound: OwnedFd = real.try_clone().unwrap().into();
    let u = UnixSocket {
        ino: 7003,
        sock_type: libc::SOCK_DGRAM,
        name: Some(abstract_(&rname)),
        queued: vec![
            Message {
                data: b"one".to_vec(),
                from: Some(abstract_(&sname)),
            },
            Message {
                data: b"two".to_vec(),
                from: None,
            },
        ],
        ..Default::default()
    };
    let p = ProcessImage {
        fds: vec![unix_fd(902, libc::O_CLOEXEC, u)],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    r.when("socket", move |_, _| raw as i64);
    r.when("bind", move |a, mem| {
        let mut b = vec![0u8; a[2] as usize];
        mem.peek(a[1], &mut b);
        match socket::bind(bound.as_fd(), &b[2..]) {
            Ok(()) => 0,
            Err(e) => -i64::from(e.errno().unwrap_or(libc::EINVAL)),
        }
    });
    crate::restore::fds::restore_fds(&mut r, &p, &mut Shared::default()).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "socket",
            "bind",
            "dup3",
            "close",
            "fcntl",
            "fcntl"
        ]
    );
    assert_eq!(
        r.calls[3].args[..3],
        [raw as u64, 902, libc::O_CLOEXEC as u64]
    );
    real.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = real.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"one");
    assert_eq!(
        from.as_abstract_name(),
        Some(sname.as_bytes()),
        "from its sender's name"
    );
    let (n, from) = real.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"two");
    assert!(from.is_unnamed(), "from an unbound sender");
    assert!(real.recv_from(&mut buf).is_err(), "nothing more");
    // The sender's name was only borrowed: it is free again.
    UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(sname.as_bytes()).unwrap()).unwrap();
}

#[test]
fn a_datagram_larger_than_the_argument_area_is_sent_whole_from_hauls_copy() {
    // Refused before ("more than 61440"): a pair's 100 KiB datagram goes from haul's copy of
    // the peer's new socket, not through the process's argument area.
    let (x, y) = UnixDatagram::pair().unwrap();
    let big = vec![7u8; 100 << 10];
    let pair = |fd: i32, ino: u64, peer: u64, queued: Vec<Vec<u8>>| FdImage {
        fd,
        flags: libc::O_RDWR as u32,
        kind: FdKind::UnixPair {
            ino,
            peer,
            sock_type: libc::SOCK_DGRAM,
            queued,
            opts: Default::default(),
        },
        same_as: None,
        locks: Vec::new(),
        inherited: None,
    };
    let p = ProcessImage {
        fds: vec![
            pair(910, 500, 501, vec![big.clone(), b"small".to_vec()]),
            pair(911, 501, 500, vec![]),
        ],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    let (a, b) = (x.as_raw_fd(), y.as_raw_fd());
    r.when("socketpair", move |args, mem| {
        mem.poke(args[3], &a.to_ne_bytes());
        mem.poke(args[3] + 4, &b.to_ne_bytes());
        0
    });
    r.when("sendto", |a, _| a[2] as i64);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Shared::default()).unwrap();
    // Only the small one was injected (from y, the socket of fd 911, to x).
    let sent: Vec<(u64, u64)> = r
        .of("sendto")
        .iter()
        .map(|c| (c.args[0], c.args[2]))
        .collect();
    assert_eq!(sent, [(b as u64, 5)]);
    // The big one waits at x, whole, sent from haul's copy of y.
    x.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 200 << 10];
    let n = x.recv(&mut buf).unwrap();
    assert_eq!(n, big.len());
    assert_eq!(&buf[..n], &big[..]);
}
