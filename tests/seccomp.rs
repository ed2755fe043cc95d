//! Issue #14, seccomp: a process whose threads run under seccomp filters (or strict mode) is
//! dumped while its filters would refuse, or kill it for, the syscalls haul injects; it is
//! restored with the same filters, in the same order, per thread; and it behaves as before.
//! Checked from outside: `/proc/PID/task/TID/status` (`Seccomp`, `Seccomp_filters`), the BPF
//! programs read back from the kernel by ptrace (`PTRACE_SECCOMP_GET_FILTER`), and what the
//! fixture's threads report their filtered `getppid` returns (`fixtures/seccompfix.c`).
//!
//! Every test makes itself the subreaper (through `Session`): restored processes are
//! re-parented away from haul and this machine's init does not reap.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::tree::Session;
use common::{fixture, send_signal, wait_for, Running};
use haul::dump::{dump_to_store, DumpOptions};
use haul::restore::{restore, PidChoice};
use haul::store::Store;
use haul::sys::ptrace::{self, Stop};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// The threads of `pid` in the order `/proc` observation numbers them: the main thread, then
/// the others by ascending tid (the order a restore under the same tids keeps).
fn threads(pid: i32) -> Vec<i32> {
    let mut t = haul::proc::tids(pid).unwrap();
    t.retain(|&x| x != pid);
    t.sort();
    t.insert(0, pid);
    t
}

/// `Seccomp` and `Seccomp_filters` of each thread of `pid`, in [`threads`] order.
fn seccomp_status(pid: i32) -> Vec<(String, String)> {
    threads(pid)
        .into_iter()
        .map(|tid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
            let field = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            (field("Seccomp:"), field("Seccomp_filters:"))
        })
        .collect()
}

/// Each thread's filters (flags, program), oldest first, as the kernel reports them: every
/// thread of `pid` is seized and stopped, read, and let go.
fn filters(pid: i32) -> Vec<Vec<(u64, Vec<u8>)>> {
    let tids = threads(pid);
    for &t in &tids {
        ptrace::seize(t, 0).unwrap();
        ptrace::interrupt(t).unwrap();
        match ptrace::wait_stop(t).unwrap() {
            Stop::Event { .. } => {}
            other => panic!("thread {t}: expected an interrupt stop, got {other:?}"),
        }
    }
    let out = tids
        .iter()
        .map(|&t| haul::sys::seccomp::filters(t).unwrap())
        .collect();
    for &t in &tids {
        ptrace::detach(t, 0).unwrap();
    }
    out
}

/// Whether BPF program `prog` returns the constant `ret`.
fn returns(prog: &[u8], ret: u32) -> bool {
    prog.chunks_exact(8).any(|i| {
        u16::from_ne_bytes([i[0], i[1]]) == 0x06
            && u32::from_ne_bytes([i[4], i[5], i[6], i[7]]) == ret
    })
}

const ERRNO: u32 = 0x0005_0000;
const KILL_PROCESS: u32 = 0x8000_0000;
const FLAG_LOG: u64 = 2;

fn start(dir: &Path, strict: bool) -> (Running, PathBuf) {
    let out = dir.join("report");
    let mut cmd = std::process::Command::new(fixture("seccompfix"));
    cmd.arg(&out);
    if strict {
        cmd.arg("strict");
    }
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let r = Running::logged(&mut cmd, &dir.join("log"), true);
    (r, out)
}

/// The fixture's report: one line per thread.
fn report(pid: i32, out: &Path) -> Vec<String> {
    let _ = std::fs::remove_file(out);
    send_signal(pid, "USR1");
    let mut lines = Vec::new();
    let ok = wait_for(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        !lines.is_empty()
    });
    let log = std::fs::read_to_string(out.with_file_name("log")).unwrap_or_default();
    assert!(ok, "pid {pid} did not report; its output: {log}");
    lines
}

/// Waits for `pid` (a child or an orphan of the test) to end and returns how.
fn ended(pid: i32) -> WaitStatus {
    waitpid(Pid::from_raw(pid), None).unwrap()
}

