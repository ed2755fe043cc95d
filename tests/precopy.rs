//! Pre-copy (issue #6) on real processes: the `dirtier` fixture writes an exact set of pages
//! when told to, so each pre-dump set must hold exactly those pages of its region; the final
//! dump after pre-dumps must restore to the same memory; tracking must end after the job, on
//! errors, and when haul is killed.
//!
//! Besides its region, the fixture's loop touches a few pages of its own: its stack (signal
//! frame, buffers), its `.data`/`.bss` (`seq`, the flag) and libc's data/TLS. Those are allowed
//! outside the region ([`OUTSIDE_MAX`]), never inside it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{fixture, wait_for, Running};
use haul::dump::{DumpOptions, Precopy, PrecopyOptions, TrackerChoice};
use haul::image::{ImageSet, PageRef};
use haul::restore::{restore, RestoreOptions};
use haul::store::Store;
use haul::track::TrackerKind;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// Pages the fixture's own loop may write outside its region per command (stack, .data/.bss,
/// libc data and TLS).
const OUTSIDE_MAX: usize = 24;

const PAGE: u64 = 4096;

/// A running `dirtier` and its command channel.
struct Dirtier {
    run: Running,
    dir: PathBuf,
    addr: u64,
    pages: u64,
    seq: u64,
}

/// What the fixture answered: its command count, its memory checksum, and the address a `map`
/// made (or a forked child's pid).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    seq: u64,
    sum: String,
    made: u64,
}

impl Dirtier {
    fn start(dir: &Path, pages: u64) -> Dirtier {
        let mut cmd = Command::new(fixture("dirtier"));
        cmd.arg(pages.to_string()).arg(dir);
        haul::sys::spawn::close_inherited_fds(&mut cmd);
        let run = Running::logged(&mut cmd, &dir.join("log"), true);
        let info = std::fs::read_to_string(dir.join("info")).unwrap();
        let mut w = info.split_whitespace();
        let addr = u64::from_str_radix(w.next().unwrap(), 16).unwrap();
        let pages = w.next().unwrap().parse().unwrap();
        Dirtier {
            run,
            dir: dir.to_path_buf(),
            addr,
            pages,
            seq: 0,
        }
    }

    fn pid(&self) -> i32 {
        self.run.pid
    }

    /// Sends one command and waits for its answer.
    fn cmd(&mut self, line: &str) -> Ack {
        send_cmd(self.pid(), &self.dir, line, &mut self.seq)
    }

    /// Page indices of the region among `addrs`, and the addresses outside it.
    fn split(&self, addrs: impl IntoIterator<Item = u64>) -> (BTreeSet<u64>, Vec<u64>) {
        let end = self.addr + self.pages * PAGE;
        let mut inside = BTreeSet::new();
        let mut outside = Vec::new();
        for a in addrs {
            if a >= self.addr && a < end {
                inside.insert((a - self.addr) / PAGE);
            } else {
                outside.push(a);
            }
        }
        (inside, outside)
    }
}

fn send_cmd(pid: i32, dir: &Path, line: &str, seq: &mut u64) -> Ack {
    let tmp = dir.join("cmd.tmp");
    std::fs::write(&tmp, format!("{line}\n")).unwrap();
    std::fs::rename(&tmp, dir.join("cmd")).unwrap();
    *seq += 1;
    let want = *seq;
    kill(Pid::from_raw(pid), Signal::SIGUSR1).unwrap();
    let mut ack = None;
    let ok = wait_for(Duration::from_secs(20), || {
        ack = read_ack(dir).filter(|a| a.seq == want);
        ack.is_some()
    });
    assert!(ok, "pid {pid} did not answer command {want} ({line})");
    ack.unwrap()
}

fn read_ack(dir: &Path) -> Option<Ack> {
    let s = std::fs::read_to_string(dir.join("ack")).ok()?;
    let mut w = s.split_whitespace();
    Some(Ack {
        seq: w.next()?.parse().ok()?,
        sum: w.next()?.to_string(),
        made: u64::from_str_radix(w.next()?, 16).ok()?,
    })
}

fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

fn popts(tracker: TrackerKind) -> PrecopyOptions {
    PrecopyOptions {
        tracker: TrackerChoice::Only(tracker),
        level: Some(1),
        ..Default::default()
    }
}

fn kill_opts() -> DumpOptions {
    DumpOptions::default()
}

fn leave_opts() -> DumpOptions {
    DumpOptions {
        leave_running: true,
        ..Default::default()
    }
}

/// Addresses of the pages a set holds.
fn set_addrs(store: &Store, id: &str) -> Vec<u64> {
    store
        .load_set(id)
        .unwrap()
        .pages
        .iter()
        .map(|(a, _)| a)
        .collect()
}

/// Restores `set`, asks the restored process for its checksum, kills and reaps it.
fn restored_sum(set: &ImageSet, store: &Store, dir: &Path, seq: u64) -> String {
    let out = restore(set, store, &RestoreOptions::default()).expect("restore");
    let mut seq = seq;
    let ack = send_cmd(out.pid, dir, "sum", &mut seq);
    let _ = kill(Pid::from_raw(out.pid), Signal::SIGKILL);
    let _ = waitpid(Pid::from_raw(out.pid), None);
    ack.sum
}

/// Every page of `[start, end)` of `pid`'s pagemap with the uffd-wp bit (57).
fn uffd_wp_pages(pid: i32, start: u64, end: u64) -> usize {
    let pm = haul::sys::pagemap::Pagemap::open(pid).unwrap();
    pm.entries(start, end)
        .unwrap()
        .iter()
        .filter(|e| e.uffd_wp())
        .count()
}

/// uffd-wp bits anywhere in `pid`'s private writable mappings, and mappings still registered
/// (smaps VmFlags `uw`).
fn tracking_left(pid: i32) -> (usize, usize) {
    let maps = haul::proc::maps_with_flags(pid).unwrap();
    let registered = maps.iter().filter(|m| m.has_flag("uw")).count();
    let bits = maps
        .iter()
        .filter(|m| m.write && !m.shared && m.path != "[vsyscall]")
        .map(|m| uffd_wp_pages(pid, m.start, m.end))
        .sum();
    (bits, registered)
}

/// Runs three pre-dumps with known writes between them and returns the region pages of each
/// set and the pages outside the region.
fn three_rounds(d: &mut Dirtier, pc: &mut Precopy<'_>, store: &Store) -> Vec<BTreeSet<u64>> {
    let mut out = Vec::new();
    let it = pc.iterate().unwrap();
    let (inside, _) = d.split(set_addrs(store, &it.set));
    out.push(inside);
    d.cmd("w 3 4 40 200");
    let it = pc.iterate().unwrap();
    let (inside, outside) = d.split(set_addrs(store, &it.set));
    assert!(
        outside.len() <= OUTSIDE_MAX,
        "{} pages outside the region: {outside:x?}",
        outside.len()
    );
    assert_eq!(it.pages_written as usize, inside.len() + outside.len());
    out.push(inside);
    d.cmd("w 7");
    let it = pc.iterate().unwrap();
    let (inside, _) = d.split(set_addrs(store, &it.set));
    out.push(inside);
    // A round with nothing written in the region.
    let it = pc.iterate().unwrap();
    let (inside, _) = d.split(set_addrs(store, &it.set));
    out.push(inside);
    out
}

