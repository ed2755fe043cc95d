//! The rebuild itself: every step drives the parked child by injected syscalls.

use std::time::Instant;

use super::{PageSource, RestoreError, RestoreOptions, RestoreOutcome, Step};
use crate::image::{ImageSet, PageRef, ProcessImage, ThreadImage, Vma, VmaKind, PAGE_SIZE};
use crate::sys::process::nr;
use crate::sys::ptrace::{self, Regs};
use crate::sys::remote::RemoteSyscall;

/// Size of the scratch area: one page of code, the rest for syscall arguments.
pub(super) const SCRATCH_LEN: u64 = 64 * 1024;
/// Where syscall arguments go inside the scratch area.
pub(super) const ARGS_OFF: u64 = PAGE_SIZE as u64;
/// `syscall; int3`: the instruction injected syscalls run once the old address space is gone.
const SYSCALL_CODE: [u8; 3] = [0x0f, 0x05, 0xcc];
/// How many bytes of pages one process_vm_writev carries at most.
const FILL_CHUNK: usize = 4 << 20;

const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
pub(super) const SYS_OPEN: i64 = 2;
const SYS_CHDIR: i64 = 80;
const SYS_UMASK: i64 = 95;
const SYS_SETRESUID: i64 = 117;
const SYS_SETRESGID: i64 = 119;
const SYS_SETGROUPS: i64 = 116;
const SYS_MADVISE: i64 = 28;
const SYS_SETPGID: i64 = 109;
const SYS_SETSID: i64 = 112;
const SYS_SETITIMER: i64 = 38;
const SYS_PERSONALITY: i64 = 135;
const PR_SET_NAME: u64 = 15;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_SET_KEEPCAPS: u64 = 8;
const PR_CAPBSET_DROP: u64 = 24;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const SYS_CAPSET: i64 = 126;
const SYS_TIMER_CREATE: i64 = 222;
const SYS_RT_SIGQUEUEINFO: i64 = 129;
const SYS_SETPRIORITY: i64 = 141;
const SYS_SCHED_SETSCHEDULER: i64 = 144;
const SYS_SCHED_SETAFFINITY: i64 = 203;
const PRIO_PROCESS: u64 = 0;
const SYS_RT_TGSIGQUEUEINFO: i64 = 297;
const SYS_TIMER_SETTIME: i64 = 223;
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
/// `_LINUX_CAPABILITY_VERSION_3` of capset(2): two 32-bit words per set.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const MADV_DONTFORK: u64 = 10;
const MADV_DONTDUMP: u64 = 16;
const MADV_MERGEABLE: u64 = 12;
const MADV_HUGEPAGE: u64 = 14;
const MADV_NOHUGEPAGE: u64 = 15;
const MADV_WIPEONFORK: u64 = 18;
const SYS_MLOCK2: i64 = 325;
const MLOCK_ONFAULT: u64 = 1;

/// Kills the half-built process unless disarmed: nothing is left behind on any error path.
struct Half {
    pid: Option<i32>,
    /// The threads created so far besides the main one (haul traces them too).
    threads: Vec<i32>,
}

impl Drop for Half {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = crate::sys::process::kill(pid, libc::SIGKILL);
            // We may be their tracer: reap the traces so that init can reap the process (a
            // traced thread stays a zombie until its tracer waits for it).
            for &tid in &self.threads {
                let _ = ptrace::wait_stop(tid);
            }
            let _ = ptrace::wait_stop(pid);
        }
    }
}

struct Ctx<'a> {
    set: &'a ImageSet,
    fail_at: Option<Step>,
}

impl Ctx<'_> {
    fn err(&self, step: Step, message: impl std::fmt::Display) -> RestoreError {
        RestoreError::Step {
            set: self.set.id.clone(),
            step,
            message: message.to_string(),
        }
    }
    /// Enters a step: fails on purpose when the test switch names it.
    fn enter(&self, step: Step) -> Result<(), RestoreError> {
        if self.fail_at == Some(step) {
            return Err(self.err(step, "failed on purpose (test switch)"));
        }
        tracing::debug!(set = %self.set.id, "restore step {step}");
        Ok(())
    }
}

