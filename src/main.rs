//! The `haul` binary: parses the command line, runs the command, and is the one place that maps
//! errors to messages and exit codes.

mod cli;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

use cli::{Cli, Command};
use haul::runner::{exit, JobStatus, ProgressMode, RunOptions};
use haul::Error;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(haul::dump::worker::WORKER_COMMAND) {
        // Internal: the process that holds a checkpoint's ptrace session (see dump::worker).
        init_logging();
        return match haul::dump::worker::worker_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("haul checkpoint worker: {}", error_chain(&e));
                ExitCode::from(exit::FAILED)
            }
        };
    }
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("haul: {}", error_chain(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // Colours only for a person at a terminal: cron mails and log files get plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

/// The error and its sources, "outer: inner: innermost".
fn error_chain(e: &Error) -> String {
    haul::error::chain(e)
}

/// The exit code of a command that failed with `e`.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Job(_) | Error::Usage(_) => exit::BAD_INPUT,
        Error::Xfer(x) if x.is_bad_input() => exit::BAD_INPUT,
        Error::Run(haul::runner::RunError::Locked { .. }) => exit::LOCKED,
        Error::Run(haul::runner::RunError::Interrupted) => exit::INTERRUPTED,
        _ => exit::FAILED,
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    match cli.command {
        Command::Check { jobs } => Ok(check(&jobs)),
        Command::Run(args) => run_jobs(args),
        Command::Dump(args) => dump_cmd(args),
        Command::Restore(args) if args.lazy => lazy_restore_cmd(args),
        Command::Restore(args) => restore_cmd(args),
        Command::PageServer(args) => page_server_cmd(args),
        Command::Images(args) => images(args),
        Command::Bench { what } => bench(what),
        Command::Report { files } => {
            for f in files {
                let reports = haul::report::load(&f)?;
                let text = if reports.len() == 1 && f.extension().is_none_or(|x| x != "jsonl") {
                    haul::report::render(&reports[0])
                } else {
                    haul::report::render_history(&reports)
                };
                out(text.trim_end());
            }
            Ok(exit::OK)
        }
    }
}

/// Prints a line on stdout; a closed stdout (`haul run ... | head`) is not an error worth a panic.
fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn check(paths: &[PathBuf]) -> u8 {
    let (jobs, bad) = haul::job::load_all(paths);
    for j in &jobs {
        out(&format!("{}: ok (job {})", j.file.display(), j.name));
    }
    for (file, e) in &bad {
        out(&format!("{}: invalid", file.display()));
        for line in e.to_string().lines() {
            out(&format!("  {line}"));
        }
    }
    if bad.is_empty() {
        exit::OK
    } else {
        exit::BAD_INPUT
    }
}

/// Expands quoted globs (`haul run 'jobs/*.toml'`); a plain path is taken as it is.
fn expand_globs(args: &[String]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for a in args {
        if a.contains(['*', '?', '[']) {
            let paths =
                glob::glob(a).map_err(|e| Error::Usage(format!("bad pattern {a:?}: {e}")))?;
            let before = out.len();
            for p in paths {
                out.push(p.map_err(|e| Error::Usage(format!("{a}: {e}")))?);
            }
            if out.len() == before {
                return Err(Error::Usage(format!("{a}: no job file matches")));
            }
        } else {
            out.push(PathBuf::from(a));
        }
    }
    Ok(out)
}

fn run_jobs(args: cli::RunArgs) -> Result<u8, Error> {
    let paths = expand_globs(&args.jobs)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let opts = RunOptions {
        jobs: args.parallel.map(|n| n as usize).unwrap_or(cores),
        progress: if args.quiet {
            ProgressMode::Quiet
        } else if args.plain {
            ProgressMode::Plain
        } else {
            ProgressMode::Auto
        },
    };
    let batch = haul::runner::run_batch(&paths, &opts);
    // The progress on stderr has said how each job ended; the summary is for a stdout that goes
    // elsewhere (a script, a file). Where both are one file (a terminal, cron's mail), once.
    if !args.quiet && !stdout_is_stderr() {
        for r in &batch.results {
            let what = match &r.status {
                JobStatus::Ok => "ok".to_string(),
                JobStatus::Invalid(_) => "invalid job file".to_string(),
                JobStatus::Locked(_) => "skipped (locked)".to_string(),
                JobStatus::Failed(e) => format!("failed: {e}"),
                JobStatus::Interrupted => "interrupted".to_string(),
            };
            let line = match &r.report {
                Some(p) => format!("{}: {what} (report {})", r.job, p.display()),
                None => format!("{}: {what}", r.job),
            };
            out(&line);
        }
    }
    Ok(batch.exit_code())
}

/// Whether stdout and stderr are the same open file (the same terminal, or one pipe).
fn stdout_is_stderr() -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |fd: u8| {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .ok()
            .map(|m| (m.dev(), m.ino(), m.rdev()))
    };
    matches!((id(1), id(2)), (Some(a), Some(b)) if a == b)
}

