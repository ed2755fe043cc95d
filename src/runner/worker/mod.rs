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
//! lazy pages from the frozen target ([`serve_frozen`]) until the restore says `Done`
//! (the target is killed) or is not connected for `source_timeout`, or the worker is asked to
//! stop (the target is thawed: rolled back). A second line then says how the source ended.
//!
//! - this file: the protocol (request, answers) and the worker's error;
//! - `client`: the asking side (spawn, forward stop, read answers);
//! - `serve`: the worker's side (`haul __checkpoint-worker`);
//! - `source`: a lazy dump's frozen source behind the page server.

mod client;
mod serve;
mod source;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dump::{DumpError, DumpStats};
use crate::report::PredumpReport;
use crate::track::TrackerKind;

pub use client::{run_in_worker, Handover, Ran, SourceWorker};
pub use serve::worker_main;
pub use source::{serve_frozen, SourceEnd, SourceEndKind};

/// The hidden subcommand that runs a worker.
pub const WORKER_COMMAND: &str = "__checkpoint-worker";

/// Errors of the checkpoint worker: starting it, talking to it, and what it answered.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The frozen source of a lazy dump could not be read (the page server refuses the pages).
    #[error("reading pid {pid}")]
    LiveRead {
        pid: i32,
        #[source]
        source: crate::dump::DumpError,
    },
    #[error("cannot start the checkpoint worker {}: {source}", exe.display())]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sending the request to the worker: {0}")]
    Send(#[source] std::io::Error),
    #[error("no stdout of the worker")]
    NoStdout,
    #[error("waiting for the worker: {0}")]
    Wait(#[source] std::io::Error),
    #[error("the checkpoint worker ended ({0}) without an answer")]
    NoAnswer(std::process::ExitStatus),
    #[error("the checkpoint worker ended ({0}) without saying how the source ended")]
    NoSourceEnd(std::process::ExitStatus),
    #[error("the checkpoint worker answered out of order")]
    OutOfOrder,
    /// What the worker answered it failed with: its error chain, as text (it crossed a pipe).
    #[error("{0}")]
    Failed(String),
    /// A lazy dump's source ended otherwise than killed after `Done` (how, in words).
    #[error("{0}")]
    SourceNotKilled(String),
    #[error("encoding a worker message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("bad request: {0}")]
    BadRequest(#[source] serde_json::Error),
    #[error("reading the request: {0}")]
    ReadRequest(#[source] std::io::Error),
    #[error("cannot handle signal {signal}: {source}")]
    Signal {
        signal: i32,
        #[source]
        source: std::io::Error,
    },
    /// A broken invariant of haul itself (a bug).
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Xfer(#[from] crate::xfer::XferError),
}

/// What to checkpoint, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRequest {
    pub pid: i32,
    pub store: PathBuf,
    pub job: String,
    pub leave_running: bool,
    pub buffer: u64,
    /// A checkpoint that leaves the process running may read its memory from a fork
    /// (`dump.snapshot`).
    #[serde(default = "crate::job::defaults::snapshot")]
    pub snapshot: bool,
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
    /// Connections not yet accepted by a listener: refused or dropped (`dump.tcp_pending`).
    #[serde(default)]
    pub tcp_pending: crate::job::TcpPending,
    /// How established connections to peers outside the tree are held (`network.lock`).
    #[serde(default)]
    pub network_lock: crate::netlock::LockMode,
    /// A restore on this host takes the killed process's memory over
    /// (`DumpOptions::hand_keepers`): the worker hands its memory keeper over, and names it
    /// in an [`Answer::Handed`] line once every death is collected.
    #[serde(default)]
    pub hand_keepers: bool,
}

impl CheckpointRequest {
    /// A request of this haul (the worker's parent) to checkpoint `pid` into `store` as a
    /// final dump of `job` with `compression`: killed once committed, a 1 GiB buffer, no
    /// pre-dumps, not lazy (the caller sets what it wants otherwise). The test switch
    /// `HAUL_FAIL_AT` is read here, the one place for a checkpoint.
    pub fn new(
        pid: i32,
        store: &std::path::Path,
        job: &str,
        compression: crate::job::Compression,
    ) -> CheckpointRequest {
        CheckpointRequest {
            pid,
            store: store.to_path_buf(),
            job: job.to_string(),
            leave_running: false,
            buffer: crate::dump::DumpOptions::default().buffer,
            snapshot: true,
            level: compression.level(),
            fail_at: crate::dump::Step::from_env().map(|s| s.name().to_string()),
            predump: None,
            parent: std::process::id() as i32,
            lazy: None,
            tcp_pending: crate::job::TcpPending::Refuse,
            network_lock: crate::netlock::LockMode::Nftables,
            hand_keepers: false,
        }
    }
}

/// How a lazy final dump's source is served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LazyServeRequest {
    /// Address to listen on (`127.0.0.1:0`: loopback, any free port).
    pub listen: String,
    /// Token clients must present; required for a non-loopback address.
    pub token: Option<Vec<u8>>,
    /// No restore connected for this long (µs): the source is thawed.
    pub source_timeout_us: u64,
}

/// The `[predump]` settings of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredumpRequest {
    pub interval_us: u64,
    pub max_iterations: u32,
    pub stop_below: u64,
    pub stop_growth: f64,
    /// None: the best tracker that works here.
    pub tracker: Option<TrackerKind>,
}

impl PredumpRequest {
    /// The request of a `[predump]` table (the job file's, or the one `haul dump --predump`
    /// builds): the one place a tracker choice becomes the worker's.
    pub fn from_spec(p: &crate::job::PredumpSpec) -> PredumpRequest {
        use crate::job::Tracker;
        PredumpRequest {
            interval_us: crate::util::us(p.interval.0),
            max_iterations: p.max_iterations,
            stop_below: p.stop_below.0,
            stop_growth: p.stop_growth,
            tracker: match p.tracker {
                Tracker::Auto => None,
                Tracker::UffdWp => Some(TrackerKind::UffdWp),
                Tracker::SoftDirty => Some(TrackerKind::SoftDirty),
                Tracker::Hash => Some(TrackerKind::Hash),
            },
        }
    }
}

/// What a checkpoint produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok(Box<CheckpointOutcome>),
    Error(String),
    /// After a lazy dump's `Ok`: how serving the frozen source ended.
    Source(SourceEnd),
    /// Before the first answer, any number of times: what the worker is doing now (each
    /// pre-dump as it is committed), for the asking haul's progress display.
    Step(String),
    /// After an `Ok` with `hand_keepers`, once every death is collected: the memory keepers
    /// handed over (detached, stopped) for the restore to adopt; the asking haul ends the
    /// ones it does not.
    Handed(Vec<i32>),
}

