//! The ptrace session of a checkpoint runs in a worker process of its own.
//!
//! While haul holds a target stopped it changes things in it (registers for an injected
//! syscall, a scratch page): if the process holding the session died at that moment, the target
//! would run on with them. So `haul run` and `haul dump` hand the whole checkpoint (pre-dumps
//! and final dump) to `haul __checkpoint-worker`: it reads a [`CheckpointRequest`] as JSON on
//! stdin and answers one JSON line on stdout. It treats SIGINT, SIGTERM, SIGHUP and SIGUSR1 as
//! "stop pre-dumping" and always finishes or rolls back the step it is in, so a SIGKILL of the
//! haul that started it (a cron timeout, a kill -9) never leaves the target harmed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{dump_to_store, DumpError, DumpOptions, DumpStats, Precopy, PrecopyOptions, Step};
use super::{StopReason, TrackerChoice};
use crate::report::PredumpReport;
use crate::store::Store;
use crate::track::TrackerKind;

/// The hidden subcommand that runs a worker.
pub const WORKER_COMMAND: &str = "__checkpoint-worker";

/// What to checkpoint, and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointRequest {
    pub pid: i32,
    pub store: PathBuf,
    pub job: String,
    pub leave_running: bool,
    pub buffer: u64,
    /// zstd level (None: uncompressed).
    pub level: Option<i32>,
    /// Test-only: a dump step to fail at on purpose.
    pub fail_at: Option<String>,
    /// Pre-dumps before the final dump.
    pub predump: Option<PredumpRequest>,
    /// The haul that asked: if it dies, the worker stops pre-dumping (and ends tracking), but
    /// still finishes or rolls back a dump it is in the middle of.
    pub parent: i32,
}

/// The `[predump]` settings of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PredumpRequest {
    pub interval_us: u64,
    pub max_iterations: u32,
    pub stop_below: u64,
    pub stop_growth: f64,
    /// None: the best tracker that works here.
    pub tracker: Option<TrackerKind>,
}

/// What a checkpoint produced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckpointOutcome {
    /// The final dump's set (empty when pre-dumping was interrupted before it).
    pub set: String,
    pub stats: DumpStats,
    pub predump: Option<PredumpReport>,
    /// Time spent pre-dumping and in the final dump (µs).
    pub predump_us: u64,
    pub dump_us: u64,
    /// Pre-dumping was stopped by a signal: no final dump was taken, tracking ended.
    pub interrupted: bool,
}

/// One line a worker answers with.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok(Box<CheckpointOutcome>),
    Error(String),
}

/// Runs the checkpoint in this process (what the worker does).
pub fn checkpoint(
    req: &CheckpointRequest,
    stop: &AtomicBool,
) -> Result<CheckpointOutcome, crate::Error> {
    let store = Store::open_or_create(&req.store)?;
    let dopts = DumpOptions {
        leave_running: req.leave_running,
        buffer: req.buffer,
        fail_at: req.fail_at.as_deref().and_then(Step::parse),
        ..Default::default()
    };
    let Some(p) = &req.predump else {
        let t = Instant::now();
        let d = dump_to_store(req.pid, &store, &req.job, &dopts, req.level)?;
        return Ok(CheckpointOutcome {
            set: d.set.id,
            stats: d.stats,
            dump_us: crate::util::us(t.elapsed()),
            ..Default::default()
        });
    };
    let popts = PrecopyOptions {
        interval: Duration::from_micros(p.interval_us),
        max_iterations: p.max_iterations,
        stop_below: p.stop_below,
        stop_growth: p.stop_growth,
        tracker: p.tracker.map(TrackerChoice::Only).unwrap_or_default(),
        level: req.level,
    };
    let t = Instant::now();
    let mut pc = Precopy::start(req.pid, &store, &req.job, &popts, &dopts)?;
    let why = pc.run(&popts, stop)?;
    let predump_us = crate::util::us(t.elapsed());
    if why == StopReason::Interrupted {
        return Ok(CheckpointOutcome {
            predump: Some(pc.report().clone()),
            predump_us,
            interrupted: true,
            ..Default::default()
        });
    }
    let t = Instant::now();
    let (d, report) = pc.final_dump(&dopts)?;
    Ok(CheckpointOutcome {
        set: d.set.id,
        stats: d.stats,
        predump: Some(report),
        predump_us,
        dump_us: crate::util::us(t.elapsed()),
        interrupted: false,
    })
}

/// The worker's side: reads the request on stdin, runs it, answers on stdout. Signals that
/// would end it are turned into "stop pre-dumping" so it always leaves the target as it should.
pub fn worker_main() -> Result<(), crate::Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| DumpError::Worker(format!("cannot handle signal {sig}: {e}")))?;
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| DumpError::Worker(format!("reading the request: {e}")))?;
    let req: CheckpointRequest =
        serde_json::from_str(&input).map_err(|e| DumpError::Worker(format!("bad request: {e}")))?;
    // The asking haul dying (SIGKILL, a cron timeout) means: stop pre-dumping.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGUSR1) {
        tracing::warn!("cannot watch for the death of haul {}: {e}", req.parent);
    }
    if nix::unistd::getppid().as_raw() != req.parent {
        stop.store(true, Ordering::Relaxed);
    }
    let answer = match checkpoint(&req, &stop) {
        Ok(o) => Answer::Ok(Box::new(o)),
        Err(e) => Answer::Error(crate::error::chain(&e)),
    };
    let line = serde_json::to_string(&answer).map_err(|e| DumpError::Worker(e.to_string()))?;
    // The haul that asked may be gone: nobody to tell, and nothing left to do.
    let _ = writeln!(std::io::stdout(), "{line}");
    Ok(())
}

/// Runs the checkpoint in a worker process (`exe __checkpoint-worker`). Setting `stop` asks the
/// worker to stop pre-dumping (it then ends tracking and answers `interrupted`).
pub fn checkpoint_in_worker(
    exe: &Path,
    req: &CheckpointRequest,
    stop: &AtomicBool,
) -> Result<CheckpointOutcome, DumpError> {
    let mut cmd = Command::new(exe);
    cmd.arg(WORKER_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    crate::sys::spawn::close_inherited_fds(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        DumpError::Worker(format!(
            "cannot start the checkpoint worker {}: {e}",
            exe.display()
        ))
    })?;
    let body = serde_json::to_vec(req).map_err(|e| DumpError::Worker(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&body)
            .map_err(|e| DumpError::Worker(format!("sending the request to the worker: {e}")))?;
    }
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| DumpError::Worker("no stdout of the worker".into()))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut asked_to_stop = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {
                if stop.load(Ordering::Relaxed) && !asked_to_stop {
                    let _ = crate::sys::process::kill(child.id() as i32, libc::SIGUSR1);
                    asked_to_stop = true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(DumpError::Worker(format!("waiting for the worker: {e}"))),
        }
    };
    let out = reader.join().unwrap_or_default();
    match out.lines().last().map(serde_json::from_str::<Answer>) {
        Some(Ok(Answer::Ok(o))) => Ok(*o),
        Some(Ok(Answer::Error(e))) => Err(DumpError::Worker(e)),
        _ => Err(DumpError::Worker(format!(
            "the checkpoint worker ended ({status}) without an answer"
        ))),
    }
}
