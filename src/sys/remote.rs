//! Syscalls injected into a ptrace-stopped thread (DESIGN.md §4), and a scratch page in the
//! target for syscalls that take pointers.
//!
//! The thread runs one `syscall` instruction of its own address space — at `rip-2` when it is
//! stopped inside a syscall, else one found in its `[vdso]` — with our registers, from its
//! syscall-entry stop to its syscall-exit stop (`PTRACE_SYSCALL`); then its registers are put
//! back. Every signal is blocked in the thread meanwhile, so signals that arrive stay queued;
//! the few that cannot be blocked and still stop it first are suppressed and remembered
//! ([`RemoteSyscall::take_signals`]) so the caller re-sends them when it lets the thread go.
//!
//! Not single steps: a single step ends in a SIGTRAP the kernel forces on the thread, and a
//! forced signal that is blocked (every signal is, here) has its handler reset to the default.
//! A target's own SIGTRAP handler was lost that way, and its own pending SIGTRAP then killed it.
//! Syscall stops are ptrace reports, not signals, so every SIGTRAP the thread sees is its own.
//!
//! Callers do not number syscalls nor lay out kernel structs: the typed calls of this module
//! (`setgroups`, `capset`, `prctl_mm_map`, `rt_sigaction`, `timer_create`, `dup3`, `take_uffd`,
//! ...) are written against the [`Inject`] trait, take their numbers and layouts from libc or
//! linux-raw-sys, and put what they pass by pointer into the session's argument area. Tests use
//! `fake::Recorder`, which records every call and answers from a script.

use super::mem::ProcMem;
use super::ptrace::{self, Regs, Stop};
use super::{io_err, Result, SysError, PAGE_SIZE};

mod events;
#[cfg(test)]
pub mod fake;
mod fd;
mod ids;
mod inet;
mod ipc;
mod mm;
mod seccomp;
mod signal;
mod stored;
#[cfg(test)]
mod tests;
mod tty;
mod unix;

pub use events::*;
pub use fd::*;
pub use ids::*;
pub use inet::*;
pub use ipc::*;
pub use mm::*;
pub use seccomp::*;
pub use signal::*;
pub use stored::*;
pub use tty::*;
pub use unix::*;

/// A session of syscalls injected into one stopped thread: what a restore step needs of it.
/// [`RemoteSyscall`] is the real one; `fake::Recorder` (tests only) records every call and
/// every byte written, and returns scripted results, so that a step's order and arguments can
/// be checked without root or a live process. The typed calls of this module (`setgroups`,
/// `capset`, `rt_sigaction`, ...) are written against this trait.
pub trait Inject {
    /// The process the syscalls run in.
    fn pid(&self) -> i32;
    /// The thread the syscalls run in.
    fn tid(&self) -> i32;
    /// Runs syscall `nr` with `args` in the thread and returns its raw result (`-errno` on
    /// failure).
    fn call(&mut self, nr: i64, args: [u64; 6]) -> Result<i64>;
    /// Writes `data` into the thread's memory at `addr`.
    fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<()>;
    /// Reads the thread's memory at `addr` into `buf`.
    fn read_mem(&mut self, addr: u64, buf: &mut [u8]) -> Result<()>;
    /// Where typed calls put what they pass by pointer: (address, length) of a writable area
    /// of the target, if one was set.
    fn args_area(&self) -> Option<(u64, u64)>;

    /// Like [`call`](Self::call), turning a `-errno` result into an error naming `what`.
    fn call_ok(&mut self, nr: i64, args: [u64; 6], what: &str) -> Result<u64> {
        let v = self.call(nr, args)?;
        checked(self.pid(), self.tid(), v, what)
    }
}

/// A raw injected-syscall result as a value, or the error naming `what` for a `-errno`.
fn checked(pid: i32, tid: i32, v: i64, what: &str) -> Result<u64> {
    if (-4095..0).contains(&v) {
        return Err(io_err(
            format!("injected {what} in pid {pid} (thread {tid})"),
            std::io::Error::from_raw_os_error((-v) as i32),
        ));
    }
    Ok(v as u64)
}

/// Writes `data` at the start of the argument area of `r`; returns its address.
pub fn put<R: Inject + ?Sized>(r: &mut R, data: &[u8]) -> Result<u64> {
    put_at(r, 0, data)
}

