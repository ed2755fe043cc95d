//! `haul bench migrate` (issue #16): the pause a migration costs, as the process itself sees it.
//!
//! The workload is `fixtures/pausewriter.c`: `mib` MiB of memory, `rate` random pages written a
//! second, and a `CLOCK_MONOTONIC` timestamp printed every 10 ms. The pause is the longest gap
//! between two printed timestamps: nothing is printed while the process is frozen, killed, or
//! not yet running again. Each path is a real `haul run` of a job file written here (the path
//! users take), `pid = "same"`, on this host:
//!
//! - `full`: a full dump that stops the process (`leave_running = false`), eager restore;
//! - `precopy-eager`: 3 pre-dumps, then the final dump and an eager restore;
//! - `precopy-lazy`: 3 pre-dumps, then the final dump and a lazy restore (post-copy);
//! - `checkpoint`: a full dump that leaves the process running (its pause is the freeze;
//!   the job's `dump` stage, the time to a committed set).
//!
//! The eager restores adopt the stopped process's memory from its keeper
//! (`restore.adopt_memory`, the default); with `fill` they write it from the set, as a restore
//! on another host does. Each run says which it did (`memory_adopted`).
//!
//! Every path runs `runs` times after a prewarm; the median pause is printed with the pause
//! timeline of the median run (the report's `pause`), so the note can say where it goes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{build, median, prewarm, BoxErr};
use crate::report::{PauseReport, RunReport};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Where to work: a fresh subdirectory of it holds the store, the job files, the reports
    /// and the fixture binary, and only that is removed afterwards.
    pub dir: PathBuf,
    /// Where `pausewriter.c` is.
    pub fixtures: PathBuf,
    pub mib: u64,
    /// Random pages written per second.
    pub rate: u64,
    /// Repetitions of each path (medians are reported).
    pub runs: u32,
    /// Only these paths (empty: all).
    pub paths: Vec<String>,
    /// Eager restores write the memory from the set (`restore.adopt_memory = false`) instead
    /// of adopting it from the stopped process's keeper: a restore as on another host.
    pub fill: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            dir: std::env::temp_dir(),
            fixtures: PathBuf::from("fixtures"),
            mib: 1024,
            rate: 1000,
            runs: 3,
            paths: Vec::new(),
            fill: false,
        }
    }
}

/// The paths measured, in order.
pub const PATHS: [&str; 4] = ["full", "precopy-eager", "precopy-lazy", "checkpoint"];

/// One run of one path.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MigrateRun {
    /// The longest gap between two timestamps the workload printed (µs).
    pub pause_us: u64,
    /// The job's `dump` stage: pre-dumps excluded, from the final dump's start to its set
    /// committed (and for `checkpoint`, its pages written after the thaw).
    pub dump_us: u64,
    /// The restore's time to running (µs; 0 without a restore).
    pub restore_us: u64,
    /// Lazy: from running to every page resident (µs).
    pub all_resident_us: u64,
    /// Lazy: median fault service (µs).
    pub fault_p50_us: u64,
    /// The restore adopted the memory from the stopped process's keeper (the report's
    /// `memory_adopted`).
    pub memory_adopted: bool,
    /// What haul itself timed, phase by phase.
    pub timeline: Option<PauseReport>,
}

/// The runs of one path and their medians.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PathReport {
    pub path: String,
    pub runs: Vec<MigrateRun>,
    pub median_pause_us: u64,
    pub median_dump_us: u64,
    pub median_restore_us: u64,
    pub median_all_resident_us: u64,
    /// The run whose pause is the median.
    pub median_run: usize,
}

/// The figures of `haul bench migrate`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchReport {
    pub mib: u64,
    pub rate: u64,
    pub paths: Vec<PathReport>,
}

/// Runs the benchmark; see the module documentation.
pub fn run_bench(o: &BenchOptions) -> Result<BenchReport, super::BenchError> {
    super::in_work_dir(&o.dir, "migrate", |dir| run_inner(o, dir))
}