/// Prints `v` as pretty JSON.
fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Error> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| Error::Usage(format!("encode JSON: {e}")))?;
    out(&text);
    Ok(())
}

fn images(args: cli::ImagesArgs) -> Result<u8, Error> {
    use cli::ImagesCommand as C;
    use haul::util::human_bytes;
    let sync_text = |r: &haul::xfer::SyncReport| {
        if r.already_there {
            format!("{}: already there, nothing sent", r.set)
        } else {
            format!(
                "{}: {} pages, {} already there, {} sent ({})",
                r.set,
                r.pages,
                r.pages_skipped,
                r.pages_sent,
                human_bytes(r.bytes_sent)
            )
        }
    };
    if let C::Pull {
        set,
        from,
        token_file,
        compression,
        timeout,
        json,
    } = &args.command
    {
        let token = match token_file {
            Some(f) => haul::xfer::read_token_file(f)?,
            None => Vec::new(),
        };
        // The store is created only once the server has answered.
        let dest = &args.store.store;
        let r = haul::xfer::pull(from, &token, *timeout, set, dest, level(*compression))?;
        if *json {
            print_json(&r)?;
        } else {
            out(&sync_text(&r));
        }
        return Ok(exit::OK);
    }
    let store = haul::store::Store::open(&args.store.store)?;
    match args.command {
        C::Pull { .. } => Ok(exit::OK),
        C::Push {
            set,
            to,
            compression,
            json,
        } => {
            let dest = haul::store::Store::open_or_create(&to)?;
            let r = haul::xfer::push(&store, &set, &dest, level(compression))?;
            if json {
                print_json(&r)?;
            } else {
                out(&sync_text(&r));
            }
            Ok(exit::OK)
        }
        C::Ls { job, json } => {
            let l = store.list(job.as_deref())?;
            if json {
                print_json(&l.rows())?;
            } else {
                out(l.text().trim_end());
            }
            // A damaged set is a failure to report, in the exit code too.
            Ok(if l.damaged.is_empty() {
                exit::OK
            } else {
                exit::FAILED
            })
        }
        C::Show { set, json } => {
            let s = store.load_set(&set)?;
            if json {
                print_json(&haul::store::set_view(&s))?;
            } else {
                out(haul::store::show_text(&s).trim_end());
            }
            Ok(exit::OK)
        }
        C::Verify { set, json } => {
            let r = store.verify(set.as_deref())?;
            if json {
                print_json(&r)?;
            } else {
                for p in &r.problems {
                    out(&format!("BAD {}: {}", p.kind, p.message));
                }
                out(&format!(
                    "{}: {} sets, {} pages, {} packs checked ({} read) in {}",
                    if r.ok { "ok" } else { "FAILED" },
                    r.sets_checked,
                    r.pages_checked,
                    r.packs_checked,
                    human_bytes(r.bytes_read),
                    haul::util::human_us(r.duration_us)
                ));
            }
            Ok(if r.ok { exit::OK } else { exit::FAILED })
        }
        C::Du { json } => {
            let r = store.du()?;
            if json {
                print_json(&r)?;
            } else {
                out(&du_text(&r));
            }
            Ok(exit::OK)
        }
        C::Rm { set } => {
            store.remove_set(&set)?;
            out(&format!(
                "removed {set} (run `haul images gc` to reclaim its pages)"
            ));
            Ok(exit::OK)
        }
        C::Gc { json } => {
            let r = store.gc()?;
            if json {
                print_json(&r)?;
            } else {
                out(&format!(
                    "gc: {} packs removed, {} repacked, {} freed ({} -> {}), {} temp files removed, {} incomplete pre-dump sets removed",
                    r.packs_removed,
                    r.packs_repacked,
                    human_bytes(r.bytes_freed),
                    human_bytes(r.bytes_before),
                    human_bytes(r.bytes_after),
                    r.temp_files_removed,
                    r.incomplete_sets_removed.len()
                ));
                for id in &r.incomplete_sets_removed {
                    out(&format!("  removed incomplete {id}"));
                }
                for p in &r.skipped {
                    out(&format!(
                        "  skipped unreadable pack {p} (see `haul images verify`)"
                    ));
                }
            }
            Ok(exit::OK)
        }
    }
}

