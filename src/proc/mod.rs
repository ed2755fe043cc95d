//! Typed parsing of `/proc/PID/*` (see proc(5)): maps and smaps VmFlags, stat, status, auxv,
//! fds and fdinfo, tasks and children, cwd, exe, limits, comm, cmdline.
//!
//! Everything here reads files: no raw syscalls. A process that vanished shows up as
//! [`ProcError::Io`] with `ENOENT`/`ESRCH` ([`ProcError::is_gone`]).

mod cgroup;
pub use cgroup::{cgroups, memcg_room_short, parse_cgroups};
mod fd;
mod maps;
mod observe;
mod stat;
mod status;
mod sysvipc;
mod tree;

pub use fd::{fd_target, fdinfo, fds, parse_fdinfo, FdInfo, FdLock};
pub use maps::{maps, maps_with_flags, parse_maps_line, parse_smaps, MapEntry};
pub use observe::{observe, observe_with, Observed};
pub use stat::{parse_stat, stat, task_stat, Stat};
pub use status::{parse_status, status, task_status, Status};
pub use sysvipc::{parse_sysvipc, sysvipc_rows};
pub use tree::{tree, tree_order, TreeMember};

use std::path::{Path, PathBuf};

/// Errors of the `proc` module.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A file did not have the format proc(5) documents.
    #[error("{path}: cannot parse {what}: {line:?}")]
    Parse {
        path: String,
        what: String,
        line: String,
    },
}

impl ProcError {
    /// True when the error says the process (or file) no longer exists.
    pub fn is_gone(&self) -> bool {
        match self {
            ProcError::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ESRCH)
                ) || source.kind() == std::io::ErrorKind::NotFound
            }
            ProcError::Parse { .. } => false,
        }
    }
}

/// Result of the `proc` module.
pub type Result<T, E = ProcError> = std::result::Result<T, E>;

/// `/proc/PID` (or `/proc/PID/task/TID` via [`task_dir`]).
pub fn pid_dir(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// `/proc/PID/task/TID`.
pub fn task_dir(pid: i32, tid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/task/{tid}"))
}

pub(crate) fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ProcError::Io {
        context: format!("read {}", path.display()),
        source: e,
    })
}

pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ProcError::Io {
        context: format!("read {}", path.display()),
        source: e,
    })
}

pub(crate) fn read_link(path: &Path) -> Result<String> {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| ProcError::Io {
            context: format!("readlink {}", path.display()),
            source: e,
        })
}

pub(crate) fn parse_err(path: &Path, what: &str, line: &str) -> ProcError {
    ProcError::Parse {
        path: path.display().to_string(),
        what: what.to_string(),
        line: line.to_string(),
    }
}

/// Thread ids of process `pid`, ascending (`/proc/PID/task/`).
pub fn tids(pid: i32) -> Result<Vec<i32>> {
    let dir = pid_dir(pid).join("task");
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

/// Every process id `/proc` lists, ascending (those that vanish meanwhile are simply absent).
pub fn pids() -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

/// The first (pid, fd) among processes not in `except` whose fd links to `target` (as
/// `readlink /proc/PID/fd/N` shows it, e.g. `pipe:[81723]`). Processes and fds that vanish or
/// cannot be read meanwhile are passed over.
pub fn fd_holder(target: &str, except: &[i32]) -> Option<(i32, i32)> {
    for pid in pids().into_iter().filter(|p| !except.contains(p)) {
        let Ok(rd) = std::fs::read_dir(pid_dir(pid).join("fd")) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else {
                continue;
            };
            if link.as_os_str() == target {
                if let Some(fd) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                    return Some((pid, fd));
                }
            }
        }
    }
    None
}

