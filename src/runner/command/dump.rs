//! `haul dump --pid PID`: the checkpoint stage of a job, for one process given by hand. It runs
//! in the checkpoint worker as a job's does ([`crate::runner::worker`]), then retention.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::{stop_on_signals, CommandError};
use crate::dump::DumpStats;
use crate::image::ImageSet;
use crate::job::{Compression, PredumpSpec};
use crate::report::PredumpReport;
use crate::runner::worker::{self, CheckpointOutcome, CheckpointRequest, LazyServeRequest};
use crate::runner::worker::{PredumpRequest, SourceEnd, SourceEndKind, SourceWorker};
use crate::store::Store;

/// What `haul dump` was asked (`--check` aside).
#[derive(Clone, Debug)]
pub struct DumpCommand {
    pub pid: i32,
    pub store: PathBuf,
    /// The job the set is filed under; None: [`super::default_job_name`].
    pub name: Option<String>,
    pub leave_running: bool,
    pub buffer: u64,
    pub compression: Compression,
    /// Pre-dumps first (`--predump N`, with a positive N).
    pub predump: Option<PredumpSpec>,
    /// Keep only this many sets of the job.
    pub keep: Option<usize>,
    /// `--lazy`: serve the frozen source.
    pub lazy: Option<LazyServe>,
    /// `--tcp-pending`: connections not yet accepted are refused or dropped.
    pub tcp_pending: crate::job::TcpPending,
    /// `--network-lock`.
    pub network_lock: crate::netlock::LockMode,
}

/// How `haul dump --lazy` serves its frozen source.
#[derive(Clone, Debug, Default)]
pub struct LazyServe {
    /// None: loopback, any free port.
    pub listen: Option<String>,
    pub token_file: Option<PathBuf>,
    /// None: 10s.
    pub source_timeout: Option<Duration>,
}

/// A final dump committed by `haul dump`.
#[derive(Clone, Debug)]
pub struct Dumped {
    pub job: String,
    pub set: ImageSet,
    pub stats: DumpStats,
    pub predump: Option<PredumpReport>,
    /// Sets removed by retention.
    pub pruned: Vec<String>,
    /// Pids of the killed tree still taken when `haul dump` returned (a parent that does not
    /// reap), each named.
    pub taken: Vec<crate::runner::release::Taken>,
}

/// How long `haul dump` waits for the pids of a tree it killed to be free: a `haul restore
/// --pid same` may follow at once.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens the store and builds the worker's request, checking a lazy dump's address and token
/// before anything is frozen (the worker checks again when it binds).
fn prepare(cmd: &DumpCommand) -> Result<(Store, CheckpointRequest), CommandError> {
    let name = match &cmd.name {
        Some(n) => n.clone(),
        None => super::default_job_name(cmd.pid),
    };
    let store = Store::open_or_create(&cmd.store)?;
    let lazy = match &cmd.lazy {
        Some(l) => {
            let token = l
                .token_file
                .as_deref()
                .map(crate::xfer::read_token_file)
                .transpose()?;
            let listen = l.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
            crate::xfer::check_listen(&listen, token.is_some())?;
            Some(LazyServeRequest {
                listen,
                token,
                source_timeout_us: crate::util::us(
                    l.source_timeout.unwrap_or(Duration::from_secs(10)),
                ),
            })
        }
        None => None,
    };
    let mut req = CheckpointRequest::new(cmd.pid, store.open_as(), &name, cmd.compression);
    req.leave_running = cmd.leave_running;
    req.buffer = cmd.buffer;
    req.lazy = lazy;
    req.tcp_pending = cmd.tcp_pending;
    req.network_lock = cmd.network_lock;
    req.predump = cmd.predump.as_ref().map(PredumpRequest::from_spec);
    Ok((store, req))
}

/// Runs the worker, its steps (each pre-dump) to `on_step`; an interrupted pre-copy (SIGINT,
/// SIGTERM) is an error.
fn run(
    req: &CheckpointRequest,
    stop: &AtomicBool,
    on_step: &dyn Fn(&str),
) -> Result<(CheckpointOutcome, Option<SourceWorker>), CommandError> {
    let exe = std::env::current_exe().map_err(CommandError::OwnBinary)?;
    let worker::Ran {
        outcome: o,
        source: w,
        ..
    } = worker::run_in_worker(&exe, req, stop, on_step)?;
    if o.interrupted {
        return Err(CommandError::Interrupted);
    }
    Ok((o, w))
}

