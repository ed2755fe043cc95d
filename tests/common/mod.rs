//! Shared helpers of the integration tests: fixture programs built once per test run, the haul
//! binary, temp dirs, waiting for conditions.
#![allow(dead_code)]

pub mod tree;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The repository's top folder.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

static BUILD: Mutex<()> = Mutex::new(());

/// Builds `fixtures/<name>.c` into `fixtures/bin/<name>` (once per test run, and only when the
/// source is newer than the binary) and returns the binary's path. Several test binaries may run
/// at once: each compiles to a private name and renames, so none sees a half-written binary.
pub fn fixture(name: &str) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let src = repo().join("fixtures").join(format!("{name}.c"));
    let bin_dir = repo().join("fixtures").join("bin");
    let bin = bin_dir.join(name);
    std::fs::create_dir_all(&bin_dir).expect("create fixtures/bin");
    let fresh = match (std::fs::metadata(&src), std::fs::metadata(&bin)) {
        (Ok(s), Ok(b)) => b.modified().unwrap() >= s.modified().unwrap(),
        (Err(e), _) => panic!("fixture source {}: {e}", src.display()),
        _ => false,
    };
    if !fresh {
        let tmp = bin_dir.join(format!(".{name}.{}", std::process::id()));
        let out = Command::new("cc")
            .args(["-O1", "-g", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .expect("run cc (gcc must be installed: .ci/run installs it)");
        assert!(
            out.status.success(),
            "cc {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &bin).expect("rename fixture binary");
    }
    bin
}

/// Path of the `haul` binary built for these tests.
pub fn haul_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_haul"))
}

/// A `haul` command with a clean environment for tests (no inherited HAUL_STORE).
pub fn haul() -> Command {
    let mut c = Command::new(haul_bin());
    c.env_remove("HAUL_STORE").env("RUST_LOG", "warn");
    c
}

/// Polls `cond` every 5 ms until it is true or `timeout` passes; returns whether it became true.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads a file of one number per line (the counter fixture's output).
pub fn read_numbers(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// True while `/proc/PID` exists and the process is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|r| !r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The state letter of `/proc/PID/stat` (R, S, T, t, Z, ...).
pub fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')').next()?.trim_start().chars().next()
}

/// `TracerPid` of `/proc/PID/status` (0 = not traced).
pub fn tracer_pid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

// ---- helpers of tests/sys.rs and tests/dump.rs ----

/// A spawned fixture (or any program) that is killed and reaped when dropped.
pub struct Running {
    pub child: std::process::Child,
    pub pid: i32,
}

impl Running {
    /// Spawns `cmd` with stdin from /dev/null and stdout piped, and waits (up to 20 s) for its
    /// first stdout line to be `ready`.
    pub fn ready(cmd: &mut Command) -> Running {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn fixture");
        let pid = child.id() as i32;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first.and_then(|l| l.ok()).unwrap_or_default());
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        assert_eq!(
            line.trim(),
            "ready",
            "fixture pid {pid} did not print ready"
        );
        Running { child, pid }
    }

    /// Spawns `cmd` (stdin /dev/null, stdout discarded) without waiting for anything.
    pub fn spawn(cmd: &mut Command) -> Running {
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id() as i32;
        Running { child, pid }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` to `pid` with the `kill` command (tests stay free of `unsafe`).
pub fn send_signal(pid: i32, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Asks a memwriter for a report (SIGUSR1, repeated every 500 ms) and returns (ticks, region checksum) once the
/// report file shows a tick count above `after` (the file is renamed into place after it is
/// closed, so the memwriter is done with it by then).
pub fn memwriter_report(pid: i32, out: &Path, after: u64) -> (u64, String) {
    let got = memwriter_report_unless(pid, out, after, || false);
    assert!(
        got.is_some(),
        "memwriter pid {pid} did not report into {}",
        out.display()
    );
    got.unwrap()
}

/// [`memwriter_report`], but `None` once `gone()` says the memwriter is gone, or after 20 s
/// without a report.
pub fn memwriter_report_unless(
    pid: i32,
    out: &Path,
    after: u64,
    mut gone: impl FnMut() -> bool,
) -> Option<(u64, String)> {
    let read = || -> Option<(u64, String)> {
        let s = std::fs::read_to_string(out).ok()?;
        let mut w = s.split_whitespace();
        let t = w.next()?.parse::<u64>().ok()?;
        let c = w.next()?.to_string();
        (t > after).then_some((t, c))
    };
    // Ask again every half second: a report written before the ticks passed `after` answers
    // the first signal without satisfying us.
    let mut got = None;
    let mut asked: Option<std::time::Instant> = None;
    let mut ended = false;
    wait_for(Duration::from_secs(20), || {
        if gone() {
            ended = true;
            return true;
        }
        if asked.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            send_signal(pid, "USR1");
            asked = Some(std::time::Instant::now());
        }
        got = read();
        got.is_some()
    });
    if ended {
        return None;
    }
    got
}

/// A command that runs `program` with every fd above 2 closed first: test processes inherit
/// stray descriptors from cargo (its jobserver pipes), which a checkpoint would rightly
/// refuse. `bash` closes them and then `exec`s the program, so the pid is the program's.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(r#"for f in /proc/$$/fd/*; do n=${f##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done; exec "$@""#)
        .arg("haul-test")
        .arg(program);
    c
}

impl Running {
    /// Spawns `cmd` the way the runner does: stdin /dev/null, stdout and stderr to `log`. With
    /// `wait_ready`, waits (up to 20 s) until the log holds a line `ready`.
    pub fn logged(cmd: &mut Command, log: &Path, wait_ready: bool) -> Running {
        let out = std::fs::File::create(log).expect("create log");
        let err = out.try_clone().expect("clone log fd");
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn");
        let pid = child.id() as i32;
        let r = Running { child, pid };
        if wait_ready {
            let ok = wait_for(Duration::from_secs(20), || {
                std::fs::read_to_string(log)
                    .map(|s| s.lines().any(|l| l == "ready"))
                    .unwrap_or(false)
            });
            assert!(ok, "pid {pid} did not print ready into {}", log.display());
        }
        r
    }
}

/// The python3 binary itself (the pyenv shim on PATH is a shell script, which a checkpoint
/// would see instead of python).
pub fn python3() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("run python3");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

/// Asks the threads fixture for its report and returns its numbers (three counts, then the
/// three worker tids; or the counts after "joined").
pub fn threads_report(pid: i32, out: &Path) -> Vec<i64> {
    let _ = std::fs::remove_file(out);
    send_signal(pid, "USR1");
    let mut got = Vec::new();
    let ok = wait_for(Duration::from_secs(10), || {
        got = std::fs::read_to_string(out)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        got.len() == 6
    });
    assert!(ok, "threads pid {pid} did not report: {got:?}");
    got
}

/// Each task of `pid` with its name and blocked-signal mask, by tid.
pub fn tasks(pid: i32) -> Vec<(i32, String, String)> {
    let mut v: Vec<(i32, String, String)> = haul::proc::tids(pid)
        .unwrap()
        .into_iter()
        .map(|t| {
            let dir = format!("/proc/{pid}/task/{t}");
            let comm = std::fs::read_to_string(format!("{dir}/comm")).unwrap();
            let status = std::fs::read_to_string(format!("{dir}/status")).unwrap();
            let blk = status.lines().find(|l| l.starts_with("SigBlk")).unwrap();
            (t, comm.trim().to_string(), blk.to_string())
        })
        .collect();
    v.sort();
    v
}

// ---- skipping, seeds and built faults ----

/// A test that cannot run on this machine says so on stderr and returns (`if let Some(..) =
/// ... else { return skip(..) }`). Under CI (`CI` set), where everything a test needs is
/// installed, it fails instead: no test passes there without having run.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run here ({why}), and CI must run it");
    }
    eprintln!("SKIPPED: {test}: {why}");
}

