//! Carry it or refuse it: state a restore would lose or change is refused by the dump, by name,
//! before anything is touched (never an image its own restore rejects); what is carried comes
//! back exactly, compared from outside before and after.

mod common;

use common::{clean_command, haul, python3, wait_for, Running};
use std::path::Path;
use std::time::Duration;

/// The restored process is reparented to the test (a subreaper), so it can be reaped.
fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// A python3 running `script` (which prints `ready`), stdio on a log file in `dir`.
fn python(dir: &Path, script: &str) -> Running {
    Running::logged(
        clean_command(python3()).args(["-c", script]),
        &dir.join("py.log"),
        true,
    )
}

/// `haul dump --check --json` of `pid`: (checkpointable, reasons).
fn check(pid: i32) -> (bool, Vec<String>) {
    let out = haul()
        .args(["dump", "--check", "--json", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let reasons = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    (v["checkpointable"] == true, reasons)
}

/// A dump with --kill must refuse `pid` naming `what`, and leave it alive and untraced.
fn assert_refused(pid: i32, store: &Path, what: &[&str]) {
    let (ok, reasons) = check(pid);
    assert!(!ok, "pid {pid} should not be checkpointable");
    for w in what {
        assert!(
            reasons.iter().any(|r| r.contains(w)),
            "{w:?} not in {reasons:#?}"
        );
    }
    let out = haul()
        .args(["dump", "--kill", "--pid", &pid.to_string(), "--store"])
        .arg(store)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(what.iter().all(|w| err.contains(w)), "{err}");
    assert!(common::alive(pid), "a refused dump killed pid {pid}");
    assert_eq!(common::tracer_pid(pid), Some(0));
}

/// What an fd is, seen from outside: target, flags, and the inode it has open.
fn fd_state(pid: i32, fd: i32) -> (String, u32, u64) {
    use std::os::unix::fs::MetadataExt;
    let link = format!("/proc/{pid}/fd/{fd}");
    (
        std::fs::read_link(&link).unwrap().display().to_string(),
        haul::proc::fdinfo(pid, fd).unwrap().flags,
        std::fs::metadata(&link).unwrap().ino(),
    )
}

/// Dumps `p` with --kill into `store` (and reaps it), restores it with its pid, its state
/// compared with the image before it runs (`--verify state`); returns the restored pid.
fn dump_and_restore(p: &mut Running, store: &Path) -> i32 {
    let pid = p.pid;
    let out = haul()
        .args([
            "dump",
            "--kill",
            "--json",
            "--pid",
            &pid.to_string(),
            "--store",
        ])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let set = v["set"].as_str().unwrap().to_string();
    p.child.wait().unwrap();
    let out = haul()
        .args(["restore", &set, "--json", "--verify", "state", "--store"])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

/// Kills and reaps a restored process.
fn finish(pid: i32) {
    use nix::sys::{signal, wait};
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = signal::kill(p, signal::Signal::SIGKILL);
    let _ = wait::waitpid(p, None);
}

#[test]
fn o_path_descriptors_and_a_symlink_held_with_o_nofollow_come_back_exactly() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, "x").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let script = format!(
        "import os,time\na=os.open({file:?},os.O_PATH)\nb=os.open({link:?},os.O_PATH|os.O_NOFOLLOW)\n\
         os.dup2(a,40)\nos.dup2(b,41)\nprint('ready',flush=True)\ntime.sleep(600)"
    );
    let mut p = python(dir.path(), &script);
    let before: Vec<_> = [40, 41].map(|fd| fd_state(p.pid, fd)).into();
    assert!(before[1].0.ends_with("/link"), "{before:?}");
    let r = dump_and_restore(&mut p, &dir.path().join("store"));
    let after: Vec<_> = [40, 41].map(|fd| fd_state(r, fd)).into();
    finish(r);
    assert_eq!(after, before);
}

#[test]
fn a_node_of_the_null_device_made_elsewhere_comes_back_as_itself_not_as_dev_null() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("mynull");
    let script = format!(
        "import os,time\nos.mknod({node:?},0o20600,os.makedev(1,3))\nos.dup2(os.open({node:?},os.O_RDWR),40)\n\
         print('ready',flush=True)\ntime.sleep(600)"
    );
    let mut p = python(dir.path(), &script);
    let before = fd_state(p.pid, 40);
    assert!(before.0.ends_with("/mynull"), "{before:?}");
    let r = dump_and_restore(&mut p, &dir.path().join("store"));
    let after = fd_state(r, 40);
    finish(r);
    assert_eq!(after, before);
}

#[test]
fn what_a_restore_here_cannot_give_back_is_refused_by_the_dump_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let gone = dir.path().join("gone");
    let node = dir.path().join("node");
    let under = dir.path().join("under");
    let hidden = under.join("f");
    std::fs::create_dir(&under).unwrap();
    std::fs::write(&hidden, "below").unwrap();
    // A deleted current directory; a deleted device node held open; a file whose path will
    // name another file (a file system mounted over its directory).
    let script = format!(
        "import os,time\nos.mkdir({gone:?})\nos.chdir({gone:?})\nos.rmdir({gone:?})\n\
         os.mknod({node:?},0o20600,os.makedev(1,3))\nos.dup2(os.open({node:?},os.O_RDWR),40)\nos.unlink({node:?})\n\
         os.dup2(os.open({hidden:?},os.O_RDONLY),41)\n\
         print('ready',flush=True)\ntime.sleep(600)"
    );
    let p = python(dir.path(), &script);
    let _over = match common::Tmpfs::mount(&under, "1m") {
        Ok(t) => t,
        Err(why) => {
            return common::skip(
                "what_a_restore_here_cannot_give_back_is_refused_by_the_dump_naming_it",
                &why,
            )
        }
    };
    std::fs::write(&hidden, "above").unwrap();
    assert_refused(
        p.pid,
        &store,
        &[
            "current directory",
            "fd 40: ",
            "deleted device file",
            "fd 41: ",
            "no longer names the file",
        ],
    );
}

#[test]
fn a_current_directory_in_proc_of_a_process_that_is_gone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let script = "import os,subprocess,time\nc=subprocess.Popen(['sleep','60'])\nos.chdir('/proc/%d' % c.pid)\n\
                  c.kill()\nc.wait()\nprint('ready',flush=True)\ntime.sleep(600)";
    let p = python(dir.path(), script);
    assert_refused(
        p.pid,
        &dir.path().join("store"),
        &["its current directory /proc/"],
    );
}

#[test]
fn a_network_namespace_of_its_own_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = clean_command("unshare");
    cmd.args(["-n", "--"]).arg(python3()).args([
        "-c",
        "import time\nprint('ready',flush=True)\ntime.sleep(600)",
    ]);
    // unshare execs python3: the pid is python's, in a network namespace of its own.
    let p = Running::logged(&mut cmd, &dir.path().join("log"), true);
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", p.pid)).unwrap();
    if theirs == std::fs::read_link("/proc/self/ns/net").unwrap() {
        return common::skip(
            "a_network_namespace_of_its_own_is_refused_by_name",
            "unshare -n did not make a network namespace",
        );
    }
    assert!(wait_for(Duration::from_secs(5), || common::alive(p.pid)));
    assert_refused(
        p.pid,
        &dir.path().join("store"),
        &["in a network namespace of its own (net:["],
    );
}
