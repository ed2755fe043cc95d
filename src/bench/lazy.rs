//! `haul bench lazy`: post-copy restore of a real process, measured against an eager restore
//! of the same image set (DESIGN.md §4 "This VM": prewarm, medians, side by side).
//!
//! A `memwriter` of `mib` MiB is dumped once into a store, and a `toucher` of the same size
//! (same content; it touches `touches_per_sec` random pages a second, rewriting each with what
//! it holds). Then, `runs` times each:
//! - an eager restore of the memwriter (its time to running is the reference);
//! - a lazy restore of it that pushes at once (idle push, `idle_push` 0): time to running,
//!   time until every page is resident;
//! - a lazy restore of it that waits (idle push, `idle_push` long) while the process walks its
//!   whole region (its checksum): every page arrives by a fault and its prefetch; fault service
//!   latency;
//! - a lazy restore of the toucher with the continuous push, while it faults all the time:
//!   time until every page is resident, fault service latency as the daemon measures it (from
//!   reading the fault to the copy) and as the toucher sees it (its touches slower than 5 µs,
//!   timed around the access: waiting behind the push included).
//!
//! Every restored process must report the region checksum it had before the dump, or the
//! benchmark fails. Restored processes get any free PID and are killed and reaped after.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{build, median, prewarm, BoxErr, Target};
use crate::dump::{dump_to_store, DumpOptions};
use crate::lazy::{restore_lazy, LazyOptions, PushPolicy, StoreSource};
use crate::restore::{PidChoice, RestoreOptions};
use crate::store::Store;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Where to work: a fresh subdirectory of it holds the store and the fixture binary, and
    /// only that is removed afterwards.
    pub dir: PathBuf,
    /// Where `memwriter.c` is.
    pub fixtures: PathBuf,
    pub mib: u64,
    /// Repetitions (medians are reported).
    pub runs: u32,
    /// Pages copied after each faulting page.
    pub prefetch: u32,
    /// Random pages the toucher touches per second (the continuous push's workload).
    pub touches_per_sec: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            dir: std::env::temp_dir(),
            fixtures: PathBuf::from("fixtures"),
            mib: 1024,
            runs: 3,
            prefetch: 16,
            touches_per_sec: 1000,
        }
    }
}

/// One repetition.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LazyRun {
    pub eager_time_to_running_us: u64,
    /// Push at once.
    pub push_time_to_running_us: u64,
    pub push_all_resident_us: u64,
    /// Every page by fault (and prefetch).
    pub fault_time_to_running_us: u64,
    pub faults: u64,
    pub fault_p50_us: u64,
    pub fault_p99_us: u64,
    pub prefetched: u64,
    /// Continuous push while the toucher faults all the time.
    pub busy_all_resident_us: u64,
    pub busy_faults: u64,
    pub busy_fault_p50_us: u64,
    pub busy_fault_p99_us: u64,
    pub busy_pushed: u64,
    /// The toucher's own view: touches slower than 5 µs (faults), their p50 and p99 (ns).
    pub busy_slow_touches: u64,
    pub busy_touch_p50_ns: u64,
    pub busy_touch_p99_ns: u64,
}

/// The figures of `haul bench lazy`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchReport {
    pub mib: u64,
    pub pages_lazy: u64,
    pub prefetch: u32,
    pub runs: Vec<LazyRun>,
    pub median_eager_time_to_running_us: u64,
    pub median_lazy_time_to_running_us: u64,
    pub median_all_resident_us: u64,
    pub median_fault_p50_us: u64,
    pub median_fault_p99_us: u64,
    pub touches_per_sec: u64,
    pub median_busy_all_resident_us: u64,
    pub median_busy_fault_p50_us: u64,
    pub median_busy_fault_p99_us: u64,
    pub median_busy_touch_p50_ns: u64,
    pub median_busy_touch_p99_ns: u64,
}

/// Runs the benchmark; see the module documentation.
pub fn run_bench(o: &BenchOptions) -> Result<BenchReport, super::BenchError> {
    super::in_work_dir(&o.dir, "lazy", |dir| run_inner(o, dir))
}

