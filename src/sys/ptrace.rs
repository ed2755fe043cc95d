//! ptrace(2) wrappers: seize, interrupt, wait for the stop, detach, registers, regsets, the
//! signal mask and the rseq configuration of a thread.
//!
//! Every function takes a thread id (`tid`). Except for [`seize`], the thread must be a
//! ptrace-stopped tracee of the calling thread (ptrace is per tracer *thread*).

use super::{check, Result, SysError};

// The numbers are libc's (linux/ptrace.h, linux/elf.h), typed as the wrappers below use them.

/// `PTRACE_SEIZE` (linux/ptrace.h).
pub const PTRACE_SEIZE: libc::c_uint = libc::PTRACE_SEIZE as libc::c_uint;
/// `PTRACE_INTERRUPT`.
pub const PTRACE_INTERRUPT: libc::c_uint = libc::PTRACE_INTERRUPT as libc::c_uint;
/// `PTRACE_LISTEN`.
pub const PTRACE_LISTEN: libc::c_uint = libc::PTRACE_LISTEN as libc::c_uint;
/// `PTRACE_PEEKSIGINFO`.
pub const PTRACE_PEEKSIGINFO: libc::c_uint = libc::PTRACE_PEEKSIGINFO as libc::c_uint;
/// `PTRACE_GETSIGMASK`.
pub const PTRACE_GETSIGMASK: libc::c_uint = libc::PTRACE_GETSIGMASK as libc::c_uint;
/// `PTRACE_SETSIGMASK`.
pub const PTRACE_SETSIGMASK: libc::c_uint = libc::PTRACE_SETSIGMASK as libc::c_uint;
/// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13).
pub const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint =
    libc::PTRACE_GET_RSEQ_CONFIGURATION as libc::c_uint;
/// `PTRACE_GETREGSET`.
pub const PTRACE_GETREGSET: libc::c_uint = libc::PTRACE_GETREGSET as libc::c_uint;
/// `PTRACE_SETREGSET`.
pub const PTRACE_SETREGSET: libc::c_uint = libc::PTRACE_SETREGSET as libc::c_uint;
/// `PTRACE_GETREGS`.
pub const PTRACE_GETREGS: libc::c_uint = libc::PTRACE_GETREGS as libc::c_uint;
/// `PTRACE_SETREGS`.
pub const PTRACE_SETREGS: libc::c_uint = libc::PTRACE_SETREGS as libc::c_uint;
/// `PTRACE_CONT`.
pub const PTRACE_CONT: libc::c_uint = libc::PTRACE_CONT as libc::c_uint;
/// `PTRACE_DETACH`.
pub const PTRACE_DETACH: libc::c_uint = libc::PTRACE_DETACH as libc::c_uint;

/// `PTRACE_O_TRACESYSGOOD`: syscall stops report `SIGTRAP | 0x80`.
pub const PTRACE_O_TRACESYSGOOD: u64 = libc::PTRACE_O_TRACESYSGOOD as u64;
/// `PTRACE_O_TRACEEXIT`: stop the tracee before it exits.
pub const PTRACE_O_TRACEEXIT: u64 = libc::PTRACE_O_TRACEEXIT as u64;
/// `PTRACE_O_TRACECLONE`: a `clone(2)` that is neither a fork nor a vfork stops the tracee
/// (`PTRACE_EVENT_CLONE`), and the child starts traced, in a `PTRACE_EVENT_STOP` before it
/// runs, with the tracee's options.
pub const PTRACE_O_TRACECLONE: u64 = libc::PTRACE_O_TRACECLONE as u64;
/// `PTRACE_O_EXITKILL`: the kernel sends the tracee SIGKILL if the tracer exits. Only for
/// what must never run untraced (a memory keeper, see `dump::keeper`), never for a target.
pub const PTRACE_O_EXITKILL: u64 = libc::PTRACE_O_EXITKILL as u64;
/// `PTRACE_EVENT_STOP`: the event of an interrupt or group stop of a seized tracee.
pub const PTRACE_EVENT_STOP: i32 = libc::PTRACE_EVENT_STOP;
/// `PTRACE_EVENT_EXIT`.
pub const PTRACE_EVENT_EXIT: i32 = libc::PTRACE_EVENT_EXIT;

