//! The command line (clap derive). `main.rs` dispatches these and maps errors to exit codes.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    },
    /// Run a batch of jobs (the way cron calls it: `haul run jobs/*.toml`).
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Print a readable summary of a run report (`<job>-<run>.json`) or of a history file (`.jsonl`).
    Report {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
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
}
