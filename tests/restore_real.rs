//! Restore end to end through the store (issue #5): fixtures and real programs are dumped into a
//! real store (killing them), rebuilt under the same PID, and must go on exactly: the same
//! memory, the same file offsets, the same signal handlers, a working vDSO, the same /proc view,
//! and real programs (python3, gzip, sort) that finish with the right output.
//!
//! Every test makes itself the subreaper first: a restored process is re-parented away from
//! haul, and this machine's init does not reap, so the test reaps it ([`Restored`]).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fixture, memwriter_report, read_numbers, send_signal, wait_for, Running};
use haul::dump::{dump, dump_to_store, DumpOptions, VecSink};
use haul::image::{ImageSet, ProcessImage};
use haul::restore::{restore, RestoreOptions};
use haul::store::Store;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// Makes this test process the reaper of orphans (restored processes become our children).
fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// A restored process: killed and reaped when dropped (also when a test panics), unless
/// [`Restored::wait`] reaped it already.
struct Restored {
    pid: i32,
    reaped: bool,
}

impl Restored {
    /// Waits for it to exit by itself and returns its exit code (None: killed by a signal).
    fn wait(&mut self) -> Option<i32> {
        let st = waitpid(Pid::from_raw(self.pid), None).expect("waitpid restored process");
        self.reaped = true;
        match st {
            WaitStatus::Exited(_, code) => Some(code),
            _ => None,
        }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), nix::sys::signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(self.pid), None);
        }
    }
}

/// `cmd` set up the way the runner launches processes: no inherited fds above 2, stdin
/// /dev/null, stdout and stderr into `log`.
fn launch(mut cmd: Command, log: &Path, wait_ready: bool) -> Running {
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    Running::logged(&mut cmd, log, wait_ready)
}

/// Dumps `r` into `store` (killing it), reaps it, and returns the committed set.
fn dump_kill(r: &mut Running, store: &Store) -> ImageSet {
    let d = dump_to_store(r.pid, store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {}: {e}", r.pid));
    r.child.wait().expect("reap the dumped original");
    d.set
}

/// Restores `set` from `store` under its own PID, its state compared with the image before it
/// runs (`--verify state`).
fn restore_same(set: &ImageSet, store: &Store) -> Restored {
    let want = set.process.as_ref().unwrap().pid;
    let out = restore(
        set,
        store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore of pid {want}: {e}"));
    assert_eq!(out.pid, want, "restored under another pid");
    assert!(out.pages_restored > 0, "no pages restored");
    Restored {
        pid: out.pid,
        reaped: false,
    }
}

fn new_store(dir: &Path) -> Store {
    Store::open_or_create(&dir.join("store")).expect("create store")
}

/// Lines of whitespace-separated integers (files the fixtures write).
fn read_rows(path: &Path) -> Vec<Vec<i64>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_whitespace()
                .map(|w| {
                    w.parse()
                        .unwrap_or_else(|_| panic!("bad line {l:?} in {}", path.display()))
                })
                .collect()
        })
        .collect()
}

/// Numbers must be 1, 2, 3, ... with no gap and no repeat.
fn assert_consecutive(n: &[u64]) {
    for (i, v) in n.iter().enumerate() {
        assert_eq!(
            *v,
            i as u64 + 1,
            "gap or repeat at line {}: {:?}",
            i + 1,
            &n[i.saturating_sub(3)..(i + 3).min(n.len())]
        );
    }
}

/// Deterministic text of `len` bytes: lines of pseudo-random words (compressible like prose,
/// but with no long repeats, so a misplaced block is caught).
fn semi_random_text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        line += 1;
        out.extend_from_slice(line.to_string().as_bytes());
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(b' ');
            out.extend_from_slice(WORDS[(x & 15) as usize].as_bytes());
            out.extend_from_slice((x >> 40).to_string().as_bytes());
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn memwriter_region_checksum_is_the_same_after_restore_at_64mib() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut cmd = Command::new(fixture("memwriter"));
    cmd.arg("64").arg("20000").arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let pid = r.pid;
    // Let it dirty for a while (the region then holds ticks too), then pause the dirtying.
    let (t0, _) = memwriter_report(pid, &out, 0);
    memwriter_report(pid, &out, t0 + 5);
    let (t2, c2) = common::memwriter_pause(pid, &out, 0);

    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    let (t3, c3) = memwriter_report(rp.pid, &out, t2);
    assert!(t3 > t2);
    assert_eq!(c3, c2, "64 MiB region differs after restore");

    // Still the same program: resuming the dirtying changes the region again.
    send_signal(rp.pid, "USR2");
    let mut t = t3;
    assert!(
        wait_for(Duration::from_secs(10), || {
            let (t4, c4) = memwriter_report(rp.pid, &out, t);
            t = t4;
            c4 != c3
        }),
        "restored memwriter does not dirty any more"
    );
}

#[test]
fn filefix_output_is_byte_identical_to_an_uninterrupted_run() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, semi_random_text(150_000, 7)).unwrap();
    let run = |out: &Path| {
        let mut cmd = Command::new(fixture("filefix"));
        cmd.arg(&input).arg(out).arg("1000");
        cmd
    };

    // Uninterrupted reference.
    let reference = dir.path().join("ref.out");
    let mut r = launch(run(&reference), &dir.path().join("ref.log"), true);
    assert!(r.child.wait().unwrap().success(), "reference run failed");

    let out = dir.path().join("restored.out");
    let mut r = launch(run(&out), &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(20), || file_len(&out) >= 30_000));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let at_dump = file_len(&out);
    assert!(
        at_dump < 150_000,
        "filefix finished before the dump: test proves nothing"
    );
    let mut rp = restore_same(&set, &store);
    assert_eq!(rp.wait(), Some(0), "restored filefix did not exit 0");
    let a = std::fs::read(&reference).unwrap();
    let b = std::fs::read(&out).unwrap();
    assert_eq!(
        a.len(),
        b.len(),
        "output length differs (dumped at {at_dump})"
    );
    assert!(a == b, "output differs from the uninterrupted run");
}

/// `SigBlk`, `SigIgn`, `SigCgt` of /proc/PID/status.
fn signal_masks(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("SigBlk") || l.starts_with("SigIgn") || l.starts_with("SigCgt"))
        .map(String::from)
        .collect()
}

/// Sends `sig` and waits until it is no longer pending (so two sends are two deliveries).
fn deliver(pid: i32, sig: &str) {
    let num: nix::sys::signal::Signal = format!("SIG{sig}").parse().unwrap();
    let bit = 1u64 << (num as i32 - 1);
    send_signal(pid, sig);
    let ok = wait_for(Duration::from_secs(5), || pending_signals(pid) & bit == 0);
    assert!(ok, "SIG{sig} stays pending in pid {pid}");
}

