//! The job file schema (DESIGN.md §2): one type serves TOML parsing and defaults.
//!
//! Every section and key of DESIGN.md §2 is here, with the same spelling. Unknown keys are errors
//! (`deny_unknown_fields`). Values that need more than serde's checks (durations, sizes,
//! compression, cross-field rules) are checked in [`super::validate`].

use super::units::{Compression, Dur, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A whole job file, as written (before placeholders are expanded and paths resolved).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Default: the job file's stem.
    pub name: Option<String>,
    pub process: ProcessSpec,
    /// Absent: no pre-dumps.
    pub predump: Option<PredumpSpec>,
    #[serde(default)]
    pub dump: DumpSpec,
    /// Absent: no restore.
    pub restore: Option<RestoreSpec>,
    #[serde(default)]
    pub lazy: LazySpec,
    #[serde(default)]
    pub store: StoreSpec,
    #[serde(default)]
    pub report: ReportSpec,
    pub verify: Option<VerifySpec>,
    #[serde(default)]
    pub network: NetworkSpec,
}

/// `[network]`: how the process's established TCP connections to peers outside the
/// checkpoint are held while it is frozen and until its restored copy runs (issue #15).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// `"nftables"` (default): their packets are dropped by an nftables table of haul's own,
    /// so peers retransmit. `"none"`: no lock; a peer that sends meanwhile gets a reset.
    #[serde(default)]
    pub lock: crate::netlock::LockMode,
}

/// `[process]`: exactly one of `command`, `pid`, `pidfile`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Program and arguments to launch.
    pub command: Option<Vec<String>>,
    /// Attach to this running process.
    pub pid: Option<i64>,
    /// Attach to the process whose PID this file holds.
    pub pidfile: Option<PathBuf>,
    /// Working directory of a launched command (default: the job file's folder).
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where a launched command's stdout goes.
    #[serde(default)]
    pub stdout: Output,
    /// Where a launched command's stderr goes.
    #[serde(default)]
    pub stderr: Output,
    /// When the process counts as ready for the first stage, and how long to wait for it.
    pub ready: Option<ReadySpec>,
}

/// Destination of a launched process's stdout/stderr: `"log"` (a file in the run dir),
/// `"null"`, or a path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Output {
    #[default]
    Log,
    Null,
    Path(PathBuf),
}

impl Output {
    /// The file, when output goes to a path.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Output::Path(p) => Some(p),
            Output::Log | Output::Null => None,
        }
    }
}

/// The condition of `ready`: `{ after = "300ms" }`, `{ file = "..." }` or
/// `{ stdout_line = "ready" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ready {
    /// Ready after this delay.
    After(Dur),
    /// Ready once this file exists.
    File(PathBuf),
    /// Ready once the process prints a line containing this text on stdout.
    StdoutLine(String),
}

/// `ready = { ... }`: the condition, and for `file` / `stdout_line` how long to wait for it
/// (`timeout`; absent: [`defaults::ready_timeout`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadySpec {
    pub when: Ready,
    pub timeout: Option<Dur>,
}

impl ReadySpec {
    /// How long the runner waits for a `file` or `stdout_line` condition.
    pub fn timeout(&self) -> Dur {
        self.timeout.unwrap_or_else(defaults::ready_timeout)
    }
}

/// What `process.ready` may be (also the message when it is none of them).
pub(crate) const READY_FORMS: &str = "expected one of { after = \"300ms\" }, { file = \"...\" }, \
     { stdout_line = \"...\" } (file and stdout_line may add timeout = \"60s\")";

/// The keys of a `ready` table, in the order the docs list them.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ReadyKey {
    After,
    File,
    StdoutLine,
    Timeout,
}

impl<'de> Deserialize<'de> for ReadySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReadySpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table like { stdout_line = \"ready\" }")
            }
            fn visit_str<E: Error>(self, s: &str) -> Result<ReadySpec, E> {
                Err(E::unknown_variant(s, &["after", "file", "stdout_line"]))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReadySpec, A::Error> {
                let mut when = None;
                let mut timeout = None;
                while let Some(key) = map.next_key::<ReadyKey>()? {
                    let cond = match key {
                        ReadyKey::After => Ready::After(map.next_value()?),
                        ReadyKey::File => Ready::File(map.next_value()?),
                        ReadyKey::StdoutLine => Ready::StdoutLine(map.next_value()?),
                        ReadyKey::Timeout => {
                            timeout = Some(map.next_value()?);
                            continue;
                        }
                    };
                    if when.replace(cond).is_some() {
                        return Err(A::Error::custom(READY_FORMS));
                    }
                }
                let when = when.ok_or_else(|| A::Error::custom(READY_FORMS))?;
                Ok(ReadySpec { when, timeout })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ReadySpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        match &self.when {
            Ready::After(d) => m.serialize_entry("after", d)?,
            Ready::File(f) => m.serialize_entry("file", f)?,
            Ready::StdoutLine(l) => m.serialize_entry("stdout_line", l)?,
        }
        if let Some(t) = &self.timeout {
            m.serialize_entry("timeout", t)?;
        }
        m.end()
    }
}

