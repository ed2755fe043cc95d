//! What processes share through their fds (issue #13): socket pairs and pipes with what they
//! hold, inherited open file descriptions, and the refusal of what leads outside the tree.
//! Real processes (fixtures/sharefds.c, python3), checked from outside.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{clean_command, fixture, send_signal, wait_for, Running};
use haul::dump::{dump_to_store, DumpOptions};
use haul::image::{FdKind, ImageSet};
use haul::restore::restore;
use haul::store::Store;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// A restored process, killed and reaped when dropped.
struct Restored(i32);

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.0), nix::sys::signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.0), None);
    }
}

fn launch(mut cmd: Command, log: &Path) -> Running {
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    Running::logged(&mut cmd, log, true)
}

/// Dumps `r` into a new store under `dir` (killing it) and reaps it.
fn dump_kill(r: &mut Running, dir: &Path) -> (ImageSet, Store) {
    let store = Store::open_or_create(&dir.join("store")).expect("create store");
    let d = dump_to_store(r.pid, &store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {}: {e}", r.pid));
    r.child.wait().expect("reap the dumped original");
    (d.set, store)
}

/// The kind of each fd from 10 to 16 as /proc shows it ("socket", "pipe", or the path).
fn kinds(pid: i32) -> Vec<String> {
    (10..=16)
        .map(|fd| {
            let t = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "-".into());
            t.split(":[").next().unwrap_or_default().to_string()
        })
        .collect()
}

/// Asks `pid` for a report and waits until `out` holds `n` lines; returns them.
fn report(pid: i32, out: &Path, n: usize) -> Vec<String> {
    send_signal(pid, "USR1");
    let mut lines = Vec::new();
    let ok = wait_for(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        lines.len() >= n
    });
    let state = |p: i32| std::fs::read_to_string(format!("/proc/{p}/wchan")).unwrap_or_default();
    let kids = common::children_of(pid);
    assert!(
        ok,
        "no report {n} from pid {pid} (waiting in {}; children {kids:?}, waiting in {:?}): \
         {lines:?}",
        state(pid),
        kids.iter().map(|&k| state(k)).collect::<Vec<_>>()
    );
    lines
}

#[test]
fn a_socket_pair_and_a_pipe_keep_what_waits_in_them_through_dump_and_restore() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reads");
    let mut cmd = Command::new(fixture("sharefds"));
    cmd.arg(&out).arg("solo");
    let mut r = launch(cmd, &dir.path().join("log"));
    let before = kinds(r.pid);
    assert_eq!(
        before[..6],
        ["socket", "socket", "socket", "socket", "pipe", "pipe"]
    );
    let (set, store) = dump_kill(&mut r, dir.path());
    // The image holds both pairs, each queue at its own end, the pipe's bytes at its read end.
    let p = set.process.as_ref().unwrap();
    let kind = |fd: i32| &p.fds.iter().find(|f| f.fd == fd).unwrap().kind;
    match (kind(10), kind(11)) {
        (
            FdKind::UnixPair {
                ino,
                peer,
                sock_type,
                queued,
                ..
            },
            FdKind::UnixPair {
                ino: ino2,
                peer: peer2,
                queued: queued2,
                ..
            },
        ) => {
            assert_eq!((ino, peer), (peer2, ino2));
            assert_eq!(*sock_type, libc::SOCK_STREAM);
            assert_eq!(queued, &[b"to-ten".to_vec()]);
            assert_eq!(queued2, &[b"to-eleven".to_vec()]);
        }
        other => panic!("fds 10 and 11: {other:?}"),
    }
    match kind(12) {
        FdKind::UnixPair {
            sock_type, queued, ..
        } => {
            assert_eq!(*sock_type, libc::SOCK_DGRAM);
            assert_eq!(queued, &[b"one".to_vec(), vec![], b"three".to_vec()]);
        }
        other => panic!("fd 12: {other:?}"),
    }

    let got = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let rp = Restored(got.pid);
    assert_eq!(kinds(rp.0), before);
    // What waited is read at the right end, each datagram whole (the empty one too), the
    // file at its offset; then the pings each end sent reach its peer: still pairs.
    assert_eq!(
        report(rp.0, &out, 1),
        ["solo 10=to-ten 11=to-eleven 12=[one][][three] 13= 14=piped file=45"]
    );
    assert_eq!(
        report(rp.0, &out, 2)[1],
        "solo 10=ping 11=ping 12=[ping] 13=[ping] 14= file=67"
    );
}

/// The inode of fd `fd` of `pid` (its link reads `kind:[inode]`).
fn inode(pid: i32, fd: i32) -> String {
    let t = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let t = t.to_string_lossy();
    t.split(":[")
        .nth(1)
        .unwrap()
        .trim_end_matches(']')
        .to_string()
}

