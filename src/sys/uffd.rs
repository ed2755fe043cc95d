//! userfaultfd(2) and its ioctls (see ioctl_userfaultfd(2) and
//! Documentation/admin-guide/mm/userfaultfd.rst).
//!
//! Two kinds of user:
//! - The lazy daemon serves missing-page faults with the `userfaultfd` crate (register, copy,
//!   zeropage, wake, events): [`Uffd::into_handler`] hands the fd over to it after the
//!   handshake.
//! - The uffd-wp dirty tracker (`track::uffdwp`) and the benchmarks use haul's own wrappers
//!   here, for what the crate (0.9) does not offer: the `UFFDIO_API` handshake on an fd the
//!   crate did not create (its `UffdBuilder` only handshakes on fds it opens itself; ours are
//!   taken from a target with `pidfd_getfd`), the `UFFD_FEATURE_WP_ASYNC` /
//!   `WP_UNPOPULATED` features, and write-protect registration and `UFFDIO_WRITEPROTECT`
//!   (behind a crate feature, and without the features async tracking needs).
//!
//! A [`Uffd`] is usually taken from a target with `pidfd_getfd` after an injected
//! `userfaultfd()` (DESIGN.md §4), so the wrappers work on any fd given to them. Numbers and
//! structs come from linux-raw-sys, except where noted.

use super::{check, last_err, Result};
use linux_raw_sys::general as k;
use linux_raw_sys::ioctl as io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// The `userfaultfd` syscall number, for injecting `userfaultfd()` into a target (libc's).
pub const SYS_USERFAULTFD: i64 = libc::SYS_userfaultfd;
/// `UFFD_USER_MODE_ONLY`: only user-mode faults are reported (allowed without privilege).
pub const UFFD_USER_MODE_ONLY: i32 = k::UFFD_USER_MODE_ONLY as i32;

pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = k::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64;
pub const UFFD_FEATURE_EVENT_FORK: u64 = k::UFFD_FEATURE_EVENT_FORK as u64;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = k::UFFD_FEATURE_EVENT_REMAP as u64;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = k::UFFD_FEATURE_EVENT_REMOVE as u64;
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = k::UFFD_FEATURE_MISSING_HUGETLBFS as u64;
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = k::UFFD_FEATURE_MISSING_SHMEM as u64;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = k::UFFD_FEATURE_EVENT_UNMAP as u64;
pub const UFFD_FEATURE_SIGBUS: u64 = k::UFFD_FEATURE_SIGBUS as u64;
pub const UFFD_FEATURE_THREAD_ID: u64 = k::UFFD_FEATURE_THREAD_ID as u64;
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = k::UFFD_FEATURE_EXACT_ADDRESS as u64;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = k::UFFD_FEATURE_WP_HUGETLBFS_SHMEM as u64;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = k::UFFD_FEATURE_WP_UNPOPULATED as u64;
pub const UFFD_FEATURE_POISON: u64 = k::UFFD_FEATURE_POISON as u64;
pub const UFFD_FEATURE_WP_ASYNC: u64 = k::UFFD_FEATURE_WP_ASYNC as u64;
pub const UFFD_FEATURE_MOVE: u64 = k::UFFD_FEATURE_MOVE as u64;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = k::UFFDIO_REGISTER_MODE_MISSING as u64;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const UFFDIO_REGISTER_MODE_WP: u64 = k::UFFDIO_REGISTER_MODE_WP as u64;
/// `UFFDIO_REGISTER_MODE_MINOR`.
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = k::UFFDIO_REGISTER_MODE_MINOR as u64;
/// `UFFDIO_WRITEPROTECT_MODE_WP`. Written here: the header defines it as `((__u64)1<<0)`,
/// which linux-raw-sys (and libc) do not carry.
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE` (`((__u64)1<<1)`, written here for the same reason).
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

/// `USERFAULTFD_IOC_NEW`: `_IO(0xAA, 0x00)` of linux/userfaultfd.h (linux-raw-sys has only the
/// type byte, `USERFAULTFD_IOC`); no direction and no size, so the number is `type << 8`.
pub const USERFAULTFD_IOC_NEW: u64 = (k::USERFAULTFD_IOC as u64) << 8;

/// A userfaultfd, for the handshake and for write-protect tracking (see the module doc).
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Uffd {
    /// Creates a userfaultfd in this process: `userfaultfd(flags)`, see userfaultfd(2).
    pub fn create(flags: i32) -> Result<Uffd> {
        // SAFETY: userfaultfd takes one integer argument and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags as libc::c_long) };
        let fd = check(fd, || format!("userfaultfd({flags:#x})"))?;
        // SAFETY: fd is a fresh descriptor returned by the kernel and owned by nobody else.
        Ok(Uffd {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        })
    }

    /// Creates a userfaultfd through the device: opens `/dev/userfaultfd` read-write and calls
    /// `ioctl(fd, USERFAULTFD_IOC_NEW, flags)` (userfaultfd(2), "/dev/userfaultfd"; Linux 6.1).
    /// Who may is decided by the device's file permissions, not by
    /// `vm.unprivileged_userfaultfd`.
    pub fn create_from_dev(flags: i32) -> Result<Uffd> {
        use std::os::unix::fs::OpenOptionsExt;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/userfaultfd")
            .map_err(|e| super::io_err("open /dev/userfaultfd", e))?;
        // SAFETY: USERFAULTFD_IOC_NEW takes its flags as an integer argument and returns a new
        // fd or -1; it reads and writes no memory of ours.
        let fd = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                USERFAULTFD_IOC_NEW as _,
                flags as libc::c_long,
            )
        };
        if fd < 0 {
            return Err(last_err(format!(
                "ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW, {flags:#x})"
            )));
        }
        // SAFETY: fd is a fresh descriptor returned by the kernel and owned by nobody else.
        Ok(Uffd {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        })
    }

    /// Wraps a userfaultfd received from elsewhere (e.g. `pidfd_getfd`).
    pub fn from_owned(fd: OwnedFd) -> Uffd {
        Uffd { fd }
    }

    /// Hands the fd over to the `userfaultfd` crate, which the lazy daemon serves faults with
    /// (after [`Uffd::api`]: the crate has no handshake for an fd it did not create).
    pub fn into_handler(self) -> userfaultfd::Uffd {
        let fd = self.fd.into_raw_fd();
        // SAFETY: `fd` is an open userfaultfd that `self` owned; `into_raw_fd` gave that
        // ownership up, so the crate's `Uffd` (which closes it on drop) is its only owner.
        unsafe { userfaultfd::Uffd::from_raw_fd(fd) }
    }

    fn ioctl<T>(&self, req: u32, arg: &mut T, what: impl FnOnce() -> String) -> Result<()> {
        // SAFETY: `arg` is a live, exclusively borrowed #[repr(C)] struct from linux-raw-sys of
        // the size encoded in `req` (each caller pairs the request with its struct).
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg as *mut T) };
        if r < 0 {
            return Err(last_err(what()));
        }
        Ok(())
    }

    /// `ioctl(UFFDIO_API)`: handshake asking for `features`; returns the features and ioctls
    /// bitmask the kernel granted, see ioctl_userfaultfd(2).
    pub fn api(&self, features: u64) -> Result<(u64, u64)> {
        let mut a = k::uffdio_api {
            api: u64::from(k::UFFD_API),
            features,
            ioctls: 0,
        };
        self.ioctl(io::UFFDIO_API, &mut a, || {
            format!("ioctl(UFFDIO_API, features {features:#x})")
        })?;
        Ok((a.features, a.ioctls))
    }

    /// `ioctl(UFFDIO_REGISTER)` of `[start, start+len)` with `mode` (MISSING/WP/MINOR bits);
    /// returns the ioctls available on the range.
    pub fn register(&self, start: u64, len: u64, mode: u64) -> Result<u64> {
        let mut r = k::uffdio_register {
            range: k::uffdio_range { start, len },
            mode,
            ioctls: 0,
        };
        self.ioctl(io::UFFDIO_REGISTER, &mut r, || {
            format!("ioctl(UFFDIO_REGISTER, {start:#x}+{len:#x}, mode {mode})")
        })?;
        Ok(r.ioctls)
    }

    /// `ioctl(UFFDIO_UNREGISTER)` of `[start, start+len)`.
    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        let mut r = k::uffdio_range { start, len };
        self.ioctl(io::UFFDIO_UNREGISTER, &mut r, || {
            format!("ioctl(UFFDIO_UNREGISTER, {start:#x}+{len:#x})")
        })
    }

    /// `ioctl(UFFDIO_WRITEPROTECT)`: `protect` sets or clears write protection on the range.
    pub fn writeprotect(&self, start: u64, len: u64, protect: bool, dontwake: bool) -> Result<()> {
        let mut w = k::uffdio_writeprotect {
            range: k::uffdio_range { start, len },
            mode: writeprotect_mode(protect, dontwake),
        };
        self.ioctl(io::UFFDIO_WRITEPROTECT, &mut w, || {
            format!("ioctl(UFFDIO_WRITEPROTECT, {start:#x}+{len:#x}, wp {protect})")
        })
    }
}

/// The `mode` of a `UFFDIO_WRITEPROTECT`.
fn writeprotect_mode(protect: bool, dontwake: bool) -> u64 {
    let mut mode = if protect {
        UFFDIO_WRITEPROTECT_MODE_WP
    } else {
        0
    };
    if dontwake {
        mode |= UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeprotect_mode_sets_wp_only_to_protect_and_dontwake_only_when_asked() {
        assert_eq!(writeprotect_mode(true, false), UFFDIO_WRITEPROTECT_MODE_WP);
        assert_eq!(writeprotect_mode(false, false), 0);
        assert_eq!(
            writeprotect_mode(false, true),
            UFFDIO_WRITEPROTECT_MODE_DONTWAKE
        );
        assert_eq!(writeprotect_mode(true, true), 3);
    }

    #[test]
    fn the_ioctl_numbers_encode_the_struct_sizes_they_are_paired_with() {
        // _IOC_SIZE is bits 16..30 of the request: a request paired with the wrong struct
        // would make the kernel read or write past it.
        let size = |req: u32| ((req >> 16) & 0x3fff) as usize;
        assert_eq!(size(io::UFFDIO_API), std::mem::size_of::<k::uffdio_api>());
        assert_eq!(
            size(io::UFFDIO_REGISTER),
            std::mem::size_of::<k::uffdio_register>()
        );
        assert_eq!(
            size(io::UFFDIO_UNREGISTER),
            std::mem::size_of::<k::uffdio_range>()
        );
        assert_eq!(
            size(io::UFFDIO_WRITEPROTECT),
            std::mem::size_of::<k::uffdio_writeprotect>()
        );
    }
}
