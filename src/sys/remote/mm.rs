//! Memory calls injected into a thread: mmap, munmap, mprotect, mremap, madvise, mlock2,
//! `PR_SET_MM_MAP`, `PR_SET_VMA_ANON_NAME`, a clone that shares the address space and one
//! that copies it.

use super::{cstr, put, put_at, Inject};
use crate::sys::process::PrctlMmMap;
use crate::sys::Result;

/// `mmap(2)` at `addr` (with `MAP_FIXED` or `MAP_FIXED_NOREPLACE` in `flags` it must land
/// there) of `len` bytes: anonymous when `fd` is `None`, else `fd` from byte `offset`.
/// Returns the address mapped.
pub fn mmap<R: Inject + ?Sized>(
    r: &mut R,
    addr: u64,
    len: u64,
    prot: u32,
    flags: u64,
    fd: Option<u64>,
    offset: u64,
) -> Result<u64> {
    r.call_ok(
        libc::SYS_mmap,
        [
            addr,
            len,
            u64::from(prot),
            flags,
            fd.unwrap_or(u64::MAX),
            offset,
        ],
        &format!("mmap {addr:#x}-{:#x}", addr.wrapping_add(len)),
    )
}

/// `clone(CLONE_VM)`, see clone(2): a child process of the caller that shares its address
/// space (and nothing else: its fd table, signal actions and the rest are copies), with no
/// exit signal and the caller's stack pointer. Returns its pid (in the caller's PID
/// namespace). It must never run: the caller is traced with `PTRACE_O_TRACECLONE`, so the
/// child starts traced and stopped (see `dump::keeper`).
pub fn clone_sharing_mm<R: Inject + ?Sized>(r: &mut R) -> Result<i32> {
    let flags = libc::CLONE_VM as u64;
    let pid = r.call_ok(libc::SYS_clone, [flags, 0, 0, 0, 0, 0], "clone(CLONE_VM)")?;
    Ok(pid as i32)
}

/// `clone(CLONE_PARENT)`, see clone(2): a copy of the caller (a fork: its address space copied
/// on write, its fd table copied) that is a child of the caller's parent, not of the caller,
/// with no exit signal and the caller's stack pointer. Returns its pid (in the caller's PID
/// namespace). It must never run: the caller is traced with `PTRACE_O_TRACECLONE`, so the
/// child starts traced and stopped (see `dump::snapshot`). EINVAL when the caller is the init
/// of a PID namespace.
pub fn clone_snapshot<R: Inject + ?Sized>(r: &mut R) -> Result<i32> {
    let flags = libc::CLONE_PARENT as u64;
    let pid = r.call_ok(
        libc::SYS_clone,
        [flags, 0, 0, 0, 0, 0],
        "clone(CLONE_PARENT)",
    )?;
    Ok(pid as i32)
}

/// `munmap(2)` of `[addr, addr + len)`.
pub fn munmap<R: Inject + ?Sized>(r: &mut R, addr: u64, len: u64) -> Result<()> {
    r.call_ok(
        libc::SYS_munmap,
        [addr, len, 0, 0, 0, 0],
        &format!("munmap {addr:#x}-{:#x}", addr.wrapping_add(len)),
    )?;
    Ok(())
}

/// `mprotect(2)` of `[addr, addr + len)` to `prot`.
pub fn mprotect<R: Inject + ?Sized>(r: &mut R, addr: u64, len: u64, prot: u32) -> Result<()> {
    r.call_ok(
        libc::SYS_mprotect,
        [addr, len, u64::from(prot), 0, 0, 0],
        &format!("mprotect {addr:#x}"),
    )?;
    Ok(())
}

/// `mremap(2)` of the `len` bytes at `from` to exactly `to` (`MREMAP_MAYMOVE | MREMAP_FIXED`).
/// Returns where the kernel put them.
pub fn mremap_fixed<R: Inject + ?Sized>(r: &mut R, from: u64, len: u64, to: u64) -> Result<u64> {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    r.call_ok(
        libc::SYS_mremap,
        [from, len, len, flags, to, 0],
        &format!("mremap {from:#x} to {to:#x}"),
    )
}

/// `madvise(2)` of `[addr, addr + len)` with `advice` (`libc::MADV_*`).
pub fn madvise<R: Inject + ?Sized>(r: &mut R, addr: u64, len: u64, advice: i32) -> Result<()> {
    r.call_ok(
        libc::SYS_madvise,
        [addr, len, advice as u64, 0, 0, 0],
        &format!("madvise {addr:#x} advice {advice}"),
    )?;
    Ok(())
}

/// `mlock2(2)` of `[addr, addr + len)`, with `MLOCK_ONFAULT` when `on_fault`.
pub fn mlock2<R: Inject + ?Sized>(r: &mut R, addr: u64, len: u64, on_fault: bool) -> Result<()> {
    let flags = if on_fault { libc::MLOCK_ONFAULT } else { 0 };
    r.call_ok(
        libc::SYS_mlock2,
        [addr, len, u64::from(flags), 0, 0, 0],
        &format!("mlock2 {addr:#x}-{:#x}", addr.wrapping_add(len)),
    )?;
    Ok(())
}

/// Where [`prctl_mm_map`] puts the auxv words in the argument area (after the struct).
const AUXV_OFF: u64 = 128;

/// The auxv as the kernel reads it: (type, value) words, ended by an `AT_NULL` pair.
pub fn auxv_bytes(auxv: &[(u64, u64)]) -> Vec<u8> {
    auxv.iter()
        .chain(std::iter::once(&(libc::AT_NULL, 0)))
        .flat_map(|(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
        .collect()
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP, &map, sizeof map)`: the mm fields of `map` with the auxv
/// pairs `auxv` ([`auxv_bytes`]) and the exe fd `map.exe_fd`. `map.auxv` and `map.auxv_size`
/// are set here, to where the words are written.
pub fn prctl_mm_map<R: Inject + ?Sized>(
    r: &mut R,
    map: &PrctlMmMap,
    auxv: &[(u64, u64)],
) -> Result<()> {
    let auxv = auxv_bytes(auxv);
    let auxv_at = put_at(r, AUXV_OFF, &auxv)?;
    let map = PrctlMmMap {
        auxv: auxv_at,
        auxv_size: auxv.len() as u32,
        ..*map
    };
    let at = put(r, &map.to_bytes())?;
    r.call_ok(
        libc::SYS_prctl,
        [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            at,
            std::mem::size_of::<PrctlMmMap>() as u64,
            0,
            0,
        ],
        "prctl(PR_SET_MM, PR_SET_MM_MAP)",
    )?;
    Ok(())
}

/// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, name)`: names anonymous memory.
pub fn set_vma_anon_name<R: Inject + ?Sized>(
    r: &mut R,
    addr: u64,
    len: u64,
    name: &str,
) -> Result<()> {
    let at = put(r, &cstr(name)?)?;
    r.call_ok(
        libc::SYS_prctl,
        [
            libc::PR_SET_VMA as u64,
            libc::PR_SET_VMA_ANON_NAME as u64,
            addr,
            len,
            at,
            0,
        ],
        &format!("prctl PR_SET_VMA_ANON_NAME {addr:#x} {name:?}"),
    )?;
    Ok(())
}