fn bench(what: cli::BenchCommand) -> Result<u8, Error> {
    match what {
        cli::BenchCommand::Precopy {
            dir,
            fixtures,
            size,
            dirty_per_sec,
            predumps,
            interval,
            runs,
            json,
        } => {
            use haul::bench::dump as bench;
            let opts = bench::BenchOptions {
                dir,
                fixtures,
                mib: size >> 20,
                dirty_per_sec,
                predumps,
                interval,
                runs,
                ..Default::default()
            };
            let r = bench::run_bench(&opts)?;
            if json {
                print_json(&r)?;
            } else {
                out(bench::report_text(&r).trim_end());
            }
            Ok(exit::OK)
        }
        cli::BenchCommand::Lazy {
            dir,
            fixtures,
            size,
            prefetch,
            runs,
            json,
        } => {
            use haul::bench::lazy as bench;
            let opts = bench::BenchOptions {
                dir,
                fixtures,
                mib: size >> 20,
                runs,
                prefetch,
            };
            let r = bench::run_bench(&opts)?;
            if json {
                print_json(&r)?;
            } else {
                out(bench::report_text(&r).trim_end());
            }
            Ok(exit::OK)
        }
        cli::BenchCommand::Store { dir, size, json } => {
            let opts = haul::bench::store::BenchOptions {
                dir,
                size,
                ..Default::default()
            };
            // A spinner on a terminal, timestamped lines otherwise.
            let progress = haul::runner::progress::Progress::new(ProgressMode::Auto);
            let bar = progress.job("bench store");
            let r = haul::bench::store::run_bench_with(&opts, &|step| bar.step(step));
            bar.finish(if r.is_ok() { "done" } else { "failed" }, r.is_err());
            let r = r?;
            if json {
                print_json(&r)?;
            } else {
                out(haul::bench::store::report_text(&r).trim_end());
            }
            Ok(exit::OK)
        }
    }
}

fn du_text(r: &haul::store::DuReport) -> String {
    use haul::util::human_bytes;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut lines = vec![format!(
        "{:<24} {:>5} {:>12} {:>12} {:>12} {:>8}",
        "job", "sets", "logical", "referenced", "exclusive", "ratio"
    )];
    let mut logical = 0;
    for j in &r.jobs {
        logical += j.bytes_logical;
        lines.push(format!(
            "{:<24} {:>5} {:>12} {:>12} {:>12} {:>7.2}x",
            j.job,
            j.sets,
            human_bytes(j.bytes_logical),
            human_bytes(j.bytes_referenced),
            human_bytes(j.bytes_exclusive),
            ratio(j.bytes_logical, j.bytes_referenced)
        ));
    }
    let on_disk = r.bytes_packs + r.bytes_index + r.bytes_manifests + r.bytes_temp;
    lines.push(format!(
        "total: {} sets, {} logical, {} on disk ({} packs, {} index, {} manifests); compression {:.2}x, dedup {:.2}x, {:.2}x overall; {} distinct pages; {}",
        r.sets,
        human_bytes(logical.max(r.bytes_logical)),
        human_bytes(on_disk),
        human_bytes(r.bytes_packs),
        human_bytes(r.bytes_index),
        human_bytes(r.bytes_manifests),
        r.compression_ratio,
        r.dedup_ratio,
        ratio(logical.max(r.bytes_logical), on_disk),
        r.pages_stored,
        if r.unreadable_manifests > 0 {
            format!(
                "gc would refuse: {} manifests are unreadable (see `haul images verify`)",
                r.unreadable_manifests
            )
        } else {
            format!(
                "gc would free {} ({} packs removed, {} repacked)",
                human_bytes(r.bytes_gc_frees),
                r.gc_packs_removed,
                r.gc_packs_repacked
            )
        }
    ));
    if r.sets_incomplete > 0 {
        lines.push(format!(
            "{} of these sets are incomplete pre-dumps of a pre-copy that did not finish: gc removes them, and the other figures leave them out",
            r.sets_incomplete
        ));
    }
    lines.join("\n")
}

