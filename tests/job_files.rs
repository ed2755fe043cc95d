//! Job files: every example in `jobs/` loads, paths resolve against the job file's folder, and
//! every kind of bad input gets a precise diagnostic (`file:line:col: field: message`).

mod common;

/// Rules that used to pass `haul check` and fail only at run time.
#[path = "job_files/run_time_rules.rs"]
mod run_time_rules;

use haul::job::{self, JobError, Output, Placeholders, Ready};
use std::path::{Path, PathBuf};

/// A valid `[process]` to prepend to cases about other sections.
const PROCESS: &str = "[process]\ncommand = [\"sh\", \"-c\", \"sleep 1\"]\n";

/// Writes `text` as `<tempdir>/<name>`, loads it, and returns the error as text with the temp
/// folder shown as `DIR`.
fn error_of_named(name: &str, text: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let err = job::load(&path).expect_err("the job should be rejected");
    err.to_string()
        .replace(&dir.path().display().to_string(), "DIR")
}

fn error_of(text: &str) -> String {
    error_of_named("x.toml", text.as_bytes())
}

/// Writes `text` as `<dir>/<name>` and returns its path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn values() -> Placeholders {
    Placeholders {
        job: "j".into(),
        run: "r1".into(),
        run_dir: "/runs/j-r1".into(),
        store: "/store".into(),
        pid: Some(7),
    }
}

// ---- the examples ----

#[test]
fn every_example_job_loads() {
    let dir = common::repo().join("jobs");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = job::load(&path) {
                panic!("{} does not load:\n{e}", path.display());
            }
            count += 1;
        }
    }
    assert!(
        count >= 6,
        "expected at least 6 example jobs in {}, found {count}",
        dir.display()
    );
}

#[test]
fn example_batch_has_unique_names() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(common::repo().join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let (jobs, errors) = job::load_all(&paths);
    let errors: Vec<String> = errors.iter().map(|(_, e)| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(jobs.len(), paths.len());
}

#[test]
fn counter_example_resolves_paths_against_its_folder() {
    let jobs_dir = common::repo().join("jobs");
    let job = job::load(&jobs_dir.join("counter.toml")).unwrap();
    assert_eq!(job.name, "counter");
    assert_eq!(job.spec.name.as_deref(), Some("counter"));
    assert_eq!(job.dir, jobs_dir);
    let p = &job.spec.process;
    assert_eq!(p.cwd.as_deref(), Some(jobs_dir.as_path()));
    let cmd = p.command.as_ref().unwrap();
    assert_eq!(Path::new(&cmd[0]), jobs_dir.join("../fixtures/bin/counter"));
    // Placeholders stay for the runner to expand.
    assert_eq!(cmd[1], "{run_dir}/counter.log");
    let ready = p.ready.as_ref().unwrap();
    assert_eq!(ready.when, Ready::StdoutLine("ready".into()));
    assert_eq!(ready.timeout(), job::defaults::ready_timeout());
    assert_eq!(job.store_path(), jobs_dir.join("../haul-store"));
    assert_eq!(job.spec.report.dir, jobs_dir.join("../reports"));
    assert_eq!(
        job.spec.report.history,
        Some(jobs_dir.join("../reports/history.jsonl"))
    );
    assert!(!job.spec.dump.leave_running);
}

#[test]
fn example_counter_command_runs_from_its_resolved_path() {
    // The example must be runnable: its resolved program is the fixture the tests build.
    let bin = common::fixture("counter");
    let job = job::load(&common::repo().join("jobs/counter.toml")).unwrap();
    let prog = &job.spec.process.command.as_ref().unwrap()[0];
    assert_eq!(
        std::fs::canonicalize(prog).unwrap(),
        std::fs::canonicalize(bin).unwrap()
    );
}

// ---- defaults and path resolution ----

#[test]
fn defaults_fill_name_cwd_store_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "plain-job.toml", PROCESS);
    let job = job::load(&path).unwrap();
    assert_eq!(job.name, "plain-job");
    assert_eq!(job.spec.process.cwd.as_deref(), Some(dir.path()));
    assert_eq!(job.spec.process.stdout, Output::Log);
    assert_eq!(job.spec.report.dir, dir.path().join("reports"));
    assert_eq!(
        job.spec.report.history,
        Some(dir.path().join("reports/history.jsonl"))
    );
    if std::env::var_os("HAUL_STORE").is_none() {
        assert_eq!(job.store_path(), dir.path().join("haul-store"));
    }
    // A program name without "/" is looked up in PATH at launch: not resolved.
    assert_eq!(job.spec.process.command.as_ref().unwrap()[0], "sh");
    assert!(job.spec.predump.is_none() && job.spec.restore.is_none() && job.spec.verify.is_none());
}

