//! `haul bench tree`: what a process tree costs against one process with the same memory
//! (issue #13; DESIGN.md §4 "This VM": prewarm, medians, side by side).
//!
//! A `treebench` tree of `processes` processes sharing `shared_mib` of anonymous shared memory
//! (`MAP_SHARED|MAP_ANONYMOUS`, inherited across fork) with `private_mib` of private memory
//! each, against a single `treebench` with the same shared memory and all the private memory
//! (`processes × private_mib`) alone. `runs` times each: a dump that kills it (its frozen time
//! and the set's figures), then a restore under the same PIDs (restore time, time to running).
//!
//! Every restored process must report the private and shared checksums it had before the dump,
//! and the tree's shared memory must still be one object (a write by the root is seen by a
//! child), or the benchmark fails. The image stores the shared memory once: the tree's set
//! holds about as many pages as the single process's, not `processes` times the shared memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{build, median, prewarm, BoxErr, Target};
use crate::dump::{dump_to_store, DumpOptions};
use crate::image::{ImageSet, SetFigures};
use crate::restore::{restore, PidChoice, RestoreOptions};
use crate::store::Store;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Where to work: a fresh subdirectory of it holds the store and the fixture binary, and
    /// only that is removed afterwards.
    pub dir: PathBuf,
    /// Where `treebench.c` is.
    pub fixtures: PathBuf,
    /// Processes of the tree (the root and `processes - 1` children).
    pub processes: u32,
    pub shared_mib: u64,
    /// Private memory of each process of the tree.
    pub private_mib: u64,
    /// Repetitions (medians are reported).
    pub runs: u32,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            dir: std::env::temp_dir(),
            fixtures: PathBuf::from("fixtures"),
            processes: 16,
            shared_mib: 256,
            private_mib: 16,
            runs: 3,
        }
    }
}

/// One dump and restore of one shape.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TreeRun {
    pub frozen_us: u64,
    pub restore_us: u64,
    pub time_to_running_us: u64,
}

/// The figures of one shape (the tree, or the single process).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ShapeReport {
    pub processes: u64,
    pub runs: Vec<TreeRun>,
    pub median_frozen_us: u64,
    pub median_restore_us: u64,
    pub median_time_to_running_us: u64,
    /// The figures of the last run's image set: pages, bytes logical, stored, ...
    pub figures: SetFigures,
}

/// The figures of `haul bench tree`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchReport {
    pub shared_mib: u64,
    pub private_mib: u64,
    pub tree: ShapeReport,
    pub single: ShapeReport,
    /// `tree / single` of the medians.
    pub frozen_ratio: f64,
    pub restore_ratio: f64,
    /// `tree.figures.bytes_logical / single.figures.bytes_logical`: 1.0 when the tree's
    /// shared memory is stored once (each process's copy would make it about
    /// `processes × shared / (shared + processes × private)` more).
    pub logical_ratio: f64,
}

/// Runs the benchmark; see the module documentation.
pub fn run_bench(o: &BenchOptions) -> Result<BenchReport, super::BenchError> {
    super::in_work_dir(&o.dir, "tree", |dir| run_inner(o, dir))
}

