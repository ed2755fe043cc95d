//! Lazy (post-copy) restore of a process tree (issue #13): a python parent and the child it
//! forked, each holding 4 MiB of its own data in private memory, dumped with `haul dump --kill`
//! and restored with their private memory served by the userfaultfd daemon, from the store and
//! from a `haul page-server` (whose pages are keyed by page space: the child's keys are above
//! 2^48). Each process's data is checked from outside (it answers SIGUSR1 with the sha256 of
//! its data, asked before the dump and after the restore), every page becomes resident (the
//! daemon's end while both still run), a lost source kills every process of the tree, and a
//! restore failing after the daemon started leaves nothing behind.
//!
//! The test process is a child subreaper (this machine's init does not reap orphans); tests
//! run one at a time, and every process left below the test process is killed and reaped when
//! a test ends.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::tree::{descendants, Session};
use common::{children_of, wait_for};
use haul::image::{ImageSet, PageId, PageRef, VmaKind};
use haul::lazy::{restore_lazy, LazyOptions, LazySource, PushPolicy, SourceError, StoreSource};
use haul::restore::{PidChoice, Step};
use haul::store::Store;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The tree: a parent that forks a child; each fills 4 MiB with its own random bytes (seeded:
/// 1 for the parent, 2 for the child) and answers SIGUSR1 by writing the sha256 of them to
/// `DIR/sum-PID`. `DIR/ready-ROLE` holds each one's pid once it can answer.
const TREE: &str = r#"
import hashlib, os, random, signal, sys, time
d = sys.argv[1]
pid = os.fork()
role = "child" if pid == 0 else "parent"
data = bytearray(random.Random(2 if pid == 0 else 1).randbytes(4 << 20))
def answer(sig, frame):
    me = os.getpid()
    with open(f"{d}/sum-{me}.tmp", "w") as f:
        f.write(hashlib.sha256(data).hexdigest())
    os.rename(f"{d}/sum-{me}.tmp", f"{d}/sum-{me}")
signal.signal(signal.SIGUSR1, answer)
with open(f"{d}/ready-{role}.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(f"{d}/ready-{role}.tmp", f"{d}/ready-{role}")
while True:
    time.sleep(0.05)
"#;

/// Starts the tree (stdin /dev/null, output to a log: a pipe to the test would be shared with
/// a process outside the tree) and returns it with the (parent, child) pids.
fn start_tree(s: &Session) -> (Child, i32, i32) {
    let mut cmd = Command::new(common::python3());
    cmd.arg("-c").arg(TREE).arg(s.path());
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let log = std::fs::File::create(s.path().join("log")).unwrap();
    let err = log.try_clone().unwrap();
    let root = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .expect("spawn python");
    let ready = |role: &str| s.path().join(format!("ready-{role}"));
    let ok = wait_for(Duration::from_secs(30), || {
        ready("parent").exists() && ready("child").exists()
    });
    assert!(ok, "the tree never got ready: {}", log_of(s));
    let pid_of = |role: &str| -> i32 {
        std::fs::read_to_string(ready(role))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (parent, child) = (pid_of("parent"), pid_of("child"));
    assert_eq!(parent, root.id() as i32);
    (root, parent, child)
}

fn log_of(s: &Session) -> String {
    std::fs::read_to_string(s.path().join("log")).unwrap_or_default()
}

/// Asks `pid` for the sha256 of its data (SIGUSR1) and waits for the answer.
fn ask_sum(s: &Session, pid: i32) -> String {
    let f = s.path().join(format!("sum-{pid}"));
    let _ = std::fs::remove_file(&f);
    nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGUSR1).unwrap();
    let ok = wait_for(Duration::from_secs(60), || f.exists());
    assert!(ok, "pid {pid} never answered: {}", log_of(s));
    std::fs::read_to_string(&f).unwrap()
}

/// `haul dump --kill` of the tree of `root` through the command line; returns the set id once
/// both processes are gone (the child re-parented here is reaped).
fn dump_kill(s: &Session, root: &mut Child, child: i32) -> String {
    let pid = root.id() as i32;
    let out = common::haul()
        .args(["dump", "--kill", "--json", "--name", "tree", "--pid"])
        .arg(pid.to_string())
        .arg("--store")
        .arg(s.store())
        .output()
        .expect("run haul dump");
    assert!(
        out.status.success(),
        "haul dump --kill of the tree of {pid}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dump --json");
    root.wait().expect("reap the dumped root");
    let gone = wait_for(Duration::from_secs(20), || {
        let _ = waitpid(Pid::from_raw(child), Some(WaitPidFlag::WNOHANG));
        !Path::new(&format!("/proc/{child}")).exists()
    });
    assert!(gone, "dumped with --kill, the child {child} is still there");
    v["set"].as_str().expect("set id").to_string()
}

/// Same PIDs. Not `--verify state`: an eager restore of this tree fails it too (the child's
/// heap, two VMAs after its fork, comes back as one), which is not the lazy restore's doing.
fn same_pids() -> haul::restore::RestoreOptions {
    let mut o = common::verified(PidChoice::Same);
    o.verify_state = false;
    o
}

fn opts(idle_push: Duration) -> LazyOptions {
    LazyOptions {
        push: PushPolicy::Idle,
        idle_push,
        ..Default::default()
    }
}

/// `pid`'s parent, from /proc.
fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Both restored as dumped (same pids, the child still the parent's), each with its own data,
/// every page resident by the daemon's end with both running; then both are killed.
fn check_restored(
    s: &Session,
    image: &ImageSet,
    r: haul::lazy::LazyRestore,
    (parent, child): (i32, i32),
    (sum_parent, sum_child): (&str, &str),
) {
    assert_eq!(r.pid(), parent);
    // The child's memory is left lazy too: more than the root's stored private pages alone.
    let root = image.process.as_ref().unwrap();
    let root_only = image
        .pages_of(0)
        .filter(|(a, p)| {
            !matches!(p, PageRef::Zero)
                && root
                    .vmas
                    .iter()
                    .any(|v| v.kind == VmaKind::Anon && !v.shared && v.start <= *a && *a < v.end)
        })
        .count() as u64;
    assert!(
        r.pages_lazy >= root_only + 1024,
        "pages left lazy over the tree: {}, the root's alone: {root_only}",
        r.pages_lazy
    );
    assert_eq!(ppid(child), Some(parent), "the child is the parent's again");
    // Asked while pages are still missing (the push waits for a long idle time).
    assert_eq!(ask_sum(s, child), sum_child, "the child's data");
    assert_eq!(ask_sum(s, parent), sum_parent, "the parent's data");
    let report = r.wait().expect("lazy daemon");
    assert_eq!(report.source_lost, None, "{report:?}");
    assert!(report.faults_served > 0, "{report:?}");
    // Served to the end with both alive: every page of both is resident.
    assert!(common::alive(parent) && common::alive(child), "{report:?}");
    assert_eq!(
        ask_sum(s, child),
        sum_child,
        "the child's data after the push"
    );
    assert_eq!(
        ask_sum(s, parent),
        sum_parent,
        "the parent's data after the push"
    );
}

#[test]
fn a_tree_restored_lazily_from_the_store_serves_each_process_its_own_memory() {
    let s = Session::start();
    let (mut root, parent, child) = start_tree(&s);
    let sums = (ask_sum(&s, parent), ask_sum(&s, child));
    assert_ne!(sums.0, sums.1, "the two hold different data");
    let set = dump_kill(&s, &mut root, child);
    let store = Arc::new(Store::open(&s.store()).unwrap());
    let image = Arc::new(store.load_set(&set).unwrap());
    assert_eq!(image.process_count(), 2, "the set holds the tree");
    let r = restore_lazy(
        &image,
        &*store,
        Box::new(StoreSource::new(store.clone())),
        &same_pids(),
        &opts(Duration::from_secs(2)),
    )
    .unwrap_or_else(|e| panic!("lazy restore of the tree: {e}"));
    check_restored(&s, &image, r, (parent, child), (&sums.0, &sums.1));
}

/// A `haul page-server` of the store: killed and reaped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_tree_restored_lazily_from_a_page_server_serves_each_process_its_own_memory() {
    use std::io::BufRead;
    let s = Session::start();
    let (mut root, parent, child) = start_tree(&s);
    let sums = (ask_sum(&s, parent), ask_sum(&s, child));
    let set = dump_kill(&s, &mut root, child);
    let mut server = common::haul()
        .args([
            "page-server",
            "--listen",
            "127.0.0.1:0",
            "--set",
            &set,
            "--store",
        ])
        .arg(s.store())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn haul page-server");
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let server = Server(server);
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("page server said {first:?}"))
        .to_string();
    let timeout = Duration::from_secs(10);
    let eager = haul::xfer::RemoteSource::new(&addr, Vec::new(), timeout);
    let image = Arc::new(eager.manifest(&set).expect("manifest from the page server"));
    assert_eq!(image.process_count(), 2);
    let lazy = haul::xfer::RemoteSource::new(&addr, Vec::new(), timeout);
    let r = restore_lazy(
        &image,
        &eager,
        Box::new(lazy),
        &same_pids(),
        &opts(Duration::from_secs(2)),
    )
    .unwrap_or_else(|e| panic!("lazy restore of the tree from {addr}: {e}"));
    check_restored(&s, &image, r, (parent, child), (&sums.0, &sums.1));
    drop(server);
}

/// Pages from the store until `lost` is set, then none: the source is gone.
struct Losable {
    inner: StoreSource,
    lost: Arc<AtomicBool>,
}

impl LazySource for Losable {
    fn fetch(
        &mut self,
        set: &str,
        pages: &[(u64, PageId)],
        out: &mut Vec<u8>,
    ) -> Result<(), SourceError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(SourceError::Lost("cut off by the test".into()));
        }
        self.inner.fetch(set, pages, out)
    }
}

