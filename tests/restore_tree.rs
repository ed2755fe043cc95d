//! Restoring a process tree: every pid, parent, process group and session back, zombies that
//! their parent's `wait` still reaps with their status, and a failure at any step leaving no
//! process behind.
//!
//! Until the tree dump lands, the trees are composed: unrelated real processes are dumped one
//! by one (each a lone process, killed by the dump) and put into one image as a tree (parent
//! links, groups and sessions set as a tree would have them); zombies are added by hand. The
//! restore then has to make that tree for real, and everything is checked from outside.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{fixture, read_numbers, verified, wait_for, MemSource};
use haul::dump::{dump, DumpOptions, VecSink};
use haul::image::{
    is_zero_page, page_key, ImageSet, PageId, PageRef, PageTable, ProcessImage, SetKind, Tree,
    ZombieImage,
};
use haul::restore::{restore, PidChoice, RestoreOptions, Step};

/// One process of a tree to compose: its dumped image and where it goes.
struct Member {
    image: ProcessImage,
    pages: Vec<(u64, Vec<u8>)>,
}

/// Dumps `child` (killing it) and reaps it.
fn dump_one(mut child: Child) -> Member {
    let pid = child.id() as i32;
    let mut sink = VecSink::default();
    let out = dump(pid, &DumpOptions::default(), &mut sink).expect("dump");
    child.wait().unwrap();
    Member {
        image: out.process,
        pages: sink.pages,
    }
}

/// `pgrp` and `session` as `--verify state` records them (`self` for the process's own id).
fn set_ids(p: &mut ProcessImage, ppid: i32, pgid: i32, sid: i32) {
    p.ppid = ppid;
    p.pgid = pgid;
    p.sid = sid;
    let rel = |id: i32| {
        if id == p.pid {
            "self".to_string()
        } else {
            id.to_string()
        }
    };
    let (g, s) = (rel(pgid), rel(sid));
    p.observed.insert("pgrp".into(), g);
    p.observed.insert("session".into(), s);
}

/// One image set of `members` (root first, then the descendants in tree order), each in its own
/// page space, and `zombies`.
fn compose(members: Vec<Member>, zombies: Vec<ZombieImage>) -> (ImageSet, MemSource) {
    let mut table = PageTable::new();
    let mut pages = HashMap::new();
    let mut images = Vec::new();
    for (space, m) in members.into_iter().enumerate() {
        for (addr, page) in m.pages {
            let key = page_key(space as u16, addr);
            if is_zero_page(&page) {
                table.insert(key, PageRef::Zero);
            } else {
                let id = PageId::of(&page);
                table.insert(key, PageRef::Stored(id));
                pages.insert(id, page);
            }
        }
        images.push(m.image);
    }
    let mut it = images.into_iter();
    let set = ImageSet {
        id: "tree-set".into(),
        job: "tree".into(),
        created_us: 0,
        kind: SetKind::Dump,
        parent: None,
        kernel: haul::util::kernel_release(),
        process: it.next(),
        tree: Tree {
            descendants: it.collect(),
            zombies,
            ..Default::default()
        },
        pages: table,
        figures: Default::default(),
    };
    (set, MemSource { pages })
}

fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// (ppid, pgrp, session, state) of a process.
type Ids = (i32, i32, i32, char);

/// [`Ids`] of `pid` from `/proc/PID/stat`.
fn ids(pid: i32) -> Option<Ids> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = st.rsplit_once(')')?.1;
    let w: Vec<&str> = rest.split_whitespace().collect();
    Some((
        w[1].parse().ok()?,
        w[2].parse().ok()?,
        w[3].parse().ok()?,
        w[0].chars().next()?,
    ))
}

/// Kills `pids` and reaps them: this test is their subreaper once their parents are gone.
/// Waits until each is gone from `/proc`.
fn finish(pids: &[i32]) {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    for &p in pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(p), nix::sys::signal::SIGKILL);
    }
    for &p in pids {
        let gone = wait_for(Duration::from_secs(10), || {
            let _ = waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG));
            !Path::new(&format!("/proc/{p}")).exists()
        });
        assert!(gone, "pid {p} is still there: {:?}", ids(p));
    }
}

