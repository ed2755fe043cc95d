//! The checkpoint stages of a job: pre-dumps and the final dump into the store (run in the
//! checkpoint worker, with retention after), eager restore, and the verify command against the
//! restored process. Each fills its part of the report.

use std::time::Duration;

use super::process::Target;
use super::RunError;
use crate::job::{Job, PidPolicy};
use crate::report::{RunReport, StoreFigures, VerifyReport};

pub use super::verify::verify;
use crate::store::Store;

fn stage_err<E: Into<super::StageError>>(stage: &'static str) -> impl FnOnce(E) -> RunError {
    move |e| RunError::stage(stage, e)
}

/// The options of a restore haul runs, eager or lazy, from a job's `[restore]` or from
/// `haul restore`: the one place a PID policy becomes the restore's (and the test switch
/// `HAUL_FAIL_AT` is read for it).
pub fn restore_options(pid: PidPolicy, verify_state: bool) -> crate::restore::RestoreOptions {
    crate::restore::RestoreOptions {
        pid: match pid {
            PidPolicy::Same => crate::restore::PidChoice::Same,
            PidPolicy::Any => crate::restore::PidChoice::Any,
        },
        fail_at: crate::restore::Step::from_env(),
        verify_state,
        tty: None,
        network_lock: Default::default(),
        adopt: None,
    }
}

/// The checkpoint: pre-dumps (with `[predump]`) and the final dump, run in a worker process
/// (see `runner::worker`: a SIGKILL of haul must not leave the target with injected state), then
/// retention. A launched process that the dump killed is reaped here, so that its PID is free
/// for a restore. Returns the final dump's set and the time spent pre-dumping and dumping (µs).
/// With `dump.lazy`, the worker goes on serving the frozen source on a loopback address
/// (`report.source`): it is returned too, and the source is neither dead nor reaped yet.
/// `on_step` hears what the worker is doing (each pre-dump, then the final dump).
pub fn checkpoint(
    job: &Job,
    store: &Store,
    target: &mut Target,
    report: &mut RunReport,
    stop: &std::sync::atomic::AtomicBool,
    on_step: &dyn Fn(&str),
) -> Result<Checkpointed, RunError> {
    use super::worker::{run_in_worker, CheckpointRequest, LazyServeRequest, PredumpRequest};
    let spec = &job.spec.dump;
    let mut req = CheckpointRequest::new(
        target.pid,
        store.open_as(),
        &job.name,
        job.spec.store.compression,
    );
    req.leave_running = spec.leave_running;
    req.buffer = spec.buffer.0;
    req.snapshot = spec.snapshot;
    req.tcp_pending = spec.tcp_pending;
    req.network_lock = job.spec.network.lock;
    req.lazy = spec.lazy.then(|| LazyServeRequest {
        listen: "127.0.0.1:0".into(),
        token: None,
        source_timeout_us: crate::util::us(job.spec.lazy.source_timeout.0),
    });
    req.predump = job.spec.predump.as_ref().map(PredumpRequest::from_spec);
    req.hand_keepers = !spec.leave_running && !spec.lazy && adopts(job);
    let exe = std::env::current_exe().map_err(RunError::io("find haul's own binary"))?;
    // A restore follows: index each pre-dump's pages as it is committed, while the worker
    // waits for the next, rather than all of them inside the pause.
    let warm = job.spec.restore.is_some() && job.spec.predump.is_some();
    let on_step = |s: &str| {
        on_step(s);
        if warm {
            if let Err(e) = store.refresh_index() {
                tracing::debug!("indexing the pre-dumps' packs ahead of the restore: {e}");
            }
        }
    };
    let super::worker::Ran {
        outcome: o,
        source: worker,
        handover,
    } = run_in_worker(&exe, &req, stop, &on_step).map_err(stage_err("dump"))?;
    report.predump = o.predump.clone();
    if o.interrupted {
        return Err(RunError::Interrupted);
    }
    if let Some(addr) = &o.serve_addr {
        report.source = Some(crate::report::SourceReport {
            serve_addr: addr.clone(),
            ..Default::default()
        });
    }
    let worker = match (worker, &o.serve_addr) {
        (Some(w), Some(a)) => Some((w, a.clone())),
        (None, _) => None,
        (Some(_), None) => {
            return Err(RunError::Setup(
                "the checkpoint worker did not say where it serves the source".into(),
            ))
        }
    };
    let answered = crate::dump::mark("load");
    let set = store.load_set(&o.set).map_err(stage_err("dump"))?;
    let d = crate::dump::StoredDump {
        set,
        stats: o.stats,
    };
    let mut marks = d.stats.marks.clone();
    if !spec.leave_running && worker.is_none() {
        marks.push(answered);
        marks.push(crate::dump::mark("release"));
        if let Some(child) = target.child.as_mut() {
            let _ = child.wait();
        }
        target.child = None;
        target.gone = true;
        release_tree(job, &d.set)?;
    }
    let s = &d.stats;
    report.freezing_time = s.freezing_time;
    report.frozen_time = s.frozen_time;
    report.frozen_commit_time = s.frozen_commit_time;
    report.memdump_time = s.memdump_time;
    report.memwrite_time = s.memwrite_time;
    report.pages_scanned = s.pages_scanned;
    report.pages_written = s.pages_written;
    report.pages_from_snapshot = s.pages_from_snapshot;
    report.pages_skipped_parent = s.pages_skipped_parent;
    report.processes = s.processes;
    report.pages_lazy = d.set.figures.pages_lazy;
    report.warnings = s.warnings.clone();
    report.lock_time = s.lock_time;
    report.processes = s.processes;
    Ok(Checkpointed {
        set: std::sync::Arc::new(d.set),
        predump_us: o.predump_us,
        dump_us: o.dump_us,
        source: worker,
        marks,
        keepers: d.stats.keepers.clone(),
        // No keeper made (a process under 32 MiB): nothing to wait for.
        handover: handover.filter(|_| !d.stats.keepers.is_empty()),
    })
}

