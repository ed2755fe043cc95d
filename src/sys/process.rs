//! Process-level syscalls: pidfds, signals, robust futex lists, resource limits, and the
//! structures restore needs (`clone3`, `PR_SET_MM_MAP`, rseq). Syscall numbers are x86_64.

use super::{check, last_err, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Syscall numbers haul injects into targets or calls directly, by the names the dump side
/// uses (all from libc).
pub mod nr {
    pub const READ: i64 = libc::SYS_read;
    pub const WRITE: i64 = libc::SYS_write;
    pub const CLOSE: i64 = libc::SYS_close;
    pub const MMAP: i64 = libc::SYS_mmap;
    pub const MPROTECT: i64 = libc::SYS_mprotect;
    pub const MUNMAP: i64 = libc::SYS_munmap;
    pub const BRK: i64 = libc::SYS_brk;
    pub const RT_SIGACTION: i64 = libc::SYS_rt_sigaction;
    pub const RT_SIGPROCMASK: i64 = libc::SYS_rt_sigprocmask;
    pub const MREMAP: i64 = libc::SYS_mremap;
    pub const GETPID: i64 = libc::SYS_getpid;
    pub const GETITIMER: i64 = libc::SYS_getitimer;
    pub const EXIT: i64 = libc::SYS_exit;
    pub const KILL: i64 = libc::SYS_kill;
    pub const SIGALTSTACK: i64 = libc::SYS_sigaltstack;
    pub const PRCTL: i64 = libc::SYS_prctl;
    pub const MEMBARRIER: i64 = libc::SYS_membarrier;
    pub const GETTID: i64 = libc::SYS_gettid;
    pub const SET_TID_ADDRESS: i64 = libc::SYS_set_tid_address;
    pub const TIMER_GETTIME: i64 = libc::SYS_timer_gettime;
    pub const TGKILL: i64 = libc::SYS_tgkill;
    pub const SET_ROBUST_LIST: i64 = libc::SYS_set_robust_list;
    pub const GET_ROBUST_LIST: i64 = libc::SYS_get_robust_list;
    pub const PRLIMIT64: i64 = libc::SYS_prlimit64;
    pub const USERFAULTFD: i64 = libc::SYS_userfaultfd;
    pub const RSEQ: i64 = libc::SYS_rseq;
    pub const PIDFD_OPEN: i64 = libc::SYS_pidfd_open;
    pub const CLONE3: i64 = libc::SYS_clone3;
    pub const PIDFD_GETFD: i64 = libc::SYS_pidfd_getfd;
    pub const PROCESS_MRELEASE: i64 = libc::SYS_process_mrelease;
    pub const KCMP: i64 = libc::SYS_kcmp;
}

/// Opens a pidfd for `pid`: `pidfd_open(pid, 0)`, see pidfd_open(2).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(nr::PIDFD_OPEN, pid as libc::c_long, 0 as libc::c_long) };
    let fd = check(fd, || format!("pidfd_open({pid})"))?;
    // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Duplicates fd `target_fd` of the process behind `pidfd` into this process:
/// `pidfd_getfd(pidfd, targetfd, 0)`, see pidfd_getfd(2). Needs ptrace attach access.
pub fn pidfd_getfd(pidfd: &OwnedFd, target_fd: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes three integers and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            nr::PIDFD_GETFD,
            pidfd.as_raw_fd() as libc::c_long,
            target_fd as libc::c_long,
            0 as libc::c_long,
        )
    };
    let fd = check(fd, || format!("pidfd_getfd(target fd {target_fd})"))?;
    // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Frees the memory of the dying process behind `pidfd` in the caller's context, alongside
