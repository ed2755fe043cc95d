//! Epoll and inotify instances through a dump (`--kill`) and a restore (issue #14): the
//! registrations and watches compared from outside (`/proc/PID/fdinfo`), then proved to work
//! by the fixture itself and by a real program (python3's asyncio event loop with an inotify
//! fd in it); and io_uring refused by name, saying how to do without it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{clean_command, fixture, python3, send_signal, wait_for, Running};
use haul::dump::{dump, dump_to_store, DumpOptions, VecSink};
use haul::image::ImageSet;
use haul::restore::{restore, PidChoice};
use haul::store::Store;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// Makes this test process the reaper of orphans (restored processes become our children).
fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// A restored process: killed and reaped when dropped.
struct Restored {
    pid: i32,
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), nix::sys::signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.pid), None);
    }
}

/// `cmd` as the runner launches it: no inherited fds above 2, output into `log`.
fn launch(mut cmd: Command, log: &Path) -> Running {
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    Running::logged(&mut cmd, log, true)
}

/// Dumps `r` into a new store under `dir` (killing it), reaps it, restores it under its own
/// pid with `--verify state`; returns it with the image set.
fn dump_kill_restore(r: &mut Running, dir: &Path) -> (Restored, ImageSet) {
    let store = Store::open_or_create(&dir.join("store")).expect("create store");
    let d = dump_to_store(r.pid, &store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {}: {e}", r.pid));
    r.child.wait().expect("reap the dumped original");
    let set: ImageSet = d.set;
    // Events an inotify instance held unread are dropped, and the dump says so.
    for f in &set.process.as_ref().unwrap().fds {
        if let haul::image::FdKind::Inotify(i) = &f.kind {
            if i.queued_bytes > 0 {
                let want = format!("fd {}: inotify: {} bytes of events", f.fd, i.queued_bytes);
                assert!(
                    d.stats.warnings.iter().any(|w| w.contains(&want)),
                    "{:?}",
                    d.stats.warnings
                );
            }
        }
    }
    let out = restore(&set, &store, &common::verified(PidChoice::Same))
        .unwrap_or_else(|e| panic!("restore of pid {}: {e}", r.pid));
    assert_eq!(out.pid, r.pid);
    (Restored { pid: out.pid }, set)
}

/// What fdinfo shows of every epoll and inotify fd of `pid`, by fd: each registration as
/// `tfd events data` and each watch as `wd mask ino sdev`, sorted (the kernel lists
/// registrations by the address of their file).
fn event_fds(pid: i32) -> BTreeMap<i32, Vec<String>> {
    let mut out = BTreeMap::new();
    for fd in haul::proc::fds(pid).unwrap() {
        let target = haul::proc::fd_target(pid, fd).unwrap();
        if target != "anon_inode:[eventpoll]" && target != "anon_inode:inotify" {
            continue;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.first() {
                    // tfd: N events: E data: D pos:P ino:I sdev:S (the target's inode is new
                    // for a pipe or socket: left out)
                    Some(&"tfd:") => Some(format!("tfd {} events {} data {}", w[1], w[3], w[5])),
                    // inotify wd:W ino:I sdev:S mask:M ...
                    Some(&"inotify") => Some(w[1..5].join(" ")),
                    _ => None,
                }
            })
            .collect();
        lines.sort();
        out.insert(fd, lines);
    }
    out
}

/// The report lines the fixture appended to `out` (waits for `n` rounds).
fn rounds(out: &Path, n: usize) -> Vec<String> {
    let mut text = String::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            text = std::fs::read_to_string(out).unwrap_or_default();
            text.matches("done\n").count() >= n
        }),
        "no report {n} in {}: {text:?}",
        out.display()
    );
    text.lines().map(str::to_string).collect()
}

