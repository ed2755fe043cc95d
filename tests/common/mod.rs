//! Shared helpers of the integration tests: fixture programs built once per test run, the haul
//! binary, temp dirs, waiting for conditions.
#![allow(dead_code)]

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
