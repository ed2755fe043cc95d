//! The epoll and inotify steps: registrations in order with their events and data, a fired
//! one-shot made to fire again, watch descriptors reproduced by filling their gaps.

use super::*;
use crate::image::events::{EpollImage, EpollTarget, InotifyImage, InotifyWatch};
use crate::sys::remote::epoll_event_bytes;

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

fn epoll(targets: &[(i32, u32, u64)]) -> FdKind {
    FdKind::Epoll(EpollImage {
        targets: targets
            .iter()
            .map(|&(fd, events, data)| EpollTarget { fd, events, data })
            .collect(),
    })
}

const ONESHOT: u32 = libc::EPOLLONESHOT as u32;
const IN: u32 = libc::EPOLLIN as u32;
const ET: u32 = libc::EPOLLET as u32;

#[test]
fn an_epoll_watched_by_another_comes_first_and_a_shared_fd_after_its_first() {
    let outer = fd(3, 0, epoll(&[(5, IN, 1), (9, IN, 2)]));
    let inner = fd(5, 0, epoll(&[(7, IN, 3)]));
    let mut dup_of_outer = fd(4, 0, epoll(&[]));
    dup_of_outer.same_as = Some(3);
    let inner_of_inner = fd(7, 0, epoll(&[]));
    let p = ProcessImage::default();
    let later = vec![&outer, &dup_of_outer, &inner, &inner_of_inner];
    let order: Vec<i32> = crate::restore::events::epoll_order(&p, later)
        .iter()
        .map(|f| f.fd)
        .collect();
    assert_eq!(order, [7, 5, 3, 4]);
}

#[test]
fn every_target_is_added_with_its_events_and_data_a_fired_one_shot_fired_first() {
    let p = ProcessImage {
        fds: vec![fd(
            900,
            libc::O_RDWR | libc::O_CLOEXEC,
            epoll(&[
                (905, IN | 0x18, 0x1111),
                (906, ONESHOT, 0x8888),
                (907, IN | libc::EPOLLOUT as u32 | ET | 0x18, 0x2222),
            ]),
        )],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("epoll_create1", 3);
    r.returns("epoll_pwait", 1);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "epoll_create1",
            "dup3",
            "close",
            "epoll_ctl",
            "epoll_pwait",
            "epoll_ctl",
            "epoll_ctl"
        ]
    );
    assert_eq!(r.calls[1].args[0], libc::EPOLL_CLOEXEC as u64);
    assert_eq!(r.calls[2].args[..3], [3, 900, libc::O_CLOEXEC as u64]);
    let ctl = r.of("epoll_ctl");
    let every = (libc::EPOLLIN
        | libc::EPOLLOUT
        | libc::EPOLLPRI
        | libc::EPOLLRDNORM
        | libc::EPOLLRDBAND
        | libc::EPOLLWRNORM
        | libc::EPOLLWRBAND
        | libc::EPOLLMSG
        | libc::EPOLLRDHUP) as u32;
    let want = [
        (906, ONESHOT | every, 0x8888),
        (905, IN | 0x18, 0x1111),
        (907, IN | libc::EPOLLOUT as u32 | ET | 0x18, 0x2222),
    ];
    for (c, (tfd, events, data)) in ctl.iter().zip(want) {
        assert_eq!(c.args[..3], [900, libc::EPOLL_CTL_ADD as u64, tfd]);
        assert_eq!(c.arg_bytes(3).unwrap(), epoll_event_bytes(events, data));
    }
    // The wait that fires it does not wait, and takes one event.
    let w = &r.of("epoll_pwait")[0];
    assert_eq!((w.args[0], w.args[2], w.args[3], w.args[4]), (900, 1, 0, 0));
}

#[test]
fn a_fired_one_shot_whose_file_is_not_ready_is_armed_for_errors_only() {
    let p = ProcessImage {
        fds: vec![fd(900, 0, epoll(&[(906, ONESHOT | ET, 7)]))],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("epoll_create1", 900);
    r.returns("epoll_pwait", 0);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "epoll_create1",
            "epoll_ctl",
            "epoll_pwait",
            "epoll_ctl"
        ]
    );
    let m = &r.of("epoll_ctl")[1];
    assert_eq!(m.args[..3], [900, libc::EPOLL_CTL_MOD as u64, 906]);
    assert_eq!(m.arg_bytes(3).unwrap(), epoll_event_bytes(ONESHOT | ET, 7));
}

#[test]
fn a_failing_registration_stops_the_step_naming_the_epoll_fd() {
    let p = ProcessImage {
        fds: vec![fd(900, 0, epoll(&[(905, IN, 1), (906, IN, 2)]))],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("epoll_create1", 900);
    r.fail_nth(2, libc::EBADF);
    let e = crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBADF));
    assert!(e.to_string().starts_with("fd 900: "), "{e}");
    assert!(e.to_string().contains("EPOLL_CTL_ADD of fd 905"), "{e}");
    assert_eq!(r.calls.len(), 3, "nothing after the failed call");
}

