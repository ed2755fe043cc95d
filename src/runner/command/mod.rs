//! The commands of the binary that run stages outside a job: `haul dump` and `haul restore`
//! (eager or `--lazy`). They run the same stage code as `haul run` (the checkpoint worker, the
//! restore options, the lazy daemon); the binary parses their arguments and prints what they
//! return.

mod dump;
mod restore;
mod tty;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use dump::{dump, lazy_dump, DumpCommand, Dumped, LazyDumped, LazyServe, SourceEnded};
pub use restore::{lazy_restore, restore, LazyRestoreCommand, LazyRestored, LazyRunning};
pub use restore::{RestoreCommand, Restored};
pub use tty::{prepare as tty_prepare, Terminal, TtyError};

/// Errors of a command: bad input found before anything ran, or the error of the module a
/// stage called.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("bad pattern {pattern:?}: {source}")]
    BadPattern {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("{pattern}: {source}")]
    Unreadable {
        pattern: String,
        #[source]
        source: glob::GlobError,
    },
    #[error("{pattern}: no job file matches")]
    NoMatch { pattern: String },
    #[error("cannot find haul's own binary: {0}")]
    OwnBinary(#[source] std::io::Error),
    #[error(
        "set {set}: {pages} pages were left in the frozen source by a lazy dump (haul dump \
         --lazy): restore it with --from the address that dump serves on"
    )]
    LazyPagesElsewhere { set: String, pages: u64 },
    /// SIGINT or SIGTERM stopped the pre-dumps before the final dump.
    #[error("interrupted by a signal to haul")]
    Interrupted,
    #[error(transparent)]
    Worker(#[from] super::worker::WorkerError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Xfer(#[from] crate::xfer::XferError),
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
    #[error(transparent)]
    Lazy(#[from] crate::lazy::LazyError),
    #[error(transparent)]
    Tty(#[from] TtyError),
}

impl CommandError {
    /// Whether the command was given something it cannot use (exit 2), as opposed to failing.
    pub fn is_bad_input(&self) -> bool {
        match self {
            CommandError::BadPattern { .. }
            | CommandError::Unreadable { .. }
            | CommandError::NoMatch { .. }
            | CommandError::OwnBinary(_)
            | CommandError::LazyPagesElsewhere { .. }
            | CommandError::Tty(TtyError::NotATerminal { .. }) => true,
            CommandError::Xfer(x) => x.is_bad_input(),
            _ => false,
        }
    }
}

/// Expands quoted globs (`haul run 'jobs/*.toml'`); a plain path is taken as it is. A pattern
/// that matches nothing is refused.
pub fn expand_globs(args: &[String]) -> Result<Vec<PathBuf>, CommandError> {
    let mut out = Vec::new();
    for a in args {
        if a.contains(['*', '?', '[']) {
            let paths = glob::glob(a).map_err(|source| CommandError::BadPattern {
                pattern: a.clone(),
                source,
            })?;
            let before = out.len();
            for p in paths {
                out.push(p.map_err(|source| CommandError::Unreadable {
                    pattern: a.clone(),
                    source,
                })?);
            }
            if out.len() == before {
                return Err(CommandError::NoMatch { pattern: a.clone() });
            }
        } else {
            out.push(PathBuf::from(a));
        }
    }
    Ok(out)
}

/// The command name of `pid`, cut to what a job name may hold; `pid-N` when there is none.
pub fn default_job_name(pid: i32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    job_name_of(&comm, pid)
}

/// [`default_job_name`] of a command name: every character a job name may not hold becomes
/// `_`; an empty name, or one starting with a dot, becomes `pid-N`.
fn job_name_of(comm: &str, pid: i32) -> String {
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

/// A flag SIGINT and SIGTERM set, for a command that must end what it started (a worker, a
/// frozen source) instead of dying with it.
fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    stop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_name_keeps_what_a_job_name_may_hold() {
        assert_eq!(job_name_of("memwriter\n", 7), "memwriter");
        assert_eq!(job_name_of("my app:1\n", 7), "my_app_1");
        assert_eq!(job_name_of("v1.2-x_y", 7), "v1.2-x_y");
    }

    #[test]
    fn a_job_name_that_cannot_be_used_becomes_the_pid() {
        assert_eq!(job_name_of("", 42), "pid-42");
        assert_eq!(job_name_of("  \n", 42), "pid-42");
        assert_eq!(job_name_of(".hidden", 42), "pid-42");
    }

    #[test]
    fn globs_expand_sorted_and_plain_paths_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.toml", "a.toml", "c.txt"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let pattern = format!("{}/*.toml", dir.path().display());
        let plain = "does/not/exist.toml".to_string();
        let got = expand_globs(&[pattern, plain.clone()]).unwrap();
        assert_eq!(
            got,
            vec![
                dir.path().join("a.toml"),
                dir.path().join("b.toml"),
                PathBuf::from(plain)
            ]
        );
    }

    #[test]
    fn a_glob_matching_nothing_or_malformed_is_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let none = format!("{}/*.toml", dir.path().display());
        let e = expand_globs(std::slice::from_ref(&none)).unwrap_err();
        assert!(matches!(&e, CommandError::NoMatch { pattern } if *pattern == none));
        assert_eq!(e.to_string(), format!("{none}: no job file matches"));
        assert!(e.is_bad_input());
        let e = expand_globs(&["jobs/[.toml".into()]).unwrap_err();
        assert!(matches!(e, CommandError::BadPattern { .. }), "{e:?}");
        assert!(e.is_bad_input());
    }

    #[test]
    fn only_bad_input_and_interrupted_are_told_apart_from_failures() {
        assert!(!CommandError::Interrupted.is_bad_input());
        let gone = crate::store::StoreError::SetNotFound {
            id: "x".into(),
            store: "/s".into(),
        };
        assert!(!CommandError::Store(gone).is_bad_input());
        let set = CommandError::LazyPagesElsewhere {
            set: "s".into(),
            pages: 3,
        };
        assert!(set.is_bad_input());
        assert!(set.to_string().starts_with("set s: 3 pages were left"));
    }
}
