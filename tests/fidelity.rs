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
    dump_and_restore_with(p, store, &[])
}

/// [`dump_and_restore`] with more `haul dump` arguments (pre-copy, say).
fn dump_and_restore_with(p: &mut Running, store: &Path, more: &[&str]) -> i32 {
    let pid = p.pid;
    let out = dump_kill_json(pid, store).args(more).output().unwrap();
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

/// `haul dump --kill --json --pid PID --store STORE`, to run.
fn dump_kill_json(pid: i32, store: &Path) -> std::process::Command {
    let mut c = haul();
    c.args([
        "dump",
        "--kill",
        "--json",
        "--pid",
        &pid.to_string(),
        "--store",
    ])
    .arg(store);
    c
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

/// The value of the `field:` line of the mapping that starts at `start` (hex, as
/// /proc/PID/maps prints it) in /proc/PID/smaps.
fn smaps_field(pid: i32, start: &str, field: &str) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_it = false;
    for l in smaps.lines() {
        if let Some((range, _)) = l.split_once(' ') {
            if range.contains('-') && range.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                in_it = range.split('-').next() == Some(start);
                continue;
            }
        }
        if let (true, Some(v)) = (
            in_it,
            l.strip_prefix(field).and_then(|r| r.strip_prefix(':')),
        ) {
            return v.trim().to_string();
        }
    }
    panic!("pid {pid}: no mapping at {start}, or no {field} in it");
}

/// VmFlags of the mapping that starts at `start` (hex, as /proc/PID/maps prints it).
fn vm_flags(pid: i32, start: &str) -> Vec<String> {
    // uffd registrations come and go with tracking and lazy restores.
    let mut v: Vec<String> = smaps_field(pid, start, "VmFlags")
        .split_whitespace()
        .filter(|x| !matches!(*x, "um" | "uw"))
        .map(String::from)
        .collect();
    v.sort();
    v
}

#[test]
fn mapping_advice_and_a_shared_file_mapping_that_may_become_writable_come_back() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared");
    std::fs::write(&file, vec![7u8; 4096]).unwrap();
    let go = dir.path().join("go");
    let out = dir.path().join("out");
    // A read-only shared mapping of a file opened read-write (so VM_MAYWRITE), and anonymous
    // regions advised MADV_SEQUENTIAL and MADV_RANDOM. Once `go` exists, the program makes
    // the shared mapping writable and writes through it, and says how that went.
    let script = format!(
        "import ctypes,os,time\nlibc=ctypes.CDLL(None,use_errno=True)\n\
         libc.mmap.restype=ctypes.c_void_p\nlibc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]\n\
         libc.mprotect.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int]\nlibc.madvise.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int]\n\
         fd=os.open({file:?},os.O_RDWR)\nsh=libc.mmap(None,4096,1,1,fd,0)\nos.close(fd)\n\
         seq=libc.mmap(None,8192,3,0x22,-1,0)\nrnd=libc.mmap(None,12288,3,0x22,-1,0)\n\
         assert libc.madvise(seq,8192,2)==0 and libc.madvise(rnd,12288,1)==0\n\
         print('%x %x %x' % (sh,seq,rnd),flush=True)\nprint('ready',flush=True)\n\
         while not os.path.exists({go:?}): time.sleep(0.01)\n\
         r=libc.mprotect(sh,4096,3)\ne=ctypes.get_errno()\n\
         if r==0: ctypes.memset(sh,65,1)\n\
         open({out:?}+'.tmp','w').write('%d %d' % (r,e))\nos.rename({out:?}+'.tmp',{out:?})\ntime.sleep(600)"
    );
    let mut p = python(dir.path(), &script);
    let log = std::fs::read_to_string(dir.path().join("py.log")).unwrap();
    let addrs: Vec<String> = log
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .map(String::from)
        .collect();
    let before: Vec<_> = addrs.iter().map(|a| vm_flags(p.pid, a)).collect();
    assert!(before[0].contains(&"mw".to_string()), "{before:?}");
    assert!(before[1].contains(&"sr".to_string()), "{before:?}");
    assert!(before[2].contains(&"rr".to_string()), "{before:?}");
    let r = dump_and_restore(&mut p, &dir.path().join("store"));
    let after: Vec<_> = addrs.iter().map(|a| vm_flags(r, a)).collect();
    std::fs::write(&go, "").unwrap();
    let ok = wait_for(Duration::from_secs(10), || out.exists());
    let result = std::fs::read_to_string(&out).unwrap_or_default();
    finish(r);
    assert_eq!(
        after, before,
        "VmFlags of the shared, sequential and random mappings"
    );
    assert!(ok, "the restored program did not answer");
    assert_eq!(
        result, "0 0",
        "mprotect(PROT_READ|PROT_WRITE) of the shared mapping: ret errno"
    );
    assert_eq!(
        std::fs::read(&file).unwrap()[0],
        b'A',
        "the write did not reach the file"
    );
}