fn predump_sets_hold_exactly_the_written_pages(tracker: TrackerKind) {
    adopt_orphans();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let mut d = Dirtier::start(tmp.path(), 256);
    let before = d.cmd("sum");
    let mut pc = Precopy::start(d.pid(), &store, "dirtier", &popts(tracker)).unwrap();
    assert_eq!(pc.tracker(), tracker);
    let rounds = three_rounds(&mut d, &mut pc, &store);
    assert_eq!(
        rounds[0],
        (0..256).collect(),
        "the first pre-dump copies every page"
    );
    assert_eq!(rounds[1], [3, 4, 40, 200].into_iter().collect());
    assert_eq!(rounds[2], [7].into_iter().collect());
    assert!(rounds[3].is_empty(), "nothing written: {:?}", rounds[3]);
    d.cmd("w 9 10");
    let sum = d.cmd("sum").sum;
    assert_ne!(sum, before.sum);

    let pid = d.pid();
    let (dumped, report) = pc.final_dump(&kill_opts()).unwrap();
    d.run.child.wait().unwrap();
    assert_eq!(report.iterations.len(), 4);
    let set = &dumped.set;
    assert_eq!(
        set.parent.as_deref(),
        Some(report.iterations[3].set.as_str())
    );
    // Complete table: every page of the region, by reference or copied.
    let (inside, _) = d.split(set.pages.iter().map(|(a, _)| a));
    assert_eq!(inside.len(), 256);
    if tracker == TrackerKind::UffdWp {
        assert!(
            dumped.stats.pages_skipped_parent >= 250,
            "only {} pages carried",
            dumped.stats.pages_skipped_parent
        );
        assert!(dumped.stats.pages_written < 60, "{:?}", dumped.stats);
        assert_eq!(report.iterations[1].frozen_time, 0);
    }
    assert_eq!(set.process.as_ref().unwrap().pid, pid);
    // The final set stands alone: without the pre-dump sets (and their pages gone to gc),
    // it restores the same memory.
    for it in &report.iterations {
        store.remove_set(&it.set).unwrap();
    }
    store.gc().unwrap();
    assert_eq!(restored_sum(set, &store, tmp.path(), d.seq), sum);
}

#[test]
fn uffd_wp_predump_sets_hold_exactly_the_written_pages_and_restore_matches() {
    predump_sets_hold_exactly_the_written_pages(TrackerKind::UffdWp);
}

#[test]
fn hash_predump_sets_hold_exactly_the_written_pages_and_restore_matches() {
    predump_sets_hold_exactly_the_written_pages(TrackerKind::Hash);
}

#[test]
fn uffd_wp_and_hash_find_the_same_dirty_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let mut d = Dirtier::start(tmp.path(), 128);
    let mut uffd = Precopy::start(d.pid(), &store, "uffd", &popts(TrackerKind::UffdWp)).unwrap();
    let mut hash = Precopy::start(d.pid(), &store, "hash", &popts(TrackerKind::Hash)).unwrap();
    uffd.iterate().unwrap();
    hash.iterate().unwrap();
    for writes in ["w 1 2 3", "w 100 101 127 0", "w 64"] {
        d.cmd(writes);
        let a = uffd.iterate().unwrap();
        let b = hash.iterate().unwrap();
        let (ua, uo) = d.split(set_addrs(&store, &a.set));
        let (ha, ho) = d.split(set_addrs(&store, &b.set));
        assert_eq!(ua, ha, "after {writes}");
        let want: BTreeSet<u64> = writes[2..]
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        assert_eq!(ua, want);
        // Outside the region, hash sees content changes only: a subset of what was written.
        let uo: BTreeSet<u64> = uo.into_iter().collect();
        assert!(
            ho.iter().all(|a| uo.contains(a)),
            "hash found pages uffd-wp missed: {:x?} vs {uo:x?}",
            ho
        );
    }
}

#[test]
fn tracking_ends_after_a_final_dump_that_leaves_the_process_running() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let mut d = Dirtier::start(tmp.path(), 64);
    let mut pc = Precopy::start(d.pid(), &store, "dirtier", &popts(TrackerKind::UffdWp)).unwrap();
    pc.iterate().unwrap();
    let (bits, registered) = tracking_left(d.pid());
    assert!(bits > 0 && registered > 0, "tracking was not armed");
    d.cmd("w 5");
    pc.iterate().unwrap();
    let (dumped, _) = pc.final_dump(&leave_opts()).unwrap();
    assert!(dumped.stats.pages_skipped_parent > 0);
    assert_eq!(
        tracking_left(d.pid()),
        (0, 0),
        "write protection left behind"
    );
    // And it goes on normally.
    d.cmd("w 1 2 3");
    assert_eq!(tracking_left(d.pid()), (0, 0));
}