/// Whether the job's restore takes the memory of the process it stops over from its memory
/// keeper (`restore.adopt_memory`): eager, from the local store, with `pid = "same"`. Whether
/// it then can is decided by the restore (`restore::adopt`).
fn adopts(job: &Job) -> bool {
    job.spec.restore.as_ref().is_some_and(|r| {
        r.adopt_memory
            && r.mode == crate::job::RestoreMode::Eager
            && r.pid == PidPolicy::Same
            && r.page_server().is_none()
    })
}

/// How long a restore waits for the checkpoint worker to hand its memory keeper over (it does
/// once the killed process's death is collected, about when its pid is free).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// After the checkpoint and any restore (off a migration's pause): retention (`store.keep`)
/// and the store's figures in the report (`du` reads the whole store). Retention never removes
/// the set just dumped: it is the newest of its job.
pub fn retain_and_measure(
    job: &Job,
    store: &Store,
    set: &crate::image::ImageSet,
    report: &mut RunReport,
) -> Result<(), RunError> {
    let pruned = match job.spec.store.keep {
        Some(k) => store
            .prune(&job.name, k as usize)
            .map_err(stage_err("dump"))?,
        None => Vec::new(),
    };
    let f = &set.figures;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let on_disk = store
        .du()
        .map(|u| u.bytes_packs + u.bytes_index + u.bytes_manifests)
        .unwrap_or(0);
    report.store = Some(StoreFigures {
        path: store.location().display().to_string(),
        set: set.id.clone(),
        bytes_logical: f.bytes_logical,
        bytes_stored: f.bytes_stored,
        bytes_new: f.bytes_new,
        bytes_on_disk: on_disk,
        compression_ratio: ratio(f.bytes_logical, f.bytes_stored),
        dedup_ratio: ratio(f.bytes_stored, f.bytes_new),
        pruned,
    });
    Ok(())
}

/// After a dump killed the tree of `set`: reaps what comes to haul and, when a restore with
/// `pid = "same"` follows, waits (bounded) until every pid of the tree is free, or fails naming
/// those still taken. Without such a restore, what is not free at once is only logged.
fn release_tree(job: &Job, set: &crate::image::ImageSet) -> Result<(), RunError> {
    use super::release::{release, RELEASE_TIMEOUT};
    let pids: Vec<i32> = set
        .processes()
        .map(|(_, p)| p.pid)
        .chain(set.tree.zombies.iter().map(|z| z.pid))
        .collect();
    let same = job
        .spec
        .restore
        .as_ref()
        .is_some_and(|r| r.pid == PidPolicy::Same);
    let taken = release(
        &pids,
        if same {
            RELEASE_TIMEOUT
        } else {
            Duration::ZERO
        },
    );
    if taken.is_empty() {
        return Ok(());
    }
    if same {
        return Err(RunError::PidsTaken(taken));
    }
    for t in &taken {
        tracing::info!("after the dump: {t}");
    }
    Ok(())
}

