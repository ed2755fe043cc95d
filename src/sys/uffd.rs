//! userfaultfd(2) and its ioctls (see ioctl_userfaultfd(2) and
//! Documentation/admin-guide/mm/userfaultfd.rst). Constants the crates lack are defined here.
//!
//! A [`Uffd`] is usually taken from a target with `pidfd_getfd` after an injected
//! `userfaultfd()` (DESIGN.md §4), so the wrappers work on any fd given to them.

use super::{check, last_err, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `userfaultfd` syscall number (x86_64).
pub const SYS_USERFAULTFD: i64 = 323;
/// `UFFD_USER_MODE_ONLY`: only user-mode faults are reported (allowed without privilege).
pub const UFFD_USER_MODE_ONLY: i32 = 1;
/// `UFFD_API`.
pub const UFFD_API: u64 = 0xAA;

pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 2;
/// `UFFDIO_REGISTER_MODE_MINOR`.
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 4;
/// `UFFDIO_COPY_MODE_DONTWAKE`.
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;
/// `UFFDIO_COPY_MODE_WP`.
pub const UFFDIO_COPY_MODE_WP: u64 = 2;
/// `UFFDIO_ZEROPAGE_MODE_DONTWAKE`.
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`.
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`.
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 2;

/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API: u64 = 0xc018_aa3f;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u64 = 0xc020_aa00;
/// `_IOR(0xAA, 0x01, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
pub const UFFDIO_WAKE: u64 = 0x8010_aa02;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
pub const UFFDIO_COPY: u64 = 0xc028_aa03;
/// `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
pub const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
/// `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
pub const UFFDIO_WRITEPROTECT: u64 = 0xc018_aa06;

/// uffd_msg events.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;
/// `UFFD_PAGEFAULT_FLAG_WRITE`, `UFFD_PAGEFAULT_FLAG_WP`.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy` (see ioctl_userfaultfd(2)).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct UffdioCopy {
    pub(super) dst: u64,
    pub(super) src: u64,
    pub(super) len: u64,
    pub(super) mode: u64,
    pub(super) copy: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdioZeropage>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioWriteprotect>() == 24);

/// `struct uffd_msg` (32 bytes) as read from a userfaultfd.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UffdMsg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    /// The event's union, as three u64 (pagefault: flags, address, ptid in the low 32 bits).
    pub arg: [u64; 3],
}

const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

