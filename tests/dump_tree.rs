//! The dump of a whole process tree (issue #13), checked from outside: every process of the
//! tree is in the image with its ids, zombies with their wait status, each process's pages in
//! its own page space; `haul dump --check` lists every reason of the tree naming pids; a
//! failure at any step leaves every process running, untraced, not stopped; a kill-mode dump
//! releases every pid.

mod common;

use common::{clean_command, wait_for, Running};
use haul::dump::{dump_to_store, DumpOptions, Step};
use haul::image::ImageSet;
use haul::store::Store;
use std::path::Path;
use std::time::Duration;

fn running() -> DumpOptions {
    DumpOptions {
        leave_running: true,
        ..DumpOptions::default()
    }
}

/// `sh -c SCRIPT` with fds above 2 closed, output to `dir/log`, once the log says `ready` and
/// the shell has `kids` children.
fn shell(dir: &Path, script: &str, kids: usize) -> Running {
    let r = Running::logged(
        clean_command("sh").args(["-c", script]),
        &dir.join("sh.log"),
        true,
    );
    let ok = wait_for(Duration::from_secs(20), || {
        common::children_of(r.pid).len() == kids
    });
    assert!(
        ok,
        "sh {} has {:?} children",
        r.pid,
        common::children_of(r.pid)
    );
    r
}

/// Fields of `/proc/PID/stat` after the comm: (state, ppid, pgid, sid, exit_signal).
fn stat(pid: i32) -> (char, i32, i32, i32, i32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    let n = |i: usize| f[i - 3].parse::<i32>().unwrap();
    (f[0].chars().next().unwrap(), n(4), n(5), n(6), n(38))
}

/// Every pid of the tree rooted at `root` (root first, then each process's descendants).
fn tree_pids(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let mut kids = common::children_of(out[i]);
        kids.sort_unstable();
        out.extend(kids);
        i += 1;
    }
    out
}

/// Every process of `pids` runs on: alive, not traced, not stopped.
fn assert_running_untraced(pids: &[i32], what: &str) {
    for &p in pids {
        assert!(common::alive(p), "{what}: pid {p} is gone");
        // The thaw has happened when the dump returned; its detach is immediate.
        assert_eq!(common::tracer_pid(p), Some(0), "{what}: pid {p} is traced");
        let st = common::proc_state(p).unwrap();
        assert!(
            !matches!(st, 'T' | 't'),
            "{what}: pid {p} is stopped ({st})"
        );
    }
}

fn load(store: &Store, id: &str) -> ImageSet {
    store.load_set(id).unwrap()
}

#[test]
fn a_shell_and_its_background_jobs_are_dumped_whole_and_left_running() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = shell(tmp.path(), "sleep 1000 & sleep 1000 & echo ready; wait", 2);
    let pids = tree_pids(sh.pid);
    assert_eq!(pids.len(), 3, "{pids:?}");
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let d = dump_to_store(sh.pid, &store, "tree", &running(), None).unwrap();
    assert_eq!(d.stats.processes, 3);
    assert_running_untraced(&pids, "after a leave-running dump");

    let set = load(&store, &d.set.id);
    assert_eq!(set.process_count(), 3);
    let got: Vec<i32> = set.processes().map(|(_, p)| p.pid).collect();
    assert_eq!(
        got, pids,
        "tree order: root, then children by ascending pid"
    );
    assert!(set.tree.zombies.is_empty());
    let mut threads = 0;
    for (space, p) in set.processes() {
        let (_, ppid, pgid, sid, exit_signal) = stat(p.pid);
        assert_eq!(
            (p.ppid, p.pgid, p.sid, p.exit_signal),
            (ppid, pgid, sid, exit_signal),
            "pid {} ids",
            p.pid
        );
        assert_eq!(exit_signal, 17);
        assert_eq!(set.space_of(p.pid), Some(space));
        // Each process's own stack is in its own page space.
        let stack = p.vmas.iter().find(|v| v.name == "[stack]").unwrap();
        assert!(
            set.pages_of(space)
                .any(|(a, _)| a >= stack.start && a < stack.end),
            "pid {} space {space} lacks its stack pages",
            p.pid
        );
        threads += p.threads.len() as u64;
    }
    assert_eq!(set.processes().nth(1).unwrap().1.ppid, sh.pid);
    assert_eq!(d.stats.threads, threads);
    assert_eq!(
        set.pages.iter().count(),
        (0..3).map(|s| set.pages_of(s).count()).sum::<usize>(),
        "every page is in the space of a process"
    );
}

