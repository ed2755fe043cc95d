//! The command line as a person or a script meets it: what a missing or bad argument says, and
//! output that is neither coloured for a pipe nor said twice.

mod common;

use common::{fixture, haul};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// stderr of `haul ARGS` (which must fail with `code`).
fn fails(args: &[&str], code: i32) -> String {
    let out = haul().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "haul {args:?}: {err}");
    err
}

#[test]
fn dump_without_a_mode_names_every_mode() {
    let err = fails(&["dump", "--pid", "12345"], 2);
    for m in ["--leave-running", "--kill", "--lazy", "--check"] {
        assert!(err.contains(m), "{m} missing: {err}");
    }
    let err = fails(&["dump", "--pid", "12345", "--kill", "--leave-running"], 2);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn page_server_without_a_set_mentions_job() {
    let err = fails(&["page-server"], 2);
    assert!(err.contains("--set") && err.contains("--job"), "{err}");
}

#[test]
fn a_bad_duration_says_what_a_duration_looks_like() {
    let err = fails(
        &[
            "dump",
            "--pid",
            "12345",
            "--leave-running",
            "--interval",
            "fast",
        ],
        2,
    );
    assert!(
        err.contains("expected a duration like \"1s\"") && err.contains("\"fast\""),
        "{err}"
    );
    assert!(!err.contains("expected number at 0"), "{err}");
    let err = fails(&["restore", "x", "--lazy", "--idle-push", "soon"], 2);
    assert!(err.contains("expected a duration like"), "{err}");
}

#[test]
fn restore_verify_takes_state_and_names_it_when_given_anything_else() {
    let err = fails(&["restore", "x", "--verify", "everything"], 2);
    assert!(
        err.contains("'everything'") && err.contains("state"),
        "{err}"
    );
    let out = haul().args(["restore", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--verify") && help.contains("killed before it runs"),
        "{help}"
    );
}

#[test]
fn bench_help_lists_every_benchmark() {
    let out = haul().args(["bench", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for b in ["store", "precopy", "lazy"] {
        assert!(text.contains(&format!("haul bench {b}")), "{b}: {text}");
    }
}

/// A job that launches the counter and dumps it, in `dir`.
fn counter_job(dir: &Path) -> PathBuf {
    let job = dir.join("counter.toml");
    std::fs::write(
        &job,
        format!(
            "[process]\ncommand = [{:?}, \"{{run_dir}}/c.log\"]\nready = {{ stdout_line = \"ready\" }}\n\
             [store]\npath = \"store\"\n[report]\ndir = \"reports\"\n",
            fixture("counter").display().to_string()
        ),
    )
    .unwrap();
    job
}

#[test]
fn log_lines_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let job = counter_job(dir.path());
    let out = haul()
        .env("RUST_LOG", "haul=info")
        .arg("run")
        .arg(&job)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("INFO"), "no log line to look at: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape in piped stderr: {err:?}"
    );
}

#[test]
fn how_a_job_ended_is_said_once_where_stdout_and_stderr_are_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let job = counter_job(dir.path());
    // One file for both, as cron's mail or a terminal has it.
    let log = dir.path().join("both.log");
    let f = std::fs::File::create(&log).unwrap();
    let st = haul()
        .arg("run")
        .arg(&job)
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "{text}");
    assert_eq!(text.matches("counter: ok").count(), 1, "{text}");

    // Apart, stdout has the summary a script reads, stderr the progress.
    let out = haul()
        .arg("run")
        .arg(&job)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("counter: ok (report "), "{stdout}");

    // On a real terminal (script(1) gives haul a pty for both).
    let cmd = format!("{} run {}", common::haul_bin().display(), job.display());
    match std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("HAUL_STORE")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => {
            let screen = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{screen}");
            assert_eq!(screen.matches("counter: ok").count(), 1, "{screen:?}");
        }
        Err(e) => common::skip(
            "how_a_job_ended_is_said_once_where_stdout_and_stderr_are_one_file (terminal)",
            &format!("no script(1): {e}"),
        ),
    }
}

#[test]
fn a_lost_page_source_is_said_once() {
    use std::io::BufRead;
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = dir.path().join("report");
    let m = common::Running::logged(
        common::clean_command(fixture("memwriter"))
            .args(["32", "20000"])
            .arg(&out),
        &dir.path().join("log"),
        true,
    );
    let d = haul()
        .args([
            "dump",
            "--kill",
            "--json",
            "--pid",
            &m.pid.to_string(),
            "--store",
        ])
        .arg(&store)
        .output()
        .unwrap();
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    let v: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    let set = v["set"].as_str().unwrap().to_string();
    let mut server = haul()
        .args([
            "page-server",
            "--listen",
            "127.0.0.1:0",
            "--set",
            &set,
            "--store",
        ])
        .arg(&store)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let mut restore = haul()
        .args(["restore", &set, "--lazy", "--pid", "any", "--from", &addr])
        .args([
            "--idle-push",
            "60s",
            "--prefetch",
            "0",
            "--source-timeout",
            "1s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stdout = std::io::BufReader::new(restore.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let pid: i32 = first
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pid line {first:?}"));
    server.kill().unwrap();
    server.wait().unwrap();
    // It reads its whole region for the report: a fault the lost source cannot serve.
    common::send_signal(pid, "USR1");
    let got = restore.wait_with_output().unwrap();
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    let err = String::from_utf8_lossy(&got.stderr);
    assert_eq!(got.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("killed").count(),
        1,
        "said more than once: {err}"
    );
    assert_eq!(err.matches("page source lost").count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("haul: process {pid} killed: ")),
        "{err}"
    );
}