/// The zstd level of a compression setting (None: store pages uncompressed).
fn level(c: haul::job::Compression) -> Option<i32> {
    match c {
        haul::job::Compression::None => None,
        haul::job::Compression::Zstd(l) => Some(l),
    }
}

/// `haul dump --check`: the dump's refusal checks alone.
fn dump_check(args: &cli::DumpArgs) -> Result<u8, Error> {
    match haul::dump::precheck(args.pid) {
        Ok(()) => {}
        // "No" is the answer asked for, with every reason: on stdout, exit 1.
        Err(e) if e.is_refusal() => {
            let reasons = e.reasons();
            if args.json {
                print_json(&serde_json::json!({
                    "pid": args.pid, "checkpointable": false, "reasons": reasons,
                }))?;
            } else {
                out(&format!("pid {} cannot be checkpointed:", args.pid));
                for r in &reasons {
                    out(&format!("  {r}"));
                }
            }
            return Ok(exit::FAILED);
        }
        Err(e) => return Err(e.into()),
    }
    let threads = haul::proc::tids(args.pid).map(|t| t.len()).unwrap_or(0);
    let fds = haul::proc::fds(args.pid).map(|f| f.len()).unwrap_or(0);
    if args.json {
        print_json(&serde_json::json!({
            "pid": args.pid, "checkpointable": true, "threads": threads, "fds": fds,
            "reasons": [],
        }))?;
    } else {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        println!(
            "pid {} can be checkpointed ({}, {})",
            args.pid,
            plural(threads, "thread", "threads"),
            plural(fds, "fd", "fds")
        );
    }
    Ok(exit::OK)
}

