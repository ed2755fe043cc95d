//! Process trees end to end (issue #13), through the command line as a user runs it: real
//! programs nobody here wrote (a shell pipeline, a python `multiprocessing` pool, `make -j2`, a
//! bash script waiting for its jobs) are dumped with `haul dump --pid ROOT --kill` in the middle
//! of their work and restored with `haul restore SET` (same PIDs). Each must then finish with
//! exactly the result of a run that was never interrupted, and the restored tree must be the
//! dumped one as /proc shows it (pids, parents, process groups, sessions, commands, threads,
//! zombies), which is also what `haul images show --json` lists.
//!
//! The test process is a child subreaper (this machine's init does not reap orphans): the
//! dumped processes and the restored roots are re-parented to it, and it reaps them. Tests run
//! one at a time ([`Session`]), so every process below the test process is the running test's,
//! and whatever is left is killed and reaped when the test ends, passed or failed.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::tree::{descendants, Session};
use common::wait_for;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

// ---- the session: one test at a time, everything below it killed and reaped at the end ----

// ---- what /proc shows of a tree ----

/// One process as /proc shows it (or as `haul images show --json` lists it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
    comm: String,
    zombie: bool,
    /// Threads of a living process (0 for a zombie).
    threads: usize,
}

/// `(ppid, pgid, sid, state, comm)` from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(i32, i32, i32, char, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let mut f = s[close + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    let mut num = || f.next().and_then(|x| x.parse::<i32>().ok());
    let (ppid, pgid, sid) = (num()?, num()?, num()?);
    Some((ppid, pgid, sid, state, comm))
}

fn row(pid: i32) -> Option<Row> {
    let (ppid, pgid, sid, state, comm) = stat(pid)?;
    let zombie = state == 'Z';
    let threads = if zombie {
        0
    } else {
        std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count()
    };
    Some(Row {
        pid,
        ppid,
        pgid,
        sid,
        comm,
        zombie,
        threads,
    })
}

/// The tree rooted at `root` as /proc shows it, by pid.
fn tree_rows(root: i32) -> Vec<Row> {
    let mut v: Vec<Row> = std::iter::once(root)
        .chain(descendants(root))
        .filter_map(row)
        .collect();
    v.sort();
    v
}

/// The processes of a set as `haul images show --json` lists them, by pid.
fn image_rows(store: &Path, set: &str) -> Vec<Row> {
    let out = common::haul()
        .args(["images", "show", "--json", set, "--store"])
        .arg(store)
        .output()
        .expect("run haul images show");
    assert!(
        out.status.success(),
        "haul images show {set}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("show --json");
    let procs = v["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"processes\" in haul images show --json: {v}"));
    let int = |p: &serde_json::Value, k: &str| {
        p[k].as_i64().unwrap_or_else(|| panic!("no {k} in {p}")) as i32
    };
    let mut rows: Vec<Row> = procs
        .iter()
        .map(|p| {
            let zombie = p["zombie"].as_bool().unwrap_or(false);
            Row {
                pid: int(p, "pid"),
                ppid: int(p, "ppid"),
                pgid: int(p, "pgid"),
                sid: int(p, "sid"),
                comm: p["comm"].as_str().unwrap_or_default().to_string(),
                zombie,
                threads: if zombie {
                    0
                } else {
                    p["threads"].as_array().map(|t| t.len()).unwrap_or(0)
                },
            }
        })
        .collect();
    rows.sort();
    rows
}

// ---- launching, dumping, restoring, waiting ----

/// Starts `cmd` the way the runner does: no inherited fds above 2, stdin /dev/null, stdout and
/// stderr into `log` (a pipe to the test would be shared with a process outside the tree).
fn launch(mut cmd: Command, log: &Path) -> Child {
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let out = std::fs::File::create(log).expect("create log");
    let err = out.try_clone().expect("clone log fd");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn the tree's root")
}

fn log_has_line(log: &Path, line: &str) -> bool {
    std::fs::read_to_string(log)
        .map(|s| s.lines().any(|l| l == line))
        .unwrap_or(false)
}

