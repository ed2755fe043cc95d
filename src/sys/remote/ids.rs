//! Identity and per-thread calls injected into a thread: credentials (groups, uids, gids,
//! filesystem ids, capabilities), session and group, cwd, umask, personality, rlimits,
//! scheduling, robust list, `clear_child_tid`, rseq, `clone3` of a thread or of a child process,
//! and `prctl`.

use std::mem::{offset_of, size_of};

use linux_raw_sys::general::{
    __user_cap_data_struct as CapData, __user_cap_header_struct as CapHeader,
};

use super::{cstr, field, put, put_at, Inject};
use crate::sys::{Result, SysError};

/// `prctl(2)` with `args` (option first), checked; `what` names it in an error.
pub fn prctl<R: Inject + ?Sized>(r: &mut R, args: [u64; 5], what: &str) -> Result<u64> {
    r.call_ok(
        libc::SYS_prctl,
        [args[0], args[1], args[2], args[3], args[4], 0],
        what,
    )
}

/// `prctl(2)` with `args`, its raw result (for the `PR_GET_*` that return a value or -errno).
pub fn prctl_raw<R: Inject + ?Sized>(r: &mut R, args: [u64; 5]) -> Result<i64> {
    r.call(
        libc::SYS_prctl,
        [args[0], args[1], args[2], args[3], args[4], 0],
    )
}

/// `prctl(PR_SET_NAME)`: the thread's name, cut to the 15 bytes the kernel keeps.
pub fn set_name<R: Inject + ?Sized>(r: &mut R, name: &str) -> Result<()> {
    let c = cstr(name)?;
    let mut b = [0u8; 16];
    let n = (c.len() - 1).min(15);
    b[..n].copy_from_slice(&c[..n]);
    let at = put(r, &b)?;
    prctl(
        r,
        [libc::PR_SET_NAME as u64, at, 0, 0, 0],
        "prctl PR_SET_NAME",
    )?;
    Ok(())
}

/// `prctl(PR_CAPBSET_DROP, cap)`: drops `cap` from the bounding set.
pub fn capbset_drop<R: Inject + ?Sized>(r: &mut R, cap: u32) -> Result<()> {
    prctl(
        r,
        [libc::PR_CAPBSET_DROP as u64, u64::from(cap), 0, 0, 0],
        &format!("prctl PR_CAPBSET_DROP {cap}"),
    )?;
    Ok(())
}