#[test]
fn store_path_defaults_to_haul_store_env() {
    // Runs the check in a child test process, so that no thread of this one sees a changed
    // environment.
    let store = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "haul_store_env_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env("HAUL_STORE", store.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
#[ignore = "run by store_path_defaults_to_haul_store_env with HAUL_STORE set"]
fn haul_store_env_child() {
    let env = PathBuf::from(std::env::var_os("HAUL_STORE").expect("HAUL_STORE set by the parent"));
    let dir = tempfile::tempdir().unwrap();
    let job = job::load(&write(dir.path(), "j.toml", PROCESS)).unwrap();
    assert_eq!(job.store_path(), env);
    // An explicit store.path wins over the environment.
    let text = format!("{PROCESS}[store]\npath = \"s\"\n");
    let job = job::load(&write(dir.path(), "k.toml", &text)).unwrap();
    assert_eq!(job.store_path(), dir.path().join("s"));
}

#[test]
fn relative_paths_resolve_but_absolute_and_placeholder_paths_stay() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let text = r#"
[process]
command = ["bin/tool", "{run_dir}/x"]
cwd = "work"
stdout = "{run_dir}/out.txt"
stderr = "/dev/null"
ready = { file = "{job}.ready" }

[store]
path = "{store_root}"
"#;
    // {store_root} is not a placeholder: rejected, and named.
    let path = write(dir.path(), "j.toml", text);
    let err = job::load(&path).unwrap_err().to_string();
    assert!(
        err.contains(":10:8: store.path: unknown placeholder \"{store_root}\""),
        "{err}"
    );

    let path = write(
        dir.path(),
        "j.toml",
        &text.replace("{store_root}", "/srv/store"),
    );
    let job = job::load(&path).unwrap();
    let p = &job.spec.process;
    let work = dir.path().join("work");
    assert_eq!(p.cwd.as_deref(), Some(work.as_path()));
    assert_eq!(
        p.command.as_ref().unwrap()[0],
        work.join("bin/tool").to_str().unwrap()
    );
    assert_eq!(p.stdout, Output::Path("{run_dir}/out.txt".into()));
    assert_eq!(p.stderr, Output::Path("/dev/null".into()));
    assert_eq!(
        p.ready.as_ref().map(|r| &r.when),
        Some(&Ready::File(dir.path().join("{job}.ready")))
    );
    assert_eq!(job.store_path(), Path::new("/srv/store"));
    assert_eq!(
        job::expand_path(p.stdout.path().unwrap(), &values()).unwrap(),
        Path::new("/runs/j-r1/out.txt")
    );
}

#[test]
fn braces_in_the_job_folder_survive_expansion() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("a{b}c");
    std::fs::create_dir(&dir).unwrap();
    let job = job::load(&write(&dir, "j.toml", PROCESS)).unwrap();
    let cwd = job.spec.process.cwd.as_ref().unwrap();
    assert_eq!(job::expand_path(cwd, &values()).unwrap(), dir);
}

#[test]
fn attached_jobs_get_no_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let job = job::load(&write(
        dir.path(),
        "a.toml",
        "[process]\npidfile = \"run/x.pid\"\n",
    ))
    .unwrap();
    assert_eq!(job.spec.process.cwd, None);
    assert_eq!(job.spec.process.pidfile, Some(dir.path().join("run/x.pid")));
}

#[test]
fn cwd_with_placeholder_is_not_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[process]\ncommand = [\"true\"]\ncwd = \"{run_dir}/w\"\n";
    let job = job::load(&write(dir.path(), "j.toml", text)).unwrap();
    assert_eq!(
        job.spec.process.cwd.as_deref(),
        Some(Path::new("{run_dir}/w"))
    );
}

// ---- batches ----

