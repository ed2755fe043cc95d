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
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The error and its sources, "outer: inner: innermost", without repeating a message a
/// transparent wrapper already showed.
fn error_chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// The exit code of a command that failed with `e`.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Job(_) | Error::Usage(_) => exit::BAD_INPUT,
        Error::Run(haul::runner::RunError::Locked { .. }) => exit::LOCKED,
        Error::Run(haul::runner::RunError::Interrupted) => exit::INTERRUPTED,
        _ => exit::FAILED,
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    match cli.command {
        Command::Check { jobs } => Ok(check(&jobs)),
        Command::Run(args) => run_jobs(args),
        Command::Report { files } => {
            for f in files {
                let reports = haul::report::load(&f)?;
                let text = if reports.len() == 1 && !f.extension().is_some_and(|x| x == "jsonl") {
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
    if !args.quiet {
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