/// `haul dump --pid ROOT --kill` through the command line; returns the set id. Then reaps the
/// root (our child) and waits until every process of the set is gone, reaping those
/// re-parented to us.
fn dump_kill(root: &mut Child, store: &Path, name: &str) -> String {
    let pid = root.id() as i32;
    let out = common::haul()
        .args(["dump", "--kill", "--json", "--name", name, "--pid"])
        .arg(pid.to_string())
        .arg("--store")
        .arg(store)
        .output()
        .expect("run haul dump");
    assert!(
        out.status.success(),
        "haul dump --kill of the tree of {pid}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dump --json");
    let set = v["set"].as_str().expect("set id").to_string();
    root.wait().expect("reap the dumped root");
    let pids: Vec<i32> = image_rows(store, &set).iter().map(|r| r.pid).collect();
    let gone = wait_for(Duration::from_secs(20), || {
        pids.iter().all(|&p| {
            let _ = waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG));
            stat(p).is_none()
        })
    });
    let left: Vec<Row> = pids.iter().filter_map(|&p| row(p)).collect();
    assert!(gone, "dumped with --kill, still there: {left:?}");
    set
}

/// `haul restore SET --verify state` (same PIDs); returns the root's pid.
fn restore(store: &Path, set: &str) -> i32 {
    let out = common::haul()
        .args(["restore", "--json", "--verify", "state", set, "--store"])
        .arg(store)
        .output()
        .expect("run haul restore");
    assert!(
        out.status.success(),
        "haul restore {set}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("restore --json");
    v["pid"].as_i64().expect("pid") as i32
}

/// How a process ended, as its parent (this test) saw it.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Code(i32),
    Signal(i32),
}

/// Waits (up to `timeout`) for `pid`, a child of this test (restored roots are re-parented
/// here), to end, and reaps it.
fn wait_end(pid: i32, timeout: Duration) -> Ended {
    let mut end = None;
    let ok = wait_for(timeout, || {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => end = Some(Ended::Code(c)),
            Ok(WaitStatus::Signaled(_, s, _)) => end = Some(Ended::Signal(s as i32)),
            // Not ours yet (a lazy restore's haul is its parent until haul exits).
            Err(nix::errno::Errno::ECHILD) if stat(pid).is_some() => {}
            Err(e) => panic!("waitpid {pid}: {e}"),
            Ok(_) => {}
        }
        end.is_some()
    });
    assert!(
        ok,
        "pid {pid} did not end within {timeout:?}; its tree: {:?}",
        tree_rows(pid)
    );
    end.unwrap()
}

/// Restored as dumped: /proc shows the image's processes, and the tree seen before the dump.
fn assert_restored_as_dumped(root: i32, store: &Path, set: &str, before: Option<&[Row]>) {
    let image = image_rows(store, set);
    let now = tree_rows(root);
    assert_eq!(now, image, "restored tree (left) against the image (right)");
    if let Some(before) = before {
        assert_eq!(
            now, before,
            "restored tree (left) against the dumped one (right)"
        );
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// ---- a shell pipeline ----

/// 256 MiB of numbered lines, each with a hash of its number: gzip runs fast on it (the rest
/// of each line repeats), yet a lost, repeated or misplaced block changes the output.
fn write_big(path: &Path) {
    use std::io::Write;
    const TEXT: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod \
                        tempor incididunt ut labore et dolore magna aliqua";
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let (mut n, mut size) = (0u64, 0u64);
    while size < 256 << 20 {
        let line = format!("{n:010} {:08x} {TEXT}\n", (n * 2_654_435_761) & 0xffff_ffff);
        f.write_all(line.as_bytes()).unwrap();
        size += line.len() as u64;
        n += 1;
    }
    f.flush().unwrap();
}

/// The read offset of the fd through which `pid` has `path` open.
fn offset_of(pid: i32, path: &Path) -> Option<u64> {
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if std::fs::read_link(e.path()).ok().as_deref() == Some(path) {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .ok()?;
            return info
                .lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|v| v.trim().parse().ok());
        }
    }
    None
}