/// A pid that no process has now (a process that just ended had it).
fn free_pid() -> i32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id() as i32;
    c.wait().unwrap();
    pid
}

fn counter(log: &Path, group: bool, setsid: bool) -> Child {
    let mut cmd = if setsid {
        let mut c = Command::new("setsid");
        c.arg(fixture("counter"));
        c
    } else {
        Command::new(fixture("counter"))
    };
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    if group {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    let child = cmd
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || read_numbers(log).len() >= 3),
        "counter {} did not count",
        log.display()
    );
    child
}

fn zombie(pid: i32, ppid: i32, pgid: i32, sid: i32, wait_status: i32) -> ZombieImage {
    ZombieImage {
        pid,
        ppid,
        pgid,
        sid,
        comm: "gone".into(),
        wait_status,
        exit_signal: libc::SIGCHLD,
    }
}

fn own_sid() -> i32 {
    nix::unistd::getsid(None).unwrap().as_raw()
}

/// A tree of four counters and a zombie: A leads its group; B (child of A) is in A's group; C
/// (child of A) leads a session of its own; D (child of B) leads a group in A's session; zombie
/// Z of A, in A's group.
struct Four {
    set: ImageSet,
    src: MemSource,
    /// A, B, D, C (tree order), then Z.
    pids: [i32; 5],
    logs: Vec<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

fn four() -> Four {
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.log")))
        .collect();
    let a = counter(&logs[0], true, false);
    let b = counter(&logs[1], false, false);
    let c = counter(&logs[2], false, true);
    let d = counter(&logs[3], true, false);
    let (pa, pb, pc, pd) = (a.id() as i32, b.id() as i32, c.id() as i32, d.id() as i32);
    let sid = own_sid();
    let mut ma = dump_one(a);
    let mut mb = dump_one(b);
    let mut mc = dump_one(c);
    let mut md = dump_one(d);
    let ppid_a = ma.image.ppid;
    set_ids(&mut ma.image, ppid_a, pa, sid);
    set_ids(&mut mb.image, pa, pa, sid);
    set_ids(&mut mc.image, pa, pc, pc);
    set_ids(&mut md.image, pb, pd, sid);
    let pz = free_pid();
    let (set, src) = compose(vec![ma, mb, md, mc], vec![zombie(pz, pa, pa, sid, 5 << 8)]);
    Four {
        set,
        src,
        pids: [pa, pb, pd, pc, pz],
        logs,
        _dir: dir,
    }
}

#[test]
fn a_tree_comes_back_with_its_pids_parents_groups_sessions_and_zombie() {
    adopt_orphans();
    let t = four();
    let [pa, pb, pd, pc, pz] = t.pids;
    let sid = own_sid();
    let before: Vec<usize> = t.logs.iter().map(|l| read_numbers(l).len()).collect();

    let out = restore(&t.set, &t.src, &verified(PidChoice::Same)).expect("restore");
    let got = (ids(pa), ids(pb), ids(pd), ids(pc), ids(pz));
    let counting = t
        .logs
        .iter()
        .zip(&before)
        .all(|(l, &n)| wait_for(Duration::from_secs(10), || read_numbers(l).len() >= n + 5));
    finish(&[pb, pd, pc, pa, pz]);

    assert_eq!(out.pid, pa);
    assert_eq!(
        out.pids,
        vec![(pa, pa), (pb, pb), (pd, pd), (pc, pc), (pz, pz)]
    );
    let (a, b, d, c, z) = got;
    let a = a.expect("A restored");
    assert_eq!((a.1, a.2), (pa, sid), "A: group, session");
    assert_eq!(b.map(|b| (b.0, b.1, b.2)), Some((pa, pa, sid)), "B");
    assert_eq!(d.map(|d| (d.0, d.1, d.2)), Some((pb, pd, sid)), "D");
    assert_eq!(c.map(|c| (c.0, c.1, c.2)), Some((pa, pc, pc)), "C");
    assert_eq!(z, Some((pa, pa, sid, 'Z')), "the zombie");
    assert!(counting, "a restored counter does not count");
    for l in &t.logs {
        let n = read_numbers(l);
        assert!(
            n.iter().enumerate().all(|(i, v)| *v == i as u64 + 1),
            "gap: {n:?}"
        );
    }
}

#[test]
fn a_failure_at_any_step_of_a_tree_leaves_no_process_behind() {
    adopt_orphans();
    let t = four();
    for step in Step::ALL {
        let opts = RestoreOptions {
            pid: PidChoice::Same,
            fail_at: Some(step),
            verify_state: true,
            ..Default::default()
        };
        let e = restore(&t.set, &t.src, &opts).expect_err("it was to fail");
        assert!(
            e.to_string()
                .contains(&format!("restore failed at step {step}")),
            "{step}: {e}"
        );
        // Everything made is killed; as their reaper we see every pid go.
        finish(&t.pids);
    }
    // Nothing was left holding a pid: the whole tree can be made again.
    let out = restore(&t.set, &t.src, &verified(PidChoice::Same)).expect("restore");
    finish(&[t.pids[1], t.pids[2], t.pids[3], t.pids[0], t.pids[4]]);
    assert_eq!(out.pids.len(), 5);
}

/// A python parent waits for the pids written to `go`, and writes `pid status` per line.
const WAITER: &str = r#"
import os, sys, time
go, out, ready = sys.argv[1:4]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
res = []
for w in open(go).read().split():
    pid, st = os.waitpid(int(w), 0)
    res.append("%d %d" % (pid, st))
open(out + ".tmp", "w").write("\n".join(res) + "\n")
os.rename(out + ".tmp", out)
"#;

#[test]
fn the_parents_wait_reaps_restored_zombies_with_their_exit_code_and_signal() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (go, out, ready) = (
        dir.path().join("go"),
        dir.path().join("out"),
        dir.path().join("ready"),
    );
    let mut cmd = Command::new(common::python3());
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let py = cmd
        .arg("-c")
        .arg(WAITER)
        .args([&go, &out, &ready])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(20), || ready.exists()));
    let pp = py.id() as i32;
    let m = dump_one(py);
    let (pgid, sid) = (m.image.pgid, m.image.sid);
    let (z1, z2) = (free_pid(), free_pid());
    let (set, src) = compose(
        vec![m],
        vec![
            zombie(z1, pp, pgid, sid, 5 << 8),
            zombie(z2, pp, pgid, sid, libc::SIGTERM),
        ],
    );

    // --verify state: the parent's pending signals must be the image's (no SIGCHLD of ours).
    let r = restore(&set, &src, &verified(PidChoice::Same));
    let zs = (ids(z1), ids(z2));
    std::fs::write(dir.path().join("go.tmp"), format!("{z1}\n{z2}\n")).unwrap();
    std::fs::rename(dir.path().join("go.tmp"), &go).unwrap();
    let answered = wait_for(Duration::from_secs(20), || out.exists());
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    finish(&[pp, z1, z2]);

    let r = r.expect("restore");
    assert_eq!(r.pid, pp);
    assert_eq!(zs.0.map(|z| (z.0, z.3)), Some((pp, 'Z')), "zombie {z1}");
    assert_eq!(zs.1.map(|z| (z.0, z.3)), Some((pp, 'Z')), "zombie {z2}");
    assert!(answered, "the restored parent did not reap its zombies");
    assert_eq!(
        text,
        format!("{z1} {}\n{z2} {}\n", 5 << 8, libc::SIGTERM),
        "what the parent's waitpid saw"
    );
}