/// The seed of a randomised test: `HAUL_TEST_SEED` to replay a failure, else one from the clock
/// and pid. Printed either way, so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("HAUL_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            (t ^ (std::process::id() as u64) << 32) | 1
        });
    eprintln!("{test}: seed {s} (replay with HAUL_TEST_SEED={s})");
    s
}

/// A small xorshift64 step, for random moments that need no crate.
pub fn next_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// A tmpfs of a fixed size mounted on a directory (a real full disk for fault tests);
/// unmounted when dropped.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `20m`) on `path` (created); `Err` says why it could not
    /// (not root, no mount in this sandbox).
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The pids whose parent is `pid` (its children, from `/proc/*/stat`).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|x| x.parse::<i32>().ok());
        if ppid == Some(pid) {
            v.push(p);
        }
    }
    v
}

/// Pauses a memwriter's dirtying (SIGUSR2) and waits until it has really stopped writing: two
/// reports, ticks apart, with the same region checksum. Returns that last (ticks, checksum);
/// `after` is a tick count already reported (0: none). (A fixed sleep after the signal would
/// assume how fast a loaded machine delivers it.)
pub fn memwriter_pause(pid: i32, out: &Path, after: u64) -> (u64, String) {
    send_signal(pid, "USR2");
    let (mut t, mut sum) = memwriter_report(pid, out, after);
    for _ in 0..50 {
        let (t2, sum2) = memwriter_report(pid, out, t + 1);
        if sum2 == sum {
            return (t2, sum2);
        }
        (t, sum) = (t2, sum2);
    }
    panic!("memwriter pid {pid} kept writing after SIGUSR2");
}

/// Restore options that compare the restored process with its image before it runs
/// (`--verify state`): the restore tests use them, so that an attribute a restore newly loses
/// fails a test instead of passing silently.
pub fn verified(pid: haul::restore::PidChoice) -> haul::restore::RestoreOptions {
    haul::restore::RestoreOptions {
        pid,
        verify_state: true,
        ..Default::default()
    }
}

/// Pages kept in memory by id, served in key order and verified like the store does: a
/// `PageSource` for tests that dump into a `VecSink` and restore without a store.
pub struct MemSource {
    pub pages: std::collections::HashMap<haul::image::PageId, Vec<u8>>,
}

impl haul::restore::PageSource for MemSource {
    fn for_each_page(
        &self,
        set: &haul::image::ImageSet,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<(), haul::restore::BoxError>,
    ) -> Result<(), haul::restore::BoxError> {
        for (key, r) in set.pages.iter() {
            if let haul::image::PageRef::Stored(id) = r {
                let page = &self.pages[&id];
                assert_eq!(haul::image::PageId::of(page), id);
                f(key, page)?;
            }
        }
        Ok(())
    }
}