/// Runs `f` as step `step`, turning its error into a [`RestoreError::Step`].
fn step<T, E: std::fmt::Display>(
    c: &Ctx<'_>,
    s: Step,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, RestoreError> {
    c.enter(s)?;
    f().map_err(|e| c.err(s, e))
}

pub(super) fn rebuild(
    set: &ImageSet,
    p: &ProcessImage,
    source: &dyn PageSource,
    opts: &RestoreOptions,
    start: Instant,
    mut lazy: Option<&mut dyn super::LazyHooks>,
) -> Result<RestoreOutcome, RestoreError> {
    let c = Ctx {
        set,
        fail_at: opts.fail_at,
    };
    let want = match opts.pid {
        super::PidChoice::Same => Some(p.pid),
        super::PidChoice::Any => None,
    };
    if want.is_none() && p.threads.len() > 1 {
        tracing::warn!(
            pid = p.pid,
            threads = p.threads.len(),
            "restoring a multi-threaded process under new thread ids: what it recorded of its \
             own ids (glibc's, for pthread_kill and PI mutexes) still names the old ones"
        );
    }
    let pid = step(&c, Step::Spawn, || crate::sys::spawn::spawn_parked(want))?;
    let mut half = Half {
        pid: Some(pid),
        threads: Vec::new(),
    };
    if let Some(h) = lazy.as_mut() {
        h.spawned();
    }

    step(&c, Step::Seize, || -> Result<(), crate::sys::SysError> {
        // Syscall stops of injected syscalls report SIGTRAP|0x80 (threads made later inherit it).
        ptrace::seize(pid, ptrace::PTRACE_O_TRACESYSGOOD)?;
        ptrace::interrupt(pid)?;
        loop {
            if let ptrace::Stop::Event { .. } = ptrace::wait_stop(pid)? {
                return Ok(());
            }
            // A signal-delivery stop before the interrupt: let it go and wait again.
            ptrace::cont(pid, 0)?;
        }
    })?;
    let mut rs = step(&c, Step::Seize, || RemoteSyscall::new(pid, pid))?;

    step(&c, Step::Rseq, || -> Result<(), crate::sys::SysError> {
        if let Some(r) = ptrace::get_rseq_config(pid)? {
            rs.call_ok(
                nr::RSEQ,
                [
                    r.rseq_abi_pointer,
                    u64::from(r.rseq_abi_size),
                    crate::sys::process::RSEQ_FLAG_UNREGISTER as u64,
                    u64::from(r.signature),
                    0,
                    0,
                ],
                "rseq unregister",
            )?;
        }
        Ok(())
    })?;

    let scratch = step(&c, Step::Scratch, || -> Result<u64, String> {
        let cur = crate::proc::maps(pid).map_err(|e| e.to_string())?;
        let mut taken: Vec<(u64, u64)> = cur.iter().map(|m| (m.start, m.end)).collect();
        taken.extend(p.vmas.iter().map(|v| (v.start, v.end)));
        let addr = find_hole(&mut taken, SCRATCH_LEN).ok_or("no hole for a scratch area")?;
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let got = rs
            .call_ok(
                nr::MMAP,
                [addr, SCRATCH_LEN, prot, flags, u64::MAX, 0],
                "mmap scratch",
            )
            .map_err(|e| e.to_string())?;
        if got != addr {
            return Err(format!("scratch mapped at {got:#x}, not {addr:#x}"));
        }
        rs.write_mem(addr, &SYSCALL_CODE)
            .map_err(|e| e.to_string())?;
        rs.set_insn(addr);
        Ok(addr)
    })?;
    let args = scratch + ARGS_OFF;

    step(&c, Step::Unmap, || -> Result<(), String> {
        let keep = ["[vsyscall]", "[vdso]", "[vvar]", "[vvar_vclock]"];
        for m in crate::proc::maps(pid).map_err(|e| e.to_string())? {
            if m.start == scratch || keep.contains(&m.path.as_str()) {
                continue;
            }
            rs.call_ok(
                nr::MUNMAP,
                [m.start, m.end - m.start, 0, 0, 0, 0],
                &format!("munmap {:#x}-{:#x} {}", m.start, m.end, m.path),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;

    step(&c, Step::Vdso, || move_vdso(&mut rs, pid, p))?;

    // Lazy: the daemon takes the private anonymous memory; the fill skips it.
    let lazy_ranges: Vec<(u64, u64)> = match lazy {
        Some(_) => super::lazy_ranges(set, p),
        None => Vec::new(),
    };
    let temp_prot = step(&c, Step::Map, || {
        map_vmas(&mut rs, set, p, &lazy_ranges, args)
    })?;

    if let Some(hooks) = lazy {
        let ranges = lazy_ranges.clone();
        step(&c, Step::Lazy, || -> Result<(), String> {
            let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
            let fd = rs
                .call_ok(nr::USERFAULTFD, [flags, 0, 0, 0, 0, 0], "userfaultfd")
                .map_err(|e| e.to_string())?;
            let taken = crate::sys::process::pidfd_open(pid).and_then(|pidfd| {
                let u = crate::sys::process::pidfd_getfd(&pidfd, fd as i32)?;
                Ok((pidfd, u))
            });
            // The process must not keep a copy: it would keep the uffd open (and its faults
            // waiting) even after the daemon and its watchdog are gone.
            rs.call_ok(nr::CLOSE, [fd, 0, 0, 0, 0, 0], "close of the uffd")
                .map_err(|e| e.to_string())?;
            let (pidfd, u) = taken.map_err(|e| e.to_string())?;
            hooks.start(super::LazyStart {
                pid,
                uffd: crate::sys::uffd::Uffd::from_owned(u),
                pidfd,
                ranges,
            })
        })?;
    }

    let fill_start = Instant::now();
    let pages_restored = step(&c, Step::Fill, || {
        if lazy_ranges.is_empty() {
            fill(pid, set, p, source)
        } else {
            fill(pid, &eager_part(set, p, &lazy_ranges), p, source)
        }
    })?;
    let fill_time = crate::util::us(fill_start.elapsed());

    step(&c, Step::Protect, || -> Result<(), String> {
        for (v, tmp) in p.vmas.iter().zip(&temp_prot) {
            if let Some(tmp) = tmp {
                if *tmp != v.prot {
                    rs.call_ok(
                        nr::MPROTECT,
                        [v.start, v.len(), u64::from(v.prot), 0, 0, 0],
                        &format!("mprotect {:#x}", v.start),
                    )
                    .map_err(|e| e.to_string())?;
                }
                madvise_flags(&mut rs, v)?;
                name_anon(&mut rs, v, args)?;
            }
        }
        Ok(())
    })?;

    step(&c, Step::MmMap, || set_mm(&mut rs, p, args))?;
    step(&c, Step::Files, || {
        super::fds::restore_fds(&mut rs, p, args)
    })?;
    step(&c, Step::Fs, || -> Result<(), String> {
        let path = cstr(&p.cwd)?;
        rs.write_mem(args, &path).map_err(|e| e.to_string())?;
        rs.call_ok(
            SYS_CHDIR,
            [args, 0, 0, 0, 0, 0],
            &format!("chdir {}", p.cwd),
        )
        .map_err(|e| e.to_string())?;
        rs.call(SYS_UMASK, [u64::from(p.umask), 0, 0, 0, 0, 0])
            .map_err(|e| e.to_string())?;
        // personality(2) returns the previous persona, never an error for a valid one.
        rs.call_ok(
            SYS_PERSONALITY,
            [u64::from(p.personality), 0, 0, 0, 0, 0],
            &format!("personality {:#x}", p.personality),
        )
        .map_err(|e| e.to_string())?;
        session_and_group(&mut rs, p)?;
        let comm = cstr(&p.comm)?;
        rs.write_mem(args, &comm[..comm.len().min(16)])
            .map_err(|e| e.to_string())?;
        rs.write_mem(args + 15, &[0]).map_err(|e| e.to_string())?;
        rs.call_ok(
            nr::PRCTL,
            [PR_SET_NAME, args, 0, 0, 0, 0],
            "prctl PR_SET_NAME",
        )
        .map_err(|e| e.to_string())?;
        super::attrs::process_attrs(&mut rs, p, args)
    })?;
    step(&c, Step::Limits, || -> Result<(), String> {
        for l in &p.rlimits {
            let mut b = l.cur.to_ne_bytes().to_vec();
            b.extend_from_slice(&l.max.to_ne_bytes());
            rs.write_mem(args, &b).map_err(|e| e.to_string())?;
            rs.call_ok(
                nr::PRLIMIT64,
                [0, u64::from(l.resource), args, 0, 0, 0],
                &format!("prlimit64 resource {}", l.resource),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    step(&c, Step::Signals, || restore_signals(&mut rs, p, args))?;
    let t = &p.threads[0];
    // The other threads, each created by an injected clone3 with its dumped tid and given its
    // own state (credentials are per thread too), left stopped with its registers set.
    let threads = step(&c, Step::Threads, || -> Result<Vec<(i32, u64)>, String> {
        thread_state(&mut rs, t, args)?;
        let mut made = vec![(pid, t.pending)];
        for t in &p.threads[1..] {
            let tid = spawn_thread(&mut rs, t, args, scratch, opts.pid)?;
            half.threads.push(tid);
            finish_thread(pid, tid, t, p, scratch, args)?;
            made.push((tid, t.pending));
        }
        Ok(made)
    })?;
    // Every thread exists: each goes back into its cgroups.
    step(&c, Step::Threads, || {
        let tids: Vec<i32> = threads.iter().map(|t| t.0).collect();
        super::cgroup::place(pid, p, &tids)
    })?;
    step(&c, Step::Creds, || -> Result<(), String> {
        restore_creds(&mut rs, p, args)?;
        super::attrs::thread_after_creds(&mut rs, &t.attrs)?;
        super::attrs::dumpable(&mut rs, p)
    })?;

    step(&c, Step::Regs, || -> Result<(), String> {
        let regs = final_regs(t)?;
        // Queued signals with their siginfo (every signal is blocked while haul injects, so
        // they stay queued until the thread runs with its own mask).
        queue_siginfo(&mut rs, pid, &t.pending_info, false, args)?;
        queue_siginfo(&mut rs, pid, &p.shared_pending_info, true, args)?;
        // Timers last, so they start counting as close to running as can be.
        restore_posix_timers(&mut rs, p, &threads, args)?;
        for t in &p.itimers {
            let b = interval_and_value(t.interval_us, t.value_us, 1_000_000);
            rs.write_mem(args, &b).map_err(|e| e.to_string())?;
            rs.call_ok(
                SYS_SETITIMER,
                [u64::from(t.which), args, 0, 0, 0, 0],
                &format!("setitimer {}", t.which),
            )
            .map_err(|e| e.to_string())?;
        }
        rs.call_ok(
            nr::MUNMAP,
            [scratch, SCRATCH_LEN, 0, 0, 0, 0],
            "munmap scratch",
        )
        .map_err(|e| e.to_string())?;
        rs.forget_scratch();
        rs.set_orig_regs(regs);
        rs.set_orig_sigmask(t.sigmask);
        set_thread_regs(pid, t, &regs)
    })?;

    step(&c, Step::Run, || -> Result<(), String> {
        drop(rs);
        queue_pending(pid, p, &threads)
    })?;
    // --verify state: compared while every thread is still stopped, so a process that differs
    // is killed (by `half`) before it runs.
    if opts.verify_state {
        super::verify::check(set, p, pid, &lazy_ranges)?;
    }
    step(&c, Step::Run, || -> Result<(), String> {
        for &(tid, _) in &threads[1..] {
            ptrace::detach(tid, 0).map_err(|e| format!("detach thread {tid}: {e}"))?;
        }
        ptrace::detach(pid, 0).map_err(|e| e.to_string())
    })?;
    half.pid = None;
    Ok(RestoreOutcome {
        pid,
        restore_time: 0,
        time_to_running: crate::util::us(start.elapsed()),
        pages_restored,
        fill_time,
    })
}

/// Sends the process the signals that were pending at the dump (thread-private ones with
/// tgkill, process-wide ones with kill), once no more syscalls will be injected: they are queued
/// while it is stopped and delivered (or stay pending, if blocked) once it runs. SIGKILL and
/// SIGSTOP are left out. Their siginfo is not kept: the sender is haul.
/// `threads` are the (tid, thread-private pending set) of the rebuilt threads. Only the
/// signals [`queue_siginfo`] did not queue already (an image without their siginfo, or one the
/// kernel could not queue one for) are sent this way.
fn queue_pending(pid: i32, p: &ProcessImage, threads: &[(i32, u64)]) -> Result<(), String> {
    let queued = |infos: &[Vec<u8>]| infos.iter().fold(0u64, |m, i| m | siginfo_bit(i));
    let shared = p.shared_pending & !queued(&p.shared_pending_info);
    for sig in 1..=64i32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let bit = 1u64 << (sig - 1);
        for (&(tid, pending), t) in threads.iter().zip(&p.threads) {
            if pending & !queued(&t.pending_info) & bit != 0 {
                crate::sys::process::tgkill(pid, tid, sig)
                    .map_err(|e| format!("re-sending pending signal {sig} to thread {tid}: {e}"))?;
            }
        }
        if shared & bit != 0 {
            crate::sys::process::kill(pid, sig)
                .map_err(|e| format!("re-sending pending signal {sig}: {e}"))?;
        }
    }
    Ok(())
}

/// The pending-set bit of the signal in a raw `siginfo_t` (its first int), 0 if none.
fn siginfo_bit(info: &[u8]) -> u64 {
    match info
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    {
        Some(sig @ 1..=64) => 1u64 << (sig - 1),
        _ => 0,
    }
}

/// Queues `infos` again (raw `siginfo_t`s) by syscalls injected into the thread `rs` drives:
/// `rt_tgsigqueueinfo(2)` to that thread `tid`, or with `shared` `rt_sigqueueinfo(2)` to the
/// process. A process may queue any siginfo to itself, so sender, code and value are kept.
/// SIGKILL and SIGSTOP are left out.
fn queue_siginfo(
    rs: &mut RemoteSyscall,
    tid: i32,
    infos: &[Vec<u8>],
    shared: bool,
    args: u64,
) -> Result<(), String> {
    let pid = rs.pid();
    for info in infos {
        let bit = siginfo_bit(info);
        if bit == 0 || info.len() != ptrace::SIGINFO_SIZE {
            return Err(format!(
                "a queued siginfo of the image is malformed ({} bytes)",
                info.len()
            ));
        }
        let sig = u64::from(bit.trailing_zeros() + 1);
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        rs.write_mem(args, info).map_err(|e| e.to_string())?;
        let r = if shared {
            rs.call_ok(
                SYS_RT_SIGQUEUEINFO,
                [pid as u64, sig, args, 0, 0, 0],
                &format!("rt_sigqueueinfo of signal {sig}"),
            )
        } else {
            rs.call_ok(
                SYS_RT_TGSIGQUEUEINFO,
                [pid as u64, tid as u64, sig, args, 0, 0],
                &format!("rt_tgsigqueueinfo of signal {sig} to thread {tid}"),
            )
        };
        r.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The state a thread keeps for itself, set by syscalls injected into it: scheduling, robust
/// futex list, alternate signal stack, `clear_child_tid`, and rseq (last: it writes into
/// restored memory). Before the credentials: a lower nice value or a real-time policy may need
/// the privileges the process may not have.
fn thread_state(rs: &mut RemoteSyscall, t: &ThreadImage, args: u64) -> Result<(), String> {
    if let Some(s) = &t.sched {
        set_sched(rs, s, args)?;
    }
    super::attrs::thread_before_creds(rs, &t.attrs)?;
    if let Some((head, len)) = t.robust_list {
        rs.call_ok(
            nr::SET_ROBUST_LIST,
            [head, len, 0, 0, 0, 0],
            "set_robust_list",
        )
        .map_err(|e| e.to_string())?;
    }
    // Always set the alternate stack: with none in the image it must be disabled, or the
    // one the parked child inherited from haul (Rust's main-thread guard stack, unmapped
    // since) stays, and the first SA_ONSTACK handler (every Python handler) dies on it.
    let none = crate::image::SigAltStack {
        sp: 0,
        flags: libc::SS_DISABLE,
        size: 0,
    };
    let ss = t.sigaltstack.as_ref().unwrap_or(&none);
    // SS_ONSTACK is a state, not a flag one can set.
    let mut flags = ss.flags & !libc::SS_ONSTACK;
    if flags & libc::SS_DISABLE != 0 {
        flags = libc::SS_DISABLE;
    }
    let mut b = ss.sp.to_ne_bytes().to_vec();
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&ss.size.to_ne_bytes());
    rs.write_mem(args, &b).map_err(|e| e.to_string())?;
    rs.call_ok(nr::SIGALTSTACK, [args, 0, 0, 0, 0, 0], "sigaltstack")
        .map_err(|e| e.to_string())?;
    // set_tid_address(2) returns the caller's tid; it cannot fail.
    if t.clear_child_tid != 0 {
        rs.call_ok(
            nr::SET_TID_ADDRESS,
            [t.clear_child_tid, 0, 0, 0, 0, 0],
            "set_tid_address",
        )
        .map_err(|e| e.to_string())?;
    }
    if let Some(r) = &t.rseq {
        rs.call_ok(
            nr::RSEQ,
            [r.addr, u64::from(r.len), 0, u64::from(r.sig), 0, 0],
            "rseq register",
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Recreates the POSIX timers with their dumped ids (`PR_TIMER_CREATE_RESTORE_IDS` makes
/// `timer_create(2)` take the id from its output argument), clocks and notifications (a
/// `SIGEV_THREAD_ID` timer signals the rebuilt thread that had the dumped tid), and re-arms
/// them with the time they had left. `threads` are the rebuilt tids in image order.
fn restore_posix_timers(
    rs: &mut RemoteSyscall,
    p: &ProcessImage,
    threads: &[(i32, u64)],
    args: u64,
) -> Result<(), String> {
    if p.posix_timers.is_empty() {
        return Ok(());
    }
    let restore_ids = |rs: &mut RemoteSyscall, on: u64| {
        rs.call_ok(
            nr::PRCTL,
            [PR_TIMER_CREATE_RESTORE_IDS, on, 0, 0, 0, 0],
            "prctl PR_TIMER_CREATE_RESTORE_IDS (this kernel cannot recreate timer ids)",
        )
        .map_err(|e| e.to_string())
    };
    restore_ids(rs, 1)?;
    for t in &p.posix_timers {
        let tid = if t.tid == 0 {
            0
        } else {
            p.threads
                .iter()
                .zip(threads)
                .find(|(old, _)| old.tid == t.tid)
                .map(|(_, new)| new.0)
                .ok_or_else(|| {
                    format!("timer {} signals thread {}, not in the image", t.id, t.tid)
                })?
        };
        // struct sigevent (64 bytes): sigev_value, sigev_signo, sigev_notify, then the union
        // whose first int is the thread id; the requested timer id follows it.
        let mut b = vec![0u8; 64];
        b[0..8].copy_from_slice(&t.sigval.to_ne_bytes());
        b[8..12].copy_from_slice(&t.signo.to_ne_bytes());
        b[12..16].copy_from_slice(&t.notify.to_ne_bytes());
        b[16..20].copy_from_slice(&tid.to_ne_bytes());
        b.extend_from_slice(&t.id.to_ne_bytes());
        rs.write_mem(args, &b).map_err(|e| e.to_string())?;
        rs.call_ok(
            SYS_TIMER_CREATE,
            [t.clock as u64, args, args + 64, 0, 0, 0],
            &format!("timer_create of timer {}", t.id),
        )
        .map_err(|e| e.to_string())?;
        let mut id = [0u8; 4];
        rs.read_mem(args + 64, &mut id).map_err(|e| e.to_string())?;
        if i32::from_ne_bytes(id) != t.id {
            return Err(format!(
                "timer {} was recreated as timer {}",
                t.id,
                i32::from_ne_bytes(id)
            ));
        }
        if t.value_ns > 0 {
            // Relative: the time it had left.
            let s = interval_and_value(t.interval_ns, t.value_ns, 1_000_000_000);
            rs.write_mem(args, &s).map_err(|e| e.to_string())?;
            rs.call_ok(
                SYS_TIMER_SETTIME,
                [t.id as u64, 0, args, 0, 0, 0],
                &format!("timer_settime of timer {}", t.id),
            )
            .map_err(|e| e.to_string())?;
        }
    }
    restore_ids(rs, 0).map(|_| ())
}

/// Gives the thread `rs` drives its dumped policy and priority (`sched_setscheduler(2)`), nice
/// value (`setpriority(2)`, per thread in Linux) and CPUs (`sched_setaffinity(2)`): otherwise
/// it would run with haul's (a haul started by `nice` from cron would slow down every process
/// it restores). CPUs are host-specific: a set that names none of this host's is left as
/// haul's, with a warning.
fn set_sched(rs: &mut RemoteSyscall, s: &crate::image::Sched, args: u64) -> Result<(), String> {
    let tid = rs.tid();
    rs.write_mem(args, &s.priority.to_ne_bytes())
        .map_err(|e| e.to_string())?;
    rs.call_ok(
        SYS_SCHED_SETSCHEDULER,
        [0, u64::from(s.policy), args, 0, 0, 0],
        &format!(
            "sched_setscheduler policy {} priority {}",
            s.policy, s.priority
        ),
    )
    .map_err(|e| e.to_string())?;
    rs.call_ok(
        SYS_SETPRIORITY,
        [PRIO_PROCESS, 0, s.nice as i64 as u64, 0, 0, 0],
        &format!("setpriority nice {}", s.nice),
    )
    .map_err(|e| e.to_string())?;
    let Some(&max) = s.cpus.iter().max() else {
        return Ok(());
    };
    let mut mask = vec![0u8; (max as usize / 64 + 1) * 8];
    for &c in &s.cpus {
        mask[c as usize / 8] |= 1 << (c % 8);
    }
    rs.write_mem(args, &mask).map_err(|e| e.to_string())?;
    let r = rs
        .call(SYS_SCHED_SETAFFINITY, [0, mask.len() as u64, args, 0, 0, 0])
        .map_err(|e| e.to_string())?;
    if r < 0 {
        tracing::warn!(
            tid,
            cpus = ?s.cpus,
            "the thread's CPUs cannot be set here ({}): it may run on haul's",
            std::io::Error::from_raw_os_error(-r as i32)
        );
    }
    Ok(())
}

/// `clone3(2)` flags of a thread as pthread_create makes one; `CLONE_PTRACE` makes haul its
/// tracer from the start (it is seized like its creator and stops before running any code).
const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_PTRACE) as u64;

/// Creates a thread in the rebuilt process by a `clone3(2)` injected into its main thread
/// (`rs`), with the dumped tid when `pid` is [`PidChoice::Same`](super::PidChoice), and waits
/// for its first stop. Returns its tid.
fn spawn_thread(
    rs: &mut RemoteSyscall,
    t: &ThreadImage,
    args: u64,
    scratch: u64,
    pid: super::PidChoice,
) -> Result<i32, String> {
    // struct clone_args (88 bytes) at `args`, the set_tid array right after it. The stack is
    // a scratch page the thread never runs on: its registers are replaced before it runs.
    const CLONE_ARGS_LEN: u64 = 88;
    let set_tid = args + CLONE_ARGS_LEN;
    let same = pid == super::PidChoice::Same;
    let fields = [
        THREAD_FLAGS,
        0,
        0,
        0,
        0,
        scratch + SCRATCH_LEN - PAGE_SIZE as u64,
        PAGE_SIZE as u64,
        0,
        if same { set_tid } else { 0 },
        u64::from(same),
        0,
    ];
    let mut b: Vec<u8> = fields.iter().flat_map(|w| w.to_ne_bytes()).collect();
    b.extend_from_slice(&(t.tid as u64).to_ne_bytes());
    rs.write_mem(args, &b).map_err(|e| e.to_string())?;
    let tid = rs
        .call_ok(
            nr::CLONE3,
            [args, CLONE_ARGS_LEN, 0, 0, 0, 0],
            &format!("clone3 of thread {}", t.tid),
        )
        .map_err(|e| e.to_string())? as i32;
    if same && tid != t.tid {
        return Err(format!("thread {} was created as {tid}", t.tid));
    }
    // The new thread starts traced, with a PTRACE_EVENT_STOP before its first instruction.
    match ptrace::wait_stop(tid).map_err(|e| e.to_string())? {
        ptrace::Stop::Event { .. } => Ok(tid),
        other => Err(format!(
            "thread {tid}: expected its first stop, got {other:?}"
        )),
    }
}

/// Gives the new, stopped thread `tid` the state of `t`: its name, its own state, the
/// process's credentials, then its registers, XSTATE and signal mask.
fn finish_thread(
    pid: i32,
    tid: i32,
    t: &ThreadImage,
    p: &ProcessImage,
    scratch: u64,
    args: u64,
) -> Result<(), String> {
    let mut ts = RemoteSyscall::new(pid, tid).map_err(|e| e.to_string())?;
    ts.set_insn(scratch);
    let comm = cstr(&t.comm)?;
    ts.write_mem(args, &comm[..comm.len().min(15)])
        .map_err(|e| e.to_string())?;
    ts.write_mem(args + comm.len().min(15) as u64, &[0])
        .map_err(|e| e.to_string())?;
    ts.call_ok(
        nr::PRCTL,
        [PR_SET_NAME, args, 0, 0, 0, 0],
        "prctl PR_SET_NAME",
    )
    .map_err(|e| e.to_string())?;
    thread_state(&mut ts, t, args)?;
    restore_creds(&mut ts, p, args)?;
    super::attrs::thread_after_creds(&mut ts, &t.attrs)?;
    queue_siginfo(&mut ts, tid, &t.pending_info, false, args)?;
    let regs = final_regs(t)?;
    ts.set_orig_regs(regs);
    // Dropping the injector writes those registers back.
    drop(ts);
    set_thread_regs(tid, t, &regs)
}

/// A thread's registers as the image has them, ready to run: the dump already adjusted an
/// interrupted syscall, so no restart logic must run again.
fn final_regs(t: &ThreadImage) -> Result<Regs, String> {
    let mut regs = Regs::from_bytes(&t.regs).ok_or("registers of the image are not 216 bytes")?;
    regs.orig_rax = u64::MAX;
    Ok(regs)
}

/// Sets the registers, XSTATE (or FPU state) and signal mask of stopped thread `tid`.
fn set_thread_regs(tid: i32, t: &ThreadImage, regs: &Regs) -> Result<(), String> {
    ptrace::setregs(tid, regs).map_err(|e| e.to_string())?;
    if !t.xstate.is_empty() {
        ptrace::setregset(tid, ptrace::NT_X86_XSTATE, &t.xstate)
            .map_err(|e| format!("XSTATE does not fit this CPU: {e}"))?;
    } else if !t.fpregs.is_empty() {
        ptrace::setregset(tid, ptrace::NT_PRFPREG, &t.fpregs).map_err(|e| e.to_string())?;
    }
    ptrace::set_sigmask(tid, t.sigmask).map_err(|e| e.to_string())
}

/// `struct itimerval` (`units` = 1,000,000: µs) or `struct itimerspec` (1,000,000,000: ns)
/// as the kernel reads it: the interval then the value, each as {seconds, fraction}.
pub(super) fn interval_and_value(interval: u64, value: u64, units: u64) -> Vec<u8> {
    [
        interval / units,
        interval % units,
        value / units,
        value % units,
    ]
    .iter()
    .flat_map(|w| w.to_ne_bytes())
    .collect()
}

/// The lowest page-aligned address at or above 64 KiB with `len` bytes free of every range.
fn find_hole(taken: &mut [(u64, u64)], len: u64) -> Option<u64> {
    taken.sort_unstable();
    let mut cand: u64 = 0x10000;
    for &(s, e) in taken.iter() {
        if cand + len <= s {
            return Some(cand);
        }
        cand = cand.max(e);
    }
    (cand.checked_add(len)? < 0x7fff_ffff_0000).then_some(cand)
}

/// A path or name as a NUL-terminated C string.
pub(super) fn cstr(s: &str) -> Result<Vec<u8>, String> {
    if s.as_bytes().contains(&0) {
        return Err(format!("{s:?} contains a NUL byte"));
    }
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    Ok(v)
}

/// Moves the kernel's `[vvar]`, `[vvar_vclock]`, `[vdso]` unit to the dumped addresses, keeping
/// its relative layout (checked by the compatibility check).
fn move_vdso(rs: &mut RemoteSyscall, pid: i32, p: &ProcessImage) -> Result<(), String> {
    let Some(dumped) = p.vmas.iter().find(|v| v.kind == VmaKind::Vdso) else {
        return Ok(());
    };
    let cur = crate::proc::maps(pid).map_err(|e| e.to_string())?;
    let Some(now) = cur.iter().find(|m| m.path == "[vdso]") else {
        return Err("this process has no [vdso] to move".into());
    };
    let delta = dumped.start.wrapping_sub(now.start);
    if delta == 0 {
        return Ok(());
    }
    let mut unit: Vec<(u64, u64)> = cur
        .iter()
        .filter(|m| matches!(m.path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
        .map(|m| (m.start, m.end))
        .collect();
    // Moving up: the highest first; moving down: the lowest first. No part lands on one that
    // has not moved yet.
    unit.sort_unstable();
    if (delta as i64) > 0 {
        unit.reverse();
    }
    for (s, e) in unit {
        let to = s.wrapping_add(delta);
        let got = rs
            .call_ok(
                nr::MREMAP,
                [s, e - s, e - s, MREMAP_MAYMOVE | MREMAP_FIXED, to, 0],
                &format!("mremap {s:#x} to {to:#x}"),
            )
            .map_err(|e| e.to_string())?;
        if got != to {
            return Err(format!("mremap moved {s:#x} to {got:#x}, not {to:#x}"));
        }
    }
    Ok(())
}

/// Whether the restore writes pages into this VMA (then it is mapped writable until filled).
fn filled(v: &Vma) -> bool {
    match v.kind {
        VmaKind::Anon | VmaKind::SharedAnon => true,
        VmaKind::File => !v.shared,
        _ => false,
    }
}

/// Maps every VMA at its address; returns, per VMA, the protection it was mapped with (None for
/// the kernel's own mappings, which are not mapped here).
fn map_vmas(
    rs: &mut RemoteSyscall,
    set: &ImageSet,
    p: &ProcessImage,
    lazy: &[(u64, u64)],
    args: u64,
) -> Result<Vec<Option<u32>>, String> {
    let mut out = Vec::with_capacity(p.vmas.len());
    for v in &p.vmas {
        let mut flags = libc::MAP_FIXED as u64;
        // Writable for the fill only where the fill writes: not in a VMA without pages, nor
        // in one the lazy daemon fills (UFFDIO_COPY needs no write permission). Each VMA
        // mapped with its own protection saves an injected mprotect afterwards.
        let fills = filled(v)
            && !lazy.iter().any(|&(s, _)| s == v.start)
            && set.pages.range(v.start, v.end).next().is_some();
        let prot = if fills {
            v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32
        } else {
            v.prot
        };
        flags |= if v.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        } as u64;
        if v.has_flag("gd") {
            flags |= libc::MAP_GROWSDOWN as u64;
        }
        if v.has_flag("nr") {
            flags |= libc::MAP_NORESERVE as u64;
        }
        let what = format!("mmap {:#x}-{:#x} {}", v.start, v.end, v.name);
        match v.kind {
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall => {
                out.push(None);
                continue;
            }
            VmaKind::Anon | VmaKind::SharedAnon => {
                flags |= libc::MAP_ANONYMOUS as u64;
                rs.call_ok(
                    nr::MMAP,
                    [v.start, v.len(), u64::from(prot), flags, u64::MAX, 0],
                    &what,
                )
                .map_err(|e| e.to_string())?;
            }
            VmaKind::File => {
                // A shared mapping that may be made writable (VmFlags `mw`, from a file opened
                // for writing) needs the file opened so again, even while it is read-only:
                // else a later mprotect(PROT_WRITE) fails with EACCES.
                let may_write = v.prot & libc::PROT_WRITE as u32 != 0 || v.has_flag("mw");
                let mode = if v.shared && may_write {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                rs.write_mem(args, &cstr(&v.name)?)
                    .map_err(|e| e.to_string())?;
                let fd = rs
                    .call_ok(
                        SYS_OPEN,
                        [args, (mode | libc::O_CLOEXEC) as u64, 0, 0, 0, 0],
                        &format!("open {}", v.name),
                    )
                    .map_err(|e| e.to_string())?;
                let r = rs.call_ok(
                    nr::MMAP,
                    [v.start, v.len(), u64::from(prot), flags, fd, v.pgoff],
                    &what,
                );
                let _ = rs.call(nr::CLOSE, [fd, 0, 0, 0, 0, 0]);
                r.map_err(|e| e.to_string())?;
            }
        }
        out.push(Some(prot));
    }
    Ok(out)
}

/// Names anonymous memory as it was (`[anon:NAME]`, `[anon_shmem:NAME]` in maps), with
/// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME)`: allocators and runtimes name their arenas so.
fn name_anon(rs: &mut RemoteSyscall, v: &Vma, args: u64) -> Result<(), String> {
    let name = ["[anon:", "[anon_shmem:"]
        .iter()
        .find_map(|p| v.name.strip_prefix(p)?.strip_suffix(']'));
    let Some(name) = name else {
        return Ok(());
    };
    rs.write_mem(args, &cstr(name)?)
        .map_err(|e| e.to_string())?;
    rs.call_ok(
        nr::PRCTL,
        [
            libc::PR_SET_VMA as u64,
            libc::PR_SET_VMA_ANON_NAME as u64,
            v.start,
            v.len(),
            args,
            0,
        ],
        &format!("prctl PR_SET_VMA_ANON_NAME {:#x} {name:?}", v.start),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Applies the VmFlags that madvise or mlock can set and that matter to a restored process:
/// not copied on fork, not dumped, huge pages wanted or not, mergeable (KSM), wiped on fork,
/// read ahead sequentially or not at all (`sr`, `rr`), and locked in memory (`lo`, or `lf` for
/// locked on fault).
fn madvise_flags(rs: &mut RemoteSyscall, v: &Vma) -> Result<(), String> {
    for (flag, advice) in [
        ("dc", MADV_DONTFORK),
        ("dd", MADV_DONTDUMP),
        ("hg", MADV_HUGEPAGE),
        ("nh", MADV_NOHUGEPAGE),
        ("mg", MADV_MERGEABLE),
        ("wf", MADV_WIPEONFORK),
        ("sr", libc::MADV_SEQUENTIAL as u64),
        ("rr", libc::MADV_RANDOM as u64),
    ] {
        if v.has_flag(flag) {
            rs.call_ok(
                SYS_MADVISE,
                [v.start, v.len(), advice, 0, 0, 0],
                &format!("madvise {:#x} {flag}", v.start),
            )
            .map_err(|e| e.to_string())?;
        }
    }
    if v.has_flag("lo") {
        let onfault = if v.has_flag("lf") { MLOCK_ONFAULT } else { 0 };
        rs.call_ok(
            SYS_MLOCK2,
            [v.start, v.len(), onfault, 0, 0, 0],
            &format!("mlock2 {:#x}-{:#x}", v.start, v.end),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The set with only the pages outside `lazy` (sorted, disjoint ranges): what a lazy restore
/// still fills itself. Built from the other VMAs' entries only, so its cost does not grow with
/// the lazy memory.
fn eager_part(set: &ImageSet, p: &ProcessImage, lazy: &[(u64, u64)]) -> ImageSet {
    let mut pages = crate::image::PageTable::new();
    for v in &p.vmas {
        if lazy.iter().any(|&(s, _)| s == v.start) {
            continue;
        }
        for (a, r) in set.pages.range(v.start, v.end) {
            pages.insert(a, r);
        }
    }
    ImageSet {
        id: set.id.clone(),
        job: set.job.clone(),
        created_us: set.created_us,
        kind: set.kind,
        parent: set.parent.clone(),
        kernel: set.kernel.clone(),
        process: None,
        pages,
        figures: set.figures.clone(),
    }
}

/// Writes every stored page of the set into the process: runs of pages are gathered into a
/// buffer of up to [`FILL_CHUNK`] bytes and written with one `process_vm_writev` of up to 1024
/// ranges. Zero pages of private file mappings are written too (the file's content is not what
/// the process had). Returns the number of pages written.
fn fill(
    pid: i32,
    set: &ImageSet,
    p: &ProcessImage,
    source: &dyn PageSource,
) -> Result<u64, String> {
    use crate::sys::mem::{process_vm_write_ranges, RemoteRange, IOV_MAX};
    let mut buf: Vec<u8> = Vec::with_capacity(FILL_CHUNK);
    let mut ranges: Vec<RemoteRange> = Vec::with_capacity(IOV_MAX);
    let mut pages = 0u64;
    let flush = |buf: &mut Vec<u8>, ranges: &mut Vec<RemoteRange>| -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        let n = process_vm_write_ranges(pid, buf, ranges).map_err(|e| e.to_string())?;
        if n != buf.len() {
            let at = ranges.first().map(|r| r.addr).unwrap_or(0);
            return Err(format!(
                "process_vm_writev from {at:#x} wrote {n} of {} bytes",
                buf.len()
            ));
        }
        buf.clear();
        ranges.clear();
        Ok(())
    };
    let mut sink = |addr: u64, data: &[u8]| -> Result<(), String> {
        if buf.len() + data.len() > FILL_CHUNK || ranges.len() == IOV_MAX {
            flush(&mut buf, &mut ranges)?;
        }
        match ranges.last_mut() {
            Some(r) if r.addr + r.len as u64 == addr => r.len += data.len(),
            _ => ranges.push(RemoteRange {
                addr,
                len: data.len(),
            }),
        }
        buf.extend_from_slice(data);
        pages += (data.len() / PAGE_SIZE) as u64;
        Ok(())
    };
    source
        .for_each_page(set, &mut sink)
        .map_err(|e| e.to_string())?;
    flush(&mut buf, &mut ranges)?;

    let zero = vec![0u8; PAGE_SIZE];
    for v in p
        .vmas
        .iter()
        .filter(|v| v.kind == VmaKind::File && !v.shared)
    {
        for (addr, r) in set.pages.range(v.start, v.end) {
            if r == PageRef::Zero {
                crate::sys::mem::process_vm_write(pid, addr, &zero).map_err(|e| e.to_string())?;
                pages += 1;
            }
        }
    }
    Ok(pages)
}

/// `PR_SET_MM_MAP`: code/data/brk/stack/args/env addresses, auxv and the exe link.
fn set_mm(rs: &mut RemoteSyscall, p: &ProcessImage, args: u64) -> Result<(), String> {
    use crate::sys::process::{PrctlMmMap, PR_SET_MM, PR_SET_MM_MAP};
    let mut auxv: Vec<u8> = Vec::new();
    for (k, v) in p.auxv.iter().chain(std::iter::once(&(0, 0))) {
        auxv.extend_from_slice(&k.to_ne_bytes());
        auxv.extend_from_slice(&v.to_ne_bytes());
    }
    let auxv_at = args + 1024;
    let exe_at = args + 2048;
    rs.write_mem(auxv_at, &auxv).map_err(|e| e.to_string())?;
    rs.write_mem(exe_at, &cstr(&p.exe)?)
        .map_err(|e| e.to_string())?;
    let exe_fd = rs
        .call_ok(
            SYS_OPEN,
            [
                exe_at,
                (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
                0,
            ],
            &format!("open exe {}", p.exe),
        )
        .map_err(|e| e.to_string())?;
    let m = &p.mm;
    let map = PrctlMmMap {
        start_code: m.start_code,
        end_code: m.end_code,
        start_data: m.start_data,
        end_data: m.end_data,
        start_brk: m.start_brk,
        brk: m.brk,
        start_stack: m.start_stack,
        arg_start: m.arg_start,
        arg_end: m.arg_end,
        env_start: m.env_start,
        env_end: m.env_end,
        auxv: auxv_at,
        auxv_size: auxv.len() as u32,
        exe_fd: exe_fd as u32,
    };
    rs.write_mem(args, &mm_map_bytes(&map))
        .map_err(|e| e.to_string())?;
    let r = rs.call_ok(
        nr::PRCTL,
        [
            PR_SET_MM as u64,
            PR_SET_MM_MAP as u64,
            args,
            std::mem::size_of::<PrctlMmMap>() as u64,
            0,
            0,
        ],
        "prctl(PR_SET_MM, PR_SET_MM_MAP)",
    );
    let _ = rs.call(nr::CLOSE, [exe_fd, 0, 0, 0, 0, 0]);
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// Every signal action the process changed from the default (SIGKILL and SIGSTOP cannot be
/// set).
fn restore_signals(rs: &mut RemoteSyscall, p: &ProcessImage, args: u64) -> Result<(), String> {
    for (i, a) in p.sigactions.iter().enumerate() {
        let sig = i as u64 + 1;
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        // The parked child starts with every action at this default (`spawn_parked`): only
        // the ones the process changed cost an injected syscall.
        if a.handler == 0 && a.flags == 0 && a.restorer == 0 && a.mask == 0 {
            continue;
        }
        let mut b = Vec::with_capacity(32);
        for w in [a.handler, a.flags, a.restorer, a.mask] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        rs.write_mem(args, &b).map_err(|e| e.to_string())?;
        rs.call_ok(
            nr::RT_SIGACTION,
            [sig, args, 0, 8, 0, 0],
            &format!("rt_sigaction {sig}"),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Credentials, in the thread `rs` drives (they are per thread): the capability bounding set
/// first (dropping needs CAP_SETPCAP), then groups, gids and uids (dropping the uid first would
/// forbid the rest; the permitted capabilities are kept across it when the image has any),
/// then the effective, permitted and inheritable capabilities, the ambient ones, and
/// no_new_privs. The compatibility check made sure that haul holds every capability set here.
fn restore_creds(rs: &mut RemoteSyscall, p: &ProcessImage, args: u64) -> Result<(), String> {
    let c = &p.creds;
    let tid = rs.tid();
    let now = crate::proc::task_status(rs.pid(), tid).map_err(|e| e.to_string())?;
    for cap in 0..64u64 {
        let bit = 1u64 << cap;
        if now.cap_bnd & bit != 0 && c.cap_bnd & bit == 0 {
            rs.call_ok(
                nr::PRCTL,
                [PR_CAPBSET_DROP, cap, 0, 0, 0, 0],
                &format!("prctl PR_CAPBSET_DROP {cap}"),
            )
            .map_err(|e| e.to_string())?;
        }
    }
    // The groups always: a root process has its own too, not haul's.
    let mut b = Vec::new();
    for g in &c.groups {
        b.extend_from_slice(&g.to_ne_bytes());
    }
    rs.write_mem(args, &b).map_err(|e| e.to_string())?;
    rs.call_ok(
        SYS_SETGROUPS,
        [c.groups.len() as u64, args, 0, 0, 0, 0],
        "setgroups",
    )
    .map_err(|e| e.to_string())?;
    let is_root = c.uid == [0; 4] && c.gid == [0; 4];
    if !is_root {
        let keep = c.cap_prm != 0;
        if keep {
            rs.call_ok(
                nr::PRCTL,
                [PR_SET_KEEPCAPS, 1, 0, 0, 0, 0],
                "prctl PR_SET_KEEPCAPS 1",
            )
            .map_err(|e| e.to_string())?;
        }
        rs.call_ok(
            SYS_SETRESGID,
            [
                u64::from(c.gid[0]),
                u64::from(c.gid[1]),
                u64::from(c.gid[2]),
                0,
                0,
                0,
            ],
            "setresgid",
        )
        .map_err(|e| e.to_string())?;
        rs.call_ok(
            SYS_SETRESUID,
            [
                u64::from(c.uid[0]),
                u64::from(c.uid[1]),
                u64::from(c.uid[2]),
                0,
                0,
                0,
            ],
            "setresuid",
        )
        .map_err(|e| e.to_string())?;
        // setresuid/setresgid made the filesystem ids the effective ones; before capset,
        // which then sets the capabilities a change of fsuid adds or drops.
        set_fs_id(rs, libc::SYS_setfsgid, c.gid[3], "setfsgid")?;
        set_fs_id(rs, libc::SYS_setfsuid, c.uid[3], "setfsuid")?;
        if keep {
            rs.call_ok(
                nr::PRCTL,
                [PR_SET_KEEPCAPS, 0, 0, 0, 0, 0],
                "prctl PR_SET_KEEPCAPS 0",
            )
            .map_err(|e| e.to_string())?;
        }
    }
    let ambient = |rs: &mut RemoteSyscall| -> Result<(), String> {
        for cap in (0..64u64).filter(|cap| c.cap_amb & (1 << cap) != 0) {
            rs.call_ok(
                nr::PRCTL,
                [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
                &format!("prctl PR_CAP_AMBIENT_RAISE {cap}"),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let securebits = p.attrs.securebits.unwrap_or(0);
    if securebits & !(libc::SECBIT_KEEP_CAPS as u32) != 0 {
        // Setting securebits needs CAP_SETPCAP in effect, and SECBIT_NO_CAP_AMBIENT_RAISE
        // forbids the ambient raise: first every permitted capability in effect (setresuid
        // cleared them), the ambient ones, the bits, then the dumped sets.
        let prm = crate::proc::task_status(rs.pid(), tid)
            .map_err(|e| e.to_string())?
            .cap_prm;
        capset(rs, prm, prm, c.cap_inh, args)?;
        ambient(rs)?;
        rs.call_ok(
            nr::PRCTL,
            [
                libc::PR_SET_SECUREBITS as u64,
                u64::from(securebits),
                0,
                0,
                0,
                0,
            ],
            &format!("prctl PR_SET_SECUREBITS {securebits:#x}"),
        )
        .map_err(|e| e.to_string())?;
        capset(rs, c.cap_eff, c.cap_prm, c.cap_inh, args)?;
    } else {
        capset(rs, c.cap_eff, c.cap_prm, c.cap_inh, args)?;
        ambient(rs)?;
        if securebits != 0 {
            rs.call_ok(
                nr::PRCTL,
                [PR_SET_KEEPCAPS, 1, 0, 0, 0, 0],
                "prctl PR_SET_KEEPCAPS 1",
            )
            .map_err(|e| e.to_string())?;
        }
    }
    if c.no_new_privs {
        rs.call_ok(
            nr::PRCTL,
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
            "prctl PR_SET_NO_NEW_PRIVS",
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// capset(2), version 3, of the thread `rs` drives: a header {version, pid 0 = this thread},
/// then {effective, permitted, inheritable} for capabilities 0-31 and again for 32-63.
fn capset(rs: &mut RemoteSyscall, eff: u64, prm: u64, inh: u64, args: u64) -> Result<(), String> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&LINUX_CAPABILITY_VERSION_3.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    for half in [0, 32] {
        for set in [eff, prm, inh] {
            b.extend_from_slice(&((set >> half) as u32).to_ne_bytes());
        }
    }
    rs.write_mem(args, &b).map_err(|e| e.to_string())?;
    rs.call_ok(SYS_CAPSET, [args, args + 8, 0, 0, 0, 0], "capset")
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// setfsuid(2) or setfsgid(2) to `id`, checked: they return the previous id, never an error,
/// so a call with -1 (no change) reads the id back.
fn set_fs_id(rs: &mut RemoteSyscall, nr: i64, id: u32, what: &str) -> Result<(), String> {
    rs.call(nr, [u64::from(id), 0, 0, 0, 0, 0])
        .map_err(|e| e.to_string())?;
    let now = rs
        .call(nr, [u64::from(u32::MAX), 0, 0, 0, 0, 0])
        .map_err(|e| e.to_string())?;
    if now as u32 != id {
        return Err(format!("{what} {id}: the thread's id stays {now}"));
    }
    Ok(())
}

/// `struct prctl_mm_map` as the kernel reads it: eleven addresses, the auxv pointer, its size
/// and the exe fd (104 bytes, native endian).
fn mm_map_bytes(m: &crate::sys::process::PrctlMmMap) -> Vec<u8> {
    let mut b = Vec::with_capacity(104);
    for w in [
        m.start_code,
        m.end_code,
        m.start_data,
        m.end_data,
        m.start_brk,
        m.brk,
        m.start_stack,
        m.arg_start,
        m.arg_end,
        m.env_start,
        m.env_end,
        m.auxv,
    ] {
        b.extend_from_slice(&w.to_ne_bytes());
    }
    b.extend_from_slice(&m.auxv_size.to_ne_bytes());
    b.extend_from_slice(&m.exe_fd.to_ne_bytes());
    b
}

/// The dumped session and process group, as far as a lone process can have them back: a
/// session leader gets a new session (its id is the process's own, as before); a process of
/// haul's own session goes back to its group (its own, or one that still exists there); a
/// process of another session cannot rejoin it and gets a new session of its own.
///
/// Ids read 0 when the session or group leader lives outside our PID namespace (a container,
/// a CI sandbox): a session of 0 is haul's own when haul's reads 0 too, and a group of 0 is
/// one we cannot name, so the process stays in the group it was started in (haul's) when that
/// one reads 0 as well, and gets a group of its own otherwise.
fn session_and_group(rs: &mut RemoteSyscall, p: &ProcessImage) -> Result<(), String> {
    let ours = nix::unistd::getsid(None).map(|s| s.as_raw()).unwrap_or(-1);
    if p.sid == p.pid || p.sid != ours {
        if p.sid != p.pid {
            tracing::warn!(
                pid = p.pid,
                sid = p.sid,
                "the process's session is not haul's: it gets a session of its own"
            );
        }
        rs.call_ok(SYS_SETSID, [0; 6], "setsid")
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    if p.pgid == 0 && nix::unistd::getpgrp().as_raw() == 0 {
        return Ok(());
    }
    let target = if p.pgid == p.pid || p.pgid == 0 {
        0
    } else {
        p.pgid as u64
    };
    if rs
        .call_ok(SYS_SETPGID, [0, target, 0, 0, 0, 0], "setpgid")
        .is_err()
    {
        // The group is gone: a group of its own is the nearest thing.
        rs.call_ok(SYS_SETPGID, [0, 0, 0, 0, 0, 0], "setpgid")
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