#[test]
fn dump_check_names_a_pipe_and_a_socket_pair_that_lead_outside_the_tree() {
    // The python parent keeps the pipe's write end (fd 41) and the pair's socket at fd 43;
    // its child keeps the read end (fd 40) and the other socket (fd 42). Checked alone, the
    // child's tree is the child: both lead outside it.
    let dir = tempfile::tempdir().unwrap();
    let script = "import os,socket,time\n\
        r,w=os.pipe()\nos.dup2(r,40)\nos.dup2(w,41)\nos.close(r)\nos.close(w)\n\
        a,b=socket.socketpair()\nos.dup2(a.fileno(),42)\nos.dup2(b.fileno(),43)\na.close()\nb.close()\n\
        pid=os.fork()\n\
        if pid==0:\n os.close(41)\n os.close(43)\n time.sleep(120)\n\
        os.close(40)\nos.close(42)\nprint('child',pid)\nprint('ready',flush=True)\ntime.sleep(120)\n";
    let log = dir.path().join("log");
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]);
    let parent = Running::logged(&mut cmd, &log, true);
    let child: i32 = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("child ")?.parse().ok())
        .expect("child pid");
    let out = common::haul()
        .args(["dump", "--check", "--json", "--pid", &child.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let reasons: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let (pipe, sock, peer) = (inode(child, 40), inode(child, 42), inode(parent.pid, 43));
    assert_eq!(
        reasons,
        [
            format!(
                "pid {child} fd 40: pipe:[{pipe}] leads to another process: its write end is \
                 held by no process of the tree, but by pid {} fd 41",
                parent.pid
            ),
            format!(
                "pid {child} fd 42: socket:[{sock}] (UNIX, a socket pair) leads to another \
                 process: its peer socket:[{peer}] is held by no process of the tree"
            ),
        ],
        "{v}"
    );
    // The whole tree holds both ends of both: nothing to refuse.
    let out = common::haul()
        .args(["dump", "--check", "--pid", &parent.pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let _ = nix::sys::signal::kill(Pid::from_raw(child), nix::sys::signal::SIGKILL);
}

#[test]
fn a_forked_tree_shares_its_pipe_socket_pairs_and_file_offset_again_after_restore() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reads");
    let mut cmd = Command::new(fixture("sharefds"));
    cmd.arg(&out).arg("tree");
    let mut r = launch(cmd, &dir.path().join("log"));
    let parent = r.pid;
    let child = common::children_of(parent)[0];
    let before = (kinds(parent), kinds(child));
    let store = Store::open_or_create(&dir.path().join("store")).expect("create store");
    let set = dump_to_store(parent, &store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of the tree of pid {parent}: {e}"))
        .set;
    r.child.wait().expect("reap the dumped original");
    // Its child, killed with it, came to this test process (the subreaper): reap it, or its
    // pid stays taken by a zombie.
    let _ = haul::sys::host::reap(child);
    // The child's file is its parent's open file description; its pipe end and socket pair
    // ends are its own (the parent closed them), the other ends the parent's.
    let c = set
        .processes()
        .map(|(_, p)| p)
        .find(|p| p.pid == child)
        .expect("the child in the image");
    let f16 = c.fds.iter().find(|f| f.fd == 16).unwrap();
    assert_eq!(
        f16.inherited,
        Some(haul::image::FdRef {
            pid: parent,
            fd: 16
        })
    );
    for n in [10, 12, 14] {
        let f = c.fds.iter().find(|f| f.fd == n).unwrap();
        assert_eq!(f.inherited, None, "fd {n}");
    }

    let got = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore of the tree of pid {parent}: {e}"));
    assert_eq!(got.pid, parent);
    let _rp = Restored(parent);
    let _rc = Restored(child);
    assert_eq!((kinds(parent), kinds(child)), before);
    // What waited at each end is read there; the file's one offset moves for both; pings
    // sent by one process reach the other: the ends are connected across the two.
    assert_eq!(
        report(parent, &out, 2),
        [
            "parent 11=to-eleven 13= file=45",
            "child 10=to-tenping 12=[one][][three][ping] 14=piped file=67",
        ]
    );
    assert_eq!(
        report(parent, &out, 4)[2..],
        [
            "parent 11=ping 13=[ping] file=89",
            "child 10=ping 12=[ping] 14= file=--",
        ]
    );
}

#[test]
fn a_child_sharing_its_parents_fd_table_is_recorded_and_restored_sharing_it() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reads");
    let mut cmd = Command::new(fixture("sharefds"));
    cmd.arg(&out).arg("files");
    let mut r = launch(cmd, &dir.path().join("log"));
    let parent = r.pid;
    let child = common::children_of(parent)[0];
    assert!(haul::sys::process::same_fd_table(parent, child).unwrap());
    let store = Store::open_or_create(&dir.path().join("store")).expect("create store");
    let set = dump_to_store(parent, &store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of the tree of pid {parent}: {e}"))
        .set;
    r.child.wait().expect("reap the dumped original");
    // Its child, killed with it, came to this test process (the subreaper): reap it, or its
    // pid stays taken by a zombie.
    let _ = haul::sys::host::reap(child);
    let c = set.processes().map(|(_, p)| p).find(|p| p.pid == child);
    assert_eq!(c.expect("the child in the image").files_of, Some(parent));

    let got = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore of the tree of pid {parent}: {e}"));
    let _rp = Restored(got.pid);
    let _rc = Restored(child);
    assert!(haul::sys::process::same_fd_table(parent, child).unwrap());
    assert_eq!(
        report(parent, &out, 1),
        ["solo 10=to-ten 11=to-eleven 12=[one][][three] 13= 14=piped file=45"]
    );
}

#[test]
fn a_python_parent_and_child_talk_over_their_socket_pair_and_pipe_after_restore() {
    // The parent sends on a socket pair, its forked child upper-cases what it gets into a
    // pipe back. At the dump, the child's answer to a first message waits in the pipe.
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = "import os,select,socket,sys,signal\n\
        a,b=socket.socketpair()\nr,w=os.pipe()\npid=os.fork()\n\
        if pid==0:\n a.close()\n os.close(r)\n \
        while True:\n  m=b.recv(100)\n  if not m: break\n  os.write(w,m.upper())\n sys.exit(0)\n\
        b.close()\nos.close(w)\n\
        out=open(sys.argv[1],'a')\n\
        def usr1(*_):\n a.send(b'ping')\n got=b''\n \
        while not got.endswith(b'PING'): got+=os.read(r,1000)\n \
        out.write(got.decode()+'\\n')\n out.flush()\n\
        signal.signal(signal.SIGUSR1,usr1)\n\
        a.send(b'waiting-')\nselect.select([r],[],[])\n\
        print('child',pid)\nprint('ready',flush=True)\n\
        while True: signal.pause()\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]).arg(&out);
    let log = dir.path().join("log");
    let mut r = Running::logged(&mut cmd, &log, true);
    let parent = r.pid;
    let child: i32 = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("child ")?.parse().ok())
        .expect("child pid");
    let (set, store) = dump_kill(&mut r, dir.path());
    // The child, killed with its parent, came to this test process (the subreaper): reap it,
    // or its pid stays taken by a zombie.
    let _ = haul::sys::host::reap(child);
    let c = set.processes().map(|(_, p)| p).find(|p| p.pid == child);
    assert!(c.is_some(), "the child is in the image");
    let got = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore of the tree of pid {parent}: {e}"));
    let _rp = Restored(got.pid);
    let _rc = Restored(child);
    // The answer that waited in the pipe, then the new one: the pair and the pipe still join
    // the two processes. (Asked once the parent waits in pause() again.)
    let wchan = || std::fs::read_to_string(format!("/proc/{parent}/wchan")).unwrap_or_default();
    assert!(wait_for(Duration::from_secs(10), || wchan().contains("pause")));
    assert_eq!(report(parent, &out, 1), ["WAITING-PING"]);
    assert_eq!(report(parent, &out, 2)[1], "PING");
}

#[test]
fn a_socket_pair_with_fds_in_flight_is_refused_by_name_and_left_running() {
    // fd 41 holds a message carrying an fd (SCM_RIGHTS) sent from fd 40: not carried.
    let dir = tempfile::tempdir().unwrap();
    let script = "import os,socket,time\n\
        a,b=socket.socketpair()\nos.dup2(a.fileno(),40)\nos.dup2(b.fileno(),41)\n\
        socket.send_fds(a,[b'x'],[0])\na.close()\nb.close()\n\
        print('ready',flush=True)\ntime.sleep(120)\n";
    let log = dir.path().join("log");
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]);
    let r = Running::logged(&mut cmd, &log, true);
    let store = Store::open_or_create(&dir.path().join("store")).expect("create store");
    let e = dump_to_store(r.pid, &store, "test", &DumpOptions::default(), Some(1))
        .expect_err("fds in flight were carried");
    let sock = inode(r.pid, 41);
    assert!(
        e.to_string().contains(&format!(
            "pid {} fd 41: socket:[{sock}] (UNIX, a socket pair) has fds in flight in its queue \
             (SCM_RIGHTS): this is not supported yet",
            r.pid
        )),
        "{e}"
    );
    assert_eq!(common::tracer_pid(r.pid), Some(0));
    assert_eq!(common::proc_state(r.pid), Some('S'), "left running");
}
