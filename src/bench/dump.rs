//! `haul bench precopy`: what pre-copy buys and costs, measured side by side on real processes
//! (DESIGN.md §4 "This VM": prewarm, medians, ratios).
//!
//! - Frozen time of a full dump against a final dump after N pre-dumps, on a `memwriter` of
//!   `mib` MiB dirtying `dirty_per_sec` pages a second (both leave it running).
//! - The cost of one uffd-wp scan (`PAGEMAP_SCAN` over every tracked mapping).
//! - The target's slowdown while tracked: a `spinwriter` counts its own page writes per second
//!   before tracking, while tracked (a pre-dump every `interval`), and after tracking ended.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{build, median, prewarm, BoxErr, Target};
use crate::dump::{dump_to_store, DumpOptions, Precopy, PrecopyOptions, TrackerChoice};
use crate::store::Store;
use crate::track::TrackerKind;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Where to work: a fresh subdirectory of it holds the store and the fixture binaries, and
    /// only that is removed afterwards.
    pub dir: PathBuf,
    /// Where `memwriter.c` and `spinwriter.c` are.
    pub fixtures: PathBuf,
    pub mib: u64,
    pub dirty_per_sec: u64,
    pub predumps: u32,
    pub interval: Duration,
    /// Repetitions of the frozen-time comparison (medians are reported).
    pub runs: u32,
    /// Size of the spinwriter's region.
    pub spin_mib: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            dir: std::env::temp_dir(),
            fixtures: PathBuf::from("fixtures"),
            mib: 1024,
            dirty_per_sec: 1000,
            predumps: 3,
            interval: Duration::from_secs(1),
            runs: 3,
            spin_mib: 256,
        }
    }
}

/// One repetition of the frozen-time comparison.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FrozenRun {
    pub full_frozen_us: u64,
    pub full_pages: u64,
    pub precopy_frozen_us: u64,
    /// Pages the final dump copied (written since the last pre-dump).
    pub precopy_pages_copied: u64,
    pub precopy_pages_carried: u64,
    /// Pages written in each pre-dump (the first copies every present page).
    pub predump_pages: Vec<u64>,
    pub predump_duration_us: Vec<u64>,
    /// The process was stopped this long to set up uffd-wp (injected userfaultfd + close).
    pub setup_frozen_us: u64,
    /// Each pre-dump's tracking round (the first arms it, the others scan).
    pub scan_us: Vec<u64>,
}

/// The figures of `haul bench precopy`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchReport {
    pub mib: u64,
    pub dirty_per_sec: u64,
    pub predumps: u32,
    pub runs: Vec<FrozenRun>,
    pub median_full_frozen_us: u64,
    pub median_precopy_frozen_us: u64,
    pub frozen_ratio: f64,
    /// Median of the scans after the first pre-dump, µs.
    pub median_scan_us: u64,
    pub spin_mib: u64,
    /// The spinwriter's page writes per second: untracked, tracked, after tracking.
    pub spin_rate_before: f64,
    pub spin_rate_tracked: f64,
    pub spin_rate_after: f64,
    /// `spin_rate_tracked / spin_rate_before`.
    pub tracked_speed_ratio: f64,
    /// `spin_rate_after / spin_rate_before`.
    pub after_speed_ratio: f64,
    /// In haul's own memory (`spin_mib`), uffd-wp async: ns per page for a pass writing one
    /// word per page right after a scan re-armed every page (each write faults once), and for
    /// the pass after it (no fault). Medians of 5.
    pub first_write_ns: f64,
    pub plain_write_ns: f64,
    /// `PAGEMAP_SCAN` re-arming every page of `spin_mib` (all written), µs, median of 5.
    pub scan_all_written_us: u64,
}

/// Runs the benchmark; see the module documentation.
pub fn run_bench(o: &BenchOptions) -> Result<BenchReport, super::BenchError> {
    super::in_work_dir(&o.dir, "precopy", |dir| run_inner(o, dir))
}