/// Asks sigfix for its counts and waits for the report showing `usr1`.
fn sigfix_counts(pid: i32, out: &Path, usr1: u32) -> String {
    deliver(pid, "USR1");
    let want = format!("usr1={usr1} ");
    let mut got = String::new();
    let ok = wait_for(Duration::from_secs(10), || {
        got = std::fs::read_to_string(out).unwrap_or_default();
        got.starts_with(&want)
    });
    assert!(ok, "sigfix pid {pid} did not report {want}: {got:?}");
    got.trim().to_string()
}

/// The state of a process as a leave-running dump sees it.
fn snapshot(pid: i32) -> ProcessImage {
    let mut sink = VecSink::default();
    let opts = DumpOptions {
        leave_running: true,
        ..Default::default()
    };
    dump(pid, &opts, &mut sink)
        .unwrap_or_else(|e| panic!("snapshot of pid {pid}: {e}"))
        .process
}

#[test]
fn sigfix_handlers_keep_firing_with_their_masks_and_flags_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("counts");
    let mut cmd = Command::new(fixture("sigfix"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let pid = r.pid;
    for s in ["USR2", "USR2", "USR2", "ALRM", "ALRM"] {
        deliver(pid, s);
    }
    assert_eq!(sigfix_counts(pid, &out, 1), "usr1=1 usr2=3 alrm=2");
    let masks = signal_masks(pid);
    let before = snapshot(pid);

    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    assert_eq!(
        signal_masks(rp.pid),
        masks,
        "blocked/ignored/caught sets differ"
    );
    let after = snapshot(rp.pid);
    for (i, (a, b)) in before.sigactions.iter().zip(&after.sigactions).enumerate() {
        assert_eq!(
            a,
            b,
            "signal {}: action (handler, flags, mask) differs",
            i + 1
        );
    }
    assert_eq!(before.threads[0].sigmask, after.threads[0].sigmask);

    for s in ["USR2", "ALRM", "TERM"] {
        deliver(rp.pid, s);
    }
    assert_eq!(sigfix_counts(rp.pid, &out, 2), "usr1=2 usr2=4 alrm=3");
    assert!(common::alive(rp.pid), "SIGTERM is no longer ignored");
}

#[test]
fn vdso_clock_loop_keeps_running_and_time_moves_forward_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clock");
    let mut cmd = Command::new(fixture("clockloop"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || read_rows(&out).len() >= 20));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let before = read_rows(&out).len();
    let rp = restore_same(&set, &store);
    let grew = wait_for(Duration::from_secs(10), || {
        read_rows(&out).len() >= before + 30
    });
    let alive = common::alive(rp.pid);
    drop(rp);
    assert!(
        grew && alive,
        "restored clock loop stopped (alive: {alive})"
    );

    let rows = read_rows(&out);
    for (i, w) in rows.windows(2).enumerate() {
        let (a, b) = (&w[0], &w[1]);
        assert_eq!(b[0], a[0] + 1, "line {}: count gap or repeat", i + 2);
        assert!(b[1] > a[1], "line {}: monotonic time went backwards", i + 2);
        assert_eq!(
            b[2],
            b[1] - a[1],
            "line {}: delta is not the clock's",
            i + 2
        );
        assert!(
            b[2] >= 10_000_000 && b[2] < 120_000_000_000,
            "line {}: delta {} ns",
            i + 2,
            b[2]
        );
    }
    assert!(rows[before][3] > 0);
}

/// `/proc/PID/maps` as (start-end, perms, offset, path) lines.
fn maps_lines(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!(
                "{} {} {} {}",
                f[0],
                f[1],
                f[2],
                f.get(5).copied().unwrap_or("")
            )
        })
        .collect()
}

fn proc_view(pid: i32) -> (Vec<u8>, PathBuf, PathBuf, Vec<String>) {
    (
        std::fs::read(format!("/proc/{pid}/cmdline")).unwrap(),
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        maps_lines(pid),
    )
}

#[test]
fn restored_process_has_the_same_cmdline_exe_cwd_and_maps() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work dir");
    std::fs::create_dir(&work).unwrap();
    let mut cmd = Command::new(fixture("counter"));
    cmd.arg("counter.log").current_dir(&work);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let before = proc_view(r.pid);
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    let after = proc_view(rp.pid);
    assert_eq!(
        String::from_utf8_lossy(&after.0),
        String::from_utf8_lossy(&before.0),
        "cmdline"
    );
    assert_eq!(after.1, before.1, "exe");
    assert_eq!(after.2, before.2, "cwd");
    assert_eq!(after.3.join("\n"), before.3.join("\n"), "maps");
}

/// comm, environ, limits, and the Umask line of /proc/PID/status.
fn proc_extras(pid: i32) -> Vec<String> {
    let read = |f: &str| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{f}")).unwrap()).to_string()
    };
    let umask = read("status")
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .unwrap_or("no Umask line")
        .to_string();
    vec![read("comm"), read("environ"), read("limits"), umask]
}

#[test]
fn restored_process_has_the_same_comm_environ_limits_and_umask() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    // umask 027 and a lowered soft RLIMIT_NOFILE, set by the shell that execs the counter.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"umask 027; ulimit -S -n 777; exec "$0" "$1""#)
        .arg(fixture("counter"))
        .arg(&log)
        .env("HAUL_TEST_MARK", "restored-env");
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let before = proc_extras(r.pid);
    assert!(before[1].contains("HAUL_TEST_MARK=restored-env"));
    assert!(before[2].contains("777"));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    let after = proc_extras(rp.pid);
    for (i, what) in ["comm", "environ", "limits", "umask"].iter().enumerate() {
        assert_eq!(after[i], before[i], "{what}");
    }
}

/// Session and process group ids of /proc/PID/stat.
fn sid_pgrp(pid: i32) -> (i32, i32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[3].parse().unwrap(), f[2].parse().unwrap())
}

#[test]
fn restored_process_keeps_its_session_and_process_group() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let mut cmd = Command::new(fixture("counter"));
    cmd.arg(&log);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let before = sid_pgrp(r.pid);
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    assert_eq!(sid_pgrp(rp.pid), before, "(session, process group)");
}

