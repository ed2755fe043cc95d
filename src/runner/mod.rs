//! `haul run`: runs a batch of jobs with bounded parallelism. Each job gets a run directory, a
//! per-job lock (two overlapping cron runs never run the same job twice), its lifecycle of stages
//! (launch or attach, ready, pre-dumps, dump, restore, verify, stop), and a report that is written
//! whatever happens, including SIGINT/SIGTERM to the runner.

pub mod command;
pub mod lifecycle;
pub mod process;
pub mod progress;
pub mod release;
pub mod stages;
pub mod verify;
pub mod worker;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use command::CommandError;
pub use progress::ProgressMode;

/// Errors of the `runner` module: what made one job fail.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    /// A job string's placeholders could not be expanded.
    #[error("{0}")]
    Placeholder(#[from] crate::job::PlaceholderError),
    #[error("cannot launch {command}: {source}")]
    Launch {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot launch {command}: its working directory {} (process.cwd) {}",
        cwd.display(),
        cwd_problem(source)
    )]
    Cwd {
        command: String,
        cwd: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach: {0}")]
    Attach(String),
    #[error("process {pid} {how} before the job was done")]
    Exited { pid: i32, how: String },
    #[error("process not ready: {0}")]
    NotReady(String),
    #[error("job {job} is already running (lock {lock} is held by another haul run)")]
    Locked { job: String, lock: PathBuf },
    #[error("interrupted by a signal to haul")]
    Interrupted,
    #[error("verify failed: {0}")]
    Verify(String),
    /// The pids of a tree a dump killed are still taken, and a restore with `pid = "same"`
    /// follows: each named with the parent that holds it.
    #[error("the restore needs the pids of the dumped tree, but {}", list_taken(.0))]
    PidsTaken(Vec<release::Taken>),
    #[error("{stage}: {source}")]
    Stage {
        stage: &'static str,
        #[source]
        source: Box<StageError>,
    },
}