#[test]
fn tracking_ends_when_the_final_dump_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let mut d = Dirtier::start(tmp.path(), 64);
    let mut pc = Precopy::start(d.pid(), &store, "dirtier", &popts(TrackerKind::UffdWp)).unwrap();
    pc.iterate().unwrap();
    let opts = DumpOptions {
        fail_at: Some(haul::dump::Step::Memory),
        ..leave_opts()
    };
    assert!(pc.final_dump(&opts).is_err());
    assert_eq!(tracking_left(d.pid()), (0, 0));
    assert_eq!(common::tracer_pid(d.pid()), Some(0));
    d.cmd("w 1");
}

#[test]
fn dropping_a_precopy_ends_tracking() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let d = Dirtier::start(tmp.path(), 64);
    let mut pc = Precopy::start(d.pid(), &store, "dirtier", &popts(TrackerKind::UffdWp)).unwrap();
    pc.iterate().unwrap();
    assert_ne!(tracking_left(d.pid()), (0, 0));
    drop(pc);
    assert_eq!(tracking_left(d.pid()), (0, 0));
}

#[test]
fn killing_haul_mid_precopy_leaves_no_write_protection() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Dirtier::start(tmp.path(), 64);
    let store = tmp.path().join("store");
    let mut haul = common::haul()
        .args(["dump", "--pid", &d.pid().to_string(), "--leave-running"])
        .args([
            "--predump",
            "50",
            "--interval",
            "200ms",
            "--tracker",
            "uffd-wp",
            "--stop-below",
            "0",
        ])
        .arg("--store")
        .arg(&store)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until tracking is armed and a pre-dump or two went by.
    let armed = wait_for(Duration::from_secs(20), || {
        haul::proc::maps_with_flags(d.pid())
            .map(|m| m.iter().any(|m| m.has_flag("uw")))
            .unwrap_or(false)
    });
    assert!(armed, "haul never armed tracking");
    // Kill it once a pre-dump has gone by after a write.
    let sets = || {
        haul::store::Store::open(&store)
            .and_then(|s| s.list_sets(None))
            .map(|v| v.len())
            .unwrap_or(0)
    };
    let before = sets();
    d.cmd("w 1 2");
    assert!(
        wait_for(Duration::from_secs(20), || sets() > before),
        "no pre-dump after the write"
    );
    haul.kill().unwrap();
    haul.wait().unwrap();
    // The process goes on, and nothing is left of the tracking once the checkpoint worker
    // (which holds the session, see dump::worker) has noticed haul's death.
    d.cmd("w 3");
    wait_for(Duration::from_secs(5), || tracking_left(d.pid()) == (0, 0));
    let (bits, registered) = tracking_left(d.pid());
    assert_eq!(registered, 0, "mappings still registered with a uffd");
    assert_eq!(bits, 0, "uffd-wp bits left in the page tables");
    assert!(common::alive(d.pid()));
    assert_eq!(common::tracer_pid(d.pid()), Some(0));
}

#[test]
fn precopy_follows_mappings_made_unmapped_and_freed_between_rounds() {
    adopt_orphans();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let mut d = Dirtier::start(tmp.path(), 128);
    let mut pc = Precopy::start(d.pid(), &store, "dirtier", &popts(TrackerKind::UffdWp)).unwrap();
    pc.iterate().unwrap();
    // A new mapping is wholly dirty.
    let a = d.cmd("map 16").made;
    let b = d.cmd("map 8").made;
    assert!(a != 0 && b != 0);
    let it = pc.iterate().unwrap();
    let addrs: BTreeSet<u64> = set_addrs(&store, &it.set).into_iter().collect();
    for base in [a, b] {
        let n = if base == a { 16 } else { 8 };
        for i in 0..n {
            assert!(
                addrs.contains(&(base + i * PAGE)),
                "new mapping page {i} missing"
            );
        }
    }
    // Unmapped: gone from the final table. Freed pages: not resurrected.
    d.cmd("unmap");
    d.cmd("dontneed 10 5");
    // Read back without a write: the zero page, not the pre-dumped content, must be restored
    // (uffd-wp reports such a page written: a zap leaves no write-protect marker in anonymous
    // memory, so the zero page comes back unprotected).
    d.cmd("touch 10 2");
    d.cmd("w 20");
    pc.iterate().unwrap();
    let sum = d.cmd("sum").sum;
    let (dumped, _) = pc.final_dump(&kill_opts()).unwrap();
    d.run.child.wait().unwrap();
    let set = &dumped.set;
    assert!(
        set.pages.range(b, b + 8 * PAGE).next().is_none(),
        "unmapped pages referenced"
    );
    for i in 10..15 {
        let r = set.pages.get(d.addr + i * PAGE);
        assert!(
            r.is_none() || r == Some(PageRef::Zero),
            "freed page {i}: {r:?}"
        );
    }
    assert_eq!(set.pages.range(a, a + 16 * PAGE).count(), 16);
    assert_eq!(restored_sum(set, &store, tmp.path(), d.seq), sum);
}