/// Writes `data` at `offset` into the argument area of `r`; returns its address.
pub fn put_at<R: Inject + ?Sized>(r: &mut R, offset: u64, data: &[u8]) -> Result<u64> {
    let (at, len) = r.args_area().ok_or_else(|| {
        SysError::Invalid(format!(
            "thread {}: no argument area for an injected syscall",
            r.tid()
        ))
    })?;
    if offset + data.len() as u64 > len {
        return Err(SysError::Invalid(format!(
            "thread {}: {} bytes of syscall arguments do not fit the {len}-byte area",
            r.tid(),
            offset + data.len() as u64
        )));
    }
    r.write_mem(at + offset, data)?;
    Ok(at + offset)
}

/// A path or name as a NUL-terminated C string, or an error naming it.
pub fn cstr(s: &str) -> Result<Vec<u8>> {
    if s.as_bytes().contains(&0) {
        return Err(SysError::Invalid(format!("{s:?} contains a NUL byte")));
    }
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    Ok(v)
}

/// Copies `v` into `b` at `offset` (kernel structs are built field by field at the offsets
/// libc / linux-raw-sys give, so no padding byte is ever read).
pub(crate) fn field(b: &mut [u8], offset: usize, v: &[u8]) {
    b[offset..offset + v.len()].copy_from_slice(v);
}

/// How many times one injected syscall is retried when signals keep interrupting the step.
const MAX_STEP_ATTEMPTS: usize = 64;

/// A ptrace-stopped thread that haul runs syscalls in. While it exists it owns the thread's
/// registers: every call restores the saved ones, and dropping it unmaps the scratch page (if
/// still mapped) and restores them again, best effort. Each call also blocks every signal in
/// the thread while it steps (and gives the mask back right after, so that the thread is never
/// left with a mask not its own between calls): a signal that arrives stays queued with its
/// `siginfo_t` instead of stopping a step and having to be sent again without it.
pub struct RemoteSyscall {
    pid: i32,
    tid: i32,
    orig: Regs,
    orig_mask: u64,
    insn: u64,
    mem: ProcMem,
    signals: Vec<i32>,
    scratch: Option<(u64, u64)>,
    args: Option<(u64, u64)>,
    calls: u64,
}

impl RemoteSyscall {
    /// Prepares injection into thread `tid` of process `pid`, which must be a ptrace-stopped
    /// tracee of the calling thread: saves its registers and finds a `syscall` instruction.
    /// Sets `PTRACE_O_TRACESYSGOOD` on the thread, so that its syscall stops cannot be taken
    /// for a SIGTRAP of its own, and `PTRACE_O_SUSPEND_SECCOMP` if it runs under seccomp (the
    /// options haul's tracees have, see [`super::seccomp::options_for`]), so that its filters
    /// neither refuse the injected syscalls nor kill it for them.
    pub fn new(pid: i32, tid: i32) -> Result<RemoteSyscall> {
        RemoteSyscall::with_options(pid, tid, 0)
    }

    /// [`RemoteSyscall::new`], with `extra` `PTRACE_O_*` options set on the thread besides
    /// (a memory keeper keeps `PTRACE_O_EXITKILL` throughout).
    pub fn with_options(pid: i32, tid: i32, extra: u64) -> Result<RemoteSyscall> {
        super::seccomp::set_tracee_options_with(pid, tid, extra)?;
        let orig = ptrace::getregs(tid)?;
        let mem = ProcMem::open(pid)?;
        let insn = find_syscall_insn(pid, tid, &orig, &mem)?;
        let orig_mask = ptrace::get_sigmask(tid)?;
        Ok(RemoteSyscall {
            pid,
            tid,
            orig,
            orig_mask,
            insn,
            mem,
            signals: Vec::new(),
            scratch: None,
            args: None,
            calls: 0,
        })
    }

    /// The thread's registers as they were when injection began (restored after every call).
    /// Runs later syscalls at `addr`, which must hold a `syscall` instruction (`0f 05`): a
    /// restore moves it into its own scratch page before it unmaps the rest.
    pub fn set_insn(&mut self, addr: u64) {
        self.insn = addr;
    }

    /// Replaces the registers written back after each call and on drop (a restore sets the
    /// rebuilt process's registers last and must not have them overwritten).
    pub fn set_orig_regs(&mut self, regs: Regs) {
        self.orig = regs;
    }

    /// Replaces the signal mask given back after each call and on drop (a restore sets the
    /// rebuilt thread's own).
    pub fn set_orig_sigmask(&mut self, mask: u64) {
        self.orig_mask = mask;
    }

    /// Forgets the scratch mapping without unmapping it (the caller unmapped it, or it is gone
    /// with the address space).
    pub fn forget_scratch(&mut self) {
        self.scratch = None;
    }