fn run_inner(o: &BenchOptions, dir: &Path) -> Result<BenchReport, BoxErr> {
    if o.processes < 2 || o.shared_mib < 1 || o.runs < 1 {
        return Err("a tree needs at least 2 processes, 1 MiB shared and 1 run".into());
    }
    // Dumped and restored processes are re-parented: to us, so that we can reap them.
    crate::sys::host::set_child_subreaper()?;
    let bin = build(&o.fixtures, "treebench", dir)?;
    let store = Store::open_or_create(&dir.join("store"))?;
    let total_mib = o.shared_mib + u64::from(o.processes) * o.private_mib;
    let mut rep = BenchReport {
        shared_mib: o.shared_mib,
        private_mib: o.private_mib,
        ..Default::default()
    };
    for run in 0..o.runs {
        for tree in [true, false] {
            prewarm((2 * total_mib) << 20);
            let (private, children) = if tree {
                (o.private_mib, o.processes - 1)
            } else {
                (u64::from(o.processes) * o.private_mib, 0)
            };
            let shape = if tree { &mut rep.tree } else { &mut rep.single };
            let work = dir.join(format!("run{run}-{}", if tree { "tree" } else { "one" }));
            std::fs::create_dir_all(&work)?;
            let (r, set) = one_run(&bin, &store, &work, o.shared_mib, private, children)?;
            shape.processes = set.process_count() as u64;
            shape.figures = set.figures.clone();
            shape.runs.push(r);
        }
    }
    for shape in [&mut rep.tree, &mut rep.single] {
        let med = |f: fn(&TreeRun) -> u64| median(shape.runs.iter().map(f).collect());
        shape.median_frozen_us = med(|r| r.frozen_us);
        shape.median_restore_us = med(|r| r.restore_us);
        shape.median_time_to_running_us = med(|r| r.time_to_running_us);
    }
    rep.frozen_ratio = ratio(rep.tree.median_frozen_us, rep.single.median_frozen_us);
    rep.restore_ratio = ratio(rep.tree.median_restore_us, rep.single.median_restore_us);
    rep.logical_ratio = ratio(
        rep.tree.figures.bytes_logical,
        rep.single.figures.bytes_logical,
    );
    Ok(rep)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Starts a treebench, dumps it (killing it), restores it under the same PIDs, and checks the
/// restored processes against what they reported before.
fn one_run(
    bin: &Path,
    store: &Store,
    work: &Path,
    shared_mib: u64,
    private_mib: u64,
    children: u32,
) -> Result<(TreeRun, ImageSet), BoxErr> {
    let mut t = Target::start(
        Command::new(bin)
            .arg(shared_mib.to_string())
            .arg(private_mib.to_string())
            .arg(children.to_string())
            .arg(work),
        &work.join("log"),
    )?;
    let mut pids = vec![t.pid];
    pids.extend(crate::proc::children(t.pid)?);
    if pids.len() != children as usize + 1 {
        return Err(format!("treebench {} has children {:?}", t.pid, &pids[1..]).into());
    }
    let before = sums(&pids, work)?;
    let opts = DumpOptions {
        leave_running: false,
        ..Default::default()
    };
    let d = dump_to_store(t.pid, store, "bench-tree", &opts, Some(1))?;
    // Killed by the dump: the root is ours to reap, its children were re-parented to us.
    t.stop();
    for p in &pids[1..] {
        let _ = crate::sys::process::kill(*p, libc::SIGKILL);
        let _ = crate::sys::host::reap(*p);
    }
    let ropts = RestoreOptions {
        pid: PidChoice::Same,
        ..Default::default()
    };
    let out = restore(&d.set, store, &ropts)?;
    let restored = Restored(d.set.processes().map(|(_, p)| p.pid).collect());
    let after = sums(&pids, work)?;
    if after != before {
        return Err(format!(
            "the restored processes report {after:?}, before the dump they reported {before:?}"
        )
        .into());
    }
    if children > 0 {
        shared_still_shared(&pids, work, before[0].0)?;
    }
    drop(restored);
    Ok((
        TreeRun {
            frozen_us: d.stats.frozen_time,
            restore_us: out.restore_time,
            time_to_running_us: out.time_to_running,
        },
        d.set,
    ))
}

/// The generation the root bumps in the shared memory reaches a child: one object, not copies.
fn shared_still_shared(pids: &[i32], work: &Path, generation: u64) -> Result<(), BoxErr> {
    crate::sys::process::kill(pids[0], libc::SIGUSR2)?;
    let end = Instant::now() + Duration::from_secs(20);
    // The root first: once it has written the new generation, every process must read it.
    while sums(&pids[..1], work)?[0].0 != generation + 1 {
        if Instant::now() > end {
            return Err("the restored root never bumped the generation (SIGUSR2)".into());
        }
    }
    let now = sums(pids, work)?;
    if now.iter().any(|s| s.0 != generation + 1) {
        return Err(format!(
            "after the restore the root wrote generation {} into the shared memory, the \
             processes read {:?}: it is no longer shared",
            generation + 1,
            now.iter().map(|s| s.0).collect::<Vec<_>>()
        )
        .into());
    }
    Ok(())
}

/// (generation, private sum, shared sum) of each process, by index: SIGUSR1 to each, then
/// their report files (asked again every 500 ms: a signal can come before the handler is set).
fn sums(pids: &[i32], work: &Path) -> Result<Vec<(u64, String, String)>, BoxErr> {
    for i in 0..pids.len() {
        let _ = std::fs::remove_file(work.join(format!("sum.{i}")));
    }
    let end = Instant::now() + Duration::from_secs(60);
    let mut sent = Instant::now() - Duration::from_secs(1);
    loop {
        if sent.elapsed() >= Duration::from_millis(500) {
            for p in pids {
                crate::sys::process::kill(*p, libc::SIGUSR1)?;
            }
            sent = Instant::now();
        }
        let got: Vec<Option<(u64, String, String)>> = (0..pids.len())
            .map(|i| {
                let s = std::fs::read_to_string(work.join(format!("sum.{i}"))).ok()?;
                let w: Vec<&str> = s.split_whitespace().collect();
                Some((
                    w.get(1)?.parse().ok()?,
                    w.get(2)?.to_string(),
                    w.get(3)?.to_string(),
                ))
            })
            .collect();
        if got.iter().all(Option::is_some) {
            return Ok(got.into_iter().flatten().collect());
        }
        if Instant::now() > end {
            return Err(format!("treebench {} did not report its sums", pids[0]).into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A restored tree: killed and reaped when dropped (the root first, so that its children are
/// re-parented to us and can be reaped too).
struct Restored(Vec<i32>);

impl Drop for Restored {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = crate::sys::process::kill(*p, libc::SIGKILL);
        }
        for p in &self.0 {
            let _ = crate::sys::host::reap(*p);
        }
    }
}

/// The report as text.
pub fn report_text(r: &BenchReport) -> String {
    use crate::util::human_bytes;
    let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
    let mut s = format!(
        "a tree of {} processes sharing {} MiB, {} MiB private each, against one process with \
         the same {} MiB shared and {} MiB private; medians of {} runs\n",
        r.tree.processes,
        r.shared_mib,
        r.private_mib,
        r.shared_mib,
        r.tree.processes * r.private_mib,
        r.tree.runs.len()
    );
    s += &format!(
        "  {:<8} {:>10} {:>10} {:>11} {:>9} {:>10} {:>10}\n",
        "", "frozen", "restore", "to running", "pages", "logical", "stored"
    );
    for (name, x) in [("tree", &r.tree), ("single", &r.single)] {
        s += &format!(
            "  {:<8} {:>10} {:>10} {:>11} {:>9} {:>10} {:>10}\n",
            name,
            ms(x.median_frozen_us),
            ms(x.median_restore_us),
            ms(x.median_time_to_running_us),
            x.figures.pages,
            human_bytes(x.figures.bytes_logical),
            human_bytes(x.figures.bytes_stored)
        );
    }
    s += &format!(
        "  tree / single: frozen {:.2}x, restore {:.2}x (the aim: at most 1.5x); logical bytes \
         {:.2}x (1.00x: the shared memory is stored once)\n",
        r.frozen_ratio, r.restore_ratio, r.logical_ratio
    );
    for (name, x) in [("tree", &r.tree), ("single", &r.single)] {
        for (i, run) in x.runs.iter().enumerate() {
            s += &format!(
                "  {name} run {}: frozen {}, restore {}, running after {}\n",
                i + 1,
                ms(run.frozen_us),
                ms(run.restore_us),
                ms(run.time_to_running_us)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_text_puts_the_two_shapes_side_by_side_with_their_ratios() {
        let shape = |procs, frozen, restore, logical| ShapeReport {
            processes: procs,
            runs: vec![TreeRun {
                frozen_us: frozen,
                restore_us: restore,
                time_to_running_us: restore / 2,
            }],
            median_frozen_us: frozen,
            median_restore_us: restore,
            median_time_to_running_us: restore / 2,
            figures: SetFigures {
                pages: logical >> 12,
                bytes_logical: logical,
                bytes_stored: logical / 2,
                ..Default::default()
            },
        };
        let r = BenchReport {
            shared_mib: 256,
            private_mib: 16,
            tree: shape(16, 300_000, 400_000, 512 << 20),
            single: shape(1, 200_000, 400_000, 512 << 20),
            frozen_ratio: 1.5,
            restore_ratio: 1.0,
            logical_ratio: 1.0,
        };
        let t = report_text(&r);
        assert!(t.starts_with("a tree of 16 processes sharing 256 MiB, 16 MiB private each, against one process with the same 256 MiB shared and 256 MiB private; medians of 1 runs\n"), "{t}");
        assert!(t.contains("frozen 1.50x, restore 1.00x"), "{t}");
        assert!(t.contains("tree run 1: frozen 300.0 ms"), "{t}");
        assert!(t.contains("logical bytes 1.00x"), "{t}");
    }
}