/// A counter A with a child B in its group and session (no zombie, nobody leads a group
/// but A): what `pid = "any"` can restore.
fn two(dir: &Path) -> (ImageSet, MemSource, [i32; 2], [std::path::PathBuf; 2]) {
    let logs = [dir.join("a.log"), dir.join("b.log")];
    let a = counter(&logs[0], true, false);
    let b = counter(&logs[1], false, false);
    let (pa, pb) = (a.id() as i32, b.id() as i32);
    let sid = own_sid();
    let mut ma = dump_one(a);
    let mut mb = dump_one(b);
    let ppid_a = ma.image.ppid;
    set_ids(&mut ma.image, ppid_a, pa, sid);
    set_ids(&mut mb.image, pa, pa, sid);
    let (set, src) = compose(vec![ma, mb], vec![]);
    (set, src, [pa, pb], logs)
}

#[test]
fn any_pid_gives_a_tree_new_pids_with_the_same_links() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (set, src, [pa, pb], logs) = two(dir.path());
    let before: Vec<usize> = logs.iter().map(|l| read_numbers(l).len()).collect();
    let r = restore(&set, &src, &verified(PidChoice::Any));
    let pids = r.as_ref().map(|o| o.pids.clone()).unwrap_or_default();
    let (na, nb) = (
        pids.first().map_or(0, |p| p.1),
        pids.get(1).map_or(0, |p| p.1),
    );
    let got = (ids(na), ids(nb));
    let counting = logs
        .iter()
        .zip(&before)
        .all(|(l, &n)| wait_for(Duration::from_secs(10), || read_numbers(l).len() >= n + 5));
    if na > 0 && nb > 0 {
        finish(&[nb, na]);
    }
    let out = r.expect("restore with pid any");
    assert_eq!(out.pid, na);
    assert_eq!(pids.iter().map(|p| p.0).collect::<Vec<_>>(), [pa, pb]);
    let a = got.0.expect("A restored");
    let b = got.1.expect("B restored");
    assert_eq!(a.1, na, "A leads a group of its own again");
    assert_eq!(
        (b.0, b.1, b.2),
        (na, na, a.2),
        "B: A's child, in A's group and session"
    );
    assert!(counting, "a restored counter does not count");
}

