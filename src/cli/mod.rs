//! The command line (clap derive), and the commands' printing (one module each). `main.rs`
//! dispatches these and maps errors to exit codes.

pub mod bench;
pub mod check;
pub mod doctor;
pub mod dump;
pub mod images;
pub mod page_server;
pub mod report;
pub mod report_html;
pub mod restore;
pub mod run;
pub mod shell;
#[cfg(test)]
mod tests;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Prints a line on stdout; a closed stdout (`haul run ... | head`) is not an error worth a panic.
pub fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// The progress of a command's long operation: on stderr unless `quiet`.
pub fn progress_mode(quiet: bool) -> haul::runner::ProgressMode {
    if quiet {
        haul::runner::ProgressMode::Quiet
    } else {
        haul::runner::ProgressMode::Auto
    }
}

/// Sends what was printed on its way now (a script waits for the line before going on).
pub fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Prints `v` as pretty JSON.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<(), haul::Error> {
    out(&serde_json::to_string_pretty(v).map_err(haul::Error::Json)?);
    Ok(())
}

/// Prints `v` as JSON on one line.
pub fn print_json_line<T: serde::Serialize>(v: &T) -> Result<(), haul::Error> {
    out(&serde_json::to_string(v).map_err(haul::Error::Json)?);
    Ok(())
}

/// The version of the JSON documents haul prints: `haul/<kind>/<SCHEMA_VERSION>`, in the
/// field `schema` of every object (docs/json.md). It changes only if a field is removed or
/// changes meaning; new fields come without a new version.
pub const SCHEMA_VERSION: u32 = 1;

/// The `schema` value of a document of `kind` (`check`, `run`, `images-ls`, ...).
pub fn schema(kind: &str) -> String {
    format!("haul/{kind}/{SCHEMA_VERSION}")
}

/// A document as printed: `schema` first, then the fields of `body` (a struct or a map).
#[derive(serde::Serialize)]
pub struct Doc<'a, T: ?Sized> {
    pub schema: String,
    #[serde(flatten)]
    pub body: &'a T,
}

impl<'a, T: ?Sized> Doc<'a, T> {
    pub fn new(kind: &str, body: &'a T) -> Self {
        Doc {
            schema: schema(kind),
            body,
        }
    }
}

/// Prints `v` (a struct or a map) as pretty JSON with its `schema` field.
pub fn print_doc<T: serde::Serialize + ?Sized>(kind: &str, v: &T) -> Result<(), haul::Error> {
    print_json(&Doc::new(kind, v))
}

/// Prints `v` (a struct or a map) as JSON on one line with its `schema` field.
pub fn print_doc_line<T: serde::Serialize + ?Sized>(kind: &str, v: &T) -> Result<(), haul::Error> {
    print_json_line(&Doc::new(kind, v))
}

/// Prints `items` as a pretty JSON array, each object with its `schema` field.
pub fn print_doc_list<T: serde::Serialize>(kind: &str, items: &[T]) -> Result<(), haul::Error> {
    let docs: Vec<Doc<'_, T>> = items.iter().map(|i| Doc::new(kind, i)).collect();
    print_json(&docs)
}

const EXIT_CODES: &str = "\
Exit codes:
  0    every job (or the command) succeeded
  1    a job or the command failed (the report says why)
  2    bad input: an invalid job file or bad arguments
  3    a job was skipped: another haul run of it holds its lock
  130  interrupted by SIGINT/SIGTERM (launched processes were stopped, reports written)";

