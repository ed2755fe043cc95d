//! The files step: files, locks, pipes, eventfds and timerfds.

use super::*;

fn fd(fd: i32, flags: i32, kind: FdKind) -> FdImage {
    FdImage {
        fd,
        flags: flags as u32,
        kind,
        same_as: None,
        locks: Vec::new(),
        inherited: None,
    }
}

fn file(path: &str, pos: u64) -> FdKind {
    FdKind::File {
        path: path.into(),
        pos,
        mode: 0,
        id: Default::default(),
    }
}

#[test]
fn a_file_is_reopened_moved_to_its_number_and_seeked() {
    let mut f = fd(
        7,
        libc::O_RDWR | libc::O_CLOEXEC | libc::O_CREAT,
        file("/tmp/a", 42),
    );
    f.locks.push(FileLock {
        kind: LockKind::Posix,
        write: true,
        start: 0,
        len: 10,
    });
    let mut dup = fd(8, 0, file("/tmp/a", 42));
    dup.same_as = Some(7);
    let p = ProcessImage {
        fds: vec![dup, f],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("open", 3);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "open",
            "dup3",
            "close",
            "lseek",
            "fcntl",
            "dup3"
        ]
    );
    assert_eq!(
        r.calls[1].args[1],
        (libc::O_RDWR | libc::O_CLOEXEC) as u64,
        "O_CREAT left out"
    );
    assert_eq!(r.calls[2].args[..3], [3, 7, libc::O_CLOEXEC as u64]);
    assert_eq!(r.calls[3].args[0], 3);
    assert_eq!(r.calls[4].args[..3], [7, 42, libc::SEEK_SET as u64]);
    assert_eq!(r.calls[5].args[1], libc::F_SETLK as u64);
    assert_eq!(
        r.calls[6].args[..3],
        [7, 8, 0],
        "the dup shares fd 7, not cloexec"
    );
}

#[test]
fn an_o_path_fd_at_its_number_is_not_seeked() {
    let p = ProcessImage {
        fds: vec![fd(3, libc::O_PATH, file("/etc", 0))],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("open", 3);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap();
    assert_eq!(r.names(), ["close_range", "open"]);
}

#[test]
fn a_lock_held_elsewhere_is_named_and_other_errors_kept() {
    let mut f = fd(3, 0, file("/tmp/l", 0));
    f.locks.push(FileLock {
        kind: LockKind::Flock,
        write: true,
        start: 0,
        len: 0,
    });
    let p = ProcessImage {
        fds: vec![f],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("open", 3);
    r.fail_nth(3, libc::EAGAIN);
    let e = crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("write flock lock on /tmp/l (fd 3) is held by another process now"),
        "{m}"
    );
    let mut r = Recorder::new(50);
    r.returns("open", 3);
    r.fail_nth(3, libc::ENOLCK);
    let e = crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOLCK));
    assert!(
        e.to_string().starts_with("taking the write flock lock"),
        "{e}"
    );
}

fn pipe_end(n: i32, write: bool, data: &[u8]) -> FdImage {
    fd(
        n,
        if write {
            libc::O_WRONLY | libc::O_NONBLOCK
        } else {
            libc::O_CLOEXEC
        },
        FdKind::Pipe {
            ino: 77,
            write,
            size: if write { 0 } else { 65536 },
            data: data.to_vec(),
        },
    )
}