/// the process's own exit: `process_mrelease(pidfd, 0)`, see process_mrelease(2) (Linux 5.15).
/// Only for a process already sent SIGKILL (`EINVAL` otherwise); a process whose memory is
/// already gone returns at once.
pub fn process_mrelease(pidfd: &OwnedFd) -> Result<()> {
    // SAFETY: process_mrelease takes a descriptor and a flags word, and touches no memory of
    // ours.
    let r = unsafe {
        libc::syscall(
            nr::PROCESS_MRELEASE,
            pidfd.as_raw_fd() as libc::c_long,
            0 as libc::c_long,
        )
    };
    check(r, || "process_mrelease".to_string())?;
    Ok(())
}

/// Sends `sig` to thread `tid` of process `tgid`: `tgkill(2)`.
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> Result<()> {
    // SAFETY: tgkill takes three integers.
    let r = unsafe {
        libc::syscall(
            nr::TGKILL,
            tgid as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
        )
    };
    check(r, || format!("tgkill({tgid}, {tid}, {sig})"))?;
    Ok(())
}

/// Sends `sig` to process `pid`: `kill(2)`. Signal 0 checks that the process exists and that we
/// may signal it.
pub fn kill(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill takes two integers.
    let r = unsafe { libc::kill(pid, sig) };
    if r < 0 {
        return Err(last_err(format!("kill({pid}, {sig})")));
    }
    Ok(())
}

/// `killpg(2)`: sends `sig` to every process of process group `pgid`.
pub fn killpg(pgid: i32, sig: i32) -> Result<()> {
    // SAFETY: killpg takes two integers.
    let r = unsafe { libc::killpg(pgid, sig) };
    if r < 0 {
        return Err(last_err(format!("killpg({pgid}, {sig})")));
    }
    Ok(())
}

/// `getppid(2)`: the pid of haul's parent (1 or a subreaper once the parent is gone).
pub fn getppid() -> i32 {
    // SAFETY: getppid takes nothing and cannot fail.
    unsafe { libc::getppid() }
}

/// `setpriority(PRIO_PROCESS, 0, nice)` (setpriority(2)): the nice value of the calling thread
/// (on Linux, `PRIO_PROCESS` with 0 names the calling thread, not the whole process). Raising it
/// needs no privilege.
pub fn set_thread_nice(nice: i32) -> Result<()> {
    // SAFETY: setpriority takes three integers and touches no memory of ours.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r < 0 {
        return Err(last_err(format!("setpriority(PRIO_PROCESS, 0, {nice})")));
    }
    Ok(())
}

/// `prctl(PR_SET_PDEATHSIG)` (prctl(2)): the calling thread gets `sig` when its parent dies.
pub fn set_pdeathsig(sig: i32) -> Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes an integer signal number; the rest are unused.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        return Err(last_err(format!("prctl(PR_SET_PDEATHSIG, {sig})")));
    }
    Ok(())
}

/// The robust futex list head and length of thread `tid`: `get_robust_list(2)` (works from
/// outside the target with ptrace read access).
pub fn get_robust_list(tid: i32) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: the kernel writes one pointer to `head` and one size_t to `len`, both live locals.
    let r = unsafe {
        libc::syscall(
            nr::GET_ROBUST_LIST,
            tid as libc::c_long,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    check(r, || format!("get_robust_list({tid})"))?;
    Ok((head, len as u64))
}

/// One resource limit of process `pid`: `prlimit64(pid, resource, NULL, &old)`, see
/// getrlimit(2). Returns (cur, max) with `u64::MAX` for RLIM_INFINITY.
pub fn prlimit(pid: i32, resource: u32) -> Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the kernel writes one struct rlimit64 to `old`, a live local; new_limit is NULL.
    let r = unsafe {
        libc::syscall(
            nr::PRLIMIT64,
            pid as libc::c_long,
            resource as libc::c_long,
            std::ptr::null::<libc::rlimit64>(),
            &mut old as *mut libc::rlimit64,
        )
    };
    check(r, || format!("prlimit64({pid}, {resource})"))?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// `struct clone_args` of `clone3(2)` (version 2, 88 bytes, with `set_tid` and `cgroup`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// `struct prctl_mm_map` of `prctl(PR_SET_MM, PR_SET_MM_MAP, &map, 104)` (linux/prctl.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Pointer to the auxv words (in the process calling prctl).
    pub auxv: u64,
    /// Size of the auxv array in bytes.
    pub auxv_size: u32,
    /// fd of the new `/proc/PID/exe`, or -1.
    pub exe_fd: u32,
}