/// Checkpoint and restore live Linux processes natively, from declarative TOML job files.
#[derive(Debug, Parser)]
#[command(name = "haul", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate job files without running them: one line per job, exit 0 only if all are valid.
    Check {
        /// Job files (TOML).
        #[arg(required = true, value_name = "JOB")]
        jobs: Vec<PathBuf>,
        /// One JSON object per job file, one line each: file, job, valid, and each error
        /// with its file, line, column, field and message (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Run a batch of jobs (the way cron calls it: `haul run jobs/*.toml`).
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Checkpoint a running process into the store (a final dump).
    Dump(DumpArgs),
    /// Rebuild a process from an image set; prints its PID.
    Restore(RestoreArgs),
    /// Serve the pages of image sets to lazy restores elsewhere (`haul restore --lazy --from`).
    PageServer(PageServerArgs),
    /// Inspect and maintain an image store: list, show, verify, disk use, remove, gc.
    Images(ImagesArgs),
    /// Benchmarks (release build recommended): `haul bench store`, `haul bench precopy`,
    /// `haul bench lazy`, `haul bench tree`.
    Bench {
        /// No progress on stderr (a spinner on a terminal, else timestamped lines): only the
        /// results, and errors.
        #[arg(short, long, global = true)]
        quiet: bool,
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Print a readable summary of a run report (`<job>-<run>.json`) or of a history file (`.jsonl`).
    Report {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The reports as JSON, one document per FILE: a run report as one object, a
        /// history as an array of them, every field present (docs/json.md).
        #[arg(long)]
        json: bool,
        /// Instead of the text, write one self-contained HTML page with charts of every FILE
        /// (inline SVG: no script, nothing fetched). A run report: its stage and pause
        /// timelines, pre-dump iterations, lazy residency and fault service times. A history:
        /// per job, frozen time, image size, new bytes and dedup ratio over its runs.
        #[arg(long, value_name = "OUT.html", conflicts_with = "json")]
        html: Option<PathBuf>,
    },
    /// Print a completion script for SHELL on stdout (README: where to install it).
    Completions {
        /// The shell the script is for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print haul's man page (roff) on stdout; `man -l -` reads it from there.
    Man {
        /// Write one page per command into DIR instead (haul.1, haul-run.1, haul-images-ls.1,
        /// ...; DIR is created if missing), for a `man1` directory in MANPATH.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// What this kernel and these privileges let haul do: each feature is tried for real on a
    /// throwaway process or object, and each missing one says what haul does without it.
    /// Exit 0 when everything haul needs is there, 1 otherwise.
    Doctor {
        /// One JSON object (`version`, `ok`, `checks`: name, ok, needed, detail,
        /// consequence) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Job files (TOML). Quoted globs are expanded too (`haul run 'jobs/*.toml'`).
    #[arg(required = true, value_name = "JOB")]
    pub jobs: Vec<String>,
    /// How many jobs run at the same time [default: the number of cores].
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: Option<u32>,
    /// Print only errors.
    #[arg(short, long, conflicts_with = "plain")]
    pub quiet: bool,
    /// Timestamped plain lines instead of spinners, even on a terminal (the default when not a terminal, e.g. under cron).
    #[arg(long)]
    pub plain: bool,
    /// On stdout, one JSON object per job on one line as each job ends: its outcome, exit
    /// code, report, image set and the figures of its run report (docs/json.md). Progress
    /// stays on stderr (--quiet silences it).
    #[arg(long)]
    pub json: bool,
}

/// `--store DIR`, shared by the commands that use a store.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// The image store: a directory, or a bucket of S3-compatible object storage as
    /// `s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&path_style=true]` (endpoint and region
    /// default to $AWS_ENDPOINT_URL and $AWS_REGION; credentials come from the environment or
    /// ~/.aws/credentials, never from the location).
    #[arg(
        long,
        value_name = "DIR|s3://BUCKET/PREFIX",
        env = "HAUL_STORE",
        default_value = "haul-store",
        global = true
    )]
    pub store: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// No progress on stderr (verify, du, gc, push and pull show a spinner on a terminal, and
    /// timestamped lines otherwise once they take more than a second).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List image sets, oldest first, with their state: ok, in progress (a pre-copy still
    /// running), incomplete (left by a pre-copy that did not finish: gc removes it), or
    /// DAMAGED (the manifest cannot be read: exit 1).
    Ls {
        /// Only this job's sets.
        #[arg(long)]
        job: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one set: process, VMAs with page counts, parent, bytes logical / stored / new.
    Show {
        set: String,
        /// JSON instead of text (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every page (of one set, or of the whole store) and every pack they are in;
    /// exit 1 naming each bad pack, page and the sets that need it.
    Verify {
        set: Option<String>,
        /// JSON instead of text (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Disk use: logical vs stored bytes, compression and dedup ratios, per job.
    Du {
        /// JSON instead of text (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove an image set (its pages go at the next gc).
    Rm { set: String },
    /// Copy a set into another store: its manifest, and only the pages that store lacks.
    Push {
        set: String,
        /// The destination store (created if missing): a directory or `s3://BUCKET/PREFIX`.
        #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
        to: PathBuf,
        /// `zstd:<1..19>` or `none`, for the pages the destination stores.
        #[arg(long, default_value = "zstd:3", value_parser = parse_compression)]
        compression: haul::job::Compression,
        /// JSON instead of text (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Copy a set from a page server or a bucket store into --store (created if missing): its
    /// manifest, and only the pages the store lacks.
    Pull {
        set: String,
        /// The page server (`haul page-server`), or a bucket store (`s3://BUCKET/PREFIX`).
        #[arg(long, value_name = "HOST:PORT|s3://BUCKET/PREFIX")]
        from: String,
        /// The page server's token.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// `zstd:<1..19>` or `none`, for the pages the store keeps.
        #[arg(long, default_value = "zstd:3", value_parser = parse_compression)]
        compression: haul::job::Compression,
        /// Give up on the server after this long without an answer.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// JSON instead of text (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove the pre-dump sets of pre-copies that did not finish, packs no set references,
    /// and repack mostly-dead ones (waits for writers).
    Gc {
        /// JSON instead of text (docs/json.md).
        #[arg(long)]
        json: bool,
        /// A bucket store only: leave unreferenced packs younger than this (a second guard
        /// beside the lock objects writers hold; 0s deletes every unreferenced pack).
        #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
        grace: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Pre-copy: frozen time of a full dump against a final dump after pre-dumps (memwriter),
    /// the cost of a uffd-wp scan, and the target's slowdown while tracked (spinwriter).
    Precopy {
        /// Where to work: the benchmark makes a fresh subdirectory here and removes only
        /// that (nothing else in DIR is touched).
        #[arg(long, value_name = "DIR", default_value = "/tmp")]
        dir: PathBuf,
        /// Where memwriter.c and spinwriter.c are.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// Size of the memwriter's memory.
        #[arg(long, default_value = "1GiB", value_parser = parse_bench_size)]
        size: u64,
        /// Pages the memwriter dirties per second.
        #[arg(long, default_value_t = 1000)]
        dirty_per_sec: u64,
        /// Pre-dumps before the final dump.
        #[arg(long, default_value_t = 3)]
        predumps: u32,
        /// Pause between pre-dumps.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: std::time::Duration,
        /// Repetitions (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Post-copy: time to running of a lazy restore against an eager one, time until every
    /// page is resident, and fault service latency (memwriter, restored with any free PID);
    /// and the continuous push while the process faults all the time (toucher).
    Lazy {
        /// Where to work: the benchmark makes a fresh subdirectory here and removes only
        /// that (nothing else in DIR is touched).
        #[arg(long, value_name = "DIR", default_value = "/tmp")]
        dir: PathBuf,
        /// Where memwriter.c and toucher.c are.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// Size of the memwriter's (and the toucher's) memory.
        #[arg(long, default_value = "1GiB", value_parser = parse_bench_size)]
        size: u64,
        /// Pages copied after each faulting page.
        #[arg(long, default_value_t = 16)]
        prefetch: u32,
        /// Random pages the toucher touches per second while its pages are pushed.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        touches_per_sec: u64,
        /// Repetitions (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A store in an S3-compatible bucket against a local store: dump (leave running, to
    /// committed) and eager restore of a paused memwriter (the bucket's from an empty cache,
    /// as on another host), and the bytes a re-dump of the unchanged process sends. Each run
    /// writes under a prefix of its own below --store and removes it afterwards.
    Bucket {
        /// The bucket: `s3://BUCKET[/PREFIX][?endpoint=URL]` (credentials from the
        /// environment).
        #[arg(long, value_name = "s3://BUCKET/PREFIX")]
        store: String,
        /// Where to work: the benchmark makes a fresh subdirectory here and removes only
        /// that (nothing else in DIR is touched).
        #[arg(long, value_name = "DIR", default_value = "/tmp")]
        dir: PathBuf,
        /// Where memwriter.c is.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// Size of the memwriter's memory.
        #[arg(long, default_value = "1GiB", value_parser = parse_bench_size)]
        size: u64,
        /// Repetitions (medians are reported).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Process trees: frozen and restore time of a tree of processes sharing anonymous
    /// memory against one process with the same memory, and the image's size (the shared
    /// memory stored once). Restores under the same PIDs.
    Tree {
        /// Where to work: the benchmark makes a fresh subdirectory here and removes only
        /// that (nothing else in DIR is touched).
        #[arg(long, value_name = "DIR", default_value = "/tmp")]
        dir: PathBuf,
        /// Where treebench.c is.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// Processes in the tree (the root and its children).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=256))]
        processes: u32,
        /// Anonymous memory the processes share.
        #[arg(long, default_value = "256MiB", value_parser = parse_bench_size)]
        shared: u64,
        /// Private memory of each process of the tree (the single process has all of it).
        #[arg(long, default_value = "16MiB", value_parser = parse_bench_size)]
        private: u64,
        /// Repetitions (medians are reported).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Migration: the pause a migration costs as the process sees it (the longest gap between
    /// the 10 ms ticks of a workload writing random pages), through real `haul run`s with
    /// `pid = "same"`: full dump + eager restore, 3 pre-dumps + eager restore, 3 pre-dumps +
    /// lazy restore, and a checkpoint that leaves the process running. Prints the median pause
    /// of each and the pause timeline of the median run.
    Migrate {
        /// Where to work: the benchmark makes a fresh subdirectory here and removes only
        /// that (nothing else in DIR is touched).
        #[arg(long, value_name = "DIR", default_value = "/tmp")]
        dir: PathBuf,
        /// Where pausewriter.c is.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// Size of the workload's memory.
        #[arg(long, default_value = "1GiB", value_parser = parse_bench_size)]
        size: u64,
        /// Random pages the workload writes per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Only this path (repeatable; default: every one).
        #[arg(long = "path", value_name = "PATH",
              value_parser = clap::builder::PossibleValuesParser::new(haul::bench::migrate::PATHS))]
        paths: Vec<String>,
        /// Repetitions of each path (medians are reported).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Eager restores write the memory from the set (`restore.adopt_memory = false`)
        /// instead of adopting it from the stopped process: a restore as on another host.
        #[arg(long)]
        fill: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The store against `zstd -T2`: write throughput and size, a 1%-changed second set,
    /// random single-page reads, sequential read.
    Store {
        /// Where to work: the benchmark makes a fresh subdirectory here and removes only
        /// that (nothing else in DIR is touched).
        #[arg(long, value_name = "DIR", default_value = "/tmp")]
        dir: PathBuf,
        /// Size of the synthetic image.
        #[arg(long, default_value = "1GiB", value_parser = parse_bench_size)]
        size: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A command-line value that does not parse: what it should look like, and what it was.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Not a size or not a compression: the job files' parser says what it expected.
    #[error(transparent)]
    Unit(#[from] haul::job::UnitError),
    #[error("expected a duration like \"1s\", \"500ms\" or \"2m\", found {value:?}")]
    Duration {
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    /// A benchmark `--size` with nothing to time.
    #[error("{size} bytes is too small to measure anything: the least is 1MiB")]
    TooSmall { size: u64 },
}

/// Parses a size like `256MiB` (the job files' syntax).
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    Ok(s.parse::<haul::job::Size>()?.0)
}

/// A benchmark's `--size`: a size of at least [`haul::bench::store::MIN_SIZE`] (smaller
/// images have nothing to time, and their ratios would divide by zero).
pub fn parse_bench_size(s: &str) -> Result<u64, ValueError> {
    let size = parse_size(s)?;
    if size < haul::bench::store::MIN_SIZE {
        return Err(ValueError::TooSmall { size });
    }
    Ok(size)
}

/// Parses a duration like `1s` or `200ms` (the job files' syntax), saying what one looks like
/// when it is not.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, ValueError> {
    humantime::parse_duration(s).map_err(|source| ValueError::Duration {
        value: s.into(),
        source,
    })
}

/// Parses `zstd:<1..19>` or `none` (the job files' syntax).
pub fn parse_compression(s: &str) -> Result<haul::job::Compression, ValueError> {
    Ok(s.parse()?)
}

/// `--tcp-pending`: what a dump does with connections not yet accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TcpPendingArg {
    /// Refuse the dump, naming the listener and how many wait.
    Refuse,
    /// Drop them, with a warning.
    Drop,
}

impl From<TcpPendingArg> for haul::job::TcpPending {
    fn from(t: TcpPendingArg) -> Self {
        match t {
            TcpPendingArg::Refuse => haul::job::TcpPending::Refuse,
            TcpPendingArg::Drop => haul::job::TcpPending::Drop,
        }
    }
}

/// `--network-lock`: how established TCP connections to peers outside the checkpoint are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NetworkLockArg {
    /// nftables rules drop their packets (the peers retransmit) while frozen, and after a
    /// dump that kills the process until a restore runs the copy.
    Nftables,
    /// No lock: a peer that sends meanwhile gets a reset and its connection is lost.
    None,
}

impl From<NetworkLockArg> for haul::netlock::LockMode {
    fn from(t: NetworkLockArg) -> Self {
        match t {
            NetworkLockArg::Nftables => haul::netlock::LockMode::Nftables,
            NetworkLockArg::None => haul::netlock::LockMode::None,
        }
    }
}

/// `--tracker`: the dirty-page tracker of the pre-dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TrackerArg {
    /// The best one that works here.
    Auto,
    /// Userfaultfd write protection.
    UffdWp,
    /// The kernel's soft-dirty bits.
    SoftDirty,
    /// Hashes of every page.
    Hash,
}

impl From<TrackerArg> for haul::job::Tracker {
    fn from(t: TrackerArg) -> Self {
        use haul::job::Tracker;
        match t {
            TrackerArg::Auto => Tracker::Auto,
            TrackerArg::UffdWp => Tracker::UffdWp,
            TrackerArg::SoftDirty => Tracker::SoftDirty,
            TrackerArg::Hash => Tracker::Hash,
        }
    }
}

/// `--pid` of `haul restore`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PidArg {
    /// The dumped PID (refused while it is taken).
    Same,
    /// Whatever PID is free.
    Any,
}

impl From<PidArg> for haul::job::PidPolicy {
    fn from(p: PidArg) -> Self {
        match p {
            PidArg::Same => haul::job::PidPolicy::Same,
            PidArg::Any => haul::job::PidPolicy::Any,
        }
    }
}

/// `--push` of `haul restore --lazy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PushArg {
    /// Between faults, from the moment the process runs.
    Continuous,
    /// After --idle-push without a fault.
    Idle,
}

impl From<PushArg> for haul::lazy::PushPolicy {
    fn from(p: PushArg) -> Self {
        match p {
            PushArg::Continuous => haul::lazy::PushPolicy::Continuous,
            PushArg::Idle => haul::lazy::PushPolicy::Idle,
        }
    }
}

impl RestoreArgs {
    /// `--push`, with the rule of the job key: without it, `--idle-push` means idle.
    pub fn push_policy(&self) -> Result<haul::lazy::PushPolicy, haul::Error> {
        haul::lazy::PushPolicy::resolve(self.push.map(Into::into), self.idle_push.is_some())
            .ok_or_else(|| {
                haul::Error::Usage(
                    "--idle-push cannot go with --push continuous, which pushes between faults \
                     and never waits for idle; drop --idle-push, or use --push idle"
                        .into(),
                )
            })
    }
}

/// `--tty` of `haul restore`: where a terminal outside the checkpoint goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TtyArg {
    /// This terminal: the job runs in its foreground; haul waits until it exits.
    Inherit,
    /// A new pty that haul relays to its stdin/stdout until the job exits.
    New,
}

impl From<TtyArg> for haul::job::TtyPolicy {
    fn from(t: TtyArg) -> Self {
        match t {
            TtyArg::Inherit => haul::job::TtyPolicy::Inherit,
            TtyArg::New => haul::job::TtyPolicy::New,
        }
    }
}

/// `--verify` of `haul restore`: what to compare before the restored process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyArg {
    /// What /proc shows of it against what the dump recorded.
    State,
}

/// The dump modes other than --lazy. `requires = "lazy"` alone does not hold inside the
/// required "mode" group (clap takes the group as satisfied), so the lazy-only options also
/// conflict with the other modes: `--kill --listen ADDR` is refused, not silently ignored.
const NOT_LAZY: [&str; 3] = ["leave_running", "kill", "check"];

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("mode")
        .required(true)
        .args(["leave_running", "kill", "lazy", "check"])
))]
pub struct DumpArgs {
    /// The process to checkpoint.
    #[arg(long, value_name = "PID")]
    pub pid: i32,
    #[command(flatten)]
    pub store: StoreArg,
    /// Job name the image set is filed under [default: the process's command name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Let the process go on after the dump (periodic checkpoint). One of --leave-running,
    /// --kill, --lazy or --check is required.
    #[arg(long)]
    pub leave_running: bool,
    /// Only check that the process can be checkpointed: every refusal the dump would make
    /// (fds, children, seccomp, namespaces, locks, ...), with nothing touched and nothing stored.
    /// Exit 0 if it can, 1 with the reason if not.
    #[arg(long, conflicts_with = "predump")]
    pub check: bool,
    /// Kill the process once its image set is committed (migration: restore it elsewhere);
    /// if the dump fails, the process goes on.
    #[arg(long)]
    pub kill: bool,
    /// Lazy final dump (post-copy migration): the pages of private anonymous memory are not
    /// written to the store but recorded by hash, and the process stays frozen while haul
    /// serves them (and the stored rest) as a page server. Prints the set and the address,
    /// then serves until `haul restore SET --lazy --pid any --from ADDR` has every page
    /// resident (then the process is killed) or no restore is connected for
    /// --source-timeout (then the process resumes, the migration rolled back, and the set is
    /// removed; exit 1). Only haul restores of this version or later can be served. With
    /// --json: one JSON line for the dump (with "serving"), one for how the source ended.
    #[arg(long)]
    pub lazy: bool,
    /// With --lazy: address to serve on [default: 127.0.0.1:0, loopback with a free port];
    /// anything but loopback requires --token-file.
    #[arg(long, value_name = "ADDR", requires = "lazy", conflicts_with_all = NOT_LAZY)]
    pub listen: Option<String>,
    /// With --lazy: a file holding the token restores must present.
    #[arg(long, value_name = "FILE", requires = "lazy", conflicts_with_all = NOT_LAZY)]
    pub token_file: Option<PathBuf>,
    /// With --lazy: no restore connected for this long (it never came, or its connection was
    /// lost), the process resumes [default: 10s].
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "lazy",
        conflicts_with_all = NOT_LAZY
    )]
    pub source_timeout: Option<std::time::Duration>,
    /// `zstd:<1..19>` or `none`.
    #[arg(long, default_value = "zstd:3", value_parser = parse_compression)]
    pub compression: haul::job::Compression,
    /// Memory for copied pages, so the freeze covers only the copy.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub buffer: u64,
    /// Keep only this many image sets of the job (older ones are pruned).
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Pre-copy first: up to N pre-dumps of the running process (each stores only the pages
    /// written since the last), then a final dump that copies only what changed since.
    #[arg(long, value_name = "N")]
    pub predump: Option<u32>,
    /// Pause between two pre-dumps.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: std::time::Duration,
    /// Dirty-page tracker of the pre-dumps.
    #[arg(long, value_enum, default_value = "auto")]
    pub tracker: TrackerArg,
    /// Pre-copy has converged when a pre-dump writes less than this (0: never).
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    pub stop_below: u64,
    /// Connections waiting in a TCP listen queue, not yet accepted by the process: "refuse"
    /// the dump naming the listener, or "drop" them with a warning (their clients see a
    /// reset). Also with --check. As the job key dump.tcp_pending.
    #[arg(long, value_enum, value_name = "WHAT", default_value = "refuse")]
    pub tcp_pending: TcpPendingArg,
    /// How established TCP connections to peers outside the checkpoint are held while the
    /// process is frozen (and, with --kill, until a restore runs the copy): "nftables" drops
    /// their packets with a table of haul's own (needs the nft tool; none is run when there
    /// is no such connection), "none" holds nothing (a peer that sends meanwhile gets a
    /// reset). As the job key network.lock.
    #[arg(long, value_enum, value_name = "HOW", default_value = "nftables")]
    pub network_lock: NetworkLockArg,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr (a spinner on a terminal, timestamped lines otherwise once the
    /// dump takes more than a second).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The image set (a final dump), as `haul images ls` lists it.
    pub set: String,
    #[command(flatten)]
    pub store: StoreArg,
    /// Which PID the restored process gets.
    #[arg(long, value_enum, default_value = "same")]
    pub pid: PidArg,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr (a spinner on a terminal, timestamped lines otherwise once the
    /// restore takes more than a second).
    #[arg(short, long)]
    pub quiet: bool,
    /// `state`: before the restored process runs, compare what /proc shows of it (credentials,
    /// capabilities, signal masks and handlers, prctl values, cgroup, oom score, maps and their
    /// flags, fds with their flags and offsets, ...) with what the dump recorded. Any
    /// difference is named (`field: was X, now Y`), the process is killed before it runs a
    /// single instruction, and haul exits 1.
    #[arg(long, value_name = "WHAT", value_enum)]
    pub verify: Option<VerifyArg>,
    /// Where a terminal the process was started on (outside the checkpoint) goes; without
    /// it such a terminal is refused. `inherit`: this terminal (a shell job): the restored
    /// job becomes its foreground job with its saved terminal settings, and haul restore
    /// waits until it exits, then gives the terminal back to the shell. `new`: a new pty
    /// (its window size this terminal's): the job leads a new session on it, and haul
    /// restore relays between it and its own stdin/stdout (stdin in raw mode if it is a
    /// terminal) until the job exits. Either way the PID is printed first. A pty whose both
    /// ends are in the checkpoint needs no flag: it is made again as a new pair (its
    /// /dev/pts number changes).
    #[arg(long, value_name = "WHERE", value_enum, conflicts_with = "lazy")]
    pub tty: Option<TtyArg>,
    /// How the restored connections to peers outside the set are held until the restored
    /// processes run: "nftables" (a table of haul's own drops their packets) or "none". A
    /// lock a dump with --kill left is removed once they run, either way. As the job key
    /// network.lock.
    #[arg(long, value_enum, value_name = "HOW", default_value = "nftables")]
    pub network_lock: NetworkLockArg,
    /// Post-copy: the process runs at once, its memory served by userfaultfd; haul prints the
    /// PID and stays in the foreground until every page is resident.
    #[arg(long)]
    pub lazy: bool,
    /// With --lazy: take the manifest and pages from a page server instead of the store.
    #[arg(long, value_name = "HOST:PORT", requires = "lazy")]
    pub from: Option<String>,
    /// With --from: the page server's token.
    #[arg(long, value_name = "FILE", requires = "from")]
    pub token_file: Option<PathBuf>,
    /// With --lazy: when the pages no fault asked for are pushed. "continuous": between
    /// faults from the moment the process runs (faults are served first; a fault waits for at
    /// most one push chunk), so a process that faults all the time still gets every page
    /// soon. "idle": only after --idle-push without a fault. Default: continuous, or idle
    /// when --idle-push is given. As the job key lazy.push.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub push: Option<PushArg>,
    /// With --lazy --push idle: no fault for this long, push every remaining page [default:
    /// 5s]. Given without --push, it means --push idle; refused with --push continuous.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_push: Option<std::time::Duration>,
    /// With --lazy: pages copied after each faulting page.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub prefetch: u32,
    /// With --lazy: the page source gone this long, the process is killed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub source_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("what")
        .required(true)
        .multiple(true)
        .args(["sets", "jobs"])
))]
pub struct PageServerArgs {
    /// Address to listen on; anything but loopback requires --token-file.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7411")]
    pub listen: String,
    #[command(flatten)]
    pub store: StoreArg,
    /// An image set to serve (repeat for several); no other set is served.
    #[arg(long = "set", value_name = "SET")]
    pub sets: Vec<String>,
    /// Serve every final dump of this job (repeat for several), including those dumped after
    /// the server started: start it on the source before `haul run` dumps.
    #[arg(long = "job", value_name = "JOB")]
    pub jobs: Vec<String>,
    /// A file holding the token clients must present.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}