/// The words after `name` on its line, sorted (epoll_wait reports in ready-list order).
fn words(line: &str, name: &str) -> Vec<String> {
    let mut w: Vec<String> = line
        .strip_prefix(name)
        .unwrap_or_else(|| panic!("{line:?} is not a {name} line"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    w.sort();
    w
}

#[test]
fn epoll_registrations_and_inotify_watches_come_back_and_work() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    for sub in ["a", "b"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("c"), b"c").unwrap();
    let out = dir.path().join("out");
    let mut cmd = Command::new(fixture("epollfix"));
    cmd.arg(&out).arg(&d);
    let mut r = launch(cmd, &dir.path().join("log"));
    let before = event_fds(r.pid);
    // Two epolls (the outer one with seven registrations, the one-shot that fired among
    // them) and one inotify instance with watches 1 and 3.
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before
        .values()
        .any(|v| v.len() == 7 && v.iter().any(|l| l.ends_with("events 40000000 data 8888"))));
    // An event queued unread at the dump: not carried (dropped, with a warning).
    std::fs::create_dir(d.join("a/pre")).unwrap();
    let (rp, set) = dump_kill_restore(&mut r, dir.path());
    assert_eq!(event_fds(rp.pid), before);
    let recorded = set
        .process
        .as_ref()
        .unwrap()
        .fds
        .iter()
        .find_map(|f| match &f.kind {
            haul::image::FdKind::Inotify(i) => Some(i.queued_bytes),
            _ => None,
        });
    // One event with the name "pre" padded: 16 + 16 bytes.
    assert_eq!(recorded, Some(32));

    // Watched: c's attributes, a's entries.
    std::fs::set_permissions(
        d.join("c"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir(d.join("a/new")).unwrap();
    send_signal(rp.pid, "USR1");
    let lines = rounds(&out, 1);
    // The socketpair end's pending edge (writable) is reported once; the one-shot (whose
    // eventfd stays readable) stays disabled; the rest report what was written to them.
    assert_eq!(words(&lines[0], "first"), ["2222:4"], "{lines:?}");
    assert_eq!(
        words(&lines[1], "then"),
        ["1111:1", "2222:5", "3333:1", "5555:1", "6666:1"],
        "{lines:?}"
    );
    // IN_ATTRIB on wd 3, IN_CREATE|IN_ISDIR on wd 1; no IN_IGNORED of the gap filler, and
    // not the event queued at the dump.
    assert_eq!(
        lines[2],
        format!(
            "inotify {:x}:{:x} {:x}:{:x}:new",
            3,
            libc::IN_ATTRIB,
            1,
            libc::IN_CREATE | libc::IN_ISDIR
        ),
        "{lines:?}"
    );
    // A second round: nothing left over, the one-shot still disabled.
    send_signal(rp.pid, "USR1");
    let lines = rounds(&out, 2);
    assert_eq!(words(&lines[4], "first"), Vec::<String>::new(), "{lines:?}");
    assert_eq!(
        words(&lines[5], "then"),
        ["1111:1", "2222:5", "3333:1", "5555:1", "6666:1"],
        "{lines:?}"
    );
}

/// A python3 asyncio loop with a pipe and an inotify fd as readers: it appends what it read
/// to OUT, and writes the pipe's read end number to OUT.fd.
const ASYNCIO: &str = r#"
import asyncio, ctypes, os, struct, sys
out = open(sys.argv[1], 'a', buffering=1)
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
ino = libc.inotify_init1(os.O_NONBLOCK)
assert libc.inotify_add_watch(ino, sys.argv[2].encode(), 0x100) == 1
def on_pipe():
    out.write('pipe %s\n' % os.read(r, 100).decode())
def on_inotify():
    buf = os.read(ino, 4096)
    i = 0
    while i < len(buf):
        wd, mask, cookie, n = struct.unpack_from('iIII', buf, i)
        name = buf[i + 16:i + 16 + n].rstrip(b'\0').decode()
        out.write('inotify %d %x %s\n' % (wd, mask, name))
        i += 16 + n
loop = asyncio.new_event_loop()
loop.add_reader(r, on_pipe)
loop.add_reader(ino, on_inotify)
open(sys.argv[1] + '.fd', 'w').write(str(r))
print('ready', flush=True)
loop.run_forever()
"#;

/// Waits until `out` holds line `want`.
fn wait_line(out: &Path, want: &str) {
    let mut text = String::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            text = std::fs::read_to_string(out).unwrap_or_default();
            text.lines().any(|l| l == want)
        }),
        "{want:?} never came: {text:?}"
    );
}

