//! What the runner tells the person (or cron) watching: spinners on a terminal, timestamped
//! plain lines otherwise, nothing but errors with `--quiet`. [`Activity`] does the same for
//! one long operation of a command (`haul dump`, `haul restore`, `haul images verify`, ...).

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
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

/// Plain lines of an [`Activity`] start only once it has run this long: a command that ends
/// sooner prints nothing more than it always did.
pub const PLAIN_AFTER: Duration = Duration::from_secs(1);

/// The progress of one long operation of a command (a dump, a restore, a verify, a gc, a push
/// or a pull), on stderr: a spinner with the step and the time so far on a terminal; otherwise
/// timestamped lines (`<time> <what>: <step>`), which start only once the operation has run
/// for [`PLAIN_AFTER`] (then with the step it is at) and end with its final line; nothing with
/// [`ProgressMode::Quiet`].
pub struct Activity {
    what: String,
    started: std::time::Instant,
    bar: Option<ProgressBar>,
    plain: Option<Arc<PlainState>>,
    /// Wakes and joins the thread that shows the plain lines after [`PLAIN_AFTER`].
    timer: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// What the plain lines of an [`Activity`] share with its timer thread.
struct PlainState {
    /// The step it is at, and whether lines are shown yet.
    step: Mutex<(String, bool)>,
}

fn plain_line(what: &str, msg: &str) {
    let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = writeln!(std::io::stderr(), "{ts} {what}: {msg}");
}

impl Activity {
    /// Starts showing `what` (e.g. `verify`, `dump of pid 42`) at its first step `step`.
    pub fn start(mode: ProgressMode, what: &str, step: &str) -> Activity {
        let terminal = std::io::stderr().is_terminal();
        let mut a = Activity {
            what: what.to_string(),
            started: std::time::Instant::now(),
            bar: None,
            plain: None,
            timer: None,
        };
        match mode {
            ProgressMode::Quiet => {}
            ProgressMode::Auto if terminal => {
                let b = ProgressBar::new_spinner();
                let style =
                    ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                b.set_style(style);
                b.set_prefix(what.to_string());
                b.set_message(step.to_string());
                b.enable_steady_tick(Duration::from_millis(120));
                a.bar = Some(b);
            }
            ProgressMode::Auto | ProgressMode::Plain => {
                let state = Arc::new(PlainState {
                    step: Mutex::new((step.to_string(), false)),
                });
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let shared = Arc::clone(&state);
                let name = what.to_string();
                let spawned =
                    std::thread::Builder::new()
                        .name("progress".into())
                        .spawn(move || {
                            // Finished (or dropped) before PLAIN_AFTER: nothing to say.
                            if rx.recv_timeout(PLAIN_AFTER)
                                != Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                            {
                                return;
                            }
                            let mut s = shared.step.lock().unwrap_or_else(|e| e.into_inner());
                            s.1 = true;
                            plain_line(&name, &s.0);
                        });
                // No thread, no plain lines: the operation itself goes on.
                if let Ok(handle) = spawned {
                    a.timer = Some((tx, handle));
                    a.plain = Some(state);
                }
            }
        }
        a
    }

    /// The operation is at `step` now.
    pub fn step(&self, step: &str) {
        tracing::debug!(what = %self.what, "{step}");
        if let Some(b) = &self.bar {
            b.set_message(step.to_string());
        }
        if let Some(p) = &self.plain {
            let mut s = p.step.lock().unwrap_or_else(|e| e.into_inner());
            s.0 = step.to_string();
            if s.1 {
                plain_line(&self.what, step);
            }
        }
    }

    /// The operation has ended: the spinner goes; plain lines, if any were shown, end with
    /// `msg` (with its duration).
    pub fn finish(mut self, msg: &str) {
        self.end(Some(msg));
    }

    fn end(&mut self, msg: Option<&str>) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Some((tx, handle)) = self.timer.take() {
            let _ = tx.send(());
            let _ = handle.join();
        }
        if let Some(p) = self.plain.take() {
            let s = p.step.lock().unwrap_or_else(|e| e.into_inner());
            if s.1 {
                if let Some(m) = msg {
                    let took = crate::util::human_us(crate::util::us(self.started.elapsed()));
                    plain_line(&self.what, &format!("{m} (took {took})"));
                }
            }
        }
    }
}

impl Drop for Activity {
    /// An operation that failed (its error is printed by `main`): the spinner goes, no final
    /// line.
    fn drop(&mut self) {
        self.end(None);
    }
}