fn dump_cmd(args: cli::DumpArgs) -> Result<u8, Error> {
    use haul::util::{human_bytes, human_us};
    if args.check {
        return dump_check(&args);
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => default_job_name(args.pid),
    };
    let store = haul::store::Store::open_or_create(&args.store.store)?;
    let lazy = if args.lazy {
        let token = args
            .token_file
            .as_deref()
            .map(haul::xfer::read_token_file)
            .transpose()?;
        let listen = args.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        // Bad input before anything is frozen (the worker checks again when it binds).
        haul::xfer::check_listen(&listen, token.is_some())?;
        Some(haul::dump::worker::LazyServeRequest {
            listen,
            token,
            source_timeout_us: haul::util::us(
                args.source_timeout
                    .unwrap_or(std::time::Duration::from_secs(10)),
            ),
        })
    } else {
        None
    };
    let req = haul::dump::worker::CheckpointRequest {
        pid: args.pid,
        store: store.path().to_path_buf(),
        job: name.clone(),
        leave_running: args.leave_running,
        buffer: args.buffer,
        level: level(args.compression),
        fail_at: haul::dump::Step::from_env().map(|s| s.name().to_string()),
        parent: std::process::id() as i32,
        lazy,
        predump: args
            .predump
            .filter(|n| *n > 0)
            .map(|n| haul::dump::worker::PredumpRequest {
                interval_us: haul::util::us(args.interval),
                max_iterations: n,
                stop_below: args.stop_below,
                stop_growth: 1.1,
                tracker: match tracker_choice(&args.tracker) {
                    haul::dump::TrackerChoice::Only(k) => Some(k),
                    haul::dump::TrackerChoice::Auto => None,
                },
            }),
    };
    let exe = std::env::current_exe()
        .map_err(|e| Error::Usage(format!("cannot find haul's own binary: {e}")))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, std::sync::Arc::clone(&stop));
    }
    if req.lazy.is_some() {
        return lazy_dump_cmd(&args, &exe, &req, &store, &stop);
    }
    let o = haul::dump::worker::checkpoint_in_worker(&exe, &req, &stop)?;
    if o.interrupted {
        return Err(haul::runner::RunError::Interrupted.into());
    }
    let d = haul::dump::StoredDump {
        set: store.load_set(&o.set)?,
        stats: o.stats,
    };
    let predump = o.predump;
    let pruned = match args.keep {
        Some(k) => store.prune(&name, k)?,
        None => Vec::new(),
    };
    if args.json {
        let v = serde_json::json!({
            "set": d.set.id, "job": name, "pid": args.pid, "stats": d.stats,
            "figures": d.set.figures, "pruned": pruned, "predump": predump,
        });
        print_json(&v)?;
    } else {
        let f = &d.set.figures;
        out(&d.set.id);
        out(&format!(
            "  pid {} {}: frozen {} (freezing {}, memdump {}{}), write {}; {} pages ({} zero), {} logical, {} stored, {} new",
            args.pid,
            if args.leave_running { "left running" } else { "killed once committed" },
            human_us(d.stats.frozen_time),
            human_us(d.stats.freezing_time),
            human_us(d.stats.memdump_time),
            if d.stats.frozen_commit_time > 0 {
                format!(", commit {}", human_us(d.stats.frozen_commit_time))
            } else {
                String::new()
            },
            human_us(d.stats.memwrite_time),
            f.pages,
            f.pages_zero,
            human_bytes(f.bytes_logical),
            human_bytes(f.bytes_stored),
            human_bytes(f.bytes_new)
        ));
        if let Some(p) = &predump {
            out(&format!(
                "  pre-copy: {} pre-dumps with {} ({}), stopped: {}; final dump carried {} pages",
                p.iterations.len(),
                p.tracker,
                p.tracker_reason,
                p.stop_reason,
                d.stats.pages_skipped_parent
            ));
            for i in &p.iterations {
                out(&format!(
                    "    {} {}: {} pages written, {} new, frozen {}, took {}",
                    i.index,
                    i.set,
                    i.pages_written,
                    human_bytes(i.bytes_new),
                    human_us(i.frozen_time),
                    human_us(i.duration_us)
                ));
            }
        }
        for p in pruned {
            out(&format!("  pruned {p}"));
        }
    }
    Ok(exit::OK)
}

