//! Lazy (post-copy) restore, issue #7: real processes dumped into a real store and restored
//! with their private anonymous memory served by the userfaultfd daemon.
//!
//! Every test makes itself the subreaper first: restored processes are re-parented away from
//! haul, and this machine's init does not reap, so the test reaps them ([`Restored`]).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{alive, fixture, haul_bin, memwriter_report, send_signal, wait_for, Running};
use haul::dump::{dump_to_store, DumpOptions};
use haul::image::{ImageSet, PageId};
use haul::lazy::{
    restore_lazy, LazyOptions, LazyRestore, LazySource, PushPolicy, SourceError, StoreSource,
};
use haul::restore::RestoreOptions;
use haul::store::Store;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// A restored process: killed and reaped when dropped.
struct Restored(i32);

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.0), nix::sys::signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.0), None);
    }
}

fn launch(mut cmd: Command, log: &Path) -> Running {
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    Running::logged(&mut cmd, log, true)
}

fn dump_kill(r: &mut Running, store: &Store) -> Arc<ImageSet> {
    let d = dump_to_store(r.pid, store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {}: {e}", r.pid));
    r.child.wait().expect("reap the dumped original");
    Arc::new(d.set)
}

/// Restores `set` lazily from the local store, pushing after `idle_push_ms` without a fault;
/// its state is compared with the image before it runs (`--verify state`).
fn lazy_from_store(set: &Arc<ImageSet>, store: &Arc<Store>, idle_push_ms: u64) -> LazyRestore {
    let src = Box::new(StoreSource::new(store.clone()));
    restore_lazy(
        set,
        &**store,
        src,
        &common::verified(haul::restore::PidChoice::Same),
        &opts(idle_push_ms),
    )
    .unwrap_or_else(|e| panic!("lazy restore: {e}"))
}

fn opts(idle_push_ms: u64) -> LazyOptions {
    LazyOptions {
        push: PushPolicy::Idle,
        idle_push: Duration::from_millis(idle_push_ms),
        ..Default::default()
    }
}

/// A memwriter of `mib` MiB that dirtied for a while and then paused; returns it with its last
/// (ticks, checksum).
fn paused_memwriter(dir: &Path, mib: u32) -> (Running, u64, String) {
    let out = dir.join("report");
    let mut cmd = Command::new(fixture("memwriter"));
    cmd.arg(mib.to_string()).arg("20000").arg(&out);
    let r = launch(cmd, &dir.join("log"));
    let (t0, _) = memwriter_report(r.pid, &out, 0);
    let (t2, c2) = common::memwriter_pause(r.pid, &out, t0);
    (r, t2, c2)
}

#[test]
fn lazy_memwriter_checksum_is_the_same_and_every_page_arrives() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut r, t, c) = paused_memwriter(dir.path(), 64);
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let set = dump_kill(&mut r, &store);
    let lr = lazy_from_store(&set, &store, 300);
    let _guard = Restored(lr.pid());
    assert!(
        lr.pages_lazy > 10_000,
        "only {} pages left lazy",
        lr.pages_lazy
    );
    // The checksum walks the whole region: faults (and prefetch) serve it.
    let (t3, c3) = memwriter_report(lr.pid(), &dir.path().join("report"), t);
    assert!(t3 > t);
    assert_eq!(c3, c, "64 MiB region differs after a lazy restore");
    let rep = lr.wait().unwrap_or_else(|e| panic!("daemon: {e}"));
    assert_eq!(rep.source_lost, None);
    assert!(rep.faults_served > 0, "no fault was served: {rep:?}");
    assert!(rep.time_to_all_resident > 0);
    assert!(alive(_guard.0), "restored memwriter died");
    // Still the same program once the daemon is gone.
    let (t4, c4) = memwriter_report(_guard.0, &dir.path().join("report"), t3);
    assert!(t4 > t3);
    assert_eq!(c4, c);
}