#[test]
fn shell_pipeline_stopped_mid_stream_writes_the_right_digest_after_restore() {
    let s = Session::start();
    let big = s.path().join("big");
    let out = s.path().join("out");
    write_big(&big);
    // What the pipeline prints when nothing stops it (gzip reading a pipe, as in the
    // pipeline: reading the file itself, it would record the file's time in its header).
    let want = Command::new("sh")
        .arg("-c")
        .arg(r#"cat "$1" | gzip -c | sha256sum"#)
        .arg("sh")
        .arg(&big)
        .output()
        .expect("run gzip | sha256sum");
    assert!(want.status.success());
    let want = String::from_utf8(want.stdout).unwrap();

    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"cat "$1" | gzip -c | sha256sum > "$2""#)
        .arg("sh")
        .arg(&big)
        .arg(&out);
    let mut root = launch(cmd, &s.path().join("log"));
    let pid = root.id() as i32;
    // Mid-stream: cat has read a quarter of the file.
    let mut cat = None;
    let mid = wait_for(Duration::from_secs(60), || {
        cat = tree_rows(pid)
            .into_iter()
            .find(|r| r.comm == "cat")
            .map(|r| r.pid);
        cat.and_then(|c| offset_of(c, &big))
            .is_some_and(|o| o > 64 << 20)
    });
    assert!(mid, "cat never got a quarter through: {:?}", tree_rows(pid));
    let before = tree_rows(pid);
    let comms: BTreeSet<&str> = before.iter().map(|r| r.comm.as_str()).collect();
    assert!(
        ["sh", "cat", "gzip", "sha256sum"]
            .iter()
            .all(|c| comms.contains(c)),
        "not the whole pipeline: {before:?}"
    );
    let set = dump_kill(&mut root, &s.store(), "pipeline");
    assert_eq!(
        read(&out),
        "",
        "sha256sum wrote before the dump: not mid-stream"
    );

    let restored = restore(&s.store(), &set);
    assert_eq!(restored, pid, "the root came back under another pid");
    assert_restored_as_dumped(pid, &s.store(), &set, Some(&before));
    assert_eq!(wait_end(pid, Duration::from_secs(120)), Ended::Code(0));
    assert_eq!(read(&out), want, "digest of the restored pipeline");
}

// ---- a python multiprocessing pool ----

const POOL_PY: &str = r#"
import multiprocessing as mp, os, sys, time

D = sys.argv[1]

def square(n):
    return n * n

def cube(n):
    # Says it started, then waits for the release file: the dump comes while both workers
    # are inside a task and the rest of the tasks are queued.
    open(os.path.join(D, "started.%d" % n), "w").close()
    while not os.path.exists(os.path.join(D, "release")):
        time.sleep(0.005)
    return n ** 3

if __name__ == "__main__":
    assert mp.get_start_method() == "fork", mp.get_start_method()
    with mp.Pool(2) as pool:
        first = sum(pool.map(square, range(2000)))
        pending = pool.map_async(cube, range(10), chunksize=1)
        print("ready", flush=True)
        cubes = pending.get(timeout=120)
        more = sum(pool.map(square, range(2000, 3000)))
        pool.close()
        pool.join()
    with open(os.path.join(D, "result.tmp"), "w") as f:
        f.write("first %d\ncubes %s\nmore %d\n" % (first, " ".join(map(str, cubes)), more))
    os.rename(os.path.join(D, "result.tmp"), os.path.join(D, "result"))
"#;

/// What the pool script writes when nothing stops it.
fn pool_expected() -> String {
    let first: u64 = (0..2000u64).map(|n| n * n).sum();
    let cubes: Vec<String> = (0..10u64).map(|n| (n * n * n).to_string()).collect();
    let more: u64 = (2000..3000u64).map(|n| n * n).sum();
    format!("first {first}\ncubes {}\nmore {more}\n", cubes.join(" "))
}

/// Starts the pool and waits until both workers are inside a task; returns the root, the
/// tree as it was then.
fn start_pool(s: &Session) -> (Child, Vec<Row>) {
    let script = s.path().join("pool.py");
    std::fs::write(&script, POOL_PY).unwrap();
    let mut cmd = Command::new(common::python3());
    cmd.arg(&script).arg(s.path());
    let log = s.path().join("log");
    let root = launch(cmd, &log);
    let pid = root.id() as i32;
    let started = || {
        std::fs::read_dir(s.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("started."))
                    .count()
            })
            .unwrap_or(0)
    };
    let ok = wait_for(Duration::from_secs(60), || {
        log_has_line(&log, "ready") && started() >= 2
    });
    assert!(ok, "the pool never got busy: {}", read(&log));
    let before = tree_rows(pid);
    assert_eq!(before.len(), 3, "python and two workers: {before:?}");
    (root, before)
}