/// What failed inside a stage of a job: the error of the module the stage called.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
    #[error(transparent)]
    Lazy(#[from] crate::lazy::LazyError),
    #[error(transparent)]
    Xfer(#[from] crate::xfer::XferError),
    #[error(transparent)]
    Tty(#[from] command::TtyError),
}

/// The pids still taken, "; "-separated.
fn list_taken(t: &[release::Taken]) -> String {
    t.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What is wrong with a working directory, in words.
fn cwd_problem(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        std::io::ErrorKind::NotADirectory => "is not a directory".into(),
        _ => format!("cannot be used: {e}"),
    }
}

impl RunError {
    /// `source` as the error of stage `stage`.
    pub fn stage(stage: &'static str, source: impl Into<StageError>) -> RunError {
        RunError::Stage {
            stage,
            source: Box::new(source.into()),
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
        let context = context.into();
        move |source| RunError::Io { context, source }
    }
}

/// Options of one `haul run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Jobs run at the same time.
    pub jobs: usize,
    pub progress: ProgressMode,
}

/// How one job of a batch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Ok,
    /// The job file is invalid; nothing ran.
    Invalid(String),
    /// Another run holds the job's lock; nothing ran.
    Locked(String),
    Failed(String),
    Interrupted,
}

/// One job's result.
#[derive(Clone, Debug)]
pub struct JobResult {
    pub job: String,
    pub file: PathBuf,
    pub status: JobStatus,
    /// The report written for the run, if one was.
    pub report: Option<PathBuf>,
}

/// Exit codes of `haul run` (and of `haul check` for 0/2), documented in `--help` and README.
pub mod exit {
    /// Every job succeeded.
    pub const OK: u8 = 0;
    /// At least one job failed (its report says why).
    pub const FAILED: u8 = 1;
    /// Bad input: a job file is invalid, or bad arguments.
    pub const BAD_INPUT: u8 = 2;
    /// A job was skipped because another run of it holds its lock (and nothing failed).
    pub const LOCKED: u8 = 3;
    /// haul was interrupted by SIGINT/SIGTERM.
    pub const INTERRUPTED: u8 = 130;
}

/// The results of a batch, in the order of the job files given.
#[derive(Clone, Debug, Default)]
pub struct BatchResult {
    pub results: Vec<JobResult>,
}

impl BatchResult {
    /// The most severe outcome decides: interrupted, bad input, failed, locked, ok.
    pub fn exit_code(&self) -> u8 {
        let has = |f: fn(&JobStatus) -> bool| self.results.iter().any(|r| f(&r.status));
        if has(|s| matches!(s, JobStatus::Interrupted)) {
            exit::INTERRUPTED
        } else if has(|s| matches!(s, JobStatus::Invalid(_))) {
            exit::BAD_INPUT
        } else if has(|s| matches!(s, JobStatus::Failed(_))) {
            exit::FAILED
        } else if has(|s| matches!(s, JobStatus::Locked(_))) {
            exit::LOCKED
        } else {
            exit::OK
        }
    }
}

/// Runs the jobs of `paths`: invalid files are reported and skipped, the others run, at most
/// `opts.jobs` at a time. SIGINT/SIGTERM stop every launched process and still write reports.
pub fn run_batch(paths: &[PathBuf], opts: &RunOptions) -> BatchResult {
    run_batch_with(paths, opts, &|_| {})
}

/// [`run_batch`], calling `done` with each job's result as soon as the job ends (from the
/// thread that ran it; an invalid file ends before any job runs): `haul run --json` prints
/// each job's line then.
pub fn run_batch_with(
    paths: &[PathBuf],
    opts: &RunOptions,
    done: &(dyn Fn(&JobResult) + Sync),
) -> BatchResult {
    // The descendants of a launched process that a dump kills come to haul, which reaps them,
    // so that their pids are free for a restore (see `release`).
    release::become_subreaper();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            tracing::warn!("cannot handle signal {sig}: {e}");
        }
    }
    let progress = progress::Progress::new(opts.progress);
    let (jobs, bad) = crate::job::load_all(paths);

    let mut results: Vec<Option<JobResult>> = vec![None; paths.len()];
    let index_of = |file: &PathBuf| paths.iter().position(|p| p == file);
    for (file, err) in bad {
        let job = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let msg = err.to_string();
        progress
            .job(&job)
            .finish(&format!("invalid job file:\n{msg}"), true);
        let r = JobResult {
            job,
            file: file.clone(),
            status: JobStatus::Invalid(msg),
            report: None,
        };
        done(&r);
        match index_of(&file) {
            Some(i) if results[i].is_none() => results[i] = Some(r),
            _ => results.push(Some(r)),
        }
    }

    let queue: Mutex<VecDeque<crate::job::Job>> = Mutex::new(jobs.into_iter().collect());
    let finished: Mutex<Vec<JobResult>> = Mutex::new(Vec::new());
    let workers = opts.jobs.max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some(job) = next else { break };
                let r = if stop.load(Ordering::Relaxed) {
                    JobResult {
                        job: job.name.clone(),
                        file: job.file.clone(),
                        status: JobStatus::Interrupted,
                        report: None,
                    }
                } else {
                    lifecycle::run_job(&job, &progress, &stop)
                };
                done(&r);
                finished.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    for r in finished.into_inner().unwrap_or_else(|e| e.into_inner()) {
        match index_of(&r.file) {
            Some(i) if results[i].is_none() => results[i] = Some(r),
            _ => results.push(Some(r)),
        }
    }
    BatchResult {
        results: results.into_iter().flatten().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(statuses: &[JobStatus]) -> BatchResult {
        BatchResult {
            results: statuses
                .iter()
                .enumerate()
                .map(|(i, s)| JobResult {
                    job: format!("j{i}"),
                    file: format!("j{i}.toml").into(),
                    status: s.clone(),
                    report: None,
                })
                .collect(),
        }
    }

    #[test]
    fn the_most_severe_job_decides_the_exit_code() {
        let failed = JobStatus::Failed("x".into());
        let invalid = JobStatus::Invalid("x".into());
        let locked = JobStatus::Locked("x".into());
        assert_eq!(batch(&[]).exit_code(), exit::OK);
        assert_eq!(batch(&[JobStatus::Ok]).exit_code(), exit::OK);
        assert_eq!(
            batch(&[JobStatus::Ok, locked.clone()]).exit_code(),
            exit::LOCKED
        );
        assert_eq!(
            batch(&[locked.clone(), failed.clone()]).exit_code(),
            exit::FAILED
        );
        assert_eq!(
            batch(&[failed.clone(), invalid.clone()]).exit_code(),
            exit::BAD_INPUT
        );
        assert_eq!(
            batch(&[invalid, JobStatus::Interrupted, failed, locked]).exit_code(),
            exit::INTERRUPTED
        );
    }

    #[test]
    fn a_stage_error_names_the_stage_and_keeps_the_modules_error() {
        let e = RunError::stage(
            "dump",
            worker::WorkerError::Failed("pid 7 went away".into()),
        );
        assert_eq!(e.to_string(), "dump: pid 7 went away");
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "pid 7 went away");
        // Told once, whole: the chain does not repeat the stage's own message.
        assert_eq!(crate::util::error_chain(&e), "dump: pid 7 went away");
    }
}
