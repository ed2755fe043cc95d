//! Job files (DESIGN.md §2): schema, defaults, validation, placeholders and diagnostics that name
//! file, line, column and field.
//!
//! [`load`] reads one job file into a [`Job`]: serde reads the values (unknown keys and wrong
//! types are errors), [`validate`] checks the rules between fields, and every relative path is
//! resolved against the job file's folder. Strings keep their placeholders; the runner expands
//! them with [`expand`] / [`expand_path`] once it knows the run.

pub mod diag;
pub mod placeholder;
pub mod schema;
mod spans;
pub mod units;
pub mod validate;

pub use diag::Diagnostic;
pub use placeholder::{expand, expand_path, has_placeholder, PlaceholderError, Placeholders};
pub use schema::*;
pub use units::{Compression, Dur, Size, UnitError};

use placeholder::{escape, ABSOLUTE};
use spans::{Anchor, Node};
use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// Environment variable naming the default store (when a job has no `store.path`).
pub const STORE_ENV: &str = "HAUL_STORE";

/// Errors of the `job` module.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid job: one diagnostic per problem, in file order.
    #[error("{}", lines(diagnostics))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

fn lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl JobError {
    fn invalid(d: Diagnostic) -> Self {
        JobError::Invalid {
            diagnostics: vec![d],
        }
    }
}

/// A loaded, valid job.
///
/// In `spec`, every relative path is already joined to `dir`: `process.cwd` (default `dir`, set
/// only for a launched command), `process.pidfile`, `stdout`/`stderr` paths, `ready.file`,
/// An `s3://` store with the job's `[store]` settings folded into its location, so that
/// everything that opens the store (the checkpoint worker too) sees them. A location that does
/// not parse is left as it is (validation names it).
fn bucket_location(loc: &Path, st: &schema::StoreSpec, base: &Path) -> PathBuf {
    match crate::store::bucket::BucketUrl::parse(&loc.to_string_lossy()) {
        Ok(mut u) => {
            u.endpoint = st.endpoint.clone().or(u.endpoint);
            u.region = st.region.clone().or(u.region);
            u.path_style = st.path_style.or(u.path_style);
            if let Some(c) = &st.cache {
                u.cache = Some(join(base, c));
            }
            PathBuf::from(u.to_location())
        }
        Err(_) => loc.to_path_buf(),
    }
}

/// `store.path` (always set: default `$HAUL_STORE`, else `dir/haul-store`), `report.dir` and
/// `report.history` (always set: default `<report.dir>/history.jsonl`); a relative `command[0]`
/// containing `/` is joined to the cwd. A relative path that starts with `{run_dir}` or
/// `{store}` is left alone (those expand to absolute paths).
///
/// These paths and strings are templates: pass them through [`expand`] / [`expand_path`] before
/// use (braces in `dir` itself are escaped as `{{`/`}}`, so expansion gives the real folder back).
/// `spec.name` is set to `name`.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub name: String,
    /// The job file as it was named to [`load`] (diagnostics print it this way).
    pub file: PathBuf,
    /// The job file's folder, absolute.
    pub dir: PathBuf,
    pub spec: JobSpec,
}

impl Job {
    /// `store.path` after resolution (a template: may hold placeholders).
    pub fn store_path(&self) -> &Path {
        self.spec.store.path.as_deref().unwrap_or(&self.dir)
    }

    /// `report.history` after resolution (a template: may hold placeholders).
    pub fn history_path(&self) -> PathBuf {
        match &self.spec.report.history {
            Some(h) => h.clone(),
            None => self.spec.report.dir.join(schema::defaults::HISTORY_FILE),
        }
    }
}

/// Reads, checks and resolves one job file.
pub fn load(path: &Path) -> Result<Job, JobError> {
    let bytes = std::fs::read(path).map_err(|source| JobError::Io {
        context: path.display().to_string(),
        source,
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            let (line, col) = diag::line_col_bytes(&bytes, at);
            return Err(JobError::invalid(Diagnostic {
                file: path.to_path_buf(),
                line,
                col,
                field: String::new(),
                message: format!(
                    "the file is not UTF-8 text (byte 0x{:02x}); job files must be UTF-8",
                    bytes[at]
                ),
            }));
        }
    };
    if text.trim().is_empty() {
        return Err(JobError::invalid(Diagnostic::whole_file(
            path,
            "",
            "the file is empty; a job needs at least a [process] section",
        )));
    }

    // serde would read `[[dump]]` (an array of tables) as a struct's fields in order, and then
    // complain about the first one; say what is actually wrong.
    let tree = Node::parse(text);
    if let Some(spans::Kind::Table(entries)) = tree.as_ref().map(|t| &t.kind) {
        if let Some((key, key_span, _)) = entries
            .iter()
            .find(|(k, _, n)| k != "name" && matches!(n.kind, spans::Kind::Array(_)))
        {
            return Err(JobError::invalid(Diagnostic::at(
                path,
                text,
                Some(key_span.start),
                key,
                format!("expected a table, found an array (write [{key}], not [[{key}]])"),
            )));
        }
    }

    let spec: JobSpec = match serde_path_to_error::deserialize(toml::Deserializer::new(text)) {
        Ok(s) => s,
        Err(e) => {
            return Err(JobError::invalid(diag::from_de_error(
                path,
                text,
                tree.as_ref(),
                e,
            )));
        }
    };
    // serde accepted the file, so it is TOML whose values all fit the spanned tree.
    let tree = tree.unwrap_or(Node {
        span: 0..0,
        kind: spans::Kind::Table(Vec::new()),
    });

    let dir = folder_of(path)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let problems = validate::validate(&spec, &tree, &dir, &stem);
    if !problems.is_empty() {
        let mut diagnostics: Vec<Diagnostic> = problems
            .into_iter()
            .map(|p| Diagnostic::at_field(path, text, Some(&tree), &p.field, p.anchor, p.message))
            .collect();
        // File order; problems without a position (line 0) last.
        diagnostics.sort_by_key(|d| (d.line == 0, d.line, d.col));
        return Err(JobError::Invalid { diagnostics });
    }

    let name = spec.name.clone().unwrap_or(stem);
    let spec = resolve(spec, &dir, &name);
    Ok(Job {
        name,
        file: path.to_path_buf(),
        dir,
        spec,
    })
}