impl Answer {
    /// The line that carries it (no newline).
    fn encode(&self) -> Result<String, WorkerError> {
        serde_json::to_string(self).map_err(WorkerError::Encode)
    }

    /// An answer line; None for anything else the worker's stdout may carry.
    fn decode(line: &str) -> Option<Answer> {
        serde_json::from_str(line).ok()
    }

    /// The outcome of a first answer.
    fn outcome(self) -> Result<CheckpointOutcome, WorkerError> {
        match self {
            Answer::Ok(o) => Ok(*o),
            Answer::Error(e) => Err(WorkerError::Failed(e)),
            Answer::Source(_) | Answer::Step(_) | Answer::Handed(_) => Err(WorkerError::OutOfOrder),
        }
    }
}

/// Reads a request as the worker gets it on stdin.
fn decode_request(text: &str) -> Result<CheckpointRequest, WorkerError> {
    serde_json::from_str(text).map_err(WorkerError::BadRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CheckpointRequest {
        CheckpointRequest {
            pid: 4242,
            store: "/srv/store".into(),
            job: "web".into(),
            leave_running: true,
            buffer: 1 << 20,
            snapshot: false,
            level: Some(3),
            fail_at: None,
            predump: Some(PredumpRequest {
                interval_us: 1_000_000,
                max_iterations: 5,
                stop_below: 262_144,
                stop_growth: 1.1,
                tracker: Some(TrackerKind::SoftDirty),
            }),
            parent: 17,
            lazy: Some(LazyServeRequest {
                listen: "127.0.0.1:0".into(),
                token: Some(b"secret".to_vec()),
                source_timeout_us: 10_000_000,
            }),
            tcp_pending: crate::job::TcpPending::Drop,
            network_lock: crate::netlock::LockMode::None,
            hand_keepers: true,
        }
    }

    #[test]
    fn a_request_survives_the_pipe_unchanged() {
        let r = request();
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(decode_request(&text).unwrap(), r);
    }

    #[test]
    fn a_request_of_an_older_haul_without_lazy_is_read_as_not_lazy() {
        let mut v = serde_json::to_value(request()).unwrap();
        v.as_object_mut().unwrap().remove("lazy");
        let r = decode_request(&v.to_string()).unwrap();
        assert_eq!(r.lazy, None);
        assert_eq!(r.pid, 4242);
    }

    #[test]
    fn a_malformed_request_is_refused_with_its_parse_error() {
        let e = decode_request("{\"pid\": \"not a number\"}").unwrap_err();
        assert!(matches!(e, WorkerError::BadRequest(_)), "{e:?}");
        assert!(e.to_string().starts_with("bad request: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn each_answer_round_trips_on_one_line() {
        let answers = [
            Answer::Ok(Box::new(CheckpointOutcome {
                set: "web-1".into(),
                serve_addr: Some("127.0.0.1:7411".into()),
                ..Default::default()
            })),
            Answer::Error("dump of pid 1 failed".into()),
            Answer::Source(SourceEnd {
                kind: SourceEndKind::Thawed,
                detail: "no restore connected".into(),
                served_us: 5,
            }),
            Answer::Step("pre-dump 2 committed: 1049 pages written since pre-dump 1".into()),
        ];
        for a in answers {
            let line = a.encode().unwrap();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(Answer::decode(&line), Some(a));
        }
    }

    #[test]
    fn lines_that_are_not_answers_are_skipped() {
        assert_eq!(
            Answer::decode("warning: something the worker printed"),
            None
        );
        assert_eq!(Answer::decode("{\"unknown\": 1}"), None);
        assert_eq!(Answer::decode(""), None);
    }

    #[test]
    fn only_an_ok_first_answer_is_an_outcome() {
        let ok = Answer::Ok(Box::new(CheckpointOutcome {
            set: "s".into(),
            ..Default::default()
        }));
        assert_eq!(ok.outcome().unwrap().set, "s");
        let e = Answer::Error("pid 9: gone".into()).outcome().unwrap_err();
        assert_eq!(e.to_string(), "pid 9: gone");
        let src = Answer::Source(SourceEnd {
            kind: SourceEndKind::Killed,
            detail: String::new(),
            served_us: 0,
        });
        assert!(matches!(src.outcome(), Err(WorkerError::OutOfOrder)));
    }

    #[test]
    fn a_job_tracker_choice_becomes_the_workers() {
        use crate::job::{PredumpSpec, Tracker};
        let cases = [
            (Tracker::Auto, None),
            (Tracker::UffdWp, Some(TrackerKind::UffdWp)),
            (Tracker::SoftDirty, Some(TrackerKind::SoftDirty)),
            (Tracker::Hash, Some(TrackerKind::Hash)),
        ];
        for (t, want) in cases {
            let spec = PredumpSpec {
                tracker: t,
                ..Default::default()
            };
            let r = PredumpRequest::from_spec(&spec);
            assert_eq!(r.tracker, want, "{t:?}");
            assert_eq!(r.interval_us, crate::util::us(spec.interval.0));
            assert_eq!(r.stop_below, spec.stop_below.0);
        }
    }
}