/// `NT_PRSTATUS`: the general registers as a regset.
pub const NT_PRSTATUS: u32 = libc::NT_PRSTATUS as u32;
/// `NT_PRFPREG`: the legacy FPU/SSE area (512 bytes, FXSAVE layout).
pub const NT_PRFPREG: u32 = libc::NT_PRFPREG as u32;
/// `NT_X86_XSTATE`: the XSAVE area (its size depends on the CPU; read it back from `iov_len`).
/// Written here: neither libc nor linux-raw-sys has it (it is in linux/elf.h).
pub const NT_X86_XSTATE: u32 = 0x202;

/// Size of `struct user_regs_struct` on x86_64.
pub const REGS_SIZE: usize = 216;

/// `struct user_regs_struct` of x86_64 (216 bytes, with `fs_base`/`gs_base`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

const _: () = assert!(std::mem::size_of::<Regs>() == REGS_SIZE);

impl Regs {
    /// The registers as the raw 216 bytes of `user_regs_struct` (native endian), the form the
    /// image stores.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.as_array()
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    }

    /// Parses the raw 216 bytes of `user_regs_struct`.
    pub fn from_bytes(b: &[u8]) -> Option<Regs> {
        if b.len() != REGS_SIZE {
            return None;
        }
        let mut a = [0u64; REGS_SIZE / 8];
        for (i, c) in b.chunks_exact(8).enumerate() {
            a[i] = u64::from_ne_bytes(c.try_into().ok()?);
        }
        Some(Regs::from_array(a))
    }

    fn as_array(&self) -> [u64; REGS_SIZE / 8] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }

    fn from_array(a: [u64; REGS_SIZE / 8]) -> Regs {
        Regs {
            r15: a[0],
            r14: a[1],
            r13: a[2],
            r12: a[3],
            rbp: a[4],
            rbx: a[5],
            r11: a[6],
            r10: a[7],
            r9: a[8],
            r8: a[9],
            rax: a[10],
            rcx: a[11],
            rdx: a[12],
            rsi: a[13],
            rdi: a[14],
            orig_rax: a[15],
            rip: a[16],
            cs: a[17],
            eflags: a[18],
            rsp: a[19],
            ss: a[20],
            fs_base: a[21],
            gs_base: a[22],
            ds: a[23],
            es: a[24],
            fs: a[25],
            gs: a[26],
        }
    }

    /// The registers a *restored* process must resume with when this thread was stopped inside
    /// an interrupted syscall (DESIGN.md §4): for `-ERESTARTSYS`/`-ERESTARTNOINTR`/
    /// `-ERESTARTNOHAND` (-512/-513/-514) the syscall is re-run (`rax = orig_rax`, `rip -= 2`);
    /// for `-ERESTART_RESTARTBLOCK` (-516) it returns `-EINTR`. Other registers are unchanged.
    pub fn restart_adjusted(&self) -> Regs {
        let mut r = *self;
        if (self.orig_rax as i64) < 0 {
            return r;
        }
        match self.rax as i64 {
            -514..=-512 => {
                r.rax = self.orig_rax;
                r.rip = self.rip.wrapping_sub(2);
            }
            -516 => r.rax = (-(libc::EINTR as i64)) as u64,
            _ => {}
        }
        r
    }

    /// The `-ERESTART*` code (-512 to -514) of the syscall this thread was stopped in, when
    /// [`Regs::restart_adjusted`] rewinds it to be run again; `None` otherwise.
    pub fn restart_code(&self) -> Option<i64> {
        let code = self.rax as i64;
        ((self.orig_rax as i64) >= 0 && (-514..=-512).contains(&code)).then_some(code)
    }

    /// The inverse of [`Regs::restart_adjusted`] for a syscall that returned `code`
    /// ([`Regs::restart_code`]): the registers as the kernel had them at the stop, after the
    /// `syscall` instruction with `rax = code` and `orig_rax` the syscall's number. Set in a
    /// stop inside the kernel's signal delivery (`PTRACE_EVENT_STOP` or a signal-delivery
    /// stop), they let the kernel decide on resuming, as it would have for the live thread:
    /// the syscall fails with `EINTR` if a signal's handler runs first (unless `SA_RESTART`
    /// restarts it), else it is run again.
    pub fn before_restart(&self, code: i64) -> Regs {
        let mut r = *self;
        r.orig_rax = self.rax;
        r.rax = code as u64;
        r.rip = self.rip.wrapping_add(2);
        r
    }
}

