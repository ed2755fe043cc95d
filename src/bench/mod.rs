//! Benchmarks (`haul bench store|precopy|lazy|tree`): real processes and real stores, measured side
//! by side after a prewarm (DESIGN.md §4 "This VM": prewarm, medians, ratios). They live here,
//! not in the modules they measure, so that measuring one module never makes it depend on
//! another (the lazy benchmark dumps, but `lazy` itself does not depend on `dump`).
//!
//! - [`store`]: the store against `zstd -T2` on a synthetic image.
//! - [`dump`]: what pre-copy buys and costs (`haul bench precopy`).
//! - [`lazy`]: post-copy restore against an eager restore of the same set.
//! - [`migrate`]: the pause of a migration as the process sees it, on three paths.
//! - [`tree`]: a process tree sharing memory against one process with the same memory.
//! - [`bucket`]: a store in an S3-compatible bucket against a local store.

pub mod bucket;
pub mod dump;
pub mod lazy;
pub mod migrate;
pub mod store;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The error of a benchmark's inner steps: any step's error, said in the benchmark's own
/// words by its `run_bench`.
pub(crate) type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Why a benchmark did not finish: its work directory, or the run itself (what failed is the
/// source, with its own causes).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("creating a work directory in {}", dir.display())]
    WorkDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bench {which}")]
    Failed {
        which: &'static str,
        #[source]
        source: BoxErr,
    },
}

/// Runs benchmark `which` in a fresh directory `haul-bench-<which>…` of its own inside `dir`,
/// removed when done (never `dir` itself).
pub(crate) fn in_work_dir<T>(
    dir: &Path,
    which: &'static str,
    run: impl FnOnce(&Path) -> Result<T, BoxErr>,
) -> Result<T, BenchError> {
    let work = WorkDir::create(dir, &format!("haul-bench-{which}")).map_err(|source| {
        BenchError::WorkDir {
            dir: dir.to_path_buf(),
            source,
        }
    })?;
    run(work.path()).map_err(|source| BenchError::Failed { which, source })
}

/// A benchmark's own work directory: a fresh subdirectory of the directory it was given
/// (`--dir`), made for this run and removed (with everything in it) when dropped. Nothing
/// else in the given directory is touched: a benchmark never removes what it did not make.
/// The given directory is made when missing, and removed at the end only when this made it
/// and it is empty again.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    made_parent: Option<PathBuf>,
}

impl WorkDir {
    /// Makes `<parent>/<name>-<pid>-<n>` (mode 0700), a name no one else uses.
    pub fn create(parent: &Path, name: &str) -> std::io::Result<WorkDir> {
        use std::os::unix::fs::DirBuilderExt;
        let made_parent = if parent.exists() {
            None
        } else {
            std::fs::create_dir_all(parent)?;
            Some(parent.to_path_buf())
        };
        let mut n = crate::util::now_us() % 1_000_000;
        loop {
            let path = parent.join(format!("{name}-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(WorkDir { path, made_parent }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => {
                    if let Some(p) = &made_parent {
                        let _ = std::fs::remove_dir(p);
                    }
                    return Err(e);
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("removing {}: {e}", self.path.display());
        }
        if let Some(p) = &self.made_parent {
            // Only when empty: something else may have been put there meanwhile.
            let _ = std::fs::remove_dir(p);
        }
    }
}

pub(crate) fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Compiles `fixtures/<name>.c` into `dir` with `cc -O2`.
pub(crate) fn build(fixtures: &Path, name: &str, dir: &Path) -> Result<PathBuf, BoxErr> {
    let src = fixtures.join(format!("{name}.c"));
    let bin = dir.join(name);
    let out = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("run cc for {}: {e}", src.display()))?;
    if !out.status.success() {
        return Err(format!(
            "cc {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(bin)
}

/// Maps and touches `bytes` of memory twice, then frees it (the host hands fresh memory over
/// slowly the first time).
pub(crate) fn prewarm(bytes: u64) {
    for _ in 0..2 {
        let mut chunks = Vec::new();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(64 << 20) as usize;
            match crate::sys::mem::AlignedBuf::new(n) {
                Ok(b) => chunks.push(b),
                Err(_) => break,
            }
            left -= n as u64;
        }
        drop(chunks);
    }
}

/// A fixture process: stdout to a log, no inherited fds; killed and reaped by [`Target::stop`]
/// or on drop.
pub(crate) struct Target {
    child: Child,
    pub(crate) pid: i32,
}

impl Target {
    pub(crate) fn start(cmd: &mut Command, log: &Path) -> Result<Target, BoxErr> {
        crate::sys::spawn::close_inherited_fds(cmd);
        let out = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()?;
        let t = Target {
            pid: child.id() as i32,
            child,
        };
        let end = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(log)
            .map(|s| s.lines().any(|l| l == "ready"))
            .unwrap_or(false)
        {
            if Instant::now() > end {
                return Err(format!("pid {} never printed ready", t.pid).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t)
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_upper_middle_and_zero_for_nothing() {
        assert_eq!(median(vec![5, 1, 3]), 3);
        assert_eq!(median(vec![4, 1, 3, 2]), 3);
        assert_eq!(median(Vec::new()), 0);
    }

    #[test]
    fn a_work_dir_is_fresh_private_and_removed_with_the_parent_it_made() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let keep = base.path().join("keep");
        std::fs::write(&keep, "not the benchmark's").unwrap();
        let a = WorkDir::create(base.path(), "b").unwrap();
        let b = WorkDir::create(base.path(), "b").unwrap();
        assert_ne!(a.path(), b.path());
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(a.path().join("x"), "x").unwrap();
        drop(a);
        drop(b);
        assert!(
            keep.exists(),
            "a benchmark never removes what it did not make"
        );
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 1);
        let parent = base.path().join("made");
        let c = WorkDir::create(&parent, "b").unwrap();
        drop(c);
        assert!(
            !parent.exists(),
            "the parent it made is removed once empty again"
        );
    }
}