#[test]
fn duplicated_job_names_in_a_batch_are_rejected_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", &format!("name = \"same\"\n{PROCESS}"));
    let b = write(
        dir.path(),
        "b.toml",
        &format!("# another\nname = \"same\"\n{PROCESS}"),
    );
    let c = write(dir.path(), "c.toml", PROCESS);
    let (jobs, errors) = job::load_all(&[a.clone(), b.clone(), c]);
    assert_eq!(
        jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    let msgs: Vec<String> = errors.iter().map(|(_, e)| e.to_string()).collect();
    assert_eq!(
        msgs,
        [
            format!(
                "{}:1:8: name: job name \"same\" is also used by {}; names must be unique in a batch",
                a.display(),
                b.display()
            ),
            format!(
                "{}:2:8: name: job name \"same\" is also used by {}; names must be unique in a batch",
                b.display(),
                a.display()
            ),
        ]
    );
    assert_eq!(errors[0].0, a);
}

#[test]
fn the_same_file_named_twice_loads_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", PROCESS);
    let (jobs, errors) = job::load_all(&[a.clone(), a]);
    assert_eq!(jobs.len(), 1);
    assert!(errors.is_empty());
}

#[test]
fn batch_keeps_good_jobs_beside_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", PROCESS);
    let bad = write(dir.path(), "bad.toml", "[process]\n");
    let (jobs, errors) = job::load_all(&[bad.clone(), good]);
    assert_eq!(jobs.len(), 1);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, bad);
}

// ---- bad input: one exact message each ----

#[test]
fn wrong_type_names_expected_and_found() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predump]\nmax_iterations = \"8\"\n")),
        "DIR/x.toml:4:18: predump.max_iterations: expected a whole number (0 or more), found string \"8\""
    );
    assert_eq!(
        error_of("[process]\ncommand = \"a b\"\n"),
        "DIR/x.toml:2:11: process.command: expected an array, found string \"a b\""
    );
}

#[test]
fn negative_count_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predump]\nmax_iterations = -1\n")),
        "DIR/x.toml:4:18: predump.max_iterations: must not be negative, found -1"
    );
}

#[test]
fn unknown_key_suggests_the_closest() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predump]\nintervall = \"1s\"\n")),
        "DIR/x.toml:4:1: predump.intervall: unknown key; did you mean \"interval\"?"
    );
    assert_eq!(
        error_of("process.command = [\"a\"]\nprocess.pidd = 3\n"),
        "DIR/x.toml:2:9: process.pidd: unknown key; did you mean \"pid\"?"
    );
}

#[test]
fn unknown_key_lists_valid_keys_when_none_is_close() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predump]\ncolour = \"1s\"\n")),
        "DIR/x.toml:4:1: predump.colour: unknown key; valid keys: interval, max_iterations, \
         stop_below, stop_growth, tracker"
    );
}

#[test]
fn unknown_section_suggests_the_closest() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predumps]\ninterval = \"1s\"\n")),
        "DIR/x.toml:3:2: predumps: unknown section; did you mean \"predump\"?"
    );
}

#[test]
fn unknown_enum_value_suggests_the_closest() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predump]\ntracker = \"uffd_wp\"\n")),
        "DIR/x.toml:4:11: predump.tracker: unknown value \"uffd_wp\"; did you mean \"uffd-wp\"?"
    );
    assert_eq!(
        error_of("[process]\ncommand = [\"a\"]\nready = \"1s\"\n"),
        "DIR/x.toml:3:9: process.ready: unknown value \"1s\"; expected one of \"after\", \"file\", \
         \"stdout_line\""
    );
}

#[test]
fn missing_process_section_is_rejected() {
    assert_eq!(
        error_of("name = \"x\"\n"),
        "DIR/x.toml:1:1: process: missing section [process]: a job needs a process to launch or \
         attach to"
    );
}

#[test]
fn process_needs_command_pid_or_pidfile() {
    assert_eq!(
        error_of("name = \"x\"\n\n[process]\ncwd = \".\"\n"),
        "DIR/x.toml:3:2: process: missing: one of command, pid, pidfile"
    );
}

#[test]
fn command_and_pid_together_are_rejected_naming_both() {
    assert_eq!(
        error_of("[process]\ncommand = [\"a\"]\npid = 5\n"),
        "DIR/x.toml:3:1: process.pid: command and pid exclude each other: give only one of \
         command, pid, pidfile"
    );
}