// ---- real trees, dumped whole (kill mode) and restored ----

/// Dumps the tree rooted at `root` into `store` with kill mode; reaps every process of it (this
/// test is their subreaper), so each pid is free again. Returns the set.
fn dump_tree_killed(root: &mut common::Running, store: &haul::store::Store) -> ImageSet {
    let opts = DumpOptions {
        leave_running: false,
        ..DumpOptions::default()
    };
    let pids = tree_pids(root.pid);
    let d = haul::dump::dump_to_store(root.pid, store, "tree", &opts, None).expect("dump");
    let _ = root.child.wait();
    finish(&pids);
    store.load_set(&d.set.id).unwrap()
}

/// Every pid of the tree rooted at `root`, root first.
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

/// A bash waiting for its jobs: one still running (killed after the restore), one that exited
/// 3 before the dump (bash has its status), one it kills itself.
const JOBS: &str = r#"sleep 1000 & a=$!; (exit 3) & b=$!; sleep 1000 & c=$!
echo "pids $a $b $c"; echo ready
wait $a; echo "a=$?"; wait $b; echo "b=$?"; kill $c; wait $c; echo "c=$?""#;

#[test]
fn a_bash_script_with_background_jobs_sees_every_status_after_dump_and_restore() {
    adopt_orphans();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("bash.log");
    let mut sh =
        common::Running::logged(common::clean_command("bash").args(["-c", JOBS]), &log, true);
    assert!(
        wait_for(Duration::from_secs(20), || common::children_of(sh.pid)
            .len()
            == 2),
        "bash {} children: {:?}",
        sh.pid,
        common::children_of(sh.pid)
    );
    let before: Vec<(i32, Option<Ids>)> =
        tree_pids(sh.pid).into_iter().map(|p| (p, ids(p))).collect();
    let store = haul::store::Store::open_or_create(&tmp.path().join("store")).unwrap();
    let set = dump_tree_killed(&mut sh, &store);
    assert_eq!(set.process_count(), 3);

    let out = restore(&set, &store, &verified(PidChoice::Same)).expect("restore");
    let after: Vec<(i32, Option<Ids>)> = before.iter().map(|(p, _)| (*p, ids(*p))).collect();
    let pids: Vec<i32> = before.iter().map(|p| p.0).collect();
    // The job bash waits for ends now: bash must see it as its own child.
    let a = pids[1];
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(a), nix::sys::signal::SIGTERM);
    let done = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("c="))
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    finish(&pids);

    assert_eq!(out.pid, sh.pid);
    assert_eq!(out.pids.iter().map(|p| p.1).collect::<Vec<_>>(), pids);
    for ((p, was), (_, now)) in before.iter().zip(&after) {
        let (was, now) = (was.unwrap(), now.expect("restored"));
        // ppid of the root: its parent here (the test, its reaper) is not the original's.
        if *p != sh.pid {
            assert_eq!(now.0, was.0, "pid {p}: parent");
        }
        assert_eq!((now.1, now.2), (was.1, was.2), "pid {p}: group, session");
    }
    assert!(done, "bash did not finish: {text}");
    assert!(text.contains("a=143\nb=3\nc=143\n"), "{text}");
}

