//! Signal and timer calls injected into a thread: `rt_sigaction`, `sigaltstack`,
//! `rt_sigqueueinfo`/`rt_tgsigqueueinfo`, `rt_sigtimedwait`, `timer_create`/`timer_settime` and `setitimer`.

use std::mem::{offset_of, size_of};

use linux_raw_sys::general::kernel_sigaction as KSigaction;

use super::{field, put, put_at, Inject};
use crate::sys::Result;

/// A signal action as the kernel keeps it (`struct sigaction` of `rt_sigaction(2)`, not
/// glibc's): handler, flags, restorer, and the 64-bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigAction {
    /// Handler address, or 0 = SIG_DFL, 1 = SIG_IGN.
    pub handler: u64,
    /// `SA_*` flags.
    pub flags: u64,
    /// `sa_restorer` (with `SA_RESTORER`).
    pub restorer: u64,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}

impl SigAction {
    /// The kernel's bytes (layout of linux-raw-sys `kernel_sigaction`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<KSigaction>()];
        field(
            &mut b,
            offset_of!(KSigaction, sa_handler_kernel),
            &self.handler.to_ne_bytes(),
        );
        field(
            &mut b,
            offset_of!(KSigaction, sa_flags),
            &self.flags.to_ne_bytes(),
        );
        field(
            &mut b,
            offset_of!(KSigaction, sa_restorer),
            &self.restorer.to_ne_bytes(),
        );
        field(
            &mut b,
            offset_of!(KSigaction, sa_mask),
            &self.mask.to_ne_bytes(),
        );
        b
    }
}

/// `rt_sigaction(sig, &action, NULL, 8)`.
pub fn rt_sigaction<R: Inject + ?Sized>(r: &mut R, sig: i32, action: &SigAction) -> Result<()> {
    let at = put(r, &action.to_bytes())?;
    r.call_ok(
        libc::SYS_rt_sigaction,
        [sig as u64, at, 0, 8, 0, 0],
        &format!("rt_sigaction {sig}"),
    )?;
    Ok(())
}

/// The `stack_t` bytes `sigaltstack(2)` reads (libc layout). `SS_ONSTACK` is a state, not a
/// flag one can set: it is left out, and `SS_DISABLE` stands alone.
pub fn stack_bytes(sp: u64, flags: i32, size: u64) -> Vec<u8> {
    let mut flags = flags & !libc::SS_ONSTACK;
    if flags & libc::SS_DISABLE != 0 {
        flags = libc::SS_DISABLE;
    }
    let mut b = vec![0u8; size_of::<libc::stack_t>()];
    field(&mut b, offset_of!(libc::stack_t, ss_sp), &sp.to_ne_bytes());
    field(
        &mut b,
        offset_of!(libc::stack_t, ss_flags),
        &flags.to_ne_bytes(),
    );
    field(
        &mut b,
        offset_of!(libc::stack_t, ss_size),
        &size.to_ne_bytes(),
    );
    b
}

/// `sigaltstack(&ss, NULL)` with [`stack_bytes`].
pub fn sigaltstack<R: Inject + ?Sized>(r: &mut R, sp: u64, flags: i32, size: u64) -> Result<()> {
    let at = put(r, &stack_bytes(sp, flags, size))?;
    r.call_ok(libc::SYS_sigaltstack, [at, 0, 0, 0, 0, 0], "sigaltstack")?;
    Ok(())
}

/// `rt_sigqueueinfo(pid, sig, info)`: queues the raw `siginfo_t` `info` to process `pid`.
pub fn rt_sigqueueinfo<R: Inject + ?Sized>(
    r: &mut R,
    pid: i32,
    sig: i32,
    info: &[u8],
) -> Result<()> {
    let at = put(r, info)?;
    r.call_ok(
        libc::SYS_rt_sigqueueinfo,
        [pid as u64, sig as u64, at, 0, 0, 0],
        &format!("rt_sigqueueinfo of signal {sig}"),
    )?;
    Ok(())
}

/// `rt_tgsigqueueinfo(pid, tid, sig, info)`: queues the raw `siginfo_t` `info` to one thread.
pub fn rt_tgsigqueueinfo<R: Inject + ?Sized>(
    r: &mut R,
    pid: i32,
    tid: i32,
    sig: i32,
    info: &[u8],
) -> Result<()> {
    let at = put(r, info)?;
    r.call_ok(
        libc::SYS_rt_tgsigqueueinfo,
        [pid as u64, tid as u64, sig as u64, at, 0, 0],
        &format!("rt_tgsigqueueinfo of signal {sig} to thread {tid}"),
    )?;
    Ok(())
}

/// `rt_sigtimedwait(&{sig}, NULL, &{0, 0}, 8)`: takes one pending `sig` out of the thread's (or
/// its process's) pending set without waiting. Returns whether one was pending (`EAGAIN`: none).
pub fn take_pending<R: Inject + ?Sized>(r: &mut R, sig: i32) -> Result<bool> {
    let set = (1u64 << (sig - 1)).to_ne_bytes();
    let zero = [0u8; size_of::<libc::timespec>()];
    let set_at = put(r, &set)?;
    let ts_at = put_at(r, set.len() as u64, &zero)?;
    let v = r.call(libc::SYS_rt_sigtimedwait, [set_at, 0, ts_at, 8, 0, 0])?;
    if v == -(libc::EAGAIN as i64) {
        return Ok(false);
    }
    super::checked(
        r.pid(),
        r.tid(),
        v,
        &format!("rt_sigtimedwait for signal {sig}"),
    )?;
    Ok(true)
}