/// Calls `ptrace(req, tid, addr, data)`.
fn raw(req: libc::c_uint, tid: i32, addr: u64, data: u64) -> libc::c_long {
    // SAFETY: ptrace with integer or pointer arguments; every caller passes either plain
    // integers or pointers to live, correctly sized buffers it owns for the duration of the call.
    unsafe {
        libc::ptrace(
            req,
            tid as libc::pid_t,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    }
}

/// Attaches to `tid` without stopping it: `ptrace(PTRACE_SEIZE)`, see ptrace(2).
/// `options` are `PTRACE_O_*` bits (never `EXITKILL`: haul dying must not kill the target).
pub fn seize(tid: i32, options: u64) -> Result<()> {
    check(raw(PTRACE_SEIZE, tid, 0, options), || {
        format!("ptrace(PTRACE_SEIZE, {tid})")
    })?;
    Ok(())
}

/// Asks a seized thread to stop: `ptrace(PTRACE_INTERRUPT)`, see ptrace(2). Wait for the stop
/// with [`wait_stop`].
pub fn interrupt(tid: i32) -> Result<()> {
    check(raw(PTRACE_INTERRUPT, tid, 0, 0), || {
        format!("ptrace(PTRACE_INTERRUPT, {tid})")
    })?;
    Ok(())
}

/// Detaches from a stopped tracee, delivering `sig` (0 = none): `ptrace(PTRACE_DETACH)`, see
/// ptrace(2). An interrupted syscall is restarted by the kernel.
pub fn detach(tid: i32, sig: i32) -> Result<()> {
    check(raw(PTRACE_DETACH, tid, 0, sig as u64), || {
        format!("ptrace(PTRACE_DETACH, {tid})")
    })?;
    Ok(())
}

/// Sets the ptrace options of tracee `tid` (replacing the ones it had):
/// `ptrace(PTRACE_SETOPTIONS)`, see ptrace(2). The tracee must be in a ptrace stop.
pub fn set_options(tid: i32, options: u64) -> Result<()> {
    check(
        raw(libc::PTRACE_SETOPTIONS as libc::c_uint, tid, 0, options),
        || format!("ptrace(PTRACE_SETOPTIONS, {tid})"),
    )?;
    Ok(())
}

/// Resumes `tid` until its next syscall entry or exit (a syscall stop, reported as
/// [`Stop::Syscall`] under `PTRACE_O_TRACESYSGOOD`), delivering `sig` (0: none):
/// `ptrace(PTRACE_SYSCALL)`, see ptrace(2). Unlike a single step, a syscall stop is a ptrace
/// report, not a signal: the kernel forces no SIGTRAP on the thread (a forced signal that is
/// blocked resets its handler to the default, so single steps under a full signal mask made a
/// target lose its own SIGTRAP handler).
pub fn syscall(tid: i32, sig: i32) -> Result<()> {
    check(
        raw(libc::PTRACE_SYSCALL as libc::c_uint, tid, 0, sig as u64),
        || format!("ptrace(PTRACE_SYSCALL, {tid})"),
    )?;
    Ok(())
}

/// Resumes a stopped tracee: `ptrace(PTRACE_CONT)`, see ptrace(2).
pub fn cont(tid: i32, sig: i32) -> Result<()> {
    check(raw(PTRACE_CONT, tid, 0, sig as u64), || {
        format!("ptrace(PTRACE_CONT, {tid})")
    })?;
    Ok(())
}

/// How a tracee stopped (or ended), as [`wait_stop`] saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP` after [`interrupt`] (signal `SIGTRAP`), or a group stop (the stop
    /// signal) of a seized tracee.
    Event { sig: i32 },
    /// Signal-delivery stop: `sig` is about to be delivered.
    Signal { sig: i32 },
    /// Another `PTRACE_EVENT_*` stop.
    OtherEvent { event: i32, sig: i32 },
    /// A syscall entry or exit stop after [`syscall`] (`SIGTRAP | 0x80`, for a tracee seized
    /// with `PTRACE_O_TRACESYSGOOD`).
    Syscall,
}

