//! `haul report --html OUT.html FILE...`: one page with the charts of every file.

use std::path::{Path, PathBuf};

use haul::report::html::{self, Input};
use haul::runner::exit;

use super::out;

/// Loads every file (a run report, or a history: JSON lines, or several reports), writes the
/// page to `to`, and prints its path.
pub fn run(files: &[PathBuf], to: &Path) -> Result<u8, haul::Error> {
    let mut loaded = Vec::with_capacity(files.len());
    for f in files {
        let reports = haul::report::load(f)?;
        // As the text output: one report in a file that is not `.jsonl` is a run.
        let history = reports.len() != 1 || f.extension().is_some_and(|x| x == "jsonl");
        loaded.push((f.display().to_string(), reports, history));
    }
    let inputs: Vec<Input<'_>> = loaded
        .iter()
        .map(|(file, reports, history)| {
            if *history {
                Input::History { file, reports }
            } else {
                Input::Run(&reports[0])
            }
        })
        .collect();
    let page = html::page(&inputs)?;
    html::write_page(to, &page)?;
    out(&format!("wrote {}", to.display()));
    Ok(exit::OK)
}
