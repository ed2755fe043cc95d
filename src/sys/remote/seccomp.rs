//! Seccomp calls injected into a thread being restored: a filter installed with its flags
//! (`seccomp(SECCOMP_SET_MODE_FILTER, flags, &sock_fprog)`) and strict mode
//! (`seccomp(SECCOMP_SET_MODE_STRICT)`), see seccomp(2). Once installed they would apply to
//! the syscalls injected after them: the caller suspends them first
//! ([`crate::sys::seccomp::suspend`]).

use std::mem::{offset_of, size_of};

use super::{field, put_at, Inject};
use crate::sys::seccomp::INSN_SIZE;
use crate::sys::{Result, SysError};

/// Installs the BPF program `program` (raw `struct sock_filter`s) as a seccomp filter of the
/// thread, with `flags` (`SECCOMP_FILTER_FLAG_*`). The thread needs `CAP_SYS_ADMIN` or
/// `no_new_privs`.
pub fn seccomp_set_filter<R: Inject + ?Sized>(r: &mut R, flags: u64, program: &[u8]) -> Result<()> {
    let n = program.len() / INSN_SIZE;
    if program.is_empty() || program.len() % INSN_SIZE != 0 || n > u16::MAX as usize {
        return Err(SysError::Invalid(format!(
            "a seccomp filter of {} bytes is not a BPF program",
            program.len()
        )));
    }
    let head = size_of::<libc::sock_fprog>() as u64;
    let insns = put_at(r, head, program)?;
    let mut prog = vec![0u8; head as usize];
    field(
        &mut prog,
        offset_of!(libc::sock_fprog, len),
        &(n as u16).to_ne_bytes(),
    );
    field(
        &mut prog,
        offset_of!(libc::sock_fprog, filter),
        &insns.to_ne_bytes(),
    );
    let at = put_at(r, 0, &prog)?;
    r.call_ok(
        libc::SYS_seccomp,
        [u64::from(libc::SECCOMP_SET_MODE_FILTER), flags, at, 0, 0, 0],
        &format!("seccomp SECCOMP_SET_MODE_FILTER ({n} instructions, flags {flags:#x})"),
    )?;
    Ok(())
}

/// Puts the thread in seccomp strict mode.
pub fn seccomp_set_strict<R: Inject + ?Sized>(r: &mut R) -> Result<()> {
    r.call_ok(
        libc::SYS_seccomp,
        [u64::from(libc::SECCOMP_SET_MODE_STRICT), 0, 0, 0, 0, 0],
        "seccomp SECCOMP_SET_MODE_STRICT",
    )?;
    Ok(())
}