const PY_LOOP: &str = r#"
import sys, time
d = {}
big = []
n = 0
f = open(sys.argv[1], "a", buffering=1)
print("ready", flush=True)
while True:
    n += 1
    d[n % 1000] = n * n
    big.append(bytes([n % 251]) * 20000)  # the heap grows on both sides of the dump
    f.write(f"{n} {sum(d.values())} {big[n // 2][-1]}\n")
    time.sleep(0.01)
"#;

#[test]
fn python_loop_continues_with_its_counter_and_dict_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("py.out");
    let mut cmd = Command::new(common::python3());
    cmd.arg("-c").arg(PY_LOOP).arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || read_rows(&out).len() >= 30));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let before = read_rows(&out).len();
    let rp = restore_same(&set, &store);
    let grew = wait_for(Duration::from_secs(10), || {
        read_rows(&out).len() >= before + 30
    });
    drop(rp);
    assert!(grew, "restored python does not write");
    let mut d = std::collections::HashMap::new();
    for (i, row) in read_rows(&out).iter().enumerate() {
        let n = i as i64 + 1;
        d.insert(n % 1000, n * n);
        let sum: i64 = d.values().sum();
        let half = (n / 2 + 1) % 251;
        assert_eq!(
            row,
            &vec![n, sum, half],
            "line {n} (restored after line {before})"
        );
    }
}

#[test]
fn gzip_stopped_in_the_middle_and_restored_decompresses_to_its_input() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.txt");
    std::fs::write(&input, semi_random_text(200 << 20, 42)).unwrap();
    let gz = dir.path().join("big.txt.gz");
    let mut cmd = Command::new("gzip");
    cmd.arg("-c").arg(&input);
    let mut r = launch(cmd, &gz, false);
    assert!(wait_for(Duration::from_secs(60), || file_len(&gz) >= 4 << 20));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let mut rp = restore_same(&set, &store);
    assert_eq!(rp.wait(), Some(0), "restored gzip failed");
    let st = Command::new("sh")
        .arg("-c")
        .arg(r#"gzip -dc "$1" | cmp -s - "$2""#)
        .arg("sh")
        .arg(&gz)
        .arg(&input)
        .status()
        .unwrap();
    assert!(st.success(), "gzip output does not decompress to the input");
}

#[test]
fn sort_stopped_in_the_middle_and_restored_writes_the_same_output() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("lines.txt");
    std::fs::write(&input, semi_random_text(60 << 20, 3)).unwrap();
    let run = |out: &Path| {
        let mut cmd = Command::new("sort");
        cmd.env("LC_ALL", "C")
            .args(["--parallel=1", "-S", "1G", "-k2"])
            .arg(&input)
            .arg("-o")
            .arg(out);
        cmd
    };
    let reference = dir.path().join("ref.sorted");
    let mut r = launch(run(&reference), &dir.path().join("ref.log"), false);
    assert!(r.child.wait().unwrap().success());

    let out = dir.path().join("restored.sorted");
    let mut r = launch(run(&out), &dir.path().join("log"), false);
    // In the middle of its work: it has read a good part of its input.
    let rchar = |pid: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/io"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("rchar:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(20), || rchar(r.pid) >= 8 << 20),
        "sort did not start reading"
    );
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let mut rp = restore_same(&set, &store);
    assert_eq!(rp.wait(), Some(0), "restored sort failed");
    assert!(
        std::fs::read(&reference).unwrap() == std::fs::read(&out).unwrap(),
        "sorted output differs"
    );
}

#[test]
fn one_set_restores_twice_and_both_continue_from_the_dump() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let mut cmd = Command::new(fixture("counter"));
    cmd.arg(&log);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        >= 5));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let dumped = read_numbers(&log).len();
    assert_consecutive(&read_numbers(&log));

    let rp = restore_same(&set, &store);
    assert!(wait_for(Duration::from_secs(10), || {
        read_numbers(&log).len() >= dumped + 20
    }));
    drop(rp); // killed and reaped: the pid is free again
    let first = read_numbers(&log);
    assert_consecutive(&first);

    let rp = restore_same(&set, &store);
    assert!(wait_for(Duration::from_secs(10), || {
        read_numbers(&log).len() >= first.len() + 20
    }));
    drop(rp);
    // The second life starts again right after the dump: dumped+1, dumped+2, ...
    let all = read_numbers(&log);
    assert_consecutive(
        &all[first.len()..]
            .iter()
            .map(|n| n - dumped as u64)
            .collect::<Vec<_>>(),
    );
}

#[test]
fn haul_run_migrates_a_counter_locally_and_reports_the_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let counter = fixture("counter");
    let job = dir.path().join("migrate.toml");
    std::fs::write(
        &job,
        format!(
            r#"
[process]
command = ["{}", "{{run_dir}}/counter.log"]
ready = {{ stdout_line = "ready" }}

[dump]
leave_running = false

[restore]
mode = "eager"
pid = "same"
from = "store"

[store]
path = "store"

[report]
dir = "reports"
history = "reports/history.jsonl"

[verify]
command = [
  "sh", "-c",
  '''sleep 0.3; awk 'NR > 1 && $1 != prev + 1 {{{{ bad = 1 }}}} {{{{ prev = $1 }}}} END {{{{ print ((bad || NR < 2) ? "GAP" : "OK") }}}}' {{run_dir}}/counter.log''',
]
expect_stdout = "OK"
timeout = "10s"
state = true
"#,
            counter.display()
        ),
    )
    .unwrap();
    let out = common::haul()
        .arg("run")
        .arg(&job)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let reports: Vec<PathBuf> = std::fs::read_dir(dir.path().join("reports"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    let report = reports
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| haul::report::load(p).unwrap().remove(0));
    let restored = report.as_ref().and_then(|r| r.restored_pid);
    let _guard = restored.map(|pid| Restored { pid, reaped: false });
    assert!(
        out.status.success(),
        "haul run: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report.expect("no report written");
    assert_eq!(r.restored_pid, r.pid, "restored under another pid");
    assert!(r.restore_time > 0);
    assert!(r.pages_restored > 0);
    let v = r.verify.expect("no verify outcome");
    assert!(v.passed, "verify: {v:?}");
    assert!(v.state, "the state was not compared: {v:?}");
    assert!(v.state_differences.is_empty(), "{v:?}");
}

/// Bitmask of `SigPnd` | `ShdPnd` of /proc/PID/status.
fn pending_signals(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        .map(|l| u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap())
        .fold(0, |a, b| a | b)
}

#[test]
fn blocked_pending_signal_is_still_pending_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("counts");
    let mut cmd = Command::new(fixture("sigfix"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    // sigfix blocks SIGPIPE (13): one sent stays pending.
    let pipe_bit = 1u64 << (libc::SIGPIPE - 1);
    send_signal(r.pid, "PIPE");
    assert!(wait_for(Duration::from_secs(5), || pending_signals(r.pid)
        & pipe_bit
        != 0));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    let pending = pending_signals(rp.pid);
    assert_eq!(
        pending, pipe_bit,
        "pending signals after restore: {pending:#x}"
    );
    // And the process goes on (the pending SIGPIPE stays blocked).
    assert_eq!(sigfix_counts(rp.pid, &out, 1), "usr1=1 usr2=0 alrm=0");
}

#[test]
fn personality_flags_are_kept_by_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    // setarch -R: ADDR_NO_RANDOMIZE (0x0040000), then exec of the counter (same pid).
    let mut cmd = Command::new("setarch");
    cmd.args(["x86_64", "-R"]).arg(fixture("counter")).arg(&log);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let persona = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/personality"))
            .unwrap()
            .trim()
            .to_string()
    };
    let before = persona(r.pid);
    assert_eq!(before, "00040000");
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    assert_eq!(persona(rp.pid), before);
}

