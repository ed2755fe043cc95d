//! The observable state of a process: what `/proc` shows of it, as named fields, so that a
//! restore can be compared with its dump (`haul restore --verify state`, `[verify] state`).
//!
//! Fields are named `thread N KEY` for what the kernel keeps per thread (N: the thread's index,
//! the main thread first, then the others by ascending tid, so that a restore under new tids
//! compares the same threads), and plainly for the rest. Values are text, so that a difference
//! reads as `/proc` shows it. Ids that name the process itself (pid, tids, the inode of a pipe)
//! are not recorded, or recorded relative to the process (`self`, `pipe #1`): what is compared
//! is what the program sees of its own state, not which number the kernel gave it.

use super::{pid_dir, read_bytes, read_link, read_string, task_dir, ProcError, Result};
use std::collections::BTreeMap;

/// A snapshot of what `/proc` shows of a process (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Field name → value.
    pub fields: BTreeMap<String, String>,
    /// The tid of each thread index (index 0 is the main thread).
    pub tids: Vec<i32>,
}

/// The lines of `/proc/PID/task/TID/status` that are state of the thread or its process.
/// Left out, with why: `Name` (read from `comm`), `State` and `TracerPid` (the snapshot is
/// taken under ptrace, by a different tracer on each side), `Tgid`/`Pid`/`PPid`/`NSpid`/
/// `NStgid`/`NSpgid`/`NSsid` (ids the kernel hands out; the restored process is re-parented to
/// init by design), memory figures (`Vm*`, `Rss*`, `Hugetlb*`: usage, not state),
/// `SigQ` (counts every process of the user), context switches, `Kthread`, `CoreDumping`,
/// `FDSize` (grows with the fds opened during the restore), `Cpus_allowed` and
/// `Mems_allowed` (the same as their `_list` lines).
const STATUS_KEYS: &[&str] = &[
    "Umask",
    "Uid",
    "Gid",
    "Groups",
    "SigPnd",
    "SigBlk",
    "SigIgn",
    "SigCgt",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "Speculation_Store_Bypass",
    "SpeculationIndirectBranch",
    "Cpus_allowed_list",
    "Mems_allowed_list",
    "THP_enabled",
    "untag_mask",
    "x86_Thread_features",
    "x86_Thread_features_locked",
];

/// VmFlags of smaps left out: `um`, `uw`, `ui` say a userfaultfd is registered on the range,
/// which is haul's own doing on both sides (the pre-copy tracker at the dump, the lazy daemon
/// at the restore); a process's own userfaultfd is refused by the dump.
const IGNORED_VM_FLAGS: &[&str] = &["um", "uw", "ui"];

/// fdinfo lines compared besides pos, flags and mnt_id: the state of eventfds and
/// signalfds, and a timerfd's clock and period. Left out: `eventfd-id` (a kernel address),
/// a timerfd's `ticks` and `it_value` (they move with time), `ino` (the target names the
/// file; a pipe's inode is new by nature).
const FDINFO_KEYS: &[&str] = &[
    "eventfd-count",
    "eventfd-semaphore",
    "clockid",
    "settime flags",
    "it_interval",
    "sigmask",
];

/// Reads the observable state of process `pid`. Meant for a process that is stopped (frozen
/// by the dump, or not yet running after a restore): it reads `/proc` only.
pub fn observe(pid: i32) -> Result<Observed> {
    observe_with(pid, None)
}

