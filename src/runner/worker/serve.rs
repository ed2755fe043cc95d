//! The worker's side: `haul __checkpoint-worker` reads the request on stdin, runs the
//! checkpoint, and answers on stdout.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{decode_request, Answer, CheckpointOutcome, CheckpointRequest, LazyServeRequest};
use super::{serve_frozen, SourceEndKind, WorkerError};
use crate::dump::{dump_to_store, DumpOptions, FrozenSource, Precopy, PrecopyOptions, Step};
use crate::dump::{StopReason, TrackerChoice};
use crate::image::ImageSet;
use crate::store::Store;
use crate::util::error_chain;

/// Runs the checkpoint in this process (what the worker does). Lazy requests need the
/// worker (it serves the frozen source afterwards): they are refused here.
fn checkpoint(
    req: &CheckpointRequest,
    stop: &AtomicBool,
) -> Result<(CheckpointOutcome, Option<ImageSet>), WorkerError> {
    if req.lazy.is_some() {
        return Err(WorkerError::Internal(
            "a lazy checkpoint keeps the process frozen: run it in the worker",
        ));
    }
    run_checkpoint(req, stop, false).map(|(o, _, set)| (o, set))
}

/// A lazy final dump's process, still frozen, with its set.
type Frozen = (FrozenSource, ImageSet);

/// The checkpoint; with `lazy`, a lazy final dump whose process is returned frozen, with its
/// set. Otherwise the final dump's set comes back alone: the worker drops it only after its
/// answer (freeing a page table of the whole memory took ~2.5 ms here, between the kill and
/// the answer the restore waits for).
fn run_checkpoint(
    req: &CheckpointRequest,
    stop: &AtomicBool,
    lazy: bool,
) -> Result<(CheckpointOutcome, Option<Frozen>, Option<ImageSet>), WorkerError> {
    let store = Store::open_or_create(&req.store)?;
    let dopts = DumpOptions {
        leave_running: req.leave_running,
        buffer: req.buffer,
        snapshot: req.snapshot,
        fail_at: req.fail_at.as_deref().and_then(Step::parse),
        policy: crate::dump::CheckPolicy {
            tcp_pending: req.tcp_pending,
        },
        network_lock: req.network_lock,
        // Answered while the killed processes exit; joined before the worker does.
        deaths_in_background: !lazy,
        // haul, which launched the root, reaps a fork snapshot of it (`DumpStats::keepers`).
        parent_reaps: true,
        hand_keepers: req.hand_keepers && !req.leave_running && !lazy,
        ..Default::default()
    };
    let Some(p) = &req.predump else {
        let t = Instant::now();
        let (d, src) = if lazy {
            let (d, src) =
                crate::dump::dump_to_store_lazy(req.pid, &store, &req.job, &dopts, req.level)?;
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
        return Ok(match src {
            Some(s) => (o, Some((s, d.set)), None),
            None => (o, None, Some(d.set)),
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
    if lazy {
        // A lazy final dump serves one process: say so before pre-dumping a tree.
        crate::dump::refuse_lazy_tree(req.pid)?;
    }
    let t = Instant::now();
    let mut pc = Precopy::start(req.pid, &store, &req.job, &popts)?;
    let why = pc.run_with(&popts, stop, &mut |it| {
        // Progress only: a haul that stopped reading loses nothing.
        let since = match it.index {
            0 => "present".to_string(),
            i => format!("written since pre-dump {i}"),
        };
        let _ = answer(&Answer::Step(format!(
            "pre-dump {} committed: {} pages {since}, {} new",
            it.index + 1,
            it.pages_written,
            crate::util::human_bytes(it.bytes_new),
        )));
    })?;
    if why != StopReason::Interrupted {
        let _ = answer(&Answer::Step(format!(
            "final dump after {} pre-dumps (stopped: {})",
            pc.report().iterations.len(),
            why.name()
        )));
    }
    let predump_us = crate::util::us(t.elapsed());
    if why == StopReason::Interrupted {
        let o = CheckpointOutcome {
            predump: Some(pc.report().clone()),
            predump_us,
            interrupted: true,
            ..Default::default()
        };
        return Ok((o, None, None));
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
    Ok(match src {
        Some(s) => (o, Some((s, d.set)), None),
        None => (o, None, Some(d.set)),
    })
}

/// Writes one answer line on stdout. The haul that asked may be gone: nobody to tell.
fn answer(a: &Answer) -> Result<(), WorkerError> {
    let line = a.encode()?;
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
) -> Result<(), WorkerError> {
    let fail = |e: String| answer(&Answer::Error(e));
    let store = match Store::open_or_create(&req.store) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(error_chain(&e)),
    };
    let opts = crate::xfer::ServerOptions {
        token: lz.token.clone(),
        ..Default::default()
    };
    let server = match crate::xfer::PageServer::bind_source(&lz.listen, store.clone(), opts) {
        Ok(s) => s,
        Err(e) => return fail(error_chain(&e)),
    };
    let (mut o, frozen) = match run_checkpoint(req, stop, true) {
        Ok((o, frozen, _)) => (o, frozen),
        Err(e) => return fail(error_chain(&e)),
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
                error_chain(&e),
                if thawed.is_ok() { "resumed" } else { "lost" }
            ));
        }
    };
    o.serve_addr = Some(serving.local_addr().to_string());
    answer(&Answer::Ok(Box::new(o)))?;
    let timeout = Duration::from_micros(lz.source_timeout_us);
    let mut end = serve_frozen(src, &serving, timeout, stop);
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
pub fn worker_main() -> Result<(), WorkerError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|source| WorkerError::Signal { signal, source })?;
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(WorkerError::ReadRequest)?;
    let req = decode_request(&input)?;
    // The asking haul dying (SIGKILL, a cron timeout) means: stop pre-dumping.
    if let Err(e) = crate::sys::process::set_pdeathsig(libc::SIGUSR1) {
        tracing::warn!("cannot watch for the death of haul {}: {e}", req.parent);
    }
    if crate::sys::process::getppid() != req.parent {
        stop.store(true, Ordering::Relaxed);
    }
    if let Some(lz) = &req.lazy {
        return lazy_worker(&req, lz, &stop);
    }
    let (a, set) = match checkpoint(&req, &stop) {
        Ok((o, set)) => (Answer::Ok(Box::new(o)), set),
        Err(e) => (Answer::Error(error_chain(&e)), None),
    };
    let answered = answer(&a);
    drop(set);
    crate::dump::join_deaths();
    if req.hand_keepers {
        // Every death is collected: the keepers are handed over (detached) from this thread,
        // their tracer, then named; the asking haul may seize them.
        let handed = answer(&Answer::Handed(crate::dump::hand_over_keepers()));
        return answered.and(handed);
    }
    answered
}
