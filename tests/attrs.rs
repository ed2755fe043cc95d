//! Issue #11, carry it or refuse it: credentials details and prctl-style attributes a restore
//! must give back. Each test starts a real python3 that sets the attribute, dumps it (killing
//! it), restores it under the same pid, and compares from outside (`/proc`) or by the
//! process's own report (the prctl values /proc does not show), before and after.
//!
//! Like tests/restore_real.rs, every test makes itself the subreaper first: restored
//! processes are re-parented away from haul and this machine's init does not reap.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{python3, send_signal, wait_for, Running};
use haul::dump::{dump_to_store, DumpOptions};
use haul::image::ImageSet;
use haul::restore::{restore, RestoreOptions};
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

fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// The python program every test runs: `SETUP` (python statements, with `libc`, `prctl` and
/// `worker_setup` defined) runs first; a worker thread runs `worker_setup()` then waits; on
/// SIGUSR1 the main thread and then the worker append their `report()` lines to argv[1].
const PROGRAM: &str = r#"
import ctypes, os, signal, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def prctl(*a):
    a = list(a) + [0] * (5 - len(a))
    r = libc.prctl(*[ctypes.c_ulong(x) for x in a])
    if r < 0:
        raise OSError(ctypes.get_errno(), "prctl %r" % (a,))
    return r
def prctl_int(op):
    v = ctypes.c_int(0)
    prctl(op, ctypes.addressof(v))
    return v.value
def report():
    # dumpable securebits thp_disable subreaper pdeathsig timerslack
    return "%d %d %d %d %d %d" % (prctl(3), prctl(27), prctl(42), prctl_int(37), prctl_int(2), prctl(30))
def worker_setup():
    pass
out = sys.argv[1]
req = threading.Event()
started = threading.Event()
SETUP
def worker():
    worker_setup()
    started.set()
    while True:
        req.wait()
        req.clear()
        with open(out + ".tmp", "a") as f:
            f.write(report() + "\n")
        os.rename(out + ".tmp", out)
# SIGUSR1 stays blocked and the main thread takes it with sigwait: no race with pause().
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
t = threading.Thread(target=worker, daemon=True)
t.start()
started.wait()
def on_usr1():
    with open(out + ".tmp", "w") as f:
        f.write(report() + "\n")
    req.set()
print("ready", flush=True)
while True:
    signal.sigwait({signal.SIGUSR1})
    on_usr1()
"#;

/// Starts PROGRAM with `setup`, under `setpriv setpriv_args` if any, writing into `dir`.
fn start(
    dir: &Path,
    setup: &str,
    worker: &str,
    setpriv_args: &[&str],
) -> (Running, std::path::PathBuf) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let script = dir.join("prog.py");
    let setup = format!(
        "{setup}\ndef worker_setup():\n    {}\n",
        if worker.is_empty() { "pass" } else { worker }
    );
    std::fs::write(&script, PROGRAM.replace("SETUP", &setup)).unwrap();
    let out = dir.join("report");
    let mut cmd = if setpriv_args.is_empty() {
        Command::new(python3())
    } else {
        let mut c = Command::new("setpriv");
        c.args(setpriv_args).arg("--").arg(python3());
        c
    };
    cmd.arg(&script).arg(&out);
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let r = Running::logged(&mut cmd, &dir.join("log"), true);
    (r, out)
}

/// The report lines of the process: main thread, then worker.
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
        lines.len() == 2
    });
    let log = std::fs::read_to_string(out.with_file_name("log")).unwrap_or_default();
    assert!(ok, "pid {pid} did not report: {lines:?}; its output: {log}");
    lines
}

fn status_lines(pid: i32, keys: &[&str]) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(k)))
        .map(String::from)
        .collect()
}

const CRED_KEYS: [&str; 8] = [
    "Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:",
];

