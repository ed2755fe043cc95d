//! Capturing the process state under the freeze: per thread (registers, regsets, signal mask,
//! pending signals, rseq, robust list, alternate stack) and per process (address space, files,
//! credentials, limits, signal dispositions, mm fields).

use super::freeze::Frozen;
use super::{check, DumpError};
use crate::image::{
    Creds, ITimer, MmFields, PosixTimer, ProcessImage, Rlimit, Rseq, Sched, SigAction, SigAltStack,
    ThreadImage, Vma, VmaKind,
};
use crate::proc;
use crate::sys::process::{self, nr};
use crate::sys::ptrace::{self, NT_PRFPREG, NT_X86_XSTATE};

/// Per-thread state that needs no injection, for every thread; the main thread first.
pub(crate) fn capture_threads(frozen: &mut Frozen) -> Result<ProcessImage, DumpError> {
    let pid = frozen.pid;
    let mut tids: Vec<i32> = frozen.threads.iter().map(|t| t.tid).collect();
    tids.sort_by_key(|&t| (t != pid, t));
    let mut threads = Vec::with_capacity(tids.len());
    for tid in tids {
        let regs = ptrace::getregs(tid)?;
        let xstate = match ptrace::getregset(tid, NT_X86_XSTATE) {
            Ok(x) => x,
            // No XSAVE on this CPU: the FXSAVE area below is all there is.
            Err(e) if e.errno() == Some(libc::ENODEV) || e.errno() == Some(libc::EINVAL) => {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let fpregs = ptrace::getregset(tid, NT_PRFPREG)?;
        let sigmask = ptrace::get_sigmask(tid)?;
        let rseq = match ptrace::get_rseq_config(tid) {
            Ok(c) => c.map(|c| Rseq {
                addr: c.rseq_abi_pointer,
                len: c.rseq_abi_size,
                sig: c.signature,
                flags: c.flags,
            }),
            // Kernels before 5.13 do not have PTRACE_GET_RSEQ_CONFIGURATION.
            Err(e) if e.errno() == Some(libc::EIO) || e.errno() == Some(libc::EINVAL) => None,
            Err(e) => return Err(e.into()),
        };
        let robust = process::get_robust_list(tid)?;
        let tstatus = proc::task_status(pid, tid)?;
        let tstat = proc::task_stat(pid, tid)?;
        threads.push(ThreadImage {
            // Set by capture_process where the thread's differ from the process's.
            cgroups: Vec::new(),
            tid,
            // A restored process must restart (or fail with EINTR) the syscall this thread was
            // stopped in; the live target is simply detached, and the kernel does it there.
            regs: regs.restart_adjusted().to_bytes(),
            restart: regs.restart_code(),
            xstate,
            fpregs,
            sigmask,
            pending: tstatus.sig_pnd,
            rseq,
            robust_list: (robust.0 != 0).then_some(robust),
            sigaltstack: None,
            comm: proc::task_comm(pid, tid)?,
            clear_child_tid: 0,
            pending_info: Vec::new(),
            sched: Some(Sched {
                policy: tstat.policy,
                priority: tstat.rt_priority,
                nice: tstat.nice,
                cpus: tstatus.cpus_allowed,
            }),
            attrs: Default::default(),
        });
    }
    Ok(ProcessImage {
        pid,
        threads,
        ..ProcessImage::default()
    })
}

/// Process-wide state read from /proc and by syscalls from outside.
pub(crate) fn capture_process(
    pid: i32,
    img: &mut ProcessImage,
    snap: check::Snapshot,
) -> Result<(), DumpError> {
    let st = proc::stat(pid)?;
    let status = proc::status(pid)?;
    img.ppid = st.ppid;
    img.exit_signal = st.exit_signal;
    img.pgid = st.pgrp;
    img.sid = st.session;
    img.comm = proc::comm(pid)?;
    img.cmdline = proc::cmdline(pid)?;
    img.exe = proc::exe(pid)?;
    img.cwd = proc::cwd(pid)?;
    img.cgroups = proc::cgroups(pid, None)?;
    for t in img.threads.iter_mut() {
        let own = proc::cgroups(pid, Some(t.tid))?;
        if own != img.cgroups {
            t.cgroups = own;
        }
    }
    img.umask = status.umask.unwrap_or(0o022);
    img.personality = proc::personality(pid)?;
    img.creds = Creds {
        uid: status.uid,
        gid: status.gid,
        groups: status.groups.clone(),
        cap_inh: status.cap_inh,
        cap_prm: status.cap_prm,
        cap_eff: status.cap_eff,
        cap_bnd: status.cap_bnd,
        cap_amb: status.cap_amb,
        no_new_privs: status.no_new_privs,
    };
    img.shared_pending = status.shd_pnd;
    // From /proc/PID/limits, not prlimit64(2): reading another user's limits by prlimit needs
    // CAP_SYS_RESOURCE, which root may lack (it does on this machine), and one read beats 16
    // syscalls.
    img.rlimits = proc::limits(pid)?
        .into_iter()
        .map(|l| Rlimit {
            resource: l.resource,
            cur: l.soft,
            max: l.hard,
        })
        .collect();
    if img.rlimits.len() != 16 {
        return Err(DumpError::Internal(format!(
            "/proc/{pid}/limits lists {} of the 16 resource limits",
            img.rlimits.len()
        )));
    }
    img.mm = MmFields {
        start_code: st.start_code,
        end_code: st.end_code,
        start_data: st.start_data,
        end_data: st.end_data,
        start_brk: st.start_brk,
        brk: st.start_brk, // replaced by the injected brk(0)
        start_stack: st.start_stack,
        arg_start: st.arg_start,
        arg_end: st.arg_end,
        env_start: st.env_start,
        env_end: st.env_end,
    };
    img.auxv = proc::auxv(pid)?;
    img.vmas = snap
        .maps
        .iter()
        .map(|m| vma_image(pid, m))
        .collect::<Result<_, _>>()?;
    // What pipes and socket pairs hold is read once the whole tree is known
    // (`dump::share::link`, which calls [`capture_pipes`]).
    img.fds = snap.fds;
    img.attrs.oom_score_adj = Some(proc::oom_score_adj(pid)?);
    img.attrs.coredump_filter = Some(proc::coredump_filter(pid)?);
    // Only a kernel with CONFIG_AUDIT has a loginuid.
    if proc::pid_dir(pid).join("loginuid").exists() {
        img.attrs.loginuid = Some(proc::loginuid(pid)?);
    }
    Ok(())
}

fn vma_image(pid: i32, m: &proc::MapEntry) -> Result<Vma, DumpError> {
    check::check_mapping(pid, m)?;
    let kind = match m.path.as_str() {
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => VmaKind::Vsyscall,
        _ if check::is_sysv_shm(m) => VmaKind::SysvShm,
        _ if check::is_shared_anon(m) => VmaKind::SharedAnon,
        _ if check::is_deleted_shm(m) => VmaKind::DeletedShm,
        _ if m.path.starts_with("/memfd:") => VmaKind::Memfd,
        _ if m.inode != 0 && m.path.starts_with('/') => VmaKind::File,
        _ => VmaKind::Anon,
    };
    // A deleted tmpfs file is named by its path; the restore makes it there again.
    let name = match kind {
        VmaKind::DeletedShm => m.path.trim_end_matches(" (deleted)").to_string(),
        _ => m.path.clone(),
    };
    // Shared memory objects are told apart by inode (and, for files, device): the processes of
    // a tree that map one object are linked by it (`dump::share::memory::link`).
    let ino = match kind {
        VmaKind::SharedAnon | VmaKind::DeletedShm | VmaKind::SysvShm | VmaKind::Memfd => m.inode,
        _ => 0,
    };
    let file = if matches!(kind, VmaKind::File | VmaKind::DeletedShm | VmaKind::Memfd) {
        // map_files/ resolves to the very file mapped, even if the path was replaced since.
        let link = format!("/proc/{pid}/map_files/{}", m.map_files_name());
        let md = std::fs::metadata(&link)
            .or_else(|_| std::fs::metadata(&m.path))
            .map_err(|e| DumpError::Io {
                context: format!("pid {pid}: stat mapped file {}", m.path),
                source: e,
            })?;
        Some(check::file_id(&md))
    } else {
        None
    };
    Ok(Vma {
        start: m.start,
        end: m.end,
        prot: m.prot(),
        shared: m.shared,
        pgoff: m.offset,
        kind,
        name,
        file,
        vm_flags: m.vm_flags.clone(),
        ino,
        shared_with: None,
    })
}

/// (interval, value) in `units` per second from a `struct itimerval` (`units` = 1,000,000) or
/// `struct itimerspec` (1,000,000,000): {seconds, fraction} twice.
fn interval_and_value(b: &[u8; 32], units: u64) -> (u64, u64) {
    let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    (w(0) * units + w(1), w(2) * units + w(3))
}

/// `SIGEV_THREAD_ID` in `sigev_notify`: the timer signals one thread.
const SIGEV_THREAD_ID: i32 = 4;
/// `prctl(PR_GET_TID_ADDRESS, &addr)`: a thread's `clear_child_tid` (CONFIG_CHECKPOINT_RESTORE).
const PR_GET_TID_ADDRESS: u64 = 40;

/// State only the process itself can report, by injected syscalls using the scratch page:
/// the 64 signal dispositions, the program break, the interval timers, the POSIX timers' time
/// left, each thread's alternate signal stack and `clear_child_tid` address.
pub(crate) fn capture_injected(
    frozen: &mut Frozen,
    img: &mut ProcessImage,
) -> Result<(), DumpError> {
    let scratch = frozen
        .scratch()
        .ok_or_else(|| DumpError::Internal("no scratch page mapped".into()))?;
    let pid = frozen.pid;
    let ptimers = proc::posix_timers(pid)?;
    // struct sigaction of the kernel: handler, flags, restorer, mask (8 bytes each).
    const KSIGACTION: u64 = 32;
    let raw = frozen.with_thread(pid, |inj| {
        for sig in 1..=64u64 {
            inj.call_ok(
                nr::RT_SIGACTION,
                [sig, 0, scratch + (sig - 1) * KSIGACTION, 8, 0, 0],
                "rt_sigaction",
            )?;
        }
        let mut raw = vec![0u8; 64 * KSIGACTION as usize];
        inj.read_mem(scratch, &mut raw)?;
        let brk = inj.call_ok(nr::BRK, [0; 6], "brk(0)")?;
        // The interval timers (alarm() is ITIMER_REAL): struct itimerval is
        // {interval {sec, usec}, value {sec, usec}}.
        let mut timers = Vec::new();
        for which in 0..3u32 {
            inj.call_ok(
                nr::GETITIMER,
                [u64::from(which), scratch, 0, 0, 0, 0],
                "getitimer",
            )?;
            let mut t = [0u8; 32];
            inj.read_mem(scratch, &mut t)?;
            let (interval_us, mut value_us) = interval_and_value(&t, 1_000_000);
            // A periodic ITIMER_REAL whose SIGALRM is still pending reads as disarmed: the
            // kernel re-arms it only when the signal is dequeued (it stays queued here, with
            // every signal blocked while haul injects). Restored, it runs one period after the
            // pending SIGALRM, as the dequeue would have re-armed it.
            if value_us == 0 && interval_us > 0 {
                value_us = interval_us;
            }
            if value_us > 0 {
                timers.push(ITimer {
                    which,
                    value_us,
                    interval_us,
                });
            }
        }
        // Each POSIX timer's time left and period: struct itimerspec is {interval {sec,
        // nsec}, value {sec, nsec}}.
        let mut left = Vec::with_capacity(ptimers.len());
        for t in &ptimers {
            inj.call_ok(
                nr::TIMER_GETTIME,
                [t.id as u64, scratch, 0, 0, 0, 0],
                &format!("timer_gettime {}", t.id),
            )?;
            let mut b = [0u8; 32];
            inj.read_mem(scratch, &mut b)?;
            left.push(interval_and_value(&b, 1_000_000_000));
        }
        let attrs = process_attrs(inj, scratch)?;
        let barriers = membarrier_registrations(inj)?;
        Ok((raw, brk, timers, left, attrs, barriers))
    })?;
    let (raw, brk, timers, left, (dumpable, securebits, thp_disable, subreaper), barriers) = raw;
    img.attrs.membarrier = barriers;
    // SUID_DUMP_ROOT (2) comes only from an exec under fs.suid_dumpable = 2, and prctl cannot
    // set it: a restore would make the process plainly non-dumpable instead.
    if dumpable > 1 {
        return Err(DumpError::Refused(format!(
            "pid {pid} is dumpable {dumpable} (core dumps readable by root only, from \
             fs.suid_dumpable): a restore cannot set that"
        )));
    }
    img.attrs.dumpable = Some(dumpable as u32);
    img.attrs.securebits = Some(securebits as u32);
    img.attrs.thp_disable = Some(thp_disable as u32);
    img.attrs.child_subreaper = Some(subreaper);
    img.itimers = timers;
    img.posix_timers = ptimers
        .iter()
        .zip(left)
        .map(|(t, (interval_ns, value_ns))| PosixTimer {
            id: t.id,
            clock: t.clock,
            notify: t.notify,
            signo: t.signo,
            sigval: t.sigval,
            tid: if t.notify & SIGEV_THREAD_ID != 0 {
                t.target
            } else {
                0
            },
            value_ns,
            interval_ns,
        })
        .collect();
    let w = |i: usize| u64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    img.sigactions = (0..64)
        .map(|s| SigAction {
            handler: w(s * 4),
            flags: w(s * 4 + 1),
            restorer: w(s * 4 + 2),
            mask: w(s * 4 + 3),
        })
        .collect();
    img.mm.brk = brk;

    let tids: Vec<i32> = img.threads.iter().map(|t| t.tid).collect();
    let mut found = Vec::new();
    for (i, tid) in tids.into_iter().enumerate() {
        let (ss, tid_addr, attrs) = frozen.with_thread(tid, |inj| {
            found.extend(not_carried(inj, pid, tid, scratch)?);
            inj.call_ok(nr::SIGALTSTACK, [0, scratch, 0, 0, 0, 0], "sigaltstack")?;
            let mut b = [0u8; 24];
            inj.read_mem(scratch, &mut b)?;
            // prctl(PR_GET_TID_ADDRESS) writes the address into the scratch page.
            inj.call_ok(
                nr::PRCTL,
                [PR_GET_TID_ADDRESS, scratch, 0, 0, 0, 0],
                "prctl PR_GET_TID_ADDRESS",
            )?;
            let mut a = [0u8; 8];
            inj.read_mem(scratch, &mut a)?;
            let attrs = thread_attrs(inj, scratch)?;
            Ok((b, u64::from_ne_bytes(a), attrs))
        })?;
        img.threads[i].attrs = attrs;
        img.threads[i].clear_child_tid = tid_addr;
        let sp = u64::from_ne_bytes(ss[0..8].try_into().unwrap_or([0; 8]));
        let flags = i32::from_ne_bytes(ss[8..12].try_into().unwrap_or([0; 4]));
        let size = u64::from_ne_bytes(ss[16..24].try_into().unwrap_or([0; 8]));
        img.threads[i].sigaltstack =
            (flags & libc::SS_DISABLE == 0 || sp != 0).then_some(SigAltStack { sp, flags, size });
    }
    match found.len() {
        0 => Ok(()),
        1 => Err(DumpError::Unsupported(found.remove(0))),
        _ => Err(DumpError::Refusals {
            pid,
            reasons: found.into_iter().map(DumpError::Unsupported).collect(),
        }),
    }
}

/// The prctl attributes a restore does not give back yet, when not at their defaults (the
/// process-wide ones asked of the main thread): each a refusal naming it. Only an injected
/// prctl can read them, so `haul dump --check` cannot list them; the dump refuses them under
/// the freeze, before any image exists, and the process goes on unharmed.
fn not_carried(
    inj: &mut crate::sys::remote::RemoteSyscall,
    pid: i32,
    tid: i32,
    scratch: u64,
) -> Result<Vec<String>, crate::sys::SysError> {
    let mut out = Vec::new();
    let who = if tid == pid {
        format!("pid {pid}")
    } else {
        format!("pid {pid} thread {tid}")
    };
    let get = |inj: &mut crate::sys::remote::RemoteSyscall, op: i32, arg: u64| {
        inj.call(nr::PRCTL, [op as u64, arg, 0, 0, 0, 0])
    };
    if tid == pid {
        // EINVAL: a kernel without it, so nothing set.
        let mdwe = get(inj, libc::PR_GET_MDWE, 0)?;
        if mdwe > 0 {
            out.push(format!(
                "{who} denies writable-executable memory (PR_SET_MDWE {mdwe:#x}): this is not \
                 supported yet"
            ));
        }
        let merge = get(inj, libc::PR_GET_MEMORY_MERGE, 0)?;
        if merge > 0 {
            out.push(format!(
                "{who} has KSM on for all its memory (PR_SET_MEMORY_MERGE): this is not \
                 supported yet"
            ));
        }
    }
    inj.write_mem(scratch, &[0; 4])?;
    if get(inj, libc::PR_GET_TSC, scratch)? == 0 {
        let mut b = [0u8; 4];
        inj.read_mem(scratch, &mut b)?;
        // Seccomp strict mode makes rdtsc fault too, and a restore of it does again.
        let strict = crate::sys::seccomp::mode(pid, tid)? == crate::sys::seccomp::MODE_STRICT;
        if i32::from_ne_bytes(b) == libc::PR_TSC_SIGSEGV && !strict {
            out.push(format!(
                "{who} makes rdtsc fault (PR_SET_TSC PR_TSC_SIGSEGV): this is not supported yet"
            ));
        }
    }
    let mce = get(inj, libc::PR_MCE_KILL_GET, 0)?;
    if mce >= 0 && mce != i64::from(libc::PR_MCE_KILL_DEFAULT) {
        out.push(format!(
            "{who} has its own machine-check kill policy (PR_MCE_KILL, {mce}): this is not \
             supported yet"
        ));
    }
    Ok(out)
}

/// The process-wide prctl attributes, by prctls injected into its main thread: dumpable,
/// securebits, THP disabled, child subreaper.
fn process_attrs(
    inj: &mut crate::sys::remote::RemoteSyscall,
    scratch: u64,
) -> Result<(u64, u64, u64, bool), crate::sys::SysError> {
    let get = |inj: &mut crate::sys::remote::RemoteSyscall, op: i32, what: &str| {
        inj.call_ok(nr::PRCTL, [op as u64, 0, 0, 0, 0, 0], what)
    };
    let dumpable = get(inj, libc::PR_GET_DUMPABLE, "prctl PR_GET_DUMPABLE")?;
    let securebits = get(inj, libc::PR_GET_SECUREBITS, "prctl PR_GET_SECUREBITS")?;
    let thp = get(inj, libc::PR_GET_THP_DISABLE, "prctl PR_GET_THP_DISABLE")?;
    inj.write_mem(scratch, &[0; 4])?;
    inj.call_ok(
        nr::PRCTL,
        [libc::PR_GET_CHILD_SUBREAPER as u64, scratch, 0, 0, 0, 0],
        "prctl PR_GET_CHILD_SUBREAPER",
    )?;
    let mut b = [0u8; 4];
    inj.read_mem(scratch, &mut b)?;
    Ok((dumpable, securebits, thp, i32::from_ne_bytes(b) != 0))
}

/// The process's membarrier registrations (a mask of `REGISTER_*` commands), by an injected
/// `membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)`; None on a kernel without it (before 6.3).
fn membarrier_registrations(
    inj: &mut crate::sys::remote::RemoteSyscall,
) -> Result<Option<u32>, crate::sys::SysError> {
    use crate::sys::process::membarrier;
    let r = inj.call(
        nr::MEMBARRIER,
        [membarrier::GET_REGISTRATIONS, 0, 0, 0, 0, 0],
    )?;
    Ok(match r {
        r if r >= 0 => Some(r as u32),
        r if r == -i64::from(libc::EINVAL) => None,
        r => {
            return Err(crate::sys::SysError::Invalid(format!(
                "injected membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS) failed: errno {}",
                -r
            )))
        }
    })
}

/// A thread's own prctl attributes, by prctls injected into it: timer slack, parent-death
/// signal, speculation control.
fn thread_attrs(
    inj: &mut crate::sys::remote::RemoteSyscall,
    scratch: u64,
) -> Result<crate::image::ThreadAttrs, crate::sys::SysError> {
    let slack = inj.call_ok(
        nr::PRCTL,
        [libc::PR_GET_TIMERSLACK as u64, 0, 0, 0, 0, 0],
        "prctl PR_GET_TIMERSLACK",
    )?;
    inj.write_mem(scratch, &[0; 4])?;
    inj.call_ok(
        nr::PRCTL,
        [libc::PR_GET_PDEATHSIG as u64, scratch, 0, 0, 0, 0],
        "prctl PR_GET_PDEATHSIG",
    )?;
    let mut b = [0u8; 4];
    inj.read_mem(scratch, &mut b)?;
    let mut spec_ctrl = Vec::with_capacity(crate::image::attrs::SPEC_CTRLS.len());
    for which in crate::image::attrs::SPEC_CTRLS {
        // EINVAL (unknown control) or ENODEV (not on this CPU): nothing to carry.
        let v = inj.call(
            nr::PRCTL,
            [
                libc::PR_GET_SPECULATION_CTRL as u64,
                which as u64,
                0,
                0,
                0,
                0,
            ],
        )?;
        spec_ctrl.push(if v < 0 { 0 } else { v as u32 });
    }
    Ok(crate::image::ThreadAttrs {
        timer_slack_ns: Some(slack),
        pdeathsig: Some(i32::from_ne_bytes(b)),
        spec_ctrl,
    })
}

/// The pending signals once nothing more will be injected, with their queued `siginfo_t`s:
/// signals that arrived during the injections stayed queued (the injector blocks them all),
/// and `held` are those that stopped the freeze itself, whose siginfo is gone (per thread).
pub(crate) fn capture_pending(
    pid: i32,
    img: &mut ProcessImage,
    held: impl Fn(i32) -> u64,
) -> Result<(), DumpError> {
    for t in img.threads.iter_mut() {
        t.pending |= held(t.tid) | proc::task_status(pid, t.tid)?.sig_pnd;
        t.pending_info = ptrace::peek_siginfo(t.tid, false)?;
    }
    img.shared_pending |= proc::status(pid)?.shd_pnd;
    img.shared_pending_info = ptrace::peek_siginfo(pid, true)?;
    Ok(())
}

/// What each pipe holds, and its capacity, on the first fd of its read end in tree order:
/// the fds of `pid` that are neither `same_as` a lower fd nor `inherited` from an earlier
/// process (so each pipe is read once in a tree), read through a copy of that fd
/// (`pidfd_getfd`) without taking it from the pipe.
pub(crate) fn capture_pipes(pid: i32, fds: &mut [crate::image::FdImage]) -> Result<(), DumpError> {
    use crate::image::FdKind;
    let mut pidfd = None;
    for f in fds
        .iter_mut()
        .filter(|f| f.same_as.is_none() && f.inherited.is_none())
    {
        if let FdKind::Pipe {
            write: false,
            size,
            data,
            ..
        } = &mut f.kind
        {
            if pidfd.is_none() {
                pidfd = Some(process::pidfd_open(pid)?);
            }
            let Some(pidfd) = pidfd.as_ref() else {
                continue;
            };
            let end = process::pidfd_getfd(pidfd, f.fd)?;
            *size = crate::sys::pipe::pipe_size(&end)?;
            *data = crate::sys::pipe::pipe_contents(&end)?;
        }
    }
    Ok(())
}