#[test]
fn a_python_asyncio_loop_with_a_pipe_and_inotify_reader_runs_on_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let watched = dir.path().join("w");
    std::fs::create_dir(&watched).unwrap();
    let out = dir.path().join("out");
    let mut cmd = clean_command(python3());
    cmd.args(["-c", ASYNCIO]).arg(&out).arg(&watched);
    let mut r = Running::logged(&mut cmd, &dir.path().join("log"), true);
    let rfd: i32 = std::fs::read_to_string(dir.path().join("out.fd"))
        .unwrap()
        .parse()
        .unwrap();
    let send = |pid: i32, what: &str| {
        // The pipe opened through /proc is that very pipe.
        std::fs::write(format!("/proc/{pid}/fd/{rfd}"), what).unwrap();
    };
    send(r.pid, "before");
    wait_line(&out, "pipe before");
    std::fs::write(watched.join("x1"), b"").unwrap();
    wait_line(&out, &format!("inotify 1 {:x} x1", libc::IN_CREATE));
    let before = event_fds(r.pid);
    let (rp, _) = dump_kill_restore(&mut r, dir.path());
    assert_eq!(event_fds(rp.pid), before);
    send(rp.pid, "after");
    wait_line(&out, "pipe after");
    std::fs::write(watched.join("x2"), b"").unwrap();
    wait_line(&out, &format!("inotify 1 {:x} x2", libc::IN_CREATE));
}

#[test]
fn an_io_uring_instance_is_refused_by_name_saying_how_to_do_without() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut r = Running::logged(&mut clean_command(fixture("epolluring")), &log, false);
    let ready = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.lines().any(|l| l == "ready"))
            || r.child.try_wait().ok().flatten().is_some()
    });
    assert!(ready);
    if !std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .any(|l| l == "ready")
    {
        common::skip(
            "an_io_uring_instance_is_refused_by_name_saying_how_to_do_without",
            "this kernel makes no io_uring",
        );
        return;
    }
    let fd = haul::proc::fds(r.pid)
        .unwrap()
        .into_iter()
        .find(|&fd| haul::proc::fd_target(r.pid, fd).unwrap() == "anon_inode:[io_uring]")
        .expect("an io_uring fd");
    let opts = DumpOptions {
        leave_running: true,
        ..DumpOptions::default()
    };
    let msg = match dump(r.pid, &opts, &mut VecSink::default()) {
        Err(e) if e.is_refusal() => e.reasons().remove(0),
        other => panic!("not refused: {:?}", other.map(|_| ())),
    };
    assert_eq!(
        msg,
        format!(
            "pid {} fd {fd}: anon_inode:[io_uring] (io_uring) is not supported: its rings and \
             the requests in flight cannot be carried. Start the program without it: \
             UV_USE_IO_URING=0 for libuv (Node.js), or for every program the sysctl \
             kernel.io_uring_disabled=2",
            r.pid
        )
    );
    assert!(common::alive(r.pid), "the refused process was harmed");
}

#[test]
fn an_epoll_target_closed_but_still_registered_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // The pipe's read end is registered as fd r, then closed there: its file lives on in a
    // dup, so the registration stays. With `reuse`, fd r is another file now.
    for reuse in [false, true] {
        let script = format!(
            "import os,select,time\nep=select.epoll()\nr,w=os.pipe()\nkeep=os.dup(r)\n\
             ep.register(r,select.EPOLLIN)\nos.close(r)\n\
             if {}: assert os.open('/dev/null',os.O_RDONLY)==r\n\
             open('{}','w').write('%d %d'%(ep.fileno(),r))\nprint('ready',flush=True)\n\
             time.sleep(60)",
            if reuse { "True" } else { "False" },
            dir.path().join("fds").display()
        );
        let p = Running::logged(
            clean_command(python3()).args(["-c", &script]),
            &dir.path().join("py.log"),
            true,
        );
        let fds = std::fs::read_to_string(dir.path().join("fds")).unwrap();
        let (ep, r) = fds.split_once(' ').unwrap();
        let opts = DumpOptions {
            leave_running: true,
            ..DumpOptions::default()
        };
        let msg = match dump(p.pid, &opts, &mut VecSink::default()) {
            Err(e) if e.is_refusal() => e.reasons().remove(0),
            other => panic!("not refused: {:?}", other.map(|_| ())),
        };
        let now = if reuse {
            format!("; fd {r} is another file now")
        } else {
            String::new()
        };
        assert_eq!(
            msg,
            format!(
                "pid {} fd {ep}: epoll target fd {r} is closed but still registered (its file \
                 lives on elsewhere{now}): this is not supported",
                p.pid
            )
        );
        assert!(common::alive(p.pid));
    }
}
