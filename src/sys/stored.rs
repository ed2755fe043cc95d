//! Files whose contents haul stores (memfds, deleted files), as haul reads and writes them
//! through its own copy of an fd (`pidfd_getfd`): their seals (`fcntl(2)` `F_GET_SEALS`,
//! `F_ADD_SEALS`, see memfd_create(2)) and which of their bytes hold data (`lseek(2)`
//! `SEEK_DATA`/`SEEK_HOLE`).

use std::os::fd::{AsRawFd, BorrowedFd};

use super::{io_err, last_err, Result};

/// The seals of `fd`: `fcntl(fd, F_GET_SEALS)`. 0 for a file that cannot be sealed (not
/// shmem: the call fails with `EINVAL`).
pub fn seals(fd: BorrowedFd<'_>) -> Result<u32> {
    // SAFETY: fcntl on a descriptor the caller keeps open, integer arguments only.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) {
            return Ok(0);
        }
        return Err(io_err("fcntl(F_GET_SEALS)", e));
    }
    Ok(r as u32)
}

/// Adds `seals` (`F_SEAL_*`) to the file of `fd`: `fcntl(fd, F_ADD_SEALS, seals)`.
pub fn add_seals(fd: BorrowedFd<'_>, seals: u32) -> Result<()> {
    // SAFETY: fcntl on a descriptor the caller keeps open, integer arguments only.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) };
    if r < 0 {
        return Err(last_err(format!("fcntl(F_ADD_SEALS, {seals:#x})")));
    }
    Ok(())
}

/// The byte ranges of the file of `fd` between `from` and `to` that hold data, in order
/// (`lseek` `SEEK_DATA`, then `SEEK_HOLE`): what is not listed is a hole. Moves `fd`'s
/// offset, so `fd` must be haul's own open file description, never the target's.
pub fn data_ranges(fd: BorrowedFd<'_>, from: u64, to: u64) -> Result<Vec<(u64, u64)>> {
    let seek = |at: u64, whence: libc::c_int| -> Result<Option<u64>> {
        // SAFETY: lseek on a descriptor the caller keeps open, integer arguments.
        let r = unsafe { libc::lseek(fd.as_raw_fd(), at as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // No data at or after `at`.
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(io_err(format!("lseek to {at}"), e));
        }
        Ok(Some(r as u64))
    };
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let Some(data) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        if data >= to {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(to).min(to);
        out.push((data, hole));
        at = hole;
    }
    Ok(out)
}

/// Opens `path` read-only (a `/proc/PID/map_files/` link: the mapped file itself).
pub fn open_read(path: &str) -> Result<std::os::fd::OwnedFd> {
    let f = std::fs::File::open(path).map_err(|e| io_err(format!("open {path}"), e))?;
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn holes_are_left_out_and_an_unsealable_file_has_no_seals() {
        let dir = std::env::temp_dir().join(format!("haul-stored-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("sparse");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.seek(std::io::SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
        let r = data_ranges(f.as_fd(), 0, (1 << 20) + 4096).unwrap();
        // A filesystem without SEEK_DATA support reports the whole file as data.
        assert!(
            r == vec![(0, 4096), (1 << 20, (1 << 20) + 4096)] || r == vec![(0, (1 << 20) + 4096)],
            "{r:?}"
        );
        let s = seals(f.as_fd()).unwrap();
        assert!(s == 0 || s == libc::F_SEAL_SEAL as u32, "{s:#x}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
