//! Seccomp through ptrace: a thread's seccomp mode, its filters and their flags
//! (`PTRACE_SECCOMP_GET_FILTER`, `PTRACE_SECCOMP_GET_METADATA`), and the ptrace options that
//! suspend them while haul injects syscalls (`PTRACE_O_SUSPEND_SECCOMP`). See ptrace(2) and
//! seccomp(2).
//!
//! Reading filters and suspending them both need `CAP_SYS_ADMIN`, and a tracer that is not
//! itself under seccomp.

use super::ptrace::{self, PTRACE_O_TRACESYSGOOD};
use super::{check, io_err, Result, SysError};

/// `PTRACE_SECCOMP_GET_FILTER` (linux/ptrace.h; Linux 4.4). Written here: libc has it only
/// for Android, and linux-raw-sys's `ptrace` module is not enabled in Cargo.toml.
pub const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
/// `PTRACE_SECCOMP_GET_METADATA` (linux/ptrace.h; Linux 4.16). Written here, as above.
pub const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// `PTRACE_O_SUSPEND_SECCOMP`: the tracee's seccomp filters (and strict mode) do not apply
/// while it is traced with this option.
pub const PTRACE_O_SUSPEND_SECCOMP: u64 = libc::PTRACE_O_SUSPEND_SECCOMP as u64;

/// `SECCOMP_MODE_STRICT`.
pub const MODE_STRICT: u8 = libc::SECCOMP_MODE_STRICT as u8;
/// `SECCOMP_MODE_FILTER`.
pub const MODE_FILTER: u8 = libc::SECCOMP_MODE_FILTER as u8;
/// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`: installing the filter leaves the thread's speculation
/// control alone (without it, a kernel in `spec_store_bypass_disable=seccomp` mode forces the
/// mitigations on).
pub const FILTER_FLAG_SPEC_ALLOW: u64 = libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW;
/// `SECCOMP_RET_USER_NOTIF`: the filter hands the syscall to a listener (an fd elsewhere).
pub const RET_USER_NOTIF: u32 = libc::SECCOMP_RET_USER_NOTIF;
/// `SECCOMP_RET_ACTION_FULL`: the action bits of a filter's return value.
pub const RET_ACTION_FULL: u32 = libc::SECCOMP_RET_ACTION_FULL;
/// Size of one BPF instruction (`struct sock_filter`).
pub const INSN_SIZE: usize = std::mem::size_of::<libc::sock_filter>();

/// `struct seccomp_metadata` (linux/ptrace.h), 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Metadata {
    filter_off: u64,
    flags: u64,
}

/// The seccomp mode of thread `tid` of `pid` (0 none, 1 strict, 2 filter), from the
/// `Seccomp:` line of `/proc/PID/task/TID/status` (proc(5)).
pub fn mode(pid: i32, tid: i32) -> Result<u8> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let s = std::fs::read_to_string(&path).map_err(|e| io_err(format!("read {path}"), e))?;
    s.lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| SysError::Invalid(format!("{path}: no Seccomp line")))
}

/// The ptrace options of a haul tracee: `PTRACE_O_TRACESYSGOOD`, and
/// `PTRACE_O_SUSPEND_SECCOMP` when the thread runs under seccomp (so that injected syscalls
/// are not filtered, nor the thread killed by its own filter for them).
pub fn options_for(filtered: bool) -> u64 {
    if filtered {
        PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP
    } else {
        PTRACE_O_TRACESYSGOOD
    }
}

/// Sets the ptrace options of stopped tracee `tid` of `pid` for its seccomp mode as
/// `/proc` shows it now ([`options_for`]).
pub fn set_tracee_options(pid: i32, tid: i32) -> Result<()> {
    set_tracee_options_with(pid, tid, 0)
}

/// [`set_tracee_options`] with `extra` `PTRACE_O_*` bits besides.
pub fn set_tracee_options_with(pid: i32, tid: i32, extra: u64) -> Result<()> {
    let filtered = match mode(pid, tid) {
        Ok(m) => m != 0,
        // A thread that is gone: `PTRACE_SETOPTIONS` reports it (ESRCH) as it always did.
        Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ESRCH)) => false,
        Err(e) => return Err(e),
    };
    ptrace::set_options(tid, options_for(filtered) | extra)
}

/// Suspends the seccomp filters of stopped tracee `tid`: `ptrace(PTRACE_SETOPTIONS)` with
/// `PTRACE_O_SUSPEND_SECCOMP` (and `PTRACE_O_TRACESYSGOOD`). `EPERM` without `CAP_SYS_ADMIN`.
pub fn suspend(tid: i32) -> Result<()> {
    ptrace::set_options(tid, options_for(true))
}