fn run_inner(o: &BenchOptions, dir: &Path) -> Result<BenchReport, BoxErr> {
    // Restored processes are re-parented: to us, so that we can reap them.
    crate::sys::host::set_child_subreaper()?;
    let memwriter = build(&o.fixtures, "memwriter", dir)?;
    let store = Arc::new(Store::open_or_create(&dir.join("store"))?);
    let report = dir.join("mw.report");
    let mut mw = Target::start(
        Command::new(&memwriter).args([
            o.mib.to_string(),
            "0".into(),
            report.display().to_string(),
        ]),
        &dir.join("mw.log"),
    )?;
    let before = checksum(mw.pid, &report)?;
    let dopts = DumpOptions {
        leave_running: false,
        ..Default::default()
    };
    let set = Arc::new(dump_to_store(mw.pid, &store, "bench-lazy", &dopts, Some(1))?.set);
    mw.stop();
    let toucher = build(&o.fixtures, "toucher", dir)?;
    let mut tw = Target::start(
        Command::new(&toucher).args([
            o.mib.to_string(),
            o.touches_per_sec.to_string(),
            report.display().to_string(),
        ]),
        &dir.join("toucher.log"),
    )?;
    let touched_before = checksum(tw.pid, &report)?;
    let busy_set = Arc::new(dump_to_store(tw.pid, &store, "bench-busy", &dopts, Some(1))?.set);
    tw.stop();
    let ropts = RestoreOptions {
        pid: PidChoice::Any,
        ..Default::default()
    };
    let mut rep = BenchReport {
        mib: o.mib,
        prefetch: o.prefetch,
        touches_per_sec: o.touches_per_sec,
        ..Default::default()
    };
    for _ in 0..o.runs {
        let mut run = LazyRun::default();
        prewarm((2 * o.mib) << 20);
        let eager = crate::restore::restore(&set, &*store, &ropts)?;
        run.eager_time_to_running_us = eager.time_to_running;
        let r = Reaped(eager.pid);
        expect(checksum(r.0, &report)?, &before, "eager")?;
        drop(r);

        prewarm((2 * o.mib) << 20);
        let lopts = LazyOptions {
            push: PushPolicy::Idle,
            idle_push: Duration::ZERO,
            prefetch: o.prefetch,
            ..Default::default()
        };
        let src = Box::new(StoreSource::new(store.clone()));
        let lr = restore_lazy(&set, &*store, src, &ropts, &lopts)?;
        run.push_time_to_running_us = lr.outcome.time_to_running;
        rep.pages_lazy = lr.pages_lazy;
        let r = Reaped(lr.pid());
        let l = lr.wait()?;
        run.push_all_resident_us = l.time_to_all_resident;
        expect(checksum(r.0, &report)?, &before, "lazy, pushed")?;
        drop(r);

        prewarm((2 * o.mib) << 20);
        let lopts = LazyOptions {
            push: PushPolicy::Idle,
            idle_push: Duration::from_secs(2),
            prefetch: o.prefetch,
            ..Default::default()
        };
        let src = Box::new(StoreSource::new(store.clone()));
        let lr = restore_lazy(&set, &*store, src, &ropts, &lopts)?;
        run.fault_time_to_running_us = lr.outcome.time_to_running;
        let r = Reaped(lr.pid());
        // The checksum walks the region: every page by fault.
        expect(checksum(r.0, &report)?, &before, "lazy, by faults")?;
        let l = lr.wait()?;
        run.faults = l.faults_served;
        run.fault_p50_us = l.fault_latency_p50;
        run.fault_p99_us = l.fault_latency_p99;
        run.prefetched = l.pages_prefetched;
        drop(r);

        prewarm((2 * o.mib) << 20);
        let lopts = LazyOptions {
            push: PushPolicy::Continuous,
            prefetch: o.prefetch,
            ..Default::default()
        };
        let src = Box::new(StoreSource::new(store.clone()));
        let lr = restore_lazy(&busy_set, &*store, src, &ropts, &lopts)?;
        let r = Reaped(lr.pid());
        // It touches random pages from the first instruction on: faults all the time.
        let l = lr.wait()?;
        run.busy_all_resident_us = l.time_to_all_resident;
        run.busy_faults = l.faults_served;
        run.busy_fault_p50_us = l.fault_latency_p50;
        run.busy_fault_p99_us = l.fault_latency_p99;
        run.busy_pushed = l.pages_pushed;
        let fields = report_fields(r.0, &report)?;
        expect(
            fields[1].clone(),
            &touched_before,
            "lazy, continuous push while faulting",
        )?;
        let num = |k: usize| {
            fields
                .get(k)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        run.busy_slow_touches = num(3);
        run.busy_touch_p50_ns = num(4);
        run.busy_touch_p99_ns = num(5);
        drop(r);
        rep.runs.push(run);
    }
    let med = |f: fn(&LazyRun) -> u64| median(rep.runs.iter().map(f).collect());
    rep.median_eager_time_to_running_us = med(|r| r.eager_time_to_running_us);
    rep.median_lazy_time_to_running_us = med(|r| r.push_time_to_running_us);
    rep.median_all_resident_us = med(|r| r.push_all_resident_us);
    rep.median_fault_p50_us = med(|r| r.fault_p50_us);
    rep.median_fault_p99_us = med(|r| r.fault_p99_us);
    rep.median_busy_all_resident_us = med(|r| r.busy_all_resident_us);
    rep.median_busy_fault_p50_us = med(|r| r.busy_fault_p50_us);
    rep.median_busy_fault_p99_us = med(|r| r.busy_fault_p99_us);
    rep.median_busy_touch_p50_ns = med(|r| r.busy_touch_p50_ns);
    rep.median_busy_touch_p99_ns = med(|r| r.busy_touch_p99_ns);
    Ok(rep)
}

pub(super) fn expect(got: String, want: &str, what: &str) -> Result<(), BoxErr> {
    if got != want {
        return Err(format!(
            "{what}: the restored memwriter's checksum is {got}, it was {want} before the dump"
        )
        .into());
    }
    Ok(())
}

/// A restored process: killed and reaped when dropped.
pub(super) struct Reaped(pub(super) i32);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = crate::sys::process::kill(self.0, libc::SIGKILL);
        let _ = crate::sys::host::reap(self.0);
    }
}