#[test]
fn empty_command_is_rejected() {
    assert_eq!(
        error_of("[process]\ncommand = []\n"),
        "DIR/x.toml:2:11: process.command: must not be empty: give the program and its arguments"
    );
    assert_eq!(
        error_of("[process]\ncommand = [\"\", \"x\"]\n"),
        "DIR/x.toml:2:12: process.command[0]: the program name is empty"
    );
}

#[test]
fn negative_interval_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predump]\ninterval = \"-1s\"\n")),
        "DIR/x.toml:4:12: predump.interval: a duration cannot be negative, found \"-1s\""
    );
}

#[test]
fn zero_interval_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predump]\ninterval = \"0s\"\n")),
        "DIR/x.toml:4:12: predump.interval: must be greater than 0"
    );
}

#[test]
fn bad_duration_gives_the_design_example_message() {
    // DESIGN.md §2: jobs/x.toml:7:12: predump.interval: expected a duration like "1s", found "fast"
    let text = format!("{PROCESS}\n\n[predump]\nmax_iterations = 3\ninterval = \"fast\"\n");
    assert_eq!(
        error_of(&text),
        "DIR/x.toml:7:12: predump.interval: expected a duration like \"1s\", found \"fast\""
    );
}

#[test]
fn bad_size_unit_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[dump]\nbuffer = \"12XB\"\n")),
        "DIR/x.toml:4:10: dump.buffer: expected a size like \"256MiB\", found \"12XB\""
    );
}

#[test]
fn buffer_below_one_mib_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[dump]\nbuffer = \"4KiB\"\n")),
        "DIR/x.toml:4:10: dump.buffer: must be at least 1MiB, found 4096 bytes"
    );
}

#[test]
fn compression_level_out_of_range_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[store]\ncompression = \"zstd:25\"\n")),
        "DIR/x.toml:4:15: store.compression: expected \"zstd:<1..19>\" or \"none\", found \"zstd:25\""
    );
}

#[test]
fn nonexistent_cwd_is_rejected_with_its_resolved_path() {
    assert_eq!(
        error_of("[process]\ncommand = [\"a\"]\ncwd = \"nope\"\n"),
        "DIR/x.toml:3:7: process.cwd: directory DIR/nope does not exist"
    );
}

#[test]
fn cwd_that_is_a_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "f", "");
    let path = write(
        dir.path(),
        "x.toml",
        "[process]\ncommand = [\"a\"]\ncwd = \"f\"\n",
    );
    assert_eq!(
        job::load(&path).unwrap_err().to_string(),
        format!(
            "{}:3:7: process.cwd: {} is not a directory",
            path.display(),
            dir.path().join("f").display()
        )
    );
}

#[test]
fn non_utf8_file_is_rejected_at_the_bad_byte() {
    assert_eq!(
        error_of_named("x.toml", b"[process]\ncommand = [\"\xff\"]\n"),
        "DIR/x.toml:2:13: the file is not UTF-8 text (byte 0xff); job files must be UTF-8"
    );
}

#[test]
fn empty_file_is_rejected() {
    assert_eq!(
        error_of_named("x.toml", b"  \n\n"),
        "DIR/x.toml: the file is empty; a job needs at least a [process] section"
    );
}

#[test]
fn unreadable_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let err = job::load(&path).unwrap_err();
    assert!(matches!(err, JobError::Io { .. }));
    assert_eq!(
        err.to_string(),
        format!("{}: No such file or directory (os error 2)", path.display())
    );
}

#[test]
fn toml_syntax_error_has_a_position() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predump\n")),
        "DIR/x.toml:3:9: invalid table header: expected `.`, `]`"
    );
}

#[test]
fn unknown_placeholder_is_rejected_at_load() {
    assert_eq!(
        error_of("[process]\ncommand = [\"a\", \"{rundir}/x\"]\n"),
        "DIR/x.toml:2:17: process.command[1]: unknown placeholder \"{rundir}\"; did you mean \
         \"{run_dir}\"? known: {job}, {run}, {run_dir}, {store}, {pid} (write {{ and }} for \
         literal braces)"
    );
    assert_eq!(
        error_of(&format!("{PROCESS}env = {{ A = \"{{nope}}\" }}\n")),
        "DIR/x.toml:3:13: process.env.A: unknown placeholder \"{nope}\"; known: {job}, {run}, \
         {run_dir}, {store}, {pid} (write {{ and }} for literal braces)"
    );
}