/// Pages freed after the last pre-dump, untouched since, are not carried by the final dump
/// from the pre-dump that stored them: they are restored as zero. (The last tracking round
/// sees a zapped page as written, since it has lost its write-protect bit; the final dump's
/// walk for present pages is the second guard.)
#[test]
fn pages_freed_after_the_last_predump_are_not_carried_by_the_final_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let mut d = Dirtier::start(tmp.path(), 64);
    let mut pc = Precopy::start(d.pid(), &store, "dirtier", &popts(TrackerKind::UffdWp)).unwrap();
    let first = pc.iterate().unwrap();
    let stored: BTreeSet<u64> = set_addrs(&store, &first.set).into_iter().collect();
    for i in 30..34 {
        assert!(
            stored.contains(&(d.addr + i * PAGE)),
            "page {i} not pre-dumped"
        );
    }
    pc.iterate().unwrap();
    d.cmd("dontneed 30 4");
    let sum = d.cmd("sum").sum;
    let (dumped, _) = pc.final_dump(&kill_opts()).unwrap();
    d.run.child.wait().unwrap();
    let set = &dumped.set;
    for i in 30..34 {
        let r = set.pages.get(d.addr + i * PAGE);
        assert!(
            r.is_none() || r == Some(PageRef::Zero),
            "freed page {i}: {r:?}"
        );
    }
    // The pages around them are still carried.
    assert!(set.pages.get(d.addr + 29 * PAGE).is_some());
    assert!(set.pages.get(d.addr + 34 * PAGE).is_some());
    assert_eq!(restored_sum(set, &store, tmp.path(), d.seq), sum);
}

#[test]
fn a_process_that_forks_during_precopy_is_refused_and_left_untracked() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let mut d = Dirtier::start(tmp.path(), 64);
    let mut pc = Precopy::start(d.pid(), &store, "dirtier", &popts(TrackerKind::UffdWp)).unwrap();
    pc.iterate().unwrap();
    let child = d.cmd("fork").made as i32;
    assert!(child > 0);
    // The child inherits no tracking (no UFFD_FEATURE_EVENT_FORK).
    assert_eq!(tracking_left(child), (0, 0));
    let e = pc.iterate().unwrap_err().to_string();
    assert!(e.contains("forked during pre-copy"), "{e}");
    // A final dump fails the same way, naming the child (a tree's pre-copy tracks the
    // processes it started with).
    let e = pc.final_dump(&leave_opts()).unwrap_err().to_string();
    assert!(e.contains(&format!("pid {child}")), "{e}");
    assert!(e.contains("forked during pre-copy"), "{e}");
    assert_eq!(tracking_left(d.pid()), (0, 0));
    let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    let _ = waitpid(Pid::from_raw(child), None);
    d.cmd("w 1");
}

