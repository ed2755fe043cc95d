//! Run reports (DESIGN.md §5): one JSON object per run (`report.dir/<job>-<run>.json`), one line
//! per run appended to the history file, and a readable rendering for `haul report`.
//!
//! Field names follow CRIU's stats where they mean the same; times are microseconds as `u64`.
//! Stages that did not run leave their figures at zero or their sections absent.

pub mod charts;
pub mod html;

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::util::{human_bytes, human_us, rfc3339_us};

pub mod metrics;

/// Errors of the `report` module.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a haul report: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: not a haul report line: {source}")]
    ParseLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// Drawing a chart of an HTML report failed (`report::charts`).
    #[error("draw the chart \"{chart}\": {source}")]
    Chart {
        chart: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReportError {
    let context = context.into();
    move |source| ReportError::Io { context, source }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    #[default]
    Ok,
    /// A stage failed; `errors` says why.
    Failed,
    /// The runner was asked to stop (SIGINT/SIGTERM).
    Interrupted,
}

/// The report of one run of one job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunReport {
    pub job: String,
    /// Run id (`yyyymmddThhmmssZ-xxxx`).
    pub run: String,
    pub job_file: String,
    pub run_dir: String,
    pub haul_version: String,
    pub kernel: String,
    pub host: String,
    pub started: String,
    pub started_us: u64,
    pub duration_us: u64,
    pub outcome: Outcome,
    pub errors: Vec<String>,
    /// What the dump dropped that the process had (datagrams queued in a UDP socket,
    /// connections not yet accepted with `dump.tcp_pending = "drop"`), one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// PID of the job's process (launched or attached).
    pub pid: Option<i32>,
    /// True when the process was attached by `pid`/`pidfile` rather than launched.
    pub attached: bool,
    /// Processes the dump checkpointed: the job's process and its descendants, zombies
    /// included (0: no dump ran, or a report from before trees).
    pub processes: u64,
    /// PID of the restored process, when a restore ran.
    pub restored_pid: Option<i32>,
    /// Each stage that ran, in order.
    pub stages: Vec<StageReport>,

    // CRIU-compatible figures (µs / pages).
    pub freezing_time: u64,
    pub frozen_time: u64,
    /// Of `frozen_time`, writing and committing the set before the process was killed (a
    /// migration kills it only once its set is durable); zero when it was left running.
    #[serde(default)]
    pub frozen_commit_time: u64,
    pub memdump_time: u64,
    pub memwrite_time: u64,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
    /// Of `pages_written`, those read after the thaw from a fork of the process made under
    /// the freeze (`dump.snapshot`); 0: none was made.
    #[serde(default)]
    pub pages_from_snapshot: u64,
    pub restore_time: u64,
    pub pages_restored: u64,
    /// The restored process took the memory of the process the dump stopped over from its
    /// memory keeper (`restore.adopt_memory`): no page was written from the set
    /// (`pages_restored` is 0).
    #[serde(default)]
    pub memory_adopted: bool,
    /// From the start of the restore until the restored process runs (µs).
    pub time_to_running: u64,
    /// How long the dump's network lock held the connections to peers outside the tree
    /// (µs): from its taking under the freeze to the thaw, or to the kill (it is then kept
    /// until the restore runs the copy). 0: no lock (none needed, or `network.lock = "none"`).
    #[serde(default)]
    pub lock_time: u64,
    /// How long the restore's network lock held them (µs), until the restored tree ran.
    #[serde(default)]
    pub restore_lock_time: u64,

    /// A dump that stopped the process and a restore that ran its copy (or a dump that left
    /// it running): where the pause went, phase by phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseReport>,
    pub predump: Option<PredumpReport>,
    pub store: Option<StoreFigures>,
    pub lazy: Option<LazyReport>,
    /// Lazy final dump (`dump.lazy`): where the frozen source served its pages and how it
    /// ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceReport>,
    pub verify: Option<VerifyReport>,
}

