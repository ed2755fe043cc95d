//! `haul check --json`: one JSON object per job file (docs/json.md, `haul/check/1`).

use haul::job::JobError;
use haul::runner::exit;
use serde::Serialize;
use std::path::PathBuf;

use super::print_doc_line;

/// One job file as `haul check --json` prints it.
#[derive(Debug, Serialize)]
pub struct CheckJson {
    /// The job file as given on the command line.
    pub file: PathBuf,
    /// The job's name; null when the file is invalid.
    pub job: Option<String>,
    pub valid: bool,
    /// Empty when valid.
    pub errors: Vec<CheckError>,
}

/// One problem of a job file.
#[derive(Debug, Serialize)]
pub struct CheckError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (an unreadable file, an empty one).
    pub line: usize,
    /// 1-based, in characters; 0 when the problem has no position.
    pub column: usize,
    /// Dotted path of the field (`dump.predump.interval`, `process.command[0]`); empty when
    /// the problem is not one field's.
    pub field: String,
    pub message: String,
}

/// The errors of an invalid job file, one per problem.
fn errors_of(file: &std::path::Path, e: &JobError) -> Vec<CheckError> {
    match e {
        JobError::Invalid { diagnostics } => diagnostics
            .iter()
            .map(|d| CheckError {
                file: d.file.clone(),
                line: d.line,
                column: d.col,
                field: d.field.clone(),
                message: d.message.clone(),
            })
            .collect(),
        other => vec![CheckError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: other.to_string(),
        }],
    }
}

/// `haul check --json JOB...`: one line per job file, in the order given; exit 0 only if all
/// are valid (2 otherwise, as without --json).
pub fn json(paths: &[PathBuf]) -> Result<u8, haul::Error> {
    let (jobs, bad) = haul::job::load_all(paths);
    let mut rows: Vec<(usize, CheckJson)> = Vec::new();
    let order = |f: &PathBuf| paths.iter().position(|p| p == f).unwrap_or(usize::MAX);
    for j in &jobs {
        rows.push((
            order(&j.file),
            CheckJson {
                file: j.file.clone(),
                job: Some(j.name.clone()),
                valid: true,
                errors: Vec::new(),
            },
        ));
    }
    for (file, e) in &bad {
        rows.push((
            order(file),
            CheckJson {
                file: file.clone(),
                job: None,
                valid: false,
                errors: errors_of(file, e),
            },
        ));
    }
    rows.sort_by_key(|(i, _)| *i);
    for (_, r) in &rows {
        print_doc_line("check", r)?;
    }
    Ok(if bad.is_empty() {
        exit::OK
    } else {
        exit::BAD_INPUT
    })
}