/// `prctl(PR_SET_KEEPCAPS, on)`: keep the permitted capabilities across a uid change.
pub fn set_keepcaps<R: Inject + ?Sized>(r: &mut R, on: bool) -> Result<()> {
    prctl(
        r,
        [libc::PR_SET_KEEPCAPS as u64, u64::from(on), 0, 0, 0],
        &format!("prctl PR_SET_KEEPCAPS {}", u8::from(on)),
    )?;
    Ok(())
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)`.
pub fn cap_ambient_raise<R: Inject + ?Sized>(r: &mut R, cap: u32) -> Result<()> {
    prctl(
        r,
        [
            libc::PR_CAP_AMBIENT as u64,
            libc::PR_CAP_AMBIENT_RAISE as u64,
            u64::from(cap),
            0,
            0,
        ],
        &format!("prctl PR_CAP_AMBIENT_RAISE {cap}"),
    )?;
    Ok(())
}

/// `prctl(PR_SET_SECUREBITS, bits)`.
pub fn set_securebits<R: Inject + ?Sized>(r: &mut R, bits: u32) -> Result<()> {
    prctl(
        r,
        [libc::PR_SET_SECUREBITS as u64, u64::from(bits), 0, 0, 0],
        &format!("prctl PR_SET_SECUREBITS {bits:#x}"),
    )?;
    Ok(())
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs<R: Inject + ?Sized>(r: &mut R) -> Result<()> {
    prctl(
        r,
        [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        "prctl PR_SET_NO_NEW_PRIVS",
    )?;
    Ok(())
}

/// `setgroups(2)`: the supplementary groups of the thread.
pub fn setgroups<R: Inject + ?Sized>(r: &mut R, groups: &[u32]) -> Result<()> {
    let b: Vec<u8> = groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    let at = put(r, &b)?;
    r.call_ok(
        libc::SYS_setgroups,
        [groups.len() as u64, at, 0, 0, 0, 0],
        "setgroups",
    )?;
    Ok(())
}

/// The bytes `capset(2)` reads, version 3: a header {version, pid 0 = the calling thread},
/// then {effective, permitted, inheritable} for capabilities 0-31 and again for 32-63.
/// Layout from linux-raw-sys (`__user_cap_header_struct`, `__user_cap_data_struct`).
pub fn capset_bytes(eff: u64, prm: u64, inh: u64) -> Vec<u8> {
    let head = size_of::<CapHeader>();
    let data = size_of::<CapData>();
    let mut b = vec![0u8; head + 2 * data];
    field(
        &mut b,
        offset_of!(CapHeader, version),
        &linux_raw_sys::general::_LINUX_CAPABILITY_VERSION_3.to_ne_bytes(),
    );
    field(&mut b, offset_of!(CapHeader, pid), &0i32.to_ne_bytes());
    for (i, shift) in [0, 32].into_iter().enumerate() {
        let at = head + i * data;
        let word = |set: u64| ((set >> shift) as u32).to_ne_bytes();
        field(&mut b, at + offset_of!(CapData, effective), &word(eff));
        field(&mut b, at + offset_of!(CapData, permitted), &word(prm));
        field(&mut b, at + offset_of!(CapData, inheritable), &word(inh));
    }
    b
}

/// `capset(2)`, version 3, of the calling thread: effective, permitted, inheritable sets.
pub fn capset<R: Inject + ?Sized>(r: &mut R, eff: u64, prm: u64, inh: u64) -> Result<()> {
    let at = put(r, &capset_bytes(eff, prm, inh))?;
    r.call_ok(
        libc::SYS_capset,
        [at, at + size_of::<CapHeader>() as u64, 0, 0, 0, 0],
        "capset",
    )?;
    Ok(())
}

/// `setresuid(2)`: real, effective and saved user ids.
pub fn setresuid<R: Inject + ?Sized>(r: &mut R, ids: [u32; 3]) -> Result<()> {
    let [a, b, c] = ids.map(u64::from);
    r.call_ok(libc::SYS_setresuid, [a, b, c, 0, 0, 0], "setresuid")?;
    Ok(())
}

/// `setresgid(2)`: real, effective and saved group ids.
pub fn setresgid<R: Inject + ?Sized>(r: &mut R, ids: [u32; 3]) -> Result<()> {
    let [a, b, c] = ids.map(u64::from);
    r.call_ok(libc::SYS_setresgid, [a, b, c, 0, 0, 0], "setresgid")?;
    Ok(())
}

/// Which filesystem id [`set_fs_id`] sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsId {
    /// `setfsuid(2)`.
    Uid,
    /// `setfsgid(2)`.
    Gid,
}

impl FsId {
    /// The syscall's name.
    pub fn name(self) -> &'static str {
        match self {
            FsId::Uid => "setfsuid",
            FsId::Gid => "setfsgid",
        }
    }
}

/// `setfsuid(2)` or `setfsgid(2)` to `id`, then again with -1 (no change) to read the id back:
/// they return the previous id, never an error. Returns the id the thread has now.
pub fn set_fs_id<R: Inject + ?Sized>(r: &mut R, which: FsId, id: u32) -> Result<u32> {
    let nr = match which {
        FsId::Uid => libc::SYS_setfsuid,
        FsId::Gid => libc::SYS_setfsgid,
    };
    r.call(nr, [u64::from(id), 0, 0, 0, 0, 0])?;
    let now = r.call(nr, [u64::from(u32::MAX), 0, 0, 0, 0, 0])?;
    Ok(now as u32)
}

/// `setsid(2)`.
pub fn setsid<R: Inject + ?Sized>(r: &mut R) -> Result<()> {
    r.call_ok(libc::SYS_setsid, [0; 6], "setsid")?;
    Ok(())
}

/// `setpgid(0, pgid)`: the calling process into group `pgid` (0: a group of its own).
pub fn setpgid<R: Inject + ?Sized>(r: &mut R, pgid: i32) -> Result<()> {
    r.call_ok(libc::SYS_setpgid, [0, pgid as u64, 0, 0, 0, 0], "setpgid")?;
    Ok(())
}

/// `chdir(2)` to `path`.
pub fn chdir<R: Inject + ?Sized>(r: &mut R, path: &str) -> Result<()> {
    let at = put(r, &cstr(path)?)?;
    r.call_ok(
        libc::SYS_chdir,
        [at, 0, 0, 0, 0, 0],
        &format!("chdir {path}"),
    )?;
    Ok(())
}

/// `umask(2)`: returns the previous mask (it cannot fail).
pub fn umask<R: Inject + ?Sized>(r: &mut R, mask: u32) -> Result<u32> {
    Ok(r.call(libc::SYS_umask, [u64::from(mask), 0, 0, 0, 0, 0])? as u32)
}

/// `personality(2)`: returns the previous persona, never an error for a valid one.
pub fn personality<R: Inject + ?Sized>(r: &mut R, persona: u32) -> Result<()> {
    r.call_ok(
        libc::SYS_personality,
        [u64::from(persona), 0, 0, 0, 0, 0],
        &format!("personality {persona:#x}"),
    )?;
    Ok(())
}

/// `prlimit64(0, resource, &{cur, max}, NULL)`: one resource limit of the calling process.
pub fn prlimit64<R: Inject + ?Sized>(r: &mut R, resource: u32, cur: u64, max: u64) -> Result<()> {
    let mut b = vec![0u8; size_of::<libc::rlimit64>()];
    field(
        &mut b,
        offset_of!(libc::rlimit64, rlim_cur),
        &cur.to_ne_bytes(),
    );
    field(
        &mut b,
        offset_of!(libc::rlimit64, rlim_max),
        &max.to_ne_bytes(),
    );
    let at = put(r, &b)?;
    r.call_ok(
        libc::SYS_prlimit64,
        [0, u64::from(resource), at, 0, 0, 0],
        &format!("prlimit64 resource {resource}"),
    )?;
    Ok(())
}

/// `sched_setscheduler(0, policy, &{priority})`.
pub fn sched_setscheduler<R: Inject + ?Sized>(r: &mut R, policy: u32, priority: i32) -> Result<()> {
    let at = put(r, &priority.to_ne_bytes())?;
    r.call_ok(
        libc::SYS_sched_setscheduler,
        [0, u64::from(policy), at, 0, 0, 0],
        &format!("sched_setscheduler policy {policy} priority {priority}"),
    )?;
    Ok(())
}

/// `setpriority(PRIO_PROCESS, 0, nice)`: the nice value of the calling thread (per thread in
/// Linux).
pub fn setpriority<R: Inject + ?Sized>(r: &mut R, nice: i32) -> Result<()> {
    r.call_ok(
        libc::SYS_setpriority,
        [libc::PRIO_PROCESS as u64, 0, nice as i64 as u64, 0, 0, 0],
        &format!("setpriority nice {nice}"),
    )?;
    Ok(())
}

/// The CPU mask `sched_setaffinity(2)` reads for `cpus`: whole 64-bit words, a bit per CPU.
pub fn cpu_mask(cpus: &[u32]) -> Vec<u8> {
    let Some(&max) = cpus.iter().max() else {
        return Vec::new();
    };
    let mut mask = vec![0u8; (max as usize / 64 + 1) * 8];
    for &c in cpus {
        mask[c as usize / 8] |= 1 << (c % 8);
    }
    mask
}

/// `sched_setaffinity(0, len, mask)` for `cpus` (not empty); returns the raw result, as a
/// CPU set may not fit this host (the caller decides).
pub fn sched_setaffinity<R: Inject + ?Sized>(r: &mut R, cpus: &[u32]) -> Result<i64> {
    let mask = cpu_mask(cpus);
    let at = put(r, &mask)?;
    r.call(
        libc::SYS_sched_setaffinity,
        [0, mask.len() as u64, at, 0, 0, 0],
    )
}

/// `set_robust_list(2)`.
pub fn set_robust_list<R: Inject + ?Sized>(r: &mut R, head: u64, len: u64) -> Result<()> {
    r.call_ok(
        libc::SYS_set_robust_list,
        [head, len, 0, 0, 0, 0],
        "set_robust_list",
    )?;
    Ok(())
}

/// `set_tid_address(2)` (it returns the caller's tid; it cannot fail).
pub fn set_tid_address<R: Inject + ?Sized>(r: &mut R, addr: u64) -> Result<()> {
    r.call_ok(
        libc::SYS_set_tid_address,
        [addr, 0, 0, 0, 0, 0],
        "set_tid_address",
    )?;
    Ok(())
}

/// Leaves the calling thread nothing the kernel writes into its memory when it exits: no
/// `clear_child_tid` (set_tid_address(2) with NULL) and no robust futex list
/// (set_robust_list(2) with NULL). For a thread killed while another process shares its
/// address space and a restore takes that address space over (a memory keeper,
/// `dump::keeper`): its exit would zero its tid word (glibc's `pthread_self()->tid`) and mark
/// the robust mutexes it holds owner-died, in memory the restored process runs on.
pub fn clear_exit_writes<R: Inject + ?Sized>(r: &mut R) -> Result<()> {
    set_tid_address(r, 0)?;
    let head = size_of::<linux_raw_sys::general::robust_list_head>() as u64;
    set_robust_list(r, 0, head)
}

/// `rseq(2)` registration of the `len`-byte area at `addr` with signature `sig`.
pub fn rseq_register<R: Inject + ?Sized>(r: &mut R, addr: u64, len: u32, sig: u32) -> Result<()> {
    r.call_ok(
        libc::SYS_rseq,
        [addr, u64::from(len), 0, u64::from(sig), 0, 0],
        "rseq register",
    )?;
    Ok(())
}

/// `rseq(2)` unregistration (`RSEQ_FLAG_UNREGISTER`) of the area registered at `addr`.
pub fn rseq_unregister<R: Inject + ?Sized>(r: &mut R, addr: u64, len: u32, sig: u32) -> Result<()> {
    r.call_ok(
        libc::SYS_rseq,
        [
            addr,
            u64::from(len),
            crate::sys::process::RSEQ_FLAG_UNREGISTER as u64,
            u64::from(sig),
            0,
            0,
        ],
        "rseq unregister",
    )?;
    Ok(())
}

/// `membarrier(cmd, 0, 0)`.
pub fn membarrier<R: Inject + ?Sized>(r: &mut R, cmd: u64) -> Result<()> {
    r.call_ok(
        libc::SYS_membarrier,
        [cmd, 0, 0, 0, 0, 0],
        &format!("membarrier register {cmd:#x}"),
    )?;
    Ok(())
}

/// `clone3(2)` flags of a thread as pthread_create makes one; `CLONE_PTRACE` makes the caller's
/// tracer its tracer from the start (it stops before running any code).
pub const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_PTRACE) as u64;

/// `clone3(2)` of a thread ([`THREAD_FLAGS`]) with `stack` (of `stack_size` bytes), and the
/// thread id `set_tid` when given. `struct clone_args` (linux-raw-sys layout) and the set_tid
/// array go to the argument area. Returns the new thread's id; `what` names it in an error.
pub fn clone3_thread<R: Inject + ?Sized>(
    r: &mut R,
    stack: u64,
    stack_size: u64,
    set_tid: Option<i32>,
    what: &str,
) -> Result<i32> {
    use linux_raw_sys::general::clone_args as C;
    let len = size_of::<C>();
    let (tid_at, _) = r.args_area().ok_or_else(|| {
        SysError::Invalid(format!("thread {}: no argument area for clone3", r.tid()))
    })?;
    let tid_at = tid_at + len as u64;
    let mut b = vec![0u8; len];
    field(&mut b, offset_of!(C, flags), &THREAD_FLAGS.to_ne_bytes());
    field(&mut b, offset_of!(C, stack), &stack.to_ne_bytes());
    field(&mut b, offset_of!(C, stack_size), &stack_size.to_ne_bytes());
    if let Some(tid) = set_tid {
        field(&mut b, offset_of!(C, set_tid), &tid_at.to_ne_bytes());
        field(&mut b, offset_of!(C, set_tid_size), &1u64.to_ne_bytes());
        put_at(r, len as u64, &tid.to_ne_bytes())?;
    }
    let at = put(r, &b)?;
    let tid = r.call_ok(libc::SYS_clone3, [at, len as u64, 0, 0, 0, 0], what)?;
    Ok(tid as i32)
}

/// `clone3(2)` of a child process of the calling one (a fork: no `CLONE_VM`), traced from the
/// start (`CLONE_PTRACE`: the caller's tracer is its tracer and it stops before its first
/// instruction), with `CLONE_FILES` when `share_files` (it shares the caller's fd table), the
/// signal its parent gets when it ends (`exit_signal`), and the pid `set_tid` when given.
/// `struct clone_args` and the set_tid array go to the argument area. Returns the child's pid.
pub fn clone3_process<R: Inject + ?Sized>(
    r: &mut R,
    share_files: bool,
    exit_signal: i32,
    set_tid: Option<i32>,
    what: &str,
) -> Result<i32> {
    let mut flags = libc::CLONE_PTRACE as u64;
    if share_files {
        flags |= libc::CLONE_FILES as u64;
    }
    clone3_with(r, flags, exit_signal, set_tid, what)
}

/// `clone3(2)` with `CLONE_VM | CLONE_PTRACE`: a process that shares the caller's address
/// space (and nothing else: its fd table, signal actions, credentials and the rest are
/// copies), traced from the start as [`clone3_process`]'s children are, with no exit signal
/// and the pid `set_tid`. A restore makes the process it rebuilds this way from a memory
/// keeper (`restore::adopt`): the address space the keeper holds becomes the process's own
/// once the keeper is gone. Needs `CAP_SYS_ADMIN` or `CAP_CHECKPOINT_RESTORE` in the caller
/// for `set_tid`. Returns the new process's pid.
pub fn clone3_sharing_mm<R: Inject + ?Sized>(r: &mut R, set_tid: i32, what: &str) -> Result<i32> {
    let flags = (libc::CLONE_VM | libc::CLONE_PTRACE) as u64;
    clone3_with(r, flags, 0, Some(set_tid), what)
}

/// `clone3(2)` with `flags`, `exit_signal` and the pid `set_tid` when given: `struct
/// clone_args` and the set_tid array go to the argument area.
fn clone3_with<R: Inject + ?Sized>(
    r: &mut R,
    flags: u64,
    exit_signal: i32,
    set_tid: Option<i32>,
    what: &str,
) -> Result<i32> {
    use linux_raw_sys::general::clone_args as C;
    let len = size_of::<C>();
    let (tid_at, _) = r.args_area().ok_or_else(|| {
        SysError::Invalid(format!("process {}: no argument area for clone3", r.pid()))
    })?;
    let tid_at = tid_at + len as u64;
    let mut b = vec![0u8; len];
    field(&mut b, offset_of!(C, flags), &flags.to_ne_bytes());
    field(
        &mut b,
        offset_of!(C, exit_signal),
        &(exit_signal as u64).to_ne_bytes(),
    );
    if let Some(pid) = set_tid {
        field(&mut b, offset_of!(C, set_tid), &tid_at.to_ne_bytes());
        field(&mut b, offset_of!(C, set_tid_size), &1u64.to_ne_bytes());
        put_at(r, len as u64, &pid.to_ne_bytes())?;
    }
    let at = put(r, &b)?;
    let pid = r.call_ok(libc::SYS_clone3, [at, len as u64, 0, 0, 0, 0], what)?;
    Ok(pid as i32)
}