/// Child process ids of every thread of `pid` (`/proc/PID/task/*/children`).
pub fn children(pid: i32) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for tid in tids(pid)? {
        let path = task_dir(pid, tid).join("children");
        match read_string(&path) {
            Ok(s) => out.extend(s.split_whitespace().filter_map(|w| w.parse::<i32>().ok())),
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Resident pages of `pid` (the second field of `/proc/PID/statm`).
pub fn resident_pages(pid: i32) -> Result<u64> {
    let path = pid_dir(pid).join("statm");
    let s = read_string(&path)?;
    s.split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| ProcError::Parse {
            path: path.display().to_string(),
            what: "the resident page count".into(),
            line: s.clone(),
        })
}

/// `/proc/PID/cwd`.
pub fn cwd(pid: i32) -> Result<String> {
    read_link(&pid_dir(pid).join("cwd"))
}

/// `/proc/PID/exe`.
pub fn exe(pid: i32) -> Result<String> {
    read_link(&pid_dir(pid).join("exe"))
}

/// `/proc/PID/comm`, without the newline.
pub fn comm(pid: i32) -> Result<String> {
    Ok(read_string(&pid_dir(pid).join("comm"))?
        .trim_end_matches('\n')
        .to_string())
}

/// `/proc/PID/task/TID/comm`, without the newline.
pub fn task_comm(pid: i32, tid: i32) -> Result<String> {
    Ok(read_string(&task_dir(pid, tid).join("comm"))?
        .trim_end_matches('\n')
        .to_string())
}

/// `/proc/PID/cmdline` as raw bytes (NUL-separated arguments).
pub fn cmdline(pid: i32) -> Result<Vec<u8>> {
    read_bytes(&pid_dir(pid).join("cmdline"))
}

/// `/proc/PID/personality` (hexadecimal).
pub fn personality(pid: i32) -> Result<u32> {
    let path = pid_dir(pid).join("personality");
    let s = read_string(&path)?;
    u32::from_str_radix(s.trim(), 16).map_err(|_| parse_err(&path, "personality", s.trim()))
}

/// `/proc/PID/coredump_filter` (hexadecimal bits, core(5)).
pub fn coredump_filter(pid: i32) -> Result<u32> {
    let path = pid_dir(pid).join("coredump_filter");
    let s = read_string(&path)?;
    u32::from_str_radix(s.trim(), 16).map_err(|_| parse_err(&path, "coredump_filter", s.trim()))
}

/// `/proc/PID/oom_score_adj` (-1000..=1000).
pub fn oom_score_adj(pid: i32) -> Result<i32> {
    let path = pid_dir(pid).join("oom_score_adj");
    let s = read_string(&path)?;
    s.trim()
        .parse()
        .map_err(|_| parse_err(&path, "oom_score_adj", s.trim()))
}

/// `/proc/PID/loginuid`, the audit login uid (`u32::MAX`: unset).
pub fn loginuid(pid: i32) -> Result<u32> {
    let path = pid_dir(pid).join("loginuid");
    let s = read_string(&path)?;
    s.trim()
        .parse()
        .map_err(|_| parse_err(&path, "loginuid", s.trim()))
}

/// `/proc/PID/auxv` as (type, value) pairs, without the `AT_NULL` terminator.
pub fn auxv(pid: i32) -> Result<Vec<(u64, u64)>> {
    let path = pid_dir(pid).join("auxv");
    let b = read_bytes(&path)?;
    let mut out = Vec::new();
    for pair in b.chunks_exact(16) {
        let k = u64::from_ne_bytes(pair[..8].try_into().unwrap_or([0; 8]));
        let v = u64::from_ne_bytes(pair[8..].try_into().unwrap_or([0; 8]));
        if k == 0 {
            break;
        }
        out.push((k, v));
    }
    Ok(out)
}

/// One line of `/proc/PID/limits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    pub name: String,
    /// `u64::MAX` = unlimited.
    pub soft: u64,
    pub hard: u64,
}

/// The names `/proc/PID/limits` uses, in `RLIMIT_*` order.
const LIMIT_NAMES: [&str; 16] = [
    "Max cpu time",
    "Max file size",
    "Max data size",
    "Max stack size",
    "Max core file size",
    "Max resident set",
    "Max processes",
    "Max open files",
    "Max locked memory",
    "Max address space",
    "Max file locks",
    "Max pending signals",
    "Max msgqueue size",
    "Max nice priority",
    "Max realtime priority",
    "Max realtime timeout",
];

/// `/proc/PID/limits`, one entry per resource.
pub fn limits(pid: i32) -> Result<Vec<Limit>> {
    let path = pid_dir(pid).join("limits");
    let s = read_string(&path)?;
    let mut out = Vec::new();
    for line in s.lines().skip(1) {
        let Some((idx, name)) = LIMIT_NAMES
            .iter()
            .enumerate()
            .find(|(_, n)| line.starts_with(**n))
        else {
            continue;
        };
        let mut words = line[name.len()..].split_whitespace();
        let num = |w: Option<&str>| -> Result<u64> {
            match w {
                Some("unlimited") => Ok(u64::MAX),
                Some(v) => v.parse().map_err(|_| parse_err(&path, name, line)),
                None => Err(parse_err(&path, name, line)),
            }
        };
        let soft = num(words.next())?;
        let hard = num(words.next())?;
        out.push(Limit {
            resource: idx as u32,
            name: name.to_string(),
            soft,
            hard,
        });
    }
    Ok(out)
}

