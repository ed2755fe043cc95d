//! `kcmp(2)`: whether two processes share a kernel object (their address space; the file an
//! epoll instance has registered).

use super::{io_err, Result};

/// `KCMP_VM` of `<linux/kcmp.h>`, written out here: neither libc nor linux-raw-sys has it.
const KCMP_VM: libc::c_long = 1;

/// `kcmp(pid1, pid2, KCMP_VM, 0, 0)`, see kcmp(2): whether the two processes share one address
/// space (a child cloned with `CLONE_VM` but not `CLONE_THREAD`, or a `vfork` child before its
/// exec). `None`: the kernel has no kcmp (`ENOSYS`, built without CONFIG_KCMP).
pub fn same_vm(pid1: i32, pid2: i32) -> Result<Option<bool>> {
    // SAFETY: kcmp with integer arguments only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(pid1),
            libc::c_long::from(pid2),
            KCMP_VM,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Ok(None);
        }
        return Err(io_err(format!("kcmp({pid1}, {pid2}, KCMP_VM)"), e));
    }
    Ok(Some(r == 0))
}

/// `KCMP_EPOLL_TFD` of `<linux/kcmp.h>` (neither libc nor linux-raw-sys has it).
const KCMP_EPOLL_TFD: libc::c_long = 7;

/// `kcmp(pid, pid, KCMP_EPOLL_TFD, fd, &{epfd, tfd, toff})`, see kcmp(2): whether fd `fd` of
/// `pid` is the very file registered in `pid`'s epoll `epfd` as the `toff`th registration
/// (0-based, in the kernel's order) made with fd number `tfd`. `Some(false)` also when `fd`
/// is not open (EBADF); `None`: cannot tell (no kcmp, or no such registration any more).
pub fn epoll_target_is(pid: i32, fd: i32, epfd: i32, tfd: i32, toff: u32) -> Result<Option<bool>> {
    // struct kcmp_epoll_slot { __u32 efd, tfd, toff; }
    let slot: [u32; 3] = [epfd as u32, tfd as u32, toff];
    // SAFETY: kcmp reads the 12-byte slot, which lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(pid),
            libc::c_long::from(pid),
            KCMP_EPOLL_TFD,
            libc::c_long::from(fd),
            slot.as_ptr() as libc::c_long,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EBADF) => Ok(Some(false)),
            Some(libc::ENOSYS | libc::ENOENT) => Ok(None),
            _ => Err(io_err(
                format!("kcmp({pid} fd {fd}, KCMP_EPOLL_TFD of epoll fd {epfd} target {tfd})"),
                e,
            )),
        };
    }
    Ok(Some(r == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_shares_its_address_space_with_itself_not_with_its_parent() {
        let me = std::process::id() as i32;
        let parent = std::os::unix::process::parent_id() as i32;
        match same_vm(me, me).unwrap() {
            // A kernel without kcmp: nothing to compare.
            None => eprintln!("SKIPPED: no kcmp on this kernel"),
            Some(same) => {
                assert!(same);
                assert_eq!(same_vm(me, parent).unwrap(), Some(false));
            }
        }
        assert!(same_vm(me, i32::MAX).is_err());
    }
}