/// A named instant of a checkpoint: `CLOCK_MONOTONIC` µs, which haul and its checkpoint worker
/// share (`sys::clock::monotonic_us`). Each mark starts a phase that lasts until the next.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mark {
    pub name: String,
    pub at_us: u64,
}

/// The pause of the process as a timeline: from the freeze to the process (or its restored
/// copy) running again, every phase in between, back to back.
///
/// Phases, in order (those that did not happen are absent): `freeze` (every thread stopped),
/// `state` (registers, /proc, injected calls), `copy` (the last tracking round and the memory
/// copy; a dump that stops the process writes its pages into the set, hashed and compressed,
/// as they are copied), `write` (the pages still buffered, and the references carried from
/// the pre-dumps, into the set), `commit` (the
/// manifest, durable), `kill` (SIGKILL to every process), `reap`
/// (their deaths collected: each exit frees its memory), `handover` (the checkpoint worker's answer reaching haul), `load`
/// (haul reading the set's manifest), `release` (the killed tree's pids free again),
/// `restore` (the copy built: create, map, fill), and for a dump that leaves the process
/// running, `thaw`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PauseReport {
    /// From the freeze to running again (µs).
    pub pause_us: u64,
    pub phases: Vec<PausePhase>,
}

/// One phase of a [`PauseReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PausePhase {
    pub name: String,
    /// From the freeze (µs).
    pub start_us: u64,
    pub duration_us: u64,
}

impl PauseReport {
    /// The timeline between the first mark and the mark `running`, or None when the process
    /// never ran again (or nothing was marked). Marks out of order are put in order.
    pub fn from_marks(marks: &[Mark]) -> Option<PauseReport> {
        let mut m: Vec<&Mark> = marks.iter().collect();
        m.sort_by_key(|x| x.at_us);
        let end = m.iter().position(|x| x.name == "running")?;
        let first = m.first()?.at_us;
        let phases = m[..=end]
            .windows(2)
            .map(|w| PausePhase {
                name: w[0].name.clone(),
                start_us: w[0].at_us - first,
                duration_us: w[1].at_us - w[0].at_us,
            })
            .collect();
        Some(PauseReport {
            pause_us: m[end].at_us - first,
            phases,
        })
    }
}

/// One stage of the job lifecycle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageReport {
    pub name: String,
    pub duration_us: u64,
    pub ok: bool,
    /// What the stage did or why it failed, in a few words.
    pub detail: String,
}

/// Pre-copy figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PredumpReport {
    /// `uffd-wp`, `soft-dirty` or `hash`.
    pub tracker: String,
    /// Why `auto` chose that tracker.
    pub tracker_reason: String,
    pub iterations: Vec<IterationReport>,
    /// Why pre-dumping stopped: converged, diverging, max_iterations, ...
    pub stop_reason: String,
}

/// One pre-dump iteration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IterationReport {
    pub index: u32,
    pub set: String,
    pub duration_us: u64,
    /// Zero where the iteration did not freeze the process.
    pub frozen_time: u64,
    pub pages_scanned: u64,
    /// Pages written (dirty) since the previous iteration.
    pub pages_written: u64,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    pub bytes_new: u64,
}

/// Store figures of the run's final image set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreFigures {
    pub path: String,
    pub set: String,
    pub bytes_logical: u64,
    pub bytes_stored: u64,
    pub bytes_new: u64,
    /// Bytes of all packs and manifests of the store after the run.
    pub bytes_on_disk: u64,
    /// bytes_logical / bytes_stored of this set.
    pub compression_ratio: f64,
    /// Stored bytes the set references over the new bytes it added (1.0 = nothing shared).
    pub dedup_ratio: f64,
    /// Sets removed by retention (`store.keep`).
    pub pruned: Vec<String>,
}