impl std::fmt::Display for Stop {
    /// As ptrace(2) names the stop, e.g. `a PTRACE_EVENT_STOP (SIGSTOP)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |sig: i32| {
            nix::sys::signal::Signal::try_from(sig)
                .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
        };
        match *self {
            Stop::Event { sig } => write!(f, "a PTRACE_EVENT_STOP ({})", name(sig)),
            Stop::Signal { sig } => write!(f, "a signal-delivery stop ({})", name(sig)),
            Stop::OtherEvent { event, sig } => {
                write!(f, "a PTRACE_EVENT stop (event {event}, {})", name(sig))
            }
            Stop::Syscall => f.write_str("a syscall stop"),
        }
    }
}

/// Waits for the next state change of tracee `tid`: `waitpid(tid, &status, __WALL)`, see
/// waitpid(2). An exit or death is [`SysError::Gone`].
pub fn wait_stop(tid: i32) -> Result<Stop> {
    let status = wait_status(tid)?;
    decode_status(tid, status)
}

/// `waitpid(tid, &status, __WALL)`, see waitpid(2), retried on `EINTR`: the raw wait status
/// of the next state change of tracee (or child) `tid`. When `tid` ended and haul traces it
/// without being its parent, this wait hands it over to its real parent, whose own `wait`
/// then reports the same status. `ECHILD` is [`SysError::Gone`].
pub fn wait_status(tid: i32) -> Result<i32> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes one c_int to `status`, a live local.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if e.raw_os_error() == Some(libc::ECHILD) {
                return Err(SysError::Gone {
                    tid,
                    how: "no longer a tracee (waitpid: ECHILD)".into(),
                });
            }
            return Err(super::io_err(format!("waitpid({tid}, __WALL)"), e));
        }
        return Ok(status);
    }
}

/// Decodes a wait status into a [`Stop`] (or [`SysError::Gone`]).
pub fn decode_status(tid: i32, status: i32) -> Result<Stop> {
    if libc::WIFEXITED(status) {
        return Err(SysError::Gone {
            tid,
            how: format!("exited with status {}", libc::WEXITSTATUS(status)),
        });
    }
    if libc::WIFSIGNALED(status) {
        return Err(SysError::Gone {
            tid,
            how: format!("killed by signal {}", libc::WTERMSIG(status)),
        });
    }
    if !libc::WIFSTOPPED(status) {
        return Err(SysError::UnexpectedStop {
            tid,
            status,
            what: "neither exited, killed nor stopped".into(),
        });
    }
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xff;
    Ok(match event {
        0 if sig == libc::SIGTRAP | 0x80 => Stop::Syscall,
        0 => Stop::Signal { sig },
        PTRACE_EVENT_STOP => Stop::Event { sig },
        _ => Stop::OtherEvent { event, sig },
    })
}

/// Reads the general registers: `ptrace(PTRACE_GETREGS)`, see ptrace(2).
pub fn getregs(tid: i32) -> Result<Regs> {
    let mut r = Regs::default();
    check(
        raw(PTRACE_GETREGS, tid, 0, &mut r as *mut Regs as u64),
        || format!("ptrace(PTRACE_GETREGS, {tid})"),
    )?;
    Ok(r)
}

/// Writes the general registers: `ptrace(PTRACE_SETREGS)`, see ptrace(2).
pub fn setregs(tid: i32, r: &Regs) -> Result<()> {
    check(raw(PTRACE_SETREGS, tid, 0, r as *const Regs as u64), || {
        format!("ptrace(PTRACE_SETREGS, {tid})")
    })?;
    Ok(())
}