#[test]
fn lazy_restore_of_a_multi_threaded_process_serves_every_threads_faults() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut cmd = Command::new(fixture("threads"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"));
    let pid = r.pid;
    assert!(wait_for(Duration::from_secs(10), || {
        common::threads_report(pid, &out)[..3]
            .iter()
            .all(|&c| c >= 20)
    }));
    send_signal(pid, "USR2");
    let mut held = common::threads_report(pid, &out);
    assert!(wait_for(Duration::from_secs(10), || {
        let now = common::threads_report(pid, &out);
        std::mem::replace(&mut held, now) == held
    }));
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let set = dump_kill(&mut r, &store);
    // A long idle push: the threads' own faults bring their stacks and data back.
    let lr = lazy_from_store(&set, &store, 2000);
    let guard = Restored(lr.pid());
    assert_eq!(common::threads_report(guard.0, &out), held);
    send_signal(guard.0, "USR2");
    assert!(wait_for(Duration::from_secs(10), || {
        let now = common::threads_report(guard.0, &out);
        (0..3).all(|i| now[i] >= held[i] + 50)
    }));
    let rep = lr.wait().unwrap_or_else(|e| panic!("daemon: {e}"));
    assert_eq!(rep.source_lost, None);
    assert!(rep.faults_served > 0, "no fault was served: {rep:?}");
    send_signal(guard.0, "HUP");
    assert!(
        wait_for(Duration::from_secs(10), || common::proc_state(guard.0)
            == Some('Z')),
        "the restored threads fixture did not exit after SIGHUP"
    );
    assert_eq!(
        waitpid(Pid::from_raw(guard.0), None).unwrap(),
        nix::sys::wait::WaitStatus::Exited(Pid::from_raw(guard.0), 0)
    );
    let joined = std::fs::read_to_string(&out).unwrap();
    assert!(joined.starts_with("joined "), "{joined:?}");
}

#[test]
fn lazy_pages_are_pushed_when_the_process_does_not_touch_them() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut r, t, c) = paused_memwriter(dir.path(), 16);
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let set = dump_kill(&mut r, &store);
    let lr = lazy_from_store(&set, &store, 50);
    let guard = Restored(lr.pid());
    let pages_lazy = lr.pages_lazy;
    let rep = lr.wait().unwrap();
    assert!(
        rep.pages_pushed > pages_lazy / 2,
        "pushed {} of {pages_lazy} lazy pages",
        rep.pages_pushed
    );
    // All resident, the daemon gone: the memory is the dumped memory, not zeroes.
    let (_, c2) = memwriter_report(guard.0, &dir.path().join("report"), t);
    assert_eq!(c2, c);
}