    /// Sets the area typed calls ([`Inject`]) write their pointer arguments into.
    pub fn set_args_area(&mut self, addr: u64, len: u64) {
        self.args = Some((addr, len));
    }

    /// The thread the syscalls run in.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The process of that thread.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Address of the `syscall` instruction used.
    pub fn insn_addr(&self) -> u64 {
        self.insn
    }

    /// Injected syscalls run so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Signals that arrived (and were held back) while syscalls ran; the caller must deliver
    /// them again (e.g. `ptrace::detach(tid, sig)` or `tgkill`) when releasing the thread.
    pub fn take_signals(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.signals)
    }

    /// Runs syscall `nr` with `args` (rdi, rsi, rdx, r10, r8, r9) in the thread and returns its
    /// raw result (`-errno` on failure). The thread's registers are restored afterwards.
    pub fn call(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let mut r = self.orig;
        r.rip = self.insn;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        // Blocked while it steps (the kernel leaves SIGKILL and SIGSTOP out of any mask).
        let result = ptrace::set_sigmask(self.tid, u64::MAX).and_then(|()| self.step_syscall(&r));
        // Put the thread's own registers and mask back whatever happened (unless it is gone).
        let restore = ptrace::setregs(self.tid, &self.orig);
        let mask = ptrace::set_sigmask(self.tid, self.orig_mask);
        let value = result?;
        restore?;
        mask?;
        self.calls += 1;
        Ok(value)
    }

    fn step_syscall(&mut self, r: &Regs) -> Result<i64> {
        for _ in 0..MAX_STEP_ATTEMPTS {
            ptrace::setregs(self.tid, r)?;
            ptrace::syscall(self.tid, 0)?;
            match ptrace::wait_stop(self.tid)? {
                Stop::Syscall => {}
                // Stopped before the instruction ran (a signal, or a pending interrupt came
                // first): the signal is the thread's own, kept to be sent again; run it again.
                Stop::Signal { sig } => {
                    self.signals.push(sig);
                    continue;
                }
                Stop::Event { .. } | Stop::OtherEvent { .. } => continue,
            }
            // The entry stop of our syscall (its rip is past the instruction): run it to its
            // exit stop, where rax holds the result.
            let entry = ptrace::getregs(self.tid)?;
            if entry.rip != self.insn + 2 {
                return Err(SysError::Invalid(format!(
                    "thread {}: a syscall stop at {:#x}, not after the injected syscall at {:#x}",
                    self.tid, entry.rip, self.insn
                )));
            }
            ptrace::syscall(self.tid, 0)?;
            loop {
                match ptrace::wait_stop(self.tid)? {
                    Stop::Syscall => break,
                    // Nothing else should stop it inside the syscall; keep what does.
                    Stop::Signal { sig } => {
                        self.signals.push(sig);
                        ptrace::syscall(self.tid, 0)?;
                    }
                    Stop::Event { .. } | Stop::OtherEvent { .. } => ptrace::syscall(self.tid, 0)?,
                }
            }
            let after = ptrace::getregs(self.tid)?;
            return Ok(after.rax as i64);
        }
        Err(SysError::Invalid(format!(
            "thread {}: injected syscall {} did not complete after {MAX_STEP_ATTEMPTS} attempts",
            self.tid, r.rax
        )))
    }

    /// Like [`call`](Self::call), turning a `-errno` result into an error naming `what`.
    pub fn call_ok(&mut self, nr: i64, args: [u64; 6], what: &str) -> Result<u64> {
        let v = self.call(nr, args)?;
        checked(self.pid, self.tid, v, what)
    }

    /// Maps an anonymous read-write private scratch area of `len` bytes (rounded to pages) in
    /// the target by an injected `mmap`, for syscalls that take pointers. Returns its address.
    /// Only one scratch area exists at a time; it is unmapped by [`unmap_scratch`] or on drop.
    ///
    /// [`unmap_scratch`]: Self::unmap_scratch
    pub fn map_scratch(&mut self, len: u64) -> Result<u64> {
        if let Some((addr, _)) = self.scratch {
            return Ok(addr);
        }
        let len = len.max(1).div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = self.call_ok(
            libc::SYS_mmap,
            [0, len, prot, flags, u64::MAX, 0],
            "mmap of a scratch page",
        )?;
        self.scratch = Some((addr, len));
        Ok(addr)
    }

    /// The scratch area (address, length), if mapped.
    pub fn scratch(&self) -> Option<(u64, u64)> {
        self.scratch
    }

    /// Unmaps the scratch area by an injected `munmap`.
    pub fn unmap_scratch(&mut self) -> Result<()> {
        if let Some((addr, len)) = self.scratch {
            self.call_ok(
                libc::SYS_munmap,
                [addr, len, 0, 0, 0, 0],
                "munmap of the scratch page",
            )?;
            self.scratch = None;
        }
        Ok(())
    }

    /// Writes `data` into the target's memory at `addr` (through `/proc/PID/mem`).
    pub fn write_mem(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem.write_at(addr, data)
    }

    /// Reads the target's memory at `addr` into `buf` (through `/proc/PID/mem`).
    pub fn read_mem(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.read_at(addr, buf)
    }
}