#[test]
fn filtered_threads_come_back_with_the_same_filters_in_the_same_order() {
    let s = Session::start();
    let (mut r, out) = start(s.path(), false);
    let pid = r.pid;
    let status = seccomp_status(pid);
    assert_eq!(
        status,
        [("2", "2"), ("2", "2"), ("2", "3")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let before = report(pid, &out);
    assert_eq!(before, ["main -1 1234", "B -1 1234", "C -1 77"]);
    let programs = filters(pid);
    // Oldest first: the getppid filter, the LOG/KILL one (with its flag), then C's own.
    let c = &programs[2];
    assert!(returns(&c[0].1, ERRNO | 1234), "{c:?}");
    assert!(
        returns(&c[1].1, KILL_PROCESS) && c[1].0 == FLAG_LOG,
        "{c:?}"
    );
    assert!(returns(&c[2].1, ERRNO | 77), "{c:?}");
    assert_eq!(programs[0], c[..2]);
    assert_eq!(programs[1], c[..2]);

    let store = Store::open_or_create(&s.store()).unwrap();
    let d = dump_to_store(pid, &store, "seccomp", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {pid}: {e}"));
    r.child.wait().unwrap();
    // Each distinct filter stored once; the threads list them by index, oldest first.
    let img = d.set.process.as_ref().and_then(|p| p.seccomp.clone());
    let img = img.expect("seccomp in the image");
    assert_eq!(img.filters.len(), 3);
    let chains: Vec<&[usize]> = img.threads.iter().map(|t| &t.chain[..]).collect();
    assert_eq!(chains, [&[0, 1][..], &[0, 1], &[0, 1, 2]]);

    let o = restore(&d.set, &store, &common::verified(PidChoice::Same))
        .unwrap_or_else(|e| panic!("restore of pid {pid}: {e}"));
    assert_eq!(o.pid, pid);
    assert_eq!(seccomp_status(pid), status);
    assert_eq!(filters(pid), programs);
    assert_eq!(report(pid, &out), before);
    // The KILL filter is in force again once haul let go: the restored process dies of it.
    send_signal(pid, "USR2");
    assert_eq!(
        ended(pid),
        WaitStatus::Signaled(Pid::from_raw(pid), nix::sys::signal::SIGSYS, false)
    );
}

#[test]
fn a_dump_is_not_killed_by_a_filter_on_the_syscalls_it_injects() {
    let s = Session::start();
    let (mut r, out) = start(s.path(), false);
    let pid = r.pid;
    let status = seccomp_status(pid);
    let before = report(pid, &out);
    let programs = filters(pid);
    let store = Store::open_or_create(&s.store()).unwrap();
    let opts = DumpOptions {
        leave_running: true,
        ..Default::default()
    };
    // mmap, munmap, prctl and rt_sigaction kill it: a dump injects them all.
    let d = dump_to_store(pid, &store, "seccomp", &opts, Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {pid}: {e}"));
    assert!(d.stats.remote_syscalls > 0, "{:?}", d.stats);
    assert!(common::alive(pid));
    assert!(
        wait_for(Duration::from_secs(5), || common::tracer_pid(pid)
            == Some(0)),
        "pid {pid} still traced"
    );
    assert_eq!(seccomp_status(pid), status);
    assert_eq!(filters(pid), programs);
    assert_eq!(report(pid, &out), before);
    // Its filters still apply (no longer suspended): mmap kills it.
    send_signal(pid, "USR2");
    let st = r.child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGSYS),
        "{st:?}"
    );
}

#[test]
fn a_thread_in_strict_mode_comes_back_in_strict_mode() {
    let s = Session::start();
    let (mut r, out) = start(s.path(), true);
    let pid = r.pid;
    let status = seccomp_status(pid);
    let modes: Vec<&str> = status.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(modes, ["0", "0", "0", "1"]);
    let before = report(pid, &out);
    assert_eq!(before.last().map(String::as_str), Some("S alive"));
    let store = Store::open_or_create(&s.store()).unwrap();
    let d = dump_to_store(pid, &store, "seccomp", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {pid}: {e}"));
    r.child.wait().unwrap();
    let o = restore(&d.set, &store, &common::verified(PidChoice::Same))
        .unwrap_or_else(|e| panic!("restore of pid {pid}: {e}"));
    assert_eq!(o.pid, pid);
    assert_eq!(seccomp_status(pid), status);
    assert_eq!(report(pid, &out), before);
}

#[test]
fn a_haul_without_cap_sys_admin_refuses_a_filtered_process_by_name() {
    let s = Session::start();
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        return common::skip(
            "a_haul_without_cap_sys_admin_refuses_a_filtered_process_by_name",
            "no setpriv",
        );
    }
    let (r, _out) = start(s.path(), false);
    let pid = r.pid;
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--"])
        .arg(common::haul_bin())
        .args(["dump", "--check", "--pid", &pid.to_string(), "--store"])
        .arg(s.store())
        .env_remove("HAUL_STORE");
    let o = cmd.output().unwrap();
    // `--check` lists the reasons on stdout.
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "{err}");
    // The main thread first; each filtered thread is named.
    assert!(
        err.contains(&format!(
            "pid {pid} runs under seccomp (a filter): haul needs CAP_SYS_ADMIN, and no seccomp \
             filter of its own, to read and suspend it"
        )),
        "{err}"
    );
    let tid = threads(pid)[2];
    assert!(
        err.contains(&format!(
            "pid {pid} thread {tid} runs under seccomp (a filter)"
        )),
        "{err}"
    );
    assert_eq!(common::tracer_pid(pid), Some(0));
}

#[test]
fn a_filtered_child_in_a_tree_comes_back_with_its_filters() {
    let s = Session::start();
    let out = s.path().join("report");
    // A shell that waits for its filtered child: a tree of two, only the child filtered.
    let script = format!(
        "{} {} & wait",
        fixture("seccompfix").display(),
        out.display()
    );
    let mut cmd = common::clean_command("/bin/sh");
    cmd.args(["-c", &script]);
    let mut r = Running::logged(&mut cmd, &s.path().join("log"), true);
    let child = common::children_of(r.pid)[0];
    let status = seccomp_status(child);
    assert_eq!(status[2], ("2".to_string(), "3".to_string()));
    let before = report(child, &out);
    let programs = filters(child);
    let store = Store::open_or_create(&s.store()).unwrap();
    let d = dump_to_store(r.pid, &store, "seccomp", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of the tree of pid {}: {e}", r.pid));
    r.child.wait().unwrap();
    // The child, killed with the shell, came to this test process (the subreaper): reap it,
    // or its pid stays taken by a zombie.
    let _ = haul::sys::host::reap(child);
    assert!(d.set.process.as_ref().unwrap().seccomp.is_none());
    assert!(d.set.tree.descendants[0].seccomp.is_some());
    restore(&d.set, &store, &common::verified(PidChoice::Same))
        .unwrap_or_else(|e| panic!("restore of the tree of pid {}: {e}", r.pid));
    assert_eq!(seccomp_status(r.pid), [("0".to_string(), "0".to_string())]);
    assert_eq!(seccomp_status(child), status);
    assert_eq!(filters(child), programs);
    assert_eq!(report(child, &out), before);
}