/// Waits for `pid` (a child of this test once haul let it go) to be gone, reaping it;
/// returns how it ended when this test reaped it.
fn wait_gone(pid: i32) -> Option<WaitStatus> {
    let mut end = None;
    let ok = wait_for(Duration::from_secs(20), || {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(st @ WaitStatus::Signaled(..)) | Ok(st @ WaitStatus::Exited(..)) => {
                end = Some(st);
                true
            }
            _ => !Path::new(&format!("/proc/{pid}")).exists(),
        }
    });
    assert!(ok, "pid {pid} is still there");
    end
}

#[test]
fn losing_the_source_kills_every_process_of_the_tree() {
    let s = Session::start();
    let (mut root, parent, child) = start_tree(&s);
    let _ = (ask_sum(&s, parent), ask_sum(&s, child));
    let set = dump_kill(&s, &mut root, child);
    // The answers given before the dump.
    for pid in [parent, child] {
        std::fs::remove_file(s.path().join(format!("sum-{pid}"))).unwrap();
    }
    let store = Arc::new(Store::open(&s.store()).unwrap());
    let image = Arc::new(store.load_set(&set).unwrap());
    let lost = Arc::new(AtomicBool::new(false));
    let src = Losable {
        inner: StoreSource::new(store.clone()),
        lost: lost.clone(),
    };
    // No push for a minute: the child's data comes only when it is asked for.
    let r = restore_lazy(
        &image,
        &*store,
        Box::new(src),
        &same_pids(),
        &opts(Duration::from_secs(60)),
    )
    .unwrap_or_else(|e| panic!("lazy restore of the tree: {e}"));
    lost.store(true, Ordering::SeqCst);
    // The child faults on its missing data: the daemon cannot serve it, and kills the tree.
    nix::sys::signal::kill(Pid::from_raw(child), nix::sys::signal::SIGUSR1).unwrap();
    let report = r.wait().expect("the daemon ends with a report");
    let why = report.source_lost.clone().expect("the source was lost");
    assert!(why.contains("cut off by the test"), "{why}");
    for pid in [child, parent] {
        if let Some(st) = wait_gone(pid) {
            assert_eq!(
                st,
                WaitStatus::Signaled(Pid::from_raw(pid), nix::sys::signal::SIGKILL, false),
                "pid {pid}"
            );
        }
    }
    assert!(
        !s.path().join(format!("sum-{child}")).exists(),
        "the child answered with pages it never got"
    );
}

