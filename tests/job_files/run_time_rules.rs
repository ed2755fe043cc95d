//! Numbers, names, paths and waits that `haul check` let through and `haul run` then refused:
//! each is now refused at load, naming file, line, column and field.

use super::{error_of, error_of_named, write, PROCESS};
use haul::job::{self, Ready};
use std::path::Path;

#[test]
fn non_finite_numbers_are_rejected_naming_the_field() {
    for (v, shown) in [
        ("inf", "inf"),
        ("+inf", "inf"),
        ("-inf", "-inf"),
        ("nan", "NaN"),
    ] {
        assert_eq!(
            error_of(&format!("{PROCESS}[predump]\nstop_growth = {v}\n")),
            format!(
                "DIR/x.toml:4:15: predump.stop_growth: expected a finite number, found {shown}"
            )
        );
    }
}

#[test]
fn integer_too_large_for_toml_names_the_field() {
    assert_eq!(
        error_of(&format!("{PROCESS}[store]\nkeep = 99999999999999999999\n")),
        "DIR/x.toml:4:8: store.keep: too large, found 99999999999999999999 (a TOML integer ends \
         at 9223372036854775807)"
    );
    assert_eq!(
        error_of("[process]\npid = -99999999999999999999\n"),
        "DIR/x.toml:2:7: process.pid: too small, found -99999999999999999999 (a TOML integer \
         ends at -9223372036854775808)"
    );
}

#[test]
fn names_longer_than_100_characters_or_dots_are_rejected() {
    let long = "a".repeat(300);
    assert_eq!(
        error_of(&format!("name = \"{long}\"\n{PROCESS}")),
        "DIR/x.toml:1:8: name: is too long (300 characters, at most 100): it names files and \
         folders"
    );
    assert_eq!(
        error_of_named(&format!("{}.toml", "b".repeat(101)), PROCESS.as_bytes()),
        format!(
            "DIR/{}.toml: name: the file name is too long for a job name (101 characters, at \
             most 100); set name = \"...\"",
            "b".repeat(101)
        )
    );
    assert_eq!(
        error_of(&format!("name = \".\"\n{PROCESS}")),
        "DIR/x.toml:1:8: name: \".\" cannot name a job: it means a folder"
    );
    // 100 is fine.
    let dir = tempfile::tempdir().unwrap();
    let text = format!("name = \"{}\"\n{PROCESS}", "c".repeat(100));
    job::load(&write(dir.path(), "ok.toml", &text)).unwrap();
}

/// Writes `text` as `<dir>/x.toml` in a folder holding `afile` (a file) and `adir` (a folder),
/// and returns the error with the folder shown as `DIR`.
fn error_beside_a_file_and_a_folder(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("afile"), "").unwrap();
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    let path = write(dir.path(), "x.toml", text);
    job::load(&path)
        .expect_err("the job should be rejected")
        .to_string()
        .replace(&dir.path().display().to_string(), "DIR")
}

#[test]
fn store_and_report_paths_that_cannot_be_used_are_rejected() {
    let e = error_beside_a_file_and_a_folder;
    assert_eq!(
        e(&format!("{PROCESS}[store]\npath = \"afile\"\n")),
        "DIR/x.toml:4:8: store.path: DIR/afile is a file, not a folder"
    );
    assert_eq!(
        e(&format!("{PROCESS}[store]\npath = \"afile/s\"\n")),
        "DIR/x.toml:4:8: store.path: cannot create DIR/afile/s: DIR/afile is a file, not a folder"
    );
    assert_eq!(
        e(&format!("{PROCESS}[report]\ndir = \"afile\"\n")),
        "DIR/x.toml:4:7: report.dir: DIR/afile is a file, not a folder"
    );
    assert_eq!(
        e(&format!("{PROCESS}[report]\nhistory = \"adir\"\n")),
        "DIR/x.toml:4:11: report.history: DIR/adir is a folder; name a file"
    );
    assert_eq!(
        e(&format!("{PROCESS}[report]\nhistory = \"afile/h.jsonl\"\n")),
        "DIR/x.toml:4:11: report.history: DIR/afile is a file, not a folder"
    );
    // Paths with placeholders are the run's to check.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("afile"), "").unwrap();
    let text = format!("{PROCESS}[store]\npath = \"afile/{{job}}\"\n");
    job::load(&write(dir.path(), "ok.toml", &text)).unwrap();
}