/// A python parent with two unreaped children (exit 7, killed by SIGTERM) and a living one;
/// once `go` exists it reaps them all by pid and writes what waitpid said.
const ZOMBIES: &str = r#"
import os, signal, sys, time
go = sys.argv[1]
a = os.fork()
if a == 0:
    os._exit(7)
b = os.fork()
if b == 0:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(100)
c = os.fork()
if c == 0:
    while not os.path.exists(go):
        time.sleep(0.01)
    os._exit(9)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
for p in (a, b, c):
    print("%d %d" % os.waitpid(p, 0), flush=True)
"#;

#[test]
fn zombies_dumped_with_their_parent_are_reaped_after_restore_with_their_status() {
    adopt_orphans();
    let tmp = tempfile::tempdir().unwrap();
    let (log, go) = (tmp.path().join("py.log"), tmp.path().join("go"));
    let mut py = common::Running::logged(
        common::clean_command(common::python3())
            .args(["-c", ZOMBIES])
            .arg(&go),
        &log,
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
    let pids = tree_pids(py.pid);
    let store = haul::store::Store::open_or_create(&tmp.path().join("store")).unwrap();
    let set = dump_tree_killed(&mut py, &store);
    assert_eq!(set.tree.zombies.len(), 2);

    // --verify state: the parent's pending signals are the image's (no SIGCHLD of ours).
    let r = restore(&set, &store, &verified(PidChoice::Same));
    let states: Vec<Option<char>> = pids.iter().map(|&p| common::proc_state(p)).collect();
    std::fs::write(&go, "").unwrap();
    let done = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() >= 4)
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    finish(&pids);

    r.expect("restore");
    let z: Vec<i32> = set.tree.zombies.iter().map(|z| z.pid).collect();
    for (p, st) in pids.iter().zip(&states) {
        // Zombies are zombies; the living run (or sleep in their poll).
        let zombie = z.contains(p);
        assert!(
            st.is_some() && (*st == Some('Z')) == zombie,
            "pid {p} after the restore: {st:?}"
        );
    }
    assert!(done, "python did not reap its children: {text}");
    let mut kids = pids[1..].to_vec();
    kids.sort_unstable();
    let want = format!(
        "ready\n{} {}\n{} {}\n{} {}\n",
        kids[0],
        7 << 8,
        kids[1],
        libc::SIGTERM,
        kids[2],
        9 << 8
    );
    assert_eq!(text, want);
}