#[test]
fn pid_placeholder_before_launch_is_rejected() {
    assert_eq!(
        error_of("[process]\ncommand = [\"a\", \"{pid}\"]\n"),
        "DIR/x.toml:2:17: process.command[1]: placeholder \"{pid}\" cannot be used here \
         (allowed: {job}, {run}, {run_dir}, {store})"
    );
}

#[test]
fn lazy_restore_with_leave_running_is_rejected() {
    let text = format!(
        "{PROCESS}[dump]\nleave_running = true\n[restore]\nmode = \"lazy\"\npid = \"any\"\n"
    );
    assert_eq!(
        error_of(&text),
        "DIR/x.toml:6:8: restore.mode: \"lazy\" needs dump.leave_running = false (the original \
         must stop before its pages are served) or restore.from = \"host:port\" of a page server"
    );
    // From a page server it is fine: the pages come from elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let remote = text.replace("pid = \"any\"", "from = \"10.0.0.2:7070\"");
    job::load(&write(dir.path(), "ok.toml", &remote)).unwrap();
}

#[test]
fn same_pid_while_the_original_runs_is_rejected() {
    assert_eq!(
        error_of(&format!(
            "{PROCESS}[dump]\nleave_running = true\n[restore]\n"
        )),
        "DIR/x.toml:5:2: restore.pid: \"same\" is impossible with dump.leave_running = true: the \
         original keeps that PID; use pid = \"any\""
    );
}

#[test]
fn lazy_dump_without_lazy_restore_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[dump]\nlazy = true\n")),
        "DIR/x.toml:4:8: dump.lazy: needs a [restore] section with mode = \"lazy\": otherwise \
         nobody serves the lazy pages"
    );
}

#[test]
fn lazy_dump_needs_pid_any_and_restore_from_store() {
    // A valid lazy dump job: restore lazily, any PID, pages from the worker (from = "store").
    let ok = format!("{PROCESS}[dump]\nlazy = true\n[restore]\nmode = \"lazy\"\npid = \"any\"\n");
    let dir = tempfile::tempdir().unwrap();
    job::load(&write(dir.path(), "ok.toml", &ok)).unwrap();
    assert_eq!(
        error_of(&ok.replace("\"any\"", "\"same\"")),
        "DIR/x.toml:7:7: restore.pid: \"same\" is impossible with dump.lazy = true: the frozen \
         source keeps its PID until the restore has every page; use pid = \"any\""
    );
    assert_eq!(
        error_of(&format!("{ok}from = \"10.0.0.2:7070\"\n")),
        "DIR/x.toml:8:8: restore.from: must be \"store\" with dump.lazy = true (found \
         \"10.0.0.2:7070\"): the lazy pages come from the checkpoint worker serving the frozen \
         source, the rest from the store"
    );
}

#[test]
fn haul_check_refuses_a_lazy_dump_restored_under_the_same_pid() {
    let dir = tempfile::tempdir().unwrap();
    let job = write(
        dir.path(),
        "x.toml",
        &format!("{PROCESS}[dump]\nlazy = true\n[restore]\nmode = \"lazy\"\npid = \"same\"\n"),
    );
    let out = common::haul().arg("check").arg(&job).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:7:7: restore.pid: \"same\" is impossible with dump.lazy = true",
        job.display()
    );
    assert!(text.contains(&want), "{text}");
}

#[test]
fn verify_without_restore_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[verify]\ncommand = [\"true\"]\n")),
        "DIR/x.toml:3:2: verify: needs a [restore] section: verify judges the restored process"
    );
}

#[test]
fn verify_without_command_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[restore]\n[verify]\ntimeout = \"1s\"\n")),
        "DIR/x.toml:4:1: verify.command: missing (this key is required)"
    );
}

#[test]
fn bad_restore_from_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[restore]\nfrom = \"remote\"\n")),
        "DIR/x.toml:4:8: restore.from: expected \"store\" or \"host:port\" of a page server, found \
         \"remote\""
    );
}