#[test]
fn soft_dirty_is_refused_with_the_reason_and_auto_picks_uffd_wp() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let d = Dirtier::start(tmp.path(), 16);
    let e = Precopy::start(d.pid(), &store, "d", &popts(TrackerKind::SoftDirty))
        .err()
        .expect("soft-dirty refused here")
        .to_string();
    assert!(e.contains("soft-dirty"), "{e}");
    assert!(e.contains("CONFIG_MEM_SOFT_DIRTY"), "{e}");
    let auto = PrecopyOptions {
        tracker: TrackerChoice::Auto,
        ..Default::default()
    };
    let pc = Precopy::start(d.pid(), &store, "d", &auto).unwrap();
    assert_eq!(pc.tracker(), TrackerKind::UffdWp);
    assert!(pc.report().tracker_reason.contains("auto"));
}

#[test]
fn run_stops_when_an_iteration_writes_below_stop_below() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let d = Dirtier::start(tmp.path(), 64);
    let opts = PrecopyOptions {
        interval: Duration::from_millis(10),
        max_iterations: 5,
        ..popts(TrackerKind::UffdWp)
    };
    let mut pc = Precopy::start(d.pid(), &store, "d", &opts).unwrap();
    let why = pc.run(&opts, &AtomicBool::new(false)).unwrap();
    assert_eq!(why, haul::dump::StopReason::Converged);
    assert_eq!(pc.report().iterations.len(), 2);
    assert_eq!(pc.report().stop_reason, "converged");
}