/// A process that touches random pages all the time (issue #16) never leaves the daemon idle:
/// with `haul restore --lazy --push continuous` (no idle delay anywhere) every page still
/// arrives, pushed between its faults, and its memory is the dumped memory. The report says
/// which push ran and how residency grew. Nothing about speed is asserted.
#[test]
fn continuous_push_brings_every_page_while_the_process_faults_all_the_time() {
    use std::io::{BufRead, Read};
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut cmd = Command::new(fixture("toucher"));
    cmd.arg("64").arg("20000").arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"));
    let (t, c) = memwriter_report(r.pid, &out, 0);
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let set = dump_kill(&mut r, &store);
    let mut restore = common::haul()
        .args(["restore", &set.id, "--lazy", "--pid", "any", "--json"])
        .args(["--push", "continuous", "--prefetch", "0", "--store"])
        .arg(dir.path().join("store"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(restore.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let pid: i32 = first
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pid line {first:?}"));
    let guard = Restored(pid);
    // The report follows once every page is resident (read aside: the pipe must not fill).
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let done = wait_for(Duration::from_secs(120), || {
        matches!(restore.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = restore.kill();
    }
    let status = restore.wait().unwrap();
    assert!(done, "haul restore --lazy never had every page resident");
    assert!(status.success(), "haul restore --lazy: {status}");
    let v: serde_json::Value = serde_json::from_str(&rest.join().unwrap().unwrap()).unwrap();
    let l = &v["lazy"];
    assert_eq!(l["push_policy"], "continuous", "{v}");
    assert!(l["source_lost"].is_null(), "{v}");
    assert!(
        l["faults_served"].as_u64().unwrap() > 0,
        "no fault served: {v}"
    );
    assert!(
        l["pages_pushed"].as_u64().unwrap() > 0,
        "nothing pushed: {v}"
    );
    // Residency over time: from the start of running to every page, never going back.
    let samples: Vec<(u64, u64)> = l["resident"]
        .as_array()
        .unwrap_or_else(|| panic!("no residency samples: {v}"))
        .iter()
        .map(|s| (s["at_us"].as_u64().unwrap(), s["pages"].as_u64().unwrap()))
        .collect();
    assert!(
        samples
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{samples:?}"
    );
    assert_eq!(
        samples.last().map(|s| s.1),
        v["pages_lazy"].as_u64(),
        "the last sample is every lazy page: {v}"
    );
    // It went on touching its pages, and they hold what they held before the dump.
    assert!(alive(guard.0), "restored toucher died");
    let (t2, c2) = memwriter_report(guard.0, &out, t);
    assert!(t2 > t);
    assert_eq!(c2, c, "64 MiB region differs after the continuous push");
}

#[test]
fn lazy_serves_kernel_accesses_fork_mremap_madvise_and_munmap() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(fixture("lazyfix"));
    cmd.arg(dir.path());
    let mut r = launch(cmd, &dir.path().join("log"));
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let set = dump_kill(&mut r, &store);
    // No push for 3 s: the fixture does everything while its pages are missing.
    let lr = lazy_from_store(&set, &store, 3000);
    let guard = Restored(lr.pid());
    send_signal(guard.0, "USR1");
    let report = dir.path().join("report");
    let ok = wait_for(Duration::from_secs(20), || report.exists());
    assert!(
        ok,
        "lazyfix did not report (log: {:?})",
        std::fs::read_to_string(dir.path().join("log"))
    );
    let s = std::fs::read_to_string(&report).unwrap();
    assert_eq!(
        s.trim(),
        "0 0",
        "bad pages (parent, child) after lazy restore"
    );
    let a = std::fs::read(dir.path().join("a.bin")).unwrap();
    assert_eq!(a.len(), 64 * 4096);
    let rep = lr.wait().unwrap();
    assert_eq!(rep.source_lost, None);
    assert!(rep.faults_served > 0);
    assert!(alive(guard.0));
}

/// A source that delivers `budget` pages and then is gone for good.
struct Dying {
    inner: StoreSource,
    budget: usize,
}

impl LazySource for Dying {
    fn fetch(
        &mut self,
        set: &str,
        pages: &[(u64, PageId)],
        out: &mut Vec<u8>,
    ) -> Result<(), SourceError> {
        if pages.len() > self.budget {
            return Err(SourceError::Lost("test source gone".into()));
        }
        self.budget -= pages.len();
        self.inner.fetch(set, pages, out)
    }
}

#[test]
fn lazy_source_lost_kills_the_process_before_it_reads_a_missing_page() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut r, t, _) = paused_memwriter(dir.path(), 16);
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let set = dump_kill(&mut r, &store);
    let src = Box::new(Dying {
        inner: StoreSource::new(store.clone()),
        budget: 200,
    });
    let lr = restore_lazy(
        &set,
        &*store,
        src,
        &RestoreOptions::default(),
        &opts(60_000),
    )
    .unwrap();
    let pid = lr.pid();
    let guard = Restored(pid);
    // The checksum needs every page: the source dies on the way.
    send_signal(pid, "USR1");
    let rep = lr.wait().unwrap();
    assert!(
        rep.source_lost
            .as_deref()
            .unwrap_or("")
            .contains("test source gone"),
        "{rep:?}"
    );
    let st = waitpid(Pid::from_raw(pid), None).unwrap();
    std::mem::forget(guard);
    assert_eq!(
        st,
        nix::sys::wait::WaitStatus::Signaled(Pid::from_raw(pid), nix::sys::signal::SIGKILL, false)
    );
    // It never reported a checksum over zero-filled memory.
    let s = std::fs::read_to_string(dir.path().join("report")).unwrap();
    let ticks: u64 = s.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(
        ticks, t,
        "the restored process reported after the source was lost"
    );
}

/// `haul bench lazy` end to end on a small memwriter: it restores the same set eagerly, lazily
/// with an immediate push, and lazily by faults, and a toucher lazily with the continuous push
/// while it faults, and fails unless every restored process reports the checksum it had before
/// the dump. The figures themselves are for the report
/// (`haul bench lazy` in a release build), not asserted here.
#[test]
fn bench_lazy_restores_four_ways_with_the_right_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(haul_bin())
        .args([
            "bench", "lazy", "--size", "32MiB", "--runs", "1", "--json", "--dir",
        ])
        .arg(dir.path().join("work"))
        .arg("--fixtures")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haul bench lazy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["pages_lazy"].as_u64().unwrap() > 4000, "{v}");
    let run = &v["runs"][0];
    assert!(run["faults"].as_u64().unwrap() > 0, "{v}");
    assert!(run["prefetched"].as_u64().unwrap() > 0, "{v}");
    assert!(run["push_all_resident_us"].as_u64().unwrap() > 0, "{v}");
    assert!(run["busy_all_resident_us"].as_u64().unwrap() > 0, "{v}");
    assert!(run["busy_pushed"].as_u64().unwrap() > 0, "{v}");
}