/// `[predump]`: pre-copy iterations.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PredumpSpec {
    #[serde(default = "defaults::predump_interval")]
    pub interval: Dur,
    #[serde(default = "defaults::max_iterations")]
    pub max_iterations: u32,
    /// Converged: an iteration wrote less than this.
    #[serde(default = "defaults::stop_below")]
    pub stop_below: Size,
    /// Diverging: an iteration wrote this factor more than the last.
    #[serde(
        default = "defaults::stop_growth",
        deserialize_with = "super::units::finite"
    )]
    pub stop_growth: f64,
    #[serde(default)]
    pub tracker: Tracker,
}

impl Default for PredumpSpec {
    fn default() -> Self {
        PredumpSpec {
            interval: defaults::predump_interval(),
            max_iterations: defaults::max_iterations(),
            stop_below: defaults::stop_below(),
            stop_growth: defaults::stop_growth(),
            tracker: Tracker::default(),
        }
    }
}

/// Dirty-page tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tracker {
    #[default]
    Auto,
    UffdWp,
    SoftDirty,
    Hash,
}

/// `[dump]`: the final dump.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DumpSpec {
    /// false: stop the process after the dump (migration); true: leave it running.
    #[serde(default)]
    pub leave_running: bool,
    /// Memory for copied pages, so the freeze covers only the copy.
    #[serde(default = "defaults::buffer")]
    pub buffer: Size,
    /// With `leave_running`: read the launched process's memory after the thaw from a fork
    /// of it made under the freeze (`dump::snapshot`), rather than copy it into `buffer`
    /// while frozen.
    #[serde(default = "defaults::snapshot")]
    pub snapshot: bool,
    /// The final dump leaves pages to be served lazily.
    #[serde(default)]
    pub lazy: bool,
    /// Connections waiting in a TCP listen queue (not yet accepted): refused by name, or
    /// dropped with a warning (their clients see a reset).
    #[serde(default)]
    pub tcp_pending: TcpPending,
}

/// `dump.tcp_pending`: what a dump does with connections not yet accepted by a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcpPending {
    /// The dump is refused, naming the listener and how many wait.
    #[default]
    Refuse,
    /// They are dropped, with a warning in the report.
    Drop,
}

impl Default for DumpSpec {
    fn default() -> Self {
        DumpSpec {
            leave_running: false,
            buffer: defaults::buffer(),
            snapshot: defaults::snapshot(),
            lazy: false,
            tcp_pending: TcpPending::Refuse,
        }
    }
}

/// `[restore]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    #[serde(default)]
    pub mode: RestoreMode,
    #[serde(default)]
    pub pid: PidPolicy,
    /// `"store"` or `"host:port"` of a page server.
    #[serde(default = "defaults::from")]
    pub from: String,
    /// With `from = "host:port"`: a file holding the page server's token (relative to the job
    /// file's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Where a terminal the process was started on (outside the checkpoint) goes: `"inherit"`
    /// (haul's own terminal) or `"new"` (a new pty haul serves). Absent: such a terminal is
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtyPolicy>,
    /// An eager restore from the store with `pid = "same"` right after a dump that stopped a
    /// lone process: the restored process takes that process's memory over from its memory
    /// keeper (`restore::adopt`) instead of having it written again from the set, when it can
    /// (else the memory is written from the set, as with `false`).
    #[serde(default = "defaults::adopt_memory")]
    pub adopt_memory: bool,
}

impl Default for RestoreSpec {
    fn default() -> Self {
        RestoreSpec {
            mode: RestoreMode::default(),
            pid: PidPolicy::default(),
            from: defaults::from(),
            token_file: None,
            tty: None,
            adopt_memory: defaults::adopt_memory(),
        }
    }
}

impl RestoreSpec {
    /// `(host, port)` when `from` names a page server; `None` for `"store"`.
    pub fn page_server(&self) -> Option<(&str, u16)> {
        super::validate::parse_host_port(&self.from)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    #[default]
    Eager,
    Lazy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PidPolicy {
    #[default]
    Same,
    Any,
}

/// `restore.tty`: where a terminal outside the checkpoint goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtyPolicy {
    /// The terminal of haul itself (a shell job).
    Inherit,
    /// A new pty whose master haul serves.
    New,
}

/// `[lazy]`: post-copy policy.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LazySpec {
    /// When the remaining pages are pushed; absent: see [`LazySpec::push_policy`].
    #[serde(default)]
    pub push: Option<LazyPush>,
    /// Absent: [`defaults::idle_push`] (and, without `push`, the continuous push).
    #[serde(default)]
    pub idle_push: Option<Dur>,
    #[serde(default = "defaults::prefetch")]
    pub prefetch: u32,
    #[serde(default)]
    pub order: LazyOrder,
    #[serde(default = "defaults::source_timeout")]
    pub source_timeout: Dur,
}