/// Reads a register set (`NT_X86_XSTATE`, `NT_PRFPREG`, ...): `ptrace(PTRACE_GETREGSET)`, see
/// ptrace(2). Returns as many bytes as the kernel filled (`iov_len` after the call).
pub fn getregset(tid: i32, nt: u32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 16384];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    check(
        raw(
            PTRACE_GETREGSET,
            tid,
            nt as u64,
            &mut iov as *mut libc::iovec as u64,
        ),
        || format!("ptrace(PTRACE_GETREGSET, {tid}, {nt:#x})"),
    )?;
    let n = iov.iov_len.min(buf.len());
    buf.truncate(n);
    Ok(buf)
}

/// Writes a register set: `ptrace(PTRACE_SETREGSET)`, see ptrace(2).
pub fn setregset(tid: i32, nt: u32, data: &[u8]) -> Result<()> {
    let mut copy = data.to_vec();
    let mut iov = libc::iovec {
        iov_base: copy.as_mut_ptr().cast(),
        iov_len: copy.len(),
    };
    check(
        raw(
            PTRACE_SETREGSET,
            tid,
            nt as u64,
            &mut iov as *mut libc::iovec as u64,
        ),
        || format!("ptrace(PTRACE_SETREGSET, {tid}, {nt:#x})"),
    )?;
    Ok(())
}

/// Reads the blocked-signal mask: `ptrace(PTRACE_GETSIGMASK)`, see ptrace(2).
pub fn get_sigmask(tid: i32) -> Result<u64> {
    let mut m: u64 = 0;
    check(
        raw(PTRACE_GETSIGMASK, tid, 8, &mut m as *mut u64 as u64),
        || format!("ptrace(PTRACE_GETSIGMASK, {tid})"),
    )?;
    Ok(m)
}

/// Writes the blocked-signal mask: `ptrace(PTRACE_SETSIGMASK)`, see ptrace(2).
pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    check(
        raw(PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as u64),
        || format!("ptrace(PTRACE_SETSIGMASK, {tid})"),
    )?;
    Ok(())
}

/// `struct ptrace_rseq_configuration` (linux/ptrace.h), 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// Reads the thread's rseq registration: `ptrace(PTRACE_GET_RSEQ_CONFIGURATION)`, see ptrace(2).
/// `None` when the thread has no rseq area registered.
pub fn get_rseq_config(tid: i32) -> Result<Option<RseqConfig>> {
    let mut c = RseqConfig::default();
    check(
        raw(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            std::mem::size_of::<RseqConfig>() as u64,
            &mut c as *mut RseqConfig as u64,
        ),
        || format!("ptrace(PTRACE_GET_RSEQ_CONFIGURATION, {tid})"),
    )?;
    Ok((c.rseq_abi_pointer != 0).then_some(c))
}

/// Argument of `PTRACE_PEEKSIGINFO` (linux/ptrace.h).
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// `PTRACE_PEEKSIGINFO_SHARED`: peek the process-wide queue instead of the thread's.
pub const PTRACE_PEEKSIGINFO_SHARED: u32 = libc::PTRACE_PEEKSIGINFO_SHARED;

/// Size of a `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;

/// The queued `siginfo_t`s (raw, 128 bytes each, oldest first) of a thread or, with `shared`,
/// of the process, without dequeuing them: `ptrace(PTRACE_PEEKSIGINFO)`, see ptrace(2).
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; SIGINFO_SIZE * 32];
    loop {
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: 32,
        };
        let n = check(
            raw(
                PTRACE_PEEKSIGINFO,
                tid,
                &args as *const PeekSiginfoArgs as u64,
                buf.as_mut_ptr() as u64,
            ),
            || format!("ptrace(PTRACE_PEEKSIGINFO, {tid})"),
        )? as usize;
        if n == 0 {
            return Ok(out);
        }
        out.extend(
            buf.chunks_exact(SIGINFO_SIZE)
                .take(n.min(32))
                .map(<[u8]>::to_vec),
        );
    }
}

/// Returns true when `err` means the tracee no longer exists (`ESRCH`).
pub fn is_esrch(err: &SysError) -> bool {
    err.errno() == Some(libc::ESRCH)
}