/// Dumps `r` into a store under `dir` (killing it) and restores it under the same pid.
fn dump_and_restore(r: &mut Running, dir: &Path) -> Restored {
    let store = Store::open_or_create(&dir.join("store")).expect("create store");
    let d = dump_to_store(r.pid, &store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {}: {e}", r.pid));
    r.child.wait().expect("reap the dumped original");
    let set: ImageSet = d.set;
    let out = restore(&set, &store, &RestoreOptions::default())
        .unwrap_or_else(|e| panic!("restore of pid {}: {e}", r.pid));
    assert_eq!(out.pid, r.pid, "restored under another pid");
    Restored(out.pid)
}

/// Owner (uid, gid) of /proc/PID/status: root's when the process is not dumpable.
fn proc_owner(pid: i32) -> (u32, u32) {
    let md = std::fs::metadata(format!("/proc/{pid}/status")).unwrap();
    (md.uid(), md.gid())
}

/// Also keepcaps (securebits 0x10), which an unprivileged process may set for itself.
#[test]
fn an_unprivileged_process_keeps_its_dumpable_flag_and_proc_ownership() {
    adopt_orphans();
    for (setup, dumpable) in [("", 1), ("prctl(4, 0)", 0), ("prctl(8, 1)", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let args = ["--reuid=65534", "--regid=65534", "--clear-groups"];
        let (mut r, out) = start(dir.path(), setup, "", &args);
        let before = report(r.pid, &out);
        assert!(before[0].starts_with(&format!("{dumpable} ")), "{before:?}");
        if setup == "prctl(8, 1)" {
            assert!(
                before[0].starts_with("1 16 "),
                "keepcaps not set: {before:?}"
            );
        }
        let owner = proc_owner(r.pid);
        assert_eq!(
            owner,
            if dumpable == 1 {
                (65534, 65534)
            } else {
                (0, 0)
            }
        );
        let creds = status_lines(r.pid, &CRED_KEYS);
        let rp = dump_and_restore(&mut r, dir.path());
        assert_eq!(proc_owner(rp.0), owner, "/proc/{}/status owner", rp.0);
        assert_eq!(status_lines(rp.0, &CRED_KEYS), creds);
        assert_eq!(report(rp.0, &out), before);
    }
}

#[test]
fn a_root_process_keeps_its_supplementary_groups() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut r, out) = start(dir.path(), "", "", &["--groups=100"]);
    let creds = status_lines(r.pid, &CRED_KEYS);
    assert!(creds.contains(&"Groups:\t100 ".to_string()), "{creds:?}");
    let before = report(r.pid, &out);
    let rp = dump_and_restore(&mut r, dir.path());
    assert_eq!(status_lines(rp.0, &CRED_KEYS), creds);
    assert_eq!(report(rp.0, &out), before);
}

#[test]
fn fsuid_and_fsgid_that_differ_from_the_effective_ids_come_back() {
    adopt_orphans();
    // Root with fs ids of nobody (which drops the filesystem capabilities from its effective
    // set), and an unprivileged process whose fs ids are its real ids, not its effective ones.
    let cases: [(&str, &[&str]); 2] = [
        ("libc.setfsgid(65534); libc.setfsuid(65534)", &[]),
        (
            "libc.setfsgid(1000); libc.setfsuid(1000)",
            &[
                "--ruid=1000",
                "--euid=65534",
                "--rgid=1000",
                "--egid=65534",
                "--clear-groups",
            ],
        ),
    ];
    for (setup, args) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, out) = start(dir.path(), setup, "", args);
        let creds = status_lines(r.pid, &CRED_KEYS);
        let uid = creds
            .iter()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .clone();
        let ids: Vec<&str> = uid.split_whitespace().collect();
        assert_ne!(ids[2], ids[4], "fsuid not set: {uid}");
        let before = report(r.pid, &out);
        let rp = dump_and_restore(&mut r, dir.path());
        assert_eq!(status_lines(rp.0, &CRED_KEYS), creds, "setup {setup:?}");
        assert_eq!(report(rp.0, &out), before);
    }
}

