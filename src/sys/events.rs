//! What haul asks the kernel itself about epoll and inotify instances: a watched inode opened
//! from its file handle (`open_by_handle_at`), and the bytes of events an inotify instance
//! holds unread (`FIONREAD`).

use super::{io_err, Result, SysError};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `open_by_handle_at(mount, handle, O_PATH | O_CLOEXEC)`, see open_by_handle_at(2): the
/// inode a file handle (of type `handle_type`, bytes `handle`, as fdinfo shows an inotify
/// watch's) names on the filesystem `mount` is on. Needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(mount: BorrowedFd<'_>, handle_type: i32, handle: &[u8]) -> Result<OwnedFd> {
    type H = libc::file_handle;
    let head = std::mem::size_of::<H>();
    // u64 words: the struct is 4-aligned, the buffer at least that.
    let mut buf = vec![0u64; (head + handle.len()).div_ceil(8)];
    // SAFETY: `buf` is `head + handle.len()` bytes or more, aligned for `file_handle`.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), head + handle.len())
    };
    let at = std::mem::offset_of!(H, handle_bytes);
    bytes[at..at + 4].copy_from_slice(&(handle.len() as u32).to_ne_bytes());
    let at = std::mem::offset_of!(H, handle_type);
    bytes[at..at + 4].copy_from_slice(&handle_type.to_ne_bytes());
    bytes[head..].copy_from_slice(handle);
    // SAFETY: the handle buffer is laid out as `struct file_handle` with its bytes after it
    // and outlives the call; the result is a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            libc::c_long::from(mount.as_raw_fd()),
            buf.as_mut_ptr() as libc::c_long,
            libc::c_long::from(libc::O_PATH | libc::O_CLOEXEC),
        )
    };
    if fd < 0 {
        return Err(io_err(
            format!("open_by_handle_at (type {handle_type:#x})"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a new fd, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `ioctl(fd, FIONREAD, &n)`: the bytes waiting to be read (for an inotify instance, the
/// events queued).
pub fn bytes_ready(fd: BorrowedFd<'_>) -> Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int at the pointer, which lives across the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        return Err(io_err("ioctl FIONREAD", std::io::Error::last_os_error()));
    }
    u64::try_from(n).map_err(|_| SysError::Invalid(format!("FIONREAD gave {n}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_handle_opens_the_inode_it_names_and_fionread_counts_a_pipe() {
        // The handle of /tmp from name_to_handle_at, as fdinfo would show it.
        let mut buf = vec![0u64; 16];
        let p = std::ffi::CString::new("/tmp").unwrap();
        let mut mnt: libc::c_int = 0;
        // SAFETY: a 128-byte handle buffer with handle_bytes set to its room.
        let r = unsafe {
            let h = buf.as_mut_ptr().cast::<libc::file_handle>();
            (*h).handle_bytes = 120;
            libc::syscall(
                libc::SYS_name_to_handle_at,
                libc::AT_FDCWD as libc::c_long,
                p.as_ptr() as libc::c_long,
                h as libc::c_long,
                &mut mnt as *mut libc::c_int as libc::c_long,
                0 as libc::c_long,
            )
        };
        if r < 0 {
            eprintln!("SKIPPED: no file handles for /tmp here");
            return;
        }
        // SAFETY: the kernel filled the header.
        let (n, ty) = unsafe {
            let h = buf.as_ptr().cast::<libc::file_handle>();
            ((*h).handle_bytes as usize, (*h).handle_type)
        };
        // SAFETY: n bytes of handle follow the 8-byte header.
        let handle =
            unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>().add(8), n) }.to_vec();
        // Any fd on the filesystem serves as the mount.
        let mount = std::fs::File::open("/tmp").unwrap();
        match open_by_handle(mount.as_fd(), ty, &handle) {
            Ok(fd) => {
                let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                assert_eq!(link.unwrap(), std::path::Path::new("/tmp"));
            }
            // Not root (CAP_DAC_READ_SEARCH).
            Err(e) => eprintln!("SKIPPED: open_by_handle_at: {e}"),
        }
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"abc").unwrap();
        assert_eq!(bytes_ready(r.as_fd()).unwrap(), 3);
    }
}