/// A `struct itimerval` (`units` = 1,000,000: µs) or `struct itimerspec` (1,000,000,000: ns)
/// as the kernel reads it: the interval then the value, each as {seconds, fraction} (libc
/// layout; both are four 64-bit words on x86_64).
pub fn interval_and_value(interval: u64, value: u64, units: u64) -> Vec<u8> {
    type S = libc::itimerspec;
    type T = libc::timespec;
    const _: () = assert!(size_of::<libc::itimerval>() == size_of::<S>());
    const _: () = assert!(offset_of!(libc::itimerval, it_value) == offset_of!(S, it_value));
    const _: () = assert!(offset_of!(libc::timeval, tv_usec) == offset_of!(T, tv_nsec));
    let mut b = vec![0u8; size_of::<S>()];
    for (at, v) in [
        (offset_of!(S, it_interval), interval),
        (offset_of!(S, it_value), value),
    ] {
        field(
            &mut b,
            at + offset_of!(T, tv_sec),
            &(v / units).to_ne_bytes(),
        );
        field(
            &mut b,
            at + offset_of!(T, tv_nsec),
            &(v % units).to_ne_bytes(),
        );
    }
    b
}

/// `setitimer(which, &{interval, value} in µs, NULL)`.
pub fn setitimer<R: Inject + ?Sized>(
    r: &mut R,
    which: u32,
    interval_us: u64,
    value_us: u64,
) -> Result<()> {
    let at = put(r, &interval_and_value(interval_us, value_us, 1_000_000))?;
    r.call_ok(
        libc::SYS_setitimer,
        [u64::from(which), at, 0, 0, 0, 0],
        &format!("setitimer {which}"),
    )?;
    Ok(())
}

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, on)`: while on, `timer_create(2)` takes the timer id
/// from its output argument (linux-raw-sys: libc has no such constant).
pub fn timer_create_restore_ids<R: Inject + ?Sized>(r: &mut R, on: bool) -> Result<()> {
    use linux_raw_sys::prctl as p;
    let v = if on {
        p::PR_TIMER_CREATE_RESTORE_IDS_ON
    } else {
        p::PR_TIMER_CREATE_RESTORE_IDS_OFF
    };
    super::prctl(
        r,
        [
            u64::from(p::PR_TIMER_CREATE_RESTORE_IDS),
            u64::from(v),
            0,
            0,
            0,
        ],
        "prctl PR_TIMER_CREATE_RESTORE_IDS (this kernel cannot recreate timer ids)",
    )?;
    Ok(())
}

/// How a POSIX timer notifies: the fields of `struct sigevent` a restore sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigEvent {
    /// `sigev_value`, passed to the handler.
    pub value: u64,
    /// The signal sent.
    pub signo: i32,
    /// `SIGEV_SIGNAL`, `SIGEV_NONE`, `SIGEV_THREAD_ID`.
    pub notify: i32,
    /// The thread of a `SIGEV_THREAD_ID` timer (0 otherwise).
    pub tid: i32,
}

impl SigEvent {
    /// The kernel's bytes (libc `sigevent` layout, 64 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        type E = libc::sigevent;
        let mut b = vec![0u8; size_of::<E>()];
        field(
            &mut b,
            offset_of!(E, sigev_value),
            &self.value.to_ne_bytes(),
        );
        field(
            &mut b,
            offset_of!(E, sigev_signo),
            &self.signo.to_ne_bytes(),
        );
        field(
            &mut b,
            offset_of!(E, sigev_notify),
            &self.notify.to_ne_bytes(),
        );
        field(
            &mut b,
            offset_of!(E, sigev_notify_thread_id),
            &self.tid.to_ne_bytes(),
        );
        b
    }
}

/// `timer_create(clock, &event, &id)` with `id` preset to `want` (the id it gets under
/// [`timer_create_restore_ids`]). Returns the id the kernel gave.
pub fn timer_create<R: Inject + ?Sized>(
    r: &mut R,
    clock: i32,
    event: &SigEvent,
    want: i32,
) -> Result<i32> {
    let ev = event.to_bytes();
    let at = put(r, &ev)?;
    let id_at = put_at(r, ev.len() as u64, &want.to_ne_bytes())?;
    r.call_ok(
        libc::SYS_timer_create,
        [clock as u64, at, id_at, 0, 0, 0],
        &format!("timer_create of timer {want}"),
    )?;
    let mut id = [0u8; 4];
    r.read_mem(id_at, &mut id)?;
    Ok(i32::from_ne_bytes(id))
}

/// `timer_settime(id, 0, &{interval, value} in ns, NULL)`: relative.
pub fn timer_settime<R: Inject + ?Sized>(
    r: &mut R,
    id: i32,
    interval_ns: u64,
    value_ns: u64,
) -> Result<()> {
    let at = put(r, &interval_and_value(interval_ns, value_ns, 1_000_000_000))?;
    r.call_ok(
        libc::SYS_timer_settime,
        [id as u64, 0, at, 0, 0, 0],
        &format!("timer_settime of timer {id}"),
    )?;
    Ok(())
}

/// The signal of a raw `siginfo_t` (its first int), if it is one (1-64).
pub fn siginfo_signo(info: &[u8]) -> Option<i32> {
    let b: [u8; 4] = info.get(..4)?.try_into().ok()?;
    let sig = i32::from_ne_bytes(b);
    (1..=64).contains(&sig).then_some(sig)
}