/// [`observe`], taking its mappings (with their VmFlags) from `maps` where the caller has just
/// read them: reading smaps walks the page tables, which under a dump's freeze is frozen time.
pub fn observe_with(pid: i32, maps: Option<Vec<super::MapEntry>>) -> Result<Observed> {
    let mut o = Observed::default();
    let mut tids = super::tids(pid)?;
    tids.retain(|&t| t != pid);
    tids.insert(0, pid);
    let f = &mut o.fields;
    for (i, &tid) in tids.iter().enumerate() {
        let dir = task_dir(pid, tid);
        let status = read_string(&dir.join("status"))?;
        for (k, v) in status_lines(&status) {
            if STATUS_KEYS.contains(&k) {
                f.insert(format!("thread {i} {k}"), words(v));
            }
        }
        let comm = read_string(&dir.join("comm"))?;
        f.insert(
            format!("thread {i} comm"),
            comm.trim_end_matches('\n').into(),
        );
        let st = super::task_stat(pid, tid)?;
        f.insert(
            format!("thread {i} sched"),
            format!(
                "policy {} nice {} rt_priority {}",
                st.policy, st.nice, st.rt_priority
            ),
        );
    }
    let dir = pid_dir(pid);
    let status = read_string(&dir.join("status"))?;
    for (k, v) in status_lines(&status) {
        if k == "ShdPnd" || k == "Threads" {
            f.insert(k.to_string(), words(v));
        }
    }
    for name in [
        "oom_score_adj",
        "loginuid",
        "timerslack_ns",
        "personality",
        "coredump_filter",
    ] {
        let v = read_string(&dir.join(name))?;
        f.insert(name.to_string(), v.trim().to_string());
    }
    for l in read_string(&dir.join("cgroup"))?.lines() {
        // "4:memory:/a/b": the hierarchy and its controllers name the field.
        if let Some((h, path)) = l.rsplit_once(':') {
            f.insert(format!("cgroup {h}"), path.to_string());
        }
    }
    for name in ["cwd", "root", "exe"] {
        f.insert(name.to_string(), read_link(&dir.join(name))?);
    }
    for name in ["cmdline", "environ"] {
        f.insert(name.to_string(), nul_text(&read_bytes(&dir.join(name))?));
    }
    let auxv = super::auxv(pid)?;
    f.insert(
        "auxv".into(),
        auxv.iter()
            .map(|(k, v)| format!("{k}={v:#x}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    for l in read_string(&dir.join("limits"))?.lines().skip(1) {
        // "Max open files            1024                 4096                 files"
        let name = l.get(..26).unwrap_or(l).trim();
        let rest = l.get(26..).unwrap_or("").split_whitespace();
        f.insert(format!("limit {name}"), rest.collect::<Vec<_>>().join(" "));
    }
    observe_stat(pid, f)?;
    observe_ns(pid, f)?;
    // Who owns /proc/PID tells whether the process is dumpable (root owns it when not).
    let meta = std::fs::metadata(&dir).map_err(|e| ProcError::Io {
        context: format!("stat {}", dir.display()),
        source: e,
    })?;
    {
        use std::os::unix::fs::MetadataExt;
        f.insert(
            "proc owner".into(),
            format!("{}:{}", meta.uid(), meta.gid()),
        );
    }
    let maps = match maps {
        Some(m) => m,
        None => super::maps_with_flags(pid)?,
    };
    for m in merged(maps) {
        let flags: Vec<&str> = m
            .vm_flags
            .iter()
            .map(String::as_str)
            .filter(|x| !IGNORED_VM_FLAGS.contains(x))
            .collect();
        f.insert(
            format!("map {:x}-{:x}", m.start, m.end),
            format!(
                "{}{}{}{} {:x} {} [{}]",
                if m.read { 'r' } else { '-' },
                if m.write { 'w' } else { '-' },
                if m.exec { 'x' } else { '-' },
                if m.shared { 's' } else { 'p' },
                m.offset,
                m.path,
                flags.join(" ")
            ),
        );
    }
    observe_fds(pid, f)?;
    o.tids = tids;
    Ok(o)
}

/// The mappings with each run of adjacent ones that differ in nothing (permissions, sharing,
/// path, flags, and for a file contiguous offsets) shown as one. The kernel merges such
/// neighbours when they are mapped afresh, as a restore maps them, while in the original they
/// may be apart for reasons of history a program cannot see (different anon_vma): the layout
/// and attributes of every byte are still compared.
fn merged(maps: Vec<super::MapEntry>) -> Vec<super::MapEntry> {
    let mut out: Vec<super::MapEntry> = Vec::with_capacity(maps.len());
    for m in maps {
        if let Some(prev) = out.last_mut() {
            let same = prev.end == m.start
                && prev.prot() == m.prot()
                && prev.shared == m.shared
                && prev.path == m.path
                && prev.vm_flags == m.vm_flags
                && (m.path.is_empty() || prev.offset + prev.len() == m.offset);
            if same {
                prev.end = m.end;
                continue;
            }
        }
        out.push(m);
    }
    out
}

/// The `key: value` lines of a status file, values trimmed.
fn status_lines(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
}

/// A status value with its tabs and runs of spaces as single spaces (`Uid: 0\t0\t0\t0`).
fn words(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// NUL-separated text (cmdline, environ) shown with `\0` for each NUL.
fn nul_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\0', "\\0")
}

/// The process group and session (`self` when they are the process's own id, so that a
/// restore under a new PID that keeps a process that leads its group compares equal), the
/// controlling terminal, and the mm fields `PR_SET_MM_MAP` restores.
fn observe_stat(pid: i32, f: &mut BTreeMap<String, String>) -> Result<()> {
    let st = super::stat(pid)?;
    let rel = |id: i32| {
        if id == pid {
            "self".to_string()
        } else {
            id.to_string()
        }
    };
    f.insert("pgrp".into(), rel(st.pgrp));
    f.insert("session".into(), rel(st.session));
    f.insert(
        "mm".into(),
        format!(
            "code {:#x}-{:#x} data {:#x}-{:#x} start_brk {:#x} stack {:#x} args {:#x}-{:#x} \
             env {:#x}-{:#x}",
            st.start_code,
            st.end_code,
            st.start_data,
            st.end_data,
            st.start_brk,
            st.start_stack,
            st.arg_start,
            st.arg_end,
            st.env_start,
            st.env_end
        ),
    );
    // tty_nr is field 7; Stat does not keep it.
    let path = pid_dir(pid).join("stat");
    let s = read_string(&path)?;
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let tty = after.split_whitespace().nth(4).unwrap_or("?");
    f.insert("tty_nr".into(), tty.to_string());
    Ok(())
}

/// The namespaces (`ns NAME` → `mnt:[4026531841]`).
fn observe_ns(pid: i32, f: &mut BTreeMap<String, String>) -> Result<()> {
    let dir = pid_dir(pid).join("ns");
    let rd = std::fs::read_dir(&dir).map_err(|e| ProcError::Io {
        context: format!("list {}", dir.display()),
        source: e,
    })?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        f.insert(format!("ns {name}"), read_link(&e.path())?);
    }
    Ok(())
}

/// Each fd: its target (a pipe or socket named by order of first appearance, `pipe #1`, as its
/// inode is new after a restore), flags, offset, mount id, locks and the [`FDINFO_KEYS`].
fn observe_fds(pid: i32, f: &mut BTreeMap<String, String>) -> Result<()> {
    let mut objects: BTreeMap<String, usize> = BTreeMap::new();
    for fd in super::fds(pid)? {
        let target = super::fd_target(pid, fd)?;
        let shown = match target.split_once(":[") {
            Some((kind @ ("pipe" | "socket"), _)) => {
                let n = objects.len() + 1;
                let n = *objects.entry(target.clone()).or_insert(n);
                format!("{kind} #{n}")
            }
            _ => target,
        };
        let fi = super::fdinfo(pid, fd)?;
        f.insert(format!("fd {fd} target"), shown);
        f.insert(format!("fd {fd} flags"), format!("{:o}", fi.flags));
        f.insert(format!("fd {fd} pos"), fi.pos.to_string());
        f.insert(format!("fd {fd} mnt_id"), fi.mnt_id.to_string());
        if !fi.locks.is_empty() {
            let locks: Vec<String> = fi
                .locks
                .iter()
                .map(|l| {
                    let end = l.end.map_or("EOF".to_string(), |e| e.to_string());
                    format!("{} {} {} {}-{end}", l.kind, l.mode, l.access, l.start)
                })
                .collect();
            f.insert(format!("fd {fd} locks"), locks.join(", "));
        }
        for (k, v) in &fi.other {
            if FDINFO_KEYS.contains(&k.as_str()) {
                f.insert(format!("fd {fd} {k}"), v.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn entry(start: u64, end: u64, path: &str, offset: u64) -> crate::proc::MapEntry {
        crate::proc::MapEntry {
            start,
            end,
            read: true,
            write: true,
            path: path.into(),
            offset,
            vm_flags: vec!["rd".into(), "wr".into()],
            ..Default::default()
        }
    }

    #[test]
    fn adjacent_mappings_alike_are_shown_as_one_and_others_are_not() {
        let m = merged(vec![
            entry(0x1000, 0x2000, "", 0),
            entry(0x2000, 0x4000, "", 0),
            // Not adjacent.
            entry(0x5000, 0x6000, "", 0),
            // Adjacent, another file offset that does not follow on.
            entry(0x6000, 0x7000, "/f", 0),
            entry(0x7000, 0x8000, "/f", 0),
            // Follows on.
            entry(0x8000, 0x9000, "/f", 0x1000),
        ]);
        let spans: Vec<(u64, u64)> = m.iter().map(|e| (e.start, e.end)).collect();
        assert_eq!(
            spans,
            [
                (0x1000, 0x4000),
                (0x5000, 0x6000),
                (0x6000, 0x7000),
                (0x7000, 0x9000)
            ]
        );
        let mut ro = entry(0x9000, 0xa000, "/f", 0x3000);
        ro.write = false;
        assert_eq!(
            merged(vec![entry(0x8000, 0x9000, "/f", 0x2000), ro]).len(),
            2
        );
    }

    #[test]
    fn a_child_shows_threads_by_index_fds_by_number_and_one_pipe_under_one_name() {
        let (r, _w) = crate::sys::pipe::pipe().expect("pipe");
        let r2 = r.try_clone().expect("dup");
        let mut child = Command::new("sleep")
            .arg("100")
            .stdin(Stdio::from(r))
            .stdout(Stdio::from(r2))
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        // Until sleep sleeps: the spawn returns once exec has begun, before the close-on-exec
        // fds of the parent's other threads are closed in the child.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while crate::proc::stat(pid).map(|s| (s.comm, s.state)).ok()
            != Some(("sleep".to_string(), 'S'))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let o = observe(pid);
        let _ = child.kill();
        let _ = child.wait();
        let o = o.expect("observe the child");
        assert_eq!(o.tids, vec![pid]);
        for k in [
            "thread 0 SigBlk",
            "thread 0 Uid",
            "thread 0 comm",
            "cwd",
            "cgroup 0:",
        ] {
            assert!(o.fields.contains_key(k), "no {k} in {:?}", o.fields);
        }
        assert_eq!(o.fields["thread 0 comm"], "sleep");
        assert_eq!(
            o.fields["pgrp"],
            crate::sys::process::own_pgrp().to_string()
        );
        assert!(o.fields.keys().any(|k| k.starts_with("map ")));
        // Both ends are the same pipe: one name, that does not carry its inode.
        assert_eq!(o.fields["fd 0 target"], "pipe #1");
        assert_eq!(o.fields["fd 1 target"], "pipe #1");
        assert!(!o.fields.contains_key("Pid") && !o.fields.contains_key("thread 0 Pid"));
    }
}
