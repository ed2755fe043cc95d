//! The ptrace session of a checkpoint runs in a worker process of its own.
//!
//! While haul holds a target stopped it changes things in it (registers for an injected
//! syscall, a scratch page): if the process holding the session died at that moment, the target
//! would run on with them. So `haul run` and `haul dump` hand the whole checkpoint (pre-dumps
//! and final dump) to `haul __checkpoint-worker`: it reads a [`CheckpointRequest`] as JSON on
//! stdin and answers one JSON line on stdout. It treats SIGINT, SIGTERM, SIGHUP and SIGUSR1 as
//! "stop pre-dumping" and always finishes or rolls back the step it is in, so a SIGKILL of the
//! haul that started it (a cron timeout, a kill -9) never leaves the target harmed.
//!
//! A lazy final dump (`lazy` in the request) keeps the target frozen after the dump: the worker
//! answers its outcome line (the set and the address it serves on) and goes on serving the
//! lazy pages from the frozen target ([`super::serve_frozen`]) until the restore says `Done`
//! (the target is killed) or is not connected for `source_timeout`, or the worker is asked to
//! stop (the target is thawed: rolled back). A second line then says how the source ended.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{dump_to_store, DumpError, DumpOptions, DumpStats, Precopy, PrecopyOptions, Step};
use super::{FrozenSource, SourceEnd, SourceEndKind, StopReason, TrackerChoice};
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
    /// A lazy final dump, served from the frozen target (`dump.lazy`).
    #[serde(default)]
    pub lazy: Option<LazyServeRequest>,
}

/// How a lazy final dump's source is served.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LazyServeRequest {
    /// Address to listen on (`127.0.0.1:0`: loopback, any free port).
    pub listen: String,
    /// Token clients must present; required for a non-loopback address.
    pub token: Option<Vec<u8>>,
    /// No restore connected for this long (µs): the source is thawed.
    pub source_timeout_us: u64,
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
    /// Lazy final dump: the address the frozen source is served on (the worker goes on).
    #[serde(default)]
    pub serve_addr: Option<String>,
}

/// One line a worker answers with.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok(Box<CheckpointOutcome>),
    Error(String),
    /// After a lazy dump's `Ok`: how serving the frozen source ended.
    Source(SourceEnd),
}

/// Runs the checkpoint in this process (what the worker does). Lazy requests need the
/// worker (it serves the frozen source afterwards): they are refused here.
pub fn checkpoint(
    req: &CheckpointRequest,
    stop: &AtomicBool,
) -> Result<CheckpointOutcome, crate::Error> {
    if req.lazy.is_some() {
        return Err(DumpError::Internal(
            "a lazy checkpoint keeps the process frozen: run it in the worker".into(),
        )
        .into());
    }
    run_checkpoint(req, stop, false).map(|(o, _)| o)
}

/// The checkpoint; with `lazy`, a lazy final dump whose process is returned frozen, with its
/// set.
fn run_checkpoint(
    req: &CheckpointRequest,
    stop: &AtomicBool,
    lazy: bool,
) -> Result<
    (
        CheckpointOutcome,
        Option<(FrozenSource, crate::image::ImageSet)>,
    ),
    crate::Error,