fn run_inner(o: &BenchOptions, dir: &Path) -> Result<BenchReport, BoxErr> {
    // Restored processes are re-parented: to us, so that we can reap them.
    crate::sys::host::set_child_subreaper()?;
    if let Some(p) = o.paths.iter().find(|p| !PATHS.contains(&p.as_str())) {
        return Err(format!("no path {p:?}: the paths are {}", PATHS.join(", ")).into());
    }
    let writer = build(&o.fixtures, "pausewriter", dir)?;
    let haul = std::env::current_exe()?;
    let mut rep = BenchReport {
        mib: o.mib,
        rate: o.rate,
        paths: Vec::new(),
    };
    for path in PATHS
        .iter()
        .filter(|p| o.paths.is_empty() || o.paths.iter().any(|x| x == *p))
    {
        let mut runs = Vec::new();
        for i in 0..o.runs {
            prewarm((2 * o.mib) << 20);
            let run_dir = dir.join(format!("{path}-{i}"));
            std::fs::create_dir_all(&run_dir)?;
            runs.push(one_run(o, &haul, &writer, path, &run_dir)?);
            // Each run's store goes: the next starts from an empty one, as the first did.
            std::fs::remove_dir_all(&run_dir)?;
        }
        rep.paths.push(summarize(path, runs));
    }
    Ok(rep)
}

fn summarize(path: &str, runs: Vec<MigrateRun>) -> PathReport {
    let pauses: Vec<u64> = runs.iter().map(|r| r.pause_us).collect();
    let median_pause_us = median(pauses.clone());
    let median_run = pauses
        .iter()
        .position(|&p| p == median_pause_us)
        .unwrap_or(0);
    PathReport {
        path: path.into(),
        median_pause_us,
        median_dump_us: median(runs.iter().map(|r| r.dump_us).collect()),
        median_restore_us: median(runs.iter().map(|r| r.restore_us).collect()),
        median_all_resident_us: median(runs.iter().map(|r| r.all_resident_us).collect()),
        median_run,
        runs,
    }
}

/// The job file of `path`.
fn job_text(o: &BenchOptions, writer: &Path, path: &str, run_dir: &Path) -> String {
    let predump = if path.starts_with("precopy") {
        // Exactly 3 pre-dumps: never converged, never diverging.
        "[predump]\ninterval = \"1s\"\nmax_iterations = 3\nstop_below = \"4KiB\"\n\
         stop_growth = 1000.0\n"
    } else {
        ""
    };
    let (leave, restore) = match path {
        "checkpoint" => ("true", String::new()),
        "precopy-lazy" => (
            "false",
            "[restore]\nmode = \"lazy\"\npid = \"same\"\n".to_string(),
        ),
        _ => (
            "false",
            format!(
                "[restore]\nmode = \"eager\"\npid = \"same\"\nadopt_memory = {}\n",
                !o.fill
            ),
        ),
    };
    // The restored process runs a while, so that it prints after its pause: the verify
    // command waits for the log to grow by 20 ticks (200 ms).
    let verify = if restore.is_empty() {
        String::new()
    } else {
        let log = run_dir.join("ticks.log");
        format!(
            "[verify]\ncommand = [\"sh\", \"-c\", \"n=$(wc -l < {log}); \
             while [ $(wc -l < {log}) -lt $((n + 20)) ]; do sleep 0.01; done\"]\n\
             timeout = \"30s\"\n",
            log = log.display()
        )
    };
    format!(
        "name = \"bench-{path}\"\n\
         [process]\ncommand = [\"{w}\", \"{mib}\", \"{rate}\"]\nstdout = \"{log}\"\n\
         ready = {{ stdout_line = \"ready\" }}\n\
         {predump}\
         [dump]\nleave_running = {leave}\n\
         {restore}\
         {verify}\
         [store]\npath = \"{store}\"\n\
         [report]\ndir = \"{reports}\"\n",
        w = writer.display(),
        mib = o.mib,
        rate = o.rate,
        log = run_dir.join("ticks.log").display(),
        store = run_dir.join("store").display(),
        reports = run_dir.join("reports").display(),
    )
}

