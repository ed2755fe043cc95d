//! `haul report --json`: the run reports as normalized JSON (docs/json.md, `haul/report/1`).

use haul::runner::exit;
use std::path::PathBuf;

use super::{print_doc, print_doc_list};

/// Whether `f` is a history file (`.jsonl`), printed as an array, rather than one run report.
fn is_history(f: &std::path::Path) -> bool {
    f.extension().is_some_and(|x| x == "jsonl")
}

/// `haul report --json FILE...`: one document per file, in order: a run report (`.json`) as
/// one object, a history (`.jsonl`) as an array of them. Each report is read the way `haul
/// report` reads it (fields it does not know are dropped, missing ones take their defaults)
/// and printed with every field, plus `schema`.
pub fn json(files: &[PathBuf]) -> Result<u8, haul::Error> {
    for f in files {
        let reports = haul::report::load(f)?;
        match reports.as_slice() {
            [one] if !is_history(f) => print_doc("report", one)?,
            all => print_doc_list("report", all)?,
        }
    }
    Ok(exit::OK)
}
