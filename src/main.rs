//! The `haul` binary: parses the command line, runs the command, and is the one place that maps
//! errors to messages and exit codes. What each command prints is in `cli/`; what it does is in
//! the library (`haul::runner` for the stages).

mod cli;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

use cli::{out, Cli, Command};
use haul::runner::worker;
use haul::runner::{exit, CommandError, JobStatus, ProgressMode, RunError, RunOptions};
use haul::Error;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(worker::WORKER_COMMAND) {
        // Internal: the process that holds a checkpoint's ptrace session (see runner::worker).
        init_logging();
        return match worker::worker_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("haul checkpoint worker: {}", haul::error::chain(&e));
                ExitCode::from(exit::FAILED)
            }
        };
    }
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("haul: {}", haul::error::chain(&e));
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

/// The exit code of a command that failed with `e`.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Job(_) | Error::Usage(_) => exit::BAD_INPUT,
        Error::Xfer(x) if x.is_bad_input() => exit::BAD_INPUT,
        Error::Command(c) if c.is_bad_input() => exit::BAD_INPUT,
        Error::Command(CommandError::Interrupted) => exit::INTERRUPTED,
        Error::Run(RunError::Locked { .. }) => exit::LOCKED,
        Error::Run(RunError::Interrupted) => exit::INTERRUPTED,
        _ => exit::FAILED,
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    match cli.command {
        Command::Check { jobs, json: true } => cli::check::json(&jobs),
        Command::Check { jobs, .. } => Ok(check(&jobs)),
        Command::Run(args) => run_jobs(args),
        Command::Dump(args) => cli::dump::run(args),
        Command::Restore(args) => cli::restore::run(args),
        Command::PageServer(args) => cli::page_server::run(args),
        Command::Images(args) => cli::images::run(args),
        Command::Bench { quiet, what } => cli::bench::run(what, quiet),
        Command::Report {
            files,
            html: Some(out),
            ..
        } => cli::report_html::run(&files, &out),
        Command::Report {
            files, json: true, ..
        } => cli::report::json(&files),
        Command::Report { files, .. } => {
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
        Command::Completions { shell } => Ok(cli::shell::completions(shell)),
        Command::Man { dir } => cli::shell::man(dir.as_deref()),
        Command::Doctor { json } => cli::doctor::run(json),
    }
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

fn run_jobs(args: cli::RunArgs) -> Result<u8, Error> {
    let paths = haul::runner::command::expand_globs(&args.jobs)?;
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
    if args.json {
        // Each job's line as it ends; the progress stays on stderr.
        let batch = haul::runner::run_batch_with(&paths, &opts, &cli::run::print_job);
        return Ok(batch.exit_code());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_exits_2_whichever_module_found_it() {
        let no_match = CommandError::NoMatch {
            pattern: "jobs/*.toml".into(),
        };
        assert_eq!(exit_code(&no_match.into()), exit::BAD_INPUT);
        assert_eq!(exit_code(&Error::Usage("x".into())), exit::BAD_INPUT);
        let token = haul::xfer::XferError::TokenRequired {
            addr: "0.0.0.0:1".into(),
        };
        assert_eq!(exit_code(&Error::Xfer(token)), exit::BAD_INPUT);
        let token = haul::xfer::XferError::TokenRequired {
            addr: "0.0.0.0:1".into(),
        };
        assert_eq!(
            exit_code(&CommandError::Xfer(token).into()),
            exit::BAD_INPUT
        );
    }

    #[test]
    fn an_interrupted_dump_or_run_exits_130_and_a_held_lock_3() {
        assert_eq!(
            exit_code(&CommandError::Interrupted.into()),
            exit::INTERRUPTED
        );
        assert_eq!(exit_code(&RunError::Interrupted.into()), exit::INTERRUPTED);
        let locked = RunError::Locked {
            job: "web".into(),
            lock: "/r/.locks/web.lock".into(),
        };
        assert_eq!(exit_code(&locked.into()), exit::LOCKED);
    }

    #[test]
    fn other_failures_exit_1() {
        let gone = haul::store::StoreError::SetNotFound {
            id: "x".into(),
            store: "/s".into(),
        };
        assert_eq!(exit_code(&CommandError::Store(gone).into()), exit::FAILED);
        let failed = worker::WorkerError::Failed("dump of pid 1 failed".into());
        assert_eq!(
            exit_code(&CommandError::Worker(failed).into()),
            exit::FAILED
        );
        assert_eq!(
            exit_code(&RunError::Setup("no [restore]".into()).into()),
            exit::FAILED
        );
    }
}