/// The filters of stopped tracee `tid`, oldest first: each as its raw BPF program (8 bytes per
/// `struct sock_filter`) with its flags. `ptrace(PTRACE_SECCOMP_GET_FILTER)` and
/// `ptrace(PTRACE_SECCOMP_GET_METADATA)`, see ptrace(2). A thread without filters has none.
pub fn filters(tid: i32) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for index in 0.. {
        let Some(prog) = filter(tid, index)? else {
            break;
        };
        out.push((metadata_flags(tid, index)?, prog));
    }
    // The kernel numbers them from the oldest (its `get_nth_filter`).
    Ok(out)
}

/// Filter `index` of `tid` (0 is the oldest), or None past the last one (`ENOENT`; `EINVAL`
/// for a thread not in filter mode).
fn filter(tid: i32, index: u64) -> Result<Option<Vec<u8>>> {
    let get = |buf: u64| {
        // SAFETY: with a null buffer the kernel only returns the instruction count; with a
        // buffer, it writes that many `sock_filter`s into it, which the caller sized for them.
        unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid as libc::pid_t,
                index as *mut libc::c_void,
                buf as *mut libc::c_void,
            )
        }
    };
    let what = || format!("ptrace(PTRACE_SECCOMP_GET_FILTER, {tid}, {index})");
    let n = match check(get(0), what) {
        Ok(n) => n as usize,
        Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; n * INSN_SIZE];
    let got = check(get(buf.as_mut_ptr() as u64), what)? as usize;
    if got != n {
        return Err(SysError::Invalid(format!(
            "{}: {got} instructions, {n} announced",
            what()
        )));
    }
    Ok(Some(buf))
}

/// The flags of filter `index` of `tid`: `ptrace(PTRACE_SECCOMP_GET_METADATA)`.
fn metadata_flags(tid: i32, index: u64) -> Result<u64> {
    let mut md = Metadata {
        filter_off: index,
        flags: 0,
    };
    // SAFETY: the kernel reads `filter_off` and writes at most `size_of::<Metadata>()` bytes
    // (the size passed) into `md`, a live local.
    let r = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_METADATA,
            tid as libc::pid_t,
            std::mem::size_of::<Metadata>() as *mut libc::c_void,
            &mut md as *mut Metadata as *mut libc::c_void,
        )
    };
    check(r, || {
        format!("ptrace(PTRACE_SECCOMP_GET_METADATA, {tid}, {index})")
    })?;
    Ok(md.flags)
}

/// Whether the BPF program `prog` (raw `sock_filter`s) has a constant return of
/// `SECCOMP_RET_USER_NOTIF`: it hands syscalls to a listener fd that a restore cannot give it.
pub fn returns_user_notif(prog: &[u8]) -> bool {
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    prog.chunks_exact(INSN_SIZE).any(|i| {
        let code = u16::from_ne_bytes([i[0], i[1]]);
        let k = u32::from_ne_bytes([i[4], i[5], i[6], i[7]]);
        code == RET_K && k & RET_ACTION_FULL == RET_USER_NOTIF
    })
}

/// Whether haul itself has `CAP_SYS_ADMIN` in its effective set and runs under no seccomp
/// filter: what reading and suspending a target's filters needs. Reads `/proc/self/status`.
pub fn can_suspend() -> Result<bool> {
    let path = "/proc/self/status";
    let s = std::fs::read_to_string(path).map_err(|e| io_err(format!("read {path}"), e))?;
    let field = |k: &str| s.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    let eff = field("CapEff:")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    let mode = field("Seccomp:").unwrap_or("0");
    Ok(eff & (1 << linux_raw_sys::general::CAP_SYS_ADMIN) != 0 && mode == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u32, k: u32) -> Vec<u8> {
        let mut v = (code as u16).to_ne_bytes().to_vec();
        v.extend([0, 0]);
        v.extend(k.to_ne_bytes());
        v
    }

    #[test]
    fn a_constant_user_notif_return_is_found() {
        let ret = libc::BPF_RET | libc::BPF_K;
        let allow = insn(ret, libc::SECCOMP_RET_ALLOW);
        let notif = insn(ret, RET_USER_NOTIF | 7);
        assert!(!returns_user_notif(&allow));
        assert!(returns_user_notif(&[allow.clone(), notif].concat()));
        // The same constant loaded, not returned, is no return.
        let ld = insn(libc::BPF_LD | libc::BPF_K, RET_USER_NOTIF);
        assert!(!returns_user_notif(&[ld, allow].concat()));
    }

    #[test]
    fn options_suspend_only_for_a_filtered_thread() {
        assert_eq!(options_for(false), PTRACE_O_TRACESYSGOOD);
        assert_eq!(
            options_for(true),
            PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP
        );
    }
}