#[test]
fn haul_restore_of_a_tree_prints_the_roots_pid_and_in_json_every_pid() {
    adopt_orphans();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut sh = common::Running::logged(
        common::clean_command("sh").args(["-c", "sleep 1000 & sleep 1000 & echo ready; wait"]),
        &tmp.path().join("sh.log"),
        true,
    );
    assert!(wait_for(Duration::from_secs(20), || {
        common::children_of(sh.pid).len() == 2
    }));
    let pids = tree_pids(sh.pid);
    let out = common::haul()
        .args([
            "dump",
            "--kill",
            "--json",
            "--pid",
            &sh.pid.to_string(),
            "--store",
        ])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let set = v["set"].as_str().unwrap().to_string();
    let _ = sh.child.wait();
    finish(&pids);

    // HAUL_RESTORE_FAIL_AT fails a step (where the first process reaches it): nothing is left.
    for step in ["spawn", "fill", "run"] {
        let out = common::haul()
            .env("HAUL_RESTORE_FAIL_AT", step)
            .args(["restore", &set, "--store"])
            .arg(&store)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{step}: {err}");
        assert!(
            err.contains(&format!("restore failed at step {step}")),
            "{err}"
        );
        finish(&pids);
    }
    let restore = |json: bool| {
        let mut c = common::haul();
        c.args(["restore", &set, "--verify", "state", "--store"])
            .arg(&store);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        let all: Vec<_> = pids.iter().map(|&p| ids(p)).collect();
        finish(&pids);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.iter().all(Option::is_some),
            "not every process restored: {all:?}"
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = restore(false);
    assert_eq!(
        text,
        format!("{}\n", sh.pid),
        "the root's pid, as for one process"
    );
    let v: serde_json::Value = serde_json::from_str(&restore(true)).unwrap();
    assert_eq!(v["pid"].as_i64(), Some(sh.pid as i64));
    let listed: Vec<(i64, i64)> = v["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["was"].as_i64().unwrap(), p["pid"].as_i64().unwrap()))
        .collect();
    let want: Vec<(i64, i64)> = pids.iter().map(|&p| (p as i64, p as i64)).collect();
    assert_eq!(listed, want);
}

#[test]
fn a_group_led_outside_the_tree_is_refused_naming_pid_and_group_before_anything_is_made() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut set, src, [pa, pb], _) = two(dir.path());
    let foreign = free_pid();
    set.tree.descendants[0].pgid = foreign;
    let e = restore(&set, &src, &verified(PidChoice::Same)).expect_err("refused");
    let m = e.to_string();
    assert!(
        m.contains(&format!("pid {pb} is in process group {foreign}"))
            && m.contains("neither in the tree nor the root's own group"),
        "{m}"
    );
    for p in [pa, pb] {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "pid {p} was made"
        );
    }
}

#[test]
fn a_shell_pipeline_dumped_mid_stream_finishes_with_the_right_digest_after_restore() {
    adopt_orphans();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let n = 800_000_000u64;
    let script = format!(
        "cat /dev/zero | head -c {n} | sha256sum > {}",
        out.display()
    );
    let mut sh = common::Running::logged(
        common::clean_command("sh").args(["-c", &script]),
        &tmp.path().join("sh.log"),
        false,
    );
    assert!(wait_for(Duration::from_secs(20), || {
        common::children_of(sh.pid).len() == 3
    }));
    let pids = tree_pids(sh.pid);
    let store = haul::store::Store::open_or_create(&tmp.path().join("store")).unwrap();
    let set = dump_tree_killed(&mut sh, &store);
    let mid_stream = std::fs::read_to_string(&out).unwrap_or_default().is_empty();
    assert_eq!(set.process_count(), 4);

    let r = restore(&set, &store, &verified(PidChoice::Same));
    // sh ends once sha256sum has written the digest; this test reaps it.
    let done = wait_for(Duration::from_secs(120), || {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(sh.pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        !Path::new(&format!("/proc/{}", sh.pid)).exists()
    });
    let got = std::fs::read_to_string(&out).unwrap_or_default();
    finish(&pids);
    r.expect("restore");
    assert!(mid_stream, "the pipeline had finished before the dump");
    assert!(done, "the restored pipeline did not finish");
    let want = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {n} /dev/zero | sha256sum"))
        .output()
        .unwrap();
    assert_eq!(got, String::from_utf8(want.stdout).unwrap());
}