fn inotify(watches: &[(i32, &str, u32)], queued_bytes: u64) -> FdKind {
    FdKind::Inotify(InotifyImage {
        watches: watches
            .iter()
            .map(|&(wd, path, mask)| InotifyWatch {
                wd,
                path: path.into(),
                mask,
                dev: 0,
                ino: 0,
            })
            .collect(),
        queued_bytes,
    })
}

/// A fake whose inotify_add_watch hands out watch descriptors as the kernel does: one past
/// the last given, starting at `first`.
fn wds_from(r: &mut Recorder, first: i64) {
    let mut next = first;
    r.when("inotify_add_watch", move |_, _| {
        next += 1;
        next - 1
    });
}

#[test]
fn watch_descriptors_come_back_with_their_gaps_filled_and_the_fillers_events_read() {
    // Given out of order in the image: restored in wd order.
    let p = ProcessImage {
        fds: vec![fd(
            900,
            libc::O_RDONLY,
            inotify(
                &[(4, "/w/c", libc::IN_ATTRIB), (1, "/w/a", libc::IN_CREATE)],
                32,
            ),
        )],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("inotify_init1", 900);
    wds_from(&mut r, 1);
    r.fail_nth(9, libc::EAGAIN); // the second read finds the queue empty
    r.returns("read", 32);
    crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "inotify_init1",
            "inotify_add_watch",
            "inotify_add_watch",
            "inotify_rm_watch",
            "inotify_add_watch",
            "inotify_rm_watch",
            "inotify_add_watch",
            "read",
            "read",
            "fcntl"
        ]
    );
    assert_eq!(r.calls[1].args[0], libc::IN_NONBLOCK as u64, "not cloexec");
    let adds = r.of("inotify_add_watch");
    let path = |c: &crate::sys::remote::fake::Call| {
        let b = c.arg_bytes(1).unwrap();
        String::from_utf8(b[..b.len() - 1].to_vec()).unwrap()
    };
    assert_eq!(path(adds[0]), "/w/a");
    assert_eq!(
        adds[0].args[2],
        u64::from(libc::IN_CREATE | libc::IN_DONT_FOLLOW)
    );
    assert_eq!(path(adds[1]), "/", "a path no watch of the instance has");
    assert_eq!(path(adds[3]), "/w/c");
    assert_eq!(
        adds[3].args[2],
        u64::from(libc::IN_ATTRIB | libc::IN_DONT_FOLLOW)
    );
    let rms: Vec<u64> = r.of("inotify_rm_watch").iter().map(|c| c.args[1]).collect();
    assert_eq!(rms, [2, 3]);
    // Blocking again, as it was.
    let setfl = &r.of("fcntl")[0];
    assert_eq!(setfl.args[..3], [900, libc::F_SETFL as u64, 0]);
}

#[test]
fn a_watch_given_another_descriptor_fails_naming_both() {
    let p = ProcessImage {
        fds: vec![fd(
            900,
            libc::O_NONBLOCK,
            inotify(&[(2, "/w/b", libc::IN_MODIFY)], 0),
        )],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("inotify_init1", 900);
    // A kernel that would give 5 first.
    wds_from(&mut r, 5);
    let e = crate::restore::fds::restore_fds(&mut r, &p, &mut Default::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "fd 900: inotify watch 2 of /w/b was made again as watch 5"
    );
}

#[test]
fn a_watched_path_gone_or_replaced_is_named_before_anything_is_made() {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/").unwrap();
    let mut img = inotify(&[(1, "/", libc::IN_CREATE)], 0);
    if let FdKind::Inotify(i) = &mut img {
        i.watches[0].dev = root.dev();
        i.watches[0].ino = root.ino();
    }
    let p = ProcessImage {
        fds: vec![fd(5, 0, img.clone())],
        ..Default::default()
    };
    assert!(crate::restore::events::check_watches(&p).is_ok());
    let gone = ProcessImage {
        fds: vec![fd(5, 0, inotify(&[(2, "/haul-no-such-path", 2)], 0))],
        ..Default::default()
    };
    let e = crate::restore::events::check_watches(&gone).unwrap_err().0;
    assert!(
        e.starts_with("fd 5: inotify watch 2: /haul-no-such-path cannot be watched again: "),
        "{e}"
    );
    if let FdKind::Inotify(i) = &mut img {
        i.watches[0].ino += 1;
    }
    let replaced = ProcessImage {
        fds: vec![fd(5, 0, img)],
        ..Default::default()
    };
    let e = crate::restore::events::check_watches(&replaced)
        .unwrap_err()
        .0;
    assert_eq!(
        e,
        format!(
            "fd 5: inotify watch 1: / is not the same file any more (inode {} was {})",
            root.ino(),
            root.ino() + 1
        )
    );
}