// ---- lazy final dump (dump.lazy): the pages stay in the frozen source, which serves them ----

use common::{proc_state, tracer_pid};
use haul::dump::dump_to_store_lazy;
use haul::image::PageRef;
use haul::runner::worker::{serve_frozen, SourceEndKind};
use haul::xfer::{PageServer, RemoteSource, ServerOptions};
use std::sync::atomic::AtomicBool;

/// Stopped (`T`, or `t` for a ptrace stop) or traced: what a source must never be left as.
fn assert_running_untraced(pid: i32) {
    assert_eq!(tracer_pid(pid), Some(0), "pid {pid} is still traced");
    let st = proc_state(pid).expect("source state");
    assert!(
        st != 'T' && st != 't' && st != 'Z',
        "pid {pid} is in state {st}"
    );
}

#[test]
fn lazy_dump_serves_from_the_frozen_source_and_kills_it_once_every_page_is_resident() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut r, t, c) = paused_memwriter(dir.path(), 64);
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let server =
        PageServer::bind_source("127.0.0.1:0", store.clone(), ServerOptions::default()).unwrap();
    let (d, src) = dump_to_store_lazy(r.pid, &store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("lazy dump of pid {}: {e}", r.pid));
    let set = d.set;
    // The private anonymous pages are recorded by hash and were never written to the store.
    let lazy: Vec<_> = set
        .pages
        .iter()
        .filter_map(|(_, p)| match p {
            PageRef::Lazy(id) => Some(id),
            _ => None,
        })
        .collect();
    assert!(lazy.len() > 10_000, "only {} lazy pages", lazy.len());
    assert_eq!(set.figures.pages_lazy, lazy.len() as u64);
    assert_eq!(d.stats.pages_lazy, lazy.len() as u64);
    assert!(
        lazy.iter().all(|id| !store.has_page(id)),
        "a lazy page was written to the store"
    );
    assert!(
        set.figures.bytes_new < 1 << 20,
        "the lazy dump stored {} bytes",
        set.figures.bytes_new
    );
    // Every lazy page lies in memory the lazy restore leaves to its daemon.
    let ranges = haul::restore::lazy_ranges(&set, set.process.as_ref().unwrap());
    for (a, p) in set.pages.iter() {
        if matches!(p, PageRef::Lazy(_)) {
            assert!(
                ranges.iter().any(|&(s, e)| s <= a && a < e),
                "lazy page {a:#x} outside the lazy ranges"
            );
        }
    }
    assert_ne!(tracer_pid(r.pid), Some(0), "the source is not held frozen");

    let serving = server
        .serve_source(set.clone(), Arc::new(src.reader()))
        .unwrap();
    let addr = serving.local_addr().to_string();
    // The restore runs in a thread; this one holds the ptrace session and serves.
    let report = dir.path().join("report");
    let rep_path = report.clone();
    let view = Arc::new(set.clone());
    let st = store.clone();
    let restore = std::thread::spawn(move || {
        let remote = Arc::new(RemoteSource::new(
            &addr,
            Vec::new(),
            Duration::from_secs(10),
        ));
        let lr = restore_lazy(
            &view,
            &*st,
            Box::new(remote.clone()),
            &RestoreOptions {
                pid: haul::restore::PidChoice::Any,
                ..Default::default()
            },
            &opts(300),
        )
        .unwrap_or_else(|e| panic!("lazy restore from the frozen source: {e}"));
        let guard = Restored(lr.pid());
        let (t3, c3) = memwriter_report(lr.pid(), &rep_path, t);
        let rep = lr.wait().unwrap_or_else(|e| panic!("daemon: {e}"));
        assert_eq!(rep.source_lost, None);
        assert!(rep.bytes_network > 0);
        // What the daemon will call: says Done, the source is killed.
        let mut src: Box<dyn LazySource> = Box::new(remote);
        src.finished(&view.id)
            .unwrap_or_else(|e| panic!("Done: {e}"));
        (guard, t3, c3)
    });
    let end = serve_frozen(
        src,
        &serving,
        Duration::from_secs(10),
        &AtomicBool::new(false),
    );
    let (guard, t3, c3) = restore.join().expect("restore thread");
    assert_eq!(end.kind, SourceEndKind::Killed, "{end:?}");
    assert!(t3 > t);
    assert_eq!(
        c3, c,
        "64 MiB region differs after a lazy restore from the frozen source"
    );
    // The source is gone (killed, reaped here as its parent); the restored copy runs on.
    let st = r.child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    assert!(alive(guard.0));
    let (_, c4) = memwriter_report(guard.0, &report, t3);
    assert_eq!(c4, c);
}