fn one_run(
    o: &BenchOptions,
    haul: &Path,
    writer: &Path,
    path: &str,
    run_dir: &Path,
) -> Result<MigrateRun, BoxErr> {
    let job = run_dir.join("job.toml");
    std::fs::write(&job, job_text(o, writer, path, run_dir))?;
    let mut cmd = Command::new(haul);
    cmd.arg("run").arg(&job);
    crate::sys::spawn::close_inherited_fds(&mut cmd);
    let out = cmd.output()?;
    let report = find_report(&run_dir.join("reports"))?;
    // Whatever happened, the process (the original left running, or its restored copy) goes.
    for pid in report.restored_pid.into_iter().chain(report.pid) {
        end(pid);
    }
    if !out.status.success() {
        return Err(format!(
            "haul run {} ({path}) failed: {}{}",
            job.display(),
            report.errors.join("; "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let ticks = std::fs::read_to_string(run_dir.join("ticks.log"))?;
    let stage = |name: &str| {
        report
            .stages
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.duration_us)
    };
    let lazy = report.lazy.as_ref();
    Ok(MigrateRun {
        pause_us: longest_gap_us(&ticks)
            .ok_or_else(|| format!("{path}: the workload printed fewer than two ticks"))?,
        dump_us: stage("dump"),
        restore_us: report.time_to_running,
        all_resident_us: lazy.map_or(0, |l| l.time_to_all_resident),
        fault_p50_us: lazy.map_or(0, |l| l.fault_latency_p50),
        memory_adopted: report.memory_adopted,
        timeline: report.pause.clone(),
    })
}

/// The longest gap between two consecutive timestamps (ns, one per line) in µs.
pub fn longest_gap_us(ticks: &str) -> Option<u64> {
    let t: Vec<u64> = ticks
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    t.windows(2).map(|w| w[1].saturating_sub(w[0]) / 1000).max()
}

/// The run's JSON report (the only one in `dir`).
fn find_report(dir: &Path) -> Result<RunReport, BoxErr> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Some(r) = crate::report::load(&p)?.pop() {
                return Ok(r);
            }
        }
    }
    Err(format!("no report in {}", dir.display()).into())
}

/// SIGKILLs `pid` and waits (bounded) until it is gone and reaped.
fn end(pid: i32) {
    let _ = crate::sys::process::kill(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // Ours once `haul run` has exited (we are a subreaper); else someone else's to reap.
        let _ = crate::sys::host::reap_if_ended(pid);
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The text `haul bench migrate` prints.
pub fn report_text(r: &BenchReport) -> String {
    use crate::util::human_us;
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "migration pause: {} MiB, {} random pages written a second, pid = \"same\", medians \
         of {} runs",
        r.mib,
        r.rate,
        r.paths.first().map_or(0, |p| p.runs.len())
    );
    for p in &r.paths {
        let all: Vec<String> = p.runs.iter().map(|x| human_us(x.pause_us)).collect();
        let _ = writeln!(
            s,
            "\n{:<14} pause {:>9}  (runs: {})",
            p.path,
            human_us(p.median_pause_us),
            all.join(", ")
        );
        let _ = write!(s, "               dump {}", human_us(p.median_dump_us));
        if p.median_restore_us > 0 {
            let _ = write!(s, "  restore {}", human_us(p.median_restore_us));
            let adopted = p.runs.iter().filter(|x| x.memory_adopted).count();
            // (A lazy restore serves the memory from the set, adopting none.)
            let _ = match adopted {
                _ if p.path == "precopy-lazy" => Ok(()),
                0 => write!(s, " (memory written from the set)"),
                n if n == p.runs.len() => write!(s, " (memory adopted)"),
                n => write!(s, " (memory adopted in {n} of {} runs)", p.runs.len()),
            };
        }
        if p.median_all_resident_us > 0 {
            let _ = write!(
                s,
                "  every page resident after {}",
                human_us(p.median_all_resident_us)
            );
        }
        let _ = writeln!(s);
        if let Some(t) = p.runs.get(p.median_run).and_then(|x| x.timeline.as_ref()) {
            let _ = writeln!(
                s,
                "               timeline of the median run (haul's own: {}):",
                human_us(t.pause_us)
            );
            for ph in &t.phases {
                let _ = writeln!(
                    s,
                    "                 {:<9} {:>10}",
                    ph.name,
                    human_us(ph.duration_us)
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_is_between_consecutive_ticks_and_needs_two() {
        assert_eq!(
            longest_gap_us("ready\n1000000\n11000000\n61000000\n71000000\n"),
            Some(50_000)
        );
        assert_eq!(longest_gap_us("ready\n5\n"), None);
    }
}