/// `SigCgt`, `SigBlk` and `ShdPnd` of `pid`.
fn signal_state(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("SigCgt") || l.starts_with("SigBlk") || l.starts_with("ShdPnd"))
        .map(String::from)
        .collect()
}

/// A python3 with its own SIGTRAP handler, SIGTRAP blocked and one pending (raised by itself).
/// Once `go` exists it unblocks SIGTRAP and writes the signals its handler saw to `out`.
fn sigtrap_program(dir: &Path) -> (Running, std::path::PathBuf, std::path::PathBuf) {
    let go = dir.join("go");
    let out = dir.join("out");
    let script = format!(
        "import os,signal,time\ngot=[]\nsignal.signal(signal.SIGTRAP,lambda s,f: got.append(s))\n\
         signal.pthread_sigmask(signal.SIG_BLOCK,[signal.SIGTRAP])\nos.kill(os.getpid(),signal.SIGTRAP)\n\
         print('ready',flush=True)\nwhile not os.path.exists({go:?}): time.sleep(0.01)\n\
         signal.pthread_sigmask(signal.SIG_UNBLOCK,[signal.SIGTRAP])\n\
         open({out:?}+'.tmp','w').write(repr(got))\nos.rename({out:?}+'.tmp',{out:?})\ntime.sleep(600)"
    );
    (python(dir, &script), go, out)
}

#[test]
fn a_dump_leaves_the_targets_own_sigtrap_handler_and_pending_sigtrap_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (p, go, out) = sigtrap_program(dir.path());
    let before = signal_state(p.pid);
    let st = haul()
        .args([
            "dump",
            "--leave-running",
            "--pid",
            &p.pid.to_string(),
            "--store",
        ])
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(
        signal_state(p.pid),
        before,
        "the dump changed the target's signals"
    );
    std::fs::write(&go, "").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || out.exists()),
        "no answer"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "[5]");
    assert!(common::alive(p.pid));
}

#[test]
fn a_restored_process_keeps_its_sigtrap_handler_and_gets_its_pending_sigtrap() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut p, go, out) = sigtrap_program(dir.path());
    let before = signal_state(p.pid);
    let r = dump_and_restore(&mut p, &dir.path().join("store"));
    let after = signal_state(r);
    std::fs::write(&go, "").unwrap();
    let answered = wait_for(Duration::from_secs(10), || out.exists());
    let alive = common::alive(r);
    finish(r);
    assert_eq!(
        after, before,
        "signal handlers, mask or pending signals changed"
    );
    assert!(
        answered && alive,
        "the restored process died of its own SIGTRAP"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "[5]");
}

/// Bit of signal `sig` in the `ShdPnd` mask of `pid`.
fn shared_pending(pid: i32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    mask & (1 << (sig - 1)) != 0
}