/// One entry of `/proc/PID/timers`: a POSIX timer as `timer_create(2)` made it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcTimer {
    pub id: i32,
    pub signo: i32,
    /// `sigev_value`.
    pub sigval: u64,
    /// `SIGEV_SIGNAL` (0), `SIGEV_NONE` (1), or `SIGEV_SIGNAL | SIGEV_THREAD_ID` (4).
    pub notify: i32,
    /// The process or (for `SIGEV_THREAD_ID`) thread it signals.
    pub target: i32,
    pub clock: i32,
}

/// `/proc/PID/timers` (CONFIG_CHECKPOINT_RESTORE): the process's POSIX timers, four lines
/// each: `ID: N`, `signal: SIGNO/SIGVAL_HEX`, `notify: KIND/pid.N` (or `tid.N`), `ClockID: N`.
pub fn posix_timers(pid: i32) -> Result<Vec<ProcTimer>> {
    let path = pid_dir(pid).join("timers");
    parse_timers(&path, &read_string(&path)?)
}

/// Parses the text of `/proc/PID/timers` read from `path`.
pub fn parse_timers(path: &Path, s: &str) -> Result<Vec<ProcTimer>> {
    let mut out: Vec<ProcTimer> = Vec::new();
    for line in s.lines() {
        let Some((k, v)) = line.split_once(": ") else {
            continue;
        };
        let bad = || parse_err(path, k, line);
        if k == "ID" {
            out.push(ProcTimer {
                id: v.trim().parse().map_err(|_| bad())?,
                ..ProcTimer::default()
            });
            continue;
        }
        let t = out.last_mut().ok_or_else(bad)?;
        match k {
            "signal" => {
                let (sig, val) = v.split_once('/').ok_or_else(bad)?;
                t.signo = sig.parse().map_err(|_| bad())?;
                t.sigval = hex_u64(path, k, val)?;
            }
            "notify" => {
                let (kind, who) = v.split_once('/').ok_or_else(bad)?;
                let (scope, n) = who.split_once('.').ok_or_else(bad)?;
                let base = match kind {
                    "signal" => 0,
                    "none" => 1,
                    "thread" => 2,
                    _ => return Err(bad()),
                };
                t.notify = if scope == "tid" { base | 4 } else { base };
                t.target = n.parse().map_err(|_| bad())?;
            }
            "ClockID" => t.clock = v.trim().parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    Ok(out)
}

/// Parses a hexadecimal u64 (signal and capability masks).
pub(crate) fn hex_u64(path: &Path, what: &str, v: &str) -> Result<u64> {
    u64::from_str_radix(v.trim(), 16).map_err(|_| parse_err(path, what, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn timers_are_parsed_with_their_signal_value_and_target() {
        let text = "ID: 3\nsignal: 34/000000000000002a\nnotify: signal/tid.77\nClockID: 1\n\
                    ID: 0\nsignal: 14/0000000000000000\nnotify: none/pid.70\nClockID: 0\n";
        let t = parse_timers(Path::new("timers"), text).unwrap();
        assert_eq!(
            t,
            vec![
                ProcTimer {
                    id: 3,
                    signo: 34,
                    sigval: 42,
                    notify: 4,
                    target: 77,
                    clock: 1
                },
                ProcTimer {
                    id: 0,
                    signo: 14,
                    sigval: 0,
                    notify: 1,
                    target: 70,
                    clock: 0
                },
            ]
        );
        assert!(parse_timers(Path::new("timers"), "signal: 1/0\n").is_err());
    }

    #[test]
    fn tids_include_the_main_thread() {
        let t = tids(me()).unwrap();
        assert!(t.contains(&me()));
    }

    #[test]
    fn auxv_has_page_size() {
        let a = auxv(me()).unwrap();
        assert!(a.contains(&(libc::AT_PAGESZ, 4096)), "{a:?}");
    }

    #[test]
    fn limits_match_getrlimit() {
        let l = limits(me()).unwrap();
        assert_eq!(l.len(), 16);
        let nofile = l
            .iter()
            .find(|x| x.resource == libc::RLIMIT_NOFILE)
            .unwrap();
        let (cur, max) = crate::sys::process::prlimit(me(), libc::RLIMIT_NOFILE).unwrap();
        assert_eq!((nofile.soft, nofile.hard), (cur, max));
    }

    #[test]
    fn exe_and_cwd_are_this_test() {
        assert_eq!(
            exe(me()).unwrap(),
            std::env::current_exe().unwrap().to_string_lossy()
        );
        assert_eq!(
            cwd(me()).unwrap(),
            std::env::current_dir().unwrap().to_string_lossy()
        );
    }

    #[test]
    fn nonexistent_pid_is_gone() {
        let e = comm(i32::MAX - 7).unwrap_err();
        assert!(e.is_gone(), "{e}");
    }
}