#[test]
fn a_pipe_whose_new_ends_are_swapped_gets_both_to_their_numbers() {
    let p = ProcessImage {
        fds: vec![pipe_end(4, false, b"hello"), pipe_end(3, true, b"")],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    // The kernel hands out 3 (read) and 4 (write): the opposite of the image.
    r.when("pipe2", |a, mem| {
        mem.poke(a[0], &3i32.to_ne_bytes());
        mem.poke(a[0] + 4, &4i32.to_ne_bytes());
        0
    });
    r.returns("fcntl", 9); // F_DUPFD gives 9; the other fcntls ignore it
    r.returns("write", 5);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap();
    let calls: Vec<(&str, u64, u64)> = r
        .calls
        .iter()
        .map(|c| (c.name(), c.args[0], c.args[1]))
        .collect();
    let fc = "fcntl";
    assert_eq!(
        calls[1..],
        [
            ("pipe2", calls[1].1, 0),
            (fc, 3, libc::F_DUPFD as u64),
            ("close", 3, 0),
            ("dup3", 4, 3),
            ("close", 4, 0),
            ("dup3", 9, 4),
            ("close", 9, 0),
            (fc, 3, libc::F_SETPIPE_SZ as u64),
            ("write", 3, calls[9].2),
            (fc, 4, libc::F_SETFD as u64),
            (fc, 4, libc::F_SETFL as u64),
            (fc, 3, libc::F_SETFD as u64),
            (fc, 3, libc::F_SETFL as u64),
        ]
    );
    assert_eq!(r.calls[9].arg_bytes(1), Some(&b"hello"[..]));
    assert_eq!(
        r.calls[10].args[2],
        libc::FD_CLOEXEC as u64,
        "the read end is cloexec"
    );
    assert_eq!(r.calls[12].args[2], 0);
}

#[test]
fn a_pipe_that_takes_back_less_than_it_held_is_an_error() {
    let p = ProcessImage {
        fds: vec![pipe_end(3, false, b"hello"), pipe_end(4, true, b"")],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.when("pipe2", |a, mem| {
        mem.poke(a[0], &3i32.to_ne_bytes());
        mem.poke(a[0] + 4, &4i32.to_ne_bytes());
        0
    });
    r.returns("write", 2);
    let e = crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap_err();
    assert_eq!(e.to_string(), "pipe:[77] took 2 of 5 bytes back");
}

#[test]
fn a_periodic_timerfd_with_unread_ticks_is_rearmed_and_given_its_ticks() {
    let p = ProcessImage {
        fds: vec![fd(
            5,
            libc::O_NONBLOCK,
            FdKind::Anon(AnonFd::TimerFd {
                clock: libc::CLOCK_MONOTONIC,
                ticks: 3,
                value_ns: 0,
                interval_ns: 2_000_000_000,
            }),
        )],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("timerfd_create", 5);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap();
    assert_eq!(
        r.names()[1..],
        ["timerfd_create", "timerfd_settime", "ioctl"]
    );
    assert_eq!(r.calls[1].args[1], libc::O_NONBLOCK as u64);
    let its = r.calls[2].arg_bytes(2).unwrap();
    assert_eq!([u64_at(its, 0), u64_at(its, 16)], [2, 2], "one period on");
    assert_eq!(r.calls[3].args[1], 0x4008_5400, "TFD_IOC_SET_TICKS");
    assert_eq!(r.calls[3].arg_bytes(2), Some(&3u64.to_ne_bytes()[..]));
}

#[test]
fn an_eventfd_gets_its_64_bit_count_by_a_write_and_a_failure_names_the_fd() {
    let p = ProcessImage {
        fds: vec![fd(
            6,
            0,
            FdKind::Anon(AnonFd::EventFd {
                count: 1 << 40,
                semaphore: true,
            }),
        )],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("eventfd2", 3);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap();
    assert_eq!(r.calls[1].args[1], libc::EFD_SEMAPHORE as u64);
    assert_eq!(
        r.calls[2].arg_bytes(1),
        Some(&(1u64 << 40).to_ne_bytes()[..])
    );
    let mut r = Recorder::new(50);
    r.fail_nth(1, libc::EMFILE);
    let e = crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap_err();
    assert!(e.to_string().starts_with("fd 6: injected eventfd2"), "{e}");
    assert_eq!(e.errno(), Some(libc::EMFILE));
}

// ---- what processes of a tree share: run in this test process, whose real fds stand for
// the target's, so haul's pidfd_getfd and SCM_RIGHTS calls are real ----

use crate::image::FdRef;
use crate::restore::share::Shared;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};

pub(super) fn me() -> i32 {
    std::process::id() as i32
}

/// Makes the fake's `socketpair` hand out `(a, b)` and its `recvmsg` deliver fd `got` in an
/// `SCM_RIGHTS` message laid out at libc's offsets.
pub(super) fn passing(r: &mut Recorder, a: i32, b: i32, got: i32) {
    r.when("socketpair", move |args, mem| {
        mem.poke(args[3], &a.to_ne_bytes());
        mem.poke(args[3] + 4, &b.to_ne_bytes());
        0
    });
    r.when("recvmsg", move |args, mem| {
        let mut ctl = [0u8; 8];
        mem.peek(
            args[1] + std::mem::offset_of!(libc::msghdr, msg_control) as u64,
            &mut ctl,
        );
        let ctl = u64::from_ne_bytes(ctl);
        type C = libc::cmsghdr;
        mem.poke(
            ctl + std::mem::offset_of!(C, cmsg_len) as u64,
            &20usize.to_ne_bytes(),
        );
        mem.poke(
            ctl + std::mem::offset_of!(C, cmsg_level) as u64,
            &libc::SOL_SOCKET.to_ne_bytes(),
        );
        mem.poke(
            ctl + std::mem::offset_of!(C, cmsg_type) as u64,
            &libc::SCM_RIGHTS.to_ne_bytes(),
        );
        mem.poke(ctl + 16, &got.to_ne_bytes());
        1
    });
}

fn pipe_of(ino: u64, n: i32, write: bool, size: u32, data: &[u8]) -> FdImage {
    fd(
        n,
        if write {
            libc::O_WRONLY
        } else {
            libc::O_NONBLOCK
        },
        FdKind::Pipe {
            ino,
            write,
            size,
            data: data.to_vec(),
        },
    )
}

#[test]
fn an_inherited_fd_is_installed_through_a_socket_pair_with_scm_rights() {
    let (x, y) = UnixDatagram::pair().unwrap();
    let (held, _w) = crate::sys::pipe::pipe().unwrap();
    let mut shared = Shared::default();
    let parent = ProcessImage {
        pid: 100,
        ..Default::default()
    };
    crate::restore::fds::restore_fds(&mut Recorder::new(me()), &parent, &mut shared).unwrap();
    let mut f = pipe_of(77, 5, false, 0, b"");
    f.flags |= libc::O_CLOEXEC as u32;
    f.inherited = Some(FdRef {
        pid: 100,
        fd: held.as_raw_fd(),
    });
    let child = ProcessImage {
        pid: 101,
        fds: vec![f],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    passing(&mut r, x.as_raw_fd(), y.as_raw_fd(), 9);
    crate::restore::fds::restore_fds(&mut r, &child, &mut shared).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "socketpair",
            "recvmsg",
            "close",
            "close",
            "dup3",
            "close"
        ]
    );
    let c = &r.calls;
    assert_eq!(
        c[1].args[..3],
        [
            libc::AF_UNIX as u64,
            (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64,
            0
        ]
    );
    let (xa, ya) = (x.as_raw_fd() as u64, y.as_raw_fd() as u64);
    assert_eq!(c[2].args[0], ya, "received at the other socket");
    assert_eq!(c[2].args[2], libc::MSG_CMSG_CLOEXEC as u64);
    let msg = c[2].arg_bytes(1).unwrap();
    let at = |o: usize| u64_at(msg, o);
    assert_eq!(at(std::mem::offset_of!(libc::msghdr, msg_iovlen)), 1);
    assert_eq!(at(std::mem::offset_of!(libc::msghdr, msg_controllen)), 24);
    assert_eq!([c[3].args[0], c[4].args[0]], [xa, ya], "the pair is closed");
    assert_eq!(c[5].args[..3], [9, 5, libc::O_CLOEXEC as u64]);
    assert_eq!(c[6].args[0], 9);
    // haul really sent a copy of the held fd over the pair: it waits at y.
    let q = crate::sys::socket::peek_queue(y.as_fd(), false).unwrap();
    assert!(q.fds_in_flight);
    assert_eq!(q.messages, [b"F".to_vec()]);
}

#[test]
fn a_pipe_between_two_processes_is_made_at_its_first_end_and_filled_at_the_second() {
    // The parent holds only the write end (fd 940, far above any fd the tests' threads
    // open, which the recorded pipe2 hands back); the child the read end (fd 3), which
    // carries what the pipe held.
    let (pr, pw) = crate::sys::pipe::pipe().unwrap();
    let (x, y) = UnixDatagram::pair().unwrap();
    let mut shared = Shared::default();
    let parent = ProcessImage {
        pid: 100,
        fds: vec![pipe_of(77, 940, true, 0, b"")],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    let (a, b) = (pr.as_raw_fd(), pw.as_raw_fd());
    r.when("pipe2", move |args, mem| {
        mem.poke(args[0], &a.to_ne_bytes());
        mem.poke(args[0] + 4, &b.to_ne_bytes());
        0
    });
    crate::restore::fds::restore_fds(&mut r, &parent, &mut shared).unwrap();
    let calls: Vec<(&str, u64, u64)> = r
        .calls
        .iter()
        .map(|c| (c.name(), c.args[0], c.args[1]))
        .collect();
    let (a, b) = (a as u64, b as u64);
    assert_eq!(
        calls[1..],
        [
            ("pipe2", calls[1].1, 0),
            ("close", a, 0),
            ("dup3", b, 940),
            ("close", b, 0),
            ("fcntl", 940, libc::F_SETFD as u64),
            ("fcntl", 940, libc::F_SETFL as u64),
        ],
        "the read end is closed in the parent, the write end put at 940"
    );
    let child = ProcessImage {
        pid: 101,
        fds: vec![pipe_of(77, 3, false, 1 << 20, b"hello")],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    passing(&mut r, x.as_raw_fd(), y.as_raw_fd(), 3);
    crate::restore::fds::restore_fds(&mut r, &child, &mut shared).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "socketpair",
            "recvmsg",
            "close",
            "close",
            "fcntl",
            "fcntl"
        ],
        "received at 3 already: only its flags"
    );
    // The pipe itself (haul's copies are of it) holds the bytes, at the capacity dumped.
    assert_eq!(crate::sys::pipe::pipe_contents(&pr).unwrap(), b"hello");
    assert_eq!(crate::sys::pipe::pipe_size(&pr).unwrap(), 1 << 20);
    assert!(
        crate::sys::socket::peek_queue(y.as_fd(), false)
            .unwrap()
            .fds_in_flight
    );
}

fn pair_of(n: i32, ino: u64, peer: u64, queued: &[&[u8]]) -> FdImage {
    fd(
        n,
        libc::O_RDWR,
        FdKind::UnixPair {
            ino,
            peer,
            sock_type: libc::SOCK_STREAM,
            queued: queued.iter().map(|q| q.to_vec()).collect(),
            opts: Default::default(),
        },
    )
}

#[test]
fn a_socket_pair_in_one_process_gets_each_queue_sent_from_the_other_end() {
    let p = ProcessImage {
        fds: vec![
            pair_of(10, 500, 501, &[b"to-ten"]),
            pair_of(11, 501, 500, &[b"to-eleven"]),
        ],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.when("socketpair", |a, mem| {
        mem.poke(a[3], &3i32.to_ne_bytes());
        mem.poke(a[3] + 4, &4i32.to_ne_bytes());
        0
    });
    r.when("sendto", |a, _| a[2] as i64);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap();
    let calls: Vec<(&str, u64, u64)> = r
        .calls
        .iter()
        .map(|c| (c.name(), c.args[0], c.args[1]))
        .collect();
    assert_eq!(
        calls[1..8],
        [
            ("socketpair", libc::AF_UNIX as u64, libc::SOCK_STREAM as u64),
            ("sendto", 4, calls[2].2),
            ("sendto", 3, calls[3].2),
            ("dup3", 3, 10),
            ("dup3", 4, 11),
            ("close", 3, 0),
            ("close", 4, 0),
        ]
    );
    assert_eq!(r.calls[2].arg_bytes(1), Some(&b"to-ten"[..]));
    assert_eq!(r.calls[3].arg_bytes(1), Some(&b"to-eleven"[..]));
    assert_eq!(r.names()[8..], ["fcntl", "fcntl", "fcntl", "fcntl"]);
    // A peer that takes less back than waited is an error naming the socket.
    let mut r = Recorder::new(50);
    r.when("socketpair", |a, mem| {
        mem.poke(a[3], &3i32.to_ne_bytes());
        mem.poke(a[3] + 4, &4i32.to_ne_bytes());
        0
    });
    r.returns("sendto", 2);
    let e = crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("socket:[500]: 6 queued bytes"),
        "{e}"
    );
}

#[test]
fn a_socket_pair_between_two_processes_is_kept_by_haul_for_the_later_end() {
    let (s0, s1) = UnixStream::pair().unwrap();
    let (x, y) = UnixDatagram::pair().unwrap();
    let mut shared = Shared::default();
    let parent = ProcessImage {
        pid: 100,
        // At 910: a number the real fds the recorded socketpair hands back (opened while
        // other tests run in parallel) never take, so both are moved.
        fds: vec![pair_of(910, 500, 501, &[])],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    let (a, b) = (s0.as_raw_fd(), s1.as_raw_fd());
    r.when("socketpair", move |args, mem| {
        mem.poke(args[3], &a.to_ne_bytes());
        mem.poke(args[3] + 4, &b.to_ne_bytes());
        0
    });
    crate::restore::fds::restore_fds(&mut r, &parent, &mut shared).unwrap();
    let (a, b) = (a as u64, b as u64);
    let calls: Vec<(&str, u64, u64)> = r
        .calls
        .iter()
        .map(|c| (c.name(), c.args[0], c.args[1]))
        .collect();
    assert_eq!(
        calls[2..5],
        [("close", b, 0), ("dup3", a, 910), ("close", a, 0)]
    );
    // The child's end waits with "hi" queued: haul sends it from its copy of the parent's.
    let child = ProcessImage {
        pid: 101,
        fds: vec![pair_of(911, 501, 500, &[b"hi"])],
        ..Default::default()
    };
    let mut r = Recorder::new(me());
    passing(&mut r, x.as_raw_fd(), y.as_raw_fd(), 911);
    crate::restore::fds::restore_fds(&mut r, &child, &mut shared).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "socketpair",
            "recvmsg",
            "close",
            "close",
            "fcntl",
            "fcntl"
        ]
    );
    let q = crate::sys::socket::peek_queue(s1.as_fd(), true).unwrap();
    assert_eq!(q.messages, [b"hi".to_vec()]);
}