/// Python with an interval timer (`setitimer(ITIMER_REAL)`, 20 ms) whose handler counts ticks
/// into a file; the main loop only sleeps.
const PY_TIMER: &str = r#"
import signal, sys, time
n = 0
f = open(sys.argv[1], "a", buffering=1)
def tick(sig, frame):
    global n
    n += 1
    f.write(f"{n}\n")
signal.signal(signal.SIGALRM, tick)
signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
print("ready", flush=True)
while True:
    time.sleep(1)
"#;

#[test]
fn interval_timer_keeps_ticking_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ticks");
    let mut cmd = Command::new(common::python3());
    cmd.arg("-c").arg(PY_TIMER).arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&out)
        .len()
        >= 10));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let before = read_numbers(&out).len();
    let rp = restore_same(&set, &store);
    let grew = wait_for(Duration::from_secs(5), || {
        read_numbers(&out).len() >= before + 10
    });
    drop(rp);
    assert!(grew, "no timer ticks after restore");
    assert_consecutive(&read_numbers(&out));
}

/// Python that counts in a shared, writable file mapping (the file is the state).
const PY_SHARED_MMAP: &str = r#"
import mmap, sys, time
f = open(sys.argv[1], "r+b")
m = mmap.mmap(f.fileno(), 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
f.close()
print("ready", flush=True)
while True:
    n = int.from_bytes(m[0:8], "little") + 1
    m[0:8] = n.to_bytes(8, "little")
    time.sleep(0.01)
"#;

#[test]
fn shared_file_mapping_is_the_same_file_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::write(&state, vec![0u8; 4096]).unwrap();
    let count = || {
        let b = std::fs::read(&state).unwrap();
        u64::from_le_bytes(b[0..8].try_into().unwrap())
    };
    let mut cmd = Command::new(common::python3());
    cmd.arg("-c").arg(PY_SHARED_MMAP).arg(&state);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || count() >= 10));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let at_dump = count();
    let rp = restore_same(&set, &store);
    // It goes on from the file's value: the mapping is the file, not a private copy.
    let grew = wait_for(Duration::from_secs(10), || count() >= at_dump + 20);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", rp.pid)).unwrap_or_default();
    drop(rp);
    assert!(
        grew,
        "counter in the shared mapping stopped at {}; maps:\n{maps}",
        count()
    );
}

/// Python writing an increasing number every 10 ms, odd ones to stdout and even ones to stderr,
/// unbuffered: with `>log 2>&1` both fds share one file offset.
const PY_TWO_FDS: &str = r#"
import os, time
os.write(1, b"ready\n")
n = 0
while True:
    n += 1
    os.write(1 if n % 2 else 2, f"{n}\n".encode())
    time.sleep(0.01)
"#;

#[test]
fn stdout_and_stderr_sharing_one_file_offset_still_share_it_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut cmd = Command::new(common::python3());
    cmd.arg("-c").arg(PY_TWO_FDS);
    // Running::logged opens the log once (not O_APPEND) and gives the child a dup of it as
    // stderr: one open file description, one offset.
    let mut r = launch(cmd, &log, true);
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        >= 10));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let before = read_numbers(&log).len();
    let rp = restore_same(&set, &store);
    let grew = wait_for(Duration::from_secs(5), || {
        read_numbers(&log).len() >= before + 20
    });
    drop(rp);
    assert!(grew, "restored process stopped writing");
    assert_consecutive(&read_numbers(&log));
}

#[test]
fn haul_dump_and_haul_restore_commands_move_a_counter_through_the_store() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let store = dir.path().join("store");
    let mut cmd = Command::new(fixture("counter"));
    cmd.arg(&log);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        >= 5));
    let out = common::haul()
        .args(["dump", "--kill", "--json", "--pid"])
        .arg(r.pid.to_string())
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haul dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let set = v["set"].as_str().expect("set id").to_string();
    r.child.wait().unwrap();
    let before = read_numbers(&log).len();

    let out = common::haul()
        .args(["restore", "--json", "--verify", "state", &set, "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haul restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = v["pid"].as_i64().expect("pid") as i32;
    let _rp = Restored { pid, reaped: false };
    assert_eq!(pid, r.pid);
    assert!(v["restore_time"].as_u64().unwrap() > 0);
    assert!(v["pages_restored"].as_u64().unwrap() > 0);
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        >= before + 20));
    assert_consecutive(&read_numbers(&log));
}

#[test]
fn avx_register_state_survives_restore_mid_loop() {
    const ROUNDS: i64 = 20_000_000;
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("avx");
    let mut cmd = Command::new(fixture("avxloop"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || read_rows(&out).len() >= 10));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let before = read_rows(&out).len();
    let rp = restore_same(&set, &store);
    let grew = wait_for(Duration::from_secs(20), || {
        read_rows(&out).len() >= before + 20
    });
    let alive = common::alive(rp.pid);
    drop(rp);
    assert!(grew, "restored avxloop stopped (alive: {alive})");
    for (i, row) in read_rows(&out).iter().enumerate() {
        let k = i as i64 + 1;
        let want: Vec<i64> = (1..=4).map(|lane| k * ROUNDS * lane).collect();
        assert_eq!(row[0], k, "line {k}: count");
        assert_eq!(
            &row[1..],
            &want[..],
            "line {k}: ymm lanes (restored after line {before})"
        );
    }
}