fn run_inner(o: &BenchOptions, dir: &Path) -> Result<BenchReport, BoxErr> {
    let memwriter = build(&o.fixtures, "memwriter", dir)?;
    let spinwriter = build(&o.fixtures, "spinwriter", dir)?;
    prewarm((2 * o.mib.max(o.spin_mib)) << 20);
    let store = Store::open_or_create(&dir.join("store"))?;
    let leave = DumpOptions {
        leave_running: true,
        ..Default::default()
    };
    let mut rep = BenchReport {
        mib: o.mib,
        dirty_per_sec: o.dirty_per_sec,
        predumps: o.predumps,
        spin_mib: o.spin_mib,
        ..Default::default()
    };
    for run in 0..o.runs {
        let mut mw = Target::start(
            Command::new(&memwriter).args([
                o.mib.to_string(),
                o.dirty_per_sec.to_string(),
                dir.join("mw.out").display().to_string(),
            ]),
            &dir.join(format!("mw{run}.log")),
        )?;
        let mut fr = FrozenRun::default();
        let full = dump_to_store(mw.pid, &store, "full", &leave, Some(1))?;
        fr.full_frozen_us = full.stats.frozen_time;
        fr.full_pages = full.stats.pages_written;
        let popts = PrecopyOptions {
            interval: o.interval,
            tracker: TrackerChoice::Only(TrackerKind::UffdWp),
            level: Some(1),
            ..Default::default()
        };
        let mut pc = Precopy::start(mw.pid, &store, "precopy", &popts)?;
        for i in 0..o.predumps {
            if i > 0 {
                std::thread::sleep(o.interval);
            }
            let it = pc.iterate()?;
            fr.predump_pages.push(it.pages_written);
            fr.predump_duration_us.push(it.duration_us);
            fr.scan_us.push(pc.last_scan_us());
            if i == 0 {
                fr.setup_frozen_us = it.frozen_time;
            }
        }
        std::thread::sleep(o.interval);
        let (d, _) = pc.final_dump(&leave)?;
        fr.precopy_frozen_us = d.stats.frozen_time;
        fr.precopy_pages_copied = d.stats.pages_written;
        fr.precopy_pages_carried = d.stats.pages_skipped_parent;
        mw.stop();
        rep.runs.push(fr);
    }
    rep.median_full_frozen_us = median(rep.runs.iter().map(|r| r.full_frozen_us).collect());
    rep.median_precopy_frozen_us = median(rep.runs.iter().map(|r| r.precopy_frozen_us).collect());
    rep.frozen_ratio = ratio(rep.median_precopy_frozen_us, rep.median_full_frozen_us);
    rep.median_scan_us = median(
        rep.runs
            .iter()
            .flat_map(|r| r.scan_us.iter().skip(1).copied())
            .collect(),
    );

    // Slowdown: the spinwriter's own rate, before / while / after tracking.
    let count = dir.join("spin.count");
    let mut sw = Target::start(
        Command::new(&spinwriter).args([o.spin_mib.to_string(), count.display().to_string()]),
        &dir.join("spin.log"),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    rep.spin_rate_before = rate(&count, Duration::from_secs(2))?;

    let popts = PrecopyOptions {
        tracker: TrackerChoice::Only(TrackerKind::UffdWp),
        level: Some(1),
        ..Default::default()
    };
    let mut pc = Precopy::start(sw.pid, &store, "spin", &popts)?;
    pc.iterate()?;
    let mut tracked = Vec::new();
    for _ in 0..o.predumps.max(2) {
        // Over the interval after a pre-dump (which re-armed every page and copied them).
        tracked.push(rate(&count, o.interval)?);
        pc.iterate()?;
    }
    rep.spin_rate_tracked = tracked.iter().sum::<f64>() / tracked.len() as f64;
    drop(pc);
    std::thread::sleep(Duration::from_millis(200));
    rep.spin_rate_after = rate(&count, Duration::from_secs(2))?;
    sw.stop();
    rep.tracked_speed_ratio = rep.spin_rate_tracked / rep.spin_rate_before.max(1.0);
    rep.after_speed_ratio = rep.spin_rate_after / rep.spin_rate_before.max(1.0);
    let (first, plain, scan) = first_write_cost((o.spin_mib << 20) as usize)?;
    rep.first_write_ns = first;
    rep.plain_write_ns = plain;
    rep.scan_all_written_us = scan;
    Ok(rep)
}

/// What a tracked page's first write costs: see [`BenchReport::first_write_ns`].
fn first_write_cost(len: usize) -> Result<(f64, f64, u64), BoxErr> {
    use crate::sys::mem::AlignedBuf;
    use crate::sys::pagemap::{Pagemap, ScanQuery};
    use crate::sys::uffd::*;
    let mut buf = AlignedBuf::new(len)?;
    let start = buf.as_slice().as_ptr() as u64;
    let end = start + buf.len() as u64;
    let uffd = Uffd::create(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    uffd.api(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)?;
    uffd.register(start, end - start, UFFDIO_REGISTER_MODE_WP)?;
    uffd.writeprotect(start, end - start, true, false)?;
    let pm = Pagemap::open(crate::sys::process::getpid())?;
    let pages = buf.len() / crate::image::PAGE_SIZE;
    let pass = |buf: &mut AlignedBuf, v: u8| {
        let t = Instant::now();
        for p in buf.as_mut_slice().chunks_exact_mut(crate::image::PAGE_SIZE) {
            p[64] = v;
        }
        std::hint::black_box(buf.as_slice().as_ptr());
        t.elapsed().as_nanos() as f64 / pages as f64
    };
    let (mut first, mut plain, mut scans) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..5u8 {
        let t = Instant::now();
        pm.scan(&ScanQuery::written_and_reprotect(start, end))?;
        scans.push(crate::util::us(t.elapsed()));
        first.push(pass(&mut buf, i));
        plain.push(pass(&mut buf, i.wrapping_add(100)));
    }
    uffd.unregister(start, end - start)?;
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Ok((med(first), med(plain), median(scans)))
}

/// The report as text.
pub fn report_text(r: &BenchReport) -> String {
    use crate::util::human_us;
    let mut s = String::new();
    s += &format!(
        "memwriter {} MiB dirtying {} pages/s, {} pre-dumps, {} runs (medians):\n",
        r.mib,
        r.dirty_per_sec,
        r.predumps,
        r.runs.len()
    );
    s += &format!(
        "  frozen: full dump {}, final dump after pre-dumps {} ({:.3}x)\n",
        human_us(r.median_full_frozen_us),
        human_us(r.median_precopy_frozen_us),
        r.frozen_ratio
    );
    for (i, run) in r.runs.iter().enumerate() {
        s += &format!(
            "  run {i}: full {} ({} pages); pre-copy {} (copied {}, carried {}); setup seize {}; \
             pre-dumps {:?} pages in {:?} µs; scans {:?} µs\n",
            human_us(run.full_frozen_us),
            run.full_pages,
            human_us(run.precopy_frozen_us),
            run.precopy_pages_copied,
            run.precopy_pages_carried,
            human_us(run.setup_frozen_us),
            run.predump_pages,
            run.predump_duration_us,
            run.scan_us
        );
    }
    s += &format!(
        "  uffd-wp scan (PAGEMAP_SCAN of every tracked mapping): median {}\n",
        human_us(r.median_scan_us)
    );
    s += &format!(
        "spinwriter {} MiB, page writes/s: untracked {:.0}, tracked {:.0} ({:.3}x), after {:.0} ({:.3}x)\n",
        r.spin_mib,
        r.spin_rate_before,
        r.spin_rate_tracked,
        r.tracked_speed_ratio,
        r.spin_rate_after,
        r.after_speed_ratio
    );
    s += &format!(
        "  first write to a re-armed page {:.0} ns (a plain write {:.1} ns); a scan re-arming {} MiB all written {}\n",
        r.first_write_ns,
        r.plain_write_ns,
        r.spin_mib,
        human_us(r.scan_all_written_us)
    );
    s
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Page writes per second of the spinwriter over `span`, from its shared counter file.
fn rate(count: &Path, span: Duration) -> Result<f64, BoxErr> {
    let read = || -> Result<u64, BoxErr> {
        let b = std::fs::read(count)?;
        let a: [u8; 8] = b
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or("short count file")?;
        Ok(u64::from_ne_bytes(a))
    };
    let (t0, c0) = (Instant::now(), read()?);
    std::thread::sleep(span);
    let (t1, c1) = (Instant::now(), read()?);
    Ok(c1.saturating_sub(c0) as f64 / (t1 - t0).as_secs_f64())
}