/// Post-copy figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LazyReport {
    pub faults_served: u64,
    pub fault_latency_p50: u64,
    pub fault_latency_p99: u64,
    /// Pages placed after a faulting page (stored ones, and zero pages in the window).
    pub pages_prefetched: u64,
    /// Pages the push copied in: the stored ones, and short runs of zero pages between them
    /// (one large copy instead of many small ones).
    pub pages_pushed: u64,
    pub time_to_all_resident: u64,
    pub bytes_network: u64,
    /// Order the push went in: `hot-first` (most often dirtied in the pre-dumps first) or
    /// `address` (asked for, or no pre-dump history to go by: then it says so).
    pub push_order: String,
    /// Set when the page source was lost and the process was killed.
    pub source_lost: Option<String>,
    /// When the push ran: `continuous` (between faults from the start) or `idle` (after
    /// `lazy.idle_push` without a fault).
    pub push_policy: String,
    /// Residency over time: pages of the tree no longer missing, sampled from the moment the
    /// restored processes ran (at most every 50 ms while it changes, and at the end).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resident: Vec<ResidentSample>,
    /// How long the faults took to serve, in log2 buckets (see [`LatencyBucket`]): from the
    /// smallest to the largest bucket that holds a fault, the empty ones between included.
    /// Empty when no fault was served (and in reports from before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fault_latency_histogram: Vec<LatencyBucket>,
}

/// One bucket of [`LazyReport::fault_latency_histogram`]: the faults served in `min_us..=max_us`
/// µs. Bucket 0 is `0..=1`, bucket k `2^(k-1)+1 ..= 2^k`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyBucket {
    pub min_us: u64,
    pub max_us: u64,
    pub count: u64,
}

impl LatencyBucket {
    /// The log2 histogram of `latencies` (µs): empty for no latency.
    pub fn log2_histogram(latencies: &[u64]) -> Vec<LatencyBucket> {
        // Bucket of v: the least k with v <= 2^k (0 and 1 in bucket 0).
        let bucket = |v: u64| match v {
            0 | 1 => 0,
            v => 64 - (v - 1).leading_zeros() as usize,
        };
        let mut counts = [0u64; 65];
        for &v in latencies {
            counts[bucket(v)] += 1;
        }
        let Some(first) = counts.iter().position(|&c| c > 0) else {
            return Vec::new();
        };
        let last = counts.iter().rposition(|&c| c > 0).unwrap_or(first);
        (first..=last)
            .map(|k| LatencyBucket {
                min_us: if k == 0 { 0 } else { (1u64 << (k - 1)) + 1 },
                max_us: if k == 64 { u64::MAX } else { 1u64 << k },
                count: counts[k],
            })
            .collect()
    }
}

/// One sample of [`LazyReport::resident`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResidentSample {
    /// µs since the restored processes started running.
    pub at_us: u64,
    /// Lazy pages no longer missing by then (copied in, or their mapping or process gone).
    pub pages: u64,
}

impl LazyReport {
    /// When the share `percent` (of the last sample, which is every page once the restore
    /// completed) was resident: µs since running, from [`LazyReport::resident`].
    pub fn resident_at(&self, percent: u64) -> Option<u64> {
        let total = self.resident.last()?.pages;
        let want = (total * percent).div_ceil(100);
        self.resident
            .iter()
            .find(|s| s.pages >= want)
            .map(|s| s.at_us)
    }
}

/// The frozen source of a lazy final dump (`dump.lazy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceReport {
    /// The address the checkpoint worker served the source's pages on.
    pub serve_addr: String,
    /// How the source ended: `killed` (the restore had every page), `thawed` (rolled back:
    /// it runs on), `gone` (killed by something else); empty if unknown.
    pub ended: String,
    /// Why, in a few words.
    pub detail: String,
    /// How long the source was served (µs).
    pub served_us: u64,
}

/// Outcome of the `[verify]` command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyReport {
    pub command: Vec<String>,
    pub passed: bool,
    pub exit_code: Option<i32>,
    pub stdout: String,
    /// Why it failed, when it did.
    pub reason: String,
    /// `[verify] state`: the restored process was compared with the image before it ran.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub state: bool,
    /// The fields that differed (`field: was X, now Y`); the process was killed before it ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state_differences: Vec<String>,
}