/// What the checkpoint stage produced.
pub struct Checkpointed {
    /// Shared: a lazy restore's daemon reads its page table while the job goes on.
    pub set: std::sync::Arc<crate::image::ImageSet>,
    /// Time spent pre-dumping and in the final dump (µs).
    pub predump_us: u64,
    pub dump_us: u64,
    /// `dump.lazy`: the worker serving the frozen source, and its address.
    pub source: Option<(super::worker::SourceWorker, String)>,
    /// The pause timeline so far (the worker's marks, then `release`): the restore adds its
    /// own (`restore`, `running`).
    pub marks: Vec<crate::report::Mark>,
    /// The memory keepers the worker made for the processes it killed: orphans that come to
    /// haul (a subreaper) and are reaped after the restore ([`super::release::reap_keepers`]).
    pub keepers: Vec<i32>,
    /// The keepers the worker hands over for the restore to adopt (`restore.adopt_memory`).
    pub handover: Option<super::worker::Handover>,
}

/// Where a restore takes the manifest and the pages from.
enum Source {
    /// The local store, and the set just dumped.
    Store,
    /// A page server (`[restore] from = "host:port"`): the manifest of the set just dumped
    /// and every page come from it, never from the local store.
    Remote {
        addr: String,
        token: Vec<u8>,
        timeout: Duration,
    },
}

fn source(job: &Job, spec: &crate::job::RestoreSpec) -> Result<Source, RunError> {
    if spec.page_server().is_none() {
        return Ok(Source::Store);
    }
    let token = match &spec.token_file {
        Some(f) => crate::xfer::read_token_file(&job.dir.join(f)).map_err(stage_err("restore"))?,
        None => Vec::new(),
    };
    Ok(Source::Remote {
        addr: spec.from.clone(),
        token,
        timeout: job.spec.lazy.source_timeout.0,
    })
}

impl Source {
    /// With a page server: the manifest of `set` as the server has it, and the server as the
    /// eager page source. `None` for the local store.
    fn remote(
        &self,
        set: &crate::image::ImageSet,
    ) -> Result<Option<(crate::image::ImageSet, crate::xfer::RemoteSource)>, RunError> {
        let Source::Remote {
            addr,
            token,
            timeout,
        } = self
        else {
            return Ok(None);
        };
        let r = crate::xfer::RemoteSource::new(addr, token.clone(), *timeout);
        let remote = r.manifest(&set.id).map_err(stage_err("restore"))?;
        Ok(Some((remote, r)))
    }
}

/// Eager restore of the set just dumped; `handover`: the memory keepers its checkpoint
/// worker hands over, one of which the restore may adopt.
pub fn restore(
    job: &Job,
    store: &Store,
    set: &crate::image::ImageSet,
    report: &mut RunReport,
    handover: Option<&super::worker::Handover>,
) -> Result<(i32, Option<super::command::Terminal>), RunError> {
    let Some(spec) = &job.spec.restore else {
        return Err(RunError::Setup("no [restore]".into()));
    };
    let mut opts = restore_options(spec.pid, job.spec.verify.as_ref().is_some_and(|v| v.state));
    opts.network_lock = job.spec.network.lock;
    if let Some(h) = handover.filter(|_| adopts(job)) {
        opts.adopt = h.wait(HANDOVER_TIMEOUT).first().copied();
    }
    let remote = source(job, spec)?.remote(set)?;
    let (set, pages): (_, &dyn crate::restore::PageSource) = match &remote {
        Some((s, r)) => (s, r),
        None => (set, store),
    };
    let tampered = test_tamper(set);
    let set = tampered.as_ref().unwrap_or(set);
    // restore.tty: the terminal is served once the job is verified (lifecycle).
    let terminal = super::command::tty_prepare(spec.tty, set).map_err(stage_err("restore"))?;
    opts.tty = terminal.as_ref().map(|t| t.target());
    let r = crate::restore::restore(set, pages, &opts).map_err(|e| restore_err(e, report))?;
    report.restored_pid = Some(r.pid);
    report.restore_time = r.restore_time;
    report.time_to_running = r.time_to_running;
    report.pages_restored = r.pages_restored;
    report.memory_adopted = r.adopted;
    report.restore_lock_time = r.lock_time;
    Ok((r.pid, terminal))
}

/// The restore stage's error; `[verify] state` differences also go into the verify report.
fn restore_err(e: crate::restore::RestoreError, report: &mut RunReport) -> RunError {
    if let crate::restore::RestoreError::StateDiffers { differences, .. } = &e {
        report.verify = Some(VerifyReport {
            state: true,
            state_differences: differences.iter().map(ToString::to_string).collect(),
            reason: format!(
                "the restored state differs from the image in {} field(s)",
                differences.len()
            ),
            ..Default::default()
        });
    }
    stage_err("restore")(e)
}

