//! The TCP/UDP step: socket, options (buffers halved), bind, listen or connect, then the fd
//! moved to its number.

use super::*;
use crate::image::inet::{InetSocket, SockOpt, Transport};
use crate::sys::remote::fake::ARGS_AT;

fn opt(name: &str, level: i32, o: i32, v: i32) -> SockOpt {
    SockOpt {
        name: name.into(),
        level,
        opt: o,
        value: v.to_ne_bytes().to_vec(),
    }
}

fn inet_fd(fd: i32, flags: i32, s: InetSocket) -> FdImage {
    FdImage {
        fd,
        flags: flags as u32,
        kind: FdKind::Inet(s),
        same_as: None,
        locks: Vec::new(),
        inherited: None,
    }
}

fn listener(reuse: bool) -> InetSocket {
    let mut options = vec![
        opt("IPV6_V6ONLY", libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0),
        opt("SO_RCVBUF", libc::SOL_SOCKET, libc::SO_RCVBUF, 131072),
        opt("TCP_NODELAY", libc::IPPROTO_TCP, libc::TCP_NODELAY, 1),
    ];
    if reuse {
        options.insert(
            1,
            opt("SO_REUSEADDR", libc::SOL_SOCKET, libc::SO_REUSEADDR, 1),
        );
    }
    InetSocket {
        family: libc::AF_INET6,
        transport: Transport::Tcp,
        local: Some("[::]:8080".parse().unwrap()),
        backlog: Some(12),
        options,
        ..Default::default()
    }
}

fn restore(p: &ProcessImage, r: &mut Recorder) -> Result<(), StepError> {
    crate::restore::fds::restore_fds(r, p, &mut Default::default())
}

#[test]
fn a_listener_is_made_with_its_options_bound_and_listening() {
    let p = ProcessImage {
        fds: vec![inet_fd(5, libc::O_RDWR | libc::O_NONBLOCK, listener(false))],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("socket", 3);
    restore(&p, &mut r).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "socket",
            "setsockopt",
            "setsockopt",
            "setsockopt",
            "bind",
            "listen",
            "dup3",
            "close"
        ]
    );
    let c = &r.calls;
    assert_eq!(
        c[1].args[..3],
        [
            libc::AF_INET6 as u64,
            (libc::SOCK_STREAM | libc::SOCK_NONBLOCK) as u64,
            0
        ]
    );
    let value =
        |i: usize| i32::from_ne_bytes(c[i].written_at(ARGS_AT).unwrap()[..4].try_into().unwrap());
    // IPV6_V6ONLY 0 first, then the buffer at half what the kernel reported.
    assert_eq!(
        c[2].args[1..3],
        [libc::IPPROTO_IPV6 as u64, libc::IPV6_V6ONLY as u64]
    );
    assert_eq!(value(2), 0);
    assert_eq!(c[3].args[2], libc::SO_RCVBUF as u64);
    assert_eq!(value(3), 65536);
    assert_eq!(c[4].args[2], libc::TCP_NODELAY as u64);
    let sa = c[5].written_at(ARGS_AT).unwrap();
    assert_eq!(
        sa,
        crate::sys::inetsock::sockaddr_bytes(&"[::]:8080".parse().unwrap())
    );
    assert_eq!(
        c[5].args[2],
        std::mem::size_of::<libc::sockaddr_in6>() as u64
    );
    assert_eq!(c[6].args[..2], [3, 12]);
    assert_eq!(c[7].args[..3], [3, 5, 0], "not close-on-exec");
}

#[test]
fn a_listener_with_reuseaddr_keeps_it_and_a_cloexec_socket_is_made_so() {
    let p = ProcessImage {
        fds: vec![inet_fd(4, libc::O_RDWR | libc::O_CLOEXEC, listener(true))],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("socket", 4);
    restore(&p, &mut r).unwrap();
    // Four options, bind, listen: nothing borrowed, and made at its number already.
    assert_eq!(
        r.names(),
        [
            "close_range",
            "socket",
            "setsockopt",
            "setsockopt",
            "setsockopt",
            "setsockopt",
            "bind",
            "listen"
        ]
    );
    assert_eq!(
        r.calls[1].args[1],
        (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64
    );
}

#[test]
fn a_connected_udp_socket_is_bound_then_connected() {
    let s = InetSocket {
        family: libc::AF_INET,
        transport: Transport::Udp,
        local: Some("127.0.0.1:5353".parse().unwrap()),
        peer: Some("127.0.0.1:53".parse().unwrap()),
        ..Default::default()
    };
    let p = ProcessImage {
        fds: vec![inet_fd(6, libc::O_RDWR, s)],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("socket", 3);
    restore(&p, &mut r).unwrap();
    assert_eq!(
        r.names(),
        ["close_range", "socket", "bind", "connect", "dup3", "close"]
    );
    assert_eq!(r.calls[1].args[1], libc::SOCK_DGRAM as u64);
    let peer = r.calls[3].written_at(ARGS_AT).unwrap();
    assert_eq!(
        peer,
        crate::sys::inetsock::sockaddr_bytes(&"127.0.0.1:53".parse().unwrap())
    );
}

#[test]
fn a_failing_bind_stops_the_step_naming_the_socket_and_keeping_the_errno() {
    let p = ProcessImage {
        fds: vec![inet_fd(5, libc::O_RDWR, listener(true))],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("socket", 3);
    // close_range, socket, four setsockopt: the seventh call is the bind.
    r.fail_nth(6, libc::EADDRINUSE);
    let e = restore(&p, &mut r).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EADDRINUSE));
    let m = e.to_string();
    assert!(
        m.starts_with("fd 5: TCP [::]:8080 (listening): ")
            && m.contains("bind of fd 3 to [::]:8080"),
        "{m}"
    );
    assert_eq!(
        r.names().last(),
        Some(&"bind"),
        "nothing after the failed bind"
    );
}
