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
    assert!(ok, "no report {n} from pid {pid}: {lines:?}");
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
                 held by no process of the tree"
            ),
            format!(
                "pid {child} fd 42: socket:[{sock}] (UNIX, a socket pair) leads to another \
                 process: its peer socket:[{peer}] is held by no process of the tree"
            ),
        ],
        "{v}"
    );
    let _ = nix::sys::signal::kill(Pid::from_raw(child), nix::sys::signal::SIGKILL);
}