#[test]
fn a_signal_sent_during_the_freeze_interrupts_the_restored_pause_as_it_would_have_the_live_one() {
    // python's signal.pause() is pause(2): a handled signal makes it return EINTR, and only
    // then does python run the handler. Were the restored pause() run again after the
    // signal's C handler, the python handler would never run.
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = format!(
        "import signal\n\
         signal.signal(signal.SIGUSR1,lambda s,f: open({out:?},'a').write('usr1\\n'))\n\
         print('ready',flush=True)\nwhile True: signal.pause()\n"
    );
    let mut p = python(dir.path(), &script);
    let in_pause = |pid: i32| {
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                .is_ok_and(|s| s.starts_with(&format!("{} ", libc::SYS_pause)))
        })
    };
    assert!(in_pause(p.pid));
    let held = dir.path().join("held");
    let store = dir.path().join("store");
    let dump = dump_kill_json(p.pid, &store)
        .env("HAUL_TEST_HOLD_FROZEN", &held)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || held.exists()),
        "the dump never froze pid {}",
        p.pid
    );
    assert_eq!(common::proc_state(p.pid), Some('t'));
    common::send_signal(p.pid, "USR1");
    assert!(shared_pending(p.pid, libc::SIGUSR1), "SIGUSR1 not pending");
    std::fs::remove_file(&held).unwrap();
    let o = dump.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    p.child.wait().unwrap();
    assert!(!out.exists(), "the handler ran before the dump");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = haul()
        .args([
            "restore",
            v["set"].as_str().unwrap(),
            "--json",
            "--verify",
            "state",
        ])
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = v["pid"].as_i64().unwrap() as i32;
    let handled = wait_for(Duration::from_secs(10), || out.exists());
    // Back in pause(), and a second signal is handled once too.
    let paused = in_pause(r);
    common::send_signal(r, "USR1");
    let again = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s == "usr1\nusr1\n")
    });
    finish(r);
    assert!(
        handled,
        "the signal held during the freeze was never handled"
    );
    assert!(paused && again, "{:?}", std::fs::read_to_string(&out));
}

/// The cgroup v2 directory the test itself is in, if cgroup2 is mounted here.
fn own_cgroup2_dir() -> Option<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let at = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split(' ').nth(4).map(String::from))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new(&at).join(path.trim_start_matches('/')))
}

/// A cgroup directory removed (after its processes are gone) when dropped.
struct Cgroup(std::path::PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for sub in ["t/", ""] {
            let d = self.0.join(sub);
            let _ = wait_for(Duration::from_secs(5), || {
                std::fs::remove_dir(&d).is_ok() || !d.exists()
            });
        }
    }
}

#[test]
fn the_restored_process_and_its_threads_go_back_into_their_cgroups() {
    let name = "the_restored_process_and_its_threads_go_back_into_their_cgroups";
    adopt_orphans();
    let Some(base) = own_cgroup2_dir() else {
        return common::skip(name, "no cgroup2 hierarchy here");
    };
    let dir = tempfile::tempdir().unwrap();
    let cg = base.join(format!("haul-test-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&cg) {
        return common::skip(name, &format!("cannot make a cgroup ({e})"));
    }
    let cg = Cgroup(cg);
    let threaded = cg.0.join("t");
    std::fs::create_dir(&threaded).unwrap();
    std::fs::write(threaded.join("cgroup.type"), "threaded").unwrap();
    let script = "import threading,time\nthreading.Thread(target=time.sleep,args=(600,),daemon=True).start()\n\
                  print('ready',flush=True)\ntime.sleep(600)";
    let mut p = python(dir.path(), script);
    std::fs::write(cg.0.join("cgroup.procs"), p.pid.to_string()).unwrap();
    let worker = haul::proc::tids(p.pid)
        .unwrap()
        .into_iter()
        .find(|t| *t != p.pid)
        .unwrap();
    std::fs::write(threaded.join("cgroup.threads"), worker.to_string()).unwrap();
    let read = |pid: i32, tid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")).unwrap()
    };
    let before = (read(p.pid, p.pid), read(p.pid, worker));
    assert_ne!(
        before.0, before.1,
        "the worker is not in the threaded cgroup"
    );
    let r = dump_and_restore(&mut p, &dir.path().join("store"));
    let after = (read(r, r), read(r, worker));
    finish(r);
    assert_eq!(after, before);
}

