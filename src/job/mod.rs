//! Job files (DESIGN.md §2): schema, defaults, validation, placeholders and diagnostics that name
//! file, line, column and field.

pub mod schema;
pub mod units;

pub use schema::*;
pub use units::{Compression, Dur, Size};

/// Errors of the `job` module.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

// ---- interim API, replaced by the job-file module's full version on merge ----
use std::path::{Path, PathBuf};

/// A loaded job: its name, file, folder and spec with relative paths resolved.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    pub file: PathBuf,
    pub dir: PathBuf,
    pub spec: JobSpec,
}

pub fn load(path: &Path) -> Result<Job, JobError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobError::Io {
        context: format!("read {}", path.display()),
        source,
    })?;
    let spec: JobSpec = toml::from_str(&text).map_err(|e| JobError::Io {
        context: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = spec.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut spec = spec;
    spec.report.dir = dir.join(&spec.report.dir);
    spec.report.history = dir.join(&spec.report.history);
    if let Some(p) = &spec.store.path {
        spec.store.path = Some(dir.join(p));
    }
    if let Some(p) = &spec.process.pidfile {
        spec.process.pidfile = Some(dir.join(p));
    }
    Ok(Job {
        name,
        file: path.into(),
        dir,
        spec,
    })
}

pub fn load_all(paths: &[PathBuf]) -> (Vec<Job>, Vec<(PathBuf, JobError)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for p in paths {
        match load(p) {
            Ok(j) => ok.push(j),
            Err(e) => bad.push((p.clone(), e)),
        }
    }
    (ok, bad)
}

#[derive(Clone, Debug, Default)]
pub struct Placeholders {
    pub job: String,
    pub run: String,
    pub run_dir: String,
    pub store: String,
    pub pid: Option<i32>,
}

pub fn expand(s: &str, p: &Placeholders) -> Result<String, String> {
    let pid = p.pid.map(|x| x.to_string()).unwrap_or_default();
    Ok(s.replace("{job}", &p.job)
        .replace("{run}", &p.run)
        .replace("{run_dir}", &p.run_dir)
        .replace("{store}", &p.store)
        .replace("{pid}", &pid))
}