/// A userfaultfd.
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
        let fd = unsafe { libc::syscall(SYS_USERFAULTFD, flags as libc::c_long) };
        let fd = check(fd, || format!("userfaultfd({flags:#x})"))?;
        // SAFETY: fd is a fresh descriptor returned by the kernel and owned by nobody else.
        Ok(Uffd {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        })
    }

    /// Wraps a userfaultfd received from elsewhere (e.g. `pidfd_getfd`).
    pub fn from_owned(fd: OwnedFd) -> Uffd {
        Uffd { fd }
    }

    fn ioctl<T>(&self, req: u64, arg: &mut T, what: impl FnOnce() -> String) -> Result<()> {
        // SAFETY: `arg` is a live, exclusively borrowed #[repr(C)] struct of the size encoded in
        // `req` (each caller pairs the request with its struct; sizes are asserted above).
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg as *mut T) };
        if r < 0 {
            return Err(last_err(what()));
        }
        Ok(())
    }

    /// `ioctl(UFFDIO_API)`: handshake asking for `features`; returns the features and ioctls
    /// bitmask the kernel granted, see ioctl_userfaultfd(2).
    pub fn api(&self, features: u64) -> Result<(u64, u64)> {
        let mut a = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_API, &mut a, || {
            format!("ioctl(UFFDIO_API, features {features:#x})")
        })?;
        Ok((a.features, a.ioctls))
    }

    /// `ioctl(UFFDIO_REGISTER)` of `[start, start+len)` with `mode` (MISSING/WP/MINOR bits);
    /// returns the ioctls available on the range.
    pub fn register(&self, start: u64, len: u64, mode: u64) -> Result<u64> {
        let mut r = UffdioRegister {
            range: UffdioRange { start, len },
            mode,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_REGISTER, &mut r, || {
            format!("ioctl(UFFDIO_REGISTER, {start:#x}+{len:#x}, mode {mode})")
        })?;
        Ok(r.ioctls)
    }

    /// `ioctl(UFFDIO_UNREGISTER)` of `[start, start+len)`.
    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        let mut r = UffdioRange { start, len };
        self.ioctl(UFFDIO_UNREGISTER, &mut r, || {
            format!("ioctl(UFFDIO_UNREGISTER, {start:#x}+{len:#x})")
        })
    }

    /// `ioctl(UFFDIO_WRITEPROTECT)`: `protect` sets or clears write protection on the range.
    pub fn writeprotect(&self, start: u64, len: u64, protect: bool, dontwake: bool) -> Result<()> {
        let mut mode = if protect {
            UFFDIO_WRITEPROTECT_MODE_WP
        } else {
            0
        };
        if dontwake {
            mode |= UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
        }
        let mut w = UffdioWriteprotect {
            range: UffdioRange { start, len },
            mode,
        };
        self.ioctl(UFFDIO_WRITEPROTECT, &mut w, || {
            format!("ioctl(UFFDIO_WRITEPROTECT, {start:#x}+{len:#x}, wp {protect})")
        })
    }

    /// `ioctl(UFFDIO_COPY)`: atomically fills `[dst, dst+data.len())` of the registered process
    /// with `data`. Returns the bytes copied; `EEXIST` means the page is there already and
    /// `EAGAIN` that an event must be read first (DESIGN.md §4).
    pub fn copy(&self, dst: u64, data: &[u8], mode: u64) -> Result<u64> {
        let mut c = UffdioCopy {
            dst,
            src: data.as_ptr() as u64,
            len: data.len() as u64,
            mode,
            copy: 0,
        };
        self.ioctl(UFFDIO_COPY, &mut c, || {
            format!("ioctl(UFFDIO_COPY, {dst:#x}, {} bytes)", data.len())
        })?;
        Ok(c.copy.max(0) as u64)
    }

    /// `ioctl(UFFDIO_ZEROPAGE)`: maps zero pages over `[start, start+len)`.
    pub fn zeropage(&self, start: u64, len: u64, mode: u64) -> Result<u64> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start, len },
            mode,
            zeropage: 0,
        };
        self.ioctl(UFFDIO_ZEROPAGE, &mut z, || {
            format!("ioctl(UFFDIO_ZEROPAGE, {start:#x}+{len:#x})")
        })?;
        Ok(z.zeropage.max(0) as u64)
    }

    /// `ioctl(UFFDIO_WAKE)`: wakes threads waiting on faults in the range.
    pub fn wake(&self, start: u64, len: u64) -> Result<()> {
        let mut r = UffdioRange { start, len };
        self.ioctl(UFFDIO_WAKE, &mut r, || {
            format!("ioctl(UFFDIO_WAKE, {start:#x}+{len:#x})")
        })
    }

    /// Reads one message with read(2); `Ok(None)` when none is pending (`EAGAIN` on an
    /// `O_NONBLOCK` uffd).
    pub fn read_msg(&self) -> Result<Option<UffdMsg>> {
        let mut m = UffdMsg::default();
        // SAFETY: reads at most size_of::<UffdMsg>() bytes into `m`, a live #[repr(C)] POD.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut m as *mut UffdMsg).cast(),
                std::mem::size_of::<UffdMsg>(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(None);
            }
            return Err(super::io_err("read(userfaultfd)", e));
        }
        Ok((n as usize == std::mem::size_of::<UffdMsg>()).then_some(m))
    }
}