// The layout of linux/prctl.h, as linux-raw-sys has it (its `auxv` is a pointer; here an
// address in the target).
const _: () = {
    use linux_raw_sys::prctl::prctl_mm_map as K;
    use std::mem::{offset_of, size_of};
    assert!(size_of::<PrctlMmMap>() == size_of::<K>());
    assert!(offset_of!(PrctlMmMap, start_code) == offset_of!(K, start_code));
    assert!(offset_of!(PrctlMmMap, env_end) == offset_of!(K, env_end));
    assert!(offset_of!(PrctlMmMap, auxv) == offset_of!(K, auxv));
    assert!(offset_of!(PrctlMmMap, auxv_size) == offset_of!(K, auxv_size));
    assert!(offset_of!(PrctlMmMap, exe_fd) == offset_of!(K, exe_fd));
};

/// `membarrier(2)` commands (linux/membarrier.h, through linux-raw-sys: libc has none).
pub mod membarrier {
    use linux_raw_sys::general::membarrier_cmd as c;
    /// The registrations the process made: a mask of the `REGISTER_*` commands (Linux 6.3).
    pub const GET_REGISTRATIONS: u64 = c::MEMBARRIER_CMD_GET_REGISTRATIONS as u64;
    /// Every registration command, in the order a restore makes them again.
    pub const REGISTER: [u64; 4] = [
        c::MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED as u64,
        c::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED as u64,
        c::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE as u64,
        c::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ as u64,
    ];
}

/// `PR_SET_MM` (prctl option 35), `PR_SET_MM_MAP` (14), `PR_SET_MM_MAP_SIZE` (15), from libc.
pub const PR_SET_MM: i32 = libc::PR_SET_MM;
pub const PR_SET_MM_MAP: i32 = libc::PR_SET_MM_MAP;
pub const PR_SET_MM_MAP_SIZE: i32 = libc::PR_SET_MM_MAP_SIZE;

/// rseq(2) constants: `RSEQ_FLAG_UNREGISTER`, the size of `struct rseq` (original ABI: 32).
pub const RSEQ_FLAG_UNREGISTER: i32 = 1;
pub const RSEQ_MIN_SIZE: u32 = 32;

/// `PF_EXITING` in the `flags` field of `/proc/PID/stat`: the process is exiting (its memory may
/// already be gone while it is not yet a zombie).
pub const PF_EXITING: u64 = 0x0000_0004;

/// `PF_KTHREAD` in the `flags` field of `/proc/PID/stat`: a kernel thread.
pub const PF_KTHREAD: u64 = 0x0020_0000;

/// This process's id: getpid(2).
pub fn getpid() -> i32 {
    std::process::id() as i32
}

/// Effective user id of this process: geteuid(2).
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and has no arguments.
    unsafe { libc::geteuid() }
}

impl PrctlMmMap {
    /// The struct as the 104 bytes `prctl(PR_SET_MM, PR_SET_MM_MAP, ptr, 104)` reads, to be
    /// written into a target's scratch page before an injected prctl.
    pub fn to_bytes(&self) -> Vec<u8> {
        let words = [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
            self.auxv,
        ];
        let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        b.extend_from_slice(&self.auxv_size.to_ne_bytes());
        b.extend_from_slice(&self.exe_fd.to_ne_bytes());
        b
    }
}