/// A python parent whose children exited (one with status 7, one killed by SIGTERM) and were
/// not reaped, and a third cloned with exit signal SIGUSR1 that lives on.
const ZOMBIES: &str = r#"
import ctypes, os, signal, time
a = os.fork()
if a == 0:
    os._exit(7)
b = os.fork()
if b == 0:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(100)
libc = ctypes.CDLL(None, use_errno=True)
c = libc.syscall(56, signal.SIGUSR1, 0, 0, 0, 0)  # clone(SIGUSR1): a fork, exit signal SIGUSR1
if c == 0:
    while True:
        time.sleep(1000)
print("ready", flush=True)
time.sleep(1000)
"#;

#[test]
fn zombies_keep_their_wait_status_and_a_clone_its_exit_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let py = Running::logged(
        clean_command(common::python3()).args(["-c", ZOMBIES]),
        &tmp.path().join("py.log"),
        true,
    );
    let ok = wait_for(Duration::from_secs(20), || {
        let kids = common::children_of(py.pid);
        kids.len() == 3
            && kids
                .iter()
                .filter(|&&k| common::proc_state(k) == Some('Z'))
                .count()
                == 2
    });
    assert!(
        ok,
        "children of {}: {:?}",
        py.pid,
        common::children_of(py.pid)
    );
    let mut kids = common::children_of(py.pid);
    kids.sort_unstable();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let d = dump_to_store(py.pid, &store, "zombies", &running(), None).unwrap();
    assert_eq!(d.stats.processes, 4);
    let set = load(&store, &d.set.id);
    assert_eq!(set.process_count(), 4);
    let z = &set.tree.zombies;
    assert_eq!(z.len(), 2, "{z:?}");
    assert_eq!((z[0].pid, z[1].pid), (kids[0], kids[1]));
    assert_eq!(z[0].wait_status, 7 << 8, "exit(7)");
    assert_eq!(z[1].wait_status, 15, "killed by SIGTERM");
    let (_, _, pgid, sid, _) = stat(py.pid);
    for zz in z {
        assert_eq!((zz.ppid, zz.pgid, zz.sid), (py.pid, pgid, sid));
        assert_eq!(zz.exit_signal, 17);
        assert_eq!(zz.comm, stat_comm(zz.pid));
    }
    let live: Vec<_> = set.tree.descendants.iter().map(|p| p.pid).collect();
    assert_eq!(live, vec![kids[2]]);
    assert_eq!(set.tree.descendants[0].exit_signal, 10, "clone(SIGUSR1)");
    // The zombies are still there for their parent, and everyone runs on.
    assert_eq!(common::proc_state(kids[0]), Some('Z'));
    assert_running_untraced(&[py.pid, kids[2]], "after the dump");
}

fn stat_comm(pid: i32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.find('(').unwrap() + 1..s.rfind(')').unwrap()].to_string()
}

#[test]
fn a_failure_at_any_step_leaves_every_process_running_untraced() {
    let tmp = tempfile::tempdir().unwrap();
    let sh = shell(
        tmp.path(),
        "sleep 1000 & (sleep 1000 & wait) & echo ready; wait",
        2,
    );
    assert!(wait_for(Duration::from_secs(20), || tree_pids(sh.pid)
        .len()
        == 4));
    let pids = tree_pids(sh.pid);
    let store = tmp.path().join("store");
    for step in Step::ALL {
        // Kill mode: a failure must still thaw, never kill.
        let out = common::haul()
            .args(["dump", "--kill", "--pid", &sh.pid.to_string(), "--store"])
            .arg(&store)
            .env("HAUL_FAIL_AT", step.name())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{step}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("injected"), "{step}: {err}");
        assert_running_untraced(&pids, step.name());
        assert_eq!(tree_pids(sh.pid), pids, "{step}: the tree changed");
    }
    // And a dump without the fault still works on the same tree.
    let out = common::haul()
        .args([
            "dump",
            "--leave-running",
            "--pid",
            &sh.pid.to_string(),
            "--store",
        ])
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_running_untraced(&pids, "after a good dump");
}
