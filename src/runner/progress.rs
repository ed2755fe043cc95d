//! What the runner tells the person (or cron) watching: spinners on a terminal, timestamped
//! plain lines otherwise, nothing but errors with `--quiet`.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Spinners when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Timestamped plain lines on stderr (what cron mails).
    Plain,
    /// Only errors.
    Quiet,
}

/// Shared by every job thread of a batch.
pub struct Progress {
    mode: Resolved,
    lock: Mutex<()>,
}

enum Resolved {
    Bars(MultiProgress),
    Plain,
    Quiet,
}

/// One job's line of progress.
pub struct JobProgress<'a> {
    parent: &'a Progress,
    job: String,
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Progress {
        let mode = match mode {
            ProgressMode::Quiet => Resolved::Quiet,
            ProgressMode::Plain => Resolved::Plain,
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                Resolved::Bars(MultiProgress::new())
            }
            ProgressMode::Auto => Resolved::Plain,
        };
        Progress {
            mode,
            lock: Mutex::new(()),
        }
    }

    /// Starts the progress line of one job.
    pub fn job(&self, job: &str) -> JobProgress<'_> {
        let bar = match &self.mode {
            Resolved::Bars(m) => {
                let b = m.add(ProgressBar::new_spinner());
                let style =
                    ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                b.set_style(style);
                b.set_prefix(job.to_string());
                b.enable_steady_tick(Duration::from_millis(120));
                Some(b)
            }
            _ => None,
        };
        JobProgress {
            parent: self,
            job: job.to_string(),
            bar,
        }
    }

    fn line(&self, job: &str, msg: &str, error: bool) {
        match &self.mode {
            Resolved::Quiet if !error => {}
            Resolved::Bars(m) => {
                let _ = m.println(format!("{job}: {msg}"));
            }
            _ => {
                let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                let _ = writeln!(std::io::stderr(), "{ts} {job}: {msg}");
            }
        }
    }
}

impl JobProgress<'_> {
    /// A step of the job's lifecycle: on the spinner, or as a plain line.
    pub fn step(&self, msg: &str) {
        tracing::info!(job = %self.job, "{msg}");
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => self.parent.line(&self.job, msg, false),
        }
    }

    /// The job's final line.
    pub fn finish(&self, msg: &str, error: bool) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.parent.line(&self.job, msg, error);
    }
}
