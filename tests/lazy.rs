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
use haul::lazy::{restore_lazy, LazyOptions, LazySource, SourceError, StoreSource};
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

fn dump_kill(r: &mut Running, store: &Store) -> ImageSet {
    let d = dump_to_store(r.pid, store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {}: {e}", r.pid));
    r.child.wait().expect("reap the dumped original");
    d.set
}

fn opts(idle_push_ms: u64) -> LazyOptions {
    LazyOptions {
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
    send_signal(r.pid, "USR2");
    std::thread::sleep(Duration::from_millis(100));
    let (t1, c1) = memwriter_report(r.pid, &out, t0);
    let (t2, c2) = memwriter_report(r.pid, &out, t1);
    assert_eq!(c1, c2, "memwriter kept dirtying after SIGUSR2");
    (r, t2, c2)
}

#[test]
fn lazy_memwriter_checksum_is_the_same_and_every_page_arrives() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut r, t, c) = paused_memwriter(dir.path(), 64);
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let set = dump_kill(&mut r, &store);
    let src = Box::new(StoreSource::new(store.clone()));
    let lr = restore_lazy(
        &Arc::new(set.clone()),
        &*store,
        src,
        &RestoreOptions::default(),
        &opts(300),
    )
    .unwrap_or_else(|e| panic!("lazy restore: {e}"));
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
fn lazy_pages_are_pushed_when_the_process_does_not_touch_them() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (mut r, t, c) = paused_memwriter(dir.path(), 16);
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let set = dump_kill(&mut r, &store);
    let src = Box::new(StoreSource::new(store.clone()));
    let lr = restore_lazy(
        &Arc::new(set.clone()),
        &*store,
        src,
        &RestoreOptions::default(),
        &opts(50),
    )
    .unwrap();
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

#[test]
fn lazy_serves_kernel_accesses_fork_mremap_madvise_and_munmap() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(fixture("lazyfix"));
    cmd.arg(dir.path());
    let mut r = launch(cmd, &dir.path().join("log"));
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let set = dump_kill(&mut r, &store);
    let src = Box::new(StoreSource::new(store.clone()));
    // No push for 3 s: the fixture does everything while its pages are missing.
    let lr = restore_lazy(
        &Arc::new(set.clone()),
        &*store,
        src,
        &RestoreOptions::default(),
        &opts(3000),
    )
    .unwrap();
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
        &Arc::new(set.clone()),
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
/// with an immediate push, and lazily by faults, and fails unless every restored process
/// reports the checksum it had before the dump. The figures themselves are for the report
/// (`haul bench lazy` in a release build), not asserted here.
#[test]
fn bench_lazy_restores_three_ways_with_the_right_checksum() {
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
}
