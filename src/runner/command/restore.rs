//! `haul restore SET [--lazy]`: the restore stage of a job, for a set given by hand, with the
//! same restore options ([`crate::runner::stages::restore_options`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::CommandError;
use crate::image::ImageSet;
use crate::job::PidPolicy;
use crate::lazy::{LazyOptions, LazyRestore, LazySource, PushPolicy};
use crate::report::LazyReport;
use crate::restore::{PageSource, RestoreOutcome};
use crate::runner::stages::restore_options;
use crate::store::Store;
use crate::xfer::{RemoteSource, XferError};

/// What `haul restore SET` was asked.
#[derive(Clone, Debug)]
pub struct RestoreCommand {
    pub set: String,
    pub store: PathBuf,
    pub pid: PidPolicy,
    /// `--verify state`.
    pub verify_state: bool,
    /// `--tty`: where a terminal outside the checkpoint goes.
    pub tty: Option<crate::job::TtyPolicy>,
    /// `--network-lock`.
    pub network_lock: crate::netlock::LockMode,
}

/// A restored process, and the set it came from.
#[derive(Debug)]
pub struct Restored {
    pub set: ImageSet,
    pub outcome: RestoreOutcome,
    /// With `--tty`: the terminal it was given, to serve until it exits
    /// ([`super::tty::Terminal::serve`]).
    pub terminal: Option<super::tty::Terminal>,
}

/// `haul restore SET`: an eager restore from the store.
pub fn restore(cmd: &RestoreCommand) -> Result<Restored, CommandError> {
    let store = Store::open(&cmd.store)?;
    let set = store.load_set(&cmd.set)?;
    let mut opts = restore_options(cmd.pid, cmd.verify_state);
    opts.network_lock = cmd.network_lock;
    let terminal = super::tty::prepare(cmd.tty, &set)?;
    opts.tty = terminal.as_ref().map(|t| t.target());
    let outcome = crate::restore::restore(&set, &store, &opts)?;
    Ok(Restored {
        set,
        outcome,
        terminal,
    })
}

/// What `haul restore SET --lazy` was asked.
#[derive(Clone, Debug)]
pub struct LazyRestoreCommand {
    pub restore: RestoreCommand,
    /// `--from HOST:PORT`: the manifest and the pages come from a page server.
    pub from: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `--push`, resolved (`--idle-push` alone means idle).
    pub push: PushPolicy,
    /// `--idle-push` (its default when not given); only the idle push waits for it.
    pub idle_push: Duration,
    pub prefetch: u32,
    pub source_timeout: Duration,
}

/// A lazily restored process that runs while its daemon serves its memory.
pub struct LazyRunning {
    pub set: Arc<ImageSet>,
    pub restore: LazyRestore,
    /// With a page server: kept to say `Done` once every page is resident (a server serving
    /// a frozen source, `haul dump --lazy`, then kills it).
    remote: Option<Arc<RemoteSource>>,
}

/// How a lazy restore ended.
pub struct LazyRestored {
    pub report: LazyReport,
    /// Whether the page server heard `Done` (its answer), when there is one and every page
    /// came.
    pub released: Option<Result<String, XferError>>,
}

/// `haul restore SET --lazy [--from HOST:PORT]`: returns as soon as the process runs; its
/// memory is served until [`LazyRunning::wait`].
pub fn lazy_restore(cmd: &LazyRestoreCommand) -> Result<LazyRunning, CommandError> {
    let r = &cmd.restore;
    let mut opts = restore_options(r.pid, r.verify_state);
    opts.network_lock = r.network_lock;
    let lopts = LazyOptions {
        push: cmd.push,
        idle_push: cmd.idle_push,
        prefetch: cmd.prefetch,
        source_timeout: cmd.source_timeout,
        ..Default::default()
    };
    let mut remote = None;
    let (set, eager, lazy): (_, Eager, Box<dyn LazySource>) = match &cmd.from {
        Some(addr) => {
            let token = match &cmd.token_file {
                Some(f) => crate::xfer::read_token_file(f)?,
                None => Vec::new(),
            };
            let eager = RemoteSource::new(addr, token.clone(), cmd.source_timeout);
            // A lazy dump's pages are served by its frozen source, which this server is then.
            let set = eager.manifest(&r.set)?;
            let lazy = Arc::new(RemoteSource::new(addr, token, cmd.source_timeout));
            remote = Some(lazy.clone());
            (set, Eager::Remote(Box::new(eager)), Box::new(lazy))
        }
        None => {
            let store = Arc::new(Store::open(&r.store)?);
            let set = store.load_set(&r.set)?;
            if set.figures.pages_lazy > 0 {
                return Err(CommandError::LazyPagesElsewhere {
                    set: set.id,
                    pages: set.figures.pages_lazy,
                });
            }
            let lazy = crate::lazy::StoreSource::new(store.clone());
            (set, Eager::Store(store), Box::new(lazy))
        }
    };
    let set = Arc::new(set);
    let restore = crate::lazy::restore_lazy(&set, eager.source(), lazy, &opts, &lopts)?;
    Ok(LazyRunning {
        set,
        restore,
        remote,
    })
}

impl LazyRunning {
    /// Waits until every page is resident (or the source was lost: the process was killed),
    /// then tells a page server `Done`.
    pub fn wait(self) -> Result<LazyRestored, CommandError> {
        let report = self.restore.wait()?;
        let released = match (&report.source_lost, &self.remote) {
            (None, Some(r)) => Some(r.done(&self.set.id)),
            _ => None,
        };
        Ok(LazyRestored { report, released })
    }
}

/// Where the eager part of a lazy restore comes from.
enum Eager {
    Remote(Box<RemoteSource>),
    /// Shared with the daemon's source.
    Store(Arc<Store>),
}

impl Eager {
    fn source(&self) -> &dyn PageSource {
        match self {
            Eager::Remote(r) => &**r,
            Eager::Store(s) => &**s,
        }
    }
}
