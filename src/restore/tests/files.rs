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