#[test]
fn sqlite3_query_stopped_in_the_middle_and_restored_prints_the_same_rows() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let mut cmd = Command::new("sqlite3");
        cmd.args(["-batch", "-init", "/dev/null", ":memory:"]).arg(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) \
             SELECT x, x * x % 1000003, printf('%08x', (x * 2654435761) % 4294967296) FROM c;",
        );
        cmd
    };
    let reference = dir.path().join("ref.out");
    let mut r = launch(run(), &reference, false);
    assert!(
        r.child.wait().unwrap().success(),
        "reference sqlite3 failed"
    );

    let out = dir.path().join("restored.out");
    let mut r = launch(run(), &out, false);
    assert!(wait_for(Duration::from_secs(30), || file_len(&out) >= 8 << 20));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let at_dump = file_len(&out);
    assert!(
        at_dump < file_len(&reference),
        "sqlite3 finished before the dump"
    );
    let mut rp = restore_same(&set, &store);
    assert_eq!(rp.wait(), Some(0), "restored sqlite3 failed");
    assert!(
        std::fs::read(&reference).unwrap() == std::fs::read(&out).unwrap(),
        "rows differ (dumped at byte {at_dump})"
    );
}

#[test]
fn threads_keep_their_tids_names_masks_tls_and_futex_waits_and_join_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut cmd = Command::new(fixture("threads"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let pid = r.pid;
    assert!(wait_for(Duration::from_secs(10), || {
        common::threads_report(pid, &out)[..3]
            .iter()
            .all(|&c| c >= 20)
    }));
    // Pause the counting, then take the counts once they hold still.
    deliver(pid, "USR2");
    let mut held = common::threads_report(pid, &out);
    assert!(wait_for(Duration::from_secs(10), || {
        let now = common::threads_report(pid, &out);
        std::mem::replace(&mut held, now) == held
    }));
    let before = common::tasks(pid);
    assert_eq!(before.len(), 4, "{before:?}");
    for (i, &tid) in held[3..].iter().enumerate() {
        let t = before.iter().find(|t| i64::from(t.0) == tid).unwrap();
        assert_eq!(t.1, format!("worker-{i}"));
    }

    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    assert_eq!(set.process.as_ref().unwrap().threads.len(), 4);
    let mut rp = restore_same(&set, &store);
    // (The main thread waits in sigsuspend, whose temporary mask shows only once the
    // restored thread has run into it again.)
    wait_for(Duration::from_secs(5), || common::tasks(rp.pid) == before);
    assert_eq!(
        common::tasks(rp.pid),
        before,
        "tids, names or signal masks differ"
    );
    assert_eq!(
        common::threads_report(rp.pid, &out),
        held,
        "counts moved while paused"
    );

    // Resume: the ping-pong (futex waits) and the sleeper go on from where they were.
    deliver(rp.pid, "USR2");
    let mut now = Vec::new();
    assert!(wait_for(Duration::from_secs(10), || {
        now = common::threads_report(rp.pid, &out);
        (0..3).all(|i| now[i] >= held[i] + 50)
    }));
    assert!(
        (now[0] - now[1]).abs() <= 1,
        "ping-pong out of step: {now:?}"
    );
    // Stop: the main thread joins every worker (each exit wakes its clear_child_tid futex).
    deliver(rp.pid, "HUP");
    assert!(
        wait_for(Duration::from_secs(10), || common::proc_state(rp.pid)
            == Some('Z')),
        "pid {} did not exit after SIGHUP: a pthread_join never returned",
        rp.pid
    );
    assert_eq!(
        rp.wait(),
        Some(0),
        "the restored process did not exit cleanly"
    );
    let joined = std::fs::read_to_string(&out).unwrap();
    let counts: Vec<i64> = joined
        .trim()
        .strip_prefix("joined ")
        .unwrap_or_else(|| panic!("no joined line: {joined:?}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!((0..3).all(|i| counts[i] >= now[i]), "{counts:?} < {now:?}");
}

/// python3 with two counting threads sharing a lock; `joined` once the stop file appears.
const PY_THREADS: &str = r#"
import os, sys, threading, time
out = open(sys.argv[1], "a", buffering=1)
lock = threading.Lock()
n = [0, 0]
stop = threading.Event()
def work(i):
    while not stop.is_set():
        with lock:
            n[i] += 1
            out.write(f"{i} {n[i]}\n")
        time.sleep(0.002)
ts = [threading.Thread(target=work, args=(i,), name=f"w{i}") for i in range(2)]
for t in ts:
    t.start()
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
stop.set()
for t in ts:
    t.join()
out.write(f"joined {n[0]} {n[1]}\n")
"#;

#[test]
fn python_threads_go_on_counting_and_join_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("py.out");
    let stop = dir.path().join("stop");
    let mut cmd = Command::new(common::python3());
    cmd.arg("-c").arg(PY_THREADS).arg(&out).arg(&stop);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || read_rows(&out).len() >= 40));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    assert_eq!(set.process.as_ref().unwrap().threads.len(), 3);
    let before = read_rows(&out).len();
    let mut rp = restore_same(&set, &store);
    assert!(
        wait_for(Duration::from_secs(10), || read_rows(&out).len()
            >= before + 40),
        "restored python threads do not count"
    );
    std::fs::write(&stop, "").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || common::proc_state(rp.pid)
            == Some('Z')),
        "restored python did not exit: a join never returned"
    );
    assert_eq!(rp.wait(), Some(0));
    // Each thread's numbers run 1, 2, 3, ... with no gap and no repeat across the restore,
    // and the joined line has the last of each.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut last = [0i64; 2];
    let mut joined = None;
    for line in text.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        if w[0] == "joined" {
            joined = Some([w[1].parse::<i64>().unwrap(), w[2].parse().unwrap()]);
            continue;
        }
        let (i, k): (usize, i64) = (w[0].parse().unwrap(), w[1].parse().unwrap());
        assert_eq!(
            k,
            last[i] + 1,
            "thread {i}: {k} after {} (restored after line {before})",
            last[i]
        );
        last[i] = k;
    }
    assert_eq!(joined, Some(last));
}

