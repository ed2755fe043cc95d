//! One job's lifecycle: lock, run directory, stages in order, report. Each stage records its
//! duration and outcome in the report; whatever happens, the report is written and a process
//! haul launched is not left behind unless the job says to leave it running.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::sys::file::{FileLock, LockError, LockMode};

use super::process::{self, Target};
use super::progress::JobProgress;
use super::{stages, JobResult, JobStatus, RunError};
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

/// Where one run of a job keeps things: every path template of the job expanded and absolute.
#[derive(Clone, Debug)]
pub struct RunPaths {
    pub store: PathBuf,
    pub report_dir: PathBuf,
    pub history: PathBuf,
    pub run_dir: PathBuf,
}

/// Expands the job's store and report paths for run `run` (the store first: the others may
/// name it), making them absolute, as `{store}` and `{run_dir}` must be.
pub fn run_paths(job: &Job, run: &str) -> Result<RunPaths, RunError> {
    let mut ph = Placeholders {
        job: job.name.clone(),
        run: run.into(),
        ..Default::default()
    };
    let abs = |p: PathBuf| {
        crate::util::clean_path(&p).map_err(RunError::io(format!("resolve {}", p.display())))
    };
    let exp = |p: &Path, ph: &Placeholders| {
        crate::job::expand_path(p, ph).map_err(|e| RunError::Setup(format!("{}: {e}", p.display())))
    };
    let store = exp(job.store_path(), &ph)?;
    // A bucket's location is a URL, not a path to resolve.
    let store = match crate::store::bucket::is_bucket(&store) {
        true => store,
        false => abs(store)?,
    };
    ph.store = store.clone();
    let report_dir = abs(exp(&job.spec.report.dir, &ph)?)?;
    let history = abs(exp(&job.history_path(), &ph)?)?;
    let run_dir = report_dir.join(format!("{}-{}", job.name, run));
    Ok(RunPaths {
        store,
        report_dir,
        history,
        run_dir,
    })
}