// ---- lazy restore (issue #7) ----

/// Lazy restore of the set just dumped, from the local store or from the page server of
/// `[restore] from`: returns once the process runs;
/// the daemon keeps serving its memory until [`lazy_wait`].
///
/// With `frozen_source` (the address of the checkpoint worker serving a lazy dump's frozen
/// source), the daemon's pages come from there instead (`restore.from` is "store" then, which
/// validation ensures): the eager part comes from the local store (the lazy pages lie only in
/// the private anonymous memory the daemon serves),
/// and the returned [`crate::xfer::RemoteSource`] is kept to say `Done` once every page is
/// resident.
pub fn restore_lazy(
    job: &Job,
    store: &Store,
    set: &std::sync::Arc<crate::image::ImageSet>,
    report: &mut RunReport,
    frozen_source: Option<&str>,
) -> Result<
    (
        crate::lazy::LazyRestore,
        Option<std::sync::Arc<crate::xfer::RemoteSource>>,
    ),
    RunError,
> {
    let Some(spec) = &job.spec.restore else {
        return Err(RunError::Setup("no [restore]".into()));
    };
    let mut opts = restore_options(spec.pid, job.spec.verify.as_ref().is_some_and(|v| v.state));
    opts.network_lock = job.spec.network.lock;
    let from = source(job, spec)?;
    // The daemon thread shares the set (its page table says which pages are missing).
    let (set, remote) = match from.remote(set)? {
        Some((s, r)) => (std::sync::Arc::new(s), Some(r)),
        None => (set.clone(), None),
    };
    let eager: &dyn crate::restore::PageSource = match &remote {
        Some(r) => r,
        None => store,
    };
    // The daemon thread needs a source of its own.
    let mut shared = None;
    let src: Box<dyn crate::lazy::LazySource> = match (frozen_source, from) {
        (Some(addr), _) => {
            let r = std::sync::Arc::new(crate::xfer::RemoteSource::new(
                addr,
                Vec::new(),
                job.spec.lazy.source_timeout.0,
            ));
            shared = Some(r.clone());
            Box::new(r)
        }
        (None, from) => match from {
            // Another handle on the open store: opening it again would load its whole
            // index inside a migration's pause.
            Source::Store => Box::new(crate::lazy::StoreSource::new(std::sync::Arc::new(
                store.clone(),
            ))),
            Source::Remote {
                addr,
                token,
                timeout,
            } => Box::new(crate::xfer::RemoteSource::new(&addr, token, timeout)),
        },
    };
    let lopts = crate::lazy::LazyOptions::from_spec(&job.spec.lazy);
    let lr = crate::lazy::restore_lazy(&set, eager, src, &opts, &lopts).map_err(|e| match e {
        crate::lazy::LazyError::Restore(e) => restore_err(e, report),
        e => stage_err("restore")(e),
    })?;
    report.restored_pid = Some(lr.pid());
    report.restore_time = lr.outcome.restore_time;
    report.time_to_running = lr.outcome.time_to_running;
    report.pages_restored = lr.outcome.pages_restored;
    report.restore_lock_time = lr.outcome.lock_time;
    Ok((lr, shared))
}

/// **Test-only switch.** `HAUL_TEST_TAMPER=umask` has an eager restore give back umask 077
/// instead of the image's, as a restore that lost it would: how the tests build a state
/// difference for `[verify] state` to catch (everything `/proc` shows is carried or refused,
/// so no real process makes one). The one place the variable is read.
fn test_tamper(set: &crate::image::ImageSet) -> Option<crate::image::ImageSet> {
    if std::env::var("HAUL_TEST_TAMPER").ok()? != "umask" {
        return None;
    }
    let mut t = set.clone();
    t.process.as_mut()?.umask = 0o077;
    Some(t)
}

/// Waits until every page of a lazy restore is resident; fills `report.lazy`. A lost page
/// source (the process was killed) fails the stage.
pub fn lazy_wait(lr: crate::lazy::LazyRestore, report: &mut RunReport) -> Result<(), RunError> {
    let pid = lr.pid();
    let rep = lr.wait().map_err(stage_err("lazy"))?;
    let lost = rep.source_lost.clone();
    report.lazy = Some(rep);
    match lost {
        Some(reason) => Err(RunError::stage(
            "lazy",
            crate::lazy::LazyError::SourceLost { pid, reason },
        )),
        None => Ok(()),
    }
}