#[test]
fn a_failed_restore_of_a_multi_threaded_process_leaves_no_thread_behind() {
    use haul::restore::Step;
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut cmd = Command::new(fixture("threads"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let tids = common::threads_report(r.pid, &out);
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let pid = set.process.as_ref().unwrap().pid;
    // A thread id taken by another process: refused before anything is created.
    let mut blocker = Command::new("sleep").arg("30").spawn().unwrap();
    let comm = format!("/proc/{}/comm", blocker.id());
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&comm).unwrap_or_default().trim() == "sleep"
    }));
    let mut held = set.clone();
    held.process.as_mut().unwrap().threads[2].tid = blocker.id() as i32;
    let e = restore(&held, &store, &RestoreOptions::default())
        .unwrap_err()
        .to_string();
    blocker.kill().unwrap();
    blocker.wait().unwrap();
    assert!(
        e.contains(&format!(
            "thread id {} (of pid {pid}) is in use (by sleep)",
            blocker.id()
        )),
        "{e}"
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    // After the threads are made: they hold their tids until the failed restore is undone.
    for step in [Step::Creds, Step::Regs, Step::Run] {
        let e = restore(
            &set,
            &store,
            &RestoreOptions {
                fail_at: Some(step),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("at step {step}: failed on purpose")),
            "{e}"
        );
        let _ = waitpid(Pid::from_raw(pid), None);
        for t in std::iter::once(i64::from(pid)).chain(tids[3..].iter().copied()) {
            assert!(
                !Path::new(&format!("/proc/{t}")).exists(),
                "step {step}: task {t} left behind"
            );
        }
    }
    let mut rp = restore_same(&set, &store);
    assert_eq!(common::threads_report(rp.pid, &out)[3..], tids[3..]);
    send_signal(rp.pid, "HUP");
    assert!(wait_for(Duration::from_secs(10), || common::proc_state(
        rp.pid
    ) == Some('Z')));
    assert_eq!(rp.wait(), Some(0));
}

/// The credential lines of /proc/PID/status: ids, groups, the five capability sets,
/// no_new_privs.
fn creds_lines(pid: i32) -> Vec<String> {
    let keys = [
        "Uid:",
        "Gid:",
        "Groups:",
        "CapInh:",
        "CapPrm:",
        "CapEff:",
        "CapBnd:",
        "CapAmb:",
        "NoNewPrivs:",
    ];
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(k)))
        .map(String::from)
        .collect()
}

/// The counter under `setpriv ARGS`, dumped and restored: same credentials, counting on.
fn counter_keeps_its_credentials(setpriv_args: &[&str]) {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    // Writable by whoever the counter runs as.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let log = dir.path().join("counter.log");
    let mut cmd = Command::new("setpriv");
    cmd.args(setpriv_args)
        .arg("--")
        .arg(fixture("counter"))
        .arg(&log);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        >= 5));
    let before = creds_lines(r.pid);
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let dumped = read_numbers(&log).len();
    let rp = restore_same(&set, &store);
    assert_eq!(
        creds_lines(rp.pid),
        before,
        "credentials differ after restore"
    );
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        >= dumped + 10));
    drop(rp);
    assert_consecutive(&read_numbers(&log));
}

#[test]
fn root_with_a_smaller_bounding_set_and_ambient_caps_keeps_them_after_restore() {
    counter_keeps_its_credentials(&[
        "--bounding-set=-net_raw,-sys_ptrace,-mknod",
        "--inh-caps=+net_bind_service",
        "--ambient-caps=+net_bind_service",
    ]);
}

#[test]
fn unprivileged_user_with_an_ambient_capability_keeps_it_after_restore() {
    counter_keeps_its_credentials(&[
        "--reuid=65534",
        "--regid=65534",
        "--groups=65534,100",
        "--inh-caps=+net_bind_service",
        "--ambient-caps=+net_bind_service",
    ]);
}

/// Asks the ptimer fixture for its report (nine numbers) once its tick count passes `after`.
fn ptimer_report(pid: i32, out: &Path, after: i64) -> Vec<i64> {
    let mut got = Vec::new();
    let ok = wait_for(Duration::from_secs(10), || {
        send_signal(pid, "USR1");
        std::thread::sleep(Duration::from_millis(20));
        got = read_rows(out).into_iter().next().unwrap_or_default();
        got.len() == 9 && got[0] > after
    });
    assert!(ok, "ptimer pid {pid} did not report past {after}: {got:?}");
    got
}

#[test]
fn posix_timers_and_queued_signals_keep_ids_values_order_and_time_left_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut cmd = Command::new(fixture("ptimer"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let before = ptimer_report(r.pid, &out, 20);
    assert_eq!(before[2], 0, "bad signals before the dump: {before:?}");
    // Three SIGRTMIN+2 with values 1, 2, 3, queued to the process and blocked.
    send_signal(r.pid, "USR2");
    let rt2 = 1u64 << (libc::SIGRTMIN() + 2 - 1);
    assert!(wait_for(Duration::from_secs(5), || {
        haul::proc::status(r.pid).unwrap().shd_pnd & rt2 != 0
    }));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    assert_eq!(set.process.as_ref().unwrap().posix_timers.len(), 3);
    assert_eq!(haul::store::set_view(&set).process.unwrap().posix_timers, 3);
    let rp = restore_same(&set, &store);
    let after = ptimer_report(rp.pid, &out, before[0]);
    // The ids the process holds still name its timers (timer_gettime works on them).
    assert_eq!(after[3..6], before[3..6], "timer ids");
    assert_eq!(after[7], 5_000_000, "tick period: {after:?}");
    assert!(
        after[6] > 0 && after[6] <= before[6] && after[6] > before[6] - 30_000,
        "idle timer left {} ms after restore, {} before",
        after[6],
        before[6]
    );
    // Both firing timers go on, with their sigev_value (the handlers count wrong ones).
    let later = ptimer_report(rp.pid, &out, after[0] + 50);
    assert!(
        later[1] > after[1] + 5,
        "SIGEV_THREAD_ID timer stopped: {later:?}"
    );
    assert_eq!(later[2], 0, "signals with a wrong si_value: {later:?}");
    // The queued signals come back as they were: all three, in order, with their values.
    send_signal(rp.pid, "HUP");
    let mut q = Vec::new();
    assert!(
        wait_for(Duration::from_secs(5), || {
            q = ptimer_report(rp.pid, &out, 0);
            q[8] != 0
        }),
        "the queued signals never arrived"
    );
    assert_eq!(q[8], 123, "queued signals (values folded in order): {q:?}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/timers", rp.pid))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("ID: "))
            .count(),
        3
    );
}

#[test]
fn signals_arriving_during_leave_running_dumps_keep_their_siginfo() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut cmd = Command::new(fixture("ptimer"));
    cmd.arg(&out);
    let r = launch(cmd, &dir.path().join("log"), true);
    let before = ptimer_report(r.pid, &out, 10);
    // A timer signal every 5 ms: some arrive while haul injects syscalls. Each must reach the
    // handler with its sigev_value, not be re-sent by haul without it.
    for _ in 0..10 {
        snapshot(r.pid);
    }
    let after = ptimer_report(r.pid, &out, before[0] + 20);
    assert_eq!(after[2], 0, "signals with a wrong si_value: {after:?}");
}

