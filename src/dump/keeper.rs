//! The memory keeper: a process that shares the address space of a process being killed, so
//! that the kill does not wait for its memory to be freed.
//!
//! A dump that kills its process (a migration with `pid = "same"`) waits for the pid to be
//! free, and a process is gone only once its address space is torn down: 30–50 ms per GiB on
//! this kind of VM (freed pages are reported to the host), the largest phase left in a
//! pre-copy migration's pause. So just before the SIGKILL, the frozen process is made to
//! clone a child that shares its address space (an injected `clone(CLONE_VM)`). The process
//! then exits without tearing its memory down, and its pid is free at once. The keeper is
//! killed once that death is collected: its exit frees the memory on one core while haul
//! reads the manifest on the other, before the restore allocates the same amount again.
//!
//! The keeper never runs an instruction of its own: it is born traced and stopped
//! (`PTRACE_O_TRACECLONE`), and with `PTRACE_O_EXITKILL`, so that the kernel kills it if haul
//! dies. Before the kill, injected syscalls make it harmless to the restore: `close_range`
//! closes its copies of the process's fds (a listening socket or the end of a pipe it held
//! would outlive the process), and `setsid` takes it out of the process's group and session
//! (a pid that names a group cannot be given to a restored process). Anything that fails
//! along the way ends the keeper, and the kill goes on without one.
//!
//! Only a process holding at least [`KEEP_MIN_RESIDENT`] gets one, and none that attaches
//! SysV shared memory: a segment marked for removal would outlive the process, and a restore
//! makes it again.
//!
//! **An adoptable keeper** ([`make_adoptable`], `DumpOptions::hand_keepers`) is one a restore
//! on this host then takes the memory from: the restored process is made by an injected
//! `clone3(CLONE_VM)` in the keeper (`restore::adopt`), so it runs on the very pages the set
//! was read from, none written again. Three differences:
//! - it leaves only the process's group (`setpgid`), and its session only when the process
//!   leads it: the restored process, cloned from it, starts in the session the keeper is in;
//! - before the kill, every thread of the process is made to leave nothing for the kernel to
//!   write into the kept memory as it exits (`remote::clear_exit_writes`: no `clear_child_tid`,
//!   no robust list; the restore sets both again);
//! - once the process's death is collected it is handed over ([`Keeper::hand_over`]) rather
//!   than killed: detached into a group stop, with registers that make it `exit_group` at once
//!   if anything resumed it before the restore seizes it, and `PR_SET_PDEATHSIG` so that it
//!   dies with the haul it was handed to. The checkpoint worker's main thread (their tracer)
//!   hands them over once every death is collected ([`super::hand_over_keepers`]) and names
//!   them to haul.

use super::freeze::Frozen;
use super::DumpError;
use crate::sys::ptrace::{self, Stop, PTRACE_O_EXITKILL, PTRACE_O_TRACECLONE};
use crate::sys::remote::{self, RemoteSyscall};
use crate::sys::{process, seccomp};

/// Below this much resident memory a process exits fast enough (about 1.5 ms per 32 MiB here)
/// that a keeper (under a millisecond to make) is not worth having.
pub const KEEP_MIN_RESIDENT: u64 = 32 << 20;

/// A process sharing a killed process's address space, stopped, traced by haul.
#[derive(Debug)]
pub(crate) struct Keeper {
    pub pid: i32,
    /// Made by [`make_adoptable`]: handed over once the process is dead, not ended.
    pub adoptable: bool,
}

/// What a child of [`make_child`] leaves of the process it was cloned from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leave {
    /// Its group and its session (`setsid`).
    Session,
    /// Its group (`setpgid(0, 0)`), and its session only when the process leads it: the
    /// pid is then free for the restored process, which starts in the keeper's session.
    Group,
}

/// Whether `pid` should get a keeper: see the module documentation.
pub(crate) fn wanted(pid: i32) -> bool {
    let big = crate::proc::resident_pages(pid)
        .map(|n| n * crate::image::PAGE_SIZE as u64 >= KEEP_MIN_RESIDENT)
        .unwrap_or(false);
    big && crate::proc::maps(pid)
        .map(|m| !m.iter().any(|e| e.path.starts_with("/SYSV")))
        .unwrap_or(false)
}

/// Makes the keeper of frozen process `f` (through its main thread's injector), which must be
/// killed next.
pub(crate) fn make(f: &mut Frozen) -> Result<Keeper, DumpError> {
    Ok(Keeper {
        pid: make_child(f, remote::clone_sharing_mm, "memory keeper", Leave::Session)?,
        adoptable: false,
    })
}

