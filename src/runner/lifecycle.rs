//! One job's lifecycle: lock, run directory, stages in order, report. Each stage records its
//! duration and outcome in the report; whatever happens, the report is written and a process
//! haul launched is not left behind unless the job says to leave it running.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};

use super::process::{self, Target};
use super::progress::JobProgress;
use super::{JobResult, JobStatus, RunError};
use crate::job::{Job, Placeholders};
use crate::report::{Outcome, RunReport, StageReport};

/// A run id: UTC time to the second plus 4 hex digits, e.g. `20261129T153000Z-1a2b`; sortable,
/// and unique among runs started in the same second.
pub fn new_run_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now();
    let ts: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let seed = format!(
        "{:?}{}{}",
        now,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let h = blake3::hash(seed.as_bytes());
    format!("{ts}-{}", crate::util::hex(&h.as_bytes()[..2]))
}

/// The store a job writes to: `store.path` (already resolved by the job loader), else
/// `$HAUL_STORE`, else `haul-store` beside the job file.
pub fn store_path(job: &Job) -> PathBuf {
    if let Some(p) = &job.spec.store.path {
        return p.clone();
    }
    match std::env::var_os("HAUL_STORE") {
        Some(s) if !s.is_empty() => PathBuf::from(s),
        _ => job.dir.join("haul-store"),
    }
}

/// Takes the job's lock (`<report.dir>/.locks/<job>.lock`) without waiting.
fn lock_job(job: &Job) -> Result<Flock<fs::File>, RunError> {
    let dir = job.spec.report.dir.join(".locks");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(RunError::io(format!("create {}", dir.display())))?;
    let path = dir.join(format!("{}.lock", job.name));
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(RunError::io(format!("open {}", path.display())))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(RunError::Locked {
            job: job.name.clone(),
            lock: path,
        }),
        Err((_, e)) => Err(RunError::Io {
            context: format!("lock {}", path.display()),
            source: e.into(),
        }),
    }
}

/// Runs one job to the end and writes its report.
pub fn run_job(job: &Job, progress: &super::progress::Progress, stop: &AtomicBool) -> JobResult {
    let p = progress.job(&job.name);
    let result = |status, report| JobResult {
        job: job.name.clone(),
        file: job.file.clone(),
        status,
        report,
    };
    let _lock = match lock_job(job) {
        Ok(l) => l,
        Err(e @ RunError::Locked { .. }) => {
            p.finish(&format!("skipped: {e}"), true);
            return result(JobStatus::Locked(e.to_string()), None);
        }
        Err(e) => {
            p.finish(&format!("failed: {e}"), true);
            return result(JobStatus::Failed(e.to_string()), None);
        }
    };

    let run = new_run_id();
    let run_dir = job.spec.report.dir.join(format!("{}-{}", job.name, run));
    let mut report = RunReport::new(&job.name, &run, &job.file, &run_dir);
    let start = Instant::now();
    let outcome = match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run_dir)
    {
        Ok(()) => run_stages(job, &run, &run_dir, &mut report, &p, stop),
        Err(e) => Err(RunError::Io {
            context: format!("create run dir {}", run_dir.display()),
            source: e,
        }),
    };
    let status = match outcome {
        Ok(()) => JobStatus::Ok,
        Err(RunError::Interrupted) => {
            report.outcome = Outcome::Interrupted;
            report.errors.push(RunError::Interrupted.to_string());
            JobStatus::Interrupted
        }
        Err(e) => {
            report.fail(e.to_string());
            JobStatus::Failed(e.to_string())
        }
    };
    report.duration_us = crate::util::us(start.elapsed());
    let written = match report.write(&job.spec.report.dir, &job.spec.report.history) {
        Ok(path) => Some(path),
        Err(e) => {
            p.finish(&format!("cannot write report: {e}"), true);
            return result(
                JobStatus::Failed(format!("{status:?}; and cannot write report: {e}")),
                None,
            );
        }
    };
    let shown = written.as_deref().map(Path::display);
    match &status {
        JobStatus::Ok => p.finish(
            &format!("ok ({})", shown.map(|d| d.to_string()).unwrap_or_default()),
            false,
        ),
        JobStatus::Failed(e) => p.finish(&format!("FAILED: {e}"), true),
        JobStatus::Interrupted => p.finish("interrupted", true),
        _ => {}
    }
    result(status, written)
}

/// Runs `f` as the stage `name`, recording its duration and outcome in the report.
fn stage<T>(
    report: &mut RunReport,
    name: &'static str,
    f: impl FnOnce(&mut RunReport) -> Result<(T, String), RunError>,
) -> Result<T, RunError> {
    let t = Instant::now();
    let r = f(report);
    let (ok, detail) = match &r {
        Ok((_, d)) => (true, d.clone()),
        Err(e) => (false, e.to_string()),
    };
    report.stages.push(StageReport {
        name: name.into(),
        duration_us: crate::util::us(t.elapsed()),
        ok,
        detail,
    });
    r.map(|(v, _)| v)
}

/// Refuses, before anything starts, a job that asks for a stage this build cannot run.
fn check_supported(job: &Job) -> Result<(), RunError> {
    if job.spec.predump.is_some() {
        return Err(RunError::Unsupported("[predump] (pre-copy)".into()));
    }
    if job.spec.restore.is_some() {
        return Err(RunError::Unsupported("[restore]".into()));
    }
    if job.spec.verify.is_some() {
        return Err(RunError::Unsupported("[verify]".into()));
    }
    Ok(())
}

fn run_stages(
    job: &Job,
    run: &str,
    run_dir: &Path,
    report: &mut RunReport,
    p: &JobProgress<'_>,
    stop: &AtomicBool,
) -> Result<(), RunError> {
    check_supported(job)?;
    let store = store_path(job);
    let mut ph = Placeholders {
        job: job.name.clone(),
        run: run.into(),
        run_dir: run_dir.display().to_string(),
        store: store.display().to_string(),
        pid: None,
    };
    let spec = &job.spec.process;
    let attached = spec.command.is_none();
    report.attached = attached;
    p.step(if attached { "attaching" } else { "launching" });
    let mut target = stage(report, if attached { "attach" } else { "launch" }, |_| {
        let t = if attached {
            process::attach(spec, &ph)?
        } else {
            process::launch(spec, run_dir, &ph)?
        };
        let d = format!("pid {}", t.pid);
        Ok((t, d))
    })?;
    report.pid = Some(target.pid);
    ph.pid = Some(target.pid);

    let r = after_launch(job, &mut target, &ph, report, p, stop);
    // A launched process is stopped on failure, and on success unless the job leaves it running.
    if target.launched() && (r.is_err() || !job.spec.dump.leave_running) {
        let t = Instant::now();
        if let Some(how) = process::stop(&mut target) {
            p.step(&format!("process {how}"));
            let duration_us = crate::util::us(t.elapsed());
            report.stages.push(StageReport {
                name: "stop".into(),
                duration_us,
                ok: true,
                detail: how,
            });
        }
    }
    r
}

fn after_launch(
    job: &Job,
    target: &mut Target,
    ph: &Placeholders,
    report: &mut RunReport,
    p: &JobProgress<'_>,
    stop: &AtomicBool,
) -> Result<(), RunError> {
    p.step("waiting until ready");
    stage(report, "ready", |_| {
        process::wait_ready(target, job.spec.process.ready.as_ref(), ph, stop)?;
        Ok(((), "ready".into()))
    })?;
    if stop.load(Ordering::Relaxed) {
        return Err(RunError::Interrupted);
    }
    Ok(())
}