#[test]
fn python_pool_keeps_its_results_and_takes_new_tasks_after_restore() {
    let s = Session::start();
    let (mut root, before) = start_pool(&s);
    let pid = root.id() as i32;
    let set = dump_kill(&mut root, &s.store(), "pool");
    assert_eq!(restore(&s.store(), &set), pid);
    assert_restored_as_dumped(pid, &s.store(), &set, Some(&before));
    std::fs::write(s.path().join("release"), "").unwrap();
    let end = wait_end(pid, Duration::from_secs(60));
    assert_eq!(end, Ended::Code(0), "log: {}", read(&s.path().join("log")));
    assert_eq!(read(&s.path().join("result")), pool_expected());
}

/// The lazy side for trees: `haul restore SET --lazy` serves every process of the pool on
/// demand; the pool finishes with the same results as after an eager restore.
#[test]
fn python_pool_restored_lazily_finishes_with_the_same_results() {
    let s = Session::start();
    let (mut root, before) = start_pool(&s);
    let pid = root.id() as i32;
    let set = dump_kill(&mut root, &s.store(), "pool");
    // haul restore --lazy returns once every page of every process is resident.
    let out = common::haul()
        .args(["restore", &set, "--lazy", "--store"])
        .arg(s.store())
        .stdin(Stdio::null())
        .output()
        .expect("run haul restore --lazy");
    assert!(
        out.status.success(),
        "haul restore --lazy {set}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The root's pid first, as soon as the tree runs; then the daemon's report.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default().trim();
    assert_eq!(first, pid.to_string(), "{stdout}");
    assert_restored_as_dumped(pid, &s.store(), &set, Some(&before));
    std::fs::write(s.path().join("release"), "").unwrap();
    let end = wait_end(pid, Duration::from_secs(60));
    assert_eq!(end, Ended::Code(0), "log: {}", read(&s.path().join("log")));
    assert_eq!(read(&s.path().join("result")), pool_expected());
}

// ---- make -j2 ----

const UNITS: usize = 6;
const STATEMENTS: u64 = 3000;

/// What `f_k(k + 1)` of the generated project computes (C's unsigned long arithmetic).
fn unit_value(k: u64) -> u64 {
    let mut x = k + 1;
    for i in 0..STATEMENTS {
        x = x.wrapping_mul(2 * i + 3).wrapping_add(7 * i + k);
        x ^= x >> (i % 13 + 1);
    }
    x
}

/// A C project whose units take a second or two each to compile (one long function each),
/// and the output of its program.
fn write_project(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let mut main = String::from("#include <stdio.h>\n");
    let mut calls = String::new();
    let mut want = String::new();
    for k in 0..UNITS as u64 {
        let mut src = format!("unsigned long f_{k}(unsigned long x) {{\n");
        for i in 0..STATEMENTS {
            src += &format!(
                "  x = x * {}UL + {}UL; x ^= x >> {};\n",
                2 * i + 3,
                7 * i + k,
                i % 13 + 1
            );
        }
        src += "  return x;\n}\n";
        std::fs::write(dir.join(format!("f{k}.c")), src).unwrap();
        main += &format!("unsigned long f_{k}(unsigned long);\n");
        calls += &format!("  printf(\"%lx\\n\", f_{k}({}UL));\n", k + 1);
        want += &format!("{:x}\n", unit_value(k));
    }
    main += &format!("int main(void) {{\n{calls}  return 0;\n}}\n");
    std::fs::write(dir.join("main.c"), main).unwrap();
    let objs: Vec<String> = (0..UNITS)
        .map(|k| format!("f{k}.o"))
        .chain(["main.o".to_string()])
        .collect();
    let makefile = format!(
        "OBJS = {}\nprog: $(OBJS)\n\tcc -o $@ $(OBJS)\n%.o: %.c\n\tcc -O2 -c -o $@ $<\n",
        objs.join(" ")
    );
    std::fs::write(dir.join("Makefile"), makefile).unwrap();
    want
}

#[test]
fn make_j2_stopped_mid_build_finishes_and_the_program_runs_after_restore() {
    let s = Session::start();
    let proj = s.path().join("proj");
    let want = write_project(&proj);
    let mut cmd = Command::new("make");
    cmd.arg("-j2")
        .current_dir(&proj)
        .env("TMPDIR", proj.join("tmp"))
        // Not cargo's jobserver: its fds are not passed on.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .env_remove("CARGO_MAKEFLAGS");
    let mut root = launch(cmd, &s.path().join("log"));
    let pid = root.id() as i32;
    let objs = || {
        (0..UNITS)
            .filter(|k| proj.join(format!("f{k}.o")).exists())
            .count()
    };
    // Mid-build: a unit is done, others are still compiling.
    let mid = wait_for(Duration::from_secs(120), || {
        objs() >= 1 && tree_rows(pid).iter().any(|r| r.comm == "cc1")
    });
    assert!(
        mid && !proj.join("prog").exists(),
        "never caught mid-build: {} units done, log: {}",
        objs(),
        read(&s.path().join("log"))
    );
    let set = dump_kill(&mut root, &s.store(), "make");
    let image = image_rows(&s.store(), &set);
    assert!(
        image.iter().any(|r| r.comm == "cc1"),
        "no compiler in the image: {image:?}"
    );
    assert!(objs() < UNITS, "every unit was built before the dump");

    assert_eq!(restore(&s.store(), &set), pid);
    // make runs on at once: by the time /proc is read a compiler may have ended and the
    // next one started. Every process of the image still there is as dumped.
    let image = image_rows(&s.store(), &set);
    for now in tree_rows(pid) {
        if let Some(was) = image.iter().find(|r| r.pid == now.pid) {
            assert_eq!(&now, was, "restored (left) against the image (right)");
        }
    }
    let end = wait_end(pid, Duration::from_secs(300));
    assert_eq!(end, Ended::Code(0), "make: {}", read(&s.path().join("log")));
    let run = Command::new(proj.join("prog")).output().expect("run prog");
    assert!(run.status.success());
    assert_eq!(String::from_utf8_lossy(&run.stdout), want);
}

// ---- a bash script waiting for its jobs ----

const JOBS_SH: &str = r#"
d=$1
(exit 3) &                  # job 1: over at once; bash reaps it and keeps its status
j1=$!
echo $j1 > "$d/j1"
# job 2: python, whose own child exits at once and stays a zombie (python reaps only when
# it waits; bash and dash reap at once), while python is blocked opening a FIFO
python3 -c '
import os, sys
kid = os.fork()
if kid == 0:
    os._exit(7)
open(sys.argv[1] + "/zombie", "w").write(str(kid))
open(sys.argv[1] + "/fifo2").read()
sys.exit(os.waitstatus_to_exitcode(os.waitpid(kid, 0)[1]))
' "$d" &
j2=$!
( read x < "$d/fifo3"; exit 5 ) &       # job 3: ends after the restore
j3=$!
sleep 1000 &                # job 4: killed by a signal after the restore
j4=$!
echo ready
read x < "$d/go"            # the test opens the FIFO when the script may go on
kill -TERM $j4
echo go > "$d/fifo2"
echo go > "$d/fifo3"
wait $j1; echo "j1 $?" >> "$d/statuses"
wait $j2; echo "j2 $?" >> "$d/statuses"
wait $j3; echo "j3 $?" >> "$d/statuses"
wait $j4; echo "j4 $?" >> "$d/statuses"
"#;

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// Opens FIFO `path` for writing once a reader waits on it (up to 20 s) and writes a line.
fn poke_fifo(path: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = None;
    let ok = wait_for(Duration::from_secs(20), || {
        f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
            .ok();
        f.is_some()
    });
    assert!(ok, "no reader ever opened {}", path.display());
    f.unwrap().write_all(b"go\n").unwrap();
}

fn pid_in(path: &Path) -> Option<i32> {
    read(path).trim().parse().ok()
}

#[test]
fn bash_script_sees_every_jobs_exit_status_after_restore() {
    let s = Session::start();
    let d = s.path();
    for f in ["go", "fifo2", "fifo3"] {
        mkfifo(&d.join(f));
    }
    let script = d.join("jobs.sh");
    std::fs::write(&script, JOBS_SH).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(d).env("PATH", path_with_python());
    let log = d.join("log");
    let mut root = launch(cmd, &log);
    let pid = root.id() as i32;
    // Job 1 is over and reaped, the zombie is there, every job waits.
    let settled = wait_for(Duration::from_secs(30), || {
        log_has_line(&log, "ready")
            && pid_in(&d.join("j1")).is_some_and(|p| stat(p).is_none())
            && pid_in(&d.join("zombie")).is_some_and(|z| row(z).is_some_and(|r| r.zombie))
            && tree_rows(pid).len() == 5
    });
    let before = tree_rows(pid);
    assert!(
        settled,
        "the script never settled: {before:?}, {}",
        read(&log)
    );
    let zombie = pid_in(&d.join("zombie")).unwrap();
    let set = dump_kill(&mut root, &s.store(), "jobs");
    let z = image_rows(&s.store(), &set);
    assert!(
        z.iter().any(|r| r.pid == zombie && r.zombie),
        "the zombie {zombie} is not one in the image: {z:?}"
    );

    assert_eq!(restore(&s.store(), &set), pid);
    assert_restored_as_dumped(pid, &s.store(), &set, Some(&before));
    poke_fifo(&d.join("go"));
    assert_eq!(wait_end(pid, Duration::from_secs(60)), Ended::Code(0));
    assert_eq!(read(&d.join("statuses")), "j1 3\nj2 7\nj3 5\nj4 143\n");
}

// ---- haul dump --check on a tree ----

const BLOCKERS_SH: &str = r#"
d=$1
cat > /dev/null <&0 &       # reads a pipe whose writer is the test: outside the tree
echo $! > "$d/cat"
exec < /dev/null
python3 -c '
import socket, sys, time
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
c = socket.create_connection(l.getsockname())
a, _ = l.accept()
a.shutdown(socket.SHUT_WR)
c.recv(1)
open(sys.argv[1], "w").write("connected")
time.sleep(1000)
' "$d/tcp" &          # a half-closed TCP connection (CLOSE-WAIT, FIN-WAIT-2): not carried
echo $! > "$d/python"
echo ready
wait
"#;

/// Whether `text` holds `n` as a number of its own (not inside a longer one).
fn names(text: &str, n: i32) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|w| w == n.to_string())
}