impl RemoteSyscall {
    /// Ends the thread's process (a single-threaded one) so that its parent's `wait` reports
    /// `status`, a wait(2) status: `code << 8` makes it run `exit_group(code)` at the syscall
    /// instruction; a signal number makes it take that signal with its default action, which
    /// the caller made sure terminates it (and does not dump core). haul, its tracer, waits for
    /// its end, which hands it over to its real parent as a zombie. Returns the status haul
    /// saw.
    pub fn end_process(mut self, status: i32) -> Result<i32> {
        self.scratch = None;
        let tid = self.tid;
        let sig = status & 0x7f;
        if sig == 0 {
            let mut r = self.orig;
            r.rip = self.insn;
            r.rax = libc::SYS_exit_group as u64;
            r.orig_rax = u64::MAX;
            r.rdi = ((status >> 8) & 0xff) as u64;
            ptrace::set_sigmask(tid, u64::MAX)?;
            ptrace::setregs(tid, &r)?;
        } else {
            ptrace::set_sigmask(tid, 0)?;
            super::process::tgkill(self.pid, tid, sig)?;
        }
        ptrace::cont(tid, 0)?;
        loop {
            let st = ptrace::wait_status(tid)?;
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                return Ok(st);
            }
            // The signal's delivery stop: let it be delivered; any other stop: go on.
            let deliver = match ptrace::decode_status(tid, st)? {
                Stop::Signal { sig: s } if s == sig => sig,
                _ => 0,
            };
            ptrace::cont(tid, deliver)?;
        }
    }
}

impl Inject for RemoteSyscall {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn tid(&self) -> i32 {
        self.tid
    }
    fn call(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        RemoteSyscall::call(self, nr, args)
    }
    fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        RemoteSyscall::write_mem(self, addr, data)
    }
    fn read_mem(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        RemoteSyscall::read_mem(self, addr, buf)
    }
    fn args_area(&self) -> Option<(u64, u64)> {
        self.args
    }
}

impl Drop for RemoteSyscall {
    fn drop(&mut self) {
        if self.scratch.is_some() {
            if let Err(e) = self.unmap_scratch() {
                tracing::warn!(tid = self.tid, "could not unmap the scratch page: {e}");
            }
        }
        if let Err(e) = ptrace::setregs(self.tid, &self.orig) {
            if !ptrace::is_esrch(&e) {
                tracing::warn!(tid = self.tid, "could not restore registers: {e}");
            }
        }
        if let Err(e) = ptrace::set_sigmask(self.tid, self.orig_mask) {
            if !ptrace::is_esrch(&e) {
                tracing::warn!(tid = self.tid, "could not restore the signal mask: {e}");
            }
        }
    }
}

/// Finds a `syscall` instruction (`0f 05`) the thread can run: at `rip-2` when it is stopped
/// inside a syscall, else the first one in its `[vdso]`.
fn find_syscall_insn(pid: i32, tid: i32, regs: &Regs, mem: &ProcMem) -> Result<u64> {
    if (regs.orig_rax as i64) >= 0 && regs.rip >= 2 {
        let mut b = [0u8; 2];
        if mem.read_at(regs.rip - 2, &mut b).is_ok() && b == [0x0f, 0x05] {
            return Ok(regs.rip - 2);
        }
    }
    let maps_path = format!("/proc/{pid}/maps");
    let maps =
        std::fs::read_to_string(&maps_path).map_err(|e| io_err(format!("read {maps_path}"), e))?;
    let vdso = maps.lines().find(|l| l.ends_with("[vdso]")).and_then(|l| {
        let range = l.split_whitespace().next()?;
        let (s, e) = range.split_once('-')?;
        Some((
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
        ))
    });
    let Some((start, end)) = vdso else {
        return Err(SysError::NoSyscallInsn { tid });
    };
    let mut code = vec![0u8; (end - start) as usize];
    mem.read_at(start, &mut code)?;
    code.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| start + i as u64)
        .ok_or(SysError::NoSyscallInsn { tid })
}