#[test]
fn default_history_inside_a_report_dir_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rd/history.jsonl")).unwrap();
    let path = write(
        dir.path(),
        "x.toml",
        &format!("{PROCESS}[report]\ndir = \"rd\"\n"),
    );
    assert_eq!(
        job::load(&path).unwrap_err().to_string(),
        format!(
            "{}:3:2: report: the history (report.history): {}/rd/history.jsonl is a folder; \
             name a file",
            path.display(),
            dir.path().display()
        )
    );
}

#[test]
fn history_defaults_to_inside_report_dir() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{PROCESS}[report]\ndir = \"/var/tmp/elsewhere/{{job}}\"\n");
    let job = job::load(&write(dir.path(), "x.toml", &text)).unwrap();
    assert_eq!(
        job.history_path(),
        Path::new("/var/tmp/elsewhere/{job}/history.jsonl")
    );
    let text = format!("{PROCESS}[report]\ndir = \"r\"\n");
    let job = job::load(&write(dir.path(), "y.toml", &text)).unwrap();
    assert_eq!(job.history_path(), dir.path().join("r/history.jsonl"));
}

#[test]
fn output_files_that_cannot_be_opened_are_rejected() {
    let e = error_beside_a_file_and_a_folder;
    assert_eq!(
        e(&format!("{PROCESS}stdout = \"adir\"\n")),
        "DIR/x.toml:3:10: process.stdout: DIR/adir is a folder; name a file"
    );
    assert_eq!(
        e(&format!("{PROCESS}stderr = \"nope/err.log\"\n")),
        "DIR/x.toml:3:10: process.stderr: folder DIR/nope does not exist"
    );
}

#[test]
fn stdout_line_readiness_needs_stdout_kept() {
    assert_eq!(
        error_of(&format!(
            "{PROCESS}ready = {{ stdout_line = \"ready\" }}\nstdout = \"null\"\n"
        )),
        "DIR/x.toml:4:10: process.stdout: \"null\" discards the output that ready.stdout_line \
         waits for: use \"log\" (the default) or a file, or another ready condition"
    );
}

#[test]
fn ready_timeout_bounds_file_and_stdout_line_waits() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{PROCESS}ready = {{ file = \"x\", timeout = \"30s\" }}\n");
    let job = job::load(&write(dir.path(), "a.toml", &text)).unwrap();
    let r = job.spec.process.ready.unwrap();
    assert_eq!(r.when, Ready::File(dir.path().join("x")));
    assert_eq!(r.timeout().to_string(), "30s");
    // Default: 60 s.
    let text = format!("{PROCESS}ready = {{ stdout_line = \"up\" }}\n");
    let job = job::load(&write(dir.path(), "b.toml", &text)).unwrap();
    assert_eq!(job.spec.process.ready.unwrap().timeout().to_string(), "60s");

    assert_eq!(
        error_of(&format!(
            "{PROCESS}ready = {{ after = \"1s\", timeout = \"5s\" }}\n"
        )),
        "DIR/x.toml:3:25: process.ready.timeout: does not apply to ready.after (a fixed wait); it \
         bounds the wait for file or stdout_line"
    );
    assert_eq!(
        error_of(&format!(
            "{PROCESS}ready = {{ file = \"x\", timeout = \"0s\" }}\n"
        )),
        "DIR/x.toml:3:33: process.ready.timeout: must be greater than 0"
    );
    assert_eq!(
        error_of(&format!(
            "{PROCESS}ready = {{ file = \"x\", timeout = \"soon\" }}\n"
        )),
        "DIR/x.toml:3:33: process.ready.timeout: expected a duration like \"1s\", found \"soon\""
    );
    assert_eq!(
        error_of(&format!(
            "{PROCESS}ready = {{ file = \"x\", timout = \"5s\" }}\n"
        )),
        "DIR/x.toml:3:23: process.ready.timout: unknown key; did you mean \"timeout\"?"
    );
}