#[test]
fn token_file_without_a_page_server_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[restore]\ntoken_file = \"t\"\n")),
        "DIR/x.toml:4:14: restore.token_file: is the token of a page server: it needs \
         restore.from = \"host:port\""
    );
    let remote = format!("{PROCESS}[restore]\nfrom = \"10.0.0.2:7070\"\ntoken_file = \"t\"\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    std::fs::write(&path, remote).unwrap();
    let j = job::load(&path).unwrap();
    let r = j.spec.restore.unwrap();
    assert_eq!(r.token_file.as_deref(), Some(std::path::Path::new("t")));
}

#[test]
fn pid_zero_is_rejected() {
    assert_eq!(
        error_of("[process]\npid = 0\n"),
        "DIR/x.toml:2:7: process.pid: must be a process ID greater than 0, found 0"
    );
}

#[test]
fn stop_growth_of_one_or_less_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[predump]\nstop_growth = 1.0\n")),
        "DIR/x.toml:4:15: predump.stop_growth: must be greater than 1.0 (1.1 = stop when an \
         iteration writes 10% more than the last), found 1"
    );
}

#[test]
fn keep_zero_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[store]\nkeep = 0\n")),
        "DIR/x.toml:4:8: store.keep: must be at least 1 (the newest image set), found 0"
    );
}

#[test]
fn prefetch_above_limit_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[lazy]\nprefetch = 513\n")),
        "DIR/x.toml:4:12: lazy.prefetch: must be at most 512, found 513"
    );
    assert_eq!(
        error_of(&format!("{PROCESS}[lazy]\nprefetch = 99999999999\n")),
        "DIR/x.toml:4:12: lazy.prefetch: too large (at most 4294967295), found 99999999999"
    );
}

#[test]
fn continuous_push_with_an_idle_delay_is_rejected() {
    assert_eq!(
        error_of(&format!(
            "{PROCESS}[lazy]\npush = \"continuous\"\nidle_push = \"2s\"\n"
        )),
        "DIR/x.toml:5:1: lazy.idle_push: cannot go with push = \"continuous\", which pushes \
         between faults and never waits for idle; remove idle_push, or set push = \"idle\""
    );
    assert_eq!(
        error_of(&format!("{PROCESS}[lazy]\npush = \"later\"\n")),
        "DIR/x.toml:4:8: lazy.push: unknown value \"later\"; expected one of \"continuous\", \
         \"idle\""
    );
}

#[test]
fn haul_check_refuses_continuous_push_with_an_idle_delay() {
    let dir = tempfile::tempdir().unwrap();
    let job = write(
        dir.path(),
        "x.toml",
        &format!("{PROCESS}[lazy]\nidle_push = \"1s\"\npush = \"continuous\"\n"),
    );
    let out = common::haul().arg("check").arg(&job).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:4:1: lazy.idle_push: cannot go with push = \"continuous\"",
        job.display()
    );
    assert!(text.contains(&want), "{text}");
}

/// Job files written before `lazy.push` existed and set `idle_push` keep the idle push; without
/// either key the push is continuous.
#[test]
fn the_push_policy_follows_push_or_else_an_explicit_idle_push() {
    use haul::job::LazyPush;
    use haul::lazy::{LazyOptions, PushPolicy};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("", LazyPush::Continuous, 5_000),
        ("[lazy]\nprefetch = 4\n", LazyPush::Continuous, 5_000),
        ("[lazy]\nidle_push = \"300ms\"\n", LazyPush::Idle, 300),
        ("[lazy]\npush = \"idle\"\n", LazyPush::Idle, 5_000),
        (
            "[lazy]\npush = \"idle\"\nidle_push = \"2s\"\n",
            LazyPush::Idle,
            2_000,
        ),
        (
            "[lazy]\npush = \"continuous\"\n",
            LazyPush::Continuous,
            5_000,
        ),
    ];
    for (lazy, want, idle_ms) in cases {
        let path = write(dir.path(), "x.toml", &format!("{PROCESS}{lazy}"));
        let j = job::load(&path).unwrap_or_else(|e| panic!("{lazy:?}: {e}"));
        assert_eq!(j.spec.lazy.push_policy(), want, "{lazy:?}");
        let o = LazyOptions::from_spec(&j.spec.lazy);
        let policy = match want {
            LazyPush::Continuous => PushPolicy::Continuous,
            LazyPush::Idle => PushPolicy::Idle,
        };
        assert_eq!(o.push, policy, "{lazy:?}");
        assert_eq!(o.idle_push, Duration::from_millis(idle_ms), "{lazy:?}");
    }
}