/// A lazy restore of the tree failing at `step`: an error naming it, and no process of the
/// tree left, nor any watchdog (nothing below the test process at all).
fn fails_at(step: Step) {
    let s = Session::start();
    let (mut root, parent, child) = start_tree(&s);
    let set = dump_kill(&s, &mut root, child);
    let store = Arc::new(Store::open(&s.store()).unwrap());
    let image = Arc::new(store.load_set(&set).unwrap());
    let mut ro = same_pids();
    ro.fail_at = Some(step);
    let e = match restore_lazy(
        &image,
        &*store,
        Box::new(StoreSource::new(store.clone())),
        &ro,
        &opts(Duration::from_millis(100)),
    ) {
        Ok(r) => panic!("the restore failing at {step} ran pid {}", r.pid()),
        Err(e) => e,
    };
    let msg = haul::util::error_chain(&e);
    // The step's failure, not a refusal before anything was made.
    assert!(
        matches!(
            &e,
            haul::lazy::LazyError::Restore(haul::restore::RestoreError::Step { step: s, .. })
                if *s == step
        ),
        "{msg}"
    );
    for pid in [parent, child] {
        wait_gone(pid);
    }
    let me = std::process::id() as i32;
    let ok = wait_for(Duration::from_secs(10), || {
        for p in children_of(me) {
            let _ = waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG));
        }
        descendants(me).is_empty()
    });
    assert!(ok, "left behind: {:?}", descendants(me));
}

#[test]
fn a_tree_restore_failing_at_the_lazy_step_leaves_nothing_behind() {
    fails_at(Step::Lazy);
}

#[test]
fn a_tree_restore_failing_after_the_daemon_started_leaves_nothing_behind() {
    fails_at(Step::Fill);
}