/// Makes the adoptable keeper of frozen process `f` (see the module documentation), which
/// must be killed next: the keeper, then every thread of `f` cleared of what its exit would
/// write into the kept memory. Anything that fails ends the keeper.
pub(crate) fn make_adoptable(f: &mut Frozen) -> Result<Keeper, DumpError> {
    let pid = make_child(f, remote::clone_sharing_mm, "memory keeper", Leave::Group)?;
    let tids: Vec<i32> = f.threads.iter().map(|t| t.tid).collect();
    let cleared = tids
        .into_iter()
        .try_for_each(|tid| f.with_thread(tid, |inj| Ok(remote::clear_exit_writes(inj)?)));
    match cleared {
        Ok(()) => Ok(Keeper {
            pid,
            adoptable: true,
        }),
        Err(e) => {
            end_child(pid, "memory keeper");
            Err(e)
        }
    }
}

/// Makes a child of frozen process `f` with the injected `clone` (through its main thread's
/// injector; the memory keeper's `clone(CLONE_VM)`, or a snapshot's fork): born traced and
/// stopped, killed by the kernel if haul dies, then disarmed (its fds closed, a session of its
/// own) without running an instruction of its own. Returns its pid; anything that fails after
/// the clone ends the child first.
pub(super) fn make_child(
    f: &mut Frozen,
    clone: fn(&mut RemoteSyscall) -> crate::sys::Result<i32>,
    what: &str,
    leave: Leave,
) -> Result<i32, DumpError> {
    let pid = f.pid;
    let leave_session = leave == Leave::Session
        || crate::proc::stat(pid)
            .map(|s| s.session == pid)
            .unwrap_or(true);
    // The injector first: making one sets the thread's options.
    let r = f.injector()?;
    // The child inherits the parent's options: it is born traced, stopped, with EXITKILL.
    // The parent has them only for this clone.
    seccomp::set_tracee_options_with(pid, pid, PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL)?;
    let made = clone(r);
    let reset = seccomp::set_tracee_options(pid, pid);
    let child = made?;
    match reset
        .map_err(DumpError::from)
        .and_then(|()| disarm(child, what, leave_session))
    {
        Ok(()) => Ok(child),
        Err(e) => {
            end_child(child, what);
            Err(e)
        }
    }
}

/// Waits for the first stop of child `pid`, then closes its fds and gives it a session of its
/// own (`leave_session`) or a group of its own.
fn disarm(pid: i32, what: &str, leave_session: bool) -> Result<(), DumpError> {
    // Never resumed to get there: it must not run a single instruction of its own.
    match ptrace::wait_stop(pid)? {
        Stop::Event { .. } => {}
        s => {
            return Err(DumpError::Internal(format!(
                "{what} {pid}: {s} instead of its first stop"
            )))
        }
    }
    let mut r = RemoteSyscall::with_options(pid, pid, PTRACE_O_EXITKILL)?;
    remote::close_range(&mut r, 0, u32::MAX)?;
    if leave_session {
        remote::setsid(&mut r)?;
    } else {
        remote::setpgid(&mut r, 0)?;
    }
    Ok(())
}

/// Waits until keeper `pid`, just detached with `SIGSTOP`, is in its group stop (it runs in
/// the kernel for a moment to take the signal; a restore checks for the stop): 1 s at most.
fn stopped(pid: i32) -> Result<(), DumpError> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let state = crate::proc::stat(pid).map(|s| s.state);
        match state {
            Ok('T') => return Ok(()),
            Ok('R' | 'S' | 'D') if std::time::Instant::now() < end => {
                std::thread::sleep(std::time::Duration::from_micros(200))
            }
            other => {
                return Err(DumpError::Internal(format!(
                    "memory keeper {pid} did not stop once detached: {other:?}"
                )))
            }
        }
    }
}

/// Kills child `pid` of [`make_child`] and collects its death as its tracer.
pub(super) fn end_child(pid: i32, what: &str) {
    if let Err(e) = process::kill(pid, libc::SIGKILL) {
        tracing::warn!(pid, "killing the {what}: {e}");
        return;
    }
    super::freeze::wait_gone(pid);
}

impl Keeper {
    /// Kills it and collects its death as its tracer. Call once the process it kept is dead:
    /// its exit frees the memory. Not at a low priority, nor with `process_mrelease` beside it:
    /// the first left the memory to be freed while the restore allocated (slower pages here,
    /// where freed memory goes back to the host: every page resident 1.05 → 0.86 s at nice
    /// 0), the second took haul's core.
    pub fn end(self) {
        end_child(self.pid, "memory keeper");
    }