#[test]
fn invalid_name_is_rejected() {
    assert_eq!(
        error_of(&format!("name = \"my job\"\n{PROCESS}")),
        "DIR/x.toml:1:8: name: \"my job\" is not a valid job name: use only letters, digits, '.', \
         '_' and '-'"
    );
    assert_eq!(
        error_of(&format!("name = \"\"\n{PROCESS}")),
        "DIR/x.toml:1:8: name: must not be empty"
    );
}

#[test]
fn file_stem_that_is_not_a_valid_name_needs_an_explicit_name() {
    assert_eq!(
        error_of_named("my job.toml", PROCESS.as_bytes()),
        "DIR/my job.toml: name: the file name \"my job\" is not a valid job name (letters, \
         digits, '.', '_' and '-' only); set name = \"...\""
    );
}

#[test]
fn launch_settings_are_rejected_for_an_attached_process() {
    assert_eq!(
        error_of("[process]\npid = 5\nenv = { A = \"b\" }\n"),
        "DIR/x.toml:3:1: process.env: only applies to a launched process (with command); an \
         attached process keeps its own env"
    );
}

#[test]
fn several_problems_are_reported_together_in_file_order() {
    let text =
        format!("{PROCESS}[store]\nkeep = 0\n[predump]\nstop_growth = 0.5\nmax_iterations = 0\n");
    assert_eq!(
        error_of(&text),
        "DIR/x.toml:4:8: store.keep: must be at least 1 (the newest image set), found 0\n\
         DIR/x.toml:6:15: predump.stop_growth: must be greater than 1.0 (1.1 = stop when an \
         iteration writes 10% more than the last), found 0.5\n\
         DIR/x.toml:7:18: predump.max_iterations: must be at least 1 (leave out [predump] for no \
         pre-dumps), found 0"
    );
}

// ---- the figure ----

/// Time to load 100 job files (run with `--ignored --nocapture`; a figure, not an assertion).
#[test]
#[ignore = "measurement: prints the time to load 100 job files"]
fn measure_loading_100_job_files() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::repo().join("jobs/migrate-local.toml")).unwrap();
    let paths: Vec<PathBuf> = (0..100)
        .map(|i| {
            write(
                dir.path(),
                &format!("job{i}.toml"),
                &text.replace("../", "./"),
            )
        })
        .collect();
    let mut times = Vec::new();
    for _ in 0..11 {
        let t = std::time::Instant::now();
        let (jobs, errors) = job::load_all(&paths);
        times.push(t.elapsed());
        assert_eq!((jobs.len(), errors.len()), (100, 0));
    }
    times.sort();
    println!(
        "load_all(100 job files): median {:?}, min {:?}, max {:?}",
        times[5], times[0], times[10]
    );
}

#[test]
fn array_of_tables_for_a_section_is_rejected() {
    assert_eq!(
        error_of(&format!("{PROCESS}[[dump]]\nlazy = true\n")),
        "DIR/x.toml:3:3: dump: expected a table, found an array (write [dump], not [[dump]])"
    );
}

#[test]
fn ready_with_two_conditions_is_rejected() {
    assert_eq!(
        error_of("[process]\ncommand = [\"a\"]\nready = { after = \"1s\", file = \"x\" }\n"),
        "DIR/x.toml:3:9: process.ready: expected one of { after = \"300ms\" }, { file = \"...\" }, \
         { stdout_line = \"...\" } (file and stdout_line may add timeout = \"60s\")"
    );
}

#[test]
fn stdout_line_readiness_needs_a_launched_process() {
    assert_eq!(
        error_of("[process]\npid = 5\nready = { stdout_line = \"x\" }\n"),
        "DIR/x.toml:3:1: process.ready: stdout_line needs a launched process (with command): haul \
         cannot read an attached process's stdout"
    );
}

#[test]
fn placeholder_with_unbalanced_brace_is_rejected() {
    let text =
        format!("{PROCESS}[restore]\n[verify]\ncommand = [\"x\"]\nexpect_stdout = \"{{bad\"\n");
    assert_eq!(
        error_of(&text),
        "DIR/x.toml:6:17: verify.expect_stdout: unclosed \"{\" in \"{bad\" (write {{ and }} for \
         literal braces)"
    );
}
