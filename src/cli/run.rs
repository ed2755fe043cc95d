//! `haul run --json`: one JSON line per job as it ends (docs/json.md, `haul/run/1`).

use haul::report::RunReport;
use haul::runner::{BatchResult, JobResult, JobStatus};
use serde::Serialize;
use std::path::PathBuf;

use super::print_doc_line;

/// One job of `haul run --json`.
#[derive(Debug, Serialize)]
pub struct RunJson {
    pub job: String,
    /// The job file.
    pub file: PathBuf,
    /// `ok`, `failed`, `interrupted` (as the run report's `outcome`), or `invalid` (the job
    /// file is not valid) and `locked` (another run of the job holds its lock): nothing ran.
    pub outcome: &'static str,
    /// The exit code `haul run` gives when this job is the only one: 0 ok, 1 failed, 2
    /// invalid, 3 locked, 130 interrupted.
    pub exit_code: u8,
    /// Why it did not end ok (null when it did).
    pub error: Option<String>,
    /// The run report written (null when none was: an invalid or locked job).
    pub report: Option<PathBuf>,
    /// The figures of that report; absent when there is none.
    #[serde(flatten)]
    pub figures: Option<Figures>,
}

/// The figures of a run report a script most wants, under the report's own names (which are
/// CRIU's where CRIU has one). Times in µs, sizes in bytes.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// The run id (`yyyymmddThhmmssZ-xxxx`).
    pub run: String,
    /// The final image set's id; null when no dump committed one.
    pub set: Option<String>,
    /// The store holding it.
    pub store: Option<String>,
    pub pid: Option<i32>,
    pub restored_pid: Option<i32>,
    pub processes: u64,
    pub duration_us: u64,
    pub freezing_time: u64,
    pub frozen_time: u64,
    pub frozen_commit_time: u64,
    pub memdump_time: u64,
    pub memwrite_time: u64,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
    pub restore_time: u64,
    pub pages_restored: u64,
    pub time_to_running: u64,
    /// From the freeze to running again (µs); null when the process did not run again.
    pub pause_us: Option<u64>,
    pub bytes_logical: Option<u64>,
    pub bytes_stored: Option<u64>,
    pub bytes_new: Option<u64>,
    pub compression_ratio: Option<f64>,
    pub dedup_ratio: Option<f64>,
    /// Pre-dump iterations (0 without pre-copy).
    pub predump_iterations: usize,
    /// Why pre-dumping stopped; null without pre-copy.
    pub predump_stop_reason: Option<String>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

impl Figures {
    fn of(r: &RunReport) -> Figures {
        let s = r.store.as_ref();
        Figures {
            run: r.run.clone(),
            set: s.map(|s| s.set.clone()).filter(|id| !id.is_empty()),
            store: s.map(|s| s.path.clone()).filter(|p| !p.is_empty()),
            pid: r.pid,
            restored_pid: r.restored_pid,
            processes: r.processes,
            duration_us: r.duration_us,
            freezing_time: r.freezing_time,
            frozen_time: r.frozen_time,
            frozen_commit_time: r.frozen_commit_time,
            memdump_time: r.memdump_time,
            memwrite_time: r.memwrite_time,
            pages_scanned: r.pages_scanned,
            pages_skipped_parent: r.pages_skipped_parent,
            pages_written: r.pages_written,
            pages_lazy: r.pages_lazy,
            restore_time: r.restore_time,
            pages_restored: r.pages_restored,
            time_to_running: r.time_to_running,
            pause_us: r.pause.as_ref().map(|p| p.pause_us),
            bytes_logical: s.map(|s| s.bytes_logical),
            bytes_stored: s.map(|s| s.bytes_stored),
            bytes_new: s.map(|s| s.bytes_new),
            compression_ratio: s.map(|s| s.compression_ratio),
            dedup_ratio: s.map(|s| s.dedup_ratio),
            predump_iterations: r.predump.as_ref().map_or(0, |p| p.iterations.len()),
            predump_stop_reason: r.predump.as_ref().map(|p| p.stop_reason.clone()),
            warnings: r.warnings.clone(),
            errors: r.errors.clone(),
        }
    }
}

/// The line of one job that has ended.
pub fn job_json(r: &JobResult) -> RunJson {
    let (outcome, error) = match &r.status {
        JobStatus::Ok => ("ok", None),
        JobStatus::Invalid(e) => ("invalid", Some(e.clone())),
        JobStatus::Locked(e) => ("locked", Some(e.clone())),
        JobStatus::Failed(e) => ("failed", Some(e.clone())),
        JobStatus::Interrupted => ("interrupted", Some("interrupted".to_string())),
    };
    let exit_code = BatchResult {
        results: vec![r.clone()],
    }
    .exit_code();
    // The report was written just now; one that cannot be read back leaves the figures out
    // (the line still says how the job ended).
    let figures = r
        .report
        .as_deref()
        .and_then(|p| haul::report::load(p).ok())
        .and_then(|mut v| v.pop())
        .map(|rep| Figures::of(&rep));
    RunJson {
        job: r.job.clone(),
        file: r.file.clone(),
        outcome,
        exit_code,
        error,
        report: r.report.clone(),
        figures,
    }
}

/// Prints the line of a job that has ended (a closed stdout is not an error worth more).
pub fn print_job(r: &JobResult) {
    if let Err(e) = print_doc_line("run", &job_json(r)) {
        eprintln!("haul: job {}: {e}", r.job);
    }
}
