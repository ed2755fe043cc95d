//! `/proc/PID/stat` (fields numbered as in proc_pid_stat(5)).

use super::{parse_err, pid_dir, read_string, task_dir, Result};
use std::path::Path;

/// The fields of `/proc/PID/stat` haul uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// (1)
    pub pid: i32,
    /// (2) without the parentheses.
    pub comm: String,
    /// (3) R, S, D, T, t, Z, X, I, ...
    pub state: char,
    /// (4)
    pub ppid: i32,
    /// (5)
    pub pgrp: i32,
    /// (6)
    pub session: i32,
    /// (7) its controlling terminal's device number (0: none).
    pub tty_nr: u64,
    /// (8) the foreground process group of that terminal (-1: none).
    pub tpgid: i32,
    /// (9) `PF_*` flags.
    pub flags: u64,
    /// (19) -20..19.
    pub nice: i32,
    /// (20)
    pub num_threads: i64,
    /// (22) clock ticks after boot.
    pub starttime: u64,
    /// (26) (27) (28)
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    /// (45)–(51)
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// (38) the signal its parent gets when it exits (SIGCHLD unless cloned with another).
    pub exit_signal: i32,
    /// (40) real-time priority (0 for the normal policies).
    pub rt_priority: u32,
    /// (41) `SCHED_*` policy.
    pub policy: u32,
    /// (52) for a zombie, its wait status as `wait(2)` encodes it; 0 for a living process.
    pub exit_code: i64,
}

impl Stat {
    /// A kernel thread (`PF_KTHREAD`).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & crate::sys::process::PF_KTHREAD != 0
    }
    /// Exiting (`PF_EXITING`): killed or exiting, not yet a zombie.
    pub fn is_exiting(&self) -> bool {
        self.flags & crate::sys::process::PF_EXITING != 0
    }
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// `/proc/PID/stat`.
pub fn stat(pid: i32) -> Result<Stat> {
    let path = pid_dir(pid).join("stat");
    parse_stat(&path, &read_string(&path)?)
}

/// `/proc/PID/task/TID/stat`.
pub fn task_stat(pid: i32, tid: i32) -> Result<Stat> {
    let path = task_dir(pid, tid).join("stat");
    parse_stat(&path, &read_string(&path)?)
}

/// Parses the text of a stat file. The comm may contain spaces and parentheses: it runs from
/// the first `(` to the last `)`.
pub fn parse_stat(path: &Path, s: &str) -> Result<Stat> {
    let line = s.trim_end();
    let bad = || parse_err(path, "stat", line);
    let open = line.find('(').ok_or_else(bad)?;
    let close = line.rfind(')').ok_or_else(bad)?;
    let pid: i32 = line[..open].trim().parse().map_err(|_| bad())?;
    let comm = line[open + 1..close].to_string();
    // Field 3 onwards; index 0 here is field 3.
    let f: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let num = |n: usize| -> Result<i64> {
        let v = f.get(n - 3).ok_or_else(bad)?;
        v.parse::<i64>()
            .or_else(|_| v.parse::<u64>().map(|u| u as i64))
            .map_err(|_| bad())
    };
    let unum = |n: usize| -> Result<u64> { num(n).map(|v| v as u64) };
    // Fields 45-52 exist since Linux 3.3/3.5; a short line means an old kernel: zero them.
    let opt = |n: usize| -> u64 { unum(n).unwrap_or(0) };
    Ok(Stat {
        pid,
        comm,
        state: f.first().and_then(|s| s.chars().next()).ok_or_else(bad)?,
        ppid: num(4)? as i32,
        pgrp: num(5)? as i32,
        session: num(6)? as i32,
        tty_nr: unum(7)? & 0xffff_ffff,
        tpgid: num(8)? as i32,
        flags: unum(9)?,
        nice: num(19)? as i32,
        num_threads: num(20)?,
        starttime: unum(22)?,
        start_code: unum(26)?,
        end_code: unum(27)?,
        start_stack: unum(28)?,
        start_data: opt(45),
        end_data: opt(46),
        start_brk: opt(47),
        arg_start: opt(48),
        arg_end: opt(49),
        env_start: opt(50),
        env_end: opt(51),
        exit_signal: num(38).unwrap_or(libc::SIGCHLD as i64) as i32,
        rt_priority: opt(40) as u32,
        policy: opt(41) as u32,
        exit_code: num(52).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_with_spaces_and_parens_parses() {
        let s = "42 (a (b) c) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0 \
                 18446744073709551615 4194304 4198400 140737488350000 0 0 0 0 0 0 0 0 0 17 1 \
                 0 0 0 0 0 6000000 6001000 7000000 140737488351000 140737488351100 \
                 140737488351100 140737488351200 0\n";
        let st = parse_stat(Path::new("stat"), s).unwrap();
        assert_eq!(st.pid, 42);
        assert_eq!(st.comm, "a (b) c");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.start_code, 4194304);
        assert_eq!(st.end_code, 4198400);
        assert_eq!(st.start_data, 6000000);
        assert_eq!(st.start_brk, 7000000);
        assert_eq!(st.env_end, 140737488351200);
        assert_eq!(st.exit_signal, 17);
    }

    #[test]
    fn zombies_and_exiting_processes_are_told_from_the_line() {
        let line = |state: char, flags: u64| {
            format!("7 (w) {state} 1 7 7 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0 0 0 0 0\n")
        };
        let z = parse_stat(Path::new("stat"), &line('Z', 0)).unwrap();
        assert!(z.is_zombie() && !z.is_exiting());
        let pf_exiting = crate::sys::process::PF_EXITING;
        let x = parse_stat(Path::new("stat"), &line('R', pf_exiting)).unwrap();
        assert!(x.is_exiting() && !x.is_zombie());
        // An old kernel's short line: the fields it lacks read as zero.
        assert_eq!((x.start_data, x.env_end, x.exit_code), (0, 0, 0));
        assert!(parse_stat(Path::new("stat"), "7 w R 1").is_err());
        assert!(parse_stat(Path::new("stat"), "7 (w) R").is_err());
    }

    #[test]
    fn own_stat_is_running_with_our_parent() {
        let st = stat(std::process::id() as i32).unwrap();
        assert_eq!(st.ppid as u32, std::os::unix::process::parent_id());
        assert!("RS".contains(st.state), "{st:?}");
        assert!(!st.is_kernel_thread());
        assert!(st.start_code > 0 && st.end_code > st.start_code);
        assert!(st.arg_start > 0 && st.arg_end > st.arg_start);
    }

    #[test]
    fn kthreadd_is_a_kernel_thread() {
        // On a host, pid 2 is kthreadd; inside a pid namespace it may be anything or nothing.
        if let Ok(st) = stat(2) {
            if st.comm == "kthreadd" {
                assert!(st.is_kernel_thread(), "{st:?}");
            }
        }
    }
}