impl Default for LazySpec {
    fn default() -> Self {
        LazySpec {
            push: None,
            idle_push: None,
            prefetch: defaults::prefetch(),
            order: LazyOrder::default(),
            source_timeout: defaults::source_timeout(),
        }
    }
}

impl LazySpec {
    /// The push policy: `push` as written; without it, `idle` when `idle_push` is given (what
    /// a job file meant before `push` existed), else `continuous`.
    pub fn push_policy(&self) -> LazyPush {
        self.push.unwrap_or(if self.idle_push.is_some() {
            LazyPush::Idle
        } else {
            LazyPush::Continuous
        })
    }

    /// `idle_push`, or its default.
    pub fn idle_push(&self) -> Dur {
        self.idle_push.unwrap_or_else(defaults::idle_push)
    }
}

/// `lazy.push`: when the pages no fault asked for are pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LazyPush {
    /// Between faults, from the moment the process runs.
    Continuous,
    /// After `idle_push` without a fault.
    Idle,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LazyOrder {
    Address,
    #[default]
    HotFirst,
}

/// `[store]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// Default: `$HAUL_STORE`, else `./haul-store` (relative to the job file's folder).
    /// `s3://bucket/prefix` puts the store in an S3-compatible bucket.
    pub path: Option<PathBuf>,
    /// The S3 endpoint of an `s3://` store (`http://host:port` for MinIO, Ceph, Garage, ...).
    /// Default: `$AWS_ENDPOINT_URL`, else AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region of an `s3://` store. Default: `$AWS_REGION`, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`). Default: true with an endpoint, false
    /// (virtual-hosted) for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// The local cache of an `s3://` store. Default: `$HAUL_CACHE_DIR/s3/...`, else
    /// `~/.cache/haul/s3/...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
    /// Credentials are refused in a job file (they come from the environment or a credentials
    /// file); these keys exist only to say so by name.
    #[serde(default, skip_serializing)]
    pub access_key_id: Option<toml::Value>,
    #[serde(default, skip_serializing)]
    pub secret_access_key: Option<toml::Value>,
    #[serde(default, skip_serializing)]
    pub session_token: Option<toml::Value>,
    #[serde(default)]
    pub compression: Compression,
    /// Image sets of this job to keep; older ones are pruned. Absent: keep all.
    pub keep: Option<u32>,
}

/// `[report]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    #[serde(default = "defaults::report_dir")]
    pub dir: PathBuf,
    /// Default: `<dir>/history.jsonl` (filled in when the job is loaded).
    pub history: Option<PathBuf>,
    /// A `.prom` file the last run's figures are written to in the Prometheus text format
    /// (node_exporter's textfile collector). Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<PathBuf>,
    /// Also write each run's report as a self-contained HTML page with charts, beside its
    /// JSON (`<dir>/<job>-<run>.html`).
    #[serde(default)]
    pub html: bool,
}

impl Default for ReportSpec {
    fn default() -> Self {
        ReportSpec {
            dir: defaults::report_dir(),
            history: None,
            metrics: None,
            html: false,
        }
    }
}

/// `[verify]`: judge the restored process.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    pub command: Vec<String>,
    pub expect_stdout: Option<String>,
    #[serde(default = "defaults::verify_timeout")]
    pub timeout: Dur,
    /// Before the restored process runs, compare what `/proc` shows of it with what the dump
    /// recorded (`haul restore --verify state`); a difference fails the restore and the
    /// process is killed.
    #[serde(default)]
    pub state: bool,
}

/// Defaults of DESIGN.md §2, in one place.
pub mod defaults {
    use super::*;
    use std::time::Duration;

    pub fn predump_interval() -> Dur {
        Dur(Duration::from_secs(1))
    }
    pub fn max_iterations() -> u32 {
        8
    }
    pub fn stop_below() -> Size {
        Size(256 * 1024)
    }
    pub fn stop_growth() -> f64 {
        1.1
    }
    pub fn buffer() -> Size {
        Size(1 << 30)
    }
    pub fn snapshot() -> bool {
        true
    }
    pub fn adopt_memory() -> bool {
        true
    }
    pub fn from() -> String {
        "store".into()
    }
    pub fn idle_push() -> Dur {
        Dur(Duration::from_secs(5))
    }
    pub fn prefetch() -> u32 {
        16
    }
    pub fn source_timeout() -> Dur {
        Dur(Duration::from_secs(10))
    }
    pub fn report_dir() -> PathBuf {
        PathBuf::from("reports")
    }
    /// The history's file name inside `report.dir` when `report.history` is not given.
    pub const HISTORY_FILE: &str = "history.jsonl";
    /// How long `ready.file` / `ready.stdout_line` is waited for.
    pub fn ready_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn verify_timeout() -> Dur {
        Dur(Duration::from_secs(10))
    }
}
