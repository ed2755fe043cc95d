//! A test session for process trees: one test of a file at a time, the test process a child
//! subreaper (this machine's init does not reap orphans: dumped processes and restored roots
//! are re-parented to the test process, which reaps them), and every process left below the
//! test process killed and reaped when the test ends, passed or failed.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::children_of;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test's run: its temp dir, its store, the lock that keeps the other tests of this file
/// waiting, and the cleanup of every process left below the test process.
pub struct Session {
    dir: tempfile::TempDir,
    // Dropped before the lock (fields drop in order): the next test starts clean.
    _below: Below,
    _serial: MutexGuard<'static, ()>,
}

impl Session {
    pub fn start() -> Session {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        Session {
            dir: tempfile::tempdir().expect("temp dir"),
            _below: Below,
            _serial: serial,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
}

/// Kills every process below the test process and reaps them, when dropped.
pub struct Below;

impl Drop for Below {
    fn drop(&mut self) {
        let me = std::process::id() as i32;
        for _ in 0..200 {
            let all = descendants(me);
            if all.is_empty() {
                return;
            }
            for p in &all {
                let _ = nix::sys::signal::kill(Pid::from_raw(*p), nix::sys::signal::SIGKILL);
            }
            for p in children_of(me) {
                let _ = waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("left behind below the test: {:?}", descendants(me));
    }
}

/// Every process below `pid` (children, their children, ...).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out.sort_unstable();
    out
}