#[test]
fn lazy_dump_source_resumes_when_no_restore_connects() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (r, t, _) = paused_memwriter(dir.path(), 16);
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let server =
        PageServer::bind_source("127.0.0.1:0", store.clone(), ServerOptions::default()).unwrap();
    let (d, src) =
        dump_to_store_lazy(r.pid, &store, "test", &DumpOptions::default(), Some(1)).unwrap();
    assert!(d.set.figures.pages_lazy > 0);
    let serving = server.serve_source(d.set, Arc::new(src.reader())).unwrap();
    let end = serve_frozen(
        src,
        &serving,
        Duration::from_millis(500),
        &AtomicBool::new(false),
    );
    assert_eq!(end.kind, SourceEndKind::Thawed, "{end:?}");
    assert!(end.detail.contains("no restore connected"), "{end:?}");
    assert_running_untraced(r.pid);
    // It goes on: its ticks advance.
    let (t2, _) = memwriter_report(r.pid, &dir.path().join("report"), t);
    assert!(t2 > t);
    assert_running_untraced(r.pid);
}

#[test]
fn haul_dump_lazy_resumes_the_source_when_the_restore_disconnects_before_done() {
    use std::io::BufRead;
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (r, t, _) = paused_memwriter(dir.path(), 16);
    let store_dir = dir.path().join("store");
    let mut child = common::haul()
        .args(["dump", "--pid", &r.pid.to_string(), "--lazy", "--json"])
        .args(["--source-timeout", "1s", "--name", "mw", "--store"])
        .arg(&store_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("no dump line").unwrap()).unwrap();
    let set_id = first["set"].as_str().unwrap().to_string();
    let addr = first["serving"].as_str().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{first}");
    assert!(
        first["figures"]["pages_lazy"].as_u64().unwrap() > 0,
        "{first}"
    );
    assert_eq!(tracer_pid(r.pid).map(|p| p != 0), Some(true), "not frozen");
    // A restore fetches some lazy pages from the frozen source, then goes away.
    {
        let store = Store::open(&store_dir).unwrap();
        let set = store.load_set(&set_id).unwrap();
        let pages: Vec<(u64, PageId)> = set
            .pages
            .iter()
            .filter_map(|(a, p)| match p {
                PageRef::Lazy(id) => Some((a, id)),
                _ => None,
            })
            .take(64)
            .collect();
        let mut c = haul::xfer::Client::connect(&addr, b"", Duration::from_secs(5)).unwrap();
        let mut out = Vec::new();
        c.pages(&set_id, &pages, &mut out)
            .unwrap_or_else(|e| panic!("pages from the frozen source: {e}"));
        assert_eq!(out.len(), 64 * 4096);
    }
    let second: serde_json::Value =
        serde_json::from_str(&lines.next().expect("no end line").unwrap()).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "a rolled-back lazy dump must fail");
    assert_eq!(second["source"]["kind"], "thawed", "{second}");
    assert!(
        second["source"]["detail"]
            .as_str()
            .unwrap()
            .contains("connection was lost"),
        "{second}"
    );
    assert_running_untraced(r.pid);
    let (t2, _) = memwriter_report(r.pid, &dir.path().join("report"), t);
    assert!(t2 > t);
    // Its lazy pages are gone with the freeze: the set is removed.
    let store = Store::open(&store_dir).unwrap();
    assert!(
        store.load_set(&set_id).is_err(),
        "rolled-back set still listed"
    );
}