/// `haul dump --pid PID --leave-running|--kill`: the checkpoint in a worker, then retention.
/// SIGINT/SIGTERM stop the pre-dumps. `on_step` hears what the worker is doing (progress).
pub fn dump(cmd: &DumpCommand, on_step: &dyn Fn(&str)) -> Result<Dumped, CommandError> {
    let (store, req) = prepare(cmd)?;
    let stop = stop_on_signals();
    crate::runner::release::become_subreaper();
    let (o, _) = run(&req, &stop, on_step)?;
    let set = store.load_set(&o.set)?;
    let taken = if cmd.leave_running {
        Vec::new()
    } else {
        // The root is left to its own parent, which reaps it when it likes (haul did not
        // launch it); its descendants come to whoever is their nearest subreaper. A
        // one-process dump has nothing to wait for.
        let pids: Vec<i32> = set
            .processes()
            .skip(1)
            .map(|(_, p)| p.pid)
            .chain(set.tree.zombies.iter().map(|z| z.pid))
            .collect();
        crate::runner::release::release(&pids, RELEASE_TIMEOUT)
    };
    // Memory keepers and a fork snapshot that came to haul (none when haul did not launch
    // the root: only a child of haul's gets a snapshot).
    crate::runner::release::reap_keepers(&o.stats.keepers);
    let pruned = match cmd.keep {
        Some(k) => store.prune(&req.job, k)?,
        None => Vec::new(),
    };
    Ok(Dumped {
        job: req.job,
        set,
        stats: o.stats,
        predump: o.predump,
        pruned,
        taken,
    })
}

/// `haul dump --pid PID --lazy`, once the dump is committed: the worker serves the frozen
/// process until a restore has every page or none is connected for the source timeout
/// ([`LazyDumped::wait`]). SIGINT/SIGTERM roll back.
pub struct LazyDumped {
    pub set: ImageSet,
    /// The address the frozen source is served on.
    pub addr: String,
    pub outcome: CheckpointOutcome,
    worker: SourceWorker,
    stop: Arc<AtomicBool>,
    store: Store,
    keep: Option<usize>,
}

/// How a lazy dump's source ended.
pub struct SourceEnded {
    pub end: SourceEnd,
    store: Store,
    job: String,
    keep: Option<usize>,
}

/// `haul dump --pid PID --lazy`: the worker dumps, answers the set and the address, and goes
/// on serving (see [`LazyDumped`]). `on_step` as for [`dump`].
pub fn lazy_dump(cmd: &DumpCommand, on_step: &dyn Fn(&str)) -> Result<LazyDumped, CommandError> {
    let (store, req) = prepare(cmd)?;
    if req.lazy.is_none() {
        return Err(worker::WorkerError::Internal("not a lazy checkpoint request").into());
    }
    let stop = stop_on_signals();
    let (o, w) = run(&req, &stop, on_step)?;
    let worker = w.ok_or(worker::WorkerError::Internal(
        "no worker serves the lazy dump",
    ))?;
    let addr = o.serve_addr.clone().unwrap_or_default();
    let set = store.load_set(&o.set)?;
    Ok(LazyDumped {
        set,
        addr,
        outcome: o,
        worker,
        stop,
        store,
        keep: cmd.keep,
    })
}

impl LazyDumped {
    /// Waits until the worker has ended serving: the source killed (a restore has every
    /// page), or resumed (rolled back), or gone.
    pub fn wait(self) -> Result<SourceEnded, CommandError> {
        let end = self.worker.wait(&self.stop)?;
        Ok(SourceEnded {
            end,
            store: self.store,
            job: self.set.job,
            keep: self.keep,
        })
    }
}

impl SourceEnded {
    /// Whether the migration happened: the restore had every page and the source was killed.
    pub fn killed(&self) -> bool {
        self.end.kind == SourceEndKind::Killed
    }

    /// Retention after a migration that happened (nothing otherwise): the sets removed.
    pub fn prune(&self) -> Result<Vec<String>, CommandError> {
        match self.keep {
            Some(k) if self.killed() => Ok(self.store.prune(&self.job, k)?),
            _ => Ok(Vec::new()),
        }
    }
}