#[test]
fn a_restore_into_a_cgroup_that_is_gone_fails_naming_it_and_makes_nothing() {
    let name = "a_restore_into_a_cgroup_that_is_gone_fails_naming_it_and_makes_nothing";
    let Some(base) = own_cgroup2_dir() else {
        return common::skip(name, "no cgroup2 hierarchy here");
    };
    let dir = tempfile::tempdir().unwrap();
    let cg = base.join(format!("haul-gone-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&cg) {
        return common::skip(name, &format!("cannot make a cgroup ({e})"));
    }
    let guard = Cgroup(cg.clone());
    let mut p = python(
        dir.path(),
        "import time\nprint('ready',flush=True)\ntime.sleep(600)",
    );
    std::fs::write(cg.join("cgroup.procs"), p.pid.to_string()).unwrap();
    let store = dir.path().join("store");
    let out = dump_kill_json(p.pid, &store).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.child.wait().unwrap();
    drop(guard);
    assert!(!cg.exists());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = haul()
        .args(["restore", v["set"].as_str().unwrap(), "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no longer exists") && err.contains("haul-gone-"),
        "{err}"
    );
    assert!(!common::alive(p.pid), "something was restored");
}

#[test]
fn pages_of_a_file_mapping_past_the_end_of_its_file_are_absent_not_an_error() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("small");
    std::fs::write(&file, vec![b'x'; 4096]).unwrap();
    let go = dir.path().join("go");
    let out = dir.path().join("out");
    // A private mapping of four pages over a one-page file, its first page written (copied);
    // once `go` exists the program reads that page back.
    let script = format!(
        "import ctypes,os,time\nlibc=ctypes.CDLL(None)\nlibc.mmap.restype=ctypes.c_void_p\n\
         libc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]\n\
         fd=os.open({file:?},os.O_RDWR)\na=libc.mmap(None,16384,3,2,fd,0)\nos.close(fd)\nctypes.memset(a,66,10)\n\
         print('ready',flush=True)\nwhile not os.path.exists({go:?}): time.sleep(0.01)\n\
         open({out:?}+'.tmp','wb').write(ctypes.string_at(a,12))\nos.rename({out:?}+'.tmp',{out:?})\ntime.sleep(600)"
    );
    let mut p = python(dir.path(), &script);
    // Pre-copy with uffd-wp marks the pages never touched; the final dump must not take them
    // for pages to copy, nor fail on them.
    let r = dump_and_restore_with(
        &mut p,
        &dir.path().join("store"),
        &[
            "--predump",
            "2",
            "--interval",
            "50ms",
            "--tracker",
            "uffd-wp",
        ],
    );
    std::fs::write(&go, "").unwrap();
    let answered = wait_for(Duration::from_secs(10), || out.exists());
    finish(r);
    assert!(answered, "the restored program did not answer");
    assert_eq!(std::fs::read(&out).unwrap(), b"BBBBBBBBBBxx");
}

#[test]
fn the_core_dump_filter_comes_back() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let script = "open('/proc/self/coredump_filter','w').write('0x7f')\nimport time\nprint('ready',flush=True)\ntime.sleep(600)";
    let mut p = python(dir.path(), script);
    let read = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/coredump_filter")).unwrap();
    let before = read(p.pid);
    assert_eq!(before.trim(), "0000007f");
    let r = dump_and_restore(&mut p, &dir.path().join("store"));
    let after = read(r);
    finish(r);
    assert_eq!(after, before);
}