    /// Hands an adoptable keeper over to the restore that follows, once the process it kept
    /// is dead and collected (see the module documentation): `PR_SET_PDEATHSIG` (its parent
    /// is now the subreaper the process's death handed it to: haul), registers that run
    /// `exit_group(0)` at a `syscall` instruction of the kept memory if it is ever resumed,
    /// then a detach into a group stop (`SIGSTOP`). Returns its pid; on failure it is ended.
    pub fn hand_over(self) -> Result<i32, DumpError> {
        let pid = self.pid;
        let handed = (|| -> Result<(), DumpError> {
            let mut r = RemoteSyscall::with_options(pid, pid, PTRACE_O_EXITKILL)?;
            remote::prctl(
                &mut r,
                [libc::PR_SET_PDEATHSIG as u64, libc::SIGKILL as u64, 0, 0, 0],
                "prctl(PR_SET_PDEATHSIG)",
            )?;
            let mut regs = ptrace::getregs(pid)?;
            regs.rip = r.insn_addr();
            regs.rax = libc::SYS_exit_group as u64;
            regs.orig_rax = u64::MAX;
            regs.rdi = 0;
            r.set_orig_regs(regs);
            // Dropped: those registers written back, its signal mask (every signal blocked,
            // as when it was made) restored, still in its syscall-exit stop.
            drop(r);
            ptrace::detach(pid, libc::SIGSTOP)?;
            stopped(pid)
        })();
        match handed {
            Ok(()) => Ok(pid),
            Err(e) => {
                end_child(pid, "memory keeper");
                Err(e)
            }
        }
    }

    /// What the death collector does with it once the process it kept is dead: an adoptable
    /// keeper is kept for [`super::hand_over_keepers`], any other ended.
    pub fn finish(self) {
        if self.adoptable {
            super::tree::record_adoptable(self);
        } else {
            self.end();
        }
    }
}

#[cfg(test)]
pub(super) mod sleeper {
    use std::process::{Command, Stdio};

    /// `sleep 100`, a child of this test with a pipe on its stdin and stdout (the other end
    /// held here); killed and reaped however the test ends.
    pub struct Sleep {
        child: std::process::Child,
        pub pid: i32,
        _w: std::os::fd::OwnedFd,
    }

    impl Drop for Sleep {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A [`Sleep`] once it sleeps (state S), or after 10 s.
    pub fn sleeping() -> Sleep {
        let (r, w) = crate::sys::pipe::pipe().expect("pipe");
        let r2 = r.try_clone().expect("dup");
        let child = Command::new("sleep")
            .arg("100")
            .stdin(Stdio::from(r))
            .stdout(Stdio::from(r2))
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let s = Sleep { child, pid, _w: w };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while crate::proc::stat(pid).map(|s| (s.comm, s.state)).ok()
            != Some(("sleep".to_string(), 'S'))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real process (sleep, with a pipe on its stdin and stdout) gets a keeper while frozen:
    /// the keeper shares its address space (kcmp), holds none of its fds, leads a session of
    /// its own, and is stopped under haul's ptrace. Ending it and
    /// thawing leave sleep running, untraced.
    #[test]
    fn a_keeper_shares_the_address_space_and_holds_nothing_the_restore_needs() {
        let child = sleeper::sleeping();
        let pid = child.pid;
        let checked = {
            let mut f = Frozen::seize_all(pid).expect("freeze sleep");
            let k = make(&mut f).expect("make a keeper");
            let st = crate::proc::stat(k.pid).expect("the keeper's stat");
            let status = crate::proc::status(k.pid).expect("the keeper's status");
            let fds = crate::proc::fds(k.pid).expect("the keeper's fds");
            let shared = crate::sys::kcmp::same_vm(pid, k.pid).expect("kcmp");
            let kp = k.pid;
            k.end();
            let gone = !matches!(crate::proc::stat(kp).map(|s| s.state), Ok(s) if s != 'Z');
            drop(f);
            (kp, st, status.tracer_pid, fds, shared, gone)
        };
        let untraced = crate::proc::status(pid).map(|s| s.tracer_pid);
        let state = crate::proc::stat(pid).map(|s| s.state);
        drop(child);
        let (kp, st, tracer, fds, shared, gone) = checked;
        assert_eq!(
            shared,
            Some(true),
            "the keeper does not share sleep's memory"
        );
        assert_eq!(st.state, 't', "the keeper is not stopped under ptrace");
        // (TracerPid names the tracing thread: one of this test process's.)
        assert!(
            tracer != 0 && std::path::Path::new(&format!("/proc/self/task/{tracer}")).exists(),
            "the keeper is traced by {tracer}, not by haul"
        );
        assert!(fds.is_empty(), "the keeper holds fds {fds:?}");
        assert_eq!((st.session, st.pgrp), (kp, kp), "not a session of its own");
        assert!(gone, "the keeper is still alive after its end");
        assert_eq!(untraced.ok(), Some(0), "sleep is still traced");
        assert!(
            matches!(state, Ok('S' | 'R')),
            "sleep is not running: {state:?}"
        );
    }
}