/// `haul dump --pid PID --lazy --json ...` of `pid` into `store`: the child, its stdout lines,
/// and the first line (the dump).
fn haul_dump_lazy(
    pid: i32,
    store: &Path,
    extra: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    serde_json::Value,
) {
    use std::io::BufRead;
    let mut child = common::haul()
        .args(["dump", "--pid", &pid.to_string(), "--lazy", "--json"])
        .args(["--name", "mw", "--store"])
        .arg(store)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("no dump line").unwrap()).unwrap();
    (child, lines, first)
}

#[test]
fn haul_dump_lazy_then_haul_restore_from_it_migrates_a_64mib_memwriter() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut r, t, c) = paused_memwriter(dir.path(), 64);
    let store = dir.path().join("store");
    let (mut dump, mut lines, first) = haul_dump_lazy(r.pid, &store, &[]);
    let set = first["set"].as_str().unwrap().to_string();
    let addr = first["serving"].as_str().unwrap().to_string();
    assert!(
        first["figures"]["pages_lazy"].as_u64().unwrap() > 10_000,
        "{first}"
    );
    // The restore runs from the worker's server, under another PID.
    let restore = common::haul()
        .args(["restore", &set, "--lazy", "--pid", "any", "--from", &addr])
        .args(["--verify", "state", "--idle-push", "300ms", "--store"])
        .arg(dir.path().join("elsewhere"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let out = restore.wait_with_output().unwrap();
    assert!(out.status.success(), "haul restore --lazy --from {addr}");
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("restored pid");
    let guard = Restored(pid);
    assert_ne!(pid, r.pid);
    // Every page is resident: the restore said Done, the source was killed.
    let end: serde_json::Value =
        serde_json::from_str(&lines.next().expect("no end line").unwrap()).unwrap();
    assert_eq!(end["source"]["kind"], "killed", "{end}");
    assert_eq!(dump.wait().unwrap().code(), Some(0));
    let st = r.child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    let (t2, c2) = memwriter_report(guard.0, &dir.path().join("report"), t);
    assert!(t2 > t);
    assert_eq!(c2, c, "64 MiB region differs after the migration");
}

#[test]
fn killing_haul_dump_lazy_or_its_worker_resumes_the_source() {
    adopt_orphans();
    for victim in ["haul", "worker"] {
        let dir = tempfile::tempdir().unwrap();
        let (r, t, _) = paused_memwriter(dir.path(), 16);
        let (mut dump, _lines, _) = haul_dump_lazy(
            r.pid,
            &dir.path().join("store"),
            &["--source-timeout", "60s"],
        );
        assert_ne!(tracer_pid(r.pid), Some(0), "not frozen");
        let who = match victim {
            "haul" => dump.id() as i32,
            _ => tracer_pid(r.pid).unwrap(),
        };
        send_signal(who, "KILL");
        let ok = wait_for(Duration::from_secs(10), || {
            tracer_pid(r.pid) == Some(0) && !matches!(proc_state(r.pid), Some('T' | 't'))
        });
        assert!(ok, "{victim} killed: the source stays stopped or traced");
        let _ = dump.kill();
        let _ = dump.wait();
        assert_running_untraced(r.pid);
        let (t2, _) = memwriter_report(r.pid, &dir.path().join("report"), t);
        assert!(t2 > t, "{victim} killed: the source does not run on");
    }
}

#[test]
fn haul_dump_lazy_refuses_bad_flags_before_freezing_anything() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (r, _, _) = paused_memwriter(dir.path(), 4);
    let pid = r.pid.to_string();
    let store = dir.path().join("store");
    let run = |extra: &[&str]| {
        common::haul()
            .args(["dump", "--pid", &pid, "--store"])
            .arg(&store)
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--lazy", "--leave-running"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not loopback, no token: refused before the process is touched.
    let out = run(&["--lazy", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "bad input exits 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a token file is required"), "{err}");
    assert_running_untraced(r.pid);
    assert!(
        Store::open(&store)
            .unwrap()
            .list_sets(None)
            .unwrap()
            .is_empty(),
        "a set was written"
    );
    let help = common::haul().args(["dump", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--lazy") && help.contains("--source-timeout"),
        "{help}"
    );
}