/// `haul dump --pid PID --lazy`: the worker dumps, answers the set and the address, and serves
/// the frozen process until a restore has every page (killed: exit 0) or none is connected
/// for the source timeout (resumed, rolled back: exit 1). SIGINT/SIGTERM roll back too.
fn lazy_dump_cmd(
    args: &cli::DumpArgs,
    exe: &std::path::Path,
    req: &haul::dump::worker::CheckpointRequest,
    store: &haul::store::Store,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u8, Error> {
    use haul::util::{human_bytes, human_us};
    let flush = || {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    };
    let (o, worker) = haul::dump::worker::lazy_checkpoint_in_worker(exe, req, stop)?;
    if o.interrupted {
        return Err(haul::runner::RunError::Interrupted.into());
    }
    let addr = o.serve_addr.clone().unwrap_or_default();
    let set = store.load_set(&o.set)?;
    if args.json {
        let v = serde_json::json!({
            "set": set.id, "job": set.job, "pid": args.pid, "serving": addr,
            "stats": o.stats, "figures": set.figures, "predump": o.predump,
        });
        out(&serde_json::to_string(&v).map_err(|e| Error::Usage(e.to_string()))?);
    } else {
        let f = &set.figures;
        out(&set.id);
        out(&format!("serving on {addr}"));
        out(&format!(
            "  pid {} frozen, serving its lazy pages: dump froze it for {} (memdump {}, write {}); {} pages: {} lazy, {} zero, {} stored ({} new)",
            args.pid,
            human_us(o.stats.frozen_time),
            human_us(o.stats.memdump_time),
            human_us(o.stats.memwrite_time),
            f.pages,
            f.pages_lazy,
            f.pages_zero,
            human_bytes(f.bytes_stored),
            human_bytes(f.bytes_new)
        ));
        out(&format!(
            "  restore it with: haul restore {} --lazy --pid any --from {addr}",
            set.id
        ));
    }
    flush();
    let end = worker.wait(stop)?;
    let killed = end.kind == haul::dump::SourceEndKind::Killed;
    if args.json {
        out(
            &serde_json::to_string(&serde_json::json!({ "source": end }))
                .map_err(|e| Error::Usage(e.to_string()))?,
        );
    } else {
        let how = match end.kind {
            haul::dump::SourceEndKind::Killed => "killed",
            haul::dump::SourceEndKind::Thawed => "resumed",
            haul::dump::SourceEndKind::Gone => "gone",
        };
        out(&format!(
            "source {how} after {}: {}",
            human_us(end.served_us),
            end.detail
        ));
    }
    flush();
    if killed {
        if let Some(k) = args.keep {
            for p in store.prune(&set.job, k)? {
                if !args.json {
                    out(&format!("  pruned {p}"));
                }
            }
        }
        Ok(exit::OK)
    } else {
        Ok(exit::FAILED)
    }
}

/// The tracker named on the command line (clap allows only these names).
fn tracker_choice(name: &str) -> haul::dump::TrackerChoice {
    use haul::dump::TrackerChoice;
    use haul::track::TrackerKind;
    match name {
        "uffd-wp" => TrackerChoice::Only(TrackerKind::UffdWp),
        "soft-dirty" => TrackerChoice::Only(TrackerKind::SoftDirty),
        "hash" => TrackerChoice::Only(TrackerKind::Hash),
        _ => TrackerChoice::Auto,
    }
}

/// The command name of `pid`, cut to what a job name may hold; `pid-N` when there is none.
fn default_job_name(pid: i32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let name: String = comm
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("pid-{pid}")
    } else {
        name
    }
}

fn restore_cmd(args: cli::RestoreArgs) -> Result<u8, Error> {
    use haul::restore::{PidChoice, RestoreOptions};
    let store = haul::store::Store::open(&args.store.store)?;
    let set = store.load_set(&args.set)?;
    let opts = RestoreOptions {
        pid: if args.pid == "any" {
            PidChoice::Any
        } else {
            PidChoice::Same
        },
        fail_at: haul::restore::Step::from_env(),
        verify_state: args.verify.as_deref() == Some("state"),
    };
    let r = haul::restore::restore(&set, &store, &opts)?;
    if args.json {
        let v = serde_json::json!({
            "set": set.id, "pid": r.pid, "restore_time": r.restore_time,
            "time_to_running": r.time_to_running, "pages_restored": r.pages_restored,
        });
        print_json(&v)?;
    } else {
        out(&r.pid.to_string());
    }
    Ok(exit::OK)
}