#[test]
fn dump_check_of_a_tree_names_every_blocker_and_the_refused_dump_leaves_it_running() {
    let s = Session::start();
    let d = s.path();
    let script = d.join("blockers.sh");
    std::fs::write(&script, BLOCKERS_SH).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(d).env("PATH", path_with_python());
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let log = d.join("log");
    let out = std::fs::File::create(&log).unwrap();
    // The root's stdin: a pipe this test writes; the script hands it to cat alone.
    let mut root = cmd
        .stdin(Stdio::piped())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn bash");
    let pid = root.id() as i32;
    let ok = wait_for(Duration::from_secs(30), || {
        log_has_line(&log, "ready")
            && d.join("tcp").exists()
            && std::fs::read_link(format!("/proc/{pid}/fd/0"))
                .is_ok_and(|l| l == Path::new("/dev/null"))
    });
    assert!(ok, "the blockers never got ready: {}", read(&log));
    let cat = pid_in(&d.join("cat")).unwrap();
    let python = pid_in(&d.join("python")).unwrap();
    let before = tree_rows(pid);

    let out = common::haul()
        .args(["dump", "--check", "--json", "--pid"])
        .arg(pid.to_string())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "haul dump --check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--check --json");
    assert_eq!(v["checkpointable"], false, "{v}");
    let reasons: Vec<String> = v["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_string())
        .collect();
    for (who, p, what) in [("cat", cat, "pipe"), ("python", python, "established")] {
        assert!(
            reasons
                .iter()
                .any(|r| names(r, p) && r.to_lowercase().contains(what)),
            "no reason names {who} (pid {p}) and its {what}: {reasons:#?}"
        );
    }
    // The text form says the same.
    let text = common::haul()
        .args(["dump", "--check", "--pid"])
        .arg(pid.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(names(&text, cat) && names(&text, python), "{text}");

    // A dump is refused, and nothing is harmed: the same tree, running, untraced.
    let out = common::haul()
        .args(["dump", "--kill", "--pid"])
        .arg(pid.to_string())
        .arg("--store")
        .arg(s.store())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a tree with blockers was dumped");
    assert_eq!(tree_rows(pid), before);
    for r in &before {
        assert_eq!(common::tracer_pid(r.pid), Some(0), "{} still traced", r.pid);
        let st = common::proc_state(r.pid);
        assert!(
            !matches!(st, Some('t') | Some('T')),
            "{} left stopped",
            r.pid
        );
    }
    drop(root.stdin.take());
    let _ = root.kill();
    let _ = root.wait();
}

/// PATH with the python3 binary's own directory first (the pyenv shim is a shell script, which
/// would add a process to the tree).
fn path_with_python() -> String {
    let py = common::python3();
    let dir = py.parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

// ---- haul bench tree, tiny ----

/// `haul bench tree` on a tiny tree: it checks every restored process's memory itself (and
/// that the shared memory is still one object), so here it must succeed; and its image of the
/// tree must hold the shared memory once, not once per process.
#[test]
fn bench_tree_restores_the_tree_and_stores_its_shared_memory_once() {
    let s = Session::start();
    let out = common::haul()
        .current_dir(common::repo())
        .args(["bench", "tree", "--processes", "4", "--shared", "8MiB"])
        .args(["--private", "1MiB", "--runs", "1", "--json", "--dir"])
        .arg(s.path())
        .output()
        .expect("run haul bench tree");
    assert!(
        out.status.success(),
        "haul bench tree: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench --json");
    assert_eq!(v["tree"]["processes"], 4, "{v}");
    assert_eq!(v["single"]["processes"], 1, "{v}");
    let logical = |shape: &str| v[shape]["figures"]["bytes_logical"].as_u64().unwrap();
    // Stored per process, the tree would hold 3 more copies of the 8 MiB: 24 MiB more.
    assert!(
        logical("tree") < logical("single") + (4 << 20),
        "the tree's image holds {} logical bytes, the single process's {}: shared memory \
         stored more than once",
        logical("tree"),
        logical("single")
    );
    assert_eq!(
        std::fs::read_dir(s.path()).unwrap().count(),
        0,
        "bench tree left files behind"
    );
}

// ---- haul run: the report counts the processes ----

#[test]
fn haul_run_of_a_tree_reports_how_many_processes_it_checkpointed() {
    let s = Session::start();
    let bin = common::fixture("treebench");
    let job = s.path().join("tree.toml");
    std::fs::write(
        &job,
        format!(
            "[process]\ncommand = [\"{}\", \"4\", \"1\", \"2\", \"{{run_dir}}\"]\n\
             ready = {{ stdout_line = \"ready\" }}\n",
            bin.display()
        ),
    )
    .unwrap();
    let out = common::haul()
        .args(["run", "--plain"])
        .arg(&job)
        .current_dir(s.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haul run: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_dir(s.path().join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a run report");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["processes"], 3, "{r}");
    let text = common::haul().arg("report").arg(&report).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("a tree of 3 processes"), "{text}");
}