impl RunReport {
    /// A report for a run that starts now.
    pub fn new(job: &str, run: &str, job_file: &Path, run_dir: &Path) -> RunReport {
        let started_us = crate::util::now_us();
        RunReport {
            job: job.into(),
            run: run.into(),
            job_file: job_file.display().to_string(),
            run_dir: run_dir.display().to_string(),
            haul_version: env!("CARGO_PKG_VERSION").into(),
            kernel: crate::util::kernel_release(),
            host: crate::util::hostname(),
            started: rfc3339_us(started_us),
            started_us,
            ..RunReport::default()
        }
    }

    /// Records a failure: the outcome becomes `failed` (unless already interrupted).
    pub fn fail(&mut self, message: impl Into<String>) {
        if self.outcome == Outcome::Ok {
            self.outcome = Outcome::Failed;
        }
        self.errors.push(message.into());
    }

    /// Writes `<dir>/<job>-<run>.json` (atomically) and appends one line to `history`.
    /// Returns the report's path.
    pub fn write(&self, dir: &Path, history: &Path) -> Result<PathBuf, ReportError> {
        let path = self.write_json(dir)?;
        self.append_history(history)?;
        Ok(path)
    }

    /// Writes `<dir>/<job>-<run>.json` (atomically); returns its path.
    pub fn write_json(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        fs::create_dir_all(dir).map_err(io(format!("create report dir {}", dir.display())))?;
        let path = dir.join(format!("{}-{}.json", self.job, self.run));
        let tmp = dir.join(format!(".{}-{}.json.tmp", self.job, self.run));
        let json = serde_json::to_vec_pretty(self).map_err(|e| ReportError::Io {
            context: "encode report".into(),
            source: e.into(),
        })?;
        fs::write(&tmp, &json).map_err(io(format!("write {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))?;
        Ok(path)
    }

    /// Appends the report as one line to the history file `history`.
    pub fn append_history(&self, history: &Path) -> Result<(), ReportError> {
        if let Some(parent) = history.parent() {
            fs::create_dir_all(parent)
                .map_err(io(format!("create history dir {}", parent.display())))?;
        }
        let mut line = serde_json::to_vec(self).map_err(|e| ReportError::Io {
            context: "encode report".into(),
            source: e.into(),
        })?;
        line.push(b'\n');
        // One write(2) of the whole line on an O_APPEND file: concurrent runs never interleave
        // within a line.
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(history)
            .map_err(io(format!("open history {}", history.display())))?;
        f.write_all(&line)
            .map_err(io(format!("append to {}", history.display())))?;
        Ok(())
    }
}

/// What every report haul writes has, whatever its version: every other field may be absent
/// (a report of an older haul, a stage that did not run), these may not. Parsed before the
/// report itself, so that a JSON object that is not a report (`{"garbage": 1}`) is refused
/// instead of becoming an empty report with outcome `ok`.
#[derive(Deserialize)]
struct Required {
    #[serde(rename = "job")]
    _job: String,
    #[serde(rename = "run")]
    _run: String,
}

/// One report from JSON text: the required fields first, then the whole report.
fn parse_report(text: &str) -> Result<RunReport, serde_json::Error> {
    serde_json::from_str::<Required>(text)?;
    serde_json::from_str(text)
}

/// Reads a report file: one JSON report, or a history file (JSON lines). A line (or file) that
/// is not a report is an error naming the file and the line.
pub fn load(path: &Path) -> Result<Vec<RunReport>, ReportError> {
    let text = fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') && !looks_like_jsonl(trimmed) {
        let r = parse_report(&text).map_err(|source| ReportError::Parse {
            path: path.into(),
            source,
        })?;
        return Ok(vec![r]);
    }
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let r = parse_report(l).map_err(|source| ReportError::ParseLine {
            path: path.into(),
            line: i + 1,
            source,
        })?;
        out.push(r);
    }
    Ok(out)
}

/// A history file has one complete object per line; a pretty report spans many lines.
fn looks_like_jsonl(text: &str) -> bool {
    text.lines()
        .next()
        .is_some_and(|l| l.trim_end().ends_with('}'))
}

/// A readable summary of one report.
pub fn render(r: &RunReport) -> String {
    let mut s = String::new();
    let outcome = match r.outcome {
        Outcome::Ok => "ok",
        Outcome::Failed => "FAILED",
        Outcome::Interrupted => "INTERRUPTED",
    };
    let _ = writeln!(
        s,
        "job {}  run {}  {}  ({})",
        r.job,
        r.run,
        outcome,
        human_us(r.duration_us)
    );
    let _ = writeln!(
        s,
        "  started {} on {} (kernel {})",
        r.started, r.host, r.kernel
    );
    if let Some(pid) = r.pid {
        let how = if r.attached { "attached" } else { "launched" };
        let tree = match r.processes {
            0 | 1 => String::new(),
            n => format!(", a tree of {n} processes"),
        };
        let _ = writeln!(s, "  process {pid} ({how}){tree}");
    }
    for e in &r.errors {
        let _ = writeln!(s, "  error: {e}");
    }
    for w in &r.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    if !r.stages.is_empty() {
        let _ = writeln!(s, "  stages:");
        for st in &r.stages {
            let mark = if st.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(
                s,
                "    {mark} {:<10} {:>10}  {}",
                st.name,
                human_us(st.duration_us),
                st.detail
            );
        }
    }
    if let Some(p) = &r.predump {
        let _ = writeln!(
            s,
            "  pre-copy: tracker {} ({}), stopped: {}",
            p.tracker, p.tracker_reason, p.stop_reason
        );
        for it in &p.iterations {
            let _ = writeln!(
                s,
                "    #{:<2} {:>9}  frozen {:>8}  dirty {:>8} pages  new {}",
                it.index,
                human_us(it.duration_us),
                human_us(it.frozen_time),
                it.pages_written,
                human_bytes(it.bytes_new)
            );
        }
    }
    if r.frozen_time > 0 || r.pages_written > 0 {
        let _ = writeln!(
            s,
            "  dump: freezing {}  frozen {}{}  memdump {}  memwrite {}",
            human_us(r.freezing_time),
            human_us(r.frozen_time),
            if r.frozen_commit_time > 0 {
                format!(" (commit {})", human_us(r.frozen_commit_time))
            } else {
                String::new()
            },
            human_us(r.memdump_time),
            human_us(r.memwrite_time)
        );
        let _ = writeln!(
            s,
            "        pages scanned {}  written {}  skipped (parent) {}  lazy {}{}",
            r.pages_scanned,
            r.pages_written,
            r.pages_skipped_parent,
            r.pages_lazy,
            if r.pages_from_snapshot > 0 {
                format!("  from a fork {}", r.pages_from_snapshot)
            } else {
                String::new()
            }
        );
    }
    if let Some(p) = &r.pause {
        let _ = writeln!(s, "  pause: {}", human_us(p.pause_us));
        for ph in &p.phases {
            let _ = writeln!(
                s,
                "    {:<9} {:>10}  (at {})",
                ph.name,
                human_us(ph.duration_us),
                human_us(ph.start_us)
            );
        }
    }
    if let Some(st) = &r.store {
        let _ = writeln!(
            s,
            "  store {}: set {}  logical {}  stored {}  new {}  compression {:.2}x  dedup {:.2}x",
            st.path,
            st.set,
            human_bytes(st.bytes_logical),
            human_bytes(st.bytes_stored),
            human_bytes(st.bytes_new),
            st.compression_ratio,
            st.dedup_ratio
        );
        if !st.pruned.is_empty() {
            let _ = writeln!(s, "        pruned: {}", st.pruned.join(", "));
        }
    }
    if r.restore_time > 0 || r.restored_pid.is_some() {
        let pages = if r.memory_adopted {
            "memory adopted from its keeper".to_string()
        } else {
            format!("pages {}", r.pages_restored)
        };
        let _ = writeln!(
            s,
            "  restore: pid {}  {}  running after {}  {pages}",
            r.restored_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            human_us(r.restore_time),
            human_us(r.time_to_running),
        );
    }
    if r.lock_time > 0 || r.restore_lock_time > 0 {
        let _ = writeln!(
            s,
            "  network lock: dump {}  restore {}",
            human_us(r.lock_time),
            human_us(r.restore_lock_time)
        );
    }
    if let Some(l) = &r.lazy {
        let _ = writeln!(
            s,
            "  lazy: faults {}  p50 {}  p99 {}  prefetched {}  pushed {}, order: {}  all resident after {}",
            l.faults_served,
            human_us(l.fault_latency_p50),
            human_us(l.fault_latency_p99),
            l.pages_prefetched,
            l.pages_pushed,
            l.push_order,
            human_us(l.time_to_all_resident)
        );
        let mut line = String::new();
        if !l.push_policy.is_empty() {
            line = format!("push {}", l.push_policy);
        }
        if let (None, Some(half), Some(most), Some(all)) = (
            &l.source_lost,
            l.resident_at(50),
            l.resident_at(90),
            l.resident_at(100),
        ) {
            if !line.is_empty() {
                line += "; ";
            }
            line += &format!(
                "resident 50% at {}, 90% at {}, 100% at {} after running",
                human_us(half),
                human_us(most),
                human_us(all)
            );
        }
        if !line.is_empty() {
            let _ = writeln!(s, "        {line}");
        }
        if let Some(why) = &l.source_lost {
            let _ = writeln!(s, "        page source lost: {why}");
        }
    }
    if let Some(src) = &r.source {
        let _ = writeln!(
            s,
            "  source: served on {} for {}, {}: {}",
            src.serve_addr,
            human_us(src.served_us),
            if src.ended.is_empty() {
                "?"
            } else {
                &src.ended
            },
            src.detail
        );
    }
    if let Some(v) = &r.verify {
        let _ = writeln!(
            s,
            "  verify: {}{}",
            if v.passed { "passed" } else { "FAILED: " },
            v.reason
        );
        for d in &v.state_differences {
            let _ = writeln!(s, "    {d}");
        }
    }
    s
}

/// One line per run, for a history file.
pub fn render_history(reports: &[RunReport]) -> String {
    let mut s = String::new();
    const HEAD: [&str; 6] = ["job", "run", "outcome", "duration", "frozen", "new"];
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            let outcome = match r.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed => "failed",
                Outcome::Interrupted => "interrupted",
            };
            let new = r
                .store
                .as_ref()
                .map(|s| human_bytes(s.bytes_new))
                .unwrap_or_else(|| "-".into());
            [
                r.job.clone(),
                r.run.clone(),
                outcome.to_string(),
                human_us(r.duration_us),
                human_us(r.frozen_time),
                new,
            ]
        })
        .collect();
    // Every column as wide as its widest cell (job names have no length limit worth a fixed
    // width); text columns to the left, figures to the right.
    let mut width = HEAD.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |s: &mut String, cells: [&str; 6]| {
        let _ = writeln!(
            s,
            "{:<w0$} {:<w1$} {:<w2$} {:>w3$} {:>w4$} {:>w5$}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4],
            w5 = width[5],
        );
    };
    line(&mut s, HEAD);
    for row in &rows {
        line(&mut s, row.each_ref().map(|c| c.as_str()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_through_file_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = RunReport::new(
            "counter",
            "20261129T000000Z-abcd",
            Path::new("jobs/c.toml"),
            dir.path(),
        );
        r.frozen_time = 1234;
        r.fail("boom");
        let hist = dir.path().join("h/history.jsonl");
        let p = r.write(dir.path(), &hist).unwrap();
        r.write(dir.path(), &hist).unwrap();
        assert_eq!(load(&p).unwrap(), vec![r.clone()]);
        assert_eq!(load(&hist).unwrap(), vec![r.clone(), r.clone()]);
        let text = render(&r);
        assert!(
            text.contains("FAILED") && text.contains("error: boom"),
            "{text}"
        );
    }

    #[test]
    fn report_has_criu_named_fields_even_when_zero() {
        let r = RunReport::default();
        let v = serde_json::to_value(&r).unwrap();
        for f in [
            "freezing_time",
            "frozen_time",
            "memdump_time",
            "memwrite_time",
            "pages_scanned",
            "pages_skipped_parent",
            "pages_written",
            "pages_lazy",
            "restore_time",
            "pages_restored",
        ] {
            assert_eq!(v[f], 0, "{f}");
        }
    }

    #[test]
    fn a_tree_reports_its_processes_and_older_reports_still_load() {
        let mut r = RunReport {
            pid: Some(4242),
            processes: 5,
            ..Default::default()
        };
        let text = render(&r);
        assert!(
            text.contains("process 4242 (launched), a tree of 5 processes"),
            "{text}"
        );
        r.processes = 1;
        assert!(render(&r).contains("process 4242 (launched)\n"));
        // Reports written before trees have no such field.
        let mut v = serde_json::to_value(&r).unwrap();
        v.as_object_mut().unwrap().remove("processes");
        let old: RunReport = serde_json::from_value(v).unwrap();
        assert_eq!(old.processes, 0);
    }

    #[test]
    fn the_network_lock_times_are_reported_and_older_reports_still_load() {
        let mut r = RunReport {
            lock_time: 1_500,
            restore_lock_time: 2_000_000,
            ..Default::default()
        };
        let text = render(&r);
        assert!(
            text.contains("  network lock: dump 1.5ms  restore 2.000s"),
            "{text}"
        );
        let mut v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["lock_time"], 1_500);
        v.as_object_mut().unwrap().remove("lock_time");
        v.as_object_mut().unwrap().remove("restore_lock_time");
        r = serde_json::from_value(v).unwrap();
        assert_eq!((r.lock_time, r.restore_lock_time), (0, 0));
        assert!(!render(&r).contains("network lock"));
    }

    #[test]
    fn load_names_the_bad_line_of_a_history() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        fs::write(&p, "{\"job\":\"a\",\"run\":\"r\"}\nnot json\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("h.jsonl:2:"), "{e}");
    }

    /// A JSON object that is not a report (no `job`, no `run`) used to load as an empty report
    /// with outcome `ok`.
    #[test]
    fn load_refuses_a_json_line_that_is_not_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&RunReport::new(
            "counter",
            "20261129T000000Z-abcd",
            Path::new("jobs/c.toml"),
            dir.path(),
        ))
        .unwrap();
        let p = dir.path().join("history.jsonl");
        fs::write(&p, format!("{good}\n\n{{\"garbage\": 1}}\n{good}\n")).unwrap();
        let e = load(&p).unwrap_err();
        assert!(matches!(e, ReportError::ParseLine { line: 3, .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("history.jsonl:3:") && msg.contains("missing field `job`"),
            "{msg}"
        );
        // A single report file (pretty JSON) that is not a report is refused as well.
        let p = dir.path().join("one.json");
        fs::write(&p, "{\n  \"job\": \"a\",\n  \"garbage\": 1\n}\n").unwrap();
        let msg = load(&p).unwrap_err().to_string();
        assert!(
            msg.contains("one.json") && msg.contains("missing field `run`"),
            "{msg}"
        );
        // Reports of older versions, without the newer fields, still load.
        let p = dir.path().join("old.jsonl");
        fs::write(&p, "{\"job\":\"a\",\"run\":\"r\",\"outcome\":\"failed\"}\n").unwrap();
        assert_eq!(load(&p).unwrap()[0].outcome, Outcome::Failed);
    }

    /// Columns used to be fixed at 20 characters for the job: a longer name pushed the rest
    /// of its row to the right of the header.
    #[test]
    fn history_columns_line_up_with_long_job_names() {
        let mut a = RunReport::new(
            "a",
            "20261129T000000Z-abcd",
            Path::new("a.toml"),
            Path::new("/tmp"),
        );
        a.duration_us = 1_500_000;
        a.frozen_time = 2_000;
        let mut b = a.clone();
        b.job = "a-job-name-much-longer-than-twenty-characters".into();
        b.run = "20261129T000001Z-ef01".into();
        b.duration_us = 12;
        b.outcome = Outcome::Interrupted;
        let text = render_history(&[a, b]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Character positions (durations may hold a "µ").
        let start = |l: &str, word: &str| l[..l.find(word).unwrap()].chars().count();
        let end = |l: &str, word: &str| start(l, word) + word.chars().count();
        let head = lines[0];
        for (l, run, outcome, duration, frozen) in [
            (lines[1], "20261129T000000Z-abcd", "ok", "1.500s", "2.0ms"),
            (
                lines[2],
                "20261129T000001Z-ef01",
                "interrupted",
                "12µs",
                "2.0ms",
            ),
        ] {
            assert_eq!(start(l, run), start(head, "run"), "{text}");
            assert_eq!(start(l, outcome), start(head, "outcome"), "{text}");
            assert_eq!(end(l, duration), end(head, "duration"), "{text}");
            assert_eq!(end(l, frozen), end(head, "frozen"), "{text}");
            assert_eq!(l.chars().count(), head.chars().count(), "{text}");
        }
    }

    #[test]
    fn the_lazy_push_policy_and_residency_are_rendered_and_older_reports_still_load() {
        let sample = |ms: u64, pages: u64| ResidentSample {
            at_us: ms * 1000,
            pages,
        };
        let r = RunReport {
            lazy: Some(LazyReport {
                push_policy: "continuous".into(),
                resident: vec![
                    sample(0, 0),
                    sample(50, 400),
                    sample(100, 500),
                    sample(150, 950),
                    sample(210, 1000),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let l = r.lazy.as_ref().unwrap();
        assert_eq!(l.resident_at(50), Some(100_000));
        assert_eq!(l.resident_at(90), Some(150_000));
        assert_eq!(l.resident_at(100), Some(210_000));
        let text = render(&r);
        assert!(
            text.contains(
                "push continuous; resident 50% at 100.0ms, 90% at 150.0ms, 100% at 210.0ms \
                 after running"
            ),
            "{text}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["lazy"]["push_policy"], "continuous");
        assert_eq!(v["lazy"]["resident"][1]["at_us"], 50_000);
        assert_eq!(v["lazy"]["resident"][1]["pages"], 400);
        // Reports written before the push policy have neither field.
        let mut v = v;
        let lazy = v["lazy"].as_object_mut().unwrap();
        lazy.remove("push_policy");
        lazy.remove("resident");
        let old: RunReport = serde_json::from_value(v).unwrap();
        let old = old.lazy.unwrap();
        assert!(old.push_policy.is_empty() && old.resident.is_empty());
        assert_eq!(old.resident_at(50), None);
        // No samples: nothing is serialized for them.
        let empty = serde_json::to_value(LazyReport::default()).unwrap();
        assert!(empty.get("resident").is_none(), "{empty}");
        assert!(empty.get("fault_latency_histogram").is_none(), "{empty}");
    }

    #[test]
    fn fault_latencies_fall_in_log2_buckets_from_the_first_to_the_last_used() {
        assert!(LatencyBucket::log2_histogram(&[]).is_empty());
        let h = LatencyBucket::log2_histogram(&[3, 4, 4, 17, 0]);
        let b = |min_us, max_us, count| LatencyBucket {
            min_us,
            max_us,
            count,
        };
        assert_eq!(
            h,
            [
                b(0, 1, 1),
                b(2, 2, 0),
                b(3, 4, 3),
                b(5, 8, 0),
                b(9, 16, 0),
                b(17, 32, 1)
            ]
        );
        let top = LatencyBucket::log2_histogram(&[u64::MAX, (1 << 63) + 1]);
        assert_eq!(top, [b((1 << 63) + 1, u64::MAX, 2)]);
        // Reports from before the histogram load without it.
        let old: LazyReport = serde_json::from_str(r#"{"faults_served": 3}"#).unwrap();
        assert!(old.fault_latency_histogram.is_empty());
    }
}
