//! The terminal step: a pty pair made anew (termios, window size, unread bytes), the session
//! leader taking it as its controlling terminal, and the refusal of an outside terminal.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;

use super::files::{me, passing};
use super::*;
use crate::image::tty::{Termios, TtyImage, TtyRole, WinSize};
use crate::restore::share::Shared;
use crate::sys::tty;

fn tty_fd(fd: i32, t: TtyImage) -> FdImage {
    FdImage {
        fd,
        flags: libc::O_RDWR as u32,
        kind: FdKind::Tty(t),
        same_as: None,
        locks: Vec::new(),
        inherited: None,
    }
}

/// The termios of a new pty, in raw mode with VINTR 7.
fn raw_termios() -> Termios {
    let m = tty::open_pty().unwrap();
    let s = tty::open_peer(m.as_fd(), 0).unwrap();
    let mut t = tty::make_raw(&tty::get_termios(s.as_fd()).unwrap());
    t.c_cc[libc::VINTR] = 7;
    Termios::of(&t)
}

fn set_of(p: ProcessImage) -> ImageSet {
    let mut s = set_with(&[]);
    s.process = Some(p);
    s
}

#[test]
fn a_pty_pair_is_made_anew_and_its_session_leader_takes_it_back() {
    let termios = raw_termios();
    let master = TtyImage {
        role: TtyRole::Master,
        index: 7,
        path: "/dev/ptmx".into(),
        termios: termios.clone(),
        winsize: WinSize {
            rows: 33,
            cols: 111,
            ..Default::default()
        },
        input: b"typed".to_vec(),
        ..Default::default()
    };
    let slave = TtyImage {
        role: TtyRole::Slave,
        index: 7,
        path: "/dev/pts/7".into(),
        termios,
        ctty_sid: 100,
        fg_pgrp: 100,
        ..Default::default()
    };
    let p = ProcessImage {
        pid: 100,
        sid: 100,
        pgid: 100,
        fds: vec![tty_fd(900, master), tty_fd(901, slave)],
        ..Default::default()
    };
    let set = set_of(p.clone());
    let mut shared = Shared::default();
    crate::restore::tty::start(&mut shared, &set, None, &[(100, 4242)]).unwrap();
    let (x, y) = UnixDatagram::pair().unwrap();
    let mut r = Recorder::new(me());
    passing(&mut r, x.as_raw_fd(), y.as_raw_fd(), 950);
    crate::restore::fds::restore_fds(&mut r, &p, &mut shared).unwrap();
    let install = ["socketpair", "recvmsg", "close", "close", "dup3", "close"];
    let mut want = vec!["close_range"];
    want.extend(install);
    want.push("fcntl");
    want.extend(install);
    want.extend(["fcntl", "ioctl", "ioctl"]);
    assert_eq!(r.names(), want);
    let c = &r.calls;
    assert_eq!(c[5].args[..2], [950, 900], "the master at its number");
    assert_eq!(c[12].args[..2], [950, 901], "the slave at its number");
    let (sctty, spgrp) = (&c[15], &c[16]);
    assert_eq!(sctty.args[..3], [901, libc::TIOCSCTTY, 0]);
    assert_eq!(spgrp.args[..2], [901, libc::TIOCSPGRP]);
    assert_eq!(
        spgrp.arg_bytes(2).map(|b| b[..4].to_vec()),
        Some(4242i32.to_ne_bytes().to_vec()),
        "the foreground group under its pid here"
    );
    // The pty haul made: the dumped termios and size, the typed bytes waiting for the slave.
    let m = shared.tty.made_master(7).expect("pty 7 made");
    let s = tty::open_peer(m, libc::O_NONBLOCK).unwrap();
    let now = tty::get_termios(s.as_fd()).unwrap();
    assert_eq!(now.c_cc[libc::VINTR], 7);
    assert_eq!(now.c_lflag & libc::ICANON, 0, "raw mode");
    let w = tty::get_winsize(s.as_fd()).unwrap();
    assert_eq!((w.ws_row, w.ws_col), (33, 111));
    // The line discipline takes written bytes in from a worker: wait until they are there.
    for _ in 0..2000 {
        if tty::unread(s.as_fd()).unwrap() > 0 {
            break;
        }
        let _ = tty::poll_in(&[s.as_raw_fd()], 1);
    }
    assert_eq!(tty::take_available(s.as_fd()).unwrap(), b"typed");
}

#[test]
fn a_terminal_outside_the_set_is_refused_unless_the_restore_says_where_it_goes() {
    let outside = TtyImage {
        role: TtyRole::Slave,
        index: 3,
        path: "/dev/pts/3".into(),
        ..Default::default()
    };
    let p = ProcessImage {
        pid: 100,
        fds: vec![tty_fd(0, outside.clone()), tty_fd(2, outside)],
        ..Default::default()
    };
    let set = set_of(p);
    assert_eq!(
        crate::restore::tty::check(&set, None).unwrap_err().0,
        "pid 100 fd 0 (/dev/pts/3), pid 100 fd 2 (/dev/pts/3) are the terminal it was started \
         on, outside the checkpoint: say where it goes with `--tty inherit` (the terminal of \
         haul restore) or `--tty new` (a new pty that haul restore serves), in a job file \
         restore.tty = \"inherit\" or \"new\""
    );
    let target = crate::restore::TtyTarget {
        mode: crate::restore::TtyMode::New,
        term: std::sync::Arc::new(tty::open_pty().unwrap()),
    };
    assert_eq!(crate::restore::tty::check(&set, Some(&target)), Ok(()));
    // With `new`, the root leads a session of its own (its terminal is the controlling one).
    let planned = crate::restore::tty::planned(&set, Some(&target), (1, 1)).unwrap();
    let root = planned.process.unwrap();
    assert_eq!((root.sid, root.pgid), (100, 100));
}