/// `haul restore SET --lazy [--from HOST:PORT]`: prints the PID as soon as the process runs,
/// then serves its memory in the foreground until every page is resident.
fn lazy_restore_cmd(args: cli::RestoreArgs) -> Result<u8, Error> {
    use haul::lazy::{LazyOptions, LazySource};
    use haul::restore::{PageSource, PidChoice, RestoreOptions};
    use std::sync::Arc;
    let opts = RestoreOptions {
        pid: if args.pid == "any" {
            PidChoice::Any
        } else {
            PidChoice::Same
        },
        fail_at: haul::restore::Step::from_env(),
        verify_state: args.verify.as_deref() == Some("state"),
    };
    let lopts = LazyOptions {
        idle_push: args.idle_push,
        prefetch: args.prefetch,
        source_timeout: args.source_timeout,
        ..Default::default()
    };
    // With a page server: kept to say `Done` once every page is resident (a server serving a
    // frozen source, `haul dump --lazy`, then kills it).
    let mut remote = None;
    let (set, eager, lazy): (_, Box<dyn PageSource>, Box<dyn LazySource>) = match &args.from {
        Some(addr) => {
            let token = match &args.token_file {
                Some(f) => haul::xfer::read_token_file(f)?,
                None => Vec::new(),
            };
            let eager = haul::xfer::RemoteSource::new(addr, token.clone(), args.source_timeout);
            // A lazy dump's pages are served by its frozen source, which this server is then.
            let set = eager.manifest(&args.set)?;
            let lazy = Arc::new(haul::xfer::RemoteSource::new(
                addr,
                token,
                args.source_timeout,
            ));
            remote = Some(lazy.clone());
            (set, Box::new(eager), Box::new(lazy))
        }
        None => {
            let store = Arc::new(haul::store::Store::open(&args.store.store)?);
            let set = store.load_set(&args.set)?;
            if set.figures.pages_lazy > 0 {
                return Err(Error::Usage(format!(
                    "set {}: {} pages were left in the frozen source by a lazy dump (haul dump \
                     --lazy): restore it with --from the address that dump serves on",
                    set.id, set.figures.pages_lazy
                )));
            }
            let lazy = haul::lazy::StoreSource::new(store.clone());
            (set, Box::new(StoreArc(store)), Box::new(lazy))
        }
    };
    let set = Arc::new(set);
    let lr = haul::lazy::restore_lazy(&set, &*eager, lazy, &opts, &lopts)?;
    let (pid, ttr, pages_lazy) = (lr.pid(), lr.outcome.time_to_running, lr.pages_lazy);
    out(&pid.to_string());
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let rep = lr.wait()?;
    let released = match (&rep.source_lost, &remote) {
        (None, Some(r)) => Some(r.done(&set.id)),
        _ => None,
    };
    let released_msg = match &released {
        Some(Ok(m)) => Some(m.clone()),
        _ => None,
    };
    if args.json {
        let v = serde_json::json!({
            "set": set.id, "pid": pid, "time_to_running": ttr, "pages_lazy": pages_lazy,
            "lazy": rep, "source_released": released_msg,
        });
        print_json(&v)?;
    }
    match (&rep.source_lost, released) {
        (Some(reason), _) => {
            // `reason` says what was lost ("page source lost: ...").
            eprintln!("haul: process {pid} killed: {reason}");
            Ok(exit::FAILED)
        }
        (None, Some(Err(e))) => {
            eprintln!(
                "haul: every page of process {pid} is resident, but the page server did not \
                 hear so ({e}): a frozen source may resume after its timeout"
            );
            Ok(exit::FAILED)
        }
        (None, _) => Ok(exit::OK),
    }
}

/// The store as the eager part's page source, shared with the daemon.
struct StoreArc(std::sync::Arc<haul::store::Store>);

impl haul::restore::PageSource for StoreArc {
    fn for_each_page(
        &self,
        set: &haul::image::ImageSet,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(), Error> {
        self.0.for_each_page(set, f)
    }
}

/// `haul page-server --listen ADDR --store DIR --set SET [--token-file F]`.
fn page_server_cmd(args: cli::PageServerArgs) -> Result<u8, Error> {
    haul::xfer::check_listen(&args.listen, args.token_file.is_some())?;
    let store = std::sync::Arc::new(haul::store::Store::open(&args.store.store)?);
    let token = args
        .token_file
        .as_deref()
        .map(haul::xfer::read_token_file)
        .transpose()?;
    let opts = haul::xfer::ServerOptions {
        token,
        jobs: args.jobs,
        ..Default::default()
    };
    let server = haul::xfer::PageServer::bind(&args.listen, store, &args.sets, opts)?;
    out(&format!("listening on {}", server.local_addr()?));
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    server.serve()?;
    Ok(exit::OK)
}
