//! The error where the runner and `main.rs` meet: one variant per module whose error a command
//! of the binary can end with, each carrying that module's `thiserror` enum. Modules return
//! their own errors and never this one; `main.rs` is the one place that turns it into messages
//! and exit codes.

use thiserror::Error;

pub use crate::util::error_chain as chain;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Job(#[from] crate::job::JobError),
    #[error(transparent)]
    Run(#[from] crate::runner::RunError),
    #[error(transparent)]
    Worker(#[from] crate::runner::worker::WorkerError),
    #[error(transparent)]
    Command(#[from] crate::runner::CommandError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Sys(#[from] crate::sys::SysError),
    #[error(transparent)]
    Proc(#[from] crate::proc::ProcError),
    #[error(transparent)]
    Dump(#[from] crate::dump::DumpError),
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
    #[error(transparent)]
    Lazy(#[from] crate::lazy::LazyError),
    #[error(transparent)]
    Xfer(#[from] crate::xfer::XferError),
    #[error(transparent)]
    Track(#[from] crate::track::TrackError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[error(transparent)]
    Bench(#[from] crate::bench::BenchError),
    /// A result that could not be encoded as JSON for printing.
    #[error("encode JSON")]
    Json(#[source] serde_json::Error),
    /// A file a command writes (`haul man --dir`) could not be written.
    #[error("{context}: {source}")]
    Output {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A command-line argument that clap could not judge by itself.
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