#[test]
fn membarrier_registrations_come_back() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let out = dir.path().join("out");
    // Registered for private expedited barriers; once `go` exists it issues one and reports
    // the result, errno and its registrations (EPERM would say the registration was lost).
    let script = format!(
        "import ctypes,os,time\nlibc=ctypes.CDLL(None,use_errno=True)\n\
         assert libc.syscall(324,16,0,0)==0\nprint(libc.syscall(324,512,0,0),flush=True)\n\
         print('ready',flush=True)\nwhile not os.path.exists({go:?}): time.sleep(0.01)\n\
         r=libc.syscall(324,8,0,0)\ne=ctypes.get_errno()\nm=libc.syscall(324,512,0,0)\n\
         open({out:?}+'.tmp','w').write('%d %d %d' % (r,e,m))\nos.rename({out:?}+'.tmp',{out:?})\ntime.sleep(600)"
    );
    let mut p = python(dir.path(), &script);
    let before = std::fs::read_to_string(dir.path().join("py.log")).unwrap();
    assert_eq!(before.lines().next(), Some("16"), "{before}");
    let r = dump_and_restore(&mut p, &dir.path().join("store"));
    std::fs::write(&go, "").unwrap();
    let answered = wait_for(Duration::from_secs(10), || out.exists());
    finish(r);
    assert!(answered, "the restored program did not answer");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "0 0 16");
}

/// Rss (kB) of the mapping starting at `start` (hex), and whether any mapping of `pid` is still
/// registered with a userfaultfd for missing pages (VmFlags `um`).
fn rss_and_uffd(pid: i32, start: &str) -> (u64, bool) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let registered = smaps
        .lines()
        .filter_map(|l| l.strip_prefix("VmFlags:"))
        .any(|f| f.split_whitespace().any(|x| x == "um"));
    let rss = smaps_field(pid, start, "Rss");
    (
        rss.trim_end_matches("kB").trim().parse().unwrap(),
        registered,
    )
}

/// An eager restore places private anonymous pages through a userfaultfd of the restored
/// process: the memory must come back byte for byte with the same pages present (sparse
/// regions stay sparse, a read-only mapping keeps its data), and nothing may stay registered,
/// or the restored program would hang on its next fault in a page it never had.
#[test]
fn anonymous_memory_comes_back_exact_and_sparse_and_no_userfaultfd_stays() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let out = dir.path().join("out");
    // 16 MiB written in every other 64 KiB (the rest never touched), and 1 MiB of data made
    // read-only. On `go`, the program reads both whole (faulting in the pages it never had)
    // and writes into a page it never had, then reports both checksums.
    let script = format!(
        "import ctypes,os,time,hashlib\nlibc=ctypes.CDLL(None,use_errno=True)\n\
         libc.mmap.restype=ctypes.c_void_p\nlibc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]\n\
         libc.mprotect.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int]\n\
         S=16<<20\nR=1<<20\nsp=libc.mmap(None,S,3,0x22,-1,0)\nro=libc.mmap(None,R,3,0x22,-1,0)\n\
         for o in range(0,S,128<<10): ctypes.memmove(sp+o,os.urandom(65536),65536)\n\
         ctypes.memmove(ro,os.urandom(R),R)\nassert libc.mprotect(ro,R,1)==0\n\
         sums=lambda: hashlib.sha256(ctypes.string_at(sp,S)).hexdigest()+' '+hashlib.sha256(ctypes.string_at(ro,R)).hexdigest()\n\
         print('%x %x %s' % (sp,ro,sums()),flush=True)\nprint('ready',flush=True)\n\
         while not os.path.exists({go:?}): time.sleep(0.01)\n\
         s=sums()\nctypes.memset(sp+65536,7,1)\n\
         open({out:?}+'.tmp','w').write(s)\nos.rename({out:?}+'.tmp',{out:?})\ntime.sleep(600)"
    );
    let mut p = python(dir.path(), &script);
    let log = std::fs::read_to_string(dir.path().join("py.log")).unwrap();
    let first: Vec<String> = log
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .map(String::from)
        .collect();
    let (sparse, ro, sums) = (&first[0], &first[1], format!("{} {}", first[2], first[3]));
    let before = (rss_and_uffd(p.pid, sparse), rss_and_uffd(p.pid, ro));
    assert_eq!(before.0 .0, 8 << 10, "half of the 16 MiB is present before");
    let r = dump_and_restore(&mut p, &dir.path().join("store"));
    let after = (rss_and_uffd(r, sparse), rss_and_uffd(r, ro));
    std::fs::write(&go, "").unwrap();
    let answered = wait_for(Duration::from_secs(20), || out.exists());
    let got = std::fs::read_to_string(&out).unwrap_or_default();
    finish(r);
    assert_eq!(
        after, before,
        "(Rss kB, any range registered) of the sparse and read-only mappings"
    );
    assert!(
        answered,
        "the restored program did not answer: stuck on a fault?"
    );
    assert_eq!(got, sums, "checksums of the sparse and read-only mappings");
}