/// python3 holding four locks (a write flock, a POSIX write lock on bytes 5-14, a read flock,
/// a whole-file OFD write lock) while it counts into DIR/count.
const PY_LOCKS: &str = r#"
import fcntl, struct, sys, time
d = sys.argv[1]
a = open(d + "/flock", "w"); fcntl.flock(a, fcntl.LOCK_EX)
b = open(d + "/posix", "w"); b.write("x" * 100); b.flush(); fcntl.lockf(b, fcntl.LOCK_EX, 10, 5)
c = open(d + "/shared", "r"); fcntl.flock(c, fcntl.LOCK_SH)
o = open(d + "/ofd", "w"); fcntl.fcntl(o, 37, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
out = open(d + "/count", "a", buffering=1)
print("ready", flush=True)
n = 0
while True:
    n += 1
    out.write(f"{n}\n")
    time.sleep(0.01)
"#;

/// Whether another process can take a lock right now: `how` is python (f = the open file).
fn lock_free(path: &Path, mode: &str, how: &str) -> bool {
    let script = format!("import fcntl, struct\nf = open({path:?}, {mode:?})\n{how}");
    Command::new(common::python3())
        .args(["-c", &script])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The `lock:` lines of every fd of `pid`, without the owner pid.
fn lock_lines(pid: i32) -> Vec<String> {
    let mut v = Vec::new();
    for fd in haul::proc::fds(pid).unwrap() {
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        for l in info.lines().filter(|l| l.starts_with("lock:")) {
            let w: Vec<&str> = l.split_whitespace().collect();
            v.push(format!("fd {fd}: {} {} {} {}", w[2], w[4], w[7], w[8]));
        }
    }
    v
}

#[test]
fn file_locks_are_held_again_by_the_restored_process() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("shared"), "").unwrap();
    let mut cmd = Command::new(common::python3());
    cmd.arg("-c").arg(PY_LOCKS).arg(d);
    let mut r = launch(cmd, &d.join("log"), true);
    let count = d.join("count");
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&count)
        .len()
        >= 10));
    let before = lock_lines(r.pid);
    assert_eq!(before.len(), 4, "{before:?}");
    let store = new_store(d);
    let set = dump_kill(&mut r, &store);
    let view = haul::store::set_view(&set).process.unwrap();
    assert_eq!(view.file_locks, 4, "haul images show: {view:?}");
    let ex = "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)";
    assert!(
        lock_free(&d.join("flock"), "w", ex),
        "the dead original still holds it"
    );

    // Someone else took one of the locks meanwhile: the restore is refused, nothing is left.
    let mut holder = Command::new(common::python3())
        .args([
            "-c",
            &format!(
                "import fcntl, time\nf = open({:?}, 'w')\nfcntl.flock(f, fcntl.LOCK_EX)\nprint('ready', flush=True)\ntime.sleep(60)",
                d.join("flock")
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let e = restore(&set, &store, &RestoreOptions::default())
        .unwrap_err()
        .to_string();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        e.contains("write flock lock on") && e.contains("is held by another process now"),
        "{e}"
    );
    let pid = set.process.as_ref().unwrap().pid;
    let _ = waitpid(Pid::from_raw(pid), None);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    let rp = restore_same(&set, &store);
    assert_eq!(lock_lines(rp.pid), before, "locks differ after restore");
    assert!(!lock_free(&d.join("flock"), "w", ex));
    assert!(!lock_free(
        &d.join("posix"),
        "r+",
        "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 14)"
    ));
    assert!(lock_free(
        &d.join("posix"),
        "r+",
        "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 15)"
    ));
    assert!(lock_free(
        &d.join("shared"),
        "r",
        "fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)"
    ));
    assert!(!lock_free(&d.join("shared"), "r", ex));
    assert!(!lock_free(
        &d.join("ofd"),
        "w",
        "fcntl.fcntl(f, 37, struct.pack('hhqqi', fcntl.F_RDLCK, 0, 0, 0, 0))"
    ));
    let dumped = read_numbers(&count).len();
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&count)
        .len()
        >= dumped + 10));
    drop(rp);
    assert_consecutive(&read_numbers(&count));
}

/// Nice value, policy and allowed CPUs of `pid`, from /proc.
fn sched_of(pid: i32) -> (i32, u32, Vec<u32>) {
    let st = haul::proc::stat(pid).unwrap();
    let status = haul::proc::status(pid).unwrap();
    (st.nice, st.policy, status.cpus_allowed)
}

#[test]
fn nice_value_policy_and_cpus_are_kept_by_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    // SCHED_BATCH (3), nice 7, CPU 0 only: none of them haul's own.
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "7", "taskset", "-c", "0", "chrt", "-b", "0"])
        .arg(fixture("counter"))
        .arg(&log);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        >= 5));
    let before = sched_of(r.pid);
    assert_eq!(before, (7, 3, vec![0]));
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    assert_eq!(sched_of(rp.pid), before);
    let dumped = read_numbers(&log).len();
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        >= dumped + 10));
}

/// python3 with four anonymous mappings of 1 MiB carrying VmFlags a restore must set again:
/// locked (`lo`), huge pages wanted (`hg`), mergeable (`mg`), wiped on fork (`wf`); it writes
/// a checksum of all four into DIR/sum on SIGUSR1.
const PY_VMFLAGS: &str = r#"
import ctypes, hashlib, mmap, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
maps = []
for i, advice in enumerate([None, 14, 12, 18]):
    m = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(bytes([65 + i]) * (1 << 20))
    if advice is None:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        assert libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(1 << 20)) == 0
    else:
        m.madvise(advice)
    maps.append(m)
def report(*_):
    h = hashlib.sha256()
    for m in maps:
        h.update(m[:])
    open(sys.argv[1] + ".tmp", "w").write(h.hexdigest())
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
signal.signal(signal.SIGUSR1, report)
print("ready", flush=True)
while True:
    time.sleep(0.01)
"#;

/// Per VMA (start-end), the VmFlags among those a restore sets by madvise or mlock.
fn advised_flags(pid: i32) -> Vec<String> {
    let keep = ["lo", "hg", "nh", "mg", "wf", "dc", "dd"];
    haul::proc::maps_with_flags(pid)
        .unwrap()
        .iter()
        .filter_map(|m| {
            let f: Vec<&str> = keep.iter().copied().filter(|k| m.has_flag(k)).collect();
            (!f.is_empty()).then(|| format!("{:x}-{:x} {}", m.start, m.end, f.join(" ")))
        })
        .collect()
}