> {
    let store = Store::open_or_create(&req.store)?;
    let dopts = DumpOptions {
        leave_running: req.leave_running,
        buffer: req.buffer,
        fail_at: req.fail_at.as_deref().and_then(Step::parse),
        ..Default::default()
    };
    let Some(p) = &req.predump else {
        let t = Instant::now();
        let (d, src) = if lazy {
            let (d, src) = super::dump_to_store_lazy(req.pid, &store, &req.job, &dopts, req.level)?;
            (d, Some(src))
        } else {
            (
                dump_to_store(req.pid, &store, &req.job, &dopts, req.level)?,
                None,
            )
        };
        let o = CheckpointOutcome {
            set: d.set.id.clone(),
            stats: d.stats,
            dump_us: crate::util::us(t.elapsed()),
            ..Default::default()
        };
        return Ok((o, src.map(|s| (s, d.set))));
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
    let mut pc = Precopy::start(req.pid, &store, &req.job, &popts)?;
    let why = pc.run(&popts, stop)?;
    let predump_us = crate::util::us(t.elapsed());
    if why == StopReason::Interrupted {
        let o = CheckpointOutcome {
            predump: Some(pc.report().clone()),
            predump_us,
            interrupted: true,
            ..Default::default()
        };
        return Ok((o, None));
    }
    let t = Instant::now();
    let (d, report, src) = if lazy {
        let (d, r, src) = pc.final_dump_lazy(&dopts)?;
        (d, r, Some(src))
    } else {
        let (d, r) = pc.final_dump(&dopts)?;
        (d, r, None)
    };
    let o = CheckpointOutcome {
        set: d.set.id.clone(),
        stats: d.stats,
        predump: Some(report),
        predump_us,
        dump_us: crate::util::us(t.elapsed()),
        interrupted: false,
        serve_addr: None,
    };
    Ok((o, src.map(|s| (s, d.set))))
}

/// Writes one answer line on stdout. The haul that asked may be gone: nobody to tell.
fn answer(a: &Answer) -> Result<(), DumpError> {
    let line = serde_json::to_string(a).map_err(|e| DumpError::Worker(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    Ok(())
}

/// A lazy checkpoint in the worker: binds the server first (a bad address refuses before
/// anything is frozen), dumps, answers the outcome with the address, serves the frozen source
/// until it ends, answers how. A set whose source was not killed after `Done` is removed from
/// the store: its lazy pages are gone with the source's freeze.
fn lazy_worker(
    req: &CheckpointRequest,
    lz: &LazyServeRequest,
    stop: &AtomicBool,
) -> Result<(), DumpError> {
    let fail = |e: String| answer(&Answer::Error(e));
    let store = match Store::open_or_create(&req.store) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(crate::error::chain(&crate::Error::from(e))),
    };
    let opts = crate::xfer::ServerOptions {
        token: lz.token.clone(),
        ..Default::default()
    };
    let server = match crate::xfer::PageServer::bind_source(&lz.listen, store.clone(), opts) {
        Ok(s) => s,
        Err(e) => return fail(crate::error::chain(&crate::Error::from(e))),
    };
    let (mut o, frozen) = match run_checkpoint(req, stop, true) {
        Ok(x) => x,
        Err(e) => return fail(crate::error::chain(&e)),
    };
    let Some((src, set)) = frozen else {
        // Interrupted before the final dump: nothing is frozen, nothing to serve.
        return answer(&Answer::Ok(Box::new(o)));
    };
    let set_id = set.id.clone();
    let serving = match server.serve_source(set, Arc::new(src.reader())) {
        Ok(s) => s,
        Err(e) => {
            let thawed = src.thaw();
            let _ = store.remove_set(&set_id);
            return fail(format!(
                "{}; the source was {} and set {set_id} removed",
                crate::error::chain(&crate::Error::from(e)),
                if thawed.is_ok() { "resumed" } else { "lost" }
            ));
        }
    };
    o.serve_addr = Some(serving.local_addr().to_string());
    answer(&Answer::Ok(Box::new(o)))?;
    let timeout = Duration::from_micros(lz.source_timeout_us);
    let mut end = super::serve_frozen(src, &serving, timeout, stop);
    drop(serving);
    if end.kind != SourceEndKind::Killed {
        match store.remove_set(&set_id) {
            Ok(()) => end
                .detail
                .push_str(&format!("; set {set_id} removed (its lazy pages are gone)")),
            Err(e) => end
                .detail
                .push_str(&format!("; removing set {set_id}: {e}")),
        }
    }
    tracing::info!(pid = req.pid, kind = ?end.kind, "{}", end.detail);
    answer(&Answer::Source(end))
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
    if let Some(lz) = &req.lazy {
        return Ok(lazy_worker(&req, lz, &stop)?);
    }
    let a = match checkpoint(&req, &stop) {
        Ok(o) => Answer::Ok(Box::new(o)),
        Err(e) => Answer::Error(crate::error::chain(&e)),
    };
    Ok(answer(&a)?)
}

/// A worker process started with a request, its answer lines arriving on a channel.
struct Spawned {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

fn spawn_worker(exe: &Path, req: &CheckpointRequest) -> Result<Spawned, DumpError> {
    use std::io::BufRead;
    let mut cmd = Command::new(exe);
    cmd.arg(WORKER_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    crate::sys::spawn::close_inherited_fds(&mut cmd);
    if req.lazy.is_some() {
        // A lazy worker serves a source whose restored copy may be running: it must roll back
        // only when the haul that asked says so (after ending that copy) or dies, never on a
        // terminal's SIGINT to the whole group, which would thaw the source while the copy
        // runs on. Its own process group keeps such signals away.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
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
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| DumpError::Worker("no stdout of the worker".into()))?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            match l {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    Ok(Spawned { child, lines })
}

impl Spawned {
    /// Waits for the first answer line, forwarding `stop` to the worker (SIGUSR1); an error
    /// naming its exit status when the worker ended without one.
    fn first_answer(&mut self, stop: &AtomicBool) -> Result<Answer, DumpError> {
        let mut asked_to_stop = false;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(5)) {
                Ok(l) => {
                    if let Ok(a) = serde_json::from_str::<Answer>(&l) {
                        return Ok(a);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self
                        .child
                        .wait()
                        .map_err(|e| DumpError::Worker(format!("waiting for the worker: {e}")))?;
                    return Err(DumpError::Worker(format!(
                        "the checkpoint worker ended ({st}) without an answer"
                    )));
                }
            }
            if stop.load(Ordering::Relaxed) && !asked_to_stop {
                let _ = crate::sys::process::kill(self.child.id() as i32, libc::SIGUSR1);
                asked_to_stop = true;
            }
        }
    }
}

fn outcome_of(a: Answer) -> Result<CheckpointOutcome, DumpError> {
    match a {
        Answer::Ok(o) => Ok(*o),
        Answer::Error(e) => Err(DumpError::Worker(e)),
        Answer::Source(_) => Err(DumpError::Worker(
            "the checkpoint worker answered out of order".into(),
        )),
    }
}

/// Runs the checkpoint in a worker process (`exe __checkpoint-worker`). Setting `stop` asks the
/// worker to stop pre-dumping (it then ends tracking and answers `interrupted`).
pub fn checkpoint_in_worker(
    exe: &Path,
    req: &CheckpointRequest,
    stop: &AtomicBool,
) -> Result<CheckpointOutcome, DumpError> {
    let mut w = spawn_worker(exe, req)?;
    let a = w.first_answer(stop);
    let _ = w.child.wait();
    outcome_of(a?)
}

/// Runs a lazy checkpoint (`req.lazy` set) in a worker process: returns its outcome (with the
/// address it serves the frozen source on) as soon as the dump is committed, and the worker,
/// which goes on serving. `stop` is forwarded until then.
pub fn lazy_checkpoint_in_worker(
    exe: &Path,
    req: &CheckpointRequest,
    stop: &AtomicBool,
) -> Result<(CheckpointOutcome, SourceWorker), DumpError> {
    if req.lazy.is_none() {
        return Err(DumpError::Internal("not a lazy checkpoint request".into()));
    }
    let mut w = spawn_worker(exe, req)?;
    let a = w.first_answer(stop);
    let o = match a.and_then(outcome_of) {
        Ok(o) => o,
        Err(e) => {
            let _ = w.child.wait();
            return Err(e);
        }
    };
    Ok((o, SourceWorker { w: Some(w) }))
}

/// A worker serving a lazy dump's frozen source. Dropping it without [`SourceWorker::wait`]
/// rolls back (the source is thawed) and waits for the worker.
pub struct SourceWorker {
    w: Option<Spawned>,
}

impl SourceWorker {
    /// The worker process.
    pub fn pid(&self) -> Option<i32> {
        self.w.as_ref().map(|w| w.child.id() as i32)
    }

    /// Asks the worker to roll back now: the source is thawed (unless it was already killed
    /// after `Done`).
    pub fn rollback(&mut self) {
        if let Some(w) = self.w.as_mut() {
            let _ = crate::sys::process::kill(w.child.id() as i32, libc::SIGUSR1);
        }
    }

    /// Waits until the worker ends and returns how the source ended. Setting `stop` asks it to
    /// roll back ([`SourceWorker::rollback`]).
    pub fn wait(mut self, stop: &AtomicBool) -> Result<SourceEnd, DumpError> {
        let Some(mut w) = self.w.take() else {
            return Err(DumpError::Internal(
                "the source worker was waited for".into(),
            ));
        };
        let mut end = None;
        let mut asked = false;
        loop {
            match w.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(l) => match serde_json::from_str::<Answer>(&l) {
                    Ok(Answer::Source(e)) => end = Some(e),
                    Ok(Answer::Error(e)) => {
                        let _ = w.child.wait();
                        return Err(DumpError::Worker(e));
                    }
                    _ => {}
                },
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if stop.load(Ordering::Relaxed) && !asked {
                let _ = crate::sys::process::kill(w.child.id() as i32, libc::SIGUSR1);
                asked = true;
            }
        }
        let st = w
            .child
            .wait()
            .map_err(|e| DumpError::Worker(format!("waiting for the worker: {e}")))?;
        end.ok_or_else(|| {
            DumpError::Worker(format!(
                "the checkpoint worker ended ({st}) without saying how the source ended"
            ))
        })
    }
}

impl Drop for SourceWorker {
    fn drop(&mut self) {
        if let Some(mut w) = self.w.take() {
            let _ = crate::sys::process::kill(w.child.id() as i32, libc::SIGUSR1);
            let _ = w.child.wait();
        }
    }
}