#[test]
fn prctl_attributes_oom_score_adj_and_loginuid_come_back() {
    adopt_orphans();
    let me = std::fs::read_to_string("/proc/self/loginuid").unwrap_or_default();
    if me.trim() != "4294967295" {
        return common::skip(
            "prctl_attributes_oom_score_adj_and_loginuid_come_back",
            "this test's loginuid is set: its child cannot set one of its own",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // SIGWINCH and SIGURG as parent-death signals: ignored by default, harmless if sent.
    let setup = "\
prctl(4, 0)
prctl(28, (1 << 2) | (1 << 4))
prctl(41, 1)
prctl(36, 1)
prctl(1, 28)
prctl(29, 123456)
open('/proc/self/oom_score_adj', 'w').write('345')
open('/proc/self/loginuid', 'w').write('4242')
";
    // The worker alone disables speculative store bypass (where prctl controls it): the
    // restored worker, cloned from the main thread, must get it back by itself.
    let worker = "prctl(1, 23); prctl(29, 234567); prctl(52, 0) & 1 and prctl(53, 0, 4)";
    let (mut r, out) = start(dir.path(), setup, worker, &[]);
    let before = report(r.pid, &out);
    // dumpable 0, securebits NO_SETUID_FIXUP | KEEP_CAPS, THP disabled, subreaper, then
    // the main thread's and the worker's parent-death signal and timer slack.
    assert_eq!(before[0], "0 20 1 1 28 123456");
    assert_eq!(before[1], "0 20 1 1 23 234567");
    let keys = [
        "THP_enabled:",
        "Speculation_Store_Bypass:",
        "SpeculationIndirectBranch:",
    ];
    let outside = |pid: i32| -> Vec<String> {
        let mut v = status_lines(pid, &keys);
        // Speculation control is per thread: the worker's too.
        let mut tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        tids.sort();
        for tid in tids {
            let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
            v.extend(
                st.lines()
                    .filter(|l| l.starts_with("Speculation"))
                    .map(|l| format!("{tid} {l}")),
            );
        }
        for f in ["oom_score_adj", "loginuid", "timerslack_ns"] {
            v.push(format!(
                "{f}: {}",
                std::fs::read_to_string(format!("/proc/{pid}/{f}"))
                    .unwrap()
                    .trim()
            ));
        }
        v
    };
    let seen = outside(r.pid);
    assert!(seen.contains(&"THP_enabled:\t0".to_string()), "{seen:?}");
    assert!(seen.contains(&"oom_score_adj: 345".to_string()), "{seen:?}");
    assert!(seen.contains(&"loginuid: 4242".to_string()), "{seen:?}");
    if !seen.iter().any(|l| l.contains("thread mitigated")) {
        eprintln!("speculation control: not by prctl on this CPU, its part is not tested");
    }
    let rp = dump_and_restore(&mut r, dir.path());
    assert_eq!(outside(rp.0), seen);
    assert_eq!(report(rp.0, &out), before);
}

#[test]
fn a_loginuid_haul_may_not_set_is_refused_before_the_restore_spawns_anything() {
    adopt_orphans();
    let me = std::fs::read_to_string("/proc/self/loginuid").unwrap_or_default();
    if me.trim() != "4294967295" {
        return common::skip(
            "a_loginuid_haul_may_not_set_is_refused_before_the_restore_spawns_anything",
            "this test's loginuid is set: its children cannot set theirs",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // The process sets its loginuid to 4242 and has no CAP_AUDIT_CONTROL in any set, so
    // that a haul without it may restore everything else of it.
    let setup = "open('/proc/self/loginuid', 'w').write('4242')";
    let args = [
        "--bounding-set=-audit_control",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let (mut r, _out) = start(dir.path(), setup, "", &args);
    let store = Store::open_or_create(&dir.path().join("store")).expect("create store");
    let d = dump_to_store(r.pid, &store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {}: {e}", r.pid));
    r.child.wait().expect("reap the dumped original");
    // haul with a loginuid of its own (1234) and without CAP_AUDIT_CONTROL.
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            r#"echo 1234 > /proc/self/loginuid && exec setpriv --bounding-set=-audit_control "$@""#,
        )
        .arg("sh")
        .arg(common::haul_bin())
        .args(["restore", &d.set.id, "--store"])
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("its audit loginuid is 4242 and haul's is 1234")
            && stderr.contains("CAP_AUDIT_CONTROL"),
        "{stderr}"
    );
    // Refused before anything was spawned: the pid is still free.
    assert!(
        !Path::new(&format!("/proc/{}", r.pid)).exists(),
        "pid {} exists",
        r.pid
    );
}