/// Creates a child process that stops itself at once (`SIGSTOP`), optionally with the pid
/// `set_tid`: `clone3(2)` with `exit_signal = SIGCHLD` and `set_tid` (works outside a new pid
/// namespace for root; `EEXIST` when the pid is taken). Returns the child's pid once it is
/// stopped. The child runs no Rust code: it only raises SIGSTOP and, if ever continued
/// unchanged, exits with status 0 — restore replaces its whole address space first.
pub fn clone3_stopped_child(set_tid: Option<i32>) -> Result<i32> {
    let tid: libc::pid_t = set_tid.unwrap_or(0);
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if set_tid.is_some() {
            &tid as *const libc::pid_t as u64
        } else {
            0
        },
        set_tid_size: u64::from(set_tid.is_some()),
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of our address
    // space. In the child only async-signal-safe calls follow (raise, _exit), so no lock held
    // by another thread of ours at the time of the clone can be touched.
    let r = unsafe {
        libc::syscall(
            nr::CLONE3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        // SAFETY: async-signal-safe calls in the freshly cloned child.
        unsafe {
            libc::raise(libc::SIGSTOP);
            libc::_exit(0);
        }
    }
    let pid = check(r, || format!("clone3(set_tid {set_tid:?})"))? as i32;
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one c_int to `status`, a live local.
        let w = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
        if w == pid && libc::WIFSTOPPED(status) {
            return Ok(pid);
        }
        if w == pid {
            return Err(super::SysError::Gone {
                tid: pid,
                how: format!("new child ended before stopping (status {status:#x})"),
            });
        }
        if w < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(last_err(format!("waitpid({pid}, WUNTRACED)")));
        }
    }
}

/// `KCMP_FILE` and `KCMP_FILES` of kcmp(2) (linux/kcmp.h; neither libc nor linux-raw-sys has
/// them).
const KCMP_FILE: libc::c_long = 0;
const KCMP_FILES: libc::c_long = 2;

/// Whether fds `a` and `b` of process `pid` are the same open file description (one offset,
/// one set of status flags: `dup`, `2>&1`), with `kcmp(pid, pid, KCMP_FILE, a, b)`, see kcmp(2).
pub fn same_open_file(pid: i32, a: i32, b: i32) -> Result<bool> {
    kcmp_file(pid, a, pid, b)
}

/// Whether fd `a` of process `pa` and fd `b` of process `pb` are the same open file
/// description (inherited across `fork`, passed over a socket):
/// `kcmp(pa, pb, KCMP_FILE, a, b)`, see kcmp(2).
pub fn kcmp_file(pa: i32, a: i32, pb: i32, b: i32) -> Result<bool> {
    // SAFETY: kcmp takes only integers and reads nothing from our memory.
    let r = unsafe {
        libc::syscall(
            nr::KCMP,
            pa,
            pb,
            KCMP_FILE,
            a as libc::c_long,
            b as libc::c_long,
        )
    };
    check(r, || {
        format!("kcmp(pid {pa}, pid {pb}, KCMP_FILE, fd {a}, fd {b})")
    })?;
    Ok(r == 0)
}

/// Whether processes `pa` and `pb` share one fd table (`CLONE_FILES`):
/// `kcmp(pa, pb, KCMP_FILES)`, see kcmp(2).
pub fn same_fd_table(pa: i32, pb: i32) -> Result<bool> {
    // SAFETY: kcmp takes only integers and reads nothing from our memory.
    let r = unsafe {
        libc::syscall(
            nr::KCMP,
            pa,
            pb,
            KCMP_FILES,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    check(r, || format!("kcmp(pid {pa}, pid {pb}, KCMP_FILES)"))?;
    Ok(r == 0)
}

/// The session id of this process: getsid(2); -1 if it cannot be read.
pub fn own_sid() -> i32 {
    // SAFETY: getsid takes an integer (0: the caller) and returns an id or -1.
    unsafe { libc::getsid(0) }
}

/// The process group of this process: getpgrp(2) (it cannot fail).
pub fn own_pgrp() -> i32 {
    // SAFETY: getpgrp has no arguments and cannot fail.
    unsafe { libc::getpgrp() }
}
