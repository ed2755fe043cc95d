//! Creating the process a restore rebuilds: a child with a chosen PID, re-parented away from
//! haul, parked in `pause(2)` until haul seizes it.

use super::process::CloneArgs;
use super::{last_err, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Creates a process for a restore and returns its PID. It is a grandchild of haul: haul
/// `fork(2)`s an intermediate that creates the process (with `clone3(2)` and `set_tid` when
/// `pid` is given, else `fork(2)`) and exits, so the new process is re-parented to init (or the
/// nearest subreaper) and is never haul's child. The new process stays in haul's session and
/// process group (the restore moves it to the dumped ones), resets its signal actions to the
/// defaults, and only then reports its PID through a pipe (the intermediate reports a failed
/// clone there instead) and waits in `pause(2)` for haul to seize it. Neither runs Rust code
/// after the fork, only raw syscalls, so a multi-threaded haul can fork safely.
///
/// Errors: the PID is taken (`EEXIST`), out of range (`EINVAL`), or clone3 is refused.
pub fn spawn_parked(pid: Option<i32>) -> Result<i32> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(last_err("pipe2 for the restore child"));
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let set_tid: [libc::pid_t; 1] = [pid.unwrap_or(0)];
    let args = CloneArgs {
        exit_signal: 0,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    let wfd = wr.as_raw_fd();

    // SAFETY: fork(2). In the child only async-signal-safe raw syscalls run (clone3/fork,
    // rt_sigaction, write, pause, _exit) on memory prepared before the fork; it never returns
    // into Rust code.
    let inter = unsafe { libc::fork() };
    if inter < 0 {
        return Err(last_err("fork of the restore intermediate"));
    }
    if inter == 0 {
        // Intermediate process.
        // SAFETY: raw syscalls on locals; see above.
        unsafe {
            let child: libc::c_long = if pid.is_some() {
                libc::syscall(
                    libc::SYS_clone3,
                    &args as *const CloneArgs,
                    std::mem::size_of::<CloneArgs>(),
                )
            } else {
                libc::fork() as libc::c_long
            };
            if child == 0 {
                // The process to restore: every signal action back to the default (no
                // handler, no flags, empty mask), so the restore sets only the actions the
                // image has that differ from that. Only then does it report its PID, so that
                // haul cannot seize it half-way through the reset (on a loaded machine it may
                // not have run at all by the time the intermediate exits); then it waits.
                let dfl = [0u64; 4];
                for sig in 1..=64 {
                    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                        libc::syscall(
                            libc::SYS_rt_sigaction,
                            sig as libc::c_long,
                            dfl.as_ptr(),
                            std::ptr::null::<u64>(),
                            8 as libc::c_long,
                        );
                    }
                }
                let me = (libc::syscall(libc::SYS_getpid) as i64).to_ne_bytes();
                libc::write(wfd, me.as_ptr().cast(), me.len());
                loop {
                    libc::pause();
                }
            }
            if child < 0 {
                let err = (-(*libc::__errno_location() as i64)).to_ne_bytes();
                libc::write(wfd, err.as_ptr().cast(), err.len());
            }
            libc::_exit(0);
        }
    }
    drop(wr);
    let mut status = 0;
    // SAFETY: waitpid on our own child; writes one c_int. Retried when a signal interrupts it,
    // so that the intermediate never lingers as a zombie.
    while unsafe { libc::waitpid(inter, &mut status, 0) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
    let mut buf = [0u8; 8];
    let n = loop {
        // SAFETY: read into an 8-byte local buffer.
        let n = unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break n;
        }
    };
    if n != 8 {
        return Err(SysError::Invalid(
            "the restore child or its intermediate died without a word".into(),
        ));
    }
    let v = i64::from_ne_bytes(buf);
    if v < 0 {
        let what = match pid {
            Some(p) => format!("clone3 with set_tid {p}"),
            None => "fork".into(),
        };
        return Err(super::io_err(
            what,
            std::io::Error::from_raw_os_error((-v) as i32),
        ));
    }
    Ok(v as i32)
}

/// Makes `cmd`'s child close every fd above 2 when it execs, with `close_range(2)` and
/// `CLOSE_RANGE_CLOEXEC` (closing them outright would also close the pipe through which std
/// reports a failed exec): a launched
/// process must not inherit haul's own inherited fds (a cron pipe, a build tool's jobserver),
/// which it would never use and which a checkpoint could not capture.
pub fn close_inherited_fds(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes one raw,
    // async-signal-safe syscall on integers; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
}