/// Loads every file of a batch. A file named twice (same real path) is loaded once; job names
/// must be unique within the batch, so every file of a shared name is rejected, each naming the
/// others. Errors come back in the order of `paths`.
pub fn load_all(paths: &[PathBuf]) -> (Vec<Job>, Vec<(PathBuf, JobError)>) {
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    for p in paths {
        let real = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if seen.insert(real) {
            results.push((p.clone(), load(p)));
        }
    }

    let mut by_name: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    for (p, r) in &results {
        if let Ok(job) = r {
            by_name.entry(job.name.as_str()).or_default().push(p);
        }
    }
    let dups: BTreeMap<String, Vec<PathBuf>> = by_name
        .into_iter()
        .filter(|(_, files)| files.len() > 1)
        .map(|(n, files)| {
            (
                n.to_string(),
                files.into_iter().map(Path::to_path_buf).collect(),
            )
        })
        .collect();

    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for (p, r) in results {
        match r {
            Ok(job) => match dups.get(&job.name) {
                Some(files) => {
                    let others: Vec<String> = files
                        .iter()
                        .filter(|f| **f != p)
                        .map(|f| f.display().to_string())
                        .collect();
                    let d = duplicate_name(&p, &job.name, &others.join(", "));
                    errors.push((p, JobError::invalid(d)));
                }
                None => jobs.push(job),
            },
            Err(e) => errors.push((p, e)),
        }
    }
    (jobs, errors)
}

/// The diagnostic for a job name that another file of the batch uses too, at the `name` key when
/// the file has one.
fn duplicate_name(file: &Path, name: &str, others: &str) -> Diagnostic {
    let message =
        format!("job name \"{name}\" is also used by {others}; names must be unique in a batch");
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let tree = Node::parse(&text);
            Diagnostic::at_field(file, &text, tree.as_ref(), "name", Anchor::Value, message)
        }
        Err(_) => Diagnostic::whole_file(file, "name", message),
    }
}

/// The absolute folder holding `file`.
fn folder_of(file: &Path) -> Result<PathBuf, JobError> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let abs = std::path::absolute(parent).map_err(|source| JobError::Io {
        context: format!("{}: cannot find the job file's folder", file.display()),
        source,
    })?;
    Ok(without_dots(&abs))
}

/// `p` without `.` components (`/a/./b` → `/a/b`); `..` stays (symlinks make it meaningful).
fn without_dots(p: &Path) -> PathBuf {
    p.components().filter(|c| *c != Component::CurDir).collect()
}

/// Joins `p` to the template folder `base` unless it is absolute or starts with a placeholder
/// that expands to an absolute path.
fn join(base: &Path, p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    if p.is_absolute() || ABSOLUTE.iter().any(|a| s.starts_with(a)) {
        p.to_path_buf()
    } else {
        without_dots(&base.join(p))
    }
}

/// `dir` as a template (braces escaped), so that expanding a joined path gives the folder back.
fn template(dir: &Path) -> PathBuf {
    match dir.to_str() {
        Some(s) => PathBuf::from(escape(s)),
        None => dir.to_path_buf(),
    }
}

/// Fills in defaults that depend on the file's place and resolves every relative path.
fn resolve(mut spec: JobSpec, dir: &Path, name: &str) -> JobSpec {
    let base = template(dir);
    spec.name = Some(name.to_string());

    let p = &mut spec.process;
    if p.command.is_some() {
        let cwd = match &p.cwd {
            Some(c) => join(&base, c),
            None => base.clone(),
        };
        if let Some(prog) = p.command.as_mut().and_then(|c| c.first_mut()) {
            if prog.contains('/') {
                *prog = join(&cwd, Path::new(prog.as_str()))
                    .to_string_lossy()
                    .into_owned();
            }
        }
        p.cwd = Some(cwd);
    }
    if let Some(f) = &mut p.pidfile {
        *f = join(&base, f);
    }
    for out in [&mut p.stdout, &mut p.stderr] {
        if let Output::Path(f) = out {
            *f = join(&base, f);
        }
    }
    if let Some(ReadySpec {
        when: Ready::File(f),
        ..
    }) = &mut p.ready
    {
        *f = join(&base, f);
    }

    spec.store.path = Some(match &spec.store.path {
        Some(s) if crate::store::bucket::is_bucket(s) => bucket_location(s, &spec.store, &base),
        Some(s) => join(&base, s),
        None => match std::env::var_os(STORE_ENV).filter(|v| !v.is_empty()) {
            Some(v) if crate::store::bucket::is_bucket(Path::new(&v)) => {
                bucket_location(Path::new(&v), &spec.store, &base)
            }
            Some(v) => {
                let v = PathBuf::from(v);
                let abs = std::path::absolute(&v).unwrap_or(v);
                template(&without_dots(&abs))
            }
            None => base.join("haul-store"),
        },
    });
    spec.report.dir = join(&base, &spec.report.dir);
    spec.report.history = Some(match &spec.report.history {
        Some(h) => join(&base, h),
        None => spec.report.dir.join(schema::defaults::HISTORY_FILE),
    });
    spec.report.metrics = spec.report.metrics.as_ref().map(|m| join(&base, m));
    spec
}
