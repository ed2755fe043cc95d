//! The harness of the real-service tests (tests/services.rs): a free port, a service started
//! with a config in the test's temp dir and waited for until it answers its own client, the
//! moment nothing is connected to it any more, and `haul dump --check` / `haul dump --kill` /
//! `haul restore` through the command line as a user runs them.
//!
//! It is not under tests/common/mod.rs (every test binary would build it): tests/services.rs
//! includes it with `#[path]`. Tests using it hold a [`crate::common::tree::Session`]: the test process is the subreaper of the
//! dumped and restored processes, and every process left below it is killed and reaped when
//! the test ends.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::common::tree::descendants;
use crate::common::wait_for;

/// How long a service may take to answer after it was started or restored.
pub const ANSWER: Duration = Duration::from_secs(20);

/// A port nobody listens on right now: the kernel's pick for a socket bound to port 0.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The path of `program` on PATH (or one of `also`, absolute paths outside PATH), or None.
pub fn find_program(program: &str, also: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .chain(also.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// The programs a test needs, found; when one is missing the test is skipped (a failure under
/// CI, where install-deps installs them all): `let Some(p) = need(..) else { return };`.
pub fn need(test: &str, programs: &[&str]) -> Option<Vec<PathBuf>> {
    let mut found = Vec::new();
    for p in programs {
        match find_program(p, &[&format!("/usr/sbin/{p}"), &format!("/sbin/{p}")]) {
            Some(path) => found.push(path),
            None => {
                crate::common::skip(test, &format!("{p} is not installed (./install-deps)"));
                return None;
            }
        }
    }
    Some(found)
}

/// A service started by a test: its root process (our child until it is dumped), its port
/// and its log (stdout and stderr).
pub struct Service {
    pub name: String,
    pub root: Child,
    pub pid: i32,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    /// Starts `cmd` the way the runner does (no inherited fds above 2, stdin /dev/null, stdout
    /// and stderr into `<dir>/<name>.log`) and waits until `answers()` says it serves.
    pub fn start(
        name: &str,
        mut cmd: Command,
        port: u16,
        dir: &Path,
        answers: impl FnMut() -> bool,
    ) -> Service {
        haul::sys::spawn::close_inherited_fds(&mut cmd);
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log fd");
        let root = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let pid = root.id() as i32;
        let s = Service {
            name: name.to_string(),
            root,
            pid,
            port,
            log,
        };
        let ok = wait_for(ANSWER, answers);
        assert!(ok, "{name} (pid {pid}) never answered: {}", s.log_text());
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the service holds no connection on its port (only the listening socket;
    /// what a closed client leaves in TIME_WAIT or a closed server end in LAST_ACK belongs to
    /// no process) and its tree has exactly `processes` processes (a server's child serving a
    /// connection that ended has exited): the state of an idle server, which is what is
    /// checkpointed here.
    pub fn wait_idle(&self, processes: usize) {
        let mut seen = (Vec::new(), Vec::new());
        let ok = wait_for(ANSWER, || {
            seen = (held_connections(self.port), tree_of(self.pid));
            seen.0.is_empty() && seen.1.len() == processes
        });
        assert!(
            ok,
            "{} never went idle: connections on port {} held {:?}, tree {:?} (want {processes} \
             processes)",
            self.name, self.port, seen.0, seen.1
        );
    }
}

/// The root and every process below it.
pub fn tree_of(root: i32) -> Vec<i32> {
    let mut v = vec![root];
    v.extend(descendants(root));
    v.retain(|&p| crate::common::alive(p));
    v
}

/// The TCP sockets on local port `port` other than listening ones that a process still holds
/// (inode != 0), as `/proc/net/tcp{,6}` lines' `state:inode`.
pub fn held_connections(port: u16) -> Vec<String> {
    let mut v = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines().skip(1) {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() < 10 {
                continue;
            }
            let local_port = w[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let (state, inode) = (w[3], w[9]);
            if local_port == Some(port) && state != "0A" && inode != "0" {
                v.push(format!("{state}:{inode}"));
            }
        }
    }
    v
}

/// `haul dump --check --pid PID`: must say the tree can be checkpointed (exit 0).
pub fn check(pid: i32) {
    let out = crate::common::haul()
        .args(["dump", "--check", "--pid"])
        .arg(pid.to_string())
        .output()
        .expect("run haul dump --check");
    assert!(
        out.status.success(),
        "haul dump --check --pid {pid} names something unsupported: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pids of a set as `haul images show --json` lists them.
pub fn set_pids(store: &Path, set: &str) -> Vec<i32> {
    let out = crate::common::haul()
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
    v["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"processes\" in haul images show --json: {v}"))
        .iter()
        .map(|p| p["pid"].as_i64().expect("pid") as i32)
        .collect()
}

/// `haul dump --kill --pid ROOT` through the command line (after `haul dump --check`); returns
/// the set id once every process of the set is gone (the root and those re-parented to the
/// test process are reaped).
pub fn dump_kill(s: &mut Service, store: &Path) -> String {
    check(s.pid);
    let out = crate::common::haul()
        .args(["dump", "--kill", "--json", "--name", &s.name, "--pid"])
        .arg(s.pid.to_string())
        .arg("--store")
        .arg(store)
        .output()
        .expect("run haul dump");
    assert!(
        out.status.success(),
        "haul dump --kill of {} (pid {}): {}{}",
        s.name,
        s.pid,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dump --json");
    let set = v["set"].as_str().expect("set id").to_string();
    s.root.wait().expect("reap the dumped root");
    wait_gone(&set_pids(store, &set));
    set
}

/// Waits until none of `pids` exists any more, reaping those that are our children.
pub fn wait_gone(pids: &[i32]) {
    let gone = wait_for(ANSWER, || {
        pids.iter().all(|&p| {
            let _ = waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG));
            !Path::new(&format!("/proc/{p}")).exists()
        })
    });
    let left: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(gone, "dumped with --kill, still there: {left:?}");
}

/// `haul restore SET` (same PIDs; with `verify_state`, `--verify state` too); returns the
/// root's pid.
pub fn restore(store: &Path, set: &str, verify_state: bool) -> i32 {
    let mut cmd = crate::common::haul();
    cmd.args(["restore", "--json", set, "--store"]).arg(store);
    if verify_state {
        cmd.args(["--verify", "state"]);
    }
    let out = cmd.output().expect("run haul restore");
    assert!(
        out.status.success(),
        "haul restore {set}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("restore --json");
    v["pid"].as_i64().expect("pid") as i32
}

/// A `haul restore SET --lazy` running in the foreground (it serves the restored process's
/// memory until every page is resident): the restored root's pid, printed first.
pub struct LazyRestore {
    pub haul: Child,
    pub pid: i32,
}

impl LazyRestore {
    pub fn start(store: &Path, set: &str) -> LazyRestore {
        let mut haul = crate::common::haul()
            .args(["restore", "--lazy", "--idle-push", "500ms", set, "--store"])
            .arg(store)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run haul restore --lazy");
        let stdout = haul.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(|l| l.ok()).unwrap_or_default());
            for _ in lines {}
        });
        let line = rx.recv_timeout(ANSWER).unwrap_or_default();
        let Ok(pid) = line.trim().parse::<i32>() else {
            let _ = haul.kill();
            let _ = haul.wait();
            let mut err = String::new();
            if let Some(mut e) = haul.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("haul restore --lazy {set} printed {line:?} instead of a pid: {err}");
        };
        LazyRestore { haul, pid }
    }

    /// Waits until haul has made every page resident and exited; it must exit 0.
    pub fn finish(mut self) {
        let mut status = None;
        let ok = wait_for(Duration::from_secs(60), || {
            status = self.haul.try_wait().expect("try_wait haul restore --lazy");
            status.is_some()
        });
        let mut err = String::new();
        if let Some(mut e) = self.haul.stderr.take() {
            if ok {
                let _ = e.read_to_string(&mut err);
            }
        }
        assert!(
            ok,
            "haul restore --lazy never finished serving pid {}",
            self.pid
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "haul restore --lazy of pid {} ended {status:?}: {err}",
            self.pid
        );
    }
}

/// Runs a client command; returns (exit success, stdout, and stderr when it failed) and never
/// hangs past `timeout` (the client is killed then).
pub fn client(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn client {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let mut status = None;
    wait_for(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let ok = status.is_some_and(|s| s.success());
    let mut text = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if status.is_none() {
        text.push_str(" (client killed: no answer in time)");
    }
    if !ok {
        text.push_str(&err);
    }
    (ok, text)
}