#[test]
fn named_anonymous_memory_keeps_its_name() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let script = "import ctypes,time\nlibc=ctypes.CDLL(None,use_errno=True)\nlibc.mmap.restype=ctypes.c_void_p\n\
                  libc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]\n\
                  a=libc.mmap(None,8192,3,0x22,-1,0)\n\
                  assert libc.prctl(0x53564d41,0,ctypes.c_ulong(a),ctypes.c_ulong(8192),b'haul-arena')==0\n\
                  print('%x' % a,flush=True)\nprint('ready',flush=True)\ntime.sleep(600)";
    // A kernel without CONFIG_ANON_VMA_NAME (this one) has no names to keep: EINVAL.
    let probe = std::process::Command::new(python3())
        .args([
            "-c",
            "import ctypes\nlibc=ctypes.CDLL(None)\nlibc.mmap.restype=ctypes.c_void_p\n\
             libc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]\n\
             a=libc.mmap(None,4096,3,0x22,-1,0)\n\
             raise SystemExit(libc.prctl(0x53564d41,0,ctypes.c_ulong(a),ctypes.c_ulong(4096),b'x')!=0)",
        ])
        .status()
        .unwrap();
    if !probe.success() {
        // A kernel setting, not something CI could install: said, not failed.
        eprintln!(
            "SKIPPED: named_anonymous_memory_keeps_its_name: this kernel has no \
             CONFIG_ANON_VMA_NAME"
        );
        return;
    }
    let mut p = python(dir.path(), script);
    let log = std::fs::read_to_string(dir.path().join("py.log")).unwrap();
    let addr = log.lines().next().unwrap().to_string();
    let line = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("{addr}-")))
            .map(String::from)
            .unwrap_or_default()
    };
    let before = line(p.pid);
    assert!(before.ends_with("[anon:haul-arena]"), "{before}");
    let r = dump_and_restore(&mut p, &dir.path().join("store"));
    let after = line(r);
    finish(r);
    assert_eq!(after, before);
}

#[test]
fn prctl_modes_not_carried_yet_are_refused_by_name_and_the_process_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // Memory-deny-write-execute (as systemd sets for MemoryDenyWriteExecute=) and rdtsc made to
    // fault.
    let p = Running::logged(
        &mut clean_command(common::fixture("prctlmodes")),
        &dir.path().join("log"),
        true,
    );
    let out = haul()
        .args(["dump", "--kill", "--pid", &p.pid.to_string(), "--store"])
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("PR_SET_MDWE") && err.contains("PR_SET_TSC"),
        "{err}"
    );
    assert!(common::alive(p.pid), "the refused process died");
    assert!(wait_for(Duration::from_secs(5), || common::tracer_pid(
        p.pid
    ) == Some(0)
        && !matches!(common::proc_state(p.pid), Some('T' | 't'))));
}