/// Takes the job's lock (`<report.dir>/.locks/<job>.lock`) without waiting.
fn lock_job(job: &Job, report_dir: &Path) -> Result<FileLock, RunError> {
    let dir = report_dir.join(".locks");
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
    match crate::sys::file::lock(f, LockMode::Exclusive, true) {
        Ok(l) => Ok(l),
        Err(LockError::Held(_)) => Err(RunError::Locked {
            job: job.name.clone(),
            lock: path,
        }),
        Err(LockError::Interrupted(_)) => Err(RunError::Io {
            context: format!("lock {}", path.display()),
            source: std::io::Error::from_raw_os_error(libc::EINTR),
        }),
        Err(LockError::Failed { source, .. }) => Err(RunError::Io {
            context: format!("lock {}", path.display()),
            source,
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
    // Before the lock is held there is no report to write: say so.
    let no_report = |e: RunError| {
        let msg = format!("{e}; no report was written");
        p.finish(&format!("failed: {msg}"), true);
        result(JobStatus::Failed(msg), None)
    };
    let run = new_run_id();
    let paths = match run_paths(job, &run) {
        Ok(p) => p,
        Err(e) => return no_report(e),
    };
    let _lock = match lock_job(job, &paths.report_dir) {
        Ok(l) => l,
        Err(e @ RunError::Locked { .. }) => {
            p.finish(&format!("skipped: {e}"), true);
            return result(JobStatus::Locked(e.to_string()), None);
        }
        Err(e) => return no_report(e),
    };

    let mut report = RunReport::new(&job.name, &run, &job.file, &paths.run_dir);
    let start = Instant::now();
    let outcome = match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.run_dir)
    {
        Ok(()) => run_stages(job, &run, &paths, &mut report, &p, stop),
        Err(e) => Err(RunError::Io {
            context: format!("create run dir {}", paths.run_dir.display()),
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
    // The report and the history line are written independently: one failing does not cost
    // the other.
    let json = report.write_json(&paths.report_dir);
    let history = report.append_history(&paths.history);
    let metrics = write_metrics(job, &run, &paths, &report);
    // `[report] html`: the page is a view of the JSON, not the record: one that cannot be
    // written is a warning, and the run keeps its outcome.
    if job.spec.report.html {
        if let Err(e) = report.write_html(&paths.report_dir) {
            p.finish(
                &format!("warning: its HTML report could not be written: {e}"),
                true,
            );
        }
    }
    let written = json.as_ref().ok().cloned();
    let problem = match (&json, &history) {
        (Ok(_), Ok(())) => None,
        (Err(e), Ok(())) => Some(format!("its report could not be written: {e}")),
        (Ok(path), Err(h)) => Some(format!(
            "its report {} was written but not added to the history: {h}",
            path.display()
        )),
        (Err(e), Err(h)) => Some(format!(
            "its report could not be written ({e}), nor added to the history ({h})"
        )),
    };
    // `[report] metrics`: a failed write is a problem like a failed report.
    let problem = match (problem, metrics) {
        (p, Ok(())) => p,
        (None, Err(m)) => Some(format!("its metrics could not be written: {m}")),
        (Some(p), Err(m)) => Some(format!("{p}; and its metrics could not be written: {m}")),
    };
    let status = match (status, problem) {
        (status, None) => status,
        (JobStatus::Ok, Some(pr)) => JobStatus::Failed(format!("the job ran, but {pr}")),
        (JobStatus::Failed(e), Some(pr)) => JobStatus::Failed(format!("{e}; and {pr}")),
        (status, Some(pr)) => {
            p.finish(&pr, true);
            status
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

/// Writes the run's figures to the job's `[report] metrics` file, if it has one (its
/// placeholders expanded like the history's).
fn write_metrics(
    job: &Job,
    run: &str,
    paths: &RunPaths,
    report: &crate::report::RunReport,
) -> Result<(), MetricsError> {
    let Some(m) = &job.spec.report.metrics else {
        return Ok(());
    };
    let ph = Placeholders {
        job: job.name.clone(),
        run: run.into(),
        store: paths.store.clone(),
        run_dir: paths.run_dir.clone(),
        pid: None,
    };
    let path = crate::job::expand_path(m, &ph).map_err(|source| MetricsError::Path {
        path: m.clone(),
        source,
    })?;
    Ok(crate::report::metrics::write(report, &path)?)
}

/// Why `[report] metrics` could not be written.
#[derive(Debug, thiserror::Error)]
enum MetricsError {
    #[error("{}: {source}", path.display())]
    Path {
        path: std::path::PathBuf,
        #[source]
        source: crate::job::PlaceholderError,
    },
    #[error(transparent)]
    Write(#[from] crate::report::ReportError),
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

fn run_stages(
    job: &Job,
    run: &str,
    paths: &RunPaths,
    report: &mut RunReport,
    p: &JobProgress<'_>,
    stop: &AtomicBool,
) -> Result<(), RunError> {
    let run_dir = paths.run_dir.as_path();
    let mut ph = Placeholders {
        job: job.name.clone(),
        run: run.into(),
        run_dir: paths.run_dir.clone(),
        store: paths.store.clone(),
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
    if target.launched() && !target.gone && (r.is_err() || !job.spec.dump.leave_running) {
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

    let store =
        crate::store::Store::open_or_create(&ph.store).map_err(|e| RunError::stage("dump", e))?;
    p.step(if job.spec.predump.is_some() {
        "pre-dumping"
    } else {
        "dumping"
    });
    let t = Instant::now();
    let (set, source, marks, keepers, handover) =
        match stages::checkpoint(job, &store, target, report, stop, &|s| p.step(s)) {
            Ok(stages::Checkpointed {
                set,
                predump_us,
                dump_us,
                source,
                marks,
                keepers,
                handover,
            }) => {
                if let Some(x) = &report.predump {
                    let detail = format!(
                        "{} pre-dumps with {}, {}",
                        x.iterations.len(),
                        x.tracker,
                        x.stop_reason
                    );
                    report.stages.push(StageReport {
                        name: "predump".into(),
                        duration_us: predump_us,
                        ok: true,
                        detail,
                    });
                }
                let detail = match &source {
                    Some((_, addr)) => format!(
                        "set {} ({} pages lazy, frozen source served on {addr})",
                        set.id, report.pages_lazy
                    ),
                    None => format!(
                        "set {} (frozen {})",
                        set.id,
                        crate::util::human_us(report.frozen_time)
                    ),
                };
                report.stages.push(StageReport {
                    name: "dump".into(),
                    duration_us: dump_us,
                    ok: true,
                    detail,
                });
                (set, source, marks, keepers, handover)
            }
            Err(e) => {
                let duration_us = crate::util::us(t.elapsed());
                report.stages.push(StageReport {
                    name: "dump".into(),
                    duration_us,
                    ok: false,
                    detail: e.to_string(),
                });
                return Err(e);
            }
        };
    // A checkpoint that left the process running made no memory keeper, only perhaps a fork
    // snapshot, dead already: it is reaped now, not after the restore and the verify command.
    let leave_running = job.spec.dump.leave_running;
    if leave_running {
        super::release::reap_keepers(&keepers);
    }
    let r = restore_after_dump(
        job,
        &store,
        &set,
        source,
        handover.as_ref(),
        marks,
        target,
        ph,
        report,
        p,
        stop,
    );
    if !leave_running {
        super::release::reap_keepers(&keepers);
    }
    let kept = stages::retain_and_measure(job, &store, &set, report);
    r.and(kept)
}

/// What follows a checkpoint: the restore of its set (eager, lazy, or from the frozen source of
/// a lazy dump), the verify command, a restored job's terminal.
#[allow(clippy::too_many_arguments)]
fn restore_after_dump(
    job: &Job,
    store: &crate::store::Store,
    set: &std::sync::Arc<crate::image::ImageSet>,
    source: Option<(super::worker::SourceWorker, String)>,
    handover: Option<&super::worker::Handover>,
    mut marks: Vec<crate::report::Mark>,
    target: &mut Target,
    ph: &Placeholders,
    report: &mut RunReport,
    p: &JobProgress<'_>,
    stop: &AtomicBool,
) -> Result<(), RunError> {
    if let Some((worker, addr)) = source {
        return migrate_from_frozen_source(
            job, store, set, worker, &addr, target, ph, report, p, stop,
        );
    }
    if job.spec.restore.is_none() {
        report.pause = crate::report::PauseReport::from_marks(&marks);
        return Ok(());
    }
    if stop.load(Ordering::Relaxed) {
        return Err(RunError::Interrupted);
    }
    if job.spec.restore.as_ref().map(|r| r.mode) == Some(crate::job::RestoreMode::Lazy) {
        return lazy_restore_and_verify(job, store, set, ph, report, p, marks);
    }
    p.step("restoring");
    marks.push(crate::dump::mark("restore"));
    let (pid, terminal) = stage(report, "restore", |r| {
        let (pid, terminal) = stages::restore(job, store, set, r, handover)?;
        let how = if r.memory_adopted {
            " (memory adopted from its keeper)"
        } else {
            ""
        };
        Ok(((pid, terminal), format!("pid {pid}{how}")))
    })?;
    marks.push(crate::dump::mark("running"));
    report.pause = crate::report::PauseReport::from_marks(&marks);
    if job.spec.verify.is_some() {
        p.step("verifying");
        let mut ph = ph.clone();
        ph.pid = Some(pid);
        stage(report, "verify", |r| {
            stages::verify(job, &ph, r)?;
            Ok(((), "passed".into()))
        })?;
    }
    // restore.tty: the job runs on its terminal until it exits.
    if let Some(t) = terminal {
        p.step("serving the restored job's terminal");
        t.serve(pid).map_err(|e| RunError::stage("restore", e))?;
    }
    Ok(())
}

/// The lazy `[restore]` (issue #7): restore, verify while the daemon serves, then wait until
/// every page is resident (the `lazy` stage).
fn lazy_restore_and_verify(
    job: &Job,
    store: &crate::store::Store,
    set: &std::sync::Arc<crate::image::ImageSet>,
    ph: &Placeholders,
    report: &mut RunReport,
    p: &JobProgress<'_>,
    mut marks: Vec<crate::report::Mark>,
) -> Result<(), RunError> {
    p.step("restoring (lazy)");
    marks.push(crate::dump::mark("restore"));
    let lr = stage(report, "restore", |r| {
        let (lr, _) = stages::restore_lazy(job, store, set, r, None)?;
        let d = format!(
            "pid {} (lazy, {} pages left to the daemon)",
            lr.pid(),
            lr.pages_lazy
        );
        Ok((lr, d))
    })?;
    marks.push(crate::dump::mark("running"));
    report.pause = crate::report::PauseReport::from_marks(&marks);
    verify_while_serving(job, lr, ph, report, p)?
}

/// Runs `[verify]` (if any) against a lazily restored process while its daemon still serves
/// it, then waits until every page is resident (the `lazy` stage). The outer error is the
/// wait's (the process was killed); the inner result is the verification's.
fn verify_while_serving(
    job: &Job,
    lr: crate::lazy::LazyRestore,
    ph: &Placeholders,
    report: &mut RunReport,
    p: &JobProgress<'_>,
) -> Result<Result<(), RunError>, RunError> {
    let verified = if job.spec.verify.is_some() {
        p.step("verifying");
        let mut ph = ph.clone();
        ph.pid = Some(lr.pid());
        stage(report, "verify", |r| {
            stages::verify(job, &ph, r)?;
            Ok(((), "passed".into()))
        })
    } else {
        Ok(())
    };
    p.step("serving pages");
    stage(report, "lazy", |r| {
        stages::lazy_wait(lr, r)?;
        Ok(((), "every page resident".into()))
    })?;
    Ok(verified)
}

/// `dump.lazy` (issue #7): the checkpoint worker holds the source frozen and serves its lazy
/// pages on `addr`. Restore lazily from there, verify, wait until every page is resident,
/// then say `Done` (the worker kills the source: the `source` stage). Any failure before
/// `Done` rolls back: a restored copy still running is killed and the worker thaws the source,
/// so there are never two copies, nor none. The report says how the source ended.
#[allow(clippy::too_many_arguments)]
fn migrate_from_frozen_source(
    job: &Job,
    store: &crate::store::Store,
    set: &std::sync::Arc<crate::image::ImageSet>,
    mut worker: super::worker::SourceWorker,
    addr: &str,
    target: &mut Target,
    ph: &Placeholders,
    report: &mut RunReport,
    p: &JobProgress<'_>,
    stop: &AtomicBool,
) -> Result<(), RunError> {
    let mut restored = None;
    // Set once every page is resident and verified: from then on only `Done` is missing.
    let mut resident = false;
    let migrated = (|| -> Result<String, RunError> {
        if stop.load(Ordering::Relaxed) {
            return Err(RunError::Interrupted);
        }
        p.step("restoring (lazy, from the frozen source)");
        let (lr, src) = stage(report, "restore", |r| {
            let (lr, src) = stages::restore_lazy(job, store, set, r, Some(addr))?;
            let d = format!(
                "pid {} (lazy, {} pages left to the daemon, served from {addr})",
                lr.pid(),
                lr.pages_lazy
            );
            Ok(((lr, src), d))
        })?;
        restored = Some(lr.pid());
        verify_while_serving(job, lr, ph, report, p)??;
        if stop.load(Ordering::Relaxed) {
            return Err(RunError::Interrupted);
        }
        resident = true;
        let src = src.ok_or_else(|| RunError::Setup("no page source to release".into()))?;
        src.done(&set.id).map_err(|e| RunError::stage("source", e))
    })();
    let kill_restored = |restored: Option<i32>| {
        if let Some(pid) = restored {
            let _ = crate::sys::process::kill(pid, libc::SIGKILL);
        }
    };
    if migrated.is_err() {
        if !resident {
            // Two copies must never run on: end the restored one before the source resumes.
            kill_restored(restored);
        }
        worker.rollback();
    }
    p.step("waiting for the source");
    let t = Instant::now();
    let end = worker.wait(stop);
    let duration_us = crate::util::us(t.elapsed());
    let (ok, detail) = match &end {
        Ok(e) => {
            if let Some(s) = report.source.as_mut() {
                s.ended = match e.kind {
                    super::worker::SourceEndKind::Killed => "killed",
                    super::worker::SourceEndKind::Thawed => "thawed",
                    super::worker::SourceEndKind::Gone => "gone",
                }
                .into();
                s.detail = e.detail.clone();
                s.served_us = e.served_us;
            }
            (
                e.kind == super::worker::SourceEndKind::Killed,
                e.detail.clone(),
            )
        }
        Err(e) => (false, e.to_string()),
    };
    report.stages.push(StageReport {
        name: "source".into(),
        duration_us,
        ok,
        detail: detail.clone(),
    });
    let source_dead = matches!(&end, Ok(e) if e.kind != super::worker::SourceEndKind::Thawed);
    if source_dead {
        // Killed (or gone): a launched source is our child; reap it.
        if let Some(child) = target.child.as_mut() {
            let _ = child.wait();
        }
        target.child = None;
        target.gone = true;
    } else if resident {
        // `Done` was not heard (or its answer was lost) and the source runs again: the
        // restored copy must go.
        kill_restored(restored);
    }
    match migrated {
        // The answer to `Done` was lost but the source did end: the migration happened.
        Err(_) if resident && ok => Ok(()),
        Err(e) => Err(e),
        Ok(_) if !ok => Err(RunError::stage(
            "source",
            super::worker::WorkerError::SourceNotKilled(detail),
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_differ_within_a_second() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let (ts, tail) = id.split_once('-').expect("time-hex");
            assert_eq!(ts.len(), 16, "{id}");
            assert!(ts.ends_with('Z') && ts.as_bytes()[8] == b'T', "{id}");
            assert!(ts[..8].chars().all(|c| c.is_ascii_digit()), "{id}");
            assert_eq!(tail.len(), 4, "{id}");
            assert!(tail.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
    }
}