#[test]
fn haul_run_pre_dumps_then_dumps_a_job_with_predump() {
    let dir = tempfile::tempdir().unwrap();
    let counter = fixture("counter");
    let job = dir.path().join("pc.toml");
    std::fs::write(
        &job,
        format!(
            "[process]\ncommand = [\"{}\", \"{{run_dir}}/counter.log\"]\nready = {{ stdout_line = \"ready\" }}\n\
             [predump]\ninterval = \"100ms\"\nmax_iterations = 3\nstop_below = \"4KiB\"\ntracker = \"auto\"\n",
            counter.display()
        ),
    )
    .unwrap();
    let out = common::haul()
        .args(["run", "--plain"])
        .arg(&job)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_dir(dir.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    let stages: Vec<&str> = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["launch", "ready", "predump", "dump"], "{r}");
    let p = &r["predump"];
    assert_eq!(p["tracker"], "uffd-wp", "{r}");
    assert!(!p["stop_reason"].as_str().unwrap().is_empty(), "{r}");
    let its = p["iterations"].as_array().unwrap();
    assert!(!its.is_empty() && its.len() <= 3, "{r}");
    assert!(
        its[0]["frozen_time"].as_u64().unwrap() > 0,
        "setup seize not reported: {r}"
    );
    assert!(r["pages_skipped_parent"].as_u64().unwrap() > 0, "{r}");
    let set = r["store"]["set"].as_str().unwrap();
    let out = common::haul()
        .args(["images", "verify"])
        .arg(set)
        .arg("--store")
        .arg(dir.path().join("haul-store"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn haul_dump_predump_prints_each_iteration_and_carries_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Dirtier::start(tmp.path(), 64);
    let out = common::haul()
        .args([
            "dump",
            "--pid",
            &d.pid().to_string(),
            "--leave-running",
            "--json",
        ])
        .args(["--predump", "2", "--interval", "100ms", "--stop-below", "0"])
        .arg("--store")
        .arg(tmp.path().join("store"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let its = v["predump"]["iterations"].as_array().unwrap();
    assert_eq!(its.len(), 2, "{v}");
    assert_eq!(v["predump"]["stop_reason"], "max_iterations");
    assert_eq!(v["predump"]["tracker"], "uffd-wp");
    assert!(its[0]["pages_written"].as_u64().unwrap() >= 64, "{v}");
    assert_eq!(its[1]["frozen_time"], 0);
    assert!(
        v["stats"]["pages_skipped_parent"].as_u64().unwrap() >= 64,
        "{v}"
    );
    // Left running, untracked.
    assert_eq!(tracking_left(d.pid()), (0, 0));
    d.cmd("w 1");
}

#[test]
fn a_non_root_target_is_tracked_with_a_user_mode_only_uffd() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("nobody");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = fixture("dirtier");
    let mut cmd = Command::new(&bin);
    cmd.arg("32").arg(&work).uid(65534).gid(65534);
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let run = Running::logged(&mut cmd, &work.join("log"), true);
    let info = std::fs::read_to_string(work.join("info")).unwrap();
    let addr = u64::from_str_radix(info.split_whitespace().next().unwrap(), 16).unwrap();
    let mut d = Dirtier {
        run,
        dir: work.clone(),
        addr,
        pages: 32,
        seq: 0,
    };
    assert_eq!(haul::proc::status(d.pid()).unwrap().uid[1], 65534);
    let store = Store::open_or_create(&tmp.path().join("store")).unwrap();
    let mut pc = Precopy::start(d.pid(), &store, "nobody", &popts(TrackerKind::UffdWp)).unwrap();
    pc.iterate().unwrap();
    d.cmd("w 5 6");
    let it = pc.iterate().unwrap();
    let (inside, _) = d.split(set_addrs(&store, &it.set));
    assert_eq!(inside, [5, 6].into_iter().collect());
    // (The final dump of another user's process fails here at prlimit64 without
    // CAP_SYS_RESOURCE, a limit of the dump itself; tracking still ends with the pre-copy.)
    drop(pc);
    assert_eq!(tracking_left(d.pid()), (0, 0));
    d.cmd("w 1");
}

/// The hot-first push of a lazy restore counts each page's writes over the pre-dumps: pages
/// written again in later rounds (or in the final dump) come before those written once, and the
/// lazily restored process has the memory it had at the final dump.
#[test]
fn hot_first_push_counts_writes_over_the_predumps_and_restores_exactly() {
    use haul::lazy::{restore_lazy, LazyOptions, LazySource, PushOrder, PushPolicy, StoreSource};
    use std::sync::Arc;
    adopt_orphans();
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_or_create(&tmp.path().join("store")).unwrap());
    let mut d = Dirtier::start(tmp.path(), 256);
    let opts = popts(TrackerKind::UffdWp);
    let mut pc = Precopy::start(d.pid(), &store, "dirtier", &opts).unwrap();
    three_rounds(&mut d, &mut pc, &store);
    d.cmd("w 9 10");
    let sum = d.cmd("sum").sum;
    let (dumped, _) = pc.final_dump(&kill_opts()).unwrap();
    d.run.child.wait().unwrap();
    let set = Arc::new(dumped.set);

    // Worked out in the background: asked again until ready.
    let mut source = StoreSource::new(store.clone());
    let mut counts = None;
    assert!(wait_for(Duration::from_secs(30), || {
        match source.dirty_counts(&set) {
            haul::lazy::DirtyCounts::NotYet => false,
            haul::lazy::DirtyCounts::Ready(c) => {
                counts = Some(c.expect("a set after pre-dumps has a dirty history"));
                true
            }
        }
    }));
    let counts = counts.unwrap();
    let at = |i: u64| counts.get(&(d.addr + i * PAGE)).copied().unwrap_or(0);
    for hot in [3, 4, 40, 200, 7, 9, 10] {
        assert_eq!(
            at(hot),
            2,
            "page {hot}: written in the first round and once more"
        );
    }
    for cold in [0, 1, 8, 100, 255] {
        assert_eq!(at(cold), 1, "page {cold}: written in the first round only");
    }

    let lopts = LazyOptions {
        push: PushPolicy::Idle,
        idle_push: Duration::ZERO,
        order: PushOrder::HotFirst,
        ..Default::default()
    };
    let src = Box::new(StoreSource::new(store.clone()));
    let lr = restore_lazy(&set, &*store, src, &RestoreOptions::default(), &lopts).unwrap();
    let pid = lr.pid();
    let rep = lr.wait().unwrap();
    assert_eq!(rep.push_order, "hot-first");
    assert!(rep.pages_pushed > 200, "{rep:?}");
    let mut seq = d.seq;
    let ack = send_cmd(pid, tmp.path(), "sum", &mut seq);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = waitpid(Pid::from_raw(pid), None);
    assert_eq!(ack.sum, sum);
}