/// The memwriter's (or toucher's) region checksum: SIGUSR1, then its report file.
pub(super) fn checksum(pid: i32, report: &Path) -> Result<String, BoxErr> {
    Ok(report_fields(pid, report)?.swap_remove(1))
}

/// The fields of the memwriter's (or toucher's) report: SIGUSR1, then its report file; the
/// second is the region checksum.
fn report_fields(pid: i32, report: &Path) -> Result<Vec<String>, BoxErr> {
    let _ = std::fs::remove_file(report);
    let end = Instant::now() + Duration::from_secs(60);
    let mut sent = Instant::now() - Duration::from_secs(1);
    loop {
        if sent.elapsed() >= Duration::from_millis(500) {
            // Sent again: a signal that came before the handler was back would be lost.
            crate::sys::process::kill(pid, libc::SIGUSR1)?;
            sent = Instant::now();
        }
        if let Ok(s) = std::fs::read_to_string(report) {
            let fields: Vec<String> = s.split_whitespace().map(str::to_string).collect();
            if fields.len() >= 2 {
                return Ok(fields);
            }
        }
        if Instant::now() > end {
            return Err(format!("pid {pid} never wrote its checksum").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The report as text.
pub fn report_text(r: &BenchReport) -> String {
    let mut s = format!(
        "lazy restore of a {} MiB memwriter ({} pages left lazy, prefetch {}), medians of {} runs\n",
        r.mib,
        r.pages_lazy,
        r.prefetch,
        r.runs.len()
    );
    let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
    s += &format!(
        "  time to running     lazy {}   (eager {})\n",
        ms(r.median_lazy_time_to_running_us),
        ms(r.median_eager_time_to_running_us)
    );
    s += &format!(
        "  all pages resident  {} (pushed from the start)\n",
        ms(r.median_all_resident_us)
    );
    s += &format!(
        "  fault service       p50 {} us, p99 {} us (every page by fault and prefetch)\n",
        r.median_fault_p50_us, r.median_fault_p99_us
    );
    s += &format!(
        "  continuous push     all resident {}, faults p50 {} us, p99 {} us; as the process \
         sees them p50 {:.1} us, p99 {:.1} us (while it touches {} random pages/s)\n",
        ms(r.median_busy_all_resident_us),
        r.median_busy_fault_p50_us,
        r.median_busy_fault_p99_us,
        r.median_busy_touch_p50_ns as f64 / 1000.0,
        r.median_busy_touch_p99_ns as f64 / 1000.0,
        r.touches_per_sec
    );
    for (i, run) in r.runs.iter().enumerate() {
        s += &format!(
            "  run {}: eager {}, lazy {} / {} to running; all resident {}; {} faults \
             (p50 {} us, p99 {} us), {} prefetched; continuous push while faulting: all \
             resident {}, {} faults (p50 {} us, p99 {} us; the process saw {} slow touches, \
             p50 {:.1} us, p99 {:.1} us), {} pushed\n",
            i + 1,
            ms(run.eager_time_to_running_us),
            ms(run.push_time_to_running_us),
            ms(run.fault_time_to_running_us),
            ms(run.push_all_resident_us),
            run.faults,
            run.fault_p50_us,
            run.fault_p99_us,
            run.prefetched,
            ms(run.busy_all_resident_us),
            run.busy_faults,
            run.busy_fault_p50_us,
            run.busy_fault_p99_us,
            run.busy_slow_touches,
            run.busy_touch_p50_ns as f64 / 1000.0,
            run.busy_touch_p99_ns as f64 / 1000.0,
            run.busy_pushed
        );
    }
    s
}