#[test]
fn locked_huge_mergeable_and_wipeonfork_mappings_keep_their_flags_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let sum = dir.path().join("sum");
    let mut cmd = Command::new(common::python3());
    cmd.arg("-c").arg(PY_VMFLAGS).arg(&sum);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    send_signal(r.pid, "USR1");
    assert!(wait_for(Duration::from_secs(5), || sum.exists()));
    let checksum = std::fs::read_to_string(&sum).unwrap();
    let before = advised_flags(r.pid);
    for f in ["lo", "hg", "mg", "wf"] {
        assert!(
            before
                .iter()
                .any(|l| l.ends_with(f) || l.contains(&format!(" {f}"))),
            "{f}: {before:?}"
        );
    }
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    std::fs::remove_file(&sum).unwrap();
    let rp = restore_same(&set, &store);
    assert_eq!(advised_flags(rp.pid), before);
    send_signal(rp.pid, "USR1");
    assert!(wait_for(Duration::from_secs(5), || sum.exists()));
    assert_eq!(std::fs::read_to_string(&sum).unwrap(), checksum);
}

/// python3 holding two pipes of its own: a blocking one with 6000 bytes queued, its ends on
/// swapped numbers (write end fd 3, read end fd 4: a restore's pipe2 gives them the other way
/// round) and a dup of its write end; and an empty non-blocking one. On SIGUSR1 it drains the first, writes
/// "again" through the dup and reads it back, tries the empty one, and reports
/// "<bytes> <sha256> <read back> <empty?>".
const PY_PIPES: &str = r#"
import hashlib, os, signal, sys, time
a, b = os.pipe()
os.dup2(a, 9)
os.dup2(b, 3)
os.dup2(9, 4)
os.close(9)
r, w = 4, 3
os.write(w, b"hello " * 1000)
r2, w2 = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
w_dup = os.dup(w)
out = sys.argv[1]
def report(*_):
    data = os.read(r, 1 << 20)
    os.write(w_dup, b"again")
    back = os.read(r, 100).decode()
    try:
        os.read(r2, 1)
        empty = "no"
    except BlockingIOError:
        empty = "yes"
    open(out + ".tmp", "w").write(f"{len(data)} {hashlib.sha256(data).hexdigest()} {back} {empty}")
    os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR1, report)
print("ready", flush=True)
while True:
    time.sleep(0.01)
"#;

/// The fd numbers and `flags:` of every fd of `pid`.
fn fd_flags(pid: i32) -> Vec<String> {
    haul::proc::fds(pid)
        .unwrap()
        .into_iter()
        .map(|fd| format!("{fd} {:o}", haul::proc::fdinfo(pid, fd).unwrap().flags))
        .collect()
}

#[test]
fn pipes_inside_the_process_come_back_with_their_contents_and_flags() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut cmd = Command::new(common::python3());
    cmd.arg("-c").arg(PY_PIPES).arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    let before = fd_flags(r.pid);
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    assert_eq!(fd_flags(rp.pid), before, "fds or their flags differ");
    send_signal(rp.pid, "USR1");
    assert!(wait_for(Duration::from_secs(5), || out.exists()));
    let d = Command::new("sh")
        .args(["-c", "printf 'hello %.0s' $(seq 1000) | sha256sum"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&d.stdout);
    let sum = stdout.split(' ').next().unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("6000 {sum} again yes")
    );
}

/// The link targets (kinds) and `flags:` of every fd of `pid`.
fn fd_kinds(pid: i32) -> Vec<String> {
    haul::proc::fds(pid)
        .unwrap()
        .into_iter()
        .map(|fd| {
            let target = haul::proc::fd_target(pid, fd).unwrap();
            let flags = haul::proc::fdinfo(pid, fd).unwrap().flags;
            format!(
                "{fd} {flags:o} {}",
                if target.starts_with('/') {
                    "file"
                } else {
                    &target
                }
            )
        })
        .collect()
}

/// Expirations of the timerfd of `pid` not read yet (its fdinfo's `ticks`).
fn timer_ticks(pid: i32) -> u64 {
    haul::proc::fds(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|fd| haul::proc::fd_target(pid, *fd).is_ok_and(|t| t == "anon_inode:[timerfd]"))
        .filter_map(|fd| {
            let info = haul::proc::fdinfo(pid, fd).ok()?;
            info.get("ticks")?.trim().parse().ok()
        })
        .next()
        .unwrap_or(0)
}

#[test]
fn eventfd_timerfd_and_signalfd_come_back_with_their_state() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reads");
    let mut cmd = Command::new(fixture("fdkinds"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"), true);
    // A SIGUSR2 waits in the signalfd's queue (blocked), the timer ticks unread.
    send_signal(r.pid, "USR2");
    assert!(wait_for(Duration::from_secs(5), || {
        haul::proc::status(r.pid).unwrap().shd_pnd & (1 << (libc::SIGUSR2 - 1)) != 0
    }));
    assert!(
        wait_for(Duration::from_secs(5), || timer_ticks(r.pid) >= 1),
        "the timer never expired"
    );
    let before = fd_kinds(r.pid);
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let rp = restore_same(&set, &store);
    assert_eq!(fd_kinds(rp.pid), before);
    // Six reads: the eventfd gives 1 five times (its counter was 5, semaphore mode), then
    // nothing; the signalfd gives the pending SIGUSR2 once; the timer has ticked.
    let mut rows = Vec::new();
    for i in 1..=6 {
        send_signal(rp.pid, "USR1");
        assert!(
            wait_for(Duration::from_secs(5), || {
                rows = read_rows(&out);
                rows.len() == i
            }),
            "read {i}: {rows:?}"
        );
        // The next read finds the timer expired again.
        assert!(
            wait_for(Duration::from_secs(5), || timer_ticks(rp.pid) >= 1),
            "the timer stopped after read {i}: {rows:?}"
        );
    }
    let events: Vec<i64> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(events, [1, 1, 1, 1, 1, 0], "{rows:?}");
    let signals: Vec<i64> = rows.iter().map(|r| r[2]).collect();
    assert_eq!(
        signals,
        [i64::from(libc::SIGUSR2), 0, 0, 0, 0, 0],
        "{rows:?}"
    );
    assert!(
        rows[0][1] >= 1,
        "no timer expiration carried over: {rows:?}"
    );
    assert!(
        rows[1..].iter().map(|r| r[1]).sum::<i64>() >= 2,
        "the timer stopped: {rows:?}"
    );
}
