//! The calls that make a tree (a child's clone3, a zombie's SIGCHLD taken back) and the rules
//! `check_compat` applies to one (zombie statuses, `pid = "any"`).

use super::*;
use crate::image::{Tree, ZombieImage};
use crate::sys::remote::fake::{Recorder, ARGS_AT};

/// Reads field `off` (8 bytes) of the clone_args the call passed.
fn clone_field(c: &crate::sys::remote::fake::Call, off: usize) -> u64 {
    u64_at(c.arg_bytes(0).expect("clone_args written"), off)
}

#[test]
fn a_child_is_cloned_traced_with_its_pid_exit_signal_and_shared_fd_table() {
    use linux_raw_sys::general::clone_args as C;
    use std::mem::offset_of;
    let mut r = Recorder::new(100);
    r.returns("clone3", 123);
    let pid = crate::sys::remote::clone3_process(&mut r, true, 20, Some(123), "child").unwrap();
    assert_eq!(pid, 123);
    let c = r.of("clone3")[0];
    assert_eq!(c.args[1] as usize, std::mem::size_of::<C>());
    let flags = clone_field(c, offset_of!(C, flags));
    assert_eq!(
        flags,
        (libc::CLONE_PTRACE | libc::CLONE_FILES) as u64,
        "traced from the start, sharing the fd table, and nothing of a thread"
    );
    assert_eq!(clone_field(c, offset_of!(C, exit_signal)), 20);
    assert_eq!(clone_field(c, offset_of!(C, set_tid_size)), 1);
    let at = clone_field(c, offset_of!(C, set_tid));
    assert_eq!(c.written_at(at), Some(&123i32.to_ne_bytes()[..]));

    // Without set_tid and with a table of its own.
    let mut r = Recorder::new(100);
    crate::sys::remote::clone3_process(&mut r, false, libc::SIGCHLD, None, "child").unwrap();
    let c = r.of("clone3")[0];
    assert_eq!(
        clone_field(c, offset_of!(C, flags)),
        libc::CLONE_PTRACE as u64
    );
    assert_eq!(clone_field(c, offset_of!(C, set_tid)), 0);
    assert_eq!(clone_field(c, offset_of!(C, set_tid_size)), 0);
    assert_eq!(
        clone_field(c, offset_of!(C, exit_signal)),
        libc::SIGCHLD as u64
    );
}

#[test]
fn a_failed_clone3_names_the_child_and_keeps_its_errno() {
    let mut r = Recorder::new(100);
    r.fail_nth(0, libc::EEXIST);
    let e = crate::sys::remote::clone3_process(&mut r, false, 17, Some(7), "clone3 of child 7")
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST));
    assert!(e.to_string().contains("clone3 of child 7"), "{e}");
}

#[test]
fn the_sigchld_of_a_zombie_is_taken_without_waiting() {
    let mut r = Recorder::new(100);
    r.returns("rt_sigtimedwait", libc::SIGCHLD as i64);
    assert!(crate::sys::remote::take_pending(&mut r, libc::SIGCHLD).unwrap());
    let c = r.of("rt_sigtimedwait")[0];
    // The set holds SIGCHLD alone; no siginfo wanted; a zero timeout; 8-byte sets.
    assert_eq!(c.arg_bytes(0), Some(&(1u64 << 16).to_ne_bytes()[..]));
    assert_eq!(c.args[1], 0);
    assert_eq!(c.arg_bytes(2), Some(&[0u8; 16][..]));
    assert_eq!(c.args[3], 8);
    assert!(c.args[0] >= ARGS_AT);

    // None pending: EAGAIN is no error.
    let mut r = Recorder::new(100);
    r.returns("rt_sigtimedwait", -(libc::EAGAIN as i64));
    assert!(!crate::sys::remote::take_pending(&mut r, libc::SIGCHLD).unwrap());
    // Any other failure is.
    let mut r = Recorder::new(100);
    r.fail_nth(0, libc::EFAULT);
    let e = crate::sys::remote::take_pending(&mut r, libc::SIGCHLD).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EFAULT));
}

#[test]
fn zombie_statuses_a_restore_can_make_and_the_ones_it_refuses() {
    use crate::restore::compat::zombie_status;
    assert!(zombie_status(0).is_ok());
    assert!(zombie_status(5 << 8).is_ok());
    assert!(zombie_status(255 << 8).is_ok());
    assert!(zombie_status(libc::SIGKILL).is_ok());
    assert!(zombie_status(libc::SIGTERM).is_ok());
    assert!(
        zombie_status(40).is_ok(),
        "a real-time signal ends a process"
    );
    let core = zombie_status(libc::SIGSEGV | 0x80).unwrap_err().0;
    assert!(core.contains("dumped core"), "{core}");
    assert!(zombie_status(libc::SIGCHLD).is_err(), "ignored by default");
    assert!(zombie_status(libc::SIGTSTP).is_err(), "stops");
    assert!(zombie_status(0x7f).is_err(), "a stop status");
    assert!(zombie_status(0x1_0000).is_err());
}

fn tree_set(desc: Vec<ProcessImage>, zombies: Vec<ZombieImage>) -> ImageSet {
    let mut s = set_with(&[]);
    s.process = Some(ProcessImage {
        pid: 10,
        ppid: 1,
        pgid: 10,
        sid: 10,
        ..Default::default()
    });
    s.tree = Tree {
        descendants: desc,
        zombies,
        ..Default::default()
    };
    s
}

fn child(pid: i32, pgid: i32, sid: i32) -> ProcessImage {
    ProcessImage {
        pid,
        ppid: 10,
        pgid,
        sid,
        ..Default::default()
    }
}

#[test]
fn any_pid_is_refused_where_the_tree_keeps_pids_and_allowed_otherwise() {
    use crate::restore::compat::any_pid_cares;
    // Children in the root's group and session: new pids are given.
    assert!(any_pid_cares(&tree_set(vec![child(11, 10, 10)], vec![])).is_ok());
    // A zombie is reaped by the pid its parent knows.
    let z = ZombieImage {
        pid: 12,
        ppid: 10,
        pgid: 10,
        sid: 10,
        ..Default::default()
    };
    let e = any_pid_cares(&tree_set(vec![], vec![z])).unwrap_err().0;
    assert!(
        e.contains("zombie pid 12") && e.contains("pid = \"same\""),
        "{e}"
    );
    // A descendant leading a group (job control) or a session.
    let e = any_pid_cares(&tree_set(vec![child(11, 11, 10)], vec![]))
        .unwrap_err()
        .0;
    assert!(e.contains("pid 11 is in process group 11"), "{e}");
    let e = any_pid_cares(&tree_set(vec![child(11, 11, 11)], vec![]))
        .unwrap_err()
        .0;
    assert!(e.contains("pid 11"), "{e}");
}
