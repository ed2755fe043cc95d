//! `/proc/PID/fd/` and `/proc/PID/fdinfo/`.

use super::{parse_err, pid_dir, read_link, read_string, ProcError, Result};

/// Open fds of process `pid`, ascending.
pub fn fds(pid: i32) -> Result<Vec<i32>> {
    let dir = pid_dir(pid).join("fd");
    let rd = std::fs::read_dir(&dir).map_err(|e| ProcError::Io {
        context: format!("list {}", dir.display()),
        source: e,
    })?;
    let mut out: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The link text of `/proc/PID/fd/FD` (`/path`, `socket:[123]`, `pipe:[45]`,
/// `anon_inode:[eventfd]`, ...).
pub fn fd_target(pid: i32, fd: i32) -> Result<String> {
    read_link(&pid_dir(pid).join("fd").join(fd.to_string()))
}

/// The first lines of `/proc/PID/fdinfo/FD`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// `open(2)` flags (octal in the file), including `O_CLOEXEC`.
    pub flags: u32,
    pub mnt_id: u64,
    pub ino: Option<u64>,
    /// The `lock:` lines: file locks held through this fd.
    pub locks: Vec<FdLock>,
    /// Every other `key: value` line (the ones eventfd, timerfd, signalfd, ... add).
    pub other: Vec<(String, String)>,
}

impl FdInfo {
    /// The value of line `key` among [`other`](Self::other).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.other
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One `lock:` line of fdinfo, e.g. `lock:\t1: POSIX  ADVISORY  WRITE 3671 fe:00:1046 5 14`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdLock {
    /// `FLOCK`, `POSIX`, `OFDLCK`, `LEASE`, ...
    pub kind: String,
    /// `ADVISORY` or `MANDATORY`.
    pub mode: String,
    /// `READ` or `WRITE` (or a lease's state).
    pub access: String,
    /// First byte locked.
    pub start: u64,
    /// Last byte locked (`None`: to the end of the file, `EOF`).
    pub end: Option<u64>,
}

/// Parses the part of a `lock:` line after its ordinal (`1: `).
fn parse_lock(path: &std::path::Path, line: &str, v: &str) -> Result<FdLock> {
    let bad = || parse_err(path, "lock", line);
    let rest = v.split_once(':').ok_or_else(bad)?.1;
    let w: Vec<&str> = rest.split_whitespace().collect();
    // kind, mode, access, pid, dev:ino, start, end
    if w.len() < 7 {
        return Err(bad());
    }
    Ok(FdLock {
        kind: w[0].to_string(),
        mode: w[1].to_string(),
        access: w[2].to_string(),
        start: w[5].parse().map_err(|_| bad())?,
        end: match w[6] {
            "EOF" => None,
            e => Some(e.parse().map_err(|_| bad())?),
        },
    })
}

/// `/proc/PID/fdinfo/FD`.
pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    let path = pid_dir(pid).join("fdinfo").join(fd.to_string());
    let s = read_string(&path)?;
    parse_fdinfo(&path, &s)
}

/// Parses the text of an fdinfo file (`path` is only for the error).
pub fn parse_fdinfo(path: &std::path::Path, s: &str) -> Result<FdInfo> {
    let mut fi = FdInfo::default();
    for line in s.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => fi.pos = v.parse().map_err(|_| parse_err(path, k, line))?,
            "flags" => {
                fi.flags = u32::from_str_radix(v, 8).map_err(|_| parse_err(path, k, line))?
            }
            "mnt_id" => fi.mnt_id = v.parse().map_err(|_| parse_err(path, k, line))?,
            "ino" => fi.ino = v.parse().ok(),
            "lock" => fi.locks.push(parse_lock(path, line, v)?),
            _ => fi.other.push((k.to_string(), v.to_string())),
        }
    }
    Ok(fi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn fdinfo_shows_offset_and_flags_of_an_open_file() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 1000]).unwrap();
        f.seek(SeekFrom::Start(123)).unwrap();
        let me = std::process::id() as i32;
        let fd = f.as_raw_fd();
        assert!(fds(me).unwrap().contains(&fd));
        let fi = fdinfo(me, fd).unwrap();
        assert_eq!(fi.pos, 123);
        assert_eq!(fi.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);
        assert_ne!(fi.flags & libc::O_CLOEXEC as u32, 0);
        assert!(fd_target(me, fd).unwrap().starts_with('/'));
    }
}
