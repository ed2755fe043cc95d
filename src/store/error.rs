//! The errors of the store: what failed, on which file, page, set or pack.

use super::footer::PackId;
use crate::image::encode::EncodeError;
use crate::image::{PageId, PAGE_SIZE};
use std::path::PathBuf;
use std::time::Duration;

/// Where a page that could not be read was: the set and address when known, and the pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageAt {
    pub set: Option<String>,
    pub page: PageId,
    pub addr: Option<u64>,
    pub pack: Option<PackId>,
}

impl std::fmt::Display for PageAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = &self.set {
            write!(f, "set {s}: ")?;
        }
        write!(f, "page {}", self.page)?;
        if let Some(a) = self.addr {
            write!(f, " at {a:#x}")?;
        }
        if let Some(p) = &self.pack {
            write!(f, " in pack {p}")?;
        }
        Ok(())
    }
}

/// Errors of the `store` module.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: no space left on the device; nothing was committed and the store is still consistent (run `haul images gc` after freeing space)")]
    DiskFull {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a haul store: {reason}")]
    NotAStore { path: PathBuf, reason: String },
    #[error("store {path} has format version {found}, newer than this haul supports ({supported}); upgrade haul")]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("store {path} was made for {found}-byte pages; this machine uses {expected}")]
    PageSize {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error("store {path} is in use by a writer; {what} waited {} and gave up (try again when the dump is done)", humantime::format_duration(*waited))]
    Locked {
        path: PathBuf,
        what: String,
        waited: Duration,
    },
    #[error("no image set {id} in store {store}")]
    SetNotFound { id: String, store: PathBuf },
    #[error("invalid job name {job:?}: {reason}")]
    BadJobName { job: String, reason: String },
    #[error("manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: EncodeError,
    },
    #[error("{at}: content does not match its id (the pack is corrupt)")]
    PageCorrupt { at: PageAt },
    #[error("{at}: the pack is missing from the store")]
    PackMissing { at: PageAt },
    #[error("{at}: not found in the store")]
    PageMissing { at: PageAt },
    #[error("{at}: {problem}")]
    PageUnreadable { at: PageAt, problem: String },
    #[error("page at {addr:#x} of the new set names page {page}, which is not in the store")]
    RefNotStored { addr: u64, page: PageId },
    #[error("gc refused: {reason}")]
    GcRefused { reason: String },
    #[error("set writer failed: {0}")]
    Writer(String),
    /// The set writer was dropped without a commit (nothing was written).
    #[error("set writer failed: set abandoned")]
    Abandoned,
    /// A store thread panicked: what it was doing is lost, and so is the result.
    #[error("the {thread} thread panicked: {message}")]
    Panicked {
        thread: &'static str,
        message: String,
    },
    #[error(
        "add_pages: {addrs} addresses but {bytes} bytes of data (need {PAGE_SIZE} per address)"
    )]
    BatchShape { addrs: usize, bytes: usize },
    /// A request to a bucket store's bucket failed (boxed: it is large).
    #[error(transparent)]
    Bucket(Box<super::bucket::BucketError>),
    #[error("bench store: a {size}-byte image is too small to measure; the least is {min} bytes")]
    BenchTooSmall { size: u64, min: u64 },
}

impl From<super::bucket::BucketError> for StoreError {
    fn from(e: super::bucket::BucketError) -> StoreError {
        StoreError::Bucket(Box::new(e))
    }
}

impl StoreError {
    /// An I/O error with context; ENOSPC becomes [`StoreError::DiskFull`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        let context = context.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            StoreError::DiskFull { context, source }
        } else {
            StoreError::Io { context, source }
        }
    }

    /// The same error with the set (and address, when not known yet) named.
    pub(crate) fn in_set(self, set: &str, addr: Option<u64>) -> StoreError {
        let fill = |mut at: PageAt| {
            at.set.get_or_insert_with(|| set.to_string());
            if at.addr.is_none() {
                at.addr = addr;
            }
            at
        };
        match self {
            StoreError::PageCorrupt { at } => StoreError::PageCorrupt { at: fill(at) },
            StoreError::PackMissing { at } => StoreError::PackMissing { at: fill(at) },
            StoreError::PageMissing { at } => StoreError::PageMissing { at: fill(at) },
            StoreError::PageUnreadable { at, problem } => StoreError::PageUnreadable {
                at: fill(at),
                problem,
            },
            e => e,
        }
    }
}

/// The error of a thread that panicked with `payload`, naming the thread.
pub(super) fn panicked(payload: Box<dyn std::any::Any + Send>, thread: &'static str) -> StoreError {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    };
    StoreError::Panicked { thread, message }
}

/// A joined thread's result, with a panic turned into [`StoreError::Panicked`].
pub(super) fn joined<T>(r: std::thread::Result<T>, thread: &'static str) -> Result<T, StoreError> {
    r.map_err(|p| panicked(p, thread))
}
